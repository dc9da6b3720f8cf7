//! Map and unmap in second-stage and first-stage tables.

use ::alloc::vec::Vec;
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};

use super::inval::Op;
use super::{alloc_zeroed, mem_err, DomainKind, Error, ErrorKind, Head, Hw, Unit, PAGE};
use crate::hw::pte::{level_index, level_shift, FlPte, SlPte, ENTRIES_PER_TABLE, PTE_SIZE};
use crate::hw::regs::CAP;

/// The leaf level of a page size: 1 (4 KiB), 2 (2 MiB), 3 (1 GiB).
fn leaf_level(size: PageSize) -> Option<u8> {
    match size.bytes() {
        0x1000 => Some(1),
        0x20_0000 => Some(2),
        0x4000_0000 => Some(3),
        _ => None,
    }
}

/// Entry helpers for one stage.
#[derive(Clone, Copy)]
struct Stage(DomainKind);

impl Stage {
    fn present(self, raw: u64) -> bool {
        match self.0 {
            DomainKind::SecondStage => SlPte::from_raw(raw).present(),
            DomainKind::FirstStage => FlPte::from_raw(raw).present(),
        }
    }
    fn is_leaf(self, raw: u64, level: u8) -> bool {
        match self.0 {
            DomainKind::SecondStage => SlPte::from_raw(raw).is_leaf(level as u32),
            DomainKind::FirstStage => FlPte::from_raw(raw).is_leaf(level as u32),
        }
    }
    fn next(self, raw: u64) -> PhysAddr {
        PhysAddr(match self.0 {
            DomainKind::SecondStage => SlPte::from_raw(raw).addr(),
            DomainKind::FirstStage => FlPte::from_raw(raw).addr(),
        })
    }
    fn table(self, addr: PhysAddr) -> u64 {
        match self.0 {
            DomainKind::SecondStage => SlPte::table(addr.0).raw(),
            DomainKind::FirstStage => FlPte::table(addr.0).raw(),
        }
    }
    fn leaf(self, level: u8, pa: PhysAddr, perms: Perms) -> u64 {
        match (self.0, level) {
            (DomainKind::SecondStage, 1) => SlPte::page(pa.0, perms.read, perms.write).raw(),
            (DomainKind::SecondStage, _) => SlPte::large_page(pa.0, perms.read, perms.write).raw(),
            (DomainKind::FirstStage, 1) => FlPte::page(pa.0, perms.write).raw(),
            (DomainKind::FirstStage, _) => FlPte::large_page(pa.0, perms.write).raw(),
        }
    }
}

/// Address and mask of the smallest naturally aligned power-of-two block of pages
/// covering `[start, end)`.
pub(crate) fn psi_block(start: u64, end: u64) -> (u64, u8) {
    let mut am = 0u8;
    loop {
        let bytes = PAGE << am;
        let base = start & !(bytes - 1);
        if base.saturating_add(bytes) >= end || am >= 52 {
            return (base, am);
        }
        am += 1;
    }
}

/// The IOTLB invalidation of `[start, end)` in domain `d`: page-selective with CAP.PSI
/// and a mask within CAP.MAMV, otherwise domain-selective (PASID-selective for first
/// stage).
pub(crate) fn range_invalidation(unit: &Unit, d: &Head, start: u64, end: u64, ih: bool) -> Op {
    let did = d.id.0;
    let (addr, am) = psi_block(start, end);
    let psi = CAP::PSI.is_set(unit.cap) && (am as u64) <= CAP::MAMV.read(unit.cap);
    match (d.kind, psi) {
        (DomainKind::SecondStage, true) => Op::IotlbPage { did, addr, am, ih },
        (DomainKind::SecondStage, false) => Op::IotlbDomain { did },
        // PASID-based invalidation has no PSI gate: it always takes an address mask.
        (DomainKind::FirstStage, _) if (am as u64) <= 52 => Op::PasidIotlbPage {
            did,
            pasid: 0,
            addr,
            am,
            ih,
        },
        (DomainKind::FirstStage, _) => Op::PasidIotlbPasid { did, pasid: 0 },
    }
}

fn check_size(unit: &Unit, d: &Head, size: PageSize) -> Result<u8, Error> {
    let unsupported = || unit.err(ErrorKind::PageSizeUnsupported { did: d.id, size });
    let level = leaf_level(size).ok_or_else(unsupported)?;
    let ok = match (d.kind, level) {
        (_, 1) => true,
        (DomainKind::SecondStage, 2) => CAP::SLLPS.read(unit.cap) & 1 != 0,
        (DomainKind::SecondStage, 3) => CAP::SLLPS.read(unit.cap) & 2 != 0,
        (DomainKind::FirstStage, 2) => true,
        (DomainKind::FirstStage, 3) => CAP::FL1GP.is_set(unit.cap),
        _ => false,
    };
    if ok && level < d.levels {
        Ok(level)
    } else {
        Err(unsupported())
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn map(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    d: &Head,
    iova: Iova,
    pa: PhysAddr,
    len: u64,
    size: PageSize,
    perms: Perms,
) -> Result<(), Error> {
    let leaf = check_size(unit, d, size)?;
    let bad = |why| {
        unit.err(ErrorKind::BadRange {
            did: d.id,
            iova,
            len,
            why,
        })
    };
    let sz = size.bytes();
    if len == 0 || len % sz != 0 {
        return Err(bad("length is not a non-zero multiple of the page size"));
    }
    if iova.0 % sz != 0 || pa.0 % sz != 0 {
        return Err(bad("IOVA or physical address not aligned to the page size"));
    }
    let width = 12 + 9 * d.levels as u32;
    let end = iova.0.checked_add(len).ok_or_else(|| bad("range wraps"))?;
    if width < 64 && end > 1u64 << width {
        return Err(bad("range beyond the domain's input address width"));
    }
    let pa_end =
        pa.0.checked_add(len)
            .ok_or_else(|| bad("physical range wraps"))?;
    if unit.haw < 64 && pa_end > 1u64 << unit.haw {
        return Err(bad("physical range beyond the host address width"));
    }
    match d.kind {
        DomainKind::SecondStage if !perms.read && !perms.write => {
            return Err(unit.err(ErrorKind::PermsUnsupported {
                did: d.id,
                why: "a second-stage mapping needs read or write",
            }))
        }
        DomainKind::FirstStage if !perms.read => {
            return Err(unit.err(ErrorKind::PermsUnsupported {
                did: d.id,
                why: "first-stage pages are always readable: write-only is not expressible",
            }))
        }
        _ => {}
    }
    let mut done = 0u64;
    while done < len {
        if let Err(e) = map_one(
            unit,
            hw,
            d,
            iova.0 + done,
            PhysAddr(pa.0 + done),
            leaf,
            perms,
        ) {
            if done > 0 {
                // All or nothing: take back what this call mapped.
                let _ = unmap(unit, hw, d, iova, done);
            }
            return Err(e);
        }
        done += sz;
    }
    unit.counters.leaves_mapped += len / sz;
    if CAP::CM.is_set(unit.cap) {
        // Not-present entries may be cached: invalidate the new range.
        let op = range_invalidation(unit, d, iova.0, end, false);
        unit.invalidate(hw, &[op])
    } else {
        unit.flush_write_buffer(hw)
    }
}

fn map_one(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    d: &Head,
    iova: u64,
    pa: PhysAddr,
    leaf: u8,
    perms: Perms,
) -> Result<(), Error> {
    let st = Stage(d.kind);
    let mut table = d.root;
    let rd = mem_err(unit.base, "reading a page-table entry");
    let wr = mem_err(unit.base, "writing a page-table entry");
    for level in ((leaf + 1)..=d.levels).rev() {
        let at = PhysAddr(table.0 + level_index(iova, level as u32) * PTE_SIZE);
        let v = hw.mem.read_u64(at).map_err(&rd)?;
        if !st.present(v) {
            let t = alloc_zeroed(unit.base, hw, &mut unit.counters, "a page table")?;
            if let Err(e) = hw.mem.write_u64(at, st.table(t)) {
                hw.pages.free_page(t);
                return Err(wr(e));
            }
            if let Some(dom) = unit.domains.get_mut(&d.id.0) {
                let _ = dom.tables.insert(t, 0);
            }
            table = t;
        } else if st.is_leaf(v, level) {
            return Err(unit.err(ErrorKind::AlreadyMapped {
                did: d.id,
                iova: Iova(iova),
                level,
                entry: v,
            }));
        } else {
            let next = st.next(v);
            let known = unit
                .domains
                .get(&d.id.0)
                .is_some_and(|dom| dom.tables.contains(next));
            if !known {
                return Err(unit.err(ErrorKind::Corrupt {
                    did: d.id,
                    table,
                    level,
                    entry: v,
                    why: "points to a table page this domain never allocated",
                }));
            }
            table = next;
        }
    }
    let at = PhysAddr(table.0 + level_index(iova, leaf as u32) * PTE_SIZE);
    let v = hw.mem.read_u64(at).map_err(&rd)?;
    if st.present(v) {
        return Err(unit.err(ErrorKind::AlreadyMapped {
            did: d.id,
            iova: Iova(iova),
            level: leaf,
            entry: v,
        }));
    }
    hw.mem.write_u64(at, st.leaf(leaf, pa, perms)).map_err(&wr)
}

struct UnmapCtx {
    st: Stage,
    did: DomainId,
    start: u64,
    end: u64,
    dry: bool,
    freed: Vec<PhysAddr>,
    unmapped: u64,
    leaves: u64,
}

/// Unmaps under the level-`level` table at `table` whose first IOVA is `base`;
/// returns whether the table is now empty.
fn unmap_table(
    unit: &Unit,
    hw: &mut Hw<'_>,
    cx: &mut UnmapCtx,
    table: PhysAddr,
    level: u8,
    base: u64,
    depth: u8,
) -> Result<bool, Error> {
    let shift = level_shift(level as u32);
    let span = 1u64 << shift;
    let mut buf = [0u8; PAGE as usize];
    hw.mem
        .read(table, &mut buf)
        .map_err(mem_err(unit.base, "reading a page table"))?;
    let entry = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let first = if cx.start > base {
        (cx.start - base) >> shift
    } else {
        0
    };
    let last_excl = (((cx.end - base).saturating_add(span - 1)) >> shift).min(ENTRIES_PER_TABLE);
    let mut cleared = Vec::new();
    for i in first..last_excl {
        let v = entry(i as usize);
        if !cx.st.present(v) {
            continue;
        }
        let e_start = base + (i << shift);
        let e_end = e_start + span;
        let at = PhysAddr(table.0 + i * PTE_SIZE);
        if cx.st.is_leaf(v, level) {
            if e_start < cx.start || e_end > cx.end {
                return Err(unit.err(ErrorKind::PartialLeaf {
                    did: cx.did,
                    iova: iommu_core::Iova(e_start),
                    size: span,
                }));
            }
            cx.unmapped += span;
            cx.leaves += 1;
            cleared.push(at);
        } else {
            let next = cx.st.next(v);
            let known = unit
                .domains
                .get(&cx.did.0)
                .is_some_and(|x| x.tables.contains(next));
            if !known || depth > 6 || level <= 1 {
                return Err(unit.err(ErrorKind::Corrupt {
                    did: cx.did,
                    table,
                    level,
                    entry: v,
                    why: "points to a table page this domain never allocated",
                }));
            }
            if unmap_table(unit, hw, cx, next, level - 1, e_start, depth + 1)? {
                cleared.push(at);
                if !cx.dry {
                    cx.freed.push(next);
                }
            }
        }
    }
    if cx.dry {
        return Ok(false);
    }
    let wr = mem_err(unit.base, "clearing a page-table entry");
    for at in &cleared {
        hw.mem.write_u64(*at, 0).map_err(&wr)?;
    }
    // Empty now? Entries outside the range were not touched; re-read this table.
    for &at in &cleared {
        let off = (at.0 - table.0) as usize;
        buf[off..off + 8].fill(0);
    }
    Ok(buf.iter().all(|&b| b == 0))
}

pub(crate) fn unmap(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    d: &Head,
    iova: Iova,
    len: u64,
) -> Result<u64, Error> {
    let bad = |why| {
        unit.err(ErrorKind::BadRange {
            did: d.id,
            iova,
            len,
            why,
        })
    };
    if len == 0 || len % PAGE != 0 || iova.0 % PAGE != 0 {
        return Err(bad("IOVA and length must be 4 KiB aligned and non-zero"));
    }
    let end = iova.0.checked_add(len).ok_or_else(|| bad("range wraps"))?;
    let width = 12 + 9 * d.levels as u32;
    let end = if width < 64 {
        end.min(1u64 << width)
    } else {
        end
    };
    if iova.0 >= end {
        return Ok(0);
    }
    let mut cx = UnmapCtx {
        st: Stage(d.kind),
        did: d.id,
        start: iova.0,
        end,
        dry: true,
        freed: Vec::new(),
        unmapped: 0,
        leaves: 0,
    };
    // Pass 1 checks (no page cut, every pointer known), pass 2 clears.
    unmap_table(unit, hw, &mut cx, d.root, d.levels, 0, 0)?;
    cx.dry = false;
    cx.unmapped = 0;
    cx.leaves = 0;
    unmap_table(unit, hw, &mut cx, d.root, d.levels, 0, 0)?;
    let (unmapped, leaves, freed) = (cx.unmapped, cx.leaves, cx.freed);
    if unmapped == 0 && freed.is_empty() {
        return Ok(0);
    }
    let op = range_invalidation(unit, d, iova.0, end, freed.is_empty());
    unit.invalidate(hw, &[op])?;
    unit.counters.leaves_unmapped += leaves;
    if let Some(dom) = unit.domains.get_mut(&d.id.0) {
        for p in &freed {
            super::remove_page(&mut dom.tables, *p);
        }
    }
    for p in freed {
        hw.pages.free_page(p);
        unit.counters.pages_freed += 1;
    }
    Ok(unmapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_block_is_the_smallest_aligned_cover() {
        // One page.
        assert_eq!(psi_block(0x5000, 0x6000), (0x5000, 0));
        // Two pages aligned to two: AM 1.
        assert_eq!(psi_block(0x4000, 0x6000), (0x4000, 1));
        // Two pages straddling a 2-page boundary need a 4-page block.
        assert_eq!(psi_block(0x5000, 0x7000), (0x4000, 2));
        // A 2 MiB page: AM 9 (VT-d spec: AM 9 invalidates 512 4K pages).
        assert_eq!(psi_block(0x20_0000, 0x40_0000), (0x20_0000, 9));
        // A 1 GiB page: AM 18.
        assert_eq!(psi_block(1 << 30, 2 << 30), (1 << 30, 18));
    }

    #[test]
    fn leaf_levels() {
        assert_eq!(leaf_level(PageSize::SIZE_4K), Some(1));
        assert_eq!(leaf_level(PageSize::SIZE_2M), Some(2));
        assert_eq!(leaf_level(PageSize::SIZE_1G), Some(3));
        assert_eq!(leaf_level(PageSize::SIZE_64K), None);
    }
}
