//! The command buffer: commands consumed from Command Head to Command Tail.

use super::AmdViUnit;
use amdvi::hw::cmd::{Cmd, Command};
use amdvi::hw::event::{EventCode, EventEntry, EventFlags};
use amdvi::hw::regs::{self, field_mask};
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;

impl AmdViUnit {
    /// Processes commands from Head to Tail while CmdBufRun.
    ///
    /// An unknown opcode, an unsupported command or reserved bits set log
    /// ILLEGAL_COMMAND_ERROR with the command's address and stop the buffer (CmdBufRun
    /// reads 0, Head stays at the bad command) until software sets CmdBufEn again; a
    /// command that cannot be read logs COMMAND_HARDWARE_ERROR and stops the same way
    /// (reference §9/§10; QEMU only logs and carries on, the model does not).
    pub(super) fn process_commands(&mut self, mem: &mut dyn PhysMem) {
        if !self.cmd_buf_run() {
            return;
        }
        let Some((base, size)) = Self::ring(self.regs.cmd_buf_base) else {
            self.diag("command buffer enabled with a reserved ComLen".into());
            return;
        };
        // At most one pass over the ring: Head and Tail are bounded by the ring size.
        while self.regs.cmd_head % size != self.regs.cmd_tail % size {
            let head = self.regs.cmd_head % size;
            let at = base + head;
            let mut b = [0u8; 16];
            if let Err(e) = mem.read(PhysAddr(at), &mut b) {
                self.diag(format!("command read at {at:#x} failed: {e}"));
                self.stop_commands(mem, EventCode::CommandHardwareError, at);
                return;
            }
            let q0 = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
            let q1 = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
            let cmd = Command::from_qwords([q0, q1]);
            if !self.execute(mem, &cmd, at) {
                self.stop_commands(mem, EventCode::IllegalCommandError, at);
                return;
            }
            self.regs.cmd_head = (head + regs::RING_ENTRY_BYTES) % size;
        }
    }

    fn stop_commands(&mut self, mem: &mut dyn PhysMem, code: EventCode, at: u64) {
        self.cmd_stopped = true;
        self.log_event(mem, EventEntry::new(code, 0, 0, EventFlags(0), at & !0xf));
    }

    /// Executes one command; `false` if it is illegal.
    fn execute(&mut self, mem: &mut dyn PhysMem, cmd: &Command, at: u64) -> bool {
        if cmd.reserved_bits() != [0, 0] {
            self.diag(format!("command at {at:#x} has reserved bits set: {cmd:?}"));
            return false;
        }
        let Some(decoded) = cmd.decode() else {
            self.diag(format!(
                "command at {at:#x} has unknown opcode {:#x}",
                cmd.opcode_bits()
            ));
            return false;
        };
        match decoded {
            Cmd::CompletionWait {
                store,
                interrupt,
                addr,
                data,
                ..
            } => {
                if store {
                    if let Err(e) = mem.write_u64(PhysAddr(addr), data) {
                        self.diag(format!("COMPLETION_WAIT store at {addr:#x} failed: {e}"));
                        self.log_event(
                            mem,
                            EventEntry::new(
                                EventCode::CommandHardwareError,
                                0,
                                0,
                                EventFlags(0),
                                addr & !0xf,
                            ),
                        );
                    }
                }
                if interrupt {
                    self.regs.status |= field_mask(regs::STATUS::COM_WAIT_INT);
                }
            }
            Cmd::InvalidateDevtabEntry { device_id } => self.caches.invalidate_dte(device_id),
            Cmd::InvalidateIommuPages {
                domain_id,
                pasid,
                gn,
                range,
                ..
            } => {
                let (first, last) = range.bounds();
                self.caches
                    .invalidate_pages(domain_id, gn.then_some(pasid), first, last);
            }
            // Device (ATS) TLBs are not modelled: nothing to invalidate.
            Cmd::InvalidateIotlbPages { .. } => {}
            // Interrupt remapping is not modelled: no interrupt table is cached.
            Cmd::InvalidateInterruptTable { .. } => {}
            Cmd::InvalidateIommuAll => {
                // Requires EFR.IASup (reference §9).
                if regs::EFR::IA_SUP.read(self.cfg.efr) == 0 {
                    self.diag("INVALIDATE_IOMMU_ALL on a unit without IASup".into());
                    return false;
                }
                self.caches.invalidate_all();
            }
            // Prefetch and PPR need EFR.PreFSup / PPRSup, which the model never reports.
            Cmd::PrefetchIommuPages | Cmd::CompletePprRequest => {
                self.diag(format!("unsupported command at {at:#x}: {decoded:?}"));
                return false;
            }
        }
        true
    }
}
