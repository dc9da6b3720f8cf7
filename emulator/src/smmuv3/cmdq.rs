//! The command queue: commands consumed from CMDQ_CONS to CMDQ_PROD while CMDQEN = 1
//! and no command error is active; CFGI and TLBI against the caches; CMD_SYNC with its
//! completion signal; CERROR_ILL and CERROR_ABT stopping the queue (reference §9, §16).

use super::cache::TlbStage;
use super::SmmuV3Unit;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::PhysAddr;
use smmuv3::hw::cmd::{Cmd, CmdError, Opcode, SyncCs};
use smmuv3::hw::regs::{field_mask32, QueuePos, CMDQ_CONS, CR0, GERROR, Q_BASE};
use smmuv3::hw::ste::StrtabCfg;
use smmuv3::hw::Granule;
use zerocopy::FromBytes;

impl SmmuV3Unit {
    /// Consumes commands until the queue is empty or a command fails.
    pub(super) fn process_cmdq(&mut self, mem: &mut dyn PhysMem) {
        if !self.enabled(CR0::CMDQEN) || self.gerror_active(field_mask32(GERROR::CMDQ_ERR)) {
            return;
        }
        let log2 = self.cmdq_log2();
        // Aligned to the larger of the queue size and 32 bytes (IHI0070 §6.3 CMDQ_BASE).
        let size = (16u64 << log2).max(32);
        let base = (Q_BASE::ADDR.read(self.regs.cmdq_base) << 5) & !(size - 1);
        let prod = QueuePos::from_reg(log2, self.regs.cmdq_prod);
        let mut cons = QueuePos::from_reg(log2, self.regs.cmdq_cons);
        // At most one pass over the queue.
        while !prod.empty(cons) {
            let addr = PhysAddr(base + cons.index() as u64 * 16);
            let mut buf = [0u8; 16];
            let result = match mem.read(addr, &mut buf) {
                Err(e) => {
                    self.diag(format!("command fetch at {addr} aborted: {e}"));
                    Err(CmdError::Abt)
                }
                Ok(()) => match Cmd::read_from_bytes(&buf) {
                    Ok(cmd) => self.execute(mem, &cmd),
                    Err(_) => Err(CmdError::Abt),
                },
            };
            if let Err(err) = result {
                // CONS stays on the failing command with ERR set (reference §9, §16).
                self.regs.cmdq_cons = cons.value | CMDQ_CONS::ERR.val(err.code()).value;
                self.raise_gerror(field_mask32(GERROR::CMDQ_ERR));
                return;
            }
            cons = cons.next();
            self.regs.cmdq_cons = cons.value;
        }
    }

    fn ill(&mut self, cmd: &Cmd, why: &str) -> Result<(), CmdError> {
        self.diag(format!("CERROR_ILL: {why}: {cmd:?}"));
        Err(CmdError::Ill)
    }

    fn execute(&mut self, mem: &mut dyn PhysMem, cmd: &Cmd) -> Result<(), CmdError> {
        let Some(op) = cmd.opcode() else {
            return self.ill(cmd, "unknown opcode");
        };
        let sid_ok = |sid: u64| self.cfg.sid_bits >= 32 || sid >> self.cfg.sid_bits == 0;
        let split = StrtabCfg::effective(
            self.regs.strtab_base_cfg,
            self.cfg.sid_bits,
            self.cfg.two_level_strtab,
        )
        .split;
        match op {
            Opcode::PrefetchConfig => {
                if !sid_ok(cmd.sid()) {
                    return self.ill(cmd, "StreamID beyond SIDSIZE");
                }
            }
            Opcode::CfgiSte => {
                if !sid_ok(cmd.sid()) {
                    return self.ill(cmd, "StreamID beyond SIDSIZE");
                }
                let sid = cmd.sid() as u32;
                self.caches.drop_stes(sid, sid, !cmd.leaf(), split);
            }
            Opcode::CfgiSteRange => {
                // 2^(Range+1) StreamIDs, aligned; Range 31 is CFGI_ALL (reference §9).
                let range = cmd.range() as u32;
                let n = 1u64 << (range + 1).min(32);
                let first = cmd.sid() & !(n - 1);
                let last = (first + n - 1).min(u32::MAX as u64);
                self.caches
                    .drop_stes(first as u32, last as u32, true, split);
            }
            Opcode::CfgiCd => {
                if !sid_ok(cmd.sid()) || cmd.ssid() >> self.cfg.ssid_bits != 0 {
                    return self.ill(cmd, "StreamID or SubstreamID beyond SIDSIZE/SSIDSIZE");
                }
                let (sid, ssid) = (cmd.sid() as u32, cmd.ssid() as u32);
                self.caches.cd.remove(&(sid, ssid));
                if !cmd.leaf() {
                    // The L1CD of any format that covers this SubstreamID.
                    let l1s = [ssid >> 6, ssid >> 10];
                    self.caches
                        .l1cd
                        .retain(|(s, l1), _| !(*s == sid && l1s.contains(l1)));
                }
            }
            Opcode::CfgiCdAll => {
                if !sid_ok(cmd.sid()) {
                    return self.ill(cmd, "StreamID beyond SIDSIZE");
                }
                let sid = cmd.sid() as u32;
                self.caches.cd.retain(|(s, _), _| *s != sid);
                self.caches.l1cd.retain(|(s, _), _| *s != sid);
            }
            Opcode::TlbiNhAll | Opcode::TlbiNhAsid | Opcode::TlbiNhVa | Opcode::TlbiNhVaa => {
                if !self.cfg.stage1 {
                    return self.ill(cmd, "stage-1 TLBI without stage 1");
                }
                let vmid = if self.cfg.stage2 {
                    cmd.vmid() as u16
                } else {
                    0
                };
                let asid = cmd.asid() as u16;
                let by_asid = matches!(op, Opcode::TlbiNhAsid | Opcode::TlbiNhVa);
                let range = match op {
                    Opcode::TlbiNhVa | Opcode::TlbiNhVaa => Some(self.tlbi_range(cmd)?),
                    _ => None,
                };
                self.caches.tlb_drop(|k| {
                    let TlbStage::S1 { asid: a } = k.stage else {
                        return false;
                    };
                    k.vmid == vmid
                        && (!by_asid || a == asid)
                        && range.map_or(true, |(lo, hi)| overlaps(k.base, k.shift, lo, hi))
                });
            }
            Opcode::TlbiS12Vmall => {
                if !self.cfg.stage2 {
                    return self.ill(cmd, "stage-2 TLBI without stage 2");
                }
                let vmid = cmd.vmid() as u16;
                self.caches.tlb_drop(|k| k.vmid == vmid);
            }
            Opcode::TlbiS2Ipa => {
                if !self.cfg.stage2 {
                    return self.ill(cmd, "stage-2 TLBI without stage 2");
                }
                let vmid = cmd.vmid() as u16;
                let (lo, hi) = self.tlbi_range(cmd)?;
                // Only stage-2 entries: combined nested entries need TLBI_NH_* or
                // TLBI_S12_VMALL as well (IHI0070 §4.4).
                self.caches.tlb_drop(|k| {
                    k.vmid == vmid && k.stage == TlbStage::S2 && overlaps(k.base, k.shift, lo, hi)
                });
            }
            Opcode::TlbiNsnhAll => self.caches.tlb.clear(),
            Opcode::TlbiEl2All | Opcode::TlbiEl2Asid | Opcode::TlbiEl2Va => {
                if !self.cfg.hyp {
                    return self.ill(cmd, "EL2 TLBI without IDR0.HYP");
                }
                // No EL2 streams are modelled, so no entry carries an EL2 tag.
            }
            Opcode::AtcInv | Opcode::PriResp => {
                return self.ill(cmd, "ATS and PRI not implemented")
            }
            // Nothing stalls (IDR0.STALL_MODEL = 1): there is nothing to resume.
            Opcode::Resume | Opcode::StallTerm => return self.ill(cmd, "stalls not implemented"),
            Opcode::Sync => return self.sync(mem, cmd),
        }
        Ok(())
    }

    /// The input range `[lo, hi]` of a TLBI by address: one address, or with IDR3.RIL
    /// and TG ≠ 0, `(NUM + 1) << (5 × SCALE + 1)` granules (IHI0070 §4.4.1, Linux
    /// `arm_smmu_tlb_inv_range_cmd`).
    fn tlbi_range(&mut self, cmd: &Cmd) -> Result<(u64, u64), CmdError> {
        let addr = cmd.tlbi_address();
        let Some(g) = Granule::from_tlbi_tg(cmd.tg_bits()) else {
            return Ok((addr, addr));
        };
        if !self.cfg.ril || (cmd.num() == 0 && cmd.scale() == 0) {
            return Ok((addr, addr));
        }
        let pages = (cmd.num() + 1) << (5 * cmd.scale() + 1).min(40);
        let len = pages.saturating_mul(g.bytes());
        Ok((addr, addr.saturating_add(len - 1)))
    }

    fn sync(&mut self, mem: &mut dyn PhysMem, cmd: &Cmd) -> Result<(), CmdError> {
        // Every earlier command has taken effect: the model executes them in order.
        match cmd.sync_cs() {
            None => self.ill(cmd, "CMD_SYNC CS = 3"),
            Some(SyncCs::None) => Ok(()),
            Some(SyncCs::Sev) => {
                // As NONE unless IDR0.SEV (reference §16).
                if self.cfg.sev {
                    self.sev_events += 1;
                }
                Ok(())
            }
            Some(SyncCs::Irq) => {
                let addr = cmd.sync_msi_addr();
                if self.cfg.msi && addr != 0 {
                    let data = (cmd.sync_msi_data() as u32).to_le_bytes();
                    if let Err(e) = mem.write(PhysAddr(addr), &data) {
                        self.msi_abort(addr, e);
                        return Ok(());
                    }
                }
                self.sync_irqs += 1;
                Ok(())
            }
        }
    }

    fn msi_abort(&mut self, addr: u64, e: MemError) {
        self.msi_failed(addr, e, GERROR::MSI_CMDQ_ABT_ERR);
    }
}

/// Whether the entry at `base` of `2^shift` bytes overlaps `[lo, hi]`.
fn overlaps(base: u64, shift: u32, lo: u64, hi: u64) -> bool {
    let last = base | ((1u64 << shift) - 1);
    base <= hi && lo <= last
}
