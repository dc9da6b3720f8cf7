//! A bounded depth-first pass over a page-table tree that reports where each table sits
//! (its level and the first IOVA it covers) and, on request, every leaf with the raw
//! entries on its path (the layout of Linux's `domain_translation_struct`).
//!
//! It follows only entries the format accepts and tables that are aligned, below their
//! parent's level and not visited before, so it ends on any input; the problems it
//! skips are the ones the core walker reports.

use iommu_core::mem::PhysMem;
use iommu_core::pgtable::{Entry, Format};
use iommu_core::PhysAddr;
use std::collections::HashSet;

/// A table in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeTable {
    /// Level of the table.
    pub level: u8,
    /// First IOVA it covers.
    pub iova: u64,
    /// Where it is.
    pub addr: PhysAddr,
}

/// A leaf and the raw entries read on its way (`path[level]`, 0 where not read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLeaf {
    /// First IOVA of the leaf's entry.
    pub iova: u64,
    /// Level of the leaf.
    pub level: u8,
    /// Raw entries by level (index 1..=5; index 0 unused).
    pub path: [u64; 6],
}

struct Frame {
    level: u8,
    base: u64,
    shift: u32,
    entries: Vec<u64>,
    next: usize,
}

/// Walks the tree under `root`, calling `on_table` for every table (root first) and
/// `on_leaf` for every leaf, in IOVA order. Reads at most `max_tables` tables; returns
/// whether the budget held.
pub fn walk_tree<F, M>(
    format: &F,
    mem: &M,
    root: PhysAddr,
    max_tables: usize,
    mut on_table: impl FnMut(TreeTable),
    mut on_leaf: impl FnMut(&TreeLeaf),
) -> bool
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut path = [0u64; 6];
    let mut reads = 0usize;
    let mut open = |addr: PhysAddr, level: u8, base: u64, stack: &mut Vec<Frame>| -> bool {
        let bytes = format.table_bytes(level);
        if !(8..=iommu_core::pgtable::MAX_TABLE_BYTES).contains(&bytes)
            || !bytes.is_power_of_two()
            || !addr.is_aligned(bytes)
            || !seen.insert(addr.0)
        {
            return true;
        }
        if reads >= max_tables {
            return false;
        }
        reads += 1;
        let mut b = vec![0u8; bytes as usize];
        if mem.read(addr, &mut b).is_err() {
            return true;
        }
        on_table(TreeTable {
            level,
            iova: base,
            addr,
        });
        let entries = b
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        stack.push(Frame {
            level,
            base,
            shift: format.entry_shift(level),
            entries,
            next: 0,
        });
        true
    };
    let root_level = format.root_level();
    if root_level == 0 || root_level as usize >= path.len() {
        return true;
    }
    if !open(root, root_level, 0, &mut stack) {
        return false;
    }
    while let Some(top) = stack.last_mut() {
        if top.next >= top.entries.len() {
            path[top.level as usize] = 0;
            stack.pop();
            continue;
        }
        let i = top.next;
        top.next += 1;
        let raw = top.entries[i];
        let level = top.level;
        if top.shift >= 64 {
            continue;
        }
        let Some(slot) = (i as u64)
            .checked_shl(top.shift)
            .and_then(|o| top.base.checked_add(o))
        else {
            continue;
        };
        match format.decode(level, raw) {
            Ok(Entry::Leaf { .. }) => {
                path[level as usize] = raw;
                on_leaf(&TreeLeaf {
                    iova: slot,
                    level,
                    path,
                });
                path[level as usize] = 0;
            }
            Ok(Entry::Table {
                next, level: nl, ..
            }) if nl > 0 && nl < level => {
                path[level as usize] = raw;
                if !open(next, nl, slot, &mut stack) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// The tables of the tree of `format` at `root` by position (level and first IOVA),
/// within the lenient walk limits of [`crate::model::walk_limits`]. An architecture's
/// [`crate::arch::ArchUnit::tree_tables`] is this with its format.
pub fn tables_of<F: Format>(format: &F, mem: &dyn PhysMem, root: PhysAddr) -> Vec<TreeTable> {
    let mut v = Vec::new();
    walk_tree(
        format,
        mem,
        root,
        crate::model::walk_limits().max_tables,
        |x| v.push(x),
        |_| {},
    );
    v
}
