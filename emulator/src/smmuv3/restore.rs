//! Rebuilding an SMMU from the registers a snapshot saved ([`SmmuV3Unit::restore`]).
//!
//! The saved registers are the ID registers (IDR0, IDR1, IDR3, IDR5: the configuration
//! the model was built with) and every register software programs. The configuration
//! is decoded from the ID registers and must regenerate them bit for bit; the state
//! registers are taken as saved. Not part of the register state: the `iommu-map`
//! (the restored unit maps a requester ID to the StreamID of the same value, as
//! [`SmmuV3Config::stream_map`] does when empty) and the torn-entry mode (off).
//! Caches start empty, as after any snapshot load.

use super::{ConfigError, Regs, SmmuV3Config, SmmuV3Unit};
use crate::model::RegisterValue;
use iommu_core::PhysAddr;
use smmuv3::hw::pa_size_bits;
use smmuv3::hw::regs::{self, IDR0, IDR1, IDR3, IDR5};
use std::fmt;

/// Why saved registers could not rebuild an SMMUv3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmmuV3RestoreError {
    /// A register the model needs is missing.
    Missing {
        /// Its offset.
        offset: u64,
    },
    /// A register was saved with another width than the architecture gives it.
    BadWidth {
        /// Offset.
        offset: u64,
        /// Saved width.
        width: u8,
        /// The register's width.
        expected: u8,
    },
    /// An offset that is not a saved SMMUv3 register.
    UnknownOffset {
        /// Offset.
        offset: u64,
    },
    /// The same register appears twice.
    Duplicate {
        /// Offset.
        offset: u64,
    },
    /// An ID register holds a value the model cannot be configured to produce.
    BadIdr {
        /// Offset of the ID register.
        offset: u64,
        /// The saved value.
        saved: u64,
        /// What the model would report for the configuration decoded from it.
        model: u64,
    },
    /// The configuration the ID registers describe is refused.
    Config(ConfigError),
}

impl fmt::Display for SmmuV3RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { offset } => write!(f, "SMMUv3 register {offset:#x} missing"),
            Self::BadWidth {
                offset,
                width,
                expected,
            } => write!(
                f,
                "SMMUv3 register {offset:#x} saved {width} bytes wide, not {expected}"
            ),
            Self::UnknownOffset { offset } => {
                write!(f, "{offset:#x} is not a saved SMMUv3 register")
            }
            Self::Duplicate { offset } => write!(f, "SMMUv3 register {offset:#x} saved twice"),
            Self::BadIdr {
                offset,
                saved,
                model,
            } => write!(
                f,
                "SMMUv3 ID register {offset:#x} = {saved:#x}: the model would report {model:#x}"
            ),
            Self::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SmmuV3RestoreError {}

/// The saved registers: offset and width, in the order `save_registers` writes them.
pub(super) const SAVED: [(u64, u8); N] = [
    (regs::IDR0, 4),
    (regs::IDR1, 4),
    (regs::IDR3, 4),
    (regs::IDR5, 4),
    (regs::CR0, 4),
    (regs::CR0ACK, 4),
    (regs::CR1, 4),
    (regs::CR2, 4),
    (regs::GBPA, 4),
    (regs::IRQ_CTRL, 4),
    (regs::IRQ_CTRLACK, 4),
    (regs::GERROR, 4),
    (regs::GERRORN, 4),
    (regs::GERROR_IRQ_CFG0, 8),
    (regs::GERROR_IRQ_CFG1, 4),
    (regs::GERROR_IRQ_CFG2, 4),
    (regs::STRTAB_BASE, 8),
    (regs::STRTAB_BASE_CFG, 4),
    (regs::CMDQ_BASE, 8),
    (regs::CMDQ_PROD, 4),
    (regs::CMDQ_CONS, 4),
    (regs::EVENTQ_BASE, 8),
    (regs::EVENTQ_PROD, 4),
    (regs::EVENTQ_CONS, 4),
    (regs::EVENTQ_IRQ_CFG0, 8),
    (regs::EVENTQ_IRQ_CFG1, 4),
    (regs::EVENTQ_IRQ_CFG2, 4),
];

/// Number of registers saved.
const N: usize = 27;

fn index(offset: u64) -> Option<usize> {
    SAVED.iter().position(|&(o, _)| o == offset)
}

impl SmmuV3Config {
    /// The configuration whose ID registers are `idr` (IDR0, IDR1, IDR3, IDR5), at
    /// `mmio_base`.
    fn from_idrs(mmio_base: PhysAddr, idr: [u32; 4]) -> Result<Self, SmmuV3RestoreError> {
        let [i0, i1, i3, i5] = idr;
        let mut c = SmmuV3Config::new(mmio_base);
        c.stage1 = IDR0::S1P.is_set(i0);
        c.stage2 = IDR0::S2P.is_set(i0);
        c.two_level_strtab = IDR0::ST_LEVEL.read(i0) == 1;
        c.two_level_cd = IDR0::CD2L.is_set(i0);
        c.asid16 = IDR0::ASID16.is_set(i0);
        c.vmid16 = IDR0::VMID16.is_set(i0);
        c.msi = IDR0::MSI.is_set(i0);
        c.sev = IDR0::SEV.is_set(i0);
        c.hyp = IDR0::HYP.is_set(i0);
        c.sid_bits = IDR1::SIDSIZE.read(i1);
        c.ssid_bits = IDR1::SSIDSIZE.read(i1);
        c.eventq_log2 = IDR1::EVENTQS.read(i1);
        c.cmdq_log2 = IDR1::CMDQS.read(i1);
        c.ril = IDR3::RIL.is_set(i3);
        c.oas_bits = pa_size_bits(IDR5::OAS.read(i5) as u64).unwrap_or(0);
        c.gran4k = IDR5::GRAN4K.is_set(i5);
        c.gran16k = IDR5::GRAN16K.is_set(i5);
        c.gran64k = IDR5::GRAN64K.is_set(i5);
        let model = [c.idr0(), c.idr1(), c.idr3(), c.idr5()];
        let offs = [regs::IDR0, regs::IDR1, regs::IDR3, regs::IDR5];
        for ((o, saved), model) in offs.into_iter().zip(idr).zip(model) {
            if saved != model {
                return Err(SmmuV3RestoreError::BadIdr {
                    offset: o,
                    saved: saved as u64,
                    model: model as u64,
                });
            }
        }
        Ok(c)
    }
}

impl SmmuV3Unit {
    /// Rebuilds an SMMU at `mmio_base` from the registers `save_registers` produced (a
    /// snapshot): the configuration from the ID registers, every other register as
    /// saved, caches empty. The requester-to-StreamID map is not register state: the
    /// restored unit maps each requester ID to the StreamID of the same value.
    pub fn restore(
        mmio_base: PhysAddr,
        saved: &[RegisterValue],
    ) -> Result<SmmuV3Unit, SmmuV3RestoreError> {
        use SmmuV3RestoreError as E;
        let mut vals = [None::<u64>; N];
        for r in saved {
            let i = index(r.offset).ok_or(E::UnknownOffset { offset: r.offset })?;
            let expected = SAVED[i].1;
            if r.width != expected {
                return Err(E::BadWidth {
                    offset: r.offset,
                    width: r.width,
                    expected,
                });
            }
            if expected == 4 && r.value >> 32 != 0 {
                return Err(E::BadWidth {
                    offset: r.offset,
                    width: 8,
                    expected,
                });
            }
            if vals[i].replace(r.value).is_some() {
                return Err(E::Duplicate { offset: r.offset });
            }
        }
        let mut v = [0u64; N];
        for (i, x) in vals.iter().enumerate() {
            v[i] = x.ok_or(E::Missing { offset: SAVED[i].0 })?;
        }
        let w = |i: usize| v[i] as u32;
        let cfg = SmmuV3Config::from_idrs(mmio_base, [w(0), w(1), w(2), w(3)])?;
        let mut u = SmmuV3Unit::new(cfg).map_err(E::Config)?;
        u.regs = Regs {
            cr0: w(4),
            cr0ack: w(5),
            cr1: w(6),
            cr2: w(7),
            gbpa: w(8),
            irq_ctrl: w(9),
            irq_ctrlack: w(10),
            gerror: w(11),
            gerrorn: w(12),
            gerror_irq_cfg0: v[13],
            gerror_irq_cfg1: w(14),
            gerror_irq_cfg2: w(15),
            strtab_base: v[16],
            strtab_base_cfg: w(17),
            cmdq_base: v[18],
            cmdq_prod: w(19),
            cmdq_cons: w(20),
            eventq_base: v[21],
            eventq_prod: w(22),
            eventq_cons: w(23),
            eventq_irq_cfg0: v[24],
            eventq_irq_cfg1: w(25),
            eventq_irq_cfg2: w(26),
        };
        Ok(u)
    }

    /// The registers a snapshot saves (see [`SAVED`]).
    pub(super) fn saved_registers(&self) -> Vec<RegisterValue> {
        let r = &self.regs;
        let c = &self.cfg;
        let values: [u64; N] = [
            c.idr0() as u64,
            c.idr1() as u64,
            c.idr3() as u64,
            c.idr5() as u64,
            r.cr0 as u64,
            r.cr0ack as u64,
            r.cr1 as u64,
            r.cr2 as u64,
            r.gbpa as u64,
            r.irq_ctrl as u64,
            r.irq_ctrlack as u64,
            r.gerror as u64,
            r.gerrorn as u64,
            r.gerror_irq_cfg0,
            r.gerror_irq_cfg1 as u64,
            r.gerror_irq_cfg2 as u64,
            r.strtab_base,
            r.strtab_base_cfg as u64,
            r.cmdq_base,
            r.cmdq_prod as u64,
            r.cmdq_cons as u64,
            r.eventq_base,
            r.eventq_prod as u64,
            r.eventq_cons as u64,
            r.eventq_irq_cfg0,
            r.eventq_irq_cfg1 as u64,
            r.eventq_irq_cfg2 as u64,
        ];
        SAVED
            .iter()
            .zip(values)
            .map(|(&(offset, width), value)| RegisterValue {
                offset,
                width,
                value,
            })
            .collect()
    }
}
