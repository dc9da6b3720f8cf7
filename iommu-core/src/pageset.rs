//! Sets of preserved physical pages, modelled on Linux KHO's radix tree.
//!
//! A [`PageSet`] holds *blocks*: `2^order` contiguous 4 KiB pages starting at a physical
//! address that is a multiple of the block size (a naturally aligned block, what Linux
//! calls a folio of that order). It answers the questions the handover asks: is this page
//! preserved, which pages does a set hold that another does not, is every page a table
//! walk found preserved.
//!
//! # How it mirrors Linux
//!
//! Linux (`kernel/liveupdate/kexec_handover.c`, ABI in
//! `include/linux/kho/abi/kexec_handover.h`, "kho-v2") tracks preserved memory in one
//! radix tree for all orders (`struct kho_radix_tree`):
//!
//! - each block becomes a single 64-bit *key* (`kho_radix_encode_key`): an *order bit* at
//!   position `52 - order` (`KHO_ORDER_0_LOG2 = 64 - PAGE_SHIFT = 52`) ORed with the
//!   address shifted right by `12 + order`. The key is unique per (address, order) and
//!   the order is recovered from the position of the highest set bit
//!   ([`radix_key`], [`radix_key_decode`]);
//! - the leaves (`struct kho_radix_leaf`) are one 4 KiB page of bits each, 32768 bits
//!   (`KHO_BITMAP_SIZE_LOG2 = 15`); bit `key % 32768` of leaf `key / 32768` is set when
//!   the block is preserved. For order 0 one leaf covers 32768 pages = 128 MiB, for
//!   order 9 (2 MiB blocks) 64 GiB;
//! - above the leaves sit five levels of 512-entry tables of physical addresses
//!   (`struct kho_radix_node`, `KHO_TABLE_SIZE_LOG2 = 9`, `KHO_TREE_MAX_DEPTH = 6`).
//!
//! Here the leaves are the same 32768-bit bitmaps with the same key encoding; the five
//! table levels are replaced in memory by an ordered map from leaf index (`key >> 15`)
//! to leaf, which is what a sparse radix tree is for. The serialised form, with real
//! 512-entry table pages in physical memory, is written and read by
//! [`crate::kho::radix`].
//!
//! An older Linux ABI ("kho-v1", `kernel/kexec_handover.c` before the move to
//! `kernel/liveupdate/`) kept one xarray of bitmaps *per order* (`struct kho_mem_track`
//! / `struct kho_mem_phys`, 512-byte `struct kho_mem_phys_bits`) and serialised them as
//! a linked list of `struct khoser_mem_chunk` pages. The single keyed tree of kho-v2 is
//! what this module follows; the per-order view survives in the iteration order
//! (each order's keys form one contiguous key range).
//!
//! # Rules
//!
//! - [`PageSet::insert`] refuses a block whose address is not a multiple of its size
//!   ([`PageSetError::Misaligned`]), whose order exceeds [`MAX_ORDER`]
//!   ([`PageSetError::OrderTooLarge`]), or which shares any 4 KiB page with a block
//!   already in the set, including the very same block ([`PageSetError::Overlap`]). The
//!   blocks of a set therefore never overlap, and every 4 KiB page is covered by at most
//!   one block.
//! - [`PageSet::remove`] removes exactly one block that was inserted with the same
//!   address and order (as Linux's `kho_unpreserve_folio` requires); anything else is
//!   [`PageSetError::NotPresent`]. To take away arbitrary pages, use
//!   [`PageSet::difference`], which splits blocks as needed.
//! - [`PageSet::union`], [`PageSet::difference`], [`PageSet::intersection`] and
//!   [`PageSet::is_subset`] work on the pages covered; blocks are split into smaller
//!   aligned blocks where only part of them survives.
//! - Equality (`==`) compares blocks; [`PageSet::same_pages`] compares covered pages.

use crate::addr::PhysAddr;
use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

/// log2 of the base page size (4 KiB), Linux `PAGE_SHIFT` on x86-64 and 4K-granule arm64.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size, 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Largest block order accepted: order 18 is 1 GiB, the largest page an x86 IOMMU maps.
///
/// Linux's key encoding could carry larger orders, and Linux refuses to restore a folio
/// above `MAX_PAGE_ORDER` (10 by default on x86-64). This model allows up to 1 GiB so a
/// block can mirror any IOMMU leaf; a serialised tree holding a larger order is refused
/// when it is read back.
pub const MAX_ORDER: u32 = 18;

/// Position of the order bit for an order-0 block: Linux `KHO_ORDER_0_LOG2`
/// (`64 - PAGE_SHIFT`).
pub const ORDER_0_LOG2: u32 = 64 - PAGE_SHIFT;

/// log2 of the number of bits in a leaf: Linux `KHO_BITMAP_SIZE_LOG2`
/// (`PAGE_SHIFT + log2(8)`).
pub const LEAF_BITS_LOG2: u32 = PAGE_SHIFT + 3;
/// Bits in a leaf bitmap (32768): one 4 KiB page of bits.
pub const LEAF_BITS: u64 = 1 << LEAF_BITS_LOG2;
/// 64-bit words in a leaf bitmap (512).
pub const LEAF_WORDS: usize = (LEAF_BITS / 64) as usize;

/// A leaf bitmap: Linux `struct kho_radix_leaf`, 512 words whose bit `i % 64` of word
/// `i / 64` is bit `i` of the leaf (the layout of a Linux `DECLARE_BITMAP` on a 64-bit
/// little-endian machine).
pub type Leaf = [u64; LEAF_WORDS];

/// The radix key of a block: Linux `kho_radix_encode_key`.
///
/// `(1 << (52 - order)) | (addr >> (12 + order))`. Bits of `addr` below the block size
/// are discarded; `order` must be at most [`MAX_ORDER`] (larger orders are not encoded by
/// this model and give a meaningless key).
pub const fn radix_key(addr: PhysAddr, order: u32) -> u64 {
    (1u64 << (ORDER_0_LOG2 - order)) | (addr.0 >> (PAGE_SHIFT + order))
}

/// Decodes a radix key into (block address, order): Linux `kho_radix_decode_key`.
///
/// Returns `None` for keys that encode no block: zero, or an order bit above bit 52
/// (which would mean a negative order). Orders above [`MAX_ORDER`] are decoded; callers
/// check them.
pub const fn radix_key_decode(key: u64) -> Option<(PhysAddr, u32)> {
    if key == 0 {
        return None;
    }
    let msb = 63 - key.leading_zeros();
    if msb > ORDER_0_LOG2 {
        return None;
    }
    let order = ORDER_0_LOG2 - msb;
    let shifted = key & ((1u64 << msb) - 1);
    // msb + 12 + order == 64, so the shift never loses a set bit; only for order 52
    // (msb 0, shifted 0) would it be a 64-bit shift.
    let addr = match shifted.checked_shl(PAGE_SHIFT + order) {
        Some(a) => a,
        None => 0,
    };
    Some((PhysAddr(addr), order))
}

/// Bytes in a block of `order`.
const fn block_bytes(order: u32) -> u64 {
    1u64 << (PAGE_SHIFT + order)
}

/// Why a [`PageSet`] operation was refused. The set is unchanged on error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSetError {
    /// The order is above [`MAX_ORDER`].
    OrderTooLarge {
        /// Address of the refused block.
        addr: PhysAddr,
        /// Requested order.
        order: u32,
        /// Largest order accepted.
        max: u32,
    },
    /// The address is not a multiple of the block size `4 KiB << order`.
    Misaligned {
        /// Address of the refused block.
        addr: PhysAddr,
        /// Requested order.
        order: u32,
    },
    /// The block shares a page with a block already in the set (possibly the same one).
    Overlap {
        /// Address of the refused block.
        addr: PhysAddr,
        /// Order of the refused block.
        order: u32,
        /// Address of the block already in the set.
        existing: PhysAddr,
        /// Order of the block already in the set.
        existing_order: u32,
    },
    /// No block with exactly this address and order is in the set.
    NotPresent {
        /// Address asked for.
        addr: PhysAddr,
        /// Order asked for.
        order: u32,
    },
    /// A page range does not start on a 4 KiB boundary or runs past the end of the
    /// 64-bit address space.
    BadRange {
        /// First address of the range.
        start: PhysAddr,
        /// Number of 4 KiB pages asked for.
        pages: u64,
    },
}

impl fmt::Display for PageSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PageSetError::OrderTooLarge { addr, order, max } => write!(
                f,
                "block at {addr} has order {order}, above the largest supported order {max}"
            ),
            PageSetError::Misaligned { addr, order } => write!(
                f,
                "block at {addr} of order {order} is not aligned to its size {:#x}",
                block_bytes(order)
            ),
            PageSetError::Overlap {
                addr,
                order,
                existing,
                existing_order,
            } if addr == existing && order == existing_order => {
                write!(f, "block at {addr} of order {order} is already in the set")
            }
            PageSetError::Overlap {
                addr,
                order,
                existing,
                existing_order,
            } => write!(
                f,
                "block at {addr} of order {order} overlaps the block at {existing} of order \
                 {existing_order} already in the set"
            ),
            PageSetError::NotPresent { addr, order } => {
                write!(f, "no block at {addr} of order {order} in the set")
            }
            PageSetError::BadRange { start, pages } => write!(
                f,
                "page range at {start} of {pages:#x} pages is not 4 KiB aligned or overflows"
            ),
        }
    }
}

/// A set of preserved physical pages, stored as naturally aligned blocks of
/// `2^order` pages in KHO radix-tree leaves. See the [module documentation](self).
#[derive(Clone, Default)]
pub struct PageSet {
    /// Leaf index (`key >> 15`) to leaf bitmap. Never holds an all-zero leaf.
    leaves: BTreeMap<u64, LeafBits>,
    /// Number of 4 KiB pages covered.
    pages: u64,
    /// Number of blocks.
    blocks: u64,
    /// Bit `o` is set when the set may hold a block of order `o`: set on every insert,
    /// not cleared on remove, so a superset of the orders present. Lookups probe only
    /// these orders; an order with no block could never answer them anyway.
    orders: u32,
}

/// Equality compares blocks (the leaves), not the order hint.
impl PartialEq for PageSet {
    fn eq(&self, other: &Self) -> bool {
        self.pages == other.pages && self.blocks == other.blocks && self.leaves == other.leaves
    }
}

impl Eq for PageSet {}

/// Mask of orders `lo..=hi` in an order bitmask (`hi <= MAX_ORDER`); empty if `lo > hi`.
const fn order_mask(lo: u32, hi: u32) -> u32 {
    if lo > hi {
        0
    } else {
        ((1u32 << (hi + 1)) - 1) & !((1u32 << lo) - 1)
    }
}

/// The orders whose bits are set in `mask`, ascending.
fn mask_orders(mut mask: u32) -> impl Iterator<Item = u32> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let o = mask.trailing_zeros();
        mask &= mask - 1;
        Some(o)
    })
}

/// One leaf bitmap in memory: only the window of words `[first, first + words.len())`
/// is stored, every word outside it is zero. A set of a few blocks thus costs a few
/// words instead of a whole 4 KiB page per leaf (a fresh page is also a page fault the
/// first time it is written); a leaf whose blocks spread over it grows to all
/// [`LEAF_WORDS`] words, the plain bitmap.
#[derive(Clone, Debug)]
struct LeafBits {
    /// Index of the first stored word.
    first: usize,
    /// The one stored word while `words` is empty (a window of one word needs no
    /// allocation); zero and unused otherwise.
    one: u64,
    /// The stored words when the window is wider than one word;
    /// `first + words.len() <= LEAF_WORDS`.
    words: Vec<u64>,
}

impl LeafBits {
    /// An all-zero leaf, stores nothing.
    const fn new() -> Self {
        LeafBits {
            first: 0,
            one: 0,
            words: Vec::new(),
        }
    }

    /// The stored words, `[first, end())`.
    fn stored(&self) -> &[u64] {
        if self.words.is_empty() {
            core::slice::from_ref(&self.one)
        } else {
            &self.words
        }
    }

    /// Index one past the last stored word.
    fn end(&self) -> usize {
        self.first + self.stored().len()
    }

    /// Word `w` (< [`LEAF_WORDS`]).
    fn word(&self, w: usize) -> u64 {
        w.checked_sub(self.first)
            .and_then(|i| self.stored().get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Word `w` (< [`LEAF_WORDS`]) for writing, growing the window to hold it. The
    /// window at least doubles when it grows, so filling a leaf in order costs amortised
    /// constant time per word.
    fn word_mut(&mut self, w: usize) -> &mut u64 {
        if self.words.is_empty() {
            if self.one == 0 {
                // Nothing stored yet (or only zero): the window moves to `w`.
                self.first = w;
            }
            if w == self.first {
                return &mut self.one;
            }
            self.words.push(core::mem::take(&mut self.one));
        }
        if w < self.first || w >= self.end() {
            let len = self.words.len();
            let (lo, hi) = if w < self.first {
                let lo = w.min(self.first.saturating_sub(len));
                (lo, self.end())
            } else {
                (self.first, (w + 1).max(self.end() + len).min(LEAF_WORDS))
            };
            let mut words = Vec::with_capacity(hi - lo);
            words.resize(self.first - lo, 0);
            words.extend_from_slice(&self.words);
            words.resize(hi - lo, 0);
            self.first = lo;
            self.words = words;
        }
        &mut self.words[w - self.first]
    }

    /// Whether no bit is set.
    fn is_zero(&self) -> bool {
        self.stored().iter().all(|&w| w == 0)
    }

    /// The whole bitmap: borrowed when every word is stored, else copied out.
    fn full(&self) -> Cow<'_, Leaf> {
        match <&Leaf>::try_from(self.stored()) {
            Ok(leaf) => Cow::Borrowed(leaf),
            Err(_) => {
                let mut leaf = [0u64; LEAF_WORDS];
                leaf[self.first..self.end()].copy_from_slice(self.stored());
                Cow::Owned(leaf)
            }
        }
    }

    /// Number of set bits in `[s, e)` (bit indices within the leaf).
    fn count_bits(&self, s: usize, e: usize) -> u64 {
        let off = self.first * 64;
        let (s, e) = (s.max(off), e.min(self.end() * 64));
        if s >= e {
            return 0;
        }
        count_bits(self.stored(), s - off, e - off)
    }

    /// First set bit in `[s, e)` (bit indices within the leaf).
    fn first_bit(&self, s: usize, e: usize) -> Option<usize> {
        let off = self.first * 64;
        let (s, e) = (s.max(off), e.min(self.end() * 64));
        if s >= e {
            return None;
        }
        first_bit(self.stored(), s - off, e - off).map(|b| b + off)
    }
}

/// Leaves are equal when their bitmaps are, however much of them is stored.
impl PartialEq for LeafBits {
    fn eq(&self, other: &Self) -> bool {
        let lo = self.first.min(other.first);
        let hi = self.end().max(other.end());
        (lo..hi).all(|w| self.word(w) == other.word(w))
    }
}

impl PageSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            leaves: BTreeMap::new(),
            pages: 0,
            blocks: 0,
            orders: 0,
        }
    }

    /// The orders in `lo..=hi` that may hold a block, ascending.
    fn orders_between(&self, lo: u32, hi: u32) -> impl Iterator<Item = u32> {
        mask_orders(self.orders & order_mask(lo, hi))
    }

    /// The orders below `order` (at most [`MAX_ORDER`]) that may hold a block, ascending.
    fn orders_below(&self, order: u32) -> impl Iterator<Item = u32> {
        mask_orders(self.orders & ((1u32 << order) - 1))
    }

    /// Whether the set holds no page.
    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Number of 4 KiB pages covered.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.blocks
    }

    /// Checks order and alignment of a block.
    fn check_block(addr: PhysAddr, order: u32) -> Result<(), PageSetError> {
        if order > MAX_ORDER {
            return Err(PageSetError::OrderTooLarge {
                addr,
                order,
                max: MAX_ORDER,
            });
        }
        if !addr.is_aligned(block_bytes(order)) {
            return Err(PageSetError::Misaligned { addr, order });
        }
        Ok(())
    }

    fn test_key(&self, key: u64) -> bool {
        let bit = key % LEAF_BITS;
        self.leaves
            .get(&(key >> LEAF_BITS_LOG2))
            .is_some_and(|leaf| leaf.word((bit / 64) as usize) & (1 << (bit % 64)) != 0)
    }

    fn set_key(&mut self, key: u64) {
        let bit = key % LEAF_BITS;
        let leaf = self
            .leaves
            .entry(key >> LEAF_BITS_LOG2)
            .or_insert_with(LeafBits::new);
        *leaf.word_mut((bit / 64) as usize) |= 1 << (bit % 64);
    }

    /// Clears a key; returns whether it was set. Drops the leaf when it becomes empty.
    fn clear_key(&mut self, key: u64) -> bool {
        let idx = key >> LEAF_BITS_LOG2;
        let bit = key % LEAF_BITS;
        let Some(leaf) = self.leaves.get_mut(&idx) else {
            return false;
        };
        let w = (bit / 64) as usize;
        let mask = 1u64 << (bit % 64);
        if leaf.word(w) & mask == 0 {
            return false;
        }
        // The bit is set, so the word is stored: this does not grow the window.
        *leaf.word_mut(w) &= !mask;
        if leaf.is_zero() {
            self.leaves.remove(&idx);
        }
        true
    }

    /// Calls `f(leaf_base_key, leaf, first_bit, end_bit)` for each existing leaf that
    /// intersects the key range `[lo, lo + count)`, in key order; stops when `f` returns
    /// `false`. `lo + count` never exceeds 2^53 for keys of valid blocks.
    fn for_key_range(
        &self,
        lo: u64,
        count: u64,
        mut f: impl FnMut(u64, &LeafBits, usize, usize) -> bool,
    ) {
        if count == 0 {
            return;
        }
        let hi = lo + count; // exclusive
        let first_leaf = lo >> LEAF_BITS_LOG2;
        let last_leaf = (hi - 1) >> LEAF_BITS_LOG2;
        for (&idx, leaf) in self.leaves.range(first_leaf..=last_leaf) {
            let base = idx << LEAF_BITS_LOG2;
            let s = (lo.max(base) - base) as usize;
            let e = (hi.min(base + LEAF_BITS) - base) as usize;
            if !f(base, leaf, s, e) {
                return;
            }
        }
    }

    /// Number of set keys in `[lo, lo + count)`.
    fn count_keys(&self, lo: u64, count: u64) -> u64 {
        let mut n = 0u64;
        self.for_key_range(lo, count, |_, leaf, s, e| {
            n += leaf.count_bits(s, e);
            true
        });
        n
    }

    /// First set key in `[lo, lo + count)`.
    fn first_key(&self, lo: u64, count: u64) -> Option<u64> {
        let mut found = None;
        self.for_key_range(lo, count, |base, leaf, s, e| match leaf.first_bit(s, e) {
            Some(b) => {
                found = Some(base + b as u64);
                false
            }
            None => true,
        });
        found
    }

    /// The block of the set that covers the 4 KiB page containing `addr`, if any.
    pub fn containing_block(&self, addr: PhysAddr) -> Option<(PhysAddr, u32)> {
        self.orders_between(0, MAX_ORDER).find_map(|order| {
            let base = addr.align_down(block_bytes(order));
            self.test_key(radix_key(base, order))
                .then_some((base, order))
        })
    }

    /// Whether the 4 KiB page containing `addr` is covered by some block.
    pub fn contains(&self, addr: PhysAddr) -> bool {
        self.containing_block(addr).is_some()
    }

    /// Whether exactly this block (same address and order) is in the set.
    pub fn contains_block(&self, addr: PhysAddr, order: u32) -> bool {
        Self::check_block(addr, order).is_ok() && self.test_key(radix_key(addr, order))
    }

    /// Some block of the set sharing a page with the (valid) block `addr`/`order`.
    fn overlapping_block(&self, addr: PhysAddr, order: u32) -> Option<(PhysAddr, u32)> {
        // A block of the same or a larger order that contains the new block...
        for o in self.orders_between(order, MAX_ORDER) {
            let base = addr.align_down(block_bytes(o));
            if self.test_key(radix_key(base, o)) {
                return Some((base, o));
            }
        }
        // ...or a smaller block inside it: the keys of order-o blocks inside the new
        // block form the contiguous range starting at the key of its first page.
        for o in self.orders_below(order) {
            if let Some(k) = self.first_key(radix_key(addr, o), 1 << (order - o)) {
                return radix_key_decode(k);
            }
        }
        None
    }

    /// Number of 4 KiB pages of the (valid) block `addr`/`order` that the set covers.
    fn covered_pages(&self, addr: PhysAddr, order: u32) -> u64 {
        for o in self.orders_between(order, MAX_ORDER) {
            if self.test_key(radix_key(addr.align_down(block_bytes(o)), o)) {
                return 1 << order;
            }
        }
        self.orders_below(order)
            .map(|o| self.count_keys(radix_key(addr, o), 1 << (order - o)) << o)
            .sum()
    }

    /// Inserts a block of `2^order` pages at `addr`.
    ///
    /// Refused, leaving the set unchanged, when `order > MAX_ORDER`, when `addr` is not
    /// a multiple of `4 KiB << order`, or when any page of the block is already covered
    /// (the error names one block it overlaps).
    pub fn insert(&mut self, addr: PhysAddr, order: u32) -> Result<(), PageSetError> {
        self.check_insert(addr, order)?;
        self.insert_unchecked(addr, order);
        Ok(())
    }

    /// Whether [`insert`](PageSet::insert) of this block would succeed, and its error
    /// if not.
    fn check_insert(&self, addr: PhysAddr, order: u32) -> Result<(), PageSetError> {
        Self::check_block(addr, order)?;
        match self.overlapping_block(addr, order) {
            Some((existing, existing_order)) => Err(PageSetError::Overlap {
                addr,
                order,
                existing,
                existing_order,
            }),
            None => Ok(()),
        }
    }

    /// Inserts `pages` contiguous 4 KiB pages starting at `start`, split into the largest
    /// naturally aligned blocks (the split Linux's `kho_preserve_pages` makes, capped at
    /// [`MAX_ORDER`]).
    ///
    /// All or nothing: if any page is already covered, nothing is inserted and the error
    /// names the first overlap. `pages == 0` inserts nothing.
    pub fn insert_range(&mut self, start: PhysAddr, pages: u64) -> Result<(), PageSetError> {
        let blocks = range_blocks(start, pages)?;
        for (addr, order) in blocks.clone() {
            if let Some((existing, existing_order)) = self.overlapping_block(addr, order) {
                return Err(PageSetError::Overlap {
                    addr,
                    order,
                    existing,
                    existing_order,
                });
            }
        }
        for (addr, order) in blocks {
            self.insert_unchecked(addr, order);
        }
        Ok(())
    }

    /// Inserts the blocks whose radix keys are the set bits of word `word` of leaf
    /// `leaf` (the serialised form: key `leaf << 15 | word * 64 + b` for each set bit
    /// `b` of `bits`): what inserting each block with [`insert`](PageSet::insert) does,
    /// in one step. The keys of one word have one order and their blocks lie in one
    /// aligned range of `64 << order` pages, so when no block of another order lies in
    /// that range (a map read in key order, largest order first, never has one) the
    /// word goes in at once; otherwise each block is checked on its own.
    ///
    /// Refused, leaving the set unchanged, when a key encodes no block or an order above
    /// [`MAX_ORDER`] (`Misaligned`/`OrderTooLarge` of the first such key's block; a key
    /// of no block, only possible in leaf 0, is `BadRange`), or when a block overlaps
    /// one of the set (the first, in key order, named).
    pub fn insert_leaf_word(
        &mut self,
        leaf: u64,
        word: usize,
        bits: u64,
    ) -> Result<(), PageSetError> {
        if bits == 0 {
            return Ok(());
        }
        let bad = PageSetError::BadRange {
            start: PhysAddr(0),
            pages: 0,
        };
        if word >= LEAF_WORDS || leaf >= 1 << (64 - LEAF_BITS_LOG2) {
            return Err(bad);
        }
        let base = (leaf << LEAF_BITS_LOG2) | (word as u64 * 64);
        let key_of = |b: u32| base | u64::from(b);
        // Every key of a leaf above leaf 0 has its highest bit above bit 14, so one
        // order; in leaf 0 each key is checked (all encode orders above 37 or none).
        let decode = |k: u64| radix_key_decode(k).ok_or(bad);
        let (first, order) = decode(key_of(bits.trailing_zeros()))?;
        Self::check_block(first, order)?;
        let uniform = leaf != 0;
        // The aligned range of the word's 64 possible blocks.
        let (start, _) = decode(key_of(0)).unwrap_or((first, order));
        let span_order = order + 6;
        let clean = uniform
            && mask_orders(self.orders & !(1 << order)).all(|o| {
                if o > order {
                    // Blocks of order `o` meeting the range: one if it fits in one,
                    // else the range's `2^(span_order - o)` blocks.
                    let count = if o >= span_order {
                        1
                    } else {
                        1 << (span_order - o)
                    };
                    let lo = radix_key(start.align_down(block_bytes(o)), o);
                    self.first_key(lo, count).is_none()
                } else {
                    self.first_key(radix_key(start, o), 1 << (span_order - o))
                        .is_none()
                }
            });
        if clean {
            let pages = u64::from(bits.count_ones()) << order;
            let leaf_bits = self.leaves.entry(leaf).or_insert_with(LeafBits::new);
            let w = leaf_bits.word_mut(word);
            if *w & bits != 0 {
                // The same block twice.
                let b = (*w & bits).trailing_zeros();
                let (addr, order) = decode(key_of(b))?;
                return Err(PageSetError::Overlap {
                    addr,
                    order,
                    existing: addr,
                    existing_order: order,
                });
            }
            *w |= bits;
            self.orders |= 1 << order;
            self.pages += pages;
            self.blocks += u64::from(bits.count_ones());
            return Ok(());
        }
        // Block by block: check them all, then insert them all.
        let mut rest = bits;
        while rest != 0 {
            let b = rest.trailing_zeros();
            rest &= rest - 1;
            let (addr, order) = decode(key_of(b))?;
            self.check_insert(addr, order)?;
        }
        let mut rest = bits;
        while rest != 0 {
            let b = rest.trailing_zeros();
            rest &= rest - 1;
            if let Some((addr, order)) = radix_key_decode(key_of(b)) {
                self.insert_unchecked(addr, order);
            }
        }
        Ok(())
    }

    /// Removes the block inserted with exactly this address and order.
    pub fn remove(&mut self, addr: PhysAddr, order: u32) -> Result<(), PageSetError> {
        Self::check_block(addr, order)?;
        if !self.clear_key(radix_key(addr, order)) {
            return Err(PageSetError::NotPresent { addr, order });
        }
        self.pages -= 1 << order;
        self.blocks -= 1;
        Ok(())
    }

    /// Inserts a block known to be valid and disjoint from the set.
    fn insert_unchecked(&mut self, addr: PhysAddr, order: u32) {
        self.set_key(radix_key(addr, order));
        self.orders |= 1 << order;
        self.pages += 1 << order;
        self.blocks += 1;
    }

    /// Appends to `out` the parts of block `addr`/`order` that `self` covers
    /// (`covered == true`) or does not cover (`covered == false`), as the largest aligned
    /// blocks: a block is split in halves only where `self` covers part of it. Parts come
    /// out in address order.
    fn split_by(&self, addr: PhysAddr, order: u32, covered: bool, out: &mut Vec<(PhysAddr, u32)>) {
        let mut stack: Vec<(PhysAddr, u32)> = Vec::new();
        stack.push((addr, order));
        while let Some((a, o)) = stack.pop() {
            let n = self.covered_pages(a, o);
            if n == 0 {
                if !covered {
                    out.push((a, o));
                }
            } else if n == 1 << o {
                if covered {
                    out.push((a, o));
                }
            } else {
                // Partly covered, so o >= 1. Upper half first: the lower one pops first.
                let half = block_bytes(o - 1);
                stack.push((PhysAddr(a.0 + half), o - 1));
                stack.push((a, o - 1));
            }
        }
    }

    /// Every page in `self` or in `other`. Blocks of `self` are kept as they are; blocks
    /// of `other` are split where `self` already covers part of them.
    pub fn union(&self, other: &PageSet) -> PageSet {
        if self.is_empty() {
            // Nothing to split: `other`'s blocks as they are (no walk over its blocks).
            return other.clone();
        }
        let mut out = self.clone();
        let mut parts = Vec::new();
        for (addr, order) in other.iter() {
            parts.clear();
            // The parts are inside this block of `other`, and the blocks of `other` are
            // disjoint, so parts added for earlier blocks never touch this one.
            out.split_by(addr, order, false, &mut parts);
            for &(a, o) in &parts {
                out.insert_unchecked(a, o);
            }
        }
        out
    }

    /// Every page in `self` that is not in `other`; blocks of `self` partly covered by
    /// `other` are split into the largest aligned blocks of what remains.
    pub fn difference(&self, other: &PageSet) -> PageSet {
        let mut out = PageSet::new();
        let mut parts = Vec::new();
        for (addr, order) in self.iter() {
            other.split_by(addr, order, false, &mut parts);
        }
        for (a, o) in parts {
            out.insert_unchecked(a, o);
        }
        out
    }

    /// Every page in both `self` and `other`, split along `self`'s blocks.
    pub fn intersection(&self, other: &PageSet) -> PageSet {
        let mut out = PageSet::new();
        let mut parts = Vec::new();
        for (addr, order) in self.iter() {
            other.split_by(addr, order, true, &mut parts);
        }
        for (a, o) in parts {
            out.insert_unchecked(a, o);
        }
        out
    }

    /// Whether every page of `self` is in `other`.
    pub fn is_subset(&self, other: &PageSet) -> bool {
        self.pages <= other.pages
            && self
                .iter()
                .all(|(addr, order)| other.covered_pages(addr, order) == 1 << order)
    }

    /// Whether the two sets cover the same pages, however they are split into blocks.
    pub fn same_pages(&self, other: &PageSet) -> bool {
        self.pages == other.pages && self.is_subset(other)
    }

    /// The blocks as `(address, order)`, in increasing address order.
    pub fn iter(&self) -> Iter<'_> {
        let cursors = self
            .orders_between(0, MAX_ORDER)
            .map(|order| {
                let lo = 1u64 << (ORDER_0_LOG2 - order);
                let hi = lo << 1;
                let mut c = OrderCursor {
                    leaves: self
                        .leaves
                        .range(lo >> LEAF_BITS_LOG2..hi >> LEAF_BITS_LOG2),
                    leaf: None,
                    word: 0,
                    bits: 0,
                };
                let head = c.next_key().and_then(radix_key_decode);
                (c, head)
            })
            .collect();
        Iter {
            cursors,
            remaining: self.blocks,
        }
    }

    /// The address of every 4 KiB page covered, in increasing order.
    pub fn pages(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        self.iter().flat_map(|(addr, order)| {
            (0..1u64 << order).map(move |i| PhysAddr(addr.0 + (i << PAGE_SHIFT)))
        })
    }

    /// The leaf bitmaps as `(leaf index, bitmap)` in increasing leaf index, where the
    /// leaf index is `key >> 15` and bit `b` of the bitmap stands for key
    /// `leaf index << 15 | b` (see [`radix_key`]). This is what the serialised radix tree
    /// stores in its `struct kho_radix_leaf` pages. A leaf is kept in memory as the
    /// window of its words that hold set bits, so a sparse leaf is handed out as an owned
    /// copy and a full one borrowed.
    pub fn leaves(&self) -> impl Iterator<Item = (u64, Cow<'_, Leaf>)> + '_ {
        self.leaves.iter().map(|(&idx, leaf)| (idx, leaf.full()))
    }
}

/// Splits `pages` pages at `start` into the largest naturally aligned blocks (order at
/// most [`MAX_ORDER`]), in address order. Refused if `start` is not 4 KiB aligned or
/// the range runs past the end of the address space. The blocks are produced lazily, so
/// a huge range costs no memory.
pub fn range_blocks(start: PhysAddr, pages: u64) -> Result<RangeBlocks, PageSetError> {
    let bad = PageSetError::BadRange { start, pages };
    if !start.is_aligned(PAGE_SIZE) {
        return Err(bad);
    }
    if pages == 0 {
        return Ok(RangeBlocks {
            next: None,
            last: 0,
        });
    }
    let last = start
        .pfn()
        .checked_add(pages - 1)
        .filter(|&p| p <= u64::MAX >> PAGE_SHIFT)
        .ok_or(bad)?;
    Ok(RangeBlocks {
        next: Some(start.pfn()),
        last,
    })
}

/// The blocks of a page range, from [`range_blocks`].
#[derive(Clone, Debug)]
pub struct RangeBlocks {
    /// Next page frame number, `None` when done.
    next: Option<u64>,
    /// Last page frame number of the range (inclusive).
    last: u64,
}

impl Iterator for RangeBlocks {
    type Item = (PhysAddr, u32);

    fn next(&mut self) -> Option<Self::Item> {
        let pfn = self.next?;
        let remaining = self.last - pfn + 1;
        let order = pfn
            .trailing_zeros()
            .min(63 - remaining.leading_zeros())
            .min(MAX_ORDER);
        let step = 1u64 << order;
        self.next = if remaining == step {
            None
        } else {
            Some(pfn + step)
        };
        Some((PhysAddr(pfn << PAGE_SHIFT), order))
    }
}

/// Number of set bits of the bitmap `leaf` in `[s, e)`, `e <= 64 * leaf.len()`.
fn count_bits(leaf: &[u64], s: usize, e: usize) -> u64 {
    let mut n = 0u64;
    let mut b = s;
    while b < e {
        let w = b / 64;
        let lo = b % 64;
        let hi = (e - w * 64).min(64);
        n += u64::from((leaf[w] & bit_mask(lo, hi)).count_ones());
        b = (w + 1) * 64;
    }
    n
}

/// First set bit of the bitmap `leaf` in `[s, e)`, `e <= 64 * leaf.len()`.
fn first_bit(leaf: &[u64], s: usize, e: usize) -> Option<usize> {
    let mut b = s;
    while b < e {
        let w = b / 64;
        let lo = b % 64;
        let hi = (e - w * 64).min(64);
        let m = leaf[w] & bit_mask(lo, hi);
        if m != 0 {
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
        b = (w + 1) * 64;
    }
    None
}

/// Mask of bits `[lo, hi)` of a word, `lo < hi <= 64`.
fn bit_mask(lo: usize, hi: usize) -> u64 {
    let upper = if hi == 64 { !0 } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

impl fmt::Debug for PageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct B(PhysAddr, u32);
        impl fmt::Debug for B {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.0, self.1)
            }
        }
        f.debug_set()
            .entries(self.iter().map(|(a, o)| B(a, o)))
            .finish()
    }
}

/// Walks the keys of one order in increasing order.
struct OrderCursor<'a> {
    leaves: alloc::collections::btree_map::Range<'a, u64, LeafBits>,
    leaf: Option<(u64, &'a LeafBits)>,
    /// Index into the stored words of `leaf`.
    word: usize,
    bits: u64,
}

impl OrderCursor<'_> {
    fn next_key(&mut self) -> Option<u64> {
        loop {
            if let Some((idx, leaf)) = self.leaf {
                if self.bits != 0 {
                    let b = self.bits.trailing_zeros() as u64;
                    self.bits &= self.bits - 1;
                    let w = (leaf.first + self.word) as u64;
                    return Some((idx << LEAF_BITS_LOG2) | (w * 64 + b));
                }
                self.word += 1;
                if let Some(&bits) = leaf.stored().get(self.word) {
                    self.bits = bits;
                    continue;
                }
            }
            let (&idx, leaf) = self.leaves.next()?;
            self.leaf = Some((idx, leaf));
            self.word = 0;
            self.bits = leaf.stored().first().copied().unwrap_or(0);
        }
    }
}

/// Iterator over the blocks of a [`PageSet`] in address order: a merge of the
/// per-order key streams (within one order, key order is address order).
pub struct Iter<'a> {
    cursors: Vec<(OrderCursor<'a>, Option<(PhysAddr, u32)>)>,
    remaining: u64,
}

impl Iterator for Iter<'_> {
    type Item = (PhysAddr, u32);

    fn next(&mut self) -> Option<Self::Item> {
        let (cursor, head) = self
            .cursors
            .iter_mut()
            .filter(|(_, head)| head.is_some())
            .min_by_key(|(_, head)| head.map(|(a, _)| a))?;
        let item = head.take();
        *head = cursor.next_key().and_then(radix_key_decode);
        self.remaining = self.remaining.saturating_sub(1);
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl<'a> IntoIterator for &'a PageSet {
    type Item = (PhysAddr, u32);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}
