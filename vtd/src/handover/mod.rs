//! The live-update handover of a VT-d unit.
//!
//! Old kernel ([`Unit::prepare`](crate::driver::Unit::prepare),
//! [`Unit::freeze`](crate::driver::Unit::freeze), [`Unit::cancel`](crate::driver::Unit::cancel)):
//! the caller names the domains and devices to preserve; `prepare` walks the live
//! registers and tables, pins every table page, checks that the pages reachable from
//! the live root for the preserved devices are exactly the pinned ones (closure check),
//! that every page a leaf maps lies in memory other KHO clients preserve (guest memory,
//! added with [`KhoOut::preserve`] before `prepare`), and adds the versioned record to a
//! [`KhoOut`]; preserved domains become immutable.
//! [`KhoOut::finalize`] writes the KHO blob. `freeze` removes everything not
//! preserved from the hardware's view and invalidates globally; translation stays on.
//!
//! New kernel ([`Unit::adopt`](crate::driver::Unit::adopt),
//! [`Unit::verify`](crate::driver::Unit::verify),
//! [`Unit::finish`](crate::driver::Unit::finish)): from memory, registers and the blob's
//! physical address only. `adopt` does O(units + domains + devices) work (the blackout
//! path) plus one check of the record's page runs against the preserved set (bounded by
//! the set's blocks); `verify` walks every table (optional, outside the blackout),
//! checks every leaf target against the preserved set and the unit's table pages, and
//! establishes the exact set of the unit's structure pages; `finish` makes the domains
//! mutable again and frees only pages of that set no longer referenced. The preserved
//! set is shared by every KHO client, so a record run can claim another client's
//! memory (guest memory) and pass adopt's check: such pages are reported by `verify`
//! and never freed.
//!
//! # Driving a handover (what a scenario runner does)
//!
//! ```text
//! // Old kernel. `hw` is a driver::Hw { regs, mem, pages } built for each call
//! // (on the emulator: Machine::driver_access(base) plus a driver::PagePool).
//! let mut unit = Unit::init(&mut hw, &UnitConfig::new(base, Mode::Scalable))?;
//! let d = unit.create_domain(&mut hw, DomainKind::FirstStage)?;
//! unit.map(&mut hw, d, iova, pa, len, PageSize::SIZE_2M, Perms::RW)?;
//! unit.attach(&mut hw, rid, d)?;
//! let mut kho = KhoOut::new();
//! kho.preserve(&guest_memory);                      // pages other subsystems keep
//! let p = unit.prepare(&mut hw, &mut kho, &Selection { domains: vec![d], devices: vec![rid] })?;
//! let blob = kho.finalize(hw.mem, &mut frames)?;    // the one address handed over
//! let f = unit.freeze(&mut hw)?;
//! machine.kexec(blob)?;
//! // New kernel: the preserved set, read once against its RAM, keeps the PagePool off
//! // those pages and goes to adopt (plain `Unit::adopt` reads it from the blob again).
//! let preserved = kho::read_preserved_in(mem, blob, &ram)?;
//! pool.exclude(&preserved);
//! let (mut unit, a) =
//!     Unit::adopt_with_preserved(&mut hw, &UnitConfig::new(base, Mode::Scalable), blob, preserved)
//!     .map_err(|f| f.error)?;                       // a.entries_read: the blackout work
//! let v = unit.verify(&mut hw)?;                    // optional full walk, leaf targets too
//! let fin = unit.finish(&mut hw)?;                  // domains mutable again
//! ```
//!
//! Every step returns a report with counters (`PrepareReport`, `FreezeReport`,
//! `AdoptReport`, `VerifyReport`, `FinishReport`); `Unit::counters` counts invalidations,
//! descriptors, pages and faults.
//!
//! Failure policy: a device whose state cannot be trusted is blocked (its context
//! entry, or the root entry of its bus when the context table itself is bad, made
//! non-present and invalidated); when the unit as a whole cannot be trusted (no valid
//! record, registers that disagree with it) every device is blocked by pointing the
//! unit at an empty root table. Translation is never disabled and nothing falls back
//! to pass-through.

mod adopt;
mod prepare;
pub use crate::record;
pub use crate::record::client_name;
/// The outgoing KHO handover (arch-neutral; it lives in `iommu-core`).
pub use iommu_core::kho::KhoOut;
mod tree;

pub use adopt::{AdoptFailure, AdoptReport, BlockedDevice, FinishReport, VerifyReport};
pub use prepare::{FreezeReport, PrepareReport};

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use iommu_core::kho::KhoError;
use iommu_core::mem::MemError;
use iommu_core::pageset::{PageSet, PageSetError};
use iommu_core::pgtable::WalkError;
use iommu_core::{DomainId, Iova, PhysAddr, RequesterId};

use crate::driver::{ErrorKind, Mode};
use record::{Malformed, Record};

/// What the caller preserves: domains, and devices attached to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Domains to preserve.
    pub domains: Vec<DomainId>,
    /// Devices to preserve (each attached to one of `domains`).
    pub devices: Vec<RequesterId>,
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
    /// The record describes another unit.
    WrongUnit {
        /// MMIO base in the record.
        record: PhysAddr,
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
    /// Translation is not enabled (GSTS.TES clear): DMA would bypass the tables.
    TranslationDisabled {
        /// GSTS.
        gsts: u32,
    },
    /// A table page is not in the preserved set read back from the KHO blob (or not in
    /// the record's page runs).
    NotPreserved {
        /// What the page holds.
        what: &'static str,
        /// The page.
        page: PhysAddr,
        /// Device concerned, if any.
        device: Option<RequesterId>,
        /// Domain concerned, if any.
        did: Option<DomainId>,
    },
    /// A page run of the record holds pages the preserved set read from the blob does
    /// not: the old kernel pinned every table page, so the record is not to be trusted
    /// (freeing the run would give away memory in use).
    RecordRunNotPreserved {
        /// First page of the run.
        start: PhysAddr,
        /// Pages the run claims.
        pages: u64,
        /// The first page of the run not preserved.
        page: PhysAddr,
    },
    /// A page run of the record (or the runs together) claims more pages than the
    /// preserved set holds: malformed.
    RecordRunTooLarge {
        /// First page of the run.
        start: PhysAddr,
        /// Pages the run claims (all runs together when each fits on its own).
        pages: u64,
        /// Pages in the preserved set.
        preserved: u64,
    },
    /// A page run of the record holds pages that no structure verification reached
    /// accounts for: not the root table, not a context or PASID page of an adopted
    /// device, not a table page of a domain whose walk succeeded (tables of domains
    /// refused at adoption or verification are counted too; they were never
    /// established as tables). `finish` never frees them: they may be another KHO
    /// client's memory (guest memory a device DMAs into) that a tampered record claims.
    RecordPagesNotTables {
        /// First page of the run.
        start: PhysAddr,
        /// Pages the run claims.
        pages: u64,
        /// The first page of the run not accounted for.
        page: PhysAddr,
        /// How many pages of the run are not accounted for.
        count: u64,
    },
    /// A leaf maps a page that must not be reached: memory nobody preserved (the new
    /// kernel may use it), or a page table of the unit.
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
    /// The page allocator had no page for `what` at adoption, while the preserved set
    /// read from the blob (which the allocator must keep off) holds `preserved_pages`
    /// pages: a preserved-memory map claiming (nearly) all memory, or a pool too small.
    NoFreePage {
        /// What the page was for.
        what: &'static str,
        /// Pages in the preserved set.
        preserved_pages: u64,
    },
    /// An entry has reserved bits set.
    ReservedBits {
        /// What the entry is.
        what: &'static str,
        /// Its address.
        addr: PhysAddr,
        /// Device concerned.
        device: Option<RequesterId>,
        /// The offending bits (per qword, the first non-zero).
        bits: u64,
    },
    /// An entry is not present where the record says a device is bound.
    NotPresent {
        /// What the entry is.
        what: &'static str,
        /// Its address.
        addr: PhysAddr,
        /// Device.
        device: RequesterId,
    },
    /// An entry disagrees with the record (or, in `prepare`, with the driver).
    Mismatch {
        /// Which field.
        what: &'static str,
        /// Entry address.
        addr: PhysAddr,
        /// Device.
        device: Option<RequesterId>,
        /// Domain.
        did: Option<DomainId>,
        /// Value found.
        found: u64,
        /// Value expected.
        expected: u64,
    },
    /// A recorded domain ID is out of range, reserved or duplicated.
    DomainId {
        /// The ID.
        did: DomainId,
        /// Why.
        why: &'static str,
    },
    /// A domain's format cannot be used on this unit.
    Format {
        /// The domain.
        did: DomainId,
        /// Why.
        why: &'static str,
    },
    /// The walk of a domain's tables failed.
    Walk {
        /// The domain.
        did: DomainId,
        /// Where and why.
        err: WalkError,
    },
    /// Closure check: a page reachable from the live root is not pinned.
    ClosureMissing {
        /// The first such page.
        page: PhysAddr,
        /// How many.
        count: u64,
    },
    /// Closure check: a pinned page is not reachable from the live root.
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
        /// Device concerned.
        device: Option<RequesterId>,
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

fn opt<T: fmt::Display>(f: &mut fmt::Formatter<'_>, label: &str, v: &Option<T>) -> fmt::Result {
    match v {
        Some(x) => write!(f, ", {label} {x}"),
        None => Ok(()),
    }
}

impl fmt::Display for HandoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VT-d unit {} handover: ", self.unit)?;
        match &self.kind {
            HandoverErrorKind::Driver(k) => write!(
                f,
                "{}",
                crate::driver::Error {
                    unit: self.unit,
                    kind: k.clone()
                }
            ),
            HandoverErrorKind::Kho(e) => write!(f, "KHO: {e}"),
            HandoverErrorKind::Malformed { record, err } => write!(
                f,
                "record at {record} malformed at payload offset {:#x}: {}",
                err.offset, err.what
            ),
            HandoverErrorKind::WrongUnit { record } => {
                write!(f, "record describes the unit at {record}")
            }
            HandoverErrorKind::Register {
                register,
                live,
                record,
            } => write!(
                f,
                "live {register} {live:#x} differs from the record's {record:#x}"
            ),
            HandoverErrorKind::TranslationDisabled { gsts } => {
                write!(f, "translation is not enabled (GSTS {gsts:#x})")
            }
            HandoverErrorKind::NotPreserved {
                what,
                page,
                device,
                did,
            } => {
                write!(f, "{what} page {page} is not preserved")?;
                opt(f, "device", device)?;
                opt(f, "domain", did)
            }
            HandoverErrorKind::RecordRunNotPreserved { start, pages, page } => write!(
                f,
                "record page run at {start} ({pages:#x} pages) holds page {page}, which is not \
                 preserved"
            ),
            HandoverErrorKind::RecordRunTooLarge {
                start,
                pages,
                preserved,
            } => write!(
                f,
                "record page run at {start} claims {pages:#x} pages, more than the {preserved:#x} \
                 preserved pages"
            ),
            HandoverErrorKind::RecordPagesNotTables {
                start,
                pages,
                page,
                count,
            } => write!(
                f,
                "record page run at {start} ({pages:#x} pages) claims {count:#x} page(s) that \
                 are not tables of an adopted domain or device, first {page}: kept, never freed"
            ),
            HandoverErrorKind::LeafTarget {
                did,
                iova,
                page,
                why,
            } => write!(
                f,
                "domain {did}: IOVA {iova} maps page {page}, which is {why}"
            ),
            HandoverErrorKind::NoFreePage {
                what,
                preserved_pages,
            } => write!(
                f,
                "no free page for {what}: the allocator keeps off the {preserved_pages:#x} \
                 pages the preserved-memory map claims (more than the memory it manages?)"
            ),
            HandoverErrorKind::ReservedBits {
                what,
                addr,
                device,
                bits,
            } => {
                write!(f, "{what} at {addr} has reserved bits {bits:#x} set")?;
                opt(f, "device", device)
            }
            HandoverErrorKind::NotPresent { what, addr, device } => {
                write!(f, "{what} at {addr} for device {device} is not present")
            }
            HandoverErrorKind::Mismatch {
                what,
                addr,
                device,
                did,
                found,
                expected,
            } => {
                write!(
                    f,
                    "{what} at {addr} is {found:#x}, expected {expected:#x}"
                )?;
                opt(f, "device", device)?;
                opt(f, "domain", did)
            }
            HandoverErrorKind::DomainId { did, why } => write!(f, "domain ID {did}: {why}"),
            HandoverErrorKind::Format { did, why } => write!(f, "domain {did}: {why}"),
            HandoverErrorKind::Walk { did, err } => write!(f, "domain {did}: {err}"),
            HandoverErrorKind::ClosureMissing { page, count } => write!(
                f,
                "closure check: {count} table page(s) reachable from the live root are not pinned, first {page}"
            ),
            HandoverErrorKind::ClosureExtra { page, count } => write!(
                f,
                "closure check: {count} pinned page(s) are not reachable from the live root, first {page}"
            ),
            HandoverErrorKind::Selection { why, device, did } => {
                write!(f, "selection: {why}")?;
                opt(f, "device", device)?;
                opt(f, "domain", did)
            }
            HandoverErrorKind::State { why } => write!(f, "{why}"),
            HandoverErrorKind::Mem { what, err } => write!(f, "{what}: {err}"),
            HandoverErrorKind::PageSet(e) => write!(f, "page bookkeeping: {e:?}"),
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
    /// Devices `freeze` detached: `(device, domain)`, re-attached by `cancel`.
    pub(crate) detached: Vec<(RequesterId, DomainId)>,
}

/// New-kernel handover state of a unit (between `adopt` and `finish`).
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) record: Record,
    pub(crate) record_pa: PhysAddr,
    pub(crate) record_bytes: u64,
    pub(crate) preserved: PageSet,
    /// Pages established as this unit's structures: the root table and the context
    /// and PASID pages of adopted devices (by `adopt`), the table pages of every
    /// domain whose walk succeeded (by `verify`). `finish` frees no other page.
    pub(crate) known: PageSet,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Scalable => "scalable",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}
