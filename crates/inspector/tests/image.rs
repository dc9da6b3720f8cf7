//! The memory image as physical memory: snapshot poison (whole pages and the poison
//! note's per-byte bitmaps), unbacked addresses, raw files, overlapping segments.

mod common;

use common::*;
use inspector::image::{Image, ImageKind, OpenAs};
use inspector::InspectError;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::PhysAddr;

#[test]
fn snapshot_poison_and_unbacked_memory_are_errors() {
    let mut r = Rig::legacy();
    let p = 0x20_0000u64;
    r.m.mem_mut().write(PhysAddr(p), &[0xabu8; 4096]).unwrap();
    // Poison bytes 0x100..0x108 of the page (a partly poisoned page: poison note).
    r.m.mem_mut().poison_range(PhysAddr(p + 0x100), 8).unwrap();
    let img = Image::from_bytes("s.elf", r.bytes(), OpenAs::Elf).unwrap();
    assert_eq!(img.kind(), ImageKind::Snapshot);
    assert_eq!(img.units().len(), 1);
    let mut b = [0u8; 16];
    img.read(PhysAddr(p + 0xf0), &mut b).unwrap();
    assert_eq!(b, [0xab; 16]);
    assert_eq!(
        img.read(PhysAddr(p + 0xf8), &mut b),
        Err(MemError::Poisoned {
            addr: PhysAddr(p + 0x100)
        })
    );
    img.read(PhysAddr(p + 0x108), &mut b).unwrap();
    // RAM never written: poison; beyond RAM: unbacked; a read crossing into poison
    // names the first poisoned byte.
    assert_eq!(
        img.read(PhysAddr(0x300_0000), &mut b),
        Err(MemError::Poisoned {
            addr: PhysAddr(0x300_0000)
        })
    );
    assert_eq!(
        img.read(PhysAddr(RAM.1), &mut b),
        Err(MemError::Unbacked {
            addr: PhysAddr(RAM.1)
        })
    );
    assert_eq!(
        img.read(PhysAddr(p + 0xff8), &mut b),
        Err(MemError::Poisoned {
            addr: PhysAddr(p + 0x1000)
        })
    );
    assert_eq!(
        img.read(PhysAddr(u64::MAX - 3), &mut b),
        Err(MemError::Overflow {
            addr: PhysAddr(u64::MAX - 3),
            len: 16
        })
    );
    let mut img2 = img;
    assert_eq!(
        img2.write(PhysAddr(p), &[1]),
        Err(MemError::ReadOnly { addr: PhysAddr(p) })
    );
}

#[test]
fn raw_images_start_at_their_base() {
    let mut bytes = vec![0u8; 8192];
    bytes[4096..4104].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    let img = Image::from_bytes("m.raw", bytes, OpenAs::Raw { base: 0x1000_0000 }).unwrap();
    assert_eq!(img.kind(), ImageKind::Raw);
    assert_eq!(
        img.read_u64(PhysAddr(0x1000_1000)).unwrap(),
        0x1122_3344_5566_7788
    );
    assert_eq!(
        img.read_u64(PhysAddr(0x1000_2000)),
        Err(MemError::Unbacked {
            addr: PhysAddr(0x1000_2000)
        })
    );
    assert_eq!(
        img.read_u64(PhysAddr(0xfff_fff8)),
        Err(MemError::Unbacked {
            addr: PhysAddr(0xfff_fff8)
        })
    );
    assert!(matches!(
        Image::from_bytes("e.raw", Vec::new(), OpenAs::Raw { base: 0 }),
        Err(InspectError::Usage(_))
    ));
    assert!(matches!(
        Image::from_bytes("o.raw", vec![0; 4096], OpenAs::Raw { base: u64::MAX }),
        Err(InspectError::Usage(_))
    ));
}

#[test]
fn overlapping_load_segments_are_refused_and_contained_ones_dropped() {
    let (r, _, _) = sample_legacy(POOL);
    let mut b = r.bytes();
    // Program header 1 is the first PT_LOAD; make header 0 (the PT_NOTE) a PT_LOAD
    // claiming the same physical range partly: a partial overlap.
    let ph0 = 64usize;
    let ph1 = 64 + 56;
    let paddr1 = u64::from_le_bytes(b[ph1 + 24..ph1 + 32].try_into().unwrap());
    let off1 = u64::from_le_bytes(b[ph1 + 8..ph1 + 16].try_into().unwrap());
    let size1 = u64::from_le_bytes(b[ph1 + 32..ph1 + 40].try_into().unwrap());
    let mut partial = b.clone();
    partial[ph0..ph0 + 4].copy_from_slice(&1u32.to_le_bytes());
    partial[ph0 + 8..ph0 + 16].copy_from_slice(&off1.to_le_bytes());
    partial[ph0 + 24..ph0 + 32].copy_from_slice(&(paddr1 + 0x1000).to_le_bytes());
    partial[ph0 + 32..ph0 + 40].copy_from_slice(&size1.to_le_bytes());
    partial[ph0 + 40..ph0 + 48].copy_from_slice(&size1.to_le_bytes());
    match Image::from_bytes("p.elf", partial, OpenAs::Elf) {
        Err(InspectError::OverlappingSegments { addr, .. }) => {
            assert_eq!(addr, PhysAddr(paddr1 + 0x1000))
        }
        other => panic!("expected an overlap error, got {other:?}"),
    }
    // A segment wholly inside another (a vmcore's kernel text) is dropped; the notes
    // are gone with header 0, so this is a plain ELF core.
    b[ph0..ph0 + 4].copy_from_slice(&1u32.to_le_bytes());
    b[ph0 + 8..ph0 + 16].copy_from_slice(&off1.to_le_bytes());
    b[ph0 + 24..ph0 + 32].copy_from_slice(&paddr1.to_le_bytes());
    b[ph0 + 32..ph0 + 40].copy_from_slice(&4096u64.to_le_bytes());
    b[ph0 + 40..ph0 + 48].copy_from_slice(&4096u64.to_le_bytes());
    let img = Image::from_bytes("c.elf", b, OpenAs::Elf).unwrap();
    assert_eq!(img.kind(), ImageKind::ElfCore);
    assert_eq!(img.segments().len(), 1);
    assert_eq!(img.segments()[0].size, size1);
}
