//! Map and unmap for VT-d domains: the generic algorithm of `iommu_core::pgtable` over
//! the domain's format ([`SecondStage`] or [`FirstStage`]), plus what is VT-d's: the
//! driver's argument checks, the IOTLB invalidation of what the algorithm reports it
//! changed, and the domain's table-page bookkeeping.

use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{self as pt, MapErrorKind, Partial, Perms, TableAlloc, Unmapped};
use iommu_core::{Iova, PageSize, PhysAddr};

use super::inval::Op;
use super::{
    remove_page, Counters, DomainKind, Error, ErrorKind, Head, Hw, PageAllocator, Unit, PAGE,
};
use crate::format::{FirstStage, SecondStage};
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

/// The driver's page allocator and a domain's table set, as the table hook of the
/// generic algorithm: pages are 4 KiB, every page handed out joins the domain's set
/// (which is what the algorithm may follow), and one never linked goes back at once.
struct DomainTables<'a> {
    pages: &'a mut dyn PageAllocator,
    tables: &'a mut PageSet,
    counters: &'a mut Counters,
}

impl TableAlloc for DomainTables<'_> {
    fn alloc_table(&mut self, _level: u8, bytes: u64) -> Option<PhysAddr> {
        if bytes != PAGE {
            return None;
        }
        let p = self.pages.alloc_page()?;
        if self.tables.insert(p, 0).is_err() {
            self.pages.free_page(p);
            return None;
        }
        self.counters.pages_allocated += 1;
        Some(p)
    }
    fn free_unlinked(&mut self, table: PhysAddr, _bytes: u64) {
        remove_page(self.tables, table);
        self.pages.free_page(table);
    }
    fn owns(&self, table: PhysAddr) -> bool {
        self.tables.contains(table)
    }
}

/// Runs `op` with domain `d`'s format, memory and table hook.
fn with_domain<R>(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    d: &Head,
    op: impl FnOnce(Format<'_>, &mut dyn PhysMem, &mut DomainTables<'_>) -> R,
) -> Result<R, Error> {
    let f = unit.format_for(d.kind, d.levels, d.id)?;
    let Some(dom) = unit.domains.get_mut(&d.id.0) else {
        return Err(unit.err(ErrorKind::NoSuchDomain { did: d.id }));
    };
    let mut alloc = DomainTables {
        pages: &mut *hw.pages,
        tables: &mut dom.tables,
        counters: &mut unit.counters,
    };
    let f = match &f {
        super::AnyFormat::Second(s) => Format::Second(s),
        super::AnyFormat::First(s) => Format::First(s),
    };
    Ok(op(f, &mut *hw.mem, &mut alloc))
}

/// A borrowed format of either stage (the generic algorithm runs monomorphized on each).
#[derive(Clone, Copy)]
enum Format<'a> {
    Second(&'a SecondStage),
    First(&'a FirstStage),
}

/// The algorithm's error as a driver error of domain `d`.
fn error(unit: &Unit, d: &Head, iova: Iova, len: u64, kind: MapErrorKind) -> Error {
    let did = d.id;
    let bad = |why| ErrorKind::BadRange {
        did,
        iova,
        len,
        why,
    };
    unit.err(match kind {
        MapErrorKind::SizeUnsupported { size } => ErrorKind::PageSizeUnsupported { did, size },
        MapErrorKind::Misaligned { .. } => bad("not aligned to the page size"),
        MapErrorKind::BeyondInputWidth { .. } => {
            bad("range beyond the domain's input address width")
        }
        MapErrorKind::BeyondOutputWidth { .. } => {
            bad("physical range beyond the host address width")
        }
        MapErrorKind::Unencodable(e) => ErrorKind::PermsUnsupported { did, why: e.reason },
        MapErrorKind::AlreadyMapped { iova, level, entry } => ErrorKind::AlreadyMapped {
            did,
            iova,
            level,
            entry,
        },
        MapErrorKind::PartialLeaf { iova, span, .. } => ErrorKind::PartialLeaf {
            did,
            iova,
            size: span,
        },
        MapErrorKind::Corrupt {
            table,
            level,
            entry,
            why,
        } => ErrorKind::Corrupt {
            did,
            table,
            level,
            entry,
            why,
        },
        MapErrorKind::BadGeometry { reason } => ErrorKind::Corrupt {
            did,
            table: d.root,
            level: d.levels,
            entry: 0,
            why: reason,
        },
        MapErrorKind::Memory(err) => ErrorKind::Mem {
            what: "a page-table access",
            err,
        },
        MapErrorKind::OutOfTables => ErrorKind::OutOfPages {
            what: "a page table",
        },
    })
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
    check_size(unit, d, size)?;
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
    // The entries the driver writes: second-stage leaves without X (execute requests
    // are not enabled), first-stage leaves without XD (as Linux maps them).
    let perms = match d.kind {
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
        DomainKind::SecondStage => Perms {
            exec: false,
            ..perms
        },
        DomainKind::FirstStage => Perms {
            exec: true,
            ..perms
        },
    };
    let r = with_domain(unit, hw, d, |f, mem, alloc| match f {
        Format::Second(f) => pt::map(f, mem, alloc, d.root, iova, pa, len, size, perms, ()),
        Format::First(f) => pt::map(f, mem, alloc, d.root, iova, pa, len, size, perms, ()),
    })?;
    match r {
        Ok(_) => {}
        Err(e) => {
            if e.done > 0 {
                // All or nothing: the algorithm took back what this call mapped;
                // invalidate and free after it as an unmap does.
                let _ = finish_unmap(unit, hw, d, iova.0, iova.0 + e.done, *e.rollback);
            }
            return Err(error(unit, d, iova, len, e.kind));
        }
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

/// Invalidates `[start, end)` after the algorithm changed what `u` reports (the
/// invalidation hint only when no table entry changed), then frees the unlinked table
/// pages. Returns the bytes unmapped.
fn finish_unmap(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    d: &Head,
    start: u64,
    end: u64,
    u: Unmapped,
) -> Result<u64, Error> {
    if u.bytes == 0 && u.leaves_only() {
        return Ok(0);
    }
    let op = range_invalidation(unit, d, start, end, u.leaves_only());
    unit.invalidate(hw, &[op])?;
    unit.counters.leaves_unmapped += u.leaves;
    if let Some(dom) = unit.domains.get_mut(&d.id.0) {
        for t in &u.freed {
            remove_page(&mut dom.tables, t.addr);
        }
    }
    for t in u.freed {
        hw.pages.free_page(t.addr);
        unit.counters.pages_freed += 1;
    }
    Ok(u.bytes)
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
    let n = end - iova.0;
    let r = with_domain(unit, hw, d, |f, mem, alloc| match f {
        Format::Second(f) => pt::unmap(f, mem, alloc, d.root, iova, n, Partial::Refuse),
        Format::First(f) => pt::unmap(f, mem, alloc, d.root, iova, n, Partial::Refuse),
    })?;
    let u = r.map_err(|k| error(unit, d, iova, len, k))?;
    finish_unmap(unit, hw, d, iova.0, end, u)
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
