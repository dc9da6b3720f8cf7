//! Old kernel: prepare, freeze, cancel.

use alloc::vec::Vec;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk_with, WalkLimits};
use iommu_core::{Iova, PhysAddr};

use super::record::{Record, RecordDevice, RecordDomain};
use super::{
    add_page, client_name, first_missing, runs, HandoverError, HandoverErrorKind as K, KhoOut,
    Outgoing, Selection,
};
use crate::driver::{irt_pages, read_dte, DeviceState, DomainKind, DomainState, Hw, Unit, PAGE};
use crate::hw::regs::{self, CONTROL};

/// What `prepare` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// Domains preserved.
    pub domains: usize,
    /// Devices preserved.
    pub devices: usize,
    /// Pages pinned (device table, page tables, GCR3 and interrupt-remapping tables).
    pub pinned_pages: u64,
    /// Leaf entries found in the preserved domains.
    pub leaves: u64,
    /// Mapping runs whose targets were checked against the memory other KHO clients
    /// preserve.
    pub leaf_targets_checked: u64,
    /// DTEs and table entries read (512 per page-table page walked).
    pub entries_read: u64,
    /// Size of the record payload in bytes.
    pub record_bytes: usize,
}

/// What `freeze` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreezeReport {
    /// Devices not preserved whose DTEs were made blocking.
    pub devices_blocked: usize,
    /// DTE qwords written.
    pub entries_written: u64,
    /// Commands queued (invalidations and COMPLETION_WAITs).
    pub commands: u64,
}

impl Unit {
    pub(crate) fn herr(&self, kind: K) -> HandoverError {
        HandoverError::new(self.base, kind)
    }

    /// Old kernel: preserves the domains and devices of `sel`.
    ///
    /// Reads the live registers (IommuEn must be set, Device Table Base must be the
    /// driver's) and each preserved DTE (bit for bit what the driver wrote, no
    /// reserved bit set), walks every preserved domain's tables with the core walker,
    /// checks that the pages the DTEs reach (device table, GCR3 tables, page tables,
    /// interrupt-remapping tables) are exactly those the driver allocated for them
    /// (closure check) and that every page a leaf maps lies in memory another KHO
    /// client preserves (call [`KhoOut::preserve`] for guest memory first), then adds
    /// the record (client [`client_name`], compatible `iommu-amdvi-v1`) and the pinned
    /// pages to `kho` and makes the preserved domains immutable. On error nothing is
    /// pinned, added or made immutable.
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
        for &id in &devs {
            match self.devices.get(&id) {
                None => return Err(self.herr(selerr("device is not attached", Some(id), None))),
                Some(d) if d.state != DeviceState::Live => {
                    return Err(self.herr(selerr("device is not live", Some(id), None)))
                }
                Some(d) if doms.binary_search(&d.domain).is_err() => {
                    return Err(self.herr(selerr(
                        "device's domain is not preserved",
                        Some(id),
                        Some(d.domain),
                    )))
                }
                _ => {}
            }
        }

        // Live registers.
        let control = hw.regs.read64(regs::CONTROL);
        if CONTROL::IOMMU_EN.read(control) == 0 {
            return Err(self.herr(K::TranslationDisabled { control }));
        }
        let dtb = hw.regs.read64(regs::DEV_TAB_BASE);
        if dtb != self.dev_tab_base() {
            return Err(self.herr(K::Register {
                register: "Device Table Base",
                live: dtb,
                record: self.dev_tab_base(),
            }));
        }
        let excl_base = hw.regs.read64(regs::EXCL_BASE);
        let excl_limit =
            hw.regs.read64(regs::EXCL_LIMIT) & regs::field_mask(regs::EXCL_LIMIT::LIMIT);

        // What the preserved DTEs reach.
        let mut entries = 0u64;
        let mut reachable = PageSet::new();
        for i in 0..self.devtab_pages {
            add_page(&mut reachable, PhysAddr(self.devtab.0 + i * PAGE));
        }
        let mut rec_devices = Vec::with_capacity(devs.len());
        for &id in &devs {
            let dev = self.devices[&id];
            let d = &self.domains[&dev.domain.0];
            let at = self.dte_addr(id);
            let live = read_dte(hw.mem, at).map_err(|err| {
                self.herr(K::Mem {
                    what: "reading a DTE",
                    err,
                })
            })?;
            entries += 1;
            let rsvd = live.reserved_bits();
            if rsvd != [0; 4] {
                return Err(self.herr(K::ReservedBits {
                    addr: at,
                    device: id,
                    bits: rsvd,
                }));
            }
            let want = self.dte_for(d, dev.irt);
            for (i, (f, e)) in live.qwords().iter().zip(want.qwords()).enumerate() {
                if *f != e {
                    return Err(self.herr(K::Mismatch {
                        what: ["DTE qword 0", "DTE qword 1", "DTE qword 2", "DTE qword 3"][i],
                        addr: PhysAddr(at.0 + 8 * i as u64),
                        device: Some(id),
                        did: Some(d.id),
                        found: *f,
                        expected: e,
                    }));
                }
            }
            if let Some((root, n)) = dev.irt {
                for p in irt_pages(root, n) {
                    add_page(&mut reachable, p);
                }
            }
            if d.gcr3.is_some() {
                add_page(&mut reachable, PhysAddr(live.gcr3_root()));
            }
            rec_devices.push(RecordDevice {
                device_id: id,
                domain: dev.domain,
                dte: live.qwords(),
                irt: dev.irt,
            });
        }
        let others = kho.preserved();
        let mut leaves = 0u64;
        let mut targets_checked = 0u64;
        let mut rec_domains = Vec::with_capacity(doms.len());
        for &did in &doms {
            let d = &self.domains[&did.0];
            let f = self.format_for(d.kind, did)?;
            let root = match (d.kind, d.gcr3) {
                (DomainKind::V2 { .. }, Some(g)) => {
                    // PASID 0's GCR3 entry must point at the domain's root.
                    let e = hw.mem.read_u64(g).map_err(|err| {
                        self.herr(K::Mem {
                            what: "reading a GCR3 entry",
                            err,
                        })
                    })?;
                    entries += 1;
                    let want = crate::hw::dte::Gcr3Entry::new(d.root.0).qword(0);
                    if e != want {
                        return Err(self.herr(K::Mismatch {
                            what: "GCR3 entry of PASID 0",
                            addr: g,
                            device: None,
                            did: Some(did),
                            found: e,
                            expected: want,
                        }));
                    }
                    add_page(&mut reachable, g);
                    g
                }
                _ => d.root,
            };
            let mut missing = None;
            let s = walk_with(&f, hw.mem, d.root, &WalkLimits::default(), |m| {
                targets_checked += 1;
                if missing.is_none() {
                    if let Some(page) = first_missing(m.pa, m.size.div_ceil(PAGE), &others) {
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
                add_page(&mut reachable, t.addr);
            }
            rec_domains.push(RecordDomain {
                id: did,
                kind: d.kind,
                root,
            });
        }

        // What the driver allocated for them: the pinned set.
        let mut pinned = PageSet::new();
        for i in 0..self.devtab_pages {
            add_page(&mut pinned, PhysAddr(self.devtab.0 + i * PAGE));
        }
        for &did in &doms {
            let d = &self.domains[&did.0];
            pinned = pinned.union(&d.tables);
            if let Some(g) = d.gcr3 {
                add_page(&mut pinned, g);
            }
        }
        for &id in &devs {
            if let Some((root, n)) = self.devices[&id].irt {
                for p in irt_pages(root, n) {
                    add_page(&mut pinned, p);
                }
            }
        }
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
            dev_tab_base: dtb,
            control,
            excl_base,
            excl_limit,
            efr: self.efr,
            first_device_id: self.first,
            last_device_id: self.last,
            domains: rec_domains,
            devices: rec_devices,
            pages: runs(&pinned),
        };
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
        for &id in &devs {
            if let Some(d) = self.devices.get_mut(&id) {
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

    /// Old kernel, last step before the kexec: the DTE of every device not preserved
    /// becomes blocking (through [`set_dte`](Unit::attach)'s order, with
    /// INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES of its domain and
    /// COMPLETION_WAIT); their interrupt-remapping tables are freed. IommuEn stays set;
    /// the unit refuses every change until `cancel`.
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
        let before = self.counters.commands;
        let others: Vec<_> = self
            .devices
            .values()
            .filter(|d| d.state != DeviceState::Preserved)
            .copied()
            .collect();
        let mut report = FreezeReport::default();
        let mut detached = Vec::new();
        for d in &others {
            self.block_device(hw, d.device_id, d.domain)?;
            report.entries_written += 4;
            if let Some((root, n)) = d.irt {
                for p in irt_pages(root, n) {
                    hw.pages.free_page(p);
                    self.counters.pages_freed += 1;
                }
            }
            detached.push((d.device_id, d.domain));
            self.devices.remove(&d.device_id);
        }
        report.devices_blocked = others.len();
        report.commands = self.counters.commands - before;
        self.frozen = true;
        if let Some(o) = self.outgoing.as_mut() {
            o.frozen = true;
            o.detached = detached;
        }
        Ok(report)
    }

    /// Old kernel: undoes `prepare` (and `freeze`): the record leaves `kho`, preserved
    /// domains and devices become live again, devices `freeze` blocked are attached
    /// again (without their interrupt-remapping tables, which `freeze` freed).
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
        for (id, did) in o.detached {
            if let Err(e) = self.attach(hw, id, did) {
                first_err.get_or_insert(e.into());
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
            "freeze: {} devices blocked, {} DTE qwords written, {} commands",
            self.devices_blocked, self.entries_written, self.commands
        )
    }
}
