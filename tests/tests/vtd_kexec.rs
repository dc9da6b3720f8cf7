//! DMA through the strict VT-d model across a kexec.
//!
//! The old kernel builds legacy-mode tables, turns translation on, pins every table page
//! and every DMA target page in a KHO page set and writes the handover blob. The machine
//! kexecs with nothing but the blob's address: every page not read back from the blob
//! becomes poison while the unit keeps translating. With all table pages preserved the
//! same DMA translates the same; with one table page left out the walk reads poison and
//! the DMA stops there: no byte lands anywhere.

use emulator::dma::{DmaAgent, DmaChecker, ExpectedFailure, MappingSpec, Workload};
use emulator::machine::{Device, Machine};
use emulator::model::{Access, DmaError};
use emulator::vtd::{VtdConfig, VtdUnit};
use iommu_core::kho::{write_handover, Client, FrameAllocator};
use iommu_core::mem::MemError;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk, Perms, WalkLimits};
use iommu_core::PhysMem;
use iommu_core::{Iova, PageSize, PhysAddr, RequesterId};
use tests::vtd_prog::{MachineRig, Platform, VtdDriver};
use vtd::format::{second_stage_caps, SecondStage};
use vtd::hw::regs::{self, Ttm};
use vtd::hw::root::{AddressWidth, ContextEntry, TranslationType};

const BASE: PhysAddr = PhysAddr(0xfed9_0000);
const DID: u16 = 3;
const POOL: u64 = 16 << 20;
const KHO_AREA: u64 = 48 << 20;

/// Bump allocator for the KHO blob, records and tree nodes.
struct Bump(u64);
impl FrameAllocator for Bump {
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
        let at = self.0;
        self.0 += pages as u64 * 4096;
        Some(PhysAddr(at))
    }
}

struct Setup {
    rig: MachineRig,
    agents: Vec<DmaAgent>,
    mappings: Vec<MappingSpec>,
    tables: Vec<PhysAddr>,
}

/// Two devices sharing one domain with a 4K, a 2M and a 1G mapping.
fn setup() -> Setup {
    let machine = Machine::with_ram(&[(PhysAddr(0), 4 << 30)]).unwrap();
    let mut rig = MachineRig::new(machine, BASE, POOL, 16 << 20);
    let mut cfg = VtdConfig::legacy(BASE);
    // 2M and 1G second-stage pages (CAP.SLLPS bits 34 and 35).
    cfg.sllps = 0b11;
    rig.machine
        .add_unit(Box::new(VtdUnit::new(cfg).unwrap()))
        .unwrap();
    let rids = [
        RequesterId::new(0, 0, 2, 0),
        RequesterId::new(0, 0x3b, 0, 1),
    ];
    let agents: Vec<DmaAgent> = rids
        .iter()
        .map(|&rid| {
            rig.machine
                .add_device(Device {
                    rid,
                    pasid: None,
                    unit: BASE,
                })
                .unwrap()
        })
        .collect();
    let root = rig.alloc_root_table().unwrap();
    let sl = rig.alloc_table(1).unwrap();
    for &rid in &rids {
        rig.set_legacy_context(
            root,
            rid,
            ContextEntry::new(sl, AddressWidth::Bits48, DID, TranslationType::Untranslated),
        )
        .unwrap();
    }
    let maps = [
        (0x1000_0000u64, 0x0200_0000u64, PageSize::SIZE_4K, Perms::RW),
        (0x2000_0000, 0x0400_0000, PageSize::SIZE_2M, Perms::RW),
        (0x4000_0000, 0x8000_0000, PageSize::SIZE_1G, Perms::R),
    ];
    let mut mappings = Vec::new();
    for &(iova, pa, size, perms) in &maps {
        rig.map_sl(sl, 4, iova, pa, size, perms.read, perms.write)
            .unwrap();
        mappings.push(MappingSpec {
            iova: Iova(iova),
            pa: PhysAddr(pa),
            // The workload touches the first 64 KiB of each page, enough to cross pages.
            len: size.bytes().min(64 << 10),
            perms,
        });
        // Read-only targets need defined contents.
        if !perms.write {
            let fill = vec![0xa5u8; 64 << 10];
            PhysMem::write(rig.machine.mem_mut(), PhysAddr(pa), &fill).unwrap();
        }
    }
    rig.set_root_table(root, Ttm::Legacy).unwrap();
    rig.enable_translation().unwrap();

    // Every table page: the root table, the context tables it points to, and the
    // second-stage tables found by the core walker.
    let format = SecondStage::new(
        4,
        second_stage_caps(
            rig.read64(regs::CAP),
            rig.read64(regs::ECAP),
            // The emulated unit's host address width (its MGAW default).
            48,
        ),
    )
    .unwrap();
    let w = walk(
        &format,
        &*rig.machine.mem(),
        PhysAddr(sl),
        &WalkLimits::default(),
    )
    .unwrap();
    assert_eq!(w.mappings.len(), 3, "{:?}", w.mappings);
    let mut tables = vec![PhysAddr(root)];
    for &rid in &rids {
        let re = rig
            .machine
            .mem()
            .read_u64(PhysAddr(root + rid.bus as u64 * 16));
        let ctp = re.unwrap() & !0xfff;
        if !tables.contains(&PhysAddr(ctp)) {
            tables.push(PhysAddr(ctp));
        }
    }
    tables.extend(w.tables.iter().map(|t| t.addr));
    Setup {
        rig,
        agents,
        mappings,
        tables,
    }
}

/// Pins `tables` and the DMA targets, writes the KHO blob and kexecs.
fn kexec_preserving(s: &mut Setup, tables: &[PhysAddr]) {
    let mut set = PageSet::new();
    for &t in tables {
        set.insert(t, 0).unwrap();
    }
    for m in &s.mappings {
        set.insert_range(m.pa, m.len / 4096).unwrap();
    }
    let written = write_handover(
        s.rig.machine.mem_mut(),
        &mut Bump(KHO_AREA),
        &set,
        &[Client {
            name: "iommu-test",
            compatible: "iommu-test-v1",
            payload: b"tables pinned by the test",
        }],
    )
    .unwrap();
    // Old-kernel memory nobody preserved: it must not survive.
    let scratch = PhysAddr(KHO_AREA - 4096);
    PhysMem::write(s.rig.machine.mem_mut(), scratch, b"old kernel data").unwrap();
    let report = s.rig.machine.kexec(written.blob).unwrap();
    assert!(
        report.pages_poisoned > 0,
        "kexec poisoned nothing: {report:?}"
    );
    assert_eq!(
        s.rig.machine.mem().read_u64(scratch),
        Err(MemError::Poisoned { addr: scratch })
    );
}

/// Faults other than the expected ones: writes to the read-only mapping.
fn unexpected_faults(s: &Setup) -> Vec<String> {
    let ro = s.mappings.iter().find(|m| !m.perms.write).unwrap();
    s.rig
        .machine
        .fault_log()
        .iter()
        .filter(|f| {
            !(f.access == Access::Write && f.iova.0 >= ro.iova.0 && f.iova.0 < ro.iova.0 + ro.len)
        })
        .map(|f| f.to_string())
        .collect()
}

fn run(s: &mut Setup, seed: u64, steps: usize) -> DmaChecker {
    let mut checker = DmaChecker::new();
    for (i, a) in s.agents.iter().enumerate() {
        let mut w = Workload::new(*a, s.mappings.clone(), seed + i as u64).with_max_transfer(9000);
        for _ in 0..steps {
            w.step(&mut s.rig.machine, &mut checker);
        }
    }
    checker
}

#[test]
fn dma_across_kexec_with_every_table_page_preserved_translates_the_same() {
    let mut s = setup();
    let before = run(&mut s, 1, 20);
    assert!(before.report().is_clean(), "{}", before.report());
    assert!(before.stats().bytes_checked > 0);
    let tables = s.tables.clone();
    kexec_preserving(&mut s, &tables);
    // The unit kept translating: same translations, caches and all.
    let after = run(&mut s, 2, 20);
    assert!(after.report().is_clean(), "{}", after.report());
    assert_eq!(unexpected_faults(&s), Vec::<String>::new());
    assert!(s.rig.machine.error_log().is_empty());

    // Even with every cache dropped (a global invalidation by the new kernel), the
    // unit walks the preserved tables to the same translations.
    s.rig.write64(
        regs::CCMD,
        regs::field_value(regs::CCMD::ICC, 1) | regs::field_value(regs::CCMD::CIRG, 1),
    );
    let (_, iotlb) = regs::iotlb_offsets(s.rig.read64(regs::ECAP));
    s.rig.write64(
        iotlb,
        regs::field_value(regs::IOTLB::IVT, 1) | regs::field_value(regs::IOTLB::IIRG, 1),
    );
    let cold = run(&mut s, 3, 20);
    assert!(cold.report().is_clean(), "{}", cold.report());
    assert_eq!(unexpected_faults(&s), Vec::<String>::new());
    assert!(s.rig.machine.error_log().is_empty());
}

#[test]
fn a_table_page_left_out_is_poison_and_the_dma_stops_without_landing_a_byte() {
    let mut s = setup();
    let clean = run(&mut s, 1, 5);
    assert!(clean.report().is_clean(), "{}", clean.report());
    // Leave out the last-level table holding the 4K mapping (the deepest table the
    // walker found); keep everything else.
    let leaf_table = *s.tables.last().unwrap();
    let kept: Vec<PhysAddr> = s
        .tables
        .iter()
        .copied()
        .filter(|&t| t != leaf_table)
        .collect();
    kexec_preserving(&mut s, &kept);

    // Drop the unit's caches so the next request must walk the (now poisoned) table,
    // exactly what the next kernel's first global invalidation does.
    let (_, iotlb) = regs::iotlb_offsets(s.rig.read64(regs::ECAP));
    s.rig.write64(
        iotlb,
        regs::field_value(regs::IOTLB::IVT, 1) | regs::field_value(regs::IOTLB::IIRG, 1),
    );

    let guard = s.mappings[0].pa;
    let mut checker = DmaChecker::new();
    let agent = s.agents[0];
    assert!(checker.expect_blocked_write(
        &mut s.rig.machine,
        &agent,
        s.mappings[0].iova,
        64,
        guard,
        ExpectedFailure::WalkError,
    ));
    assert!(checker.report().is_clean(), "{}", checker.report());
    match s.rig.machine.error_log().last() {
        Some(DmaError::Memory { error, request, .. }) => {
            assert!(matches!(error, MemError::Poisoned { .. }), "{error}");
            assert_eq!(request.iova, s.mappings[0].iova);
            assert_eq!(request.access, Access::Write);
        }
        other => panic!("expected a walk into poison, got {other:?}"),
    }
    // The other mappings live under preserved tables and still translate.
    let mut checker = DmaChecker::new();
    let data = [0x3cu8; 128];
    assert!(checker.write_lands(
        &mut s.rig.machine,
        &agent,
        s.mappings[1].iova,
        &data,
        s.mappings[1].pa
    ));
    assert!(checker.report().is_clean(), "{}", checker.report());
}
