//! The AMD-Vi plug-in on images built with the emulator's AMD-Vi model (registers set
//! through MMIO, tables written by hand through `amdvi::hw`): the device table decoded
//! per DeviceID, v1 (level skipping, NextLevel 7) and v2 mappings, `walk` with the
//! event code the model itself logs for the same request, `diff`, malformed input as
//! typed errors, the `verify` seam, and the CLI.

use amdvi::hw::dte::{bits, DeviceTableEntry, Glx, GuestPagingMode};
use amdvi::hw::pte::{self, v1_pde};
use amdvi::hw::regs::{self, field_value};
use emulator::amdvi::{AmdViConfig, AmdViUnit};
use emulator::dma::{DmaAgent, TransferError};
use emulator::machine::{Device, Machine};
use emulator::model::DmaError;
use inspector::amdvi::{AmdViOverride, AmdViState, Handling};
use inspector::arch::WalkEnd;
use inspector::diff::diff;
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::model::{Filter, LoadOptions, Loaded};
use inspector::InspectError;
use iommu_core::mem::PhysMem;
use iommu_core::{Iova, PhysAddr, RequesterId};
use proptest::prelude::*;

mod plugin;

const BASE: PhysAddr = PhysAddr(0xfed8_0000);
const DEVTAB: u64 = 0x10_0000;
const CMD: u64 = 0x20_0000;
const EVT: u64 = 0x21_0000;
const DEV: u16 = 0x0010;
const DEV2: u16 = 0x0018;
const DOM: u16 = 7;

struct Rig {
    m: Machine,
    agents: Vec<(u16, DmaAgent)>,
}

/// One unit at BASE with devices 00:02.0 (DeviceID 0x10) and 00:03.0 (0x18), a zeroed
/// 128-entry device table, IommuEn/CmdBufEn/EventLogEn/GTEn.
fn rig() -> Rig {
    let mut m = Machine::with_ram(&[(PhysAddr(0), 0x400_0000)]).unwrap();
    m.add_unit(Box::new(AmdViUnit::new(AmdViConfig::new(BASE))))
        .unwrap();
    let mut agents = Vec::new();
    for d in [DEV, DEV2] {
        let a = m
            .add_device(Device {
                rid: RequesterId::from_sid(0, d),
                pasid: None,
                unit: BASE,
            })
            .unwrap();
        agents.push((d, a));
    }
    m.mem_mut().write(PhysAddr(DEVTAB), &[0u8; 4096]).unwrap();
    m.mem_mut().write(PhysAddr(EVT), &[0u8; 4096]).unwrap();
    // The pages DMA reaches in the tests.
    for page in [
        0x80_1000, 0x90_0000, 0x90_1000, 0xa0_0000, 0xb0_0000, 0xc0_1000,
    ] {
        m.mem_mut().write(PhysAddr(page), &[0u8; 4096]).unwrap();
    }
    let mut r = Rig { m, agents };
    r.w(regs::DEV_TAB_BASE, DEVTAB);
    r.w(regs::CMD_BUF_BASE, CMD | (8 << 56));
    r.w(regs::EVT_LOG_BASE, EVT | (8 << 56));
    r.w(
        regs::CONTROL,
        field_value(regs::CONTROL::IOMMU_EN, 1)
            | field_value(regs::CONTROL::EVENT_LOG_EN, 1)
            | field_value(regs::CONTROL::CMD_BUF_EN, 1)
            | field_value(regs::CONTROL::GT_EN, 1),
    );
    r
}

impl Rig {
    fn w(&mut self, off: u64, v: u64) {
        self.m.mmio_write(PhysAddr(BASE.0 + off), 8, v).unwrap();
    }
    fn mem(&mut self, addr: u64, v: u64) {
        self.m.mem_mut().write_u64(PhysAddr(addr), v).unwrap();
    }
    fn table(&mut self, addr: u64) {
        self.m
            .mem_mut()
            .write(PhysAddr(addr), &[0u8; 4096])
            .unwrap();
    }
    fn dte(&mut self, devid: u16, d: DeviceTableEntry) {
        for (i, q) in d.qwords().iter().enumerate() {
            self.mem(DEVTAB + devid as u64 * 32 + 8 * i as u64, *q);
        }
    }
    /// The fault code the model gives a DMA of `devid` (None: the DMA went through).
    fn dma(&mut self, devid: u16, iova: u64, write: bool) -> Option<u32> {
        let a = self.agents.iter().find(|x| x.0 == devid).unwrap().1;
        let r = if write {
            self.m.dma_write(&a, Iova(iova), &[0; 8])
        } else {
            let mut b = [0u8; 8];
            self.m.dma_read(&a, Iova(iova), &mut b)
        };
        match r {
            Ok(()) => None,
            Err(TransferError::Dma {
                error: DmaError::Fault(f),
                ..
            }) => Some(f.code),
            Err(TransferError::Dma {
                error: DmaError::Memory { .. },
                ..
            }) => Some(4),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    fn image(&self, name: &str) -> Image {
        Image::from_bytes(name, emulator::snapshot::to_bytes(&self.m), OpenAs::Elf).unwrap()
    }
    fn load(&self, name: &str) -> Loaded {
        Loaded::from_image(self.image(name), &LoadOptions::default()).unwrap()
    }
}

/// 4-level v1 tables: L4 @0x30_0000 -> L3 @0x30_1000 -> L2 @0x30_2000; L2[1] a 2 MiB
/// leaf at 0x80_0000; L2[0] -> L1 @0x30_3000: slots 4 and 5 one NextLevel-7 8 KiB page
/// at 0x90_0000, slot 8 a read-only 4 KiB page at 0xa0_0000. L4[1] skips to the level-2
/// table @0x30_4000 (IOVA 512 GiB..), whose slot 0 maps 2 MiB at 0xc0_0000.
fn v1_tables(r: &mut Rig) -> u64 {
    for t in [0x30_0000, 0x30_1000, 0x30_2000, 0x30_3000, 0x30_4000] {
        r.table(t);
    }
    r.mem(0x30_0000, v1_pde(0x30_1000, 3));
    r.mem(0x30_0008, v1_pde(0x30_4000, 2));
    r.mem(0x30_1000, v1_pde(0x30_2000, 2));
    r.mem(0x30_2000, v1_pde(0x30_3000, 1));
    r.mem(0x30_2008, 0x80_0000 | pte::PR | pte::IR | pte::IW);
    let p8k = pte::sized_page_addr(0x90_0000, 13) | (7 << 9) | pte::PR | pte::IR | pte::IW;
    r.mem(0x30_3000 + 4 * 8, p8k);
    r.mem(0x30_3000 + 5 * 8, p8k);
    r.mem(0x30_3000 + 8 * 8, 0xa0_0000 | pte::PR | pte::IR);
    r.mem(0x30_4000, 0xc0_0000 | pte::PR | pte::IR | pte::IW);
    0x30_0000
}

fn unit(l: &Loaded) -> &AmdViState {
    l.units
        .iter()
        .find_map(|u| u.as_any().downcast_ref::<AmdViState>())
        .expect("an AMD-Vi unit")
}

fn text(l: &Loaded, fmt: OutputFormat, filter: &Filter) -> String {
    let mut out = Vec::new();
    dump(l, filter, fmt, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn rid(devid: u16) -> RequesterId {
    RequesterId::from_sid(0, devid)
}

/// The DTE fields set by hand read back decoded, in text and JSON, and the v1 tree's
/// mappings (2 MiB leaf, NextLevel-7 8 KiB page, read-only page, level-skipped 2 MiB)
/// are listed under the device.
#[test]
fn device_table_and_v1_mappings_from_a_snapshot() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM, true, true));
    let mut blocked = DeviceTableEntry::blocking(9);
    blocked.set_bit(bits::SA, true);
    r.dte(DEV2, blocked);
    let l = r.load("amd.elf");
    let u = unit(&l);
    assert_eq!(
        (u.name.as_str(), u.base, u.devtab()),
        ("iommu0", BASE, PhysAddr(DEVTAB))
    );
    assert_eq!(u.devtab_entries(), 128);
    assert_eq!(u.entries.len(), 2);
    assert_eq!(u.entries[0].handling, Handling::V1(4));
    assert_eq!(u.entries[1].handling, Handling::Blocked);
    let t = text(&l, OutputFormat::Text, &Filter::default());
    for want in [
        "unit iommu0: AMD-Vi, registers at 0xfed80000",
        "DevTabBase=0x100000 Size=0",
        "IommuEn=1 EventLogEn=1",
        "0000:00:02.0  no pasid  DeviceID 0x0010  DomainID 0x0007  v1 Mode 4 (4-level) table at 0x300000, IR IW",
        "0000:00:03.0  no pasid  DeviceID 0x0018  DomainID 0x0009  blocked: TV=1 Mode 0 IR=IW=0 (IO_PAGE_FAULT 0x2)  FPD",
        "0x0000000000004000-0x0000000000005fff  0x0000000000900000-0x0000000000901fff          0x2000  rw-  8K",
        "0x0000000000008000-0x0000000000008fff  0x0000000000a00000-0x0000000000a00fff          0x1000  r--  4K",
        "0x0000000000200000-0x00000000003fffff  0x0000000000800000-0x00000000009fffff        0x200000  rw-  2M",
        "0x0000008000000000-0x00000080001fffff  0x0000000000c00000-0x0000000000dfffff        0x200000  rw-  2M",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    let j = text(&l, OutputFormat::Json, &Filter::default());
    for want in [
        "\"schema\": \"iommu-inspect/dump/v2\"",
        "\"kind\": \"amdvi\"",
        "{\"name\": \"DEV_TAB_BASE\", \"offset\": \"0x0\", \"width\": 8, \"value\": \"0x100000\", \"fields\": {\"DevTabBase\": 1048576, \"Size\": 0}}",
        "\"device_table\": \"0x100000\"",
        "\"device_id\": \"0x10\"",
        "\"Mode\": 4, \"PageTableRootPtr\": \"0x300000\", \"IR\": true, \"IW\": true, \"DomainID\": \"0x7\"",
        "\"SA\": true",
        "\"format\": \"v1\",\n          \"root\": \"0x300000\",\n          \"levels\": 4,",
    ] {
        assert!(j.contains(want), "missing {want:?} in:\n{j}");
    }
}

/// `walk` ends as the model ends the same DMA: translated to the same place, or the
/// same event code (IO_PAGE_FAULT for a missing page, a read-only page written, a
/// blocking DTE; ILLEGAL_DEV_TABLE_ENTRY for reserved bits and a PASID on a GV=0 DTE;
/// PAGE_TAB_HARDWARE_ERROR for a table outside memory; target abort for TV=0).
#[test]
fn walk_matches_the_model_request_by_request() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM, true, true));
    r.dte(DEV2, DeviceTableEntry::blocking(9));
    // (DeviceID, IOVA, write, PA, event code)
    type Case = (u16, u64, bool, Option<u64>, Option<u8>);
    let cases: Vec<Case> = vec![
        (DEV, 0x20_1234, true, Some(0x80_1234), None),
        (DEV, 0x5010, false, Some(0x90_1010), None),
        (DEV, 0x8010, false, Some(0xa0_0010), None),
        (DEV, 0x8010, true, None, Some(2)),
        (DEV, 0x6000, false, None, Some(2)),
        (DEV, 0x80_0000_1000, true, Some(0xc0_1000), None),
        (DEV2, 0x1000, false, None, Some(2)),
    ];
    let l = r.load("walk.elf");
    let u = unit(&l);
    for (dev, iova, write, pa, code) in cases {
        let w =
            inspector::arch::ArchUnit::translate(u, &l.image, rid(dev), None, Iova(iova), write)
                .unwrap();
        match (&w.end, pa, code) {
            (WalkEnd::Mapped { pa: got, did, .. }, Some(want), None) => {
                assert_eq!(
                    (got.0, *did),
                    (want, Some(if dev == DEV { DOM } else { 9 }))
                )
            }
            (WalkEnd::Fault { code: got, .. }, None, Some(want)) => assert_eq!(*got, want),
            other => panic!("{dev:#x} {iova:#x}: {other:?}"),
        }
        let model = r.dma(dev, iova, write);
        assert_eq!(
            model,
            code.map(u32::from),
            "model vs walk at {dev:#x} {iova:#x}"
        );
    }
    // The events the model logged for those DMAs are listed as pending in a new
    // snapshot: three IO_PAGE_FAULTs of DeviceID 0x10 and 0x18 (the write to the
    // read-only page with RW, PR and PE).
    let after = r.load("after.elf");
    let ev = &unit(&after).events;
    let got: Vec<(u8, &str)> = ev.pending.iter().map(|e| (e.code, e.name)).collect();
    assert_eq!(got, [(2, "IO_PAGE_FAULT"); 3], "{ev:?}");
    assert!(
        ev.pending[0]
            .detail
            .starts_with("DeviceID 0x0010 PASID/DomainID 0x7 flags 0x070 address 0x8010"),
        "{ev:?}"
    );
    let t = text(&after, OutputFormat::Text, &Filter::default());
    assert!(
        t.contains("event log at 0x210000 (EventLen 8), head 0x0, tail 0x30: 3 pending"),
        "{t}"
    );
    // The steps name the DTE and each level read.
    let w = inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV), None, Iova(0x5010), false)
        .unwrap();
    let what: Vec<&str> = w.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "DTE of DeviceID 0x0010",
            "level 4 entry [0x0]",
            "level 3 entry [0x0]",
            "level 2 entry [0x0]",
            "level 1 entry [0x5]"
        ]
    );
    assert_eq!(w.steps[0].addr, PhysAddr(DEVTAB + 0x10 * 32));
}

/// Malformed DTEs and tables: the walk ends with the model's event code, and the scan
/// reports a typed problem naming the unit, the DeviceID, the address and what is
/// wrong.
#[test]
fn malformed_dtes_and_tables_are_typed_problems_and_the_model_agrees() {
    let mut r = rig();
    // Reserved bit 2 set.
    let mut bad = DeviceTableEntry::host(0x30_0000, 4, DOM, true, true);
    bad.set_bit(2, true);
    v1_tables(&mut r);
    r.dte(DEV, bad);
    // A root table outside RAM (64 MiB).
    r.dte(DEV2, DeviceTableEntry::host(0x4000_0000, 3, 5, true, true));
    let l = r.load("bad.elf");
    let u = unit(&l);
    let p = &u.problems[0];
    assert_eq!(
        (p.unit.as_str(), p.requester.as_str(), p.addr),
        ("iommu0", "DeviceID 0x0010", PhysAddr(DEVTAB + 0x10 * 32))
    );
    assert!(p.what.contains("reserved bits"), "{p:?}");
    let tp = u.table_problems(&l.image);
    assert_eq!(tp.len(), 1, "{tp:?}");
    assert_eq!(
        (tp[0].requester.as_str(), tp[0].addr),
        ("DeviceID 0x0018", PhysAddr(0x4000_0000))
    );
    assert!(
        tp[0]
            .to_string()
            .starts_with("iommu0: DeviceID 0x0018 at 0x40000000: "),
        "{}",
        tp[0]
    );
    for (dev, code) in [(DEV, 1u8), (DEV2, 4)] {
        let w =
            inspector::arch::ArchUnit::translate(u, &l.image, rid(dev), None, Iova(0x1000), false)
                .unwrap();
        assert!(
            matches!(w.end, WalkEnd::Fault { code: c, .. } if c == code),
            "{w:?}"
        );
        assert_eq!(r.dma(dev, 0x1000, false), Some(code as u32));
    }
    // V=1, TV=0: target abort without an event; a PASID on a GV=0 DTE: illegal (a
    // fresh unit: the model caches the DTEs used above until invalidated).
    let mut r = rig();
    r.dte(DEV2, DeviceTableEntry::host(0x30_0000, 4, DOM, true, true));
    let mut abort = DeviceTableEntry::default();
    abort.set_bit(bits::V, true);
    r.dte(DEV, abort);
    let l = r.load("abort.elf");
    let u = unit(&l);
    assert_eq!(u.entries[0].handling, Handling::Abort);
    let w =
        inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV), None, Iova(0), true).unwrap();
    assert!(
        matches!(
            w.end,
            WalkEnd::Fault {
                code: 0,
                fpd: true,
                ..
            }
        ),
        "{w:?}"
    );
    assert_eq!(r.dma(DEV, 0, true), Some(0));
    let w = inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV2), Some(3), Iova(0), true)
        .unwrap();
    assert!(matches!(w.end, WalkEnd::Fault { code: 1, .. }), "{w:?}");
}

/// A loop of table pointers (a level-3 PDE pointing back at the level-4 root as a
/// level-2 table) is a typed problem naming the DeviceID and the entry; the dump ends.
#[test]
fn a_loop_of_table_pointers_is_reported_not_followed() {
    let mut r = rig();
    for t in [0x30_0000, 0x30_1000] {
        r.table(t);
    }
    r.mem(0x30_0000, v1_pde(0x30_1000, 3));
    r.mem(0x30_1000, v1_pde(0x30_0000, 2));
    r.dte(DEV, DeviceTableEntry::host(0x30_0000, 4, DOM, true, true));
    let l = r.load("loop.elf");
    let u = unit(&l);
    let tp = u.table_problems(&l.image);
    assert!(
        tp.iter().any(|p| p.requester == "DeviceID 0x0010"
            && p.addr == PhysAddr(0x30_1000)
            && p.what.contains("cycle")),
        "{tp:?}"
    );
    let t = text(&l, OutputFormat::Text, &Filter::default());
    assert!(t.contains("!! "), "{t}");
}

/// v2: a DTE with GV=1, GLX 0 (one-level GCR3 table) and GIoV; PASID 0 and 5 each have
/// a 4-level guest table. Both are listed (PASID 0 as serving requests without PASID),
/// and walks through the GCR3 table match the model.
#[test]
fn v2_entries_through_the_gcr3_table() {
    let mut r = rig();
    let gcr3 = 0x40_0000;
    r.table(gcr3);
    let mut roots = Vec::new();
    for (pasid, base, pa) in [
        (0u64, 0x41_0000u64, 0xb0_0000u64),
        (5, 0x42_0000, 0xb1_0000),
    ] {
        for i in 0..4 {
            r.table(base + i * 0x1000);
        }
        // x86-64 tables: P | R/W | U/S | A, leaf adds D.
        for i in 0..3 {
            r.mem(base + i * 0x1000, (base + (i + 1) * 0x1000) | 0x27);
        }
        r.mem(base + 3 * 0x1000 + 8, pa | 0x67);
        r.mem(gcr3 + pasid * 8, base | 1);
        roots.push(base);
    }
    let mut d = DeviceTableEntry::blocking(DOM);
    d.set_bit(bits::IR, true);
    d.set_bit(bits::IW, true);
    d.set_guest(gcr3, Glx::One, true, GuestPagingMode::Level4);
    r.dte(DEV, d);
    let l = r.load("v2.elf");
    let u = unit(&l);
    let v2: Vec<(Option<u32>, &Handling)> = u
        .entries
        .iter()
        .filter(|e| e.devid == DEV)
        .map(|e| (e.pasid, &e.handling))
        .collect();
    assert_eq!(
        v2,
        [(Some(0), &Handling::V2(4)), (Some(5), &Handling::V2(4))]
    );
    let t = text(&l, OutputFormat::Text, &Filter::default());
    assert!(
        t.contains("0000:00:02.0  pasid 0x0 (RID_PASID)  DeviceID 0x0010"),
        "{t}"
    );
    assert!(
        t.contains("0x0000000000001000-0x0000000000001fff  0x0000000000b10000-0x0000000000b10fff"),
        "{t}"
    );
    // Without PASID (GIoV: PASID 0's tables).
    let w = inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV), None, Iova(0x1008), true)
        .unwrap();
    assert!(
        matches!(w.end, WalkEnd::Mapped { pa, .. } if pa == PhysAddr(0xb0_0008)),
        "{w:?}"
    );
    assert_eq!(w.steps[1].what, "level 0 GCR3 entry [0x0]");
    assert_eq!(r.dma(DEV, 0x1008, true), None);
    // PASID 5 through its own tables (the inspector; the model's agents have no PASID).
    let w =
        inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV), Some(5), Iova(0x1008), false)
            .unwrap();
    assert!(
        matches!(w.end, WalkEnd::Mapped { pa, .. } if pa == PhysAddr(0xb1_0008)),
        "{w:?}"
    );
    // PASID 6 has no GCR3 entry: IO_PAGE_FAULT.
    let w =
        inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV), Some(6), Iova(0x1008), false)
            .unwrap();
    assert!(matches!(w.end, WalkEnd::Fault { code: 2, .. }), "{w:?}");
}

/// The exclusion range (ExEn with Allow): addresses inside it go out untranslated for
/// every device, as the model forwards them; outside it the tables apply.
#[test]
fn the_exclusion_range_is_untranslated() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM, true, true));
    r.table(0x60_0000);
    r.w(
        regs::EXCL_BASE,
        0x60_0000 | field_value(regs::EXCL_BASE::EX_EN, 1) | field_value(regs::EXCL_BASE::ALLOW, 1),
    );
    r.w(regs::EXCL_LIMIT, 0x60_0000);
    let l = r.load("excl.elf");
    let u = unit(&l);
    let t = text(&l, OutputFormat::Text, &Filter::default());
    assert!(t.contains("ExEn=1 Allow=1 ExclRangeBase=0x600000"), "{t}");
    for (iova, want) in [
        (0x60_0010u64, Some(0x60_0010u64)),
        (0x20_0010, Some(0x80_0010)),
    ] {
        let w = inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV), None, Iova(iova), true)
            .unwrap();
        let got = match w.end {
            WalkEnd::Untranslated { pa } => Some((pa.0, true)),
            WalkEnd::Mapped { pa, .. } => Some((pa.0, false)),
            _ => None,
        };
        assert_eq!(got, want.map(|p| (p, iova == 0x60_0010)), "{w:?}");
        assert_eq!(r.dma(DEV, iova, true), None);
    }
    // A DTE with Mode 5 on this 4-level unit (EFR.HATS = 0) is illegal, but the model
    // forwards excluded addresses before it looks at Mode: so does walk.
    r.dte(DEV2, DeviceTableEntry::host(root, 5, DOM, true, true));
    let l = r.load("excl5.elf");
    let u = unit(&l);
    for (iova, code) in [(0x60_0010u64, None), (0x1000, Some(1u8))] {
        let w =
            inspector::arch::ArchUnit::translate(u, &l.image, rid(DEV2), None, Iova(iova), true)
                .unwrap();
        match (&w.end, code) {
            (WalkEnd::Untranslated { .. }, None) => {}
            (WalkEnd::Fault { code: c, .. }, Some(want)) => assert_eq!(*c, want),
            other => panic!("{iova:#x}: {other:?}"),
        }
        assert_eq!(r.dma(DEV2, iova, true), code.map(u32::from));
    }
}

/// With SME the C-bit (here bit 47) is set in the DTE's root pointer, every PDE and
/// every PTE (Linux `__sme_set`); `--amdvi-c-bit 47` strips it from each address (the
/// model has no C-bit: the inspector alone is checked). Without the option the root
/// lies beyond memory: PAGE_TAB_HARDWARE_ERROR.
#[test]
fn the_sme_c_bit_is_stripped_from_every_address() {
    let mut r = rig();
    let c = 1u64 << 47;
    for t in [0x30_0000, 0x30_1000, 0x30_2000] {
        r.table(t);
    }
    r.mem(0x30_0000, v1_pde(0x30_1000 | c, 2));
    r.mem(0x30_1000, v1_pde(0x30_2000 | c, 1));
    r.mem(0x30_2000 + 8, 0xa0_0000 | c | pte::PR | pte::IR | pte::IW);
    r.dte(
        DEV,
        DeviceTableEntry::host(0x30_0000 | c, 3, DOM, true, true),
    );
    let img = || r.image("sme.elf");
    let load_c = |bit| {
        let amdvi = AmdViOverride {
            c_bit: Some(bit),
            ..AmdViOverride::default()
        };
        Loaded::from_image(
            img(),
            &LoadOptions {
                amdvi,
                ..LoadOptions::default()
            },
        )
    };
    let with = load_c(47).unwrap();
    let u = unit(&with);
    let w =
        inspector::arch::ArchUnit::translate(u, &with.image, rid(DEV), None, Iova(0x1010), true)
            .unwrap();
    assert!(
        matches!(w.end, WalkEnd::Mapped { pa, .. } if pa == PhysAddr(0xa0_0010)),
        "{w:?}"
    );
    let t = text(&with, OutputFormat::Text, &Filter::default());
    assert!(
        t.contains("0x0000000000001000-0x0000000000001fff  0x0000000000a00000-0x0000000000a00fff"),
        "{t}"
    );
    let without = Loaded::from_image(img(), &LoadOptions::default()).unwrap();
    let w = inspector::arch::ArchUnit::translate(
        unit(&without),
        &without.image,
        rid(DEV),
        None,
        Iova(0x1010),
        true,
    )
    .unwrap();
    assert!(matches!(w.end, WalkEnd::Fault { code: 4, .. }), "{w:?}");
    // A C-bit that is not an address bit is a usage error.
    let err = load_c(60).unwrap_err();
    assert!(
        matches!(&err, InspectError::Usage(m) if m.contains("C-bit 60")),
        "{err:?}"
    );
}

/// `diff` of two snapshots: a changed PTE shows as a changed mapping, a changed DTE
/// (another DomainID and root) as a changed device; the same state is no difference.
#[test]
fn diff_detects_a_changed_pte_and_a_changed_dte() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM, true, true));
    let a = r.load("before.elf");
    assert!(diff(&a, &r.load("same.elf"), false).same());
    r.mem(0x30_3000 + 8 * 8, 0xa8_0000 | pte::PR | pte::IR);
    let b = r.load("pte.elf");
    let d = diff(&a, &b, false);
    assert!(!d.same());
    let mut out = Vec::new();
    inspector::diff::write_text(&d, "before", "after", &mut out).unwrap();
    let t = String::from_utf8(out).unwrap();
    assert!(t.contains("device 0000:00:02.0 (iommu0)"), "{t}");
    assert!(t.contains("pa 0xa80000"), "{t}");
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM + 1, true, false));
    let c = r.load("dte.elf");
    let d = diff(&b, &c, false);
    let mut out = Vec::new();
    inspector::diff::write_text(&d, "b", "c", &mut out).unwrap();
    let t = String::from_utf8(out).unwrap();
    assert!(t.contains("0x0007") && t.contains("0x0008"), "{t}");
    assert!(t.contains("r--"), "IW cleared shows in the mappings:\n{t}");
}

/// `verify` of an image with an AMD-Vi unit but no KHO blob and no record: the typed
/// error saying where the handover state could come from (the checks on real handover
/// images are in `amdvi_verify.rs`).
#[test]
fn verify_without_a_kho_blob_is_a_typed_error() {
    let r = rig();
    let l = r.load("v.elf");
    let e = inspector::verify::verify(
        &l,
        &inspector::verify::VerifyOptions::default(),
        &mut inspector::progress::Progress::hidden(),
    )
    .unwrap_err();
    assert!(matches!(e, InspectError::KhoBlob(_)), "{e}");
    assert!(e.to_string().contains("--record FILE"), "{e}");
}

/// The first `len` bytes of the rig's memory as a raw image.
fn raw_image(r: &Rig, len: usize) -> Vec<u8> {
    plugin::raw_image(&r.image("raw-source.elf"), len)
}

fn raw_load(bytes: Vec<u8>, ov: AmdViOverride) -> Result<Loaded, InspectError> {
    plugin::raw_load(
        bytes,
        LoadOptions {
            amdvi: ov,
            ..LoadOptions::default()
        },
    )
}

/// A raw memory image with the device table given on the command line (address and
/// Size, or the register value form); too short an image is a typed error naming the
/// unit, the device table and the first address missing.
#[test]
fn raw_images_with_the_device_table_on_the_command_line() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM, true, true));
    let bytes = raw_image(&r, 0x100_0000);
    let l = raw_load(
        bytes.clone(),
        AmdViOverride {
            devtab: Some(DEVTAB),
            devtab_size: Some(0),
            ..AmdViOverride::default()
        },
    )
    .unwrap();
    let u = unit(&l);
    assert!(u.assumed);
    assert_eq!(u.entries[0].handling, Handling::V1(4));
    // The register value form: the same unit.
    let l2 = raw_load(
        bytes.clone(),
        AmdViOverride {
            devtab: Some(DEVTAB | 1),
            ..AmdViOverride::default()
        },
    )
    .unwrap();
    assert_eq!(unit(&l2).devtab_entries(), 256);
    // The default Size (0x1ff, 2 MiB) runs past a 1.5 MiB image.
    let err = raw_load(
        bytes[..0x18_0000].to_vec(),
        AmdViOverride {
            devtab: Some(DEVTAB),
            ..AmdViOverride::default()
        },
    )
    .unwrap_err();
    match &err {
        InspectError::Structure(p) => {
            assert_eq!(
                (p.unit.as_str(), p.requester.as_str()),
                ("iommu0", "device table")
            );
            assert_eq!(p.addr, PhysAddr(0x18_0000));
            assert!(p.what.contains("Size 0x1ff"), "{p}");
        }
        e => panic!("{e:?}"),
    }
    // Bits outside DevTabBase and Size: a usage error.
    assert!(matches!(
        raw_load(
            bytes,
            AmdViOverride {
                devtab: Some(DEVTAB | 0x800),
                ..AmdViOverride::default()
            }
        ),
        Err(InspectError::Usage(_))
    ));
}

/// Through the binary: dump of a raw image with `--amdvi-devtab`, the Linux `devtbl`
/// layout, `walk --devid`, and the error of an image too short.
#[test]
fn cli_dump_linux_walk_and_errors() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(DEV, DeviceTableEntry::host(root, 4, DOM, true, true));
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("mem.raw");
    std::fs::write(&raw, raw_image(&r, 0x100_0000)).unwrap();
    let elf = dir.path().join("amd.elf");
    std::fs::write(&elf, emulator::snapshot::to_bytes(&r.m)).unwrap();
    let raw_s = raw.to_str().unwrap();
    let (code, out, err) = plugin::cli(&[
        "dump",
        raw_s,
        "--base",
        "0",
        "--amdvi-devtab",
        "0x100000",
        "--amdvi-devtab-size",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(registers assumed from the command line)"),
        "{out}"
    );
    assert!(
        out.contains("DeviceID 0x0010  DomainID 0x0007  v1 Mode 4"),
        "{out}"
    );
    let (code, out, err) = plugin::cli(&["dump", elf.to_str().unwrap(), "--format", "linux"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "DeviceId             QWORD[3]         QWORD[2]         QWORD[1]         QWORD[0] iommu\n\
         0000:00:02.0 0000000000000000 0000000000000000 0000000000000007 6000000000300803 iommu0\n\
         0000:00:03.0 0000000000000000 0000000000000000 0000000000000000 0000000000000000 iommu0\n"
    );
    let (code, out, err) = plugin::cli(&[
        "walk",
        "0x5010",
        elf.to_str().unwrap(),
        "--devid",
        "0x10",
        "--write",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("=> translates to 0x901010 (rw-, 8K page, domain 0x0007)"),
        "{out}"
    );
    let (code, out, _) = plugin::cli(&[
        "walk",
        "0x6000",
        elf.to_str().unwrap(),
        "--devid",
        "0x10",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"fault\": 2, \"reason\": \"IO_PAGE_FAULT\""),
        "{out}"
    );
    // An ELF core read with the device table on the command line: the snapshot's
    // AMD-Vi unit is replaced by the assumed one.
    let (code, out, err) = plugin::cli(&[
        "dump",
        elf.to_str().unwrap(),
        "--amdvi-devtab",
        "0x100000",
        "--amdvi-devtab-size",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "unit iommu0: AMD-Vi, registers at 0x0 (registers assumed from the command line)"
        ) && out.contains("1 AMD-Vi unit)"),
        "{out}"
    );
    // verify: exit 2, an empty record file is not an `iommu-amdvi-v1` record.
    let empty = dir.path().join("record.bin");
    std::fs::write(&empty, b"").unwrap();
    let (code, _, err) = plugin::cli(&[
        "verify",
        elf.to_str().unwrap(),
        "--record",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("record payload offset 0x0"), "{err}");
    let short = dir.path().join("short.raw");
    std::fs::write(&short, vec![0u8; 0x1000]).unwrap();
    let (code, _, err) = plugin::cli(&[
        "dump",
        short.to_str().unwrap(),
        "--base",
        "0",
        "--amdvi-devtab",
        "0x800",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--amdvi-devtab 0x800: bits outside"), "{err}");
    let (code, _, err) = plugin::cli(&[
        "dump",
        short.to_str().unwrap(),
        "--base",
        "0",
        "--amdvi-devtab",
        "0x0",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("iommu0: device table at 0x1000: the device table at 0x0 (Size 0x1ff"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random bytes as a raw image with a one-page device table at 0: loading, the text
    /// and JSON dumps, and walks of a few DeviceIDs never panic nor loop.
    #[test]
    fn random_images_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0x1000..0x6000),
                                 dev in 0u16..128, iova in any::<u64>(), pasid in proptest::option::of(0u32..0x400)) {
        let Ok(l) = raw_load(bytes, AmdViOverride { devtab: Some(0), devtab_size: Some(0), ..AmdViOverride::default() }) else {
            return Ok(());
        };
        let _ = text(&l, OutputFormat::Text, &Filter::default());
        let _ = text(&l, OutputFormat::Json, &Filter::default());
        let _ = text(&l, OutputFormat::Linux, &Filter::default());
        let u = unit(&l);
        let _ = u.table_problems(&l.image);
        let _ = inspector::arch::ArchUnit::translate(u, &l.image, rid(dev), pasid, Iova(iova), true);
    }

    /// Random structures whose pointers land in a small image (device table at page 0,
    /// every Size, EFR and Control): loading, dumps, walks with and without PASID never
    /// panic nor loop, and the image compares the same as itself.
    #[test]
    fn random_structures_never_panic(words in proptest::collection::vec(plugin::word(), 64..1600),
                                     efr in any::<u64>(), control in any::<u64>(), size in 0u64..4,
                                     dev in 0u16..128, iova in any::<u64>(), pasid in proptest::option::of(0u32..0x40)) {
        let ov = AmdViOverride { devtab: Some(0), devtab_size: Some(size), efr: Some(efr), control: Some(control), ..AmdViOverride::default() };
        let Ok(l) = raw_load(plugin::words_image(&words), ov) else {
            return Ok(());
        };
        let _ = text(&l, OutputFormat::Text, &Filter::default());
        let _ = text(&l, OutputFormat::Json, &Filter::default());
        let u = unit(&l);
        let _ = u.table_problems(&l.image);
        for p in [None, pasid] {
            let _ = inspector::arch::ArchUnit::translate(u, &l.image, rid(dev), p, Iova(iova & 0xffff_ffff), false);
        }
        let again = raw_load(plugin::words_image(&words), ov).unwrap();
        prop_assert!(diff(&l, &again, false).same());
    }
}
