//! The live-update handover of an AMD-Vi unit.
//!
//! Old kernel ([`Unit::prepare`](crate::driver::Unit::prepare),
//! [`Unit::freeze`](crate::driver::Unit::freeze), [`Unit::cancel`](crate::driver::Unit::cancel)):
//! the caller names the domains and DeviceIDs to preserve; `prepare` reads the live
//! registers and every preserved DTE, walks every preserved domain's tables, pins the
//! device table, every table page, the GCR3 tables and, for DTEs with IV = 1, their
//! interrupt-remapping tables (the command buffer and event log are not preserved: the
//! next kernel takes fresh ones), checks that what the DTEs reach is exactly what the
//! driver allocated (closure check) and that every page a leaf maps lies in memory
//! another KHO client preserves, and adds the `iommu-amdvi-v1` record to a [`KhoOut`].
//! `freeze` makes the DTEs of devices not preserved blocking (V = 1, TV = 1,
//! IR = IW = 0, never V = 0) with their invalidations; IommuEn stays set.
//!
//! New kernel ([`Unit::adopt`](crate::driver::Unit::adopt),
//! [`Unit::verify`](crate::driver::Unit::verify),
//! [`Unit::finish`](crate::driver::Unit::finish)): the device table is adopted in place,
//! never re-based (with SEV-SNP its base cannot change). `adopt` checks the record
//! against the live registers (Device Table Base and Size, Control, the exclusion
//! range, EFR), the record's page runs against the preserved set, reserves every
//! recorded DomainID before anything is allocated, re-bases the command buffer and the
//! event log with CmdBufEn/EventLogEn cycled while IommuEn stays 1, checks each
//! preserved DTE bit for bit against the record, makes every other translating DTE
//! blocking, then INVALIDATE_IOMMU_ALL (or per-DTE invalidations without EFR.IASup).
//! `verify` walks every adopted domain's tables; `finish` frees only the structure
//! pages verification established.
//!
//! Failure policy: a device whose DTE or tables cannot be trusted is blocked (its DTE
//! made blocking and invalidated), never passed through; a unit whose record or
//! registers cannot be trusted gets every DTE of its live device table made blocking.

mod adopt;
mod prepare;
mod tree;

pub use crate::record;
pub use crate::record::client_name;
/// The outgoing KHO handover (arch-neutral; it lives in `iommu-core`).
pub use iommu_core::kho::KhoOut;

pub use adopt::{AdoptFailure, AdoptReport, BlockedDevice, FinishReport, VerifyReport};
pub use prepare::{FreezeReport, PrepareReport};

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use iommu_core::kho::KhoError;
use iommu_core::mem::MemError;
use iommu_core::pageset::{PageSet, PageSetError};
use iommu_core::pgtable::WalkError;
use iommu_core::{DomainId, Iova, PhysAddr};

use crate::driver::ErrorKind;
use record::{Malformed, Record};

/// What the caller preserves: domains, and devices (DeviceIDs) attached to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Domains to preserve.
    pub domains: Vec<DomainId>,
    /// DeviceIDs to preserve (each attached to one of `domains`).
    pub devices: Vec<u16>,
}

/// A handover step failed on the unit at `unit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverError {
    /// MMIO base of the unit.
    pub unit: PhysAddr,
    /// What went wrong.
    pub kind: HandoverErrorKind,
}

/// What went wrong in a handover step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverErrorKind {
    /// A driver operation failed.
    Driver(ErrorKind),
    /// The KHO blob could not be read or written, or the record's header, checksum,
    /// family or version is wrong (a record of another version is
    /// [`KhoError::Record`] with `RecordError::Version { found, supported }`).
    Kho(KhoError),
    /// The record payload is malformed.
    Malformed {
        /// Physical address of the record.
        record: PhysAddr,
        /// What is wrong where.
        err: Malformed,
    },
    /// The record describes another unit (or another DeviceID range).
    WrongUnit {
        /// MMIO base in the record.
        record: PhysAddr,
        /// Why.
        why: &'static str,
    },
    /// A live register disagrees with the record.
    Register {
        /// Register name.
        register: &'static str,
        /// Live value.
        live: u64,
        /// Value in the record.
        record: u64,
    },
    /// Control.IommuEn is clear: DMA is not translated at all.
    TranslationDisabled {
        /// Control register.
        control: u64,
    },
    /// A page is not preserved (not in the preserved set, or not in the record's runs).
    NotPreserved {
        /// What the page holds.
        what: &'static str,
        /// The page.
        page: PhysAddr,
        /// DeviceID concerned, if any.
        device: Option<u16>,
        /// Domain concerned, if any.
        did: Option<DomainId>,
    },
    /// A page run of the record holds pages the preserved set does not.
    RecordRunNotPreserved {
        /// First page of the run.
        start: PhysAddr,
        /// Pages the run claims.
        pages: u64,
        /// The first page of the run not preserved.
        page: PhysAddr,
    },
    /// The record's runs claim more pages than the preserved set holds.
    RecordRunTooLarge {
        /// First page of the run.
        start: PhysAddr,
        /// Pages claimed (the run, or all runs together).
        pages: u64,
        /// Pages in the preserved set.
        preserved: u64,
    },
    /// A page run of the record holds pages no verified structure accounts for:
    /// `finish` never frees them.
    RecordPagesNotTables {
        /// First page of the run.
        start: PhysAddr,
        /// Pages the run claims.
        pages: u64,
        /// The first page not accounted for.
        page: PhysAddr,
        /// How many pages are not accounted for.
        count: u64,
    },
    /// A leaf maps a page it must not reach: memory nobody preserved, or a page of the
    /// unit's structures.
    LeafTarget {
        /// The domain.
        did: DomainId,
        /// The IOVA that reaches the page.
        iova: Iova,
        /// The page.
        page: PhysAddr,
        /// What the page is.
        why: &'static str,
    },
    /// The page allocator had no page for `what` at adoption.
    NoFreePage {
        /// What the page was for.
        what: &'static str,
        /// Pages in the preserved set.
        preserved_pages: u64,
    },
    /// A DTE has reserved bits set.
    ReservedBits {
        /// Address of the DTE.
        addr: PhysAddr,
        /// DeviceID.
        device: u16,
        /// The offending bits, per qword.
        bits: [u64; 4],
    },
    /// An entry disagrees with the record (or, in `prepare`, with the driver).
    Mismatch {
        /// Which field.
        what: &'static str,
        /// Entry address.
        addr: PhysAddr,
        /// DeviceID.
        device: Option<u16>,
        /// Domain.
        did: Option<DomainId>,
        /// Value found.
        found: u64,
        /// Value expected.
        expected: u64,
    },
    /// A domain's format cannot be used on this unit.
    Format {
        /// The domain.
        did: DomainId,
        /// Why.
        why: String,
    },
    /// The walk of a domain's tables failed.
    Walk {
        /// The domain.
        did: DomainId,
        /// Where and why.
        err: WalkError,
    },
    /// Closure check: a page reachable from the preserved DTEs is not pinned.
    ClosureMissing {
        /// The first such page.
        page: PhysAddr,
        /// How many.
        count: u64,
    },
    /// Closure check: a pinned page is not reachable from the preserved DTEs.
    ClosureExtra {
        /// The first such page.
        page: PhysAddr,
        /// How many.
        count: u64,
    },
    /// The selection is inconsistent.
    Selection {
        /// Why.
        why: &'static str,
        /// DeviceID concerned.
        device: Option<u16>,
        /// Domain concerned.
        did: Option<DomainId>,
    },
    /// The step is not allowed now.
    State {
        /// Why.
        why: &'static str,
    },
    /// A memory access failed.
    Mem {
        /// What was being read or written.
        what: &'static str,
        /// Why.
        err: MemError,
    },
    /// Page-set bookkeeping failed.
    PageSet(PageSetError),
}

impl HandoverError {
    pub(crate) fn new(unit: PhysAddr, kind: HandoverErrorKind) -> Self {
        Self { unit, kind }
    }
}

impl From<crate::driver::Error> for HandoverError {
    fn from(e: crate::driver::Error) -> Self {
        Self {
            unit: e.unit,
            kind: HandoverErrorKind::Driver(e.kind),
        }
    }
}

fn opt_dev(f: &mut fmt::Formatter<'_>, v: &Option<u16>) -> fmt::Result {
    match v {
        Some(x) => write!(f, ", DeviceID {x:#06x}"),
        None => Ok(()),
    }
}

fn opt_did(f: &mut fmt::Formatter<'_>, v: &Option<DomainId>) -> fmt::Result {
    match v {
        Some(x) => write!(f, ", domain {x}"),
        None => Ok(()),
    }
}

impl fmt::Display for HandoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandoverErrorKind as K;
        write!(f, "AMD-Vi unit {} handover: ", self.unit)?;
        match &self.kind {
            K::Driver(k) => write!(
                f,
                "{}",
                crate::driver::Error {
                    unit: self.unit,
                    kind: k.clone()
                }
            ),
            K::Kho(e) => write!(f, "KHO: {e}"),
            K::Malformed { record, err } => write!(f, "record at {record} malformed: {err}"),
            K::WrongUnit { record, why } => {
                write!(f, "record describes the unit at {record}: {why}")
            }
            K::Register {
                register,
                live,
                record,
            } => write!(
                f,
                "live {register} {live:#x} differs from the record's {record:#x}"
            ),
            K::TranslationDisabled { control } => {
                write!(f, "IommuEn is clear (Control {control:#x}): DMA is untranslated")
            }
            K::NotPreserved {
                what,
                page,
                device,
                did,
            } => {
                write!(f, "{what} page {page} is not preserved")?;
                opt_dev(f, device)?;
                opt_did(f, did)
            }
            K::RecordRunNotPreserved { start, pages, page } => write!(
                f,
                "record page run at {start} ({pages:#x} pages) holds page {page}, which is not preserved"
            ),
            K::RecordRunTooLarge {
                start,
                pages,
                preserved,
            } => write!(
                f,
                "record page run at {start} claims {pages:#x} pages, more than the {preserved:#x} preserved pages"
            ),
            K::RecordPagesNotTables {
                start,
                pages,
                page,
                count,
            } => write!(
                f,
                "record page run at {start} ({pages:#x} pages) claims {count:#x} page(s) that are \
                 not verified structures of the unit, first {page}: kept, never freed"
            ),
            K::LeafTarget {
                did,
                iova,
                page,
                why,
            } => write!(f, "domain {did}: IOVA {iova} maps page {page}, which is {why}"),
            K::NoFreePage {
                what,
                preserved_pages,
            } => write!(
                f,
                "no free page for {what}: the allocator keeps off the {preserved_pages:#x} preserved pages"
            ),
            K::ReservedBits { addr, device, bits } => write!(
                f,
                "DTE at {addr} of DeviceID {device:#06x} has reserved bits set: {:#x} {:#x} {:#x} {:#x}",
                bits[0], bits[1], bits[2], bits[3]
            ),
            K::Mismatch {
                what,
                addr,
                device,
                did,
                found,
                expected,
            } => {
                write!(f, "{what} at {addr} is {found:#x}, expected {expected:#x}")?;
                opt_dev(f, device)?;
                opt_did(f, did)
            }
            K::Format { did, why } => write!(f, "domain {did}: {why}"),
            K::Walk { did, err } => write!(f, "domain {did}: {err}"),
            K::ClosureMissing { page, count } => write!(
                f,
                "closure check: {count} page(s) reachable from the preserved DTEs are not pinned, first {page}"
            ),
            K::ClosureExtra { page, count } => write!(
                f,
                "closure check: {count} pinned page(s) are not reachable from the preserved DTEs, first {page}"
            ),
            K::Selection { why, device, did } => {
                write!(f, "selection: {why}")?;
                opt_dev(f, device)?;
                opt_did(f, did)
            }
            K::State { why } => write!(f, "{why}"),
            K::Mem { what, err } => write!(f, "{what}: {err}"),
            K::PageSet(e) => write!(f, "page bookkeeping: {e:?}"),
        }
    }
}

/// Old-kernel handover state of a unit (between `prepare` and `cancel`).
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) client: String,
    pub(crate) record: Record,
    pub(crate) pinned: PageSet,
    pub(crate) frozen: bool,
    /// Devices `freeze` detached: `(DeviceID, domain)`, attached again by `cancel`.
    pub(crate) detached: Vec<(u16, DomainId)>,
}

/// New-kernel handover state of a unit (between `adopt` and `finish`).
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) record: Record,
    pub(crate) record_pa: PhysAddr,
    pub(crate) record_bytes: u64,
    pub(crate) preserved: PageSet,
    /// Pages established as this unit's structures: the device table, GCR3 and
    /// interrupt-remapping tables of adopted devices (by `adopt`), the table pages of
    /// every domain whose walk succeeded (by `verify`). `finish` frees no other page.
    pub(crate) known: PageSet,
}

/// The first page of `[start, start + pages)` that `set` lacks, stepping block by block
/// of the set (the work is bounded by its blocks, whatever `pages` claims).
pub(crate) fn first_missing(start: PhysAddr, pages: u64, set: &PageSet) -> Option<PhysAddr> {
    let end = start.0.saturating_add(pages.saturating_mul(4096));
    let mut page = start.0;
    while page < end {
        match set.containing_block(PhysAddr(page)) {
            Some((b, o)) => page = b.0.saturating_add(4096 << o),
            None => return Some(PhysAddr(page)),
        }
    }
    None
}

/// Page runs `(first, count)` of a set, ascending.
pub(crate) fn runs(set: &PageSet) -> Vec<(PhysAddr, u64)> {
    let mut out: Vec<(PhysAddr, u64)> = Vec::new();
    for (a, order) in set.iter() {
        let n = 1u64 << order;
        match out.last_mut() {
            Some((p, c)) if p.0 + *c * 4096 == a.0 => *c += n,
            _ => out.push((a, n)),
        }
    }
    out
}

/// Adds page `p` to `set` unless it holds it already.
pub(crate) fn add_page(set: &mut PageSet, p: PhysAddr) {
    if !set.contains(p) {
        let _ = set.insert(p, 0);
    }
}
