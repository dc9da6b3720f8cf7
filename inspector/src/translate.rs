//! The `walk` command's outputs: one address translated step by step ([`Walk`], from
//! [`crate::arch::ArchUnit::translate`]), as text or JSON (schema [`WALK_SCHEMA`]).

use crate::arch::{Walk, WalkEnd};
use crate::json::Json;
use std::io::{self, Write};

/// Schema name of the JSON walk.
pub const WALK_SCHEMA: &str = "iommu-inspect/walk/v1";

/// Writes the walk as text.
pub fn write_text(t: &Walk, unit: &str, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{} request of iova {:#x} by {}{} through {unit}:",
        if t.write { "write" } else { "read" },
        t.iova.0,
        t.rid,
        t.pasid.map_or(String::new(), |p| format!(" pasid {p:#x}"))
    )?;
    for (i, s) in t.steps.iter().enumerate() {
        let raw: Vec<String> = s.raw.iter().rev().map(|q| format!("{q:#018x}")).collect();
        writeln!(out, "  {}. {} at {:#x}", i + 1, s.what, s.addr.0)?;
        writeln!(out, "       = {}", raw.join(":"))?;
        writeln!(out, "       {}", s.meaning)?;
    }
    match &t.end {
        WalkEnd::Untranslated { pa } => {
            writeln!(out, "  => translation disabled: goes to {pa} untranslated")
        }
        WalkEnd::Mapped {
            pa,
            perms,
            page_size,
            did,
        } => writeln!(
            out,
            "  => translates to {pa} ({perms}, {page_size} page{})",
            did.map_or(String::new(), |d| format!(", domain {d:#06x}"))
        ),
        WalkEnd::Fault {
            code,
            reason,
            detail,
            fpd,
        } => writeln!(
            out,
            "  => fault {code:#04x} ({reason}): {detail}{}",
            if *fpd {
                " [FPD set: blocked, not recorded]"
            } else {
                ""
            }
        ),
    }
}

/// Writes the walk as JSON (schema [`WALK_SCHEMA`]).
pub fn write_json(t: &Walk, unit: &str, out: &mut dyn Write) -> io::Result<()> {
    let mut j = Json::new(out);
    j.begin_object(false)?;
    j.kv_str("schema", WALK_SCHEMA)?;
    j.kv_str("unit", unit)?;
    j.kv_str("bdf", &t.rid.to_string())?;
    j.key("pasid")?;
    match t.pasid {
        Some(p) => j.uint(p as u64)?,
        None => j.null()?,
    }
    j.kv_hex("iova", t.iova.0)?;
    j.kv_str("access", if t.write { "write" } else { "read" })?;
    j.key("steps")?;
    j.begin_array(false)?;
    for s in &t.steps {
        j.begin_object(true)?;
        j.kv_str("what", &s.what)?;
        j.kv_hex("addr", s.addr.0)?;
        j.kv_hex_list("raw", &s.raw)?;
        j.kv_str("meaning", &s.meaning)?;
        j.end_object()?;
    }
    j.end_array()?;
    j.key("result")?;
    j.begin_object(true)?;
    match &t.end {
        WalkEnd::Untranslated { pa } => {
            j.kv_str("kind", "untranslated")?;
            j.kv_hex("pa", pa.0)?;
        }
        WalkEnd::Mapped {
            pa,
            perms,
            page_size,
            did,
        } => {
            j.kv_str("kind", "mapped")?;
            j.kv_hex("pa", pa.0)?;
            j.kv_str("perms", &perms.to_string())?;
            j.kv_hex("page_size", page_size.bytes())?;
            j.key("domain")?;
            match did {
                Some(d) => j.uint(*d as u64)?,
                None => j.null()?,
            }
        }
        WalkEnd::Fault {
            code,
            reason,
            detail,
            fpd,
        } => {
            j.kv_str("kind", "fault")?;
            j.kv_uint("fault", *code as u64)?;
            j.kv_str("reason", reason)?;
            j.kv_str("detail", detail)?;
            j.kv_bool("fpd", *fpd)?;
        }
    }
    j.end_object()?;
    j.end_object()
}
