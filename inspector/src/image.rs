//! Memory images: emulator snapshots, other ELF cores and raw memory files, memory-mapped
//! and read as physical memory.
//!
//! - An **emulator snapshot** is an ELF64 core with notes named `IOMMU` (format in
//!   `SNAPSHOT.md`): load segments at their physical addresses (`p_paddr`), the RAM
//!   layout, the IOMMU units with their register values, the devices and the poison map.
//!   RAM outside every load segment reads as poison, as do the bytes the poison note
//!   marks invalid; addresses outside RAM are unbacked.
//! - Any other **ELF core** (QEMU `dump-guest-memory`, a kdump vmcore) gives memory only:
//!   the load segments at `p_paddr`. Bytes a segment's `p_memsz` claims past its
//!   `p_filesz` are not in the file and read as unbacked, like every address outside the
//!   segments. The IOMMU unit is described on the command line.
//! - A **raw** file is memory from a base address given on the command line.
//!
//! Every ELF image follows the layout rules of [`iommu_core::image`], the ones the
//! emulator's snapshot loader applies too (aligned `p_paddr`, no overlap but identical
//! repeats, segments in RAM and devices behind existing units in a snapshot).
//!
//! The file is memory-mapped (a regular file only); nothing is read until a table is.

use crate::error::InspectError;
use iommu_core::image::{
    check_devices, check_in_ram, check_segments, in_runs, ram_runs, DeviceEntry, LoadSegment,
};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::{Pasid, PhysAddr, RequesterId};
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Note name of the emulator snapshot notes.
pub const NOTE_NAME: &[u8] = b"IOMMU";
/// Machine note: format version and RAM layout.
pub const NT_IOMMU_MACHINE: u32 = 0x494f_4d01;
/// Unit note: kind, MMIO window, registers.
pub const NT_IOMMU_UNIT: u32 = 0x494f_4d02;
/// Device note.
pub const NT_IOMMU_DEVICES: u32 = 0x494f_4d03;
/// Poison note: validity bitmaps of partly poisoned pages.
pub const NT_IOMMU_POISON: u32 = 0x494f_4d04;
/// The snapshot format version understood.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Unit kind code of VT-d in a unit note.
pub const UNIT_KIND_VTD: u32 = 1;
/// Unit kind code of AMD-Vi.
pub const UNIT_KIND_AMDVI: u32 = 2;
/// Unit kind code of SMMUv3.
pub const UNIT_KIND_SMMUV3: u32 = 3;

const PAGE: u64 = 4096;
/// Bytes of a validity bitmap in the poison note (one bit per byte of a page).
const BITMAP_BYTES: u64 = PAGE / 8;

/// What kind of file the image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// An emulator snapshot (ELF core with `IOMMU` notes).
    Snapshot,
    /// An ELF core without `IOMMU` notes.
    ElfCore,
    /// A raw memory file.
    Raw,
}

impl ImageKind {
    /// Name used in output: `emulator-snapshot`, `elf-core`, `raw`.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Snapshot => "emulator-snapshot",
            ImageKind::ElfCore => "elf-core",
            ImageKind::Raw => "raw",
        }
    }
}

/// One register value from a unit note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegValue {
    /// Byte offset from the MMIO base.
    pub offset: u64,
    /// Width in bytes (4 or 8).
    pub width: u32,
    /// Value.
    pub value: u64,
}

/// A unit as a snapshot's unit note describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitNote {
    /// Kind code (1 VT-d, 2 AMD-Vi, 3 SMMUv3).
    pub kind: u32,
    /// MMIO base.
    pub base: PhysAddr,
    /// MMIO window size.
    pub size: u64,
    /// Registers, in the note's order.
    pub regs: Vec<RegValue>,
}

/// A device as a snapshot's device note describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceNote {
    /// Requester ID with segment.
    pub rid: RequesterId,
    /// The PASID its requests carry, if any.
    pub pasid: Option<Pasid>,
    /// MMIO base of its unit.
    pub unit: PhysAddr,
}

/// One run of physical memory in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First physical address.
    pub paddr: u64,
    /// Bytes present in the file.
    pub size: u64,
    /// File offset of the first byte.
    pub offset: u64,
}

impl Segment {
    fn last(&self) -> u64 {
        self.paddr + (self.size - 1)
    }
}

enum Backing {
    Map(memmap2::Mmap),
    Bytes(Vec<u8>),
}

/// A memory image, read as physical memory (writes are refused).
pub struct Image {
    path: PathBuf,
    kind: ImageKind,
    backing: Backing,
    segments: Vec<Segment>,
    ram: Vec<(u64, u64)>,
    /// `ram` coalesced into sorted inclusive runs.
    ram_runs: Vec<(u64, u64)>,
    /// Page address -> file offset of its validity bitmap.
    poison: BTreeMap<u64, u64>,
    units: Vec<UnitNote>,
    devices: Vec<DeviceNote>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("segments", &self.segments.len())
            .field("units", &self.units.len())
            .finish()
    }
}

/// How to read a file: as an ELF core (snapshot or not, detected), or raw from a base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OpenAs {
    /// ELF (the default).
    #[default]
    Elf,
    /// Raw memory starting at this physical address.
    Raw {
        /// Physical address of the file's first byte.
        base: u64,
    },
}

impl Image {
    /// Opens and memory-maps `path`.
    pub fn open(path: &Path, how: OpenAs) -> Result<Self, InspectError> {
        let io = |err| InspectError::Io {
            path: path.to_path_buf(),
            err,
        };
        // A directory cannot be opened for reading on every system, and a pipe, FIFO,
        // socket or device has no length to map: say so before trying.
        let kind = std::fs::metadata(path).map_err(io)?.file_type();
        if !kind.is_file() {
            return Err(InspectError::NotAFile {
                path: path.to_path_buf(),
                what: if kind.is_dir() {
                    "a directory"
                } else {
                    "not a regular file (a pipe, FIFO, socket or device)"
                },
            });
        }
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(InspectError::NotAFile {
                path: path.to_path_buf(),
                what: "not a regular file (a pipe, FIFO, socket or device)",
            });
        }
        let len = meta.len();
        let backing = if len == 0 {
            Backing::Bytes(Vec::new())
        } else {
            // SAFETY: the mapping is read-only and private to this process. Another
            // process truncating or rewriting the file while it is mapped could change
            // the bytes under us (or fault on access past a truncation); the inspector
            // treats every byte as untrusted data and never derives a Rust invariant
            // from it, and inspecting a file being rewritten is outside its contract.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            Backing::Map(map)
        };
        Self::build(path.to_path_buf(), backing, how)
    }

    /// An image from bytes in memory (tests, benchmarks); `name` is used in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>, how: OpenAs) -> Result<Self, InspectError> {
        Self::build(PathBuf::from(name), Backing::Bytes(bytes), how)
    }

    fn build(path: PathBuf, backing: Backing, how: OpenAs) -> Result<Self, InspectError> {
        let mut img = Image {
            path,
            kind: ImageKind::Raw,
            backing,
            segments: Vec::new(),
            ram: Vec::new(),
            ram_runs: Vec::new(),
            poison: BTreeMap::new(),
            units: Vec::new(),
            devices: Vec::new(),
        };
        match how {
            OpenAs::Raw { base } => {
                let size = img.bytes().len() as u64;
                if size == 0 {
                    return Err(InspectError::Usage(format!(
                        "{}: empty file, no memory to read",
                        img.path.display()
                    )));
                }
                if base.checked_add(size - 1).is_none() {
                    return Err(InspectError::Usage(format!(
                        "--base {base:#x} plus the file size {size:#x} overflows 64 bits"
                    )));
                }
                img.segments.push(Segment {
                    paddr: base,
                    size,
                    offset: 0,
                });
            }
            OpenAs::Elf => img.parse_elf()?,
        }
        Ok(img)
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Map(m) => m,
            Backing::Bytes(b) => b,
        }
    }

    /// The path given at open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of image it is.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The memory runs, sorted by physical address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// RAM ranges `(base, size)` of a snapshot (empty for other images).
    pub fn ram(&self) -> &[(u64, u64)] {
        &self.ram
    }

    /// Units of a snapshot's unit notes.
    pub fn units(&self) -> &[UnitNote] {
        &self.units
    }

    /// Devices of a snapshot's device note.
    pub fn devices(&self) -> &[DeviceNote] {
        &self.devices
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Total bytes of memory the segments hold.
    pub fn memory_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    fn truncated(&self, what: &str, offset: u64, need: u64) -> InspectError {
        InspectError::Truncated {
            what: what.into(),
            offset,
            need,
            file_size: self.file_size(),
        }
    }

    fn parse_elf(&mut self) -> Result<(), InspectError> {
        let file_size = self.file_size();
        if file_size < 64 {
            return Err(self.truncated("ELF file header", 0, 64));
        }
        let data = self.bytes();
        if data[..4] != elf::ELFMAG {
            return Err(InspectError::Elf {
                offset: 0,
                what: "not an ELF file (no \\x7fELF magic); for a raw memory file give --base"
                    .into(),
            });
        }
        if data[4] != 2 || data[5] != 1 {
            return Err(InspectError::Elf {
                offset: 4,
                what: format!(
                    "class {} data {}: only little-endian ELF64 cores are supported",
                    data[4], data[5]
                ),
            });
        }
        let hdr = elf::FileHeader64::<LE>::parse(data).map_err(|e| InspectError::Elf {
            offset: 0,
            what: e.to_string(),
        })?;
        let e = LE;
        if hdr.e_type(e) != elf::ET_CORE {
            return Err(InspectError::Elf {
                offset: 16,
                what: format!(
                    "e_type {} is not ET_CORE (4): not a memory image",
                    hdr.e_type(e)
                ),
            });
        }
        let phoff = hdr.e_phoff(e);
        let phnum = hdr.phnum(e, data).map_err(|err| InspectError::Elf {
            offset: 56,
            what: format!("e_phnum: {err}"),
        })? as u64;
        if hdr.e_phentsize(e) as u64 != 56 && phnum > 0 {
            return Err(InspectError::Elf {
                offset: 54,
                what: format!("e_phentsize {} is not 56", hdr.e_phentsize(e)),
            });
        }
        let need = phnum.saturating_mul(56);
        if phoff.checked_add(need).map_or(true, |end| end > file_size) {
            return Err(self.truncated(
                &format!("program header table ({phnum} entries)"),
                phoff,
                need,
            ));
        }
        let phdrs = hdr
            .program_headers(e, data)
            .map_err(|err| InspectError::Elf {
                offset: phoff,
                what: err.to_string(),
            })?;
        let mut segs: Vec<LoadSegment> = Vec::new();
        let mut notes: Vec<(u64, u64)> = Vec::new();
        for (i, ph) in phdrs.iter().enumerate() {
            let at = phoff + 56 * i as u64;
            let off = ph.p_offset(e);
            let filesz = ph.p_filesz(e);
            let in_file = off.checked_add(filesz).is_some_and(|end| end <= file_size);
            match ph.p_type(e) {
                elf::PT_LOAD => {
                    if !in_file {
                        return Err(self.truncated(
                            &format!("load segment {i} (program header at {at:#x})"),
                            off,
                            filesz,
                        ));
                    }
                    segs.push(LoadSegment {
                        header: at,
                        paddr: ph.p_paddr(e),
                        size: filesz,
                        offset: off,
                    });
                }
                elf::PT_NOTE => {
                    if !in_file {
                        return Err(self.truncated(
                            &format!("note segment (program header at {at:#x})"),
                            off,
                            filesz,
                        ));
                    }
                    notes.push((off, filesz));
                }
                _ => {}
            }
        }
        self.kind = ImageKind::ElfCore;
        for (off, len) in notes {
            self.parse_notes(off, len)?;
        }
        // The layout rules every reader shares (iommu_core::image): a snapshot holds
        // whole pages; another core may have segments with no bytes in the file
        // (p_filesz 0), which hold nothing here.
        let snapshot = self.kind == ImageKind::Snapshot;
        if !snapshot {
            segs.retain(|s| s.size != 0);
        }
        let kept = check_segments(segs, self.bytes(), snapshot).map_err(InspectError::Layout)?;
        if snapshot {
            check_in_ram(&kept, &self.ram).map_err(InspectError::Layout)?;
        }
        self.segments = kept
            .into_iter()
            .map(|s| Segment {
                paddr: s.paddr,
                size: s.size,
                offset: s.offset,
            })
            .collect();
        self.ram_runs = ram_runs(&self.ram);
        if snapshot {
            self.check_snapshot()?;
        }
        Ok(())
    }

    fn parse_notes(&mut self, off: u64, len: u64) -> Result<(), InspectError> {
        let mut pos = off;
        let end = off + len;
        let mut machine: Option<(u64, u32, u32)> = None;
        while pos + 12 <= end {
            let namesz = self.le32(pos) as u64;
            let descsz = self.le32(pos + 4) as u64;
            let ntype = self.le32(pos + 8);
            let name_at = pos + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let next = desc_at + descsz.div_ceil(4) * 4;
            if next > end {
                return Err(self.truncated("ELF note", pos, next - pos));
            }
            let name = &self.bytes()[name_at as usize..(name_at + namesz) as usize];
            let name = name.strip_suffix(&[0]).unwrap_or(name);
            if name == NOTE_NAME {
                self.kind = ImageKind::Snapshot;
                match ntype {
                    NT_IOMMU_MACHINE => {
                        if machine.is_some() {
                            return Err(note_err(desc_at, "a second machine note"));
                        }
                        machine = Some(self.parse_machine(desc_at, descsz)?);
                    }
                    NT_IOMMU_UNIT => self.parse_unit(desc_at, descsz)?,
                    NT_IOMMU_DEVICES => self.parse_devices(desc_at, descsz)?,
                    NT_IOMMU_POISON => self.parse_poison(desc_at, descsz)?,
                    t => {
                        return Err(note_err(pos, &format!("unknown IOMMU note type {t:#x}")));
                    }
                }
            }
            pos = next;
        }
        if let Some((at, units, devices)) = machine {
            if units as usize != self.units.len() {
                return Err(note_err(
                    at,
                    &format!(
                        "machine note counts {units} units, the file has {} unit notes",
                        self.units.len()
                    ),
                ));
            }
            if devices as usize != self.devices.len() {
                return Err(note_err(
                    at,
                    &format!(
                        "machine note counts {devices} devices, the device note lists {}",
                        self.devices.len()
                    ),
                ));
            }
        } else if self.kind == ImageKind::Snapshot {
            return Err(note_err(off, "IOMMU notes without a machine note"));
        }
        Ok(())
    }

    fn le32(&self, at: u64) -> u32 {
        let b = &self.bytes()[at as usize..at as usize + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn le64(&self, at: u64) -> u64 {
        let b = &self.bytes()[at as usize..at as usize + 8];
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    }

    fn need_size(at: u64, descsz: u64, want: u64, what: &str) -> Result<(), InspectError> {
        if descsz != want {
            return Err(note_err(
                at,
                &format!("{what} note is {descsz:#x} bytes, its counts imply {want:#x}"),
            ));
        }
        Ok(())
    }

    fn parse_machine(&mut self, at: u64, descsz: u64) -> Result<(u64, u32, u32), InspectError> {
        if descsz < 16 {
            return Err(note_err(at, "machine note shorter than 16 bytes"));
        }
        let version = self.le32(at);
        if version != SNAPSHOT_VERSION {
            return Err(note_err(
                at,
                &format!(
                    "snapshot format version {version}, this inspector reads version \
                     {SNAPSHOT_VERSION}"
                ),
            ));
        }
        let ranges = self.le32(at + 4) as u64;
        Self::need_size(at, descsz, 16 + 16 * ranges, "machine")?;
        for i in 0..ranges {
            let base = self.le64(at + 16 + 16 * i);
            let size = self.le64(at + 24 + 16 * i);
            if base % PAGE != 0 || size == 0 || size % PAGE != 0 || base.checked_add(size).is_none()
            {
                return Err(note_err(
                    at + 16 + 16 * i,
                    &format!("RAM range {base:#x}+{size:#x} is not page aligned or wraps"),
                ));
            }
            self.ram.push((base, size));
        }
        self.ram.sort_unstable();
        Ok((at, self.le32(at + 8), self.le32(at + 12)))
    }

    fn parse_unit(&mut self, at: u64, descsz: u64) -> Result<(), InspectError> {
        if descsz < 24 {
            return Err(note_err(at, "unit note shorter than 24 bytes"));
        }
        let kind = self.le32(at);
        let n = self.le32(at + 4) as u64;
        Self::need_size(at, descsz, 24 + 24 * n, "unit")?;
        let base = PhysAddr(self.le64(at + 8));
        let size = self.le64(at + 16);
        let mut regs = Vec::with_capacity(n as usize);
        for i in 0..n {
            let r = at + 24 + 24 * i;
            let offset = self.le64(r);
            let width = self.le32(r + 8);
            let value = self.le64(r + 16);
            if (width != 4 && width != 8)
                || offset.checked_add(width as u64).map_or(true, |e| e > size)
            {
                return Err(note_err(
                    r,
                    &format!(
                        "register at offset {offset:#x} width {width}: not 4 or 8 bytes inside \
                         the {size:#x}-byte window"
                    ),
                ));
            }
            if width == 4 && value > u32::MAX as u64 {
                return Err(note_err(
                    r + 16,
                    &format!("4-byte register at {offset:#x} holds {value:#x}"),
                ));
            }
            regs.push(RegValue {
                offset,
                width,
                value,
            });
        }
        self.units.push(UnitNote {
            kind,
            base,
            size,
            regs,
        });
        Ok(())
    }

    fn parse_devices(&mut self, at: u64, descsz: u64) -> Result<(), InspectError> {
        if descsz < 8 {
            return Err(note_err(at, "device note shorter than 8 bytes"));
        }
        let n = self.le32(at) as u64;
        Self::need_size(at, descsz, 8 + 24 * n, "device")?;
        for i in 0..n {
            let d = at + 8 + 24 * i;
            let b = self.bytes();
            let segment = u16::from_le_bytes([b[d as usize], b[d as usize + 1]]);
            let bus = b[d as usize + 2];
            let devfn = b[d as usize + 3];
            let flags = self.le32(d + 4);
            let pasid = self.le32(d + 8);
            if flags & !1 != 0 || pasid >= 1 << 20 || (flags & 1 == 0 && pasid != 0) {
                return Err(note_err(
                    d,
                    &format!("device {i}: flags {flags:#x} PASID {pasid:#x} are inconsistent"),
                ));
            }
            self.devices.push(DeviceNote {
                rid: RequesterId {
                    segment,
                    bus,
                    devfn,
                },
                pasid: (flags & 1 != 0).then_some(Pasid(pasid)),
                unit: PhysAddr(self.le64(d + 16)),
            });
        }
        Ok(())
    }

    fn parse_poison(&mut self, at: u64, descsz: u64) -> Result<(), InspectError> {
        if descsz < 8 {
            return Err(note_err(at, "poison note shorter than 8 bytes"));
        }
        let n = self.le32(at) as u64;
        let entry = 8 + BITMAP_BYTES;
        Self::need_size(at, descsz, 8 + entry * n, "poison")?;
        let mut prev: Option<u64> = None;
        for i in 0..n {
            let p = at + 8 + entry * i;
            let page = self.le64(p);
            if page % PAGE != 0 || prev.is_some_and(|q| page <= q) {
                return Err(note_err(
                    p,
                    &format!("poisoned page {page:#x} not aligned or out of order"),
                ));
            }
            prev = Some(page);
            self.poison.insert(page, p + 8);
        }
        Ok(())
    }

    fn check_snapshot(&self) -> Result<(), InspectError> {
        let bases: Vec<u64> = self.units.iter().map(|u| u.base.0).collect();
        let entries: Vec<DeviceEntry> = self
            .devices
            .iter()
            .map(|d| DeviceEntry {
                rid: d.rid,
                pasid: d.pasid.map(|p| p.0),
                unit: d.unit.0,
            })
            .collect();
        check_devices(&entries, &bases).map_err(InspectError::Layout)?;
        for &page in self.poison.keys() {
            if self.segment_of(page).is_none() {
                return Err(note_err(
                    0,
                    &format!("poison note lists page {page:#x}, which is in no load segment"),
                ));
            }
        }
        Ok(())
    }

    /// The segment holding physical address `addr`.
    pub fn segment_of(&self, addr: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.paddr <= addr);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (addr <= s.last()).then_some(s)
    }

    fn in_ram(&self, addr: u64) -> bool {
        in_runs(&self.ram_runs, addr)
    }

    /// The first invalid byte in `[addr, addr + len)` of one segment, by the poison note.
    fn first_poisoned(&self, addr: u64, len: u64) -> Option<u64> {
        if self.poison.is_empty() {
            return None;
        }
        let last = addr + (len - 1);
        for (&page, &bitmap) in self.poison.range(addr & !(PAGE - 1)..=last) {
            let lo = addr.max(page);
            let hi = last.min(page + PAGE - 1);
            for a in lo..=hi {
                let b = a - page;
                let byte = self.bytes()[(bitmap + b / 8) as usize];
                if byte >> (b % 8) & 1 == 0 {
                    return Some(a);
                }
            }
        }
        None
    }
}

fn note_err(offset: u64, what: &str) -> InspectError {
    InspectError::Note {
        offset,
        what: what.into(),
    }
}

impl PhysMem for Image {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        if addr.0.checked_add(len - 1).is_none() {
            return Err(MemError::Overflow { addr, len });
        }
        let mut cur = addr.0;
        let mut done = 0usize;
        while done < buf.len() {
            let Some(s) = self.segment_of(cur) else {
                return Err(if self.in_ram(cur) {
                    MemError::Poisoned {
                        addr: PhysAddr(cur),
                    }
                } else {
                    MemError::Unbacked {
                        addr: PhysAddr(cur),
                    }
                });
            };
            let n = (s.last() - cur + 1).min((buf.len() - done) as u64);
            if let Some(p) = self.first_poisoned(cur, n) {
                return Err(MemError::Poisoned { addr: PhysAddr(p) });
            }
            let from = (s.offset + (cur - s.paddr)) as usize;
            buf[done..done + n as usize].copy_from_slice(&self.bytes()[from..from + n as usize]);
            done += n as usize;
            cur = cur.wrapping_add(n);
        }
        Ok(())
    }

    fn write(&mut self, addr: PhysAddr, _data: &[u8]) -> Result<(), MemError> {
        Err(MemError::ReadOnly { addr })
    }
}
