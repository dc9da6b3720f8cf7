//! VT-d's implementation of the per-architecture seam ([`crate::arch`]): the unit's
//! registers and root/context/PASID structures as the dump shows them, its entries, its
//! page-table trees and the Linux debugfs layout.

use super::regs::decode;
use super::scan::{Context, Scan, Translation};
use super::state::{listing, walk_table_with, Listed, SharedRun, SharedStructure, UnitState};
use super::walk::{walk, Access, WalkResult};
use super::{mode_name, Unit, UnitOverride};
use crate::arch::{
    Arch, ArchUnit, EntryView, Item, LinuxPart, Step, TableDesc, UnitId, Walk, WalkEnd,
};
use crate::error::InspectError;
use crate::image::Image;
use crate::json::Json;
use crate::model::{Filter, LoadOptions, TableWalk};
use crate::progress::Progress;
use crate::tree::{tables_of, walk_tree, TreeTable};
use crate::verify::Checker;
use iommu_core::pgtable::Mapping;
use iommu_core::{Iova, RequesterId};
use std::any::Any;
use std::collections::HashSet;
use std::io::{self, Write};

/// The VT-d architecture: units from the image's VT-d unit notes or the command line.
pub struct Vtd;

/// The registered VT-d architecture.
pub static VTD: Vtd = Vtd;

impl Arch for Vtd {
    fn name(&self) -> &'static str {
        "vtd"
    }
    fn load(
        &self,
        image: &Image,
        opts: &LoadOptions,
    ) -> Result<Vec<Box<dyn ArchUnit>>, InspectError> {
        let units = match Unit::from_image(image, &opts.unit) {
            Err(InspectError::NoUnits { .. }) => return Ok(Vec::new()),
            r => r?,
        };
        Ok(units
            .into_iter()
            .map(|u| Box::new(UnitState::scan(u, image)) as Box<dyn ArchUnit>)
            .collect())
    }
}

/// The error for an image without units of any architecture (with the hint of the
/// VT-d options that describe one).
pub fn no_units(img: &Image, ov: &UnitOverride) -> InspectError {
    match Unit::from_image(img, ov) {
        Err(e) => e,
        Ok(_) => InspectError::NoUnits {
            hint: "give the root table with --vtd-rtaddr ADDR (and --vtd-mode, --haw), the \
                   AMD-Vi device table with --amdvi-devtab ADDR, or the SMMUv3 stream table \
                   with --smmu-strtab BASE --smmu-strtab-cfg VALUE",
        },
    }
}

fn hex16(v: u64) -> String {
    format!("{v:#018x}")
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

/// The JSON text of a page-table description inside an entry.
fn entry_view(us: &UnitState, c: &Context) -> EntryView {
    EntryView {
        rid: c.rid,
        pasid: c.pasid,
        rid_pasid: c.rid_pasid,
        did: c.did,
        translation: c.translation.name(),
        blocked: match &c.translation {
            Translation::Blocked(b) => Some(b.reason.code()),
            _ => None,
        },
        fpd: c.fpd,
        table: c.translation.table().map(|t| TableDesc {
            format: t.stage.name(),
            root: t.root,
            levels: t.levels,
        }),
        tree: us.trees.of(c),
    }
}

impl ArchUnit for UnitState {
    fn kind(&self) -> &'static str {
        "vtd"
    }
    fn kind_title(&self) -> &'static str {
        "VT-d"
    }
    fn name(&self) -> &str {
        &self.unit.name
    }
    fn id(&self) -> UnitId {
        UnitId {
            kind: "vtd",
            index: self.unit.index,
            base: self.unit.base,
            assumed: self.unit.assumed,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn text_head(&self, filter: &Filter, out: &mut dyn Write) -> io::Result<()> {
        text_unit_header(self, out)?;
        let items = listing(&self.scan.contexts, filter);
        text_structures(self, filter, &items, out)?;
        if !self.scan.problems.is_empty() {
            writeln!(out, "  problems:")?;
            for p in &self.scan.problems {
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
        Ok(())
    }

    fn json_head(&self, j: &mut Json<&mut dyn Write>, filter: &Filter) -> io::Result<()> {
        let u: &Unit = &self.unit;
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
        j.kv_str("mode", mode_name(self.scan.mode))?;
        j.kv_hex("root_table", self.scan.root_table.0)?;
        j.key("skipped")?;
        match &self.scan.skipped {
            Some(s) => j.string(s)?,
            None => j.null()?,
        }
        j.key("root_entries")?;
        j.begin_array(false)?;
        for r in &self.scan.roots {
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
        for p in &self.scan.problems {
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
        j.end_array()
    }

    fn entries(&self) -> usize {
        self.scan.contexts.len()
    }
    fn entry(&self, i: usize) -> EntryView {
        entry_view(self, &self.scan.contexts.get(i))
    }
    fn entry_iter(&self) -> Box<dyn Iterator<Item = EntryView> + '_> {
        Box::new(self.scan.contexts.iter().map(|c| entry_view(self, &c)))
    }
    fn listing(&self, filter: &Filter) -> Vec<Item> {
        listing(&self.scan.contexts, filter)
            .into_iter()
            .map(|i| match i {
                Listed::Context(ci) => Item::Entry(ci),
                Listed::Shared(run) => Item::Note {
                    at: run.start,
                    rid: run.rid,
                    text: shared_text(&self.scan, &run),
                },
            })
            .collect()
    }
    fn summary(&self, i: usize) -> String {
        context_summary(&self.scan.contexts.get(i))
    }
    fn json_entry(
        &self,
        j: &mut Json<&mut dyn Write>,
        i: usize,
        tree: Option<usize>,
    ) -> io::Result<()> {
        let c = &self.scan.contexts.get(i);
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
            return j.null();
        };
        j.begin_object(true)?;
        j.kv_uint("id", id as u64)?;
        j.kv_str("stage", pt.stage.name())?;
        j.kv_hex("root", pt.root.0)?;
        j.kv_uint("levels", pt.levels as u64)?;
        j.kv_uint("input_width", pt.width as u64)?;
        j.end_object()
    }
    fn json_after_devices(&self, j: &mut Json<&mut dyn Write>, filter: &Filter) -> io::Result<()> {
        j.key("shared_pasid_runs")?;
        j.begin_array(false)?;
        for item in listing(&self.scan.contexts, filter) {
            let Listed::Shared(run) = item else {
                continue;
            };
            let first = &self.scan.contexts.get(run.same_as);
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
        j.end_array()
    }
    fn text_tail(&self, image: &Image, filter: &Filter, out: &mut dyn Write) -> io::Result<usize> {
        let mut shown = 0;
        for (rid, pasid) in uncovered(self, filter) {
            shown += 1;
            let t = walk(&self.unit, image, rid, pasid, Iova(0), Access::Read);
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
        Ok(shown)
    }
    fn json_tail(
        &self,
        image: &Image,
        j: &mut Json<&mut dyn Write>,
        filter: &Filter,
    ) -> io::Result<()> {
        j.key("unlisted_devices")?;
        j.begin_array(false)?;
        for (rid, pasid) in uncovered(self, filter) {
            let t = walk(&self.unit, image, rid, pasid, Iova(0), Access::Read);
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
        j.end_array()
    }

    fn trees(&self) -> usize {
        self.trees.len()
    }
    fn tree(&self, t: usize) -> TableDesc {
        let pt = &self.trees.tables[t];
        TableDesc {
            format: pt.stage.name(),
            root: pt.root,
            levels: pt.levels,
        }
    }
    fn json_tree(&self, j: &mut Json<&mut dyn Write>, t: usize) -> io::Result<()> {
        let pt = &self.trees.tables[t];
        j.kv_str("stage", pt.stage.name())?;
        j.kv_hex("root", pt.root.0)?;
        j.kv_uint("levels", pt.levels as u64)?;
        j.kv_bool("exec", pt.exec)
    }
    fn walk_tree(&self, image: &Image, t: usize, visit: &mut dyn FnMut(&Mapping)) -> TableWalk {
        walk_table_with(&self.unit, image, &self.trees.tables[t], visit)
    }
    fn tree_tables(&self, image: &Image, t: usize) -> Vec<TreeTable> {
        let pt = &self.trees.tables[t];
        match pt.format(&self.unit) {
            Ok(f) => tables_of(&f, image, pt.root),
            Err(_) => Vec::new(),
        }
    }

    fn attrs(&self) -> Vec<(&'static str, String, bool)> {
        let u = &self.unit;
        vec![
            ("translation_enabled", u.enabled().to_string(), true),
            ("mode", mode_name(u.mode()).into(), false),
            ("root_table", u.root_table().to_string(), false),
        ]
    }

    fn serves(&self, rid: RequesterId) -> bool {
        self.devices.iter().any(|d| d.rid == rid)
    }
    fn translate(
        &self,
        image: &Image,
        rid: RequesterId,
        pasid: Option<u32>,
        iova: Iova,
        write: bool,
    ) -> Result<Walk, InspectError> {
        let u = &self.unit;
        if rid.segment != u.segment {
            return Err(InspectError::Usage(format!(
                "device {rid} is on PCI segment {:#06x}, but unit {} serves segment {:#06x}",
                rid.segment, u.name, u.segment
            )));
        }
        let access = if write { Access::Write } else { Access::Read };
        let t = walk(u, image, rid, pasid, iova, access);
        Ok(Walk {
            rid: t.rid,
            pasid: t.pasid,
            iova: t.iova,
            write,
            steps: t
                .steps
                .into_iter()
                .map(|s| Step {
                    what: s.what,
                    addr: s.addr,
                    raw: s.raw,
                    meaning: s.meaning,
                })
                .collect(),
            end: match t.result {
                WalkResult::Untranslated { pa } => WalkEnd::Untranslated { pa },
                WalkResult::Mapped {
                    pa,
                    perms,
                    page_size,
                    did,
                } => WalkEnd::Mapped {
                    pa,
                    perms,
                    page_size,
                    did,
                },
                WalkResult::Fault {
                    reason,
                    detail,
                    fpd,
                } => WalkEnd::Fault {
                    code: reason.code(),
                    reason: reason.description(),
                    detail,
                    fpd,
                },
            },
        })
    }

    fn verify(&self, image: &Image, ck: &mut Checker<'_>) -> Result<(), InspectError> {
        super::verify::verify_unit(self, image, ck)
    }

    fn linux(
        &self,
        part: LinuxPart,
        image: &Image,
        filter: &Filter,
        out: &mut dyn Write,
        progress: &mut Progress,
        done: &mut u64,
    ) -> io::Result<u64> {
        match part {
            LinuxPart::Unit => linux_unit(self, filter, out).map(|()| 0),
            LinuxPart::Devices => linux_devices(self, image, filter, out, progress, done),
        }
    }
}

// ----- Linux debugfs layout -----------------------------------------------------------

/// Linux `dmar_translation_struct` of one unit (drivers/iommu/intel/debugfs.c,
/// dmar_translation_struct_show).
fn linux_unit(us: &UnitState, filter: &Filter, out: &mut dyn Write) -> io::Result<()> {
    let u = &us.unit;
    if !u.enabled() {
        writeln!(out, "DMA Remapping is not enabled on {}", u.name)?;
        return Ok(());
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
    Ok(())
}

/// Linux `domain_translation_struct` of one unit's devices: one block per device with a
/// page table (the layout of the per-device files of Linux 6.x, one after another).
/// Returns the number of trees walked.
fn linux_devices(
    us: &UnitState,
    image: &Image,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &mut Progress,
    done: &mut u64,
) -> io::Result<u64> {
    let mut tree_walks = 0;
    // The device whose block listed each tree's entries.
    let mut listed: Vec<Option<usize>> = vec![None; us.trees.len()];
    for (ci, c) in us.scan.contexts.iter().enumerate() {
        let c = &c;
        *done += 1;
        progress.set(*done);
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
        tree_walks += 1;
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
            image,
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
    Ok(tree_walks)
}
