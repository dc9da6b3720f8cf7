//! A machine with one emulated AMD-Vi unit and the amdvi driver's platform around it,
//! shared by the AMD-Vi handover tests.
#![allow(dead_code)]

use amdvi::driver::{Hw, PagePool, UnitConfig};
use emulator::amdvi::{AmdViConfig, AmdViUnit};
use emulator::dma::MappingSpec;
use emulator::machine::{Device as MDevice, Machine};
use iommu_core::pgtable::Perms;
use iommu_core::{Iova, PhysAddr, RequesterId};

/// MMIO base of the unit.
pub const BASE: PhysAddr = PhysAddr(0xfeb8_0000);
/// RAM: 0 .. 8 GiB (sparse).
pub const RAM: (PhysAddr, u64) = (PhysAddr(0), 8 << 30);
/// Table pages come from [16 MiB, 528 MiB).
pub const POOL: (PhysAddr, u64) = (PhysAddr(16 << 20), 512 << 20);
/// The unit's DeviceIDs (IVRS): buses 0 to 2.
pub const LAST_DEVICE_ID: u16 = 0x2ff;

/// The IVRS-like description of the unit.
pub fn unit_config() -> UnitConfig {
    UnitConfig::new(BASE, 0, LAST_DEVICE_ID)
}

/// The machine, the unit's base and the driver's page pool.
pub struct Rig {
    /// The machine.
    pub machine: Machine,
    /// Table pages.
    pub pool: PagePool,
}

impl Rig {
    /// A machine with RAM and one AMD-Vi unit with EFR `efr` (the model's default when
    /// `None`).
    pub fn new(efr: Option<u64>) -> Rig {
        let mut machine = Machine::with_ram(&[RAM]).expect("ram");
        let mut cfg = AmdViConfig::new(BASE).with_device_ids(0..=LAST_DEVICE_ID);
        if let Some(e) = efr {
            cfg = cfg.with_efr(e);
        }
        machine
            .add_unit(Box::new(AmdViUnit::new(cfg)))
            .expect("unit");
        Rig {
            machine,
            pool: PagePool::new(POOL.0, POOL.1),
        }
    }

    /// Runs `f` with the driver's view of the platform.
    pub fn hw<T>(&mut self, f: impl FnOnce(&mut Hw<'_>) -> T) -> T {
        let (mut regs, mut mem) = self.machine.driver_access(BASE).expect("unit");
        let mut hw = Hw {
            regs: &mut regs,
            mem: &mut mem,
            pages: &mut self.pool,
        };
        f(&mut hw)
    }

    /// Adds a device (no PASID) behind the unit.
    pub fn add_device(&mut self, rid: RequesterId) {
        self.machine
            .add_device(MDevice {
                rid,
                pasid: None,
                unit: BASE,
            })
            .expect("device");
    }

    /// The model's diagnostics (programming the spec calls undefined).
    pub fn diagnostics(&self) -> Vec<String> {
        self.machine
            .unit(BASE)
            .map(|u| u.diagnostics().to_vec())
            .unwrap_or_default()
    }
}

/// A read-write mapping spec.
pub fn rw(iova: u64, pa: u64, len: u64) -> MappingSpec {
    MappingSpec {
        iova: Iova(iova),
        pa: PhysAddr(pa),
        len,
        perms: Perms::RW,
    }
}
