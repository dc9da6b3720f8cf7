//! The VT-d driver's map/unmap on the generic page-table algorithm, on the emulator:
//! input-width limits per stage and the refusal to cut a large page.

#[path = "vtd_rig/mod.rs"]
mod vtd_rig;

use emulator::vtd::VtdConfig;
use iommu_core::pgtable::{Perms, WalkLimits};
use iommu_core::{Iova, PageSize, PhysAddr};
use vtd::driver::{DomainKind, ErrorKind, Mode, Unit, UnitConfig};
use vtd_rig::{Rig, BASE};

const K4: u64 = 4096;

fn up(rig: &mut Rig, mode: Mode) -> Unit {
    rig.hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, mode)))
        .expect("bring-up")
}

/// A 4-level first-stage domain takes canonical lower-half IOVAs only (47 bits, as its
/// format and Linux say): a page at 2^47 - 4 KiB maps, a page at 2^47 is refused, and
/// the domain still walks cleanly. (The old driver checked 48 bits and wrote a PML4
/// entry in the upper half, which its own walker then reported as an IOVA overflow.)
#[test]
fn first_stage_map_at_the_canonical_half_boundary() {
    let mut rig = Rig::new(VtdConfig::scalable(BASE));
    let mut unit = up(&mut rig, Mode::Scalable);
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::FirstStage))
        .unwrap();
    let top = 1u64 << 47;
    rig.hw(|hw| {
        unit.map(
            hw,
            d,
            Iova(top - K4),
            PhysAddr(0x4000_0000),
            K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
    })
    .expect("last lower-half page");
    let e = rig
        .hw(|hw| {
            unit.map(
                hw,
                d,
                Iova(top),
                PhysAddr(0x4000_1000),
                K4,
                PageSize::SIZE_4K,
                Perms::RW,
            )
        })
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::BadRange { why, .. } if why.contains("input address width")),
        "{e}"
    );
    let w = {
        let mem = rig.machine.mem();
        unit.walk_domain(&*mem, d, &WalkLimits::default()).unwrap()
    }
    .expect("the domain walks cleanly");
    assert_eq!(w.mappings.len(), 1);
    assert_eq!(w.mappings[0].iova, Iova(top - K4));
}

/// Unmapping 4 KiB out of a 2 MiB page is refused with `PartialLeaf`; the page stays,
/// nothing is invalidated, no table is allocated.
#[test]
fn unmap_cutting_a_large_page_changes_nothing() {
    for (cfg, mode, kind) in [
        (
            VtdConfig::legacy(BASE),
            Mode::Legacy,
            DomainKind::SecondStage,
        ),
        (
            VtdConfig::scalable(BASE),
            Mode::Scalable,
            DomainKind::FirstStage,
        ),
    ] {
        let mut rig = Rig::new(cfg);
        let mut unit = up(&mut rig, mode);
        let d = rig.hw(|hw| unit.create_domain(hw, kind)).unwrap();
        let m2 = 2u64 << 20;
        rig.hw(|hw| {
            unit.map(
                hw,
                d,
                Iova(m2),
                PhysAddr(0x4020_0000),
                m2,
                PageSize::SIZE_2M,
                Perms::RW,
            )
        })
        .unwrap();
        let before = unit.counters();
        let pages = unit.domain(d).unwrap().table_pages();
        let e = rig
            .hw(|hw| unit.unmap(hw, d, Iova(m2 + K4), K4))
            .unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::PartialLeaf { iova, size, .. } if iova == Iova(m2) && size == m2),
            "{kind:?}: {e}"
        );
        let after = unit.counters();
        assert_eq!(
            (
                after.descriptors,
                after.pages_allocated,
                after.leaves_unmapped
            ),
            (
                before.descriptors,
                before.pages_allocated,
                before.leaves_unmapped
            ),
            "{kind:?}"
        );
        assert_eq!(unit.domain(d).unwrap().table_pages(), pages);
        let w = {
            let mem = rig.machine.mem();
            unit.walk_domain(&*mem, d, &WalkLimits::default()).unwrap()
        }
        .unwrap();
        assert_eq!(w.mappings.len(), 1, "{kind:?}");
        assert_eq!((w.mappings[0].iova, w.mappings[0].size), (Iova(m2), m2));
    }
}
