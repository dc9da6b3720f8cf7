//! The "done when" for SMMUv3: the runner drives the `smmuv3` driver and
//! handover on the emulated SMMU in every mode (stage 1, stage 2, nested), with linear
//! and 2-level stream tables and 4, 16 and 64 KiB granules, and every run is clean:
//! no fault and no wrong byte for the preserved masters, the unpreserved master faults
//! from freeze on, and the mappings after adopt are those before prepare.

use iommu_core::PhysAddr;
use scenarios::arch::smmuv3::{Mode, Smmuv3, Strtab};
use scenarios::arch::Arch;
use scenarios::{run_on, RunOptions, Scenario};
use smmuv3::hw::Granule;

/// The default scenario (4 masters on two buses in 2 domains) on an SMMU below RAM,
/// with the granule's page sizes and fewer DMA steps.
fn scenario(arch: &Smmuv3) -> Scenario {
    let mut s = Scenario::default_scenario();
    s.name = format!("smmuv3-{}-{}", arch.strtab, arch.granule);
    s.unit_base = PhysAddr(0x9000_0000);
    s.page_sizes = arch.page_sizes().to_vec();
    s.dma_steps = 3;
    s
}

fn clean(strtab: Strtab, granule: Granule) {
    let arch = Smmuv3 { strtab, granule };
    let s = scenario(&arch);
    let r = run_on(&arch, &s, &Mode::ALL, &RunOptions::default()).expect("the scenario runs");
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.modes.len(), 3);
    for m in &r.modes {
        assert_eq!(m.faults(), 0, "{}", m.mode);
        assert!(m.mappings_unchanged, "{}", m.mode);
        assert!(m.record_bytes > 0);
        // The unpreserved master's DMA was expected to fail from freeze on, and did
        // (a transfer that went through would be a mismatch).
        assert!(m.phases[2..].iter().all(|p| p.expected_faults > 0), "{m:?}");
        assert!(m.phases.iter().all(|p| p.mismatches == 0));
        assert!(
            m.verify.domains >= 2 && m.verify.leaf_targets_checked > 0,
            "{m:?}"
        );
        assert_eq!(m.finish.pages_kept, 0);
    }
}

#[test]
fn linear_4k_every_mode_clean() {
    clean(Strtab::Linear, Granule::K4);
}

#[test]
fn two_level_4k_every_mode_clean() {
    clean(Strtab::TwoLevel, Granule::K4);
}

#[test]
fn two_level_64k_every_mode_clean() {
    clean(Strtab::TwoLevel, Granule::K64);
}

#[test]
fn linear_16k_every_mode_clean() {
    clean(Strtab::Linear, Granule::K16);
}
