//! Map and unmap for AMD-Vi domains: the generic algorithm of `iommu_core::pgtable` over
//! the domain's format ([`HostV1`] or [`GuestV2`]), plus the driver's argument checks,
//! the INVALIDATE_IOMMU_PAGES of what the algorithm reports it changed, and the
//! domain's table-page bookkeeping.

use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{self as pt, MapErrorKind, Partial, Perms, TableAlloc, Unmapped};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};

use super::{
    pages_command, remove_page, AnyFormat, Counters, DomainKind, Error, ErrorKind, Hw,
    PageAllocator, Unit, PAGE,
};
use crate::format::V1Attrs;
use crate::hw::cmd::InvRange;

/// The driver's page allocator and a domain's table set as the generic algorithm's
/// table hook.
struct DomainTables<'a> {
    pages: &'a mut dyn PageAllocator,
    tables: &'a mut PageSet,
    counters: &'a mut Counters,
}

impl<'a> DomainTables<'a> {
    /// The table hook of domain `did` (`None` if the unit has no such domain).
    fn of(unit: &'a mut Unit, pages: &'a mut dyn PageAllocator, did: DomainId) -> Option<Self> {
        let dom = unit.domains.get_mut(&did.0)?;
        Some(DomainTables {
            pages,
            tables: &mut dom.tables,
            counters: &mut unit.counters,
        })
    }
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

fn error(
    unit: &Unit,
    did: DomainId,
    root: PhysAddr,
    iova: Iova,
    len: u64,
    kind: MapErrorKind,
) -> Error {
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
        MapErrorKind::BeyondOutputWidth { .. } => bad("physical range beyond 52 bits"),
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
            table: root,
            level: 0,
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

#[allow(clippy::too_many_arguments)]
pub(crate) fn map(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    did: DomainId,
    iova: Iova,
    pa: PhysAddr,
    len: u64,
    size: PageSize,
    perms: Perms,
) -> Result<(), Error> {
    let (kind, root) = {
        let d = unit.domain_ref(did)?;
        (d.kind, d.root)
    };
    let f = unit.format_for(kind, did)?;
    if ![PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G].contains(&size) {
        return Err(unit.err(ErrorKind::PageSizeUnsupported { did, size }));
    }
    let bad = |why| {
        unit.err(ErrorKind::BadRange {
            did,
            iova,
            len,
            why,
        })
    };
    let sz = size.bytes();
    if len == 0 || len % sz != 0 {
        return Err(bad("length is not a non-zero multiple of the page size"));
    }
    // v1 entries have IR and IW and no execute permission; a v2 present entry is
    // always readable (write-only is not expressible), NX set unless asked.
    let perms = match kind {
        DomainKind::V1 { .. } if !perms.read && !perms.write => {
            return Err(unit.err(ErrorKind::PermsUnsupported {
                did,
                why: "a v1 mapping needs read or write",
            }))
        }
        DomainKind::V2 { .. } if !perms.read => {
            return Err(unit.err(ErrorKind::PermsUnsupported {
                did,
                why: "v2 pages are always readable: write-only is not expressible",
            }))
        }
        DomainKind::V1 { .. } => Perms {
            exec: false,
            ..perms
        },
        DomainKind::V2 { .. } => perms,
    };
    let Some(mut alloc) = DomainTables::of(unit, &mut *hw.pages, did) else {
        return Err(unit.err(ErrorKind::NoSuchDomain { did }));
    };
    let r = match &f {
        AnyFormat::V1(f) => pt::map(
            f,
            &mut *hw.mem,
            &mut alloc,
            root,
            iova,
            pa,
            len,
            size,
            perms,
            V1Attrs::default(),
        ),
        AnyFormat::V2(f) => pt::map(
            f,
            &mut *hw.mem,
            &mut alloc,
            root,
            iova,
            pa,
            len,
            size,
            perms,
            (),
        ),
    };
    match r {
        Ok(_) => {
            unit.counters.leaves_mapped += len / sz;
            Ok(())
        }
        Err(e) => {
            if e.done > 0 {
                let _ = finish_unmap(unit, hw, did, kind, iova.0, e.done, *e.rollback, true);
            }
            Err(error(unit, did, root, iova, len, e.kind))
        }
    }
}

/// Invalidates `[start, start + n)` after the algorithm changed what `u` reports
/// (PDE = 1 when table pages were freed), then frees those pages.
#[allow(clippy::too_many_arguments)]
fn finish_unmap(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    did: DomainId,
    kind: DomainKind,
    start: u64,
    n: u64,
    u: Unmapped,
    invalidate: bool,
) -> Result<u64, Error> {
    if u.bytes == 0 && u.leaves_only() {
        return Ok(0);
    }
    unit.counters.leaves_unmapped += u.leaves;
    if let Some(dom) = unit.domains.get_mut(&did.0) {
        for t in &u.freed {
            remove_page(&mut dom.tables, t.addr);
        }
    }
    if !invalidate {
        // The unit may still hold the old translations: the pages stay out of the
        // allocator for good.
        return Ok(u.bytes);
    }
    let v2 = matches!(kind, DomainKind::V2 { .. });
    let pde = !u.freed.is_empty() || !u.leaves_only();
    unit.counters.page_invalidations += 1;
    unit.commands(
        hw,
        &[pages_command(did.0, v2, InvRange::covering(start, n), pde)],
    )?;
    for t in u.freed {
        hw.pages.free_page(t.addr);
        unit.counters.pages_freed += 1;
    }
    Ok(u.bytes)
}

pub(crate) fn unmap(
    unit: &mut Unit,
    hw: &mut Hw<'_>,
    did: DomainId,
    iova: Iova,
    len: u64,
    invalidate: bool,
) -> Result<u64, Error> {
    let (kind, root) = {
        let d = unit.domain_ref(did)?;
        (d.kind, d.root)
    };
    let f = unit.format_for(kind, did)?;
    let bad = |why| {
        unit.err(ErrorKind::BadRange {
            did,
            iova,
            len,
            why,
        })
    };
    if len == 0 || len % PAGE != 0 || iova.0 % PAGE != 0 {
        return Err(bad("IOVA and length must be 4 KiB aligned and non-zero"));
    }
    iova.0.checked_add(len).ok_or_else(|| bad("range wraps"))?;
    let Some(mut alloc) = DomainTables::of(unit, &mut *hw.pages, did) else {
        return Err(unit.err(ErrorKind::NoSuchDomain { did }));
    };
    let r = match &f {
        AnyFormat::V1(f) => pt::unmap(
            f,
            &mut *hw.mem,
            &mut alloc,
            root,
            iova,
            len,
            Partial::Refuse,
        ),
        AnyFormat::V2(f) => pt::unmap(
            f,
            &mut *hw.mem,
            &mut alloc,
            root,
            iova,
            len,
            Partial::Refuse,
        ),
    };
    let u = r.map_err(|k| error(unit, did, root, iova, len, k))?;
    finish_unmap(unit, hw, did, kind, iova.0, len, u, invalidate)
}
