//! SMMUv3 register map and in-memory structure layouts: the single source of truth for
//! SMMUv3 bits.
//!
//! - [`regs`]: register pages 0 and 1 (offsets and tock-registers fields), queue
//!   pointers with their wrap and overflow flags;
//! - [`ste`]: stream table entries (STE) and level-1 stream table descriptors (L1STD);
//! - [`cd`]: context descriptors (CD) and level-1 CD descriptors (L1CD);
//! - [`cmd`]: command-queue entries and their opcodes;
//! - [`event`]: event-queue records and event types.
//!
//! Every in-memory structure is a `#[repr(C)]` zerocopy type of little-endian qwords
//! defined with [`iommu_core::qword_struct!`] and [`iommu_core::qword_fields!`], so it
//! can be read from and written to physical memory as bytes. Bit `N` of a structure is
//! bit `N % 64` of qword `N / 64` (the convention of the Arm SMMUv3
//! specification, IHI0070, and of `shared/reference/smmuv3.md`).

pub mod cd;
pub mod cmd;
pub mod event;
pub mod regs;
pub mod ste;

use core::fmt;

/// A translation granule (reference §12: three encodings of it exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granule {
    /// 4 KiB.
    K4,
    /// 16 KiB.
    K16,
    /// 64 KiB.
    K64,
}

impl Granule {
    /// log2 of the granule size (12, 14, 16).
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }
    /// The granule size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }
    /// Index bits resolved per level (`shift - 3`: 9, 11, 13).
    pub const fn stride(self) -> u32 {
        self.shift() - 3
    }
    /// CD.TG0 and STE.S2TG encoding: 0 4 KiB, 1 64 KiB, 2 16 KiB (3 reserved)
    /// \[IHI0070\]\[L\]\[F\]\[Q\].
    pub const fn tg0(self) -> u8 {
        match self {
            Granule::K4 => 0,
            Granule::K64 => 1,
            Granule::K16 => 2,
        }
    }
    /// Decodes CD.TG0 / STE.S2TG; `None` for the reserved 3.
    pub const fn from_tg0(v: u64) -> Option<Self> {
        match v {
            0 => Some(Granule::K4),
            1 => Some(Granule::K64),
            2 => Some(Granule::K16),
            _ => None,
        }
    }
    /// CD.TG1 encoding: 1 16 KiB, 2 4 KiB, 3 64 KiB (0 reserved) \[IHI0070\]\[F\]\[Q\].
    pub const fn tg1(self) -> u8 {
        match self {
            Granule::K16 => 1,
            Granule::K4 => 2,
            Granule::K64 => 3,
        }
    }
    /// Decodes CD.TG1; `None` for the reserved 0.
    pub const fn from_tg1(v: u64) -> Option<Self> {
        match v {
            1 => Some(Granule::K16),
            2 => Some(Granule::K4),
            3 => Some(Granule::K64),
            _ => None,
        }
    }
    /// The TG field of range TLBI commands: 1 4 KiB, 2 16 KiB, 3 64 KiB (0 = no range,
    /// no TTL) \[IHI0070\]\[Q\]; Linux writes `(shift - 10) / 2` \[L\].
    pub const fn tlbi_tg(self) -> u8 {
        ((self.shift() - 10) / 2) as u8
    }
    /// Decodes a TLBI TG field; `None` for 0 (no granule given).
    pub const fn from_tlbi_tg(v: u64) -> Option<Self> {
        match v {
            1 => Some(Granule::K4),
            2 => Some(Granule::K16),
            3 => Some(Granule::K64),
            _ => None,
        }
    }
}

impl fmt::Display for Granule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granule::K4 => "4K",
            Granule::K16 => "16K",
            Granule::K64 => "64K",
        })
    }
}

/// A physical-address size in the encoding of IDR5.OAS, CD.IPS and STE.S2PS:
/// 0 32, 1 36, 2 40, 3 42, 4 44, 5 48, 6 52 bits (7 reserved) \[L\]\[F\]\[Q\].
pub const fn pa_size_bits(enc: u64) -> Option<u32> {
    match enc {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

/// The encoding of a physical-address size (the inverse of [`pa_size_bits`]).
pub const fn pa_size_enc(bits: u32) -> Option<u8> {
    match bits {
        32 => Some(0),
        36 => Some(1),
        40 => Some(2),
        42 => Some(3),
        44 => Some(4),
        48 => Some(5),
        52 => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Granule encodings, reference §12 table "Granule encodings, three conventions"
    /// (IHI0070 CD.TG0/TG1, STE.S2TG, CMD_TLBI_* TG; Linux `arm-smmu-v3.h`
    /// `ARM64_TCR_TG0_4K` 0, `_64K` 1, `_16K` 2).
    #[test]
    fn granule_encodings_known_answers() {
        let rows = [
            (Granule::K4, 0, 2, 1),
            (Granule::K16, 2, 1, 2),
            (Granule::K64, 1, 3, 3),
        ];
        for (g, tg0, tg1, tlbi) in rows {
            assert_eq!((g.tg0(), g.tg1(), g.tlbi_tg()), (tg0, tg1, tlbi), "{g}");
            assert_eq!(Granule::from_tg0(tg0 as u64), Some(g));
            assert_eq!(Granule::from_tg1(tg1 as u64), Some(g));
            assert_eq!(Granule::from_tlbi_tg(tlbi as u64), Some(g));
        }
        assert_eq!(Granule::from_tg0(3), None);
        assert_eq!(Granule::from_tg1(0), None);
        assert_eq!(Granule::from_tlbi_tg(0), None);
    }

    /// IDR5.OAS / CD.IPS / STE.S2PS encoding, reference §2 (Linux `arm_smmu_device_hw_probe`
    /// OAS switch: 0 32 … 6 52).
    #[test]
    fn pa_size_known_answers() {
        let want = [32, 36, 40, 42, 44, 48, 52];
        for (e, &b) in want.iter().enumerate() {
            assert_eq!(pa_size_bits(e as u64), Some(b));
            assert_eq!(pa_size_enc(b), Some(e as u8));
        }
        assert_eq!(pa_size_bits(7), None);
        assert_eq!(pa_size_enc(47), None);
    }
}
