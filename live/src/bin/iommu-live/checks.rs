//! The DMA checks both kernels run, the same for every driver: what a driver must offer
//! them is [`Driver`].

use super::{expect_page, load, pass, store_check, zero_page, Dev, Step};
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, PageSize, RequesterId};
use iommu_live::args::RunOptions;
use iommu_live::layout::{buf, iova, pattern, PAGE};
use iommu_live::platform::Platform;
use std::fmt::Debug;

/// One mapping: domain, IOVA, physical address, page size, permissions.
pub type Mapping = (DomainId, u64, u64, PageSize, Perms);

/// A fault the checks expect: requester, device address, write.
pub type Expected = (RequesterId, u64, bool);

/// What the checks need of a driver's unit. Each call prints its `PASS:` line.
pub trait Driver {
    /// The kind of the domains the mode uses.
    type Kind: Copy + Debug;

    /// Creates an empty domain.
    fn new_domain(&mut self, p: &mut Platform, kind: Self::Kind) -> Step<DomainId>;

    /// Maps one page.
    fn map(&mut self, p: &mut Platform, m: Mapping) -> Step;

    /// Attaches a device to a domain.
    fn attach(&mut self, p: &mut Platform, rid: RequesterId, did: DomainId) -> Step;

    /// Reads what the unit recorded of faults: each one must be among `expected` and
    /// each of those must be there.
    fn expect_faults(&mut self, p: &mut Platform, expected: &[Expected], what: &str) -> Step;

    /// Ends the handover (`finish`).
    fn finish(&mut self, p: &mut Platform) -> Step;
}

/// Maps one page and says so.
pub fn map_pass(m: Mapping, r: Result<(), String>) -> Step {
    let (did, iova, pa, ps, perms) = m;
    r.map_err(|e| format!("map {did} IOVA {iova:#x} -> {pa:#x} ({ps}): {e}"))?;
    let access = if perms.write {
        "read/write"
    } else {
        "read-only"
    };
    pass(format!("map {did} IOVA {iova:#x} -> {pa:#x} {ps} {access}"));
    Ok(())
}

/// The old kernel after bring-up: two domains of `kind`, mappings (4K, 2M, 1G,
/// read-only, a high IOVA), both devices attached, DMA through each checked byte for
/// byte, then the in-flight pattern loaded into the preserved device. Returns the
/// preserved domain.
pub fn old_kernel<D: Driver>(
    u: &mut D,
    p: &mut Platform,
    c: &RunOptions,
    kind: D::Kind,
) -> Step<DomainId> {
    let l = c.layout;
    let mut a = Dev::open(c.preserved)?;
    let mut b = Dev::open(c.other)?;
    let d1 = u.new_domain(p, kind)?;
    let d2 = u.new_domain(p, kind)?;
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
        u.map(p, m)?;
    }
    u.attach(p, c.preserved, d1)?;
    u.attach(p, c.other, d2)?;

    // DMA through every kind of mapping, checked byte for byte.
    let p1 = pattern(1);
    load(p, &mut a, l.buf(buf::SRC), iova::SRC, &p1)?;
    let what = "DMA read then write through 4K pages";
    store_check(p, &mut a, iova::DST, l.buf(buf::DST), &p1, what)?;
    let off = 0x12_3000;
    let what = "DMA write through the 2M page";
    let (big_iova, big_pa) = (iova::BIG + off, l.buf(buf::BIG) + off);
    store_check(p, &mut a, big_iova, big_pa, &p1, what)?;
    let what = "DMA write through the high IOVA";
    store_check(p, &mut a, iova::HIGH, l.buf(buf::HIGH), &p1, what)?;

    // The write first: QEMU's VT-d records a fault only when it walks the tables, and a
    // read of the page before would leave a read-only IOTLB entry that denies the write
    // without a fault record (hardware would record one either way).
    let p2 = pattern(2);
    super::write_page(p, l.buf(buf::RO), &p2)?;
    u.expect_faults(p, &[], "no fault so far")?;
    let what = "DMA write to the read-only page changed nothing";
    store_check(p, &mut a, iova::RO, l.buf(buf::RO), &p2, what)?;
    let what = "DMA write to the read-only page faulted";
    u.expect_faults(p, &[(c.preserved, iova::RO, true)], what)?;
    a.read(iova::RO)?;
    let what = "DMA read through the read-only page";
    store_check(p, &mut a, iova::DST, l.buf(buf::DST), &p2, what)?;

    b.read(l.gig_iova(buf::SRC))?;
    let what = "other device: DMA through the 1G page";
    let (o_iova, o_pa) = (l.gig_iova(buf::OTHER), l.buf(buf::OTHER));
    store_check(p, &mut b, o_iova, o_pa, &p1, what)?;
    u.expect_faults(p, &[], "no other fault")?;

    // The pattern the in-flight DMA will write, loaded into the preserved device.
    load(p, &mut a, l.buf(buf::SRC), iova::SRC, &pattern(3))?;
    zero_page(p, l.buf(buf::INFLIGHT))?;
    zero_page(p, l.buf(buf::OTHER))?;
    pass("in-flight pattern loaded into the preserved device");
    Ok(d1)
}

/// The new kernel after adopt and verify: the in-flight DMA landed, DMA through the
/// adopted tables, the unpreserved device's DMA refused and faulting, `finish`, then a
/// new mapping of the adopted domain `did` and a new domain of `kind` for the other
/// device, DMA through both.
pub fn new_kernel<D: Driver>(
    u: &mut D,
    p: &mut Platform,
    c: &RunOptions,
    did: DomainId,
    kind: D::Kind,
) -> Step {
    let l = c.layout;
    let mut a = Dev::open(c.preserved)?;
    let mut b = Dev::open(c.other)?;
    a.wait("in-flight DMA")?;
    let what = "DMA in flight across the kexec landed through the handed-over tables";
    expect_page(p, l.buf(buf::INFLIGHT), &pattern(3), what)?;

    let p4 = pattern(4);
    load(p, &mut a, l.buf(buf::SRC), iova::SRC, &p4)?;
    let what = "DMA read then write through the adopted tables";
    store_check(p, &mut a, iova::DST, l.buf(buf::DST), &p4, what)?;
    let what = "DMA write through the adopted high IOVA";
    store_check(p, &mut a, iova::HIGH, l.buf(buf::HIGH), &p4, what)?;
    u.expect_faults(p, &[], "no fault from the preserved device")?;

    zero_page(p, l.buf(buf::OTHER))?;
    let (addr, zero) = (l.gig_iova(buf::OTHER), [0u8; PAGE as usize]);
    let what = "unpreserved device: its DMA write changed nothing";
    store_check(p, &mut b, addr, l.buf(buf::OTHER), &zero, what)?;
    let what = "unpreserved device: its DMA faulted";
    u.expect_faults(p, &[(c.other, addr, true)], what)?;

    u.finish(p)?;

    let (small, rw) = (PageSize::SIZE_4K, Perms::RW);
    u.map(p, (did, iova::NEW, l.buf(buf::NEW), small, rw))?;
    let what = "after finish: DMA through a new mapping of the adopted domain";
    store_check(p, &mut a, iova::NEW, l.buf(buf::NEW), &p4, what)?;
    let d3 = u.new_domain(p, kind)?;
    u.map(p, (d3, iova::NEW, l.buf(buf::OTHER), small, rw))?;
    u.attach(p, c.other, d3)?;
    let p5 = pattern(5);
    load(p, &mut b, l.buf(buf::OTHER), iova::NEW, &p5)?;
    zero_page(p, l.buf(buf::OTHER))?;
    let what = "after finish: the other device's DMA read and write through its new domain";
    store_check(p, &mut b, iova::NEW, l.buf(buf::OTHER), &p5, what)?;
    u.expect_faults(p, &[], "no fault after finish")?;
    Ok(())
}

/// A KHO blob under construction with the DMA buffers preserved (the leaf targets of
/// the preserved domain, "guest memory" another client keeps).
pub fn kho_with_buffers(c: &RunOptions) -> Step<iommu_core::kho::KhoOut> {
    let l = c.layout;
    let mut kho = iommu_core::kho::KhoOut::new();
    kho.preserve_range(
        iommu_core::PhysAddr(l.buffers),
        iommu_live::layout::BUFFERS_BYTES / PAGE,
    )
    .map_err(|e| format!("preserving the buffers: {e}"))?;
    Ok(kho)
}

/// Writes the KHO blob into the pool; returns its address.
pub fn write_blob(
    p: &mut Platform,
    kho: &mut iommu_core::kho::KhoOut,
) -> Step<iommu_core::PhysAddr> {
    let Platform { mem, pool, .. } = p;
    let blob = kho
        .finalize(mem, pool)
        .map_err(|e| format!("KHO blob: {e}"))?;
    pass(format!("KHO blob written at {blob}"));
    Ok(blob)
}

/// The new kernel: reads the KHO blob of `c` and keeps the pool off what it preserves;
/// returns the blob's address and the preserved pages.
pub fn read_blob(
    p: &mut Platform,
    c: &RunOptions,
) -> Step<(iommu_core::PhysAddr, iommu_core::pageset::PageSet)> {
    let l = c.layout;
    let blob = iommu_core::PhysAddr(c.blob.ok_or("no --blob")?);
    let range = [(iommu_core::PhysAddr(l.base), l.size)];
    let preserved = iommu_core::kho::read_preserved_in(&p.mem, blob, &range)
        .map_err(|e| format!("KHO blob at {blob}: {e}"))?;
    pass(format!(
        "KHO blob at {blob}: {} pages preserved",
        preserved.page_count()
    ));
    p.exclude(&preserved);
    Ok((blob, preserved))
}

/// What `adopt` reported, named for the checks.
pub struct Adopted {
    /// Domains adopted.
    pub domains: usize,
    /// Devices adopted.
    pub devices: usize,
    /// Devices left blocked, with the reason.
    pub blocked: Vec<String>,
    /// Domains refused, with the reason.
    pub refused: Vec<String>,
    /// Registers read.
    pub registers_read: u64,
    /// Entries read.
    pub entries_read: u64,
}

/// `adopt` must have taken the one domain and the one device, blocking nothing.
pub fn check_adopt(mode: &str, r: Adopted) -> Step {
    if !r.blocked.is_empty() || !r.refused.is_empty() || r.domains != 1 || r.devices != 1 {
        return Err(format!(
            "adopt: {} domains, {} devices, blocked {:?}, refused {:?}",
            r.domains, r.devices, r.blocked, r.refused
        ));
    }
    pass(format!(
        "adopt {mode}: 1 domain, 1 device, {} registers and {} entries read",
        r.registers_read, r.entries_read
    ));
    Ok(())
}

/// `verify` must have found nothing wrong: `failures` and `unverified` empty.
pub fn check_verify(
    failures: Vec<String>,
    unverified: Vec<String>,
    (tables, leaves, runs): (u64, u64, u64),
) -> Step {
    if !failures.is_empty() || !unverified.is_empty() {
        return Err(format!(
            "verify: failures {failures:?}, unverified runs {unverified:?}"
        ));
    }
    pass(format!(
        "verify: {tables} tables, {leaves} leaves, {runs} leaf-target runs in preserved memory"
    ));
    Ok(())
}

/// Matches what a unit recorded (`records`, named by `names`, in the unit's words
/// `kind`) against `expected`: every record must match one, and each must be matched.
pub fn match_faults<F>(
    records: &[F],
    names: &[String],
    expected: &[Expected],
    matches: impl Fn(&F, &Expected) -> bool,
    (what, kind): (&str, &str),
) -> Step {
    if let Some(i) = records
        .iter()
        .position(|f| !expected.iter().any(|e| matches(f, e)))
    {
        return Err(format!(
            "{what}: unexpected {kind} {} (all: {names:?})",
            names[i]
        ));
    }
    if let Some((rid, addr, write)) = expected
        .iter()
        .find(|e| !records.iter().any(|f| matches(f, e)))
    {
        let access = if *write { "write" } else { "read" };
        return Err(format!(
            "{what}: no {kind} for {rid} {access} at {addr:#x} (recorded: {names:?})"
        ));
    }
    pass(format!("{what}: {kind}s {names:?}"));
    Ok(())
}
