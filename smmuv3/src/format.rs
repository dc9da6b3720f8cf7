//! VMSAv8-64 translation-table formats for the generic walker and the generic
//! `map` / `unmap` of `iommu-core`.
//!
//! [`Vmsa`] is one format: stage 1 (a CD's TTB0 tables: T0SZ, TG0, IPS) or stage 2 (an
//! STE's S2TTB tables: S2T0SZ, S2SL0, S2TG, S2PS), with a 4, 16 or 64 KiB granule.
//! Levels are numbered from the leaf up as in the rest of the workspace: Arm level 3
//! is level 1 here, Arm level 0 is level 4 (`level = 4 - arm_level`).
//!
//! - Every table is one granule, except the start table: its size follows the input
//!   width (fewer entries for a short T0SZ), and a stage-2 start level may resolve up
//!   to 4 more IPA bits with 2 to 16 concatenated tables, which is simply a larger
//!   start table (reference `smmuv3.md` §8, §12; Arm ARM "Concatenated translation
//!   tables for the initial stage 2 lookup").
//! - Blocks where the granule allows them without 52-bit VA/IPA (DS) support:
//!   1 GiB and 2 MiB at 4 KiB, 32 MiB at 16 KiB, 512 MiB at 64 KiB and 4 TiB at 64 KiB
//!   when the output size is 52 bits (Linux `io-pgtable-arm.c`
//!   `arm_lpae_restrict_pgsizes`: `SZ_64K | SZ_512M`, plus 4 TiB "if oas > 48").
//! - Output size: the smaller of CD.IPS / STE.S2PS and IDR5.OAS; a 52-bit size with a
//!   4 or 16 KiB granule counts as 48 bits (52-bit output there needs DS, which this
//!   format does not implement; Arm ARM: PS = 0b110 without DS behaves as 48 bits).
//!   With 64 KiB, OA\[51:48\] lives in descriptor bits 15:12 (reference §12).
//! - Leaves are written with AF = 1 (as Linux). With access-flag faults enabled (CD.AFFD
//!   = 0 / STE.S2AFFD = 0 and no hardware AF update), [`Format::decode`] refuses a leaf
//!   with AF = 0 naming the F_ACCESS it raises.
//! - Contiguous-hint runs are never written; a leaf carrying the hint decodes as the
//!   single entry it is (the hint does not change what the entry translates).
//!
//! Stage-1 permissions are those of an unprivileged data access (PnU = 0), which is
//! what Linux maps for (AP\[1\] = 1 unless `IOMMU_PRIV`): read = AP\[1\], write = AP\[1\]
//! and not AP\[2\], execute = read and not UXN; table entries narrow them with
//! APTable and XNTable. Stage-2 permissions are S2AP (bit 6 read, bit 7 write) and XN.

use crate::hw::regs::{IDR0, IDR5};
use crate::hw::{pa_size_bits, Granule};
use core::fmt;
use iommu_core::addr::{PageSize, PhysAddr};
use iommu_core::pgtable::{Entry, EntryError, Format, Perms, WriteFormat};

/// Descriptor bit 0: valid [L][Q].
pub const DESC_VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0–2) or page (level 3); 0 = block [L][Q].
pub const DESC_TABLE: u64 = 1 << 1;
/// Stage-1 leaf AttrIndx, bits 4:2 (index into the CD's MAIR) [L][A64P].
pub const ATTR_INDX_SHIFT: u32 = 2;
/// Stage-2 leaf MemAttr, bits 5:2 [L][A64P].
pub const MEM_ATTR_SHIFT: u32 = 2;
/// Stage-1 leaf AP\[1\] (bit 6): unprivileged (EL0) access allowed [L][Q][A64P].
pub const AP_UNPRIV: u64 = 1 << 6;
/// Stage-1 leaf AP\[2\] (bit 7): read-only [L][Q][A64P].
pub const AP_RDONLY: u64 = 1 << 7;
/// Stage-2 leaf S2AP\[0\] (bit 6): read allowed [L][Q].
pub const S2AP_READ: u64 = 1 << 6;
/// Stage-2 leaf S2AP\[1\] (bit 7): write allowed [L][Q].
pub const S2AP_WRITE: u64 = 1 << 7;
/// Leaf shareability SH, bits 9:8: 0 non-shareable, 2 outer, 3 inner (1 reserved).
pub const SH_SHIFT: u32 = 8;
/// Leaf access flag AF (bit 10) [L][Q][A64P].
pub const AF: u64 = 1 << 10;
/// Stage-1 leaf nG (bit 11): not global, tagged with the ASID [L][A64P].
pub const NG: u64 = 1 << 11;
/// Block bit 16: nT with FEAT_BBML1; ignored here (reference §12).
pub const BLOCK_NT: u64 = 1 << 16;
/// Leaf Contiguous hint (bit 52) [L][A64P].
pub const CONTIGUOUS: u64 = 1 << 52;
/// Stage-1 leaf PXN (bit 53); stage-2 XN\[0\] with FEAT_XNX [L][A64P].
pub const PXN: u64 = 1 << 53;
/// Stage-1 leaf UXN / stage-2 XN\[1\] (bit 54) [L][A64P].
pub const UXN: u64 = 1 << 54;
/// Stage-1 table PXNTable (bit 59) [A64P].
pub const PXN_TABLE: u64 = 1 << 59;
/// Stage-1 table XNTable / UXNTable (bit 60) [A64P].
pub const XN_TABLE: u64 = 1 << 60;
/// Stage-1 table APTable\[0\] (bit 61): no unprivileged access below [Q][A64P].
pub const AP_TABLE_NO_EL0: u64 = 1 << 61;
/// Stage-1 table APTable\[1\] (bit 62): no write below [Q][A64P].
pub const AP_TABLE_RDONLY: u64 = 1 << 62;
/// Stage-1 table NSTable (bit 63) [L][A64P].
pub const NS_TABLE: u64 = 1 << 63;
/// Stage-2 table descriptor bits 63:59, RES0 (Arm ARM: the hierarchical attributes
/// exist at stage 1 only).
pub const S2_TABLE_RES0: u64 = 0x1f << 59;

/// Which translation stage a [`Vmsa`] format is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1 (CD.TTB0: VA to IPA, or to PA without stage 2).
    One,
    /// Stage 2 (STE.S2TTB: IPA to PA).
    Two,
}

/// What an SMMU supports for translation tables, from its ID registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// IDR5.OAS in bits.
    pub oas_bits: u32,
    /// IDR5.GRAN4K.
    pub gran4k: bool,
    /// IDR5.GRAN16K.
    pub gran16k: bool,
    /// IDR5.GRAN64K.
    pub gran64k: bool,
    /// IDR5.VAX = 1: 52-bit VAs (T0SZ down to 12 with 64 KiB granules).
    pub vax: bool,
    /// IDR0.TTF includes AArch32 LPAE: the IPA size is then at least 40 bits.
    pub aarch32: bool,
}

impl Caps {
    /// Reads the capabilities from IDR0 and IDR5 (reference §2); `None` when
    /// IDR5.OAS holds the reserved encoding 7.
    pub fn from_idr(idr0: u32, idr5: u32) -> Option<Self> {
        Some(Self {
            oas_bits: pa_size_bits(IDR5::OAS.read(idr5) as u64)?,
            gran4k: IDR5::GRAN4K.is_set(idr5),
            gran16k: IDR5::GRAN16K.is_set(idr5),
            gran64k: IDR5::GRAN64K.is_set(idr5),
            vax: IDR5::VAX.read(idr5) == 1,
            aarch32: IDR0::TTF.read(idr0) & 1 != 0,
        })
    }

    /// Whether the granule is supported.
    pub fn granule(&self, g: Granule) -> bool {
        match g {
            Granule::K4 => self.gran4k,
            Granule::K16 => self.gran16k,
            Granule::K64 => self.gran64k,
        }
    }

    /// The intermediate address size (IAS): OAS, at least 40 bits with AArch32 LPAE
    /// tables (IHI0070 §3.4 "Address sizes").
    pub fn ias_bits(&self) -> u32 {
        if self.aarch32 {
            self.oas_bits.max(40)
        } else {
            self.oas_bits
        }
    }
}

/// Why a configuration does not describe a usable table format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// IDR5.GRANxK does not list the granule (the CD or STE is ILLEGAL).
    GranuleUnsupported {
        /// The granule.
        granule: Granule,
    },
    /// CD.T0SZ or STE.S2T0SZ outside the range the SMMU accepts.
    TxszOutOfRange {
        /// The stage.
        stage: Stage,
        /// The TxSZ value.
        txsz: u32,
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
    /// CD.IPS or STE.S2PS holds the reserved encoding 7.
    PaSizeReserved {
        /// The field value.
        value: u64,
    },
    /// STE.S2SL0 is reserved for the granule or needs a feature not implemented here
    /// (small translation tables, IDR3.STT; 52-bit IPA, S2DS).
    S2Sl0Unsupported {
        /// The granule.
        granule: Granule,
        /// S2SL0.
        sl0: u64,
    },
    /// S2T0SZ and S2SL0 do not fit together: the start level would need no table or
    /// more than 16 concatenated tables (the STE is ILLEGAL).
    StartLevelMismatch {
        /// The granule.
        granule: Granule,
        /// S2T0SZ.
        s2t0sz: u32,
        /// S2SL0.
        sl0: u64,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FormatError::GranuleUnsupported { granule } => {
                write!(f, "the {granule} granule is not in IDR5")
            }
            FormatError::TxszOutOfRange {
                stage,
                txsz,
                min,
                max,
            } => {
                let name = match stage {
                    Stage::One => "T0SZ",
                    Stage::Two => "S2T0SZ",
                };
                write!(f, "{name} {txsz} outside {min}..={max}")
            }
            FormatError::PaSizeReserved { value } => {
                write!(f, "address size encoding {value} is reserved")
            }
            FormatError::S2Sl0Unsupported { granule, sl0 } => write!(
                f,
                "S2SL0 {sl0} with the {granule} granule is reserved or needs STT/S2DS"
            ),
            FormatError::StartLevelMismatch {
                granule,
                s2t0sz,
                sl0,
            } => write!(
                f,
                "S2T0SZ {s2t0sz} does not fit start level S2SL0 {sl0} with the {granule} granule (1 to 16 tables)"
            ),
        }
    }
}

/// Largest TxSZ without small translation tables (IDR3.STT), both stages
/// (reference §12 "SMMU limits").
pub const TXSZ_MAX: u32 = 39;

/// The effective output size: the smaller of the field's size and IDR5.OAS, 52 bits
/// only with 64 KiB granules (48 otherwise, without DS).
fn output_bits(caps: &Caps, granule: Granule, ps: u64) -> Result<u32, FormatError> {
    let ps = pa_size_bits(ps).ok_or(FormatError::PaSizeReserved { value: ps })?;
    let oa = ps.min(caps.oas_bits);
    Ok(if oa > 48 && granule != Granule::K64 {
        48
    } else {
        oa
    })
}

/// Leaf attributes beyond address, size and permissions; each stage uses its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Stage 1 AttrIndx (0..=7), an index into the CD's MAIR.
    pub attr_indx: u8,
    /// Stage 1 nG: tagged with the ASID.
    pub ng: bool,
    /// Stage 2 MemAttr (0..=15): 0xF Normal write-back, 0x5 Normal non-cacheable, 0x1
    /// Device-nGnRE (reference §7).
    pub mem_attr: u8,
    /// SH (both stages): 0 non-shareable, 2 outer, 3 inner (1 reserved).
    pub sh: u8,
}

impl Default for Attrs {
    /// Linux's cacheable DMA mapping (`IOMMU_CACHE`): stage 1 AttrIndx 1
    /// (`ARM_LPAE_MAIR_ATTR_IDX_CACHE`, MAIR 0xff) with nG, stage 2 MemAttr 0xF
    /// (`ARM_LPAE_PTE_MEMATTR_OIWB`), inner shareable.
    fn default() -> Self {
        Self {
            attr_indx: 1,
            ng: true,
            mem_attr: 0xf,
            sh: 3,
        }
    }
}

/// A VMSAv8-64 translation-table format (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vmsa {
    stage: Stage,
    granule: Granule,
    ia_bits: u32,
    oa_bits: u32,
    /// Root level in this crate's numbering (`4 - arm start level`).
    root: u8,
    af_fault: bool,
}

impl Vmsa {
    /// The stage-1 format of a CD: TG0 `granule`, `t0sz`, IPS encoding `ips`.
    ///
    /// T0SZ must lie in 16..=39, or 12..=39 with IDR5.VAX and 64 KiB granules
    /// (reference §12 "SMMU limits"); the start level follows from it:
    /// `4 - (inputsize - 4) / stride` (reference §8).
    pub fn stage1(caps: &Caps, granule: Granule, t0sz: u32, ips: u64) -> Result<Self, FormatError> {
        if !caps.granule(granule) {
            return Err(FormatError::GranuleUnsupported { granule });
        }
        let min = if caps.vax && granule == Granule::K64 {
            12
        } else {
            16
        };
        if !(min..=TXSZ_MAX).contains(&t0sz) {
            return Err(FormatError::TxszOutOfRange {
                stage: Stage::One,
                txsz: t0sz,
                min,
                max: TXSZ_MAX,
            });
        }
        let ia = 64 - t0sz;
        let arm_start = 4 - (ia - 4) / granule.stride();
        Ok(Self {
            stage: Stage::One,
            granule,
            ia_bits: ia,
            oa_bits: output_bits(caps, granule, ips)?,
            root: (4 - arm_start) as u8,
            af_fault: true,
        })
    }

    /// The stage-2 format of an STE: S2TG `granule`, `s2t0sz`, `s2sl0`, S2PS encoding
    /// `s2ps`.
    ///
    /// S2SL0 gives the start level (4 KiB: 0 → level 2, 1 → level 1, 2 → level 0;
    /// 16/64 KiB: 0 → level 3, 1 → level 2, 2 → level 1; reference §8); the IPA bits
    /// above that level's entries select one of 1 to 16 concatenated start tables.
    /// S2T0SZ must lie in `max(16, 64 - IAS)..=39` (12 instead of 16 with 64 KiB).
    pub fn stage2(
        caps: &Caps,
        granule: Granule,
        s2t0sz: u32,
        s2sl0: u64,
        s2ps: u64,
    ) -> Result<Self, FormatError> {
        if !caps.granule(granule) {
            return Err(FormatError::GranuleUnsupported { granule });
        }
        let floor = if granule == Granule::K64 { 12 } else { 16 };
        let min = floor.max(64 - caps.ias_bits());
        if !(min..=TXSZ_MAX).contains(&s2t0sz) {
            return Err(FormatError::TxszOutOfRange {
                stage: Stage::Two,
                txsz: s2t0sz,
                min,
                max: TXSZ_MAX,
            });
        }
        let arm_start: u32 = match (granule, s2sl0) {
            (Granule::K4, 0..=2) => 2 - s2sl0 as u32,
            (Granule::K16 | Granule::K64, 0..=2) => 3 - s2sl0 as u32,
            // 4 KiB SL0 3 (level 3) needs IDR3.STT, 16 KiB SL0 3 (level 0) S2DS, and
            // 64 KiB SL0 3 is reserved.
            _ => {
                return Err(FormatError::S2Sl0Unsupported {
                    granule,
                    sl0: s2sl0,
                })
            }
        };
        let ia = 64 - s2t0sz;
        let shift = granule.shift() + (3 - arm_start) * granule.stride();
        let bits = ia.saturating_sub(shift);
        if ia <= shift || bits > granule.stride() + 4 {
            return Err(FormatError::StartLevelMismatch {
                granule,
                s2t0sz,
                sl0: s2sl0,
            });
        }
        Ok(Self {
            stage: Stage::Two,
            granule,
            ia_bits: ia,
            oa_bits: output_bits(caps, granule, s2ps)?,
            root: (4 - arm_start) as u8,
            af_fault: true,
        })
    }

    /// With `false`, a leaf with AF = 0 translates (CD.AFFD / STE.S2AFFD = 1, or
    /// hardware access-flag update); with `true` (the default) it raises F_ACCESS.
    pub fn with_access_flag_faults(mut self, on: bool) -> Self {
        self.af_fault = on;
        self
    }

    /// The stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }
    /// The granule.
    pub fn granule(&self) -> Granule {
        self.granule
    }
    /// The Arm start level (0..=3).
    pub fn arm_start_level(&self) -> u8 {
        4 - self.root
    }
    /// Granule-sized tables concatenated at the start level (1 unless stage 2 uses
    /// concatenation; a start table smaller than a granule counts as 1).
    pub fn concatenated(&self) -> u64 {
        (self.table_bytes(self.root) / self.granule.bytes()).max(1)
    }

    fn entry_shift_of(&self, level: u8) -> u32 {
        self.granule.shift() + (level as u32 - 1) * self.granule.stride()
    }

    /// Whether a leaf goes at `level`: pages at level 1, blocks at level 2 always and at
    /// level 3 with 4 KiB (1 GiB) or with 64 KiB and 52-bit output (4 TiB).
    fn leaf_at(&self, level: u8) -> bool {
        level <= self.root
            && match level {
                1 | 2 => true,
                3 => {
                    self.granule == Granule::K4
                        || (self.granule == Granule::K64 && self.oa_bits > 48)
                }
                _ => false,
            }
    }

    /// Bits of the descriptor holding output-address bits (4/16 KiB: 49:12 with 49:48
    /// RES0 without DS; 64 KiB: 47:12, bits 15:12 holding OA\[51:48\]).
    fn addr_field(&self) -> u64 {
        match self.granule {
            Granule::K64 => 0x0000_ffff_ffff_f000,
            _ => 0x0003_ffff_ffff_f000,
        }
    }

    /// The output address a descriptor names, bits below `low` not included.
    fn desc_addr(&self, raw: u64) -> u64 {
        match self.granule {
            Granule::K64 => (raw & 0x0000_ffff_ffff_0000) | (((raw >> 12) & 0xf) << 48),
            _ => raw & 0x0003_ffff_ffff_f000 & !(self.granule.bytes() - 1),
        }
    }

    /// Descriptor bits for output address `pa` (below `1 << oa_bits`).
    fn addr_bits(&self, pa: u64) -> u64 {
        match self.granule {
            Granule::K64 => (pa & 0x0000_ffff_ffff_0000) | (((pa >> 48) & 0xf) << 12),
            _ => pa & 0x0000_ffff_ffff_f000,
        }
    }

    /// Checks the address of a descriptor whose target is aligned to `1 << align`:
    /// RES0 bits below the alignment (bit 16 of a block is nT) and the output size.
    fn check_addr(&self, raw: u64, align: u32, block: bool) -> Result<u64, EntryError> {
        let field = self.addr_field();
        let low = field & ((1u64 << align) - 1) & !(if block { BLOCK_NT } else { 0 });
        let low = match self.granule {
            // Bits 15:12 are OA[51:48], not low address bits.
            Granule::K64 => low & !0xf000,
            _ => low,
        };
        if raw & low != 0 {
            return Err(EntryError {
                reason: "VMSAv8-64 descriptor: RES0 address bits below the table, block or page alignment set",
            });
        }
        let addr = self.desc_addr(raw) & !((1u64 << align) - 1);
        if self.oa_bits < 64 && addr >> self.oa_bits != 0 {
            return Err(EntryError {
                reason: "VMSAv8-64 descriptor: output address beyond the output size (IPS/S2PS, IDR5.OAS): F_ADDR_SIZE",
            });
        }
        Ok(addr)
    }

    fn leaf_perms(&self, raw: u64) -> Perms {
        match self.stage {
            Stage::One => {
                let read = raw & AP_UNPRIV != 0;
                Perms {
                    read,
                    write: read && raw & AP_RDONLY == 0,
                    exec: read && raw & UXN == 0,
                }
            }
            Stage::Two => Perms {
                read: raw & S2AP_READ != 0,
                write: raw & S2AP_WRITE != 0,
                exec: raw & (UXN | PXN) == 0,
            },
        }
    }

    fn table_perms(&self, raw: u64) -> Perms {
        match self.stage {
            Stage::One => {
                let el0 = raw & AP_TABLE_NO_EL0 == 0;
                Perms {
                    read: el0,
                    write: el0 && raw & AP_TABLE_RDONLY == 0,
                    exec: el0 && raw & XN_TABLE == 0,
                }
            }
            Stage::Two => Perms::RWX,
        }
    }

    /// The shape of `raw` at `level`, with or without the checks of `decode`.
    fn entry(&self, level: u8, raw: u64, checked: bool) -> Result<Entry, EntryError> {
        if raw & DESC_VALID == 0 || level == 0 || level > self.root {
            return Ok(Entry::Invalid);
        }
        let table_or_page = raw & DESC_TABLE != 0;
        let g = self.granule.shift();
        if level == 1 {
            // Arm ARM: descriptor type 0b01 at level 3 is reserved and treated as
            // invalid (translation fault).
            if !table_or_page {
                return Ok(Entry::Invalid);
            }
            return self.leaf(raw, g, false, checked);
        }
        if table_or_page {
            if checked && self.stage == Stage::Two && raw & S2_TABLE_RES0 != 0 {
                return Err(EntryError {
                    reason: "VMSAv8-64 stage-2 table descriptor: RES0 bits 63:59 set",
                });
            }
            let next = if checked {
                self.check_addr(raw, g, false)?
            } else {
                self.desc_addr(raw)
            };
            return Ok(Entry::Table {
                next: PhysAddr(next),
                level: level - 1,
                perms: self.table_perms(raw),
            });
        }
        // A block where the granule has none (4 KiB level 0, 16 KiB level 1 without DS,
        // 64 KiB level 1 without 52-bit output) is invalid: translation fault (Arm ARM).
        if !self.leaf_at(level) {
            return Ok(Entry::Invalid);
        }
        self.leaf(raw, self.entry_shift_of(level), true, checked)
    }

    fn leaf(&self, raw: u64, shift: u32, block: bool, checked: bool) -> Result<Entry, EntryError> {
        let base = if checked {
            if self.af_fault && raw & AF == 0 {
                return Err(EntryError {
                    reason: "VMSAv8-64 leaf: access flag (AF, bit 10) 0 without AFFD or hardware update: F_ACCESS",
                });
            }
            self.check_addr(raw, shift, block)?
        } else {
            self.desc_addr(raw) & !((1u64 << shift) - 1)
        };
        Ok(Entry::Leaf {
            base: PhysAddr(base),
            size: PageSize::from_shift(shift).ok_or(EntryError {
                reason: "VMSAv8-64 leaf: size not a page size",
            })?,
            perms: self.leaf_perms(raw),
        })
    }
}

impl Format for Vmsa {
    fn name(&self) -> &'static str {
        match (self.stage, self.granule) {
            (Stage::One, Granule::K4) => "vmsav8-64-s1-4k",
            (Stage::One, Granule::K16) => "vmsav8-64-s1-16k",
            (Stage::One, Granule::K64) => "vmsav8-64-s1-64k",
            (Stage::Two, Granule::K4) => "vmsav8-64-s2-4k",
            (Stage::Two, Granule::K16) => "vmsav8-64-s2-16k",
            (Stage::Two, Granule::K64) => "vmsav8-64-s2-64k",
        }
    }
    fn root_level(&self) -> u8 {
        self.root
    }
    fn table_bytes(&self, level: u8) -> u64 {
        if level == self.root {
            8 << (self.ia_bits - self.entry_shift_of(level))
        } else {
            self.granule.bytes()
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        self.entry_shift_of(level)
    }
    fn ia_bits(&self) -> u32 {
        self.ia_bits
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        self.entry(level, raw, true)
    }
}

impl WriteFormat for Vmsa {
    type Attrs = Attrs;

    fn oa_bits(&self) -> u32 {
        self.oa_bits
    }
    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32> {
        (self.leaf_at(level) && size.shift() == self.entry_shift_of(level)).then_some(1)
    }
    /// Stage 1: AP\[1\] = 1 (unprivileged access), AP\[2\] for read-only, AttrIndx, SH
    /// and nG from the attributes, AF, PXN and UXN unless `perms.exec` (as Linux
    /// `arm_lpae_prot_to_pte`); a readable page is the only kind (no write- or
    /// execute-only). Stage 2: S2AP from read and write, MemAttr and SH, AF, XN
    /// (bit 54) unless `perms.exec`.
    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        _size: PageSize,
        perms: Perms,
        attrs: Attrs,
        _slot: u32,
    ) -> Result<u64, EntryError> {
        let ty = if level == 1 {
            DESC_VALID | DESC_TABLE
        } else {
            DESC_VALID
        };
        let mut v = ty | AF | self.addr_bits(pa.0);
        let a = attrs;
        match self.stage {
            Stage::One => {
                if !perms.read {
                    return Err(EntryError {
                        reason: "VMSAv8-64 stage 1: a leaf is always readable (no write- or execute-only)",
                    });
                }
                if a.attr_indx > 7 {
                    return Err(EntryError {
                        reason: "VMSAv8-64 stage 1: AttrIndx above 7",
                    });
                }
                v |= AP_UNPRIV | (a.attr_indx as u64) << ATTR_INDX_SHIFT;
                if !perms.write {
                    v |= AP_RDONLY;
                }
                if a.ng {
                    v |= NG;
                }
                if !perms.exec {
                    v |= PXN | UXN;
                }
            }
            Stage::Two => {
                if !perms.read && !perms.write {
                    return Err(EntryError {
                        reason: "VMSAv8-64 stage 2: a leaf needs S2AP read or write",
                    });
                }
                if a.mem_attr > 15 {
                    return Err(EntryError {
                        reason: "VMSAv8-64 stage 2: MemAttr above 15",
                    });
                }
                v |= (a.mem_attr as u64) << MEM_ATTR_SHIFT;
                if perms.read {
                    v |= S2AP_READ;
                }
                if perms.write {
                    v |= S2AP_WRITE;
                }
                // Arm ARM: stage-2 XN is bit 54 (bit 53 only with FEAT_XNX). Linux
                // writes both bits (`ARM_LPAE_PTE_XN` = 3 << 53) at either stage.
                if !perms.exec {
                    v |= UXN;
                }
            }
        }
        let sh = a.sh;
        if sh == 1 || sh > 3 {
            return Err(EntryError {
                reason: "VMSAv8-64: shareability 1 is reserved",
            });
        }
        Ok(v | (sh as u64) << SH_SHIFT)
    }
    /// Valid and table (0b11) with the next table's address, no hierarchical
    /// attributes (as Linux: `ARM_LPAE_PTE_TYPE_TABLE | paddr`).
    fn encode_table(&self, _level: u8, next: PhysAddr, _next_level: u8) -> u64 {
        DESC_VALID | DESC_TABLE | self.addr_bits(next.0)
    }
    /// The shape only: no AF, RES0 or output-size checks.
    fn classify(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        self.entry(level, raw, false)
    }
    /// A block splits into a table of pages (level 2) or smaller blocks (level 3) with
    /// every attribute kept and the Contiguous hint dropped.
    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64> {
        if level < 2
            || !self.leaf_at(level)
            || raw & (DESC_VALID | DESC_TABLE) != DESC_VALID
            || index >= 1 << self.granule.stride()
        {
            return None;
        }
        let shift = self.entry_shift_of(level);
        let base = self.desc_addr(raw) & !((1u64 << shift) - 1);
        let child = base + ((index as u64) << self.entry_shift_of(level - 1));
        let ty = if level == 2 {
            DESC_VALID | DESC_TABLE
        } else {
            DESC_VALID
        };
        let keep = raw & !self.addr_field() & !CONTIGUOUS & !(DESC_VALID | DESC_TABLE);
        Some(keep | ty | self.addr_bits(child))
    }
}
