//! VT-d register map and entry layouts: the single source of truth for VT-d bits.
//!
//! - [`regs`]: MMIO register offsets and fields (tock-registers bitfields), encodings
//!   of TTM and invalidation granularities;
//! - [`root`]: legacy and scalable-mode root and context entries;
//! - [`pasid`]: PASID directory and PASID table entries;
//! - [`pte`]: second-stage and first-stage paging entries;
//! - [`qi`]: queued-invalidation descriptors;
//! - [`fault`]: fault recording registers and fault reasons.
//!
//! Every in-memory structure is a `#[repr(C)]` zerocopy type made of little-endian
//! qwords, defined with [`iommu_core::qword_struct!`], so it can be read from and
//! written to physical memory as bytes. Bit `N` of a structure is bit `N % 64` of qword
//! `N / 64`. The positions come from `shared/reference/vtd.md`; each layout has
//! known-answer tests naming their source.

pub mod fault;
pub mod pasid;
pub mod pte;
pub mod qi;
pub mod regs;
pub mod root;

/// A mask of address bits `[12, haw)`: the bits a 4 KiB-aligned pointer may use on a
/// unit with host address width `haw` (clamped to 12..=64).
pub const fn addr_mask(haw: u32) -> u64 {
    let haw = if haw < 12 {
        12
    } else if haw > 64 {
        64
    } else {
        haw
    };
    let top = if haw == 64 {
        u64::MAX
    } else {
        (1u64 << haw) - 1
    };
    top & !0xfff
}
