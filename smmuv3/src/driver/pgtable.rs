//! Map and unmap for SMMUv3 domains: the generic algorithm of `iommu_core::pgtable`
//! over the domain's [`Vmsa`] format of either stage, with tables of the granule's size
//! (and concatenated stage-2 start tables) from the driver's pages, the TLB
//! invalidation of what was unmapped, and for nested domains the stage-2 identity map
//! of every stage-1 table page (the SMMU walks stage-1 tables through stage 2,
//! reference §13).

use alloc::format;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{self as pt, Partial, Perms, TableAlloc};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};

use super::{alloc_block, cmdq, free_block, Counters, Error, ErrorKind, Hw, Pages, Unit, PAGE};
use crate::format::{Attrs, Vmsa};
use crate::hw::cmd::{Cmd, Opcode};

/// The driver's pages and a domain's table set as the table hook of the generic
/// algorithm: every table handed out joins the set, one never linked goes back.
pub(crate) struct DomainTables<'a> {
    pub(crate) unit: PhysAddr,
    pub(crate) pages: &'a mut dyn Pages,
    pub(crate) tables: &'a mut PageSet,
    pub(crate) counters: &'a mut Counters,
}

impl TableAlloc for DomainTables<'_> {
    fn alloc_table(&mut self, _level: u8, bytes: u64) -> Option<PhysAddr> {
        // The generic algorithm zeroes the table it gets.
        let bytes = bytes.max(PAGE);
        let p = alloc_block(self.unit, self.pages, self.counters, bytes, "page table").ok()?;
        if self.tables.insert_range(p, bytes / PAGE).is_err() {
            free_block(self.pages, self.counters, p, bytes);
            return None;
        }
        Some(p)
    }
    fn free_unlinked(&mut self, table: PhysAddr, bytes: u64) {
        let bytes = bytes.max(PAGE);
        for i in 0..bytes / PAGE {
            iommu_core::pool::remove_page(self.tables, PhysAddr(table.0 + i * PAGE));
        }
        free_block(self.pages, self.counters, table, bytes);
    }
    fn owns(&self, table: PhysAddr) -> bool {
        self.tables.contains(table)
    }
}

impl Unit {
    /// Maps `[iova, iova + len)` to `[pa, pa + len)` with `size` pages in domain `did`:
    /// stage-1 tables for stage-1 and nested domains (a nested domain also maps the
    /// output range identically at stage 2), stage-2 tables for stage-2 domains.
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        size: PageSize,
        perms: Perms,
    ) -> Result<(), Error> {
        let d = self.domain_mut_checked(did)?;
        let (stage, s1, s2) = (d.stage, d.s1, d.s2);
        if let Some((f, root)) = s1 {
            let tables = self.map_in(hw, did, &f, root, iova, pa, len, size, perms)?;
            if let (true, Some((f2, root2))) = (stage.s2(), s2) {
                // Stage-1 output addresses are IPAs: the same range, identity, at stage 2.
                self.identity(hw, did, &f2, root2, pa, len, size)?;
                for t in tables {
                    let g = f.granule().bytes();
                    self.identity(hw, did, &f2, root2, t, g, granule_page(g))?;
                }
            }
        } else if let Some((f, root)) = s2 {
            self.map_in(hw, did, &f, root, iova, pa, len, size, perms)?;
        }
        Ok(())
    }

    /// Maps `[pa, pa + len)` to itself at stage 2 of nested domain `did` with `size`
    /// pages, skipping what is already identity-mapped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn identity(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        f: &Vmsa,
        root: PhysAddr,
        pa: PhysAddr,
        len: u64,
        size: PageSize,
    ) -> Result<(), Error> {
        let mut a = pa.0;
        while a < pa.0 + len {
            let done = self
                .domains
                .get(&did.0)
                .is_some_and(|d| d.identity.contains(&a));
            // Already identity-mapped (tables adopted from the previous kernel)?
            let mapped = |x: u64| {
                pt::translate(f, &*hw.mem, root, Iova(x)).is_ok_and(|t| t.pa() == Some(PhysAddr(x)))
            };
            let done = done || (mapped(a) && mapped(a + size.bytes() - 1));
            if !done {
                // Stage-2 tables are walked by PA: nothing more to map for them.
                self.map_in(
                    hw,
                    did,
                    f,
                    root,
                    Iova(a),
                    PhysAddr(a),
                    size.bytes(),
                    size,
                    Perms::RW,
                )?;
                if let Some(d) = self.domains.get_mut(&did.0) {
                    d.identity.insert(a);
                }
            }
            a += size.bytes();
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn map_in(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        f: &Vmsa,
        root: PhysAddr,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        size: PageSize,
        perms: Perms,
    ) -> Result<alloc::vec::Vec<PhysAddr>, Error> {
        let unit = self.base;
        let Some(d) = self.domains.get_mut(&did.0) else {
            return Err(Error::new(unit, ErrorKind::NoSuchDomain { did }));
        };
        let mut alloc = DomainTables {
            unit,
            pages: &mut *hw.pages,
            tables: &mut d.tables,
            counters: &mut self.counters,
        };
        let r = pt::map(
            f,
            &mut *hw.mem,
            &mut alloc,
            root,
            iova,
            pa,
            len,
            size,
            perms,
            Attrs::default(),
        );
        r.map(|m| m.tables)
            .map_err(|e| refused(unit, did, iova, len, size, e))
    }

    /// Unmaps `[iova, iova + len)` of stage-1 or stage-2 domain `did` (the stage that
    /// translates IOVAs), invalidates the domain's TLB entries (TLBI_NH_ASID or
    /// TLBI_S12_VMALL, CMD_SYNC) and frees the tables left empty. Returns bytes unmapped.
    pub fn unmap(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        iova: Iova,
        len: u64,
    ) -> Result<u64, Error> {
        let unit = self.base;
        self.domain_mut_checked(did)?;
        let Some(d) = self.domains.get_mut(&did.0) else {
            return Err(Error::new(unit, ErrorKind::NoSuchDomain { did }));
        };
        let (f, root) =
            d.s1.or(d.s2)
                .ok_or(Error::new(unit, ErrorKind::NoSuchDomain { did }))?;
        let (asid, vmid, s1) = (d.asid, d.vmid, d.s1.is_some());
        let mut alloc = DomainTables {
            unit,
            pages: &mut *hw.pages,
            tables: &mut d.tables,
            counters: &mut self.counters,
        };
        let u = pt::unmap(
            &f,
            &mut *hw.mem,
            &mut alloc,
            root,
            iova,
            len,
            Partial::Refuse,
        )
        .map_err(|e| refused(unit, did, iova, len, granule_page(f.granule().bytes()), e))?;
        let tlbi = if s1 {
            Cmd::tlbi(Opcode::TlbiNhAsid, vmid, asid)
        } else {
            Cmd::tlbi(Opcode::TlbiS12Vmall, vmid, 0)
        };
        self.issue(hw, &[tlbi, cmdq::sync()])?;
        // Invalidated: the tables left empty go back.
        if let Some(d) = self.domains.get_mut(&did.0) {
            let mut alloc = DomainTables {
                unit,
                pages: &mut *hw.pages,
                tables: &mut d.tables,
                counters: &mut self.counters,
            };
            for t in &u.freed {
                alloc.free_unlinked(t.addr, t.bytes);
            }
        }
        Ok(u.bytes)
    }
}

/// A map or unmap the generic algorithm refused, as a driver error.
fn refused(
    unit: PhysAddr,
    did: DomainId,
    iova: Iova,
    len: u64,
    size: PageSize,
    why: impl core::fmt::Display,
) -> Error {
    Error::new(
        unit,
        ErrorKind::Map {
            did,
            iova,
            len,
            size,
            why: format!("{why}"),
        },
    )
}

/// The page size of a granule.
fn granule_page(bytes: u64) -> PageSize {
    PageSize::new(bytes).unwrap_or(PageSize::SIZE_4K)
}
