//! A machine with one emulated VT-d unit and the vtd driver's platform around it, shared
//! by the driver and handover tests.
#![allow(dead_code)]

use emulator::dma::{DmaChecker, MappingSpec, Workload};
use emulator::machine::{Device as MDevice, Machine};
use emulator::vtd::{VtdConfig, VtdUnit};
use iommu_core::pgtable::Perms;
use iommu_core::{Iova, PhysAddr, RequesterId};
use vtd::driver::{Hw, PagePool};

/// MMIO base of the unit.
pub const BASE: PhysAddr = PhysAddr(0xfed9_0000);
/// RAM: 0 .. 8 GiB (sparse).
pub const RAM: (PhysAddr, u64) = (PhysAddr(0), 8 << 30);
/// Table pages come from [16 MiB, 528 MiB).
pub const POOL: (PhysAddr, u64) = (PhysAddr(16 << 20), 512 << 20);

/// The machine, the unit's base and the driver's page pool.
pub struct Rig {
    /// The machine.
    pub machine: Machine,
    /// Unit base.
    pub base: PhysAddr,
    /// Table pages.
    pub pool: PagePool,
}

impl Rig {
    /// A machine with RAM and one VT-d unit with `cfg` (its base must be [`BASE`]).
    pub fn new(cfg: VtdConfig) -> Rig {
        let mut machine = Machine::with_ram(&[RAM]).expect("ram");
        machine
            .add_unit(Box::new(VtdUnit::new(cfg).expect("config")))
            .expect("unit");
        Rig {
            machine,
            base: cfg.mmio_base,
            pool: PagePool::new(POOL.0, POOL.1),
        }
    }

    /// Runs `f` with the driver's view of the platform.
    pub fn hw<T>(&mut self, f: impl FnOnce(&mut Hw<'_>) -> T) -> T {
        let (mut regs, mut mem) = self.machine.driver_access(self.base).expect("unit");
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
                unit: self.base,
            })
            .expect("device");
    }

    /// The model's diagnostics (programming the spec calls undefined).
    pub fn diagnostics(&self) -> Vec<String> {
        self.machine
            .unit(self.base)
            .map(|u| u.diagnostics().to_vec())
            .unwrap_or_default()
    }

    /// Faults the machine logged so far.
    pub fn faults(&self) -> usize {
        self.machine.fault_log().len()
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

/// Runs `steps` steps of each workload and returns whether all were clean.
pub fn run(rig: &mut Rig, loads: &mut [Workload], checker: &mut DmaChecker, steps: u32) -> bool {
    let mut clean = true;
    for _ in 0..steps {
        for w in loads.iter_mut() {
            clean &= w.step(&mut rig.machine, checker);
        }
    }
    clean
}
