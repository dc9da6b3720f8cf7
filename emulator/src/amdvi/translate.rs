//! The DMA path: device table lookup by DeviceID, then v1 or v2 tables.
//!
//! DTE semantics follow `shared/reference/amdvi.md` §6: V=0 forwards every address
//! untranslated; V=1 with TV=0 target-aborts the request; TV=1 with Mode 0 does not
//! translate but still applies IR/IW; Mode 1–6 walks host (v1) tables; GV=1 (with a
//! PASID, or GIoV without) walks the guest (v2) tables found through the GCR3 table.

use super::cache::IotlbEntry;
use super::AmdViUnit;
use crate::model::{Access, DmaError, DmaRequest, Translated};
use amdvi::format::{Gcr3Error, GuestV2, HostV1};
use amdvi::hw::dte::{DeviceTableEntry, Mode};
use amdvi::hw::event::{EventCode, EventEntry, EventFlags};
use amdvi::hw::regs::{self, field_mask};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::{translate, Format, Outcome, Perms, WalkErrorKind};
use iommu_core::{Iova, PageSize, PhysAddr};

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
        let Ok(format) = HostV1::from_dte(&dte) else {
            return Err(self.illegal_dte(mem, req, devid, "DTE refused by the v1 format"));
        };
        let root = dte.page_table_root();
        self.walk(mem, req, devid, &dte, &format, root, None, dte_perms)
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
        // Nested translation (guest tables holding GPAs under host Mode 1-6) is not
        // modelled; refuse it rather than translate it wrongly.
        if dte.mode() != Mode::Disabled {
            self.diag(format!(
                "DeviceID {devid:#06x}: nested v2-over-v1 translation is not modelled"
            ));
            return Err(self.illegal_dte(mem, req, devid, "nested translation not modelled"));
        }
        let Ok(format) = GuestV2::from_dte(dte) else {
            return Err(self.illegal_dte(mem, req, devid, "DTE refused by the v2 format"));
        };
        // Requests without a PASID use PASID 0's tables when GIoV=1 (§6).
        let pasid = req.pasid.map_or(0, |p| p.0);
        match format.gcr3_lookup(dte, &*mem, pasid) {
            Ok(root) => self.walk(
                mem,
                req,
                devid,
                dte,
                &format,
                root.0,
                Some(pasid),
                dte_perms,
            ),
            Err(Gcr3Error::Mem(e)) => {
                Err(self.table_hw_error(mem, req, devid, dte, dte.gcr3_root(), e))
            }
            Err(Gcr3Error::NotPresent { .. }) => {
                Err(self.page_fault(mem, req, devid, dte, Some(pasid), Why::NotPresent))
            }
            Err(_) => Err(self.illegal_dte(mem, req, devid, "GCR3 table refused")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn walk<F: Format>(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        devid: u16,
        dte: &DeviceTableEntry,
        format: &F,
        root: u64,
        pasid: Option<u32>,
        dte_perms: Perms,
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
        let t = match translate(format, &*mem, PhysAddr(root), Iova(iova)) {
            Ok(t) => t,
            Err(e) => {
                return Err(match e.kind {
                    WalkErrorKind::Memory(m) => {
                        let at = if e.index == iommu_core::pgtable::WalkError::ROOT {
                            root
                        } else {
                            e.table.0 + 8 * e.index as u64
                        };
                        self.table_hw_error(mem, req, devid, dte, at, m)
                    }
                    _ => self.page_fault(mem, req, devid, dte, pasid, Why::Reserved),
                })
            }
        };
        match t.outcome {
            Outcome::Mapped {
                pa,
                perms,
                page_size,
            } => {
                let perms = Perms {
                    read: perms.read && dte_perms.read,
                    write: perms.write && dte_perms.write,
                    exec: false,
                };
                let size = page_size.bytes();
                let off = iova & (size - 1);
                self.caches.fill(IotlbEntry {
                    domain,
                    pasid,
                    iova: iova - off,
                    size,
                    pa: pa.0 - off,
                    perms,
                });
                self.check(
                    mem,
                    req,
                    devid,
                    dte,
                    Translated {
                        pa,
                        perms,
                        page_size,
                    },
                )
            }
            Outcome::NotPresent { .. } | Outcome::BeyondInputWidth { .. } => {
                Err(self.page_fault(mem, req, devid, dte, pasid, Why::NotPresent))
            }
            // Address bits a level-skipping PDE skips must be zero (reference §7.1,
            // unconfirmed): treated as a bad-level entry (RZ).
            Outcome::SkippedBitsSet { .. } => {
                Err(self.page_fault(mem, req, devid, dte, pasid, Why::Reserved))
            }
        }
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
            let entry = EventEntry::new(
                EventCode::IoPageFault,
                devid,
                tag,
                EventFlags(f),
                req.iova.0,
            );
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
