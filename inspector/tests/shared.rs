//! Images whose devices share structures: many functions in one domain (one page-table
//! tree), and scalable-mode PASID directories whose entries all point at one PASID
//! table. Each distinct structure is walked and listed once; the output and the work
//! grow with the distinct structures, not with the number of devices referring to them.
//! (Issue 7 item 6: before, every device walked and printed its own copy.)

mod common;

use common::*;
use inspector::diff::{diff, write_json, write_text};
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::model::{Filter, LoadOptions, Loaded};
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use vtd::hw::pte::SlPte;

/// Leaves of the shared table: 4 full leaf tables of non-coalescing 4 KiB pages.
const LEAVES: u64 = 2048;

/// Fills the 4-level second-stage table at `root` with `n` 4 KiB leaves from IOVA 0,
/// IOVA page i to PA page 2i + 1 (no two coalesce), a leaf table at a time.
fn fill(r: &mut Rig, root: u64, n: u64) {
    for t in 0..n.div_ceil(512) {
        let iova = t * 512 * 4096;
        r.map(root, 4, iova, 0x1_0000_0000, 1, true, true);
        let leaf_table = r.leaf_entry(root, 4, iova) & !0xfff;
        let mut page = [0u8; 4096];
        for i in 0..512.min(n - t * 512) {
            let k = t * 512 + i;
            let pte = SlPte::page(0x1_0000_0000 + (2 * k + 1) * 4096, true, true).raw();
            page[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&pte.to_le_bytes());
        }
        r.m.mem_mut()
            .write(PhysAddr(leaf_table), &page)
            .expect("leaf table");
    }
}

fn load(r: &Rig, name: &str) -> Loaded {
    let image = Image::from_bytes(name, r.bytes(), OpenAs::Elf).expect("snapshot");
    Loaded::from_image(image, &LoadOptions::default()).expect("units")
}

fn dump_string(l: &Loaded, fmt: OutputFormat) -> (String, u64) {
    let mut out = Vec::new();
    let stats = dump(l, &Filter::default(), fmt, &mut out).expect("dump");
    (String::from_utf8(out).expect("utf-8"), stats.tree_walks)
}

/// Lines of a text dump that list a mapping run (`      0x…-0x…  0x…`).
fn text_mapping_lines(s: &str) -> usize {
    s.lines().filter(|l| l.starts_with("      0x")).count()
}

/// A legacy machine whose 256 functions of bus 0 all point at one domain's table of
/// [`LEAVES`] 4 KiB mappings; returns the rig and the table root.
fn legacy_256_functions_one_domain() -> (Rig, u64) {
    let mut r = Rig::legacy();
    let root = r.legacy_context(rid(0, 0, 0), 1, 4);
    for devfn in 1..=255u8 {
        r.legacy_context_to(rid(0, devfn >> 3, devfn & 7), 1, 4, root);
    }
    fill(&mut r, root, LEAVES);
    (r, root)
}

#[test]
fn legacy_256_functions_sharing_one_domain_dump_walks_and_lists_the_table_once() {
    let (r, _) = legacy_256_functions_one_domain();
    let l = load(&r, "shared.elf");
    let us = l.vtd_units()[0];
    assert_eq!(us.scan.contexts.len(), 256);
    assert_eq!(us.trees.len(), 1, "one distinct tree");
    assert_eq!(us.trees.users, vec![256]);

    let (text, walks) = dump_string(&l, OutputFormat::Text);
    assert_eq!(walks, 1);
    assert_eq!(
        text_mapping_lines(&text),
        LEAVES as usize,
        "mappings listed once"
    );
    assert_eq!(text.matches("same page table as 0000:00:00.0").count(), 255);
    // Registers and structures (~60 lines), 256 context entries, 2 lines a device,
    // the table once: nowhere near 256 copies of it.
    let lines = text.lines().count();
    assert!(lines < LEAVES as usize + 256 * 3 + 100, "{lines} lines");

    let (json, walks) = dump_string(&l, OutputFormat::Json);
    assert_eq!(walks, 1);
    assert_eq!(json.matches("\"iova_last\"").count(), LEAVES as usize);
    assert_eq!(json.matches("\"page_table\": {\"id\": 0,").count(), 256);
    assert!(json.contains("\"devices\": 256,"), "tree lists its users");

    let (linux, walks) = dump_string(&l, OutputFormat::Linux);
    assert_eq!(walks, 1);
    let rows = linux.lines().filter(|l| l.starts_with("0x")).count();
    assert_eq!(rows, LEAVES as usize, "leaf rows listed once");
    assert_eq!(
        linux
            .matches("same page table as Device 0000:00:00.0 (entries above)")
            .count(),
        255
    );
}

#[test]
fn legacy_256_functions_sharing_one_domain_diff_compares_the_table_once() {
    let (r, root) = legacy_256_functions_one_domain();
    let a = load(&r, "a.elf");
    let (mut r2, _) = legacy_256_functions_one_domain();
    // One leaf changes target in B; every function sees the change.
    let leaf = r2.leaf_entry(root, 4, 0x5000);
    r2.poke(leaf, SlPte::page(0x7000_0000, true, false).raw());
    let b = load(&r2, "b.elf");

    let d = diff(&a, &b, false);
    assert_eq!(d.tree_walks, (1, 1), "each image's tree walked once");
    assert_eq!(d.tables.len(), 1, "one pair of trees compared");
    assert_eq!(d.tables[0].mappings.len(), 1);
    assert_eq!(d.devices.len(), 256);
    assert!(d.devices.iter().all(|x| x.table_diff == Some(0)));

    let mut out = Vec::new();
    write_text(&d, "a.elf", "b.elf", &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("  ~ iova")).count(),
        1
    );
    assert_eq!(
        text.matches("page tables differ as for device").count(),
        255
    );

    let mut out = Vec::new();
    write_json(&d, "a.elf", "b.elf", &mut out).unwrap();
    let json = String::from_utf8(out).unwrap();
    assert_eq!(json.matches("\"change\": \"changed\"").count(), 1);
    assert_eq!(json.matches("\"table_diff\": 0").count(), 256);

    // The same image against itself: same, still one walk a side.
    let d = diff(&a, &load(&r, "a2.elf"), false);
    assert!(d.same(), "{d:?}");
    assert_eq!(d.tree_walks, (1, 1));
}

/// Directory entries of the shared PASID directory (PDTS 0: 128 entries), all present.
const DIR_ENTRIES: u64 = 128;
/// Context entries (bus 0, devfn 0x20..) pointing at the one directory.
const SM_DEVICES: u8 = 4;
/// Leaves of the one second-stage table every PASID entry points at.
const SM_LEAVES: u64 = 512;

/// A scalable-mode machine whose [`SM_DEVICES`] context entries point at one PASID
/// directory, whose [`DIR_ENTRIES`] entries all point at one PASID table, whose 64
/// entries all point at one second-stage table: 4 × 128 × 64 = 32768 PASIDs through
/// three distinct structures and one page table. `twin_dir` gives device 1 its own
/// copy of the directory (same entries), so the PASID table is met through two
/// directories.
fn scalable_one_pasid_table(twin_dir: bool) -> (Rig, u64) {
    let mut r = Rig::scalable();
    let first = rid(0, 4, 0);
    let root = r.scalable_context(first, 0, 5, 4);
    fill(&mut r, root, SM_LEAVES);
    let ct = r.peek(r.root) & !0xfff;
    let ce_at = ct + first.devfn as u64 * 32;
    let ce: Vec<u64> = (0..4).map(|i| r.peek(ce_at + 8 * i)).collect();
    let dir = ce[0] & !0xfff;
    let de = r.peek(dir);
    let table = de & !0xfff;
    let pe: Vec<u64> = (0..8).map(|i| r.peek(table + 8 * i)).collect();
    for e in 1..64u64 {
        for (i, q) in pe.iter().enumerate() {
            r.poke(table + e * 64 + 8 * i as u64, *q);
        }
    }
    for e in 1..DIR_ENTRIES {
        r.poke(dir + 8 * e, de);
    }
    let twin = r.page();
    for e in 0..DIR_ENTRIES {
        r.poke(twin + 8 * e, de);
    }
    for d in 1..SM_DEVICES {
        let at = ct + (first.devfn as u64 + d as u64) * 32;
        for (i, q) in ce.iter().enumerate() {
            let q = if i == 0 && d == 1 && twin_dir {
                (q & 0xfff) | twin
            } else {
                *q
            };
            r.poke(at + 8 * i as u64, q);
        }
    }
    (r, root)
}

#[test]
fn scalable_pasid_directory_entries_all_pointing_at_one_pasid_table_dump_is_bounded() {
    let (r, _) = scalable_one_pasid_table(true);
    let l = load(&r, "sm.elf");
    let us = l.vtd_units()[0];
    let pasids = SM_DEVICES as usize * DIR_ENTRIES as usize * 64;
    assert_eq!(us.scan.contexts.len(), pasids, "every PASID is reachable");
    assert_eq!(us.trees.len(), 1);

    let (text, walks) = dump_string(&l, OutputFormat::Text);
    assert_eq!(walks, 1);
    assert_eq!(text_mapping_lines(&text), SM_LEAVES as usize);
    // The PASID table's 64 entries are listed once in the structures and once among
    // the devices; every other directory entry, directory and device refers to them.
    assert_eq!(
        text.matches("        PASID 0x").count(),
        64,
        "entries in full"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("    0000:")).count(),
        64 + 4
    );
    // Device 0: directory entries 1-127 repeat the table (one run); device 1 (its own
    // directory): one run; devices 2 and 3 repeat device 0's directory.
    assert_eq!(text.matches("same PASID table 0x").count(), 2 * 2);
    assert_eq!(text.matches("same PASID directory 0x").count(), 2 * 2);
    assert!(text
        .contains("PASIDs 0x0-0x1fff, RID_PASID among them (8192 entries): same PASID directory"));
    let lines = text.lines().count();
    assert!(lines < SM_LEAVES as usize + 2 * 64 + 200, "{lines} lines");

    let (json, walks) = dump_string(&l, OutputFormat::Json);
    assert_eq!(walks, 1);
    assert_eq!(json.matches("\"iova_last\"").count(), SM_LEAVES as usize);
    assert_eq!(
        json.matches("\"bdf\": ").count(),
        64 + 4,
        "64 entries, 4 runs"
    );
    assert_eq!(json.matches("\"shares\": \"pasid_table\"").count(), 2);
    assert_eq!(json.matches("\"shares\": \"pasid_directory\"").count(), 2);

    let (linux, walks) = dump_string(&l, OutputFormat::Linux);
    assert_eq!(walks, 1);
    assert_eq!(
        linux.lines().filter(|l| l.starts_with("0x")).count(),
        SM_LEAVES as usize
    );
    assert!(linux.lines().count() < SM_LEAVES as usize + 64 + 100);
}

#[test]
fn scalable_pasid_directory_entries_all_pointing_at_one_pasid_table_diff_is_bounded() {
    let (r, root) = scalable_one_pasid_table(false);
    let a = load(&r, "a.elf");
    let (mut r2, _) = scalable_one_pasid_table(false);
    let leaf = r2.leaf_entry(root, 4, 0x3000);
    r2.poke(leaf, SlPte::page(0x7000_0000, true, true).raw());
    let b = load(&r2, "b.elf");

    let d = diff(&a, &b, false);
    assert_eq!(d.tree_walks, (1, 1));
    assert_eq!(d.tables.len(), 1);
    assert_eq!(d.tables[0].mappings.len(), 1);
    // One run per device: all its PASIDs have the same difference.
    assert_eq!(d.devices.len(), SM_DEVICES as usize);
    for x in &d.devices {
        assert_eq!((x.key.pasid, x.pasid_last), (Some(0), Some(0x1fff)));
        assert_eq!(x.entries, DIR_ENTRIES as usize * 64);
        assert_eq!(x.table_diff, Some(0));
    }
    let mut out = Vec::new();
    write_text(&d, "a.elf", "b.elf", &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("  ~ iova")).count(),
        1
    );
    assert!(text.contains("device 0000:00:04.0 pasids 0x0-0x1fff (8192 entries, dmar0):"));
    assert!(text.lines().count() < 20, "{text}");

    let mut out = Vec::new();
    write_json(&d, "a.elf", "b.elf", &mut out).unwrap();
    let json = String::from_utf8(out).unwrap();
    assert_eq!(
        json.matches("\"entries\": 8192").count(),
        SM_DEVICES as usize
    );
}

/// A filter that hides the first user of a shared structure: the first one shown lists
/// it in full (never a reference to something not in the output).
#[test]
fn shared_structures_filtered_to_a_later_user_are_listed_in_full() {
    let (r, _) = legacy_256_functions_one_domain();
    let l = load(&r, "shared.elf");
    let filter = Filter {
        device: Some(rid(0, 0x1f, 7)),
        ..Filter::default()
    };
    let mut out = Vec::new();
    let stats = dump(&l, &filter, OutputFormat::Text, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(stats.tree_walks, 1);
    assert_eq!(text_mapping_lines(&text), LEAVES as usize);
    assert!(!text.contains("same page table"), "{text}");

    let (r, _) = scalable_one_pasid_table(false);
    let l = load(&r, "sm.elf");
    let filter = Filter {
        device: Some(rid(0, 4, 2)),
        pasid: Some(0x41),
        ..Filter::default()
    };
    let mut out = Vec::new();
    let stats = dump(&l, &filter, OutputFormat::Text, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(stats.tree_walks, 1);
    assert_eq!(text_mapping_lines(&text), SM_LEAVES as usize);
    assert_eq!(
        text.matches("        PASID 0x00041  entry").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("same PASID"), "{text}");
}

/// Devices in the snapshot's note against 32768 PASID entries: a note served by its
/// PASID entry, or without PASID by the RID_PASID entry, is not listed again; the
/// others are, each once (the check is one pass over each, not their product).
#[test]
fn device_note_of_thousands_of_pasids_against_shared_pasid_entries() {
    let (mut r, _) = scalable_one_pasid_table(false);
    for p in 0x1000..0x1800u32 {
        r.device(rid(0, 4, 0), Some(p));
    }
    for p in 0x2000..0x2032u32 {
        r.device(rid(0, 4, 3), Some(p));
    }
    r.device(rid(0, 4, 1), None);
    r.device(rid(0, 5, 0), None);
    let l = load(&r, "notes.elf");
    let (text, _) = dump_string(&l, OutputFormat::Text);
    let unlisted: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("listed in the snapshot, no present entry"))
        .collect();
    assert_eq!(unlisted.len(), 0x32 + 1, "{unlisted:?}");
    assert!(unlisted[..0x32]
        .iter()
        .all(|l| l.starts_with("    0000:00:04.3  pasid 0x20")));
    assert!(unlisted[0x32].starts_with("    0000:00:05.0  no pasid"));
    let (json, _) = dump_string(&l, OutputFormat::Json);
    assert_eq!(json.matches("\"fault\": ").count(), 0x32 + 1);
}

/// The scan itself is shared: [`SM_DEVICES`] context entries × [`DIR_ENTRIES`]
/// directory entries × 64 PASID entries, through two directories (device 1's twin) and
/// one PASID table, are held as the distinct structures' records (one run per device,
/// 2 × 128 directory entries, 64 PASID entries), not one record per reachable
/// (device, PASID); each entry is still produced in full, in order, when asked for.
#[test]
fn scalable_devices_sharing_one_pasid_table_are_scanned_once_per_distinct_structure() {
    let (r, _) = scalable_one_pasid_table(true);
    let l = load(&r, "sm.elf");
    let cs = &l.vtd_units()[0].scan.contexts;
    let pasids = SM_DEVICES as usize * DIR_ENTRIES as usize * 64;
    assert_eq!(cs.len(), pasids);
    assert_eq!(cs.pasid_tables(), 1);
    assert_eq!(cs.pasid_directories(), 2);
    assert_eq!(
        cs.records(),
        SM_DEVICES as usize + 2 * DIR_ENTRIES as usize + 64
    );
    let table = {
        let c = cs.get(0);
        c.pasid_entry.expect("PASID entry").0 .0
    };
    for (i, c) in cs.iter().enumerate() {
        let per_dev = DIR_ENTRIES as usize * 64;
        assert_eq!(c.rid, rid(0, 4, (i / per_dev) as u8), "entry {i}");
        let pasid = (i % per_dev) as u32;
        assert_eq!(c.pasid, Some(pasid), "entry {i}");
        assert_eq!(c.rid_pasid, pasid == 0);
        assert_eq!(
            c.pasid_entry.map(|p| p.0 .0),
            Some(table + 64 * (pasid as u64 % 64))
        );
        let (de_at, _) = c.pasid_dir_entry.expect("directory entry");
        assert_eq!(de_at.0 & 0xfff, 8 * (pasid as u64 / 64));
        if i % 4099 == 0 || i + 1 == pasids {
            assert_eq!(cs.get(i), c, "entry {i} by index");
        }
    }
}

/// `verify` of 256 functions sharing one domain whose table has an entry with reserved
/// bits: the problem is reported once for the table, naming its first 16 users and
/// counting the rest (before, all 256 labels were joined into the message: output grew
/// with the users, with every PASID of a shared PASID table's devices).
#[test]
fn verify_names_the_first_users_of_a_shared_table_and_counts_the_rest() {
    use inspector::progress::Progress;
    use inspector::verify::{verify, VerifyOptions};
    let (mut r, root) = legacy_256_functions_one_domain();
    let leaf = r.leaf_entry(root, 4, 0x5000);
    let v = r.peek(leaf);
    r.poke(leaf, v | vtd::hw::pte::SL_TM | (1 << 60));
    let pages = r.pages.clone();
    let devices: Vec<_> = (0..=255u8)
        .map(|devfn| (rid(0, devfn >> 3, devfn & 7), None, 1u16))
        .collect();
    let blob = r.handover(&pages, &[(1, root, 4)], &devices);
    let l = load(&r, "shared.elf");
    let opts = VerifyOptions {
        blob: Some(blob.0),
        ..VerifyOptions::default()
    };
    let rep = verify(&l, &opts, &mut Progress::hidden()).expect("verify");
    let named: Vec<&str> = rep
        .findings
        .iter()
        .map(|f| f.what.as_str())
        .filter(|w| w.contains("(used by "))
        .collect();
    assert!(!named.is_empty(), "{:?}", rep.findings);
    for w in &named {
        assert!(w.contains("(used by 0000:00:00.0, 0000:00:00.1, "), "{w}");
        assert!(w.contains("0000:00:01.7 and 240 more)"), "{w}");
        assert!(!w.contains("0000:00:02.0"), "{w}");
    }
}
