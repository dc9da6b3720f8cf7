//! AMD-Vi behind the runner's [`Arch`] seam: the emulator's `AmdViUnit` on the bus, the
//! `amdvi` driver and handover in both kernels.

use super::{Adopted, Arch, Ctx, DomainWalk, PoolNeeds, UnitLimits, Verified};
use crate::config::{ConfigError, Scenario};
use crate::layout::kho_tree_pages;
use crate::report::{FinishCounts, VerifyCounts};
use amdvi::driver::{DomainKind, Hw, PagePool, Unit, UnitConfig};
use amdvi::handover::Selection;
use amdvi::hw::regs;
use emulator::amdvi::{AmdViConfig, AmdViUnit};
use emulator::model::IommuModel;
use iommu_core::kho::KhoOut;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use std::fmt;
use std::ops::RangeInclusive;

/// Translation a unit runs the scenario with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Host (v1) I/O page tables, DTE Mode 4.
    V1,
    /// Guest (v2) x86-64 4-level tables through a one-level GCR3 table (DTE GV, GIoV).
    V2,
}

impl Mode {
    /// Every mode, in the order the default scenario runs them.
    pub const ALL: [Mode; 2] = [Mode::V1, Mode::V2];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::V1 => "v1",
            Mode::V2 => "v2",
        }
    }

    /// Parses a mode name.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ConfigError::new("mode", s, "expected v1 or v2"))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Levels of the domains' tables (v1 Mode 4 and 4-level v2 tables).
const LEVELS: u32 = 4;

/// Input width: 47 bits, what both modes translate (v1 Mode 4 covers 48 bits, 4-level
/// v2 tables the canonical lower half, 47).
const IOVA_BITS: u32 = 47;

const PAGE: u64 = 4096;

/// AMD-Vi: one emulated `AmdViUnit`, driven by the `amdvi` driver and handover. The
/// DeviceID range is what ACPI IVRS would give the unit (every DeviceID by default).
#[derive(Clone, Debug)]
pub struct AmdVi {
    /// DeviceIDs behind the unit.
    pub device_ids: RangeInclusive<u16>,
}

impl Default for AmdVi {
    fn default() -> Self {
        Self {
            device_ids: 0..=u16::MAX,
        }
    }
}

impl AmdVi {
    /// The unit's IVRS-like description.
    fn unit_config(&self, base: PhysAddr) -> UnitConfig {
        UnitConfig::new(base, *self.device_ids.start(), *self.device_ids.end())
    }

    /// The emulated unit at `base`: EFR with IASup, GTSup and GIOSup, 4-level host and
    /// guest tables.
    pub fn model_config(&self, base: PhysAddr) -> AmdViConfig {
        AmdViConfig::new(base).with_device_ids(self.device_ids.clone())
    }
}

/// Pages of tables below the root that map `len` bytes of `ps` pages (one table per
/// span each level covers, one more per level for a straddled boundary).
fn table_pages(len: u64, ps: PageSize) -> u64 {
    let leaf_level = match ps.bytes() {
        b if b >= 1 << 30 => 3,
        b if b >= 2 << 20 => 2,
        _ => 1,
    };
    (leaf_level..LEVELS)
        .map(|level| len.div_ceil(1u64 << (12 + 9 * level)) + 1)
        .sum()
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

impl Arch for AmdVi {
    type Mode = Mode;
    type Unit = Unit;
    type Pool = PagePool;

    fn name(&self) -> &'static str {
        "AMD-Vi"
    }

    fn page_sizes(&self) -> &'static [PageSize] {
        &[PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G]
    }

    /// The 16 KiB register window (IVHD base) is aligned to its size.
    fn window_align(&self) -> u64 {
        regs::MMIO_WINDOW
    }

    fn iova_bits(&self) -> u32 {
        IOVA_BITS
    }

    /// 16-bit DomainIDs less 0 (kept for blocking DTEs), 52-bit table addresses (bits
    /// 51:12 of every pointer), the 16 KiB register window.
    fn unit_limits(&self, _mode: Mode, _base: PhysAddr) -> Result<UnitLimits, ConfigError> {
        Ok(UnitLimits {
            domain_ids: 65535,
            domain_ids_from: "DTE DomainID (16 bits, 0 reserved)".into(),
            address_bits: 52,
            address_bits_from: "DTE and PTE address fields (bits 51:12)",
            window: regs::MMIO_WINDOW,
        })
    }

    /// Device table up to the last DeviceID, tables of 4 levels per domain (and a GCR3
    /// table in v2), command buffer, event log and completion store, the KHO blob
    /// (record: 0x40-byte header, 16 bytes per domain and page run, 64 per device).
    fn pool_needs(&self, s: &Scenario, mode: Mode) -> Option<PoolNeeds> {
        let domains = s.domains as u64 + 1;
        let devices = s.devices.len() as u64 + 1;
        let mut per_domain = 1u64 + (mode == Mode::V2) as u64;
        for &ps in &s.page_sizes {
            let len = s.map_bytes.checked_next_multiple_of(ps.bytes())?;
            per_domain = per_domain.checked_add(table_pages(len, ps))?;
        }
        let tables = per_domain.checked_mul(domains)?;
        let devtab = regs::devtab_size_for(*self.device_ids.end()) + 1;
        let rings = 3;
        let structures = tables.checked_add(devtab)?.checked_add(rings)?;
        let ranges = domains.checked_mul(s.page_sizes.len() as u64)?;
        let record_bytes = structures
            .checked_add(domains)?
            .checked_mul(16)?
            .checked_add(devices.checked_mul(64)?)?
            .checked_add(0x40 + 256)?;
        let other_bytes = ranges.checked_mul(16)?.checked_add(256)?;
        let kho = (2 + 1 + record_bytes.div_ceil(PAGE) + other_bytes.div_ceil(PAGE))
            .checked_add(kho_tree_pages(s.ram.1 / PAGE))?;
        let old = structures.checked_add(kho)?;
        old.checked_mul(PAGE)?;
        // New kernel: fresh rings and the tables of one 4K mapping after finish.
        let new = rings + LEVELS as u64;
        Some(PoolNeeds {
            old,
            new,
            old_parts: vec![
                (tables, "domain tables"),
                (devtab, "device table"),
                (rings, "command buffer, event log, completion store"),
                (kho, "KHO blob"),
            ],
        })
    }

    fn model(&self, _mode: Mode, base: PhysAddr) -> Result<Box<dyn IommuModel>, String> {
        Ok(Box::new(AmdViUnit::new(self.model_config(base))))
    }

    fn pool(&self, base: PhysAddr, bytes: u64) -> PagePool {
        PagePool::new(base, bytes)
    }

    fn exclude(&self, pool: &mut PagePool, preserved: &PageSet) {
        pool.exclude(preserved);
    }

    fn bring_up(&self, _mode: Mode, cx: Ctx<'_, PagePool>) -> Result<Unit, String> {
        let cfg = self.unit_config(cx.base);
        with_hw(cx, |hw| Unit::init(hw, &cfg)).map_err(|e| e.to_string())
    }

    fn create_domain(
        &self,
        unit: &mut Unit,
        mode: Mode,
        cx: Ctx<'_, PagePool>,
    ) -> Result<DomainId, String> {
        let kind: DomainKind = match mode {
            Mode::V1 => unit.default_v1(),
            Mode::V2 => unit.default_v2(),
        };
        with_hw(cx, |hw| unit.create_domain(hw, kind)).map_err(|e| e.to_string())
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
        with_hw(cx, |hw| unit.attach(hw, rid.sid(), did)).map_err(|e| e.to_string())
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
            devices: devices.iter().map(|r| r.sid()).collect(),
        };
        with_hw(cx, |hw| unit.prepare(hw, kho, &sel))
            .map(|r| r.record_bytes as u64)
            .map_err(|e| e.to_string())
    }

    /// The work of freeze: the DTE qwords written and the commands queued.
    fn freeze(&self, unit: &mut Unit, cx: Ctx<'_, PagePool>) -> Result<u64, String> {
        with_hw(cx, |hw| unit.freeze(hw))
            .map(|r| r.entries_written + r.commands)
            .map_err(|e| e.to_string())
    }

    fn adopt(
        &self,
        _mode: Mode,
        cx: Ctx<'_, PagePool>,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Unit, Adopted), String> {
        let cfg = self.unit_config(cx.base);
        match with_hw(cx, |hw| {
            Unit::adopt_with_preserved(hw, &cfg, blob, preserved)
        }) {
            Ok((u, r)) => Ok((
                u,
                Adopted {
                    work: r.registers_read + r.entries_read,
                    blocked: r
                        .blocked
                        .iter()
                        .map(|b| (RequesterId::from_sid(0, b.device_id), b.error.to_string()))
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
    fn modes_parse_and_print() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(&m.to_string()).unwrap(), m);
        }
        assert!(Mode::parse("v3").is_err());
    }

    /// The device table is sized by the last DeviceID: 512 pages for all 65536.
    #[test]
    fn pools_count_the_device_table() {
        let s = crate::layout::tests::small_machine();
        let all = AmdVi::default().pool_needs(&s, Mode::V1).unwrap();
        assert_eq!(all.old_parts[1], (512, "device table"));
        let few = AmdVi {
            device_ids: 0..=0xff,
        }
        .pool_needs(&s, Mode::V1)
        .unwrap();
        assert_eq!(few.old_parts[1], (2, "device table"));
        assert_eq!(all.old_parts.iter().map(|p| p.0).sum::<u64>(), all.old);
    }
}
