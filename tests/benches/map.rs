//! Map and unmap costs of the VT-d driver on the emulator: 1 GiB mapped (then unmapped)
//! with 4 KiB pages and with 2 MiB pages in one second-stage domain, beside a baseline
//! measured in the same run:
//!
//! - `baseline-memcpy`: copying the same table bytes (every table page of the mapped
//!   domain) out of memory.
//!
//! Run with `cargo bench -p tests --bench map`; compare two builds with criterion's
//! `--save-baseline NAME` and `--baseline NAME`.

#[path = "../tests/vtd_rig/mod.rs"]
mod vtd_rig;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use emulator::vtd::VtdConfig;
use iommu_core::pgtable::{Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vtd::driver::{DomainKind, Mode, Unit, UnitConfig};
use vtd_rig::{Rig, BASE};

const G: u64 = 1 << 30;
/// Mappings point here (outside RAM: never DMA'd in the benchmark).
const PA_BASE: u64 = 1 << 40;

fn map(rig: &mut Rig, unit: &mut Unit, d: DomainId, page: PageSize) {
    rig.hw(|hw| unit.map(hw, d, Iova(0), PhysAddr(PA_BASE), G, page, Perms::RW))
        .expect("map");
}

fn unmap(rig: &mut Rig, unit: &mut Unit, d: DomainId) {
    let n = rig.hw(|hw| unit.unmap(hw, d, Iova(0), G)).expect("unmap");
    assert_eq!(n, G);
}

fn bench(cr: &mut Criterion) {
    for (page, pname) in [(PageSize::SIZE_4K, "4K"), (PageSize::SIZE_2M, "2M")] {
        let name = format!("1GiB/{pname}");
        let mut rig = Rig::new(VtdConfig::legacy(BASE));
        let mut unit = rig
            .hw(|hw| Unit::init(hw, &UnitConfig::new(BASE, Mode::Legacy)))
            .expect("bring-up");
        let d = rig
            .hw(|hw| unit.create_domain(hw, DomainKind::SecondStage))
            .expect("domain");
        let mut g = cr.benchmark_group("map");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("map", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    map(&mut rig, &mut unit, d, page);
                    t += start.elapsed();
                    unmap(&mut rig, &mut unit, d);
                }
                t
            })
        });
        g.bench_function(BenchmarkId::new("unmap", &name), |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    map(&mut rig, &mut unit, d, page);
                    let start = Instant::now();
                    unmap(&mut rig, &mut unit, d);
                    t += start.elapsed();
                }
                t
            })
        });
        // Baseline: copy every table page of the mapped tree.
        map(&mut rig, &mut unit, d, page);
        let tables: Vec<PhysAddr> = {
            let mem = rig.machine.mem();
            let w = unit
                .walk_domain(&*mem, d, &WalkLimits::default())
                .expect("domain")
                .expect("walk");
            w.tables.iter().map(|t| t.addr).collect()
        };
        eprintln!("map {name}: {} table pages", tables.len());
        let mut buf = vec![0u8; tables.len() * 4096];
        g.bench_function(BenchmarkId::new("baseline-memcpy", &name), |b| {
            b.iter(|| {
                let mem = rig.machine.mem();
                for (p, chunk) in tables.iter().zip(buf.chunks_mut(4096)) {
                    iommu_core::PhysMem::read(&*mem, *p, chunk).expect("read");
                }
                black_box(&buf);
            })
        });
        unmap(&mut rig, &mut unit, d);
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
