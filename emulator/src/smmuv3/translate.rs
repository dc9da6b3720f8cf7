//! Translation of one request: StreamID → STE (linear or 2-level stream table) → CD
//! (linear or 2-level CD table, SubstreamID = PASID, S1DSS) → stage-1 and/or stage-2
//! walk through the model's own [`walk`](super::walk) (it shares only `smmuv3::hw` with
//! the driver side), with the events of reference §10, §13–§15.
//!
//! Event order follows reference §13: C_BAD_SUBSTREAMID, F_STREAM_DISABLED, stage-2
//! faults on the CD fetch, F_CD_FETCH, C_BAD_CD, then translation faults (a stage-1
//! table read faulting in stage 2 first). Only F_TRANSLATION, F_ADDR_SIZE, F_ACCESS and
//! F_PERMISSION obey the R flag (CD.R for stage 1, STE.S2R for stage 2); everything
//! else is always recorded (reference §10, IHI0070 §5.5), except C_BAD_STREAMID, which
//! is recorded only with CR2.RECINVSID (reference §3).

use super::cache::{TlbEntry, TlbKey, TlbStage};
use super::walk::{walk, CfgError, Tables, WalkFail};
use super::SmmuV3Unit;
use crate::model::{Access, DmaError, DmaRequest, Translated};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::Perms;
use iommu_core::{PageSize, PhysAddr};
use smmuv3::hw::cd::{Cd, L1Cd};
use smmuv3::hw::event::{Class, Event, EventType};
use smmuv3::hw::regs::{CR0, CR2, GBPA, STRTAB_BASE, STRTAB_BASE_CFG};
use smmuv3::hw::ste::{L1Std, S1Dss, S1Fmt, Ste, SteSlot, StrtabCfg};
use zerocopy::FromBytes;

/// Why a translation stopped.
enum Stop {
    /// An event (recorded if the flag says so and the queue takes it).
    Event(Event, bool),
    /// Terminated without an event (STE.Config abort, no StreamID).
    Silent(&'static str),
    /// A table read hit poison.
    Memory(MemError),
}

/// Reads 8-byte descriptors from physical memory: unbacked is an external abort
/// (F_WALK_EABT at that PA), poison a memory error.
fn plain(mem: &dyn PhysMem) -> impl FnMut(u64) -> Result<u64, WalkFail> + '_ {
    move |pa| match mem.read_u64(PhysAddr(pa)) {
        Ok(v) => Ok(v),
        Err(m @ MemError::Poisoned { .. }) => Err(WalkFail::Memory(m)),
        Err(_) => Err(WalkFail::Eabt(pa)),
    }
}

/// The stage-2 context of an STE.
#[derive(Clone, Copy)]
struct S2 {
    tables: Tables,
    root: u64,
    record: bool,
}

impl S2 {
    /// Translates `ipa` through stage 2 (a read of a table or CD: read permission).
    fn read_ipa(&self, mem: &dyn PhysMem, ipa: u64) -> Result<u64, WalkFail> {
        match walk(&self.tables, &mut plain(mem), self.root, ipa) {
            Ok(w) if w.perms.read => Ok(w.out),
            Ok(_) => Err(WalkFail::Fault(EventType::FPermission)),
            Err(f) => Err(f),
        }
    }
}

/// The request's identity, for events.
#[derive(Clone, Copy)]
struct Ctx {
    sid: u32,
    ssid: Option<u32>,
    iova: u64,
    read: bool,
    privileged: bool,
}

impl Ctx {
    /// A configuration event: type, StreamID, SSV/SubstreamID.
    fn cfg(&self, ty: EventType) -> Event {
        let mut e = Event::new(ty, self.sid);
        e.set_substream(self.ssid);
        e
    }
    /// A translation event: also RnW, S2, CLASS, InputAddr and (stage 2) IPA.
    fn tr(&self, ty: EventType, s2: bool, class: Class, ipa: u64) -> Event {
        let mut e = self.cfg(ty);
        e.set_rnw(self.read);
        e.set_pnu(self.privileged);
        e.set_s2(s2);
        e.set_class(class);
        e.set_input_addr(self.iova);
        if s2 {
            e.set_ipa(ipa);
        }
        e
    }
    /// The stop of a failed walk of `stage2` (or stage 1) for the purpose `class`;
    /// `ipa` is the stage-2 input.
    fn walk_stop(&self, f: WalkFail, s2: bool, class: Class, ipa: u64, record: bool) -> Stop {
        match f {
            WalkFail::Fault(ty) => Stop::Event(self.tr(ty, s2, class, ipa), record),
            WalkFail::Eabt(pa) => {
                // An abort on a stage-1 descriptor is CLASS = TT; on a stage-2
                // descriptor the class is the purpose of the walk (reference §13).
                let class = if s2 { class } else { Class::Tt };
                let mut e = self.tr(EventType::FWalkEabt, s2, class, 0);
                e.set_fetch_addr(pa);
                Stop::Event(e, true)
            }
            WalkFail::Memory(m) => Stop::Memory(m),
        }
    }
}

/// A config read from memory: unbacked is an external abort (`ty` with FetchAddr),
/// poison is [`Stop::Memory`].
fn fetch<T: FromBytes>(mem: &dyn PhysMem, pa: u64, ctx: &Ctx, ty: EventType) -> Result<T, Stop> {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    match mem.read(PhysAddr(pa), &mut buf) {
        Ok(()) => T::read_from_bytes(&buf).map_err(|_| Stop::Silent("config structure size")),
        Err(m @ MemError::Poisoned { .. }) => Err(Stop::Memory(m)),
        Err(_) => {
            let mut e = if ty == EventType::CBadStreamid {
                Event::new(ty, ctx.sid)
            } else {
                ctx.cfg(ty)
            };
            e.set_fetch_addr(pa);
            Err(Stop::Event(e, true))
        }
    }
}

impl SmmuV3Unit {
    pub(super) fn translate_request(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        let bypass = Translated {
            pa: PhysAddr(req.iova.0),
            perms: Perms::RWX,
            page_size: PageSize::SIZE_4K,
        };
        let unit = self.cfg.mmio_base;
        let fault = |code: u32, reason: &'static str, recorded: bool| {
            req.fault(unit, code, reason, recorded)
        };
        if !self.enabled(CR0::SMMUEN) {
            // SMMUEN = 0: GBPA decides, and no event is recorded (reference §3).
            if GBPA::ABORT.is_set(self.regs.gbpa) {
                let f = fault(
                    0,
                    "SMMUEN = 0 and GBPA.ABORT = 1: transaction aborted",
                    false,
                );
                self.log_fault(f.clone());
                return Err(DmaError::Fault(f));
            }
            return Ok(bypass);
        }
        let Some(sid) = self.cfg.stream_id(req.rid) else {
            let f = fault(
                0,
                "no StreamID for this requester in the iommu-map: transaction aborted",
                false,
            );
            self.log_fault(f.clone());
            return Err(DmaError::Fault(f));
        };
        let ctx = Ctx {
            sid,
            ssid: req.pasid.map(|p| p.0),
            iova: req.iova.0,
            read: req.access == Access::Read,
            privileged: req.pasid.is_some() && req.privileged,
        };
        match self.resolve(&*mem, &ctx, req.access) {
            Ok(t) => Ok(t),
            Err(Stop::Memory(error)) => Err(DmaError::Memory {
                unit: self.cfg.mmio_base,
                request: *req,
                error,
            }),
            Err(Stop::Silent(reason)) => {
                let f = fault(0, reason, false);
                self.log_fault(f.clone());
                Err(DmaError::Fault(f))
            }
            Err(Stop::Event(ev, record)) => {
                let record = record
                    && (ev.event_type() != Some(EventType::CBadStreamid)
                        || CR2::RECINVSID.is_set(self.regs.cr2));
                let recorded = record && self.push_event(mem, &ev);
                let ty = ev.event_type();
                let f = fault(
                    ev.code() as u32,
                    ty.map(EventType::name).unwrap_or("unknown event"),
                    recorded,
                );
                self.log_fault(f.clone());
                Err(DmaError::Fault(f))
            }
        }
    }

    /// The STE of `sid`, from the cache or the stream table.
    fn ste(&mut self, mem: &dyn PhysMem, ctx: &Ctx) -> Result<Ste, Stop> {
        let bad_sid = || Stop::Event(Event::new(EventType::CBadStreamid, ctx.sid), true);
        let st = StrtabCfg::effective(
            self.regs.strtab_base_cfg,
            self.cfg.sid_bits,
            self.cfg.two_level_strtab,
        );
        let slot = st.locate(ctx.sid).ok_or_else(bad_sid)?;
        let cached = !self.cfg.refetch_config;
        if cached {
            if let Some(s) = self.caches.ste.get(&ctx.sid) {
                return Ok(*s);
            }
        }
        // The base is aligned to the table size (linear) or to the larger of 64 bytes and
        // the L1 table (2-level), from the literal LOG2SIZE (IHI0070 §6.3 STRTAB_BASE).
        let literal = STRTAB_BASE_CFG::LOG2SIZE.read(self.regs.strtab_base_cfg);
        let align_shift = match slot {
            SteSlot::Linear { .. } => literal + 6,
            SteSlot::TwoLevel { .. } => (literal.saturating_sub(st.split) + 2).max(5) + 1,
        };
        let base = (STRTAB_BASE::ADDR.read(self.regs.strtab_base) << 6)
            & !(1u64.checked_shl(align_shift).unwrap_or(0).wrapping_sub(1));
        let addr = match slot {
            SteSlot::Linear { index } => base + index as u64 * 64,
            SteSlot::TwoLevel { l1, l2 } => {
                let d = match self.caches.l1std.get(&l1).filter(|_| cached) {
                    Some(d) => *d,
                    None => fetch::<L1Std>(mem, base + l1 as u64 * 8, ctx, EventType::FSteFetch)?,
                };
                // SPAN 0, reserved or above SPLIT + 1, or an index past the L2 table:
                // C_BAD_STREAMID (reference §4).
                let n = d.l2_entries(st.split).ok_or_else(bad_sid)?;
                if l2 >= n {
                    return Err(bad_sid());
                }
                self.caches.l1std.insert(l1, d);
                (d.l2ptr() & !(n as u64 * 64 - 1)) + l2 as u64 * 64
            }
        };
        fetch::<Ste>(mem, addr, ctx, EventType::FSteFetch)
    }

    /// Reads a CD-table structure at IPA `ipa` (a PA without stage 2): stage-2 faults
    /// with CLASS = CD, then F_CD_FETCH.
    fn cd_read<T: FromBytes>(
        &self,
        mem: &dyn PhysMem,
        ipa: u64,
        s2: Option<S2>,
        ctx: &Ctx,
    ) -> Result<T, Stop> {
        let pa = match s2 {
            None => ipa,
            Some(s2) => match s2.read_ipa(mem, ipa) {
                Ok(pa) => pa,
                Err(f) => return Err(ctx.walk_stop(f, true, Class::Cd, ipa, s2.record)),
            },
        };
        fetch::<T>(mem, pa, ctx, EventType::FCdFetch)
    }

    /// The CD of index `idx` in the CD table of `ste`.
    fn cd(
        &mut self,
        mem: &dyn PhysMem,
        ste: &Ste,
        idx: u32,
        fmt: S1Fmt,
        s2: Option<S2>,
        ctx: &Ctx,
    ) -> Result<Cd, Stop> {
        let cached = !self.cfg.refetch_config;
        if cached {
            if let Some(cd) = self.caches.cd.get(&(ctx.sid, idx)) {
                return Ok(*cd);
            }
        }
        let ptr = ste.s1_context_ptr();
        let addr = match smmuv3::hw::cd::cd_index(fmt, idx) {
            (None, i) => ptr + i as u64 * 64,
            (Some(l1), i) => {
                let d = match self.caches.l1cd.get(&(ctx.sid, l1)).filter(|_| cached) {
                    Some(d) => *d,
                    None => self.cd_read::<L1Cd>(mem, ptr + l1 as u64 * 8, s2, ctx)?,
                };
                if !d.v() {
                    let mut e = ctx.cfg(EventType::CBadSubstreamid);
                    e.set_ssid(idx as u64);
                    return Err(Stop::Event(e, true));
                }
                self.caches.l1cd.insert((ctx.sid, l1), d);
                d.l2ptr() + i as u64 * 64
            }
        };
        self.cd_read::<Cd>(mem, addr, s2, ctx)
    }

    fn resolve(
        &mut self,
        mem: &dyn PhysMem,
        ctx: &Ctx,
        access: Access,
    ) -> Result<Translated, Stop> {
        let bad_ste = || Stop::Event(ctx.cfg(EventType::CBadSte), true);
        let bad_ssid = || {
            let mut e = ctx.cfg(EventType::CBadSubstreamid);
            e.set_ssid(ctx.ssid.unwrap_or(0) as u64);
            Stop::Event(e, true)
        };
        let ste = self.ste(mem, ctx)?;
        if !ste.v() {
            return Err(bad_ste());
        }
        let config = ste.config_bits();
        // IHI0070 §5.2 STE.Config: 0b000 aborts with no event recorded, and the reserved
        // 0b001–0b011 behave as 0b000.
        let (s1, s2) = match config {
            4 => (false, false),
            5 => (true, false),
            6 => (false, true),
            7 => (true, true),
            _ => return Err(Stop::Silent("STE.Config = abort: transaction aborted")),
        };
        if (s1 && !self.cfg.stage1) || (s2 && !self.cfg.stage2) {
            return Err(bad_ste());
        }
        let s2ctx = if s2 {
            let tables = Tables::from_ste(&self.caps, &ste).map_err(|_| bad_ste())?;
            // No stall model (IDR0.STALL_MODEL = 1): S2S = 1 is ILLEGAL.
            if ste.s2s() {
                return Err(bad_ste());
            }
            let root = ste.s2ttb();
            let align = (tables.concatenated() * tables.granule().bytes()).max(8);
            if root & (align - 1) != 0 {
                return Err(bad_ste());
            }
            Some(S2 {
                tables,
                root,
                record: ste.s2r(),
            })
        } else {
            None
        };
        // The VMID tags stage-1-only entries too when stage 2 is implemented (IHI0070
        // STE.S2VMID).
        let vmid = if self.cfg.stage2 {
            ste.s2vmid() as u16
        } else {
            0
        };
        // Which CD, if any (reference §14).
        let cd_idx = if !s1 {
            if ctx.ssid.is_some() {
                return Err(bad_ssid());
            }
            None
        } else {
            // S1CDMax is IGNORED without SubstreamIDs (IDR1.SSIDSIZE = 0), so every
            // SubstreamID is then C_BAD_SUBSTREAMID (IHI0070 §5.2 STE.S1CDMax).
            let cdmax = if self.cfg.ssid_bits == 0 {
                0
            } else {
                ste.s1cdmax() as u32
            };
            if cdmax > self.cfg.ssid_bits {
                return Err(bad_ste());
            }
            match ctx.ssid {
                Some(s) if cdmax == 0 || s >> cdmax != 0 => return Err(bad_ssid()),
                Some(s) => {
                    if s == 0 && cdmax != 0 && ste.s1dss() == Some(S1Dss::Ssid0) {
                        return Err(Stop::Event(ctx.cfg(EventType::FStreamDisabled), true));
                    }
                    Some(s)
                }
                None if cdmax == 0 => Some(0),
                // S1DSS 0b11 is reserved and behaves as 0b00, terminate (IHI0070 §5.2).
                None => match ste.s1dss() {
                    None | Some(S1Dss::Terminate) => {
                        return Err(Stop::Event(ctx.cfg(EventType::FStreamDisabled), true))
                    }
                    Some(S1Dss::Bypass) => None,
                    Some(S1Dss::Ssid0) => Some(0),
                },
            }
        };
        let fmt = if ste.s1cdmax() == 0 || self.cfg.ssid_bits == 0 {
            S1Fmt::Linear
        } else {
            // S1Fmt 3 is reserved and behaves as 0 (reference §14).
            ste.s1fmt().unwrap_or(S1Fmt::Linear)
        };
        if s1 && fmt != S1Fmt::Linear && !self.cfg.two_level_cd {
            return Err(bad_ste());
        }
        if !self.cfg.refetch_config {
            self.caches.ste.insert(ctx.sid, ste);
        }
        let cd = match cd_idx {
            None => None,
            Some(idx) => {
                let cd = self.cd(mem, &ste, idx, fmt, s2ctx, ctx)?;
                let bad_cd = || Stop::Event(ctx.cfg(EventType::CBadCd), true);
                // No stall model: CD.S = 1 is ILLEGAL.
                if !cd.v() || cd.s() {
                    return Err(bad_cd());
                }
                let f = match Tables::from_cd(&self.caps, &cd) {
                    Ok(f) => Some(f),
                    // EPD0: every TTB0 address takes a translation fault.
                    Err(CfgError::Ttb0Disabled) => None,
                    Err(_) => return Err(bad_cd()),
                };
                if !self.cfg.refetch_config {
                    self.caches.cd.insert((ctx.sid, idx), cd);
                }
                Some((cd, f))
            }
        };
        // Stage 1 bypassed (Config 0b1x0 or S1DSS bypass): an input beyond the IAS is a
        // stage-1 Address Size fault (IHI0070 §5.2 STE.S1DSS, §3.4).
        let ias = self.caps.ias_bits();
        if cd.is_none() && ias < 64 && ctx.iova >> ias != 0 {
            return Err(Stop::Event(
                ctx.tr(EventType::FAddrSize, false, Class::In, 0),
                true,
            ));
        }
        let stage = match (&cd, s2) {
            (Some((cd, _)), _) => TlbStage::S1 {
                asid: cd.asid() as u16,
            },
            (None, true) => TlbStage::S2,
            (None, false) => {
                return Ok(Translated {
                    pa: PhysAddr(ctx.iova),
                    perms: Perms::RWX,
                    page_size: PageSize::SIZE_4K,
                })
            }
        };
        let s1_record = cd.map(|(c, _)| c.r()).unwrap_or(true);
        let s2_record = s2ctx.map(|s| s.record).unwrap_or(true);
        let allowed = |p: Perms| match access {
            Access::Read => p.read,
            Access::Write => p.write,
        };
        // The TLB first: a hit is used even if the tables changed since.
        if let Some((key, e)) = self.caches.lookup(vmid, stage, ctx.iova) {
            return self.finish(ctx, key, e, allowed, s1_record, s2_record);
        }
        // Stage 1.
        let (ipa, p1, shift1) = match &cd {
            None => (ctx.iova, Perms::RWX, 64),
            Some((_, None)) => {
                return Err(ctx.walk_stop(
                    WalkFail::Fault(EventType::FTranslation),
                    false,
                    Class::In,
                    0,
                    s1_record,
                ))
            }
            Some((cd, Some(f1))) => {
                let r = match s2ctx {
                    None => walk(f1, &mut plain(mem), cd.ttb0(), ctx.iova),
                    Some(s2) => {
                        // Every stage-1 descriptor address is an IPA (reference §13).
                        let mut s2_fail = None;
                        let r = walk(
                            f1,
                            &mut |ipa| {
                                let pa = s2.read_ipa(mem, ipa).inspect_err(|f| {
                                    if !matches!(f, WalkFail::Memory(_)) {
                                        s2_fail = Some((ipa, *f));
                                    }
                                })?;
                                plain(mem)(pa)
                            },
                            cd.ttb0(),
                            ctx.iova,
                        );
                        if let (Err(_), Some((tipa, f))) = (r, s2_fail) {
                            // A stage-1 table read faulted in stage 2: CLASS = TT.
                            return Err(ctx.walk_stop(f, true, Class::Tt, tipa, s2.record));
                        }
                        r
                    }
                };
                let w = r.map_err(|f| ctx.walk_stop(f, false, Class::In, 0, s1_record))?;
                (w.out, w.perms, w.shift)
            }
        };
        // A stage-1 permission fault comes before stage 2 of the output IPA is looked
        // at (Arm ARM: AArch64.FullTranslate runs the stage-2 translation only when
        // AArch64.S1Translate, permission check included, returned no fault).
        if s2ctx.is_some() && cd.is_some() && !allowed(p1) {
            let ev = ctx.tr(EventType::FPermission, false, Class::In, 0);
            return Err(Stop::Event(ev, s1_record));
        }
        // Stage 2 of the output IPA.
        let (pa, p2, shift2) = match s2ctx {
            None => (ipa, Perms::RWX, 64),
            Some(s2) => {
                let w = walk(&s2.tables, &mut plain(mem), s2.root, ipa)
                    .map_err(|f| ctx.walk_stop(f, true, Class::In, ipa, s2.record))?;
                (w.out, w.perms, w.shift)
            }
        };
        let shift = shift1.min(shift2);
        let base = ctx.iova & !((1u64 << shift) - 1);
        let key = TlbKey {
            vmid,
            stage,
            base,
            shift,
        };
        let entry = TlbEntry {
            out: pa - (ctx.iova - base),
            ipa: ipa - (ctx.iova - base),
            s1: p1,
            s2: p2,
        };
        self.caches.tlb.insert(key, entry);
        self.finish(ctx, key, entry, allowed, s1_record, s2_record)
    }

    /// The translation of a TLB entry, or the permission fault of the stage that
    /// refuses the access (stage 1 first).
    fn finish(
        &self,
        ctx: &Ctx,
        key: TlbKey,
        e: TlbEntry,
        allowed: impl Fn(Perms) -> bool,
        s1_record: bool,
        s2_record: bool,
    ) -> Result<Translated, Stop> {
        let off = ctx.iova - key.base;
        if !allowed(e.s1) {
            let ev = ctx.tr(EventType::FPermission, false, Class::In, 0);
            return Err(Stop::Event(ev, s1_record));
        }
        if !allowed(e.s2) {
            let ev = ctx.tr(EventType::FPermission, true, Class::In, e.ipa + off);
            return Err(Stop::Event(ev, s2_record));
        }
        Ok(Translated {
            pa: PhysAddr(e.out + off),
            perms: e.s1.intersect(e.s2),
            page_size: PageSize::from_shift(key.shift).unwrap_or(PageSize::SIZE_4K),
        })
    }
}
