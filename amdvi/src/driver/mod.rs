//! The AMD-Vi driver: bring-up of a unit from an IVRS-like description, DomainIDs, v1
//! (host) and v2 (guest, through a GCR3 table) domains, attach/detach of devices by
//! DeviceID, map/unmap with the invalidations the specification requires, the event
//! log.
//!
//! The driver touches hardware only through [`Hw`]: a [`RegisterAccess`] for the unit's
//! registers, a [`PhysMem`] for tables, and a [`PageAllocator`] for pages. It keeps no
//! reference to them between calls.
//!
//! Rules followed (reference `amdvi.md` §6, §8, §9; the same choices as Linux
//! `drivers/iommu/amd`):
//!
//! - every DTE of the device table starts blocking: V = 1, TV = 1, Mode = 0,
//!   IR = IW = 0 (Linux `init_device_table_dma` sets V and TV in every entry). A
//!   zeroed DTE (V = 0) would let DMA pass untranslated;
//! - a DTE is written qwords 1..3 first and qword 0 (V, TV, Mode, root, GV, IR, IW)
//!   last, with one 64-bit store, so the unit never sees a translating entry half
//!   written; a translating DTE that changes goes through the blocking DTE first
//!   (qword 0 made blocking, INVALIDATE_DEVTAB_ENTRY, then the new entry);
//! - after a DTE changes: INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES of the
//!   domain (all pages), COMPLETION_WAIT;
//! - after unmap: INVALIDATE_IOMMU_PAGES of the smallest naturally aligned range
//!   covering it (Linux `build_inv_address`), PDE = 1 when table pages were freed,
//!   GN = 1 with PASID 0 for v2 domains (Linux flushes GIOV domains' guest
//!   translations with GN set), then COMPLETION_WAIT; freed table pages go back only
//!   after it;
//! - map into not-present entries needs no invalidation (the unit caches no
//!   not-present entries; Linux flushes only with `amd_iommu_np_cache`, a virtualised
//!   unit's quirk).

mod cmd;
mod error;
mod pgtable;

pub use cmd::{Rings, RING_BYTES, RING_LEN};
pub use error::{Error, ErrorKind};
pub use iommu_core::pool::{remove_page, PageAllocator, PagePool};

use ::alloc::collections::BTreeMap;
use ::alloc::vec::Vec;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk, Entry, EntryError, Format, Perms, Walk, WalkError, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RegisterAccess};

use crate::format::{GuestV2, HostV1};
use crate::hw::cmd::{Command, InvRange};
use crate::hw::dte::bits as dte_bits;
use crate::hw::dte::{DeviceTableEntry, Glx, GuestPagingMode, IntCtl};
use crate::hw::event::Event;
use crate::hw::regs::{self, field_mask, CONTROL, EFR};
pub use crate::record::DomainKind;

/// How many times a register or a memory word is polled before giving up.
pub const POLL_LIMIT: u32 = 100_000;

/// Bytes of a table page.
pub const PAGE: u64 = 4096;

/// What the driver needs from the platform for one call.
pub struct Hw<'a> {
    /// The unit's registers (offsets from its MMIO base).
    pub regs: &'a mut dyn RegisterAccess,
    /// Physical memory.
    pub mem: &'a mut dyn PhysMem,
    /// Pages.
    pub pages: &'a mut dyn PageAllocator,
}

/// How to bring up (or adopt) a unit: what ACPI IVRS says of it (the IVHD's IOMMU base
/// address and the DeviceID range of its device entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitConfig {
    /// MMIO base of the unit (the name the unit goes by in records and errors).
    pub mmio_base: PhysAddr,
    /// First DeviceID behind the unit.
    pub first_device_id: u16,
    /// Last DeviceID behind the unit (sizes the device table).
    pub last_device_id: u16,
}

impl UnitConfig {
    /// A unit at `mmio_base` serving DeviceIDs `first..=last`.
    pub fn new(mmio_base: PhysAddr, first: u16, last: u16) -> Self {
        Self {
            mmio_base,
            first_device_id: first,
            last_device_id: last,
        }
    }
}

/// Counters of what the driver did to the unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commands queued (COMPLETION_WAITs included).
    pub commands: u64,
    /// COMPLETION_WAIT stores seen.
    pub waits: u64,
    /// INVALIDATE_DEVTAB_ENTRY commands.
    pub dte_invalidations: u64,
    /// INVALIDATE_IOMMU_PAGES commands.
    pub page_invalidations: u64,
    /// INVALIDATE_IOMMU_ALL commands.
    pub all_invalidations: u64,
    /// Pages allocated.
    pub pages_allocated: u64,
    /// Pages freed.
    pub pages_freed: u64,
    /// Leaf entries written by map.
    pub leaves_mapped: u64,
    /// Leaf entries cleared by unmap.
    pub leaves_unmapped: u64,
    /// Events read from the event log.
    pub events: u64,
}

/// Lifecycle of a domain with respect to a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainState {
    /// Normal: map/unmap allowed.
    Live,
    /// Named by `prepare`: immutable until `cancel`.
    Preserved,
    /// Adopted from the previous kernel: immutable until `finish`.
    Adopted,
}

impl DomainState {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            DomainState::Live => "live",
            DomainState::Preserved => "preserved for a handover",
            DomainState::Adopted => "adopted and not finished",
        }
    }
}

/// A domain: an address space with its own DomainID and table tree.
#[derive(Clone, Debug)]
pub struct Domain {
    /// DomainID.
    pub id: DomainId,
    /// v1 or v2, with its levels.
    pub kind: DomainKind,
    /// The page-table root (v1: the DTE's root; v2: the guest root PASID 0's GCR3
    /// entry points to).
    pub root: PhysAddr,
    /// v2: the GCR3 table.
    pub gcr3: Option<PhysAddr>,
    /// Handover state.
    pub state: DomainState,
    /// Table pages of the tree, root included (complete unless `tables_known` is
    /// false); the GCR3 table is not in it.
    pub(crate) tables: PageSet,
    /// False for an adopted domain until its tables were walked.
    pub(crate) tables_known: bool,
}

impl Domain {
    /// Number of table pages, root included (0 for an adopted domain not yet walked).
    pub fn table_pages(&self) -> u64 {
        self.tables.page_count()
    }
}

/// Lifecycle of a device with respect to a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Normal.
    Live,
    /// Named by `prepare`.
    Preserved,
    /// Adopted from the previous kernel.
    Adopted,
    /// Its DTE was made blocking because its state could not be trusted.
    Blocked,
}

impl DeviceState {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            DeviceState::Live => "live",
            DeviceState::Preserved => "preserved for a handover",
            DeviceState::Adopted => "adopted and not finished",
            DeviceState::Blocked => "blocked",
        }
    }
}

/// A device attached to a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// DeviceID (bus << 8 | devfn).
    pub device_id: u16,
    /// The domain.
    pub domain: DomainId,
    /// Interrupt-remapping table `(root, entries)` when its DTE has IV = 1.
    pub irt: Option<(PhysAddr, u64)>,
    /// Handover state.
    pub state: DeviceState,
}

/// A page-table format of either kind, for the core walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyFormat {
    /// Host (v1).
    V1(HostV1),
    /// Guest (v2).
    V2(GuestV2),
}

impl Format for AnyFormat {
    fn name(&self) -> &'static str {
        match self {
            AnyFormat::V1(f) => f.name(),
            AnyFormat::V2(f) => f.name(),
        }
    }
    fn root_level(&self) -> u8 {
        match self {
            AnyFormat::V1(f) => f.root_level(),
            AnyFormat::V2(f) => f.root_level(),
        }
    }
    fn table_bytes(&self, level: u8) -> u64 {
        match self {
            AnyFormat::V1(f) => f.table_bytes(level),
            AnyFormat::V2(f) => f.table_bytes(level),
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        match self {
            AnyFormat::V1(f) => f.entry_shift(level),
            AnyFormat::V2(f) => f.entry_shift(level),
        }
    }
    fn ia_bits(&self) -> u32 {
        match self {
            AnyFormat::V1(f) => f.ia_bits(),
            AnyFormat::V2(f) => f.ia_bits(),
        }
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        match self {
            AnyFormat::V1(f) => f.decode(level, raw),
            AnyFormat::V2(f) => f.decode(level, raw),
        }
    }
}

/// An AMD-Vi unit under this driver's control.
#[derive(Debug)]
pub struct Unit {
    pub(crate) base: PhysAddr,
    pub(crate) first: u16,
    pub(crate) last: u16,
    pub(crate) efr: u64,
    pub(crate) control: u64,
    pub(crate) devtab: PhysAddr,
    pub(crate) devtab_pages: u64,
    pub(crate) rings: Option<Rings>,
    pub(crate) dids: Vec<u64>,
    pub(crate) domains: BTreeMap<u16, Domain>,
    pub(crate) devices: BTreeMap<u16, Device>,
    pub(crate) counters: Counters,
    pub(crate) frozen: bool,
    pub(crate) outgoing: Option<crate::handover::Outgoing>,
    pub(crate) incoming: Option<crate::handover::Incoming>,
}

pub(crate) fn mem_err(unit: PhysAddr, what: &'static str) -> impl Fn(MemError) -> Error {
    move |err| Error::new(unit, ErrorKind::Mem { what, err })
}

/// Reads the 4 qwords of a DTE at `at`.
pub(crate) fn read_dte(mem: &dyn PhysMem, at: PhysAddr) -> Result<DeviceTableEntry, MemError> {
    let mut b = [0u8; 32];
    mem.read(at, &mut b)?;
    let mut q = [0u64; 4];
    for (i, v) in q.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *v = u64::from_le_bytes(w);
    }
    Ok(DeviceTableEntry::from_qwords(q))
}

/// Writes a DTE: qwords 1..3 first, qword 0 (V, TV, Mode, root, GV, IR, IW) last with
/// one 64-bit store (reference §6; Linux `update_dte256` writes the upper 128 bits
/// before the lower ones for the same reason).
pub(crate) fn write_dte(
    mem: &mut dyn PhysMem,
    at: PhysAddr,
    dte: &DeviceTableEntry,
) -> Result<(), MemError> {
    let q = dte.qwords();
    let mut rest = [0u8; 24];
    for i in 0..3 {
        rest[i * 8..i * 8 + 8].copy_from_slice(&q[i + 1].to_le_bytes());
    }
    mem.write(PhysAddr(at.0 + 8), &rest)?;
    mem.write_u64(at, q[0])
}

/// Whether a DTE blocks every DMA: V = 1, TV = 1, Mode = 0, GV = 0, IR = IW = 0, and
/// nothing that reaches around translation (EX with an exclusion range).
pub fn is_blocking(dte: &DeviceTableEntry) -> bool {
    dte.valid()
        && dte.translation_valid()
        && dte.mode() == crate::hw::dte::Mode::Disabled
        && !dte.guest_valid()
        && !dte.ir()
        && !dte.iw()
        && !dte.exclusion()
}

/// Allocates a zeroed page.
pub(crate) fn alloc_zeroed(
    unit: PhysAddr,
    hw: &mut Hw<'_>,
    counters: &mut Counters,
    what: &'static str,
) -> Result<PhysAddr, Error> {
    let p = hw
        .pages
        .alloc_page()
        .ok_or(Error::new(unit, ErrorKind::OutOfPages { what }))?;
    if let Err(err) = hw.mem.write(p, &[0u8; PAGE as usize]) {
        hw.pages.free_page(p);
        return Err(Error::new(unit, ErrorKind::Mem { what, err }));
    }
    counters.pages_allocated += 1;
    Ok(p)
}

/// `n` physically contiguous pages from an allocator that hands out single pages: pages
/// are taken until the last `n` follow on (at most `n + 4096` pages are tried), the
/// others go back. The device table must be contiguous (one base register).
pub(crate) fn alloc_contiguous(
    unit: PhysAddr,
    hw: &mut Hw<'_>,
    n: u64,
    what: &'static str,
) -> Result<Vec<PhysAddr>, Error> {
    let mut taken: Vec<PhysAddr> = Vec::new();
    let mut run = 0usize; // index in `taken` where the current contiguous run starts
    let give_back = |hw: &mut Hw<'_>, pages: &[PhysAddr]| {
        for &p in pages {
            hw.pages.free_page(p);
        }
    };
    while (taken.len() as u64) < n + 4096 {
        let Some(p) = hw.pages.alloc_page() else {
            give_back(hw, &taken);
            return Err(Error::new(unit, ErrorKind::OutOfPages { what }));
        };
        if taken.last().is_some_and(|l| l.0 + PAGE != p.0) {
            run = taken.len();
        }
        taken.push(p);
        if (taken.len() - run) as u64 == n {
            let keep = taken.split_off(run);
            give_back(hw, &taken);
            return Ok(keep);
        }
    }
    give_back(hw, &taken);
    Err(Error::new(
        unit,
        ErrorKind::NotContiguous { what, pages: n },
    ))
}

/// One page of 128 blocking DTEs (DomainID 0).
fn blocking_page() -> [u8; PAGE as usize] {
    let mut b = [0u8; PAGE as usize];
    let q = DeviceTableEntry::blocking(0).qwords();
    for e in 0..(PAGE / regs::DTE_BYTES) as usize {
        for (i, v) in q.iter().enumerate() {
            let o = e * 32 + i * 8;
            b[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

impl Unit {
    /// Reads the unit's identity and checks `cfg`; touches nothing.
    pub(crate) fn probe(hw: &mut Hw<'_>, cfg: &UnitConfig) -> Result<Unit, Error> {
        if cfg.first_device_id > cfg.last_device_id {
            return Err(Error::new(
                cfg.mmio_base,
                ErrorKind::Config {
                    why: "first DeviceID above the last",
                },
            ));
        }
        let efr = hw.regs.read64(regs::EFR);
        let mut unit = Unit {
            base: cfg.mmio_base,
            first: cfg.first_device_id,
            last: cfg.last_device_id,
            efr,
            control: 0,
            devtab: PhysAddr(0),
            devtab_pages: regs::devtab_size_for(cfg.last_device_id) + 1,
            rings: None,
            dids: ::alloc::vec![0u64; 1024],
            domains: BTreeMap::new(),
            devices: BTreeMap::new(),
            counters: Counters::default(),
            frozen: false,
            outgoing: None,
            incoming: None,
        };
        // DomainID 0 is kept for blocking DTEs (never a domain's tag).
        unit.reserve_did(0);
        Ok(unit)
    }

    /// The Control value the driver runs with: CmdBufEn, EventLogEn, GTEn where
    /// EFR.GTSup, and IommuEn.
    pub(crate) fn run_control(&self) -> u64 {
        let mut c = field_mask(CONTROL::IOMMU_EN)
            | field_mask(CONTROL::CMD_BUF_EN)
            | field_mask(CONTROL::EVENT_LOG_EN);
        if EFR::GT_SUP.read(self.efr) != 0 {
            c |= field_mask(CONTROL::GT_EN);
        }
        c
    }

    /// The Device Table Base register value: base | Size.
    pub fn dev_tab_base(&self) -> u64 {
        self.devtab.0 | (self.devtab_pages - 1)
    }

    /// Brings up a unit that is not enabled: a device table of blocking DTEs sized by
    /// the last DeviceID, a command buffer and an event log, then IommuEn, then
    /// INVALIDATE_IOMMU_ALL (or, without EFR.IASup, INVALIDATE_DEVTAB_ENTRY of every
    /// DeviceID) and COMPLETION_WAIT. Every DMA is blocked until a device is attached.
    pub fn init(hw: &mut Hw<'_>, cfg: &UnitConfig) -> Result<Unit, Error> {
        let mut unit = Self::probe(hw, cfg)?;
        let control = hw.regs.read64(regs::CONTROL);
        if CONTROL::IOMMU_EN.read(control) != 0 {
            return Err(unit.err(ErrorKind::AlreadyEnabled { control }));
        }
        let n = unit.devtab_pages;
        let got = alloc_contiguous(unit.base, hw, n, "the device table")?;
        let free_all = |hw: &mut Hw<'_>, got: &[PhysAddr]| {
            for &p in got {
                hw.pages.free_page(p);
            }
        };
        let page = blocking_page();
        for &p in &got {
            if let Err(err) = hw.mem.write(p, &page) {
                free_all(hw, &got);
                return Err(unit.err(ErrorKind::Mem {
                    what: "writing the device table",
                    err,
                }));
            }
        }
        unit.counters.pages_allocated += n;
        unit.devtab = got[0];
        let mut rings = match Rings::alloc(unit.base, hw, &mut unit.counters) {
            Ok(r) => r,
            Err(e) => {
                free_all(hw, &got);
                return Err(e);
            }
        };
        hw.regs.write64(regs::DEV_TAB_BASE, unit.dev_tab_base());
        rings.program(hw.regs);
        unit.rings = Some(rings);
        let run = unit.run_control();
        hw.regs
            .write64(regs::CONTROL, run & !field_mask(CONTROL::IOMMU_EN));
        hw.regs.write64(regs::CONTROL, run);
        unit.control = run;
        unit.invalidate_everything(hw)?;
        Ok(unit)
    }

    /// INVALIDATE_IOMMU_ALL where EFR.IASup, else INVALIDATE_DEVTAB_ENTRY of every
    /// DeviceID of the unit and INVALIDATE_IOMMU_PAGES (all pages, PDE) of every
    /// domain; then COMPLETION_WAIT.
    pub(crate) fn invalidate_everything(&mut self, hw: &mut Hw<'_>) -> Result<(), Error> {
        if EFR::IA_SUP.read(self.efr) != 0 {
            self.counters.all_invalidations += 1;
            return self.commands(hw, &[Command::invalidate_iommu_all()]);
        }
        let mut cmds: Vec<Command> = (self.first..=self.last)
            .map(Command::invalidate_devtab_entry)
            .collect();
        self.counters.dte_invalidations += cmds.len() as u64;
        let mut dids: Vec<(u16, bool)> = self
            .domains
            .values()
            .map(|d| (d.id.0, matches!(d.kind, DomainKind::V2 { .. })))
            .collect();
        if let Some(inc) = &self.incoming {
            dids.extend(
                inc.record
                    .domains
                    .iter()
                    .map(|d| (d.id.0, matches!(d.kind, DomainKind::V2 { .. }))),
            );
        }
        dids.sort_unstable();
        dids.dedup();
        for (did, v2) in dids {
            cmds.push(pages_command(did, v2, InvRange::ALL, true));
            self.counters.page_invalidations += 1;
        }
        self.commands(hw, &cmds)
    }

    /// Queues `cmds` and a COMPLETION_WAIT and waits for it.
    pub(crate) fn commands(&mut self, hw: &mut Hw<'_>, cmds: &[Command]) -> Result<(), Error> {
        let base = self.base;
        let Some(r) = self.rings.as_mut() else {
            return Err(Error::new(
                base,
                ErrorKind::Config {
                    why: "no command buffer",
                },
            ));
        };
        r.run(base, hw, &mut self.counters, cmds)
    }

    /// Reads and consumes the event log; returns the events and whether the log had
    /// overflowed (EventOverflow, cleared).
    pub fn poll_events(&mut self, hw: &mut Hw<'_>) -> (Vec<Event>, bool) {
        let Some(r) = self.rings.as_ref() else {
            return (Vec::new(), false);
        };
        let (ev, o) = r.drain_events(hw);
        self.counters.events += ev.len() as u64;
        (ev, o)
    }

    pub(crate) fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.base, kind)
    }

    // ---------------------------------------------------------------- accessors

    /// MMIO base of the unit.
    pub fn base(&self) -> PhysAddr {
        self.base
    }
    /// Extended Feature register.
    pub fn efr(&self) -> u64 {
        self.efr
    }
    /// The DeviceID range `(first, last)`.
    pub fn device_ids(&self) -> (u16, u16) {
        (self.first, self.last)
    }
    /// The device table's base.
    pub fn device_table(&self) -> PhysAddr {
        self.devtab
    }
    /// Pages of the device table.
    pub fn device_table_pages(&self) -> u64 {
        self.devtab_pages
    }
    /// The rings (command buffer, event log, completion store).
    pub fn rings(&self) -> Option<&Rings> {
        self.rings.as_ref()
    }
    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// Whether DomainID `did` is allocated (or reserved).
    pub fn domain_id_in_use(&self, did: DomainId) -> bool {
        let i = did.0 as usize;
        self.dids[i / 64] & (1 << (i % 64)) != 0
    }
    /// The domains, by ID.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> + '_ {
        self.domains.values()
    }
    /// The domain `did`.
    pub fn domain(&self, did: DomainId) -> Option<&Domain> {
        self.domains.get(&did.0)
    }
    /// The attached devices, by DeviceID.
    pub fn devices(&self) -> impl Iterator<Item = &Device> + '_ {
        self.devices.values()
    }
    /// The device `device_id`.
    pub fn device(&self, device_id: u16) -> Option<&Device> {
        self.devices.get(&device_id)
    }
    /// Whether the unit is frozen for a kexec.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }
    /// Address of the DTE of `device_id`.
    pub fn dte_addr(&self, device_id: u16) -> PhysAddr {
        PhysAddr(self.devtab.0 + device_id as u64 * regs::DTE_BYTES)
    }

    /// The walker format of domain `did`.
    pub fn format(&self, did: DomainId) -> Result<AnyFormat, Error> {
        let d = self.domain_ref(did)?;
        self.format_for(d.kind, did)
    }

    pub(crate) fn format_for(&self, kind: DomainKind, did: DomainId) -> Result<AnyFormat, Error> {
        let r = match kind {
            DomainKind::V1 { levels } => HostV1::for_unit(levels, self.efr).map(AnyFormat::V1),
            DomainKind::V2 { levels, .. } => GuestV2::for_unit(levels, self.efr).map(AnyFormat::V2),
        };
        r.map_err(|err| self.err(ErrorKind::Format { did, err }))
    }

    /// Walks the tables of domain `did` with the core walker.
    pub fn walk_domain(
        &self,
        mem: &dyn PhysMem,
        did: DomainId,
        limits: &WalkLimits,
    ) -> Result<Result<Walk, WalkError>, Error> {
        let d = self.domain_ref(did)?;
        let f = self.format(did)?;
        Ok(walk(&f, mem, d.root, limits))
    }

    pub(crate) fn domain_ref(&self, did: DomainId) -> Result<&Domain, Error> {
        self.domains
            .get(&did.0)
            .ok_or(self.err(ErrorKind::NoSuchDomain { did }))
    }

    pub(crate) fn check_mutable(&self) -> Result<(), Error> {
        if self.frozen {
            return Err(self.err(ErrorKind::Frozen));
        }
        Ok(())
    }

    fn check_device(&self, device_id: u16) -> Result<(), Error> {
        if device_id < self.first || device_id > self.last {
            return Err(self.err(ErrorKind::DeviceOutOfRange {
                device_id,
                first: self.first,
                last: self.last,
            }));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- DomainIDs

    /// Marks `did` in use; false if it was already.
    pub(crate) fn reserve_did(&mut self, did: u16) -> bool {
        let i = did as usize;
        let w = &mut self.dids[i / 64];
        let was = *w & (1 << (i % 64)) != 0;
        *w |= 1 << (i % 64);
        !was
    }

    pub(crate) fn release_did(&mut self, did: u16) {
        if did != 0 {
            let i = did as usize;
            self.dids[i / 64] &= !(1 << (i % 64));
        }
    }

    fn alloc_did(&mut self) -> Result<u16, Error> {
        for (wi, w) in self.dids.iter_mut().enumerate() {
            if *w != u64::MAX {
                let b = (!*w).trailing_zeros() as usize;
                *w |= 1 << b;
                return Ok((wi * 64 + b) as u16);
            }
        }
        Err(self.err(ErrorKind::OutOfDomainIds))
    }

    // ---------------------------------------------------------------- domains

    /// A v1 domain of 4 levels (48-bit IOVAs, Linux's default) where EFR.HATS allows
    /// it, else the most levels it allows.
    pub fn default_v1(&self) -> DomainKind {
        let max = regs::host_levels(self.efr).unwrap_or(4);
        DomainKind::V1 { levels: max.min(4) }
    }

    /// A v2 domain of 4 guest levels with a one-level GCR3 table.
    pub fn default_v2(&self) -> DomainKind {
        DomainKind::V2 {
            levels: 4,
            glx: Glx::One,
        }
    }

    /// Creates an empty domain of `kind`. v2 domains need EFR.GTSup; their GCR3 table
    /// is one level (GLX = 0, 512 PASIDs) with PASID 0's entry pointing at the guest
    /// root.
    pub fn create_domain(&mut self, hw: &mut Hw<'_>, kind: DomainKind) -> Result<DomainId, Error> {
        self.check_mutable()?;
        if let DomainKind::V2 { glx, .. } = kind {
            if EFR::GT_SUP.read(self.efr) == 0 {
                return Err(self.err(ErrorKind::KindUnsupported {
                    why: "v2 (guest) tables need EFR.GTSup",
                }));
            }
            if glx != Glx::One {
                return Err(self.err(ErrorKind::KindUnsupported {
                    why: "the driver writes one-level GCR3 tables (GLX = 0) only",
                }));
            }
        }
        self.format_for(kind, DomainId(0))?;
        let did = self.alloc_did()?;
        let r = (|| {
            let root = alloc_zeroed(self.base, hw, &mut self.counters, "a domain root table")?;
            let gcr3 = match kind {
                DomainKind::V1 { .. } => None,
                DomainKind::V2 { .. } => {
                    let g = match alloc_zeroed(self.base, hw, &mut self.counters, "a GCR3 table") {
                        Ok(g) => g,
                        Err(e) => {
                            hw.pages.free_page(root);
                            return Err(e);
                        }
                    };
                    let e = crate::hw::dte::Gcr3Entry::new(root.0);
                    if let Err(err) = hw.mem.write_u64(g, e.qword(0)) {
                        hw.pages.free_page(root);
                        hw.pages.free_page(g);
                        return Err(self.err(ErrorKind::Mem {
                            what: "writing a GCR3 entry",
                            err,
                        }));
                    }
                    Some(g)
                }
            };
            Ok((root, gcr3))
        })();
        let (root, gcr3) = match r {
            Ok(x) => x,
            Err(e) => {
                self.release_did(did);
                return Err(e);
            }
        };
        let mut tables = PageSet::new();
        tables
            .insert(root, 0)
            .map_err(|e| self.err(ErrorKind::PageSet(e)))?;
        self.domains.insert(
            did,
            Domain {
                id: DomainId(did),
                kind,
                root,
                gcr3,
                state: DomainState::Live,
                tables,
                tables_known: true,
            },
        );
        Ok(DomainId(did))
    }

    /// Destroys a live domain with no device attached: invalidates its IOTLB entries,
    /// frees its table pages and its ID.
    pub fn destroy_domain(&mut self, hw: &mut Hw<'_>, did: DomainId) -> Result<(), Error> {
        self.check_mutable()?;
        let d = self.domain_ref(did)?;
        if d.state != DomainState::Live {
            return Err(self.err(ErrorKind::DomainImmutable {
                did,
                state: d.state.describe(),
            }));
        }
        let devices = self.devices.values().filter(|x| x.domain == did).count();
        if devices > 0 {
            return Err(self.err(ErrorKind::DomainInUse { did, devices }));
        }
        let v2 = matches!(d.kind, DomainKind::V2 { .. });
        self.counters.page_invalidations += 1;
        self.commands(hw, &[pages_command(did.0, v2, InvRange::ALL, true)])?;
        if let Some(d) = self.domains.remove(&did.0) {
            for p in d.tables.pages().chain(d.gcr3) {
                hw.pages.free_page(p);
                self.counters.pages_freed += 1;
            }
        }
        self.release_did(did.0);
        Ok(())
    }

    // ---------------------------------------------------------------- DTEs

    /// The DTE that binds a device to domain `d` (with `irt` when it has an interrupt
    /// remapping table): v1 as Linux writes one (V, TV, Mode, root, IR, IW, DomainID);
    /// v2 with GV, GIoV, GLX, the GCR3 table root and the guest paging mode, Mode 0,
    /// IR and IW (Linux `set_dte_gcr3_table`).
    pub fn dte_for(&self, d: &Domain, irt: Option<(PhysAddr, u64)>) -> DeviceTableEntry {
        let mut e = match d.kind {
            DomainKind::V1 { levels } => {
                DeviceTableEntry::host(d.root.0, levels, d.id.0, true, true)
            }
            DomainKind::V2 { levels, glx } => {
                let mut e = DeviceTableEntry::blocking(d.id.0);
                e.set_bit(dte_bits::IR, true);
                e.set_bit(dte_bits::IW, true);
                let gpm = if levels == 5 {
                    GuestPagingMode::Level5
                } else {
                    GuestPagingMode::Level4
                };
                e.set_guest(d.gcr3.map_or(0, |g| g.0), glx, true, gpm);
                e
            }
        };
        if let Some((root, n)) = irt {
            e.set_int_remap(root.0, n.trailing_zeros() as u8, IntCtl::Remap);
        }
        e
    }

    /// Writes `new` as the DTE of `device_id`: a translating DTE is first made blocking
    /// (qword 0, INVALIDATE_DEVTAB_ENTRY, COMPLETION_WAIT); then qwords 1..3 and qword
    /// 0 last; then INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES of `flush` (the
    /// domains whose translations the device may have cached), COMPLETION_WAIT.
    pub(crate) fn set_dte(
        &mut self,
        hw: &mut Hw<'_>,
        device_id: u16,
        new: &DeviceTableEntry,
        flush: &[(u16, bool)],
    ) -> Result<(), Error> {
        let at = self.dte_addr(device_id);
        let cur = read_dte(hw.mem, at).map_err(mem_err(self.base, "reading a DTE"))?;
        if !is_blocking(&cur) {
            let block = DeviceTableEntry::blocking(cur.domain_id()).qword(0);
            hw.mem
                .write_u64(at, block)
                .map_err(mem_err(self.base, "writing a blocking DTE"))?;
            self.counters.dte_invalidations += 1;
            self.commands(hw, &[Command::invalidate_devtab_entry(device_id)])?;
        }
        write_dte(hw.mem, at, new).map_err(mem_err(self.base, "writing a DTE"))?;
        let mut cmds = ::alloc::vec![Command::invalidate_devtab_entry(device_id)];
        self.counters.dte_invalidations += 1;
        if new.int_valid() || cur.int_valid() {
            cmds.push(Command::invalidate_interrupt_table(device_id));
        }
        for &(did, v2) in flush {
            cmds.push(pages_command(did, v2, InvRange::ALL, true));
            self.counters.page_invalidations += 1;
        }
        self.commands(hw, &cmds)
    }

    /// Attaches device `device_id` to domain `did`: its DTE goes from blocking to the
    /// domain's translation (see [`set_dte`](Self::set_dte) for the order).
    pub fn attach(&mut self, hw: &mut Hw<'_>, device_id: u16, did: DomainId) -> Result<(), Error> {
        self.check_mutable()?;
        self.check_device(device_id)?;
        if let Some(dev) = self.devices.get(&device_id) {
            return Err(self.err(ErrorKind::DeviceAttached {
                device_id,
                did: dev.domain,
            }));
        }
        let d = self.domain_ref(did)?;
        let e = self.dte_for(d, None);
        let v2 = matches!(d.kind, DomainKind::V2 { .. });
        self.set_dte(hw, device_id, &e, &[(did.0, v2)])?;
        self.devices.insert(
            device_id,
            Device {
                device_id,
                domain: did,
                irt: None,
                state: DeviceState::Live,
            },
        );
        Ok(())
    }

    /// Detaches device `device_id`: its DTE becomes blocking (never V = 0, which would
    /// let its DMA pass untranslated), with the invalidations; its interrupt-remapping
    /// table, if any, is freed.
    pub fn detach(&mut self, hw: &mut Hw<'_>, device_id: u16) -> Result<(), Error> {
        self.check_mutable()?;
        let dev = *self
            .devices
            .get(&device_id)
            .ok_or(self.err(ErrorKind::NoSuchDevice { device_id }))?;
        if dev.state != DeviceState::Live {
            return Err(self.err(ErrorKind::DeviceImmutable {
                device_id,
                state: dev.state.describe(),
            }));
        }
        self.block_device(hw, device_id, dev.domain)?;
        self.devices.remove(&device_id);
        if let Some((root, n)) = dev.irt {
            for p in irt_pages(root, n) {
                hw.pages.free_page(p);
                self.counters.pages_freed += 1;
            }
        }
        Ok(())
    }

    /// Makes the DTE of `device_id` blocking and invalidates it and domain `did`.
    pub(crate) fn block_device(
        &mut self,
        hw: &mut Hw<'_>,
        device_id: u16,
        did: DomainId,
    ) -> Result<(), Error> {
        let v2 = self
            .domains
            .get(&did.0)
            .is_some_and(|d| matches!(d.kind, DomainKind::V2 { .. }));
        self.set_dte(
            hw,
            device_id,
            &DeviceTableEntry::blocking(0),
            &[(did.0, v2)],
        )
    }

    /// Gives device `device_id` (attached, live) an interrupt-remapping table of
    /// `2^len` entries (16-byte IRTEs, `len` 0..=8 so the table fits a page, Linux
    /// allocates 512 entries in GA mode over two pages): a zeroed table (every IRTE
    /// RemapEn = 0, so every interrupt is blocked) and DTE IV = 1, IntTabLen, the
    /// root and IntCtl = remapped. Interrupt remapping itself comes later; the table is
    /// here so the handover preserves it bit for bit.
    pub fn set_interrupt_table(
        &mut self,
        hw: &mut Hw<'_>,
        device_id: u16,
        len: u8,
    ) -> Result<PhysAddr, Error> {
        self.check_mutable()?;
        let dev = *self
            .devices
            .get(&device_id)
            .ok_or(self.err(ErrorKind::NoSuchDevice { device_id }))?;
        if dev.state != DeviceState::Live || dev.irt.is_some() || len > 8 {
            return Err(self.err(ErrorKind::DeviceImmutable {
                device_id,
                state: "not live, already remapping interrupts, or asking for more than 256 IRTEs",
            }));
        }
        let t = alloc_zeroed(
            self.base,
            hw,
            &mut self.counters,
            "an interrupt remapping table",
        )?;
        let irt = Some((t, 1u64 << len));
        let d = self.domain_ref(dev.domain)?;
        let e = self.dte_for(d, irt);
        // Only qword 2 changes: one 64-bit store.
        let at = PhysAddr(self.dte_addr(device_id).0 + 16);
        hw.mem
            .write_u64(at, e.qword(2))
            .map_err(mem_err(self.base, "writing a DTE"))?;
        self.counters.dte_invalidations += 1;
        self.commands(
            hw,
            &[
                Command::invalidate_devtab_entry(device_id),
                Command::invalidate_interrupt_table(device_id),
            ],
        )?;
        if let Some(x) = self.devices.get_mut(&device_id) {
            x.irt = irt;
        }
        Ok(t)
    }

    // ---------------------------------------------------------------- map / unmap

    fn mutable_domain(&self, did: DomainId) -> Result<&Domain, Error> {
        self.check_mutable()?;
        let d = self.domain_ref(did)?;
        if d.state != DomainState::Live {
            return Err(self.err(ErrorKind::DomainImmutable {
                did,
                state: d.state.describe(),
            }));
        }
        Ok(d)
    }

    /// Maps `[iova, iova + len)` to `[pa, pa + len)` in domain `did` with pages of
    /// `size` (4K, 2M or 1G) and `perms`. All or nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        size: PageSize,
        perms: Perms,
    ) -> Result<(), Error> {
        self.mutable_domain(did)?;
        pgtable::map(self, hw, did, iova, pa, len, size, perms)
    }

    /// Unmaps every page inside `[iova, iova + len)` of domain `did`; a larger page cut
    /// by the range is an error and nothing changes. Returns the bytes unmapped.
    pub fn unmap(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        iova: Iova,
        len: u64,
    ) -> Result<u64, Error> {
        self.mutable_domain(did)?;
        pgtable::unmap(self, hw, did, iova, len, true)
    }

    /// [`unmap`](Self::unmap) without the INVALIDATE_IOMMU_PAGES: the bug a test shows
    /// as a stale translation. Freed table pages are kept (never reused while the
    /// unit may still use them). Exists for tests of the model and of the rule.
    #[doc(hidden)]
    pub fn unmap_skipping_invalidation(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        iova: Iova,
        len: u64,
    ) -> Result<u64, Error> {
        self.mutable_domain(did)?;
        pgtable::unmap(self, hw, did, iova, len, false)
    }

    /// INVALIDATE_DEVTAB_ENTRY of `device_id` and COMPLETION_WAIT (after a DTE was
    /// changed in memory, as Linux `device_flush_dte`).
    pub fn invalidate_dte(&mut self, hw: &mut Hw<'_>, device_id: u16) -> Result<(), Error> {
        self.counters.dte_invalidations += 1;
        self.commands(hw, &[Command::invalidate_devtab_entry(device_id)])
    }

    /// INVALIDATE_IOMMU_PAGES of every page of domain `did` (PDE = 1) and
    /// COMPLETION_WAIT.
    pub fn flush_domain(&mut self, hw: &mut Hw<'_>, did: DomainId) -> Result<(), Error> {
        let v2 = matches!(self.domain_ref(did)?.kind, DomainKind::V2 { .. });
        self.counters.page_invalidations += 1;
        self.commands(hw, &[pages_command(did.0, v2, InvRange::ALL, true)])
    }
}

/// INVALIDATE_IOMMU_PAGES for `did` over `range`: for a v2 domain with GN = 1 and
/// PASID 0 (bit 66; the unit tags guest translations with the PASID, Linux
/// `build_inv_iommu_pages` with `gn` for GIOV domains).
pub(crate) fn pages_command(did: u16, v2: bool, range: InvRange, pde: bool) -> Command {
    let mut c = Command::invalidate_iommu_pages(did, range, pde);
    if v2 {
        c.set_bit(66, true);
    }
    c
}

/// Pages of an interrupt-remapping table of `entries` 16-byte IRTEs at `root`.
pub(crate) fn irt_pages(root: PhysAddr, entries: u64) -> impl Iterator<Item = PhysAddr> {
    let first = root.0 & !(PAGE - 1);
    let last = (root.0 + (entries * 16).max(1) - 1) & !(PAGE - 1);
    (first..=last).step_by(PAGE as usize).map(PhysAddr)
}
