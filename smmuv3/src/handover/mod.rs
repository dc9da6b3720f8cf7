//! The live-update handover of an SMMUv3.
//!
//! Old kernel ([`Unit::prepare`](crate::driver::Unit::prepare),
//! [`Unit::freeze`](crate::driver::Unit::freeze),
//! [`Unit::cancel`](crate::driver::Unit::cancel)): the caller names the domains and the
//! masters (StreamIDs) to preserve. `prepare` reads every preserved master's STE and
//! CD back from memory (they must be what the driver wrote), walks the domains' tables
//! with the core walker, pins the stream table (L1 or linear), the L2 stream tables and
//! CD tables of the preserved masters and every table page, checks that every table
//! page reached is one the driver allocated for that domain (closure) and that every
//! leaf target lies in memory other KHO clients preserve, and adds the versioned
//! record ([`crate::record`]) to a [`KhoOut`]; preserved domains and masters become
//! immutable. `freeze` sets GBPA.ABORT, then makes the STE of every master not
//! preserved abort (a hitless update: only qword 0's used bits change), with
//! CFGI_STE + CMD_SYNC, makes the L1 descriptors of L2 stream tables no preserved
//! master uses invalid, invalidates the TLB entries of the domains not preserved, and
//! disables the event queue (its pages are not preserved, so the SMMU must not write
//! event records into them once the next kernel owns that memory).
//!
//! New kernel ([`Unit::adopt`](crate::driver::Unit::adopt),
//! [`Unit::verify`](crate::driver::Unit::verify),
//! [`Unit::finish`](crate::driver::Unit::finish)): from registers, memory and the blob's
//! address only. `adopt` checks the record against the live registers (IDR0/1/5,
//! STRTAB_BASE and STRTAB_BASE_CFG, which it never writes while SMMUEN = 1, CR0.SMMUEN),
//! checks the record's page runs against the preserved set, reserves the record's
//! ASIDs and VMIDs before it allocates anything, re-bases the command and event queues
//! by cycling CMDQEN and EVENTQEN through CR0/CR0ACK with SMMUEN kept 1, invalidates
//! everything (CFGI_ALL, TLBI_NSNH_ALL, TLBI_EL2_ALL with IDR0.HYP, CMD_SYNC), and
//! compares each preserved master's STE and CD with the record. `verify` walks every
//! adopted domain's tables and checks every table page and leaf target. `finish`
//! makes everything mutable again, frees the structure pages verification established
//! that nothing references any more (those of blocked masters) and the KHO record's
//! pages.
//!
//! Failure policy (fail closed, never bypass): a master whose STE, CD, CD table or
//! domain tables cannot be trusted is blocked (its STE made to abort, or its L1
//! stream-table descriptor made invalid when that is what is corrupt, then CFGI +
//! CMD_SYNC); an SMMU whose record or registers cannot be trusted is refused: GBPA is
//! set to abort and SMMUEN cleared, so every transaction aborts.

mod adopt;
mod prepare;

pub use crate::record;
pub use crate::record::client_name;
/// The outgoing KHO handover (arch-neutral; it lives in `iommu-core`).
pub use iommu_core::kho::KhoOut;

pub use adopt::{AdoptFailure, AdoptReport, BlockedMaster, FinishReport, VerifyReport};
pub use prepare::{FreezeReport, PrepareReport};

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use iommu_core::kho::KhoError;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::WalkError;
use iommu_core::{DomainId, PhysAddr};

use crate::driver::{Error, ErrorKind};
use record::{Malformed, Record};

/// What the caller preserves: domains, and masters attached to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Domains to preserve.
    pub domains: Vec<DomainId>,
    /// StreamIDs of the masters to preserve (each attached to one of `domains`).
    pub masters: Vec<u32>,
}

/// A handover step failed on the SMMU at `unit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverError {
    /// MMIO base of the SMMU.
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
        /// What is wrong where.
        err: Malformed,
    },
    /// The record describes another SMMU.
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
    /// CR0.SMMUEN is clear: the preserved translation is not in force.
    TranslationDisabled {
        /// CR0.
        cr0: u32,
    },
    /// A step was called in the wrong state.
    State {
        /// Why.
        why: &'static str,
    },
    /// A selected domain does not exist.
    UnknownDomain {
        /// Domain.
        did: DomainId,
    },
    /// A selected StreamID has no master, or its domain is not selected.
    MasterNotPreservable {
        /// StreamID.
        sid: u32,
        /// Why.
        why: &'static str,
    },
    /// A structure in memory differs from what the driver (or the record) says.
    EntryMismatch {
        /// StreamID of the master it belongs to.
        sid: u32,
        /// Which structure.
        what: &'static str,
        /// Its address.
        at: PhysAddr,
    },
    /// A table page reached from a preserved domain's root is not one the driver
    /// allocated for it (prepare), or not in the record's runs and the preserved set
    /// (adopt and verify).
    UnpinnedTable {
        /// Domain.
        did: DomainId,
        /// The page.
        page: PhysAddr,
    },
    /// A structure page (stream table, CD table) is not in the record's runs and the
    /// preserved set.
    NotPreserved {
        /// What it is.
        what: &'static str,
        /// The page.
        page: PhysAddr,
    },
    /// A leaf maps memory nobody preserves.
    LeafTargetNotPreserved {
        /// Domain.
        did: DomainId,
        /// IOVA of the leaf run.
        iova: u64,
        /// Its output address.
        pa: PhysAddr,
        /// Its length.
        len: u64,
    },
    /// The walk of a domain's tables failed.
    Walk {
        /// Domain.
        did: DomainId,
        /// The walker's error.
        err: WalkError,
    },
    /// A record run is larger than the whole preserved set.
    RecordRunTooLarge {
        /// Start.
        start: PhysAddr,
        /// Pages.
        pages: u64,
        /// Pages preserved.
        preserved: u64,
    },
    /// A record run holds a page that is not preserved.
    RecordRunNotPreserved {
        /// Start.
        start: PhysAddr,
        /// Pages.
        pages: u64,
        /// The first page not preserved.
        page: PhysAddr,
    },
    /// Record pages that verification did not establish as this SMMU's structures.
    RecordPagesNotTables {
        /// First page.
        start: PhysAddr,
        /// Pages.
        pages: u64,
    },
    /// A record domain's fields describe no format this SMMU has.
    BadDomain {
        /// Domain.
        did: u32,
        /// Why.
        why: String,
    },
}

impl HandoverError {
    pub(crate) fn new(unit: PhysAddr, kind: HandoverErrorKind) -> Self {
        Self { unit, kind }
    }
}

impl From<Error> for HandoverError {
    fn from(e: Error) -> Self {
        Self {
            unit: e.unit,
            kind: HandoverErrorKind::Driver(e.kind),
        }
    }
}

impl fmt::Display for HandoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandoverErrorKind as K;
        write!(f, "SMMUv3 at {}: ", self.unit)?;
        match &self.kind {
            K::Driver(k) => write!(f, "{}", Error::new(self.unit, k.clone())).map(|_| ()),
            K::Kho(e) => write!(f, "KHO: {e}"),
            K::Malformed { err } => write!(f, "malformed record: {err}"),
            K::WrongUnit { record } => write!(f, "the record describes the SMMU at {record}"),
            K::Register {
                register,
                live,
                record,
            } => write!(f, "{register} reads {live:#x}, the record says {record:#x}"),
            K::TranslationDisabled { cr0 } => {
                write!(f, "CR0.SMMUEN is clear (CR0 {cr0:#x})")
            }
            K::State { why } => write!(f, "{why}"),
            K::UnknownDomain { did } => write!(f, "no domain {}", did.0),
            K::MasterNotPreservable { sid, why } => {
                write!(f, "StreamID {sid:#x} cannot be preserved: {why}")
            }
            K::EntryMismatch { sid, what, at } => write!(
                f,
                "StreamID {sid:#x}: the {what} at {at} is not the one expected"
            ),
            K::UnpinnedTable { did, page } => write!(
                f,
                "domain {}: table page {page} is not one of its pinned table pages",
                did.0
            ),
            K::NotPreserved { what, page } => {
                write!(f, "{what} page {page} is not preserved")
            }
            K::LeafTargetNotPreserved { did, iova, pa, len } => write!(
                f,
                "domain {}: {len:#x} bytes at IOVA {iova:#x} map {pa}, which is not preserved",
                did.0
            ),
            K::Walk { did, err } => write!(f, "domain {}: {err}", did.0),
            K::RecordRunTooLarge {
                start,
                pages,
                preserved,
            } => write!(
                f,
                "record run at {start} of {pages} pages exceeds the {preserved} pages preserved"
            ),
            K::RecordRunNotPreserved { start, pages, page } => write!(
                f,
                "record run at {start} of {pages} pages holds {page}, which is not preserved"
            ),
            K::RecordPagesNotTables { start, pages } => write!(
                f,
                "record run at {start} of {pages} pages holds no structure of this SMMU"
            ),
            K::BadDomain { did, why } => write!(f, "record domain {did}: {why}"),
        }
    }
}

/// What `prepare` left for `freeze`, `cancel` and the outgoing kernel.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) record: Record,
    pub(crate) pinned: PageSet,
    pub(crate) selection: Selection,
}

/// What `adopt` left for `verify` and `finish`.
#[derive(Clone, Debug)]
pub(crate) struct Incoming {
    pub(crate) record: Record,
    pub(crate) preserved: PageSet,
    pub(crate) record_pa: PhysAddr,
    pub(crate) record_bytes: u64,
    /// Structure pages established: stream table, L2 tables and CD tables of adopted
    /// masters (at adopt), tables of verified domains (at verify).
    pub(crate) known: PageSet,
    pub(crate) verified: bool,
}

/// Page-granular runs of a set.
pub(crate) fn runs(set: &PageSet) -> Vec<(PhysAddr, u64)> {
    let mut out: Vec<(PhysAddr, u64)> = Vec::new();
    for (a, order) in set.iter() {
        let n = 1u64 << order;
        match out.last_mut() {
            Some((s, m)) if s.0 + *m * 4096 == a.0 => *m += n,
            _ => out.push((a, n)),
        }
    }
    out
}

/// The first page of `[start, start + pages)` not in `set` (`None`: all are), by blocks.
pub(crate) fn first_missing(set: &PageSet, start: PhysAddr, pages: u64) -> Option<PhysAddr> {
    let mut want = PageSet::new();
    if want.insert_range(start, pages).is_err() {
        return Some(start);
    }
    let missing = want.difference(set);
    missing.iter().next().map(|(a, _)| a)
}
