//! The VT-d remapping unit's MMIO registers: offsets, fields and encodings.
//!
//! Offsets are byte offsets from the unit's register base. The fault recording
//! registers and the IOTLB/IVA pair have no fixed offset: they sit at `CAP.FRO * 16`
//! and `ECAP.IRO * 16` (see [`fault_recording_offset`] and [`iotlb_offsets`]).
//!
//! Field definitions use `tock-registers` bitfields; read them with
//! `FIELD.read(value)` or through a [`LocalRegisterCopy`].

use tock_registers::register_bitfields;
pub use tock_registers::LocalRegisterCopy;

/// Version register (32-bit, RO).
pub const VER: u64 = 0x000;
/// Capability register (64-bit, RO).
pub const CAP: u64 = 0x008;
/// Extended capability register (64-bit, RO).
pub const ECAP: u64 = 0x010;
/// Global command register (32-bit, WO).
pub const GCMD: u64 = 0x018;
/// Global status register (32-bit, RO).
pub const GSTS: u64 = 0x01C;
/// Root table address register (64-bit).
pub const RTADDR: u64 = 0x020;
/// Context command register (64-bit), register-based context-cache invalidation.
pub const CCMD: u64 = 0x028;
/// Fault status register (32-bit).
pub const FSTS: u64 = 0x034;
/// Fault event control register (32-bit).
pub const FECTL: u64 = 0x038;
/// Fault event interrupt data register (32-bit).
pub const FEDATA: u64 = 0x03C;
/// Fault event interrupt address register (32-bit).
pub const FEADDR: u64 = 0x040;
/// Fault event interrupt upper address register (32-bit).
pub const FEUADDR: u64 = 0x044;
/// Advanced fault log register (64-bit).
pub const AFLOG: u64 = 0x058;
/// Protected memory enable register (32-bit).
pub const PMEN: u64 = 0x064;
/// Protected low-memory base (32-bit).
pub const PLMBASE: u64 = 0x068;
/// Protected low-memory limit (32-bit).
pub const PLMLIMIT: u64 = 0x06C;
/// Protected high-memory base (64-bit).
pub const PHMBASE: u64 = 0x070;
/// Protected high-memory limit (64-bit).
pub const PHMLIMIT: u64 = 0x078;
/// Invalidation queue head (64-bit, RO).
pub const IQH: u64 = 0x080;
/// Invalidation queue tail (64-bit).
pub const IQT: u64 = 0x088;
/// Invalidation queue address (64-bit).
pub const IQA: u64 = 0x090;
/// Invalidation completion status (32-bit).
pub const ICS: u64 = 0x09C;
/// Invalidation event control (32-bit).
pub const IECTL: u64 = 0x0A0;
/// Invalidation event data (32-bit).
pub const IEDATA: u64 = 0x0A4;
/// Invalidation event address (32-bit).
pub const IEADDR: u64 = 0x0A8;
/// Invalidation event upper address (32-bit).
pub const IEUADDR: u64 = 0x0AC;
/// Invalidation queue error record (64-bit, RO).
pub const IQERCD: u64 = 0x0B0;
/// Interrupt remapping table address (64-bit).
pub const IRTA: u64 = 0x0B8;
/// Page request queue head (64-bit).
pub const PQH: u64 = 0x0C0;
/// Page request queue tail (64-bit).
pub const PQT: u64 = 0x0C8;
/// Page request queue address (64-bit).
pub const PQA: u64 = 0x0D0;
/// Page request status (32-bit).
pub const PRS: u64 = 0x0DC;
/// Page request event control (32-bit).
pub const PECTL: u64 = 0x0E0;
/// Page request event data (32-bit).
pub const PEDATA: u64 = 0x0E4;
/// Page request event address (32-bit).
pub const PEADDR: u64 = 0x0E8;
/// Page request event upper address (32-bit).
pub const PEUADDR: u64 = 0x0EC;
/// MTRR capability (64-bit).
pub const MTRRCAP: u64 = 0x100;
/// MTRR default type (64-bit).
pub const MTRRDEF: u64 = 0x108;

/// Size of one fault recording register (128 bits).
pub const FRCD_SIZE: u64 = 16;
/// Offset of the IVA register within the IOTLB register pair.
pub const IVA_IN_PAIR: u64 = 0;
/// Offset of the IOTLB invalidate register within the IOTLB register pair.
pub const IOTLB_IN_PAIR: u64 = 8;

/// Offset of fault recording register `index` for a unit whose CAP is `cap`.
pub fn fault_recording_offset(cap: u64, index: u64) -> u64 {
    CAP::FRO.read(cap) * 16 + index * FRCD_SIZE
}

/// Number of fault recording registers (`CAP.NFR + 1`).
pub fn fault_recording_count(cap: u64) -> u64 {
    CAP::NFR.read(cap) + 1
}

/// Offsets of the IVA and IOTLB registers `(iva, iotlb)` for a unit whose ECAP is `ecap`.
pub fn iotlb_offsets(ecap: u64) -> (u64, u64) {
    let base = ECAP::IRO.read(ecap) * 16;
    (base + IVA_IN_PAIR, base + IOTLB_IN_PAIR)
}

/// Number of domain IDs the unit supports, `2^(4 + 2 * CAP.ND)`.
pub fn domain_count(cap: u64) -> u32 {
    1u32 << (4 + 2 * (CAP::ND.read(cap) as u32).min(6))
}

// The field helpers every architecture shares; `field_mask`/`field_value` take 32- and
// 64-bit fields alike, the `32` names are kept for the 32-bit registers' callers.
pub use iommu_core::entry::{
    field_mask, field_mask as field_mask32, field_value, field_value as field_value32,
};

/// Register field definitions (tock-registers bitfields).
///
/// Field and value names follow the VT-d specification; see
/// `shared/reference/vtd.md` sections 1–7 and 12 for the sources of every position.
#[allow(missing_docs)]
mod fields {
    use super::register_bitfields;

    register_bitfields![u32,
        /// Version register.
        pub VER [
            MIN OFFSET(0) NUMBITS(4) [],
            MAX OFFSET(4) NUMBITS(4) []
        ],
        /// Global command register: command bit N has status bit N in GSTS.
        pub GCMD [
            CFI OFFSET(23) NUMBITS(1) [],
            SIRTP OFFSET(24) NUMBITS(1) [],
            IRE OFFSET(25) NUMBITS(1) [],
            QIE OFFSET(26) NUMBITS(1) [],
            WBF OFFSET(27) NUMBITS(1) [],
            EAFL OFFSET(28) NUMBITS(1) [],
            SFL OFFSET(29) NUMBITS(1) [],
            SRTP OFFSET(30) NUMBITS(1) [],
            TE OFFSET(31) NUMBITS(1) []
        ],
        /// Global status register.
        pub GSTS [
            CFIS OFFSET(23) NUMBITS(1) [],
            IRTPS OFFSET(24) NUMBITS(1) [],
            IRES OFFSET(25) NUMBITS(1) [],
            QIES OFFSET(26) NUMBITS(1) [],
            WBFS OFFSET(27) NUMBITS(1) [],
            AFLS OFFSET(28) NUMBITS(1) [],
            FLS OFFSET(29) NUMBITS(1) [],
            RTPS OFFSET(30) NUMBITS(1) [],
            TES OFFSET(31) NUMBITS(1) []
        ],
        /// Fault status register.
        pub FSTS [
            PFO OFFSET(0) NUMBITS(1) [],
            PPF OFFSET(1) NUMBITS(1) [],
            AFO OFFSET(2) NUMBITS(1) [],
            APF OFFSET(3) NUMBITS(1) [],
            IQE OFFSET(4) NUMBITS(1) [],
            ICE OFFSET(5) NUMBITS(1) [],
            ITE OFFSET(6) NUMBITS(1) [],
            // Sources disagree on bit 7: Linux defines PRO (page-request overflow), the
            // 2021 specification layout in VirtualBox marks it deprecated/reserved.
            PRO OFFSET(7) NUMBITS(1) [],
            FRI OFFSET(8) NUMBITS(8) []
        ],
        /// Fault event control register.
        pub FECTL [
            IP OFFSET(30) NUMBITS(1) [],
            IM OFFSET(31) NUMBITS(1) []
        ],
        /// Invalidation completion status register.
        pub ICS [
            IWC OFFSET(0) NUMBITS(1) []
        ],
        /// Invalidation event control register.
        pub IECTL [
            IP OFFSET(30) NUMBITS(1) [],
            IM OFFSET(31) NUMBITS(1) []
        ],
        /// Protected memory enable register.
        pub PMEN [
            PRS OFFSET(0) NUMBITS(1) [],
            EPM OFFSET(31) NUMBITS(1) []
        ]
    ];

    register_bitfields![u64,
        /// Capability register.
        pub CAP [
            ND OFFSET(0) NUMBITS(3) [],
            AFL OFFSET(3) NUMBITS(1) [],
            RWBF OFFSET(4) NUMBITS(1) [],
            PLMR OFFSET(5) NUMBITS(1) [],
            PHMR OFFSET(6) NUMBITS(1) [],
            CM OFFSET(7) NUMBITS(1) [],
            SAGAW OFFSET(8) NUMBITS(5) [],
            MGAW OFFSET(16) NUMBITS(6) [],
            ZLR OFFSET(22) NUMBITS(1) [],
            FRO OFFSET(24) NUMBITS(10) [],
            SLLPS OFFSET(34) NUMBITS(4) [],
            PSI OFFSET(39) NUMBITS(1) [],
            NFR OFFSET(40) NUMBITS(8) [],
            MAMV OFFSET(48) NUMBITS(6) [],
            DWD OFFSET(54) NUMBITS(1) [],
            DRD OFFSET(55) NUMBITS(1) [],
            FL1GP OFFSET(56) NUMBITS(1) [],
            PI OFFSET(59) NUMBITS(1) [],
            FL5LP OFFSET(60) NUMBITS(1) [],
            // ECMDS: Linux and Asterinas define bit 61; VirtualBox and EDK2 (older
            // specification revisions) show it reserved.
            ECMDS OFFSET(61) NUMBITS(1) [],
            ESIRTPS OFFSET(62) NUMBITS(1) [],
            ESRTPS OFFSET(63) NUMBITS(1) []
        ],
        /// Extended capability register.
        pub ECAP [
            C OFFSET(0) NUMBITS(1) [],
            QI OFFSET(1) NUMBITS(1) [],
            DT OFFSET(2) NUMBITS(1) [],
            IR OFFSET(3) NUMBITS(1) [],
            EIM OFFSET(4) NUMBITS(1) [],
            PT OFFSET(6) NUMBITS(1) [],
            SC OFFSET(7) NUMBITS(1) [],
            IRO OFFSET(8) NUMBITS(10) [],
            MHMV OFFSET(20) NUMBITS(4) [],
            MTS OFFSET(25) NUMBITS(1) [],
            NEST OFFSET(26) NUMBITS(1) [],
            PRS OFFSET(29) NUMBITS(1) [],
            ERS OFFSET(30) NUMBITS(1) [],
            SRS OFFSET(31) NUMBITS(1) [],
            NWFS OFFSET(33) NUMBITS(1) [],
            EAFS OFFSET(34) NUMBITS(1) [],
            PSS OFFSET(35) NUMBITS(5) [],
            PASID OFFSET(40) NUMBITS(1) [],
            DIT OFFSET(41) NUMBITS(1) [],
            PDS OFFSET(42) NUMBITS(1) [],
            SMTS OFFSET(43) NUMBITS(1) [],
            VCS OFFSET(44) NUMBITS(1) [],
            SLADS OFFSET(45) NUMBITS(1) [],
            SLTS OFFSET(46) NUMBITS(1) [],
            FLTS OFFSET(47) NUMBITS(1) [],
            SMPWCS OFFSET(48) NUMBITS(1) [],
            RPS OFFSET(49) NUMBITS(1) [],
            ADMS OFFSET(52) NUMBITS(1) [],
            RPRIVS OFFSET(53) NUMBITS(1) []
        ],
        /// Root table address register.
        pub RTADDR [
            TTM OFFSET(10) NUMBITS(2) [
                Legacy = 0,
                Scalable = 1,
                Reserved = 2,
                AbortDma = 3
            ],
            RTA OFFSET(12) NUMBITS(52) []
        ],
        /// Context command register.
        pub CCMD [
            DID OFFSET(0) NUMBITS(16) [],
            SID OFFSET(16) NUMBITS(16) [],
            FM OFFSET(32) NUMBITS(2) [],
            CAIG OFFSET(59) NUMBITS(2) [],
            CIRG OFFSET(61) NUMBITS(2) [],
            ICC OFFSET(63) NUMBITS(1) []
        ],
        /// IOTLB invalidate register (at ECAP.IRO * 16 + 8).
        pub IOTLB [
            DID OFFSET(32) NUMBITS(16) [],
            DW OFFSET(48) NUMBITS(1) [],
            DR OFFSET(49) NUMBITS(1) [],
            IAIG OFFSET(57) NUMBITS(2) [],
            IIRG OFFSET(60) NUMBITS(2) [],
            IVT OFFSET(63) NUMBITS(1) []
        ],
        /// Invalidate address register (at ECAP.IRO * 16).
        pub IVA [
            AM OFFSET(0) NUMBITS(6) [],
            IH OFFSET(6) NUMBITS(1) [],
            ADDR OFFSET(12) NUMBITS(52) []
        ],
        /// Invalidation queue head register.
        pub IQH [
            QH OFFSET(4) NUMBITS(15) []
        ],
        /// Invalidation queue tail register.
        pub IQT [
            QT OFFSET(4) NUMBITS(15) []
        ],
        /// Invalidation queue address register.
        pub IQA [
            QS OFFSET(0) NUMBITS(3) [],
            DW OFFSET(11) NUMBITS(1) [],
            IQA OFFSET(12) NUMBITS(52) []
        ],
        /// Invalidation queue error record register.
        pub IQERCD [
            IQEI OFFSET(0) NUMBITS(4) [
                NoInfo = 0,
                InvalidTail = 1,
                FetchError = 2,
                InvalidType = 3,
                ReservedField = 4,
                InvalidWidth = 5,
                TailMisaligned = 6,
                InvalidTtm = 7
            ],
            ITESID OFFSET(32) NUMBITS(16) [],
            ICESID OFFSET(48) NUMBITS(16) []
        ],
        /// Interrupt remapping table address register.
        pub IRTA [
            S OFFSET(0) NUMBITS(4) [],
            EIME OFFSET(11) NUMBITS(1) [],
            IRTA OFFSET(12) NUMBITS(52) []
        ],
        /// Fault recording register, low qword (bits 63:0).
        pub FRCD_LO [
            FI OFFSET(12) NUMBITS(52) []
        ],
        /// Fault recording register, high qword (bits 127:64).
        pub FRCD_HI [
            SID OFFSET(0) NUMBITS(16) [],
            T2 OFFSET(28) NUMBITS(1) [],
            PRIV OFFSET(29) NUMBITS(1) [],
            EXE OFFSET(30) NUMBITS(1) [],
            PP OFFSET(31) NUMBITS(1) [],
            FR OFFSET(32) NUMBITS(8) [],
            PV OFFSET(40) NUMBITS(20) [],
            AT OFFSET(60) NUMBITS(2) [],
            T1 OFFSET(62) NUMBITS(1) [],
            F OFFSET(63) NUMBITS(1) []
        ]
    ];
}

pub use fields::{
    CAP, CCMD, ECAP, FECTL, FRCD_HI, FRCD_LO, FSTS, GCMD, GSTS, ICS, IECTL, IOTLB, IQA, IQERCD,
    IQH, IQT, IRTA, IVA, PMEN, RTADDR, VER,
};

/// GSTS bits of the one-shot commands (SRTP, SFL, WBF, SIRTP): `!0x96FF_FFFF`.
///
/// A driver reads GSTS, clears these bits, sets one command and writes GCMD.
pub const GSTS_ONE_SHOT_MASK: u32 = (1 << 30) | (1 << 29) | (1 << 27) | (1 << 24);

/// GCMD bits of the persistent commands (TE, EAFL, QIE, IRE, CFI).
pub const GCMD_PERSISTENT_MASK: u32 = (1 << 31) | (1 << 28) | (1 << 26) | (1 << 25) | (1 << 23);

/// Translation table mode (RTADDR.TTM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ttm {
    /// 00: legacy root and context entries.
    Legacy,
    /// 01: scalable-mode root and context entries.
    Scalable,
    /// 10: reserved.
    Reserved,
    /// 11: abort-DMA mode (needs ECAP.ADMS).
    AbortDma,
}

impl Ttm {
    /// Decodes the two TTM bits.
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            0 => Ttm::Legacy,
            1 => Ttm::Scalable,
            2 => Ttm::Reserved,
            _ => Ttm::AbortDma,
        }
    }
    /// The two TTM bits.
    pub fn bits(self) -> u64 {
        match self {
            Ttm::Legacy => 0,
            Ttm::Scalable => 1,
            Ttm::Reserved => 2,
            Ttm::AbortDma => 3,
        }
    }
}

/// Context-cache invalidation granularity (CCMD.CIRG/CAIG, context-cache descriptor G).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextGranularity {
    /// 1: every context-cache entry.
    Global,
    /// 2: entries of one domain ID.
    Domain,
    /// 3: entries of one source ID (with function mask) in one domain.
    Device,
}

impl ContextGranularity {
    /// Decodes the 2-bit field; 0 is reserved.
    pub fn from_bits(v: u64) -> Option<Self> {
        match v & 3 {
            1 => Some(Self::Global),
            2 => Some(Self::Domain),
            3 => Some(Self::Device),
            _ => None,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::Global => 1,
            Self::Domain => 2,
            Self::Device => 3,
        }
    }
}

/// IOTLB invalidation granularity (IOTLB.IIRG/IAIG, IOTLB descriptor G).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IotlbGranularity {
    /// 1: every IOTLB entry.
    Global,
    /// 2: entries of one domain ID.
    Domain,
    /// 3: pages `ADDR .. ADDR + 2^AM pages` of one domain ID.
    Page,
}

impl IotlbGranularity {
    /// Decodes the 2-bit field; 0 is reserved.
    pub fn from_bits(v: u64) -> Option<Self> {
        match v & 3 {
            1 => Some(Self::Global),
            2 => Some(Self::Domain),
            3 => Some(Self::Page),
            _ => None,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::Global => 1,
            Self::Domain => 2,
            Self::Page => 3,
        }
    }
}

/// Source-ID bits ignored by a context-cache device-selective invalidation with function
/// mask `fm` (0: none; 1: function bit 2; 2: function bits 2:1; 3: function bits 2:0).
pub fn function_mask_bits(fm: u64) -> u16 {
    match fm & 3 {
        0 => 0,
        1 => 0b100,
        2 => 0b110,
        _ => 0b111,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_linux_and_qemu() {
        // Linux drivers/iommu/intel/iommu.h: DMAR_VER_REG 0x0 ... DMAR_IQER_REG 0xb0,
        // DMAR_IRTA_REG 0xb8; QEMU hw/i386/intel_iommu_internal.h: DMAR_IECTL_REG 0xa0.
        assert_eq!(
            [VER, CAP, ECAP, GCMD, GSTS, RTADDR, CCMD, FSTS],
            [0x0, 0x8, 0x10, 0x18, 0x1c, 0x20, 0x28, 0x34]
        );
        assert_eq!([FECTL, FEDATA, FEADDR, FEUADDR], [0x38, 0x3c, 0x40, 0x44]);
        assert_eq!([AFLOG, PMEN, PLMBASE, PLMLIMIT], [0x58, 0x64, 0x68, 0x6c]);
        assert_eq!([PHMBASE, PHMLIMIT], [0x70, 0x78]);
        assert_eq!(
            [IQH, IQT, IQA, ICS, IQERCD, IRTA],
            [0x80, 0x88, 0x90, 0x9c, 0xb0, 0xb8]
        );
        assert_eq!([IECTL, IEDATA, IEADDR, IEUADDR], [0xa0, 0xa4, 0xa8, 0xac]);
        assert_eq!([PQH, PQT, PQA, PRS], [0xc0, 0xc8, 0xd0, 0xdc]);
        assert_eq!([PECTL, PEDATA, PEADDR, PEUADDR], [0xe0, 0xe4, 0xe8, 0xec]);
        assert_eq!([MTRRCAP, MTRRDEF], [0x100, 0x108]);
    }

    #[test]
    fn cap_fields_match_linux_macros() {
        // Linux iommu.h: cap_fault_reg_offset(c) = ((c >> 24) & 0x3ff) * 16,
        // cap_num_fault_regs(c) = ((c >> 40) & 0xff) + 1, cap_mgaw(c) = ((c >> 16) & 0x3f) + 1,
        // cap_sagaw(c) = (c >> 8) & 0x1f, cap_super_page_val(c) = (c >> 34) & 0xf,
        // cap_max_amask_val(c) = (c >> 48) & 0x3f, cap_pgsel_inv bit 39, cap_caching_mode
        // bit 7, cap_rwbf bit 4, cap_ndoms = 1 << (4 + 2 * (c & 7)), cap_fl1gp_support
        // bit 56, cap_fl5lp_support bit 60, cap_esrtps bit 63.
        // QEMU: DMAR_FRCD_REG_OFFSET 0x220 → VTD_CAP_FRO = 0x220 << 20.
        let cap: u64 = (0x220u64 << 20)
            | (3 << 40)
            | ((48 - 1) << 16)
            | (0x4 << 8)
            | (0b11 << 34)
            | (18 << 48)
            | (1 << 39)
            | (1 << 7)
            | (1 << 4)
            | 6
            | (1 << 56)
            | (1 << 60)
            | (1 << 63);
        assert_eq!(fault_recording_offset(cap, 0), 0x220);
        assert_eq!(fault_recording_offset(cap, 2), 0x240);
        assert_eq!(fault_recording_count(cap), 4);
        assert_eq!(CAP::MGAW.read(cap) + 1, 48);
        assert_eq!(CAP::SAGAW.read(cap), 0x4);
        assert_eq!(CAP::SLLPS.read(cap), 0b11);
        assert_eq!(CAP::MAMV.read(cap), 18);
        assert!(CAP::PSI.is_set(cap));
        assert!(CAP::CM.is_set(cap));
        assert!(CAP::RWBF.is_set(cap));
        assert_eq!(domain_count(cap), 65536);
        assert!(CAP::FL1GP.is_set(cap) && CAP::FL5LP.is_set(cap) && CAP::ESRTPS.is_set(cap));
        assert!(!CAP::AFL.is_set(cap) && !CAP::PI.is_set(cap) && !CAP::ESIRTPS.is_set(cap));
        // QEMU VTD_CAP_SAGAW_48bit = 0x4 << 8, VTD_CAP_SLLPS = (1 << 34) | (1 << 35).
        assert_eq!(field_value(CAP::SAGAW, 0x4), 0x4 << 8);
        assert_eq!(field_value(CAP::SLLPS, 0b11), (1 << 34) | (1 << 35));
        assert_eq!(field_mask(CAP::SLLPS), 0xf << 34);
        // Linux: 0 domains bits → 16 domain IDs.
        assert_eq!(domain_count(0), 16);
    }

    #[test]
    fn ecap_fields_match_linux_macros() {
        // Linux iommu.h: ecap_iotlb_offset(e) = ((e >> 8) & 0x3ff) * 16, ecap_qis bit 1,
        // ecap_dev_iotlb_support bit 2, ecap_ir_support bit 3, ecap_pass_through bit 6,
        // ecap_sc_support bit 7, ecap_max_handle_mask (e >> 20) & 0xf, ecap_srs bit 31,
        // ecap_pss (e >> 35) & 0x1f, ecap_pasid bit 40, ecap_smts bit 43, ecap_slts bit 46,
        // ecap_flts bit 47, ecap_rps bit 49, ecap_nest bit 26, ecap_prs bit 29.
        // QEMU: VTD_ECAP_IRO = DMAR_IOTLB_REG_OFFSET (0xf0) << 4.
        let ecap: u64 = (0xf0 << 4)
            | (1 << 1)
            | (1 << 2)
            | (1 << 6)
            | (15 << 20)
            | (19 << 35)
            | (1 << 40)
            | (1 << 43)
            | (1 << 46)
            | (1 << 47)
            | (1 << 49);
        assert_eq!(iotlb_offsets(ecap), (0xf0, 0xf8));
        assert!(ECAP::QI.is_set(ecap) && ECAP::DT.is_set(ecap) && ECAP::PT.is_set(ecap));
        assert!(!ECAP::IR.is_set(ecap) && !ECAP::SC.is_set(ecap) && !ECAP::C.is_set(ecap));
        assert_eq!(ECAP::MHMV.read(ecap), 15);
        assert_eq!(ECAP::PSS.read(ecap), 19);
        assert!(ECAP::PASID.is_set(ecap) && ECAP::SMTS.is_set(ecap));
        assert!(ECAP::SLTS.is_set(ecap) && ECAP::FLTS.is_set(ecap) && ECAP::RPS.is_set(ecap));
        assert!(!ECAP::NEST.is_set(ecap) && !ECAP::PRS.is_set(ecap));
        // QEMU: VTD_ECAP_SMTS (1 << 43), VTD_ECAP_SLTS (1 << 46), VTD_ECAP_SRS (1 << 31).
        assert_eq!(field_mask(ECAP::SMTS), 1 << 43);
        assert_eq!(field_mask(ECAP::SLTS), 1 << 46);
        assert_eq!(field_mask(ECAP::SRS), 1 << 31);
        // VirtualBox iommu-intel.h / EDK2 Vtd.h: ADMS bit 52, RPRIVS bit 53.
        assert_eq!(field_mask(ECAP::ADMS), 1 << 52);
        assert_eq!(field_mask(ECAP::RPRIVS), 1 << 53);
    }

    #[test]
    fn gcmd_gsts_bits_match_linux() {
        // Linux iommu.h: DMA_GCMD_TE 1<<31, SRTP 1<<30, SFL 1<<29, EAFL 1<<28, WBF 1<<27,
        // QIE 1<<26, IRE 1<<25, SIRTP 1<<24, CFI 1<<23; DMA_GSTS_* at the same positions.
        assert_eq!(field_mask32(GCMD::TE), 1 << 31);
        assert_eq!(field_mask32(GCMD::SRTP), 1 << 30);
        assert_eq!(field_mask32(GCMD::SFL), 1 << 29);
        assert_eq!(field_mask32(GCMD::EAFL), 1 << 28);
        assert_eq!(field_mask32(GCMD::WBF), 1 << 27);
        assert_eq!(field_mask32(GCMD::QIE), 1 << 26);
        assert_eq!(field_mask32(GCMD::IRE), 1 << 25);
        assert_eq!(field_mask32(GCMD::SIRTP), 1 << 24);
        assert_eq!(field_mask32(GCMD::CFI), 1 << 23);
        assert_eq!(field_mask32(GSTS::TES), 1 << 31);
        assert_eq!(field_mask32(GSTS::RTPS), 1 << 30);
        assert_eq!(field_mask32(GSTS::WBFS), 1 << 27);
        assert_eq!(field_mask32(GSTS::QIES), 1 << 26);
        assert_eq!(field_mask32(GSTS::IRTPS), 1 << 24);
        // Bareflank / Windows / Asterinas: GSTS & 0x96FFFFFF drops the one-shot bits.
        assert_eq!(!GSTS_ONE_SHOT_MASK, 0x96FF_FFFF);
        assert_eq!(GCMD_PERSISTENT_MASK & GSTS_ONE_SHOT_MASK, 0);
    }

    #[test]
    fn rtaddr_ccmd_iotlb_match_linux_and_qemu() {
        // Linux iommu.h: DMA_RTADDR_SMT = 1 << 10. VirtualBox: TTM 11 = abort-DMA.
        assert_eq!(RTADDR::TTM::Scalable.value, 1 << 10);
        assert_eq!(
            Ttm::from_bits(RTADDR::TTM.read(0x1234_5000 | (1 << 10))),
            Ttm::Scalable
        );
        assert_eq!(Ttm::from_bits(3), Ttm::AbortDma);
        assert_eq!(RTADDR::RTA.read(0x1234_5c00) << 12, 0x1234_5000);
        // Linux: DMA_CCMD_ICC 1<<63, DMA_CCMD_GLOBAL_INVL 1<<61, DEVICE 3<<61,
        // DMA_CCMD_FM(m) m<<32, DMA_CCMD_SID(s) s<<16; QEMU VTD_CCMD_CAIG_MASK 3<<59.
        let v = (1u64 << 63) | (3 << 61) | (2 << 32) | (0x3b08 << 16) | 0x42;
        assert!(CCMD::ICC.is_set(v));
        assert_eq!(
            ContextGranularity::from_bits(CCMD::CIRG.read(v)),
            Some(ContextGranularity::Device)
        );
        assert_eq!(CCMD::FM.read(v), 2);
        assert_eq!(CCMD::SID.read(v), 0x3b08);
        assert_eq!(CCMD::DID.read(v), 0x42);
        assert_eq!(field_mask(CCMD::CAIG), 3 << 59);
        assert_eq!(ContextGranularity::from_bits(0), None);
        // Linux: DMA_TLB_IVT 1<<63, DMA_TLB_PSI_FLUSH 3<<60, DMA_TLB_IAIG(v) (v>>57)&3,
        // DMA_TLB_READ_DRAIN 1<<49, DMA_TLB_WRITE_DRAIN 1<<48, DMA_TLB_DID(id) id<<32.
        let t = (1u64 << 63) | (3 << 60) | (1 << 49) | (1 << 48) | (7 << 32) | (2 << 57);
        assert!(IOTLB::IVT.is_set(t) && IOTLB::DR.is_set(t) && IOTLB::DW.is_set(t));
        assert_eq!(
            IotlbGranularity::from_bits(IOTLB::IIRG.read(t)),
            Some(IotlbGranularity::Page)
        );
        assert_eq!(IOTLB::IAIG.read(t), 2);
        assert_eq!(IOTLB::DID.read(t), 7);
        // QEMU: VTD_IVA_AM(val) = val & 0x3f; Linux DMA_TLB_IH_NONLEAF 1 << 6.
        let iva = 0x7654_3000u64 | (1 << 6) | 9;
        assert_eq!(IVA::AM.read(iva), 9);
        assert!(IVA::IH.is_set(iva));
        assert_eq!(IVA::ADDR.read(iva) << 12, 0x7654_3000);
        // Function mask: 1 masks the top function bit, 3 all three.
        assert_eq!(function_mask_bits(0), 0);
        assert_eq!(function_mask_bits(1), 0b100);
        assert_eq!(function_mask_bits(3), 0b111);
    }

    #[test]
    fn fault_and_queue_registers_match_sources() {
        // Linux: DMA_FSTS_PFO 1<<0, PPF 1<<1, IQE 1<<4, ICE 1<<5, ITE 1<<6, PRO 1<<7,
        // dma_fsts_fault_record_index(s) = (s >> 8) & 0xff; DMA_FECTL_IM 1<<31;
        // QEMU VTD_FECTL_IP 1<<30, VTD_IECTL_IM 1<<31, VTD_IECTL_IP 1<<30, VTD_ICS_IWC 1.
        assert_eq!(field_mask32(FSTS::PFO), 1);
        assert_eq!(field_mask32(FSTS::PPF), 2);
        assert_eq!(field_mask32(FSTS::IQE), 1 << 4);
        assert_eq!(field_mask32(FSTS::ICE), 1 << 5);
        assert_eq!(field_mask32(FSTS::ITE), 1 << 6);
        assert_eq!(field_mask32(FSTS::PRO), 1 << 7);
        assert_eq!(FSTS::FRI.read(0x0000_0502), 5);
        assert_eq!(field_mask32(FECTL::IM), 1 << 31);
        assert_eq!(field_mask32(FECTL::IP), 1 << 30);
        assert_eq!(field_mask32(IECTL::IM), 1 << 31);
        assert_eq!(field_mask32(IECTL::IP), 1 << 30);
        assert_eq!(field_mask32(ICS::IWC), 1);
        // Linux: DMA_PMEN_EPM 1<<31, DMA_PMEN_PRS 1<<0.
        assert_eq!(field_mask32(PMEN::EPM), 1 << 31);
        assert_eq!(field_mask32(PMEN::PRS), 1);
        // QEMU: VTD_IQA_QS 0x7, VTD_IQA_DW_MASK 0x800, VTD_IQH_QH_MASK 0x7fff0,
        // VTD_IQT_QT(0, v) = (v >> 4) & 0x7fff.
        assert_eq!(field_mask(IQA::QS), 0x7);
        assert_eq!(field_mask(IQA::DW), 0x800);
        assert_eq!(field_mask(IQH::QH), 0x7fff0);
        assert_eq!(IQT::QT.read(0x1230), 0x123);
        // Linux: DMAR_IQER_REG_IQEI GENMASK(3,0), ITESID GENMASK(47,32), ICESID GENMASK(63,48).
        let e = 0xabcd_1234_0000_0003u64;
        assert_eq!(IQERCD::IQEI.read(e), 3);
        assert_eq!(IQERCD::ITESID.read(e), 0x1234);
        assert_eq!(IQERCD::ICESID.read(e), 0xabcd);
        assert_eq!(IQERCD::IQEI::InvalidType.value, 3);
        // Linux irq_remapping: IRTA EIME bit 11, size bits 3:0.
        assert_eq!(field_mask(IRTA::EIME), 1 << 11);
        assert_eq!(field_mask(IRTA::S), 0xf);
        // Linux VER: DMAR_VER_MAJOR(v) = (v & 0xf0) >> 4, DMAR_VER_MINOR(v) = v & 0xf.
        assert_eq!(VER::MAX.read(0x61), 6);
        assert_eq!(VER::MIN.read(0x61), 1);
    }

    #[test]
    fn fault_record_fields_match_linux_and_qemu() {
        // QEMU: VTD_FRCD_F 1<<63, VTD_FRCD_T 1<<62, VTD_FRCD_FR(v) (v & 0xff) << 32 in the
        // high qword; Linux dmar_fault reads the top dword: F bit 31, T bit 30, reason 7:0,
        // PASID value (d >> 8) & 0xfffff; dword 2: SID 15:0, PASID present bit 31.
        let hi = (1u64 << 63) | (1 << 62) | (0x5 << 32) | (0x12345 << 40) | (1 << 31) | 0x0308;
        assert!(FRCD_HI::F.is_set(hi) && FRCD_HI::T1.is_set(hi) && FRCD_HI::PP.is_set(hi));
        assert_eq!(FRCD_HI::FR.read(hi), 5);
        assert_eq!(FRCD_HI::PV.read(hi), 0x12345);
        assert_eq!(FRCD_HI::SID.read(hi), 0x0308);
        let top = (hi >> 32) as u32;
        assert_eq!(top & 0xff, 5);
        assert_eq!((top >> 8) & 0xfffff, 0x12345);
        assert_eq!(top >> 31, 1);
        assert_eq!((top >> 30) & 1, 1);
        // VirtualBox / EDK2: T2 bit 92, PRIV 93, EXE 94, AT 125:124.
        assert_eq!(field_mask(FRCD_HI::T2), 1 << (92 - 64));
        assert_eq!(field_mask(FRCD_HI::PRIV), 1 << (93 - 64));
        assert_eq!(field_mask(FRCD_HI::EXE), 1 << (94 - 64));
        assert_eq!(field_mask(FRCD_HI::AT), 3 << (124 - 64));
        assert_eq!(FRCD_LO::FI.read(0xdead_beef_f123) << 12, 0xdead_beef_f000);
    }
}
