//! The event log: entries written at Event Tail, consumed by software at Event Head.

use super::AmdViUnit;
use amdvi::hw::event::EventEntry;
use amdvi::hw::regs::{self, field_mask};
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;

impl AmdViUnit {
    /// Writes `entry` to the event log; returns whether it was recorded.
    ///
    /// Nothing is logged unless EventLogRun (IommuEn && EventLogEn, reference §4/§8).
    /// The log is full when advancing Tail would make it equal Head (one slot stays
    /// free, as for the command buffer); then Status.EventOverflow is set and logging
    /// stops until software clears it (reference §10, Xen's recovery).
    pub(super) fn log_event(&mut self, mem: &mut dyn PhysMem, entry: EventEntry) -> bool {
        if !self.event_log_run() || self.regs.status & field_mask(regs::STATUS::EVENT_OVERFLOW) != 0
        {
            return false;
        }
        let Some((base, size)) = Self::ring(self.regs.evt_log_base) else {
            self.diag("event logged with a reserved EventLen".into());
            return false;
        };
        let tail = self.regs.evt_tail % size;
        let next = (tail + regs::RING_ENTRY_BYTES) % size;
        if next == self.regs.evt_head % size {
            self.regs.status |= field_mask(regs::STATUS::EVENT_OVERFLOW);
            return false;
        }
        let [q0, q1] = entry.qwords();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&q0.to_le_bytes());
        bytes[8..].copy_from_slice(&q1.to_le_bytes());
        if let Err(e) = mem.write(PhysAddr(base + tail), &bytes) {
            self.diag(format!("event log write at {:#x} failed: {e}", base + tail));
            return false;
        }
        self.regs.evt_tail = next;
        if self.regs.ctl(regs::CONTROL::EVENT_INT_EN) {
            self.regs.status |= field_mask(regs::STATUS::EVENT_LOG_INT);
        }
        true
    }
}
