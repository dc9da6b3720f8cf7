//! Driver errors: every one names the unit (its MMIO base) and, where they apply, the
//! DeviceID, the DomainID and the address.

use core::fmt;
use iommu_core::mem::MemError;
use iommu_core::pageset::PageSetError;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};

use crate::format::FormatError;

/// A driver operation failed on the unit at `unit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// MMIO base of the unit.
    pub unit: PhysAddr,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What went wrong in a driver operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A memory access failed.
    Mem {
        /// What was being read or written.
        what: &'static str,
        /// Why.
        err: MemError,
    },
    /// The IVRS-like description is unusable.
    Config {
        /// Why.
        why: &'static str,
    },
    /// Control.IommuEn is already set at bring-up: the unit is live; adopt it instead.
    AlreadyEnabled {
        /// Control register.
        control: u64,
    },
    /// The command buffer did not consume a command, or a COMPLETION_WAIT store did
    /// not arrive.
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Status register when giving up (CmdBufRun clear means the unit stopped the
        /// buffer at an illegal command).
        status: u64,
    },
    /// The page allocator is exhausted.
    OutOfPages {
        /// What the page was for.
        what: &'static str,
    },
    /// The device table needs physically contiguous pages and the allocator handed out
    /// pages that are not.
    NotContiguous {
        /// What needed them.
        what: &'static str,
        /// Pages needed.
        pages: u64,
    },
    /// Every DomainID (1..=65535) is in use.
    OutOfDomainIds,
    /// No domain has this ID.
    NoSuchDomain {
        /// The DomainID.
        did: DomainId,
    },
    /// The domain still has devices attached.
    DomainInUse {
        /// The DomainID.
        did: DomainId,
        /// Devices attached.
        devices: usize,
    },
    /// The domain is preserved for a handover (or adopted and not finished).
    DomainImmutable {
        /// The DomainID.
        did: DomainId,
        /// Why.
        state: &'static str,
    },
    /// The DeviceID is outside the unit's IVRS range.
    DeviceOutOfRange {
        /// The DeviceID.
        device_id: u16,
        /// First DeviceID of the unit.
        first: u16,
        /// Last DeviceID of the unit.
        last: u16,
    },
    /// The device is not attached.
    NoSuchDevice {
        /// The DeviceID.
        device_id: u16,
    },
    /// The device is already attached.
    DeviceAttached {
        /// The DeviceID.
        device_id: u16,
        /// Its domain.
        did: DomainId,
    },
    /// The device is preserved, adopted or blocked: its DTE may not change.
    DeviceImmutable {
        /// The DeviceID.
        device_id: u16,
        /// Why.
        state: &'static str,
    },
    /// The page-table format cannot be built for this unit.
    Format {
        /// Domain (or 0 before allocation).
        did: DomainId,
        /// Why.
        err: FormatError,
    },
    /// The domain kind needs a capability the unit lacks.
    KindUnsupported {
        /// Why.
        why: &'static str,
    },
    /// A map/unmap range is malformed.
    BadRange {
        /// Domain.
        did: DomainId,
        /// First IOVA.
        iova: Iova,
        /// Length.
        len: u64,
        /// Why.
        why: &'static str,
    },
    /// The page size is not supported by this domain.
    PageSizeUnsupported {
        /// Domain.
        did: DomainId,
        /// The size.
        size: PageSize,
    },
    /// The permissions cannot be expressed by the domain's format.
    PermsUnsupported {
        /// Domain.
        did: DomainId,
        /// Why.
        why: &'static str,
    },
    /// An IOVA is already mapped.
    AlreadyMapped {
        /// Domain.
        did: DomainId,
        /// IOVA.
        iova: Iova,
        /// Level of the conflicting entry.
        level: u8,
        /// Its value.
        entry: u64,
    },
    /// An unmap range cuts a larger page.
    PartialLeaf {
        /// Domain.
        did: DomainId,
        /// IOVA of the page.
        iova: Iova,
        /// Its size.
        size: u64,
    },
    /// A table entry is not what the driver wrote.
    Corrupt {
        /// Domain.
        did: DomainId,
        /// Table holding the entry.
        table: PhysAddr,
        /// Level.
        level: u8,
        /// Entry value.
        entry: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The unit is frozen for a kexec: nothing may change.
    Frozen,
    /// Bookkeeping of pages failed.
    PageSet(PageSetError),
}

impl Error {
    pub(crate) fn new(unit: PhysAddr, kind: ErrorKind) -> Self {
        Self { unit, kind }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AMD-Vi unit {}: ", self.unit)?;
        match &self.kind {
            ErrorKind::Mem { what, err } => write!(f, "{what}: {err}"),
            ErrorKind::Config { why } => write!(f, "configuration: {why}"),
            ErrorKind::AlreadyEnabled { control } => write!(
                f,
                "IommuEn already set (Control {control:#x}); adopt the unit instead"
            ),
            ErrorKind::Timeout { what, status } => {
                write!(f, "timed out waiting for {what} (Status {status:#x})")
            }
            ErrorKind::OutOfPages { what } => write!(f, "out of pages for {what}"),
            ErrorKind::NotContiguous { what, pages } => write!(
                f,
                "{what} needs {pages} physically contiguous pages; the allocator gave others"
            ),
            ErrorKind::OutOfDomainIds => f.write_str("all 65535 DomainIDs are in use"),
            ErrorKind::NoSuchDomain { did } => write!(f, "no domain with ID {did}"),
            ErrorKind::DomainInUse { did, devices } => {
                write!(f, "domain {did} still has {devices} device(s) attached")
            }
            ErrorKind::DomainImmutable { did, state } => {
                write!(f, "domain {did} is {state}: map/unmap refused until finish")
            }
            ErrorKind::DeviceOutOfRange {
                device_id,
                first,
                last,
            } => write!(
                f,
                "DeviceID {device_id:#06x} is outside the unit's range {first:#06x}..={last:#06x}"
            ),
            ErrorKind::NoSuchDevice { device_id } => {
                write!(f, "DeviceID {device_id:#06x} is not attached")
            }
            ErrorKind::DeviceAttached { device_id, did } => write!(
                f,
                "DeviceID {device_id:#06x} is already attached to domain {did}"
            ),
            ErrorKind::DeviceImmutable { device_id, state } => write!(
                f,
                "DeviceID {device_id:#06x} is {state}: its DTE may not change"
            ),
            ErrorKind::Format { did, err } => write!(f, "domain {did}: {err}"),
            ErrorKind::KindUnsupported { why } => write!(f, "domain kind unsupported: {why}"),
            ErrorKind::BadRange {
                did,
                iova,
                len,
                why,
            } => write!(f, "domain {did}: range {iova} + {len:#x}: {why}"),
            ErrorKind::PageSizeUnsupported { did, size } => {
                write!(f, "domain {did}: page size {size} unsupported")
            }
            ErrorKind::PermsUnsupported { did, why } => write!(f, "domain {did}: {why}"),
            ErrorKind::AlreadyMapped {
                did,
                iova,
                level,
                entry,
            } => write!(
                f,
                "domain {did}: IOVA {iova} already mapped (level {level} entry {entry:#018x})"
            ),
            ErrorKind::PartialLeaf { did, iova, size } => write!(
                f,
                "domain {did}: unmap range cuts the {size:#x}-byte page at IOVA {iova}"
            ),
            ErrorKind::Corrupt {
                did,
                table,
                level,
                entry,
                why,
            } => write!(
                f,
                "domain {did}: level {level} table {table} entry {entry:#018x}: {why}"
            ),
            ErrorKind::Frozen => f.write_str("unit is frozen for kexec"),
            ErrorKind::PageSet(e) => write!(f, "page bookkeeping: {e:?}"),
        }
    }
}
