//! Cache invalidation: the operations shared by the register interface and the
//! invalidation queue, and the queue itself.

use super::cache::{ContextCacheEntry, Stage};
use super::VtdUnit;
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use vtd::hw::qi::{
    Descriptor, DescriptorError, PasidCacheGranularity, PasidIotlbGranularity, QiDescriptor,
};
use vtd::hw::regs::{
    self, field_mask, field_mask32 as m32, field_value, function_mask_bits, ContextGranularity,
    IotlbGranularity, Ttm, CAP, ECAP, FSTS, GSTS, ICS, IQERCD, IQT,
};

/// IQERCD.IQEI values (VirtualBox iommu-intel.h).
const IQEI_INVALID_TAIL: u64 = 1;
const IQEI_FETCH_ERROR: u64 = 2;
const IQEI_INVALID_TYPE: u64 = 3;
const IQEI_RESERVED: u64 = 4;
const IQEI_INVALID_WIDTH: u64 = 5;
const IQEI_TAIL_MISALIGNED: u64 = 6;

impl VtdUnit {
    fn scalable_latched(&self) -> bool {
        self.root.is_some_and(|r| r.ttm == Ttm::Scalable)
    }

    /// Context-cache invalidation (CCMD or descriptor). In scalable mode context entries
    /// carry no domain ID, so the domain does not narrow the invalidation.
    pub(crate) fn invalidate_context(
        &mut self,
        g: ContextGranularity,
        did: u16,
        sid: u16,
        fm: u64,
    ) {
        let fmask = function_mask_bits(fm);
        match g {
            ContextGranularity::Global => self.ctx_cache.clear(),
            ContextGranularity::Domain => self.ctx_cache.retain(|_, e| match e {
                ContextCacheEntry::Legacy(l) => l.did != did,
                ContextCacheEntry::Scalable(_) => false,
                ContextCacheEntry::NotPresent { .. } => did != 0,
            }),
            ContextGranularity::Device => self.ctx_cache.retain(|k, e| {
                let same_sid = (*k & !fmask) == (sid & !fmask);
                let same_did = match e {
                    ContextCacheEntry::Legacy(l) => l.did == did,
                    ContextCacheEntry::Scalable(_) | ContextCacheEntry::NotPresent { .. } => true,
                };
                !(same_sid && same_did)
            }),
        }
    }

    /// IOTLB invalidation by the register or an IOTLB descriptor: in scalable mode it
    /// addresses second-stage and pass-through entries of every PASID of the domain.
    pub(crate) fn invalidate_iotlb_sl(
        &mut self,
        g: IotlbGranularity,
        did: u16,
        addr: u64,
        am: u32,
    ) {
        match g {
            IotlbGranularity::Global => self.iotlb.clear(),
            IotlbGranularity::Domain => self
                .iotlb
                .retain_not(|e, _, _| e.did == did && e.stage == Stage::Second),
            IotlbGranularity::Page => {
                self.iotlb
                    .invalidate_pages(did, None, Stage::Second, addr, am)
            }
        }
    }

    fn invalidate_piotlb(
        &mut self,
        g: PasidIotlbGranularity,
        did: u16,
        pasid: u32,
        addr: u64,
        am: u32,
    ) {
        match g {
            PasidIotlbGranularity::Pasid => self
                .iotlb
                .retain_not(|e, _, _| e.did == did && e.pasid == pasid && e.stage == Stage::First),
            PasidIotlbGranularity::Page => {
                self.iotlb
                    .invalidate_pages(did, Some(pasid), Stage::First, addr, am)
            }
        }
    }

    fn invalidate_pasid_cache(&mut self, g: PasidCacheGranularity, did: u16, pasid: u32) {
        match g {
            PasidCacheGranularity::Global => self.pasid_cache.clear(),
            PasidCacheGranularity::Domain => self.pasid_cache.retain(|_, e| e.did != did),
            PasidCacheGranularity::Pasid => self
                .pasid_cache
                .retain(|(_, p), e| !(e.did == did && *p == pasid)),
        }
    }

    pub(crate) fn write_iqt(&mut self, mem: &mut dyn PhysMem, v: u64, mask: u64) {
        let rsvd = !field_mask(IQT::QT);
        self.reserved_write("IQT", regs::IQT, v & mask & rsvd);
        self.iqt = v & !rsvd;
        if self.gsts & m32(GSTS::QIES) != 0 {
            self.process_queue(mem);
        }
    }

    fn queue_error(&mut self, iqei: u64, what: String) {
        self.diag(format!(
            "invalidation queue error at IQH {:#x}: {what}",
            self.iqh
        ));
        self.iqercd = (self.iqercd & !field_mask(IQERCD::IQEI)) | field_value(IQERCD::IQEI, iqei);
        if self.fsts & m32(FSTS::IQE) == 0 {
            self.fsts |= m32(FSTS::IQE);
            self.fault_event();
        }
    }

    /// Processes descriptors from IQH up to IQT; stops at the first bad one with
    /// FSTS.IQE set and IQH left on it.
    pub(crate) fn process_queue(&mut self, mem: &mut dyn PhysMem) {
        let Some(q) = self.queue else { return };
        if self.fsts & m32(FSTS::IQE) != 0 {
            return;
        }
        let dsize: u64 = if q.wide { 32 } else { 16 };
        if self.iqt >= q.size {
            let t = self.iqt;
            self.queue_error(
                IQEI_INVALID_TAIL,
                format!("IQT {t:#x} beyond the queue of {:#x} bytes", q.size),
            );
            return;
        }
        if q.wide && self.iqt % 32 != 0 {
            let t = self.iqt;
            self.queue_error(
                IQEI_TAIL_MISALIGNED,
                format!("IQT {t:#x} not 256-bit aligned with IQA.DW = 1"),
            );
            return;
        }
        if !q.wide && self.scalable_latched() && self.iqh != self.iqt {
            self.queue_error(
                IQEI_INVALID_WIDTH,
                "128-bit descriptors (IQA.DW = 0) in scalable mode".into(),
            );
            return;
        }
        // Every step advances IQH by one descriptor modulo the queue, so this ends
        // after at most size / dsize descriptors.
        let mut budget = q.size / dsize + 1;
        while self.iqh != self.iqt && budget > 0 {
            budget -= 1;
            let at = q.base.wrapping_add(self.iqh);
            let mut raw = [0u8; 32];
            if let Err(e) = mem.read(PhysAddr(at), &mut raw[..dsize as usize]) {
                self.queue_error(
                    IQEI_FETCH_ERROR,
                    format!("fetching the descriptor at {} failed: {e}", PhysAddr(at)),
                );
                return;
            }
            let mut qw = [0u64; 4];
            for (i, q) in qw.iter_mut().enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
                *q = u64::from_le_bytes(b);
            }
            let desc = QiDescriptor::from_qwords(qw);
            match desc.decode(q.wide) {
                Err(DescriptorError::InvalidType { ty }) => {
                    self.queue_error(
                        IQEI_INVALID_TYPE,
                        format!(
                            "descriptor at {} has invalid type {ty:#x} ({desc:?})",
                            PhysAddr(at)
                        ),
                    );
                    return;
                }
                Err(e) => {
                    self.queue_error(
                        IQEI_RESERVED,
                        format!("descriptor at {}: {e} ({desc:?})", PhysAddr(at)),
                    );
                    return;
                }
                Ok(d) => {
                    if let Err(why) = self.execute(mem, &d) {
                        self.queue_error(
                            IQEI_INVALID_TYPE,
                            format!("descriptor at {}: {why} ({desc:?})", PhysAddr(at)),
                        );
                        return;
                    }
                }
            }
            self.stats.descriptors += 1;
            self.iqh = (self.iqh + dsize) % q.size;
        }
    }

    /// Carries out one valid descriptor; `Err` when the unit does not support its type.
    fn execute(&mut self, mem: &mut dyn PhysMem, d: &Descriptor) -> Result<(), String> {
        let smts = ECAP::SMTS.is_set(self.ecap);
        match *d {
            Descriptor::ContextCache {
                granularity,
                did,
                sid,
                fm,
            } => self.invalidate_context(granularity, did, sid, fm as u64),
            Descriptor::Iotlb {
                granularity,
                did,
                addr,
                am,
                ..
            } => match granularity {
                IotlbGranularity::Page if !CAP::PSI.is_set(self.cap) => {
                    self.invalidate_iotlb_sl(IotlbGranularity::Domain, did, 0, 0)
                }
                IotlbGranularity::Page if am as u64 > CAP::MAMV.read(self.cap) => {
                    return Err(format!(
                        "IOTLB page-selective AM {am} above CAP.MAMV {}",
                        CAP::MAMV.read(self.cap)
                    ))
                }
                g => self.invalidate_iotlb_sl(g, did, addr, am as u32),
            },
            Descriptor::DeviceTlb { .. } => {
                if !ECAP::DT.is_set(self.ecap) {
                    return Err("device-TLB invalidation but ECAP.DT = 0".into());
                }
            }
            Descriptor::Iec { .. } => {
                if !ECAP::IR.is_set(self.ecap) {
                    return Err("interrupt-entry-cache invalidation but ECAP.IR = 0".into());
                }
            }
            Descriptor::Wait {
                interrupt,
                status_write,
                status_data,
                status_addr,
                ..
            } => {
                if status_write {
                    if let Err(e) = mem.write(PhysAddr(status_addr), &status_data.to_le_bytes()) {
                        self.diag(format!(
                            "invalidation wait status write of {status_data:#x} to {} failed: {e}",
                            PhysAddr(status_addr)
                        ));
                    }
                }
                if interrupt && self.ics & m32(ICS::IWC) == 0 {
                    self.ics |= m32(ICS::IWC);
                    self.completion_event();
                }
            }
            Descriptor::PasidIotlb {
                granularity,
                did,
                pasid,
                addr,
                am,
                ..
            } => {
                if !smts {
                    return Err("PASID-based IOTLB invalidation but ECAP.SMTS = 0".into());
                }
                self.invalidate_piotlb(granularity, did, pasid, addr, am as u32);
            }
            Descriptor::PasidCache {
                granularity,
                did,
                pasid,
            } => {
                if !smts {
                    return Err("PASID-cache invalidation but ECAP.SMTS = 0".into());
                }
                self.invalidate_pasid_cache(granularity, did, pasid);
            }
            Descriptor::PasidDeviceTlb { .. } => {
                if !smts || !ECAP::DT.is_set(self.ecap) {
                    return Err(
                        "PASID-based device-TLB invalidation needs ECAP.SMTS and ECAP.DT".into(),
                    );
                }
            }
        }
        Ok(())
    }
}
