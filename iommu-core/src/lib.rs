//! Shared vocabulary of the IOMMU live-update engine.
//!
//! `iommu-core` is `no_std` + `alloc` and is used by every architecture backend, the
//! emulator and the inspector:
//!
//! - [`addr`]: physical addresses, IOVAs, domain IDs, requester IDs, PASIDs, page sizes
//!   and aligned ranges, all printed in hex;
//! - [`mem`]: the [`mem::PhysMem`] trait through which tables are read and written;
//! - [`regs`]: the [`regs::RegisterAccess`] trait through which MMIO registers are reached;
//! - [`entry`]: `qword_struct!`/`qword_fields!` for little-endian multi-qword entries and
//!   the bit-field helpers shared by every architecture's `hw` module;
//! - [`pgtable`]: the page-table [`pgtable::Format`] trait and the one generic, bounded
//!   walker that turns a table tree into coalesced mapping runs and its set of table pages;
//! - [`pageset`]: [`pageset::PageSet`], a set of preserved physical pages modelled on
//!   Linux KHO's radix tree;
//! - [`pool`]: the [`pool::PageAllocator`] trait drivers take their table pages from,
//!   and [`pool::PagePool`], a frame pool over one physical range;
//! - [`image`]: the layout rules of ELF memory images shared by every reader;
//! - [`kho`]: the kexec-handover blob (a flattened device tree in KHO's layout) and the
//!   versioned client records it points to;
//! - `conformance` (feature `conformance`, for tests): one conformance body run over
//!   every page-table format, instantiated with `conformance_tests!`.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod addr;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod entry;
pub mod image;
pub mod kho;
pub mod mem;
pub mod pageset;
pub mod pgtable;
pub mod pool;
pub mod regs;

pub use addr::{AlignedRange, DomainId, Iova, PageSize, Pasid, PhysAddr, RequesterId};
pub use mem::{MemError, PhysMem};
pub use regs::RegisterAccess;
