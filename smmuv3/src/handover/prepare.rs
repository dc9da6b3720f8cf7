//! Old kernel: prepare, freeze, cancel.

use alloc::vec::Vec;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk, WalkLimits};
use iommu_core::{DomainId, PhysAddr};

use super::{
    client_name, first_missing, runs, HandoverError, HandoverErrorKind as K, KhoOut, Outgoing,
    Selection,
};
use crate::driver::{read_qwords, DomainState, Hw, Unit, ENTRY_BYTES, PAGE};
use crate::format::Vmsa;
use crate::hw::cmd::{Cmd, Opcode};
use crate::hw::regs::{self, CR0};
use crate::hw::ste::{Config, Ste, StrtabFmt};
use crate::record::{Record, RecordDomain, RecordMaster, COMPATIBLE};

/// What `prepare` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// Domains preserved.
    pub domains: usize,
    /// Masters preserved.
    pub masters: usize,
    /// Pages pinned (stream table, L2 stream tables, CD tables, page tables).
    pub pages_pinned: u64,
    /// Leaf-target runs checked against the preserved memory.
    pub leaf_targets_checked: u64,
    /// Bytes of the record payload.
    pub record_bytes: usize,
}

/// What `freeze` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreezeReport {
    /// Masters made to abort.
    pub masters_aborted: usize,
    /// STE qwords written and commands issued: the freeze half of the blackout.
    pub entries_written: u64,
}

impl Unit {
    fn herr(&self, kind: K) -> HandoverError {
        HandoverError::new(self.base, kind)
    }

    /// Walks one stage of domain `did`, checks closure (every table page reached is one
    /// of the domain's) and, for the IOVA stage, that every leaf target is in `keep`;
    /// adds the pages reached to `pinned`. Returns leaf runs checked.
    fn pin_tables(
        &self,
        hw: &Hw<'_>,
        did: DomainId,
        f: &Vmsa,
        root: PhysAddr,
        keep: &PageSet,
        pinned: &mut PageSet,
    ) -> Result<u64, HandoverError> {
        let d = &self.domains[&did.0];
        let w = walk(f, &*hw.mem, root, &WalkLimits::default())
            .map_err(|err| self.herr(K::Walk { did, err }))?;
        for t in &w.tables {
            // Tables take at least a granule (roots smaller than one included).
            let n = t.bytes.max(f.granule().bytes()) / PAGE;
            if let Some(page) = first_missing(&d.tables, t.addr, n) {
                return Err(self.herr(K::UnpinnedTable { did, page }));
            }
            let _ = pinned.insert_range(t.addr, n);
        }
        for m in &w.mappings {
            let start = PhysAddr(m.pa.0 & !(PAGE - 1));
            let pages = (m.pa.0 + m.size - start.0).div_ceil(PAGE);
            if first_missing(keep, start, pages).is_some() {
                return Err(self.herr(K::LeafTargetNotPreserved {
                    did,
                    iova: m.iova.0,
                    pa: m.pa,
                    len: m.size,
                }));
            }
        }
        Ok(w.mappings.len() as u64)
    }

    /// Old kernel: preserves the domains and masters of `sel` (see the module
    /// documentation). Other KHO clients' memory (guest memory) must be added to `kho`
    /// first: every leaf target must lie in it.
    pub fn prepare(
        &mut self,
        hw: &mut Hw<'_>,
        kho: &mut KhoOut,
        sel: &Selection,
    ) -> Result<PrepareReport, HandoverError> {
        if self.outgoing.is_some() || self.frozen {
            return Err(self.herr(K::State {
                why: "prepare while prepared or frozen",
            }));
        }
        let mut dids = sel.domains.clone();
        dids.sort_unstable();
        dids.dedup();
        let mut sids = sel.masters.clone();
        sids.sort_unstable();
        sids.dedup();
        for &did in &dids {
            if !self.domains.contains_key(&did.0) {
                return Err(self.herr(K::UnknownDomain { did }));
            }
        }
        let mut pinned = PageSet::new();
        // The stream table: its L1 (or linear) block.
        let _ = pinned.insert_range(self.strtab_base, self.strtab_bytes.max(PAGE) / PAGE);
        let mut masters = Vec::new();
        for &sid in &sids {
            let m = self
                .masters
                .get(&sid)
                .cloned()
                .ok_or(self.herr(K::MasterNotPreservable {
                    sid,
                    why: "no master with this StreamID is attached",
                }))?;
            if dids.binary_search(&m.domain).is_err() {
                return Err(self.herr(K::MasterNotPreservable {
                    sid,
                    why: "its domain is not preserved",
                }));
            }
            // The STE in memory must be the one the driver wrote.
            let at = self
                .ste_addr(hw, sid, false)?
                .ok_or(self.herr(K::MasterNotPreservable {
                    sid,
                    why: "no L2 stream table",
                }))?;
            let live: [u64; 8] =
                read_qwords(&*hw.mem, at).map_err(|e| self.herr(K::Driver(mem(e))))?;
            if live != m.ste.qwords() {
                return Err(self.herr(K::EntryMismatch {
                    sid,
                    what: "STE",
                    at,
                }));
            }
            if self.strtab.fmt == StrtabFmt::TwoLevel {
                let l1 = sid >> self.strtab.split;
                let l2 = self.l2[&l1];
                let _ = pinned.insert_range(l2, (ENTRY_BYTES << self.strtab.split) / PAGE);
            }
            let d = &self.domains[&m.domain.0];
            if let Some(t) = m.cd {
                let live: [u64; 8] =
                    read_qwords(&*hw.mem, t.cd0()).map_err(|e| self.herr(K::Driver(mem(e))))?;
                if live != self.make_cd(d).qwords() {
                    return Err(self.herr(K::EntryMismatch {
                        sid,
                        what: "CD",
                        at: t.cd0(),
                    }));
                }
                for p in t.blocks() {
                    let _ = pinned.insert_range(p, t.bytes / PAGE);
                }
            }
            masters.push(RecordMaster {
                sid,
                domain: m.domain.0 as u32,
                ste: m.ste,
                cd_base: m.cd.map_or(0, |t| t.base.0),
                s1fmt: m.cd.map_or(0, |t| t.fmt.bits() as u8),
                s1cdmax: m.cd.map_or(0, |t| t.cdmax),
            });
        }
        // Domains: their tables, closure, leaf targets.
        let guest = kho.preserved();
        let mut checked = 0;
        let mut domains = Vec::new();
        for &did in &dids {
            let d = self.domains[&did.0].clone();
            if let Some((f, root)) = d.s1 {
                checked += self.pin_tables(hw, did, &f, root, &guest, &mut pinned)?;
            }
            if let Some((f, root)) = d.s2 {
                // Stage 2 of a nested domain maps stage-1 tables and CD tables too: its
                // targets are guest memory or pages pinned here.
                let keep = if d.s1.is_some() {
                    guest.union(&pinned)
                } else {
                    guest.clone()
                };
                checked += self.pin_tables(hw, did, &f, root, &keep, &mut pinned)?;
            }
            let (s1, s2) = (d.s1.map(|x| x.0), d.s2.map(|x| x.0));
            domains.push(RecordDomain {
                id: did.0 as u32,
                stage: d.stage,
                granule: d.granule,
                asid: d.asid,
                vmid: d.vmid,
                t0sz: s1.map_or(0, |_| (64 - crate::driver::IA_BITS) as u8),
                ips: s1.map_or(0, |_| self.oas_enc()),
                s2t0sz: s2.map_or(0, |_| (64 - crate::driver::IA_BITS) as u8),
                s2sl0: s2.map_or(0, |f| crate::driver::s2sl0(f.granule()) as u8),
                s2ps: s2.map_or(0, |_| self.oas_enc()),
                ttb: d.s1.map_or(0, |x| x.1 .0),
                s2ttb: d.s2.map_or(0, |x| x.1 .0),
            });
        }
        let record = Record {
            mmio_base: self.base,
            idr0: self.idr0,
            idr1: self.idr1,
            idr5: self.idr5,
            strtab_base: hw.regs.read64(regs::STRTAB_BASE),
            strtab_base_cfg: hw.regs.read32(regs::STRTAB_BASE_CFG),
            cr0: hw.regs.read32(regs::CR0),
            cr1: hw.regs.read32(regs::CR1),
            cr2: hw.regs.read32(regs::CR2),
            gbpa: hw.regs.read32(regs::GBPA),
            domains,
            masters,
            pages: runs(&pinned),
        };
        let payload = record.encode();
        let bytes = payload.len();
        if !kho.add_client(
            client_name(self.base),
            COMPATIBLE.into(),
            payload,
            pinned.clone(),
        ) {
            return Err(self.herr(K::State {
                why: "a KHO client of this SMMU's name exists already",
            }));
        }
        for &did in &dids {
            if let Some(d) = self.domains.get_mut(&did.0) {
                d.state = DomainState::Preserved;
            }
        }
        for &sid in &sids {
            if let Some(m) = self.masters.get_mut(&sid) {
                m.preserved = true;
            }
        }
        let report = PrepareReport {
            domains: dids.len(),
            masters: sids.len(),
            pages_pinned: pinned.page_count(),
            leaf_targets_checked: checked,
            record_bytes: bytes,
        };
        self.outgoing = Some(Outgoing {
            record,
            pinned,
            selection: Selection {
                domains: dids,
                masters: sids,
            },
        });
        Ok(report)
    }

    /// The record `prepare` wrote.
    pub fn handover_record(&self) -> Option<&Record> {
        self.outgoing.as_ref().map(|o| &o.record)
    }

    /// The pages `prepare` pinned.
    pub fn pinned_pages(&self) -> Option<&PageSet> {
        self.outgoing.as_ref().map(|o| &o.pinned)
    }

    /// Old kernel, after `prepare`: GBPA.ABORT first, then every master not preserved
    /// aborts (STE Config = abort, hitless, CFGI_STE + CMD_SYNC), then the TLB entries
    /// of every domain not preserved are invalidated (TLBI_NH_ASID, TLBI_S12_VMALL,
    /// CMD_SYNC), then the event queue is disabled (its pages are not preserved).
    /// Preserved domains and masters stay as they are; translation stays on.
    pub fn freeze(&mut self, hw: &mut Hw<'_>) -> Result<FreezeReport, HandoverError> {
        let Some(out) = &self.outgoing else {
            return Err(self.herr(K::State {
                why: "freeze without prepare",
            }));
        };
        if self.frozen {
            return Err(self.herr(K::State {
                why: "freeze twice",
            }));
        }
        let keep = out.selection.clone();
        self.gbpa_abort(hw)?;
        let before = self.counters().commands;
        let mut report = FreezeReport::default();
        let others: Vec<u32> = self
            .masters
            .keys()
            .copied()
            .filter(|s| keep.masters.binary_search(s).is_err())
            .collect();
        let mut abort = Ste::default();
        abort.set_v(true);
        abort.set_config(Config::Abort);
        for sid in others {
            self.write_ste(hw, sid, abort)?;
            if let Some(m) = self.masters.get_mut(&sid) {
                m.ste = abort;
            }
            report.masters_aborted += 1;
            report.entries_written += 1;
        }
        let mut cmds = Vec::new();
        if self.strtab.fmt == StrtabFmt::TwoLevel {
            // L2 stream tables no preserved master uses are not preserved: their L1
            // descriptors become invalid (SPAN 0, C_BAD_STREAMID), so the SMMU never
            // fetches from them once the next kernel reuses the pages.
            let split = self.strtab.split;
            let keep_l1: Vec<u32> = keep.masters.iter().map(|s| s >> split).collect();
            let drop: Vec<u32> = self
                .l2
                .keys()
                .copied()
                .filter(|l1| !keep_l1.contains(l1))
                .collect();
            for l1 in drop {
                let at = PhysAddr(self.strtab_base.0 + l1 as u64 * 8);
                hw.mem
                    .write(at, &0u64.to_le_bytes())
                    .map_err(|e| self.herr(K::Driver(mem(e))))?;
                cmds.push(Cmd::cfgi_ste(l1 << split, false));
                // Its masters are gone with it (attach allocates a new L2 table).
                self.l2.remove(&l1);
                self.masters.retain(|&sid, _| sid >> split != l1);
                report.entries_written += 1;
            }
        }
        for d in self.domains.values() {
            if keep.domains.binary_search(&d.id).is_ok() {
                continue;
            }
            if d.s1.is_some() {
                cmds.push(Cmd::tlbi(Opcode::TlbiNhAsid, d.vmid, d.asid));
            }
            if d.s2.is_some() {
                cmds.push(Cmd::tlbi(Opcode::TlbiS12Vmall, d.vmid, 0));
            }
        }
        cmds.push(crate::driver::sync_cmd());
        self.issue(hw, &cmds)?;
        // The event queue's pages are not preserved: from here the SMMU must not write
        // event records into memory the next kernel may reuse. EVENTQEN = 0 (events
        // are discarded until adopt enables a fresh queue); SMMUEN and CMDQEN stay.
        self.ctrl(hw, (CR0::SMMUEN::SET + CR0::CMDQEN::SET).value)?;
        self.frozen = true;
        report.entries_written += self.counters().commands - before + 1;
        Ok(report)
    }

    /// Old kernel, after `prepare` (and before the kexec): withdraws the record from
    /// `kho` and makes the preserved domains and masters mutable again. After `freeze`
    /// the masters made to abort stay aborted (attach them again).
    pub fn cancel(&mut self, hw: &mut Hw<'_>, kho: &mut KhoOut) -> Result<(), HandoverError> {
        if self.outgoing.take().is_none() {
            return Err(self.herr(K::State {
                why: "cancel without prepare",
            }));
        }
        if self.frozen {
            // The event queue again (freeze disabled it).
            self.ctrl(
                hw,
                (CR0::SMMUEN::SET + CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value,
            )?;
        }
        kho.remove_client(&client_name(self.base));
        for d in self.domains.values_mut() {
            d.state = DomainState::Live;
        }
        for m in self.masters.values_mut() {
            m.preserved = false;
        }
        self.frozen = false;
        Ok(())
    }
}

fn mem(err: iommu_core::mem::MemError) -> crate::driver::ErrorKind {
    crate::driver::ErrorKind::Mem {
        what: "STE or CD",
        err,
    }
}

impl core::fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "prepare: {} domains, {} masters, {} pages pinned, {} leaf-target runs checked, record {} bytes",
            self.domains, self.masters, self.pages_pinned, self.leaf_targets_checked, self.record_bytes
        )
    }
}

impl core::fmt::Display for FreezeReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "freeze: {} masters aborted, {} entries and commands written",
            self.masters_aborted, self.entries_written
        )
    }
}
