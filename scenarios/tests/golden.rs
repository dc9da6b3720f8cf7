//! `iommu-emu`'s VT-d output, pinned byte for byte: the files under `tests/golden/`
//! were captured from the runner before it was split into the arch-neutral runner and
//! the VT-d arch (`scenarios::arch::vtd`), and the refusals below are the messages it
//! gave then. A change to the report, a step's order or a limit's wording shows here.
//! Changed since on purpose: the header names the architecture (`on VT-d`), since one
//! run may play several.

use std::process::Command;

fn emu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iommu-emu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn golden(name: &str) -> String {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The default scenario on VT-d: legacy, scalable-ss and scalable-fs mode (what a run
/// without options printed before other architectures joined).
#[test]
fn the_default_run_on_vtd_prints_exactly_the_golden_report() {
    let (code, out, err) = emu(&["--arch", "vtd"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, golden("default.txt"));
}

/// No options: every architecture in every mode, VT-d's report first and unchanged.
#[test]
fn the_default_run_plays_every_arch_and_starts_with_the_vtd_report() {
    let (code, out, err) = emu(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&golden("default.txt")), "{out}");
    for arch in ["VT-d", "AMD-Vi"] {
        assert!(
            out.contains(&format!("scenario default on {arch} ")),
            "{out}"
        );
    }
    for mode in ["legacy", "scalable-ss", "scalable-fs", "v1", "v2"] {
        assert!(out.contains(&format!("== mode {mode}: ")), "{out}");
    }
}

/// One mode, two page sizes, three domains over the default devices.
#[test]
fn scalable_fs_with_4k_2m_pages_and_3_domains_prints_exactly_the_golden_report() {
    let (code, out, err) = emu(&[
        "--mode",
        "scalable-fs",
        "--page-sizes",
        "4K,2M",
        "--domains",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, golden("scalable-fs-4k-2m-3-domains.txt"));
}

#[test]
fn list_prints_exactly_the_golden_list() {
    let (code, out, _) = emu(&["--list"]);
    assert_eq!(code, 0);
    assert_eq!(out, golden("list.txt"));
}

/// The refusals whose wording now comes from the VT-d arch (page sizes, CAP.ND,
/// CAP.MGAW, window alignment, the old pool's parts) read as they did.
#[test]
fn limit_refusals_from_the_vtd_arch_read_exactly_as_before() {
    let devices: Vec<String> = (0..300u32)
        .map(|i| format!("0:{:02x}:{:02x}.{:x}", i / 256 + 1, (i / 8) % 32, i % 8))
        .collect();
    let mut many = vec!["--domains".to_string(), "300".into()];
    for d in &devices {
        many.push("--device".into());
        many.push(d.clone());
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--page-sizes", "64K"],
            "iommu-emu: bad scenario: --page-sizes \"64K\": VT-d pages are 4K, 2M or 1G\n",
        ),
        (
            &many,
            "iommu-emu: bad scenario: --domains \"300\": the legacy unit has 256 domain IDs \
             (CAP.ND = 2), and the run needs one more than --domains for the domain of the \
             unpreserved device 0000:f0:1f.7: at most 255\n",
        ),
        (
            &["--ram", "0x1000000000000:4G"],
            "iommu-emu: bad scenario: --ram \"0x1000000000000+0x100000000\": RAM ends at \
             0x1000100000000, above the legacy unit's 48-bit address width (CAP.MGAW): the \
             unit cannot reach it\n",
        ),
        (
            &["--unit-base", "0xfed90800"],
            "iommu-emu: bad scenario: --unit-base \"0xfed90800\": the register window must be \
             4 KiB aligned\n",
        ),
        (
            &[
                "--ram",
                "0x20000000:1200K",
                "--device",
                "00:02.0",
                "--domains",
                "1",
                "--map-size",
                "64K",
                "--page-sizes",
                "4K",
            ],
            "iommu-emu: bad scenario: --ram \"0x20000000+0x12c000\": too small for this \
             scenario: the old kernel's page pool does not fit. The scenario needs 0x20000 \
             bytes of DMA targets (2 domains, each target aligned to its page size), 0xdf000 \
             bytes for the old kernel's page pool (223 pages: 18 of domain tables, 3 of root \
             and context tables, 4 of PASID tables, 2 of invalidation queue, 196 of KHO blob), \
             0x7000 bytes for the new kernel's and 0x100000 bytes of firmware\n",
        ),
    ];
    for (args, says) in cases {
        let (code, out, err) = emu(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(out, "", "{args:?}");
        assert_eq!(err, says, "{args:?}");
    }
}
