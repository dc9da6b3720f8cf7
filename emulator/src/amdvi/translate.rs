//! The DMA path: device table lookup by DeviceID, then v1 or v2 tables.
//!
//! DTE semantics follow `shared/reference/amdvi.md` §6: V=0 forwards every address
//! untranslated; V=1 with TV=0 target-aborts the request; TV=1 with Mode 0 does not
//! translate but still applies IR/IW; Mode 1–6 walks host (v1) tables; GV=1 (with a
//! PASID, or GIoV without) walks the guest (v2) tables found through the GCR3 table;
//! with GV=1 and Mode 1–6 the translation is nested: the GCR3 table, every guest table
//! and the guest output are GPAs, each translated through the host (v1) tables. A
//! host-table fault of a nested walk is an IO_PAGE_FAULT with GN=0, the DomainID and
//! the GPA (the reference names no layout for it; the model's choice).

use super::cache::IotlbEntry;
use super::walk;
use super::AmdViUnit;
use crate::model::{Access, DmaError, DmaRequest, Translated};
use amdvi::hw::dte::{DeviceTableEntry, Mode};
use amdvi::hw::event::{EventCode, EventEntry, EventFlags};
use amdvi::hw::regs::{self, field_mask};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::Perms;
use iommu_core::{PageSize, PhysAddr};

/// Read and write, nothing else: what untranslated DMA gets.
const RW: Perms = Perms {
    read: true,
    write: true,
    exec: false,
};

/// What an I/O page fault was about (IO_PAGE_FAULT flags, reference §10).
#[derive(Clone, Copy)]
enum Why {
    /// Entry not present (PR=0).
    NotPresent,
    /// Present but without the permission (PR=1, PE=1).
    Permission,
    /// Reserved bit or bad level in an entry (PR=1, RZ=1).
    Reserved,
}

impl AmdViUnit {
    pub(super) fn translate_request(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        let iova = req.iova.0;
        // IommuEn=0: DMA is not translated (reference §8, QEMU).
        if !self.iommu_en() {
            return Ok(identity(iova, RW));
        }
        let devid = req.rid.sid();
        // A request from a DeviceID outside the unit's IVRS range never reaches it on a
        // real platform; the model refuses to translate it rather than guess.
        if !self.covers(devid) {
            self.diag(format!("DeviceID {devid:#06x} is not behind this unit"));
            return Err(self.fault(req, 0, "DeviceID outside the unit's IVRS range", false));
        }
        let dte = self.device_table_entry(mem, req, devid)?;
        // V=0: every address forwarded untranslated, other fields ignored (§6).
        if !dte.valid() {
            return Ok(identity(iova, RW));
        }
        if dte.reserved_bits() != [0; 4] || dte.mode() == Mode::Reserved {
            return Err(self.illegal_dte(mem, req, devid, "reserved DTE bits or Mode 7"));
        }
        // V=1, TV=0: no page-table information; the request is target-aborted (§6,
        // QEMU quoting the specification). The reference names no event for it.
        if !dte.translation_valid() {
            return Err(self.fault(req, 0, "target abort: DTE V=1, TV=0", false));
        }
        if self.excluded(&dte, iova) {
            return Ok(identity(iova, RW));
        }
        let dte_perms = Perms {
            read: dte.ir(),
            write: dte.iw(),
            exec: false,
        };
        let guest = dte.guest_valid() && (req.pasid.is_some() || dte.giov());
        if req.pasid.is_some() && !dte.guest_valid() {
            return Err(self.illegal_dte(mem, req, devid, "PASID request to a DTE with GV=0"));
        }
        if guest {
            return self.translate_guest(mem, req, devid, &dte, dte_perms);
        }
        let levels = match dte.mode() {
            // TV=1, Mode 0: no translation, IR/IW still apply (§6, QEMU).
            Mode::Disabled => {
                return self.check(mem, req, devid, &dte, identity(iova, dte_perms));
            }
            Mode::Levels(n) => n,
            Mode::Reserved => {
                return Err(self.illegal_dte(mem, req, devid, "DTE Mode 7 is reserved"));
            }
        };
        if regs::host_levels(self.cfg.efr).map_or(true, |max| levels > max) {
            return Err(self.illegal_dte(mem, req, devid, "Mode beyond EFR.HATS"));
        }
        let (root, c_bit) = (dte.page_table_root(), self.cfg.c_bit);
        self.walk(mem, req, devid, &dte, None, dte_perms, |mem| {
            let mut read = plain(mem);
            walk::v1(&mut read, root, levels, iova, c_bit).map_err(|f| (f, None))
        })
    }

    fn translate_guest(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        dte_perms: Perms,
    ) -> Result<Translated, DmaError> {
        if !self.regs.ctl(regs::CONTROL::GT_EN) || regs::EFR::GT_SUP.read(self.cfg.efr) == 0 {
            return Err(self.illegal_dte(mem, req, devid, "GV=1 without Control.GTEn / EFR.GTSup"));
        }
        let Some(glevels) = dte.guest_paging_mode().levels() else {
            return Err(self.illegal_dte(mem, req, devid, "GuestPagingMode 2 or 3 is reserved"));
        };
        if regs::guest_levels(self.cfg.efr).map_or(true, |max| glevels > max) {
            return Err(self.illegal_dte(mem, req, devid, "GuestPagingMode beyond EFR.GATS"));
        }
        // Nested translation (DTE Mode 1-6 with GV=1): the GCR3 table pointer, the
        // GCR3 entries and every guest table pointer are GPAs, and so is the guest
        // walk's output; each is translated through the host (v1) tables of Mode
        // levels (reference §6 GV/Mode, §7.2). Mode 0: they are SPAs.
        let host = match dte.mode() {
            Mode::Disabled => None,
            Mode::Levels(n) => {
                if regs::host_levels(self.cfg.efr).map_or(true, |max| n > max) {
                    return Err(self.illegal_dte(mem, req, devid, "Mode beyond EFR.HATS"));
                }
                Some((dte.page_table_root(), n))
            }
            Mode::Reserved => {
                return Err(self.illegal_dte(mem, req, devid, "DTE Mode 7 is reserved"));
            }
        };
        // Requests without a PASID use PASID 0's tables when GIoV=1 (§6).
        let pasid = req.pasid.map_or(0, |p| p.0);
        let Some(top) = walk::gcr3_top(dte, pasid) else {
            return Err(self.illegal_dte(mem, req, devid, "GCR3 table: GLX 3 or PASID too wide"));
        };
        let (iova, c_bit, d) = (req.iova.0, self.cfg.c_bit, *dte);
        self.walk(mem, req, devid, dte, Some(pasid), dte_perms, |mem| {
            let mut host_fail = None;
            let r = {
                let mut read = guest_reader(mem, host, c_bit, &mut host_fail);
                walk::gcr3(&mut read, &d, top, pasid, c_bit)
                    .and_then(|root| walk::v2(&mut read, root, glevels, iova, c_bit))
            };
            let r = r.map_err(|f| (f, host_fail));
            // The guest output is a GPA: translate it through the host tables.
            match (r, host) {
                (Ok(g), Some((hroot, hlevels))) => {
                    let mut read = plain(mem);
                    match walk::v1(&mut read, hroot, hlevels, g.pa, c_bit) {
                        Ok(h) => Ok(walk::Leaf {
                            pa: h.pa,
                            read: g.read && h.read,
                            write: g.write && h.write,
                            shift: g.shift.min(h.shift),
                        }),
                        Err(f) => Err((f, Some(g.pa))),
                    }
                }
                (r, _) => r,
            }
        })
    }

    /// The IOTLB, then `walk_fn` on a miss: fills the IOTLB and applies the access
    /// check, or reports the walk's fault. A fault with a GPA happened in the host
    /// tables of a nested walk: IO_PAGE_FAULT with GN=0, the DomainID and the GPA (the
    /// model's choice; the reference names no layout for it).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        pasid: Option<u32>,
        dte_perms: Perms,
        walk_fn: impl FnOnce(&dyn PhysMem) -> Result<walk::Leaf, (walk::Fault, Option<u64>)>,
    ) -> Result<Translated, DmaError> {
        let iova = req.iova.0;
        let domain = dte.domain_id();
        if let Some(e) = self.caches.lookup(domain, pasid, iova) {
            let t = Translated {
                pa: PhysAddr(e.pa + (iova - e.iova)),
                perms: e.perms,
                page_size: PageSize::new(e.size).unwrap_or(PageSize::SIZE_4K),
            };
            return self.check(mem, req, devid, dte, t);
        }
        let leaf = match walk_fn(&*mem) {
            Ok(l) => l,
            Err((walk::Fault::Memory { at, error }, _)) => {
                return Err(self.table_hw_error(mem, req, devid, dte, at, error))
            }
            Err((f, gpa)) => {
                let why = match f {
                    walk::Fault::NotPresent => Why::NotPresent,
                    walk::Fault::Permission => Why::Permission,
                    _ => Why::Reserved,
                };
                return Err(match gpa {
                    Some(gpa) => self.page_fault_at(mem, req, devid, dte, None, why, gpa),
                    None => self.page_fault(mem, req, devid, dte, pasid, why),
                });
            }
        };
        let perms = Perms {
            read: leaf.read && dte_perms.read,
            write: leaf.write && dte_perms.write,
            exec: false,
        };
        let size = 1u64 << leaf.shift;
        let off = iova & (size - 1);
        self.caches.fill(IotlbEntry {
            domain,
            pasid,
            iova: iova - off,
            size,
            pa: leaf.pa - off,
            perms,
        });
        let page_size = PageSize::from_shift(leaf.shift).unwrap_or(PageSize::SIZE_4K);
        self.check(
            mem,
            req,
            devid,
            dte,
            Translated {
                pa: PhysAddr(leaf.pa),
                perms,
                page_size,
            },
        )
    }

    /// Applies the access check to a translation (IR for reads, IW for writes).
    fn check(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        t: Translated,
    ) -> Result<Translated, DmaError> {
        let ok = match req.access {
            Access::Read => t.perms.read,
            Access::Write => t.perms.write,
        };
        if ok {
            Ok(t)
        } else {
            let pasid = (dte.guest_valid() && (req.pasid.is_some() || dte.giov()))
                .then(|| req.pasid.map_or(0, |p| p.0));
            Err(self.page_fault(mem, req, devid, dte, pasid, Why::Permission))
        }
    }

    /// The DTE of `devid`, from the cache or the device table (then cached).
    fn device_table_entry(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
    ) -> Result<DeviceTableEntry, DmaError> {
        if let Some(d) = self.caches.dte(devid) {
            return Ok(d);
        }
        let dtb = self.regs.dev_tab_base;
        // A DeviceID beyond the table's Size (reference §2): the entry does not exist;
        // reported as ILLEGAL_DEV_TABLE_ENTRY (the reference names no event; unconfirmed).
        if devid as u32 >= regs::devtab_entries(regs::DEV_TAB_BASE::SIZE.read(dtb)) {
            return Err(self.illegal_dte(mem, req, devid, "DeviceID beyond the device table Size"));
        }
        let at = (dtb & field_mask(regs::DEV_TAB_BASE::BASE)) + devid as u64 * regs::DTE_BYTES;
        let mut q = [0u64; 4];
        for (i, v) in q.iter_mut().enumerate() {
            match mem.read_u64(PhysAddr(at + 8 * i as u64)) {
                Ok(x) => *v = x,
                Err(e) => {
                    let flags = rw_flag(req);
                    let entry =
                        EventEntry::new(EventCode::DevTabHardwareError, devid, 0, flags, at & !0xf);
                    let recorded = self.log_event(mem, entry);
                    self.fault(req, 3, "DEV_TAB_HARDWARE_ERROR", recorded);
                    return Err(DmaError::Memory {
                        unit: self.cfg.base,
                        request: *req,
                        error: e,
                    });
                }
            }
        }
        let dte = DeviceTableEntry::from_qwords(q);
        self.caches.fill_dte(devid, dte);
        Ok(dte)
    }

    /// Whether the exclusion range covers `iova` for this device: ExEn, and Allow or
    /// DTE.EX (reference §1 and §6).
    fn excluded(&self, dte: &DeviceTableEntry, iova: u64) -> bool {
        let b = self.regs.excl_base;
        if regs::EXCL_BASE::EX_EN.read(b) == 0 {
            return false;
        }
        if regs::EXCL_BASE::ALLOW.read(b) == 0 && !dte.exclusion() {
            return false;
        }
        let first = b & field_mask(regs::EXCL_BASE::BASE);
        let last = self.regs.excl_limit | 0xfff;
        (first..=last).contains(&iova)
    }

    fn illegal_dte(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        why: &'static str,
    ) -> DmaError {
        let flags = EventFlags(rw_flag(req).0 | EventFlags::RZ);
        let pasid = req.pasid.map_or(0, |p| p.0);
        let entry = EventEntry::new(
            EventCode::IllegalDevTableEntry,
            devid,
            pasid,
            flags,
            req.iova.0 & !3,
        );
        let recorded = self.log_event(mem, entry);
        self.diag(format!("DeviceID {devid:#06x}: illegal DTE: {why}"));
        self.fault(req, 1, "ILLEGAL_DEV_TABLE_ENTRY", recorded)
    }

    fn page_fault(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        pasid: Option<u32>,
        why: Why,
    ) -> DmaError {
        self.page_fault_at(mem, req, devid, dte, pasid, why, req.iova.0)
    }

    /// An IO_PAGE_FAULT about address `addr` (the DVA, or a GPA of a nested walk).
    #[allow(clippy::too_many_arguments)]
    fn page_fault_at(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        pasid: Option<u32>,
        why: Why,
        addr: u64,
    ) -> DmaError {
        let mut f = rw_flag(req).0;
        f |= match why {
            Why::NotPresent => 0,
            Why::Permission => EventFlags::PR | EventFlags::PE,
            Why::Reserved => EventFlags::PR | EventFlags::RZ,
        };
        let tag = match pasid {
            Some(p) => {
                f |= EventFlags::GN;
                p
            }
            None => dte.domain_id() as u32,
        };
        // DTE.SA and DTE.SE suppress IO_PAGE_FAULT events for the device (reference §6);
        // the request is still aborted.
        let recorded = if dte.suppress_all() || dte.suppress_events() {
            false
        } else {
            let entry = EventEntry::new(EventCode::IoPageFault, devid, tag, EventFlags(f), addr);
            self.log_event(mem, entry)
        };
        self.fault(req, 2, "IO_PAGE_FAULT", recorded)
    }

    fn table_hw_error(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        at: u64,
        error: MemError,
    ) -> DmaError {
        let entry = EventEntry::new(
            EventCode::PageTabHardwareError,
            devid,
            dte.domain_id() as u32,
            rw_flag(req),
            at & !7,
        );
        let recorded = self.log_event(mem, entry);
        self.fault(req, 4, "PAGE_TAB_HARDWARE_ERROR", recorded);
        DmaError::Memory {
            unit: self.cfg.base,
            request: *req,
            error,
        }
    }

    /// Records a fault in the fault log and returns it as a DMA error.
    fn fault(
        &mut self,
        req: &DmaRequest,
        code: u32,
        reason: &'static str,
        recorded: bool,
    ) -> DmaError {
        let ev = req.fault(self.cfg.base, code, reason, recorded);
        self.faults.push(ev.clone());
        DmaError::Fault(ev)
    }
}

fn rw_flag(req: &DmaRequest) -> EventFlags {
    EventFlags(if req.access == Access::Write {
        EventFlags::RW
    } else {
        0
    })
}

fn identity(iova: u64, perms: Perms) -> Translated {
    Translated {
        pa: PhysAddr(iova),
        perms,
        page_size: PageSize::SIZE_4K,
    }
}

/// Reads 8-byte table entries from system memory.
fn plain(mem: &dyn PhysMem) -> impl FnMut(u64) -> Result<u64, walk::Fault> + '_ {
    move |at| {
        mem.read_u64(PhysAddr(at))
            .map_err(|error| walk::Fault::Memory { at, error })
    }
}

/// Reads guest structures: at their address directly (no host tables), or at the SPA
/// the host (v1) tables `host` give the GPA (read permission needed); a host-table
/// fault records the GPA in `host_fail`.
fn guest_reader<'a>(
    mem: &'a dyn PhysMem,
    host: Option<(u64, u8)>,
    c_bit: Option<u8>,
    host_fail: &'a mut Option<u64>,
) -> impl FnMut(u64) -> Result<u64, walk::Fault> + 'a {
    move |gpa| {
        let mut read = plain(mem);
        let Some((root, levels)) = host else {
            return read(gpa);
        };
        match walk::v1(&mut read, root, levels, gpa, c_bit) {
            Ok(h) if h.read => read(h.pa),
            Ok(_) => {
                *host_fail = Some(gpa);
                Err(walk::Fault::Permission)
            }
            Err(f @ walk::Fault::Memory { .. }) => Err(f),
            Err(f) => {
                *host_fail = Some(gpa);
                Err(f)
            }
        }
    }
}
