//! Handover costs of the SMMUv3 driver on the emulator: freeze, adopt (the blackout
//! path: registers, L1 descriptors, STEs and CDs, no table walk) and verify (the full
//! walk), beside two baselines measured in the same run:
//!
//! - `memcpy`: copying every page the handover pins (stream table, CD tables, page
//!   tables) out of memory;
//! - `rebuild`: building the same mappings from scratch in fresh domains.
//!
//! Run with `cargo bench -p tests --bench smmuv3_handover`. The default run is short
//! (four combinations, 10 samples); `SMMUV3_BENCH=full` runs 1/16/256 domains with
//! 1 GiB and 16 GiB mapped in 4 KiB pages, 2 MiB blocks and 64 KiB pages (64 KiB
//! granule), and 256 GiB in 2 MiB blocks; `SMMUV3_BENCH=1:16:4K,256:1:64K` runs the listed `domains:GiB:page`
//! combinations. "Mapped" is the total over all domains (stage 1, a 2-level stream
//! table); each domain maps an equal share and has one master. Sizes and work counts
//! are printed to stderr (criterion measures times only).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use iommu_core::kho::{read_preserved, KhoOut};
use iommu_core::pgtable::Perms;
use iommu_core::pool::PageAllocator;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};
use smmuv3::driver::{PagePool, Stage, Unit};
use smmuv3::handover::Selection;
use smmuv3::hw::ste::StrtabFmt;
use smmuv3::hw::Granule;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tests::smmuv3_rig::{ucfg, Rig, BASE, NEW_POOL};

const G: u64 = 1 << 30;
/// Mappings point here (outside RAM: never DMA'd in the benchmark).
const PA_BASE: u64 = 1 << 40;

#[derive(Clone, Copy)]
struct Combo {
    domains: usize,
    total: u64,
    page: PageSize,
}

impl Combo {
    fn granule(&self) -> Granule {
        if self.page.bytes() == 64 << 10 {
            Granule::K64
        } else {
            Granule::K4
        }
    }
    fn name(&self) -> String {
        let page = match self.page.bytes() {
            0x1000 => "4K",
            0x1_0000 => "64K",
            _ => "2M",
        };
        format!("{}dom/{}GiB/{page}", self.domains, self.total / G)
    }
    fn share(&self) -> u64 {
        self.total / self.domains as u64
    }
}

fn combos() -> Vec<Combo> {
    let c = |domains, total_gib: u64, page| Combo {
        domains,
        total: total_gib * G,
        page,
    };
    let k4 = PageSize::SIZE_4K;
    let m2 = PageSize::SIZE_2M;
    let k64 = PageSize::new(64 << 10).expect("64K");
    let var = std::env::var("SMMUV3_BENCH").unwrap_or_default();
    if !var.is_empty() && var != "full" {
        return var
            .split(',')
            .filter_map(|item| {
                let mut it = item.split(':');
                let d = it.next()?.parse().ok()?;
                let t = it.next()?.parse().ok()?;
                let p = match it.next()? {
                    "4K" | "4k" => k4,
                    "2M" | "2m" => m2,
                    "64K" | "64k" => k64,
                    _ => return None,
                };
                Some(c(d, t, p))
            })
            .collect();
    }
    if var == "full" {
        let mut v = Vec::new();
        for d in [1, 16, 256] {
            for t in [1, 16] {
                for p in [k4, m2, k64] {
                    v.push(c(d, t, p));
                }
            }
            v.push(c(d, 256, m2));
        }
        v
    } else {
        vec![c(1, 1, k4), c(16, 1, m2), c(256, 16, m2), c(1, 1, k64)]
    }
}

/// StreamID of master `i` (bus 1.., one per devfn).
fn sid(i: usize) -> u32 {
    (1 + (i / 256) as u32) << 8 | (i % 256) as u32
}

fn build(rig: &mut Rig, unit: &mut Unit, c: Combo) -> Vec<DomainId> {
    rig.hw(|hw| {
        (0..c.domains)
            .map(|_| {
                let d = unit.create_domain(hw, Stage::S1, c.granule()).unwrap();
                unit.map(
                    hw,
                    d,
                    Iova(0),
                    PhysAddr(PA_BASE),
                    c.share(),
                    c.page,
                    Perms::RW,
                )
                .unwrap();
                d
            })
            .collect()
    })
}

fn guest(c: Combo) -> KhoOut {
    let mut kho = KhoOut::new();
    kho.preserve_range(PhysAddr(PA_BASE), c.share() / 4096)
        .expect("guest memory");
    kho
}

fn bench(cr: &mut Criterion) {
    for c in combos() {
        let name = c.name();
        let mut rig = Rig::new(emulator::smmuv3::SmmuV3Config::new(BASE));
        let cfg = ucfg(StrtabFmt::TwoLevel);
        let mut unit = rig.hw(|hw| Unit::init(hw, &cfg)).expect("bring-up");
        let doms = build(&mut rig, &mut unit, c);
        rig.hw(|hw| {
            for (i, &d) in doms.iter().enumerate() {
                unit.attach(hw, sid(i), d).unwrap();
            }
        });
        let sel = Selection {
            domains: doms.clone(),
            masters: (0..c.domains).map(sid).collect(),
        };
        let mut g = cr.benchmark_group("smmuv3_handover");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1));

        g.bench_function(BenchmarkId::new("freeze", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let mut kho = guest(c);
                    rig.hw(|hw| unit.prepare(hw, &mut kho, &sel))
                        .expect("prepare");
                    let start = Instant::now();
                    let r = rig.hw(|hw| unit.freeze(hw));
                    t += start.elapsed();
                    black_box(r.expect("freeze"));
                    rig.hw(|hw| unit.cancel(hw, &mut kho)).expect("cancel");
                }
                t
            })
        });

        // Baseline 1: copy every page the handover pins.
        let mut kho = guest(c);
        let prep = rig
            .hw(|hw| unit.prepare(hw, &mut kho, &sel))
            .expect("prepare");
        let pinned: Vec<PhysAddr> = unit.pinned_pages().unwrap().pages().collect();
        let mut buf = vec![0u8; pinned.len() * 4096];
        g.bench_function(BenchmarkId::new("baseline-memcpy", &name), |b| {
            b.iter(|| {
                let mem = rig.machine.mem();
                for (p, chunk) in pinned.iter().zip(buf.chunks_mut(4096)) {
                    iommu_core::PhysMem::read(&*mem, *p, chunk).expect("read");
                }
                black_box(&buf);
            })
        });
        rig.hw(|hw| unit.cancel(hw, &mut kho)).expect("cancel");

        // Baseline 2: the same mappings rebuilt in fresh domains.
        g.bench_function(BenchmarkId::new("baseline-rebuild", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let mut fresh = Rig::new(emulator::smmuv3::SmmuV3Config::new(BASE));
                    let mut u = fresh.hw(|hw| Unit::init(hw, &cfg)).expect("bring-up");
                    let start = Instant::now();
                    black_box(build(&mut fresh, &mut u, c));
                    t += start.elapsed();
                }
                t
            })
        });

        // The real handover, then the new kernel's side.
        let mut kho = guest(c);
        let prep2 = rig
            .hw(|hw| unit.prepare(hw, &mut kho, &sel))
            .expect("prepare");
        rig.hw(|hw| unit.freeze(hw)).expect("freeze");
        // The guest memory lies outside RAM: the preserved set is read without the
        // RAM check of the rig's `kexec`.
        let blob = kho
            .finalize(rig.machine.mem_mut(), &mut rig.pool)
            .expect("KHO blob");
        rig.machine.kexec(blob).expect("kexec");
        let preserved = read_preserved(&*rig.machine.mem(), blob).expect("preserved set");
        rig.pool = PagePool::new(NEW_POOL.0, NEW_POOL.1);
        rig.pool.exclude(&preserved);
        let adopt = |rig: &mut Rig| rig.hw(|hw| Unit::adopt(hw, &cfg, blob));
        let (mut adopted, report) = adopt(&mut rig).expect("adopt");
        let vr = rig.hw(|hw| adopted.verify(hw)).expect("verify");
        assert!(vr.failures.is_empty());
        fn give_back(rig: &mut Rig, u: &Unit) {
            rig.pool.free_page(u.command_queue().base);
            rig.pool.free_page(u.event_queue().base);
        }
        give_back(&mut rig, &adopted);
        eprintln!(
            "smmuv3 handover {name}: record {} bytes, {} pinned pages, adopt reads {} registers + {} entries, verify checks {} table pages and {} leaf runs",
            prep2.record_bytes,
            prep.pages_pinned,
            report.registers_read,
            report.entries_read,
            vr.tables,
            vr.leaf_targets_checked
        );
        g.bench_function(BenchmarkId::new("adopt", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let r = adopt(&mut rig);
                    t += start.elapsed();
                    let (u, rep) = r.expect("adopt");
                    black_box(&rep);
                    give_back(&mut rig, &u);
                }
                t
            })
        });
        g.bench_function(BenchmarkId::new("verify", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let (mut u, _) = adopt(&mut rig).expect("adopt");
                    let start = Instant::now();
                    let r = rig.hw(|hw| u.verify(hw));
                    t += start.elapsed();
                    black_box(r.expect("verify"));
                    give_back(&mut rig, &u);
                }
                t
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
