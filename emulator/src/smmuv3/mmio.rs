//! The register file: reads, writes, the CR0/CR0ACK and GBPA handshakes and the
//! write guards of `shared/reference/smmuv3.md` §3 (SMMUv3.2: guarded writes are
//! IGNORED; the model drops them and reports a diagnostic).

use super::SmmuV3Unit;
use iommu_core::mem::PhysMem;
use smmuv3::hw::regs::{
    self, field_mask32, field_mask64, CMDQ_CONS, CR0, CR1, CR2, EVENTQ_CONS, GBPA, GERROR,
    IRQ_CTRL, Q_BASE, Q_PROD, STRTAB_BASE, STRTAB_BASE_CFG,
};

/// CR0 bits this model implements (no PRI queue, no ATS, no VMID wildcards).
fn cr0_mask() -> u32 {
    field_mask32(CR0::SMMUEN) | field_mask32(CR0::EVENTQEN) | field_mask32(CR0::CMDQEN)
}

fn gbpa_mask() -> u32 {
    field_mask32(GBPA::MEMATTR)
        | field_mask32(GBPA::MTCFG)
        | field_mask32(GBPA::ALLOCCFG)
        | field_mask32(GBPA::SHCFG)
        | field_mask32(GBPA::PRIVCFG)
        | field_mask32(GBPA::INSTCFG)
        | field_mask32(GBPA::ABORT)
}

fn gerror_mask() -> u32 {
    field_mask32(GERROR::CMDQ_ERR)
        | field_mask32(GERROR::EVENTQ_ABT_ERR)
        | field_mask32(GERROR::PRIQ_ABT_ERR)
        | field_mask32(GERROR::MSI_CMDQ_ABT_ERR)
        | field_mask32(GERROR::MSI_EVENTQ_ABT_ERR)
        | field_mask32(GERROR::MSI_PRIQ_ABT_ERR)
        | field_mask32(GERROR::MSI_GERROR_ABT_ERR)
        | field_mask32(GERROR::SFM_ERR)
}

fn q_base_mask() -> u64 {
    field_mask64(Q_BASE::LOG2SIZE) | field_mask64(Q_BASE::ADDR) | field_mask64(Q_BASE::RA)
}

/// Replaces the `width`-byte lane at byte `lane` (0 or 4) of a 64-bit register.
fn merge64(old: u64, lane: u64, width: u8, value: u64) -> u64 {
    if width == 8 {
        value
    } else {
        let shift = lane * 8;
        (old & !(0xffff_ffffu64 << shift)) | ((value & 0xffff_ffff) << shift)
    }
}

impl SmmuV3Unit {
    pub(super) fn cmdq_log2(&self) -> u32 {
        (Q_BASE::LOG2SIZE.read(self.regs.cmdq_base) as u32).min(self.cfg.cmdq_log2)
    }

    pub(super) fn eventq_log2(&self) -> u32 {
        (Q_BASE::LOG2SIZE.read(self.regs.eventq_base) as u32).min(self.cfg.eventq_log2)
    }

    pub(super) fn enabled(&self, field: tock_registers::fields::Field<u32, CR0::Register>) -> bool {
        field.is_set(self.regs.cr0ack)
    }

    pub(super) fn read_reg(&mut self, offset: u64, width: u8) -> u64 {
        let r = &self.regs;
        let (reg, lane) = (offset & !7, offset & 7);
        let v64 = match reg {
            regs::STRTAB_BASE => Some(r.strtab_base),
            regs::CMDQ_BASE => Some(r.cmdq_base),
            regs::EVENTQ_BASE => Some(r.eventq_base),
            regs::GERROR_IRQ_CFG0 => Some(r.gerror_irq_cfg0),
            regs::EVENTQ_IRQ_CFG0 => Some(r.eventq_irq_cfg0),
            _ => None,
        };
        if let Some(v) = v64 {
            return if width == 8 && lane == 0 {
                v
            } else if width == 4 {
                (v >> (lane * 8)) & 0xffff_ffff
            } else {
                self.diag(format!("{width}-byte read at {offset:#x} is misaligned"));
                0
            };
        }
        if width != 4 {
            self.diag(format!(
                "{width}-byte read of the 32-bit register at {offset:#x}"
            ));
        }
        let (r, c) = (&self.regs, &self.cfg);
        (match offset {
            regs::IDR0 => c.idr0(),
            regs::IDR1 => c.idr1(),
            regs::IDR3 => c.idr3(),
            regs::IDR5 => c.idr5(),
            // SMMUv3.2 (IHI0070 SMMU_AIDR): the write-ignore rules modelled are v3.2's.
            regs::AIDR => 0x02,
            regs::CR0 => r.cr0,
            regs::CR0ACK => r.cr0ack,
            regs::CR1 => r.cr1,
            regs::CR2 => r.cr2,
            regs::GBPA => r.gbpa,
            regs::IRQ_CTRL => r.irq_ctrl,
            regs::IRQ_CTRLACK => r.irq_ctrlack,
            regs::GERROR => r.gerror,
            regs::GERRORN => r.gerrorn,
            regs::GERROR_IRQ_CFG1 => r.gerror_irq_cfg1,
            regs::GERROR_IRQ_CFG2 => r.gerror_irq_cfg2,
            regs::STRTAB_BASE_CFG => r.strtab_base_cfg,
            regs::CMDQ_PROD => r.cmdq_prod,
            regs::CMDQ_CONS => r.cmdq_cons,
            regs::EVENTQ_PROD => r.eventq_prod,
            regs::EVENTQ_CONS => r.eventq_cons,
            regs::EVENTQ_IRQ_CFG1 => r.eventq_irq_cfg1,
            regs::EVENTQ_IRQ_CFG2 => r.eventq_irq_cfg2,
            _ => 0,
        }) as u64
    }

    /// Drops `value`'s bits outside `mask`, reporting them.
    fn reserved(&mut self, name: &str, value: u32, mask: u32) -> u32 {
        if value & !mask != 0 {
            self.diag(format!(
                "{name} write {value:#x} sets reserved or unimplemented bits {:#x}",
                value & !mask
            ));
        }
        value & mask
    }

    pub(super) fn write_reg(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64) {
        let (reg, lane) = (offset & !7, offset & 7);
        let smmuen = CR0::SMMUEN.is_set(self.regs.cr0) || CR0::SMMUEN.is_set(self.regs.cr0ack);
        let cmdqen = CR0::CMDQEN.is_set(self.regs.cr0) || CR0::CMDQEN.is_set(self.regs.cr0ack);
        let eventqen =
            CR0::EVENTQEN.is_set(self.regs.cr0) || CR0::EVENTQEN.is_set(self.regs.cr0ack);
        let is64 = matches!(
            reg,
            regs::STRTAB_BASE
                | regs::CMDQ_BASE
                | regs::EVENTQ_BASE
                | regs::GERROR_IRQ_CFG0
                | regs::EVENTQ_IRQ_CFG0
        );
        if is64 {
            if !(width == 8 && lane == 0 || width == 4) {
                self.diag(format!("{width}-byte write at {offset:#x} is misaligned"));
                return;
            }
            match reg {
                regs::STRTAB_BASE if smmuen => {
                    self.diag("STRTAB_BASE written while SMMUEN = 1: IGNORED (reference §3)".into())
                }
                regs::STRTAB_BASE => {
                    let mask = field_mask64(STRTAB_BASE::ADDR) | field_mask64(STRTAB_BASE::RA);
                    let v = merge64(self.regs.strtab_base, lane, width, value);
                    if v & !mask != 0 {
                        self.diag(format!("STRTAB_BASE write {v:#x} sets reserved bits"));
                    }
                    self.regs.strtab_base = v & mask;
                }
                regs::CMDQ_BASE if cmdqen => {
                    self.diag("CMDQ_BASE written while CMDQEN = 1: IGNORED (reference §3)".into())
                }
                regs::CMDQ_BASE => {
                    self.regs.cmdq_base =
                        merge64(self.regs.cmdq_base, lane, width, value) & q_base_mask()
                }
                regs::EVENTQ_BASE if eventqen => self
                    .diag("EVENTQ_BASE written while EVENTQEN = 1: IGNORED (reference §3)".into()),
                regs::EVENTQ_BASE => {
                    self.regs.eventq_base =
                        merge64(self.regs.eventq_base, lane, width, value) & q_base_mask()
                }
                regs::GERROR_IRQ_CFG0 => {
                    self.regs.gerror_irq_cfg0 =
                        merge64(self.regs.gerror_irq_cfg0, lane, width, value)
                            & 0x000f_ffff_ffff_fffc
                }
                _ => {
                    self.regs.eventq_irq_cfg0 =
                        merge64(self.regs.eventq_irq_cfg0, lane, width, value)
                            & 0x000f_ffff_ffff_fffc
                }
            }
            return;
        }
        if width != 4 {
            self.diag(format!(
                "{width}-byte write of the 32-bit register at {offset:#x}: dropped"
            ));
            return;
        }
        let v = value as u32;
        match offset {
            regs::CR0 => {
                let v = self.reserved("CR0", v, cr0_mask());
                let was = self.regs.cr0ack;
                self.regs.cr0 = v;
                // The model completes every update at once: CR0ACK follows CR0.
                self.regs.cr0ack = v;
                let on = |f: tock_registers::fields::Field<u32, CR0::Register>| {
                    !f.is_set(was) && f.is_set(v)
                };
                if on(CR0::CMDQEN) {
                    self.process_cmdq(mem);
                }
            }
            regs::CR1 => {
                let v = self.reserved("CR1", v, 0xfff);
                let table = field_mask32(CR1::TABLE_IC)
                    | field_mask32(CR1::TABLE_OC)
                    | field_mask32(CR1::TABLE_SH);
                let queue = field_mask32(CR1::QUEUE_IC)
                    | field_mask32(CR1::QUEUE_OC)
                    | field_mask32(CR1::QUEUE_SH);
                let mut new = self.regs.cr1;
                if smmuen && (v ^ new) & table != 0 {
                    self.diag("CR1.TABLE_* written while SMMUEN = 1: IGNORED".into());
                } else {
                    new = (new & !table) | (v & table);
                }
                if (cmdqen || eventqen) && (v ^ new) & queue != 0 {
                    self.diag("CR1.QUEUE_* written while a queue is enabled: IGNORED".into());
                } else {
                    new = (new & !queue) | (v & queue);
                }
                self.regs.cr1 = new;
            }
            regs::CR2 => {
                let mask = field_mask32(CR2::RECINVSID) | field_mask32(CR2::PTM);
                let v = self.reserved("CR2", v, mask);
                if smmuen {
                    self.diag("CR2 written while SMMUEN = 1: IGNORED".into());
                } else {
                    self.regs.cr2 = v;
                }
            }
            regs::GBPA => {
                if !GBPA::UPDATE.is_set(v) {
                    self.diag(
                        "GBPA written without UPDATE = 1: IGNORED (reference §3, SMMUv3.2)".into(),
                    );
                } else {
                    // The update takes effect at once; UPDATE reads back as 0.
                    self.regs.gbpa =
                        self.reserved("GBPA", v & !field_mask32(GBPA::UPDATE), gbpa_mask());
                }
            }
            regs::IRQ_CTRL => {
                let mask =
                    field_mask32(IRQ_CTRL::GERROR_IRQEN) | field_mask32(IRQ_CTRL::EVENTQ_IRQEN);
                let v = self.reserved("IRQ_CTRL", v, mask);
                self.regs.irq_ctrl = v;
                self.regs.irq_ctrlack = v;
            }
            regs::GERRORN => {
                let v = self.reserved("GERRORN", v, gerror_mask());
                let was_cmdq = self.gerror_active(field_mask32(GERROR::CMDQ_ERR));
                self.regs.gerrorn = v;
                if was_cmdq && !self.gerror_active(field_mask32(GERROR::CMDQ_ERR)) {
                    self.process_cmdq(mem);
                }
            }
            regs::GERROR_IRQ_CFG1 => self.regs.gerror_irq_cfg1 = v,
            regs::GERROR_IRQ_CFG2 => self.regs.gerror_irq_cfg2 = v & 0x3f,
            regs::EVENTQ_IRQ_CFG1 => self.regs.eventq_irq_cfg1 = v,
            regs::EVENTQ_IRQ_CFG2 => self.regs.eventq_irq_cfg2 = v & 0x3f,
            regs::STRTAB_BASE_CFG if smmuen => {
                self.diag("STRTAB_BASE_CFG written while SMMUEN = 1: IGNORED (reference §3)".into())
            }
            regs::STRTAB_BASE_CFG => {
                let mask = field_mask32(STRTAB_BASE_CFG::LOG2SIZE)
                    | field_mask32(STRTAB_BASE_CFG::SPLIT)
                    | field_mask32(STRTAB_BASE_CFG::FMT);
                self.regs.strtab_base_cfg = self.reserved("STRTAB_BASE_CFG", v, mask);
            }
            regs::CMDQ_PROD => {
                let mask = (2u32 << self.cmdq_log2()) - 1;
                self.regs.cmdq_prod = self.reserved("CMDQ_PROD", v, mask);
                self.process_cmdq(mem);
            }
            regs::CMDQ_CONS if cmdqen => {
                self.diag("CMDQ_CONS written while CMDQEN = 1: IGNORED (reference §3)".into())
            }
            regs::CMDQ_CONS => {
                let mask = (2u32 << self.cmdq_log2()) - 1;
                // ERR is read-only; software writes only RD.
                self.regs.cmdq_cons =
                    (v & mask) | (self.regs.cmdq_cons & field_mask32(CMDQ_CONS::ERR));
            }
            regs::EVENTQ_PROD if eventqen => {
                self.diag("EVENTQ_PROD written while EVENTQEN = 1: IGNORED (reference §3)".into())
            }
            regs::EVENTQ_PROD => {
                let mask = ((2u32 << self.eventq_log2()) - 1) | field_mask32(Q_PROD::OVFLG);
                self.regs.eventq_prod = self.reserved("EVENTQ_PROD", v, mask);
            }
            regs::EVENTQ_CONS => {
                let mask = ((2u32 << self.eventq_log2()) - 1) | field_mask32(EVENTQ_CONS::OVACKFLG);
                self.regs.eventq_cons = self.reserved("EVENTQ_CONS", v, mask);
            }
            regs::IDR0
            | regs::IDR1
            | regs::IDR2
            | regs::IDR3
            | regs::IDR4
            | regs::IDR5
            | regs::IIDR
            | regs::AIDR
            | regs::CR0ACK
            | regs::IRQ_CTRLACK
            | regs::GERROR
            | regs::STATUSR => self.diag(format!("write to read-only register {offset:#x}")),
            _ => self.diag(format!("write {v:#x} to unimplemented offset {offset:#x}")),
        }
    }
}
