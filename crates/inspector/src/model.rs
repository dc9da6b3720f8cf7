//! An image's IOMMU state: its units with their scanned structures, and for any context
//! the mappings of its page table.

use crate::error::InspectError;
use crate::image::{DeviceNote, Image, OpenAs};
use crate::vtd::scan::{self, Context, Scan};
use crate::vtd::{PageTable, Stage, Unit, UnitOverride};
use iommu_core::pgtable::{walk_with, Mapping, TablePage, WalkError, WalkLimits};
use iommu_core::{PhysAddr, RequesterId};
use std::collections::HashMap;
use std::path::Path;

/// How to open an image and describe its units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// ELF or raw.
    pub open: OpenAs,
    /// Command-line unit description.
    pub unit: UnitOverride,
}

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
    /// For each of the scan's contexts (same order), the index of its tree.
    pub of_context: Vec<Option<usize>>,
}

impl Trees {
    /// Groups the page tables of `contexts` by [`TreeKey`].
    pub fn index(contexts: &[Context]) -> Self {
        let mut t = Trees::default();
        let mut ids: HashMap<TreeKey, usize> = HashMap::new();
        t.of_context.reserve_exact(contexts.len());
        for c in contexts {
            let id = c.translation.table().map(|pt| {
                *ids.entry(TreeKey::of(pt)).or_insert_with(|| {
                    t.tables.push(*pt);
                    t.users.push(0);
                    t.tables.len() - 1
                })
            });
            if let Some(i) = id {
                t.users[i] += 1;
            }
            t.of_context.push(id);
        }
        t
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

/// An opened image with its units scanned.
#[derive(Debug)]
pub struct Loaded {
    /// The image.
    pub image: Image,
    /// Its VT-d units.
    pub units: Vec<UnitState>,
}

impl Loaded {
    /// Opens `path` and scans every unit.
    pub fn open(path: &Path, opts: &LoadOptions) -> Result<Self, InspectError> {
        let image = Image::open(path, opts.open)?;
        Self::from_image(image, opts)
    }

    /// Scans every unit of an opened image.
    pub fn from_image(image: Image, opts: &LoadOptions) -> Result<Self, InspectError> {
        let units = Unit::from_image(&image, &opts.unit)?;
        let units = units
            .into_iter()
            .map(|mut unit| {
                let devices: Vec<DeviceNote> = image
                    .devices()
                    .iter()
                    .filter(|d| d.unit == unit.base && !unit.assumed)
                    .copied()
                    .collect();
                if let Some(d) = devices.first() {
                    unit.segment = d.rid.segment;
                }
                let scan = scan::scan(&unit, &image);
                let trees = Trees::index(&scan.contexts);
                UnitState {
                    unit,
                    scan,
                    devices,
                    trees,
                }
            })
            .collect();
        Ok(Self { image, units })
    }
}

/// Limits of the mapping walks: lenient (problems are listed, the walk goes on).
pub fn walk_limits() -> WalkLimits {
    WalkLimits::lenient()
}

/// What a page-table walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableWalk {
    /// Coalesced mapping runs, IOVA ascending.
    pub mappings: Vec<Mapping>,
    /// Table pages read.
    pub tables: Vec<TablePage>,
    /// Problems met (bad entries, unreadable tables, cycles, aliases).
    pub problems: Vec<WalkError>,
    /// A problem that stopped the walk before it started (bad format or root level).
    pub fatal: Option<String>,
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
    match walk_with(&format, mem, pt.root, &walk_limits(), visit) {
        Ok(s) => TableWalk {
            mappings: Vec::new(),
            tables: s.tables,
            problems: s.problems,
            fatal: None,
        },
        Err(e) => TableWalk {
            fatal: Some(e.to_string()),
            ..TableWalk::default()
        },
    }
}

/// Walks a context's page table and collects the runs.
pub fn walk_table(unit: &Unit, mem: &Image, pt: &PageTable) -> TableWalk {
    let mut maps = Vec::new();
    let mut w = walk_table_with(unit, mem, pt, |m| maps.push(*m));
    w.mappings = maps;
    w
}

/// Which devices to show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this requester (segment compared too).
    pub device: Option<RequesterId>,
    /// Only this PASID.
    pub pasid: Option<u32>,
    /// Only this domain ID.
    pub domain: Option<u16>,
    /// Only mappings overlapping `[first, last]`, clipped to it.
    pub iova: Option<(u64, u64)>,
}

impl Filter {
    /// Whether a context passes the device, PASID and domain filters.
    pub fn context(&self, c: &Context) -> bool {
        self.device.is_none_or_eq(c.rid)
            && self.pasid.is_none_or_eq_opt(c.pasid)
            && self.domain.map_or(true, |d| c.did == Some(d))
    }

    /// The part of `m` inside the IOVA filter, if any.
    pub fn clip(&self, m: &Mapping) -> Option<Mapping> {
        let Some((lo, hi)) = self.iova else {
            return Some(*m);
        };
        let first = m.iova.0.max(lo);
        let last = m.iova_last().0.min(hi);
        if first > last {
            return None;
        }
        let off = first - m.iova.0;
        Some(Mapping {
            iova: iommu_core::Iova(first),
            pa: PhysAddr(m.pa.0 + off),
            size: last - first + 1,
            ..*m
        })
    }
}

trait OptEq<T> {
    fn is_none_or_eq(&self, v: T) -> bool;
    fn is_none_or_eq_opt(&self, v: Option<T>) -> bool;
}

impl<T: PartialEq + Copy> OptEq<T> for Option<T> {
    fn is_none_or_eq(&self, v: T) -> bool {
        self.map_or(true, |x| x == v)
    }
    fn is_none_or_eq_opt(&self, v: Option<T>) -> bool {
        self.map_or(true, |x| Some(x) == v)
    }
}

/// Parses an IOVA range: `START-END` (inclusive), `START+SIZE` or one address (hex with
/// `0x`, or decimal).
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("bad IOVA range {s:?}: expected START-END, START+SIZE or ADDR");
    if let Some((a, b)) = s.split_once('+') {
        let a = parse_u64(a).map_err(|_| bad())?;
        let n = parse_u64(b).map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        let last = a.checked_add(n - 1).ok_or_else(bad)?;
        return Ok((a, last));
    }
    if let Some((a, b)) = s.split_once('-') {
        let a = parse_u64(a).map_err(|_| bad())?;
        let b = parse_u64(b).map_err(|_| bad())?;
        if b < a {
            return Err(bad());
        }
        return Ok((a, b));
    }
    let a = parse_u64(s).map_err(|_| bad())?;
    Ok((a, a))
}

/// Parses a number: `0x…` hex, or decimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        t.parse::<u64>()
    };
    r.map_err(|_| format!("{s:?} is not a number (0x… hex or decimal)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0x1000-0x1fff"), Ok((0x1000, 0x1fff)));
        assert_eq!(parse_range("0x1000+0x1000"), Ok((0x1000, 0x1fff)));
        assert_eq!(parse_range("4096"), Ok((4096, 4096)));
        assert!(parse_range("0x2000-0x1000").is_err());
        assert!(parse_range("0xffffffffffffffff+2").is_err());
        assert!(parse_range("zz").is_err());
    }
}
