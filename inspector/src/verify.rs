//! `verify`: an image's handover state checked against its tables.
//!
//! The KHO blob is given by address (`--kho-blob`), or found by scanning pages for the
//! FDT magic and keeping the blobs whose root is compatible with `kho-v2`: the pages of
//! a range the user names (`--kho-scan`), or the whole image when it holds at most
//! [`DEFAULT_SCAN_LIMIT`] bytes of memory (never an unbounded scan by default); its
//! preserved-memory map gives the pages that survive a kexec, and its client
//! `iommu-vtd-<base>` the VT-d handover record of each unit (decoded with
//! `vtd::record`). A record may also come from a file.
//!
//! Checked, for every unit: every structure page (root table, context tables, PASID
//! directories and tables) and every page-table page reachable from the live root is in
//! the preserved set (and in the record's page runs); no page is reachable twice; no
//! entry has reserved bits set (or is otherwise malformed); the record's registers,
//! domain IDs, roots and devices match what the tables say. Every problem is listed.

use crate::error::InspectError;
use crate::image::Image;
use crate::json::Json;
use crate::model::{walk_table, Loaded, UnitState};
use crate::progress::Progress;
use crate::vtd::scan::Translation;
use crate::vtd::{PageTable, Stage};
use iommu_core::kho::fdt::FDT_MAGIC;
use iommu_core::kho::record::{decode_record, Supported, RECORD_MAGIC};
use iommu_core::kho::{read_client_record, read_handover, read_preserved, Handover};
use iommu_core::pageset::PageSet;
use iommu_core::PhysAddr;
use std::collections::BTreeMap;
use std::io::{self, Write};
use vtd::record::{DomainKind, Mode};
use vtd::record::{Record, FAMILY, VERSION};

/// Schema name of the JSON verify report.
pub const VERIFY_SCHEMA: &str = "iommu-inspect/verify/v1";

/// Where the handover state comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// `--kho-blob ADDR`: the blob's address (otherwise the image is scanned).
    pub blob: Option<u64>,
    /// `--record FILE`: the record's bytes (a KHO client record, or a bare payload).
    pub record: Option<Vec<u8>>,
    /// `--kho-scan FIRST-LAST`: scan only these physical addresses (inclusive) for the
    /// blob. Without it (and without `blob`), the image is scanned only if it holds at
    /// most [`DEFAULT_SCAN_LIMIT`] bytes of memory.
    pub scan: Option<(u64, u64)>,
}

/// A page table, its first users' labels and its number of users.
type NamedTable = (PageTable, Vec<String>, usize);

/// Most users named in a problem of a shared page table (the rest are counted).
const MAX_USERS_NAMED: usize = 16;

/// Most bytes of memory `verify` scans for the KHO blob unless told where to look
/// (`--kho-blob`, `--kho-scan`): 1 GiB, about a second of reading.
pub const DEFAULT_SCAN_LIMIT: u64 = 1 << 30;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Unit name (empty for image-wide findings).
    pub unit: String,
    /// Kind: `not-preserved`, `not-in-record`, `reachable-twice`, `bad-entry`,
    /// `record-mismatch`, `record`, `adopt-refuses` (a state or record `adopt` refuses),
    /// `run-not-preserved` (a record page run outside the preserved set), `unit-state`
    /// (the root pointer not latched).
    pub kind: &'static str,
    /// Address concerned.
    pub addr: Option<PhysAddr>,
    /// What is wrong.
    pub what: String,
}

/// The result of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The KHO blob used.
    pub blob: Option<PhysAddr>,
    /// Pages in the preserved set.
    pub preserved_pages: Option<u64>,
    /// Notes about what could not be checked.
    pub notes: Vec<String>,
    /// Pages checked per unit: `(unit, structure pages, page-table pages)`.
    pub checked: Vec<(String, u64, u64)>,
    /// Problems.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether no problem was found.
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Finds KHO blobs: page-aligned FDT headers whose root is compatible with `kho-v2`,
/// among the physical addresses `range` (inclusive) holds.
pub fn find_blobs(img: &Image, range: (u64, u64), progress: &mut Progress) -> Vec<Handover> {
    let magic = FDT_MAGIC.to_be_bytes();
    let mut found = Vec::new();
    let bytes = img.bytes();
    let mut done = 0u64;
    for s in img.segments() {
        let seg_last = s.paddr + (s.size - 1);
        if seg_last < range.0 || s.paddr > range.1 {
            continue;
        }
        let Some(first) = s.paddr.max(range.0).checked_next_multiple_of(4096) else {
            continue;
        };
        let last = seg_last.min(range.1);
        let mut pa = first;
        while pa.checked_add(3).is_some_and(|e| e <= last) {
            let off = (s.offset + (pa - s.paddr)) as usize;
            if bytes[off..off + 4] == magic {
                if let Ok(h) = read_handover(img, PhysAddr(pa)) {
                    found.push(h);
                }
            }
            let Some(next) = pa.checked_add(4096) else {
                break;
            };
            pa = next;
            done += 4096;
            if done % (1 << 28) == 0 {
                progress.set(done);
            }
        }
    }
    progress.finish();
    found
}

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

struct Ctx<'a> {
    r: &'a mut Report,
    unit: String,
}

impl Ctx<'_> {
    fn add(&mut self, kind: &'static str, addr: Option<PhysAddr>, what: String) {
        self.r.findings.push(Finding {
            unit: self.unit.clone(),
            kind,
            addr,
            what,
        });
    }
}

fn pages_of(addr: PhysAddr, bytes: u64) -> impl Iterator<Item = PhysAddr> {
    let first = addr.0 & !0xfff;
    let last = addr.0.saturating_add(bytes.max(1) - 1) & !0xfff;
    (0..=(last - first) / 4096).map(move |i| PhysAddr(first + i * 4096))
}

/// Verifies `l`.
pub fn verify(
    l: &Loaded,
    opts: &VerifyOptions,
    progress: &mut Progress,
) -> Result<Report, InspectError> {
    let mut report = Report::default();
    let img = &l.image;
    let handover = match opts.blob {
        Some(b) => Some(
            read_handover(img, PhysAddr(b)).map_err(|err| InspectError::Kho {
                what: format!("KHO blob at {b:#x}"),
                err,
            })?,
        ),
        None => {
            let range = match opts.scan {
                Some(r) => Some(r),
                None if img.memory_bytes() <= DEFAULT_SCAN_LIMIT => Some((0, u64::MAX)),
                None if opts.record.is_some() => None,
                None => {
                    return Err(InspectError::KhoBlob(format!(
                        "the image holds {:#x} bytes of memory, more than verify scans for the \
                         KHO blob unless told where ({DEFAULT_SCAN_LIMIT:#x}): give the blob's \
                         address with --kho-blob ADDR (the kexec'd kernel's KHO FDT address), \
                         or a range to scan with --kho-scan START-END or START+SIZE",
                        img.memory_bytes()
                    )))
                }
            };
            let mut blobs = match range {
                Some(range) => find_blobs(img, range, progress),
                None => {
                    report.notes.push(format!(
                        "the image holds more than {DEFAULT_SCAN_LIMIT:#x} bytes of memory: not \
                         scanned for the KHO blob (give --kho-blob ADDR or --kho-scan RANGE)"
                    ));
                    Vec::new()
                }
            };
            match blobs.len() {
                0 if opts.scan.is_some() && opts.record.is_none() => {
                    return Err(InspectError::KhoBlob(format!(
                        "no KHO blob (FDT compatible \"kho-v2\") at a page in \
                         {:#x}-{:#x}; give --kho-blob ADDR, another --kho-scan range or \
                         --record FILE",
                        range.map_or(0, |r| r.0),
                        range.map_or(0, |r| r.1)
                    )))
                }
                0 => None,
                1 => blobs.pop(),
                _ => {
                    let at: Vec<String> = blobs.iter().map(|h| h.blob.to_string()).collect();
                    return Err(InspectError::KhoBlob(format!(
                        "{} KHO blobs found (at {}); choose one with --kho-blob ADDR",
                        blobs.len(),
                        at.join(", ")
                    )));
                }
            }
        }
    };
    let preserved: Option<PageSet> = match &handover {
        Some(h) => {
            report.blob = Some(h.blob);
            let set = read_preserved(img, h.blob).map_err(|err| InspectError::Kho {
                what: format!("preserved-memory map of the KHO blob at {}", h.blob),
                err,
            })?;
            report.preserved_pages = Some(set.page_count());
            Some(set)
        }
        None => {
            if opts.record.is_none() {
                return Err(InspectError::KhoBlob(
                    "no KHO blob (FDT compatible \"kho-v2\") found in the image; give \
                     --kho-blob ADDR or --record FILE"
                        .into(),
                ));
            }
            report.notes.push(
                "no KHO blob in the image: the preserved set is not checked, only the record"
                    .into(),
            );
            None
        }
    };
    let file_record = match &opts.record {
        Some(b) => Some(record_from_bytes(b).map_err(InspectError::Usage)?),
        None => None,
    };
    // Owner of every page reached, across units: page -> description.
    let mut owners: BTreeMap<u64, String> = BTreeMap::new();
    for us in l.vtd_units() {
        let name = us.unit.name.clone();
        let record = match (&file_record, &handover) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(h)) => {
                let client = vtd::record::client_name(us.unit.base);
                let supported = Supported {
                    family: FAMILY,
                    oldest: 1,
                    newest: VERSION,
                };
                match read_client_record(img, h, &client, &supported) {
                    Ok(rec) => match Record::decode(&rec.payload) {
                        Ok(r) => Some(r),
                        Err(m) => {
                            report.findings.push(Finding {
                                unit: name.clone(),
                                kind: "record",
                                addr: h.client(&client),
                                what: format!(
                                    "record of client {client:?}: payload offset {:#x}: {}",
                                    m.offset, m.what
                                ),
                            });
                            None
                        }
                    },
                    Err(e) => {
                        report.findings.push(Finding {
                            unit: name.clone(),
                            kind: "record",
                            addr: h.client(&client),
                            what: e.to_string(),
                        });
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let mut cx = Ctx {
            r: &mut report,
            unit: name.clone(),
        };
        verify_unit(
            l,
            us,
            preserved.as_ref(),
            record.as_ref(),
            &mut owners,
            &mut cx,
        );
    }
    Ok(report)
}

fn verify_unit(
    l: &Loaded,
    us: &UnitState,
    preserved: Option<&PageSet>,
    record: Option<&Record>,
    owners: &mut BTreeMap<u64, String>,
    cx: &mut Ctx<'_>,
) {
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
    let mut check_page = |cx: &mut Ctx<'_>, page: PhysAddr, owner: String, in_record: bool| {
        if let Some(set) = preserved {
            if !set.contains(page) {
                cx.add(
                    "not-preserved",
                    Some(page),
                    format!("{owner}: page {page} is not in the KHO preserved set"),
                );
            }
        }
        if let Some(r) = record {
            if in_record && !r.holds_page(page) {
                cx.add(
                    "not-in-record",
                    Some(page),
                    format!("{owner}: page {page} is not in the record's page runs"),
                );
            }
        }
        if let Some(first) = owners.get(&page.0) {
            if *first != owner {
                cx.add(
                    "reachable-twice",
                    Some(page),
                    format!("page {page} is reached as {owner} and as {first}"),
                );
            }
        } else {
            owners.insert(page.0, owner);
        }
    };
    let mut struct_pages = 0u64;
    for sp in &scan.pages {
        for page in pages_of(sp.addr, sp.bytes) {
            struct_pages += 1;
            check_page(
                cx,
                page,
                format!("{} of {} ({})", sp.kind, sp.owner, cx.unit),
                true,
            );
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
        let w = walk_table(u, &l.image, pt);
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
                check_page(
                    cx,
                    page,
                    format!(
                        "level {} page table of {} table {} ({})",
                        t.level,
                        pt.stage.name(),
                        pt.root,
                        cx.unit
                    ),
                    true,
                );
            }
        }
    }
    cx.r.checked.push((cx.unit.clone(), struct_pages, pt_pages));
    check_unit_state(u, cx);
    if let Some(r) = record {
        check_record(us, r, cx);
        check_adoptable(u, r, preserved, cx);
    }
}

/// What `adopt` refuses about the unit itself, record or not (`vtd::driver::Unit::probe`
/// and the unit check of `vtd::handover::adopt`): translation disabled (GSTS.TES), a
/// mode other than legacy or scalable, scalable mode without ECAP.SMTS, a second- or
/// first-stage table type (ECAP.SLTS/FLTS) or queued invalidation (ECAP.QI), and no
/// queued invalidation on a VER 6+ unit (register-based invalidation is gone there).
/// A root pointer that was never latched (GSTS.RTPS clear) is reported too: RTADDR
/// then is not the table the hardware uses.
fn check_unit_state(u: &crate::vtd::Unit, cx: &mut Ctx<'_>) {
    use vtd::hw::regs::{Ttm, ECAP, VER};
    let refuse = |cx: &mut Ctx<'_>, what: String| cx.add("adopt-refuses", None, what);
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
    cx: &mut Ctx<'_>,
) {
    use vtd::format::{FirstStage, SecondStage};
    let refuse = |cx: &mut Ctx<'_>, addr: Option<PhysAddr>, what: String| {
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

/// The first page of the run `first`+`pages` outside `set` (of `count` pages), in at most
/// `count + 1` lookups: at most `count` pages of the run can be in the set. The record
/// decoder refuses runs that wrap the address space.
fn first_unpreserved(set: &PageSet, count: u64, first: PhysAddr, pages: u64) -> Option<PhysAddr> {
    (0..pages.min(count.saturating_add(1)))
        .map_while(|i| i.checked_mul(4096).and_then(|o| first.0.checked_add(o)))
        .map(PhysAddr)
        .find(|&p| !set.contains(p))
}

fn check_record(us: &UnitState, r: &Record, cx: &mut Ctx<'_>) {
    let u = &us.unit;
    let mismatch = |cx: &mut Ctx<'_>, what: String| cx.add("record-mismatch", None, what);
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

/// Writes the report as text.
pub fn write_text(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    match r.blob {
        Some(b) => writeln!(
            out,
            "KHO blob at {b}: {} preserved pages",
            r.preserved_pages.unwrap_or(0)
        )?,
        None => writeln!(out, "no KHO blob")?,
    }
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    for (u, s, p) in &r.checked {
        writeln!(
            out,
            "unit {u}: {s} structure pages, {p} page-table pages checked"
        )?;
    }
    for f in &r.findings {
        let unit = if f.unit.is_empty() {
            String::new()
        } else {
            format!("{}: ", f.unit)
        };
        writeln!(out, "!! {unit}[{}] {}", f.kind, f.what)?;
    }
    if r.clean() {
        writeln!(out, "ok: no problem found")?;
    } else {
        writeln!(
            out,
            "{} problem{} found",
            r.findings.len(),
            if r.findings.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

/// Writes the report as JSON (schema [`VERIFY_SCHEMA`]).
pub fn write_json(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let mut j = Json::new(out);
    j.begin_object(false)?;
    j.kv_str("schema", VERIFY_SCHEMA)?;
    j.kv_bool("clean", r.clean())?;
    j.key("kho_blob")?;
    match r.blob {
        Some(b) => j.hex(b.0)?,
        None => j.null()?,
    }
    j.key("preserved_pages")?;
    match r.preserved_pages {
        Some(n) => j.uint(n)?,
        None => j.null()?,
    }
    j.key("notes")?;
    j.begin_array(false)?;
    for n in &r.notes {
        j.string(n)?;
    }
    j.end_array()?;
    j.key("checked")?;
    j.begin_array(false)?;
    for (u, s, p) in &r.checked {
        j.begin_object(true)?;
        j.kv_str("unit", u)?;
        j.kv_uint("structure_pages", *s)?;
        j.kv_uint("page_table_pages", *p)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.key("problems")?;
    j.begin_array(false)?;
    for f in &r.findings {
        j.begin_object(true)?;
        j.kv_str("unit", &f.unit)?;
        j.kv_str("kind", f.kind)?;
        j.key("addr")?;
        match f.addr {
            Some(a) => j.hex(a.0)?,
            None => j.null()?,
        }
        j.kv_str("what", &f.what)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()
}
