//! The default scenario on AMD-Vi, both modes: a clean live update through the
//! arch-neutral runner (the "done when").

use scenarios::arch::amdvi::{AmdVi, Mode};
use scenarios::config::Scenario;
use scenarios::{run_on, RunOptions};

#[test]
fn default_scenario_runs_clean_in_v1_and_v2() {
    let mut s = Scenario::default_scenario();
    s.dma_steps = 2;
    let r = run_on(
        &AmdVi::default(),
        &s,
        &[Mode::V1, Mode::V2],
        &RunOptions::default(),
    )
    .unwrap();
    println!("{r}");
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.modes.len(), 2);
    for m in &r.modes {
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.faults(), 0, "faults on preserved devices: {m:?}");
        assert_eq!(m.phases.len(), 6);
        assert!(m.mappings_unchanged, "mappings differ after adopt");
        assert!(m.record_bytes > 0);
        assert!(m.blackout.pages_poisoned > 0, "{m:?}");
        for p in &m.phases {
            assert_eq!(p.mismatches, 0, "{p:?}");
            assert!(p.transfers > 0 && p.bytes_checked > 0, "{p:?}");
        }
        // The unpreserved device faults from freeze on, and only then.
        assert_eq!(m.phases[0].expected_faults, 0);
        assert_eq!(m.phases[1].expected_faults, 0);
        assert!(m.phases[2..].iter().all(|p| p.expected_faults > 0), "{m:?}");
        assert!(m.verify.domains > 0 && m.verify.tables > 0);
        assert_eq!(m.finish.pages_kept, 0);
    }
    assert!(r.to_string().contains("v1") && r.to_string().contains("v2"));
}
