//! Test doubles shared by the emulator's integration tests.
//!
//! [`FakeUnit`] is a tiny IOMMU model with a one-level table in memory, so the machine,
//! DMA, checker, kexec and snapshot code can be tested without the VT-d model:
//!
//! - `REG_ROOT` (0x00, 8 bytes): physical address of a table of 512 little-endian u64
//!   entries; entry `i` maps IOVA page `i` (IOVAs below 2 MiB). Entry bits 63:12 are the
//!   output page, bit 0 allows reads, bit 1 allows writes; an entry of 0 is not present;
//! - `REG_CTRL` (0x08, 4 bytes): bit 0 set = translate through the table, clear =
//!   pass-through (IOVA = PA);
//! - `REG_SKEW` (0x10, 8 bytes): added to every output address (a deliberately broken
//!   unit, to prove the checker catches wrong translations);
//! - `REG_ID` (0x18, 4 bytes, read-only): [`FAKE_ID`].
//!
//! Fault codes: [`FAULT_NOT_PRESENT`], [`FAULT_READ`], [`FAULT_WRITE`], [`FAULT_RANGE`].
#![allow(dead_code)]

use emulator::machine::{Device, Machine};
use emulator::model::{
    Access, DmaError, DmaRequest, FaultEvent, IommuModel, RegisterValue, Translated, UnitKind,
};
use emulator::snapshot::RestoreError;
use iommu_core::mem::PhysMem;
use iommu_core::pgtable::Perms;
use iommu_core::{PageSize, PhysAddr, RequesterId};

pub const REG_ROOT: u64 = 0x00;
pub const REG_CTRL: u64 = 0x08;
pub const REG_SKEW: u64 = 0x10;
pub const REG_ID: u64 = 0x18;
pub const WINDOW: u64 = 0x1000;
pub const FAKE_ID: u64 = 0xfa4e;

pub const FAULT_NOT_PRESENT: u32 = 1;
pub const FAULT_READ: u32 = 2;
pub const FAULT_WRITE: u32 = 3;
pub const FAULT_RANGE: u32 = 4;

pub const PTE_R: u64 = 1;
pub const PTE_W: u64 = 2;

/// The fake IOMMU unit described in the module docs.
pub struct FakeUnit {
    pub kind: UnitKind,
    pub base: PhysAddr,
    pub root: u64,
    pub ctrl: u64,
    pub skew: u64,
    pub faults: Vec<FaultEvent>,
    pub diags: Vec<String>,
    /// Every request translated, oldest first.
    pub requests: Vec<DmaRequest>,
}

impl FakeUnit {
    pub fn new(base: PhysAddr) -> Self {
        Self::with_kind(base, UnitKind::Vtd)
    }

    pub fn with_kind(base: PhysAddr, kind: UnitKind) -> Self {
        Self {
            kind,
            base,
            root: 0,
            ctrl: 0,
            skew: 0,
            faults: Vec::new(),
            diags: Vec::new(),
            requests: Vec::new(),
        }
    }

    fn fault(&mut self, request: &DmaRequest, code: u32, reason: &'static str) -> DmaError {
        let e = FaultEvent {
            unit: self.base,
            rid: request.rid,
            pasid: request.pasid,
            iova: request.iova,
            access: request.access,
            code,
            reason,
            recorded: true,
        };
        self.faults.push(e.clone());
        DmaError::Fault(e)
    }
}

impl IommuModel for FakeUnit {
    fn kind(&self) -> UnitKind {
        self.kind
    }
    fn mmio_base(&self) -> PhysAddr {
        self.base
    }
    fn mmio_size(&self) -> u64 {
        WINDOW
    }
    fn mmio_read(&mut self, _mem: &mut dyn PhysMem, offset: u64, width: u8) -> u64 {
        let v = match offset {
            REG_ROOT => self.root,
            REG_CTRL => self.ctrl,
            REG_SKEW => self.skew,
            REG_ID => FAKE_ID,
            _ => {
                self.diags
                    .push(format!("read of undefined register {offset:#x}"));
                0
            }
        };
        if width == 4 {
            v & 0xffff_ffff
        } else {
            v
        }
    }
    fn mmio_write(&mut self, _mem: &mut dyn PhysMem, offset: u64, _width: u8, value: u64) {
        match offset {
            REG_ROOT => self.root = value,
            REG_CTRL => self.ctrl = value & 1,
            REG_SKEW => self.skew = value,
            _ => self
                .diags
                .push(format!("write of {value:#x} to register {offset:#x}")),
        }
    }
    fn translate(
        &mut self,
        mem: &mut dyn PhysMem,
        request: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        self.requests.push(*request);
        let page_off = request.iova.0 & 0xfff;
        let (pa, perms) = if self.ctrl & 1 == 0 {
            (request.iova.0, Perms::RW)
        } else {
            let index = request.iova.0 >> 12;
            if index >= 512 {
                return Err(self.fault(request, FAULT_RANGE, "IOVA beyond the table"));
            }
            let entry = mem
                .read_u64(PhysAddr(self.root + index * 8))
                .map_err(|error| DmaError::Memory {
                    unit: self.base,
                    request: *request,
                    error,
                })?;
            if entry == 0 {
                return Err(self.fault(request, FAULT_NOT_PRESENT, "entry not present"));
            }
            let perms = Perms {
                read: entry & PTE_R != 0,
                write: entry & PTE_W != 0,
                exec: false,
            };
            ((entry & !0xfff) | page_off, perms)
        };
        match request.access {
            Access::Read if !perms.read => {
                return Err(self.fault(request, FAULT_READ, "read not allowed"))
            }
            Access::Write if !perms.write => {
                return Err(self.fault(request, FAULT_WRITE, "write not allowed"))
            }
            _ => {}
        }
        Ok(Translated {
            pa: PhysAddr(pa.wrapping_add(self.skew)),
            perms,
            page_size: PageSize::SIZE_4K,
        })
    }
    fn fault_log(&self) -> &[FaultEvent] {
        &self.faults
    }
    fn diagnostics(&self) -> &[String] {
        &self.diags
    }
    fn save_registers(&self) -> Vec<RegisterValue> {
        vec![
            RegisterValue {
                offset: REG_ROOT,
                width: 8,
                value: self.root,
            },
            RegisterValue {
                offset: REG_CTRL,
                width: 4,
                value: self.ctrl,
            },
            RegisterValue {
                offset: REG_SKEW,
                width: 8,
                value: self.skew,
            },
        ]
    }
}

/// Rebuilds a [`FakeUnit`] from saved registers (for snapshot loading).
pub fn fake_restorer(
    kind: UnitKind,
    base: PhysAddr,
    regs: &[RegisterValue],
) -> Result<Box<dyn IommuModel>, RestoreError> {
    let mut u = FakeUnit::with_kind(base, kind);
    for r in regs {
        match r.offset {
            REG_ROOT => u.root = r.value,
            REG_CTRL if r.value <= 1 => u.ctrl = r.value,
            REG_SKEW => u.skew = r.value,
            other => {
                return Err(RestoreError::Invalid(format!(
                    "no register {other:#x} with value {:#x}",
                    r.value
                )))
            }
        }
    }
    Ok(Box::new(u))
}

pub const UNIT_A: PhysAddr = PhysAddr(0xfed9_0000);
pub const UNIT_B: PhysAddr = PhysAddr(0xfed9_1000);
pub const TABLE_A: PhysAddr = PhysAddr(0x10_0000);
pub const TABLE_B: PhysAddr = PhysAddr(0x11_0000);
pub const DEV_A: RequesterId = RequesterId::new(0, 1, 0, 0);
pub const DEV_B: RequesterId = RequesterId::new(0, 2, 3, 1);
pub const RAM: [(PhysAddr, u64); 2] =
    [(PhysAddr(0), 64 << 20), (PhysAddr(0x1_0000_0000), 16 << 20)];

/// Two fake units, each with a zeroed table and translation on, and one device behind
/// each: `DEV_A` behind `UNIT_A`, `DEV_B` behind `UNIT_B`.
pub fn two_unit_machine() -> Machine {
    let mut m = Machine::with_ram(&RAM).expect("valid RAM layout");
    for (base, table) in [(UNIT_A, TABLE_A), (UNIT_B, TABLE_B)] {
        m.add_unit(Box::new(FakeUnit::new(base)))
            .expect("unit fits");
        m.mem_mut()
            .write(table, &[0u8; 4096])
            .expect("table in RAM");
        m.mmio_write(PhysAddr(base.0 + REG_ROOT), 8, table.0)
            .expect("root register");
        m.mmio_write(PhysAddr(base.0 + REG_CTRL), 4, 1)
            .expect("ctrl register");
    }
    m.add_device(Device {
        rid: DEV_A,
        pasid: None,
        unit: UNIT_A,
    })
    .expect("device A");
    m.add_device(Device {
        rid: DEV_B,
        pasid: None,
        unit: UNIT_B,
    })
    .expect("device B");
    m
}

/// Maps IOVA page `index` of the table at `table` to `pa` with `bits` (PTE_R | PTE_W).
pub fn map(m: &mut Machine, table: PhysAddr, index: u64, pa: u64, bits: u64) {
    m.mem_mut()
        .write_u64(PhysAddr(table.0 + index * 8), pa | bits)
        .expect("table entry in RAM");
}
