//! `walk` predicts the fault the emulator's model (and the hardware it follows) reports:
//! second-stage rights checked entry by entry before reserved bits, with scalable mode's
//! 0x79 for an entry with R = W = 0 and 0x85/0x86 for a present entry lacking the right
//! (legacy: 0x5/0x6); first-stage input bounded by the PASID entry's AW. Each case is
//! walked by `iommu-inspect walk` on the snapshot and then issued as DMA to the emulated
//! unit it was taken from: both must give the same fault code.

mod common;

use common::*;
use emulator::dma::TransferError;
use emulator::machine::Device;
use emulator::model::DmaError;
use iommu_core::{Iova, Pasid, RequesterId};
use std::path::Path;
use std::process::Command;
use vtd::hw::pasid::{pasid_dir_index, pasid_table_index, PasidDirEntry, PasidEntry};
use vtd::hw::pte::{level_index, PTE_ADDR_MASK, SL_TM, SL_W};
use vtd::hw::root::{ScalableContextEntry, ScalableRootEntry};

/// What `iommu-inspect walk` ends with for this request: `Some(code)` for a fault,
/// `None` when it translates.
fn inspector_fault(
    dir: &Path,
    name: &str,
    d: RequesterId,
    pasid: Option<u32>,
    iova: u64,
    write: bool,
) -> Option<u8> {
    let bdf = format!("{:02x}:{:02x}.{:x}", d.bus, d.device(), d.function());
    let iova = format!("{iova:#x}");
    let p = pasid.map(|p| p.to_string());
    let mut args = vec!["walk", iova.as_str(), "--device", bdf.as_str(), name];
    if let Some(p) = &p {
        args.extend(["--pasid", p.as_str()]);
    }
    if write {
        args.push("--write");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
        .current_dir(dir)
        .args(&args)
        .output()
        .expect("iommu-inspect runs");
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    if s.contains("=> translates to") {
        return None;
    }
    let at = s
        .find("=> fault 0x")
        .unwrap_or_else(|| panic!("no result in\n{s}"));
    Some(u8::from_str_radix(&s[at + 11..at + 13], 16).expect("fault code"))
}

/// The fault code of the same request issued as DMA by the emulated device.
fn model_fault(
    r: &mut Rig,
    d: RequesterId,
    pasid: Option<u32>,
    iova: u64,
    write: bool,
) -> Option<u8> {
    let agent = Device {
        rid: d,
        pasid: pasid.map(Pasid),
        unit: UNIT,
    }
    .agent();
    let before = r.m.fault_log().len();
    let mut buf = [0u8; 4];
    let res = if write {
        r.m.dma_write(&agent, Iova(iova), &buf)
    } else {
        r.m.dma_read(&agent, Iova(iova), &mut buf)
    };
    let log = r.m.fault_log();
    if log.len() > before {
        return Some(log[log.len() - 1].code as u8);
    }
    // Translated; the target pages of these tests hold no data (poisoned), which is
    // an error of the data access, not of the translation.
    if let Err(e) = res {
        assert!(
            matches!(
                e,
                TransferError::Dma {
                    error: DmaError::Data { .. },
                    ..
                }
            ),
            "{e:?}"
        );
    }
    None
}

/// Saves `r`, walks each `(iova, write, expected)` with the inspector, then issues it as
/// DMA (after the save: DMA may set accessed bits), and checks both give `expected`.
fn agree(r: &mut Rig, d: RequesterId, pasid: Option<u32>, cases: &[(u64, bool, Option<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    r.save(dir.path(), "s.elf");
    for &(iova, write, want) in cases {
        let got = inspector_fault(dir.path(), "s.elf", d, pasid, iova, write);
        assert_eq!(got, want, "inspector: iova {iova:#x} write {write}");
    }
    for &(iova, write, want) in cases {
        let got = model_fault(r, d, pasid, iova, write);
        assert_eq!(got, want, "model: iova {iova:#x} write {write}");
    }
}

/// Address of the level-`level` second-stage entry of `iova` under `root`.
fn sl_entry(r: &mut Rig, root: u64, levels: u32, iova: u64, level: u32) -> u64 {
    let mut table = root;
    for l in ((level + 1)..=levels).rev() {
        table = r.peek(table + level_index(iova, l) * 8) & PTE_ADDR_MASK;
    }
    table + level_index(iova, level) * 8
}

/// Address of the PASID entry of `(d, pasid)`.
fn pasid_entry_at(r: &mut Rig, d: RequesterId, pasid: u32) -> u64 {
    let re_at = r.root + d.bus as u64 * 16;
    let re = ScalableRootEntry::from_qwords([r.peek(re_at), r.peek(re_at + 8)]);
    let (_, ct) = re.half_for(d.devfn);
    let ce =
        ScalableContextEntry::from_qwords([r.peek(ct + (d.devfn & 0x7f) as u64 * 32), 0, 0, 0]);
    let de = PasidDirEntry::from_qwords([r.peek(ce.pasid_dir() + pasid_dir_index(pasid) * 8)]);
    de.table() + pasid_table_index(pasid) * 64
}

/// Maps IOVA 2^39 (a second top-level slot) under the 4-level table `root`, then
/// clears W in its level-4 entry and sets a reserved bit (TM outside a leaf) in its
/// level-2 entry; returns the IOVA.
fn read_only_top_over_reserved_entry(r: &mut Rig, root: u64) -> u64 {
    let far = 1u64 << 39;
    r.map(root, 4, far, 0x60_0000, 1, true, true);
    let l4 = sl_entry(r, root, 4, far, 4);
    let v = r.peek(l4);
    r.poke(l4, v & !SL_W);
    let l2 = sl_entry(r, root, 4, far, 2);
    let v = r.peek(l2);
    r.poke(l2, v | SL_TM);
    far
}

/// A scalable unit with device `d` whose PASID 9 entry is first-stage (4-level) with
/// pages at 496, 1008 and 2032 MiB, and AW set to `aw`.
fn first_stage_rig(d: RequesterId, aw: u64) -> Rig {
    let mut r = Rig::scalable();
    r.device(d, Some(9));
    r.scalable_context(d, 0, 1, 4);
    let fl = r.first_stage_pasid(d, 9, 2);
    r.map_fl(fl, 0x1f00_0000, 0x55_4000, true);
    r.map_fl(fl, 0x3f00_0000, 0x55_5000, true);
    r.map_fl(fl, 0x7f00_0000, 0x55_6000, true);
    let pe_at = pasid_entry_at(&mut r, d, 9);
    let q: Vec<u64> = (0..8).map(|i| r.peek(pe_at + 8 * i)).collect();
    let mut pe = PasidEntry::from_qwords(q.try_into().unwrap());
    pe.set_aw(aw);
    for (i, v) in pe.qwords().iter().enumerate() {
        r.poke(pe_at + 8 * i as u64, *v);
    }
    r
}

/// Scalable mode, second stage, RID_PASID entry: a leaf with R = W = 0 faults 0x79
/// (SSL.2) for reads and writes; a read-only leaf refuses a write with 0x85, a
/// write-only leaf a read with 0x86; a level-4 entry without W in front of a level-2
/// entry with a reserved bit (TM outside a leaf) refuses a write with 0x85 (the right is
/// checked first), while a read reaches the reserved bit: 0x7A.
#[test]
fn scalable_second_stage_not_present_is_0x79_missing_right_0x85_0x86_before_reserved_bits() {
    let mut r = Rig::scalable();
    let d = rid(0, 3, 0);
    r.device(d, None);
    let root = r.scalable_context(d, 0, 1, 4);
    r.map(root, 4, 0x1000, 0x50_0000, 1, true, true);
    r.map(root, 4, 0x2000, 0x50_1000, 1, true, false);
    r.map(root, 4, 0x3000, 0x50_2000, 1, false, true);
    let leaf = r.leaf_entry(root, 4, 0x1000);
    // IOVA 0x4000: address set, R = W = 0.
    r.poke(leaf + 3 * 8, 0x50_3000);
    let far = read_only_top_over_reserved_entry(&mut r, root);
    agree(
        &mut r,
        d,
        None,
        &[
            (0x1010, false, None),
            (0x4010, false, Some(0x79)),
            (0x4010, true, Some(0x79)),
            (0x5010, true, Some(0x79)),
            (0x2010, true, Some(0x85)),
            (0x3010, false, Some(0x86)),
            (far + 0x10, true, Some(0x85)),
            (far + 0x10, false, Some(0x7A)),
        ],
    );
}

/// Legacy mode keeps 0x6 (read) / 0x5 (write) for an entry with R = W = 0 and for a
/// missing right, and checks a level-4 entry's missing W before a deeper reserved bit.
#[test]
fn legacy_second_stage_rights_are_0x5_0x6_and_checked_before_reserved_bits() {
    let mut r = Rig::legacy();
    let d = rid(0, 2, 0);
    r.device(d, None);
    let root = r.legacy_context(d, 1, 4);
    r.map(root, 4, 0x1000, 0x50_0000, 1, true, false);
    let far = read_only_top_over_reserved_entry(&mut r, root);
    agree(
        &mut r,
        d,
        None,
        &[
            (0x1010, false, None),
            (0x1010, true, Some(0x05)),
            (0x9010, false, Some(0x06)),
            (0x9010, true, Some(0x05)),
            (far + 0x10, true, Some(0x05)),
            (far + 0x10, false, Some(0x0C)),
        ],
    );
}

/// First stage, 4-level paging, pages mapped at 496 MiB, 1008 MiB and 2032 MiB: with the
/// PASID entry's AW = 2 (48 bits) all translate; with AW = 0 (30 bits, bit 29 the sign
/// bit) only the first is canonical, the others fault 0x80; AW = 4 (a reserved
/// encoding) makes the PASID entry invalid (0x5B).
#[test]
fn first_stage_input_is_bounded_by_the_pasid_entry_aw() {
    let d = rid(0, 4, 0);
    // A fresh rig per width: the model caches the PASID entry.
    for (aw, cases) in [
        (
            2,
            vec![
                (0x1f00_0010, false, None),
                (0x3f00_0010, false, None),
                (0x7f00_0010, true, None),
            ],
        ),
        (
            0,
            vec![
                (0x1f00_0010, true, None),
                (0x3f00_0010, false, Some(0x80)),
                (0x7f00_0010, false, Some(0x80)),
            ],
        ),
        (4, vec![(0x1f00_0010, false, Some(0x5B))]),
    ] {
        let mut r = first_stage_rig(d, aw);
        agree(&mut r, d, Some(9), &cases);
    }
}
