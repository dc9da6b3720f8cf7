//! Old kernel: prepare, freeze, cancel; and the reading of a device's translation chain
//! (root entry, context entry, PASID directory and table entries) shared with adoption.

use alloc::vec::Vec;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk_with, WalkLimits};
use iommu_core::{DomainId, Iova, Pasid, PhysAddr, RequesterId};

use super::record::{Record, RecordDevice, RecordDomain};
use super::{client_name, HandoverError, HandoverErrorKind as K, KhoOut, Outgoing, Selection};
use crate::driver::inval::Op;
use crate::driver::{
    clear_entry, read_qwords, DeviceState, DomainKind, DomainState, Hw, Mode, Unit, PAGE,
};
use crate::hw::pasid::{
    pasid_dir_index, pasid_table_index, Flpm, PasidDirEntry, PasidEntry, Pgtt,
    PASID_DIR_ENTRY_SIZE, PASID_ENTRY_SIZE,
};
use crate::hw::regs::{self, GSTS};
use crate::hw::root::{
    AddressWidth, ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry,
    TranslationType, CONTEXT_ENTRY_SIZE, ROOT_ENTRY_SIZE, SM_CONTEXT_ENTRY_SIZE,
};

/// What `prepare` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// Domains preserved.
    pub domains: usize,
    /// Devices preserved.
    pub devices: usize,
    /// Pages pinned (root, context tables, PASID pages, page tables).
    pub pinned_pages: u64,
    /// Leaf entries found in the preserved domains.
    pub leaves: u64,
    /// Mapping runs whose targets were checked against the memory other KHO clients
    /// preserve (each must lie in it).
    pub leaf_targets_checked: u64,
    /// Table entries read (structure entries plus 512 per page-table page walked).
    pub entries_read: u64,
    /// Size of the record payload in bytes.
    pub record_bytes: usize,
}

/// What `freeze` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreezeReport {
    /// Devices not preserved whose context entries were cleared.
    pub devices_cleared: usize,
    /// Context tables no preserved device uses, unhooked from the root table.
    pub context_tables_dropped: usize,
    /// Preserved devices whose page-request enable was cleared.
    pub page_requests_cleared: usize,
    /// Entries written.
    pub entries_written: u64,
}

/// Where a device's chain broke: before its context table could be trusted (the root
/// entry is bad) or after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broke {
    RootEntry,
    /// The context table is trusted; the device's context entry is at this address.
    ContextEntry(PhysAddr),
}

/// A device's translation chain as read from memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub(crate) key: (u8, u8),
    pub(crate) ctx_table: PhysAddr,
    pub(crate) ctx_entry: PhysAddr,
    pub(crate) pasid: Option<Pasid>,
    pub(crate) pasid_dir: Option<PhysAddr>,
    pub(crate) pasid_table: Option<PhysAddr>,
    pub(crate) did: u16,
    pub(crate) kind: DomainKind,
    pub(crate) levels: u8,
    pub(crate) table_root: PhysAddr,
}

/// Reads and checks the chain of `rid` under the root table `root`: every entry
/// present, no reserved bit set, translation through tables (pass-through and nested
/// are refused), every structure page inside `preserved` when given. `entries` counts
/// the entries read.
pub(crate) fn read_chain(
    unit: &Unit,
    mem: &dyn PhysMem,
    root: PhysAddr,
    rid: RequesterId,
    preserved: Option<&PageSet>,
    entries: &mut u64,
) -> Result<Chain, (K, Broke)> {
    let haw = unit.haw;
    let dev = Some(rid);
    let memerr = |what, b| move |err| (K::Mem { what, err }, b);
    let check_page = |what, page: PhysAddr, b| {
        if page.0 % PAGE != 0 {
            return Err((
                K::Mismatch {
                    what,
                    addr: page,
                    device: dev,
                    did: None,
                    found: page.0,
                    expected: page.0 & !(PAGE - 1),
                },
                b,
            ));
        }
        match preserved {
            Some(p) if !p.contains(page) => Err((
                K::NotPreserved {
                    what,
                    page,
                    device: dev,
                    did: None,
                },
                b,
            )),
            _ => Ok(()),
        }
    };
    let rsvd = |what, addr, bits: &[u64], b| -> Result<(), (K, Broke)> {
        match bits.iter().find(|&&x| x != 0) {
            Some(&bits) => Err((
                K::ReservedBits {
                    what,
                    addr,
                    device: dev,
                    bits,
                },
                b,
            )),
            None => Ok(()),
        }
    };
    let not_present = |what, addr, b| {
        (
            K::NotPresent {
                what,
                addr,
                device: rid,
            },
            b,
        )
    };
    let re_at = PhysAddr(root.0 + rid.bus as u64 * ROOT_ENTRY_SIZE);
    let q =
        read_qwords::<2>(mem, re_at).map_err(memerr("reading a root entry", Broke::RootEntry))?;
    *entries += 1;
    match unit.mode {
        Mode::Legacy => {
            let re = RootEntry::from_qwords(q);
            rsvd(
                "root entry",
                re_at,
                &re.reserved_bits(haw),
                Broke::RootEntry,
            )?;
            if !re.present() {
                return Err(not_present("root entry", re_at, Broke::RootEntry));
            }
            let ct = PhysAddr(re.context_table());
            check_page("context table", ct, Broke::RootEntry)?;
            let at = PhysAddr(ct.0 + rid.devfn as u64 * CONTEXT_ENTRY_SIZE);
            let b = Broke::ContextEntry(at);
            let ce = ContextEntry::from_qwords(
                read_qwords::<2>(mem, at).map_err(memerr("reading a context entry", b))?,
            );
            *entries += 1;
            rsvd("context entry", at, &ce.reserved_bits(haw), b)?;
            if !ce.present() {
                return Err(not_present("context entry", at, b));
            }
            if ce.tt() != TranslationType::Untranslated {
                return Err((
                    K::Mismatch {
                        what: "context-entry translation type (only untranslated requests through tables are adopted)",
                        addr: at,
                        device: dev,
                        did: Some(DomainId(ce.did())),
                        found: ce.tt().bits(),
                        expected: TranslationType::Untranslated.bits(),
                    },
                    b,
                ));
            }
            let aw = AddressWidth::from_bits(ce.aw()).ok_or((
                K::Mismatch {
                    what: "context-entry address width",
                    addr: at,
                    device: dev,
                    did: Some(DomainId(ce.did())),
                    found: ce.aw(),
                    expected: AddressWidth::Bits48.bits(),
                },
                b,
            ))?;
            Ok(Chain {
                key: (rid.bus, 0),
                ctx_table: ct,
                ctx_entry: at,
                pasid: None,
                pasid_dir: None,
                pasid_table: None,
                did: ce.did(),
                kind: DomainKind::SecondStage,
                levels: aw.levels() as u8,
                table_root: PhysAddr(ce.slptptr()),
            })
        }
        Mode::Scalable => {
            let re = ScalableRootEntry::from_qwords(q);
            let bits = re.reserved_bits_for(rid.devfn, haw);
            rsvd("scalable root entry", re_at, &[bits], Broke::RootEntry)?;
            let (present, ct) = re.half_for(rid.devfn);
            if !present {
                return Err(not_present("scalable root entry", re_at, Broke::RootEntry));
            }
            let ct = PhysAddr(ct);
            check_page("context table", ct, Broke::RootEntry)?;
            let at = PhysAddr(ct.0 + (rid.devfn & 0x7f) as u64 * SM_CONTEXT_ENTRY_SIZE);
            let b = Broke::ContextEntry(at);
            let ce = ScalableContextEntry::from_qwords(
                read_qwords::<4>(mem, at).map_err(memerr("reading a context entry", b))?,
            );
            *entries += 1;
            rsvd("scalable context entry", at, &ce.reserved_bits(haw), b)?;
            if !ce.present() {
                return Err(not_present("scalable context entry", at, b));
            }
            // Requests with PASID and device-TLB translation requests would reach
            // state the record does not describe (only RID_PASID is recorded).
            for (what, set) in [
                (
                    "context-entry PASIDE (requests with PASID are not recorded)",
                    ce.paside(),
                ),
                (
                    "context-entry DTE (device-TLB translation requests are not recorded)",
                    ce.dte(),
                ),
            ] {
                if set {
                    return Err((
                        K::Mismatch {
                            what,
                            addr: at,
                            device: dev,
                            did: None,
                            found: 1,
                            expected: 0,
                        },
                        b,
                    ));
                }
            }
            let pasid = ce.rid_pasid();
            let di = pasid_dir_index(pasid);
            if di >= ce.pasid_dir_entries() {
                return Err((
                    K::Mismatch {
                        what: "RID_PASID beyond the PASID directory (PDTS)",
                        addr: at,
                        device: dev,
                        did: None,
                        found: pasid as u64,
                        expected: (ce.pasid_dir_entries() << 6) - 1,
                    },
                    b,
                ));
            }
            let dir = PhysAddr(ce.pasid_dir());
            // The directory may span several pages; the entry's page must be preserved.
            let de_at = PhysAddr(dir.0 + di * PASID_DIR_ENTRY_SIZE);
            check_page("PASID directory", PhysAddr(de_at.0 & !(PAGE - 1)), b)?;
            let de = PasidDirEntry::from_qwords(
                read_qwords::<1>(mem, de_at)
                    .map_err(memerr("reading a PASID-directory entry", b))?,
            );
            *entries += 1;
            rsvd("PASID-directory entry", de_at, &[de.reserved_bits(haw)], b)?;
            if !de.present() {
                return Err(not_present("PASID-directory entry", de_at, b));
            }
            let table = PhysAddr(de.table());
            check_page("PASID table", table, b)?;
            let pe_at = PhysAddr(table.0 + pasid_table_index(pasid) * PASID_ENTRY_SIZE);
            let pe = PasidEntry::from_qwords(
                read_qwords::<8>(mem, pe_at).map_err(memerr("reading a PASID-table entry", b))?,
            );
            *entries += 1;
            rsvd("PASID-table entry", pe_at, &pe.reserved_bits(haw), b)?;
            if !pe.present() {
                return Err(not_present("PASID-table entry", pe_at, b));
            }
            let mismatch = |what, found, expected| {
                (
                    K::Mismatch {
                        what,
                        addr: pe_at,
                        device: dev,
                        did: Some(DomainId(pe.did())),
                        found,
                        expected,
                    },
                    b,
                )
            };
            let (kind, levels, table_root) = match pe.pgtt() {
                Some(Pgtt::SecondStage) => {
                    let aw = AddressWidth::from_bits(pe.aw()).ok_or(mismatch(
                        "PASID-entry address width",
                        pe.aw(),
                        AddressWidth::Bits48.bits(),
                    ))?;
                    (DomainKind::SecondStage, aw.levels() as u8, pe.slptptr())
                }
                Some(Pgtt::FirstStage) => {
                    let m = Flpm::from_bits(pe.flpm()).ok_or(mismatch(
                        "PASID-entry first-stage paging mode",
                        pe.flpm(),
                        Flpm::Level4.bits(),
                    ))?;
                    (DomainKind::FirstStage, m.levels() as u8, pe.flptptr())
                }
                _ => {
                    return Err(mismatch(
                        "PASID-entry PGTT (only first- or second-stage translation is adopted)",
                        pe.pgtt_bits(),
                        Pgtt::SecondStage.bits(),
                    ))
                }
            };
            Ok(Chain {
                key: (rid.bus, rid.devfn >> 7),
                ctx_table: ct,
                ctx_entry: at,
                pasid: Some(Pasid(pasid)),
                pasid_dir: Some(dir),
                pasid_table: Some(table),
                did: pe.did(),
                kind,
                levels,
                table_root: PhysAddr(table_root),
            })
        }
    }
}

/// Page runs `(first, count)` of a set, ascending.
pub(crate) fn runs(set: &PageSet) -> Vec<(PhysAddr, u64)> {
    let mut out: Vec<(PhysAddr, u64)> = Vec::new();
    for (a, order) in set.iter() {
        let n = 1u64 << order;
        match out.last_mut() {
            Some((p, c)) if p.0 + *c * PAGE == a.0 => *c += n,
            _ => out.push((a, n)),
        }
    }
    out
}

fn insert_page(set: &mut PageSet, p: PhysAddr) {
    if !set.contains(p) {
        let _ = set.insert(p, 0);
    }
}

impl Unit {
    fn herr(&self, kind: K) -> HandoverError {
        HandoverError::new(self.base, kind)
    }

    /// Old kernel: preserves the domains and devices of `sel`.
    ///
    /// Walks the live registers and tables, pins every table page, checks that the pages
    /// reachable from the live root for the preserved devices and domains are exactly
    /// the pages the driver allocated for them (closure check) and that every page a
    /// leaf of a preserved domain maps lies in memory another KHO client preserves
    /// (call [`KhoOut::preserve`] for guest memory first), adds the record (client
    /// [`client_name`], compatible `iommu-vtd-v1`) and the pinned pages to `kho`, and
    /// makes the preserved domains immutable. On error nothing is pinned, nothing is
    /// added to `kho` and nothing becomes immutable.
    pub fn prepare(
        &mut self,
        hw: &mut Hw<'_>,
        kho: &mut KhoOut,
        sel: &Selection,
    ) -> Result<PrepareReport, HandoverError> {
        if self.outgoing.is_some() {
            return Err(self.herr(K::State {
                why: "prepare called twice (cancel first)",
            }));
        }
        if self.incoming.is_some() {
            return Err(self.herr(K::State {
                why: "the unit was adopted and not finished",
            }));
        }
        if self.frozen {
            return Err(self.herr(K::State {
                why: "unit is frozen",
            }));
        }
        let selerr = |why, device, did| K::Selection { why, device, did };
        let mut doms = sel.domains.clone();
        doms.sort();
        if doms.windows(2).any(|w| w[0] == w[1]) {
            return Err(self.herr(selerr("a domain is named twice", None, None)));
        }
        for &did in &doms {
            match self.domains.get(&did.0) {
                None => return Err(self.herr(selerr("no such domain", None, Some(did)))),
                Some(d) if d.state != DomainState::Live => {
                    return Err(self.herr(selerr("domain is not live", None, Some(did))))
                }
                _ => {}
            }
        }
        let mut devs = sel.devices.clone();
        devs.sort();
        if devs.windows(2).any(|w| w[0] == w[1]) {
            return Err(self.herr(selerr("a device is named twice", None, None)));
        }
        for &rid in &devs {
            match self.devices.get(&rid) {
                None => return Err(self.herr(selerr("device is not attached", Some(rid), None))),
                Some(d) if d.state != DeviceState::Live => {
                    return Err(self.herr(selerr("device is not live", Some(rid), None)))
                }
                Some(d) if doms.binary_search(&d.domain).is_err() => {
                    return Err(self.herr(selerr(
                        "device's domain is not preserved",
                        Some(rid),
                        Some(d.domain),
                    )))
                }
                _ => {}
            }
        }

        // Live registers.
        let gsts = hw.regs.read32(regs::GSTS);
        if !GSTS::TES.is_set(gsts) {
            return Err(self.herr(K::TranslationDisabled { gsts }));
        }
        let rtaddr = hw.regs.read64(regs::RTADDR);
        let expected = self.root.0 | regs::field_value(regs::RTADDR::TTM, self.mode.ttm().bits());
        if rtaddr != expected {
            return Err(self.herr(K::Register {
                register: "RTADDR",
                live: rtaddr,
                record: expected,
            }));
        }

        // Reachable from the live root.
        let mut entries = 0u64;
        let mut reachable = PageSet::new();
        insert_page(&mut reachable, self.root);
        let mut rec_devices = Vec::with_capacity(devs.len());
        for &rid in &devs {
            let dev = self.devices[&rid];
            let c = read_chain(self, hw.mem, self.root, rid, None, &mut entries)
                .map_err(|(k, _)| self.herr(k))?;
            let d = &self.domains[&dev.domain.0];
            let checks = [
                ("domain ID", c.did as u64, d.id.0 as u64),
                ("table root", c.table_root.0, d.root.0),
                ("levels", c.levels as u64, d.levels as u64),
                ("table kind", c.kind as u64, d.kind as u64),
                ("context entry address", c.ctx_entry.0, dev.context_entry.0),
            ];
            for (what, found, exp) in checks {
                if found != exp {
                    return Err(self.herr(K::Mismatch {
                        what,
                        addr: c.ctx_entry,
                        device: Some(rid),
                        did: Some(d.id),
                        found,
                        expected: exp,
                    }));
                }
            }
            insert_page(&mut reachable, c.ctx_table);
            for p in [c.pasid_dir, c.pasid_table].into_iter().flatten() {
                insert_page(&mut reachable, p);
            }
            rec_devices.push(RecordDevice {
                rid,
                pasid: c.pasid,
                domain: dev.domain,
            });
        }
        let mut leaves = 0u64;
        let mut rec_domains = Vec::with_capacity(doms.len());
        // Every page a preserved domain maps must be preserved by its owner (guest
        // memory, added to `kho` before this call): after the kexec the new kernel
        // owns everything else, and a device must not reach it.
        let others = kho.preserved();
        let mut targets_checked = 0u64;
        for &did in &doms {
            let d = &self.domains[&did.0];
            let f = self.format_for(d.kind, d.levels, did)?;
            let mut missing = None;
            let s = walk_with(&f, hw.mem, d.root, &WalkLimits::default(), |m| {
                targets_checked += 1;
                if missing.is_none() {
                    let pages = m.size.div_ceil(PAGE);
                    if let Some(page) = super::tree::first_unpreserved(m.pa, pages, &others) {
                        missing = Some(K::LeafTarget {
                            did,
                            iova: Iova(m.iova.0 + (page.0 - m.pa.0)),
                            page,
                            why: "in no memory a KHO client preserves",
                        });
                    }
                }
            })
            .map_err(|err| self.herr(K::Walk { did, err }))?;
            if let Some(k) = missing {
                return Err(self.herr(k));
            }
            entries += s.tables.len() as u64 * 512;
            leaves += s.leaves;
            for t in &s.tables {
                if reachable.contains(t.addr) {
                    return Err(self.herr(K::Mismatch {
                        what: "table page shared with another structure",
                        addr: t.addr,
                        device: None,
                        did: Some(did),
                        found: t.addr.0,
                        expected: 0,
                    }));
                }
                insert_page(&mut reachable, t.addr);
            }
            rec_domains.push(RecordDomain {
                id: did,
                kind: d.kind,
                levels: d.levels,
                root: d.root,
            });
        }

        // What the driver allocated for them: the pinned set.
        let mut pinned = PageSet::new();
        insert_page(&mut pinned, self.root);
        for &rid in &devs {
            let dev = self.devices[&rid];
            let key = match self.mode {
                Mode::Legacy => (rid.bus, 0),
                Mode::Scalable => (rid.bus, rid.devfn >> 7),
            };
            if let Some(&t) = self.ctx_tables.get(&key) {
                insert_page(&mut pinned, t);
            }
            for p in [dev.pasid_dir, dev.pasid_table].into_iter().flatten() {
                insert_page(&mut pinned, p);
            }
        }
        for &did in &doms {
            pinned = pinned.union(&self.domains[&did.0].tables);
        }

        // Closure check, before anything is committed.
        let missing = reachable.difference(&pinned);
        if let Some((page, _)) = missing.iter().next() {
            return Err(self.herr(K::ClosureMissing {
                page,
                count: missing.page_count(),
            }));
        }
        let extra = pinned.difference(&reachable);
        if let Some((page, _)) = extra.iter().next() {
            return Err(self.herr(K::ClosureExtra {
                page,
                count: extra.page_count(),
            }));
        }

        let record = Record {
            mmio_base: self.base,
            rtaddr,
            cap: self.cap,
            ecap: self.ecap,
            mode: self.mode,
            haw: self.haw,
            domains: rec_domains,
            devices: rec_devices,
            pages: runs(&pinned),
        };
        // KHO gets the pinned pages as the largest aligned blocks (the radix tree the
        // next kernel reads is then O(blocks), not O(table pages)).
        let mut compact = PageSet::new();
        for &(start, n) in &record.pages {
            compact
                .insert_range(start, n)
                .map_err(|e| self.herr(K::PageSet(e)))?;
        }
        let payload = record.encode();
        let record_bytes = payload.len();
        let client = client_name(self.base);
        if !kho.add_client(
            client.clone(),
            super::record::COMPATIBLE.into(),
            payload,
            compact,
        ) {
            return Err(self.herr(K::State {
                why: "the KHO handover already holds a record for this unit",
            }));
        }
        for &did in &doms {
            if let Some(d) = self.domains.get_mut(&did.0) {
                d.state = DomainState::Preserved;
            }
        }
        for &rid in &devs {
            if let Some(d) = self.devices.get_mut(&rid) {
                d.state = DeviceState::Preserved;
            }
        }
        let report = PrepareReport {
            domains: doms.len(),
            devices: devs.len(),
            pinned_pages: pinned.page_count(),
            leaves,
            leaf_targets_checked: targets_checked,
            entries_read: entries,
            record_bytes,
        };
        self.outgoing = Some(Outgoing {
            client,
            record,
            pinned,
            frozen: false,
            detached: Vec::new(),
        });
        Ok(report)
    }

    /// The record `prepare` built (old kernel) or adopted (new kernel), if any.
    pub fn handover_record(&self) -> Option<&Record> {
        self.outgoing
            .as_ref()
            .map(|o| &o.record)
            .or(self.incoming.as_ref().map(|i| &i.record))
    }

    /// The pages `prepare` pinned.
    pub fn pinned_pages(&self) -> Option<&PageSet> {
        self.outgoing.as_ref().map(|o| &o.pinned)
    }

    /// Unhooks every context table no device of `self.devices` (other than blocked
    /// ones) uses; returns the pages, to free after the invalidation.
    pub(crate) fn unhook_unused_context_tables(
        &mut self,
        hw: &mut Hw<'_>,
    ) -> Result<Vec<PhysAddr>, HandoverError> {
        let used: Vec<(u8, u8)> = self
            .devices
            .values()
            .filter(|d| d.state != DeviceState::Blocked)
            .map(|d| match self.mode {
                Mode::Legacy => (d.rid.bus, 0),
                Mode::Scalable => (d.rid.bus, d.rid.devfn >> 7),
            })
            .collect();
        let unused: Vec<((u8, u8), PhysAddr)> = self
            .ctx_tables
            .iter()
            .filter(|(k, _)| !used.contains(k))
            .map(|(k, p)| (*k, *p))
            .collect();
        let mut pages = Vec::with_capacity(unused.len());
        for (k, p) in unused {
            self.unhook_context_table(hw, k)?;
            pages.push(p);
        }
        Ok(pages)
    }

    /// Old kernel, last step before the kexec: clears the context entries of devices
    /// not preserved, unhooks context tables no preserved device uses, clears
    /// page-request enables, then one global context-cache, PASID-cache and IOTLB
    /// invalidation. Translation stays enabled; the unit refuses every change until
    /// `cancel`.
    pub fn freeze(&mut self, hw: &mut Hw<'_>) -> Result<FreezeReport, HandoverError> {
        match &self.outgoing {
            None => {
                return Err(self.herr(K::State {
                    why: "freeze before prepare",
                }))
            }
            Some(o) if o.frozen => {
                return Err(self.herr(K::State {
                    why: "already frozen",
                }))
            }
            _ => {}
        }
        let mut report = FreezeReport::default();
        let base = self.base;
        let merr = move |what| move |err| HandoverError::new(base, K::Mem { what, err });
        let others: Vec<_> = self
            .devices
            .values()
            .filter(|d| d.state != DeviceState::Preserved)
            .copied()
            .collect();
        let mut to_free = Vec::new();
        let mut detached = Vec::new();
        for d in &others {
            if let Some(t) = d.pasid_table {
                clear_entry(hw.mem, t, (PASID_ENTRY_SIZE / 8) as usize)
                    .map_err(merr("clearing a PASID entry"))?;
                report.entries_written += 1;
            }
            let q = if self.mode == Mode::Legacy { 2 } else { 4 };
            clear_entry(hw.mem, d.context_entry, q).map_err(merr("clearing a context entry"))?;
            report.entries_written += 1;
            to_free.extend([d.pasid_table, d.pasid_dir].into_iter().flatten());
            detached.push((d.rid, d.domain));
            self.devices.remove(&d.rid);
        }
        report.devices_cleared = others.len();
        let dropped = self.unhook_unused_context_tables(hw)?;
        report.context_tables_dropped = dropped.len();
        report.entries_written += dropped.len() as u64;
        to_free.extend(dropped);
        if self.mode == Mode::Scalable {
            let preserved: Vec<PhysAddr> = self.devices.values().map(|d| d.context_entry).collect();
            for at in preserved {
                let q = read_qwords::<1>(hw.mem, at).map_err(merr("reading a context entry"))?;
                let mut ce = ScalableContextEntry::from_qwords([q[0], 0, 0, 0]);
                if ce.pre() {
                    ce.set_pre(false);
                    hw.mem
                        .write_u64(at, ce.qword(0))
                        .map_err(merr("clearing page-request enable"))?;
                    report.page_requests_cleared += 1;
                    report.entries_written += 1;
                }
            }
        }
        self.global_invalidate(hw)?;
        for p in to_free {
            hw.pages.free_page(p);
            self.counters.pages_freed += 1;
        }
        self.frozen = true;
        if let Some(o) = self.outgoing.as_mut() {
            o.frozen = true;
            o.detached = detached;
        }
        Ok(report)
    }

    /// Old kernel: undoes `prepare` (and `freeze`): the record leaves `kho`, preserved
    /// domains and devices become live again, devices `freeze` detached are attached
    /// again.
    pub fn cancel(&mut self, hw: &mut Hw<'_>, kho: &mut KhoOut) -> Result<(), HandoverError> {
        let Some(o) = self.outgoing.take() else {
            return Err(self.herr(K::State {
                why: "cancel without prepare",
            }));
        };
        kho.remove_client(&o.client);
        self.frozen = false;
        for d in self.domains.values_mut() {
            if d.state == DomainState::Preserved {
                d.state = DomainState::Live;
            }
        }
        for d in self.devices.values_mut() {
            if d.state == DeviceState::Preserved {
                d.state = DeviceState::Live;
            }
        }
        let mut first_err = None;
        for (rid, did) in o.detached {
            if let Err(e) = self.attach(hw, rid, did) {
                first_err.get_or_insert(e.into());
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Blocks a device found through `chain` (or through its bus when the context
    /// table is not trusted): the entry is cleared in memory; the caller invalidates.
    pub(crate) fn block_in_memory(
        &self,
        hw: &mut Hw<'_>,
        rid: RequesterId,
        ctx_entry: Option<PhysAddr>,
    ) -> Result<(), HandoverError> {
        let merr = |err| {
            HandoverError::new(
                self.base,
                K::Mem {
                    what: "blocking a device",
                    err,
                },
            )
        };
        match ctx_entry {
            Some(at) => {
                let q = if self.mode == Mode::Legacy { 2 } else { 4 };
                clear_entry(hw.mem, at, q).map_err(merr)
            }
            None => {
                let re_at = PhysAddr(self.root.0 + rid.bus as u64 * ROOT_ENTRY_SIZE);
                match self.mode {
                    Mode::Legacy => clear_entry(hw.mem, re_at, 2).map_err(merr),
                    // Present bit of the half serving this devfn.
                    Mode::Scalable => {
                        let at = if rid.devfn & 0x80 != 0 {
                            re_at.0 + 8
                        } else {
                            re_at.0
                        };
                        hw.mem.write_u64(PhysAddr(at), 0).map_err(merr)
                    }
                }
            }
        }
    }

    pub(crate) fn block_ops(&self, rid: RequesterId, did: u16) -> Vec<Op> {
        let mut ops = alloc::vec![Op::ContextDevice {
            did,
            sid: rid.sid()
        }];
        if self.mode == Mode::Scalable {
            ops.push(Op::PasidCacheDomain { did });
            ops.push(Op::PasidIotlbPasid { did, pasid: 0 });
        }
        ops.push(Op::IotlbDomain { did });
        ops
    }
}

impl core::fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "prepare: {} domains, {} devices, {} pages pinned, {} leaves, {} leaf-target runs checked, {} entries read, record {} bytes",
            self.domains, self.devices, self.pinned_pages, self.leaves, self.leaf_targets_checked, self.entries_read, self.record_bytes
        )
    }
}

impl core::fmt::Display for FreezeReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "freeze: {} devices cleared, {} context tables dropped, {} page-request enables cleared, {} entries written",
            self.devices_cleared, self.context_tables_dropped, self.page_requests_cleared, self.entries_written
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_contiguous_pages() {
        let mut s = PageSet::new();
        for p in [0x1000u64, 0x2000, 0x3000, 0x8000] {
            s.insert(PhysAddr(p), 0).unwrap();
        }
        assert_eq!(
            runs(&s),
            alloc::vec![(PhysAddr(0x1000), 3), (PhysAddr(0x8000), 1)]
        );
    }
}
