//! Translation of untranslated DMA requests: context lookup, PASID lookup, table walks,
//! IOTLB use and fault reporting.

use super::cache::{
    ContextCacheEntry, IotlbEntry, LegacyContext, PasidCacheEntry, PasidTranslation,
    ScalableContext, Stage, NO_PASID,
};
use super::VtdUnit;
use crate::model::{Access, DmaError, DmaRequest, FaultEvent, Translated};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::Perms;
use iommu_core::{PageSize, PhysAddr};
use vtd::hw::fault::{FaultReason as FR, FaultRecord, FaultRequestType};
use vtd::hw::pasid::{pasid_dir_index, pasid_table_index, Flpm, PasidDirEntry, PasidEntry, Pgtt};
use vtd::hw::pasid::{PASID_DIR_ENTRY_SIZE, PASID_ENTRY_SIZE};
use vtd::hw::pte::{level_index, level_shift, FlPte, PteCaps, SlPte, FL_A, FL_D, SL_A, SL_D};
use vtd::hw::regs::{self, field_mask32 as m32, Ttm, CAP, ECAP, GSTS};
use vtd::hw::root::{
    AddressWidth, ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry,
    TranslationType, CONTEXT_ENTRY_SIZE, ROOT_ENTRY_SIZE, SM_CONTEXT_ENTRY_SIZE,
};
use zerocopy::FromBytes;

/// Why a step of the translation stopped.
pub(crate) enum Stop {
    /// A fault with its reason and whether fault processing is disabled for it.
    Fault(FR, bool),
    /// A read of table memory failed.
    Memory(MemError),
}

impl From<MemError> for Stop {
    fn from(e: MemError) -> Self {
        Stop::Memory(e)
    }
}

type Step<T> = Result<T, Stop>;

fn read_struct<T: FromBytes, const N: usize>(mem: &dyn PhysMem, addr: u64) -> Result<T, MemError> {
    let mut b = [0u8; N];
    mem.read(PhysAddr(addr), &mut b)?;
    // The buffer is exactly the size of T (callers pass N = size_of::<T>()).
    T::read_from_bytes(&b[..]).map_err(|_| MemError::Overflow {
        addr: PhysAddr(addr),
        len: N as u64,
    })
}

/// A successful walk's result before the permission check.
struct Leaf {
    pa: u64,
    level: u32,
    perms: Perms,
    user: bool,
    dirty_done: bool,
}

impl VtdUnit {
    fn pte_caps_sl(&self) -> PteCaps {
        let sllps = CAP::SLLPS.read(self.cap);
        PteCaps {
            haw: self.haw,
            large_2m: sllps & 1 != 0,
            large_1g: sllps & 2 != 0,
            snoop: ECAP::SC.is_set(self.ecap),
            transient: ECAP::DT.is_set(self.ecap),
        }
    }

    fn pte_caps_fl(&self) -> PteCaps {
        PteCaps {
            haw: self.haw,
            large_2m: true,
            large_1g: CAP::FL1GP.is_set(self.cap),
            snoop: false,
            transient: false,
        }
    }

    fn domain_limit(&self) -> u32 {
        regs::domain_count(self.cap)
    }

    /// Translates one request (IommuModel::translate).
    pub(crate) fn translate_request(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        if self.gsts & m32(GSTS::TES) == 0 {
            return Ok(identity(req.iova.0));
        }
        let result = match self.root {
            None => Err(Stop::Fault(FR::RootTableAccess, false)),
            Some(r) => match r.ttm {
                Ttm::Legacy => self.translate_legacy(mem, req, r.addr),
                Ttm::Scalable if ECAP::SMTS.is_set(self.ecap) => {
                    self.translate_scalable(mem, req, r.addr)
                }
                Ttm::Scalable | Ttm::Reserved => Err(Stop::Fault(FR::SmTtmForPasidRequest, false)),
                Ttm::AbortDma if ECAP::ADMS.is_set(self.ecap) => {
                    // Abort-DMA mode blocks every request without recording a fault.
                    Err(Stop::Fault(FR::RootTableAccess, true))
                }
                Ttm::AbortDma => Err(Stop::Fault(FR::SmTtmForPasidRequest, false)),
            },
        };
        match result {
            Ok(t) => Ok(t),
            Err(Stop::Memory(error)) => Err(DmaError::Memory {
                unit: self.base,
                request: *req,
                error,
            }),
            Err(Stop::Fault(reason, fpd)) => Err(DmaError::Fault(self.report(req, reason, fpd))),
        }
    }

    fn report(&mut self, req: &DmaRequest, reason: FR, fpd: bool) -> FaultEvent {
        let recorded = if fpd {
            false
        } else {
            let ty = match req.access {
                Access::Read => FaultRequestType::Read,
                Access::Write => FaultRequestType::Write,
            };
            self.record_fault(FaultRecord::new(
                req.iova.0,
                req.rid.sid(),
                ty,
                reason.code(),
                req.pasid.map(|p| p.0),
                req.privileged,
            ))
        };
        let ev = req.fault(
            self.base,
            reason.code() as u32,
            reason.description(),
            recorded,
        );
        self.faults.push(ev.clone());
        ev
    }

    // ----- legacy mode -------------------------------------------------------------

    fn translate_legacy(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        root: u64,
    ) -> Step<Translated> {
        if req.pasid.is_some() {
            return Err(Stop::Fault(FR::SmTtmForPasidRequest, false));
        }
        let sid = req.rid.sid();
        let ctx = match self.ctx_cache.get(&sid) {
            Some(ContextCacheEntry::Legacy(c)) => *c,
            Some(ContextCacheEntry::NotPresent {
                fpd,
                scalable: false,
            }) => return Err(Stop::Fault(FR::ContextEntryNotPresent, *fpd)),
            _ => self.fetch_legacy_context(mem, req, root)?,
        };
        if ctx.pass_through {
            return Ok(identity(req.iova.0));
        }
        let iova = req.iova.0;
        if ctx.width < 64 && iova >> ctx.width != 0 {
            return Err(Stop::Fault(FR::AddressBeyondMgaw, ctx.fpd));
        }
        self.lookup_or_walk_sl(
            mem,
            req,
            ctx.did,
            NO_PASID,
            ctx.sl_root,
            ctx.levels,
            ctx.fpd,
            false,
            false,
        )
    }

    fn fetch_legacy_context(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        root: u64,
    ) -> Step<LegacyContext> {
        self.stats.context_fetches += 1;
        let re: RootEntry =
            read_struct::<RootEntry, 16>(mem, root + req.rid.bus as u64 * ROOT_ENTRY_SIZE)?;
        if !re.present() {
            return Err(Stop::Fault(FR::RootEntryNotPresent, false));
        }
        if re.reserved_bits(self.haw) != [0, 0] {
            return Err(Stop::Fault(FR::RootEntryReserved, false));
        }
        let ce: ContextEntry = read_struct::<ContextEntry, 16>(
            mem,
            re.context_table() + req.rid.devfn as u64 * CONTEXT_ENTRY_SIZE,
        )?;
        let sid = req.rid.sid();
        if !ce.present() {
            if CAP::CM.is_set(self.cap) {
                self.ctx_cache.insert(
                    sid,
                    ContextCacheEntry::NotPresent {
                        fpd: ce.fpd(),
                        scalable: false,
                    },
                );
            }
            return Err(Stop::Fault(FR::ContextEntryNotPresent, ce.fpd()));
        }
        if ce.reserved_bits(self.haw) != [0, 0] || ce.did() as u32 >= self.domain_limit() {
            return Err(Stop::Fault(FR::ContextEntryReserved, false));
        }
        let fpd = ce.fpd();
        let invalid = Err(Stop::Fault(FR::ContextEntryInvalid, fpd));
        let mgaw = (CAP::MGAW.read(self.cap) + 1) as u32;
        let ctx = match ce.tt() {
            TranslationType::Reserved => return invalid,
            TranslationType::DeviceTlb if !ECAP::DT.is_set(self.ecap) => return invalid,
            TranslationType::PassThrough if !ECAP::PT.is_set(self.ecap) => return invalid,
            TranslationType::PassThrough => LegacyContext {
                did: ce.did(),
                fpd,
                pass_through: true,
                sl_root: 0,
                levels: 0,
                width: mgaw,
            },
            TranslationType::Untranslated | TranslationType::DeviceTlb => {
                let Some(aw) = AddressWidth::from_bits(ce.aw()) else {
                    return invalid;
                };
                if CAP::SAGAW.read(self.cap) & aw.sagaw_bit() == 0 {
                    return invalid;
                }
                LegacyContext {
                    did: ce.did(),
                    fpd,
                    pass_through: false,
                    sl_root: ce.slptptr(),
                    levels: aw.levels(),
                    width: aw.width().min(mgaw),
                }
            }
        };
        if self.ctx_cache.len() >= super::cache::CACHE_CAPACITY {
            self.ctx_cache.clear();
        }
        self.ctx_cache.insert(sid, ContextCacheEntry::Legacy(ctx));
        Ok(ctx)
    }

    // ----- second stage -------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn lookup_or_walk_sl(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        did: u16,
        pasid: u32,
        root: u64,
        levels: u32,
        fpd: bool,
        scalable: bool,
        ssade: bool,
    ) -> Step<Translated> {
        let iova = req.iova.0;
        let write = req.access == Access::Write;
        if let Some(e) = self.iotlb.lookup(did, pasid, iova) {
            if e.stage == Stage::Second && (!write || e.dirty_done) {
                let e = *e;
                self.stats.iotlb_hits += 1;
                return finish(&e.perms, e.pa, e.level, iova, write, fpd, scalable);
            }
        }
        self.stats.walks += 1;
        let leaf = self.walk_sl(mem, iova, root, levels, fpd, scalable, ssade, write)?;
        self.iotlb.insert(
            iova,
            IotlbEntry {
                did,
                pasid,
                level: leaf.level,
                pa: leaf.pa,
                perms: leaf.perms,
                stage: Stage::Second,
                user: true,
                dirty_done: leaf.dirty_done,
            },
        );
        finish(&leaf.perms, leaf.pa, leaf.level, iova, write, fpd, scalable)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_sl(
        &mut self,
        mem: &mut dyn PhysMem,
        iova: u64,
        root: u64,
        levels: u32,
        fpd: bool,
        scalable: bool,
        ssade: bool,
        write: bool,
    ) -> Step<Leaf> {
        let caps = self.pte_caps_sl();
        // Fault reasons of a second-stage walk. Each entry's access right is checked
        // before its reserved bits, as VirtualBox (dmarDrSecondLevelTranslate, citing the
        // specification's section 7.1.3 so that SSL.2 and SSL.3 are told apart) and QEMU
        // (vtd_iova_to_slpte) do. In scalable mode an entry with R = W = 0 (not present)
        // is SSL.2, 0x79 (Linux: "SM: Read/Write permission error in second-level paging
        // entry"; VirtualBox maps its Pte_Not_Present diagnostic to VTDATFAULT_SSL_2),
        // while a present entry lacking the requested right is SGN.6/SGN.7, 0x85 write /
        // 0x86 read (VirtualBox Perm_Write_Denied / Perm_Read_Denied). QEMU reports its
        // legacy 0x5/0x6 in both modes. Legacy mode keeps 0x5/0x6 for both shapes (Linux
        // and Xen strings, QEMU); VirtualBox maps a legacy not-present entry to LSL.2
        // (0xC) instead, which we do not follow.
        let (not_present, not_read, not_write, reserved) = if scalable {
            (
                FR::SmSlPermission,
                FR::SmNoRead,
                FR::SmNoWrite,
                FR::SmSlEntryReserved,
            )
        } else {
            let np = if write {
                FR::WriteNotAllowed
            } else {
                FR::ReadNotAllowed
            };
            (
                np,
                FR::ReadNotAllowed,
                FR::WriteNotAllowed,
                FR::PagingEntryReserved,
            )
        };
        let mut table = root;
        let mut perms = Perms::RW;
        let mut visited: [(u64, u64); 5] = [(0, 0); 5];
        let mut n = 0;
        for level in (1..=levels.min(5)).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = mem.read_u64(PhysAddr(at))?;
            let pte = SlPte::from_raw(v);
            let refused = if !pte.present() {
                Some(not_present)
            } else if write && !pte.write() {
                Some(not_write)
            } else if !write && !pte.read() {
                Some(not_read)
            } else if pte.reserved_bits(level, &caps) != 0 {
                Some(reserved)
            } else {
                None
            };
            if let Some(reason) = refused {
                // The entries above, used to reach this one, get A (x86 rule; see
                // `set_flag_in`), when second-stage A/D is enabled.
                if ssade {
                    set_flag_in(mem, &visited[..n], SL_A)?;
                }
                return Err(Stop::Fault(reason, fpd));
            }
            perms.read &= pte.read();
            perms.write &= pte.write();
            visited[n] = (at, v);
            n += 1;
            if pte.is_leaf(level) {
                let size_mask = (1u64 << level_shift(level)) - 1;
                let mut dirty_done = true;
                if ssade {
                    // A on every entry of the walk, D on the leaf of a write (the access
                    // was checked entry by entry above, so it is allowed here).
                    set_flag_in(mem, &visited[..n - 1], SL_A)?;
                    set_flag_in(
                        mem,
                        &visited[n - 1..n],
                        if write { SL_A | SL_D } else { SL_A },
                    )?;
                    dirty_done = write || v & SL_D != 0;
                }
                return Ok(Leaf {
                    pa: pte.addr() & !size_mask,
                    level,
                    perms,
                    user: true,
                    dirty_done,
                });
            }
            table = pte.addr();
        }
        // Only reachable with levels == 0, which the callers never pass.
        Err(Stop::Fault(reserved, fpd))
    }

    // ----- scalable mode -------------------------------------------------------------

    fn translate_scalable(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        root: u64,
    ) -> Step<Translated> {
        let sid = req.rid.sid();
        let ctx = match self.ctx_cache.get(&sid) {
            Some(ContextCacheEntry::Scalable(c)) => *c,
            Some(ContextCacheEntry::NotPresent {
                fpd,
                scalable: true,
            }) => return Err(Stop::Fault(FR::SmContextEntryNotPresent, *fpd)),
            _ => self.fetch_scalable_context(mem, req, root)?,
        };
        let pasid = match req.pasid {
            Some(p) => {
                if !ctx.paside || !ECAP::PASID.is_set(self.ecap) {
                    return Err(Stop::Fault(FR::SmPasidDisabled, ctx.fpd));
                }
                p.0
            }
            None => {
                if ECAP::RPS.is_set(self.ecap) {
                    ctx.rid_pasid
                } else {
                    0
                }
            }
        };
        let pss_bits = ECAP::PSS.read(self.ecap) as u32 + 1;
        if pasid_dir_index(pasid) >= ctx.dir_entries || (pss_bits < 32 && pasid >> pss_bits != 0) {
            return Err(Stop::Fault(FR::SmPasidTooLarge, ctx.fpd));
        }
        let privileged = match req.pasid {
            Some(_) => req.privileged,
            None => ECAP::RPRIVS.is_set(self.ecap) && ctx.rid_priv,
        };
        let pe = match self.pasid_cache.get(&(sid, pasid)) {
            Some(pe) => *pe,
            None => self.fetch_pasid_entry(mem, sid, pasid, &ctx)?,
        };
        if privileged && !pe.sre {
            return Err(Stop::Fault(FR::SmSreClear, pe.fpd));
        }
        let iova = req.iova.0;
        match pe.translation {
            PasidTranslation::PassThrough => Ok(identity(iova)),
            PasidTranslation::SecondStage {
                root,
                levels,
                width,
            } => {
                if width < 64 && iova >> width != 0 {
                    return Err(Stop::Fault(FR::SmAddressBeyondMax, pe.fpd));
                }
                self.lookup_or_walk_sl(
                    mem, req, pe.did, pasid, root, levels, pe.fpd, true, pe.ssade,
                )
            }
            PasidTranslation::FirstStage {
                root,
                levels,
                width,
            } => {
                let sign = (iova >> (width - 1)) & 1;
                let upper = iova >> (width - 1);
                let canonical = if sign == 0 {
                    upper == 0
                } else {
                    upper == (u64::MAX >> (width - 1))
                };
                if !canonical {
                    return Err(Stop::Fault(FR::SmNonCanonical, pe.fpd));
                }
                self.lookup_or_walk_fl(mem, req, &pe, pasid, root, levels, privileged)
            }
        }
    }

    fn fetch_scalable_context(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        root: u64,
    ) -> Step<ScalableContext> {
        self.stats.context_fetches += 1;
        let re: ScalableRootEntry =
            read_struct::<ScalableRootEntry, 16>(mem, root + req.rid.bus as u64 * ROOT_ENTRY_SIZE)?;
        let devfn = req.rid.devfn;
        if re.reserved_bits_for(devfn, self.haw) != 0 {
            return Err(Stop::Fault(FR::SmRootEntryReserved, false));
        }
        let (present, table) = re.half_for(devfn);
        if !present {
            return Err(Stop::Fault(FR::SmRootEntryNotPresent, false));
        }
        let ce: ScalableContextEntry = read_struct::<ScalableContextEntry, 32>(
            mem,
            table + (devfn & 0x7f) as u64 * SM_CONTEXT_ENTRY_SIZE,
        )?;
        let sid = req.rid.sid();
        if !ce.present() {
            if CAP::CM.is_set(self.cap) {
                self.ctx_cache.insert(
                    sid,
                    ContextCacheEntry::NotPresent {
                        fpd: ce.fpd(),
                        scalable: true,
                    },
                );
            }
            return Err(Stop::Fault(FR::SmContextEntryNotPresent, ce.fpd()));
        }
        if ce.reserved_bits(self.haw) != [0; 4] {
            return Err(Stop::Fault(FR::SmContextEntryReserved, false));
        }
        if (ce.dte() && !ECAP::DT.is_set(self.ecap)) || (ce.pre() && !ECAP::PRS.is_set(self.ecap)) {
            return Err(Stop::Fault(FR::SmContextEntryInvalid, ce.fpd()));
        }
        let ctx = ScalableContext {
            fpd: ce.fpd(),
            paside: ce.paside(),
            pasid_dir: ce.pasid_dir(),
            dir_entries: ce.pasid_dir_entries(),
            rid_pasid: ce.rid_pasid(),
            rid_priv: ce.rid_priv(),
        };
        if self.ctx_cache.len() >= super::cache::CACHE_CAPACITY {
            self.ctx_cache.clear();
        }
        self.ctx_cache.insert(sid, ContextCacheEntry::Scalable(ctx));
        Ok(ctx)
    }

    fn fetch_pasid_entry(
        &mut self,
        mem: &mut dyn PhysMem,
        sid: u16,
        pasid: u32,
        ctx: &ScalableContext,
    ) -> Step<PasidCacheEntry> {
        self.stats.pasid_fetches += 1;
        let de: PasidDirEntry = read_struct::<PasidDirEntry, 8>(
            mem,
            ctx.pasid_dir + pasid_dir_index(pasid) * PASID_DIR_ENTRY_SIZE,
        )?;
        if !de.present() {
            return Err(Stop::Fault(FR::SmPasidDirNotPresent, ctx.fpd || de.fpd()));
        }
        if de.reserved_bits(self.haw) != 0 {
            return Err(Stop::Fault(FR::SmPasidDirReserved, ctx.fpd));
        }
        let fpd = ctx.fpd || de.fpd();
        let pe: PasidEntry = read_struct::<PasidEntry, 64>(
            mem,
            de.table() + pasid_table_index(pasid) * PASID_ENTRY_SIZE,
        )?;
        if !pe.present() {
            return Err(Stop::Fault(FR::SmPasidEntryNotPresent, fpd || pe.fpd()));
        }
        if pe.reserved_bits(self.haw) != [0; 8] || pe.did() as u32 >= self.domain_limit() {
            return Err(Stop::Fault(FR::SmPasidEntryReserved, fpd));
        }
        let fpd = fpd || pe.fpd();
        let invalid = Err(Stop::Fault(FR::SmPasidEntryInvalid, fpd));
        let mgaw = (CAP::MGAW.read(self.cap) + 1) as u32;
        let translation = match pe.pgtt() {
            None | Some(Pgtt::Nested) => return invalid,
            Some(Pgtt::PassThrough) => {
                if !ECAP::PT.is_set(self.ecap) {
                    return invalid;
                }
                PasidTranslation::PassThrough
            }
            Some(Pgtt::SecondStage) => {
                if !ECAP::SLTS.is_set(self.ecap) {
                    return invalid;
                }
                let Some(aw) = AddressWidth::from_bits(pe.aw()) else {
                    return invalid;
                };
                if CAP::SAGAW.read(self.cap) & aw.sagaw_bit() == 0 {
                    return invalid;
                }
                PasidTranslation::SecondStage {
                    root: pe.slptptr(),
                    levels: aw.levels(),
                    width: aw.width().min(mgaw),
                }
            }
            Some(Pgtt::FirstStage) => {
                if !ECAP::FLTS.is_set(self.ecap) {
                    return invalid;
                }
                let flpm = match Flpm::from_bits(pe.flpm()) {
                    Some(Flpm::Level4) => Flpm::Level4,
                    Some(Flpm::Level5) if CAP::FL5LP.is_set(self.cap) => Flpm::Level5,
                    _ => return invalid,
                };
                // First-stage input addresses are bounded by the paging mode and by the
                // entry's AW, as QEMU's intel-iommu does (vtd_iova_fl_check_canonical
                // takes its limit from vtd_get_iova_agaw = 30 + 9·AW for every PGTT);
                // Linux programs AW in first-stage entries (intel_pasid_setup_first_level
                // → pasid_set_address_width), so both agree that AW matters here. The
                // specification text itself is not among our sources. AW = 0 gives a
                // 30-bit bound: every request at or above 1 GiB is non-canonical (0x80).
                // AW 4–7 are reserved encodings (as in the context entry): invalid entry.
                let aw = pe.aw();
                if aw > 3 {
                    return invalid;
                }
                PasidTranslation::FirstStage {
                    root: pe.flptptr(),
                    levels: flpm.levels(),
                    width: flpm.width().min(30 + 9 * aw as u32),
                }
            }
        };
        if pe.ssade() && !ECAP::SLADS.is_set(self.ecap) {
            return invalid;
        }
        let entry = PasidCacheEntry {
            did: pe.did(),
            fpd,
            sre: pe.sre(),
            wpe: pe.wpe(),
            ssade: pe.ssade(),
            translation,
        };
        if self.pasid_cache.len() >= super::cache::CACHE_CAPACITY {
            self.pasid_cache.clear();
        }
        self.pasid_cache.insert((sid, pasid), entry);
        Ok(entry)
    }

    // ----- first stage ------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn lookup_or_walk_fl(
        &mut self,
        mem: &mut dyn PhysMem,
        req: &DmaRequest,
        pe: &PasidCacheEntry,
        pasid: u32,
        root: u64,
        levels: u32,
        privileged: bool,
    ) -> Step<Translated> {
        let iova = req.iova.0;
        let write = req.access == Access::Write;
        if let Some(e) = self.iotlb.lookup(pe.did, pasid, iova) {
            if e.stage == Stage::First && (!write || e.dirty_done) {
                let e = *e;
                self.stats.iotlb_hits += 1;
                return self
                    .finish_fl(&e.perms, e.user, e.pa, e.level, iova, write, privileged, pe);
            }
        }
        self.stats.walks += 1;
        let leaf = self.walk_fl(mem, iova, root, levels, pe, write, privileged)?;
        self.iotlb.insert(
            iova,
            IotlbEntry {
                did: pe.did,
                pasid,
                level: leaf.level,
                pa: leaf.pa,
                perms: leaf.perms,
                stage: Stage::First,
                user: leaf.user,
                dirty_done: leaf.dirty_done,
            },
        );
        self.finish_fl(
            &leaf.perms,
            leaf.user,
            leaf.pa,
            leaf.level,
            iova,
            write,
            privileged,
            pe,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_fl(
        &self,
        perms: &Perms,
        user: bool,
        pa: u64,
        level: u32,
        iova: u64,
        write: bool,
        privileged: bool,
        pe: &PasidCacheEntry,
    ) -> Step<Translated> {
        if !privileged && !user {
            return Err(Stop::Fault(FR::SmUserSupervisor, pe.fpd));
        }
        // Supervisor writes ignore R/W unless WPE is set (x86 CR0.WP semantics).
        let writable = perms.write || (privileged && !pe.wpe);
        if write && !writable {
            return Err(Stop::Fault(FR::SmNoWrite, pe.fpd));
        }
        let size = 1u64 << level_shift(level);
        Ok(Translated {
            pa: PhysAddr(pa | (iova & (size - 1))),
            perms: Perms {
                read: true,
                write: writable,
                exec: false,
            },
            page_size: page_size(level),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_fl(
        &mut self,
        mem: &mut dyn PhysMem,
        iova: u64,
        root: u64,
        levels: u32,
        pe: &PasidCacheEntry,
        write: bool,
        privileged: bool,
    ) -> Step<Leaf> {
        let caps = self.pte_caps_fl();
        let mut table = root;
        let mut writable = true;
        let mut user = true;
        let mut visited: [(u64, u64); 5] = [(0, 0); 5];
        let mut n = 0;
        for level in (1..=levels.min(5)).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = mem.read_u64(PhysAddr(at))?;
            let pte = FlPte::from_raw(v);
            let refused = if !pte.present() {
                Some(FR::SmFlEntryNotPresent)
            } else if pte.reserved_bits(level, &caps) != 0 {
                Some(FR::SmFlEntryReserved)
            } else {
                None
            };
            if let Some(reason) = refused {
                // The entries above were used to reach this one: they get A although
                // the walk faults (x86 rule; see `set_flag_in`).
                set_flag_in(mem, &visited[..n], FL_A)?;
                return Err(Stop::Fault(reason, pe.fpd));
            }
            writable &= pte.writable();
            user &= pte.user();
            visited[n] = (at, v);
            n += 1;
            if pte.is_leaf(level) {
                let allowed =
                    (privileged || user) && (!write || writable || (privileged && !pe.wpe));
                // Every paging-structure entry above the leaf was used, so it gets A
                // whatever the outcome; the leaf gets A (and D for a write) only when the
                // access is allowed (x86 rule; see `set_flag_in`).
                set_flag_in(mem, &visited[..n - 1], FL_A)?;
                if allowed {
                    let leaf_flags = if write { FL_A | FL_D } else { FL_A };
                    set_flag_in(mem, &visited[n - 1..n], leaf_flags)?;
                }
                return Ok(Leaf {
                    pa: pte.leaf_addr(level),
                    level,
                    perms: Perms {
                        read: true,
                        write: writable,
                        exec: false,
                    },
                    user,
                    dirty_done: (write && allowed) || v & FL_D != 0,
                });
            }
            table = pte.addr();
        }
        Err(Stop::Fault(FR::SmFlEntryReserved, pe.fpd))
    }
}

/// Sets `flags` in each `(address, value read)` paging entry that lacks one of them.
///
/// Accessed flags follow x86 paging, which both VT-d stages copy: an entry gets A once
/// the walk has used it to reach the next level, even if the walk then faults below it
/// (QEMU's vtd_iova_to_flpte sets A in each first-stage entry as it passes it, before
/// looking at the next level); the entry that faults, and a leaf whose access is
/// refused, do not get it. D is set only in the leaf of an allowed write.
fn set_flag_in(mem: &mut dyn PhysMem, entries: &[(u64, u64)], flags: u64) -> Result<(), MemError> {
    for &(addr, old) in entries {
        if old & flags != flags {
            mem.write_u64(PhysAddr(addr), old | flags)?;
        }
    }
    Ok(())
}

fn page_size(level: u32) -> PageSize {
    match level {
        2 => PageSize::SIZE_2M,
        3 => PageSize::SIZE_1G,
        _ => PageSize::SIZE_4K,
    }
}

fn identity(iova: u64) -> Translated {
    Translated {
        pa: PhysAddr(iova),
        perms: Perms::RW,
        page_size: PageSize::SIZE_4K,
    }
}

/// Checks a second-stage translation's permissions and builds the result.
#[inline]
fn finish(
    perms: &Perms,
    pa: u64,
    level: u32,
    iova: u64,
    write: bool,
    fpd: bool,
    scalable: bool,
) -> Step<Translated> {
    let allowed = if write { perms.write } else { perms.read };
    if !allowed {
        let reason = match (scalable, write) {
            (false, false) => FR::ReadNotAllowed,
            (false, true) => FR::WriteNotAllowed,
            (true, false) => FR::SmNoRead,
            (true, true) => FR::SmNoWrite,
        };
        return Err(Stop::Fault(reason, fpd));
    }
    let size = 1u64 << level_shift(level);
    Ok(Translated {
        pa: PhysAddr(pa | (iova & (size - 1))),
        perms: *perms,
        page_size: page_size(level),
    })
}
