//! Where a scenario's memory goes, and whether the scenario can run on its unit at all.
//!
//! Everything lies inside the scenario's RAM: the first MiB is left to "firmware", the
//! DMA targets (guest memory, preserved across the kexec like a VMM's) are placed at
//! their page size's alignment, largest pages first, and the two page pools (the old
//! kernel's: tables, the arch's structures and queues, KHO blob; the new kernel's: its
//! queues and the tables of the mapping added after `finish`) are sized by the arch
//! ([`Arch::pool_needs`]; VT-d's in [`crate::arch::vtd::VtdPoolNeeds`]) and placed in
//! what is left. What the unit can hold comes from [`Arch::unit_limits`]. All
//! arithmetic is checked: a scenario whose sizes overflow is refused, never wrapped.

use crate::arch::vtd::Vtd;
use crate::arch::{Arch, PoolNeeds};
use crate::config::{ConfigError, Scenario};
use iommu_core::pageset::MAX_ORDER;
use iommu_core::{Iova, PhysAddr, RequesterId};

/// The device added to every run that is attached but not preserved: its DMA must
/// fault from freeze on.
pub const UNPRESERVED_DEVICE: RequesterId = RequesterId::new(0, 0xf0, 0x1f, 7);

/// RAM left unused at the base, like a PC's first MiB (real-mode area, BIOS).
pub const FIRMWARE: u64 = 1 << 20;

/// Most devices a scenario may have: every device costs a workload per phase and, in
/// scalable mode, two table pages; beyond this a run is a stress test of the host.
pub const MAX_DEVICES: usize = 16384;

/// Most DMA steps per device and phase.
pub const MAX_DMA_STEPS: u32 = 1 << 16;

/// Most DMA steps per phase over all devices (devices x steps): bounds the run time
/// and what the checkers record in a phase.
pub const MAX_STEPS_PER_PHASE: u64 = 1 << 20;

/// First IOVA of every domain's mappings.
const IOVA_START: u64 = 1 << 32;

/// Preferred IOVA of the 4K mapping added after `finish`: far from the others, so the
/// map needs new table pages at several levels.
const EXTRA_IOVA: u64 = 1 << 40;

const PAGE: u64 = 4096;

/// Where everything goes in RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The old kernel's page pool: base and bytes.
    pub old_pool: (PhysAddr, u64),
    /// The new kernel's page pool: base and bytes.
    pub new_pool: (PhysAddr, u64),
    /// DMA target of each domain (the preserved ones, then the unpreserved device's)
    /// and page size, in the scenario's page-size order.
    pub targets: Vec<Vec<PhysAddr>>,
    /// IOVA of each domain's mapping of each page size.
    pub iovas: Vec<Vec<Iova>>,
    /// IOVA of the 4K mapping added to domain 0 after `finish` (clear of its mappings).
    pub extra_iova: Iova,
}

fn overflow(option: &'static str, value: impl Into<String>) -> ConfigError {
    ConfigError::new(
        option,
        value,
        "too large: the scenario's sizes overflow 64-bit addresses",
    )
}

/// Pages of the KHO preserved-memory tree for any set inside `ram_pages` pages: per
/// order, block keys inside RAM form one interval, and a node of level `l` covers
/// `2^(15 + 9 l)` consecutive keys, so each level needs at most `interval / cover + 1`
/// nodes per order (plus the root).
pub fn kho_tree_pages(ram_pages: u64) -> u64 {
    let mut n = 1;
    for level in 0..5u32 {
        for order in 0..=MAX_ORDER {
            let keys = (ram_pages >> order) + 1;
            n += keys.div_ceil(1 << (15 + 9 * level)) + 1;
        }
    }
    n
}

/// Free RAM, as sorted disjoint `[start, end)` ranges, handed out first-fit.
struct Free(Vec<(u64, u64)>);

impl Free {
    /// `len` bytes aligned to `align`, first fit.
    fn take(&mut self, len: u64, align: u64) -> Option<u64> {
        for i in 0..self.0.len() {
            let (s, e) = self.0[i];
            let Some(a) = s.checked_next_multiple_of(align) else {
                continue;
            };
            let Some(end) = a.checked_add(len) else {
                continue;
            };
            if end <= e {
                self.0.remove(i);
                if end < e {
                    self.0.insert(i, (end, e));
                }
                if s < a {
                    self.0.insert(i, (s, a));
                }
                return Some(a);
            }
        }
        None
    }
}

impl Layout {
    /// Plans VT-d scenario `s` (already [validated](Scenario::validate)) for every
    /// mode it runs: [`Layout::plan_for`] with [`Vtd`] and `s.modes`.
    pub fn plan(s: &Scenario) -> Result<Self, ConfigError> {
        Self::plan_for(&Vtd, s, &s.modes)
    }

    /// Plans scenario `s` (already validated) on `arch` for each of `modes`; the pools
    /// are sized for the mode that needs most. Says which part does not fit and how
    /// much it needs.
    pub fn plan_for<A: Arch>(
        arch: &A,
        s: &Scenario,
        modes: &[A::Mode],
    ) -> Result<Self, ConfigError> {
        let (base, size) = s.ram;
        let ram = || format!("{base}+{size:#x}");
        let map = || s.map_bytes.to_string();
        let iova_bits = arch.iova_bits();
        // 2^bits as u128: a 64-bit input range does not overflow.
        let iova_limit = 1u128 << iova_bits.min(64);
        let mut needs: Option<PoolNeeds> = None;
        for &m in modes {
            let n = arch
                .pool_needs(s, m)
                .filter(|n| n.old.checked_mul(PAGE).is_some() && n.new.checked_mul(PAGE).is_some())
                .ok_or_else(|| overflow("map-size", map()))?;
            needs = Some(match needs {
                Some(o) if o.old >= n.old => o,
                _ => n,
            });
        }
        let needs = needs.ok_or_else(|| ConfigError::new("mode", "", "no mode to run"))?;
        let old_parts = needs
            .old_parts
            .iter()
            .map(|(n, what)| format!("{n} of {what}"))
            .collect::<Vec<_>>()
            .join(", ");

        // IOVAs: every domain maps each page size in turn from 4 GiB, a page's gap
        // between them, inside the tables' input range.
        let mut iova = IOVA_START;
        let mut domain_iovas = Vec::new();
        let mut last_end = iova;
        for &ps in &s.page_sizes {
            let len = s.map_bytes.checked_next_multiple_of(ps.bytes());
            iova = iova
                .checked_next_multiple_of(ps.bytes())
                .ok_or_else(|| overflow("map-size", map()))?;
            domain_iovas.push(Iova(iova));
            let end = len
                .and_then(|l| iova.checked_add(l))
                .ok_or_else(|| overflow("map-size", map()))?;
            last_end = end;
            iova = end
                .checked_add(ps.bytes())
                .ok_or_else(|| overflow("map-size", map()))?;
        }
        if last_end as u128 > iova_limit {
            return Err(ConfigError::new(
                "map-size",
                map(),
                format!(
                    "the mappings of a domain reach IOVA {last_end:#x}, beyond the domain \
                     tables' {iova_bits}-bit input range (they start at {IOVA_START:#x}, one \
                     run per page size)"
                ),
            ));
        }
        // The mapping after finish: at 1 TiB, or past the last mapping when that
        // reaches 1 TiB, aligned to 512 GiB so it needs tables of its own.
        let extra = if last_end <= EXTRA_IOVA {
            Some(EXTRA_IOVA)
        } else {
            last_end.checked_next_multiple_of(1 << 39)
        };
        let extra = extra.filter(|&e| e.checked_add(PAGE).is_some_and(|x| x as u128 <= iova_limit));
        let Some(extra) = extra else {
            return Err(ConfigError::new(
                "map-size",
                map(),
                format!(
                    "the mappings of a domain end at IOVA {last_end:#x}, leaving no room for \
                     the 4K mapping added after finish below the tables' {iova_bits}-bit \
                     input range"
                ),
            ));
        };

        // DMA targets, largest pages first so alignment wastes least.
        let domains = s.domains + 1;
        let mut lens = Vec::new();
        let mut data_bytes: u64 = 0;
        for &ps in &s.page_sizes {
            let len = s
                .map_bytes
                .checked_next_multiple_of(ps.bytes())
                .ok_or_else(|| overflow("map-size", map()))?;
            data_bytes = len
                .checked_mul(domains as u64)
                .and_then(|b| b.checked_add(data_bytes))
                .ok_or_else(|| overflow("map-size", map()))?;
            lens.push(len);
        }
        let too_small = |part: String| {
            ConfigError::new(
                "ram",
                ram(),
                format!(
                    "too small for this scenario: {part} does not fit. The scenario needs \
                     {data_bytes:#x} bytes of DMA targets ({domains} domains, each target \
                     aligned to its page size), {:#x} bytes for the old kernel's page pool \
                     ({} pages: {old_parts}), {:#x} bytes for the new kernel's and \
                     {FIRMWARE:#x} bytes of firmware",
                    needs.old * PAGE,
                    needs.old,
                    needs.new * PAGE,
                ),
            )
        };
        let end = base
            .0
            .checked_add(size)
            .ok_or_else(|| ConfigError::new("ram", ram(), "overflows"))?;
        let mut free = Free(vec![(base.0.saturating_add(FIRMWARE).min(end), end)]);
        let mut order: Vec<usize> = (0..s.page_sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(s.page_sizes[i].bytes()));
        let mut targets = vec![vec![PhysAddr(0); s.page_sizes.len()]; domains];
        for &i in &order {
            let (ps, len) = (s.page_sizes[i], lens[i]);
            for (d, t) in targets.iter_mut().enumerate() {
                let at = free.take(len, ps.bytes()).ok_or_else(|| {
                    too_small(format!(
                        "the {len:#x}-byte DMA target of {ps} pages ({ps}-aligned) of domain \
                         {d}"
                    ))
                })?;
                t[i] = PhysAddr(at);
            }
        }
        // The pools' byte sizes were checked to fit in 64 bits above.
        let old = free
            .take(needs.old * PAGE, PAGE)
            .ok_or_else(|| too_small("the old kernel's page pool".into()))?;
        let new = free
            .take(needs.new * PAGE, PAGE)
            .ok_or_else(|| too_small("the new kernel's page pool".into()))?;
        Ok(Self {
            old_pool: (PhysAddr(old), needs.old * PAGE),
            new_pool: (PhysAddr(new), needs.new * PAGE),
            targets,
            iovas: vec![domain_iovas; domains],
            extra_iova: Iova(extra),
        })
    }
}

/// Checks what VT-d scenario `s` asks of its unit in each of its modes:
/// [`check_unit_for`] with [`Vtd`] and `s.modes`.
pub fn check_unit(s: &Scenario) -> Result<(), ConfigError> {
    check_unit_for(&Vtd, s, &s.modes)
}

/// Checks what the scenario asks of the unit in each of `modes`: enough domain IDs
/// (VT-d: CAP.ND) for the preserved domains plus the unpreserved device's, RAM inside
/// the unit's address width (VT-d: CAP.MGAW), an aligned register window clear of RAM,
/// and no preserved device on the built-in unpreserved device's BDF.
pub fn check_unit_for<A: Arch>(
    arch: &A,
    s: &Scenario,
    modes: &[A::Mode],
) -> Result<(), ConfigError> {
    if let Some(d) = s.devices.iter().find(|&&d| d == UNPRESERVED_DEVICE) {
        return Err(ConfigError::new(
            "device",
            d.to_string(),
            "this BDF is taken by the built-in device that is attached but not preserved",
        ));
    }
    let (base, size) = s.ram;
    let ram_end = base
        .0
        .checked_add(size)
        .ok_or_else(|| ConfigError::new("ram", format!("{base}+{size:#x}"), "overflows"))?;
    let unit = s.unit_base;
    let align = arch.window_align();
    if unit.0 % align != 0 {
        return Err(ConfigError::new(
            "unit-base",
            unit.to_string(),
            format!("the register window must be {} KiB aligned", align >> 10),
        ));
    }
    for &mode in modes {
        let limits = arch.unit_limits(mode, unit)?;
        let ids = limits.domain_ids;
        if s.domains as u64 + 1 > ids {
            return Err(ConfigError::new(
                "domains",
                s.domains.to_string(),
                format!(
                    "the {mode} unit has {ids} domain IDs ({}), and the run needs \
                     one more than --domains for the domain of the unpreserved device \
                     {UNPRESERVED_DEVICE}: at most {}",
                    limits.domain_ids_from,
                    ids.saturating_sub(1)
                ),
            ));
        }
        let width = limits.address_bits;
        if width < 64 && ram_end > 1u64 << width {
            return Err(ConfigError::new(
                "ram",
                format!("{base}+{size:#x}"),
                format!(
                    "RAM ends at {ram_end:#x}, above the {mode} unit's {width}-bit address \
                     width ({}): the unit cannot reach it",
                    limits.address_bits_from
                ),
            ));
        }
        let window = limits.window;
        let Some(wend) = unit.0.checked_add(window) else {
            return Err(ConfigError::new(
                "unit-base",
                unit.to_string(),
                "the register window runs past the end of the address space",
            ));
        };
        if unit.0 < ram_end && base.0 < wend {
            return Err(ConfigError::new(
                "unit-base",
                unit.to_string(),
                format!(
                    "the unit's register window [{unit}, {wend:#x}) overlaps RAM \
                     [{base}, {ram_end:#x})"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Mode;
    use iommu_core::PageSize;

    /// 64 MiB at 0x20000000, one legacy device in one domain, 64 KiB of 4K mappings.
    pub(crate) fn small_machine() -> Scenario {
        let mut s = Scenario::default_scenario();
        s.ram = (PhysAddr(0x2000_0000), 64 << 20);
        s.modes = vec![Mode::Legacy];
        s.devices = vec![RequesterId::new(0, 0, 2, 0)];
        s.domains = 1;
        s.map_bytes = 64 << 10;
        s.page_sizes = vec![PageSize::SIZE_4K];
        s
    }

    /// 64 MiB at 0x20000000, one device, one domain, 64 KiB of 4K mappings: everything
    /// lies inside that RAM (the old layout asked for 0x20022000 bytes).
    #[test]
    fn a_64m_machine_at_512m_holds_a_small_scenario_inside_its_ram() {
        let s = small_machine();
        let l = Layout::plan(&s).unwrap();
        let (b, z) = s.ram;
        let inside = |a: u64, len: u64| a >= b.0 && a + len <= b.0 + z;
        assert!(inside(l.old_pool.0 .0, l.old_pool.1));
        assert!(inside(l.new_pool.0 .0, l.new_pool.1));
        for t in l.targets.iter().flatten() {
            assert!(inside(t.0, 64 << 10));
        }
    }

    /// Targets of 2M and 1G pages are aligned to their page size, and no two parts of
    /// the layout overlap.
    #[test]
    fn large_page_targets_are_aligned_and_nothing_overlaps() {
        let mut s = Scenario::default_scenario();
        s.ram = (PhysAddr(0x1_2345_6000), 8 << 30);
        let l = Layout::plan(&s).unwrap();
        let mut parts = vec![l.old_pool, l.new_pool];
        for t in &l.targets {
            for (i, &ps) in s.page_sizes.iter().enumerate() {
                assert_eq!(t[i].0 % ps.bytes(), 0, "{ps} target {}", t[i]);
                parts.push((t[i], s.map_bytes.next_multiple_of(ps.bytes())));
            }
        }
        parts.sort_by_key(|p| p.0);
        for w in parts.windows(2) {
            assert!(w[0].0 .0 + w[0].1 <= w[1].0 .0, "{w:?}");
        }
    }

    /// A 1G page needs RAM holding an aligned 1 GiB per domain: 1.5 GiB from 512 MiB
    /// holds one (at 1 GiB) but the run needs two (the preserved domain and the
    /// unpreserved device's), and the message names the targets.
    #[test]
    fn a_1g_page_without_aligned_ram_is_refused_naming_the_targets() {
        let mut s = small_machine();
        s.ram = (PhysAddr(0x2000_0000), 1536 << 20);
        s.page_sizes = vec![PageSize::SIZE_1G];
        let e = Layout::plan(&s).unwrap_err();
        assert_eq!(e.option, "ram");
        assert!(e.reason.contains("DMA targets"), "{e}");
    }
}
