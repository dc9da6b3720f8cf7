//! The AMD-Vi model driven through its registers and DMA, with tables written by hand
//! through `amdvi::hw` (reference `shared/reference/amdvi.md`).

use amdvi::hw::cmd::{Command, InvRange};
use amdvi::hw::dte::{bits, DeviceTableEntry};
use amdvi::hw::event::{EventCode, EventEntry, EventFlags};
use amdvi::hw::pte::{self, v1_pde};
use amdvi::hw::regs::{self, field_mask, field_value};
use emulator::amdvi::{AmdViConfig, AmdViUnit};
use emulator::dma::{DmaAgent, TransferError};
use emulator::machine::{Device, Machine};
use emulator::model::DmaError;
use iommu_core::mem::PhysMem;
use iommu_core::{Iova, PhysAddr, RequesterId};

const BASE: PhysAddr = PhysAddr(0xfed8_0000);
const BASE_B: PhysAddr = PhysAddr(0xfed9_0000);
const DEVTAB: u64 = 0x10_0000;
const DEVTAB_B: u64 = 0x11_0000;
const CMD: u64 = 0x20_0000;
const EVT: u64 = 0x21_0000;
const DEV: u16 = 0x0010;
const DOM: u16 = 7;

struct Rig {
    m: Machine,
    agent: DmaAgent,
    cmd_tail: u64,
}

fn ctl_on() -> u64 {
    field_value(regs::CONTROL::IOMMU_EN, 1)
        | field_value(regs::CONTROL::EVENT_LOG_EN, 1)
        | field_value(regs::CONTROL::CMD_BUF_EN, 1)
}

/// One unit at BASE, device 00:02.0 (DeviceID 0x10) behind it, a zeroed 128-entry
/// device table, 256-entry command buffer and event log, IommuEn/CmdBufEn/EventLogEn.
fn rig() -> Rig {
    let mut m = Machine::with_ram(&[(PhysAddr(0), 0x400_0000)]).unwrap();
    m.add_unit(Box::new(AmdViUnit::new(AmdViConfig::new(BASE))))
        .unwrap();
    let agent = m
        .add_device(Device {
            rid: RequesterId::from_sid(0, DEV),
            pasid: None,
            unit: BASE,
        })
        .unwrap();
    m.mem_mut().write(PhysAddr(DEVTAB), &[0u8; 4096]).unwrap();
    let mut r = Rig {
        m,
        agent,
        cmd_tail: 0,
    };
    r.w(regs::DEV_TAB_BASE, DEVTAB);
    r.w(regs::CMD_BUF_BASE, CMD | (8 << 56));
    r.w(regs::EVT_LOG_BASE, EVT | (8 << 56));
    r.w(regs::CONTROL, ctl_on());
    r
}

impl Rig {
    fn w(&mut self, off: u64, v: u64) {
        self.m.mmio_write(PhysAddr(BASE.0 + off), 8, v).unwrap();
    }
    fn r(&mut self, off: u64) -> u64 {
        self.m.mmio_read(PhysAddr(BASE.0 + off), 8).unwrap()
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
    fn dte(&mut self, devtab: u64, devid: u16, d: DeviceTableEntry) {
        for (i, q) in d.qwords().iter().enumerate() {
            self.mem(devtab + devid as u64 * 32 + 8 * i as u64, *q);
        }
    }
    fn cmd(&mut self, c: Command) {
        let [q0, q1] = c.qwords();
        self.mem(CMD + self.cmd_tail, q0);
        self.mem(CMD + self.cmd_tail + 8, q1);
        self.cmd_tail = (self.cmd_tail + 16) % 4096;
        self.w(regs::CMD_TAIL, self.cmd_tail);
    }
    fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), TransferError> {
        let a = self.agent;
        self.m.dma_write(&a, Iova(iova), data)
    }
    fn read(&mut self, iova: u64) -> Result<u64, TransferError> {
        let a = self.agent;
        let mut b = [0u8; 8];
        self.m.dma_read(&a, Iova(iova), &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn peek(&mut self, pa: u64) -> u64 {
        self.m.mem_mut().read_u64(PhysAddr(pa)).unwrap()
    }
    /// Event-log entries from Head to Tail (not consumed).
    fn events(&mut self) -> Vec<EventEntry> {
        let (mut h, t) = (self.r(regs::EVT_HEAD), self.r(regs::EVT_TAIL));
        let mut v = Vec::new();
        while h != t {
            v.push(EventEntry::from_qwords([
                self.peek(EVT + h),
                self.peek(EVT + h + 8),
            ]));
            h = (h + 16) % 4096;
        }
        v
    }
    fn status(&mut self) -> u64 {
        self.r(regs::STATUS)
    }
}

fn fault_code(e: TransferError) -> u32 {
    match e {
        TransferError::Dma {
            error: DmaError::Fault(f),
            ..
        } => f.code,
        other => panic!("expected a fault, got {other:?}"),
    }
}

/// 4-level v1 tables: L4 @0x30_0000 -> L3 @0x30_1000 -> L2 @0x30_2000; L2[1] is a
/// 2 MiB leaf (NextLevel 0) at PA 0x80_0000; L2[0] -> L1 @0x30_3000 whose slots 4 and 5
/// hold one NextLevel-7 8 KiB page at PA 0x90_0000; L1[8] a 4 KiB read-only page at
/// 0xa0_0000. Returns the root.
fn v1_tables(r: &mut Rig) -> u64 {
    for t in [0x30_0000, 0x30_1000, 0x30_2000, 0x30_3000] {
        r.table(t);
    }
    r.mem(0x30_0000, v1_pde(0x30_1000, 3));
    r.mem(0x30_1000, v1_pde(0x30_2000, 2));
    r.mem(0x30_2000, v1_pde(0x30_3000, 1));
    r.mem(0x30_2000 + 8, 0x80_0000 | pte::PR | pte::IR | pte::IW);
    let p8k = pte::sized_page_addr(0x90_0000, 13) | (7 << 9) | pte::PR | pte::IR | pte::IW;
    r.mem(0x30_3000 + 4 * 8, p8k);
    r.mem(0x30_3000 + 5 * 8, p8k);
    r.mem(0x30_3000 + 8 * 8, 0xa0_0000 | pte::PR | pte::IR);
    0x30_0000
}

#[test]
fn dte_v0_passes_dma_through_untranslated() {
    let mut r = rig();
    r.write(0x5008, &7u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0x5008), 7);
    assert!(r.m.fault_log().is_empty());
}

#[test]
fn dte_v1_tv0_target_aborts_without_an_event() {
    let mut r = rig();
    let mut d = DeviceTableEntry::default();
    d.set_bit(bits::V, true);
    r.dte(DEVTAB, DEV, d);
    r.mem(0x5000, 1);
    assert_eq!(fault_code(r.write(0x5000, &[9; 8]).unwrap_err()), 0);
    assert_eq!(r.peek(0x5000), 1);
    assert!(r.events().is_empty());
}

#[test]
fn v1_four_levels_with_2m_leaf_and_nextlevel7_page() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(root, 4, DOM, true, true),
    );
    // 2 MiB leaf at L2[1]: IOVA 0x20_0000 + x -> 0x80_0000 + x.
    r.write(0x2f_f008, &0x1234u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0x8f_f008), 0x1234);
    // NextLevel-7 8 KiB page in L1 slots 4 and 5: IOVA 0x4000.. -> 0x90_0000..
    r.write(0x5010, &0x55u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0x90_1010), 0x55);
    r.write(0x4000, &0x66u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0x90_0000), 0x66);
    // IOVA 0x6000 (slot 6) is not mapped.
    assert_eq!(fault_code(r.write(0x6000, &[0; 8]).unwrap_err()), 2);
}

#[test]
fn v1_level_skipping_pde_translates_only_with_skipped_bits_zero() {
    let mut r = rig();
    r.table(0x30_0000);
    r.table(0x30_2000);
    // L4[0] -> level-2 table directly, skipping level 3.
    r.mem(0x30_0000, v1_pde(0x30_2000, 2));
    r.mem(0x30_2000 + 8, 0x80_0000 | pte::PR | pte::IR | pte::IW);
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(0x30_0000, 4, DOM, true, true),
    );
    r.write(0x20_0010, &3u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0x80_0010), 3);
    // Same L2 index, but a level-3 index of 1: the skipped bits are not zero.
    assert_eq!(fault_code(r.write(0x4020_0010, &[0; 8]).unwrap_err()), 2);
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].flags().has(EventFlags::RZ));
}

#[test]
fn ir_iw_permission_fault_logs_io_page_fault_with_flags() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(root, 4, DOM, true, true),
    );
    // L1[8] is read-only: reads work, a write faults with RW, PR, PE.
    r.mem(0xa0_0000, 0x77);
    assert_eq!(r.read(0x8000).unwrap(), 0x77);
    assert_eq!(fault_code(r.write(0x8000, &[0; 8]).unwrap_err()), 2);
    // DTE IW=0 refuses writes even where the page allows them.
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(root, 4, DOM, true, false),
    );
    r.cmd(Command::invalidate_devtab_entry(DEV));
    assert_eq!(fault_code(r.write(0x20_0000, &[0; 8]).unwrap_err()), 2);
    // A not-present page: PR=0.
    assert_eq!(fault_code(r.read(0x6000).unwrap_err()), 2);
    let ev = r.events();
    assert_eq!(ev.len(), 3);
    for e in &ev {
        assert_eq!(e.code_bits(), EventCode::IoPageFault.bits());
        assert_eq!((e.device_id(), e.pasid()), (DEV, DOM as u32));
    }
    let f = |e: &EventEntry| {
        let f = e.flags();
        (
            f.has(EventFlags::RW),
            f.has(EventFlags::PR),
            f.has(EventFlags::PE),
        )
    };
    assert_eq!((ev[0].address(), f(&ev[0])), (0x8000, (true, true, true)));
    assert_eq!(
        (ev[1].address(), f(&ev[1])),
        (0x20_0000, (true, true, true))
    );
    assert_eq!(
        (ev[2].address(), f(&ev[2])),
        (0x6000, (false, false, false))
    );
}

#[test]
fn dte_sa_suppresses_io_page_fault_events_but_still_aborts() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    let mut d = DeviceTableEntry::host(root, 4, DOM, true, true);
    d.set_bit(bits::SA, true);
    r.dte(DEVTAB, DEV, d);
    assert_eq!(fault_code(r.read(0x6000).unwrap_err()), 2);
    assert!(r.events().is_empty());
    assert!(!r.m.fault_log()[0].recorded);
}

#[test]
fn iotlb_is_stale_until_invalidate_iommu_pages() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(root, 4, DOM, true, true),
    );
    r.mem(0xa0_0000, 0xaa);
    r.mem(0xb0_0000, 0xbb);
    assert_eq!(r.read(0x8000).unwrap(), 0xaa);
    r.mem(0x30_3000 + 8 * 8, 0xb0_0000 | pte::PR | pte::IR);
    assert_eq!(r.read(0x8000).unwrap(), 0xaa, "cached translation used");
    // Another domain's invalidation leaves it cached.
    r.cmd(Command::invalidate_iommu_pages(
        DOM + 1,
        InvRange::ALL,
        true,
    ));
    assert_eq!(r.read(0x8000).unwrap(), 0xaa);
    // A range (S=1) that does not cover the page leaves it too.
    r.cmd(Command::invalidate_iommu_pages(
        DOM,
        InvRange::covering(0x1_0000, 0x1_0000),
        false,
    ));
    assert_eq!(r.read(0x8000).unwrap(), 0xaa);
    r.cmd(Command::invalidate_iommu_pages(
        DOM,
        InvRange::covering(0x8000, 0x1000),
        false,
    ));
    assert_eq!(r.read(0x8000).unwrap(), 0xbb);
}

#[test]
fn dte_is_stale_until_invalidate_devtab_entry_or_all() {
    let mut r = rig();
    r.write(0x5000, &[1; 8]).unwrap();
    r.dte(DEVTAB, DEV, DeviceTableEntry::blocking(DOM));
    r.write(0x5000, &[2; 8]).unwrap();
    assert_eq!(r.peek(0x5000), 0x0202_0202_0202_0202, "cached V=0 DTE used");
    r.cmd(Command::invalidate_devtab_entry(DEV));
    assert_eq!(fault_code(r.write(0x5000, &[3; 8]).unwrap_err()), 2);
    // Back to V=0 in memory: still blocked until INVALIDATE_IOMMU_ALL.
    r.dte(DEVTAB, DEV, DeviceTableEntry::default());
    assert!(r.write(0x5000, &[4; 8]).is_err());
    r.cmd(Command::invalidate_iommu_all());
    r.write(0x5000, &[5; 8]).unwrap();
}

#[test]
fn completion_wait_stores_and_sets_com_wait_int() {
    let mut r = rig();
    r.mem(0x40_0000, 0);
    r.cmd(Command::completion_wait(0x40_0000, 0xfeed, true));
    assert_eq!(r.peek(0x40_0000), 0xfeed);
    let com = field_mask(regs::STATUS::COM_WAIT_INT);
    assert_ne!(r.status() & com, 0);
    assert_eq!(r.r(regs::CMD_HEAD), r.cmd_tail);
    // RW1C: writing 0 keeps it, writing 1 clears it.
    r.w(regs::STATUS, 0);
    assert_ne!(r.status() & com, 0);
    r.w(regs::STATUS, com);
    assert_eq!(r.status() & com, 0);
}

#[test]
fn illegal_command_logs_event_and_stops_the_buffer() {
    let mut r = rig();
    r.mem(0x40_0000, 0);
    let bad = Command::from_qwords([0xf << 60, 0]);
    r.cmd(bad);
    r.cmd(Command::completion_wait(0x40_0000, 1, false));
    assert_eq!(r.peek(0x40_0000), 0, "commands after the bad one not run");
    assert_eq!(r.r(regs::CMD_HEAD), 0);
    assert_eq!(r.status() & field_mask(regs::STATUS::CMD_BUF_RUN), 0);
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].code_bits(), EventCode::IllegalCommandError.bits());
    assert_eq!(ev[0].address(), CMD);
    // Software fixes the command and cycles CmdBufEn: processing resumes.
    r.mem(CMD, Command::invalidate_iommu_all().qwords()[0]);
    r.mem(CMD + 8, 0);
    r.w(
        regs::CONTROL,
        ctl_on() & !field_mask(regs::CONTROL::CMD_BUF_EN),
    );
    r.w(regs::CONTROL, ctl_on());
    assert_eq!(r.peek(0x40_0000), 1);
    // Reserved bits in a known command are illegal too.
    let mut c = Command::invalidate_devtab_entry(DEV);
    c.set_bits(59, 59, 1);
    r.cmd(c);
    assert_eq!(r.status() & field_mask(regs::STATUS::CMD_BUF_RUN), 0);
}

#[test]
fn event_log_wraps_and_overflows_when_full() {
    let mut r = rig();
    r.dte(DEVTAB, DEV, DeviceTableEntry::blocking(DOM));
    // Start near the end of the 256-entry ring.
    r.w(regs::CONTROL, 0);
    r.w(regs::EVT_HEAD, 250 * 16);
    r.w(regs::EVT_TAIL, 250 * 16);
    r.w(regs::CONTROL, ctl_on());
    for i in 0..10u64 {
        assert!(r.read(0x1000 * i).is_err());
    }
    assert_eq!(r.r(regs::EVT_TAIL), 4 * 16, "tail wrapped");
    let ev = r.events();
    assert_eq!(ev.len(), 10);
    assert_eq!(ev[9].address(), 0x9000);
    let ovf = field_mask(regs::STATUS::EVENT_OVERFLOW);
    assert_eq!(r.status() & ovf, 0);
    // 255 entries fit (one slot stays free); the 256th overflows.
    for i in 10..255u64 {
        assert!(r.read(0x1000 * i).is_err());
    }
    assert_eq!(r.status() & ovf, 0);
    assert!(r.read(0x1000 * 255).is_err());
    assert_ne!(r.status() & ovf, 0);
    assert_eq!(r.events().len(), 255);
    assert!(!r.m.fault_log().last().unwrap().recorded);
    // Software consumes and clears the overflow: logging resumes.
    let t = r.r(regs::EVT_TAIL);
    r.w(regs::EVT_HEAD, t);
    r.w(regs::STATUS, ovf);
    assert!(r.read(0).is_err());
    assert_eq!(r.events().len(), 1);
}

#[test]
fn exclusion_range_bypasses_translation_only_for_ex_devices() {
    let mut r = rig();
    r.w(
        regs::EXCL_BASE,
        0x60_0000 | field_mask(regs::EXCL_BASE::EX_EN),
    );
    r.w(regs::EXCL_LIMIT, 0x60_1000);
    r.dte(DEVTAB, DEV, DeviceTableEntry::blocking(DOM));
    assert!(r.write(0x60_0000, &[1; 8]).is_err(), "EX=0: no exclusion");
    let mut d = DeviceTableEntry::blocking(DOM);
    d.set_bit(bits::EX, true);
    r.dte(DEVTAB, DEV, d);
    r.cmd(Command::invalidate_devtab_entry(DEV));
    r.write(0x60_1ff8, &[2; 8]).unwrap();
    assert_eq!(r.peek(0x60_1ff8), 0x0202_0202_0202_0202);
    assert!(r.write(0x60_2000, &[3; 8]).is_err(), "beyond the limit");
}

#[test]
fn walk_into_poison_is_a_memory_error_and_page_tab_hardware_error() {
    let mut r = rig();
    // Root at a never-written page.
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(0x70_0000, 4, DOM, true, true),
    );
    match r.read(0x1000) {
        Err(TransferError::Dma {
            error: DmaError::Memory { unit, .. },
            ..
        }) => assert_eq!(unit, BASE),
        other => panic!("expected a memory error, got {other:?}"),
    }
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].code_bits(), EventCode::PageTabHardwareError.bits());
    assert_eq!(ev[0].address(), 0x70_0000);
}

#[test]
fn devtab_in_poison_is_dev_tab_hardware_error() {
    let mut r = rig();
    r.w(regs::CONTROL, 0);
    r.w(regs::DEV_TAB_BASE, 0x70_0000);
    r.w(regs::CONTROL, ctl_on());
    assert!(matches!(
        r.read(0),
        Err(TransferError::Dma {
            error: DmaError::Memory { .. },
            ..
        })
    ));
    let ev = r.events();
    assert_eq!(ev[0].code_bits(), EventCode::DevTabHardwareError.bits());
    assert_eq!(ev[0].address(), 0x70_0000 + DEV as u64 * 32);
}

#[test]
fn mode7_dte_is_illegal_dev_table_entry() {
    let mut r = rig();
    let mut d = DeviceTableEntry::host(0x30_0000, 4, DOM, true, true);
    d.set_bits(11, 9, 7);
    r.dte(DEVTAB, DEV, d);
    assert_eq!(fault_code(r.read(0x1234).unwrap_err()), 1);
    let ev = r.events();
    assert_eq!(ev[0].code_bits(), EventCode::IllegalDevTableEntry.bits());
    assert_eq!(ev[0].address(), 0x1234);
}

#[test]
fn two_units_translate_disjoint_device_id_ranges_through_their_own_tables() {
    let mut r = rig();
    r.m.add_unit(Box::new(AmdViUnit::new(
        AmdViConfig::new(BASE_B).with_device_ids(0x100..=0x1ff),
    )))
    .unwrap();
    let b =
        r.m.add_device(Device {
            rid: RequesterId::from_sid(0, 0x100),
            pasid: None,
            unit: BASE_B,
        })
        .unwrap();
    r.table(DEVTAB_B);
    r.table(DEVTAB_B + 0x1000);
    r.table(DEVTAB_B + 0x2000);
    let wb =
        |r: &mut Rig, off: u64, v: u64| r.m.mmio_write(PhysAddr(BASE_B.0 + off), 8, v).unwrap();
    wb(&mut r, regs::DEV_TAB_BASE, DEVTAB_B | 2);
    wb(
        &mut r,
        regs::CONTROL,
        field_value(regs::CONTROL::IOMMU_EN, 1),
    );
    // Unit B blocks 0x100; unit A's table has nothing for it and passes DEV through.
    r.dte(DEVTAB_B, 0x100, DeviceTableEntry::blocking(1));
    assert!(r.m.dma_write(&b, Iova(0x5000), &[1; 8]).is_err());
    r.write(0x5000, &[2; 8]).unwrap();
    assert_eq!(r.peek(0x5000), 0x0202_0202_0202_0202);
    assert_eq!(r.m.fault_log().len(), 1);
    assert_eq!(r.m.fault_log()[0].unit, BASE_B);
}

#[test]
fn device_outside_the_units_device_id_range_is_refused() {
    let mut m = Machine::with_ram(&[(PhysAddr(0), 0x100_0000)]).unwrap();
    m.add_unit(Box::new(AmdViUnit::new(
        AmdViConfig::new(BASE).with_device_ids(0x100..=0x1ff),
    )))
    .unwrap();
    let a = m
        .add_device(Device {
            rid: RequesterId::from_sid(0, 0x200),
            pasid: None,
            unit: BASE,
        })
        .unwrap();
    m.mmio_write(PhysAddr(BASE.0 + regs::CONTROL), 8, 1)
        .unwrap();
    // With IommuEn and a zeroed device table, a covered device would pass through.
    assert!(m.dma_write(&a, Iova(0x1000), &[1; 8]).is_err());
}

#[test]
fn snapshot_round_trip_keeps_registers_and_translation() {
    use emulator::snapshot;
    let mut r = rig();
    let root = v1_tables(&mut r);
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(root, 4, DOM, true, true),
    );
    r.w(regs::EXCL_BASE, 0x60_0000 | 1);
    assert!(r.read(0x6000).is_err()); // one event logged
    r.cmd(Command::from_qwords([0xf << 60, 0])); // buffer stopped
    let before: Vec<_> = r.m.unit(BASE).unwrap().save_registers();
    let bytes = snapshot::to_bytes(&r.m);
    let mut loaded = snapshot::from_bytes(&bytes).unwrap();
    let unit = loaded.unit(BASE).unwrap();
    assert_eq!(unit.save_registers(), before);
    assert_eq!(snapshot::to_bytes(&loaded), bytes);
    // The stopped command buffer stays stopped; translation still uses the tables.
    let st = loaded
        .mmio_read(PhysAddr(BASE.0 + regs::STATUS), 8)
        .unwrap();
    assert_eq!(st & field_mask(regs::STATUS::CMD_BUF_RUN), 0);
    assert_ne!(st & field_mask(regs::STATUS::EVENT_LOG_RUN), 0);
    let agent = r.agent;
    loaded.dma_write(&agent, Iova(0x20_0008), &[5; 8]).unwrap();
    assert_eq!(
        loaded.mem_mut().read_u64(PhysAddr(0x80_0008)).unwrap(),
        0x0505_0505_0505_0505
    );
}

#[test]
fn restore_refuses_malformed_register_sets() {
    use emulator::amdvi::AmdViRestoreError;
    use emulator::model::{IommuModel, RegisterValue};
    let regs_ok = AmdViUnit::new(AmdViConfig::new(BASE)).save_registers();
    let mut short = regs_ok.clone();
    short.pop();
    assert_eq!(
        AmdViUnit::restore(BASE, &short).err(),
        Some(AmdViRestoreError::Missing {
            offset: regs::STATUS
        })
    );
    let mut dup = regs_ok.clone();
    dup.push(regs_ok[0]);
    assert_eq!(
        AmdViUnit::restore(BASE, &dup).err(),
        Some(AmdViRestoreError::Duplicate { offset: 0 })
    );
    let mut odd = regs_ok.clone();
    odd[3].width = 4;
    assert!(matches!(
        AmdViUnit::restore(BASE, &odd),
        Err(AmdViRestoreError::BadWidth {
            offset: 0x18,
            width: 4
        })
    ));
    let mut unk = regs_ok;
    unk.push(RegisterValue {
        offset: 0x40,
        width: 8,
        value: 0,
    });
    assert!(matches!(
        AmdViUnit::restore(BASE, &unk),
        Err(AmdViRestoreError::UnknownOffset { offset: 0x40 })
    ));
}

/// A v2 DTE (GV=1, GIoV=1, Mode 0) whose PASID-0 GCR3 entry roots 4-level x86 tables
/// mapping IOVA 0x5000 to PA 0xc0_0000 (read/write) and IOVA 0x6000 read-only.
fn v2_setup(r: &mut Rig) {
    use amdvi::hw::dte::{Glx, GuestPagingMode};
    use amdvi::hw::pte::{V2_A, V2_D, V2_P, V2_RW, V2_US};
    for t in [0x50_0000, 0x51_0000, 0x51_1000, 0x51_2000, 0x51_3000] {
        r.table(t);
    }
    let tbl = V2_P | V2_RW | V2_US | V2_A;
    r.mem(0x50_0000, 0x51_0000 | 1); // GCR3 entry of PASID 0: valid, root
    r.mem(0x51_0000, 0x51_1000 | tbl);
    r.mem(0x51_1000, 0x51_2000 | tbl);
    r.mem(0x51_2000, 0x51_3000 | tbl);
    r.mem(0x51_3000 + 5 * 8, 0xc0_0000 | tbl | V2_D);
    r.mem(0x51_3000 + 6 * 8, 0xc1_0000 | V2_P | V2_US | V2_A);
    let mut d = DeviceTableEntry::blocking(DOM);
    d.set_bit(bits::IR, true);
    d.set_bit(bits::IW, true);
    d.set_guest(0x50_0000, Glx::One, true, GuestPagingMode::Level4);
    r.dte(DEVTAB, DEV, d);
}

#[test]
fn v2_giov_translates_through_gcr3_pasid0_tables() {
    let mut r = rig();
    r.w(regs::CONTROL, ctl_on() | field_mask(regs::CONTROL::GT_EN));
    v2_setup(&mut r);
    r.write(0x5010, &9u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0xc0_0010), 9);
    r.mem(0xc1_0000, 0x42);
    assert_eq!(r.read(0x6000).unwrap(), 0x42);
    // The read-only guest page refuses a write: IO_PAGE_FAULT with GN (PASID 0).
    assert_eq!(fault_code(r.write(0x6000, &[0; 8]).unwrap_err()), 2);
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    let f = ev[0].flags();
    assert!(f.has(EventFlags::GN) && f.has(EventFlags::PE) && f.has(EventFlags::RW));
    assert_eq!(ev[0].pasid(), 0);
}

#[test]
fn v2_dte_without_control_gten_is_an_illegal_dte() {
    let mut r = rig();
    v2_setup(&mut r);
    assert_eq!(fault_code(r.read(0x5000).unwrap_err()), 1);
    assert_eq!(
        r.events()[0].code_bits(),
        EventCode::IllegalDevTableEntry.bits()
    );
}

#[test]
fn command_read_from_poison_is_command_hardware_error_and_stops() {
    let mut r = rig();
    // Move the (stopped) command buffer to never-written memory, then add a command.
    r.w(
        regs::CONTROL,
        ctl_on() & !field_mask(regs::CONTROL::CMD_BUF_EN),
    );
    r.w(regs::CMD_BUF_BASE, 0x70_0000 | (8 << 56));
    r.w(regs::CONTROL, ctl_on());
    r.w(regs::CMD_TAIL, 16);
    assert_eq!(r.r(regs::CMD_HEAD), 0);
    assert_eq!(r.status() & field_mask(regs::STATUS::CMD_BUF_RUN), 0);
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].code_bits(), EventCode::CommandHardwareError.bits());
    assert_eq!(ev[0].address(), 0x70_0000);
}

#[test]
fn event_log_int_is_set_only_with_event_int_en() {
    let mut r = rig();
    r.dte(DEVTAB, DEV, DeviceTableEntry::blocking(DOM));
    let int = field_mask(regs::STATUS::EVENT_LOG_INT);
    assert!(r.read(0).is_err());
    assert_eq!(r.status() & int, 0);
    r.w(
        regs::CONTROL,
        ctl_on() | field_mask(regs::CONTROL::EVENT_INT_EN),
    );
    assert!(r.read(0).is_err());
    assert_ne!(r.status() & int, 0);
    r.w(regs::STATUS, int);
    assert_eq!(r.status() & int, 0);
    assert_eq!(r.events().len(), 2);
}

#[test]
fn iommu_en_0_translates_nothing_and_logs_nothing() {
    let mut r = rig();
    r.dte(DEVTAB, DEV, DeviceTableEntry::blocking(DOM));
    r.w(regs::CONTROL, 0);
    r.write(0x5000, &[6; 8]).unwrap();
    assert_eq!(r.peek(0x5000), 0x0606_0606_0606_0606);
    let st = r.status();
    assert_eq!(
        st & (field_mask(regs::STATUS::CMD_BUF_RUN) | field_mask(regs::STATUS::EVENT_LOG_RUN)),
        0
    );
}

#[test]
fn pde_without_iw_refuses_writes_below_it() {
    let mut r = rig();
    let root = v1_tables(&mut r);
    // L3[0] -> L2 with IR only: the 2 MiB leaf under it allows writes, the PDE not.
    r.mem(0x30_1000, v1_pde(0x30_2000, 2) & !pte::IW);
    r.dte(
        DEVTAB,
        DEV,
        DeviceTableEntry::host(root, 4, DOM, true, true),
    );
    r.mem(0x80_0000, 0x11);
    assert_eq!(r.read(0x20_0000).unwrap(), 0x11);
    assert_eq!(fault_code(r.write(0x20_0000, &[0; 8]).unwrap_err()), 2);
    assert!(r.events()[0].flags().has(EventFlags::PE));
}

#[test]
fn v2_iotlb_is_stale_until_gn_invalidation_of_its_pasid() {
    let mut r = rig();
    r.w(regs::CONTROL, ctl_on() | field_mask(regs::CONTROL::GT_EN));
    v2_setup(&mut r);
    r.mem(0xc0_0000, 0xaa);
    r.mem(0xd0_0000, 0xdd);
    assert_eq!(r.read(0x5000).unwrap(), 0xaa);
    r.mem(
        0x51_3000 + 5 * 8,
        0xd0_0000 | amdvi::hw::pte::V2_P | amdvi::hw::pte::V2_US,
    );
    // A host (GN=0) invalidation of the domain does not touch guest translations.
    r.cmd(Command::invalidate_iommu_pages(DOM, InvRange::ALL, true));
    assert_eq!(r.read(0x5000).unwrap(), 0xaa);
    // GN=1, PASID 0: bit 66 (GN) set by hand on the host command.
    let mut c = Command::invalidate_iommu_pages(DOM, InvRange::ALL, true);
    c.set_bits(66, 66, 1);
    r.cmd(c);
    assert_eq!(r.read(0x5000).unwrap(), 0xdd);
}

#[test]
fn base_register_written_while_enabled_is_flagged() {
    let mut r = rig();
    r.w(regs::DEV_TAB_BASE, DEVTAB);
    r.w(regs::CMD_HEAD, 0);
    let d = r.m.unit(BASE).unwrap().diagnostics().to_vec();
    assert!(d
        .iter()
        .any(|s| s.contains("Device Table Base written while IommuEn=1")));
    assert!(d
        .iter()
        .any(|s| s.contains("Command Head written while CmdBufRun=1")));
}

/// Nested translation: a DTE with GV=1 and Mode 3 (host v1 tables). The host tables
/// map GPA 0..4 MiB to SPA 0x100_0000.. (RW), GPA 4..6 MiB read-only to SPA
/// 0x140_0000, and leave GPA 6..8 MiB unmapped. The GCR3 table (GPA 0x1000) and the
/// guest x86 tables (GPA 0x2000..) live at GPAs; GVA 0x7000 maps to GPA 0x20_0000,
/// GVA 0x8000 to GPA 0x60_0000 (host hole), GVA 0x9000 to GPA 0x40_0000 (host
/// read-only), and the guest L1 table of GVA 0x40_0000 sits at GPA 0x70_0000 (host
/// hole).
fn nested_setup(r: &mut Rig) {
    use amdvi::hw::dte::{Glx, GuestPagingMode, Mode};
    use amdvi::hw::pte::{V2_A, V2_D, V2_P, V2_RW, V2_US};
    let spa = |gpa: u64| 0x100_0000 + gpa;
    let (h3, h2) = (0x68_0000u64, 0x68_1000u64);
    r.table(h3);
    r.table(h2);
    r.mem(h3, v1_pde(h2, 2));
    r.mem(h2, 0x100_0000 | pte::PR | pte::IR | pte::IW);
    r.mem(h2 + 8, 0x120_0000 | pte::PR | pte::IR | pte::IW);
    r.mem(h2 + 16, 0x140_0000 | pte::PR | pte::IR);
    for gpa in [0x1000, 0x2000, 0x3000, 0x4000, 0x5000] {
        r.table(spa(gpa));
    }
    let tbl = V2_P | V2_RW | V2_US | V2_A;
    r.mem(spa(0x1000), 0x2000 | 1); // GCR3[0]: guest root at GPA 0x2000
    r.mem(spa(0x2000), 0x3000 | tbl);
    r.mem(spa(0x3000), 0x4000 | tbl);
    r.mem(spa(0x4000), 0x5000 | tbl);
    r.mem(spa(0x4000) + 2 * 8, 0x70_0000 | tbl);
    r.mem(spa(0x5000) + 7 * 8, 0x20_0000 | tbl | V2_D);
    r.mem(spa(0x5000) + 8 * 8, 0x60_0000 | tbl | V2_D);
    r.mem(spa(0x5000) + 9 * 8, 0x40_0000 | tbl | V2_D);
    let mut d = DeviceTableEntry::blocking(DOM);
    d.set_bit(bits::IR, true);
    d.set_bit(bits::IW, true);
    d.set_guest(0x1000, Glx::One, true, GuestPagingMode::Level4);
    d.set_mode(Mode::Levels(3));
    d.set_page_table_root(h3);
    r.dte(DEVTAB, DEV, d);
}

#[test]
fn nested_v2_over_v1_translates_guest_tables_and_output_through_the_host() {
    let mut r = rig();
    r.w(regs::CONTROL, ctl_on() | field_mask(regs::CONTROL::GT_EN));
    nested_setup(&mut r);
    // GVA 0x7010 -> GPA 0x20_0010 -> SPA 0x120_0010.
    r.write(0x7010, &0x77u64.to_le_bytes()).unwrap();
    assert_eq!(r.peek(0x120_0010), 0x77);
    assert_eq!(r.read(0x7010).unwrap(), 0x77);
    // GVA 0x9000 -> GPA 0x40_0000, host read-only: reads go, writes fault.
    r.mem(0x140_0000, 0x99);
    assert_eq!(r.read(0x9000).unwrap(), 0x99);
    assert_eq!(fault_code(r.write(0x9000, &[0; 8]).unwrap_err()), 2);
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].flags().has(EventFlags::PE) && ev[0].flags().has(EventFlags::RW));
}

#[test]
fn nested_host_faults_name_the_gpa_without_gn() {
    let mut r = rig();
    r.w(regs::CONTROL, ctl_on() | field_mask(regs::CONTROL::GT_EN));
    nested_setup(&mut r);
    // The guest output GPA 0x60_0000 is not mapped by the host.
    assert_eq!(fault_code(r.read(0x8000).unwrap_err()), 2);
    // A guest table (the L1 of GVA 0x40_0000) at a GPA the host does not map.
    assert_eq!(fault_code(r.read(0x40_0000).unwrap_err()), 2);
    let ev = r.events();
    assert_eq!(ev.len(), 2);
    for (e, gpa) in ev.iter().zip([0x60_0000u64, 0x70_0000]) {
        assert_eq!(e.code_bits(), EventCode::IoPageFault.bits());
        let f = e.flags();
        assert!(!f.has(EventFlags::GN) && !f.has(EventFlags::PR), "{f:?}");
        assert_eq!(e.pasid(), DOM as u32, "tagged with the DomainID");
        assert_eq!(e.address() & !0xfff, gpa);
    }
}

#[test]
fn nested_translation_needs_a_mode_within_efr_hats() {
    let mut r = rig();
    r.w(regs::CONTROL, ctl_on() | field_mask(regs::CONTROL::GT_EN));
    nested_setup(&mut r);
    // Mode 5 on a unit with HATS = 0 (4 levels): an illegal DTE.
    let at = |i: u64| DEVTAB + DEV as u64 * 32 + 8 * i;
    let mut d =
        DeviceTableEntry::from_qwords([r.peek(at(0)), r.peek(at(1)), r.peek(at(2)), r.peek(at(3))]);
    d.set_mode(amdvi::hw::dte::Mode::Levels(5));
    r.dte(DEVTAB, DEV, d);
    assert_eq!(fault_code(r.read(0x7000).unwrap_err()), 1);
    assert_eq!(
        r.events()[0].code_bits(),
        EventCode::IllegalDevTableEntry.bits()
    );
}

/// Each base register written in the state the specification calls undefined is
/// flagged: Device Table Base while IommuEn=1; Command Buffer Base while CmdBufRun=1
/// and Event Log Base while EventLogRun=1 (VirtualBox quotes AMD 48882: "CmdBufRun must
/// be 0b to modify the command buffer registers", and the Event Log Base Address
/// Register is undefined to write while event logging runs). The same writes with the
/// unit stopped are not flagged.
#[test]
fn each_base_register_written_while_running_is_flagged() {
    let cases = [
        (
            regs::DEV_TAB_BASE,
            DEVTAB,
            "Device Table Base written while IommuEn=1",
        ),
        (
            regs::CMD_BUF_BASE,
            CMD | (8 << 56),
            "Command Buffer Base written while CmdBufRun=1",
        ),
        (
            regs::EVT_LOG_BASE,
            EVT | (8 << 56),
            "Event Log Base written while EventLogRun=1",
        ),
    ];
    for (reg, value, msg) in cases {
        let mut r = rig();
        let n = r.m.unit(BASE).unwrap().diagnostics().len();
        r.w(reg, value);
        let d = r.m.unit(BASE).unwrap().diagnostics().to_vec();
        assert_eq!(d.len(), n + 1, "{msg}");
        assert!(d[n].contains(msg), "{}", d[n]);
        // Stopped (IommuEn=0, so no ring runs either): the same write is defined.
        let mut r = rig();
        r.w(regs::CONTROL, 0);
        let n = r.m.unit(BASE).unwrap().diagnostics().len();
        r.w(reg, value);
        assert_eq!(
            r.m.unit(BASE).unwrap().diagnostics().len(),
            n,
            "{msg} flagged when stopped"
        );
    }
    // CmdBufEn and EventLogEn set while IommuEn=0: the rings do not run, the bases may
    // be written (the Run bits, not the enables, decide).
    let mut r = rig();
    let en =
        field_value(regs::CONTROL::EVENT_LOG_EN, 1) | field_value(regs::CONTROL::CMD_BUF_EN, 1);
    r.w(regs::CONTROL, en);
    let n = r.m.unit(BASE).unwrap().diagnostics().len();
    r.w(regs::CMD_BUF_BASE, CMD | (8 << 56));
    r.w(regs::EVT_LOG_BASE, EVT | (8 << 56));
    assert_eq!(r.m.unit(BASE).unwrap().diagnostics().len(), n);
}
