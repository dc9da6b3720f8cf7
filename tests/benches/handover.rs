//! Handover costs of the VT-d driver on the emulator: prepare, freeze, adopt (the
//! blackout path, no table walk), verify (the full walk) and the record size, for
//! several domain counts, mapped sizes and page sizes, beside two baselines measured in
//! the same run:
//!
//! - `memcpy`: copying the same table bytes (every pinned page) out of memory;
//! - `rebuild`: building the same mappings from scratch in a fresh domain.
//!
//! Run with `cargo bench -p tests --bench handover`. The default run is short (a few
//! combinations, 10 samples); `HANDOVER_BENCH=full` runs every combination of 1/16/256
//! domains, 1 GiB/16 GiB mapped with 4 KiB and 2 MiB pages, and 256 GiB with 2 MiB
//! pages; `HANDOVER_BENCH=1:16:4K,256:1:2M` runs the listed `domains:GiB:page`
//! combinations. "Mapped" is the total over all domains; each domain maps an equal share and
//! has one device attached. Sizes and work counts are printed to stderr (criterion
//! measures times only).

#[path = "../tests/vtd_rig/mod.rs"]
mod vtd_rig;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use emulator::vtd::VtdConfig;
use iommu_core::kho::read_preserved;
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vtd::driver::{DomainKind, Invalidation, Mode, PageAllocator, PagePool, Unit, UnitConfig};
use vtd::handover::{KhoOut, Selection};
use vtd_rig::{Rig, BASE, POOL};

const G: u64 = 1 << 30;
/// Mappings point here (outside RAM: they are never DMA'd in the benchmark).
const PA_BASE: u64 = 1 << 40;

#[derive(Clone, Copy)]
struct Combo {
    domains: usize,
    total: u64,
    page: PageSize,
}

impl Combo {
    fn name(&self) -> String {
        let page = if self.page == PageSize::SIZE_4K {
            "4K"
        } else {
            "2M"
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
    let (k4, m2) = (PageSize::SIZE_4K, PageSize::SIZE_2M);
    let var = std::env::var("HANDOVER_BENCH").unwrap_or_default();
    if !var.is_empty() && var != "full" {
        // A list of `domains:GiB:page`, e.g. `1:16:4K,256:1:2M`.
        return var
            .split(',')
            .filter_map(|item| {
                let mut it = item.split(':');
                let d = it.next()?.parse().ok()?;
                let t = it.next()?.parse().ok()?;
                let p = match it.next()? {
                    "4K" | "4k" => k4,
                    "2M" | "2m" => m2,
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
                for p in [k4, m2] {
                    v.push(c(d, t, p));
                }
            }
            v.push(c(d, 256, m2));
        }
        v
    } else {
        vec![c(1, 1, k4), c(16, 1, m2), c(256, 16, m2), c(1, 256, m2)]
    }
}

fn device(i: usize) -> RequesterId {
    RequesterId::new(0, 1 + (i / 32) as u8, (i % 32) as u8, 0)
}

struct Setup {
    rig: Rig,
    unit: Unit,
    doms: Vec<DomainId>,
}

fn config() -> VtdConfig {
    let mut cfg = VtdConfig::legacy(BASE);
    cfg.nd = 4; // 1024 domain IDs
    cfg
}

fn setup(c: Combo) -> Setup {
    let mut rig = Rig::new(config());
    let mut unit = rig
        .hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, Mode::Legacy)))
        .expect("bring-up");
    let doms = rig.hw(|hw| {
        (0..c.domains)
            .map(|i| {
                let d = unit.create_domain(hw, DomainKind::SecondStage).unwrap();
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
                unit.attach(hw, device(i), d).unwrap();
                d
            })
            .collect()
    });
    Setup { rig, unit, doms }
}

/// A handover that preserves the memory the mappings reach (every domain maps the same
/// share at `PA_BASE`), as a VMM preserves guest memory: `prepare` checks every leaf
/// target lies in it.
fn guest_preserved(c: Combo) -> KhoOut {
    let mut kho = KhoOut::new();
    kho.preserve_range(PhysAddr(PA_BASE), c.share() / 4096)
        .expect("guest memory");
    kho
}

fn selection(s: &Setup, c: Combo) -> Selection {
    Selection {
        domains: s.doms.clone(),
        devices: (0..c.domains).map(device).collect(),
    }
}

fn bench(cr: &mut Criterion) {
    for c in combos() {
        let name = c.name();
        let mut s = setup(c);
        let sel = selection(&s, c);
        let mut g = cr.benchmark_group("handover");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));

        // Old kernel: prepare (timed), then cancel.
        g.bench_function(BenchmarkId::new("prepare", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let mut kho = guest_preserved(c);
                    let unit = &mut s.unit;
                    let start = Instant::now();
                    let r = s.rig.hw(|hw| unit.prepare(hw, &mut kho, &sel));
                    t += start.elapsed();
                    black_box(r.expect("prepare"));
                    s.rig.hw(|hw| unit.cancel(hw, &mut kho)).expect("cancel");
                }
                t
            })
        });
        g.bench_function(BenchmarkId::new("freeze", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let mut kho = guest_preserved(c);
                    let unit = &mut s.unit;
                    s.rig
                        .hw(|hw| unit.prepare(hw, &mut kho, &sel))
                        .expect("prepare");
                    let start = Instant::now();
                    let r = s.rig.hw(|hw| unit.freeze(hw));
                    t += start.elapsed();
                    black_box(r.expect("freeze"));
                    s.rig.hw(|hw| unit.cancel(hw, &mut kho)).expect("cancel");
                }
                t
            })
        });

        // Baseline 1: copy every table byte the handover pins.
        let mut kho = guest_preserved(c);
        let unit = &mut s.unit;
        let prep = s
            .rig
            .hw(|hw| unit.prepare(hw, &mut kho, &sel))
            .expect("prepare");
        let pinned: Vec<PhysAddr> = s.unit.pinned_pages().unwrap().pages().collect();
        let record_bytes = prep.record_bytes;
        let mut buf = vec![0u8; pinned.len() * 4096];
        g.bench_function(BenchmarkId::new("baseline-memcpy", &name), |b| {
            b.iter(|| {
                let mem = s.rig.machine.mem();
                for (p, chunk) in pinned.iter().zip(buf.chunks_mut(4096)) {
                    iommu_core::PhysMem::read(&*mem, *p, chunk).expect("read");
                }
                black_box(&buf);
            })
        });
        let unit = &mut s.unit;
        s.rig.hw(|hw| unit.cancel(hw, &mut kho)).expect("cancel");

        // Baseline 2: the same mappings rebuilt in a fresh domain (one domain's share
        // times the domain count: what a new kernel rebuilding everything would do).
        g.bench_function(BenchmarkId::new("baseline-rebuild", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let unit = &mut s.unit;
                    let start = Instant::now();
                    let ds: Vec<DomainId> = s.rig.hw(|hw| {
                        (0..c.domains)
                            .map(|_| {
                                let d = unit.create_domain(hw, DomainKind::SecondStage).unwrap();
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
                    });
                    t += start.elapsed();
                    s.rig.hw(|hw| {
                        for d in ds {
                            unit.unmap(hw, d, Iova(0), c.share()).unwrap();
                            unit.destroy_domain(hw, d).unwrap();
                        }
                    });
                }
                t
            })
        });

        // The real handover, then the new kernel's side.
        let mut kho = guest_preserved(c);
        let unit = &mut s.unit;
        s.rig
            .hw(|hw| unit.prepare(hw, &mut kho, &sel))
            .expect("prepare");
        let blob = {
            let (_, mut mem) = s.rig.machine.driver_access(BASE).unwrap();
            kho.finalize(&mut mem, &mut s.rig.pool).expect("finalize")
        };
        let unit = &mut s.unit;
        s.rig.hw(|hw| unit.freeze(hw)).expect("freeze");
        s.rig.machine.kexec(blob).expect("kexec");
        let preserved = read_preserved(&*s.rig.machine.mem(), blob).unwrap();
        let mut pool = PagePool::new(POOL.0, POOL.1);
        pool.exclude(&preserved);
        s.rig.pool = pool;
        let cfg = UnitConfig::new(BASE, Mode::Legacy);
        let (mut adopted, report) = s.rig.hw(|hw| Unit::adopt(hw, &cfg, blob)).expect("adopt");
        let vr = s.rig.hw(|hw| adopted.verify(hw)).expect("verify");
        give_back(&mut s.rig, &adopted);
        eprintln!(
            "handover {name}: record {record_bytes} bytes, {} pinned pages ({} KiB of tables), \
             prepare reads {} entries, adopt reads {} registers + {} entries, verify reads {} entries ({} leaves)",
            prep.pinned_pages,
            prep.pinned_pages * 4,
            prep.entries_read,
            report.registers_read,
            report.entries_read,
            vr.entries_read,
            vr.leaves
        );
        // Each adoption takes two pages (its fresh invalidation queue and status page);
        // give them back after each iteration so long runs do not exhaust the pool.
        fn give_back(rig: &mut Rig, u: &Unit) {
            if let Invalidation::Queue(q) = u.invalidation() {
                rig.pool.free_page(q.base);
                rig.pool.free_page(q.status);
            }
        }
        g.bench_function(BenchmarkId::new("adopt", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let r = s.rig.hw(|hw| Unit::adopt(hw, &cfg, blob));
                    t += start.elapsed();
                    let (u, rep) = r.expect("adopt");
                    black_box(&rep);
                    give_back(&mut s.rig, &u);
                }
                t
            })
        });
        g.bench_function(BenchmarkId::new("verify", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let (mut u, _) = s.rig.hw(|hw| Unit::adopt(hw, &cfg, blob)).expect("adopt");
                    let start = Instant::now();
                    let r = s.rig.hw(|hw| u.verify(hw));
                    t += start.elapsed();
                    black_box(r.expect("verify"));
                    give_back(&mut s.rig, &u);
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
