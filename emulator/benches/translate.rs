//! DMA translations per second through the VT-d model: IOTLB hits and full 4-level
//! second-stage walks, beside a baseline of plain reads of the same memory.
//!
//! Run with `cargo bench -p emulator --bench translate`. The unit is programmed through
//! its registers; tables are built in sparse memory with the `vtd::hw` layouts.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use emulator::memory::SparseMemory;
use emulator::model::{Access, DmaRequest, IommuModel};
use emulator::vtd::{VtdConfig, VtdUnit};
use iommu_core::mem::PhysMem;
use iommu_core::{Iova, PhysAddr, RequesterId};
use std::hint::black_box;
use vtd::hw::pte::{level_index, SlPte};
use vtd::hw::regs::{self, field_mask32, field_value, GCMD, IOTLB};
use vtd::hw::root::{AddressWidth, ContextEntry, RootEntry, TranslationType};

/// Pages translated per batch.
const PAGES: u64 = 4096;
const DATA: u64 = 0x2000_0000;
const RID: RequesterId = RequesterId::new(0, 1, 0, 0);

struct Setup {
    mem: SparseMemory,
    unit: VtdUnit,
}

/// A legacy unit translating `PAGES` 4 KiB pages at IOVA 0 through a 4-level table.
fn setup() -> Setup {
    let mut mem = SparseMemory::new(&[(PhysAddr(0), 1 << 30)]).expect("ram");
    let mut next = 0x10_0000u64;
    let mut page = |mem: &mut SparseMemory| {
        let p = next;
        next += 4096;
        mem.write(PhysAddr(p), &[0u8; 4096]).expect("zero page");
        p
    };
    let root = page(&mut mem);
    let ctx = page(&mut mem);
    let l4 = page(&mut mem);
    mem.write(
        PhysAddr(root + RID.bus as u64 * 16),
        &RootEntry::new(ctx).qwords()[0].to_le_bytes(),
    )
    .expect("root entry");
    let ce = ContextEntry::new(l4, AddressWidth::Bits48, 1, TranslationType::Untranslated);
    for (i, q) in ce.qwords().iter().enumerate() {
        mem.write_u64(PhysAddr(ctx + RID.devfn as u64 * 16 + 8 * i as u64), *q)
            .expect("context entry");
    }
    for n in 0..PAGES {
        let iova = n * 4096;
        let mut table = l4;
        for level in (2..=4).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = mem.read_u64(PhysAddr(at)).expect("table read");
            table = if v & 3 == 0 {
                let t = page(&mut mem);
                mem.write_u64(PhysAddr(at), SlPte::table(t).raw())
                    .expect("table write");
                t
            } else {
                SlPte::from_raw(v).addr()
            };
        }
        let pa = DATA + n * 4096;
        mem.write_u64(
            PhysAddr(table + level_index(iova, 1) * 8),
            SlPte::page(pa, true, true).raw(),
        )
        .expect("leaf");
        mem.write_u64(PhysAddr(pa), n).expect("data");
    }
    let mut unit = VtdUnit::new(VtdConfig::legacy(PhysAddr(0xfed9_0000))).expect("config");
    unit.mmio_write(&mut mem, regs::RTADDR, 8, root);
    unit.mmio_write(&mut mem, regs::GCMD, 4, field_mask32(GCMD::SRTP) as u64);
    unit.mmio_write(&mut mem, regs::GCMD, 4, field_mask32(GCMD::TE) as u64);
    Setup { mem, unit }
}

fn request(n: u64) -> DmaRequest {
    DmaRequest {
        rid: RID,
        pasid: None,
        privileged: false,
        iova: Iova(n * 4096 + 8),
        access: Access::Read,
    }
}

fn invalidate_iotlb(s: &mut Setup) {
    let (_, iotlb) = regs::iotlb_offsets(s.unit.ecap());
    let v = field_value(IOTLB::IVT, 1) | field_value(IOTLB::IIRG, 1);
    s.unit.mmio_write(&mut s.mem, iotlb, 8, v);
}

fn bench(c: &mut Criterion) {
    let mut s = setup();
    let reqs: Vec<DmaRequest> = (0..PAGES).map(request).collect();
    for r in &reqs {
        s.unit
            .translate(&mut s.mem, r)
            .expect("warm-up translation");
    }
    let mut g = c.benchmark_group("vtd_translate");
    g.throughput(Throughput::Elements(PAGES));
    g.bench_function("baseline_plain_read", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for n in 0..PAGES {
                sum = sum.wrapping_add(s.mem.read_u64(PhysAddr(DATA + n * 4096 + 8)).unwrap_or(0));
            }
            black_box(sum)
        })
    });
    g.bench_function("iotlb_hit", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for r in &reqs {
                if let Ok(t) = s.unit.translate(&mut s.mem, r) {
                    sum = sum.wrapping_add(t.pa.0);
                }
            }
            black_box(sum)
        })
    });
    g.bench_function("walk_4level", |b| {
        b.iter(|| {
            invalidate_iotlb(&mut s);
            let mut sum = 0u64;
            for r in &reqs {
                if let Ok(t) = s.unit.translate(&mut s.mem, r) {
                    sum = sum.wrapping_add(t.pa.0);
                }
            }
            black_box(sum)
        })
    });
    g.finish();
    assert!(
        s.unit.fault_log().is_empty(),
        "benchmark translations faulted"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
