//! The `iommu-inspect` binary on emulator snapshots: dump, walk, diff, verify, exit
//! statuses, golden outputs and damaged inputs.

mod common;

use common::*;
use iommu_core::{DomainId, PhysAddr};
use std::path::Path;
use std::process::{Command, Output};
use vtd::driver::DomainKind;
use vtd::record::RecordDomain;

fn inspect(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("iommu-inspect runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit status, not a signal")
}

/// Compares `actual` with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites the file.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("golden file written");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert!(
        actual == want,
        "output differs from {}:\n--- actual ---\n{actual}",
        path.display()
    );
}

/// An error exit: status 2, one line on stderr naming what is wrong.
fn assert_error(o: &Output, needle: &str) {
    assert_eq!(code(o), 2, "stdout: {} stderr: {}", stdout(o), stderr(o));
    let e = stderr(o);
    assert_eq!(e.lines().count(), 1, "one-line error, got {e:?}");
    assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn dump_golden_text_json_linux_legacy() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    r.save(dir.path(), "before.elf");
    for (args, file) in [
        (&["dump", "before.elf"][..], "legacy.txt"),
        (&["dump", "before.elf", "--json"][..], "legacy.json"),
        (
            &["dump", "before.elf", "--format", "linux"][..],
            "legacy.linux.txt",
        ),
    ] {
        let o = inspect(dir.path(), args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        golden(file, &stdout(&o));
    }
}

#[test]
fn dump_golden_scalable() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_scalable();
    r.save(dir.path(), "sm.elf");
    for (args, file) in [
        (&["dump", "sm.elf"][..], "scalable.txt"),
        (
            &["dump", "sm.elf", "--format", "linux", "--pasid", "7"][..],
            "scalable-pasid7.linux.txt",
        ),
    ] {
        let o = inspect(dir.path(), args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        golden(file, &stdout(&o));
    }
}

#[test]
fn dump_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    r.save(dir.path(), "a.elf");
    let o = inspect(dir.path(), &["dump", "a.elf", "--device", "03:00.1"]);
    let s = stdout(&o);
    assert!(s.contains("0000:03:00.1"), "{s}");
    assert!(!s.contains("0000:00:02.0  no pasid"), "{s}");
    let o = inspect(
        dir.path(),
        &[
            "dump",
            "a.elf",
            "--domain",
            "1",
            "--iova",
            "0x101000+0x2000",
        ],
    );
    let s = stdout(&o);
    assert!(
        s.contains("0x0000000000101000-0x0000000000102fff  0x0000000000801000-0x0000000000802fff"),
        "{s}"
    );
    assert!(!s.contains("0x0000000040000000"), "{s}");
    assert!(!s.contains("0000:03:00.1  no pasid"), "{s}");
    let o = inspect(dir.path(), &["dump", "a.elf", "--iova", "nonsense"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn walk_step_by_step_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, _, _) = sample_legacy(POOL);
    r.device(rid(0, 5, 0), None);
    r.save(dir.path(), "a.elf");
    let o = inspect(
        dir.path(),
        &["walk", "0x100234", "--device", "00:02.0", "a.elf"],
    );
    assert_eq!(code(&o), 0);
    let s = stdout(&o);
    for want in [
        "root entry (bus 0x00) at 0x100000",
        "context entry (devfn 0x10) at 0x102100",
        "second-stage level 4 entry 0x0",
        "second-stage level 1 entry 0x100",
        "=> translates to 0x800234 (rw-, 4K page, domain 0x0001)",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    // Write to a read-only page: fault 0x05 (Linux dmar.c: "PTE Write access is not set").
    let o = inspect(
        dir.path(),
        &[
            "walk", "0x200010", "--device", "00:02.0", "--write", "a.elf",
        ],
    );
    assert!(stdout(&o).contains("=> fault 0x05"), "{}", stdout(&o));
    // Read of an unmapped address: 0x06.
    let o = inspect(
        dir.path(),
        &["walk", "0x300000", "--device", "00:02.0", "a.elf"],
    );
    assert!(stdout(&o).contains("=> fault 0x06"), "{}", stdout(&o));
    // A device without a context entry: 0x02; a bus without root entry: 0x01.
    let o = inspect(dir.path(), &["walk", "0", "--device", "00:05.0", "a.elf"]);
    assert!(stdout(&o).contains("=> fault 0x02"), "{}", stdout(&o));
    let o = inspect(dir.path(), &["walk", "0", "--device", "07:00.0", "a.elf"]);
    assert!(stdout(&o).contains("=> fault 0x01"), "{}", stdout(&o));
    // The dump lists the device note's device without a context entry.
    let o = inspect(dir.path(), &["dump", "a.elf"]);
    assert!(
        stdout(&o).contains("0000:00:05.0  no pasid  listed in the snapshot, no present entry: context entry not present (fault 0x02"),
        "{}",
        stdout(&o)
    );
    // Beyond the 48-bit width: 0x04.
    let o = inspect(
        dir.path(),
        &[
            "walk",
            "0x1000000000000",
            "--device",
            "00:02.0",
            "--json",
            "a.elf",
        ],
    );
    let s = stdout(&o);
    assert!(s.contains("\"kind\": \"fault\", \"fault\": 4"), "{s}");
}

#[test]
fn walk_scalable_pasid() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_scalable();
    r.save(dir.path(), "sm.elf");
    let o = inspect(
        dir.path(),
        &[
            "walk",
            "0x40001234",
            "--device",
            "00:04.0",
            "--pasid",
            "7",
            "sm.elf",
        ],
    );
    let s = stdout(&o);
    assert!(s.contains("PASID directory entry 0x0"), "{s}");
    assert!(s.contains("PASID entry (PASID 0x7)"), "{s}");
    assert!(
        s.contains("=> translates to 0x40001234 (r--, 1G page, domain 0x0006)"),
        "{s}"
    );
    // Requests without PASID use RID_PASID 0.
    let o = inspect(
        dir.path(),
        &["walk", "0x2008", "--device", "00:04.0", "sm.elf"],
    );
    assert!(
        stdout(&o).contains("=> translates to 0xc01008"),
        "{}",
        stdout(&o)
    );
    // PASID 8 has no entry: 0x59.
    let o = inspect(
        dir.path(),
        &[
            "walk", "0x1000", "--device", "00:04.0", "--pasid", "8", "sm.elf",
        ],
    );
    assert!(stdout(&o).contains("=> fault 0x59"), "{}", stdout(&o));
}

#[test]
fn identical_snapshots_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    r.save(dir.path(), "a.elf");
    r.save(dir.path(), "b.elf");
    for extra in [&[][..], &["--semantic"][..], &["--json"][..]] {
        let mut args = vec!["diff", "a.elf", "b.elf"];
        args.extend_from_slice(extra);
        let o = inspect(dir.path(), &args);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    }
}

#[test]
fn moved_tables_differ_only_without_semantic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = sample_legacy(POOL);
    let (b, _, _) = sample_legacy(POOL + 0x20_0000);
    a.save(dir.path(), "a.elf");
    b.save(dir.path(), "b.elf");
    let o = inspect(dir.path(), &["diff", "--semantic", "a.elf", "b.elf"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let o = inspect(dir.path(), &["diff", "a.elf", "b.elf"]);
    assert_eq!(code(&o), 1);
    let s = stdout(&o);
    assert!(
        s.contains("unit dmar0: root_table 0x100000 -> 0x300000"),
        "{s}"
    );
    assert!(s.contains("  root 0x101000 -> 0x301000"), "{s}");
    assert!(
        s.contains("table moved: level 1 table for iova 0x0: 0x107000 -> 0x307000"),
        "{s}"
    );
    assert!(
        !s.contains("  + iova") && !s.contains("  - iova") && !s.contains("  ~ iova"),
        "{s}"
    );
    let o = inspect(dir.path(), &["diff", "--json", "a.elf", "b.elf"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("\"tables_moved\": [\n        {\"level\": 1, \"iova\": \"0x0\", \"a\": \"0x107000\", \"b\": \"0x307000\"}"), "{}", stdout(&o));
}

#[test]
fn changed_added_removed_mappings_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ta, _) = sample_legacy(POOL);
    a.save(dir.path(), "a.elf");
    let (mut b, tb_a, _) = sample_legacy(POOL);
    assert_eq!(ta, tb_a);
    // Retarget one page, drop write from another, add one, add a device.
    let leaf = b.leaf_entry(ta, 4, 0x10_1000);
    b.poke(leaf, 0xd0_0000 | 3);
    let leaf = b.leaf_entry(ta, 4, 0x10_3000);
    b.poke(leaf, 0x80_3000 | 1);
    b.map(ta, 4, 0x50_0000, 0xe0_0000, 1, true, true);
    let t = b.legacy_context(rid(0, 6, 0), 9, 3);
    b.map(t, 3, 0x1000, 0x1000, 1, true, true);
    b.save(dir.path(), "b.elf");
    let o = inspect(dir.path(), &["diff", "--semantic", "a.elf", "b.elf"]);
    assert_eq!(code(&o), 1);
    let s = stdout(&o);
    for want in [
        "device 0000:00:02.0 (dmar0):",
        "  ~ iova 0x101000-0x101fff pa 0x801000 rw- 4K -> pa 0xd00000 rw- 4K",
        "  ~ iova 0x103000-0x103fff pa 0x803000 rw- 4K -> pa 0x803000 r-- 4K",
        "  + iova 0x500000-0x500fff pa 0xe00000 rw- 4K",
        "device 0000:00:06.0 (dmar0): only in b.elf",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    let o = inspect(dir.path(), &["diff", "b.elf", "a.elf", "--json"]);
    assert_eq!(code(&o), 1);
    let s = stdout(&o);
    assert!(
        s.contains("\"change\": \"removed\", \"iova\": \"0x500000\""),
        "{s}"
    );
    assert!(s.contains("\"status\": \"only-in-a\""), "{s}");
}

#[test]
fn kexec_preserving_every_table_keeps_the_state_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    let pages = r.pages.clone();
    let blob = r.handover(
        &pages,
        &[(1, ta, 4), (2, tb, 4)],
        &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
    );
    r.save(dir.path(), "before.elf");
    let o = inspect(dir.path(), &["verify", "before.elf"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let s = stdout(&o);
    assert!(s.contains(&format!("KHO blob at {blob}")), "{s}");
    assert!(s.contains("ok: no problem found"), "{s}");
    r.m.kexec(blob).expect("kexec");
    r.save(dir.path(), "after.elf");
    let o = inspect(dir.path(), &["diff", "before.elf", "after.elf"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let o = inspect(dir.path(), &["verify", "after.elf", "--json"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("\"clean\": true"));
}

#[test]
fn a_table_page_left_out_is_reported_and_lost_after_kexec() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    let leaf_table = r.leaf_entry(ta, 4, 0x20_0000) & !0xfff;
    let pages: Vec<u64> = r
        .pages
        .iter()
        .copied()
        .filter(|&p| p != leaf_table)
        .collect();
    let blob = r.handover(
        &pages,
        &[(1, ta, 4), (2, tb, 4)],
        &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
    );
    r.save(dir.path(), "before.elf");
    let o = inspect(dir.path(), &["verify", "before.elf"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let s = stdout(&o);
    let page = format!("page {:#x} is not in the KHO preserved set", leaf_table);
    assert!(s.contains(&page), "{s}");
    assert!(s.contains("not in the record's page runs"), "{s}");
    r.m.kexec(blob).expect("kexec");
    r.save(dir.path(), "after.elf");
    // The lost table reads as poison: the dump marks it, the diff reports the loss.
    let o = inspect(dir.path(), &["dump", "after.elf"]);
    assert_eq!(code(&o), 0);
    let s = stdout(&o);
    assert!(s.contains("holds poison"), "{s}");
    let o = inspect(
        dir.path(),
        &["diff", "before.elf", "after.elf", "--semantic"],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("  - iova 0x200000-0x200fff pa 0x900000 r-- 4K"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn verify_checks_the_record_against_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    let pages = r.pages.clone();
    // The record says device 03:00.1 is in domain 3 at another root, and forgets 00:02.0.
    r.handover(
        &pages,
        &[(1, ta, 4), (3, tb + 0x1000, 4)],
        &[(rid(3, 0, 1), None, 3)],
    );
    r.save(dir.path(), "x.elf");
    let o = inspect(dir.path(), &["verify", "x.elf"]);
    assert_eq!(code(&o), 1);
    let s = stdout(&o);
    for want in [
        "device 0000:03:00.1: record says domain 0x0003, the tables say 0x0002",
        "device 0000:03:00.1: record domain 0x0003 is a SecondStage 4-level table at",
        "device 0000:00:02.0 has a present entry but is not in the record",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
}

#[test]
fn verify_without_a_blob_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    r.save(dir.path(), "a.elf");
    let o = inspect(dir.path(), &["verify", "a.elf"]);
    assert_error(&o, "no KHO blob");
    let o = inspect(dir.path(), &["verify", "a.elf", "--kho-blob", "0x200000"]);
    assert_error(&o, "KHO blob at 0x200000");
}

#[test]
fn truncated_elf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    let bytes = r.bytes();
    for cut in [10usize, 100, 600, bytes.len() - 4096, bytes.len() - 1] {
        std::fs::write(dir.path().join("t.elf"), &bytes[..cut]).unwrap();
        let o = inspect(dir.path(), &["dump", "t.elf"]);
        assert_error(&o, "file offset");
    }
    std::fs::write(dir.path().join("e.elf"), b"").unwrap();
    assert_error(&inspect(dir.path(), &["dump", "e.elf"]), "ELF file header");
    std::fs::write(dir.path().join("g.bin"), vec![0x55u8; 8192]).unwrap();
    assert_error(&inspect(dir.path(), &["dump", "g.bin"]), "not an ELF file");
    assert_error(
        &inspect(dir.path(), &["dump", "missing.elf"]),
        "missing.elf",
    );
    assert_error(
        &inspect(dir.path(), &["diff", "missing.elf", "t.elf"]),
        "missing.elf",
    );
}

#[test]
fn corrupt_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    let bytes = r.bytes();
    // Flip bytes across headers, notes and the first memory pages.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..60 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % (0x3000 + 0x100 * i).min(b.len());
            b[at] ^= (seed >> 32) as u8 | 1;
        }
        std::fs::write(dir.path().join("c.elf"), &b).unwrap();
        for cmd in [
            &["dump", "c.elf"][..],
            &["dump", "c.elf", "--json"][..],
            &["dump", "c.elf", "--format", "linux"][..],
        ] {
            let o = inspect(dir.path(), cmd);
            let c = code(&o);
            assert!(c == 0 || c == 2, "status {c}: {}", stderr(&o));
            assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        }
    }
}

#[test]
fn root_pointer_outside_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::legacy();
    {
        use iommu_core::RegisterAccess;
        let mut regs = r.m.unit_regs(UNIT).unwrap();
        regs.write64(0x20, 0x8000_0000);
        regs.write32(0x18, 1 << 30 | 1 << 31);
    }
    r.device(rid(0, 1, 0), None);
    r.save(dir.path(), "r.elf");
    let o = inspect(dir.path(), &["dump", "r.elf"]);
    assert_eq!(code(&o), 0);
    let s = stdout(&o);
    assert!(
        s.contains(
            "!! 0x80000000: root table: no memory at physical address 0x80000000 (fault 0x08)"
        ),
        "{s}"
    );
    let o = inspect(
        dir.path(),
        &["walk", "0x1000", "--device", "00:01.0", "r.elf"],
    );
    assert!(stdout(&o).contains("=> fault 0x08"), "{}", stdout(&o));
}

#[test]
fn table_cycle_is_marked_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, _) = sample_legacy(POOL);
    // The level-2 table's entry 5 points back to the level-4 root.
    let l2 = {
        let l4e = r.peek(ta);
        let l3 = l4e & !0xfff;
        r.peek(l3) & !0xfff
    };
    r.poke(l2 + 5 * 8, ta | 3);
    r.save(dir.path(), "c.elf");
    for fmt in [
        &["dump", "c.elf"][..],
        &["dump", "c.elf", "--json"][..],
        &["dump", "c.elf", "--format", "linux"][..],
    ] {
        let o = inspect(dir.path(), fmt);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        if fmt.len() == 2 {
            let s = stdout(&o);
            let want = format!("level 2 table {l2:#x} index 0x5 entry {:#018x}: ", ta | 3);
            assert!(s.contains(&want), "{s}");
            assert!(s.contains("cycle") || s.contains("ancestor"), "{s}");
        }
    }
    let o = inspect(
        dir.path(),
        &["walk", "0xa00000", "--device", "00:02.0", "c.elf"],
    );
    assert_eq!(code(&o), 0);
}

#[test]
fn reserved_bits_are_marked_and_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, _) = sample_legacy(POOL);
    // SNP (bit 11) is reserved without ECAP.SC (the legacy profile has no snoop control).
    let leaf = r.leaf_entry(ta, 4, 0x10_2000);
    let v = r.peek(leaf);
    r.poke(leaf, v | 1 << 11);
    // A context entry with reserved bit 4 set.
    r.legacy_context_raw(rid(0, 9, 0), [0x40_0000 | 1 | 1 << 4, 2]);
    r.save(dir.path(), "rsv.elf");
    let o = inspect(dir.path(), &["dump", "rsv.elf"]);
    assert_eq!(code(&o), 0);
    let s = stdout(&o);
    assert!(s.contains("SNP (bit 11) set without ECAP.SC"), "{s}");
    assert!(s.contains("0000:00:09.0  no pasid  DID 0x0000  blocked: reserved bits set in the context entry: qword 0 bits 0x10 (fault 0x0b"), "{s}");
    let o = inspect(
        dir.path(),
        &["walk", "0x102000", "--device", "00:02.0", "rsv.elf"],
    );
    assert!(stdout(&o).contains("=> fault 0x0c"), "{}", stdout(&o));
    let o = inspect(
        dir.path(),
        &["walk", "0x0", "--device", "00:09.0", "rsv.elf"],
    );
    assert!(stdout(&o).contains("=> fault 0x0b"), "{}", stdout(&o));
}

#[test]
fn raw_memory_and_noteless_elf_with_root_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    let snap = r.save(dir.path(), "s.elf");
    // Raw: the first 32 MiB of memory (unwritten pages read as zeros in a raw dump).
    let mut raw = vec![0u8; 32 << 20];
    for (i, chunk) in raw.chunks_mut(4096).enumerate() {
        let _ =
            iommu_core::PhysMem::read(&*r.m.mem(), iommu_core::PhysAddr(i as u64 * 4096), chunk);
    }
    std::fs::write(dir.path().join("m.raw"), &raw).unwrap();
    let want = inspect(
        dir.path(),
        &["dump", "s.elf", "--device", "00:02.0", "--format", "linux"],
    );
    let o = inspect(
        dir.path(),
        &[
            "dump",
            "m.raw",
            "--base",
            "0",
            "--vtd-rtaddr",
            "0x100000",
            "--haw",
            "48",
            "--device",
            "00:02.0",
            "--format",
            "linux",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
    // An ELF core without IOMMU notes (the note name changed): memory only.
    let mut b = std::fs::read(&snap).unwrap();
    let pos = b.windows(6).position(|w| w == b"IOMMU\0").unwrap();
    let mut at = pos;
    while let Some(p) = b[at..].windows(6).position(|w| w == b"IOMMU\0") {
        b[at + p] = b'X';
        at += p + 6;
    }
    std::fs::write(dir.path().join("core.elf"), &b).unwrap();
    assert_error(&inspect(dir.path(), &["dump", "core.elf"]), "--vtd-rtaddr");
    let o = inspect(
        dir.path(),
        &[
            "dump",
            "core.elf",
            "--vtd-rtaddr",
            "0x100000",
            "--vtd-mode",
            "legacy",
            "--haw",
            "48",
            "--device",
            "00:02.0",
            "--format",
            "linux",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
    assert_error(
        &inspect(
            dir.path(),
            &["dump", "core.elf", "--vtd-rtaddr", "0x100001"],
        ),
        "4 KiB aligned",
    );
}

#[test]
fn help_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    let o = inspect(dir.path(), &["--help"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("Examples:"));
    assert!(stdout(&o).contains("iommu-inspect diff --semantic"));
    let o = inspect(dir.path(), &["frobnicate"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn a_table_shared_by_two_domains_is_reachable_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    // Domain 2's level-2 entry for IOVA 0x200000 points to domain 1's level-1 table of
    // IOVA 0x100000.
    let l1_of_a = r.leaf_entry(ta, 4, 0x10_0000) & !0xfff;
    let l2_of_b = {
        let l3 = r.peek(tb) & !0xfff;
        r.peek(l3) & !0xfff
    };
    r.poke(l2_of_b + 8, l1_of_a | 3);
    let pages = r.pages.clone();
    r.handover(
        &pages,
        &[(1, ta, 4), (2, tb, 4)],
        &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
    );
    r.save(dir.path(), "x.elf");
    let o = inspect(dir.path(), &["verify", "x.elf", "--json"]);
    assert_eq!(code(&o), 1);
    let s = stdout(&o);
    assert!(
        s.contains(&format!(
            "\"kind\": \"reachable-twice\", \"addr\": \"{l1_of_a:#x}\""
        )),
        "{s}"
    );
    // Through the shared table, 03:00.1 reaches what 00:02.0 maps at 0x100000.
    let o = inspect(
        dir.path(),
        &["walk", "0x300000", "--device", "03:00.1", "x.elf"],
    );
    assert!(
        stdout(&o).contains("=> translates to 0x800000"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn first_stage_pasid_entries_are_walked() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::scalable();
    let d = rid(0x10, 0x1f, 7);
    r.device(d, Some(9));
    r.scalable_context(d, 0, 1, 4);
    let fl = r.first_stage_pasid(d, 9, 2);
    r.map_fl(fl, 0x7f00_0000, 0x55_5000, false);
    r.map_fl(fl, 0x7f00_1000, 0x55_6000, true);
    r.save(dir.path(), "fs.elf");
    let o = inspect(dir.path(), &["dump", "fs.elf", "--pasid", "9"]);
    let s = stdout(&o);
    assert!(
        s.contains("0000:10:1f.7  pasid 0x9  DID 0x0002  first-stage 4-level table at"),
        "{s}"
    );
    assert!(
        s.contains("0x000000007f000000-0x000000007f000fff  0x0000000000555000-0x0000000000555fff          0x1000  r-x  4K"),
        "{s}"
    );
    assert!(
        s.contains("0x000000007f001000-0x000000007f001fff  0x0000000000556000-0x0000000000556fff          0x1000  rwx  4K"),
        "{s}"
    );
    let o = inspect(
        dir.path(),
        &[
            "walk",
            "0x7f000010",
            "--device",
            "10:1f.7",
            "--pasid",
            "9",
            "fs.elf",
        ],
    );
    assert!(
        stdout(&o).contains("first-stage level 3 entry 0x1"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("=> translates to 0x555010 (r-x, 4K page, domain 0x0002)"),
        "{}",
        stdout(&o)
    );
    // Write to the read-only page: 0x85; unmapped: 0x71 (first-level entry not present).
    let o = inspect(
        dir.path(),
        &[
            "walk",
            "0x7f000010",
            "--device",
            "10:1f.7",
            "--pasid",
            "9",
            "--write",
            "fs.elf",
        ],
    );
    assert!(stdout(&o).contains("=> fault 0x85"), "{}", stdout(&o));
    let o = inspect(
        dir.path(),
        &[
            "walk",
            "0x7f002000",
            "--device",
            "10:1f.7",
            "--pasid",
            "9",
            "fs.elf",
        ],
    );
    assert!(stdout(&o).contains("=> fault 0x71"), "{}", stdout(&o));
    // Clear U/S (bit 2) in the leaf of 0x7f001000: a user request gets 0x81.
    let rw_page: u64 = 0x7f00_1000;
    let mut table = fl;
    for level in (2..=4u32).rev() {
        let idx = (rw_page >> (12 + 9 * (level - 1))) & 0x1ff;
        table = r.peek(table + idx * 8) & 0x000f_ffff_ffff_f000;
    }
    let leaf = table + ((rw_page >> 12) & 0x1ff) * 8;
    let v = r.peek(leaf);
    r.poke(leaf, v & !4);
    r.save(dir.path(), "fs2.elf");
    let o = inspect(
        dir.path(),
        &[
            "walk",
            "0x7f001000",
            "--device",
            "10:1f.7",
            "--pasid",
            "9",
            "fs2.elf",
        ],
    );
    assert!(stdout(&o).contains("=> fault 0x81"), "{}", stdout(&o));
}

#[test]
fn scalable_handover_verifies_and_a_missing_pasid_table_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t0, t7) = sample_scalable();
    let d = rid(0, 4, 0);
    let all = r.pages.clone();
    r.handover(&all, &[(5, t0, 4), (6, t7, 3)], &[(d, Some(0), 5)]);
    r.save(dir.path(), "ok.elf");
    let o = inspect(dir.path(), &["verify", "ok.elf"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    // The PASID table (third page allocated: root, context table, PASID directory,
    // PASID table) left out of both the preserved set and the record.
    let (mut r, t0, t7) = sample_scalable();
    let pasid_table = r.pages[3];
    let some: Vec<u64> = r
        .pages
        .iter()
        .copied()
        .filter(|&p| p != pasid_table)
        .collect();
    r.handover(&some, &[(5, t0, 4), (6, t7, 3)], &[(d, Some(0), 5)]);
    r.save(dir.path(), "bad.elf");
    let o = inspect(dir.path(), &["verify", "bad.elf"]);
    assert_eq!(code(&o), 1);
    let s = stdout(&o);
    assert!(
        s.contains(&format!(
            "PASID table of 0000:00:04.0 PASIDs 0x0-0x3f (dmar0): page {pasid_table:#x} is not in the KHO preserved set"
        )),
        "{s}"
    );
}

#[test]
fn pointers_at_the_top_of_the_address_space_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    // Raw memory from 0: a scalable root table at 0x1000 whose bus 0 lower half points to
    // a context table at 0x2000; devfn 0 has its PASID directory (2^14 entries, PASIDE)
    // at the last page of the 64-bit space, devfn 1 a second-stage-free entry.
    let mut raw = vec![0u8; 0x3000];
    raw[0x1000..0x1008].copy_from_slice(&(0x2000u64 | 1).to_le_bytes());
    let ce0: u64 = 0xffff_ffff_ffff_f000 | (7 << 9) | (1 << 3) | 1;
    raw[0x2000..0x2008].copy_from_slice(&ce0.to_le_bytes());
    // Legacy view of the same page: bus 0 root entry -> 0x2000, devfn 0 context entry with
    // its second-stage table at the top page.
    std::fs::write(dir.path().join("top.raw"), &raw).unwrap();
    let sm = [
        "--base",
        "0",
        "--vtd-rtaddr",
        "0x1000",
        "--vtd-mode",
        "scalable",
        "--haw",
        "64",
    ];
    let lg = [
        "--base",
        "0",
        "--vtd-rtaddr",
        "0x1000",
        "--vtd-mode",
        "legacy",
        "--haw",
        "64",
    ];
    for mode in [&sm[..], &lg[..]] {
        for cmd in [
            &["dump", "top.raw"][..],
            &["dump", "top.raw", "--json"][..],
            &["dump", "top.raw", "--format", "linux"][..],
            &[
                "walk",
                "0xfffffffffffff000",
                "--device",
                "00:00.0",
                "--pasid",
                "0xfffc0",
                "top.raw",
            ][..],
            &["walk", "0x1000", "--device", "00:00.0", "top.raw"][..],
        ] {
            let mut args = cmd.to_vec();
            args.extend_from_slice(mode);
            let o = inspect(dir.path(), &args);
            assert_eq!(code(&o), 0, "{args:?}: {}{}", stdout(&o), stderr(&o));
        }
    }
    let mut args = vec![
        "walk", "0x0", "--device", "00:00.0", "--pasid", "0xfffc0", "top.raw",
    ];
    args.extend_from_slice(&sm);
    let o = inspect(dir.path(), &args);
    assert!(stdout(&o).contains("=> fault 0x50"), "{}", stdout(&o));
    let mut args = vec!["dump", "top.raw"];
    args.extend_from_slice(&sm);
    let o = inspect(dir.path(), &args);
    assert!(
        stdout(&o).contains("PASID directory of 0000:00:00.0: access of 0x20000 bytes"),
        "{}",
        stdout(&o)
    );
}

/// A record whose page runs claim 2^40 pages from address 0, or all 64 MiB of RAM,
/// while only the rig's table pages are preserved: `verify` reports the run (adopt's
/// and finish's input), in bounded time, instead of "ok".
#[test]
fn verify_refuses_record_runs_of_2_pow_40_pages_or_all_of_ram_outside_the_preserved_set() {
    let dir = tempfile::tempdir().unwrap();
    for (name, run) in [("huge.elf", 1u64 << 40), ("ram.elf", RAM.1 / 4096)] {
        let (mut r, ta, tb) = sample_legacy(POOL);
        let pages = r.pages.clone();
        r.handover_with(
            &pages,
            &[(1, ta, 4), (2, tb, 4)],
            &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
            |rec| rec.pages = vec![(PhysAddr(0), run)],
        );
        r.save(dir.path(), name);
        let o = inspect(dir.path(), &["verify", name]);
        assert_eq!(code(&o), 1, "{}", stdout(&o));
        let s = stdout(&o);
        let want = format!(
            "[run-not-preserved] record page run 0x0+{run} pages: page 0x0 is not in the \
             preserved set"
        );
        assert!(s.contains(&want), "missing {want:?} in\n{s}");
    }
}

/// A record whose page runs also claim a preserved guest page that device 00:02.0 maps
/// (0x800000, not a table): adopt keeps it and finish never frees it, so verify reports
/// the run; the same record without that page reports nothing of the kind.
#[test]
fn verify_reports_record_run_pages_that_are_not_tables() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [("extra.elf", Some(0x80_0000u64)), ("exact.elf", None)] {
        let (mut r, ta, tb) = sample_legacy(POOL);
        let mut pages = r.pages.clone();
        pages.extend(extra);
        r.handover(
            &pages,
            &[(1, ta, 4), (2, tb, 4)],
            &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
        );
        r.save(dir.path(), name);
        let o = inspect(dir.path(), &["verify", name]);
        let s = stdout(&o);
        match extra {
            Some(_) => {
                assert_eq!(code(&o), 1, "{s}");
                let want = "[run-not-table] record page run 0x800000+1 pages claims 1 page(s) \
                            that are not structures or tables of the unit, first 0x800000";
                assert!(s.contains(want), "missing {want:?} in\n{s}");
                assert_eq!(s.matches("[run-not-table]").count(), 1, "{s}");
            }
            None => {
                assert_eq!(code(&o), 0, "{s}");
                assert!(!s.contains("run-not-table"), "{s}");
            }
        }
    }
}

/// A unit whose GSTS reads 0 (translation disabled, root pointer never latched) with a
/// record that otherwise matches: adopt refuses it, so verify must not say "ok".
#[test]
fn verify_reports_a_unit_with_translation_disabled_and_no_latched_root() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    let pages = r.pages.clone();
    r.handover(
        &pages,
        &[(1, ta, 4), (2, tb, 4)],
        &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
    );
    let mut b = r.bytes();
    set_note_register(&mut b, 0x1c, 0);
    std::fs::write(dir.path().join("off.elf"), &b).unwrap();
    let o = inspect(dir.path(), &["verify", "off.elf"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let s = stdout(&o);
    for want in [
        "[adopt-refuses] GSTS 0x00000000: translation is disabled (TES clear)",
        "[unit-state] GSTS 0x00000000: no root table pointer latched (RTPS clear)",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
}

/// Record domains adopt refuses, one shape each: an ID beyond CAP.ND, 5-level tables
/// the unit's SAGAW lacks, a first-stage domain on a legacy unit, an unaligned root, a
/// root neither preserved nor in the runs. (A device bound to a domain the record does
/// not hold is refused by the record decoder, reported as a `record` problem.)
#[test]
fn verify_reports_every_record_domain_and_device_adopt_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    let pages = r.pages.clone();
    r.handover_with(
        &pages,
        &[(1, ta, 4), (2, tb, 4)],
        &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
        |rec| {
            let d = |id: u16, kind, levels, root: u64| RecordDomain {
                id: DomainId(id),
                kind,
                levels,
                root: PhysAddr(root),
            };
            rec.domains.extend([
                d(7, DomainKind::SecondStage, 5, tb),
                d(8, DomainKind::FirstStage, 4, ta),
                d(9, DomainKind::SecondStage, 4, ta + 8),
                d(10, DomainKind::SecondStage, 4, 0x3f0_0000),
                d(0xfffe, DomainKind::SecondStage, 4, ta),
            ]);
        },
    );
    r.save(dir.path(), "doms.elf");
    let o = inspect(dir.path(), &["verify", "doms.elf"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let s = stdout(&o);
    for want in [
        "record domain 0x0007: SecondStage 5-level tables",
        "record domain 0x0008: first-stage domain on a legacy-mode unit",
        &format!(
            "record domain 0x0009: root {:#x} is not 4 KiB aligned",
            ta + 8
        ),
        "record domain 0x000a: root table 0x3f00000 is not preserved",
        "record domain 0x000a: root table 0x3f00000 is not in the record's page runs",
        "record domain 0xfffe: beyond the unit's CAP.ND",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
}

/// A 2 GiB sparse raw file (64 MiB of a machine's memory with a KHO handover at
/// 0x3000000, the rest a hole) with its unit from the command line: verify does not scan
/// it whole by default but says how to point at the blob; `--kho-scan` bounds the scan,
/// `--kho-blob` names the blob, and `--vtd-base` names the unit so its
/// `iommu-vtd-<base>` record is found and the state verifies.
#[test]
fn verify_on_a_2gib_sparse_raw_file_needs_the_blob_located_and_vtd_base_finds_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, ta, tb) = sample_legacy(POOL);
    let pages = r.pages.clone();
    let blob = r.handover(
        &pages,
        &[(1, ta, 4), (2, tb, 4)],
        &[(rid(0, 2, 0), None, 1), (rid(3, 0, 1), None, 2)],
    );
    assert_eq!(blob, PhysAddr(0x300_0000));
    // Memory as a raw dump: valid bytes, zeros for poison (partly written pages too).
    let mut raw = vec![0u8; RAM.1 as usize];
    let mem = r.m.mem();
    for (i, chunk) in raw.chunks_mut(4096).enumerate() {
        let pa = i as u64 * 4096;
        if iommu_core::PhysMem::read(&*mem, PhysAddr(pa), chunk).is_err() {
            for (j, piece) in chunk.chunks_mut(256).enumerate() {
                let at = pa + 256 * j as u64;
                if iommu_core::PhysMem::read(&*mem, PhysAddr(at), piece).is_ok() {
                    continue;
                }
                for (k, b) in piece.iter_mut().enumerate() {
                    let mut one = [0u8];
                    if iommu_core::PhysMem::read(&*mem, PhysAddr(at + k as u64), &mut one).is_ok() {
                        *b = one[0];
                    }
                }
            }
        }
    }
    drop(mem);
    let path = dir.path().join("big.raw");
    std::fs::write(&path, &raw).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let root = format!("{:#x}", r.root);
    let unit = ["--base", "0", "--vtd-rtaddr", &root, "--haw", "48"];
    let with = |extra: &[&str]| {
        let mut a = vec!["verify", "big.raw"];
        a.extend_from_slice(&unit);
        a.extend_from_slice(extra);
        inspect(dir.path(), &a)
    };
    assert_error(&with(&[]), "give the blob's address with --kho-blob ADDR");
    assert_error(&with(&[]), "--kho-scan START-END");
    // A range without the blob: a clear error, not "ok".
    assert_error(&with(&["--kho-scan", "0x0+0x100000"]), "no KHO blob");
    // Found in the named range; without --vtd-base the unit is at 0 and its record
    // (iommu-vtd-0) does not exist.
    let o = with(&["--kho-scan", "0x2000000-0x3ffffff"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("KHO blob at 0x3000000"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("iommu-vtd-0"), "{}", stdout(&o));
    for extra in [
        &[
            "--kho-scan",
            "0x2000000-0x3ffffff",
            "--vtd-base",
            "0xfed90000",
        ][..],
        &["--kho-blob", "0x3000000", "--vtd-base", "0xfed90000"][..],
    ] {
        let o = with(extra);
        assert_eq!(code(&o), 0, "{extra:?}: {}{}", stdout(&o), stderr(&o));
        assert!(
            stdout(&o).contains("ok: no problem found"),
            "{}",
            stdout(&o)
        );
    }
    assert_error(
        &with(&["--kho-blob", "0x3000000", "--vtd-base", "0xfed90008"]),
        "4 KiB aligned",
    );
}

/// A directory and a FIFO as the image: a one-line error saying they are not supported
/// (a regular file is), not "No such device" or "file ends at 0x0".
#[test]
fn directories_and_fifos_are_refused_as_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    assert_error(&inspect(dir.path(), &["dump", "d"]), "d: a directory");
    let fifo = dir.path().join("p");
    let ok = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(ok.success());
    let o = inspect(dir.path(), &["dump", "p"]);
    assert_error(&o, "p: not a regular file (a pipe, FIFO, socket or device)");
    // /dev/stdin fed by a pipe is refused the same way; redirected from a file it works.
    let (r, _, _) = sample_legacy(POOL);
    let snap = r.save(dir.path(), "s.elf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
        .args(["dump", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("iommu-inspect runs");
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert_error(&o, "not a regular file");
    let o = Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
        .args(["dump", "/dev/stdin"])
        .stdin(std::fs::File::open(&snap).unwrap())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// `walk --device` on PCI segment 1 of an image whose unit serves segment 0 is refused
/// (it used to translate as if segment 0); a PASID of 2^20 is refused with exit 2.
#[test]
fn walk_refuses_another_pci_segment_and_pasids_of_21_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = sample_legacy(POOL);
    r.save(dir.path(), "s.elf");
    let o = inspect(
        dir.path(),
        &["walk", "0x100000", "s.elf", "--device", "0000:00:02.0"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_error(
        &inspect(
            dir.path(),
            &["walk", "0x100000", "s.elf", "--device", "0001:00:02.0"],
        ),
        "device 0001:00:02.0 is on PCI segment 0x0001, but unit dmar0 serves segment 0x0000",
    );
    for cmd in [
        &[
            "walk", "0x1000", "s.elf", "--device", "00:02.0", "--pasid", "0x100000",
        ][..],
        &["dump", "s.elf", "--pasid", "1048576"][..],
    ] {
        let o = inspect(dir.path(), cmd);
        assert_eq!(code(&o), 2, "{cmd:?}");
        assert!(stderr(&o).contains("a PASID is 20 bits"), "{}", stderr(&o));
    }
    let o = inspect(
        dir.path(),
        &[
            "walk", "0x1000", "s.elf", "--device", "00:02.0", "--pasid", "0xfffff",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// A snapshot whose device note lists a device without a context entry (00:05.0),
/// read with its unit described on the command line (`--vtd-rtaddr`): with
/// `--vtd-base` equal to the note's unit base the note's devices are that unit's (the
/// device is listed as having no present entry); with another base, or none, they are
/// not.
#[test]
fn command_line_unit_with_matching_vtd_base_gets_the_snapshots_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, _, _) = sample_legacy(POOL);
    r.device(rid(0, 5, 0), None);
    let rtaddr = format!("{:#x}", r.root);
    r.save(dir.path(), "a.elf");
    let dump = |extra: &[&str]| {
        let mut a = vec![
            "dump",
            "a.elf",
            "--vtd-rtaddr",
            rtaddr.as_str(),
            "--vtd-mode",
            "legacy",
        ];
        a.extend_from_slice(extra);
        let o = inspect(dir.path(), &a);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
        stdout(&o)
    };
    let base = format!("{:#x}", UNIT.0);
    let s = dump(&["--vtd-base", base.as_str()]);
    assert!(
        s.contains("0000:00:05.0  no pasid  listed in the snapshot, no present entry"),
        "{s}"
    );
    for other in [&["--vtd-base", "0xfed80000"][..], &[][..]] {
        let s = dump(other);
        assert!(!s.contains("listed in the snapshot"), "{other:?}: {s}");
    }
}

/// The `--device` help of dump and walk shows `[segment:]` as written: the doc comments
/// escape the brackets for rustdoc (an unescaped `[segment:]` is a broken intra-doc
/// link), and the help text is given separately so the escapes do not reach the user.
#[test]
fn device_option_help_shows_the_optional_segment_without_escapes() {
    let dir = tempfile::tempdir().unwrap();
    for (cmd, want) in [
        (
            "dump",
            "Only this device ([segment:]bus:device.function, hex)",
        ),
        ("walk", "The requester ([segment:]bus:device.function, hex)"),
    ] {
        let o = inspect(dir.path(), &[cmd, "--help"]);
        assert_eq!(code(&o), 0);
        assert!(stdout(&o).contains(want), "{}", stdout(&o));
        assert!(!stdout(&o).contains("\\["), "{}", stdout(&o));
    }
}
