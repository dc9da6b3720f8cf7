//! The vtd driver against the emulator's strict VT-d model: bring-up in each mode,
//! domains, attach/detach, map/unmap of 4K/2M/1G pages checked by DMA (a missing
//! invalidation shows as a stale translation), fault reporting, domain IDs, errors.

mod vtd_rig;

use emulator::dma::{DmaChecker, ExpectedFailure, Workload};
use emulator::model::Access;
use emulator::vtd::VtdConfig;
use iommu_core::pgtable::{Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use vtd::driver::{DomainKind, ErrorKind, Invalidation, Mode, Unit, UnitConfig};
use vtd_rig::{run, rw, Rig, BASE};

const DEV_A: RequesterId = RequesterId::new(0, 3, 0, 0);
const DEV_B: RequesterId = RequesterId::new(0, 3, 1, 0);
const DEV_C: RequesterId = RequesterId::new(0, 0x80, 0x1f, 7);

const G: u64 = 1 << 30;
const M2: u64 = 2 << 20;
const K4: u64 = 4096;

fn up(rig: &mut Rig, mode: Mode) -> Unit {
    rig.hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, mode)))
        .expect("bring-up")
}

fn no_diags(rig: &Rig) {
    let d = rig.diagnostics();
    assert!(d.is_empty(), "model diagnostics: {d:#?}");
}

/// Maps 4K, 2M and 1G pages in two domains, attaches three devices, checks DMA, then
/// unmaps and remaps elsewhere: the DMA must follow (no stale translation) and a DMA
/// to an unmapped IOVA must fault.
fn exercise(cfg: VtdConfig, mode: Mode, kind: DomainKind) {
    let mut rig = Rig::new(cfg);
    for d in [DEV_A, DEV_B, DEV_C] {
        rig.add_device(d);
    }
    let mut unit = up(&mut rig, mode);
    let (d1, d2) = rig.hw(|hw| {
        let d1 = unit.create_domain(hw, kind).unwrap();
        let d2 = unit.create_domain(hw, kind).unwrap();
        unit.map(
            hw,
            d1,
            Iova(0x1000),
            PhysAddr(0x4000_0000),
            4 * K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
        .unwrap();
        unit.map(
            hw,
            d1,
            Iova(0x20_0000),
            PhysAddr(0x4020_0000),
            2 * M2,
            PageSize::SIZE_2M,
            Perms::RW,
        )
        .unwrap();
        unit.map(
            hw,
            d1,
            Iova(G),
            PhysAddr(G),
            G,
            PageSize::SIZE_1G,
            Perms::RW,
        )
        .unwrap();
        unit.map(
            hw,
            d2,
            Iova(0x1000),
            PhysAddr(0x5000_0000),
            8 * K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
        .unwrap();
        unit.attach(hw, DEV_A, d1).unwrap();
        unit.attach(hw, DEV_B, d1).unwrap();
        unit.attach(hw, DEV_C, d2).unwrap();
        (d1, d2)
    });
    let maps1 = vec![
        rw(0x1000, 0x4000_0000, 4 * K4),
        rw(0x20_0000, 0x4020_0000, 2 * M2),
        rw(G, G, G),
    ];
    let maps2 = vec![rw(0x1000, 0x5000_0000, 8 * K4)];
    let mut checker = DmaChecker::new();
    let mut loads = vec![
        Workload::new(rig.machine.devices()[0].agent(), maps1.clone(), 1),
        Workload::new(rig.machine.devices()[1].agent(), maps1, 2),
        Workload::new(rig.machine.devices()[2].agent(), maps2, 3),
    ];
    assert!(
        run(&mut rig, &mut loads, &mut checker, 8),
        "{}",
        checker.report()
    );
    assert_eq!(rig.faults(), 0);

    // The walker sees exactly what was mapped.
    let w = {
        let mem = rig.machine.mem();
        unit.walk_domain(&*mem, d1, &WalkLimits::default())
            .unwrap()
            .unwrap()
    };
    let runs: Vec<(u64, u64, u64)> = w
        .mappings
        .iter()
        .map(|m| (m.iova.0, m.pa.0, m.size))
        .collect();
    assert!(runs.contains(&(0x1000, 0x4000_0000, 4 * K4)), "{runs:x?}");
    assert_eq!(w.leaves, 4 + 2 + 1);

    // Unmap the 2M range and remap it to another PA: DMA must follow at once.
    rig.hw(|hw| {
        assert_eq!(unit.unmap(hw, d1, Iova(0x20_0000), 2 * M2).unwrap(), 2 * M2);
        unit.map(
            hw,
            d1,
            Iova(0x20_0000),
            PhysAddr(0x6000_0000),
            2 * M2,
            PageSize::SIZE_2M,
            Perms::RW,
        )
        .unwrap();
    });
    let agent = rig.machine.devices()[0].agent();
    let data = [0x5au8; 64];
    assert!(checker.write_lands(
        &mut rig.machine,
        &agent,
        Iova(0x20_0040),
        &data,
        PhysAddr(0x6000_0040)
    ));
    // 4K: unmap one page, DMA there faults (page-selective invalidation happened).
    rig.hw(|hw| assert_eq!(unit.unmap(hw, d1, Iova(0x2000), K4).unwrap(), K4));
    assert!(checker.expect_failure(
        &mut rig.machine,
        &agent,
        Access::Read,
        Iova(0x2000),
        8,
        ExpectedFailure::Fault { code: None },
    ));
    let faults = rig.hw(|hw| unit.poll_faults(hw));
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(faults[0].rid, DEV_A);
    assert_eq!(faults[0].addr, 0x2000);
    assert!(!faults[0].write);

    // Detach: the device's DMA faults, the others go on.
    rig.hw(|hw| unit.detach(hw, DEV_B).unwrap());
    let agent_b = rig.machine.devices()[1].agent();
    assert!(checker.expect_failure(
        &mut rig.machine,
        &agent_b,
        Access::Read,
        Iova(0x1000),
        8,
        ExpectedFailure::Fault { code: None },
    ));
    let agent_c = rig.machine.devices()[2].agent();
    assert!(checker.write_lands(
        &mut rig.machine,
        &agent_c,
        Iova(0x1100),
        &data,
        PhysAddr(0x5000_0100)
    ));
    assert!(checker.report().is_clean(), "{}", checker.report());

    // Unmap everything: every table page but the root goes back.
    let freed_before = unit.counters().pages_freed;
    rig.hw(|hw| {
        unit.unmap(hw, d1, Iova(0), 4 * G).unwrap();
        unit.unmap(hw, d2, Iova(0), 4 * G).unwrap();
    });
    assert_eq!(unit.domain(d1).unwrap().table_pages(), 1);
    assert_eq!(unit.domain(d2).unwrap().table_pages(), 1);
    assert!(unit.counters().pages_freed > freed_before);
    rig.hw(|hw| {
        unit.detach(hw, DEV_A).unwrap();
        unit.detach(hw, DEV_C).unwrap();
        unit.destroy_domain(hw, d1).unwrap();
        unit.destroy_domain(hw, d2).unwrap();
    });
    assert!(!unit.domain_id_in_use(d1));
    no_diags(&rig);
}

#[test]
fn legacy_second_stage() {
    exercise(
        VtdConfig::legacy(BASE),
        Mode::Legacy,
        DomainKind::SecondStage,
    );
}

#[test]
fn scalable_second_stage() {
    exercise(
        VtdConfig::scalable(BASE),
        Mode::Scalable,
        DomainKind::SecondStage,
    );
}

#[test]
fn scalable_first_stage() {
    exercise(
        VtdConfig::scalable(BASE),
        Mode::Scalable,
        DomainKind::FirstStage,
    );
}

#[test]
fn caching_mode_reserves_domain_zero_and_invalidates_on_map() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.caching_mode = true;
    exercise(cfg, Mode::Legacy, DomainKind::SecondStage);
    let mut rig = Rig::new(cfg);
    let mut unit = up(&mut rig, Mode::Legacy);
    assert!(unit.domain_id_in_use(DomainId(0)));
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap();
    assert_eq!(d, DomainId(1));
    let before = unit.counters().iotlb_page;
    rig.hw(|hw| {
        unit.map(
            hw,
            d,
            Iova(0),
            PhysAddr(0x4000_0000),
            K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
    })
    .unwrap();
    assert_eq!(
        unit.counters().iotlb_page,
        before + 1,
        "CM: map invalidates"
    );
}

#[test]
fn no_caching_mode_map_needs_no_invalidation() {
    let mut rig = Rig::new(VtdConfig::legacy(BASE));
    let mut unit = up(&mut rig, Mode::Legacy);
    assert!(!unit.domain_id_in_use(DomainId(0)));
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap();
    assert_eq!(d, DomainId(0));
    let before = unit.counters();
    rig.hw(|hw| {
        unit.map(
            hw,
            d,
            Iova(0),
            PhysAddr(0x4000_0000),
            K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
    })
    .unwrap();
    assert_eq!(unit.counters().descriptors, before.descriptors);
}

#[test]
fn register_based_invalidation_without_qi() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.queued_invalidation = false;
    let mut rig = Rig::new(cfg);
    let unit = up(&mut rig, Mode::Legacy);
    assert_eq!(*unit.invalidation(), Invalidation::Register);
    exercise(cfg, Mode::Legacy, DomainKind::SecondStage);
}

#[test]
fn no_psi_falls_back_to_domain_selective() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.psi = false;
    exercise(cfg, Mode::Legacy, DomainKind::SecondStage);
}

#[test]
fn rwbf_flushes_the_write_buffer() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.rwbf = true;
    let mut rig = Rig::new(cfg);
    let mut unit = up(&mut rig, Mode::Legacy);
    let n = unit.counters().write_buffer_flushes;
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap();
    rig.hw(|hw| {
        unit.map(
            hw,
            d,
            Iova(0),
            PhysAddr(0x4000_0000),
            K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
    })
    .unwrap();
    assert_eq!(unit.counters().write_buffer_flushes, n + 1);
    no_diags(&rig);
}

#[test]
fn mode_and_capability_checks() {
    let mut rig = Rig::new(VtdConfig::legacy(BASE));
    let e = rig
        .hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, Mode::Scalable)))
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::ModeUnsupported { .. }), "{e}");
    let mut unit = up(&mut rig, Mode::Legacy);
    let e = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::FirstStage))
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::KindUnsupported { .. }), "{e}");
    // A unit that is already translating is adopted, not brought up again.
    let e = rig
        .hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, Mode::Legacy)))
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::TranslationAlreadyEnabled { .. }),
        "{e}"
    );
    assert_eq!(e.unit, BASE);
    // No QI and VER 6: no invalidation interface at all.
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.queued_invalidation = false;
    cfg.version_major = 6;
    let mut rig = Rig::new(cfg);
    let e = rig
        .hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, Mode::Legacy)))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoInvalidation { ver_major: 6 });
}

#[test]
fn domain_ids_follow_cap_nd() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.nd = 0; // 16 domain IDs
    cfg.caching_mode = true; // ID 0 reserved
    let mut rig = Rig::new(cfg);
    let mut unit = up(&mut rig, Mode::Legacy);
    assert_eq!(unit.domain_id_count(), 16);
    let ids: Vec<DomainId> = rig.hw(|hw| {
        (0..15)
            .map(|_| unit.create_domain(hw, DomainKind::SecondStage).unwrap())
            .collect()
    });
    assert_eq!(ids.first(), Some(&DomainId(1)));
    assert_eq!(ids.last(), Some(&DomainId(15)));
    let e = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfDomainIds { count: 16 });
    rig.hw(|hw| unit.destroy_domain(hw, DomainId(7))).unwrap();
    let again = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap();
    assert_eq!(again, DomainId(7));
}

#[test]
fn map_errors_are_typed_and_change_nothing() {
    let mut rig = Rig::new(VtdConfig::legacy(BASE));
    let mut unit = up(&mut rig, Mode::Legacy);
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap();
    rig.hw(|hw| {
        unit.map(hw, d, Iova(0x20_0000), PhysAddr(0x4000_0000), M2, PageSize::SIZE_2M, Perms::RW)
            .unwrap();
        // Overlap with the 2M page: refused, and the pages mapped before it in the same
        // call are taken back.
        let e = unit
            .map(hw, d, Iova(0x1f_f000), PhysAddr(0x5000_0000), 2 * K4, PageSize::SIZE_4K, Perms::RW)
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::AlreadyMapped { did, iova, level: 2, .. } if did == d && iova == Iova(0x20_0000)), "{e}");
        let e = unit.unmap(hw, d, Iova(0x20_0000), K4).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::PartialLeaf { size, .. } if size == M2), "{e}");
        let e = unit
            .map(hw, d, Iova(0x1000), PhysAddr(0x4000_0800), K4, PageSize::SIZE_4K, Perms::RW)
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::BadRange { .. }), "{e}");
        let e = unit
            .map(hw, d, Iova(1 << 48), PhysAddr(0), K4, PageSize::SIZE_4K, Perms::RW)
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::BadRange { .. }), "{e}");
        let e = unit
            .map(hw, DomainId(99), Iova(0), PhysAddr(0), K4, PageSize::SIZE_4K, Perms::RW)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchDomain { did: DomainId(99) });
    });
    let w = {
        let mem = rig.machine.mem();
        unit.walk_domain(&*mem, d, &WalkLimits::default())
            .unwrap()
            .unwrap()
    };
    assert_eq!(w.leaves, 1, "only the 2M page is mapped: {:?}", w.mappings);
    no_diags(&rig);
}

#[test]
fn first_stage_one_gig_needs_fl1gp() {
    let mut cfg = VtdConfig::scalable(BASE);
    cfg.fl1gp = false;
    let mut rig = Rig::new(cfg);
    let mut unit = up(&mut rig, Mode::Scalable);
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::FirstStage))
        .unwrap();
    let e = rig
        .hw(|hw| unit.map(hw, d, Iova(0), PhysAddr(G), G, PageSize::SIZE_1G, Perms::RW))
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::PageSizeUnsupported { .. }),
        "{e}"
    );
}

#[test]
fn fault_events_are_programmed_and_records_cleared() {
    use vtd::driver::FaultEvent;
    use vtd::hw::regs::{self, FECTL, FSTS};
    let mut rig = Rig::new(VtdConfig::legacy(BASE));
    rig.add_device(DEV_A);
    let mut cfg = UnitConfig::new(BASE, Mode::Legacy);
    cfg.fault_event = Some(FaultEvent {
        data: 0x4021,
        addr: 0xfee0_0000,
    });
    let mut unit = rig.hw(|hw| Unit::init(hw, &cfg)).unwrap();
    let (fectl, fedata, feaddr) = rig.hw(|hw| {
        (
            hw.regs.read32(regs::FECTL),
            hw.regs.read32(regs::FEDATA),
            hw.regs.read32(regs::FEADDR),
        )
    });
    assert!(!FECTL::IM.is_set(fectl), "fault events unmasked");
    assert_eq!((fedata, feaddr), (0x4021, 0xfee0_0000));
    let d = rig
        .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
        .unwrap();
    rig.hw(|hw| unit.attach(hw, DEV_A, d)).unwrap();
    // Three faults: a read and a write at unmapped IOVAs, then one more.
    let agent = rig.machine.devices()[0].agent();
    let mut checker = DmaChecker::new();
    for (iova, access) in [
        (0x1000, Access::Read),
        (0x2000, Access::Write),
        (0x3000, Access::Read),
    ] {
        assert!(checker.expect_failure(
            &mut rig.machine,
            &agent,
            access,
            Iova(iova),
            4,
            ExpectedFailure::Fault { code: None },
        ));
    }
    let faults = rig.hw(|hw| unit.poll_faults(hw));
    let got: Vec<(u64, bool)> = faults.iter().map(|f| (f.addr, f.write)).collect();
    assert_eq!(got, vec![(0x1000, false), (0x2000, true), (0x3000, false)]);
    // VT-d fault reasons 6 (read not allowed) and 5 (write not allowed): a
    // second-stage entry without R/W is not present.
    let reasons: Vec<u8> = faults.iter().map(|f| f.reason).collect();
    assert_eq!(reasons, vec![6, 5, 6]);
    assert!(faults.iter().all(|f| f.rid == DEV_A && f.pasid.is_none()));
    let fsts = rig.hw(|hw| hw.regs.read32(regs::FSTS));
    assert!(!FSTS::PPF.is_set(fsts), "records cleared: FSTS {fsts:#x}");
    assert!(rig.hw(|hw| unit.poll_faults(hw)).is_empty());
    assert_eq!(unit.counters().faults, 3);
    no_diags(&rig);
}

/// The RID_PASID entry of a first-stage domain carries AW = 2 (48 bits, the 4-level
/// paging width), as Linux programs it; with AW = 0 the model (like QEMU) bounds
/// first-stage input at 30 bits and a DMA to a 4K page mapped at IOVA 2^39 + 0x5000
/// (above 1 GiB) faults 0x80 instead of landing.
#[test]
fn first_stage_pasid_entry_has_aw_and_dma_above_1g_lands() {
    use iommu_core::mem::PhysMem;
    use vtd::hw::pasid::{pasid_table_index, PasidEntry, PASID_ENTRY_SIZE};
    let mut rig = Rig::new(VtdConfig::scalable(BASE));
    rig.add_device(DEV_A);
    let mut unit = up(&mut rig, Mode::Scalable);
    let iova = (1u64 << 39) + 0x5000;
    let pa = 0x6000_3000u64;
    rig.hw(|hw| {
        let d = unit.create_domain(hw, DomainKind::FirstStage).unwrap();
        unit.map(
            hw,
            d,
            Iova(iova),
            PhysAddr(pa),
            K4,
            PageSize::SIZE_4K,
            Perms::RW,
        )
        .unwrap();
        unit.attach(hw, DEV_A, d).unwrap();
    });
    let dev = unit.device(DEV_A).expect("attached");
    let pasid = dev.pasid.expect("RID_PASID").0;
    let at = dev.pasid_table.expect("PASID table").0 + pasid_table_index(pasid) * PASID_ENTRY_SIZE;
    let mut q = [0u64; 8];
    for (i, w) in q.iter_mut().enumerate() {
        *w = rig
            .machine
            .mem()
            .read_u64(PhysAddr(at + 8 * i as u64))
            .unwrap();
    }
    let pe = PasidEntry::from_qwords(q);
    assert_eq!(pe.aw(), 2, "first-stage PASID entry AW");
    let agent = rig.machine.devices()[0].agent();
    rig.machine
        .dma_write(&agent, Iova(iova + 8), &[0x5a; 8])
        .expect("DMA above 1 GiB through first-stage tables");
    let mut back = [0u8; 8];
    rig.machine.mem().read(PhysAddr(pa + 8), &mut back).unwrap();
    assert_eq!(back, [0x5a; 8]);
    assert_eq!(rig.faults(), 0);
    no_diags(&rig);
}

/// The driver against a unit that mirrors a real machine's registers (Intel Skylake,
/// `ver 1:0 cap d2008c40660462 ecap f050da`, from a public dmesg log: see
/// github.com/asokolsky/my-notes, proxmox-gpu-passthrough.md): 39-bit MGAW with only
/// 4-level tables, one fault record at 0x400, IOTLB registers at 0x500, page walks not
/// coherent, read/write draining.
#[test]
fn legacy_on_a_unit_with_real_skylake_registers() {
    let mut cfg = VtdConfig::from_registers(BASE, 0x10, 0x00d2_008c_4066_0462, 0x00f0_50da)
        .expect("a real unit the model can be");
    assert!(cfg.drd && cfg.dwd && cfg.mhmv == 15 && cfg.mgaw == 39);
    exercise(cfg, Mode::Legacy, DomainKind::SecondStage);
    // The same unit without queued invalidation: register-based invalidation at 0x500.
    cfg.queued_invalidation = false;
    cfg.interrupt_remapping = false;
    cfg.eim = false;
    exercise(cfg, Mode::Legacy, DomainKind::SecondStage);
}
