//! The model's own page-table walker: one address per call, as the hardware walks per
//! request.
//!
//! Written from the specification as `shared/reference/amdvi.md` §7 records it, using
//! only the bit layouts of `amdvi::hw` (never the driver side's `amdvi::format`), so
//! that the model can catch a bug in the driver's reader:
//!
//! - v1 (host) tables, DTE Mode 1–6 levels (§7.1): a level-`L` table is indexed with
//!   DVA bits `12 + 9(L-1) + 8 : 12 + 9(L-1)` (the Mode-6 root with bits 63:57 only);
//!   PR=0 is not present; IR/IW are ANDed over every level; NextLevel 1–6 points to a
//!   table of that level, which may skip levels (QEMU follows NextLevel), the skipped
//!   DVA bits required to be zero (unconfirmed in the reference; the model treats set
//!   bits as a bad level, RZ); NextLevel 0 is a page of the level's own span (never at
//!   level 6, Linux: "the top most level cannot have translation entries"); NextLevel 7
//!   a page of `2^(n+1)` bytes, `n` the lowest clear bit of `Address | 0xfff`, larger
//!   than the level's own pages and smaller than the table's span (Linux
//!   `amdv1pt_possible_sizes`), the entry replicated over the slots it spans (the
//!   walker reads one of them, as hardware does);
//! - reserved bits 56:52 set, a NextLevel not below the entry's level, or address bits
//!   below a large page's size set: a bad entry (IO_PAGE_FAULT with PR=1, RZ=1);
//! - v2 (guest) tables (§7.2): x86-64 long mode, 4 or 5 levels, P/RW, PS at levels 2
//!   and 3 (reserved at 4 and 5), bit 12 of a large page is PAT; canonical lower-half
//!   DVAs only (bits at and above 47 / 56 must be zero); the GCR3 table indexed by
//!   PASID, GLX+1 levels of 9 bits each (Linux `__get_gcr3_pte`).
//!
//! The SME C-bit (CPUID 0x8000001F EBX\[5:0\]) is never part of an address: it is
//! masked out of every table pointer and page address read.
//!
//! Table reads go through a caller-given `read` function (the address of one 8-byte
//! entry in, its value out), so a nested walk can translate every guest-table access
//! through the host tables.

use amdvi::hw::dte::{DeviceTableEntry, Glx};
use amdvi::hw::pte::{
    sized_page_shift, NextLevel, ADDR_MASK, IR, IW, PR, RSVD_56_52, V2_ADDR_MASK, V2_P,
    V2_PAT_LARGE, V2_PS, V2_RW,
};
use iommu_core::mem::MemError;

/// Why a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// An entry (or GCR3 entry) is not present, or the address is beyond the tables'
    /// reach: IO_PAGE_FAULT with PR=0.
    NotPresent,
    /// A present entry refused: reserved bits, bad NextLevel, skipped bits set, bad
    /// large-page address: IO_PAGE_FAULT with PR=1, RZ=1.
    Reserved,
    /// A table read failed at `at`: PAGE_TAB_HARDWARE_ERROR.
    Memory {
        /// Address of the entry read.
        at: u64,
        /// What the memory said.
        error: MemError,
    },
    /// A nested walk: the host tables refused read access to a guest structure.
    Permission,
}

/// A walk that found a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaf {
    /// Output address of the input address's byte.
    pub pa: u64,
    /// Read permission over the whole walk.
    pub read: bool,
    /// Write permission over the whole walk.
    pub write: bool,
    /// log2 of the page size.
    pub shift: u32,
}

/// log2 of the span of one entry at `level` (12 + 9(level - 1)).
const fn span(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

/// The mask of the C-bit, if any.
pub(crate) fn c_mask(c_bit: Option<u8>) -> u64 {
    c_bit.map_or(0, |b| 1u64.checked_shl(b as u32).unwrap_or(0))
}

/// Translates `dva` through v1 tables of `levels` (1–6) levels under `root`.
pub(crate) fn v1(
    read: &mut dyn FnMut(u64) -> Result<u64, Fault>,
    root: u64,
    levels: u8,
    dva: u64,
    c_bit: Option<u8>,
) -> Result<Leaf, Fault> {
    let strip = !c_mask(c_bit);
    // Mode n covers DVA bits 12 + 9n - 1 : 0 (Mode 6: all 64).
    let width = span(levels) + 9;
    if width < 64 && dva >> width != 0 {
        return Err(Fault::NotPresent);
    }
    let (mut table, mut level) = (root & ADDR_MASK & strip, levels);
    let (mut r, mut w) = (true, true);
    // NextLevel strictly decreases, so at most `levels` reads.
    loop {
        let index = (dva >> span(level)) & 0x1ff;
        let raw = read(table + 8 * index)?;
        if raw & PR == 0 {
            return Err(Fault::NotPresent);
        }
        if raw & RSVD_56_52 != 0 {
            return Err(Fault::Reserved);
        }
        r &= raw & IR != 0;
        w &= raw & IW != 0;
        let addr = raw & ADDR_MASK & strip;
        let shift = match NextLevel::of(raw) {
            NextLevel::Table(n) => {
                if level == 1 || n >= level {
                    return Err(Fault::Reserved);
                }
                // Skipped levels: DVA bits from the next table's reach up to this
                // entry's span must be zero.
                let reach = span(n) + 9;
                let skipped = (dva >> reach) & ((1u64 << (span(level) - reach)) - 1);
                if skipped != 0 {
                    return Err(Fault::Reserved);
                }
                table = addr;
                level = n;
                continue;
            }
            _ if level >= 6 => return Err(Fault::Reserved),
            NextLevel::Page => {
                if addr & ((1u64 << span(level)) - 1) != 0 {
                    return Err(Fault::Reserved);
                }
                span(level)
            }
            NextLevel::SizedPage => match sized_page_shift(raw & strip) {
                Some(s) if s > span(level) && s < span(level) + 9 => s,
                _ => return Err(Fault::Reserved),
            },
        };
        let mask = (1u64 << shift) - 1;
        return Ok(Leaf {
            pa: (addr & !mask) | (dva & mask),
            read: r,
            write: w,
            shift,
        });
    }
}

/// The top level (0–2) of the GCR3 table of `dte` for `pasid`: `GLX + 1` levels of 9
/// PASID bits each; `None` for the reserved GLX 3 or a PASID wider than the table
/// indexes (an illegal DTE for the caller).
pub(crate) fn gcr3_top(dte: &DeviceTableEntry, pasid: u32) -> Option<u32> {
    let top: u32 = match dte.glx() {
        Glx::One => 0,
        Glx::Two => 1,
        Glx::Three => 2,
        Glx::Reserved => return None,
    };
    let bits = 9 * (top + 1);
    (bits >= 32 || pasid >> bits == 0).then_some(top)
}

/// The guest page-table root of `pasid` from the GCR3 table of `dte` whose top level is
/// `top` ([`gcr3_top`]): 512 entries per level, 9 PASID bits each from the top, V in
/// bit 0 and the pointer in bits 51:12 (reference §7.2, Linux `__get_gcr3_pte`).
pub(crate) fn gcr3(
    read: &mut dyn FnMut(u64) -> Result<u64, Fault>,
    dte: &DeviceTableEntry,
    top: u32,
    pasid: u32,
    c_bit: Option<u8>,
) -> Result<u64, Fault> {
    let strip = !c_mask(c_bit);
    let mut table = dte.gcr3_root() & ADDR_MASK & strip;
    for level in (0..=top).rev() {
        let index = ((pasid >> (9 * level)) & 0x1ff) as u64;
        let e = read(table + 8 * index)?;
        if e & 1 == 0 {
            return Err(Fault::NotPresent);
        }
        table = e & ADDR_MASK & strip;
    }
    Ok(table)
}

/// Translates `gva` through x86-64 long-mode tables of `levels` (4 or 5) levels under
/// `root` (reference §7.2).
pub(crate) fn v2(
    read: &mut dyn FnMut(u64) -> Result<u64, Fault>,
    root: u64,
    levels: u8,
    gva: u64,
    c_bit: Option<u8>,
) -> Result<Leaf, Fault> {
    let strip = !c_mask(c_bit);
    // Canonical lower half: 47 (4-level) or 56 (5-level) bits.
    if gva >> (span(levels) + 8) != 0 {
        return Err(Fault::NotPresent);
    }
    let (mut table, mut level) = (root & V2_ADDR_MASK & strip, levels);
    let mut w = true;
    loop {
        let index = (gva >> span(level)) & 0x1ff;
        let raw = read(table + 8 * index)?;
        if raw & V2_P == 0 {
            return Err(Fault::NotPresent);
        }
        // PS is reserved in PML4Es and PML5Es.
        if level >= 4 && raw & V2_PS != 0 {
            return Err(Fault::Reserved);
        }
        w &= raw & V2_RW != 0;
        let addr = raw & V2_ADDR_MASK & strip;
        let leaf = level == 1 || (raw & V2_PS != 0 && level <= 3);
        if !leaf {
            table = addr;
            level -= 1;
            continue;
        }
        let shift = span(level);
        let mask = (1u64 << shift) - 1;
        // Bit 12 of a 2 MiB / 1 GiB page is PAT; the bits between it and the size
        // are reserved.
        if level > 1 && addr & !V2_PAT_LARGE & mask != 0 {
            return Err(Fault::Reserved);
        }
        return Ok(Leaf {
            pa: (addr & !mask) | (gva & mask),
            read: true,
            write: w,
            shift,
        });
    }
}
