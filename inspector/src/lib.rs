//! `iommu-inspect`: dump, diff and verify IOMMU state from emulator snapshots, ELF
//! memory cores and raw memory images.
//!
//! - [`image`]: the image, memory-mapped and read as physical memory (poison and
//!   unbacked addresses are errors, never zeros);
//! - [`amdvi`], [`smmuv3`]: AMD-Vi units (device table, v1/v2 tables) and SMMUv3s
//!   (stream table, CD tables, stage-1/stage-2/nested tables), read through the arch
//!   crates' `hw` and `format` modules;
//! - [`vtd`]: VT-d units, their registers decoded by field, the root/context/PASID
//!   structures and one translation step by step;
//! - [`model`]: an image's devices and their mappings, the common ground of the
//!   commands;
//! - [`dump`], [`diff`], [`verify`]: the commands, each with human, JSON and (dump) Linux
//!   debugfs output;
//! - [`json`]: the small streaming JSON writer the outputs use.
#![warn(missing_docs)]

pub mod amdvi;
pub mod arch;
pub mod diff;
pub mod dump;
pub mod error;
pub mod fields;
pub mod image;
pub mod json;
pub mod model;
pub mod progress;
pub mod smmuv3;
pub mod translate;
pub mod tree;
pub mod verify;
pub mod vtd;

pub use error::InspectError;
