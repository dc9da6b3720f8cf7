//! Random structures (root, context, PASID and page-table entries whose pointers land in
//! a small image, so walks go deep and meet cycles, aliases and reserved bits) through
//! every command's library entry point: no panic, no endless walk, and an image always
//! compares the same as itself.

use inspector::diff::diff;
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::model::{Filter, LoadOptions, Loaded};
use inspector::vtd::walk::{walk, Access};
use inspector::vtd::UnitOverride;
use iommu_core::{Iova, RequesterId};
use proptest::prelude::*;
use vtd::hw::regs::Ttm;

const PAGES: u64 = 12;

/// A qword that is often a pointer to one of the image's pages with a few flag bits.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        6 => (0..PAGES, 0u64..0x1000).prop_map(|(p, low)| (p << 12) | (low & 0x8bf)),
        1 => any::<u64>(),
    ]
}

fn image(words: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; (PAGES * 4096) as usize];
    for (i, w) in words.iter().enumerate() {
        // Spread the words over the pages: every 7th qword slot.
        let at = (i * 7 * 8) % b.len();
        b[at..at + 8].copy_from_slice(&w.to_le_bytes());
    }
    // Root entries of buses 0 and 1 point to pages 1 and 2 (present, both halves).
    b[0..8].copy_from_slice(&(0x1000u64 | 1).to_le_bytes());
    b[8..16].copy_from_slice(&(0x2000u64 | 1).to_le_bytes());
    b[16..24].copy_from_slice(&(0x2000u64 | 1).to_le_bytes());
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_structures_never_panic(
        words in proptest::collection::vec(word(), 64..1500),
        scalable in any::<bool>(),
        haw in prop_oneof![Just(39u32), Just(48), Just(64)],
        iovas in proptest::collection::vec(any::<u64>(), 4),
    ) {
        let bytes = image(&words);
        let opts = LoadOptions {
            open: OpenAs::Raw { base: 0 },
            unit: UnitOverride {
                rtaddr: Some(0),
                mode: Some(if scalable { Ttm::Scalable } else { Ttm::Legacy }),
                haw: Some(haw),
                cap: None,
                ecap: None,
                base: None,
            },
            ..LoadOptions::default()
        };
        let img = Image::from_bytes("f.raw", bytes.clone(), opts.open).unwrap();
        let l = Loaded::from_image(img, &opts).unwrap();
        for fmt in [OutputFormat::Text, OutputFormat::Json, OutputFormat::Linux] {
            let mut out = Vec::new();
            dump(&l, &Filter::default(), fmt, &mut out).unwrap();
        }
        let img2 = Image::from_bytes("g.raw", bytes, opts.open).unwrap();
        let l2 = Loaded::from_image(img2, &opts).unwrap();
        prop_assert!(diff(&l, &l2, false).same());
        prop_assert!(diff(&l, &l2, true).same());
        let us = l.vtd_units()[0];
        if std::env::var_os("FUZZ_STATS").is_some() {
            let mut out = Vec::new();
            dump(&l, &Filter::default(), OutputFormat::Text, &mut out).unwrap();
            let t = String::from_utf8_lossy(&out);
            eprintln!(
                "contexts {} problems {} mapping lines {}",
                us.scan.contexts.len(),
                t.matches("!!").count(),
                t.matches("  0x").count()
            );
        }
        for (i, &iova) in iovas.iter().enumerate() {
            let rid = RequesterId::new(0, (i & 1) as u8, (iova >> 59) as u8, 0);
            let pasid = (i >= 2).then_some((iova as u32) & 0xfffff);
            let _ = walk(&us.unit, &l.image, rid, pasid, Iova(iova & 0xffff_ffff), Access::Read);
            let _ = walk(&us.unit, &l.image, rid, None, Iova(iova), Access::Write);
        }
    }
}
