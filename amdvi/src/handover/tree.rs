//! The verification walk of an adopted domain: every entry of every table decoded by
//! the domain's [`Format`], every table page checked against the record's runs, the
//! preserved set and the pages seen before (alias or cycle), every leaf target checked
//! to be preserved memory outside the record's runs.
//!
//! Not a second walker for mappings (that is `iommu_core::pgtable`, used by `prepare`
//! and [`Unit::walk_domain`](crate::driver::Unit::walk_domain)): it produces no mapping
//! runs, reads each table page once into a buffer, skips zero entries without decoding
//! them, and checks leaf targets per run of pieces whose IOVAs and targets follow on, so
//! its cost stays close to reading the tables.

use alloc::vec::Vec;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Budget, Entry, Format, WalkError, WalkErrorKind};
use iommu_core::{DomainId, Iova, PhysAddr};

use super::record::Record;
use super::{first_missing, HandoverErrorKind as K};
use crate::driver::PAGE;

/// What the walk of one domain found.
pub(crate) struct Tree {
    /// Its table pages (the root first).
    pub(crate) tables: PageSet,
    /// Leaf entries (one per page, a replicated NextLevel-7 page counted once).
    pub(crate) leaves: u64,
    /// Runs of leaf targets checked.
    pub(crate) runs: u64,
}

/// The first page of `[pa, pa + len)` inside one of the record's runs.
fn first_in_runs(record: &Record, pa: u64, len: u64) -> Option<PhysAddr> {
    let end = pa.saturating_add(len);
    // The last run starting below `end`; runs are ascending and disjoint.
    let i = record.pages.partition_point(|&(p, _)| p.0 < end);
    let &(p, n) = record.pages.get(i.checked_sub(1)?)?;
    let run_end = p.0.saturating_add(n.saturating_mul(PAGE));
    (run_end > pa).then(|| PhysAddr(p.0.max(pa & !(PAGE - 1))))
}

/// Checks one run of leaf targets: `[pa, pa + len)` reached from `iova`.
fn check_run(
    did: DomainId,
    record: &Record,
    preserved: &PageSet,
    (iova, pa, len): (u64, u64, u64),
) -> Result<(), K> {
    let at = |page: PhysAddr| Iova(iova.wrapping_add(page.0.wrapping_sub(pa)));
    if let Some(page) = first_missing(PhysAddr(pa & !(PAGE - 1)), len.div_ceil(PAGE), preserved) {
        return Err(K::LeafTarget {
            did,
            iova: at(page),
            page,
            why: "not preserved",
        });
    }
    if let Some(page) = first_in_runs(record, pa, len) {
        return Err(K::LeafTarget {
            did,
            iova: at(page),
            page,
            why: "a page of the unit's handed-over structures",
        });
    }
    Ok(())
}

/// Walks domain `did`'s tree under `root`: at most `max_tables` tables, none of them in
/// `seen` (pages established before: the device table, GCR3 and interrupt tables, other
/// domains' tables).
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_tree<F: Format>(
    f: &F,
    mem: &dyn PhysMem,
    did: DomainId,
    root: PhysAddr,
    max_tables: usize,
    record: &Record,
    preserved: &PageSet,
    seen: &PageSet,
) -> Result<Tree, K> {
    let walk = |kind, level, index, entry, table| K::Walk {
        did,
        err: WalkError {
            kind,
            level,
            index,
            entry,
            table,
        },
    };
    let mut out = Tree {
        tables: PageSet::new(),
        leaves: 0,
        runs: 0,
    };
    let mut count = 0usize;
    let mut buf = [0u8; PAGE as usize];
    // (table, level, first IOVA, (parent, index, entry) for errors)
    type Pending = (PhysAddr, u8, u64, (PhysAddr, usize, u64));
    let mut stack: Vec<Pending> =
        alloc::vec![(root, f.root_level(), 0, (root, WalkError::ROOT, 0))];
    let mut children: Vec<Pending> = Vec::new();
    let mut run: Option<(u64, u64, u64)> = None;
    while let Some((t, level, base, (parent, pindex, pentry))) = stack.pop() {
        let here = |kind| walk(kind, level, pindex, pentry, parent);
        let bytes = f.table_bytes(level);
        if !(8..=PAGE).contains(&bytes) {
            return Err(here(WalkErrorKind::BadGeometry {
                reason: "table larger than a page",
            }));
        }
        if t.0 % bytes != 0 {
            return Err(here(WalkErrorKind::MisalignedTable {
                next: t,
                align: bytes,
            }));
        }
        let page = PhysAddr(t.0 & !(PAGE - 1));
        if !record.holds_page(page) || !preserved.contains(page) {
            return Err(K::NotPreserved {
                what: "page table",
                page,
                device: None,
                did: Some(did),
            });
        }
        if seen.contains(page) || out.tables.contains(page) {
            return Err(K::Mismatch {
                what: "table page reached twice (shared with another structure, or a cycle)",
                addr: page,
                device: None,
                did: Some(did),
                found: page.0,
                expected: 0,
            });
        }
        count += 1;
        if count > max_tables {
            return Err(here(WalkErrorKind::BudgetExhausted(Budget::Tables(
                max_tables,
            ))));
        }
        out.tables.insert(page, 0).map_err(K::PageSet)?;
        let b = &mut buf[..bytes as usize];
        mem.read(t, b).map_err(|e| here(WalkErrorKind::Memory(e)))?;
        let shift = f.entry_shift(level);
        for (i, w) in b.chunks_exact(8).enumerate() {
            let mut q = [0u8; 8];
            q.copy_from_slice(w);
            let raw = u64::from_le_bytes(q);
            if raw == 0 {
                continue;
            }
            let at = |kind| walk(kind, level, i, raw, t);
            let iova = base.wrapping_add((i as u64).checked_shl(shift).unwrap_or(0));
            match f.decode(level, raw) {
                Err(e) => return Err(at(WalkErrorKind::BadEntry(e))),
                Ok(Entry::Invalid) => {}
                Ok(Entry::Table {
                    next, level: nl, ..
                }) => {
                    if nl == 0 || nl >= level {
                        return Err(at(WalkErrorKind::LevelNotBelow { next_level: nl }));
                    }
                    children.push((next, nl, iova, (t, i, raw)));
                }
                Ok(Entry::Leaf { base: pa, size, .. }) => {
                    let sz = size.bytes();
                    let span = 1u64.checked_shl(shift).unwrap_or(0);
                    if span == 0 || sz < span {
                        return Err(at(WalkErrorKind::LeafSmallerThanEntry {
                            size,
                            span_shift: shift,
                        }));
                    }
                    if pa.0 % sz != 0 {
                        return Err(at(WalkErrorKind::MisalignedLeaf { base: pa, size }));
                    }
                    let off = iova & (sz - 1);
                    if off == 0 {
                        out.leaves += 1;
                    }
                    // Each entry maps its own span of the page (every replica of a
                    // NextLevel-7 page is checked, not only the first).
                    let piece = (iova, pa.0 + off, span);
                    run = match run {
                        Some((ri, rp, rl))
                            if ri.wrapping_add(rl) == piece.0 && rp.wrapping_add(rl) == piece.1 =>
                        {
                            Some((ri, rp, rl + span))
                        }
                        Some(r) => {
                            out.runs += 1;
                            check_run(did, record, preserved, r)?;
                            Some(piece)
                        }
                        None => Some(piece),
                    };
                }
            }
        }
        // Children in ascending IOVA order, so runs of leaves coalesce.
        stack.extend(children.drain(..).rev());
    }
    if let Some(r) = run {
        out.runs += 1;
        check_run(did, record, preserved, r)?;
    }
    Ok(out)
}
