//! Dump of a snapshot holding 2^20 non-coalescing 4 KiB mappings, beside a baseline that
//! only reads the same table pages from the same memory-mapped image.
//!
//! Short by default (10 samples); `cargo bench -p inspector --bench dump`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{rid, Rig};
use criterion::{criterion_group, criterion_main, Criterion};
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::model::{Filter, LoadOptions, Loaded};
use inspector::vtd::scan::Translation;
use inspector::vtd::state::{walk_table, walk_table_with};
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use std::hint::black_box;
use std::time::Duration;
use vtd::hw::pte::SlPte;

const MAPPINGS: u64 = 1 << 20;

/// Counts the bytes written (a sink that still makes the formatter do its work).
struct Count(u64);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A legacy machine whose device 00:02.0 maps IOVA page i to PA page 2i + 1 (so no two
/// leaves coalesce): 2048 leaf tables written a page at a time.
fn snapshot() -> Vec<u8> {
    let mut r = Rig::legacy();
    let d = rid(0, 2, 0);
    r.device(d, None);
    let root = r.legacy_context(d, 1, 4);
    let per_table = 512u64;
    for t in 0..MAPPINGS / per_table {
        let iova = t * per_table * 4096;
        // Create the path with the first page, then fill the whole leaf table.
        r.map(root, 4, iova, 0x1_0000_0000, 1, true, true);
        let leaf_table = r.leaf_entry(root, 4, iova) & !0xfff;
        let mut page = [0u8; 4096];
        for i in 0..per_table {
            let n = t * per_table + i;
            let pa = 0x1_0000_0000 + (2 * n + 1) * 4096;
            let pte = SlPte::page(pa, true, i % 3 != 0).raw();
            page[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&pte.to_le_bytes());
        }
        r.m.mem_mut()
            .write(PhysAddr(leaf_table), &page)
            .expect("leaf table");
    }
    r.bytes()
}

fn bench(c: &mut Criterion) {
    let bytes = snapshot();
    // INSPECT_BENCH_SAVE=FILE keeps the snapshot for timing the binary end to end.
    if let Some(p) = std::env::var_os("INSPECT_BENCH_SAVE") {
        std::fs::write(p, &bytes).expect("snapshot saved");
    }
    let image = Image::from_bytes("bench.elf", bytes, OpenAs::Elf).expect("snapshot");
    let l = Loaded::from_image(image, &LoadOptions::default()).expect("units");
    let us = l.vtd_units()[0];
    let Translation::Tables(pt) = us.scan.contexts.get(0).translation else {
        panic!("device has a page table");
    };
    let w = walk_table(&us.unit, &l.image, &pt);
    assert_eq!(w.mappings.len() as u64, MAPPINGS, "no two leaves coalesce");
    assert!(w.problems.is_empty());
    let tables = w.tables.clone();
    drop(w);
    let filter = Filter::default();

    let mut g = c.benchmark_group("dump-1M-mappings");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("baseline: read every table page", |b| {
        let mut buf = vec![0u8; 4096];
        b.iter(|| {
            let mut x = 0u64;
            for t in &tables {
                l.image.read(t.addr, &mut buf).expect("table");
                for c in buf.chunks_exact(8) {
                    x ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
            }
            black_box(x)
        })
    });
    g.bench_function("walk only (count runs)", |b| {
        b.iter(|| {
            let mut n = 0u64;
            walk_table_with(&us.unit, &l.image, &pt, |_| n += 1);
            black_box(n)
        })
    });
    g.bench_function("dump text (buffered, bytes counted)", |b| {
        b.iter(|| {
            let mut out = std::io::BufWriter::new(Count(0));
            dump(&l, &filter, OutputFormat::Text, &mut out).expect("dump");
            black_box(out.into_inner().map(|c| c.0).unwrap_or(0))
        })
    });
    g.bench_function("dump linux (buffered, bytes counted)", |b| {
        b.iter(|| {
            let mut out = std::io::BufWriter::new(Count(0));
            dump(&l, &filter, OutputFormat::Linux, &mut out).expect("dump");
            black_box(out.into_inner().map(|c| c.0).unwrap_or(0))
        })
    });
    g.bench_function("dump json (buffered, bytes counted)", |b| {
        b.iter(|| {
            let mut out = std::io::BufWriter::new(Count(0));
            dump(&l, &filter, OutputFormat::Json, &mut out).expect("dump");
            black_box(out.into_inner().map(|c| c.0).unwrap_or(0))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
