//! Unit tests of the walker and `translate` against a tiny test format.

use super::*;
use crate::addr::Iova;
use crate::mem::{MemError, PhysMem};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

/// A tiny format: 16 entries (128 bytes) per table, entry span 2^(12 + 4 (level - 1)),
/// leaves at levels 1 and 2. The root may hold more entries (concatenated root).
///
/// Entry: bit 63 present, 62 read, 61 write, 60 exec, 59 leaf, 58:56 next level (table
/// entries), 55:52 log2(page size / entry span) (leaves), 51:0 address.
struct Tiny {
    root_level: u8,
    root_entries: u64,
    ia_bits: u32,
}

impl Tiny {
    fn new(root_level: u8) -> Self {
        Self {
            root_level,
            root_entries: 16,
            ia_bits: 12 + 4 * root_level as u32,
        }
    }
}

const P: u64 = 1 << 63;
const R: u64 = 1 << 62;
const W: u64 = 1 << 61;
const X: u64 = 1 << 60;
const LEAF: u64 = 1 << 59;
const ADDR: u64 = (1 << 52) - 1;

fn tbl(addr: u64, level: u8, perms: u64) -> u64 {
    P | perms | (level as u64) << 56 | addr
}

fn leaf(addr: u64, k: u64, perms: u64) -> u64 {
    P | LEAF | perms | k << 52 | addr
}

impl Format for Tiny {
    fn name(&self) -> &'static str {
        "tiny"
    }
    fn root_level(&self) -> u8 {
        self.root_level
    }
    fn table_bytes(&self, level: u8) -> u64 {
        if level == self.root_level {
            self.root_entries * 8
        } else {
            128
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        12 + 4 * (level as u32).saturating_sub(1)
    }
    fn ia_bits(&self) -> u32 {
        self.ia_bits
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        if raw & P == 0 {
            return Ok(Entry::Invalid);
        }
        let perms = Perms {
            read: raw & R != 0,
            write: raw & W != 0,
            exec: raw & X != 0,
        };
        let addr = PhysAddr(raw & ADDR);
        if raw & LEAF != 0 {
            if level > 2 {
                return Err(EntryError {
                    reason: "leaf above level 2",
                });
            }
            let k = (raw >> 52) & 0xf;
            let size =
                PageSize::from_shift(self.entry_shift(level) + k as u32).ok_or(EntryError {
                    reason: "page size out of range",
                })?;
            Ok(Entry::Leaf {
                base: addr,
                size,
                perms,
            })
        } else {
            if (raw >> 52) & 0xf != 0 {
                return Err(EntryError {
                    reason: "size bits set in a table entry",
                });
            }
            Ok(Entry::Table {
                next: addr,
                level: ((raw >> 56) & 7) as u8,
                perms,
            })
        }
    }
}

/// Page-granular sparse memory counting reads.
#[derive(Default)]
struct Mem {
    pages: BTreeMap<u64, Vec<u8>>,
    reads: Cell<usize>,
}

impl PhysMem for Mem {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr.0 + i as u64;
            let page = self
                .pages
                .get(&(a >> 12))
                .ok_or(MemError::Unbacked { addr: PhysAddr(a) })?;
            *b = page[(a & 0xfff) as usize];
        }
        Ok(())
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        for (i, b) in data.iter().enumerate() {
            let a = addr.0 + i as u64;
            self.pages.entry(a >> 12).or_insert_with(|| vec![0; 4096])[(a & 0xfff) as usize] = *b;
        }
        Ok(())
    }
}

impl Mem {
    /// Writes `entries` (index, value) into the table at `table` (zeroing it first).
    fn table(&mut self, table: u64, bytes: u64, entries: &[(usize, u64)]) {
        for off in (0..bytes).step_by(8) {
            self.write_u64(PhysAddr(table + off), 0).unwrap();
        }
        for &(i, v) in entries {
            self.write_u64(PhysAddr(table + i as u64 * 8), v).unwrap();
        }
    }
}

fn m(iova: u64, pa: u64, size: u64, perms: Perms, page: u64) -> Mapping {
    Mapping {
        iova: Iova(iova),
        pa: PhysAddr(pa),
        size,
        perms,
        page_size: PageSize::new(page).unwrap(),
    }
}

const ROOT: u64 = 0x1_0000;
const L2A: u64 = 0x1_0080;
const L1A: u64 = 0x1_0100;
const L1B: u64 = 0x1_0180;

/// Level 3 root; root[0] -> L2A; L2A[0] -> L1A, L2A[1] -> L1B, L2A[2] = 64K leaf.
fn sample() -> Mem {
    let mut mem = Mem::default();
    mem.table(ROOT, 128, &[(0, tbl(L2A, 2, R | W | X))]);
    mem.table(
        L2A,
        128,
        &[
            (0, tbl(L1A, 1, R | W)),
            (1, tbl(L1B, 1, R | W)),
            (2, leaf(0x20_0000, 0, R | W)),
        ],
    );
    // L1A: 0..4 contiguous RW, 4 R only, 6 RW, 15 RW contiguous with L1B[0].
    let mut a: Vec<(usize, u64)> = (0..4)
        .map(|i| (i, leaf(0x10_0000 + i as u64 * 0x1000, 0, R | W)))
        .collect();
    a.push((4, leaf(0x10_4000, 0, R)));
    a.push((6, leaf(0x50_0000, 0, R | W | X)));
    a.push((15, leaf(0x60_0000, 0, R | W)));
    mem.table(L1A, 128, &a);
    mem.table(L1B, 128, &[(0, leaf(0x60_1000, 0, R | W))]);
    mem
}

#[test]
fn walk_collects_coalesces_and_lists_tables() {
    let mem = sample();
    let w = walk(&Tiny::new(3), &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap();
    assert_eq!(
        w.mappings,
        vec![
            m(0x0, 0x10_0000, 0x4000, Perms::RW, 0x1000),
            m(0x4000, 0x10_4000, 0x1000, Perms::R, 0x1000),
            // exec is dropped by the L2A -> L1A entry (R|W only).
            m(0x6000, 0x50_0000, 0x1000, Perms::RW, 0x1000),
            // L1A[15] and L1B[0] merge across tables.
            m(0xf000, 0x60_0000, 0x2000, Perms::RW, 0x1000),
            m(0x2_0000, 0x20_0000, 0x1_0000, Perms::RW, 0x1_0000),
        ]
    );
    assert_eq!(
        w.tables,
        vec![
            TablePage {
                addr: PhysAddr(ROOT),
                bytes: 128,
                level: 3
            },
            TablePage {
                addr: PhysAddr(L2A),
                bytes: 128,
                level: 2
            },
            TablePage {
                addr: PhysAddr(L1A),
                bytes: 128,
                level: 1
            },
            TablePage {
                addr: PhysAddr(L1B),
                bytes: 128,
                level: 1
            },
        ]
    );
    assert_eq!(w.leaves, 9);
    assert!(w.problems.is_empty());
    // One read per table, not one per entry.
    assert_eq!(mem.reads.get(), 4);
    assert_eq!(
        w.lookup(Iova(0x2_1234)).map(|(pa, _)| pa),
        Some(PhysAddr(0x20_1234))
    );
    assert_eq!(w.lookup(Iova(0x5000)), None);
}

#[test]
fn walk_with_streams_without_storing() {
    let mem = sample();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let s = walk_with(
        &Tiny::new(3),
        &mem,
        PhysAddr(ROOT),
        &WalkLimits::default(),
        |m| {
            n += 1;
            bytes += m.size;
        },
    )
    .unwrap();
    assert_eq!(n, 5);
    assert_eq!(s.runs, 5);
    assert_eq!(bytes, 0x4000 + 0x1000 + 0x1000 + 0x2000 + 0x1_0000);
    assert_eq!(s.tables.len(), 4);
}

#[test]
fn replicated_large_leaves_and_level_skipping() {
    // 4-level tiny: root[1] -> a level-2 table (skips level 3); that table's [0] -> L1
    // with a 16K page replicated over entries 4..8 and a second 16K page at 8..12.
    let mut mem = Mem::default();
    mem.table(ROOT, 128, &[(1, tbl(L2A, 2, R | W))]);
    mem.table(L2A, 128, &[(0, tbl(L1A, 1, R | W))]);
    let mut e: Vec<(usize, u64)> = (4..8).map(|i| (i, leaf(0x30_0000, 2, R | W))).collect();
    e.extend((8..12).map(|i| (i, leaf(0x30_4000, 2, R | W))));
    mem.table(L1A, 128, &e);
    let f = Tiny::new(4);
    let w = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap();
    let base = 1 << 24; // root entry 1 at level 4 spans 2^24.
    assert_eq!(
        w.mappings,
        vec![m(base + 0x4000, 0x30_0000, 0x8000, Perms::RW, 0x4000)]
    );
    assert_eq!(w.leaves, 8);

    let t = translate(&f, &mem, PhysAddr(ROOT), Iova(base + 0x5678)).unwrap();
    assert_eq!(t.pa(), Some(PhysAddr(0x30_1678)));
    assert_eq!(t.steps.len(), 3);
    assert_eq!(
        (t.steps[1].level, t.steps[1].table, t.steps[1].index),
        (2, PhysAddr(L2A), 0)
    );
    // The level-2 table covers 1 MiB of the root entry's 16 MiB.
    let t = translate(&f, &mem, PhysAddr(ROOT), Iova(base + (1 << 20))).unwrap();
    assert_eq!(t.outcome, Outcome::SkippedBitsSet { level: 4 });
}

#[test]
fn concatenated_root() {
    let mut mem = Mem::default();
    let f = Tiny {
        root_level: 2,
        root_entries: 32,
        ia_bits: 21,
    };
    mem.table(ROOT, 256, &[(20, leaf(0x7_0000, 0, R))]);
    let w = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap();
    assert_eq!(
        w.mappings,
        vec![m(20 << 16, 0x7_0000, 0x1_0000, Perms::R, 0x1_0000)]
    );
    assert_eq!(w.tables[0].bytes, 256);
    // A 256-byte root must be 256-byte aligned.
    let e = walk(&f, &mem, PhysAddr(ROOT + 128), &WalkLimits::default()).unwrap_err();
    assert!(e.is_root());
    assert_eq!(
        e.kind,
        WalkErrorKind::MisalignedTable {
            next: PhysAddr(ROOT + 128),
            align: 256
        }
    );
}

#[test]
fn cycle_is_detected_and_named() {
    let mut mem = sample();
    // L2A[5] points back to the root (as a level-1 table).
    let raw = tbl(ROOT, 1, R | W);
    mem.write_u64(PhysAddr(L2A + 5 * 8), raw).unwrap();
    let e = walk(&Tiny::new(3), &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        e,
        WalkError {
            kind: WalkErrorKind::Cycle {
                next: PhysAddr(ROOT),
                ancestor: PhysAddr(ROOT),
                ancestor_level: 3
            },
            level: 2,
            index: 5,
            entry: raw,
            table: PhysAddr(L2A),
        }
    );
    assert_eq!(
        format!("{e}"),
        "level 2 table 0x10080 index 0x5 entry 0xe100000000010000: cycle: next table \
         0x10000 overlaps its ancestor, the level 3 table 0x10000"
    );
    // A table pointing at itself.
    mem.write_u64(PhysAddr(L2A + 5 * 8), tbl(L2A, 1, R))
        .unwrap();
    let e = walk(&Tiny::new(3), &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert!(matches!(e.kind, WalkErrorKind::Cycle { ancestor, .. } if ancestor == PhysAddr(L2A)));
}

#[test]
fn alias_is_detected_strict_and_lenient() {
    let mut mem = sample();
    let raw = tbl(L1A, 1, R | W);
    mem.write_u64(PhysAddr(L2A + 3 * 8), raw).unwrap();
    let f = Tiny::new(3);
    let e = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        e.kind,
        WalkErrorKind::Alias {
            next: PhysAddr(L1A),
            first: PhysAddr(L1A),
            first_level: 1
        }
    );
    assert_eq!((e.level, e.index, e.entry), (2, 3, raw));
    let w = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::lenient()).unwrap();
    assert_eq!(w.problems, vec![e]);
    assert_eq!(w.mappings.len(), 5);
    assert_eq!(w.tables.len(), 4);
}

#[test]
fn unreadable_tables_strict_and_lenient() {
    let mut mem = sample();
    let raw = tbl(0x900_0000, 1, R | W);
    mem.write_u64(PhysAddr(L2A + 3 * 8), raw).unwrap();
    let f = Tiny::new(3);
    let e = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        e,
        WalkError {
            kind: WalkErrorKind::Memory(MemError::Unbacked {
                addr: PhysAddr(0x900_0000)
            }),
            level: 2,
            index: 3,
            entry: raw,
            table: PhysAddr(L2A),
        }
    );
    let w = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::lenient()).unwrap();
    assert_eq!(w.problems, vec![e]);
    assert_eq!(w.mappings.len(), 5);

    let e = walk(&f, &mem, PhysAddr(0x800_0000), &WalkLimits::default()).unwrap_err();
    assert!(e.is_root());
    assert_eq!(
        format!("{e}"),
        "root table 0x8000000 (level 3): cannot read table: no memory at physical address 0x8000000"
    );
    let w = walk(&f, &mem, PhysAddr(0x800_0000), &WalkLimits::lenient()).unwrap();
    assert_eq!(w.problems.len(), 1);
    assert!(w.tables.is_empty() && w.mappings.is_empty());
}

#[test]
fn malformed_entries() {
    let f = Tiny::new(3);
    let cases: [(u64, WalkErrorKind); 6] = [
        (
            tbl(L1A + 8, 1, R),
            WalkErrorKind::MisalignedTable {
                next: PhysAddr(L1A + 8),
                align: 128,
            },
        ),
        (
            tbl(L1B, 2, R),
            WalkErrorKind::LevelNotBelow { next_level: 2 },
        ),
        (
            tbl(L1B, 0, R),
            WalkErrorKind::LevelNotBelow { next_level: 0 },
        ),
        (
            leaf(0x20_1000, 0, R),
            WalkErrorKind::MisalignedLeaf {
                base: PhysAddr(0x20_1000),
                size: PageSize::SIZE_64K,
            },
        ),
        (
            P | (1 << 52) | L1B,
            WalkErrorKind::BadEntry(EntryError {
                reason: "size bits set in a table entry",
            }),
        ),
        (
            tbl(ADDR & !127, 1, R),
            WalkErrorKind::Memory(MemError::Unbacked {
                addr: PhysAddr(ADDR & !127),
            }),
        ),
    ];
    for (raw, kind) in cases {
        let mut mem = sample();
        mem.write_u64(PhysAddr(L2A + 7 * 8), raw).unwrap();
        let e = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
        assert_eq!(
            e,
            WalkError {
                kind,
                level: 2,
                index: 7,
                entry: raw,
                table: PhysAddr(L2A)
            },
            "{raw:#x}"
        );
        let w = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::lenient()).unwrap();
        assert_eq!(w.problems, vec![e]);
        assert_eq!(w.mappings.len(), 5, "lenient walk goes on past {raw:#x}");
        // translate reports the same error for an IOVA under that entry.
        let t = translate(&f, &mem, PhysAddr(ROOT), Iova(7 << 16)).unwrap_err();
        assert_eq!(t, e);
    }
    // A leaf above level 2 is refused by the format.
    let mut mem = sample();
    mem.write_u64(PhysAddr(ROOT + 8), leaf(0x100_0000, 0, R))
        .unwrap();
    let e = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        e.kind,
        WalkErrorKind::BadEntry(EntryError {
            reason: "leaf above level 2"
        })
    );
}

#[test]
fn iova_beyond_input_width() {
    let f = Tiny {
        root_level: 3,
        root_entries: 16,
        ia_bits: 22,
    };
    let mut mem = sample();
    // Root entry 4 starts at 4 << 20 = 2^22: beyond the width.
    let raw = tbl(L1B, 2, R);
    mem.write_u64(PhysAddr(ROOT + 4 * 8), raw).unwrap();
    let e = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        (e.kind, e.level, e.index),
        (WalkErrorKind::IovaOverflow { ia_bits: 22 }, 3, 4)
    );
    let t = translate(&f, &mem, PhysAddr(ROOT), Iova(4 << 20)).unwrap();
    assert_eq!(t.outcome, Outcome::BeyondInputWidth { ia_bits: 22 });
    assert!(t.steps.is_empty());
}

#[test]
fn budgets() {
    let mem = sample();
    let f = Tiny::new(3);
    let lim = WalkLimits {
        max_tables: 3,
        ..WalkLimits::default()
    };
    let e = walk(&f, &mem, PhysAddr(ROOT), &lim).unwrap_err();
    assert_eq!(e.kind, WalkErrorKind::BudgetExhausted(Budget::Tables(3)));
    assert_eq!((e.level, e.index), (2, 1));
    let w = walk(
        &f,
        &mem,
        PhysAddr(ROOT),
        &WalkLimits {
            mode: WalkMode::Lenient,
            ..lim
        },
    )
    .unwrap();
    assert_eq!(w.tables.len(), 3);
    assert_eq!(w.problems.len(), 1);

    let lim = WalkLimits {
        max_mappings: 2,
        ..WalkLimits::default()
    };
    let e = walk(&f, &mem, PhysAddr(ROOT), &lim).unwrap_err();
    assert_eq!(e.kind, WalkErrorKind::BudgetExhausted(Budget::Mappings(2)));
    let w = walk(
        &f,
        &mem,
        PhysAddr(ROOT),
        &WalkLimits {
            mode: WalkMode::Lenient,
            ..lim
        },
    )
    .unwrap();
    assert_eq!(w.mappings.len(), 2);
    assert_eq!(w.problems.len(), 1);

    // Lenient problems beyond max_problems are counted, not stored.
    let mut mem = sample();
    for i in 3..16 {
        mem.write_u64(PhysAddr(L2A + i * 8), P | (1 << 52)).unwrap();
    }
    let w = walk(
        &f,
        &mem,
        PhysAddr(ROOT),
        &WalkLimits {
            max_problems: 4,
            ..WalkLimits::lenient()
        },
    )
    .unwrap();
    assert_eq!((w.problems.len(), w.problems_dropped), (4, 9));
}

#[test]
fn bad_geometry_and_levels() {
    let mem = sample();
    let e = walk(&Tiny::new(7), &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        e.kind,
        WalkErrorKind::TooManyLevels {
            root_level: 7,
            max_levels: 6
        }
    );
    let e = walk(&Tiny::new(0), &mem, PhysAddr(ROOT), &WalkLimits::lenient()).unwrap_err();
    assert!(matches!(e.kind, WalkErrorKind::TooManyLevels { .. }));
    let f = Tiny {
        root_level: 3,
        root_entries: 3,
        ia_bits: 24,
    };
    let e = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap_err();
    assert!(matches!(e.kind, WalkErrorKind::BadGeometry { .. }));
}

#[test]
fn translate_steps() {
    let mem = sample();
    let f = Tiny::new(3);
    let t = translate(&f, &mem, PhysAddr(ROOT), Iova(0x4abc)).unwrap();
    assert_eq!(
        t.outcome,
        Outcome::Mapped {
            pa: PhysAddr(0x10_4abc),
            perms: Perms::R,
            page_size: PageSize::SIZE_4K
        }
    );
    let where_: Vec<(u8, PhysAddr, usize)> = t
        .steps
        .iter()
        .map(|s| (s.level, s.table, s.index))
        .collect();
    assert_eq!(
        where_,
        vec![
            (3, PhysAddr(ROOT), 0),
            (2, PhysAddr(L2A), 0),
            (1, PhysAddr(L1A), 4)
        ]
    );
    assert_eq!(t.steps[2].raw, leaf(0x10_4000, 0, R));
    let text = format!("{t}");
    assert!(text.contains("level 1 table 0x10100 [0x4]"), "{text}");
    assert!(
        text.ends_with("=> translates to 0x104abc (r--, 4K page)"),
        "{text}"
    );

    let t = translate(&f, &mem, PhysAddr(ROOT), Iova(0x5000)).unwrap();
    assert_eq!(t.outcome, Outcome::NotPresent { level: 1 });
    let t = translate(&f, &mem, PhysAddr(ROOT), Iova(0x10_0000)).unwrap();
    assert_eq!(t.outcome, Outcome::NotPresent { level: 3 });
    assert_eq!(t.steps.len(), 1);
    // Agrees with the walk on every 4K page of the sample.
    let w = walk(&f, &mem, PhysAddr(ROOT), &WalkLimits::default()).unwrap();
    for page in 0..0x40u64 {
        let iova = Iova(page << 12 | 0x10);
        let t = translate(&f, &mem, PhysAddr(ROOT), iova).unwrap();
        assert_eq!(t.pa(), w.lookup(iova).map(|(pa, _)| pa), "{iova}");
    }
}

/// ARM VMSAv8-64 64 KiB-granule geometry, 48-bit input: the start table resolves bits
/// 47:42 (64 entries, 512 bytes), the others hold 8192 entries (64 KiB); leaves of
/// 64 KiB at level 1 and 512 MiB blocks at level 2. Entry encoding as in [`Tiny`].
struct Granule64K;

impl Format for Granule64K {
    fn name(&self) -> &'static str {
        "granule-64k"
    }
    fn root_level(&self) -> u8 {
        3
    }
    fn table_bytes(&self, level: u8) -> u64 {
        if level == 3 {
            512
        } else {
            1 << 16
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        16 + 13 * (level as u32).saturating_sub(1)
    }
    fn ia_bits(&self) -> u32 {
        48
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        Tiny::new(3).decode(level, raw).map(|e| match e {
            Entry::Leaf { base, perms, .. } => Entry::Leaf {
                base,
                size: PageSize::from_shift(self.entry_shift(level)).unwrap_or(PageSize::SIZE_64K),
                perms,
            },
            other => other,
        })
    }
}

#[test]
fn sixty_four_k_granule_with_small_root() {
    let (root, l2, l1) = (0x4_0200u64, 0x10_0000u64, 0x20_0000u64);
    let mut mem = Mem::default();
    mem.table(root, 512, &[(1, tbl(l2, 2, R | W))]);
    mem.table(
        l2,
        1 << 16,
        &[(3, leaf(0x6000_0000, 0, R)), (8191, tbl(l1, 1, R | W))],
    );
    mem.table(
        l1,
        1 << 16,
        &[
            (0, leaf(0x7_0000, 0, R | W)),
            (8191, leaf(0x8_0000, 0, R | W)),
        ],
    );
    let w = walk(&Granule64K, &mem, PhysAddr(root), &WalkLimits::default()).unwrap();
    let base = 1u64 << 42;
    let block = 1u64 << 29;
    assert_eq!(
        w.mappings,
        vec![
            m(base + 3 * block, 0x6000_0000, block, Perms::R, block),
            m(base + 8191 * block, 0x7_0000, 0x1_0000, Perms::RW, 0x1_0000),
            m(
                base + 8191 * block + 8191 * 0x1_0000,
                0x8_0000,
                0x1_0000,
                Perms::RW,
                0x1_0000
            ),
        ]
    );
    let sizes: Vec<u64> = w.tables.iter().map(|t| t.bytes).collect();
    assert_eq!(sizes, vec![512, 1 << 16, 1 << 16]);
    assert_eq!(mem.reads.get(), 3);
    // A 64 KiB table must be 64 KiB aligned.
    mem.write_u64(PhysAddr(root + 2 * 8), tbl(0x30_1000, 2, R))
        .unwrap();
    let e = walk(&Granule64K, &mem, PhysAddr(root), &WalkLimits::default()).unwrap_err();
    assert_eq!(
        e.kind,
        WalkErrorKind::MisalignedTable {
            next: PhysAddr(0x30_1000),
            align: 1 << 16
        }
    );
}

/// The write side of the tiny format, shaped like AMD-Vi v1 and ARM on purpose: pages
/// between two levels' spans are replicated entries (AMD-Vi NextLevel = 7: the same
/// word in every slot, the size in the entry), and the root may be a concatenation of
/// tables (ARM stage 2).
impl WriteFormat for Tiny {
    type Attrs = ();
    fn oa_bits(&self) -> u32 {
        52
    }
    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32> {
        let k = size.shift().checked_sub(self.entry_shift(level))?;
        (level <= 2 && level <= self.root_level && k <= 3).then(|| 1 << k)
    }
    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        size: PageSize,
        perms: Perms,
        _attrs: (),
        _slot: u32,
    ) -> Result<u64, EntryError> {
        let k = (size.shift() - self.entry_shift(level)) as u64;
        let p = perm_bits(perms);
        if p & R == 0 {
            return Err(EntryError {
                reason: "tiny leaves are always readable",
            });
        }
        Ok(leaf(pa.0, k, p))
    }
    fn encode_table(&self, _level: u8, next: PhysAddr, next_level: u8) -> u64 {
        tbl(next.0, next_level, R | W | X)
    }
    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64> {
        // Only a level-2 leaf of one entry splits, into 16 level-1 pages.
        if level != 2 || raw & (P | LEAF) != P | LEAF || (raw >> 52) & 0xf != 0 || index >= 16 {
            return None;
        }
        let perms = raw & (R | W | X);
        Some(leaf((raw & ADDR) + index as u64 * 0x1000, 0, perms))
    }
}

fn perm_bits(p: Perms) -> u64 {
    (if p.read { R } else { 0 }) | (if p.write { W } else { 0 }) | (if p.exec { X } else { 0 })
}

/// The conformance body over the tiny format: three levels, a one-level tree, and a
/// root of 4 concatenated tables, all with replicated leaves.
mod conformance {
    use super::Tiny;

    fn concatenated() -> Tiny {
        Tiny {
            root_level: 3,
            root_entries: 64,
            ia_bits: 12 + 4 * 2 + 6,
        }
    }

    crate::conformance_tests!(tiny_3, Tiny::new(3));
    crate::conformance_tests!(tiny_2, Tiny::new(2));
    crate::conformance_tests!(tiny_concatenated_root, concatenated());
}

#[test]
fn map_writes_replicated_entries_and_unmap_refuses_to_cut_them() {
    // An 8 KiB page at level 1 is two identical entries (as AMD-Vi NextLevel = 7).
    let f = Tiny::new(3);
    let mut rig = crate::conformance::Rig::new(&f);
    rig.map(
        0x4000,
        0x10_2000,
        0x2000,
        PageSize::new(0x2000).unwrap(),
        Perms::RW,
    )
    .unwrap();
    let w = rig.walk();
    assert_eq!(w, vec![m(0x4000, 0x10_2000, 0x2000, Perms::RW, 0x2000)]);
    let l1 = *rig.tables.live().iter().max().unwrap();
    let e4 = rig.mem.read_u64(PhysAddr(l1 + 4 * 8)).unwrap();
    let e5 = rig.mem.read_u64(PhysAddr(l1 + 5 * 8)).unwrap();
    assert_eq!(
        (e4, e5),
        (leaf(0x10_2000, 1, R | W), leaf(0x10_2000, 1, R | W))
    );
    // Half of the page cannot go, even when splitting is allowed.
    assert_eq!(
        rig.unmap(0x5000, 0x1000, Partial::Split),
        Err(MapErrorKind::PartialLeaf {
            iova: Iova(0x5000),
            span: 0x1000,
            level: 1
        })
    );
    let u = rig.unmap(0x4000, 0x2000, Partial::Refuse).unwrap();
    assert_eq!((u.bytes, u.leaves, u.freed.len()), (0x2000, 2, 2));
}

#[test]
fn unmap_follows_no_pointer_to_a_table_it_does_not_own() {
    let f = Tiny::new(3);
    let mut rig = crate::conformance::Rig::new(&f);
    rig.map(0, 0x10_0000, 0x1000, PageSize::SIZE_4K, Perms::RW)
        .unwrap();
    // Point root entry 1 at memory the tree never allocated.
    let bad = tbl(0x8000, 2, R | W);
    rig.mem.write_u64(PhysAddr(rig.root.0 + 8), bad).unwrap();
    let e = rig.unmap(0, 1 << 24, Partial::Refuse).unwrap_err();
    assert!(
        matches!(e, MapErrorKind::Corrupt { level: 3, entry, .. } if entry == bad),
        "{e:?}"
    );
    // Nothing changed: the first mapping is still there.
    assert_eq!(rig.mem.read_u64(PhysAddr(rig.root.0 + 8)).unwrap(), bad);
    let e = rig
        .map(0x10_0000, 0, 0x1000, PageSize::SIZE_4K, Perms::RW)
        .unwrap_err();
    assert!(matches!(e, MapErrorKind::Corrupt { .. }), "{e:?}");
}

#[test]
fn map_and_unmap_follow_a_level_skipping_entry() {
    // Root (level 3) entry 1 points straight to a level-1 table (AMD-Vi v1 style): the
    // table covers the low 64 KiB of the entry's 1 MiB span.
    let f = Tiny::new(3);
    let mut rig = crate::conformance::Rig::new(&f);
    let t = rig.tables.alloc_table(1, 128).unwrap();
    rig.mem.write(t, &[0; 128]).unwrap();
    rig.mem
        .write_u64(PhysAddr(rig.root.0 + 8), tbl(t.0, 1, R | W))
        .unwrap();
    rig.map(0x10_3000, 0x7000, 0x2000, PageSize::SIZE_4K, Perms::RW)
        .unwrap();
    assert_eq!(
        rig.mem.read_u64(PhysAddr(t.0 + 3 * 8)).unwrap(),
        leaf(0x7000, 0, R | W)
    );
    // Above the skipping table's coverage: refused, nothing written.
    let e = rig
        .map(0x11_0000, 0x9000, 0x1000, PageSize::SIZE_4K, Perms::RW)
        .unwrap_err();
    assert!(matches!(e, MapErrorKind::Corrupt { level: 3, .. }), "{e:?}");
    assert_eq!(
        rig.walk(),
        vec![m(0x10_3000, 0x7000, 0x2000, Perms::RW, 0x1000)]
    );
    // Unmapping everything empties and frees the skipping table.
    let u = rig.unmap(0, 1 << 24, Partial::Refuse).unwrap();
    assert_eq!((u.bytes, u.freed.len()), (0x2000, 1));
    assert_eq!(u.freed[0].addr, t);
}

#[test]
fn iova_span_holds_the_end_of_the_64_bit_space() {
    // The whole 64-bit space and its last page: an exclusive u64 end cannot say 2^64.
    let all = IovaSpan {
        first: Iova(0),
        last: Iova(u64::MAX),
    };
    assert_eq!(all.bytes(), 1u128 << 64);
    assert_eq!(all.end(), None);
    let last_page = IovaSpan {
        first: Iova(u64::MAX - 0xfff),
        last: Iova(u64::MAX),
    };
    assert_eq!(last_page.bytes(), 0x1000);
    assert_eq!(last_page.end(), None);
    let low = IovaSpan {
        first: Iova(0x1000),
        last: Iova(0x1fff),
    };
    assert_eq!((low.bytes(), low.end()), (0x1000, Some(Iova(0x2000))));
}
