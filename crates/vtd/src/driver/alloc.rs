//! Page allocation for the driver: the [`PageAllocator`] trait the platform provides, and
//! [`PagePool`], a simple pool over one physical range usable by any platform.

use alloc::vec::Vec;
use iommu_core::kho::FrameAllocator;
use iommu_core::pageset::{PageSet, PAGE_SIZE};
use iommu_core::PhysAddr;

/// Removes one 4 KiB page from `set`, splitting the block that holds it (a set built
/// from ranges holds large blocks). Returns whether the page was in the set.
pub fn remove_page(set: &mut PageSet, page: PhysAddr) -> bool {
    let Some((addr, order)) = set.containing_block(page) else {
        return false;
    };
    if set.remove(addr, order).is_err() {
        return false;
    }
    let pages = 1u64 << order;
    let before = (page.0 - addr.0) / PAGE_SIZE;
    // The parts before and after the page go back (disjoint from the rest of the set).
    let _ = set.insert_range(addr, before);
    let _ = set.insert_range(PhysAddr(page.0 + PAGE_SIZE), pages - before - 1);
    true
}

/// Hands the driver 4 KiB frames for its tables and takes them back.
///
/// The driver zeroes every frame it gets before use, so the platform need not.
pub trait PageAllocator {
    /// One free, 4 KiB-aligned frame, or `None` when memory is exhausted.
    fn alloc_page(&mut self) -> Option<PhysAddr>;
    /// Gives back a frame the driver no longer uses (also frames it adopted from the
    /// previous kernel, which this allocator never handed out).
    fn free_page(&mut self, page: PhysAddr);
}

/// A pool of 4 KiB frames in `[start, start + bytes)`: a bump pointer, a free list, and
/// an excluded set (pages preserved by the previous kernel, which must never be handed
/// out). Also a KHO [`FrameAllocator`] (contiguous runs from the bump pointer).
#[derive(Clone, Debug)]
pub struct PagePool {
    start: u64,
    end: u64,
    next: u64,
    free: Vec<u64>,
    excluded: PageSet,
    allocated: u64,
    freed: u64,
    foreign_frees: u64,
}

impl PagePool {
    /// A pool over `[start, start + bytes)`; `start` is rounded up and the end down to
    /// 4 KiB.
    pub fn new(start: PhysAddr, bytes: u64) -> Self {
        let s = start.0.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let e = start.0.saturating_add(bytes) / PAGE_SIZE * PAGE_SIZE;
        Self {
            start: s,
            end: e.max(s),
            next: s,
            free: Vec::new(),
            excluded: PageSet::new(),
            allocated: 0,
            freed: 0,
            foreign_frees: 0,
        }
    }

    /// Never hands out a page of `set` (pages the previous kernel preserved).
    pub fn exclude(&mut self, set: &PageSet) {
        self.excluded = self.excluded.union(set);
        self.free.retain(|&p| !set.contains(PhysAddr(p)));
    }

    /// Frames handed out so far.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Frames given back so far.
    pub fn freed(&self) -> u64 {
        self.freed
    }

    /// Frames given back that lie outside the pool (ignored).
    ///
    /// A frame given back twice is not detected here; the driver frees each page once.
    pub fn foreign_frees(&self) -> u64 {
        self.foreign_frees
    }

    /// Frames never handed out or given back, not counting excluded ones.
    pub fn available(&self) -> u64 {
        (self.end - self.next) / PAGE_SIZE + self.free.len() as u64
    }
}

impl PageAllocator for PagePool {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        if let Some(p) = self.free.pop() {
            self.allocated += 1;
            return Some(PhysAddr(p));
        }
        while self.next < self.end {
            let p = self.next;
            self.next += PAGE_SIZE;
            if !self.excluded.contains(PhysAddr(p)) {
                self.allocated += 1;
                return Some(PhysAddr(p));
            }
        }
        None
    }

    fn free_page(&mut self, page: PhysAddr) {
        let p = page.0 & !(PAGE_SIZE - 1);
        if p < self.start || p >= self.end {
            self.foreign_frees += 1;
            return;
        }
        // A page the previous kernel preserved becomes ours once given back.
        remove_page(&mut self.excluded, PhysAddr(p));
        self.freed += 1;
        self.free.push(p);
    }
}

impl FrameAllocator for PagePool {
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
        let need = (pages as u64).checked_mul(PAGE_SIZE)?;
        let mut s = self.next;
        loop {
            let e = s.checked_add(need)?;
            if e > self.end {
                return None;
            }
            // First excluded page inside [s, e), if any: restart after it.
            let clash = (s..e)
                .step_by(PAGE_SIZE as usize)
                .find(|&p| self.excluded.contains(PhysAddr(p)));
            match clash {
                Some(p) => s = p + PAGE_SIZE,
                None => {
                    self.next = e;
                    self.allocated += pages as u64;
                    return Some(PhysAddr(s));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_page_splits_blocks() {
        let mut s = PageSet::new();
        s.insert_range(PhysAddr(0x10_0000), 256).unwrap();
        assert!(remove_page(&mut s, PhysAddr(0x10_5000)));
        assert_eq!(s.page_count(), 255);
        assert!(!s.contains(PhysAddr(0x10_5000)));
        assert!(s.contains(PhysAddr(0x10_4000)) && s.contains(PhysAddr(0x10_6000)));
        assert!(s.contains(PhysAddr(0x10_0000)) && s.contains(PhysAddr(0x1f_f000)));
        assert!(!remove_page(&mut s, PhysAddr(0x10_5000)));
        assert!(!remove_page(&mut s, PhysAddr(0x20_0000)));
    }

    #[test]
    fn pool_skips_excluded_pages_and_reuses_freed_ones() {
        let mut pool = PagePool::new(PhysAddr(0x1000), 4 * PAGE_SIZE);
        let mut ex = PageSet::new();
        ex.insert_range(PhysAddr(0x2000), 2).unwrap();
        pool.exclude(&ex);
        assert_eq!(pool.alloc_page(), Some(PhysAddr(0x1000)));
        assert_eq!(pool.alloc_page(), Some(PhysAddr(0x4000)));
        assert_eq!(pool.alloc_page(), None);
        // A preserved page given back becomes allocatable.
        pool.free_page(PhysAddr(0x3000));
        assert_eq!(pool.alloc_page(), Some(PhysAddr(0x3000)));
        pool.free_page(PhysAddr(0x10_0000));
        assert_eq!(pool.foreign_frees(), 1);
    }
}
