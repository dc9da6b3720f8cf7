//! In-memory entry structures made of little-endian qwords, and the bit-field helpers
//! every architecture's `hw` module shares.
//!
//! VT-d, AMD-Vi and SMMUv3 describe their tables, descriptors and queue records the
//! same way: a structure of `n` 64-bit little-endian words in which bit `N` is bit
//! `N % 64` of qword `N / 64`. [`qword_struct!`](crate::qword_struct) defines such a
//! structure as a `#[repr(C)]` zerocopy type with raw accessors, and
//! [`qword_fields!`](crate::qword_fields) adds named getter/setter pairs for its fields.
//! The free functions below are the same bit arithmetic on plain integers and on
//! `tock-registers` register fields.
//!
//! Crates that invoke the macros must depend on `zerocopy` themselves: its derives
//! refer to the `zerocopy` crate by name.

use core::fmt;
use tock_registers::fields::Field;
use tock_registers::{RegisterLongName, UIntLike};

/// The low `width` bits set (`width` up to 64; 64 and above give all ones).
pub const fn low_mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// Bits `hi:lo` set, in place (`lo <= hi < 64`): a mask for address fields.
pub const fn genmask(hi: u32, lo: u32) -> u64 {
    low_mask(hi - lo + 1) << lo
}

/// Bits `hi:lo` (inclusive, `lo <= hi < 64`) of `v`, shifted down to bit 0.
pub const fn get_bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & low_mask(hi - lo + 1)
}

/// `v` with bits `hi:lo` (inclusive, `lo <= hi < 64`) replaced by `field`, which is
/// masked to the width.
pub const fn put_bits(v: u64, hi: u32, lo: u32, field: u64) -> u64 {
    let m = genmask(hi, lo);
    (v & !m) | ((field << lo) & m)
}

/// The in-place mask of a `tock-registers` field (the bits it occupies), for 32- and
/// 64-bit registers alike.
pub fn field_mask<T: UIntLike, R: RegisterLongName>(field: Field<T, R>) -> T {
    field.mask << field.shift
}

/// Builds a raw register value from a `tock-registers` field and a value for it (the
/// value is masked to the field), for 32- and 64-bit registers alike.
pub fn field_value<T: UIntLike, R: RegisterLongName>(field: Field<T, R>, value: T) -> T {
    (value & field.mask) << field.shift
}

/// A qword that `Debug` prints as `0x` and 16 hex digits (used by the `Debug` impl of
/// [`qword_struct!`](crate::qword_struct) types).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex(pub u64);

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// Defines a `#[repr(C)]` structure of `$n` little-endian qwords with raw accessors.
///
/// The structure derives `Clone`, `Copy`, `PartialEq`, `Eq`, `Default` and zerocopy's
/// `FromBytes`, `IntoBytes`, `Immutable` and `KnownLayout`, so it can be read from and
/// written to physical memory as bytes; its `Debug` prints the name and the qwords in
/// hex. It gets:
///
/// - `SIZE`, the size in bytes (`$n * 8`);
/// - `from_qwords` / `qwords`, conversion from and to `[u64; $n]` (qword 0 holds bits
///   63:0);
/// - `qword(i)` / `set_qword(i, v)`, one qword (0 and ignored when `i` is out of range);
/// - `bits(hi, lo)` / `set_bits(hi, lo, v)`, a field given by structure bit numbers
///   (inclusive, both in one qword; the value is masked to the width, and a field in a
///   qword out of range reads 0 and ignores writes);
/// - `bit(n)` / `set_bit(n, v)`, one bit.
///
/// The invoking crate must depend on `zerocopy`.
///
/// ```
/// iommu_core::qword_struct!(
///     /// A two-qword example entry.
///     Example,
///     2
/// );
/// let mut e = Example::default();
/// e.set_bits(75, 64, 0xabc);
/// e.set_bit(0, true);
/// assert_eq!(e.qwords(), [1, 0xabc]);
/// assert_eq!(e.bits(71, 68), 0xb);
/// assert_eq!(Example::SIZE, 16);
/// ```
#[macro_export]
macro_rules! qword_struct {
    ($(#[$m:meta])* $name:ident, $n:expr) => {
        $(#[$m])*
        #[derive(
            Clone,
            Copy,
            PartialEq,
            Eq,
            Default,
            ::zerocopy::FromBytes,
            ::zerocopy::IntoBytes,
            ::zerocopy::Immutable,
            ::zerocopy::KnownLayout,
        )]
        #[repr(C)]
        pub struct $name {
            qw: [::zerocopy::byteorder::little_endian::U64; $n],
        }

        impl $name {
            /// Size of the structure in bytes.
            pub const SIZE: usize = $n * 8;

            /// Builds the structure from its qwords (qword 0 holds bits 63:0).
            pub fn from_qwords(q: [u64; $n]) -> Self {
                Self {
                    qw: q.map(::core::convert::Into::into),
                }
            }
            /// The qwords (qword 0 holds bits 63:0).
            pub fn qwords(&self) -> [u64; $n] {
                self.qw.map(|v| v.get())
            }
            /// Qword `i` (bits `64*i+63 : 64*i`); 0 when `i` is out of range.
            pub fn qword(&self, i: usize) -> u64 {
                self.qw.get(i).map_or(0, |v| v.get())
            }
            /// Sets qword `i`; ignored when `i` is out of range.
            pub fn set_qword(&mut self, i: usize, v: u64) {
                if let Some(q) = self.qw.get_mut(i) {
                    *q = v.into();
                }
            }
            /// Bits `hi:lo` (inclusive, both in one qword) of the structure.
            pub fn bits(&self, hi: u32, lo: u32) -> u64 {
                let s = lo % 64;
                $crate::entry::get_bits(self.qword((lo / 64) as usize), s + (hi - lo), s)
            }
            /// Sets bits `hi:lo` (inclusive, both in one qword) to `v`, masked to the width.
            pub fn set_bits(&mut self, hi: u32, lo: u32, v: u64) {
                let i = (lo / 64) as usize;
                let s = lo % 64;
                let q = $crate::entry::put_bits(self.qword(i), s + (hi - lo), s, v);
                self.set_qword(i, q);
            }
            /// Bit `n` of the structure.
            pub fn bit(&self, n: u32) -> bool {
                self.bits(n, n) != 0
            }
            /// Sets or clears bit `n`.
            pub fn set_bit(&mut self, n: u32, v: bool) {
                self.set_bits(n, n, v as u64);
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(stringify!($name))?;
                f.debug_list()
                    .entries(self.qwords().iter().map(|q| $crate::entry::Hex(*q)))
                    .finish()
            }
        }
    };
}

/// Getter and setter pairs for the fields of a [`qword_struct!`](crate::qword_struct)
/// type: `get / set : hi, lo;` for a multi-bit field (`u64`, bit numbers of the whole
/// structure) and `get / set : bit;` for a one-bit flag (`bool`). Doc comments written
/// before a pair document the getter; the setter's doc names the bits.
///
/// ```
/// iommu_core::qword_struct!(
///     /// An example entry.
///     Example,
///     2
/// );
/// iommu_core::qword_fields!(Example {
///     /// Valid.
///     valid / set_valid: 0;
///     /// A field in qword 1.
///     tag / set_tag: 75, 64;
/// });
/// let mut e = Example::default();
/// e.set_valid(true);
/// e.set_tag(0x1abc);
/// assert_eq!((e.valid(), e.tag()), (true, 0xabc));
/// ```
#[macro_export]
macro_rules! qword_fields {
    ($ty:ident { $( $(#[$m:meta])* $get:ident / $set:ident : $hi:literal $(, $lo:literal)? ; )* }) => {
        impl $ty {
            $( $crate::qword_fields!(@one $(#[$m])* $get / $set : $hi $(, $lo)?); )*
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

#[cfg(test)]
mod tests {
    use super::*;

    crate::qword_struct!(
        /// Four qwords, like a VT-d scalable context entry or an AMD-Vi DTE.
        Four,
        4
    );
    crate::qword_fields!(Four {
        /// Bits 127:124, the top of qword 1.
        top1 / set_top1: 127, 124;
        /// Bit 192, bit 0 of qword 3.
        q3b0 / set_q3b0: 192;
    });

    #[test]
    fn bit_helpers() {
        assert_eq!(get_bits(0xabcd_0000, 31, 16), 0xabcd);
        assert_eq!(put_bits(u64::MAX, 11, 9, 0), !0xe00);
        assert_eq!(put_bits(u64::MAX, 7, 4, 0), 0xffff_ffff_ffff_ff0f);
        assert_eq!(put_bits(0, 63, 0, 5), 5);
        assert_eq!(put_bits(0, 11, 9, 0xff), 0xe00);
        assert_eq!(genmask(51, 12), 0x000f_ffff_ffff_f000);
        assert_eq!(genmask(63, 0), u64::MAX);
        assert_eq!(
            (low_mask(0), low_mask(64), low_mask(70)),
            (0, u64::MAX, u64::MAX)
        );
    }

    tock_registers::register_bitfields![u32, R32 [F OFFSET(4) NUMBITS(3) []]];
    tock_registers::register_bitfields![u64, R64 [G OFFSET(40) NUMBITS(12) []]];

    #[test]
    fn register_field_helpers_32_and_64_bit() {
        assert_eq!(field_mask(R32::F), 0x70u32);
        assert_eq!(field_value(R32::F, 0xf), 0x70u32);
        assert_eq!(field_mask(R64::G), 0xfff << 40);
        assert_eq!(field_value(R64::G, 0x1abc), 0xabc << 40);
    }

    /// Bit `N` is bit `N % 64` of qword `N / 64`, stored little-endian in memory.
    #[test]
    fn structure_bits_map_to_little_endian_qwords() {
        let mut e = Four::default();
        e.set_top1(0x1f);
        e.set_q3b0(true);
        e.set_bits(47, 40, 0x5a);
        assert_eq!(e.qwords(), [0x5a << 40, 0xf << 60, 0, 1]);
        assert_eq!((e.top1(), e.q3b0(), e.bits(47, 44)), (0xf, true, 5));
        let bytes = zerocopy::IntoBytes::as_bytes(&e);
        assert_eq!(bytes.len(), Four::SIZE);
        assert_eq!((bytes[5], bytes[15], bytes[24]), (0x5a, 0xf0, 1));
        let back = <Four as zerocopy::FromBytes>::read_from_bytes(bytes).unwrap();
        assert_eq!(back, e);
        e.set_q3b0(false);
        e.set_qword(1, 7);
        assert_eq!(e, Four::from_qwords([0x5a << 40, 7, 0, 0]));
        assert_eq!(e.bits(63, 0), 0x5a << 40);
    }

    /// Accessors never panic on positions past the structure: reads give 0, writes are
    /// dropped.
    #[test]
    fn out_of_range_qword_reads_zero_and_ignores_writes() {
        let mut e = Four::from_qwords([1, 2, 3, 4]);
        assert_eq!((e.qword(4), e.bits(300, 290), e.bit(256)), (0, 0, false));
        e.set_qword(9, 5);
        e.set_bits(263, 256, 0xff);
        e.set_bit(511, true);
        assert_eq!(e.qwords(), [1, 2, 3, 4]);
    }

    #[test]
    fn debug_prints_name_and_hex_qwords() {
        let e = Four::from_qwords([1, 0xabc, 0, u64::MAX]);
        let mut s = alloc::string::String::new();
        core::fmt::write(&mut s, format_args!("{e:?}")).unwrap();
        assert_eq!(
            s,
            "Four[0x0000000000000001, 0x0000000000000abc, 0x0000000000000000, 0xffffffffffffffff]"
        );
    }
}
