//! Helpers the AMD-Vi and SMMUv3 plug-in tests share: raw images cut from a snapshot,
//! loading a raw image with command-line units, the binary, and the `verify` seam.
#![allow(dead_code)]

use inspector::image::{Image, OpenAs};
use inspector::model::{LoadOptions, Loaded};
use inspector::progress::Progress;
use inspector::verify::{verify, VerifyOptions};
use inspector::InspectError;
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use std::process::Command;

/// The first `len` bytes of a snapshot's memory as a raw image (pages the snapshot does
/// not hold, or holds as poison, as zeros).
pub fn raw_image(snapshot: &Image, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    for (i, page) in b.chunks_mut(4096).enumerate() {
        let _ = snapshot.read(PhysAddr(i as u64 * 4096), page);
    }
    b
}

/// Loads `bytes` as a raw image at address 0 with the units `opts` describes.
pub fn raw_load(bytes: Vec<u8>, opts: LoadOptions) -> Result<Loaded, InspectError> {
    let img = Image::from_bytes("mem.raw", bytes, OpenAs::Raw { base: 0 })?;
    Loaded::from_image(
        img,
        &LoadOptions {
            open: OpenAs::Raw { base: 0 },
            ..opts
        },
    )
}

/// Runs `iommu-inspect`: exit status, stdout, stderr.
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// `verify` of `l` fails with the typed "no record support" error naming `unit`,
/// `arch` and `record`.
pub fn assert_no_record_support(l: &Loaded, unit: &str, arch: &str, record: &str) {
    let opts = VerifyOptions {
        record: Some(Vec::new()),
        ..VerifyOptions::default()
    };
    match verify(l, &opts, &mut Progress::hidden()) {
        Err(e @ InspectError::NoRecordSupport { .. }) => {
            let InspectError::NoRecordSupport {
                unit: u,
                arch: a,
                record: r,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((u.as_str(), *a, r.as_str()), (unit, arch, record));
            assert!(e.to_string().contains("no record support"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// Pages of the structured random images.
pub const PAGES: u64 = 12;

/// A qword that is often a pointer to one of the image's pages with random low flag
/// bits (valid, mode, next level, table type...) and random high attribute bits
/// (permissions, XN...), so random structures reach deep: tables, cycles, aliases,
/// reserved bits.
pub fn word() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    prop_oneof![
        3 => Just(0u64),
        6 => (0..PAGES, 0u64..0x1000, 0u64..0x1000)
            .prop_map(|(p, low, high)| (p << 12) | low | (high << 52)),
        1 => any::<u64>(),
    ]
}

/// An image of [`PAGES`] pages holding `words` spread over it (every 3rd qword slot).
pub fn words_image(words: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; (PAGES * 4096) as usize];
    for (i, w) in words.iter().enumerate() {
        let at = (i * 3 * 8) % b.len();
        b[at..at + 8].copy_from_slice(&w.to_le_bytes());
    }
    b
}
