//! The MMIO bus: registration, dispatch, and typed errors for bad accesses.

mod common;

use common::{FakeUnit, FAKE_ID, REG_CTRL, REG_ID, REG_ROOT, WINDOW};
use emulator::bus::{BusError, MmioBus, UnitIndex};
use emulator::memory::SparseMemory;
use iommu_core::PhysAddr;

fn bus() -> (MmioBus, SparseMemory) {
    let mut b = MmioBus::new();
    // Registered out of address order on purpose.
    assert_eq!(
        b.register(Box::new(FakeUnit::new(PhysAddr(0xfed9_2000))))
            .unwrap(),
        UnitIndex(0)
    );
    assert_eq!(
        b.register(Box::new(FakeUnit::new(PhysAddr(0xfed9_0000))))
            .unwrap(),
        UnitIndex(1)
    );
    let mem = SparseMemory::new(&[(PhysAddr(0), 0x10_0000)]).unwrap();
    (b, mem)
}

#[test]
fn overlapping_windows_are_refused() {
    let (mut b, _) = bus();
    for base in [0xfed9_2000u64, 0xfed9_2800, 0xfed9_1800, 0xfed8_f008] {
        let e = b.register(Box::new(FakeUnit::new(PhysAddr(base))));
        assert!(
            matches!(e, Err(BusError::Overlap { base: b, size: WINDOW, .. }) if b == PhysAddr(base)),
            "{base:#x}: {e:?}"
        );
    }
    // The gap between the two windows is free.
    assert_eq!(
        b.register(Box::new(FakeUnit::new(PhysAddr(0xfed9_1000))))
            .unwrap(),
        UnitIndex(2)
    );
    assert_eq!(b.len(), 3);
    let e = b.register(Box::new(FakeUnit::new(PhysAddr(u64::MAX - 0xfff + 1))));
    assert!(matches!(e, Err(BusError::BadWindow { .. })), "{e:?}");
}

#[test]
fn accesses_reach_the_unit_whose_window_contains_them() {
    let (mut b, mut mem) = bus();
    b.write(&mut mem, PhysAddr(0xfed9_0000 + REG_ROOT), 8, 0x5000)
        .unwrap();
    b.write(&mut mem, PhysAddr(0xfed9_2000 + REG_ROOT), 8, 0x7000)
        .unwrap();
    assert_eq!(
        b.read(&mut mem, PhysAddr(0xfed9_0000 + REG_ROOT), 8),
        Ok(0x5000)
    );
    assert_eq!(
        b.read(&mut mem, PhysAddr(0xfed9_2000 + REG_ROOT), 8),
        Ok(0x7000)
    );
    assert_eq!(
        b.read(&mut mem, PhysAddr(0xfed9_2000 + REG_ID), 4),
        Ok(FAKE_ID)
    );
    assert_eq!(
        b.decode(PhysAddr(0xfed9_0ffc), 4),
        Ok((UnitIndex(1), 0xffc))
    );
    assert_eq!(b.index_of_base(PhysAddr(0xfed9_2000)), Some(UnitIndex(0)));
    assert_eq!(b.index_of_base(PhysAddr(0xfed9_2008)), None);
}

#[test]
fn bad_accesses_get_typed_errors() {
    let (mut b, mut mem) = bus();
    let a = |x| PhysAddr(x);
    assert_eq!(
        b.read(&mut mem, a(0xfed9_1000), 4),
        Err(BusError::Unclaimed {
            addr: a(0xfed9_1000),
            width: 4
        })
    );
    assert_eq!(
        b.read(&mut mem, a(0xfed8_fffc), 4),
        Err(BusError::Unclaimed {
            addr: a(0xfed8_fffc),
            width: 4
        })
    );
    assert_eq!(
        b.read(&mut mem, a(0xfed9_0000), 2),
        Err(BusError::BadWidth {
            addr: a(0xfed9_0000),
            width: 2
        })
    );
    assert_eq!(
        b.read(&mut mem, a(0xfed9_0004), 8),
        Err(BusError::Misaligned {
            addr: a(0xfed9_0004),
            width: 8
        })
    );
    assert_eq!(
        b.write(&mut mem, a(0xfed9_0000 + REG_CTRL), 4, 1 << 32),
        Err(BusError::ValueTooWide {
            addr: a(0xfed9_0008),
            value: 1 << 32
        })
    );
}

#[test]
fn an_access_may_not_straddle_the_end_of_a_window() {
    // A unit with a window of 0x1004 bytes: an 8-byte access at 0x1000 is aligned but
    // runs past the end.
    struct Odd(FakeUnit);
    impl emulator::model::IommuModel for Odd {
        fn kind(&self) -> emulator::model::UnitKind {
            self.0.kind()
        }
        fn mmio_base(&self) -> PhysAddr {
            self.0.mmio_base()
        }
        fn mmio_size(&self) -> u64 {
            0x1004
        }
        fn mmio_read(&mut self, mem: &mut dyn iommu_core::PhysMem, offset: u64, width: u8) -> u64 {
            self.0.mmio_read(mem, offset, width)
        }
        fn mmio_write(
            &mut self,
            mem: &mut dyn iommu_core::PhysMem,
            offset: u64,
            width: u8,
            value: u64,
        ) {
            self.0.mmio_write(mem, offset, width, value)
        }
        fn translate(
            &mut self,
            mem: &mut dyn iommu_core::PhysMem,
            request: &emulator::model::DmaRequest,
        ) -> Result<emulator::model::Translated, emulator::model::DmaError> {
            self.0.translate(mem, request)
        }
        fn fault_log(&self) -> &[emulator::model::FaultEvent] {
            self.0.fault_log()
        }
        fn diagnostics(&self) -> &[String] {
            self.0.diagnostics()
        }
        fn save_registers(&self) -> Vec<emulator::model::RegisterValue> {
            self.0.save_registers()
        }
    }
    let mut b = MmioBus::new();
    b.register(Box::new(Odd(FakeUnit::new(PhysAddr(0x1_0000)))))
        .unwrap();
    assert_eq!(b.decode(PhysAddr(0x1_1000), 4), Ok((UnitIndex(0), 0x1000)));
    assert_eq!(
        b.decode(PhysAddr(0x1_1000), 8),
        Err(BusError::Straddles {
            addr: PhysAddr(0x1_1000),
            width: 8,
            window_base: PhysAddr(0x1_0000),
            window_size: 0x1004
        })
    );
}
