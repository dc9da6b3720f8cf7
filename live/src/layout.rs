//! How `iommu-live` uses the reserved physical range and the IOVA space.
//!
//! The range (`memmap=SIZE$BASE`, the same in both kernels) is split in two halves:
//! the first is the page pool, where every table page, the invalidation queue and the
//! KHO blob go (the new kernel's pool is the same half less the pages the blob
//! preserves); the second starts with [`BUFFERS_BYTES`] of DMA buffers at a 2 MiB
//! boundary, preserved as "guest memory" (memory another KHO client keeps, the leaf
//! targets of the preserved domain).

use crate::args::ArgError;

/// 4 KiB.
pub const PAGE: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// Bytes of the DMA buffers: 2 MiB of 4 KiB buffers, then one 2 MiB page.
pub const BUFFERS_BYTES: u64 = 2 * MIB2;

/// Offsets of the 4 KiB buffers from the buffers' base.
pub mod buf {
    /// Source of the checks' DMA reads (the CPU writes a pattern).
    pub const SRC: u64 = 0x0000;
    /// Destination of the checks' DMA writes.
    pub const DST: u64 = 0x1000;
    /// Mapped read-only.
    pub const RO: u64 = 0x2000;
    /// Behind the high IOVA.
    pub const HIGH: u64 = 0x3000;
    /// Destination of the DMA in flight across the kexec.
    pub const INFLIGHT: u64 = 0x4000;
    /// What the unpreserved device writes to (through its 1 GiB page).
    pub const OTHER: u64 = 0x5000;
    /// Mapped anew after `finish`.
    pub const NEW: u64 = 0x6000;
    /// The 2 MiB page.
    pub const BIG: u64 = 2 << 20;
}

/// IOVAs of the preserved domain and of the others.
pub mod iova {
    /// → [`super::buf::SRC`], read/write, 4 KiB.
    pub const SRC: u64 = 0x1000_0000;
    /// → [`super::buf::DST`], read/write, 4 KiB.
    pub const DST: u64 = 0x1000_1000;
    /// → [`super::buf::RO`], read-only, 4 KiB.
    pub const RO: u64 = 0x1000_2000;
    /// → [`super::buf::INFLIGHT`], read/write, 4 KiB.
    pub const INFLIGHT: u64 = 0x1000_4000;
    /// → [`super::buf::BIG`], read/write, one 2 MiB page.
    pub const BIG: u64 = 0x1020_0000;
    /// → [`super::buf::HIGH`]: a 48-bit IOVA with a non-zero index at every level of a
    /// 4-level table (9 bits per level from bit 12: indices 5, 3, 7, 9), canonical
    /// (bit 47 clear) for first-stage tables.
    pub const HIGH: u64 = (5 << 39) | (3 << 30) | (7 << 21) | (9 << 12);
    /// Base of the unpreserved domain's 1 GiB page (onto the 1 GiB frame that holds the
    /// buffers).
    pub const GIG: u64 = 0x40_0000_0000;
    /// Mapped after `finish` (→ [`super::buf::NEW`] in the adopted domain, →
    /// [`super::buf::OTHER`] in a new domain of the other device).
    pub const NEW: u64 = 0x2000_0000;
}

/// The reserved range, split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Reserved range: base.
    pub base: u64,
    /// Reserved range: bytes.
    pub size: u64,
    /// Page pool: base (= `base`).
    pub pool: u64,
    /// Page pool: bytes.
    pub pool_bytes: u64,
    /// DMA buffers: base (2 MiB aligned).
    pub buffers: u64,
    /// Base of the 1 GiB frame holding the buffers.
    pub gig: u64,
}

impl Layout {
    /// Splits `base..base+size` (page aligned, checked by the caller's parser); refuses
    /// a range too small for a pool of 64 pages and the buffers.
    pub fn new(base: u64, size: u64) -> Result<Self, ArgError> {
        let err = |p: String| ArgError {
            option: "--mem".into(),
            value: format!("{base:#x}:{size:#x}"),
            problem: p,
        };
        let end = base
            .checked_add(size)
            .ok_or_else(|| err("range wraps".into()))?;
        let half = base + size / 2;
        let buffers = half
            .checked_next_multiple_of(MIB2)
            .ok_or_else(|| err("range wraps".into()))?;
        let pool_bytes = (half - base) & !(PAGE - 1);
        if pool_bytes < 64 * PAGE || buffers.checked_add(BUFFERS_BYTES).map_or(true, |e| e > end) {
            return Err(err(format!(
                "too small: needs a pool of 64 pages and {BUFFERS_BYTES:#x} bytes of buffers \
                 at a 2 MiB boundary in the upper half"
            )));
        }
        let gig = buffers & !(GIB - 1);
        if (buffers + BUFFERS_BYTES - 1) & !(GIB - 1) != gig {
            return Err(err("the buffers straddle a 1 GiB boundary".into()));
        }
        Ok(Self {
            base,
            size,
            pool: base,
            pool_bytes,
            buffers,
            gig,
        })
    }

    /// Physical address of buffer offset `off`.
    pub fn buf(&self, off: u64) -> u64 {
        self.buffers + off
    }

    /// The device address of buffer offset `off` through the 1 GiB page.
    pub fn gig_iova(&self, off: u64) -> u64 {
        iova::GIG + (self.buf(off) - self.gig)
    }
}

/// A test pattern of 4 KiB: distinct per `seed`, no two neighbouring bytes equal.
pub fn pattern(seed: u8) -> Vec<u8> {
    (0..PAGE as u32)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 8)).wrapping_add(seed as u32 * 37 + 1) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_range_splits_into_pool_and_aligned_buffers() {
        let l = Layout::new(0x3000_0000, 64 << 20).unwrap();
        assert_eq!((l.pool, l.pool_bytes), (0x3000_0000, 32 << 20));
        assert_eq!(l.buffers, 0x3200_0000);
        assert_eq!(l.gig, 0);
        assert_eq!(l.buf(buf::BIG) % (2 << 20), 0);
        assert_eq!(l.gig_iova(buf::OTHER), 0x40_0000_0000 + 0x3200_5000);
    }

    #[test]
    fn small_or_straddling_ranges_are_refused() {
        assert!(Layout::new(0x3000_0000, 4 << 20).is_err());
        // Upper half straddles 1 GiB.
        let e = Layout::new(0x3fa0_0000, 8 << 20).unwrap_err();
        assert_eq!(e.problem, "the buffers straddle a 1 GiB boundary");
        assert!(Layout::new(u64::MAX - (64 << 20) + 1, 64 << 20).is_err());
    }

    #[test]
    fn the_high_iova_has_a_non_zero_index_at_every_level() {
        for level in 0..4 {
            assert_ne!((iova::HIGH >> (12 + 9 * level)) & 0x1ff, 0, "level {level}");
        }
        assert_eq!(iova::HIGH >> 47, 0, "canonical");
        assert_eq!(iova::BIG % (2 << 20), 0);
        assert_eq!(iova::GIG % (1 << 30), 0);
    }

    #[test]
    fn patterns_differ_by_seed() {
        assert_ne!(pattern(1), pattern(2));
        assert!(pattern(3).windows(2).all(|w| w[0] != w[1]));
    }
}
