//! Page allocation for drivers of every architecture: the [`PageAllocator`] trait the
//! platform provides, and [`PagePool`], a simple pool over one physical range usable by
//! any platform.

use crate::kho::FrameAllocator;
use crate::pageset::{PageSet, PAGE_SIZE};
use crate::PhysAddr;
use alloc::vec::Vec;

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
///
/// No frame is ever live twice: every frame below the bump pointer is either live
/// (handed out, one bit in a bitmap over `[start, bump)`), on the free list, or
/// excluded, and a frame is handed out only from the free list or as the bump pointer
/// passes it. A frame given back that is not live (given back twice, or never handed
/// out) is refused and counted ([`bad_frees`](PagePool::bad_frees)); an excluded frame
/// given back becomes the pool's: below the bump pointer it joins the free list, at or
/// above it the bump pointer hands it out when it gets there (never both).
#[derive(Clone, Debug)]
pub struct PagePool {
    start: u64,
    end: u64,
    next: u64,
    free: Vec<u64>,
    /// One bit per frame of `[start, next)`: set while the frame is handed out.
    live: Vec<u64>,
    excluded: PageSet,
    allocated: u64,
    freed: u64,
    foreign_frees: u64,
    bad_frees: u64,
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
            live: Vec::new(),
            excluded: PageSet::new(),
            allocated: 0,
            freed: 0,
            foreign_frees: 0,
            bad_frees: 0,
        }
    }

    /// Never hands out a page of `set` (pages the previous kernel preserved). Pages of
    /// `set` handed out already stay live (the caller excludes before allocating).
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
    pub fn foreign_frees(&self) -> u64 {
        self.foreign_frees
    }

    /// Frames of the pool given back while not handed out (given back twice, or never
    /// handed out and not excluded): refused, the frame stays where it was.
    pub fn bad_frees(&self) -> u64 {
        self.bad_frees
    }

    /// Frames the pool can still hand out: those on the free list and those the bump
    /// pointer has not reached, less the excluded ones among them (the free list never
    /// holds an excluded frame). Costs the blocks of the range ahead, not its pages.
    pub fn available(&self) -> u64 {
        let ahead = (self.end - self.next) / PAGE_SIZE;
        let mut range = PageSet::new();
        let excluded = match range.insert_range(PhysAddr(self.next), ahead) {
            Ok(()) => range.intersection(&self.excluded).page_count(),
            Err(_) => 0,
        };
        ahead - excluded + self.free.len() as u64
    }

    /// Whether frame `p` (in the pool) is handed out.
    pub fn is_live(&self, p: PhysAddr) -> bool {
        let Some(i) = self.index(p.0) else {
            return false;
        };
        self.live
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Bit index of frame `p` in `live`, if it lies below the bump pointer.
    fn index(&self, p: u64) -> Option<usize> {
        (p >= self.start && p < self.next).then(|| ((p - self.start) / PAGE_SIZE) as usize)
    }

    /// Moves the bump pointer to `to` (growing the bitmap with it).
    fn bump_to(&mut self, to: u64) {
        self.next = to;
        let frames = ((to - self.start) / PAGE_SIZE) as usize;
        self.live.resize(frames.div_ceil(64), 0);
    }

    fn set_live(&mut self, p: u64, live: bool) {
        if let Some(i) = self.index(p) {
            let m = 1u64 << (i % 64);
            if live {
                self.live[i / 64] |= m;
            } else {
                self.live[i / 64] &= !m;
            }
        }
    }

    /// The first address at or after `p` that no excluded block covers, stepping over
    /// whole blocks (an excluded range costs one step per block, not per page).
    fn skip_excluded(&self, mut p: u64) -> u64 {
        while p < self.end {
            match self.excluded.containing_block(PhysAddr(p)) {
                Some((b, o)) => p = b.0.saturating_add(PAGE_SIZE << o),
                None => break,
            }
        }
        p
    }
}

impl PageAllocator for PagePool {
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        if let Some(p) = self.free.pop() {
            self.set_live(p, true);
            self.allocated += 1;
            return Some(PhysAddr(p));
        }
        let p = self.skip_excluded(self.next);
        if p >= self.end {
            return None;
        }
        self.bump_to(p + PAGE_SIZE);
        self.set_live(p, true);
        self.allocated += 1;
        Some(PhysAddr(p))
    }

    fn free_page(&mut self, page: PhysAddr) {
        let p = page.0 & !(PAGE_SIZE - 1);
        if p < self.start || p >= self.end {
            self.foreign_frees += 1;
            return;
        }
        if self.is_live(PhysAddr(p)) {
            self.set_live(p, false);
            // A live page that was excluded afterwards is the pool's again.
            remove_page(&mut self.excluded, PhysAddr(p));
            self.free.push(p);
            self.freed += 1;
            return;
        }
        // A page the previous kernel preserved becomes ours once given back: on the
        // free list if the bump pointer passed it, else the bump pointer takes it.
        if remove_page(&mut self.excluded, PhysAddr(p)) {
            if p < self.next {
                self.free.push(p);
            }
            self.freed += 1;
            return;
        }
        // Neither live nor excluded: free already (on the free list, or not reached by
        // the bump pointer). Giving it back again would let it out twice.
        self.bad_frees += 1;
    }
}

impl FrameAllocator for PagePool {
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
        let need = (pages as u64).checked_mul(PAGE_SIZE)?;
        let mut s = self.next;
        loop {
            s = self.skip_excluded(s);
            let e = s.checked_add(need)?;
            if e > self.end {
                return None;
            }
            // First excluded block inside [s, e), if any: restart after it.
            let mut probe = PageSet::new();
            probe.insert_range(PhysAddr(s), pages as u64).ok()?;
            let clash = probe.intersection(&self.excluded).iter().next();
            match clash {
                Some((p, _)) => s = p.0 + PAGE_SIZE,
                None => {
                    // Frames skipped on the way stay free: they go on the free list.
                    let mut q = self.skip_excluded(self.next);
                    while q < s {
                        self.free.push(q);
                        q = self.skip_excluded(q + PAGE_SIZE);
                    }
                    self.bump_to(e);
                    for p in (s..e).step_by(PAGE_SIZE as usize) {
                        self.set_live(p, true);
                    }
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

    /// Input shape: a page excluded (preserved) and not yet reached by the bump
    /// pointer is given back (as `finish` gives back the record's page), then the pool
    /// is drained. It must come out once.
    #[test]
    fn excluded_page_given_back_ahead_of_the_bump_pointer_comes_out_once() {
        let mut pool = PagePool::new(PhysAddr(0x1000), 8 * PAGE_SIZE);
        let mut ex = PageSet::new();
        ex.insert(PhysAddr(0x6000), 0).unwrap();
        pool.exclude(&ex);
        assert_eq!(pool.alloc_page(), Some(PhysAddr(0x1000)));
        pool.free_page(PhysAddr(0x6000));
        let mut out = alloc::vec![PhysAddr(0x1000)];
        while let Some(p) = pool.alloc_page() {
            out.push(p);
        }
        out.sort();
        let n = out.len();
        out.dedup();
        assert_eq!(out.len(), n, "a page handed out twice");
        assert_eq!(n, 8);
        // Given back twice: the second is refused.
        pool.free_page(PhysAddr(0x3000));
        pool.free_page(PhysAddr(0x3000));
        assert_eq!(pool.bad_frees(), 1);
        assert_eq!(pool.alloc_page(), Some(PhysAddr(0x3000)));
        assert_eq!(pool.alloc_page(), None);
    }

    /// Input shape: a pool of 8 frames with 3 excluded (preserved) frames the bump
    /// pointer has not reached, one of them given back. `available` counts exactly
    /// the frames `alloc_page` can still hand out (it counted the excluded ones too).
    #[test]
    fn available_does_not_count_excluded_frames_ahead_of_the_bump_pointer() {
        let mut pool = PagePool::new(PhysAddr(0x1000), 8 * PAGE_SIZE);
        let mut ex = PageSet::new();
        ex.insert_range(PhysAddr(0x4000), 3).unwrap();
        pool.exclude(&ex);
        assert_eq!(pool.available(), 5);
        assert_eq!(pool.alloc_page(), Some(PhysAddr(0x1000)));
        assert_eq!(pool.available(), 4);
        pool.free_page(PhysAddr(0x5000));
        assert_eq!(pool.available(), 5);
        let mut n = 0;
        while pool.alloc_page().is_some() {
            n += 1;
        }
        assert_eq!((n, pool.available()), (5, 0));
    }

    mod prop {
        use super::*;
        use alloc::collections::BTreeSet;
        use proptest::prelude::*;

        const BASE: u64 = 0x10_0000;
        const FRAMES: u64 = 48;

        #[derive(Clone, Debug)]
        enum Op {
            Alloc,
            AllocContiguous(usize),
            /// Frame index; beyond `FRAMES` lies outside the pool.
            Free(u64),
            /// First frame and length of an excluded range.
            Exclude(u64, u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Alloc),
                1 => (1usize..6).prop_map(Op::AllocContiguous),
                4 => (0..FRAMES + 4).prop_map(Op::Free),
                1 => (0..FRAMES, 1u64..8).prop_map(|(s, n)| Op::Exclude(s, n)),
            ]
        }

        proptest! {
            /// Random alloc/free/exclude sequences: no frame is ever live twice, no
            /// frame excluded at the time is handed out, every frame comes from the
            /// pool, and the pool's own view of what is live agrees with the model's.
            #[test]
            fn no_frame_live_twice_no_excluded_frame_handed_out(
                ops in proptest::collection::vec(op(), 1..200)
            ) {
                let mut pool = PagePool::new(PhysAddr(BASE), FRAMES * PAGE_SIZE);
                let mut live: BTreeSet<u64> = BTreeSet::new();
                let mut excluded: BTreeSet<u64> = BTreeSet::new();
                let frame = |i: u64| BASE + i * PAGE_SIZE;
                for op in ops {
                    let mut got = alloc::vec::Vec::new();
                    match op {
                        Op::Alloc => got.extend(pool.alloc_page().map(|p| p.0)),
                        Op::AllocContiguous(n) => {
                            if let Some(p) = pool.alloc_contiguous(n) {
                                got.extend((0..n as u64).map(|i| p.0 + i * PAGE_SIZE));
                            }
                        }
                        Op::Free(i) => {
                            let p = frame(i);
                            pool.free_page(PhysAddr(p));
                            // Given back, the frame is the pool's (if it lies in it).
                            live.remove(&p);
                            excluded.remove(&p);
                        }
                        Op::Exclude(s, n) => {
                            let mut set = PageSet::new();
                            let n = n.min(FRAMES - s);
                            set.insert_range(PhysAddr(frame(s)), n).unwrap();
                            pool.exclude(&set);
                            excluded.extend((s..s + n).map(frame));
                        }
                    }
                    for p in got {
                        prop_assert!((BASE..BASE + FRAMES * PAGE_SIZE).contains(&p));
                        prop_assert!(!excluded.contains(&p), "excluded frame {p:#x} handed out");
                        prop_assert!(live.insert(p), "frame {p:#x} handed out twice");
                    }
                    for i in 0..FRAMES {
                        let p = frame(i);
                        prop_assert_eq!(pool.is_live(PhysAddr(p)), live.contains(&p), "{:#x}", p);
                    }
                    // `available` is what a drain of a copy hands out.
                    let mut copy = pool.clone();
                    let mut n = 0u64;
                    while copy.alloc_page().is_some() {
                        n += 1;
                    }
                    prop_assert_eq!(pool.available(), n);
                }
            }
        }
    }
}
