//! The SMMUv3 driver on the emulated SMMU, register by register: Linux's bring-up
//! order, the global invalidation (with TLBI_EL2_ALL where IDR0.HYP), adopt never
//! writing STRTAB_BASE(_CFG) and keeping SMMUEN set while it re-bases the queues, and
//! the ASID and VMID allocators bounded by IDR0.ASID16 / VMID16.

use emulator::smmuv3::SmmuV3Config;
use iommu_core::kho::KhoOut;
use iommu_core::{PhysAddr, RegisterAccess};
use smmuv3::driver::{ErrorKind, Hw, Stage, Unit};
use smmuv3::handover::Selection;
use smmuv3::hw::cmd::{Cmd, Opcode};
use smmuv3::hw::regs::{self, CR0};
use smmuv3::hw::ste::StrtabFmt;
use smmuv3::hw::Granule;
use tests::smmuv3_rig::{preserve_guest, setup, ucfg, Rig, BASE};

/// Logs every register write (offset, value) and forwards it.
struct Log<'a> {
    inner: &'a mut dyn RegisterAccess,
    writes: Vec<(u64, u64)>,
}

impl RegisterAccess for Log<'_> {
    fn read32(&mut self, offset: u64) -> u32 {
        self.inner.read32(offset)
    }
    fn write32(&mut self, offset: u64, value: u32) {
        self.writes.push((offset, value as u64));
        self.inner.write32(offset, value)
    }
    fn read64(&mut self, offset: u64) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.writes.push((offset, value));
        self.inner.write64(offset, value)
    }
}

/// Runs `f` with register writes logged.
fn logged<T>(rig: &mut Rig, f: impl FnOnce(&mut Hw<'_>) -> T) -> (T, Vec<(u64, u64)>) {
    let (mut regs, mut mem) = rig.machine.driver_access(BASE).unwrap();
    let mut log = Log {
        inner: &mut regs,
        writes: Vec::new(),
    };
    let t = {
        let mut hw = Hw {
            regs: &mut log,
            mem: &mut mem,
            pages: &mut rig.pool,
        };
        f(&mut hw)
    };
    (t, log.writes)
}

/// The commands issued between command-queue positions `from` and `to` (no wrap).
fn commands(rig: &Rig, unit: &Unit, from: u32, to: u32) -> Vec<Opcode> {
    let q = unit.command_queue();
    (from..to)
        .map(|i| {
            let at = PhysAddr(q.base.0 + 16 * i as u64);
            let mut b = [0u8; 16];
            iommu_core::PhysMem::read(&*rig.machine.mem(), at, &mut b).unwrap();
            let c = Cmd::from_qwords([
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                u64::from_le_bytes(b[8..].try_into().unwrap()),
            ]);
            c.opcode().unwrap()
        })
        .collect()
}

const ENABLED: u64 = 0b1101; // SMMUEN | EVENTQEN | CMDQEN

/// Linux `arm_smmu_device_reset` (reference §11): CR0 = 0, CR1, CR2, STRTAB_BASE/CFG,
/// CMDQ_BASE/PROD/CONS, CMDQEN, CFGI_ALL + TLBI_NSNH_ALL (+ TLBI_EL2_ALL with HYP) +
/// CMD_SYNC, EVENTQ_BASE/PROD/CONS, EVENTQEN, SMMUEN.
#[test]
fn bring_up_follows_linux_order() {
    for hyp in [false, true] {
        let mut cfg = SmmuV3Config::new(BASE);
        cfg.hyp = hyp;
        let mut rig = Rig::new(cfg);
        let (unit, w) = logged(&mut rig, |hw| Unit::init(hw, &ucfg(StrtabFmt::Linear)));
        let unit = unit.expect("bring-up");
        let offs: Vec<u64> = w.iter().map(|&(o, _)| o).collect();
        assert_eq!(
            offs,
            [
                regs::CR0,
                regs::CR1,
                regs::CR2,
                regs::STRTAB_BASE,
                regs::STRTAB_BASE_CFG,
                regs::CMDQ_BASE,
                regs::CMDQ_PROD,
                regs::CMDQ_CONS,
                regs::CR0,
                regs::CMDQ_PROD,
                regs::EVENTQ_BASE,
                regs::EVENTQ_PROD,
                regs::EVENTQ_CONS,
                regs::CR0,
                regs::CR0,
            ]
        );
        let cr0: Vec<u64> = w.iter().filter(|w| w.0 == regs::CR0).map(|w| w.1).collect();
        assert_eq!(cr0, [0, 0b1000, 0b1100, ENABLED]);
        let n = unit.command_queue().pos;
        let mut want = vec![Opcode::CfgiSteRange, Opcode::TlbiNsnhAll];
        if hyp {
            want.push(Opcode::TlbiEl2All);
        }
        want.push(Opcode::Sync);
        assert_eq!(commands(&rig, &unit, 0, n), want, "HYP {hyp}");
        assert_eq!(rig.hw(|hw| hw.regs.read32(regs::CR0ACK)) as u64, ENABLED);
    }
}

/// Adopt re-bases the queues with SMMUEN kept 1 and never writes STRTAB_BASE or
/// STRTAB_BASE_CFG (IGNORED while SMMUEN = 1, reference §3), then invalidates
/// everything.
#[test]
fn adopt_rebases_queues_with_smmuen_kept_and_never_touches_the_stream_table_base() {
    let mut cfg = SmmuV3Config::new(BASE);
    cfg.hyp = true;
    let mut rig = Rig::new(cfg);
    let (mut unit, doms) = setup(&mut rig, StrtabFmt::TwoLevel, Stage::S1, Granule::K4, 1);
    let (_, sid) = rig.add_master(iommu_core::RequesterId::new(0, 1, 0, 0));
    rig.hw(|hw| unit.attach(hw, sid, doms[0].0)).unwrap();
    let mut kho = KhoOut::new();
    preserve_guest(&mut kho, &doms);
    let sel = Selection {
        domains: vec![doms[0].0],
        masters: vec![sid],
    };
    rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
    rig.hw(|hw| unit.freeze(hw)).unwrap();
    let blob = rig.kexec(&mut kho);
    let preserved = iommu_core::kho::read_preserved(&*rig.machine.mem(), blob).unwrap();
    let (r, w) = logged(&mut rig, |hw| {
        Unit::adopt_with_preserved(hw, &ucfg(StrtabFmt::TwoLevel), blob, preserved)
    });
    let (u, _) = r.unwrap_or_else(|f| panic!("{}", f.error));
    assert!(!w
        .iter()
        .any(|&(o, _)| o == regs::STRTAB_BASE || o == regs::STRTAB_BASE_CFG));
    let cr0: Vec<u64> = w.iter().filter(|w| w.0 == regs::CR0).map(|w| w.1).collect();
    assert!(
        cr0.iter().all(|v| v & CR0::SMMUEN::SET.value as u64 != 0),
        "{cr0:?}"
    );
    assert_eq!(cr0, [0b0001, 0b1001, 0b1101]);
    let n = u.command_queue().pos;
    assert_eq!(
        commands(&rig, &u, 0, n),
        [
            Opcode::CfgiSteRange,
            Opcode::TlbiNsnhAll,
            Opcode::TlbiEl2All,
            Opcode::Sync
        ]
    );
    assert!(rig.machine.unit(BASE).unwrap().diagnostics().is_empty());
}

/// 8-bit ASIDs and VMIDs (IDR0.ASID16 = VMID16 = 0): 255 domains each, ID 0 never
/// handed out, all distinct, then a typed error.
#[test]
fn eight_bit_asids_and_vmids_run_out_with_a_typed_error() {
    for stage in [Stage::S1, Stage::S2] {
        let mut cfg = SmmuV3Config::new(BASE);
        cfg.asid16 = false;
        cfg.vmid16 = false;
        let mut rig = Rig::new(cfg);
        let mut unit = rig
            .hw(|hw| Unit::init(hw, &ucfg(StrtabFmt::Linear)))
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..255 {
            let d = rig
                .hw(|hw| unit.create_domain(hw, stage, Granule::K4))
                .unwrap();
            let d = unit.domain(d).unwrap();
            let id = if stage.s1() { d.asid } else { d.vmid };
            assert!(id != 0 && seen.insert(id), "{stage}: ID {id}");
        }
        let e = rig
            .hw(|hw| unit.create_domain(hw, stage, Granule::K4))
            .unwrap_err();
        let what = if stage.s1() { "ASID" } else { "VMID" };
        assert_eq!(e.kind, ErrorKind::OutOfIds { what });
    }
}

/// Detach makes the master abort (the model caches the STE: only the driver's CFGI_STE
/// makes the change visible); destroy refuses a domain with a master, then frees every
/// table page and gives the ASID back.
#[test]
fn detach_aborts_and_destroy_frees_every_table_page() {
    let mut rig = Rig::new(SmmuV3Config::new(BASE));
    let (mut unit, doms) = setup(&mut rig, StrtabFmt::TwoLevel, Stage::S1, Granule::K4, 1);
    let (did, maps) = doms[0].clone();
    let (a, sid) = rig.add_master(iommu_core::RequesterId::new(0, 1, 0, 0));
    rig.hw(|hw| unit.attach(hw, sid, did)).unwrap();
    let (iova, pa, _) = maps[0];
    rig.dma(&a, iova, pa, 1).unwrap();
    let e = rig.hw(|hw| unit.destroy_domain(hw, did)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::MasterImmutable { sid });
    rig.hw(|hw| unit.detach(hw, sid)).unwrap();
    assert!(rig.blocked(&a, iova));
    let asid = unit.domain(did).unwrap().asid;
    let pages = unit.domain(did).unwrap().tables.page_count();
    let freed = rig.pool.freed();
    rig.hw(|hw| unit.destroy_domain(hw, did)).unwrap();
    assert_eq!(rig.pool.freed() - freed, pages);
    assert!(unit.domain(did).is_none() && !unit.asid_in_use(asid));
    let d = rig
        .hw(|hw| unit.create_domain(hw, Stage::S1, Granule::K4))
        .unwrap();
    assert_eq!(
        unit.domain(d).unwrap().asid,
        asid,
        "a destroyed domain's ASID is free"
    );
}

/// A translation fault is recorded (CD.R = 1) in the event queue and read back once:
/// F_TRANSLATION naming the StreamID and the input address.
#[test]
fn poll_events_reads_a_translation_fault_once() {
    use smmuv3::hw::event::EventType;
    let mut rig = Rig::new(SmmuV3Config::new(BASE));
    let (mut unit, doms) = setup(&mut rig, StrtabFmt::Linear, Stage::S1, Granule::K4, 1);
    let (a, sid) = rig.add_master(iommu_core::RequesterId::new(0, 1, 0, 0));
    rig.hw(|hw| unit.attach(hw, sid, doms[0].0)).unwrap();
    assert!(rig.blocked(&a, 0x7000));
    let ev = rig.hw(|hw| unit.poll_events(hw)).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].event_type(), Some(EventType::FTranslation));
    assert_eq!((ev[0].sid() as u32, ev[0].input_addr()), (sid, 0x7000));
    assert!(rig.hw(|hw| unit.poll_events(hw)).unwrap().is_empty());
}

/// The CD and STEs the driver writes, qword by qword, against the fields Linux sets
/// (`arm_smmu_make_s1_cd`, `arm_smmu_make_cdtable_ste`, `arm_smmu_make_s2_domain_ste`)
/// at the positions of reference §5 and §6. Linux also sets STE.SHCFG = incoming and
/// STE.S2PTW for stage 2; this driver leaves both 0 (the attributes are the
/// transaction's and stage-1 walks may target any memory type), so they differ there.
#[test]
fn cd_and_ste_known_answers() {
    let mut rig = Rig::new(SmmuV3Config::new(BASE));
    let mut unit = rig
        .hw(|hw| Unit::init(hw, &ucfg(StrtabFmt::Linear)))
        .unwrap();
    let s1 = rig
        .hw(|hw| unit.create_domain(hw, Stage::S1, Granule::K4))
        .unwrap();
    let s2 = rig
        .hw(|hw| unit.create_domain(hw, Stage::S2, Granule::K64))
        .unwrap();
    let d1 = unit.domain(s1).unwrap().clone();
    let d2 = unit.domain(s2).unwrap().clone();
    let ttb = d1.s1.unwrap().1 .0;
    let cd = unit.make_cd(&d1).qwords();
    // T0SZ 16 | TG0 4K (0) << 6 | IR0 WBWA (1) << 8 | OR0 (1) << 10 | SH0 ISH (3) << 12
    // | EPD1 << 30 | V << 31 | IPS 48 bits (5) << 32 | AA64 << 41 | R << 45 | A << 46
    // | ASET << 47 | ASID (1) << 48.
    assert_eq!(cd[0], 0x0001_e205_c000_3510);
    assert_eq!(cd[1], ttb);
    assert_eq!(cd[2], 0);
    assert_eq!(
        cd[3], 0xf404_ff44,
        "MAIR: Linux io-pgtable-arm attributes 0..3"
    );
    // Stage-1 STE with a linear CD table at 0x1_2345_6000.
    let t = smmuv3::driver::CdTable {
        base: PhysAddr(0x1_2345_6000),
        fmt: smmuv3::hw::ste::S1Fmt::Linear,
        cdmax: 0,
        l2: None,
        bytes: 4096,
    };
    let ste = unit.make_ste(&d1, Some(&t)).qwords();
    // V | Config S1_TRANS (0b101) << 1 | S1ContextPtr.
    assert_eq!(ste[0], 0x1_2345_6000 | 0b1011);
    // S1DSS SSID0 (2) | S1CIR WBRA (1) << 2 | S1COR (1) << 4 | S1CSH ISH (3) << 6.
    assert_eq!(ste[1], 0xd6);
    assert_eq!(&ste[2..], &[0; 6]);
    // Stage-2 STE, 64 KiB granule: V | Config S2_TRANS (0b110) << 1; qword 2: S2VMID 1
    // | S2T0SZ 16 << 32 | S2SL0 2 << 38 | S2IR0 1 << 40 | S2OR0 1 << 42 | S2SH0 3 << 44
    // | S2TG 64K (1) << 46 | S2PS 48 bits (5) << 48 | S2AA64 << 51 | S2R << 58.
    let s2ttb = d2.s2.unwrap().1 .0;
    let ste = unit.make_ste(&d2, None).qwords();
    assert_eq!(ste[0], 0b1101);
    assert_eq!(ste[1], 0);
    assert_eq!(ste[2], 0x040d_7590_0000_0001);
    assert_eq!(ste[3], s2ttb);
}
