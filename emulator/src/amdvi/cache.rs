//! The device-table cache and the IOTLB tagged by DomainID.
//!
//! Both are used until software invalidates them (INVALIDATE_DEVTAB_ENTRY,
//! INVALIDATE_IOMMU_PAGES, INVALIDATE_IOMMU_ALL; reference §9), so a missing
//! invalidation shows as a stale translation. Page-directory entries are not cached,
//! so the PDE bit of INVALIDATE_IOMMU_PAGES needs no separate action.

use amdvi::hw::dte::DeviceTableEntry;
use iommu_core::pgtable::Perms;
use std::collections::HashMap;

/// One cached translation.
#[derive(Clone, Copy, Debug)]
pub(super) struct IotlbEntry {
    /// DomainID of the DTE that produced it.
    pub domain: u16,
    /// The guest PASID for translations through v2 (GCR3) tables, `None` for host ones.
    pub pasid: Option<u32>,
    /// First IOVA of the page.
    pub iova: u64,
    /// Page size in bytes.
    pub size: u64,
    /// Output address of the page.
    pub pa: u64,
    /// Permissions (DTE and every level ANDed).
    pub perms: Perms,
}

/// The caches.
#[derive(Clone, Debug, Default)]
pub(super) struct Caches {
    dtes: HashMap<u16, DeviceTableEntry>,
    iotlb: Vec<IotlbEntry>,
}

/// Most IOTLB entries kept; the oldest is evicted beyond (a real IOTLB is finite).
const IOTLB_CAPACITY: usize = 4096;

impl Caches {
    pub fn dtes(&self) -> usize {
        self.dtes.len()
    }
    pub fn iotlb_len(&self) -> usize {
        self.iotlb.len()
    }
    pub fn dte(&self, device_id: u16) -> Option<DeviceTableEntry> {
        self.dtes.get(&device_id).copied()
    }
    pub fn fill_dte(&mut self, device_id: u16, dte: DeviceTableEntry) {
        self.dtes.insert(device_id, dte);
    }
    pub fn invalidate_dte(&mut self, device_id: u16) {
        self.dtes.remove(&device_id);
    }
    pub fn lookup(&self, domain: u16, pasid: Option<u32>, iova: u64) -> Option<IotlbEntry> {
        self.iotlb
            .iter()
            .find(|e| e.domain == domain && e.pasid == pasid && iova.wrapping_sub(e.iova) < e.size)
            .copied()
    }
    pub fn fill(&mut self, e: IotlbEntry) {
        if self.iotlb.len() >= IOTLB_CAPACITY {
            self.iotlb.remove(0);
        }
        self.iotlb.push(e);
    }
    /// INVALIDATE_IOMMU_PAGES: drops the domain's entries (of `pasid` when GN=1, host
    /// ones otherwise) that overlap `first..=last`.
    pub fn invalidate_pages(&mut self, domain: u16, pasid: Option<u32>, first: u64, last: u64) {
        self.iotlb.retain(|e| {
            let e_last = e.iova + (e.size - 1);
            !(e.domain == domain && e.pasid == pasid && e.iova <= last && first <= e_last)
        });
    }
    /// INVALIDATE_IOMMU_ALL.
    pub fn invalidate_all(&mut self) {
        self.dtes.clear();
        self.iotlb.clear();
    }
}
