//! The verification walk of an adopted domain: every entry of every table decoded by
//! the domain's [`Format`] (reserved bits, widths, alignment), every table page checked
//! against the preserved set and the record, bounded by the record's page count.
//!
//! This is not a second page-table walker for mappings (that is `iommu_core::pgtable`,
//! used by `prepare` and by [`Unit::walk_domain`](crate::driver::Unit::walk_domain)): it
//! produces no mapping runs, only the table pages and a leaf count, reading each table
//! page once and skipping zero entries without decoding them, which keeps it close to
//! the cost of copying the tables.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Budget, Entry, Format, WalkError, WalkErrorKind};
use iommu_core::PhysAddr;

use super::record::Record;
use super::HandoverErrorKind as K;
use crate::driver::{AnyFormat, PAGE};
use crate::hw::pte::{FlPte, SlPte, FL_P, FL_PS, SL_PS, SL_R, SL_W};
use iommu_core::DomainId;

/// Table pages and leaves of one domain.
pub(crate) struct Tree {
    /// Table pages, in visiting order.
    pub(crate) tables: Vec<PhysAddr>,
    pub(crate) leaves: u64,
}

/// A table to visit: (table, level, first IOVA, (parent table, index, entry) for
/// errors).
type Pending = (PhysAddr, u8, u64, (PhysAddr, usize, u64));

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

/// Walks the tree under `root`; see the module documentation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_tree(
    f: &AnyFormat,
    mem: &dyn PhysMem,
    did: DomainId,
    root: PhysAddr,
    max_tables: usize,
    preserved: Option<&PageSet>,
    record: &Record,
    visited: &mut BTreeSet<u64>,
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
    let mut tables = Vec::new();
    let mut leaves = 0u64;
    let mut count = 0usize;
    let mut stack: Vec<Pending> = Vec::new();
    stack.push((root, f.root_level(), 0, (root, WalkError::ROOT, 0)));
    let mut buf = [0u8; PAGE as usize];
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
        if !record.holds_page(table) || preserved.is_some_and(|p| !p.contains(table)) {
            return Err(K::NotPreserved {
                what: "page table",
                page: table,
                device: None,
                did: Some(did),
            });
        }
        if !visited.insert(table.0) {
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
        mem.read(table, &mut buf)
            .map_err(|e| werr(WalkErrorKind::Memory(e), plevel, pi, pe, pt))?;
        if let Some(Some((present, leaf, reserved))) = masks.get(level as usize - 1) {
            // Fast path for a table of leaves: count present entries, note whether any
            // is not a leaf or has a reserved bit set; only then decode entry by entry
            // (the table entries, or the exact error).
            let (mut n, mut bad) = (0u64, 0u64);
            for chunk in buf.chunks_exact(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                let raw = u64::from_le_bytes(w);
                let p = (raw & present != 0) as u64;
                n += p;
                bad |= ((raw & reserved) | (!raw & leaf)) * p;
            }
            if bad == 0 {
                leaves += n;
                continue;
            }
        }
        let shift = f.entry_shift(level);
        for (i, chunk) in buf.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let raw = u64::from_le_bytes(w);
            if raw == 0 {
                continue;
            }
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
    Ok(Tree { tables, leaves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{FirstStage, SecondStage};
    use crate::hw::pte::PteCaps;

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
