//! `dump`: registers, structures, devices and mappings, as aligned text, JSON, or the
//! layout of Linux's debugfs files.
//!
//! Mappings are streamed from the walker to the output: a dump holds one table per level
//! in memory, not the mappings. Each distinct page-table tree is walked and listed once;
//! the other devices that use it refer to it, so the output grows with the tables, not
//! with the number of devices sharing them.

use crate::arch::{ArchUnit, Item, LinuxPart};
use crate::json::Json;
use crate::model::{Filter, Loaded};
use crate::progress::Progress;
use iommu_core::pgtable::{Mapping, WalkError};
use std::io::{self, Write};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned human-readable text.
    #[default]
    Text,
    /// JSON (schema [`DUMP_SCHEMA`]).
    Json,
    /// Linux debugfs `dmar_translation_struct` then `domain_translation_struct`.
    Linux,
}

/// Schema name of the JSON dump. v2: each distinct page-table tree is listed once per
/// unit (`page_tables`, with its mappings) and devices refer to it by `page_table.id`;
/// v1 repeated the mappings under every device.
pub const DUMP_SCHEMA: &str = "iommu-inspect/dump/v2";

fn write_mapping(out: &mut dyn Write, m: &Mapping) -> io::Result<()> {
    writeln!(
        out,
        "      {:#018x}-{:#018x}  {:#018x}-{:#018x}  {:>#14x}  {}  {}",
        m.iova.0,
        m.iova_last().0,
        m.pa.0,
        m.pa_last().0,
        m.size,
        m.perms,
        m.page_size
    )
}

fn walk_problem(e: &WalkError) -> String {
    e.to_string()
}

/// What a dump did, for callers that check its cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Page-table trees walked: each distinct tree (see [`crate::vtd::TreeKey`]) of
    /// the devices shown is walked once, however many devices share it.
    pub tree_walks: u64,
}

/// Writes the dump of `l` in `fmt`.
pub fn dump(
    l: &Loaded,
    filter: &Filter,
    fmt: OutputFormat,
    out: &mut dyn Write,
) -> io::Result<DumpStats> {
    dump_with_progress(l, filter, fmt, out, &mut Progress::hidden())
}

/// Number of entries a dump walks (for a progress bar).
pub fn work(l: &Loaded) -> u64 {
    l.units.iter().map(|u| u.entries() as u64).sum()
}

/// [`dump`], advancing `progress` by one per device entry (see [`work`]).
pub fn dump_with_progress(
    l: &Loaded,
    filter: &Filter,
    fmt: OutputFormat,
    out: &mut dyn Write,
    progress: &mut Progress,
) -> io::Result<DumpStats> {
    let mut stats = DumpStats::default();
    let r = match fmt {
        OutputFormat::Text => text(l, filter, out, progress, &mut stats),
        OutputFormat::Json => json(l, filter, out, progress, &mut stats),
        OutputFormat::Linux => linux(l, filter, out, progress, &mut stats),
    };
    progress.finish();
    r.map(|()| stats)
}

/// The mappings of one page-table tree, its problems and a summary line.
fn text_tree(
    u: &dyn ArchUnit,
    l: &Loaded,
    t: usize,
    filter: &Filter,
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(
        out,
        "      {:<37}  {:<37}  {:>14}  prm  page",
        "IOVA range", "PA range", "size"
    )?;
    let mut err: Option<io::Error> = None;
    let mut runs = 0u64;
    let w = u.walk_tree(&l.image, t, &mut |m| {
        if err.is_some() {
            return;
        }
        if let Some(m) = filter.clip(m) {
            runs += 1;
            if let Err(e) = write_mapping(out, &m) {
                err = Some(e);
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(f) = &w.fatal {
        writeln!(out, "      !! page table not walked: {f}")?;
    }
    for p in &w.problems {
        writeln!(out, "      !! {}", walk_problem(p))?;
    }
    let problems = w.problems.len() + w.fatal.is_some() as usize;
    writeln!(
        out,
        "      {runs} mapping run{}, {} table page{}, {problems} problem{}",
        plural(runs as usize),
        w.tables.len(),
        plural(w.tables.len()),
        plural(problems),
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn text(
    l: &Loaded,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &mut Progress,
    stats: &mut DumpStats,
) -> io::Result<()> {
    let mut done = 0u64;
    // The units' architecture by name when they all have one (`1 VT-d unit`).
    let kind = match l.units.first() {
        Some(u) if l.units.iter().all(|x| x.kind() == u.kind()) => u.kind_title(),
        _ => "IOMMU",
    };
    writeln!(
        out,
        "image {} ({}, {} memory runs, {:#x} bytes of memory, {} {kind} unit{})",
        l.image.path().display(),
        l.image.kind().name(),
        l.image.segments().len(),
        l.image.memory_bytes(),
        l.units.len(),
        if l.units.len() == 1 { "" } else { "s" }
    )?;
    for u in &l.units {
        let u: &dyn ArchUnit = u.as_ref();
        writeln!(out)?;
        u.text_head(filter, out)?;
        writeln!(out, "  devices:")?;
        let mut shown = 0;
        // Where each tree's mappings were listed (the first device shown that uses it).
        let mut listed: Vec<Option<usize>> = vec![None; u.trees()];
        for item in u.listing(filter) {
            shown += 1;
            let ci = match item {
                Item::Entry(ci) => ci,
                Item::Note { at, rid, text } => {
                    progress.set(done + at as u64);
                    writeln!(out, "    {rid}  {text}")?;
                    continue;
                }
            };
            progress.set(done + ci as u64);
            let c = u.entry(ci);
            let pasid = match c.pasid {
                Some(p) if c.rid_pasid => format!("pasid {p:#x} (RID_PASID)"),
                Some(p) => format!("pasid {p:#x}"),
                None => "no pasid".into(),
            };
            writeln!(
                out,
                "    {}  {}  {}{}",
                c.rid,
                pasid,
                u.summary(ci),
                if c.fpd { "  FPD" } else { "" }
            )?;
            let Some(t) = c.tree else {
                continue;
            };
            if let Some(first) = listed[t] {
                writeln!(
                    out,
                    "      same page table as {} (mappings above)",
                    u.entry(first).label()
                )?;
                continue;
            }
            listed[t] = Some(ci);
            stats.tree_walks += 1;
            text_tree(u, l, t, filter, out)?;
        }
        done += u.entries() as u64;
        shown += u.text_tail(&l.image, filter, out)?;
        if shown == 0 {
            writeln!(out, "    (none)")?;
        }
    }
    Ok(())
}

// ----- JSON ----------------------------------------------------------------------------

/// One distinct page-table tree: its identity, mappings (clipped to the filter), table
/// page count and problems.
fn json_tree(
    j: &mut Json<&mut dyn Write>,
    u: &dyn ArchUnit,
    l: &Loaded,
    id: usize,
    users: usize,
    filter: &Filter,
) -> io::Result<()> {
    j.begin_object(false)?;
    j.kv_uint("id", id as u64)?;
    u.json_tree(j, id)?;
    j.kv_uint("devices", users as u64)?;
    j.key("mappings")?;
    j.begin_array(false)?;
    let mut err: Option<io::Error> = None;
    let w = u.walk_tree(&l.image, id, &mut |m| {
        if err.is_some() {
            return;
        }
        if let Some(m) = filter.clip(m) {
            let r = (|| {
                j.begin_object(true)?;
                j.kv_hex("iova", m.iova.0)?;
                j.kv_hex("iova_last", m.iova_last().0)?;
                j.kv_hex("pa", m.pa.0)?;
                j.kv_hex("pa_last", m.pa_last().0)?;
                j.kv_hex("size", m.size)?;
                j.kv_str("perms", &m.perms.to_string())?;
                j.kv_hex("page_size", m.page_size.bytes())?;
                j.end_object()
            })();
            if let Err(e) = r {
                err = Some(e);
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    j.end_array()?;
    j.kv_uint("table_pages", w.tables.len() as u64)?;
    j.key("problems")?;
    j.begin_array(false)?;
    if let Some(f) = &w.fatal {
        j.begin_object(true)?;
        j.kv_str("what", f)?;
        j.end_object()?;
    }
    for p in &w.problems {
        j.begin_object(true)?;
        j.kv_hex("table", p.table.0)?;
        j.kv_uint("level", p.level as u64)?;
        j.key("index")?;
        if p.is_root() {
            j.null()?;
        } else {
            j.uint(p.index as u64)?;
        }
        j.kv_hex("entry", p.entry)?;
        j.kv_str("what", &p.kind.to_string())?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()
}

fn json(
    l: &Loaded,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &mut Progress,
    stats: &mut DumpStats,
) -> io::Result<()> {
    let mut done = 0u64;
    let mut j = Json::new(out);
    j.begin_object(false)?;
    j.kv_str("schema", DUMP_SCHEMA)?;
    j.key("image")?;
    j.begin_object(false)?;
    j.kv_str("path", &l.image.path().display().to_string())?;
    j.kv_str("kind", l.image.kind().name())?;
    j.kv_uint("segments", l.image.segments().len() as u64)?;
    j.kv_hex("memory_bytes", l.image.memory_bytes())?;
    j.end_object()?;
    j.key("units")?;
    j.begin_array(false)?;
    for u in &l.units {
        let u: &dyn ArchUnit = u.as_ref();
        j.begin_object(false)?;
        j.kv_str("name", u.name())?;
        j.kv_str("kind", u.kind())?;
        u.json_head(&mut j, filter)?;
        j.key("devices")?;
        j.begin_array(false)?;
        // Devices listed per tree: a tree is listed once, if a device listed uses it.
        let mut users = vec![0usize; u.trees()];
        for item in u.listing(filter) {
            let Item::Entry(ci) = item else {
                continue;
            };
            progress.set(done + ci as u64);
            let c = u.entry(ci);
            j.begin_object(false)?;
            j.kv_str("bdf", &c.rid.to_string())?;
            j.key("pasid")?;
            match c.pasid {
                Some(p) => j.uint(p as u64)?,
                None => j.null()?,
            }
            j.kv_bool("rid_pasid", c.rid_pasid)?;
            j.key("domain")?;
            match c.did {
                Some(d) => j.uint(d as u64)?,
                None => j.null()?,
            }
            j.kv_str("translation", c.translation)?;
            j.kv_bool("fpd", c.fpd)?;
            u.json_entry(&mut j, ci, c.tree)?;
            j.end_object()?;
            if let Some(t) = c.tree {
                users[t] += 1;
            }
        }
        done += u.entries() as u64;
        j.end_array()?;
        u.json_after_devices(&mut j, filter)?;
        j.key("page_tables")?;
        j.begin_array(false)?;
        for (id, &n) in users.iter().enumerate() {
            if n > 0 {
                stats.tree_walks += 1;
                json_tree(&mut j, u, l, id, n, filter)?;
            }
        }
        j.end_array()?;
        u.json_tail(&l.image, &mut j, filter)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()
}

// ----- Linux debugfs layout -----------------------------------------------------------

/// Every unit's unit-wide part (VT-d: `dmar_translation_struct`), then every unit's
/// per-device part (VT-d: `domain_translation_struct`, the per-device files of Linux 6.x
/// one after another).
fn linux(
    l: &Loaded,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &mut Progress,
    stats: &mut DumpStats,
) -> io::Result<()> {
    let mut done = 0u64;
    for part in [LinuxPart::Unit, LinuxPart::Devices] {
        for u in &l.units {
            stats.tree_walks += u.linux(part, &l.image, filter, out, progress, &mut done)?;
        }
    }
    Ok(())
}
