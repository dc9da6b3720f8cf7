//! End-to-end live-update handover of an AMD-Vi unit on the emulator, with v1 (host)
//! and v2 (guest, through a GCR3 table) domains.
//!
//! The old kernel's driver maps 4K/2M/1G pages in two preserved domains with three
//! preserved devices (and one more domain and two devices that are not preserved),
//! prepares, finalises the KHO blob, freezes, and the machine kexecs with nothing but
//! the blob's address. The new kernel adopts the unit, verifies and finishes; DMA is
//! checked byte for byte between every two steps. Negative cases: stale translations
//! when an invalidation is skipped, a table page left out of the pinned set, a DTE,
//! a page table or the record corrupted across the kexec, a record of another version;
//! each refused by name, the affected devices blocked (their DMA faults), never passed
//! through. Tables written by hand (level skipping, NextLevel-7 pages) are adopted and
//! translated. A property test plays random handovers.

mod amdvi_rig;

use amdvi::driver::{DeviceState, DomainKind, ErrorKind, PagePool, Unit};
use amdvi::handover::record::{Record, RecordDevice, RecordDomain, COMPATIBLE};
use amdvi::handover::{
    client_name, AdoptFailure, AdoptReport, HandoverErrorKind, KhoOut, Selection,
};
use amdvi::hw::dte::DeviceTableEntry;
use amdvi::hw::pte::{sized_page_addr, v1_pde, IR, IW, PR};
use amdvi::hw::regs;
use amdvi_rig::{rw, unit_config, Rig, BASE, LAST_DEVICE_ID, POOL};
use emulator::dma::{DmaAgent, DmaChecker, ExpectedFailure, MappingSpec, Workload};
use emulator::model::Access;
use iommu_core::kho::record::{encode_record, RecordError, RECORD_HEADER_SIZE};
use iommu_core::kho::{read_handover, read_preserved, KhoError};
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Mapping, Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use proptest::prelude::*;

const G: u64 = 1 << 30;
const M2: u64 = 2 << 20;
const K4: u64 = 4096;

// Preserved: A1, A2 in domain A; B1 in domain B.
const A1: RequesterId = RequesterId::new(0, 0, 3, 0);
const A2: RequesterId = RequesterId::new(0, 0, 3, 1);
const B1: RequesterId = RequesterId::new(0, 1, 0, 0);
// Not preserved: E in domain C, F in domain A.
const E: RequesterId = RequesterId::new(0, 2, 0, 0);
const F: RequesterId = RequesterId::new(0, 0, 5, 0);
const PRESERVED: [RequesterId; 3] = [A1, A2, B1];
const ALL: [RequesterId; 5] = [A1, A2, B1, E, F];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V1,
    V2,
}

/// (IOVA, PA, length, page size) of the mappings of domains A, B and C.
fn layout(domain: usize) -> Vec<(u64, u64, u64, PageSize)> {
    match domain {
        0 => vec![
            (0, 0x4000_0000, 16 * K4, PageSize::SIZE_4K),
            (0x20_0000, 0x4020_0000, 2 * M2, PageSize::SIZE_2M),
            (G, 0x8000_0000, G, PageSize::SIZE_1G),
        ],
        1 => vec![
            (0, 0x1_0000_0000, 8 * K4, PageSize::SIZE_4K),
            (0x20_0000, 0x1_0020_0000, M2, PageSize::SIZE_2M),
        ],
        _ => vec![(0, 0x1_4000_0000, 4 * K4, PageSize::SIZE_4K)],
    }
}

fn specs(domain: usize) -> Vec<MappingSpec> {
    layout(domain)
        .into_iter()
        .map(|(i, p, l, _)| rw(i, p, l))
        .collect()
}

fn domain_of(rid: RequesterId) -> usize {
    match rid {
        A1 | A2 | F => 0,
        B1 => 1,
        _ => 2,
    }
}

struct World {
    rig: Rig,
    unit: Unit,
    doms: Vec<DomainId>,
    guest: PageSet,
    checker: DmaChecker,
    seed: u64,
}

impl World {
    fn kind(unit: &Unit, mode: Mode) -> DomainKind {
        match mode {
            Mode::V1 => unit.default_v1(),
            Mode::V2 => unit.default_v2(),
        }
    }

    fn new(mode: Mode) -> World {
        let mut rig = Rig::new(None);
        let mut unit = rig.hw(|hw| Unit::init(hw, &unit_config())).expect("init");
        let mut doms = Vec::new();
        let mut guest = PageSet::new();
        for d in 0..3 {
            let kind = Self::kind(&unit, mode);
            let did = rig.hw(|hw| unit.create_domain(hw, kind)).expect("domain");
            for (iova, pa, len, ps) in layout(d) {
                rig.hw(|hw| unit.map(hw, did, Iova(iova), PhysAddr(pa), len, ps, Perms::RW))
                    .expect("map");
                if d < 2 {
                    guest.insert_range(PhysAddr(pa), len / K4).unwrap();
                }
            }
            doms.push(did);
        }
        for rid in ALL {
            rig.add_device(rid);
            let did = doms[domain_of(rid)];
            rig.hw(|hw| unit.attach(hw, rid.sid(), did))
                .expect("attach");
        }
        World {
            rig,
            unit,
            doms,
            guest,
            checker: DmaChecker::new(),
            seed: 1,
        }
    }

    /// DMA of `devs` for `steps` steps over their mappings, every byte checked.
    fn dma(&mut self, devs: &[RequesterId], steps: u32, what: &str) -> u64 {
        let before = self.checker.stats().transfers;
        for &rid in devs {
            self.seed += 1;
            let mut w = Workload::new(DmaAgent::new(rid), specs(domain_of(rid)), self.seed)
                .with_max_transfer(512);
            for _ in 0..steps {
                assert!(
                    w.step(&mut self.rig.machine, &mut self.checker),
                    "{what}: DMA of {rid} not clean: {}",
                    self.checker.report()
                );
            }
        }
        self.checker.stats().transfers - before
    }

    /// The device's DMA faults (it is blocked), and nothing lands.
    fn expect_blocked(&mut self, rid: RequesterId) {
        let m = specs(domain_of(rid))[0];
        assert!(
            self.checker.expect_blocked_write(
                &mut self.rig.machine,
                &DmaAgent::new(rid),
                m.iova,
                64,
                m.pa,
                ExpectedFailure::Fault { code: None }
            ),
            "{rid} is not blocked: {}",
            self.checker.report()
        );
        assert!(self.checker.expect_failure(
            &mut self.rig.machine,
            &DmaAgent::new(rid),
            Access::Read,
            m.iova,
            8,
            ExpectedFailure::Fault { code: None }
        ));
    }

    fn walks(&self, unit: &Unit, n: usize) -> Vec<Vec<Mapping>> {
        let mem = self.rig.machine.mem();
        self.doms[..n]
            .iter()
            .map(|&d| {
                unit.walk_domain(&*mem, d, &WalkLimits::default())
                    .unwrap()
                    .unwrap()
                    .mappings
            })
            .collect()
    }

    /// The first table at `level` of domain `d`'s tree.
    fn table_at(&self, d: usize, level: u8) -> PhysAddr {
        let mem = self.rig.machine.mem();
        let wk = self
            .unit
            .walk_domain(&*mem, self.doms[d], &WalkLimits::default())
            .unwrap()
            .unwrap();
        wk.tables.iter().find(|t| t.level == level).unwrap().addr
    }

    fn selection(&self) -> Selection {
        Selection {
            domains: self.doms[..2].to_vec(),
            devices: PRESERVED.iter().map(|r| r.sid()).collect(),
        }
    }

    /// Prepare, finalise, freeze, kexec: returns the blob.
    fn through_kexec(&mut self) -> PhysAddr {
        let sel = self.selection();
        let mut kho = KhoOut::new();
        kho.preserve(&self.guest);
        let unit = &mut self.unit;
        self.rig
            .hw(|hw| unit.prepare(hw, &mut kho, &sel))
            .expect("prepare");
        let blob = {
            let (_, mut mem) = self.rig.machine.driver_access(BASE).unwrap();
            kho.finalize(&mut mem, &mut self.rig.pool)
                .expect("finalize")
        };
        let unit = &mut self.unit;
        self.rig.hw(|hw| unit.freeze(hw)).expect("freeze");
        self.rig.machine.kexec(blob).expect("kexec");
        blob
    }

    /// The new kernel's pool (off the preserved pages) and adopt.
    #[allow(clippy::result_large_err)]
    fn adopt(&mut self, blob: PhysAddr) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        let preserved = read_preserved(&*self.rig.machine.mem(), blob).expect("preserved");
        self.rig.pool = PagePool::new(POOL.0, POOL.1);
        self.rig.pool.exclude(&preserved);
        self.rig
            .hw(|hw| Unit::adopt_with_preserved(hw, &unit_config(), blob, preserved))
    }

    fn record_pa(&self, blob: PhysAddr) -> PhysAddr {
        let h = read_handover(&*self.rig.machine.mem(), blob).unwrap();
        h.client(&client_name(BASE)).unwrap()
    }

    fn payload(&self, rec: PhysAddr) -> Vec<u8> {
        let mem = self.rig.machine.mem();
        let mut len = [0u8; 8];
        mem.read(PhysAddr(rec.0 + 0x10), &mut len).unwrap();
        let mut p = vec![0u8; u64::from_le_bytes(len) as usize];
        mem.read(PhysAddr(rec.0 + RECORD_HEADER_SIZE as u64), &mut p)
            .unwrap();
        p
    }

    /// Rewrites the record at `rec` as `compatible` with `payload` (checksum valid).
    fn rewrite_record(&mut self, rec: PhysAddr, compatible: &str, payload: &[u8]) {
        let bytes = encode_record(compatible, payload).unwrap();
        self.rig.machine.mem_mut().write(rec, &bytes).unwrap();
    }
}

fn full_handover(mode: Mode) {
    let mut w = World::new(mode);
    let before = w.walks(&w.unit, 2);
    assert!(w.dma(&ALL, 4, "before prepare") > 0);

    let sel = w.selection();
    let mut kho = KhoOut::new();
    kho.preserve(&w.guest);
    let unit = &mut w.unit;
    let rep = w
        .rig
        .hw(|hw| unit.prepare(hw, &mut kho, &sel))
        .expect("prepare");
    assert_eq!((rep.domains, rep.devices), (2, 3));
    assert_eq!(rep.leaves, 16 + 2 + 1 + 8 + 1);
    let devtab = w.unit.device_table_pages();
    let gcr3 = if mode == Mode::V2 { 2 } else { 0 };
    let tables: u64 = w.doms[..2]
        .iter()
        .map(|&d| w.unit.domain(d).unwrap().table_pages())
        .sum();
    assert_eq!(rep.pinned_pages, devtab + tables + gcr3, "{rep}");
    // Preserved domains are immutable.
    let d0 = w.doms[0];
    let unit = &mut w.unit;
    let e = w
        .rig
        .hw(|hw| {
            unit.map(
                hw,
                d0,
                Iova(0x80_0000),
                PhysAddr(0x4080_0000),
                K4,
                PageSize::SIZE_4K,
                Perms::RW,
            )
        })
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::DomainImmutable { .. }), "{e}");
    let blob = {
        let (_, mut mem) = w.rig.machine.driver_access(BASE).unwrap();
        kho.finalize(&mut mem, &mut w.rig.pool).expect("finalize")
    };
    w.dma(&ALL, 4, "between prepare and freeze");

    let unit = &mut w.unit;
    let fr = w.rig.hw(|hw| unit.freeze(hw)).expect("freeze");
    assert_eq!(fr.devices_blocked, 2);
    let control = w.rig.hw(|hw| hw.regs.read64(regs::CONTROL));
    assert_ne!(
        regs::CONTROL::IOMMU_EN.read(control),
        0,
        "IommuEn stays set"
    );
    w.expect_blocked(E);
    w.expect_blocked(F);
    w.dma(&PRESERVED, 4, "between freeze and kexec");

    let kr = w.rig.machine.kexec(blob).expect("kexec");
    assert!(kr.pages_poisoned > 0);
    drop(kho);
    w.dma(&PRESERVED, 4, "new kernel before adopt");
    w.expect_blocked(E);

    let (mut unit, ar) = w.adopt(blob).expect("adopt");
    assert!(ar.blocked.is_empty(), "{ar}");
    assert!(ar.refused_domains.is_empty(), "{ar}");
    assert_eq!((ar.domains, ar.devices), (2, 3));
    assert_eq!(ar.unknown_entries_blocked, 0, "{ar}");
    // The blackout reads DTEs, never page tables.
    assert!(ar.entries_read <= devtab * 128 + 8, "{ar}");
    // The command buffer and event log were re-based; the device table was not.
    let cmd = w.rig.hw(|hw| hw.regs.read64(regs::CMD_BUF_BASE));
    assert_eq!(cmd & amdvi::hw::ADDR_51_12, unit.rings().unwrap().cmd.0);
    assert_eq!(unit.device_table(), w.unit.device_table());
    // A new domain never takes a preserved DomainID (Linux kdump once dropped that
    // reservation and new domains collided with live ones).
    for did in &w.doms[..2] {
        assert!(unit.domain_id_in_use(*did));
    }
    let kind = World::kind(&unit, mode);
    for _ in 0..4 {
        let nd = w.rig.hw(|hw| unit.create_domain(hw, kind)).unwrap();
        assert!(
            !w.doms[..2].contains(&nd),
            "new domain got preserved ID {nd}"
        );
    }
    w.dma(&PRESERVED, 4, "after adopt");
    w.expect_blocked(E);
    w.expect_blocked(F);
    assert_eq!(
        before,
        w.walks(&unit, 2),
        "mappings changed across the handover"
    );

    let vr = w.rig.hw(|hw| unit.verify(hw)).expect("verify");
    assert!(vr.failures.is_empty(), "{vr}");
    assert_eq!(vr.leaves, rep.leaves);
    assert!(vr.unverified_runs.is_empty(), "{vr}");
    let fin = w.rig.hw(|hw| unit.finish(hw)).expect("finish");
    assert_eq!(fin.devices, 3);
    assert_eq!(fin.pages_kept, 0, "{fin}");
    assert!(unit.devices().all(|d| d.state == DeviceState::Live));
    w.dma(&PRESERVED, 4, "after finish");

    // Mutable again: a new page lands, an unmapped one faults.
    w.rig
        .hw(|hw| {
            unit.map(
                hw,
                d0,
                Iova(0x80_0000),
                PhysAddr(0x4080_0000),
                K4,
                PageSize::SIZE_4K,
                Perms::RW,
            )?;
            unit.unmap(hw, d0, Iova(0x20_0000), 2 * M2)
        })
        .expect("map/unmap after finish");
    assert!(w.checker.write_lands(
        &mut w.rig.machine,
        &DmaAgent::new(A1),
        Iova(0x80_0010),
        &[0xc3u8; 64],
        PhysAddr(0x4080_0010)
    ));
    assert!(w.checker.expect_failure(
        &mut w.rig.machine,
        &DmaAgent::new(A2),
        Access::Read,
        Iova(0x20_0000),
        8,
        ExpectedFailure::Fault { code: None }
    ));
    assert!(w.checker.report().is_clean(), "{}", w.checker.report());
    let diags = w.rig.diagnostics();
    assert!(diags.is_empty(), "{diags:#?}");
}

#[test]
fn handover_v1() {
    full_handover(Mode::V1);
}

#[test]
fn handover_v2() {
    full_handover(Mode::V2);
}

/// Unmap without INVALIDATE_IOMMU_PAGES: the unit still translates through its IOTLB
/// (a stale translation); the invalidation ends it.
#[test]
fn stale_translation_until_invalidate_iommu_pages() {
    for mode in [Mode::V1, Mode::V2] {
        let mut w = World::new(mode);
        let d0 = w.doms[0];
        let a = DmaAgent::new(A1);
        // Fill the IOTLB.
        assert!(w.checker.write_lands(
            &mut w.rig.machine,
            &a,
            Iova(0x1000),
            &[7; 16],
            PhysAddr(0x4000_1000)
        ));
        let unit = &mut w.unit;
        w.rig
            .hw(|hw| unit.unmap_skipping_invalidation(hw, d0, Iova(0x1000), K4))
            .unwrap();
        assert!(
            w.checker.write_lands(
                &mut w.rig.machine,
                &a,
                Iova(0x1000),
                &[8; 16],
                PhysAddr(0x4000_1000)
            ),
            "{mode:?}: the IOTLB entry must still translate (stale)"
        );
        let unit = &mut w.unit;
        w.rig.hw(|hw| unit.flush_domain(hw, d0)).unwrap();
        assert!(w.checker.expect_failure(
            &mut w.rig.machine,
            &a,
            Access::Read,
            Iova(0x1000),
            8,
            ExpectedFailure::Fault { code: None }
        ));
        // The driver's unmap invalidates by itself.
        assert!(w.checker.write_lands(
            &mut w.rig.machine,
            &a,
            Iova(0x2000),
            &[9; 16],
            PhysAddr(0x4000_2000)
        ));
        let unit = &mut w.unit;
        w.rig.hw(|hw| unit.unmap(hw, d0, Iova(0x2000), K4)).unwrap();
        assert!(w.checker.expect_failure(
            &mut w.rig.machine,
            &a,
            Access::Read,
            Iova(0x2000),
            8,
            ExpectedFailure::Fault { code: None }
        ));
    }
}

/// A DTE changed in memory without INVALIDATE_DEVTAB_ENTRY: the unit goes on with the
/// cached entry; the invalidation makes it read the new one.
#[test]
fn stale_dte_until_invalidate_devtab_entry() {
    let mut w = World::new(Mode::V1);
    let a = DmaAgent::new(A1);
    assert!(w.checker.write_lands(
        &mut w.rig.machine,
        &a,
        Iova(0x3000),
        &[1; 8],
        PhysAddr(0x4000_3000)
    ));
    let at = w.unit.dte_addr(A1.sid());
    // Make the DTE blocking behind the driver's back (qword 0 only).
    w.rig
        .machine
        .mem_mut()
        .write_u64(at, DeviceTableEntry::blocking(0).qword(0))
        .unwrap();
    assert!(
        w.checker.write_lands(
            &mut w.rig.machine,
            &a,
            Iova(0x3000),
            &[2; 8],
            PhysAddr(0x4000_3000)
        ),
        "the cached DTE must still translate"
    );
    let unit = &mut w.unit;
    w.rig.hw(|hw| unit.invalidate_dte(hw, A1.sid())).unwrap();
    w.expect_blocked(A1);
}

/// A table page swapped in behind the driver's back (a copy of a level-1 table the
/// driver never allocated) is caught by prepare's closure check, before the kexec.
#[test]
fn closure_check_catches_a_table_page_left_out() {
    for mode in [Mode::V1, Mode::V2] {
        let mut w = World::new(mode);
        let l2 = w.table_at(0, 2);
        let copy = {
            use amdvi::driver::PageAllocator;
            w.rig.pool.alloc_page().unwrap()
        };
        let mem = w.rig.machine.mem_mut();
        let pde = mem.read_u64(l2).unwrap();
        let old = PhysAddr(pde & amdvi::hw::ADDR_51_12);
        let mut buf = vec![0u8; 4096];
        mem.read(old, &mut buf).unwrap();
        mem.write(copy, &buf).unwrap();
        mem.write_u64(l2, (pde & !amdvi::hw::ADDR_51_12) | copy.0)
            .unwrap();
        let sel = w.selection();
        let mut kho = KhoOut::new();
        kho.preserve(&w.guest);
        let unit = &mut w.unit;
        let e = w.rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap_err();
        assert!(
            matches!(e.kind, HandoverErrorKind::ClosureMissing { page, count: 1 } if page == copy),
            "{mode:?}: {e}"
        );
        assert_eq!(kho.clients().count(), 0, "nothing added on error");
        assert!(w.unit.pinned_pages().is_none());
    }
}

/// A DTE corrupted across the kexec (another Mode; V = 0, which would pass DMA
/// through) blocks that device only.
#[test]
fn corrupted_dte_after_kexec_blocks_that_device_only() {
    for (mode, q0) in [(Mode::V1, None), (Mode::V2, None), (Mode::V1, Some(0u64))] {
        let mut w = World::new(mode);
        let blob = w.through_kexec();
        let at = w.unit.dte_addr(A1.sid());
        let mem = w.rig.machine.mem_mut();
        let cur = mem.read_u64(at).unwrap();
        mem.write_u64(at, q0.unwrap_or(cur ^ (1 << 10))).unwrap();
        let (mut unit, ar) = w.adopt(blob).expect("adopt");
        assert_eq!(ar.blocked.len(), 1, "{ar}");
        assert_eq!(ar.blocked[0].device_id, A1.sid());
        let msg = ar.blocked[0].error.to_string();
        assert!(
            msg.contains("DTE qword 0") && msg.contains("0x0018"),
            "{msg}"
        );
        assert_eq!(ar.devices, 2);
        w.expect_blocked(A1);
        w.dma(&[A2, B1], 4, "after adopt");
        let fin = w.rig.hw(|hw| unit.finish(hw)).expect("finish");
        assert_eq!(fin.devices, 2);
        w.expect_blocked(A1);
    }
}

/// A page-table entry corrupted across the kexec (a reserved bit) is caught by verify:
/// that domain's device is blocked, the other domain goes on.
#[test]
fn corrupted_table_after_kexec_blocks_that_domains_devices() {
    for mode in [Mode::V1, Mode::V2] {
        let mut w = World::new(mode);
        let l1 = w.table_at(1, 1);
        let blob = w.through_kexec();
        let mem = w.rig.machine.mem_mut();
        let pte = mem.read_u64(l1).unwrap();
        // v1: a reserved bit (56:52) in a PTE; v2: PS (bit 7), reserved in a PML4E,
        // in the root entry instead (v2 PTE bits 62:52 are not reserved).
        let bad = match mode {
            Mode::V1 => pte | (1 << 53),
            Mode::V2 => pte,
        };
        mem.write_u64(l1, bad).unwrap();
        if mode == Mode::V2 {
            // PS (bit 7) in the PML4E: reserved at level 4.
            let root = w.unit.domain(w.doms[1]).unwrap().root;
            let e = mem.read_u64(root).unwrap();
            mem.write_u64(root, e | (1 << 7)).unwrap();
        }
        let (mut unit, ar) = w.adopt(blob).expect("adopt");
        assert!(ar.blocked.is_empty(), "{ar}");
        let vr = w.rig.hw(|hw| unit.verify(hw)).expect("verify");
        assert_eq!(vr.failures.len(), 1, "{vr}");
        assert_eq!(vr.failures[0].0, w.doms[1]);
        assert!(
            matches!(vr.failures[0].1.kind, HandoverErrorKind::Walk { .. }),
            "{vr}"
        );
        assert_eq!(vr.blocked, vec![B1.sid()]);
        w.expect_blocked(B1);
        w.dma(&[A1, A2], 4, "after verify");
    }
}

/// A record corrupted across the kexec (checksum broken, or a malformed field with a
/// valid checksum) refuses the unit: every DTE blocking, every device faults.
#[test]
fn corrupted_record_refuses_the_unit_and_blocks_every_device() {
    for tamper in 0..2 {
        let mut w = World::new(Mode::V1);
        let blob = w.through_kexec();
        let rec = w.record_pa(blob);
        let mut p = w.payload(rec);
        if tamper == 0 {
            let at = PhysAddr(rec.0 + RECORD_HEADER_SIZE as u64 + 0x40 + 2);
            w.rig.machine.mem_mut().write(at, &[9]).unwrap();
        } else {
            p[0x40 + 2] = 9; // domain kind
            w.rewrite_record(rec, COMPATIBLE, &p);
        }
        let f = w.adopt(blob).unwrap_err();
        match (tamper, &f.error.kind) {
            (
                0,
                HandoverErrorKind::Kho(KhoError::Record {
                    err: RecordError::Checksum { .. },
                    ..
                }),
            ) => {}
            (1, HandoverErrorKind::Malformed { err, .. }) => {
                assert_eq!(err.field, amdvi::record::Field::DomainKind)
            }
            _ => panic!("tamper {tamper}: {}", f.error),
        }
        assert!(f.unit.is_some());
        for rid in PRESERVED {
            w.expect_blocked(rid);
        }
        let control = w.rig.hw(|hw| hw.regs.read64(regs::CONTROL));
        assert_ne!(regs::CONTROL::IOMMU_EN.read(control), 0, "never disabled");
    }
}

/// A record of another version is refused with both versions named.
#[test]
fn record_of_another_version_is_refused_naming_both() {
    let mut w = World::new(Mode::V2);
    let blob = w.through_kexec();
    let rec = w.record_pa(blob);
    let p = w.payload(rec);
    w.rewrite_record(rec, "iommu-amdvi-v2", &p);
    let f = w.adopt(blob).unwrap_err();
    let msg = f.error.to_string();
    assert!(
        matches!(&f.error.kind, HandoverErrorKind::Kho(KhoError::Record { err: RecordError::Version { found, supported, .. }, .. })
            if found == "iommu-amdvi-v2" && supported == "iommu-amdvi-v1"),
        "{msg}"
    );
    assert!(
        msg.contains("iommu-amdvi-v2") && msg.contains("iommu-amdvi-v1"),
        "{msg}"
    );
    for rid in PRESERVED {
        w.expect_blocked(rid);
    }
}

/// A record whose Device Table Base disagrees with the live register is refused.
#[test]
fn record_with_another_device_table_base_is_refused() {
    let mut w = World::new(Mode::V1);
    let blob = w.through_kexec();
    let rec = w.record_pa(blob);
    let mut p = w.payload(rec);
    p[8] ^= 2; // Size 5 -> 7: a larger table than the register's
    w.rewrite_record(rec, COMPATIBLE, &p);
    let f = w.adopt(blob).unwrap_err();
    assert!(
        matches!(
            f.error.kind,
            HandoverErrorKind::Register {
                register: "Device Table Base",
                ..
            }
        ),
        "{}",
        f.error
    );
    w.expect_blocked(B1);
}

/// Tables written by hand, not by the driver: a level-4 PDE skipping level 3
/// (NextLevel = 2), a 2 MiB page, and a 16 KiB NextLevel-7 page replicated in four
/// PTEs. Described by a hand-made record, they are adopted, verified and translated.
#[test]
fn hand_written_level_skipping_and_next_level_7_tables_are_adopted() {
    use amdvi::driver::PageAllocator;
    const X: RequesterId = RequesterId::new(0, 0, 7, 0);
    const DID: u16 = 0x77;
    let mut rig = Rig::new(None);
    let mut unit = rig.hw(|hw| Unit::init(hw, &unit_config())).unwrap();
    rig.add_device(X);
    let [root, l2, l1] = [(); 3].map(|_| rig.pool.alloc_page().unwrap());
    let perm = PR | IR | IW;
    {
        let mem = rig.machine.mem_mut();
        for t in [root, l2, l1] {
            mem.write(t, &[0u8; 4096]).unwrap();
        }
        // Level 4, index 0 -> a level-2 table (level 3 skipped: IOVA bits 38:30 zero).
        mem.write_u64(root, v1_pde(l2.0, 2)).unwrap();
        // Level 2: index 0 -> level-1 table; index 1 -> a 2 MiB page.
        mem.write_u64(l2, v1_pde(l1.0, 1)).unwrap();
        mem.write_u64(PhysAddr(l2.0 + 8), 0x9000_0000 | perm)
            .unwrap();
        // Level 1: indices 4..8 -> one 16 KiB page at 0x9100_0000 (NextLevel 7).
        let e = sized_page_addr(0x9100_0000, 14) | (7 << 9) | perm;
        for i in 4..8 {
            mem.write_u64(PhysAddr(l1.0 + 8 * i), e).unwrap();
        }
    }
    let dte = DeviceTableEntry::host(root.0, 4, DID, true, true);
    let at = unit.dte_addr(X.sid());
    {
        let mem = rig.machine.mem_mut();
        let q = dte.qwords();
        for i in [1, 2, 3, 0] {
            mem.write_u64(PhysAddr(at.0 + 8 * i), q[i as usize])
                .unwrap();
        }
    }
    rig.hw(|hw| unit.invalidate_dte(hw, X.sid())).unwrap();
    let mut checker = DmaChecker::new();
    let a = DmaAgent::new(X);
    let check = |rig: &mut Rig, checker: &mut DmaChecker| {
        assert!(checker.write_lands(
            &mut rig.machine,
            &a,
            Iova(0x20_0040),
            &[5; 32],
            PhysAddr(0x9000_0040)
        ));
        assert!(checker.write_lands(
            &mut rig.machine,
            &a,
            Iova(0x5008),
            &[6; 32],
            PhysAddr(0x9100_1008)
        ));
        assert!(checker.expect_failure(
            &mut rig.machine,
            &a,
            Access::Read,
            Iova(0x8000),
            8,
            ExpectedFailure::Fault { code: None }
        ));
    };
    check(&mut rig, &mut checker);

    // The record, by hand.
    let (dtb, control, efr) = rig.hw(|hw| {
        (
            hw.regs.read64(regs::DEV_TAB_BASE),
            hw.regs.read64(regs::CONTROL),
            hw.regs.read64(regs::EFR),
        )
    });
    let mut pinned = PageSet::new();
    pinned
        .insert_range(unit.device_table(), unit.device_table_pages())
        .unwrap();
    for t in [root, l2, l1] {
        pinned.insert(t, 0).unwrap();
    }
    let mut runs: Vec<(PhysAddr, u64)> = Vec::new();
    for (p, o) in pinned.iter() {
        match runs.last_mut() {
            Some((s, n)) if s.0 + *n * K4 == p.0 => *n += 1 << o,
            _ => runs.push((p, 1 << o)),
        }
    }
    let record = Record {
        mmio_base: BASE,
        dev_tab_base: dtb,
        control,
        excl_base: 0,
        excl_limit: 0,
        efr,
        first_device_id: 0,
        last_device_id: LAST_DEVICE_ID,
        domains: vec![RecordDomain {
            id: DomainId(DID),
            kind: DomainKind::V1 { levels: 4 },
            root,
        }],
        devices: vec![RecordDevice {
            device_id: X.sid(),
            domain: DomainId(DID),
            dte: dte.qwords(),
            irt: None,
        }],
        pages: runs,
    };
    let mut kho = KhoOut::new();
    let mut guest = PageSet::new();
    guest.insert_range(PhysAddr(0x9000_0000), 512).unwrap();
    guest.insert_range(PhysAddr(0x9100_0000), 4).unwrap();
    kho.preserve(&guest);
    assert!(kho.add_client(
        client_name(BASE),
        COMPATIBLE.into(),
        record.encode(),
        pinned
    ));
    let blob = {
        let (_, mut mem) = rig.machine.driver_access(BASE).unwrap();
        kho.finalize(&mut mem, &mut rig.pool).unwrap()
    };
    rig.machine.kexec(blob).unwrap();
    check(&mut rig, &mut checker);

    let preserved = read_preserved(&*rig.machine.mem(), blob).unwrap();
    rig.pool = PagePool::new(POOL.0, POOL.1);
    rig.pool.exclude(&preserved);
    let (mut unit, ar) = rig
        .hw(|hw| Unit::adopt_with_preserved(hw, &unit_config(), blob, preserved))
        .expect("adopt");
    assert!(ar.blocked.is_empty() && ar.devices == 1, "{ar}");
    check(&mut rig, &mut checker);
    let maps = unit
        .walk_domain(&*rig.machine.mem(), DomainId(DID), &WalkLimits::default())
        .unwrap()
        .unwrap()
        .mappings;
    let got: Vec<(u64, u64, u64)> = maps.iter().map(|m| (m.iova.0, m.pa.0, m.size)).collect();
    assert_eq!(
        got,
        vec![(0x4000, 0x9100_0000, 0x4000), (0x20_0000, 0x9000_0000, M2)]
    );
    let vr = rig.hw(|hw| unit.verify(hw)).expect("verify");
    assert!(vr.failures.is_empty(), "{vr}");
    assert_eq!(vr.tables, 3);
    let fin = rig.hw(|hw| unit.finish(hw)).expect("finish");
    assert_eq!(fin.pages_kept, 0);
    check(&mut rig, &mut checker);
    assert!(checker.report().is_clean(), "{}", checker.report());
}

/// Without EFR.IASup the driver never sends INVALIDATE_IOMMU_ALL (the unit would
/// stop its command buffer): bring-up and adoption invalidate DTE by DTE.
#[test]
fn handover_without_ia_sup_invalidates_per_dte() {
    let efr = regs::field_value(regs::EFR::GT_SUP, 1);
    let mut rig = Rig::new(Some(efr));
    let mut unit = rig.hw(|hw| Unit::init(hw, &unit_config())).unwrap();
    assert_eq!(unit.counters().all_invalidations, 0);
    assert!(unit.counters().dte_invalidations > LAST_DEVICE_ID as u64);
    let kind = unit.default_v1();
    let d = rig.hw(|hw| unit.create_domain(hw, kind)).unwrap();
    rig.add_device(A1);
    rig.hw(|hw| {
        unit.map(
            hw,
            d,
            Iova(0),
            PhysAddr(0x4000_0000),
            K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )?;
        unit.attach(hw, A1.sid(), d)
    })
    .unwrap();
    let mut kho = KhoOut::new();
    kho.preserve_range(PhysAddr(0x4000_0000), 1).unwrap();
    let sel = Selection {
        domains: vec![d],
        devices: vec![A1.sid()],
    };
    rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
    let blob = {
        let (_, mut mem) = rig.machine.driver_access(BASE).unwrap();
        kho.finalize(&mut mem, &mut rig.pool).unwrap()
    };
    rig.hw(|hw| unit.freeze(hw)).unwrap();
    rig.machine.kexec(blob).unwrap();
    let (u2, ar) = rig
        .hw(|hw| Unit::adopt(hw, &unit_config(), blob))
        .expect("adopt");
    assert_eq!(ar.devices, 1);
    assert_eq!(u2.counters().all_invalidations, 0);
    assert!(u2.counters().dte_invalidations > LAST_DEVICE_ID as u64);
    let mut c = DmaChecker::new();
    assert!(c.write_lands(
        &mut rig.machine,
        &DmaAgent::new(A1),
        Iova(8),
        &[1; 8],
        PhysAddr(0x4000_0008)
    ));
    assert!(rig.diagnostics().is_empty(), "{:?}", rig.diagnostics());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random domains and mappings in either mode: the handover keeps every mapping,
    /// DMA stays clean, nothing is kept or refused.
    #[test]
    fn random_handovers(
        v2 in any::<bool>(),
        maps in prop::collection::vec(prop::collection::vec((0usize..2, 1u64..4), 1..4), 1..4),
    ) {
        let mode = if v2 { Mode::V2 } else { Mode::V1 };
        let mut rig = Rig::new(None);
        let mut unit = rig.hw(|hw| Unit::init(hw, &unit_config())).unwrap();
        let mut guest = PageSet::new();
        let mut doms = Vec::new();
        let mut loads = Vec::new();
        let mut pa = 0x4000_0000u64;
        for (i, ms) in maps.iter().enumerate() {
            let kind = World::kind(&unit, mode);
            let d = rig.hw(|hw| unit.create_domain(hw, kind)).unwrap();
            let rid = RequesterId::new(0, 1, i as u8, 0);
            rig.add_device(rid);
            let mut specs = Vec::new();
            let mut iova = 0u64;
            for &(s, n) in ms {
                let ps = [PageSize::SIZE_4K, PageSize::SIZE_2M][s];
                let len = n * ps.bytes();
                iova = iova.next_multiple_of(ps.bytes());
                pa = pa.next_multiple_of(ps.bytes());
                rig.hw(|hw| unit.map(hw, d, Iova(iova), PhysAddr(pa), len, ps, Perms::RW)).unwrap();
                guest.insert_range(PhysAddr(pa), len / K4).unwrap();
                specs.push(rw(iova, pa, len));
                iova += len;
                pa += len;
            }
            rig.hw(|hw| unit.attach(hw, rid.sid(), d)).unwrap();
            doms.push(d);
            loads.push(Workload::new(DmaAgent::new(rid), specs, i as u64 + 7).with_max_transfer(256));
        }
        let mut checker = DmaChecker::new();
        let mut dma = |rig: &mut Rig, checker: &mut DmaChecker| {
            for l in loads.iter_mut() {
                prop_assert!(l.step(&mut rig.machine, checker), "{}", checker.report());
            }
            Ok(())
        };
        dma(&mut rig, &mut checker)?;
        let walks = |rig: &Rig, unit: &Unit| -> Vec<Vec<Mapping>> {
            doms.iter().map(|&d| unit.walk_domain(&*rig.machine.mem(), d, &WalkLimits::default()).unwrap().unwrap().mappings).collect()
        };
        let before = walks(&rig, &unit);
        let mut kho = KhoOut::new();
        kho.preserve(&guest);
        let sel = Selection {
            domains: doms.clone(),
            devices: unit.devices().map(|d| d.device_id).collect(),
        };
        rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
        let blob = {
            let (_, mut mem) = rig.machine.driver_access(BASE).unwrap();
            kho.finalize(&mut mem, &mut rig.pool).unwrap()
        };
        rig.hw(|hw| unit.freeze(hw)).unwrap();
        rig.machine.kexec(blob).unwrap();
        dma(&mut rig, &mut checker)?;
        let preserved = read_preserved(&*rig.machine.mem(), blob).unwrap();
        rig.pool = PagePool::new(POOL.0, POOL.1);
        rig.pool.exclude(&preserved);
        let (mut u2, ar) = rig.hw(|hw| Unit::adopt_with_preserved(hw, &unit_config(), blob, preserved)).unwrap();
        prop_assert!(ar.blocked.is_empty(), "{}", ar);
        dma(&mut rig, &mut checker)?;
        prop_assert_eq!(&before, &walks(&rig, &u2));
        let fin = rig.hw(|hw| u2.finish(hw)).unwrap();
        prop_assert!(fin.verify.failures.is_empty() && fin.pages_kept == 0, "{}", fin.verify);
        dma(&mut rig, &mut checker)?;
        prop_assert!(rig.diagnostics().is_empty(), "{:?}", rig.diagnostics());
    }
}

/// A DTE with IV = 1: its interrupt-remapping table is pinned, recorded with its root
/// and length, kept bit for bit across the kexec and adopted; a DTE whose IntTableRootPtr
/// changed across the kexec no longer matches the record and blocks that device.
#[test]
fn interrupt_remapping_tables_are_pinned_and_adopted() {
    for tamper in [false, true] {
        let mut w = World::new(Mode::V1);
        let unit = &mut w.unit;
        let irt = w
            .rig
            .hw(|hw| unit.set_interrupt_table(hw, A2.sid(), 8))
            .expect("interrupt table");
        let mut magic = [0u8; 16];
        magic[0] = 0x5a;
        w.rig
            .machine
            .mem_mut()
            .write(PhysAddr(irt.0 + 16 * 3), &magic)
            .unwrap();
        let sel = w.selection();
        let mut kho = KhoOut::new();
        kho.preserve(&w.guest);
        let unit = &mut w.unit;
        w.rig
            .hw(|hw| unit.prepare(hw, &mut kho, &sel))
            .expect("prepare");
        assert!(w.unit.pinned_pages().unwrap().contains(irt));
        let rd = w
            .unit
            .handover_record()
            .unwrap()
            .devices
            .iter()
            .find(|d| d.device_id == A2.sid())
            .copied()
            .unwrap();
        assert_eq!(rd.irt, Some((irt, 256)));
        assert!(rd.entry().int_valid());
        let blob = {
            let (_, mut mem) = w.rig.machine.driver_access(BASE).unwrap();
            kho.finalize(&mut mem, &mut w.rig.pool).unwrap()
        };
        let unit = &mut w.unit;
        w.rig.hw(|hw| unit.freeze(hw)).unwrap();
        // E's DMA after freeze faults and the unit logs IO_PAGE_FAULT for its DeviceID.
        w.expect_blocked(E);
        let unit = &mut w.unit;
        let (events, overflow) = w.rig.hw(|hw| unit.poll_events(hw));
        assert!(!overflow);
        assert!(
            events.iter().any(|e| matches!(e, amdvi::hw::event::Event::IoPageFault { device_id, .. } if *device_id == E.sid())),
            "{events:?}"
        );
        w.rig.machine.kexec(blob).unwrap();
        let mut got = [0u8; 16];
        w.rig
            .machine
            .mem()
            .read(PhysAddr(irt.0 + 16 * 3), &mut got)
            .unwrap();
        assert_eq!(got, magic, "the interrupt table survives bit for bit");
        if tamper {
            // IntTableRootPtr (bits 179:134) moved by one 64-byte step.
            let at = PhysAddr(w.unit.dte_addr(A2.sid()).0 + 16);
            let q2 = w.rig.machine.mem().read_u64(at).unwrap();
            w.rig
                .machine
                .mem_mut()
                .write_u64(at, q2 ^ (1 << 6))
                .unwrap();
        }
        let (mut unit, ar) = w.adopt(blob).expect("adopt");
        if tamper {
            assert_eq!(ar.blocked.len(), 1, "{ar}");
            assert_eq!(ar.blocked[0].device_id, A2.sid());
            assert!(
                ar.blocked[0].error.to_string().contains("DTE qword 2"),
                "{ar}"
            );
            w.expect_blocked(A2);
        } else {
            assert!(ar.blocked.is_empty(), "{ar}");
            assert_eq!(unit.device(A2.sid()).unwrap().irt, Some((irt, 256)));
            let fin = w.rig.hw(|hw| unit.finish(hw)).expect("finish");
            assert_eq!(fin.pages_kept, 0, "{fin}");
            w.dma(&PRESERVED, 2, "after finish");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random bit flips in the preserved DTEs and pass-through (V = 0) or translating
    /// DTEs planted for unrecorded DeviceIDs across the kexec: adopt never panics, and
    /// afterwards every DTE of the device table either blocks or is, bit for bit, the
    /// recorded DTE of a device adoption accepted; a device whose DTE was touched faults
    /// or translates exactly as before, never passes through.
    #[test]
    fn corrupted_device_table_never_passes_through(
        flips in prop::collection::vec((0usize..3, 0usize..4, 0u32..64), 0..4),
        planted in prop::collection::vec((0u16..=LAST_DEVICE_ID, any::<bool>()), 0..4),
    ) {
        let mut w = World::new(Mode::V1);
        let blob = w.through_kexec();
        let rec = Record::decode(&w.payload(w.record_pa(blob))).unwrap();
        for &(d, q, bit) in &flips {
            let at = PhysAddr(w.unit.dte_addr(PRESERVED[d].sid()).0 + 8 * q as u64);
            let v = w.rig.machine.mem().read_u64(at).unwrap();
            w.rig.machine.mem_mut().write_u64(at, v ^ (1 << bit)).unwrap();
        }
        for &(id, zero) in &planted {
            if rec.devices.iter().any(|d| d.device_id == id) {
                continue;
            }
            let e = if zero {
                DeviceTableEntry::default()
            } else {
                DeviceTableEntry::from_qwords(rec.devices[0].dte)
            };
            let at = w.unit.dte_addr(id);
            for (i, q) in e.qwords().iter().enumerate() {
                w.rig.machine.mem_mut().write_u64(PhysAddr(at.0 + 8 * i as u64), *q).unwrap();
            }
        }
        let (unit, ar) = match w.adopt(blob) {
            Ok(x) => x,
            Err(f) => panic!("the record is intact, the unit must be adopted: {}", f.error),
        };
        let adopted: Vec<u16> = unit.devices().map(|d| d.device_id).collect();
        prop_assert_eq!(adopted.len() + ar.blocked.len(), 3);
        for id in 0..=LAST_DEVICE_ID {
            let at = unit.dte_addr(id);
            let mut q = [0u64; 4];
            for (i, v) in q.iter_mut().enumerate() {
                *v = w.rig.machine.mem().read_u64(PhysAddr(at.0 + 8 * i as u64)).unwrap();
            }
            let e = DeviceTableEntry::from_qwords(q);
            let ok = amdvi::driver::is_blocking(&e)
                || (adopted.contains(&id) && rec.devices.iter().any(|d| d.device_id == id && d.dte == q));
            prop_assert!(ok, "DeviceID {:#06x}: DTE {:x?} neither blocking nor adopted", id, q);
        }
        for rid in PRESERVED {
            if adopted.contains(&rid.sid()) {
                w.dma(&[rid], 1, "adopted device");
            } else {
                w.expect_blocked(rid);
            }
        }
        let mut planted_ids: Vec<u16> = planted.iter().map(|&(id, _)| id).collect();
        planted_ids.sort_unstable();
        planted_ids.dedup();
        for rid in planted_ids.into_iter().map(|id| RequesterId::from_sid(0, id)) {
            if PRESERVED.iter().any(|p| p.sid() == rid.sid()) || ALL.contains(&rid) {
                continue;
            }
            w.rig.add_device(rid);
            prop_assert!(w.checker.expect_failure(
                &mut w.rig.machine,
                &DmaAgent::new(rid),
                Access::Read,
                Iova(0x4000_0000),
                8,
                ExpectedFailure::Fault { code: None }
            ), "planted DeviceID {} is not blocked", rid);
        }
    }
}

/// Registers that changed across the kexec refuse the unit, which then blocks every
/// device: IommuEn found clear (DMA would be untranslated: the unit is brought up again
/// with every DTE blocking), or an exclusion range the record does not know (it would
/// let devices reach memory untranslated).
#[test]
fn registers_that_disagree_with_the_record_refuse_the_unit() {
    for case in 0..2 {
        let mut w = World::new(Mode::V2);
        let blob = w.through_kexec();
        w.rig.hw(|hw| {
            if case == 0 {
                hw.regs.write64(regs::CONTROL, 0);
            } else {
                hw.regs.write64(regs::EXCL_LIMIT, 0x4fff_f000);
                hw.regs.write64(regs::EXCL_BASE, 0x4000_0000 | 3);
            }
        });
        let f = w.adopt(blob).unwrap_err();
        match (case, &f.error.kind) {
            (0, HandoverErrorKind::TranslationDisabled { .. }) => {}
            (1, HandoverErrorKind::Register { register, .. }) if *register == "Exclusion Base" => {}
            _ => panic!("case {case}: {}", f.error),
        }
        assert!(f.unit.is_some(), "{}", f.error);
        let control = w.rig.hw(|hw| hw.regs.read64(regs::CONTROL));
        assert_ne!(regs::CONTROL::IOMMU_EN.read(control), 0);
        if case == 1 {
            // The refused unit's exclusion range is the platform's to fix; with Allow
            // set it passes the range through for every device, so check outside it.
            w.rig.hw(|hw| hw.regs.write64(regs::EXCL_BASE, 0));
        }
        for rid in PRESERVED {
            w.expect_blocked(rid);
        }
    }
}

/// Physical memory that logs every write `(address, length)` inside a window.
struct Recorder<'a> {
    inner: &'a mut dyn PhysMem,
    window: (u64, u64),
    log: Vec<(u64, usize)>,
}

impl PhysMem for Recorder<'_> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), iommu_core::MemError> {
        self.inner.read(addr, buf)
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), iommu_core::MemError> {
        if (self.window.0..self.window.1).contains(&addr.0) {
            self.log.push((addr.0 - self.window.0, data.len()));
        }
        self.inner.write(addr, data)
    }
}

/// The order of DTE stores: attach writes qwords 1..3 and then qword 0 (V, TV, Mode,
/// root, IR, IW) alone, last; detach makes qword 0 blocking first, invalidates, then
/// writes the blocking entry the same way. No store ever leaves V = 0.
#[test]
fn dte_stores_never_expose_a_half_written_entry() {
    for mode in [Mode::V1, Mode::V2] {
        let mut rig = Rig::new(None);
        let mut unit = rig.hw(|hw| Unit::init(hw, &unit_config())).unwrap();
        let kind = World::kind(&unit, mode);
        let d = rig.hw(|hw| unit.create_domain(hw, kind)).unwrap();
        let at = unit.dte_addr(A1.sid()).0;
        let record = |rig: &mut Rig, unit: &mut Unit, attach: bool| {
            let (mut regs, mut mem) = rig.machine.driver_access(BASE).unwrap();
            let mut rec = Recorder {
                inner: &mut mem,
                window: (at, at + 32),
                log: Vec::new(),
            };
            let mut hw = amdvi::driver::Hw {
                regs: &mut regs,
                mem: &mut rec,
                pages: &mut rig.pool,
            };
            if attach {
                unit.attach(&mut hw, A1.sid(), d).unwrap();
            } else {
                unit.detach(&mut hw, A1.sid()).unwrap();
            }
            rec.log
        };
        let log = record(&mut rig, &mut unit, true);
        assert_eq!(log, vec![(8, 24), (0, 8)], "{mode:?} attach");
        let log = record(&mut rig, &mut unit, false);
        assert_eq!(log, vec![(0, 8), (8, 24), (0, 8)], "{mode:?} detach");
        let q0 = rig.machine.mem().read_u64(PhysAddr(at)).unwrap();
        assert_eq!(q0 & 3, 3, "V and TV stay set");
    }
}

/// Cancel after freeze: the record leaves the handover, the blocked devices are attached
/// again and translate as before, preserved domains take mappings again.
#[test]
fn cancel_after_freeze_restores_the_devices() {
    let mut w = World::new(Mode::V2);
    let sel = w.selection();
    let mut kho = KhoOut::new();
    kho.preserve(&w.guest);
    let unit = &mut w.unit;
    w.rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
    let unit = &mut w.unit;
    w.rig.hw(|hw| unit.freeze(hw)).unwrap();
    w.expect_blocked(E);
    w.expect_blocked(F);
    let unit = &mut w.unit;
    let e = w
        .rig
        .hw(|hw| unit.prepare(hw, &mut KhoOut::new(), &sel))
        .unwrap_err();
    assert!(matches!(e.kind, HandoverErrorKind::State { .. }), "{e}");
    let unit = &mut w.unit;
    w.rig.hw(|hw| unit.cancel(hw, &mut kho)).expect("cancel");
    assert_eq!(kho.clients().count(), 0);
    assert!(!w.unit.is_frozen());
    w.dma(&ALL, 3, "after cancel");
    let d0 = w.doms[0];
    let unit = &mut w.unit;
    w.rig
        .hw(|hw| {
            unit.map(
                hw,
                d0,
                Iova(0x80_0000),
                PhysAddr(0x4080_0000),
                K4,
                PageSize::SIZE_4K,
                Perms::RW,
            )
        })
        .expect("mutable again");
}

/// A leaf redirected across the kexec to memory nobody preserved, or to the device
/// table, is refused by verify: that domain's devices are blocked.
#[test]
fn verify_refuses_a_leaf_redirected_out_of_preserved_memory_or_into_a_table() {
    for (mode, into_table) in [
        (Mode::V1, false),
        (Mode::V1, true),
        (Mode::V2, false),
        (Mode::V2, true),
    ] {
        let mut w = World::new(mode);
        let l1 = w.table_at(0, 1);
        let target = if into_table {
            w.unit.device_table().0
        } else {
            0x7000_0000
        };
        let blob = w.through_kexec();
        let at = PhysAddr(l1.0 + 8 * 5);
        let pte = w.rig.machine.mem().read_u64(at).unwrap();
        let moved = (pte & !amdvi::hw::ADDR_51_12) | target;
        w.rig.machine.mem_mut().write_u64(at, moved).unwrap();
        let (mut unit, ar) = w.adopt(blob).expect("adopt");
        assert!(ar.blocked.is_empty(), "{ar}");
        let vr = w.rig.hw(|hw| unit.verify(hw)).expect("verify");
        assert_eq!(vr.failures.len(), 1, "{vr}");
        match &vr.failures[0].1.kind {
            HandoverErrorKind::LeafTarget {
                did, iova, page, ..
            } => {
                assert_eq!(
                    (*did, *iova, *page),
                    (w.doms[0], Iova(0x5000), PhysAddr(target))
                );
            }
            _ => panic!("{vr}"),
        }
        assert_eq!(vr.blocked, vec![A1.sid(), A2.sid()]);
        w.expect_blocked(A1);
        w.dma(&[B1], 2, "the other domain");
        let fin = w.rig.hw(|hw| unit.finish(hw)).expect("finish");
        assert!(
            fin.pages_kept > 0,
            "the refused domain's tables are never freed"
        );
    }
}
