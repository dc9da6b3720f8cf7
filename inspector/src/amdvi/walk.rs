//! One address translated for one DeviceID (and PASID), step by step, ending in what
//! the request meets and the event code the unit would log; the order of checks is
//! the emulator's model (`emulator::amdvi`, reference `amdvi.md` §6–§10).

use super::unit::{
    summary_of, DEV_TAB_HARDWARE_ERROR, ILLEGAL_DEV_TABLE_ENTRY, IO_PAGE_FAULT,
    PAGE_TAB_HARDWARE_ERROR, TARGET_ABORT,
};
use super::{AmdViState, DevEntry, Handling};
use crate::arch::{Step, Walk, WalkEnd};
use crate::error::InspectError;
use crate::image::Image;
use amdvi::format::{GuestV2, HostV1};
use amdvi::hw::dte::{DeviceTableEntry, Glx, Mode};
use amdvi::hw::regs::{self, field_mask, EXCL_BASE};
use iommu_core::mem::PhysMem;
use iommu_core::pgtable::{
    translate as pt_translate, Entry, Format, Outcome, Perms, WalkErrorKind,
};
use iommu_core::{Iova, PhysAddr, RequesterId};

fn fault(code: u8, detail: String, fpd: bool) -> WalkEnd {
    let reason = match code {
        ILLEGAL_DEV_TABLE_ENTRY => "ILLEGAL_DEV_TABLE_ENTRY",
        IO_PAGE_FAULT => "IO_PAGE_FAULT",
        DEV_TAB_HARDWARE_ERROR => "DEV_TAB_HARDWARE_ERROR",
        PAGE_TAB_HARDWARE_ERROR => "PAGE_TAB_HARDWARE_ERROR",
        _ => "target abort (no event logged)",
    };
    WalkEnd::Fault {
        code,
        reason,
        detail,
        fpd,
    }
}

/// `walk` on an AMD-Vi unit.
pub fn translate(
    u: &AmdViState,
    image: &Image,
    rid: RequesterId,
    pasid: Option<u32>,
    iova: Iova,
    write: bool,
) -> Result<Walk, InspectError> {
    if rid.segment != u.segment {
        return Err(InspectError::Usage(format!(
            "device {rid} is on PCI segment {:#06x}, but unit {} serves segment {:#06x}",
            rid.segment, u.name, u.segment
        )));
    }
    let mut steps = Vec::new();
    let end = run(u, image, rid.sid(), pasid, iova.0, write, &mut steps);
    Ok(Walk {
        rid,
        pasid,
        iova,
        write,
        steps,
        end,
    })
}

fn untranslated(iova: u64) -> WalkEnd {
    WalkEnd::Untranslated { pa: PhysAddr(iova) }
}

fn run(
    u: &AmdViState,
    image: &Image,
    devid: u16,
    pasid: Option<u32>,
    iova: u64,
    write: bool,
    steps: &mut Vec<Step>,
) -> WalkEnd {
    if !u.enabled() {
        return untranslated(iova);
    }
    if devid as u32 >= u.devtab_entries() {
        return fault(
            ILLEGAL_DEV_TABLE_ENTRY,
            format!(
                "DeviceID {devid:#06x} beyond the device table's {} entries (Size {:#x})",
                u.devtab_entries(),
                u.devtab_size()
            ),
            false,
        );
    }
    let at = PhysAddr(u.devtab().0 + devid as u64 * regs::DTE_BYTES);
    let mut q = [0u64; 4];
    for (i, v) in q.iter_mut().enumerate() {
        match image.read_u64(PhysAddr(at.0 + 8 * i as u64)) {
            Ok(x) => *v = x,
            Err(e) => {
                return fault(
                    DEV_TAB_HARDWARE_ERROR,
                    format!("DTE of DeviceID {devid:#06x} at {at} not readable: {e}"),
                    false,
                )
            }
        }
    }
    let dte = DeviceTableEntry::from_qwords(q);
    let handling = if dte.valid() {
        Handling::Abort
    } else {
        Handling::PassThrough
    };
    let meaning = summary_of(
        u,
        &DevEntry {
            devid,
            addr: at,
            dte,
            pasid: None,
            gcr3: None,
            handling: match u.illegal(&dte) {
                Some(w) if dte.valid() => Handling::Illegal(w),
                _ => match (dte.valid(), dte.translation_valid(), dte.mode()) {
                    (true, true, Mode::Levels(l)) if !dte.guest_valid() => Handling::V1(l),
                    (true, true, _) if dte.guest_valid() => {
                        Handling::V2(dte.guest_paging_mode().levels().unwrap_or(4))
                    }
                    (true, true, _) if dte.ir() || dte.iw() => Handling::Untranslated,
                    (true, true, _) => Handling::Blocked,
                    _ => handling,
                },
            },
            tree: None,
        },
    );
    steps.push(Step {
        what: format!("DTE of DeviceID {devid:#06x}"),
        addr: at,
        raw: q.to_vec(),
        meaning,
    });
    if !dte.valid() {
        return untranslated(iova);
    }
    // The model's order: reserved bits and Mode 7, then TV, the exclusion range, a
    // PASID on a GV=0 entry, then the rest of what makes the entry illegal.
    if dte.reserved_bits() != [0; 4] || dte.mode() == Mode::Reserved {
        if let Some(w) = u.illegal(&dte) {
            return fault(ILLEGAL_DEV_TABLE_ENTRY, w, false);
        }
    }
    if !dte.translation_valid() {
        return fault(
            TARGET_ABORT,
            "DTE V=1, TV=0: no translation information, the request is target-aborted".into(),
            true,
        );
    }
    let exb = u.reg(regs::EXCL_BASE);
    if EXCL_BASE::EX_EN.read(exb) == 1 && (EXCL_BASE::ALLOW.read(exb) == 1 || dte.exclusion()) {
        let first = exb & field_mask(EXCL_BASE::BASE);
        let last = u.reg(regs::EXCL_LIMIT) | 0xfff;
        if (first..=last).contains(&iova) {
            return untranslated(iova);
        }
    }
    let dte_perms = Perms {
        read: dte.ir(),
        write: dte.iw(),
        exec: false,
    };
    let suppressed = dte.suppress_all() || dte.suppress_events();
    let denied = |p: Perms| if write { !p.write } else { !p.read };
    if pasid.is_some() && !dte.guest_valid() {
        return fault(
            ILLEGAL_DEV_TABLE_ENTRY,
            "a request with a PASID to a DTE with GV=0".into(),
            false,
        );
    }
    if let Some(w) = u.illegal(&dte) {
        return fault(ILLEGAL_DEV_TABLE_ENTRY, w, false);
    }
    let guest = dte.guest_valid() && (pasid.is_some() || dte.giov());
    let (root, p) = if guest {
        let Ok(format) = GuestV2::from_dte(&dte).and_then(|f| f.with_c_bit(u.c_bit)) else {
            return fault(
                ILLEGAL_DEV_TABLE_ENTRY,
                "DTE refused by the v2 format".into(),
                false,
            );
        };
        let p = pasid.unwrap_or(0);
        match gcr3_path(u, image, &dte, p, steps) {
            Ok(root) => {
                return pages(
                    image, &format, root, iova, dte_perms, write, &dte, suppressed, steps,
                )
            }
            Err(end) => return end,
        }
    } else {
        match dte.mode() {
            Mode::Levels(l) => (u.addr(dte.page_table_root()), l),
            _ => {
                if denied(dte_perms) {
                    return fault(
                        IO_PAGE_FAULT,
                        format!(
                            "DTE Mode 0 without the {} permission",
                            if write { "IW" } else { "IR" }
                        ),
                        suppressed,
                    );
                }
                return untranslated(iova);
            }
        }
    };
    match HostV1::new(p).and_then(|f| f.with_c_bit(u.c_bit)) {
        Ok(f) => pages(
            image,
            &f.with_sized_pages(true),
            root,
            iova,
            dte_perms,
            write,
            &dte,
            suppressed,
            steps,
        ),
        Err(e) => fault(ILLEGAL_DEV_TABLE_ENTRY, e.to_string(), false),
    }
}

/// Walks the GCR3 table to the guest root of `pasid`, recording each entry.
fn gcr3_path(
    u: &AmdViState,
    image: &Image,
    dte: &DeviceTableEntry,
    pasid: u32,
    steps: &mut Vec<Step>,
) -> Result<PhysAddr, WalkEnd> {
    let top: u8 = match dte.glx() {
        Glx::One => 0,
        Glx::Two => 1,
        Glx::Three => 2,
        Glx::Reserved => {
            return Err(fault(
                ILLEGAL_DEV_TABLE_ENTRY,
                "GLX 3 is reserved".into(),
                false,
            ))
        }
    };
    let bits = 9 * (top as u32 + 1);
    if pasid >> bits != 0 {
        return Err(fault(
            ILLEGAL_DEV_TABLE_ENTRY,
            format!(
                "PASID {pasid:#x} beyond the {bits}-bit GCR3 table (GLX {})",
                top
            ),
            false,
        ));
    }
    let mut table = u.addr(dte.gcr3_root()).0;
    for level in (0..=top).rev() {
        let index = ((pasid >> (9 * level as u32)) & 0x1ff) as u64;
        let at = PhysAddr(table + index * 8);
        let e = match image.read_u64(at) {
            Ok(e) => e,
            Err(err) => {
                return Err(fault(
                    PAGE_TAB_HARDWARE_ERROR,
                    format!("level {level} GCR3 table entry at {at} not readable: {err}"),
                    false,
                ))
            }
        };
        let next = u.addr(e).0;
        steps.push(Step {
            what: format!("level {level} GCR3 entry [{index:#x}]"),
            addr: at,
            raw: vec![e],
            meaning: if e & 1 == 0 {
                "V=0: not present".into()
            } else if level == 0 {
                format!("V=1: guest page-table root {:#x}", next)
            } else {
                format!("V=1: level {} GCR3 table {:#x}", level - 1, next)
            },
        });
        if e & 1 == 0 {
            return Err(fault(
                IO_PAGE_FAULT,
                format!("GCR3 entry for PASID {pasid:#x} at {at} not present"),
                dte.suppress_all() || dte.suppress_events(),
            ));
        }
        table = next;
    }
    Ok(PhysAddr(table))
}

#[allow(clippy::too_many_arguments)]
fn pages<F: Format>(
    image: &Image,
    format: &F,
    root: PhysAddr,
    iova: u64,
    dte_perms: Perms,
    write: bool,
    dte: &DeviceTableEntry,
    suppressed: bool,
    steps: &mut Vec<Step>,
) -> WalkEnd {
    let t = match pt_translate(format, image, root, Iova(iova)) {
        Ok(t) => t,
        Err(e) => {
            let at = if e.is_root() {
                e.table
            } else {
                PhysAddr(e.table.0 + 8 * e.index as u64)
            };
            if !e.is_root() {
                steps.push(Step {
                    what: format!("level {} entry [{:#x}]", e.level, e.index),
                    addr: at,
                    raw: vec![e.entry],
                    meaning: e.kind.to_string(),
                });
            }
            return match e.kind {
                WalkErrorKind::Memory(m) => fault(
                    PAGE_TAB_HARDWARE_ERROR,
                    format!("page table read at {} failed: {m}", m.addr()),
                    false,
                ),
                k => fault(
                    IO_PAGE_FAULT,
                    format!("malformed entry at {at} (RZ): {k}"),
                    suppressed,
                ),
            };
        }
    };
    for s in &t.steps {
        steps.push(Step {
            what: format!("level {} entry [{:#x}]", s.level, s.index),
            addr: PhysAddr(s.table.0 + 8 * s.index as u64),
            raw: vec![s.raw],
            meaning: match s.entry {
                Entry::Invalid => "PR=0: not present".into(),
                Entry::Table { next, level, perms } => {
                    format!("PDE: NextLevel {level}, table {next} ({perms})")
                }
                Entry::Leaf { base, size, perms } => {
                    format!("PTE: {size} page at {base} ({perms})")
                }
            },
        });
    }
    match t.outcome {
        Outcome::Mapped {
            pa,
            perms,
            page_size,
        } => {
            let perms = Perms {
                read: perms.read && dte_perms.read,
                write: perms.write && dte_perms.write,
                exec: false,
            };
            if if write { !perms.write } else { !perms.read } {
                return fault(
                    IO_PAGE_FAULT,
                    format!(
                        "{} not allowed ({perms} after the DTE's IR/IW): PR=1 PE=1",
                        if write { "write" } else { "read" }
                    ),
                    suppressed,
                );
            }
            WalkEnd::Mapped {
                pa,
                perms,
                page_size,
                did: Some(dte.domain_id()),
            }
        }
        Outcome::SkippedBitsSet { level } => fault(
            IO_PAGE_FAULT,
            format!("address bits skipped by the level {level} PDE are not zero (RZ)"),
            suppressed,
        ),
        o => fault(IO_PAGE_FAULT, format!("{o} (PR=0)"), suppressed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event codes are the `amdvi::hw::event` ones (reference §10).
    #[test]
    fn codes_are_the_specification_event_codes() {
        use amdvi::hw::event::EventCode;
        assert_eq!(
            EventCode::IllegalDevTableEntry.bits(),
            ILLEGAL_DEV_TABLE_ENTRY
        );
        assert_eq!(EventCode::IoPageFault.bits(), IO_PAGE_FAULT);
        assert_eq!(
            EventCode::DevTabHardwareError.bits(),
            DEV_TAB_HARDWARE_ERROR
        );
        assert_eq!(
            EventCode::PageTabHardwareError.bits(),
            PAGE_TAB_HARDWARE_ERROR
        );
    }
}
