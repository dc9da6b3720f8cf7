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

use crate::hw::cd::Cd;
use crate::hw::regs::{IDR0, IDR5};
use crate::hw::ste::Ste;
use crate::hw::{pa_size_bits, Granule};
use core::fmt;
use iommu_core::addr::{PageSize, PhysAddr};
use iommu_core::pgtable::{Entry, EntryError, Format, Perms, WriteFormat};

/// Descriptor bit 0: valid \[L\]\[Q\].
pub const DESC_VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0–2) or page (level 3); 0 = block \[L\]\[Q\].
pub const DESC_TABLE: u64 = 1 << 1;
/// Stage-1 leaf AttrIndx, bits 4:2 (index into the CD's MAIR) \[L\]\[A64P\].
pub const ATTR_INDX_SHIFT: u32 = 2;
/// Stage-2 leaf MemAttr, bits 5:2 \[L\]\[A64P\].
pub const MEM_ATTR_SHIFT: u32 = 2;
/// Stage-1 leaf AP\[1\] (bit 6): unprivileged (EL0) access allowed \[L\]\[Q\]\[A64P\].
pub const AP_UNPRIV: u64 = 1 << 6;
/// Stage-1 leaf AP\[2\] (bit 7): read-only \[L\]\[Q\]\[A64P\].
pub const AP_RDONLY: u64 = 1 << 7;
/// Stage-2 leaf S2AP\[0\] (bit 6): read allowed \[L\]\[Q\].
pub const S2AP_READ: u64 = 1 << 6;
/// Stage-2 leaf S2AP\[1\] (bit 7): write allowed \[L\]\[Q\].
pub const S2AP_WRITE: u64 = 1 << 7;
/// Leaf shareability SH, bits 9:8: 0 non-shareable, 2 outer, 3 inner (1 reserved).
pub const SH_SHIFT: u32 = 8;
/// Leaf access flag AF (bit 10) \[L\]\[Q\]\[A64P\].
pub const AF: u64 = 1 << 10;
/// Stage-1 leaf nG (bit 11): not global, tagged with the ASID \[L\]\[A64P\].
pub const NG: u64 = 1 << 11;
/// Block bit 16: nT with FEAT_BBML1; ignored here (reference §12).
pub const BLOCK_NT: u64 = 1 << 16;
/// Leaf Contiguous hint (bit 52) \[L\]\[A64P\].
pub const CONTIGUOUS: u64 = 1 << 52;
/// Stage-1 leaf PXN (bit 53); stage-2 XN\[0\] with FEAT_XNX \[L\]\[A64P\].
pub const PXN: u64 = 1 << 53;
/// Stage-1 leaf UXN / stage-2 XN\[1\] (bit 54) \[L\]\[A64P\].
pub const UXN: u64 = 1 << 54;
/// Stage-1 table PXNTable (bit 59) \[A64P\].
pub const PXN_TABLE: u64 = 1 << 59;
/// Stage-1 table XNTable / UXNTable (bit 60) \[A64P\].
pub const XN_TABLE: u64 = 1 << 60;
/// Stage-1 table APTable\[0\] (bit 61): no unprivileged access below \[Q\]\[A64P\].
pub const AP_TABLE_NO_EL0: u64 = 1 << 61;
/// Stage-1 table APTable\[1\] (bit 62): no write below \[Q\]\[A64P\].
pub const AP_TABLE_RDONLY: u64 = 1 << 62;
/// Stage-1 table NSTable (bit 63) \[L\]\[A64P\].
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
    /// CD.TG0 or STE.S2TG holds the reserved encoding 3 (the CD or STE is ILLEGAL).
    GranuleReserved {
        /// The field value.
        value: u64,
    },
    /// CD.AA64 or STE.S2AA64 is 0: AArch32 LPAE tables, which this format does not
    /// implement.
    NotAArch64,
    /// CD.EPD0 is 1: TTB0 is never walked (every input address faults).
    Ttb0Disabled,
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
            FormatError::GranuleReserved { value } => {
                write!(f, "granule encoding {value} is reserved")
            }
            FormatError::NotAArch64 => {
                f.write_str("AArch32 LPAE tables (AA64 = 0) are not implemented")
            }
            FormatError::Ttb0Disabled => f.write_str("EPD0 = 1: TTB0 is not walked"),
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

    /// The stage-1 format a CD's TTB0 tables use: TG0, T0SZ, IPS; access-flag faults
    /// unless AFFD or HA (reference §6).
    pub fn from_cd(caps: &Caps, cd: &Cd) -> Result<Self, FormatError> {
        if !cd.aa64() {
            return Err(FormatError::NotAArch64);
        }
        if cd.epd0() {
            return Err(FormatError::Ttb0Disabled);
        }
        let g = cd.tg0().ok_or(FormatError::GranuleReserved {
            value: cd.tg0_bits(),
        })?;
        Ok(Self::stage1(caps, g, cd.t0sz() as u32, cd.ips())?
            .with_access_flag_faults(!(cd.affd() || cd.ha())))
    }

    /// The stage-2 format an STE's S2TTB tables use: S2TG, S2T0SZ, S2SL0, S2PS;
    /// access-flag faults unless S2AFFD or S2HA (reference §5).
    pub fn from_ste(caps: &Caps, ste: &Ste) -> Result<Self, FormatError> {
        if !ste.s2aa64() {
            return Err(FormatError::NotAArch64);
        }
        let g = ste.s2tg().ok_or(FormatError::GranuleReserved {
            value: ste.s2tg_bits(),
        })?;
        Ok(
            Self::stage2(caps, g, ste.s2t0sz() as u32, ste.s2sl0(), ste.s2ps())?
                .with_access_flag_faults(!(ste.s2affd() || ste.s2ha())),
        )
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
        // Level 0 does not exist; treated as level 1 rather than underflowing.
        self.granule.shift() + (level.max(1) as u32 - 1) * self.granule.stride()
    }

    /// Whether a leaf goes at `level`: pages at level 1, blocks at level 2 always and at
    /// level 3 with 4 KiB (1 GiB) or with 64 KiB and a 52-bit effective output size
    /// (4 TiB). The 4 TiB rule is Linux's (`cfg->oas > 48`); the Arm ARM ties 64 KiB
    /// level-1 blocks to FEAT_LPA, so for an SMMU with OAS 52 and a smaller IPS/S2PS the
    /// sources may disagree: this format then treats such a block as invalid.
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

    /// The output address bits a descriptor holds (alignment bits not cleared).
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
            // The output address is checked first: the Arm ARM's walk (AArch64.S1Walk,
            // AArch64.S2Walk) reports an Address size fault from the walk, and the
            // Access flag is checked only after the walk returned a descriptor.
            let base = self.check_addr(raw, shift, block)?;
            if self.af_fault && raw & AF == 0 {
                return Err(EntryError {
                    reason: "VMSAv8-64 leaf: access flag (AF, bit 10) 0 without AFFD or hardware update: F_ACCESS",
                });
            }
            base
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Granule::{K16, K4, K64};

    const CAPS: Caps = Caps {
        oas_bits: 48,
        gran4k: true,
        gran16k: true,
        gran64k: true,
        vax: false,
        aarch32: false,
    };

    fn s1(g: Granule, t0sz: u32) -> Vmsa {
        Vmsa::stage1(&CAPS, g, t0sz, 5).unwrap()
    }

    fn enc(f: &Vmsa, level: u8, pa: u64, perms: Perms) -> u64 {
        let size = PageSize::from_shift(f.entry_shift(level)).unwrap();
        f.encode_leaf(level, PhysAddr(pa), size, perms, Attrs::default(), 0)
            .unwrap()
    }

    /// Stage-1 leaves as Linux `arm_lpae_prot_to_pte` + `arm_lpae_init_pte` write them
    /// for `IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE`: nG (0x800) | AP_UNPRIV (0x40) |
    /// AttrIndx 1 (0x4) | SH_IS (0x300) | AF (0x400) | page (0b11) = 0xf47 with the
    /// address; `IOMMU_NOEXEC` adds XN = 3 << 53; read-only adds AP_RDONLY (0x80); a
    /// 2 MiB block has type 0b01. Positions: reference §7.
    #[test]
    fn stage1_leaf_known_answers() {
        let f = s1(K4, 16);
        assert_eq!(enc(&f, 1, 0x8000_0000, Perms::RWX), 0x8000_0f47);
        assert_eq!(enc(&f, 1, 0x8000_0000, Perms::RW), 0x0060_0000_8000_0f47);
        assert_eq!(enc(&f, 1, 0x8000_0000, Perms::R), 0x0060_0000_8000_0fc7);
        assert_eq!(enc(&f, 2, 0x4020_0000, Perms::RWX), 0x4020_0f45);
        assert_eq!(enc(&f, 3, 0x4000_0000, Perms::RWX), 0x4000_0f45);
        assert_eq!(
            f.decode(2, 0x4020_0f45),
            Ok(Entry::Leaf {
                base: PhysAddr(0x4020_0000),
                size: PageSize::from_shift(21).unwrap(),
                perms: Perms::RWX
            })
        );
        // No write-only or no-read leaf at stage 1.
        let size = PageSize::from_shift(12).unwrap();
        assert!(f
            .encode_leaf(1, PhysAddr(0), size, Perms::W, Attrs::default(), 0)
            .is_err());
        // AP[1] = 0 (privileged only): an unprivileged access may do nothing.
        assert_eq!(
            f.decode(1, 0x8000_0f07),
            Ok(Entry::Leaf {
                base: PhysAddr(0x8000_0000),
                size,
                perms: Perms::default()
            })
        );
    }

    /// Stage-2 leaves as Linux writes them for `IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE`:
    /// HAP_READ (0x40) | HAP_WRITE (0x80) | MemAttr OIWB (0xf << 2) | SH_IS | AF | page =
    /// 0x7ff. Execute-never: this crate writes XN = bit 54 only (Arm ARM: stage-2 XN[1];
    /// bit 53 is XN[0] only with FEAT_XNX); Linux writes `ARM_LPAE_PTE_XN` = 3 << 53 at
    /// both stages. Both bits decode as no-exec.
    #[test]
    fn stage2_leaf_known_answers() {
        let f = Vmsa::stage2(&CAPS, K4, 24, 1, 5).unwrap();
        assert_eq!(enc(&f, 1, 0x8000_0000, Perms::RWX), 0x8000_07ff);
        assert_eq!(enc(&f, 1, 0x8000_0000, Perms::RW), 0x0040_0000_8000_07ff);
        assert_eq!(enc(&f, 1, 0x8000_0000, Perms::W), 0x0040_0000_8000_07bf);
        let linux_xn = 0x0060_0000_8000_07ff;
        match f.decode(1, linux_xn) {
            Ok(Entry::Leaf { perms, .. }) => assert_eq!(perms, Perms::RW),
            other => panic!("{other:?}"),
        }
    }

    /// Table descriptors as Linux writes them (`ARM_LPAE_PTE_TYPE_TABLE | paddr`): 0b11
    /// with the address; 64 KiB keeps OA[51:48] in bits 15:12 (reference §12, Linux
    /// `paddr_to_iopte`); stage-1 APTable[1] narrows to read-only.
    #[test]
    fn table_and_52_bit_known_answers() {
        let f = s1(K4, 16);
        assert_eq!(f.encode_table(4, PhysAddr(0x8000_1000), 3), 0x8000_1003);
        assert_eq!(
            f.decode(4, 0x8000_1003 | AP_TABLE_RDONLY),
            Ok(Entry::Table {
                next: PhysAddr(0x8000_1000),
                level: 3,
                perms: Perms::RX
            })
        );
        let caps52 = Caps {
            oas_bits: 52,
            vax: true,
            ..CAPS
        };
        let f = Vmsa::stage1(&caps52, K64, 12, 6).unwrap();
        assert_eq!(f.oa_bits(), 52);
        assert_eq!(
            f.encode_table(2, PhysAddr(0x000f_0000_0001_0000), 1),
            0x1_f003
        );
        assert_eq!(
            enc(&f, 1, 0x000a_0000_0002_0000, Perms::RWX) & !0xfff,
            0x2_a000
        );
        // 4 TiB blocks exist at level 3 only with 52-bit output.
        assert_eq!(
            f.leaf_entries(3, PageSize::from_shift(42).unwrap()),
            Some(1)
        );
        assert_eq!(
            s1(K64, 16).leaf_entries(3, PageSize::from_shift(42).unwrap()),
            None
        );
    }

    /// Start level from T0SZ per granule: the Arm ARM table of reference §12
    /// (T0SZ 16–39).
    #[test]
    fn stage1_start_levels_known_answers() {
        let rows: [(core::ops::RangeInclusive<u32>, [u8; 3]); 8] = [
            (16..=16, [0, 0, 1]),
            (17..=21, [0, 1, 1]),
            (22..=24, [0, 1, 2]),
            (25..=27, [1, 1, 2]),
            (28..=33, [1, 2, 2]),
            (34..=34, [2, 2, 2]),
            (35..=38, [2, 2, 3]),
            (39..=39, [2, 3, 3]),
        ];
        for (range, levels) in rows {
            for t0sz in range {
                for (g, want) in [K4, K16, K64].into_iter().zip(levels) {
                    let f = s1(g, t0sz);
                    assert_eq!(f.arm_start_level(), want, "T0SZ {t0sz} {g}");
                    assert_eq!(f.ia_bits(), 64 - t0sz);
                }
            }
        }
        for t0sz in [15, 40] {
            assert!(matches!(
                Vmsa::stage1(&CAPS, K4, t0sz, 5),
                Err(FormatError::TxszOutOfRange { .. })
            ));
        }
        let vax = Caps { vax: true, ..CAPS };
        assert!(Vmsa::stage1(&vax, K64, 12, 5).is_ok());
        assert!(Vmsa::stage1(&vax, K4, 12, 5).is_err());
    }

    /// Stage 2: legal S2T0SZ per start level and concatenated tables, the Arm ARM table
    /// of reference §12 (without STT and S2DS).
    #[test]
    fn stage2_start_levels_and_concatenation_known_answers() {
        // (granule, S2SL0, Arm start level, one table, 2/4/8/16 tables).
        let rows = [
            (K4, 2, 0, 16..=24, [0; 4]),
            (K4, 1, 1, 25..=33, [24, 23, 22, 21]),
            (K4, 0, 2, 34..=39, [33, 32, 31, 30]),
            (K16, 2, 1, 17..=27, [16, 0, 0, 0]),
            (K16, 1, 2, 28..=38, [27, 26, 25, 24]),
            (K16, 0, 3, 39..=39, [38, 37, 36, 35]),
            (K64, 2, 1, 16..=21, [0; 4]),
            (K64, 1, 2, 22..=34, [21, 20, 19, 18]),
            (K64, 0, 3, 35..=39, [34, 33, 32, 31]),
        ];
        for (g, sl0, start, single, concat) in rows {
            for t in 12..=40u32 {
                let r = Vmsa::stage2(&CAPS, g, t, sl0, 5);
                let want = if single.contains(&t) {
                    Some(1)
                } else {
                    concat
                        .iter()
                        .position(|&c| c == t && c != 0)
                        .map(|i| 2u64 << i)
                };
                match (r, want) {
                    (Ok(f), Some(n)) => {
                        assert_eq!(f.arm_start_level(), start, "{g} SL0 {sl0} S2T0SZ {t}");
                        assert_eq!(f.concatenated(), n, "{g} SL0 {sl0} S2T0SZ {t}");
                    }
                    (Err(_), None) => {}
                    (r, w) => panic!("{g} SL0 {sl0} S2T0SZ {t}: {r:?}, want {w:?}"),
                }
            }
        }
        assert_eq!(
            Vmsa::stage2(&CAPS, K4, 39, 3, 5),
            Err(FormatError::S2Sl0Unsupported {
                granule: K4,
                sl0: 3
            })
        );
        assert!(Vmsa::stage2(&CAPS, K64, 35, 3, 5).is_err());
        assert_eq!(
            Vmsa::stage2(&CAPS, K4, 20, 1, 5),
            Err(FormatError::StartLevelMismatch {
                granule: K4,
                s2t0sz: 20,
                sl0: 1
            })
        );
        // 40-bit IPA at level 1: an 8 KiB start table of 1024 entries.
        let f = Vmsa::stage2(&CAPS, K4, 24, 1, 5).unwrap();
        assert_eq!((f.root_level(), f.table_bytes(3)), (3, 8192));
    }

    /// Output size: min(IPS/S2PS, IDR5.OAS); 52 bits only with 64 KiB (48 otherwise);
    /// the reserved encoding 7 refused; IDR5 of QEMU (OAS 44 bits, all granules: 0x74).
    #[test]
    fn output_size_and_caps_known_answers() {
        let caps52 = Caps {
            oas_bits: 52,
            ..CAPS
        };
        assert_eq!(Vmsa::stage1(&caps52, K4, 16, 6).unwrap().oa_bits(), 48);
        assert_eq!(Vmsa::stage1(&caps52, K64, 16, 6).unwrap().oa_bits(), 52);
        assert_eq!(Vmsa::stage1(&CAPS, K4, 16, 2).unwrap().oa_bits(), 40);
        assert_eq!(Vmsa::stage1(&CAPS, K64, 16, 6).unwrap().oa_bits(), 48);
        assert_eq!(
            Vmsa::stage2(&CAPS, K4, 24, 1, 7),
            Err(FormatError::PaSizeReserved { value: 7 })
        );
        let c = Caps::from_idr(2 << 2, 0x74).unwrap();
        assert_eq!(
            c,
            Caps {
                oas_bits: 44,
                gran4k: true,
                gran16k: true,
                gran64k: true,
                vax: false,
                aarch32: false
            }
        );
        assert_eq!(Caps::from_idr(3 << 2, 0x7).map(|c| c.oas_bits), None);
        let no16 = Caps::from_idr(3 << 2, 0x55).unwrap();
        assert!(no16.aarch32 && !no16.gran16k);
        assert_eq!((no16.oas_bits, no16.ias_bits()), (48, 48));
        // AArch32 LPAE tables make the IPA size at least 40 bits (OAS 36 here).
        assert_eq!(Caps::from_idr(1 << 2, 0x51).unwrap().ias_bits(), 40);
        assert_eq!(
            Vmsa::stage1(&no16, K16, 16, 5),
            Err(FormatError::GranuleUnsupported { granule: K16 })
        );
        // IAS bounds S2T0SZ from below: 40-bit OAS → S2T0SZ at least 24.
        let c40 = Caps {
            oas_bits: 40,
            ..CAPS
        };
        assert!(Vmsa::stage2(&c40, K4, 23, 1, 2).is_err());
        assert!(Vmsa::stage2(&c40, K4, 24, 1, 2).is_ok());
    }

    /// Malformed and faulting descriptors: AF = 0 (F_ACCESS unless AFFD), output beyond
    /// the output size (F_ADDR_SIZE), RES0 low address bits of a 16 KiB table, stage-2
    /// table bits 63:59; a block where the granule has none and a level-3 0b01 are
    /// invalid (translation fault, Arm ARM).
    #[test]
    fn malformed_descriptors_are_named() {
        let f = s1(K4, 16);
        let reason = |r: Result<Entry, EntryError>| r.unwrap_err().reason;
        assert!(reason(f.decode(1, 0x8000_0b47)).contains("F_ACCESS"));
        assert!(matches!(
            f.with_access_flag_faults(false).decode(1, 0x8000_0b47),
            Ok(Entry::Leaf { .. })
        ));
        assert!(matches!(f.classify(1, 0x8000_0b47), Ok(Entry::Leaf { .. })));
        let f40 = Vmsa::stage1(&CAPS, K4, 16, 2).unwrap();
        assert!(reason(f40.decode(1, 0x100_0000_0f47)).contains("F_ADDR_SIZE"));
        assert!(reason(f40.decode(4, 0x100_0000_0003)).contains("F_ADDR_SIZE"));
        let f16 = s1(K16, 17);
        assert!(reason(f16.decode(3, 0x8000_1003)).contains("RES0"));
        assert!(matches!(
            f16.decode(3, 0x8000_4003),
            Ok(Entry::Table { .. })
        ));
        // A 16 KiB level-1 (here level 3) block needs DS: invalid.
        assert_eq!(f16.decode(3, 0x10_0000_0f45), Ok(Entry::Invalid));
        assert_eq!(f.decode(4, 0x80_0000_0f45), Ok(Entry::Invalid));
        assert_eq!(f.decode(1, 0x8000_0f45), Ok(Entry::Invalid));
        // A 2 MiB block with low address bits set (bit 16 is nT and ignored).
        assert!(reason(f.decode(2, 0x4020_1f45)).contains("RES0"));
        assert!(matches!(f.decode(2, 0x4021_0f45), Ok(Entry::Leaf { .. })));
        let s2 = Vmsa::stage2(&CAPS, K4, 24, 1, 5).unwrap();
        assert!(reason(s2.decode(3, 0x8000_1003 | 1 << 63)).contains("RES0"));
    }

    /// Splitting a 1 GiB block gives 2 MiB blocks with the same attributes (Contiguous
    /// dropped); splitting a 2 MiB block gives pages (type 0b11).
    #[test]
    fn split_keeps_attributes() {
        let f = s1(K4, 16);
        let g = enc(&f, 3, 0x4000_0000, Perms::R) | CONTIGUOUS;
        assert_eq!(f.split_leaf(3, g, 1), Some(0x0060_0000_4020_0fc5));
        let m = enc(&f, 2, 0x4020_0000, Perms::RW);
        assert_eq!(f.split_leaf(2, m, 511), Some(0x0060_0000_403f_ff47));
        assert_eq!(f.split_leaf(2, m, 512), None);
        assert_eq!(f.split_leaf(1, enc(&f, 1, 0, Perms::R), 0), None);
    }

    /// The formats of the CD and STE known answers (`hw::cd`, `hw::ste`: what Linux
    /// writes): a 48-bit 4 KiB stage 1 from level 0, and a 40-bit 4 KiB stage 2 from
    /// level 1 with 2 concatenated tables; malformed fields give typed errors.
    #[test]
    fn formats_from_cd_and_ste() {
        let cd = Cd::from_qwords([
            0x0001_e205_c000_3510,
            0x8123_4000,
            0,
            0xf404_ff44,
            0,
            0,
            0,
            0,
        ]);
        let f = Vmsa::from_cd(&CAPS, &cd).unwrap();
        assert_eq!(
            (
                f.stage(),
                f.granule(),
                f.ia_bits(),
                f.oa_bits(),
                f.arm_start_level()
            ),
            (Stage::One, K4, 48, 48, 0)
        );
        assert!(f.decode(1, 0x8000_0b47).is_err());
        let mut affd = cd;
        affd.set_affd(true);
        assert!(Vmsa::from_cd(&CAPS, &affd)
            .unwrap()
            .decode(1, 0x8000_0b47)
            .is_ok());
        let mut bad = cd;
        bad.set_tg0_bits(3);
        assert_eq!(
            Vmsa::from_cd(&CAPS, &bad),
            Err(FormatError::GranuleReserved { value: 3 })
        );
        bad = cd;
        bad.set_aa64(false);
        assert_eq!(Vmsa::from_cd(&CAPS, &bad), Err(FormatError::NotAArch64));
        bad = cd;
        bad.set_epd0(true);
        assert_eq!(Vmsa::from_cd(&CAPS, &bad), Err(FormatError::Ttb0Disabled));

        let ste = Ste::from_qwords([
            0xd,
            1 << 44,
            0x044a_3558_0000_0001,
            0x1_2345_6000,
            0,
            0,
            0,
            0,
        ]);
        let f = Vmsa::from_ste(&CAPS, &ste).unwrap();
        assert_eq!(
            (
                f.stage(),
                f.ia_bits(),
                f.oa_bits(),
                f.arm_start_level(),
                f.concatenated()
            ),
            (Stage::Two, 40, 40, 1, 2)
        );
        let mut bad = ste;
        bad.set_s2sl0(0);
        assert!(matches!(
            Vmsa::from_ste(&CAPS, &bad),
            Err(FormatError::StartLevelMismatch {
                s2t0sz: 24,
                sl0: 0,
                ..
            })
        ));
        bad = ste;
        bad.set_s2aa64(false);
        assert_eq!(Vmsa::from_ste(&CAPS, &bad), Err(FormatError::NotAArch64));
    }

    fn formats() -> [Vmsa; 6] {
        let caps52 = Caps {
            oas_bits: 52,
            vax: true,
            ..CAPS
        };
        [
            s1(K4, 16),
            s1(K16, 17),
            Vmsa::stage1(&caps52, K64, 12, 6).unwrap(),
            Vmsa::stage2(&CAPS, K4, 21, 1, 5).unwrap(),
            Vmsa::stage2(&CAPS, K16, 16, 2, 2).unwrap(),
            Vmsa::stage2(&CAPS, K64, 31, 0, 5).unwrap(),
        ]
    }

    proptest::proptest! {
        /// Any 64-bit word at any level (also levels that do not exist) decodes,
        /// classifies and splits without panicking; where `decode` accepts it,
        /// `classify` (the unchecked shape) agrees with it.
        #[test]
        fn any_descriptor_decodes_without_panic(raw in proptest::num::u64::ANY, level in 0u8..8, index in 0usize..10000) {
            // Random words are rarely valid: also try them with AF and V set and the
            // high bits cleared, with the low address bits cleared but for nT (bit 16),
            // and as 2 MiB-aligned addresses below 2^40.
            let words = [
                raw,
                (raw & 0x0000_ffff_ffff_ffff) | AF | DESC_VALID,
                (raw & 0x0060_ffff_c001_0fff) | AF | DESC_VALID,
                (raw & 0x0060_00ff_ffe1_0fff) | AF | DESC_VALID,
            ];
            for (f, raw) in formats().into_iter().flat_map(|f| words.map(|w| (f, w))) {
                let d = f.decode(level, raw);
                let c = f.classify(level, raw).unwrap();
                if let Ok(d) = d {
                    match (d, c) {
                        (Entry::Leaf { base, size, perms }, Entry::Leaf { base: b2, size: s2, perms: p2 }) => {
                            proptest::prop_assert_eq!((base, size, perms), (b2, s2, p2));
                        }
                        (d, c) => proptest::prop_assert_eq!(d, c),
                    }
                }
                let _ = f.split_leaf(level, raw, index);
            }
        }

        /// Every encodable leaf decodes back to its address and permissions, and every
        /// table entry to its address, at a random aligned output address.
        #[test]
        fn encoded_entries_decode_back(pa in proptest::num::u64::ANY, p in 0u8..8, sh in 0u8..4) {
            let perms = Perms { read: p & 1 != 0, write: p & 2 != 0, exec: p & 4 != 0 };
            let attrs = Attrs { sh, ..Attrs::default() };
            for f in formats() {
                for level in 1..=f.root_level() {
                    let shift = f.entry_shift(level);
                    let Some(size) = PageSize::from_shift(shift) else { continue };
                    let addr = (pa & ((1u64 << f.oa_bits()) - 1)) & !(size.bytes() - 1);
                    if f.leaf_entries(level, size).is_some() {
                        if let Ok(raw) = f.encode_leaf(level, PhysAddr(addr), size, perms, attrs, 0) {
                            proptest::prop_assert_eq!(
                                f.decode(level, raw),
                                Ok(Entry::Leaf { base: PhysAddr(addr), size, perms })
                            );
                        }
                    }
                    if level >= 2 {
                        let t = (pa & ((1u64 << f.oa_bits()) - 1)) & !(f.granule().bytes() - 1);
                        let raw = f.encode_table(level, PhysAddr(t), level - 1);
                        match f.decode(level, raw) {
                            Ok(Entry::Table { next, level: l, .. }) => {
                                proptest::prop_assert_eq!((next, l), (PhysAddr(t), level - 1));
                            }
                            other => proptest::prop_assert!(false, "{:?}", other),
                        }
                    }
                }
            }
        }
    }
}
