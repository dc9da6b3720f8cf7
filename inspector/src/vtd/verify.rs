//! VT-d's part of `verify`: the unit's handover record (KHO client `iommu-vtd-<base>`,
//! decoded with `vtd::record`, or a record file), its structure and page-table pages
//! checked through the common [`Checker`], and the record and unit checks that mirror
//! what `adopt` refuses.

use super::state::{walk_table, UnitState};
use crate::error::InspectError;
use crate::image::Image;
use crate::verify::{pages_of, Checker};
use crate::vtd::scan::Translation;
use crate::vtd::{PageTable, Stage};
use iommu_core::kho::read_client_record;
use iommu_core::kho::record::{decode_record, Supported, RECORD_MAGIC};
use iommu_core::pageset::PageSet;
use iommu_core::PhysAddr;
use std::collections::BTreeMap;
use vtd::record::{DomainKind, Mode};
use vtd::record::{Record, FAMILY, VERSION};

/// A page table, its first users' labels and its number of users.
type NamedTable = (PageTable, Vec<String>, usize);

/// Most users named in a problem of a shared page table (the rest are counted).
const MAX_USERS_NAMED: usize = 16;

fn record_from_bytes(b: &[u8]) -> Result<Record, String> {
    let supported = Supported {
        family: FAMILY,
        oldest: 1,
        newest: VERSION,
    };
    let payload = if b.len() >= 8 && b[..8] == RECORD_MAGIC {
        decode_record(b, PhysAddr(0), &supported)
            .map_err(|e| format!("record file: {e}"))?
            .payload
    } else {
        b.to_vec()
    };
    Record::decode(&payload)
        .map_err(|m| format!("record payload offset {:#x}: {}", m.offset, m.what))
}

/// Checks one VT-d unit: reads its record (from `--record`, or its KHO client), then
/// its pages, entries, state and record.
pub fn verify_unit(
    us: &UnitState,
    image: &Image,
    ck: &mut Checker<'_>,
) -> Result<(), InspectError> {
    let file_record = match ck.record_file() {
        Some(b) => Some(record_from_bytes(b).map_err(InspectError::Usage)?),
        None => None,
    };
    let record = match (file_record, ck.handover()) {
        (Some(r), _) => Some(r),
        (None, Some(h)) => {
            let client = vtd::record::client_name(us.unit.base);
            let supported = Supported {
                family: FAMILY,
                oldest: 1,
                newest: VERSION,
            };
            match read_client_record(image, h, &client, &supported) {
                Ok(rec) => match Record::decode(&rec.payload) {
                    Ok(r) => Some(r),
                    Err(m) => {
                        ck.add(
                            "record",
                            h.client(&client),
                            format!(
                                "record of client {client:?}: payload offset {:#x}: {}",
                                m.offset, m.what
                            ),
                        );
                        None
                    }
                },
                Err(e) => {
                    ck.add("record", h.client(&client), e.to_string());
                    None
                }
            }
        }
        (None, None) => None,
    };
    check_unit(image, us, record.as_ref(), ck);
    Ok(())
}

fn check_unit(image: &Image, us: &UnitState, record: Option<&Record>, cx: &mut Checker<'_>) {
    let u = &us.unit;
    let scan = &us.scan;
    if let Some(why) = &scan.skipped {
        cx.add(
            "bad-entry",
            Some(PhysAddr(u.rtaddr())),
            format!("structures not scanned: {why}"),
        );
    }
    for p in &scan.problems {
        cx.add(
            "bad-entry",
            Some(p.addr),
            match p.fault {
                Some(f) => format!("{} (fault {:#04x})", p.what, f.code()),
                None => p.what.clone(),
            },
        );
    }
    for c in scan.contexts.iter() {
        if let Translation::Blocked(b) = &c.translation {
            cx.add(
                "bad-entry",
                Some(c.pasid_entry.map_or(c.context_entry.0, |p| p.0)),
                format!("{}: {} (fault {:#04x})", c.label(), b.why, b.reason.code()),
            );
        }
    }
    let mut struct_pages = 0u64;
    // Every page the unit's structures and tables reach (for the record's runs).
    let mut reached = PageSet::new();
    for sp in &scan.pages {
        for page in pages_of(sp.addr, sp.bytes) {
            struct_pages += 1;
            let _ = reached.insert(page, 0);
            let owner = format!("{} of {} ({})", sp.kind, sp.owner, cx.unit());
            cx.check_page(page, owner, record.map(|r| r.holds_page(page)));
        }
    }
    // Page tables: each distinct table once, named by its first users (a table shared by
    // every PASID of many devices would otherwise be named by millions of labels).
    let mut tables: BTreeMap<(u64, bool, u8), NamedTable> = BTreeMap::new();
    for c in scan.contexts.iter() {
        if let Translation::Tables(pt) = &c.translation {
            let t = tables
                .entry((pt.root.0, pt.stage == Stage::First, pt.levels))
                .or_insert_with(|| (*pt, Vec::new(), 0));
            t.2 += 1;
            if t.1.len() < MAX_USERS_NAMED {
                t.1.push(c.label());
            }
        }
    }
    let mut pt_pages = 0u64;
    for (pt, users, n) in tables.values() {
        let w = walk_table(u, image, pt);
        let more = match n - users.len() {
            0 => String::new(),
            m => format!(" and {m} more"),
        };
        let who = format!(
            "{} {}-level table at {} (used by {}{more})",
            pt.stage.name(),
            pt.levels,
            pt.root,
            users.join(", ")
        );
        if let Some(f) = &w.fatal {
            cx.add("bad-entry", Some(pt.root), format!("{who}: {f}"));
        }
        for p in &w.problems {
            let kind = match p.kind {
                iommu_core::pgtable::WalkErrorKind::Alias { .. }
                | iommu_core::pgtable::WalkErrorKind::Cycle { .. } => "reachable-twice",
                _ => "bad-entry",
            };
            cx.add(kind, Some(p.table), format!("{who}: {p}"));
        }
        for t in &w.tables {
            for page in pages_of(t.addr, t.bytes) {
                pt_pages += 1;
                let _ = reached.insert(page, 0);
                let owner = format!(
                    "level {} page table of {} table {} ({})",
                    t.level,
                    pt.stage.name(),
                    pt.root,
                    cx.unit()
                );
                cx.check_page(page, owner, record.map(|r| r.holds_page(page)));
            }
        }
    }
    cx.checked(struct_pages, pt_pages);
    check_unit_state(u, cx);
    if let Some(r) = record {
        check_record(us, r, cx);
        let preserved = cx.preserved();
        check_adoptable(u, r, preserved, cx);
        check_runs_are_tables(image, u, r, &tables, &mut reached, cx);
    }
}

/// What `adopt` refuses about the unit itself, record or not (`vtd::driver::Unit::probe`
/// and the unit check of `vtd::handover::adopt`): translation disabled (GSTS.TES), a
/// mode other than legacy or scalable, scalable mode without ECAP.SMTS, a second- or
/// first-stage table type (ECAP.SLTS/FLTS) or queued invalidation (ECAP.QI), and no
/// queued invalidation on a VER 6+ unit (register-based invalidation is gone there).
/// A root pointer that was never latched (GSTS.RTPS clear) is reported too: RTADDR
/// then is not the table the hardware uses.
fn check_unit_state(u: &crate::vtd::Unit, cx: &mut Checker<'_>) {
    use vtd::hw::regs::{Ttm, ECAP, VER};
    let refuse = |cx: &mut Checker<'_>, what: String| cx.add("adopt-refuses", None, what);
    let gsts = u.gsts();
    if !u.enabled() {
        refuse(
            cx,
            format!("GSTS {gsts:#010x}: translation is disabled (TES clear); adopt takes over a translating unit only"),
        );
    }
    if !u.root_latched() {
        cx.add(
            "unit-state",
            Some(u.root_table()),
            format!(
                "GSTS {gsts:#010x}: no root table pointer latched (RTPS clear); RTADDR {:#x} \
                 is not the table the hardware uses",
                u.rtaddr()
            ),
        );
    }
    let ecap = u.ecap();
    match u.mode() {
        Ttm::Legacy => {}
        Ttm::Scalable => {
            for (ok, why) in [
                (ECAP::SMTS.is_set(ecap), "scalable mode needs ECAP.SMTS"),
                (
                    ECAP::SLTS.is_set(ecap) || ECAP::FLTS.is_set(ecap),
                    "scalable mode needs ECAP.SLTS or ECAP.FLTS",
                ),
                (
                    ECAP::QI.is_set(ecap),
                    "scalable mode needs queued invalidation (ECAP.QI)",
                ),
            ] {
                if !ok {
                    refuse(cx, format!("ECAP {ecap:#x}: {why}"));
                }
            }
        }
        m => refuse(
            cx,
            format!(
                "RTADDR.TTM is {}: adopt takes over legacy or scalable mode only",
                crate::vtd::mode_name(m)
            ),
        ),
    }
    if let Some(ver) = u.reg(vtd::hw::regs::VER) {
        let major = VER::MAX.read(ver as u32);
        if major >= 6 && !ECAP::QI.is_set(ecap) {
            refuse(
                cx,
                format!(
                    "VER {ver:#x}: a version {major} unit without queued invalidation \
                     (ECAP.QI) cannot be invalidated"
                ),
            );
        }
    }
}

/// What `adopt` refuses about a record, mirrored (`vtd::handover::adopt`): a host
/// address width no unit can have, domain IDs beyond CAP.ND, domain 0 with caching mode, a domain ID
/// twice, a table format the unit cannot walk, a first-stage domain on a legacy unit, a
/// domain root that is unaligned, not preserved or outside the record's runs (a device
/// bound to a domain the record does not hold is refused by the record decoder); and every page run of the record must lie
/// in the preserved set (a record whose runs claim unpreserved pages would have them
/// freed by `finish`). Checking a run costs at most the preserved pages it holds plus
/// one: the runs are disjoint, so the whole check is bounded by the preserved set.
fn check_adoptable(
    u: &crate::vtd::Unit,
    r: &Record,
    preserved: Option<&PageSet>,
    cx: &mut Checker<'_>,
) {
    use vtd::format::{FirstStage, SecondStage};
    let refuse = |cx: &mut Checker<'_>, addr: Option<PhysAddr>, what: String| {
        cx.add("adopt-refuses", addr, what)
    };
    // adopt compares the record's width with the new kernel's (configured, or MGAW + 1,
    // clamped to 12..=64): which that is the image does not say, but one outside
    // 12..=64 never matches.
    if !(12..=64).contains(&r.haw) {
        refuse(
            cx,
            None,
            format!(
                "record host address width {} bits: no unit's width (12 to 64 bits) matches",
                r.haw
            ),
        );
    }
    let cm = vtd::hw::regs::CAP::CM.is_set(u.cap());
    let mut seen = std::collections::BTreeSet::new();
    for d in &r.domains {
        let did = d.id.0;
        let mut why: Vec<String> = Vec::new();
        if did as u32 >= u.domains() {
            why.push(format!("beyond the unit's CAP.ND ({} IDs)", u.domains()));
        }
        if did == 0 && cm {
            why.push("domain ID 0 is reserved with caching mode (CAP.CM)".into());
        }
        if !seen.insert(did) {
            why.push("recorded twice".into());
        }
        let format = match d.kind {
            DomainKind::SecondStage => {
                SecondStage::for_unit(d.levels, u.cap(), u.ecap(), u.haw).map(|_| ())
            }
            DomainKind::FirstStage => FirstStage::for_unit(d.levels, u.cap(), u.haw).map(|_| ()),
        };
        if let Err(e) = format {
            why.push(format!("{:?} {}-level tables: {e}", d.kind, d.levels));
        }
        if d.kind == DomainKind::FirstStage && r.mode == Mode::Legacy {
            why.push("first-stage domain on a legacy-mode unit".into());
        }
        if d.root.0 % 4096 != 0 {
            why.push(format!("root {} is not 4 KiB aligned", d.root));
        } else {
            if preserved.is_some_and(|set| !set.contains(d.root)) {
                why.push(format!("root table {} is not preserved", d.root));
            }
            if !r.holds_page(d.root) {
                why.push(format!(
                    "root table {} is not in the record's page runs",
                    d.root
                ));
            }
        }
        for w in why {
            refuse(cx, Some(d.root), format!("record domain {did:#06x}: {w}"));
        }
    }
    if let Some(set) = preserved {
        let count = set.page_count();
        for &(first, pages) in &r.pages {
            if let Some(miss) = first_unpreserved(set, count, first, pages) {
                cx.add(
                    "run-not-preserved",
                    Some(miss),
                    format!(
                        "record page run {first}+{pages} pages: page {miss} is not in the \
                         preserved set ({count} pages); finish would free it"
                    ),
                );
            }
        }
    }
}

/// What `adopt` keeps and `finish` never frees, mirrored (`vtd::handover::adopt`,
/// `RecordPagesNotTables`): pages of the record's runs that are not structures or
/// tables of the unit. Reached here: the structure pages and the live page tables (see
/// [`check_unit`]), and the tables of the record's domains no entry uses (walked as the
/// record describes them). Each run costs at most the reached pages it holds plus one
/// lookup, and one range insert: bounded by the unit's tables, not by the run's claim.
fn check_runs_are_tables(
    image: &Image,
    u: &crate::vtd::Unit,
    r: &Record,
    tables: &BTreeMap<(u64, bool, u8), NamedTable>,
    reached: &mut PageSet,
    cx: &mut Checker<'_>,
) {
    for d in &r.domains {
        let first = d.kind == DomainKind::FirstStage;
        if tables.contains_key(&(d.root.0, first, d.levels)) {
            continue;
        }
        let pt = PageTable {
            stage: if first { Stage::First } else { Stage::Second },
            root: d.root,
            levels: d.levels,
            exec: false,
            width: u.mgaw(),
        };
        for t in walk_table(u, image, &pt).tables {
            for page in pages_of(t.addr, t.bytes) {
                let _ = reached.insert(page, 0);
            }
        }
    }
    let count = reached.page_count();
    for &(start, pages) in &r.pages {
        let Some(page) = first_unpreserved(reached, count, start, pages) else {
            continue;
        };
        let mut run = PageSet::new();
        let known = match run.insert_range(start, pages) {
            Ok(()) => run.intersection(reached).page_count(),
            Err(_) => 0,
        };
        cx.add(
            "run-not-table",
            Some(page),
            format!(
                "record page run {start}+{pages} pages claims {} page(s) that are not \
                 structures or tables of the unit, first {page}: adopt keeps them, finish \
                 never frees them",
                pages - known
            ),
        );
    }
}

/// The first page of the run `first`+`pages` outside `set` (of `count` pages), in at most
/// `count + 1` lookups: at most `count` pages of the run can be in the set. The record
/// decoder refuses runs that wrap the address space.
fn first_unpreserved(set: &PageSet, count: u64, first: PhysAddr, pages: u64) -> Option<PhysAddr> {
    (0..pages.min(count.saturating_add(1)))
        .map_while(|i| i.checked_mul(4096).and_then(|o| first.0.checked_add(o)))
        .map(PhysAddr)
        .find(|&p| !set.contains(p))
}

fn check_record(us: &UnitState, r: &Record, cx: &mut Checker<'_>) {
    let u = &us.unit;
    let mismatch = |cx: &mut Checker<'_>, what: String| cx.add("record-mismatch", None, what);
    if u.base_known && r.mmio_base != u.base {
        mismatch(
            cx,
            format!("record is for the unit at {}, not {}", r.mmio_base, u.base),
        );
    }
    if r.rtaddr != u.rtaddr() {
        mismatch(
            cx,
            format!("record RTADDR {:#x}, register {:#x}", r.rtaddr, u.rtaddr()),
        );
    }
    if !u.assumed && (r.cap != u.cap() || r.ecap != u.ecap()) {
        mismatch(
            cx,
            format!(
                "record CAP/ECAP {:#x}/{:#x}, registers {:#x}/{:#x}",
                r.cap,
                r.ecap,
                u.cap(),
                u.ecap()
            ),
        );
    }
    let mode_ok = matches!(
        (r.mode, us.scan.mode),
        (Mode::Legacy, vtd::hw::regs::Ttm::Legacy) | (Mode::Scalable, vtd::hw::regs::Ttm::Scalable)
    );
    if !mode_ok {
        mismatch(
            cx,
            format!(
                "record mode {:?}, RTADDR.TTM says {}",
                r.mode,
                crate::vtd::mode_name(us.scan.mode)
            ),
        );
    }
    for d in &r.devices {
        let c = us.scan.contexts.iter().find(|c| {
            c.rid == d.rid
                && match d.pasid {
                    None => c.pasid.is_none(),
                    Some(p) => c.pasid == Some(p.0),
                }
        });
        let label = match d.pasid {
            Some(p) => format!("{} pasid {:#x}", d.rid, p.0),
            None => d.rid.to_string(),
        };
        let Some(c) = c else {
            mismatch(
                cx,
                format!("recorded device {label} has no present entry in the tables"),
            );
            continue;
        };
        if c.did != Some(d.domain.0) {
            mismatch(
                cx,
                format!(
                    "device {label}: record says domain {:#06x}, the tables say {}",
                    d.domain.0,
                    c.did.map_or("none".into(), |x| format!("{x:#06x}"))
                ),
            );
        }
        let Ok(i) = r.domains.binary_search_by_key(&d.domain, |x| x.id) else {
            continue;
        };
        let rd = r.domains[i];
        match &c.translation {
            Translation::Tables(pt) => {
                let kind_ok = matches!(
                    (rd.kind, pt.stage),
                    (DomainKind::SecondStage, Stage::Second)
                        | (DomainKind::FirstStage, Stage::First)
                );
                if pt.root != rd.root || pt.levels != rd.levels || !kind_ok {
                    mismatch(
                        cx,
                        format!(
                            "device {label}: record domain {:#06x} is a {:?} {}-level table at {}, \
                             the tables say {} {}-level at {}",
                            rd.id.0,
                            rd.kind,
                            rd.levels,
                            rd.root,
                            pt.stage.name(),
                            pt.levels,
                            pt.root
                        ),
                    );
                }
            }
            other => mismatch(
                cx,
                format!(
                    "device {label}: record domain {:#06x} has a table at {}, the tables say {}",
                    rd.id.0,
                    rd.root,
                    other.name()
                ),
            ),
        }
    }
    for c in us.scan.contexts.iter() {
        if c.pasid.is_some() && !c.rid_pasid {
            continue;
        }
        let recorded = r.devices.iter().any(|d| {
            d.rid == c.rid
                && match d.pasid {
                    None => c.pasid.is_none(),
                    Some(p) => c.pasid == Some(p.0),
                }
        });
        if !recorded {
            mismatch(
                cx,
                format!(
                    "device {} has a present entry but is not in the record",
                    c.label()
                ),
            );
        }
    }
}
