//! The SMMUv3 driver and live-update handover on the emulated SMMU: DMA across the
//! kexec in every mode, stream-table shape and granule; preserved ASIDs and VMIDs
//! never reused; TLB entries stale until the driver's invalidation; STE updates that
//! every intermediate state of which is the old or the new entry (torn-entry mode) and
//! a deliberately naive update caught; an unpinned table caught at prepare; corrupted
//! STE, CD, record and table after the kexec blocking the master or refusing the SMMU,
//! never bypassing; a record of another version refused naming both versions.

use iommu_core::kho::KhoOut;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pool::PageAllocator;
use iommu_core::{DomainId, Iova, PhysAddr, RequesterId};
use proptest::prelude::*;
use smmuv3::driver::{entry, Hw, Stage, Unit, UpdateKind};
use smmuv3::handover::{HandoverErrorKind, Selection};
use smmuv3::hw::ste::{Ste, StrtabFmt};
use smmuv3::hw::Granule;
use tests::smmuv3_rig::{preserve_guest, setup, sizes, ucfg, Maps, Rig, BASE, IOVA};

const A: RequesterId = RequesterId::new(0, 0x00, 0x02, 0);
const B: RequesterId = RequesterId::new(0, 0x3b, 0x00, 0);
const U: RequesterId = RequesterId::new(0, 0xf0, 0x1f, 7);

fn cfg(refetch: bool) -> emulator::smmuv3::SmmuV3Config {
    let mut c = emulator::smmuv3::SmmuV3Config::new(BASE);
    c.refetch_config = refetch;
    c
}

/// An old kernel with masters A and B in domains 0 and 1 (preserved) and U in domain
/// 2 (not preserved), prepared and frozen; returns what the new kernel needs.
struct Old {
    rig: Rig,
    agents: [emulator::dma::DmaAgent; 3],
    sids: [u32; 3],
    domains: Vec<(DomainId, Maps)>,
    ids: Vec<(u16, u16)>,
    kho: KhoOut,
}

fn old_kernel(strtab: StrtabFmt, stage: Stage, g: Granule, refetch: bool) -> (Old, Unit) {
    let mut rig = Rig::new(cfg(refetch));
    let (mut unit, domains) = setup(&mut rig, strtab, stage, g, 3);
    let mut agents = Vec::new();
    let mut sids = Vec::new();
    for (i, rid) in [A, B, U].into_iter().enumerate() {
        let (a, sid) = rig.add_master(rid);
        rig.hw(|hw| unit.attach(hw, sid, domains[i].0))
            .expect("attach");
        agents.push(a);
        sids.push(sid);
    }
    for (i, a) in agents.iter().enumerate() {
        let (iova, pa, _) = domains[i].1[0];
        rig.dma(a, iova, pa, 1).expect("DMA before prepare");
        let (iova, pa, len) = domains[i].1[1];
        rig.dma(a, iova + len - 64, pa + len - 64, 2)
            .expect("DMA in the block");
    }
    let ids = domains
        .iter()
        .map(|(d, _)| {
            let d = unit.domain(*d).unwrap();
            (d.asid, d.vmid)
        })
        .collect();
    let old = Old {
        rig,
        agents: [agents[0], agents[1], agents[2]],
        sids: [sids[0], sids[1], sids[2]],
        domains,
        ids,
        kho: KhoOut::new(),
    };
    (old, unit)
}

fn prepare_and_freeze(o: &mut Old, unit: &mut Unit) {
    preserve_guest(&mut o.kho, &o.domains[..2]);
    let sel = Selection {
        domains: vec![o.domains[0].0, o.domains[1].0],
        masters: vec![o.sids[0], o.sids[1]],
    };
    let kho = &mut o.kho;
    o.rig.hw(|hw| unit.prepare(hw, kho, &sel)).expect("prepare");
    let before = unit.counters();
    let f = o.rig.hw(|hw| unit.freeze(hw)).expect("freeze");
    let after = unit.counters();
    // U's STE goes to abort hitlessly (one qword's used bits change); nothing breaks.
    assert_eq!(f.masters_aborted, 1);
    assert_eq!(
        after.updates[1] - before.updates[1],
        1,
        "one hitless update"
    );
    assert_eq!(after.updates[2], before.updates[2], "no breaking update");
}

fn dma_ok(o: &mut Old, i: usize) -> Result<(), String> {
    let (iova, pa, _) = o.domains[i].1[0];
    let a = o.agents[i];
    o.rig.dma(&a, iova + 128, pa + 128, 9)
}

fn full_handover(strtab: StrtabFmt, stage: Stage, g: Granule) {
    let what = format!("{strtab:?} {stage} {g}");
    let (mut o, mut unit) = old_kernel(strtab, stage, g, false);
    prepare_and_freeze(&mut o, &mut unit);
    let u = o.agents[2];
    assert!(o.rig.blocked(&u, IOVA), "{what}: U aborts after freeze");
    dma_ok(&mut o, 0).unwrap_or_else(|e| panic!("{what}: {e}"));
    let blob = o.rig.kexec(&mut o.kho);
    drop(unit);
    // DMA carries on across the kexec, before adopt.
    dma_ok(&mut o, 1).unwrap_or_else(|e| panic!("{what} before adopt: {e}"));
    assert!(o.rig.blocked(&u, IOVA));
    let (mut unit, rep) = o.rig.adopt(&ucfg(strtab), blob).expect("adopt");
    assert!(rep.blocked.is_empty(), "{what}: {:?}", rep.blocked);
    assert_eq!((rep.domains, rep.masters), (2, 2));
    for i in 0..2 {
        dma_ok(&mut o, i).unwrap_or_else(|e| panic!("{what} after adopt: {e}"));
    }
    // A new domain of the same kind takes none of the preserved IDs.
    let d = o
        .rig
        .hw(|hw| unit.create_domain(hw, stage, g))
        .expect("domain");
    let nd = unit.domain(d).unwrap();
    for &(asid, vmid) in &o.ids[..2] {
        assert!(!stage.s1() || nd.asid != asid, "{what}: ASID {asid} reused");
        assert!(!stage.s2() || nd.vmid != vmid, "{what}: VMID {vmid} reused");
    }
    let v = o.rig.hw(|hw| unit.verify(hw)).expect("verify");
    assert!(
        v.failures.is_empty() && v.unverified_runs.is_empty(),
        "{what}: {v:?}"
    );
    assert!(v.leaf_targets_checked >= 4 && v.tables > 0);
    let f = o.rig.hw(|hw| unit.finish(hw)).expect("finish");
    assert_eq!(f.pages_kept, 0);
    // Mutable again: a new mapping in domain 0 works.
    let page = sizes(g)[0];
    let (did, pa) = (o.domains[0].0, o.domains[0].1[0].1);
    let iova = 1u64 << 40;
    o.rig
        .hw(|hw| {
            unit.map(
                hw,
                did,
                Iova(iova),
                PhysAddr(pa),
                page.bytes(),
                page,
                iommu_core::pgtable::Perms::RW,
            )
        })
        .expect("map after finish");
    let a = o.agents[0];
    o.rig
        .dma(&a, iova, pa, 3)
        .expect("DMA through the new mapping");
    assert!(o.rig.blocked(&u, IOVA));
    assert!(o.rig.machine.bus_errors().is_empty());
    // No register write the SMMU ignores (STRTAB_BASE or a queue base while in use,
    // GBPA without UPDATE): the model reports each as a diagnostic.
    let diags = o.rig.machine.unit(BASE).unwrap().diagnostics().to_vec();
    assert!(diags.is_empty(), "{what}: {diags:?}");
}

#[test]
fn full_handover_every_mode_shape_and_granule() {
    for strtab in [StrtabFmt::Linear, StrtabFmt::TwoLevel] {
        for stage in [Stage::S1, Stage::S2, Stage::Nested] {
            for g in [Granule::K4, Granule::K64] {
                full_handover(strtab, stage, g);
            }
        }
    }
}

/// The model keeps a translation cached until a TLBI: after `unmap` the master faults,
/// which it would not if the driver did not invalidate.
#[test]
fn unmap_is_seen_only_through_the_drivers_tlbi() {
    for stage in [Stage::S1, Stage::S2] {
        let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, stage, Granule::K4, false);
        dma_ok(&mut o, 0).unwrap();
        let (iova, _, len) = o.domains[0].1[0];
        let before = unit.counters();
        let did = o.domains[0].0;
        o.rig
            .hw(|hw| unit.unmap(hw, did, Iova(iova), len))
            .expect("unmap");
        let after = unit.counters();
        assert_eq!(after.tlbi, before.tlbi + 1);
        assert_eq!(after.syncs, before.syncs + 1);
        let a = o.agents[0];
        assert!(o.rig.blocked(&a, iova + 128), "{stage}: stale translation");
    }
}

/// Logs every write the driver makes.
struct Recorder<'a> {
    inner: &'a mut dyn PhysMem,
    log: Vec<(PhysAddr, Vec<u8>)>,
}

impl PhysMem for Recorder<'_> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.inner.read(addr, buf)
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.log.push((addr, data.to_vec()));
        self.inner.write(addr, data)
    }
}

/// Attaches master `sid` to `did` logging the driver's writes; returns the STE's
/// address, the writes to it, the update's kind and the CMD_SYNCs issued.
fn logged_attach(
    rig: &mut Rig,
    unit: &mut Unit,
    sid: u32,
    did: DomainId,
) -> (PhysAddr, Vec<(PhysAddr, Vec<u8>)>, UpdateKind, u64) {
    let syncs = unit.counters().syncs;
    let (mut regs, mut mem) = rig.machine.driver_access(BASE).unwrap();
    let mut rec = Recorder {
        inner: &mut mem,
        log: Vec::new(),
    };
    let kind = {
        let mut hw = Hw {
            regs: &mut regs,
            mem: &mut rec,
            pages: &mut rig.pool,
        };
        unit.attach(&mut hw, sid, did).expect("attach")
    };
    let strtab = unit.strtab_base();
    let at = PhysAddr(strtab.0 + sid as u64 * 64);
    let log = rec
        .log
        .into_iter()
        .filter(|(a, _)| a.0 >= at.0 && a.0 < at.0 + 64)
        .collect();
    (at, log, kind, unit.counters().syncs - syncs)
}

/// Replays STE writes from `old` and checks each intermediate entry: in its used bits
/// the old or the new STE, or V = 0; and DMA through it (torn-entry mode: the model
/// re-reads the STE for every transaction) lands at the old or the new target or is
/// blocked, never elsewhere. Returns how many intermediate states were neither.
fn torn_states(
    o: &mut Old,
    at: PhysAddr,
    old: Ste,
    new: Ste,
    writes: &[(PhysAddr, Vec<u8>)],
    targets: [(u64, u64); 2],
) -> usize {
    for (i, q) in old.qwords().iter().enumerate() {
        o.rig
            .machine
            .mem_mut()
            .write_u64(PhysAddr(at.0 + 8 * i as u64), *q)
            .unwrap();
    }
    let mask = |s: &[u64; 8]| {
        let u = entry::ste_used(s);
        std::array::from_fn::<u64, 8, _>(|i| s[i] & u[i])
    };
    let (mo, mn) = (mask(&old.qwords()), mask(&new.qwords()));
    let mut bad = 0;
    let a = o.agents[0];
    for (addr, bytes) in writes {
        o.rig.machine.mem_mut().write(*addr, bytes).unwrap();
        let mem = o.rig.machine.mem();
        let cur: [u64; 8] =
            std::array::from_fn(|i| mem.read_u64(PhysAddr(at.0 + 8 * i as u64)).unwrap());
        drop(mem);
        let ok_entry = cur[0] & 1 == 0 || mask(&cur) == mo || mask(&cur) == mn;
        let mut ok_dma = true;
        if !o.rig.blocked(&a, targets[0].0) {
            ok_dma = targets
                .iter()
                .any(|&(iova, pa)| o.rig.dma(&a, iova + 256, pa + 256, 5).is_ok());
        }
        if !(ok_entry && ok_dma) {
            bad += 1;
        }
    }
    bad
}

/// Linux `arm-smmu-v3-test.c` style: each update kind's CMD_SYNC count, and every
/// intermediate STE the SMMU could fetch is the old or the new one (or invalid); a
/// naive qword-0-first rewrite of a breaking update is caught.
#[test]
fn ste_updates_are_hitless_or_breaking_and_never_torn() {
    let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, Stage::S1, Granule::K4, true);
    let sid = o.sids[0];
    let d2 = o
        .rig
        .hw(|hw| unit.create_domain(hw, Stage::S2, Granule::K4))
        .unwrap();
    let (s2_iova, s2_pa) = (IOVA, tests::smmuv3_rig::DATA + (3 << 30));
    o.rig
        .hw(|hw| {
            unit.map(
                hw,
                d2,
                Iova(s2_iova),
                PhysAddr(s2_pa),
                1 << 16,
                iommu_core::PageSize::SIZE_4K,
                iommu_core::pgtable::Perms::RW,
            )
        })
        .unwrap();
    // Stage 1 to stage 1 (another domain, a new CD table): only S1ContextPtr in qword
    // 0 changes its used bits: hitless, one step, one CMD_SYNC for the STE.
    let s1_old = unit.master(sid).unwrap().ste;
    let d1 = o.domains[1].0;
    let (at, w, kind, syncs) = logged_attach(&mut o.rig, &mut unit, sid, d1);
    let s1_new = unit.master(sid).unwrap().ste;
    assert_eq!(kind, UpdateKind::Hitless);
    // CD 0 installed (one step with V last: 2 CFGI_CD + CMD_SYNC), then the STE: 1.
    assert_eq!(syncs, 2 + 1);
    let t0 = (o.domains[0].1[0].0, o.domains[0].1[0].1);
    let t1 = (o.domains[1].1[0].0, o.domains[1].1[0].1);
    assert_eq!(torn_states(&mut o, at, s1_old, s1_new, &w, [t0, t1]), 0);
    // Stage 1 to stage 2: used bits change in qwords 0 to 3: breaking, three
    // steps with a CMD_SYNC each.
    let (at, w, kind, syncs) = logged_attach(&mut o.rig, &mut unit, sid, d2);
    let s2_new = unit.master(sid).unwrap().ste;
    assert_eq!(kind, UpdateKind::Breaking);
    assert_eq!(syncs, 3);
    assert_eq!(
        w.len(),
        1 + 3 + 1,
        "qword 0, then qwords 1 to 3, then qword 0"
    );
    assert_eq!(
        torn_states(&mut o, at, s1_new, s2_new, &w, [t1, (s2_iova, s2_pa)]),
        0
    );
    // The same change written naively, qword by qword from qword 0 (V stays 1): the
    // SMMU can fetch stage 2 with no VMID and no S2TTB yet.
    let naive: Vec<(PhysAddr, Vec<u8>)> = s2_new
        .qwords()
        .iter()
        .enumerate()
        .map(|(i, q)| (PhysAddr(at.0 + 8 * i as u64), q.to_le_bytes().to_vec()))
        .collect();
    assert!(torn_states(&mut o, at, s1_new, s2_new, &naive, [t1, (s2_iova, s2_pa)]) > 0);
    // A fresh STE over V = 0: hitless, two steps (everything but V, then V).
    let (plan_kind, steps) = entry::plan([0; 8], s1_new.qwords(), entry::ste_used);
    assert_eq!((plan_kind, steps.len()), (UpdateKind::Hitless, 2));
}

/// A table page linked into a domain that the driver did not allocate for it is
/// refused at prepare, naming the page.
#[test]
fn unpinned_table_page_is_caught_at_prepare() {
    let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, Stage::S1, Granule::K4, false);
    let did = o.domains[0].0;
    let root = unit.domain(did).unwrap().s1.unwrap().1;
    let stray = o.rig.pool.alloc_page().unwrap();
    o.rig.machine.mem_mut().write(stray, &[0u8; 4096]).unwrap();
    // Level-0 slot 300 (4 KiB granule, 48-bit): a table descriptor to the stray page.
    o.rig
        .machine
        .mem_mut()
        .write(PhysAddr(root.0 + 300 * 8), &(stray.0 | 0b11).to_le_bytes())
        .unwrap();
    preserve_guest(&mut o.kho, &o.domains[..2]);
    let sel = Selection {
        domains: vec![did],
        masters: vec![o.sids[0]],
    };
    let kho = &mut o.kho;
    let e = o.rig.hw(|hw| unit.prepare(hw, kho, &sel)).unwrap_err();
    assert_eq!(
        e.kind,
        HandoverErrorKind::UnpinnedTable { did, page: stray },
        "{e}"
    );
}

enum Corrupt {
    Ste,
    Cd,
    Table,
}

/// After the kexec (before adopt) one structure of master A's is corrupted: A is
/// blocked (its DMA aborts), B carries on.
fn corrupted_after_kexec(what: Corrupt, strtab: StrtabFmt) {
    let (mut o, mut unit) = old_kernel(strtab, Stage::S1, Granule::K4, false);
    prepare_and_freeze(&mut o, &mut unit);
    let master = unit.master(o.sids[0]).unwrap().clone();
    let root = unit.domain(o.domains[0].0).unwrap().s1.unwrap().1;
    let ste_at = (strtab == StrtabFmt::Linear)
        .then(|| PhysAddr(unit.strtab_base().0 + o.sids[0] as u64 * 64));
    let blob = o.rig.kexec(&mut o.kho);
    drop(unit);
    let mem = o.rig.machine.mem_mut();
    match what {
        Corrupt::Ste => {
            // S1ContextPtr moved by a page.
            let at = ste_at.expect("linear table");
            let q0 = mem.read_u64(at).unwrap();
            mem.write_u64(at, q0 ^ 0x1000).unwrap();
        }
        Corrupt::Cd => {
            // The ASID.
            let at = master.cd.unwrap().cd0();
            let q0 = mem.read_u64(at).unwrap();
            mem.write_u64(at, q0 ^ (1 << 48)).unwrap();
        }
        Corrupt::Table => {
            // Level-0 entry 0 (IOVAs 0..512 GiB) points at a page nobody preserved.
            let q = mem.read_u64(root).unwrap();
            mem.write_u64(root, (q & !0x000f_ffff_ffff_f000) | 0x1_2345_6000)
                .unwrap();
        }
    }
    let (mut unit, rep) = o.rig.adopt(&ucfg(strtab), blob).expect("adopt");
    let v = o.rig.hw(|hw| unit.verify(hw)).expect("verify");
    let blocked: Vec<u32> = rep
        .blocked
        .iter()
        .map(|b| b.sid)
        .chain(v.blocked.iter().copied())
        .collect();
    assert_eq!(blocked, vec![o.sids[0]], "{:?} {v:?}", rep.blocked);
    // The reports say which master and why.
    let text = format!("{rep}\n{v}");
    let named = format!("blocked StreamID {:#x}", o.sids[0]);
    assert!(
        text.contains(&named) || text.contains("refused domain 1"),
        "{text}"
    );
    let a = o.agents[0];
    let (iova, _, _) = o.domains[0].1[0];
    assert!(o.rig.blocked(&a, iova), "A must abort, never bypass");
    assert!(o.rig.blocked(&a, 0x1000), "not even at an unmapped IOVA");
    dma_ok(&mut o, 1).expect("B carries on");
    // Finish: A's structures that verification established (its CD table, when its
    // domain was refused at verify) are freed; what it did not establish is kept.
    let table = matches!(what, Corrupt::Table);
    let f = o.rig.hw(|hw| unit.finish(hw)).expect("finish");
    assert!(f.pages_kept > 0, "{f}");
    assert_eq!(f.pages_freed > 0, table, "{f}");
    assert!(o.rig.blocked(&a, iova));
    dma_ok(&mut o, 1).expect("B carries on after finish");
}

#[test]
fn corrupted_ste_after_kexec_blocks_that_master() {
    corrupted_after_kexec(Corrupt::Ste, StrtabFmt::Linear);
}

#[test]
fn corrupted_cd_after_kexec_blocks_that_master() {
    corrupted_after_kexec(Corrupt::Cd, StrtabFmt::TwoLevel);
}

#[test]
fn corrupted_table_after_kexec_blocks_that_master_at_verify() {
    corrupted_after_kexec(Corrupt::Table, StrtabFmt::Linear);
}

/// A corrupted record (checksum) refuses the SMMU: GBPA abort, SMMUEN off, every
/// master's DMA aborts.
#[test]
fn corrupted_record_refuses_the_smmu() {
    let (mut o, mut unit) = old_kernel(StrtabFmt::TwoLevel, Stage::S2, Granule::K4, false);
    prepare_and_freeze(&mut o, &mut unit);
    let bytes = unit.handover_record().unwrap().encode();
    let blob = o.rig.kexec(&mut o.kho);
    drop(unit);
    // Find the payload in the record client and flip a bit in it.
    let h = iommu_core::kho::read_handover(&*o.rig.machine.mem(), blob).unwrap();
    let data = h.client(&smmuv3::record::client_name(BASE)).unwrap();
    let off = iommu_core::kho::record::RECORD_HEADER_SIZE as u64 + 0x20;
    let mut b = [0u8; 1];
    o.rig
        .machine
        .mem()
        .read(PhysAddr(data.0 + off), &mut b)
        .unwrap();
    assert_eq!(b[0], bytes[0x20]);
    o.rig
        .machine
        .mem_mut()
        .write(PhysAddr(data.0 + off), &[b[0] ^ 1])
        .unwrap();
    let f = o.rig.adopt(&ucfg(StrtabFmt::TwoLevel), blob).unwrap_err();
    assert!(
        matches!(f.error.kind, HandoverErrorKind::Kho(_)),
        "{}",
        f.error
    );
    for i in 0..3 {
        let a = o.agents[i];
        assert!(o.rig.blocked(&a, IOVA), "master {i} must abort");
    }
}

/// A record of another version is refused, naming the version found and the one
/// supported.
#[test]
fn record_of_another_version_is_refused_naming_both() {
    let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, Stage::S1, Granule::K4, false);
    prepare_and_freeze(&mut o, &mut unit);
    let payload = unit.handover_record().unwrap().encode();
    let pinned = unit.pinned_pages().unwrap().clone();
    let name = smmuv3::record::client_name(BASE);
    o.kho.remove_client(&name);
    assert!(o
        .kho
        .add_client(name, "iommu-smmuv3-v2".into(), payload, pinned));
    let blob = o.rig.kexec(&mut o.kho);
    let f = o.rig.adopt(&ucfg(StrtabFmt::Linear), blob).unwrap_err();
    let text = f.error.to_string();
    assert!(
        text.contains('2') && text.contains("iommu-smmuv3-v1"),
        "{text}"
    );
    let a = o.agents[0];
    assert!(o.rig.blocked(&a, IOVA));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    /// Random handovers: shape, stage, granule; DMA across the kexec, clean adopt and
    /// verify, U blocked throughout.
    #[test]
    fn random_handovers(two in any::<bool>(), stage in 0usize..3, g64 in any::<bool>()) {
        let strtab = if two { StrtabFmt::TwoLevel } else { StrtabFmt::Linear };
        let stage = [Stage::S1, Stage::S2, Stage::Nested][stage];
        let g = if g64 { Granule::K64 } else { Granule::K4 };
        full_handover(strtab, stage, g);
    }
}

/// Replaces the SMMU's record in `o.kho` with `edit` applied (a well-formed record with
/// a valid checksum), kexecs and adopts: the SMMU must be refused, every master
/// aborting. Returns the refusal.
fn adopt_edited(edit: impl FnOnce(&mut smmuv3::record::Record)) -> HandoverErrorKind {
    let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, Stage::S2, Granule::K4, false);
    prepare_and_freeze(&mut o, &mut unit);
    let mut rec = unit.handover_record().unwrap().clone();
    edit(&mut rec);
    let pinned = unit.pinned_pages().unwrap().clone();
    let name = smmuv3::record::client_name(BASE);
    o.kho.remove_client(&name);
    assert!(o.kho.add_client(
        name,
        smmuv3::record::COMPATIBLE.into(),
        rec.encode(),
        pinned
    ));
    let blob = o.rig.kexec(&mut o.kho);
    let f = o.rig.adopt(&ucfg(StrtabFmt::Linear), blob).unwrap_err();
    for i in 0..3 {
        let a = o.agents[i];
        assert!(
            o.rig.blocked(&a, IOVA),
            "master {i} must abort: {}",
            f.error
        );
    }
    f.error.kind
}

/// A record whose ID registers differ from the live ones is refused, naming the
/// register and both values.
#[test]
fn record_with_other_id_registers_refuses_the_smmu() {
    let mut live = 0;
    let k = adopt_edited(|r| {
        live = r.idr0;
        r.idr0 ^= 1 << 12;
    });
    assert_eq!(
        k,
        HandoverErrorKind::Register {
            register: "IDR0",
            live: live as u64,
            record: (live ^ 1 << 12) as u64
        }
    );
}

/// A record run over memory nobody preserved is refused before any run is trusted.
#[test]
fn record_run_outside_the_preserved_set_refuses_the_smmu() {
    let k = adopt_edited(|r| r.pages.push((PhysAddr(7 << 30), 2)));
    assert!(
        matches!(k, HandoverErrorKind::RecordRunNotPreserved { start, pages: 2, .. } if start == PhysAddr(7 << 30)),
        "{k:?}"
    );
}

/// A leaf mapping memory no KHO client preserves is refused at prepare.
#[test]
fn leaf_target_not_preserved_is_refused_at_prepare() {
    let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, Stage::S1, Granule::K4, false);
    // Guest memory of domain 0 only: domain 1's targets are not preserved.
    preserve_guest(&mut o.kho, &o.domains[..1]);
    let sel = Selection {
        domains: vec![o.domains[0].0, o.domains[1].0],
        masters: vec![o.sids[0], o.sids[1]],
    };
    let kho = &mut o.kho;
    let e = o.rig.hw(|hw| unit.prepare(hw, kho, &sel)).unwrap_err();
    let (iova, pa, _) = o.domains[1].1[0];
    assert!(
        matches!(e.kind, HandoverErrorKind::LeafTargetNotPreserved { did, iova: i, pa: p, .. }
            if did == o.domains[1].0 && i == iova && p == PhysAddr(pa)),
        "{e}"
    );
    // Nothing was added: the domains stay mutable.
    assert!(unit.handover_record().is_none());
}

/// Freeze disables the event queue, whose pages are not preserved: a preserved master
/// faulting between the kexec and adopt must not have the SMMU write an event record
/// into the old queue page (memory the new kernel owns). Adopt's fresh queue records
/// the next fault.
#[test]
fn no_event_record_lands_in_unpreserved_memory_across_the_kexec() {
    let (mut o, mut unit) = old_kernel(StrtabFmt::Linear, Stage::S1, Granule::K4, false);
    let old_queue = unit.event_queue().base;
    prepare_and_freeze(&mut o, &mut unit);
    let blob = o.rig.kexec(&mut o.kho);
    drop(unit);
    let a = o.agents[0];
    assert!(o.rig.blocked(&a, 0x7000), "no mapping at 0x7000");
    let mut rec = [0u8; 32];
    assert!(
        o.rig.machine.mem().read(old_queue, &mut rec).is_err(),
        "the old event queue page must stay untouched (poison)"
    );
    let (mut unit, _) = o.rig.adopt(&ucfg(StrtabFmt::Linear), blob).expect("adopt");
    assert!(o.rig.blocked(&a, 0x7000));
    let ev = o.rig.hw(|hw| unit.poll_events(hw)).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].sid() as u32, o.sids[0]);
}
