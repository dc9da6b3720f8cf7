//! A strict model of an Arm SMMUv3 (IHI0070), built on the layouts of [`smmuv3::hw`]
//! only, with a VMSAv8-64 table walker of its own (`walk`, from the Arm ARM), so that
//! it can referee the driver side's `smmuv3::format`.
//!
//! The model implements:
//!
//! - the register pages 0 and 1: IDR0–5 (from [`SmmuV3Config`]), IIDR, AIDR, CR0/CR0ACK
//!   (acknowledged at once), CR1, CR2, GBPA with its UPDATE handshake, IRQ_CTRL/ACK,
//!   GERROR/GERRORN, STRTAB_BASE(_CFG), CMDQ_BASE/PROD/CONS and EVENTQ_BASE/PROD/CONS
//!   with wrap and overflow flags. Writes the specification makes IGNORED (STRTAB_BASE
//!   while SMMUEN, a queue base or the consumer's index while its queue is enabled, GBPA
//!   without UPDATE, CR1 fields while in use: `shared/reference/smmuv3.md` §3, SMMUv3.2
//!   behaviour) are dropped and reported in [`SmmuV3Unit::diagnostics`];
//! - translation: linear and 2-level stream tables, STE Config abort / bypass /
//!   stage 1 / stage 2 / nested (stage-1 table walks and the CD fetch translated by
//!   stage 2), linear and 2-level CD tables, SubstreamID = PASID with S1DSS, and the
//!   events C_BAD_STREAMID, F_STE_FETCH, C_BAD_STE, F_STREAM_DISABLED,
//!   C_BAD_SUBSTREAMID, F_CD_FETCH, C_BAD_CD, F_WALK_EABT, F_TRANSLATION, F_ADDR_SIZE,
//!   F_ACCESS and F_PERMISSION written to the event queue (reference §10, §13, §15);
//! - STE, L1STD, CD and L1CD caches and a TLB tagged by ASID and VMID, emptied only by
//!   the CFGI and TLBI commands, so a missing invalidation shows as a stale translation;
//! - the command queue, processed when CMDQ_PROD is written while CMDQEN = 1, with
//!   CMD_SYNC (CS none, SIG_IRQ with its MSI write, SIG_SEV) and CERROR_ILL / CERROR_ABT
//!   stopping the queue with GERROR.CMDQ_ERR;
//! - a torn-entry mode ([`SmmuV3Config::refetch_config`]): every translation re-reads
//!   the STE and CD from memory, as hardware may between any two writes of a driver.
//!
//! A fetch from an address no memory backs is an external abort (F_STE_FETCH,
//! F_CD_FETCH, F_WALK_EABT); a fetch from poisoned memory is [`DmaError::Memory`], never
//! a silent zero. Not modelled: stalls (IDR0.STALL_MODEL = 1, terminate only, so CD.S and
//! STE.S2S are ILLEGAL), the PRI queue, ATS, AArch32 tables, TTB1, hypervisor (EL2)
//! streams and secure state. Snapshots save the registers and rebuild the unit with
//! [`SmmuV3Unit::restore`] (the `iommu-map` is not register state).

mod cache;
mod cmdq;
mod eventq;
mod mmio;
mod restore;
mod translate;
mod walk;

pub use restore::SmmuV3RestoreError;

use crate::model::{
    DmaError, DmaRequest, FaultEvent, IommuModel, RegisterValue, Translated, UnitKind,
};
use cache::Caches;
use iommu_core::mem::PhysMem;
use iommu_core::{PhysAddr, RequesterId};
use smmuv3::hw::pa_size_enc;
use smmuv3::hw::regs::{self, IDR0, IDR1, IDR5};
use std::fmt;
use walk::Caps;

/// Maximum number of diagnostics kept; later ones are counted, not stored.
const MAX_DIAGNOSTICS: usize = 10_000;
/// Maximum number of faults kept in the log.
const MAX_FAULTS: usize = 100_000;

/// One `iommu-map` entry (Linux `Documentation/devicetree/bindings/pci/pci-iommu.yaml`,
/// the IORT ID mapping): requester IDs `rid_base..rid_base + length` of `segment` map
/// to StreamIDs `sid_base..`.
///
/// The machine names every DMA master by a [`RequesterId`]; a non-PCI master with its own
/// StreamID (an IORT named component, a device-tree `iommus` phandle) is given a
/// requester ID in a segment no PCI root uses, and an entry here maps it to its
/// StreamID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamMap {
    /// PCI segment.
    pub segment: u16,
    /// First requester ID (`bus << 8 | devfn`).
    pub rid_base: u16,
    /// StreamID of the first requester ID.
    pub sid_base: u32,
    /// Number of requester IDs mapped.
    pub length: u32,
}

/// The features and placement of one modelled SMMUv3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuV3Config {
    /// Physical base of the register window (two 64 KiB pages).
    pub mmio_base: PhysAddr,
    /// IDR0.S1P: stage-1 translation.
    pub stage1: bool,
    /// IDR0.S2P: stage-2 translation.
    pub stage2: bool,
    /// IDR0.ST_LEVEL = 1: 2-level stream tables.
    pub two_level_strtab: bool,
    /// IDR0.CD2L: 2-level CD tables.
    pub two_level_cd: bool,
    /// IDR0.ASID16.
    pub asid16: bool,
    /// IDR0.VMID16.
    pub vmid16: bool,
    /// IDR0.MSI: message-signalled interrupts (and CMD_SYNC MSIs).
    pub msi: bool,
    /// IDR0.SEV: CMD_SYNC CS = SIG_SEV raises an event.
    pub sev: bool,
    /// IDR0.HYP: hypervisor stage 1 (only the EL2 TLBI commands are accepted; EL2
    /// streams are not modelled).
    pub hyp: bool,
    /// IDR3.RIL: range invalidation (NUM/SCALE of TLBI by address).
    pub ril: bool,
    /// IDR5.OAS in bits (32, 36, 40, 42, 44, 48 or 52).
    pub oas_bits: u32,
    /// IDR5.GRAN4K.
    pub gran4k: bool,
    /// IDR5.GRAN16K.
    pub gran16k: bool,
    /// IDR5.GRAN64K.
    pub gran64k: bool,
    /// IDR1.SIDSIZE: StreamID bits (0–32).
    pub sid_bits: u32,
    /// IDR1.SSIDSIZE: SubstreamID bits (0–20).
    pub ssid_bits: u32,
    /// IDR1.CMDQS: log2 of the largest command queue (0–19).
    pub cmdq_log2: u32,
    /// IDR1.EVENTQS: log2 of the largest event queue (0–19).
    pub eventq_log2: u32,
    /// The `iommu-map` of the root complex behind this SMMU; empty means identity
    /// (StreamID = `bus << 8 | devfn`). A requester no entry covers has no StreamID and
    /// its DMA is refused.
    pub stream_map: Vec<StreamMap>,
    /// Torn-entry mode: every translation re-reads the STE and CD (and L1 descriptors)
    /// from memory instead of the configuration caches, so a driver update that is not
    /// hitless is seen half-written.
    pub refetch_config: bool,
}

impl SmmuV3Config {
    /// A stage-1 and stage-2 SMMU at `mmio_base` with 2-level stream and CD tables, all
    /// three granules, 48-bit OAS, 16-bit StreamIDs, 20-bit SubstreamIDs, MSIs and SEV,
    /// 2^8-entry queues, identity StreamID map.
    pub fn new(mmio_base: PhysAddr) -> Self {
        Self {
            mmio_base,
            stage1: true,
            stage2: true,
            two_level_strtab: true,
            two_level_cd: true,
            asid16: true,
            vmid16: true,
            msi: true,
            sev: true,
            hyp: false,
            ril: true,
            oas_bits: 48,
            gran4k: true,
            gran16k: true,
            gran64k: true,
            sid_bits: 16,
            ssid_bits: 20,
            cmdq_log2: 8,
            eventq_log2: 8,
            stream_map: Vec::new(),
            refetch_config: false,
        }
    }

    /// The StreamID of a requester, through [`SmmuV3Config::stream_map`].
    pub fn stream_id(&self, rid: RequesterId) -> Option<u32> {
        let r = (rid.bus as u32) << 8 | rid.devfn as u32;
        if self.stream_map.is_empty() {
            return (rid.segment == 0).then_some(r);
        }
        self.stream_map.iter().find_map(|m| {
            let off = r.checked_sub(m.rid_base as u32)?;
            (m.segment == rid.segment && off < m.length).then(|| m.sid_base.wrapping_add(off))
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |what| Err(ConfigError { what });
        if !self.stage1 && !self.stage2 {
            return bad("neither stage 1 nor stage 2 is implemented");
        }
        if pa_size_enc(self.oas_bits).is_none() {
            return bad("OAS is not 32, 36, 40, 42, 44, 48 or 52 bits");
        }
        if !(self.gran4k || self.gran16k || self.gran64k) {
            return bad("no granule is implemented");
        }
        if self.sid_bits > 32 || self.ssid_bits > 20 {
            return bad("SIDSIZE above 32 or SSIDSIZE above 20");
        }
        if self.cmdq_log2 > 19 || self.eventq_log2 > 19 {
            return bad("queue size above 2^19 entries");
        }
        if self.two_level_strtab && self.sid_bits < 7 {
            // IHI0070 IDR0.ST_LEVEL: 2-level tables need SIDSIZE >= 7.
            return bad("2-level stream tables with fewer than 7 StreamID bits");
        }
        if self.stream_map.iter().any(|m| {
            m.length == 0
                || m.rid_base as u32 + m.length > 0x1_0000
                || (self.sid_bits < 32
                    && (m.sid_base as u64 + m.length as u64) > 1u64 << self.sid_bits)
        }) {
            return bad("an iommu-map entry is empty, or runs past the RID or StreamID space");
        }
        Ok(())
    }

    /// IDR0.
    pub fn idr0(&self) -> u32 {
        let b = |f: bool| f as u32;
        (IDR0::S2P.val(b(self.stage2))
            + IDR0::S1P.val(b(self.stage1))
            + IDR0::TTF::AArch64
            + IDR0::COHACC::SET
            + IDR0::HYP.val(b(self.hyp))
            + IDR0::ASID16.val(b(self.asid16))
            + IDR0::MSI.val(b(self.msi))
            + IDR0::SEV.val(b(self.sev))
            + IDR0::VMID16.val(b(self.vmid16))
            + IDR0::CD2L.val(b(self.two_level_cd))
            + IDR0::TTENDIAN::Little
            + IDR0::STALL_MODEL::Terminate
            + IDR0::TERM_MODEL::SET
            + IDR0::ST_LEVEL.val(b(self.two_level_strtab)))
        .value
    }

    /// IDR1.
    pub fn idr1(&self) -> u32 {
        (IDR1::SIDSIZE.val(self.sid_bits)
            + IDR1::SSIDSIZE.val(self.ssid_bits)
            + IDR1::EVENTQS.val(self.eventq_log2)
            + IDR1::CMDQS.val(self.cmdq_log2))
        .value
    }

    /// IDR3.
    pub fn idr3(&self) -> u32 {
        regs::IDR3::RIL.val(self.ril as u32).value
    }

    /// IDR5.
    pub fn idr5(&self) -> u32 {
        let b = |f: bool| f as u32;
        (IDR5::OAS.val(pa_size_enc(self.oas_bits).unwrap_or(5) as u32)
            + IDR5::GRAN4K.val(b(self.gran4k))
            + IDR5::GRAN16K.val(b(self.gran16k))
            + IDR5::GRAN64K.val(b(self.gran64k)))
        .value
    }

    fn caps(&self) -> Caps {
        Caps {
            oas_bits: self.oas_bits,
            gran: [self.gran4k, self.gran16k, self.gran64k],
        }
    }
}

/// Why an [`SmmuV3Config`] describes no SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// What is wrong.
    pub what: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SMMUv3 configuration: {}", self.what)
    }
}

impl std::error::Error for ConfigError {}

/// The register file (values as software reads them).
#[derive(Clone, Debug, Default)]
struct Regs {
    cr0: u32,
    cr0ack: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    irq_ctrlack: u32,
    gerror: u32,
    gerrorn: u32,
    gerror_irq_cfg0: u64,
    gerror_irq_cfg1: u32,
    gerror_irq_cfg2: u32,
    strtab_base: u64,
    strtab_base_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    eventq_base: u64,
    eventq_prod: u32,
    eventq_cons: u32,
    eventq_irq_cfg0: u64,
    eventq_irq_cfg1: u32,
    eventq_irq_cfg2: u32,
}

/// A modelled SMMUv3.
pub struct SmmuV3Unit {
    cfg: SmmuV3Config,
    caps: Caps,
    regs: Regs,
    caches: Caches,
    faults: Vec<FaultEvent>,
    diagnostics: Vec<String>,
    dropped_diagnostics: u64,
    sync_irqs: u64,
    sev_events: u64,
    eventq_irqs: u64,
    gerror_irqs: u64,
}

impl fmt::Debug for SmmuV3Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmmuV3Unit")
            .field("mmio_base", &self.cfg.mmio_base)
            .field("regs", &self.regs)
            .finish_non_exhaustive()
    }
}

impl SmmuV3Unit {
    /// An SMMU in its reset state: every enable 0, GBPA.ABORT = 1 (the reset value is
    /// IMPLEMENTATION DEFINED; abort is the fail-closed choice, reference §3).
    pub fn new(cfg: SmmuV3Config) -> Result<Self, ConfigError> {
        cfg.check()?;
        let caps = cfg.caps();
        let regs = Regs {
            gbpa: regs::GBPA::ABORT::SET.value,
            ..Regs::default()
        };
        Ok(Self {
            cfg,
            caps,
            regs,
            caches: Caches::default(),
            faults: Vec::new(),
            diagnostics: Vec::new(),
            dropped_diagnostics: 0,
            sync_irqs: 0,
            sev_events: 0,
            eventq_irqs: 0,
            gerror_irqs: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SmmuV3Config {
        &self.cfg
    }

    /// CMD_SYNCs with CS = SIG_IRQ completed (MSI written or wired interrupt).
    pub fn sync_irqs(&self) -> u64 {
        self.sync_irqs
    }

    /// CMD_SYNCs with CS = SIG_SEV that raised an event (IDR0.SEV = 1).
    pub fn sev_events(&self) -> u64 {
        self.sev_events
    }

    /// Event-queue interrupts raised (IRQ_CTRL.EVENTQ_IRQEN = 1).
    pub fn eventq_irqs(&self) -> u64 {
        self.eventq_irqs
    }

    /// Global-error interrupts raised (IRQ_CTRL.GERROR_IRQEN = 1).
    pub fn gerror_irqs(&self) -> u64 {
        self.gerror_irqs
    }

    /// Diagnostics beyond the stored ones.
    pub fn dropped_diagnostics(&self) -> u64 {
        self.dropped_diagnostics
    }

    fn diag(&mut self, msg: String) {
        if self.diagnostics.len() < MAX_DIAGNOSTICS {
            self.diagnostics
                .push(format!("smmuv3 {}: {msg}", self.cfg.mmio_base));
        } else {
            self.dropped_diagnostics += 1;
        }
    }

    fn log_fault(&mut self, e: FaultEvent) {
        if self.faults.len() < MAX_FAULTS {
            self.faults.push(e);
        }
    }

    /// Toggles the GERROR bits of `mask` that are not already active, and raises the
    /// global-error interrupt if enabled.
    fn raise_gerror(&mut self, mask: u32) {
        let inactive = !(self.regs.gerror ^ self.regs.gerrorn) & mask;
        if inactive == 0 {
            return;
        }
        self.regs.gerror ^= inactive;
        if regs::IRQ_CTRL::GERROR_IRQEN.is_set(self.regs.irq_ctrlack) {
            self.gerror_irqs += 1;
        }
    }

    fn gerror_active(&self, mask: u32) -> bool {
        (self.regs.gerror ^ self.regs.gerrorn) & mask != 0
    }
}

impl IommuModel for SmmuV3Unit {
    fn kind(&self) -> UnitKind {
        UnitKind::Smmuv3
    }

    fn mmio_base(&self) -> PhysAddr {
        self.cfg.mmio_base
    }

    fn mmio_size(&self) -> u64 {
        2 * regs::PAGE1
    }

    fn mmio_read(&mut self, _mem: &mut dyn PhysMem, offset: u64, width: u8) -> u64 {
        self.read_reg(offset, width)
    }

    fn mmio_write(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64) {
        self.write_reg(mem, offset, width, value)
    }

    fn translate(
        &mut self,
        mem: &mut dyn PhysMem,
        request: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        self.translate_request(mem, request)
    }

    fn fault_log(&self) -> &[FaultEvent] {
        &self.faults
    }

    fn diagnostics(&self) -> &[String] {
        &self.diagnostics
    }

    fn save_registers(&self) -> Vec<RegisterValue> {
        self.saved_registers()
    }
}
