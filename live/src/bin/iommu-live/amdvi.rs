//! The AMD-Vi side of `iommu-live`: the `amdvi` driver and handover on QEMU's
//! `amd-iommu` (`-device amd-iommu,pt=off`), with the same checks as VT-d.
//!
//! The unit's register base comes from `--iommu`, else from its PCI capability block
//! (Linux takes it from ACPI IVRS, which `acpi=off` hides). Faults are events in the
//! event log: an empty log proves nothing on QEMU 10.0, which never writes it, so every
//! check that needs an event prints `NOT-CHECKABLE ON QEMU:` when the log is empty
//! instead of passing; events that are there are checked.

use super::{expect_page, list, load, pass, store_check, write_page, zero_page, Dev, Step};
use amdvi::driver::{DomainKind, Unit, UnitConfig};
use amdvi::handover::Selection;
use amdvi::hw::event::Event;
use amdvi::hw::regs::{self, CONTROL, EFR};
use iommu_core::kho::{self, KhoOut};
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RegisterAccess, RequesterId};
use iommu_live::args::{RunOptions, Target};
use iommu_live::devmem::Registers;
use iommu_live::layout::{buf, iova, pattern, BUFFERS_BYTES, PAGE};
use iommu_live::pci::{find_amd_iommu, SYSFS_PCI_DEVICES};
use iommu_live::platform::Platform;
use std::path::Path;

/// The last DeviceID the unit serves: bus 0 (q35's devices), which sizes the device
/// table at 256 entries.
const LAST_DEVICE_ID: u16 = 0xff;

/// Prints why a check cannot be made on QEMU.
fn not_checkable(what: impl AsRef<str>) {
    println!(
        "NOT-CHECKABLE ON QEMU: {} (the event log is empty, and QEMU 10.0 never writes it)",
        what.as_ref()
    );
}

/// The unit's register base: `--iommu`, else the base in the IOMMU's PCI capability
/// block.
pub fn unit_base(given: Option<u64>) -> Step<u64> {
    if let Some(b) = given {
        return Ok(b);
    }
    match find_amd_iommu(Path::new(SYSFS_PCI_DEVICES))? {
        Some((rid, base)) => {
            pass(format!(
                "AMD-Vi unit {rid}: its capability block gives the register base {base:#x}"
            ));
            Ok(base)
        }
        None => Err("no PCI function with an AMD IOMMU capability block (give --iommu)".into()),
    }
}

fn platform(c: &RunOptions) -> Step<(Platform, u64)> {
    let base = unit_base(c.iommu)?;
    let mut p =
        Platform::devmem_sized(base, regs::MMIO_WINDOW, c.layout).map_err(|e| e.to_string())?;
    let efr = p.regs.read64(regs::EFR);
    if efr == u64::MAX {
        return Err(format!("no AMD-Vi unit at {base:#x} (EFR reads all ones)"));
    }
    Ok((p, base))
}

fn v2(c: &RunOptions) -> bool {
    matches!(c.target, Target::AmdVi { v2: true })
}

/// CONTROL, which must have IommuEn set.
fn enabled(regs: &mut Registers, what: &str) -> Step<u64> {
    let control = regs.read64(regs::CONTROL);
    if CONTROL::IOMMU_EN.read(control) != 0 {
        Ok(control)
    } else {
        Err(format!("{what}: CONTROL {control:#x} has IommuEn clear"))
    }
}

/// Reads the event log: every event must be an IO_PAGE_FAULT of one of `expected`
/// (device, address, write) and each of those must be there; an empty log is reported
/// as not checkable.
fn expect_events(
    unit: &mut Unit,
    p: &mut Platform,
    expected: &[(RequesterId, u64, bool)],
    what: &str,
) -> Step {
    let (events, overflow) = unit.poll_events(&mut p.amdvi_hw());
    if overflow {
        return Err(format!("{what}: the event log overflowed"));
    }
    if events.is_empty() {
        not_checkable(what);
        return Ok(());
    }
    let names = list(&events, |e| format!("{e:?}"));
    let matches = |e: &Event, &(rid, addr, write): &(RequesterId, u64, bool)| match e {
        Event::IoPageFault {
            device_id,
            address,
            flags,
            ..
        } => {
            *device_id == rid.sid()
                && address & !(PAGE - 1) == addr & !(PAGE - 1)
                && flags.has(amdvi::hw::event::EventFlags::RW) == write
        }
        _ => false,
    };
    if let Some(e) = events
        .iter()
        .find(|e| !expected.iter().any(|x| matches(e, x)))
    {
        return Err(format!("{what}: unexpected event {e:?} (all: {names:?})"));
    }
    if let Some((rid, addr, _)) = expected
        .iter()
        .find(|x| !events.iter().any(|e| matches(e, x)))
    {
        return Err(format!(
            "{what}: no IO_PAGE_FAULT logged for {rid} at {addr:#x} (logged: {names:?})"
        ));
    }
    pass(format!("{what}: events {names:?}"));
    Ok(())
}

fn new_domain(unit: &mut Unit, p: &mut Platform, kind: DomainKind) -> Step<DomainId> {
    unit.create_domain(&mut p.amdvi_hw(), kind)
        .map_err(|e| format!("domain: {e}"))
}

fn map(
    unit: &mut Unit,
    p: &mut Platform,
    (did, iova, pa, ps, perms): (DomainId, u64, u64, PageSize, Perms),
) -> Step {
    unit.map(
        &mut p.amdvi_hw(),
        did,
        Iova(iova),
        PhysAddr(pa),
        ps.bytes(),
        ps,
        perms,
    )
    .map_err(|e| format!("map {did} IOVA {iova:#x} -> {pa:#x} ({ps}): {e}"))?;
    let access = if perms.write {
        "read/write"
    } else {
        "read-only"
    };
    pass(format!("map {did} IOVA {iova:#x} -> {pa:#x} {ps} {access}"));
    Ok(())
}

fn attach(unit: &mut Unit, p: &mut Platform, rid: RequesterId, did: DomainId) -> Step {
    unit.attach(&mut p.amdvi_hw(), rid.sid(), did)
        .map_err(|e| format!("attach {rid} (DeviceID {:#x}) to {did}: {e}", rid.sid()))?;
    pass(format!("attach {rid} (DeviceID {:#x}) to {did}", rid.sid()));
    Ok(())
}

/// `amdvi-run-old`: everything of the old kernel up to `freeze`.
pub fn run_old(c: RunOptions) -> Step {
    let l = c.layout;
    let (mut p, base) = platform(&c)?;
    let efr = p.regs.read64(regs::EFR);
    if v2(&c) && (EFR::GT_SUP.read(efr) == 0 || regs::guest_levels(efr).is_none()) {
        // The driver refuses v2 domains here too (create_domain); said before bring-up
        // so that the harness reports the mode as not run, not as failed or passed.
        println!(
            "UNSUPPORTED: v2: EFR {efr:#x} has GTSup {} and GATS {:#b} (0: 4-level, \
             1: 5-level guest tables; other values are reserved): the unit offers no \
             guest (v2) tables the driver can build",
            EFR::GT_SUP.read(efr),
            EFR::GATS.read(efr)
        );
        return Err("v2 needs EFR.GTSup and a defined EFR.GATS".into());
    }
    let mut a = Dev::open(c.preserved)?;
    let mut b = Dev::open(c.other)?;
    for off in (0..BUFFERS_BYTES).step_by(PAGE as usize) {
        zero_page(&mut p, l.buf(off))?;
    }

    let cfg = UnitConfig::new(PhysAddr(base), 0, LAST_DEVICE_ID);
    let mut unit = Unit::init(&mut p.amdvi_hw(), &cfg).map_err(|e| format!("bring-up: {e}"))?;
    let control = enabled(&mut p.regs, "bring-up")?;
    pass(format!(
        "bring-up {} at {base:#x}: EFR {efr:#x} CONTROL {control:#x} (IommuEn), device \
         table at {}",
        c.mode_name,
        unit.device_table()
    ));
    let kind = if v2(&c) {
        unit.default_v2()
    } else {
        unit.default_v1()
    };
    let d1 = new_domain(&mut unit, &mut p, kind)?;
    let d2 = new_domain(&mut unit, &mut p, kind)?;
    pass(format!("domains {d1} (preserved) and {d2} ({kind:?})"));

    let (small, rw) = (PageSize::SIZE_4K, Perms::RW);
    for m in [
        (d1, iova::SRC, l.buf(buf::SRC), small, rw),
        (d1, iova::DST, l.buf(buf::DST), small, rw),
        (d1, iova::INFLIGHT, l.buf(buf::INFLIGHT), small, rw),
        (d1, iova::RO, l.buf(buf::RO), small, Perms::R),
        (d1, iova::HIGH, l.buf(buf::HIGH), small, rw),
        (d1, iova::BIG, l.buf(buf::BIG), PageSize::SIZE_2M, rw),
        (d2, iova::GIG, l.gig, PageSize::SIZE_1G, rw),
    ] {
        map(&mut unit, &mut p, m)?;
    }
    attach(&mut unit, &mut p, c.preserved, d1)?;
    attach(&mut unit, &mut p, c.other, d2)?;

    let p1 = pattern(1);
    load(&mut p, &mut a, l.buf(buf::SRC), iova::SRC, &p1)?;
    let what = "DMA read then write through 4K pages";
    store_check(&p, &mut a, iova::DST, l.buf(buf::DST), &p1, what)?;
    let off = 0x12_3000;
    let what = "DMA write through the 2M page";
    let (big_iova, big_pa) = (iova::BIG + off, l.buf(buf::BIG) + off);
    store_check(&p, &mut a, big_iova, big_pa, &p1, what)?;
    let what = "DMA write through the high IOVA";
    store_check(&p, &mut a, iova::HIGH, l.buf(buf::HIGH), &p1, what)?;

    let p2 = pattern(2);
    write_page(&mut p, l.buf(buf::RO), &p2)?;
    expect_events(&mut unit, &mut p, &[], "no event so far")?;
    let what = "DMA write to the read-only page changed nothing";
    store_check(&p, &mut a, iova::RO, l.buf(buf::RO), &p2, what)?;
    let what = "DMA write to the read-only page logged an IO_PAGE_FAULT";
    expect_events(&mut unit, &mut p, &[(c.preserved, iova::RO, true)], what)?;
    a.read(iova::RO)?;
    let what = "DMA read through the read-only page";
    store_check(&p, &mut a, iova::DST, l.buf(buf::DST), &p2, what)?;

    b.read(l.gig_iova(buf::SRC))?;
    let what = "other device: DMA through the 1G page";
    let (o_iova, o_pa) = (l.gig_iova(buf::OTHER), l.buf(buf::OTHER));
    store_check(&p, &mut b, o_iova, o_pa, &p1, what)?;
    expect_events(&mut unit, &mut p, &[], "no other event")?;

    load(&mut p, &mut a, l.buf(buf::SRC), iova::SRC, &pattern(3))?;
    zero_page(&mut p, l.buf(buf::INFLIGHT))?;
    zero_page(&mut p, l.buf(buf::OTHER))?;
    pass("in-flight pattern loaded into the preserved device");

    let mut kho = KhoOut::new();
    kho.preserve_range(PhysAddr(l.buffers), BUFFERS_BYTES / PAGE)
        .map_err(|e| format!("preserving the buffers: {e}"))?;
    let sel = Selection {
        domains: vec![d1],
        devices: vec![c.preserved.sid()],
    };
    let r = unit
        .prepare(&mut p.amdvi_hw(), &mut kho, &sel)
        .map_err(|e| format!("prepare: {e}"))?;
    pass(format!(
        "prepare: {} domain, {} device, {} pages pinned, {} leaves, {} record bytes",
        r.domains, r.devices, r.pinned_pages, r.leaves, r.record_bytes
    ));
    let blob = {
        let Platform { mem, pool, .. } = &mut p;
        kho.finalize(mem, pool)
            .map_err(|e| format!("KHO blob: {e}"))?
    };
    pass(format!("KHO blob written at {blob}"));
    let f = unit
        .freeze(&mut p.amdvi_hw())
        .map_err(|e| format!("freeze: {e}"))?;
    enabled(&mut p.regs, "freeze")?;
    pass(format!(
        "freeze: {} devices blocked, {} entries written, {} commands, IommuEn still set",
        f.devices_blocked, f.entries_written, f.commands
    ));
    println!("BLOB={:#x}", blob.0);
    Ok(())
}

/// `amdvi-run-new`: the new kernel's side.
pub fn run_new(c: RunOptions) -> Step {
    let l = c.layout;
    let blob = PhysAddr(c.blob.ok_or("run-new without --blob")?);
    let (mut p, base) = platform(&c)?;
    let preserved = kho::read_preserved_in(&p.mem, blob, &[(PhysAddr(l.base), l.size)])
        .map_err(|e| format!("KHO blob at {blob}: {e}"))?;
    pass(format!(
        "KHO blob at {blob}: {} pages preserved",
        preserved.page_count()
    ));
    p.exclude(&preserved);

    let cfg = UnitConfig::new(PhysAddr(base), 0, LAST_DEVICE_ID);
    let (mut unit, r) = Unit::adopt_with_preserved(&mut p.amdvi_hw(), &cfg, blob, preserved)
        .map_err(|f| format!("adopt: {}", f.error))?;
    if !r.blocked.is_empty() || !r.refused_domains.is_empty() || r.domains != 1 || r.devices != 1 {
        return Err(format!(
            "adopt: {} domains, {} devices, blocked {:?}, refused {:?}",
            r.domains,
            r.devices,
            list(&r.blocked, |b| format!("{:#x}: {}", b.device_id, b.error)),
            list(&r.refused_domains, |(d, e)| format!("{d}: {e}"))
        ));
    }
    pass(format!(
        "adopt {}: 1 domain, 1 device, {} registers and {} entries read",
        c.mode_name, r.registers_read, r.entries_read
    ));
    if !r.stale_events.is_empty() {
        let names = list(&r.stale_events, |e| format!("{e:?}"));
        return Err(format!("events logged across the kexec: {names:?}"));
    }
    not_checkable("no event logged across the kexec");
    let control = enabled(&mut p.regs, "adopt")?;
    pass(format!("translation stayed on: CONTROL {control:#x}"));

    let v = unit
        .verify(&mut p.amdvi_hw())
        .map_err(|e| format!("verify: {e}"))?;
    if !v.failures.is_empty() || !v.unverified_runs.is_empty() {
        return Err(format!(
            "verify: failures {:?}, unverified runs {:?}",
            list(&v.failures, |(d, e)| format!("{d}: {e}")),
            list(&v.unverified_runs, |e| e.to_string())
        ));
    }
    pass(format!(
        "verify: {} tables, {} leaves, {} leaf-target runs in preserved memory",
        v.tables, v.leaves, v.leaf_targets_checked
    ));
    let did = unit
        .domains()
        .next()
        .map(|d| d.id)
        .ok_or("adopt: no domain")?;
    let kind = unit.domain(did).map(|d| d.kind).ok_or("adopt: no domain")?;

    let mut a = Dev::open(c.preserved)?;
    let mut b = Dev::open(c.other)?;
    a.wait("in-flight DMA")?;
    let what = "DMA in flight across the kexec landed through the handed-over tables";
    expect_page(&p, l.buf(buf::INFLIGHT), &pattern(3), what)?;

    let p4 = pattern(4);
    load(&mut p, &mut a, l.buf(buf::SRC), iova::SRC, &p4)?;
    let what = "DMA read then write through the adopted tables";
    store_check(&p, &mut a, iova::DST, l.buf(buf::DST), &p4, what)?;
    let what = "DMA write through the adopted high IOVA";
    store_check(&p, &mut a, iova::HIGH, l.buf(buf::HIGH), &p4, what)?;
    expect_events(&mut unit, &mut p, &[], "no event from the preserved device")?;

    zero_page(&mut p, l.buf(buf::OTHER))?;
    let (addr, zero) = (l.gig_iova(buf::OTHER), [0u8; PAGE as usize]);
    let what = "unpreserved device: its DMA write changed nothing";
    store_check(&p, &mut b, addr, l.buf(buf::OTHER), &zero, what)?;
    let what = "unpreserved device: its DMA logged an IO_PAGE_FAULT";
    expect_events(&mut unit, &mut p, &[(c.other, addr, true)], what)?;

    let fin = unit
        .finish(&mut p.amdvi_hw())
        .map_err(|e| format!("finish: {e}"))?;
    pass(format!(
        "finish: {} pages freed, {} kept",
        fin.pages_freed, fin.pages_kept
    ));

    let (small, rw) = (PageSize::SIZE_4K, Perms::RW);
    map(
        &mut unit,
        &mut p,
        (did, iova::NEW, l.buf(buf::NEW), small, rw),
    )?;
    let what = "after finish: DMA through a new mapping of the adopted domain";
    store_check(&p, &mut a, iova::NEW, l.buf(buf::NEW), &p4, what)?;
    let d3 = new_domain(&mut unit, &mut p, kind)?;
    map(
        &mut unit,
        &mut p,
        (d3, iova::NEW, l.buf(buf::OTHER), small, rw),
    )?;
    attach(&mut unit, &mut p, c.other, d3)?;
    let p5 = pattern(5);
    load(&mut p, &mut b, l.buf(buf::OTHER), iova::NEW, &p5)?;
    zero_page(&mut p, l.buf(buf::OTHER))?;
    let what = "after finish: the other device's DMA read and write through its new domain";
    store_check(&p, &mut b, iova::NEW, l.buf(buf::OTHER), &p5, what)?;
    expect_events(&mut unit, &mut p, &[], "no event after finish")?;
    Ok(())
}

/// `amdvi-status`: the unit's main registers.
pub fn status(given: Option<u64>) -> Step {
    let base = unit_base(given)?;
    let mut r = Registers::devmem_sized(base, regs::MMIO_WINDOW).map_err(|e| e.to_string())?;
    let efr = r.read64(regs::EFR);
    let control = r.read64(regs::CONTROL);
    println!(
        "EFR={efr:#x} CONTROL={control:#x} DEV_TAB_BASE={:#x} STATUS={:#x} GTSup={}",
        r.read64(regs::DEV_TAB_BASE),
        r.read64(regs::STATUS),
        EFR::GT_SUP.read(efr)
    );
    if efr == u64::MAX {
        return Err(format!(
            "status: no AMD-Vi unit at {base:#x} (EFR reads all ones)"
        ));
    }
    pass(format!(
        "status of the AMD-Vi unit at {base:#x}: IommuEn {}",
        CONTROL::IOMMU_EN.read(control)
    ));
    Ok(())
}

/// `amdvi-dump`: the live unit through `iommu-inspect`'s dump: a copy of the reserved
/// range as a raw image, the unit described by its live Device Table Base, EFR and
/// CONTROL registers.
pub fn dump(((base, size), given): ((u64, u64), Option<u64>)) -> Step {
    use inspector::amdvi::AmdViOverride;
    use inspector::image::OpenAs;
    use inspector::model::LoadOptions;

    let iommu = unit_base(given)?;
    let mut r = Registers::devmem_sized(iommu, regs::MMIO_WINDOW).map_err(|e| e.to_string())?;
    let control = enabled(&mut r, "dump")?;
    let (devtab, efr) = (r.read64(regs::DEV_TAB_BASE), r.read64(regs::EFR));
    let opts = LoadOptions {
        open: OpenAs::Raw { base },
        amdvi: AmdViOverride {
            devtab: Some(devtab),
            efr: Some(efr),
            control: Some(control),
            base: Some(iommu),
            ..AmdViOverride::default()
        },
        ..LoadOptions::default()
    };
    let what = format!("the AMD-Vi unit at {iommu:#x} (Device Table Base {devtab:#x})");
    super::dump_range(base, size, &opts, &what)
}
