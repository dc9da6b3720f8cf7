//! The page-table conformance body of `iommu-core` over the VMSAv8-64 formats:
//! `cargo test -p smmuv3 --test conformance` (tests named
//! `conformance::<format>::<check>`). One line per format and configuration.

mod conformance {
    use smmuv3::format::{Caps, Vmsa};
    use smmuv3::hw::Granule::{K16, K4, K64};

    /// An SMMU with every granule and a 48-bit OAS (IDR5.OAS = 5).
    const CAPS: Caps = Caps {
        oas_bits: 48,
        gran4k: true,
        gran16k: true,
        gran64k: true,
        vax: false,
        aarch32: false,
    };
    /// The same with a 52-bit OAS and 52-bit VAs (IDR5.OAS = 6, VAX = 1).
    const CAPS52: Caps = Caps {
        oas_bits: 52,
        vax: true,
        ..CAPS
    };

    // Stage 1 (T0SZ, IPS = 5: 48 bits).
    // 48-bit VA, 4 KiB: start level 0, 4 levels.
    iommu_core::conformance_tests!(smmuv3_s1_4k_48, Vmsa::stage1(&CAPS, K4, 16, 5).unwrap());
    // 39-bit VA, 4 KiB: start level 1, 3 levels.
    iommu_core::conformance_tests!(smmuv3_s1_4k_39, Vmsa::stage1(&CAPS, K4, 25, 5).unwrap());
    // 40-bit VA, 4 KiB: start level 0 with a 2-entry (16-byte) start table; 40-bit IPS.
    iommu_core::conformance_tests!(smmuv3_s1_4k_40, Vmsa::stage1(&CAPS, K4, 24, 2).unwrap());
    // 47-bit VA, 16 KiB: start level 1 with 2048 entries.
    iommu_core::conformance_tests!(smmuv3_s1_16k_47, Vmsa::stage1(&CAPS, K16, 17, 5).unwrap());
    // 48-bit VA, 16 KiB: start level 0 with 2 entries.
    iommu_core::conformance_tests!(smmuv3_s1_16k_48, Vmsa::stage1(&CAPS, K16, 16, 5).unwrap());
    // 48-bit VA, 64 KiB: start level 1 with 64 entries, 3 levels.
    iommu_core::conformance_tests!(smmuv3_s1_64k_48, Vmsa::stage1(&CAPS, K64, 16, 5).unwrap());
    // 52-bit VA and OA, 64 KiB: start level 1 with 1024 entries; OA[51:48] in bits
    // 15:12; 4 TiB blocks at level 1.
    iommu_core::conformance_tests!(smmuv3_s1_64k_52, Vmsa::stage1(&CAPS52, K64, 12, 6).unwrap());

    // Stage 2 (S2T0SZ, S2SL0, S2PS = 5: 48 bits).
    // 40-bit IPA, 4 KiB, start level 1 (SL0 1): 2 concatenated tables.
    iommu_core::conformance_tests!(
        smmuv3_s2_4k_40_l1x2,
        Vmsa::stage2(&CAPS, K4, 24, 1, 5).unwrap()
    );
    // 43-bit IPA, 4 KiB, start level 1: 16 concatenated tables.
    iommu_core::conformance_tests!(
        smmuv3_s2_4k_43_l1x16,
        Vmsa::stage2(&CAPS, K4, 21, 1, 5).unwrap()
    );
    // 48-bit IPA, 4 KiB, start level 0 (SL0 2): one table, 4 levels.
    iommu_core::conformance_tests!(
        smmuv3_s2_4k_48_l0,
        Vmsa::stage2(&CAPS, K4, 16, 2, 5).unwrap()
    );
    // 34-bit IPA, 4 KiB, start level 2 (SL0 0): 16 concatenated tables, 2 levels.
    iommu_core::conformance_tests!(
        smmuv3_s2_4k_34_l2x16,
        Vmsa::stage2(&CAPS, K4, 30, 0, 5).unwrap()
    );
    // 48-bit IPA, 16 KiB, start level 1 (SL0 2): 2 concatenated tables (reference §12).
    iommu_core::conformance_tests!(
        smmuv3_s2_16k_48_l1x2,
        Vmsa::stage2(&CAPS, K16, 16, 2, 5).unwrap()
    );
    // 36-bit IPA, 16 KiB, start level 2 (SL0 1): one table of 2048 entries.
    iommu_core::conformance_tests!(
        smmuv3_s2_16k_36_l2,
        Vmsa::stage2(&CAPS, K16, 28, 1, 5).unwrap()
    );
    // 42-bit IPA, 64 KiB, start level 2 (SL0 1): one table, 2 levels.
    iommu_core::conformance_tests!(
        smmuv3_s2_64k_42_l2,
        Vmsa::stage2(&CAPS, K64, 22, 1, 5).unwrap()
    );
    // 43-bit IPA, 64 KiB, start level 2: 2 concatenated tables.
    iommu_core::conformance_tests!(
        smmuv3_s2_64k_43_l2x2,
        Vmsa::stage2(&CAPS, K64, 21, 1, 5).unwrap()
    );
}
