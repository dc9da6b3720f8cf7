//! Property tests of the generic page-table walker.
//!
//! Random table trees are built in a sparse memory from a seeded generator; the walk
//! (and `translate`) is compared against a brute-force reference: a map of 4 KiB pages,
//! IOVA -> (PA, permissions, page size), filled page by page from the generated leaves
//! and then coalesced. Malformed trees (random words, pointers to unbacked memory,
//! cycles, aliases, tiny budgets) must give `Ok` or a typed error, never a panic, and
//! never read more tables than the budget allows.

use iommu_core::addr::{Iova, PageSize, PhysAddr};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::{
    translate, walk, walk_with, Budget, Entry, EntryError, Format, Mapping, Outcome, Perms,
    WalkErrorKind, WalkLimits, WalkMode,
};
use proptest::prelude::*;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

/// Test format: 512 entries of 8 bytes per 4 KiB table, entry span 2^(12 + 9 (level-1)).
///
/// Entry: bit 63 present, 62 read, 61 write, 60 exec, 59 leaf, 58:56 next level (table
/// entries; any value is passed to the walker, which must reject the bad ones), 55:52
/// log2(page size / entry span) (leaves, replicated pages), 51:0 address. Leaves are
/// allowed at levels 1 and 2 only.
#[derive(Clone, Copy, Debug)]
struct TestFormat {
    levels: u8,
}

const P: u64 = 1 << 63;
const R: u64 = 1 << 62;
const W: u64 = 1 << 61;
const X: u64 = 1 << 60;
const LEAF: u64 = 1 << 59;
const ADDR: u64 = (1 << 52) - 1;

fn shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

impl Format for TestFormat {
    fn name(&self) -> &'static str {
        "walker-proptest"
    }
    fn root_level(&self) -> u8 {
        self.levels
    }
    fn table_bytes(&self, _level: u8) -> u64 {
        4096
    }
    fn entry_shift(&self, level: u8) -> u32 {
        12 + 9 * (level.max(1) as u32 - 1)
    }
    fn ia_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        if raw & P == 0 {
            return Ok(Entry::Invalid);
        }
        let perms = perms_of(raw);
        let addr = PhysAddr(raw & ADDR);
        let k = ((raw >> 52) & 0xf) as u32;
        if raw & LEAF != 0 {
            if level > 2 {
                return Err(EntryError {
                    reason: "leaf above level 2",
                });
            }
            let size = PageSize::from_shift(self.entry_shift(level) + k).ok_or(EntryError {
                reason: "page size out of range",
            })?;
            Ok(Entry::Leaf {
                base: addr,
                size,
                perms,
            })
        } else if k != 0 {
            Err(EntryError {
                reason: "size bits set in a table entry",
            })
        } else {
            Ok(Entry::Table {
                next: addr,
                level: ((raw >> 56) & 7) as u8,
                perms,
            })
        }
    }
}

fn perms_of(raw: u64) -> Perms {
    Perms {
        read: raw & R != 0,
        write: raw & W != 0,
        exec: raw & X != 0,
    }
}

fn perm_bits(p: Perms) -> u64 {
    (if p.read { R } else { 0 }) | (if p.write { W } else { 0 }) | (if p.exec { X } else { 0 })
}

/// Sparse page-granular memory counting `read` calls.
#[derive(Default)]
struct Mem {
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
    reads: Cell<u64>,
}

impl PhysMem for Mem {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.0.checked_add(done as u64).ok_or(MemError::Overflow {
                addr,
                len: buf.len() as u64,
            })?;
            let page = self
                .pages
                .get(&(a >> 12))
                .ok_or(MemError::Unbacked { addr: PhysAddr(a) })?;
            let off = (a & 0xfff) as usize;
            let n = (4096 - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&page[off..off + n]);
            done += n;
        }
        Ok(())
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        for (i, b) in data.iter().enumerate() {
            let a = addr.0 + i as u64;
            self.pages
                .entry(a >> 12)
                .or_insert_with(|| Box::new([0; 4096]))[(a & 0xfff) as usize] = *b;
        }
        Ok(())
    }
}

/// SplitMix64: the generator's source of decisions, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn perms(&mut self) -> Perms {
        let b = self.next();
        Perms {
            read: b & 1 != 0 || b & 8 != 0,
            write: b & 2 != 0,
            exec: b & 4 != 0,
        }
    }
}

const TABLE_BASE: u64 = 0x1000_0000;
const PA_BASE: u64 = 0x10_0000_0000;
const UNBACKED: u64 = 0x7000_0000;

/// Page reference value: (pa, perms, page size).
type RefPage = (u64, Perms, u64);

#[derive(Clone, Debug)]
struct TableInfo {
    addr: u64,
    level: u8,
    ancestors: Vec<u64>,
}

/// A generated well-formed tree and its brute-force reference.
struct Tree {
    fmt: TestFormat,
    mem: Mem,
    root: PhysAddr,
    tables: Vec<TableInfo>,
    /// IOVA page -> what it maps to, filled 4 KiB page by 4 KiB page.
    reference: BTreeMap<u64, RefPage>,
    leaves: u64,
}

struct Gen {
    rng: Rng,
    skip: bool,
    next_table: u64,
    pa: u64,
    tree: Tree,
}

impl Gen {
    fn build(seed: u64, skip: bool) -> Tree {
        let fmt = TestFormat {
            levels: if skip { 4 } else { 3 },
        };
        let mut g = Gen {
            rng: Rng(seed),
            skip,
            next_table: TABLE_BASE,
            pa: PA_BASE,
            tree: Tree {
                fmt,
                mem: Mem::default(),
                root: PhysAddr(TABLE_BASE),
                tables: Vec::new(),
                reference: BTreeMap::new(),
                leaves: 0,
            },
        };
        g.table(fmt.levels, 0, Perms::RWX, &mut Vec::new());
        g.tree
    }

    /// Generates the table at `level` covering IOVAs from `base`; returns its address.
    fn table(&mut self, level: u8, base: u64, above: Perms, ancestors: &mut Vec<u64>) -> u64 {
        let addr = self.next_table;
        self.next_table += 4096;
        self.tree.tables.push(TableInfo {
            addr,
            level,
            ancestors: ancestors.clone(),
        });
        let mut entries = vec![0u64; 512];
        ancestors.push(addr);
        match level {
            1 => {
                for _ in 0..1 + self.rng.below(3) {
                    // Ranges often touch either end so runs cross table boundaries.
                    let start = match self.rng.below(3) {
                        0 => 0,
                        1 => 512 - 1 - self.rng.below(24),
                        _ => self.rng.below(512),
                    } as usize;
                    let len = 1 + self.rng.below(40) as usize;
                    let mut i = start;
                    while i < (start + len).min(512) {
                        i += self.leaves_at(&mut entries, 1, base, i, above);
                    }
                }
            }
            2 => {
                let start = self.rng.below(512) as usize;
                for i in start..(start + 1 + self.rng.below(4) as usize).min(512) {
                    if entries[i] != 0 {
                        continue;
                    }
                    if self.rng.chance(30) {
                        self.leaves_at(&mut entries, 2, base, i, above);
                    } else {
                        let p = self.rng.perms();
                        let slot = base + ((i as u64) << shift(2));
                        let child = self.table(1, slot, above.intersect(p), ancestors);
                        entries[i] = P | perm_bits(p) | 1 << 56 | child;
                    }
                }
            }
            _ => {
                for _ in 0..1 + self.rng.below(3) {
                    let lim = if self.rng.chance(50) { 4 } else { 512 };
                    let i = self.rng.below(lim) as usize;
                    if entries[i] != 0 {
                        continue;
                    }
                    let next = if self.skip {
                        1 + self.rng.below(level as u64 - 1) as u8
                    } else {
                        level - 1
                    };
                    let p = if self.rng.chance(70) {
                        Perms::RWX
                    } else {
                        self.rng.perms()
                    };
                    let slot = base + ((i as u64) << shift(level));
                    let child = self.table(next, slot, above.intersect(p), ancestors);
                    entries[i] = P | perm_bits(p) | (next as u64) << 56 | child;
                }
            }
        }
        ancestors.pop();
        for (i, e) in entries.iter().enumerate() {
            self.tree
                .mem
                .write_u64(PhysAddr(addr + i as u64 * 8), *e)
                .unwrap();
        }
        addr
    }

    /// Writes a leaf (or a group of replicated leaves) at `entries[i]`; returns how many
    /// entries it used. Records every 4 KiB page in the reference.
    fn leaves_at(
        &mut self,
        entries: &mut [u64],
        level: u8,
        base: u64,
        i: usize,
        above: Perms,
    ) -> usize {
        let span_shift = shift(level);
        // Replicated pages (size above the entry span) in the level-skipping variant.
        let k = if self.skip && self.rng.chance(30) {
            1 + self.rng.below(if level == 1 { 3 } else { 1 }) as u32
        } else {
            0
        };
        let size = 1u64 << (span_shift + k);
        if self.rng.chance(15) {
            self.pa += (1 + self.rng.below(4)) << 12;
        }
        let out = (self.pa + size - 1) & !(size - 1);
        let perms = if self.rng.chance(80) {
            Perms::RW
        } else {
            self.rng.perms()
        };
        let raw = P | LEAF | perm_bits(perms) | (k as u64) << 52 | out;
        // A group covers the aligned block of 2^k entries holding i; some replicas may
        // be left out (the walker must still map the ones present).
        let group = 1usize << k;
        let first = i & !(group - 1);
        let mut used = 0;
        for j in first..(first + group).min(entries.len()) {
            if j < i || entries[j] != 0 || (k > 0 && self.rng.chance(10)) {
                continue;
            }
            entries[j] = raw;
            self.tree.leaves += 1;
            let slot = base + ((j as u64) << span_shift);
            let eff = above.intersect(perms);
            for page in 0..(1u64 << (span_shift - 12)) {
                let iova = slot + (page << 12);
                let pa = out + (iova & (size - 1));
                self.tree.reference.insert(iova, (pa, eff, size));
            }
            used = j + 1 - i;
        }
        self.pa = out + size;
        used.max(1)
    }
}

/// Coalesces the reference page map into runs by the walker's documented rule.
fn reference_runs(reference: &BTreeMap<u64, RefPage>) -> Vec<Mapping> {
    let mut runs: Vec<Mapping> = Vec::new();
    for (&iova, &(pa, perms, page)) in reference {
        if let Some(r) = runs.last_mut() {
            if r.iova.0 + r.size == iova
                && r.pa.0 + r.size == pa
                && r.perms == perms
                && r.page_size.bytes() == page
            {
                r.size += 4096;
                continue;
            }
        }
        runs.push(Mapping {
            iova: Iova(iova),
            pa: PhysAddr(pa),
            size: 4096,
            perms,
            page_size: PageSize::new(page).unwrap(),
        });
    }
    runs
}

fn check_well_formed(tree: &Tree, probe_seed: u64) -> Result<(), TestCaseError> {
    let w = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits::default())
        .map_err(|e| TestCaseError::fail(format!("walk failed: {e}")))?;
    prop_assert_eq!(&w.mappings, &reference_runs(&tree.reference));
    prop_assert_eq!(w.leaves, tree.leaves);
    prop_assert!(w.problems.is_empty());
    // Every table exactly once, each read with one call.
    let got: BTreeSet<(u64, u8)> = w.tables.iter().map(|t| (t.addr.0, t.level)).collect();
    let want: BTreeSet<(u64, u8)> = tree.tables.iter().map(|t| (t.addr, t.level)).collect();
    prop_assert_eq!(got, want);
    prop_assert_eq!(w.tables.len(), tree.tables.len());
    prop_assert_eq!(tree.mem.reads.get(), tree.tables.len() as u64);
    prop_assert_eq!(w.tables[0].addr, tree.root);

    // Lenient agrees on a good tree; walk_with streams the same runs.
    let l = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits::lenient()).unwrap();
    prop_assert_eq!(&l, &w);
    let mut streamed = Vec::new();
    let s = walk_with(
        &tree.fmt,
        &tree.mem,
        tree.root,
        &WalkLimits::default(),
        |m| streamed.push(*m),
    )
    .unwrap();
    prop_assert_eq!(&streamed, &w.mappings);
    prop_assert_eq!(s.runs, w.mappings.len() as u64);

    // translate agrees with the reference on mapped pages and on random IOVAs.
    let mut rng = Rng(probe_seed);
    let pages: Vec<&u64> = tree.reference.keys().collect();
    let ia = 1u64 << tree.fmt.ia_bits();
    for n in 0..48 {
        let iova = if n % 2 == 0 && !pages.is_empty() {
            pages[rng.below(pages.len() as u64) as usize] + rng.below(4096)
        } else if n % 4 == 1 {
            rng.below(ia)
        } else {
            // Near a mapped page, often just outside it.
            pages
                .get(rng.below(pages.len().max(1) as u64) as usize)
                .map_or(0, |p| {
                    p.wrapping_add(rng.below(1 << 22)).wrapping_sub(1 << 21)
                })
                % ia
        };
        let t = translate(&tree.fmt, &tree.mem, tree.root, Iova(iova))
            .map_err(|e| TestCaseError::fail(format!("translate {iova:#x}: {e}")))?;
        match tree.reference.get(&(iova & !0xfff)) {
            Some(&(pa, perms, page)) => prop_assert_eq!(
                t.outcome,
                Outcome::Mapped {
                    pa: PhysAddr(pa + (iova & 0xfff)),
                    perms,
                    page_size: PageSize::new(page).unwrap()
                },
                "iova {:#x}",
                iova
            ),
            None => prop_assert!(
                matches!(
                    t.outcome,
                    Outcome::NotPresent { .. } | Outcome::SkippedBitsSet { .. }
                ),
                "iova {:#x}: {:?}",
                iova,
                t.outcome
            ),
        }
        prop_assert_eq!(
            t.pa(),
            w.lookup(Iova(iova)).map(|(pa, _)| pa),
            "iova {:#x}",
            iova
        );
        prop_assert!(!t.steps.is_empty() && t.steps.len() <= tree.fmt.levels as usize);
    }
    Ok(())
}

/// Invariants any successful walk result must satisfy.
fn check_shape(w: &iommu_core::pgtable::Walk, limits: &WalkLimits) -> Result<(), TestCaseError> {
    prop_assert!(w.tables.len() <= limits.max_tables);
    // Table byte ranges are pairwise disjoint.
    let mut ranges: Vec<(u64, u64)> = w
        .tables
        .iter()
        .map(|t| (t.addr.0, t.addr.0 + t.bytes))
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        prop_assert!(pair[0].1 <= pair[1].0, "overlapping tables {:x?}", pair);
    }
    // Runs ascend in IOVA, do not overlap, and could not have been merged.
    for pair in w.mappings.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        prop_assert!(
            a.iova.0 + a.size <= b.iova.0,
            "runs out of order {} {}",
            a,
            b
        );
        let mergeable = a.iova.0 + a.size == b.iova.0
            && a.pa.0.checked_add(a.size) == Some(b.pa.0)
            && a.perms == b.perms
            && a.page_size == b.page_size;
        prop_assert!(!mergeable, "runs not coalesced {} {}", a, b);
    }
    for m in &w.mappings {
        prop_assert!(m.size > 0 && m.size % 4096 == 0);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Corruption {
    /// A fully random word at a random entry.
    Random,
    /// A present entry with random level and kind pointing near existing tables or
    /// into unbacked memory.
    Biased,
    /// A pointer from a table to one of its ancestors (or itself).
    Cycle,
    /// A pointer from a table to another, already reachable table.
    Alias,
    /// A pointer into unbacked memory.
    Unbacked,
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        Just(Corruption::Random),
        Just(Corruption::Biased),
        Just(Corruption::Cycle),
        Just(Corruption::Alias),
        Just(Corruption::Unbacked),
    ]
}

/// Applies `c` to the tree at an entry that is currently empty; returns (table, index,
/// raw) written, or None if no suitable spot was found.
fn corrupt(tree: &mut Tree, c: Corruption, rng: &mut Rng) -> Option<(u64, usize, u64)> {
    let n = tree.tables.len() as u64;
    let t = tree.tables[rng.below(n) as usize].clone();
    let index = (0..16)
        .map(|_| rng.below(512) as usize)
        .find(|&i| tree.mem.read_u64(PhysAddr(t.addr + i as u64 * 8)).unwrap() == 0)?;
    let raw = match c {
        Corruption::Random => rng.next(),
        Corruption::Biased => {
            let target = match rng.below(4) {
                0 => tree.tables[rng.below(n) as usize].addr,
                1 => tree.tables[rng.below(n) as usize].addr + 8 * rng.below(4),
                2 => UNBACKED + (rng.below(16) << 12),
                _ => rng.next() & ADDR,
            };
            P | (rng.next() & (R | W | X | LEAF)) | rng.below(8) << 56 | target
        }
        Corruption::Cycle => {
            if t.level < 2 {
                return None;
            }
            let mut cands = t.ancestors.clone();
            cands.push(t.addr);
            let a = cands[rng.below(cands.len() as u64) as usize];
            P | R | W | ((t.level - 1) as u64) << 56 | a
        }
        Corruption::Alias => {
            let lower: Vec<&TableInfo> = tree.tables.iter().filter(|u| u.level < t.level).collect();
            if lower.is_empty() {
                return None;
            }
            let u = lower[rng.below(lower.len() as u64) as usize];
            P | R | W | (u.level as u64) << 56 | u.addr
        }
        Corruption::Unbacked => {
            if t.level < 2 {
                return None;
            }
            P | R | ((t.level - 1) as u64) << 56 | (UNBACKED + (rng.below(64) << 12))
        }
    };
    tree.mem
        .write_u64(PhysAddr(t.addr + index as u64 * 8), raw)
        .unwrap();
    Some((t.addr, index, raw))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Three levels of 512 entries, leaves at levels 1 and 2.
    #[test]
    fn walk_matches_reference(seed in any::<u64>(), probe in any::<u64>()) {
        let tree = Gen::build(seed, false);
        check_well_formed(&tree, probe)?;
    }

    /// Four levels with level-skipping table entries and replicated large pages.
    #[test]
    fn walk_matches_reference_level_skipping(seed in any::<u64>(), probe in any::<u64>()) {
        let tree = Gen::build(seed, true);
        check_well_formed(&tree, probe)?;
    }

    /// Malformed trees: Ok or a typed error, never a panic; bounded reads; strict and
    /// lenient agree on the first problem.
    #[test]
    fn malformed_trees_are_bounded_and_typed(
        seed in any::<u64>(),
        skip in any::<bool>(),
        cs in proptest::collection::vec(corruption(), 1..6),
        max_tables in 1usize..64,
    ) {
        let mut tree = Gen::build(seed, skip);
        let mut rng = Rng(seed ^ 0x5eed);
        for c in cs {
            corrupt(&mut tree, c, &mut rng);
        }
        for limits in [
            WalkLimits::default(),
            WalkLimits { max_tables, ..WalkLimits::default() },
        ] {
            tree.mem.reads.set(0);
            let strict = walk(&tree.fmt, &tree.mem, tree.root, &limits);
            prop_assert!(tree.mem.reads.get() <= limits.max_tables as u64);
            let lenient_limits = WalkLimits { mode: WalkMode::Lenient, ..limits };
            tree.mem.reads.set(0);
            let lenient = walk(&tree.fmt, &tree.mem, tree.root, &lenient_limits);
            prop_assert!(tree.mem.reads.get() <= limits.max_tables as u64);
            let lenient = lenient.map_err(|e| TestCaseError::fail(format!("lenient: {e}")))?;
            check_shape(&lenient, &limits)?;
            match strict {
                Ok(w) => {
                    check_shape(&w, &limits)?;
                    prop_assert!(lenient.problems.is_empty());
                    prop_assert_eq!(&w, &lenient);
                }
                Err(e) => {
                    prop_assert_eq!(lenient.problems.first(), Some(&e));
                    // The error names a table the walk read, or the root.
                    prop_assert!(
                        e.is_root() || lenient.tables.iter().any(|t| t.addr == e.table),
                        "{}", e
                    );
                    let text = e.to_string();
                    let table = e.table.to_string();
                    prop_assert!(text.contains(&table), "{}", text);
                }
            }
            // Every recorded problem is at an entry of a table the walk read.
            for p in &lenient.problems {
                prop_assert!(lenient.tables.iter().any(|t| t.addr == p.table && t.level == p.level));
            }
        }
        // translate never panics either.
        for _ in 0..16 {
            let iova = rng.below(1 << tree.fmt.ia_bits());
            let _ = translate(&tree.fmt, &tree.mem, tree.root, Iova(iova));
        }
    }

    /// A single pointer to an ancestor is reported as a cycle at that exact entry.
    #[test]
    fn cycle_is_reported_at_the_entry(seed in any::<u64>(), skip in any::<bool>(), pick in any::<u64>()) {
        let mut tree = Gen::build(seed, skip);
        let mut rng = Rng(pick);
        let Some((table, index, raw)) = (0..8).find_map(|_| corrupt(&mut tree, Corruption::Cycle, &mut rng)) else {
            return Ok(());
        };
        let e = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits::default()).unwrap_err();
        prop_assert!(matches!(e.kind, WalkErrorKind::Cycle { .. }), "{}", e);
        prop_assert_eq!((e.table, e.index, e.entry), (PhysAddr(table), index, raw));
        let w = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits::lenient()).unwrap();
        prop_assert_eq!(w.problems, vec![e]);
        prop_assert_eq!(w.mappings, reference_runs(&tree.reference));
    }

    /// A second path to an existing table is reported as an alias.
    #[test]
    fn alias_is_reported(seed in any::<u64>(), skip in any::<bool>(), pick in any::<u64>()) {
        let mut tree = Gen::build(seed, skip);
        let mut rng = Rng(pick);
        if (0..8).find_map(|_| corrupt(&mut tree, Corruption::Alias, &mut rng)).is_none() {
            return Ok(());
        }
        let e = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits::default()).unwrap_err();
        prop_assert!(matches!(e.kind, WalkErrorKind::Alias { .. }), "{}", e);
        let w = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits::lenient()).unwrap();
        prop_assert_eq!(w.problems.len(), 1);
        prop_assert_eq!(w.tables.len(), tree.tables.len());
    }

    /// The table budget is exact: with fewer tables allowed than the tree has, strict
    /// fails with BudgetExhausted and lenient reads exactly the budget.
    #[test]
    fn table_budget_is_exact(seed in any::<u64>(), skip in any::<bool>(), frac in 0.0f64..1.0) {
        let tree = Gen::build(seed, skip);
        let n = tree.tables.len();
        let max_tables = ((n as f64 * frac) as usize).max(1);
        let limits = WalkLimits { max_tables, ..WalkLimits::default() };
        let strict = walk(&tree.fmt, &tree.mem, tree.root, &limits);
        let lenient = walk(&tree.fmt, &tree.mem, tree.root, &WalkLimits { mode: WalkMode::Lenient, ..limits }).unwrap();
        if max_tables >= n {
            prop_assert!(strict.is_ok());
        } else {
            prop_assert_eq!(strict.unwrap_err().kind, WalkErrorKind::BudgetExhausted(Budget::Tables(max_tables)));
            prop_assert_eq!(lenient.tables.len(), max_tables);
            prop_assert_eq!(lenient.problems.len(), 1);
        }
    }
}

/// A pool of tables filled with random pointers to each other at random levels: the
/// worst case for cycles and aliases. The walk ends, reads each table at most once.
#[test]
fn dense_pointer_soup_terminates() {
    let fmt = TestFormat { levels: 4 };
    for seed in 0..16u64 {
        let mut rng = Rng(seed);
        let mut mem = Mem::default();
        let pool: Vec<u64> = (0..32).map(|i| TABLE_BASE + i * 4096).collect();
        for &t in &pool {
            for i in 0..512u64 {
                let raw = if rng.chance(70) {
                    P | R | W | (1 + rng.below(3)) << 56 | pool[rng.below(32) as usize]
                } else if rng.chance(50) {
                    P | LEAF | R | (PA_BASE + (rng.below(1 << 20) << 12))
                } else {
                    0
                };
                mem.write_u64(PhysAddr(t + i * 8), raw).unwrap();
            }
        }
        let w = walk(&fmt, &mem, PhysAddr(pool[0]), &WalkLimits::lenient()).unwrap();
        assert!(w.tables.len() <= pool.len());
        assert!(mem.reads.get() <= pool.len() as u64 + w.problems.len() as u64);
        assert!(!w.problems.is_empty());
        assert!(walk(&fmt, &mem, PhysAddr(pool[0]), &WalkLimits::default()).is_err());
    }
}
