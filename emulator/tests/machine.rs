//! The machine: driver register access, device routing, logs, and kexec through a KHO
//! blob in memory.

mod common;

use common::*;
use emulator::bus::BusError;
use emulator::dma::{DmaAgent, DmaChecker, ExpectedFailure};
use emulator::machine::{Device, KexecError, Machine, MachineError};
use emulator::model::{Access, DmaError};
use iommu_core::kho::{write_handover, FrameAllocator};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pageset::PageSet;
use iommu_core::{Iova, Pasid, PhysAddr, RegisterAccess, RequesterId};

#[test]
fn a_driver_reaches_registers_and_memory_at_once() {
    let mut m = Machine::with_ram(&RAM).unwrap();
    m.add_unit(Box::new(FakeUnit::new(UNIT_A))).unwrap();
    let a = m
        .add_device(Device {
            rid: DEV_A,
            pasid: None,
            unit: UNIT_A,
        })
        .unwrap();
    {
        let (mut regs, mut mem) = m.driver_access(UNIT_A).unwrap();
        assert_eq!(regs.base(), UNIT_A);
        assert_eq!(u64::from(regs.read32(REG_ID)), FAKE_ID);
        mem.write(TABLE_A, &[0u8; 4096]).unwrap();
        mem.write_u64(TABLE_A, 0x20_0000 | PTE_R | PTE_W).unwrap();
        regs.write64(REG_ROOT, TABLE_A.0);
        regs.write32(REG_CTRL, 1);
        assert_eq!(regs.read64(REG_ROOT), TABLE_A.0);
    }
    m.dma_write(&a, Iova(0x10), &[1, 2, 3, 4]).unwrap();
    assert_eq!(m.mem().read_u32(PhysAddr(0x20_0010)), Ok(0x0403_0201));
    let mut regs = m.unit_regs(UNIT_A).unwrap();
    assert_eq!(regs.read32(REG_CTRL), 1);
}

#[test]
fn bad_register_accesses_are_logged_not_silently_served() {
    let mut m = Machine::with_ram(&RAM).unwrap();
    m.add_unit(Box::new(FakeUnit::new(UNIT_A))).unwrap();
    {
        let mut regs = m.unit_regs(UNIT_A).unwrap();
        assert_eq!(regs.read32(WINDOW), u32::MAX);
        assert_eq!(regs.read64(4), u64::MAX);
        regs.write64(WINDOW + 8, 5);
    }
    assert_eq!(
        m.bus_errors(),
        vec![
            BusError::Unclaimed {
                addr: PhysAddr(UNIT_A.0 + WINDOW),
                width: 4
            },
            BusError::Misaligned {
                addr: PhysAddr(UNIT_A.0 + 4),
                width: 8
            },
            BusError::Unclaimed {
                addr: PhysAddr(UNIT_A.0 + WINDOW + 8),
                width: 8
            },
        ]
    );
    assert!(matches!(
        m.unit_regs(PhysAddr(0x1234_0000)),
        Err(MachineError::NoSuchUnit { .. })
    ));
    assert_eq!(
        m.mmio_read(PhysAddr(UNIT_A.0 + WINDOW), 4),
        Err(BusError::Unclaimed {
            addr: PhysAddr(UNIT_A.0 + WINDOW),
            width: 4
        })
    );
}

#[test]
fn devices_are_routed_to_one_unit_each() {
    let mut m = two_unit_machine();
    assert_eq!(
        m.add_device(Device {
            rid: DEV_A,
            pasid: None,
            unit: UNIT_A
        }),
        Err(MachineError::DuplicateDevice {
            rid: DEV_A,
            pasid: None
        })
    );
    assert_eq!(
        m.add_device(Device {
            rid: DEV_A,
            pasid: Some(Pasid(1)),
            unit: UNIT_B
        }),
        Err(MachineError::ConflictingRoute {
            rid: DEV_A,
            unit: UNIT_B,
            existing: UNIT_A
        })
    );
    let pa = m
        .add_device(Device {
            rid: DEV_A,
            pasid: Some(Pasid(1)),
            unit: UNIT_A,
        })
        .unwrap();
    assert_eq!(pa.pasid, Some(Pasid(1)));
    assert_eq!(
        m.add_device(Device {
            rid: RequesterId::new(0, 7, 0, 0),
            pasid: None,
            unit: PhysAddr(0x1000)
        }),
        Err(MachineError::NoSuchUnit {
            base: PhysAddr(0x1000)
        })
    );
    assert_eq!(m.devices().len(), 3);
    assert_eq!(m.unit_of(DEV_B).map(|u| u.mmio_base()), Some(UNIT_B));
    assert_eq!(m.units().count(), 2);
}

#[test]
fn the_fault_log_spans_units_in_order_and_walk_poison_is_an_error() {
    let mut m = two_unit_machine();
    let a = DmaAgent::new(DEV_A);
    let b = DmaAgent::new(DEV_B);
    let mut buf = [0u8; 4];
    assert!(m.dma_read(&b, Iova(0x1000), &mut buf).is_err());
    assert!(m.dma_read(&a, Iova(0x2000), &mut buf).is_err());
    assert!(m.dma_read(&b, Iova(0x40_0000), &mut buf).is_err());
    let log: Vec<(PhysAddr, u64, u32)> = m
        .fault_log()
        .iter()
        .map(|f| (f.unit, f.iova.0, f.code))
        .collect();
    assert_eq!(
        log,
        vec![
            (UNIT_B, 0x1000, FAULT_NOT_PRESENT),
            (UNIT_A, 0x2000, FAULT_NOT_PRESENT),
            (UNIT_B, 0x40_0000, FAULT_RANGE),
        ]
    );
    // Poison the table entry the walk reads: the DMA fails with a memory error naming
    // the poisoned entry, never as a silent zero.
    m.mem_mut()
        .poison_range(PhysAddr(TABLE_A.0 + 8), 8)
        .unwrap();
    let e = m.dma_read(&a, Iova(0x1000), &mut buf).unwrap_err();
    assert_eq!(
        e.dma_error(),
        Some(&DmaError::Memory {
            unit: UNIT_A,
            request: a.request(Iova(0x1000), Access::Read),
            error: MemError::Poisoned {
                addr: PhysAddr(TABLE_A.0 + 8)
            }
        })
    );
    assert_eq!(m.error_log().len(), 1);
    assert_eq!(m.fault_log().len(), 3);
}

/// Hands out pages from a fixed region, as the old kernel's allocator would.
struct Bump(u64, u64);

impl FrameAllocator for Bump {
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
        let start = self.0;
        let end = start.checked_add(pages as u64 * 4096)?;
        (end <= self.1).then(|| {
            self.0 = end;
            PhysAddr(start)
        })
    }
}

const DATA: [u64; 3] = [0x20_0000, 0x20_1000, 0x1_0000_2000];
const SCRATCH: PhysAddr = PhysAddr(0x30_0000);

/// A machine with DEV_A's pages 0..3 mapped to `DATA`, filled through DMA, and a
/// scratch page the old kernel used but does not preserve.
fn loaded_machine(checker: &mut DmaChecker) -> Machine {
    let mut m = two_unit_machine();
    for (i, pa) in DATA.iter().enumerate() {
        map(&mut m, TABLE_A, i as u64, *pa, PTE_R | PTE_W);
    }
    let a = DmaAgent::new(DEV_A);
    for (i, pa) in DATA.iter().enumerate() {
        let data = vec![0x10 + i as u8; 4096];
        assert!(checker.write_lands(&mut m, &a, Iova(i as u64 * 4096), &data, PhysAddr(*pa)));
    }
    m.mem_mut().write(SCRATCH, b"old kernel only").unwrap();
    m
}

fn hand_over(m: &mut Machine, preserved: &PageSet) -> PhysAddr {
    let mut alloc = Bump(0x80_0000, 0x100_0000);
    write_handover(m.mem_mut(), &mut alloc, preserved, &[])
        .expect("handover written")
        .blob
}

#[test]
fn dma_across_kexec_with_every_table_page_preserved_translates_the_same() {
    let mut c = DmaChecker::new();
    let mut m = loaded_machine(&mut c);
    let mut keep = PageSet::new();
    keep.insert(TABLE_A, 0).unwrap();
    keep.insert(TABLE_B, 0).unwrap();
    for pa in DATA {
        keep.insert(PhysAddr(pa), 0).unwrap();
    }
    let blob = hand_over(&mut m, &keep);
    let before = m.mem().populated_pages() as u64;
    // Registers are untouched by the kexec: read them before and after.
    let root_before = m.mmio_read(PhysAddr(UNIT_A.0 + REG_ROOT), 8).unwrap();

    let report = m.kexec(blob).expect("kexec");
    assert_eq!(report.blob, blob);
    assert_eq!(report.pages_kept + report.pages_poisoned, before);
    // The scratch page and nothing of the preserved set is gone.
    assert_eq!(report.pages_poisoned, 1);
    assert_eq!(
        m.mem().read_u8_or_poison(SCRATCH),
        Err(MemError::Poisoned { addr: SCRATCH })
    );
    assert_eq!(
        m.mmio_read(PhysAddr(UNIT_A.0 + REG_ROOT), 8).unwrap(),
        root_before
    );
    assert_eq!(m.mmio_read(PhysAddr(UNIT_A.0 + REG_CTRL), 4).unwrap(), 1);

    let a = DmaAgent::new(DEV_A);
    for (i, pa) in DATA.iter().enumerate() {
        let iova = Iova(i as u64 * 4096);
        assert!(c.read_returns(&mut m, &a, iova, &vec![0x10 + i as u8; 4096]));
        assert!(c.write_lands(&mut m, &a, iova, &[0xab; 64], PhysAddr(*pa)));
    }
    assert!(c.report().is_clean(), "{}", c.report());
    assert!(m.fault_log().is_empty());
    assert!(m.error_log().is_empty());
}

#[test]
fn a_table_page_left_out_makes_the_walk_hit_poison_and_no_byte_land() {
    let mut c = DmaChecker::new();
    let mut m = loaded_machine(&mut c);
    let mut keep = PageSet::new();
    for pa in DATA {
        keep.insert(PhysAddr(pa), 0).unwrap();
    }
    let blob = hand_over(&mut m, &keep);
    m.kexec(blob).expect("kexec");
    let a = DmaAgent::new(DEV_A);
    assert!(c.expect_blocked_write(
        &mut m,
        &a,
        Iova(0x1000),
        64,
        PhysAddr(DATA[1]),
        ExpectedFailure::WalkError
    ));
    assert!(c.expect_failure(
        &mut m,
        &a,
        Access::Read,
        Iova(0),
        8,
        ExpectedFailure::WalkError
    ));
    assert!(c.report().is_clean(), "{}", c.report());
    assert!(matches!(
        m.error_log()[0],
        DmaError::Memory {
            unit: UNIT_A,
            error: MemError::Poisoned { addr },
            ..
        } if addr == PhysAddr(TABLE_A.0 + 8)
    ));
    // The data itself survived.
    assert_eq!(
        m.mem().read_u64(PhysAddr(DATA[1])),
        Ok(0x1111_1111_1111_1111)
    );
}

#[test]
fn a_bad_blob_address_changes_nothing() {
    let mut c = DmaChecker::new();
    let mut m = loaded_machine(&mut c);
    let before = m.mem().populated_pages();
    for blob in [SCRATCH, PhysAddr(0x4000_0000), PhysAddr(0x20_0000)] {
        match m.kexec(blob) {
            Err(KexecError::Blob { blob: b, .. }) => assert_eq!(b, blob),
            other => panic!("kexec with a blob at {blob} should fail: {other:?}"),
        }
    }
    assert_eq!(m.mem().populated_pages(), before);
    assert_eq!(m.mem().read_u64(SCRATCH).map(|_| ()), Ok(()));
}

/// Reads one byte, for readable assertions.
trait ReadU8 {
    fn read_u8_or_poison(&self, addr: PhysAddr) -> Result<u8, MemError>;
}

impl<M: PhysMem> ReadU8 for M {
    fn read_u8_or_poison(&self, addr: PhysAddr) -> Result<u8, MemError> {
        let mut b = [0u8];
        self.read(addr, &mut b).map(|()| b[0])
    }
}

/// A machine (units included) can move to another thread, e.g. a scenario runner's
/// worker.
#[test]
fn a_machine_is_send() {
    fn send<T: Send>(t: T) -> T {
        t
    }
    let m = send(two_unit_machine());
    let handle = std::thread::spawn(move || m.devices().len());
    assert_eq!(handle.join().unwrap(), 2);
}
