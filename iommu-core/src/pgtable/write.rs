//! The write side: one `map` / `unmap` algorithm for every [`WriteFormat`].
//!
//! The lesson of Linux's generic page-table framework (`drivers/iommu/generic_pt/`):
//! a format supplies a handful of per-entry operations (encode a leaf, encode a table
//! entry, the cleared value, which page sizes go at which level, how a large leaf
//! splits) and one algorithm does the rest: descending, allocating tables, refusing
//! conflicts, clearing, splitting, and collecting table pages that became empty.
//!
//! The algorithm never invalidates anything and never frees a table page itself: it
//! reports what it changed ([`Mapped`], [`Unmapped`]) so the caller can invalidate
//! exactly what is needed and free the pages only once the IOTLB no longer references
//! them. How VT-d, AMD-Vi v1/v2 and ARM VMSAv8-64 supply the per-entry operations is
//! written down on [`WriteFormat`].
//!
//! # Guarantees
//!
//! - `map` is all or nothing: on error every leaf it wrote is cleared again and the
//!   [`MapError`] carries the [`Unmapped`] report of that rollback (tables it linked
//!   stay linked and empty; they are the caller's, like any table).
//! - `unmap` checks before it writes: a range cutting a leaf that may not be split, an
//!   unknown table pointer, a malformed entry or an allocation failure for a split
//!   leaves the tables unchanged.
//! - The algorithm follows only table pointers the [`TableAlloc`] says it owns, so a
//!   table edited behind its back cannot make it write elsewhere; levels strictly
//!   decrease, so the descent is bounded by the root level.

use super::walk::{geometry, Geometry};
use super::{Entry, EntryError, Format, Perms};
use crate::addr::{Iova, PageSize, PhysAddr};
use crate::mem::{MemError, PhysMem};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use zerocopy::IntoBytes;

/// The write side of a page-table [`Format`]: per-entry encodings the generic
/// [`map`] / [`unmap`] build on.
///
/// # How each format fits
///
/// - **VT-d second stage / first stage** (`vtd::format`): 4 KiB tables of 512 entries
///   at every level; 2 MiB leaves at level 2 and 1 GiB leaves at level 3 (PS bit) where
///   the unit allows; one entry per leaf; the cleared value is 0; a 2 MiB or 1 GiB leaf
///   splits into 512 leaves of the next smaller size with the same attributes.
/// - **AMD-Vi v1**: 4 KiB tables of 512 entries (128 in a Mode-6 root, given by
///   [`Format::table_bytes`] of the root level). A page of a level's own span is one
///   entry with NextLevel 0; a page between two spans (8 KiB … 1 MiB, 4 MiB … 512 MiB,
///   …) is NextLevel 7 with the size encoded in the address bits, placed at the highest
///   level whose span is below the page: [`WriteFormat::leaf_entries`] answers
///   `size / span` and [`WriteFormat::encode_leaf`] returns the same word for every
///   `slot`, so the algorithm writes the replicated copies. Level skipping is a
///   decode-side matter: the algorithm follows whatever level a table entry names
///   (already the walker's rule; the skipped IOVA bits must be zero, or the map is
///   refused) and creates tables at [`WriteFormat::next_level`], which for AMD-Vi is
///   `level - 1` (as Linux, which never creates skipping entries). PDEs carry
///   IR = IW = 1 (`encode_table`, as Linux), leaves IR/IW from the permissions and
///   FC/U as `Attrs`; sizes Linux refuses (512 GiB) get `None` from `leaf_entries`.
///   `decode` reports a NextLevel-7 entry as its whole page, so `unmap` never clears
///   part of a replicated page.
/// - **AMD-Vi v2**: the x86-64 long-mode format, the same operations as VT-d first
///   stage (P, R/W, U/S, PS, NX; 4 KiB / 2 MiB / 1 GiB).
/// - Permissions a format cannot express (a write-only x86 page, execute where the
///   unit has no execute control) are refused by `encode_leaf`, never widened.
/// - **ARM VMSAv8-64** (stage 1 and 2, 4/16/64 KiB granules): levels numbered from the
///   leaf up (ARM level 3 is level 1 here). `table_bytes` is the granule at every level
///   but the root, whose size follows the input width (fewer entries for a short
///   T0SZ, up to 16 concatenated granules for a stage-2 start level). Stage 1 and
///   stage 2 differ only in `encode_leaf` (AP\[2:1\] and AttrIndx vs S2AP and
///   MemAttr, XN) and `Attrs` (MAIR index or memory attributes, shareability);
///   `entry_shift` steps by `granule_shift - 3`. Blocks (1 GiB / 2 MiB at 4 KiB,
///   32 MiB at 16 KiB, 512 MiB at 64 KiB) are single entries; contiguous-hint runs
///   (their length per granule and level as the Arm ARM gives it) are
///   `leaf_entries == n` with `encode_leaf` adding `slot << span` to the output
///   address and setting the Contiguous bit, and `decode` reporting the whole run as
///   the page (base of the run, size `n << span`), so the walker translates each slot
///   and `unmap` never clears part of a run. The cleared value is 0 (type bits 0b00);
///   a block splits into a table of pages or smaller blocks with the same attributes;
///   a stage-2 start level of up to 16 concatenated tables is simply a larger
///   `table_bytes` at the root level, which the algorithm indexes like any table.
pub trait WriteFormat: Format {
    /// Format-specific leaf attributes beyond address, size and permissions (memory
    /// type, snoop, shareability, …); `()` where there are none.
    type Attrs: Copy + fmt::Debug;

    /// Output address width in bits: a leaf or table at or above `1 << oa_bits()`
    /// cannot be encoded.
    fn oa_bits(&self) -> u32;

    /// How many consecutive entries at `level` a leaf of `size` occupies (1 for a
    /// page of the entry's span; `size / span` for a replicated or contiguous leaf),
    /// or `None` if the format cannot place `size` at `level`.
    fn leaf_entries(&self, level: u8, size: PageSize) -> Option<u32>;

    /// Encodes entry `slot` (`0..leaf_entries`) of a leaf at `level` mapping the page
    /// of `size` at `pa` (aligned to `size`) with `perms` and `attrs`; an error if the
    /// permissions or attributes cannot be expressed.
    fn encode_leaf(
        &self,
        level: u8,
        pa: PhysAddr,
        size: PageSize,
        perms: Perms,
        attrs: Self::Attrs,
        slot: u32,
    ) -> Result<u64, EntryError>;

    /// Encodes an entry at `level` pointing to the level-`next_level` table at `next`.
    fn encode_table(&self, level: u8, next: PhysAddr, next_level: u8) -> u64;

    /// The value of a cleared (not present) entry at `level`.
    fn cleared(&self, _level: u8) -> u64 {
        0
    }

    /// The level of a table the algorithm creates below an entry at `level`.
    fn next_level(&self, level: u8) -> u8 {
        level - 1
    }

    /// What `raw` at `level` is, for the algorithm's descent: like
    /// [`decode`](Format::decode), but it may skip the reserved-bit checks and the
    /// permissions (only the variant, a leaf's base and size, and a table's address and
    /// level are used). Formats override it where `decode` is costly; the default
    /// decodes.
    fn classify(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        self.decode(level, raw)
    }

    /// Entry `index` of the level-`next_level(level)` table that replaces the leaf
    /// `raw` at `level` (same output addresses, permissions and attributes, smaller
    /// pages), or `None` where the format cannot split that leaf.
    fn split_leaf(&self, level: u8, raw: u64, index: usize) -> Option<u64>;
}

/// Table pages for the algorithm: the page-allocation hook of a driver.
pub trait TableAlloc {
    /// A table of `bytes` bytes (a power of two), aligned to its size, for a table at
    /// `level`; its contents need not be zeroed. `None` when memory is exhausted.
    fn alloc_table(&mut self, level: u8, bytes: u64) -> Option<PhysAddr>;
    /// Takes back a table [`alloc_table`](TableAlloc::alloc_table) returned that was
    /// never linked into the tree (error paths). Tables that were linked and became
    /// empty are reported in [`Unmapped::freed`] instead, for the caller to free after
    /// invalidating.
    fn free_unlinked(&mut self, table: PhysAddr, bytes: u64);
    /// Whether `table` is a table page of this tree (the algorithm follows no other
    /// pointer).
    fn owns(&self, table: PhysAddr) -> bool;
}

/// What went wrong in [`map`] or [`unmap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapErrorKind {
    /// The format cannot place pages of this size at any level.
    SizeUnsupported {
        /// The page size.
        size: PageSize,
    },
    /// The length is zero or not a multiple of the page size, or the IOVA or physical
    /// address is not aligned to it.
    Misaligned {
        /// The IOVA.
        iova: Iova,
        /// The physical address (0 for unmap).
        pa: PhysAddr,
        /// The length.
        len: u64,
        /// The page size the range must be aligned to.
        size: PageSize,
    },
    /// The IOVA range wraps or reaches beyond the format's input width.
    BeyondInputWidth {
        /// The format's input width in bits.
        ia_bits: u32,
    },
    /// The physical range wraps or reaches beyond the format's output width.
    BeyondOutputWidth {
        /// The format's output width in bits.
        oa_bits: u32,
    },
    /// The format cannot express the leaf (permissions, attributes).
    Unencodable(EntryError),
    /// An IOVA is already mapped (or lies under a larger leaf).
    AlreadyMapped {
        /// The IOVA.
        iova: Iova,
        /// Level of the conflicting entry.
        level: u8,
        /// Its value.
        entry: u64,
    },
    /// The unmap range cuts a leaf the format (or the caller) does not split.
    PartialLeaf {
        /// First IOVA of the leaf's entry.
        iova: Iova,
        /// Span of the entry in bytes.
        span: u64,
        /// Its level.
        level: u8,
    },
    /// A table entry points to a table this tree does not own, names a level not below
    /// its own, or does not decode.
    Corrupt {
        /// Table holding the entry.
        table: PhysAddr,
        /// Its level.
        level: u8,
        /// The entry.
        entry: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The format describes an impossible geometry.
    BadGeometry {
        /// What is impossible.
        reason: &'static str,
    },
    /// A table could not be read or written.
    Memory(MemError),
    /// The allocator had no table page.
    OutOfTables,
}

impl fmt::Display for MapErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapErrorKind::SizeUnsupported { size } => {
                write!(f, "the format cannot place {size} pages")
            }
            MapErrorKind::Misaligned {
                iova,
                pa,
                len,
                size,
            } => write!(
                f,
                "iova {iova}, pa {pa}, length {len:#x} not aligned to the {size} page size"
            ),
            MapErrorKind::BeyondInputWidth { ia_bits } => {
                write!(f, "IOVA range beyond the {ia_bits}-bit input width")
            }
            MapErrorKind::BeyondOutputWidth { oa_bits } => {
                write!(f, "physical range beyond the {oa_bits}-bit output width")
            }
            MapErrorKind::Unencodable(e) => write!(f, "leaf cannot be encoded: {e}"),
            MapErrorKind::AlreadyMapped { iova, level, entry } => write!(
                f,
                "iova {iova} already mapped by level {level} entry {entry:#018x}"
            ),
            MapErrorKind::PartialLeaf { iova, span, level } => write!(
                f,
                "range cuts the level {level} leaf at iova {iova} ({span:#x} bytes)"
            ),
            MapErrorKind::Corrupt {
                table,
                level,
                entry,
                why,
            } => write!(f, "level {level} table {table} entry {entry:#018x}: {why}"),
            MapErrorKind::BadGeometry { reason } => write!(f, "bad format geometry: {reason}"),
            MapErrorKind::Memory(e) => write!(f, "table access failed: {e}"),
            MapErrorKind::OutOfTables => f.write_str("no page for a new table"),
        }
    }
}

/// A [`map`] error, with the report of the rollback (what the failed call wrote and
/// cleared again: the caller invalidates and frees after it as after an [`unmap`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapError {
    /// What went wrong.
    pub kind: MapErrorKind,
    /// Bytes mapped before the error (and unmapped again by the rollback).
    pub done: u64,
    /// What the rollback changed.
    pub rollback: Box<Unmapped>,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

/// What [`map`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapped {
    /// Leaf entries written (replicated copies counted).
    pub entries: u64,
    /// Pages mapped.
    pub pages: u64,
    /// Tables allocated and linked, in allocation order.
    pub tables: Vec<PhysAddr>,
}

/// A table page [`unmap`] unlinked: free it (after invalidating) with its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FreedTable {
    /// The table.
    pub addr: PhysAddr,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its level.
    pub level: u8,
}

/// What [`unmap`] changed, for a precise invalidation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unmapped {
    /// Bytes of IOVA space whose translation was removed.
    pub bytes: u64,
    /// Leaf entries cleared (replicated copies counted).
    pub leaves: u64,
    /// Table pages unlinked because they became empty (children before parents). Free
    /// them only after the invalidation.
    pub freed: Vec<FreedTable>,
    /// Tables created to split large leaves the range cut (already linked).
    pub split: Vec<PhysAddr>,
    /// The IOVA span whose entries changed: cleared leaves, and the whole span of every
    /// leaf replaced by a split (`None` when nothing changed). It may exceed the
    /// requested range only by split leaves. Inclusive, so it can end at the last byte
    /// below 2^64.
    pub touched: Option<IovaSpan>,
}

/// An inclusive IOVA span `[first, last]`: unlike an exclusive end in a `u64`, it can
/// hold the last page below 2^64 (a 64-bit input range, AMD-Vi v1 Mode 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaSpan {
    /// First IOVA of the span.
    pub first: Iova,
    /// Last IOVA of the span (inclusive).
    pub last: Iova,
}

impl IovaSpan {
    /// Bytes in the span (up to 2^64).
    pub fn bytes(&self) -> u128 {
        (self.last.0 - self.first.0) as u128 + 1
    }

    /// The exclusive end, or `None` where the span ends at 2^64.
    pub fn end(&self) -> Option<Iova> {
        self.last.0.checked_add(1).map(Iova)
    }
}

impl Unmapped {
    /// Adds `[first, last]` (inclusive) to [`touched`](Unmapped::touched).
    fn touch(&mut self, first: u64, last: u64) {
        let (a, b) = self.touched.map_or((first, last), |t| {
            (t.first.0.min(first), t.last.0.max(last))
        });
        self.touched = Some(IovaSpan {
            first: Iova(a),
            last: Iova(b),
        });
    }

    /// Whether only leaf entries changed (no table entry cleared or replaced): the
    /// case where an invalidation may keep cached paging-structure entries.
    pub fn leaves_only(&self) -> bool {
        self.freed.is_empty() && self.split.is_empty()
    }
}

/// How [`unmap`] treats a leaf the range only partly covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Partial {
    /// Refuse with [`MapErrorKind::PartialLeaf`]; nothing changes.
    #[default]
    Refuse,
    /// Split the leaf where the format can ([`WriteFormat::split_leaf`]); refuse
    /// otherwise.
    Split,
}

/// The geometry of `level`, a format bug as [`MapErrorKind::BadGeometry`].
fn geom<F: Format + ?Sized>(f: &F, level: u8) -> Result<Geometry, MapErrorKind> {
    geometry(f, level).map_err(|k| match k {
        super::WalkErrorKind::BadGeometry { reason } => MapErrorKind::BadGeometry { reason },
        _ => MapErrorKind::BadGeometry {
            reason: "table geometry",
        },
    })
}

/// Whether the algorithm may follow a table entry at `level` to the level-`nl` table
/// `next`: owned by the tree, and its level below the entry's and at least `lowest`.
fn follow<A: TableAlloc + ?Sized>(
    alloc: &A,
    next: PhysAddr,
    nl: u8,
    level: u8,
    lowest: u8,
) -> Result<(), &'static str> {
    if !alloc.owns(next) {
        return Err("points to a table page this tree never allocated");
    }
    if nl >= level || nl < lowest.max(1) {
        return Err("next level not between the leaf level and the entry's");
    }
    Ok(())
}

fn mem(e: MemError) -> MapErrorKind {
    MapErrorKind::Memory(e)
}

fn read_table<M: PhysMem + ?Sized>(
    m: &M,
    addr: PhysAddr,
    g: &Geometry,
    buf: &mut Vec<u64>,
) -> Result<(), MapErrorKind> {
    buf.clear();
    buf.resize(g.entries, 0);
    m.read(addr, buf.as_mut_slice().as_mut_bytes())
        .map_err(mem)?;
    for v in buf.iter_mut() {
        *v = u64::from_le(*v);
    }
    Ok(())
}

/// The level a page of `size` goes to: the highest level the format can place it at
/// (fewest entries), with its entry count.
pub fn leaf_level<F: WriteFormat + ?Sized>(f: &F, size: PageSize) -> Option<(u8, u32)> {
    (1..=f.root_level())
        .rev()
        .find_map(|l| f.leaf_entries(l, size).map(|n| (l, n)))
}

/// Allocates and zeroes a table at `level`.
fn new_table<F, M, A>(
    f: &F,
    m: &mut M,
    a: &mut A,
    level: u8,
) -> Result<(PhysAddr, Geometry), MapErrorKind>
where
    F: WriteFormat + ?Sized,
    M: PhysMem + ?Sized,
    A: TableAlloc + ?Sized,
{
    let g = geom(f, level)?;
    let t = a
        .alloc_table(level, g.bytes)
        .ok_or(MapErrorKind::OutOfTables)?;
    let cleared = f.cleared(level);
    let res = if cleared == 0 {
        zero(m, t, g.bytes)
    } else {
        let v: Vec<u64> = (0..g.entries).map(|_| cleared.to_le()).collect();
        m.write(t, v.as_bytes()).map_err(mem)
    };
    if let Err(e) = res {
        a.free_unlinked(t, g.bytes);
        return Err(e);
    }
    Ok((t, g))
}

fn zero<M: PhysMem + ?Sized>(m: &mut M, at: PhysAddr, bytes: u64) -> Result<(), MapErrorKind> {
    const Z: [u8; 4096] = [0; 4096];
    let mut off = 0;
    while off < bytes {
        let n = (bytes - off).min(4096);
        m.write(PhysAddr(at.0 + off), &Z[..n as usize])
            .map_err(mem)?;
        off += n;
    }
    Ok(())
}

/// Maps `[iova, iova + len)` to `[pa, pa + len)` with pages of `size`, `perms` and
/// `attrs` in the tree under `root`, allocating tables from `alloc`.
///
/// All or nothing: on error the leaves written are cleared again (see [`MapError`]).
/// The range may end at 2^64 where the input width is 64 bits; it may not wrap.
#[allow(clippy::too_many_arguments)]
pub fn map<F, M, A>(
    f: &F,
    m: &mut M,
    alloc: &mut A,
    root: PhysAddr,
    iova: Iova,
    pa: PhysAddr,
    len: u64,
    size: PageSize,
    perms: Perms,
    attrs: F::Attrs,
) -> Result<Mapped, MapError>
where
    F: WriteFormat + ?Sized,
    M: PhysMem + ?Sized,
    A: TableAlloc + ?Sized,
{
    let fail = |kind| MapError {
        kind,
        done: 0,
        rollback: Box::default(),
    };
    let (leaf, n) = leaf_level(f, size).ok_or(fail(MapErrorKind::SizeUnsupported { size }))?;
    let sz = size.bytes();
    if len == 0 || len % sz != 0 || iova.0 % sz != 0 || pa.0 % sz != 0 {
        return Err(fail(MapErrorKind::Misaligned {
            iova,
            pa,
            len,
            size,
        }));
    }
    // Inclusive last addresses (len > 0 here): a range may end at 2^64.
    let ia_bits = f.ia_bits();
    let last = iova.0.checked_add(len - 1);
    if last.map_or(true, |l| ia_bits < 64 && l >> ia_bits != 0) {
        return Err(fail(MapErrorKind::BeyondInputWidth { ia_bits }));
    }
    let oa_bits = f.oa_bits();
    let pa_last = pa.0.checked_add(len - 1);
    if pa_last.map_or(true, |l| oa_bits < 64 && l >> oa_bits != 0) {
        return Err(fail(MapErrorKind::BeyondOutputWidth { oa_bits }));
    }
    // Encodability is a property of (level, size, perms, attrs): check once up front.
    f.encode_leaf(leaf, pa, size, perms, attrs, 0)
        .map_err(|e| fail(MapErrorKind::Unencodable(e)))?;
    let root_level = f.root_level();
    let rg = geom(f, root_level).map_err(fail)?;
    let mut cx = MapCx {
        f,
        m,
        alloc,
        leaf,
        n,
        size,
        perms,
        attrs,
        iova: iova.0,
        pa: pa.0,
        len,
        done: 0,
        out: Mapped::default(),
        buf: Vec::new(),
    };
    match cx.fill(root, root_level, rg, 0) {
        Ok(()) => Ok(cx.out),
        Err(kind) => {
            let done = cx.done;
            let rollback = if done > 0 {
                // Only leaves this call wrote lie in [iova, iova + done): clearing them
                // cannot cut a leaf, and every table on the way is owned.
                unmap(f, m, alloc, root, iova, done, Partial::Refuse).unwrap_or_default()
            } else {
                Unmapped::default()
            };
            Err(MapError {
                kind,
                done,
                rollback: Box::new(rollback),
            })
        }
    }
}

struct MapCx<'a, F: WriteFormat + ?Sized, M: ?Sized, A: ?Sized> {
    f: &'a F,
    m: &'a mut M,
    alloc: &'a mut A,
    leaf: u8,
    n: u32,
    size: PageSize,
    perms: Perms,
    attrs: F::Attrs,
    /// Start of the whole range and its physical address.
    iova: u64,
    pa: u64,
    /// Length of the whole range (`iova + len` may be 2^64: the range is tracked by
    /// `done < len`, never by an end address).
    len: u64,
    /// Bytes mapped so far (from `iova`).
    done: u64,
    out: Mapped,
    buf: Vec<u64>,
}

impl<F, M, A> MapCx<'_, F, M, A>
where
    F: WriteFormat + ?Sized,
    M: PhysMem + ?Sized,
    A: TableAlloc + ?Sized,
{
    /// Maps the part of the range under the level-`level` table at `table`, whose
    /// entry 0 starts at IOVA `base`.
    fn fill(
        &mut self,
        table: PhysAddr,
        level: u8,
        g: Geometry,
        base: u64,
    ) -> Result<(), MapErrorKind> {
        let shift = g.shift;
        let cur = self.iova + self.done;
        let first = ((cur - base) >> shift) as usize;
        if level == self.leaf {
            return self.leaves(table, level, g, base, first);
        }
        let mut i = first;
        while i < g.entries && self.done < self.len {
            let at = PhysAddr(table.0 + i as u64 * 8);
            let raw = self.m.read_u64(at).map_err(mem)?;
            let slot = base + ((i as u64) << shift);
            let corrupt = |why| MapErrorKind::Corrupt {
                table,
                level,
                entry: raw,
                why,
            };
            let entry = self.f.classify(level, raw).map_err(|e| corrupt(e.reason))?;
            let (next, next_level) = match entry {
                Entry::Invalid => {
                    let nl = self.f.next_level(level);
                    if nl < self.leaf || nl >= level {
                        return Err(MapErrorKind::BadGeometry {
                            reason:
                                "next_level is not between the leaf level and the entry's level",
                        });
                    }
                    let (t, _) = new_table(self.f, self.m, self.alloc, nl)?;
                    if let Err(e) = self.m.write_u64(at, self.f.encode_table(level, t, nl)) {
                        self.alloc.free_unlinked(t, self.f.table_bytes(nl));
                        return Err(mem(e));
                    }
                    self.out.tables.push(t);
                    (t, nl)
                }
                Entry::Leaf { .. } => {
                    return Err(MapErrorKind::AlreadyMapped {
                        iova: Iova(self.iova + self.done),
                        level,
                        entry: raw,
                    })
                }
                Entry::Table {
                    next, level: nl, ..
                } => {
                    follow(&*self.alloc, next, nl, level, self.leaf).map_err(corrupt)?;
                    (next, nl)
                }
            };
            let ng = geom(self.f, next_level)?;
            // A level-skipping entry (AMD-Vi v1) covers only the low part of its span:
            // the skipped IOVA bits must be zero.
            if (self.iova + self.done - slot) as u128 >= ng.coverage() {
                return Err(corrupt(
                    "the IOVA lies in the part of a level-skipping entry's span its table does not cover",
                ));
            }
            self.fill(next, next_level, ng, slot)?;
            i += 1;
        }
        Ok(())
    }

    /// Writes leaves into the leaf table at `table` from entry `first` on.
    fn leaves(
        &mut self,
        table: PhysAddr,
        level: u8,
        g: Geometry,
        base: u64,
        first: usize,
    ) -> Result<(), MapErrorKind> {
        let n = self.n as usize;
        let sz = self.size.bytes();
        // Entries of this table the range covers (ends in u128: either may be 2^64).
        let cur = self.iova + self.done;
        let table_end = base as u128 + g.coverage();
        let stop = (self.iova as u128 + self.len as u128).min(table_end);
        let count = (((stop - cur as u128) >> g.shift) as usize).min(g.entries - first);
        let mut buf = core::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(count, 0);
        let at0 = PhysAddr(table.0 + first as u64 * 8);
        let r = self
            .m
            .read(at0, buf.as_mut_slice().as_mut_bytes())
            .map_err(mem);
        let res = r.and_then(|()| {
            for page in 0..count / n {
                let e0 = page * n;
                for k in 0..n {
                    let raw = u64::from_le(buf[e0 + k]);
                    if !matches!(self.f.classify(level, raw), Ok(Entry::Invalid)) {
                        return Err(MapErrorKind::AlreadyMapped {
                            iova: Iova(self.iova + self.done),
                            level,
                            entry: raw,
                        });
                    }
                }
                let pa = PhysAddr(self.pa + self.done);
                for k in 0..n {
                    let v = self
                        .f
                        .encode_leaf(level, pa, self.size, self.perms, self.attrs, k as u32)
                        .map_err(MapErrorKind::Unencodable)?;
                    let at = PhysAddr(at0.0 + ((e0 + k) as u64) * 8);
                    self.m.write_u64(at, v).map_err(mem)?;
                }
                self.out.entries += n as u64;
                self.out.pages += 1;
                self.done += sz;
            }
            Ok(())
        });
        self.buf = buf;
        res
    }
}

/// Unmaps every leaf inside `[iova, iova + len)` of the tree under `root` (the range is
/// clipped to the input width; both must be aligned to the smallest entry span). The
/// range may end at 2^64 (a 64-bit input width); it may not wrap.
///
/// A leaf the range only partly covers is split or refused according to `partial`
/// (a replicated leaf, whose page is larger than its entry, is never split). Checks
/// first, writes after: on error nothing changed. Table pages left empty are unlinked
/// (never the root) and reported in [`Unmapped::freed`]; freeing them is the caller's,
/// after invalidating.
pub fn unmap<F, M, A>(
    f: &F,
    m: &mut M,
    alloc: &mut A,
    root: PhysAddr,
    iova: Iova,
    len: u64,
    partial: Partial,
) -> Result<Unmapped, MapErrorKind>
where
    F: WriteFormat + ?Sized,
    M: PhysMem + ?Sized,
    A: TableAlloc + ?Sized,
{
    let grain = 1u64 << f.entry_shift(1);
    let smallest = PageSize::new(grain).ok_or(MapErrorKind::BadGeometry {
        reason: "smallest entry span is not a page size",
    })?;
    if len == 0 || len % grain != 0 || iova.0 % grain != 0 {
        return Err(MapErrorKind::Misaligned {
            iova,
            pa: PhysAddr(0),
            len,
            size: smallest,
        });
    }
    // The inclusive last IOVA (len > 0 here): a range may end at 2^64.
    let ia_bits = f.ia_bits();
    let last = iova
        .0
        .checked_add(len - 1)
        .ok_or(MapErrorKind::BeyondInputWidth { ia_bits })?;
    let last = if ia_bits < 64 {
        last.min((1u64 << ia_bits) - 1)
    } else {
        last
    };
    if iova.0 > last {
        return Ok(Unmapped::default());
    }
    let level = f.root_level();
    let g = geom(f, level)?;
    let mut cx = UnmapCx {
        f,
        m,
        alloc,
        start: iova.0,
        last,
        split: partial == Partial::Split,
        dry: true,
        split_levels: Vec::new(),
        spare: Vec::new(),
        out: Unmapped::default(),
        bufs: Vec::new(),
    };
    cx.table(root, level, g, 0, 0)?;
    // Tables for splits are allocated before anything is written.
    let levels = core::mem::take(&mut cx.split_levels);
    for l in levels {
        match new_table(f, cx.m, cx.alloc, l) {
            Ok((t, _)) => cx.spare.push((t, l)),
            Err(e) => {
                for (t, l) in cx.spare.drain(..) {
                    cx.alloc.free_unlinked(t, f.table_bytes(l));
                }
                return Err(e);
            }
        }
    }
    cx.dry = false;
    cx.out = Unmapped::default();
    cx.table(root, level, g, 0, 0)?;
    // Every planned split took its table; any left over goes back.
    for (t, l) in cx.spare.drain(..) {
        cx.alloc.free_unlinked(t, f.table_bytes(l));
    }
    Ok(cx.out)
}

struct UnmapCx<'a, F: ?Sized, M: ?Sized, A: ?Sized> {
    f: &'a F,
    m: &'a mut M,
    alloc: &'a mut A,
    start: u64,
    /// Last IOVA of the range (inclusive: the range may end at 2^64).
    last: u64,
    split: bool,
    dry: bool,
    /// Levels of the tables the splits found by the check pass create.
    split_levels: Vec<u8>,
    /// Those tables, allocated and zeroed, not yet linked.
    spare: Vec<(PhysAddr, u8)>,
    out: Unmapped,
    /// One entry buffer per depth.
    bufs: Vec<Vec<u64>>,
}

impl<F, M, A> UnmapCx<'_, F, M, A>
where
    F: WriteFormat + ?Sized,
    M: PhysMem + ?Sized,
    A: TableAlloc + ?Sized,
{
    /// Unmaps under the level-`level` table at `table` whose entry 0 starts at IOVA
    /// `base`; in the write pass returns whether the table is now empty.
    fn table(
        &mut self,
        table: PhysAddr,
        level: u8,
        g: Geometry,
        base: u64,
        depth: usize,
    ) -> Result<bool, MapErrorKind> {
        if self.bufs.len() <= depth {
            self.bufs.resize_with(depth + 1, Vec::new);
        }
        let mut buf = core::mem::take(&mut self.bufs[depth]);
        let r = self.entries(table, level, g, base, depth, &mut buf);
        self.bufs[depth] = buf;
        r
    }

    fn entries(
        &mut self,
        table: PhysAddr,
        level: u8,
        g: Geometry,
        base: u64,
        depth: usize,
        buf: &mut Vec<u64>,
    ) -> Result<bool, MapErrorKind> {
        read_table(self.m, table, &g, buf)?;
        let shift = g.shift;
        let span = 1u64 << shift;
        let first = (self.start.saturating_sub(base) >> shift) as usize;
        // One past the index of the entry holding the range's last byte.
        let last = self
            .last
            .checked_sub(base)
            .map_or(0, |d| ((d >> shift) as usize).saturating_add(1))
            .min(g.entries);
        let empty = self.f.cleared(level);
        let mut cleared: Vec<usize> = Vec::new();
        for (i, &raw) in buf.iter().enumerate().take(last).skip(first) {
            if raw == empty {
                continue;
            }
            let corrupt = |why| MapErrorKind::Corrupt {
                table,
                level,
                entry: raw,
                why,
            };
            let e_start = base + ((i as u64) << shift);
            match self.f.classify(level, raw).map_err(|e| corrupt(e.reason))? {
                Entry::Invalid => {}
                Entry::Leaf { size, .. } => {
                    // The page's last byte: p_start is aligned to the size, so no overflow.
                    let p_start = e_start & !(size.bytes() - 1);
                    let p_last = p_start | (size.bytes() - 1);
                    let inside = p_start >= self.start && p_last <= self.last;
                    if inside {
                        cleared.push(i);
                        self.out.bytes += span;
                        self.out.leaves += 1;
                        if !self.dry {
                            self.out.touch(e_start, e_start + (span - 1));
                        }
                        continue;
                    }
                    let partial = MapErrorKind::PartialLeaf {
                        iova: Iova(e_start),
                        span,
                        level,
                    };
                    if !self.split || size.bytes() != span {
                        return Err(partial);
                    }
                    if self.dry {
                        self.plan_split(level, raw, e_start).map_err(|()| partial)?;
                    } else {
                        let (t, nl) = self.split(table, level, raw, i)?;
                        self.out.touch(e_start, e_start + (span - 1));
                        let ng = geom(self.f, nl)?;
                        if self.table(t, nl, ng, e_start, depth + 1)? {
                            // Cannot happen for a partial cover; handled for safety.
                            cleared.push(i);
                            self.out.freed.push(FreedTable {
                                addr: t,
                                bytes: ng.bytes,
                                level: nl,
                            });
                        }
                    }
                }
                Entry::Table {
                    next, level: nl, ..
                } => {
                    follow(&*self.alloc, next, nl, level, 1).map_err(corrupt)?;
                    let ng = geom(self.f, nl)?;
                    if ng.coverage() > span as u128 {
                        return Err(corrupt("next table covers more than its entry"));
                    }
                    if self.table(next, nl, ng, e_start, depth + 1)? {
                        cleared.push(i);
                        self.out.freed.push(FreedTable {
                            addr: next,
                            bytes: ng.bytes,
                            level: nl,
                        });
                    }
                }
            }
        }
        if self.dry {
            return Ok(false);
        }
        for &i in &cleared {
            self.m
                .write_u64(PhysAddr(table.0 + i as u64 * 8), empty)
                .map_err(mem)?;
            buf[i] = empty;
        }
        Ok(buf
            .iter()
            .all(|&v| v == empty || matches!(self.f.classify(level, v), Ok(Entry::Invalid))))
    }

    /// Check pass: records the tables splitting the leaf `raw` at `level` (entry at
    /// IOVA `e_start`) creates, recursively down to where the range edges fall on entry
    /// boundaries. `Err` if the format cannot split one of them.
    fn plan_split(&mut self, level: u8, raw: u64, e_start: u64) -> Result<(), ()> {
        let nl = self.f.next_level(level);
        if nl == 0 || nl >= level {
            return Err(());
        }
        let g = geometry(self.f, nl).map_err(|_| ())?;
        self.split_levels.push(nl);
        let span = 1u128 << g.shift;
        // Only the children holding a range edge (the first byte in, the first byte
        // after, which may be 2^64) are cut again.
        for edge in [self.start as u128, self.last as u128 + 1] {
            if edge <= e_start as u128 || edge % span == 0 {
                continue;
            }
            let idx = (edge - e_start as u128) >> g.shift;
            if idx >= g.entries as u128 {
                continue;
            }
            let idx = idx as usize;
            let child = self.f.split_leaf(level, raw, idx).ok_or(())?;
            match self.f.decode(nl, child) {
                Ok(Entry::Leaf { size, .. }) if size.bytes() as u128 == span => {
                    self.plan_split(nl, child, e_start + ((idx as u64) << g.shift))?
                }
                _ => return Err(()),
            }
        }
        // The children themselves must exist (checked on the first one).
        self.f.split_leaf(level, raw, 0).ok_or(())?;
        Ok(())
    }

    /// Write pass: replaces the leaf `raw` at entry `i` of the level-`level` table at
    /// `table` by a filled table of smaller leaves; returns that table and its level.
    fn split(
        &mut self,
        table: PhysAddr,
        level: u8,
        raw: u64,
        i: usize,
    ) -> Result<(PhysAddr, u8), MapErrorKind> {
        let nl = self.f.next_level(level);
        let pos = self
            .spare
            .iter()
            .position(|&(_, l)| l == nl)
            .ok_or(MapErrorKind::OutOfTables)?;
        let (t, _) = self.spare.swap_remove(pos);
        let g = geom(self.f, nl)?;
        let mut words = Vec::with_capacity(g.entries);
        for j in 0..g.entries {
            let v = self
                .f
                .split_leaf(level, raw, j)
                .ok_or(MapErrorKind::BadGeometry {
                    reason: "split_leaf refused an entry it accepted in the check pass",
                })?;
            words.push(v.to_le());
        }
        // Fill the new table, then switch the entry over in one write.
        self.m.write(t, words.as_bytes()).map_err(mem)?;
        self.m
            .write_u64(
                PhysAddr(table.0 + i as u64 * 8),
                self.f.encode_table(level, t, nl),
            )
            .map_err(mem)?;
        self.out.split.push(t);
        Ok((t, nl))
    }
}

/// Every table page of the tree under `root` (the root first, depth first), as the
/// generic walker finds them: the collection a driver frees when it destroys a domain
/// or pins for a handover.
pub fn table_pages<F, M>(
    f: &F,
    m: &M,
    root: PhysAddr,
    limits: &super::WalkLimits,
) -> Result<Vec<super::TablePage>, super::WalkError>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    super::walk_with(f, m, root, limits, |_| {}).map(|s| s.tables)
}
