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
    // `low_mask` saturates at 64 bits, and below 12 bits nothing survives `!0xfff`.
    iommu_core::entry::low_mask(haw) & !0xfff
}

#[cfg(test)]
mod tests {
    use super::addr_mask;

    /// Widths below 12, the usual 39/48/52, 64 and above 64.
    #[test]
    fn addr_mask_clamps_to_12_through_64() {
        assert_eq!(addr_mask(0), 0);
        assert_eq!(addr_mask(12), 0);
        assert_eq!(addr_mask(39), 0x0000_007f_ffff_f000);
        assert_eq!(addr_mask(48), 0x0000_ffff_ffff_f000);
        assert_eq!(addr_mask(52), 0x000f_ffff_ffff_f000);
        assert_eq!(addr_mask(64), 0xffff_ffff_ffff_f000);
        assert_eq!(addr_mask(100), 0xffff_ffff_ffff_f000);
    }
}
