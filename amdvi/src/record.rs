//! The AMD-Vi handover record (payload of the KHO client record `iommu-amdvi-v1`).
//!
//! Little-endian, fixed-size entries, every reserved field zero:
//!
//! ```text
//! 0x00 u64 unit MMIO base
//! 0x08 u64 Device Table Base register (base 51:12 | Size 8:0), as it reads
//! 0x10 u64 Control register
//! 0x18 u64 Exclusion Range Base register
//! 0x20 u64 Exclusion Range Limit register (as written: bits 51:12)
//! 0x28 u64 Extended Feature register
//! 0x30 u16 first DeviceID    0x32 u16 last DeviceID (the unit's IVRS range)
//! 0x34 u32 domain count      0x38 u32 device count    0x3c u32 page-run count
//! 0x40 domains, 16 bytes each: u16 DomainID, u8 kind (1 v1, 2 v2), u8 levels (v1:
//!      DTE Mode 1..=6; v2: guest levels 4 or 5), u8 GLX (v2; 0 for v1), 3 bytes
//!      reserved, u64 root (v1: page-table root; v2: GCR3 table root)
//!      devices, 64 bytes each: u16 DeviceID, u16 DomainID, u32 reserved, the DTE
//!      (4 x u64, bit for bit as the old kernel left it), u64 interrupt-remapping
//!      table root and u64 its entry count (both 0 unless DTE.IV = 1; they repeat the
//!      DTE's IntTableRootPtr and 2^IntTabLen and must agree with it), u64 reserved
//!      page runs, 16 bytes each: u64 first page, u64 page count (every page the old
//!      kernel pinned for this unit: device table, page tables, GCR3 tables,
//!      interrupt-remapping tables; ascending, disjoint)
//! ```
//!
//! The reader treats the bytes as untrusted: counts are checked against the payload
//! length before anything is allocated, the length must match exactly, and every
//! field is range-checked; each refusal is a [`Malformed`] naming the payload offset and
//! the [`Field`] that is wrong.
//!
//! Like [`hw`](crate::hw) this is a data layout, compiled without the `driver` feature,
//! so the inspector reads records without the driver.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use iommu_core::{DomainId, PhysAddr};

use crate::hw::dte::{DeviceTableEntry, Glx};
use crate::hw::regs::{devtab_entries, DEV_TAB_BASE};

/// Record family (compatible `iommu-amdvi-v<N>`).
pub const FAMILY: &str = "iommu-amdvi";
/// Version written and read by this code.
pub const VERSION: u32 = 1;
/// The compatible string written.
pub const COMPATIBLE: &str = "iommu-amdvi-v1";

/// The KHO client name of the unit at `base`: `iommu-amdvi-<base in hex>`.
pub fn client_name(base: PhysAddr) -> String {
    alloc::format!("iommu-amdvi-{:x}", base.0)
}

const HEADER: usize = 0x40;
const DOMAIN: usize = 16;
const DEVICE: usize = 64;
const RUN: usize = 16;
const PAGE: u64 = 4096;

/// The translation of a preserved domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainKind {
    /// Host (v1) I/O page tables of `levels` levels (DTE Mode).
    V1 {
        /// Levels, 1..=6.
        levels: u8,
    },
    /// Guest (v2) x86-64 tables reached through a GCR3 table (PASID 0, DTE.GIoV).
    V2 {
        /// Guest page-table levels, 4 or 5.
        levels: u8,
        /// GCR3 table levels.
        glx: Glx,
    },
}

impl DomainKind {
    /// Page-table levels.
    pub fn levels(self) -> u8 {
        match self {
            DomainKind::V1 { levels } | DomainKind::V2 { levels, .. } => levels,
        }
    }
}

/// A preserved domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordDomain {
    /// DomainID (tags the IOTLB).
    pub id: DomainId,
    /// v1 or v2.
    pub kind: DomainKind,
    /// v1: the page-table root; v2: the GCR3 table root.
    pub root: PhysAddr,
}

/// A preserved device: its DeviceID and its device table entry, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordDevice {
    /// DeviceID (PCI requester ID, bus << 8 | devfn).
    pub device_id: u16,
    /// Its domain.
    pub domain: DomainId,
    /// The 256-bit DTE as the old kernel left it.
    pub dte: [u64; 4],
    /// Interrupt-remapping table `(root, entries)` when DTE.IV = 1.
    pub irt: Option<(PhysAddr, u64)>,
}

impl RecordDevice {
    /// The DTE as a typed entry.
    pub fn entry(&self) -> DeviceTableEntry {
        DeviceTableEntry::from_qwords(self.dte)
    }
}

/// Everything the old kernel hands over for one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// MMIO base of the unit.
    pub mmio_base: PhysAddr,
    /// Device Table Base register (base and Size).
    pub dev_tab_base: u64,
    /// Control register.
    pub control: u64,
    /// Exclusion Range Base register.
    pub excl_base: u64,
    /// Exclusion Range Limit register.
    pub excl_limit: u64,
    /// Extended Feature register.
    pub efr: u64,
    /// First DeviceID of the unit.
    pub first_device_id: u16,
    /// Last DeviceID of the unit.
    pub last_device_id: u16,
    /// Domains, by ascending ID.
    pub domains: Vec<RecordDomain>,
    /// Devices, by ascending DeviceID.
    pub devices: Vec<RecordDevice>,
    /// Pinned pages as `(first page, count)` runs.
    pub pages: Vec<(PhysAddr, u64)>,
}

/// The field of the record a [`Malformed`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The payload ends inside the header.
    Header,
    /// The counts do not add up to the payload length.
    Counts,
    /// The Device Table Base register has bits outside base and Size set.
    DevTabBase,
    /// The DeviceID range is empty or beyond the device table's Size.
    DeviceIdRange,
    /// A domain kind is neither 1 (v1) nor 2 (v2).
    DomainKind,
    /// A domain's levels are outside 1..=6 (v1) or 4..=5 (v2).
    DomainLevels,
    /// A v2 domain's GLX is the reserved 3, or a v1 domain's GLX byte is not 0.
    DomainGlx,
    /// A reserved byte of a domain entry is not zero.
    DomainReserved,
    /// A domain root is not 4 KiB aligned or beyond bit 51.
    DomainRoot,
    /// Domain IDs are not strictly ascending, or a DomainID is 0 (reserved).
    DomainId,
    /// DeviceIDs are not strictly ascending, or one lies outside the unit's range.
    DeviceId,
    /// A device's domain is not in the record, or differs from its DTE's DomainID.
    DeviceDomain,
    /// A reserved field of a device entry is not zero.
    DeviceReserved,
    /// The interrupt-remapping fields disagree with the DTE (IV, IntTableRootPtr,
    /// IntTabLen).
    DeviceIrt,
    /// A page run is not page aligned, empty, wraps, or is not ascending and disjoint.
    PageRun,
}

impl Field {
    /// What is wrong, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Field::Header => "payload shorter than the header",
            Field::Counts => "domain, device and page-run counts do not match the payload length",
            Field::DevTabBase => "Device Table Base has bits outside base (51:12) and Size (8:0)",
            Field::DeviceIdRange => "DeviceID range empty or beyond the device table's Size",
            Field::DomainKind => "domain kind is neither 1 (v1) nor 2 (v2)",
            Field::DomainLevels => "domain levels outside 1..=6 (v1) or 4..=5 (v2)",
            Field::DomainGlx => "GLX reserved (3) in a v2 domain or non-zero in a v1 domain",
            Field::DomainReserved => "reserved domain bytes are not zero",
            Field::DomainRoot => "domain root not 4 KiB aligned or beyond bit 51",
            Field::DomainId => "DomainIDs not strictly ascending, or DomainID 0 (reserved)",
            Field::DeviceId => "DeviceIDs not strictly ascending or outside the unit's range",
            Field::DeviceDomain => {
                "device bound to a domain the record does not hold, or not its DTE's DomainID"
            }
            Field::DeviceReserved => "reserved device fields are not zero",
            Field::DeviceIrt => "interrupt-remapping table fields disagree with the DTE",
            Field::PageRun => "page run not page aligned, empty, wrapping, or out of order",
        }
    }
}

/// Why a record payload was refused; `offset` is from the payload start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Offset of the offending field.
    pub offset: usize,
    /// Which field.
    pub field: Field,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload offset {:#x}: {}",
            self.offset,
            self.field.describe()
        )
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

/// Bits of an address field (51:12).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

impl Record {
    /// Bytes of the encoded payload.
    pub fn encoded_len(&self) -> usize {
        HEADER + DOMAIN * self.domains.len() + DEVICE * self.devices.len() + RUN * self.pages.len()
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        put64(&mut v, self.mmio_base.0);
        put64(&mut v, self.dev_tab_base);
        put64(&mut v, self.control);
        put64(&mut v, self.excl_base);
        put64(&mut v, self.excl_limit);
        put64(&mut v, self.efr);
        put16(&mut v, self.first_device_id);
        put16(&mut v, self.last_device_id);
        put32(&mut v, self.domains.len() as u32);
        put32(&mut v, self.devices.len() as u32);
        put32(&mut v, self.pages.len() as u32);
        for d in &self.domains {
            put16(&mut v, d.id.0);
            let (kind, levels, glx) = match d.kind {
                DomainKind::V1 { levels } => (1u8, levels, 0u8),
                DomainKind::V2 { levels, glx } => (2, levels, glx.bits() as u8),
            };
            v.extend_from_slice(&[kind, levels, glx, 0, 0, 0]);
            put64(&mut v, d.root.0);
        }
        for d in &self.devices {
            put16(&mut v, d.device_id);
            put16(&mut v, d.domain.0);
            put32(&mut v, 0);
            for q in d.dte {
                put64(&mut v, q);
            }
            let (root, n) = d.irt.map_or((0, 0), |(r, n)| (r.0, n));
            put64(&mut v, root);
            put64(&mut v, n);
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
        let bad = |offset, field| Malformed { offset, field };
        let u16_at = |o: usize| -> u16 { u16::from_le_bytes([b[o], b[o + 1]]) };
        let u32_at = |o: usize| -> u32 { u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) };
        let u64_at = |o: usize| -> u64 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        if b.len() < HEADER {
            return Err(bad(b.len(), Field::Header));
        }
        let nd = u32_at(0x34) as usize;
        let ndev = u32_at(0x38) as usize;
        let nruns = u32_at(0x3c) as usize;
        // Every index below lies inside `b` once the counts match its length (checked
        // in u128, so no count overflows); nothing is allocated before.
        let want = HEADER as u128
            + DOMAIN as u128 * nd as u128
            + DEVICE as u128 * ndev as u128
            + RUN as u128 * nruns as u128;
        if want != b.len() as u128 {
            return Err(bad(0x34, Field::Counts));
        }
        let dev_tab_base = u64_at(0x08);
        let dtb_mask =
            DEV_TAB_BASE::BASE.mask << DEV_TAB_BASE::BASE.shift | DEV_TAB_BASE::SIZE.mask;
        if dev_tab_base & !dtb_mask != 0 {
            return Err(bad(0x08, Field::DevTabBase));
        }
        let first_device_id = u16_at(0x30);
        let last_device_id = u16_at(0x32);
        let entries = devtab_entries(DEV_TAB_BASE::SIZE.read(dev_tab_base));
        if first_device_id > last_device_id || last_device_id as u32 >= entries {
            return Err(bad(0x30, Field::DeviceIdRange));
        }
        let mut r = Record {
            mmio_base: PhysAddr(u64_at(0)),
            dev_tab_base,
            control: u64_at(0x10),
            excl_base: u64_at(0x18),
            excl_limit: u64_at(0x20),
            efr: u64_at(0x28),
            first_device_id,
            last_device_id,
            domains: Vec::with_capacity(nd),
            devices: Vec::with_capacity(ndev),
            pages: Vec::with_capacity(nruns),
        };
        let mut o = HEADER;
        for _ in 0..nd {
            let id = DomainId(u16_at(o));
            if id.0 == 0 || r.domains.last().is_some_and(|p| p.id >= id) {
                return Err(bad(o, Field::DomainId));
            }
            let levels = b[o + 3];
            let glx = b[o + 4];
            let kind = match b[o + 2] {
                1 => {
                    if !(1..=6).contains(&levels) {
                        return Err(bad(o + 3, Field::DomainLevels));
                    }
                    if glx != 0 {
                        return Err(bad(o + 4, Field::DomainGlx));
                    }
                    DomainKind::V1 { levels }
                }
                2 => {
                    if !(4..=5).contains(&levels) {
                        return Err(bad(o + 3, Field::DomainLevels));
                    }
                    let glx = Glx::from_bits(glx as u64);
                    if glx == Glx::Reserved || b[o + 4] > 3 {
                        return Err(bad(o + 4, Field::DomainGlx));
                    }
                    DomainKind::V2 { levels, glx }
                }
                _ => return Err(bad(o + 2, Field::DomainKind)),
            };
            if b[o + 5..o + 8] != [0, 0, 0] {
                return Err(bad(o + 5, Field::DomainReserved));
            }
            let root = u64_at(o + 8);
            if root & !ADDR != 0 {
                return Err(bad(o + 8, Field::DomainRoot));
            }
            r.domains.push(RecordDomain {
                id,
                kind,
                root: PhysAddr(root),
            });
            o += DOMAIN;
        }
        for _ in 0..ndev {
            let device_id = u16_at(o);
            if device_id < first_device_id
                || device_id > last_device_id
                || r.devices.last().is_some_and(|p| p.device_id >= device_id)
            {
                return Err(bad(o, Field::DeviceId));
            }
            let domain = DomainId(u16_at(o + 2));
            if u32_at(o + 4) != 0 || u64_at(o + 56) != 0 {
                return Err(bad(o + 4, Field::DeviceReserved));
            }
            let dte = [
                u64_at(o + 8),
                u64_at(o + 16),
                u64_at(o + 24),
                u64_at(o + 32),
            ];
            let e = DeviceTableEntry::from_qwords(dte);
            if r.domains.binary_search_by_key(&domain, |d| d.id).is_err()
                || e.domain_id() != domain.0
            {
                return Err(bad(o + 2, Field::DeviceDomain));
            }
            let (root, n) = (u64_at(o + 40), u64_at(o + 48));
            let irt = if e.int_valid() {
                if root != e.int_table_root() || n != 1u64 << e.int_tab_len() {
                    return Err(bad(o + 40, Field::DeviceIrt));
                }
                Some((PhysAddr(root), n))
            } else {
                if root != 0 || n != 0 {
                    return Err(bad(o + 40, Field::DeviceIrt));
                }
                None
            };
            r.devices.push(RecordDevice {
                device_id,
                domain,
                dte,
                irt,
            });
            o += DEVICE;
        }
        let mut prev_end = 0u64;
        for _ in 0..nruns {
            let p = u64_at(o);
            let n = u64_at(o + 8);
            let end = n.checked_mul(PAGE).and_then(|l| p.checked_add(l));
            match end {
                Some(end) if p % PAGE == 0 && n != 0 && p >= prev_end => prev_end = end,
                _ => return Err(bad(o, Field::PageRun)),
            }
            r.pages.push((PhysAddr(p), n));
            o += RUN;
        }
        Ok(r)
    }

    /// Whether `page` lies in one of the record's page runs.
    pub fn holds_page(&self, page: PhysAddr) -> bool {
        let i = self.pages.partition_point(|&(p, _)| p <= page);
        i > 0 && {
            let (p, n) = self.pages[i - 1];
            page.0 - p.0 < n * PAGE
        }
    }

    /// Total pages in the runs.
    pub fn page_count(&self) -> u64 {
        self.pages.iter().map(|&(_, n)| n).sum()
    }

    /// Device table base address (register bits 51:12).
    pub fn dev_tab_addr(&self) -> PhysAddr {
        PhysAddr(self.dev_tab_base & ADDR)
    }

    /// Pages of the device table: Size + 1.
    pub fn dev_tab_pages(&self) -> u64 {
        DEV_TAB_BASE::SIZE.read(self.dev_tab_base) + 1
    }

    /// The domain `id`.
    pub fn domain(&self, id: DomainId) -> Option<&RecordDomain> {
        self.domains
            .binary_search_by_key(&id, |d| d.id)
            .ok()
            .map(|i| &self.domains[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::dte::{GuestPagingMode, IntCtl};

    pub(super) fn sample() -> Record {
        let v1 = DeviceTableEntry::host(0x20_0000, 4, 1, true, true);
        let mut v2 = DeviceTableEntry::blocking(2);
        v2.set_guest(0x30_0000, Glx::One, true, GuestPagingMode::Level4);
        v2.set_int_remap(0x40_0000, 9, IntCtl::Remap);
        Record {
            mmio_base: PhysAddr(0xfeb8_0000),
            dev_tab_base: 0x100_0000 | 1,
            control: 0x1005,
            excl_base: 0,
            excl_limit: 0,
            efr: 0x50,
            first_device_id: 0,
            last_device_id: 0xff,
            domains: alloc::vec![
                RecordDomain {
                    id: DomainId(1),
                    kind: DomainKind::V1 { levels: 4 },
                    root: PhysAddr(0x20_0000),
                },
                RecordDomain {
                    id: DomainId(2),
                    kind: DomainKind::V2 {
                        levels: 4,
                        glx: Glx::One,
                    },
                    root: PhysAddr(0x30_0000),
                },
            ],
            devices: alloc::vec![
                RecordDevice {
                    device_id: 0x08,
                    domain: DomainId(1),
                    dte: v1.qwords(),
                    irt: None,
                },
                RecordDevice {
                    device_id: 0x10,
                    domain: DomainId(2),
                    dte: v2.qwords(),
                    irt: Some((PhysAddr(0x40_0000), 512)),
                },
            ],
            pages: alloc::vec![(PhysAddr(0x100_0000), 2), (PhysAddr(0x200_0000), 1)],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.encode();
        assert_eq!(b.len(), r.encoded_len());
        assert_eq!(b.len(), 0x40 + 16 * 2 + 64 * 2 + 16 * 2);
        assert_eq!(Record::decode(&b), Ok(r.clone()));
        assert!(r.holds_page(PhysAddr(0x100_1000)));
        assert!(!r.holds_page(PhysAddr(0x100_2000)));
        assert_eq!(r.page_count(), 3);
        assert_eq!(r.dev_tab_pages(), 2);
        assert_eq!(r.dev_tab_addr(), PhysAddr(0x100_0000));
    }

    fn field_of(b: &[u8]) -> (usize, Field) {
        let e = Record::decode(b).unwrap_err();
        (e.offset, e.field)
    }

    #[test]
    fn every_truncation_and_bad_field_is_refused() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Record::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        let dom = 0x40;
        let dev = 0x40 + 32;
        let run = dev + 128;
        let cases: [(usize, u8, (usize, Field)); 13] = [
            (0x0f, 0x80, (0x08, Field::DevTabBase)),
            (0x33, 0x80, (0x30, Field::DeviceIdRange)),
            (dom + 2, 9, (dom + 2, Field::DomainKind)),
            (dom + 3, 4, (dom + 3, Field::DomainLevels)),
            (dom + 4, 1, (dom + 4, Field::DomainGlx)),
            (dom + 16 + 4, 3, (dom + 16 + 4, Field::DomainGlx)),
            (dom + 6, 1, (dom + 5, Field::DomainReserved)),
            (dom + 8, 1, (dom + 8, Field::DomainRoot)),
            (dom + 16, 3, (dom + 16, Field::DomainId)),
            (dev, 0x10, (dev + 64, Field::DeviceId)),
            (dev + 2, 2, (dev + 2, Field::DeviceDomain)),
            (dev + 64 + 40, 0x40, (dev + 64 + 40, Field::DeviceIrt)),
            (run + 1, 1, (run, Field::PageRun)),
        ];
        for (at, x, want) in cases {
            let mut m = b.clone();
            m[at] ^= x;
            assert_eq!(field_of(&m), want, "byte {at:#x} ^ {x:#x}");
        }
        let mut m = b.clone();
        m[dev + 4] = 1;
        assert_eq!(field_of(&m), (dev + 4, Field::DeviceReserved));
        let mut m = b.clone();
        m[0x34] = 0xff;
        assert_eq!(field_of(&m), (0x34, Field::Counts));
        // Domain 0 is reserved.
        let mut m = b.clone();
        m[dom] = 0;
        assert_eq!(field_of(&m), (dom, Field::DomainId));
        // A second run before the first.
        let mut m = b.clone();
        m[run + 16 + 3] = 0;
        assert_eq!(field_of(&m), (run + 16, Field::PageRun));
        // A device outside the unit's range.
        let mut r = sample();
        r.last_device_id = 0x0f;
        assert_eq!(field_of(&r.encode()), (dev + 64, Field::DeviceId));
        // IV = 0 but an interrupt table named.
        let mut r = sample();
        r.devices[0].irt = Some((PhysAddr(0x1000), 1));
        assert_eq!(field_of(&r.encode()), (dev + 40, Field::DeviceIrt));
    }

    /// Counts claiming more entries than the payload holds are refused before anything
    /// is allocated (a 4-billion-entry claim in a 64-byte payload).
    #[test]
    fn huge_counts_are_refused_without_allocating() {
        let mut b = sample().encode();
        b.truncate(0x40);
        b[0x34..0x40].copy_from_slice(&[0xff; 12]);
        assert_eq!(field_of(&b), (0x34, Field::Counts));
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
            let _ = Record::decode(&b);
            let r: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
            let _ = Record::decode(&r);
        }
    }
}
