//! Translating one IOVA, step by step.
//!
//! [`translate`] reads one entry per level, as hardware does, and records every step so
//! that a tool can print the walk. It applies the same checks as the walker
//! ([`walk_with`](super::walk_with)); on well-formed tables the two agree on every IOVA (tested).

use super::walk::{check_table_entry, leaf_pa, root_geometry, WalkError, WalkErrorKind};
use super::{Entry, Format, Perms};
use crate::addr::{Iova, PageSize, PhysAddr};
use crate::mem::PhysMem;
use alloc::vec::Vec;
use core::fmt;

/// One level of a translation: the entry read and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Level of the table read.
    pub level: u8,
    /// Physical address of the table.
    pub table: PhysAddr,
    /// Index of the entry in the table.
    pub index: usize,
    /// Raw value of the entry.
    pub raw: u64,
    /// The entry as the format decodes it.
    pub entry: Entry,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {} table {} [{:#x}] = {:#018x}: ",
            self.level, self.table, self.index, self.raw
        )?;
        match self.entry {
            Entry::Invalid => f.write_str("not present"),
            Entry::Table { next, level, perms } => {
                write!(f, "table -> level {level} table {next} ({perms})")
            }
            Entry::Leaf { base, size, perms } => {
                write!(f, "leaf {size} page at {base} ({perms})")
            }
        }
    }
}

/// How a translation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The IOVA translates.
    Mapped {
        /// The physical address of the IOVA's byte.
        pa: PhysAddr,
        /// Effective permissions (intersected over the path).
        perms: Perms,
        /// Size of the page holding it.
        page_size: PageSize,
    },
    /// The entry at `level` (the last step) is not present.
    NotPresent {
        /// Level of the non-present entry.
        level: u8,
    },
    /// The IOVA is at or above `2^ia_bits`; no table was read.
    BeyondInputWidth {
        /// The format's input address width.
        ia_bits: u32,
    },
    /// A level-skipping entry at `level` (the last step) points to a table that covers
    /// less than the entry, and the IOVA lies in the part not covered (its skipped bits
    /// are not zero).
    SkippedBitsSet {
        /// Level of the level-skipping entry.
        level: u8,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Mapped {
                pa,
                perms,
                page_size,
            } => write!(f, "translates to {pa} ({perms}, {page_size} page)"),
            Outcome::NotPresent { level } => write!(f, "not present at level {level}"),
            Outcome::BeyondInputWidth { ia_bits } => {
                write!(f, "beyond the {ia_bits}-bit input address width")
            }
            Outcome::SkippedBitsSet { level } => write!(
                f,
                "address bits skipped by the level {level} entry are not zero"
            ),
        }
    }
}

/// A translation of one IOVA: every entry read and the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The IOVA translated.
    pub iova: Iova,
    /// The entries read, root first.
    pub steps: Vec<Step>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Translation {
    /// The physical address, if the IOVA translates.
    pub fn pa(&self) -> Option<PhysAddr> {
        match self.outcome {
            Outcome::Mapped { pa, .. } => Some(pa),
            _ => None,
        }
    }
}

impl fmt::Display for Translation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "iova {}:", self.iova)?;
        for s in &self.steps {
            writeln!(f, "  {s}")?;
        }
        write!(f, "  => {}", self.outcome)
    }
}

/// Translates one IOVA through the tables under `root`, reading one entry per level.
///
/// Returns the steps and the outcome; a malformed entry or an unreadable table is an
/// error located like the walker's (a table that cannot be read is reported at the entry
/// pointing to it, or as a root error). The root level must not exceed the default
/// [`WalkLimits::max_levels`](super::WalkLimits::max_levels).
pub fn translate<F, M>(
    format: &F,
    mem: &M,
    root: PhysAddr,
    iova: Iova,
) -> Result<Translation, WalkError>
where
    F: Format + ?Sized,
    M: PhysMem + ?Sized,
{
    let max_levels = super::WalkLimits::default().max_levels;
    let (mut level, mut g, ia_end) = root_geometry(format, max_levels, root)?;
    let mut t = Translation {
        iova,
        steps: Vec::new(),
        outcome: Outcome::BeyondInputWidth {
            ia_bits: format.ia_bits(),
        },
    };
    if iova.0 as u128 >= ia_end || iova.0 as u128 >= g.coverage() {
        return Ok(t);
    }
    if !root.is_aligned(g.bytes) {
        return Err(WalkError {
            kind: WalkErrorKind::MisalignedTable {
                next: root,
                align: g.bytes,
            },
            level,
            index: WalkError::ROOT,
            entry: 0,
            table: root,
        });
    }
    let mut table = root;
    let mut base: u64 = 0;
    let mut perms = Perms::RWX;
    // Where a failed read of `table` is reported: the entry pointing to it, or the root.
    let mut parent: Option<(u8, PhysAddr, usize, u64)> = None;
    // Levels strictly decrease, so this loop runs at most `max_levels` times.
    loop {
        let index = ((iova.0 - base) >> g.shift) as usize;
        let site = |kind| match parent {
            Some((level, table, index, entry)) => WalkError {
                kind,
                level,
                index,
                entry,
                table,
            },
            None => WalkError {
                kind,
                level,
                index: WalkError::ROOT,
                entry: 0,
                table: root,
            },
        };
        // index < entries, so the offset stays inside the (non-overflowing) table.
        let raw = mem
            .read_u64(PhysAddr(table.0 + index as u64 * 8))
            .map_err(|e| site(WalkErrorKind::Memory(e)))?;
        let here = |kind| WalkError {
            kind,
            level,
            index,
            entry: raw,
            table,
        };
        let entry = format
            .decode(level, raw)
            .map_err(|e| here(WalkErrorKind::BadEntry(e)))?;
        t.steps.push(Step {
            level,
            table,
            index,
            raw,
            entry,
        });
        let slot = base + ((index as u64) << g.shift);
        let slot_end = slot as u128 + (1u128 << g.shift);
        match entry {
            Entry::Invalid => {
                t.outcome = Outcome::NotPresent { level };
                return Ok(t);
            }
            _ if slot_end > ia_end => {
                return Err(here(WalkErrorKind::IovaOverflow {
                    ia_bits: format.ia_bits(),
                }));
            }
            Entry::Leaf {
                base: out,
                size,
                perms: leaf_perms,
            } => {
                let pa = leaf_pa(out, size, g.shift, slot).map_err(here)?;
                t.outcome = Outcome::Mapped {
                    pa: PhysAddr(pa.0 + (iova.0 - slot)),
                    perms: perms.intersect(leaf_perms),
                    page_size: size,
                };
                return Ok(t);
            }
            Entry::Table {
                next,
                level: next_level,
                perms: table_perms,
            } => {
                let ng =
                    check_table_entry(format, level, g.shift, next, next_level).map_err(here)?;
                perms = perms.intersect(table_perms);
                if (iova.0 - slot) as u128 >= ng.coverage() {
                    t.outcome = Outcome::SkippedBitsSet { level };
                    return Ok(t);
                }
                parent = Some((level, table, index, raw));
                table = next;
                base = slot;
                level = next_level;
                g = ng;
            }
        }
    }
}
