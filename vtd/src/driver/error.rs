//! Driver errors: every one names the unit (its MMIO base) and, where they apply, the
//! device, the domain ID and the address.

use core::fmt;
use iommu_core::mem::MemError;
use iommu_core::pageset::PageSetError;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};

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
    /// The unit cannot run in the mode asked for.
    ModeUnsupported {
        /// Why (the capability missing).
        why: &'static str,
    },
    /// GSTS.TES is already set at bring-up: the unit is live; adopt it instead.
    TranslationAlreadyEnabled {
        /// GSTS.
        gsts: u32,
    },
    /// Neither queued invalidation (ECAP.QI) nor register-based invalidation (VER major
    /// below 6, legacy mode) is available.
    NoInvalidation {
        /// VER major version.
        ver_major: u8,
    },
    /// A register or the invalidation-wait status did not reach the awaited state.
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Last value read.
        last: u64,
    },
    /// The unit flagged an invalidation queue error (FSTS.IQE).
    QueueError {
        /// IQERCD.
        iqercd: u64,
        /// IQH.
        iqh: u64,
    },
    /// The page allocator is exhausted.
    OutOfPages {
        /// What the page was for.
        what: &'static str,
    },
    /// Every domain ID of CAP.ND is in use.
    OutOfDomainIds {
        /// Number of domain IDs of the unit.
        count: u32,
    },
    /// No domain has this ID.
    NoSuchDomain {
        /// The domain ID.
        did: DomainId,
    },
    /// The domain still has devices attached.
    DomainInUse {
        /// The domain ID.
        did: DomainId,
        /// Devices attached.
        devices: usize,
    },
    /// The domain is preserved for a handover (or adopted and not finished): its
    /// mappings may not change until `finish` (or `cancel`).
    DomainImmutable {
        /// The domain ID.
        did: DomainId,
        /// Why.
        state: &'static str,
    },
    /// The device is not attached.
    NoSuchDevice {
        /// The device.
        rid: RequesterId,
    },
    /// The device is already attached.
    DeviceAttached {
        /// The device.
        rid: RequesterId,
        /// Its domain.
        did: DomainId,
    },
    /// The device is preserved, adopted or blocked: its context entry may not change.
    DeviceImmutable {
        /// The device.
        rid: RequesterId,
        /// Why.
        state: &'static str,
    },
    /// The device is on another PCI segment than the unit serves.
    WrongSegment {
        /// The device.
        rid: RequesterId,
        /// The unit's segment.
        segment: u16,
    },
    /// The page-table format cannot be built for this unit.
    Format {
        /// Domain (or 0 before allocation).
        did: DomainId,
        /// Why.
        err: FormatError,
    },
    /// The domain kind needs scalable mode or a capability the unit lacks.
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
    /// The page size is not supported by this unit and domain.
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
    /// An IOVA is already mapped (or covered by a larger page).
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
    /// A table entry the driver wrote is not what it reads back (tables edited behind
    /// the driver's back).
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
    /// A handover is in progress on the unit (prepare called, not cancelled).
    HandoverInProgress,
    /// Bookkeeping of preserved pages failed.
    PageSet(PageSetError),
}

impl Error {
    pub(crate) fn new(unit: PhysAddr, kind: ErrorKind) -> Self {
        Self { unit, kind }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VT-d unit {}: ", self.unit)?;
        match &self.kind {
            ErrorKind::Mem { what, err } => write!(f, "{what}: {err}"),
            ErrorKind::ModeUnsupported { why } => write!(f, "mode unsupported: {why}"),
            ErrorKind::TranslationAlreadyEnabled { gsts } => write!(
                f,
                "translation already enabled (GSTS {gsts:#x}); adopt the unit instead"
            ),
            ErrorKind::NoInvalidation { ver_major } => write!(
                f,
                "no invalidation interface: ECAP.QI = 0 and VER major {ver_major} (register-based needs < 6, legacy mode)"
            ),
            ErrorKind::Timeout { what, last } => {
                write!(f, "timed out waiting for {what} (last value {last:#x})")
            }
            ErrorKind::QueueError { iqercd, iqh } => write!(
                f,
                "invalidation queue error: IQERCD {iqercd:#x}, IQH {iqh:#x}"
            ),
            ErrorKind::OutOfPages { what } => write!(f, "out of pages for {what}"),
            ErrorKind::OutOfDomainIds { count } => {
                write!(f, "all {count} domain IDs are in use")
            }
            ErrorKind::NoSuchDomain { did } => write!(f, "no domain with ID {did}"),
            ErrorKind::DomainInUse { did, devices } => {
                write!(f, "domain {did} still has {devices} device(s) attached")
            }
            ErrorKind::DomainImmutable { did, state } => {
                write!(f, "domain {did} is {state}: map/unmap refused until finish")
            }
            ErrorKind::NoSuchDevice { rid } => write!(f, "device {rid} is not attached"),
            ErrorKind::DeviceAttached { rid, did } => {
                write!(f, "device {rid} is already attached to domain {did}")
            }
            ErrorKind::DeviceImmutable { rid, state } => {
                write!(f, "device {rid} is {state}: its binding may not change")
            }
            ErrorKind::WrongSegment { rid, segment } => {
                write!(f, "device {rid} is not on segment {segment:#x} of this unit")
            }
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
            ErrorKind::HandoverInProgress => f.write_str("a handover is in progress"),
            ErrorKind::PageSet(e) => write!(f, "page bookkeeping: {e:?}"),
        }
    }
}
