//! The page-table conformance body of `iommu-core` over every VT-d format and
//! configuration: `cargo test -p vtd --test conformance` (tests named
//! `conformance::<format>::<check>`). One line per format.

mod conformance {
    use vtd::format::{FirstStage, SecondStage};
    use vtd::hw::pte::PteCaps;

    /// A unit with 2 MiB and 1 GiB pages at both stages and a 46-bit host address
    /// width (the emulator's default).
    const CAPS: PteCaps = PteCaps {
        haw: 46,
        large_2m: true,
        large_1g: true,
        snoop: false,
        transient: false,
    };

    iommu_core::conformance_tests!(vtd_second_stage_3, SecondStage::new(3, CAPS).unwrap());
    iommu_core::conformance_tests!(vtd_second_stage_4, SecondStage::new(4, CAPS).unwrap());
    iommu_core::conformance_tests!(vtd_second_stage_5, SecondStage::new(5, CAPS).unwrap());
    iommu_core::conformance_tests!(vtd_first_stage_4, FirstStage::new(4, CAPS).unwrap());
    iommu_core::conformance_tests!(vtd_first_stage_5, FirstStage::new(5, CAPS).unwrap());
}
