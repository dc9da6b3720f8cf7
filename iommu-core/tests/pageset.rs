//! `PageSet`: known answers for the KHO radix key layout, the insert/remove rules, and
//! property tests against a plain set of 4 KiB page numbers.

use iommu_core::pageset::{
    radix_key, radix_key_decode, range_blocks, PageSet, PageSetError, LEAF_BITS, MAX_ORDER,
    ORDER_0_LOG2,
};
use iommu_core::PhysAddr;
use proptest::prelude::*;
use std::collections::BTreeSet;

const K4: u64 = 0x1000;

fn pa(v: u64) -> PhysAddr {
    PhysAddr(v)
}

/// Reference: the page frame numbers covered.
fn pfns(set: &PageSet) -> BTreeSet<u64> {
    set.pages().map(|p| p.0 >> 12).collect()
}

/// Structural invariants every set must keep.
fn check_invariants(set: &PageSet) {
    let blocks: Vec<_> = set.iter().collect();
    assert_eq!(blocks.len() as u64, set.block_count());
    let mut pages = 0u64;
    let mut prev_end: Option<u128> = None;
    for &(a, o) in &blocks {
        assert!(o <= MAX_ORDER);
        let size = K4 << o;
        assert_eq!(a.0 % size, 0, "block {a} order {o} misaligned");
        if let Some(end) = prev_end {
            assert!(
                u128::from(a.0) >= end,
                "blocks out of order or overlapping at {a}"
            );
        }
        prev_end = Some(u128::from(a.0) + u128::from(size));
        pages += 1 << o;
        assert!(set.contains_block(a, o));
    }
    assert_eq!(pages, set.page_count());
    assert_eq!(set.is_empty(), blocks.is_empty());
}

#[test]
fn key_encoding_matches_linux_abi() {
    // include/linux/kho/abi/kexec_handover.h (kho-v2): the order bit of an order-0 page
    // is bit 52, order 1 bit 51, order 2 bit 50; the low part is pa >> (PAGE_SHIFT + order).
    assert_eq!(ORDER_0_LOG2, 52);
    assert_eq!(radix_key(pa(0), 0), 1 << 52);
    assert_eq!(radix_key(pa(0x1000), 0), (1 << 52) | 1);
    assert_eq!(radix_key(pa(0x2000), 1), (1 << 51) | 1);
    assert_eq!(radix_key(pa(0x4000), 2), (1 << 50) | 1);
    assert_eq!(radix_key(pa(0x4000_0000), 18), (1 << 34) | 1);
    // Highest 4K page of the 64-bit space: 52 bits of shifted address below the order bit.
    assert_eq!(
        radix_key(pa(0xffff_ffff_ffff_f000), 0),
        (1 << 52) | ((1 << 52) - 1)
    );
    // Leaf bitmap: KHO_BITMAP_SIZE_LOG2 = PAGE_SHIFT + 3 = 15 bits; 128 MiB of order-0
    // pages per leaf.
    assert_eq!(LEAF_BITS, 32768);
    assert_eq!(LEAF_BITS * K4, 128 << 20);

    for (a, o) in [
        (0u64, 0u32),
        (0x1000, 0),
        (0x20_0000, 9),
        (0x4000_0000, 18),
        (0xffff_ffff_ffff_f000, 0),
        (0xffff_ffff_c000_0000, 18),
    ] {
        assert_eq!(radix_key_decode(radix_key(pa(a), o)), Some((pa(a), o)));
    }
    assert_eq!(radix_key_decode(0), None);
    assert_eq!(radix_key_decode(1 << 53), None);
    // Key 1 is order 52 (bit 0 as the order bit): decoded, and refused by the order cap.
    assert_eq!(radix_key_decode(1), Some((pa(0), 52)));
}

#[test]
fn leaves_split_at_128_mib_for_order_0() {
    let mut s = PageSet::new();
    s.insert(pa(0x07ff_f000), 0).unwrap(); // last page of the first 128 MiB
    s.insert(pa(0x0800_0000), 0).unwrap(); // first page of the next 128 MiB
    let leaves: Vec<_> = s.leaves().map(|(i, _)| i).collect();
    assert_eq!(leaves, vec![(1u64 << 52) >> 15, ((1u64 << 52) >> 15) + 1]);
    let (_, first) = s.leaves().next().unwrap();
    assert_eq!(first[511], 1 << 63);
    // An order-9 (2 MiB) leaf covers 32768 * 2 MiB = 64 GiB.
    let mut t = PageSet::new();
    t.insert(pa(0), 9).unwrap();
    t.insert(pa((64 << 30) - (2 << 20)), 9).unwrap();
    assert_eq!(t.leaves().count(), 1);
    t.insert(pa(64 << 30), 9).unwrap();
    assert_eq!(t.leaves().count(), 2);
}

#[test]
fn insert_rules() {
    let mut s = PageSet::new();
    assert_eq!(
        s.insert(pa(0x1000), 1),
        Err(PageSetError::Misaligned {
            addr: pa(0x1000),
            order: 1
        })
    );
    assert_eq!(
        s.insert(pa(0x123), 0),
        Err(PageSetError::Misaligned {
            addr: pa(0x123),
            order: 0
        })
    );
    assert_eq!(
        s.insert(pa(0), MAX_ORDER + 1),
        Err(PageSetError::OrderTooLarge {
            addr: pa(0),
            order: MAX_ORDER + 1,
            max: MAX_ORDER
        })
    );
    s.insert(pa(0x20_0000), 9).unwrap();
    // Same block again.
    assert_eq!(
        s.insert(pa(0x20_0000), 9),
        Err(PageSetError::Overlap {
            addr: pa(0x20_0000),
            order: 9,
            existing: pa(0x20_0000),
            existing_order: 9
        })
    );
    // A page inside it.
    assert_eq!(
        s.insert(pa(0x3f_f000), 0),
        Err(PageSetError::Overlap {
            addr: pa(0x3f_f000),
            order: 0,
            existing: pa(0x20_0000),
            existing_order: 9
        })
    );
    // A block containing it.
    assert_eq!(
        s.insert(pa(0), 10),
        Err(PageSetError::Overlap {
            addr: pa(0),
            order: 10,
            existing: pa(0x20_0000),
            existing_order: 9
        })
    );
    // Neighbours are fine.
    s.insert(pa(0x1f_f000), 0).unwrap();
    s.insert(pa(0x40_0000), 0).unwrap();
    assert_eq!(s.page_count(), 514);
    assert_eq!(s.block_count(), 3);
    check_invariants(&s);
    assert!(format!(
        "{}",
        PageSetError::Misaligned {
            addr: pa(0x1000),
            order: 1
        }
    )
    .contains("0x1000"));
}

#[test]
fn contains_any_address_in_block() {
    let mut s = PageSet::new();
    s.insert(pa(0x4000_0000), 18).unwrap();
    assert!(s.contains(pa(0x4000_0000)));
    assert!(s.contains(pa(0x4000_0abc)));
    assert!(s.contains(pa(0x7fff_ffff)));
    assert!(!s.contains(pa(0x3fff_ffff)));
    assert!(!s.contains(pa(0x8000_0000)));
    assert_eq!(
        s.containing_block(pa(0x5555_5555)),
        Some((pa(0x4000_0000), 18))
    );
    assert!(!s.contains_block(pa(0x4000_0000), 17));
    // Top of the address space.
    s.insert(pa(0xffff_ffff_ffff_f000), 0).unwrap();
    assert!(s.contains(pa(u64::MAX)));
    check_invariants(&s);
}

#[test]
fn remove_exact_block_only() {
    let mut s = PageSet::new();
    s.insert(pa(0x10_0000), 8).unwrap();
    assert_eq!(
        s.remove(pa(0x10_0000), 0),
        Err(PageSetError::NotPresent {
            addr: pa(0x10_0000),
            order: 0
        })
    );
    assert_eq!(
        s.remove(pa(0x10_1000), 1),
        Err(PageSetError::Misaligned {
            addr: pa(0x10_1000),
            order: 1
        })
    );
    assert_eq!(s.page_count(), 256);
    s.remove(pa(0x10_0000), 8).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.leaves().count(), 0, "empty leaves are dropped");
    assert_eq!(s, PageSet::new());
}

#[test]
fn insert_range_splits_like_kho_preserve_pages() {
    // pfn 1..=10: pfn 1 (order 0), 2-3 (1), 4-7 (2), 8-9 (1), 10 (0).
    assert_eq!(
        range_blocks(pa(0x1000), 10).unwrap().collect::<Vec<_>>(),
        vec![
            (pa(0x1000), 0),
            (pa(0x2000), 1),
            (pa(0x4000), 2),
            (pa(0x8000), 1),
            (pa(0xa000), 0)
        ]
    );
    // Capped at MAX_ORDER: 3 GiB at 0 is three 1 GiB blocks.
    assert_eq!(
        range_blocks(pa(0), 3 << 18).unwrap().collect::<Vec<_>>(),
        vec![(pa(0), 18), (pa(1 << 30), 18), (pa(2 << 30), 18)]
    );
    assert_eq!(range_blocks(pa(0x1000), 0).unwrap().count(), 0);
    assert_eq!(
        range_blocks(pa(0x1001), 1).err(),
        Some(PageSetError::BadRange {
            start: pa(0x1001),
            pages: 1
        })
    );
    assert_eq!(
        range_blocks(pa(0xffff_ffff_ffff_f000), 2).err(),
        Some(PageSetError::BadRange {
            start: pa(0xffff_ffff_ffff_f000),
            pages: 2
        })
    );
    assert_eq!(
        range_blocks(pa(0xffff_ffff_ffff_f000), 1).unwrap().count(),
        1
    );
    // The whole 64-bit space (2^34 blocks of 1 GiB) is produced lazily.
    let mut all = range_blocks(pa(0), 1 << 52).unwrap();
    assert_eq!(all.next(), Some((pa(0), 18)));
    // The last 2 GiB of the address space.
    let top: Vec<_> = range_blocks(pa(0xffff_ffff_8000_0000), 0x8_0000)
        .unwrap()
        .collect();
    assert_eq!(
        top,
        vec![
            (pa(0xffff_ffff_8000_0000), 18),
            (pa(0xffff_ffff_c000_0000), 18)
        ]
    );

    let mut s = PageSet::new();
    s.insert(pa(0x9000), 0).unwrap();
    // Overlaps the page at 0x9000: nothing is inserted.
    assert!(matches!(
        s.insert_range(pa(0x1000), 10),
        Err(PageSetError::Overlap { existing, .. }) if existing == pa(0x9000)
    ));
    assert_eq!(s.page_count(), 1);
    s.insert_range(pa(0xa000), 6).unwrap();
    assert_eq!(s.page_count(), 7);
    check_invariants(&s);
}

#[test]
fn difference_splits_blocks() {
    let mut a = PageSet::new();
    a.insert(pa(0), 9).unwrap();
    let mut b = PageSet::new();
    b.insert(pa(0x1000), 0).unwrap();
    let d = a.difference(&b);
    let blocks: Vec<_> = d.iter().collect();
    let mut expect = vec![(pa(0), 0)];
    for o in 1..9 {
        expect.push((pa(K4 << o), o));
    }
    assert_eq!(blocks, expect);
    assert_eq!(d.page_count(), 511);
    assert!(!d.contains(pa(0x1000)));
    assert!(d.is_subset(&a));
    assert!(!a.is_subset(&d));
    assert!(b.is_subset(&a));

    // Union puts the page back; the result covers the same pages as `a` but in blocks.
    let u = d.union(&b);
    assert!(u.same_pages(&a));
    assert_ne!(u, a);
    // Union keeps `a`'s big block.
    let u2 = a.union(&b);
    assert_eq!(u2, a);
    let i = a.intersection(&b);
    assert_eq!(i, b);
    check_invariants(&d);
    check_invariants(&u);
}

#[test]
fn iteration_is_in_address_order_across_orders() {
    let mut s = PageSet::new();
    s.insert(pa(0x4000_0000), 18).unwrap();
    s.insert(pa(0x3000), 0).unwrap();
    s.insert(pa(0x20_0000), 9).unwrap();
    s.insert(pa(0x1000), 0).unwrap();
    s.insert(pa(0x8000_0000), 0).unwrap();
    let v: Vec<_> = s.iter().collect();
    assert_eq!(
        v,
        vec![
            (pa(0x1000), 0),
            (pa(0x3000), 0),
            (pa(0x20_0000), 9),
            (pa(0x4000_0000), 18),
            (pa(0x8000_0000), 0)
        ]
    );
    assert_eq!(s.iter().size_hint(), (5, Some(5)));
    assert_eq!(
        format!("{s:?}"),
        "{0x1000/0, 0x3000/0, 0x200000/9, 0x40000000/18, 0x80000000/0}"
    );
}

// ---- property tests -------------------------------------------------------------------

/// A block somewhere in the low 4 GiB (so order-0 blocks spread over 32 leaves) or in a
/// window near the top of the address space.
fn arb_block() -> impl Strategy<Value = (u64, u32)> {
    (0u32..=10, 0u64..(1 << 20), any::<bool>()).prop_map(|(order, pfn, high)| {
        let pfn = pfn & !((1u64 << order) - 1);
        let base = if high { 0xffff_ffff_0000_0000 >> 12 } else { 0 };
        ((base + pfn) << 12, order)
    })
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u32),
    Remove(u64, u32),
    /// Remove the n-th block currently in the set (so removals also hit).
    RemoveNth(usize),
    InsertRange(u64, u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => arb_block().prop_map(|(a, o)| Op::Insert(a, o)),
        1 => arb_block().prop_map(|(a, o)| Op::Remove(a, o)),
        2 => any::<usize>().prop_map(Op::RemoveNth),
        1 => (0u64..(1 << 20), 0u64..600).prop_map(|(p, n)| Op::InsertRange(p << 12, n)),
    ]
}

fn block_pfns(a: u64, o: u32) -> impl Iterator<Item = u64> {
    (a >> 12)..(a >> 12) + (1 << o)
}

fn arb_set() -> impl Strategy<Value = PageSet> {
    prop::collection::vec(arb_block(), 0..40).prop_map(|blocks| {
        let mut s = PageSet::new();
        for (a, o) in blocks {
            let _ = s.insert(PhysAddr(a), o);
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ops_match_reference(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut s = PageSet::new();
        let mut reference: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(a, o) => {
                    let overlaps = block_pfns(a, o).any(|p| reference.contains(&p));
                    let r = s.insert(PhysAddr(a), o);
                    if overlaps {
                        let is_overlap = matches!(r, Err(PageSetError::Overlap { .. }));
                        prop_assert!(is_overlap, "{:?}", r);
                        if let Err(PageSetError::Overlap { existing, existing_order, .. }) = r {
                            // The named block really is in the set and really overlaps.
                            prop_assert!(s.contains_block(existing, existing_order));
                            let e0 = existing.0 >> 12;
                            let e1 = e0 + (1 << existing_order);
                            prop_assert!(block_pfns(a, o).any(|p| p >= e0 && p < e1));
                        }
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        reference.extend(block_pfns(a, o));
                    }
                }
                Op::Remove(a, o) => {
                    let present = s.contains_block(PhysAddr(a), o);
                    let r = s.remove(PhysAddr(a), o);
                    if present {
                        prop_assert_eq!(r, Ok(()));
                        for p in block_pfns(a, o) {
                            reference.remove(&p);
                        }
                    } else {
                        prop_assert_eq!(r, Err(PageSetError::NotPresent { addr: PhysAddr(a), order: o }));
                    }
                }
                Op::RemoveNth(n) => {
                    let blocks: Vec<_> = s.iter().collect();
                    if !blocks.is_empty() {
                        let (a, o) = blocks[n % blocks.len()];
                        prop_assert_eq!(s.remove(a, o), Ok(()));
                        for p in block_pfns(a.0, o) {
                            reference.remove(&p);
                        }
                    }
                }
                Op::InsertRange(a, n) => {
                    let overlaps = (a >> 12..(a >> 12) + n).any(|p| reference.contains(&p));
                    let r = s.insert_range(PhysAddr(a), n);
                    if overlaps {
                        let is_overlap = matches!(r, Err(PageSetError::Overlap { .. }));
                        prop_assert!(is_overlap, "{:?}", r);
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        reference.extend(a >> 12..(a >> 12) + n);
                    }
                }
            }
            prop_assert_eq!(s.page_count(), reference.len() as u64);
        }
        check_invariants(&s);
        prop_assert_eq!(pfns(&s), reference.clone());
        // contains() on every covered page, and on its neighbours.
        for &p in &reference {
            prop_assert!(s.contains(PhysAddr((p << 12) + 0x7ff)));
            for q in [p.wrapping_sub(1), p + 1] {
                if q <= u64::MAX >> 12 {
                    prop_assert_eq!(s.contains(PhysAddr(q << 12)), reference.contains(&q));
                }
            }
        }
    }

    #[test]
    fn set_operations_match_reference(a in arb_set(), b in arb_set()) {
        let ra = pfns(&a);
        let rb = pfns(&b);
        let u = a.union(&b);
        let d = a.difference(&b);
        let i = a.intersection(&b);
        for s in [&u, &d, &i] {
            check_invariants(s);
        }
        prop_assert_eq!(pfns(&u), ra.union(&rb).copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(pfns(&d), ra.difference(&rb).copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(pfns(&i), ra.intersection(&rb).copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(a.is_subset(&b), ra.is_subset(&rb));
        prop_assert!(d.is_subset(&a));
        prop_assert!(i.is_subset(&b));
        prop_assert!(a.is_subset(&u) && b.is_subset(&u));
        prop_assert_eq!(a.same_pages(&b), ra == rb);
        prop_assert!(d.union(&i).same_pages(&a));
        // Blocks of `a` survive a union untouched.
        for (addr, o) in a.iter() {
            prop_assert!(u.contains_block(addr, o));
        }
    }

    #[test]
    fn insert_then_remove_everything_is_empty(a in arb_set()) {
        let mut s = a.clone();
        for (addr, o) in a.iter() {
            prop_assert_eq!(s.remove(addr, o), Ok(()));
        }
        prop_assert!(s.is_empty());
        prop_assert_eq!(s, PageSet::new());
    }
}

/// A sparse leaf is handed out as the full 512-word bitmap, the same as a full one.
#[test]
fn leaves_are_whole_bitmaps_however_stored() {
    let mut sparse = PageSet::new();
    sparse.insert(pa(0x40_0000), 0).unwrap(); // word 16, bit 0 of the first leaf
    let (_, leaf) = sparse.leaves().next().unwrap();
    assert_eq!(leaf.len(), 512);
    assert_eq!(leaf[16], 1);
    assert_eq!(leaf.iter().filter(|&&w| w != 0).count(), 1);
    // Fill every word of one leaf (one page per 64) and compare with the same pages
    // inserted in reverse order.
    let pages: Vec<_> = (0..512u64).map(|w| pa((w * 64 + w % 64) << 12)).collect();
    let mut a = PageSet::new();
    for &p in &pages {
        a.insert(p, 0).unwrap();
    }
    let mut b = PageSet::new();
    for &p in pages.iter().rev() {
        b.insert(p, 0).unwrap();
    }
    assert_eq!(a, b);
    let (_, la) = a.leaves().next().unwrap();
    for (w, &word) in la.iter().enumerate() {
        assert_eq!(word, 1 << (w % 64));
    }
    // Removing all but one page leaves an equal set however the leaves were grown.
    let mut c = b.clone();
    for &p in &pages[1..] {
        c.remove(p, 0).unwrap();
    }
    let mut one = PageSet::new();
    one.insert(pages[0], 0).unwrap();
    assert_eq!(c, one);
}
