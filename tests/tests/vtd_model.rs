//! The VT-d model driven only through MMIO registers and physical memory, as a driver
//! would: tables written to memory, registers programmed, DMA requests translated,
//! faults read back from the fault recording registers.

use emulator::machine::{Device, Machine};
use emulator::model::{Access, DmaError, IommuModel, RegisterValue};
use emulator::vtd::{InterruptKind, VtdConfig, VtdConfigError, VtdRestoreError, VtdUnit};
use iommu_core::mem::PhysMem;
use iommu_core::{PageSize, PhysAddr, RequesterId};
use tests::vtd_prog::{write_qwords, MachineRig, Platform, ProgError, VtdDriver, VtdRig};
use vtd::hw::fault::{FaultRecord, FaultRequestType};
use vtd::hw::pasid::{Flpm, PasidEntry, Pgtt};
use vtd::hw::pte::{FlPte, SlPte, FL_A, FL_D, SL_A, SL_D};
use vtd::hw::qi::{Descriptor, PasidCacheGranularity, PasidIotlbGranularity, QiDescriptor};
use vtd::hw::regs::{
    self, field_mask32 as m32, ContextGranularity, IotlbGranularity, Ttm, FECTL, FSTS, GCMD, GSTS,
    ICS, IECTL,
};
use vtd::hw::root::{AddressWidth, ContextEntry, ScalableContextEntry, TranslationType};

const BASE: PhysAddr = PhysAddr(0xfed9_0000);
const DEV: RequesterId = RequesterId::new(0, 3, 0, 0);
const DEV2: RequesterId = RequesterId::new(0, 3, 1, 0);
const DID: u16 = 7;

fn ok(r: Result<impl Sized, ProgError>) {
    if let Err(e) = r {
        panic!("programming step failed: {e}");
    }
}

/// Legacy rig: root table, one 4-level context for DEV (DID 7), translation on.
fn legacy_rig(cfg: VtdConfig) -> (VtdRig, u64, u64) {
    let mut rig = VtdRig::new(cfg).expect("config");
    let root = rig.alloc_root_table().unwrap();
    let sl = rig.alloc_table(1).unwrap();
    rig.set_legacy_context(
        root,
        DEV,
        ContextEntry::new(sl, AddressWidth::Bits48, DID, TranslationType::Untranslated),
    )
    .unwrap();
    ok(rig.set_root_table(root, Ttm::Legacy));
    rig.ccmd_invalidate(ContextGranularity::Global, 0, 0, 0)
        .unwrap();
    rig.iotlb_invalidate(IotlbGranularity::Global, 0, 0, 0)
        .unwrap();
    ok(rig.enable_translation());
    (rig, root, sl)
}

fn fault_code(r: Result<emulator::model::Translated, DmaError>) -> (u32, bool) {
    match r {
        Err(DmaError::Fault(f)) => (f.code, f.recorded),
        other => panic!("expected a fault, got {other:?}"),
    }
}

/// The one fault record pending, read and cleared the way Linux does.
fn take_record(rig: &mut VtdRig) -> FaultRecord {
    let fsts = rig.read32(regs::FSTS);
    assert!(FSTS::PPF.is_set(fsts), "FSTS.PPF not set: {fsts:#x}");
    let recs = rig.handle_faults();
    assert_eq!(recs.len(), 1, "expected one fault record, got {recs:?}");
    assert!(!FSTS::PPF.is_set(rig.read32(regs::FSTS)));
    recs[0]
}

#[test]
fn legacy_second_stage_4k_2m_1g() {
    let (mut rig, _root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    assert!(rig.translation_enabled());
    ok(rig.map_sl(sl, 4, 0x1000, 0x8_0000, PageSize::SIZE_4K, true, true));
    ok(rig.map_sl(
        sl,
        4,
        0x4020_0000,
        0x60_0000,
        PageSize::SIZE_2M,
        true,
        false,
    ));
    ok(rig.map_sl(
        sl,
        4,
        0x80_0000_0000,
        0x1_0000_0000,
        PageSize::SIZE_1G,
        true,
        true,
    ));
    let t = rig.dma(DEV, 0x1234, Access::Write).unwrap();
    assert_eq!(t.pa, PhysAddr(0x8_0234));
    assert_eq!(t.page_size, PageSize::SIZE_4K);
    let t = rig.dma(DEV, 0x4031_2345, Access::Read).unwrap();
    assert_eq!(t.pa, PhysAddr(0x71_2345));
    assert_eq!(t.page_size, PageSize::SIZE_2M);
    assert!(!t.perms.write);
    let t = rig.dma(DEV, 0x80_2345_6789, Access::Write).unwrap();
    assert_eq!(t.pa, PhysAddr(0x1_2345_6789));
    assert_eq!(t.page_size, PageSize::SIZE_1G);
    // A second access hits the IOTLB and gives the same answer.
    let walks = rig.unit.stats().walks;
    assert_eq!(
        rig.dma(DEV, 0x1ff8, Access::Read).unwrap().pa,
        PhysAddr(0x8_0ff8)
    );
    assert_eq!(rig.unit.stats().walks, walks);
    assert!(rig.unit.fault_log().is_empty());
    assert!(
        rig.unit.diagnostics().is_empty(),
        "{:?}",
        rig.unit.diagnostics()
    );
}

#[test]
fn legacy_three_and_five_level_tables() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.sagaw = 0b1010;
    cfg.mgaw = 57;
    let mut rig = VtdRig::new(cfg).unwrap();
    let root = rig.alloc_root_table().unwrap();
    let sl3 = rig.alloc_table(1).unwrap();
    let sl5 = rig.alloc_table(1).unwrap();
    rig.set_legacy_context(
        root,
        DEV,
        ContextEntry::new(sl3, AddressWidth::Bits39, 1, TranslationType::Untranslated),
    )
    .unwrap();
    rig.set_legacy_context(
        root,
        DEV2,
        ContextEntry::new(sl5, AddressWidth::Bits57, 2, TranslationType::Untranslated),
    )
    .unwrap();
    ok(rig.map_sl(
        sl3,
        3,
        0x7f_ffff_f000,
        0x5000,
        PageSize::SIZE_4K,
        true,
        true,
    ));
    ok(rig.map_sl(
        sl5,
        5,
        0x1ff_0000_0000_0000,
        0x6000,
        PageSize::SIZE_4K,
        true,
        true,
    ));
    ok(rig.set_root_table(root, Ttm::Legacy));
    ok(rig.enable_translation());
    assert_eq!(
        rig.dma(DEV, 0x7f_ffff_f010, Access::Read).unwrap().pa,
        PhysAddr(0x5010)
    );
    assert_eq!(
        rig.dma(DEV2, 0x1ff_0000_0000_0008, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x6008)
    );
    // 39-bit context: an address at bit 39 is beyond the width (fault 0x4).
    assert_eq!(fault_code(rig.dma(DEV, 1 << 39, Access::Read)), (0x4, true));
    let rec = take_record(&mut rig);
    assert_eq!(rec.reason(), 0x4);
    assert_eq!(rec.fault_info(), 1 << 39);
    assert_eq!(rec.sid(), DEV.sid());
    assert_eq!(rec.request_type(), FaultRequestType::Read);
    // AW = 2 is not in SAGAW (0b1010): invalid context entry programming (0x3).
    let sl4 = rig.alloc_table(1).unwrap();
    let dev3 = RequesterId::new(0, 4, 0, 0);
    rig.set_legacy_context(
        root,
        dev3,
        ContextEntry::new(sl4, AddressWidth::Bits48, 3, TranslationType::Untranslated),
    )
    .unwrap();
    assert_eq!(fault_code(rig.dma(dev3, 0, Access::Read)), (0x3, true));
}

#[test]
fn legacy_pass_through_and_translation_off() {
    let mut rig = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    // Translation off: the input address goes out unchanged.
    assert_eq!(
        rig.dma(DEV, 0xdead_b000, Access::Write).unwrap().pa,
        PhysAddr(0xdead_b000)
    );
    let root = rig.alloc_root_table().unwrap();
    rig.set_legacy_context(
        root,
        DEV,
        ContextEntry::new(0, AddressWidth::Bits48, 1, TranslationType::PassThrough),
    )
    .unwrap();
    ok(rig.set_root_table(root, Ttm::Legacy));
    ok(rig.enable_translation());
    assert_eq!(
        rig.dma(DEV, 0x1234_5678, Access::Write).unwrap().pa,
        PhysAddr(0x1234_5678)
    );
    // Without ECAP.PT the same entry is invalid programming.
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.pass_through = false;
    let mut rig2 = VtdRig::new(cfg).unwrap();
    let root2 = rig2.alloc_root_table().unwrap();
    rig2.set_legacy_context(
        root2,
        DEV,
        ContextEntry::new(0, AddressWidth::Bits48, 1, TranslationType::PassThrough),
    )
    .unwrap();
    ok(rig2.set_root_table(root2, Ttm::Legacy));
    ok(rig2.enable_translation());
    assert_eq!(fault_code(rig2.dma(DEV, 0x1000, Access::Read)), (0x3, true));
}

#[test]
fn gcmd_handshake_and_multi_command_writes() {
    let mut rig = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    assert_eq!(rig.gsts(), 0);
    // GCMD is write-only and reads 0.
    assert_eq!(rig.read32(regs::GCMD), 0);
    let root = rig.alloc_root_table().unwrap();
    rig.write64(regs::RTADDR, root);
    assert_eq!(rig.read64(regs::RTADDR), root);
    rig.write32(regs::GCMD, m32(GCMD::SRTP));
    assert!(GSTS::RTPS.is_set(rig.gsts()));
    // Xen's pattern: GSTS | TE re-issues SRTP because RTPS is still set: two commands.
    let before = rig.unit.diagnostics().len();
    let v = rig.gsts() | m32(GCMD::TE);
    rig.write32(regs::GCMD, v);
    assert!(GSTS::TES.is_set(rig.gsts()));
    assert_eq!(
        rig.unit.diagnostics().len(),
        before + 1,
        "{:?}",
        rig.unit.diagnostics()
    );
    // The recommended pattern issues one command and is not flagged.
    ok(rig.disable_translation());
    ok(rig.enable_translation());
    assert_eq!(rig.unit.diagnostics().len(), before + 1);
    // Reserved GCMD bits are diagnosed and have no effect.
    let g = rig.gsts() & 0x96ff_ffff;
    rig.write32(regs::GCMD, g | 1);
    assert_eq!(rig.gsts() & 1, 0);
    assert!(rig.unit.diagnostics().last().unwrap().contains("reserved"));
    // TE before any SRTP is diagnosed on a fresh unit.
    let mut fresh = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    ok(fresh.enable_translation());
    assert!(fresh
        .unit
        .diagnostics()
        .iter()
        .any(|d| d.contains("before a root table pointer")));
    assert_eq!(fault_code(fresh.dma(DEV, 0, Access::Read)).0, 0x8);
}

#[test]
fn legacy_fault_reasons_reach_the_recording_registers() {
    let (mut rig, root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    ok(rig.map_sl(sl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, true, false));
    ok(rig.map_sl(sl, 4, 0x2000, 0xa000, PageSize::SIZE_4K, false, true));
    let check = |rig: &mut VtdRig, rid: RequesterId, iova: u64, access: Access, code: u8| {
        let (c, recorded) = fault_code(rig.dma(rid, iova, access));
        assert_eq!(c, code as u32, "iova {iova:#x}");
        assert!(recorded);
        let rec = take_record(rig);
        assert_eq!(rec.reason(), code);
        assert_eq!(rec.sid(), rid.sid());
        assert_eq!(rec.fault_info(), iova & !0xfff);
        assert_eq!(rec.pasid(), None);
        assert_eq!(
            rec.request_type(),
            if access == Access::Read {
                FaultRequestType::Read
            } else {
                FaultRequestType::Write
            }
        );
    };
    // 0x5 write to a read-only page, 0x6 read of a write-only page.
    check(&mut rig, DEV, 0x1008, Access::Write, 0x5);
    check(&mut rig, DEV, 0x2008, Access::Read, 0x6);
    // A not-present second-stage entry: no R and no W.
    check(&mut rig, DEV, 0x3000, Access::Read, 0x6);
    // 0x4 beyond the 48-bit width.
    check(&mut rig, DEV, 1 << 48, Access::Read, 0x4);
    // 0xC reserved bit (bit 11 SNP without ECAP.SC) in a leaf.
    let leaf = rig
        .map_sl(sl, 4, 0x5000, 0xb000, PageSize::SIZE_4K, true, true)
        .unwrap();
    write_qwords(
        &mut rig,
        leaf,
        &[SlPte::page(0xb000, true, true).raw() | 1 << 11],
    )
    .unwrap();
    check(&mut rig, DEV, 0x5000, Access::Read, 0xC);
    // 0x1 root entry not present (bus 9 has none).
    check(&mut rig, RequesterId::new(0, 9, 0, 0), 0, Access::Read, 0x1);
    // 0x2 context entry not present (device 3:2.0 has none).
    check(&mut rig, RequesterId::new(0, 3, 2, 0), 0, Access::Read, 0x2);
    // 0x3 invalid context entry (TT = 3 reserved).
    let bad_tt = RequesterId::new(0, 3, 3, 0);
    let mut ce = ContextEntry::new(sl, AddressWidth::Bits48, 8, TranslationType::Untranslated);
    ce.set_tt(TranslationType::Reserved);
    rig.set_legacy_context(root, bad_tt, ce).unwrap();
    check(&mut rig, bad_tt, 0, Access::Read, 0x3);
    // 0xB reserved bits in a context entry (bit 7 of the high qword).
    let bad_ctx = RequesterId::new(0, 3, 4, 0);
    let ce = ContextEntry::new(sl, AddressWidth::Bits48, 9, TranslationType::Untranslated);
    let at = rig.set_legacy_context(root, bad_ctx, ce).unwrap();
    write_qwords(&mut rig, at + 8, &[ce.qword(1) | 1 << 7]).unwrap();
    check(&mut rig, bad_ctx, 0, Access::Read, 0xB);
    // 0xA reserved bits in a root entry.
    let bus5 = RequesterId::new(0, 5, 0, 0);
    rig.set_legacy_context(
        root,
        bus5,
        ContextEntry::new(sl, AddressWidth::Bits48, 10, TranslationType::Untranslated),
    )
    .unwrap();
    let re = rig.mem.read_u64(PhysAddr(root + 5 * 16)).unwrap();
    write_qwords(&mut rig, root + 5 * 16, &[re | 1 << 4]).unwrap();
    check(&mut rig, bus5, 0, Access::Read, 0xA);
    // A request with PASID in legacy mode: 0x31.
    let (c, _) = fault_code(rig.request(DEV, Some(5), false, 0x1000, Access::Read));
    assert_eq!(c, 0x31);
    take_record(&mut rig);
    assert_eq!(rig.unit.fault_log().len(), 11);
    assert!(rig.unit.fault_log().iter().all(|f| f.recorded));
}

#[test]
fn fpd_suppresses_recording_but_not_the_log() {
    let (mut rig, root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    let mut ce = ContextEntry::new(sl, AddressWidth::Bits48, DID, TranslationType::Untranslated);
    ce.set_fpd(true);
    rig.set_legacy_context(root, DEV2, ce).unwrap();
    let (c, recorded) = fault_code(rig.dma(DEV2, 0x7000, Access::Read));
    assert_eq!((c, recorded), (0x6, false));
    assert!(!FSTS::PPF.is_set(rig.read32(regs::FSTS)));
    assert!(rig.fault_records().is_empty());
    // A not-present entry with FPD set also blocks silently.
    let mut np = ContextEntry::default();
    np.set_fpd(true);
    let dev = RequesterId::new(0, 3, 5, 0);
    rig.set_legacy_context(root, dev, np).unwrap();
    assert_eq!(fault_code(rig.dma(dev, 0, Access::Read)), (0x2, false));
    let log = rig.unit.fault_log();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|f| !f.recorded));
}

#[test]
fn fault_overflow_and_event_interrupt_state() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.fault_records = 2;
    let (mut rig, _root, _sl) = legacy_rig(cfg);
    // FECTL.IM is set at reset: the first fault sets IP instead of sending.
    assert!(FECTL::IM.is_set(rig.read32(regs::FECTL)));
    rig.write32(regs::FEDATA, 0x41);
    rig.write32(regs::FEADDR, 0xfee0_0000);
    for i in 0..3u64 {
        rig.dma(DEV, 0x10_0000 + i * 0x1000, Access::Read)
            .unwrap_err();
    }
    let fsts = rig.read32(regs::FSTS);
    assert!(
        FSTS::PPF.is_set(fsts) && FSTS::PFO.is_set(fsts),
        "{fsts:#x}"
    );
    assert_eq!(FSTS::FRI.read(fsts), 0);
    assert!(FECTL::IP.is_set(rig.read32(regs::FECTL)));
    assert!(rig.unit.interrupts().is_empty());
    let log = rig.unit.fault_log();
    assert_eq!(log.iter().filter(|f| f.recorded).count(), 2);
    assert!(!log[2].recorded);
    // Unmasking delivers the pending interrupt and clears IP.
    rig.write32(regs::FECTL, 0);
    assert!(!FECTL::IP.is_set(rig.read32(regs::FECTL)));
    let irq = rig.unit.interrupts();
    assert_eq!(irq.len(), 1);
    assert_eq!(
        (irq[0].kind, irq[0].address, irq[0].data),
        (InterruptKind::Fault, 0xfee0_0000, 0x41)
    );
    // F is write-1-to-clear; the records keep their order.
    let recs = rig.handle_faults();
    assert_eq!(
        recs.iter().map(|r| r.fault_info()).collect::<Vec<_>>(),
        vec![0x10_0000, 0x10_1000]
    );
    assert_eq!(rig.read32(regs::FSTS) & 3, 0);
    // With PFO clear and records free, the next fault is recorded in record 0 (the
    // index continues at 0 after wrapping) and sends an interrupt (unmasked).
    rig.dma(DEV, 0x20_0000, Access::Read).unwrap_err();
    assert_eq!(FSTS::FRI.read(rig.read32(regs::FSTS)), 0);
    assert_eq!(rig.unit.interrupts().len(), 2);
    // Writing F = 0 to a record does nothing; writing FSTS read-only bits does nothing.
    let cap = rig.cap();
    rig.write32(regs::fault_recording_offset(cap, 0) + 12, 0);
    assert_eq!(rig.fault_records().len(), 1);
}

#[test]
fn stale_translation_until_register_invalidation() {
    let (mut rig, root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    let leaf = rig
        .map_sl(sl, 4, 0x4000, 0x10_0000, PageSize::SIZE_4K, true, true)
        .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x4010, Access::Read).unwrap().pa,
        PhysAddr(0x10_0010)
    );
    // Remap without invalidating: the IOTLB still holds the old translation.
    write_qwords(&mut rig, leaf, &[SlPte::page(0x20_0000, true, true).raw()]).unwrap();
    assert_eq!(
        rig.dma(DEV, 0x4010, Access::Read).unwrap().pa,
        PhysAddr(0x10_0010)
    );
    // A page-selective invalidation of another domain does not help ...
    assert_eq!(
        rig.iotlb_invalidate(IotlbGranularity::Page, DID + 1, 0x4000, 0)
            .unwrap(),
        3
    );
    assert_eq!(
        rig.dma(DEV, 0x4010, Access::Read).unwrap().pa,
        PhysAddr(0x10_0010)
    );
    // ... nor one of another page; the right one does.
    rig.iotlb_invalidate(IotlbGranularity::Page, DID, 0x8000, 0)
        .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x4010, Access::Read).unwrap().pa,
        PhysAddr(0x10_0010)
    );
    rig.iotlb_invalidate(IotlbGranularity::Page, DID, 0x4000, 0)
        .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x4010, Access::Read).unwrap().pa,
        PhysAddr(0x20_0010)
    );
    // Unmapping is also invisible until invalidated (domain-selective here).
    write_qwords(&mut rig, leaf, &[0]).unwrap();
    assert!(rig.dma(DEV, 0x4010, Access::Read).is_ok());
    assert_eq!(
        rig.iotlb_invalidate(IotlbGranularity::Domain, DID, 0, 0)
            .unwrap(),
        2
    );
    assert_eq!(fault_code(rig.dma(DEV, 0x4010, Access::Read)).0, 0x6);
    rig.handle_faults();
    // Changing the context entry (new table, new DID) is invisible until the context
    // cache is invalidated for the device with the old DID.
    let sl2 = rig.alloc_table(1).unwrap();
    ok(rig.map_sl(sl2, 4, 0x4000, 0x30_0000, PageSize::SIZE_4K, true, true));
    rig.set_legacy_context(
        root,
        DEV,
        ContextEntry::new(
            sl2,
            AddressWidth::Bits48,
            DID + 1,
            TranslationType::Untranslated,
        ),
    )
    .unwrap();
    assert_eq!(fault_code(rig.dma(DEV, 0x4010, Access::Read)).0, 0x6);
    rig.handle_faults();
    // Device-selective with the wrong DID leaves the entry.
    rig.ccmd_invalidate(ContextGranularity::Device, DID + 5, DEV.sid(), 0)
        .unwrap();
    assert_eq!(fault_code(rig.dma(DEV, 0x4010, Access::Read)).0, 0x6);
    rig.handle_faults();
    assert_eq!(
        rig.ccmd_invalidate(ContextGranularity::Device, DID, DEV.sid(), 0)
            .unwrap(),
        3
    );
    assert_eq!(
        rig.dma(DEV, 0x4010, Access::Read).unwrap().pa,
        PhysAddr(0x30_0010)
    );
}

#[test]
fn caching_mode_caches_not_present_context_entries() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.caching_mode = true;
    let (mut rig, root, sl) = legacy_rig(cfg);
    ok(rig.map_sl(sl, 4, 0, 0x5000, PageSize::SIZE_4K, true, true));
    assert_eq!(fault_code(rig.dma(DEV2, 0, Access::Read)).0, 0x2);
    rig.set_legacy_context(
        root,
        DEV2,
        ContextEntry::new(sl, AddressWidth::Bits48, DID, TranslationType::Untranslated),
    )
    .unwrap();
    assert_eq!(fault_code(rig.dma(DEV2, 0, Access::Read)).0, 0x2);
    rig.ccmd_invalidate(ContextGranularity::Device, 0, DEV2.sid(), 0)
        .unwrap();
    assert_eq!(rig.dma(DEV2, 0, Access::Read).unwrap().pa, PhysAddr(0x5000));
    // Without CM, not-present entries are never cached.
    let (mut rig, root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    assert_eq!(fault_code(rig.dma(DEV2, 0, Access::Read)).0, 0x2);
    ok(rig.map_sl(sl, 4, 0, 0x5000, PageSize::SIZE_4K, true, true));
    rig.set_legacy_context(
        root,
        DEV2,
        ContextEntry::new(sl, AddressWidth::Bits48, DID, TranslationType::Untranslated),
    )
    .unwrap();
    assert_eq!(rig.dma(DEV2, 0, Access::Read).unwrap().pa, PhysAddr(0x5000));
}

#[test]
fn stale_translation_until_queued_invalidation() {
    let (mut rig, root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    ok(rig.enable_qi(0, false));
    assert!(GSTS::QIES.is_set(rig.gsts()));
    let leaf = rig
        .map_sl(sl, 4, 0x20_0000, 0x40_0000, PageSize::SIZE_2M, true, true)
        .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x20_1000, Access::Write).unwrap().pa,
        PhysAddr(0x40_1000)
    );
    write_qwords(
        &mut rig,
        leaf,
        &[SlPte::large_page(0x80_0000, true, true).raw()],
    )
    .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x20_1000, Access::Write).unwrap().pa,
        PhysAddr(0x40_1000)
    );
    // Register-based invalidation is refused while QI is on: still stale.
    let before = rig.unit.diagnostics().len();
    rig.iotlb_invalidate(IotlbGranularity::Global, 0, 0, 0)
        .unwrap();
    assert!(rig.unit.diagnostics().len() > before);
    assert_eq!(
        rig.dma(DEV, 0x20_1000, Access::Write).unwrap().pa,
        PhysAddr(0x40_1000)
    );
    // A page-selective descriptor for one 4 KiB page inside the 2 MiB page removes it.
    ok(rig.qi_sync(&[Descriptor::Iotlb {
        granularity: IotlbGranularity::Page,
        dw: true,
        dr: true,
        did: DID,
        addr: 0x21_5000,
        ih: false,
        am: 0,
    }]));
    assert_eq!(
        rig.dma(DEV, 0x20_1000, Access::Write).unwrap().pa,
        PhysAddr(0x80_1000)
    );
    // Context change through a context-cache descriptor.
    let sl2 = rig.alloc_table(1).unwrap();
    ok(rig.map_sl(sl2, 4, 0x20_0000, 0xc0_0000, PageSize::SIZE_2M, true, true));
    rig.set_legacy_context(
        root,
        DEV,
        ContextEntry::new(
            sl2,
            AddressWidth::Bits48,
            DID + 1,
            TranslationType::Untranslated,
        ),
    )
    .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x20_1000, Access::Read).unwrap().pa,
        PhysAddr(0x80_1000)
    );
    ok(rig.qi_sync(&[
        Descriptor::ContextCache {
            granularity: ContextGranularity::Device,
            did: DID,
            sid: DEV.sid(),
            fm: 0,
        },
        Descriptor::Iotlb {
            granularity: IotlbGranularity::Domain,
            dw: false,
            dr: false,
            did: DID,
            addr: 0,
            ih: false,
            am: 0,
        },
    ]));
    assert_eq!(
        rig.dma(DEV, 0x20_1000, Access::Read).unwrap().pa,
        PhysAddr(0xc0_1000)
    );
    assert!(rig.unit.stats().descriptors >= 5);
}

#[test]
fn qi_wait_descriptor_status_write_and_completion_interrupt() {
    let (mut rig, _root, _sl) = legacy_rig(VtdConfig::legacy(BASE));
    ok(rig.enable_qi(1, false));
    let status = rig.alloc_table(1).unwrap();
    rig.write32(regs::IEDATA, 0x55);
    rig.write32(regs::IEADDR, 0xfee0_1000);
    ok(rig.qi_submit(&[Descriptor::Wait {
        interrupt: true,
        status_write: true,
        fence: false,
        page_drain: false,
        status_data: 0xcafe_f00d,
        status_addr: status + 0x40,
    }]));
    assert_eq!(
        rig.mem.read_u32(PhysAddr(status + 0x40)).unwrap(),
        0xcafe_f00d
    );
    assert_eq!(rig.read64(regs::IQH), rig.read64(regs::IQT));
    assert!(ICS::IWC.is_set(rig.read32(regs::ICS)));
    // IECTL.IM is set at reset, so the completion is pending, not sent.
    assert!(IECTL::IP.is_set(rig.read32(regs::IECTL)));
    rig.write32(regs::IECTL, 0);
    assert_eq!(
        rig.unit.interrupts().last().map(|i| (i.kind, i.data)),
        Some((InterruptKind::InvalidationCompletion, 0x55))
    );
    // IWC is write-1-to-clear.
    rig.write32(regs::ICS, 1);
    assert!(!ICS::IWC.is_set(rig.read32(regs::ICS)));
    // The queue wraps: 8 KiB of 16-byte descriptors is 512 slots.
    for i in 0..600u32 {
        ok(rig.qi_submit(&[Descriptor::Wait {
            interrupt: false,
            status_write: true,
            fence: false,
            page_drain: false,
            status_data: i,
            status_addr: status,
        }]));
    }
    assert_eq!(rig.mem.read_u32(PhysAddr(status)).unwrap(), 599);
    assert!(!rig.iqe());
}

#[test]
fn bad_descriptor_sets_iqe_and_stops_the_queue() {
    let (mut rig, _root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    let qbase = rig.enable_qi(0, false).unwrap();
    let leaf = rig
        .map_sl(sl, 4, 0x1000, 0x2000, PageSize::SIZE_4K, true, true)
        .unwrap();
    rig.dma(DEV, 0x1000, Access::Read).unwrap();
    write_qwords(&mut rig, leaf, &[SlPte::page(0x3000, true, true).raw()]).unwrap();
    // Slot 0: a valid wait; slot 1: type 9 (invalid here); slot 2: IOTLB global.
    let status = rig.alloc_table(1).unwrap();
    let wait = QiDescriptor::encode(&Descriptor::Wait {
        interrupt: false,
        status_write: true,
        fence: false,
        page_drain: false,
        status_data: 1,
        status_addr: status,
    });
    write_qwords(&mut rig, qbase, &wait.qwords()[..2]).unwrap();
    write_qwords(&mut rig, qbase + 16, &[9, 0]).unwrap();
    let global = QiDescriptor::encode(&Descriptor::Iotlb {
        granularity: IotlbGranularity::Global,
        dw: false,
        dr: false,
        did: 0,
        addr: 0,
        ih: false,
        am: 0,
    });
    write_qwords(&mut rig, qbase + 32, &global.qwords()[..2]).unwrap();
    rig.write64(regs::IQT, 48);
    assert!(rig.iqe());
    assert_eq!(rig.iqei(), 3);
    assert_eq!(rig.read64(regs::IQH), 16, "IQH stays on the bad descriptor");
    assert_eq!(rig.mem.read_u32(PhysAddr(status)).unwrap(), 1);
    // The IOTLB invalidation behind it did not run: the translation is stale.
    assert_eq!(
        rig.dma(DEV, 0x1000, Access::Read).unwrap().pa,
        PhysAddr(0x2000)
    );
    // A fault event was raised (masked: IP).
    assert!(FECTL::IP.is_set(rig.read32(regs::FECTL)));
    // Software replaces the descriptor and clears IQE: processing resumes at IQH.
    let wait2 = QiDescriptor::encode(&Descriptor::Wait {
        interrupt: false,
        status_write: true,
        fence: false,
        page_drain: false,
        status_data: 2,
        status_addr: status,
    });
    write_qwords(&mut rig, qbase + 16, &wait2.qwords()[..2]).unwrap();
    rig.write32(regs::FSTS, m32(FSTS::IQE));
    assert!(!rig.iqe());
    assert_eq!(rig.read64(regs::IQH), 48);
    assert_eq!(rig.mem.read_u32(PhysAddr(status)).unwrap(), 2);
    assert_eq!(
        rig.dma(DEV, 0x1000, Access::Read).unwrap().pa,
        PhysAddr(0x3000)
    );
    assert!(!FECTL::IP.is_set(rig.read32(regs::FECTL)));
    // A reserved bit in an IOTLB descriptor: IQEI 4.
    let mut bad = global;
    bad.set_qword(0, bad.qword(0) | 1 << 40);
    write_qwords(&mut rig, qbase + 48, &bad.qwords()[..2]).unwrap();
    rig.write64(regs::IQT, 64);
    assert!(rig.iqe());
    assert_eq!(rig.iqei(), 4);
    assert_eq!(rig.read64(regs::IQH), 48);
    // A PASID-cache descriptor on a unit without scalable mode is an invalid type for it.
    write_qwords(
        &mut rig,
        qbase + 48,
        &QiDescriptor::encode(&Descriptor::PasidCache {
            granularity: PasidCacheGranularity::Global,
            did: 0,
            pasid: 0,
        })
        .qwords()[..2],
    )
    .unwrap();
    rig.write32(regs::FSTS, m32(FSTS::IQE));
    assert!(rig.iqe());
    assert_eq!(rig.iqei(), 3);
    // A descriptor fetched from poisoned memory: IQEI 2 (fetch error).
    let mut rig2 = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    rig2.write64(regs::IQT, 0);
    rig2.write64(regs::IQA, 0x3000_0000);
    ok(rig2.gcmd(m32(GCMD::QIE), true));
    rig2.write64(regs::IQT, 16);
    assert!(rig2.iqe());
    assert_eq!(rig2.iqei(), 2);
}

#[test]
fn poisoned_table_memory_is_an_emulator_error() {
    let (mut rig, root, _sl) = legacy_rig(VtdConfig::legacy(BASE));
    // A context entry whose second-stage root was never written.
    let dev = RequesterId::new(0, 3, 6, 0);
    rig.set_legacy_context(
        root,
        dev,
        ContextEntry::new(
            0x2000_0000,
            AddressWidth::Bits48,
            4,
            TranslationType::Untranslated,
        ),
    )
    .unwrap();
    match rig.dma(dev, 0x1000, Access::Read) {
        Err(DmaError::Memory { error, .. }) => assert_eq!(error.addr(), PhysAddr(0x2000_0000)),
        other => panic!("expected a memory error, got {other:?}"),
    }
    // A root pointer outside RAM.
    let mut rig2 = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    ok(rig2.set_root_table(0x8000_0000, Ttm::Legacy));
    ok(rig2.enable_translation());
    assert!(matches!(
        rig2.dma(DEV, 0, Access::Read),
        Err(DmaError::Memory { .. })
    ));
    assert!(rig2.unit.fault_log().is_empty());
}

#[test]
fn register_reserved_and_read_only_bits() {
    let mut rig = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    let cap = rig.read64(regs::CAP);
    rig.write64(regs::CAP, 0);
    assert_eq!(rig.read64(regs::CAP), cap);
    let n = rig.unit.diagnostics().len();
    rig.write32(regs::FECTL, 0x8000_0001);
    assert_eq!(rig.read32(regs::FECTL), 0x8000_0000);
    assert_eq!(rig.unit.diagnostics().len(), n + 1);
    // IP is read-only.
    rig.write32(regs::FECTL, 0x4000_0000);
    assert_eq!(rig.read32(regs::FECTL), 0);
    rig.write64(regs::RTADDR, 0x1000 | 0x3);
    assert_eq!(rig.read64(regs::RTADDR), 0x1000);
    // 32-bit halves of a 64-bit register.
    rig.write32(regs::RTADDR + 4, 0x1);
    assert_eq!(rig.read64(regs::RTADDR), 0x1_0000_1000);
    assert_eq!(rig.read32(regs::RTADDR + 4), 1);
    assert_eq!(rig.read32(regs::VER), 0x10);
    // CCMD.ICC reads back clear, CAIG reports the granularity performed.
    rig.ccmd_invalidate(ContextGranularity::Domain, 3, 0, 0)
        .unwrap();
    assert_eq!((rig.read64(regs::CCMD) >> 59) & 3, 2);
    // An unimplemented offset reads 0 and writes are diagnosed.
    assert_eq!(rig.read32(0x50), 0);
    let n = rig.unit.diagnostics().len();
    rig.write32(0x50, 1);
    assert_eq!(rig.unit.diagnostics().len(), n + 1);
    // Register-based invalidation does not exist from VER 6.
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.version_major = 6;
    let mut rig6 = VtdRig::new(cfg).unwrap();
    rig6.write64(regs::CCMD, 1 << 63 | 1 << 61);
    assert!(rig6
        .unit
        .diagnostics()
        .iter()
        .any(|d| d.contains("VER major 6")));
}

// ----- scalable mode -------------------------------------------------------------------

struct Sm {
    rig: VtdRig,
    root: u64,
    dir: u64,
    sl: u64,
    fl: u64,
}

const SM_DID: u16 = 0x21;
const FL_DID: u16 = 0x22;
const PASID_FL: u32 = 5;
const PASID_PT: u32 = 6;

/// Scalable rig: DEV with PASIDE, RID_PASID 0 → second stage (4-level), PASID 5 →
/// first stage (4-level), PASID 6 → pass-through.
fn scalable_rig(cfg: VtdConfig) -> Sm {
    let mut rig = VtdRig::new(cfg).unwrap();
    let root = rig.alloc_root_table().unwrap();
    let dir = rig.alloc_table(1).unwrap();
    let sl = rig.alloc_table(1).unwrap();
    let fl = rig.alloc_table(1).unwrap();
    let mut ce = ScalableContextEntry::new(dir, 2);
    ce.set_paside(true);
    rig.set_scalable_context(root, DEV, ce).unwrap();
    rig.set_pasid_entry(
        dir,
        0,
        PasidEntry::second_stage(sl, AddressWidth::Bits48, SM_DID),
    )
    .unwrap();
    rig.set_pasid_entry(
        dir,
        PASID_FL,
        PasidEntry::first_stage(fl, Flpm::Level4, FL_DID),
    )
    .unwrap();
    rig.set_pasid_entry(dir, PASID_PT, PasidEntry::new(Pgtt::PassThrough, SM_DID))
        .unwrap();
    ok(rig.enable_qi(0, true));
    ok(rig.set_root_table(root, Ttm::Scalable));
    ok(rig.qi_sync(&[
        Descriptor::ContextCache {
            granularity: ContextGranularity::Global,
            did: 0,
            sid: 0,
            fm: 0,
        },
        Descriptor::PasidCache {
            granularity: PasidCacheGranularity::Global,
            did: 0,
            pasid: 0,
        },
        Descriptor::Iotlb {
            granularity: IotlbGranularity::Global,
            dw: false,
            dr: false,
            did: 0,
            addr: 0,
            ih: false,
            am: 0,
        },
    ]));
    ok(rig.enable_translation());
    Sm {
        rig,
        root,
        dir,
        sl,
        fl,
    }
}

#[test]
fn scalable_second_stage_first_stage_and_pass_through() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let rig = &mut s.rig;
    ok(rig.map_sl(s.sl, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, true));
    ok(rig.map_sl(
        s.sl,
        4,
        0x40_0000,
        0x80_0000,
        PageSize::SIZE_2M,
        true,
        false,
    ));
    let fl4k = rig
        .map_fl(s.fl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, true)
        .unwrap();
    ok(rig.map_fl(s.fl, 4, 0x20_0000, 0xa0_0000, PageSize::SIZE_2M, false));
    ok(rig.map_fl(s.fl, 4, 0x4000_0000, 0x1_0000_0000, PageSize::SIZE_1G, true));
    // Requests without PASID use RID_PASID (0): second stage.
    assert_eq!(
        rig.dma(DEV, 0x1010, Access::Write).unwrap().pa,
        PhysAddr(0x7010)
    );
    let t = rig.dma(DEV, 0x41_0000, Access::Read).unwrap();
    assert_eq!(
        (t.pa, t.page_size),
        (PhysAddr(0x81_0000), PageSize::SIZE_2M)
    );
    // PASID 5: first stage, 4K / 2M / 1G.
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1010, Access::Write)
            .unwrap()
            .pa,
        PhysAddr(0x9010)
    );
    let t = rig
        .request(DEV, Some(PASID_FL), false, 0x20_0008, Access::Read)
        .unwrap();
    assert_eq!(
        (t.pa, t.page_size, t.perms.write),
        (PhysAddr(0xa0_0008), PageSize::SIZE_2M, false)
    );
    let t = rig
        .request(DEV, Some(PASID_FL), false, 0x4000_1234, Access::Write)
        .unwrap();
    assert_eq!(
        (t.pa, t.page_size),
        (PhysAddr(0x1_0000_1234), PageSize::SIZE_1G)
    );
    // The first-stage walk set A (all levels) and D (the written leaf).
    let v = rig.mem.read_u64(PhysAddr(fl4k)).unwrap();
    assert_eq!(v & (FL_A | FL_D), FL_A | FL_D);
    let top = rig.mem.read_u64(PhysAddr(s.fl)).unwrap();
    assert_ne!(top & FL_A, 0);
    // PASID 6: pass-through.
    assert_eq!(
        rig.request(DEV, Some(PASID_PT), false, 0xabc_d000, Access::Write)
            .unwrap()
            .pa,
        PhysAddr(0xabc_d000)
    );
    assert!(
        rig.unit.fault_log().is_empty(),
        "{:?}",
        rig.unit.fault_log()
    );
    assert!(
        rig.unit.diagnostics().is_empty(),
        "{:?}",
        rig.unit.diagnostics()
    );
}

#[test]
fn scalable_first_stage_five_level() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let fl5 = s.rig.alloc_table(1).unwrap();
    s.rig
        .set_pasid_entry(s.dir, 9, PasidEntry::first_stage(fl5, Flpm::Level5, FL_DID))
        .unwrap();
    ok(s.rig.map_fl(
        fl5,
        5,
        0x00ff_0000_0000_0000,
        0x5000,
        PageSize::SIZE_4K,
        true,
    ));
    assert_eq!(
        s.rig
            .request(DEV, Some(9), false, 0x00ff_0000_0000_0040, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x5040)
    );
    // 5-level needs CAP.FL5LP.
    let mut cfg = VtdConfig::scalable(BASE);
    cfg.fl5lp = false;
    let mut s2 = scalable_rig(cfg);
    s2.rig
        .set_pasid_entry(
            s2.dir,
            9,
            PasidEntry::first_stage(fl5, Flpm::Level5, FL_DID),
        )
        .unwrap();
    assert_eq!(
        fault_code(s2.rig.request(DEV, Some(9), false, 0, Access::Read)).0,
        0x5B
    );
}

#[test]
fn scalable_fault_reasons_reach_the_recording_registers() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    ok(s.rig
        .map_sl(s.sl, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, false));
    let fl_ro = s
        .rig
        .map_fl(s.fl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, false)
        .unwrap();
    let fl_leaf = s
        .rig
        .map_fl(s.fl, 4, 0x60_0000, 0xe0_0000, PageSize::SIZE_2M, true)
        .unwrap();
    let check = |rig: &mut VtdRig,
                 rid: RequesterId,
                 pasid: Option<u32>,
                 privileged: bool,
                 iova: u64,
                 access: Access,
                 code: u8| {
        let (c, recorded) = fault_code(rig.request(rid, pasid, privileged, iova, access));
        assert_eq!(c, code as u32, "pasid {pasid:?} iova {iova:#x}");
        assert!(recorded);
        let rec = take_record(rig);
        assert_eq!(rec.reason(), code);
        assert_eq!(rec.pasid(), pasid);
        assert_eq!(rec.sid(), rid.sid());
    };
    let rig = &mut s.rig;
    // Second stage: no write (0x85), not present (0x79, SSL.2), beyond width (0x83).
    check(rig, DEV, None, false, 0x1000, Access::Write, 0x85);
    check(rig, DEV, None, false, 0x5000, Access::Read, 0x79);
    check(rig, DEV, None, false, 1 << 48, Access::Read, 0x83);
    // First stage: read-only page (0x85), not present (0x71), supervisor page for a
    // user request (0x81), non-canonical (0x80), reserved bit (0x72).
    check(rig, DEV, Some(PASID_FL), false, 0x1000, Access::Write, 0x85);
    check(rig, DEV, Some(PASID_FL), false, 0x3000, Access::Read, 0x71);
    write_qwords(rig, fl_ro, &[FlPte::page(0x9000, false).raw() & !4]).unwrap();
    // The read-only translation is cached: invalidate it before the next check.
    ok(rig.qi_sync(&[Descriptor::PasidIotlb {
        granularity: PasidIotlbGranularity::Pasid,
        did: FL_DID,
        pasid: PASID_FL,
        addr: 0,
        ih: false,
        am: 0,
    }]));
    check(rig, DEV, Some(PASID_FL), false, 0x1000, Access::Read, 0x81);
    check(
        rig,
        DEV,
        Some(PASID_FL),
        false,
        0x0000_8000_0000_0000,
        Access::Read,
        0x80,
    );
    // Bit 13 of a 2 MiB leaf is reserved (above the PAT bit, below the page address).
    write_qwords(
        rig,
        fl_leaf,
        &[FlPte::large_page(0xe0_0000, true).raw() | 1 << 13],
    )
    .unwrap();
    check(
        rig,
        DEV,
        Some(PASID_FL),
        false,
        0x60_0000,
        Access::Read,
        0x72,
    );
    // Privileged request with SRE = 0: 0x5D.
    check(
        rig,
        DEV,
        Some(PASID_FL),
        true,
        0x60_0000,
        Access::Read,
        0x5D,
    );
    // PASID table entry not present (0x59), directory entry not present (0x51), PASID
    // beyond the directory (0x46; PDTS 2 → 512 entries → PASIDs below 32768).
    check(rig, DEV, Some(7), false, 0, Access::Read, 0x59);
    check(rig, DEV, Some(64), false, 0, Access::Read, 0x51);
    check(rig, DEV, Some(1 << 15), false, 0, Access::Read, 0x46);
    // Reserved bits in a PASID entry (qword 3) → 0x5A; PGTT 0 → 0x5B; in a directory
    // entry → 0x52.
    let mut pe = PasidEntry::second_stage(s.sl, AddressWidth::Bits48, SM_DID);
    pe.set_qword(3, 1);
    rig.set_pasid_entry(s.dir, 10, pe).unwrap();
    check(rig, DEV, Some(10), false, 0, Access::Read, 0x5A);
    let mut pe = PasidEntry::second_stage(s.sl, AddressWidth::Bits48, SM_DID);
    pe.set_pgtt_bits(0);
    rig.set_pasid_entry(s.dir, 11, pe).unwrap();
    check(rig, DEV, Some(11), false, 0, Access::Read, 0x5B);
    rig.set_pasid_entry(s.dir, 128, PasidEntry::new(Pgtt::PassThrough, 1))
        .unwrap();
    let de = rig.mem.read_u64(PhysAddr(s.dir + 2 * 8)).unwrap();
    write_qwords(rig, s.dir + 2 * 8, &[de | 1 << 5]).unwrap();
    check(rig, DEV, Some(128), false, 0, Access::Read, 0x52);
    // Context: not present (0x41), PASIDE clear (0x45), reserved (0x42), DTE without
    // ECAP.DT (0x43); root entry half not present (0x39) and reserved (0x3A).
    check(rig, DEV2, None, false, 0, Access::Read, 0x41);
    let dev_nopasid = RequesterId::new(0, 3, 2, 0);
    rig.set_scalable_context(s.root, dev_nopasid, ScalableContextEntry::new(s.dir, 2))
        .unwrap();
    check(
        rig,
        dev_nopasid,
        Some(PASID_FL),
        false,
        0,
        Access::Read,
        0x45,
    );
    let dev_rsvd = RequesterId::new(0, 3, 3, 0);
    let mut ce = ScalableContextEntry::new(s.dir, 2);
    ce.set_qword(2, 1);
    rig.set_scalable_context(s.root, dev_rsvd, ce).unwrap();
    check(rig, dev_rsvd, None, false, 0, Access::Read, 0x42);
    let dev_dte = RequesterId::new(0, 3, 4, 0);
    let mut ce = ScalableContextEntry::new(s.dir, 2);
    ce.set_bit(2, true);
    rig.set_scalable_context(s.root, dev_dte, ce).unwrap();
    check(rig, dev_dte, None, false, 0, Access::Read, 0x43);
    check(
        rig,
        RequesterId::new(0, 3, 16, 0),
        None,
        false,
        0,
        Access::Read,
        0x39,
    );
    let re = rig.mem.read_u64(PhysAddr(s.root + 3 * 16)).unwrap();
    write_qwords(rig, s.root + 3 * 16, &[re | 1 << 3]).unwrap();
    check(
        rig,
        RequesterId::new(0, 3, 9, 0),
        None,
        false,
        0,
        Access::Read,
        0x3A,
    );
}

#[test]
fn scalable_second_stage_reserved_bit_and_privileged_with_sre() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let leaf = s
        .rig
        .map_sl(s.sl, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, true)
        .unwrap();
    write_qwords(
        &mut s.rig,
        leaf,
        &[SlPte::page(0x7000, true, true).raw() | 1 << 11],
    )
    .unwrap();
    assert_eq!(fault_code(s.rig.dma(DEV, 0x1000, Access::Read)).0, 0x7A);
    // SRE set: a privileged request may write a read-only first-stage page when WPE = 0.
    let mut pe = PasidEntry::first_stage(s.fl, Flpm::Level4, FL_DID);
    pe.set_sre(true);
    s.rig.set_pasid_entry(s.dir, 12, pe).unwrap();
    ok(s.rig
        .map_fl(s.fl, 4, 0x5000, 0xb000, PageSize::SIZE_4K, false));
    assert!(s
        .rig
        .request(DEV, Some(12), true, 0x5000, Access::Write)
        .is_ok());
    pe.set_wpe(true);
    s.rig.set_pasid_entry(s.dir, 13, pe).unwrap();
    assert_eq!(
        fault_code(s.rig.request(DEV, Some(13), true, 0x5000, Access::Write)).0,
        0x85
    );
}

#[test]
fn scalable_stale_translation_until_pasid_cache_and_piotlb_invalidation() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let leaf = s
        .rig
        .map_fl(s.fl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, true)
        .unwrap();
    let rig = &mut s.rig;
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x9000)
    );
    write_qwords(rig, leaf, &[FlPte::page(0xc000, true).raw()]).unwrap();
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x9000)
    );
    // An IOTLB (type 2) descriptor addresses second-stage entries only.
    ok(rig.qi_sync(&[Descriptor::Iotlb {
        granularity: IotlbGranularity::Domain,
        dw: false,
        dr: false,
        did: FL_DID,
        addr: 0,
        ih: false,
        am: 0,
    }]));
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x9000)
    );
    // A PASID-based IOTLB invalidation for another PASID does nothing; the right one works.
    let piotlb = |pasid| Descriptor::PasidIotlb {
        granularity: PasidIotlbGranularity::Page,
        did: FL_DID,
        pasid,
        addr: 0x1000,
        ih: false,
        am: 0,
    };
    ok(rig.qi_sync(&[piotlb(PASID_FL + 1)]));
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x9000)
    );
    ok(rig.qi_sync(&[piotlb(PASID_FL)]));
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0xc000)
    );
    // Switching PASID 5 to pass-through is invisible until the PASID cache is
    // invalidated (PASID-selective, old DID), then the IOTLB.
    rig.set_pasid_entry(s.dir, PASID_FL, PasidEntry::new(Pgtt::PassThrough, FL_DID))
        .unwrap();
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0xc000)
    );
    ok(rig.qi_sync(&[Descriptor::PasidCache {
        granularity: PasidCacheGranularity::Pasid,
        did: FL_DID,
        pasid: PASID_FL,
    }]));
    assert_eq!(
        rig.request(DEV, Some(PASID_FL), false, 0x1000, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x1000)
    );
    // Second stage: stale until an IOTLB descriptor for the domain.
    let sl_leaf = rig
        .map_sl(s.sl, 4, 0x3000, 0x11000, PageSize::SIZE_4K, true, true)
        .unwrap();
    assert_eq!(
        rig.dma(DEV, 0x3000, Access::Read).unwrap().pa,
        PhysAddr(0x11000)
    );
    write_qwords(rig, sl_leaf, &[SlPte::page(0x12000, true, true).raw()]).unwrap();
    assert_eq!(
        rig.dma(DEV, 0x3000, Access::Read).unwrap().pa,
        PhysAddr(0x11000)
    );
    ok(rig.qi_sync(&[Descriptor::Iotlb {
        granularity: IotlbGranularity::Page,
        dw: false,
        dr: false,
        did: SM_DID,
        addr: 0x3000,
        ih: false,
        am: 0,
    }]));
    assert_eq!(
        rig.dma(DEV, 0x3000, Access::Read).unwrap().pa,
        PhysAddr(0x12000)
    );
}

#[test]
fn scalable_mode_refuses_register_invalidation_and_narrow_descriptors() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let leaf = s
        .rig
        .map_sl(s.sl, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, true)
        .unwrap();
    s.rig.dma(DEV, 0x1000, Access::Read).unwrap();
    write_qwords(&mut s.rig, leaf, &[SlPte::page(0x8000, true, true).raw()]).unwrap();
    // Turn QI off so only the scalable-mode rule refuses the register.
    ok(s.rig.gcmd(m32(GCMD::QIE), false));
    s.rig
        .iotlb_invalidate(IotlbGranularity::Global, 0, 0, 0)
        .unwrap();
    assert!(s
        .rig
        .unit
        .diagnostics()
        .iter()
        .any(|d| d.contains("not legacy")));
    assert_eq!(
        s.rig.dma(DEV, 0x1000, Access::Read).unwrap().pa,
        PhysAddr(0x7000)
    );
    // 128-bit descriptors in scalable mode are an invalid descriptor width (IQEI 5).
    ok(s.rig.enable_qi(0, false));
    ok(s.rig.qi_submit(&[Descriptor::Iotlb {
        granularity: IotlbGranularity::Global,
        dw: false,
        dr: false,
        did: 0,
        addr: 0,
        ih: false,
        am: 0,
    }]));
    assert!(s.rig.iqe());
    assert_eq!(s.rig.iqei(), 5);
}

#[test]
fn save_and_restore_rebuild_the_unit() {
    let (mut rig, _root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    ok(rig.enable_qi(0, false));
    ok(rig.map_sl(sl, 4, 0x1000, 0x5000, PageSize::SIZE_4K, true, false));
    rig.write32(regs::FEDATA, 0x22);
    rig.dma(DEV, 0x1000, Access::Write).unwrap_err();
    let saved = rig.unit.save_registers();
    let mut back = VtdUnit::restore(BASE, &saved).unwrap();
    assert_eq!(back.save_registers(), saved);
    assert_eq!(back.iotlb_entries(), 0);
    assert!(back.fault_log().is_empty());
    // The restored unit translates the same way and keeps recording after the old record.
    let mut rig2 = VtdRig {
        mem: rig.mem,
        unit: back,
        alloc: rig.alloc,
    };
    assert_eq!(
        rig2.dma(DEV, 0x1000, Access::Read).unwrap().pa,
        PhysAddr(0x5000)
    );
    rig2.dma(DEV, 0x2000, Access::Read).unwrap_err();
    let recs = rig2.handle_faults();
    assert_eq!(
        recs.iter().map(|r| r.reason()).collect::<Vec<_>>(),
        vec![0x5, 0x6]
    );
    ok(rig2.qi_sync(&[]));
    back = VtdUnit::restore(BASE, &saved).unwrap();
    assert!(back.diagnostics().is_empty());
    // Restore refuses bad input with a typed error.
    let drop = |off: u64| {
        saved
            .iter()
            .copied()
            .filter(|r| r.offset != off)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        VtdUnit::restore(BASE, &drop(regs::CAP)).unwrap_err(),
        VtdRestoreError::Missing {
            register: "CAP",
            offset: 0x8
        }
    );
    let mut wide = saved.clone();
    wide.iter_mut()
        .find(|r| r.offset == regs::GSTS)
        .unwrap()
        .width = 8;
    assert!(matches!(
        VtdUnit::restore(BASE, &wide),
        Err(VtdRestoreError::BadWidth { offset: 0x1c, .. })
    ));
    let mut extra = saved.clone();
    extra.push(RegisterValue {
        offset: 0x50,
        width: 4,
        value: 0,
    });
    assert!(matches!(
        VtdUnit::restore(BASE, &extra),
        Err(VtdRestoreError::UnknownOffset { offset: 0x50, .. })
    ));
    let mut dup = saved.clone();
    dup.push(saved[0]);
    assert!(matches!(
        VtdUnit::restore(BASE, &dup),
        Err(VtdRestoreError::Duplicate { .. })
    ));
    let mut bad = saved.clone();
    bad.iter_mut()
        .find(|r| r.offset == regs::GSTS)
        .unwrap()
        .value = m32(GSTS::TES) as u64;
    assert!(matches!(
        VtdUnit::restore(BASE, &bad),
        Err(VtdRestoreError::Inconsistent {
            register: "GSTS",
            ..
        })
    ));
    let mut bad_iqt = saved.clone();
    bad_iqt
        .iter_mut()
        .find(|r| r.offset == regs::IQT)
        .unwrap()
        .value = 0x10_0000;
    assert!(matches!(
        VtdUnit::restore(BASE, &bad_iqt),
        Err(VtdRestoreError::Inconsistent {
            register: "IQT",
            ..
        })
    ));
}

#[test]
fn scalable_unit_save_restore_keeps_translation() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    ok(s.rig
        .map_fl(s.fl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, true));
    let saved = s.rig.unit.save_registers();
    let back = VtdUnit::restore(BASE, &saved).unwrap();
    let mut rig2 = VtdRig {
        mem: s.rig.mem,
        unit: back,
        alloc: s.rig.alloc,
    };
    assert!(rig2.translation_enabled());
    assert_eq!(
        rig2.request(DEV, Some(PASID_FL), false, 0x1008, Access::Read)
            .unwrap()
            .pa,
        PhysAddr(0x9008)
    );
    ok(rig2.qi_sync(&[]));
}

#[test]
fn page_selective_invalidation_covers_its_address_mask() {
    let (mut rig, _root, sl) = legacy_rig(VtdConfig::legacy(BASE));
    let mut leaves = Vec::new();
    for i in 0..6u64 {
        leaves.push(
            rig.map_sl(
                sl,
                4,
                0x10_0000 + i * 0x1000,
                0x50_0000 + i * 0x1000,
                PageSize::SIZE_4K,
                true,
                true,
            )
            .unwrap(),
        );
    }
    for i in 0..6u64 {
        rig.dma(DEV, 0x10_0000 + i * 0x1000, Access::Read).unwrap();
    }
    for (i, leaf) in leaves.iter().enumerate() {
        write_qwords(
            &mut rig,
            *leaf,
            &[SlPte::page(0x90_0000 + i as u64 * 0x1000, true, true).raw()],
        )
        .unwrap();
    }
    // AM = 2: four pages, the address aligned down to 16 KiB (0x10_0000..0x10_4000).
    assert_eq!(
        rig.iotlb_invalidate(IotlbGranularity::Page, DID, 0x10_2000, 2)
            .unwrap(),
        3
    );
    let got: Vec<u64> = (0..6u64)
        .map(|i| {
            rig.dma(DEV, 0x10_0000 + i * 0x1000, Access::Read)
                .unwrap()
                .pa
                .0
        })
        .collect();
    assert_eq!(
        got,
        vec![0x90_0000, 0x90_1000, 0x90_2000, 0x90_3000, 0x50_4000, 0x50_5000]
    );
    // AM above CAP.MAMV is refused: IAIG 0 and nothing invalidated.
    assert_eq!(
        rig.iotlb_invalidate(IotlbGranularity::Page, DID, 0, 40)
            .unwrap(),
        0
    );
    assert_eq!(
        rig.dma(DEV, 0x10_4000, Access::Read).unwrap().pa.0,
        0x50_4000
    );
}

#[test]
fn invalid_tail_pointer_sets_iqe() {
    let (mut rig, _root, _sl) = legacy_rig(VtdConfig::legacy(BASE));
    ok(rig.enable_qi(0, false));
    // A 4 KiB queue holds offsets below 0x1000.
    rig.write64(regs::IQT, 0x2000);
    assert!(rig.iqe());
    assert_eq!(rig.iqei(), 1);
    assert_eq!(rig.read64(regs::IQH), 0);
}

#[test]
fn second_stage_accessed_and_dirty_flags_with_ssade() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let sl2 = s.rig.alloc_table(1).unwrap();
    let mut pe = PasidEntry::second_stage(sl2, AddressWidth::Bits48, 0x30);
    pe.set_ssade(true);
    s.rig.set_pasid_entry(s.dir, 20, pe).unwrap();
    let leaf = s
        .rig
        .map_sl(sl2, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, true)
        .unwrap();
    s.rig
        .request(DEV, Some(20), false, 0x1000, Access::Read)
        .unwrap();
    let v = s.rig.mem.read_u64(PhysAddr(leaf)).unwrap();
    assert_eq!(v & (SL_A | SL_D), SL_A);
    assert_ne!(s.rig.mem.read_u64(PhysAddr(sl2)).unwrap() & SL_A, 0);
    // A write after a cached read walks again to set the dirty flag.
    s.rig
        .request(DEV, Some(20), false, 0x1008, Access::Write)
        .unwrap();
    let v = s.rig.mem.read_u64(PhysAddr(leaf)).unwrap();
    assert_eq!(v & (SL_A | SL_D), SL_A | SL_D);
    // Without SSADE the second-stage entries are left alone.
    let untouched = s
        .rig
        .map_sl(s.sl, 4, 0x9000, 0x7000, PageSize::SIZE_4K, true, true)
        .unwrap();
    s.rig.dma(DEV, 0x9000, Access::Write).unwrap();
    assert_eq!(
        s.rig.mem.read_u64(PhysAddr(untouched)).unwrap() & (SL_A | SL_D),
        0
    );
}

#[test]
fn dma_through_the_machine_lands_at_the_translated_address() {
    let machine = Machine::with_ram(&[(PhysAddr(0), 1 << 30)]).unwrap();
    let mut m = MachineRig::new(machine, BASE, 16 << 20, 16 << 20);
    let unit = VtdUnit::new(VtdConfig::legacy(BASE)).unwrap();
    m.machine.add_unit(Box::new(unit)).unwrap();
    let agent = m
        .machine
        .add_device(Device {
            rid: DEV,
            pasid: None,
            unit: BASE,
        })
        .unwrap();
    let root = m.alloc_root_table().unwrap();
    let sl = m.alloc_table(1).unwrap();
    m.set_legacy_context(
        root,
        DEV,
        ContextEntry::new(sl, AddressWidth::Bits48, DID, TranslationType::Untranslated),
    )
    .unwrap();
    ok(m.map_sl(sl, 4, 0x4000, 0x20_0000, PageSize::SIZE_4K, true, true));
    ok(m.set_root_table(root, Ttm::Legacy));
    ok(m.enable_translation());
    m.machine
        .dma_write(&agent, iommu_core::Iova(0x4010), b"remapped")
        .unwrap();
    let mut buf = [0u8; 8];
    m.machine.mem().read(PhysAddr(0x20_0010), &mut buf).unwrap();
    assert_eq!(&buf, b"remapped");
    // An unmapped IOVA faults, is recorded in the unit's registers and the machine's log.
    assert!(m
        .machine
        .dma_write(&agent, iommu_core::Iova(0x8000), b"x")
        .is_err());
    assert_eq!(m.machine.fault_log().len(), 1);
    let recs = m.handle_faults();
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].reason(), recs[0].fault_info()), (0x5, 0x8000));
    assert!(m.bus_errors.is_empty());
}

#[test]
fn superpages_follow_cap_sllps() {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.sllps = 0b01;
    let (mut rig, _root, sl) = legacy_rig(cfg);
    assert_eq!(rig.sllps(), 1);
    ok(rig.map_sl(sl, 4, 0x20_0000, 0x40_0000, PageSize::SIZE_2M, true, true));
    ok(rig.map_sl(
        sl,
        4,
        0x80_0000_0000,
        0x4000_0000,
        PageSize::SIZE_1G,
        true,
        true,
    ));
    assert_eq!(
        rig.dma(DEV, 0x20_0010, Access::Read).unwrap().pa,
        PhysAddr(0x40_0010)
    );
    // PS in a PDPE is reserved without 1 GiB support.
    assert_eq!(
        fault_code(rig.dma(DEV, 0x80_0000_0000, Access::Read)).0,
        0xC
    );
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.sllps = 0;
    let (mut rig, _root, sl) = legacy_rig(cfg);
    ok(rig.map_sl(sl, 4, 0x20_0000, 0x40_0000, PageSize::SIZE_2M, true, true));
    assert_eq!(fault_code(rig.dma(DEV, 0x20_0010, Access::Read)).0, 0xC);
}

#[test]
fn reserved_or_unsupported_ttm_is_flagged_and_faults() {
    let mut rig = VtdRig::new(VtdConfig::legacy(BASE)).unwrap();
    let root = rig.alloc_root_table().unwrap();
    // Scalable mode on a unit without ECAP.SMTS.
    ok(rig.set_root_table(root, Ttm::Scalable));
    assert!(rig
        .unit
        .diagnostics()
        .iter()
        .any(|d| d.contains("unsupported")));
    ok(rig.enable_translation());
    assert_eq!(fault_code(rig.dma(DEV, 0, Access::Read)).0, 0x31);
    let n = rig.unit.diagnostics().len();
    ok(rig.set_root_table(root, Ttm::Reserved));
    assert_eq!(rig.unit.diagnostics().len(), n + 1);
    assert_eq!(fault_code(rig.dma(DEV, 0, Access::Read)).0, 0x31);
}

/// Scalable-mode second-stage fault reasons by entry shape: an entry with R = W = 0
/// (leaf or upper level, read or write) is SSL.2 = 0x79; a present entry lacking the
/// requested right is 0x85 (write) / 0x86 (read), also at an upper level; the right is
/// checked before the reserved bits. Sources: VirtualBox dmarDrSecondLevelTranslate
/// (Pte_Not_Present → VTDATFAULT_SSL_2, Perm_*_Denied → SGN_6/SGN_7), Linux's 0x79
/// string "SM: Read/Write permission error in second-level paging entry".
#[test]
fn scalable_second_stage_not_present_is_0x79_and_missing_right_is_0x85_0x86() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let rig = &mut s.rig;
    ok(rig.map_sl(s.sl, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, false));
    ok(rig.map_sl(s.sl, 4, 0x2000, 0x8000, PageSize::SIZE_4K, false, true));
    let code = |rig: &mut VtdRig, iova: u64, access: Access| {
        let (c, recorded) = fault_code(rig.dma(DEV, iova, access));
        assert!(recorded);
        assert_eq!(take_record(rig).reason() as u32, c);
        c
    };
    // Present leaf lacking the right.
    assert_eq!(code(rig, 0x1000, Access::Write), 0x85);
    assert_eq!(code(rig, 0x2000, Access::Read), 0x86);
    // Not-present leaf (R = W = 0) in a present leaf table, read and write.
    assert_eq!(code(rig, 0x3000, Access::Read), 0x79);
    assert_eq!(code(rig, 0x3000, Access::Write), 0x79);
    // Not-present upper-level entry (PML4 index 1).
    assert_eq!(code(rig, 1 << 39, Access::Read), 0x79);
    // A present PML4 entry without W stops a write there (0x85) even though the leaf
    // below is writable; with a reserved bit as well, the missing right still wins.
    ok(rig.map_sl(s.sl, 4, 2 << 39, 0x9000, PageSize::SIZE_4K, true, true));
    let pml4e_at = s.sl + 2 * 8;
    let pml4e = rig.mem.read_u64(PhysAddr(pml4e_at)).unwrap();
    write_qwords(rig, pml4e_at, &[pml4e & !2]).unwrap();
    assert_eq!(code(rig, 2 << 39, Access::Write), 0x85);
    assert_eq!(
        rig.dma(DEV, 2 << 39, Access::Read).unwrap().pa,
        PhysAddr(0x9000)
    );
    // PS (bit 7) is reserved in a PML4 entry.
    write_qwords(rig, pml4e_at, &[(pml4e & !2) | (1 << 7)]).unwrap();
    // The read above cached a second-stage translation: domain-selective IOTLB flush.
    ok(rig.qi_sync(&[Descriptor::Iotlb {
        granularity: IotlbGranularity::Domain,
        dw: false,
        dr: false,
        did: SM_DID,
        addr: 0,
        ih: false,
        am: 0,
    }]));
    assert_eq!(code(rig, 2 << 39, Access::Write), 0x85);
    assert_eq!(code(rig, 2 << 39, Access::Read), 0x7A);
}

/// A first-stage PASID entry bounds input addresses by its AW (30 + 9·AW bits), as
/// QEMU's intel-iommu does: AW = 0 makes every IOVA at or above 1 GiB non-canonical
/// (0x80) although the 4-level tables map it; AW = 1 bounds at 39 bits; AW 4–7 are
/// reserved encodings (invalid PASID entry, 0x5B).
#[test]
fn first_stage_input_is_bounded_by_the_pasid_entry_aw() {
    let mut s = scalable_rig(VtdConfig::scalable(BASE));
    let fl = s.rig.alloc_table(1).unwrap();
    ok(s.rig.map_fl(fl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, true));
    ok(s.rig
        .map_fl(fl, 4, 0x4000_0000, 0x1_0000_0000, PageSize::SIZE_1G, true));
    ok(s.rig
        .map_fl(fl, 4, 1 << 39, 0xa000, PageSize::SIZE_4K, true));
    for (pasid, aw) in [(10u32, 0u64), (11, 1), (12, 2), (13, 4)] {
        let mut pe = PasidEntry::first_stage(fl, Flpm::Level4, FL_DID);
        pe.set_aw(aw);
        s.rig.set_pasid_entry(s.dir, pasid, pe).unwrap();
    }
    let rig = &mut s.rig;
    let req = |rig: &mut VtdRig, pasid: u32, iova: u64| {
        rig.request(DEV, Some(pasid), false, iova, Access::Read)
            .map(|t| t.pa.0)
            .map_err(|e| fault_code(Err(e)).0)
    };
    // AW = 0: below 1 GiB translates, the mapped 1 GiB page does not.
    assert_eq!(req(rig, 10, 0x1008), Ok(0x9008));
    assert_eq!(req(rig, 10, 0x4000_0008), Err(0x80));
    // AW = 1: 39 bits.
    assert_eq!(req(rig, 11, 0x4000_0008), Ok(0x1_0000_0008));
    assert_eq!(req(rig, 11, 1 << 39), Err(0x80));
    // AW = 2: 48 bits, the 4-level paging width.
    assert_eq!(req(rig, 12, 1 << 39), Ok(0xa000));
    // AW = 4: reserved encoding.
    assert_eq!(req(rig, 13, 0x1008), Err(0x5B));
}

/// First-stage walks that fault leave A set in the entries above the faulting one, as
/// x86 paging does (QEMU vtd_iova_to_flpte sets A level by level): a not-present leaf
/// entry, a reserved bit in the leaf, and a write to a read-only leaf all leave A in
/// the PML4E, PDPTE and PDE and nothing in the leaf. Second stage with SSADE alike.
#[test]
fn faulting_walks_set_accessed_in_the_entries_above() {
    // A 48-bit host address width leaves address bits 51:48 of a leaf reserved.
    let mut cfg = VtdConfig::scalable(BASE);
    cfg.mgaw = 48;
    let mut s = scalable_rig(cfg);
    let rig = &mut s.rig;
    let leaf_ro = rig
        .map_fl(s.fl, 4, 0x1000, 0x9000, PageSize::SIZE_4K, false)
        .unwrap();
    // The PML4E → PDPTE → PDE chain above the 4K leaf table.
    let mut chain = vec![s.fl];
    for _ in 0..2 {
        let v = rig.mem.read_u64(PhysAddr(*chain.last().unwrap())).unwrap();
        chain.push(FlPte::from_raw(v).addr());
    }
    let flags = |rig: &mut VtdRig, at: u64| rig.mem.read_u64(PhysAddr(at)).unwrap() & (FL_A | FL_D);
    let clear_a = |rig: &mut VtdRig, chain: &[u64]| {
        for &at in chain {
            let v = rig.mem.read_u64(PhysAddr(at)).unwrap();
            write_qwords(rig, at, &[v & !(FL_A | FL_D)]).unwrap();
        }
    };
    for &at in &chain {
        assert_eq!(flags(rig, at), 0, "fresh tables carry no A");
    }
    // A faulting request with the expected reason leaves A in the chain, nothing in the
    // leaf.
    let faults_with_a_above = |rig: &mut VtdRig, iova: u64, access: Access, code: u32| {
        let (c, _) = fault_code(rig.request(DEV, Some(PASID_FL), false, iova, access));
        assert_eq!(c, code);
        for &at in &chain {
            assert_eq!(flags(rig, at), FL_A, "entry at {at:#x}, fault {code:#x}");
        }
        assert_eq!(flags(rig, leaf_ro), 0, "leaf, fault {code:#x}");
        clear_a(rig, &chain);
    };
    // Not-present leaf entry (0x3000, same leaf table).
    faults_with_a_above(rig, 0x3000, Access::Read, 0x71);
    // Write to the read-only leaf: the entries above get A, the leaf neither A nor D.
    faults_with_a_above(rig, 0x1000, Access::Write, 0x85);
    // Reserved bit in the leaf (address bit 50, above the host address width).
    let leaf_v = rig.mem.read_u64(PhysAddr(leaf_ro)).unwrap();
    write_qwords(rig, leaf_ro, &[leaf_v | (1 << 50)]).unwrap();
    ok(rig.qi_sync(&[Descriptor::PasidIotlb {
        granularity: PasidIotlbGranularity::Pasid,
        did: FL_DID,
        pasid: PASID_FL,
        addr: 0,
        ih: false,
        am: 0,
    }]));
    faults_with_a_above(rig, 0x1000, Access::Read, 0x72);

    // Second stage with SSADE: a not-present leaf leaves A in the entries above.
    let sl2 = rig.alloc_table(1).unwrap();
    let mut pe = PasidEntry::second_stage(sl2, AddressWidth::Bits48, 0x30);
    pe.set_ssade(true);
    rig.set_pasid_entry(s.dir, 20, pe).unwrap();
    let sl_leaf = rig
        .map_sl(sl2, 4, 0x1000, 0x7000, PageSize::SIZE_4K, true, true)
        .unwrap();
    let (c, _) = fault_code(rig.request(DEV, Some(20), false, 0x3000, Access::Read));
    assert_eq!(c, 0x79);
    let mut at = sl2;
    for _ in 0..3 {
        let v = rig.mem.read_u64(PhysAddr(at)).unwrap();
        assert_eq!(v & (SL_A | SL_D), SL_A, "second-stage entry at {at:#x}");
        at = SlPte::from_raw(v).addr();
    }
    assert_eq!(rig.mem.read_u64(PhysAddr(sl_leaf)).unwrap() & SL_A, 0);
}

/// VER/CAP/ECAP of a real unit: an Intel Skylake host (Xeon E3-1200 v6, "Host address
/// width 39"), from the dmesg line `DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap
/// d2008c40660462 ecap f050da` in github.com/asokolsky/my-notes,
/// proxmox-gpu-passthrough.md (the same values appear in many public Linux logs).
const SKYLAKE_VER: u32 = 0x10;
const SKYLAKE_CAP: u64 = 0x00d2_008c_4066_0462;
const SKYLAKE_ECAP: u64 = 0x00f0_50da;

/// A unit built from a real machine's raw CAP/ECAP decodes every field (CAP.DRD,
/// CAP.DWD and ECAP.MHMV included, which the named constructors cannot set) and reads
/// the same values back through its registers.
#[test]
fn unit_from_a_real_machines_cap_ecap_decodes_its_capabilities() {
    let c = VtdConfig::from_registers(BASE, SKYLAKE_VER, SKYLAKE_CAP, SKYLAKE_ECAP).unwrap();
    // CAP: ND 2 (256 domains), PLMR, PHMR, SAGAW 4-level only, MGAW 39, ZLR, fault
    // records at FRO 0x40 (0x400), SLLPS 2M+1G, PSI, one fault record, MAMV 18, DWD, DRD.
    assert_eq!((c.version_major, c.version_minor), (1, 0));
    assert_eq!((c.nd, c.sagaw, c.mgaw, c.sllps), (2, 0b100, 39, 0b11));
    assert_eq!((c.fro, c.fault_records, c.mamv), (0x40, 1, 18));
    assert!(c.plmr && c.phmr && c.zlr && c.psi && c.dwd && c.drd);
    assert!(!c.rwbf && !c.caching_mode && !c.fl1gp && !c.fl5lp && !c.esrtps);
    // ECAP: not coherent (C = 0), QI, IR, EIM, PT, SC, IOTLB registers at IRO 0x50
    // (0x500), MHMV 15; no device TLB, no scalable mode.
    assert!(!c.coherent && c.queued_invalidation && c.interrupt_remapping && c.eim);
    assert!(c.pass_through && c.snoop_control && !c.device_tlb && !c.scalable_mode);
    assert_eq!((c.iro, c.mhmv), (0x50, 15));
    assert_eq!(
        (c.ver(), c.cap(), c.ecap()),
        (SKYLAKE_VER, SKYLAKE_CAP, SKYLAKE_ECAP)
    );

    let mut unit = VtdUnit::from_registers(BASE, SKYLAKE_VER, SKYLAKE_CAP, SKYLAKE_ECAP).unwrap();
    let mut mem = emulator::memory::SparseMemory::new(&[(PhysAddr(0), 1 << 20)]).unwrap();
    assert_eq!(unit.mmio_read(&mut mem, regs::VER, 4), SKYLAKE_VER as u64);
    assert_eq!(unit.mmio_read(&mut mem, regs::CAP, 8), SKYLAKE_CAP);
    assert_eq!(unit.mmio_read(&mut mem, regs::ECAP, 8), SKYLAKE_ECAP);
    assert_eq!(unit.mmio_size(), 0x1000);
    assert_eq!(regs::domain_count(unit.cap()), 256);
    assert_eq!(regs::iotlb_offsets(unit.ecap()), (0x500, 0x508));
    assert_eq!(regs::fault_recording_offset(unit.cap(), 0), 0x400);
    // The named configurations round-trip through their registers.
    for cfg in [VtdConfig::legacy(BASE), VtdConfig::scalable(BASE)] {
        let back = VtdConfig::from_registers(BASE, cfg.ver(), cfg.cap(), cfg.ecap()).unwrap();
        assert_eq!(back, cfg);
    }
}

/// Raw CAP/ECAP values the model cannot be are refused with a typed error naming the
/// field: reserved bits (VER 31:8, CAP 58:57, ECAP 24), SAGAW without a 3/4/5-level
/// table or with the 2-level bit, ND 7, fault-recording registers overlapping the fixed
/// register file or the IOTLB pair, PSS above 19, and capabilities the model does not
/// implement (CAP.AFL, CAP.PI, ECAP.NEST, ECAP.PRS, ECAP.MTS).
#[test]
fn unit_from_registers_refuses_what_the_model_cannot_be() {
    let (v, c, e) = (SKYLAKE_VER, SKYLAKE_CAP, SKYLAKE_ECAP);
    let err =
        |ver: u32, cap: u64, ecap: u64| VtdUnit::from_registers(BASE, ver, cap, ecap).unwrap_err();
    let reserved = |e: VtdConfigError| match e {
        VtdConfigError::Reserved { register, bits } => (register, bits),
        other => panic!("expected a reserved-bit error, got {other:?}"),
    };
    let field = |e: VtdConfigError| match e {
        VtdConfigError::Invalid { field, .. } | VtdConfigError::Unsupported { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    };
    assert_eq!(reserved(err(v | 0x100, c, e)), ("VER", 0x100));
    assert_eq!(reserved(err(v, c | (1 << 57), e)), ("CAP", 1 << 57));
    assert_eq!(reserved(err(v, c, e | (1 << 24))), ("ECAP", 1 << 24));
    let sagaw = regs::field_mask(regs::CAP::SAGAW);
    assert_eq!(field(err(v, c & !sagaw, e)), "CAP.SAGAW");
    assert_eq!(field(err(v, (c & !sagaw) | (1 << 8), e)), "CAP.SAGAW");
    assert_eq!(field(err(v, c | (1 << 8), e)), "CAP.SAGAW");
    assert_eq!(field(err(v, c | 7, e)), "CAP.ND");
    assert_eq!(field(err(v, c | (1 << 3), e)), "CAP.AFL");
    assert_eq!(field(err(v, c | (1 << 59), e)), "CAP.PI");
    assert_eq!(field(err(v, c, e | (1 << 26))), "ECAP.NEST");
    assert_eq!(field(err(v, c, e | (1 << 29))), "ECAP.PRS");
    assert_eq!(field(err(v, c, e | (1 << 25))), "ECAP.MTS");
    let pss = regs::field_value(regs::ECAP::PSS, 20);
    assert_eq!(field(err(v, c, e | pss)), "ECAP.PSS");
    // FRO 0x8 puts the fault record at 0x80, on top of IQH.
    let fro = regs::field_mask(regs::CAP::FRO);
    let at = |units: u64| regs::field_value(regs::CAP::FRO, units);
    assert!(matches!(
        err(v, (c & !fro) | at(0x8), e),
        VtdConfigError::Overlap {
            a: (0x80, 0x90),
            ..
        }
    ));
    // FRO equal to IRO: the fault record and the IVA register share 0x500.
    assert!(matches!(
        err(v, (c & !fro) | at(0x50), e),
        VtdConfigError::Overlap { .. }
    ));
}
