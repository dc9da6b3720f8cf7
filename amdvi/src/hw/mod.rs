//! AMD-Vi register map and entry layouts: the single source of truth for AMD-Vi bits.
//!
//! - [`regs`]: MMIO register offsets and fields (tock-registers bitfields) with the
//!   encodings of sizes and lengths;
//! - [`dte`]: the 256-bit device table entry and the GCR3 table entry;
//! - [`pte`]: v1 (host) page-directory and page-table entries, the NextLevel encoding
//!   and the v2 (guest, x86-64) entry bits;
//! - [`cmd`]: command-buffer entries;
//! - [`event`]: event-log entries and event codes.
//!
//! Every in-memory structure is a `#[repr(C)]` zerocopy type made of little-endian
//! qwords, defined with [`iommu_core::qword_struct!`], so it can be read from and
//! written to physical memory as bytes. Bit `N` of a structure is bit `N % 64` of qword
//! `N / 64` (the convention of the AMD specification 48882's figures). The positions
//! come from `shared/reference/amdvi.md`; each layout has known-answer tests naming
//! their source.

pub mod cmd;
pub mod dte;
pub mod event;
pub mod pte;
pub mod regs;

// The bit helpers are the ones every architecture shares.
pub use iommu_core::entry::{get_bits, put_bits};

/// Bits 51:12: the 4 KiB-aligned system physical address field of every AMD-Vi table
/// pointer (device table, rings, page tables, GCR3 table).
pub const ADDR_51_12: u64 = 0x000f_ffff_ffff_f000;
