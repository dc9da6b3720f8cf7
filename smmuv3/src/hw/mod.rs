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
//! Every in-memory structure is a `#[repr(C)]` zerocopy type of little-endian qwords,
//! so it can be read from and written to physical memory as bytes. Bit `N` of a
//! structure is bit `N % 64` of qword `N / 64` (the convention of the Arm SMMUv3
//! specification, IHI0070, and of `shared/reference/smmuv3.md`).

pub mod cd;
pub mod cmd;
pub mod event;
pub mod regs;
pub mod ste;

use core::fmt;

/// Defines a `#[repr(C)]` structure of `$n` little-endian qwords with bit accessors.
macro_rules! qwords {
    ($(#[$m:meta])* $name:ident, $n:expr) => {
        $(#[$m])*
        #[derive(
            Clone,
            Copy,
            PartialEq,
            Eq,
            Default,
            zerocopy::FromBytes,
            zerocopy::IntoBytes,
            zerocopy::Immutable,
            zerocopy::KnownLayout,
        )]
        #[repr(C)]
        pub struct $name {
            qw: [zerocopy::byteorder::little_endian::U64; $n],
        }

        impl $name {
            /// Size in bytes.
            pub const SIZE: usize = $n * 8;

            /// From qwords (qword 0 holds bits 63:0).
            pub fn from_qwords(q: [u64; $n]) -> Self {
                Self { qw: q.map(Into::into) }
            }
            /// The qwords (qword 0 holds bits 63:0).
            pub fn qwords(&self) -> [u64; $n] {
                self.qw.map(|v| v.get())
            }
            /// Bits `hi:lo` (inclusive, within one qword).
            pub fn bits(&self, hi: u32, lo: u32) -> u64 {
                $crate::hw::get_bits(self.qw[(lo / 64) as usize].get(), hi % 64, lo % 64)
            }
            /// Sets bits `hi:lo` (inclusive, within one qword) to `v`, masked to the width.
            pub fn set_bits(&mut self, hi: u32, lo: u32, v: u64) {
                let q = &mut self.qw[(lo / 64) as usize];
                *q = $crate::hw::put_bits(q.get(), hi % 64, lo % 64, v).into();
            }
            /// Bit `n`.
            pub fn bit(&self, n: u32) -> bool {
                self.bits(n, n) != 0
            }
            /// Sets or clears bit `n`.
            pub fn set_bit(&mut self, n: u32, v: bool) {
                self.set_bits(n, n, v as u64);
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(stringify!($name))?;
                f.debug_list()
                    .entries(self.qwords().iter().map(|q| $crate::hw::Hex(*q)))
                    .finish()
            }
        }
    };
}
pub(crate) use qwords;

/// Getter and setter pairs for multi-bit fields (`get / set : hi, lo`, bit numbers of
/// the whole structure) and for one-bit flags (`get / set : bit`).
macro_rules! fields {
    ($ty:ident { $( $(#[$m:meta])* $get:ident / $set:ident : $hi:literal $(, $lo:literal)? ; )* }) => {
        impl $ty {
            $( $crate::hw::fields!(@one $(#[$m])* $get / $set : $hi $(, $lo)?); )*
        }
    };
    (@one $(#[$m:meta])* $get:ident / $set:ident : $hi:literal , $lo:literal) => {
        $(#[$m])*
        pub fn $get(&self) -> u64 {
            self.bits($hi, $lo)
        }
        #[doc = concat!("Sets `", stringify!($get), "` (bits ", stringify!($hi), ":", stringify!($lo), ").")]
        pub fn $set(&mut self, v: u64) {
            self.set_bits($hi, $lo, v)
        }
    };
    (@one $(#[$m:meta])* $get:ident / $set:ident : $bit:literal) => {
        $(#[$m])*
        pub fn $get(&self) -> bool {
            self.bit($bit)
        }
        #[doc = concat!("Sets `", stringify!($get), "` (bit ", stringify!($bit), ").")]
        pub fn $set(&mut self, v: bool) {
            self.set_bit($bit, v)
        }
    };
}
pub(crate) use fields;

/// Bits `hi:lo` set, in place (a mask for address fields).
pub(crate) const fn genmask(hi: u32, lo: u32) -> u64 {
    mask(hi - lo + 1) << lo
}

/// Bits `hi:lo` of `q` (`hi >= lo`, both below 64).
pub(crate) const fn get_bits(q: u64, hi: u32, lo: u32) -> u64 {
    (q >> lo) & mask(hi - lo + 1)
}

/// `q` with bits `hi:lo` replaced by `v` (masked to the width).
pub(crate) const fn put_bits(q: u64, hi: u32, lo: u32, v: u64) -> u64 {
    let m = mask(hi - lo + 1) << lo;
    (q & !m) | ((v << lo) & m)
}

const fn mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// A qword printed in hex (for `Debug`).
pub(crate) struct Hex(pub u64);

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

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

    #[test]
    fn bit_helpers() {
        assert_eq!(get_bits(0xabcd_0000, 31, 16), 0xabcd);
        assert_eq!(put_bits(u64::MAX, 7, 4, 0), 0xffff_ffff_ffff_ff0f);
        assert_eq!(put_bits(0, 63, 0, 5), 5);
        assert_eq!(put_bits(0, 3, 1, 0xff), 0b1110);
    }
}
