//! One conformance body for every page-table format (feature `conformance`).
//!
//! [`conformance_tests!`](crate::conformance_tests) instantiates every check below for
//! one format and configuration as tests named `<module>::<format>::<check>`; an
//! architecture crate lists its formats in one test file, one line each:
//!
//! ```ignore
//! mod conformance {
//!     iommu_core::conformance_tests!(vtd_second_stage_4, vtd::format::SecondStage::new(4, CAPS).unwrap());
//! }
//! ```
//!
//! The checks run the generic [`map`] / [`unmap`] and the generic walker over a strict
//! sparse memory ([`Mem`]: reading what was never written is an error) and a table
//! allocator that knows what it handed out ([`Tables`]):
//!
//! - [`full_tree_reads_back`]: a tree with every table on a path full (table entries at
//!   every level, a whole table of leaves at every level that holds leaves) walks back
//!   exactly as mapped, and its table pages are exactly those allocated;
//! - [`round_trip_at_zero_and_top`]: leaf, table and split entries decode to what was
//!   encoded, at output address 0 and at the highest the format allows;
//! - [`levels_cover_input_width`]: the levels tile the input width with no gap or
//!   overlap, the last page below `2^ia_bits` maps and the first above is refused (for a
//!   64-bit range: a range running past 2^64);
//! - [`random_map_unmap_matches_reference`]: proptest sequences of map and unmap (with
//!   and without splitting) against a reference map of leaves;
//! - [`unmap_all_frees_all_but_root`];
//! - [`refuses_above_output_width`] and [`refuses_misaligned_large_page`]: typed errors,
//!   nothing changed;
//! - [`partial_unmap_splits_or_refuses`];
//! - [`last_pages_of_input_range`]: the last page below `2^ia_bits` (2^64 included), of
//!   the smallest and the largest size, maps, walks, translates, splits and unmaps.
//!
//! Checks panic with a message naming the format on failure (they are test bodies).

use crate::addr::{Iova, PageSize, PhysAddr};
use crate::mem::{MemError, PhysMem};
use crate::pgtable::{
    leaf_level, map, table_pages, translate, unmap, walk, Entry, FreedTable, IovaSpan,
    MapErrorKind, Mapping, Outcome, Partial, Perms, TableAlloc, Unmapped, WalkLimits, WriteFormat,
};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

#[doc(hidden)]
pub use proptest as __proptest;

/// Sparse, strict physical memory in 4 KiB pages: a read of a page never written is
/// [`MemError::Unbacked`].
#[derive(Default)]
pub struct Mem {
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
}

impl PhysMem for Mem {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let mut off = 0usize;
        while off < buf.len() {
            let a = addr.0 + off as u64;
            let page = self
                .pages
                .get(&(a >> 12))
                .ok_or(MemError::Unbacked { addr: PhysAddr(a) })?;
            let in_page = (a & 0xfff) as usize;
            let n = (4096 - in_page).min(buf.len() - off);
            buf[off..off + n].copy_from_slice(&page[in_page..in_page + n]);
            off += n;
        }
        Ok(())
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let mut off = 0usize;
        while off < data.len() {
            let a = addr.0 + off as u64;
            let page = self
                .pages
                .entry(a >> 12)
                .or_insert_with(|| Box::new([0; 4096]));
            let in_page = (a & 0xfff) as usize;
            let n = (4096 - in_page).min(data.len() - off);
            page[in_page..in_page + n].copy_from_slice(&data[off..off + n]);
            off += n;
        }
        Ok(())
    }
}

/// A table allocator over `[base, ...)` that remembers what it handed out: tables are
/// aligned to their size, freed ones are reused, [`TableAlloc::owns`] answers from the
/// live set.
pub struct Tables {
    next: u64,
    free: BTreeMap<u64, Vec<u64>>,
    live: BTreeMap<u64, u64>,
    /// Most tables live at once before `alloc_table` says no (`usize::MAX`: no limit).
    pub limit: usize,
}

impl Tables {
    /// An allocator handing out tables from `base` up.
    pub fn new(base: PhysAddr) -> Self {
        Self {
            next: base.0,
            free: BTreeMap::new(),
            live: BTreeMap::new(),
            limit: usize::MAX,
        }
    }
    /// Gives back tables an unmap unlinked (after the caller's invalidation).
    pub fn release(&mut self, freed: &[FreedTable]) {
        for t in freed {
            let bytes = self.live.remove(&t.addr.0);
            assert_eq!(bytes, Some(t.bytes), "freed table {} was not live", t.addr);
            self.free.entry(t.bytes).or_default().push(t.addr.0);
        }
    }
    /// Addresses of the live tables.
    pub fn live(&self) -> BTreeSet<u64> {
        self.live.keys().copied().collect()
    }
}

impl TableAlloc for Tables {
    fn alloc_table(&mut self, _level: u8, bytes: u64) -> Option<PhysAddr> {
        if self.live.len() >= self.limit {
            return None;
        }
        let t = match self.free.get_mut(&bytes).and_then(|v| v.pop()) {
            Some(t) => t,
            None => {
                let t = self.next.next_multiple_of(bytes);
                self.next = t + bytes;
                t
            }
        };
        self.live.insert(t, bytes);
        Some(PhysAddr(t))
    }
    fn free_unlinked(&mut self, table: PhysAddr, bytes: u64) {
        if self.live.remove(&table.0).is_some() {
            self.free.entry(bytes).or_default().push(table.0);
        }
    }
    fn owns(&self, table: PhysAddr) -> bool {
        self.live.contains_key(&table.0)
    }
}

/// One tree of format `F`: memory, allocator and root.
pub struct Rig<'f, F: WriteFormat> {
    /// The format.
    pub f: &'f F,
    /// Memory.
    pub mem: Mem,
    /// Tables.
    pub tables: Tables,
    /// The root table.
    pub root: PhysAddr,
}

/// Where the test allocator starts (below every output width the formats support).
const TABLE_BASE: u64 = 1 << 32;

impl<'f, F: WriteFormat> Rig<'f, F>
where
    F::Attrs: Default,
{
    /// An empty tree.
    pub fn new(f: &'f F) -> Self {
        let mut tables = Tables::new(PhysAddr(TABLE_BASE));
        let level = f.root_level();
        let bytes = f.table_bytes(level);
        let root = tables.alloc_table(level, bytes).expect("root table");
        let mut mem = Mem::default();
        let cleared = f.cleared(level);
        for i in 0..bytes / 8 {
            mem.write_u64(PhysAddr(root.0 + i * 8), cleared)
                .expect("root");
        }
        Self {
            f,
            mem,
            tables,
            root,
        }
    }

    /// Maps with default attributes.
    pub fn map(
        &mut self,
        iova: u64,
        pa: u64,
        len: u64,
        size: PageSize,
        perms: Perms,
    ) -> Result<(), MapErrorKind> {
        match map(
            self.f,
            &mut self.mem,
            &mut self.tables,
            self.root,
            Iova(iova),
            PhysAddr(pa),
            len,
            size,
            perms,
            F::Attrs::default(),
        ) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.tables.release(&e.rollback.freed);
                Err(e.kind)
            }
        }
    }

    /// Unmaps and gives the unlinked tables back.
    pub fn unmap(
        &mut self,
        iova: u64,
        len: u64,
        partial: Partial,
    ) -> Result<Unmapped, MapErrorKind> {
        let u = unmap(
            self.f,
            &mut self.mem,
            &mut self.tables,
            self.root,
            Iova(iova),
            len,
            partial,
        )?;
        self.tables.release(&u.freed);
        Ok(u)
    }

    /// Unmaps the whole input range (refusing to cut a leaf); a 64-bit input range
    /// takes two calls, a length being a `u64`. The reports are merged.
    pub fn unmap_all(&mut self) -> Result<Unmapped, MapErrorKind> {
        let ia = self.f.ia_bits();
        if ia < 64 {
            return self.unmap(0, 1u64 << ia, Partial::Refuse);
        }
        let mut u = self.unmap(0, 1 << 63, Partial::Refuse)?;
        let v = self.unmap(1 << 63, 1 << 63, Partial::Refuse)?;
        u.bytes += v.bytes;
        u.leaves += v.leaves;
        u.freed.extend(v.freed);
        u.split.extend(v.split);
        u.touched = match (u.touched, v.touched) {
            (Some(a), Some(b)) => Some(IovaSpan {
                first: a.first,
                last: b.last,
            }),
            (a, b) => a.or(b),
        };
        Ok(u)
    }

    /// The walk; also checks that its table pages are exactly the live tables.
    pub fn walk(&self) -> Vec<Mapping> {
        let w = walk(self.f, &self.mem, self.root, &WalkLimits::default())
            .unwrap_or_else(|e| panic!("{}: walk failed: {e}", self.f.name()));
        let pages = table_pages(self.f, &self.mem, self.root, &WalkLimits::default())
            .unwrap_or_else(|e| panic!("{}: table collection failed: {e}", self.f.name()));
        assert_eq!(pages, w.tables, "{}: table collection", self.f.name());
        let seen: BTreeSet<u64> = pages.iter().map(|t| t.addr.0).collect();
        assert_eq!(
            seen,
            self.tables.live(),
            "{}: walked tables differ from allocated tables",
            self.f.name()
        );
        w.mappings
    }
}

/// A leaf of the reference model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leaf {
    pa: u64,
    size: u64,
    perms: Perms,
}

/// Coalesces reference leaves (IOVA order) the way the walker does; with
/// `ignore_size`, page sizes are not compared (after splits).
fn coalesce(
    leaves: impl IntoIterator<Item = (u64, u64, u64, Perms, u64)>,
    ignore_size: bool,
) -> Vec<(u64, u64, u64, Perms, u64)> {
    let mut out: Vec<(u64, u64, u64, Perms, u64)> = Vec::new();
    for (iova, pa, len, perms, page) in leaves {
        let page = if ignore_size { 0 } else { page };
        if let Some(last) = out.last_mut() {
            if last.0.checked_add(last.2) == Some(iova)
                && last.1.checked_add(last.2) == Some(pa)
                && last.3 == perms
                && last.4 == page
            {
                last.2 += len;
                continue;
            }
        }
        out.push((iova, pa, len, perms, page));
    }
    out
}

fn runs(m: &[Mapping], ignore_size: bool) -> Vec<(u64, u64, u64, Perms, u64)> {
    coalesce(
        m.iter()
            .map(|m| (m.iova.0, m.pa.0, m.size, m.perms, m.page_size.bytes())),
        ignore_size,
    )
}

fn reference_runs(r: &BTreeMap<u64, Leaf>, ignore_size: bool) -> Vec<(u64, u64, u64, Perms, u64)> {
    coalesce(
        r.iter().map(|(&i, l)| (i, l.pa, l.size, l.perms, l.size)),
        ignore_size,
    )
}

const ALL_PERMS: [Perms; 7] = [
    Perms::RW,
    Perms::R,
    Perms::W,
    Perms::RX,
    Perms::RWX,
    Perms {
        read: false,
        write: true,
        exec: true,
    },
    Perms {
        read: false,
        write: false,
        exec: true,
    },
];

/// Permissions the format can encode for a leaf of `size` at `level`.
fn perms_accepted<F: WriteFormat>(f: &F, level: u8, size: PageSize) -> Vec<Perms>
where
    F::Attrs: Default,
{
    ALL_PERMS
        .into_iter()
        .filter(|&p| {
            f.encode_leaf(level, PhysAddr(0), size, p, F::Attrs::default(), 0)
                .is_ok()
        })
        .collect()
}

/// Every page size the format places, with its level and entry count, smallest first.
pub fn placeable<F: WriteFormat>(f: &F) -> Vec<(u8, PageSize, u32)> {
    let mut out = Vec::new();
    for shift in 12..64 {
        let Some(size) = PageSize::from_shift(shift) else {
            continue;
        };
        if let Some((l, n)) = leaf_level(f, size) {
            out.push((l, size, n));
        }
    }
    out
}

fn usable_entries<F: WriteFormat>(f: &F, level: u8) -> u64 {
    let entries = f.table_bytes(level) / 8;
    if level == f.root_level() {
        let span_shift = f.entry_shift(level);
        let ia = f.ia_bits();
        if ia < 64 {
            return entries.min(1u64 << (ia - span_shift));
        }
    }
    entries
}

/// The last IOVA of the input range (`2^ia_bits - 1`).
fn ia_last<F: WriteFormat>(f: &F) -> u64 {
    u64::MAX >> (64 - f.ia_bits().min(64))
}

fn smallest<F: WriteFormat>(f: &F) -> (u8, PageSize, u32) {
    placeable(f)[0]
}

fn top_pa<F: WriteFormat>(f: &F, bytes: u64) -> u64 {
    let oa = f.oa_bits();
    let end = if oa >= 64 { u64::MAX } else { 1u64 << oa };
    (end - bytes) & !(bytes - 1)
}

/// The table-entry comb: one smallest page under every usable entry of every table on
/// the path to the top of the input range, so every table on that path is full.
fn comb<F: WriteFormat>(rig: &mut Rig<'_, F>, r: &mut BTreeMap<u64, Leaf>, perms: Perms)
where
    F::Attrs: Default,
{
    let f = rig.f;
    let (_, small, _) = smallest(f);
    let root = f.root_level();
    // The path: the last usable entry at every level.
    let mut base = 0u64;
    let mut level = root;
    while level >= 2 {
        let shift = f.entry_shift(level);
        let n = usable_entries(f, level);
        for i in 0..n {
            let iova = base + (i << shift);
            if r.contains_key(&iova) {
                continue;
            }
            let pa = top_pa(f, small.bytes()) - ((r.len() as u64 + 1) * 2 * small.bytes());
            rig.map(iova, pa, small.bytes(), small, perms)
                .unwrap_or_else(|e| panic!("{}: comb map at {iova:#x}: {e}", f.name()));
            r.insert(
                iova,
                Leaf {
                    pa,
                    size: small.bytes(),
                    perms,
                },
            );
        }
        base += (n - 1) << shift;
        level = f.next_level(level);
    }
}

/// A tree with every table on a path full of table entries, and for every level that
/// holds leaves a whole table of them, walks back exactly as mapped.
pub fn full_tree_reads_back<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let perms_small = perms_accepted(f, smallest(f).0, smallest(f).1);
    assert!(
        !perms_small.is_empty(),
        "{}: no permissions encodable",
        f.name()
    );
    let mut rig = Rig::new(f);
    let mut r = BTreeMap::new();
    comb(&mut rig, &mut r, perms_small[0]);
    assert_eq!(
        runs(&rig.walk(), false),
        reference_runs(&r, false),
        "{}: table-entry comb",
        f.name()
    );
    for (level, size, n) in placeable(f) {
        let perms = perms_accepted(f, level, size);
        let mut rig = Rig::new(f);
        let mut r = BTreeMap::new();
        // A whole table of leaves at `level` (its usable part at the root), at the top
        // of the input range, the output addresses at the top of the output range.
        let shift = f.entry_shift(level);
        let pages = usable_entries(f, level) / n as u64;
        let len = pages * size.bytes();
        let coverage = (f.table_bytes(level) / 8) << shift;
        let top = if f.ia_bits() >= 64 {
            u64::MAX
        } else {
            (1u64 << f.ia_bits()) - 1
        };
        let iova = if level == f.root_level() {
            0
        } else {
            (top & !(coverage - 1)) - coverage
        };
        let pa = top_pa(f, len.next_power_of_two()) & !(size.bytes() - 1);
        // Alternate the permissions page by page, so no run hides a wrong entry.
        for p in 0..pages {
            let pr = perms[(p as usize) % perms.len()];
            let (i, a) = (iova + p * size.bytes(), pa + p * size.bytes());
            rig.map(i, a, size.bytes(), size, pr).unwrap_or_else(|e| {
                panic!(
                    "{}: full level-{level} table, {size} page at {i:#x}: {e}",
                    f.name()
                )
            });
            r.insert(
                i,
                Leaf {
                    pa: a,
                    size: size.bytes(),
                    perms: pr,
                },
            );
        }
        assert_eq!(
            runs(&rig.walk(), false),
            reference_runs(&r, false),
            "{}: full level-{level} table of {size} pages",
            f.name()
        );
    }
}

/// Leaf, table and split entries decode to what was encoded, at output address 0 and
/// at the highest the format allows; the cleared value decodes as not present.
pub fn round_trip_at_zero_and_top<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    for (level, size, n) in placeable(f) {
        let span = 1u64 << f.entry_shift(level);
        let perms = perms_accepted(f, level, size);
        assert!(!perms.is_empty(), "{name}: no permissions for {size} pages");
        for pa in [0, top_pa(f, size.bytes())] {
            for &p in &perms {
                for slot in 0..n {
                    let raw = f
                        .encode_leaf(level, PhysAddr(pa), size, p, F::Attrs::default(), slot)
                        .unwrap();
                    let want = pa + slot as u64 * span;
                    match f.decode(level, raw) {
                        Ok(Entry::Leaf {
                            base,
                            size: s,
                            perms,
                        }) => {
                            let off = (slot as u64 * span) % s.bytes();
                            assert_eq!(
                                (base.0 + off, perms),
                                (want, p),
                                "{name}: level {level} {size} leaf slot {slot} raw {raw:#x}"
                            );
                        }
                        other => panic!("{name}: level {level} leaf {raw:#x} decodes as {other:?}"),
                    }
                    // A split child keeps the address and permissions.
                    if slot == 0 {
                        round_trip_split(f, level, raw, pa, p);
                    }
                }
            }
        }
    }
    for level in 2..=f.root_level() {
        let nl = f.next_level(level);
        let bytes = f.table_bytes(nl);
        for next in [0, top_pa(f, bytes)] {
            let raw = f.encode_table(level, PhysAddr(next), nl);
            match f.decode(level, raw) {
                Ok(Entry::Table {
                    next: n, level: l, ..
                }) => assert_eq!(
                    (n.0, l),
                    (next, nl),
                    "{name}: level {level} table entry {raw:#x}"
                ),
                other => panic!("{name}: level {level} table entry {raw:#x} decodes as {other:?}"),
            }
        }
    }
    for level in 1..=f.root_level() {
        assert_eq!(
            f.decode(level, f.cleared(level)),
            Ok(Entry::Invalid),
            "{name}: cleared entry at level {level}"
        );
    }
}

fn round_trip_split<F: WriteFormat>(f: &F, level: u8, raw: u64, pa: u64, p: Perms) {
    let name = f.name();
    let Some(first) = f.split_leaf(level, raw, 0) else {
        return;
    };
    let nl = f.next_level(level);
    let cshift = f.entry_shift(nl);
    let entries = f.table_bytes(nl) / 8;
    for j in [0, 1, entries - 1] {
        let child = if j == 0 {
            first
        } else {
            f.split_leaf(level, raw, j as usize).expect("split child")
        };
        match f.decode(nl, child) {
            Ok(Entry::Leaf { base, size, perms }) => {
                let want = pa + (j << cshift);
                let off = (j << cshift) % size.bytes();
                assert_eq!(
                    (base.0 + off, perms),
                    (want, p),
                    "{name}: child {j} of the level-{level} leaf {raw:#x}: {child:#x}"
                );
            }
            other => panic!("{name}: split child {child:#x} decodes as {other:?}"),
        }
    }
}

/// The levels tile the input width: each level's entry span is the level below's times
/// its entry count, the root holds the top input bit, the last page below
/// `2^ia_bits` maps and the first above is refused.
pub fn levels_cover_input_width<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    let root = f.root_level();
    let (l1, small, _) = smallest(f);
    assert_eq!(l1, 1, "{name}: the smallest page is not at level 1");
    assert_eq!(f.entry_shift(1), small.shift(), "{name}: level-1 span");
    let mut level = root;
    while level > 1 {
        let nl = f.next_level(level);
        let below = f.entry_shift(nl) + (f.table_bytes(nl) / 8).trailing_zeros();
        assert_eq!(
            f.entry_shift(level),
            below,
            "{name}: level {level} span is not the level-{nl} table's coverage"
        );
        level = nl;
    }
    let ia = f.ia_bits();
    let top_bits = f.entry_shift(root) + (f.table_bytes(root) / 8).trailing_zeros();
    assert!(
        f.entry_shift(root) < ia && ia <= top_bits,
        "{name}: input width {ia} outside the root level's bits {}..={top_bits}",
        f.entry_shift(root) + 1
    );
    let perms = perms_accepted(f, 1, small)[0];
    let mut rig = Rig::new(f);
    let last = ia_last(f) - (small.bytes() - 1);
    rig.map(last, 0, small.bytes(), small, perms)
        .unwrap_or_else(|e| panic!("{name}: last page below 2^{ia}: {e}"));
    // The first page at 2^ia_bits; for a 64-bit input range, a range running past it.
    let (above, len) = if ia < 64 {
        (1u64 << ia, small.bytes())
    } else {
        (last, 2 * small.bytes())
    };
    assert_eq!(
        rig.map(above, 0, len, small, perms),
        Err(MapErrorKind::BeyondInputWidth { ia_bits: ia }),
        "{name}: {len:#x} bytes at {above:#x}, beyond 2^{ia}"
    );
    let w = rig.walk();
    assert_eq!(
        runs(&w, false),
        vec![(last, 0, small.bytes(), perms, small.bytes())],
        "{name}"
    );
}

/// The last page of the input range (ending at `2^ia_bits`, 2^64 for a 64-bit range),
/// of the smallest and of the largest size the format places: it maps, walks back as
/// one run ending at the last IOVA, translates at its first and last byte, has its top
/// smallest page cut out by a split where the format splits it (refused otherwise),
/// unmaps with a `touched` span ending at the last IOVA, and leaves only the root; a
/// range running past the top is refused.
pub fn last_pages_of_input_range<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    let top = ia_last(f);
    let oa = f.oa_bits();
    let sizes: Vec<_> = placeable(f)
        .into_iter()
        .filter(|p| p.1.bytes() - 1 <= top && (oa >= 64 || p.1.shift() < oa))
        .collect();
    let (_, small, _) = sizes[0];
    let mut picks = vec![sizes[0]];
    if sizes.len() > 1 {
        picks.push(sizes[sizes.len() - 1]);
    }
    let xlate = |rig: &Rig<'_, F>, at: u64| {
        translate(f, &rig.mem, rig.root, Iova(at))
            .unwrap_or_else(|e| panic!("{name}: translate {at:#x}: {e}"))
            .outcome
    };
    for (level, size, _) in picks {
        let s = size.bytes();
        let iova = top - (s - 1);
        let pa = top_pa(f, s);
        let perms = perms_accepted(f, level, size)[0];
        let mut rig = Rig::new(f);
        rig.map(iova, pa, s, size, perms)
            .unwrap_or_else(|e| panic!("{name}: last {size} page at {iova:#x}: {e}"));
        assert_eq!(
            rig.map(iova, pa, 2 * s, size, perms),
            Err(MapErrorKind::BeyondInputWidth {
                ia_bits: f.ia_bits()
            }),
            "{name}: two {size} pages ending above the top"
        );
        let w = rig.walk();
        assert_eq!(
            runs(&w, false),
            vec![(iova, pa, s, perms, s)],
            "{name}: walk of the last {size} page"
        );
        assert_eq!(w[w.len() - 1].iova_last(), Iova(top), "{name}: run end");
        for (at, want) in [(iova, pa), (top, pa + (s - 1))] {
            match xlate(&rig, at) {
                Outcome::Mapped { pa, page_size, .. } if pa.0 == want && page_size == size => {}
                other => panic!("{name}: translate {at:#x} in the last {size} page: {other}"),
            }
        }
        // Cut the top smallest page out of it (a split, where the format can).
        let mut r = BTreeMap::from([(iova, Leaf { pa, size: s, perms })]);
        if s > small.bytes() {
            let cut = top - (small.bytes() - 1);
            let before = r.clone();
            let want = reference_unmap(f, &mut r, cut, top, true);
            match (want, rig.unmap(cut, small.bytes(), Partial::Split)) {
                (Some(bytes), Ok(u)) => {
                    assert_eq!(
                        u.bytes, bytes,
                        "{name}: bytes cut from the last {size} page"
                    );
                    assert!(touched_ok(&u, &before, cut, top), "{name}: {u:?}");
                    assert_eq!(touched(&u), Some((iova, top)), "{name}: split span");
                    assert!(
                        matches!(xlate(&rig, top), Outcome::NotPresent { .. }),
                        "{name}: the cut page still translates"
                    );
                    match xlate(&rig, cut - 1) {
                        Outcome::Mapped { pa: p, .. } if p.0 == pa + (s - small.bytes() - 1) => {}
                        other => panic!("{name}: below the cut page: {other}"),
                    }
                }
                (None, Err(MapErrorKind::PartialLeaf { .. })) => {}
                other => panic!("{name}: cutting the last {size} page: {other:?}"),
            }
            assert_eq!(
                runs(&rig.walk(), true),
                reference_runs(&r, true),
                "{name}: after cutting the last {size} page"
            );
        }
        let mapped: u64 = r.values().map(|l| l.size).sum();
        let u = rig
            .unmap(iova, s, Partial::Refuse)
            .unwrap_or_else(|e| panic!("{name}: unmap of the last {size} page: {e}"));
        assert_eq!(u.bytes, mapped, "{name}: bytes unmapped at the top");
        assert!(touched_ok(&u, &r, iova, top), "{name}: touched {u:?}");
        assert!(rig.walk().is_empty(), "{name}: mappings left at the top");
        assert_eq!(rig.tables.live(), BTreeSet::from([rig.root.0]), "{name}");
    }
}

/// Mapping everything of the table comb, then unmapping the whole input range, frees
/// every table but the root and reports every byte.
pub fn unmap_all_frees_all_but_root<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    let mut rig = Rig::new(f);
    let mut r = BTreeMap::new();
    let (l, small, _) = smallest(f);
    comb(&mut rig, &mut r, perms_accepted(f, l, small)[0]);
    let mapped: u64 = r.values().map(|l| l.size).sum();
    let tables = rig.tables.live().len();
    let u = rig.unmap_all().unwrap();
    assert_eq!(u.bytes, mapped, "{name}: bytes unmapped");
    assert_eq!(u.freed.len(), tables - 1, "{name}: tables freed");
    assert!(
        u.freed.iter().all(|t| t.addr != rig.root),
        "{name}: root freed"
    );
    assert_eq!(rig.tables.live(), BTreeSet::from([rig.root.0]), "{name}");
    assert!(rig.walk().is_empty(), "{name}: mappings left");
}

/// A leaf at or above the output width is refused with a typed error and nothing
/// changes; the highest page below it maps.
pub fn refuses_above_output_width<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    let oa = f.oa_bits();
    if oa >= 64 {
        return;
    }
    for (level, size, _) in placeable(f) {
        let perms = perms_accepted(f, level, size)[0];
        let mut rig = Rig::new(f);
        let at = 0;
        let room = f.ia_bits() >= 64 || 2 * size.bytes() <= 1u64 << f.ia_bits();
        assert_eq!(
            rig.map(at, 1u64 << oa, size.bytes(), size, perms),
            Err(MapErrorKind::BeyondOutputWidth { oa_bits: oa }),
            "{name}: {size} page at 2^{oa}"
        );
        // Straddling the top.
        if room && size.bytes() < 1u64 << oa {
            assert_eq!(
                rig.map(
                    at,
                    (1u64 << oa) - size.bytes(),
                    2 * size.bytes(),
                    size,
                    perms
                ),
                Err(MapErrorKind::BeyondOutputWidth { oa_bits: oa }),
                "{name}: {size} pages across 2^{oa}"
            );
        }
        assert!(rig.walk().is_empty(), "{name}: refused map left mappings");
        rig.map(at, top_pa(f, size.bytes()), size.bytes(), size, perms)
            .unwrap_or_else(|e| panic!("{name}: highest {size} page: {e}"));
    }
}

/// A large page whose output address, IOVA or length is not aligned to its size is
/// refused with a typed error and nothing changes.
pub fn refuses_misaligned_large_page<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    let (_, small, _) = smallest(f);
    for (level, size, _) in placeable(f).into_iter().filter(|p| p.1 != small) {
        let perms = perms_accepted(f, level, size)[0];
        let mut rig = Rig::new(f);
        let s = size.bytes();
        for (iova, pa, len) in [
            (s, s / 2, s),
            (s, small.bytes(), s),
            (s + small.bytes(), 0, s),
            (s, 0, s + small.bytes()),
            (s, 0, 0),
        ] {
            match rig.map(iova, pa, len, size, perms) {
                Err(MapErrorKind::Misaligned { .. }) => {}
                other => {
                    panic!("{name}: {size} page iova {iova:#x} pa {pa:#x} len {len:#x}: {other:?}")
                }
            }
        }
        assert!(rig.walk().is_empty(), "{name}: refused map left mappings");
    }
}

/// Unmapping part of a large page: refused with [`MapErrorKind::PartialLeaf`] and
/// nothing changed without splitting; with splitting (where the format can) the rest of
/// the page stays mapped to the same addresses and the report names the new table.
pub fn partial_unmap_splits_or_refuses<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    let name = f.name();
    for (level, size, n) in placeable(f).into_iter().filter(|p| p.0 > 1) {
        let perms = perms_accepted(f, level, size)[0];
        let mut rig = Rig::new(f);
        let s = size.bytes();
        let pa = top_pa(f, s);
        rig.map(s, pa, s, size, perms).unwrap();
        let before = rig.walk();
        let (_, small, _) = smallest(f);
        let hole = (s + s / 2, small.bytes());
        match rig.unmap(hole.0, hole.1, Partial::Refuse) {
            Err(MapErrorKind::PartialLeaf { .. }) => {}
            other => panic!("{name}: partial unmap of a {size} page: {other:?}"),
        }
        assert_eq!(rig.walk(), before, "{name}: refused unmap changed the tree");
        let splittable = n == 1
            && f.split_leaf(level, map_raw(f, level, pa, size, perms), 0)
                .is_some();
        match rig.unmap(hole.0, hole.1, Partial::Split) {
            Ok(u) if splittable => {
                assert_eq!(u.bytes, hole.1, "{name}: bytes unmapped");
                assert!(
                    !u.split.is_empty() && !u.leaves_only(),
                    "{name}: split not reported"
                );
                assert_eq!(
                    touched(&u),
                    Some((s, 2 * s - 1)),
                    "{name}: a split touches the whole large page"
                );
                let got = runs(&rig.walk(), true);
                let want = vec![
                    (s, pa, hole.0 - s, perms, 0),
                    (
                        hole.0 + hole.1,
                        pa + (hole.0 + hole.1 - s),
                        2 * s - hole.0 - hole.1,
                        perms,
                        0,
                    ),
                ];
                assert_eq!(got, want, "{name}: the rest of the {size} page");
            }
            Err(MapErrorKind::PartialLeaf { .. }) if !splittable => {
                assert_eq!(rig.walk(), before, "{name}: refused split changed the tree");
            }
            other => panic!("{name}: split of a {size} page: {other:?}"),
        }
    }
}

fn map_raw<F: WriteFormat>(f: &F, level: u8, pa: u64, size: PageSize, perms: Perms) -> u64
where
    F::Attrs: Default,
{
    f.encode_leaf(level, PhysAddr(pa), size, perms, F::Attrs::default(), 0)
        .unwrap()
}

/// One step of a random sequence.
#[derive(Clone, Debug)]
pub enum Op {
    /// Map `count` pages of the `size`-th placeable size at page `slot` of `region`.
    Map {
        /// Region (0: bottom of the input range, 1: top).
        region: u8,
        /// Index into the placeable sizes.
        size: usize,
        /// Page index in the region.
        slot: u64,
        /// Pages.
        count: u64,
        /// Index into the accepted permissions.
        perms: usize,
    },
    /// Unmap `count` smallest pages from smallest-page `slot` (scaled by `scale`
    /// placeable sizes), splitting or not.
    Unmap {
        /// Region.
        region: u8,
        /// Index into the placeable sizes of the unit.
        scale: usize,
        /// First unit.
        slot: u64,
        /// Units.
        count: u64,
        /// Split leaves the range cuts.
        split: bool,
    },
}

fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    let map = (0u8..2, 0usize..8, 0u64..24, 1u64..4, 0usize..8).prop_map(
        |(region, size, slot, count, perms)| Op::Map {
            region,
            size,
            slot,
            count,
            perms,
        },
    );
    let unmap = (0u8..2, 0usize..8, 0u64..24, 1u64..6, any::<bool>()).prop_map(
        |(region, scale, slot, count, split)| Op::Unmap {
            region,
            scale,
            slot,
            count,
            split,
        },
    );
    proptest::collection::vec(prop_oneof![map, unmap], 1..24)
}

/// The reference unmap: removes `[s, last]` (inclusive, so it may end at 2^64) from
/// `r`; a leaf cut by the range is split as the format splits it (or the whole call
/// refused). Returns the bytes removed, or `None` if the range cuts a leaf that may not
/// be split.
fn reference_unmap<F: WriteFormat>(
    f: &F,
    r: &mut BTreeMap<u64, Leaf>,
    s: u64,
    last: u64,
    split: bool,
) -> Option<u64> {
    let mut out = r.clone();
    let mut removed = 0;
    let hit: Vec<(u64, Leaf)> = hit(r, s, last).map(|(&i, l)| (i, *l)).collect();
    let mut work = hit;
    while let Some((i, l)) = work.pop() {
        out.remove(&i);
        if i >= s && i + (l.size - 1) <= last {
            removed += l.size;
            continue;
        }
        let size = PageSize::new(l.size)?;
        let (level, n) = leaf_level(f, size)?;
        if !split || n != 1 || level < 2 {
            return None;
        }
        let nl = f.next_level(level);
        let cs = 1u64 << f.entry_shift(nl);
        let csize = PageSize::new(cs)?;
        if f.leaf_entries(nl, csize) != Some(1) {
            return None;
        }
        for k in 0..l.size / cs {
            let ci = i + k * cs;
            let c = Leaf {
                pa: l.pa + k * cs,
                size: cs,
                perms: l.perms,
            };
            if ci + (cs - 1) < s || ci > last {
                out.insert(ci, c);
            } else {
                work.push((ci, c));
            }
        }
    }
    *r = out;
    Some(removed)
}

/// The leaves of `r` that overlap `[s, last]` (inclusive).
fn hit(r: &BTreeMap<u64, Leaf>, s: u64, last: u64) -> impl Iterator<Item = (&u64, &Leaf)> {
    r.range(..=last)
        .filter(move |(&i, l)| i + (l.size - 1) >= s)
}

/// An unmap's `touched` span as inclusive `(first, last)`.
fn touched(u: &Unmapped) -> Option<(u64, u64)> {
    u.touched.map(|t| (t.first.0, t.last.0))
}

/// Whether an unmap's `touched` span is exactly the requested range's (`[s, last]`)
/// cover by the leaves of the reference `r` before the unmap (cleared or split), `None`
/// if none.
fn touched_ok(u: &Unmapped, r: &BTreeMap<u64, Leaf>, s: u64, last: u64) -> bool {
    // Leaves cleared whole lie inside the range; a cut leaf is touched as a whole (its
    // entry is replaced): either way the leaf's own span counts.
    let span = hit(r, s, last).fold(None, |acc: Option<(u64, u64)>, (&i, l)| {
        let (a, b) = (i, i + (l.size - 1));
        Some(acc.map_or((a, b), |(x, y)| (x.min(a), y.max(b))))
    });
    touched(u) == span
}

/// Random map/unmap sequences (proptest) against a reference map of leaves: after
/// every step the walk equals the reference, the reported bytes match, failed calls
/// change nothing, and the live tables are exactly those the walker reaches; at the end
/// unmapping everything leaves only the root.
pub fn random_map_unmap_matches_reference<F: WriteFormat>(f: &F)
where
    F::Attrs: Default,
{
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let name = f.name();
    let sizes = placeable(f);
    let (_, small, _) = smallest(f);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let ia = f.ia_bits();
    // Two regions: the bottom of the input range and the top, each as large as four of
    // the largest pages (clipped to the input range).
    let largest = sizes.iter().map(|p| p.1.bytes()).max().unwrap();
    let region_len = (largest * 4).min(if ia >= 64 { 1 << 63 } else { 1u64 << (ia - 1) });
    // The top region ends at the very top of the input range, 2^64 included.
    let top = ia_last(f) - (region_len - 1);
    let result = runner.run(&ops(), |ops| {
        let mut rig = Rig::new(f);
        let mut r: BTreeMap<u64, Leaf> = BTreeMap::new();
        let mut log = String::new();
        for op in ops {
            log.push_str(&format!("{op:?}\n"));
            match op {
                Op::Map {
                    region,
                    size,
                    slot,
                    count,
                    perms,
                } => {
                    let (level, size, _) = sizes[size % sizes.len()];
                    let s = size.bytes();
                    let base = if region == 0 { 0 } else { top };
                    let slots = region_len / s;
                    let slot = slot % slots;
                    let count = count.min(slots - slot);
                    let iova = base + slot * s;
                    let len = count * s;
                    let pa = top_pa(f, region_len * 4) + (iova % (region_len * 2));
                    let pr = perms_accepted(f, level, size);
                    let pr = pr[perms % pr.len()];
                    let free = hit(&r, iova, iova + (len - 1)).next().is_none();
                    let got = rig.map(iova, pa, len, size, pr);
                    match (free, got) {
                        (true, Ok(())) => {
                            for k in 0..count {
                                r.insert(
                                    iova + k * s,
                                    Leaf {
                                        pa: pa + k * s,
                                        size: s,
                                        perms: pr,
                                    },
                                );
                            }
                        }
                        (false, Err(MapErrorKind::AlreadyMapped { .. })) => {}
                        (_, got) => {
                            return Err(TestCaseError::fail(format!(
                                "{name}: map {iova:#x}+{len:#x} free={free}: {got:?}\n{log}"
                            )))
                        }
                    }
                }
                Op::Unmap {
                    region,
                    scale,
                    slot,
                    count,
                    split,
                } => {
                    let unit = sizes[scale % sizes.len()].1.bytes().max(small.bytes());
                    // Unmap in units of a smaller page, offset by half a unit to cut
                    // larger leaves.
                    let base = if region == 0 { 0 } else { top };
                    let slots = region_len / unit;
                    let slot = slot % slots;
                    let count = count.min(slots - slot);
                    let off = if unit > small.bytes() && slot % 2 == 1 {
                        unit / 2
                    } else {
                        0
                    };
                    let iova = base + slot * unit + off;
                    let len = (count * unit).min(region_len - (iova - base));
                    let partial = if split { Partial::Split } else { Partial::Refuse };
                    let mut want_r = r.clone();
                    let last = iova + (len - 1);
                    let want = reference_unmap(f, &mut want_r, iova, last, split);
                    let got = rig.unmap(iova, len, partial);
                    match (want, got) {
                        (Some(bytes), Ok(u))
                            if u.bytes == bytes && touched_ok(&u, &r, iova, last) =>
                        {
                            r = want_r
                        }
                        (None, Err(MapErrorKind::PartialLeaf { .. })) => {}
                        (want, got) => {
                            return Err(TestCaseError::fail(format!(
                                "{name}: unmap {iova:#x}+{len:#x} split={split}: want {want:?}, got {got:?}\n{log}"
                            )))
                        }
                    }
                }
            }
            let w = rig.walk();
            if runs(&w, true) != reference_runs(&r, true) {
                return Err(TestCaseError::fail(format!(
                    "{name}: tree differs from the reference\n walk {:x?}\n ref  {:x?}\n{log}",
                    runs(&w, true),
                    reference_runs(&r, true)
                )));
            }
        }
        rig.unmap_all()
            .map_err(|e| TestCaseError::fail(format!("{name}: final unmap: {e}\n{log}")))?;
        if rig.tables.live() != BTreeSet::from([rig.root.0]) {
            return Err(TestCaseError::fail(format!(
                "{name}: tables left after unmapping everything\n{log}"
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Instantiates every conformance check for one format as tests in a module `$name`
/// (`$make` builds the format; it must implement [`WriteFormat`] with
/// `Attrs: Default`). Needs the `conformance` feature of `iommu-core`.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $make:expr) => {
        #[allow(non_snake_case)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn full_tree_reads_back() {
                $crate::conformance::full_tree_reads_back(&$make)
            }
            #[test]
            fn round_trip_at_zero_and_top() {
                $crate::conformance::round_trip_at_zero_and_top(&$make)
            }
            #[test]
            fn levels_cover_input_width() {
                $crate::conformance::levels_cover_input_width(&$make)
            }
            #[test]
            fn random_map_unmap_matches_reference() {
                $crate::conformance::random_map_unmap_matches_reference(&$make)
            }
            #[test]
            fn unmap_all_frees_all_but_root() {
                $crate::conformance::unmap_all_frees_all_but_root(&$make)
            }
            #[test]
            fn refuses_above_output_width() {
                $crate::conformance::refuses_above_output_width(&$make)
            }
            #[test]
            fn refuses_misaligned_large_page() {
                $crate::conformance::refuses_misaligned_large_page(&$make)
            }
            #[test]
            fn last_pages_of_input_range() {
                $crate::conformance::last_pages_of_input_range(&$make)
            }
            #[test]
            fn partial_unmap_splits_or_refuses() {
                $crate::conformance::partial_unmap_splits_or_refuses(&$make)
            }
        }
    };
}
