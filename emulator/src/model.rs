//! The interface between the machine and an IOMMU hardware model.
//!
//! A model owns its registers and caches. The machine routes MMIO accesses inside the
//! model's window to it and asks it to translate every DMA request of the devices behind
//! it. Models read and write tables only through the memory the machine passes in, so a
//! walk that touches poison comes back as [`DmaError::Memory`], never as a silent zero.

use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::Perms;
use iommu_core::{Iova, PageSize, Pasid, PhysAddr, RequesterId};
use std::fmt;

/// Which IOMMU architecture a unit implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitKind {
    /// Intel VT-d DMA-remapping unit.
    Vtd,
    /// AMD-Vi IOMMU.
    AmdVi,
    /// Arm SMMUv3.
    Smmuv3,
}

impl UnitKind {
    /// The name used in snapshots and reports (`"vtd"`, `"amdvi"`, `"smmuv3"`).
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Vtd => "vtd",
            UnitKind::AmdVi => "amdvi",
            UnitKind::Smmuv3 => "smmuv3",
        }
    }
}

/// The kind of a DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// One untranslated DMA request, at most up to the end of its 4 KiB page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    /// The requester.
    pub rid: RequesterId,
    /// The PASID, if the request carries a PASID TLP prefix.
    pub pasid: Option<Pasid>,
    /// Privileged-mode request (PASID prefix PMR bit); only meaningful with a PASID.
    pub privileged: bool,
    /// Input address.
    pub iova: Iova,
    /// Read or write.
    pub access: Access,
}

impl DmaRequest {
    /// The fault event of this request at the unit at `unit`: architectural `code`,
    /// its meaning in the specification's words, and whether it reached the
    /// architectural channel.
    pub fn fault(
        &self,
        unit: PhysAddr,
        code: u32,
        reason: &'static str,
        recorded: bool,
    ) -> FaultEvent {
        FaultEvent {
            unit,
            rid: self.rid,
            pasid: self.pasid,
            iova: self.iova,
            access: self.access,
            code,
            reason,
            recorded,
        }
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translated {
    /// Output address of the request's IOVA.
    pub pa: PhysAddr,
    /// Permissions of the page.
    pub perms: Perms,
    /// Size of the page that translated it (pass-through reports 4 KiB).
    pub page_size: PageSize,
}

/// A DMA fault as the hardware reports it, and as the test log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// MMIO base of the unit that faulted the request.
    pub unit: PhysAddr,
    /// The requester.
    pub rid: RequesterId,
    /// The PASID of the request, if any.
    pub pasid: Option<Pasid>,
    /// The faulting address.
    pub iova: Iova,
    /// Read or write.
    pub access: Access,
    /// Architectural fault code (VT-d fault reason, AMD event code, SMMU event ID).
    pub code: u32,
    /// The code's meaning, in the specification's words.
    pub reason: &'static str,
    /// Whether the fault reached the architectural channel (false when fault processing
    /// is disabled for the device, or the recording registers overflowed).
    pub recorded: bool,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unit {} {} {} at IOVA {}",
            self.unit, self.rid, self.access, self.iova
        )?;
        if let Some(p) = self.pasid {
            write!(f, " PASID {p}")?;
        }
        write!(f, ": fault {:#x} ({})", self.code, self.reason)?;
        if !self.recorded {
            f.write_str(" [not recorded]")?;
        }
        Ok(())
    }
}

/// Why a DMA request did not reach memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The IOMMU blocked the request and reported a fault.
    Fault(FaultEvent),
    /// The IOMMU's walk read memory that is unbacked or poisoned. On silicon this
    /// would be a translation through garbage; the emulator stops and says so.
    Memory {
        /// MMIO base of the unit whose walk failed.
        unit: PhysAddr,
        /// The request.
        request: DmaRequest,
        /// What was read.
        error: MemError,
    },
    /// The data access itself (after translation) hit unbacked or poisoned memory.
    Data {
        /// The request.
        request: DmaRequest,
        /// The translated address range's failure.
        error: MemError,
    },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::Fault(e) => write!(f, "DMA fault: {e}"),
            DmaError::Memory {
                unit,
                request,
                error,
            } => write!(
                f,
                "unit {unit}: translation walk for {} IOVA {} read bad memory: {error}",
                request.rid, request.iova
            ),
            DmaError::Data { request, error } => write!(
                f,
                "{} {} at IOVA {}: data access failed: {error}",
                request.rid, request.access, request.iova
            ),
        }
    }
}

impl std::error::Error for DmaError {}

/// One register value, as saved in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterValue {
    /// Byte offset from the MMIO base.
    pub offset: u64,
    /// Access width in bytes (4 or 8).
    pub width: u8,
    /// The value.
    pub value: u64,
}

/// A register-level IOMMU hardware model.
pub trait IommuModel: Send {
    /// The architecture.
    fn kind(&self) -> UnitKind;
    /// Physical base address of the register window.
    fn mmio_base(&self) -> PhysAddr;
    /// Size of the register window in bytes.
    fn mmio_size(&self) -> u64;
    /// A register read of `width` bytes (4 or 8) at `offset` in the window.
    fn mmio_read(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8) -> u64;
    /// A register write; side effects (commands, queue processing) happen here.
    fn mmio_write(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64);
    /// Translates one DMA request, using and filling the modelled caches, and reports a
    /// fault through the architectural channel when it fails.
    fn translate(
        &mut self,
        mem: &mut dyn PhysMem,
        request: &DmaRequest,
    ) -> Result<Translated, DmaError>;
    /// Every fault this unit raised so far, recorded or not, oldest first.
    fn fault_log(&self) -> &[FaultEvent];
    /// Programming errors the model flagged (sequences the spec calls undefined,
    /// reserved bits written), oldest first.
    fn diagnostics(&self) -> &[String];
    /// The architectural register state to save in a snapshot.
    fn save_registers(&self) -> Vec<RegisterValue>;
}
