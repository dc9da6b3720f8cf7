//! Programming a VT-d unit the way a driver does: tables built in physical memory,
//! registers written through MMIO, nothing reached inside the model.
//!
//! - [`Platform`]: what a driver needs from the machine (memory, 32/64-bit register
//!   access to one unit, a page allocator);
//! - [`VtdRig`]: a [`Platform`] made of a [`SparseMemory`] and one [`VtdUnit`];
//! - [`VtdDriver`]: driver operations for any platform (GCMD handshake, root pointer,
//!   translation enable, register and queued invalidation, fault handling) and table
//!   builders (legacy root/context, scalable root/context, PASID directory and table,
//!   second- and first-stage mappings);
//! - [`MachineRig`]: a [`Platform`] over an emulator [`Machine`], reaching the unit
//!   through the machine's MMIO bus.

use emulator::bus::BusError;
use emulator::machine::Machine;
use emulator::memory::SparseMemory;
use emulator::model::{Access, DmaError, DmaRequest, IommuModel, Translated};
use emulator::vtd::{VtdConfig, VtdConfigError, VtdUnit};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::{Iova, PageSize, Pasid, PhysAddr, RequesterId};
use std::fmt;
use vtd::hw::fault::FaultRecord;
use vtd::hw::pasid::{pasid_dir_index, pasid_table_index, PasidDirEntry, PasidEntry};
use vtd::hw::pte::{level_index, FlPte, SlPte, FL_P, FL_PS, PTE_ADDR_MASK, SL_PS};
use vtd::hw::qi::{Descriptor, QiDescriptor};
use vtd::hw::regs::{
    self, field_value, ContextGranularity, IotlbGranularity, Ttm, CAP, CCMD, FSTS, GSTS, IOTLB,
    IQA, IQERCD, IVA, RTADDR,
};
use vtd::hw::root::{ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry};

/// Why a programming step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgError {
    /// A memory access failed.
    Mem(MemError),
    /// The page pool is exhausted.
    OutOfPages {
        /// Pages asked for.
        pages: u64,
    },
    /// A register did not reach the expected state after polling.
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Last value read.
        last: u64,
    },
    /// A mapping would overwrite an existing one.
    AlreadyMapped {
        /// Input address.
        iova: u64,
        /// Level of the conflicting entry.
        level: u32,
        /// Its value.
        entry: u64,
    },
    /// The invalidation queue is full.
    QueueFull,
    /// The unit flagged an invalidation queue error.
    QueueError {
        /// IQERCD at the time.
        iqercd: u64,
        /// IQH at the time.
        iqh: u64,
    },
    /// Bad arguments.
    Invalid(&'static str),
}

impl fmt::Display for ProgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for ProgError {}

impl From<MemError> for ProgError {
    fn from(e: MemError) -> Self {
        ProgError::Mem(e)
    }
}

/// A bump allocator of zeroed 4 KiB pages from a physical range.
#[derive(Clone, Debug)]
pub struct PageAlloc {
    next: u64,
    end: u64,
    scratch: Option<u64>,
}

impl PageAlloc {
    /// Pages from `[start, start + size)` (both 4 KiB aligned).
    pub fn new(start: u64, size: u64) -> Self {
        Self {
            next: start,
            end: start + size,
            scratch: None,
        }
    }
    /// Takes `pages` contiguous pages (naturally aligned to their power-of-two count)
    /// and zeroes them.
    pub fn alloc(&mut self, mem: &mut dyn PhysMem, pages: u64) -> Result<u64, ProgError> {
        let align = pages.next_power_of_two() * 4096;
        let start = self.next.div_ceil(align) * align;
        let end = start + pages * 4096;
        if end > self.end {
            return Err(ProgError::OutOfPages { pages });
        }
        self.next = end;
        let zero = [0u8; 4096];
        for p in 0..pages {
            mem.write(PhysAddr(start + p * 4096), &zero)?;
        }
        Ok(start)
    }
}

/// What a driver needs from the machine around one VT-d unit.
pub trait Platform {
    /// Physical memory.
    fn mem(&mut self) -> &mut dyn PhysMem;
    /// Page allocator for tables and queues.
    fn pages(&mut self) -> &mut PageAlloc;
    /// 32-bit register read at `offset` in the unit's window.
    fn read32(&mut self, offset: u64) -> u32;
    /// 32-bit register write.
    fn write32(&mut self, offset: u64, value: u32);
    /// 64-bit register read.
    fn read64(&mut self, offset: u64) -> u64;
    /// 64-bit register write.
    fn write64(&mut self, offset: u64, value: u64);
}

const POLL_LIMIT: u32 = 1000;

fn alloc_page<P: Platform + ?Sized>(p: &mut P) -> Result<u64, ProgError> {
    let mut a = p.pages().clone();
    let r = a.alloc(p.mem(), 1);
    *p.pages() = a;
    r
}

fn alloc_pages<P: Platform + ?Sized>(p: &mut P, n: u64) -> Result<u64, ProgError> {
    let mut a = p.pages().clone();
    let r = a.alloc(p.mem(), n);
    *p.pages() = a;
    r
}

fn leaf_level(size: PageSize) -> Result<u32, ProgError> {
    match size {
        s if s == PageSize::SIZE_4K => Ok(1),
        s if s == PageSize::SIZE_2M => Ok(2),
        s if s == PageSize::SIZE_1G => Ok(3),
        _ => Err(ProgError::Invalid("page size must be 4K, 2M or 1G")),
    }
}

/// Driver operations, for every [`Platform`].
pub trait VtdDriver: Platform {
    /// Issues one GCMD command the recommended way (`GSTS & 0x96FFFFFF`, one bit
    /// changed) and polls GSTS for its status. One-shot commands (SRTP, WBF, SIRTP)
    /// ignore `set`.
    fn gcmd(&mut self, bit: u32, set: bool) -> Result<(), ProgError> {
        let one_shot = regs::GSTS_ONE_SHOT_MASK & bit != 0;
        let mut v = self.read32(regs::GSTS) & !regs::GSTS_ONE_SHOT_MASK;
        if set || one_shot {
            v |= bit;
        } else {
            v &= !bit;
        }
        self.write32(regs::GCMD, v);
        for _ in 0..POLL_LIMIT {
            let s = self.read32(regs::GSTS);
            let done = if bit == regs::field_mask32(regs::GCMD::WBF) {
                s & bit == 0
            } else if one_shot {
                s & bit != 0
            } else {
                (s & bit != 0) == set
            };
            if done {
                return Ok(());
            }
        }
        Err(ProgError::Timeout {
            what: "GSTS status of a GCMD command",
            last: self.read32(regs::GSTS) as u64,
        })
    }

    /// Writes RTADDR and latches it with SRTP.
    fn set_root_table(&mut self, root: u64, ttm: Ttm) -> Result<(), ProgError> {
        self.write64(regs::RTADDR, root | field_value(RTADDR::TTM, ttm.bits()));
        self.gcmd(regs::field_mask32(regs::GCMD::SRTP), true)
    }

    /// Sets GCMD.TE and waits for GSTS.TES.
    fn enable_translation(&mut self) -> Result<(), ProgError> {
        self.gcmd(regs::field_mask32(regs::GCMD::TE), true)
    }

    /// Clears GCMD.TE and waits for GSTS.TES = 0.
    fn disable_translation(&mut self) -> Result<(), ProgError> {
        self.gcmd(regs::field_mask32(regs::GCMD::TE), false)
    }

    /// Register-based context-cache invalidation; returns CCMD.CAIG.
    fn ccmd_invalidate(
        &mut self,
        g: ContextGranularity,
        did: u16,
        sid: u16,
        fm: u8,
    ) -> Result<u64, ProgError> {
        let v = field_value(CCMD::ICC, 1)
            | field_value(CCMD::CIRG, g.bits())
            | field_value(CCMD::FM, fm as u64)
            | field_value(CCMD::SID, sid as u64)
            | field_value(CCMD::DID, did as u64);
        self.write64(regs::CCMD, v);
        for _ in 0..POLL_LIMIT {
            let r = self.read64(regs::CCMD);
            if !CCMD::ICC.is_set(r) {
                return Ok(CCMD::CAIG.read(r));
            }
        }
        Err(ProgError::Timeout {
            what: "CCMD.ICC clear",
            last: self.read64(regs::CCMD),
        })
    }

    /// Register-based IOTLB invalidation; returns IOTLB.IAIG.
    fn iotlb_invalidate(
        &mut self,
        g: IotlbGranularity,
        did: u16,
        addr: u64,
        am: u8,
    ) -> Result<u64, ProgError> {
        let ecap = self.read64(regs::ECAP);
        let (iva, iotlb) = regs::iotlb_offsets(ecap);
        if g == IotlbGranularity::Page {
            self.write64(iva, (addr & !0xfff) | field_value(IVA::AM, am as u64));
        }
        self.write64(
            iotlb,
            field_value(IOTLB::IVT, 1)
                | field_value(IOTLB::IIRG, g.bits())
                | field_value(IOTLB::DID, did as u64)
                | field_value(IOTLB::DR, 1)
                | field_value(IOTLB::DW, 1),
        );
        for _ in 0..POLL_LIMIT {
            let r = self.read64(iotlb);
            if !IOTLB::IVT.is_set(r) {
                return Ok(IOTLB::IAIG.read(r));
            }
        }
        Err(ProgError::Timeout {
            what: "IOTLB.IVT clear",
            last: self.read64(iotlb),
        })
    }

    /// Sets up and enables queued invalidation with a queue of `2^order` pages and
    /// 128-bit (`wide = false`) or 256-bit descriptors.
    fn enable_qi(&mut self, order: u8, wide: bool) -> Result<u64, ProgError> {
        let base = alloc_pages(self, 1 << order)?;
        self.write64(regs::IQT, 0);
        self.write64(
            regs::IQA,
            base | field_value(IQA::DW, wide as u64) | field_value(IQA::QS, order as u64),
        );
        self.gcmd(regs::field_mask32(regs::GCMD::QIE), true)?;
        Ok(base)
    }

    /// Writes descriptors at IQT (read back from the unit, as is IQA) and advances IQT.
    fn qi_submit(&mut self, descs: &[Descriptor]) -> Result<(), ProgError> {
        let iqa = self.read64(regs::IQA);
        let base = iqa & !0xfff;
        let size = 4096u64 << IQA::QS.read(iqa);
        let dsize = if IQA::DW.is_set(iqa) { 32 } else { 16 };
        let mut tail = self.read64(regs::IQT);
        let head = self.read64(regs::IQH);
        for d in descs {
            let next = (tail + dsize) % size;
            if next == head {
                return Err(ProgError::QueueFull);
            }
            self.write_raw_descriptor(base + tail, &QiDescriptor::encode(d), dsize)?;
            tail = next;
        }
        self.write64(regs::IQT, tail);
        Ok(())
    }

    /// Writes one raw descriptor image (16 or 32 bytes) at `addr`.
    fn write_raw_descriptor(
        &mut self,
        addr: u64,
        d: &QiDescriptor,
        dsize: u64,
    ) -> Result<(), ProgError> {
        let q = d.qwords();
        write_qwords(self, addr, &q[..(dsize / 8) as usize])
    }

    /// Submits `descs` followed by an invalidation wait with a status write, and checks
    /// that the status arrived and no queue error was flagged.
    fn qi_sync(&mut self, descs: &[Descriptor]) -> Result<(), ProgError> {
        let scratch = match self.pages().scratch {
            Some(s) => s,
            None => {
                let s = alloc_page(self)?;
                self.pages().scratch = Some(s);
                s
            }
        };
        let prev = self.mem().read_u32(PhysAddr(scratch))?;
        let token = prev.wrapping_add(1) | 1;
        let mut all = descs.to_vec();
        all.push(Descriptor::Wait {
            interrupt: false,
            status_write: true,
            fence: true,
            page_drain: false,
            status_data: token,
            status_addr: scratch,
        });
        self.qi_submit(&all)?;
        let fsts = self.read32(regs::FSTS);
        if FSTS::IQE.is_set(fsts) {
            return Err(ProgError::QueueError {
                iqercd: self.read64(regs::IQERCD),
                iqh: self.read64(regs::IQH),
            });
        }
        let got = self.mem().read_u32(PhysAddr(scratch))?;
        if got != token {
            return Err(ProgError::Timeout {
                what: "invalidation wait status write",
                last: got as u64,
            });
        }
        Ok(())
    }

    /// Reads every fault recording register with F set, as `(index, record)`.
    fn fault_records(&mut self) -> Vec<(usize, FaultRecord)> {
        let cap = self.read64(regs::CAP);
        let mut out = Vec::new();
        for i in 0..regs::fault_recording_count(cap) {
            let off = regs::fault_recording_offset(cap, i);
            let r = FaultRecord::from_qwords([self.read64(off), self.read64(off + 8)]);
            if r.valid() {
                out.push((i as usize, r));
            }
        }
        out
    }

    /// The primary fault handler of Linux: from FSTS.FRI, read and clear records while
    /// F is set, then clear PFO and PPF in FSTS. Returns the records in order.
    fn handle_faults(&mut self) -> Vec<FaultRecord> {
        let cap = self.read64(regs::CAP);
        let n = regs::fault_recording_count(cap);
        let fsts = self.read32(regs::FSTS);
        let mut out = Vec::new();
        if !FSTS::PPF.is_set(fsts) {
            return out;
        }
        let mut i = FSTS::FRI.read(fsts) as u64;
        for _ in 0..n {
            let off = regs::fault_recording_offset(cap, i);
            let hi_dw = self.read32(off + 12);
            if hi_dw >> 31 == 0 {
                break;
            }
            out.push(FaultRecord::from_qwords([
                self.read64(off),
                self.read64(off + 8),
            ]));
            self.write32(off + 12, 1 << 31);
            i = (i + 1) % n;
        }
        self.write32(
            regs::FSTS,
            regs::field_mask32(FSTS::PFO) | regs::field_mask32(FSTS::PPF),
        );
        out
    }

    /// Allocates a zeroed root table (either mode).
    fn alloc_root_table(&mut self) -> Result<u64, ProgError> {
        alloc_page(self)
    }

    /// Allocates `pages` zeroed contiguous pages (page tables, PASID directories).
    fn alloc_table(&mut self, pages: u64) -> Result<u64, ProgError> {
        alloc_pages(self, pages)
    }

    /// Legacy mode: writes the context entry of `rid`, creating its context table and
    /// root entry when the bus has none.
    fn set_legacy_context(
        &mut self,
        root: u64,
        rid: RequesterId,
        ce: ContextEntry,
    ) -> Result<u64, ProgError> {
        let re_at = root + rid.bus as u64 * 16;
        let mut re = RootEntry::from_qwords(read_qwords::<2, Self>(self, re_at)?);
        if !re.present() {
            let ct = alloc_page(self)?;
            re = RootEntry::new(ct);
            write_qwords(self, re_at, &re.qwords())?;
        }
        let at = re.context_table() + rid.devfn as u64 * 16;
        write_qwords(self, at, &ce.qwords())?;
        Ok(at)
    }

    /// Scalable mode: writes the context entry of `rid`, creating the lower/upper
    /// context table and root entry half when missing.
    fn set_scalable_context(
        &mut self,
        root: u64,
        rid: RequesterId,
        ce: ScalableContextEntry,
    ) -> Result<u64, ProgError> {
        let re_at = root + rid.bus as u64 * 16;
        let mut re = ScalableRootEntry::from_qwords(read_qwords::<2, Self>(self, re_at)?);
        let (present, mut table) = re.half_for(rid.devfn);
        if !present {
            table = alloc_page(self)?;
            let (lo, hi) = if rid.devfn & 0x80 != 0 {
                (re.lower_present().then(|| re.lower_table()), Some(table))
            } else {
                (Some(table), re.upper_present().then(|| re.upper_table()))
            };
            re = ScalableRootEntry::new(lo, hi);
            write_qwords(self, re_at, &re.qwords())?;
        }
        let at = table + (rid.devfn & 0x7f) as u64 * 32;
        write_qwords(self, at, &ce.qwords())?;
        Ok(at)
    }

    /// Writes the PASID-table entry of `pasid` under the directory at `dir`, creating the
    /// PASID table and directory entry when missing. Returns the entry's address.
    fn set_pasid_entry(&mut self, dir: u64, pasid: u32, pe: PasidEntry) -> Result<u64, ProgError> {
        let de_at = dir + pasid_dir_index(pasid) * 8;
        let mut de = PasidDirEntry::from_qwords(read_qwords::<1, Self>(self, de_at)?);
        if !de.present() {
            de = PasidDirEntry::new(alloc_page(self)?);
            write_qwords(self, de_at, &de.qwords())?;
        }
        let at = de.table() + pasid_table_index(pasid) * 64;
        write_qwords(self, at, &pe.qwords())?;
        Ok(at)
    }

    /// Maps `iova` to `pa` with a page of `size` in the second-stage table at `root`
    /// with `levels` levels; creates intermediate tables. Returns the leaf's address.
    #[allow(clippy::too_many_arguments)]
    fn map_sl(
        &mut self,
        root: u64,
        levels: u32,
        iova: u64,
        pa: u64,
        size: PageSize,
        read: bool,
        write: bool,
    ) -> Result<u64, ProgError> {
        let leaf = leaf_level(size)?;
        let mut table = root;
        for level in ((leaf + 1)..=levels).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = self.mem().read_u64(PhysAddr(at))?;
            if v & 3 == 0 {
                let t = alloc_page(self)?;
                self.mem().write_u64(PhysAddr(at), SlPte::table(t).raw())?;
                table = t;
            } else if v & SL_PS != 0 {
                return Err(ProgError::AlreadyMapped {
                    iova,
                    level,
                    entry: v,
                });
            } else {
                table = v & PTE_ADDR_MASK;
            }
        }
        let at = table + level_index(iova, leaf) * 8;
        let pte = if leaf == 1 {
            SlPte::page(pa, read, write)
        } else {
            SlPte::large_page(pa, read, write)
        };
        self.mem().write_u64(PhysAddr(at), pte.raw())?;
        Ok(at)
    }

    /// First-stage counterpart of [`map_sl`](VtdDriver::map_sl): user pages, writable
    /// when `write`. Returns the leaf's address.
    fn map_fl(
        &mut self,
        root: u64,
        levels: u32,
        iova: u64,
        pa: u64,
        size: PageSize,
        write: bool,
    ) -> Result<u64, ProgError> {
        let leaf = leaf_level(size)?;
        let mut table = root;
        for level in ((leaf + 1)..=levels).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = self.mem().read_u64(PhysAddr(at))?;
            if v & FL_P == 0 {
                let t = alloc_page(self)?;
                self.mem().write_u64(PhysAddr(at), FlPte::table(t).raw())?;
                table = t;
            } else if v & FL_PS != 0 {
                return Err(ProgError::AlreadyMapped {
                    iova,
                    level,
                    entry: v,
                });
            } else {
                table = v & PTE_ADDR_MASK;
            }
        }
        let at = table + level_index(iova, leaf) * 8;
        let pte = if leaf == 1 {
            FlPte::page(pa, write)
        } else {
            FlPte::large_page(pa, write)
        };
        self.mem().write_u64(PhysAddr(at), pte.raw())?;
        Ok(at)
    }
}

impl<P: Platform + ?Sized> VtdDriver for P {}

/// Reads `N` little-endian qwords at `at`.
pub fn read_qwords<const N: usize, P: Platform + ?Sized>(
    p: &mut P,
    at: u64,
) -> Result<[u64; N], ProgError> {
    let mut out = [0u64; N];
    for (i, q) in out.iter_mut().enumerate() {
        *q = p.mem().read_u64(PhysAddr(at + 8 * i as u64))?;
    }
    Ok(out)
}

/// Writes little-endian qwords at `at`.
pub fn write_qwords<P: Platform + ?Sized>(p: &mut P, at: u64, q: &[u64]) -> Result<(), ProgError> {
    for (i, v) in q.iter().enumerate() {
        p.mem().write_u64(PhysAddr(at + 8 * i as u64), *v)?;
    }
    Ok(())
}

/// One VT-d unit with its memory: a [`Platform`] for tests.
pub struct VtdRig {
    /// Physical memory.
    pub mem: SparseMemory,
    /// The unit.
    pub unit: VtdUnit,
    /// The table page pool.
    pub alloc: PageAlloc,
}

/// RAM of a default rig: 1 GiB at 0 and 1 GiB at 4 GiB.
pub const RIG_RAM: [(PhysAddr, u64); 2] = [(PhysAddr(0), 1 << 30), (PhysAddr(1 << 32), 1 << 30)];
/// Table pool of a default rig: 16 MiB at 16 MiB.
pub const RIG_POOL: (u64, u64) = (16 << 20, 16 << 20);

impl VtdRig {
    /// A rig with [`RIG_RAM`] and tables from [`RIG_POOL`].
    pub fn new(config: VtdConfig) -> Result<Self, VtdConfigError> {
        let mem = SparseMemory::new(&RIG_RAM).map_err(|_| VtdConfigError::Invalid {
            field: "ram",
            value: 0,
            why: "memory layout refused",
        })?;
        Ok(Self {
            mem,
            unit: VtdUnit::new(config)?,
            alloc: PageAlloc::new(RIG_POOL.0, RIG_POOL.1),
        })
    }

    /// Translates a request of `rid` (no PASID).
    pub fn dma(
        &mut self,
        rid: RequesterId,
        iova: u64,
        access: Access,
    ) -> Result<Translated, DmaError> {
        self.request(rid, None, false, iova, access)
    }

    /// Translates a request with every field given.
    pub fn request(
        &mut self,
        rid: RequesterId,
        pasid: Option<u32>,
        privileged: bool,
        iova: u64,
        access: Access,
    ) -> Result<Translated, DmaError> {
        let req = DmaRequest {
            rid,
            pasid: pasid.map(Pasid),
            privileged,
            iova: Iova(iova),
            access,
        };
        self.unit.translate(&mut self.mem, &req)
    }

    /// The unit's CAP, read through MMIO.
    pub fn cap(&mut self) -> u64 {
        self.read64(regs::CAP)
    }

    /// Whether FSTS.IQE is set.
    pub fn iqe(&mut self) -> bool {
        FSTS::IQE.is_set(self.read32(regs::FSTS))
    }

    /// IQERCD.IQEI.
    pub fn iqei(&mut self) -> u64 {
        IQERCD::IQEI.read(self.read64(regs::IQERCD))
    }

    /// Number of domain IDs of the unit (from CAP through MMIO).
    pub fn domains(&mut self) -> u32 {
        regs::domain_count(self.read64(regs::CAP))
    }

    /// CAP.SLLPS through MMIO.
    pub fn sllps(&mut self) -> u64 {
        CAP::SLLPS.read(self.read64(regs::CAP))
    }

    /// GSTS through MMIO.
    pub fn gsts(&mut self) -> u32 {
        self.read32(regs::GSTS)
    }

    /// Whether GSTS.TES is set.
    pub fn translation_enabled(&mut self) -> bool {
        GSTS::TES.is_set(self.read32(regs::GSTS))
    }
}

impl Platform for VtdRig {
    fn mem(&mut self) -> &mut dyn PhysMem {
        &mut self.mem
    }
    fn pages(&mut self) -> &mut PageAlloc {
        &mut self.alloc
    }
    fn read32(&mut self, offset: u64) -> u32 {
        self.unit.mmio_read(&mut self.mem, offset, 4) as u32
    }
    fn write32(&mut self, offset: u64, value: u32) {
        self.unit.mmio_write(&mut self.mem, offset, 4, value as u64)
    }
    fn read64(&mut self, offset: u64) -> u64 {
        self.unit.mmio_read(&mut self.mem, offset, 8)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.unit.mmio_write(&mut self.mem, offset, 8, value)
    }
}

/// A [`Platform`] over a [`Machine`]: registers through the machine's MMIO bus at the
/// unit's base, tables in the machine's memory.
pub struct MachineRig {
    /// The machine.
    pub machine: Machine,
    /// MMIO base of the unit programmed.
    pub base: PhysAddr,
    /// The table page pool.
    pub alloc: PageAlloc,
    /// Register accesses the bus refused (a read of one returned all ones).
    pub bus_errors: Vec<BusError>,
}

impl MachineRig {
    /// Programs the unit at `base` of `machine`, taking table pages from
    /// `[pool_start, pool_start + pool_size)`.
    pub fn new(machine: Machine, base: PhysAddr, pool_start: u64, pool_size: u64) -> Self {
        Self {
            machine,
            base,
            alloc: PageAlloc::new(pool_start, pool_size),
            bus_errors: Vec::new(),
        }
    }

    fn read(&mut self, offset: u64, width: u8) -> u64 {
        match self
            .machine
            .mmio_read(PhysAddr(self.base.0 + offset), width)
        {
            Ok(v) => v,
            Err(e) => {
                self.bus_errors.push(e);
                u64::MAX
            }
        }
    }

    fn write(&mut self, offset: u64, width: u8, value: u64) {
        if let Err(e) = self
            .machine
            .mmio_write(PhysAddr(self.base.0 + offset), width, value)
        {
            self.bus_errors.push(e);
        }
    }
}

impl Platform for MachineRig {
    fn mem(&mut self) -> &mut dyn PhysMem {
        self.machine.mem_mut()
    }
    fn pages(&mut self) -> &mut PageAlloc {
        &mut self.alloc
    }
    fn read32(&mut self, offset: u64) -> u32 {
        self.read(offset, 4) as u32
    }
    fn write32(&mut self, offset: u64, value: u32) {
        self.write(offset, 4, value as u64)
    }
    fn read64(&mut self, offset: u64) -> u64 {
        self.read(offset, 8)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.write(offset, 8, value)
    }
}
