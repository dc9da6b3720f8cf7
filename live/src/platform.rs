//! One IOMMU unit on a running Linux: its registers, the reserved range as physical
//! memory, and the page pool over the range's first half, lent to the `vtd` or the
//! `amdvi` driver as its `Hw` for each call.

use crate::devmem::{MapError, Registers, Window};
use crate::layout::Layout;
use iommu_core::pageset::PageSet;
use iommu_core::pool::PagePool;
use iommu_core::PhysAddr;
use vtd::driver::Hw;

/// The unit's registers, the reserved range and the pool.
#[derive(Debug)]
pub struct Platform {
    /// The unit's register window.
    pub regs: Registers,
    /// The reserved range.
    pub mem: Window,
    /// Table pages and the KHO blob.
    pub pool: PagePool,
    /// How the range is used.
    pub layout: Layout,
}

impl Platform {
    /// Maps the unit's 4 KiB register window at `iommu_base` and the reserved range of
    /// `layout` from `/dev/mem`.
    pub fn devmem(iommu_base: u64, layout: Layout) -> Result<Self, MapError> {
        Self::devmem_sized(iommu_base, crate::devmem::PAGE, layout)
    }

    /// [`Platform::devmem`] with a register window of `regs_size` bytes.
    pub fn devmem_sized(iommu_base: u64, regs_size: u64, layout: Layout) -> Result<Self, MapError> {
        let regs = Registers::devmem_sized(iommu_base, regs_size)?;
        let mem = Window::devmem("reserved range", layout.base, layout.size)?;
        Ok(Self::new(regs, mem, layout))
    }

    /// A platform over windows already mapped (anonymous ones in tests).
    pub fn new(regs: Registers, mem: Window, layout: Layout) -> Self {
        Self {
            regs,
            mem,
            pool: PagePool::new(PhysAddr(layout.pool), layout.pool_bytes),
            layout,
        }
    }

    /// Keeps the pool off `preserved` (the new kernel, before anything allocates).
    pub fn exclude(&mut self, preserved: &PageSet) {
        self.pool.exclude(preserved);
    }

    /// What the `vtd` driver needs for one call.
    pub fn hw(&mut self) -> Hw<'_> {
        Hw {
            regs: &mut self.regs,
            mem: &mut self.mem,
            pages: &mut self.pool,
        }
    }

    /// What the `amdvi` driver needs for one call.
    pub fn amdvi_hw(&mut self) -> amdvi::driver::Hw<'_> {
        amdvi::driver::Hw {
            regs: &mut self.regs,
            mem: &mut self.mem,
            pages: &mut self.pool,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devmem::PAGE;

    #[test]
    fn the_pool_hands_out_pages_of_the_first_half_only_and_skips_preserved_ones() {
        let layout = Layout::new(0x3000_0000, 16 << 20).unwrap();
        let regs = Registers::new(Window::anonymous("regs", 0xfed9_0000, PAGE).unwrap());
        let mem = Window::anonymous("reserved", layout.base, layout.size).unwrap();
        let mut p = Platform::new(regs, mem, layout);
        let mut keep = PageSet::new();
        keep.insert_range(PhysAddr(layout.pool), 2).unwrap();
        p.exclude(&keep);
        let hw = p.hw();
        let first = hw.pages.alloc_page().unwrap();
        assert_eq!(first, PhysAddr(layout.pool + 2 * PAGE));
        hw.mem.write_u64(first, 0x55).unwrap();
        let mut n = 1;
        while let Some(a) = hw.pages.alloc_page() {
            assert!(a.0 < layout.pool + layout.pool_bytes && a.0 >= layout.pool);
            n += 1;
        }
        assert_eq!(n, layout.pool_bytes / PAGE - 2);
    }
}
