//! A strict model of an Intel VT-d DMA-remapping unit.
//!
//! The model implements, from the register and structure layouts of [`vtd::hw`]:
//!
//! - the register file: VER, CAP, ECAP (read-only, from [`VtdConfig`]); GCMD/GSTS with
//!   the command/status handshake; RTADDR with its translation-table mode; CCMD and
//!   the IOTLB/IVA pair at `ECAP.IRO * 16` (register-based invalidation); FSTS, FECTL,
//!   FEDATA/FEADDR/FEUADDR and the fault recording registers at `CAP.FRO * 16`; the
//!   invalidation queue (IQH, IQT, IQA, ICS, IECTL, IEDATA/IEADDR/IEUADDR, IQERCD);
//!   IRTA and PMEN. Read-only, write-1-to-clear and reserved bits are exact; writes to
//!   reserved bits are ignored and reported in [`VtdUnit::diagnostics`];
//! - translation of untranslated requests in legacy mode (root/context entries,
//!   second-stage tables of 3, 4 or 5 levels, 2 MiB / 1 GiB pages where CAP.SLLPS
//!   allows, pass-through) and scalable mode (scalable root/context entries, PASID
//!   directory and table, first-stage x86 4/5-level paging, second-stage, pass-through);
//! - a context cache, a PASID cache and an IOTLB tagged by domain ID (and PASID),
//!   filled by walks and emptied only by architectural invalidations, so a missing
//!   invalidation shows as a stale translation;
//! - primary fault recording with the specification's fault reasons, overflow and the
//!   fault-event interrupt state, plus a log of every fault for tests.
//!
//! Not modelled: interrupt remapping (IRTA/SIRTP/IRE are accepted and latched only),
//! nested translation (PGTT = 3 is reported as an invalid PASID entry), translation
//! requests and device TLBs (device-TLB descriptors are accepted), page requests,
//! advanced fault logging (CAP.AFL must be 0) and protected memory regions (PMEN is
//! latched). The host address width is taken to be MGAW, as QEMU's `aw-bits` does.

mod cache;
mod mmio;
mod qi;
mod translate;

use crate::model::{
    DmaError, DmaRequest, FaultEvent, IommuModel, RegisterValue, Translated, UnitKind,
};
use cache::{ContextCacheEntry, FastMap, Iotlb, PasidCacheEntry};
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use std::fmt;
use vtd::hw::regs::{self, Ttm, CAP, ECAP};

/// Maximum number of diagnostics kept; later ones are counted, not stored.
const MAX_DIAGNOSTICS: usize = 10_000;

/// The capabilities and placement of one modelled VT-d unit.
///
/// Every field maps to a CAP/ECAP/VER field ([`VtdConfig::cap`], [`VtdConfig::ecap`]);
/// [`VtdConfig::legacy`] and [`VtdConfig::scalable`] give sensible starting points, and
/// [`VtdConfig::from_registers`] decodes the raw VER/CAP/ECAP values of a real unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// Physical base of the register window.
    pub mmio_base: PhysAddr,
    /// VER major version (register-based invalidation exists only below 6).
    pub version_major: u8,
    /// VER minor version.
    pub version_minor: u8,
    /// CAP.ND: `2^(4 + 2 ND)` domain IDs (0–6).
    pub nd: u8,
    /// CAP.SAGAW bitmap: bit 1 = 3-level (39-bit), bit 2 = 4-level, bit 3 = 5-level.
    pub sagaw: u8,
    /// Maximum guest address width in bits (CAP.MGAW + 1); also the host address width.
    pub mgaw: u8,
    /// CAP.SLLPS bitmap: bit 0 = 2 MiB, bit 1 = 1 GiB second-stage pages.
    pub sllps: u8,
    /// Number of fault recording registers (CAP.NFR + 1), 1–256.
    pub fault_records: u16,
    /// CAP.FRO: offset of the fault recording registers in 16-byte units.
    pub fro: u16,
    /// ECAP.IRO: offset of the IVA/IOTLB registers in 16-byte units.
    pub iro: u16,
    /// CAP.CM: caching mode (not-present entries may be cached).
    pub caching_mode: bool,
    /// CAP.RWBF: write-buffer flushing required.
    pub rwbf: bool,
    /// CAP.PSI: page-selective invalidation.
    pub psi: bool,
    /// CAP.MAMV: maximum address-mask value for page-selective invalidation.
    pub mamv: u8,
    /// CAP.FL1GP: first-stage 1 GiB pages.
    pub fl1gp: bool,
    /// CAP.FL5LP: first-stage 5-level paging.
    pub fl5lp: bool,
    /// CAP.ESRTPS: SRTP also invalidates every DMA-remapping cache.
    pub esrtps: bool,
    /// CAP.DRD: read draining (IOTLB invalidations may ask to drain reads; the model
    /// has no requests in flight, so a drain completes at once).
    pub drd: bool,
    /// CAP.DWD: write draining (as [`VtdConfig::drd`], for writes).
    pub dwd: bool,
    /// CAP.ZLR: zero-length reads (the model's agents never issue them).
    pub zlr: bool,
    /// CAP.PLMR: protected low-memory region registers (PMEN is latched only).
    pub plmr: bool,
    /// CAP.PHMR: protected high-memory region registers (PMEN is latched only).
    pub phmr: bool,
    /// ECAP.C: page-walk coherency.
    pub coherent: bool,
    /// ECAP.QI: queued invalidation.
    pub queued_invalidation: bool,
    /// ECAP.DT: device-TLB support.
    pub device_tlb: bool,
    /// ECAP.IR: interrupt remapping.
    pub interrupt_remapping: bool,
    /// ECAP.EIM: extended interrupt mode.
    pub eim: bool,
    /// ECAP.PT: pass-through.
    pub pass_through: bool,
    /// ECAP.SC: snoop control.
    pub snoop_control: bool,
    /// ECAP.MHMV: maximum handle-mask value of interrupt-entry-cache invalidations
    /// (0–15; interrupt remapping itself is not modelled).
    pub mhmv: u8,
    /// ECAP.SMTS: scalable-mode translation.
    pub scalable_mode: bool,
    /// ECAP.FLTS: first-stage translation (scalable mode).
    pub first_stage: bool,
    /// ECAP.SLTS: second-stage translation (scalable mode).
    pub second_stage: bool,
    /// ECAP.PASID: requests with PASID.
    pub pasid: bool,
    /// ECAP.PSS: PASID size minus one (PASIDs have PSS + 1 bits).
    pub pss: u8,
    /// ECAP.SRS: supervisor requests.
    pub supervisor_requests: bool,
    /// ECAP.SLADS: second-stage accessed/dirty.
    pub sl_ad: bool,
    /// ECAP.RPS: RID_PASID field supported.
    pub rps: bool,
    /// ECAP.RPRIVS: RID_PRIV field supported.
    pub rprivs: bool,
    /// ECAP.ADMS: abort-DMA mode.
    pub adms: bool,
}

impl VtdConfig {
    /// A VT-d 1.0-style legacy-mode unit: 4-level (48-bit) tables, 2 MiB and 1 GiB pages,
    /// 8 fault records at 0x220, IOTLB registers at 0xF0, 256 domains, register-based
    /// and queued invalidation, pass-through.
    pub fn legacy(mmio_base: PhysAddr) -> Self {
        Self {
            mmio_base,
            version_major: 1,
            version_minor: 0,
            nd: 2,
            sagaw: 0b0100,
            mgaw: 48,
            sllps: 0b11,
            fault_records: 8,
            fro: 0x22,
            iro: 0xF,
            caching_mode: false,
            rwbf: false,
            psi: true,
            mamv: 18,
            fl1gp: false,
            fl5lp: false,
            esrtps: false,
            drd: false,
            dwd: false,
            zlr: false,
            plmr: false,
            phmr: false,
            coherent: true,
            queued_invalidation: true,
            device_tlb: false,
            interrupt_remapping: false,
            eim: false,
            pass_through: true,
            snoop_control: false,
            mhmv: 0,
            scalable_mode: false,
            first_stage: false,
            second_stage: false,
            pasid: false,
            pss: 0,
            supervisor_requests: false,
            sl_ad: false,
            rps: false,
            rprivs: false,
            adms: false,
        }
    }

    /// A VT-d 4.0 unit with scalable mode: the legacy settings plus SMTS, first-stage
    /// (4/5-level, 1 GiB pages), second-stage, PASID (20 bits), supervisor requests,
    /// RID_PASID and RID_PRIV, 3/4/5-level second-stage tables, 57-bit MGAW.
    pub fn scalable(mmio_base: PhysAddr) -> Self {
        Self {
            version_major: 4,
            sagaw: 0b1110,
            mgaw: 57,
            fl1gp: true,
            fl5lp: true,
            scalable_mode: true,
            first_stage: true,
            second_stage: true,
            pasid: true,
            pss: 19,
            supervisor_requests: true,
            sl_ad: true,
            rps: true,
            rprivs: true,
            ..Self::legacy(mmio_base)
        }
    }

    /// The VER register value.
    pub fn ver(&self) -> u32 {
        ((self.version_major as u32 & 0xf) << 4) | (self.version_minor as u32 & 0xf)
    }

    /// The CAP register value.
    pub fn cap(&self) -> u64 {
        use regs::field_value as f;
        f(CAP::ND, self.nd as u64)
            | f(CAP::RWBF, self.rwbf as u64)
            | f(CAP::CM, self.caching_mode as u64)
            | f(CAP::SAGAW, self.sagaw as u64)
            | f(CAP::MGAW, (self.mgaw as u64).wrapping_sub(1))
            | f(CAP::FRO, self.fro as u64)
            | f(CAP::SLLPS, self.sllps as u64)
            | f(CAP::PSI, self.psi as u64)
            | f(CAP::NFR, (self.fault_records as u64).wrapping_sub(1))
            | f(CAP::MAMV, self.mamv as u64)
            | f(CAP::FL1GP, self.fl1gp as u64)
            | f(CAP::FL5LP, self.fl5lp as u64)
            | f(CAP::ESRTPS, self.esrtps as u64)
            | f(CAP::DRD, self.drd as u64)
            | f(CAP::DWD, self.dwd as u64)
            | f(CAP::ZLR, self.zlr as u64)
            | f(CAP::PLMR, self.plmr as u64)
            | f(CAP::PHMR, self.phmr as u64)
    }

    /// The ECAP register value.
    pub fn ecap(&self) -> u64 {
        use regs::field_value as f;
        f(ECAP::C, self.coherent as u64)
            | f(ECAP::QI, self.queued_invalidation as u64)
            | f(ECAP::DT, self.device_tlb as u64)
            | f(ECAP::IR, self.interrupt_remapping as u64)
            | f(ECAP::EIM, self.eim as u64)
            | f(ECAP::PT, self.pass_through as u64)
            | f(ECAP::SC, self.snoop_control as u64)
            | f(ECAP::IRO, self.iro as u64)
            | f(ECAP::MHMV, self.mhmv as u64)
            | f(ECAP::SRS, self.supervisor_requests as u64)
            | f(ECAP::PSS, self.pss as u64)
            | f(ECAP::PASID, self.pasid as u64)
            | f(ECAP::SMTS, self.scalable_mode as u64)
            | f(ECAP::SLADS, self.sl_ad as u64)
            | f(ECAP::SLTS, self.second_stage as u64)
            | f(ECAP::FLTS, self.first_stage as u64)
            | f(ECAP::RPS, self.rps as u64)
            | f(ECAP::ADMS, self.adms as u64)
            | f(ECAP::RPRIVS, self.rprivs as u64)
    }

    /// Checks that the capabilities describe a unit this model can be.
    pub fn validate(&self) -> Result<(), VtdConfigError> {
        let invalid = |field, value, why| Err(VtdConfigError::Invalid { field, value, why });
        if self.fault_records == 0 || self.fault_records > 256 {
            return invalid(
                "fault_records",
                self.fault_records as u64,
                "must be 1..=256",
            );
        }
        if self.nd > 6 {
            return invalid("nd", self.nd as u64, "CAP.ND value 7 is reserved");
        }
        if self.pss > 19 {
            return invalid("pss", self.pss as u64, "PASIDs have at most 20 bits");
        }
        if self.sllps > 3 || self.sagaw & !0b1110 != 0 {
            return invalid(
                "sllps/sagaw",
                (self.sllps as u64) << 8 | self.sagaw as u64,
                "only 2M/1G pages and 3/4/5-level tables are defined",
            );
        }
        if self.mhmv > 15 {
            return invalid("mhmv", self.mhmv as u64, "ECAP.MHMV is a 4-bit field");
        }
        if self.fro > 0x3ff || self.iro > 0x3ff {
            return invalid(
                "fro/iro",
                (self.fro as u64) << 16 | self.iro as u64,
                "register offsets are 10-bit fields",
            );
        }
        check_registers(self.ver(), self.cap(), self.ecap())
    }

    /// Decodes the raw VER, CAP and ECAP values of a unit (for instance those a real
    /// machine reports, as in Linux's `DMAR: dmar0: reg_base_addr … ver … cap … ecap …`
    /// line) into a configuration whose [`VtdConfig::ver`], [`VtdConfig::cap`] and
    /// [`VtdConfig::ecap`] give back exactly these values.
    ///
    /// Refused with a typed error naming the field: reserved bits, reserved encodings
    /// (CAP.ND 7, SAGAW without a 3/4/5-level table, PSS above 19), fault-recording or
    /// IOTLB registers overlapping the register file or each other, capabilities the
    /// model does not implement (advanced fault logging, posted interrupts, nested
    /// translation, page requests, memory types, …).
    pub fn from_registers(
        mmio_base: PhysAddr,
        ver: u32,
        cap: u64,
        ecap: u64,
    ) -> Result<Self, VtdConfigError> {
        check_registers(ver, cap, ecap)?;
        let config = Self {
            mmio_base,
            version_major: regs::VER::MAX.read(ver) as u8,
            version_minor: regs::VER::MIN.read(ver) as u8,
            nd: CAP::ND.read(cap) as u8,
            sagaw: CAP::SAGAW.read(cap) as u8,
            mgaw: (CAP::MGAW.read(cap) + 1) as u8,
            sllps: CAP::SLLPS.read(cap) as u8,
            fault_records: regs::fault_recording_count(cap) as u16,
            fro: CAP::FRO.read(cap) as u16,
            iro: ECAP::IRO.read(ecap) as u16,
            caching_mode: CAP::CM.is_set(cap),
            rwbf: CAP::RWBF.is_set(cap),
            psi: CAP::PSI.is_set(cap),
            mamv: CAP::MAMV.read(cap) as u8,
            fl1gp: CAP::FL1GP.is_set(cap),
            fl5lp: CAP::FL5LP.is_set(cap),
            esrtps: CAP::ESRTPS.is_set(cap),
            drd: CAP::DRD.is_set(cap),
            dwd: CAP::DWD.is_set(cap),
            zlr: CAP::ZLR.is_set(cap),
            plmr: CAP::PLMR.is_set(cap),
            phmr: CAP::PHMR.is_set(cap),
            coherent: ECAP::C.is_set(ecap),
            queued_invalidation: ECAP::QI.is_set(ecap),
            device_tlb: ECAP::DT.is_set(ecap),
            interrupt_remapping: ECAP::IR.is_set(ecap),
            eim: ECAP::EIM.is_set(ecap),
            pass_through: ECAP::PT.is_set(ecap),
            snoop_control: ECAP::SC.is_set(ecap),
            mhmv: ECAP::MHMV.read(ecap) as u8,
            scalable_mode: ECAP::SMTS.is_set(ecap),
            first_stage: ECAP::FLTS.is_set(ecap),
            second_stage: ECAP::SLTS.is_set(ecap),
            pasid: ECAP::PASID.is_set(ecap),
            pss: ECAP::PSS.read(ecap) as u8,
            supervisor_requests: ECAP::SRS.is_set(ecap),
            sl_ad: ECAP::SLADS.is_set(ecap),
            rps: ECAP::RPS.is_set(ecap),
            rprivs: ECAP::RPRIVS.is_set(ecap),
            adms: ECAP::ADMS.is_set(ecap),
        };
        config.validate()?;
        // Every bit check_registers lets through is a field of the configuration; a
        // difference here would be a bit this decoder forgot.
        for (register, raw, rebuilt) in [
            ("VER", ver as u64, config.ver() as u64),
            ("CAP", cap, config.cap()),
            ("ECAP", ecap, config.ecap()),
        ] {
            if raw != rebuilt {
                return Err(VtdConfigError::Unsupported {
                    field: register,
                    value: raw ^ rebuilt,
                    why: "bits the configuration cannot express",
                });
            }
        }
        Ok(config)
    }
}

/// A configuration or register set the model cannot represent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VtdConfigError {
    /// A field has a value outside what the model supports.
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        why: &'static str,
    },
    /// Reserved bits of a capability register are set.
    Reserved {
        /// The register (`VER`, `CAP` or `ECAP`).
        register: &'static str,
        /// The reserved bits that are set.
        bits: u64,
    },
    /// A capability the model does not implement is reported.
    Unsupported {
        /// The field, as `REGISTER.FIELD`.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What the model lacks.
        why: &'static str,
    },
    /// Two register ranges of the unit overlap.
    Overlap {
        /// First range `(start, end)`.
        a: (u64, u64),
        /// Second range.
        b: (u64, u64),
    },
}

impl fmt::Display for VtdConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VtdConfigError::Invalid { field, value, why } => {
                write!(f, "VT-d unit {field} = {value:#x}: {why}")
            }
            VtdConfigError::Reserved { register, bits } => {
                write!(f, "VT-d {register} has reserved bits {bits:#x} set")
            }
            VtdConfigError::Unsupported { field, value, why } => {
                write!(f, "VT-d unit {field} = {value:#x}: {why}")
            }
            VtdConfigError::Overlap { a, b } => write!(
                f,
                "VT-d register ranges {:#x}-{:#x} and {:#x}-{:#x} overlap",
                a.0, a.1, b.0, b.1
            ),
        }
    }
}

impl std::error::Error for VtdConfigError {}

/// End of the fixed registers the model implements (PEUADDR + 4); the MTRR registers
/// at 0x100 exist only with ECAP.MTS, which the model does not report.
const FIXED_REGS_END: u64 = 0xF0;

/// VER bits 31:8 are reserved (Linux DMAR_VER_MAJOR/MINOR use 7:0; VirtualBox
/// iommu-intel.h VTD_BF_VER_REG_RSVD_31_8).
const VER_RESERVED: u64 = 0xffff_ff00;
/// CAP bits reserved in VirtualBox's iommu-intel.h layout (RSVD_15_13, RSVD_38,
/// RSVD_58_57); Linux defines none of them either.
const CAP_RESERVED: u64 = (0b111 << 13) | (1 << 38) | (0b11 << 57);
/// ECAP bits reserved in VirtualBox's iommu-intel.h layout (RSVD_5, RSVD_19_18, RSVD_24
/// and RSVD_28 — deprecated ECS/PASID of VT-d 2.x —, RSVD_27, RSVD_32, RSVD_63_54);
/// Linux defines none of them in its current iommu.h.
const ECAP_RESERVED: u64 =
    (1 << 5) | (0b11 << 18) | (1 << 24) | (1 << 27) | (1 << 28) | (1 << 32) | (0x3ff << 54);

/// Capabilities the model does not implement: `(register is ECAP, mask, field, why)`.
/// Bit positions: Linux iommu.h cap_*/ecap_* macros and VirtualBox iommu-intel.h. Where
/// they disagree the bit is refused under both names (VirtualBox: reserved).
const UNSUPPORTED: &[(bool, u64, &str, &str)] = &[
    (
        false,
        1 << 3,
        "CAP.AFL",
        "advanced fault logging is not modelled",
    ),
    (
        false,
        1 << 23,
        "CAP.ISOCH",
        "isochrony (Linux cap_isoch; reserved in VirtualBox's layout) is not modelled",
    ),
    (
        false,
        1 << 59,
        "CAP.PI",
        "posted interrupts are not modelled",
    ),
    (
        false,
        1 << 61,
        "CAP.ECMDS",
        "the enhanced command interface (Linux; reserved in VirtualBox's layout) is not modelled",
    ),
    (
        false,
        1 << 62,
        "CAP.ESIRTPS",
        "interrupt remapping caches are not modelled",
    ),
    (
        true,
        1 << 25,
        "ECAP.MTS",
        "memory-type support (MTRR registers) is not modelled",
    ),
    (
        true,
        1 << 26,
        "ECAP.NEST",
        "nested translation is not modelled",
    ),
    (true, 1 << 29, "ECAP.PRS", "page requests are not modelled"),
    (
        true,
        1 << 30,
        "ECAP.ERS",
        "execute requests are not modelled",
    ),
    (
        true,
        1 << 33,
        "ECAP.NWFS",
        "the no-write flag is not modelled",
    ),
    (
        true,
        1 << 34,
        "ECAP.EAFS",
        "the extended-accessed flag is not modelled",
    ),
    (
        true,
        1 << 41,
        "ECAP.DIT",
        "device-TLB invalidation throttling is not modelled",
    ),
    (
        true,
        1 << 42,
        "ECAP.PDS",
        "page-request draining is not modelled",
    ),
    (
        true,
        1 << 44,
        "ECAP.VCS",
        "the virtual command interface is not modelled",
    ),
    (
        true,
        1 << 48,
        "ECAP.SMPWCS",
        "scalable-mode page-walk snooping is not modelled",
    ),
    (
        true,
        1 << 50,
        "ECAP.TDXCS",
        "TDX connect (Linux ecap_tdxc; reserved in VirtualBox's layout) is not modelled",
    ),
    (
        true,
        1 << 51,
        "ECAP.PMS",
        "performance monitoring (Linux ecap_pms; reserved in VirtualBox's layout) is not modelled",
    ),
];

fn check_registers(ver: u32, cap: u64, ecap: u64) -> Result<(), VtdConfigError> {
    for (register, value, reserved) in [
        ("VER", ver as u64, VER_RESERVED),
        ("CAP", cap, CAP_RESERVED),
        ("ECAP", ecap, ECAP_RESERVED),
    ] {
        if value & reserved != 0 {
            return Err(VtdConfigError::Reserved {
                register,
                bits: value & reserved,
            });
        }
    }
    for &(in_ecap, mask, field, why) in UNSUPPORTED {
        let value = if in_ecap { ecap } else { cap };
        if value & mask != 0 {
            return Err(VtdConfigError::Unsupported {
                field,
                value: 1,
                why,
            });
        }
    }
    let mgaw = CAP::MGAW.read(cap) + 1;
    if !(39..=64).contains(&mgaw) {
        return Err(VtdConfigError::Invalid {
            field: "CAP.MGAW",
            value: mgaw,
            why: "the model needs a guest address width of 39..=64 bits",
        });
    }
    let sagaw = CAP::SAGAW.read(cap);
    if sagaw & 0b1110 == 0 {
        return Err(VtdConfigError::Invalid {
            field: "CAP.SAGAW",
            value: sagaw,
            why: "no 3-, 4- or 5-level second-stage table supported",
        });
    }
    if sagaw & !0b1110 != 0 {
        return Err(VtdConfigError::Unsupported {
            field: "CAP.SAGAW",
            value: sagaw,
            why: "only 3-, 4- and 5-level tables (bits 1-3) are modelled; bit 0 (2-level) and bit 4 are not",
        });
    }
    // Fields with a largest meaningful value: (field, value, largest, unsupported, why).
    let bounded = [
        (
            "CAP.SLLPS",
            CAP::SLLPS.read(cap),
            3,
            true,
            "only 2 MiB and 1 GiB second-stage pages are defined",
        ),
        (
            "ECAP.PSS",
            ECAP::PSS.read(ecap),
            19,
            false,
            "PASIDs have at most 20 bits",
        ),
        ("CAP.ND", CAP::ND.read(cap), 6, false, "ND 7 is reserved"),
    ];
    for (field, value, largest, unsupported, why) in bounded {
        if value > largest {
            return Err(if unsupported {
                VtdConfigError::Unsupported { field, value, why }
            } else {
                VtdConfigError::Invalid { field, value, why }
            });
        }
    }
    let fr = (
        regs::fault_recording_offset(cap, 0),
        regs::fault_recording_offset(cap, regs::fault_recording_count(cap)),
    );
    let (iva, _) = regs::iotlb_offsets(ecap);
    let io = (iva, iva + 16);
    for r in [fr, io] {
        if r.0 < FIXED_REGS_END {
            return Err(VtdConfigError::Overlap {
                a: r,
                b: (0, FIXED_REGS_END),
            });
        }
    }
    if fr.0 < io.1 && io.0 < fr.1 {
        return Err(VtdConfigError::Overlap { a: fr, b: io });
    }
    Ok(())
}

/// Why [`VtdUnit::restore`] refused a saved register set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VtdRestoreError {
    /// A register needed to rebuild the unit is missing.
    Missing {
        /// Register name.
        register: &'static str,
        /// Its offset.
        offset: u64,
    },
    /// A register was saved with the wrong width.
    BadWidth {
        /// Offset.
        offset: u64,
        /// Saved width.
        width: u8,
        /// Expected width.
        expected: u8,
    },
    /// An offset that is not a register of this unit.
    UnknownOffset {
        /// Offset.
        offset: u64,
        /// Width.
        width: u8,
    },
    /// The same register appears twice.
    Duplicate {
        /// Offset.
        offset: u64,
    },
    /// CAP/ECAP/VER describe a unit the model cannot be.
    Config(VtdConfigError),
    /// A register value contradicts the unit's capabilities or the other registers.
    Inconsistent {
        /// Register name.
        register: &'static str,
        /// Its offset.
        offset: u64,
        /// The value.
        value: u64,
        /// What is wrong.
        what: &'static str,
    },
}

impl fmt::Display for VtdRestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VtdRestoreError::Missing { register, offset } => {
                write!(f, "saved VT-d registers lack {register} (offset {offset:#x})")
            }
            VtdRestoreError::BadWidth {
                offset,
                width,
                expected,
            } => write!(
                f,
                "saved VT-d register at offset {offset:#x} has width {width}, expected {expected}"
            ),
            VtdRestoreError::UnknownOffset { offset, width } => write!(
                f,
                "saved VT-d register at offset {offset:#x} (width {width}) is not a register of this unit"
            ),
            VtdRestoreError::Duplicate { offset } => {
                write!(f, "saved VT-d register at offset {offset:#x} appears twice")
            }
            VtdRestoreError::Config(e) => write!(f, "saved VT-d capabilities: {e}"),
            VtdRestoreError::Inconsistent {
                register,
                offset,
                value,
                what,
            } => write!(
                f,
                "saved VT-d {register} (offset {offset:#x}) = {value:#x}: {what}"
            ),
        }
    }
}

impl std::error::Error for VtdRestoreError {}

impl From<VtdConfigError> for VtdRestoreError {
    fn from(e: VtdConfigError) -> Self {
        VtdRestoreError::Config(e)
    }
}

/// Which interrupt a unit sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Fault event (FEDATA/FEADDR/FEUADDR).
    Fault,
    /// Invalidation completion event (IEDATA/IEADDR/IEUADDR).
    InvalidationCompletion,
}

/// An interrupt message the unit sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Which event.
    pub kind: InterruptKind,
    /// Message address (upper << 32 | address).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Counters of the unit's translation work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdStats {
    /// Translations answered from the IOTLB.
    pub iotlb_hits: u64,
    /// Page-table walks done.
    pub walks: u64,
    /// Context entries read from memory.
    pub context_fetches: u64,
    /// PASID entries read from memory.
    pub pasid_fetches: u64,
    /// Invalidation descriptors processed.
    pub descriptors: u64,
}

/// The root table pointer latched by the last SRTP command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LatchedRoot {
    pub addr: u64,
    pub ttm: Ttm,
}

/// The invalidation queue latched when QIE was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Queue {
    pub base: u64,
    pub size: u64,
    pub wide: bool,
}

/// One modelled VT-d remapping unit.
pub struct VtdUnit {
    base: PhysAddr,
    ver: u32,
    cap: u64,
    ecap: u64,
    haw: u32,
    gsts: u32,
    rtaddr: u64,
    root: Option<LatchedRoot>,
    ccmd: u64,
    /// PFO, IQE, ICE, ITE (PPF is derived from the records).
    fsts: u32,
    fri: u32,
    fault_index: usize,
    records: Vec<[u64; 2]>,
    fectl: u32,
    fedata: u32,
    feaddr: u32,
    feuaddr: u32,
    pmen: u32,
    iqh: u64,
    iqt: u64,
    iqa: u64,
    queue: Option<Queue>,
    ics: u32,
    iectl: u32,
    iedata: u32,
    ieaddr: u32,
    ieuaddr: u32,
    iqercd: u64,
    irta: u64,
    iva: u64,
    iotlb_reg: u64,
    ctx_cache: FastMap<u16, ContextCacheEntry>,
    pasid_cache: FastMap<(u16, u32), PasidCacheEntry>,
    iotlb: Iotlb,
    faults: Vec<FaultEvent>,
    diags: Vec<String>,
    dropped_diags: u64,
    interrupts: Vec<Interrupt>,
    stats: VtdStats,
}

impl fmt::Debug for VtdUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtdUnit")
            .field("base", &self.base)
            .field("cap", &format_args!("{:#x}", self.cap))
            .field("ecap", &format_args!("{:#x}", self.ecap))
            .field("gsts", &format_args!("{:#x}", self.gsts))
            .field("root", &self.root)
            .field("iotlb_entries", &self.iotlb.len())
            .field("faults", &self.faults.len())
            .finish_non_exhaustive()
    }
}

impl VtdUnit {
    /// A unit in its reset state (translation off, caches empty).
    pub fn new(config: VtdConfig) -> Result<Self, VtdConfigError> {
        config.validate()?;
        Self::from_capabilities(config.mmio_base, config.ver(), config.cap(), config.ecap())
    }

    /// A unit in its reset state whose VER, CAP and ECAP read back exactly as `ver`,
    /// `cap` and `ecap`, e.g. a real machine's; refused as [`VtdConfig::from_registers`]
    /// refuses.
    pub fn from_registers(
        mmio_base: PhysAddr,
        ver: u32,
        cap: u64,
        ecap: u64,
    ) -> Result<Self, VtdConfigError> {
        Self::new(VtdConfig::from_registers(mmio_base, ver, cap, ecap)?)
    }

    fn from_capabilities(
        base: PhysAddr,
        ver: u32,
        cap: u64,
        ecap: u64,
    ) -> Result<Self, VtdConfigError> {
        check_registers(ver, cap, ecap)?;
        let nfr = regs::fault_recording_count(cap) as usize;
        Ok(Self {
            base,
            ver,
            cap,
            ecap,
            haw: (CAP::MGAW.read(cap) + 1) as u32,
            gsts: 0,
            rtaddr: 0,
            root: None,
            ccmd: 0,
            fsts: 0,
            fri: 0,
            fault_index: 0,
            records: vec![[0; 2]; nfr],
            // FECTL.IM is set at reset.
            fectl: regs::field_mask32(regs::FECTL::IM),
            fedata: 0,
            feaddr: 0,
            feuaddr: 0,
            pmen: 0,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            queue: None,
            ics: 0,
            iectl: regs::field_mask32(regs::IECTL::IM),
            iedata: 0,
            ieaddr: 0,
            ieuaddr: 0,
            iqercd: 0,
            irta: 0,
            iva: 0,
            iotlb_reg: 0,
            ctx_cache: FastMap::default(),
            pasid_cache: FastMap::default(),
            iotlb: Iotlb::default(),
            faults: Vec::new(),
            diags: Vec::new(),
            dropped_diags: 0,
            interrupts: Vec::new(),
            stats: VtdStats::default(),
        })
    }

    /// The CAP register value.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The ECAP register value.
    pub fn ecap(&self) -> u64 {
        self.ecap
    }

    /// Interrupt messages the unit sent, oldest first.
    pub fn interrupts(&self) -> &[Interrupt] {
        &self.interrupts
    }

    /// Translation counters.
    pub fn stats(&self) -> VtdStats {
        self.stats
    }

    /// Number of IOTLB entries currently cached.
    pub fn iotlb_entries(&self) -> usize {
        self.iotlb.len()
    }

    /// Number of context-cache entries currently cached.
    pub fn context_cache_entries(&self) -> usize {
        self.ctx_cache.len()
    }

    /// Number of PASID-cache entries currently cached.
    pub fn pasid_cache_entries(&self) -> usize {
        self.pasid_cache.len()
    }

    /// Number of diagnostics dropped after the first 10 000.
    pub fn dropped_diagnostics(&self) -> u64 {
        self.dropped_diags
    }

    /// Size of the register window: up to the last fault recording register or the
    /// IOTLB pair, rounded up to 4 KiB.
    pub fn window_size(&self) -> u64 {
        let fr_end = regs::fault_recording_offset(self.cap, regs::fault_recording_count(self.cap));
        let (iva, _) = regs::iotlb_offsets(self.ecap);
        let end = fr_end.max(iva + 16).max(FIXED_REGS_END);
        end.div_ceil(4096) * 4096
    }

    pub(crate) fn diag(&mut self, msg: String) {
        if self.diags.len() < MAX_DIAGNOSTICS {
            self.diags.push(format!("unit {}: {msg}", self.base));
        } else {
            self.dropped_diags += 1;
        }
    }

    pub(crate) fn drop_caches(&mut self) {
        self.ctx_cache.clear();
        self.pasid_cache.clear();
        self.iotlb.clear();
    }

    /// Rebuilds a unit from registers saved by [`IommuModel::save_registers`]:
    /// capabilities, translation state (root pointer latched from RTADDR when
    /// GSTS.RTPS is set, the invalidation queue from IQA when GSTS.QIES is set), fault
    /// records and event state. Caches start empty and the fault log is empty.
    pub fn restore(
        mmio_base: PhysAddr,
        regs: &[RegisterValue],
    ) -> Result<VtdUnit, VtdRestoreError> {
        mmio::restore(mmio_base, regs)
    }
}

impl IommuModel for VtdUnit {
    fn kind(&self) -> UnitKind {
        UnitKind::Vtd
    }

    fn mmio_base(&self) -> PhysAddr {
        self.base
    }

    fn mmio_size(&self) -> u64 {
        self.window_size()
    }

    fn mmio_read(&mut self, _mem: &mut dyn PhysMem, offset: u64, width: u8) -> u64 {
        self.read_register(offset, width)
    }

    fn mmio_write(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64) {
        self.write_register(mem, offset, width, value)
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
        &self.diags
    }

    fn save_registers(&self) -> Vec<RegisterValue> {
        self.saved_registers()
    }
}
