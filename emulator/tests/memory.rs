//! Sparse memory: RAM layout, poison, raw access, retention, cost of sparse tables.

use emulator::memory::{
    poison_byte, MemoryConfigError, PageValidity, SparseMemory, POISON_WORD, VALID_WORDS,
};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pageset::PageSet;
use iommu_core::PhysAddr;
use proptest::prelude::*;
use std::collections::HashMap;

fn mem() -> SparseMemory {
    SparseMemory::new(&[
        (PhysAddr(0x10_0000), 0x10_0000),
        (PhysAddr(0x20_0000), 0x1000),
        (PhysAddr(0x100_0000), 0x4000),
    ])
    .expect("valid layout")
}

#[test]
fn layout_is_validated() {
    assert!(matches!(
        SparseMemory::new(&[(PhysAddr(0x1000), 0)]),
        Err(MemoryConfigError::BadRange { index: 0, .. })
    ));
    assert!(matches!(
        SparseMemory::new(&[(PhysAddr(0), 0x1000), (PhysAddr(0x2800), 0x1000)]),
        Err(MemoryConfigError::BadRange { index: 1, .. })
    ));
    assert!(matches!(
        SparseMemory::new(&[(PhysAddr(u64::MAX - 0xfff), 0x2000)]),
        Err(MemoryConfigError::BadRange { .. })
    ));
    let e = SparseMemory::new(&[(PhysAddr(0x4000), 0x2000), (PhysAddr(0), 0x5000)]);
    match e {
        Err(MemoryConfigError::Overlap { first, second }) => {
            assert_eq!(first.start(), 0);
            assert_eq!(second.start(), 0x4000);
        }
        other => panic!("expected an overlap, got {other:?}"),
    }
    // Adjacent ranges are fine, and the top page of the address space is allowed.
    let m = SparseMemory::new(&[
        (PhysAddr(0x1000), 0x1000),
        (PhysAddr(0), 0x1000),
        (PhysAddr(u64::MAX - 0xfff), 0x1000),
    ])
    .expect("adjacent ranges");
    assert_eq!(m.ram_ranges()[0].start(), 0);
    assert!(m.is_backed(PhysAddr(u64::MAX)));
}

#[test]
fn never_written_memory_is_poison_naming_the_first_byte() {
    let mut m = mem();
    let mut b = [0u8; 16];
    assert_eq!(
        m.read(PhysAddr(0x10_0008), &mut b),
        Err(MemError::Poisoned {
            addr: PhysAddr(0x10_0008)
        })
    );
    m.write(PhysAddr(0x10_0008), &[1, 2, 3, 4]).unwrap();
    // Bytes 8..12 valid, 12.. poisoned: the error names 0x10_000c.
    assert_eq!(
        m.read(PhysAddr(0x10_0008), &mut b),
        Err(MemError::Poisoned {
            addr: PhysAddr(0x10_000c)
        })
    );
    let mut four = [0u8; 4];
    m.read(PhysAddr(0x10_0008), &mut four).unwrap();
    assert_eq!(four, [1, 2, 3, 4]);
    // A byte before the written ones is poisoned too.
    assert_eq!(
        m.read_u64(PhysAddr(0x10_0000)),
        Err(MemError::Poisoned {
            addr: PhysAddr(0x10_0000)
        })
    );
    assert_eq!(
        m.first_poisoned(PhysAddr(0x10_0008), 16),
        Ok(Some(PhysAddr(0x10_000c)))
    );
    assert_eq!(m.first_poisoned(PhysAddr(0x10_0008), 4), Ok(None));
}

#[test]
fn raw_reads_show_the_poison_pattern() {
    let mut m = mem();
    m.write(PhysAddr(0x10_0003), &[0xaa]).unwrap();
    let mut raw = [0u8; 16];
    m.read_raw(PhysAddr(0x10_0000), &mut raw).unwrap();
    let mut expect = [0u8; 16];
    for (i, e) in expect.iter_mut().enumerate() {
        *e = poison_byte(0x10_0000 + i as u64);
    }
    expect[3] = 0xaa;
    assert_eq!(raw, expect);
    // An aligned word of never-written memory reads as the documented pattern.
    let mut w = [0u8; 8];
    m.read_raw(PhysAddr(0x10_0ff8), &mut w).unwrap();
    assert_eq!(u64::from_le_bytes(w), 0xdead_beef_badc_0ffe);
    assert_eq!(POISON_WORD, 0xdead_beef_badc_0ffe);
    // Raw reads still refuse addresses outside RAM.
    assert_eq!(
        m.read_raw(PhysAddr(0x20_0ff8), &mut raw),
        Err(MemError::Unbacked {
            addr: PhysAddr(0x20_1000)
        })
    );
}

#[test]
fn outside_ram_is_unbacked_and_a_failed_write_changes_nothing() {
    let mut m = mem();
    let mut b = [0u8; 8];
    assert_eq!(
        m.read(PhysAddr(0x5000), &mut b),
        Err(MemError::Unbacked {
            addr: PhysAddr(0x5000)
        })
    );
    // The two first ranges are adjacent at 0x20_0000; the second ends at 0x20_1000.
    let data = [0x11u8; 0x20];
    assert_eq!(
        m.write(PhysAddr(0x20_0ff0), &data),
        Err(MemError::Unbacked {
            addr: PhysAddr(0x20_1000)
        })
    );
    assert_eq!(m.populated_pages(), 0, "the failed write allocated nothing");
    assert_eq!(
        m.first_poisoned(PhysAddr(0x20_0ff0), 0x10),
        Ok(Some(PhysAddr(0x20_0ff0)))
    );
    // A write across the adjacent boundary works.
    m.write(PhysAddr(0x1f_fff0), &data).unwrap();
    let mut back = [0u8; 0x20];
    m.read(PhysAddr(0x1f_fff0), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        m.write(PhysAddr(u64::MAX - 3), &data),
        Err(MemError::Overflow {
            addr: PhysAddr(u64::MAX - 3),
            len: 0x20
        })
    );
}

#[test]
fn poison_range_and_page_views() {
    let mut m = mem();
    m.write(PhysAddr(0x10_0000), &[7u8; 0x2000]).unwrap();
    assert!(matches!(
        m.page(PhysAddr(0x10_0000)).unwrap().validity,
        PageValidity::All
    ));
    m.poison_range(PhysAddr(0x10_0ff0), 0x20).unwrap();
    assert_eq!(
        m.read_u64(PhysAddr(0x10_0ff0)),
        Err(MemError::Poisoned {
            addr: PhysAddr(0x10_0ff0)
        })
    );
    assert_eq!(m.read_u64(PhysAddr(0x10_0fe8)), Ok(0x0707_0707_0707_0707));
    match m.page(PhysAddr(0x10_1000)).unwrap().validity {
        PageValidity::Partial(bits) => {
            assert_eq!(
                bits[0], !0xffff,
                "first 16 bytes of the second page are poison"
            );
            assert!(bits[1..].iter().all(|&w| w == u64::MAX));
        }
        PageValidity::All => panic!("page should be partly poisoned"),
    }
    let view = m.page(PhysAddr(0x10_1234)).unwrap();
    assert_eq!(view.addr, PhysAddr(0x10_1000));
    assert_eq!(view.data[0], poison_byte(0));
    // Poisoning a whole page drops it.
    m.poison_range(PhysAddr(0x10_0000), 0x1000).unwrap();
    assert!(m.page(PhysAddr(0x10_0000)).is_none());
    assert_eq!(m.populated_pages(), 1);
    // Rewriting the poisoned bytes makes the page whole again.
    m.write(PhysAddr(0x10_1000), &[1u8; 16]).unwrap();
    assert!(matches!(
        m.page(PhysAddr(0x10_1000)).unwrap().validity,
        PageValidity::All
    ));
    assert_eq!(
        m.poison_range(PhysAddr(0x20_0800), 0x1000),
        Err(MemError::Unbacked {
            addr: PhysAddr(0x20_1000)
        })
    );
}

#[test]
fn restore_page_normalises_poisoned_bytes() {
    let mut m = mem();
    let data = [0x33u8; 4096];
    let mut bits = [u64::MAX; VALID_WORDS];
    bits[0] = 0xff00;
    m.restore_page(PhysAddr(0x10_2000), &data, Some(&bits))
        .unwrap();
    let mut raw = [0u8; 24];
    m.read_raw(PhysAddr(0x10_2000), &mut raw).unwrap();
    assert_eq!(raw[0], poison_byte(0));
    assert_eq!(raw[8], 0x33);
    assert_eq!(raw[16], poison_byte(16));
    assert_eq!(
        m.read_u64(PhysAddr(0x10_2000)),
        Err(MemError::Poisoned {
            addr: PhysAddr(0x10_2000)
        })
    );
    assert_eq!(m.read_u64(PhysAddr(0x10_2008)), Ok(0x3333_3333_3333_3333));
    m.restore_page(PhysAddr(0x10_2000), &data, Some(&[0; VALID_WORDS]))
        .unwrap();
    assert!(m.page(PhysAddr(0x10_2000)).is_none());
    assert!(m.restore_page(PhysAddr(0x10_2001), &data, None).is_err());
    assert_eq!(
        m.restore_page(PhysAddr(0x30_0000), &data, None),
        Err(MemError::Unbacked {
            addr: PhysAddr(0x30_0000)
        })
    );
}

#[test]
fn retention_keeps_only_preserved_pages() {
    let mut m = mem();
    for page in 0..8u64 {
        m.write(PhysAddr(0x10_0000 + page * 0x1000), &[page as u8; 8])
            .unwrap();
    }
    let mut keep = PageSet::new();
    keep.insert(PhysAddr(0x10_2000), 1).unwrap(); // pages 2 and 3
    keep.insert(PhysAddr(0x10_7000), 0).unwrap();
    let stats = m.poison_except(&keep);
    assert_eq!((stats.kept, stats.poisoned), (3, 5));
    for page in 0..8u64 {
        let pa = PhysAddr(0x10_0000 + page * 0x1000);
        let r = m.read_u64(pa);
        if [2, 3, 7].contains(&page) {
            assert_eq!(r, Ok(u64::from_le_bytes([page as u8; 8])));
        } else {
            assert_eq!(r, Err(MemError::Poisoned { addr: pa }));
        }
    }
    let runs = m.populated_runs();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].start(), runs[0].size()), (0x10_2000, 0x2000));
    assert_eq!((runs[1].start(), runs[1].size()), (0x10_7000, 0x1000));
}

/// The tables of a 256 GiB mapping at 2 MiB pages: one PML4 page, one PDPT page and
/// 256 page-directory pages, inside 1 TiB of RAM. Only the touched pages cost memory.
#[test]
fn tables_of_a_256_gib_mapping_are_cheap() {
    let mut m = SparseMemory::new(&[(PhysAddr(0), 1 << 40)]).unwrap();
    let pd_base = 0x100_0000u64;
    let entries = (256u64 << 30) >> 21;
    for i in 0..entries {
        let pde = (0x80_0000_0000 + (i << 21)) | 0x83;
        m.write_u64(PhysAddr(pd_base + i * 8), pde).unwrap();
    }
    for j in 0..256u64 {
        m.write_u64(PhysAddr(0x2000 + j * 8), (pd_base + j * 0x1000) | 3)
            .unwrap();
    }
    m.write_u64(PhysAddr(0x1000), 0x2003).unwrap();
    assert_eq!(m.populated_pages(), 258);
    assert_eq!(
        m.read_u64(PhysAddr(pd_base + (entries - 1) * 8)),
        Ok((0x80_0000_0000 + ((entries - 1) << 21)) | 0x83)
    );
    let runs = m.populated_runs();
    assert_eq!(runs.len(), 2, "PML4+PDPT and the 256 PD pages");
    assert_eq!(runs[1].size(), 256 * 4096);
}

#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Poison(u64, u64),
    Read(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    // Addresses around a 3-page RAM range at 0x1000 and the holes on both sides.
    let addr = 0u64..0x5000;
    prop_oneof![
        (addr.clone(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(a, d)| Op::Write(a, d)),
        (addr.clone(), 0u64..300).prop_map(|(a, l)| Op::Poison(a, l)),
        (addr, 0usize..300).prop_map(|(a, l)| Op::Read(a, l)),
    ]
}

proptest! {
    /// Sparse memory behaves like a byte map with per-byte validity.
    #[test]
    fn matches_a_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        let ram = 0x1000u64..0x4000;
        let mut m = SparseMemory::new(&[(PhysAddr(0x1000), 0x3000)]).unwrap();
        let mut model: HashMap<u64, u8> = HashMap::new();
        let first_unbacked = |a: u64, len: u64| (a..a + len).find(|x| !ram.contains(x));
        for op in ops {
            match op {
                Op::Write(a, d) => {
                    let r = m.write(PhysAddr(a), &d);
                    match first_unbacked(a, d.len() as u64) {
                        Some(x) => prop_assert_eq!(r, Err(MemError::Unbacked { addr: PhysAddr(x) })),
                        None => {
                            prop_assert_eq!(r, Ok(()));
                            for (i, b) in d.iter().enumerate() {
                                model.insert(a + i as u64, *b);
                            }
                        }
                    }
                }
                Op::Poison(a, l) => {
                    let r = m.poison_range(PhysAddr(a), l);
                    match first_unbacked(a, l) {
                        Some(x) => prop_assert_eq!(r, Err(MemError::Unbacked { addr: PhysAddr(x) })),
                        None => {
                            prop_assert_eq!(r, Ok(()));
                            for x in a..a + l {
                                model.remove(&x);
                            }
                        }
                    }
                }
                Op::Read(a, l) => {
                    let mut buf = vec![0u8; l];
                    let r = m.read(PhysAddr(a), &mut buf);
                    let mut raw = vec![0u8; l];
                    let rr = m.read_raw(PhysAddr(a), &mut raw);
                    // Leaving RAM is reported before poison inside it.
                    let expect = match first_unbacked(a, l as u64) {
                        Some(x) => Some(MemError::Unbacked { addr: PhysAddr(x) }),
                        None => (a..a + l as u64)
                            .find(|x| !model.contains_key(x))
                            .map(|x| MemError::Poisoned { addr: PhysAddr(x) }),
                    };
                    match expect {
                        Some(e) => prop_assert_eq!(r, Err(e)),
                        None => {
                            prop_assert_eq!(r, Ok(()));
                            for (i, b) in buf.iter().enumerate() {
                                prop_assert_eq!(Some(b), model.get(&(a + i as u64)));
                            }
                        }
                    }
                    if first_unbacked(a, l as u64).is_none() {
                        prop_assert_eq!(rr, Ok(()));
                        for (i, b) in raw.iter().enumerate() {
                            let x = a + i as u64;
                            let want = model.get(&x).copied().unwrap_or(poison_byte(x));
                            prop_assert_eq!(*b, want);
                        }
                    } else {
                        prop_assert!(rr.is_err());
                    }
                }
            }
        }
        // Populated pages are exactly those holding a valid byte.
        let mut pages: Vec<u64> = model.keys().map(|a| a & !0xfff).collect();
        pages.sort_unstable();
        pages.dedup();
        prop_assert_eq!(m.populated_pages(), pages.len());
    }
}
