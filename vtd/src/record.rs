//! The VT-d handover record (payload of the KHO client record `iommu-vtd-v1`).
//!
//! Little-endian, fixed-size entries, every reserved field zero:
//!
//! ```text
//! 0x00 u64 unit MMIO base
//! 0x08 u64 RTADDR (root table address and TTM, as the register reads)
//! 0x10 u64 CAP            0x18 u64 ECAP
//! 0x20 u32 mode (0 legacy, 1 scalable)
//! 0x24 u32 host address width
//! 0x28 u32 domain count   0x2c u32 device count
//! 0x30 u32 page-run count 0x34 u32 reserved
//! 0x38 domains, 16 bytes each: u16 ID, u8 kind (1 second stage, 2 first stage),
//!      u8 levels, u32 reserved, u64 root table
//!      devices, 16 bytes each: u16 segment, u8 bus, u8 devfn, u32 PASID (RID_PASID,
//!      or 0xffff_ffff in legacy mode), u16 domain ID, u16 reserved, u32 reserved
//!      page runs, 16 bytes each: u64 first page, u64 page count (the table pages the
//!      old kernel pinned for this unit, ascending, disjoint)
//! ```
//!
//! The reader treats the bytes as untrusted: counts are checked against the length
//! before anything is allocated, the length must match exactly, and every field is
//! range-checked.
//!
//! The record is a data layout, like [`hw`](crate::hw): it is compiled without the
//! `driver` feature, so the inspector reads records without the driver. It also holds
//! the two encodings it stores and the driver uses, [`Mode`] and [`DomainKind`].

use alloc::string::String;
use alloc::vec::Vec;
use iommu_core::{DomainId, Pasid, PhysAddr, RequesterId};

use crate::hw::regs::Ttm;

/// Record family (compatible `iommu-vtd-v<N>`).
pub const FAMILY: &str = "iommu-vtd";
/// Version written and read by this code.
pub const VERSION: u32 = 1;
/// The compatible string written.
pub const COMPATIBLE: &str = "iommu-vtd-v1";

/// Translation-table mode of a unit (RTADDR.TTM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Legacy root and context entries, second-stage tables only.
    Legacy,
    /// Scalable-mode root and context entries, PASID directory and tables.
    Scalable,
}

impl Mode {
    /// The RTADDR.TTM encoding.
    pub fn ttm(self) -> Ttm {
        match self {
            Mode::Legacy => Ttm::Legacy,
            Mode::Scalable => Ttm::Scalable,
        }
    }
}

/// The page-table format of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainKind {
    /// Second-stage tables (legacy context entries or PASID-entry PGTT = 2).
    SecondStage,
    /// First-stage tables, x86-64 paging format (scalable mode, PGTT = 1).
    FirstStage,
}

/// The KHO client name of the unit at `base`: `iommu-vtd-<base in hex>`.
pub fn client_name(base: PhysAddr) -> String {
    alloc::format!("iommu-vtd-{:x}", base.0)
}

const HEADER: usize = 0x38;
const ENTRY: usize = 16;
const NO_PASID: u32 = 0xffff_ffff;

/// A preserved domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordDomain {
    /// Domain ID.
    pub id: DomainId,
    /// Table format.
    pub kind: DomainKind,
    /// Levels.
    pub levels: u8,
    /// Root table.
    pub root: PhysAddr,
}

/// A preserved device binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordDevice {
    /// Segment/bus/devfn.
    pub rid: RequesterId,
    /// RID_PASID (scalable mode).
    pub pasid: Option<Pasid>,
    /// Domain.
    pub domain: DomainId,
}

/// Everything the old kernel hands over for one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// MMIO base of the unit.
    pub mmio_base: PhysAddr,
    /// RTADDR as programmed.
    pub rtaddr: u64,
    /// CAP.
    pub cap: u64,
    /// ECAP.
    pub ecap: u64,
    /// Mode.
    pub mode: Mode,
    /// Host address width.
    pub haw: u32,
    /// Domains, by ID.
    pub domains: Vec<RecordDomain>,
    /// Devices, by requester ID.
    pub devices: Vec<RecordDevice>,
    /// Pinned table pages as `(first page, count)` runs.
    pub pages: Vec<(PhysAddr, u64)>,
}

/// Why a record payload was refused; `offset` is from the payload start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Offset of the offending field.
    pub offset: usize,
    /// What is wrong.
    pub what: &'static str,
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

impl Record {
    /// Bytes of the encoded payload.
    pub fn encoded_len(&self) -> usize {
        HEADER + ENTRY * (self.domains.len() + self.devices.len() + self.pages.len())
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        put64(&mut v, self.mmio_base.0);
        put64(&mut v, self.rtaddr);
        put64(&mut v, self.cap);
        put64(&mut v, self.ecap);
        put32(&mut v, matches!(self.mode, Mode::Scalable) as u32);
        put32(&mut v, self.haw);
        put32(&mut v, self.domains.len() as u32);
        put32(&mut v, self.devices.len() as u32);
        put32(&mut v, self.pages.len() as u32);
        put32(&mut v, 0);
        for d in &self.domains {
            put16(&mut v, d.id.0);
            v.push(match d.kind {
                DomainKind::SecondStage => 1,
                DomainKind::FirstStage => 2,
            });
            v.push(d.levels);
            put32(&mut v, 0);
            put64(&mut v, d.root.0);
        }
        for d in &self.devices {
            put16(&mut v, d.rid.segment);
            v.push(d.rid.bus);
            v.push(d.rid.devfn);
            put32(&mut v, d.pasid.map_or(NO_PASID, |p| p.0));
            put16(&mut v, d.domain.0);
            put16(&mut v, 0);
            put32(&mut v, 0);
        }
        for &(p, n) in &self.pages {
            put64(&mut v, p.0);
            put64(&mut v, n);
        }
        v
    }

    /// Decodes and checks a payload.
    pub fn decode(b: &[u8]) -> Result<Record, Malformed> {
        let bad = |offset, what| Malformed { offset, what };
        let u16_at = |o: usize| -> Result<u16, Malformed> {
            b.get(o..o + 2)
                .map(|s| u16::from_le_bytes([s[0], s[1]]))
                .ok_or(bad(o, "truncated"))
        };
        let u32_at = |o: usize| -> Result<u32, Malformed> {
            b.get(o..o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or(bad(o, "truncated"))
        };
        let u64_at = |o: usize| -> Result<u64, Malformed> {
            let s = b.get(o..o + 8).ok_or(bad(o, "truncated"))?;
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            Ok(u64::from_le_bytes(w))
        };
        if b.len() < HEADER {
            return Err(bad(b.len(), "payload shorter than the header"));
        }
        let mode = match u32_at(0x20)? {
            0 => Mode::Legacy,
            1 => Mode::Scalable,
            _ => return Err(bad(0x20, "mode is neither 0 (legacy) nor 1 (scalable)")),
        };
        let haw = u32_at(0x24)?;
        if !(12..=64).contains(&haw) {
            return Err(bad(0x24, "host address width outside 12..=64"));
        }
        let nd = u32_at(0x28)? as usize;
        let ndev = u32_at(0x2c)? as usize;
        let nruns = u32_at(0x30)? as usize;
        if u32_at(0x34)? != 0 {
            return Err(bad(0x34, "reserved header field is not zero"));
        }
        let body = b.len() - HEADER;
        let total = nd.checked_add(ndev).and_then(|x| x.checked_add(nruns));
        if total.and_then(|t| t.checked_mul(ENTRY)) != Some(body) {
            return Err(bad(0x28, "counts do not match the payload length"));
        }
        let mut r = Record {
            mmio_base: PhysAddr(u64_at(0)?),
            rtaddr: u64_at(8)?,
            cap: u64_at(0x10)?,
            ecap: u64_at(0x18)?,
            mode,
            haw,
            domains: Vec::with_capacity(nd),
            devices: Vec::with_capacity(ndev),
            pages: Vec::with_capacity(nruns),
        };
        let mut o = HEADER;
        for _ in 0..nd {
            let id = DomainId(u16_at(o)?);
            let kind = match b[o + 2] {
                1 => DomainKind::SecondStage,
                2 => DomainKind::FirstStage,
                _ => return Err(bad(o + 2, "domain kind is neither 1 nor 2")),
            };
            let levels = b[o + 3];
            if !(3..=5).contains(&levels) {
                return Err(bad(o + 3, "domain levels outside 3..=5"));
            }
            if u32_at(o + 4)? != 0 {
                return Err(bad(o + 4, "reserved domain field is not zero"));
            }
            let root = PhysAddr(u64_at(o + 8)?);
            if r.domains.last().is_some_and(|p: &RecordDomain| p.id >= id) {
                return Err(bad(o, "domain IDs not strictly ascending"));
            }
            r.domains.push(RecordDomain {
                id,
                kind,
                levels,
                root,
            });
            o += ENTRY;
        }
        for _ in 0..ndev {
            let rid = RequesterId {
                segment: u16_at(o)?,
                bus: b[o + 2],
                devfn: b[o + 3],
            };
            let pasid = match u32_at(o + 4)? {
                NO_PASID => None,
                p if p < 1 << 20 => Some(Pasid(p)),
                _ => return Err(bad(o + 4, "PASID wider than 20 bits")),
            };
            let domain = DomainId(u16_at(o + 8)?);
            if u16_at(o + 10)? != 0 || u32_at(o + 12)? != 0 {
                return Err(bad(o + 10, "reserved device field is not zero"));
            }
            if r.devices
                .last()
                .is_some_and(|p: &RecordDevice| p.rid >= rid)
            {
                return Err(bad(o, "devices not strictly ascending"));
            }
            if r.domains.binary_search_by_key(&domain, |d| d.id).is_err() {
                return Err(bad(
                    o + 8,
                    "device bound to a domain the record does not hold",
                ));
            }
            if (mode == Mode::Scalable) != pasid.is_some() {
                return Err(bad(
                    o + 4,
                    "PASID present in legacy mode or absent in scalable mode",
                ));
            }
            r.devices.push(RecordDevice { rid, pasid, domain });
            o += ENTRY;
        }
        let mut prev_end = 0u64;
        for _ in 0..nruns {
            let p = u64_at(o)?;
            let n = u64_at(o + 8)?;
            if p % 4096 != 0 || n == 0 {
                return Err(bad(o, "page run not page aligned or empty"));
            }
            let end = n
                .checked_mul(4096)
                .and_then(|l| p.checked_add(l))
                .ok_or(bad(o + 8, "page run wraps"))?;
            if p < prev_end {
                return Err(bad(o, "page runs not ascending and disjoint"));
            }
            prev_end = end;
            r.pages.push((PhysAddr(p), n));
            o += ENTRY;
        }
        Ok(r)
    }

    /// Whether `page` lies in one of the record's page runs.
    pub fn holds_page(&self, page: PhysAddr) -> bool {
        let i = self.pages.partition_point(|&(p, _)| p <= page);
        i > 0 && {
            let (p, n) = self.pages[i - 1];
            page.0 - p.0 < n * 4096
        }
    }

    /// Total pages in the runs.
    pub fn page_count(&self) -> u64 {
        self.pages.iter().map(|&(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            mmio_base: PhysAddr(0xfed9_0000),
            rtaddr: 0x100_0400,
            cap: 0x1234,
            ecap: 0x5678,
            mode: Mode::Scalable,
            haw: 48,
            domains: alloc::vec![
                RecordDomain {
                    id: DomainId(1),
                    kind: DomainKind::SecondStage,
                    levels: 4,
                    root: PhysAddr(0x20_0000),
                },
                RecordDomain {
                    id: DomainId(2),
                    kind: DomainKind::FirstStage,
                    levels: 4,
                    root: PhysAddr(0x30_0000),
                },
            ],
            devices: alloc::vec![RecordDevice {
                rid: RequesterId::new(0, 3, 0, 0),
                pasid: Some(Pasid(0)),
                domain: DomainId(2),
            }],
            pages: alloc::vec![(PhysAddr(0x100_0000), 3), (PhysAddr(0x200_0000), 1)],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.encode();
        assert_eq!(b.len(), r.encoded_len());
        assert_eq!(b.len(), 0x38 + 16 * 5);
        assert_eq!(Record::decode(&b), Ok(r.clone()));
        assert!(r.holds_page(PhysAddr(0x100_2000)));
        assert!(!r.holds_page(PhysAddr(0x100_3000)));
        assert!(!r.holds_page(PhysAddr(0xff_f000)));
        assert_eq!(r.page_count(), 4);
    }

    #[test]
    fn every_truncation_and_bad_field_is_refused() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Record::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        let mut x = b.clone();
        x[0x20] = 2;
        assert_eq!(Record::decode(&x).unwrap_err().offset, 0x20);
        let mut x = b.clone();
        x[0x38 + 2] = 9; // domain kind
        assert_eq!(Record::decode(&x).unwrap_err().offset, 0x3a);
        let mut x = b.clone();
        x[0x38 + 16 + 16 + 8] = 7; // device bound to domain 7
        assert_eq!(
            Record::decode(&x).unwrap_err().what,
            "device bound to a domain the record does not hold"
        );
        let mut x = b.clone();
        x[0x28] = 0xff; // domain count
        assert_eq!(Record::decode(&x).unwrap_err().offset, 0x28);
        let mut x = b;
        x[0x38 + 48 + 16] = 0; // second run moves before the first
        x[0x38 + 48 + 16 + 3] = 0;
        assert!(Record::decode(&x).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    #[test]
    fn random_and_mutated_payloads_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = tests_sample().encode();
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] ^= 1 << (next() % 8);
            }
            let n = (next() % (b.len() as u64 + 1)) as usize;
            let _ = Record::decode(&b[..n]);
            let _ = Record::decode(&b);
            let r: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
            let _ = Record::decode(&r);
        }
    }

    fn tests_sample() -> Record {
        Record {
            mmio_base: PhysAddr(0xfed9_0000),
            rtaddr: 0x100_0000,
            cap: 1,
            ecap: 2,
            mode: Mode::Legacy,
            haw: 48,
            domains: alloc::vec![RecordDomain {
                id: DomainId(3),
                kind: DomainKind::SecondStage,
                levels: 4,
                root: PhysAddr(0x20_0000),
            }],
            devices: alloc::vec![RecordDevice {
                rid: RequesterId::new(0, 1, 2, 3),
                pasid: None,
                domain: DomainId(3),
            }],
            pages: alloc::vec![(PhysAddr(0x100_0000), 2)],
        }
    }
}
