//! SMMUv3s in an image: the registers (IDR0/1/5, CR0, GBPA, STRTAB_BASE,
//! STRTAB_BASE_CFG, the queues), the stream table (linear or 2-level) decoded per
//! StreamID, the CD tables (linear or 2-level) per SubstreamID, and the stage-1,
//! stage-2 and nested VMSAv8-64 tables each stream translates through
//! ([`SmmuState`]); one address translated step by step ([`walk`]).
//!
//! Every bit comes from the `smmuv3` crate's `hw` module (reference
//! `shared/reference/smmuv3.md`, IHI0070); the tables are read through its `format`
//! module and `iommu_core::pgtable`. What a transaction meets follows the emulator's
//! model (the referee). Nested streams read their CD tables and stage-1 tables at IPAs
//! translated by stage 2 ([`S2Mem`]); their mappings are listed composed, input address
//! to PA.
//!
//! StreamIDs are shown as requesters: the low 16 bits as `bus:dev.fn` (a PCI RID, as
//! IORT maps it), bits 31:16 in the segment position ([`stream_rid`]).

pub mod unit;
pub mod walk;

use crate::arch::{Arch, ArchUnit};
use crate::error::{InspectError, StructureProblem};
use crate::fields::{EventRing, PendingEvent};
use crate::image::{Image, RegValue, UNIT_KIND_SMMUV3};
use crate::model::LoadOptions;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::{translate, Outcome};
use iommu_core::{Iova, PhysAddr, RequesterId};
use smmuv3::format::{Caps, FormatError, Vmsa};
use smmuv3::hw::cd::{cd_index, Cd, L1Cd};
use smmuv3::hw::regs::{self, IDR0, IDR1, STRTAB_BASE};
use smmuv3::hw::ste::{Config, L1Std, S1Dss, S1Fmt, Ste, StrtabCfg, StrtabFmt};
use std::collections::HashMap;

/// What the command line says about an SMMU the image does not describe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmmuOverride {
    /// `--smmu-strtab`: STRTAB_BASE (ADDR in 51:6). The SMMU is then made up from
    /// options and replaces the image's SMMUv3s.
    pub strtab: Option<u64>,
    /// `--smmu-strtab-cfg`: STRTAB_BASE_CFG (required with `strtab`).
    pub strtab_cfg: Option<u32>,
    /// `--smmu-idr0` (default [`DEFAULT_IDR0`]).
    pub idr0: Option<u32>,
    /// `--smmu-idr1` (default [`DEFAULT_IDR1`]).
    pub idr1: Option<u32>,
    /// `--smmu-idr5` (default [`DEFAULT_IDR5`]).
    pub idr5: Option<u32>,
    /// `--smmu-base`: MMIO base (names the `iommu-smmuv3-<base>` record).
    pub base: Option<u64>,
}

/// IDR0 of an SMMU given on the command line: S2P, S1P, TTF AArch64, ASID16, VMID16,
/// CD2L, STALL_MODEL 1 (terminate only), ST_LEVEL 2-level.
pub const DEFAULT_IDR0: u32 = 0x090c_100b;
/// IDR1: SIDSIZE 32, SSIDSIZE 20.
pub const DEFAULT_IDR1: u32 = 0x520;
/// IDR5: OAS 48 bits, 4K, 16K and 64K granules.
pub const DEFAULT_IDR5: u32 = 0x75;
/// Most CDs read per SMMU (a hostile S1CDMax cannot make the scan read more).
pub const MAX_CDS: usize = 1 << 20;

/// The requester a StreamID is shown as (low 16 bits as a PCI RID, bits 31:16 in the
/// segment position).
pub fn stream_rid(sid: u32) -> RequesterId {
    RequesterId::from_sid((sid >> 16) as u16, sid as u16)
}

/// The StreamID of a requester shown by [`stream_rid`].
pub fn rid_stream(rid: RequesterId) -> u32 {
    (rid.segment as u32) << 16 | rid.sid() as u32
}

/// How a stream's (or substream's) transactions are handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handling {
    /// STE.Config abort (0b0xx): aborted, no event.
    Abort,
    /// STE.Config bypass, or stage 1 bypassed by S1DSS without stage 2.
    Bypass,
    /// Stage-1 only.
    Stage1,
    /// Stage-2 only (or stage 1 bypassed by S1DSS).
    Stage2,
    /// Stage 1 then stage 2.
    Nested,
    /// Refused with this event (C_BAD_STE, C_BAD_CD, F_STREAM_DISABLED...): code, why.
    Refused(u8, String),
}

/// One entry of the listing: an STE, or one CD of its CD table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The StreamID.
    pub sid: u32,
    /// The L1STD (address, value) of a 2-level stream table.
    pub l1std: Option<(PhysAddr, u64)>,
    /// Address of the STE.
    pub ste_addr: PhysAddr,
    /// The STE.
    pub ste: Ste,
    /// SubstreamID of a CD entry.
    pub ssid: Option<u32>,
    /// The CD serves transactions without SubstreamID (S1DSS = SSID0, or S1CDMax = 0).
    pub no_ssid: bool,
    /// The CD (address, IPA for nested streams; value).
    pub cd: Option<(PhysAddr, Cd)>,
    /// What transactions meet.
    pub handling: Handling,
    /// Index of its tree.
    pub tree: Option<usize>,
}

/// A distinct translation of a unit: stage-1 tables, stage-2 tables, or both (nested:
/// the stage-1 tables at IPAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Stage-1 format and TTB0.
    pub s1: Option<(Vmsa, PhysAddr)>,
    /// Stage-2 format and S2TTB.
    pub s2: Option<(Vmsa, PhysAddr)>,
}

impl Tree {
    /// `stage-1`, `stage-2` or `nested`.
    pub fn kind(&self) -> &'static str {
        match (self.s1.is_some(), self.s2.is_some()) {
            (true, true) => "nested",
            (true, false) => "stage-1",
            _ => "stage-2",
        }
    }
    fn key(&self) -> String {
        format!("{:?}", (self.s1, self.s2))
    }
}

/// Memory as a nested stage-1 walk sees it: every address is an IPA translated by the
/// stage-2 tables (reference §13); an address stage 2 does not map for reading is
/// unbacked.
pub struct S2Mem<'a> {
    /// The image.
    pub image: &'a Image,
    /// Stage-2 format.
    pub fmt: Vmsa,
    /// Stage-2 start table.
    pub root: PhysAddr,
}

impl PhysMem for S2Mem<'_> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.0.checked_add(done as u64).ok_or(MemError::Overflow {
                addr,
                len: buf.len() as u64,
            })?;
            let n = ((0x1000 - (a & 0xfff)) as usize).min(buf.len() - done);
            let pa = match translate(&self.fmt, self.image, self.root, Iova(a)) {
                Ok(t) => match t.outcome {
                    Outcome::Mapped { pa, perms, .. } if perms.read => pa,
                    _ => return Err(MemError::Unbacked { addr: PhysAddr(a) }),
                },
                Err(_) => return Err(MemError::Unbacked { addr: PhysAddr(a) }),
            };
            self.image.read(pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
    fn write(&mut self, addr: PhysAddr, _data: &[u8]) -> Result<(), MemError> {
        Err(MemError::ReadOnly { addr })
    }
}

/// An SMMUv3 of an image, scanned.
#[derive(Debug)]
pub struct SmmuState {
    /// Position among the image's SMMUv3s.
    pub index: usize,
    /// Name (`smmu0`).
    pub name: String,
    /// MMIO base.
    pub base: PhysAddr,
    /// Registers made up from the command line.
    pub assumed: bool,
    /// Register values.
    pub regs: Vec<RegValue>,
    /// The effective stream table configuration.
    pub cfg: StrtabCfg,
    /// Translation capabilities (`None` with IDR5.OAS reserved).
    pub caps: Option<Caps>,
    /// The listing, by StreamID then SubstreamID.
    pub entries: Vec<StreamEntry>,
    /// Distinct trees.
    pub trees: Vec<Tree>,
    /// Malformed structures.
    pub problems: Vec<StructureProblem>,
    /// StreamIDs the snapshot's device notes put behind this SMMU.
    pub noted: Vec<u32>,
    /// The event queue's entries from EVENTQ_CONS to EVENTQ_PROD.
    pub events: EventRing,
}

/// The SMMUv3 architecture.
pub struct Smmuv3;

/// The registered SMMUv3 architecture.
pub static SMMUV3: Smmuv3 = Smmuv3;

impl Arch for Smmuv3 {
    fn name(&self) -> &'static str {
        "smmuv3"
    }
    fn load(
        &self,
        image: &Image,
        opts: &LoadOptions,
    ) -> Result<Vec<Box<dyn ArchUnit>>, InspectError> {
        let ov = &opts.smmu;
        if let Some(strtab) = ov.strtab {
            let cfg = ov.strtab_cfg.ok_or_else(|| {
                InspectError::Usage(
                    "--smmu-strtab needs --smmu-strtab-cfg (the STRTAB_BASE_CFG value)".into(),
                )
            })?;
            let r4 = |offset, value: u32| RegValue {
                offset,
                width: 4,
                value: value as u64,
            };
            let regs = vec![
                r4(regs::IDR0, ov.idr0.unwrap_or(DEFAULT_IDR0)),
                r4(regs::IDR1, ov.idr1.unwrap_or(DEFAULT_IDR1)),
                r4(regs::IDR5, ov.idr5.unwrap_or(DEFAULT_IDR5)),
                r4(regs::CR0, 1),
                RegValue {
                    offset: regs::STRTAB_BASE,
                    width: 8,
                    value: strtab,
                },
                r4(regs::STRTAB_BASE_CFG, cfg),
            ];
            let base = PhysAddr(ov.base.unwrap_or(0));
            return Ok(vec![Box::new(SmmuState::scan(image, 0, base, regs, true)?)]);
        }
        if ov.strtab_cfg.is_some() || ov.idr0.is_some() || ov.idr1.is_some() || ov.idr5.is_some() {
            return Err(InspectError::Usage(
                "--smmu-strtab-cfg and --smmu-idr0/1/5 describe an SMMU given with --smmu-strtab"
                    .into(),
            ));
        }
        let mut out: Vec<Box<dyn ArchUnit>> = Vec::new();
        for (index, n) in image
            .units()
            .iter()
            .filter(|u| u.kind == UNIT_KIND_SMMUV3)
            .enumerate()
        {
            out.push(Box::new(SmmuState::scan(
                image,
                index,
                n.base,
                n.regs.clone(),
                false,
            )?));
        }
        Ok(out)
    }
}

/// Reads the 8 qwords of a 64-byte structure (STE, CD).
fn read_qwords<M: PhysMem + ?Sized>(mem: &M, at: PhysAddr) -> Result<[u64; 8], MemError> {
    let mut b = [0u8; 64];
    mem.read(at, &mut b)?;
    Ok(std::array::from_fn(|i| {
        u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
    }))
}

/// Reads an STE.
pub fn read_ste<M: PhysMem + ?Sized>(mem: &M, at: PhysAddr) -> Result<Ste, MemError> {
    read_qwords(mem, at).map(Ste::from_qwords)
}

/// Reads a CD.
pub fn read_cd<M: PhysMem + ?Sized>(mem: &M, at: PhysAddr) -> Result<Cd, MemError> {
    read_qwords(mem, at).map(Cd::from_qwords)
}

impl SmmuState {
    /// The value of the register at `offset` (0 when absent).
    pub fn reg(&self, offset: u64) -> u64 {
        self.regs
            .iter()
            .find(|r| r.offset == offset)
            .map_or(0, |r| r.value)
    }
    /// IDR0.
    pub fn idr0(&self) -> u32 {
        self.reg(regs::IDR0) as u32
    }
    /// IDR1.
    pub fn idr1(&self) -> u32 {
        self.reg(regs::IDR1) as u32
    }
    /// CR0.SMMUEN.
    pub fn enabled(&self) -> bool {
        regs::CR0::SMMUEN.read(self.reg(regs::CR0) as u32) == 1
    }
    /// SubstreamID bits (IDR1.SSIDSIZE).
    pub fn ssid_bits(&self) -> u32 {
        IDR1::SSIDSIZE.read(self.idr1())
    }
    /// The stream table's base address, aligned as the SMMU aligns it (IHI0070 §6.3
    /// STRTAB_BASE: to the table size for linear tables, to the L1 table for 2-level).
    pub fn strtab(&self) -> PhysAddr {
        let literal = regs::STRTAB_BASE_CFG::LOG2SIZE.read(self.reg(regs::STRTAB_BASE_CFG) as u32);
        let shift = match self.cfg.fmt {
            StrtabFmt::Linear => literal + 6,
            StrtabFmt::TwoLevel => (literal.saturating_sub(self.cfg.split) + 2).max(5) + 1,
        };
        let base = STRTAB_BASE::ADDR.read(self.reg(regs::STRTAB_BASE)) << 6;
        PhysAddr(base & !(1u64.checked_shl(shift).unwrap_or(0).wrapping_sub(1)))
    }

    /// The event queue's pending records, EVENTQ_CONS to EVENTQ_PROD (reference §9,
    /// §15).
    pub fn event_queue(&self, image: &Image) -> EventRing {
        use smmuv3::hw::event::Event;
        use smmuv3::hw::regs::{QueuePos, Q_BASE, Q_PROD};
        let b = self.reg(regs::EVENTQ_BASE);
        let log2 = Q_BASE::LOG2SIZE.read(b) as u32;
        let base = Q_BASE::ADDR.read(b) << 5;
        let prod = QueuePos::from_reg(log2, self.reg(regs::EVENTQ_PROD) as u32);
        let cons = QueuePos::from_reg(log2, self.reg(regs::EVENTQ_CONS) as u32);
        let mut ring = EventRing {
            what: format!(
                "event queue at {base:#x} (LOG2SIZE {log2}), PROD {:#x}{}, CONS {:#x}",
                prod.value,
                if Q_PROD::OVFLG.read(self.reg(regs::EVENTQ_PROD) as u32) == 1 {
                    " (OVFLG)"
                } else {
                    ""
                },
                cons.value
            ),
            ..EventRing::default()
        };
        let (mut c, mut n) = (cons, 0u64);
        while !prod.empty(c) && n < 1 << prod.log2size {
            let a = PhysAddr(base + c.index() as u64 * 32);
            let mut q = [0u64; 4];
            for (i, v) in q.iter_mut().enumerate() {
                match image.read_u64(PhysAddr(a.0 + 8 * i as u64)) {
                    Ok(x) => *v = x,
                    Err(e) => {
                        ring.problem = Some(format!("event record at {a} not readable: {e}"));
                        return ring;
                    }
                }
            }
            let e = Event::from_qwords(q);
            let ty = e.event_type();
            ring.pending.push(PendingEvent {
                addr: a,
                raw: q.to_vec(),
                code: e.code() as u8,
                name: ty.map_or("unknown event", |t| t.name()),
                detail: format!(
                    "{} RnW={} S2={} CLASS={} InputAddr={:#x} IPA/FetchAddr={:#x}",
                    requester(Some(e.sid() as u32), e.substream()),
                    e.rnw() as u8,
                    e.s2() as u8,
                    e.class_bits(),
                    e.input_addr(),
                    q[3]
                ),
            });
            c = c.next();
            n += 1;
        }
        ring
    }

    fn problem(&mut self, sid: Option<u32>, ssid: Option<u32>, addr: PhysAddr, what: String) {
        self.problems.push(StructureProblem {
            unit: self.name.clone(),
            requester: requester(sid, ssid),
            addr,
            what,
        });
    }

    /// Scans the SMMU whose registers are `regs`. A stream table that the image's
    /// memory cannot hold (an absurd LOG2SIZE) or cannot read is an error naming the
    /// SMMU and address; malformed L1STDs, STEs and CDs are problems.
    pub fn scan(
        image: &Image,
        index: usize,
        base: PhysAddr,
        regs: Vec<RegValue>,
        assumed: bool,
    ) -> Result<Self, InspectError> {
        let reg = |o| regs.iter().find(|r| r.offset == o).map_or(0, |r| r.value);
        let idr0 = reg(regs::IDR0) as u32;
        let idr1 = reg(regs::IDR1) as u32;
        let idr5 = reg(regs::IDR5) as u32;
        let cfg = StrtabCfg::effective(
            reg(regs::STRTAB_BASE_CFG) as u32,
            IDR1::SIDSIZE.read(idr1),
            IDR0::ST_LEVEL.read(idr0) != 0,
        );
        let mut noted: Vec<u32> = image
            .devices()
            .iter()
            .filter(|d| !assumed && d.unit == base)
            .map(|d| rid_stream(d.rid))
            .collect();
        noted.sort_unstable();
        noted.dedup();
        let mut u = SmmuState {
            index,
            name: format!("smmu{index}"),
            base,
            assumed,
            regs,
            cfg,
            caps: Caps::from_idr(idr0, idr5),
            entries: Vec::new(),
            trees: Vec::new(),
            problems: Vec::new(),
            noted,
            events: EventRing::default(),
        };
        u.events = u.event_queue(image);
        if u.caps.is_none() {
            u.problem(
                None,
                None,
                base,
                "IDR5.OAS holds the reserved encoding 7: no table can be decoded".into(),
            );
        }
        let st = u.strtab();
        let table_err = |u: &SmmuState, addr: PhysAddr, what: String| {
            InspectError::Structure(StructureProblem {
                unit: u.name.clone(),
                requester: "stream table".into(),
                addr,
                what,
            })
        };
        let (count, size) = match cfg.fmt {
            StrtabFmt::Linear => (cfg.base_entries(), 64u64),
            StrtabFmt::TwoLevel => (cfg.base_entries(), 8u64),
        };
        let bytes = count.saturating_mul(size);
        if bytes > image.memory_bytes() {
            return Err(table_err(
                &u,
                st,
                format!(
                    "STRTAB_BASE_CFG LOG2SIZE {} ({:?}) describes {count} entries ({bytes:#x} \
                     bytes), more than the image's {:#x} bytes of memory",
                    cfg.log2size,
                    cfg.fmt,
                    image.memory_bytes()
                ),
            ));
        }
        let mut trees: HashMap<String, usize> = HashMap::new();
        let mut budget = MAX_CDS;
        match cfg.fmt {
            StrtabFmt::Linear => {
                for sid in 0..count {
                    let at = PhysAddr(st.0 + sid * 64);
                    let ste = read_ste(image, at).map_err(|e| {
                        table_err(&u, e.addr(), format!("linear stream table at {st}: {e}"))
                    })?;
                    u.stream(image, sid as u32, None, at, ste, &mut trees, &mut budget);
                }
            }
            StrtabFmt::TwoLevel => {
                for l1 in 0..count {
                    let at = PhysAddr(st.0 + l1 * 8);
                    let raw = image.read_u64(at).map_err(|e| {
                        table_err(&u, e.addr(), format!("level-1 stream table at {st}: {e}"))
                    })?;
                    let d = L1Std::from_qwords([raw]);
                    if d.span() == 0 {
                        continue;
                    }
                    let first = (l1 as u32) << cfg.split;
                    let Some(n) = d.l2_entries(cfg.split) else {
                        u.problem(
                            Some(first),
                            None,
                            at,
                            format!(
                                "L1STD {l1:#x} = {raw:#x}: SPAN {} reserved or above SPLIT + 1 \
                                 ({}): StreamIDs {first:#x}.. get C_BAD_STREAMID",
                                d.span(),
                                cfg.split + 1
                            ),
                        );
                        continue;
                    };
                    let l2 = PhysAddr(d.l2ptr() & !(n as u64 * 64 - 1));
                    for i in 0..n {
                        let sid = first | i;
                        let sat = PhysAddr(l2.0 + i as u64 * 64);
                        match read_ste(image, sat) {
                            Ok(ste) => u.stream(
                                image,
                                sid,
                                Some((at, raw)),
                                sat,
                                ste,
                                &mut trees,
                                &mut budget,
                            ),
                            Err(e) => {
                                u.problem(
                                    Some(sid),
                                    None,
                                    e.addr(),
                                    format!(
                                        "level-2 stream table at {l2} (L1STD {l1:#x}) not \
                                         readable: {e} (F_STE_FETCH)"
                                    ),
                                );
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(u)
    }

    fn intern(&mut self, trees: &mut HashMap<String, usize>, t: Tree) -> usize {
        *trees.entry(t.key()).or_insert_with(|| {
            self.trees.push(t);
            self.trees.len() - 1
        })
    }

    /// Why an STE is ILLEGAL (C_BAD_STE) on this SMMU, with its stage-2 format.
    pub fn check_ste(&self, ste: &Ste) -> Result<Option<Vmsa>, String> {
        let c = ste.config();
        let idr0 = self.idr0();
        if c.s1() && !IDR0::S1P.is_set(idr0) {
            return Err("stage 1 asked but IDR0.S1P is clear".into());
        }
        if c.s2() && !IDR0::S2P.is_set(idr0) {
            return Err("stage 2 asked but IDR0.S2P is clear".into());
        }
        let s2 = if c.s2() {
            let caps = self.caps.ok_or("IDR5.OAS reserved")?;
            let f = Vmsa::from_ste(&caps, ste).map_err(|e| format!("stage 2: {e}"))?;
            if ste.s2s() {
                return Err(
                    "STRTAB_STE_2_S2S set without a stall model (IDR0.STALL_MODEL = 1)".into(),
                );
            }
            let align = (f.concatenated() * f.granule().bytes()).max(8);
            if ste.s2ttb() & (align - 1) != 0 {
                return Err(format!(
                    "STRTAB_STE_3_S2TTB {:#x} not aligned to its {align:#x}-byte start table",
                    ste.s2ttb()
                ));
            }
            Some(f)
        } else {
            None
        };
        if c.s1() {
            let cdmax = self.cdmax(ste);
            if cdmax > self.ssid_bits() {
                return Err(format!(
                    "STRTAB_STE_0_S1CDMAX {cdmax} above IDR1.SSIDSIZE {}",
                    self.ssid_bits()
                ));
            }
            if self.cd_fmt(ste) != S1Fmt::Linear && !IDR0::CD2L.is_set(idr0) {
                return Err("2-level CD table without IDR0.CD2L".into());
            }
        }
        Ok(s2)
    }

    /// S1CDMax as the SMMU uses it (ignored without SubstreamIDs).
    pub fn cdmax(&self, ste: &Ste) -> u32 {
        if self.ssid_bits() == 0 {
            0
        } else {
            ste.s1cdmax() as u32
        }
    }

    /// The CD table format (S1Fmt 3 and single-CD tables behave as linear).
    pub fn cd_fmt(&self, ste: &Ste) -> S1Fmt {
        if self.cdmax(ste) == 0 {
            S1Fmt::Linear
        } else {
            ste.s1fmt().unwrap_or(S1Fmt::Linear)
        }
    }

    /// Why a CD is ILLEGAL (C_BAD_CD), or its stage-1 format (`None`: EPD0, every
    /// address faults).
    pub fn check_cd(&self, cd: &Cd) -> Result<Option<Vmsa>, String> {
        if !cd.v() {
            return Err("CTXDESC_CD_0_V clear".into());
        }
        if cd.s() {
            return Err("CTXDESC_CD_0_S set without a stall model".into());
        }
        let caps = self.caps.ok_or("IDR5.OAS reserved")?;
        match Vmsa::from_cd(&caps, cd) {
            Ok(f) => Ok(Some(f)),
            Err(FormatError::Ttb0Disabled) => Ok(None),
            Err(e) => Err(format!("stage 1: {e}")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream(
        &mut self,
        image: &Image,
        sid: u32,
        l1std: Option<(PhysAddr, u64)>,
        at: PhysAddr,
        ste: Ste,
        trees: &mut HashMap<String, usize>,
        budget: &mut usize,
    ) {
        let entry = |handling, tree| StreamEntry {
            sid,
            l1std,
            ste_addr: at,
            ste,
            ssid: None,
            no_ssid: true,
            cd: None,
            handling,
            tree,
        };
        if !ste.v() {
            if self.noted.binary_search(&sid).is_ok() {
                self.entries.push(entry(
                    Handling::Refused(0x04, "STRTAB_STE_0_V clear: C_BAD_STE".into()),
                    None,
                ));
            }
            return;
        }
        let c = ste.config();
        let s2 = match self.check_ste(&ste) {
            Ok(s2) => s2.map(|f| (f, PhysAddr(ste.s2ttb()))),
            Err(why) => {
                self.problem(Some(sid), None, at, format!("{why} (C_BAD_STE)"));
                self.entries.push(entry(Handling::Refused(0x04, why), None));
                return;
            }
        };
        match c {
            Config::Abort => return self.entries.push(entry(Handling::Abort, None)),
            Config::Bypass => return self.entries.push(entry(Handling::Bypass, None)),
            Config::S2Trans => {
                let t = self.intern(trees, Tree { s1: None, s2 });
                return self.entries.push(entry(Handling::Stage2, Some(t)));
            }
            _ => {}
        }
        let cdmax = self.cdmax(&ste);
        let fmt = self.cd_fmt(&ste);
        let handling = if s2.is_some() {
            Handling::Nested
        } else {
            Handling::Stage1
        };
        if cdmax != 0 {
            // Transactions without SubstreamID (S1DSS).
            match ste.s1dss() {
                None | Some(S1Dss::Terminate) => self.entries.push(entry(
                    Handling::Refused(
                        0x06,
                        "STRTAB_STE_1_S1DSS terminate: F_STREAM_DISABLED without SubstreamID"
                            .into(),
                    ),
                    None,
                )),
                Some(S1Dss::Bypass) => match s2 {
                    Some(_) => {
                        let t = self.intern(trees, Tree { s1: None, s2 });
                        self.entries.push(entry(Handling::Stage2, Some(t)))
                    }
                    None => self.entries.push(entry(Handling::Bypass, None)),
                },
                Some(S1Dss::Ssid0) => {}
            }
        }
        let ptr = ste.s1_context_ptr();
        let s2mem = s2.map(|(fmt, root)| S2Mem { image, fmt, root });
        let mem: &dyn PhysMem = match &s2mem {
            Some(m) => m,
            None => image,
        };
        let n_cds: u64 = 1 << cdmax;
        let mut cds = Vec::new();
        match cd_index(fmt, 0).0 {
            None => {
                for ssid in 0..n_cds {
                    if *budget == 0 {
                        break;
                    }
                    *budget -= 1;
                    let a = PhysAddr(ptr + ssid * 64);
                    match read_cd(mem, a) {
                        Ok(cd) => cds.push((ssid as u32, a, cd)),
                        Err(e) => {
                            self.problem(
                                Some(sid),
                                Some(ssid as u32),
                                a,
                                format!("CD table at {ptr:#x} not readable: {e} (F_CD_FETCH)"),
                            );
                            break;
                        }
                    }
                }
            }
            Some(_) => {
                let b = fmt.l2_bits().unwrap_or(6);
                let l1n = ((n_cds - 1) >> b) + 1;
                for l1 in 0..l1n {
                    let a = PhysAddr(ptr + l1 * 8);
                    let d = match mem.read_u64(a) {
                        Ok(v) => L1Cd::from_qwords([v]),
                        Err(e) => {
                            self.problem(
                                Some(sid),
                                Some((l1 << b) as u32),
                                a,
                                format!(
                                    "level-1 CD table at {ptr:#x} not readable: {e} (F_CD_FETCH)"
                                ),
                            );
                            break;
                        }
                    };
                    if !d.v() {
                        continue;
                    }
                    let per = (1u64 << b).min(n_cds);
                    for i in 0..per {
                        if *budget == 0 {
                            break;
                        }
                        *budget -= 1;
                        let ssid = ((l1 << b) | i) as u32;
                        let ca = PhysAddr(d.l2ptr() + i * 64);
                        match read_cd(mem, ca) {
                            Ok(cd) => cds.push((ssid, ca, cd)),
                            Err(e) => {
                                self.problem(
                                    Some(sid),
                                    Some(ssid),
                                    ca,
                                    format!(
                                        "level-2 CD table at {:#x} not readable: {e} (F_CD_FETCH)",
                                        d.l2ptr()
                                    ),
                                );
                                break;
                            }
                        }
                    }
                }
            }
        }
        if *budget == 0 {
            self.problem(
                Some(sid),
                None,
                PhysAddr(ptr),
                format!("CDs not all read: more than {MAX_CDS} CDs in the SMMU"),
            );
        }
        for (ssid, a, cd) in cds {
            let no_ssid = cdmax == 0 || (ssid == 0 && ste.s1dss() == Some(S1Dss::Ssid0));
            if !cd.v() && cdmax != 0 {
                continue;
            }
            let ssid_opt = (cdmax != 0).then_some(ssid);
            let e = |handling, tree| StreamEntry {
                ssid: ssid_opt,
                no_ssid,
                cd: Some((a, cd)),
                ..entry(handling, tree)
            };
            match self.check_cd(&cd) {
                Ok(Some(f)) => {
                    let t = self.intern(
                        trees,
                        Tree {
                            s1: Some((f, PhysAddr(cd.ttb0()))),
                            s2,
                        },
                    );
                    self.entries.push(e(handling.clone(), Some(t)));
                }
                Ok(None) => self.entries.push(e(handling.clone(), None)),
                Err(why) => {
                    if cd.v() {
                        self.problem(Some(sid), ssid_opt, a, format!("{why} (C_BAD_CD)"));
                    }
                    self.entries.push(e(Handling::Refused(0x0a, why), None));
                }
            }
        }
    }
}

/// `StreamID 0x3` or `StreamID 0x3 SubstreamID 0x1`, or the stream table.
pub fn requester(sid: Option<u32>, ssid: Option<u32>) -> String {
    match (sid, ssid) {
        (Some(s), Some(x)) => format!("StreamID {s:#x} SubstreamID {x:#x}"),
        (Some(s), None) => format!("StreamID {s:#x}"),
        _ => "stream table".into(),
    }
}
