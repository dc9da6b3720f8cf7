//! AMD-Vi (AMD I/O Virtualization Technology, specification 48882) backend.
//!
//! - [`hw`]: the MMIO register map and the in-memory layouts (device table entry, v1
//!   page-table entries, GCR3 table entry, commands, event-log entries), the single
//!   source of truth for AMD-Vi bits;
//! - [`format`]: the v1 host page-table format (1 to 6 levels, level skipping,
//!   NextLevel-7 pages of any power-of-two size) and the v2 guest format (x86-64 4- and
//!   5-level paging) for the generic page-table algorithm of `iommu-core`.
//!
//! - [`record`]: the handover record's layout (`iommu-amdvi-v1`);
//! - [`driver`]: bring-up from an IVRS-like description, DomainIDs, v1/v2 domains,
//!   map/unmap, attach, the command buffer and the event log;
//! - [`handover`]: the live-update handover (prepare, freeze, cancel, adopt, verify,
//!   finish).
//!
//! `driver` and `handover` exist only with the `driver` feature (on by default), like
//! `vtd`: the emulator and the inspector depend on this crate without it, so they see
//! only `hw`, `format` and `record`.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(feature = "driver")]
pub mod driver;
pub mod format;
#[cfg(feature = "driver")]
pub mod handover;
pub mod hw;
pub mod record;
