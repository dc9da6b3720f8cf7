//! AMD-Vi units in an image: the unit's registers (Device Table Base with Size,
//! Control, Extended Feature, exclusion range, event log), the device table decoded per
//! DeviceID, the GCR3 tables of guest (v2) entries, and the v1/v2 page tables each
//! entry translates through ([`AmdViState`]); one address translated step by step
//! ([`walk`]).
//!
//! Every bit comes from the `amdvi` crate's `hw` module (reference
//! `shared/reference/amdvi.md`), the page tables are read through its `format` module
//! and `iommu_core::pgtable`. What a request meets follows the emulator's model (the
//! referee): V = 0 forwards untranslated, V = 1 with TV = 0 target-aborts without an
//! event, reserved DTE bits or Mode 7 log ILLEGAL_DEV_TABLE_ENTRY (0x1), a missing or
//! refused translation IO_PAGE_FAULT (0x2, suppressed by DTE.SA/SE), an unreadable table
//! PAGE_TAB_HARDWARE_ERROR (0x4).

pub mod unit;
pub mod verify;
pub mod walk;

use crate::arch::{Arch, ArchUnit};
use crate::error::{InspectError, StructureProblem};
use crate::fields::{EventRing, PendingEvent};
use crate::image::{Image, RegValue, UNIT_KIND_AMDVI};
use crate::model::LoadOptions;
use amdvi::hw::dte::{DeviceTableEntry, Glx, Mode};
use amdvi::hw::regs::{self, field_mask, CONTROL, DEV_TAB_BASE, EFR};
use iommu_core::mem::PhysMem;
use iommu_core::{PhysAddr, RequesterId};
use std::collections::HashMap;

/// What the command line says about an AMD-Vi unit the image does not describe (plain
/// ELF cores, raw images).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmdViOverride {
    /// `--amdvi-devtab`: the Device Table Base register value (DevTabBase in bits 51:12,
    /// Size in bits 8:0), or just the table's address. The unit is then made up from
    /// options and replaces the image's AMD-Vi units.
    pub devtab: Option<u64>,
    /// `--amdvi-devtab-size`: the Size field (4 KiB pages − 1); default the register
    /// value's Size, or 0x1ff (the 2 MiB table of 65536 DeviceIDs Linux allocates).
    pub devtab_size: Option<u64>,
    /// `--amdvi-efr`: Extended Feature register (default [`DEFAULT_EFR`]).
    pub efr: Option<u64>,
    /// `--amdvi-control`: Control register (default [`DEFAULT_CONTROL`]).
    pub control: Option<u64>,
    /// `--amdvi-base`: MMIO base (names the unit's `iommu-amdvi-<base>` record).
    pub base: Option<u64>,
    /// `--amdvi-c-bit`: the SME C-bit (an address bit, 12..=51) the tables and registers
    /// of every AMD-Vi unit carry (snapshots do not record it); stripped from every
    /// pointer and page address, as the `amdvi::format` formats do.
    pub c_bit: Option<u8>,
}

/// EFR of a unit given on the command line: GTSup, HATS = 2 (6-level v1 tables), GATS
/// = 1 (5-level v2 tables), GLXSup = 2 (three-level GCR3 tables): every table shape the
/// formats decode is accepted.
pub const DEFAULT_EFR: u64 = (1 << 4) | (2 << 10) | (1 << 12) | (2 << 14);
/// Control of a unit given on the command line: IommuEn and GTEn.
pub const DEFAULT_CONTROL: u64 = 1 | (1 << 16);
/// Size field used when neither the register value nor `--amdvi-devtab-size` gives one.
pub const DEFAULT_DEVTAB_SIZE: u64 = 0x1ff;
/// Most GCR3 tables read per unit (a shared or hostile GCR3 tree cannot make the scan
/// read more).
pub const MAX_GCR3_TABLES: usize = 4096;

/// How a DeviceID's requests are handled, from its DTE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handling {
    /// V = 0: every address forwarded untranslated.
    PassThrough,
    /// V = 1, TV = 1, Mode 0 with IR or IW: untranslated, the DTE's permissions apply.
    Untranslated,
    /// V = 1, TV = 1, Mode 0, IR = IW = 0: every request faults (IO_PAGE_FAULT).
    Blocked,
    /// V = 1, TV = 0: target abort, no event.
    Abort,
    /// Host (v1) tables of this many levels.
    V1(u8),
    /// Guest (v2) tables of this many levels, through the GCR3 table.
    V2(u8),
    /// The DTE is malformed: ILLEGAL_DEV_TABLE_ENTRY; why.
    Illegal(String),
}

/// One entry of the listing: a DTE, or one GCR3-table entry of a DTE with GV = 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevEntry {
    /// The DeviceID.
    pub devid: u16,
    /// Address of the DTE.
    pub addr: PhysAddr,
    /// The DTE.
    pub dte: DeviceTableEntry,
    /// The PASID of a GCR3-table entry.
    pub pasid: Option<u32>,
    /// The GCR3-table entry (address, value).
    pub gcr3: Option<(PhysAddr, u64)>,
    /// What requests meet.
    pub handling: Handling,
    /// Index of its tree.
    pub tree: Option<usize>,
}

/// A distinct page-table tree of a unit, with the permissions of the DTE in front of it
/// (IR/IW are ANDed over the DTE and every level, so they belong to the mappings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tree {
    /// Guest (v2) tables; otherwise host (v1).
    pub guest: bool,
    /// Levels.
    pub levels: u8,
    /// Root table.
    pub root: PhysAddr,
    /// DTE.IR.
    pub ir: bool,
    /// DTE.IW.
    pub iw: bool,
}

/// An AMD-Vi unit of an image, scanned.
#[derive(Debug)]
pub struct AmdViState {
    /// Position among the image's AMD-Vi units.
    pub index: usize,
    /// Name (`iommu0`, as Linux's debugfs `devtbl` names units).
    pub name: String,
    /// MMIO base (0 for a unit given on the command line without `--amdvi-base`).
    pub base: PhysAddr,
    /// Registers made up from the command line.
    pub assumed: bool,
    /// PCI segment (from the snapshot's device notes; 0 otherwise).
    pub segment: u16,
    /// Register values.
    pub regs: Vec<RegValue>,
    /// The listing, by DeviceID then PASID.
    pub entries: Vec<DevEntry>,
    /// Distinct trees.
    pub trees: Vec<Tree>,
    /// Malformed structures found by the scan.
    pub problems: Vec<StructureProblem>,
    /// DeviceIDs the snapshot's device notes put behind this unit.
    pub noted: Vec<u16>,
    /// The SME C-bit, if any (`--amdvi-c-bit`).
    pub c_bit: Option<u8>,
    /// The event log's entries from EVT_HEAD to EVT_TAIL.
    pub events: EventRing,
}

/// The AMD-Vi architecture.
pub struct AmdVi;

/// The registered AMD-Vi architecture.
pub static AMDVI: AmdVi = AmdVi;

impl Arch for AmdVi {
    fn name(&self) -> &'static str {
        "amdvi"
    }
    fn load(
        &self,
        image: &Image,
        opts: &LoadOptions,
    ) -> Result<Vec<Box<dyn ArchUnit>>, InspectError> {
        let ov = &opts.amdvi;
        let mut out: Vec<Box<dyn ArchUnit>> = Vec::new();
        if let Err(e) = amdvi::format::HostV1::new(1).and_then(|f| f.with_c_bit(ov.c_bit)) {
            return Err(InspectError::Usage(format!("--amdvi-c-bit: {e}")));
        }
        if let Some(v) = ov.devtab {
            let regs = assumed_regs(v, ov)?;
            let base = PhysAddr(ov.base.unwrap_or(0));
            out.push(Box::new(AmdViState::scan(
                image, 0, base, regs, true, ov.c_bit,
            )?));
            return Ok(out);
        }
        if ov.devtab_size.is_some() || ov.efr.is_some() || ov.control.is_some() {
            return Err(InspectError::Usage(
                "--amdvi-devtab-size, --amdvi-efr and --amdvi-control describe a unit given \
                 with --amdvi-devtab"
                    .into(),
            ));
        }
        for (index, n) in image
            .units()
            .iter()
            .filter(|u| u.kind == UNIT_KIND_AMDVI)
            .enumerate()
        {
            out.push(Box::new(AmdViState::scan(
                image,
                index,
                n.base,
                n.regs.clone(),
                false,
                ov.c_bit,
            )?));
        }
        Ok(out)
    }
}

fn reg8(offset: u64, value: u64) -> RegValue {
    RegValue {
        offset,
        width: 8,
        value,
    }
}

/// The registers of a unit given on the command line.
fn assumed_regs(devtab: u64, ov: &AmdViOverride) -> Result<Vec<RegValue>, InspectError> {
    let addr_mask = field_mask(DEV_TAB_BASE::BASE);
    let size_mask = field_mask(DEV_TAB_BASE::SIZE);
    if devtab & !(addr_mask | size_mask) != 0 {
        return Err(InspectError::Usage(format!(
            "--amdvi-devtab {devtab:#x}: bits outside DevTabBase (51:12) and Size (8:0) are set"
        )));
    }
    let size = match ov.devtab_size {
        Some(s) if s > size_mask => {
            return Err(InspectError::Usage(format!(
                "--amdvi-devtab-size {s:#x}: the Size field is 9 bits (at most 0x1ff, 2 MiB)"
            )))
        }
        Some(s) if devtab & size_mask != 0 && devtab & size_mask != s => {
            return Err(InspectError::Usage(format!(
                "--amdvi-devtab {devtab:#x} carries Size {:#x} but --amdvi-devtab-size is {s:#x}",
                devtab & size_mask
            )))
        }
        Some(s) => s,
        None if devtab & size_mask != 0 => devtab & size_mask,
        None => DEFAULT_DEVTAB_SIZE,
    };
    Ok(vec![
        reg8(regs::DEV_TAB_BASE, (devtab & addr_mask) | size),
        reg8(regs::CONTROL, ov.control.unwrap_or(DEFAULT_CONTROL)),
        reg8(regs::EFR, ov.efr.unwrap_or(DEFAULT_EFR)),
    ])
}

impl AmdViState {
    /// The value of the register at `offset` (0 when the image does not have it).
    pub fn reg(&self, offset: u64) -> u64 {
        self.regs
            .iter()
            .find(|r| r.offset == offset)
            .map_or(0, |r| r.value)
    }
    /// `raw`'s address bits 51:12 without the C-bit.
    pub fn addr(&self, raw: u64) -> PhysAddr {
        strip(raw, self.c_bit)
    }
    /// The device table's address.
    pub fn devtab(&self) -> PhysAddr {
        self.addr(self.reg(regs::DEV_TAB_BASE) & field_mask(DEV_TAB_BASE::BASE))
    }
    /// The Size field.
    pub fn devtab_size(&self) -> u64 {
        DEV_TAB_BASE::SIZE.read(self.reg(regs::DEV_TAB_BASE))
    }
    /// Number of DTEs the Size field gives.
    pub fn devtab_entries(&self) -> u32 {
        regs::devtab_entries(self.devtab_size())
    }
    /// Control.IommuEn.
    pub fn enabled(&self) -> bool {
        CONTROL::IOMMU_EN.read(self.reg(regs::CONTROL)) == 1
    }
    /// The Extended Feature register.
    pub fn efr(&self) -> u64 {
        self.reg(regs::EFR)
    }
    /// The requester of `devid` behind this unit.
    pub fn rid(&self, devid: u16) -> RequesterId {
        RequesterId::from_sid(self.segment, devid)
    }

    fn problem(&mut self, devid: Option<u16>, addr: PhysAddr, what: String) {
        self.problems.push(StructureProblem {
            unit: self.name.clone(),
            requester: match devid {
                Some(d) => format!("DeviceID {d:#06x}"),
                None => "device table".into(),
            },
            addr,
            what,
        });
    }

    /// Scans the unit whose registers are `regs`: reads the whole device table (an
    /// unreadable one is an error naming the unit and address) and every GCR3 table.
    pub fn scan(
        image: &Image,
        index: usize,
        base: PhysAddr,
        regs: Vec<RegValue>,
        assumed: bool,
        c_bit: Option<u8>,
    ) -> Result<Self, InspectError> {
        let noted: Vec<(u16, u16)> = image
            .devices()
            .iter()
            .filter(|d| !assumed && d.unit == base)
            .map(|d| (d.rid.segment, d.rid.sid()))
            .collect();
        let mut u = AmdViState {
            index,
            name: format!("iommu{index}"),
            base,
            assumed,
            segment: noted.first().map_or(0, |d| d.0),
            regs,
            entries: Vec::new(),
            trees: Vec::new(),
            problems: Vec::new(),
            noted: noted.iter().map(|d| d.1).collect(),
            c_bit,
            events: EventRing::default(),
        };
        u.events = u.event_log(image);
        u.noted.sort_unstable();
        u.noted.dedup();
        let devtab = u.devtab();
        let n = u.devtab_entries() as u64;
        let bytes = n * regs::DTE_BYTES;
        // At most 2 MiB: the Size field has 9 bits.
        let mut buf = vec![0u8; bytes as usize];
        if let Err(e) = image.read(devtab, &mut buf) {
            return Err(InspectError::Structure(StructureProblem {
                unit: u.name.clone(),
                requester: "device table".into(),
                addr: e.addr(),
                what: format!(
                    "the device table at {devtab} (Size {:#x}: {n} DTEs, {bytes:#x} bytes) is \
                     not readable: {e}",
                    u.devtab_size()
                ),
            }));
        }
        let mut trees: HashMap<Tree, usize> = HashMap::new();
        let mut gcr3_budget = MAX_GCR3_TABLES;
        for devid in 0..n {
            let at = devid as usize * 32;
            let q: [u64; 4] = std::array::from_fn(|i| {
                let o = at + 8 * i;
                u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]))
            });
            let dte = DeviceTableEntry::from_qwords(q);
            let devid = devid as u16;
            let addr = PhysAddr(devtab.0 + at as u64);
            let entry = |handling, tree| DevEntry {
                devid,
                addr,
                dte,
                pasid: None,
                gcr3: None,
                handling,
                tree,
            };
            if !dte.valid() {
                if u.noted.binary_search(&devid).is_ok() {
                    u.entries.push(entry(Handling::PassThrough, None));
                }
                continue;
            }
            if let Some(why) = u.illegal(&dte) {
                u.problem(Some(devid), addr, why.clone());
                u.entries.push(entry(Handling::Illegal(why), None));
                continue;
            }
            if !dte.translation_valid() {
                u.entries.push(entry(Handling::Abort, None));
                continue;
            }
            if dte.guest_valid() {
                let levels = dte.guest_paging_mode().levels().unwrap_or(4);
                if !dte.giov() {
                    // Requests without a PASID: Mode 0, untranslated with IR/IW.
                    let h = if dte.ir() || dte.iw() {
                        Handling::Untranslated
                    } else {
                        Handling::Blocked
                    };
                    u.entries.push(entry(h, None));
                }
                let mut found = Vec::new();
                let gcr3 = u.addr(dte.gcr3_root());
                let top = match dte.glx() {
                    Glx::One => 0,
                    Glx::Two => 1,
                    _ => 2,
                };
                let mut errs = Vec::new();
                gcr3_scan(
                    image,
                    c_bit,
                    gcr3,
                    top,
                    0,
                    &mut gcr3_budget,
                    &mut found,
                    &mut errs,
                );
                for (a, what) in errs {
                    u.problem(Some(devid), a, what);
                }
                for (pasid, at, raw) in found {
                    let root = u.addr(amdvi::hw::dte::Gcr3Entry::from_qwords([raw]).root());
                    let t = intern(
                        &mut trees,
                        &mut u.trees,
                        Tree {
                            guest: true,
                            levels,
                            root,
                            ir: dte.ir(),
                            iw: dte.iw(),
                        },
                    );
                    u.entries.push(DevEntry {
                        pasid: Some(pasid),
                        gcr3: Some((at, raw)),
                        ..entry(Handling::V2(levels), Some(t))
                    });
                }
                continue;
            }
            match dte.mode() {
                Mode::Levels(l) => {
                    let root = u.addr(dte.page_table_root());
                    let t = intern(
                        &mut trees,
                        &mut u.trees,
                        Tree {
                            guest: false,
                            levels: l,
                            root,
                            ir: dte.ir(),
                            iw: dte.iw(),
                        },
                    );
                    u.entries.push(entry(Handling::V1(l), Some(t)));
                }
                _ if dte.ir() || dte.iw() => u.entries.push(entry(Handling::Untranslated, None)),
                _ => u.entries.push(entry(Handling::Blocked, None)),
            }
        }
        Ok(u)
    }

    /// The event log's pending entries (EVT_HEAD to EVT_TAIL; reference §2 and §10).
    pub fn event_log(&self, image: &Image) -> EventRing {
        use amdvi::hw::regs::{EVT_LOG_BASE, RING_PTR};
        let b = self.reg(regs::EVT_LOG_BASE);
        let base = self.addr(b & field_mask(EVT_LOG_BASE::BASE));
        let len = EVT_LOG_BASE::LEN.read(b) as u8;
        let head = RING_PTR::OFFSET.read(self.reg(regs::EVT_HEAD)) * 16;
        let tail = RING_PTR::OFFSET.read(self.reg(regs::EVT_TAIL)) * 16;
        let mut ring = EventRing {
            what: format!("event log at {base} (EventLen {len}), head {head:#x}, tail {tail:#x}"),
            ..EventRing::default()
        };
        let Some(n) = regs::ring_entries(len) else {
            ring.problem = Some(format!("EventLen {len} is reserved (8 to 15)"));
            return ring;
        };
        let bytes = n as u64 * regs::RING_ENTRY_BYTES;
        if head >= bytes || tail >= bytes {
            ring.problem = Some(format!(
                "EVT_HEAD {head:#x} or EVT_TAIL {tail:#x} beyond the {bytes:#x}-byte log"
            ));
            return ring;
        }
        let mut at = head;
        while at != tail {
            let a = PhysAddr(base.0 + at);
            let q = (image.read_u64(a), image.read_u64(PhysAddr(a.0 + 8)));
            let (Ok(q0), Ok(q1)) = q else {
                ring.problem = Some(format!("event log entry at {a} not readable"));
                break;
            };
            let e = amdvi::hw::event::EventEntry::from_qwords([q0, q1]);
            let code = e.code_bits();
            ring.pending.push(PendingEvent {
                addr: a,
                raw: vec![q0, q1],
                code,
                name: event_name(code),
                detail: format!(
                    "DeviceID {:#06x} PASID/DomainID {:#x} flags {:#05x} address {:#x}",
                    e.device_id(),
                    e.pasid(),
                    e.flags().0,
                    e.address()
                ),
            });
            at = (at + regs::RING_ENTRY_BYTES) % bytes;
        }
        ring
    }

    /// Why a valid DTE is ILLEGAL_DEV_TABLE_ENTRY on this unit (the checks of the
    /// emulator's model), or `None`.
    pub fn illegal(&self, dte: &DeviceTableEntry) -> Option<String> {
        let r = dte.reserved_bits();
        if r != [0; 4] {
            return Some(format!(
                "reserved bits set (qword 0 {:#x}, qword 2 {:#x}; bits 6:2, 63 and 181:180)",
                r[0], r[2]
            ));
        }
        if dte.mode() == Mode::Reserved {
            return Some("Mode 7 is reserved".into());
        }
        if !dte.translation_valid() {
            return None;
        }
        if let Mode::Levels(l) = dte.mode() {
            match regs::host_levels(self.efr()) {
                Some(max) if l <= max => {}
                max => {
                    return Some(format!(
                        "Mode {l} beyond EFR.HATS ({} levels)",
                        max.map_or("reserved".into(), |m| m.to_string())
                    ))
                }
            }
        }
        if dte.guest_valid() {
            if CONTROL::GT_EN.read(self.reg(regs::CONTROL)) == 0
                || EFR::GT_SUP.read(self.efr()) == 0
            {
                return Some("GV=1 without Control.GTEn / EFR.GTSup".into());
            }
            if dte.mode() != Mode::Disabled {
                return Some(
                    "GV=1 with Mode 1-6: nested v2-over-v1 translation (refused as the model does)"
                        .into(),
                );
            }
            if let Err(e) = amdvi::format::GuestV2::from_dte(dte) {
                return Some(e.to_string());
            }
            if dte.glx() == Glx::Reserved {
                return Some("GLX 3 is reserved".into());
            }
        }
        None
    }
}

/// The name of an event code (reference §10).
pub fn event_name(code: u8) -> &'static str {
    match code {
        0x1 => "ILLEGAL_DEV_TABLE_ENTRY",
        0x2 => "IO_PAGE_FAULT",
        0x3 => "DEV_TAB_HARDWARE_ERROR",
        0x4 => "PAGE_TAB_HARDWARE_ERROR",
        0x5 => "ILLEGAL_COMMAND_ERROR",
        0x6 => "COMMAND_HARDWARE_ERROR",
        0x7 => "IOTLB_INV_TIMEOUT",
        0x8 => "INVALID_DEVICE_REQUEST",
        0x9 => "INVALID_PPR_REQUEST",
        0xa => "EVENT_COUNTER_ZERO",
        0xd => "RMP_PAGE_FAULT",
        0xe => "RMP_HW_ERROR",
        _ => "unknown event code",
    }
}

/// Address bits 51:12 of `raw` without the C-bit.
fn strip(raw: u64, c_bit: Option<u8>) -> PhysAddr {
    PhysAddr(raw & amdvi::hw::pte::ADDR_MASK & !c_bit.map_or(0, |b| 1u64 << b))
}

/// The index of `t` among `list`, added if new.
fn intern<T: Copy + Eq + std::hash::Hash>(
    map: &mut HashMap<T, usize>,
    list: &mut Vec<T>,
    t: T,
) -> usize {
    *map.entry(t).or_insert_with(|| {
        list.push(t);
        list.len() - 1
    })
}

/// Collects the valid entries of the GCR3 table at `table` (level `level`, 0 the last),
/// PASIDs prefixed by `prefix`: (PASID, entry address, entry). Reads at most `budget`
/// tables; problems go to `errs`.
#[allow(clippy::too_many_arguments)]
fn gcr3_scan(
    image: &Image,
    c_bit: Option<u8>,
    table: PhysAddr,
    level: u8,
    prefix: u32,
    budget: &mut usize,
    found: &mut Vec<(u32, PhysAddr, u64)>,
    errs: &mut Vec<(PhysAddr, String)>,
) {
    if *budget == 0 {
        errs.push((
            table,
            format!("GCR3 table not read: more than {MAX_GCR3_TABLES} GCR3 tables in the unit"),
        ));
        return;
    }
    *budget -= 1;
    let mut b = vec![0u8; 4096];
    if let Err(e) = image.read(table, &mut b) {
        errs.push((
            e.addr(),
            format!("level {level} GCR3 table at {table} not readable: {e}"),
        ));
        return;
    }
    for i in 0..512u32 {
        let raw = u64::from_le_bytes(
            b[i as usize * 8..i as usize * 8 + 8]
                .try_into()
                .unwrap_or([0; 8]),
        );
        if raw & 1 == 0 {
            continue;
        }
        let pasid = (prefix << 9) | i;
        let at = PhysAddr(table.0 + i as u64 * 8);
        if level == 0 {
            found.push((pasid, at, raw));
        } else {
            let next = strip(raw, c_bit);
            gcr3_scan(image, c_bit, next, level - 1, pasid, budget, found, errs);
        }
    }
}
