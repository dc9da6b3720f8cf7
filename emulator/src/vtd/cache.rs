//! The VT-d model's translation caches: context cache, PASID cache and IOTLB.
//!
//! Entries are filled by table walks and stay until an architectural invalidation
//! removes them (or the capacity bound drops them all, which hardware may also do at
//! any time). Nothing here reads memory.

use iommu_core::pgtable::Perms;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A small multiplicative hasher for integer keys (the IOTLB hit path is one lookup).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(v as u64)
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(v as u64)
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64)
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64)
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Bound on the entries of each cache; past it the cache is emptied (as a capacity
/// eviction), so memory stays bounded on any workload.
pub(crate) const CACHE_CAPACITY: usize = 1 << 20;

/// PASID tag of IOTLB entries of requests without PASID in legacy mode.
pub(crate) const NO_PASID: u32 = u32::MAX;

/// A cached legacy context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LegacyContext {
    pub did: u16,
    pub fpd: bool,
    pub pass_through: bool,
    /// Second-stage root and levels (unused for pass-through).
    pub sl_root: u64,
    pub levels: u32,
    /// Input address width (bits) allowed: min(AGAW, MGAW).
    pub width: u32,
}

/// A cached scalable-mode context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScalableContext {
    pub fpd: bool,
    pub paside: bool,
    pub pasid_dir: u64,
    pub dir_entries: u64,
    pub rid_pasid: u32,
    pub rid_priv: bool,
}

/// A context-cache entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextCacheEntry {
    Legacy(LegacyContext),
    Scalable(ScalableContext),
    /// A not-present entry (cached only when CAP.CM = 1), with its FPD bit.
    NotPresent {
        fpd: bool,
        scalable: bool,
    },
}

/// What a PASID-table entry says, as cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PasidTranslation {
    FirstStage { root: u64, levels: u32, width: u32 },
    SecondStage { root: u64, levels: u32, width: u32 },
    PassThrough,
}

/// A cached PASID-table entry (with its directory entry's FPD folded in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PasidCacheEntry {
    pub did: u16,
    pub fpd: bool,
    pub sre: bool,
    pub wpe: bool,
    pub ssade: bool,
    pub translation: PasidTranslation,
}

/// Which stage produced an IOTLB entry (the two invalidation descriptor families
/// address different entries in scalable mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Second-stage (or legacy) translation.
    Second,
    /// First-stage translation.
    First,
}

/// Tag of an IOTLB entry: domain, PASID (or [`NO_PASID`]) and page level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct IotlbKey {
    pub tag: u64,
    pub vpn: u64,
}

impl IotlbKey {
    pub fn new(did: u16, pasid: u32, level: u32, iova: u64) -> Self {
        let shift = 12 + 9 * (level - 1);
        Self {
            tag: (did as u64) << 40 | (pasid as u64 & 0xff_ffff_ffff) << 3 | level as u64,
            vpn: iova >> shift,
        }
    }
}

/// One IOTLB entry: a leaf translation with its accumulated permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IotlbEntry {
    pub did: u16,
    pub pasid: u32,
    pub level: u32,
    /// Page base output address.
    pub pa: u64,
    pub perms: Perms,
    pub stage: Stage,
    /// First stage: the U/S bits allowed user access at every level.
    pub user: bool,
    /// False when a write must walk again to set the dirty bit.
    pub dirty_done: bool,
}

impl IotlbEntry {
    /// First input address covered.
    pub fn start(&self, vpn: u64) -> u64 {
        vpn << (12 + 9 * (self.level - 1))
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        1u64 << (12 + 9 * (self.level - 1))
    }
}

/// The IOTLB.
#[derive(Default)]
pub(crate) struct Iotlb {
    map: FastMap<IotlbKey, IotlbEntry>,
    /// PASID tags seen per domain since the last clear (lets a page-selective
    /// invalidation remove entries by key instead of scanning the whole cache).
    pasids: FastMap<u16, Vec<u32>>,
}

impl Iotlb {
    /// Looks up `iova` at the three leaf levels (4 KiB first).
    #[inline]
    pub fn lookup(&self, did: u16, pasid: u32, iova: u64) -> Option<&IotlbEntry> {
        if self.map.is_empty() {
            return None;
        }
        for level in 1..=3 {
            if let Some(e) = self.map.get(&IotlbKey::new(did, pasid, level, iova)) {
                return Some(e);
            }
        }
        None
    }

    pub fn insert(&mut self, iova: u64, e: IotlbEntry) {
        if self.map.len() >= CACHE_CAPACITY {
            self.clear();
        }
        let tags = self.pasids.entry(e.did).or_default();
        if !tags.contains(&e.pasid) {
            tags.push(e.pasid);
        }
        self.map
            .insert(IotlbKey::new(e.did, e.pasid, e.level, iova), e);
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.pasids.clear();
    }

    /// Removes the entries of `stage` tagged `did` (and `pasid`, when given) that
    /// overlap the page-selective range at `addr` with address mask `am`.
    pub fn invalidate_pages(
        &mut self,
        did: u16,
        pasid: Option<u32>,
        stage: Stage,
        addr: u64,
        am: u32,
    ) {
        let am = am.min(52);
        let len = 1u64 << (12 + am);
        let base = addr & !(len - 1);
        let tags: Vec<u32> = match (pasid, self.pasids.get(&did)) {
            (_, None) => return,
            (Some(p), Some(t)) => t.iter().copied().filter(|x| *x == p).collect(),
            (None, Some(t)) => t.clone(),
        };
        let keys_to_try = (tags.len() as u64)
            .saturating_mul(3)
            .saturating_mul(1u64 << am);
        if keys_to_try > self.map.len() as u64 {
            self.retain_not(|e, start, size| {
                e.did == did
                    && e.stage == stage
                    && pasid.map_or(true, |p| e.pasid == p)
                    && overlaps_psi(start, size, addr, am)
            });
            return;
        }
        let last = base.saturating_add(len - 1);
        for &p in &tags {
            for level in 1..=3u32 {
                let shift = 12 + 9 * (level - 1);
                for vpn in (base >> shift)..=(last >> shift) {
                    let key = IotlbKey::new(did, p, level, vpn << shift);
                    if self.map.get(&key).is_some_and(|e| e.stage == stage) {
                        self.map.remove(&key);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Removes the entries `pred` selects; `pred` gets the entry and the range it covers.
    pub fn retain_not(&mut self, mut pred: impl FnMut(&IotlbEntry, u64, u64) -> bool) {
        self.map.retain(|k, e| {
            let start = e.start(k.vpn);
            !pred(e, start, e.size())
        });
    }
}

/// Whether `[start, start + size)` overlaps the page-selective range at `addr` with
/// address mask `am` (2^am 4 KiB pages, `addr` aligned down to the range).
pub(crate) fn overlaps_psi(start: u64, size: u64, addr: u64, am: u32) -> bool {
    let len = 1u64 << (12 + am.min(52));
    let base = addr & !(len - 1);
    start < base.saturating_add(len) && base < start.saturating_add(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_overlap() {
        assert!(overlaps_psi(0x1000, 0x1000, 0x1000, 0));
        assert!(!overlaps_psi(0x2000, 0x1000, 0x1000, 0));
        // AM = 1 covers two pages, aligned down.
        assert!(overlaps_psi(0x2000, 0x1000, 0x3000, 1));
        // A 2 MiB entry overlaps a 4 KiB invalidation inside it.
        assert!(overlaps_psi(0x20_0000, 0x20_0000, 0x21_5000, 0));
    }

    #[test]
    fn keys_separate_levels_and_tags() {
        let a = IotlbKey::new(1, NO_PASID, 1, 0x20_1000);
        let b = IotlbKey::new(1, NO_PASID, 2, 0x20_1000);
        let c = IotlbKey::new(2, NO_PASID, 1, 0x20_1000);
        let d = IotlbKey::new(1, 5, 1, 0x20_1000);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(b.vpn, 1);
    }

    fn entry(did: u16, pasid: u32, level: u32, stage: Stage) -> IotlbEntry {
        IotlbEntry {
            did,
            pasid,
            level,
            pa: 0,
            perms: Perms::RW,
            stage,
            user: true,
            dirty_done: true,
        }
    }

    fn filled() -> Iotlb {
        let mut t = Iotlb::default();
        for i in 0..64u64 {
            t.insert(i << 12, entry(1, 5, 1, Stage::Second));
            t.insert(i << 12, entry(1, 6, 1, Stage::First));
            t.insert(i << 12, entry(2, 5, 1, Stage::Second));
        }
        t.insert(0x20_0000, entry(1, 5, 2, Stage::Second));
        t
    }

    #[test]
    fn page_invalidation_by_key_and_by_scan_agree() {
        // Key path: few pages to try compared with the cache size.
        let mut a = filled();
        a.invalidate_pages(1, None, Stage::Second, 0x2000, 1);
        assert_eq!(a.len(), 64 * 3 + 1 - 2);
        assert!(a.lookup(1, 5, 0x2000).is_none());
        assert!(a.lookup(1, 5, 0x3000).is_none());
        assert!(a.lookup(1, 5, 0x4000).is_some());
        assert!(a.lookup(1, 6, 0x2000).is_some(), "first-stage entries stay");
        assert!(a.lookup(2, 5, 0x2000).is_some(), "other domains stay");
        // Scan path: a mask wider than the cache; the 2 MiB entry overlaps it.
        let mut b = filled();
        b.invalidate_pages(1, Some(5), Stage::Second, 0, 21);
        assert!(b.lookup(1, 5, 0x20_1000).is_none());
        assert!(b.lookup(1, 5, 0x1000).is_none());
        assert_eq!(b.len(), 128);
        // A 4 KiB invalidation inside a 2 MiB entry removes it by key as well.
        let mut c = filled();
        c.invalidate_pages(1, Some(5), Stage::Second, 0x21_5000, 0);
        assert!(c.lookup(1, 5, 0x20_0000).is_none());
        assert_eq!(c.len(), 64 * 3);
    }
}
