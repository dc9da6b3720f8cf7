//! AMD-Vi page-table formats for the generic page-table algorithm of `iommu-core`.
//!
//! - [`HostV1`]: host (v1) I/O page tables, 1 to 6 levels (DTE Mode), reference
//!   `amdvi.md` §7.1;
//! - [`GuestV2`]: guest (v2) tables in the x86-64 4- or 5-level paging format, reached
//!   through the GCR3 table (for requests without PASID with DTE.GIoV), §7.2.
//!
//! Levels are numbered as the specification does: level 1 holds 4 KiB pages, 9 IOVA
//! bits per level. Entry bits come from [`crate::hw::pte`]; this module turns them
//! into [`Entry`] values, names what makes an entry malformed, and encodes leaves and
//! table entries for the generic `map` / `unmap` ([`WriteFormat`]).
//!
//! # The SME C-bit
//!
//! With memory encryption (SME/SEV) active the C-bit (a CPU-specific physical
//! address bit, CPUID 0x8000001F EBX\[5:0\]) marks encrypted memory in table pointers
//! and page addresses. It is never part of an address: a format built
//! [`with_c_bit`](HostV1::with_c_bit) strips it when decoding, sets it in every table
//! entry and leaf it writes (Linux `PT_FEAT_AMDV1_ENCRYPT_TABLES` and `__sme_set`,
//! except for leaves asked to stay decrypted, as Linux leaves MMIO), and limits output
//! addresses to the bits below it. The default is no C-bit.

use crate::hw::dte::{DeviceTableEntry, Glx, GuestPagingMode, Mode};
use crate::hw::pte::{
    sized_page_addr, sized_page_shift, v1_pde, v2_table, NextLevel, ADDR_MASK, FC, IR, IW, PR,
    RSVD_56_52, U, V2_A, V2_ADDR_MASK, V2_D, V2_NX, V2_P, V2_PAT_LARGE, V2_PS, V2_RW, V2_US,
};
use crate::hw::regs::{guest_levels, host_levels};
use core::fmt;
use iommu_core::addr::{PageSize, PhysAddr};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::{Entry, EntryError, Format, Perms, WriteFormat};

/// Bytes of a page table (every level but a Mode-6 root).
pub const TABLE_BYTES: u64 = 4096;
/// Bytes a Mode-6 root uses: 128 entries, IOVA bits 63:57 (Linux
/// `amdv1pt_num_items_lg2`: "Top entry covers bits \[63:57\] only").
pub const MODE6_ROOT_BYTES: u64 = 1024;
/// Output address width without a C-bit: address bits 51:12.
pub const OA_BITS: u32 = 52;

/// Why a format could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// v1 tables have 1 to 6 levels (DTE Mode 1–6).
    HostLevels {
        /// The levels asked for.
        levels: u8,
    },
    /// The unit's EFR.HATS allows fewer host levels.
    HatsUnsupported {
        /// The levels asked for.
        levels: u8,
        /// `4 + EFR.HATS`, `None` if HATS holds the reserved value 3.
        max: Option<u8>,
    },
    /// v2 tables have 4 or 5 levels.
    GuestLevels {
        /// The levels asked for.
        levels: u8,
    },
    /// The unit's EFR.GATS does not allow 5-level guest tables.
    GatsUnsupported {
        /// The levels asked for.
        levels: u8,
    },
    /// The C-bit must be an address bit, 12..=51.
    CBit {
        /// The bit asked for.
        bit: u8,
    },
    /// The device table entry does not translate through these tables.
    NotTranslating {
        /// What the entry says instead.
        why: &'static str,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FormatError::HostLevels { levels } => {
                write!(f, "v1 page tables have 1 to 6 levels, not {levels}")
            }
            FormatError::HatsUnsupported {
                levels,
                max: Some(max),
            } => write!(
                f,
                "EFR.HATS allows {max}-level v1 page tables, not {levels}"
            ),
            FormatError::HatsUnsupported { levels, max: None } => write!(
                f,
                "EFR.HATS holds the reserved value 3; {levels}-level v1 tables refused"
            ),
            FormatError::GuestLevels { levels } => {
                write!(f, "v2 page tables have 4 or 5 levels, not {levels}")
            }
            FormatError::GatsUnsupported { levels } => {
                write!(f, "EFR.GATS does not allow {levels}-level v2 page tables")
            }
            FormatError::CBit { bit } => {
                write!(f, "C-bit {bit} is not an address bit (12..=51)")
            }
            FormatError::NotTranslating { why } => f.write_str(why),
        }
    }
}

/// log2 of the span of one entry at `level` (12 + 9 * (level - 1)).
const fn span_shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

fn c_bit_mask(c_bit: Option<u8>) -> u64 {
    c_bit.map_or(0, |b| 1u64 << b)
}

fn check_c_bit(c_bit: Option<u8>) -> Result<Option<u8>, FormatError> {
    match c_bit {
        Some(bit) if !(12..=51).contains(&bit) => Err(FormatError::CBit { bit }),
        c => Ok(c),
    }
}

fn page_size(shift: u32) -> Result<PageSize, EntryError> {
    PageSize::from_shift(shift).ok_or(EntryError {
        reason: "page size outside 4 KiB..2^63",
    })
}

/// Leaf attributes of a v1 entry beyond address, size and permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V1Attrs {
    /// FC (bit 60): force coherent.
    pub force_coherent: bool,
    /// U (bit 59): untranslated access only.
    pub untranslated_only: bool,
    /// Leave the C-bit clear in this leaf (memory that is not encrypted, as Linux
    /// does for MMIO); ignored without a C-bit.
    pub decrypted: bool,
}

/// AMD-Vi v1 (host) I/O page tables.
///
/// An entry is present iff PR (bit 0) is set. IR (61) and IW (62) are ANDed over the
/// DTE and every level walked; v1 entries have no execute permission, so no mapping
/// is executable. NextLevel (11:9):
///
/// - 1–6 in an entry at level `l`: a table of that level, which must be below `l`;
///   a level below `l - 1` skips levels and covers only the low part of the entry's
///   span (the skipped IOVA bits must be zero; the generic walker and `map` enforce
///   that);
/// - 0: a page of the entry's own span (4 KiB at level 1, 2 MiB at level 2, …); an
///   entry at level 6 never maps a page (Linux `amdv1pt_can_have_leaf`, "the top most
///   level cannot have translation entries");
/// - 7: a page of any power-of-two size above the entry's span and below the span of
///   the table (Linux `amdv1pt_possible_sizes` stops at half the table), the size
///   given by the lowest clear address bit; every entry the page spans holds the same
///   word. The decoded leaf is the whole page, so the walker offsets into it and
///   `unmap` never clears part of it.
///
/// Reserved: bits 56:52 (Xen, VirtualBox and FreeBSD agree; the older layouts of Xen
/// and VirtualBox also reserve 60:57 in PDEs and 58:57 in PTEs, which the newer layout
/// FreeBSD follows defines as PMC and U/FC, so those are not checked), address bits
/// below a large page's size.
///
/// The write side places 4 KiB, 2 MiB and 1 GiB pages (NextLevel 0), and with
/// [`with_sized_pages`](Self::with_sized_pages) every power of two from 8 KiB to
/// 128 TiB but 512 GiB (NextLevel 7 where the size is between two spans). It never
/// writes 512 GiB pages (Linux `AMD_IOMMU_PGSIZES`: "512GB Pages are not supported
/// due to a hardware bug") nor pages of 256 TiB and up (level-5 pages, decoded but
/// not written: a 52-bit machine holds at most 16 of them). Tables are created one
/// level down (Linux never writes level-skipping entries); PDEs carry IR = IW = 1 as
/// Linux writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostV1 {
    levels: u8,
    c_bit: Option<u8>,
    sized: bool,
}

impl HostV1 {
    /// A v1 format with `levels` (1 to 6, the DTE Mode) levels, no C-bit, pages of
    /// 4 KiB, 2 MiB and 1 GiB on the write side.
    pub fn new(levels: u8) -> Result<Self, FormatError> {
        if !(1..=6).contains(&levels) {
            return Err(FormatError::HostLevels { levels });
        }
        Ok(Self {
            levels,
            c_bit: None,
            sized: false,
        })
    }

    /// The format for `levels` on a unit whose Extended Feature register is `efr`:
    /// at most `4 + EFR.HATS` levels.
    pub fn for_unit(levels: u8, efr: u64) -> Result<Self, FormatError> {
        let f = Self::new(levels)?;
        match host_levels(efr) {
            Some(max) if levels <= max => Ok(f),
            max => Err(FormatError::HatsUnsupported { levels, max }),
        }
    }

    /// The format a device table entry translates through: V = 1, TV = 1, GV = 0 and
    /// Mode 1–6.
    pub fn from_dte(dte: &DeviceTableEntry) -> Result<Self, FormatError> {
        let why = |why| Err(FormatError::NotTranslating { why });
        if !dte.valid() {
            return why("DTE V=0: DMA passes through untranslated");
        }
        if !dte.translation_valid() {
            return why("DTE TV=0: no translation information");
        }
        if dte.guest_valid() {
            return why("DTE GV=1: guest (v2) translation");
        }
        match dte.mode() {
            Mode::Levels(n) => Self::new(n),
            Mode::Disabled => why("DTE Mode 0: no translation"),
            Mode::Reserved => why("DTE Mode 7 is reserved"),
        }
    }

    /// The same format with the SME C-bit at `bit` (12..=51), or none.
    pub fn with_c_bit(self, bit: Option<u8>) -> Result<Self, FormatError> {
        Ok(Self {
            c_bit: check_c_bit(bit)?,
            ..self
        })
    }

    /// The same format with NextLevel-7 pages on the write side (every power-of-two
    /// size Linux's generic AMD v1 format offers up to 128 TiB) or without.
    pub fn with_sized_pages(self, on: bool) -> Self {
        Self { sized: on, ..self }
    }

    /// Number of levels (the DTE Mode).
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The C-bit, if any.
    pub fn c_bit(&self) -> Option<u8> {
        self.c_bit
    }

    fn addr(&self, raw: u64) -> u64 {
        raw & ADDR_MASK & !c_bit_mask(self.c_bit)
    }

    fn leaf(&self, level: u8, raw: u64, perms: Perms) -> Result<Entry, EntryError> {
        let span = span_shift(level);
        let addr = self.addr(raw);
        let shift = match NextLevel::of(raw) {
            NextLevel::SizedPage => {
                let s = sized_page_shift(raw & !c_bit_mask(self.c_bit)).ok_or(EntryError {
                    reason: "v1 entry: NextLevel 7 with every address bit set encodes no size",
                })?;
                if s <= span {
                    return Err(EntryError {
                        reason: "v1 entry: NextLevel 7 page not larger than the level's own pages (NextLevel 0 is the encoding)",
                    });
                }
                if s >= span + 9 {
                    return Err(EntryError {
                        reason: "v1 entry: NextLevel 7 page as large as the table holding it",
                    });
                }
                s
            }
            _ => {
                if addr & ((1u64 << span) - 1) != 0 {
                    return Err(EntryError {
                        reason: "v1 entry: address bits below the page size set",
                    });
                }
                span
            }
        };
        Ok(Entry::Leaf {
            base: PhysAddr(addr & !((1u64 << shift) - 1)),
            size: page_size(shift)?,
            perms,
        })
    }
}

impl Format for HostV1 {
    fn name(&self) -> &'static str {
        match (self.levels, self.sized) {
            (1, _) => "amdvi-v1-1",
            (2, _) => "amdvi-v1-2",
            (3, false) => "amdvi-v1-3",
            (3, true) => "amdvi-v1-3-sized",
            (4, false) => "amdvi-v1-4",
            (4, true) => "amdvi-v1-4-sized",
            (5, false) => "amdvi-v1-5",
            (5, true) => "amdvi-v1-5-sized",
            (_, false) => "amdvi-v1-6",
            (_, true) => "amdvi-v1-6-sized",
        }
    }
    fn root_level(&self) -> u8 {
        self.levels
    }
    fn table_bytes(&self, level: u8) -> u64 {
        if level >= 6 {
            MODE6_ROOT_BYTES
        } else {
            TABLE_BYTES
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        span_shift(level.max(1))
    }
    fn ia_bits(&self) -> u32 {
        // Mode n covers DVA bits 12 + 9n - 1 : 0 (Mode 6: all 64).
        (12 + 9 * self.levels as u32).min(64)
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        if raw & PR == 0 {
            return Ok(Entry::Invalid);
        }
        if level == 0 || level > self.levels {
            return Err(EntryError {
                reason: "v1 entry decoded at a level outside the table",
            });
        }
        if raw & RSVD_56_52 != 0 {
            return Err(EntryError {
                reason: "v1 entry: reserved bit in 56:52 set",
            });
        }
        let perms = Perms {
            read: raw & IR != 0,
            write: raw & IW != 0,
            exec: false,
        };
        match NextLevel::of(raw) {
            NextLevel::Table(_) if level == 1 => Err(EntryError {
                reason: "v1 PTE at level 1 with NextLevel 1..6 (only 0 and 7 map pages)",
            }),
            NextLevel::Table(n) if n >= level => Err(EntryError {
                reason: "v1 PDE: NextLevel not below the entry's level",
            }),
            NextLevel::Table(n) => Ok(Entry::Table {
                next: PhysAddr(self.addr(raw)),
                level: n,
                perms,
            }),
            _ if level >= 6 => Err(EntryError {
                reason: "v1 entry at level 6 maps a page (NextLevel 0 or 7): the top level holds tables only",
            }),
            _ => self.leaf(level, raw, perms),
        }
    }
}

impl WriteFormat for HostV1 {
    type Attrs = V1Attrs;

    fn oa_bits(&self) -> u32 {
        self.c_bit.map_or(OA_BITS, |b| b as u32)
    }

    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32> {
        let span = span_shift(level);
        let s = size.shift();
        // Levels 5 and 6 never get pages from the write side; 512 GiB never.
        if level == 0 || level > self.levels || level >= 5 || s == 39 {
            return None;
        }
        if s == span {
            return Some(1);
        }
        (self.sized && s > span && s < span + 9).then(|| 1u32 << (s - span))
    }

    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        size: PageSize,
        perms: Perms,
        attrs: V1Attrs,
        _slot: u32,
    ) -> Result<u64, EntryError> {
        if perms.exec {
            return Err(EntryError {
                reason: "v1 entries have no execute permission",
            });
        }
        if !perms.read && !perms.write {
            return Err(EntryError {
                reason: "v1 leaf without IR or IW maps nothing",
            });
        }
        let n = self.leaf_entries(level, size).ok_or(EntryError {
            reason: "v1 format does not place this page size at this level",
        })?;
        let (addr, nl) = if n == 1 {
            (pa.0 & ADDR_MASK, NextLevel::Page)
        } else {
            (sized_page_addr(pa.0, size.shift()), NextLevel::SizedPage)
        };
        let mut v = addr | (nl.bits() << 9) | PR;
        if perms.read {
            v |= IR;
        }
        if perms.write {
            v |= IW;
        }
        if attrs.force_coherent {
            v |= FC;
        }
        if attrs.untranslated_only {
            v |= U;
        }
        if !attrs.decrypted {
            v |= c_bit_mask(self.c_bit);
        }
        Ok(v)
    }

    fn encode_table(&self, _level: u8, next: PhysAddr, next_level: u8) -> u64 {
        v1_pde(next.0, next_level) | c_bit_mask(self.c_bit)
    }

    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64> {
        // NextLevel-0 pages of 2 MiB and up split into pages one level down (never into
        // 512 GiB pages); NextLevel-7 pages are never split.
        let child = level.checked_sub(1)?;
        if child == 0 || child == 4 || NextLevel::of(raw) != NextLevel::Page || index >= 512 {
            return None;
        }
        let keep = !(ADDR_MASK & !c_bit_mask(self.c_bit));
        let addr = self.addr(raw) + ((index as u64) << span_shift(child));
        Some((raw & keep) | addr)
    }
}

/// AMD-Vi v2 (guest) page tables: x86-64 4- or 5-level paging.
///
/// An entry is present iff P (bit 0) is set; a present entry allows reads, R/W (1)
/// writes, and NX (63) forbids execute; permissions combine over the levels. PS (7)
/// makes a level-2 entry a 2 MiB page and a level-3 entry a 1 GiB page (Linux
/// `AMD_IOMMU_PGSIZES_V2`: 4 KiB, 2 MiB, 1 GiB); PS is reserved at levels 4 and 5, and
/// bit 7 of a 4 KiB PTE is PAT. Bit 12 of a large page is PAT, not address; the
/// address bits between it and the page size are reserved.
///
/// IOVAs are canonical lower-half addresses: the input width is 47 bits (4-level) or
/// 56 bits (5-level), so an upper-half root entry is reported as beyond the input
/// width (the same choice as the VT-d first-stage format; whether the unit sign-extends
/// requests without PASID is not confirmed by a source).
///
/// The write side writes leaves as Linux `set_pte_attr` does (P, U/S, A, D, R/W for
/// writes) and tables as `set_pgtable_attr` (P, R/W, U/S, A); unlike Linux it sets NX
/// on leaves that are not executable, so the permissions read back as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestV2 {
    levels: u8,
    c_bit: Option<u8>,
}

impl GuestV2 {
    /// A v2 format with `levels` (4 or 5) levels and no C-bit.
    pub fn new(levels: u8) -> Result<Self, FormatError> {
        if !(4..=5).contains(&levels) {
            return Err(FormatError::GuestLevels { levels });
        }
        Ok(Self {
            levels,
            c_bit: None,
        })
    }

    /// The format for `levels` on a unit whose Extended Feature register is `efr`
    /// (5 levels need EFR.GATS = 1).
    pub fn for_unit(levels: u8, efr: u64) -> Result<Self, FormatError> {
        let f = Self::new(levels)?;
        match guest_levels(efr) {
            Some(max) if levels <= max => Ok(f),
            _ => Err(FormatError::GatsUnsupported { levels }),
        }
    }

    /// The format of a device table entry's guest tables: V = 1, TV = 1, GV = 1 and a
    /// defined GuestPagingMode.
    pub fn from_dte(dte: &DeviceTableEntry) -> Result<Self, FormatError> {
        let why = |why| Err(FormatError::NotTranslating { why });
        if !dte.valid() || !dte.translation_valid() {
            return why("DTE V=0 or TV=0: no translation information");
        }
        if !dte.guest_valid() {
            return why("DTE GV=0: no guest (v2) translation");
        }
        match dte.guest_paging_mode() {
            GuestPagingMode::Level4 => Self::new(4),
            GuestPagingMode::Level5 => Self::new(5),
            GuestPagingMode::Reserved(_) => why("DTE GuestPagingMode 2 or 3 is reserved"),
        }
    }

    /// The same format with the SME C-bit at `bit` (12..=51), or none.
    pub fn with_c_bit(self, bit: Option<u8>) -> Result<Self, FormatError> {
        Ok(Self {
            c_bit: check_c_bit(bit)?,
            ..self
        })
    }

    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    fn addr(&self, raw: u64) -> u64 {
        raw & V2_ADDR_MASK & !c_bit_mask(self.c_bit)
    }

    fn is_leaf(level: u8, raw: u64) -> bool {
        level == 1 || (raw & V2_PS != 0 && (2..=3).contains(&level))
    }
}

/// Why the guest page-table root of a PASID could not be found in a GCR3 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gcr3Error {
    /// The DTE does not translate through guest tables.
    NotGuest(FormatError),
    /// DTE.GLX holds the reserved value 3.
    GlxReserved,
    /// The PASID has more bits than a GCR3 table of this depth indexes.
    PasidBeyondTable {
        /// The PASID.
        pasid: u32,
        /// Index bits the table has (9 per level).
        bits: u32,
    },
    /// The GCR3 entry at `addr` (in the table at `level`, 0 the last) has V = 0.
    NotPresent {
        /// Level of the table (0 holds the guest CR3 values).
        level: u8,
        /// Address of the entry.
        addr: PhysAddr,
    },
    /// Reading the table failed.
    Mem(MemError),
}

impl GuestV2 {
    /// The guest page-table root of `pasid` for the device whose DTE is `dte` (PASID 0
    /// is what requests without a PASID use when DTE.GIoV is set), walking the GCR3
    /// table in `mem`: `GLX + 1` levels of 512 8-byte entries, each indexed by 9 PASID
    /// bits from the top level down, every entry V (bit 0) with a 4 KiB-aligned
    /// pointer in bits 51:12 (Linux `__get_gcr3_pte`: `index = (pasid >> (9 *
    /// level)) & 0x1ff`, `GCR3_VALID`; GLX levels from FreeBSD, unconfirmed). The
    /// C-bit is stripped from every pointer.
    pub fn gcr3_lookup<M: PhysMem + ?Sized>(
        &self,
        dte: &DeviceTableEntry,
        mem: &M,
        pasid: u32,
    ) -> Result<PhysAddr, Gcr3Error> {
        Self::from_dte(dte).map_err(Gcr3Error::NotGuest)?;
        let top: u8 = match dte.glx() {
            Glx::One => 0,
            Glx::Two => 1,
            Glx::Three => 2,
            Glx::Reserved => return Err(Gcr3Error::GlxReserved),
        };
        let bits = 9 * (top as u32 + 1);
        if bits < 32 && pasid >> bits != 0 {
            return Err(Gcr3Error::PasidBeyondTable { pasid, bits });
        }
        let mut table = self.addr(dte.gcr3_root());
        for level in (0..=top).rev() {
            let index = ((pasid >> (9 * level as u32)) & 0x1ff) as u64;
            let at = PhysAddr(table + index * 8);
            let e = mem.read_u64(at).map_err(Gcr3Error::Mem)?;
            if e & 1 == 0 {
                return Err(Gcr3Error::NotPresent { level, addr: at });
            }
            table = self.addr(e);
        }
        Ok(PhysAddr(table))
    }
}

impl Format for GuestV2 {
    fn name(&self) -> &'static str {
        match self.levels {
            4 => "amdvi-v2-4",
            _ => "amdvi-v2-5",
        }
    }
    fn root_level(&self) -> u8 {
        self.levels
    }
    fn table_bytes(&self, _level: u8) -> u64 {
        TABLE_BYTES
    }
    fn entry_shift(&self, level: u8) -> u32 {
        span_shift(level.max(1))
    }
    fn ia_bits(&self) -> u32 {
        // Canonical lower half: 47 or 56 bits.
        12 + 9 * self.levels as u32 - 1
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        if raw & V2_P == 0 {
            return Ok(Entry::Invalid);
        }
        if level == 0 || level > self.levels {
            return Err(EntryError {
                reason: "v2 entry decoded at a level outside the table",
            });
        }
        if level >= 4 && raw & V2_PS != 0 {
            return Err(EntryError {
                reason: "v2 entry: PS (bit 7) set in a PML4E/PML5E, where it is reserved",
            });
        }
        let perms = Perms {
            read: true,
            write: raw & V2_RW != 0,
            exec: raw & V2_NX == 0,
        };
        if !Self::is_leaf(level, raw) {
            return Ok(Entry::Table {
                next: PhysAddr(self.addr(raw)),
                level: level - 1,
                perms,
            });
        }
        let shift = span_shift(level);
        let mut addr = self.addr(raw);
        if level > 1 {
            addr &= !V2_PAT_LARGE;
            if addr & ((1u64 << shift) - 1) != 0 {
                return Err(EntryError {
                    reason: "v2 entry: address bits between PAT (bit 12) and the page size set in a large page",
                });
            }
        }
        Ok(Entry::Leaf {
            base: PhysAddr(addr),
            size: page_size(shift)?,
            perms,
        })
    }
}

impl WriteFormat for GuestV2 {
    type Attrs = ();

    fn oa_bits(&self) -> u32 {
        self.c_bit.map_or(OA_BITS, |b| b as u32)
    }

    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32> {
        ((1..=3).contains(&level) && size.shift() == span_shift(level)).then_some(1)
    }

    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        size: PageSize,
        perms: Perms,
        _attrs: (),
        _slot: u32,
    ) -> Result<u64, EntryError> {
        if !perms.read {
            return Err(EntryError {
                reason: "x86-64 paging cannot express a present page without read",
            });
        }
        if self.leaf_entries(level, size).is_none() {
            return Err(EntryError {
                reason: "v2 format does not place this page size at this level",
            });
        }
        let mut v = (pa.0 & V2_ADDR_MASK) | V2_P | V2_US | V2_A | V2_D | c_bit_mask(self.c_bit);
        if perms.write {
            v |= V2_RW;
        }
        if !perms.exec {
            v |= V2_NX;
        }
        if level > 1 {
            v |= V2_PS;
        }
        Ok(v)
    }

    fn encode_table(&self, _level: u8, next: PhysAddr, _next_level: u8) -> u64 {
        v2_table(next.0) | c_bit_mask(self.c_bit)
    }

    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64> {
        if !(2..=3).contains(&level) || raw & V2_PS == 0 || index >= 512 {
            return None;
        }
        let child = level - 1;
        let base = self.addr(raw) & !V2_PAT_LARGE;
        let addr = base + ((index as u64) << span_shift(child));
        let pat = raw & V2_PAT_LARGE != 0;
        let mut v = (raw & !(V2_ADDR_MASK & !c_bit_mask(self.c_bit))) | addr;
        if child == 1 {
            // A 4 KiB PTE: bit 7 is PAT, PS goes.
            v &= !V2_PS;
            if pat {
                v |= V2_PS;
            }
        } else if pat {
            v |= V2_PAT_LARGE;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::dte::Glx;
    use crate::hw::pte::A;
    use iommu_core::addr::Iova;
    use iommu_core::conformance::{Mem, Tables};
    use iommu_core::mem::PhysMem;
    use iommu_core::pgtable::{
        map, translate, unmap, walk, MapErrorKind, Mapping, Outcome, Partial, TableAlloc,
        WalkLimits,
    };

    fn reason(r: Result<Entry, EntryError>) -> &'static str {
        r.unwrap_err().reason
    }

    fn v1(levels: u8) -> HostV1 {
        HostV1::new(levels).unwrap()
    }

    #[test]
    fn v1_decode_known_answers() {
        let f = v1(4);
        // Linux PM_LEVEL_PDE(2, 0x5000) = 0x5000 | 2 << 9 | PR | IR | IW.
        assert_eq!(
            f.decode(3, 0x6000_0000_0000_5401),
            Ok(Entry::Table {
                next: PhysAddr(0x5000),
                level: 2,
                perms: Perms::RW
            })
        );
        // A level-skipping PDE at level 4 pointing to a level-2 table (QEMU's walker
        // follows NextLevel).
        assert!(matches!(
            f.decode(4, 0x6000_0000_0000_5401),
            Ok(Entry::Table { level: 2, .. })
        ));
        // Linux v1 map: paddr | PR | IR | IW (NextLevel 0), optionally FC (bit 60).
        assert_eq!(
            f.decode(1, 0x7000_0000_0000_7001),
            Ok(Entry::Leaf {
                base: PhysAddr(0x7000),
                size: PageSize::SIZE_4K,
                perms: Perms::RW
            })
        );
        // IR only (bit 61), accessed and dirty bits ignored.
        assert_eq!(
            f.decode(2, 0x2000_0000_4020_0001 | A | (1 << 6)),
            Ok(Entry::Leaf {
                base: PhysAddr(0x4020_0000),
                size: PageSize::SIZE_2M,
                perms: Perms::R
            })
        );
        // Linux: PAGE_SIZE_PTE(0x20000, 32K) | PM_LEVEL_ENC(7) | PR | IR | IW.
        assert_eq!(
            f.decode(1, 0x6000_0000_0002_3e01),
            Ok(Entry::Leaf {
                base: PhysAddr(0x2_0000),
                size: PageSize::new(0x8000).unwrap(),
                perms: Perms::RW
            })
        );
        // A 4 MiB page at PA 0x80_0000, level 2: bits 20:12 set, bit 21 clear (IW only).
        assert_eq!(
            f.decode(2, 0x4000_0000_009f_fe01),
            Ok(Entry::Leaf {
                base: PhysAddr(0x80_0000),
                size: PageSize::new(0x40_0000).unwrap(),
                perms: Perms::W
            })
        );
        // Not present whatever the rest says.
        assert_eq!(f.decode(3, 0x6000_0000_0000_5400), Ok(Entry::Invalid));
    }

    #[test]
    fn v1_malformed_entries_are_named() {
        let f = v1(4);
        assert_eq!(
            reason(f.decode(1, 0x7001 | (1 << 52))),
            "v1 entry: reserved bit in 56:52 set"
        );
        assert_eq!(
            reason(f.decode(3, 0x5000 | (3 << 9) | 1)),
            "v1 PDE: NextLevel not below the entry's level"
        );
        assert_eq!(
            reason(f.decode(1, 0x5000 | (2 << 9) | 1)),
            "v1 PTE at level 1 with NextLevel 1..6 (only 0 and 7 map pages)"
        );
        assert_eq!(
            reason(f.decode(2, 0x4020_3001)),
            "v1 entry: address bits below the page size set"
        );
        // NextLevel 7 at level 2 encoding 8 KiB: NextLevel 0 territory or worse.
        assert_eq!(
            reason(f.decode(2, 0x40_0e01)),
            "v1 entry: NextLevel 7 page not larger than the level's own pages (NextLevel 0 is the encoding)"
        );
        // NextLevel 7 at level 1 encoding 2 MiB (all 512 entries).
        assert_eq!(
            reason(f.decode(1, 0xf_fe01)),
            "v1 entry: NextLevel 7 page as large as the table holding it"
        );
        assert_eq!(
            reason(f.decode(1, ADDR_MASK | 0xe01)),
            "v1 entry: NextLevel 7 with every address bit set encodes no size"
        );
        let f6 = v1(6);
        assert_eq!(
            reason(f6.decode(6, 0x6000_0000_0000_0001)),
            "v1 entry at level 6 maps a page (NextLevel 0 or 7): the top level holds tables only"
        );
        assert_eq!(
            reason(f.decode(5, 0x5401)),
            "v1 entry decoded at a level outside the table"
        );
    }

    #[test]
    fn v1_geometry() {
        // Mode n covers 12 + 9n bits; Mode 6 all 64 with a 128-entry root.
        let ia: alloc::vec::Vec<u32> = (1..=6).map(|l| v1(l).ia_bits()).collect();
        assert_eq!(ia, [21, 30, 39, 48, 57, 64]);
        assert_eq!(v1(6).table_bytes(6), 1024);
        assert_eq!(v1(6).table_bytes(5), 4096);
        assert_eq!(v1(6).entry_shift(6), 57);
        assert_eq!(HostV1::new(0), Err(FormatError::HostLevels { levels: 0 }));
        assert_eq!(HostV1::new(7), Err(FormatError::HostLevels { levels: 7 }));
        // EFR.HATS (bits 11:10): 0 → 4 levels, 1 → 5, 2 → 6, 3 reserved.
        assert_eq!(
            HostV1::for_unit(5, 0),
            Err(FormatError::HatsUnsupported {
                levels: 5,
                max: Some(4)
            })
        );
        assert!(HostV1::for_unit(6, 2 << 10).is_ok());
        assert_eq!(
            HostV1::for_unit(3, 3 << 10),
            Err(FormatError::HatsUnsupported {
                levels: 3,
                max: None
            })
        );
    }

    #[test]
    fn v1_encode_known_answers() {
        let f = v1(4);
        let at = |level, pa, shift, perms, attrs| {
            f.with_sized_pages(true).encode_leaf(
                level,
                PhysAddr(pa),
                PageSize::from_shift(shift).unwrap(),
                perms,
                attrs,
                0,
            )
        };
        let d = V1Attrs::default();
        // Linux v1: paddr | PR | IR | IW; old io_pgtable also sets FC.
        assert_eq!(at(1, 0x7000, 12, Perms::RW, d), Ok(0x6000_0000_0000_7001));
        let fc = V1Attrs {
            force_coherent: true,
            ..d
        };
        assert_eq!(at(1, 0x7000, 12, Perms::R, fc), Ok(0x3000_0000_0000_7001));
        let u = V1Attrs {
            untranslated_only: true,
            ..d
        };
        assert_eq!(
            at(2, 0x4020_0000, 21, Perms::W, u),
            Ok(0x4800_0000_4020_0001)
        );
        // Linux PAGE_SIZE_PTE for 32 KiB at 0x20000 with PM_LEVEL_ENC(7).
        assert_eq!(at(1, 0x2_0000, 15, Perms::RW, d), Ok(0x6000_0000_0002_3e01));
        // Every slot holds the same word.
        let sized = f.with_sized_pages(true);
        let slot = |s| {
            sized.encode_leaf(
                1,
                PhysAddr(0x2_0000),
                PageSize::new(0x8000).unwrap(),
                Perms::RW,
                d,
                s,
            )
        };
        assert_eq!(slot(7), slot(0));
        // Linux PM_LEVEL_PDE.
        assert_eq!(
            f.encode_table(3, PhysAddr(0x5000), 2),
            0x6000_0000_0000_5401
        );
        assert!(at(1, 0x7000, 12, Perms::RWX, d).is_err());
        assert!(at(1, 0x7000, 12, Perms::default(), d).is_err());
        // 512 GiB pages never (Linux AMD_IOMMU_PGSIZES).
        assert!(at(4, 0, 39, Perms::RW, d).is_err());
    }

    #[test]
    fn v1_page_sizes_per_level() {
        let s = |shift| PageSize::from_shift(shift).unwrap();
        let plain = v1(6);
        let sized = plain.with_sized_pages(true);
        assert_eq!(plain.leaf_entries(1, s(12)), Some(1));
        assert_eq!(plain.leaf_entries(2, s(21)), Some(1));
        assert_eq!(plain.leaf_entries(3, s(30)), Some(1));
        assert_eq!(plain.leaf_entries(1, s(15)), None);
        assert_eq!(sized.leaf_entries(1, s(15)), Some(8));
        assert_eq!(sized.leaf_entries(1, s(20)), Some(256));
        assert_eq!(sized.leaf_entries(1, s(21)), None);
        assert_eq!(sized.leaf_entries(2, s(22)), Some(2));
        assert_eq!(sized.leaf_entries(3, s(38)), Some(256));
        // 512 GiB: neither NextLevel 0 at level 4 nor NextLevel 7 at level 3.
        assert_eq!(sized.leaf_entries(4, s(39)), None);
        assert_eq!(sized.leaf_entries(3, s(39)), None);
        assert_eq!(sized.leaf_entries(4, s(40)), Some(2));
        assert_eq!(sized.leaf_entries(4, s(47)), Some(256));
        // Levels 5 and 6 get no pages from the write side.
        assert_eq!(sized.leaf_entries(5, s(48)), None);
        assert_eq!(sized.leaf_entries(6, s(57)), None);
        // A 3-level table has no level 4.
        assert_eq!(v1(3).with_sized_pages(true).leaf_entries(4, s(40)), None);
    }

    #[test]
    fn v1_split_keeps_attributes() {
        let f = v1(4);
        // 2 MiB IR|FC page at 0x4020_0000 → 4 KiB pages.
        let raw = 0x3000_0000_4020_0001;
        assert_eq!(f.split_leaf(2, raw, 3), Some(0x3000_0000_4020_3001));
        assert_eq!(
            f.split_leaf(3, 0x6000_0000_4000_0001, 511),
            Some(0x6000_0000_7fe0_0001)
        );
        // NextLevel-7 pages and 4 KiB pages do not split.
        assert_eq!(f.split_leaf(2, 0x6000_0000_009f_fe01, 0), None);
        assert_eq!(f.split_leaf(1, 0x6000_0000_0000_7001, 0), None);
        // Level 5 would split into 512 GiB pages.
        assert_eq!(v1(5).split_leaf(5, 0x6001_0000_0000_0001, 0), None);
    }

    #[test]
    fn c_bit_is_never_an_address() {
        let c47 = 1u64 << 47;
        let f = v1(4).with_c_bit(Some(47)).unwrap();
        assert_eq!(f.oa_bits(), 47);
        let leaf = f
            .encode_leaf(
                1,
                PhysAddr(0x7000),
                PageSize::SIZE_4K,
                Perms::RW,
                V1Attrs::default(),
                0,
            )
            .unwrap();
        assert_eq!(leaf, 0x6000_0000_0000_7001 | c47);
        assert!(matches!(
            f.decode(1, leaf),
            Ok(Entry::Leaf {
                base: PhysAddr(0x7000),
                ..
            })
        ));
        let plain = V1Attrs {
            decrypted: true,
            ..V1Attrs::default()
        };
        assert_eq!(
            f.encode_leaf(1, PhysAddr(0x7000), PageSize::SIZE_4K, Perms::RW, plain, 0),
            Ok(0x6000_0000_0000_7001)
        );
        let t = f.encode_table(4, PhysAddr(0x5000), 3);
        assert_eq!(t, 0x6000_0000_0000_5601 | c47);
        assert_eq!(
            f.decode(4, t),
            Ok(Entry::Table {
                next: PhysAddr(0x5000),
                level: 3,
                perms: Perms::RW
            })
        );
        // Without the C-bit the same bit is an address bit.
        assert!(matches!(
            v1(4).decode(4, t),
            Ok(Entry::Table { next, .. }) if next == PhysAddr(0x5000 | c47)
        ));
        // A split keeps the C-bit out of the child's address.
        let big = f
            .encode_leaf(
                2,
                PhysAddr(0x20_0000),
                PageSize::SIZE_2M,
                Perms::RW,
                V1Attrs::default(),
                0,
            )
            .unwrap();
        assert_eq!(f.split_leaf(2, big, 1), Some(0x6000_0000_0020_1001 | c47));
        assert_eq!(
            HostV1::new(4).unwrap().with_c_bit(Some(52)),
            Err(FormatError::CBit { bit: 52 })
        );
        assert_eq!(
            GuestV2::new(4).unwrap().with_c_bit(Some(11)),
            Err(FormatError::CBit { bit: 11 })
        );
        let g = GuestV2::new(4).unwrap().with_c_bit(Some(51)).unwrap();
        assert_eq!(
            g.encode_table(4, PhysAddr(0x5000), 3),
            0x0008_0000_0000_5027
        );
        assert!(matches!(
            g.decode(4, 0x0008_0000_0000_5027),
            Ok(Entry::Table {
                next: PhysAddr(0x5000),
                ..
            })
        ));
    }

    #[test]
    fn formats_from_device_table_entries() {
        let e = DeviceTableEntry::host(0x1000, 3, 1, true, true);
        assert_eq!(HostV1::from_dte(&e), Ok(v1(3)));
        assert!(matches!(
            HostV1::from_dte(&DeviceTableEntry::default()),
            Err(FormatError::NotTranslating { .. })
        ));
        assert!(HostV1::from_dte(&DeviceTableEntry::blocking(1)).is_err());
        assert!(GuestV2::from_dte(&e).is_err());
        let mut g = DeviceTableEntry::blocking(2);
        g.set_guest(0x9000, Glx::One, true, GuestPagingMode::Level5);
        assert_eq!(GuestV2::from_dte(&g), Ok(GuestV2::new(5).unwrap()));
        assert!(HostV1::from_dte(&g).is_err());
        // EFR.GATS (13:12) 1 allows 5 levels.
        assert!(GuestV2::for_unit(5, 1 << 12).is_ok());
        assert_eq!(
            GuestV2::for_unit(5, 0),
            Err(FormatError::GatsUnsupported { levels: 5 })
        );
    }

    #[test]
    fn v2_known_answers() {
        let f = GuestV2::new(4).unwrap();
        let enc = |level, pa, shift, perms| {
            f.encode_leaf(
                level,
                PhysAddr(pa),
                PageSize::from_shift(shift).unwrap(),
                perms,
                (),
                0,
            )
        };
        // Linux set_pte_attr: P | U/S | A | D, R/W for writes (0x67 with RW).
        assert_eq!(enc(1, 0x7000, 12, Perms::RWX), Ok(0x7067));
        assert_eq!(enc(1, 0x7000, 12, Perms::RW), Ok(0x7067 | V2_NX));
        assert_eq!(enc(2, 0x20_0000, 21, Perms::RX), Ok(0x20_00e5));
        assert_eq!(enc(3, 0x4000_0000, 30, Perms::RWX), Ok(0x4000_00e7));
        assert!(enc(1, 0x7000, 12, Perms::W).is_err());
        assert!(enc(4, 0, 39, Perms::RW).is_err());
        // Linux set_pgtable_attr: P | R/W | U/S | A.
        assert_eq!(f.encode_table(4, PhysAddr(0x5000), 3), 0x5027);
        assert_eq!(
            f.decode(4, 0x5027),
            Ok(Entry::Table {
                next: PhysAddr(0x5000),
                level: 3,
                perms: Perms::RWX
            })
        );
        assert_eq!(
            f.decode(1, 0x7067 | V2_NX),
            Ok(Entry::Leaf {
                base: PhysAddr(0x7000),
                size: PageSize::SIZE_4K,
                perms: Perms::RW
            })
        );
        // Bit 7 of a 4 KiB PTE is PAT, not PS; bit 12 of a 2 MiB page is PAT.
        assert!(matches!(
            f.decode(1, 0x7081),
            Ok(Entry::Leaf {
                size: PageSize::SIZE_4K,
                ..
            })
        ));
        assert!(matches!(
            f.decode(2, 0x20_1081),
            Ok(Entry::Leaf {
                base: PhysAddr(0x20_0000),
                size: PageSize::SIZE_2M,
                ..
            })
        ));
        assert_eq!(
            reason(f.decode(2, 0x20_2081)),
            "v2 entry: address bits between PAT (bit 12) and the page size set in a large page"
        );
        assert_eq!(
            reason(f.decode(4, 0x5081)),
            "v2 entry: PS (bit 7) set in a PML4E/PML5E, where it is reserved"
        );
        assert_eq!(f.decode(3, 0x5026), Ok(Entry::Invalid));
        assert_eq!((f.ia_bits(), GuestV2::new(5).unwrap().ia_bits()), (47, 56));
        assert_eq!(GuestV2::new(3), Err(FormatError::GuestLevels { levels: 3 }));
        // Splits: PAT moves from bit 12 to bit 7 for 4 KiB children.
        assert_eq!(f.split_leaf(2, 0x20_1081 | V2_RW, 2), Some(0x20_2083));
        assert_eq!(f.split_leaf(3, 0x4000_1081, 1), Some(0x4020_1081));
        assert_eq!(f.split_leaf(1, 0x7001, 0), None);
    }

    #[test]
    fn gcr3_table_lookup() {
        // A two-level GCR3 table (GLX = 1): PASID 0x201 takes entry 1 of the top table
        // and entry 1 of the second (Linux __get_gcr3_pte, 9 bits per level).
        let (mut m, mut t) = rig();
        let top = table(&mut m, &mut t, 2, 4096);
        let leaf = table(&mut m, &mut t, 1, 4096);
        m.write_u64(PhysAddr(top + 8), leaf | 1).unwrap();
        m.write_u64(
            PhysAddr(leaf + 8),
            crate::hw::dte::Gcr3Entry::new(0xabc_d000).qwords()[0],
        )
        .unwrap();
        m.write_u64(PhysAddr(leaf), 0x5000).unwrap();
        let mut dte = DeviceTableEntry::blocking(1);
        dte.set_guest(top, Glx::Two, true, GuestPagingMode::Level4);
        let f = GuestV2::new(4).unwrap();
        assert_eq!(f.gcr3_lookup(&dte, &m, 0x201), Ok(PhysAddr(0xabc_d000)));
        // PASID 0x200: entry 0 of the second table has V = 0.
        assert_eq!(
            f.gcr3_lookup(&dte, &m, 0x200),
            Err(Gcr3Error::NotPresent {
                level: 0,
                addr: PhysAddr(leaf)
            })
        );
        // PASID 0: entry 0 of the top table has V = 0.
        assert_eq!(
            f.gcr3_lookup(&dte, &m, 0),
            Err(Gcr3Error::NotPresent {
                level: 1,
                addr: PhysAddr(top)
            })
        );
        assert_eq!(
            f.gcr3_lookup(&dte, &m, 1 << 18),
            Err(Gcr3Error::PasidBeyondTable {
                pasid: 1 << 18,
                bits: 18
            })
        );
        let mut one = dte;
        one.set_bits(57, 56, Glx::One.bits());
        assert!(matches!(
            f.gcr3_lookup(&one, &m, 0x201),
            Err(Gcr3Error::PasidBeyondTable { bits: 9, .. })
        ));
        one.set_bits(57, 56, 3);
        assert_eq!(f.gcr3_lookup(&one, &m, 1), Err(Gcr3Error::GlxReserved));
        assert!(matches!(
            f.gcr3_lookup(&DeviceTableEntry::host(0x1000, 4, 1, true, true), &m, 0),
            Err(Gcr3Error::NotGuest(_))
        ));
        // A pointer to memory that is not there.
        m.write_u64(PhysAddr(top + 16), 0x7_0000_0001).unwrap();
        assert!(matches!(
            f.gcr3_lookup(&dte, &m, 0x401),
            Err(Gcr3Error::Mem(MemError::Unbacked { .. }))
        ));
    }

    /// A strict memory and an allocator whose tables a test links by hand.
    fn rig() -> (Mem, Tables) {
        (Mem::default(), Tables::new(PhysAddr(1 << 32)))
    }

    fn table(m: &mut Mem, t: &mut Tables, level: u8, bytes: u64) -> u64 {
        let a = t.alloc_table(level, bytes).unwrap();
        m.write(a, &alloc::vec![0u8; bytes as usize]).unwrap();
        a.0
    }

    #[test]
    fn level_skipping_tree_written_by_hand() {
        // Mode 4: the root's entry 0 points straight to a level-2 table (level 3
        // skipped), whose entry 1 points to a level-1 table, whose entry 5 maps a
        // 4 KiB page. The skipped IOVA bits 38:30 must be zero.
        let f = v1(4);
        let (mut m, mut t) = rig();
        let root = table(&mut m, &mut t, 4, 4096);
        let l2 = table(&mut m, &mut t, 2, 4096);
        let l1 = table(&mut m, &mut t, 1, 4096);
        m.write_u64(PhysAddr(root), v1_pde(l2, 2)).unwrap();
        m.write_u64(PhysAddr(l2 + 8), v1_pde(l1, 1)).unwrap();
        m.write_u64(PhysAddr(l1 + 5 * 8), 0x6000_0000_0009_9001)
            .unwrap();
        let w = walk(&f, &m, PhysAddr(root), &WalkLimits::default()).unwrap();
        assert_eq!(
            w.mappings,
            alloc::vec![Mapping {
                iova: Iova((1 << 21) + 5 * 4096),
                pa: PhysAddr(0x9_9000),
                size: 4096,
                perms: Perms::RW,
                page_size: PageSize::SIZE_4K
            }]
        );
        let levels: alloc::vec::Vec<u8> = w.tables.iter().map(|t| t.level).collect();
        assert_eq!(levels, [4, 2, 1]);
        let tr = translate(&f, &m, PhysAddr(root), Iova((1 << 21) + 5 * 4096 + 0x10)).unwrap();
        assert_eq!(tr.pa(), Some(PhysAddr(0x9_9010)));
        assert_eq!(tr.steps.len(), 3);
        // Bit 30 lies in the skipped level: not translated.
        let tr = translate(&f, &m, PhysAddr(root), Iova((1 << 30) + (1 << 21))).unwrap();
        assert_eq!(tr.outcome, Outcome::SkippedBitsSet { level: 4 });
        // The generic map follows the skipping entry where the IOVA fits ...
        map(
            &f,
            &mut m,
            &mut t,
            PhysAddr(root),
            Iova(3 << 21),
            PhysAddr(0x4000_0000),
            1 << 21,
            PageSize::SIZE_2M,
            Perms::R,
            V1Attrs::default(),
        )
        .unwrap();
        assert_eq!(
            m.read_u64(PhysAddr(l2 + 3 * 8)).unwrap(),
            0x2000_0000_4000_0001
        );
        // ... and refuses an IOVA in the part the skipping entry does not cover.
        let e = map(
            &f,
            &mut m,
            &mut t,
            PhysAddr(root),
            Iova(1 << 30),
            PhysAddr(0x4000_0000),
            1 << 21,
            PageSize::SIZE_2M,
            Perms::R,
            V1Attrs::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e.kind, MapErrorKind::Corrupt { level: 4, .. }),
            "{e:?}"
        );
        let w = walk(&f, &m, PhysAddr(root), &WalkLimits::default()).unwrap();
        assert_eq!(w.mappings.len(), 2);
    }

    #[test]
    fn replicated_next_level_7_page_written_by_hand() {
        // Mode 3: a 4 MiB page at PA 0x80_0000 in level-2 entries 2 and 3 (NextLevel 7,
        // address bits 20:12 set, bit 21 clear), written as Linux writes it: the same
        // word in both entries.
        let f = v1(3);
        let (mut m, mut t) = rig();
        let root = table(&mut m, &mut t, 3, 4096);
        let l2 = table(&mut m, &mut t, 2, 4096);
        m.write_u64(PhysAddr(root), v1_pde(l2, 2)).unwrap();
        let pte = sized_page_addr(0x80_0000, 22) | (7 << 9) | PR | IR | IW;
        assert_eq!(pte, 0x6000_0000_009f_fe01);
        for i in [2u64, 3] {
            m.write_u64(PhysAddr(l2 + i * 8), pte).unwrap();
        }
        let w = walk(&f, &m, PhysAddr(root), &WalkLimits::default()).unwrap();
        assert_eq!(
            w.mappings,
            alloc::vec![Mapping {
                iova: Iova(4 << 20),
                pa: PhysAddr(0x80_0000),
                size: 4 << 20,
                perms: Perms::RW,
                page_size: PageSize::new(4 << 20).unwrap()
            }]
        );
        // The second entry translates into the second half of the page.
        let tr = translate(&f, &m, PhysAddr(root), Iova((6 << 20) + 0x123)).unwrap();
        assert_eq!(tr.pa(), Some(PhysAddr(0xa0_0123)));
        // Part of a replicated page is never unmapped or split.
        for p in [Partial::Refuse, Partial::Split] {
            assert!(matches!(
                unmap(&f, &mut m, &mut t, PhysAddr(root), Iova(6 << 20), 4096, p),
                Err(MapErrorKind::PartialLeaf { .. })
            ));
        }
        // The whole page goes in one unmap, both entries cleared.
        let u = unmap(
            &f,
            &mut m,
            &mut t,
            PhysAddr(root),
            Iova(4 << 20),
            4 << 20,
            Partial::Refuse,
        )
        .unwrap();
        assert_eq!(u.bytes, 4 << 20);
        assert_eq!(m.read_u64(PhysAddr(l2 + 3 * 8)).unwrap(), 0);
    }
}
