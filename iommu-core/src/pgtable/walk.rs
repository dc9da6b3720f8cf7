//! The generic, bounded page-table walker.
//!
//! [`walk_with`] visits every table reachable from a root in IOVA order, reading each
//! table with a single [`PhysMem::read`], and hands coalesced [`Mapping`] runs to a
//! callback without storing them; [`walk`] collects them. Both return the list of table
//! pages visited ([`TablePage`]) and, in [`WalkMode::Lenient`], the problems met on the
//! way. [`translate`](super::translate) follows one IOVA step by step.
//!
//! # Bounds
//!
//! - depth: levels strictly decrease from the root, whose level must not exceed
//!   [`WalkLimits::max_levels`];
//! - every table's bytes are read at most once: a visited set of byte ranges rejects a
//!   table that overlaps one already seen, as a [`WalkErrorKind::Cycle`] when that table
//!   is an ancestor on the current path, as a [`WalkErrorKind::Alias`] otherwise;
//! - total work: at most [`WalkLimits::max_tables`] tables are read and at most
//!   [`WalkLimits::max_mappings`] runs are produced.
//!
//! # Geometry
//!
//! A table at level `l` has `table_bytes(l) / 8` entries; entry `i` covers
//! `[base + (i << entry_shift(l)), base + ((i + 1) << entry_shift(l)))`. The root table
//! starts at IOVA 0. A table entry's next table starts at the IOVA of the entry; if the
//! next table covers less than the entry (a level-skipping AMD-Vi v1 entry), the rest of
//! the entry's span is unmapped: the walker takes the skipped IOVA bits to be zero.
//!
//! A leaf whose page size exceeds its entry's span (AMD-Vi v1 pages encoded in address
//! bits and replicated over several entries) maps the entry's span to
//! `base + (slot_iova % page_size)`.

use super::{Entry, EntryError, Format, Perms};
use crate::addr::{Iova, PageSize, PhysAddr};
use crate::mem::{MemError, PhysMem};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use zerocopy::IntoBytes;

/// Largest table the walker accepts, in bytes (16 MiB). Real formats stay far below
/// (an ARM stage-2 root of 16 concatenated 64 KiB tables is 1 MiB); a larger value
/// from a format is reported as [`WalkErrorKind::BadGeometry`].
pub const MAX_TABLE_BYTES: u64 = 1 << 24;

/// A run of mappings: `size` bytes of IOVA space from `iova` translate to the same
/// number of bytes from `pa`, with one set of permissions and one page size.
///
/// Consecutive leaves are merged into one run when both their IOVAs and their physical
/// addresses are contiguous and their permissions and page sizes are equal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Mapping {
    /// First IOVA of the run.
    pub iova: Iova,
    /// Physical address `iova` translates to.
    pub pa: PhysAddr,
    /// Length of the run in bytes (a multiple of the smallest entry span, never 0).
    pub size: u64,
    /// Effective permissions (the leaf's, intersected with every table entry above it).
    pub perms: Perms,
    /// Page size of every leaf in the run.
    pub page_size: PageSize,
}

impl Mapping {
    /// Last IOVA of the run (inclusive).
    pub fn iova_last(&self) -> Iova {
        Iova(self.iova.0.wrapping_add(self.size.wrapping_sub(1)))
    }
    /// Last physical address of the run (inclusive).
    pub fn pa_last(&self) -> PhysAddr {
        PhysAddr(self.pa.0.wrapping_add(self.size.wrapping_sub(1)))
    }
    /// The physical address `iova` translates to, if it lies in the run.
    pub fn translate(&self, iova: Iova) -> Option<PhysAddr> {
        let off = iova.0.checked_sub(self.iova.0)?;
        (off < self.size).then(|| PhysAddr(self.pa.0 + off))
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "iova {}-{} -> pa {}-{} {} ({} pages, {:#x} bytes)",
            self.iova,
            self.iova_last(),
            self.pa,
            self.pa_last(),
            self.perms,
            self.page_size,
            self.size
        )
    }
}

/// A page-table page (or a run of contiguous pages forming one table) the walk visited.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TablePage {
    /// Physical address of the table (aligned to `bytes`).
    pub addr: PhysAddr,
    /// Size of the table in bytes.
    pub bytes: u64,
    /// Level of the table.
    pub level: u8,
}

impl fmt::Display for TablePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {} table {} ({:#x} bytes)",
            self.level, self.addr, self.bytes
        )
    }
}

/// What the walker does with a malformed entry or an unreadable table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WalkMode {
    /// Stop at the first problem and return it as the error.
    #[default]
    Strict,
    /// Record the problem, skip the offending entry and carry on; the result lists
    /// every problem (for dumps that mark the bad entries).
    Lenient,
}

/// Bounds and error policy of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// Highest root level accepted (default 6, AMD-Vi v1's deepest).
    pub max_levels: u8,
    /// Most table reads attempted, the root included, failed reads included (default
    /// 2^20: 4 GiB of 4 KiB tables, enough for 2 TiB mapped with 4 KiB pages).
    pub max_tables: usize,
    /// Most mapping runs produced (default 2^24).
    pub max_mappings: u64,
    /// Most problems recorded in lenient mode (default 4096); further ones are only
    /// counted.
    pub max_problems: usize,
    /// Strict or lenient.
    pub mode: WalkMode,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_levels: 6,
            max_tables: 1 << 20,
            max_mappings: 1 << 24,
            max_problems: 4096,
            mode: WalkMode::Strict,
        }
    }
}

impl WalkLimits {
    /// The default limits in lenient mode.
    pub fn lenient() -> Self {
        Self {
            mode: WalkMode::Lenient,
            ..Self::default()
        }
    }
}

/// Which budget of [`WalkLimits`] ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// [`WalkLimits::max_tables`].
    Tables(usize),
    /// [`WalkLimits::max_mappings`].
    Mappings(u64),
}

/// What went wrong in a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkErrorKind {
    /// The table an entry points to (or the root table) could not be read.
    Memory(MemError),
    /// The format refused the entry.
    BadEntry(EntryError),
    /// A table pointer (or the root) is not aligned to the table's size.
    MisalignedTable {
        /// The table address.
        next: PhysAddr,
        /// The required alignment (the table's size).
        align: u64,
    },
    /// A leaf's output address is not aligned to its page size.
    MisalignedLeaf {
        /// The leaf's output address.
        base: PhysAddr,
        /// Its page size.
        size: PageSize,
    },
    /// A leaf's page is smaller than the IOVA span of its entry.
    LeafSmallerThanEntry {
        /// The leaf's page size.
        size: PageSize,
        /// The span of the entry (log2).
        span_shift: u32,
    },
    /// A table entry names a next level that is not below the current one, or 0.
    LevelNotBelow {
        /// The level the entry names.
        next_level: u8,
    },
    /// The format's root level is 0 or above [`WalkLimits::max_levels`].
    TooManyLevels {
        /// The format's root level.
        root_level: u8,
        /// The limit.
        max_levels: u8,
    },
    /// The format describes an impossible geometry (a format bug, not a table bug).
    BadGeometry {
        /// What is impossible.
        reason: &'static str,
    },
    /// The entry points to a table on the path from the root to itself.
    Cycle {
        /// The table the entry points to.
        next: PhysAddr,
        /// The ancestor table it overlaps.
        ancestor: PhysAddr,
        /// That ancestor's level.
        ancestor_level: u8,
    },
    /// The entry points to a table already reached by another path (shared tables are
    /// legal for hardware but break preservation bookkeeping).
    Alias {
        /// The table the entry points to.
        next: PhysAddr,
        /// The table seen first that it overlaps.
        first: PhysAddr,
        /// That table's level.
        first_level: u8,
    },
    /// A budget of [`WalkLimits`] ran out.
    BudgetExhausted(Budget),
    /// A present entry covers IOVAs at or above `2^ia_bits` (or past 2^64).
    IovaOverflow {
        /// The format's input address width.
        ia_bits: u32,
    },
}

impl fmt::Display for WalkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalkErrorKind::Memory(e) => write!(f, "cannot read table: {e}"),
            WalkErrorKind::BadEntry(e) => write!(f, "malformed entry: {e}"),
            WalkErrorKind::MisalignedTable { next, align } => {
                write!(f, "table address {next} is not aligned to {align:#x}")
            }
            WalkErrorKind::MisalignedLeaf { base, size } => {
                write!(f, "output address {base} is not aligned to its {size} page")
            }
            WalkErrorKind::LeafSmallerThanEntry { size, span_shift } => write!(
                f,
                "{size} page is smaller than the entry's span of {:#x} bytes",
                1u128 << span_shift
            ),
            WalkErrorKind::LevelNotBelow { next_level } => {
                write!(f, "next-level {next_level} is not below the entry's level")
            }
            WalkErrorKind::TooManyLevels {
                root_level,
                max_levels,
            } => write!(
                f,
                "root level {root_level} is outside 1..={max_levels} (walk limit)"
            ),
            WalkErrorKind::BadGeometry { reason } => write!(f, "bad format geometry: {reason}"),
            WalkErrorKind::Cycle {
                next,
                ancestor,
                ancestor_level,
            } => write!(
                f,
                "cycle: next table {next} overlaps its ancestor, the level {ancestor_level} table {ancestor}"
            ),
            WalkErrorKind::Alias {
                next,
                first,
                first_level,
            } => write!(
                f,
                "alias: next table {next} overlaps the level {first_level} table {first} reached by another path"
            ),
            WalkErrorKind::BudgetExhausted(Budget::Tables(n)) => {
                write!(f, "table budget of {n} tables exhausted")
            }
            WalkErrorKind::BudgetExhausted(Budget::Mappings(n)) => {
                write!(f, "mapping budget of {n} runs exhausted")
            }
            WalkErrorKind::IovaOverflow { ia_bits } => write!(
                f,
                "present entry covers IOVAs beyond the {ia_bits}-bit input address width"
            ),
        }
    }
}

/// A walk error, located at one entry: the entry at `index` of the level-`level` table
/// at `table`, holding `entry`.
///
/// Errors about the root table itself (unreadable, misaligned, bad format geometry) have
/// `index == WalkError::ROOT`, `entry == 0`, `table` the root and `level` the root
/// level. A table that cannot be read is reported at the entry that points to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkError {
    /// What is wrong.
    pub kind: WalkErrorKind,
    /// Level of the table holding the entry.
    pub level: u8,
    /// Index of the entry in its table, or [`WalkError::ROOT`].
    pub index: usize,
    /// Raw value of the entry.
    pub entry: u64,
    /// Physical address of the table holding the entry.
    pub table: PhysAddr,
}

impl WalkError {
    /// The `index` of errors about the root table rather than an entry.
    pub const ROOT: usize = usize::MAX;

    /// Whether the error is about the root table rather than an entry.
    pub fn is_root(&self) -> bool {
        self.index == Self::ROOT
    }

    fn root(kind: WalkErrorKind, level: u8, root: PhysAddr) -> Self {
        Self {
            kind,
            level,
            index: Self::ROOT,
            entry: 0,
            table: root,
        }
    }
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            write!(
                f,
                "root table {} (level {}): {}",
                self.table, self.level, self.kind
            )
        } else {
            write!(
                f,
                "level {} table {} index {:#x} entry {:#018x}: {}",
                self.level, self.table, self.index, self.entry, self.kind
            )
        }
    }
}

/// What [`walk_with`] returns besides the mappings it streamed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkSummary {
    /// Every table read, in visiting order (depth first, IOVA ascending), root first.
    pub tables: Vec<TablePage>,
    /// Problems met (lenient mode only; strict mode returns the first as the error).
    pub problems: Vec<WalkError>,
    /// Problems not recorded because [`WalkLimits::max_problems`] was reached.
    pub problems_dropped: u64,
    /// Leaf entries seen.
    pub leaves: u64,
    /// Mapping runs produced.
    pub runs: u64,
}

/// The result of [`walk`]: the mappings and everything in [`WalkSummary`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Coalesced mapping runs, IOVA ascending.
    pub mappings: Vec<Mapping>,
    /// Every table read, in visiting order, root first.
    pub tables: Vec<TablePage>,
    /// Problems met (lenient mode only).
    pub problems: Vec<WalkError>,
    /// Problems not recorded because [`WalkLimits::max_problems`] was reached.
    pub problems_dropped: u64,
    /// Leaf entries seen.
    pub leaves: u64,
}

impl Walk {
    /// The physical address `iova` translates to according to the collected mappings,
    /// with its mapping run.
    pub fn lookup(&self, iova: Iova) -> Option<(PhysAddr, &Mapping)> {
        let i = self.mappings.partition_point(|m| m.iova <= iova);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        m.translate(iova).map(|pa| (pa, m))
    }
}

/// Walks the tables under `root`, collecting the coalesced mappings.
///
/// Equivalent to [`walk_with`] with a callback pushing every run into a vector.
pub fn walk<F, M>(
    format: &F,
    mem: &M,
    root: PhysAddr,
    limits: &WalkLimits,
) -> Result<Walk, WalkError>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    let mut mappings = Vec::new();
    let s = walk_with(format, mem, root, limits, |m| mappings.push(*m))?;
    Ok(Walk {
        mappings,
        tables: s.tables,
        problems: s.problems,
        problems_dropped: s.problems_dropped,
        leaves: s.leaves,
    })
}

/// Walks the tables under `root`, calling `visit` with every coalesced mapping run in
/// IOVA order, without storing the runs.
///
/// In strict mode the first problem is returned as the error (runs already passed to
/// `visit` stay passed). In lenient mode problems are recorded in the summary and the
/// walk goes on past the offending entry (not into the table it points to: a cycle or
/// alias is not followed a second time); once the table budget is exhausted no further
/// table is read and once the mapping budget is exhausted no further run is produced,
/// each recorded as one problem. Only a root level outside `1..=max_levels` or
/// impossible root geometry is an error in lenient mode.
pub fn walk_with<F, M, V>(
    format: &F,
    mem: &M,
    root: PhysAddr,
    limits: &WalkLimits,
    visit: V,
) -> Result<WalkSummary, WalkError>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
    V: FnMut(&Mapping),
{
    let mut w = Walker {
        format,
        mem,
        limits,
        visit,
        ia_end: 0,
        summary: WalkSummary::default(),
        visited: BTreeMap::new(),
        stack: Vec::new(),
        bufs: Vec::new(),
        pending: None,
        reads: 0,
        tables_stopped: false,
        mappings_stopped: false,
    };
    w.run(root)?;
    Ok(w.summary)
}

/// Size, entry count and entry shift of a table at one level.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) bytes: u64,
    pub(crate) entries: usize,
    pub(crate) shift: u32,
}

impl Geometry {
    /// IOVA bytes covered by the whole table.
    pub(crate) fn coverage(&self) -> u128 {
        (self.entries as u128) << self.shift
    }
}

/// Checks and returns the geometry the format gives `level`.
pub(crate) fn geometry<F: Format + ?Sized>(
    format: &F,
    level: u8,
) -> Result<Geometry, WalkErrorKind> {
    let bytes = format.table_bytes(level);
    if !bytes.is_power_of_two() || bytes < 8 {
        return Err(WalkErrorKind::BadGeometry {
            reason: "table size is not a power of two of at least 8 bytes",
        });
    }
    if bytes > MAX_TABLE_BYTES {
        return Err(WalkErrorKind::BadGeometry {
            reason: "table size above the walker's 16 MiB maximum",
        });
    }
    let shift = format.entry_shift(level);
    if !(12..64).contains(&shift) {
        return Err(WalkErrorKind::BadGeometry {
            reason: "entry span outside 4 KiB..2^63 bytes",
        });
    }
    Ok(Geometry {
        bytes,
        entries: (bytes / 8) as usize,
        shift,
    })
}

/// Checks the root level against the limit and returns the root geometry.
pub(crate) fn root_geometry<F: Format + ?Sized>(
    format: &F,
    max_levels: u8,
    root: PhysAddr,
) -> Result<(u8, Geometry, u128), WalkError> {
    let level = format.root_level();
    if level == 0 || level > max_levels {
        return Err(WalkError::root(
            WalkErrorKind::TooManyLevels {
                root_level: level,
                max_levels,
            },
            level,
            root,
        ));
    }
    let g = geometry(format, level).map_err(|k| WalkError::root(k, level, root))?;
    let ia_bits = format.ia_bits();
    if ia_bits == 0 || ia_bits > 64 {
        return Err(WalkError::root(
            WalkErrorKind::BadGeometry {
                reason: "input address width outside 1..=64 bits",
            },
            level,
            root,
        ));
    }
    Ok((level, g, 1u128 << ia_bits))
}

/// Checks a table entry at `level` (entry span `1 << span_shift`) pointing to `next` at
/// `next_level`; returns the next table's geometry.
pub(crate) fn check_table_entry<F: Format + ?Sized>(
    format: &F,
    level: u8,
    span_shift: u32,
    next: PhysAddr,
    next_level: u8,
) -> Result<Geometry, WalkErrorKind> {
    if next_level == 0 || next_level >= level {
        return Err(WalkErrorKind::LevelNotBelow { next_level });
    }
    let g = geometry(format, next_level)?;
    if g.shift >= span_shift || g.coverage() > 1u128 << span_shift {
        return Err(WalkErrorKind::BadGeometry {
            reason: "next table covers more IOVA space than the entry pointing to it",
        });
    }
    if !next.is_aligned(g.bytes) {
        return Err(WalkErrorKind::MisalignedTable {
            next,
            align: g.bytes,
        });
    }
    if next.checked_add(g.bytes - 1).is_none() {
        return Err(WalkErrorKind::Memory(MemError::Overflow {
            addr: next,
            len: g.bytes,
        }));
    }
    Ok(g)
}

/// Checks a leaf in an entry of span `1 << span_shift` at `slot` and returns the
/// physical address of the slot's first byte.
pub(crate) fn leaf_pa(
    base: PhysAddr,
    size: PageSize,
    span_shift: u32,
    slot: u64,
) -> Result<PhysAddr, WalkErrorKind> {
    if size.shift() < span_shift {
        return Err(WalkErrorKind::LeafSmallerThanEntry { size, span_shift });
    }
    if !base.is_aligned(size.bytes()) {
        return Err(WalkErrorKind::MisalignedLeaf { base, size });
    }
    // base is a multiple of size, so base + (anything below size) cannot overflow.
    Ok(PhysAddr(base.0 + (slot & (size.bytes() - 1))))
}

struct Frame {
    level: u8,
    addr: PhysAddr,
    /// IOVA of entry 0.
    base: u64,
    shift: u32,
    entries: usize,
    next: usize,
    perms: Perms,
}

struct Walker<'a, F: ?Sized, M: ?Sized, V> {
    format: &'a F,
    mem: &'a M,
    limits: &'a WalkLimits,
    visit: V,
    /// `2^ia_bits`.
    ia_end: u128,
    summary: WalkSummary,
    /// Byte ranges of tables read: start -> (last byte, level).
    visited: BTreeMap<u64, (u64, u8)>,
    stack: Vec<Frame>,
    /// One table buffer per depth, reused.
    bufs: Vec<Vec<u64>>,
    pending: Option<Mapping>,
    /// Table reads attempted (successful or not), checked against `max_tables`.
    reads: usize,
    tables_stopped: bool,
    mappings_stopped: bool,
}

impl<F, M, V> Walker<'_, F, M, V>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
    V: FnMut(&Mapping),
{
    fn lenient(&self) -> bool {
        self.limits.mode == WalkMode::Lenient
    }

    /// Strict: returns the error. Lenient: records it and returns Ok.
    fn problem(&mut self, e: WalkError) -> Result<(), WalkError> {
        if !self.lenient() {
            return Err(e);
        }
        if self.summary.problems.len() < self.limits.max_problems {
            self.summary.problems.push(e);
        } else {
            self.summary.problems_dropped += 1;
        }
        Ok(())
    }

    fn run(&mut self, root: PhysAddr) -> Result<(), WalkError> {
        let (level, g, ia_end) = root_geometry(self.format, self.limits.max_levels, root)?;
        self.ia_end = ia_end;
        if !root.is_aligned(g.bytes) {
            let kind = WalkErrorKind::MisalignedTable {
                next: root,
                align: g.bytes,
            };
            return self.problem(WalkError::root(kind, level, root));
        }
        if root.checked_add(g.bytes - 1).is_none() {
            let kind = WalkErrorKind::Memory(MemError::Overflow {
                addr: root,
                len: g.bytes,
            });
            return self.problem(WalkError::root(kind, level, root));
        }
        if let Err(kind) = self.enter(root, level, g, 0, Perms::RWX) {
            return self.problem(WalkError::root(kind, level, root));
        }
        self.descend()?;
        self.flush();
        Ok(())
    }

    /// Checks budget and visited set, reads the table and pushes its frame.
    fn enter(
        &mut self,
        addr: PhysAddr,
        level: u8,
        g: Geometry,
        base: u64,
        perms: Perms,
    ) -> Result<(), WalkErrorKind> {
        let last = addr.0 + (g.bytes - 1);
        if let Some(f) = self
            .stack
            .iter()
            .find(|f| f.addr.0 <= last && addr.0 <= f.addr.0 + (f.entries as u64 * 8 - 1))
        {
            return Err(WalkErrorKind::Cycle {
                next: addr,
                ancestor: f.addr,
                ancestor_level: f.level,
            });
        }
        if let Some((&start, &(end, lvl))) = self.visited.range(..=last).next_back() {
            if end >= addr.0 {
                return Err(WalkErrorKind::Alias {
                    next: addr,
                    first: PhysAddr(start),
                    first_level: lvl,
                });
            }
        }
        if self.reads >= self.limits.max_tables {
            return Err(WalkErrorKind::BudgetExhausted(Budget::Tables(
                self.limits.max_tables,
            )));
        }
        self.reads += 1;
        let depth = self.stack.len();
        if self.bufs.len() <= depth {
            self.bufs.resize_with(depth + 1, Vec::new);
        }
        let buf = &mut self.bufs[depth];
        buf.clear();
        buf.resize(g.entries, 0);
        self.mem
            .read(addr, buf.as_mut_slice().as_mut_bytes())
            .map_err(WalkErrorKind::Memory)?;
        self.visited.insert(addr.0, (last, level));
        self.summary.tables.push(TablePage {
            addr,
            bytes: g.bytes,
            level,
        });
        self.stack.push(Frame {
            level,
            addr,
            base,
            shift: g.shift,
            entries: g.entries,
            next: 0,
            perms,
        });
        Ok(())
    }

    fn descend(&mut self) -> Result<(), WalkError> {
        while let Some(top) = self.stack.last_mut() {
            if top.next >= top.entries {
                self.stack.pop();
                continue;
            }
            let index = top.next;
            top.next += 1;
            let (level, table, base, shift, perms) =
                (top.level, top.addr, top.base, top.shift, top.perms);
            let depth = self.stack.len() - 1;
            let raw = u64::from_le(self.bufs[depth][index]);
            let site = |kind| WalkError {
                kind,
                level,
                index,
                entry: raw,
                table,
            };
            let entry = match self.format.decode(level, raw) {
                Ok(Entry::Invalid) => continue,
                Ok(e) => e,
                Err(e) => {
                    self.problem(site(WalkErrorKind::BadEntry(e)))?;
                    continue;
                }
            };
            let slot = base as u128 + ((index as u128) << shift);
            let slot_end = slot + (1u128 << shift);
            if slot_end > self.ia_end {
                let ia_bits = self.format.ia_bits();
                self.problem(site(WalkErrorKind::IovaOverflow { ia_bits }))?;
                continue;
            }
            // slot_end <= 2^64, so slot fits in 64 bits.
            let slot = slot as u64;
            match entry {
                Entry::Invalid => {}
                Entry::Leaf {
                    base: out,
                    size,
                    perms: leaf_perms,
                } => {
                    let pa = match leaf_pa(out, size, shift, slot) {
                        Ok(pa) => pa,
                        Err(kind) => {
                            self.problem(site(kind))?;
                            continue;
                        }
                    };
                    self.summary.leaves += 1;
                    if let Err(kind) =
                        self.emit(slot, pa, 1u64 << shift, perms.intersect(leaf_perms), size)
                    {
                        self.problem(site(kind))?;
                    }
                }
                Entry::Table {
                    next,
                    level: next_level,
                    perms: table_perms,
                } => {
                    if self.tables_stopped {
                        continue;
                    }
                    let res = check_table_entry(self.format, level, shift, next, next_level)
                        .and_then(|g| {
                            self.enter(next, next_level, g, slot, perms.intersect(table_perms))
                        });
                    if let Err(kind) = res {
                        if let WalkErrorKind::BudgetExhausted(_) = kind {
                            self.tables_stopped = true;
                        }
                        self.problem(site(kind))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds one leaf slot to the pending run, or starts a new run.
    fn emit(
        &mut self,
        iova: u64,
        pa: PhysAddr,
        span: u64,
        perms: Perms,
        page_size: PageSize,
    ) -> Result<(), WalkErrorKind> {
        if self.mappings_stopped {
            return Ok(());
        }
        if let Some(p) = &mut self.pending {
            if p.perms == perms
                && p.page_size == page_size
                && p.iova.0.checked_add(p.size) == Some(iova)
                && p.pa.0.checked_add(p.size) == Some(pa.0)
            {
                if let Some(size) = p.size.checked_add(span) {
                    p.size = size;
                    return Ok(());
                }
            }
        }
        self.flush();
        if self.summary.runs >= self.limits.max_mappings {
            self.mappings_stopped = true;
            return Err(WalkErrorKind::BudgetExhausted(Budget::Mappings(
                self.limits.max_mappings,
            )));
        }
        self.summary.runs += 1;
        self.pending = Some(Mapping {
            iova: Iova(iova),
            pa,
            size: span,
            perms,
            page_size,
        });
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            (self.visit)(&p);
        }
    }
}
