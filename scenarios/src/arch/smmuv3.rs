//! Arm SMMUv3 behind the runner's [`Arch`] seam: the emulator's `SmmuV3Unit` on the
//! bus, the `smmuv3` driver and handover in both kernels.
//!
//! An [`Smmuv3`] carries the shape of the stream table (linear or 2-level; 2-level
//! stream tables go with 2-level CD tables) and the translation granule of every
//! domain (4, 16 or 64 KiB); its [`Mode`] says which stages translate. A master's
//! StreamID is its requester ID through the unit's `iommu-map` (identity here).

use super::{Adopted, Arch, Ctx, DomainWalk, PoolNeeds, UnitLimits, Verified};
use crate::config::{ConfigError, Scenario};
use crate::layout::{kho_tree_pages, UNPRESERVED_DEVICE};
use crate::report::{FinishCounts, VerifyCounts};
use emulator::model::IommuModel;
use emulator::smmuv3::{SmmuV3Config, SmmuV3Unit};
use iommu_core::kho::KhoOut;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use smmuv3::driver::{Hw, PagePool, Stage, Unit, UnitConfig, ENTRY_BYTES, IA_BITS, STRTAB_SPLIT};
use smmuv3::handover::Selection;
use smmuv3::hw::ste::StrtabFmt;
use smmuv3::hw::Granule;
use std::collections::BTreeSet;
use std::fmt;

/// Which stages translate for the scenario's masters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Stage 1 only (STE.Config S1_TRANS, a CD with the ASID and TTB0).
    S1,
    /// Stage 2 only (STE.Config S2_TRANS, the VMID and S2TTB).
    S2,
    /// Stage 1 then stage 2 (STE.Config ALL_TRANS).
    Nested,
}

impl Mode {
    /// Every mode, in the order the default scenario runs them.
    pub const ALL: [Mode; 3] = [Mode::S1, Mode::S2, Mode::Nested];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::S1 => "s1",
            Mode::S2 => "s2",
            Mode::Nested => "nested",
        }
    }

    /// Parses a mode name.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ConfigError::new("mode", s, "expected s1, s2 or nested"))
    }

    /// The driver's domain stages.
    pub fn stage(self) -> Stage {
        match self {
            Mode::S1 => Stage::S1,
            Mode::S2 => Stage::S2,
            Mode::Nested => Stage::Nested,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The stream table's shape, as named on the command line (`linear`, `2lvl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strtab {
    /// One array of STEs indexed by StreamID.
    Linear,
    /// L1 descriptors (SPLIT 8) pointing to L2 arrays of STEs.
    TwoLevel,
}

impl Strtab {
    /// Both shapes.
    pub const ALL: [Strtab; 2] = [Strtab::Linear, Strtab::TwoLevel];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strtab::Linear => "linear",
            Strtab::TwoLevel => "2lvl",
        }
    }

    /// Parses `linear` or `2lvl`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Strtab::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ConfigError::new("strtab", s, "expected linear or 2lvl"))
    }

    fn fmt(self) -> StrtabFmt {
        match self {
            Strtab::Linear => StrtabFmt::Linear,
            Strtab::TwoLevel => StrtabFmt::TwoLevel,
        }
    }
}

impl fmt::Display for Strtab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a granule name: `4K`, `16K` or `64K`.
pub fn parse_granule(s: &str) -> Result<Granule, ConfigError> {
    [Granule::K4, Granule::K16, Granule::K64]
        .into_iter()
        .find(|g| g.to_string() == s)
        .ok_or_else(|| ConfigError::new("granule", s, "expected 4K, 16K or 64K"))
}

const PAGE: u64 = 4096;

const fn size(bytes: u64) -> PageSize {
    match PageSize::new(bytes) {
        Some(p) => p,
        None => panic!("not a page size"),
    }
}

/// Leaf sizes of each granule: pages and the blocks of levels 2 and 3 (VMSAv8-64:
/// 4 KiB: 2 MiB and 1 GiB; 16 KiB: 32 MiB; 64 KiB: 512 MiB; the 64 GiB and 4 TiB
/// blocks need 52-bit output addresses; reference §12).
const SIZES_4K: [PageSize; 3] = [PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G];
const SIZES_16K: [PageSize; 2] = [size(16 << 10), size(32 << 20)];
const SIZES_64K: [PageSize; 2] = [size(64 << 10), size(512 << 20)];

/// Arm SMMUv3: one emulated `SmmuV3Unit`, driven by the `smmuv3` driver and handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Smmuv3 {
    /// Stream-table shape.
    pub strtab: Strtab,
    /// Granule of every domain's tables.
    pub granule: Granule,
}

impl Default for Smmuv3 {
    /// Linear stream table, 4 KiB granule.
    fn default() -> Self {
        Self {
            strtab: Strtab::Linear,
            granule: Granule::K4,
        }
    }
}

/// The SMMU a scenario runs on: the emulator's default (stage 1 and 2, 2-level stream
/// and CD tables, every granule, 48-bit OAS, 16-bit StreamIDs, identity `iommu-map`).
pub fn unit_config(base: PhysAddr) -> SmmuV3Config {
    SmmuV3Config::new(base)
}

/// The StreamID of a requester on the scenario's SMMU.
fn stream_id(base: PhysAddr, rid: RequesterId) -> Result<u32, String> {
    unit_config(base)
        .stream_id(rid)
        .ok_or_else(|| format!("{rid} has no StreamID in the SMMU's iommu-map"))
}

/// The requester of a StreamID (identity `iommu-map`: `bus << 8 | devfn`).
fn requester(sid: u32) -> RequesterId {
    RequesterId::new(
        0,
        (sid >> 8) as u8,
        ((sid >> 3) & 31) as u8,
        (sid & 7) as u8,
    )
}

/// Lends the driver the unit's registers, memory and the page pool for one call.
fn with_hw<T>(cx: Ctx<'_, PagePool>, f: impl FnOnce(&mut Hw<'_>) -> T) -> T {
    let (mut regs, mut mem) = cx
        .machine
        .driver_access(cx.base)
        .expect("the scenario's unit is on the bus");
    let mut hw = Hw {
        regs: &mut regs,
        mem: &mut mem,
        pages: cx.pool,
    };
    f(&mut hw)
}

impl Smmuv3 {
    fn ucfg(&self, base: PhysAddr) -> UnitConfig {
        UnitConfig {
            mmio_base: base,
            strtab: self.strtab.fmt(),
            two_level_cd: self.strtab == Strtab::TwoLevel,
        }
    }

    /// Pages one table of the granule costs at most: the table, plus the slack of a
    /// size-aligned contiguous allocation (given back, but not reusable for another
    /// multi-page table).
    fn table_cost(&self) -> u64 {
        2 * (self.granule.bytes() / PAGE) - 1
    }

    /// Tables below the root that map `len` bytes of `ps` pages at a `ps`-aligned
    /// IOVA with this granule: per level from the leaf tables up to the level below
    /// the root, one per span the level covers plus one for a straddled boundary.
    fn tables_for(&self, len: u64, ps: PageSize) -> u64 {
        let (shift, stride) = (self.granule.shift(), self.granule.stride());
        let levels = (IA_BITS - 4).div_ceil(stride); // levels of a 48-bit table
        let mut n = 0;
        for level in 1..levels {
            // A table at `level` covers 2^(shift + level * stride) bytes.
            let covers = shift + level * stride;
            if covers <= ps.bytes().trailing_zeros() {
                continue;
            }
            n += len.div_ceil(1u64 << covers.min(63)) + 1;
        }
        n
    }

    /// What the pools hold for scenario `s` in `mode`, by part (checked arithmetic).
    pub fn needs(&self, s: &Scenario, mode: Mode) -> Option<Vec<(u64, &'static str)>> {
        let domains = s.domains as u64 + 1;
        let masters: Vec<u32> = s
            .devices
            .iter()
            .chain([&UNPRESERVED_DEVICE])
            .map(|&r| ((r.bus as u32) << 8) | r.devfn as u32)
            .collect();
        let stages = if mode == Mode::Nested { 2 } else { 1 };
        // Roots: a 16 KiB granule's 48-bit stage-2 start is two concatenated tables.
        let mut per_domain = stages * 2 * self.table_cost();
        for &ps in &s.page_sizes {
            let len = s.map_bytes.checked_next_multiple_of(ps.bytes())?;
            let t = self.tables_for(len, ps).checked_mul(self.table_cost())?;
            per_domain = per_domain.checked_add(t.checked_mul(stages)?)?;
        }
        // A CD table (and its L2 table when 2-level) is a block of the granule each.
        let cd_pages = match self.strtab {
            Strtab::Linear => 1,
            Strtab::TwoLevel => 2,
        } * masters.len() as u64
            * self.table_cost();
        if mode == Mode::Nested {
            // Stage 2 also maps every stage-1 table and CD table page: at worst a
            // chain of tables each.
            let s1_tables = (per_domain / 2 + cd_pages) / self.table_cost();
            let levels = (IA_BITS - 4).div_ceil(self.granule.stride()) as u64;
            per_domain =
                per_domain.checked_add(s1_tables.checked_mul(levels * self.table_cost())?)?;
        }
        let tables = per_domain.checked_mul(domains)?;
        let strtab = match self.strtab {
            // 2^16 STEs of 64 bytes, size-aligned.
            Strtab::Linear => 2 * ((ENTRY_BYTES << 16) / PAGE) - 1,
            Strtab::TwoLevel => {
                let l2 = (ENTRY_BYTES << STRTAB_SPLIT) / PAGE;
                let l1s = masters
                    .iter()
                    .map(|m| m >> STRTAB_SPLIT)
                    .collect::<BTreeSet<_>>();
                1 + l1s.len() as u64 * (2 * l2 - 1)
            }
        };
        let queues = 2;
        let structures = tables
            .checked_add(strtab)?
            .checked_add(cd_pages)?
            .checked_add(queues)?;
        // The record: 0x40 header, 32 bytes a domain, 96 a master, 16 a run (at most
        // one per structure page), in a KHO record (256 bytes of header allowed); the
        // guest memory's client; the FDT (two pages); the preserved-memory tree.
        let ranges = domains.checked_mul(s.page_sizes.len() as u64)?;
        let record = structures
            .checked_mul(16)?
            .checked_add(32 * domains + 96 * masters.len() as u64 + 0x40 + 256)?;
        let other = ranges.checked_mul(16)?.checked_add(256)?;
        let kho = (2 + 1 + record.div_ceil(PAGE) + other.div_ceil(PAGE))
            .checked_add(kho_tree_pages(s.ram.1 / PAGE))?;
        Some(vec![
            (tables, "domain tables"),
            (strtab, "stream table"),
            (cd_pages, "CD tables"),
            (queues, "command and event queues"),
            (kho, "KHO blob"),
        ])
    }
}

impl Arch for Smmuv3 {
    type Mode = Mode;
    type Unit = Unit;
    type Pool = PagePool;

    fn name(&self) -> &'static str {
        "SMMUv3"
    }

    fn page_sizes(&self) -> &'static [PageSize] {
        match self.granule {
            Granule::K4 => &SIZES_4K,
            Granule::K16 => &SIZES_16K,
            Granule::K64 => &SIZES_64K,
        }
    }

    /// Register page 0 is 64 KiB aligned.
    fn window_align(&self) -> u64 {
        0x1_0000
    }

    fn iova_bits(&self) -> u32 {
        IA_BITS
    }

    /// ASIDs (stage 1) or VMIDs (stage 2; both for nested: the fewer) from IDR0.ASID16
    /// and IDR0.VMID16 less ID 0, the address width from IDR5.OAS, the two register
    /// pages.
    fn unit_limits(&self, mode: Mode, base: PhysAddr) -> Result<UnitLimits, ConfigError> {
        let cfg = unit_config(base);
        let ids = |wide: bool| if wide { 0xffffu64 } else { 0xff };
        let (n, from) = match mode {
            Mode::S1 => (
                ids(cfg.asid16),
                format!("IDR0.ASID16 = {}", cfg.asid16 as u8),
            ),
            Mode::S2 => (
                ids(cfg.vmid16),
                format!("IDR0.VMID16 = {}", cfg.vmid16 as u8),
            ),
            Mode::Nested => (
                ids(cfg.asid16).min(ids(cfg.vmid16)),
                format!(
                    "IDR0.ASID16 = {}, IDR0.VMID16 = {}",
                    cfg.asid16 as u8, cfg.vmid16 as u8
                ),
            ),
        };
        let window = SmmuV3Unit::new(cfg.clone())
            .map_err(|e| ConfigError::new("unit-base", base.to_string(), e.to_string()))?
            .mmio_size();
        Ok(UnitLimits {
            domain_ids: n,
            domain_ids_from: from,
            address_bits: cfg.oas_bits,
            address_bits_from: "IDR5.OAS",
            window,
        })
    }

    fn pool_needs(&self, s: &Scenario, mode: Mode) -> Option<PoolNeeds> {
        let parts = self.needs(s, mode)?;
        let old = parts.iter().try_fold(0u64, |a, p| a.checked_add(p.0))?;
        old.checked_mul(PAGE)?;
        // New kernel: the queues, and the tables of one mapping of the smallest page
        // (every level, for either stage, with allocation slack).
        let levels = (IA_BITS - 4).div_ceil(self.granule.stride()) as u64;
        let new = 2 + 2 * levels * self.table_cost() + 4;
        Some(PoolNeeds {
            old,
            new,
            old_parts: parts,
        })
    }

    fn model(&self, _mode: Mode, base: PhysAddr) -> Result<Box<dyn IommuModel>, String> {
        match SmmuV3Unit::new(unit_config(base)) {
            Ok(u) => Ok(Box::new(u)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn pool(&self, base: PhysAddr, bytes: u64) -> PagePool {
        PagePool::new(base, bytes)
    }

    fn exclude(&self, pool: &mut PagePool, preserved: &PageSet) {
        pool.exclude(preserved);
    }

    fn bring_up(&self, _mode: Mode, cx: Ctx<'_, PagePool>) -> Result<Unit, String> {
        let ucfg = self.ucfg(cx.base);
        with_hw(cx, |hw| Unit::init(hw, &ucfg)).map_err(|e| e.to_string())
    }

    fn create_domain(
        &self,
        unit: &mut Unit,
        mode: Mode,
        cx: Ctx<'_, PagePool>,
    ) -> Result<DomainId, String> {
        let g = self.granule;
        with_hw(cx, |hw| unit.create_domain(hw, mode.stage(), g)).map_err(|e| e.to_string())
    }

    fn map(
        &self,
        unit: &mut Unit,
        cx: Ctx<'_, PagePool>,
        did: DomainId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        ps: PageSize,
        perms: Perms,
    ) -> Result<(), String> {
        with_hw(cx, |hw| unit.map(hw, did, iova, pa, len, ps, perms)).map_err(|e| e.to_string())
    }

    fn attach(
        &self,
        unit: &mut Unit,
        cx: Ctx<'_, PagePool>,
        rid: RequesterId,
        did: DomainId,
    ) -> Result<(), String> {
        let sid = stream_id(cx.base, rid)?;
        with_hw(cx, |hw| unit.attach(hw, sid, did))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn walk_domain(
        &self,
        unit: &Unit,
        mem: &dyn PhysMem,
        did: DomainId,
    ) -> Result<DomainWalk, String> {
        let w = unit
            .walk_domain(mem, did, &WalkLimits::default())
            .map_err(|e| e.to_string())?;
        Ok(DomainWalk {
            mappings: w.mappings,
            table_pages: w
                .tables
                .iter()
                .map(|t| t.bytes.max(self.granule.bytes()) / PAGE)
                .sum(),
        })
    }

    fn prepare(
        &self,
        unit: &mut Unit,
        cx: Ctx<'_, PagePool>,
        kho: &mut KhoOut,
        domains: &[DomainId],
        devices: &[RequesterId],
    ) -> Result<u64, String> {
        let masters = devices
            .iter()
            .map(|&r| stream_id(cx.base, r))
            .collect::<Result<Vec<_>, _>>()?;
        let sel = Selection {
            domains: domains.to_vec(),
            masters,
        };
        with_hw(cx, |hw| unit.prepare(hw, kho, &sel))
            .map(|r| r.record_bytes as u64)
            .map_err(|e| e.to_string())
    }

    fn freeze(&self, unit: &mut Unit, cx: Ctx<'_, PagePool>) -> Result<u64, String> {
        with_hw(cx, |hw| unit.freeze(hw))
            .map(|r| r.entries_written)
            .map_err(|e| e.to_string())
    }

    fn adopt(
        &self,
        _mode: Mode,
        cx: Ctx<'_, PagePool>,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Unit, Adopted), String> {
        let ucfg = self.ucfg(cx.base);
        match with_hw(cx, |hw| {
            Unit::adopt_with_preserved(hw, &ucfg, blob, preserved)
        }) {
            Ok((u, r)) => Ok((
                u,
                Adopted {
                    work: r.registers_read + r.entries_read,
                    blocked: r
                        .blocked
                        .iter()
                        .map(|b| (requester(b.sid), b.error.to_string()))
                        .collect(),
                },
            )),
            Err(f) => Err(f.error.to_string()),
        }
    }

    fn verify(&self, unit: &mut Unit, cx: Ctx<'_, PagePool>) -> Result<Verified, String> {
        let r = with_hw(cx, |hw| unit.verify(hw)).map_err(|e| e.to_string())?;
        Ok(Verified {
            counts: VerifyCounts {
                domains: r.domains,
                tables: r.tables,
                leaf_targets_checked: r.leaf_targets_checked,
            },
            refused: r
                .failures
                .iter()
                .map(|(did, e)| (*did, e.to_string()))
                .collect(),
            unverified_runs: r.unverified_runs.iter().map(|e| e.to_string()).collect(),
        })
    }

    fn finish(&self, unit: &mut Unit, cx: Ctx<'_, PagePool>) -> Result<FinishCounts, String> {
        with_hw(cx, |hw| unit.finish(hw))
            .map(|r| FinishCounts {
                pages_freed: r.pages_freed,
                pages_kept: r.pages_kept,
            })
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.name()), Ok(m));
        }
        for s in Strtab::ALL {
            assert_eq!(Strtab::parse(&s.to_string()), Ok(s));
        }
        for g in ["4K", "16K", "64K"] {
            assert_eq!(parse_granule(g).map(|g| g.to_string()), Ok(g.to_string()));
        }
        assert!(Mode::parse("s3").is_err());
        assert!(Strtab::parse("3lvl").is_err());
        assert!(parse_granule("8K").is_err());
    }

    /// Block sizes of each granule (VMSAv8-64: a level-2 block covers a table of
    /// pages: 512 × 4 KiB, 2048 × 16 KiB, 8192 × 64 KiB).
    #[test]
    fn page_sizes_follow_the_granule() {
        let a = |granule| Smmuv3 {
            strtab: Strtab::Linear,
            granule,
        };
        assert_eq!(a(Granule::K16).page_sizes()[1].bytes(), 32 << 20);
        assert_eq!(a(Granule::K64).page_sizes()[1].bytes(), 512 << 20);
        assert_eq!(a(Granule::K4).page_sizes()[2].bytes(), 1 << 30);
    }

    /// The pools are sized part by part: a linear stream table of 2^16 STEs is 1024
    /// pages, counted with the slack of its size alignment (2047); a 2-level one is its
    /// L1 page and one 16 KiB L2 table (with slack, 7 pages) per L1 index used; nested
    /// needs more than stage 1 alone; the parts add up to the old pool.
    #[test]
    fn pool_needs_count_every_part() {
        let s = Scenario::default_scenario();
        let lin = Smmuv3::default();
        let two = Smmuv3 {
            strtab: Strtab::TwoLevel,
            granule: Granule::K4,
        };
        let part = |a: &Smmuv3, m, what: &str| {
            a.pool_needs(&s, m)
                .unwrap()
                .old_parts
                .iter()
                .find(|p| p.1 == what)
                .unwrap()
                .0
        };
        assert_eq!(part(&lin, Mode::S1, "stream table"), 2047);
        // Devices on buses 0x00 and 0x3b, the unpreserved one on 0xf0: three L1 indexes.
        assert_eq!(part(&two, Mode::S1, "stream table"), 1 + 3 * 7);
        assert_eq!(part(&two, Mode::S1, "CD tables"), 2 * 5);
        assert!(part(&lin, Mode::Nested, "domain tables") > part(&lin, Mode::S1, "domain tables"));
        for m in Mode::ALL {
            let n = lin.pool_needs(&s, m).unwrap();
            assert_eq!(n.old_parts.iter().map(|p| p.0).sum::<u64>(), n.old);
        }
    }
}
