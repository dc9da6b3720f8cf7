//! KHO model: FDT writer/reader, radix-tree memory map, versioned records, the handover
//! round trip, every corruption's specific error, all-or-nothing writing, and fuzz-ish
//! property tests (random bytes and bit flips never panic).

use iommu_core::kho::fdt::{
    self, FdtError, FdtWriteError, FdtWriter, NameError, FDT_BEGIN_NODE, FDT_END, FDT_END_NODE,
    FDT_MAGIC, FDT_NOP, FDT_PROP,
};
use iommu_core::kho::radix::{self, RadixError};
use iommu_core::kho::record::{
    self, crc32c, decode_record, encode_record, parse_compatible, read_record, CompatibleError,
    RecordError, Supported, MAX_RECORD_PAYLOAD, RECORD_HEADER_SIZE,
};
use iommu_core::kho::{
    read_client_record, read_handover, read_preserved, read_preserved_in, write_handover, Client,
    FrameAllocator, KhoError, KHO_FDT_COMPATIBLE, MAX_BLOB_SIZE, PROP_PRESERVED_DATA,
    PROP_PRESERVED_MEMORY_MAP,
};
use iommu_core::pageset::PageSet;
use iommu_core::{MemError, PhysAddr, PhysMem};
use proptest::prelude::*;
use std::collections::BTreeMap;

// ---- test memory and allocators -------------------------------------------------------

/// Sparse memory: a page exists once written; reading a page never written is poison.
/// Optionally refuses the n-th write (counting from 0) and every write after it.
#[derive(Clone, Default)]
struct Mem {
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
    writes: usize,
    fail_from_write: Option<usize>,
}

impl PhysMem for Mem {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let end = addr
            .0
            .checked_add(buf.len() as u64)
            .ok_or(MemError::Overflow {
                addr,
                len: buf.len() as u64,
            })?;
        let mut a = addr.0;
        while a < end {
            let page = self
                .pages
                .get(&(a >> 12))
                .ok_or(MemError::Poisoned { addr: PhysAddr(a) })?;
            let off = (a & 0xfff) as usize;
            let n = ((end - a) as usize).min(4096 - off);
            let b = (a - addr.0) as usize;
            buf[b..b + n].copy_from_slice(&page[off..off + n]);
            a += n as u64;
        }
        Ok(())
    }

    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        if self.fail_from_write.is_some_and(|n| self.writes >= n) {
            return Err(MemError::Unbacked { addr });
        }
        self.writes += 1;
        let end = addr
            .0
            .checked_add(data.len() as u64)
            .ok_or(MemError::Overflow {
                addr,
                len: data.len() as u64,
            })?;
        let mut a = addr.0;
        while a < end {
            let page = self
                .pages
                .entry(a >> 12)
                .or_insert_with(|| Box::new([0; 4096]));
            let off = (a & 0xfff) as usize;
            let n = ((end - a) as usize).min(4096 - off);
            let b = (a - addr.0) as usize;
            page[off..off + n].copy_from_slice(&data[b..b + n]);
            a += n as u64;
        }
        Ok(())
    }
}

/// Hands out consecutive pages from `next`.
struct Bump {
    next: u64,
    calls: usize,
}

impl FrameAllocator for Bump {
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
        self.calls += 1;
        let a = self.next;
        self.next += pages as u64 * 4096;
        Some(PhysAddr(a))
    }
}

/// Always returns the same answer.
struct Fixed(Option<PhysAddr>);

impl FrameAllocator for Fixed {
    fn alloc_contiguous(&mut self, _pages: usize) -> Option<PhysAddr> {
        self.0
    }
}

const VTD_V1: Supported<'static> = Supported {
    family: "iommu-vtd",
    oldest: 1,
    newest: 1,
};

fn sample_set() -> PageSet {
    let mut s = PageSet::new();
    s.insert(PhysAddr(0x1000), 0).unwrap();
    s.insert(PhysAddr(0x20_0000), 9).unwrap();
    s.insert_range(PhysAddr(0x1234_5000), 37).unwrap();
    s.insert(PhysAddr(0x4000_0000), 18).unwrap();
    s.insert(PhysAddr(0x0000_7fff_ffff_f000), 0).unwrap();
    s
}

fn sample_clients() -> Vec<(String, String, Vec<u8>)> {
    vec![
        (
            "iommu-vtd".into(),
            "iommu-vtd-v1".into(),
            (0..5000u32).map(|i| (i * 7) as u8).collect(),
        ),
        (
            "iommufd".into(),
            "iommufd-session-v3".into(),
            b"tokens".to_vec(),
        ),
    ]
}

fn as_clients(v: &[(String, String, Vec<u8>)]) -> Vec<Client<'_>> {
    v.iter()
        .map(|(n, c, p)| Client {
            name: n,
            compatible: c,
            payload: p,
        })
        .collect()
}

// ---- CRC32C ---------------------------------------------------------------------------

#[test]
fn crc32c_known_answers() {
    // Standard check value of CRC-32C (Castagnoli) for "123456789".
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    // RFC 3720 (iSCSI) appendix B.4 CRC examples.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    let inc: Vec<u8> = (0u8..32).collect();
    assert_eq!(crc32c(&inc), 0x46DD_794E);
    let dec: Vec<u8> = (0u8..32).rev().collect();
    assert_eq!(crc32c(&dec), 0x113F_DB5C);
    assert_eq!(crc32c(b""), 0);
    // Incremental equals one-shot.
    let s = record::crc32c_update(record::crc32c_update(0xffff_ffff, b"1234"), b"56789");
    assert_eq!(s ^ 0xffff_ffff, 0xE306_9283);
}

// ---- records --------------------------------------------------------------------------

#[test]
fn compatible_strings() {
    assert_eq!(parse_compatible("iommu-vtd-v1"), Ok(("iommu-vtd", 1)));
    assert_eq!(parse_compatible("a-v42"), Ok(("a", 42)));
    assert_eq!(
        parse_compatible("iommu-vtd"),
        Err(CompatibleError::NoVersion)
    );
    assert_eq!(parse_compatible("-v1"), Err(CompatibleError::NoVersion));
    assert_eq!(parse_compatible("x-v01"), Err(CompatibleError::NoVersion));
    assert_eq!(parse_compatible("x-v"), Err(CompatibleError::NoVersion));
    assert_eq!(
        parse_compatible("x-v99999999999"),
        Err(CompatibleError::NoVersion)
    );
    assert_eq!(
        parse_compatible("X-v1"),
        Err(CompatibleError::BadChar(b'X'))
    );
    assert_eq!(
        parse_compatible(&format!("{}-v1", "a".repeat(40))),
        Err(CompatibleError::TooLong)
    );
    let s = Supported {
        family: "iommu-vtd",
        oldest: 1,
        newest: 3,
    };
    assert_eq!(s.describe(), "iommu-vtd-v1..iommu-vtd-v3");
    assert_eq!(VTD_V1.describe(), "iommu-vtd-v1");
}

#[test]
fn record_layout_and_round_trip() {
    let payload = b"domain table";
    let r = encode_record("iommu-vtd-v1", payload).unwrap();
    assert_eq!(r.len(), RECORD_HEADER_SIZE + payload.len());
    assert_eq!(&r[..8], b"KHOIOREC");
    assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), 0x40);
    assert_eq!(
        u64::from_le_bytes(r[16..24].try_into().unwrap()),
        payload.len() as u64
    );
    assert_eq!(&r[24..36], b"iommu-vtd-v1");
    assert!(r[36..64].iter().all(|&b| b == 0));
    // The CRC covers the header with the CRC field zeroed, then the payload.
    let mut z = r.clone();
    z[12..16].fill(0);
    assert_eq!(
        u32::from_le_bytes(r[12..16].try_into().unwrap()),
        crc32c(&z)
    );

    let rec = decode_record(&r, PhysAddr(0x5000), &VTD_V1).unwrap();
    assert_eq!(rec.compatible, "iommu-vtd-v1");
    assert_eq!(rec.version, 1);
    assert_eq!(rec.payload, payload);

    let mut mem = Mem::default();
    mem.write(PhysAddr(0x7000), &r).unwrap();
    assert_eq!(read_record(&mem, PhysAddr(0x7000), &VTD_V1).unwrap(), rec);
    // Empty payload.
    let e = encode_record("iommu-vtd-v1", b"").unwrap();
    assert_eq!(
        decode_record(&e, PhysAddr(0), &VTD_V1).unwrap().payload,
        b""
    );
}

/// Re-seals a modified record with a correct CRC.
fn reseal(mut r: Vec<u8>) -> Vec<u8> {
    r[12..16].fill(0);
    let c = crc32c(&r);
    r[12..16].copy_from_slice(&c.to_le_bytes());
    r
}

#[test]
fn record_corruptions_each_have_their_error() {
    let pa = PhysAddr(0x9000);
    let good = encode_record("iommu-vtd-v1", b"0123456789abcdef").unwrap();
    let dec = |b: &[u8]| decode_record(b, pa, &VTD_V1);

    let mut b = good.clone();
    b[0] ^= 0x20;
    assert_eq!(
        dec(&b),
        Err(RecordError::Magic {
            pa,
            found: *b"kHOIOREC"
        })
    );

    let mut b = good.clone();
    b[8] = 0x48;
    assert_eq!(dec(&b), Err(RecordError::HeaderSize { pa, found: 0x48 }));

    let mut b = good.clone();
    b[16..24].copy_from_slice(&(MAX_RECORD_PAYLOAD + 1).to_le_bytes());
    assert_eq!(
        dec(&b),
        Err(RecordError::Length {
            pa,
            len: MAX_RECORD_PAYLOAD + 1,
            max: MAX_RECORD_PAYLOAD
        })
    );

    let mut b = good.clone();
    b[16..24].copy_from_slice(&100u64.to_le_bytes());
    assert_eq!(
        dec(&b),
        Err(RecordError::Truncated {
            pa,
            need: 164,
            have: 80
        })
    );
    assert_eq!(
        dec(&good[..63]),
        Err(RecordError::Truncated {
            pa,
            need: 64,
            have: 63
        })
    );

    let stored = u32::from_le_bytes(good[12..16].try_into().unwrap());
    let mut b = good.clone();
    b[70] ^= 1;
    let computed = crc32c(&{
        let mut z = b.clone();
        z[12..16].fill(0);
        z
    });
    assert_eq!(
        dec(&b),
        Err(RecordError::Checksum {
            pa,
            stored,
            computed
        })
    );
    // A flip in the compatible string is caught by the checksum, not taken as a version.
    let mut b = good.clone();
    b[24 + 11] = b'2';
    assert!(matches!(dec(&b), Err(RecordError::Checksum { .. })));

    // Newer version, correctly sealed: refused, naming both.
    let mut b = good.clone();
    b[24 + 11] = b'2';
    assert_eq!(
        dec(&reseal(b)),
        Err(RecordError::Version {
            pa,
            found: "iommu-vtd-v2".into(),
            supported: "iommu-vtd-v1".into()
        })
    );
    let newer = encode_record("iommu-vtd-v7", b"x").unwrap();
    let e = dec(&newer).unwrap_err();
    assert_eq!(
        e.to_string(),
        "record at 0x9000 has version \"iommu-vtd-v7\", this reader supports \"iommu-vtd-v1\""
    );
    // Older than the oldest supported.
    let v2_3 = Supported {
        family: "iommu-vtd",
        oldest: 2,
        newest: 3,
    };
    assert_eq!(
        decode_record(&good, pa, &v2_3),
        Err(RecordError::Version {
            pa,
            found: "iommu-vtd-v1".into(),
            supported: "iommu-vtd-v2..iommu-vtd-v3".into()
        })
    );
    // Another family.
    let amd = encode_record("iommu-amdvi-v1", b"x").unwrap();
    assert_eq!(
        dec(&amd),
        Err(RecordError::Family {
            pa,
            found: "iommu-amdvi-v1".into(),
            supported: "iommu-vtd-v1".into()
        })
    );
    // Malformed compatible field, correctly sealed.
    let mut b = good.clone();
    b[24..64].fill(b'a');
    assert_eq!(
        dec(&reseal(b)),
        Err(RecordError::BadCompatible {
            pa,
            reason: CompatibleError::Unterminated
        })
    );
    let mut b = good.clone();
    b[63] = 1;
    assert_eq!(
        dec(&reseal(b)),
        Err(RecordError::BadCompatible {
            pa,
            reason: CompatibleError::DirtyPadding
        })
    );
    let mut b = good.clone();
    b[24..40].copy_from_slice(b"iommu-vtd-v1\0\0\0\0");
    b[24 + 9] = 0xc3;
    assert_eq!(
        dec(&reseal(b)),
        Err(RecordError::BadCompatible {
            pa,
            reason: CompatibleError::BadChar(0xc3)
        })
    );

    // Writer side.
    assert_eq!(
        encode_record("iommu-vtd", b""),
        Err(RecordError::BadCompatible {
            pa: PhysAddr(0),
            reason: CompatibleError::NoVersion
        })
    );

    // From memory: unbacked payload.
    let mut mem = Mem::default();
    let mut b = good.clone();
    b[16..24].copy_from_slice(&0x2000u64.to_le_bytes());
    mem.write(PhysAddr(0x9000), &b).unwrap();
    assert_eq!(
        read_record(&mem, pa, &VTD_V1),
        Err(RecordError::Mem {
            pa,
            err: MemError::Poisoned {
                addr: PhysAddr(0xa000)
            }
        })
    );
    // A record at the top of the address space whose length would wrap.
    let top = PhysAddr(0xffff_ffff_ffff_f000);
    let mut b = good.clone();
    b[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
    mem.write(top, &b[..64]).unwrap();
    assert!(matches!(
        read_record(&mem, top, &VTD_V1),
        Err(RecordError::Length { .. })
    ));
}

// ---- FDT ------------------------------------------------------------------------------

fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// Structure-block helpers for hand-made (possibly malformed) blobs.
fn tok_begin(name: &str) -> Vec<u8> {
    let mut v = be(FDT_BEGIN_NODE).to_vec();
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}
fn tok_prop(nameoff: u32, value: &[u8]) -> Vec<u8> {
    let mut v = be(FDT_PROP).to_vec();
    v.extend_from_slice(&be(value.len() as u32));
    v.extend_from_slice(&be(nameoff));
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// A blob with the given structure and strings blocks and a consistent header.
fn raw_fdt(structure: &[u8], strings: &[u8]) -> Vec<u8> {
    let off_struct = 40 + 16;
    let off_strings = off_struct + structure.len();
    let total = off_strings + strings.len();
    let mut v = Vec::new();
    for w in [
        FDT_MAGIC,
        total as u32,
        off_struct as u32,
        off_strings as u32,
        40,
        17,
        16,
        0,
        strings.len() as u32,
        structure.len() as u32,
    ] {
        v.extend_from_slice(&be(w));
    }
    v.extend_from_slice(&[0; 16]);
    v.extend_from_slice(structure);
    v.extend_from_slice(strings);
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn fdt_writer_layout_known_answers() {
    let mut w = FdtWriter::new();
    w.begin_node("").unwrap();
    w.property_string("compatible", "kho-v2").unwrap();
    w.begin_node("c").unwrap();
    w.property("compatible", &[1, 2, 3]).unwrap();
    w.end_node().unwrap();
    w.end_node().unwrap();
    w.add_reservation(0x1000, 0x2000);
    let b = w.finish(3).unwrap();
    // Header (Devicetree Specification 5.2 / libfdt fdt.h struct fdt_header).
    assert_eq!(&b[0..4], &[0xd0, 0x0d, 0xfe, 0xed]);
    assert_eq!(
        u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize,
        b.len()
    );
    assert_eq!(u32::from_be_bytes(b[16..20].try_into().unwrap()), 0x28); // off_mem_rsvmap
    assert_eq!(u32::from_be_bytes(b[20..24].try_into().unwrap()), 17); // version
    assert_eq!(u32::from_be_bytes(b[24..28].try_into().unwrap()), 16); // last_comp_version
    assert_eq!(u32::from_be_bytes(b[28..32].try_into().unwrap()), 3); // boot_cpuid_phys
                                                                      // Reservation block: one entry then the zero terminator; structure follows at 0x48.
    assert_eq!(&b[0x28..0x30], &0x1000u64.to_be_bytes());
    assert_eq!(&b[0x30..0x38], &0x2000u64.to_be_bytes());
    assert_eq!(&b[0x38..0x48], &[0u8; 16]);
    assert_eq!(u32::from_be_bytes(b[8..12].try_into().unwrap()), 0x48);
    // First token: FDT_BEGIN_NODE with the empty root name, padded to 4.
    assert_eq!(&b[0x48..0x50], &[0, 0, 0, 1, 0, 0, 0, 0]);
    // The name "compatible" appears once in the strings block (shared).
    let off_strings = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    assert_eq!(&b[off_strings..], b"compatible\0");

    let t = fdt::parse(&b, 4).unwrap();
    assert_eq!(t.reservations, vec![(0x1000, 0x2000)]);
    assert_eq!(t.header.boot_cpuid_phys, 3);
    assert_eq!(t.root.name, "");
    assert_eq!(t.root.property("compatible").unwrap().value, b"kho-v2\0");
    assert_eq!(
        t.root
            .child("c")
            .unwrap()
            .property("compatible")
            .unwrap()
            .value,
        [1, 2, 3]
    );
}

#[test]
fn fdt_writer_refuses_bad_structure() {
    let mut w = FdtWriter::new();
    assert_eq!(
        w.begin_node("x"),
        Err(FdtWriteError::RootName { name: "x".into() })
    );
    assert_eq!(
        w.property("a", b""),
        Err(FdtWriteError::PropertyOutsideNode { name: "a".into() })
    );
    assert_eq!(w.end_node(), Err(FdtWriteError::EndWithoutBegin));
    assert_eq!(w.finish(0), Err(FdtWriteError::NoRoot));
    w.begin_node("").unwrap();
    assert_eq!(
        w.begin_node("a/b"),
        Err(FdtWriteError::BadNodeName {
            name: "a/b".into(),
            reason: NameError::BadChar(b'/')
        })
    );
    assert_eq!(
        w.begin_node(&"n".repeat(32)),
        Err(FdtWriteError::BadNodeName {
            name: "n".repeat(32),
            reason: NameError::TooLong
        })
    );
    assert_eq!(
        w.begin_node("n@"),
        Err(FdtWriteError::BadNodeName {
            name: "n@".into(),
            reason: NameError::BadUnitAddress
        })
    );
    assert_eq!(
        w.property("bad name", b""),
        Err(FdtWriteError::BadPropertyName {
            name: "bad name".into(),
            reason: NameError::BadChar(b' ')
        })
    );
    assert_eq!(
        w.property_string("s", "a\0b"),
        Err(FdtWriteError::NulInString { name: "s".into() })
    );
    w.property("p", b"1").unwrap();
    assert_eq!(
        w.property("p", b"2"),
        Err(FdtWriteError::DuplicateProperty { name: "p".into() })
    );
    w.begin_node("n@1").unwrap();
    w.end_node().unwrap();
    assert_eq!(
        w.begin_node("n@1"),
        Err(FdtWriteError::DuplicateNode { name: "n@1".into() })
    );
    assert_eq!(
        w.property("q", b""),
        Err(FdtWriteError::PropertyAfterSubnode { name: "q".into() })
    );
    assert_eq!(
        w.finish(0),
        Err(FdtWriteError::UnclosedNode { name: "".into() })
    );
    w.end_node().unwrap();
    assert_eq!(
        w.begin_node(""),
        Err(FdtWriteError::SecondRoot { name: "".into() })
    );
    assert!(fdt::parse(&w.finish(0).unwrap(), 2).is_ok());
}

#[test]
fn fdt_reader_corruptions_each_have_their_error() {
    let strings = b"compatible\0".to_vec();
    let good_struct = cat(&[
        tok_begin(""),
        tok_prop(0, b"kho-v2\0"),
        tok_begin("client"),
        be(FDT_END_NODE).to_vec(),
        be(FDT_NOP).to_vec(),
        be(FDT_END_NODE).to_vec(),
        be(FDT_END).to_vec(),
    ]);
    let good = raw_fdt(&good_struct, &strings);
    assert_eq!(good.len(), 123);
    let t = fdt::parse(&good, 2).unwrap();
    assert_eq!(t.root.children[0].name, "client");
    assert_eq!(t.root.children[0].offset, 56 + 28);

    let set32 = |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&be(v));

    // Bad magic.
    let mut b = good.clone();
    b[3] = 0xee;
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::BadMagic { found: 0xd00d_feee })
    );
    // Version 16 (no size_dt_struct) and a blob that needs a newer reader.
    let mut b = good.clone();
    set32(&mut b, 20, 16);
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::Version {
            version: 16,
            last_comp_version: 16
        })
    );
    let mut b = good.clone();
    set32(&mut b, 24, 18);
    assert!(matches!(fdt::parse(&b, 2), Err(FdtError::Version { .. })));
    // Truncated: header, and totalsize beyond the bytes.
    assert_eq!(
        fdt::parse(&good[..20], 2),
        Err(FdtError::Truncated {
            offset: 20,
            need: 20,
            what: "header"
        })
    );
    assert_eq!(
        fdt::parse(&good[..good.len() - 3], 2),
        Err(FdtError::Truncated {
            offset: good.len() - 3,
            need: 3,
            what: "blob (totalsize)"
        })
    );
    let mut b = good.clone();
    set32(&mut b, 4, 12);
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::BadTotalSize { totalsize: 12 })
    );
    // Misaligned token: structure block off a 4-byte boundary, or of odd size.
    let mut b = good.clone();
    set32(&mut b, 8, 58);
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::MisalignedToken { offset: 58 })
    );
    let mut b = good.clone();
    set32(&mut b, 36, good_struct.len() as u32 - 2);
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::MisalignedToken {
            offset: 56 + good_struct.len() - 2
        })
    );
    // Misaligned and unterminated reservation block.
    let mut b = good.clone();
    set32(&mut b, 16, 44);
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::MisalignedReservations { offset: 44 })
    );
    let mut b = good.clone();
    b[40] = 1; // first entry no longer zero, and no zero pair follows before the end
    assert_eq!(
        fdt::parse(&b, 2),
        // Entries at 40, 56, ..., 104 read as non-zero; the one at 120 would run past
        // totalsize (123).
        Err(FdtError::ReservationsUnterminated { offset: 120 })
    );
    let mut b = good.clone();
    set32(&mut b, 8, 48); // structure block inside the reservation terminator
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::BlocksOverlap {
            first: "memory reservation",
            second: "structure"
        })
    );
    let mut b = good.clone();
    set32(&mut b, 16, 112); // 8-aligned, but 112 + 16 > 123
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::ReservationsUnterminated { offset: 112 })
    );
    // Blocks out of bounds and overlapping.
    let mut b = good.clone();
    set32(&mut b, 32, 0x1000);
    assert!(matches!(
        fdt::parse(&b, 2),
        Err(FdtError::BlockOutOfBounds {
            block: "strings",
            ..
        })
    ));
    let mut b = good.clone();
    set32(&mut b, 8, 8);
    assert!(matches!(
        fdt::parse(&b, 2),
        Err(FdtError::BlockOutOfBounds {
            block: "structure",
            offset: 8,
            ..
        })
    ));
    let mut b = good.clone();
    set32(&mut b, 12, 56);
    assert_eq!(
        fdt::parse(&b, 2),
        Err(FdtError::BlocksOverlap {
            first: "structure",
            second: "strings"
        })
    );

    let parse = |st: Vec<u8>, strs: &[u8], depth| fdt::parse(&raw_fdt(&st, strs), depth);
    // String offset out of range, and unterminated property name.
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_prop(11, b""),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::StringOffsetOutOfRange {
            offset: 64,
            nameoff: 11,
            strings_size: 11
        })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_prop(0, b""),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            b"compat",
            2
        ),
        Err(FdtError::UnterminatedString {
            offset: 64,
            nameoff: 0
        })
    );
    // Unterminated node name: the name runs to the end of the structure block.
    let mut st = be(FDT_BEGIN_NODE).to_vec();
    st.extend_from_slice(b"abcd");
    assert_eq!(
        parse(st, &strings, 2),
        Err(FdtError::UnterminatedName { offset: 60 })
    );
    // Nesting too deep.
    let deep = cat(&[
        tok_begin(""),
        tok_begin("a"),
        tok_begin("b"),
        be(FDT_END_NODE).to_vec(),
        be(FDT_END_NODE).to_vec(),
        be(FDT_END_NODE).to_vec(),
        be(FDT_END).to_vec(),
    ]);
    assert!(parse(deep.clone(), &strings, 3).is_ok());
    assert_eq!(
        parse(deep, &strings, 2),
        Err(FdtError::NestingTooDeep { offset: 72, max: 2 })
    );
    // Node without end: FDT_END with a node open, and structure block ending early.
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_begin("a"),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::NodeWithoutEnd {
            offset: 56,
            name: "".into()
        })
    );
    assert_eq!(
        parse(cat(&[tok_begin(""), tok_begin("a")]), &strings, 2),
        Err(FdtError::NodeWithoutEnd {
            offset: 64,
            name: "a".into()
        })
    );
    assert_eq!(
        parse(
            cat(&[tok_begin(""), be(FDT_END_NODE).to_vec()]),
            &strings,
            2
        ),
        Err(FdtError::MissingEnd { offset: 68 })
    );
    // Unknown token, end without begin, property outside node, second root, no root.
    assert_eq!(
        parse(cat(&[tok_begin(""), be(7).to_vec()]), &strings, 2),
        Err(FdtError::UnknownToken {
            offset: 64,
            token: 7
        })
    );
    assert_eq!(
        parse(cat(&[be(FDT_END_NODE).to_vec()]), &strings, 2),
        Err(FdtError::EndWithoutBegin { offset: 56 })
    );
    assert_eq!(
        parse(cat(&[tok_prop(0, b"x"), be(FDT_END).to_vec()]), &strings, 2),
        Err(FdtError::PropertyOutsideNode { offset: 56 })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                be(FDT_END_NODE).to_vec(),
                tok_begin(""),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::SecondRoot { offset: 68 })
    );
    assert_eq!(
        parse(be(FDT_END).to_vec(), &strings, 2),
        Err(FdtError::NoRoot { offset: 56 })
    );
    // Root with a name; bad child name; property after sub-node; duplicates.
    assert_eq!(
        parse(
            cat(&[
                tok_begin("r"),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::RootNotEmpty { offset: 60 })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_begin("a b"),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::BadNodeName {
            offset: 68,
            reason: NameError::BadChar(b' ')
        })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_begin("a"),
                be(FDT_END_NODE).to_vec(),
                tok_prop(0, b"x"),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::PropertyAfterSubnode { offset: 76 })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_prop(0, b"x"),
                tok_prop(0, b"y"),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::DuplicateProperty {
            offset: 80,
            name: "compatible".into()
        })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_begin("a"),
                be(FDT_END_NODE).to_vec(),
                tok_begin("a"),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::DuplicateNode {
            offset: 76,
            name: "a".into()
        })
    );
    // Property value running past the structure block; bad property name; trailing data.
    let mut st = cat(&[tok_begin(""), tok_prop(0, b"abcd")]);
    st[12..16].copy_from_slice(&be(0x100));
    assert_eq!(
        parse(st, &strings, 2),
        Err(FdtError::Truncated {
            offset: 76,
            need: 0x100,
            what: "property value"
        })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                tok_prop(0, b""),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec()
            ]),
            b"a b\0",
            2
        ),
        Err(FdtError::BadPropertyName {
            offset: 64,
            reason: NameError::BadChar(b' ')
        })
    );
    assert_eq!(
        parse(
            cat(&[
                tok_begin(""),
                be(FDT_END_NODE).to_vec(),
                be(FDT_END).to_vec(),
                be(FDT_NOP).to_vec()
            ]),
            &strings,
            2
        ),
        Err(FdtError::TrailingData { offset: 72 })
    );
    // Messages name the offset.
    assert_eq!(
        FdtError::UnknownToken {
            offset: 0x3c,
            token: 7
        }
        .to_string(),
        "unknown token 0x7 at offset 0x3c"
    );
}

// ---- radix tree -----------------------------------------------------------------------

fn page_u64(mem: &Mem, page: PhysAddr, index: usize) -> u64 {
    mem.read_u64(PhysAddr(page.0 + index as u64 * 8)).unwrap()
}

#[test]
fn radix_tree_layout_known_answer() {
    // One order-0 page at 0x1000: key = 1 << 52 | 1 (kho_radix_encode_key). Key bits
    // 59:51 index the root (2), 50:42 / 41:33 / 32:24 / 23:15 index levels 4..1 (all 0),
    // bits 14:0 pick leaf bit 1 (include/linux/kho/abi/kexec_handover.h diagram).
    let mut s = PageSet::new();
    s.insert(PhysAddr(0x1000), 0).unwrap();
    assert_eq!(radix::node_count(&s), 6);
    let frames: Vec<_> = (0..6).map(|i| PhysAddr(0x10_0000 + i * 0x1000)).collect();
    let img = radix::build(&s, &frames).unwrap();
    let mut mem = Mem::default();
    img.write(&mut mem).unwrap();
    assert_eq!(img.root, PhysAddr(0x10_0000));
    let mut node = img.root;
    for (level, index) in [(5, 2usize), (4, 0), (3, 0), (2, 0), (1, 0)] {
        for i in 0..512 {
            let e = page_u64(&mem, node, i);
            assert_eq!(e != 0, i == index, "level {level} entry {i} = {e:#x}");
        }
        node = PhysAddr(page_u64(&mem, node, index));
    }
    assert_eq!(page_u64(&mem, node, 0), 0b10);
    assert!((1..512).all(|i| page_u64(&mem, node, i) == 0));

    // A 2 MiB block at 0x20_0000 (order 9): key = 1 << 43 | 1, so root entry 0, level 4
    // entry (key >> 42) & 511 = 2, the rest 0, leaf bit 1.
    let mut s = PageSet::new();
    s.insert(PhysAddr(0x20_0000), 9).unwrap();
    let img = radix::build(&s, &frames).unwrap();
    let mut mem = Mem::default();
    img.write(&mut mem).unwrap();
    let l4 = PhysAddr(page_u64(&mem, img.root, 0));
    assert_ne!(l4.0, 0);
    assert_ne!(page_u64(&mem, l4, 2), 0);
    let back = radix::read(&mem, img.root, 100).unwrap();
    assert_eq!(back.set, s);
    assert_eq!(back.nodes.len(), 6);

    // Empty set: a root page only, all zero.
    let img = radix::build(&PageSet::new(), &frames).unwrap();
    assert_eq!(img.nodes.len(), 1);
    assert!(img.nodes[0].1.iter().all(|&b| b == 0));
    assert_eq!(
        radix::build(&sample_set(), &frames[..2]).err(),
        Some(RadixError::NotEnoughFrames {
            need: radix::node_count(&sample_set()),
            have: 2
        })
    );
}

#[test]
fn radix_round_trip_and_node_count() {
    let s = sample_set();
    let n = radix::node_count(&s);
    let frames: Vec<_> = (0..n as u64)
        .map(|i| PhysAddr(0x9000_0000 + i * 0x1000))
        .collect();
    let img = radix::build(&s, &frames).unwrap();
    assert_eq!(img.nodes.len(), n);
    let mut mem = Mem::default();
    img.write(&mut mem).unwrap();
    let back = radix::read(&mem, img.root, 1000).unwrap();
    assert_eq!(back.set, s);
    let mut visited = back.nodes.clone();
    visited.sort();
    assert_eq!(visited, frames);
    assert_eq!(
        radix::read(&mem, img.root, 3).err(),
        Some(RadixError::TooManyNodes { max: 3 })
    );
}

#[test]
fn radix_corruptions_each_have_their_error() {
    let mut s = PageSet::new();
    s.insert(PhysAddr(0), 1).unwrap();
    s.insert(PhysAddr(0x4000), 0).unwrap();
    let n = radix::node_count(&s);
    let frames: Vec<_> = (0..n as u64)
        .map(|i| PhysAddr(0x10_0000 + i * 0x1000))
        .collect();
    let img = radix::build(&s, &frames).unwrap();
    let mut clean = Mem::default();
    img.write(&mut clean).unwrap();
    let root = img.root;
    let read = |m: &Mem| radix::read(m, root, 100).map(|r| r.set);
    assert_eq!(read(&clean).unwrap(), s);

    assert_eq!(
        radix::read(&clean, PhysAddr(0), 10).err(),
        Some(RadixError::NullRoot)
    );
    assert_eq!(
        radix::read(&clean, PhysAddr(0x10_0008), 10).err(),
        Some(RadixError::MisalignedNode {
            parent: None,
            level: 5,
            index: 0,
            addr: PhysAddr(0x10_0008)
        })
    );
    // Root entry 4 and above: keys >= 2^53.
    let mut m = clean.clone();
    m.write_u64(PhysAddr(root.0 + 4 * 8), 0x20_0000).unwrap();
    assert_eq!(
        read(&m),
        Err(RadixError::EntryBeyondKeySpace {
            node: root,
            index: 4,
            entry: 0x20_0000
        })
    );
    // Misaligned entry.
    let mut m = clean.clone();
    let e2 = m.read_u64(PhysAddr(root.0 + 2 * 8)).unwrap();
    m.write_u64(PhysAddr(root.0 + 2 * 8), e2 | 0x8).unwrap();
    assert_eq!(
        read(&m),
        Err(RadixError::MisalignedNode {
            parent: Some(root),
            level: 4,
            index: 2,
            addr: PhysAddr(e2 | 0x8)
        })
    );
    // Two root entries to the same node; and a cycle back to the root.
    let mut m = clean.clone();
    m.write_u64(PhysAddr(root.0 + 3 * 8), e2).unwrap();
    assert_eq!(
        read(&m),
        Err(RadixError::SharedNode {
            addr: PhysAddr(e2),
            level: 4
        })
    );
    let mut m = clean.clone();
    m.write_u64(PhysAddr(e2 + 8 * 7), root.0).unwrap();
    assert_eq!(
        read(&m),
        Err(RadixError::SharedNode {
            addr: root,
            level: 3
        })
    );
    // A node page that is not there.
    let mut m = clean.clone();
    m.write_u64(PhysAddr(root.0 + 3 * 8), 0x7777_0000).unwrap();
    assert_eq!(
        read(&m),
        Err(RadixError::Mem {
            addr: PhysAddr(0x7777_0000),
            level: 4,
            err: MemError::Poisoned {
                addr: PhysAddr(0x7777_0000)
            }
        })
    );
    // Overlap: add page 0 (order 0) to the order-0 leaf, which also holds 0x4000; block
    // 0/1 lives under root entry 1 and is read first.
    let order0_leaf = img.nodes.last().unwrap().0;
    let mut m = clean.clone();
    let w0 = m.read_u64(order0_leaf).unwrap();
    assert_eq!(w0, 1 << 4);
    m.write_u64(order0_leaf, w0 | 1).unwrap();
    assert_eq!(
        read(&m),
        Err(RadixError::Overlap {
            leaf: order0_leaf,
            bit: 0,
            addr: PhysAddr(0),
            order: 0,
            existing: PhysAddr(0),
            existing_order: 1
        })
    );
    // A hand-built path to leaf index 0 (keys below 2^15): bit 1 is key 1, order 52.
    let mut m = Mem::default();
    let base = 0x50_0000u64;
    for i in 0..5u64 {
        m.write(PhysAddr(base + i * 0x1000), &[0; 4096]).unwrap();
        m.write_u64(PhysAddr(base + i * 0x1000), base + (i + 1) * 0x1000)
            .unwrap();
    }
    let leaf = PhysAddr(base + 5 * 0x1000);
    m.write(leaf, &[0; 4096]).unwrap();
    m.write_u64(leaf, 0b11).unwrap();
    assert_eq!(
        radix::read(&m, PhysAddr(base), 10).err(),
        Some(RadixError::InvalidKey {
            leaf,
            bit: 0,
            key: 0
        })
    );
    m.write_u64(leaf, 0b10).unwrap();
    assert_eq!(
        radix::read(&m, PhysAddr(base), 10).err(),
        Some(RadixError::OrderTooLarge {
            leaf,
            bit: 1,
            order: 52
        })
    );
}

/// A set of `leaves` full order-0 leaves (each 32768 pages, 128 MiB) from page frame
/// `first_pfn` (a multiple of 32768), built word by word.
fn full_order0_leaves(first_pfn: u64, leaves: u64, pattern: u64) -> PageSet {
    let mut s = PageSet::new();
    for i in 0..leaves {
        let idx = ((1u64 << 52) | first_pfn) / 32768 + i;
        for w in 0..512 {
            s.insert_leaf_word(idx, w, pattern).unwrap();
        }
    }
    s
}

/// Input shape: a preserved-memory tree of 4096 full order-0 leaves (16 MiB of leaves,
/// 512 GiB claimed), and one of 1024 leaves with every other bit set (the densest
/// shape of single pages). Read back leaf word by leaf word (it took 9 s bit by bit),
/// the same blocks come out.
#[test]
fn radix_tree_of_full_leaves_reads_back_word_by_word() {
    for (leaves, pattern) in [(4096u64, !0u64), (1024, 0x5555_5555_5555_5555)] {
        let s = full_order0_leaves(0, leaves, pattern);
        let per_leaf = 32768 * u64::from(pattern.count_ones()) / 64;
        assert_eq!(s.page_count(), leaves * per_leaf);
        assert_eq!(s.block_count(), leaves * per_leaf);
        let n = radix::node_count(&s);
        let frames: Vec<_> = (0..n as u64)
            .map(|i| PhysAddr(0x100_0000_0000 + i * 0x1000))
            .collect();
        let img = radix::build(&s, &frames).unwrap();
        let mut mem = Mem::default();
        img.write(&mut mem).unwrap();
        let back = radix::read(&mem, img.root, n).unwrap();
        assert_eq!(back.set, s);
        assert_eq!(back.nodes.len(), n);
    }
}

/// `insert_leaf_word` is `insert` of each block: same set, same errors, whatever
/// blocks of other orders the set holds (the block-by-block path) or not (one step).
#[test]
fn insert_leaf_word_matches_insert_of_each_block() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..400 {
        let mut a = PageSet::new();
        for _ in 0..next() % 4 {
            let order = (next() % 12) as u32;
            let addr = (next() % 64) << (12 + order);
            let _ = a.insert(PhysAddr(addr), order);
        }
        let mut b = a.clone();
        let order = (next() % 10) as u32;
        let leaf = ((1u64 << (52 - order)) >> 15) + next() % 2;
        let word = (next() % 4) as usize;
        let bits = next() & next();
        let r = a.insert_leaf_word(leaf, word, bits);
        let mut want = Ok(());
        let mut blocks = Vec::new();
        for bit in 0..64 {
            if bits & (1 << bit) != 0 {
                let key = (leaf << 15) | (word as u64 * 64 + bit);
                let (addr, o) = iommu_core::pageset::radix_key_decode(key).unwrap();
                blocks.push((addr, o));
            }
        }
        for &(addr, o) in &blocks {
            if let Err(e) = b.clone().insert(addr, o) {
                want = Err(e);
                break;
            }
            b.insert(addr, o).unwrap();
        }
        match want {
            Ok(()) => {
                assert_eq!(r, Ok(()));
                assert_eq!(a, b);
            }
            Err(e) => {
                // Same block refused; the set is left as it was.
                match (r, e) {
                    (
                        Err(iommu_core::pageset::PageSetError::Overlap { addr, order, .. }),
                        iommu_core::pageset::PageSetError::Overlap {
                            addr: wa,
                            order: wo,
                            ..
                        },
                    ) => assert_eq!((addr, order), (wa, wo)),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}

/// Input shape: a blob whose preserved-memory map holds 512 full order-0 leaves (64 GiB
/// from 0) on a machine of 8 GiB of RAM (the new kernel's allocator would be left
/// without a page, and adopt said "out of pages for the invalidation queue"); and a
/// map of one block beyond RAM. Read against the RAM, each is refused by name.
#[test]
fn preserved_map_claiming_more_than_ram_is_refused_by_name() {
    let ram = [(PhysAddr(0), 8u64 << 30)];
    let mut mem = Mem::default();
    let mut alloc = Bump {
        next: 0x100_0000_0000,
        calls: 0,
    };
    let bomb = full_order0_leaves(0, 512, !0);
    let w = write_handover(&mut mem, &mut alloc, &bomb, &[]).unwrap();
    assert!(read_preserved(&mem, w.blob).is_ok());
    match read_preserved_in(&mem, w.blob, &ram) {
        Err(KhoError::PreservedExceedsRam { pages, ram_pages }) => {
            assert!(pages > 512 * 32768);
            assert_eq!(ram_pages, 2 << 20);
        }
        other => panic!("{other:?}"),
    }
    // One 1 GiB block at 8 GiB: fits in the page count, not in RAM.
    let mut beyond = PageSet::new();
    beyond.insert(PhysAddr(8 << 30), 18).unwrap();
    let mut mem = Mem::default();
    let mut alloc = Bump {
        next: 0x1_0000_0000,
        calls: 0,
    };
    let w = write_handover(&mut mem, &mut alloc, &beyond, &[]).unwrap();
    assert_eq!(
        read_preserved_in(&mem, w.blob, &[(PhysAddr(0), 16 << 30)])
            .unwrap()
            .page_count(),
        w.must_survive().page_count()
    );
    assert_eq!(
        read_preserved_in(&mem, w.blob, &[(PhysAddr(0), 8 << 30)]),
        Err(KhoError::PreservedOutsideRam {
            block: PhysAddr(8 << 30),
            order: 18
        })
    );
}

// ---- the handover ---------------------------------------------------------------------

#[test]
fn handover_round_trip() {
    let preserved = sample_set();
    let data = sample_clients();
    let clients = as_clients(&data);
    let mut mem = Mem::default();
    let mut alloc = Bump {
        next: 0x8000_0000,
        calls: 0,
    };
    let w = write_handover(&mut mem, &mut alloc, &preserved, &clients).unwrap();
    assert_eq!(alloc.calls, 1, "one allocation for everything");
    assert_eq!(w.blob, PhysAddr(0x8000_0000));
    assert_eq!(w.region.0, w.blob);

    // The new kernel only has `mem` and `w.blob`.
    let blob = w.blob;
    let h = read_handover(&mem, blob).unwrap();
    assert_eq!(h.memory_map, w.memory_map);
    assert_eq!(h.blob_size, w.blob_size);
    assert_eq!(h.clients, w.clients);
    assert_eq!(
        h.clients
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["iommu-vtd", "iommufd"]
    );
    // Records: blob is one page, the 5000-byte vtd record two pages after it.
    assert_eq!(h.client("iommu-vtd"), Some(PhysAddr(0x8000_1000)));
    assert_eq!(h.client("iommufd"), Some(PhysAddr(0x8000_3000)));
    let r = read_client_record(&mem, &h, "iommu-vtd", &VTD_V1).unwrap();
    assert_eq!(r.payload, data[0].2);
    let sess = Supported {
        family: "iommufd-session",
        oldest: 2,
        newest: 3,
    };
    assert_eq!(
        read_client_record(&mem, &h, "iommufd", &sess)
            .unwrap()
            .version,
        3
    );
    assert_eq!(
        read_client_record(&mem, &h, "nope", &sess),
        Err(KhoError::NoSuchClient {
            name: "nope".into()
        })
    );

    // Everything that must survive.
    let all = read_preserved(&mem, blob).unwrap();
    assert!(all.same_pages(&w.must_survive()));
    assert!(preserved.is_subset(&all));
    assert!(all.contains(blob));
    for c in &h.clients {
        assert!(all.contains(c.data));
    }
    for &n in &w.tree_nodes {
        assert!(all.contains(n), "tree node {n} not preserved");
    }
    assert!(
        !w.serialized.contains(w.memory_map),
        "tree nodes are not in the map itself"
    );
    // Nothing else: preserved + blob + records + tree nodes.
    let data_pages = 1 + 2 + 1;
    assert_eq!(
        all.page_count(),
        preserved.page_count() + data_pages + w.tree_nodes.len() as u64
    );
    // The blob read from a copy of only the surviving pages still works.
    let mut survived = Mem::default();
    for p in all.pages() {
        if let Some(pg) = mem.pages.get(&(p.0 >> 12)) {
            survived.pages.insert(p.0 >> 12, pg.clone());
        }
    }
    assert_eq!(read_preserved(&survived, blob).unwrap(), all);
    assert_eq!(read_handover(&survived, blob).unwrap(), h);

    // Empty set, no clients.
    let mut mem = Mem::default();
    let w = write_handover(
        &mut mem,
        &mut Bump {
            next: 0x1000,
            calls: 0,
        },
        &PageSet::new(),
        &[],
    )
    .unwrap();
    let all = read_preserved(&mem, w.blob).unwrap();
    assert!(all.contains(w.blob));
    assert!(all.contains(w.memory_map));
    assert_eq!(read_handover(&mem, w.blob).unwrap().clients, vec![]);
}

#[test]
fn blob_layout_matches_linux_kho() {
    let mut mem = Mem::default();
    let data = sample_clients();
    let w = write_handover(
        &mut mem,
        &mut Bump {
            next: 0x4000_0000,
            calls: 0,
        },
        &PageSet::new(),
        &as_clients(&data),
    )
    .unwrap();
    let mut bytes = vec![0u8; w.blob_size as usize];
    mem.read(w.blob, &mut bytes).unwrap();
    let t = fdt::parse(&bytes, 2).unwrap();
    assert!(t.reservations.is_empty());
    // Root: compatible, then preserved-memory-map (kho_out_fdt_setup order), u64 in CPU
    // (little-endian) byte order as Linux's fdt_property(&phys, sizeof(phys)) stores it.
    let names: Vec<_> = t.root.properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["compatible", PROP_PRESERVED_MEMORY_MAP]);
    assert_eq!(t.root.properties[0].value, b"kho-v2\0");
    assert_eq!(KHO_FDT_COMPATIBLE, "kho-v2");
    assert_eq!(t.root.properties[1].value, w.memory_map.0.to_le_bytes());
    for (node, c) in t.root.children.iter().zip(&w.clients) {
        assert_eq!(node.name, c.name);
        assert_eq!(node.properties.len(), 1);
        assert_eq!(node.properties[0].name, PROP_PRESERVED_DATA);
        assert_eq!(node.properties[0].value, c.data.0.to_le_bytes());
    }
}

/// Writes a hand-made blob at `at`.
fn put_blob(mem: &mut Mem, at: PhysAddr, build: impl FnOnce(&mut FdtWriter)) -> PhysAddr {
    let mut w = FdtWriter::new();
    w.begin_node("").unwrap();
    build(&mut w);
    w.end_node().unwrap();
    mem.write(at, &w.finish(0).unwrap()).unwrap();
    at
}

#[test]
fn handover_corruptions_each_have_their_error() {
    let data = sample_clients();
    let mut mem = Mem::default();
    let w = write_handover(
        &mut mem,
        &mut Bump {
            next: 0x8000_0000,
            calls: 0,
        },
        &sample_set(),
        &as_clients(&data),
    )
    .unwrap();
    let blob = w.blob;
    let mm = w.memory_map.0.to_le_bytes();

    let mut m = mem.clone();
    m.write(blob, &[0xde, 0xad]).unwrap();
    assert_eq!(
        read_preserved(&m, blob),
        Err(KhoError::Fdt {
            blob,
            err: FdtError::BadMagic { found: 0xdead_feed }
        })
    );
    // Nothing at the address.
    assert_eq!(
        read_preserved(&mem, PhysAddr(0x1000)),
        Err(KhoError::Mem {
            what: "reading the KHO blob header",
            err: MemError::Poisoned {
                addr: PhysAddr(0x1000)
            }
        })
    );
    // totalsize above the cap.
    let mut m = mem.clone();
    m.write(PhysAddr(blob.0 + 4), &(MAX_BLOB_SIZE + 4).to_be_bytes())
        .unwrap();
    assert_eq!(
        read_preserved(&m, blob),
        Err(KhoError::BlobSize {
            blob,
            size: u64::from(MAX_BLOB_SIZE) + 4,
            max: MAX_BLOB_SIZE
        })
    );

    let at = PhysAddr(0x100_0000);
    // kho-v1 (the older ABI) is refused, naming both.
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v1").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm).unwrap();
    });
    let e = read_preserved(&m, at).unwrap_err();
    assert_eq!(
        e,
        KhoError::Compatible {
            blob: at,
            found: "kho-v1".into(),
            expected: "kho-v2"
        }
    );
    assert!(e.to_string().contains("\"kho-v1\"") && e.to_string().contains("\"kho-v2\""));
    // No compatible at all; unterminated compatible.
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm).unwrap();
    });
    assert!(matches!(
        read_preserved(&m, at),
        Err(KhoError::Compatible { found, .. }) if found.is_empty()
    ));
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property("compatible", b"kho-v2").unwrap();
    });
    assert!(matches!(
        read_preserved(&m, at),
        Err(KhoError::PropertyFormat {
            property: "compatible",
            len: 6,
            ..
        })
    ));
    // A compatible list containing kho-v2 is accepted (fdt_node_check_compatible).
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property("compatible", b"vendor,kho\0kho-v2\0").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm).unwrap();
    });
    assert!(read_preserved(&m, at).is_ok());
    // Missing / short preserved-memory-map.
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v2").unwrap();
    });
    assert_eq!(
        read_preserved(&m, at),
        Err(KhoError::MissingProperty {
            node: "/".into(),
            property: PROP_PRESERVED_MEMORY_MAP
        })
    );
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v2").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm[..4]).unwrap();
    });
    assert!(matches!(
        read_preserved(&m, at),
        Err(KhoError::PropertyFormat {
            property: PROP_PRESERVED_MEMORY_MAP,
            len: 4,
            ..
        })
    ));
    // Client node without preserved-data; client node with a child.
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v2").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm).unwrap();
        w.begin_node("iommu-vtd").unwrap();
        w.property("fdt", &mm).unwrap();
        w.end_node().unwrap();
    });
    assert_eq!(
        read_preserved(&m, at),
        Err(KhoError::MissingProperty {
            node: "iommu-vtd".into(),
            property: PROP_PRESERVED_DATA
        })
    );
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v2").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm).unwrap();
        w.begin_node("a").unwrap();
        w.begin_node("b").unwrap();
        w.end_node().unwrap();
        w.end_node().unwrap();
    });
    assert!(matches!(
        read_preserved(&m, at),
        Err(KhoError::Fdt {
            err: FdtError::NestingTooDeep { max: 2, .. },
            ..
        })
    ));
    // Client data outside the preserved set.
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v2").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &mm).unwrap();
        w.begin_node("iommu-vtd").unwrap();
        w.property(PROP_PRESERVED_DATA, &0x9999_0000u64.to_le_bytes())
            .unwrap();
        w.end_node().unwrap();
    });
    assert_eq!(
        read_preserved(&m, at),
        Err(KhoError::ClientNotPreserved {
            name: "iommu-vtd".into(),
            data: PhysAddr(0x9999_0000)
        })
    );
    // Memory map pointing nowhere / at 0.
    let mut m = mem.clone();
    put_blob(&mut m, at, |w| {
        w.property_string("compatible", "kho-v2").unwrap();
        w.property(PROP_PRESERVED_MEMORY_MAP, &0u64.to_le_bytes())
            .unwrap();
    });
    assert_eq!(
        read_preserved(&m, at),
        Err(KhoError::Radix(RadixError::NullRoot))
    );
    // A corrupted record is reported with the client's name.
    let mut m = mem.clone();
    let vtd = w.clients[0].data;
    m.write(PhysAddr(vtd.0 + 100), &[0xff]).unwrap();
    let h = read_handover(&m, blob).unwrap();
    assert!(matches!(
        read_client_record(&m, &h, "iommu-vtd", &VTD_V1),
        Err(KhoError::Record { client, err: RecordError::Checksum { pa, .. } })
            if client == "iommu-vtd" && pa == vtd
    ));
}

#[test]
fn writing_is_all_or_nothing() {
    let preserved = sample_set();
    let data = sample_clients();
    let clients = as_clients(&data);

    // Validation errors: no allocation, no write.
    let mut mem = Mem::default();
    let mut alloc = Bump {
        next: 0x8000_0000,
        calls: 0,
    };
    let dup = [clients[0], clients[0]];
    assert_eq!(
        write_handover(&mut mem, &mut alloc, &preserved, &dup).err(),
        Some(KhoError::DuplicateClient {
            name: "iommu-vtd".into()
        })
    );
    let bad_name = [Client {
        name: "iommu vtd",
        ..clients[0]
    }];
    assert!(matches!(
        write_handover(&mut mem, &mut alloc, &preserved, &bad_name),
        Err(KhoError::FdtWrite(FdtWriteError::BadNodeName { .. }))
    ));
    let bad_compat = [Client {
        compatible: "iommu-vtd",
        ..clients[0]
    }];
    assert!(matches!(
        write_handover(&mut mem, &mut alloc, &preserved, &bad_compat),
        Err(KhoError::Record {
            err: RecordError::BadCompatible { .. },
            ..
        })
    ));
    assert_eq!(alloc.calls, 0);
    assert_eq!(mem.writes, 0);

    // Allocation refused, misaligned, wrapping, or overlapping preserved memory.
    assert!(matches!(
        write_handover(&mut mem, &mut Fixed(None), &preserved, &clients),
        Err(KhoError::AllocFailed { .. })
    ));
    assert!(matches!(
        write_handover(
            &mut mem,
            &mut Fixed(Some(PhysAddr(0x8000_0800))),
            &preserved,
            &clients
        ),
        Err(KhoError::BadAllocation { .. })
    ));
    assert!(matches!(
        write_handover(
            &mut mem,
            &mut Fixed(Some(PhysAddr(0xffff_ffff_ffff_f000))),
            &preserved,
            &clients
        ),
        Err(KhoError::BadAllocation { .. })
    ));
    assert_eq!(
        write_handover(
            &mut mem,
            &mut Fixed(Some(PhysAddr(0x1e_0000))),
            &preserved,
            &clients
        )
        .err()
        .map(
            |e| matches!(e, KhoError::RegionPreserved { block, order: 9, .. }
                if block == PhysAddr(0x20_0000))
        ),
        Some(true)
    );
    assert_eq!(mem.writes, 0);

    // A write failing at any point leaves no valid blob at the region start.
    let full = {
        let mut m = Mem::default();
        write_handover(
            &mut m,
            &mut Bump {
                next: 0x8000_0000,
                calls: 0,
            },
            &preserved,
            &clients,
        )
        .unwrap();
        m.writes
    };
    for fail_at in 0..full {
        let mut m = Mem {
            fail_from_write: Some(fail_at),
            ..Mem::default()
        };
        let r = write_handover(
            &mut m,
            &mut Bump {
                next: 0x8000_0000,
                calls: 0,
            },
            &preserved,
            &clients,
        );
        assert!(
            matches!(r, Err(KhoError::Mem { .. })),
            "write {fail_at}: {r:?}"
        );
        assert!(
            read_handover(&m, PhysAddr(0x8000_0000)).is_err(),
            "a valid blob after failing write {fail_at}"
        );
    }
}

// ---- fuzz-ish property tests ------------------------------------------------------------

fn written() -> (Mem, PhysAddr, u32, Vec<PhysAddr>) {
    let data = sample_clients();
    let mut mem = Mem::default();
    let w = write_handover(
        &mut mem,
        &mut Bump {
            next: 0x8000_0000,
            calls: 0,
        },
        &sample_set(),
        &as_clients(&data),
    )
    .unwrap();
    (mem, w.blob, w.blob_size, w.tree_nodes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), depth in 0usize..6) {
        let _ = fdt::parse(&bytes, depth);
        let _ = decode_record(&bytes, PhysAddr(0), &VTD_V1);
        // With a valid magic and plausible header, to get past the first checks.
        let mut b = bytes.clone();
        if b.len() >= 40 {
            b[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
            let len = b.len() as u32;
            b[4..8].copy_from_slice(&len.to_be_bytes());
            b[20..24].copy_from_slice(&17u32.to_be_bytes());
            b[24..28].copy_from_slice(&16u32.to_be_bytes());
            let _ = fdt::parse(&b, depth);
            let mut mem = Mem::default();
            mem.write(PhysAddr(0x1000), &b).unwrap();
            let _ = read_preserved(&mem, PhysAddr(0x1000));
        }
        let mut r = bytes;
        if r.len() >= 64 {
            r[..8].copy_from_slice(b"KHOIOREC");
            r[8..12].copy_from_slice(&0x40u32.to_le_bytes());
            let _ = decode_record(&r, PhysAddr(0), &VTD_V1);
        }
    }

    #[test]
    fn blob_bit_flips_never_panic(flips in prop::collection::vec((0usize..4096, 0u8..8), 1..8)) {
        let (mut mem, blob, size, _) = written();
        for (byte, bit) in flips {
            let a = PhysAddr(blob.0 + (byte as u64 % u64::from(size)));
            let mut v = [0u8];
            mem.read(a, &mut v).unwrap();
            mem.write(a, &[v[0] ^ (1 << bit)]).unwrap();
        }
        let _ = read_preserved(&mem, blob);
        if let Ok(h) = read_handover(&mem, blob) {
            for c in &h.clients {
                let _ = read_client_record(&mem, &h, &c.name, &VTD_V1);
            }
        }
    }

    #[test]
    fn tree_bit_flips_never_panic(node in any::<prop::sample::Index>(),
                                  flips in prop::collection::vec((0usize..4096, 0u8..8), 1..6)) {
        let (mut mem, blob, _, nodes) = written();
        let page = nodes[node.index(nodes.len())];
        for (byte, bit) in flips {
            let a = PhysAddr(page.0 + byte as u64);
            let mut v = [0u8];
            mem.read(a, &mut v).unwrap();
            mem.write(a, &[v[0] ^ (1 << bit)]).unwrap();
        }
        match read_preserved(&mem, blob) {
            Ok(set) => prop_assert!(set.contains(blob)),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// CRC32C catches every single-bit error, so any one flip anywhere in a record is
    /// refused, with some specific error.
    #[test]
    fn record_single_bit_flip_is_always_refused(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut r = encode_record("iommu-vtd-v1", &payload).unwrap();
        let i = pos.index(r.len());
        r[i] ^= 1 << bit;
        let e = decode_record(&r, PhysAddr(0x4000), &VTD_V1);
        prop_assert!(e.is_err(), "flip of bit {} of byte {} accepted", bit, i);
        let mut mem = Mem::default();
        mem.write(PhysAddr(0x4000), &r).unwrap();
        prop_assert!(read_record(&mem, PhysAddr(0x4000), &VTD_V1).is_err());
    }

    /// Random trees built with the writer parse back to the same tree.
    #[test]
    fn fdt_writer_reader_round_trip(
        nodes in prop::collection::vec(
            ("[a-z][a-z0-9,._+-]{0,12}",
             prop::collection::vec(("[a-z#?][a-z0-9,._+?#-]{0,10}", prop::collection::vec(any::<u8>(), 0..20)), 0..4)),
            0..6),
        rsv in prop::collection::vec((any::<u64>(), 1u64..), 0..3),
    ) {
        let mut w = FdtWriter::new();
        w.begin_node("").unwrap();
        w.property_string("compatible", "test").unwrap();
        let mut expect = Vec::new();
        for (name, props) in &nodes {
            if w.begin_node(name).is_err() {
                continue; // duplicate name
            }
            let mut ps = Vec::new();
            for (p, v) in props {
                if w.property(p, v).is_ok() {
                    ps.push((p.clone(), v.clone()));
                }
            }
            w.end_node().unwrap();
            expect.push((name.clone(), ps));
        }
        w.end_node().unwrap();
        for &(a, s) in &rsv {
            w.add_reservation(a, s);
        }
        let blob = w.finish(0).unwrap();
        let t = fdt::parse(&blob, 2).unwrap();
        prop_assert_eq!(t.reservations, rsv);
        prop_assert_eq!(t.root.children.len(), expect.len());
        for (node, (name, ps)) in t.root.children.iter().zip(&expect) {
            prop_assert_eq!(&node.name, name);
            let got: Vec<_> = node.properties.iter().map(|p| (p.name.clone(), p.value.clone())).collect();
            prop_assert_eq!(&got, ps);
        }
        // Any truncation is refused, never a panic.
        for cut in [0, 1, 39, 40, blob.len() / 2, blob.len() - 1] {
            prop_assert!(fdt::parse(&blob[..cut], 2).is_err());
        }
    }
}

/// Input shape: an outgoing handover with two clients of different families (an IOMMU
/// unit's record and a guest-memory owner's), plus pages preserved by neither client.
/// Each client's record must come back under its own compatible string (the handover
/// once stamped every client with the VT-d one), and every page must survive.
#[test]
fn kho_out_writes_each_client_with_its_own_compatible() {
    let mut kho = iommu_core::kho::KhoOut::new();
    let mut unit_pages = PageSet::new();
    unit_pages.insert_range(PhysAddr(0x10_0000), 3).unwrap();
    assert!(kho.add_client(
        "iommu-vtd-fed90000".into(),
        "iommu-vtd-v1".into(),
        vec![1, 2, 3],
        unit_pages,
    ));
    assert!(kho.add_client(
        "guest-memory".into(),
        "guest-memory-v2".into(),
        vec![4; 40],
        PageSet::new(),
    ));
    // A second client of the same name is refused.
    assert!(!kho.add_client(
        "guest-memory".into(),
        "guest-memory-v2".into(),
        vec![],
        PageSet::new(),
    ));
    kho.preserve_range(PhysAddr(0x4000_0000), 512).unwrap();
    let mut mem = Mem::default();
    let mut alloc = Bump {
        next: 0x200_0000,
        calls: 0,
    };
    let blob = kho.finalize(&mut mem, &mut alloc).unwrap();
    let h = read_handover(&mem, blob).unwrap();
    let vtd = Supported {
        family: "iommu-vtd",
        oldest: 1,
        newest: 1,
    };
    let guest = Supported {
        family: "guest-memory",
        oldest: 2,
        newest: 2,
    };
    let r = read_client_record(&mem, &h, "iommu-vtd-fed90000", &vtd).unwrap();
    assert_eq!(
        (r.compatible.as_str(), r.payload),
        ("iommu-vtd-v1", vec![1, 2, 3])
    );
    let r = read_client_record(&mem, &h, "guest-memory", &guest).unwrap();
    assert_eq!(
        (r.compatible.as_str(), r.payload),
        ("guest-memory-v2", vec![4; 40])
    );
    let kept = read_preserved(&mem, blob).unwrap();
    assert!(kept.contains(PhysAddr(0x10_2000)));
    assert!(kept.contains(PhysAddr(0x401f_f000)));
    assert_eq!(
        kho.clients().collect::<Vec<_>>(),
        ["iommu-vtd-fed90000", "guest-memory"]
    );
    // Removing a client drops its record from the next blob.
    kho.remove_client("guest-memory");
    let blob = kho.finalize(&mut mem, &mut alloc).unwrap();
    let h = read_handover(&mem, blob).unwrap();
    assert!(h.client("guest-memory").is_none());
}
