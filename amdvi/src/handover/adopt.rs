//! New kernel: adopt (the blackout path), verify (full walk), finish.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;
use iommu_core::kho::record::Supported;
use iommu_core::kho::{read_client_record, read_handover, read_preserved};
use iommu_core::pageset::{PageSet, PAGE_SIZE};
use iommu_core::{DomainId, PhysAddr};

use super::record::{DomainKind, Record, RecordDomain, FAMILY, VERSION};
use super::tree::verify_tree;
use super::{
    add_page, client_name, first_missing, HandoverError, HandoverErrorKind as K, Incoming,
};
use crate::driver::AnyFormat;
use crate::driver::{
    irt_pages, is_blocking, read_dte, write_dte, Device, DeviceState, Domain, DomainState, Hw,
    Rings, Unit, UnitConfig, PAGE,
};
use crate::format::GuestV2;
use crate::hw::dte::{DeviceTableEntry, GuestPagingMode};
use crate::hw::event::Event;
use crate::hw::regs::{self, field_mask, CONTROL, DEV_TAB_BASE, EXCL_LIMIT};

/// A device adoption refused: it is blocked, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedDevice {
    /// The DeviceID.
    pub device_id: u16,
    /// Why it was blocked.
    pub error: HandoverError,
}

/// What `adopt` did. The blackout work is `registers_read + entries_read`: it grows
/// with units, domains, devices and the device table, not with mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Register accesses.
    pub registers_read: u64,
    /// DTEs and GCR3 entries read (the device-table sweep included).
    pub entries_read: u64,
    /// Domains adopted.
    pub domains: usize,
    /// Devices adopted.
    pub devices: usize,
    /// Devices blocked, with the reason.
    pub blocked: Vec<BlockedDevice>,
    /// Domains refused, with the reason (their devices are in `blocked`).
    pub refused_domains: Vec<(DomainId, HandoverError)>,
    /// Translating DTEs the record does not account for, made blocking.
    pub unknown_entries_blocked: u64,
    /// Events in the fresh event log once adoption was done (the old log is not
    /// preserved).
    pub stale_events: Vec<Event>,
    /// Bytes of the record payload.
    pub record_bytes: u64,
}

/// `adopt` refused the unit as a whole: every DTE of the live device table is made
/// blocking (IommuEn on), so all DMA faults.
#[derive(Debug)]
pub struct AdoptFailure {
    /// Why.
    pub error: HandoverError,
    /// The unit in its blocking state; `None` if even that could not be set up.
    pub unit: Option<Box<Unit>>,
    /// DeviceIDs the record named (empty when the record could not be read).
    pub blocked_devices: Vec<u16>,
}

/// What `verify` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Domains walked.
    pub domains: usize,
    /// Table pages checked.
    pub tables: u64,
    /// Leaf entries found.
    pub leaves: u64,
    /// Entries read (512 per table page).
    pub entries_read: u64,
    /// Mapping runs whose targets were checked (preserved, not a record page).
    pub leaf_targets_checked: u64,
    /// Domains refused, with the reason; their devices are blocked.
    pub failures: Vec<(DomainId, HandoverError)>,
    /// Devices blocked because their domain was refused.
    pub blocked: Vec<u16>,
    /// Record page runs holding pages no verified structure accounts for.
    pub unverified_runs: Vec<HandoverError>,
}

/// What `finish` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// The verification `finish` had to do itself.
    pub verify: VerifyReport,
    /// Structure pages no longer referenced, freed.
    pub pages_freed: u64,
    /// Pages of the record's runs kept, never freed (not verified as structures).
    pub pages_kept: u64,
    /// Pages of the record released.
    pub record_pages_freed: u64,
    /// Domains now live.
    pub domains: usize,
    /// Devices now live.
    pub devices: usize,
}

/// A device whose DTE passed adoption: DeviceID, domain, interrupt-remapping table.
type Adoptee = (u16, DomainId, Option<(PhysAddr, u64)>);

struct FromBlob {
    record: Record,
    record_pa: PhysAddr,
    record_bytes: u64,
    preserved: PageSet,
}

fn read_blob(
    hw: &mut Hw<'_>,
    base: PhysAddr,
    blob: PhysAddr,
    preserved: Option<PageSet>,
) -> Result<FromBlob, HandoverError> {
    let e = |kind| HandoverError::new(base, kind);
    let h = read_handover(&*hw.mem, blob).map_err(|x| e(K::Kho(x)))?;
    let preserved = match preserved {
        Some(p) => p,
        None => read_preserved(&*hw.mem, blob).map_err(|x| e(K::Kho(x)))?,
    };
    let name = client_name(base);
    let supported = Supported {
        family: FAMILY,
        oldest: VERSION,
        newest: VERSION,
    };
    let rec = read_client_record(&*hw.mem, &h, &name, &supported).map_err(|x| e(K::Kho(x)))?;
    let record_pa = h.client(&name).unwrap_or(PhysAddr(0));
    let record = Record::decode(&rec.payload).map_err(|err| {
        e(K::Malformed {
            record: record_pa,
            err,
        })
    })?;
    Ok(FromBlob {
        record,
        record_pa,
        record_bytes: rec.payload.len() as u64,
        preserved,
    })
}

/// The guest root PASID 0 of a v2 record domain translates through.
fn v2_root(hw: &Hw<'_>, d: &RecordDomain) -> Result<PhysAddr, &'static str> {
    let DomainKind::V2 { levels, glx } = d.kind else {
        return Err("not a v2 domain");
    };
    let mut e = DeviceTableEntry::blocking(d.id.0);
    let gpm = if levels == 5 {
        GuestPagingMode::Level5
    } else {
        GuestPagingMode::Level4
    };
    e.set_guest(d.root.0, glx, true, gpm);
    let f = GuestV2::new(levels).map_err(|_| "v2 levels")?;
    f.gcr3_lookup(&e, &*hw.mem, 0)
        .map_err(|_| "PASID 0's GCR3 entry is unreadable or not valid")
}

impl Unit {
    /// Takes over the command buffer and event log with fresh pages: CmdBufEn and
    /// EventLogEn cleared (IommuEn untouched), bases and head/tail programmed, then
    /// Control written back with both enables set.
    fn take_over_rings(&mut self, hw: &mut Hw<'_>, control: u64) -> Result<(), HandoverError> {
        let mut rings = match self.rings.take() {
            Some(r) => r,
            None => Rings::alloc(self.base, hw, &mut self.counters)?,
        };
        let enables = field_mask(CONTROL::CMD_BUF_EN) | field_mask(CONTROL::EVENT_LOG_EN);
        hw.regs.write64(regs::CONTROL, control & !enables);
        rings.program(hw.regs);
        let c = control | enables;
        hw.regs.write64(regs::CONTROL, c);
        self.control = c;
        self.rings = Some(rings);
        Ok(())
    }

    /// Makes every DTE of the live device table blocking and invalidates everything
    /// (the unit refused as a whole). With IommuEn clear, brings the unit up afresh
    /// (every DTE blocking) instead.
    fn block_everything(&mut self, hw: &mut Hw<'_>) -> Result<(), HandoverError> {
        let control = hw.regs.read64(regs::CONTROL);
        if CONTROL::IOMMU_EN.read(control) == 0 {
            let cfg = UnitConfig::new(self.base, self.first, self.last);
            let fresh = Unit::init(hw, &cfg)?;
            *self = fresh;
            return Ok(());
        }
        self.take_over_rings(hw, control)?;
        let dtb = hw.regs.read64(regs::DEV_TAB_BASE);
        let base = dtb & field_mask(DEV_TAB_BASE::BASE);
        let n = regs::devtab_entries(DEV_TAB_BASE::SIZE.read(dtb)) as u64;
        let block = DeviceTableEntry::blocking(0);
        for i in 0..n {
            // qword 0 first: the entry blocks from that store on.
            let at = PhysAddr(base + i * regs::DTE_BYTES);
            let r = hw
                .mem
                .write_u64(at, block.qword(0))
                .and_then(|_| hw.mem.write(PhysAddr(at.0 + 8), &[0u8; 24]));
            r.map_err(|err| {
                self.herr(K::Mem {
                    what: "writing a blocking DTE",
                    err,
                })
            })?;
        }
        self.devtab = PhysAddr(base);
        self.devtab_pages = DEV_TAB_BASE::SIZE.read(dtb) + 1;
        self.domains.clear();
        self.devices.clear();
        self.incoming = None;
        self.invalidate_everything(hw)?;
        Ok(())
    }

    fn fail(mut self, hw: &mut Hw<'_>, error: HandoverError, named: Vec<u16>) -> Box<AdoptFailure> {
        let unit = match self.block_everything(hw) {
            Ok(()) => Some(Box::new(self)),
            Err(_) => None,
        };
        Box::new(AdoptFailure {
            error,
            unit,
            blocked_devices: named,
        })
    }

    /// New kernel: adopts the unit at `cfg.mmio_base` from memory, its registers and
    /// the KHO blob at `blob` (reads the preserved set from the blob).
    pub fn adopt(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
    ) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        Self::adopt_inner(hw, cfg, blob, None)
    }

    /// [`adopt`](Unit::adopt) with the preserved set the new kernel read at boot.
    ///
    /// The record is untrusted: it must decode, describe this unit and DeviceID range,
    /// and agree with the live registers (IommuEn set, Device Table Base and Size,
    /// Control, Exclusion Base and Limit, EFR); its page runs must lie in the
    /// preserved set, the device table in its runs. Every recorded DomainID is
    /// reserved before anything is allocated. The command buffer and event log are
    /// re-based (CmdBufEn and EventLogEn cycled, IommuEn stays 1). Each recorded DTE
    /// must equal the record bit for bit, have no reserved bit set and point at the
    /// recorded domain's tables in preserved memory; a device that fails is blocked.
    /// Every other translating DTE of the device table is made blocking. Then
    /// INVALIDATE_IOMMU_ALL (per-DTE invalidations without EFR.IASup). Page tables are
    /// not walked here (see [`verify`](Unit::verify)).
    pub fn adopt_with_preserved(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        Self::adopt_inner(hw, cfg, blob, Some(preserved))
    }

    fn adopt_inner(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
        preserved: Option<PageSet>,
    ) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        let mut unit = Unit::probe(hw, cfg).map_err(|e| {
            Box::new(AdoptFailure {
                error: e.into(),
                unit: None,
                blocked_devices: Vec::new(),
            })
        })?;
        let mut report = AdoptReport {
            registers_read: 1,
            ..AdoptReport::default()
        };
        let fb = match read_blob(hw, unit.base, blob, preserved) {
            Ok(fb) => fb,
            Err(e) => return Err(unit.fail(hw, e, Vec::new())),
        };
        let rec = &fb.record;
        let named: Vec<u16> = rec.devices.iter().map(|d| d.device_id).collect();
        report.record_bytes = fb.record_bytes;

        let control = hw.regs.read64(regs::CONTROL);
        let dtb = hw.regs.read64(regs::DEV_TAB_BASE);
        let excl_base = hw.regs.read64(regs::EXCL_BASE);
        let excl_limit = hw.regs.read64(regs::EXCL_LIMIT) & field_mask(EXCL_LIMIT::LIMIT);
        report.registers_read += 4;
        let unit_check = (|| {
            if rec.mmio_base != unit.base {
                return Err(K::WrongUnit {
                    record: rec.mmio_base,
                    why: "another MMIO base",
                });
            }
            if (rec.first_device_id, rec.last_device_id) != (unit.first, unit.last) {
                return Err(K::WrongUnit {
                    record: rec.mmio_base,
                    why: "another DeviceID range than the IVRS description",
                });
            }
            if CONTROL::IOMMU_EN.read(control) == 0 {
                return Err(K::TranslationDisabled { control });
            }
            for (register, live, r) in [
                ("Device Table Base", dtb, rec.dev_tab_base),
                ("Control", control, rec.control),
                ("Exclusion Base", excl_base, rec.excl_base),
                ("Exclusion Limit", excl_limit, rec.excl_limit),
                ("EFR", unit.efr, rec.efr),
            ] {
                if live != r {
                    return Err(K::Register {
                        register,
                        live,
                        record: r,
                    });
                }
            }
            // Every run inside the preserved set, the work bounded by the set.
            let have = fb.preserved.page_count();
            let mut total = 0u64;
            for &(start, pages) in &rec.pages {
                total = total.saturating_add(pages);
                if pages > have || total > have {
                    return Err(K::RecordRunTooLarge {
                        start,
                        pages: if pages > have { pages } else { total },
                        preserved: have,
                    });
                }
            }
            for &(start, pages) in &rec.pages {
                if let Some(page) = first_missing(start, pages, &fb.preserved) {
                    return Err(K::RecordRunNotPreserved { start, pages, page });
                }
            }
            for i in 0..rec.dev_tab_pages() {
                let page = PhysAddr(rec.dev_tab_addr().0 + i * PAGE);
                if !rec.holds_page(page) {
                    return Err(K::NotPreserved {
                        what: "device table",
                        page,
                        device: None,
                        did: None,
                    });
                }
            }
            Ok(())
        })();
        if let Err(k) = unit_check {
            let e = unit.herr(k);
            return Err(unit.fail(hw, e, named));
        }

        // DomainIDs first: nothing below may hand one of them out.
        for d in &rec.domains {
            unit.reserve_did(d.id.0);
        }
        unit.devtab = rec.dev_tab_addr();
        unit.devtab_pages = rec.dev_tab_pages();

        if let Err(e) = unit.take_over_rings(hw, control) {
            let e = match e.kind {
                K::Driver(crate::driver::ErrorKind::OutOfPages { what }) => {
                    unit.herr(K::NoFreePage {
                        what,
                        preserved_pages: fb.preserved.page_count(),
                    })
                }
                _ => e,
            };
            return Err(unit.fail(hw, e, named));
        }

        // Domains: their format, their roots in the record's runs.
        let mut bad_domains: BTreeMap<u16, HandoverError> = BTreeMap::new();
        let mut roots: BTreeMap<u16, PhysAddr> = BTreeMap::new();
        for d in &rec.domains {
            if let Err(e) = unit.format_for(d.kind, d.id) {
                let why = match e.kind {
                    crate::driver::ErrorKind::Format { err, .. } => err.to_string(),
                    _ => "format".to_string(),
                };
                bad_domains.insert(d.id.0, unit.herr(K::Format { did: d.id, why }));
                continue;
            }
            let root = match d.kind {
                DomainKind::V1 { .. } => Ok(d.root),
                DomainKind::V2 { .. } => {
                    report.entries_read += 1;
                    if !rec.holds_page(d.root) {
                        Err(K::NotPreserved {
                            what: "GCR3 table",
                            page: d.root,
                            device: None,
                            did: Some(d.id),
                        })
                    } else {
                        v2_root(hw, d).map_err(|why| K::Format {
                            did: d.id,
                            why: why.to_string(),
                        })
                    }
                }
            };
            match root {
                Ok(r) if rec.holds_page(r) && r.0 % PAGE == 0 => {
                    roots.insert(d.id.0, r);
                }
                Ok(r) => {
                    bad_domains.insert(
                        d.id.0,
                        unit.herr(K::NotPreserved {
                            what: "page-table root",
                            page: r,
                            device: None,
                            did: Some(d.id),
                        }),
                    );
                }
                Err(k) => {
                    bad_domains.insert(d.id.0, unit.herr(k));
                }
            }
        }

        // Devices: each DTE bit for bit as recorded.
        let mut adopted: Vec<Adoptee> = Vec::new();
        let mut to_block: Vec<u16> = Vec::new();
        for dev in &rec.devices {
            let id = dev.device_id;
            let at = unit.dte_addr(id);
            let check = (|| {
                if let Some(e) = bad_domains.get(&dev.domain.0) {
                    return Err(e.kind.clone());
                }
                let live = read_dte(hw.mem, at).map_err(|err| K::Mem {
                    what: "reading a DTE",
                    err,
                })?;
                let rsvd = live.reserved_bits();
                if rsvd != [0; 4] {
                    return Err(K::ReservedBits {
                        addr: at,
                        device: id,
                        bits: rsvd,
                    });
                }
                for (i, (f, e)) in live.qwords().iter().zip(dev.dte).enumerate() {
                    if *f != e {
                        return Err(K::Mismatch {
                            what: [
                                "DTE qword 0 (differs from the record)",
                                "DTE qword 1 (differs from the record)",
                                "DTE qword 2 (differs from the record)",
                                "DTE qword 3 (differs from the record)",
                            ][i],
                            addr: PhysAddr(at.0 + 8 * i as u64),
                            device: Some(id),
                            did: Some(dev.domain),
                            found: *f,
                            expected: e,
                        });
                    }
                }
                let d = rec.domain(dev.domain).ok_or(K::Selection {
                    why: "device bound to a domain the record does not hold",
                    device: Some(id),
                    did: Some(dev.domain),
                })?;
                let mism = |what, found: u64, expected: u64| K::Mismatch {
                    what,
                    addr: at,
                    device: Some(id),
                    did: Some(d.id),
                    found,
                    expected,
                };
                if !live.valid() || !live.translation_valid() || live.exclusion() {
                    return Err(mism("DTE V, TV (1, 1) and EX (0)", live.qword(0) & 3, 3));
                }
                match d.kind {
                    DomainKind::V1 { levels } => {
                        let m = crate::hw::dte::Mode::Levels(levels);
                        if live.guest_valid() || live.mode() != m {
                            return Err(mism(
                                "DTE Mode (v1 levels, GV = 0)",
                                live.mode().bits(),
                                m.bits(),
                            ));
                        }
                        if live.page_table_root() != d.root.0 {
                            return Err(mism(
                                "DTE page-table root",
                                live.page_table_root(),
                                d.root.0,
                            ));
                        }
                    }
                    DomainKind::V2 { glx, .. } => {
                        if !live.guest_valid()
                            || !live.giov()
                            || live.mode() != crate::hw::dte::Mode::Disabled
                            || live.glx() != glx
                        {
                            return Err(mism(
                                "DTE GV, GIoV, GLX and Mode 0 of a v2 domain",
                                live.qword(0),
                                dev.dte[0],
                            ));
                        }
                        if live.gcr3_root() != d.root.0 {
                            return Err(mism("DTE GCR3 table root", live.gcr3_root(), d.root.0));
                        }
                    }
                }
                if let Some((root, n)) = dev.irt {
                    for p in irt_pages(root, n) {
                        if !rec.holds_page(p) {
                            return Err(K::NotPreserved {
                                what: "interrupt-remapping table",
                                page: p,
                                device: Some(id),
                                did: Some(d.id),
                            });
                        }
                    }
                }
                Ok(())
            })();
            report.entries_read += 1;
            match check {
                Ok(()) => adopted.push((id, dev.domain, dev.irt)),
                Err(k) => {
                    to_block.push(id);
                    report.blocked.push(super::adopt::BlockedDevice {
                        device_id: id,
                        error: unit.herr(k),
                    });
                }
            }
        }

        // Block the refused devices, then sweep: every translating DTE nobody adopted.
        let block = DeviceTableEntry::blocking(0);
        let keep: Vec<u16> = adopted.iter().map(|a| a.0).collect();
        let sweep = (|| -> Result<u64, K> {
            let mut blocked = 0u64;
            let mut buf = [0u8; PAGE as usize];
            for p in 0..unit.devtab_pages {
                let page = PhysAddr(unit.devtab.0 + p * PAGE);
                hw.mem.read(page, &mut buf).map_err(|err| K::Mem {
                    what: "reading the device table",
                    err,
                })?;
                report.entries_read += PAGE / regs::DTE_BYTES;
                for i in 0..(PAGE / regs::DTE_BYTES) as usize {
                    let id = (p * (PAGE / regs::DTE_BYTES) + i as u64) as u16;
                    let mut q = [0u64; 4];
                    for (k, v) in q.iter_mut().enumerate() {
                        let o = i * 32 + k * 8;
                        let mut w = [0u8; 8];
                        w.copy_from_slice(&buf[o..o + 8]);
                        *v = u64::from_le_bytes(w);
                    }
                    let e = DeviceTableEntry::from_qwords(q);
                    if keep.binary_search(&id).is_ok()
                        || (is_blocking(&e) && !to_block.contains(&id))
                    {
                        continue;
                    }
                    let at = PhysAddr(page.0 + i as u64 * regs::DTE_BYTES);
                    // qword 0 first: blocking from that store on.
                    hw.mem
                        .write_u64(at, block.qword(0))
                        .and_then(|_| write_dte(hw.mem, at, &block))
                        .map_err(|err| K::Mem {
                            what: "writing a blocking DTE",
                            err,
                        })?;
                    if !to_block.contains(&id) {
                        blocked += 1;
                    }
                }
            }
            Ok(blocked)
        })();
        match sweep {
            Ok(n) => report.unknown_entries_blocked = n,
            Err(k) => {
                let e = unit.herr(k);
                return Err(unit.fail(hw, e, named));
            }
        }

        // Bind the adopted domains and devices to the existing tables.
        for d in &rec.domains {
            let Some(&root) = roots.get(&d.id.0) else {
                continue;
            };
            if bad_domains.contains_key(&d.id.0) {
                continue;
            }
            unit.domains.insert(
                d.id.0,
                Domain {
                    id: d.id,
                    kind: d.kind,
                    root,
                    gcr3: matches!(d.kind, DomainKind::V2 { .. }).then_some(d.root),
                    state: DomainState::Adopted,
                    tables: PageSet::new(),
                    tables_known: false,
                },
            );
        }
        let mut known = PageSet::new();
        for i in 0..unit.devtab_pages {
            add_page(&mut known, PhysAddr(unit.devtab.0 + i * PAGE));
        }
        for d in unit.domains.values() {
            if let Some(g) = d.gcr3 {
                add_page(&mut known, g);
            }
        }
        for &(id, did, irt) in &adopted {
            if let Some((root, n)) = irt {
                for p in irt_pages(root, n) {
                    add_page(&mut known, p);
                }
            }
            unit.devices.insert(
                id,
                Device {
                    device_id: id,
                    domain: did,
                    irt,
                    state: DeviceState::Adopted,
                },
            );
        }
        for (did, e) in bad_domains {
            report.refused_domains.push((DomainId(did), e));
        }
        unit.incoming = Some(Incoming {
            record: fb.record,
            record_pa: fb.record_pa,
            record_bytes: fb.record_bytes,
            preserved: fb.preserved,
            known,
        });
        if let Err(e) = unit.invalidate_everything(hw) {
            let named = unit
                .incoming
                .as_ref()
                .map(|i| i.record.devices.iter().map(|d| d.device_id).collect())
                .unwrap_or_default();
            return Err(unit.fail(hw, e.into(), named));
        }
        report.stale_events = unit.poll_events(hw).0;
        report.domains = unit.domains.len();
        report.devices = unit.devices.len();
        Ok((unit, report))
    }

    /// New kernel, outside the blackout: walks every adopted domain's tables with the
    /// core walker (bounded by the record's page count), checking every entry, that
    /// every table page lies in the record's runs, in the preserved set and in no other
    /// domain's tree, and that every page a leaf maps is preserved memory outside the
    /// record's runs (never a table). A domain that fails is dropped and its devices
    /// blocked (DTE blocking, invalidated), never passed through. The walks establish
    /// the unit's table pages; record runs holding other pages are reported in
    /// [`VerifyReport::unverified_runs`] and never freed.
    pub fn verify(&mut self, hw: &mut Hw<'_>) -> Result<VerifyReport, HandoverError> {
        let Some(inc) = self.incoming.as_ref() else {
            return Err(self.herr(K::State {
                why: "verify without adopt",
            }));
        };
        let max_tables = (inc.record.page_count() as usize).saturating_add(1);
        let mut report = VerifyReport::default();
        let todo: Vec<DomainId> = self
            .domains
            .values()
            .filter(|d| d.state == DomainState::Adopted && !d.tables_known)
            .map(|d| d.id)
            .collect();
        let mut seen = inc.known.clone();
        let mut refused = Vec::new();
        for did in todo {
            let d = &self.domains[&did.0];
            let f = self.format_for(d.kind, did)?;
            let inc = self.incoming.as_ref().ok_or(self.herr(K::State {
                why: "verify without adopt",
            }))?;
            report.domains += 1;
            let r = match &f {
                AnyFormat::V1(f) => verify_tree(
                    f,
                    &*hw.mem,
                    did,
                    d.root,
                    max_tables,
                    &inc.record,
                    &inc.preserved,
                    &seen,
                ),
                AnyFormat::V2(f) => verify_tree(
                    f,
                    &*hw.mem,
                    did,
                    d.root,
                    max_tables,
                    &inc.record,
                    &inc.preserved,
                    &seen,
                ),
            }
            .map(|t| {
                report.leaf_targets_checked += t.runs;
                (t.tables, t.leaves)
            });
            match r {
                Ok((set, leaves)) => {
                    report.tables += set.page_count();
                    report.entries_read += set.page_count() * 512;
                    report.leaves += leaves;
                    // Disjoint from `seen` (checked page by page above).
                    for (a, o) in set.iter() {
                        let _ = seen.insert(a, o);
                    }
                    if let Some(d) = self.domains.get_mut(&did.0) {
                        d.tables = set;
                        d.tables_known = true;
                    }
                }
                Err(k) => refused.push((did, self.herr(k))),
            }
        }
        // `seen` is now `known` plus every table page a successful walk established.
        if let Some(inc) = self.incoming.as_mut() {
            inc.known = seen;
        }
        for (did, error) in refused {
            let devs: Vec<u16> = self
                .devices
                .values()
                .filter(|x| x.domain == did && x.state != DeviceState::Blocked)
                .map(|x| x.device_id)
                .collect();
            for id in devs {
                self.block_device(hw, id, did)?;
                if let Some(x) = self.devices.get_mut(&id) {
                    x.state = DeviceState::Blocked;
                }
                report.blocked.push(id);
            }
            self.domains.remove(&did.0);
            report.failures.push((did, error));
        }
        if let Some(inc) = self.incoming.as_ref() {
            report.unverified_runs = inc
                .record
                .pages
                .iter()
                .filter_map(|&(start, pages)| {
                    let page = first_missing(start, pages, &inc.known)?;
                    let mut run = PageSet::new();
                    let known = match run.insert_range(start, pages) {
                        Ok(()) => run.intersection(&inc.known).page_count(),
                        Err(_) => 0,
                    };
                    Some(self.herr(K::RecordPagesNotTables {
                        start,
                        pages,
                        page,
                        count: pages - known,
                    }))
                })
                .collect();
        }
        Ok(report)
    }

    /// New kernel: ends the handover. Domains not verified yet are verified first;
    /// adopted domains and devices become live; blocked devices are forgotten; every
    /// structure page verification established that is no longer referenced is freed
    /// (no other page: record-run pages not verified are kept), the record's pages are
    /// released and the DomainIDs of refused domains are released (their DTEs are
    /// blocking and invalidated).
    pub fn finish(&mut self, hw: &mut Hw<'_>) -> Result<FinishReport, HandoverError> {
        if self.incoming.is_none() {
            return Err(self.herr(K::State {
                why: "finish without adopt",
            }));
        }
        let mut report = FinishReport {
            verify: self.verify(hw)?,
            ..FinishReport::default()
        };
        self.devices.retain(|_, d| d.state != DeviceState::Blocked);
        let Some(inc) = self.incoming.take() else {
            return Err(self.herr(K::State {
                why: "finish without adopt",
            }));
        };
        let mut referenced = PageSet::new();
        for i in 0..self.devtab_pages {
            add_page(&mut referenced, PhysAddr(self.devtab.0 + i * PAGE));
        }
        for d in self.domains.values() {
            referenced = referenced.union(&d.tables);
            if let Some(g) = d.gcr3 {
                add_page(&mut referenced, g);
            }
        }
        for d in self.devices.values() {
            if let Some((root, n)) = d.irt {
                for p in irt_pages(root, n) {
                    add_page(&mut referenced, p);
                }
            }
        }
        let free = inc.known.difference(&referenced);
        for p in free.pages() {
            hw.pages.free_page(p);
            report.pages_freed += 1;
        }
        report.pages_kept = inc
            .record
            .page_count()
            .saturating_sub(inc.known.page_count());
        self.counters.pages_freed += report.pages_freed;
        let record_pages = (inc.record_bytes + iommu_core::kho::record::RECORD_HEADER_SIZE as u64)
            .div_ceil(PAGE_SIZE);
        for i in 0..record_pages {
            hw.pages
                .free_page(PhysAddr(inc.record_pa.0 + i * PAGE_SIZE));
        }
        report.record_pages_freed = record_pages;
        for d in &inc.record.domains {
            if !self.domains.contains_key(&d.id.0) {
                self.release_did(d.id.0);
            }
        }
        for d in self.domains.values_mut() {
            d.state = DomainState::Live;
        }
        for d in self.devices.values_mut() {
            d.state = DeviceState::Live;
        }
        report.domains = self.domains.len();
        report.devices = self.devices.len();
        Ok(report)
    }

    /// Whether the unit was adopted and `finish` has not run.
    pub fn is_adopting(&self) -> bool {
        self.incoming.is_some()
    }
}

impl core::fmt::Display for AdoptReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "adopt: {} domains, {} devices, {} blocked, {} domains refused, {} unknown DTEs blocked, \
             work {} registers + {} entries, {} stale events, record {} bytes",
            self.domains,
            self.devices,
            self.blocked.len(),
            self.refused_domains.len(),
            self.unknown_entries_blocked,
            self.registers_read,
            self.entries_read,
            self.stale_events.len(),
            self.record_bytes
        )?;
        for b in &self.blocked {
            write!(f, "\n  blocked DeviceID {:#06x}: {}", b.device_id, b.error)?;
        }
        for (d, e) in &self.refused_domains {
            write!(f, "\n  refused domain {d}: {e}")?;
        }
        Ok(())
    }
}

impl core::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "verify: {} domains, {} table pages, {} leaves, {} leaf-target runs checked, {} entries read, {} domains refused",
            self.domains,
            self.tables,
            self.leaves,
            self.leaf_targets_checked,
            self.entries_read,
            self.failures.len()
        )?;
        for (d, e) in &self.failures {
            write!(f, "\n  refused domain {d}: {e}")?;
        }
        for e in &self.unverified_runs {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl core::fmt::Display for FinishReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "finish: {} domains and {} devices live, {} table pages freed, {} record-run pages \
             kept (not verified), {} record pages released",
            self.domains, self.devices, self.pages_freed, self.pages_kept, self.record_pages_freed
        )
    }
}
