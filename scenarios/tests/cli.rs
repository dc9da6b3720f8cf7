//! `iommu-emu` as a user runs it: options parse, exit statuses mean what the help says.

use std::process::Command;

fn emu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iommu-emu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_option_parses_and_a_mirrored_machine_runs_clean() {
    let (code, out, err) = emu(&[
        "--scenario",
        "default",
        "--mode",
        "legacy",
        "--mode",
        "scalable-fs",
        "--seed",
        "0x1234",
        "--ram",
        "0x100000000:16G",
        "--unit-base",
        "0xfed91000",
        "--device",
        "0000:17:00.0",
        "--device",
        "17:00.1",
        "--device",
        "b3:00.0",
        "--domains",
        "2",
        "--map-size",
        "4M",
        "--page-sizes",
        "4K,2M",
        "--dma-steps",
        "2",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("scenario default on VT-d (seed 0x1234)"),
        "{out}"
    );
    assert!(
        out.contains("== mode legacy: 4 devices (3 preserved), 3 domains"),
        "{out}"
    );
    assert!(out.contains("== mode scalable-fs"), "{out}");
    assert!(out.trim_end().ends_with("all modes ok"), "{out}");
}

#[test]
fn list_names_the_builtin_scenarios() {
    let (code, out, _) = emu(&["--list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "default"));
    assert!(out.lines().any(|l| l == "many-domains"));
}

#[test]
fn bad_command_lines_exit_2_with_the_reason() {
    for (args, says) in [
        (&["--device", "zz"][..], "--device"),
        (&["--page-sizes", "3K"][..], "--page-sizes"),
        (&["--ram", "0:1G"][..], "--ram"),
        (&["--scenario", "nope"][..], "no built-in scenario"),
        (&["--mode", "nested"][..], "--mode"),
    ] {
        let (code, out, err) = emu(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `n` distinct BDFs on segment 0 from 00:00.0 up, skipping the built-in unpreserved
/// device's (f0:1f.7), as `--device` options.
fn devices(n: usize) -> Vec<String> {
    (0u32..)
        .map(|i| format!("{:02x}:{:02x}.{:x}", i >> 8, (i >> 3) & 31, i & 7))
        .filter(|b| b != "f0:1f.7")
        .take(n)
        .flat_map(|b| ["--device".to_string(), b])
        .collect()
}

fn emu_owned(args: &[String]) -> (i32, String, String) {
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    emu(&v)
}

fn assert_refused(args: &[&str], says: &[&str]) {
    let (code, out, err) = emu(args);
    assert_eq!(code, 2, "{args:?}: {out}{err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: {s:?} not in {err}");
    }
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(out.is_empty(), "{args:?}: nothing runs: {out}");
}

/// Issue 7 item 12: 62 MiB of RAM at 0x20000000, one device, one domain, 64 KiB of 4K
/// mappings, every mode: everything (pools, targets) lies inside that RAM. The old
/// layout reserved 16 MiB of firmware, two pools of 64 MiB and put the targets at the
/// next 1 GiB boundary ("0x20022000 bytes needed").
#[test]
fn a_62m_machine_at_0x20000000_runs_one_device_with_64k_of_4k_mappings() {
    let (code, out, err) = emu(&[
        "--ram",
        "0x20000000:62M",
        "--device",
        "00:02.0",
        "--domains",
        "1",
        "--map-size",
        "64K",
        "--page-sizes",
        "4K",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.trim_end().ends_with("all modes ok"), "{out}");
}

/// A scenario too large for its RAM names the part that does not fit and what every
/// part needs: 8 MiB of 4K mappings per domain (two domains) in 16 MiB, and 1G pages
/// in 1 GiB of RAM at 512 MiB (no 1 GiB-aligned GiB inside it).
#[test]
fn ram_too_small_says_which_part_needs_how_much() {
    assert_refused(
        &[
            "--ram",
            "0x20000000:16M",
            "--device",
            "00:02.0",
            "--domains",
            "1",
            "--map-size",
            "8M",
            "--page-sizes",
            "4K",
        ],
        &[
            "--ram",
            "DMA target of 4K pages",
            "0x1000000 bytes of DMA targets",
            "old kernel's page pool",
        ],
    );
    assert_refused(
        &[
            "--ram",
            "0x20000000:1G",
            "--device",
            "00:02.0",
            "--domains",
            "1",
            "--map-size",
            "4K",
            "--page-sizes",
            "1G",
        ],
        &[
            "--ram",
            "0x40000000-byte DMA target of 1G pages (1G-aligned)",
        ],
    );
}

/// `--map-size` near 2^64: the layout's arithmetic would wrap (or panic in a debug
/// build); the option is refused instead.
#[test]
fn map_size_near_2_pow_64_is_refused_not_wrapped() {
    assert_refused(
        &["--map-size", "0xfffffffffffff000"],
        &["--map-size", "too large"],
    );
    // Fits in 64 bits, not in the domains' 48-bit IOVA space.
    assert_refused(
        &["--map-size", "16383T"],
        &["--map-size", "beyond the domain tables' 48-bit input range"],
    );
}

/// 256 domains on a unit with 256 domain IDs (CAP.ND = 2): the unpreserved device's
/// domain makes 257, refused with CAP.ND and the unpreserved domain named; 255 runs.
#[test]
fn more_domains_than_cap_nd_counting_the_unpreserved_one_are_refused() {
    let mut args: Vec<String> = ["--mode", "legacy", "--domains", "256", "--map-size", "4K"]
        .map(String::from)
        .to_vec();
    args.extend(["--page-sizes", "4K", "--dma-steps", "1"].map(String::from));
    args.extend(devices(256));
    let (code, out, err) = emu_owned(&args);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("CAP.ND") && err.contains("unpreserved"),
        "{err}"
    );
    assert!(err.contains("at most 255"), "{err}");
    args[3] = "255".into();
    let (code, out, err) = emu_owned(&args);
    assert_eq!(code, 0, "{out}{err}");
}

/// 10,000 devices in scalable mode need a PASID directory and table each (20,002
/// pages); the old pool sizing ignored them and the run ran out of pages (exit 1).
#[test]
fn ten_thousand_scalable_mode_devices_run_clean() {
    let mut args: Vec<String> = [
        "--mode",
        "scalable-ss",
        "--domains",
        "1",
        "--map-size",
        "4K",
        "--page-sizes",
        "4K",
        "--dma-steps",
        "1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(devices(10_000));
    let (code, out, err) = emu_owned(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("10001 devices (10000 preserved)"), "{out}");
}

/// RAM ending above the unit's 48-bit address width (legacy, CAP.MGAW = 47): refused
/// before anything runs (it was an invalidation-queue error after bring-up, exit 1).
#[test]
fn ram_above_the_units_address_width_is_refused() {
    assert_refused(
        &["--mode", "legacy", "--ram", "0xffff00000000:8G"],
        &["--ram", "48-bit address width", "CAP.MGAW"],
    );
}

/// The unit's register window inside RAM (it would sit on top of the root table) or
/// not 4 KiB aligned.
#[test]
fn unit_window_overlapping_ram_or_unaligned_is_refused() {
    assert_refused(
        &["--ram", "0x100000000:8G", "--unit-base", "0x100001000"],
        &["--unit-base", "overlaps RAM"],
    );
    assert_refused(
        &["--ram", "0x100000000:8G", "--unit-base", "0xfed90800"],
        &["--unit-base", "4 KiB aligned"],
    );
}

/// `--dma-steps 0` checked no DMA of the preserved devices and said "ok".
#[test]
fn zero_dma_steps_are_refused() {
    assert_refused(
        &["--dma-steps", "0"],
        &["--dma-steps", "every phase must check"],
    );
}

/// Counts beyond the limits are refused with the limit named, before any memory is
/// spent on them: 2^32 - 1 DMA steps, 16,385 devices, devices x steps above 2^20.
#[test]
fn dma_steps_and_device_counts_beyond_the_limits_are_refused_naming_the_limit() {
    assert_refused(&["--dma-steps", "4294967295"], &["MAX_DMA_STEPS"]);
    let mut args = devices(16_385);
    args.extend(["--domains", "1"].map(String::from));
    let (code, _, err) = emu_owned(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MAX_DEVICES"), "{err}");
    let mut args = devices(100);
    args.extend(["--domains", "1", "--dma-steps", "65536"].map(String::from));
    let (code, _, err) = emu_owned(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MAX_STEPS_PER_PHASE"), "{err}");
}

/// A 1021 GiB mapping of 1G pages from IOVA 4 GiB reaches past 1 TiB, where the 4K
/// mapping added after finish used to go (it collided: "map after finish" failed).
#[test]
fn the_mapping_after_finish_clears_a_1021g_mapping() {
    let (code, out, err) = emu(&[
        "--mode",
        "legacy",
        "--ram",
        "0:4T",
        "--unit-base",
        "0x40000000000",
        "--device",
        "00:02.0",
        "--domains",
        "1",
        "--map-size",
        "1021G",
        "--page-sizes",
        "1G",
        "--dma-steps",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim_end().ends_with("all modes ok"), "{out}");
}

/// A preserved device on the built-in unpreserved device's BDF (f0:1f.7).
#[test]
fn a_bdf_equal_to_the_unpreserved_devices_is_refused() {
    assert_refused(
        &["--device", "f0:1f.7", "--device", "00:02.0"],
        &["--device", "0000:f0:1f.7", "not preserved"],
    );
}

/// `--save-snapshots` naming an existing file (or a path through one).
#[test]
fn save_snapshots_naming_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    for p in [file.clone(), file.join("sub")] {
        assert_refused(
            &["--mode", "legacy", "--save-snapshots", p.to_str().unwrap()],
            &["--save-snapshots", "is not a directory"],
        );
    }
}

/// A snapshot that cannot be written (its name taken by a non-empty directory, so the
/// rename fails) is an I/O error: exit status 3, not 2.
#[test]
fn a_snapshot_that_cannot_be_written_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("legacy-before-kexec.elf");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    let (code, out, err) = emu(&[
        "--mode",
        "legacy",
        "--dma-steps",
        "1",
        "--save-snapshots",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("cannot write snapshot"), "{err}");
}

/// Standard output on a full disk (/dev/full: every write fails with ENOSPC): the
/// report cannot be written, exit status 3 (it was a panic, 101).
#[test]
fn a_full_disk_for_the_report_exits_3() {
    for args in [
        &["--mode", "legacy", "--dma-steps", "1"][..],
        &["--list"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_iommu-emu"))
            .args(args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("writing the report"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `--help` documents every exit status.
#[test]
fn help_documents_every_exit_status() {
    let (code, out, _) = emu(&["--help"]);
    assert_eq!(code, 0);
    for s in [
        "0  every mode",
        "1  a fault",
        "2  the command line",
        "3  an I/O error",
    ] {
        assert!(out.contains(s), "{s:?} not in {out}");
    }
}

/// `--arch` and `--mode` choose what runs; a mode no architecture has, or an unknown
/// architecture, is refused (status 2) before anything runs, naming what exists.
#[test]
fn arch_and_mode_choose_the_runs_and_unknown_names_are_refused() {
    let (code, out, err) = emu(&[
        "--arch",
        "vtd",
        "--mode",
        "legacy",
        "--map-size",
        "64K",
        "--page-sizes",
        "4K",
        "--dma-steps",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scenario default on VT-d"), "{out}");
    assert!(
        out.contains("== mode legacy") && !out.contains("== mode scalable"),
        "{out}"
    );
    let (code, out, err) = emu(&["--mode", "v9"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("--mode \"v9\": no architecture has this mode (vtd: legacy"),
        "{err}"
    );
    let (code, _, err) = emu(&["--arch", "ppc"]);
    assert_eq!(code, 2);
    assert!(err.contains("ppc"), "{err}");
}

/// `--amdvi-device-ids` sets the AMD-Vi unit's DeviceID range: a range holding the
/// devices runs clean; one leaving a preserved device outside is refused (status 2),
/// not run.
#[test]
fn amdvi_device_id_range_is_the_units_and_must_hold_the_devices() {
    let small = [
        "--arch",
        "amdvi",
        "--mode",
        "v1",
        "--map-size",
        "64K",
        "--page-sizes",
        "4K",
        "--dma-steps",
        "1",
    ];
    let mut args = small.to_vec();
    args.extend(["--amdvi-device-ids", "00:00.0-f0:1f.7"]);
    let (code, out, err) = emu(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scenario default on AMD-Vi"), "{out}");
    let mut args = small.to_vec();
    args.extend(["--amdvi-device-ids", "00:00.0-00:1f.7"]);
    let (code, out, err) = emu(&args);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("3b:00.0") || out.contains("3b:00.0"),
        "{err}{out}"
    );
}
