//! Intel VT-d backend.
//!
//! - [`hw`]: the register map and in-memory entry layouts, the single source of truth
//!   for VT-d bits (the emulator uses this module and nothing else of this crate);
//! - [`format`]: the second-stage and first-stage page-table formats for the generic
//!   walker of `iommu-core`;
//! - [`driver`]: bring-up of a unit, domains, map/unmap, attach, invalidation;
//! - [`handover`]: the live-update handover (prepare, freeze, adopt, finish).
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod driver;
pub mod format;
pub mod handover;
pub mod hw;
