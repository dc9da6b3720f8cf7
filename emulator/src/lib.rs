//! Register-level emulator of IOMMUs, strict like silicon.
//!
//! - [`memory`]: sparse physical memory in which never-written and not-preserved bytes
//!   hold poison;
//! - [`model`]: the interface of a hardware model (MMIO, translation, fault log);
//! - [`bus`]: the MMIO bus that dispatches register accesses to the units;
//! - [`vtd`]: the Intel VT-d model;
//! - [`amdvi`]: the AMD-Vi model;
//! - [`smmuv3`]: the Arm SMMUv3 model;
//! - [`dma`]: DMA agents that issue reads and writes through an IOMMU and check every byte;
//! - [`machine`]: memory, units and devices together, with a kexec step;
//! - [`snapshot`]: save and load a machine as an ELF core file.
#![warn(missing_docs)]

pub mod amdvi;
pub mod bus;
pub mod dma;
pub mod machine;
pub mod memory;
pub mod model;
pub mod smmuv3;
pub mod snapshot;
pub mod vtd;
