//! AMD-Vi (AMD I/O Virtualization Technology, specification 48882) backend.
//!
//! - [`hw`]: the MMIO register map and the in-memory layouts (device table entry, v1
//!   page-table entries, GCR3 table entry, commands, event-log entries), the single
//!   source of truth for AMD-Vi bits;
//! - [`format`]: the v1 host page-table format (1 to 6 levels, level skipping,
//!   NextLevel-7 pages of any power-of-two size) and the v2 guest format (x86-64 4- and
//!   5-level paging) for the generic page-table algorithm of `iommu-core`.
//!
//! The driver, the live-update handover and the record layout come later; like
//! `vtd`, they will sit behind a `driver` feature so the emulator and the inspector
//! see only `hw` and `format`.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod format;
pub mod hw;
pub mod record;
