//! Intel VT-d behind the runner's [`Arch`] seam: the emulator's `VtdUnit` on the bus,
//! the `vtd` driver and handover in both kernels.

use super::{Adopted, Arch, Ctx, DomainWalk, PoolNeeds, UnitLimits, Verified};
use crate::config::{ConfigError, Scenario};
use crate::layout::{kho_tree_pages, UNPRESERVED_DEVICE};
use crate::report::{FinishCounts, VerifyCounts};
use emulator::model::IommuModel;
use emulator::vtd::{VtdConfig, VtdUnit};
use iommu_core::kho::KhoOut;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use std::collections::BTreeSet;
use std::fmt;
use vtd::driver::{DomainKind, Hw, Mode as DriverMode, PagePool, Unit, UnitConfig};
use vtd::handover::Selection;
use vtd::hw::regs::{self, CAP};

/// Translation mode a VT-d unit runs the scenario in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Legacy root/context entries with second-stage tables (RTADDR.TTM = 00).
    Legacy,
    /// Scalable mode, PASID-table entries with PGTT = second-stage.
    ScalableSecondStage,
    /// Scalable mode, PASID-table entries with PGTT = first-stage (x86 paging format).
    ScalableFirstStage,
}

impl Mode {
    /// Every mode, in the order the default scenario runs them.
    pub const ALL: [Mode; 3] = [
        Mode::Legacy,
        Mode::ScalableSecondStage,
        Mode::ScalableFirstStage,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::ScalableSecondStage => "scalable-ss",
            Mode::ScalableFirstStage => "scalable-fs",
        }
    }

    /// Parses a mode name.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                ConfigError::new("mode", s, "expected legacy, scalable-ss or scalable-fs")
            })
    }

    /// The driver's table mode: legacy or scalable.
    pub fn driver_mode(self) -> DriverMode {
        match self {
            Mode::Legacy => DriverMode::Legacy,
            _ => DriverMode::Scalable,
        }
    }

    /// The kind of domain the mode's devices are attached to.
    pub fn domain_kind(self) -> DomainKind {
        match self {
            Mode::ScalableFirstStage => DomainKind::FirstStage,
            _ => DomainKind::SecondStage,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Levels counted per domain when sizing the pools: 5, the most VT-d has (the driver's
/// default of 4 for these units is covered).
const MAX_LEVELS: u32 = 5;

/// Input address width of the domains' tables: 48 bits (4-level tables, the driver's
/// default for the emulated units).
const IOVA_BITS: u32 = 48;

const PAGE: u64 = 4096;

/// The VT-d unit a scenario runs on in `mode`.
pub fn unit_config(mode: Mode, base: PhysAddr) -> VtdConfig {
    match mode {
        Mode::Legacy => VtdConfig::legacy(base),
        Mode::ScalableSecondStage | Mode::ScalableFirstStage => VtdConfig::scalable(base),
    }
}

/// Pages of tables below the root that map `len` bytes of `ps` pages at an IOVA
/// aligned to `ps`: at each level from the leaf tables up, one table per span the
/// level covers, plus one for a range straddling a boundary.
fn table_pages(len: u64, ps: PageSize) -> u64 {
    let leaf_level = match ps.bytes() {
        b if b >= 1 << 30 => 3,
        b if b >= 2 << 20 => 2,
        _ => 1,
    };
    (leaf_level..MAX_LEVELS)
        .map(|level| {
            let covers = 1u64 << (12 + 9 * level);
            len.div_ceil(covers) + 1
        })
        .sum()
}

/// What the VT-d pools must hold, in pages, for a scenario in one mode.
///
/// Every count is an upper bound derived from what the driver allocates (tables at up
/// to 5 levels with one extra per level for a straddled boundary, one context table per
/// bus or bus half, a PASID directory and table per scalable-mode device, a one-page
/// queue and its status page) and from the KHO formats (record entry sizes, the
/// preserved-memory tree's node coverage), rather than a guessed margin: a scenario that
/// fits runs without exhausting a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdPoolNeeds {
    /// Domain tables (roots and every level below).
    pub tables: u64,
    /// Root table and context tables.
    pub context: u64,
    /// PASID directories and tables (scalable mode: one of each per device).
    pub pasid: u64,
    /// Invalidation queue and its status page.
    pub queue: u64,
    /// KHO blob: FDT, the unit's record, the preserved-memory tree.
    pub kho: u64,
    /// The old kernel's pool: all of the above.
    pub old: u64,
    /// The new kernel's pool: root table, queue, tables of the mapping after `finish`.
    pub new: u64,
}

impl VtdPoolNeeds {
    /// Sizes the pools of `s` in `mode` (checked arithmetic; `None` on overflow).
    pub fn of(s: &Scenario, mode: Mode) -> Option<Self> {
        let domains = s.domains as u64 + 1;
        let devices = s.devices.len() as u64 + 1;
        let mut per_domain = 1u64; // the root
        for &ps in &s.page_sizes {
            let len = s.map_bytes.checked_next_multiple_of(ps.bytes())?;
            per_domain = per_domain.checked_add(table_pages(len, ps))?;
        }
        let tables = per_domain.checked_mul(domains)?;
        let all = s.devices.iter().chain([&UNPRESERVED_DEVICE]);
        let (context, pasid) = match mode {
            // One context table per bus.
            Mode::Legacy => (all.map(|d| d.bus).collect::<BTreeSet<_>>().len() as u64, 0),
            // One per bus and half (128 devfns each); a PASID directory and table per
            // device.
            _ => (
                all.map(|d| (d.bus, d.devfn >> 7))
                    .collect::<BTreeSet<_>>()
                    .len() as u64,
                2 * devices,
            ),
        };
        let context = context + 1;
        let queue = 2;
        let structures = tables
            .checked_add(context)?
            .checked_add(pasid)?
            .checked_add(queue)?;
        // The unit's record: a 0x38-byte header and 16 bytes per domain, device and page
        // run (at most one run per structure page), in a KHO record with a small header
        // (256 bytes allowed). Another client (guest memory, preserved by its owner) may
        // add a record of one 16-byte entry per target range, with its own header and
        // page. The FDT with a few client nodes fits in a page (two allowed).
        let ranges = domains.checked_mul(s.page_sizes.len() as u64)?;
        let record_bytes = structures
            .checked_add(domains + devices)?
            .checked_mul(16)?
            .checked_add(0x38 + 256)?;
        let other_bytes = ranges.checked_mul(16)?.checked_add(256)?;
        let ram_pages = s.ram.1 / PAGE;
        let kho = (2 + 1 + record_bytes.div_ceil(PAGE) + other_bytes.div_ceil(PAGE))
            .checked_add(kho_tree_pages(ram_pages))?;
        let old = structures.checked_add(kho)?;
        // Both pools must be addressable in bytes.
        old.checked_mul(PAGE)?;
        // New kernel: an empty root table, the queue, and the tables of one 4K mapping.
        let new = 1 + queue + (MAX_LEVELS as u64 - 1);
        Some(Self {
            tables,
            context,
            pasid,
            queue,
            kho,
            old,
            new,
        })
    }
}

/// Intel VT-d: one emulated `VtdUnit`, driven by the `vtd` driver and handover.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vtd;

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

impl Arch for Vtd {
    type Mode = Mode;
    type Unit = Unit;
    type Pool = PagePool;

    fn name(&self) -> &'static str {
        "VT-d"
    }

    fn page_sizes(&self) -> &'static [PageSize] {
        &[PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G]
    }

    fn window_align(&self) -> u64 {
        PAGE
    }

    fn iova_bits(&self) -> u32 {
        IOVA_BITS
    }

    /// Domain IDs from CAP.ND (less domain 0 when CAP.CM reserves it), the address
    /// width from CAP.MGAW, the register window of the emulated unit.
    fn unit_limits(&self, mode: Mode, base: PhysAddr) -> Result<UnitLimits, ConfigError> {
        let cfg = unit_config(mode, base);
        let cap = cfg.cap();
        let ids = regs::domain_count(cap) - CAP::CM.is_set(cap) as u32;
        let window = VtdUnit::new(cfg)
            .map_err(|e| ConfigError::new("unit-base", base.to_string(), e.to_string()))?
            .mmio_size();
        Ok(UnitLimits {
            domain_ids: ids as u64,
            domain_ids_from: format!("CAP.ND = {}", cfg.nd),
            address_bits: cfg.mgaw as u32,
            address_bits_from: "CAP.MGAW",
            window,
        })
    }

    fn pool_needs(&self, s: &Scenario, mode: Mode) -> Option<PoolNeeds> {
        let n = VtdPoolNeeds::of(s, mode)?;
        Some(PoolNeeds {
            old: n.old,
            new: n.new,
            old_parts: vec![
                (n.tables, "domain tables"),
                (n.context, "root and context tables"),
                (n.pasid, "PASID tables"),
                (n.queue, "invalidation queue"),
                (n.kho, "KHO blob"),
            ],
        })
    }

    fn model(&self, mode: Mode, base: PhysAddr) -> Result<Box<dyn IommuModel>, String> {
        match VtdUnit::new(unit_config(mode, base)) {
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

    fn bring_up(&self, mode: Mode, cx: Ctx<'_, PagePool>) -> Result<Unit, String> {
        let ucfg = UnitConfig::new(cx.base, mode.driver_mode());
        with_hw(cx, |hw| Unit::init(hw, &ucfg)).map_err(|e| e.to_string())
    }

    fn create_domain(
        &self,
        unit: &mut Unit,
        mode: Mode,
        cx: Ctx<'_, PagePool>,
    ) -> Result<DomainId, String> {
        with_hw(cx, |hw| unit.create_domain(hw, mode.domain_kind())).map_err(|e| e.to_string())
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
        with_hw(cx, |hw| unit.attach(hw, rid, did)).map_err(|e| e.to_string())
    }

    fn walk_domain(
        &self,
        unit: &Unit,
        mem: &dyn PhysMem,
        did: DomainId,
    ) -> Result<DomainWalk, String> {
        match unit.walk_domain(mem, did, &WalkLimits::default()) {
            Ok(Ok(w)) => Ok(DomainWalk {
                mappings: w.mappings,
                table_pages: w.tables.len() as u64,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn prepare(
        &self,
        unit: &mut Unit,
        cx: Ctx<'_, PagePool>,
        kho: &mut KhoOut,
        domains: &[DomainId],
        devices: &[RequesterId],
    ) -> Result<u64, String> {
        let sel = Selection {
            domains: domains.to_vec(),
            devices: devices.to_vec(),
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
        mode: Mode,
        cx: Ctx<'_, PagePool>,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Unit, Adopted), String> {
        let ucfg = UnitConfig::new(cx.base, mode.driver_mode());
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
                        .map(|b| (b.rid, b.error.to_string()))
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
    use crate::layout::tests::small_machine;

    /// Scalable mode needs a PASID directory and table per device: 10,000 devices need
    /// 20,002 PASID pages in the old pool (the old sizing ignored them).
    #[test]
    fn scalable_pools_count_pasid_pages_of_10000_devices() {
        let mut s = small_machine();
        s.devices = (0..10_000u32)
            .map(|i| RequesterId::new(0, (i >> 8) as u8, ((i >> 3) & 31) as u8, (i & 7) as u8))
            .collect();
        let n = VtdPoolNeeds::of(&s, Mode::ScalableSecondStage).unwrap();
        assert_eq!(n.pasid, 2 * 10_001);
        assert!(n.old > n.pasid + n.tables);
        assert_eq!(VtdPoolNeeds::of(&s, Mode::Legacy).unwrap().pasid, 0);
        // The seam's view lists the same parts, in the order a refusal names them.
        let seam = Vtd.pool_needs(&s, Mode::ScalableSecondStage).unwrap();
        assert_eq!((seam.old, seam.new), (n.old, n.new));
        assert_eq!(seam.old_parts[2], (n.pasid, "PASID tables"));
        assert_eq!(
            seam.old_parts.iter().map(|p| p.0).sum::<u64>(),
            n.old,
            "the parts add up to the old pool"
        );
    }

    /// The emulated units' limits as the seam reports them: 8-bit domain IDs less domain
    /// 0 (CAP.CM), and the register window of a VT-d unit (one 4 KiB page).
    #[test]
    fn unit_limits_come_from_the_capability_register() {
        for mode in Mode::ALL {
            let l = Vtd.unit_limits(mode, PhysAddr(0xfed9_0000)).unwrap();
            let cap = unit_config(mode, PhysAddr(0xfed9_0000)).cap();
            assert_eq!(
                l.domain_ids,
                (regs::domain_count(cap) - CAP::CM.is_set(cap) as u32) as u64
            );
            assert!(l.domain_ids_from.starts_with("CAP.ND = "), "{l:?}");
            assert_eq!(l.address_bits, (CAP::MGAW.read(cap) + 1) as u32);
            assert!(l.window >= PAGE && l.window % PAGE == 0, "{l:?}");
        }
    }

    /// Walking a domain the unit does not have is an error in words, not a panic.
    #[test]
    fn walking_an_unknown_domain_is_an_error() {
        let mut m = emulator::machine::Machine::with_ram(&[(PhysAddr(1 << 32), 64 << 20)]).unwrap();
        let base = PhysAddr(0xfed9_0000);
        m.add_unit(Vtd.model(Mode::Legacy, base).unwrap()).unwrap();
        let mut pool = Vtd.pool(PhysAddr(1 << 32), 1 << 20);
        let cx = Ctx {
            machine: &mut m,
            base,
            pool: &mut pool,
        };
        let unit = Vtd.bring_up(Mode::Legacy, cx).unwrap();
        let mem = m.mem();
        let e = Vtd.walk_domain(&unit, &*mem, DomainId(77)).unwrap_err();
        assert!(!e.is_empty());
    }
}
