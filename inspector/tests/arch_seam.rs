//! The per-architecture seam: a toy architecture, implemented here with the trait and
//! registered in a list of architectures, shows in `dump` (text, JSON) and `diff`
//! through the common code, with nothing of the dump or diff copied.
//!
//! The toy: a linear device table of 8-byte entries (bit 0 valid, bit 1 abort, bits
//! 4–11 domain, bits 12–47 page-table root), one entry per devfn of bus 0; its page
//! tables have two levels of 512 8-byte entries (bit 0 valid, bit 1 write, bit 2 table
//! at level 2, address in bits 12–47; a level-2 entry without bit 2 maps 2 MiB).

use inspector::arch::{Arch, ArchUnit, EntryView, Item, Step, TableDesc, UnitId, Walk, WalkEnd};
use inspector::diff::{diff, write_text};
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::json::Json;
use inspector::model::{walk_format, Filter, LoadOptions, Loaded, TableWalk};
use inspector::progress::Progress;
use inspector::translate;
use inspector::tree::{tables_of, TreeTable};
use inspector::verify::{verify, Checker, VerifyOptions};
use inspector::vtd::VTD;
use inspector::InspectError;
use iommu_core::mem::PhysMem;
use iommu_core::pgtable::{Entry, EntryError, Format, Mapping, Perms};
use iommu_core::{Iova, PageSize, PhysAddr, RequesterId};
use std::any::Any;
use std::io::{self, Write};

const TABLE: u64 = 0x1000;
const ENTRIES: u64 = 4;
const ADDR: u64 = 0xffff_ffff_f000;

/// The toy page-table format.
struct ToyFormat;

impl Format for ToyFormat {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn root_level(&self) -> u8 {
        2
    }
    fn table_bytes(&self, _level: u8) -> u64 {
        4096
    }
    fn entry_shift(&self, level: u8) -> u32 {
        if level == 2 {
            21
        } else {
            12
        }
    }
    fn ia_bits(&self) -> u32 {
        30
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        if raw & 1 == 0 {
            return Ok(Entry::Invalid);
        }
        let perms = if raw & 2 != 0 { Perms::RW } else { Perms::R };
        let addr = PhysAddr(raw & ADDR);
        Ok(match (level, raw & 4 != 0) {
            (2, true) => Entry::Table {
                next: addr,
                level: 1,
                perms: Perms::RW,
            },
            (2, false) => Entry::Leaf {
                base: addr,
                size: PageSize::SIZE_2M,
                perms,
            },
            (_, false) => Entry::Leaf {
                base: addr,
                size: PageSize::SIZE_4K,
                perms,
            },
            (_, true) => {
                return Err(EntryError {
                    reason: "table bit at level 1",
                })
            }
        })
    }
}

/// One toy device-table entry.
#[derive(Clone, Debug)]
struct ToyEntry {
    devfn: u8,
    raw: u64,
    tree: Option<usize>,
}

/// A toy unit: its entries and distinct page-table roots.
#[derive(Debug)]
struct ToyUnit {
    index: usize,
    name: String,
    entries: Vec<ToyEntry>,
    roots: Vec<PhysAddr>,
}

/// The toy architecture; its one unit has this index (named `toy<index>`).
struct Toy(usize);

impl Arch for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn load(
        &self,
        image: &Image,
        _opts: &LoadOptions,
    ) -> Result<Vec<Box<dyn ArchUnit>>, InspectError> {
        let mut u = ToyUnit {
            index: self.0,
            name: format!("toy{}", self.0),
            entries: Vec::new(),
            roots: Vec::new(),
        };
        for devfn in 0..ENTRIES {
            let raw = image.read_u64(PhysAddr(TABLE + devfn * 8)).map_err(|err| {
                InspectError::Memory {
                    what: "toy device table".into(),
                    err,
                }
            })?;
            if raw & 1 == 0 {
                continue;
            }
            let tree = (raw & 2 == 0).then(|| {
                let root = PhysAddr(raw & ADDR);
                u.roots.iter().position(|&r| r == root).unwrap_or_else(|| {
                    u.roots.push(root);
                    u.roots.len() - 1
                })
            });
            u.entries.push(ToyEntry {
                devfn: devfn as u8,
                raw,
                tree,
            });
        }
        Ok(vec![Box::new(u)])
    }
}

impl ToyUnit {
    fn view(&self, e: &ToyEntry) -> EntryView {
        EntryView {
            rid: RequesterId {
                segment: 0,
                bus: 0,
                devfn: e.devfn,
            },
            pasid: None,
            rid_pasid: false,
            did: Some(((e.raw >> 4) & 0xff) as u16),
            translation: if e.tree.is_some() { "toy" } else { "abort" },
            blocked: e.tree.is_none().then_some(7),
            fpd: false,
            table: e.tree.map(|t| self.tree(t)),
            tree: e.tree,
        }
    }
}

impl ArchUnit for ToyUnit {
    fn kind(&self) -> &'static str {
        "toy"
    }
    fn kind_title(&self) -> &'static str {
        "Toy"
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> UnitId {
        UnitId {
            kind: "toy",
            index: self.index,
            base: PhysAddr(0xfee0_0000 + self.index as u64 * 0x1000),
            assumed: false,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn text_head(&self, _filter: &Filter, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "unit {}: Toy, device table at {:#x}", self.name, TABLE)
    }
    fn json_head(&self, j: &mut Json<&mut dyn Write>, _filter: &Filter) -> io::Result<()> {
        j.kv_hex("device_table", TABLE)
    }
    fn entries(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> EntryView {
        self.view(&self.entries[i])
    }
    fn listing(&self, filter: &Filter) -> Vec<Item> {
        (0..self.entries.len())
            .filter(|&i| filter.entry(&self.entry(i)))
            .map(Item::Entry)
            .collect()
    }
    fn summary(&self, i: usize) -> String {
        let e = &self.entries[i];
        match e.tree {
            Some(t) => format!("toy table at {}", self.roots[t]),
            None => "abort".into(),
        }
    }
    fn json_entry(
        &self,
        j: &mut Json<&mut dyn Write>,
        i: usize,
        _tree: Option<usize>,
    ) -> io::Result<()> {
        j.kv_hex("raw", self.entries[i].raw)
    }
    fn trees(&self) -> usize {
        self.roots.len()
    }
    fn tree(&self, t: usize) -> TableDesc {
        TableDesc {
            format: "toy",
            root: self.roots[t],
            levels: 2,
        }
    }
    fn json_tree(&self, j: &mut Json<&mut dyn Write>, t: usize) -> io::Result<()> {
        j.kv_hex("root", self.roots[t].0)
    }
    fn walk_tree(&self, image: &Image, t: usize, visit: &mut dyn FnMut(&Mapping)) -> TableWalk {
        walk_format(&ToyFormat, image, self.roots[t], visit)
    }
    fn tree_tables(&self, image: &Image, t: usize) -> Vec<TreeTable> {
        tables_of(&ToyFormat, image, self.roots[t])
    }
    fn verify(&self, image: &Image, ck: &mut Checker<'_>) -> Result<(), InspectError> {
        let mut pages = 0;
        for (t, root) in self.roots.iter().enumerate() {
            for table in self.tree_tables(image, t) {
                pages += 1;
                let owner = format!("level {} toy table of {root} ({})", table.level, self.name);
                ck.check_page(table.addr, owner, None);
            }
        }
        ck.checked(1, pages);
        Ok(())
    }
    fn translate(
        &self,
        image: &Image,
        rid: RequesterId,
        pasid: Option<u32>,
        iova: Iova,
        write: bool,
    ) -> Result<Walk, InspectError> {
        let e = self
            .entries
            .iter()
            .find(|e| e.devfn == rid.devfn)
            .ok_or_else(|| InspectError::Usage(format!("no toy entry for {rid}")))?;
        let mut hit = None;
        if let Some(t) = e.tree {
            self.walk_tree(image, t, &mut |m| {
                if m.iova.0 <= iova.0 && iova.0 <= m.iova_last().0 {
                    hit = Some(*m);
                }
            });
        }
        let end = match hit {
            Some(m) if !write || m.perms.write => WalkEnd::Mapped {
                pa: PhysAddr(m.pa.0 + (iova.0 - m.iova.0)),
                perms: m.perms,
                page_size: m.page_size,
                did: Some(((e.raw >> 4) & 0xff) as u16),
            },
            _ => WalkEnd::Fault {
                code: 7,
                reason: "toy fault",
                detail: "not mapped for this access".into(),
                fpd: false,
            },
        };
        Ok(Walk {
            rid,
            pasid,
            iova,
            write,
            steps: vec![Step {
                what: "toy entry".into(),
                addr: PhysAddr(TABLE + rid.devfn as u64 * 8),
                raw: vec![e.raw],
                meaning: self.summary(
                    self.entries
                        .iter()
                        .position(|x| x.devfn == e.devfn)
                        .unwrap_or(0),
                ),
            }],
            end,
        })
    }
    fn attrs(&self) -> Vec<(&'static str, String, bool)> {
        vec![("devices", self.entries.len().to_string(), true)]
    }
}

/// A raw image (base 0) with the toy device table at 0x1000: devfn 0 and 1 share the
/// two-level table at 0x2000 (domain 5), devfn 2 aborts (domain 6), devfn 3 is
/// invalid. The tree maps IOVA 0 to `page0` (4 KiB, rw), 0x1000 to 0x9000 (4 KiB, r) and
/// 2 MiB at 0x200000 to 0x200000 (rw).
fn toy_image(name: &str, page0: u64) -> Image {
    let mut m = vec![0u8; 0x10000];
    let mut put = |at: u64, v: u64| {
        m[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(TABLE, 0x2000 | 5 << 4 | 1);
    put(TABLE + 8, 0x2000 | 5 << 4 | 1);
    put(TABLE + 16, 6 << 4 | 2 | 1);
    put(0x2000, 0x3000 | 4 | 1);
    put(0x2008, 0x20_0000 | 2 | 1);
    put(0x3000, page0 | 2 | 1);
    put(0x3008, 0x9000 | 1);
    Image::from_bytes(name, m, OpenAs::Raw { base: 0 }).unwrap()
}

fn load(name: &str, page0: u64) -> Loaded {
    Loaded::from_image_with(
        toy_image(name, page0),
        &LoadOptions::default(),
        &[&VTD, &Toy(0)],
    )
    .unwrap()
}

fn run(l: &Loaded, fmt: OutputFormat) -> String {
    let mut out = Vec::new();
    dump(l, &Filter::default(), fmt, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// A toy unit (no VT-d unit in the image) is listed by the common text dump: the unit
/// header from the toy, each entry with its summary, the shared tree's mappings once
/// under its first device, the second device referring to it, the aborting entry.
#[test]
fn toy_arch_unit_shows_in_the_common_text_dump() {
    let l = load("toy.raw", 0x8000);
    assert_eq!(l.units.len(), 1);
    assert!(l.vtd_units().is_empty());
    let t = run(&l, OutputFormat::Text);
    let expect = [
        "1 Toy unit)",
        "\nunit toy0: Toy, device table at 0x1000\n  devices:\n",
        "\n    0000:00:00.0  no pasid  toy table at 0x2000\n",
        concat!(
            "\n      0x0000000000000000-0x0000000000000fff  0x0000000000008000-0x0000000000008fff  ",
            "        0x1000  rw-  4K\n"
        ),
        concat!(
            "\n      0x0000000000001000-0x0000000000001fff  0x0000000000009000-0x0000000000009fff  ",
            "        0x1000  r--  4K\n"
        ),
        concat!(
            "\n      0x0000000000200000-0x00000000003fffff  0x0000000000200000-0x00000000003fffff  ",
            "      0x200000  rw-  2M\n"
        ),
        "\n      3 mapping runs, 2 table pages, 0 problems\n",
        "\n    0000:00:00.1  no pasid  toy table at 0x2000\n      same page table as \
         0000:00:00.0 (mappings above)\n",
        "\n    0000:00:00.2  no pasid  abort\n",
    ];
    for e in expect {
        assert!(t.contains(e), "missing {e:?} in:\n{t}");
    }
    assert!(
        !t.contains("00:00.3"),
        "the invalid entry is not listed:\n{t}"
    );
}

/// The common JSON dump writes the toy unit's members, its entries and its one tree.
#[test]
fn toy_arch_unit_shows_in_the_common_json_dump() {
    let l = load("toy.raw", 0x8000);
    let j = run(&l, OutputFormat::Json);
    for e in [
        "\"name\": \"toy0\",\n      \"kind\": \"toy\",\n      \"device_table\": \"0x1000\",",
        "\"bdf\": \"0000:00:00.1\"",
        "\"translation\": \"abort\"",
        "\"raw\": \"0x2051\"",
        "\"id\": 0,\n          \"root\": \"0x2000\",\n          \"devices\": 2,",
        "{\"iova\": \"0x200000\", \"iova_last\": \"0x3fffff\", \"pa\": \"0x200000\", \
         \"pa_last\": \"0x3fffff\", \"size\": \"0x200000\", \"perms\": \"rw-\", \
         \"page_size\": \"0x200000\"}",
        "\"table_pages\": 2,",
    ] {
        assert!(j.contains(e), "missing {e:?} in:\n{j}");
    }
    // Nothing for the toy's tail: the last member is the common `page_tables`.
    assert!(!j.contains("unlisted_devices"), "{j}");
}

/// `diff` of two toy images whose shared tree maps IOVA 0 elsewhere: the common diff
/// pairs the toy units and devices, compares the tree once and lists the change under
/// the first device, the second referring to it.
#[test]
fn toy_arch_units_are_compared_by_the_common_diff() {
    let a = load("a.raw", 0x8000);
    let b = load("b.raw", 0xa000);
    let d = diff(&a, &b, false);
    assert_eq!(d.devices.len(), 2, "{d:?}");
    assert_eq!(d.tables.len(), 1);
    let mut out = Vec::new();
    write_text(&d, "a.raw", "b.raw", &mut out).unwrap();
    let t = String::from_utf8(out).unwrap();
    assert!(t.contains("device 0000:00:00.0 (toy0):\n"), "{t}");
    assert!(t.contains("pa 0x8000 rw- 4K"), "{t}");
    assert!(t.contains("pa 0xa000 rw- 4K"), "{t}");
    assert!(
        t.contains("device 0000:00:00.1 (toy0):\n  page tables differ as for device 0000:00:00.0 (toy0) (above)"),
        "{t}"
    );
    // The same image: no difference at all.
    let same = diff(&a, &load("a2.raw", 0x8000), false);
    assert!(same.same(), "{same:?}");
}

/// Every architecture of the list loads its units (here the toy twice), counted under
/// the architecture's name; an image where no architecture finds a unit is an error.
#[test]
fn every_listed_architecture_loads_its_units_and_none_is_an_error() {
    let l = Loaded::from_image_with(
        toy_image("two.raw", 0x8000),
        &LoadOptions::default(),
        &[&Toy(0), &Toy(1)],
    )
    .unwrap();
    assert_eq!(l.units.len(), 2);
    let t = run(&l, OutputFormat::Text);
    assert!(t.contains("2 Toy units)"), "{t}");
    assert!(t.contains("\nunit toy1: Toy"), "{t}");
    // No architecture finds a unit: the VT-d hint error.
    let err = Loaded::from_image_with(
        toy_image("none.raw", 0x8000),
        &LoadOptions::default(),
        &[&VTD],
    )
    .unwrap_err();
    assert!(matches!(err, InspectError::NoUnits { .. }), "{err:?}");
}

/// The common `verify` runs each unit's checks with one page bookkeeping for the image:
/// two toy units whose trees are the same pages are each checked, and the pages the
/// second reaches again are reported as reachable twice, under the second unit.
#[test]
fn the_common_verify_reports_pages_two_units_reach() {
    let l = Loaded::from_image_with(
        toy_image("twice.raw", 0x8000),
        &LoadOptions::default(),
        &[&Toy(0), &Toy(1)],
    )
    .unwrap();
    let opts = VerifyOptions {
        record: Some(Vec::new()),
        ..VerifyOptions::default()
    };
    let r = verify(&l, &opts, &mut Progress::hidden()).unwrap();
    assert_eq!(
        r.checked,
        vec![("toy0".to_string(), 1, 2), ("toy1".to_string(), 1, 2)]
    );
    let twice: Vec<(&str, &str, Option<PhysAddr>)> = r
        .findings
        .iter()
        .map(|f| (f.unit.as_str(), f.kind, f.addr))
        .collect();
    assert_eq!(
        twice,
        vec![
            ("toy1", "reachable-twice", Some(PhysAddr(0x2000))),
            ("toy1", "reachable-twice", Some(PhysAddr(0x3000))),
        ]
    );
    assert!(
        r.findings[0].what.contains("toy table of 0x2000 (toy1)"),
        "{r:?}"
    );
}

/// The common `walk` writers show a toy unit's translation: its steps and result.
#[test]
fn the_common_walk_output_shows_a_toy_translation() {
    let l = load("walk.raw", 0x8000);
    let u = &l.units[0];
    let rid = RequesterId {
        segment: 0,
        bus: 0,
        devfn: 1,
    };
    let t = u
        .translate(&l.image, rid, None, Iova(0x1234), true)
        .unwrap();
    let mut out = Vec::new();
    translate::write_text(&t, u.name(), &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "write request of iova 0x1234 by 0000:00:00.1 through toy0:\n  \
         1. toy entry at 0x1008\n       = 0x0000000000002051\n       \
         toy table at 0x2000\n  => fault 0x07 (toy fault): not mapped for this access\n"
    );
    let t = u.translate(&l.image, rid, None, Iova(0x234), true).unwrap();
    let mut out = Vec::new();
    translate::write_json(&t, u.name(), &mut out).unwrap();
    let j = String::from_utf8(out).unwrap();
    assert!(
        j.contains("\"result\": {\"kind\": \"mapped\", \"pa\": \"0x8234\", \"perms\": \"rw-\""),
        "{j}"
    );
}
