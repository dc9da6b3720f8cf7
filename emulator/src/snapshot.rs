//! Snapshots: a machine saved as, and loaded from, an ELF core file.
//!
//! The file is an ELF64 little-endian `ET_CORE` file that other tools can read:
//!
//! - one `PT_LOAD` segment per run of contiguous populated pages of memory (pages holding
//!   at least one valid byte), `p_paddr = p_vaddr =` the physical address, the raw bytes
//!   in the file (`p_filesz = p_memsz`, file offset 4 KiB aligned). Poisoned bytes inside
//!   these pages hold the poison pattern ([`crate::memory::POISON_WORD`]); RAM outside
//!   every `PT_LOAD` is poison;
//! - one `PT_NOTE` segment, first, holding notes named `"IOMMU"`: the machine note (format
//!   version and RAM layout), one unit note per IOMMU unit (kind, MMIO window, register
//!   values), the device note (requester, PASID, unit) and the poison note (a validity
//!   bitmap for every page inside a `PT_LOAD` that holds some poisoned bytes).
//!
//! `e_machine` is `EM_AARCH64` when every unit is an SMMUv3 and `EM_X86_64` otherwise.
//! More than 65534 segments use the `PN_XNUM` extension (the count in `sh_info` of
//! section header 0), as Linux core dumps do. The byte layouts are in
//! `README.md` ("Snapshot format").
//!
//! [`save`] is atomic: the file is written under a temporary name in the target's
//! directory and renamed over the target only when complete, so a failed save leaves
//! no partial file under the target name. [`load`] checks everything and returns a
//! [`SnapshotError`] naming the file offset and what is wrong; it never panics.
//!
//! Only architectural state is saved: memory, register values, devices. Caches (IOTLB,
//! context cache) start empty in a loaded machine, and the fault and error logs are not
//! saved.

use crate::amdvi::{AmdViRestoreError, AmdViUnit};
use crate::machine::{Device, Machine, MachineError};
use crate::memory::{
    MemoryConfigError, PageValidity, PageView, SparseMemory, PAGE_SIZE, VALID_WORDS,
};
use crate::model::{IommuModel, RegisterValue, UnitKind};
use crate::smmuv3::{SmmuV3RestoreError, SmmuV3Unit};
use crate::vtd::{VtdRestoreError, VtdUnit};
use iommu_core::image::{
    check_devices, check_in_ram, check_segments, DeviceEntry, LayoutError, LoadSegment,
};
use iommu_core::{Pasid, PhysAddr, RequesterId};
use object::elf;
use object::{pod, LittleEndian as LE, U16, U32, U64};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name of every note this format defines (`n_namesz` = 6 with the NUL).
pub const NOTE_NAME: &[u8] = b"IOMMU";
// Note types: "IOM" in the upper three bytes, so that no core-file reader mistakes them
// for the small standard types (gdb and readelf read type 1 as NT_PRSTATUS whatever the
// note's name).
/// Note type of the machine note: format version and RAM layout.
pub const NT_IOMMU_MACHINE: u32 = 0x494f_4d01;
/// Note type of a unit note: one IOMMU unit's kind, MMIO window and registers.
pub const NT_IOMMU_UNIT: u32 = 0x494f_4d02;
/// Note type of the device note: every device and the unit it is behind.
pub const NT_IOMMU_DEVICES: u32 = 0x494f_4d03;
/// Note type of the poison note: validity bitmaps of partly poisoned pages.
pub const NT_IOMMU_POISON: u32 = 0x494f_4d04;
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Unit kind code of a VT-d unit in a unit note.
pub const UNIT_KIND_VTD: u32 = 1;
/// Unit kind code of an AMD-Vi unit.
pub const UNIT_KIND_AMDVI: u32 = 2;
/// Unit kind code of an SMMUv3.
pub const UNIT_KIND_SMMUV3: u32 = 3;

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
const NHDR_SIZE: u64 = 12;
/// Fixed part of the machine note: version, range count, unit count, device count.
const MACHINE_FIXED: u64 = 16;
const RAM_ENTRY: u64 = 16;
/// Fixed part of a unit note: kind, register count, MMIO base, MMIO size.
const UNIT_FIXED: u64 = 24;
const REG_ENTRY: u64 = 24;
/// Fixed part of the device note and of the poison note: count, reserved.
const LIST_FIXED: u64 = 8;
const DEVICE_ENTRY: u64 = 24;
const POISON_ENTRY: u64 = 8 + VALID_WORDS as u64 * 8;
/// Device flag: the device has a PASID.
const DEVICE_HAS_PASID: u32 = 1;

/// The code of a unit kind in a unit note.
pub fn unit_kind_code(kind: UnitKind) -> u32 {
    match kind {
        UnitKind::Vtd => UNIT_KIND_VTD,
        UnitKind::AmdVi => UNIT_KIND_AMDVI,
        UnitKind::Smmuv3 => UNIT_KIND_SMMUV3,
    }
}

fn unit_kind_of(code: u32) -> Option<UnitKind> {
    match code {
        UNIT_KIND_VTD => Some(UnitKind::Vtd),
        UNIT_KIND_AMDVI => Some(UnitKind::AmdVi),
        UNIT_KIND_SMMUV3 => Some(UnitKind::Smmuv3),
        _ => None,
    }
}

/// The `e_machine` of a snapshot of these units: `EM_AARCH64` if there is at least one
/// unit and every unit is an SMMUv3, `EM_X86_64` otherwise.
pub fn elf_machine(mut kinds: impl Iterator<Item = UnitKind>) -> u16 {
    let mut any = false;
    let all_smmu = kinds.all(|k| {
        any = true;
        k == UnitKind::Smmuv3
    });
    if any && all_smmu {
        elf::EM_AARCH64.0
    } else {
        elf::EM_X86_64.0
    }
}

/// Why a snapshot could not be saved or loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The file system refused.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The kind of I/O error.
        kind: io::ErrorKind,
        /// The error's message.
        message: String,
    },
    /// The file ends before something it must contain.
    Truncated {
        /// Where the missing item starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// The file length.
        file_len: u64,
        /// What is missing.
        what: &'static str,
    },
    /// A field of the ELF file header has a value this format does not allow.
    BadHeader {
        /// Offset of the field.
        offset: u64,
        /// Which field and what it must be.
        what: &'static str,
        /// The value found.
        found: u64,
    },
    /// A program header has a value this format does not allow.
    BadSegment {
        /// Offset of the program header.
        offset: u64,
        /// Index of the segment.
        index: usize,
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        found: u64,
    },
    /// A segment's bytes run past the end of the file.
    SegmentBeyondFile {
        /// Offset of the program header.
        offset: u64,
        /// Index of the segment.
        index: usize,
        /// `p_offset`.
        start: u64,
        /// `p_filesz`.
        size: u64,
        /// The file length.
        file_len: u64,
    },
    /// The segments, RAM layout or devices break the layout rules every reader of
    /// memory images shares ([`iommu_core::image`]): unaligned `p_paddr`, partial pages,
    /// overlap, memory outside RAM, a device naming a missing unit.
    Layout(LayoutError),
    /// The file has no `PT_NOTE` segment, or more than one.
    NoteSegmentCount {
        /// How many there are.
        found: usize,
    },
    /// A note's header, name or descriptor is malformed or runs past its segment.
    BadNote {
        /// Offset of the note.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A note of this format has an unknown type.
    UnknownNoteType {
        /// Offset of the note.
        offset: u64,
        /// Its type.
        note_type: u32,
    },
    /// A note's descriptor size does not match what its counts imply.
    BadNoteSize {
        /// Offset of the note.
        offset: u64,
        /// Its type.
        note_type: u32,
        /// The size its contents require.
        expected: u64,
        /// `n_descsz`.
        found: u64,
    },
    /// A note that must appear exactly once is missing or repeated.
    NoteCount {
        /// Which note.
        what: &'static str,
        /// How many the file has.
        found: usize,
    },
    /// The format version is not one this code reads.
    UnsupportedVersion {
        /// Offset of the version field.
        offset: u64,
        /// The version found.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// A count in the machine note disagrees with the notes present.
    CountMismatch {
        /// Offset of the count.
        offset: u64,
        /// What is counted.
        what: &'static str,
        /// The count in the machine note.
        declared: u64,
        /// The number found.
        found: u64,
    },
    /// The RAM layout in the machine note is invalid.
    BadRamLayout {
        /// Offset of the machine note.
        offset: u64,
        /// What is wrong.
        error: MemoryConfigError,
    },
    /// A unit note names a unit kind this format does not define.
    UnknownUnitKind {
        /// Offset of the kind field.
        offset: u64,
        /// The code found.
        code: u32,
    },
    /// A register entry is malformed (width not 4 or 8, value wider than its width,
    /// offset outside the window, reserved field not zero).
    BadRegister {
        /// Offset of the register entry.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The unit could not be rebuilt from its registers.
    UnitRestore {
        /// Offset of the unit note.
        offset: u64,
        /// The unit's kind.
        kind: UnitKind,
        /// Its MMIO base.
        base: PhysAddr,
        /// Why.
        error: RestoreError,
    },
    /// The rebuilt unit's window differs from the one in the note.
    UnitWindowMismatch {
        /// Offset of the unit note.
        offset: u64,
        /// Base and size in the note.
        note: (PhysAddr, u64),
        /// Base and size of the rebuilt unit.
        unit: (PhysAddr, u64),
    },
    /// A device entry is malformed (flags, reserved field, PASID width).
    BadDevice {
        /// Offset of the device entry.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A unit or device could not be put on the machine.
    Machine {
        /// Offset of the note entry.
        offset: u64,
        /// What the machine said.
        error: MachineError,
    },
    /// A poison-map entry is malformed.
    BadPoisonEntry {
        /// Offset of the entry.
        offset: u64,
        /// The page it names.
        page: PhysAddr,
        /// What is wrong.
        what: &'static str,
    },
    /// `e_machine` is not what the units imply.
    MachineTypeMismatch {
        /// The value in the header.
        found: u16,
        /// The value the units imply.
        expected: u16,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SnapshotError as E;
        match self {
            E::Io {
                path,
                op,
                kind: _,
                message,
            } => write!(f, "{op} {}: {message}", path.display()),
            E::Truncated {
                offset,
                needed,
                file_len,
                what,
            } => write!(
                f,
                "at offset {offset:#x}: {what} needs {needed:#x} bytes but the file ends at {file_len:#x}"
            ),
            E::BadHeader {
                offset,
                what,
                found,
            } => write!(f, "ELF header at offset {offset:#x}: {what} (found {found:#x})"),
            E::BadSegment {
                offset,
                index,
                what,
                found,
            } => write!(
                f,
                "program header {index} at offset {offset:#x}: {what} (found {found:#x})"
            ),
            E::SegmentBeyondFile {
                offset,
                index,
                start,
                size,
                file_len,
            } => write!(
                f,
                "program header {index} at offset {offset:#x}: segment {start:#x}+{size:#x} runs past the end of the file at {file_len:#x}"
            ),
            E::Layout(e) => write!(f, "{e}"),
            E::NoteSegmentCount { found } => {
                write!(f, "a snapshot has exactly one PT_NOTE segment; this file has {found}")
            }
            E::BadNote { offset, what } => write!(f, "note at offset {offset:#x}: {what}"),
            E::UnknownNoteType { offset, note_type } => write!(
                f,
                "note at offset {offset:#x}: unknown IOMMU note type {note_type:#x}"
            ),
            E::BadNoteSize {
                offset,
                note_type,
                expected,
                found,
            } => write!(
                f,
                "note at offset {offset:#x} (type {note_type}): descriptor is {found:#x} bytes, its contents need {expected:#x}"
            ),
            E::NoteCount { what, found } => {
                write!(f, "a snapshot has exactly one {what}; this file has {found}")
            }
            E::UnsupportedVersion {
                offset,
                found,
                supported,
            } => write!(
                f,
                "at offset {offset:#x}: snapshot format version {found} is not supported (this reader reads version {supported})"
            ),
            E::CountMismatch {
                offset,
                what,
                declared,
                found,
            } => write!(
                f,
                "at offset {offset:#x}: the machine note declares {declared} {what}, the file has {found}"
            ),
            E::BadRamLayout { offset, error } => {
                write!(f, "machine note at offset {offset:#x}: {error}")
            }
            E::UnknownUnitKind { offset, code } => {
                write!(f, "at offset {offset:#x}: unknown unit kind {code}")
            }
            E::BadRegister { offset, what } => {
                write!(f, "register entry at offset {offset:#x}: {what}")
            }
            E::UnitRestore {
                offset,
                kind,
                base,
                error,
            } => write!(
                f,
                "unit note at offset {offset:#x}: cannot rebuild the {} unit at {base}: {error}",
                kind.name()
            ),
            E::UnitWindowMismatch { offset, note, unit } => write!(
                f,
                "unit note at offset {offset:#x}: window {}+{:#x} in the note, {}+{:#x} in the rebuilt unit",
                note.0, note.1, unit.0, unit.1
            ),
            E::BadDevice { offset, what } => {
                write!(f, "device entry at offset {offset:#x}: {what}")
            }
            E::Machine { offset, error } => write!(f, "at offset {offset:#x}: {error}"),
            E::BadPoisonEntry { offset, page, what } => {
                write!(f, "poison entry at offset {offset:#x} for page {page}: {what}")
            }
            E::MachineTypeMismatch { found, expected } => write!(
                f,
                "ELF header: e_machine is {found} but the units imply {expected}"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

fn io_error(path: &Path, op: &'static str, e: &io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.to_path_buf(),
        op,
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// Why a unit could not be rebuilt from saved registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreError {
    /// There is no model of this kind of unit.
    Unsupported,
    /// The VT-d model refused the register values.
    Vtd(VtdRestoreError),
    /// The AMD-Vi model refused the register values.
    AmdVi(AmdViRestoreError),
    /// The SMMUv3 model refused the register values.
    Smmuv3(SmmuV3RestoreError),
    /// Another model refused the register values.
    Invalid(String),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::Unsupported => f.write_str("the emulator has no model of this kind"),
            RestoreError::Vtd(e) => write!(f, "{e}"),
            RestoreError::AmdVi(e) => write!(f, "{e}"),
            RestoreError::Smmuv3(e) => write!(f, "{e}"),
            RestoreError::Invalid(why) => f.write_str(why),
        }
    }
}

/// Rebuilds units from their saved registers when a snapshot is loaded.
pub trait UnitRestorer {
    /// A unit of `kind` at `mmio_base` with the register values `regs`.
    fn restore(
        &self,
        kind: UnitKind,
        mmio_base: PhysAddr,
        regs: &[RegisterValue],
    ) -> Result<Box<dyn IommuModel>, RestoreError>;
}

impl<F> UnitRestorer for F
where
    F: Fn(UnitKind, PhysAddr, &[RegisterValue]) -> Result<Box<dyn IommuModel>, RestoreError>,
{
    fn restore(
        &self,
        kind: UnitKind,
        mmio_base: PhysAddr,
        regs: &[RegisterValue],
    ) -> Result<Box<dyn IommuModel>, RestoreError> {
        self(kind, mmio_base, regs)
    }
}

/// The emulator's own models: VT-d units are rebuilt with [`VtdUnit::restore`], AMD-Vi
/// units with [`AmdViUnit::restore`], SMMUv3 units with [`SmmuV3Unit::restore`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinModels;

impl UnitRestorer for BuiltinModels {
    fn restore(
        &self,
        kind: UnitKind,
        mmio_base: PhysAddr,
        regs: &[RegisterValue],
    ) -> Result<Box<dyn IommuModel>, RestoreError> {
        match kind {
            UnitKind::Vtd => match VtdUnit::restore(mmio_base, regs) {
                Ok(unit) => Ok(Box::new(unit)),
                Err(e) => Err(RestoreError::Vtd(e)),
            },
            UnitKind::AmdVi => match AmdViUnit::restore(mmio_base, regs) {
                Ok(unit) => Ok(Box::new(unit)),
                Err(e) => Err(RestoreError::AmdVi(e)),
            },
            UnitKind::Smmuv3 => match SmmuV3Unit::restore(mmio_base, regs) {
                Ok(unit) => Ok(Box::new(unit)),
                Err(e) => Err(RestoreError::Smmuv3(e)),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing.

fn put_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn push_note(out: &mut Vec<u8>, note_type: u32, desc: &[u8]) {
    let mut name = NOTE_NAME.to_vec();
    name.push(0);
    let hdr = elf::NoteHeader64::<LE> {
        n_namesz: U32::new(LE, name.len() as u32),
        n_descsz: U32::new(LE, desc.len() as u32),
        n_type: U32::new(LE, elf::NoteType(note_type)),
    };
    out.extend_from_slice(pod::bytes_of(&hdr));
    out.extend_from_slice(&name);
    out.resize(align_up(out.len() as u64, 4) as usize, 0);
    out.extend_from_slice(desc);
    out.resize(align_up(out.len() as u64, 4) as usize, 0);
}

/// The addresses of the pages of a run of pages.
fn pages_of(r: iommu_core::AlignedRange) -> impl Iterator<Item = u64> {
    (0..r.size() / PAGE_SIZE).map(move |k| r.start() + k * PAGE_SIZE)
}

/// The notes of a machine, in file order.
fn build_notes(
    machine: &Machine,
    mem: &SparseMemory,
    runs: &[iommu_core::AlignedRange],
) -> Vec<u8> {
    let mut notes = Vec::new();

    let units: Vec<&dyn IommuModel> = machine.units().collect();
    let mut d = Vec::new();
    put_u32(&mut d, FORMAT_VERSION);
    put_u32(&mut d, mem.ram_ranges().len() as u32);
    put_u32(&mut d, units.len() as u32);
    put_u32(&mut d, machine.devices().len() as u32);
    for r in mem.ram_ranges() {
        put_u64(&mut d, r.start());
        put_u64(&mut d, r.size());
    }
    push_note(&mut notes, NT_IOMMU_MACHINE, &d);

    for u in &units {
        let regs = u.save_registers();
        let mut d = Vec::new();
        put_u32(&mut d, unit_kind_code(u.kind()));
        put_u32(&mut d, regs.len() as u32);
        put_u64(&mut d, u.mmio_base().0);
        put_u64(&mut d, u.mmio_size());
        for r in &regs {
            put_u64(&mut d, r.offset);
            put_u32(&mut d, u32::from(r.width));
            put_u32(&mut d, 0);
            put_u64(&mut d, r.value);
        }
        push_note(&mut notes, NT_IOMMU_UNIT, &d);
    }

    let mut d = Vec::new();
    put_u32(&mut d, machine.devices().len() as u32);
    put_u32(&mut d, 0);
    for dev in machine.devices() {
        put_u16(&mut d, dev.rid.segment);
        d.push(dev.rid.bus);
        d.push(dev.rid.devfn);
        put_u32(
            &mut d,
            if dev.pasid.is_some() {
                DEVICE_HAS_PASID
            } else {
                0
            },
        );
        put_u32(&mut d, dev.pasid.map_or(0, |p| p.0));
        put_u32(&mut d, 0);
        put_u64(&mut d, dev.unit.0);
    }
    push_note(&mut notes, NT_IOMMU_DEVICES, &d);

    let mut entries = Vec::new();
    let mut count = 0u32;
    for pa in runs.iter().flat_map(|&r| pages_of(r)) {
        if let Some(PageView {
            validity: PageValidity::Partial(bits),
            ..
        }) = mem.page(PhysAddr(pa))
        {
            put_u64(&mut entries, pa);
            for w in bits {
                put_u64(&mut entries, *w);
            }
            count += 1;
        }
    }
    let mut d = Vec::new();
    put_u32(&mut d, count);
    put_u32(&mut d, 0);
    d.extend_from_slice(&entries);
    push_note(&mut notes, NT_IOMMU_POISON, &d);
    notes
}

/// The section header string table: the only section, so that generic ELF readers that
/// insist on one when section headers exist are happy.
const SHSTRTAB: &[u8] = b"\0.shstrtab\0";

/// Where everything goes in the file.
struct Layout {
    phnum: u64,
    xnum: bool,
    shoff: u64,
    shstrtab_off: u64,
    note_off: u64,
    data_off: u64,
}

fn layout(segments: u64, notes_len: u64, xnum_threshold: u64) -> Layout {
    let phnum = segments + 1;
    let shoff = EHDR_SIZE + phnum * PHDR_SIZE;
    let shstrtab_off = shoff + 2 * SHDR_SIZE;
    let note_off = align_up(shstrtab_off + SHSTRTAB.len() as u64, 8);
    Layout {
        phnum,
        xnum: phnum >= xnum_threshold,
        shoff,
        shstrtab_off,
        note_off,
        data_off: align_up(note_off + notes_len, PAGE_SIZE),
    }
}

fn write_machine(machine: &Machine, out: &mut dyn Write, xnum_threshold: u64) -> io::Result<u64> {
    let mem = machine.mem();
    let runs = mem.populated_runs();
    let notes = build_notes(machine, &mem, &runs);
    let l = layout(runs.len() as u64, notes.len() as u64, xnum_threshold);

    let ehdr = elf::FileHeader64::<LE> {
        e_ident: elf::Ident {
            magic: elf::ELFMAG,
            class: elf::ELFCLASS64,
            data: elf::ELFDATA2LSB,
            version: elf::EV_CURRENT,
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, elf::ET_CORE),
        e_machine: U16::new(
            LE,
            elf::Machine(elf_machine(machine.units().map(|u| u.kind()))),
        ),
        e_version: U32::new(LE, u32::from(elf::EV_CURRENT.0)),
        e_entry: U64::new(LE, 0),
        e_phoff: U64::new(LE, EHDR_SIZE),
        e_shoff: U64::new(LE, l.shoff),
        e_flags: U32::new(LE, elf::FileFlags(0)),
        e_ehsize: U16::new(LE, EHDR_SIZE as u16),
        e_phentsize: U16::new(LE, PHDR_SIZE as u16),
        e_phnum: U16::new(LE, if l.xnum { elf::PN_XNUM } else { l.phnum as u16 }),
        e_shentsize: U16::new(LE, SHDR_SIZE as u16),
        e_shnum: U16::new(LE, 2),
        e_shstrndx: U16::new(LE, elf::SymbolSection(1)),
    };
    let mut head = Vec::with_capacity(l.note_off as usize);
    head.extend_from_slice(pod::bytes_of(&ehdr));
    let phdr =
        |p_type, p_flags, off: u64, addr: u64, size: u64, align: u64| elf::ProgramHeader64::<LE> {
            p_type: U32::new(LE, p_type),
            p_flags: U32::new(LE, p_flags),
            p_offset: U64::new(LE, off),
            p_vaddr: U64::new(LE, addr),
            p_paddr: U64::new(LE, addr),
            p_filesz: U64::new(LE, size),
            p_memsz: U64::new(LE, size),
            p_align: U64::new(LE, align),
        };
    let note_ph = phdr(
        elf::PT_NOTE,
        elf::ProgramFlags(0),
        l.note_off,
        0,
        notes.len() as u64,
        4,
    );
    head.extend_from_slice(pod::bytes_of(&note_ph));
    let mut off = l.data_off;
    for r in &runs {
        let ph = phdr(
            elf::PT_LOAD,
            elf::PF_R | elf::PF_W,
            off,
            r.start(),
            r.size(),
            PAGE_SIZE,
        );
        head.extend_from_slice(pod::bytes_of(&ph));
        off += r.size();
    }
    let shdr =
        |name: u32, sh_type, offset: u64, size: u64, info: u32, align: u64| elf::SectionHeader64::<
            LE,
        > {
            sh_name: U32::new(LE, name),
            sh_type: U32::new(LE, sh_type),
            sh_flags: U64::new(LE, elf::SectionFlags(0)),
            sh_addr: U64::new(LE, 0),
            sh_offset: U64::new(LE, offset),
            sh_size: U64::new(LE, size),
            sh_link: U32::new(LE, 0),
            sh_info: U32::new(LE, info),
            sh_addralign: U64::new(LE, align),
            sh_entsize: U64::new(LE, 0),
        };
    // Section 0 carries the segment count when it does not fit in e_phnum (PN_XNUM).
    let count = if l.xnum { l.phnum as u32 } else { 0 };
    head.extend_from_slice(pod::bytes_of(&shdr(0, elf::SHT_NULL, 0, 0, count, 0)));
    let strtab = shdr(
        1,
        elf::SHT_STRTAB,
        l.shstrtab_off,
        SHSTRTAB.len() as u64,
        0,
        1,
    );
    head.extend_from_slice(pod::bytes_of(&strtab));
    head.extend_from_slice(SHSTRTAB);
    head.resize(l.note_off as usize, 0);
    out.write_all(&head)?;
    out.write_all(&notes)?;
    let pad = (l.data_off - l.note_off) as usize - notes.len();
    out.write_all(&vec![0u8; pad])?;
    let mut page = [0u8; PAGE_SIZE as usize];
    for pa in runs.iter().flat_map(|&r| pages_of(r)) {
        mem.read_raw(PhysAddr(pa), &mut page)
            .map_err(|e| io::Error::other(e.to_string()))?;
        out.write_all(&page)?;
    }
    Ok(off)
}

/// Writes the snapshot of `machine` to `out`; returns the number of bytes written.
pub fn write_to(machine: &Machine, out: &mut dyn Write) -> io::Result<u64> {
    write_machine(machine, out, u64::from(elf::PN_XNUM))
}

/// The snapshot of `machine` as bytes.
pub fn to_bytes(machine: &Machine) -> Vec<u8> {
    let mut v = Vec::new();
    // Writing to a Vec cannot fail, and reading the machine's own memory cannot either.
    let _ = write_to(machine, &mut v);
    v
}

/// Writes a file atomically: `fill` writes into a temporary file in `path`'s directory,
/// which is synced and renamed to `path` only if `fill` succeeds. On any failure the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), SnapshotError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".snapshot-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| io_error(dir, "creating a temporary file in", &e))?;
    {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w).map_err(|e| io_error(path, "writing", &e))?;
        w.flush().map_err(|e| io_error(path, "writing", &e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_error(path, "syncing", &e))?;
    tmp.persist(path)
        .map_err(|e| io_error(path, "renaming the finished snapshot to", &e.error))?;
    Ok(())
}

/// Saves `machine` to `path` atomically (see [`write_atomically`]).
pub fn save(machine: &Machine, path: &Path) -> Result<(), SnapshotError> {
    write_atomically(path, |w| write_to(machine, w).map(|_| ()))
}

// ---------------------------------------------------------------------------------------
// Reading.

struct File<'a> {
    data: &'a [u8],
}

impl<'a> File<'a> {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn bytes(&self, offset: u64, len: u64, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let trunc = SnapshotError::Truncated {
            offset,
            needed: len,
            file_len: self.len(),
            what,
        };
        let end = offset.checked_add(len).ok_or(trunc.clone())?;
        if end > self.len() {
            return Err(trunc);
        }
        // Both fit in the slice's length, which is a usize.
        Ok(&self.data[offset as usize..end as usize])
    }

    fn get<T: pod::Pod>(&self, offset: u64, what: &'static str) -> Result<&'a T, SnapshotError> {
        let b = self.bytes(offset, std::mem::size_of::<T>() as u64, what)?;
        pod::from_bytes::<T>(b)
            .map(|(t, _)| t)
            .map_err(|()| SnapshotError::Truncated {
                offset,
                needed: std::mem::size_of::<T>() as u64,
                file_len: self.len(),
                what,
            })
    }
}

/// Little-endian reads from a note descriptor whose size has been checked; offsets in
/// errors are file offsets.
struct Desc<'a> {
    data: &'a [u8],
    base: u64,
    pos: usize,
}

impl Desc<'_> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let b = self
            .data
            .get(self.pos..self.pos + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(SnapshotError::BadNote {
                offset: self.offset(),
                what: "descriptor ends inside a field",
            })?;
        self.pos += N;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

struct Note<'a> {
    offset: u64,
    note_type: u32,
    desc: Desc<'a>,
}

impl Note<'_> {
    fn expect_size(&self, expected: u64) -> Result<(), SnapshotError> {
        let found = self.desc.data.len() as u64;
        if found == expected {
            Ok(())
        } else {
            Err(SnapshotError::BadNoteSize {
                offset: self.offset,
                note_type: self.note_type,
                expected,
                found,
            })
        }
    }
    /// Checks that the descriptor holds at least `fixed` bytes.
    fn expect_at_least(&self, fixed: u64) -> Result<(), SnapshotError> {
        if (self.desc.data.len() as u64) < fixed {
            Err(SnapshotError::BadNoteSize {
                offset: self.offset,
                note_type: self.note_type,
                expected: fixed,
                found: self.desc.data.len() as u64,
            })
        } else {
            Ok(())
        }
    }
}

/// The notes named [`NOTE_NAME`] in the segment `[start, start + size)`.
fn parse_notes<'a>(file: &File<'a>, start: u64, size: u64) -> Result<Vec<Note<'a>>, SnapshotError> {
    let seg = file.bytes(start, size, "PT_NOTE segment")?;
    let mut notes = Vec::new();
    let mut pos = 0u64;
    let bad = |p: u64, what| SnapshotError::BadNote {
        offset: start + p,
        what,
    };
    while pos < size {
        if size - pos < NHDR_SIZE {
            return Err(bad(
                pos,
                "note header runs past the end of the PT_NOTE segment",
            ));
        }
        let h = &seg[pos as usize..(pos + NHDR_SIZE) as usize];
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let namesz = u64::from(word(0));
        let descsz = u64::from(word(4));
        let note_type = word(8);
        let name_start = pos + NHDR_SIZE;
        let desc_start = align_up(name_start + namesz, 4);
        if desc_start > size {
            return Err(bad(
                pos,
                "note name runs past the end of the PT_NOTE segment",
            ));
        }
        let desc_end = desc_start + descsz;
        if desc_end > size {
            return Err(bad(
                pos,
                "note descriptor runs past the end of the PT_NOTE segment",
            ));
        }
        let next = align_up(desc_end, 4).min(size);
        let name = &seg[name_start as usize..(name_start + namesz) as usize];
        if name.split_last() == Some((&0, NOTE_NAME)) {
            notes.push(Note {
                offset: start + pos,
                note_type,
                desc: Desc {
                    data: &seg[desc_start as usize..desc_end as usize],
                    base: start + desc_start,
                    pos: 0,
                },
            });
        } else if name.last().is_some_and(|&c| c != 0) {
            return Err(bad(pos, "note name is not NUL-terminated"));
        }
        pos = next;
    }
    Ok(notes)
}

type Load = LoadSegment;

/// Checks the ELF header; returns `e_machine`, `e_phoff` and the number of program
/// headers.
fn check_header(file: &File<'_>) -> Result<(u16, u64, u64), SnapshotError> {
    let eh: &elf::FileHeader64<LE> = file.get(0, "ELF file header")?;
    let id = &eh.e_ident;
    let e_machine = eh.e_machine.get(LE).0;
    let checks: [(u64, &'static str, u64, bool); 10] = [
        (
            0,
            "magic must be 7f 45 4c 46",
            u64::from(u32::from_be_bytes(id.magic)),
            id.magic == elf::ELFMAG,
        ),
        (
            4,
            "class must be ELFCLASS64 (2)",
            u64::from(id.class.0),
            id.class == elf::ELFCLASS64,
        ),
        (
            5,
            "data encoding must be little-endian (1)",
            u64::from(id.data.0),
            id.data == elf::ELFDATA2LSB,
        ),
        (
            6,
            "ident version must be 1",
            u64::from(id.version.0),
            id.version == elf::EV_CURRENT,
        ),
        (
            16,
            "e_type must be ET_CORE (4)",
            u64::from(eh.e_type.get(LE).0),
            eh.e_type.get(LE) == elf::ET_CORE,
        ),
        (
            18,
            "e_machine must be EM_X86_64 (62) or EM_AARCH64 (183)",
            u64::from(e_machine),
            e_machine == elf::EM_X86_64.0 || e_machine == elf::EM_AARCH64.0,
        ),
        (
            20,
            "e_version must be 1",
            u64::from(eh.e_version.get(LE)),
            eh.e_version.get(LE) == 1,
        ),
        (
            52,
            "e_ehsize must be 64",
            u64::from(eh.e_ehsize.get(LE)),
            u64::from(eh.e_ehsize.get(LE)) == EHDR_SIZE,
        ),
        (
            54,
            "e_phentsize must be 56",
            u64::from(eh.e_phentsize.get(LE)),
            u64::from(eh.e_phentsize.get(LE)) == PHDR_SIZE,
        ),
        (
            56,
            "e_phnum must not be 0 (there is always a PT_NOTE)",
            0,
            eh.e_phnum.get(LE) != 0,
        ),
    ];
    for (offset, what, found, ok) in checks {
        if !ok {
            return Err(SnapshotError::BadHeader {
                offset,
                what,
                found,
            });
        }
    }
    let phoff = eh.e_phoff.get(LE);
    let mut phnum = u64::from(eh.e_phnum.get(LE));
    if phnum == u64::from(elf::PN_XNUM) {
        // The real count is in sh_info of section header 0.
        let shoff = eh.e_shoff.get(LE);
        let shentsize = u64::from(eh.e_shentsize.get(LE));
        if shoff == 0 || shentsize != SHDR_SIZE {
            return Err(SnapshotError::BadHeader {
                offset: if shoff == 0 { 40 } else { 58 },
                what: "e_phnum is PN_XNUM: section header 0 (e_shoff, e_shentsize 64) must hold the count",
                found: if shoff == 0 { 0 } else { shentsize },
            });
        }
        let sh: &elf::SectionHeader64<LE> = file.get(shoff, "section header 0 (PN_XNUM count)")?;
        phnum = u64::from(sh.sh_info.get(LE));
    }
    file.bytes(phoff, phnum * PHDR_SIZE, "program header table")?;
    Ok((e_machine, phoff, phnum))
}

/// Reads the program headers: the one PT_NOTE segment `(offset, size)` and the
/// PT_LOADs sorted by physical address, checked for overlap.
fn read_segments(
    file: &File<'_>,
    phoff: u64,
    phnum: u64,
) -> Result<((u64, u64), Vec<Load>), SnapshotError> {
    let mut note_seg = Vec::new();
    let mut loads = Vec::new();
    for index in 0..phnum as usize {
        let offset = phoff + index as u64 * PHDR_SIZE;
        let ph: &elf::ProgramHeader64<LE> = file.get(offset, "program header")?;
        let seg = |what, found| SnapshotError::BadSegment {
            offset,
            index,
            what,
            found,
        };
        let start = ph.p_offset.get(LE);
        let size = ph.p_filesz.get(LE);
        if start.checked_add(size).map_or(true, |end| end > file.len()) {
            return Err(SnapshotError::SegmentBeyondFile {
                offset,
                index,
                start,
                size,
                file_len: file.len(),
            });
        }
        let p_type = ph.p_type.get(LE);
        if p_type == elf::PT_NOTE {
            note_seg.push((start, size));
        } else if p_type == elf::PT_LOAD {
            let paddr = ph.p_paddr.get(LE);
            if ph.p_memsz.get(LE) != size {
                return Err(seg("p_memsz must equal p_filesz", ph.p_memsz.get(LE)));
            }
            loads.push(Load {
                header: offset,
                paddr,
                size,
                offset: start,
            });
        } else {
            return Err(seg(
                "segment type must be PT_LOAD (1) or PT_NOTE (4)",
                u64::from(p_type.0),
            ));
        }
    }
    let note = match note_seg.as_slice() {
        [one] => *one,
        _ => {
            return Err(SnapshotError::NoteSegmentCount {
                found: note_seg.len(),
            })
        }
    };
    // Alignment, whole pages, overlap: the rules the inspector applies too.
    let loads = check_segments(loads, file.data, true).map_err(SnapshotError::Layout)?;
    Ok((note, loads))
}

/// The notes of this format, by type.
struct Notes<'a> {
    machine: Note<'a>,
    units: Vec<Note<'a>>,
    devices: Note<'a>,
    poison: Note<'a>,
}

fn sort_notes(notes: Vec<Note<'_>>) -> Result<Notes<'_>, SnapshotError> {
    let (mut machine, mut units, mut devices, mut poison) = (vec![], vec![], vec![], vec![]);
    for n in notes {
        match n.note_type {
            NT_IOMMU_MACHINE => machine.push(n),
            NT_IOMMU_UNIT => units.push(n),
            NT_IOMMU_DEVICES => devices.push(n),
            NT_IOMMU_POISON => poison.push(n),
            note_type => {
                return Err(SnapshotError::UnknownNoteType {
                    offset: n.offset,
                    note_type,
                })
            }
        }
    }
    fn one<'a>(mut v: Vec<Note<'a>>, what: &'static str) -> Result<Note<'a>, SnapshotError> {
        match (v.pop(), v.is_empty()) {
            (Some(n), true) => Ok(n),
            _ => Err(SnapshotError::NoteCount {
                what,
                found: v.len() + 1,
            }),
        }
    }
    Ok(Notes {
        machine: one(machine, "machine note (NT_IOMMU_MACHINE)")?,
        units,
        devices: one(devices, "device note (NT_IOMMU_DEVICES)")?,
        poison: one(poison, "poison note (NT_IOMMU_POISON)")?,
    })
}

/// The machine note's counts, with the offsets of the count fields.
struct Counts {
    units: (u64, u64),
    devices: (u64, u64),
}

/// Reads the machine note: checks the version, builds the memory from the RAM layout.
fn read_machine_note(m: &mut Note<'_>) -> Result<(SparseMemory, Counts), SnapshotError> {
    m.expect_at_least(MACHINE_FIXED)?;
    let version_offset = m.desc.offset();
    let version = m.desc.u32()?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            offset: version_offset,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let nranges = u64::from(m.desc.u32()?);
    let units = (m.desc.offset(), u64::from(m.desc.u32()?));
    let devices = (m.desc.offset(), u64::from(m.desc.u32()?));
    m.expect_size(MACHINE_FIXED + nranges * RAM_ENTRY)?;
    let mut ram = Vec::new();
    for _ in 0..nranges {
        let base = m.desc.u64()?;
        let size = m.desc.u64()?;
        ram.push((PhysAddr(base), size));
    }
    let mem = SparseMemory::new(&ram).map_err(|error| SnapshotError::BadRamLayout {
        offset: m.offset,
        error,
    })?;
    Ok((mem, Counts { units, devices }))
}

/// Reads the fixed head of a list note (count, reserved) and checks its size.
fn list_head(n: &mut Note<'_>, entry: u64, what: &'static str) -> Result<u64, SnapshotError> {
    n.expect_at_least(LIST_FIXED)?;
    let count = u64::from(n.desc.u32()?);
    let reserved_offset = n.desc.offset();
    if n.desc.u32()? != 0 {
        return Err(SnapshotError::BadNote {
            offset: reserved_offset,
            what,
        });
    }
    n.expect_size(LIST_FIXED + count * entry)?;
    Ok(count)
}

/// Fills `mem` from the PT_LOADs, with the validity bitmaps of the poison note.
fn restore_memory(
    file: &File<'_>,
    mem: &mut SparseMemory,
    loads: &[Load],
    p: &mut Note<'_>,
) -> Result<(), SnapshotError> {
    let ram: Vec<(u64, u64)> = mem
        .ram_ranges()
        .iter()
        .map(|r| (r.start(), r.size()))
        .collect();
    check_in_ram(loads, &ram).map_err(SnapshotError::Layout)?;
    let count = list_head(
        p,
        POISON_ENTRY,
        "reserved field of the poison note is not zero",
    )?;
    let mut poison = Vec::new();
    for _ in 0..count {
        let offset = p.desc.offset();
        let page = p.desc.u64()?;
        let mut bits = [0u64; VALID_WORDS];
        for w in bits.iter_mut() {
            *w = p.desc.u64()?;
        }
        let bad = |what| SnapshotError::BadPoisonEntry {
            offset,
            page: PhysAddr(page),
            what,
        };
        if page % PAGE_SIZE != 0 {
            return Err(bad("page address is not 4 KiB aligned"));
        }
        if poison.last().is_some_and(|&(q, _)| q >= page) {
            return Err(bad("entries are not in increasing page order"));
        }
        let i = loads.partition_point(|l| l.paddr + (l.size - 1) < page);
        if loads.get(i).map_or(true, |l| l.paddr > page) {
            return Err(bad("page is not inside a PT_LOAD segment"));
        }
        poison.push((page, bits));
    }
    let mut poison = poison.iter().peekable();
    for l in loads {
        for k in 0..l.size / PAGE_SIZE {
            let pa = l.paddr + k * PAGE_SIZE;
            let off = l.offset + k * PAGE_SIZE;
            let truncated = SnapshotError::Truncated {
                offset: off,
                needed: PAGE_SIZE,
                file_len: file.len(),
                what: "PT_LOAD page",
            };
            let data: &[u8; PAGE_SIZE as usize] = file
                .bytes(off, PAGE_SIZE, "PT_LOAD page")?
                .try_into()
                .map_err(|_| truncated)?;
            let valid = poison.next_if(|(q, _)| *q == pa).map(|(_, bits)| bits);
            mem.restore_page(PhysAddr(pa), data, valid).map_err(|e| {
                SnapshotError::Layout(LayoutError::OutsideRam {
                    header: l.header,
                    addr: e.addr().0,
                })
            })?;
        }
    }
    Ok(())
}

/// Rebuilds one unit from its note.
fn read_unit(
    u: &mut Note<'_>,
    restorer: &dyn UnitRestorer,
) -> Result<Box<dyn IommuModel>, SnapshotError> {
    u.expect_at_least(UNIT_FIXED)?;
    let kind_offset = u.desc.offset();
    let code = u.desc.u32()?;
    let kind = unit_kind_of(code).ok_or(SnapshotError::UnknownUnitKind {
        offset: kind_offset,
        code,
    })?;
    let nregs = u64::from(u.desc.u32()?);
    let base = PhysAddr(u.desc.u64()?);
    let size = u.desc.u64()?;
    u.expect_size(UNIT_FIXED + nregs * REG_ENTRY)?;
    let mut regs = Vec::new();
    for _ in 0..nregs {
        let offset = u.desc.offset();
        let reg_offset = u.desc.u64()?;
        let width = u.desc.u32()?;
        let reserved = u.desc.u32()?;
        let value = u.desc.u64()?;
        let bad = |what| SnapshotError::BadRegister { offset, what };
        let width = match width {
            4 => 4u8,
            8 => 8u8,
            _ => return Err(bad("width is not 4 or 8")),
        };
        if reserved != 0 {
            return Err(bad("reserved field is not zero"));
        }
        if width == 4 && value > u64::from(u32::MAX) {
            return Err(bad("value of a 4-byte register does not fit in 32 bits"));
        }
        if reg_offset >= size || size - reg_offset < u64::from(width) {
            return Err(bad("register lies outside the unit's MMIO window"));
        }
        regs.push(RegisterValue {
            offset: reg_offset,
            width,
            value,
        });
    }
    let unit = restorer
        .restore(kind, base, &regs)
        .map_err(|error| SnapshotError::UnitRestore {
            offset: u.offset,
            kind,
            base,
            error,
        })?;
    if unit.mmio_base() != base || unit.mmio_size() != size {
        return Err(SnapshotError::UnitWindowMismatch {
            offset: u.offset,
            note: (base, size),
            unit: (unit.mmio_base(), unit.mmio_size()),
        });
    }
    Ok(unit)
}

/// Reads the device note: each device with the file offset of its entry.
fn read_devices(
    d: &mut Note<'_>,
    declared: (u64, u64),
) -> Result<Vec<(u64, Device)>, SnapshotError> {
    let count = list_head(
        d,
        DEVICE_ENTRY,
        "reserved field of the device note is not zero",
    )?;
    if count != declared.1 {
        return Err(SnapshotError::CountMismatch {
            offset: declared.0,
            what: "devices",
            declared: declared.1,
            found: count,
        });
    }
    let mut devices = Vec::new();
    for _ in 0..count {
        let offset = d.desc.offset();
        let segment = d.desc.u16()?;
        let bus = d.desc.u8()?;
        let devfn = d.desc.u8()?;
        let flags = d.desc.u32()?;
        let pasid = d.desc.u32()?;
        let reserved = d.desc.u32()?;
        let unit = PhysAddr(d.desc.u64()?);
        let bad = |what| SnapshotError::BadDevice { offset, what };
        if flags & !DEVICE_HAS_PASID != 0 {
            return Err(bad("unknown flag bits set"));
        }
        if reserved != 0 {
            return Err(bad("reserved field is not zero"));
        }
        let pasid = if flags & DEVICE_HAS_PASID != 0 {
            if pasid >= 1 << 20 {
                return Err(bad("PASID is wider than 20 bits"));
            }
            Some(Pasid(pasid))
        } else if pasid != 0 {
            return Err(bad("PASID field is not zero for a device without PASID"));
        } else {
            None
        };
        let rid = RequesterId {
            segment,
            bus,
            devfn,
        };
        devices.push((offset, Device { rid, pasid, unit }));
    }
    Ok(devices)
}

/// Loads a machine from snapshot bytes, rebuilding units with `restorer`.
pub fn from_bytes_with(data: &[u8], restorer: &dyn UnitRestorer) -> Result<Machine, SnapshotError> {
    let file = File { data };
    let (e_machine, phoff, phnum) = check_header(&file)?;
    let ((note_start, note_size), loads) = read_segments(&file, phoff, phnum)?;
    let mut notes = sort_notes(parse_notes(&file, note_start, note_size)?)?;
    let (mut mem, counts) = read_machine_note(&mut notes.machine)?;
    if notes.units.len() as u64 != counts.units.1 {
        return Err(SnapshotError::CountMismatch {
            offset: counts.units.0,
            what: "units",
            declared: counts.units.1,
            found: notes.units.len() as u64,
        });
    }
    restore_memory(&file, &mut mem, &loads, &mut notes.poison)?;
    let mut machine = Machine::new(mem);
    for u in &mut notes.units {
        let unit = read_unit(u, restorer)?;
        machine
            .add_unit(unit)
            .map_err(|error| SnapshotError::Machine {
                offset: u.offset,
                error,
            })?;
    }
    let devices = read_devices(&mut notes.devices, counts.devices)?;
    let bases: Vec<u64> = machine.units().map(|u| u.mmio_base().0).collect();
    // The layout rules every reader applies (missing unit, repeated device, requester
    // split over units); `add_device` would refuse the last two too, as a machine error.
    let entries: Vec<DeviceEntry> = devices
        .iter()
        .map(|(_, d)| DeviceEntry {
            rid: d.rid,
            pasid: d.pasid.map(|p| p.0),
            unit: d.unit.0,
        })
        .collect();
    check_devices(&entries, &bases).map_err(SnapshotError::Layout)?;
    for (offset, device) in devices {
        machine
            .add_device(device)
            .map_err(|error| SnapshotError::Machine { offset, error })?;
    }
    let expected = elf_machine(machine.units().map(|u| u.kind()));
    if expected != e_machine {
        return Err(SnapshotError::MachineTypeMismatch {
            found: e_machine,
            expected,
        });
    }
    Ok(machine)
}

/// Loads a machine from snapshot bytes with the emulator's own models.
pub fn from_bytes(data: &[u8]) -> Result<Machine, SnapshotError> {
    from_bytes_with(data, &BuiltinModels)
}

/// Loads the snapshot at `path`, rebuilding units with `restorer`.
pub fn load_with(path: &Path, restorer: &dyn UnitRestorer) -> Result<Machine, SnapshotError> {
    let data = std::fs::read(path).map_err(|e| io_error(path, "reading", &e))?;
    from_bytes_with(&data, restorer)
}

/// Loads the snapshot at `path` with the emulator's own models.
pub fn load(path: &Path) -> Result<Machine, SnapshotError> {
    load_with(path, &BuiltinModels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_core::PhysMem;
    use object::read::elf::{ElfFile64, FileHeader};
    use object::Object;

    /// Past 65534 segments the count moves to section header 0 (`PN_XNUM`); with a low
    /// threshold the same code path runs on a small machine.
    #[test]
    fn pn_xnum_segment_counts_round_trip() {
        let mut m = Machine::with_ram(&[(PhysAddr(0), 1 << 20)]).unwrap();
        for page in [1u64, 3, 5, 7] {
            m.mem_mut()
                .write(PhysAddr(page * PAGE_SIZE + 8), &[page as u8; 8])
                .unwrap();
        }
        let mut bytes = Vec::new();
        write_machine(&m, &mut bytes, 4).unwrap();
        assert_eq!(u16::from_le_bytes([bytes[56], bytes[57]]), elf::PN_XNUM);
        let file = ElfFile64::<LE>::parse(bytes.as_slice()).unwrap();
        assert_eq!(file.elf_header().phnum(LE, bytes.as_slice()).unwrap(), 5);
        assert_eq!(file.segments().count(), 4, "the PT_LOADs");
        let l = from_bytes(&bytes).unwrap();
        assert_eq!(l.mem().populated_runs().len(), 4);
        assert_eq!(
            l.mem().read_u64(PhysAddr(5 * PAGE_SIZE + 8)),
            Ok(0x0505_0505_0505_0505)
        );
        // Without the section header the count cannot be found.
        let shoff = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
        bytes[shoff + 47] = 0xff; // sh_info: 0xff000005 program headers
        let e = from_bytes(&bytes);
        assert!(
            matches!(
                e,
                Err(SnapshotError::Truncated {
                    what: "program header table",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn layout_offsets() {
        let l = layout(2, 100, u64::from(elf::PN_XNUM));
        assert!(!l.xnum);
        assert_eq!(l.phnum, 3);
        assert_eq!(l.shoff, 64 + 3 * 56);
        assert_eq!(l.note_off, 64 + 3 * 56 + 128 + 16);
        assert_eq!(l.data_off, 4096);
        let x = layout(10, 100, 5);
        assert!(x.xnum);
        assert_eq!(x.shoff, 64 + 11 * 56);
        assert_eq!(x.shstrtab_off, 64 + 11 * 56 + 128);
        assert_eq!(x.note_off, 64 + 11 * 56 + 128 + 16);
    }
}
