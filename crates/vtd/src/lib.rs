//! Intel VT-d backend.
//!
//! - [`hw`]: the register map and in-memory entry layouts, the single source of truth
//!   for VT-d bits (the emulator uses this module and nothing else of this crate);
//! - [`format`]: the second-stage and first-stage page-table formats for the generic
//!   walker of `iommu-core`.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod format;
pub mod hw;
