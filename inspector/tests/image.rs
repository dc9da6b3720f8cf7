//! The memory image as physical memory: snapshot poison (whole pages and the poison
//! note's per-byte bitmaps), unbacked addresses, raw files, overlapping segments.

mod common;

use common::*;
use inspector::image::{Image, ImageKind, OpenAs};
use inspector::InspectError;
use iommu_core::image::LayoutError;
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
        Err(InspectError::Layout(LayoutError::Overlap { addr, .. })) => {
            assert_eq!(addr, paddr1 + 0x1000)
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

/// The same damaged snapshots (a repeated page with other bytes, an unaligned
/// `p_paddr`, a device behind a missing unit) are refused by the inspector and by the
/// emulator's loader, with the same layout error: one set of rules for both readers.
#[test]
fn both_readers_refuse_the_same_layout_breaking_files_with_the_same_error() {
    let (mut r, _, _) = sample_legacy(POOL);
    // A second run of memory, so the snapshot has two PT_LOADs.
    r.m.mem_mut()
        .write(PhysAddr(0x200_0000), &[0x11; 4096])
        .unwrap();
    let bytes = r.bytes();
    assert!(Image::from_bytes("ok.elf", bytes.clone(), OpenAs::Elf).is_ok());
    for (name, bad) in layout_breaking_files(&bytes) {
        let inspector = match Image::from_bytes(name, bad.clone(), OpenAs::Elf) {
            Err(InspectError::Layout(e)) => e,
            other => panic!("{name}: inspector gave {other:?}"),
        };
        let emulator = match emulator::snapshot::from_bytes(&bad) {
            Err(emulator::snapshot::SnapshotError::Layout(e)) => e,
            Err(e) => panic!("{name}: emulator gave {e}"),
            Ok(_) => panic!("{name}: emulator loaded it"),
        };
        assert_eq!(inspector, emulator, "{name}");
        let expected = match name {
            "repeat-other-bytes" => matches!(inspector, LayoutError::RepeatDiffers { .. }),
            "unaligned-paddr" => matches!(inspector, LayoutError::UnalignedPaddr { .. }),
            _ => matches!(
                inspector,
                LayoutError::NoSuchUnit {
                    device: 0,
                    unit: 0xdead_0000
                }
            ),
        };
        assert!(expected, "{name}: {inspector:?}");
    }
}

/// A snapshot with two units and two devices behind the first, its device note then
/// changed so that device 1 repeats device 0 (same requester, no PASID, same unit), or
/// is device 0's requester with PASID 5 behind the second unit (one requester split over
/// two units): the inspector and the emulator's loader refuse both files with the same
/// layout error (before, the inspector accepted them and only the loader refused).
#[test]
fn both_readers_refuse_a_repeated_device_and_a_requester_split_over_units() {
    use emulator::vtd::{VtdConfig, VtdUnit};
    const SECOND: u64 = 0xfeda_0000;
    let mut r = Rig::legacy();
    r.m.add_unit(Box::new(
        VtdUnit::new(VtdConfig::legacy(PhysAddr(SECOND))).expect("second unit"),
    ))
    .expect("second unit on the bus");
    r.device(rid(0, 2, 0), None);
    r.device(rid(0, 3, 0), None);
    let bytes = r.bytes();
    assert!(Image::from_bytes("ok.elf", bytes.clone(), OpenAs::Elf).is_ok());
    assert!(emulator::snapshot::from_bytes(&bytes).is_ok());
    let d0 = device_note_desc(&bytes) + 8;
    let d1 = d0 + 24;
    let mut repeated = bytes.clone();
    repeated.copy_within(d0..d0 + 24, d1);
    let mut split = repeated.clone();
    split[d1 + 4..d1 + 8].copy_from_slice(&1u32.to_le_bytes());
    split[d1 + 8..d1 + 12].copy_from_slice(&5u32.to_le_bytes());
    split[d1 + 16..d1 + 24].copy_from_slice(&SECOND.to_le_bytes());
    let r0 = rid(0, 2, 0);
    for (name, bad, want) in [
        (
            "repeated",
            repeated,
            LayoutError::DuplicateDevice {
                device: 1,
                first: 0,
                rid: r0,
                pasid: None,
            },
        ),
        (
            "split",
            split,
            LayoutError::ConflictingRoute {
                device: 1,
                rid: r0,
                unit: SECOND,
                existing: UNIT.0,
            },
        ),
    ] {
        match Image::from_bytes(name, bad.clone(), OpenAs::Elf) {
            Err(InspectError::Layout(e)) => assert_eq!(e, want, "{name}: inspector"),
            other => panic!("{name}: inspector gave {other:?}"),
        }
        match emulator::snapshot::from_bytes(&bad) {
            Err(emulator::snapshot::SnapshotError::Layout(e)) => {
                assert_eq!(e, want, "{name}: emulator")
            }
            Err(e) => panic!("{name}: emulator gave {e}"),
            Ok(_) => panic!("{name}: emulator loaded it"),
        }
    }
}

/// A minimal emulator snapshot: a machine note with `ram` and no unit or device, one
/// PT_LOAD per `(paddr, size)` of `loads`, all reading the same zero bytes of the file.
fn many_segment_snapshot(ram: &[(u64, u64)], loads: &[(u64, u64)]) -> Vec<u8> {
    let phnum = 1 + loads.len();
    let mut desc = Vec::new();
    for w in [1u32, ram.len() as u32, 0, 0] {
        desc.extend_from_slice(&w.to_le_bytes());
    }
    for &(b, z) in ram {
        desc.extend_from_slice(&b.to_le_bytes());
        desc.extend_from_slice(&z.to_le_bytes());
    }
    let mut note = Vec::new();
    for w in [6u32, desc.len() as u32, 0x494f_4d01] {
        note.extend_from_slice(&w.to_le_bytes());
    }
    note.extend_from_slice(b"IOMMU\0\0\0");
    note.extend_from_slice(&desc);
    let note_off = 64 + 56 * phnum as u64;
    let data_off = (note_off + note.len() as u64).next_multiple_of(4096);
    let max = loads.iter().map(|l| l.1).max().unwrap_or(0);
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut ph = |t: u32, off: u64, paddr: u64, size: u64| {
        let mut h = [0u8; 56];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&off.to_le_bytes());
        h[16..24].copy_from_slice(&paddr.to_le_bytes());
        h[24..32].copy_from_slice(&paddr.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..48].copy_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&h);
    };
    ph(4, note_off, 0, note.len() as u64);
    for &(paddr, size) in loads {
        ph(1, data_off, paddr, size);
    }
    f.extend_from_slice(&note);
    f.resize((data_off + max) as usize, 0);
    f
}

/// 20,000 one-page RAM ranges with gaps between them, a PT_LOAD in each, and one
/// two-page PT_LOAD spanning two adjacent RAM ranges: accepted, every segment kept. The
/// same file with one segment moved into a gap, or grown into its neighbour, is refused
/// naming that segment. (The check is a sort and a sweep, not segments × ranges.)
#[test]
fn twenty_thousand_segments_in_twenty_thousand_ram_ranges_are_checked_by_a_sweep() {
    const N: u64 = 20_000;
    let span = N * 0x2000;
    let mut ram: Vec<(u64, u64)> = (0..N).map(|i| (i * 0x2000, 0x1000)).collect();
    ram.push((span, 0x1000));
    ram.push((span + 0x1000, 0x1000));
    // Listed in reverse: the readers sort.
    ram.reverse();
    let mut loads: Vec<(u64, u64)> = (0..N).map(|i| (i * 0x2000, 0x1000)).collect();
    loads.push((span, 0x2000));
    loads.reverse();
    let img = Image::from_bytes("many.elf", many_segment_snapshot(&ram, &loads), OpenAs::Elf)
        .expect("accepted");
    assert_eq!(img.kind(), ImageKind::Snapshot);
    assert_eq!(img.segments().len(), N as usize + 1);
    assert_eq!(img.ram().len(), N as usize + 2);
    assert!(img.segments().windows(2).all(|w| w[0].paddr < w[1].paddr));
    let mut b = [0u8; 8];
    img.read(PhysAddr(span + 0x1ff8), &mut b).unwrap();
    assert!(matches!(
        img.read(PhysAddr(0x1000), &mut b),
        Err(MemError::Unbacked { .. })
    ));
    // Segment 7777 (program header index 1 + N - 7777 after the reverse) moved into the
    // gap after it.
    let header = |i: u64| 64 + 56 * (1 + (N - i)); // loads[k] has paddr (N - k) * 0x2000
    let mut moved = loads.clone();
    let k = moved.iter().position(|l| l.0 == 7777 * 0x2000).unwrap();
    moved[k].0 += 0x1000;
    match Image::from_bytes("gap.elf", many_segment_snapshot(&ram, &moved), OpenAs::Elf) {
        Err(InspectError::Layout(LayoutError::OutsideRam { header: h, addr })) => {
            assert_eq!(addr, 7777 * 0x2000 + 0x1000);
            assert_eq!(h, header(7777));
        }
        other => panic!("expected outside-RAM, got {other:?}"),
    }
    // Segment 12345 grown to three pages and 12346 to two: they overlap partly.
    let mut grown = loads.clone();
    let k = grown.iter().position(|l| l.0 == 12345 * 0x2000).unwrap();
    grown[k].1 = 0x3000;
    grown[k - 1].1 = 0x2000;
    match Image::from_bytes(
        "grown.elf",
        many_segment_snapshot(&ram, &grown),
        OpenAs::Elf,
    ) {
        Err(InspectError::Layout(LayoutError::Overlap { first, addr, .. })) => {
            assert_eq!(addr, 12346 * 0x2000);
            assert_eq!(first, header(12345));
        }
        other => panic!("expected an overlap, got {other:?}"),
    }
}
