//! The Linux platform layer of the IOMMU engine: the `no_std` crates' traits over a
//! running Linux kernel, from user space.
//!
//! - [`devmem`]: [`PhysMem`](iommu_core::mem::PhysMem) over a `/dev/mem` mapping of a
//!   physical range reserved from the kernel (`memmap=SIZE$BASE iomem=relaxed` on x86),
//!   and [`RegisterAccess`](iommu_core::RegisterAccess) over a mapping of the IOMMU's
//!   MMIO window;
//! - [`layout`]: how the reserved range is split between the page pool (every table
//!   page and the KHO blob) and the DMA buffers of the checks;
//! - [`pci`]: a PCI function through sysfs (command register, BAR0 mapping, the AMD
//!   IOMMU's capability block and the register base it gives);
//! - [`edu`]: QEMU's `edu` device and its DMA engine;
//! - [`platform`]: the three lent to the `vtd` or `amdvi` driver for each call;
//! - [`args`]: the command line of the `iommu-live` binary.
//!
//! Every `unsafe` block of the project's Linux side is in this crate, in [`devmem`] (the
//! mapping and the volatile accesses), each with the reason it is sound.

#![cfg(target_os = "linux")]

pub mod args;
pub mod devmem;
pub mod edu;
pub mod layout;
pub mod pci;
pub mod platform;
