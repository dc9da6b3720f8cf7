//! Named, seeded emulator scenarios and their runner.
//!
//! A scenario builds an emulated machine (RAM, one IOMMU unit, devices), brings the unit
//! up with the arch's driver, maps memory into domains, keeps DMA agents reading and
//! writing through every phase of a live update (prepare, freeze, kexec, adopt, verify,
//! finish), and checks every byte. The report says what happened in each phase; a
//! scenario that saw a fault, a wrong byte or an error fails.
//!
//! The runner ([`runner`]) is arch-neutral; the IOMMU steps sit behind
//! [`arch::Arch`], implemented for VT-d by [`arch::vtd::Vtd`] and for AMD-Vi by
//! [`arch::amdvi::AmdVi`]; [`select`](mod@select) resolves `--arch` and `--mode`.
#![warn(missing_docs)]

pub mod arch;
pub mod config;
pub mod layout;
pub mod report;
pub mod runner;
pub mod select;

pub use config::{Mode, Scenario};
pub use report::Report;
pub use runner::{run, run_on, RunError, RunOptions, EXIT_FAILED, EXIT_IO, EXIT_OK, EXIT_USAGE};
pub use select::{parse_device_ids, run_selected, select, ArchName, ArchOptions, Selection};
