//! The VT-d register file: reads, writes and their side effects, fault recording and
//! event interrupts, saving and restoring registers.

use super::{
    Interrupt, InterruptKind, LatchedRoot, Queue, VtdConfigError, VtdRestoreError, VtdUnit,
};
use crate::model::RegisterValue;
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use std::collections::BTreeMap;
use vtd::hw::addr_mask;
use vtd::hw::fault::FaultRecord;
use vtd::hw::regs::{
    self, field_mask, field_mask32 as m32, ContextGranularity, IotlbGranularity, Ttm, CAP, CCMD,
    ECAP, FECTL, FSTS, GCMD, GSTS, ICS, IECTL, IOTLB, IQA, IQT, IVA, PMEN, RTADDR, VER,
};

/// A 64-bit register of the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reg64 {
    Cap,
    Ecap,
    Rtaddr,
    Ccmd,
    Aflog,
    Phmbase,
    Phmlimit,
    Iqh,
    Iqt,
    Iqa,
    Iqercd,
    Irta,
    Pqh,
    Pqt,
    Pqa,
    Iva,
    Iotlb,
    /// Fault record `index`, qword `half` (0 = bits 63:0).
    Frcd(usize, usize),
}

impl VtdUnit {
    fn reg64_at(&self, offset: u64) -> Option<Reg64> {
        let fixed = match offset {
            regs::CAP => Some(Reg64::Cap),
            regs::ECAP => Some(Reg64::Ecap),
            regs::RTADDR => Some(Reg64::Rtaddr),
            regs::CCMD => Some(Reg64::Ccmd),
            regs::AFLOG => Some(Reg64::Aflog),
            regs::PHMBASE => Some(Reg64::Phmbase),
            regs::PHMLIMIT => Some(Reg64::Phmlimit),
            regs::IQH => Some(Reg64::Iqh),
            regs::IQT => Some(Reg64::Iqt),
            regs::IQA => Some(Reg64::Iqa),
            regs::IQERCD => Some(Reg64::Iqercd),
            regs::IRTA => Some(Reg64::Irta),
            regs::PQH => Some(Reg64::Pqh),
            regs::PQT => Some(Reg64::Pqt),
            regs::PQA => Some(Reg64::Pqa),
            _ => None,
        };
        if fixed.is_some() {
            return fixed;
        }
        let (iva, iotlb) = regs::iotlb_offsets(self.ecap);
        if offset == iva {
            return Some(Reg64::Iva);
        }
        if offset == iotlb {
            return Some(Reg64::Iotlb);
        }
        let fr0 = regs::fault_recording_offset(self.cap, 0);
        if offset >= fr0 && offset % 8 == 0 {
            let rel = offset - fr0;
            let idx = (rel / 16) as usize;
            if idx < self.records.len() {
                return Some(Reg64::Frcd(idx, ((rel % 16) / 8) as usize));
            }
        }
        None
    }

    /// A register read of 4 or 8 bytes; other widths and misaligned offsets read 0 and
    /// are diagnosed.
    pub(crate) fn read_register(&mut self, offset: u64, width: u8) -> u64 {
        match width {
            8 if offset % 8 == 0 => {
                if let Some(r) = self.reg64_at(offset) {
                    self.read64(r)
                } else {
                    self.read32(offset) as u64 | (self.read32(offset + 4) as u64) << 32
                }
            }
            4 if offset % 4 == 0 => {
                if let Some(r) = self.reg64_at(offset & !7) {
                    (self.read64(r) >> ((offset & 4) * 8)) as u32 as u64
                } else {
                    self.read32(offset) as u64
                }
            }
            _ => {
                self.diag(format!(
                    "register read of width {width} at offset {offset:#x}: only aligned 4- and 8-byte accesses are defined"
                ));
                0
            }
        }
    }

    fn read64(&self, r: Reg64) -> u64 {
        match r {
            Reg64::Cap => self.cap,
            Reg64::Ecap => self.ecap,
            Reg64::Rtaddr => self.rtaddr,
            Reg64::Ccmd => self.ccmd,
            Reg64::Iqh => self.iqh,
            Reg64::Iqt => self.iqt,
            Reg64::Iqa => self.iqa,
            Reg64::Iqercd => self.iqercd,
            Reg64::Irta => self.irta,
            Reg64::Iva => self.iva,
            Reg64::Iotlb => self.iotlb_reg,
            Reg64::Frcd(i, h) => self.records.get(i).map_or(0, |r| r[h]),
            Reg64::Aflog
            | Reg64::Phmbase
            | Reg64::Phmlimit
            | Reg64::Pqh
            | Reg64::Pqt
            | Reg64::Pqa => 0,
        }
    }

    fn qi_supported(&self) -> bool {
        ECAP::QI.is_set(self.ecap)
    }

    fn ir_supported(&self) -> bool {
        ECAP::IR.is_set(self.ecap)
    }

    fn read32(&self, offset: u64) -> u32 {
        match offset {
            regs::VER => self.ver,
            regs::GCMD => 0,
            regs::GSTS => self.gsts,
            regs::FSTS => self.fsts_value(),
            regs::FECTL => self.fectl,
            regs::FEDATA => self.fedata,
            regs::FEADDR => self.feaddr,
            regs::FEUADDR => self.feuaddr,
            regs::PMEN => self.pmen,
            regs::ICS if self.qi_supported() => self.ics,
            regs::IECTL if self.qi_supported() => self.iectl,
            regs::IEDATA if self.qi_supported() => self.iedata,
            regs::IEADDR if self.qi_supported() => self.ieaddr,
            regs::IEUADDR if self.qi_supported() => self.ieuaddr,
            _ => 0,
        }
    }

    /// FSTS as read: PFO/IQE/ICE/ITE latched, PPF from the records, FRI when PPF.
    pub(crate) fn fsts_value(&self) -> u32 {
        let ppf = self
            .records
            .iter()
            .any(|r| FaultRecord::from_qwords(*r).valid());
        let mut v = self.fsts;
        if ppf {
            v |= m32(FSTS::PPF) | regs::field_value32(FSTS::FRI, self.fri);
        }
        v
    }

    /// A register write of 4 or 8 bytes.
    pub(crate) fn write_register(
        &mut self,
        mem: &mut dyn PhysMem,
        offset: u64,
        width: u8,
        value: u64,
    ) {
        match width {
            8 if offset % 8 == 0 => {
                if let Some(r) = self.reg64_at(offset) {
                    self.write64(mem, r, offset, value, u64::MAX);
                } else {
                    self.write32(mem, offset, value as u32);
                    self.write32(mem, offset + 4, (value >> 32) as u32);
                }
            }
            4 if offset % 4 == 0 => {
                if value >> 32 != 0 {
                    self.diag(format!(
                        "4-byte write at offset {offset:#x} carries {value:#x}; upper bits dropped"
                    ));
                }
                if let Some(r) = self.reg64_at(offset & !7) {
                    let shift = (offset & 4) * 8;
                    let mask = 0xffff_ffffu64 << shift;
                    let merged = (self.write_latch(r) & !mask) | ((value & 0xffff_ffff) << shift);
                    self.write64(mem, r, offset & !7, merged, mask);
                } else {
                    self.write32(mem, offset, value as u32);
                }
            }
            _ => self.diag(format!(
                "register write of width {width} at offset {offset:#x} (value {value:#x}) ignored: only aligned 4- and 8-byte accesses are defined"
            )),
        }
    }

    /// The value a partial write merges into (the software-written fields).
    fn write_latch(&self, r: Reg64) -> u64 {
        match r {
            Reg64::Ccmd => self.ccmd & !field_mask(CCMD::ICC),
            Reg64::Iotlb => self.iotlb_reg & !field_mask(IOTLB::IVT),
            // F is write-1-to-clear: merging must not write back a 1.
            Reg64::Frcd(_, 1) => self.read64(r) & !field_mask(regs::FRCD_HI::F),
            _ => self.read64(r),
        }
    }

    pub(crate) fn reserved_write(&mut self, name: &str, offset: u64, bits: u64) {
        if bits != 0 {
            self.diag(format!(
                "write to {name} (offset {offset:#x}) sets reserved bits {bits:#x}; ignored"
            ));
        }
    }

    fn write32(&mut self, mem: &mut dyn PhysMem, offset: u64, v: u32) {
        let qi = self.qi_supported();
        match offset {
            regs::VER | regs::GSTS => self.diag(format!(
                "write {v:#x} to read-only register at offset {offset:#x} ignored"
            )),
            regs::GCMD => self.write_gcmd(mem, v),
            regs::FSTS => self.write_fsts(mem, v),
            regs::FECTL => {
                self.reserved_write(
                    "FECTL",
                    offset,
                    (v & !(m32(FECTL::IM) | m32(FECTL::IP))) as u64,
                );
                let was_masked = self.fectl & m32(FECTL::IM) != 0;
                self.fectl = (self.fectl & m32(FECTL::IP)) | (v & m32(FECTL::IM));
                if was_masked && v & m32(FECTL::IM) == 0 && self.fectl & m32(FECTL::IP) != 0 {
                    self.fectl &= !m32(FECTL::IP);
                    self.send(InterruptKind::Fault);
                }
            }
            regs::FEDATA => {
                self.reserved_write("FEDATA", offset, (v & 0xffff_0000) as u64);
                self.fedata = v & 0xffff;
            }
            regs::FEADDR => {
                self.reserved_write("FEADDR", offset, (v & 3) as u64);
                self.feaddr = v & !3;
            }
            regs::FEUADDR => self.feuaddr = v,
            regs::PMEN => {
                self.reserved_write("PMEN", offset, (v & !m32(PMEN::EPM)) as u64);
                let plmr_phmr = CAP::PLMR.is_set(self.cap) || CAP::PHMR.is_set(self.cap);
                if v & m32(PMEN::EPM) != 0 && !plmr_phmr {
                    self.diag("PMEN.EPM set but CAP.PLMR = CAP.PHMR = 0; ignored".into());
                } else if v & m32(PMEN::EPM) != 0 {
                    self.diag("PMEN.EPM set: protected memory regions are not modelled".into());
                    self.pmen = m32(PMEN::EPM) | m32(PMEN::PRS);
                } else {
                    self.pmen = 0;
                }
            }
            regs::ICS if qi => {
                self.reserved_write("ICS", offset, (v & !m32(ICS::IWC)) as u64);
                if v & m32(ICS::IWC) != 0 {
                    self.ics &= !m32(ICS::IWC);
                    self.iectl &= !m32(IECTL::IP);
                }
            }
            regs::IECTL if qi => {
                self.reserved_write(
                    "IECTL",
                    offset,
                    (v & !(m32(IECTL::IM) | m32(IECTL::IP))) as u64,
                );
                let was_masked = self.iectl & m32(IECTL::IM) != 0;
                self.iectl = (self.iectl & m32(IECTL::IP)) | (v & m32(IECTL::IM));
                if was_masked && v & m32(IECTL::IM) == 0 && self.iectl & m32(IECTL::IP) != 0 {
                    self.iectl &= !m32(IECTL::IP);
                    self.send(InterruptKind::InvalidationCompletion);
                }
            }
            regs::IEDATA if qi => {
                self.reserved_write("IEDATA", offset, (v & 0xffff_0000) as u64);
                self.iedata = v & 0xffff;
            }
            regs::IEADDR if qi => {
                self.reserved_write("IEADDR", offset, (v & 3) as u64);
                self.ieaddr = v & !3;
            }
            regs::IEUADDR if qi => self.ieuaddr = v,
            _ => {
                if v != 0 {
                    self.diag(format!(
                        "write {v:#x} to offset {offset:#x}, which is not an implemented register; ignored"
                    ));
                }
            }
        }
    }

    fn write64(&mut self, mem: &mut dyn PhysMem, r: Reg64, offset: u64, v: u64, mask: u64) {
        let qi = self.qi_supported();
        let above_haw = !addr_mask(self.haw) & !0xfff;
        match r {
            Reg64::Cap | Reg64::Ecap | Reg64::Iqh | Reg64::Iqercd => self.diag(format!(
                "write {:#x} to read-only register at offset {offset:#x} ignored",
                v & mask
            )),
            Reg64::Rtaddr => {
                self.reserved_write("RTADDR", offset, v & mask & (0x3ff | above_haw));
                self.rtaddr = v & !(0x3ff | above_haw);
            }
            Reg64::Ccmd => self.write_ccmd(v, mask),
            Reg64::Iva => {
                self.reserved_write("IVA", offset, v & mask & 0xf80);
                self.iva = v & !0xf80;
            }
            Reg64::Iotlb => self.write_iotlb(v, mask),
            Reg64::Iqt if qi => self.write_iqt(mem, v, mask),
            Reg64::Iqa if qi => {
                let mut rsvd = 0x7f8 | above_haw;
                if !ECAP::SMTS.is_set(self.ecap) {
                    rsvd |= field_mask(IQA::DW);
                }
                self.reserved_write("IQA", offset, v & mask & rsvd);
                if self.gsts & m32(GSTS::QIES) != 0 {
                    self.diag(format!(
                        "IQA written ({v:#x}) while queued invalidation is enabled; the latched queue is kept"
                    ));
                }
                self.iqa = v & !rsvd;
            }
            Reg64::Irta if self.ir_supported() => {
                let rsvd = 0x7f0 | above_haw;
                self.reserved_write("IRTA", offset, v & mask & rsvd);
                self.irta = v & !rsvd;
            }
            Reg64::Frcd(i, half) => {
                if half == 1
                    && mask & field_mask(regs::FRCD_HI::F) != 0
                    && v & field_mask(regs::FRCD_HI::F) != 0
                {
                    if let Some(r) = self.records.get_mut(i) {
                        r[1] &= !field_mask(regs::FRCD_HI::F);
                    }
                    self.update_event_pending();
                }
            }
            _ => {
                if v & mask != 0 {
                    self.diag(format!(
                        "write {:#x} to offset {offset:#x}, which is not an implemented register; ignored",
                        v & mask
                    ));
                }
            }
        }
    }

    fn write_gcmd(&mut self, mem: &mut dyn PhysMem, v: u32) {
        let all_cmds = regs::GCMD_PERSISTENT_MASK | regs::GSTS_ONE_SHOT_MASK;
        self.reserved_write("GCMD", regs::GCMD, (v & !all_cmds) as u64);
        let changed = (v ^ self.gsts) & regs::GCMD_PERSISTENT_MASK;
        let one_shot = v & regs::GSTS_ONE_SHOT_MASK;
        let n = (changed | one_shot).count_ones();
        if n > 1 {
            self.diag(format!(
                "GCMD write {v:#x} issues {n} commands at once (GSTS {:#x}); the specification allows one per write",
                self.gsts
            ));
        }
        if v & m32(GCMD::SRTP) != 0 {
            self.cmd_srtp();
        }
        if v & m32(GCMD::SFL) != 0 {
            self.diag(
                "GCMD.SFL: advanced fault logging is not supported (CAP.AFL = 0); ignored".into(),
            );
        }
        if v & m32(GCMD::WBF) != 0 && !CAP::RWBF.is_set(self.cap) {
            self.diag("GCMD.WBF issued though CAP.RWBF = 0 (no write buffer to flush)".into());
        }
        if v & m32(GCMD::SIRTP) != 0 {
            if self.ir_supported() {
                self.gsts |= m32(GSTS::IRTPS);
            } else {
                self.diag(
                    "GCMD.SIRTP: interrupt remapping not supported (ECAP.IR = 0); ignored".into(),
                );
            }
        }
        if changed & m32(GCMD::EAFL) != 0 {
            self.diag("GCMD.EAFL: advanced fault logging is not supported; ignored".into());
        }
        if changed & m32(GCMD::QIE) != 0 {
            self.cmd_qie(mem, v & m32(GCMD::QIE) != 0);
        }
        if changed & m32(GCMD::IRE) != 0 {
            if !self.ir_supported() {
                self.diag("GCMD.IRE: interrupt remapping not supported; ignored".into());
            } else if v & m32(GCMD::IRE) != 0 {
                if self.gsts & m32(GSTS::IRTPS) == 0 {
                    self.diag("GCMD.IRE set before an interrupt-remapping table pointer was latched (SIRTP)".into());
                }
                self.gsts |= m32(GSTS::IRES);
            } else {
                self.gsts &= !m32(GSTS::IRES);
            }
        }
        if changed & m32(GCMD::CFI) != 0 {
            if !self.ir_supported() {
                self.diag("GCMD.CFI: interrupt remapping not supported; ignored".into());
            } else {
                self.gsts ^= m32(GSTS::CFIS);
            }
        }
        if changed & m32(GCMD::TE) != 0 {
            if v & m32(GCMD::TE) != 0 {
                if self.gsts & m32(GSTS::RTPS) == 0 {
                    self.diag(
                        "GCMD.TE set before a root table pointer was latched (SRTP); every request will fault".into(),
                    );
                }
                self.gsts |= m32(GSTS::TES);
            } else {
                self.gsts &= !m32(GSTS::TES);
                if self.gsts & m32(GSTS::IRES) == 0 {
                    // The fault-record index resets when DMA and interrupt remapping are off.
                    self.fault_index = 0;
                }
            }
        }
    }

    fn cmd_srtp(&mut self) {
        let ttm = Ttm::from_bits(RTADDR::TTM.read(self.rtaddr));
        let ok = match ttm {
            Ttm::Legacy => true,
            Ttm::Scalable => ECAP::SMTS.is_set(self.ecap),
            Ttm::AbortDma => ECAP::ADMS.is_set(self.ecap),
            Ttm::Reserved => false,
        };
        if !ok {
            self.diag(format!(
                "SRTP with RTADDR {:#x}: translation table mode {ttm:?} is reserved or unsupported by this unit; requests will fault",
                self.rtaddr
            ));
        }
        self.root = Some(LatchedRoot {
            addr: self.rtaddr & !0xfff,
            ttm,
        });
        self.gsts |= m32(GSTS::RTPS);
        if CAP::ESRTPS.is_set(self.cap) {
            self.drop_caches();
        }
    }

    fn cmd_qie(&mut self, mem: &mut dyn PhysMem, enable: bool) {
        if !self.qi_supported() {
            self.diag("GCMD.QIE: queued invalidation not supported (ECAP.QI = 0); ignored".into());
            return;
        }
        if enable {
            let base = self.iqa & !0xfff;
            let qs = IQA::QS.read(self.iqa);
            let wide = IQA::DW.is_set(self.iqa);
            self.queue = Some(Queue {
                base,
                size: 4096u64 << qs,
                wide,
            });
            self.gsts |= m32(GSTS::QIES);
            if self.iqt != self.iqh {
                self.diag(format!(
                    "QIE set with IQT {:#x} != IQH {:#x}: software should write IQT = 0 first",
                    self.iqt, self.iqh
                ));
                self.process_queue(mem);
            }
        } else {
            if self.iqh != self.iqt {
                self.diag(format!(
                    "QIE cleared while the queue is not empty (IQH {:#x}, IQT {:#x})",
                    self.iqh, self.iqt
                ));
            }
            // QEMU resets the head when queued invalidation is disabled.
            self.iqh = 0;
            self.queue = None;
            self.gsts &= !m32(GSTS::QIES);
        }
    }

    fn register_invalidation_refused(&mut self, what: &str) -> bool {
        let major = VER::MAX.read(self.ver);
        let why = if major >= 6 {
            Some("register-based invalidation does not exist from VER major 6")
        } else if self.gsts & m32(GSTS::QIES) != 0 {
            Some("queued invalidation is enabled (GSTS.QIES = 1)")
        } else if Ttm::from_bits(RTADDR::TTM.read(self.rtaddr)) != Ttm::Legacy {
            Some("RTADDR.TTM is not legacy; scalable mode needs queued invalidation")
        } else {
            None
        };
        match why {
            Some(w) => {
                self.diag(format!("{what} refused: {w}"));
                true
            }
            None => false,
        }
    }

    fn write_ccmd(&mut self, v: u64, mask: u64) {
        let rsvd = 0x07ff_fffc_0000_0000u64;
        self.reserved_write("CCMD", regs::CCMD, v & mask & rsvd);
        let caig = field_mask(CCMD::CAIG);
        if v & mask & caig != 0 {
            self.diag("CCMD.CAIG is read-only; write ignored".into());
        }
        let fields = v & !(rsvd | caig | field_mask(CCMD::ICC));
        if !CCMD::ICC.is_set(v) || mask & field_mask(CCMD::ICC) == 0 {
            self.ccmd = (self.ccmd & caig) | fields;
            return;
        }
        if self.register_invalidation_refused("CCMD context-cache invalidation") {
            return;
        }
        let did = CCMD::DID.read(v) as u16;
        let sid = CCMD::SID.read(v) as u16;
        let fm = CCMD::FM.read(v);
        let actual = match ContextGranularity::from_bits(CCMD::CIRG.read(v)) {
            Some(g) => {
                self.invalidate_context(g, did, sid, fm);
                g.bits()
            }
            None => {
                self.diag("CCMD.CIRG = 0 is reserved; no invalidation".into());
                0
            }
        };
        self.ccmd = fields | regs::field_value(CCMD::CAIG, actual);
    }

    fn write_iotlb(&mut self, v: u64, mask: u64) {
        let rsvd = (1u64 << 62) | (1 << 59) | (0x7f << 50) | 0xffff_ffff;
        self.reserved_write("IOTLB", regs::iotlb_offsets(self.ecap).1, v & mask & rsvd);
        let iaig = field_mask(IOTLB::IAIG);
        let fields = v & !(rsvd | iaig | field_mask(IOTLB::IVT));
        if !IOTLB::IVT.is_set(v) || mask & field_mask(IOTLB::IVT) == 0 {
            self.iotlb_reg = (self.iotlb_reg & iaig) | fields;
            return;
        }
        if self.register_invalidation_refused("IOTLB register invalidation") {
            return;
        }
        let did = IOTLB::DID.read(v) as u16;
        let actual = match IotlbGranularity::from_bits(IOTLB::IIRG.read(v)) {
            None => {
                self.diag("IOTLB.IIRG = 0 is reserved; no invalidation".into());
                0
            }
            Some(IotlbGranularity::Page) if !CAP::PSI.is_set(self.cap) => {
                self.invalidate_iotlb_sl(IotlbGranularity::Domain, did, 0, 0);
                IotlbGranularity::Domain.bits()
            }
            Some(IotlbGranularity::Page) => {
                let am = IVA::AM.read(self.iva);
                if am > CAP::MAMV.read(self.cap) {
                    self.diag(format!(
                        "IOTLB page-selective invalidation with IVA.AM {am} > CAP.MAMV {}; not performed",
                        CAP::MAMV.read(self.cap)
                    ));
                    0
                } else {
                    let addr = IVA::ADDR.read(self.iva) << 12;
                    self.invalidate_iotlb_sl(IotlbGranularity::Page, did, addr, am as u32);
                    IotlbGranularity::Page.bits()
                }
            }
            Some(g) => {
                self.invalidate_iotlb_sl(g, did, 0, 0);
                g.bits()
            }
        };
        self.iotlb_reg = fields | regs::field_value(IOTLB::IAIG, actual);
    }

    fn write_fsts(&mut self, mem: &mut dyn PhysMem, v: u32) {
        let rw1c = m32(FSTS::PFO) | m32(FSTS::IQE) | m32(FSTS::ICE) | m32(FSTS::ITE);
        // PPF and FRI are read-only; PRO (bit 7) is RW1C in older specifications (Linux
        // writes it) and reserved in the 2021 one (VirtualBox): accepted without effect.
        let known = rw1c | m32(FSTS::PPF) | m32(FSTS::PRO) | m32(FSTS::FRI);
        self.reserved_write("FSTS", regs::FSTS, (v & !known) as u64);
        let had_iqe = self.fsts & m32(FSTS::IQE) != 0;
        self.fsts &= !(v & rw1c);
        self.update_event_pending();
        if had_iqe && self.fsts & m32(FSTS::IQE) == 0 {
            // Hardware resumes fetching at IQH once the error is cleared.
            self.process_queue(mem);
        }
    }

    /// Clears FECTL.IP once no status that raised it is pending.
    pub(crate) fn update_event_pending(&mut self) {
        let status =
            m32(FSTS::PFO) | m32(FSTS::PPF) | m32(FSTS::IQE) | m32(FSTS::ICE) | m32(FSTS::ITE);
        if self.fsts_value() & status == 0 {
            self.fectl &= !m32(FECTL::IP);
        }
    }

    pub(crate) fn send(&mut self, kind: InterruptKind) {
        let (address, data) = match kind {
            InterruptKind::Fault => (
                (self.feuaddr as u64) << 32 | self.feaddr as u64,
                self.fedata,
            ),
            InterruptKind::InvalidationCompletion => (
                (self.ieuaddr as u64) << 32 | self.ieaddr as u64,
                self.iedata,
            ),
        };
        self.interrupts.push(Interrupt {
            kind,
            address,
            data,
        });
    }

    /// A fault event condition: sends the interrupt, or sets IP when masked.
    pub(crate) fn fault_event(&mut self) {
        if self.fectl & m32(FECTL::IP) != 0 {
            return;
        }
        if self.fectl & m32(FECTL::IM) != 0 {
            self.fectl |= m32(FECTL::IP);
        } else {
            self.send(InterruptKind::Fault);
        }
    }

    /// An invalidation-completion event condition.
    pub(crate) fn completion_event(&mut self) {
        if self.iectl & m32(IECTL::IP) != 0 {
            return;
        }
        if self.iectl & m32(IECTL::IM) != 0 {
            self.iectl |= m32(IECTL::IP);
        } else {
            self.send(InterruptKind::InvalidationCompletion);
        }
    }

    /// Records a primary fault; returns whether a record was written.
    pub(crate) fn record_fault(&mut self, record: FaultRecord) -> bool {
        if self.fsts & m32(FSTS::PFO) != 0 {
            return false;
        }
        let n = self.records.len();
        let idx = self.fault_index % n.max(1);
        if FaultRecord::from_qwords(self.records[idx]).valid() {
            self.fsts |= m32(FSTS::PFO);
            self.fault_event();
            return false;
        }
        let ppf_before = self
            .records
            .iter()
            .any(|r| FaultRecord::from_qwords(*r).valid());
        self.records[idx] = record.qwords();
        if !ppf_before {
            self.fri = idx as u32;
            self.fault_event();
        }
        self.fault_index = (idx + 1) % n;
        true
    }

    /// The registers to save (see [`VtdUnit::restore`]).
    pub(crate) fn saved_registers(&self) -> Vec<RegisterValue> {
        let r4 = |offset: u64, value: u32| RegisterValue {
            offset,
            width: 4,
            value: value as u64,
        };
        let r8 = |offset: u64, value: u64| RegisterValue {
            offset,
            width: 8,
            value,
        };
        let mut out = vec![
            r4(regs::VER, self.ver),
            r8(regs::CAP, self.cap),
            r8(regs::ECAP, self.ecap),
            r4(regs::GSTS, self.gsts),
            r8(regs::RTADDR, self.rtaddr),
            r8(regs::CCMD, self.ccmd),
            r4(regs::FSTS, self.fsts_value()),
            r4(regs::FECTL, self.fectl),
            r4(regs::FEDATA, self.fedata),
            r4(regs::FEADDR, self.feaddr),
            r4(regs::FEUADDR, self.feuaddr),
            r4(regs::PMEN, self.pmen),
        ];
        if self.qi_supported() {
            out.extend([
                r8(regs::IQH, self.iqh),
                r8(regs::IQT, self.iqt),
                r8(regs::IQA, self.iqa),
                r4(regs::ICS, self.ics),
                r4(regs::IECTL, self.iectl),
                r4(regs::IEDATA, self.iedata),
                r4(regs::IEADDR, self.ieaddr),
                r4(regs::IEUADDR, self.ieuaddr),
                r8(regs::IQERCD, self.iqercd),
            ]);
        }
        if self.ir_supported() {
            out.push(r8(regs::IRTA, self.irta));
        }
        let (iva, iotlb) = regs::iotlb_offsets(self.ecap);
        out.push(r8(iva, self.iva));
        out.push(r8(iotlb, self.iotlb_reg));
        for (i, r) in self.records.iter().enumerate() {
            let off = regs::fault_recording_offset(self.cap, i as u64);
            out.push(r8(off, r[0]));
            out.push(r8(off + 8, r[1]));
        }
        out
    }
}

/// Rebuilds a unit from saved registers.
pub(crate) fn restore(base: PhysAddr, saved: &[RegisterValue]) -> Result<VtdUnit, VtdRestoreError> {
    let mut map: BTreeMap<u64, RegisterValue> = BTreeMap::new();
    for r in saved {
        if map.insert(r.offset, *r).is_some() {
            return Err(VtdRestoreError::Duplicate { offset: r.offset });
        }
    }
    let take = |map: &mut BTreeMap<u64, RegisterValue>,
                name: &'static str,
                offset: u64,
                width: u8,
                required: bool|
     -> Result<Option<u64>, VtdRestoreError> {
        match map.remove(&offset) {
            Some(r) if r.width != width => Err(VtdRestoreError::BadWidth {
                offset,
                width: r.width,
                expected: width,
            }),
            Some(r) if width == 4 && r.value >> 32 != 0 => Err(VtdRestoreError::Inconsistent {
                register: name,
                offset,
                value: r.value,
                what: "a 32-bit register holds a value wider than 32 bits",
            }),
            Some(r) => Ok(Some(r.value)),
            None if required => Err(VtdRestoreError::Missing {
                register: name,
                offset,
            }),
            None => Ok(None),
        }
    };
    let ver = take(&mut map, "VER", regs::VER, 4, true)?.unwrap_or(0) as u32;
    let cap = take(&mut map, "CAP", regs::CAP, 8, true)?.unwrap_or(0);
    let ecap = take(&mut map, "ECAP", regs::ECAP, 8, true)?.unwrap_or(0);
    let mut u =
        VtdUnit::from_capabilities(base, ver, cap, ecap).map_err(VtdRestoreError::Config)?;
    if CAP::NFR.read(cap) + 1 > 256 {
        return Err(VtdConfigError::Invalid {
            field: "CAP.NFR",
            value: CAP::NFR.read(cap),
            why: "too many records",
        }
        .into());
    }
    let gsts = take(&mut map, "GSTS", regs::GSTS, 4, true)?.unwrap_or(0) as u32;
    u.rtaddr = take(&mut map, "RTADDR", regs::RTADDR, 8, true)?.unwrap_or(0);
    let inconsistent = |register, offset, value, what| VtdRestoreError::Inconsistent {
        register,
        offset,
        value,
        what,
    };
    let known_gsts = regs::GCMD_PERSISTENT_MASK | regs::GSTS_ONE_SHOT_MASK;
    if gsts & !known_gsts != 0 {
        return Err(inconsistent(
            "GSTS",
            regs::GSTS,
            gsts as u64,
            "reserved bits set",
        ));
    }
    if gsts & m32(GSTS::TES) != 0 && gsts & m32(GSTS::RTPS) == 0 {
        return Err(inconsistent(
            "GSTS",
            regs::GSTS,
            gsts as u64,
            "translation enabled without a latched root table pointer",
        ));
    }
    if gsts & m32(GSTS::QIES) != 0 && !u.qi_supported() {
        return Err(inconsistent(
            "GSTS",
            regs::GSTS,
            gsts as u64,
            "QIES set but ECAP.QI = 0",
        ));
    }
    if gsts & (m32(GSTS::IRES) | m32(GSTS::IRTPS) | m32(GSTS::CFIS)) != 0 && !u.ir_supported() {
        return Err(inconsistent(
            "GSTS",
            regs::GSTS,
            gsts as u64,
            "interrupt-remapping status set but ECAP.IR = 0",
        ));
    }
    if gsts & (m32(GSTS::AFLS) | m32(GSTS::FLS)) != 0 {
        return Err(inconsistent(
            "GSTS",
            regs::GSTS,
            gsts as u64,
            "advanced fault logging status set but not supported",
        ));
    }
    u.gsts = gsts & !m32(GSTS::WBFS);
    if gsts & m32(GSTS::RTPS) != 0 {
        u.root = Some(LatchedRoot {
            addr: u.rtaddr & !0xfff,
            ttm: Ttm::from_bits(RTADDR::TTM.read(u.rtaddr)),
        });
    }
    if let Some(v) = take(&mut map, "CCMD", regs::CCMD, 8, false)? {
        u.ccmd = v & !field_mask(CCMD::ICC);
    }
    let fsts = take(&mut map, "FSTS", regs::FSTS, 4, false)?.unwrap_or(0) as u32;
    u.fsts = fsts & (m32(FSTS::PFO) | m32(FSTS::IQE) | m32(FSTS::ICE) | m32(FSTS::ITE));
    u.fri = FSTS::FRI.read(fsts);
    if let Some(v) = take(&mut map, "FECTL", regs::FECTL, 4, false)? {
        u.fectl = v as u32 & (m32(FECTL::IM) | m32(FECTL::IP));
    }
    u.fedata = take(&mut map, "FEDATA", regs::FEDATA, 4, false)?.unwrap_or(0) as u32;
    u.feaddr = take(&mut map, "FEADDR", regs::FEADDR, 4, false)?.unwrap_or(0) as u32;
    u.feuaddr = take(&mut map, "FEUADDR", regs::FEUADDR, 4, false)?.unwrap_or(0) as u32;
    u.pmen = take(&mut map, "PMEN", regs::PMEN, 4, false)?.unwrap_or(0) as u32;
    if u.qi_supported() {
        let qies = gsts & m32(GSTS::QIES) != 0;
        u.iqh = take(&mut map, "IQH", regs::IQH, 8, qies)?.unwrap_or(0);
        u.iqt = take(&mut map, "IQT", regs::IQT, 8, qies)?.unwrap_or(0);
        u.iqa = take(&mut map, "IQA", regs::IQA, 8, qies)?.unwrap_or(0);
        u.ics = take(&mut map, "ICS", regs::ICS, 4, false)?.unwrap_or(0) as u32;
        if let Some(v) = take(&mut map, "IECTL", regs::IECTL, 4, false)? {
            u.iectl = v as u32 & (m32(IECTL::IM) | m32(IECTL::IP));
        }
        u.iedata = take(&mut map, "IEDATA", regs::IEDATA, 4, false)?.unwrap_or(0) as u32;
        u.ieaddr = take(&mut map, "IEADDR", regs::IEADDR, 4, false)?.unwrap_or(0) as u32;
        u.ieuaddr = take(&mut map, "IEUADDR", regs::IEUADDR, 4, false)?.unwrap_or(0) as u32;
        u.iqercd = take(&mut map, "IQERCD", regs::IQERCD, 8, false)?.unwrap_or(0);
        if qies {
            let q = Queue {
                base: u.iqa & !0xfff,
                size: 4096u64 << IQA::QS.read(u.iqa),
                wide: IQA::DW.is_set(u.iqa),
            };
            for (name, off, v) in [("IQH", regs::IQH, u.iqh), ("IQT", regs::IQT, u.iqt)] {
                if v >= q.size || v & !field_mask(IQT::QT) != 0 {
                    return Err(inconsistent(
                        name,
                        off,
                        v,
                        "offset outside the invalidation queue",
                    ));
                }
            }
            u.queue = Some(q);
        }
    }
    if u.ir_supported() {
        u.irta = take(&mut map, "IRTA", regs::IRTA, 8, false)?.unwrap_or(0);
    }
    let (iva, iotlb) = regs::iotlb_offsets(ecap);
    u.iva = take(&mut map, "IVA", iva, 8, false)?.unwrap_or(0);
    u.iotlb_reg = take(&mut map, "IOTLB", iotlb, 8, false)?.unwrap_or(0) & !field_mask(IOTLB::IVT);
    let n = u.records.len();
    for i in 0..n {
        let off = regs::fault_recording_offset(cap, i as u64);
        let lo = take(&mut map, "FRCD (low)", off, 8, false)?.unwrap_or(0);
        let hi = take(&mut map, "FRCD (high)", off + 8, 8, false)?.unwrap_or(0);
        u.records[i] = [lo, hi];
    }
    if let Some((_, r)) = map.into_iter().next() {
        return Err(VtdRestoreError::UnknownOffset {
            offset: r.offset,
            width: r.width,
        });
    }
    let valid = u
        .records
        .iter()
        .filter(|r| FaultRecord::from_qwords(**r).valid())
        .count();
    if valid > 0 && u.fri as usize >= n {
        return Err(inconsistent(
            "FSTS",
            regs::FSTS,
            fsts as u64,
            "FRI names a fault record the unit does not have",
        ));
    }
    // Records are filled in order from FRI; the next free one follows the valid ones.
    u.fault_index = if valid > 0 {
        (u.fri as usize + valid) % n
    } else {
        0
    };
    Ok(u)
}
