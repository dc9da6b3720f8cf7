//! The AMD-Vi (AMD I/O Virtualization, spec 48882) model: a strict register-level IOMMU.
//!
//! Layout follows the VT-d model: [`mmio`] holds the register file, [`cache`] the
//! device-table cache and the DomainID-tagged IOTLB, [`translate`] the DMA path,
//! [`walk`] the model's own page-table walker (it shares only `amdvi::hw` with the
//! driver side),
//! [`cmd`] the command buffer and [`event`] the event log. Behaviour follows
//! `shared/reference/amdvi.md` (which names Linux, Xen, QEMU, VirtualBox and FreeBSD);
//! where QEMU's `amd_iommu.c` is laxer than the specification the model follows the
//! specification.

mod cache;
mod cmd;
mod event;
mod mmio;
mod translate;
mod walk;

use crate::model::{
    DmaError, DmaRequest, FaultEvent, IommuModel, RegisterValue, Translated, UnitKind,
};
use amdvi::hw::regs;
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use std::ops::RangeInclusive;

/// Configuration of one AMD-Vi unit, as firmware (ACPI IVRS) would describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdViConfig {
    /// Physical base of the register window (IVHD IOMMU base address).
    pub base: PhysAddr,
    /// Extended Feature register value (HATS, GATS, IASup, GTSup, ...).
    pub efr: u64,
    /// DeviceIDs (requester IDs) behind this unit, as the IVHD device entries give them.
    pub device_ids: RangeInclusive<u16>,
    /// The SME C-bit position (CPUID 0x8000001F EBX\[5:0\]) when memory encryption is
    /// active, `None` otherwise: the walker masks it out of every table pointer and
    /// page address (reference §7, Linux `__sme_clr`).
    pub c_bit: Option<u8>,
}

impl AmdViConfig {
    /// A unit at `base` with 4-level host tables (HATS = 0), 4-level guest tables
    /// (GATS = 0), GTSup, GIOSup and IASup, covering every DeviceID.
    pub fn new(base: PhysAddr) -> Self {
        let efr = regs::field_value(regs::EFR::IA_SUP, 1)
            | regs::field_value(regs::EFR::GT_SUP, 1)
            | regs::field_value(regs::EFR::GIO_SUP, 1);
        Self {
            base,
            efr,
            device_ids: 0..=u16::MAX,
            c_bit: None,
        }
    }

    /// The same unit with the SME C-bit at `bit` (or none).
    pub fn with_c_bit(mut self, bit: Option<u8>) -> Self {
        self.c_bit = bit;
        self
    }

    /// The same unit with DeviceIDs `range` only.
    pub fn with_device_ids(mut self, range: RangeInclusive<u16>) -> Self {
        self.device_ids = range;
        self
    }

    /// The same unit with EFR `efr`.
    pub fn with_efr(mut self, efr: u64) -> Self {
        self.efr = efr;
        self
    }
}

/// Why saved registers could not rebuild an AMD-Vi unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmdViRestoreError {
    /// A register the model needs is missing.
    Missing {
        /// Its offset.
        offset: u64,
    },
    /// A register was saved with a width other than 8.
    BadWidth {
        /// Offset.
        offset: u64,
        /// Saved width.
        width: u8,
    },
    /// An offset that is not a saved AMD-Vi register.
    UnknownOffset {
        /// Offset.
        offset: u64,
    },
    /// The same register appears twice.
    Duplicate {
        /// Offset.
        offset: u64,
    },
}

impl std::fmt::Display for AmdViRestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { offset } => write!(f, "AMD-Vi register {offset:#x} missing"),
            Self::BadWidth { offset, width } => {
                write!(
                    f,
                    "AMD-Vi register {offset:#x} saved {width} bytes wide, not 8"
                )
            }
            Self::UnknownOffset { offset } => {
                write!(f, "{offset:#x} is not a saved AMD-Vi register")
            }
            Self::Duplicate { offset } => write!(f, "AMD-Vi register {offset:#x} saved twice"),
        }
    }
}

impl std::error::Error for AmdViRestoreError {}

/// One AMD-Vi unit.
#[derive(Debug)]
pub struct AmdViUnit {
    cfg: AmdViConfig,
    regs: mmio::Regs,
    caches: cache::Caches,
    /// Set when an illegal command or a command-buffer memory error stopped processing;
    /// cleared when software sets CmdBufEn again.
    cmd_stopped: bool,
    faults: Vec<FaultEvent>,
    diags: Vec<String>,
}

impl AmdViUnit {
    /// A unit in its reset state (every register 0 except EFR).
    pub fn new(cfg: AmdViConfig) -> Self {
        Self {
            cfg,
            regs: mmio::Regs::default(),
            caches: cache::Caches::default(),
            cmd_stopped: false,
            faults: Vec::new(),
            diags: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AmdViConfig {
        &self.cfg
    }

    /// Whether `device_id` is behind this unit.
    pub fn covers(&self, device_id: u16) -> bool {
        self.cfg.device_ids.contains(&device_id)
    }

    /// Number of device table entries currently cached.
    pub fn cached_dtes(&self) -> usize {
        self.caches.dtes()
    }

    /// Number of IOTLB entries currently cached.
    pub fn cached_translations(&self) -> usize {
        self.caches.iotlb_len()
    }

    /// Rebuilds a unit at `mmio_base` from the registers `save_registers` produced
    /// (a snapshot). EFR comes from the saved value; the DeviceID range is not part of
    /// the register state, so the restored unit covers every DeviceID (the machine
    /// still routes each device to its unit).
    pub fn restore(
        mmio_base: PhysAddr,
        regs: &[RegisterValue],
    ) -> Result<AmdViUnit, AmdViRestoreError> {
        Self::restore_regs(mmio_base, regs)
    }

    fn diag(&mut self, msg: String) {
        self.diags.push(format!("amdvi {}: {msg}", self.cfg.base));
    }
}

impl IommuModel for AmdViUnit {
    fn kind(&self) -> UnitKind {
        UnitKind::AmdVi
    }
    fn mmio_base(&self) -> PhysAddr {
        self.cfg.base
    }
    fn mmio_size(&self) -> u64 {
        regs::MMIO_WINDOW
    }
    fn mmio_read(&mut self, _mem: &mut dyn PhysMem, offset: u64, width: u8) -> u64 {
        self.read_reg(offset, width)
    }
    fn mmio_write(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64) {
        self.write_reg(mem, offset, width, value)
    }
    fn translate(
        &mut self,
        mem: &mut dyn PhysMem,
        request: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        self.translate_request(mem, request)
    }
    fn fault_log(&self) -> &[FaultEvent] {
        &self.faults
    }
    fn diagnostics(&self) -> &[String] {
        &self.diags
    }
    fn save_registers(&self) -> Vec<RegisterValue> {
        self.saved_registers()
    }
}
