//! Arm SMMUv3 backend.
//!
//! - [`hw`]: the register pages 0 and 1 and the in-memory structures (stream table
//!   entries and L1 descriptors, context descriptors and L1 CD descriptors, commands,
//!   event records), the single source of truth for SMMUv3 bits;
//! - [`format`]: the VMSAv8-64 stage-1 and stage-2 translation-table formats (4, 16
//!   and 64 KiB granules, concatenated stage-2 start tables) for the generic walker and
//!   the generic `map` / `unmap` of `iommu-core`.
//!
//! - [`record`]: the versioned handover record (`iommu-smmuv3-v1`), a data layout
//!   compiled without the driver (the inspector reads records without it);
//! - with the default feature `driver`: [`driver`] (bring-up in Linux's order, linear
//!   and 2-level stream tables, CD tables, ASID/VMID allocators, stage-1, stage-2 and
//!   nested domains, STE/CD updates by the used-bits rule, map/unmap through the
//!   generic walker) and [`handover`] (prepare, freeze, cancel, adopt, verify,
//!   finish).
//!
//! Bit positions come from `shared/reference/smmuv3.md`, the Arm SMMUv3 specification
//! (IHI0070) and the Arm ARM (DDI0487) translation chapters, Linux
//! (`drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h`, `drivers/iommu/io-pgtable-arm.c`)
//! and QEMU (`hw/arm/smmuv3-internal.h`); every layout has known-answer tests naming
//! their source. The emulator's SMMUv3 model (`emulator::smmuv3`) uses `hw` and `format`
//! only, and depends on this crate without the `driver` feature.
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
