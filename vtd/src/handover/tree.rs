//! The verification walk of an adopted domain: every entry of every table decoded by
//! the domain's [`Format`] (reserved bits, widths, alignment), every table page checked
//! against the preserved set and the record, bounded by the record's page count.
//!
//! This is not a second page-table walker for mappings (that is `iommu_core::pgtable`,
//! used by `prepare` and by [`Unit::walk_domain`](crate::driver::Unit::walk_domain)): it
//! produces no mapping runs, only the table pages and a leaf count, reading each table
//! page once and skipping zero entries without decoding them, which keeps it close to
//! the cost of copying the tables.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Budget, Entry, Format, WalkError, WalkErrorKind};
use iommu_core::PhysAddr;

use super::record::Record;
use super::HandoverErrorKind as K;
use crate::driver::{AnyFormat, PAGE};
use crate::hw::pte::{FlPte, SlPte, FL_P, FL_PS, PTE_ADDR_MASK, SL_PS, SL_R, SL_W};
use iommu_core::{DomainId, Iova};

/// What the walk of one domain found: its leaf count (its table pages are left in
/// [`Scratch::tables`]).
pub(crate) struct Tree {
    pub(crate) leaves: u64,
}

/// A table to visit: (table, level, first IOVA, (parent table, index, entry) for
/// errors).
type Pending = (PhysAddr, u8, u64, (PhysAddr, usize, u64));

/// Entries in a table page.
const ENTRIES: u64 = PAGE / 8;

/// Largest record (in pages) whose visited set is a bitmap (512 KiB of bits); a larger
/// one, which only a hostile record would claim, falls back to an ordered set so the
/// memory used stays proportional to the pages actually walked.
const BITMAP_MAX_PAGES: u64 = 1 << 22;

/// Every table page seen across the domains of one verification (a page reached twice
/// is an alias or a cycle). Pages are numbered by their position in the record's page
/// runs, which every table page must lie in; the runs are ascending and disjoint (the
/// record decoder checks it), so the numbering is one-to-one.
pub(crate) struct Visited {
    /// Number of the first page of each record run.
    first: Vec<u64>,
    /// One bit per record page, or `None` above [`BITMAP_MAX_PAGES`].
    bits: Option<Vec<u64>>,
    /// The fallback: numbers of the pages seen.
    set: BTreeSet<u64>,
}

impl Visited {
    /// An empty set for the pages of `record`.
    pub(crate) fn new(record: &Record) -> Self {
        let mut first = Vec::with_capacity(record.pages.len());
        let mut total = 0u64;
        for &(_, n) in &record.pages {
            first.push(total);
            // Disjoint runs of 4 KiB pages below 2^64: at most 2^52 pages in all.
            total = total.saturating_add(n);
        }
        let bits =
            (total <= BITMAP_MAX_PAGES).then(|| alloc::vec![0u64; total.div_ceil(64) as usize]);
        Visited {
            first,
            bits,
            set: BTreeSet::new(),
        }
    }

    /// The number of `page` in `record`'s runs, `None` if no run holds it (exactly
    /// when [`Record::holds_page`] is false).
    fn number(&self, record: &Record, page: PhysAddr) -> Option<u64> {
        let i = record.pages.partition_point(|&(p, _)| p <= page);
        let (p, n) = *record.pages.get(i.checked_sub(1)?)?;
        let off = (page.0 - p.0) / PAGE;
        (off < n).then(|| self.first.get(i - 1).map(|f| f + off))?
    }

    /// Marks page number `k`; false if it was marked already.
    fn insert(&mut self, k: u64) -> bool {
        match self
            .bits
            .as_mut()
            .and_then(|b| b.get_mut((k / 64) as usize))
        {
            Some(w) => {
                let m = 1u64 << (k % 64);
                let new = *w & m == 0;
                *w |= m;
                new
            }
            None => self.set.insert(k),
        }
    }

    /// Marks `page` as seen if the record holds it (a page outside the record is
    /// refused before the alias check anyway).
    pub(crate) fn seed(&mut self, record: &Record, page: PhysAddr) {
        if let Some(k) = self.number(record, page) {
            self.insert(k);
        }
    }
}

/// Whether every page of the record's runs is in `preserved`. Each run is stepped
/// through block by block of the set (its blocks are disjoint, so the steps are
/// bounded by its block count); the same answer as building a set of the runs and
/// asking [`PageSet::is_subset`], without building it.
pub(crate) fn runs_preserved(record: &Record, preserved: &PageSet) -> bool {
    record
        .pages
        .iter()
        .all(|&(start, n)| first_unpreserved(start, n, preserved).is_none())
}

/// The first page of the `n` pages from `start` that `preserved` does not hold, if any.
/// Steps block by block of the set, so the work is bounded by the set's block count,
/// whatever `n` claims.
pub(crate) fn first_unpreserved(start: PhysAddr, n: u64, preserved: &PageSet) -> Option<PhysAddr> {
    let end = start.0.saturating_add(n.saturating_mul(PAGE));
    let mut page = start;
    while page.0 < end {
        match preserved.containing_block(page) {
            Some((b, o)) => page = PhysAddr(b.0.saturating_add(PAGE << o)),
            None => return Some(page),
        }
    }
    None
}

/// The check of leaf targets during a verification: every page a leaf maps must lie in
/// the preserved set (memory its owner preserved, e.g. guest memory) and outside the
/// unit's tables (a device must not reach them): see [`Forbid`] for the two passes
/// that check the latter. Leaves whose IOVAs and targets both follow on are checked as
/// one run, and the last preserved block found is kept, so a table of leaves into one
/// preserved block costs one lookup.
pub(crate) struct Targets<'a> {
    preserved: &'a PageSet,
    forbid: Forbid<'a>,
    /// The run being gathered: (first IOVA, first PA, bytes).
    run: Option<(u64, u64, u64)>,
    /// The last preserved block found, `[start, end)`.
    cached: (u64, u64),
    /// Runs checked.
    pub(crate) checked: u64,
    /// A target met [`Forbid::Runs`]: the domain must be walked again against the
    /// exact table pages.
    pub(crate) suspect: bool,
}

/// The pages a leaf must not map (the unit's tables), as known at the time of a walk.
#[derive(Clone, Copy)]
pub(crate) enum Forbid<'a> {
    /// The record's page runs, a superset of the tables known before any walk. A
    /// target in them is not refused but marks the walk suspect: a run may claim
    /// pages that are no table (another client's memory that a device legitimately
    /// reaches), and only the walks of every domain show which pages are tables.
    Runs(&'a Record),
    /// The unit's table pages once every domain is walked: ascending, disjoint
    /// `[start, end)` ranges. A target in them is refused.
    Tables(&'a [(u64, u64)]),
}

impl<'a> Targets<'a> {
    /// A check against `preserved` and the pages `forbid` names.
    pub(crate) fn new(preserved: &'a PageSet, forbid: Forbid<'a>) -> Self {
        Targets {
            preserved,
            forbid,
            run: None,
            cached: (0, 0),
            checked: 0,
            suspect: false,
        }
    }

    /// A leaf mapping `size` bytes at `iova` to `pa`.
    fn leaf(&mut self, did: DomainId, iova: u64, pa: u64, size: u64) -> Result<(), K> {
        if let Some((i, p, n)) = self.run.as_mut() {
            if i.wrapping_add(*n) == iova && p.wrapping_add(*n) == pa {
                *n += size;
                return Ok(());
            }
        }
        self.flush(did)?;
        self.run = Some((iova, pa, size));
        Ok(())
    }

    /// Checks the run gathered so far.
    fn flush(&mut self, did: DomainId) -> Result<(), K> {
        let Some((iova, start, bytes)) = self.run.take() else {
            return Ok(());
        };
        self.checked += 1;
        let end = start.saturating_add(bytes);
        let bad = |page: u64, why| K::LeafTarget {
            did,
            iova: Iova(iova + (page - start)),
            page: PhysAddr(page),
            why,
        };
        let mut page = start;
        while page < end {
            if (self.cached.0..self.cached.1).contains(&page) {
                page = self.cached.1;
                continue;
            }
            match self.preserved.containing_block(PhysAddr(page)) {
                Some((b, o)) => {
                    self.cached = (b.0, b.0.saturating_add(PAGE << o));
                    page = self.cached.1;
                }
                None => return Err(bad(page, "in no preserved memory")),
            }
        }
        // A forbidden range meeting [start, end): the last one starting below `end`
        // (the ranges are ascending and disjoint, so it ends last of those).
        let last = match self.forbid {
            Forbid::Runs(record) => {
                let i = record.pages.partition_point(|&(p, _)| p.0 < end);
                i.checked_sub(1)
                    .and_then(|i| record.pages.get(i))
                    .map(|&(p, n)| (p.0, p.0.saturating_add(n.saturating_mul(PAGE))))
            }
            Forbid::Tables(t) => {
                let i = t.partition_point(|&(s, _)| s < end);
                i.checked_sub(1).and_then(|i| t.get(i)).copied()
            }
        };
        if let Some((s, _)) = last.filter(|&(_, e)| e > start) {
            match self.forbid {
                Forbid::Runs(_) => self.suspect = true,
                Forbid::Tables(_) => return Err(bad(start.max(s), "a page table of this unit")),
            }
        }
        Ok(())
    }
}

/// Buffers reused across the domains of one verification.
pub(crate) struct Scratch {
    /// Tables still to visit.
    stack: Vec<Pending>,
    /// The table pages of the last domain walked, in visiting order.
    pub(crate) tables: Vec<PhysAddr>,
    /// The table being checked.
    buf: Box<[u8; PAGE as usize]>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            stack: Vec::new(),
            tables: Vec::new(),
            buf: Box::new([0; PAGE as usize]),
        }
    }
}

/// The `i`-th little-endian 64-bit word of `b`.
fn word(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

/// Masks for checking a whole table of leaves at once: `(present, leaf, reserved)`.
/// At level 1 every present entry is a 4 KiB leaf (`leaf` is 0); at level 2 a present
/// entry with PS (`leaf`) is a 2 MiB leaf. For such entries the reserved bits do not
/// depend on any other bit, so `raw & reserved` is exactly what
/// [`SlPte::reserved_bits`] / [`FlPte::reserved_bits`] report: the masks are taken from
/// those functions with every bit set, not restated. `None` above level 2.
pub(crate) fn leaf_masks(f: &AnyFormat, level: u8) -> Option<(u64, u64, u64)> {
    let lvl = level as u32;
    match (f, level) {
        (AnyFormat::Second(s), 1 | 2) => Some((
            SL_R | SL_W,
            if level == 2 { SL_PS } else { 0 },
            SlPte::from_raw(u64::MAX).reserved_bits(lvl, &s.caps()),
        )),
        (AnyFormat::First(s), 1 | 2) => Some((
            FL_P,
            if level == 2 { FL_PS } else { 0 },
            FlPte::from_raw(u64::MAX).reserved_bits(lvl, &s.caps()),
        )),
        _ => None,
    }
}

/// Walks the tree under `root`; see the module documentation. Depth first, the
/// children of a table in entry order (for tables allocated as they were mapped, that
/// is ascending addresses, which keeps the reads streaming); the table pages are left
/// in `scratch.tables` in that order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_tree(
    f: &AnyFormat,
    mem: &dyn PhysMem,
    did: DomainId,
    root: PhysAddr,
    max_tables: usize,
    preserved: Option<&PageSet>,
    record: &Record,
    visited: &mut Visited,
    scratch: &mut Scratch,
    mut targets: Option<&mut Targets<'_>>,
) -> Result<Tree, K> {
    let werr = |kind, level, index, entry, table| K::Walk {
        did,
        err: WalkError {
            kind,
            level,
            index,
            entry,
            table,
        },
    };
    let ia_bits = f.ia_bits();
    let masks = [leaf_masks(f, 1), leaf_masks(f, 2)];
    let Scratch {
        stack,
        tables,
        buf: scratch_buf,
    } = scratch;
    stack.clear();
    tables.clear();
    let mut leaves = 0u64;
    let mut count = 0usize;
    stack.push((root, f.root_level(), 0, (root, WalkError::ROOT, 0)));
    let buf = &mut scratch_buf[..];
    while let Some((table, level, base, (pt, pi, pe))) = stack.pop() {
        let plevel = level + 1;
        if table.0 % PAGE != 0 {
            return Err(werr(
                WalkErrorKind::MisalignedTable {
                    next: table,
                    align: PAGE,
                },
                plevel,
                pi,
                pe,
                pt,
            ));
        }
        // `preserved` is `None` when the caller checked that every record page is
        // preserved: then the record check covers both.
        let number = visited.number(record, table);
        let Some(k) = number.filter(|_| !preserved.is_some_and(|p| !p.contains(table))) else {
            return Err(K::NotPreserved {
                what: "page table",
                page: table,
                device: None,
                did: Some(did),
            });
        };
        if !visited.insert(k) {
            return Err(werr(
                WalkErrorKind::Alias {
                    next: table,
                    first: table,
                    first_level: level,
                },
                plevel,
                pi,
                pe,
                pt,
            ));
        }
        count += 1;
        if count > max_tables {
            return Err(werr(
                WalkErrorKind::BudgetExhausted(Budget::Tables(max_tables)),
                plevel,
                pi,
                pe,
                pt,
            ));
        }
        tables.push(table);
        mem.read(table, buf)
            .map_err(|e| werr(WalkErrorKind::Memory(e), plevel, pi, pe, pt))?;
        if let Some(Some((present, leaf, reserved))) = masks.get(level as usize - 1) {
            // Fastest path, one OR and one AND per entry: `any` is the OR of every
            // entry, `all` the AND. `any == 0` is an empty table. If every entry has a
            // bit of `present` in common (`all & present != 0`), every entry is a
            // present entry, and then the OR of their reserved bits is `any & reserved`
            // and every one is a leaf iff `all` has the `leaf` bit. In the same pass,
            // `apart` is zero iff the entries' addresses follow on from the first one
            // (a table of leaves mapping one contiguous range, what mapping a range
            // gives): then its leaf targets are one run.
            let shift = f.entry_shift(level);
            let size = 1u64 << shift;
            let addr_mask = PTE_ADDR_MASK & !(size - 1);
            let pa0 = word(buf, 0) & addr_mask;
            let (mut any, mut all, mut apart) = (0u64, u64::MAX, 0u64);
            let mut expect = pa0;
            for chunk in buf.chunks_exact(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                let raw = u64::from_le_bytes(w);
                any |= raw;
                all &= raw;
                apart |= (raw & addr_mask) ^ expect;
                expect = expect.wrapping_add(size);
            }
            if any == 0 {
                continue;
            }
            let feed = |t: &mut Targets<'_>, only_present: bool| {
                if !only_present && apart == 0 {
                    return t.leaf(did, base, pa0, ENTRIES << shift);
                }
                for (i, chunk) in buf.chunks_exact(8).enumerate() {
                    let raw = word(chunk, 0);
                    if only_present && raw & present == 0 {
                        continue;
                    }
                    let iova = base + ((i as u64) << shift);
                    t.leaf(did, iova, raw & addr_mask, size)?;
                }
                Ok::<(), K>(())
            };
            if all & present != 0 && (any & reserved) | (!all & leaf) == 0 {
                if let Some(t) = targets.as_deref_mut() {
                    feed(t, false)?;
                }
                leaves += ENTRIES;
                continue;
            }
            // Fast path for a partly filled table of leaves, by groups of 8 entries
            // (one cache line) with the same OR/AND test: count present entries,
            // note whether any is not a leaf or has a reserved bit set; only then
            // decode entry by entry (the table entries, or the exact error).
            let (mut n, mut bad) = (0u64, 0u64);
            for group in buf.chunks_exact(64) {
                let (mut any, mut all) = (0u64, u64::MAX);
                for j in 0..8 {
                    let raw = word(group, j);
                    any |= raw;
                    all &= raw;
                }
                if any == 0 {
                    continue;
                }
                if all & present != 0 {
                    n += 8;
                    bad |= (any & reserved) | (!all & leaf);
                    continue;
                }
                for j in 0..8 {
                    let raw = word(group, j);
                    let p = (raw & present != 0) as u64;
                    n += p;
                    bad |= ((raw & reserved) | (!raw & leaf)) * p;
                }
            }
            if bad == 0 {
                if let Some(t) = targets.as_deref_mut() {
                    feed(t, true)?;
                }
                leaves += n;
                continue;
            }
        }
        let shift = f.entry_shift(level);
        let children = stack.len();
        // Entry by entry, skipping zero blocks of 64 entries, then zero groups of 8
        // entries (one cache line), at once.
        for (b, block) in buf.chunks_exact(512).enumerate() {
            if block.iter().fold(0u8, |acc, &x| acc | x) == 0 {
                continue;
            }
            for (gb, group) in block.chunks_exact(64).enumerate() {
                let g = b * 8 + gb;
                if (0..8).fold(0, |acc, j| acc | word(group, j)) == 0 {
                    continue;
                }
                for j in 0..8 {
                    let raw = word(group, j);
                    if raw == 0 {
                        continue;
                    }
                    let i = g * 8 + j;
                    let entry = f
                        .decode(level, raw)
                        .map_err(|e| werr(WalkErrorKind::BadEntry(e), level, i, raw, table))?;
                    let iova = base + ((i as u64) << shift);
                    match entry {
                        Entry::Invalid => continue,
                        _ if ia_bits < 64 && iova >> ia_bits != 0 => {
                            return Err(werr(
                                WalkErrorKind::IovaOverflow { ia_bits },
                                level,
                                i,
                                raw,
                                table,
                            ))
                        }
                        Entry::Leaf { base: pa, size, .. } => {
                            if pa.0 & (size.bytes() - 1) != 0 {
                                return Err(werr(
                                    WalkErrorKind::MisalignedLeaf { base: pa, size },
                                    level,
                                    i,
                                    raw,
                                    table,
                                ));
                            }
                            if let Some(t) = targets.as_deref_mut() {
                                t.leaf(did, iova, pa.0, size.bytes())?;
                            }
                            leaves += 1;
                        }
                        Entry::Table {
                            next, level: nl, ..
                        } => {
                            if nl == 0 || nl >= level {
                                return Err(werr(
                                    WalkErrorKind::LevelNotBelow { next_level: nl },
                                    level,
                                    i,
                                    raw,
                                    table,
                                ));
                            }
                            stack.push((next, nl, iova, (table, i, raw)));
                        }
                    }
                }
            }
        }
        // Visit the children in entry order (the stack pops the last pushed first).
        if let Some(c) = stack.get_mut(children..) {
            c.reverse();
        }
    }
    if let Some(t) = targets {
        t.flush(did)?;
    }
    Ok(Tree { leaves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Mode;
    use crate::format::{FirstStage, SecondStage};
    use crate::hw::pte::{PteCaps, SL_TM};
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use iommu_core::mem::MemError;

    const CAPS: PteCaps = PteCaps {
        haw: 39,
        large_2m: true,
        large_1g: true,
        snoop: false,
        transient: false,
    };
    const RW: u64 = SL_R | SL_W;
    // A 4-level second-stage tree: L4, L3, L2 tables, then up to 8 L1 tables.
    const L4: u64 = 0x10_0000;
    const L3: u64 = 0x10_1000;
    const L2: u64 = 0x10_2000;
    const L1: u64 = 0x10_3000;

    /// Page-granular memory of zero-filled pages.
    #[derive(Default)]
    struct Mem(BTreeMap<u64, Vec<u8>>);

    impl PhysMem for Mem {
        fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr.0 + i as u64;
                let p = self
                    .0
                    .get(&(a >> 12))
                    .ok_or(MemError::Unbacked { addr: PhysAddr(a) })?;
                *b = p[(a & 0xfff) as usize];
            }
            Ok(())
        }
        fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
            for (i, b) in data.iter().enumerate() {
                let a = addr.0 + i as u64;
                self.0.entry(a >> 12).or_insert_with(|| vec![0; 4096])[(a & 0xfff) as usize] = *b;
            }
            Ok(())
        }
    }

    impl Mem {
        fn set(&mut self, table: u64, index: u64, raw: u64) {
            self.write(PhysAddr(table + index * 8), &raw.to_le_bytes())
                .unwrap();
        }
        /// L4 -> L3 -> L2 and the L2 table's first `l1` entries pointing to L1 tables.
        fn tree(l1: u64) -> Self {
            let mut m = Mem::default();
            for t in [L4, L3, L2] {
                m.write(PhysAddr(t), &[0; 4096]).unwrap();
            }
            m.set(L4, 0, L3 | RW);
            m.set(L3, 0, L2 | RW);
            for i in 0..l1 {
                m.write(PhysAddr(L1 + i * 4096), &[0; 4096]).unwrap();
                m.set(L2, i, (L1 + i * 4096) | RW);
            }
            m
        }
    }

    fn record() -> Record {
        Record {
            mmio_base: PhysAddr(0xfed9_0000),
            rtaddr: 0,
            cap: 0,
            ecap: 0,
            mode: Mode::Legacy,
            haw: CAPS.haw,
            domains: Vec::new(),
            devices: Vec::new(),
            pages: vec![(PhysAddr(L4), 16)],
        }
    }

    /// (leaves, table pages) of the tree at `L4`.
    fn walk(mem: &Mem) -> Result<(u64, Vec<PhysAddr>), K> {
        walk_with(mem, &record())
    }

    fn walk_with(mem: &Mem, record: &Record) -> Result<(u64, Vec<PhysAddr>), K> {
        let f = AnyFormat::Second(SecondStage::new(4, CAPS).unwrap());
        let mut scratch = Scratch::default();
        let t = verify_tree(
            &f,
            mem,
            DomainId(1),
            PhysAddr(L4),
            64,
            None,
            record,
            &mut Visited::new(record),
            &mut scratch,
            None,
        )?;
        Ok((t.leaves, scratch.tables))
    }

    /// The alias an error names: (level, index, table reached twice).
    fn alias(r: Result<(u64, Vec<PhysAddr>), K>) -> (u8, usize, PhysAddr) {
        match r {
            Err(K::Walk {
                err:
                    WalkError {
                        kind: WalkErrorKind::Alias { next, .. },
                        level,
                        index,
                        ..
                    },
                ..
            }) => (level, index, next),
            Err(e) => panic!("unexpected error {e:?}"),
            Ok((n, _)) => panic!("accepted, {n} leaves"),
        }
    }

    /// A table reached twice (two parents, or a cycle back to the root) is an alias,
    /// with the visited set as a bitmap and as the fallback ordered set (a record of
    /// more pages than the bitmap takes).
    #[test]
    fn aliases_and_cycles_are_caught() {
        let big = Record {
            pages: vec![(PhysAddr(L4), 16), (PhysAddr(1 << 32), BITMAP_MAX_PAGES)],
            ..record()
        };
        assert!(Visited::new(&record()).bits.is_some());
        assert!(Visited::new(&big).bits.is_none());
        for rec in [record(), big] {
            // Two L2 entries pointing to the same L1 table (walked in entry order: the
            // second is the alias).
            let mut m = Mem::tree(1);
            m.set(L2, 9, L1 | RW);
            assert_eq!(alias(walk_with(&m, &rec)), (2, 9, PhysAddr(L1)));
            // An L3 entry pointing back to the root.
            let mut m = Mem::tree(1);
            m.set(L3, 5, L4 | RW);
            assert_eq!(alias(walk_with(&m, &rec)), (3, 5, PhysAddr(L4)));
            // A sound tree passes.
            assert_eq!(walk_with(&Mem::tree(3), &rec).unwrap().1.len(), 6);
        }
    }

    /// Pages in the gap between two record runs, or past the last, are refused; pages
    /// of either run are numbered apart (no false alias across runs).
    #[test]
    fn pages_outside_the_record_runs_are_refused() {
        let rec = Record {
            pages: vec![(PhysAddr(L4), 4), (PhysAddr(L1 + 2 * 4096), 2)],
            ..record()
        };
        // L1 tables #0 (= L4 + 3 pages) and #2, #3 are in the runs, #1 in the gap.
        let mut m = Mem::tree(4);
        m.set(L2, 1, 0);
        assert_eq!(walk_with(&m, &rec).unwrap().1.len(), 6);
        for (idx, page) in [(1u64, L1 + 4096), (1, L1 + 4 * 4096), (1, 1 << 38)] {
            let mut m = Mem::tree(4);
            m.set(L2, idx, page | RW);
            match walk_with(&m, &rec) {
                Err(K::NotPreserved { page: p, .. }) => assert_eq!(p, PhysAddr(page)),
                Err(e) => panic!("unexpected error {e:?}"),
                Ok((n, _)) => panic!("accepted, {n} leaves"),
            }
        }
    }

    /// The bad entry an error names: (level, index, raw entry, table).
    fn bad_entry(r: Result<(u64, Vec<PhysAddr>), K>) -> (u8, usize, u64, PhysAddr) {
        match r {
            Err(K::Walk {
                err:
                    WalkError {
                        kind: WalkErrorKind::BadEntry(_),
                        level,
                        index,
                        entry,
                        table,
                    },
                ..
            }) => (level, index, entry, table),
            Err(e) => panic!("unexpected error {e:?}"),
            Ok((n, _)) => panic!("accepted, {n} leaves"),
        }
    }

    /// Leaf tables of every shape the whole-table fast paths distinguish: full,
    /// empty, partly filled, present entries with no common present bit, non-present
    /// garbage; each gives the leaf count the per-entry decode gives.
    #[test]
    fn leaf_tables_counted_like_entry_by_entry() {
        let mut m = Mem::tree(6);
        let pa = |i: u64| 0x4000_0000 + i * 4096;
        for i in 0..512 {
            // L1 #0: full of read/write leaves.
            m.set(L1, i, pa(i) | RW);
            // L1 #1: stays empty. L1 #2: every other entry a leaf.
            if i % 2 == 0 {
                m.set(L1 + 2 * 4096, i, pa(i) | SL_R);
            }
            // L1 #3: all present, alternately read-only and write-only (no bit in
            // common), with A/D bits.
            let p = if i % 2 == 0 { SL_R } else { SL_W | 1 << 9 };
            m.set(L1 + 3 * 4096, i, pa(i) | p | 1 << 8);
            // L1 #4: non-present entries with address bits (ignored by decode).
            m.set(L1 + 4 * 4096, i, pa(i));
            // L1 #5: one leaf in the last slot.
            if i == 511 {
                m.set(L1 + 5 * 4096, i, pa(i) | SL_W);
            }
        }
        // L2 entries 6..: 2 MiB leaves.
        for i in 6..512 {
            m.set(L2, i, (0x8000_0000 + i * (2 << 20)) | RW | SL_PS);
        }
        let (leaves, tables) = walk(&m).unwrap();
        assert_eq!(leaves, 512 + 256 + 512 + 1 + (512 - 6));
        // Depth first, children in entry order.
        let l1: Vec<PhysAddr> = (0..6).map(|i| PhysAddr(L1 + i * 4096)).collect();
        assert_eq!(tables[..3], [PhysAddr(L4), PhysAddr(L3), PhysAddr(L2)]);
        assert_eq!(tables[3..], l1[..]);
    }

    /// A reserved bit in one entry of an otherwise valid full table is found and named
    /// by the per-entry path, whichever entry it is.
    #[test]
    fn bad_entry_in_full_leaf_table_is_named() {
        for bad in [0u64, 1, 255, 511] {
            for bit in [1u64 << 45, SL_TM, 1 << 11] {
                let mut m = Mem::tree(1);
                for i in 0..512 {
                    m.set(L1, i, (0x4000_0000 + i * 4096) | RW);
                }
                let raw = (0x4000_0000 + bad * 4096) | RW | bit;
                m.set(L1, bad, raw);
                assert_eq!(bad_entry(walk(&m)), (1, bad as usize, raw, PhysAddr(L1)));
            }
        }
        // The same in a partly filled table: a full line of 8 leaves among empty ones.
        for bad in [8u64, 13] {
            let mut m = Mem::tree(1);
            for i in 8..16 {
                m.set(L1, i, (0x4000_0000 + i * 4096) | RW);
            }
            let raw = (0x4000_0000 + bad * 4096) | RW | 1 << 45;
            m.set(L1, bad, raw);
            assert_eq!(bad_entry(walk(&m)), (1, bad as usize, raw, PhysAddr(L1)));
        }
        // A 2 MiB leaf with an address bit below 2 MiB set.
        let mut m = Mem::tree(0);
        for i in 0..512 {
            m.set(L2, i, (i << 21) | RW | SL_PS);
        }
        let raw = (7 << 21) | 0x1000 | RW | SL_PS;
        m.set(L2, 7, raw);
        assert_eq!(bad_entry(walk(&m)), (2, 7, raw, PhysAddr(L2)));
    }

    /// A full level-2 table of 2 MiB leaves with one entry lacking PS: that entry is a
    /// table pointer and is followed (here to a page outside the record).
    #[test]
    fn missing_ps_in_full_2m_table_is_followed() {
        let mut m = Mem::tree(0);
        for i in 0..512 {
            m.set(L2, i, (i << 21) | RW | SL_PS);
        }
        m.set(L2, 300, (300 << 21) | RW);
        match walk(&m) {
            Err(K::NotPreserved { page, .. }) => assert_eq!(page, PhysAddr(300 << 21)),
            Err(e) => panic!("unexpected error {e:?}"),
            Ok((n, _)) => panic!("accepted, {n} leaves"),
        }
        // The same in a partly filled table (a full line of 2 MiB leaves).
        let mut m = Mem::tree(0);
        for i in 16..24 {
            m.set(L2, i, (i << 21) | RW | SL_PS);
        }
        m.set(L2, 20, (20 << 21) | RW);
        match walk(&m) {
            Err(K::NotPreserved { page, .. }) => assert_eq!(page, PhysAddr(20 << 21)),
            Err(e) => panic!("unexpected error {e:?}"),
            Ok((n, _)) => panic!("accepted, {n} leaves"),
        }
    }

    /// `runs_preserved` agrees with `is_subset` on a set of the runs, for runs and
    /// preserved sets made of blocks of many orders and alignments.
    #[test]
    fn runs_preserved_matches_is_subset() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..300 {
            let mut preserved = PageSet::new();
            for _ in 0..next(6) {
                let _ = preserved.insert_range(PhysAddr(next(64) * PAGE), next(40));
            }
            let mut pages = Vec::new();
            let mut at = next(16);
            for _ in 0..next(4) {
                let n = 1 + next(12);
                pages.push((PhysAddr(at * PAGE), n));
                at += n + next(8);
            }
            let mut runs = PageSet::new();
            for &(p, n) in &pages {
                runs.insert_range(p, n).unwrap();
            }
            let rec = Record { pages, ..record() };
            assert_eq!(
                runs_preserved(&rec, &preserved),
                runs.is_subset(&preserved),
                "{:?}",
                rec.pages
            );
        }
    }

    /// The fast path relies on leaf reserved bits being `raw & mask`: check it
    /// against the hw functions on many values and capability sets.
    #[test]
    fn leaf_reserved_bits_are_a_mask() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for haw in [39u32, 46, 48, 52, 57] {
            for flags in 0..4u8 {
                let caps = PteCaps {
                    haw,
                    large_2m: true,
                    large_1g: true,
                    snoop: flags & 1 != 0,
                    transient: flags & 2 != 0,
                };
                let sl = AnyFormat::Second(SecondStage::new(4, caps).unwrap());
                let fl = AnyFormat::First(FirstStage::new(4, caps).unwrap());
                let (_, _, msl) = leaf_masks(&sl, 1).unwrap();
                let (_, _, mfl) = leaf_masks(&fl, 1).unwrap();
                let (_, psl, msl2) = leaf_masks(&sl, 2).unwrap();
                let (_, pfl, mfl2) = leaf_masks(&fl, 2).unwrap();
                for _ in 0..2000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    assert_eq!(SlPte::from_raw(x).reserved_bits(1, &caps), x & msl);
                    assert_eq!(FlPte::from_raw(x).reserved_bits(1, &caps), x & mfl);
                    // Level 2 with PS set (a 2 MiB leaf).
                    let y = x | psl;
                    assert_eq!(SlPte::from_raw(y).reserved_bits(2, &caps), y & msl2);
                    let y = x | pfl;
                    assert_eq!(FlPte::from_raw(y).reserved_bits(2, &caps), y & mfl2);
                }
            }
        }
    }
}
