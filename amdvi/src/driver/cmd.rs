//! The command buffer and the event log of a unit (reference §2, §9, §10).
//!
//! Both are one 4 KiB ring of 256 16-byte entries (ComLen = EventLen = 8, the smallest
//! legal length). Commands are written at Command Tail, which is then advanced; one
//! slot always stays free (Head == Tail means empty; Xen waits while `tail + 16 ==
//! head`). Every batch ends with a COMPLETION_WAIT whose store (S = 1) the driver
//! polls in memory, as Linux and Xen do.

use iommu_core::mem::PhysMem;
use iommu_core::{PhysAddr, RegisterAccess};

use super::{alloc_zeroed, Counters, Error, ErrorKind, Hw, POLL_LIMIT};
use crate::hw::cmd::Command;
use crate::hw::event::{Event, EventEntry};
use crate::hw::regs::{self, field_mask, field_value, CMD_BUF_BASE, EVT_LOG_BASE, STATUS};

/// Bytes of each ring.
pub const RING_BYTES: u64 = 4096;
/// The length field of each ring: 2^8 = 256 entries of 16 bytes.
pub const RING_LEN: u64 = 8;

/// The rings the driver owns: command buffer, event log, and the page COMPLETION_WAIT
/// stores into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rings {
    /// Command buffer.
    pub cmd: PhysAddr,
    /// Event log.
    pub evt: PhysAddr,
    /// Completion-wait store page.
    pub sem: PhysAddr,
    /// Command Tail as last written (byte offset).
    pub(crate) tail: u64,
    /// Last COMPLETION_WAIT store value.
    pub(crate) seq: u64,
}

impl Rings {
    /// Allocates and zeroes the three pages.
    pub(crate) fn alloc(
        unit: PhysAddr,
        hw: &mut Hw<'_>,
        counters: &mut Counters,
    ) -> Result<Rings, Error> {
        let cmd = alloc_zeroed(unit, hw, counters, "the command buffer")?;
        let evt = match alloc_zeroed(unit, hw, counters, "the event log") {
            Ok(p) => p,
            Err(e) => {
                hw.pages.free_page(cmd);
                return Err(e);
            }
        };
        let sem = match alloc_zeroed(unit, hw, counters, "the completion-wait store") {
            Ok(p) => p,
            Err(e) => {
                hw.pages.free_page(cmd);
                hw.pages.free_page(evt);
                return Err(e);
            }
        };
        Ok(Rings {
            cmd,
            evt,
            sem,
            tail: 0,
            seq: 0,
        })
    }

    /// Programs the base registers and zeroes head and tail. The caller makes sure
    /// CmdBufEn and EventLogEn are clear (writing a base or a head/tail pointer while
    /// the ring runs is undefined, reference §2).
    pub(crate) fn program(&mut self, regs: &mut dyn RegisterAccess) {
        regs.write64(
            regs::CMD_BUF_BASE,
            self.cmd.0 | field_value(CMD_BUF_BASE::LEN, RING_LEN),
        );
        regs.write64(
            regs::EVT_LOG_BASE,
            self.evt.0 | field_value(EVT_LOG_BASE::LEN, RING_LEN),
        );
        regs.write64(regs::CMD_HEAD, 0);
        regs.write64(regs::CMD_TAIL, 0);
        regs.write64(regs::EVT_HEAD, 0);
        regs.write64(regs::EVT_TAIL, 0);
        self.tail = 0;
    }

    /// Queues one command, waiting for a free slot.
    pub(crate) fn submit(
        &mut self,
        unit: PhysAddr,
        hw: &mut Hw<'_>,
        counters: &mut Counters,
        cmd: &Command,
    ) -> Result<(), Error> {
        let next = (self.tail + 16) % RING_BYTES;
        let mut polls = 0;
        while hw.regs.read64(regs::CMD_HEAD) % RING_BYTES == next {
            polls += 1;
            if polls > POLL_LIMIT {
                return Err(Error::new(
                    unit,
                    ErrorKind::Timeout {
                        what: "a free command-buffer slot",
                        status: hw.regs.read64(regs::STATUS),
                    },
                ));
            }
        }
        let q = cmd.qwords();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&q[0].to_le_bytes());
        b[8..].copy_from_slice(&q[1].to_le_bytes());
        hw.mem
            .write(PhysAddr(self.cmd.0 + self.tail), &b)
            .map_err(|err| {
                Error::new(
                    unit,
                    ErrorKind::Mem {
                        what: "writing a command",
                        err,
                    },
                )
            })?;
        self.tail = next;
        hw.regs.write64(regs::CMD_TAIL, next);
        counters.commands += 1;
        Ok(())
    }

    /// Queues `cmds` and a COMPLETION_WAIT, then polls its store until every command
    /// before it completed.
    pub(crate) fn run(
        &mut self,
        unit: PhysAddr,
        hw: &mut Hw<'_>,
        counters: &mut Counters,
        cmds: &[Command],
    ) -> Result<(), Error> {
        for c in cmds {
            self.submit(unit, hw, counters, c)?;
        }
        self.seq += 1;
        let seq = self.seq;
        self.submit(
            unit,
            hw,
            counters,
            &Command::completion_wait(self.sem.0, seq, false),
        )?;
        for _ in 0..POLL_LIMIT {
            if hw.mem.read_u64(self.sem) == Ok(seq) {
                counters.waits += 1;
                return Ok(());
            }
        }
        Err(Error::new(
            unit,
            ErrorKind::Timeout {
                what: "the COMPLETION_WAIT store",
                status: hw.regs.read64(regs::STATUS),
            },
        ))
    }

    /// Reads every event between Event Head and Event Tail, moves Head to Tail, and
    /// clears EventOverflow (RW1C) if the unit set it. Entries that do not decode are
    /// returned as [`Event::Other`] by the decoder or skipped if unreadable.
    pub(crate) fn drain_events(&self, hw: &mut Hw<'_>) -> (alloc::vec::Vec<Event>, bool) {
        let mut out = alloc::vec::Vec::new();
        let mut head = hw.regs.read64(regs::EVT_HEAD) % RING_BYTES;
        let tail = hw.regs.read64(regs::EVT_TAIL) % RING_BYTES;
        // At most one pass over the ring.
        for _ in 0..RING_BYTES / 16 {
            if head == tail {
                break;
            }
            let mut b = [0u8; 16];
            if hw.mem.read(PhysAddr(self.evt.0 + head), &mut b).is_ok() {
                let mut q0 = [0u8; 8];
                let mut q1 = [0u8; 8];
                q0.copy_from_slice(&b[..8]);
                q1.copy_from_slice(&b[8..]);
                let e = EventEntry::from_qwords([u64::from_le_bytes(q0), u64::from_le_bytes(q1)]);
                if let Some(ev) = e.decode() {
                    out.push(ev);
                }
            }
            head = (head + 16) % RING_BYTES;
        }
        hw.regs.write64(regs::EVT_HEAD, head);
        let status = hw.regs.read64(regs::STATUS);
        let overflow = STATUS::EVENT_OVERFLOW.read(status) != 0;
        if overflow {
            hw.regs
                .write64(regs::STATUS, field_mask(STATUS::EVENT_OVERFLOW));
        }
        (out, overflow)
    }
}
