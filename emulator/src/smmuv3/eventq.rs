//! The event queue: records written at EVENTQ_PROD, wrap, the overflow flag, and the
//! event interrupt (reference §9, §10).

use super::SmmuV3Unit;
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::PhysAddr;
use smmuv3::hw::event::Event;
use smmuv3::hw::regs::{
    field_mask32, QueuePos, CR0, EVENTQ_CONS, GERROR, IRQ_CTRL, Q_BASE, Q_PROD,
};
use zerocopy::IntoBytes;

impl SmmuV3Unit {
    /// Writes `event` to the event queue; returns whether it was recorded (EVENTQEN = 1,
    /// queue not full, the write reached memory). A full queue drops the record and sets
    /// the overflow flag (PROD.OVFLG toggled to differ from CONS.OVACKFLG) unless an
    /// overflow is already pending.
    pub(super) fn push_event(&mut self, mem: &mut dyn PhysMem, event: &Event) -> bool {
        if !self.enabled(CR0::EVENTQEN) || self.gerror_active(field_mask32(GERROR::EVENTQ_ABT_ERR))
        {
            return false;
        }
        let log2 = self.eventq_log2();
        let prod = QueuePos::from_reg(log2, self.regs.eventq_prod);
        let cons = QueuePos::from_reg(log2, self.regs.eventq_cons);
        if prod.full(cons) {
            let ovflg = Q_PROD::OVFLG.is_set(self.regs.eventq_prod);
            let ovack = EVENTQ_CONS::OVACKFLG.is_set(self.regs.eventq_cons);
            if ovflg == ovack {
                self.regs.eventq_prod ^= field_mask32(Q_PROD::OVFLG);
            }
            return false;
        }
        // Aligned to the queue size (IHI0070 §6.3 EVENTQ_BASE).
        let base = (Q_BASE::ADDR.read(self.regs.eventq_base) << 5) & !((32u64 << log2) - 1);
        let addr = PhysAddr(base + prod.index() as u64 * 32);
        if let Err(e) = mem.write(addr, event.as_bytes()) {
            self.diag(format!("event queue write at {addr} failed: {e}"));
            self.raise_gerror(field_mask32(GERROR::EVENTQ_ABT_ERR));
            return false;
        }
        let ovflg = self.regs.eventq_prod & field_mask32(Q_PROD::OVFLG);
        self.regs.eventq_prod = prod.next().value | ovflg;
        if IRQ_CTRL::EVENTQ_IRQEN.is_set(self.regs.irq_ctrlack) {
            self.eventq_irqs += 1;
            let (addr, data) = (self.regs.eventq_irq_cfg0, self.regs.eventq_irq_cfg1);
            if self.cfg.msi && addr != 0 {
                if let Err(e) = mem.write(PhysAddr(addr), &data.to_le_bytes()) {
                    self.msi_failed(addr, e, GERROR::MSI_EVENTQ_ABT_ERR);
                }
            }
        }
        true
    }

    pub(super) fn msi_failed(
        &mut self,
        addr: u64,
        e: MemError,
        bit: tock_registers::fields::Field<u32, GERROR::Register>,
    ) {
        self.diag(format!("MSI write to {addr:#x} aborted: {e}"));
        self.raise_gerror(field_mask32(bit));
    }
}
