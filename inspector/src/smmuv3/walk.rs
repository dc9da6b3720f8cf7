//! One address translated for one StreamID (and SubstreamID), step by step, ending in
//! what the transaction meets and the event the SMMU would record; the order of checks
//! is the emulator's model (`emulator::smmuv3`, IHI0070 §5 and §7, reference
//! `smmuv3.md`).

use super::unit::{cd_fields, cfg_name, ste_fields};
use super::{rid_stream, S2Mem, SmmuState};
use crate::arch::{Step, Walk, WalkEnd};
use crate::image::Image;
use iommu_core::mem::PhysMem;
use iommu_core::pgtable::{translate as pt_translate, Entry, Outcome, Perms, WalkErrorKind};
use iommu_core::{Iova, PageSize, PhysAddr, RequesterId};
use smmuv3::format::Vmsa;
use smmuv3::hw::cd::{cd_index, L1Cd};
use smmuv3::hw::event::EventType;
use smmuv3::hw::regs::{self, GBPA};
use smmuv3::hw::ste::{Config, L1Std, S1Dss, SteSlot};

fn ev(t: EventType, detail: String, recorded: bool) -> WalkEnd {
    WalkEnd::Fault {
        code: t as u8,
        reason: t.name(),
        detail,
        fpd: !recorded,
    }
}

fn silent(detail: &str) -> WalkEnd {
    WalkEnd::Fault {
        code: 0,
        reason: "abort (no event recorded)",
        detail: detail.into(),
        fpd: true,
    }
}

fn short(f: &[(&str, u64)]) -> String {
    f.iter()
        .map(|(n, v)| format!("{n}={v:#x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `walk` on an SMMUv3: `rid` is the StreamID as [`super::stream_rid`] shows it,
/// `ssid` the SubstreamID.
pub fn translate(
    u: &SmmuState,
    image: &Image,
    rid: RequesterId,
    ssid: Option<u32>,
    iova: Iova,
    write: bool,
) -> Walk {
    let mut steps = Vec::new();
    let end = run(u, image, rid_stream(rid), ssid, iova.0, write, &mut steps);
    Walk {
        rid,
        pasid: ssid,
        iova,
        write,
        steps,
        end,
    }
}

/// A failed table walk of one stage: the event, why, and for an unreadable table the
/// address that could not be read.
type Stop = (EventType, String, Option<u64>);

/// Walks one stage, recording its descriptors as steps.
fn stage<M: PhysMem + ?Sized>(
    f: &Vmsa,
    mem: &M,
    root: PhysAddr,
    addr: u64,
    name: &str,
    steps: &mut Vec<Step>,
) -> Result<(u64, Perms, PageSize), Stop> {
    let t = match pt_translate(f, mem, root, Iova(addr)) {
        Ok(t) => t,
        Err(e) => {
            let at = if e.is_root() {
                e.table
            } else {
                PhysAddr(e.table.0 + 8 * e.index as u64)
            };
            let mem = match &e.kind {
                WalkErrorKind::Memory(m) => Some(m.addr().0),
                _ => None,
            };
            let ty = match &e.kind {
                WalkErrorKind::Memory(_) => EventType::FWalkEabt,
                WalkErrorKind::BadEntry(b) if b.reason.contains("F_ACCESS") => EventType::FAccess,
                WalkErrorKind::BadEntry(b) if b.reason.contains("F_ADDR_SIZE") => {
                    EventType::FAddrSize
                }
                _ => EventType::FTranslation,
            };
            return Err((ty, format!("{name} descriptor at {at}: {}", e.kind), mem));
        }
    };
    for s in &t.steps {
        steps.push(Step {
            what: format!("{name} level {} descriptor [{:#x}]", 4 - s.level, s.index),
            addr: PhysAddr(s.table.0 + 8 * s.index as u64),
            raw: vec![s.raw],
            meaning: match s.entry {
                Entry::Invalid => "invalid".into(),
                Entry::Table { next, .. } => format!("table descriptor -> {next}"),
                Entry::Leaf { base, size, perms } => {
                    format!(
                        "{size} {} at {base} ({perms})",
                        if s.level == 1 { "page" } else { "block" }
                    )
                }
            },
        });
    }
    match t.outcome {
        Outcome::Mapped {
            pa,
            perms,
            page_size,
        } => Ok((pa.0, perms, page_size)),
        o => Err((EventType::FTranslation, format!("{name}: {o}"), None)),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    u: &SmmuState,
    image: &Image,
    sid: u32,
    ssid: Option<u32>,
    iova: u64,
    write: bool,
    steps: &mut Vec<Step>,
) -> WalkEnd {
    if !u.enabled() {
        if GBPA::ABORT.read(u.reg(regs::GBPA) as u32) == 1 {
            return silent("SMMUEN=0 with GBPA.ABORT=1: every transaction aborted");
        }
        return WalkEnd::Untranslated { pa: PhysAddr(iova) };
    }
    // C_BAD_STREAMID is recorded only with CR2.RECINVSID (IHI0070 §6.3.12).
    let recinvsid = regs::CR2::RECINVSID.read(u.reg(regs::CR2) as u32) == 1;
    let Some(slot) = u.cfg.locate(sid) else {
        return ev(
            EventType::CBadStreamid,
            format!("StreamID {sid:#x} beyond LOG2SIZE {}", u.cfg.log2size),
            recinvsid,
        );
    };
    let st = u.strtab();
    let at = match slot {
        SteSlot::Linear { index } => PhysAddr(st.0 + index as u64 * 64),
        SteSlot::TwoLevel { l1, l2 } => {
            let a = PhysAddr(st.0 + l1 as u64 * 8);
            let raw = match image.read_u64(a) {
                Ok(v) => v,
                Err(e) => return ev(EventType::FSteFetch, format!("L1STD at {a}: {e}"), true),
            };
            let d = L1Std::from_qwords([raw]);
            let n = d.l2_entries(u.cfg.split);
            steps.push(Step {
                what: format!("L1STD [{l1:#x}]"),
                addr: a,
                raw: vec![raw],
                meaning: format!(
                    "STRTAB_L1_DESC_SPAN={} STRTAB_L1_DESC_L2PTR={:#x}",
                    d.span(),
                    d.l2ptr()
                ),
            });
            match n {
                Some(n) if l2 < n => PhysAddr((d.l2ptr() & !(n as u64 * 64 - 1)) + l2 as u64 * 64),
                _ => {
                    return ev(
                        EventType::CBadStreamid,
                        format!(
                            "L1STD at {a}: SPAN {} does not cover StreamID {sid:#x}",
                            d.span()
                        ),
                        true,
                    )
                }
            }
        }
    };
    let ste = match super::read_ste(image, at) {
        Ok(s) => s,
        Err(e) => return ev(EventType::FSteFetch, format!("STE at {at}: {e}"), true),
    };
    steps.push(Step {
        what: format!("STE of StreamID {sid:#x}"),
        addr: at,
        raw: ste.qwords().to_vec(),
        meaning: short(&ste_fields(&ste)),
    });
    if !ste.v() {
        return ev(EventType::CBadSte, "STRTAB_STE_0_V clear".into(), true);
    }
    let c = ste.config();
    if c == Config::Abort {
        return silent("STRTAB_STE_0_CFG abort: the transaction is aborted, no event recorded");
    }
    let s2f = match u.check_ste(&ste) {
        Ok(f) => f,
        Err(why) => return ev(EventType::CBadSte, why, true),
    };
    let s2 = s2f.map(|f| (f, PhysAddr(ste.s2ttb()), ste.s2r()));
    let bad_ssid = |why: String| ev(EventType::CBadSubstreamid, why, true);
    let cd_idx = if !c.s1() {
        if let Some(s) = ssid {
            return bad_ssid(format!(
                "SubstreamID {s:#x} on a stream without stage 1 ({})",
                cfg_name(c)
            ));
        }
        None
    } else {
        let cdmax = u.cdmax(&ste);
        match ssid {
            Some(s) if cdmax == 0 || s >> cdmax != 0 => {
                return bad_ssid(format!("SubstreamID {s:#x} beyond S1CDMAX {cdmax}"))
            }
            Some(0) if ste.s1dss() == Some(S1Dss::Ssid0) => {
                return ev(
                    EventType::FStreamDisabled,
                    "SubstreamID 0 with STRTAB_STE_1_S1DSS = SSID0".into(),
                    true,
                )
            }
            Some(s) => Some(s),
            None if cdmax == 0 => Some(0),
            None => match ste.s1dss() {
                None | Some(S1Dss::Terminate) => {
                    return ev(
                        EventType::FStreamDisabled,
                        "no SubstreamID with STRTAB_STE_1_S1DSS = terminate".into(),
                        true,
                    )
                }
                Some(S1Dss::Bypass) => None,
                Some(S1Dss::Ssid0) => Some(0),
            },
        }
    };
    // The CD, read at an IPA through stage 2 for nested streams.
    let mut cdf: Option<(Option<Vmsa>, PhysAddr, bool, u16)> = None;
    if let Some(idx) = cd_idx {
        let ptr = ste.s1_context_ptr();
        let read = |ipa: u64, what: &str, steps: &mut Vec<Step>| -> Result<PhysAddr, WalkEnd> {
            match s2 {
                None => Ok(PhysAddr(ipa)),
                Some((f, root, rec)) => {
                    match stage(&f, image, root, ipa, "stage 2 (CD fetch)", steps) {
                        Ok((pa, p, _)) if p.read => Ok(PhysAddr(pa)),
                        Ok(_) => Err(ev(
                            EventType::FPermission,
                            format!("{what} IPA {ipa:#x}: stage 2 denies the read (S2, CLASS=CD)"),
                            rec,
                        )),
                        Err((t, why, _)) => Err(ev(
                            t,
                            format!("{what} IPA {ipa:#x}: {why} (S2, CLASS=CD)"),
                            rec,
                        )),
                    }
                }
            }
        };
        let cd_ipa = match cd_index(u.cd_fmt(&ste), idx) {
            (None, i) => ptr + i as u64 * 64,
            (Some(l1), i) => {
                let ipa = ptr + l1 as u64 * 8;
                let pa = match read(ipa, "L1CD", steps) {
                    Ok(p) => p,
                    Err(e) => return e,
                };
                let raw = match image.read_u64(pa) {
                    Ok(v) => v,
                    Err(e) => return ev(EventType::FCdFetch, format!("L1CD at {pa}: {e}"), true),
                };
                let d = L1Cd::from_qwords([raw]);
                steps.push(Step {
                    what: format!("L1CD [{l1:#x}]"),
                    addr: pa,
                    raw: vec![raw],
                    meaning: format!(
                        "CTXDESC_L1_DESC_V={} CTXDESC_L1_DESC_L2PTR={:#x}",
                        d.v() as u8,
                        d.l2ptr()
                    ),
                });
                if !d.v() {
                    return bad_ssid(format!("L1CD at {pa} for SubstreamID {idx:#x} is invalid"));
                }
                d.l2ptr() + i as u64 * 64
            }
        };
        let pa = match read(cd_ipa, "CD", steps) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let cd = match super::read_cd(image, pa) {
            Ok(c) => c,
            Err(e) => return ev(EventType::FCdFetch, format!("CD at {pa}: {e}"), true),
        };
        steps.push(Step {
            what: format!("CD of SubstreamID {idx:#x}"),
            addr: pa,
            raw: cd.qwords().to_vec(),
            meaning: short(&cd_fields(&cd)),
        });
        match u.check_cd(&cd) {
            Ok(f) => cdf = Some((f, PhysAddr(cd.ttb0()), cd.r(), cd.asid() as u16)),
            Err(why) => return ev(EventType::CBadCd, why, true),
        }
    }
    let ias = u.caps.map_or(64, |c| c.ias_bits());
    if cdf.is_none() && ias < 64 && iova >> ias != 0 {
        return ev(
            EventType::FAddrSize,
            format!("input {iova:#x} beyond the {ias}-bit IAS with stage 1 bypassed"),
            true,
        );
    }
    if cdf.is_none() && s2.is_none() {
        return WalkEnd::Untranslated { pa: PhysAddr(iova) };
    }
    let denied = |p: Perms| if write { !p.write } else { !p.read };
    // Stage 1.
    let (ipa, p1, sz1) = match cdf {
        None => (iova, Perms::RWX, None),
        Some((None, _, rec, _)) => {
            return ev(
                EventType::FTranslation,
                "CTXDESC_CD_0_TCR_EPD0 set: TTB0 is not walked".into(),
                rec,
            )
        }
        Some((Some(f), ttb0, rec, _)) => {
            let r = match s2 {
                None => stage(&f, image, ttb0, iova, "stage 1", steps),
                Some((f2, root2, rec2)) => {
                    let mem = S2Mem {
                        image,
                        fmt: f2,
                        root: root2,
                    };
                    let r = stage(&f, &mem, ttb0, iova, "stage 1 (tables at IPAs)", steps);
                    if let Err((EventType::FWalkEabt, why, Some(ipa))) = &r {
                        // A stage-1 table read at an IPA: if stage 2 refuses it, the
                        // stage-2 fault with CLASS = TT (IHI0070 §7.3); if the PA is
                        // unreadable, F_WALK_EABT.
                        let mut s2steps = Vec::new();
                        let s2r = stage(
                            &f2,
                            image,
                            root2,
                            *ipa,
                            "stage 2 (table fetch)",
                            &mut s2steps,
                        );
                        match s2r {
                            Ok((_, p, _)) if !p.read => {
                                steps.extend(s2steps);
                                return ev(
                                    EventType::FPermission,
                                    format!(
                                        "{why}: stage 2 denies reading IPA {ipa:#x} (S2, CLASS=TT)"
                                    ),
                                    rec2,
                                );
                            }
                            Err((t, w2, _)) => {
                                steps.extend(s2steps);
                                let rec2 = if t.suppressible() { rec2 } else { true };
                                return ev(t, format!("{why}: {w2} (S2, CLASS=TT)"), rec2);
                            }
                            Ok(_) => {}
                        }
                    }
                    r
                }
            };
            match r {
                Ok((pa, p, sz)) => (pa, p, Some(sz)),
                Err((t, why, _)) => {
                    let rec = if t.suppressible() { rec } else { true };
                    return ev(t, why, rec);
                }
            }
        }
    };
    // Stage 2.
    let (pa, p2, sz2) = match s2 {
        None => (ipa, Perms::RWX, None),
        Some((f, root, rec)) => match stage(&f, image, root, ipa, "stage 2", steps) {
            Ok((pa, p, sz)) => (pa, p, Some(sz)),
            Err((t, why, _)) => {
                let rec = if t.suppressible() { rec } else { true };
                return ev(t, format!("{why} (S2, IPA {ipa:#x})"), rec);
            }
        },
    };
    if denied(p1) {
        let rec = cdf.map_or(true, |c| c.2);
        return ev(
            EventType::FPermission,
            format!(
                "stage 1 allows {p1}: no {}",
                if write { "write" } else { "read" }
            ),
            rec,
        );
    }
    if denied(p2) {
        let rec = s2.map_or(true, |s| s.2);
        return ev(
            EventType::FPermission,
            format!(
                "stage 2 allows {p2} at IPA {ipa:#x}: no {} (S2)",
                if write { "write" } else { "read" }
            ),
            rec,
        );
    }
    let page_size = match (sz1, sz2) {
        (Some(a), Some(b)) if b.bytes() < a.bytes() => b,
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => PageSize::SIZE_4K,
    };
    WalkEnd::Mapped {
        pa: PhysAddr(pa),
        perms: p1.intersect(p2),
        page_size,
        did: match (cdf, s2) {
            (_, Some(_)) => Some(ste.s2vmid() as u16),
            (Some(c), None) => Some(c.3),
            _ => None,
        },
    }
}
