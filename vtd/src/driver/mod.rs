//! The VT-d driver: bring-up of a unit, domain IDs, domains with second-stage or
//! first-stage tables, attach/detach of devices, map/unmap with the invalidations the
//! specification requires, fault reporting.
//!
//! The driver touches hardware only through [`Hw`]: a [`RegisterAccess`] for the unit's
//! registers, a [`PhysMem`] for tables, and a [`PageAllocator`] for table pages. It
//! keeps no reference to them between calls, so the platform (or a test) may do
//! anything (such as DMA) between two driver calls.
//!
//! Invalidation rules followed (VT-d spec §6.5 and §6.1; the same choices as Linux's
//! `drivers/iommu/intel`):
//!
//! - queued invalidation whenever ECAP.QI is set (256-bit descriptors in scalable mode,
//!   every batch closed by an invalidation-wait descriptor whose status write is polled
//!   in memory); register-based invalidation (CCMD, IOTLB registers) only where QI is
//!   absent, the unit is in legacy mode and VER major is below 6;
//! - map into not-present entries: with CAP.CM a page-selective IOTLB invalidation of
//!   the new range (not-present entries may be cached); without CM only a write-buffer
//!   flush where CAP.RWBF asks for one;
//! - unmap: page-selective IOTLB invalidation (PASID-based for first-stage domains) with
//!   the smallest address mask covering the range when CAP.PSI is set and the mask is
//!   within CAP.MAMV, domain-selective otherwise; the invalidation hint is set only
//!   when no table page was freed; freed table pages go back to the allocator only
//!   after the invalidation completed;
//! - a context entry (or PASID entry) that goes away: context-cache, then PASID-cache,
//!   then IOTLB invalidation; one that appears: the same with CAP.CM (not-present
//!   entries cached under domain ID 0), a write-buffer flush otherwise.

mod error;
pub(crate) mod inval;
mod pgtable;

pub use error::{Error, ErrorKind};
pub use inval::{Invalidation, Queue};
pub use iommu_core::pool::{remove_page, PageAllocator, PagePool};

use ::alloc::collections::BTreeMap;
use ::alloc::vec::Vec;
use core::fmt;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk, Entry, EntryError, Format, Perms, Walk, WalkError, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, Pasid, PhysAddr, RegisterAccess, RequesterId};

use crate::format::{FirstStage, SecondStage};
use crate::hw::fault::{FaultReason, FaultRecord, FaultRequestType};
use crate::hw::pasid::{Flpm, PasidDirEntry, PasidEntry, PASID_ENTRY_SIZE};
use crate::hw::regs::{self, field_mask32, CAP, ECAP, FECTL, FSTS, GCMD, GSTS, RTADDR, VER};
use crate::hw::root::{
    AddressWidth, ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry,
    TranslationType, CONTEXT_ENTRY_SIZE, ROOT_ENTRY_SIZE, SM_CONTEXT_ENTRY_SIZE,
};

/// How many times a register or status word is polled before giving up.
pub const POLL_LIMIT: u32 = 10_000;

/// Bytes of a table page.
pub const PAGE: u64 = 4096;

/// What the driver needs from the platform for one call: the unit's registers, physical
/// memory, and a page allocator.
pub struct Hw<'a> {
    /// The unit's registers (offsets from its MMIO base).
    pub regs: &'a mut dyn RegisterAccess,
    /// Physical memory.
    pub mem: &'a mut dyn PhysMem,
    /// Table pages.
    pub pages: &'a mut dyn PageAllocator,
}

pub use crate::record::{DomainKind, Mode};

/// Where the unit's fault events go (FEDATA / FEADDR / FEUADDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// Message data.
    pub data: u32,
    /// Message address (64-bit; the upper half goes to FEUADDR).
    pub addr: u64,
}

/// How to bring up (or adopt) a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitConfig {
    /// MMIO base of the unit (the name the unit goes by in records and errors).
    pub mmio_base: PhysAddr,
    /// PCI segment the unit serves.
    pub segment: u16,
    /// Translation-table mode.
    pub mode: Mode,
    /// Host address width (from the platform's DMAR table); MGAW when `None`.
    pub haw: Option<u32>,
    /// Fault-event message; the event stays masked when `None` (faults are still
    /// recorded and read by [`Unit::poll_faults`]).
    pub fault_event: Option<FaultEvent>,
}

impl UnitConfig {
    /// A unit at `mmio_base` on segment 0 in `mode`, host address width = MGAW, fault
    /// events masked.
    pub fn new(mmio_base: PhysAddr, mode: Mode) -> Self {
        Self {
            mmio_base,
            segment: 0,
            mode,
            haw: None,
            fault_event: None,
        }
    }
}

/// Counters of what the driver did to the unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Invalidation descriptors submitted (waits included).
    pub descriptors: u64,
    /// Invalidation waits completed (queued) or register invalidations completed.
    pub waits: u64,
    /// Context-cache invalidations.
    pub context_invalidations: u64,
    /// PASID-cache invalidations.
    pub pasid_cache_invalidations: u64,
    /// Page-selective IOTLB invalidations (PASID-based included).
    pub iotlb_page: u64,
    /// Domain- or PASID-selective IOTLB invalidations.
    pub iotlb_domain: u64,
    /// Global IOTLB invalidations.
    pub iotlb_global: u64,
    /// Write-buffer flushes.
    pub write_buffer_flushes: u64,
    /// Table pages allocated.
    pub pages_allocated: u64,
    /// Table pages freed.
    pub pages_freed: u64,
    /// Leaf entries written by map.
    pub leaves_mapped: u64,
    /// Leaf entries cleared by unmap.
    pub leaves_unmapped: u64,
    /// Fault records read and cleared.
    pub faults: u64,
}

/// Lifecycle of a domain with respect to a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainState {
    /// Normal: map/unmap allowed.
    Live,
    /// Named by `prepare`: immutable until `cancel` (or forever in this kernel).
    Preserved,
    /// Adopted from the previous kernel: immutable until `finish`.
    Adopted,
}

impl DomainState {
    fn describe(self) -> &'static str {
        match self {
            DomainState::Live => "live",
            DomainState::Preserved => "preserved for a handover",
            DomainState::Adopted => "adopted and not finished",
        }
    }
}

/// A domain: an address space with its own domain ID and table tree.
#[derive(Clone, Debug)]
pub struct Domain {
    /// Domain ID.
    pub id: DomainId,
    /// Table format.
    pub kind: DomainKind,
    /// Number of table levels.
    pub levels: u8,
    /// Root table.
    pub root: PhysAddr,
    /// Handover state.
    pub state: DomainState,
    /// Table pages of the tree, root included (complete unless `tables_known` is false).
    pub(crate) tables: PageSet,
    /// False for an adopted domain until its tables were walked.
    pub(crate) tables_known: bool,
}

/// The fixed part of a domain (what map/unmap need), cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) id: DomainId,
    pub(crate) kind: DomainKind,
    pub(crate) levels: u8,
    pub(crate) root: PhysAddr,
}

impl Domain {
    pub(crate) fn head(&self) -> Head {
        Head {
            id: self.id,
            kind: self.kind,
            levels: self.levels,
            root: self.root,
        }
    }

    /// Number of table pages, root included (0 for an adopted domain not yet walked).
    pub fn table_pages(&self) -> u64 {
        self.tables.page_count()
    }
}

/// Lifecycle of a device binding with respect to a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Normal.
    Live,
    /// Named by `prepare`.
    Preserved,
    /// Adopted from the previous kernel.
    Adopted,
    /// Its context entry was made non-present because its state could not be trusted.
    Blocked,
}

/// A device attached to a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// Segment/bus/device/function.
    pub rid: RequesterId,
    /// PASID its requests without PASID use (RID_PASID, scalable mode only).
    pub pasid: Option<Pasid>,
    /// The domain.
    pub domain: DomainId,
    /// Address of its context entry.
    pub context_entry: PhysAddr,
    /// Its PASID directory (scalable mode).
    pub pasid_dir: Option<PhysAddr>,
    /// Its PASID table holding the RID_PASID entry (scalable mode).
    pub pasid_table: Option<PhysAddr>,
    /// Handover state.
    pub state: DeviceState,
}

/// One fault record read from the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Requester.
    pub rid: RequesterId,
    /// PASID, if the request carried one.
    pub pasid: Option<Pasid>,
    /// Faulting page address.
    pub addr: u64,
    /// Fault reason code.
    pub reason: u8,
    /// Whether the request was a write.
    pub write: bool,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = FaultReason::from_code(self.reason).map_or("unknown", |r| r.description());
        write!(
            f,
            "{} {} at {:#x}: reason {:#x} ({what})",
            self.rid,
            if self.write { "write" } else { "read" },
            self.addr,
            self.reason
        )
    }
}

/// A page-table format of either stage, for the core walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyFormat {
    /// Second stage.
    Second(SecondStage),
    /// First stage.
    First(FirstStage),
}

impl Format for AnyFormat {
    fn name(&self) -> &'static str {
        match self {
            AnyFormat::Second(f) => f.name(),
            AnyFormat::First(f) => f.name(),
        }
    }
    fn root_level(&self) -> u8 {
        match self {
            AnyFormat::Second(f) => f.root_level(),
            AnyFormat::First(f) => f.root_level(),
        }
    }
    fn table_bytes(&self, level: u8) -> u64 {
        match self {
            AnyFormat::Second(f) => f.table_bytes(level),
            AnyFormat::First(f) => f.table_bytes(level),
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        match self {
            AnyFormat::Second(f) => f.entry_shift(level),
            AnyFormat::First(f) => f.entry_shift(level),
        }
    }
    fn ia_bits(&self) -> u32 {
        match self {
            AnyFormat::Second(f) => f.ia_bits(),
            AnyFormat::First(f) => f.ia_bits(),
        }
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        match self {
            AnyFormat::Second(f) => f.decode(level, raw),
            AnyFormat::First(f) => f.decode(level, raw),
        }
    }
}

/// A VT-d unit under this driver's control.
#[derive(Debug)]
pub struct Unit {
    pub(crate) base: PhysAddr,
    pub(crate) segment: u16,
    pub(crate) ver: u32,
    pub(crate) cap: u64,
    pub(crate) ecap: u64,
    pub(crate) haw: u32,
    pub(crate) mode: Mode,
    pub(crate) root: PhysAddr,
    pub(crate) inval: Invalidation,
    pub(crate) dids: Vec<u64>,
    pub(crate) did_count: u32,
    pub(crate) domains: BTreeMap<u16, Domain>,
    pub(crate) devices: BTreeMap<RequesterId, Device>,
    /// Context tables by (bus, half); half is always 0 in legacy mode, 0 (devfn 0-127)
    /// or 1 (128-255) in scalable mode.
    pub(crate) ctx_tables: BTreeMap<(u8, u8), PhysAddr>,
    pub(crate) counters: Counters,
    pub(crate) frozen: bool,
    pub(crate) fault_event: Option<FaultEvent>,
    pub(crate) outgoing: Option<crate::handover::Outgoing>,
    pub(crate) incoming: Option<crate::handover::Incoming>,
}

pub(crate) fn mem_err(unit: PhysAddr, what: &'static str) -> impl Fn(MemError) -> Error {
    move |err| Error::new(unit, ErrorKind::Mem { what, err })
}

/// Reads `N` little-endian qwords at `at`.
pub(crate) fn read_qwords<const N: usize>(
    mem: &dyn PhysMem,
    at: PhysAddr,
) -> Result<[u64; N], MemError> {
    let mut buf = [0u8; 64];
    let b = buf.get_mut(..N * 8).ok_or(MemError::Overflow {
        addr: at,
        len: N as u64 * 8,
    })?;
    mem.read(at, b)?;
    let mut out = [0u64; N];
    for (i, q) in out.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *q = u64::from_le_bytes(w);
    }
    Ok(out)
}

/// Writes qwords at `at`: qwords 1.. first, qword 0 (which holds the present bit of
/// every VT-d structure) last, so hardware never sees a present entry half-written.
pub(crate) fn write_entry(mem: &mut dyn PhysMem, at: PhysAddr, q: &[u64]) -> Result<(), MemError> {
    if q.len() > 1 {
        let mut rest = Vec::with_capacity((q.len() - 1) * 8);
        for v in &q[1..] {
            rest.extend_from_slice(&v.to_le_bytes());
        }
        mem.write(PhysAddr(at.0 + 8), &rest)?;
    }
    if let Some(first) = q.first() {
        mem.write_u64(at, *first)?;
    }
    Ok(())
}

/// Clears an entry: qword 0 (present bit) first, then the rest.
pub(crate) fn clear_entry(
    mem: &mut dyn PhysMem,
    at: PhysAddr,
    qwords: usize,
) -> Result<(), MemError> {
    mem.write_u64(at, 0)?;
    if qwords > 1 {
        let zero = [0u8; 56];
        mem.write(PhysAddr(at.0 + 8), &zero[..(qwords - 1) * 8])?;
    }
    Ok(())
}

/// Issues one GCMD command the recommended way and polls GSTS for its status.
pub(crate) fn gcmd(
    unit: PhysAddr,
    regs: &mut dyn RegisterAccess,
    bit: u32,
    set: bool,
) -> Result<(), Error> {
    let one_shot = regs::GSTS_ONE_SHOT_MASK & bit != 0;
    let mut v = regs.read32(regs::GSTS) & !regs::GSTS_ONE_SHOT_MASK;
    if set || one_shot {
        v |= bit;
    } else {
        v &= !bit;
    }
    regs.write32(regs::GCMD, v);
    let wbf = bit == field_mask32(GCMD::WBF);
    for _ in 0..POLL_LIMIT {
        let s = regs.read32(regs::GSTS);
        let done = if wbf {
            s & field_mask32(GSTS::WBFS) == 0
        } else if one_shot {
            s & bit != 0
        } else {
            (s & bit != 0) == set
        };
        if done {
            return Ok(());
        }
    }
    Err(Error::new(
        unit,
        ErrorKind::Timeout {
            what: "GSTS status of a GCMD command",
            last: regs.read32(regs::GSTS) as u64,
        },
    ))
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

impl Unit {
    /// Brings up a unit that is not translating yet: reads VER/CAP/ECAP, checks the
    /// mode, installs an empty root table, sets up invalidation (queued where ECAP.QI),
    /// invalidates every cache globally, clears stale faults and enables fault events,
    /// then enables translation (every request faults until a device is attached).
    pub fn init(hw: &mut Hw<'_>, cfg: &UnitConfig) -> Result<Unit, Error> {
        let mut unit = Self::probe(hw, cfg)?;
        let gsts = hw.regs.read32(regs::GSTS);
        if GSTS::TES.is_set(gsts) {
            return Err(unit.err(ErrorKind::TranslationAlreadyEnabled { gsts }));
        }
        let root = alloc_zeroed(unit.base, hw, &mut unit.counters, "the root table")?;
        unit.root = root;
        let r = (|| {
            unit.set_root(hw, root)?;
            unit.inval = Invalidation::setup(
                unit.base,
                hw,
                unit.ecap,
                unit.ver,
                unit.mode,
                &mut unit.counters,
            )?;
            unit.global_invalidate(hw)?;
            unit.enable_faults(hw)?;
            unit.flush_write_buffer(hw)?;
            gcmd(unit.base, hw.regs, field_mask32(GCMD::TE), true)
        })();
        if let Err(e) = r {
            unit.inval.release(hw);
            hw.pages.free_page(root);
            return Err(e);
        }
        Ok(unit)
    }

    /// Reads the unit's identity and capabilities and checks `cfg.mode` is supported;
    /// touches nothing.
    pub(crate) fn probe(hw: &mut Hw<'_>, cfg: &UnitConfig) -> Result<Unit, Error> {
        let base = cfg.mmio_base;
        let ver = hw.regs.read32(regs::VER);
        let cap = hw.regs.read64(regs::CAP);
        let ecap = hw.regs.read64(regs::ECAP);
        let err = |kind| Error::new(base, kind);
        if cfg.mode == Mode::Scalable {
            if !ECAP::SMTS.is_set(ecap) {
                return Err(err(ErrorKind::ModeUnsupported {
                    why: "scalable mode needs ECAP.SMTS",
                }));
            }
            if !ECAP::SLTS.is_set(ecap) && !ECAP::FLTS.is_set(ecap) {
                return Err(err(ErrorKind::ModeUnsupported {
                    why: "scalable mode needs ECAP.SLTS or ECAP.FLTS",
                }));
            }
            if !ECAP::QI.is_set(ecap) {
                return Err(err(ErrorKind::ModeUnsupported {
                    why: "scalable mode needs queued invalidation (ECAP.QI)",
                }));
            }
        }
        let ver_major = VER::MAX.read(ver) as u8;
        if !ECAP::QI.is_set(ecap) && ver_major >= 6 {
            return Err(err(ErrorKind::NoInvalidation { ver_major }));
        }
        let mgaw = (CAP::MGAW.read(cap) + 1) as u32;
        let haw = cfg.haw.unwrap_or(mgaw).clamp(12, 64);
        let did_count = regs::domain_count(cap);
        let mut unit = Unit {
            base,
            segment: cfg.segment,
            ver,
            cap,
            ecap,
            haw,
            mode: cfg.mode,
            root: PhysAddr(0),
            inval: Invalidation::Register,
            dids: ::alloc::vec![0u64; did_count.div_ceil(64) as usize],
            did_count,
            domains: BTreeMap::new(),
            devices: BTreeMap::new(),
            ctx_tables: BTreeMap::new(),
            counters: Counters::default(),
            frozen: false,
            fault_event: cfg.fault_event,
            outgoing: None,
            incoming: None,
        };
        if CAP::CM.is_set(cap) {
            // Not-present entries are cached under domain ID 0 with caching mode.
            unit.reserve_did(0);
        }
        Ok(unit)
    }

    pub(crate) fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.base, kind)
    }

    /// Writes RTADDR (root and mode) and latches it with SRTP.
    pub(crate) fn set_root(&mut self, hw: &mut Hw<'_>, root: PhysAddr) -> Result<(), Error> {
        hw.regs.write64(
            regs::RTADDR,
            (root.0 & !0xfff) | regs::field_value(RTADDR::TTM, self.mode.ttm().bits()),
        );
        gcmd(self.base, hw.regs, field_mask32(GCMD::SRTP), true)
    }

    /// Global context-cache, PASID-cache (scalable) and IOTLB invalidation.
    pub(crate) fn global_invalidate(&mut self, hw: &mut Hw<'_>) -> Result<(), Error> {
        let mut ops = ::alloc::vec![inval::Op::ContextGlobal];
        if self.mode == Mode::Scalable {
            ops.push(inval::Op::PasidCacheGlobal);
        }
        ops.push(inval::Op::IotlbGlobal);
        self.invalidate(hw, &ops)
    }

    pub(crate) fn invalidate(&mut self, hw: &mut Hw<'_>, ops: &[inval::Op]) -> Result<(), Error> {
        let (base, cap, ecap) = (self.base, self.cap, self.ecap);
        self.inval.run(base, cap, ecap, hw, ops, &mut self.counters)
    }

    /// Flushes the write buffer where CAP.RWBF asks for it.
    pub(crate) fn flush_write_buffer(&mut self, hw: &mut Hw<'_>) -> Result<(), Error> {
        if CAP::RWBF.is_set(self.cap) {
            gcmd(self.base, hw.regs, field_mask32(GCMD::WBF), true)?;
            self.counters.write_buffer_flushes += 1;
        }
        Ok(())
    }

    /// Clears every pending fault record and FSTS fault bits, programs the fault-event
    /// message and unmasks it (when configured). Returns the faults cleared.
    pub(crate) fn enable_faults(&mut self, hw: &mut Hw<'_>) -> Result<Vec<Fault>, Error> {
        let old = self.read_and_clear_faults(hw, true);
        if let Some(ev) = self.fault_event {
            hw.regs.write32(regs::FEDATA, ev.data);
            hw.regs.write32(regs::FEADDR, ev.addr as u32);
            hw.regs.write32(regs::FEUADDR, (ev.addr >> 32) as u32);
            hw.regs.write32(regs::FECTL, 0);
        } else {
            hw.regs.write32(regs::FECTL, field_mask32(FECTL::IM));
        }
        Ok(old)
    }

    /// Reads and clears the fault records. With `all`, every record with F set is read
    /// (used at bring-up and adoption, where FSTS.FRI may be stale); otherwise the
    /// records from FSTS.FRI while F is set, as the primary fault handler does.
    fn read_and_clear_faults(&mut self, hw: &mut Hw<'_>, all: bool) -> Vec<Fault> {
        let n = regs::fault_recording_count(self.cap);
        let fsts = hw.regs.read32(regs::FSTS);
        let mut out = Vec::new();
        if !all && !FSTS::PPF.is_set(fsts) {
            return out;
        }
        let start = if all {
            0
        } else {
            FSTS::FRI.read(fsts) as u64 % n
        };
        for k in 0..n {
            let i = (start + k) % n;
            let off = regs::fault_recording_offset(self.cap, i);
            let rec = FaultRecord::from_qwords([hw.regs.read64(off), hw.regs.read64(off + 8)]);
            if !rec.valid() {
                if all {
                    continue;
                }
                break;
            }
            out.push(Fault {
                rid: RequesterId::from_sid(self.segment, rec.sid()),
                pasid: rec.pasid().map(Pasid),
                addr: rec.fault_info(),
                reason: rec.reason(),
                write: rec.request_type() == FaultRequestType::Write,
            });
            // F (bit 127) is write-1-to-clear: bit 31 of the record's last dword.
            hw.regs.write32(off + 12, 1 << 31);
        }
        hw.regs.write32(
            regs::FSTS,
            field_mask32(FSTS::PFO) | field_mask32(FSTS::PPF),
        );
        self.counters.faults += out.len() as u64;
        out
    }

    /// The primary fault handler: reads and clears the fault records from FSTS.FRI and
    /// clears PFO/PPF. Returns the faults in the order the unit recorded them.
    pub fn poll_faults(&mut self, hw: &mut Hw<'_>) -> Vec<Fault> {
        self.read_and_clear_faults(hw, false)
    }

    // ---------------------------------------------------------------- accessors

    /// MMIO base of the unit.
    pub fn base(&self) -> PhysAddr {
        self.base
    }
    /// Translation-table mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// CAP register.
    pub fn cap(&self) -> u64 {
        self.cap
    }
    /// ECAP register.
    pub fn ecap(&self) -> u64 {
        self.ecap
    }
    /// Host address width in use.
    pub fn haw(&self) -> u32 {
        self.haw
    }
    /// Root table.
    pub fn root_table(&self) -> PhysAddr {
        self.root
    }
    /// How invalidations are issued.
    pub fn invalidation(&self) -> &Invalidation {
        &self.inval
    }
    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// Number of domain IDs (from CAP.ND).
    pub fn domain_id_count(&self) -> u32 {
        self.did_count
    }
    /// Whether domain ID `did` is allocated (or reserved).
    pub fn domain_id_in_use(&self, did: DomainId) -> bool {
        let i = did.0 as usize;
        self.dids
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// The domains, by ID.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> + '_ {
        self.domains.values()
    }
    /// The domain `did`.
    pub fn domain(&self, did: DomainId) -> Option<&Domain> {
        self.domains.get(&did.0)
    }
    /// The attached devices, by requester ID.
    pub fn devices(&self) -> impl Iterator<Item = &Device> + '_ {
        self.devices.values()
    }
    /// The device `rid`.
    pub fn device(&self, rid: RequesterId) -> Option<&Device> {
        self.devices.get(&rid)
    }
    /// Whether the unit is frozen for a kexec.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The walker format of domain `did`.
    pub fn format(&self, did: DomainId) -> Result<AnyFormat, Error> {
        let d = self.domain_ref(did)?;
        self.format_for(d.kind, d.levels, did)
    }

    pub(crate) fn format_for(
        &self,
        kind: DomainKind,
        levels: u8,
        did: DomainId,
    ) -> Result<AnyFormat, Error> {
        let r = match kind {
            DomainKind::SecondStage => {
                SecondStage::for_unit(levels, self.cap, self.ecap, self.haw).map(AnyFormat::Second)
            }
            DomainKind::FirstStage => {
                FirstStage::for_unit(levels, self.cap, self.haw).map(AnyFormat::First)
            }
        };
        r.map_err(|err| self.err(ErrorKind::Format { did, err }))
    }

    /// Walks the tables of domain `did` with the core walker: every mapping run and
    /// every table page.
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

    fn check_mutable(&self) -> Result<(), Error> {
        if self.frozen {
            return Err(self.err(ErrorKind::Frozen));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- domain IDs

    pub(crate) fn reserve_did(&mut self, did: u16) -> bool {
        let i = did as usize;
        match self.dids.get_mut(i / 64) {
            Some(w) if (did as u32) < self.did_count => {
                let was = *w & (1 << (i % 64)) != 0;
                *w |= 1 << (i % 64);
                !was
            }
            _ => false,
        }
    }

    pub(crate) fn release_did(&mut self, did: u16) {
        let i = did as usize;
        if let Some(w) = self.dids.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    fn alloc_did(&mut self) -> Result<u16, Error> {
        for (wi, w) in self.dids.iter_mut().enumerate() {
            if *w != u64::MAX {
                let b = (!*w).trailing_zeros() as usize;
                let did = wi * 64 + b;
                if did as u32 >= self.did_count {
                    break;
                }
                *w |= 1 << b;
                return Ok(did as u16);
            }
        }
        Err(self.err(ErrorKind::OutOfDomainIds {
            count: self.did_count,
        }))
    }

    // ---------------------------------------------------------------- domains

    /// The number of levels a new domain of `kind` gets: second stage 4 (48-bit) where
    /// CAP.SAGAW allows, else 5, else 3; first stage 4.
    pub fn default_levels(&self, kind: DomainKind) -> u8 {
        match kind {
            DomainKind::SecondStage => {
                let sagaw = CAP::SAGAW.read(self.cap);
                [4u8, 5, 3]
                    .into_iter()
                    .find(|&l| sagaw & (1 << (l - 2)) != 0)
                    .unwrap_or(4)
            }
            DomainKind::FirstStage => 4,
        }
    }

    /// Creates an empty domain of `kind` with the default number of levels.
    pub fn create_domain(&mut self, hw: &mut Hw<'_>, kind: DomainKind) -> Result<DomainId, Error> {
        let levels = self.default_levels(kind);
        self.create_domain_with_levels(hw, kind, levels)
    }

    /// Creates an empty domain of `kind` with `levels` levels.
    pub fn create_domain_with_levels(
        &mut self,
        hw: &mut Hw<'_>,
        kind: DomainKind,
        levels: u8,
    ) -> Result<DomainId, Error> {
        self.check_mutable()?;
        match (kind, self.mode) {
            (DomainKind::FirstStage, Mode::Legacy) => {
                return Err(self.err(ErrorKind::KindUnsupported {
                    why: "first-stage tables need scalable mode",
                }))
            }
            (DomainKind::FirstStage, Mode::Scalable) if !ECAP::FLTS.is_set(self.ecap) => {
                return Err(self.err(ErrorKind::KindUnsupported {
                    why: "first-stage translation needs ECAP.FLTS",
                }))
            }
            (DomainKind::SecondStage, Mode::Scalable) if !ECAP::SLTS.is_set(self.ecap) => {
                return Err(self.err(ErrorKind::KindUnsupported {
                    why: "second-stage translation in scalable mode needs ECAP.SLTS",
                }))
            }
            _ => {}
        }
        self.format_for(kind, levels, DomainId(0))?;
        let did = self.alloc_did()?;
        let root = match alloc_zeroed(self.base, hw, &mut self.counters, "a domain root table") {
            Ok(r) => r,
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
                levels,
                root,
                state: DomainState::Live,
                tables,
                tables_known: true,
            },
        );
        Ok(DomainId(did))
    }

    /// Destroys a live domain with no device attached: frees its table pages and its ID.
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
        let kind = d.kind;
        // No device uses it, but its ID may tag IOTLB entries: drop them before reuse.
        let op = match kind {
            DomainKind::SecondStage => inval::Op::IotlbDomain { did: did.0 },
            DomainKind::FirstStage => inval::Op::PasidIotlbPasid {
                did: did.0,
                pasid: 0,
            },
        };
        self.invalidate(hw, &[op])?;
        if let Some(d) = self.domains.remove(&did.0) {
            for p in d.tables.pages() {
                hw.pages.free_page(p);
                self.counters.pages_freed += 1;
            }
        }
        self.release_did(did.0);
        Ok(())
    }

    // ---------------------------------------------------------------- attach

    /// Attaches device `rid` to domain `did`: legacy context entry, or scalable context
    /// entry with a PASID directory and the RID_PASID (PASID 0) entry.
    pub fn attach(
        &mut self,
        hw: &mut Hw<'_>,
        rid: RequesterId,
        did: DomainId,
    ) -> Result<(), Error> {
        self.check_mutable()?;
        if rid.segment != self.segment {
            return Err(self.err(ErrorKind::WrongSegment {
                rid,
                segment: self.segment,
            }));
        }
        if let Some(dev) = self.devices.get(&rid) {
            return Err(self.err(ErrorKind::DeviceAttached {
                rid,
                did: dev.domain,
            }));
        }
        let d = self.domain_ref(did)?.clone();
        let mut new_pages = Vec::new();
        let r = match self.mode {
            Mode::Legacy => self.attach_legacy(hw, rid, &d, &mut new_pages),
            Mode::Scalable => self.attach_scalable(hw, rid, &d, &mut new_pages),
        };
        match r {
            Ok(dev) => {
                self.devices.insert(rid, dev);
                Ok(())
            }
            Err(e) => {
                for (key, p) in new_pages {
                    if let Some(k) = key {
                        // A context table created for this attach: unhook it.
                        let _ = self.unhook_context_table(hw, k);
                    }
                    hw.pages.free_page(p);
                    self.counters.pages_freed += 1;
                }
                Err(e)
            }
        }
    }

    /// The context table for `(bus, half)`, created (and hooked in the root entry) when
    /// missing; created tables are pushed on `new_pages` with their key.
    fn context_table(
        &mut self,
        hw: &mut Hw<'_>,
        bus: u8,
        half: u8,
        new_pages: &mut Vec<(Option<(u8, u8)>, PhysAddr)>,
    ) -> Result<PhysAddr, Error> {
        if let Some(&t) = self.ctx_tables.get(&(bus, half)) {
            return Ok(t);
        }
        let t = alloc_zeroed(self.base, hw, &mut self.counters, "a context table")?;
        new_pages.push((None, t));
        let re_at = PhysAddr(self.root.0 + bus as u64 * ROOT_ENTRY_SIZE);
        let me = mem_err(self.base, "writing a root entry");
        match self.mode {
            Mode::Legacy => {
                write_entry(hw.mem, re_at, &RootEntry::new(t.0).qwords()).map_err(&me)?;
            }
            Mode::Scalable => {
                let cur = ScalableRootEntry::from_qwords(
                    read_qwords::<2>(hw.mem, re_at)
                        .map_err(mem_err(self.base, "reading a root entry"))?,
                );
                let lo = cur.lower_present().then(|| cur.lower_table());
                let hi = cur.upper_present().then(|| cur.upper_table());
                let e = if half == 0 {
                    ScalableRootEntry::new(Some(t.0), hi)
                } else {
                    ScalableRootEntry::new(lo, Some(t.0))
                };
                // The half not touched keeps its bits; write both qwords.
                write_entry(hw.mem, re_at, &e.qwords()).map_err(&me)?;
            }
        }
        if let Some(last) = new_pages.last_mut() {
            last.0 = Some((bus, half));
        }
        self.ctx_tables.insert((bus, half), t);
        Ok(t)
    }

    /// Clears the root entry (half) pointing to context table `key` and forgets it.
    pub(crate) fn unhook_context_table(
        &mut self,
        hw: &mut Hw<'_>,
        key: (u8, u8),
    ) -> Result<(), Error> {
        let (bus, half) = key;
        self.ctx_tables.remove(&key);
        let re_at = PhysAddr(self.root.0 + bus as u64 * ROOT_ENTRY_SIZE);
        let me = mem_err(self.base, "writing a root entry");
        match self.mode {
            Mode::Legacy => clear_entry(hw.mem, re_at, 2).map_err(&me),
            Mode::Scalable => {
                let cur = ScalableRootEntry::from_qwords(
                    read_qwords::<2>(hw.mem, re_at)
                        .map_err(mem_err(self.base, "reading a root entry"))?,
                );
                let lo = cur.lower_present().then(|| cur.lower_table());
                let hi = cur.upper_present().then(|| cur.upper_table());
                let e = if half == 0 {
                    ScalableRootEntry::new(None, hi)
                } else {
                    ScalableRootEntry::new(lo, None)
                };
                // Present bits live in each qword; clearing ours first is one write.
                let at = if half == 0 {
                    re_at
                } else {
                    PhysAddr(re_at.0 + 8)
                };
                hw.mem.write_u64(at, e.qword(half as usize)).map_err(&me)
            }
        }
    }

    fn attach_invalidate_new(
        &mut self,
        hw: &mut Hw<'_>,
        rid: RequesterId,
        did: u16,
        kind: DomainKind,
    ) -> Result<(), Error> {
        if CAP::CM.is_set(self.cap) {
            // Not-present entries may be cached, tagged with domain ID 0.
            let mut ops = ::alloc::vec![inval::Op::ContextDevice {
                did: 0,
                sid: rid.sid()
            }];
            if self.mode == Mode::Scalable {
                ops.push(inval::Op::PasidCachePasid { did, pasid: 0 });
                ops.push(match kind {
                    DomainKind::SecondStage => inval::Op::IotlbDomain { did },
                    DomainKind::FirstStage => inval::Op::PasidIotlbPasid { did, pasid: 0 },
                });
            } else {
                // As Linux's context_present_cache_flush(): the context cache under
                // domain 0, the IOTLB of the new domain.
                ops.push(inval::Op::IotlbDomain { did });
            }
            self.invalidate(hw, &ops)
        } else {
            self.flush_write_buffer(hw)
        }
    }

    fn attach_legacy(
        &mut self,
        hw: &mut Hw<'_>,
        rid: RequesterId,
        d: &Domain,
        new_pages: &mut Vec<(Option<(u8, u8)>, PhysAddr)>,
    ) -> Result<Device, Error> {
        let aw = AddressWidth::from_levels(d.levels as u32).ok_or(self.err(ErrorKind::Format {
            did: d.id,
            err: crate::format::FormatError::SecondStageLevels { levels: d.levels },
        }))?;
        let ct = self.context_table(hw, rid.bus, 0, new_pages)?;
        let at = PhysAddr(ct.0 + rid.devfn as u64 * CONTEXT_ENTRY_SIZE);
        let cur = ContextEntry::from_qwords(
            read_qwords::<2>(hw.mem, at).map_err(mem_err(self.base, "reading a context entry"))?,
        );
        if cur.present() {
            return Err(self.err(ErrorKind::DeviceAttached {
                rid,
                did: DomainId(cur.did()),
            }));
        }
        let ce = ContextEntry::new(d.root.0, aw, d.id.0, TranslationType::Untranslated);
        write_entry(hw.mem, at, &ce.qwords())
            .map_err(mem_err(self.base, "writing a context entry"))?;
        self.attach_invalidate_new(hw, rid, d.id.0, d.kind)?;
        Ok(Device {
            rid,
            pasid: None,
            domain: d.id,
            context_entry: at,
            pasid_dir: None,
            pasid_table: None,
            state: DeviceState::Live,
        })
    }

    /// The PASID-table entry binding RID_PASID to domain `d`.
    pub(crate) fn pasid_entry_for(&self, d: &Domain) -> Result<PasidEntry, Error> {
        match d.kind {
            DomainKind::SecondStage => {
                let aw = AddressWidth::from_levels(d.levels as u32).ok_or(self.err(
                    ErrorKind::Format {
                        did: d.id,
                        err: crate::format::FormatError::SecondStageLevels { levels: d.levels },
                    },
                ))?;
                Ok(PasidEntry::second_stage(d.root.0, aw, d.id.0))
            }
            DomainKind::FirstStage => {
                let flpm = if d.levels == 5 {
                    Flpm::Level5
                } else {
                    Flpm::Level4
                };
                // AW is programmed for first stage too (Linux
                // `intel_pasid_setup_first_level`); QEMU bounds first-stage input
                // addresses by 30 + 9·AW, so AW = 0 would fault every IOVA ≥ 1 GiB.
                let mut pe = PasidEntry::first_stage(d.root.0, flpm, d.id.0);
                pe.set_aw(flpm.address_width().bits());
                Ok(pe)
            }
        }
    }

    fn attach_scalable(
        &mut self,
        hw: &mut Hw<'_>,
        rid: RequesterId,
        d: &Domain,
        new_pages: &mut Vec<(Option<(u8, u8)>, PhysAddr)>,
    ) -> Result<Device, Error> {
        let pe = self.pasid_entry_for(d)?;
        let half = rid.devfn >> 7;
        let ct = self.context_table(hw, rid.bus, half, new_pages)?;
        let at = PhysAddr(ct.0 + (rid.devfn & 0x7f) as u64 * SM_CONTEXT_ENTRY_SIZE);
        let cur = ScalableContextEntry::from_qwords(
            read_qwords::<4>(hw.mem, at).map_err(mem_err(self.base, "reading a context entry"))?,
        );
        if cur.present() {
            return Err(self.err(ErrorKind::DeviceAttached { rid, did: d.id }));
        }
        let dir = alloc_zeroed(self.base, hw, &mut self.counters, "a PASID directory")?;
        new_pages.push((None, dir));
        let table = alloc_zeroed(self.base, hw, &mut self.counters, "a PASID table")?;
        new_pages.push((None, table));
        let me = mem_err(self.base, "writing a PASID or context entry");
        // RID_PASID is 0: directory entry 0, table entry 0.
        write_entry(hw.mem, table, &pe.qwords()).map_err(&me)?;
        write_entry(hw.mem, dir, &PasidDirEntry::new(table.0).qwords()).map_err(&me)?;
        // PDTS = 0: a directory of 2^7 entries, PASIDs 0..8191 (one page).
        let mut ce = ScalableContextEntry::new(dir.0, 0);
        ce.set_rid_pasid(0);
        write_entry(hw.mem, at, &ce.qwords()).map_err(&me)?;
        self.attach_invalidate_new(hw, rid, d.id.0, d.kind)?;
        Ok(Device {
            rid,
            pasid: Some(Pasid(0)),
            domain: d.id,
            context_entry: at,
            pasid_dir: Some(dir),
            pasid_table: Some(table),
            state: DeviceState::Live,
        })
    }

    /// Detaches device `rid`: its PASID entry (scalable) and context entry become
    /// non-present, followed by the context-cache, PASID-cache and IOTLB invalidations;
    /// its PASID pages are freed.
    pub fn detach(&mut self, hw: &mut Hw<'_>, rid: RequesterId) -> Result<(), Error> {
        self.check_mutable()?;
        let dev = *self
            .devices
            .get(&rid)
            .ok_or(self.err(ErrorKind::NoSuchDevice { rid }))?;
        if dev.state != DeviceState::Live {
            return Err(self.err(ErrorKind::DeviceImmutable {
                rid,
                state: match dev.state {
                    DeviceState::Preserved => "preserved for a handover",
                    DeviceState::Adopted => "adopted and not finished",
                    _ => "blocked",
                },
            }));
        }
        self.clear_device(hw, &dev)?;
        self.devices.remove(&rid);
        for p in [dev.pasid_table, dev.pasid_dir].into_iter().flatten() {
            hw.pages.free_page(p);
            self.counters.pages_freed += 1;
        }
        Ok(())
    }

    /// Makes the device's translation structures non-present and invalidates: PASID
    /// entry, PASID cache and IOTLB of that PASID (scalable), then the context entry,
    /// context cache, PASID cache and IOTLB of the domain.
    pub(crate) fn clear_device(&mut self, hw: &mut Hw<'_>, dev: &Device) -> Result<(), Error> {
        let did = dev.domain.0;
        let kind = self.domains.get(&did).map(|d| d.kind);
        let me = mem_err(self.base, "clearing a context or PASID entry");
        match self.mode {
            Mode::Legacy => {
                clear_entry(hw.mem, dev.context_entry, 2).map_err(&me)?;
                self.invalidate(
                    hw,
                    &[
                        inval::Op::ContextDevice {
                            did,
                            sid: dev.rid.sid(),
                        },
                        inval::Op::IotlbDomain { did },
                    ],
                )
            }
            Mode::Scalable => {
                let iotlb = match kind {
                    Some(DomainKind::FirstStage) => inval::Op::PasidIotlbPasid { did, pasid: 0 },
                    _ => inval::Op::IotlbDomain { did },
                };
                if let Some(t) = dev.pasid_table {
                    clear_entry(hw.mem, t, (PASID_ENTRY_SIZE / 8) as usize).map_err(&me)?;
                    self.invalidate(hw, &[inval::Op::PasidCachePasid { did, pasid: 0 }, iotlb])?;
                }
                clear_entry(hw.mem, dev.context_entry, 4).map_err(&me)?;
                self.invalidate(
                    hw,
                    &[
                        inval::Op::ContextDevice {
                            did,
                            sid: dev.rid.sid(),
                        },
                        inval::Op::PasidCacheDomain { did },
                        iotlb,
                    ],
                )
            }
        }
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
    /// `size` (4K, 2M or 1G) and `perms`. All or nothing: on error nothing stays mapped.
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
        let d = self.mutable_domain(did)?.head();
        pgtable::map(self, hw, &d, iova, pa, len, size, perms)
    }

    /// Unmaps every page inside `[iova, iova + len)` of domain `did` (both 4 KiB
    /// aligned); a larger page cut by the range is an error and nothing changes. Table
    /// pages left empty are freed after the IOTLB invalidation. Returns the bytes
    /// unmapped.
    pub fn unmap(
        &mut self,
        hw: &mut Hw<'_>,
        did: DomainId,
        iova: Iova,
        len: u64,
    ) -> Result<u64, Error> {
        let d = self.mutable_domain(did)?.head();
        pgtable::unmap(self, hw, &d, iova, len)
    }
}
