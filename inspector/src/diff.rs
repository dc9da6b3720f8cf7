//! `diff`: two images compared unit by unit and device by device.
//!
//! Reported: devices present in one image only; translation type changes; domain ID,
//! page-table root and level changes; mappings added, removed or changed (target,
//! permissions, page size); table pages that moved (a table covering the same IOVA at
//! the same level but at another address). With `semantic`, where the tables live and
//! which IDs tag them is ignored: only what each device's addresses translate to (and
//! with which permissions) is compared.
//!
//! Each distinct page-table tree of an image is walked once and devices refer to it;
//! each distinct pair of trees (A's, B's) is compared once and the devices using that
//! pair refer to the result, so memory and output grow with the tables, not with the
//! number of devices sharing them.

use crate::arch::TableDesc;
use crate::json::Json;
use crate::model::Loaded;
use crate::tree::TreeTable;
use iommu_core::pgtable::{Mapping, Perms};
use iommu_core::{PageSize, PhysAddr, RequesterId};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::sync::Arc;

/// Schema name of the JSON diff. v2: the differences of each distinct pair of page-table
/// trees are listed once (`table_diffs`) and devices refer to them (`table_diff`); v1
/// repeated them under every device.
pub const DIFF_SCHEMA: &str = "iommu-inspect/diff/v2";

/// Identity of a device across images: unit, requester, PASID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevKey {
    /// Unit MMIO base (or index for units described on the command line).
    pub unit: u64,
    /// Unit name (shared by the unit's devices).
    pub unit_name: Arc<str>,
    /// Requester.
    pub rid: RequesterId,
    /// PASID (scalable mode).
    pub pasid: Option<u32>,
}

/// What one image says about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevState {
    /// Domain ID.
    pub did: Option<u16>,
    /// Translation name.
    pub translation: &'static str,
    /// Fault code when blocked.
    pub blocked: Option<u8>,
    /// Page table.
    pub table: Option<TableDesc>,
    /// Index of its page-table tree in [`States::trees`].
    pub tree: Option<usize>,
}

/// One distinct page-table tree of an image, walked once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeState {
    /// The table.
    pub table: TableDesc,
    /// Mapping runs.
    pub mappings: Vec<Mapping>,
    /// Tables by position (empty with `semantic`).
    pub tables: Vec<TreeTable>,
    /// Problems the walk met.
    pub problems: usize,
}

/// What one image says: its distinct page-table trees, each walked once, and what its
/// devices are listed under (their entries are produced in key order by [`devices`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct States {
    /// Distinct trees (per unit, by [`crate::vtd::TreeKey`]); each walked once.
    pub trees: Vec<TreeState>,
    /// Index in `trees` of each unit's first tree.
    pub tree_base: Vec<usize>,
    /// Each unit's key (MMIO base, or index for units described on the command line)
    /// and name.
    pub units: Vec<(u64, Arc<str>)>,
}

/// Collects the distinct trees of an image, walking each once.
pub fn states(l: &Loaded, semantic: bool) -> States {
    let mut out = States::default();
    for u in &l.units {
        out.tree_base.push(out.trees.len());
        for t in 0..u.trees() {
            let mut mappings = Vec::new();
            let w = u.walk_tree(&l.image, t, &mut |m| mappings.push(*m));
            out.trees.push(TreeState {
                table: u.tree(t),
                mappings,
                tables: if semantic {
                    Vec::new()
                } else {
                    u.tree_tables(&l.image, t)
                },
                problems: w.problems.len() + w.fatal.is_some() as usize,
            });
        }
        out.units.push((u.id().key(), Arc::from(u.name())));
    }
    out
}

type Heads<'a> = Vec<std::iter::Peekable<Box<dyn Iterator<Item = (DevKey, DevState)> + 'a>>>;

/// The devices of image `l` (whose states are `s`) in key order, each key once (the
/// first unit's entry wins), made from the scan's shared records as they are reached:
/// nothing per (device, PASID) is held.
pub fn devices<'a>(l: &'a Loaded, s: &'a States) -> impl Iterator<Item = (DevKey, DevState)> + 'a {
    // Each unit's entries come in key order (bus, devfn, PASID); the units are merged.
    let mut heads: Heads<'a> = Vec::new();
    for (ui, u) in l.units.iter().enumerate() {
        let (unit, name) = s.units[ui].clone();
        let base = s.tree_base[ui];
        let it = u.entry_iter().map(move |c| {
            let key = DevKey {
                unit,
                unit_name: name.clone(),
                rid: c.rid,
                pasid: c.pasid,
            };
            let state = DevState {
                did: c.did,
                translation: c.translation,
                blocked: c.blocked,
                table: c.table,
                tree: c.tree.map(|t| base + t),
            };
            (key, state)
        });
        let it: Box<dyn Iterator<Item = (DevKey, DevState)> + 'a> = Box::new(it);
        heads.push(it.peekable());
    }
    let mut last: Option<DevKey> = None;
    std::iter::from_fn(move || loop {
        let mut best: Option<(usize, DevKey)> = None;
        for (i, h) in heads.iter_mut().enumerate() {
            if let Some((k, _)) = h.peek() {
                if best.as_ref().map_or(true, |(_, kb)| k < kb) {
                    best = Some((i, k.clone()));
                }
            }
        }
        let (k, st) = heads[best?.0].next()?;
        if last.as_ref() == Some(&k) {
            continue;
        }
        last = Some(k.clone());
        return Some((k, st));
    })
}

/// Kind of mapping difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Mapped in B only.
    Added,
    /// Mapped in A only.
    Removed,
    /// Mapped in both, differently.
    Changed,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }
}

/// The target of a range on one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    /// Physical address of the range's first byte.
    pub pa: PhysAddr,
    /// Permissions.
    pub perms: Perms,
    /// Page size.
    pub page_size: PageSize,
}

/// One differing IOVA range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDiff {
    /// Kind.
    pub change: Change,
    /// First IOVA.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// Image A's target (None when unmapped).
    pub a: Option<Side>,
    /// Image B's target.
    pub b: Option<Side>,
}

fn end(m: &Mapping) -> u128 {
    m.iova.0 as u128 + m.size as u128
}

fn side(m: &Mapping, pos: u128) -> Side {
    Side {
        pa: PhysAddr(m.pa.0 + (pos as u64 - m.iova.0)),
        perms: m.perms,
        page_size: m.page_size,
    }
}

/// The IOVA ranges where `a` and `b` differ, in IOVA order, merged where contiguous.
pub fn diff_mappings(a: &[Mapping], b: &[Mapping], semantic: bool) -> Vec<MapDiff> {
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut pos: u128 = 0;
    let mut out: Vec<MapDiff> = Vec::new();
    loop {
        while ia < a.len() && end(&a[ia]) <= pos {
            ia += 1;
        }
        while ib < b.len() && end(&b[ib]) <= pos {
            ib += 1;
        }
        if ia >= a.len() && ib >= b.len() {
            break;
        }
        let na = a.get(ia);
        let nb = b.get(ib);
        let ca = na.filter(|m| m.iova.0 as u128 <= pos);
        let cb = nb.filter(|m| m.iova.0 as u128 <= pos);
        if ca.is_none() && cb.is_none() {
            let s = [na, nb]
                .iter()
                .flatten()
                .map(|m| m.iova.0 as u128)
                .min()
                .unwrap_or(u128::MAX);
            pos = s;
            continue;
        }
        let mut stop = u128::MAX;
        for (c, n) in [(ca, na), (cb, nb)] {
            match (c, n) {
                (Some(m), _) => stop = stop.min(end(m)),
                (None, Some(m)) => stop = stop.min(m.iova.0 as u128),
                _ => {}
            }
        }
        let size = (stop - pos) as u64;
        let (sa, sb) = (ca.map(|m| side(m, pos)), cb.map(|m| side(m, pos)));
        let change = match (sa, sb) {
            (Some(_), None) => Some(Change::Removed),
            (None, Some(_)) => Some(Change::Added),
            (Some(x), Some(y)) => {
                let differs =
                    x.pa != y.pa || x.perms != y.perms || (!semantic && x.page_size != y.page_size);
                differs.then_some(Change::Changed)
            }
            (None, None) => None,
        };
        if let Some(change) = change {
            let d = MapDiff {
                change,
                iova: pos as u64,
                size,
                a: sa,
                b: sb,
            };
            let merged = out.last_mut().is_some_and(|p| {
                let cont = |x: Option<Side>, y: Option<Side>| match (x, y) {
                    (None, None) => true,
                    (Some(x), Some(y)) => {
                        x.perms == y.perms
                            && x.page_size == y.page_size
                            && x.pa.0.checked_add(p.size) == Some(y.pa.0)
                    }
                    _ => false,
                };
                if p.change == change
                    && p.iova.checked_add(p.size) == Some(d.iova)
                    && cont(p.a, d.a)
                    && cont(p.b, d.b)
                {
                    p.size += d.size;
                    true
                } else {
                    false
                }
            });
            if !merged {
                out.push(d);
            }
        }
        pos = stop;
    }
    out
}

/// A change of one attribute of a unit or device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrChange {
    /// What changed (`domain`, `root`, `levels`, `translation`, `rtaddr`...).
    pub what: &'static str,
    /// Value in A.
    pub a: String,
    /// Value in B.
    pub b: String,
}

/// A table that moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableMove {
    /// Level.
    pub level: u8,
    /// First IOVA it covers.
    pub iova: u64,
    /// Address in A.
    pub a: PhysAddr,
    /// Address in B.
    pub b: PhysAddr,
}

/// Differences between a page-table tree of A and one of B (either may be absent: a
/// device that gained or lost its table). Computed once per distinct pair of trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDiff {
    /// A's table.
    pub a: Option<TableDesc>,
    /// B's table.
    pub b: Option<TableDesc>,
    /// Mapping differences.
    pub mappings: Vec<MapDiff>,
    /// Tables that moved.
    pub moved: Vec<TableMove>,
    /// Tables at positions only A has / only B has.
    pub tables_only: (usize, usize),
    /// Walk problems in A's tree / B's tree.
    pub problems: (usize, usize),
}

impl TableDiff {
    /// Whether the trees differ (as compared).
    pub fn differs(&self) -> bool {
        !self.mappings.is_empty()
            || !self.moved.is_empty()
            || self.tables_only != (0, 0)
            || self.problems.0 != self.problems.1
    }
}

/// Differences of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevDiff {
    /// The device.
    pub key: DevKey,
    /// `only-in-a`, `only-in-b` or `changed`.
    pub status: &'static str,
    /// Attribute changes.
    pub changes: Vec<AttrChange>,
    /// Index in [`Diff::tables`] of the differences of its page tables, if they differ.
    pub table_diff: Option<usize>,
    /// Last PASID of a run of the device's PASIDs with the same differences (`key.pasid`
    /// is the first); `None` for one entry.
    pub pasid_last: Option<u32>,
    /// Number of entries in the run (1 for one).
    pub entries: usize,
}

/// Differences of one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitDiff {
    /// Unit name.
    pub name: String,
    /// Changes.
    pub changes: Vec<AttrChange>,
}

/// The whole diff.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Diff {
    /// Semantic comparison.
    pub semantic: bool,
    /// Unit-level differences.
    pub units: Vec<UnitDiff>,
    /// Device-level differences.
    pub devices: Vec<DevDiff>,
    /// Page-table differences, one per distinct pair of trees that differ; devices
    /// refer to them.
    pub tables: Vec<TableDiff>,
    /// Distinct page-table trees walked in A and in B (each once).
    pub tree_walks: (usize, usize),
}

impl Diff {
    /// Whether the images are the same (as compared).
    pub fn same(&self) -> bool {
        self.units.is_empty() && self.devices.is_empty()
    }
}

fn opt_hex16(v: Option<u16>) -> String {
    v.map_or("none".into(), |d| format!("{d:#06x}"))
}

/// Compares two loaded images.
pub fn diff(a: &Loaded, b: &Loaded, semantic: bool) -> Diff {
    let mut d = Diff {
        semantic,
        ..Diff::default()
    };
    for ua in &a.units {
        let ub = b.units.iter().find(|u| u.id().same(&ua.id()));
        let mut changes = Vec::new();
        match ub {
            None => changes.push(AttrChange {
                what: "unit",
                a: "present".into(),
                b: "absent".into(),
            }),
            Some(ub) => {
                for ((what, x, in_semantic), (_, y, _)) in ua.attrs().into_iter().zip(ub.attrs()) {
                    if (in_semantic || !semantic) && x != y {
                        changes.push(AttrChange { what, a: x, b: y });
                    }
                }
            }
        }
        if !changes.is_empty() {
            d.units.push(UnitDiff {
                name: ua.name().to_string(),
                changes,
            });
        }
    }
    for ub in &b.units {
        if !a.units.iter().any(|u| u.id().same(&ub.id())) {
            d.units.push(UnitDiff {
                name: ub.name().to_string(),
                changes: vec![AttrChange {
                    what: "unit",
                    a: "absent".into(),
                    b: "present".into(),
                }],
            });
        }
    }
    let sa = states(a, semantic);
    let sb = states(b, semantic);
    d.tree_walks = (sa.trees.len(), sb.trees.len());
    // Differences of each distinct pair of trees, computed once.
    let mut pairs: HashMap<(Option<usize>, Option<usize>), Option<usize>> = HashMap::new();
    let mut da = devices(a, &sa).peekable();
    let mut db = devices(b, &sb).peekable();
    loop {
        let order = match (da.peek(), db.peek()) {
            (None, None) => break,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        let (k, x, y) = match order {
            Ordering::Less => {
                let (k, x) = da.next().expect("peeked");
                (k, Some(x), None)
            }
            Ordering::Greater => {
                let (k, y) = db.next().expect("peeked");
                (k, None, Some(y))
            }
            Ordering::Equal => {
                let (k, x) = da.next().expect("peeked");
                let (_, y) = db.next().expect("peeked");
                (k, Some(x), Some(y))
            }
        };
        let k = &k;
        let only = |status| DevDiff {
            key: k.clone(),
            status,
            changes: vec![],
            table_diff: None,
            pasid_last: None,
            entries: 1,
        };
        let dd = match (x, y) {
            (Some(_), None) => only("only-in-a"),
            (None, Some(_)) => only("only-in-b"),
            (Some(x), Some(y)) => {
                let mut changes = attr_changes(&x, &y, semantic);
                let table_diff = *pairs.entry((x.tree, y.tree)).or_insert_with(|| {
                    let ta = x.tree.map(|t| &sa.trees[t]);
                    let tb = y.tree.map(|t| &sb.trees[t]);
                    let td = table_diff(ta, tb, semantic);
                    td.differs().then(|| {
                        d.tables.push(td);
                        d.tables.len() - 1
                    })
                });
                if let Some(t) = table_diff {
                    let (pa, pb) = d.tables[t].problems;
                    if pa != pb {
                        changes.push(AttrChange {
                            what: "walk_problems",
                            a: pa.to_string(),
                            b: pb.to_string(),
                        });
                    }
                }
                if changes.is_empty() && table_diff.is_none() {
                    continue;
                }
                DevDiff {
                    key: k.clone(),
                    status: "changed",
                    changes,
                    table_diff,
                    pasid_last: None,
                    entries: 1,
                }
            }
            (None, None) => continue,
        };
        // A device's PASIDs with the same differences (PASID entries that share a PASID
        // table or directory, or a page table) make one run.
        if let Some(p) = d.devices.last_mut() {
            if let (Some(_), Some(pasid)) = (p.key.pasid, dd.key.pasid) {
                if p.key.unit == dd.key.unit
                    && p.key.rid == dd.key.rid
                    && p.status == dd.status
                    && p.changes == dd.changes
                    && p.table_diff == dd.table_diff
                {
                    p.pasid_last = Some(pasid);
                    p.entries += 1;
                    continue;
                }
            }
        }
        d.devices.push(dd);
    }
    d
}

/// The attribute changes of a device present in both images.
fn attr_changes(x: &DevState, y: &DevState, semantic: bool) -> Vec<AttrChange> {
    let mut changes = Vec::new();
    if x.translation != y.translation || x.blocked != y.blocked {
        let show = |s: &DevState| match s.blocked {
            Some(c) => format!("{} (fault {c:#04x})", s.translation),
            None => s.translation.to_string(),
        };
        changes.push(AttrChange {
            what: "translation",
            a: show(x),
            b: show(y),
        });
    }
    if !semantic && x.did != y.did {
        changes.push(AttrChange {
            what: "domain",
            a: opt_hex16(x.did),
            b: opt_hex16(y.did),
        });
    }
    if let (Some(p), Some(q)) = (&x.table, &y.table) {
        if !semantic && p.root != q.root {
            changes.push(AttrChange {
                what: "root",
                a: p.root.to_string(),
                b: q.root.to_string(),
            });
        }
        if !semantic && (p.levels != q.levels || p.format != q.format) {
            changes.push(AttrChange {
                what: "levels",
                a: format!("{} {}", p.format, p.levels),
                b: format!("{} {}", q.format, q.levels),
            });
        }
    }
    changes
}

/// The differences between tree `x` of A and tree `y` of B (an absent tree has no
/// mappings and no tables).
fn table_diff(x: Option<&TreeState>, y: Option<&TreeState>, semantic: bool) -> TableDiff {
    fn maps(t: Option<&TreeState>) -> &[Mapping] {
        t.map_or(&[], |t| &t.mappings)
    }
    let mut moved = Vec::new();
    let mut only = (0, 0);
    if !semantic {
        let pos = |t: Option<&TreeState>| -> BTreeMap<(u8, u64), PhysAddr> {
            t.map_or(&[][..], |t| &t.tables[..])
                .iter()
                .map(|t| ((t.level, t.iova), t.addr))
                .collect()
        };
        let (pa, pb) = (pos(x), pos(y));
        for (k2, &aa) in &pa {
            match pb.get(k2) {
                Some(&bb) if bb != aa => moved.push(TableMove {
                    level: k2.0,
                    iova: k2.1,
                    a: aa,
                    b: bb,
                }),
                Some(_) => {}
                None => only.0 += 1,
            }
        }
        only.1 = pb.keys().filter(|k2| !pa.contains_key(k2)).count();
    }
    TableDiff {
        a: x.map(|t| t.table),
        b: y.map(|t| t.table),
        mappings: diff_mappings(maps(x), maps(y), semantic),
        moved,
        tables_only: only,
        problems: (x.map_or(0, |t| t.problems), y.map_or(0, |t| t.problems)),
    }
}

fn side_text(s: &Side) -> String {
    format!("pa {:#x} {} {}", s.pa.0, s.perms, s.page_size)
}

fn dev_label(dd: &DevDiff) -> String {
    let k = &dd.key;
    match (k.pasid, dd.pasid_last) {
        (Some(p), Some(q)) => format!(
            "{} pasids {p:#x}-{q:#x} ({} entries, {})",
            k.rid, dd.entries, k.unit_name
        ),
        (Some(p), None) => format!("{} pasid {p:#x} ({})", k.rid, k.unit_name),
        (None, _) => format!("{} ({})", k.rid, k.unit_name),
    }
}

/// Most mapping differences and table moves listed per device in text output.
const TEXT_LIST_LIMIT: usize = 200;

/// The differences of a pair of trees, listed under the first device that has them.
fn text_table_diff(td: &TableDiff, a: &str, b: &str, out: &mut dyn Write) -> io::Result<()> {
    for m in td.mappings.iter().take(TEXT_LIST_LIMIT) {
        let range = format!("iova {:#x}-{:#x}", m.iova, m.iova + (m.size - 1));
        match (m.change, &m.a, &m.b) {
            (Change::Removed, Some(x), _) => writeln!(out, "  - {range} {}", side_text(x))?,
            (Change::Added, _, Some(y)) => writeln!(out, "  + {range} {}", side_text(y))?,
            (_, Some(x), Some(y)) => {
                writeln!(out, "  ~ {range} {} -> {}", side_text(x), side_text(y))?
            }
            _ => {}
        }
    }
    if td.mappings.len() > TEXT_LIST_LIMIT {
        writeln!(
            out,
            "  ... {} more mapping differences (all in --json)",
            td.mappings.len() - TEXT_LIST_LIMIT
        )?;
    }
    for t in td.moved.iter().take(TEXT_LIST_LIMIT) {
        writeln!(
            out,
            "  table moved: level {} table for iova {:#x}: {} -> {}",
            t.level, t.iova, t.a, t.b
        )?;
    }
    if td.moved.len() > TEXT_LIST_LIMIT {
        writeln!(
            out,
            "  ... {} more table moves (all in --json)",
            td.moved.len() - TEXT_LIST_LIMIT
        )?;
    }
    if td.tables_only != (0, 0) {
        writeln!(
            out,
            "  tables only in {a}: {}, only in {b}: {}",
            td.tables_only.0, td.tables_only.1
        )?;
    }
    Ok(())
}

/// Writes the diff as text: a pair of page-table trees that differ is listed once, under
/// the first device using it; other devices using the same pair refer to it.
pub fn write_text(d: &Diff, a: &str, b: &str, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "--- {a}")?;
    writeln!(out, "+++ {b}")?;
    if d.semantic {
        writeln!(out, "(semantic: comparing translations only)")?;
    }
    for u in &d.units {
        for c in &u.changes {
            writeln!(out, "unit {}: {} {} -> {}", u.name, c.what, c.a, c.b)?;
        }
    }
    // The device under which each table difference was listed.
    let mut shown: Vec<Option<usize>> = vec![None; d.tables.len()];
    for (di, dd) in d.devices.iter().enumerate() {
        match dd.status {
            "only-in-a" => {
                writeln!(out, "device {}: only in {a}", dev_label(dd))?;
                continue;
            }
            "only-in-b" => {
                writeln!(out, "device {}: only in {b}", dev_label(dd))?;
                continue;
            }
            _ => writeln!(out, "device {}:", dev_label(dd))?,
        }
        for c in &dd.changes {
            writeln!(out, "  {} {} -> {}", c.what, c.a, c.b)?;
        }
        let Some(t) = dd.table_diff else {
            continue;
        };
        if let Some(first) = shown[t] {
            writeln!(
                out,
                "  page tables differ as for device {} (above)",
                dev_label(&d.devices[first])
            )?;
            continue;
        }
        shown[t] = Some(di);
        text_table_diff(&d.tables[t], a, b, out)?;
    }
    if d.same() {
        writeln!(out, "same")?;
    }
    Ok(())
}

fn json_side<W: Write>(j: &mut Json<W>, k: &str, s: &Option<Side>) -> io::Result<()> {
    j.key(k)?;
    match s {
        None => j.null(),
        Some(s) => {
            j.begin_object(true)?;
            j.kv_hex("pa", s.pa.0)?;
            j.kv_str("perms", &s.perms.to_string())?;
            j.kv_hex("page_size", s.page_size.bytes())?;
            j.end_object()
        }
    }
}

fn json_changes<W: Write>(j: &mut Json<W>, c: &[AttrChange]) -> io::Result<()> {
    j.key("changes")?;
    j.begin_array(false)?;
    for c in c {
        j.begin_object(true)?;
        j.kv_str("what", c.what)?;
        j.kv_str("a", &c.a)?;
        j.kv_str("b", &c.b)?;
        j.end_object()?;
    }
    j.end_array()
}

/// Writes the diff as JSON (schema [`DIFF_SCHEMA`]).
pub fn write_json(d: &Diff, a: &str, b: &str, out: &mut dyn Write) -> io::Result<()> {
    let mut j = Json::new(out);
    j.begin_object(false)?;
    j.kv_str("schema", DIFF_SCHEMA)?;
    j.kv_str("a", a)?;
    j.kv_str("b", b)?;
    j.kv_bool("semantic", d.semantic)?;
    j.kv_bool("same", d.same())?;
    j.key("units")?;
    j.begin_array(false)?;
    for u in &d.units {
        j.begin_object(false)?;
        j.kv_str("unit", &u.name)?;
        json_changes(&mut j, &u.changes)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.key("devices")?;
    j.begin_array(false)?;
    for dd in &d.devices {
        j.begin_object(false)?;
        j.kv_str("unit", &dd.key.unit_name)?;
        j.kv_str("bdf", &dd.key.rid.to_string())?;
        j.key("pasid")?;
        match dd.key.pasid {
            Some(p) => j.uint(p as u64)?,
            None => j.null()?,
        }
        j.kv_opt_uint("pasid_last", dd.pasid_last.or(dd.key.pasid).map(u64::from))?;
        j.kv_uint("entries", dd.entries as u64)?;
        j.kv_str("status", dd.status)?;
        json_changes(&mut j, &dd.changes)?;
        j.kv_opt_uint("table_diff", dd.table_diff.map(|t| t as u64))?;
        j.end_object()?;
    }
    j.end_array()?;
    j.key("table_diffs")?;
    j.begin_array(false)?;
    for (id, td) in d.tables.iter().enumerate() {
        j.begin_object(false)?;
        j.kv_uint("id", id as u64)?;
        json_table(&mut j, "a", &td.a)?;
        json_table(&mut j, "b", &td.b)?;
        j.key("mappings")?;
        j.begin_array(false)?;
        for m in &td.mappings {
            j.begin_object(true)?;
            j.kv_str("change", m.change.name())?;
            j.kv_hex("iova", m.iova)?;
            j.kv_hex("iova_last", m.iova + (m.size - 1))?;
            j.kv_hex("size", m.size)?;
            json_side(&mut j, "a", &m.a)?;
            json_side(&mut j, "b", &m.b)?;
            j.end_object()?;
        }
        j.end_array()?;
        j.key("tables_moved")?;
        j.begin_array(false)?;
        for t in &td.moved {
            j.begin_object(true)?;
            j.kv_uint("level", t.level as u64)?;
            j.kv_hex("iova", t.iova)?;
            j.kv_hex("a", t.a.0)?;
            j.kv_hex("b", t.b.0)?;
            j.end_object()?;
        }
        j.end_array()?;
        j.kv_uint("tables_only_in_a", td.tables_only.0 as u64)?;
        j.kv_uint("tables_only_in_b", td.tables_only.1 as u64)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()
}

fn json_table<W: Write>(j: &mut Json<W>, k: &str, t: &Option<TableDesc>) -> io::Result<()> {
    j.key(k)?;
    match t {
        None => j.null(),
        Some(t) => {
            j.begin_object(true)?;
            j.kv_str("stage", t.format)?;
            j.kv_hex("root", t.root.0)?;
            j.kv_uint("levels", t.levels as u64)?;
            j.end_object()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_core::Iova;

    fn m(iova: u64, pa: u64, size: u64, perms: Perms) -> Mapping {
        Mapping {
            iova: Iova(iova),
            pa: PhysAddr(pa),
            size,
            perms,
            page_size: PageSize::SIZE_4K,
        }
    }

    #[test]
    fn same_translation_different_runs_is_no_diff() {
        let a = [m(0x1000, 0x8000, 0x2000, Perms::RW)];
        let b = [
            m(0x1000, 0x8000, 0x1000, Perms::RW),
            m(0x2000, 0x9000, 0x1000, Perms::RW),
        ];
        assert!(diff_mappings(&a, &b, false).is_empty());
    }

    #[test]
    fn added_removed_changed() {
        let a = [
            m(0x1000, 0x8000, 0x3000, Perms::RW),
            m(0x10000, 0x20000, 0x1000, Perms::R),
        ];
        let b = [
            m(0x1000, 0x8000, 0x1000, Perms::RW),
            m(0x2000, 0x9000, 0x1000, Perms::R),
            m(0x3000, 0x7000, 0x1000, Perms::RW),
            m(0x40000, 0x40000, 0x1000, Perms::RW),
        ];
        let d = diff_mappings(&a, &b, false);
        let kinds: Vec<(Change, u64, u64)> = d.iter().map(|x| (x.change, x.iova, x.size)).collect();
        assert_eq!(
            kinds,
            vec![
                (Change::Changed, 0x2000, 0x1000),
                (Change::Changed, 0x3000, 0x1000),
                (Change::Removed, 0x10000, 0x1000),
                (Change::Added, 0x40000, 0x1000),
            ]
        );
        assert_eq!(d[0].a.unwrap().pa, PhysAddr(0x9000));
        assert_eq!(d[0].b.unwrap().perms, Perms::R);
        assert_eq!(d[1].b.unwrap().pa, PhysAddr(0x7000));
    }

    #[test]
    fn page_size_counts_only_without_semantic() {
        let a = [m(0, 0x20_0000, 0x20_0000, Perms::RW)];
        let mut b = a;
        b[0].page_size = PageSize::SIZE_2M;
        assert_eq!(diff_mappings(&a, &b, false).len(), 1);
        assert!(diff_mappings(&a, &b, true).is_empty());
    }

    #[test]
    fn mapping_at_top_of_address_space() {
        let a = [m(u64::MAX - 0xfff, 0x1000, 0x1000, Perms::RW)];
        let d = diff_mappings(&a, &[], false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].change, Change::Removed);
    }
}
