//! Handover costs of the AMD-Vi driver on the emulator (v1 domains): freeze, adopt (the
//! blackout path: registers, DTEs and the device-table sweep, no table walk) and verify
//! (the full walk), beside two baselines measured in the same run:
//!
//! - `memcpy`: copying every page the handover pins (device table and page tables);
//! - `rebuild`: building the same mappings from scratch in fresh domains.
//!
//! Run with `cargo bench -p tests --bench amdvi_handover`. Rows are `domains:GiB:page`
//! items in `AMDVI_BENCH` (default `1:1:4K,16:1:2M,256:16:2M`); "GiB" is the total over
//! all domains, each domain mapping an equal share with one device attached. Work
//! counts and sizes go to stderr.

#[path = "../tests/amdvi_rig/mod.rs"]
mod amdvi_rig;

use amdvi::driver::{PageAllocator, PagePool, Unit};
use amdvi::handover::{KhoOut, Selection};
use amdvi_rig::{unit_config, Rig, BASE, POOL};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use iommu_core::kho::read_preserved;
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};
use std::hint::black_box;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
/// Mappings point here (outside RAM: never DMA'd in the benchmark).
const TARGET: u64 = 1 << 40;

/// One row: domains, bytes mapped in total, page size.
type Row = (usize, u64, PageSize);

fn rows() -> Vec<Row> {
    let spec = std::env::var("AMDVI_BENCH").unwrap_or_else(|_| "1:1:4K,16:1:2M,256:16:2M".into());
    spec.split(',')
        .filter_map(|item| {
            let f: Vec<&str> = item.split(':').collect();
            let page = match *f.get(2)? {
                "4K" => PageSize::SIZE_4K,
                "2M" => PageSize::SIZE_2M,
                _ => return None,
            };
            Some((
                f[0].parse().ok()?,
                f.get(1)?.parse::<u64>().ok()? * GIB,
                page,
            ))
        })
        .collect()
}

fn label(r: Row) -> String {
    let p = if r.2 == PageSize::SIZE_4K { "4K" } else { "2M" };
    format!("{}dom/{}GiB/{p}", r.0, r.1 / GIB)
}

/// DeviceID of the `i`th device: bus 1 onwards.
fn dev(i: usize) -> u16 {
    0x100 + i as u16
}

/// Maps one domain's share in fresh domains; returns their IDs.
fn build(rig: &mut Rig, unit: &mut Unit, r: Row, attach: bool) -> Vec<DomainId> {
    let share = r.1 / r.0 as u64;
    rig.hw(|hw| {
        (0..r.0)
            .map(|i| {
                let kind = unit.default_v1();
                let d = unit.create_domain(hw, kind).unwrap();
                unit.map(hw, d, Iova(0), PhysAddr(TARGET), share, r.2, Perms::RW)
                    .unwrap();
                if attach {
                    unit.attach(hw, dev(i), d).unwrap();
                }
                d
            })
            .collect()
    })
}

fn kho_for(r: Row) -> KhoOut {
    let mut kho = KhoOut::new();
    kho.preserve_range(PhysAddr(TARGET), r.1 / r.0 as u64 / 4096)
        .unwrap();
    kho
}

/// Gives back the three ring pages an adoption took.
fn release(rig: &mut Rig, u: &Unit) {
    if let Some(x) = u.rings() {
        for p in [x.cmd, x.evt, x.sem] {
            rig.pool.free_page(p);
        }
    }
}

fn bench(cr: &mut Criterion) {
    for r in rows() {
        let name = label(r);
        let mut rig = Rig::new(None);
        let mut unit = rig.hw(|hw| Unit::init(hw, &unit_config())).unwrap();
        let doms = build(&mut rig, &mut unit, r, true);
        let sel = Selection {
            domains: doms.clone(),
            devices: (0..r.0).map(dev).collect(),
        };
        let mut g = cr.benchmark_group("amdvi-handover");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1));

        g.bench_function(BenchmarkId::new("freeze", &name), |b| {
            b.iter_custom(|n| {
                let mut t = Duration::ZERO;
                for _ in 0..n {
                    let mut kho = kho_for(r);
                    rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
                    let s = Instant::now();
                    black_box(rig.hw(|hw| unit.freeze(hw)).unwrap());
                    t += s.elapsed();
                    rig.hw(|hw| unit.cancel(hw, &mut kho)).unwrap();
                }
                t
            })
        });

        let mut kho = kho_for(r);
        let prep = rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
        let pinned: Vec<PhysAddr> = unit.pinned_pages().unwrap().pages().collect();
        let mut buf = vec![0u8; pinned.len() * 4096];
        g.bench_function(BenchmarkId::new("baseline-memcpy", &name), |b| {
            b.iter(|| {
                let mem = rig.machine.mem();
                for (p, c) in pinned.iter().zip(buf.chunks_mut(4096)) {
                    iommu_core::PhysMem::read(&*mem, *p, c).unwrap();
                }
                black_box(&buf);
            })
        });
        rig.hw(|hw| unit.cancel(hw, &mut kho)).unwrap();

        g.bench_function(BenchmarkId::new("baseline-rebuild", &name), |b| {
            b.iter_custom(|n| {
                let mut t = Duration::ZERO;
                for _ in 0..n {
                    let s = Instant::now();
                    let ds = build(&mut rig, &mut unit, r, false);
                    t += s.elapsed();
                    rig.hw(|hw| {
                        for d in ds {
                            unit.unmap(hw, d, Iova(0), r.1 / r.0 as u64).unwrap();
                            unit.destroy_domain(hw, d).unwrap();
                        }
                    });
                }
                t
            })
        });

        // The real handover, then the new kernel.
        let mut kho = kho_for(r);
        rig.hw(|hw| unit.prepare(hw, &mut kho, &sel)).unwrap();
        let blob = {
            let (_, mut mem) = rig.machine.driver_access(BASE).unwrap();
            kho.finalize(&mut mem, &mut rig.pool).unwrap()
        };
        let fr = rig.hw(|hw| unit.freeze(hw)).unwrap();
        rig.machine.kexec(blob).unwrap();
        let preserved = read_preserved(&*rig.machine.mem(), blob).unwrap();
        rig.pool = PagePool::new(POOL.0, POOL.1);
        rig.pool.exclude(&preserved);
        let (mut a, ar) = rig
            .hw(|hw| Unit::adopt_with_preserved(hw, &unit_config(), blob, preserved.clone()))
            .unwrap();
        let vr = rig.hw(|hw| a.verify(hw)).unwrap();
        release(&mut rig, &a);
        eprintln!(
            "amdvi handover {name}: record {} bytes, {} pinned pages, freeze {} commands, \
             adopt {} registers + {} entries, verify {} entries ({} leaves)",
            prep.record_bytes,
            prep.pinned_pages,
            fr.commands,
            ar.registers_read,
            ar.entries_read,
            vr.entries_read,
            vr.leaves
        );
        g.bench_function(BenchmarkId::new("adopt", &name), |b| {
            b.iter_custom(|n| {
                let mut t = Duration::ZERO;
                for _ in 0..n {
                    let p = preserved.clone();
                    let s = Instant::now();
                    let x = rig.hw(|hw| Unit::adopt_with_preserved(hw, &unit_config(), blob, p));
                    t += s.elapsed();
                    let (u, rep) = x.unwrap();
                    black_box(&rep);
                    release(&mut rig, &u);
                }
                t
            })
        });
        g.bench_function(BenchmarkId::new("verify", &name), |b| {
            b.iter_custom(|n| {
                let mut t = Duration::ZERO;
                for _ in 0..n {
                    let p = preserved.clone();
                    let (mut u, _) = rig
                        .hw(|hw| Unit::adopt_with_preserved(hw, &unit_config(), blob, p))
                        .unwrap();
                    let s = Instant::now();
                    black_box(rig.hw(|hw| u.verify(hw)).unwrap());
                    t += s.elapsed();
                    release(&mut rig, &u);
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
