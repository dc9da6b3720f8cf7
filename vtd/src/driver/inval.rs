//! Invalidation: the queued interface (descriptors closed by a wait whose status write
//! is polled in memory) and, where there is no queue, the register interface.

use ::alloc::vec::Vec;
use iommu_core::{PhysAddr, RegisterAccess};

use super::{alloc_zeroed, gcmd, Counters, Error, ErrorKind, Hw, Mode, POLL_LIMIT};
use crate::hw::qi::{Descriptor, PasidCacheGranularity, PasidIotlbGranularity, QiDescriptor};
use crate::hw::regs::{
    self, field_mask32, field_value, ContextGranularity, IotlbGranularity, CAP, CCMD, ECAP, FSTS,
    GCMD, GSTS, IOTLB, IQA, IVA, VER,
};

/// How the driver invalidates the unit's caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Register-based (CCMD, IOTLB registers): no ECAP.QI, legacy mode, VER major < 6.
    Register,
    /// Queued invalidation.
    Queue(Queue),
}

/// The driver's invalidation queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Queue base (one page, IQA.QS = 0).
    pub base: PhysAddr,
    /// 256-bit descriptors (IQA.DW = 1, scalable mode).
    pub wide: bool,
    /// The page the wait descriptors write their status to.
    pub status: PhysAddr,
    /// The last status value written.
    pub token: u32,
}

impl Queue {
    fn dsize(&self) -> u64 {
        if self.wide {
            32
        } else {
            16
        }
    }
}

/// One invalidation the driver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    ContextGlobal,
    ContextDevice {
        did: u16,
        sid: u16,
    },
    PasidCacheGlobal,
    PasidCacheDomain {
        did: u16,
    },
    PasidCachePasid {
        did: u16,
        pasid: u32,
    },
    IotlbGlobal,
    IotlbDomain {
        did: u16,
    },
    IotlbPage {
        did: u16,
        addr: u64,
        am: u8,
        ih: bool,
    },
    PasidIotlbPasid {
        did: u16,
        pasid: u32,
    },
    PasidIotlbPage {
        did: u16,
        pasid: u32,
        addr: u64,
        am: u8,
        ih: bool,
    },
}

impl Invalidation {
    /// Sets up invalidation for a unit: a fresh queue of one page (QIE cleared first if
    /// it was set, which never touches TE) where ECAP.QI, else the registers.
    pub(crate) fn setup(
        unit: PhysAddr,
        hw: &mut Hw<'_>,
        ecap: u64,
        ver: u32,
        mode: Mode,
        counters: &mut Counters,
    ) -> Result<Invalidation, Error> {
        if !ECAP::QI.is_set(ecap) {
            let ver_major = VER::MAX.read(ver) as u8;
            if ver_major >= 6 || mode == Mode::Scalable {
                return Err(Error::new(unit, ErrorKind::NoInvalidation { ver_major }));
            }
            return Ok(Invalidation::Register);
        }
        let gsts = hw.regs.read32(regs::GSTS);
        if GSTS::QIES.is_set(gsts) {
            // A queue from before (the previous kernel's): it must be idle to be
            // disabled; the previous kernel waited for every batch, so IQH == IQT.
            let (h, t) = (hw.regs.read64(regs::IQH), hw.regs.read64(regs::IQT));
            if h != t {
                return Err(Error::new(
                    unit,
                    ErrorKind::Timeout {
                        what: "the previous invalidation queue to drain (IQH == IQT)",
                        last: h,
                    },
                ));
            }
            gcmd(unit, hw.regs, field_mask32(GCMD::QIE), false)?;
        }
        // Clear a stale queue error so the new queue runs.
        let fsts = hw.regs.read32(regs::FSTS);
        let qerr = field_mask32(FSTS::IQE) | field_mask32(FSTS::ICE) | field_mask32(FSTS::ITE);
        if fsts & qerr != 0 {
            hw.regs.write32(regs::FSTS, fsts & qerr);
        }
        let base = alloc_zeroed(unit, hw, counters, "the invalidation queue")?;
        let status = match alloc_zeroed(unit, hw, counters, "the invalidation status page") {
            Ok(s) => s,
            Err(e) => {
                hw.pages.free_page(base);
                return Err(e);
            }
        };
        let wide = mode == Mode::Scalable;
        hw.regs.write64(regs::IQT, 0);
        hw.regs.write64(
            regs::IQA,
            base.0 | field_value(IQA::DW, wide as u64) | field_value(IQA::QS, 0),
        );
        if let Err(e) = gcmd(unit, hw.regs, field_mask32(GCMD::QIE), true) {
            hw.pages.free_page(base);
            hw.pages.free_page(status);
            return Err(e);
        }
        Ok(Invalidation::Queue(Queue {
            base,
            wide,
            status,
            token: 0,
        }))
    }

    /// Gives the queue pages back (after a failed bring-up).
    pub(crate) fn release(&mut self, hw: &mut Hw<'_>) {
        if let Invalidation::Queue(q) = self {
            hw.pages.free_page(q.base);
            hw.pages.free_page(q.status);
        }
        *self = Invalidation::Register;
    }

    /// Carries out `ops` in order and waits for their completion.
    pub(crate) fn run(
        &mut self,
        unit: PhysAddr,
        cap: u64,
        ecap: u64,
        hw: &mut Hw<'_>,
        ops: &[Op],
        counters: &mut Counters,
    ) -> Result<(), Error> {
        for op in ops {
            match op {
                Op::ContextGlobal | Op::ContextDevice { .. } => counters.context_invalidations += 1,
                Op::PasidCacheGlobal | Op::PasidCacheDomain { .. } | Op::PasidCachePasid { .. } => {
                    counters.pasid_cache_invalidations += 1
                }
                Op::IotlbGlobal => counters.iotlb_global += 1,
                Op::IotlbDomain { .. } | Op::PasidIotlbPasid { .. } => counters.iotlb_domain += 1,
                Op::IotlbPage { .. } | Op::PasidIotlbPage { .. } => counters.iotlb_page += 1,
            }
        }
        match self {
            Invalidation::Register => run_registers(unit, cap, ecap, hw.regs, ops, counters),
            Invalidation::Queue(q) => {
                let descs: Vec<Descriptor> = ops.iter().map(|o| descriptor(cap, o)).collect();
                run_queue(unit, q, hw, &descs, counters)
            }
        }
    }
}

fn descriptor(cap: u64, op: &Op) -> Descriptor {
    let dw = CAP::DWD.is_set(cap);
    let dr = CAP::DRD.is_set(cap);
    let cc = |granularity, did, sid| Descriptor::ContextCache {
        granularity,
        did,
        sid,
        fm: 0,
    };
    let iotlb = |granularity, did, addr, am, ih| Descriptor::Iotlb {
        granularity,
        dw,
        dr,
        did,
        addr,
        ih,
        am,
    };
    match *op {
        Op::ContextGlobal => cc(ContextGranularity::Global, 0, 0),
        Op::ContextDevice { did, sid } => cc(ContextGranularity::Device, did, sid),
        Op::PasidCacheGlobal => Descriptor::PasidCache {
            granularity: PasidCacheGranularity::Global,
            did: 0,
            pasid: 0,
        },
        Op::PasidCacheDomain { did } => Descriptor::PasidCache {
            granularity: PasidCacheGranularity::Domain,
            did,
            pasid: 0,
        },
        Op::PasidCachePasid { did, pasid } => Descriptor::PasidCache {
            granularity: PasidCacheGranularity::Pasid,
            did,
            pasid,
        },
        Op::IotlbGlobal => iotlb(IotlbGranularity::Global, 0, 0, 0, false),
        Op::IotlbDomain { did } => iotlb(IotlbGranularity::Domain, did, 0, 0, false),
        Op::IotlbPage { did, addr, am, ih } => iotlb(IotlbGranularity::Page, did, addr, am, ih),
        Op::PasidIotlbPasid { did, pasid } => Descriptor::PasidIotlb {
            granularity: PasidIotlbGranularity::Pasid,
            did,
            pasid,
            addr: 0,
            ih: false,
            am: 0,
        },
        Op::PasidIotlbPage {
            did,
            pasid,
            addr,
            am,
            ih,
        } => Descriptor::PasidIotlb {
            granularity: PasidIotlbGranularity::Page,
            did,
            pasid,
            addr,
            ih,
            am,
        },
    }
}

/// Writes `descs` in batches, each closed by a wait descriptor with a status write,
/// and polls the status in memory.
fn run_queue(
    unit: PhysAddr,
    q: &mut Queue,
    hw: &mut Hw<'_>,
    descs: &[Descriptor],
    counters: &mut Counters,
) -> Result<(), Error> {
    let dsize = q.dsize();
    let slots = (super::PAGE / dsize) as usize;
    // Room for a batch and its wait, leaving one slot free (a full queue has
    // IQT + 1 == IQH).
    let batch = slots - 2;
    let me = |what| move |err| Error::new(unit, ErrorKind::Mem { what, err });
    for chunk in descs.chunks(batch) {
        let mut tail = hw.regs.read64(regs::IQT) & 0x7_fff0;
        let token = q.token.wrapping_add(1).max(1);
        q.token = token;
        let wait = Descriptor::Wait {
            interrupt: false,
            status_write: true,
            fence: true,
            page_drain: false,
            status_data: token,
            status_addr: q.status.0,
        };
        let mut bytes = Vec::with_capacity((chunk.len() + 1) * dsize as usize);
        let mut first_tail = tail;
        for d in chunk.iter().chain(core::iter::once(&wait)) {
            let qw = QiDescriptor::encode(d).qwords();
            for w in &qw[..(dsize / 8) as usize] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            tail = (tail + dsize) % super::PAGE;
            if tail == 0 {
                // Wrap: flush what lies before the end of the page.
                hw.mem
                    .write(PhysAddr(q.base.0 + first_tail), &bytes)
                    .map_err(me("writing invalidation descriptors"))?;
                bytes.clear();
                first_tail = 0;
            }
        }
        if !bytes.is_empty() {
            hw.mem
                .write(PhysAddr(q.base.0 + first_tail), &bytes)
                .map_err(me("writing invalidation descriptors"))?;
        }
        counters.descriptors += chunk.len() as u64 + 1;
        hw.regs.write64(regs::IQT, tail);
        let mut done = false;
        for _ in 0..POLL_LIMIT {
            let fsts = hw.regs.read32(regs::FSTS);
            if FSTS::IQE.is_set(fsts) {
                return Err(Error::new(
                    unit,
                    ErrorKind::QueueError {
                        iqercd: hw.regs.read64(regs::IQERCD),
                        iqh: hw.regs.read64(regs::IQH),
                    },
                ));
            }
            let got = hw
                .mem
                .read_u32(q.status)
                .map_err(me("reading the invalidation wait status"))?;
            if got == token {
                done = true;
                break;
            }
        }
        if !done {
            let last = hw.mem.read_u32(q.status).unwrap_or(0) as u64;
            return Err(Error::new(
                unit,
                ErrorKind::Timeout {
                    what: "the invalidation wait status write",
                    last,
                },
            ));
        }
        counters.waits += 1;
    }
    Ok(())
}

fn poll_clear(
    unit: PhysAddr,
    regs: &mut dyn RegisterAccess,
    offset: u64,
    bit: u64,
    what: &'static str,
) -> Result<u64, Error> {
    for _ in 0..POLL_LIMIT {
        let v = regs.read64(offset);
        if v & bit == 0 {
            return Ok(v);
        }
    }
    Err(Error::new(
        unit,
        ErrorKind::Timeout {
            what,
            last: regs.read64(offset),
        },
    ))
}

fn run_registers(
    unit: PhysAddr,
    cap: u64,
    ecap: u64,
    regs: &mut dyn RegisterAccess,
    ops: &[Op],
    counters: &mut Counters,
) -> Result<(), Error> {
    let (iva_off, iotlb_off) = regs::iotlb_offsets(ecap);
    let drain =
        field_value(IOTLB::DW, CAP::DWD.read(cap)) | field_value(IOTLB::DR, CAP::DRD.read(cap));
    for op in ops {
        match *op {
            Op::ContextGlobal | Op::ContextDevice { .. } => {
                let (g, did, sid) = match *op {
                    Op::ContextDevice { did, sid } => (ContextGranularity::Device, did, sid),
                    _ => (ContextGranularity::Global, 0, 0),
                };
                regs.write64(
                    regs::CCMD,
                    field_value(CCMD::ICC, 1)
                        | field_value(CCMD::CIRG, g.bits())
                        | field_value(CCMD::SID, sid as u64)
                        | field_value(CCMD::DID, did as u64),
                );
                poll_clear(
                    unit,
                    regs,
                    regs::CCMD,
                    regs::field_mask(CCMD::ICC),
                    "CCMD.ICC to clear",
                )?;
            }
            Op::IotlbGlobal | Op::IotlbDomain { .. } | Op::IotlbPage { .. } => {
                let (g, did) = match *op {
                    Op::IotlbDomain { did } => (IotlbGranularity::Domain, did),
                    Op::IotlbPage { did, addr, am, ih } => {
                        regs.write64(
                            iva_off,
                            (addr & !0xfff)
                                | field_value(IVA::AM, am as u64)
                                | field_value(IVA::IH, ih as u64),
                        );
                        (IotlbGranularity::Page, did)
                    }
                    _ => (IotlbGranularity::Global, 0),
                };
                regs.write64(
                    iotlb_off,
                    field_value(IOTLB::IVT, 1)
                        | field_value(IOTLB::IIRG, g.bits())
                        | field_value(IOTLB::DID, did as u64)
                        | drain,
                );
                poll_clear(
                    unit,
                    regs,
                    iotlb_off,
                    regs::field_mask(IOTLB::IVT),
                    "IOTLB.IVT to clear",
                )?;
            }
            // PASID caches exist only in scalable mode, which needs queued invalidation.
            Op::PasidCacheGlobal
            | Op::PasidCacheDomain { .. }
            | Op::PasidCachePasid { .. }
            | Op::PasidIotlbPasid { .. }
            | Op::PasidIotlbPage { .. } => {
                return Err(Error::new(
                    unit,
                    ErrorKind::ModeUnsupported {
                        why: "PASID-granular invalidation needs queued invalidation",
                    },
                ))
            }
        }
        counters.waits += 1;
    }
    Ok(())
}
