//! The model's own VMSAv8-64 translation-table walker: one input address per call, as
//! the SMMU walks per transaction.
//!
//! Written from the Arm architecture (Arm ARM DDI0487 chapter D8 "The AArch64 Virtual
//! Memory System Architecture": D8.2 translation granules and start levels, D8.3
//! descriptor formats, D8.4 concatenated stage-2 start tables, D8.5 access flag, D8.4.1
//! / D8.6 permissions; the SMMU's use of them in IHI0070 §3.4 "Address sizes", §5.2 STE
//! and §5.4 CD) and `shared/reference/smmuv3.md` §8 and §12, using only the field
//! accessors of `smmuv3::hw` (never the driver side's `smmuv3::format`):
//!
//! - the granule from CD.TG0 / STE.S2TG (IDR5.GRANxK must list it), the input size
//!   `64 - T0SZ` / `64 - S2T0SZ`; stage 1 starts at Arm level `4 - (inputsize - 4) /
//!   stride`, stage 2 at the level S2SL0 names (4 KiB: `2 - SL0`, 16/64 KiB: `3 - SL0`),
//!   the IPA bits above that level's reach selecting one of up to 16 concatenated
//!   tables, which together are one larger start table;
//! - descriptor bit 0 clear, a level-3 descriptor of type 0b01, a block where the
//!   granule allows none (4 KiB: level 0; 16 KiB: levels 0, 1; 64 KiB: level 1 unless
//!   the output size is 52 bits): F_TRANSLATION; an input address beyond the input
//!   size: F_TRANSLATION;
//! - the output address (and every next-table address) beyond the effective output
//!   size (CD.IPS / STE.S2PS capped by IDR5.OAS, 48 bits for 4/16 KiB without DS):
//!   F_ADDR_SIZE, which the architecture places before the access flag check
//!   (AArch64.S1Walk reports the Address size fault from the walk; AArch64.S1Translate
//!   checks AF afterwards);
//! - a leaf with AF = 0 without AFFD / HA: F_ACCESS;
//! - a table read that is not backed: F_WALK_EABT; poison is a memory error.
//!
//! Strict choices of the model (hardware may ignore them; a driver that sets them has a
//! bug): RES0 address bits below a table's, block's or page's alignment, and stage-2
//! table descriptor bits 63:59 (RES0 at stage 2: the hierarchical attributes exist at
//! stage 1 only), are refused as F_TRANSLATION; a stage-1 TTB0 not aligned to its start
//! table likewise.
//!
//! Permissions are those of an unprivileged data access: stage 1 read = AP\[1\] (bit 6),
//! write = AP\[1\] and not AP\[2\] (bit 7), narrowed by APTable\[0\] (bit 61, no
//! unprivileged access below) and APTable\[1\] (bit 62, no write below); stage 2 read =
//! S2AP\[0\] (bit 6), write = S2AP\[1\] (bit 7); execute: stage 1 readable, UXN (bit
//! 54) clear and no XNTable (bit 60) above, stage 2 XN (bits 54:53) clear.

use iommu_core::mem::MemError;
use iommu_core::pgtable::Perms;
use smmuv3::hw::cd::Cd;
use smmuv3::hw::event::EventType;
use smmuv3::hw::ste::Ste;
use smmuv3::hw::{pa_size_bits, Granule};

/// Descriptor bit 0: valid (Arm ARM D8.3).
const VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0–2) or page (level 3); 0 is a block.
const TABLE: u64 = 1 << 1;
/// Stage-1 AP\[1\] / stage-2 S2AP\[0\] (bit 6).
const AP1_S2AP0: u64 = 1 << 6;
/// Stage-1 AP\[2\] / stage-2 S2AP\[1\] (bit 7).
const AP2_S2AP1: u64 = 1 << 7;
/// Access flag (bit 10).
const AF: u64 = 1 << 10;
/// Block descriptor bit 16: nT with FEAT_BBML1, not an address bit.
const BLOCK_NT: u64 = 1 << 16;
/// Stage-1 PXN (bit 53) / stage-2 XN\[0\] with FEAT_XNX.
const PXN: u64 = 1 << 53;
/// Stage-1 UXN / stage-2 XN\[1\] (bit 54).
const UXN: u64 = 1 << 54;
/// Stage-1 table UXNTable / XNTable (bit 60).
const XNTABLE: u64 = 1 << 60;
/// Stage-1 table APTable\[0\] (bit 61).
const APTABLE0: u64 = 1 << 61;
/// Stage-1 table APTable\[1\] (bit 62).
const APTABLE1: u64 = 1 << 62;
/// Stage-2 table descriptor bits 63:59 (RES0 at stage 2).
const S2_TABLE_RES0: u64 = 0x1f << 59;

/// The SMMU's translation-table capabilities (IDR5; IDR0.TTF is AArch64 only in this
/// model, so the IAS equals the OAS, IHI0070 §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Caps {
    /// IDR5.OAS in bits.
    pub oas_bits: u32,
    /// IDR5.GRAN4K, GRAN16K, GRAN64K.
    pub gran: [bool; 3],
}

impl Caps {
    fn has(&self, g: Granule) -> bool {
        self.gran[match g {
            Granule::K4 => 0,
            Granule::K16 => 1,
            Granule::K64 => 2,
        }]
    }
    /// The intermediate address size.
    pub fn ias_bits(&self) -> u32 {
        self.oas_bits
    }
}

/// Which stage a [`Tables`] walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    One,
    Two,
}

/// Why a CD or STE describes no walkable tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CfgError {
    /// CD.EPD0 = 1: every TTB0 address takes a translation fault.
    Ttb0Disabled,
    /// The CD or STE is ILLEGAL (C_BAD_CD / C_BAD_STE), for this reason.
    Illegal(&'static str),
}

/// The translation regime one CD's TTB0 or one STE's S2TTB describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tables {
    stage: Stage,
    granule: Granule,
    /// Input size in bits.
    ia_bits: u32,
    /// Effective output size in bits.
    oa_bits: u32,
    /// Arm start level (0..=3).
    start: u32,
    /// Access-flag faults enabled (no AFFD, no HA).
    af_fault: bool,
}

/// Largest TxSZ without small translation tables (IHI0070 §5.4 CD.T0SZ, §5.2
/// STE.S2T0SZ; reference §12 "SMMU limits").
const TXSZ_MAX: u32 = 39;

/// Effective output size: the field's size capped by IDR5.OAS; 52 bits only with the
/// 64 KiB granule (4/16 KiB need DS, not implemented: PS 0b110 behaves as 48 bits).
fn output_bits(caps: &Caps, g: Granule, ps: u64) -> Result<u32, CfgError> {
    let ps = pa_size_bits(ps).ok_or(CfgError::Illegal("IPS/S2PS holds the reserved 7"))?;
    let oa = ps.min(caps.oas_bits);
    Ok(if oa > 48 && g != Granule::K64 { 48 } else { oa })
}

impl Tables {
    /// Stage 1 of a CD: TG0, T0SZ (16..=39), IPS, AFFD/HA (IHI0070 §5.4).
    pub fn from_cd(caps: &Caps, cd: &Cd) -> Result<Self, CfgError> {
        if !cd.aa64() {
            return Err(CfgError::Illegal(
                "CD.AA64 = 0: AArch32 tables not implemented",
            ));
        }
        if cd.epd0() {
            return Err(CfgError::Ttb0Disabled);
        }
        let g = Granule::from_tg0(cd.tg0_bits()).ok_or(CfgError::Illegal("CD.TG0 reserved"))?;
        if !caps.has(g) {
            return Err(CfgError::Illegal("CD.TG0 granule not in IDR5"));
        }
        let t0sz = cd.t0sz() as u32;
        if !(16..=TXSZ_MAX).contains(&t0sz) {
            return Err(CfgError::Illegal("CD.T0SZ outside 16..=39"));
        }
        let ia = 64 - t0sz;
        let stride = g.shift() - 3;
        Ok(Self {
            stage: Stage::One,
            granule: g,
            ia_bits: ia,
            oa_bits: output_bits(caps, g, cd.ips())?,
            start: 4 - (ia - 4) / stride,
            af_fault: !(cd.affd() || cd.ha()),
        })
    }

    /// Stage 2 of an STE: S2TG, S2T0SZ, S2SL0, S2PS, S2AFFD/S2HA (IHI0070 §5.2,
    /// reference §8 and §12).
    pub fn from_ste(caps: &Caps, ste: &Ste) -> Result<Self, CfgError> {
        if !ste.s2aa64() {
            return Err(CfgError::Illegal(
                "STE.S2AA64 = 0: AArch32 tables not implemented",
            ));
        }
        let g = Granule::from_tg0(ste.s2tg_bits()).ok_or(CfgError::Illegal("STE.S2TG reserved"))?;
        if !caps.has(g) {
            return Err(CfgError::Illegal("STE.S2TG granule not in IDR5"));
        }
        let floor = if g == Granule::K64 { 12 } else { 16 };
        let min = floor.max(64 - caps.ias_bits());
        let t0sz = ste.s2t0sz() as u32;
        if !(min..=TXSZ_MAX).contains(&t0sz) {
            return Err(CfgError::Illegal(
                "STE.S2T0SZ outside max(16, 64 - IAS)..=39",
            ));
        }
        let sl0 = ste.s2sl0();
        // 4 KiB SL0 3 (level 3) needs IDR3.STT; 16 KiB SL0 3 (level 0) S2DS; 64 KiB
        // SL0 3 is reserved.
        let start = match (g, sl0) {
            (Granule::K4, 0..=2) => 2 - sl0 as u32,
            (Granule::K16 | Granule::K64, 0..=2) => 3 - sl0 as u32,
            _ => return Err(CfgError::Illegal("STE.S2SL0 reserved or needs STT/S2DS")),
        };
        let ia = 64 - t0sz;
        let t = Self {
            stage: Stage::Two,
            granule: g,
            ia_bits: ia,
            oa_bits: output_bits(caps, g, ste.s2ps())?,
            start,
            af_fault: !(ste.s2affd() || ste.s2ha()),
        };
        // The start level must resolve between 1 and stride + 4 bits (1 to 16 tables).
        let reach = t.shift(start);
        if ia <= reach || ia - reach > g.shift() - 3 + 4 {
            return Err(CfgError::Illegal(
                "STE.S2T0SZ does not fit S2SL0 (1 to 16 tables)",
            ));
        }
        Ok(t)
    }

    /// The granule.
    pub fn granule(&self) -> Granule {
        self.granule
    }

    /// Bytes of the start table (all concatenated tables together).
    pub fn start_bytes(&self) -> u64 {
        8u64 << (self.ia_bits - self.shift(self.start))
    }

    /// Granule-sized tables concatenated at the start level (1 for a smaller table).
    pub fn concatenated(&self) -> u64 {
        (self.start_bytes() / self.granule.bytes()).max(1)
    }

    /// log2 of the span of one entry at Arm level `level`: `g + (3 - level) * stride`.
    fn shift(&self, level: u32) -> u32 {
        self.granule.shift() + (3 - level) * (self.granule.shift() - 3)
    }

    /// Whether a block descriptor is allowed at Arm level `level` (1 or 2).
    fn block_at(&self, level: u32) -> bool {
        match (self.granule, level) {
            (_, 2) => true,
            (Granule::K4, 1) => true,
            (Granule::K64, 1) => self.oa_bits > 48,
            _ => false,
        }
    }

    /// The output-address bits of a descriptor whose target is aligned to `1 << align`,
    /// or the fault: RES0 bits below the alignment set (the model's strict choice), or
    /// beyond the output size (F_ADDR_SIZE).
    fn out_addr(&self, raw: u64, align: u32, block: bool) -> Result<u64, EntryFault> {
        // 4/16 KiB without DS: OA[47:12] in 47:12, bits 49:48 address bits beyond a
        // 48-bit output (hence an Address size fault). 64 KiB: OA[47:16] in 47:16 and
        // OA[51:48] in 15:12 (reference §12).
        let (addr, low_field) = match self.granule {
            Granule::K64 => (
                (raw & 0x0000_ffff_ffff_0000) | (((raw >> 12) & 0xf) << 48),
                raw & 0x0000_ffff_ffff_0000,
            ),
            _ => (raw & 0x0003_ffff_ffff_f000, raw & 0x0003_ffff_ffff_f000),
        };
        let nt = if block { BLOCK_NT } else { 0 };
        if low_field & ((1u64 << align) - 1) & !nt != 0 {
            return Err(EntryFault::Translation);
        }
        let addr = addr & !((1u64 << align) - 1);
        if addr >> self.oa_bits != 0 {
            return Err(EntryFault::AddrSize);
        }
        Ok(addr)
    }
}

/// A descriptor refused.
enum EntryFault {
    Translation,
    AddrSize,
}

/// How a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WalkFail {
    /// A translation-class fault of the walking stage.
    Fault(EventType),
    /// External abort reading a descriptor at this PA (F_WALK_EABT).
    Eabt(u64),
    /// Poison.
    Memory(MemError),
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Walked {
    /// Output address of the input address's byte.
    pub out: u64,
    /// Permissions over the walk (execute for an unprivileged instruction fetch).
    pub perms: Perms,
    /// log2 of the leaf size.
    pub shift: u32,
}

/// Translates `ia` through the tables `t` under `root`, reading each 8-byte descriptor
/// with `read` (a physical read, or an IPA read through stage 2 for a nested stage 1).
pub(super) fn walk(
    t: &Tables,
    read: &mut dyn FnMut(u64) -> Result<u64, WalkFail>,
    root: u64,
    ia: u64,
) -> Result<Walked, WalkFail> {
    let fault = |ty| Err(WalkFail::Fault(ty));
    if t.ia_bits < 64 && ia >> t.ia_bits != 0 {
        return fault(EventType::FTranslation);
    }
    if root & (t.start_bytes().max(8) - 1) != 0 {
        return fault(EventType::FTranslation);
    }
    let (mut table, mut level) = (root, t.start);
    let (mut r, mut w, mut x) = (true, true, true);
    let g = t.granule.shift();
    // The level increases each step, so at most 4 reads.
    loop {
        let bits = if level == t.start {
            t.ia_bits - t.shift(level)
        } else {
            g - 3
        };
        let index = (ia >> t.shift(level)) & ((1u64 << bits) - 1);
        let raw = read(table + 8 * index)?;
        if raw & VALID == 0 {
            return fault(EventType::FTranslation);
        }
        let table_or_page = raw & TABLE != 0;
        let shift = t.shift(level);
        if level < 3 && table_or_page {
            if t.stage == Stage::Two && raw & S2_TABLE_RES0 != 0 {
                return fault(EventType::FTranslation);
            }
            if t.stage == Stage::One {
                if raw & APTABLE0 != 0 {
                    (r, w, x) = (false, false, false);
                }
                if raw & XNTABLE != 0 {
                    x = false;
                }
                if raw & APTABLE1 != 0 {
                    w = false;
                }
            }
            table = match t.out_addr(raw, g, false) {
                Ok(a) => a,
                Err(EntryFault::Translation) => return fault(EventType::FTranslation),
                Err(EntryFault::AddrSize) => return fault(EventType::FAddrSize),
            };
            level += 1;
            continue;
        }
        // Level 3 type 0b01 is reserved (translation fault); a block only where allowed.
        if (level == 3 && !table_or_page) || (level < 3 && !t.block_at(level)) {
            return fault(EventType::FTranslation);
        }
        let base = match t.out_addr(raw, shift, level < 3) {
            Ok(a) => a,
            Err(EntryFault::Translation) => return fault(EventType::FTranslation),
            Err(EntryFault::AddrSize) => return fault(EventType::FAddrSize),
        };
        if t.af_fault && raw & AF == 0 {
            return fault(EventType::FAccess);
        }
        let (read_ok, write_ok, exec_ok) = match t.stage {
            Stage::One => {
                let rd = raw & AP1_S2AP0 != 0;
                (rd, rd && raw & AP2_S2AP1 == 0, rd && raw & UXN == 0)
            }
            Stage::Two => (
                raw & AP1_S2AP0 != 0,
                raw & AP2_S2AP1 != 0,
                raw & (UXN | PXN) == 0,
            ),
        };
        return Ok(Walked {
            out: base | (ia & ((1u64 << shift) - 1)),
            perms: Perms {
                read: r && read_ok,
                write: w && write_ok,
                exec: x && exec_ok,
            },
            shift,
        });
    }
}
