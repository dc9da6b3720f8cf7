//! The register file: offsets and fields from `amdvi::hw::regs` (reference §1–§5).

use super::AmdViUnit;
use crate::model::RegisterValue;
use amdvi::hw::regs::{self, field_mask};
use iommu_core::mem::PhysMem;

/// Raw register values as software last wrote them (masked to their defined fields).
#[derive(Clone, Debug, Default)]
pub(super) struct Regs {
    pub dev_tab_base: u64,
    pub cmd_buf_base: u64,
    pub evt_log_base: u64,
    pub control: u64,
    pub excl_base: u64,
    pub excl_limit: u64,
    pub cmd_head: u64,
    pub cmd_tail: u64,
    pub evt_head: u64,
    pub evt_tail: u64,
    /// RW1C status bits only; the run bits are derived.
    pub status: u64,
}

/// Writable bits of a ring base register: base 51:12, length 59:56.
const RING_BASE_MASK: u64 = (0xff_ffff_ffffu64 << 12) | (0xf << 56);
/// Writable bits of a head/tail pointer: 18:4.
const RING_PTR_MASK: u64 = 0x7fff0;

impl Regs {
    pub fn ctl(&self, field: tock_registers::fields::Field<u64, regs::CONTROL::Register>) -> bool {
        field.read(self.control) != 0
    }
}

impl AmdViUnit {
    pub(super) fn iommu_en(&self) -> bool {
        self.regs.ctl(regs::CONTROL::IOMMU_EN)
    }

    /// CmdBufRun = IommuEn && CmdBufEn (reference §4, QEMU and VirtualBox), and not
    /// stopped by an illegal command.
    pub(super) fn cmd_buf_run(&self) -> bool {
        self.iommu_en() && self.regs.ctl(regs::CONTROL::CMD_BUF_EN) && !self.cmd_stopped
    }

    /// EventLogRun = IommuEn && EventLogEn (reference §4 and §8).
    pub(super) fn event_log_run(&self) -> bool {
        self.iommu_en() && self.regs.ctl(regs::CONTROL::EVENT_LOG_EN)
    }

    fn status_value(&self) -> u64 {
        let mut s = self.regs.status & regs::STATUS_RW1C;
        if self.event_log_run() {
            s |= field_mask(regs::STATUS::EVENT_LOG_RUN);
        }
        if self.cmd_buf_run() {
            s |= field_mask(regs::STATUS::CMD_BUF_RUN);
        }
        s
    }

    fn reg64(&self, off: u64) -> Option<u64> {
        Some(match off {
            regs::DEV_TAB_BASE => self.regs.dev_tab_base,
            regs::CMD_BUF_BASE => self.regs.cmd_buf_base,
            regs::EVT_LOG_BASE => self.regs.evt_log_base,
            regs::CONTROL => self.regs.control,
            regs::EXCL_BASE => self.regs.excl_base,
            // The limit's low 12 bits read as 1s (VirtualBox).
            regs::EXCL_LIMIT => self.regs.excl_limit | 0xfff,
            regs::EFR => self.cfg.efr,
            regs::CMD_HEAD => self.regs.cmd_head,
            regs::CMD_TAIL => self.regs.cmd_tail,
            regs::EVT_HEAD => self.regs.evt_head,
            regs::EVT_TAIL => self.regs.evt_tail,
            regs::STATUS => self.status_value(),
            _ => return None,
        })
    }

    pub(super) fn read_reg(&mut self, offset: u64, width: u8) -> u64 {
        let reg = offset & !7;
        let Some(v) = self.reg64(reg) else {
            self.diag(format!("read of unmodelled register {offset:#x}"));
            return 0;
        };
        match (width, offset & 7) {
            (8, 0) => v,
            (4, 0) => v & 0xffff_ffff,
            (4, 4) => v >> 32,
            _ => {
                self.diag(format!("misaligned {width}-byte read at {offset:#x}"));
                0
            }
        }
    }

    pub(super) fn write_reg(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64) {
        let reg = offset & !7;
        let Some(cur) = self.reg64(reg) else {
            self.diag(format!(
                "write of unmodelled register {offset:#x} = {value:#x}"
            ));
            return;
        };
        // For Status the untouched half must not clear anything (RW1C).
        let cur = if reg == regs::STATUS { 0 } else { cur };
        let v = match (width, offset & 7) {
            (8, 0) => value,
            (4, 0) => (cur & !0xffff_ffff) | (value & 0xffff_ffff),
            (4, 4) => (cur & 0xffff_ffff) | (value << 32),
            _ => {
                self.diag(format!("misaligned {width}-byte write at {offset:#x}"));
                return;
            }
        };
        self.write_reg64(mem, reg, v);
    }

    fn write_reg64(&mut self, mem: &mut dyn PhysMem, reg: u64, v: u64) {
        let en = self.iommu_en();
        match reg {
            regs::DEV_TAB_BASE => {
                if en {
                    self.diag("Device Table Base written while IommuEn=1 (undefined)".into());
                }
                self.regs.dev_tab_base = v
                    & (field_mask(regs::DEV_TAB_BASE::BASE) | field_mask(regs::DEV_TAB_BASE::SIZE));
            }
            regs::CMD_BUF_BASE => {
                if self.cmd_buf_run() {
                    self.diag("Command Buffer Base written while CmdBufRun=1 (undefined)".into());
                }
                self.regs.cmd_buf_base = v & RING_BASE_MASK;
            }
            regs::EVT_LOG_BASE => {
                if self.event_log_run() {
                    self.diag("Event Log Base written while EventLogRun=1 (undefined)".into());
                }
                self.regs.evt_log_base = v & RING_BASE_MASK;
            }
            regs::CONTROL => {
                let was_cmd = self.regs.ctl(regs::CONTROL::CMD_BUF_EN);
                self.regs.control = v;
                if !was_cmd && self.regs.ctl(regs::CONTROL::CMD_BUF_EN) {
                    self.cmd_stopped = false;
                }
                self.process_commands(mem);
            }
            regs::EXCL_BASE => {
                self.regs.excl_base = v
                    & (field_mask(regs::EXCL_BASE::BASE)
                        | field_mask(regs::EXCL_BASE::EX_EN)
                        | field_mask(regs::EXCL_BASE::ALLOW));
            }
            regs::EXCL_LIMIT => self.regs.excl_limit = v & field_mask(regs::EXCL_LIMIT::LIMIT),
            regs::EFR => self.diag(format!("write of read-only EFR = {v:#x}")),
            regs::CMD_HEAD => {
                // Writing Command Head while CmdBufRun=1 is undefined (VirtualBox, §2).
                if self.cmd_buf_run() {
                    self.diag("Command Head written while CmdBufRun=1 (undefined)".into());
                }
                self.regs.cmd_head = v & RING_PTR_MASK;
            }
            regs::CMD_TAIL => {
                self.regs.cmd_tail = v & RING_PTR_MASK;
                self.process_commands(mem);
            }
            regs::EVT_HEAD => self.regs.evt_head = v & RING_PTR_MASK,
            regs::EVT_TAIL => {
                if self.event_log_run() {
                    self.diag("Event Tail written while EventLogRun=1 (undefined)".into());
                }
                self.regs.evt_tail = v & RING_PTR_MASK;
            }
            regs::STATUS => self.regs.status &= !(v & regs::STATUS_RW1C),
            _ => {}
        }
    }

    pub(super) fn saved_registers(&self) -> Vec<RegisterValue> {
        SAVED
            .into_iter()
            .map(|offset| RegisterValue {
                offset,
                width: 8,
                value: self.reg64(offset).unwrap_or(0),
            })
            .collect()
    }

    /// Ring base address and size in bytes from a base register, if the length is legal.
    pub(super) fn ring(base_reg: u64) -> Option<(u64, u64)> {
        let len = regs::CMD_BUF_BASE::LEN.read(base_reg) as u8;
        let entries = regs::ring_entries(len)?;
        Some((
            base_reg & field_mask(regs::CMD_BUF_BASE::BASE),
            entries as u64 * regs::RING_ENTRY_BYTES,
        ))
    }
}

/// The registers `save_registers` writes, in its order.
pub(super) const SAVED: [u64; 12] = [
    regs::DEV_TAB_BASE,
    regs::CMD_BUF_BASE,
    regs::EVT_LOG_BASE,
    regs::CONTROL,
    regs::EXCL_BASE,
    regs::EXCL_LIMIT,
    regs::EFR,
    regs::CMD_HEAD,
    regs::CMD_TAIL,
    regs::EVT_HEAD,
    regs::EVT_TAIL,
    regs::STATUS,
];

impl AmdViUnit {
    /// Rebuilds a unit from saved registers: every register of [`SAVED`] exactly once,
    /// 8 bytes wide. Values are taken as they are (no side effects run); the caches
    /// start empty, as after a reset.
    pub(super) fn restore_regs(
        base: iommu_core::PhysAddr,
        saved: &[RegisterValue],
    ) -> Result<AmdViUnit, super::AmdViRestoreError> {
        use super::AmdViRestoreError as E;
        let mut vals = [None::<u64>; SAVED.len()];
        for r in saved {
            let Some(i) = SAVED.iter().position(|&o| o == r.offset) else {
                return Err(E::UnknownOffset { offset: r.offset });
            };
            if r.width != 8 {
                return Err(E::BadWidth {
                    offset: r.offset,
                    width: r.width,
                });
            }
            if vals[i].replace(r.value).is_some() {
                return Err(E::Duplicate { offset: r.offset });
            }
        }
        let mut v = [0u64; SAVED.len()];
        for (i, x) in vals.iter().enumerate() {
            v[i] = x.ok_or(E::Missing { offset: SAVED[i] })?;
        }
        let cfg = super::AmdViConfig::new(base).with_efr(v[6]);
        let mut u = AmdViUnit::new(cfg);
        u.regs = Regs {
            dev_tab_base: v[0],
            cmd_buf_base: v[1] & RING_BASE_MASK,
            evt_log_base: v[2] & RING_BASE_MASK,
            control: v[3],
            excl_base: v[4],
            excl_limit: v[5] & field_mask(regs::EXCL_LIMIT::LIMIT),
            cmd_head: v[7] & RING_PTR_MASK,
            cmd_tail: v[8] & RING_PTR_MASK,
            evt_head: v[9] & RING_PTR_MASK,
            evt_tail: v[10] & RING_PTR_MASK,
            status: v[11] & regs::STATUS_RW1C,
        };
        // A buffer stopped by an illegal command stays stopped.
        let run = field_mask(regs::STATUS::CMD_BUF_RUN);
        u.cmd_stopped = u.iommu_en() && u.regs.ctl(regs::CONTROL::CMD_BUF_EN) && v[11] & run == 0;
        Ok(u)
    }
}
