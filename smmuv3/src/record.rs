//! The SMMUv3 handover record (payload of the KHO client record `iommu-smmuv3-v1`).
//!
//! Little-endian, fixed-size entries, every reserved field zero:
//!
//! ```text
//! 0x00 u64 SMMU MMIO base
//! 0x08 u32 IDR0   0x0c u32 IDR1   0x10 u32 IDR5   0x14 u32 reserved
//! 0x18 u64 STRTAB_BASE
//! 0x20 u32 STRTAB_BASE_CFG        0x24 u32 CR0
//! 0x28 u32 CR1    0x2c u32 CR2    0x30 u32 GBPA
//! 0x34 u32 domain count           0x38 u32 master count
//! 0x3c u32 page-run count
//! 0x40 domains, 32 bytes each:
//!      +0 u32 domain ID, +4 u8 stage (1 stage 1, 2 stage 2, 3 nested),
//!      +5 u8 granule shift (12, 14 or 16), +6 u16 ASID, +8 u16 VMID,
//!      +10 u8 T0SZ, +11 u8 IPS (CD TCR fields; 0 without stage 1),
//!      +12 u8 S2T0SZ, +13 u8 S2SL0, +14 u8 S2PS (STE VTCR fields; 0 without stage 2),
//!      +15 u8 reserved, +16 u64 TTB0 (stage 1 or 0), +24 u64 S2TTB (stage 2 or 0)
//!      masters, 96 bytes each:
//!      +0 u32 StreamID, +4 u32 domain ID, +8 the STE (64 bytes, bit for bit),
//!      +72 u64 CD table base (0 without stage 1), +80 u8 S1Fmt, +81 u8 S1CDMax,
//!      +82 6 bytes reserved, +88 u64 reserved
//!      page runs, 16 bytes each: u64 first page, u64 page count (the structure and
//!      table pages the old kernel pinned for this SMMU, ascending, disjoint)
//! ```
//!
//! The reader treats the bytes as untrusted: counts are checked against the length
//! before anything is allocated, the length must match exactly, and every field is
//! range-checked; each refusal is a [`Malformed`] naming the field and its offset.
//! A record of another version is refused by the KHO record layer
//! (`iommu_core::kho::record`), which names the version found and the one supported.
//!
//! Like [`hw`](crate::hw), the record is compiled without the `driver` feature.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use iommu_core::PhysAddr;

use crate::hw::ste::Ste;
use crate::hw::Granule;

/// Record family (compatible `iommu-smmuv3-v<N>`).
pub const FAMILY: &str = "iommu-smmuv3";
/// Version written and read by this code.
pub const VERSION: u32 = 1;
/// The compatible string written.
pub const COMPATIBLE: &str = "iommu-smmuv3-v1";

/// The KHO client name of the SMMU at `base`: `iommu-smmuv3-<base in hex>`.
pub fn client_name(base: PhysAddr) -> String {
    alloc::format!("iommu-smmuv3-{:x}", base.0)
}

const HEADER: usize = 0x40;
const DOMAIN: usize = 32;
const MASTER: usize = 96;
const RUN: usize = 16;
const PAGE: u64 = 4096;

/// The translation stages of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1 only: a CD with the ASID and TTB0 (STE.Config = S1_TRANS).
    S1,
    /// Stage 2 only: VMID and S2TTB in the STE (STE.Config = S2_TRANS).
    S2,
    /// Both: a CD table whose stage-1 tables output IPAs, translated by stage 2
    /// (STE.Config = ALL_TRANS).
    Nested,
}

impl Stage {
    /// Whether the domain has stage-1 tables.
    pub const fn s1(self) -> bool {
        matches!(self, Stage::S1 | Stage::Nested)
    }
    /// Whether the domain has stage-2 tables.
    pub const fn s2(self) -> bool {
        matches!(self, Stage::S2 | Stage::Nested)
    }
    fn code(self) -> u8 {
        match self {
            Stage::S1 => 1,
            Stage::S2 => 2,
            Stage::Nested => 3,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::S1 => "stage 1",
            Stage::S2 => "stage 2",
            Stage::Nested => "nested",
        })
    }
}

/// A preserved domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordDomain {
    /// The driver's domain ID.
    pub id: u32,
    /// Stages.
    pub stage: Stage,
    /// Translation granule of both stages.
    pub granule: Granule,
    /// ASID (stage 1; 0 otherwise).
    pub asid: u16,
    /// VMID (stage 2; 0 otherwise).
    pub vmid: u16,
    /// CD.T0SZ (stage 1).
    pub t0sz: u8,
    /// CD.IPS (stage 1).
    pub ips: u8,
    /// STE.S2T0SZ (stage 2).
    pub s2t0sz: u8,
    /// STE.S2SL0 (stage 2).
    pub s2sl0: u8,
    /// STE.S2PS (stage 2).
    pub s2ps: u8,
    /// CD.TTB0: the stage-1 root (0 without stage 1).
    pub ttb: u64,
    /// STE.S2TTB: the stage-2 root (0 without stage 2).
    pub s2ttb: u64,
}

/// A preserved master (one StreamID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMaster {
    /// StreamID.
    pub sid: u32,
    /// Domain it is attached to.
    pub domain: u32,
    /// Its STE, bit for bit as the old kernel left it.
    pub ste: Ste,
    /// CD table base (0 without stage 1).
    pub cd_base: u64,
    /// STE.S1Fmt of the CD table.
    pub s1fmt: u8,
    /// STE.S1CDMax.
    pub s1cdmax: u8,
}

/// Everything the old kernel hands over for one SMMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// MMIO base.
    pub mmio_base: PhysAddr,
    /// IDR0.
    pub idr0: u32,
    /// IDR1.
    pub idr1: u32,
    /// IDR5.
    pub idr5: u32,
    /// STRTAB_BASE.
    pub strtab_base: u64,
    /// STRTAB_BASE_CFG.
    pub strtab_base_cfg: u32,
    /// CR0.
    pub cr0: u32,
    /// CR1.
    pub cr1: u32,
    /// CR2.
    pub cr2: u32,
    /// GBPA.
    pub gbpa: u32,
    /// Domains, ascending by ID.
    pub domains: Vec<RecordDomain>,
    /// Masters, ascending by StreamID.
    pub masters: Vec<RecordMaster>,
    /// Pinned pages as `(first page, count)` runs.
    pub pages: Vec<(PhysAddr, u64)>,
}

/// Why a record payload was refused; every offset is from the payload start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The payload ends inside a field or the header.
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header and counts require.
        need: usize,
    },
    /// The counts do not describe the payload's length exactly.
    Counts {
        /// Domains.
        domains: u32,
        /// Masters.
        masters: u32,
        /// Page runs.
        runs: u32,
        /// Payload bytes.
        len: usize,
    },
    /// A reserved field is not zero.
    Reserved {
        /// Offset of the field.
        offset: usize,
    },
    /// A domain's stage is not 1, 2 or 3.
    DomainStage {
        /// Offset.
        offset: usize,
        /// Value found.
        value: u8,
    },
    /// A domain's granule shift is not 12, 14 or 16.
    DomainGranule {
        /// Offset.
        offset: usize,
        /// Value found.
        value: u8,
    },
    /// A table root is not aligned to the granule, or is set for a stage the domain
    /// lacks / missing for one it has.
    DomainRoot {
        /// Offset.
        offset: usize,
        /// Value found.
        value: u64,
    },
    /// Domain IDs are not strictly ascending.
    DomainOrder {
        /// Offset.
        offset: usize,
    },
    /// StreamIDs are not strictly ascending.
    MasterOrder {
        /// Offset.
        offset: usize,
    },
    /// A master names a domain the record does not hold.
    MasterDomain {
        /// Offset.
        offset: usize,
        /// Domain ID found.
        domain: u32,
    },
    /// A master's CD table fields are set without stage 1, missing with it, or
    /// misaligned (64 bytes).
    MasterCdTable {
        /// Offset.
        offset: usize,
    },
    /// A page run is empty, not page aligned, wraps, or is not ascending and disjoint.
    Run {
        /// Offset.
        offset: usize,
    },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Malformed::Truncated { len, need } => {
                write!(f, "payload of {len} bytes is shorter than the {need} it needs")
            }
            Malformed::Counts {
                domains,
                masters,
                runs,
                len,
            } => write!(
                f,
                "{domains} domains, {masters} masters and {runs} runs do not fill a {len}-byte payload"
            ),
            Malformed::Reserved { offset } => {
                write!(f, "reserved field at {offset:#x} is not zero")
            }
            Malformed::DomainStage { offset, value } => {
                write!(f, "domain stage {value} at {offset:#x} is not 1, 2 or 3")
            }
            Malformed::DomainGranule { offset, value } => {
                write!(f, "domain granule shift {value} at {offset:#x} is not 12, 14 or 16")
            }
            Malformed::DomainRoot { offset, value } => write!(
                f,
                "domain table root {value:#x} at {offset:#x} is misaligned or does not match the stage"
            ),
            Malformed::DomainOrder { offset } => {
                write!(f, "domain IDs not strictly ascending at {offset:#x}")
            }
            Malformed::MasterOrder { offset } => {
                write!(f, "StreamIDs not strictly ascending at {offset:#x}")
            }
            Malformed::MasterDomain { offset, domain } => write!(
                f,
                "master at {offset:#x} names domain {domain}, which the record does not hold"
            ),
            Malformed::MasterCdTable { offset } => write!(
                f,
                "master at {offset:#x}: CD table fields do not match its domain's stage"
            ),
            Malformed::Run { offset } => write!(
                f,
                "page run at {offset:#x} is empty, misaligned, wraps or overlaps its predecessor"
            ),
        }
    }
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Little-endian reads from an untrusted payload.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&self, o: usize) -> Result<[u8; N], Malformed> {
        let mut w = [0u8; N];
        let s = self.0.get(o..o + N).ok_or(Malformed::Truncated {
            len: self.0.len(),
            need: o + N,
        })?;
        w.copy_from_slice(s);
        Ok(w)
    }
    fn u8(&self, o: usize) -> Result<u8, Malformed> {
        Ok(self.bytes::<1>(o)?[0])
    }
    fn u16(&self, o: usize) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.bytes(o)?))
    }
    fn u32(&self, o: usize) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.bytes(o)?))
    }
    fn u64(&self, o: usize) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.bytes(o)?))
    }
    fn zero(&self, o: usize, n: usize) -> Result<(), Malformed> {
        let s = self.0.get(o..o + n).ok_or(Malformed::Truncated {
            len: self.0.len(),
            need: o + n,
        })?;
        match s.iter().all(|&b| b == 0) {
            true => Ok(()),
            false => Err(Malformed::Reserved { offset: o }),
        }
    }
}

fn granule_of(shift: u8) -> Option<Granule> {
    match shift {
        12 => Some(Granule::K4),
        14 => Some(Granule::K16),
        16 => Some(Granule::K64),
        _ => None,
    }
}

impl Record {
    /// Bytes of the encoded payload.
    pub fn encoded_len(&self) -> usize {
        HEADER + DOMAIN * self.domains.len() + MASTER * self.masters.len() + RUN * self.pages.len()
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        put64(&mut v, self.mmio_base.0);
        put32(&mut v, self.idr0);
        put32(&mut v, self.idr1);
        put32(&mut v, self.idr5);
        put32(&mut v, 0);
        put64(&mut v, self.strtab_base);
        put32(&mut v, self.strtab_base_cfg);
        put32(&mut v, self.cr0);
        put32(&mut v, self.cr1);
        put32(&mut v, self.cr2);
        put32(&mut v, self.gbpa);
        put32(&mut v, self.domains.len() as u32);
        put32(&mut v, self.masters.len() as u32);
        put32(&mut v, self.pages.len() as u32);
        for d in &self.domains {
            put32(&mut v, d.id);
            v.push(d.stage.code());
            v.push(d.granule.shift() as u8);
            put16(&mut v, d.asid);
            put16(&mut v, d.vmid);
            v.extend_from_slice(&[d.t0sz, d.ips, d.s2t0sz, d.s2sl0, d.s2ps, 0]);
            put64(&mut v, d.ttb);
            put64(&mut v, d.s2ttb);
        }
        for m in &self.masters {
            put32(&mut v, m.sid);
            put32(&mut v, m.domain);
            for q in m.ste.qwords() {
                put64(&mut v, q);
            }
            put64(&mut v, m.cd_base);
            v.extend_from_slice(&[m.s1fmt, m.s1cdmax, 0, 0, 0, 0, 0, 0]);
            put64(&mut v, 0);
        }
        for &(p, n) in &self.pages {
            put64(&mut v, p.0);
            put64(&mut v, n);
        }
        v
    }

    /// Decodes and checks a payload.
    pub fn decode(b: &[u8]) -> Result<Record, Malformed> {
        let r = Reader(b);
        if b.len() < HEADER {
            return Err(Malformed::Truncated {
                len: b.len(),
                need: HEADER,
            });
        }
        r.zero(0x14, 4)?;
        let (nd, nm, nr) = (r.u32(0x34)?, r.u32(0x38)?, r.u32(0x3c)?);
        // Counts against the bytes before anything is allocated.
        let need = (nd as u128) * DOMAIN as u128
            + (nm as u128) * MASTER as u128
            + (nr as u128) * RUN as u128
            + HEADER as u128;
        if need != b.len() as u128 {
            return Err(Malformed::Counts {
                domains: nd,
                masters: nm,
                runs: nr,
                len: b.len(),
            });
        }
        let mut rec = Record {
            mmio_base: PhysAddr(r.u64(0)?),
            idr0: r.u32(0x08)?,
            idr1: r.u32(0x0c)?,
            idr5: r.u32(0x10)?,
            strtab_base: r.u64(0x18)?,
            strtab_base_cfg: r.u32(0x20)?,
            cr0: r.u32(0x24)?,
            cr1: r.u32(0x28)?,
            cr2: r.u32(0x2c)?,
            gbpa: r.u32(0x30)?,
            domains: Vec::with_capacity(nd as usize),
            masters: Vec::with_capacity(nm as usize),
            pages: Vec::with_capacity(nr as usize),
        };
        let mut o = HEADER;
        for _ in 0..nd {
            let id = r.u32(o)?;
            let stage = match r.u8(o + 4)? {
                1 => Stage::S1,
                2 => Stage::S2,
                3 => Stage::Nested,
                value => {
                    return Err(Malformed::DomainStage {
                        offset: o + 4,
                        value,
                    })
                }
            };
            let gshift = r.u8(o + 5)?;
            let granule = granule_of(gshift).ok_or(Malformed::DomainGranule {
                offset: o + 5,
                value: gshift,
            })?;
            r.zero(o + 15, 1)?;
            let (ttb, s2ttb) = (r.u64(o + 16)?, r.u64(o + 24)?);
            let align = granule.bytes() - 1;
            for (off, v, on) in [(o + 16, ttb, stage.s1()), (o + 24, s2ttb, stage.s2())] {
                // A root is set exactly for the stages the domain has, and aligned to
                // a granule (a concatenated stage-2 start table is larger and aligned
                // to its size, which implies this).
                if (v != 0) != on || v & align != 0 {
                    return Err(Malformed::DomainRoot {
                        offset: off,
                        value: v,
                    });
                }
            }
            let d = RecordDomain {
                id,
                stage,
                granule,
                asid: r.u16(o + 6)?,
                vmid: r.u16(o + 8)?,
                t0sz: r.u8(o + 10)?,
                ips: r.u8(o + 11)?,
                s2t0sz: r.u8(o + 12)?,
                s2sl0: r.u8(o + 13)?,
                s2ps: r.u8(o + 14)?,
                ttb,
                s2ttb,
            };
            if !stage.s1() && (d.asid | d.t0sz as u16 | d.ips as u16) != 0 {
                return Err(Malformed::Reserved { offset: o + 6 });
            }
            if !stage.s2() && (d.vmid | d.s2t0sz as u16 | d.s2sl0 as u16 | d.s2ps as u16) != 0 {
                return Err(Malformed::Reserved { offset: o + 8 });
            }
            if rec.domains.last().is_some_and(|p| p.id >= id) {
                return Err(Malformed::DomainOrder { offset: o });
            }
            rec.domains.push(d);
            o += DOMAIN;
        }
        for _ in 0..nm {
            let sid = r.u32(o)?;
            let domain = r.u32(o + 4)?;
            let mut q = [0u64; 8];
            for (i, w) in q.iter_mut().enumerate() {
                *w = r.u64(o + 8 + 8 * i)?;
            }
            let cd_base = r.u64(o + 72)?;
            let (s1fmt, s1cdmax) = (r.u8(o + 80)?, r.u8(o + 81)?);
            r.zero(o + 82, 14)?;
            if rec.masters.last().is_some_and(|p| p.sid >= sid) {
                return Err(Malformed::MasterOrder { offset: o });
            }
            let Ok(i) = rec.domains.binary_search_by_key(&domain, |d| d.id) else {
                return Err(Malformed::MasterDomain {
                    offset: o + 4,
                    domain,
                });
            };
            let s1 = rec.domains[i].stage.s1();
            if (cd_base != 0) != s1 || cd_base & 63 != 0 || s1fmt > 2 || s1cdmax > 20 {
                return Err(Malformed::MasterCdTable { offset: o + 72 });
            }
            rec.masters.push(RecordMaster {
                sid,
                domain,
                ste: Ste::from_qwords(q),
                cd_base,
                s1fmt,
                s1cdmax,
            });
            o += MASTER;
        }
        let mut prev_end = 0u64;
        for _ in 0..nr {
            let (p, n) = (r.u64(o)?, r.u64(o + 8)?);
            let end = n.checked_mul(PAGE).and_then(|l| p.checked_add(l));
            match end {
                Some(end) if p % PAGE == 0 && n != 0 && p >= prev_end => prev_end = end,
                _ => return Err(Malformed::Run { offset: o }),
            }
            rec.pages.push((PhysAddr(p), n));
            o += RUN;
        }
        Ok(rec)
    }

    /// Whether `page` lies in one of the record's page runs.
    pub fn holds_page(&self, page: PhysAddr) -> bool {
        let i = self.pages.partition_point(|&(p, _)| p <= page);
        i > 0 && {
            let (p, n) = self.pages[i - 1];
            (page.0 - p.0) / PAGE < n
        }
    }

    /// Total pages in the runs.
    pub fn page_count(&self) -> u64 {
        self.pages.iter().map(|&(_, n)| n).sum()
    }

    /// The domain with ID `id`.
    pub fn domain(&self, id: u32) -> Option<&RecordDomain> {
        self.domains
            .binary_search_by_key(&id, |d| d.id)
            .ok()
            .map(|i| &self.domains[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::ste::Config;

    pub(super) fn sample() -> Record {
        let mut ste = Ste::default();
        ste.set_v(true);
        ste.set_config(Config::S1Trans);
        ste.set_s1_context_ptr(0x8000_0000);
        Record {
            mmio_base: PhysAddr(0x900_0000),
            idr0: 0x0c0f_1abf,
            idr1: 0x0014_1010,
            idr5: 0x75,
            strtab_base: 0x8010_0000,
            strtab_base_cfg: 0x0001_0810,
            cr0: 0xd,
            cr1: 0xd75,
            cr2: 0x6,
            gbpa: 0,
            domains: alloc::vec![
                RecordDomain {
                    id: 1,
                    stage: Stage::S1,
                    granule: Granule::K4,
                    asid: 7,
                    vmid: 0,
                    t0sz: 16,
                    ips: 5,
                    s2t0sz: 0,
                    s2sl0: 0,
                    s2ps: 0,
                    ttb: 0x8020_0000,
                    s2ttb: 0,
                },
                RecordDomain {
                    id: 2,
                    stage: Stage::Nested,
                    granule: Granule::K64,
                    asid: 8,
                    vmid: 3,
                    t0sz: 16,
                    ips: 5,
                    s2t0sz: 16,
                    s2sl0: 2,
                    s2ps: 5,
                    ttb: 0x8030_0000,
                    s2ttb: 0x8040_0000,
                },
            ],
            masters: alloc::vec![RecordMaster {
                sid: 0x100,
                domain: 1,
                ste,
                cd_base: 0x8000_0000,
                s1fmt: 0,
                s1cdmax: 0,
            }],
            pages: alloc::vec![(PhysAddr(0x8000_0000), 3), (PhysAddr(0x8010_0000), 1)],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.encode();
        assert_eq!(b.len(), r.encoded_len());
        assert_eq!(b.len(), 0x40 + 32 * 2 + 96 + 16 * 2);
        assert_eq!(Record::decode(&b), Ok(r.clone()));
        assert!(r.holds_page(PhysAddr(0x8000_2000)));
        assert!(!r.holds_page(PhysAddr(0x8000_3000)));
        assert_eq!(r.page_count(), 4);
        assert_eq!(r.domain(2).map(|d| d.vmid), Some(3));
    }

    /// Every truncation is refused, and every malformed field with its own error at
    /// its own offset.
    #[test]
    fn every_truncation_and_bad_field_is_refused() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Record::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        let m = 0x40 + 64; // first master
        let cases: [(usize, u8, Malformed); 10] = [
            (0x14, 1, Malformed::Reserved { offset: 0x14 }),
            (
                0x44,
                9,
                Malformed::DomainStage {
                    offset: 0x44,
                    value: 9,
                },
            ),
            (
                0x45,
                13,
                Malformed::DomainGranule {
                    offset: 0x45,
                    value: 13,
                },
            ),
            (0x4f, 1, Malformed::Reserved { offset: 0x4f }),
            (
                0x51,
                0x08,
                Malformed::DomainRoot {
                    offset: 0x50,
                    value: 0x8020_0800,
                },
            ),
            (0x40 + 32, 1, Malformed::DomainOrder { offset: 0x60 }),
            (
                m + 4,
                9,
                Malformed::MasterDomain {
                    offset: m + 4,
                    domain: 9,
                },
            ),
            (m + 72, 0x20, Malformed::MasterCdTable { offset: m + 72 }),
            (m + 90, 1, Malformed::Reserved { offset: m + 82 }),
            (
                m + 96 + 16,
                0,
                Malformed::Run {
                    offset: m + 96 + 16,
                },
            ),
        ];
        for (at, val, want) in cases {
            let mut x = b.clone();
            x[at] = val;
            if at == 0x40 + 32 {
                x[at] = 1; // domain 2 becomes 1
            }
            if at == m + 96 + 16 {
                // Second run moves before the first.
                x[at + 3] = 0;
                x[at + 2] = 0;
            }
            assert_eq!(Record::decode(&x), Err(want), "byte {at:#x}");
        }
        let mut x = b;
        x[0x34] = 0xff;
        assert!(matches!(
            Record::decode(&x),
            Err(Malformed::Counts { domains: 0xff, .. })
        ));
    }

    /// Counts claiming 2^32 − 1 entries of each kind are refused from the header
    /// alone (nothing is allocated).
    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = sample().encode();
        b[0x34..0x40].fill(0xff);
        assert!(matches!(Record::decode(&b), Err(Malformed::Counts { .. })));
    }

    #[test]
    fn random_and_mutated_payloads_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = sample().encode();
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] ^= 1 << (next() % 8);
            }
            let n = (next() % (b.len() as u64 + 1)) as usize;
            let _ = Record::decode(&b[..n]);
            if let Ok(r) = Record::decode(&b) {
                assert_eq!(r.encode(), b, "a decoded record re-encodes to its bytes");
            }
        }
    }
}
