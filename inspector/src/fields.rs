//! What the AMD-Vi and SMMUv3 plug-ins show alike: registers decoded by field (text and
//! JSON), the structure problems a scan found, and the problems of a page-table walk
//! turned into typed [`StructureProblem`]s naming the requester.

use crate::error::StructureProblem;
use crate::json::Json;
use crate::model::TableWalk;
use iommu_core::PhysAddr;
use std::io::{self, Write};

/// One register: its name, offset, value and fields (name, value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// Name in the specification's words.
    pub name: &'static str,
    /// Offset from the MMIO base.
    pub offset: u64,
    /// Width in bytes (4 or 8).
    pub width: u32,
    /// Value.
    pub value: u64,
    /// Fields shown.
    pub fields: Vec<(&'static str, u64)>,
}

/// `NAME=v` for small values, `NAME=0x…` otherwise, separated by spaces.
pub fn fields_text(f: &[(&str, u64)]) -> String {
    f.iter()
        .map(|(n, v)| {
            if *v > 9 {
                format!("{n}={v:#x}")
            } else {
                format!("{n}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line of a unit's text head: `unit NAME: KIND, registers at BASE`, marked
/// when the registers come from the command line.
pub fn write_unit_line(
    out: &mut dyn Write,
    name: &str,
    kind: &str,
    base: PhysAddr,
    assumed: bool,
) -> io::Result<()> {
    writeln!(
        out,
        "unit {name}: {kind}, registers at {base}{}",
        if assumed {
            " (registers assumed from the command line)"
        } else {
            ""
        }
    )
}

/// The `registers:` section of a unit's text head.
pub fn write_registers_text(regs: &[Register], out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "  registers:")?;
    let w = regs.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in regs {
        writeln!(
            out,
            "    {:<w$} +{:#07x}  {:#018x}",
            r.name, r.offset, r.value
        )?;
        for chunk in r.fields.chunks(8) {
            writeln!(out, "    {:<w$}           {}", "", fields_text(chunk))?;
        }
    }
    Ok(())
}

/// The `registers` member of a unit's JSON head, shaped as VT-d's: one object per
/// register with its name, offset, width, value and fields (numbers).
pub fn write_registers_json(regs: &[Register], j: &mut Json<&mut dyn Write>) -> io::Result<()> {
    j.key("registers")?;
    j.begin_array(false)?;
    for r in regs {
        j.begin_object(true)?;
        j.kv_str("name", r.name)?;
        j.kv_hex("offset", r.offset)?;
        j.kv_uint("width", r.width as u64)?;
        j.kv_hex("value", r.value)?;
        j.key("fields")?;
        j.begin_object(true)?;
        for (n, v) in &r.fields {
            j.kv_uint(n, *v)?;
        }
        j.end_object()?;
        j.end_object()?;
    }
    j.end_array()
}

/// The `problems:` section of a unit's text head (nothing when there are none).
pub fn write_problems_text<'a>(
    problems: impl Iterator<Item = &'a StructureProblem>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut first = true;
    for p in problems {
        if first {
            writeln!(out, "  problems:")?;
            first = false;
        }
        writeln!(out, "    !! {}  at {}: {}", p.requester, p.addr, p.what)?;
    }
    Ok(())
}

/// The `problems` member of a unit's JSON head.
pub fn write_problems_json<'a>(
    problems: impl Iterator<Item = &'a StructureProblem>,
    j: &mut Json<&mut dyn Write>,
) -> io::Result<()> {
    j.key("problems")?;
    j.begin_array(false)?;
    for p in problems {
        j.begin_object(true)?;
        j.kv_str("requester", &p.requester)?;
        j.kv_hex("addr", p.addr.0)?;
        j.kv_str("what", &p.what)?;
        j.end_object()?;
    }
    j.end_array()
}

/// An entry of a unit's event log (AMD-Vi) or event queue (SMMUv3) that software has
/// not consumed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    /// Where it is.
    pub addr: PhysAddr,
    /// Its raw qwords, low first.
    pub raw: Vec<u64>,
    /// The event code or type.
    pub code: u8,
    /// Its name in the specification's words (`IO_PAGE_FAULT`, `F_TRANSLATION`).
    pub name: &'static str,
    /// Its fields, decoded.
    pub detail: String,
}

/// The pending events: their ring, how many, and the entries read (at most the ring's
/// size), or why the ring could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventRing {
    /// What the ring is (`event log at 0x… (256 entries), head 0x…, tail 0x…`).
    pub what: String,
    /// The pending entries, oldest first.
    pub pending: Vec<PendingEvent>,
    /// Why the ring (or part of it) could not be read.
    pub problem: Option<String>,
}

/// The events section of a unit's text head.
pub fn write_events_text(ring: &EventRing, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "  {}: {} pending", ring.what, ring.pending.len())?;
    if let Some(p) = &ring.problem {
        writeln!(out, "    !! {p}")?;
    }
    for e in &ring.pending {
        writeln!(
            out,
            "    {} {:#04x} {}  {}",
            e.addr, e.code, e.name, e.detail
        )?;
    }
    Ok(())
}

/// The `events` member of a unit's JSON head.
pub fn write_events_json(ring: &EventRing, j: &mut Json<&mut dyn Write>) -> io::Result<()> {
    j.key("events")?;
    j.begin_object(false)?;
    j.kv_str("ring", &ring.what)?;
    j.key("problem")?;
    match &ring.problem {
        Some(p) => j.string(p)?,
        None => j.null()?,
    }
    j.key("pending")?;
    j.begin_array(false)?;
    for e in &ring.pending {
        j.begin_object(true)?;
        j.kv_hex("addr", e.addr.0)?;
        j.kv_hex_list("raw", &e.raw)?;
        j.kv_uint("code", e.code as u64)?;
        j.kv_str("name", e.name)?;
        j.kv_str("detail", &e.detail)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.end_object()
}

/// The problems of a tree walk as typed problems of `unit` naming `requester` (the
/// first user of the tree): an entry's address, or the root's for a walk that could
/// not start.
pub fn walk_problems(
    unit: &str,
    requester: &str,
    root: PhysAddr,
    w: TableWalk,
) -> Vec<StructureProblem> {
    let p = |addr, what| StructureProblem {
        unit: unit.into(),
        requester: requester.into(),
        addr,
        what,
    };
    let mut out: Vec<StructureProblem> = w.fatal.into_iter().map(|f| p(root, f)).collect();
    for e in w.problems {
        let addr = if e.is_root() {
            e.table
        } else {
            PhysAddr(e.table.0 + 8 * e.index as u64)
        };
        out.push(p(addr, e.to_string()));
    }
    out
}
