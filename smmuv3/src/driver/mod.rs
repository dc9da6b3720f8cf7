//! An Arm SMMUv3 driver: bring-up, stream tables, domains, STE and CD updates, map and
//! unmap.
//!
//! - Bring-up ([`Unit::init`]) in Linux's order (`arm_smmu_device_reset`, reference
//!   §11): GBPA.ABORT if the SMMU was left enabled, CR0 = 0 (CR0ACK), CR1, CR2,
//!   STRTAB_BASE/CFG, CMDQ_BASE/PROD/CONS, CMDQEN, CFGI_ALL + TLBI_NSNH_ALL
//!   (+ TLBI_EL2_ALL with IDR0.HYP) + CMD_SYNC, EVENTQ_BASE/PROD/CONS, EVENTQEN,
//!   SMMUEN; every CR0 change waits for CR0ACK.
//! - Stream tables, linear or 2-level (SPLIT 8, an L2 table allocated on the first
//!   attach of a StreamID it covers).
//! - Domains ([`Unit::create_domain`]): stage 1 (an ASID and TTB0, installed through a
//!   per-master CD table, linear or 2-level), stage 2 (a VMID and S2TTB in the STE),
//!   nested (both; stage 2 maps the stage-1 output and every stage-1 table and CD
//!   table page identically). ASIDs are 8 or 16 bits by IDR0.ASID16, VMIDs by
//!   IDR0.VMID16; ASID 0 and VMID 0 are never handed out.
//! - Map and unmap through the generic `iommu_core::pgtable` algorithm over
//!   [`crate::format::Vmsa`] in 4, 16 or 64 KiB granules.
//! - STE and CD updates by the used-bits rule ([`entry`]): plain, hitless or breaking,
//!   each step followed by CFGI_STE / CFGI_CD and CMD_SYNC ([`Counters`] counts them).

mod cmdq;
pub mod entry;
mod error;
mod pgtable;

pub use cmdq::{publish, Queue};
pub use entry::UpdateKind;
pub use error::{Error, ErrorKind};
pub use iommu_core::pool::{remove_page, PageAllocator, PagePool};

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use iommu_core::kho::FrameAllocator;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{walk, Format, Walk, WalkLimits};
use iommu_core::{DomainId, PhysAddr, RegisterAccess};
use zerocopy::IntoBytes;

use crate::format::{Caps, Vmsa};
use crate::hw::cd::{Cd, L1Cd};
use crate::hw::cmd::{Cmd, Opcode};
use crate::hw::event::Event;
use crate::hw::regs::{self, QueuePos, CR0, CR1, CR2, GBPA, IDR0, IDR1, Q_PROD};
use crate::hw::ste::{Config, L1Std, S1Dss, S1Fmt, Ste, SteSlot, StrtabCfg, StrtabFmt};
use crate::hw::Granule;
pub use crate::record::Stage;

/// How many times a register is polled before giving up.
pub const POLL_LIMIT: u32 = 10_000;
/// Bytes of a page.
pub const PAGE: u64 = 4096;
/// STRTAB_BASE_CFG.SPLIT of 2-level stream tables (Linux `STRTAB_SPLIT` 8).
pub const STRTAB_SPLIT: u32 = 8;
/// Bytes of an STE or a CD.
pub const ENTRY_BYTES: u64 = 64;
/// The command queue's log2 size at most (256 commands, one page).
const CMDQ_LOG2: u32 = 8;
/// The event queue's log2 size at most (128 records, one page).
const EVENTQ_LOG2: u32 = 7;
/// S1CDMax of 2-level CD tables: 2^7 CDs, two L1 descriptors of 64 CDs (S1Fmt 1).
const CD2L_CDMAX: u8 = 7;
/// MAIR of stage-1 CDs: index 0 Normal non-cacheable (0x44), 1 Normal write-back
/// (0xff, the leaves' AttrIndx 1), 2 Device-nGnRE (0x04), 3 0xf4 (Linux
/// `io-pgtable-arm.c` `ARM_LPAE_MAIR_ATTR_*`).
pub const MAIR: u64 = 0xf404_ff44;
/// Input bits of every domain's tables (T0SZ = S2T0SZ = 16).
pub const IA_BITS: u32 = 48;

/// What the driver allocates from: 4 KiB pages, and contiguous runs for tables larger
/// than a page (16 and 64 KiB granules, concatenated stage-2 start tables, linear
/// stream tables, 2-level L2 stream tables).
pub trait Pages: PageAllocator + FrameAllocator {}
impl<T: PageAllocator + FrameAllocator + ?Sized> Pages for T {}

/// What the driver needs from the platform for one call: the SMMU's registers (offsets
/// from its MMIO base), physical memory and a page allocator.
pub struct Hw<'a> {
    /// The SMMU's registers.
    pub regs: &'a mut dyn RegisterAccess,
    /// Physical memory.
    pub mem: &'a mut dyn PhysMem,
    /// Pages.
    pub pages: &'a mut dyn Pages,
}

/// How to bring an SMMU up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitConfig {
    /// MMIO base.
    pub mmio_base: PhysAddr,
    /// Stream table format (2-level needs IDR0.ST_LEVEL).
    pub strtab: StrtabFmt,
    /// 2-level CD tables (needs IDR0.CD2L); linear (one CD) otherwise.
    pub two_level_cd: bool,
}

impl UnitConfig {
    /// An SMMU at `mmio_base` with a stream table of `strtab` format and linear CD
    /// tables.
    pub fn new(mmio_base: PhysAddr, strtab: StrtabFmt) -> Self {
        Self {
            mmio_base,
            strtab,
            two_level_cd: false,
        }
    }
}

/// Event counters of one SMMU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commands issued.
    pub commands: u64,
    /// CMD_SYNCs issued.
    pub syncs: u64,
    /// CMD_CFGI_STE issued.
    pub cfgi_ste: u64,
    /// CMD_CFGI_CD issued.
    pub cfgi_cd: u64,
    /// CMD_CFGI_ALL (CFGI_STE_RANGE) issued.
    pub cfgi_all: u64,
    /// TLBI commands issued.
    pub tlbi: u64,
    /// Entry updates by kind: plain, hitless, breaking.
    pub updates: [u64; 3],
    /// Pages allocated.
    pub pages_allocated: u64,
    /// Pages given back.
    pub pages_freed: u64,
}

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainState {
    /// Mutable.
    Live,
    /// Preserved for a handover: immutable until `cancel`.
    Preserved,
    /// Adopted from the previous kernel: immutable until `finish`.
    Adopted,
}

/// A translation domain.
#[derive(Clone, Debug)]
pub struct Domain {
    /// ID.
    pub id: DomainId,
    /// Stages.
    pub stage: Stage,
    /// Granule of its tables.
    pub granule: Granule,
    /// ASID (stage 1; 0 otherwise).
    pub asid: u16,
    /// VMID (stage 2; 0 otherwise).
    pub vmid: u16,
    /// Stage-1 format and TTB0.
    pub s1: Option<(Vmsa, PhysAddr)>,
    /// Stage-2 format and S2TTB.
    pub s2: Option<(Vmsa, PhysAddr)>,
    /// Every page of its tables (both stages).
    pub tables: PageSet,
    /// Nested: the stage-2 identity-mapped blocks (by address).
    pub identity: BTreeSet<u64>,
    /// State.
    pub state: DomainState,
}

/// A CD table of one master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdTable {
    /// Base (linear table, or L1 table of a 2-level one).
    pub base: PhysAddr,
    /// S1Fmt.
    pub fmt: S1Fmt,
    /// S1CDMax.
    pub cdmax: u8,
    /// The L2 table holding CD 0 (2-level).
    pub l2: Option<PhysAddr>,
    /// Bytes of each of its blocks (the L1 or linear table, the L2 table): a granule
    /// of its domain, so a nested domain's stage 2 maps exactly them.
    pub bytes: u64,
}

impl CdTable {
    /// Address of CD 0.
    pub fn cd0(&self) -> PhysAddr {
        self.l2.unwrap_or(self.base)
    }
    /// Its blocks (each of `bytes`).
    pub fn blocks(&self) -> impl Iterator<Item = PhysAddr> {
        [Some(self.base), self.l2].into_iter().flatten()
    }
}

/// A master (StreamID) attached to a domain.
#[derive(Clone, Debug)]
pub struct Master {
    /// StreamID.
    pub sid: u32,
    /// Its domain.
    pub domain: DomainId,
    /// Its STE as written.
    pub ste: Ste,
    /// Its CD table (stage 1).
    pub cd: Option<CdTable>,
    /// Preserved (or adopted): its STE takes no changes.
    pub preserved: bool,
}

/// The driver's state of one SMMU.
#[derive(Debug)]
pub struct Unit {
    pub(crate) base: PhysAddr,
    pub(crate) idr0: u32,
    pub(crate) idr1: u32,
    pub(crate) idr5: u32,
    pub(crate) caps: Caps,
    pub(crate) strtab: StrtabCfg,
    pub(crate) strtab_base: PhysAddr,
    pub(crate) strtab_bytes: u64,
    pub(crate) l2: BTreeMap<u32, PhysAddr>,
    pub(crate) cmdq: Queue,
    pub(crate) eventq: Queue,
    pub(crate) two_level_cd: bool,
    pub(crate) asids: BTreeSet<u16>,
    pub(crate) vmids: BTreeSet<u16>,
    pub(crate) domains: BTreeMap<u16, Domain>,
    pub(crate) masters: BTreeMap<u32, Master>,
    pub(crate) counters: Counters,
    pub(crate) frozen: bool,
    pub(crate) outgoing: Option<crate::handover::Outgoing>,
    pub(crate) incoming: Option<crate::handover::Incoming>,
}

/// Allocates a zeroed, size-aligned block of `bytes` (a power of two, at least a
/// page): a page from the allocator, or a contiguous run of twice the size less a page
/// with the pages outside the aligned block given back.
pub(crate) fn alloc_block(
    unit: PhysAddr,
    pages: &mut dyn Pages,
    counters: &mut Counters,
    bytes: u64,
    what: &'static str,
) -> Result<PhysAddr, Error> {
    let oom = || Error::new(unit, ErrorKind::OutOfPages { what });
    let n = bytes.max(PAGE) / PAGE;
    if n == 1 {
        let p = pages.alloc_page().ok_or_else(oom)?;
        counters.pages_allocated += 1;
        return Ok(p);
    }
    let run = (2 * n - 1) as usize;
    let p = pages.alloc_contiguous(run).ok_or_else(oom)?;
    let aligned = p.0.next_multiple_of(n * PAGE);
    for i in 0..run as u64 {
        let q = p.0 + i * PAGE;
        if q < aligned || q >= aligned + n * PAGE {
            pages.free_page(PhysAddr(q));
        }
    }
    counters.pages_allocated += n;
    Ok(PhysAddr(aligned))
}

/// Gives back the pages of a block from [`alloc_block`].
pub(crate) fn free_block(pages: &mut dyn Pages, counters: &mut Counters, at: PhysAddr, bytes: u64) {
    for i in 0..bytes.max(PAGE) / PAGE {
        pages.free_page(PhysAddr(at.0 + i * PAGE));
        counters.pages_freed += 1;
    }
}

/// Reads `N` little-endian qwords at `at`.
pub(crate) fn read_qwords<const N: usize>(
    mem: &dyn PhysMem,
    at: PhysAddr,
) -> Result<[u64; N], MemError> {
    let mut out = [0u64; N];
    mem.read(at, out.as_mut_bytes())?;
    Ok(out.map(u64::from_le))
}

/// Writes zeroes over `bytes` at `at`.
pub(crate) fn zero(mem: &mut dyn PhysMem, at: PhysAddr, bytes: u64) -> Result<(), MemError> {
    let z = [0u8; PAGE as usize];
    let mut o = 0;
    while o < bytes {
        let n = (bytes - o).min(PAGE);
        mem.write(PhysAddr(at.0 + o), &z[..n as usize])?;
        o += n;
    }
    Ok(())
}

impl Unit {
    /// The IDR5.OAS encoding (CD.IPS and STE.S2PS of the driver's domains).
    pub(crate) fn oas_enc(&self) -> u8 {
        crate::hw::pa_size_enc(self.caps.oas_bits).unwrap_or(5)
    }

    fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.base, kind)
    }

    fn mem_err(&self, what: &'static str) -> impl Fn(MemError) -> Error + '_ {
        move |err| self.err(ErrorKind::Mem { what, err })
    }

    /// Reads the ID registers and builds an empty driver state (nothing written).
    pub(crate) fn probe(hw: &mut Hw<'_>, cfg: &UnitConfig) -> Result<Unit, Error> {
        let base = cfg.mmio_base;
        let idr0 = hw.regs.read32(regs::IDR0);
        let idr1 = hw.regs.read32(regs::IDR1);
        let idr5 = hw.regs.read32(regs::IDR5);
        let unsupported = |why| Error::new(base, ErrorKind::Unsupported { why });
        let caps = Caps::from_idr(idr0, idr5).ok_or(unsupported("IDR5.OAS is reserved"))?;
        if IDR0::TTF.read(idr0) & 2 == 0 {
            return Err(unsupported("IDR0.TTF: no AArch64 tables"));
        }
        let two = IDR0::ST_LEVEL.read(idr0) == 1;
        if cfg.strtab == StrtabFmt::TwoLevel && !two {
            return Err(unsupported("IDR0.ST_LEVEL: no 2-level stream tables"));
        }
        if cfg.two_level_cd && !IDR0::CD2L.is_set(idr0) {
            return Err(unsupported("IDR0.CD2L: no 2-level CD tables"));
        }
        let sidsize = IDR1::SIDSIZE.read(idr1);
        let strtab = StrtabCfg {
            fmt: cfg.strtab,
            log2size: sidsize,
            split: STRTAB_SPLIT,
        };
        let strtab_bytes = match cfg.strtab {
            StrtabFmt::Linear => strtab.base_entries() * ENTRY_BYTES,
            StrtabFmt::TwoLevel => strtab.base_entries() * 8,
        };
        let q = |log2size| Queue {
            base: PhysAddr(0),
            log2size,
            pos: 0,
        };
        Ok(Unit {
            base,
            idr0,
            idr1,
            idr5,
            caps,
            strtab,
            strtab_base: PhysAddr(0),
            strtab_bytes,
            l2: BTreeMap::new(),
            cmdq: q(IDR1::CMDQS.read(idr1).min(CMDQ_LOG2)),
            eventq: q(IDR1::EVENTQS.read(idr1).min(EVENTQ_LOG2)),
            two_level_cd: cfg.two_level_cd,
            asids: BTreeSet::new(),
            vmids: BTreeSet::new(),
            domains: BTreeMap::new(),
            masters: BTreeMap::new(),
            counters: Counters::default(),
            frozen: false,
            outgoing: None,
            incoming: None,
        })
    }

    /// Writes CR0 and waits until CR0ACK reads the same.
    pub(crate) fn ctrl(&self, hw: &mut Hw<'_>, cr0: u32) -> Result<(), Error> {
        publish();
        hw.regs.write32(regs::CR0, cr0);
        let mut last = 0;
        for _ in 0..POLL_LIMIT {
            last = hw.regs.read32(regs::CR0ACK);
            if last == cr0 {
                return Ok(());
            }
        }
        Err(self.err(ErrorKind::Timeout {
            what: "CR0ACK to follow CR0",
            last: last as u64,
        }))
    }

    /// Sets GBPA.ABORT with the UPDATE handshake: with SMMUEN = 0 every transaction
    /// aborts instead of bypassing (reference §3).
    pub(crate) fn gbpa_abort(&self, hw: &mut Hw<'_>) -> Result<(), Error> {
        let v = hw.regs.read32(regs::GBPA);
        if GBPA::ABORT.is_set(v) {
            return Ok(());
        }
        let v = (v & !GBPA::UPDATE::SET.value) | GBPA::ABORT::SET.value;
        hw.regs.write32(regs::GBPA, v | GBPA::UPDATE::SET.value);
        let mut last = 0;
        for _ in 0..POLL_LIMIT {
            last = hw.regs.read32(regs::GBPA);
            if !GBPA::UPDATE.is_set(last) {
                return Ok(());
            }
        }
        Err(self.err(ErrorKind::Timeout {
            what: "GBPA.UPDATE to clear",
            last: last as u64,
        }))
    }

    /// Issues commands and waits for the SMMU to consume them.
    pub(crate) fn issue(&mut self, hw: &mut Hw<'_>, cmds: &[Cmd]) -> Result<(), Error> {
        cmdq::submit(
            self.base,
            &mut *hw.regs,
            &mut *hw.mem,
            &mut self.cmdq,
            &mut self.counters,
            cmds,
        )
    }

    /// The global invalidation of bring-up and adopt: CFGI_ALL, TLBI_NSNH_ALL,
    /// TLBI_EL2_ALL where IDR0.HYP, CMD_SYNC.
    pub(crate) fn invalidate_all(&mut self, hw: &mut Hw<'_>) -> Result<(), Error> {
        let mut cmds = alloc::vec![Cmd::cfgi_all(), Cmd::new(Opcode::TlbiNsnhAll)];
        if IDR0::HYP.is_set(self.idr0) {
            cmds.push(Cmd::new(Opcode::TlbiEl2All));
        }
        cmds.push(cmdq::sync());
        self.issue(hw, &cmds)
    }

    /// The CR1 value: queues and tables write-back cacheable, inner shareable
    /// (Linux `arm_smmu_device_reset`).
    pub(crate) fn cr1() -> u32 {
        (CR1::QUEUE_IC.val(1)
            + CR1::QUEUE_OC.val(1)
            + CR1::QUEUE_SH.val(3)
            + CR1::TABLE_IC.val(1)
            + CR1::TABLE_OC.val(1)
            + CR1::TABLE_SH.val(3))
        .value
    }

    /// The CR2 value: PTM, RECINVSID (Linux `arm_smmu_device_reset`).
    pub(crate) fn cr2() -> u32 {
        (CR2::PTM::SET + CR2::RECINVSID::SET).value
    }

    /// Allocates and zeroes the command and event queues.
    pub(crate) fn alloc_queues(&mut self, hw: &mut Hw<'_>) -> Result<(), Error> {
        for (what, log2, bytes) in [
            ("command queue", self.cmdq.log2size, cmdq::CMD_BYTES),
            ("event queue", self.eventq.log2size, cmdq::EVENT_BYTES),
        ] {
            let size = (bytes << log2).max(PAGE);
            let p = alloc_block(self.base, &mut *hw.pages, &mut self.counters, size, what)?;
            zero(&mut *hw.mem, p, size).map_err(self.mem_err(what))?;
            let q = if what == "command queue" {
                &mut self.cmdq
            } else {
                &mut self.eventq
            };
            q.base = p;
            q.pos = 0;
        }
        Ok(())
    }

    /// Brings up an SMMU in Linux's order (see the module documentation); every StreamID
    /// aborts (STE V = 0 raises C_BAD_STE) until a master is attached.
    pub fn init(hw: &mut Hw<'_>, cfg: &UnitConfig) -> Result<Unit, Error> {
        let mut u = Self::probe(hw, cfg)?;
        let cr0 = hw.regs.read32(regs::CR0);
        if CR0::SMMUEN.is_set(cr0) {
            // Left enabled: make the disable below fail closed.
            u.gbpa_abort(hw)?;
        }
        u.ctrl(hw, 0)?;
        hw.regs.write32(regs::CR1, Self::cr1());
        hw.regs.write32(regs::CR2, Self::cr2());
        let bytes = u.strtab_bytes.max(PAGE);
        let t = alloc_block(
            u.base,
            &mut *hw.pages,
            &mut u.counters,
            bytes,
            "stream table",
        )?;
        zero(&mut *hw.mem, t, bytes).map_err(u.mem_err("stream table"))?;
        u.strtab_base = t;
        hw.regs.write64(regs::STRTAB_BASE, t.0);
        hw.regs.write32(regs::STRTAB_BASE_CFG, u.strtab.to_reg());
        u.alloc_queues(hw)?;
        u.enable_queues(hw, 0)?;
        u.ctrl(
            hw,
            (CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value,
        )?;
        Ok(u)
    }

    /// Programs the queues and enables them (CMDQEN, global invalidation, EVENTQEN),
    /// keeping the CR0 bits of `keep` (SMMUEN when re-basing a live SMMU).
    pub(crate) fn enable_queues(&mut self, hw: &mut Hw<'_>, keep: u32) -> Result<(), Error> {
        hw.regs.write64(regs::CMDQ_BASE, self.cmdq.base_reg());
        hw.regs.write32(regs::CMDQ_PROD, 0);
        hw.regs.write32(regs::CMDQ_CONS, 0);
        self.ctrl(hw, keep | CR0::CMDQEN::SET.value)?;
        self.invalidate_all(hw)?;
        hw.regs.write64(regs::EVENTQ_BASE, self.eventq.base_reg());
        hw.regs.write32(regs::EVENTQ_PROD, 0);
        hw.regs.write32(regs::EVENTQ_CONS, 0);
        self.ctrl(hw, keep | (CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value)
    }

    /// MMIO base.
    pub fn base(&self) -> PhysAddr {
        self.base
    }
    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// The stream table configuration.
    pub fn strtab(&self) -> StrtabCfg {
        self.strtab
    }
    /// The stream table base.
    pub fn strtab_base(&self) -> PhysAddr {
        self.strtab_base
    }
    /// The command queue.
    pub fn command_queue(&self) -> Queue {
        self.cmdq
    }
    /// The event queue.
    pub fn event_queue(&self) -> Queue {
        self.eventq
    }
    /// Whether `freeze` ran.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }
    /// The domains.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> + '_ {
        self.domains.values()
    }
    /// Domain `did`.
    pub fn domain(&self, did: DomainId) -> Option<&Domain> {
        self.domains.get(&did.0)
    }
    /// The attached masters.
    pub fn masters(&self) -> impl Iterator<Item = &Master> + '_ {
        self.masters.values()
    }
    /// The master with StreamID `sid`.
    pub fn master(&self, sid: u32) -> Option<&Master> {
        self.masters.get(&sid)
    }
    /// Whether ASID `asid` is in use (or reserved by adopt).
    pub fn asid_in_use(&self, asid: u16) -> bool {
        self.asids.contains(&asid)
    }
    /// Whether VMID `vmid` is in use (or reserved by adopt).
    pub fn vmid_in_use(&self, vmid: u16) -> bool {
        self.vmids.contains(&vmid)
    }
    /// The SMMU's capabilities.
    pub fn caps(&self) -> Caps {
        self.caps
    }
    /// ASIDs the SMMU has (less ASID 0): 255 or 65535 by IDR0.ASID16.
    pub fn asid_count(&self) -> u32 {
        if IDR0::ASID16.is_set(self.idr0) {
            0xffff
        } else {
            0xff
        }
    }
    /// VMIDs the SMMU has (less VMID 0): 255 or 65535 by IDR0.VMID16.
    pub fn vmid_count(&self) -> u32 {
        if IDR0::VMID16.is_set(self.idr0) {
            0xffff
        } else {
            0xff
        }
    }

    fn alloc_id(set: &mut BTreeSet<u16>, count: u32) -> Option<u16> {
        // The lowest free ID from 1.
        let mut want = 1u32;
        for &x in set.iter() {
            if x as u32 > want {
                break;
            }
            if x as u32 == want {
                want += 1;
            }
        }
        (want <= count).then(|| {
            set.insert(want as u16);
            want as u16
        })
    }

    /// The formats of a domain of `stage` and `granule` on this SMMU.
    pub fn formats(
        &self,
        stage: Stage,
        granule: Granule,
    ) -> Result<(Option<Vmsa>, Option<Vmsa>), Error> {
        let ferr = |err| {
            self.err(ErrorKind::Format {
                stage,
                granule,
                err,
            })
        };
        let oas = crate::hw::pa_size_enc(self.caps.oas_bits).unwrap_or(5) as u64;
        let s1 = if stage.s1() {
            if !IDR0::S1P.is_set(self.idr0) {
                return Err(self.err(ErrorKind::Unsupported {
                    why: "IDR0.S1P: no stage 1",
                }));
            }
            Some(Vmsa::stage1(&self.caps, granule, 64 - IA_BITS, oas).map_err(ferr)?)
        } else {
            None
        };
        let s2 = if stage.s2() {
            if !IDR0::S2P.is_set(self.idr0) {
                return Err(self.err(ErrorKind::Unsupported {
                    why: "IDR0.S2P: no stage 2",
                }));
            }
            Some(
                Vmsa::stage2(&self.caps, granule, 64 - IA_BITS, s2sl0(granule), oas)
                    .map_err(ferr)?,
            )
        } else {
            None
        };
        Ok((s1, s2))
    }

    /// Creates an empty domain of `stage` with `granule` tables: allocates its ASID
    /// and/or VMID and its root tables.
    pub fn create_domain(
        &mut self,
        hw: &mut Hw<'_>,
        stage: Stage,
        granule: Granule,
    ) -> Result<DomainId, Error> {
        let (f1, f2) = self.formats(stage, granule)?;
        let id = (1..=u16::MAX)
            .find(|i| !self.domains.contains_key(i))
            .ok_or(self.err(ErrorKind::OutOfIds { what: "domain ID" }))?;
        let (na, nv) = (self.asid_count(), self.vmid_count());
        let asid = match stage.s1() {
            true => Self::alloc_id(&mut self.asids, na)
                .ok_or(self.err(ErrorKind::OutOfIds { what: "ASID" }))?,
            false => 0,
        };
        let vmid = match stage.s2() {
            true => match Self::alloc_id(&mut self.vmids, nv) {
                Some(v) => v,
                None => {
                    self.asids.remove(&asid);
                    return Err(self.err(ErrorKind::OutOfIds { what: "VMID" }));
                }
            },
            false => 0,
        };
        let mut d = Domain {
            id: DomainId(id),
            stage,
            granule,
            asid,
            vmid,
            s1: None,
            s2: None,
            tables: PageSet::new(),
            identity: BTreeSet::new(),
            state: DomainState::Live,
        };
        let mut roots = [None, None];
        let mut failed = None;
        for (i, f) in [f1, f2].into_iter().enumerate() {
            let Some(f) = f else { continue };
            // At least a granule: the root is then granule aligned, as the record
            // requires, and a nested domain's stage 2 maps it with one granule page.
            let bytes = f.table_bytes(f.root_level()).max(granule.bytes());
            match alloc_block(
                self.base,
                &mut *hw.pages,
                &mut self.counters,
                bytes,
                "root table",
            ) {
                Ok(p) => {
                    let _ = d.tables.insert_range(p, bytes / PAGE);
                    roots[i] = Some((f, p));
                    if let Err(err) = zero(&mut *hw.mem, p, bytes) {
                        failed = Some(self.err(ErrorKind::Mem {
                            what: "root table",
                            err,
                        }));
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            for (f, p) in roots.into_iter().flatten() {
                let bytes = f.table_bytes(f.root_level()).max(granule.bytes());
                free_block(&mut *hw.pages, &mut self.counters, p, bytes);
            }
            self.asids.remove(&asid);
            self.vmids.remove(&vmid);
            return Err(e);
        }
        d.s1 = roots[0];
        d.s2 = roots[1];
        if let (Some((_, r1)), Some((f2, r2))) = (d.s1, d.s2) {
            // Nested: stage 1's root is walked through stage 2.
            self.domains.insert(id, d);
            let g = granule.bytes();
            self.identity(
                hw,
                DomainId(id),
                &f2,
                r2,
                r1,
                g,
                iommu_core::PageSize::new(g).unwrap_or(iommu_core::PageSize::SIZE_4K),
            )?;
            return Ok(DomainId(id));
        }
        self.domains.insert(id, d);
        Ok(DomainId(id))
    }

    pub(crate) fn domain_mut_checked(&mut self, did: DomainId) -> Result<&mut Domain, Error> {
        let base = self.base;
        let frozen = self.frozen;
        let d = self
            .domains
            .get_mut(&did.0)
            .ok_or(Error::new(base, ErrorKind::NoSuchDomain { did }))?;
        if d.state != DomainState::Live || frozen {
            return Err(Error::new(base, ErrorKind::DomainImmutable { did }));
        }
        Ok(d)
    }

    /// Where the STE of `sid` lives; with `alloc`, allocates its L2 table on first use
    /// (then installs the L1 descriptor). `Ok(None)` when its L2 table does not exist.
    pub(crate) fn ste_addr(
        &mut self,
        hw: &mut Hw<'_>,
        sid: u32,
        alloc: bool,
    ) -> Result<Option<PhysAddr>, Error> {
        let slot = self
            .strtab
            .locate(sid)
            .ok_or(self.err(ErrorKind::StreamIdOutOfRange {
                sid,
                bits: self.strtab.log2size,
            }))?;
        match slot {
            SteSlot::Linear { index } => Ok(Some(PhysAddr(
                self.strtab_base.0 + index as u64 * ENTRY_BYTES,
            ))),
            SteSlot::TwoLevel { l1, l2 } => {
                let table = match self.l2.get(&l1) {
                    Some(&t) => t,
                    None if !alloc => return Ok(None),
                    None => {
                        let bytes = ENTRY_BYTES << self.strtab.split;
                        let t = alloc_block(
                            self.base,
                            &mut *hw.pages,
                            &mut self.counters,
                            bytes,
                            "L2 stream table",
                        )?;
                        zero(&mut *hw.mem, t, bytes).map_err(self.mem_err("L2 stream table"))?;
                        let d = L1Std::new(t.0, self.strtab.split);
                        publish();
                        hw.mem
                            .write(PhysAddr(self.strtab_base.0 + l1 as u64 * 8), d.as_bytes())
                            .map_err(self.mem_err("L1 stream table descriptor"))?;
                        self.l2.insert(l1, t);
                        t
                    }
                };
                Ok(Some(PhysAddr(table.0 + l2 as u64 * ENTRY_BYTES)))
            }
        }
    }

    /// Takes the STE of `sid` from its value in memory to `target` by the used-bits
    /// rule, with CFGI_STE (leaf) + CMD_SYNC after each step.
    pub fn write_ste(
        &mut self,
        hw: &mut Hw<'_>,
        sid: u32,
        target: Ste,
    ) -> Result<UpdateKind, Error> {
        // With `alloc`, `ste_addr` allocates the L2 table or fails: never `None`.
        let Some(at) = self.ste_addr(hw, sid, true)? else {
            return Err(self.err(ErrorKind::NoSuchMaster { sid }));
        };
        let cur: [u64; 8] = read_qwords(&*hw.mem, at).map_err(self.mem_err("STE"))?;
        let (kind, steps) = entry::plan(cur, target.qwords(), entry::ste_used);
        for step in steps {
            for (i, v) in step {
                hw.mem
                    .write(PhysAddr(at.0 + 8 * i as u64), &v.to_le_bytes())
                    .map_err(self.mem_err("STE"))?;
            }
            self.issue(hw, &[Cmd::cfgi_ste(sid, false), cmdq::sync()])?;
        }
        self.count(kind);
        Ok(kind)
    }

    /// Takes CD 0 of a CD table at `at` from its value to `target` (used-bits rule,
    /// CFGI_CD + CMD_SYNC after each step).
    pub(crate) fn write_cd(
        &mut self,
        hw: &mut Hw<'_>,
        sid: u32,
        at: PhysAddr,
        target: Cd,
    ) -> Result<UpdateKind, Error> {
        let cur: [u64; 8] = read_qwords(&*hw.mem, at).map_err(self.mem_err("CD"))?;
        let (kind, steps) = entry::plan(cur, target.qwords(), entry::cd_used);
        for step in steps {
            for (i, v) in step {
                hw.mem
                    .write(PhysAddr(at.0 + 8 * i as u64), &v.to_le_bytes())
                    .map_err(self.mem_err("CD"))?;
            }
            self.issue(hw, &[Cmd::cfgi_cd(sid, 0, false), cmdq::sync()])?;
        }
        self.count(kind);
        Ok(kind)
    }

    fn count(&mut self, kind: UpdateKind) {
        match kind {
            UpdateKind::Unchanged => {}
            UpdateKind::Plain => self.counters.updates[0] += 1,
            UpdateKind::Hitless => self.counters.updates[1] += 1,
            UpdateKind::Breaking => self.counters.updates[2] += 1,
        }
    }

    /// The CD of stage-1 domain `d` (Linux `arm_smmu_make_s1_cd`: T0SZ, TG0, walks
    /// write-back inner shareable, EPD1, V, IPS, AA64, R, A, ASET, ASID, TTB0, MAIR).
    pub fn make_cd(&self, d: &Domain) -> Cd {
        let mut cd = Cd::default();
        let Some((f, ttb)) = d.s1 else {
            return cd;
        };
        cd.set_t0sz((64 - IA_BITS) as u64);
        cd.set_tg0(f.granule());
        cd.set_ir0(1);
        cd.set_or0(1);
        cd.set_sh0(3);
        cd.set_epd1(true);
        cd.set_v(true);
        cd.set_ips(crate::hw::pa_size_enc(self.caps.oas_bits).unwrap_or(5) as u64);
        cd.set_aa64(true);
        cd.set_r(true);
        cd.set_a(true);
        cd.set_aset(true);
        cd.set_asid(d.asid as u64);
        cd.set_ttb0(ttb.0);
        cd.set_mair(MAIR);
        cd
    }

    /// The STE of a master of domain `d` with CD table `cd` (Linux
    /// `arm_smmu_make_cdtable_ste` and `arm_smmu_make_s2_domain_ste`).
    pub fn make_ste(&self, d: &Domain, cd: Option<&CdTable>) -> Ste {
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(match d.stage {
            Stage::S1 => Config::S1Trans,
            Stage::S2 => Config::S2Trans,
            Stage::Nested => Config::Nested,
        });
        if let Some(t) = cd {
            s.set_s1fmt(t.fmt);
            s.set_s1_context_ptr(t.base.0);
            s.set_s1cdmax(t.cdmax as u64);
            s.set_s1dss(S1Dss::Ssid0);
            s.set_s1cir(1);
            s.set_s1cor(1);
            s.set_s1csh(3);
        }
        if let Some((f, ttb)) = d.s2 {
            s.set_s2vmid(d.vmid as u64);
            s.set_s2t0sz((64 - IA_BITS) as u64);
            s.set_s2sl0(s2sl0(f.granule()));
            s.set_s2ir0(1);
            s.set_s2or0(1);
            s.set_s2sh0(3);
            s.set_s2tg(f.granule());
            s.set_s2ps(crate::hw::pa_size_enc(self.caps.oas_bits).unwrap_or(5) as u64);
            s.set_s2aa64(true);
            s.set_s2r(true);
            s.set_s2ttb(ttb.0);
        }
        s
    }

    /// Attaches StreamID `sid` to domain `did`: a new CD table for stage 1 (CD 0 written
    /// with V last, CFGI_CD + CMD_SYNC), then the STE by the used-bits rule. A master
    /// moved from another domain gets its old CD table freed after the STE no longer
    /// points to it.
    pub fn attach(
        &mut self,
        hw: &mut Hw<'_>,
        sid: u32,
        did: DomainId,
    ) -> Result<UpdateKind, Error> {
        if self.frozen || self.masters.get(&sid).is_some_and(|m| m.preserved) {
            return Err(self.err(ErrorKind::MasterImmutable { sid }));
        }
        let d = self
            .domains
            .get(&did.0)
            .cloned()
            .ok_or(self.err(ErrorKind::NoSuchDomain { did }))?;
        if d.state != DomainState::Live {
            return Err(self.err(ErrorKind::DomainImmutable { did }));
        }
        let cd = if d.stage.s1() {
            Some(self.new_cd_table(hw, sid, &d)?)
        } else {
            None
        };
        let ste = self.make_ste(&d, cd.as_ref());
        let kind = self.write_ste(hw, sid, ste)?;
        let old = self.masters.insert(
            sid,
            Master {
                sid,
                domain: did,
                ste,
                cd,
                preserved: false,
            },
        );
        if let Some(t) = old.and_then(|m| m.cd) {
            for p in t.blocks() {
                free_block(&mut *hw.pages, &mut self.counters, p, t.bytes);
            }
        }
        Ok(kind)
    }

    /// Reads the event records the SMMU wrote since the last call (EVENTQ_PROD back to
    /// the driver's EVENTQ_CONS), consumes them, and acknowledges an overflow
    /// (EVENTQ_CONS.OVACKFLG copies EVENTQ_PROD.OVFLG; reference §9). At most one
    /// queue's worth of records is read.
    pub fn poll_events(&mut self, hw: &mut Hw<'_>) -> Result<Vec<Event>, Error> {
        let q = self.eventq;
        let prod_reg = hw.regs.read32(regs::EVENTQ_PROD);
        let prod = QueuePos::from_reg(q.log2size, prod_reg);
        let mut cons = QueuePos::from_reg(q.log2size, q.pos);
        let mut out = Vec::new();
        while !prod.empty(cons) && out.len() < 1 << q.log2size {
            let at = PhysAddr(q.base.0 + cons.index() as u64 * cmdq::EVENT_BYTES);
            let r: [u64; 4] = read_qwords(&*hw.mem, at).map_err(self.mem_err("event record"))?;
            out.push(Event::from_qwords(r));
            cons = cons.next();
        }
        let ovf = prod_reg & Q_PROD::OVFLG::SET.value;
        self.eventq.pos = cons.value;
        hw.regs.write32(regs::EVENTQ_CONS, cons.value | ovf);
        Ok(out)
    }

    /// Detaches StreamID `sid`: its STE aborts (a hitless update, CFGI_STE + CMD_SYNC),
    /// then its CD table is freed.
    pub fn detach(&mut self, hw: &mut Hw<'_>, sid: u32) -> Result<(), Error> {
        let m = match self.masters.get(&sid) {
            None => return Err(self.err(ErrorKind::NoSuchMaster { sid })),
            Some(m) if m.preserved || self.frozen => {
                return Err(self.err(ErrorKind::MasterImmutable { sid }))
            }
            Some(m) => m.clone(),
        };
        let mut abort = Ste::default();
        abort.set_v(true);
        abort.set_config(Config::Abort);
        self.write_ste(hw, sid, abort)?;
        self.masters.remove(&sid);
        if let Some(t) = m.cd {
            for p in t.blocks() {
                free_block(&mut *hw.pages, &mut self.counters, p, t.bytes);
            }
        }
        Ok(())
    }

    /// Destroys domain `did` (no master may be attached): invalidates its TLB entries
    /// (TLBI_NH_ASID / TLBI_S12_VMALL, CMD_SYNC), frees every table page and releases
    /// its ASID and VMID.
    pub fn destroy_domain(&mut self, hw: &mut Hw<'_>, did: DomainId) -> Result<(), Error> {
        self.domain_mut_checked(did)?;
        if let Some(m) = self.masters.values().find(|m| m.domain == did) {
            return Err(self.err(ErrorKind::MasterImmutable { sid: m.sid }));
        }
        let Some(d) = self.domains.get(&did.0) else {
            return Err(self.err(ErrorKind::NoSuchDomain { did }));
        };
        let mut cmds = Vec::new();
        if d.s1.is_some() {
            cmds.push(Cmd::tlbi(Opcode::TlbiNhAsid, d.vmid, d.asid));
        }
        if d.s2.is_some() {
            cmds.push(Cmd::tlbi(Opcode::TlbiS12Vmall, d.vmid, 0));
        }
        cmds.push(cmdq::sync());
        self.issue(hw, &cmds)?;
        if let Some(d) = self.domains.remove(&did.0) {
            for (p, order) in d.tables.iter() {
                free_block(&mut *hw.pages, &mut self.counters, p, PAGE << order);
            }
            if d.s1.is_some() {
                self.asids.remove(&d.asid);
            }
            if d.s2.is_some() {
                self.vmids.remove(&d.vmid);
            }
        }
        Ok(())
    }

    /// A CD table for master `sid` of stage-1 domain `d` holding its CD as CD 0.
    fn new_cd_table(&mut self, hw: &mut Hw<'_>, sid: u32, d: &Domain) -> Result<CdTable, Error> {
        let bytes = d.granule.bytes();
        let base = alloc_block(
            self.base,
            &mut *hw.pages,
            &mut self.counters,
            bytes,
            "CD table",
        )?;
        zero(&mut *hw.mem, base, bytes).map_err(self.mem_err("CD table"))?;
        let mut t = CdTable {
            base,
            fmt: S1Fmt::Linear,
            cdmax: 0,
            l2: None,
            bytes,
        };
        if self.two_level_cd {
            let l2 = alloc_block(
                self.base,
                &mut *hw.pages,
                &mut self.counters,
                bytes,
                "L2 CD table",
            )?;
            zero(&mut *hw.mem, l2, bytes).map_err(self.mem_err("L2 CD table"))?;
            t = CdTable {
                base,
                fmt: S1Fmt::TwoLevel4K,
                cdmax: CD2L_CDMAX,
                l2: Some(l2),
                bytes,
            };
            hw.mem
                .write(base, L1Cd::new(l2.0).as_bytes())
                .map_err(self.mem_err("L1 CD descriptor"))?;
        }
        if let (Some((f2, r2)), true) = (d.s2, d.stage.s1()) {
            // Nested: the CD fetch is translated by stage 2.
            let g = iommu_core::PageSize::new(bytes).unwrap_or(iommu_core::PageSize::SIZE_4K);
            for p in t.blocks() {
                self.identity(hw, d.id, &f2, r2, p, bytes, g)?;
            }
        }
        let cd = self.make_cd(d);
        self.write_cd(hw, sid, t.cd0(), cd)?;
        Ok(t)
    }

    /// The format and root of domain `did`'s IOVA translation (stage 1 where it has
    /// one, stage 2 otherwise).
    pub fn translation(&self, did: DomainId) -> Result<(Vmsa, PhysAddr), Error> {
        let d = self
            .domains
            .get(&did.0)
            .ok_or(self.err(ErrorKind::NoSuchDomain { did }))?;
        d.s1.or(d.s2)
            .ok_or(self.err(ErrorKind::NoSuchDomain { did }))
    }

    /// Reads domain `did`'s IOVA translation with the core walker (stage 1 of a nested
    /// domain: its output addresses are IPAs, which stage 2 maps identically).
    pub fn walk_domain(
        &self,
        mem: &dyn PhysMem,
        did: DomainId,
        limits: &WalkLimits,
    ) -> Result<Walk, Error> {
        let (f, root) = self.translation(did)?;
        walk(&f, mem, root, limits).map_err(|err| self.err(ErrorKind::Walk { did, err }))
    }
}

/// A CMD_SYNC that completes when consumed.
pub(crate) fn sync_cmd() -> Cmd {
    cmdq::sync()
}

/// STE.S2SL0 the driver uses with a 48-bit IPA: 4 KiB level 0 (2), 16 KiB level 1 with
/// two concatenated start tables (2), 64 KiB level 1 (2) (reference §8, §12).
pub const fn s2sl0(_g: Granule) -> u64 {
    2
}
