//! Sparse physical memory with poison.
//!
//! [`SparseMemory`] is configured with one or more RAM ranges; every address outside them
//! is [`MemError::Unbacked`]. Inside RAM, memory is kept in 4 KiB pages that are allocated
//! on the first write, so a machine with terabytes of RAM costs only the pages that were
//! touched (the tables of a 256 GiB mapping at 2 MiB pages are a few hundred pages).
//!
//! # Poison
//!
//! A byte that was never written, or that a kexec did not preserve, holds *poison*.
//! Validity is tracked per byte: reading any poisoned byte through [`PhysMem::read`] fails
//! with [`MemError::Poisoned`] naming the first poisoned address of the access, so a table
//! walk that strays into such memory is an error, never a silent zero.
//!
//! The raw content of a poisoned byte is the pattern [`POISON_WORD`]
//! (`0xDEADBEEF_BADC0FFE`) stored little-endian and repeated through memory: the byte at
//! physical address `a` is [`poison_byte`]`(a)`, i.e. byte `a % 8` of
//! `fe 0f dc ba ef be ad de`. An aligned 64-bit raw read of poison therefore shows
//! `0xdeadbeefbadc0ffe`, which is easy to spot in dumps and snapshots.
//! [`SparseMemory::read_raw`] returns these bytes without error.
//!
//! A page whose bytes are all valid costs 4 KiB and is read and written with one copy; a
//! page with some poisoned bytes additionally holds a 512-byte validity bitmap (bit `i`
//! of the bitmap set = byte `i` of the page is valid). A page with no valid byte is not
//! stored at all.
//!
//! An access that runs outside RAM fails with [`MemError::Unbacked`] naming the first
//! address outside RAM, even if poisoned bytes come before it; a write is checked
//! before any byte changes, so a failed write changes nothing.

use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pageset::PageSet;
use iommu_core::{AlignedRange, PhysAddr};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Size of the pages memory is kept in.
pub const PAGE_SIZE: u64 = 4096;
const PAGE_BYTES: usize = PAGE_SIZE as usize;
/// Number of 64-bit words in the validity bitmap of one page (one bit per byte).
pub const VALID_WORDS: usize = PAGE_BYTES / 64;

/// The 64-bit poison pattern, stored little-endian and repeated through poisoned memory.
pub const POISON_WORD: u64 = 0xDEAD_BEEF_BADC_0FFE;

/// The raw value of a poisoned byte at physical address `addr`.
pub const fn poison_byte(addr: u64) -> u8 {
    (POISON_WORD >> ((addr & 7) * 8)) as u8
}

const fn poison_page() -> [u8; PAGE_BYTES] {
    let mut p = [0u8; PAGE_BYTES];
    let mut i = 0;
    while i < PAGE_BYTES {
        p[i] = poison_byte(i as u64);
        i += 1;
    }
    p
}

/// A whole page of poison (pages are 8-byte aligned, so the pattern is the same in every
/// page).
static POISON_PAGE: [u8; PAGE_BYTES] = poison_page();

/// The validity of one stored page, as [`SparseMemory::page`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageValidity<'a> {
    /// Every byte of the page is valid.
    All,
    /// Some bytes are poisoned: bit `i % 64` of word `i / 64` set means byte `i` is valid.
    Partial(&'a [u64; VALID_WORDS]),
}

/// A read-only view of a stored (populated) page.
#[derive(Clone, Copy, Debug)]
pub struct PageView<'a> {
    /// Physical address of the page.
    pub addr: PhysAddr,
    /// The raw bytes; poisoned bytes hold the poison pattern.
    pub data: &'a [u8; PAGE_BYTES],
    /// Which bytes are valid.
    pub validity: PageValidity<'a>,
}

struct Page {
    data: Box<[u8; PAGE_BYTES]>,
    /// `None`: every byte valid (fast path).
    valid: Option<Box<[u64; VALID_WORDS]>>,
}

impl Page {
    fn poisoned() -> Self {
        Page {
            data: Box::new(POISON_PAGE),
            valid: Some(Box::new([0; VALID_WORDS])),
        }
    }

    /// Index of the first invalid byte in `[lo, hi)`, if any.
    fn first_invalid(&self, lo: usize, hi: usize) -> Option<usize> {
        let bits = self.valid.as_deref()?;
        first_clear(bits, lo, hi)
    }

    fn set_valid(&mut self, lo: usize, hi: usize) {
        if lo == 0 && hi == PAGE_BYTES {
            self.valid = None;
            return;
        }
        if let Some(bits) = self.valid.as_deref_mut() {
            set_bits(bits, lo, hi, true);
            if bits.iter().all(|&w| w == u64::MAX) {
                self.valid = None;
            }
        }
    }

    /// Poisons `[lo, hi)`; returns whether the page still holds a valid byte.
    fn set_invalid(&mut self, lo: usize, hi: usize) -> bool {
        for (i, b) in self.data[lo..hi].iter_mut().enumerate() {
            *b = poison_byte((lo + i) as u64);
        }
        let bits = self
            .valid
            .get_or_insert_with(|| Box::new([u64::MAX; VALID_WORDS]));
        set_bits(&mut bits[..], lo, hi, false);
        bits.iter().any(|&w| w != 0)
    }
}

/// Mask of bits `[lo, hi)` of a 64-bit word, `0 <= lo < hi <= 64`.
fn word_mask(lo: usize, hi: usize) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

/// First clear bit in `[lo, hi)` of a bitmap.
fn first_clear(bits: &[u64], lo: usize, hi: usize) -> Option<usize> {
    let mut i = lo;
    while i < hi {
        let w = i / 64;
        let end = hi.min((w + 1) * 64);
        let mask = word_mask(i % 64, end - w * 64);
        let clear = !bits[w] & mask;
        if clear != 0 {
            return Some(w * 64 + clear.trailing_zeros() as usize);
        }
        i = end;
    }
    None
}

fn set_bits(bits: &mut [u64], lo: usize, hi: usize, value: bool) {
    let mut i = lo;
    while i < hi {
        let w = i / 64;
        let end = hi.min((w + 1) * 64);
        let mask = word_mask(i % 64, end - w * 64);
        if value {
            bits[w] |= mask;
        } else {
            bits[w] &= !mask;
        }
        i = end;
    }
}

/// A fast hasher for integer keys (splitmix64 finaliser), so strided keys (e.g. one page
/// frame every 2 MiB) spread over the table.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// A hash map with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

type PageMap = FastMap<u64, Page>;

/// Why a memory layout was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryConfigError {
    /// A RAM range is empty, not 4 KiB aligned, or runs past 2^64.
    BadRange {
        /// Index of the range in the list given.
        index: usize,
        /// Its base.
        base: PhysAddr,
        /// Its size.
        size: u64,
        /// What is wrong.
        error: iommu_core::addr::RangeError,
    },
    /// Two RAM ranges overlap.
    Overlap {
        /// The lower range.
        first: AlignedRange,
        /// The range that overlaps it.
        second: AlignedRange,
    },
}

impl fmt::Display for MemoryConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryConfigError::BadRange {
                index,
                base,
                size,
                error,
            } => write!(
                f,
                "RAM range {index} (base {base}, size {size:#x}) is invalid: {error}"
            ),
            MemoryConfigError::Overlap { first, second } => {
                write!(f, "RAM ranges {first} and {second} overlap")
            }
        }
    }
}

impl std::error::Error for MemoryConfigError {}

/// What [`SparseMemory::retain_pages`] (and so a kexec) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetainStats {
    /// Populated pages that were kept.
    pub kept: u64,
    /// Populated pages that were turned into poison.
    pub poisoned: u64,
}

/// Sparse physical memory with per-byte poison tracking. See the [module](self) docs.
pub struct SparseMemory {
    /// Sorted, non-overlapping, 4 KiB aligned.
    ram: Vec<AlignedRange>,
    pages: PageMap,
}

impl fmt::Debug for SparseMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SparseMemory")
            .field("ram", &self.ram)
            .field("populated_pages", &self.pages.len())
            .finish()
    }
}

impl SparseMemory {
    /// Memory with the given RAM ranges `(base, size)`; each must be non-empty and 4 KiB
    /// aligned, and no two may overlap (adjacent ranges are fine). The ranges may be given
    /// in any order; [`ram_ranges`](Self::ram_ranges) returns them sorted.
    pub fn new(ram: &[(PhysAddr, u64)]) -> Result<Self, MemoryConfigError> {
        let mut ranges = Vec::with_capacity(ram.len());
        for (index, &(base, size)) in ram.iter().enumerate() {
            let r = AlignedRange::new(base.0, size, PAGE_SIZE).map_err(|error| {
                MemoryConfigError::BadRange {
                    index,
                    base,
                    size,
                    error,
                }
            })?;
            ranges.push(r);
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[0].overlaps(w[1]) {
                return Err(MemoryConfigError::Overlap {
                    first: w[0],
                    second: w[1],
                });
            }
        }
        Ok(Self {
            ram: ranges,
            pages: PageMap::default(),
        })
    }

    /// The RAM ranges, sorted by address.
    pub fn ram_ranges(&self) -> &[AlignedRange] {
        &self.ram
    }

    /// Checks that `[addr, addr + len)` lies entirely in RAM; the error names the first
    /// address that does not (or the overflow). A zero-length access is always fine.
    pub fn check_backed(&self, addr: PhysAddr, len: u64) -> Result<(), MemError> {
        if len == 0 {
            return Ok(());
        }
        let last = addr
            .0
            .checked_add(len - 1)
            .ok_or(MemError::Overflow { addr, len })?;
        let mut cur = addr.0;
        // Index of the first range whose last address is >= cur.
        let mut i = self.ram.partition_point(|r| r.last() < cur);
        loop {
            match self.ram.get(i) {
                Some(r) if r.contains(cur) => {
                    if r.last() >= last {
                        return Ok(());
                    }
                    cur = r.last() + 1;
                    i += 1;
                }
                _ => {
                    return Err(MemError::Unbacked {
                        addr: PhysAddr(cur),
                    })
                }
            }
        }
    }

    /// Whether the byte at `addr` is in RAM.
    pub fn is_backed(&self, addr: PhysAddr) -> bool {
        self.check_backed(addr, 1).is_ok()
    }

    /// Reads raw bytes: poisoned bytes come back as the poison pattern, without error.
    /// Fails only if part of the range is not RAM (or overflows).
    pub fn read_raw(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.check_backed(addr, buf.len() as u64)?;
        for_each_chunk(addr.0, buf.len(), |pfn, lo, hi, off| {
            let dst = &mut buf[off..off + (hi - lo)];
            match self.pages.get(&pfn) {
                Some(p) => dst.copy_from_slice(&p.data[lo..hi]),
                None => dst.copy_from_slice(&POISON_PAGE[lo..hi]),
            }
            Ok(())
        })
    }

    /// The first poisoned address in `[addr, addr + len)`, or `None` if every byte is
    /// valid. Fails if part of the range is not RAM.
    pub fn first_poisoned(&self, addr: PhysAddr, len: u64) -> Result<Option<PhysAddr>, MemError> {
        self.check_backed(addr, len)?;
        let mut found = None;
        let len = usize::try_from(len).map_err(|_| MemError::Overflow { addr, len })?;
        // An error return stops the walk at the first poisoned byte.
        let _ = for_each_chunk(addr.0, len, |pfn, lo, hi, _| {
            let bad = match self.pages.get(&pfn) {
                None => Some(lo),
                Some(p) => p.first_invalid(lo, hi),
            };
            match bad {
                Some(b) => {
                    let pa = PhysAddr(pfn * PAGE_SIZE + b as u64);
                    found = Some(pa);
                    Err(MemError::Poisoned { addr: pa })
                }
                None => Ok(()),
            }
        });
        Ok(found)
    }

    /// Turns `[addr, addr + len)` into poison. Fails, changing nothing, if part of the
    /// range is not RAM.
    pub fn poison_range(&mut self, addr: PhysAddr, len: u64) -> Result<(), MemError> {
        self.check_backed(addr, len)?;
        let len = usize::try_from(len).map_err(|_| MemError::Overflow { addr, len })?;
        let pages = &mut self.pages;
        for_each_chunk(addr.0, len, |pfn, lo, hi, _| {
            let keep = match pages.get_mut(&pfn) {
                Some(p) => p.set_invalid(lo, hi),
                None => return Ok(()),
            };
            if !keep {
                pages.remove(&pfn);
            }
            Ok(())
        })
    }

    /// Keeps the populated pages for which `keep(page address)` is true and turns every
    /// other page into poison. Costs time in the number of populated pages, not the size
    /// of RAM.
    pub fn retain_pages(&mut self, mut keep: impl FnMut(PhysAddr) -> bool) -> RetainStats {
        let mut stats = RetainStats::default();
        self.pages.retain(|&pfn, _| {
            let k = keep(PhysAddr(pfn * PAGE_SIZE));
            if k {
                stats.kept += 1;
            } else {
                stats.poisoned += 1;
            }
            k
        });
        stats
    }

    /// Turns every page that is not in `preserved` into poison, as a kexec does to the
    /// memory the old kernel did not hand over.
    pub fn poison_except(&mut self, preserved: &PageSet) -> RetainStats {
        self.retain_pages(|pa| preserved.contains(pa))
    }

    /// Number of populated pages (pages holding at least one valid byte).
    pub fn populated_pages(&self) -> usize {
        self.pages.len()
    }

    /// The populated pages as maximal runs of contiguous pages, sorted by address.
    pub fn populated_runs(&self) -> Vec<AlignedRange> {
        let mut pfns: Vec<u64> = self.pages.keys().copied().collect();
        pfns.sort_unstable();
        let mut runs = Vec::new();
        let mut iter = pfns.into_iter();
        let Some(first) = iter.next() else {
            return runs;
        };
        let (mut start, mut end) = (first, first);
        let mut push = |s: u64, e: u64| {
            // A run of page frames below 2^52 always fits in 64 bits.
            if let Ok(r) = AlignedRange::new(s * PAGE_SIZE, (e - s + 1) * PAGE_SIZE, PAGE_SIZE) {
                runs.push(r);
            }
        };
        for pfn in iter {
            if pfn == end + 1 {
                end = pfn;
            } else {
                push(start, end);
                start = pfn;
                end = pfn;
            }
        }
        push(start, end);
        runs
    }

    /// The stored page at `addr` (rounded down to its page), or `None` if the page holds
    /// no valid byte.
    pub fn page(&self, addr: PhysAddr) -> Option<PageView<'_>> {
        let pfn = addr.0 / PAGE_SIZE;
        self.pages.get(&pfn).map(|p| PageView {
            addr: PhysAddr(pfn * PAGE_SIZE),
            data: &p.data,
            validity: match p.valid.as_deref() {
                None => PageValidity::All,
                Some(b) => PageValidity::Partial(b),
            },
        })
    }

    /// Replaces the page at `addr` (4 KiB aligned, in RAM) with `data` and the given
    /// validity (`None`: every byte valid). Invalid bytes are set to the poison pattern
    /// whatever `data` holds there; a page with no valid byte is dropped. Used to load
    /// snapshots.
    pub fn restore_page(
        &mut self,
        addr: PhysAddr,
        data: &[u8; PAGE_BYTES],
        valid: Option<&[u64; VALID_WORDS]>,
    ) -> Result<(), MemError> {
        if !addr.is_aligned(PAGE_SIZE) {
            return Err(MemError::Unbacked { addr });
        }
        self.check_backed(addr, PAGE_SIZE)?;
        let pfn = addr.0 / PAGE_SIZE;
        let mut page = Page {
            data: Box::new(*data),
            valid: None,
        };
        if let Some(bits) = valid {
            if bits.iter().all(|&w| w == 0) {
                self.pages.remove(&pfn);
                return Ok(());
            }
            if bits.iter().any(|&w| w != u64::MAX) {
                for (i, b) in page.data.iter_mut().enumerate() {
                    if bits[i / 64] >> (i % 64) & 1 == 0 {
                        *b = poison_byte(i as u64);
                    }
                }
                page.valid = Some(Box::new(*bits));
            }
        }
        self.pages.insert(pfn, page);
        Ok(())
    }
}

/// Calls `f(pfn, lo, hi, buf_offset)` for each page-sized piece of `[addr, addr + len)`;
/// the caller has checked that the range does not overflow.
fn for_each_chunk(
    addr: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize, usize) -> Result<(), MemError>,
) -> Result<(), MemError> {
    let mut off = 0usize;
    while off < len {
        let a = addr + off as u64;
        let lo = (a % PAGE_SIZE) as usize;
        let n = (PAGE_BYTES - lo).min(len - off);
        f(a / PAGE_SIZE, lo, lo + n, off)?;
        off += n;
    }
    Ok(())
}

impl PhysMem for SparseMemory {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.check_backed(addr, buf.len() as u64)?;
        for_each_chunk(addr.0, buf.len(), |pfn, lo, hi, off| {
            let page = self.pages.get(&pfn).ok_or(MemError::Poisoned {
                addr: PhysAddr(pfn * PAGE_SIZE + lo as u64),
            })?;
            if let Some(bad) = page.first_invalid(lo, hi) {
                return Err(MemError::Poisoned {
                    addr: PhysAddr(pfn * PAGE_SIZE + bad as u64),
                });
            }
            buf[off..off + (hi - lo)].copy_from_slice(&page.data[lo..hi]);
            Ok(())
        })
    }

    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        // Check first: a failed write changes nothing.
        self.check_backed(addr, data.len() as u64)?;
        let pages = &mut self.pages;
        for_each_chunk(addr.0, data.len(), |pfn, lo, hi, off| {
            let page = pages.entry(pfn).or_insert_with(Page::poisoned);
            page.data[lo..hi].copy_from_slice(&data[off..off + (hi - lo)]);
            page.set_valid(lo, hi);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_helpers() {
        assert_eq!(word_mask(0, 64), u64::MAX);
        assert_eq!(word_mask(3, 5), 0b11000);
        let mut bits = [0u64; 4];
        set_bits(&mut bits, 60, 130, true);
        assert_eq!(bits[0], 0xf << 60);
        assert_eq!(bits[1], u64::MAX);
        assert_eq!(bits[2], 0b11);
        assert_eq!(first_clear(&bits, 60, 130), None);
        assert_eq!(first_clear(&bits, 59, 130), Some(59));
        assert_eq!(first_clear(&bits, 61, 200), Some(130));
    }

    #[test]
    fn poison_pattern_is_the_word() {
        let mut w = [0u8; 8];
        for (i, b) in w.iter_mut().enumerate() {
            *b = poison_byte(0x1000 + i as u64);
        }
        assert_eq!(u64::from_le_bytes(w), POISON_WORD);
    }
}
