//! The page-table conformance body of `iommu-core` over every AMD-Vi format and
//! configuration: `cargo test -p amdvi --test conformance` (tests named
//! `conformance::<format>::<check>`). One line per format.

mod conformance {
    use amdvi::format::{GuestV2, HostV1};

    iommu_core::conformance_tests!(amdvi_v1_3, HostV1::new(3).unwrap());
    iommu_core::conformance_tests!(amdvi_v1_4, HostV1::new(4).unwrap());
    iommu_core::conformance_tests!(amdvi_v1_5, HostV1::new(5).unwrap());
    iommu_core::conformance_tests!(amdvi_v1_6, HostV1::new(6).unwrap());
    // NextLevel-7 pages: every power of two from 8 KiB to 128 TiB but 512 GiB,
    // replicated over the entries they span.
    iommu_core::conformance_tests!(
        amdvi_v1_4_sized,
        HostV1::new(4).unwrap().with_sized_pages(true)
    );
    iommu_core::conformance_tests!(
        amdvi_v1_6_sized,
        HostV1::new(6).unwrap().with_sized_pages(true)
    );
    // The SME C-bit at 47 (a common EPYC position): never part of an address.
    iommu_core::conformance_tests!(
        amdvi_v1_4_c_bit_47,
        HostV1::new(4).unwrap().with_c_bit(Some(47)).unwrap()
    );
    iommu_core::conformance_tests!(amdvi_v2_4, GuestV2::new(4).unwrap());
    iommu_core::conformance_tests!(amdvi_v2_5, GuestV2::new(5).unwrap());
    iommu_core::conformance_tests!(
        amdvi_v2_4_c_bit_47,
        GuestV2::new(4).unwrap().with_c_bit(Some(47)).unwrap()
    );
}
