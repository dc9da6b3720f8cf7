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
    assert!(out.contains("scenario default (seed 0x1234)"), "{out}");
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
