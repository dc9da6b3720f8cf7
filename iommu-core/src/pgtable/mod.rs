//! Page-table formats and the one generic walker.
//!
//! Every IOMMU page-table format (VT-d second-stage and first-stage, AMD-Vi v1 and v2,
//! ARM VMSAv8-64 stage 1 and 2 with 4K/16K/64K granules) is described by a [`Format`]:
//! how big a table is at each level, which IOVA bits index it, and what one 64-bit
//! entry means. The walker in this module is written once against that trait.
//!
//! Levels are numbered as the specifications of the x86 IOMMUs do: level 1 holds the
//! smallest pages, the root has the highest number. A table entry names the level of
//! the table it points to, which lets AMD-Vi v1 tables skip levels.
//!
//! - [`walk`] / [`walk_with`]: every mapping under a root, coalesced into [`Mapping`]
//!   runs, and every [`TablePage`], bounded by [`WalkLimits`], strict or lenient;
//! - [`translate`]: one IOVA, step by step ([`Translation`]);
//! - [`map`] / [`unmap`] / [`table_pages`]: the write side, one algorithm over the
//!   per-entry operations of a [`WriteFormat`], reporting what changed ([`Mapped`],
//!   [`Unmapped`]) so a driver can invalidate precisely.

use crate::addr::{PageSize, PhysAddr};
use core::fmt;

mod translate;
mod walk;
mod write;

#[cfg(test)]
mod tests;

pub use translate::{translate, Outcome, Step, Translation};
pub use walk::{
    walk, walk_with, Budget, Mapping, TablePage, Walk, WalkError, WalkErrorKind, WalkLimits,
    WalkMode, WalkSummary, MAX_TABLE_BYTES,
};
pub use write::{
    leaf_level, map, table_pages, unmap, FreedTable, IovaSpan, MapError, MapErrorKind, Mapped,
    Partial, TableAlloc, Unmapped, WriteFormat,
};

/// Access permissions of a mapping (after combining all levels of the walk).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Perms {
    /// Device reads allowed.
    pub read: bool,
    /// Device writes allowed.
    pub write: bool,
    /// Execute (instruction fetch) requests allowed.
    pub exec: bool,
}

impl Perms {
    /// Read and write, no execute.
    pub const RW: Self = Self {
        read: true,
        write: true,
        exec: false,
    };
    /// Read only.
    pub const R: Self = Self {
        read: true,
        write: false,
        exec: false,
    };
    /// Write only.
    pub const W: Self = Self {
        read: false,
        write: true,
        exec: false,
    };
    /// Read and execute, no write.
    pub const RX: Self = Self {
        read: true,
        write: false,
        exec: true,
    };
    /// Everything.
    pub const RWX: Self = Self {
        read: true,
        write: true,
        exec: true,
    };
    /// The permissions both allow (hierarchical permission combining).
    pub const fn intersect(self, other: Self) -> Self {
        Self {
            read: self.read && other.read,
            write: self.write && other.write,
            exec: self.exec && other.exec,
        }
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |b: bool, ch: char| if b { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x')
        )
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perms({self})")
    }
}

/// What one page-table entry means, as decoded by a [`Format`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Not present: nothing is mapped under this entry.
    Invalid,
    /// Points to a next-level table.
    Table {
        /// Physical address of the next table.
        next: PhysAddr,
        /// Level of the next table; must be below the current level (AMD-Vi v1 may
        /// skip levels).
        level: u8,
        /// Permissions this entry allows to the mappings below it (all of them where
        /// the format has no hierarchical permissions).
        perms: Perms,
    },
    /// Maps a page or block.
    Leaf {
        /// Output address of the first byte of the page this entry belongs to. Where a
        /// page is larger than the entry's span (AMD-Vi v1 replicated entries, ARM
        /// contiguous hint is *not* such a case) the walker offsets into it.
        base: PhysAddr,
        /// The page size.
        size: PageSize,
        /// Permissions of the page.
        perms: Perms,
    },
}

/// Why a format refused an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryError {
    /// What is wrong, in the specification's words (e.g. "reserved bit 7 set in PML4E").
    pub reason: &'static str,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

/// A page-table format: geometry and entry decoding.
///
/// Entries are 64-bit little-endian words. A table at level `l` has
/// `table_bytes(l) / 8` entries and entry `i` covers IOVAs
/// `[i << entry_shift(l), (i + 1) << entry_shift(l))` relative to the table's base IOVA.
/// A root table may be larger than one page (ARM concatenated stage-2 tables).
pub trait Format {
    /// A short name for messages and dumps, e.g. `"vtd-second-stage-4"`.
    fn name(&self) -> &'static str;
    /// Level of the root table.
    fn root_level(&self) -> u8;
    /// Size in bytes of a table at `level` (a power of two, at least 8); tables are
    /// aligned to their size.
    fn table_bytes(&self, level: u8) -> u64;
    /// log2 of the IOVA span of one entry at `level`.
    fn entry_shift(&self, level: u8) -> u32;
    /// Input address width in bits: IOVAs at or above `1 << ia_bits()` never translate.
    fn ia_bits(&self) -> u32;
    /// Decodes the entry `raw` found in a table at `level`.
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError>;
}
