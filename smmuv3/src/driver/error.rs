//! Driver errors: every one names the SMMU (its MMIO base) and, where they apply, the
//! StreamID, the domain and the address.

use core::fmt;
use iommu_core::mem::MemError;
use iommu_core::pgtable::WalkError;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};

use crate::format::FormatError;
use crate::hw::Granule;
use crate::record::Stage;

/// A driver operation failed on the SMMU at `unit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// MMIO base of the SMMU.
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
    /// The SMMU lacks a feature the operation needs.
    Unsupported {
        /// The ID register field missing, in the spec's words.
        why: &'static str,
    },
    /// A register did not reach the awaited state (CR0ACK, GBPA.UPDATE, CMDQ_CONS).
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Last value read.
        last: u64,
    },
    /// The command queue stopped with an error (GERROR.CMDQ_ERR, CMDQ_CONS.ERR).
    CommandError {
        /// CMDQ_CONS.ERR.
        err: u32,
        /// The command's opcode byte at CMDQ_CONS.
        opcode: u8,
    },
    /// The page allocator is exhausted.
    OutOfPages {
        /// What was being allocated.
        what: &'static str,
    },
    /// Every ASID or every VMID is in use.
    OutOfIds {
        /// `"ASID"` or `"VMID"`.
        what: &'static str,
    },
    /// No such domain.
    NoSuchDomain {
        /// Domain.
        did: DomainId,
    },
    /// No master with this StreamID is attached.
    NoSuchMaster {
        /// StreamID.
        sid: u32,
    },
    /// The StreamID lies beyond the stream table (IDR1.SIDSIZE / LOG2SIZE).
    StreamIdOutOfRange {
        /// StreamID.
        sid: u32,
        /// StreamID bits the table covers.
        bits: u32,
    },
    /// The domain is preserved for a handover (or frozen): it takes no changes until
    /// `finish`.
    DomainImmutable {
        /// Domain.
        did: DomainId,
    },
    /// The master is preserved or the SMMU frozen: its STE takes no changes.
    MasterImmutable {
        /// StreamID.
        sid: u32,
    },
    /// The domain's format cannot be built for this SMMU.
    Format {
        /// Domain's stages.
        stage: Stage,
        /// Granule asked for.
        granule: Granule,
        /// Why.
        err: FormatError,
    },
    /// A map or unmap was refused by the generic algorithm.
    Map {
        /// Domain.
        did: DomainId,
        /// Start of the range.
        iova: Iova,
        /// Length of the range.
        len: u64,
        /// Page size asked for.
        size: PageSize,
        /// What the algorithm said.
        why: alloc::string::String,
    },
    /// A walk of the domain's tables failed.
    Walk {
        /// Domain.
        did: DomainId,
        /// The walker's error.
        err: WalkError,
    },
}

impl Error {
    /// An error of the SMMU at `unit`.
    pub fn new(unit: PhysAddr, kind: ErrorKind) -> Self {
        Self { unit, kind }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMMUv3 at {}: ", self.unit)?;
        match &self.kind {
            ErrorKind::Mem { what, err } => write!(f, "{what}: {err}"),
            ErrorKind::Unsupported { why } => write!(f, "unsupported: {why}"),
            ErrorKind::Timeout { what, last } => {
                write!(f, "timed out waiting for {what} (last read {last:#x})")
            }
            ErrorKind::CommandError { err, opcode } => write!(
                f,
                "command queue error CMDQ_CONS.ERR = {err} at a command with opcode {opcode:#04x}"
            ),
            ErrorKind::OutOfPages { what } => write!(f, "out of pages for {what}"),
            ErrorKind::OutOfIds { what } => write!(f, "every {what} is in use"),
            ErrorKind::NoSuchDomain { did } => write!(f, "no domain {}", did.0),
            ErrorKind::NoSuchMaster { sid } => write!(f, "no master with StreamID {sid:#x}"),
            ErrorKind::StreamIdOutOfRange { sid, bits } => {
                write!(f, "StreamID {sid:#x} beyond the stream table's {bits} bits")
            }
            ErrorKind::DomainImmutable { did } => {
                write!(f, "domain {} is preserved or frozen", did.0)
            }
            ErrorKind::MasterImmutable { sid } => {
                write!(f, "the STE of StreamID {sid:#x} is preserved or frozen")
            }
            ErrorKind::Format {
                stage,
                granule,
                err,
            } => write!(f, "{stage} tables with a {granule} granule: {err}"),
            ErrorKind::Map {
                did,
                iova,
                len,
                size,
                why,
            } => write!(
                f,
                "domain {}: {len:#x} bytes at {iova} in {size} pages: {why}",
                did.0
            ),
            ErrorKind::Walk { did, err } => write!(f, "domain {}: {err}", did.0),
        }
    }
}
