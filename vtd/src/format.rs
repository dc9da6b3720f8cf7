//! VT-d page-table formats for the generic walker of `iommu-core`.
//!
//! - [`SecondStage`]: second-stage (SL/SS) tables, 3, 4 or 5 levels (AW 1, 2, 3), with
//!   2 MiB / 1 GiB leaves where CAP.SLLPS allows them (reference `vtd.md` §10);
//! - [`FirstStage`]: first-stage tables in the x86-64 4- or 5-level paging format
//!   (reference §11).
//!
//! Both use 4 KiB tables of 512 entries, 9 IOVA bits per level; level 1 holds 4 KiB
//! pages. Entry bits come from [`crate::hw::pte`] (the single source of truth for VT-d
//! bits); this module only turns them into [`Entry`] values and names the reserved bit
//! that makes an entry malformed, and (the write side, [`WriteFormat`]) encodes leaves
//! and table entries for the generic `map` / `unmap` of `iommu_core::pgtable`.

use crate::hw::pasid::Flpm;
use crate::hw::pte::{
    level_shift, FlPte, PteCaps, SlPte, FL_PS, FL_RW, FL_XD, PTE_ADDR_MASK, PTE_SIZE, SL_PS,
    SL_SNP, SL_TM, SL_X,
};
use crate::hw::regs::{CAP, ECAP};
use crate::hw::root::AddressWidth;
use core::fmt;
use iommu_core::addr::{PageSize, PhysAddr};
use iommu_core::pgtable::{Entry, EntryError, Format, Perms, WriteFormat};

/// Bytes of a VT-d paging-structure table (both stages).
pub const TABLE_BYTES: u64 = 4096;

/// Why a format could not be built for a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Second-stage tables have 3, 4 or 5 levels.
    SecondStageLevels {
        /// The levels asked for.
        levels: u8,
    },
    /// The unit's CAP.SAGAW does not list this second-stage width.
    SagawUnsupported {
        /// The levels asked for.
        levels: u8,
        /// CAP.SAGAW (bits 12:8).
        sagaw: u8,
    },
    /// First-stage tables have 4 or 5 levels.
    FirstStageLevels {
        /// The levels asked for.
        levels: u8,
    },
    /// 5-level first-stage paging needs CAP.FL5LP (bit 60).
    Fl5lpUnsupported,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FormatError::SecondStageLevels { levels } => {
                write!(f, "second-stage tables have 3, 4 or 5 levels, not {levels}")
            }
            FormatError::SagawUnsupported { levels, sagaw } => write!(
                f,
                "CAP.SAGAW {sagaw:#07b} does not support {levels}-level second-stage tables"
            ),
            FormatError::FirstStageLevels { levels } => {
                write!(f, "first-stage tables have 4 or 5 levels, not {levels}")
            }
            FormatError::Fl5lpUnsupported => {
                f.write_str("5-level first-stage paging needs CAP.FL5LP (bit 60)")
            }
        }
    }
}

/// Second-stage reserved-bit capabilities of a unit: large pages from CAP.SLLPS
/// (bit 34: 2 MiB, bit 35: 1 GiB), SNP defined with ECAP.SC (bit 7), TM defined with
/// ECAP.DT (bit 2), and the host address width `haw` (not in CAP: from the platform's
/// DMAR table).
pub fn second_stage_caps(cap: u64, ecap: u64, haw: u32) -> PteCaps {
    let sllps = CAP::SLLPS.read(cap);
    PteCaps {
        haw,
        large_2m: sllps & 1 != 0,
        large_1g: sllps & 2 != 0,
        snoop: ECAP::SC.is_set(ecap),
        transient: ECAP::DT.is_set(ecap),
    }
}

/// First-stage reserved-bit capabilities of a unit: 2 MiB pages always, 1 GiB pages
/// with CAP.FL1GP (bit 56), host address width `haw`.
pub fn first_stage_caps(cap: u64, haw: u32) -> PteCaps {
    PteCaps {
        haw,
        large_2m: true,
        large_1g: CAP::FL1GP.is_set(cap),
        snoop: false,
        transient: false,
    }
}

/// Builds `[&str; 64]` with one message per bit number.
macro_rules! per_bit {
    ($pre:literal, $post:literal) => {
        per_bit!(@ $pre, $post; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22
            23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49
            50 51 52 53 54 55 56 57 58 59 60 61 62 63)
    };
    (@ $pre:literal, $post:literal; $($n:literal)*) => {
        [$(concat!($pre, $n, $post)),*]
    };
}

static SL_ADDR_ABOVE_HAW: [&str; 64] = per_bit!(
    "second-stage entry: address bit ",
    " set at or above the host address width"
);
static SL_RESERVED: [&str; 64] = per_bit!("second-stage entry: reserved bit ", " set");
static FL_ADDR_ABOVE_HAW: [&str; 64] = per_bit!(
    "first-stage entry: address bit ",
    " set at or above the host address width"
);
static FL_RESERVED: [&str; 64] = per_bit!("first-stage entry: reserved bit ", " set");

/// The message for the lowest reserved bit set in `rsvd` (non-zero).
fn reserved_reason(first_stage: bool, level: u8, rsvd: u64, haw: u32) -> EntryError {
    let bit = rsvd.trailing_zeros();
    let ps = if first_stage { FL_PS } else { SL_PS };
    let reason = match (first_stage, 1u64 << bit) {
        (false, b) if b == SL_SNP => "second-stage entry: SNP (bit 11) set without ECAP.SC",
        (false, b) if b == SL_TM => {
            "second-stage entry: TM (bit 62) set outside a leaf or without ECAP.DT"
        }
        (false, b) if b == ps && level >= 4 => {
            "second-stage entry: PS (bit 7) set in a PML4E/PML5E, where it is reserved"
        }
        (false, b) if b == ps => {
            "second-stage entry: PS (bit 7) set for a page size CAP.SLLPS does not support"
        }
        (true, b) if b == ps && level >= 4 => {
            "first-stage entry: PS (bit 7) set in a PML4E/PML5E, where it is reserved"
        }
        (true, b) if b == ps => {
            "first-stage entry: PS (bit 7) set for 1 GiB pages without CAP.FL1GP"
        }
        (false, _) if (12..52).contains(&bit) && bit >= haw => SL_ADDR_ABOVE_HAW[bit as usize],
        (true, _) if (12..52).contains(&bit) && bit >= haw => FL_ADDR_ABOVE_HAW[bit as usize],
        (false, _) => SL_RESERVED[bit as usize],
        (true, _) => FL_RESERVED[bit as usize],
    };
    EntryError { reason }
}

fn page_size(level: u8) -> Result<PageSize, EntryError> {
    PageSize::from_shift(level_shift(level as u32)).ok_or(EntryError {
        reason: "VT-d entry decoded at a level outside 1..=5",
    })
}

/// VT-d second-stage page tables.
///
/// An entry is present iff R (bit 0) or W (bit 1) is set; there is no present bit.
/// Permissions combine over the levels (a read or write is allowed only if every entry
/// on the path allows it). X (bit 2) counts as execute permission only when execute
/// requests are enabled ([`SecondStage::with_exec`], PASID-entry SLEE); otherwise it is
/// ignored and no mapping is executable. PS (bit 7) makes a level-2 entry a 2 MiB leaf
/// and a level-3 entry a 1 GiB leaf, where CAP.SLLPS allows; PS is reserved at levels
/// 4 and 5. Reserved bits follow [`SlPte::reserved_bits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondStage {
    levels: u8,
    caps: PteCaps,
    exec: bool,
}

impl SecondStage {
    /// A second-stage format with `levels` (3, 4 or 5) levels for a unit with `caps`.
    pub fn new(levels: u8, caps: PteCaps) -> Result<Self, FormatError> {
        if !(3..=5).contains(&levels) {
            return Err(FormatError::SecondStageLevels { levels });
        }
        Ok(Self {
            levels,
            caps,
            exec: false,
        })
    }

    /// The format for a context-entry or PASID-entry AW field.
    pub fn from_aw(aw: AddressWidth, caps: PteCaps) -> Self {
        Self {
            levels: aw.levels() as u8,
            caps,
            exec: false,
        }
    }

    /// The format for `levels` on a unit with registers `cap` and `ecap` and host
    /// address width `haw`: the width must be listed in CAP.SAGAW (bit 1: 3 levels,
    /// bit 2: 4, bit 3: 5) and the capabilities come from [`second_stage_caps`].
    pub fn for_unit(levels: u8, cap: u64, ecap: u64, haw: u32) -> Result<Self, FormatError> {
        let f = Self::new(levels, second_stage_caps(cap, ecap, haw))?;
        let sagaw = CAP::SAGAW.read(cap) as u8;
        if sagaw & (1 << (levels - 2)) == 0 {
            return Err(FormatError::SagawUnsupported { levels, sagaw });
        }
        Ok(f)
    }

    /// The same format with execute requests enabled (X bit honoured) or not.
    pub fn with_exec(self, exec: bool) -> Self {
        Self { exec, ..self }
    }

    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The reserved-bit capabilities in use.
    pub fn caps(&self) -> PteCaps {
        self.caps
    }
}

impl Format for SecondStage {
    fn name(&self) -> &'static str {
        match self.levels {
            3 => "vtd-second-stage-3",
            4 => "vtd-second-stage-4",
            _ => "vtd-second-stage-5",
        }
    }
    fn root_level(&self) -> u8 {
        self.levels
    }
    fn table_bytes(&self, _level: u8) -> u64 {
        TABLE_BYTES
    }
    fn entry_shift(&self, level: u8) -> u32 {
        level_shift(level as u32)
    }
    fn ia_bits(&self) -> u32 {
        // 39, 48 or 57: 12 + 9 * levels.
        12 + 9 * self.levels as u32
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        let pte = SlPte::from_raw(raw);
        if !pte.present() {
            return Ok(Entry::Invalid);
        }
        if level == 0 || level > self.levels {
            return Err(EntryError {
                reason: "second-stage entry decoded at a level outside the table",
            });
        }
        let rsvd = pte.reserved_bits(level as u32, &self.caps);
        if rsvd != 0 {
            return Err(reserved_reason(false, level, rsvd, self.caps.haw));
        }
        let perms = Perms {
            read: pte.read(),
            write: pte.write(),
            exec: self.exec && pte.exec(),
        };
        if pte.is_leaf(level as u32) {
            Ok(Entry::Leaf {
                base: PhysAddr(pte.addr()),
                size: page_size(level)?,
                perms,
            })
        } else {
            Ok(Entry::Table {
                next: PhysAddr(pte.addr()),
                level: level - 1,
                perms,
            })
        }
    }
}

/// VT-d first-stage page tables (x86-64 4- or 5-level paging).
///
/// An entry is present iff P (bit 0) is set. A present entry allows reads; R/W (bit 1)
/// allows writes; XD (bit 63) forbids execute. Permissions combine over the levels.
/// U/S, PWT, PCD, A, D, G and EA are not permissions of a DMA mapping and are ignored
/// here. PS (bit 7) makes a level-2 entry a 2 MiB leaf and a level-3 entry a 1 GiB leaf
/// (with CAP.FL1GP); bit 12 of a large-page entry is PAT, not address.
///
/// IOVAs are canonical lower-half addresses: the input width is 47 bits (4-level) or
/// 56 bits (5-level), as Linux limits first-stage domains (aperture end
/// `__DOMAIN_MAX_ADDR(gaw - 1)`, drivers/iommu/intel/iommu.c), so a present root entry
/// in the upper half of the root table is reported as an IOVA overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstStage {
    levels: u8,
    caps: PteCaps,
}

impl FirstStage {
    /// A first-stage format with `levels` (4 or 5) levels for a unit with `caps`.
    pub fn new(levels: u8, caps: PteCaps) -> Result<Self, FormatError> {
        if !(4..=5).contains(&levels) {
            return Err(FormatError::FirstStageLevels { levels });
        }
        Ok(Self { levels, caps })
    }

    /// The format for a PASID-entry FLPM field.
    pub fn from_flpm(flpm: Flpm, caps: PteCaps) -> Self {
        Self {
            levels: flpm.levels() as u8,
            caps,
        }
    }

    /// The format for `levels` on a unit with register `cap` and host address width
    /// `haw`: 5 levels need CAP.FL5LP; capabilities from [`first_stage_caps`].
    pub fn for_unit(levels: u8, cap: u64, haw: u32) -> Result<Self, FormatError> {
        let f = Self::new(levels, first_stage_caps(cap, haw))?;
        if levels == 5 && !CAP::FL5LP.is_set(cap) {
            return Err(FormatError::Fl5lpUnsupported);
        }
        Ok(f)
    }

    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The reserved-bit capabilities in use.
    pub fn caps(&self) -> PteCaps {
        self.caps
    }
}

impl Format for FirstStage {
    fn name(&self) -> &'static str {
        match self.levels {
            4 => "vtd-first-stage-4",
            _ => "vtd-first-stage-5",
        }
    }
    fn root_level(&self) -> u8 {
        self.levels
    }
    fn table_bytes(&self, _level: u8) -> u64 {
        TABLE_BYTES
    }
    fn entry_shift(&self, level: u8) -> u32 {
        level_shift(level as u32)
    }
    fn ia_bits(&self) -> u32 {
        // Canonical lower half: 47 or 56 bits.
        12 + 9 * self.levels as u32 - 1
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        let pte = FlPte::from_raw(raw);
        if !pte.present() {
            return Ok(Entry::Invalid);
        }
        if level == 0 || level > self.levels {
            return Err(EntryError {
                reason: "first-stage entry decoded at a level outside the table",
            });
        }
        let rsvd = pte.reserved_bits(level as u32, &self.caps);
        if rsvd != 0 {
            return Err(reserved_reason(true, level, rsvd, self.caps.haw));
        }
        let perms = Perms {
            read: true,
            write: raw & FL_RW != 0,
            exec: raw & FL_XD == 0,
        };
        if pte.is_leaf(level as u32) {
            Ok(Entry::Leaf {
                base: PhysAddr(pte.leaf_addr(level as u32)),
                size: page_size(level)?,
                perms,
            })
        } else {
            Ok(Entry::Table {
                next: PhysAddr(pte.addr()),
                level: level - 1,
                perms,
            })
        }
    }
}

/// The large page a leaf at `level` maps where `caps` allow it: 4 KiB at level 1,
/// 2 MiB at level 2 (`large_2m`), 1 GiB at level 3 (`large_1g`).
fn leaf_size(level: u8, caps: &PteCaps) -> Option<PageSize> {
    match level {
        1 => Some(PageSize::SIZE_4K),
        2 if caps.large_2m => Some(PageSize::SIZE_2M),
        3 if caps.large_1g => Some(PageSize::SIZE_1G),
        _ => None,
    }
}

/// Address of child `index` of a large page at `addr` split into pages of the next
/// smaller level below `level`.
fn child_addr(addr: u64, level: u8, index: usize) -> u64 {
    addr + ((index as u64) << level_shift(level as u32 - 1))
}

/// The descent's view of an entry of either stage (permissions are not looked at).
#[inline]
fn classify(
    level: u8,
    present: bool,
    leaf: bool,
    page: u64,
    next: u64,
) -> Result<Entry, EntryError> {
    Ok(match (present, leaf) {
        (false, _) => Entry::Invalid,
        (true, true) => Entry::Leaf {
            base: PhysAddr(page),
            size: page_size(level)?,
            perms: Perms::RW,
        },
        (true, false) => Entry::Table {
            next: PhysAddr(next),
            level: level.wrapping_sub(1),
            perms: Perms::RW,
        },
    })
}

impl WriteFormat for SecondStage {
    type Attrs = ();

    fn oa_bits(&self) -> u32 {
        self.caps.haw
    }
    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32> {
        (level <= self.levels && leaf_size(level, &self.caps) == Some(size)).then_some(1)
    }
    /// R and W from `perms` (one of them needed: an entry with neither is not present);
    /// X only where execute requests are enabled ([`SecondStage::with_exec`]); PS at
    /// levels 2 and 3.
    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        _size: PageSize,
        perms: Perms,
        _attrs: (),
        _slot: u32,
    ) -> Result<u64, EntryError> {
        if !perms.read && !perms.write {
            return Err(EntryError {
                reason: "second-stage entry: a leaf needs R or W (R = W = 0 is not present)",
            });
        }
        if perms.exec && !self.exec {
            return Err(EntryError {
                reason: "second-stage entry: X needs execute requests enabled (SLEE)",
            });
        }
        let pte = if level == 1 {
            SlPte::page(pa.0, perms.read, perms.write)
        } else {
            SlPte::large_page(pa.0, perms.read, perms.write)
        };
        Ok(pte.raw() | if perms.exec { SL_X } else { 0 })
    }
    fn encode_table(&self, _level: u8, next: PhysAddr, _next_level: u8) -> u64 {
        SlPte::table(next.0).raw()
    }
    /// Present (R or W), leaf or table by PS and level; no reserved-bit checks.
    #[inline]
    fn classify(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        let pte = SlPte::from_raw(raw);
        let leaf = pte.is_leaf(level as u32);
        classify(level, pte.present(), leaf, pte.addr(), pte.addr())
    }
    /// A 2 MiB or 1 GiB leaf splits into 512 leaves of the next smaller size with every
    /// other bit (R, W, X, EMT, IPAT, SNP, TM) kept; PS stays for 2 MiB children and
    /// goes for 4 KiB ones.
    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64> {
        let pte = SlPte::from_raw(raw);
        if !(2..=3).contains(&level) || !pte.present() || !pte.ps() || index >= 512 {
            return None;
        }
        leaf_size(level - 1, &self.caps)?;
        let mut v = (raw & !PTE_ADDR_MASK) | child_addr(pte.addr(), level, index);
        if level == 2 {
            v &= !SL_PS;
        }
        Some(v)
    }
}

/// Bit 12 of a 2 MiB or 1 GiB first-stage leaf is PAT; in a 4 KiB PTE PAT is bit 7,
/// the PS position (x86-64 paging; Linux arch/x86/include/asm/pgtable_types.h:
/// `_PAGE_BIT_PAT` 7 "on 4KB pages", `_PAGE_BIT_PAT_LARGE` 12 "on 2MB or 1GB pages").
const FL_PAT_LARGE: u64 = 1 << 12;
const FL_PAT_4K: u64 = 1 << 7;

impl WriteFormat for FirstStage {
    type Attrs = ();

    fn oa_bits(&self) -> u32 {
        self.caps.haw
    }
    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32> {
        (level <= self.levels && leaf_size(level, &self.caps) == Some(size)).then_some(1)
    }
    /// Present and user (as Linux does), R/W for write, XD unless `perms.exec`; reads
    /// are always allowed, so a mapping without read cannot be expressed.
    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        _size: PageSize,
        perms: Perms,
        _attrs: (),
        _slot: u32,
    ) -> Result<u64, EntryError> {
        if !perms.read {
            return Err(EntryError {
                reason: "first-stage entry: a present page is always readable (no write-only)",
            });
        }
        let pte = if level == 1 {
            FlPte::page(pa.0, perms.write)
        } else {
            FlPte::large_page(pa.0, perms.write)
        };
        Ok(pte.raw() | if perms.exec { 0 } else { FL_XD })
    }
    fn encode_table(&self, _level: u8, next: PhysAddr, _next_level: u8) -> u64 {
        FlPte::table(next.0).raw()
    }
    /// Present (P), leaf or table by PS and level; no reserved-bit checks.
    #[inline]
    fn classify(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        let pte = FlPte::from_raw(raw);
        let leaf = pte.is_leaf(level as u32);
        classify(
            level,
            pte.present(),
            leaf,
            pte.leaf_addr(level as u32),
            pte.addr(),
        )
    }
    /// A 2 MiB or 1 GiB leaf splits into 512 leaves of the next smaller size with every
    /// other bit kept; a PAT bit moves from bit 12 to bit 7 when the children are 4 KiB
    /// pages.
    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64> {
        let pte = FlPte::from_raw(raw);
        if !(2..=3).contains(&level) || !pte.present() || !pte.ps() || index >= 512 {
            return None;
        }
        leaf_size(level - 1, &self.caps)?;
        let addr = pte.leaf_addr(level as u32);
        let pat = raw & FL_PAT_LARGE != 0;
        let rest = raw & !PTE_ADDR_MASK & !FL_PS;
        let child = child_addr(addr, level, index);
        Some(if level == 2 {
            rest | child | if pat { FL_PAT_4K } else { 0 }
        } else {
            rest | child | FL_PS | if pat { FL_PAT_LARGE } else { 0 }
        })
    }
}

// The walker reads 8-byte entries.
const _: () = assert!(PTE_SIZE == 8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::pte::{FL_P, SL_R, SL_W, SL_X};
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use alloc::vec::Vec;
    use iommu_core::addr::Iova;
    use iommu_core::mem::{MemError, PhysMem};
    use iommu_core::pgtable::{translate, walk, Mapping, Outcome, WalkErrorKind, WalkLimits};

    const CAPS: PteCaps = PteCaps {
        haw: 46,
        large_2m: true,
        large_1g: true,
        snoop: false,
        transient: false,
    };

    fn sl4() -> SecondStage {
        SecondStage::new(4, CAPS).unwrap()
    }

    #[test]
    fn second_stage_known_answers() {
        // Linux drivers/iommu/intel/iommu.h: DMA_PTE_READ = BIT(0), DMA_PTE_WRITE = BIT(1),
        // DMA_PTE_LARGE_PAGE = BIT(7); QEMU intel_iommu_internal.h: VTD_SL_R = 1,
        // VTD_SL_W = 2, VTD_SL_PT_PAGE_SIZE_MASK = 1 << 7.
        let f = sl4();
        assert_eq!(
            f.decode(1, 0x1234_5000 | 1 | 2),
            Ok(Entry::Leaf {
                base: PhysAddr(0x1234_5000),
                size: PageSize::SIZE_4K,
                perms: Perms::RW
            })
        );
        assert_eq!(
            f.decode(2, 0x4020_0000 | 1 | (1 << 7)),
            Ok(Entry::Leaf {
                base: PhysAddr(0x4020_0000),
                size: PageSize::SIZE_2M,
                perms: Perms::R
            })
        );
        assert_eq!(
            f.decode(3, 0x8000_0000 | 2 | (1 << 7)),
            Ok(Entry::Leaf {
                base: PhysAddr(0x8000_0000),
                size: PageSize::SIZE_1G,
                perms: Perms::W
            })
        );
        assert_eq!(
            f.decode(4, 0x9000 | 3),
            Ok(Entry::Table {
                next: PhysAddr(0x9000),
                level: 3,
                perms: Perms::RW
            })
        );
        // No present bit: R = W = 0 is not present, whatever else is set (Linux
        // dma_pte_present: (pte->val & 3) != 0).
        assert_eq!(f.decode(1, 0x1234_5000 | 4 | (1 << 7)), Ok(Entry::Invalid));
        assert_eq!(f.decode(3, 0), Ok(Entry::Invalid));
        // Bits 52..61 and 63 are ignored (QEMU VTD_SL_IGN_COM = 0xbff0000000000000).
        assert!(matches!(
            f.decode(1, 0x5003 | (0x3ff << 52) | (1 << 63)),
            Ok(Entry::Leaf { base, .. }) if base == PhysAddr(0x5000)
        ));
        // X only counts with execute requests enabled.
        let x = f.with_exec(true);
        assert!(matches!(
            x.decode(1, 0x5000 | SL_R | SL_X),
            Ok(Entry::Leaf { perms, .. }) if perms == Perms { read: true, write: false, exec: true }
        ));
        assert!(matches!(
            f.decode(1, 0x5000 | SL_R | SL_X),
            Ok(Entry::Leaf { perms, .. }) if perms == Perms::R
        ));
        assert_eq!(f.name(), "vtd-second-stage-4");
        assert_eq!(
            (
                f.root_level(),
                f.ia_bits(),
                f.entry_shift(3),
                f.table_bytes(1)
            ),
            (4, 48, 30, 4096)
        );
        assert_eq!(SecondStage::new(3, CAPS).unwrap().ia_bits(), 39);
        assert_eq!(SecondStage::new(5, CAPS).unwrap().ia_bits(), 57);
        assert_eq!(
            SecondStage::from_aw(AddressWidth::Bits57, CAPS).root_level(),
            5
        );
        assert_eq!(
            SecondStage::new(2, CAPS),
            Err(FormatError::SecondStageLevels { levels: 2 })
        );
    }

    fn reason(r: Result<Entry, EntryError>) -> &'static str {
        r.unwrap_err().reason
    }

    #[test]
    fn second_stage_reserved_bits_are_named() {
        let f = sl4();
        // PS is reserved at level 4 (QEMU VTD_SPTE_PAGE_L4_RSVD_MASK includes 0x80).
        assert_eq!(
            reason(f.decode(4, 0x9003 | SL_PS)),
            "second-stage entry: PS (bit 7) set in a PML4E/PML5E, where it is reserved"
        );
        // SNP (bit 11) without ECAP.SC (QEMU reserves 0x800).
        assert_eq!(
            reason(f.decode(1, 0x5003 | SL_SNP)),
            "second-stage entry: SNP (bit 11) set without ECAP.SC"
        );
        // Address above HAW 46.
        assert_eq!(
            reason(f.decode(1, 0x5003 | (1 << 47))),
            "second-stage entry: address bit 47 set at or above the host address width"
        );
        // Low address bits of a 2 MiB page (QEMU VTD_SPTE_LPAGE_L2_RSVD_MASK 0x1ff000).
        assert_eq!(
            reason(f.decode(2, 0x20_3000 | 3 | SL_PS)),
            "second-stage entry: reserved bit 12 set"
        );
        // 1 GiB page without CAP.SLLPS bit 35.
        let no1g = SecondStage::new(
            4,
            PteCaps {
                large_1g: false,
                ..CAPS
            },
        )
        .unwrap();
        assert_eq!(
            reason(no1g.decode(3, 0x4000_0003 | SL_PS)),
            "second-stage entry: PS (bit 7) set for a page size CAP.SLLPS does not support"
        );
        assert_eq!(
            reason(f.decode(1, 0x5003 | SL_TM)),
            "second-stage entry: TM (bit 62) set outside a leaf or without ECAP.DT"
        );
    }

    #[test]
    fn caps_and_unit_checks_from_registers() {
        // QEMU: VTD_CAP_SLLPS = (1 << 34) | (1 << 35), VTD_CAP_SAGAW_39bit = 0x2 << 8,
        // VTD_CAP_SAGAW_48bit = 0x4 << 8; ECAP.SC bit 7, ECAP.DT bit 2 (Linux
        // ecap_sc_support / ecap_dev_iotlb_support).
        let cap = (1u64 << 34) | (0x4 << 8);
        let ecap = (1u64 << 7) | (1 << 2);
        let c = second_stage_caps(cap, ecap, 39);
        assert_eq!(
            c,
            PteCaps {
                haw: 39,
                large_2m: true,
                large_1g: false,
                snoop: true,
                transient: true
            }
        );
        assert!(SecondStage::for_unit(4, cap, ecap, 39).is_ok());
        assert_eq!(
            SecondStage::for_unit(3, cap, ecap, 39),
            Err(FormatError::SagawUnsupported {
                levels: 3,
                sagaw: 0x4
            })
        );
        // Linux: cap_fl1gp_support = (cap >> 56) & 1, cap_fl5lp_support = (cap >> 60) & 1.
        assert!(first_stage_caps(1 << 56, 46).large_1g);
        assert!(!first_stage_caps(0, 46).large_1g);
        assert_eq!(
            FirstStage::for_unit(5, 0, 46),
            Err(FormatError::Fl5lpUnsupported)
        );
        assert!(FirstStage::for_unit(5, 1 << 60, 46).is_ok());
        assert_eq!(
            FirstStage::new(3, CAPS),
            Err(FormatError::FirstStageLevels { levels: 3 })
        );
    }

    #[test]
    fn first_stage_known_answers() {
        // Linux iommu.h: DMA_FL_PTE_PRESENT = BIT(0), DMA_FL_PTE_XD = BIT(63);
        // x86 paging (EDK2 Vtd.h, VirtualBox iommu-intel.h): R/W bit 1, PS bit 7.
        let f = FirstStage::new(4, CAPS).unwrap();
        assert_eq!(
            f.decode(1, 0x5000 | 1 | 4),
            Ok(Entry::Leaf {
                base: PhysAddr(0x5000),
                size: PageSize::SIZE_4K,
                perms: Perms {
                    read: true,
                    write: false,
                    exec: true
                }
            })
        );
        assert_eq!(
            f.decode(1, 0x5000 | FL_P | FL_RW | FL_XD),
            Ok(Entry::Leaf {
                base: PhysAddr(0x5000),
                size: PageSize::SIZE_4K,
                perms: Perms::RW
            })
        );
        // R/W without P: not present.
        assert_eq!(f.decode(2, 0x5000 | FL_RW), Ok(Entry::Invalid));
        // 2 MiB leaf; bit 12 is PAT, not address.
        assert_eq!(
            f.decode(2, 0x20_0000 | (1 << 12) | FL_P | FL_PS),
            Ok(Entry::Leaf {
                base: PhysAddr(0x20_0000),
                size: PageSize::SIZE_2M,
                perms: Perms::RX
            })
        );
        assert_eq!(
            reason(f.decode(2, 0x20_2000 | FL_P | FL_PS)),
            "first-stage entry: reserved bit 13 set"
        );
        assert_eq!(
            reason(f.decode(4, 0x6000 | FL_P | FL_PS)),
            "first-stage entry: PS (bit 7) set in a PML4E/PML5E, where it is reserved"
        );
        assert_eq!(
            reason(f.decode(1, 0x5001 | (1 << 46))),
            "first-stage entry: address bit 46 set at or above the host address width"
        );
        assert_eq!(
            f.decode(4, 0x6000 | FL_P | FL_RW),
            Ok(Entry::Table {
                next: PhysAddr(0x6000),
                level: 3,
                perms: Perms::RWX
            })
        );
        assert_eq!((f.ia_bits(), f.name()), (47, "vtd-first-stage-4"));
        assert_eq!(FirstStage::from_flpm(Flpm::Level5, CAPS).ia_bits(), 56);
    }

    #[test]
    fn encode_side_known_answers() {
        // Linux iommu.h: DMA_PTE_READ BIT(0), DMA_PTE_WRITE BIT(1), DMA_PTE_LARGE_PAGE
        // BIT(7); VirtualBox/EDK2: X bit 2 (with execute requests).
        let sl = sl4();
        let enc = |f: &SecondStage, level, pa, perms| {
            f.encode_leaf(level, PhysAddr(pa), page_size(level).unwrap(), perms, (), 0)
        };
        assert_eq!(enc(&sl, 1, 0x1234_5000, Perms::RW), Ok(0x1234_5003));
        assert_eq!(enc(&sl, 1, 0x1234_5000, Perms::W), Ok(0x1234_5002));
        assert_eq!(enc(&sl, 2, 0x4020_0000, Perms::R), Ok(0x4020_0081));
        assert_eq!(enc(&sl, 3, 0x8000_0000, Perms::RW), Ok(0x8000_0083));
        assert!(enc(&sl, 1, 0x5000, Perms::RWX).is_err());
        assert!(enc(&sl, 1, 0x5000, Perms::default()).is_err());
        assert_eq!(
            enc(&sl.with_exec(true), 1, 0x5000, Perms::RWX),
            Ok(0x5000 | SL_R | SL_W | SL_X)
        );
        assert_eq!(sl.encode_table(4, PhysAddr(0x9000), 3), 0x9003);
        // Splitting keeps every other bit; PS goes for 4 KiB children.
        let snp = 0x4020_0083 | SL_SNP;
        assert_eq!(sl.split_leaf(2, snp, 3), Some(0x4020_3003 | SL_SNP));
        assert_eq!(sl.split_leaf(3, 0x8000_0083, 1), Some(0x8020_0083));
        assert_eq!(sl.split_leaf(1, 0x5003, 0), None);
        assert_eq!(sl.split_leaf(2, 0x9003, 0), None);

        // x86-64 paging (Linux DMA_FL_PTE_PRESENT BIT(0), DMA_FL_PTE_US BIT(2),
        // DMA_FL_PTE_XD BIT(63); R/W bit 1, PS bit 7).
        let fl = FirstStage::new(4, CAPS).unwrap();
        let enc = |level, pa, perms| {
            fl.encode_leaf(level, PhysAddr(pa), page_size(level).unwrap(), perms, (), 0)
        };
        assert_eq!(enc(1, 0x5000, Perms::RWX), Ok(0x5007));
        assert_eq!(enc(1, 0x5000, Perms::R), Ok(0x5005 | FL_XD));
        assert_eq!(enc(2, 0x20_0000, Perms::RWX), Ok(0x20_0087));
        assert!(enc(1, 0x5000, Perms::W).is_err());
        assert_eq!(fl.encode_table(4, PhysAddr(0x6000), 3), 0x6007);
        // PAT moves from bit 12 (2 MiB leaf) to bit 7 (4 KiB PTE); stays at 12 for the
        // 2 MiB children of a 1 GiB leaf.
        let pat2m = 0x20_0087 | (1 << 12);
        assert_eq!(fl.split_leaf(2, pat2m, 2), Some(0x20_2007 | (1 << 7)));
        assert_eq!(fl.split_leaf(2, 0x20_0087, 2), Some(0x20_2007));
        let pat1g = 0x4000_0087 | (1 << 12) | FL_XD;
        assert_eq!(
            fl.split_leaf(3, pat1g, 1),
            Some(0x4020_0087 | (1 << 12) | FL_XD)
        );
    }

    /// Page-granular sparse memory for the walk tests.
    #[derive(Default)]
    struct Mem(BTreeMap<u64, Vec<u8>>);

    impl PhysMem for Mem {
        fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr.0 + i as u64;
                let p = self
                    .0
                    .get(&(a >> 12))
                    .ok_or(MemError::Unbacked { addr: PhysAddr(a) })?;
                *b = p[(a & 0xfff) as usize];
            }
            Ok(())
        }
        fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
            for (i, b) in data.iter().enumerate() {
                let a = addr.0 + i as u64;
                self.0.entry(a >> 12).or_insert_with(|| vec![0; 4096])[(a & 0xfff) as usize] = *b;
            }
            Ok(())
        }
    }

    impl Mem {
        fn table(&mut self, addr: u64) {
            self.write(PhysAddr(addr), &[0; 4096]).unwrap();
        }
        fn set(&mut self, table: u64, index: u64, raw: u64) {
            self.write_u64(PhysAddr(table + index * 8), raw).unwrap();
        }
    }

    #[test]
    fn walks_a_four_level_second_stage_tree() {
        // IOVA 0x0000_0040_4020_3000: PML4 0, PDP 1 (1 GiB), PD 2 (2 MiB), PT 3.
        // Mappings: 4K at 0x4040_3000... built with the hw layouts.
        let (pml4, pdp, pd, pt) = (0x10_0000u64, 0x10_1000, 0x10_2000, 0x10_3000);
        let mut mem = Mem::default();
        for t in [pml4, pdp, pd, pt] {
            mem.table(t);
        }
        mem.set(pml4, 0, SlPte::table(pdp).raw());
        // PDPE 1: 1 GiB page at 0x1_0000_0000, read-only.
        mem.set(pdp, 1, SlPte::large_page(0x1_0000_0000, true, false).raw());
        // PDPE 2 -> PD; PDE 3: 2 MiB page at 0x8020_0000, RW; PDE 4 -> PT.
        mem.set(pdp, 2, SlPte::table(pd).raw());
        mem.set(pd, 3, SlPte::large_page(0x8020_0000, true, true).raw());
        mem.set(pd, 4, SlPte::table(pt).raw());
        // PTE 5: 4 KiB page at 0x7_5000, write-only.
        mem.set(pt, 5, SlPte::page(0x7_5000, false, true).raw());

        let f = sl4();
        let w = walk(&f, &mem, PhysAddr(pml4), &WalkLimits::default()).unwrap();
        let gib = 1u64 << 30;
        let mib2 = 1u64 << 21;
        assert_eq!(
            w.mappings,
            vec![
                Mapping {
                    iova: Iova(gib),
                    pa: PhysAddr(0x1_0000_0000),
                    size: gib,
                    perms: Perms::R,
                    page_size: PageSize::SIZE_1G
                },
                Mapping {
                    iova: Iova(2 * gib + 3 * mib2),
                    pa: PhysAddr(0x8020_0000),
                    size: mib2,
                    perms: Perms::RW,
                    page_size: PageSize::SIZE_2M
                },
                Mapping {
                    iova: Iova(2 * gib + 4 * mib2 + 5 * 4096),
                    pa: PhysAddr(0x7_5000),
                    size: 4096,
                    perms: Perms::W,
                    page_size: PageSize::SIZE_4K
                },
            ]
        );
        let tables: Vec<(u64, u8)> = w.tables.iter().map(|t| (t.addr.0, t.level)).collect();
        assert_eq!(tables, vec![(pml4, 4), (pdp, 3), (pd, 2), (pt, 1)]);

        let t = translate(&f, &mem, PhysAddr(pml4), Iova(2 * gib + 4 * mib2 + 0x5abc)).unwrap();
        assert_eq!(
            t.outcome,
            Outcome::Mapped {
                pa: PhysAddr(0x7_5abc),
                perms: Perms::W,
                page_size: PageSize::SIZE_4K
            }
        );
        assert_eq!(t.steps.len(), 4);
        assert_eq!(t.steps[3].index, 5);
        let t = translate(&f, &mem, PhysAddr(pml4), Iova(gib + 0x1234_5678)).unwrap();
        assert_eq!(t.pa(), Some(PhysAddr(0x1_1234_5678)));
        let t = translate(&f, &mem, PhysAddr(pml4), Iova(1 << 39)).unwrap();
        assert_eq!(t.outcome, Outcome::NotPresent { level: 4 });
        let t = translate(&f, &mem, PhysAddr(pml4), Iova(1 << 48)).unwrap();
        assert_eq!(t.outcome, Outcome::BeyondInputWidth { ia_bits: 48 });

        // A reserved bit in the PD is reported at that entry.
        let bad = SlPte::large_page(0x8020_0000, true, true).raw() | SL_SNP;
        mem.set(pd, 3, bad);
        let e = walk(&f, &mem, PhysAddr(pml4), &WalkLimits::default()).unwrap_err();
        assert_eq!(
            (e.level, e.index, e.entry, e.table),
            (2, 3, bad, PhysAddr(pd))
        );
        assert!(matches!(e.kind, WalkErrorKind::BadEntry(_)));
        let w = walk(&f, &mem, PhysAddr(pml4), &WalkLimits::lenient()).unwrap();
        assert_eq!((w.mappings.len(), w.problems.len()), (2, 1));
    }

    #[test]
    fn walks_a_first_stage_tree_with_hierarchical_permissions() {
        let (pml4, pdp, pd) = (0x20_0000u64, 0x20_1000, 0x20_2000);
        let mut mem = Mem::default();
        for t in [pml4, pdp, pd] {
            mem.table(t);
        }
        mem.set(pml4, 0, FlPte::table(pdp).raw());
        // A read-only PDPE above the PD: the 2 MiB RW leaf below is read-only.
        mem.set(pdp, 0, pd | FL_P);
        mem.set(pd, 1, FlPte::large_page(0x60_0000, true).raw());
        // An upper-half root entry is beyond the canonical lower half.
        let f = FirstStage::new(4, CAPS).unwrap();
        let w = walk(&f, &mem, PhysAddr(pml4), &WalkLimits::default()).unwrap();
        assert_eq!(
            w.mappings,
            vec![Mapping {
                iova: Iova(1 << 21),
                pa: PhysAddr(0x60_0000),
                size: 1 << 21,
                perms: Perms::RX,
                page_size: PageSize::SIZE_2M
            }]
        );
        mem.set(pml4, 256, FlPte::table(pdp).raw());
        let e = walk(&f, &mem, PhysAddr(pml4), &WalkLimits::default()).unwrap_err();
        assert_eq!(
            (e.kind, e.index),
            (WalkErrorKind::IovaOverflow { ia_bits: 47 }, 256)
        );
    }
}
