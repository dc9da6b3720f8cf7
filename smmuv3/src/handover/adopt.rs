//! New kernel: adopt, verify, finish.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::vec::Vec;
use iommu_core::kho::record::{Supported, RECORD_HEADER_SIZE};
use iommu_core::kho::{read_client_record, read_handover, read_preserved};
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk, WalkLimits};
use iommu_core::{DomainId, PhysAddr};

use super::{client_name, first_missing, runs, HandoverError, HandoverErrorKind as K, Incoming};
use crate::driver::{
    read_qwords, CdTable, Domain, DomainState, Hw, Master, Unit, UnitConfig, ENTRY_BYTES, PAGE,
};
use crate::format::Vmsa;
use crate::hw::cd::{Cd, L1Cd};
use crate::hw::cmd::Cmd;
use crate::hw::regs::{self, CR0, IDR0, IDR1};
use crate::hw::ste::{Config, L1Std, S1Fmt, Ste, SteSlot, StrtabCfg, StrtabFmt};
use crate::record::{Record, RecordMaster, FAMILY, VERSION};

/// A master adoption refused: it is blocked (aborts), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedMaster {
    /// StreamID.
    pub sid: u32,
    /// Why it was blocked.
    pub error: HandoverError,
}

/// What `adopt` did. The blackout work is `registers_read + entries_read`: it grows
/// with masters and domains, not with mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Registers read.
    pub registers_read: u64,
    /// Structure entries read (L1 descriptors, STEs, L1 CD descriptors, CDs).
    pub entries_read: u64,
    /// Domains adopted.
    pub domains: usize,
    /// Masters adopted.
    pub masters: usize,
    /// Masters blocked, with the reason.
    pub blocked: Vec<BlockedMaster>,
    /// Bytes of the record payload.
    pub record_bytes: u64,
}

/// `adopt` refused the SMMU as a whole: GBPA.ABORT is set and SMMUEN cleared, so every
/// transaction aborts.
#[derive(Debug)]
pub struct AdoptFailure {
    /// Why.
    pub error: HandoverError,
    /// StreamIDs the record named (empty when the record could not be read).
    pub blocked_masters: Vec<u32>,
}

/// What `verify` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Domains walked.
    pub domains: usize,
    /// Table pages checked.
    pub tables: u64,
    /// Runs of leaf targets checked: each must lie in preserved memory and outside
    /// the SMMU's structure pages.
    pub leaf_targets_checked: u64,
    /// Domains refused, with the reason; their masters are blocked.
    pub failures: Vec<(DomainId, HandoverError)>,
    /// Masters blocked because their domain was refused.
    pub blocked: Vec<u32>,
    /// Valid stream-table entries the record does not account for, made to abort.
    pub unknown_entries_blocked: u64,
    /// Record runs holding pages that are not structures of an adopted domain or
    /// master (one per run): `finish` keeps them, never frees them.
    pub unverified_runs: Vec<HandoverError>,
}

/// What `finish` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// The verification `finish` had to do itself (if `verify` did not run).
    pub verify: VerifyReport,
    /// Structure pages verification established that nothing references any more
    /// (the CD tables and L2 stream tables of blocked masters), freed.
    pub pages_freed: u64,
    /// Pages of the record's runs kept, never freed (not established as structures).
    pub pages_kept: u64,
    /// Pages of the KHO record released.
    pub record_pages_freed: u64,
    /// Domains now live.
    pub domains: usize,
    /// Masters now live.
    pub masters: usize,
}

/// How a master is blocked.
enum Block {
    /// Its STE made to abort (qword 0 = V | Config abort, one store).
    Ste(PhysAddr),
    /// Its L1 stream-table descriptor made invalid (SPAN 0): every StreamID of that L2
    /// table is refused with C_BAD_STREAMID.
    L1(PhysAddr),
    /// Nothing to write: the SMMU refuses the StreamID already (beyond the table).
    Nothing,
}

impl Unit {
    fn herr2(&self, kind: K) -> HandoverError {
        HandoverError::new(self.base, kind)
    }

    /// New kernel: adopts the SMMU from the KHO blob at `blob` (reads the preserved set
    /// from it).
    pub fn adopt(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
    ) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        let preserved = match read_preserved(&*hw.mem, blob) {
            Ok(p) => p,
            Err(e) => {
                let u = Unit::probe(hw, cfg).map_err(|e| {
                    Box::new(AdoptFailure {
                        error: e.into(),
                        blocked_masters: Vec::new(),
                    })
                })?;
                return Err(u.refuse(hw, u.herr2(K::Kho(e)), Vec::new()));
            }
        };
        Self::adopt_with_preserved(hw, cfg, blob, preserved)
    }

    /// Refuses the SMMU: GBPA.ABORT, then SMMUEN = 0 (every transaction aborts).
    fn refuse(&self, hw: &mut Hw<'_>, error: HandoverError, named: Vec<u32>) -> Box<AdoptFailure> {
        let _ = self.gbpa_abort(hw);
        let _ = self.ctrl(hw, 0);
        Box::new(AdoptFailure {
            error,
            blocked_masters: named,
        })
    }

    /// New kernel: [`Unit::adopt`] with the preserved set already read (the caller read
    /// it once to keep its allocator off those pages).
    pub fn adopt_with_preserved(
        hw: &mut Hw<'_>,
        cfg: &UnitConfig,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        let fail0 = |e: HandoverError| {
            Box::new(AdoptFailure {
                error: e,
                blocked_masters: Vec::new(),
            })
        };
        let mut u = Unit::probe(hw, cfg).map_err(|e| fail0(e.into()))?;
        let mut report = AdoptReport {
            registers_read: 3,
            ..AdoptReport::default()
        };
        let supported = Supported {
            family: FAMILY,
            oldest: VERSION,
            newest: VERSION,
        };
        let name = client_name(u.base);
        let read = read_handover(&*hw.mem, blob).and_then(|h| {
            let pa = h.client(&name);
            read_client_record(&*hw.mem, &h, &name, &supported).map(|r| (r, pa))
        });
        let (kr, record_pa) = match read {
            Ok((r, Some(pa))) => (r, pa),
            Ok((_, None)) => no_client(&u, hw)?,
            Err(e) => return Err(u.refuse(hw, u.herr2(K::Kho(e)), Vec::new())),
        };
        let rec = match Record::decode(&kr.payload) {
            Ok(r) => r,
            Err(err) => return Err(u.refuse(hw, u.herr2(K::Malformed { err }), Vec::new())),
        };
        report.record_bytes = kr.payload.len() as u64;
        let named: Vec<u32> = rec.masters.iter().map(|m| m.sid).collect();

        // The record must describe this SMMU as it is now.
        let cr0 = hw.regs.read32(regs::CR0);
        let strtab_base = hw.regs.read64(regs::STRTAB_BASE);
        let strtab_cfg = hw.regs.read32(regs::STRTAB_BASE_CFG);
        let cr1 = hw.regs.read32(regs::CR1);
        let cr2 = hw.regs.read32(regs::CR2);
        report.registers_read += 5;
        let two = IDR0::ST_LEVEL.read(u.idr0) == 1;
        let eff = StrtabCfg::effective(strtab_cfg, IDR1::SIDSIZE.read(u.idr1), two);
        let base = PhysAddr(strtab_base & regs::field_mask64(regs::STRTAB_BASE::ADDR));
        let bytes = match eff.fmt {
            StrtabFmt::Linear => eff.base_entries() * ENTRY_BYTES,
            StrtabFmt::TwoLevel => eff.base_entries() * 8,
        };
        let check = (|| {
            if rec.mmio_base != u.base {
                return Err(K::WrongUnit {
                    record: rec.mmio_base,
                });
            }
            for (register, live, r) in [
                ("IDR0", u.idr0 as u64, rec.idr0 as u64),
                ("IDR1", u.idr1 as u64, rec.idr1 as u64),
                ("IDR5", u.idr5 as u64, rec.idr5 as u64),
                ("STRTAB_BASE", strtab_base, rec.strtab_base),
                (
                    "STRTAB_BASE_CFG",
                    strtab_cfg as u64,
                    rec.strtab_base_cfg as u64,
                ),
                ("CR1", cr1 as u64, rec.cr1 as u64),
                ("CR2", cr2 as u64, rec.cr2 as u64),
            ] {
                if live != r {
                    return Err(K::Register {
                        register,
                        live,
                        record: r,
                    });
                }
            }
            if !CR0::SMMUEN.is_set(cr0) {
                return Err(K::TranslationDisabled { cr0 });
            }
            // Every run inside the preserved set before any run is trusted; the work is
            // bounded by the set, whatever the runs claim.
            let have = preserved.page_count();
            let mut total = 0u64;
            for &(start, pages) in &rec.pages {
                total = total.saturating_add(pages);
                if pages > have || total > have {
                    return Err(K::RecordRunTooLarge {
                        start,
                        pages: pages.max(total),
                        preserved: have,
                    });
                }
            }
            for &(start, pages) in &rec.pages {
                if let Some(page) = first_missing(&preserved, start, pages) {
                    return Err(K::RecordRunNotPreserved { start, pages, page });
                }
            }
            let n = bytes.max(PAGE) / PAGE;
            for i in 0..n {
                let p = PhysAddr((base.0 & !(PAGE - 1)) + i * PAGE);
                if !rec.holds_page(p) {
                    return Err(K::NotPreserved {
                        what: "stream table",
                        page: p,
                    });
                }
            }
            Ok(())
        })();
        if let Err(kind) = check {
            return Err(u.refuse(hw, u.herr2(kind), named));
        }
        u.strtab = eff;
        u.strtab_base = base;
        u.strtab_bytes = bytes;
        let mut known = PageSet::new();
        let _ = known.insert_range(PhysAddr(base.0 & !(PAGE - 1)), bytes.max(PAGE) / PAGE);

        // IDs first: nothing is allocated before the record's ASIDs and VMIDs are ours.
        let mut refused: Vec<(u32, HandoverError)> = Vec::new();
        for rd in &rec.domains {
            let taken = (rd.stage.s1() && u.asids.contains(&rd.asid))
                || (rd.stage.s2() && u.vmids.contains(&rd.vmid));
            if rd.stage.s1() {
                u.asids.insert(rd.asid);
            }
            if rd.stage.s2() {
                u.vmids.insert(rd.vmid);
            }
            let did = u16::try_from(rd.id).ok().filter(|&i| i != 0);
            let formats = (|| -> Result<(Option<Vmsa>, Option<Vmsa>), alloc::string::String> {
                if taken {
                    return Err("its ASID or VMID is another domain's too".into());
                }
                let s1 = match rd.stage.s1() {
                    true => Some(
                        Vmsa::stage1(&u.caps, rd.granule, rd.t0sz as u32, rd.ips as u64)
                            .map_err(|e| format!("{e}"))?,
                    ),
                    false => None,
                };
                let s2 = match rd.stage.s2() {
                    true => Some(
                        Vmsa::stage2(
                            &u.caps,
                            rd.granule,
                            rd.s2t0sz as u32,
                            rd.s2sl0 as u64,
                            rd.s2ps as u64,
                        )
                        .map_err(|e| format!("{e}"))?,
                    ),
                    false => None,
                };
                Ok((s1, s2))
            })();
            match (did, formats) {
                (Some(id), Ok((f1, f2))) => {
                    u.domains.insert(
                        id,
                        Domain {
                            id: DomainId(id),
                            stage: rd.stage,
                            granule: rd.granule,
                            asid: rd.asid,
                            vmid: rd.vmid,
                            s1: f1.map(|f| (f, PhysAddr(rd.ttb))),
                            s2: f2.map(|f| (f, PhysAddr(rd.s2ttb))),
                            tables: PageSet::new(),
                            identity: BTreeSet::new(),
                            state: DomainState::Adopted,
                        },
                    );
                }
                (None, _) => refused.push((
                    rd.id,
                    u.herr2(K::BadDomain {
                        did: rd.id,
                        why: "domain ID is 0 or wider than 16 bits".into(),
                    }),
                )),
                (_, Err(why)) => refused.push((rd.id, u.herr2(K::BadDomain { did: rd.id, why }))),
            }
        }

        // Masters: L1 descriptor, STE, CD table, CD, each against the record.
        let mut blocks: Vec<(u32, Block, HandoverError)> = Vec::new();
        for rm in &rec.masters {
            match u.adopt_master(hw, rm, &rec, &preserved, &mut known, &mut report) {
                Ok(m) => {
                    u.masters.insert(rm.sid, m);
                }
                Err((block, error)) => blocks.push((rm.sid, block, error)),
            }
            if let Some((_, e)) = refused.iter().find(|(d, _)| *d == rm.domain) {
                if u.masters.remove(&rm.sid).is_some() {
                    if let Ok(Some(at)) = u.ste_addr(hw, rm.sid, false) {
                        blocks.push((rm.sid, Block::Ste(at), e.clone()));
                    }
                }
            }
        }

        // Fresh queues (allocation starts here), re-based with SMMUEN kept 1, then
        // everything invalidated.
        let rebase = (|| {
            u.alloc_queues(hw)?;
            let smmuen = CR0::SMMUEN::SET.value;
            u.ctrl(hw, smmuen)?;
            // CMDQEN (global invalidation), then EVENTQEN, SMMUEN kept.
            u.enable_queues(hw, smmuen)
        })();
        if let Err(e) = rebase {
            return Err(u.refuse(hw, e.into(), named));
        }
        if let Err(e) = u.apply_blocks(hw, &blocks) {
            return Err(u.refuse(hw, e, named));
        }
        report.blocked = blocks
            .into_iter()
            .map(|(sid, _, error)| BlockedMaster { sid, error })
            .collect();
        report.domains = u.domains.len();
        report.masters = u.masters.len();
        u.incoming = Some(Incoming {
            record: rec,
            preserved,
            record_pa,
            record_bytes: kr.payload.len() as u64,
            known,
            verified: false,
        });
        Ok((u, report))
    }

    /// Writes the blocks (aborting STEs, invalid L1 descriptors), then CFGI_STE per
    /// StreamID and one CMD_SYNC.
    fn apply_blocks(
        &mut self,
        hw: &mut Hw<'_>,
        blocks: &[(u32, Block, HandoverError)],
    ) -> Result<(), HandoverError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut abort = Ste::default();
        abort.set_v(true);
        abort.set_config(Config::Abort);
        let mut cmds = Vec::new();
        for (sid, b, _) in blocks {
            let (at, v, leaf) = match b {
                // One 64-bit store: with Config = abort only V and Config are used.
                Block::Ste(at) => (*at, abort.qwords()[0], true),
                Block::L1(at) => (*at, 0, false),
                Block::Nothing => {
                    self.masters.remove(sid);
                    continue;
                }
            };
            hw.mem.write(at, &v.to_le_bytes()).map_err(|err| {
                self.herr2(K::Driver(crate::driver::ErrorKind::Mem {
                    what: "blocking a master",
                    err,
                }))
            })?;
            cmds.push(Cmd::cfgi_ste(*sid, leaf));
            self.masters.remove(sid);
        }
        cmds.push(crate::driver::sync_cmd());
        self.issue(hw, &cmds)?;
        Ok(())
    }

    /// Checks one recorded master against memory; `Err` says how to block it.
    fn adopt_master(
        &mut self,
        hw: &mut Hw<'_>,
        rm: &RecordMaster,
        rec: &Record,
        preserved: &PageSet,
        known: &mut PageSet,
        report: &mut AdoptReport,
    ) -> Result<Master, (Block, HandoverError)> {
        let sid = rm.sid;
        let ours = |p: PhysAddr| rec.holds_page(p) && preserved.contains(p);
        let unit = self.base;
        let bad = |what, at| HandoverError::new(unit, K::EntryMismatch { sid, what, at });
        let Some(slot) = self.strtab.locate(sid) else {
            let e = self.herr2(K::MasterNotPreservable {
                sid,
                why: "StreamID beyond the stream table",
            });
            return Err((Block::Nothing, e));
        };
        let at = match slot {
            SteSlot::Linear { index } => PhysAddr(self.strtab_base.0 + index as u64 * ENTRY_BYTES),
            SteSlot::TwoLevel { l1, l2 } => {
                let d_at = PhysAddr(self.strtab_base.0 + l1 as u64 * 8);
                report.entries_read += 1;
                let q: [u64; 1] = read_qwords(&*hw.mem, d_at)
                    .map_err(|_| (Block::L1(d_at), bad("L1 stream table descriptor", d_at)))?;
                let d = L1Std::from_qwords(q);
                let l2p = PhysAddr(d.l2ptr());
                let span_ok = d.l2_entries(self.strtab.split).is_some_and(|n| l2 < n);
                let bytes = (ENTRY_BYTES << self.strtab.split).max(PAGE);
                let pages_ok = (0..bytes / PAGE).all(|i| ours(PhysAddr(l2p.0 + i * PAGE)));
                if !span_ok || !pages_ok || l2p.0 % bytes != 0 {
                    return Err((Block::L1(d_at), bad("L1 stream table descriptor", d_at)));
                }
                match self.l2.get(&l1) {
                    Some(&p) if p != l2p => {
                        return Err((Block::L1(d_at), bad("L1 stream table descriptor", d_at)))
                    }
                    _ => {
                        self.l2.insert(l1, l2p);
                    }
                }
                let _ = known.insert_range(l2p, bytes / PAGE);
                PhysAddr(l2p.0 + l2 as u64 * ENTRY_BYTES)
            }
        };
        report.entries_read += 1;
        let live: [u64; 8] =
            read_qwords(&*hw.mem, at).map_err(|_| (Block::Ste(at), bad("STE", at)))?;
        let ste = Ste::from_qwords(live);
        let d = self.domains.get(&(rm.domain as u16)).cloned();
        let consistent = live == rm.ste.qwords()
            && d.as_ref().is_some_and(|d| {
                let cfg_ok = ste.v()
                    && ste.config().s1() == d.stage.s1()
                    && ste.config().s2() == d.stage.s2();
                let s1_ok = !d.stage.s1()
                    || (ste.s1_context_ptr() == rm.cd_base
                        && ste.s1fmt_bits() == rm.s1fmt as u64
                        && ste.s1cdmax() == rm.s1cdmax as u64);
                let s2_ok = match d.s2 {
                    Some((_, r)) => ste.s2ttb() == r.0 && ste.s2vmid() == d.vmid as u64,
                    None => true,
                };
                cfg_ok && s1_ok && s2_ok
            });
        let Some(d) = d.filter(|_| consistent) else {
            return Err((Block::Ste(at), bad("STE", at)));
        };
        let mut cd = None;
        if let Some((_, ttb)) = d.s1 {
            let base = PhysAddr(rm.cd_base);
            let fmt = S1Fmt::from_bits(rm.s1fmt as u64).unwrap_or(S1Fmt::Linear);
            if !ours(PhysAddr(base.0 & !(PAGE - 1))) {
                return Err((Block::Ste(at), bad("CD table", base)));
            }
            let mut t = CdTable {
                base,
                fmt,
                cdmax: rm.s1cdmax,
                l2: None,
                bytes: d.granule.bytes(),
            };
            if fmt != S1Fmt::Linear {
                report.entries_read += 1;
                let q: [u64; 1] = read_qwords(&*hw.mem, base)
                    .map_err(|_| (Block::Ste(at), bad("L1 CD descriptor", base)))?;
                let l1 = L1Cd::from_qwords(q);
                let l2 = PhysAddr(l1.l2ptr());
                if !l1.v() || !ours(l2) {
                    return Err((Block::Ste(at), bad("L1 CD descriptor", base)));
                }
                t.l2 = Some(l2);
            }
            report.entries_read += 1;
            let q: [u64; 8] =
                read_qwords(&*hw.mem, t.cd0()).map_err(|_| (Block::Ste(at), bad("CD", t.cd0())))?;
            let c = Cd::from_qwords(q);
            let ok = c.v()
                && c.aa64()
                && !c.epd0()
                && c.asid() == d.asid as u64
                && c.ttb0() == ttb.0
                && c.tg0() == Some(d.granule)
                && d.s1.is_some_and(|(f, _)| {
                    64 - c.t0sz() as u32 == iommu_core::pgtable::Format::ia_bits(&f)
                });
            if !ok {
                return Err((Block::Ste(at), bad("CD", t.cd0())));
            }
            for p in t.blocks() {
                let blk = PhysAddr(p.0 & !(t.bytes - 1));
                if !(0..t.bytes / PAGE).all(|i| ours(PhysAddr(blk.0 + i * PAGE))) {
                    return Err((Block::Ste(at), bad("CD table", blk)));
                }
                let _ = known.insert_range(blk, t.bytes / PAGE);
            }
            cd = Some(t);
        }
        Ok(Master {
            sid,
            domain: d.id,
            ste,
            cd,
            preserved: true,
        })
    }

    /// New kernel, outside the blackout: walks every adopted domain's tables (both
    /// stages), checks each table page lies in the record's runs and the preserved set
    /// and is no other structure, and each leaf target lies in preserved memory outside
    /// the SMMU's structures. A domain that fails is refused and its masters blocked.
    /// Valid STEs the record does not account for are made to abort.
    pub fn verify(&mut self, hw: &mut Hw<'_>) -> Result<VerifyReport, HandoverError> {
        let Some(mut inc) = self.incoming.take() else {
            return Err(self.herr2(K::State {
                why: "verify without adopt",
            }));
        };
        let mut report = VerifyReport::default();
        if inc.verified {
            self.incoming = Some(inc);
            return Ok(report);
        }
        let ids: Vec<u16> = self
            .domains
            .values()
            .filter(|d| d.state == DomainState::Adopted)
            .map(|d| d.id.0)
            .collect();
        for id in ids {
            let d = self.domains[&id].clone();
            report.domains += 1;
            match self.verify_domain(hw, &d, &mut inc, &mut report) {
                Ok(tables) => {
                    let _ = self.domains.get_mut(&id).map(|x| x.tables = tables);
                }
                Err(e) => {
                    report.failures.push((d.id, e.clone()));
                    let sids: Vec<u32> = self
                        .masters
                        .values()
                        .filter(|m| m.domain == d.id)
                        .map(|m| m.sid)
                        .collect();
                    let mut blocks = Vec::new();
                    for sid in sids {
                        if let Some(at) = self.ste_addr(hw, sid, false)? {
                            blocks.push((sid, Block::Ste(at), e.clone()));
                        }
                        report.blocked.push(sid);
                    }
                    self.apply_blocks(hw, &blocks)?;
                    self.domains.remove(&id);
                }
            }
        }
        report.unknown_entries_blocked = self.sweep(hw)?;
        for (start, pages) in runs(&inc_pages(&inc.record).difference(&inc.known)) {
            report
                .unverified_runs
                .push(self.herr2(K::RecordPagesNotTables { start, pages }));
        }
        inc.verified = true;
        self.incoming = Some(inc);
        Ok(report)
    }

    fn verify_domain(
        &self,
        hw: &Hw<'_>,
        d: &Domain,
        inc: &mut Incoming,
        report: &mut VerifyReport,
    ) -> Result<PageSet, HandoverError> {
        let did = d.id;
        let mut tables = PageSet::new();
        for (stage, (f, root)) in [(1, d.s1), (2, d.s2)]
            .into_iter()
            .filter_map(|(s, x)| x.map(|x| (s, x)))
        {
            let w = walk(&f, &*hw.mem, root, &WalkLimits::default())
                .map_err(|err| self.herr2(K::Walk { did, err }))?;
            for t in &w.tables {
                let n = t.bytes.max(f.granule().bytes()) / PAGE;
                for i in 0..n {
                    let p = PhysAddr(t.addr.0 + i * PAGE);
                    if !inc.record.holds_page(p)
                        || !inc.preserved.contains(p)
                        || inc.known.contains(p)
                    {
                        return Err(self.herr2(K::UnpinnedTable { did, page: p }));
                    }
                }
                let _ = tables.insert_range(t.addr, n);
                report.tables += n;
            }
            // Nested stage 2 maps stage-1 tables and CD tables (structures) as well as
            // guest memory; stage-1 and stage-2-only targets are guest memory only.
            let nested_s2 = stage == 2 && d.s1.is_some();
            for m in &w.mappings {
                let start = PhysAddr(m.pa.0 & !(PAGE - 1));
                let pages = (m.pa.0 + m.size - start.0).div_ceil(PAGE);
                let mut r = PageSet::new();
                let _ = r.insert_range(start, pages);
                let bad = first_missing(&inc.preserved, start, pages).is_some()
                    || (!nested_s2 && !r.intersection(&inc.known.union(&tables)).is_empty());
                if bad {
                    return Err(self.herr2(K::LeafTargetNotPreserved {
                        did,
                        iova: m.iova.0,
                        pa: m.pa,
                        len: m.size,
                    }));
                }
                report.leaf_targets_checked += 1;
            }
        }
        inc.known = inc.known.union(&tables);
        Ok(tables)
    }

    /// Makes every valid STE (and L1 descriptor) that no adopted master accounts for
    /// abort (invalid), so nothing the record does not name can translate or bypass.
    fn sweep(&mut self, hw: &mut Hw<'_>) -> Result<u64, HandoverError> {
        let mut blocks = Vec::new();
        let unknown = |e| self.herr2(K::State { why: e });
        let check_ste =
            |sid: u32,
             at: PhysAddr,
             blocks: &mut Vec<_>,
             masters: &alloc::collections::BTreeMap<u32, Master>| {
                if masters.contains_key(&sid) {
                    return;
                }
                if let Ok(q) = read_qwords::<1>(&*hw.mem, at) {
                    let s = Ste::from_qwords([q[0], 0, 0, 0, 0, 0, 0, 0]);
                    if s.v() && s.config() != Config::Abort {
                        blocks.push((sid, Block::Ste(at), unknown("STE the record does not name")));
                    }
                }
            };
        match self.strtab.fmt {
            StrtabFmt::Linear => {
                for sid in 0..self.strtab.base_entries() as u32 {
                    let at = PhysAddr(self.strtab_base.0 + sid as u64 * ENTRY_BYTES);
                    check_ste(sid, at, &mut blocks, &self.masters);
                }
            }
            StrtabFmt::TwoLevel => {
                for l1 in 0..self.strtab.base_entries() as u32 {
                    let d_at = PhysAddr(self.strtab_base.0 + l1 as u64 * 8);
                    let Ok(q) = read_qwords::<1>(&*hw.mem, d_at) else {
                        continue;
                    };
                    let d = L1Std::from_qwords(q);
                    match self.l2.get(&l1) {
                        Some(&l2) if d.l2ptr() == l2.0 => {
                            for i in 0..1u32 << self.strtab.split {
                                let sid = l1 << self.strtab.split | i;
                                let at = PhysAddr(l2.0 + i as u64 * ENTRY_BYTES);
                                check_ste(sid, at, &mut blocks, &self.masters);
                            }
                        }
                        _ if d.span() != 0 => blocks.push((
                            l1 << self.strtab.split,
                            Block::L1(d_at),
                            unknown("L1 descriptor the record does not name"),
                        )),
                        _ => {}
                    }
                }
            }
        }
        let n = blocks.len() as u64;
        self.apply_blocks(hw, &blocks)?;
        Ok(n)
    }

    /// New kernel: ends the handover. Verifies first if `verify` did not run; domains
    /// and masters become live (map, unmap, attach allowed again); the IDs of refused
    /// domains are released; established structure pages no longer referenced (CD
    /// tables of blocked masters) and the KHO record's pages are freed. Pages of the record's
    /// runs that verification did not establish as structures are kept, never freed.
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
        let Some(inc) = self.incoming.take() else {
            return Err(self.herr2(K::State {
                why: "finish without adopt",
            }));
        };
        report.pages_kept = inc_pages(&inc.record).difference(&inc.known).page_count();
        // Structure pages verification established that nothing references any more
        // (CD tables and L2 stream tables of blocked masters) go back; only those.
        let mut referenced = PageSet::new();
        let _ = referenced.insert_range(
            PhysAddr(self.strtab_base.0 & !(PAGE - 1)),
            self.strtab_bytes.max(PAGE) / PAGE,
        );
        let l2_pages = (ENTRY_BYTES << self.strtab.split).max(PAGE) / PAGE;
        for &l2 in self.l2.values() {
            let _ = referenced.insert_range(l2, l2_pages);
        }
        for m in self.masters.values() {
            for (p, bytes) in m.cd.iter().flat_map(|t| t.blocks().map(|p| (p, t.bytes))) {
                let _ = referenced.insert_range(p, bytes / PAGE);
            }
        }
        for d in self.domains.values() {
            referenced = referenced.union(&d.tables);
        }
        for (p, order) in inc.known.difference(&referenced).iter() {
            crate::driver::free_block(&mut *hw.pages, &mut self.counters, p, PAGE << order);
            report.pages_freed += 1 << order;
        }
        let record_pages = (inc.record_bytes + RECORD_HEADER_SIZE as u64).div_ceil(PAGE);
        let first = PhysAddr(inc.record_pa.0 & !(PAGE - 1));
        for i in 0..record_pages {
            hw.pages.free_page(PhysAddr(first.0 + i * PAGE));
        }
        report.record_pages_freed = record_pages;
        for rd in &inc.record.domains {
            if !self.domains.contains_key(&(rd.id as u16)) || rd.id > u16::MAX as u32 {
                if rd.stage.s1()
                    && !self
                        .domains
                        .values()
                        .any(|d| d.s1.is_some() && d.asid == rd.asid)
                {
                    self.asids.remove(&rd.asid);
                }
                if rd.stage.s2()
                    && !self
                        .domains
                        .values()
                        .any(|d| d.s2.is_some() && d.vmid == rd.vmid)
                {
                    self.vmids.remove(&rd.vmid);
                }
            }
        }
        for d in self.domains.values_mut() {
            // A nested domain's stage-2 identity map is found again by `map` (it
            // translates before mapping), so nothing is rebuilt here.
            d.state = DomainState::Live;
        }
        for m in self.masters.values_mut() {
            m.preserved = false;
        }
        report.domains = self.domains.len();
        report.masters = self.masters.len();
        Ok(report)
    }

    /// Whether the SMMU was adopted and `finish` has not run.
    pub fn is_adopting(&self) -> bool {
        self.incoming.is_some()
    }
}

/// The pages of a record's runs.
fn inc_pages(r: &Record) -> PageSet {
    let mut s = PageSet::new();
    for &(p, n) in &r.pages {
        let _ = s.insert_range(p, n);
    }
    s
}

/// The blob holds no record of this SMMU (`read_client_record` reports that first;
/// this covers a blob that changed in between).
fn no_client<T>(u: &Unit, hw: &mut Hw<'_>) -> Result<T, Box<AdoptFailure>> {
    Err(u.refuse(
        hw,
        u.herr2(K::State {
            why: "the KHO blob has no record of this SMMU",
        }),
        Vec::new(),
    ))
}

impl core::fmt::Display for AdoptReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "adopt: {} domains, {} masters, {} blocked, work {} registers + {} entries, record {} bytes",
            self.domains,
            self.masters,
            self.blocked.len(),
            self.registers_read,
            self.entries_read,
            self.record_bytes
        )?;
        for b in &self.blocked {
            write!(f, "\n  blocked StreamID {:#x}: {}", b.sid, b.error)?;
        }
        Ok(())
    }
}

impl core::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "verify: {} domains, {} table pages, {} leaf-target runs checked, {} domains refused, {} unknown entries blocked",
            self.domains,
            self.tables,
            self.leaf_targets_checked,
            self.failures.len(),
            self.unknown_entries_blocked
        )?;
        for (d, e) in &self.failures {
            write!(f, "\n  refused domain {}: {e}", d.0)?;
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
            "finish: {} domains and {} masters live, {} pages freed, {} record-run pages kept \
             (not verified as structures), {} record pages released",
            self.domains, self.masters, self.pages_freed, self.pages_kept, self.record_pages_freed
        )
    }
}
