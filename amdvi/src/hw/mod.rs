//! AMD-Vi register map and entry layouts: the single source of truth for AMD-Vi bits.
//!
//! - [`regs`]: MMIO register offsets and fields (tock-registers bitfields) with the
//!   encodings of sizes and lengths;
//! - [`dte`]: the 256-bit device table entry and the GCR3 table entry;
//! - [`pte`]: v1 (host) page-directory and page-table entries, the NextLevel encoding
//!   and the v2 (guest, x86-64) entry bits;
//! - [`cmd`]: command-buffer entries;
//! - [`event`]: event-log entries and event codes.
//!
//! Every in-memory structure is a `#[repr(C)]` zerocopy type made of little-endian
//! qwords, so it can be read from and written to physical memory as bytes. Bit `N` of
//! a structure is bit `N % 64` of qword `N / 64` (the convention of the AMD
//! specification 48882's figures). The positions come from
//! `shared/reference/amdvi.md`; each layout has known-answer tests naming their source.

pub mod cmd;
pub mod dte;
pub mod event;
pub mod pte;
pub mod regs;

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
            /// Size of the structure in bytes.
            pub const SIZE: usize = $n * 8;

            /// Builds the structure from its qwords (qword 0 holds bits 63:0).
            pub fn from_qwords(q: [u64; $n]) -> Self {
                Self { qw: q.map(Into::into) }
            }
            /// The qwords (qword 0 holds bits 63:0).
            pub fn qwords(&self) -> [u64; $n] {
                self.qw.map(|v| v.get())
            }
            /// Bits `hi:lo` (inclusive, both in one qword).
            pub fn bits(&self, hi: u32, lo: u32) -> u64 {
                $crate::hw::get_bits(self.qw[(lo / 64) as usize].get(), hi % 64, lo % 64)
            }
            /// Sets bits `hi:lo` (inclusive, both in one qword) to `v`, masked to the width.
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
                write!(f, "{}{:#018x?}", stringify!($name), self.qwords())
            }
        }
    };
}
pub(crate) use qwords;

/// Bits `hi:lo` (inclusive, `lo <= hi < 64`) of `v`.
pub const fn get_bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & mask(hi - lo + 1)
}

/// `v` with bits `hi:lo` (inclusive, `lo <= hi < 64`) replaced by `field` (masked).
pub const fn put_bits(v: u64, hi: u32, lo: u32, field: u64) -> u64 {
    let m = mask(hi - lo + 1) << lo;
    (v & !m) | ((field << lo) & m)
}

/// The low `width` bits set (`width` up to 64).
const fn mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// Bits 51:12: the 4 KiB-aligned system physical address field of every AMD-Vi table
/// pointer (device table, rings, page tables, GCR3 table).
pub const ADDR_51_12: u64 = 0x000f_ffff_ffff_f000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_helpers() {
        assert_eq!(get_bits(0xabcd_0000, 31, 16), 0xabcd);
        assert_eq!(put_bits(u64::MAX, 11, 9, 0), !0xe00);
        assert_eq!(put_bits(0, 63, 0, 5), 5);
        assert_eq!(put_bits(0, 11, 9, 0xff), 0xe00);
    }
}
