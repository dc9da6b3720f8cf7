//! `verify`: an image's handover state checked against its tables.
//!
//! The KHO blob is given by address (`--kho-blob`), or found by scanning pages for the
//! FDT magic and keeping the blobs whose root is compatible with `kho-v2`: the pages of
//! a range the user names (`--kho-scan`), or the whole image when it holds at most
//! [`DEFAULT_SCAN_LIMIT`] bytes of memory (never an unbounded scan by default); its
//! preserved-memory map gives the pages that survive a kexec, and its clients the
//! handover record of each unit (VT-d: client `iommu-vtd-<base>`, decoded with
//! `vtd::record`, in [`crate::vtd::verify`]; AMD-Vi: client `iommu-amdvi-<base>`, decoded
//! with `amdvi::record`, in [`crate::amdvi::verify`]). A record may also come from a file.
//!
//! Checked, for every unit: every structure page (root table, context tables, PASID
//! directories and tables) and every page-table page reachable from the live root is in
//! the preserved set (and in the record's page runs); no page is reachable twice; no
//! entry has reserved bits set (or is otherwise malformed); the record's registers,
//! domain IDs, roots and devices match what the tables say. Every problem is listed.

//!
//! The blob, the preserved set and the bookkeeping of every page reached (preserved, in
//! the record's runs, reached once) are common; each unit checks its own structures and
//! record through [`crate::arch::ArchUnit::verify`] and a [`Checker`].

use crate::error::InspectError;
use crate::image::Image;
use crate::json::Json;
use crate::model::Loaded;
use crate::progress::Progress;
use iommu_core::kho::fdt::FDT_MAGIC;
use iommu_core::kho::{read_handover, read_preserved, Handover};
use iommu_core::pageset::PageSet;
use iommu_core::PhysAddr;
use std::collections::BTreeMap;
use std::io::{self, Write};

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
    /// `run-not-preserved` (a record page run outside the preserved set), `run-not-table`
    /// (record run pages that are not structures or tables of the unit), `unit-state`
    /// (the root pointer not latched); AMD-Vi adds `register-mismatch` (a register
    /// differs from the record header), `dte-mismatch` (a recorded DTE differs from the
    /// live one, bit for bit), `domain-id-shared` (one DomainID over different tables)
    /// and `leaf-not-preserved` (a leaf's target outside the preserved set).
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
/// What one unit's checks report to, and the image-wide state they check against: the
/// preserved set, the KHO blob, the record file, and the owner of every page reached by
/// any unit so far.
pub struct Checker<'a> {
    r: &'a mut Report,
    unit: String,
    preserved: Option<&'a PageSet>,
    handover: Option<&'a Handover>,
    record_file: Option<&'a [u8]>,
    owners: &'a mut BTreeMap<u64, String>,
}

impl<'a> Checker<'a> {
    /// The unit's name.
    pub fn unit(&self) -> &str {
        &self.unit
    }
    /// The KHO preserved set, when the blob was found.
    pub fn preserved(&self) -> Option<&'a PageSet> {
        self.preserved
    }
    /// The KHO blob, when found.
    pub fn handover(&self) -> Option<&'a Handover> {
        self.handover
    }
    /// The bytes of `--record FILE`.
    pub fn record_file(&self) -> Option<&'a [u8]> {
        self.record_file
    }
    /// Reports a finding of the unit.
    pub fn add(&mut self, kind: &'static str, addr: Option<PhysAddr>, what: String) {
        self.r.findings.push(Finding {
            unit: self.unit.clone(),
            kind,
            addr,
            what,
        });
    }
    /// Adds a note about what could not be checked.
    pub fn note(&mut self, what: String) {
        self.r.notes.push(what);
    }
    /// Checks a page the unit's state reaches as `owner`: it must be in the preserved
    /// set, in the record's page runs (`in_record`, when there is a record) and reached
    /// once across all units.
    pub fn check_page(&mut self, page: PhysAddr, owner: String, in_record: Option<bool>) {
        if let Some(set) = self.preserved {
            if !set.contains(page) {
                self.add(
                    "not-preserved",
                    Some(page),
                    format!("{owner}: page {page} is not in the KHO preserved set"),
                );
            }
        }
        if in_record == Some(false) {
            self.add(
                "not-in-record",
                Some(page),
                format!("{owner}: page {page} is not in the record's page runs"),
            );
        }
        if let Some(first) = self.owners.get(&page.0) {
            if *first != owner {
                let what = format!("page {page} is reached as {owner} and as {first}");
                self.add("reachable-twice", Some(page), what);
            }
        } else {
            self.owners.insert(page.0, owner);
        }
    }
    /// Records the unit's numbers of structure and page-table pages checked.
    pub fn checked(&mut self, struct_pages: u64, pt_pages: u64) {
        self.r
            .checked
            .push((self.unit.clone(), struct_pages, pt_pages));
    }
}

/// The pages of `[addr, addr + bytes)`.
pub fn pages_of(addr: PhysAddr, bytes: u64) -> impl Iterator<Item = PhysAddr> {
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
    // Owner of every page reached, across units: page -> description.
    let mut owners: BTreeMap<u64, String> = BTreeMap::new();
    for u in &l.units {
        let mut ck = Checker {
            r: &mut report,
            unit: u.name().to_string(),
            preserved: preserved.as_ref(),
            handover: handover.as_ref(),
            record_file: opts.record.as_deref(),
            owners: &mut owners,
        };
        u.verify(img, &mut ck)?;
    }
    Ok(report)
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
