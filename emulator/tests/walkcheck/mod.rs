//! Helpers of the independent-check tests (`amdvi_walk.rs`, `smmuv3_walk.rs`): tables
//! built with an arch crate's `format` and the generic `map`, corrupted at random, and
//! the addresses worth probing.

use emulator::memory::SparseMemory;
use iommu_core::conformance::Tables;
use iommu_core::pgtable::{map, Perms, TableAlloc, WriteFormat};
use iommu_core::{Iova, PageSize, PhysAddr, PhysMem};

/// One mapping: IOVA, PA, page size, permissions.
pub type Map = (u64, u64, PageSize, Perms);

/// A tree of format `f` with a root allocated from `table_base` up and `maps` mapped
/// into it (mappings the format refuses, overlaps and sizes it has no level for, are
/// left out, the tree as it was). Returns the allocator and the root.
pub fn build<F>(
    f: &F,
    mem: &mut SparseMemory,
    table_base: u64,
    maps: &[Map],
    attrs: F::Attrs,
) -> (Tables, u64)
where
    F: WriteFormat,
    F::Attrs: Copy,
{
    let mut tables = Tables::new(PhysAddr(table_base));
    let level = f.root_level();
    let root = tables.alloc_table(level, f.table_bytes(level)).unwrap();
    for &(iova, pa, size, perms) in maps {
        let _ = map(
            f,
            mem,
            &mut tables,
            root,
            Iova(iova),
            PhysAddr(pa),
            size.bytes(),
            size,
            perms,
            attrs,
        );
    }
    (tables, root.0)
}

/// XORs `mask` into present entry `pick` of the tree (counted over the first `scan`
/// entries of every live table), or into one of the first `spare` entries of a table
/// when the pick falls past the present ones.
pub fn corrupt(
    mem: &mut SparseMemory,
    tables: &Tables,
    scan: u64,
    spare: usize,
    muts: &[(usize, usize, u64)],
) {
    let live: Vec<u64> = tables.live().into_iter().collect();
    let mut present = Vec::new();
    for &t in &live {
        for i in 0..scan {
            if mem.read_u64(PhysAddr(t + 8 * i)).unwrap() != 0 {
                present.push(t + 8 * i);
            }
        }
    }
    for &(pick, index, mask) in muts {
        let k = pick % (present.len() + live.len());
        let at = if k < present.len() {
            present[k]
        } else {
            live[k - present.len()] + 8 * (index % spare) as u64
        };
        let v = mem.read_u64(PhysAddr(at)).unwrap();
        mem.write_u64(PhysAddr(at), v ^ mask).unwrap();
    }
}

/// `extra` and, for every mapping, its first byte, a byte in the middle, its last
/// 8 bytes and the 8 bytes on either side.
pub fn probes(maps: &[Map], extra: &[u64]) -> Vec<u64> {
    let mut v = extra.to_vec();
    for &(iova, _, size, _) in maps {
        let n = size.bytes();
        v.extend([
            iova,
            iova + n / 2 + 8,
            iova.wrapping_add(n - 8),
            iova.wrapping_sub(8),
            iova.wrapping_add(n),
        ]);
    }
    v
}
