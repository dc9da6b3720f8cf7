//! The machine: memory, IOMMU units on an MMIO bus, devices, DMA, and kexec.
//!
//! A driver reaches a unit's registers through [`Machine::unit_regs`] (an
//! [`iommu_core::RegisterAccess`]) and memory through [`Machine::mem`] /
//! [`Machine::mem_mut`], or both at once through [`Machine::driver_access`]. Devices are
//! routed to one unit each by requester ID; DMA between any two steps of a test is just a
//! call to [`Machine::dma_read`] / [`Machine::dma_write`] (or a [`crate::dma::DmaChecker`])
//! in between.
//!
//! [`Machine::kexec`] does what a kexec does to the machine: the next kernel receives
//! nothing but physical memory and one physical address, that of the KHO blob. The
//! machine reads the preserved page set back from the blob in memory, turns every page
//! not in it into poison, and leaves the IOMMU hardware (registers, caches, translation
//! on) exactly as it was.

use crate::bus::{BusError, MmioBus, UnitIndex};
use crate::dma::{self, DmaAgent, TransferError};
use crate::memory::{FastMap, MemoryConfigError, RetainStats, SparseMemory};
use crate::model::{DmaError, FaultEvent, IommuModel};
use iommu_core::kho::{read_preserved, KhoError};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::{Iova, Pasid, PhysAddr, RegisterAccess, RequesterId};
use std::cell::{Ref, RefCell};
use std::fmt;

/// A device on the machine: a requester, the PASID it uses (if any), and the unit its
/// requests go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// Segment/bus/device/function.
    pub rid: RequesterId,
    /// The PASID its requests carry, if any.
    pub pasid: Option<Pasid>,
    /// MMIO base of the IOMMU unit that translates its requests.
    pub unit: PhysAddr,
}

impl Device {
    /// The DMA agent issuing this device's requests (user-mode if it has a PASID).
    pub const fn agent(&self) -> DmaAgent {
        DmaAgent {
            rid: self.rid,
            pasid: self.pasid,
            privileged: false,
        }
    }
}

/// Why the machine refused a configuration step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineError {
    /// The memory layout is invalid.
    Memory(MemoryConfigError),
    /// The unit could not be put on the MMIO bus.
    Bus(BusError),
    /// No unit has its MMIO window at this base.
    NoSuchUnit {
        /// The base asked for.
        base: PhysAddr,
    },
    /// This requester and PASID are already a device of the machine.
    DuplicateDevice {
        /// The requester.
        rid: RequesterId,
        /// The PASID.
        pasid: Option<Pasid>,
    },
    /// The requester is already routed to another unit (all of a requester's PASIDs go
    /// through the same unit).
    ConflictingRoute {
        /// The requester.
        rid: RequesterId,
        /// The unit asked for.
        unit: PhysAddr,
        /// The unit it is routed to.
        existing: PhysAddr,
    },
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Memory(e) => write!(f, "memory layout: {e}"),
            MachineError::Bus(e) => write!(f, "MMIO bus: {e}"),
            MachineError::NoSuchUnit { base } => write!(f, "no IOMMU unit at MMIO base {base}"),
            MachineError::DuplicateDevice { rid, pasid } => match pasid {
                Some(p) => write!(f, "device {rid} PASID {p} is already on the machine"),
                None => write!(f, "device {rid} is already on the machine"),
            },
            MachineError::ConflictingRoute {
                rid,
                unit,
                existing,
            } => write!(
                f,
                "device {rid} cannot go through unit {unit}: it is already behind unit {existing}"
            ),
        }
    }
}

impl std::error::Error for MachineError {}

impl From<MemoryConfigError> for MachineError {
    fn from(e: MemoryConfigError) -> Self {
        MachineError::Memory(e)
    }
}

impl From<BusError> for MachineError {
    fn from(e: BusError) -> Self {
        MachineError::Bus(e)
    }
}

/// What a kexec did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KexecReport {
    /// Physical address of the KHO blob the next kernel was given.
    pub blob: PhysAddr,
    /// Populated pages that survived (they are in the preserved set).
    pub pages_kept: u64,
    /// Populated pages that were turned into poison.
    pub pages_poisoned: u64,
}

/// Why a kexec could not happen. The machine is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KexecError {
    /// The preserved set could not be read back from the KHO blob in memory.
    Blob {
        /// Where the blob was said to be.
        blob: PhysAddr,
        /// What was wrong with it.
        error: KhoError,
    },
}

impl fmt::Display for KexecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KexecError::Blob { blob, error } => {
                write!(f, "kexec: KHO blob at {blob} is unusable: {error}")
            }
        }
    }
}

impl std::error::Error for KexecError {}

/// Memory, units, devices and the logs of what DMA did.
pub struct Machine {
    /// In a `RefCell` only so a driver can hold a unit's registers and the memory at the
    /// same time ([`Machine::driver_access`]); every borrow lasts one call.
    mem: RefCell<SparseMemory>,
    bus: MmioBus,
    devices: Vec<Device>,
    routes: FastMap<RequesterId, UnitIndex>,
    faults: Vec<FaultEvent>,
    errors: Vec<DmaError>,
    bus_errors: RefCell<Vec<BusError>>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("mem", &self.mem)
            .field("units", &self.bus)
            .field("devices", &self.devices)
            .field("faults", &self.faults.len())
            .field("errors", &self.errors.len())
            .finish()
    }
}

impl Machine {
    /// A machine with `mem` and no unit or device.
    pub fn new(mem: SparseMemory) -> Self {
        Self {
            mem: RefCell::new(mem),
            bus: MmioBus::new(),
            devices: Vec::new(),
            routes: FastMap::default(),
            faults: Vec::new(),
            errors: Vec::new(),
            bus_errors: RefCell::new(Vec::new()),
        }
    }

    /// A machine with RAM ranges `(base, size)` (see [`SparseMemory::new`]).
    pub fn with_ram(ram: &[(PhysAddr, u64)]) -> Result<Self, MachineError> {
        Ok(Self::new(SparseMemory::new(ram)?))
    }

    /// Puts an IOMMU unit on the MMIO bus.
    pub fn add_unit(&mut self, unit: Box<dyn IommuModel>) -> Result<UnitIndex, MachineError> {
        Ok(self.bus.register(unit)?)
    }

    /// Adds a device behind the unit at `device.unit` and returns its DMA agent.
    pub fn add_device(&mut self, device: Device) -> Result<DmaAgent, MachineError> {
        let index = self
            .bus
            .index_of_base(device.unit)
            .ok_or(MachineError::NoSuchUnit { base: device.unit })?;
        if self
            .devices
            .iter()
            .any(|d| d.rid == device.rid && d.pasid == device.pasid)
        {
            return Err(MachineError::DuplicateDevice {
                rid: device.rid,
                pasid: device.pasid,
            });
        }
        if let Some(existing) = self.devices.iter().find(|d| d.rid == device.rid) {
            if existing.unit != device.unit {
                return Err(MachineError::ConflictingRoute {
                    rid: device.rid,
                    unit: device.unit,
                    existing: existing.unit,
                });
            }
        }
        self.routes.insert(device.rid, index);
        self.devices.push(device);
        Ok(device.agent())
    }

    /// The devices, in the order they were added.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The units, in the order they were added.
    pub fn units(&self) -> impl Iterator<Item = &dyn IommuModel> + '_ {
        self.bus.units()
    }

    /// The unit whose MMIO window starts at `base`.
    pub fn unit(&self, base: PhysAddr) -> Option<&dyn IommuModel> {
        self.bus.unit(self.bus.index_of_base(base)?)
    }

    /// The unit whose MMIO window starts at `base`, mutably (for test set-up; a driver
    /// goes through [`unit_regs`](Self::unit_regs)).
    pub fn unit_mut(&mut self, base: PhysAddr) -> Option<&mut dyn IommuModel> {
        let i = self.bus.index_of_base(base)?;
        self.bus.unit_mut(i)
    }

    /// The unit a requester's DMA goes through.
    pub fn unit_of(&self, rid: RequesterId) -> Option<&dyn IommuModel> {
        self.bus.unit(*self.routes.get(&rid)?)
    }

    /// The physical memory.
    pub fn mem(&self) -> Ref<'_, SparseMemory> {
        self.mem.borrow()
    }

    /// The physical memory, mutably.
    pub fn mem_mut(&mut self) -> &mut SparseMemory {
        self.mem.get_mut()
    }

    /// Takes the memory out of the machine, dropping units and devices.
    pub fn into_mem(self) -> SparseMemory {
        self.mem.into_inner()
    }

    /// Register access to the unit at `base`, as a driver sees it.
    pub fn unit_regs(&mut self, base: PhysAddr) -> Result<UnitRegs<'_>, MachineError> {
        Ok(self.driver_access(base)?.0)
    }

    /// Register access to the unit at `base` and access to memory, usable at the same
    /// time (a driver writes tables to memory and then tells the unit through its
    /// registers).
    pub fn driver_access(
        &mut self,
        base: PhysAddr,
    ) -> Result<(UnitRegs<'_>, MemHandle<'_>), MachineError> {
        let i = self
            .bus
            .index_of_base(base)
            .ok_or(MachineError::NoSuchUnit { base })?;
        let unit = self
            .bus
            .unit_mut(i)
            .ok_or(MachineError::NoSuchUnit { base })?;
        Ok((
            UnitRegs {
                unit,
                mem: &self.mem,
                bus_errors: &self.bus_errors,
            },
            MemHandle { mem: &self.mem },
        ))
    }

    /// A register read of `width` bytes at physical address `addr`, through the bus.
    pub fn mmio_read(&mut self, addr: PhysAddr, width: u8) -> Result<u64, BusError> {
        self.bus.read(self.mem.get_mut(), addr, width)
    }

    /// A register write of `width` bytes at physical address `addr`, through the bus.
    pub fn mmio_write(&mut self, addr: PhysAddr, width: u8, value: u64) -> Result<(), BusError> {
        self.bus.write(self.mem.get_mut(), addr, width, value)
    }

    /// The unit `rid` is routed to, and the memory.
    fn route(
        &mut self,
        rid: RequesterId,
    ) -> Result<(&mut dyn IommuModel, &mut SparseMemory), TransferError> {
        let unit = self
            .routes
            .get(&rid)
            .and_then(|&i| self.bus.unit_mut(i))
            .ok_or(TransferError::UnknownDevice { rid })?;
        Ok((unit, self.mem.get_mut()))
    }

    /// Records a failed transfer in the fault or error log.
    fn log(&mut self, result: Result<(), TransferError>) -> Result<(), TransferError> {
        if let Err(TransferError::Dma { error, .. }) = &result {
            match error {
                DmaError::Fault(e) => self.faults.push(e.clone()),
                other => self.errors.push(other.clone()),
            }
        }
        result
    }

    /// A DMA read by `agent` of `buf.len()` bytes at `iova`.
    pub fn dma_read(
        &mut self,
        agent: &DmaAgent,
        iova: Iova,
        buf: &mut [u8],
    ) -> Result<(), TransferError> {
        let (unit, mem) = self.route(agent.rid)?;
        let r = dma::dma_read(unit, mem, agent, iova, buf);
        self.log(r)
    }

    /// A DMA write by `agent` of `data` at `iova`.
    pub fn dma_write(
        &mut self,
        agent: &DmaAgent,
        iova: Iova,
        data: &[u8],
    ) -> Result<(), TransferError> {
        let (unit, mem) = self.route(agent.rid)?;
        let r = dma::dma_write(unit, mem, agent, iova, data);
        self.log(r)
    }

    /// Every fault DMA through this machine raised, across all units, oldest first.
    pub fn fault_log(&self) -> &[FaultEvent] {
        &self.faults
    }

    /// Every DMA that failed on memory rather than with a fault, oldest first: walks
    /// that read poisoned or unbacked memory ([`DmaError::Memory`]) and data accesses
    /// that did ([`DmaError::Data`]).
    pub fn error_log(&self) -> &[DmaError] {
        &self.errors
    }

    /// Register accesses through [`UnitRegs`] that fell outside the unit's window or were
    /// malformed, oldest first (such a read returned all ones and such a write was
    /// dropped, as unclaimed MMIO does on a PCI bus).
    pub fn bus_errors(&self) -> Vec<BusError> {
        self.bus_errors.borrow().clone()
    }

    /// A kexec: the next kernel gets physical memory and `blob`, the address of the KHO
    /// blob, and nothing else. The preserved page set is read back from the blob in
    /// memory ([`iommu_core::kho::read_preserved`]); every populated page not in it
    /// becomes poison. The IOMMU units (registers, caches, translation on) and the
    /// devices carry on untouched, as does DMA. If the blob cannot be read, the machine
    /// is left unchanged and the error says why.
    pub fn kexec(&mut self, blob: PhysAddr) -> Result<KexecReport, KexecError> {
        let mem = self.mem.get_mut();
        let preserved =
            read_preserved(&*mem, blob).map_err(|error| KexecError::Blob { blob, error })?;
        let stats = mem.poison_except(&preserved);
        Ok(KexecReport {
            blob,
            pages_kept: stats.kept,
            pages_poisoned: stats.poisoned,
        })
    }

    /// Turns every populated page for which `keep` is false into poison; the units are
    /// not touched. The core of [`kexec`](Self::kexec), for tests that model a kexec
    /// with an explicit set.
    pub fn kexec_keeping(&mut self, keep: impl FnMut(PhysAddr) -> bool) -> RetainStats {
        self.mem.get_mut().retain_pages(keep)
    }
}

/// A unit's registers, as a driver reaches them: offsets from the unit's MMIO base.
///
/// Accesses must be naturally aligned and inside the window; one that is not is recorded
/// in [`Machine::bus_errors`], reads all ones and writes nothing.
pub struct UnitRegs<'a> {
    unit: &'a mut dyn IommuModel,
    mem: &'a RefCell<SparseMemory>,
    bus_errors: &'a RefCell<Vec<BusError>>,
}

impl UnitRegs<'_> {
    /// MMIO base of the unit.
    pub fn base(&self) -> PhysAddr {
        self.unit.mmio_base()
    }

    fn check(&self, offset: u64, width: u8) -> bool {
        let base = self.unit.mmio_base();
        let size = self.unit.mmio_size();
        let addr = PhysAddr(base.0.wrapping_add(offset));
        let err = if offset % u64::from(width) != 0 {
            Some(BusError::Misaligned { addr, width })
        } else if offset >= size {
            Some(BusError::Unclaimed { addr, width })
        } else if size - offset < u64::from(width) {
            Some(BusError::Straddles {
                addr,
                width,
                window_base: base,
                window_size: size,
            })
        } else {
            None
        };
        match err {
            Some(e) => {
                self.bus_errors.borrow_mut().push(e);
                false
            }
            None => true,
        }
    }

    fn read(&mut self, offset: u64, width: u8) -> Option<u64> {
        if !self.check(offset, width) {
            return None;
        }
        // Only this call borrows the memory now: the handles lent out by
        // `driver_access` borrow it for the duration of one of their own calls.
        let mut mem = self.mem.borrow_mut();
        Some(self.unit.mmio_read(&mut *mem, offset, width))
    }

    fn write(&mut self, offset: u64, width: u8, value: u64) {
        if self.check(offset, width) {
            let mut mem = self.mem.borrow_mut();
            self.unit.mmio_write(&mut *mem, offset, width, value);
        }
    }
}

impl RegisterAccess for UnitRegs<'_> {
    fn read32(&mut self, offset: u64) -> u32 {
        self.read(offset, 4).map_or(u32::MAX, |v| v as u32)
    }
    fn write32(&mut self, offset: u64, value: u32) {
        self.write(offset, 4, u64::from(value))
    }
    fn read64(&mut self, offset: u64) -> u64 {
        self.read(offset, 8).unwrap_or(u64::MAX)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.write(offset, 8, value)
    }
}

/// The machine's memory, lent beside a [`UnitRegs`] by [`Machine::driver_access`].
pub struct MemHandle<'a> {
    mem: &'a RefCell<SparseMemory>,
}

impl PhysMem for MemHandle<'_> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.borrow().read(addr, buf)
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.mem.borrow_mut().write(addr, data)
    }
}
