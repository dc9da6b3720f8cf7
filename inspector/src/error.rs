//! Errors of the inspector: every one names the file offset or physical address and
//! what was wrong, and prints as one line.

use iommu_core::image::LayoutError;
use iommu_core::kho::KhoError;
use iommu_core::mem::MemError;
use std::fmt;
use std::path::PathBuf;

/// Why an image could not be opened or understood, or a command could not run.
#[derive(Debug)]
pub enum InspectError {
    /// The file could not be opened, mapped or read.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        err: std::io::Error,
    },
    /// The path is not a regular file: images are memory-mapped, so pipes, FIFOs,
    /// sockets, devices and directories are not supported.
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The ELF file header or a program header is malformed.
    Elf {
        /// File offset of the malformed structure.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A structure or segment runs past the end of the file.
    Truncated {
        /// What was being read.
        what: String,
        /// File offset where it starts.
        offset: u64,
        /// Bytes it needs.
        need: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// An `IOMMU` note of an emulator snapshot is malformed.
    Note {
        /// File offset of the note descriptor (or of the field at fault).
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The load segments, RAM layout or devices break the layout rules every reader
    /// shares ([`iommu_core::image`]): overlap, unaligned `p_paddr`, memory outside RAM,
    /// a device naming a missing unit.
    Layout(LayoutError),
    /// The image has no IOMMU unit and none was described on the command line.
    NoUnits {
        /// What the user can do about it.
        hint: &'static str,
    },
    /// A command-line value is invalid.
    Usage(String),
    /// Reading physical memory failed where the command cannot go on.
    Memory {
        /// What was being read.
        what: String,
        /// Why it failed.
        err: MemError,
    },
    /// The KHO blob or the handover record could not be read.
    Kho {
        /// What was being read.
        what: String,
        /// Why it failed.
        err: KhoError,
    },
    /// No KHO blob was found, or several were.
    KhoBlob(String),
    /// An output stream failed (e.g. a closed pipe).
    Output(std::io::Error),
    /// A unit's in-memory structure (device table, stream table, CD table, page table)
    /// is malformed or unreadable where the command cannot go on.
    Structure(StructureProblem),
    /// `verify` was asked of a unit whose architecture has no handover record support
    /// in the inspector yet.
    NoRecordSupport {
        /// The unit (`iommu0`, `smmu0`).
        unit: String,
        /// The architecture in text (`AMD-Vi`, `SMMUv3`).
        arch: &'static str,
        /// The record name the unit's handover would use.
        record: String,
    },
}

/// A malformed structure of one unit: which unit, which requester (DeviceID, StreamID,
/// SubstreamID), where and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructureProblem {
    /// The unit (`iommu0`, `smmu0`).
    pub unit: String,
    /// The requester in the architecture's words (`DeviceID 0x0010`, `StreamID 0x3
    /// SubstreamID 0x1`), or the unit-wide structure (`device table`).
    pub requester: String,
    /// Address of the entry or table at fault.
    pub addr: iommu_core::PhysAddr,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for StructureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} at {}: {}",
            self.unit, self.requester, self.addr, self.what
        )
    }
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InspectError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            InspectError::NotAFile { path, what } => write!(
                f,
                "{}: {what}; iommu-inspect reads memory images from regular files (save a \
                 pipe's output to a file first)",
                path.display()
            ),
            InspectError::Elf { offset, what } => {
                write!(f, "ELF structure at file offset {offset:#x}: {what}")
            }
            InspectError::Truncated {
                what,
                offset,
                need,
                file_size,
            } => write!(
                f,
                "{what} at file offset {offset:#x} needs {need:#x} bytes but the file ends at \
                 {file_size:#x} (truncated image?)"
            ),
            InspectError::Note { offset, what } => {
                write!(f, "IOMMU note at file offset {offset:#x}: {what}")
            }
            InspectError::Layout(e) => write!(f, "{e}"),
            InspectError::NoUnits { hint } => write!(f, "no IOMMU unit in the image: {hint}"),
            InspectError::Usage(s) => f.write_str(s),
            InspectError::Memory { what, err } => write!(f, "{what}: {err}"),
            InspectError::Kho { what, err } => write!(f, "{what}: {err}"),
            InspectError::KhoBlob(s) => f.write_str(s),
            InspectError::Output(e) => write!(f, "writing output: {e}"),
            InspectError::Structure(p) => write!(f, "{p}"),
            InspectError::NoRecordSupport { unit, arch, record } => write!(
                f,
                "{unit}: no record support for {arch} units yet (the {record} record is not \
                 read by this inspector)"
            ),
        }
    }
}

impl std::error::Error for InspectError {}

impl From<std::io::Error> for InspectError {
    fn from(e: std::io::Error) -> Self {
        InspectError::Output(e)
    }
}
