//! VT-d register map and entry layouts: the single source of truth for VT-d bits.
//!
//! - [`regs`]: MMIO register offsets and fields (tock-registers bitfields), encodings
//!   of TTM and invalidation granularities;
//! - [`root`]: legacy and scalable-mode root and context entries;
//! - [`pasid`]: PASID directory and PASID table entries;
//! - [`pte`]: second-stage and first-stage paging entries;
//! - [`qi`]: queued-invalidation descriptors;
//! - [`fault`]: fault recording registers and fault reasons.
//!
//! Every in-memory structure is a `#[repr(C)]` zerocopy type made of little-endian
//! qwords, so it can be read from and written to physical memory as bytes. Bit `N` of
//! a structure is bit `N % 64` of qword `N / 64`. The positions come from
//! `shared/reference/vtd.md`; each layout has known-answer tests naming their source.

pub mod fault;
pub mod pasid;
pub mod pte;
pub mod qi;
pub mod regs;
pub mod root;

/// Defines a `#[repr(C)]` structure of `$n` little-endian qwords with raw accessors.
macro_rules! qword_struct {
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
                let mut s = Self::default();
                for (d, v) in s.qw.iter_mut().zip(q) {
                    *d = v.into();
                }
                s
            }
            /// The qwords (qword 0 holds bits 63:0).
            pub fn qwords(&self) -> [u64; $n] {
                let mut out = [0u64; $n];
                for (o, v) in out.iter_mut().zip(self.qw.iter()) {
                    *o = v.get();
                }
                out
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
            /// Bits `hi:lo` (inclusive, `hi - lo < 64`, both in one qword) of the structure.
            pub fn bits(&self, hi: u32, lo: u32) -> u64 {
                let q = self.qword((lo / 64) as usize);
                let s = lo % 64;
                let w = hi - lo + 1;
                let mask = if w >= 64 { u64::MAX } else { (1u64 << w) - 1 };
                (q >> s) & mask
            }
            /// Sets bits `hi:lo` (inclusive, both in one qword) to `v` (masked to the width).
            pub fn set_bits(&mut self, hi: u32, lo: u32, v: u64) {
                let i = (lo / 64) as usize;
                let s = lo % 64;
                let w = hi - lo + 1;
                let mask = if w >= 64 { u64::MAX } else { (1u64 << w) - 1 };
                let q = (self.qword(i) & !(mask << s)) | ((v & mask) << s);
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

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}[", stringify!($name))?;
                for (i, q) in self.qwords().iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{q:#018x}")?;
                }
                f.write_str("]")
            }
        }
    };
}
pub(crate) use qword_struct;

/// A mask of address bits `[12, haw)`: the bits a 4 KiB-aligned pointer may use on a
/// unit with host address width `haw` (clamped to 12..=64).
pub const fn addr_mask(haw: u32) -> u64 {
    let haw = if haw < 12 {
        12
    } else if haw > 64 {
        64
    } else {
        haw
    };
    let top = if haw == 64 {
        u64::MAX
    } else {
        (1u64 << haw) - 1
    };
    top & !0xfff
}
