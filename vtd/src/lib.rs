//! Intel VT-d backend.
//!
//! - [`hw`]: the register map and in-memory entry layouts, the single source of truth
//!   for VT-d bits (the emulator uses this module and nothing else of this crate);
//! - [`format`]: the second-stage and first-stage page-table formats for the generic
//!   walker of `iommu-core`;
//! - [`driver`]: bring-up of a unit, domains, map/unmap, attach, invalidation;
//! - [`handover`]: the live-update handover (prepare, freeze, adopt, finish);
//! - [`record`]: the handover record's layout (`iommu-vtd-v1`).
//!
//! `driver` and `handover` are the code the emulator judges: they exist only with the
//! `driver` feature (on by default). The emulator depends on this crate with default
//! features off, so the compiler refuses any use of them there; `hw`, `format` and
//! `record` are always built.
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
