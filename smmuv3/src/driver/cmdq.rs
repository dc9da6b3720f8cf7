//! The command queue and the event queue as the driver uses them (reference §9, §16).
//!
//! Commands are written at CMDQ_PROD's index, CMDQ_PROD is advanced (after a DSB on
//! aarch64, so the SMMU sees the commands), and the driver waits until CMDQ_CONS has
//! caught up; a CMD_SYNC consumed means every command before it completed. A queue
//! stopped by an error (CMDQ_CONS.ERR, GERROR.CMDQ_ERR) is an error naming the code.

use iommu_core::mem::PhysMem;
use iommu_core::{PhysAddr, RegisterAccess};
use zerocopy::IntoBytes;

use super::{Counters, Error, ErrorKind, POLL_LIMIT};
use crate::hw::cmd::{Cmd, Opcode, SyncCs};
use crate::hw::regs::{self, QueuePos, CMDQ_CONS, GERROR};

/// Bytes of a command.
pub const CMD_BYTES: u64 = 16;
/// Bytes of an event record.
pub const EVENT_BYTES: u64 = 32;

/// A queue in memory: base, log2 of its entries, and the driver's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Base address.
    pub base: PhysAddr,
    /// log2 of the number of entries.
    pub log2size: u32,
    /// The driver's position: PROD for the command queue, CONS for the event queue.
    pub pos: u32,
}

impl Queue {
    /// The Q_BASE register value (ADDR | LOG2SIZE; RA clear).
    pub fn base_reg(&self) -> u64 {
        (self.base.0 & regs::field_mask64(regs::Q_BASE::ADDR)) | self.log2size as u64
    }
}

/// Makes the CPU's memory writes visible to the SMMU before a register write tells it
/// to read them: `DSB` on aarch64 (Linux `dma_wmb()` / the `wmb()` before
/// `writel(prod)`), nothing elsewhere (the host builds run on the emulator, whose
/// memory is coherent).
#[inline]
pub fn publish() {
    #[cfg(target_arch = "aarch64")]
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}

/// Issues `cmds` and waits until the SMMU consumed them.
pub fn submit(
    unit: PhysAddr,
    regs: &mut dyn RegisterAccess,
    mem: &mut dyn PhysMem,
    q: &mut Queue,
    counters: &mut Counters,
    cmds: &[Cmd],
) -> Result<(), Error> {
    let mut prod = QueuePos::from_reg(q.log2size, q.pos);
    let mut pending = false;
    for c in cmds {
        let cons = QueuePos::from_reg(q.log2size, regs.read32(regs::CMDQ_CONS));
        if prod.full(cons) {
            q.pos = prod.value;
            drain(unit, regs, mem, q)?;
        }
        let at = PhysAddr(q.base.0 + prod.index() as u64 * CMD_BYTES);
        mem.write(at, c.as_bytes()).map_err(|err| {
            Error::new(
                unit,
                ErrorKind::Mem {
                    what: "command queue entry",
                    err,
                },
            )
        })?;
        prod = prod.next();
        pending = true;
        counters.commands += 1;
        match c.opcode() {
            Some(Opcode::Sync) => counters.syncs += 1,
            Some(Opcode::CfgiSte) => counters.cfgi_ste += 1,
            Some(Opcode::CfgiCd) => counters.cfgi_cd += 1,
            Some(Opcode::CfgiSteRange) => counters.cfgi_all += 1,
            Some(
                Opcode::TlbiNhAsid
                | Opcode::TlbiS12Vmall
                | Opcode::TlbiNsnhAll
                | Opcode::TlbiEl2All
                | Opcode::TlbiNhAll,
            ) => counters.tlbi += 1,
            _ => {}
        }
    }
    q.pos = prod.value;
    if pending {
        drain(unit, regs, mem, q)?;
    }
    Ok(())
}

/// Publishes the producer index and waits for the consumer to reach it.
fn drain(
    unit: PhysAddr,
    regs: &mut dyn RegisterAccess,
    mem: &dyn PhysMem,
    q: &Queue,
) -> Result<(), Error> {
    publish();
    regs.write32(regs::CMDQ_PROD, q.pos);
    let mut last = 0;
    for _ in 0..POLL_LIMIT {
        let cons = regs.read32(regs::CMDQ_CONS);
        let err = CMDQ_CONS::ERR.read(cons);
        let gerror = regs.read32(regs::GERROR) ^ regs.read32(regs::GERRORN);
        if err != 0 || GERROR::CMDQ_ERR.is_set(gerror) {
            let pos = QueuePos::from_reg(q.log2size, cons);
            let at = PhysAddr(q.base.0 + pos.index() as u64 * CMD_BYTES);
            let mut op = [0u8; 1];
            let opcode = mem.read(at, &mut op).map(|_| op[0]).unwrap_or(0);
            return Err(Error::new(unit, ErrorKind::CommandError { err, opcode }));
        }
        let c = QueuePos::from_reg(q.log2size, cons);
        if c.value == QueuePos::from_reg(q.log2size, q.pos).value {
            return Ok(());
        }
        last = cons;
    }
    Err(Error::new(
        unit,
        ErrorKind::Timeout {
            what: "CMDQ_CONS to reach CMDQ_PROD",
            last: last as u64,
        },
    ))
}

/// A CMD_SYNC that completes when consumed (CS = none; reference §16).
pub fn sync() -> Cmd {
    Cmd::sync(SyncCs::None, 0, 0, 0, 0)
}
