//! Snapshots: lossless round trip, readable by a generic ELF parser, atomic save, and a
//! typed error (never a panic) for every kind of damage.

mod common;

use common::*;
use emulator::dma::{DmaAgent, DmaChecker};
use emulator::machine::{Device, Machine};
use emulator::memory::PAGE_SIZE;
use emulator::model::UnitKind;
use emulator::snapshot::{
    self, RestoreError, SnapshotError, NT_IOMMU_DEVICES, NT_IOMMU_MACHINE, NT_IOMMU_POISON,
    NT_IOMMU_UNIT,
};
use iommu_core::image::LayoutError;
use iommu_core::mem::PhysMem;
use iommu_core::{Iova, Pasid, PhysAddr, RequesterId};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{elf, LittleEndian as LE, Object, ObjectSegment};
use std::path::Path;

/// A machine with two units, three devices (one with a PASID), memory in both RAM
/// ranges (several runs, partly poisoned pages) and some DMA done.
fn sample() -> Machine {
    let mut m = two_unit_machine();
    m.add_device(Device {
        rid: DEV_B,
        pasid: Some(Pasid(0x1234)),
        unit: UNIT_B,
    })
    .unwrap();
    map(&mut m, TABLE_A, 0, 0x20_0000, PTE_R | PTE_W);
    map(&mut m, TABLE_A, 1, 0x1_0000_1000, PTE_R | PTE_W);
    map(&mut m, TABLE_B, 5, 0x20_1000, PTE_R);
    let a = DmaAgent::new(DEV_A);
    m.dma_write(&a, Iova(0x10), b"hello, snapshot").unwrap();
    m.dma_write(&a, Iova(0xff0), &[0x77; 0x20]).unwrap();
    m.mem_mut()
        .write(PhysAddr(0x20_1000), &[0x42; 4096])
        .unwrap();
    m.mem_mut().poison_range(PhysAddr(0x20_1800), 3).unwrap();
    m.mmio_write(PhysAddr(UNIT_B.0 + REG_SKEW), 8, 0).unwrap();
    m
}

fn load(bytes: &[u8]) -> Result<Machine, SnapshotError> {
    snapshot::from_bytes_with(bytes, &fake_restorer)
}

/// Raw bytes and poison state of every populated page.
fn memory_image(m: &Machine) -> Vec<(u64, Vec<u8>, Option<PhysAddr>)> {
    let mem = m.mem();
    let mut out = Vec::new();
    for r in mem.populated_runs() {
        let mut raw = vec![0u8; r.size() as usize];
        mem.read_raw(PhysAddr(r.start()), &mut raw).unwrap();
        let poison = mem.first_poisoned(PhysAddr(r.start()), r.size()).unwrap();
        out.push((r.start(), raw, poison));
    }
    out
}

#[test]
fn round_trip_is_lossless_and_byte_identical() {
    let m = sample();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.core");
    snapshot::save(&m, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, snapshot::to_bytes(&m));

    let mut l = snapshot::load_with(&path, &fake_restorer).unwrap();
    assert_eq!(
        snapshot::to_bytes(&l),
        bytes,
        "save, load, save gives the same bytes"
    );
    assert_eq!(memory_image(&l), memory_image(&m));
    assert_eq!(l.mem().ram_ranges(), m.mem().ram_ranges());
    assert_eq!(l.devices(), m.devices());
    let regs = |m: &Machine| -> Vec<_> {
        m.units()
            .map(|u| (u.mmio_base(), u.save_registers()))
            .collect()
    };
    assert_eq!(regs(&l), regs(&m));

    // Poison survived byte for byte: the three poisoned bytes, and never-written bytes.
    assert_eq!(
        l.mem().read_u8(PhysAddr(0x20_1801)),
        Err(iommu_core::MemError::Poisoned {
            addr: PhysAddr(0x20_1801)
        })
    );
    assert_eq!(l.mem().read_u8(PhysAddr(0x20_1803)), Ok(0x42));
    assert_eq!(
        l.mem().read_u8(PhysAddr(0x20_0000)),
        Err(iommu_core::MemError::Poisoned {
            addr: PhysAddr(0x20_0000)
        })
    );

    // The loaded machine translates the same.
    let mut c = DmaChecker::new();
    let a = DmaAgent::new(DEV_A);
    assert!(c.read_returns(&mut l, &a, Iova(0x10), b"hello, snapshot"));
    assert!(c.read_returns(&mut l, &a, Iova(0xff0), &[0x77; 0x20]));
    assert!(c.write_lands(&mut l, &a, Iova(0x1000), &[1; 8], PhysAddr(0x1_0000_1000)));
    assert!(c.report().is_clean(), "{}", c.report());
}

trait ReadU8 {
    fn read_u8(&self, addr: PhysAddr) -> Result<u8, iommu_core::MemError>;
}
impl<M: PhysMem> ReadU8 for M {
    fn read_u8(&self, addr: PhysAddr) -> Result<u8, iommu_core::MemError> {
        let mut b = [0u8];
        self.read(addr, &mut b).map(|()| b[0])
    }
}

#[test]
fn a_generic_elf_reader_sees_the_memory_and_the_notes() {
    let m = sample();
    let bytes = snapshot::to_bytes(&m);
    let file = ElfFile64::<LE>::parse(bytes.as_slice()).expect("object parses the snapshot");
    let header = file.elf_header();
    assert_eq!(header.e_type(LE), elf::ET_CORE);
    assert_eq!(header.e_machine(LE), elf::EM_X86_64);
    // The PT_LOAD segments are exactly the populated runs, with p_paddr = PA.
    let runs = m.mem().populated_runs();
    let loads: Vec<_> = file
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(LE) == elf::PT_LOAD)
        .collect();
    assert_eq!(loads.len(), runs.len());
    for (p, r) in loads.iter().zip(&runs) {
        assert_eq!(p.p_paddr(LE), r.start());
        assert_eq!(p.p_vaddr(LE), r.start());
        assert_eq!(p.p_filesz(LE), r.size());
        assert_eq!(p.p_offset(LE) % PAGE_SIZE, 0);
    }
    // The segment at 0x20_0000 holds the bytes DMA wrote at IOVA 0x10.
    let seg = file
        .segments()
        .find(|s| s.address() == 0x20_0000)
        .expect("segment at 0x200000");
    let data = seg.data().unwrap();
    assert_eq!(&data[0x10..0x1f], b"hello, snapshot");
    // Notes: one machine, two units, one device list, one poison map.
    let mut types = Vec::new();
    for p in file.elf_program_headers() {
        if let Some(mut notes) = p.notes(LE, bytes.as_slice()).unwrap() {
            while let Some(n) = notes.next().unwrap() {
                assert_eq!(n.name(), b"IOMMU");
                types.push(n.n_type(LE).0);
            }
        }
    }
    assert_eq!(
        types,
        vec![
            NT_IOMMU_MACHINE,
            NT_IOMMU_UNIT,
            NT_IOMMU_UNIT,
            NT_IOMMU_DEVICES,
            NT_IOMMU_POISON
        ]
    );
}

#[test]
fn smmu_only_machines_are_aarch64_cores() {
    let mut m = Machine::with_ram(&RAM).unwrap();
    m.add_unit(Box::new(FakeUnit::with_kind(UNIT_A, UnitKind::Smmuv3)))
        .unwrap();
    let bytes = snapshot::to_bytes(&m);
    assert_eq!(
        u16::from_le_bytes([bytes[18], bytes[19]]),
        elf::EM_AARCH64.0
    );
    let l = load(&bytes).unwrap();
    assert_eq!(l.units().next().map(|u| u.kind()), Some(UnitKind::Smmuv3));
    // A machine with no unit at all is an x86-64 core and loads back empty.
    let empty = Machine::with_ram(&RAM).unwrap();
    let bytes = snapshot::to_bytes(&empty);
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), elf::EM_X86_64.0);
    let l = load(&bytes).unwrap();
    assert_eq!(l.units().count(), 0);
    assert_eq!(l.mem().populated_pages(), 0);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = snapshot::to_bytes(&sample());
    for len in 0..bytes.len() {
        match load(&bytes[..len]) {
            Err(
                SnapshotError::Truncated { file_len, .. }
                | SnapshotError::SegmentBeyondFile { file_len, .. },
            ) => assert_eq!(file_len, len as u64),
            Err(e) => panic!("truncated at {len:#x}: unexpected error kind {e}"),
            Ok(_) => panic!("truncated at {len:#x}: loaded"),
        }
    }
}

#[test]
fn corrupting_any_header_or_note_byte_never_panics() {
    let bytes = snapshot::to_bytes(&sample());
    let data_start = notes_range(&bytes).1 as usize;
    let (mut errors, mut loaded) = (0, 0);
    for off in 0..data_start {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[off] ^= x;
            match load(&b) {
                Err(_) => errors += 1,
                Ok(m) => {
                    // Some bytes are free (p_vaddr, p_flags, padding, register values,
                    // poison bitmaps): whatever loads must save and load back the same.
                    loaded += 1;
                    let again = snapshot::to_bytes(&m);
                    let m2 = load(&again).unwrap_or_else(|e| panic!("flip at {off:#x}: {e}"));
                    assert_eq!(snapshot::to_bytes(&m2), again, "flip at {off:#x}");
                }
            }
        }
    }
    assert!(errors > 0 && loaded > 0, "{errors} errors, {loaded} loaded");
    // Flipping data bytes changes memory, nothing else.
    let mut b = bytes.clone();
    let first_load_offset = 4096usize * (data_start.div_ceil(4096));
    b[first_load_offset] ^= 0xff;
    assert!(load(&b).is_ok());
}

/// File offsets of the PT_NOTE segment's start and end.
fn notes_range(bytes: &[u8]) -> (u64, u64) {
    let ph = 64;
    let off = u64::from_le_bytes(bytes[ph + 8..ph + 16].try_into().unwrap());
    let size = u64::from_le_bytes(bytes[ph + 32..ph + 40].try_into().unwrap());
    (off, off + size)
}

/// (offset of the note, its type, offset of its descriptor, descriptor size).
fn notes(bytes: &[u8]) -> Vec<(usize, u32, usize, usize)> {
    let (start, end) = notes_range(bytes);
    let mut pos = start as usize;
    let mut out = Vec::new();
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    while pos < end as usize {
        let (namesz, descsz, t) = (word(pos), word(pos + 4), word(pos + 8) as u32);
        let desc = pos + 12 + namesz.div_ceil(4) * 4;
        out.push((pos, t, desc, descsz));
        pos = desc + descsz.div_ceil(4) * 4;
    }
    out
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn each_kind_of_damage_gets_its_own_error() {
    let bytes = snapshot::to_bytes(&sample());
    let ns = notes(&bytes);
    let unit_note = ns.iter().find(|n| n.1 == NT_IOMMU_UNIT).unwrap();
    let machine_note = ns[0];
    let phdr = |i: usize| 64 + 56 * i;

    let mut b = bytes.clone();
    b[1] = b'e';
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadHeader { offset: 0, .. })
    ));

    let mut b = bytes.clone();
    b[4] = 1;
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadHeader { offset: 4, .. })
    ));

    let mut b = bytes.clone();
    b[16] = 2; // ET_EXEC
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadHeader {
            offset: 16,
            found: 2,
            ..
        })
    ));

    // A PT_LOAD whose data lies beyond the end of the file.
    let mut b = bytes.clone();
    put_u64(&mut b, phdr(1) + 8, bytes.len() as u64);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::SegmentBeyondFile { index: 1, offset, .. }) if offset == phdr(1) as u64
    ));

    // Two PT_LOADs of one page at the same physical address, with different bytes.
    let mut b = bytes.clone();
    let paddr1 = u64::from_le_bytes(b[phdr(1) + 24..phdr(1) + 32].try_into().unwrap());
    put_u64(&mut b, phdr(2) + 24, paddr1);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::Layout(LayoutError::RepeatDiffers { .. }))
    ));

    // A PT_LOAD outside RAM.
    let mut b = bytes.clone();
    put_u64(&mut b, phdr(1) + 24, 0x8000_0000);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::Layout(LayoutError::OutsideRam {
            addr: 0x8000_0000,
            ..
        }))
    ));

    // A PT_LOAD with an unaligned physical address.
    let mut b = bytes.clone();
    put_u64(&mut b, phdr(1) + 24, paddr1 + 8);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::Layout(LayoutError::UnalignedPaddr { header, .. })) if header == phdr(1) as u64
    ));

    // A note whose descriptor runs past the note segment.
    let mut b = bytes.clone();
    put_u32(&mut b, machine_note.0 + 4, 0x10_0000);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadNote { offset, .. }) if offset == machine_note.0 as u64
    ));

    // A unit note one register entry short: the size does not match its count.
    let mut b = bytes.clone();
    let nregs = u32::from_le_bytes(b[unit_note.2 + 4..unit_note.2 + 8].try_into().unwrap());
    put_u32(&mut b, unit_note.2 + 4, nregs + 1);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadNoteSize { offset, note_type: NT_IOMMU_UNIT, .. }) if offset == unit_note.0 as u64
    ));

    // An unknown unit kind.
    let mut b = bytes.clone();
    put_u32(&mut b, unit_note.2, 9);
    assert_eq!(
        load(&b).err(),
        Some(SnapshotError::UnknownUnitKind {
            offset: unit_note.2 as u64,
            code: 9
        })
    );

    // VT-d registers relabelled as an AMD-Vi unit: the AMD-Vi model refuses them.
    let mut b = bytes.clone();
    put_u32(&mut b, unit_note.2, snapshot::UNIT_KIND_AMDVI);
    assert!(matches!(
        snapshot::from_bytes(&b),
        Err(SnapshotError::UnitRestore {
            kind: UnitKind::AmdVi,
            error: RestoreError::AmdVi(_),
            ..
        })
    ));

    // A register that the model refuses, and a malformed register entry.
    let mut b = bytes.clone();
    put_u64(&mut b, unit_note.2 + 24, 0x20);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::UnitRestore {
            error: RestoreError::Invalid(_),
            ..
        })
    ));
    let mut b = bytes.clone();
    put_u32(&mut b, unit_note.2 + 24 + 8, 2);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadRegister { offset, .. }) if offset == unit_note.2 as u64 + 24
    ));

    // A newer format version.
    let mut b = bytes.clone();
    put_u32(&mut b, machine_note.2, 2);
    assert_eq!(
        load(&b).err(),
        Some(SnapshotError::UnsupportedVersion {
            offset: machine_note.2 as u64,
            found: 2,
            supported: 1
        })
    );

    // An unknown note type under our name.
    let mut b = bytes.clone();
    put_u32(&mut b, machine_note.0 + 8, 0x77);
    assert_eq!(
        load(&b).err(),
        Some(SnapshotError::UnknownNoteType {
            offset: machine_note.0 as u64,
            note_type: 0x77
        })
    );

    // A device behind a unit that is not there.
    let dev_note = ns.iter().find(|n| n.1 == NT_IOMMU_DEVICES).unwrap();
    let mut b = bytes.clone();
    put_u64(&mut b, dev_note.2 + 8 + 16, 0x1000);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::Layout(LayoutError::NoSuchUnit {
            device: 0,
            unit: 0x1000
        }))
    ));

    // A poison entry for a page outside every PT_LOAD.
    let poison_note = ns.iter().find(|n| n.1 == NT_IOMMU_POISON).unwrap();
    let mut b = bytes.clone();
    put_u64(&mut b, poison_note.2 + 8, 0x3f_f000);
    assert!(matches!(
        load(&b),
        Err(SnapshotError::BadPoisonEntry {
            page: PhysAddr(0x3f_f000),
            ..
        })
    ));

    // e_machine that the units do not imply.
    let mut b = bytes.clone();
    b[18..20].copy_from_slice(&elf::EM_AARCH64.0.to_le_bytes());
    assert!(matches!(
        load(&b),
        Err(SnapshotError::MachineTypeMismatch { .. })
    ));
}

#[test]
fn a_failed_save_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("snap.core");
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // A write that fails half-way: nothing under the target name, no temporary left.
    let e = snapshot::write_atomically(&target, |w| {
        w.write_all(&[0u8; 10_000])?;
        Err(std::io::Error::other("disk full"))
    });
    assert!(
        matches!(e, Err(SnapshotError::Io { op: "writing", .. })),
        "{e:?}"
    );
    assert!(listing(dir.path()).is_empty());

    // Over an existing snapshot: the old file stays intact.
    let m = sample();
    snapshot::save(&m, &target).unwrap();
    let old = std::fs::read(&target).unwrap();
    let e = snapshot::write_atomically(&target, |w| {
        w.write_all(b"\x7fELF garbage")?;
        Err(std::io::Error::other("interrupted"))
    });
    assert!(e.is_err());
    assert_eq!(std::fs::read(&target).unwrap(), old);
    assert_eq!(listing(dir.path()), vec!["snap.core".to_string()]);

    // A directory that does not exist.
    let missing = dir.path().join("no/such/dir/snap.core");
    assert!(matches!(
        snapshot::save(&m, &missing),
        Err(SnapshotError::Io { .. })
    ));
    assert!(!missing.exists());
    assert!(matches!(
        snapshot::load(&missing),
        Err(SnapshotError::Io { op: "reading", .. })
    ));
}

#[test]
fn devices_with_pasids_and_segments_survive() {
    let mut m = Machine::with_ram(&RAM).unwrap();
    m.add_unit(Box::new(FakeUnit::new(UNIT_A))).unwrap();
    let devs = [
        Device {
            rid: RequesterId::new(0xffff, 0xff, 31, 7),
            pasid: Some(Pasid(0xf_ffff)),
            unit: UNIT_A,
        },
        Device {
            rid: RequesterId::new(0xffff, 0xff, 31, 7),
            pasid: None,
            unit: UNIT_A,
        },
    ];
    for d in devs {
        m.add_device(d).unwrap();
    }
    let l = load(&snapshot::to_bytes(&m)).unwrap();
    assert_eq!(l.devices(), &devs);
}

/// A real VT-d unit goes through a snapshot with its translation state: after loading,
/// the unit still translates (here: faults every request at the empty root table with
/// the same fault reason), and the register set is identical.
#[test]
fn a_vtd_unit_survives_a_snapshot_with_translation_on() {
    use emulator::vtd::{VtdConfig, VtdUnit};
    use iommu_core::RegisterAccess;
    // Linux drivers/iommu/intel/iommu.h: DMAR_GCMD_REG 0x18, DMAR_GSTS_REG 0x1c,
    // DMAR_RTADDR_REG 0x20, DMA_GCMD_TE / DMA_GSTS_TES = 1 << 31,
    // DMA_GCMD_SRTP / DMA_GSTS_RTPS = 1 << 30.
    const GCMD: u64 = 0x18;
    const GSTS: u64 = 0x1c;
    const RTADDR: u64 = 0x20;
    const TE: u32 = 1 << 31;
    const SRTP: u32 = 1 << 30;
    // Linux drivers/iommu/intel/dmar.c dma_remap_fault_reasons[1]: "Present bit in root
    // entry is clear".
    const ROOT_NOT_PRESENT: u32 = 0x1;

    let mut m = Machine::with_ram(&RAM).unwrap();
    let unit = VtdUnit::new(VtdConfig::legacy(UNIT_A)).expect("legacy VT-d unit");
    m.add_unit(Box::new(unit)).unwrap();
    let a = m
        .add_device(Device {
            rid: DEV_A,
            pasid: None,
            unit: UNIT_A,
        })
        .unwrap();
    let root = PhysAddr(0x40_0000);
    m.mem_mut().write(root, &[0u8; 4096]).unwrap();
    {
        let mut regs = m.unit_regs(UNIT_A).unwrap();
        regs.write64(RTADDR, root.0);
        regs.write32(GCMD, SRTP);
        assert_eq!(regs.read32(GSTS) & SRTP, SRTP, "root pointer latched");
        regs.write32(GCMD, TE);
        assert_eq!(regs.read32(GSTS) & TE, TE, "translation enabled");
    }
    let fault_code = |m: &mut Machine| match m.dma_read(&a, Iova(0x1000), &mut [0u8; 8]) {
        Err(emulator::dma::TransferError::Dma {
            error: emulator::model::DmaError::Fault(f),
            ..
        }) => f.code,
        other => panic!("expected a fault, got {other:?}"),
    };
    assert_eq!(fault_code(&mut m), ROOT_NOT_PRESENT);

    let bytes = snapshot::to_bytes(&m);
    let mut l = snapshot::from_bytes(&bytes).expect("VT-d snapshot loads");
    assert_eq!(snapshot::to_bytes(&l), bytes);
    let regs = |m: &Machine| -> Vec<_> { m.units().map(|u| u.save_registers()).collect() };
    assert_eq!(regs(&l), regs(&m));
    {
        let mut r = l.unit_regs(UNIT_A).unwrap();
        assert_eq!(r.read64(RTADDR), root.0);
        assert_eq!(r.read32(GSTS) & (TE | SRTP), TE | SRTP);
    }
    assert_eq!(fault_code(&mut l), ROOT_NOT_PRESENT);
}

/// The layout rules the inspector shares (`iommu_core::image`): a PT_LOAD repeating a
/// page another PT_LOAD holds is dropped when its bytes are identical and refused when
/// they differ; an unaligned `p_paddr` and a device behind a missing unit are refused.
/// The inspector's tests feed it the same damaged files.
#[test]
fn shared_layout_rules_repeats_alignment_and_device_units() {
    let bytes = snapshot::to_bytes(&sample());
    let phdr = |i: usize| 64 + 56 * i;
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (p1, p2) = (phdr(1), phdr(2));
    let paddr1 = word(&bytes, p1 + 24);
    assert_eq!(word(&bytes, p1 + 32), 4096, "first PT_LOAD is one page");
    // PT_LOAD 2 becomes a repeat of PT_LOAD 1's page, its bytes pointing at PT_LOAD 1's.
    let mut same = bytes.clone();
    put_u64(&mut same, p2 + 24, paddr1);
    put_u64(&mut same, p2 + 32, 4096);
    put_u64(&mut same, p2 + 40, 4096);
    let mut differ = same.clone();
    put_u64(&mut same, p2 + 8, word(&bytes, p1 + 8));
    // Its own bytes (PT_LOAD 2's first page) differ from PT_LOAD 1's page.
    let off2 = word(&bytes, p2 + 8) as usize;
    let off1 = word(&bytes, p1 + 8) as usize;
    differ[off2..off2 + 4096].copy_from_slice(&bytes[off1..off1 + 4096]);
    differ[off2 + 7] ^= 0xff;
    assert!(matches!(
        load(&differ),
        Err(SnapshotError::Layout(LayoutError::RepeatDiffers { first, second, addr }))
            if first == p1 as u64 && second == p2 as u64 && addr == paddr1 + 7
    ));
    // The identical repeat is dropped; what PT_LOAD 2 held is gone, so a poison entry
    // or a page there may now be refused for that reason, never for the repeat.
    match load(&same) {
        Ok(_) => {}
        Err(SnapshotError::Layout(e)) => panic!("identical repeat refused: {e}"),
        Err(_) => {}
    }
    let mut unaligned = bytes.clone();
    put_u64(&mut unaligned, p1 + 24, paddr1 + 8);
    assert!(matches!(
        load(&unaligned),
        Err(SnapshotError::Layout(LayoutError::UnalignedPaddr { header, paddr }))
            if header == p1 as u64 && paddr == paddr1 + 8
    ));
    let dev = notes(&bytes)
        .into_iter()
        .find(|n| n.1 == NT_IOMMU_DEVICES)
        .unwrap();
    let mut orphan = bytes.clone();
    put_u64(&mut orphan, dev.2 + 8 + 16, 0xdead_0000);
    assert!(matches!(
        load(&orphan),
        Err(SnapshotError::Layout(LayoutError::NoSuchUnit {
            device: 0,
            unit: 0xdead_0000
        }))
    ));
}
