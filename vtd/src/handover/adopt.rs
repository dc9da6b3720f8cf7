//! New kernel: adopt (the blackout path), verify (optional full walk), finish.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use iommu_core::kho::record::Supported;
use iommu_core::kho::{read_client_record, read_handover, read_preserved};
use iommu_core::pageset::{PageSet, PAGE_SIZE};
use iommu_core::{DomainId, PhysAddr, RequesterId};

use super::prepare::{read_chain, Broke, Chain};
use super::record::{Record, FAMILY, VERSION};
use super::{client_name, HandoverError, HandoverErrorKind as K, Incoming};
use crate::driver::{
    alloc_zeroed, gcmd, Device, DeviceState, Domain, DomainState, Fault, Hw, Invalidation, Mode,
    Unit, UnitConfig,
};
use crate::hw::regs::{self, field_mask32, CAP, GCMD, GSTS};
use crate::hw::root::{
    RootEntry, ScalableRootEntry, CONTEXT_ENTRY_SIZE, ROOT_ENTRY_SIZE, SM_CONTEXT_ENTRY_SIZE,
};

/// A device adoption refused: it is blocked, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedDevice {
    /// The device.
    pub rid: RequesterId,
    /// Why it was blocked.
    pub error: HandoverError,
}

/// What `adopt` did. The blackout work is `registers_read + entries_read`: it grows
/// with units, domains and devices, not with mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Registers read.
    pub registers_read: u64,
    /// Structure entries read (root, context, PASID directory and table entries, and the
    /// entries of the root and context tables swept for unknown devices).
    pub entries_read: u64,
    /// Domains adopted.
    pub domains: usize,
    /// Devices adopted.
    pub devices: usize,
    /// Devices blocked, with the reason.
    pub blocked: Vec<BlockedDevice>,
    /// Domains refused, with the reason (their devices are in `blocked`).
    pub refused_domains: Vec<(DomainId, HandoverError)>,
    /// Present root/context entries the record does not account for, made
    /// non-present.
    pub unknown_entries_cleared: u64,
    /// Fault records pending at adoption (read and cleared).
    pub stale_faults: Vec<Fault>,
    /// Bytes of the record payload.
    pub record_bytes: u64,
}

/// `adopt` refused the unit as a whole. Every device is blocked: the unit, if given,
/// translates through an empty root table (translation on), so all DMA faults.
#[derive(Debug)]
pub struct AdoptFailure {
    /// Why.
    pub error: HandoverError,
    /// The unit in its blocking state, usable as a fresh unit; `None` if even that
    /// could not be set up.
    pub unit: Option<alloc::boxed::Box<Unit>>,
    /// Devices the record named (empty when the record could not be read).
    pub blocked_devices: Vec<RequesterId>,
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
    /// Runs of leaf targets checked (leaves whose IOVAs and targets follow on are one
    /// run): each must lie in preserved memory and outside the unit's table pages.
    pub leaf_targets_checked: u64,
    /// Domains refused, with the reason; their devices are blocked.
    pub failures: Vec<(DomainId, HandoverError)>,
    /// Devices blocked because their domain was refused.
    pub blocked: Vec<RequesterId>,
    /// Record page runs holding pages that are not tables of an adopted domain or
    /// device ([`RecordPagesNotTables`](super::HandoverErrorKind::RecordPagesNotTables),
    /// one per run): `finish` keeps them, never frees them. Nothing is refused for it
    /// (the adopted tables were checked on their own); with no domain or device
    /// refused, any entry here means the record claims memory that is not its own.
    pub unverified_runs: Vec<HandoverError>,
}

/// What `finish` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// The verification `finish` had to do itself (domains not verified before).
    pub verify: VerifyReport,
    /// Pinned table pages no longer referenced, freed (only pages verification
    /// established as the unit's structures).
    pub pages_freed: u64,
    /// Pages of the record's runs kept, never freed: verification did not establish
    /// them as the unit's structures (see [`VerifyReport::unverified_runs`]).
    pub pages_kept: u64,
    /// Pages of the record released.
    pub record_pages_freed: u64,
    /// Domains now live.
    pub domains: usize,
    /// Devices now live.
    pub devices: usize,
}

/// Everything read from the blob.
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

impl Unit {
    fn herr2(&self, kind: K) -> HandoverError {
        HandoverError::new(self.base, kind)
    }

    /// Puts the unit in its blocking state: a fresh invalidation queue, an empty root
    /// table latched with translation left on (or turned on), global invalidation.
    fn block_everything(&mut self, hw: &mut Hw<'_>) -> Result<(), HandoverError> {
        if !matches!(self.inval, Invalidation::Queue(_)) {
            self.inval = Invalidation::setup(
                self.base,
                hw,
                self.ecap,
                self.ver,
                self.mode,
                &mut self.counters,
            )?;
        }
        let root = alloc_zeroed(self.base, hw, &mut self.counters, "an empty root table")?;
        self.root = root;
        self.set_root(hw, root)?;
        self.global_invalidate(hw)?;
        self.enable_faults(hw)?;
        if !GSTS::TES.is_set(hw.regs.read32(regs::GSTS)) {
            gcmd(self.base, hw.regs, field_mask32(GCMD::TE), true)?;
        }
        self.domains.clear();
        self.devices.clear();
        self.ctx_tables.clear();
        Ok(())
    }

    fn fail(
        mut self,
        hw: &mut Hw<'_>,
        error: HandoverError,
        blocked_devices: Vec<RequesterId>,
    ) -> alloc::boxed::Box<AdoptFailure> {
        let unit = match self.block_everything(hw) {
            Ok(()) => Some(alloc::boxed::Box::new(self)),
            Err(_) => None,
        };
        alloc::boxed::Box::new(AdoptFailure {
            error,
            unit,
            blocked_devices,
        })
    }

    /// New kernel: adopts the unit at `cfg.mmio_base` from memory, its registers and the
    /// KHO blob at `blob` (nothing else crosses the kexec).
    ///
    /// The record is untrusted: it must decode, describe this unit, and agree with the
    /// live registers (CAP, ECAP, GSTS.TES set, RTADDR and its mode). Every recorded
    /// domain ID is reserved before anything is allocated. The invalidation queue is
    /// taken over with a fresh queue (QIE cycled, TE never touched). Each device's
    /// chain is checked (entries present, reserved bits clear, pages preserved, domain
    /// ID and table root as recorded); a device that fails is blocked and reported,
    /// the others are adopted. Present entries nobody recorded are made non-present.
    /// Then one global invalidation and fault reporting re-enabled.
    ///
    /// The work is O(units + domains + devices): page tables are not walked (see
    /// [`verify`](Unit::verify)). Adopted domains are bound to the existing tables and
    /// refuse map/unmap until [`finish`](Unit::finish).
    ///
    /// Reads the preserved set from the blob itself; a kernel that read it already
    /// (to keep its allocator off those pages, bounded by its RAM with
    /// [`read_preserved_in`](iommu_core::kho::read_preserved_in)) passes it to
    /// [`adopt_with_preserved`](Unit::adopt_with_preserved) instead.
    pub fn adopt(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
    ) -> Result<(Unit, AdoptReport), alloc::boxed::Box<AdoptFailure>> {
        Self::adopt_inner(hw, cfg, blob, None)
    }

    /// [`adopt`](Unit::adopt) with the preserved set the new kernel read from the blob
    /// at boot (every page that survived the kexec), instead of reading it again in the
    /// blackout. The record's page runs must lie inside it.
    pub fn adopt_with_preserved(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Unit, AdoptReport), alloc::boxed::Box<AdoptFailure>> {
        Self::adopt_inner(hw, cfg, blob, Some(preserved))
    }

    fn adopt_inner(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
        preserved: Option<PageSet>,
    ) -> Result<(Unit, AdoptReport), alloc::boxed::Box<AdoptFailure>> {
        let mut unit = Unit::probe(hw, cfg).map_err(|e| {
            alloc::boxed::Box::new(AdoptFailure {
                error: e.into(),
                unit: None,
                blocked_devices: Vec::new(),
            })
        })?;
        let mut report = AdoptReport {
            registers_read: 3,
            ..AdoptReport::default()
        };
        let fb = match read_blob(hw, unit.base, blob, preserved) {
            Ok(fb) => fb,
            Err(e) => return Err(unit.fail(hw, e, Vec::new())),
        };
        let rec = &fb.record;
        let named: Vec<RequesterId> = rec.devices.iter().map(|d| d.rid).collect();
        report.record_bytes = fb.record_bytes;

        // The record must describe this unit, as it is now.
        let gsts = hw.regs.read32(regs::GSTS);
        let rtaddr = hw.regs.read64(regs::RTADDR);
        report.registers_read += 2;
        let unit_check = (|| {
            if rec.mmio_base != unit.base {
                return Err(K::WrongUnit {
                    record: rec.mmio_base,
                });
            }
            // Every run inside the preserved set, before anything trusts a run: the
            // work is bounded by the set (its size, then its blocks), whatever the
            // runs claim; `finish` frees pages of these runs.
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
                if let Some(page) = super::tree::first_unpreserved(start, pages, &fb.preserved) {
                    return Err(K::RecordRunNotPreserved { start, pages, page });
                }
            }
            for (register, live, r) in [("CAP", unit.cap, rec.cap), ("ECAP", unit.ecap, rec.ecap)] {
                if live != r {
                    return Err(K::Register {
                        register,
                        live,
                        record: r,
                    });
                }
            }
            if rec.mode != unit.mode || rec.haw != unit.haw {
                return Err(K::Register {
                    register: "RTADDR.TTM (mode) / host address width",
                    live: (unit.mode.ttm().bits() << 32) | unit.haw as u64,
                    record: (rec.mode.ttm().bits() << 32) | rec.haw as u64,
                });
            }
            if !GSTS::TES.is_set(gsts) {
                return Err(K::TranslationDisabled { gsts });
            }
            if rtaddr != rec.rtaddr {
                return Err(K::Register {
                    register: "RTADDR",
                    live: rtaddr,
                    record: rec.rtaddr,
                });
            }
            let root = PhysAddr(rtaddr & !0xfff);
            if !fb.preserved.contains(root) || !rec.holds_page(root) {
                return Err(K::NotPreserved {
                    what: "root table",
                    page: root,
                    device: None,
                    did: None,
                });
            }
            Ok(())
        })();
        if let Err(k) = unit_check {
            let e = unit.herr2(k);
            return Err(unit.fail(hw, e, named));
        }
        unit.root = PhysAddr(rtaddr & !0xfff);

        // Domain IDs first, before any allocation.
        let cm = CAP::CM.is_set(unit.cap);
        let mut bad_domains: BTreeMap<u16, HandoverError> = BTreeMap::new();
        for d in &rec.domains {
            let why = if d.id.0 as u32 >= unit.did_count {
                Some("beyond the unit's CAP.ND")
            } else if d.id.0 == 0 && cm {
                Some("domain ID 0 is reserved with caching mode")
            } else if !unit.reserve_did(d.id.0) {
                Some("reserved twice")
            } else {
                None
            };
            if let Some(why) = why {
                bad_domains.insert(d.id.0, unit.herr2(K::DomainId { did: d.id, why }));
            }
        }
        for d in &rec.domains {
            if bad_domains.contains_key(&d.id.0) {
                continue;
            }
            let k = if let Err(e) = unit.format_for(d.kind, d.levels, d.id) {
                Some(HandoverError::from(e).kind)
            } else if d.kind == crate::driver::DomainKind::FirstStage && unit.mode == Mode::Legacy {
                Some(K::Format {
                    did: d.id,
                    why: "first-stage domain on a legacy-mode unit",
                })
            } else if d.root.0 % PAGE_SIZE != 0
                || !fb.preserved.contains(d.root)
                || !rec.holds_page(d.root)
            {
                Some(K::NotPreserved {
                    what: "domain root table",
                    page: d.root,
                    device: None,
                    did: Some(d.id),
                })
            } else {
                None
            };
            if let Some(k) = k {
                bad_domains.insert(d.id.0, unit.herr2(k));
            }
        }

        // Take over invalidation: a fresh queue, TE untouched.
        match Invalidation::setup(
            unit.base,
            hw,
            unit.ecap,
            unit.ver,
            unit.mode,
            &mut unit.counters,
        ) {
            Ok(i) => unit.inval = i,
            Err(e) => {
                // No page at all this early: the allocator keeps off the preserved
                // set, so name its size (a map claiming all memory leaves nothing).
                let e = match e.kind {
                    crate::driver::ErrorKind::OutOfPages { what } => unit.herr2(K::NoFreePage {
                        what,
                        preserved_pages: fb.preserved.page_count(),
                    }),
                    _ => e.into(),
                };
                return Err(unit.fail(hw, e, named));
            }
        }

        // Devices.
        let mut entries = 0u64;
        let mut chains: Vec<(RequesterId, Chain)> = Vec::new();
        let mut blocked_keys: Vec<(u8, u8)> = Vec::new();
        let key_of = |rid: RequesterId| match unit.mode {
            Mode::Legacy => (rid.bus, 0u8),
            Mode::Scalable => (rid.bus, rid.devfn >> 7),
        };
        for dev in &rec.devices {
            let rid = dev.rid;
            if let Some(e) = bad_domains.get(&dev.domain.0) {
                // The chain may be fine, but the domain is not: block through the chain
                // if it can be read, else through the bus.
                let c = read_chain(
                    &unit,
                    hw.mem,
                    unit.root,
                    rid,
                    Some(&fb.preserved),
                    &mut entries,
                );
                let at = c.ok().map(|c| c.ctx_entry);
                if at.is_none() {
                    blocked_keys.push(key_of(rid));
                }
                if let Err(e2) = unit.block_in_memory(hw, rid, at) {
                    let e = unit.fail(hw, e2, named);
                    return Err(e);
                }
                report.blocked.push(BlockedDevice {
                    rid,
                    error: e.clone(),
                });
                continue;
            }
            if blocked_keys.contains(&key_of(rid)) {
                report.blocked.push(BlockedDevice {
                    rid,
                    error: unit.herr2(K::NotPresent {
                        what: "root entry (cleared: another device's context table was bad)",
                        addr: PhysAddr(unit.root.0 + rid.bus as u64 * ROOT_ENTRY_SIZE),
                        device: rid,
                    }),
                });
                continue;
            }
            let r = read_chain(
                &unit,
                hw.mem,
                unit.root,
                rid,
                Some(&fb.preserved),
                &mut entries,
            );
            let r = r.and_then(|c| {
                let Some(d) = rec.domains.iter().find(|d| d.id == dev.domain) else {
                    return Err((
                        K::Selection {
                            why: "device bound to a domain the record does not hold",
                            device: Some(rid),
                            did: Some(dev.domain),
                        },
                        Broke::ContextEntry(c.ctx_entry),
                    ));
                };
                let checks = [
                    ("domain ID", c.did as u64, d.id.0 as u64),
                    ("table root", c.table_root.0, d.root.0),
                    ("levels", c.levels as u64, d.levels as u64),
                    ("table kind", c.kind as u64, d.kind as u64),
                    (
                        "RID_PASID",
                        c.pasid.map_or(u64::MAX, |p| p.0 as u64),
                        dev.pasid.map_or(u64::MAX, |p| p.0 as u64),
                    ),
                ];
                for (what, found, expected) in checks {
                    if found != expected {
                        return Err((
                            K::Mismatch {
                                what,
                                addr: c.ctx_entry,
                                device: Some(rid),
                                did: Some(d.id),
                                found,
                                expected,
                            },
                            Broke::ContextEntry(c.ctx_entry),
                        ));
                    }
                }
                for (what, p) in [
                    ("context table", Some(c.ctx_table)),
                    ("PASID directory", c.pasid_dir),
                    ("PASID table", c.pasid_table),
                ] {
                    if let Some(p) = p {
                        if !rec.holds_page(p) {
                            return Err((
                                K::NotPreserved {
                                    what,
                                    page: p,
                                    device: Some(rid),
                                    did: Some(d.id),
                                },
                                Broke::ContextEntry(c.ctx_entry),
                            ));
                        }
                    }
                }
                Ok(c)
            });
            match r {
                Ok(c) => chains.push((rid, c)),
                Err((k, broke)) => {
                    let at = match broke {
                        Broke::RootEntry => {
                            blocked_keys.push(key_of(rid));
                            None
                        }
                        Broke::ContextEntry(at) => Some(at),
                    };
                    if let Err(e2) = unit.block_in_memory(hw, rid, at) {
                        return Err(unit.fail(hw, e2, named));
                    }
                    let error = unit.herr2(k);
                    report.blocked.push(BlockedDevice { rid, error });
                }
            }
        }
        // A device adopted earlier on a bus blocked later loses its root entry too.
        chains.retain(|(rid, _)| {
            let blocked = blocked_keys.contains(&key_of(*rid));
            if blocked {
                report.blocked.push(BlockedDevice {
                    rid: *rid,
                    error: HandoverError::new(
                        unit.base,
                        K::NotPresent {
                            what: "root entry (cleared: another device's context table was bad)",
                            addr: PhysAddr(unit.root.0 + rid.bus as u64 * ROOT_ENTRY_SIZE),
                            device: *rid,
                        },
                    ),
                });
            }
            !blocked
        });

        // Sweep: present root/context entries nobody recorded are made non-present.
        match unit.sweep_unknown(hw, &chains, &mut entries) {
            Ok(n) => report.unknown_entries_cleared = n,
            Err(e) => return Err(unit.fail(hw, e, named)),
        }

        if let Err(e) = unit.global_invalidate(hw) {
            return Err(unit.fail(hw, e.into(), named));
        }
        match unit.enable_faults(hw) {
            Ok(f) => report.stale_faults = f,
            Err(e) => return Err(unit.fail(hw, e.into(), named)),
        }

        // Bind the adopted domains and devices to the existing tables.
        for d in &rec.domains {
            if bad_domains.contains_key(&d.id.0) {
                continue;
            }
            unit.domains.insert(
                d.id.0,
                Domain {
                    id: d.id,
                    kind: d.kind,
                    levels: d.levels,
                    root: d.root,
                    state: DomainState::Adopted,
                    tables: PageSet::new(),
                    tables_known: false,
                },
            );
        }
        for (rid, c) in &chains {
            unit.ctx_tables.insert(c.key, c.ctx_table);
            unit.devices.insert(
                *rid,
                Device {
                    rid: *rid,
                    pasid: c.pasid,
                    domain: DomainId(c.did),
                    context_entry: c.ctx_entry,
                    pasid_dir: c.pasid_dir,
                    pasid_table: c.pasid_table,
                    state: DeviceState::Adopted,
                },
            );
        }
        for (did, e) in bad_domains {
            report.refused_domains.push((DomainId(did), e));
        }
        report.entries_read = entries;
        report.domains = unit.domains.len();
        report.devices = unit.devices.len();
        // The structures adoption established (O(devices)); a page that cannot be
        // added is only never freed.
        let mut known = PageSet::new();
        add_page(&mut known, unit.root);
        for (_, c) in &chains {
            for p in [Some(c.ctx_table), c.pasid_dir, c.pasid_table]
                .into_iter()
                .flatten()
            {
                add_page(&mut known, p);
            }
        }
        unit.incoming = Some(Incoming {
            record: fb.record,
            record_pa: fb.record_pa,
            record_bytes: fb.record_bytes,
            preserved: fb.preserved,
            known,
        });
        Ok((unit, report))
    }

    /// Clears present root-entry halves and context entries that no adopted device
    /// accounts for. Returns how many were cleared.
    fn sweep_unknown(
        &mut self,
        hw: &mut Hw<'_>,
        chains: &[(RequesterId, Chain)],
        entries: &mut u64,
    ) -> Result<u64, HandoverError> {
        let base = self.base;
        let merr = move |what| move |err| HandoverError::new(base, K::Mem { what, err });
        let mut buf = [0u8; 4096];
        hw.mem
            .read(self.root, &mut buf)
            .map_err(merr("reading the root table"))?;
        *entries += 256;
        let mut cleared = 0u64;
        let qword = |b: &[u8], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let halves: u8 = if self.mode == Mode::Scalable { 2 } else { 1 };
        for bus in 0..=255u8 {
            for half in 0..halves {
                let q = qword(&buf, bus as usize * 2 + half as usize);
                // Bit 0 of each qword is the present bit of that half (scalable) or of
                // the entry (legacy, qword 0).
                let present = match self.mode {
                    Mode::Legacy => RootEntry::from_qwords([q, 0]).present(),
                    Mode::Scalable => ScalableRootEntry::from_qwords([q, 0]).lower_present(),
                };
                if !present {
                    continue;
                }
                let used: Vec<&Chain> = chains
                    .iter()
                    .map(|(_, c)| c)
                    .filter(|c| c.key == (bus, half))
                    .collect();
                let at = PhysAddr(self.root.0 + bus as u64 * ROOT_ENTRY_SIZE + half as u64 * 8);
                if used.is_empty() {
                    hw.mem
                        .write_u64(at, 0)
                        .map_err(merr("clearing a root entry"))?;
                    cleared += 1;
                    continue;
                }
                let ct = used[0].ctx_table;
                let mut t = [0u8; 4096];
                hw.mem
                    .read(ct, &mut t)
                    .map_err(merr("reading a context table"))?;
                let (n, size) = match self.mode {
                    Mode::Legacy => (256usize, CONTEXT_ENTRY_SIZE as usize),
                    Mode::Scalable => (128usize, SM_CONTEXT_ENTRY_SIZE as usize),
                };
                *entries += n as u64;
                for i in 0..n {
                    let q0 = qword(&t, i * size / 8);
                    // Bit 0 (P) of qword 0 in both context-entry formats.
                    if q0 & 1 == 0 {
                        continue;
                    }
                    let e_at = PhysAddr(ct.0 + (i * size) as u64);
                    if used.iter().any(|c| c.ctx_entry == e_at) {
                        continue;
                    }
                    crate::driver::clear_entry(hw.mem, e_at, size / 8)
                        .map_err(merr("clearing a context entry"))?;
                    cleared += 1;
                }
            }
        }
        Ok(cleared)
    }

    /// New kernel, optional and outside the blackout: walks every adopted domain's
    /// tables with the core walker (bounded by the record's page count), checking every
    /// entry (reserved bits, alignment, widths), that every table page is preserved
    /// and in the record, and that every page a leaf maps is preserved memory and not a
    /// table page of the unit (the memory devices reach is preserved by its owner, e.g.
    /// guest memory; anything else may be the new kernel's). A domain that fails is
    /// dropped and its devices blocked.
    ///
    /// The walks establish the exact set of the unit's table pages (with the root,
    /// context and PASID pages `adopt` read for adopted devices); `finish` frees no
    /// other page. A record page run holding pages outside that set (a run claiming
    /// another client's memory passes adopt's check against the preserved set, which
    /// all clients share) is reported in
    /// [`VerifyReport::unverified_runs`]; those pages are kept, never freed. A leaf
    /// whose target lies in the record's runs is checked again, once every domain is
    /// walked, against the exact table pages: refused only if it maps a real table.
    pub fn verify(&mut self, hw: &mut Hw<'_>) -> Result<VerifyReport, HandoverError> {
        // A run of contiguous table pages shorter than this goes into the domain's page
        // set page by page (order 0): one radix leaf (4 KiB, allocated) covers the
        // order-0 pages of 128 MiB, whereas the aligned blocks of a short run usually
        // have several orders, each order in a leaf of its own. Longer runs go in as
        // blocks (fewer inserts). Measured: a leaf allocation costs about as much as
        // 64 order-0 inserts (each probes 19 orders for overlaps).
        const SHORT_RUN: usize = 64;
        let Some(inc) = self.incoming.as_ref() else {
            return Err(self.herr2(K::State {
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
        // Every table page seen, across domains (a page in two trees is an alias), and
        // every page established before (adopt's root, context and PASID pages, the
        // tables of domains verified earlier): a tree reaching one is an alias too.
        let mut visited = super::tree::Visited::new(&inc.record);
        for p in inc.known.pages() {
            visited.seed(&inc.record, p);
        }
        let mut scratch = super::tree::Scratch::default();
        // Once: are all the record's pages preserved? Then each table page needs only
        // the record check.
        let all_preserved = super::tree::runs_preserved(&inc.record, &inc.preserved);
        // Domains with a leaf into the record's runs, to check again (second pass).
        let mut suspects: Vec<DomainId> = Vec::new();
        for did in todo {
            let d = &self.domains[&did.0];
            let f = self.format_for(d.kind, d.levels, did)?;
            let inc = self.incoming.as_ref().ok_or(self.herr2(K::State {
                why: "verify without adopt",
            }))?;
            report.domains += 1;
            let mut targets =
                super::tree::Targets::new(&inc.preserved, super::tree::Forbid::Runs(&inc.record));
            let r = super::tree::verify_tree(
                &f,
                hw.mem,
                did,
                d.root,
                max_tables,
                (!all_preserved).then_some(&inc.preserved),
                &inc.record,
                &mut visited,
                &mut scratch,
                Some(&mut targets),
            )
            .and_then(|t| {
                let pages = &mut scratch.tables;
                pages.sort_unstable();
                let mut set = PageSet::new();
                let mut i = 0;
                while i < pages.len() {
                    let mut j = i + 1;
                    while j < pages.len() && pages[j].0 == pages[j - 1].0 + PAGE_SIZE {
                        j += 1;
                    }
                    if j - i < SHORT_RUN {
                        for &p in &pages[i..j] {
                            set.insert(p, 0).map_err(K::PageSet)?;
                        }
                    } else {
                        set.insert_range(pages[i], (j - i) as u64)
                            .map_err(K::PageSet)?;
                    }
                    i = j;
                }
                Ok((set, t.leaves))
            });
            report.leaf_targets_checked += targets.checked;
            match r {
                Ok((set, leaves)) => {
                    report.tables += set.page_count();
                    report.entries_read += set.page_count() * 512;
                    report.leaves += leaves;
                    if targets.suspect {
                        suspects.push(did);
                    }
                    if let Some(inc) = self.incoming.as_mut() {
                        // Disjoint from `known` (all of it seeded in `visited`, which
                        // the walk refuses to reach again): inserted in place.
                        for (a, o) in set.iter() {
                            let _ = inc.known.insert(a, o);
                        }
                    }
                    if let Some(d) = self.domains.get_mut(&did.0) {
                        d.tables = set;
                        d.tables_known = true;
                    }
                }
                Err(k) => {
                    let error = self.herr2(k);
                    self.refuse_domain(hw, did, error, &mut report)?;
                }
            }
        }
        if !suspects.is_empty() {
            self.recheck_targets(hw, &suspects, &mut report)?;
        }
        if let Some(inc) = self.incoming.as_ref() {
            report.unverified_runs = inc
                .record
                .pages
                .iter()
                .filter_map(|&(start, pages)| {
                    // The first page of the run `known` lacks (block by block).
                    let page = super::tree::first_unpreserved(start, pages, &inc.known)?;
                    let mut run = PageSet::new();
                    let known = match run.insert_range(start, pages) {
                        Ok(()) => run.intersection(&inc.known).page_count(),
                        Err(_) => 0,
                    };
                    Some(self.herr2(K::RecordPagesNotTables {
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

    /// The second pass of [`verify`](Unit::verify): walks each domain of `suspects`
    /// again (its tree was walked without error, so the walk is bounded as before),
    /// now checking its leaf targets against the exact table pages of the unit (every
    /// page `known` holds, all domains walked). A domain mapping one is refused.
    fn recheck_targets(
        &mut self,
        hw: &mut Hw<'_>,
        suspects: &[DomainId],
        report: &mut VerifyReport,
    ) -> Result<(), HandoverError> {
        let Some(inc) = self.incoming.as_ref() else {
            return Ok(());
        };
        let tables: Vec<(u64, u64)> = inc
            .known
            .iter()
            .map(|(a, o)| (a.0, a.0.saturating_add(PAGE_SIZE << o)))
            .collect();
        let max_tables = (inc.record.page_count() as usize).saturating_add(1);
        let mut scratch = super::tree::Scratch::default();
        let mut refused = Vec::new();
        for &did in suspects {
            let Some(d) = self.domains.get(&did.0) else {
                continue;
            };
            let f = self.format_for(d.kind, d.levels, did)?;
            let mut targets =
                super::tree::Targets::new(&inc.preserved, super::tree::Forbid::Tables(&tables));
            let r = super::tree::verify_tree(
                &f,
                hw.mem,
                did,
                d.root,
                max_tables,
                Some(&inc.preserved),
                &inc.record,
                &mut super::tree::Visited::new(&inc.record),
                &mut scratch,
                Some(&mut targets),
            );
            report.leaf_targets_checked += targets.checked;
            if let Err(k) = r {
                refused.push((did, self.herr2(k)));
            }
        }
        for (did, error) in refused {
            self.refuse_domain(hw, did, error, report)?;
        }
        Ok(())
    }

    /// Drops domain `did` after a failed check: its devices are blocked (context entry
    /// made non-present, invalidated) and the refusal reported.
    fn refuse_domain(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        error: HandoverError,
        report: &mut VerifyReport,
    ) -> Result<(), HandoverError> {
        let devs: Vec<Device> = self
            .devices
            .values()
            .filter(|x| x.domain == did && x.state != DeviceState::Blocked)
            .copied()
            .collect();
        for dev in devs {
            self.block_in_memory(hw, dev.rid, Some(dev.context_entry))?;
            let ops = self.block_ops(dev.rid, did.0);
            self.invalidate(hw, &ops)?;
            if let Some(x) = self.devices.get_mut(&dev.rid) {
                x.state = DeviceState::Blocked;
            }
            report.blocked.push(dev.rid);
        }
        self.domains.remove(&did.0);
        report.failures.push((did, error));
        Ok(())
    }

    /// New kernel: ends the handover. Domains not verified yet are verified first (their
    /// table pages must be known to manage them); adopted domains and devices become
    /// live (map/unmap allowed again); blocked devices are forgotten; context tables no
    /// device uses are unhooked; every structure page verification established (the
    /// root, adopted devices' context and PASID pages, the tables of every domain whose
    /// walk succeeded) that is no longer referenced is freed, and the record's pages
    /// are released. Other pages of the record's runs (tables of domains refused, or
    /// memory the record claims that is not its own) are kept: counted in
    /// [`FinishReport::pages_kept`], never freed.
    pub fn finish(&mut self, hw: &mut Hw<'_>) -> Result<FinishReport, HandoverError> {
        if self.incoming.is_none() {
            return Err(self.herr2(K::State {
                why: "finish without adopt",
            }));
        }
        let mut report = FinishReport {
            verify: self.verify(hw)?,
            ..FinishReport::default()
        };
        self.devices.retain(|_, d| d.state != DeviceState::Blocked);
        let unhooked = self.unhook_unused_context_tables(hw)?;
        if !unhooked.is_empty() {
            self.global_invalidate(hw)?;
        }
        let Some(inc) = self.incoming.take() else {
            return Err(self.herr2(K::State {
                why: "finish without adopt",
            }));
        };
        let mut referenced = PageSet::new();
        let mut add = |p: PhysAddr| add_page(&mut referenced, p);
        add(self.root);
        for &t in self.ctx_tables.values() {
            add(t);
        }
        for d in self.devices.values() {
            for p in [d.pasid_dir, d.pasid_table].into_iter().flatten() {
                add(p);
            }
        }
        for d in self.domains.values() {
            for p in d.tables.pages() {
                add(p);
            }
        }
        // Only pages verification established as this unit's structures: a record
        // run may claim other pages (another client's preserved memory passes the
        // run-vs-preserved check), which are kept.
        for p in inc.known.pages() {
            if !referenced.contains(p) {
                hw.pages.free_page(p);
                report.pages_freed += 1;
            }
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
        // IDs of domains refused at adoption: their entries are gone and invalidated.
        let live: Vec<u16> = self.domains.keys().copied().collect();
        for d in &inc.record.domains {
            if !live.contains(&d.id.0) {
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
            "adopt: {} domains, {} devices, {} blocked, {} domains refused, {} unknown entries cleared, \
             work {} registers + {} entries, {} stale faults, record {} bytes",
            self.domains,
            self.devices,
            self.blocked.len(),
            self.refused_domains.len(),
            self.unknown_entries_cleared,
            self.registers_read,
            self.entries_read,
            self.stale_faults.len(),
            self.record_bytes
        )?;
        for b in &self.blocked {
            write!(f, "\n  blocked {}: {}", b.rid, b.error)?;
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
             kept (not verified as tables), {} record pages released",
            self.domains, self.devices, self.pages_freed, self.pages_kept, self.record_pages_freed
        )
    }
}

/// Adds page `p` to `set` unless it holds it already (a page that cannot be added is
/// left out: the callers only ever free fewer pages for it).
fn add_page(set: &mut PageSet, p: PhysAddr) {
    if !set.contains(p) {
        let _ = set.insert(p, 0);
    }
}
