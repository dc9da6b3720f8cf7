//! AMD-Vi's part of `verify`: the unit's handover record (KHO client
//! `iommu-amdvi-<base>`, decoded with `amdvi::record`, or a record file), its structure
//! and page-table pages checked through the common [`Checker`], and the record checks
//! that mirror what `amdvi::handover::adopt` refuses: the registers against the record
//! header, each recorded DTE bit for bit, the domains' roots and DomainIDs, every record
//! page run preserved and a table of the unit, and every leaf target preserved (what
//! the handover's `verify` checks).

use super::{AmdViState, Handling};
use crate::error::InspectError;
use crate::image::Image;
use crate::verify::{pages_of, Checker};
use amdvi::hw::dte::DeviceTableEntry;
use amdvi::hw::regs::{self, field_mask, CONTROL, EXCL_LIMIT};
use amdvi::record::{DomainKind, Record, FAMILY, VERSION};
use iommu_core::kho::read_client_record;
use iommu_core::kho::record::{decode_record, Supported, RECORD_MAGIC};
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::PhysAddr;
use std::collections::{BTreeMap, BTreeSet};

const SUPPORTED: Supported<'static> = Supported {
    family: FAMILY,
    oldest: 1,
    newest: VERSION,
};

fn record_from_bytes(b: &[u8]) -> Result<Record, String> {
    let payload = if b.len() >= 8 && b[..8] == RECORD_MAGIC {
        decode_record(b, PhysAddr(0), &SUPPORTED)
            .map_err(|e| format!("record file: {e}"))?
            .payload
    } else {
        b.to_vec()
    };
    Record::decode(&payload).map_err(|m| format!("record {m}"))
}

/// Checks one AMD-Vi unit: reads its record (from `--record`, or its KHO client), then
/// its pages, entries, registers and record.
pub fn verify_unit(
    u: &AmdViState,
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
            let client = amdvi::record::client_name(u.base);
            match read_client_record(image, h, &client, &SUPPORTED) {
                Ok(rec) => match Record::decode(&rec.payload) {
                    Ok(r) => Some(r),
                    Err(m) => {
                        ck.add(
                            "record",
                            h.client(&client),
                            format!("record of client {client:?}: {m}"),
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
    check_unit(image, u, record.as_ref(), ck);
    Ok(())
}

fn check_unit(image: &Image, u: &AmdViState, record: Option<&Record>, cx: &mut Checker<'_>) {
    for p in &u.problems {
        cx.add(
            "bad-entry",
            Some(p.addr),
            format!("{}: {}", p.requester, p.what),
        );
    }
    let holds = |page| record.map(|r: &Record| r.holds_page(page));
    // Every page the unit's structures and tables reach (for the record's runs).
    let mut reached = PageSet::new();
    let mut struct_pages = 0u64;
    let devtab_bytes = u.devtab_entries() as u64 * regs::DTE_BYTES;
    for page in pages_of(u.devtab(), devtab_bytes) {
        struct_pages += 1;
        let _ = reached.insert(page, 0);
        cx.check_page(page, format!("device table ({})", u.name), holds(page));
    }
    // GCR3 tables: the root of every guest DTE and the pages holding its valid entries.
    let mut gcr3: BTreeMap<u64, u16> = BTreeMap::new();
    for e in &u.entries {
        if e.dte.valid() && e.dte.translation_valid() && e.dte.guest_valid() {
            gcr3.entry(u.addr(e.dte.gcr3_root()).0 & !0xfff)
                .or_insert(e.devid);
        }
        if let Some((at, _)) = e.gcr3 {
            gcr3.entry(at.0 & !0xfff).or_insert(e.devid);
        }
    }
    for (&page, devid) in &gcr3 {
        let page = PhysAddr(page);
        struct_pages += 1;
        let _ = reached.insert(page, 0);
        let owner = format!("GCR3 table of DeviceID {devid:#06x} ({})", u.name);
        cx.check_page(page, owner, holds(page));
    }
    // Interrupt-remapping tables of the recorded devices are pinned by the record too.
    if let Some(r) = record {
        for d in &r.devices {
            // 16-byte entries (reference amdvi.md, interrupt remapping); the decoder
            // holds the count to the DTE's 2^IntTabLen. One range insert, however long.
            if let Some((root, n)) = d.irt {
                let first = PhysAddr(root.0 & !0xfff);
                let pages = (root.0 - first.0).saturating_add(n.saturating_mul(16));
                let _ = reached.insert_range(first, pages.div_ceil(4096).max(1));
            }
        }
    }
    let mut pt_pages = 0u64;
    let mut leaves: Vec<(usize, iommu_core::pgtable::Mapping)> = Vec::new();
    for (t, tree) in u.trees.iter().enumerate() {
        let first = u.entries.iter().find(|e| e.tree == Some(t));
        let who = match first {
            Some(e) => match e.pasid {
                Some(p) => format!("DeviceID {:#06x} PASID {p:#x}", e.devid),
                None => format!("DeviceID {:#06x}", e.devid),
            },
            None => "no device".into(),
        };
        let name = format!(
            "{} {}-level table at {} (used by {who})",
            if tree.guest { "v2" } else { "v1" },
            tree.levels,
            tree.root
        );
        let w = crate::arch::ArchUnit::walk_tree(u, image, t, &mut |m| {
            if leaves.len() < MAX_LEAF_RUNS {
                leaves.push((t, *m));
            }
        });
        if let Some(f) = &w.fatal {
            cx.add("bad-entry", Some(tree.root), format!("{name}: {f}"));
        }
        for p in &w.problems {
            let kind = match p.kind {
                iommu_core::pgtable::WalkErrorKind::Alias { .. }
                | iommu_core::pgtable::WalkErrorKind::Cycle { .. } => "reachable-twice",
                _ => "bad-entry",
            };
            cx.add(kind, Some(p.table), format!("{name}: {p}"));
        }
        for tp in &w.tables {
            for page in pages_of(tp.addr, tp.bytes) {
                pt_pages += 1;
                let _ = reached.insert(page, 0);
                let owner = format!("level {} page table of {} ({})", tp.level, name, u.name);
                cx.check_page(page, owner, holds(page));
            }
        }
    }
    cx.checked(struct_pages, pt_pages);
    check_leaves(u, &leaves, cx);
    if !u.enabled() {
        cx.add(
            "adopt-refuses",
            None,
            format!(
                "Control {:#x}: IommuEn clear; adopt takes over a translating unit only",
                u.reg(regs::CONTROL)
            ),
        );
    }
    if let Some(r) = record {
        check_registers(u, r, cx);
        check_devices(image, u, r, cx);
        check_domains(r, cx);
        check_runs(r, &reached, cx);
    }
}

/// Most leaf runs whose targets are checked per unit (a hostile table cannot make the
/// check hold more).
const MAX_LEAF_RUNS: usize = 1 << 20;

/// Every leaf target of the unit's tables must be preserved memory (what the handover's
/// `verify` checks: a DMA target freed by the new kernel is corruption). Each run is
/// compared as aligned blocks (`PageSet` range operations), so the cost follows the
/// number of blocks, not the bytes a leaf maps.
fn check_leaves(
    u: &AmdViState,
    leaves: &[(usize, iommu_core::pgtable::Mapping)],
    cx: &mut Checker<'_>,
) {
    let Some(set) = cx.preserved() else {
        return;
    };
    for (t, m) in leaves {
        let first = PhysAddr(m.pa.0 & !0xfff);
        let pages = (m.pa.0 - first.0 + m.size).div_ceil(4096);
        let mut run = PageSet::new();
        let miss = match run.insert_range(first, pages) {
            Ok(()) if run.is_subset(set) => continue,
            Ok(()) => run.difference(set).iter().next().map_or(first, |b| b.0),
            Err(_) => first,
        };
        let tree = &u.trees[*t];
        let who = u
            .entries
            .iter()
            .find(|e| e.tree == Some(*t))
            .map_or(String::new(), |e| format!(" of DeviceID {:#06x}", e.devid));
        cx.add(
            "leaf-not-preserved",
            Some(miss),
            format!(
                "IOVA {:#x}+{:#x} -> {} in the table at {}{who}: target page {miss} is \
                 not in the KHO preserved set",
                m.iova.0, m.size, m.pa, tree.root
            ),
        );
    }
}

/// The registers against the record header (`adopt` refuses the unit on any difference).
fn check_registers(u: &AmdViState, r: &Record, cx: &mut Checker<'_>) {
    if !u.assumed && r.mmio_base != u.base {
        cx.add(
            "record-mismatch",
            None,
            format!("record is for the unit at {}, not {}", r.mmio_base, u.base),
        );
    }
    let have = |off: u64| u.regs.iter().find(|x| x.offset == off).map(|x| x.value);
    for (name, off, mask, rec) in [
        (
            "Device Table Base",
            regs::DEV_TAB_BASE,
            u64::MAX,
            r.dev_tab_base,
        ),
        ("Control", regs::CONTROL, u64::MAX, r.control),
        (
            "Exclusion Range Base",
            regs::EXCL_BASE,
            u64::MAX,
            r.excl_base,
        ),
        (
            "Exclusion Range Limit",
            regs::EXCL_LIMIT,
            field_mask(EXCL_LIMIT::LIMIT),
            r.excl_limit,
        ),
        ("Extended Feature", regs::EFR, u64::MAX, r.efr),
    ] {
        let Some(live) = have(off) else {
            cx.note(format!(
                "{}: the image has no {name} register ({off:#x}); not compared with the record",
                u.name
            ));
            continue;
        };
        if live & mask != rec {
            cx.add(
                "register-mismatch",
                None,
                format!(
                    "{name} register ({off:#06x}) reads {:#x}, the record says {rec:#x}; adopt \
                     refuses the unit",
                    live & mask
                ),
            );
        }
    }
    if CONTROL::IOMMU_EN.read(r.control) == 0 {
        cx.add(
            "adopt-refuses",
            None,
            format!("record Control {:#x}: IommuEn clear", r.control),
        );
    }
    for i in 0..r.dev_tab_pages() {
        let page = PhysAddr(r.dev_tab_addr().0 + i * 4096);
        if !r.holds_page(page) {
            cx.add(
                "adopt-refuses",
                Some(page),
                format!("device table page {page} is not in the record's page runs"),
            );
            break;
        }
    }
}

/// Each recorded DTE, bit for bit, against the live device table; its domain's kind,
/// root and DomainID; and every translating DTE the record does not hold.
fn check_devices(image: &Image, u: &AmdViState, r: &Record, cx: &mut Checker<'_>) {
    let mut recorded = BTreeSet::new();
    for d in &r.devices {
        let id = d.device_id;
        recorded.insert(id);
        let at = PhysAddr(u.devtab().0 + id as u64 * regs::DTE_BYTES);
        if id as u32 >= u.devtab_entries() {
            cx.add(
                "dte-mismatch",
                Some(at),
                format!(
                    "DeviceID {id:#06x}: beyond the device table ({} DTEs)",
                    u.devtab_entries()
                ),
            );
            continue;
        }
        let mut b = [0u8; 32];
        if let Err(err) = image.read(at, &mut b) {
            cx.add(
                "dte-mismatch",
                Some(at),
                format!("DeviceID {id:#06x}: the DTE at {at} is not readable: {err}"),
            );
            continue;
        }
        let q: [u64; 4] = std::array::from_fn(|i| {
            u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]))
        });
        let dte = DeviceTableEntry::from_qwords(q);
        for (i, (&live, &rec)) in q.iter().zip(&d.dte).enumerate() {
            if live != rec {
                cx.add(
                    "dte-mismatch",
                    Some(PhysAddr(at.0 + 8 * i as u64)),
                    format!(
                        "DeviceID {id:#06x}: DTE qword {i} at {:#x} is {:#018x}, the record says \
                         {:#018x} (bits {:#x} differ)",
                        at.0 + 8 * i as u64,
                        live,
                        rec,
                        live ^ rec
                    ),
                );
            }
        }
        let Some(dom) = r.domain(d.domain) else {
            continue;
        };
        let ok = dte.valid()
            && dte.translation_valid()
            && !dte.exclusion()
            && match dom.kind {
                DomainKind::V1 { levels } => {
                    !dte.guest_valid()
                        && dte.mode() == amdvi::hw::dte::Mode::Levels(levels)
                        && u.addr(dte.page_table_root()) == dom.root
                }
                DomainKind::V2 { glx, .. } => {
                    dte.guest_valid()
                        && dte.giov()
                        && dte.glx() == glx
                        && u.addr(dte.gcr3_root()) == dom.root
                }
            };
        if !ok {
            cx.add(
                "adopt-refuses",
                Some(at),
                format!(
                    "DeviceID {id:#06x}: DTE {:#018x} does not translate through record \
                     domain {:#06x} ({:?} at {}); adopt blocks the device",
                    q[0], dom.id.0, dom.kind, dom.root
                ),
            );
        }
    }
    check_domain_ids(u, cx);
    let mut named = BTreeSet::new();
    for e in &u.entries {
        if matches!(e.handling, Handling::V1(_) | Handling::V2(_))
            && !recorded.contains(&e.devid)
            && named.insert(e.devid)
        {
            cx.add(
                "record-mismatch",
                Some(e.addr),
                format!(
                    "DeviceID {:#06x}: its DTE at {} translates but the record does not hold it; \
                     adopt blocks it",
                    e.devid, e.addr
                ),
            );
        }
    }
}

/// DomainIDs tag the IOTLB: two translating DTEs with one DomainID but different
/// tables would share cached translations (reference amdvi.md §7.1, DomainID).
fn check_domain_ids(u: &AmdViState, cx: &mut Checker<'_>) {
    let mut first: BTreeMap<u16, (u16, usize)> = BTreeMap::new();
    let mut named = BTreeSet::new();
    for e in &u.entries {
        let Some(t) = e.tree else {
            continue;
        };
        let did = e.dte.domain_id();
        match first.get(&did) {
            None => {
                first.insert(did, (e.devid, t));
            }
            Some(&(other, ot)) if ot != t && u.trees[ot].root != u.trees[t].root => {
                if named.insert(e.devid) {
                    cx.add(
                        "domain-id-shared",
                        Some(e.addr),
                        format!(
                            "DeviceID {:#06x}: DomainID {did:#06x} of its DTE at {} is also                              DeviceID {other:#06x}'s, whose table is {} (this one's is {});                              they would share IOTLB entries",
                            e.devid, e.addr, u.trees[ot].root, u.trees[t].root
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
}

/// The record's domains: DomainIDs once each, roots aligned, preserved and in the runs.
fn check_domains(r: &Record, cx: &mut Checker<'_>) {
    let preserved = cx.preserved();
    let mut seen = BTreeSet::new();
    for d in &r.domains {
        let did = d.id.0;
        let mut why: Vec<String> = Vec::new();
        if !seen.insert(did) {
            why.push("DomainID recorded twice".into());
        }
        if d.root.0 % 4096 != 0 {
            why.push(format!("root {} is not 4 KiB aligned", d.root));
        } else {
            if preserved.is_some_and(|set| !set.contains(d.root)) {
                why.push(format!("root {} is not preserved", d.root));
            }
            if !r.holds_page(d.root) {
                why.push(format!("root {} is not in the record's page runs", d.root));
            }
        }
        for w in why {
            cx.add(
                "adopt-refuses",
                Some(d.root),
                format!("record domain {did:#06x}: {w}"),
            );
        }
    }
}

/// Every record page run in the preserved set (`run-not-preserved`) and made of the
/// unit's structures and tables (`run-not-table`). Bounded by the sets, not by a run's
/// claimed length.
fn check_runs(r: &Record, reached: &PageSet, cx: &mut Checker<'_>) {
    if let Some(set) = cx.preserved() {
        let count = set.page_count();
        for &(first, pages) in &r.pages {
            if let Some(miss) = first_missing(set, count, first, pages) {
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
    let count = reached.page_count();
    for &(start, pages) in &r.pages {
        let Some(page) = first_missing(reached, count, start, pages) else {
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

/// The first page of `first`+`pages` outside `set` (of `count` pages), in at most
/// `count + 1` lookups.
fn first_missing(set: &PageSet, count: u64, first: PhysAddr, pages: u64) -> Option<PhysAddr> {
    (0..pages.min(count.saturating_add(1)))
        .map_while(|i| i.checked_mul(4096).and_then(|o| first.0.checked_add(o)))
        .map(PhysAddr)
        .find(|&p| !set.contains(p))
}
