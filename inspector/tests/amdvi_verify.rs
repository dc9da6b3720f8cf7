//! `verify` of AMD-Vi units on snapshots of a real emulated handover: the scenario
//! runner (`scenarios::run_on` with the `amdvi` driver and handover, `save_snapshots`)
//! writes the unit before the kexec and after adopt; the driver's own record
//! (`iommu-amdvi-v1` in the KHO blob) must verify clean, and each corruption of the
//! image (a DTE, a record page run, the record's version, a register) must give its
//! finding naming the unit, DeviceID and address.

use amdvi::record::Record;
use inspector::diff::diff;
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::model::{Filter, LoadOptions, Loaded};
use inspector::progress::Progress;
use inspector::verify::{verify, Report, VerifyOptions};
use iommu_core::kho::record::{encode_record, read_record, Supported};
use iommu_core::kho::{read_handover, read_preserved};
use iommu_core::pageset::PageSet;
use iommu_core::PhysAddr;
use scenarios::arch::amdvi::{AmdVi, Mode};
use scenarios::{run_on, RunOptions, Scenario};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the default scenario's handover in `mode`, snapshots saved in a new directory.
fn handover(mode: Mode) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scenario::default_scenario();
    s.ram = (PhysAddr(1 << 32), 1 << 30);
    s.page_sizes = vec![iommu_core::PageSize::SIZE_4K, iommu_core::PageSize::SIZE_2M];
    let opts = RunOptions {
        save_snapshots: Some(dir.path().to_path_buf()),
    };
    let report = run_on(&AmdVi::default(), &s, &[mode], &opts).expect("scenario runs");
    assert!(report.is_clean(), "{report:?}");
    dir
}

fn snap(dir: &Path, mode: Mode, when: &str) -> PathBuf {
    dir.join(format!("{}-{when}.elf", mode.name()))
}

fn load_bytes(name: &str, bytes: Vec<u8>) -> Loaded {
    let img = Image::from_bytes(name, bytes, OpenAs::Elf).expect("image");
    Loaded::from_image(img, &LoadOptions::default()).expect("load")
}

fn verify_loaded(l: &Loaded) -> Report {
    verify(l, &VerifyOptions::default(), &mut Progress::hidden()).expect("verify runs")
}

/// The image at `path` with `f` applied to the bytes of physical address `pa`.
fn patched(path: &Path, pa: u64, len: usize, f: impl FnOnce(&mut [u8])) -> Loaded {
    let img = Image::open(path, OpenAs::Elf).unwrap();
    let seg = img.segment_of(pa).expect("address in the image");
    let off = (seg.offset + (pa - seg.paddr)) as usize;
    let mut bytes = img.bytes().to_vec();
    f(&mut bytes[off..off + len]);
    load_bytes("patched.elf", bytes)
}

fn amdvi_unit(l: &Loaded) -> &inspector::amdvi::AmdViState {
    l.units
        .iter()
        .find_map(|u| u.as_any().downcast_ref::<inspector::amdvi::AmdViState>())
        .expect("an AMD-Vi unit")
}

fn kinds(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.kind).collect()
}

#[test]
fn clean_handover_verifies_clean_before_kexec_and_after_adopt() {
    for mode in [Mode::V1, Mode::V2] {
        let dir = handover(mode);
        for when in ["before-kexec", "after-adopt"] {
            let l = Loaded::open(&snap(dir.path(), mode, when), &LoadOptions::default()).unwrap();
            let u = amdvi_unit(&l);
            assert!(
                !u.trees.is_empty(),
                "{mode} {when}: no translation in the image"
            );
            let r = verify_loaded(&l);
            assert!(r.clean(), "{mode} {when}: {:#?}", r.findings);
            assert!(
                r.blob.is_some(),
                "{mode} {when}: the KHO blob was not found"
            );
            let (unit, s, p) = &r.checked[0];
            assert_eq!(unit, "iommu0");
            assert!(*s > 0 && *p > 0, "{mode} {when}: {:?}", r.checked);
        }
        // The CLI: text and JSON, exit status 0.
        let o = Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
            .arg("verify")
            .arg(snap(dir.path(), mode, "after-adopt"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("ok: no problem found"), "{out}");
    }
}

#[test]
fn corrupted_dte_is_named_by_unit_device_id_and_address() {
    let dir = handover(Mode::V1);
    let path = snap(dir.path(), Mode::V1, "after-adopt");
    let l = Loaded::open(&path, &LoadOptions::default()).unwrap();
    let u = amdvi_unit(&l);
    let e = u
        .entries
        .iter()
        .find(|e| e.tree.is_some())
        .expect("a translating DTE");
    let (devid, at) = (e.devid, e.addr);
    // Flip IW (DTE bit 62, reference amdvi.md §7.1) in qword 0: still a well-formed DTE.
    let l = patched(&path, at.0 + 7, 1, |b| b[0] ^= 0x40);
    let r = verify_loaded(&l);
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == "dte-mismatch")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.unit, "iommu0");
    assert_eq!(f.addr, Some(at));
    assert!(
        f.what.contains(&format!("DeviceID {devid:#06x}")),
        "{}",
        f.what
    );
    assert!(f.what.contains("qword 0"), "{}", f.what);
    // JSON names the same.
    let mut j = Vec::new();
    inspector::verify::write_json(&r, &mut j).unwrap();
    let j = String::from_utf8(j).unwrap();
    assert!(
        j.contains("\"kind\": \"dte-mismatch\"") || j.contains("\"kind\":\"dte-mismatch\""),
        "{j}"
    );
    assert!(
        j.contains("\"clean\": false") || j.contains("\"clean\":false"),
        "{j}"
    );
}

#[test]
fn register_mismatch_is_reported() {
    let dir = handover(Mode::V1);
    let path = snap(dir.path(), Mode::V1, "after-adopt");
    let l = Loaded::open(&path, &LoadOptions::default()).unwrap();
    let ctl = amdvi_unit(&l).reg(amdvi::hw::regs::CONTROL);
    // The unit note's register entry (u64 offset, u32 width, u32 pad, u64 value) of
    // Control: flip ComWaitIntEn (bit 4) in the value, the unit still loads.
    let bytes = l.image.bytes();
    let pos = bytes
        .windows(24)
        .position(|w| {
            w[..8] == amdvi::hw::regs::CONTROL.to_le_bytes()
                && w[8..12] == 8u32.to_le_bytes()
                && w[16..] == ctl.to_le_bytes()
        })
        .expect("Control in the unit note");
    let mut bytes = bytes.to_vec();
    bytes[pos + 16] ^= 1 << 4;
    let l = load_bytes("reg.elf", bytes);
    assert_eq!(amdvi_unit(&l).reg(amdvi::hw::regs::CONTROL), ctl ^ (1 << 4));
    let r = verify_loaded(&l);
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == "register-mismatch")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.unit, "iommu0");
    assert!(f.what.contains("Control register (0x0018)"), "{}", f.what);
    assert!(f.what.contains(&format!("{ctl:#x}")), "{}", f.what);
}

/// The image at `path` with the unit's KHO record replaced: `f` edits the decoded
/// record and names the compatible string it is written under (same length, so it fits
/// where the old one was; the envelope's CRC is computed afresh). Returns the image and
/// the record's address.
fn with_record(path: &Path, f: impl FnOnce(&mut Record, &PageSet) -> String) -> (Loaded, PhysAddr) {
    let l = Loaded::open(path, &LoadOptions::default()).unwrap();
    let r = verify_loaded(&l);
    assert!(r.clean(), "{:#?}", r.findings);
    let blob = r.blob.unwrap();
    let h = read_handover(&l.image, blob).unwrap();
    let preserved = read_preserved(&l.image, blob).unwrap();
    let client = amdvi::record::client_name(amdvi_unit(&l).base);
    let at = h.client(&client).expect("the unit's client");
    let supported = Supported {
        family: amdvi::record::FAMILY,
        oldest: 1,
        newest: amdvi::record::VERSION,
    };
    let old = read_record(&l.image, at, &supported).unwrap();
    let mut rec = Record::decode(&old.payload).unwrap();
    let compatible = f(&mut rec, &preserved);
    let payload = rec.encode();
    assert_eq!(payload.len(), old.payload.len());
    let bytes = encode_record(&compatible, &payload).unwrap();
    let l = patched(path, at.0, bytes.len(), |b| b.copy_from_slice(&bytes));
    (l, at)
}

#[test]
fn record_of_another_version_is_refused() {
    let dir = handover(Mode::V1);
    let path = snap(dir.path(), Mode::V1, "after-adopt");
    let (l, at) = with_record(&path, |_, _| "iommu-amdvi-v2".into());
    let r = verify_loaded(&l);
    assert_eq!(kinds(&r), ["record"], "{:#?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(f.unit, "iommu0");
    assert_eq!(f.addr, Some(at));
    assert!(f.what.contains("\"iommu-amdvi-v2\""), "{}", f.what);
}

#[test]
fn record_run_not_preserved_is_reported() {
    let dir = handover(Mode::V1);
    let path = snap(dir.path(), Mode::V1, "before-kexec");
    let mut beyond = PhysAddr(0);
    // The last run grown up to and including the first page after it that is not
    // preserved.
    let (l, _) = with_record(&path, |rec, preserved| {
        let (start, pages) = *rec.pages.last().unwrap();
        let mut n = pages;
        while preserved.contains(PhysAddr(start.0 + n * 4096)) {
            n += 1;
        }
        beyond = PhysAddr(start.0 + n * 4096);
        *rec.pages.last_mut().unwrap() = (start, n + 1);
        amdvi::record::COMPATIBLE.into()
    });
    let r = verify_loaded(&l);
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == "run-not-preserved")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.unit, "iommu0");
    assert_eq!(f.addr, Some(beyond));
    // The grown run also claims pages that are no table of the unit.
    assert!(kinds(&r).contains(&"run-not-table"), "{:#?}", r.findings);
}

#[test]
fn dte_with_another_domains_id_is_reported() {
    let dir = handover(Mode::V1);
    let path = snap(dir.path(), Mode::V1, "after-adopt");
    let l = Loaded::open(&path, &LoadOptions::default()).unwrap();
    let u = amdvi_unit(&l);
    let a = u.entries.iter().find(|e| e.tree.is_some()).unwrap();
    let b = u
        .entries
        .iter()
        .find(|e| e.tree.is_some() && e.tree != a.tree)
        .expect("two domains");
    let (devid, at, other) = (b.devid, b.addr, a.dte.domain_id());
    assert_ne!(other, b.dte.domain_id());
    // DomainID is DTE bits 79:64 (qword 1 bits 15:0, reference amdvi.md §7.1).
    let l = patched(&path, at.0 + 8, 2, |x| {
        x.copy_from_slice(&other.to_le_bytes())
    });
    let r = verify_loaded(&l);
    let dev = format!("DeviceID {devid:#06x}");
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == "dte-mismatch")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.addr, Some(PhysAddr(at.0 + 8)));
    assert!(
        f.what.contains(&dev) && f.what.contains("qword 1"),
        "{}",
        f.what
    );
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == "domain-id-shared")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.unit, "iommu0");
    assert!(f.what.contains(&format!("{other:#06x}")), "{}", f.what);
}

#[test]
fn snapshots_of_the_runner_dump_diff_and_verify() {
    for mode in [Mode::V1, Mode::V2] {
        let dir = handover(mode);
        let before = Loaded::open(
            &snap(dir.path(), mode, "before-kexec"),
            &LoadOptions::default(),
        )
        .unwrap();
        let after = Loaded::open(
            &snap(dir.path(), mode, "after-adopt"),
            &LoadOptions::default(),
        )
        .unwrap();
        // The runner's note describes the AMD-Vi unit.
        assert_eq!(before.units.len(), 1);
        assert_eq!(before.units[0].kind(), "amdvi");
        let mut text = Vec::new();
        dump(&before, &Filter::default(), OutputFormat::Text, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("iommu0"), "{text}");
        // Before the kexec and after adopt: the same devices, the same translations.
        let d = diff(&before, &after, true);
        assert!(
            d.devices.is_empty() && d.tables.is_empty(),
            "{mode}: {d:#?}"
        );
        for l in [&before, &after] {
            let r = verify_loaded(l);
            assert!(r.clean(), "{mode}: {:#?}", r.findings);
        }
    }
}

#[test]
fn leaf_target_outside_preserved_memory_is_reported() {
    let dir = handover(Mode::V1);
    let path = snap(dir.path(), Mode::V1, "before-kexec");
    let l = Loaded::open(&path, &LoadOptions::default()).unwrap();
    let blob = verify_loaded(&l).blob.unwrap();
    let preserved = read_preserved(&l.image, blob).unwrap();
    let u = amdvi_unit(&l);
    let t = u.entries.iter().find_map(|e| e.tree).unwrap();
    // A level-1 table of the tree and its first present entry (PR, bit 0).
    let tables = inspector::arch::ArchUnit::tree_tables(u, &l.image, t);
    let table = tables
        .iter()
        .find(|x| x.level == 1)
        .expect("a level-1 table");
    let mut page = [0u8; 4096];
    iommu_core::mem::PhysMem::read(&l.image, table.addr, &mut page).unwrap();
    let i = (0..512)
        .find(|i| page[8 * i] & 1 == 1)
        .expect("a present PTE");
    let pte_at = table.addr.0 + 8 * i as u64;
    // A page of RAM nobody preserved: the v1 PTE's address field is bits 51:12
    // (reference amdvi.md §7.2).
    let target = (0..)
        .map(|k| PhysAddr((1 << 32) + (1 << 30) - 4096 * (k + 1)))
        .find(|p| !preserved.contains(*p))
        .unwrap();
    let l = patched(&path, pte_at, 8, |b| {
        let pte = u64::from_le_bytes(b.try_into().unwrap());
        let addr = 0x000f_ffff_ffff_f000u64;
        b.copy_from_slice(&((pte & !addr) | target.0).to_le_bytes());
    });
    let r = verify_loaded(&l);
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == "leaf-not-preserved")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.unit, "iommu0");
    assert_eq!(f.addr, Some(target));
    // The CLI on the same image: exit status 1, the finding in text and JSON.
    let file = dir.path().join("leaf.elf");
    std::fs::write(&file, l.image.bytes()).unwrap();
    for json in [false, true] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iommu-inspect"));
        c.arg("verify").arg(&file);
        if json {
            c.arg("--json");
        }
        let o = c.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("leaf-not-preserved"), "{out}");
        assert!(out.contains(&format!("{:#x}", target.0)), "{out}");
    }
}
