//! A VT-d unit's state as the commands use it: its scanned structures, the distinct
//! page-table trees of its entries, the listing of its entries (repeated PASID
//! structures referred to once) and the walk of one of its page tables.

use super::scan::{self, Context, Contexts, Scan};
use super::{PageTable, Stage, Unit};
use crate::image::{DeviceNote, Image};
use crate::model::{walk_format, Filter, TableWalk};
use iommu_core::pgtable::Mapping;
use iommu_core::{PhysAddr, RequesterId};
use std::collections::HashMap;
use vtd::hw::pasid::PasidDirEntry;
use vtd::hw::root::ScalableContextEntry;

/// A unit and its structures.
#[derive(Debug)]
pub struct UnitState {
    /// The unit.
    pub unit: Unit,
    /// Its structures.
    pub scan: Scan,
    /// Devices the snapshot's device note puts behind it.
    pub devices: Vec<DeviceNote>,
    /// The distinct page-table trees its entries point to, and which entry uses which.
    pub trees: Trees,
}

/// Identity of a page-table tree on a unit: everything that changes what a walk of it
/// decodes (the unit's CAP/ECAP and host address width are the unit's own). Entries with
/// the same key share one tree: it is walked once and they refer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeKey {
    /// Stage (entry format).
    pub stage: Stage,
    /// Root table address.
    pub root: PhysAddr,
    /// Levels.
    pub levels: u8,
    /// Execute permission decoded (second stage with SLEE).
    pub exec: bool,
}

impl TreeKey {
    /// The identity of `pt`'s tree.
    pub fn of(pt: &PageTable) -> Self {
        Self {
            stage: pt.stage,
            root: pt.root,
            levels: pt.levels,
            exec: pt.exec,
        }
    }
}

/// The distinct page-table trees of a unit's entries, in order of first use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trees {
    /// One page table per distinct tree (the first entry's, input width included).
    pub tables: Vec<PageTable>,
    /// How many entries use each tree.
    pub users: Vec<usize>,
    /// Index of each tree by identity.
    ids: HashMap<TreeKey, usize>,
}

impl Trees {
    /// Groups the page tables of `contexts` by [`TreeKey`].
    pub fn index(contexts: &Contexts) -> Self {
        let mut t = Trees::default();
        for c in contexts.iter() {
            let Some(pt) = c.translation.table() else {
                continue;
            };
            let i = *t.ids.entry(TreeKey::of(pt)).or_insert_with(|| {
                t.tables.push(*pt);
                t.users.push(0);
                t.tables.len() - 1
            });
            t.users[i] += 1;
        }
        t
    }

    /// The index of the tree `c` translates through, if it has a page table.
    pub fn of(&self, c: &Context) -> Option<usize> {
        c.translation
            .table()
            .and_then(|pt| self.ids.get(&TreeKey::of(pt)).copied())
    }

    /// Number of distinct trees.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether no entry has a page table.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

impl UnitState {
    /// Scans `unit`'s structures in `image`, with the devices the image's device note
    /// puts behind it.
    pub fn scan(mut unit: Unit, image: &Image) -> Self {
        let devices: Vec<DeviceNote> = image
            .devices()
            .iter()
            // A unit made up from options has a base only with --vtd-base.
            .filter(|d| d.unit == unit.base && unit.base_known)
            .copied()
            .collect();
        if let Some(d) = devices.first() {
            unit.segment = d.rid.segment;
        }
        let scan = scan::scan(&unit, image);
        let trees = Trees::index(&scan.contexts);
        UnitState {
            unit,
            scan,
            devices,
            trees,
        }
    }
}

/// A PASID structure that several entries share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedStructure {
    /// A PASID directory (address, entries) that another context entry points to too.
    Directory(PhysAddr, u64),
    /// A PASID table that another PASID-directory entry points to too.
    Table(PhysAddr),
}

/// A run of one device's scalable-mode entries that repeat a PASID directory or PASID
/// table listed before: the listing refers to the first, instead of repeating it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRun {
    /// The device.
    pub rid: RequesterId,
    /// What it shares.
    pub what: SharedStructure,
    /// Index (in the scan's contexts) of the first entry of the run.
    pub start: usize,
    /// Index of the context listed in full whose structure the run repeats.
    pub same_as: usize,
    /// First and last PASID of the run.
    pub pasids: (u32, u32),
    /// Number of entries in the run.
    pub entries: usize,
    /// The run holds the device's RID_PASID entry.
    pub rid_pasid: bool,
}

/// One item of a listing of a unit's entries: an entry in full, or a run of entries
/// that repeat a structure already listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// The context at this index of the scan's contexts, in full.
    Context(usize),
    /// Entries repeating a structure listed before.
    Shared(SharedRun),
}

/// The items [`list_entries`] visits, collected.
pub fn listing(contexts: &Contexts, filter: &Filter) -> Vec<Listed> {
    let mut items = Vec::new();
    let r: Result<(), std::convert::Infallible> = list_entries(contexts, filter, |i| {
        items.push(i);
        Ok(())
    });
    let Ok(()) = r;
    items
}

/// The PASID directory (address, entries) and PASID table of a scalable-mode context
/// with a PASID entry.
fn pasid_structures(c: &Context) -> Option<((PhysAddr, u64), PhysAddr)> {
    let (_, de) = c.pasid_dir_entry?;
    let q = &c.context_entry.1;
    if q.len() != 4 {
        return None;
    }
    let ce = ScalableContextEntry::from_qwords([q[0], q[1], q[2], q[3]]);
    let table = PasidDirEntry::from_qwords([de]).table();
    Some((
        (PhysAddr(ce.pasid_dir()), ce.pasid_dir_entries()),
        PhysAddr(table),
    ))
}

/// Walks the entries of `contexts` that pass `filter` in order and calls `visit` with
/// each item to list: every entry once, except that a PASID directory or PASID table
/// met again (through another context entry or directory entry) becomes one
/// [`Listed::Shared`] run per device and stretch of consecutive directory entries. A
/// listing so bounded grows with the distinct structures (and the directory entries
/// pointing at them), not with the PASIDs they make reachable.
pub fn list_entries<E>(
    contexts: &Contexts,
    filter: &Filter,
    mut visit: impl FnMut(Listed) -> Result<(), E>,
) -> Result<(), E> {
    let mut dirs: HashMap<(PhysAddr, u64), usize> = HashMap::new();
    let mut tables: HashMap<PhysAddr, usize> = HashMap::new();
    // The context entry and directory entry being listed, and whether their structure
    // is skipped (repeats one listed under this index).
    let mut ce_at: Option<PhysAddr> = None;
    let mut dir_same: Option<usize> = None;
    let mut de_at: Option<PhysAddr> = None;
    let mut table_same: Option<usize> = None;
    let mut pending: Option<SharedRun> = None;
    for (ci, c) in contexts.iter().enumerate() {
        let c = &c;
        if !filter.context(c) {
            continue;
        }
        let (Some(pasid), Some((dir, table))) = (c.pasid, pasid_structures(c)) else {
            if let Some(p) = pending.take() {
                visit(Listed::Shared(p))?;
            }
            ce_at = None;
            de_at = None;
            visit(Listed::Context(ci))?;
            continue;
        };
        if ce_at != Some(c.context_entry.0) {
            ce_at = Some(c.context_entry.0);
            de_at = None;
            dir_same = dirs.get(&dir).copied();
            if dir_same.is_none() {
                dirs.insert(dir, ci);
            }
        }
        let de = c.pasid_dir_entry.map(|(a, _)| a);
        if dir_same.is_none() && de_at != de {
            de_at = de;
            table_same = tables.get(&table).copied();
            if table_same.is_none() {
                tables.insert(table, ci);
            }
        }
        let shared = match (dir_same, table_same) {
            (Some(f), _) => Some((SharedStructure::Directory(dir.0, dir.1), f)),
            (None, Some(f)) => Some((SharedStructure::Table(table), f)),
            (None, None) => None,
        };
        let Some((what, same_as)) = shared else {
            if let Some(p) = pending.take() {
                visit(Listed::Shared(p))?;
            }
            visit(Listed::Context(ci))?;
            continue;
        };
        // Extend the pending run when it is the same device and structure, with no
        // directory entry between (a PASID table covers 64 PASIDs).
        if let Some(p) = pending.as_mut() {
            if p.rid == c.rid
                && p.what == what
                && p.same_as == same_as
                && (matches!(what, SharedStructure::Directory(..))
                    || pasid / 64 <= p.pasids.1 / 64 + 1)
            {
                p.pasids.1 = pasid;
                p.entries += 1;
                p.rid_pasid |= c.rid_pasid;
                continue;
            }
            let p = pending.take().expect("pending run");
            visit(Listed::Shared(p))?;
        }
        pending = Some(SharedRun {
            rid: c.rid,
            what,
            start: ci,
            same_as,
            pasids: (pasid, pasid),
            entries: 1,
            rid_pasid: c.rid_pasid,
        });
    }
    if let Some(p) = pending {
        visit(Listed::Shared(p))?;
    }
    Ok(())
}

/// Walks a context's page table, streaming each run to `visit`; returns the tables and
/// problems (with empty `mappings`).
pub fn walk_table_with(
    unit: &Unit,
    mem: &Image,
    pt: &PageTable,
    visit: impl FnMut(&Mapping),
) -> TableWalk {
    let format = match pt.format(unit) {
        Ok(f) => f,
        Err(e) => {
            return TableWalk {
                fatal: Some(format!("page-table format: {e}")),
                ..TableWalk::default()
            }
        }
    };
    walk_format(&format, mem, pt.root, visit)
}

/// Walks a context's page table and collects the runs.
pub fn walk_table(unit: &Unit, mem: &Image, pt: &PageTable) -> TableWalk {
    let mut maps = Vec::new();
    let mut w = walk_table_with(unit, mem, pt, |m| maps.push(*m));
    w.mappings = maps;
    w
}

impl Filter {
    /// Whether a context passes the device, PASID and domain filters.
    pub fn context(&self, c: &Context) -> bool {
        self.matches(c.rid, c.pasid, c.did)
    }
}

#[cfg(test)]
mod tree_tests {
    use super::*;
    use crate::vtd::scan::Translation;

    fn ctx(devfn: u8, root: u64, levels: u8, exec: bool, stage: Stage) -> Context {
        Context {
            rid: RequesterId {
                segment: 0,
                bus: 0,
                devfn,
            },
            pasid: None,
            rid_pasid: false,
            root_entry: (PhysAddr(0x1000), [0; 2]),
            context_entry: (PhysAddr(0x2000 + devfn as u64 * 16), vec![0; 2]),
            pasid_dir_entry: None,
            pasid_entry: None,
            did: Some(1),
            fpd: false,
            translation: Translation::Tables(PageTable {
                stage,
                root: PhysAddr(root),
                levels,
                exec,
                width: 48,
            }),
        }
    }

    /// Entries with the same root but another stage, level count or execute decoding
    /// walk the same pages differently: they are distinct trees.
    #[test]
    fn tree_identity_includes_everything_that_changes_the_decode() {
        let cs = [
            ctx(0, 0x5000, 4, false, Stage::Second),
            ctx(1, 0x5000, 4, false, Stage::Second),
            ctx(2, 0x5000, 4, true, Stage::Second),
            ctx(3, 0x5000, 3, false, Stage::Second),
            ctx(4, 0x5000, 4, false, Stage::First),
            ctx(5, 0x6000, 4, false, Stage::Second),
        ];
        let t = Trees::index(&Contexts::from(cs.to_vec()));
        assert_eq!(t.len(), 5);
        assert_eq!(t.users, vec![2, 1, 1, 1, 1]);
        assert_eq!(
            cs.iter().map(|c| t.of(c)).collect::<Vec<_>>(),
            vec![Some(0), Some(0), Some(1), Some(2), Some(3), Some(4)]
        );
    }
}
