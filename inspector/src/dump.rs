//! `dump`: registers, structures, devices and mappings, as aligned text, JSON, or the
//! layout of Linux's debugfs files.
//!
//! Mappings are streamed from the walker to the output: a dump holds one table per level
//! in memory, not the mappings. Each distinct page-table tree is walked and listed once;
//! the other devices that use it refer to it, so the output grows with the tables, not
//! with the number of devices sharing them.

use crate::json::Json;
use crate::model::{
    listing, walk_table_with, Filter, Listed, Loaded, SharedRun, SharedStructure, UnitState,
};
use crate::progress::Progress;
use crate::tree::walk_tree;
use crate::vtd::regs::decode;
use crate::vtd::scan::{Context, Scan, Translation};
use crate::vtd::walk::{walk, Access, WalkResult};
use crate::vtd::{mode_name, PageTable, Unit};
use iommu_core::pgtable::{Mapping, WalkError};
use iommu_core::{Iova, RequesterId};
use std::collections::HashSet;
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

fn hex16(v: u64) -> String {
    format!("{v:#018x}")
}

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

/// A device the snapshot's device note lists that no present entry serves. One pass over
/// the entries and one over the notes (a note of many devices against many entries must
/// not cost their product).
fn uncovered(us: &UnitState, filter: &Filter) -> Vec<(RequesterId, Option<u32>)> {
    let notes: Vec<(RequesterId, Option<u32>)> = us
        .devices
        .iter()
        .filter(|d| filter.device.map_or(true, |r| r == d.rid))
        .map(|d| (d.rid, d.pasid.map(|p| p.0)))
        .collect();
    // Held: the notes, not the entries (which may be every PASID of many devices).
    let mut unserved: HashSet<(RequesterId, Option<u32>)> = notes.iter().copied().collect();
    for c in us.scan.contexts.iter() {
        if unserved.is_empty() {
            break;
        }
        unserved.remove(&(c.rid, c.pasid));
        if c.pasid.is_some() && c.rid_pasid {
            // Requests without PASID go through the RID_PASID entry.
            unserved.remove(&(c.rid, None));
        }
    }
    notes.into_iter().filter(|k| unserved.contains(k)).collect()
}

fn context_summary(c: &Context) -> String {
    let did = c.did.map_or("-".into(), |d| format!("{d:#06x}"));
    match &c.translation {
        Translation::Tables(t) => format!(
            "DID {did}  {} {}-level table at {}",
            t.stage.name(),
            t.levels,
            t.root
        ),
        Translation::PassThrough => format!("DID {did}  pass-through"),
        Translation::Blocked(b) => format!(
            "DID {did}  blocked: {} (fault {:#04x}: {})",
            b.why,
            b.reason.code(),
            b.reason.description()
        ),
    }
}

/// What a dump did, for callers that check its cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Page-table trees walked: each distinct tree (see [`crate::model::TreeKey`]) of
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
    l.units.iter().map(|u| u.scan.contexts.len() as u64).sum()
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

// ----- text ----------------------------------------------------------------------------

fn text_unit_header(us: &UnitState, out: &mut dyn Write) -> io::Result<()> {
    let u = &us.unit;
    writeln!(
        out,
        "unit {}: VT-d, registers at {}, host address width {} bits{}",
        u.name,
        u.base,
        u.haw,
        if u.assumed {
            " (registers assumed from the command line)"
        } else {
            ""
        }
    )?;
    writeln!(out, "  registers:")?;
    let regs = decode(u);
    // Fault recording registers: only the valid ones (F set) in full.
    let frcd_valid = |name: &str| -> bool {
        let idx = name
            .trim_start_matches("FRCD")
            .split('_')
            .next()
            .unwrap_or("");
        regs.iter().any(|x| {
            x.name == format!("FRCD{idx}_HI") && x.fields.iter().any(|&(n, v)| n == "F" && v == 1)
        })
    };
    let frcd_total = regs.iter().filter(|r| r.name.ends_with("_HI")).count();
    let mut frcd_shown = 0;
    for r in regs.iter() {
        if r.name.starts_with("FRCD") {
            if !frcd_valid(&r.name) {
                continue;
            }
            frcd_shown += 1;
        }
        let v = if r.width == 4 {
            format!("{:#010x}", r.value)
        } else {
            hex16(r.value)
        };
        let line = format!(
            "    {:<9} +{:#05x}  {:>18}  {}",
            r.name,
            r.offset,
            v,
            r.note.as_deref().unwrap_or("")
        );
        writeln!(out, "{}", line.trim_end())?;
        if !r.fields.is_empty() {
            let f: Vec<String> = r
                .fields
                .iter()
                .map(|(n, v)| {
                    if *v > 9 {
                        format!("{n}={v:#x}")
                    } else {
                        format!("{n}={v}")
                    }
                })
                .collect();
            for chunk in f.chunks(10) {
                writeln!(out, "              {}", chunk.join(" "))?;
            }
        }
    }
    if frcd_total > 0 {
        writeln!(
            out,
            "    fault recording registers: {frcd_total}, {} with a fault recorded{}",
            frcd_shown / 2,
            if frcd_shown == 0 { "" } else { " (above)" }
        )?;
    }
    let s = &us.scan;
    writeln!(
        out,
        "  translation: {}, {} mode, root table {}",
        if u.enabled() { "enabled" } else { "disabled" },
        mode_name(s.mode),
        s.root_table
    )?;
    if let Some(why) = &s.skipped {
        writeln!(out, "  structures not scanned: {why}")?;
    }
    Ok(())
}

fn text_structures(
    us: &UnitState,
    filter: &Filter,
    items: &[Listed],
    out: &mut dyn Write,
) -> io::Result<()> {
    let s = &us.scan;
    let mut next = 0usize;
    if s.skipped.is_some() {
        return Ok(());
    }
    writeln!(
        out,
        "  root table {} ({} mode):",
        s.root_table,
        mode_name(s.mode)
    )?;
    for r in &s.roots {
        if filter.device.is_some_and(|d| d.bus != r.bus) {
            continue;
        }
        let tables: Vec<String> = r
            .tables
            .iter()
            .map(|(h, a)| match h {
                None => format!("context table {a}"),
                Some(false) => format!("lower context table {a}"),
                Some(true) => format!("upper context table {a}"),
            })
            .collect();
        writeln!(
            out,
            "    bus {:#04x}  root entry {} = {}:{}  {}",
            r.bus,
            r.addr,
            hex16(r.raw[1]),
            hex16(r.raw[0]),
            tables.join(", ")
        )?;
        while items.get(next).is_some_and(|i| item_bus(s, i) < r.bus) {
            next += 1;
        }
        let mut last_ctx = None;
        while let Some(item) = items.get(next).filter(|i| item_bus(s, i) == r.bus) {
            next += 1;
            let c = &s.contexts.get(match item {
                Listed::Context(ci) => *ci,
                Listed::Shared(run) => run.start,
            });
            let ce = &c.context_entry;
            if last_ctx != Some(ce.0) {
                last_ctx = Some(ce.0);
                let raw: Vec<String> = ce.1.iter().rev().map(|q| hex16(*q)).collect();
                let what = if c.pasid.is_some() {
                    let q0 = ce.1.first().copied().unwrap_or(0);
                    format!("PASID directory {:#x}", q0 & !0xfff)
                } else {
                    context_summary(c)
                };
                writeln!(
                    out,
                    "      {:02x}:{:02x}.{:x}  context entry {} = {}  {}",
                    c.rid.bus,
                    c.rid.device(),
                    c.rid.function(),
                    ce.0,
                    raw.join(":"),
                    what
                )?;
            }
            if let Listed::Shared(run) = item {
                writeln!(out, "        {}", shared_text(s, run))?;
            } else if let (Some(p), Some(pe)) = (c.pasid, &c.pasid_entry) {
                writeln!(
                    out,
                    "        PASID {:#07x}{}  entry {} = {}:{}:{}  {}",
                    p,
                    if c.rid_pasid { " (RID_PASID)" } else { "" },
                    pe.0,
                    hex16(pe.1[2]),
                    hex16(pe.1[1]),
                    hex16(pe.1[0]),
                    context_summary(c)
                )?;
            } else if c.pasid.is_none() && ce_is_scalable(c) {
                writeln!(out, "        {}", context_summary(c))?;
            }
        }
    }
    Ok(())
}

fn item_bus(s: &Scan, i: &Listed) -> u8 {
    match i {
        Listed::Context(ci) => s.contexts.get(*ci).rid.bus,
        Listed::Shared(run) => run.rid.bus,
    }
}

/// `PASIDs 0x40-0x1fff (64 entries): same PASID table 0x103000 as 0000:00:04.0 pasid 0x0
/// (above)`.
fn shared_text(s: &Scan, run: &SharedRun) -> String {
    let what = match run.what {
        SharedStructure::Directory(a, n) => format!("PASID directory {a} ({n} entries)"),
        SharedStructure::Table(a) => format!("PASID table {a}"),
    };
    format!(
        "PASIDs {:#x}-{:#x}{} ({} entr{}): same {what} as {} (above)",
        run.pasids.0,
        run.pasids.1,
        if run.rid_pasid {
            ", RID_PASID among them"
        } else {
            ""
        },
        run.entries,
        if run.entries == 1 { "y" } else { "ies" },
        s.contexts.get(run.same_as).label()
    )
}

fn ce_is_scalable(c: &Context) -> bool {
    c.context_entry.1.len() == 4
}

/// The mappings of one page-table tree, its problems and a summary line.
fn text_tree(
    us: &UnitState,
    l: &Loaded,
    pt: &PageTable,
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
    let w = walk_table_with(&us.unit, &l.image, pt, |m| {
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
    writeln!(
        out,
        "image {} ({}, {} memory runs, {:#x} bytes of memory, {} VT-d unit{})",
        l.image.path().display(),
        l.image.kind().name(),
        l.image.segments().len(),
        l.image.memory_bytes(),
        l.units.len(),
        if l.units.len() == 1 { "" } else { "s" }
    )?;
    for us in &l.units {
        writeln!(out)?;
        text_unit_header(us, out)?;
        let items = listing(&us.scan.contexts, filter);
        text_structures(us, filter, &items, out)?;
        if !us.scan.problems.is_empty() {
            writeln!(out, "  problems:")?;
            for p in &us.scan.problems {
                match p.fault {
                    Some(f) => writeln!(
                        out,
                        "    !! {}: {} (fault {:#04x})",
                        p.addr,
                        p.what,
                        f.code()
                    )?,
                    None => writeln!(out, "    !! {}: {}", p.addr, p.what)?,
                }
            }
        }
        writeln!(out, "  devices:")?;
        let mut shown = 0;
        // Where each tree's mappings were listed (the first device shown that uses it).
        let mut listed: Vec<Option<usize>> = vec![None; us.trees.len()];
        for item in &items {
            shown += 1;
            let ci = match item {
                Listed::Context(ci) => *ci,
                Listed::Shared(run) => {
                    progress.set(done + run.start as u64);
                    writeln!(out, "    {}  {}", run.rid, shared_text(&us.scan, run))?;
                    continue;
                }
            };
            progress.set(done + ci as u64);
            let c = &us.scan.contexts.get(ci);
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
                context_summary(c),
                if c.fpd { "  FPD" } else { "" }
            )?;
            let Some(t) = us.trees.of(c) else {
                continue;
            };
            if let Some(first) = listed[t] {
                writeln!(
                    out,
                    "      same page table as {} (mappings above)",
                    us.scan.contexts.get(first).label()
                )?;
                continue;
            }
            listed[t] = Some(ci);
            stats.tree_walks += 1;
            text_tree(us, l, &us.trees.tables[t], filter, out)?;
        }
        done += us.scan.contexts.len() as u64;
        for (rid, pasid) in uncovered(us, filter) {
            shown += 1;
            let t = walk(&us.unit, &l.image, rid, pasid, Iova(0), Access::Read);
            let why = match &t.result {
                WalkResult::Fault { reason, detail, .. } => format!(
                    "{detail} (fault {:#04x}: {})",
                    reason.code(),
                    reason.description()
                ),
                WalkResult::Untranslated { .. } => "translation disabled".into(),
                WalkResult::Mapped { .. } => "translated (no entry listed)".into(),
            };
            writeln!(
                out,
                "    {}  {}  listed in the snapshot, no present entry: {why}",
                rid,
                pasid.map_or("no pasid".into(), |p| format!("pasid {p:#x}"))
            )?;
        }
        if shown == 0 {
            writeln!(out, "    (none)")?;
        }
    }
    Ok(())
}

// ----- JSON ----------------------------------------------------------------------------

fn json_context<W: Write>(j: &mut Json<W>, c: &Context, tree: Option<usize>) -> io::Result<()> {
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
    j.kv_str("translation", c.translation.name())?;
    j.kv_bool("fpd", c.fpd)?;
    j.key("root_entry")?;
    j.begin_object(true)?;
    j.kv_hex("addr", c.root_entry.0 .0)?;
    j.kv_hex_list("raw", &c.root_entry.1)?;
    j.end_object()?;
    j.key("context_entry")?;
    j.begin_object(true)?;
    j.kv_hex("addr", c.context_entry.0 .0)?;
    j.kv_hex_list("raw", &c.context_entry.1)?;
    j.end_object()?;
    j.key("pasid_dir_entry")?;
    match c.pasid_dir_entry {
        Some((a, r)) => {
            j.begin_object(true)?;
            j.kv_hex("addr", a.0)?;
            j.kv_hex_list("raw", &[r])?;
            j.end_object()?;
        }
        None => j.null()?,
    }
    j.key("pasid_entry")?;
    match &c.pasid_entry {
        Some((a, r)) => {
            j.begin_object(true)?;
            j.kv_hex("addr", a.0)?;
            j.kv_hex_list("raw", r)?;
            j.end_object()?;
        }
        None => j.null()?,
    }
    j.key("blocked")?;
    match &c.translation {
        Translation::Blocked(b) => {
            j.begin_object(true)?;
            j.kv_uint("fault", b.reason.code() as u64)?;
            j.kv_str("reason", b.reason.description())?;
            j.kv_str("detail", &b.why)?;
            j.end_object()?;
        }
        _ => j.null()?,
    }
    j.key("page_table")?;
    let (Translation::Tables(pt), Some(id)) = (&c.translation, tree) else {
        j.null()?;
        return j.end_object();
    };
    j.begin_object(true)?;
    j.kv_uint("id", id as u64)?;
    j.kv_str("stage", pt.stage.name())?;
    j.kv_hex("root", pt.root.0)?;
    j.kv_uint("levels", pt.levels as u64)?;
    j.kv_uint("input_width", pt.width as u64)?;
    j.end_object()?;
    j.end_object()
}

/// One distinct page-table tree: its identity, mappings (clipped to the filter), table
/// page count and problems.
fn json_tree<W: Write>(
    j: &mut Json<W>,
    us: &UnitState,
    l: &Loaded,
    id: usize,
    users: usize,
    filter: &Filter,
) -> io::Result<()> {
    let pt = &us.trees.tables[id];
    j.begin_object(false)?;
    j.kv_uint("id", id as u64)?;
    j.kv_str("stage", pt.stage.name())?;
    j.kv_hex("root", pt.root.0)?;
    j.kv_uint("levels", pt.levels as u64)?;
    j.kv_bool("exec", pt.exec)?;
    j.kv_uint("devices", users as u64)?;
    j.key("mappings")?;
    j.begin_array(false)?;
    let mut err: Option<io::Error> = None;
    let w = walk_table_with(&us.unit, &l.image, pt, |m| {
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
    for us in &l.units {
        let u: &Unit = &us.unit;
        j.begin_object(false)?;
        j.kv_str("name", &u.name)?;
        j.kv_str("kind", "vtd")?;
        j.kv_hex("base", u.base.0)?;
        j.kv_uint("haw", u.haw as u64)?;
        j.kv_bool("registers_assumed", u.assumed)?;
        j.key("registers")?;
        j.begin_array(false)?;
        for r in decode(u) {
            j.begin_object(true)?;
            j.kv_str("name", &r.name)?;
            j.kv_hex("offset", r.offset)?;
            j.kv_uint("width", r.width as u64)?;
            j.kv_hex("value", r.value)?;
            j.key("fields")?;
            j.begin_object(true)?;
            for (n, v) in &r.fields {
                j.kv_uint(n, *v)?;
            }
            j.end_object()?;
            j.end_object()?;
        }
        j.end_array()?;
        j.kv_bool("translation_enabled", u.enabled())?;
        j.kv_str("mode", mode_name(us.scan.mode))?;
        j.kv_hex("root_table", us.scan.root_table.0)?;
        j.key("skipped")?;
        match &us.scan.skipped {
            Some(s) => j.string(s)?,
            None => j.null()?,
        }
        j.key("root_entries")?;
        j.begin_array(false)?;
        for r in &us.scan.roots {
            if filter.device.is_some_and(|d| d.bus != r.bus) {
                continue;
            }
            j.begin_object(true)?;
            j.kv_uint("bus", r.bus as u64)?;
            j.kv_hex("addr", r.addr.0)?;
            j.kv_hex_list("raw", &r.raw)?;
            j.key("context_tables")?;
            j.begin_array(true)?;
            for (h, a) in &r.tables {
                j.begin_object(true)?;
                j.kv_str(
                    "half",
                    match h {
                        None => "all",
                        Some(false) => "lower",
                        Some(true) => "upper",
                    },
                )?;
                j.kv_hex("addr", a.0)?;
                j.end_object()?;
            }
            j.end_array()?;
            j.end_object()?;
        }
        j.end_array()?;
        j.key("problems")?;
        j.begin_array(false)?;
        for p in &us.scan.problems {
            j.begin_object(true)?;
            j.kv_hex("addr", p.addr.0)?;
            j.kv_str("what", &p.what)?;
            j.key("fault")?;
            match p.fault {
                Some(f) => j.uint(f.code() as u64)?,
                None => j.null()?,
            }
            j.end_object()?;
        }
        j.end_array()?;
        j.key("devices")?;
        j.begin_array(false)?;
        // Devices listed per tree: a tree is listed once, if a device listed uses it.
        let mut users = vec![0usize; us.trees.len()];
        let items = listing(&us.scan.contexts, filter);
        for item in &items {
            let Listed::Context(ci) = *item else {
                continue;
            };
            progress.set(done + ci as u64);
            let c = us.scan.contexts.get(ci);
            let tree = us.trees.of(&c);
            json_context(&mut j, &c, tree)?;
            if let Some(t) = tree {
                users[t] += 1;
            }
        }
        done += us.scan.contexts.len() as u64;
        j.end_array()?;
        j.key("shared_pasid_runs")?;
        j.begin_array(false)?;
        for item in &items {
            let Listed::Shared(run) = item else {
                continue;
            };
            let first = &us.scan.contexts.get(run.same_as);
            j.begin_object(true)?;
            j.kv_str("bdf", &run.rid.to_string())?;
            j.kv_uint("pasid_first", run.pasids.0 as u64)?;
            j.kv_uint("pasid_last", run.pasids.1 as u64)?;
            j.kv_uint("entries", run.entries as u64)?;
            j.kv_bool("rid_pasid", run.rid_pasid)?;
            let (kind, addr) = match run.what {
                SharedStructure::Directory(a, _) => ("pasid_directory", a),
                SharedStructure::Table(a) => ("pasid_table", a),
            };
            j.kv_str("shares", kind)?;
            j.kv_hex("addr", addr.0)?;
            j.kv_str("same_as_bdf", &first.rid.to_string())?;
            j.kv_opt_uint("same_as_pasid", first.pasid.map(u64::from))?;
            j.end_object()?;
        }
        j.end_array()?;
        j.key("page_tables")?;
        j.begin_array(false)?;
        for (id, &n) in users.iter().enumerate() {
            if n > 0 {
                stats.tree_walks += 1;
                json_tree(&mut j, us, l, id, n, filter)?;
            }
        }
        j.end_array()?;
        j.key("unlisted_devices")?;
        j.begin_array(false)?;
        for (rid, pasid) in uncovered(us, filter) {
            let t = walk(&us.unit, &l.image, rid, pasid, Iova(0), Access::Read);
            j.begin_object(true)?;
            j.kv_str("bdf", &rid.to_string())?;
            j.key("pasid")?;
            match pasid {
                Some(p) => j.uint(p as u64)?,
                None => j.null()?,
            }
            j.key("fault")?;
            match &t.result {
                WalkResult::Fault { reason, detail, .. } => {
                    j.uint(reason.code() as u64)?;
                    j.kv_str("detail", detail)?;
                }
                _ => j.null()?,
            }
            j.end_object()?;
        }
        j.end_array()?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()
}

// ----- Linux debugfs layout -----------------------------------------------------------

/// Linux `dmar_translation_struct` and then `domain_translation_struct` (per device, in
/// the layout of the per-device files of Linux 6.x, one after another).
fn linux(
    l: &Loaded,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &mut Progress,
    stats: &mut DumpStats,
) -> io::Result<()> {
    let mut done = 0u64;
    // dmar_translation_struct (drivers/iommu/intel/debugfs.c, dmar_translation_struct_show).
    for us in &l.units {
        let u = &us.unit;
        if !u.enabled() {
            writeln!(out, "DMA Remapping is not enabled on {}", u.name)?;
            continue;
        }
        writeln!(
            out,
            "IOMMU {}: Root Table Address: {:#x}",
            u.name, us.scan.root_table.0
        )?;
        writeln!(
            out,
            "B.D.F\tRoot_entry\t\t\t\tContext_entry\t\t\t\tPASID\tPASID_table_entry"
        )?;
        for item in listing(&us.scan.contexts, filter) {
            let c = match item {
                Listed::Context(ci) => us.scan.contexts.get(ci),
                Listed::Shared(run) => {
                    // Linux prints every PASID entry; a repeated structure is referred to.
                    writeln!(
                        out,
                        "{:02x}:{:02x}.{:x}\t{}",
                        run.rid.bus,
                        run.rid.device(),
                        run.rid.function(),
                        shared_text(&us.scan, &run)
                    )?;
                    continue;
                }
            };
            let re = c.root_entry.1;
            let ce = &c.context_entry.1;
            write!(
                out,
                "{:02x}:{:02x}.{:x}\t{:#018x}:{:#018x}\t{:#018x}:{:#018x}\t",
                c.rid.bus,
                c.rid.device(),
                c.rid.function(),
                re[1],
                re[0],
                ce.get(1).copied().unwrap_or(0),
                ce.first().copied().unwrap_or(0)
            )?;
            match (&c.pasid, &c.pasid_entry) {
                (Some(p), Some((_, pe))) => writeln!(
                    out,
                    "{:<6}\t{:#018x}:{:#018x}:{:#018x}",
                    p, pe[2], pe[1], pe[0]
                )?,
                _ => writeln!(out, "{:<6}\t{:#018x}:{:#018x}:{:#018x}", -1, 0, 0, 0)?,
            }
        }
        writeln!(out)?;
    }
    // domain_translation_struct, one block per device with a page table.
    for us in &l.units {
        // The device whose block listed each tree's entries.
        let mut listed: Vec<Option<usize>> = vec![None; us.trees.len()];
        for (ci, c) in us.scan.contexts.iter().enumerate() {
            let c = &c;
            done += 1;
            progress.set(done);
            if !filter.context(c) {
                continue;
            }
            let (Translation::Tables(pt), Some(tree)) = (&c.translation, us.trees.of(c)) else {
                continue;
            };
            if c.pasid.is_some() && !c.rid_pasid && filter.pasid.is_none() {
                // Linux's per-device file shows the RID_PASID domain; other PASIDs have
                // their own files (shown when --pasid selects them).
                continue;
            }
            write!(
                out,
                "Device {:04x}:{:02x}:{:02x}.{:x} ",
                c.rid.segment,
                c.rid.bus,
                c.rid.device(),
                c.rid.function()
            )?;
            match c.pasid {
                Some(p) => writeln!(out, "with pasid {p:x} @{:#x}", pt.root.0)?,
                None => writeln!(out, "@{:#x}", pt.root.0)?,
            }
            if let Some(first) = listed[tree] {
                // A shared table is listed once (Linux repeats it in every device's file).
                let f = &us.scan.contexts.get(first);
                writeln!(
                    out,
                    "same page table as Device {:04x}:{:02x}:{:02x}.{:x}{} (entries above)",
                    f.rid.segment,
                    f.rid.bus,
                    f.rid.device(),
                    f.rid.function(),
                    f.pasid
                        .map_or(String::new(), |p| format!(" with pasid {p:x}"))
                )?;
                writeln!(out)?;
                continue;
            }
            listed[tree] = Some(ci);
            stats.tree_walks += 1;
            writeln!(
                out,
                "{:<17}\t{:<18}\t{:<18}\t{:<18}\t{:<18}\tPTE",
                "IOVA_PFN", "PML5E", "PML4E", "PDPE", "PDE"
            )?;
            let Ok(format) = pt.format(&us.unit) else {
                writeln!(out)?;
                continue;
            };
            let mut err: Option<io::Error> = None;
            walk_tree(
                &format,
                &l.image,
                pt.root,
                crate::model::walk_limits().max_tables,
                |_| {},
                |leaf| {
                    if err.is_some() {
                        return;
                    }
                    if let Some((lo, hi)) = filter.iova {
                        let span = 1u64 << (12 + 9 * (leaf.level as u32 - 1));
                        let last = leaf.iova.saturating_add(span - 1);
                        if last < lo || leaf.iova > hi {
                            return;
                        }
                    }
                    let p = &leaf.path;
                    let mut s = format!(
                        "{:#015x} |\t{:#018x}\t{:#018x}\t{:#018x}",
                        leaf.iova >> 12,
                        p[5],
                        p[4],
                        p[3]
                    );
                    if p[2] != 0 {
                        s.push_str(&format!("\t{:#018x}", p[2]));
                        if p[1] != 0 {
                            s.push_str(&format!("\t{:#018x}", p[1]));
                        }
                    }
                    if let Err(e) = writeln!(out, "{s}") {
                        err = Some(e);
                    }
                },
            );
            if let Some(e) = err {
                return Err(e);
            }
            writeln!(out)?;
        }
    }
    Ok(())
}
