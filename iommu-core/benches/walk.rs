//! Walker throughput: a 4-level tree with 2^20 4 KiB leaves whose physical addresses
//! are not contiguous (so nothing coalesces: 2^20 runs), walked with `walk_with` and
//! `walk`, beside a baseline that only reads the same table bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iommu_core::addr::{PageSize, PhysAddr};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::{walk, walk_with, Entry, EntryError, Format, Perms, WalkLimits};
use std::hint::black_box;

/// VT-d-second-stage-like geometry, own encoding: bit 0 read, bit 1 write, bit 7 leaf,
/// bits 51:12 address.
struct Bench4;

impl Format for Bench4 {
    fn name(&self) -> &'static str {
        "bench-4"
    }
    fn root_level(&self) -> u8 {
        4
    }
    fn table_bytes(&self, _: u8) -> u64 {
        4096
    }
    fn entry_shift(&self, level: u8) -> u32 {
        12 + 9 * (level as u32 - 1)
    }
    fn ia_bits(&self) -> u32 {
        48
    }
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        if raw & 3 == 0 {
            return Ok(Entry::Invalid);
        }
        let perms = Perms {
            read: raw & 1 != 0,
            write: raw & 2 != 0,
            exec: false,
        };
        let addr = PhysAddr(raw & 0x000f_ffff_ffff_f000);
        if level == 1 || raw & 0x80 != 0 {
            let size = PageSize::from_shift(self.entry_shift(level)).ok_or(EntryError {
                reason: "bad level",
            })?;
            Ok(Entry::Leaf {
                base: addr,
                size,
                perms,
            })
        } else {
            Ok(Entry::Table {
                next: addr,
                level: level - 1,
                perms,
            })
        }
    }
}

/// Flat memory from `base`.
struct Flat {
    base: u64,
    bytes: Vec<u8>,
}

impl PhysMem for Flat {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let off = addr
            .0
            .checked_sub(self.base)
            .ok_or(MemError::Unbacked { addr })? as usize;
        let src = self
            .bytes
            .get(off..off + buf.len())
            .ok_or(MemError::Unbacked { addr })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let off = (addr.0 - self.base) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

const LEAVES: u64 = 1 << 20;
const BASE: u64 = 0x1000_0000;

/// Root, one level-3 table, 4 level-2 tables, 2048 level-1 tables, laid out in order.
fn build() -> (Flat, PhysAddr, Vec<PhysAddr>) {
    let l1_tables = LEAVES / 512;
    let l2_tables = l1_tables / 512;
    let total = 2 + l2_tables + l1_tables;
    let mut mem = Flat {
        base: BASE,
        bytes: vec![0; (total * 4096) as usize],
    };
    let page = |i: u64| BASE + i * 4096;
    let root = page(0);
    let l3 = page(1);
    mem.write_u64(PhysAddr(root), l3 | 3).unwrap();
    for j in 0..l2_tables {
        let l2 = page(2 + j);
        mem.write_u64(PhysAddr(l3 + j * 8), l2 | 3).unwrap();
        for k in 0..512 {
            let l1 = page(2 + l2_tables + j * 512 + k);
            mem.write_u64(PhysAddr(l2 + k * 8), l1 | 3).unwrap();
            for e in 0..512 {
                let n = (j * 512 + k) * 512 + e;
                // Every other 4 KiB frame: contiguous IOVAs, non-contiguous PAs.
                let pa = 0x100_0000_0000 + n * 0x2000;
                mem.write_u64(PhysAddr(l1 + e * 8), pa | 3).unwrap();
            }
        }
    }
    let tables = (0..total).map(|i| PhysAddr(page(i))).collect();
    (mem, PhysAddr(root), tables)
}

fn bench(c: &mut Criterion) {
    let (mem, root, tables) = build();
    let limits = WalkLimits::default();
    let mut g = c.benchmark_group("walk-1M-leaves");
    g.sample_size(10);
    g.throughput(Throughput::Elements(LEAVES));
    g.bench_function("baseline-read-tables", |b| {
        let mut buf = vec![0u8; 4096];
        b.iter(|| {
            let mut x = 0u64;
            for &t in &tables {
                mem.read(t, &mut buf).unwrap();
                x = x.wrapping_add(buf[8] as u64);
            }
            black_box(x)
        })
    });
    g.bench_function("walk_with-count", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let s = walk_with(&Bench4, &mem, root, &limits, |_| n += 1).unwrap();
            assert_eq!(n, LEAVES);
            black_box(s.tables.len())
        })
    });
    g.bench_function("walk-collect", |b| {
        b.iter(|| {
            let w = walk(&Bench4, &mem, root, &limits).unwrap();
            assert_eq!(w.mappings.len() as u64, LEAVES);
            black_box(w.mappings.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
