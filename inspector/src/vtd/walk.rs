//! One translation, step by step: RTADDR, root entry, context entry, PASID directory and
//! table entries, every page-table level, and the result or the fault a request would
//! get (with its VT-d fault reason code).

use super::scan::{self, Translation};
use super::{Stage, Unit};
use iommu_core::mem::PhysMem;
use iommu_core::pgtable::{translate, Entry, Outcome, WalkErrorKind};
use iommu_core::{Iova, PageSize, PhysAddr, RequesterId};
use vtd::hw::fault::FaultReason as FR;
use vtd::hw::pasid::{pasid_dir_index, pasid_table_index, PasidDirEntry, PasidEntry};
use vtd::hw::regs::{Ttm, ECAP};
use vtd::hw::root::{ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry};

/// Access type of the request being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Access {
    /// A read.
    #[default]
    Read,
    /// A write.
    Write,
}

/// One structure read on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkStep {
    /// What was read: `root entry`, `context entry`, `PASID directory entry`,
    /// `PASID entry`, `level 4 entry`...
    pub what: String,
    /// Its address.
    pub addr: PhysAddr,
    /// Its raw qwords.
    pub raw: Vec<u64>,
    /// What it says.
    pub meaning: String,
}

/// How the translation ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkResult {
    /// Translation is disabled (GSTS.TES clear): the address goes out untranslated.
    Untranslated {
        /// The physical address (= the IOVA).
        pa: PhysAddr,
    },
    /// The request translates.
    Mapped {
        /// Physical address.
        pa: PhysAddr,
        /// Effective permissions.
        perms: iommu_core::pgtable::Perms,
        /// Page size.
        page_size: PageSize,
        /// Domain ID, when there is one.
        did: Option<u16>,
    },
    /// The request faults.
    Fault {
        /// The fault reason.
        reason: FR,
        /// Why.
        detail: String,
        /// Fault processing disabled: the fault is not recorded, the request is blocked.
        fpd: bool,
    },
}

/// A translation walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walkthrough {
    /// The requester.
    pub rid: RequesterId,
    /// The PASID of the request, if any.
    pub pasid: Option<u32>,
    /// The address.
    pub iova: Iova,
    /// Read or write.
    pub access: Access,
    /// The structures read, in order.
    pub steps: Vec<WalkStep>,
    /// The result.
    pub result: WalkResult,
}

fn read_n<const N: usize>(mem: &dyn PhysMem, at: u64) -> Result<[u64; N], iommu_core::MemError> {
    let mut b = [0u8; 64];
    mem.read(PhysAddr(at), &mut b[..N * 8])?;
    let mut q = [0u64; N];
    for (i, v) in q.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *v = u64::from_le_bytes(w);
    }
    Ok(q)
}

struct W<'a> {
    unit: &'a Unit,
    mem: &'a dyn PhysMem,
    t: Walkthrough,
}

type Stop = (FR, String, bool);

impl W<'_> {
    fn step(&mut self, what: impl Into<String>, addr: u64, raw: &[u64], meaning: String) {
        self.t.steps.push(WalkStep {
            what: what.into(),
            addr: PhysAddr(addr),
            raw: raw.to_vec(),
            meaning,
        });
    }

    fn legacy(&mut self) -> Result<WalkResult, Stop> {
        let rid = self.t.rid;
        if self.t.pasid.is_some() {
            return Err((
                FR::SmTtmForPasidRequest,
                "request with PASID on a unit in legacy mode".into(),
                false,
            ));
        }
        let rt = self.unit.root_table().0;
        let at = rt + rid.bus as u64 * 16;
        let q = read_n::<2>(self.mem, at)
            .map_err(|e| (FR::RootTableAccess, format!("root table: {e}"), false))?;
        let re = RootEntry::from_qwords(q);
        self.step(
            format!("root entry (bus {:#04x})", rid.bus),
            at,
            &q,
            if re.present() {
                format!("present, context table {:#x}", re.context_table())
            } else {
                "not present".into()
            },
        );
        if !re.present() {
            return Err((
                FR::RootEntryNotPresent,
                "root entry not present".into(),
                false,
            ));
        }
        let rsvd = re.reserved_bits(self.unit.haw);
        if rsvd != [0, 0] {
            return Err((
                FR::RootEntryReserved,
                format!(
                    "reserved bits {:#x}:{:#x} set in the root entry",
                    rsvd[1], rsvd[0]
                ),
                false,
            ));
        }
        let cat = re.context_table() + rid.devfn as u64 * 16;
        let q = read_n::<2>(self.mem, cat)
            .map_err(|e| (FR::ContextTableAccess, format!("context table: {e}"), false))?;
        let ce = ContextEntry::from_qwords(q);
        let tr = ce.present().then(|| scan::legacy_context(self.unit, &ce));
        let meaning = match &tr {
            None => format!("not present (FPD={})", ce.fpd() as u8),
            Some(t) => format!(
                "present, DID {:#06x}, TT {:?}, AW {}, {}",
                ce.did(),
                ce.tt(),
                ce.aw(),
                describe(t)
            ),
        };
        self.step(
            format!("context entry (devfn {:#04x})", rid.devfn),
            cat,
            &q,
            meaning,
        );
        let Some(tr) = tr else {
            return Err((
                FR::ContextEntryNotPresent,
                "context entry not present".into(),
                ce.fpd(),
            ));
        };
        self.finish(tr, Some(ce.did()), ce.fpd(), false)
    }

    fn scalable(&mut self) -> Result<WalkResult, Stop> {
        let rid = self.t.rid;
        let ecap = self.unit.ecap();
        let rt = self.unit.root_table().0;
        let at = rt + rid.bus as u64 * 16;
        let q = read_n::<2>(self.mem, at)
            .map_err(|e| (FR::SmRootEntryAccess, format!("root table: {e}"), false))?;
        let re = ScalableRootEntry::from_qwords(q);
        let (present, table) = re.half_for(rid.devfn);
        let half = if rid.devfn & 0x80 != 0 {
            "upper"
        } else {
            "lower"
        };
        self.step(
            format!("root entry (bus {:#04x})", rid.bus),
            at,
            &q,
            if present {
                format!("{half} half present, context table {table:#x}")
            } else {
                format!("{half} half not present")
            },
        );
        let rsvd = re.reserved_bits_for(rid.devfn, self.unit.haw);
        if rsvd != 0 {
            return Err((
                FR::SmRootEntryReserved,
                format!("reserved bits {rsvd:#x} set in the root entry's {half} half"),
                false,
            ));
        }
        if !present {
            return Err((
                FR::SmRootEntryNotPresent,
                format!("root entry {half} half not present"),
                false,
            ));
        }
        let cat = table + (rid.devfn & 0x7f) as u64 * 32;
        let q = read_n::<4>(self.mem, cat).map_err(|e| {
            (
                FR::SmContextEntryAccess,
                format!("context table: {e}"),
                false,
            )
        })?;
        let ce = ScalableContextEntry::from_qwords(q);
        self.step(
            format!("context entry (devfn {:#04x})", rid.devfn),
            cat,
            &q,
            if ce.present() {
                format!(
                    "present, PASID directory {:#x} ({} entries), PASIDE={}, RID_PASID {:#x}",
                    ce.pasid_dir(),
                    ce.pasid_dir_entries(),
                    ce.paside() as u8,
                    ce.rid_pasid()
                )
            } else {
                "not present".into()
            },
        );
        if !ce.present() {
            return Err((
                FR::SmContextEntryNotPresent,
                "context entry not present".into(),
                ce.fpd(),
            ));
        }
        scan::scalable_context(self.unit, &ce).map_err(|b| (b.reason, b.why, false))?;
        let mut fpd = ce.fpd();
        let pasid = match self.t.pasid {
            Some(p) => {
                if !ce.paside() || !ECAP::PASID.is_set(ecap) {
                    return Err((
                        FR::SmPasidDisabled,
                        "request with PASID, PASIDE clear (or no ECAP.PASID)".into(),
                        fpd,
                    ));
                }
                p
            }
            None => scan::rid_pasid(self.unit, &ce),
        };
        let pss_bits = ECAP::PSS.read(ecap) as u32 + 1;
        if pasid_dir_index(pasid) >= ce.pasid_dir_entries()
            || (pss_bits < 32 && pasid >> pss_bits != 0)
        {
            return Err((
                FR::SmPasidTooLarge,
                format!(
                    "PASID {pasid:#x} beyond the {}-entry directory or ECAP.PSS",
                    ce.pasid_dir_entries()
                ),
                fpd,
            ));
        }
        let dat = ce
            .pasid_dir()
            .checked_add(pasid_dir_index(pasid) * 8)
            .ok_or_else(|| {
                (
                    FR::SmPasidDirAccess,
                    format!(
                        "PASID directory entry beyond the 64-bit address space (directory {:#x})",
                        ce.pasid_dir()
                    ),
                    fpd,
                )
            })?;
        let q = read_n::<1>(self.mem, dat)
            .map_err(|e| (FR::SmPasidDirAccess, format!("PASID directory: {e}"), fpd))?;
        let de = PasidDirEntry::from_qwords(q);
        self.step(
            format!("PASID directory entry {:#x}", pasid_dir_index(pasid)),
            dat,
            &q,
            if de.present() {
                format!("present, PASID table {:#x}", de.table())
            } else {
                "not present".into()
            },
        );
        if !de.present() {
            return Err((
                FR::SmPasidDirNotPresent,
                "PASID directory entry not present".into(),
                fpd || de.fpd(),
            ));
        }
        let rsvd = de.reserved_bits(self.unit.haw);
        if rsvd != 0 {
            return Err((
                FR::SmPasidDirReserved,
                format!("reserved bits {rsvd:#x} set in the PASID directory entry"),
                fpd,
            ));
        }
        fpd |= de.fpd();
        let pat = de.table() + pasid_table_index(pasid) * 64;
        let q = read_n::<8>(self.mem, pat)
            .map_err(|e| (FR::SmPasidEntryAccess, format!("PASID table: {e}"), fpd))?;
        let pe = PasidEntry::from_qwords(q);
        let tr = pe.present().then(|| scan::pasid_entry(self.unit, &pe));
        let meaning = match &tr {
            None => "not present".into(),
            Some(t) => format!(
                "present, DID {:#06x}, PGTT {}, {}",
                pe.did(),
                pe.pgtt_bits(),
                describe(t)
            ),
        };
        self.step(format!("PASID entry (PASID {pasid:#x})"), pat, &q, meaning);
        let Some(tr) = tr else {
            return Err((
                FR::SmPasidEntryNotPresent,
                "PASID entry not present".into(),
                fpd || pe.fpd(),
            ));
        };
        fpd |= pe.fpd();
        self.finish(tr, Some(pe.did()), fpd, true)
    }

    fn finish(
        &mut self,
        tr: Translation,
        did: Option<u16>,
        fpd: bool,
        scalable: bool,
    ) -> Result<WalkResult, Stop> {
        let iova = self.t.iova;
        let write = self.t.access == Access::Write;
        let pt = match tr {
            Translation::Blocked(b) => return Err((b.reason, b.why, fpd)),
            Translation::PassThrough => {
                return Ok(WalkResult::Mapped {
                    pa: PhysAddr(iova.0),
                    perms: iommu_core::pgtable::Perms::RW,
                    page_size: PageSize::SIZE_4K,
                    did,
                })
            }
            Translation::Tables(pt) => pt,
        };
        let (beyond, access_err, reserved, np_read, np_write) = match (scalable, pt.stage) {
            (false, _) => (
                FR::AddressBeyondMgaw,
                FR::PagingEntryAccess,
                FR::PagingEntryReserved,
                FR::ReadNotAllowed,
                FR::WriteNotAllowed,
            ),
            (true, Stage::Second) => (
                FR::SmAddressBeyondMax,
                FR::SmSlEntryAccess,
                FR::SmSlEntryReserved,
                FR::SmNoRead,
                FR::SmNoWrite,
            ),
            (true, Stage::First) => (
                FR::SmAddressBeyondMax,
                FR::SmFlEntryAccess,
                FR::SmFlEntryReserved,
                FR::SmFlEntryNotPresent,
                FR::SmFlEntryNotPresent,
            ),
        };
        if pt.stage == Stage::Second && pt.width < 64 && iova.0 >> pt.width != 0 {
            return Err((
                beyond,
                format!("IOVA beyond the {}-bit input width", pt.width),
                fpd,
            ));
        }
        if pt.stage == Stage::First && !canonical(iova.0, pt.width) {
            return Err((
                FR::SmNonCanonical,
                format!(
                    "IOVA not canonical in the {}-bit first-stage input width (paging mode \
                     and PASID-entry AW)",
                    pt.width
                ),
                fpd,
            ));
        }
        let format = pt
            .format(self.unit)
            .map_err(|e| (reserved, format!("page-table format: {e}"), fpd))?;
        if pt.stage == Stage::Second {
            if let Some((reason, detail)) =
                self.second_stage_refusal(&format, &pt, scalable, write, access_err)
            {
                return Err((reason, detail, fpd));
            }
        }
        let t = match translate(&format, self.mem, pt.root, iova) {
            Ok(t) => t,
            Err(e) => {
                // Steps up to the failing entry.
                let reason = match e.kind {
                    WalkErrorKind::Memory(_) => access_err,
                    _ => reserved,
                };
                let what = if e.is_root() {
                    format!("page-table root {}", e.table)
                } else {
                    format!(
                        "level {} entry {:#x} of table {} ({:#018x})",
                        e.level, e.index, e.table, e.entry
                    )
                };
                return Err((reason, format!("{what}: {}", e.kind), fpd));
            }
        };
        for s in &t.steps {
            let meaning = match s.entry {
                Entry::Invalid => "not present".into(),
                Entry::Table { next, level, perms } => {
                    format!("table, level {level} table at {next} ({perms})")
                }
                Entry::Leaf { base, size, perms } => {
                    format!("leaf, {size} page at {base} ({perms})")
                }
            };
            self.step(
                format!("{} level {} entry {:#x}", pt.stage.name(), s.level, s.index),
                s.table.0 + s.index as u64 * 8,
                &[s.raw],
                meaning,
            );
        }
        match t.outcome {
            Outcome::Mapped { .. }
                if pt.stage == Stage::First
                    && t.steps.iter().any(|s| s.raw & vtd::hw::pte::FL_US == 0) =>
            {
                // The walk models user (non-privileged) requests: every entry on the
                // path must have U/S set.
                Err((
                    FR::SmUserSupervisor,
                    "supervisor page (U/S clear on the path) for a user request".into(),
                    fpd,
                ))
            }
            Outcome::Mapped {
                pa,
                perms,
                page_size,
            } => {
                let allowed = if write { perms.write } else { perms.read };
                if !allowed {
                    let reason = match (scalable, write) {
                        (false, false) => FR::ReadNotAllowed,
                        (false, true) => FR::WriteNotAllowed,
                        (true, false) => FR::SmNoRead,
                        (true, true) => FR::SmNoWrite,
                    };
                    return Err((
                        reason,
                        format!(
                            "{} not allowed: the mapping is {perms}",
                            if write { "write" } else { "read" }
                        ),
                        fpd,
                    ));
                }
                Ok(WalkResult::Mapped {
                    pa,
                    perms,
                    page_size,
                    did,
                })
            }
            Outcome::NotPresent { level } => Err((
                if write { np_write } else { np_read },
                format!("no mapping: level {level} entry not present"),
                fpd,
            )),
            Outcome::BeyondInputWidth { ia_bits } => Err((
                beyond,
                format!("IOVA beyond the {ia_bits}-bit input width of the table"),
                fpd,
            )),
            Outcome::SkippedBitsSet { level } => Err((
                reserved,
                format!("address bits skipped at level {level} are not zero"),
                fpd,
            )),
        }
    }
}

/// Whether `iova` is canonical for a first-stage input width of `width` bits: every bit
/// from `width - 1` up equals bit `width - 1`.
fn canonical(iova: u64, width: u32) -> bool {
    if width >= 64 {
        return true;
    }
    let upper = iova >> (width - 1);
    upper == 0 || upper == u64::MAX >> (width - 1)
}

impl W<'_> {
    /// The fault a second-stage walk meets at an entry that is not present or lacks the
    /// requested right, with the steps read up to it; `None` when every entry on the path
    /// is present with the right (the walk is then decoded in full, reserved bits
    /// included).
    ///
    /// Each entry's right is checked before its reserved bits (and before anything
    /// below it), as VirtualBox (dmarDrSecondLevelTranslate) and QEMU (vtd_iova_to_slpte)
    /// walk. Scalable mode: R = W = 0 is SSL.2, 0x79 (Linux: "SM: Read/Write permission
    /// error in second-level paging entry"; VirtualBox: Pte_Not_Present is SSL.2); a
    /// present entry without the right is 0x85 (write) / 0x86 (read). Legacy mode: 0x5
    /// (write) / 0x6 (read) for both (Linux, QEMU). The emulator's model follows the
    /// same rules.
    fn second_stage_refusal(
        &mut self,
        format: &super::VtdFormat,
        pt: &super::PageTable,
        scalable: bool,
        write: bool,
        access_err: FR,
    ) -> Option<(FR, String)> {
        use iommu_core::pgtable::Format;
        use vtd::hw::pte::{level_index, SlPte};
        let caps = vtd::format::second_stage_caps(self.unit.cap(), self.unit.ecap(), self.unit.haw);
        let (not_present, not_read, not_write) = match (scalable, write) {
            (true, _) => (FR::SmSlPermission, FR::SmNoRead, FR::SmNoWrite),
            (false, true) => (FR::WriteNotAllowed, FR::ReadNotAllowed, FR::WriteNotAllowed),
            (false, false) => (FR::ReadNotAllowed, FR::ReadNotAllowed, FR::WriteNotAllowed),
        };
        let iova = self.t.iova.0;
        let mut steps = Vec::new();
        let mut table = pt.root.0;
        for level in (1..=pt.levels.min(5) as u32).rev() {
            let index = level_index(iova, level);
            let at = table.checked_add(index * 8)?;
            let raw = match read_n::<1>(self.mem, at) {
                Ok([v]) => v,
                Err(e) => {
                    self.t.steps.extend(steps);
                    return Some((access_err, format!("level {level} table {:#x}: {e}", table)));
                }
            };
            let pte = SlPte::from_raw(raw);
            let meaning = match format.decode(level as u8, raw) {
                Ok(Entry::Invalid) => "not present".to_string(),
                Ok(Entry::Table { next, level, perms }) => {
                    format!("table, level {level} table at {next} ({perms})")
                }
                Ok(Entry::Leaf { base, size, perms }) => {
                    format!("leaf, {size} page at {base} ({perms})")
                }
                Err(e) => format!("invalid: {e}"),
            };
            steps.push(WalkStep {
                what: format!("{} level {} entry {:#x}", pt.stage.name(), level, index),
                addr: PhysAddr(at),
                raw: vec![raw],
                meaning,
            });
            let refused = if !pte.present() {
                Some((
                    not_present,
                    format!("no mapping: level {level} entry not present"),
                ))
            } else if write && !pte.write() {
                Some((
                    not_write,
                    format!("write not allowed: level {level} entry has W clear"),
                ))
            } else if !write && !pte.read() {
                Some((
                    not_read,
                    format!("read not allowed: level {level} entry has R clear"),
                ))
            } else {
                None
            };
            if refused.is_some() {
                self.t.steps.extend(steps);
                return refused;
            }
            if pte.reserved_bits(level, &caps) != 0 || pte.is_leaf(level) {
                // Reserved bits, and the rest of a present path, are decoded by the
                // full walk.
                return None;
            }
            table = pte.addr();
        }
        None
    }
}

fn describe(t: &Translation) -> String {
    match t {
        Translation::Tables(p) => {
            format!("{} {}-level table at {}", p.stage.name(), p.levels, p.root)
        }
        Translation::PassThrough => "pass-through".into(),
        Translation::Blocked(b) => format!("blocked: {} (fault {:#04x})", b.why, b.reason.code()),
    }
}

/// Translates `iova` for requester `rid` (with `pasid`, if any) on `unit`, step by step.
pub fn walk(
    unit: &Unit,
    mem: &dyn PhysMem,
    rid: RequesterId,
    pasid: Option<u32>,
    iova: Iova,
    access: Access,
) -> Walkthrough {
    let mut w = W {
        unit,
        mem,
        t: Walkthrough {
            rid,
            pasid,
            iova,
            access,
            steps: Vec::new(),
            result: WalkResult::Untranslated {
                pa: PhysAddr(iova.0),
            },
        },
    };
    let rtaddr = unit.rtaddr();
    w.step(
        "RTADDR register",
        unit.base.0.wrapping_add(vtd::hw::regs::RTADDR),
        &[rtaddr],
        format!(
            "root table {}, {} mode; translation {}",
            unit.root_table(),
            super::mode_name(unit.mode()),
            if unit.enabled() {
                "enabled"
            } else {
                "disabled"
            }
        ),
    );
    if !unit.enabled() {
        return w.t;
    }
    let r = match unit.mode() {
        Ttm::Legacy => w.legacy(),
        Ttm::Scalable if ECAP::SMTS.is_set(unit.ecap()) => w.scalable(),
        Ttm::AbortDma if ECAP::ADMS.is_set(unit.ecap()) => Err((
            FR::RootTableAccess,
            "abort-DMA mode blocks every request".into(),
            true,
        )),
        m => Err((
            FR::SmTtmForPasidRequest,
            format!("translation table mode {} not usable", super::mode_name(m)),
            false,
        )),
    };
    w.t.result = match r {
        Ok(r) => r,
        Err((reason, detail, fpd)) => WalkResult::Fault {
            reason,
            detail,
            fpd,
        },
    };
    w.t
}
