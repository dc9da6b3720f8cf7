//! Configuration caches and the TLB. Entries are filled by translations and removed
//! only by the CFGI and TLBI commands (and never by memory writes), so a driver that
//! forgets an invalidation sees the old STE, CD or translation.

use iommu_core::pgtable::Perms;
use smmuv3::hw::cd::{Cd, L1Cd};
use smmuv3::hw::ste::{L1Std, Ste};
use std::collections::HashMap;

/// What a TLB entry translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum TlbStage {
    /// Stage 1 (alone or combined with stage 2 in a nested STE), tagged by ASID.
    S1 {
        /// CD.ASID.
        asid: u16,
    },
    /// Stage 2 only (no stage 1), IPA to PA.
    S2,
}

/// The tag and page of one TLB entry: the StreamID's VMID (STE.S2VMID when IDR0.S2P,
/// else 0), the stage, and the input page of the leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct TlbKey {
    pub vmid: u16,
    pub stage: TlbStage,
    /// Input address of the leaf's first byte.
    pub base: u64,
    /// log2 of the leaf size.
    pub shift: u32,
}

/// One TLB entry: the output and IPA of the entry's first byte and the permissions of
/// each stage (RWX for a stage not in use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TlbEntry {
    pub out: u64,
    pub ipa: u64,
    pub s1: Perms,
    pub s2: Perms,
}

/// The caches of one SMMU.
#[derive(Clone, Debug, Default)]
pub(super) struct Caches {
    /// STEs by StreamID.
    pub ste: HashMap<u32, Ste>,
    /// L1STDs by L1 index.
    pub l1std: HashMap<u32, L1Std>,
    /// CDs by (StreamID, SubstreamID).
    pub cd: HashMap<(u32, u32), Cd>,
    /// L1CDs by (StreamID, L1 index).
    pub l1cd: HashMap<(u32, u32), L1Cd>,
    /// Translations.
    pub tlb: HashMap<TlbKey, TlbEntry>,
}

/// log2 of the leaf sizes VMSAv8-64 has, smallest first (the TLB is probed with each):
/// 4K, 16K, 64K pages; 2M, 32M, 512M, 1G and 4T blocks.
pub(super) const LEAF_SHIFTS: [u32; 8] = [12, 14, 16, 21, 25, 29, 30, 42];

impl Caches {
    /// The TLB entry covering `addr` for `vmid` and `stage`, with the output of `addr`.
    pub fn lookup(&self, vmid: u16, stage: TlbStage, addr: u64) -> Option<(TlbKey, TlbEntry)> {
        LEAF_SHIFTS.iter().find_map(|&shift| {
            let key = TlbKey {
                vmid,
                stage,
                base: addr & !((1u64 << shift) - 1),
                shift,
            };
            self.tlb.get(&key).map(|e| (key, *e))
        })
    }

    /// Drops the TLB entries `pred` selects.
    pub fn tlb_drop(&mut self, pred: impl Fn(&TlbKey) -> bool) {
        self.tlb.retain(|k, _| !pred(k));
    }

    /// Drops the STEs (and their CDs) of StreamIDs `first..=last`, and the L1STDs
    /// covering them when `l1` (with `split` the stream table's SPLIT).
    pub fn drop_stes(&mut self, first: u32, last: u32, l1: bool, split: u32) {
        let r = first..=last;
        self.ste.retain(|s, _| !r.contains(s));
        self.cd.retain(|(s, _), _| !r.contains(s));
        self.l1cd.retain(|(s, _), _| !r.contains(s));
        if l1 {
            let (lo, hi) = (first >> split, last >> split);
            self.l1std.retain(|i, _| !(lo..=hi).contains(i));
        }
    }
}
