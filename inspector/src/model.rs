//! An image's IOMMU state: its units with their scanned structures, and for any context
//! the mappings of its page table.

use crate::arch::{Arch, ArchUnit, EntryView, REGISTERED};
use crate::error::InspectError;
use crate::image::{Image, OpenAs};
use crate::vtd::{UnitOverride, UnitState};
use iommu_core::mem::PhysMem;
use iommu_core::pgtable::{walk_with, Format, Mapping, TablePage, WalkError, WalkLimits};
use iommu_core::{PhysAddr, RequesterId};
use std::path::Path;

/// How to open an image and describe its units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// ELF or raw.
    pub open: OpenAs,
    /// Command-line unit description.
    pub unit: UnitOverride,
    /// Command-line AMD-Vi unit description (`--amdvi-devtab`...).
    pub amdvi: crate::amdvi::AmdViOverride,
    /// Command-line SMMUv3 description (`--smmu-strtab`...).
    pub smmu: crate::smmuv3::SmmuOverride,
}

/// An opened image with its units scanned.
#[derive(Debug)]
pub struct Loaded {
    /// The image.
    pub image: Image,
    /// Its units, of every registered architecture ([`crate::arch::REGISTERED`]).
    pub units: Vec<Box<dyn ArchUnit>>,
}

impl Loaded {
    /// Opens `path` and scans every unit.
    pub fn open(path: &Path, opts: &LoadOptions) -> Result<Self, InspectError> {
        let image = Image::open(path, opts.open)?;
        Self::from_image(image, opts)
    }

    /// Scans every unit of an opened image, of the registered architectures.
    pub fn from_image(image: Image, opts: &LoadOptions) -> Result<Self, InspectError> {
        Self::from_image_with(image, opts, REGISTERED)
    }

    /// Scans every unit of an opened image of the architectures `arches`, in that
    /// order.
    pub fn from_image_with(
        image: Image,
        opts: &LoadOptions,
        arches: &[&dyn Arch],
    ) -> Result<Self, InspectError> {
        let mut units = Vec::new();
        for a in arches {
            units.extend(a.load(&image, opts)?);
        }
        if units.is_empty() {
            return Err(crate::vtd::unit::no_units(&image, &opts.unit));
        }
        Ok(Self { image, units })
    }

    /// The VT-d units, for the commands specific to VT-d (`walk`, `verify`).
    pub fn vtd_units(&self) -> Vec<&UnitState> {
        self.units
            .iter()
            .filter_map(|u| u.as_any().downcast_ref::<UnitState>())
            .collect()
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

/// Walks the tree of `format` at `root` with the lenient [`walk_limits`], streaming each
/// run to `visit`; returns the tables and problems (with empty `mappings`). An
/// architecture's [`crate::arch::ArchUnit::walk_tree`] is this with its format.
pub fn walk_format<F: Format, M: PhysMem + ?Sized>(
    format: &F,
    mem: &M,
    root: PhysAddr,
    visit: impl FnMut(&Mapping),
) -> TableWalk {
    match walk_with(format, mem, root, &walk_limits(), visit) {
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
    /// Whether an entry of `rid`, `pasid` and domain `did` passes the device, PASID and
    /// domain filters.
    pub fn matches(&self, rid: RequesterId, pasid: Option<u32>, did: Option<u16>) -> bool {
        self.device.map_or(true, |x| x == rid)
            && self.pasid.map_or(true, |x| Some(x) == pasid)
            && self.domain.map_or(true, |d| did == Some(d))
    }

    /// Whether an entry of any architecture passes the device, PASID and domain
    /// filters.
    pub fn entry(&self, e: &EntryView) -> bool {
        self.matches(e.rid, e.pasid, e.did)
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
