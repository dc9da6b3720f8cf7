//! The scenario runner end to end: the default scenario runs clean in every mode, its
//! report counts what happened, and snapshots land where asked.

use iommu_core::PhysAddr;
use scenarios::config::{Mode, Scenario};
use scenarios::{run, RunOptions};

fn small(mut s: Scenario) -> Scenario {
    s.dma_steps = 2;
    s
}

#[test]
fn default_scenario_runs_clean_in_every_mode() {
    let r = run(&small(Scenario::default_scenario()), &RunOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.modes.len(), 3);
    for m in &r.modes {
        assert_eq!(m.faults(), 0);
        assert_eq!(m.phases.len(), 6);
        assert!(m.mappings_unchanged);
        assert!(m.record_bytes > 0);
        assert!(m.blackout.pages_poisoned > 0, "{m:?}");
        for p in &m.phases {
            assert!(p.transfers > 0 && p.bytes_checked > 0, "{p:?}");
        }
        // The unpreserved device faults from freeze on, and only then.
        assert_eq!(m.phases[0].expected_faults, 0);
        assert_eq!(m.phases[1].expected_faults, 0);
        assert!(m.phases[2..].iter().all(|p| p.expected_faults > 0));
    }
    let text = r.to_string();
    assert!(text.contains("all modes ok"), "{text}");
}

#[test]
fn snapshots_are_written_before_kexec_and_after_adopt() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = small(Scenario::default_scenario());
    s.modes = vec![Mode::Legacy];
    let opts = RunOptions {
        save_snapshots: Some(dir.path().to_path_buf()),
    };
    let r = run(&s, &opts).unwrap();
    assert!(r.is_clean(), "{r}");
    for when in ["before-kexec", "after-adopt"] {
        let p = dir.path().join(format!("legacy-{when}.elf"));
        let m = emulator::snapshot::load(&p).unwrap();
        assert_eq!(m.units().count(), 1);
    }
}

#[test]
fn a_machine_mirroring_other_addresses_runs_clean() {
    let mut s = small(Scenario::builtin("scalable-fs").unwrap());
    s.ram = (PhysAddr(1 << 32), 8 << 30);
    s.unit_base = PhysAddr(0xfed9_1000);
    s.devices = vec![
        "0000:17:00.0".parse().unwrap(),
        "0000:17:00.1".parse().unwrap(),
        "0000:b3:00.0".parse().unwrap(),
    ];
    s.domains = 3;
    s.page_sizes = vec![iommu_core::PageSize::SIZE_2M];
    let r = run(&s, &RunOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.modes[0].domains, 4);
}

#[test]
fn a_scenario_that_does_not_fit_is_refused_with_the_option_named() {
    let mut s = Scenario::default_scenario();
    s.ram = (PhysAddr(0), 1 << 30);
    let e = run(&s, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("--ram"), "{e}");
}

/// 65,535 devices (every BDF of segment 0 but the unpreserved device's) are refused
/// before anything is allocated for them, with the limit named.
#[test]
fn sixty_five_thousand_devices_are_refused_naming_the_limit() {
    let mut s = Scenario::default_scenario();
    s.devices = (0u32..=0xffff)
        .map(|i| {
            iommu_core::RequesterId::new(0, (i >> 8) as u8, ((i >> 3) & 31) as u8, (i & 7) as u8)
        })
        .filter(|&d| d != scenarios::runner::UNPRESERVED_DEVICE)
        .collect();
    assert_eq!(s.devices.len(), 65_535);
    let e = run(&s, &RunOptions::default()).unwrap_err();
    assert_eq!(e.exit_status(), scenarios::EXIT_USAGE);
    assert!(e.to_string().contains("MAX_DEVICES"), "{e}");
}

/// Exit statuses through the library: a bad scenario is 2, a snapshot that hit a full
/// disk (ENOSPC) is an I/O error, 3.
#[test]
fn a_full_disk_while_writing_a_snapshot_maps_to_the_io_exit_status() {
    let mut s = small(Scenario::default_scenario());
    s.dma_steps = 0;
    let e = run(&s, &RunOptions::default()).unwrap_err();
    assert_eq!(e.exit_status(), scenarios::EXIT_USAGE);
    let full = std::io::Error::from_raw_os_error(28); // ENOSPC
    let e = scenarios::RunError::Snapshot {
        path: "/snap/legacy-before-kexec.elf".into(),
        error: emulator::snapshot::SnapshotError::Io {
            path: "/snap/legacy-before-kexec.elf".into(),
            op: "writing",
            kind: full.kind(),
            message: full.to_string(),
        },
    };
    assert_eq!(e.exit_status(), scenarios::EXIT_IO);
    assert_eq!(scenarios::EXIT_IO, 3);
}
