//! SMMUv3 register pages 0 and 1: offsets, fields, and the queue pointers.
//!
//! Offsets are from the SMMU's base; page 1 starts at [`PAGE1`] (reference
//! `smmuv3.md` §1: the event queue's PROD and CONS live in page 1 \[F\]\[L\]\[G5\]; QEMU
//! aliases page 1 onto page 0 \[Q\]). Fields use `tock-registers` bitfields: read them
//! with `FIELD.read(value)` or through a [`LocalRegisterCopy`].

pub use fields::*;
pub use tock_registers::LocalRegisterCopy;

/// Offset of register page 1.
pub const PAGE1: u64 = 0x1_0000;

/// ID register 0 (32-bit, RO).
pub const IDR0: u64 = 0x00;
/// ID register 1 (32-bit, RO).
pub const IDR1: u64 = 0x04;
/// ID register 2 (32-bit, RO).
pub const IDR2: u64 = 0x08;
/// ID register 3 (32-bit, RO).
pub const IDR3: u64 = 0x0C;
/// ID register 4 (32-bit, RO, IMPLEMENTATION DEFINED).
pub const IDR4: u64 = 0x10;
/// ID register 5 (32-bit, RO).
pub const IDR5: u64 = 0x14;
/// Implementation identification register (32-bit, RO).
pub const IIDR: u64 = 0x18;
/// Architecture identification register (32-bit, RO).
pub const AIDR: u64 = 0x1C;
/// Control register 0 (32-bit).
pub const CR0: u64 = 0x20;
/// CR0 acknowledge (32-bit, RO).
pub const CR0ACK: u64 = 0x24;
/// Control register 1: table and queue access attributes (32-bit).
pub const CR1: u64 = 0x28;
/// Control register 2 (32-bit).
pub const CR2: u64 = 0x2C;
/// Status register (32-bit, RO).
pub const STATUSR: u64 = 0x40;
/// Global bypass attributes (32-bit).
pub const GBPA: u64 = 0x44;
/// Global ATS bypass attributes (32-bit).
pub const AGBPA: u64 = 0x48;
/// Interrupt control (32-bit).
pub const IRQ_CTRL: u64 = 0x50;
/// Interrupt control acknowledge (32-bit, RO).
pub const IRQ_CTRLACK: u64 = 0x54;
/// Global errors (32-bit, RO).
pub const GERROR: u64 = 0x60;
/// Global errors acknowledge (32-bit).
pub const GERRORN: u64 = 0x64;
/// GERROR MSI address (64-bit).
pub const GERROR_IRQ_CFG0: u64 = 0x68;
/// GERROR MSI data (32-bit).
pub const GERROR_IRQ_CFG1: u64 = 0x70;
/// GERROR MSI attributes (32-bit).
pub const GERROR_IRQ_CFG2: u64 = 0x74;
/// Stream table base (64-bit).
pub const STRTAB_BASE: u64 = 0x80;
/// Stream table configuration (32-bit).
pub const STRTAB_BASE_CFG: u64 = 0x88;
/// Command queue base (64-bit).
pub const CMDQ_BASE: u64 = 0x90;
/// Command queue producer index (32-bit).
pub const CMDQ_PROD: u64 = 0x98;
/// Command queue consumer index (32-bit).
pub const CMDQ_CONS: u64 = 0x9C;
/// Event queue base (64-bit).
pub const EVENTQ_BASE: u64 = 0xA0;
/// Event queue producer index (32-bit, page 1).
pub const EVENTQ_PROD: u64 = PAGE1 + 0xA8;
/// Event queue consumer index (32-bit, page 1).
pub const EVENTQ_CONS: u64 = PAGE1 + 0xAC;
/// Event queue MSI address (64-bit).
pub const EVENTQ_IRQ_CFG0: u64 = 0xB0;
/// Event queue MSI data (32-bit).
pub const EVENTQ_IRQ_CFG1: u64 = 0xB8;
/// Event queue MSI attributes (32-bit).
pub const EVENTQ_IRQ_CFG2: u64 = 0xBC;
/// PRI queue base (64-bit).
pub const PRIQ_BASE: u64 = 0xC0;
/// PRI queue producer index (32-bit, page 1).
pub const PRIQ_PROD: u64 = PAGE1 + 0xC8;
/// PRI queue consumer index (32-bit, page 1).
pub const PRIQ_CONS: u64 = PAGE1 + 0xCC;

// The field helper every architecture shares; it takes 32- and 64-bit fields alike.
pub use iommu_core::entry::{field_mask as field_mask32, field_mask as field_mask64};

/// Register field definitions (tock-registers bitfields), names as in IHI0070 and
/// Linux `arm-smmu-v3.h`; positions from `shared/reference/smmuv3.md` §1–§4, §9 and
/// §16 (sources per row there), IIDR, AIDR and STATUSR from IHI0070 §6.3.
#[allow(missing_docs)]
mod fields {
    use tock_registers::register_bitfields;

    register_bitfields![u32,
        /// ID register 0 (reference §2).
        pub IDR0 [
            S2P OFFSET(0) NUMBITS(1) [],
            S1P OFFSET(1) NUMBITS(1) [],
            TTF OFFSET(2) NUMBITS(2) [AArch32 = 1, AArch64 = 2, Both = 3],
            COHACC OFFSET(4) NUMBITS(1) [],
            BTM OFFSET(5) NUMBITS(1) [],
            HTTU OFFSET(6) NUMBITS(2) [None = 0, Access = 1, AccessDirty = 2],
            HYP OFFSET(9) NUMBITS(1) [],
            ATS OFFSET(10) NUMBITS(1) [],
            ASID16 OFFSET(12) NUMBITS(1) [],
            MSI OFFSET(13) NUMBITS(1) [],
            SEV OFFSET(14) NUMBITS(1) [],
            PRI OFFSET(16) NUMBITS(1) [],
            VMID16 OFFSET(18) NUMBITS(1) [],
            CD2L OFFSET(19) NUMBITS(1) [],
            TTENDIAN OFFSET(21) NUMBITS(2) [Mixed = 0, Little = 2, Big = 3],
            STALL_MODEL OFFSET(24) NUMBITS(2) [StallTerminate = 0, Terminate = 1, Stall = 2],
            TERM_MODEL OFFSET(26) NUMBITS(1) [],
            ST_LEVEL OFFSET(27) NUMBITS(2) [Linear = 0, TwoLevel = 1]
        ],
        /// ID register 1 (reference §2).
        pub IDR1 [
            SIDSIZE OFFSET(0) NUMBITS(6) [],
            SSIDSIZE OFFSET(6) NUMBITS(5) [],
            PRIQS OFFSET(11) NUMBITS(5) [],
            EVENTQS OFFSET(16) NUMBITS(5) [],
            CMDQS OFFSET(21) NUMBITS(5) [],
            ATTR_TYPES_OVR OFFSET(27) NUMBITS(1) [],
            REL OFFSET(28) NUMBITS(1) [],
            QUEUES_PRESET OFFSET(29) NUMBITS(1) [],
            TABLES_PRESET OFFSET(30) NUMBITS(1) []
        ],
        /// ID register 3 (reference §2, §12, §13; QEMU `smmuv3-internal.h`).
        pub IDR3 [
            STT OFFSET(9) NUMBITS(1) [],
            RIL OFFSET(10) NUMBITS(1) [],
            PTWNNC OFFSET(14) NUMBITS(1) []
        ],
        /// ID register 5 (reference §2, §12).
        pub IDR5 [
            OAS OFFSET(0) NUMBITS(3) [],
            GRAN4K OFFSET(4) NUMBITS(1) [],
            GRAN16K OFFSET(5) NUMBITS(1) [],
            GRAN64K OFFSET(6) NUMBITS(1) [],
            DS OFFSET(7) NUMBITS(1) [],
            VAX OFFSET(10) NUMBITS(2) [],
            STALL_MAX OFFSET(16) NUMBITS(16) []
        ],
        /// Implementation identification (IHI0070 §6.3.7).
        pub IIDR [
            IMPLEMENTER OFFSET(0) NUMBITS(12) [],
            REVISION OFFSET(12) NUMBITS(4) [],
            VARIANT OFFSET(16) NUMBITS(4) [],
            PRODUCT_ID OFFSET(20) NUMBITS(12) []
        ],
        /// Architecture identification: {ArchMajorRev, ArchMinorRev} 0x00 SMMUv3.0,
        /// 0x01 v3.1, … (IHI0070 SMMU_AIDR).
        pub AIDR [
            ARCH_MINOR_REV OFFSET(0) NUMBITS(4) [],
            ARCH_MAJOR_REV OFFSET(4) NUMBITS(4) []
        ],
        /// Control register 0; CR0ACK has the same fields (reference §3).
        pub CR0 [
            SMMUEN OFFSET(0) NUMBITS(1) [],
            PRIQEN OFFSET(1) NUMBITS(1) [],
            EVENTQEN OFFSET(2) NUMBITS(1) [],
            CMDQEN OFFSET(3) NUMBITS(1) [],
            ATSCHK OFFSET(4) NUMBITS(1) [],
            VMW OFFSET(6) NUMBITS(3) []
        ],
        /// Control register 1: cacheability 0 NC, 1 WB, 2 WT; shareability 0 NSH,
        /// 2 OSH, 3 ISH (reference §3).
        pub CR1 [
            QUEUE_IC OFFSET(0) NUMBITS(2) [],
            QUEUE_OC OFFSET(2) NUMBITS(2) [],
            QUEUE_SH OFFSET(4) NUMBITS(2) [],
            TABLE_IC OFFSET(6) NUMBITS(2) [],
            TABLE_OC OFFSET(8) NUMBITS(2) [],
            TABLE_SH OFFSET(10) NUMBITS(2) []
        ],
        /// Control register 2 (reference §3).
        pub CR2 [
            E2H OFFSET(0) NUMBITS(1) [],
            RECINVSID OFFSET(1) NUMBITS(1) [],
            PTM OFFSET(2) NUMBITS(1) []
        ],
        /// Status register (IHI0070 §6.3.13).
        pub STATUSR [
            DORMANT OFFSET(0) NUMBITS(1) []
        ],
        /// Global bypass attributes (reference §3).
        pub GBPA [
            MEMATTR OFFSET(0) NUMBITS(4) [],
            MTCFG OFFSET(4) NUMBITS(1) [],
            ALLOCCFG OFFSET(8) NUMBITS(4) [],
            SHCFG OFFSET(12) NUMBITS(2) [NonShareable = 0, Incoming = 1, Outer = 2, Inner = 3],
            PRIVCFG OFFSET(16) NUMBITS(2) [],
            INSTCFG OFFSET(18) NUMBITS(2) [],
            ABORT OFFSET(20) NUMBITS(1) [],
            UPDATE OFFSET(31) NUMBITS(1) []
        ],
        /// Interrupt control; IRQ_CTRLACK has the same fields (reference §1).
        pub IRQ_CTRL [
            GERROR_IRQEN OFFSET(0) NUMBITS(1) [],
            PRIQ_IRQEN OFFSET(1) NUMBITS(1) [],
            EVENTQ_IRQEN OFFSET(2) NUMBITS(1) []
        ],
        /// Global errors; GERRORN has the same fields. An error is active while the
        /// bit differs between GERROR and GERRORN (reference §3, §16).
        pub GERROR [
            CMDQ_ERR OFFSET(0) NUMBITS(1) [],
            EVENTQ_ABT_ERR OFFSET(2) NUMBITS(1) [],
            PRIQ_ABT_ERR OFFSET(3) NUMBITS(1) [],
            MSI_CMDQ_ABT_ERR OFFSET(4) NUMBITS(1) [],
            MSI_EVENTQ_ABT_ERR OFFSET(5) NUMBITS(1) [],
            MSI_PRIQ_ABT_ERR OFFSET(6) NUMBITS(1) [],
            MSI_GERROR_ABT_ERR OFFSET(7) NUMBITS(1) [],
            SFM_ERR OFFSET(8) NUMBITS(1) []
        ],
        /// Stream table configuration (reference §4).
        pub STRTAB_BASE_CFG [
            LOG2SIZE OFFSET(0) NUMBITS(6) [],
            SPLIT OFFSET(6) NUMBITS(5) [],
            FMT OFFSET(16) NUMBITS(2) [Linear = 0, TwoLevel = 1]
        ],
        /// Command queue consumer index: RD (index and wrap), ERR (reference §9, §16).
        pub CMDQ_CONS [
            RD OFFSET(0) NUMBITS(20) [],
            ERR OFFSET(24) NUMBITS(7) [None = 0, Ill = 1, Abt = 2, AtcInvSync = 3]
        ],
        /// Queue producer index (CMDQ_PROD, EVENTQ_PROD): WR (index and wrap); OVFLG
        /// (bit 31) is the event queue's overflow flag (reference §9).
        pub Q_PROD [
            WR OFFSET(0) NUMBITS(20) [],
            OVFLG OFFSET(31) NUMBITS(1) []
        ],
        /// Event queue consumer index: RD (index and wrap); OVACKFLG (bit 31) copies
        /// the overflow flag to acknowledge it (reference §9).
        pub EVENTQ_CONS [
            RD OFFSET(0) NUMBITS(20) [],
            OVACKFLG OFFSET(31) NUMBITS(1) []
        ]
    ];

    register_bitfields![u64,
        /// Stream table base (reference §4).
        pub STRTAB_BASE [
            ADDR OFFSET(6) NUMBITS(46) [],
            RA OFFSET(62) NUMBITS(1) []
        ],
        /// Queue base (CMDQ_BASE, EVENTQ_BASE, PRIQ_BASE): 2^LOG2SIZE entries at ADDR
        /// (reference §9).
        pub Q_BASE [
            LOG2SIZE OFFSET(0) NUMBITS(5) [],
            ADDR OFFSET(5) NUMBITS(47) [],
            RA OFFSET(62) NUMBITS(1) []
        ]
    ];
}

/// A producer or consumer position of a queue of `2^log2size` entries: the index in
/// bits `[log2size-1:0]` and the wrap flag at bit `log2size` (reference §9: empty when
/// index and wrap are equal, full when the index is equal and the wrap differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePos {
    /// log2 of the number of entries (at most 19, so wrap fits in the 20-bit field).
    pub log2size: u32,
    /// Index and wrap flag (bits `log2size:0`).
    pub value: u32,
}

impl QueuePos {
    /// The position held by a PROD or CONS register value (other bits dropped).
    pub fn from_reg(log2size: u32, reg: u32) -> Self {
        let log2size = log2size.min(19);
        Self {
            log2size,
            value: reg & ((2u32 << log2size) - 1),
        }
    }
    /// The entry index.
    pub fn index(self) -> u32 {
        self.value & ((1 << self.log2size) - 1)
    }
    /// The wrap flag.
    pub fn wrap(self) -> bool {
        self.value >> self.log2size & 1 != 0
    }
    /// The next position (the wrap flag toggles when the index wraps).
    pub fn next(self) -> Self {
        Self {
            log2size: self.log2size,
            value: (self.value + 1) & ((2u32 << self.log2size) - 1),
        }
    }
    /// Whether a queue with producer `self` and consumer `cons` is empty.
    pub fn empty(self, cons: QueuePos) -> bool {
        self.value == cons.value
    }
    /// Whether a queue with producer `self` and consumer `cons` is full.
    pub fn full(self, cons: QueuePos) -> bool {
        self.index() == cons.index() && self.wrap() != cons.wrap()
    }
    /// Entries between consumer `cons` and producer `self`.
    pub fn used(self, cons: QueuePos) -> u32 {
        let n = 1u32 << self.log2size;
        if self.wrap() == cons.wrap() {
            self.index() - cons.index()
        } else {
            n - cons.index() + self.index()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets, reference §1 (Linux `ARM_SMMU_IDR0` 0x0 … `ARM_SMMU_EVTQ_PROD`
    /// 0x100a8; QEMU `REG32(...)`).
    #[test]
    fn offsets_known_answers() {
        let want = [
            (IDR0, 0x00),
            (IDR1, 0x04),
            (IDR2, 0x08),
            (IDR3, 0x0c),
            (IDR4, 0x10),
            (IDR5, 0x14),
            (IIDR, 0x18),
            (AIDR, 0x1c),
            (CR0, 0x20),
            (CR0ACK, 0x24),
            (CR1, 0x28),
            (CR2, 0x2c),
            (STATUSR, 0x40),
            (GBPA, 0x44),
            (IRQ_CTRL, 0x50),
            (IRQ_CTRLACK, 0x54),
            (GERROR, 0x60),
            (GERRORN, 0x64),
            (STRTAB_BASE, 0x80),
            (STRTAB_BASE_CFG, 0x88),
            (CMDQ_BASE, 0x90),
            (CMDQ_PROD, 0x98),
            (CMDQ_CONS, 0x9c),
            (EVENTQ_BASE, 0xa0),
            (EVENTQ_PROD, 0x100a8),
            (EVENTQ_CONS, 0x100ac),
            (PRIQ_PROD, 0x100c8),
            (PRIQ_CONS, 0x100cc),
        ];
        for (got, w) in want {
            assert_eq!(got, w);
        }
    }

    /// IDR0 of a stage-1 + stage-2 SMMU (the fields QEMU's `smmuv3_init_regs` sets:
    /// S1P, S2P, TTF = AArch64, COHACC, ASID16, VMID16, TTENDIAN = LE, ST_LEVEL = 1,
    /// TERM_MODEL), positions from reference §2 (Linux `IDR0_*`).
    #[test]
    fn idr0_fields_known_answers() {
        let v = IDR0::S1P::SET
            + IDR0::S2P::SET
            + IDR0::TTF::AArch64
            + IDR0::COHACC::SET
            + IDR0::ASID16::SET
            + IDR0::VMID16::SET
            + IDR0::TTENDIAN::Little
            + IDR0::ST_LEVEL::TwoLevel
            + IDR0::TERM_MODEL::SET;
        // bits 0,1 | 2<<2 | 4 | 12 | 18 | 2<<21 | 26 | 1<<27
        assert_eq!(
            v.value,
            0x3 | 0x8 | 0x10 | 0x1000 | 0x4_0000 | 0x40_0000 | 0x400_0000 | 0x800_0000
        );
        let r = LocalRegisterCopy::<u32, IDR0::Register>::new(v.value | 1 << 19 | 1 << 9);
        assert!(r.is_set(IDR0::CD2L) && r.is_set(IDR0::HYP));
        assert_eq!(IDR0::HTTU.read(2 << 6), 2);
        assert_eq!(IDR0::STALL_MODEL.read(2 << 24), 2);
        assert_eq!(field_mask32(IDR0::PRI), 1 << 16);
        assert_eq!(field_mask32(IDR0::MSI) | field_mask32(IDR0::SEV), 0x6000);
        assert_eq!(field_mask32(IDR0::ATS) | field_mask32(IDR0::BTM), 0x420);
    }

    /// IDR1 (Linux `IDR1_SIDSIZE` GENMASK(5,0), `IDR1_SSIDSIZE` (10,6), `IDR1_PRIQS`
    /// (15,11), `IDR1_EVTQS` (20,16), `IDR1_CMDQS` (25,21), REL 28, QUEUES_PRESET 29,
    /// TABLES_PRESET 30, ATTR_TYPES_OVR 27), IDR3 (QEMU: STT 9, RIL 10, PTWNNC 14),
    /// IDR5 (Linux `IDR5_OAS` (2,0), GRAN4K 4, GRAN16K 5, GRAN64K 6, VAX (11,10),
    /// STALL_MAX (31,16); DS bit 7 per reference §12).
    #[test]
    fn idr1_idr3_idr5_known_answers() {
        let idr1 = 16 | 20 << 6 | 8 << 11 | 19 << 16 | 19 << 21;
        assert_eq!(IDR1::SIDSIZE.read(idr1), 16);
        assert_eq!(IDR1::SSIDSIZE.read(idr1), 20);
        assert_eq!(IDR1::PRIQS.read(idr1), 8);
        assert_eq!(IDR1::EVENTQS.read(idr1), 19);
        assert_eq!(IDR1::CMDQS.read(idr1), 19);
        assert_eq!(
            field_mask32(IDR1::ATTR_TYPES_OVR)
                | field_mask32(IDR1::REL)
                | field_mask32(IDR1::QUEUES_PRESET)
                | field_mask32(IDR1::TABLES_PRESET),
            0x7800_0000
        );
        assert_eq!(
            field_mask32(IDR3::STT) | field_mask32(IDR3::RIL) | field_mask32(IDR3::PTWNNC),
            0x4600
        );
        // QEMU's IDR5: OAS 44 bits (4), GRAN4K, GRAN16K, GRAN64K → 0x74.
        let idr5 =
            (IDR5::OAS.val(4) + IDR5::GRAN4K::SET + IDR5::GRAN16K::SET + IDR5::GRAN64K::SET).value;
        assert_eq!(idr5, 0x74);
        assert_eq!(IDR5::VAX.read(1 << 10), 1);
        assert_eq!(IDR5::STALL_MAX.read(0xabcd_0000), 0xabcd);
        assert_eq!(field_mask32(IDR5::DS), 0x80);
    }

    /// IIDR and AIDR (IHI0070 §6.3.7 and SMMU_AIDR: ProductID 31:20, Variant 19:16,
    /// Revision 15:12, Implementer 11:0; ArchMajorRev 7:4, ArchMinorRev 3:0; QEMU
    /// reports AIDR 0x1, SMMUv3.1), STATUSR.DORMANT bit 0.
    #[test]
    fn iidr_aidr_statusr_known_answers() {
        // Arm (implementer 0x43B) MMU-700 style: product 0x487, variant 1, revision 2.
        let v = 0x487 << 20 | 1 << 16 | 2 << 12 | 0x43b;
        assert_eq!(IIDR::PRODUCT_ID.read(v), 0x487);
        assert_eq!(IIDR::VARIANT.read(v), 1);
        assert_eq!(IIDR::REVISION.read(v), 2);
        assert_eq!(IIDR::IMPLEMENTER.read(v), 0x43b);
        assert_eq!(AIDR::ARCH_MINOR_REV.read(0x1), 1);
        assert_eq!(AIDR::ARCH_MAJOR_REV.read(0x1), 0);
        assert_eq!(field_mask32(STATUSR::DORMANT), 1);
    }

    /// CR0 (Linux `CR0_SMMUEN` 0, `CR0_EVTQEN` 2, `CR0_CMDQEN` 3, PRIQEN 1, ATSCHK 4;
    /// VMW 8:6 \[F\]\[G5\]\[IHI0070\]); CR1 as Linux writes it: queues and tables inner
    /// shareable write-back, `CR1_TABLE_SH` (11,10) … `CR1_QUEUE_IC` (1,0) → 0xd75;
    /// CR2 (Linux `CR2_PTM` 2, `CR2_RECINVSID` 1, `CR2_E2H` 0).
    #[test]
    fn control_registers_known_answers() {
        let cr0 = (CR0::SMMUEN::SET + CR0::EVENTQEN::SET + CR0::CMDQEN::SET).value;
        assert_eq!(cr0, 0xd);
        assert_eq!(field_mask32(CR0::PRIQEN) | field_mask32(CR0::ATSCHK), 0x12);
        assert_eq!(field_mask32(CR0::VMW), 0x1c0);
        let cr1 = (CR1::QUEUE_SH.val(3)
            + CR1::QUEUE_OC.val(1)
            + CR1::QUEUE_IC.val(1)
            + CR1::TABLE_SH.val(3)
            + CR1::TABLE_OC.val(1)
            + CR1::TABLE_IC.val(1))
        .value;
        assert_eq!(cr1, 0xd75);
        assert_eq!((CR2::PTM::SET + CR2::RECINVSID::SET).value, 0x6);
        assert_eq!(field_mask32(CR2::E2H), 1);
    }

    /// GBPA (reference §3: UPDATE 31, ABORT 20; QEMU `SMMU_GBPA_RESET_VAL` 0x1000 is
    /// SHCFG = 1 "use incoming"; TF-A writes ABORT with UPDATE: 0x8010_0000).
    #[test]
    fn gbpa_known_answers() {
        assert_eq!(GBPA::SHCFG::Incoming.value, 0x1000);
        assert_eq!((GBPA::UPDATE::SET + GBPA::ABORT::SET).value, 0x8010_0000);
        assert_eq!(field_mask32(GBPA::INSTCFG), 0xc_0000);
        assert_eq!(field_mask32(GBPA::PRIVCFG), 0x3_0000);
        assert_eq!(field_mask32(GBPA::ALLOCCFG), 0xf00);
        assert_eq!(field_mask32(GBPA::MTCFG), 0x10);
        assert_eq!(field_mask32(GBPA::MEMATTR), 0xf);
    }

    /// IRQ_CTRL and GERROR (Linux `IRQ_CTRL_GERROR_IRQEN` 0, `_PRIQ_IRQEN` 1,
    /// `_EVTQ_IRQEN` 2; `GERROR_CMDQ_ERR` 0, `GERROR_EVTQ_ABT_ERR` 2 … `GERROR_SFM_ERR`
    /// 8; Linux `GERROR_ERR_MASK` 0x1fd).
    #[test]
    fn irq_and_gerror_known_answers() {
        assert_eq!(
            (IRQ_CTRL::GERROR_IRQEN::SET + IRQ_CTRL::PRIQ_IRQEN::SET + IRQ_CTRL::EVENTQ_IRQEN::SET)
                .value,
            0x7
        );
        let all = GERROR::CMDQ_ERR::SET
            + GERROR::EVENTQ_ABT_ERR::SET
            + GERROR::PRIQ_ABT_ERR::SET
            + GERROR::MSI_CMDQ_ABT_ERR::SET
            + GERROR::MSI_EVENTQ_ABT_ERR::SET
            + GERROR::MSI_PRIQ_ABT_ERR::SET
            + GERROR::MSI_GERROR_ABT_ERR::SET
            + GERROR::SFM_ERR::SET;
        assert_eq!(all.value, 0x1fd);
    }

    /// STRTAB_BASE (Linux `STRTAB_BASE_ADDR_MASK` GENMASK_ULL(51,6), `STRTAB_BASE_RA`
    /// bit 62) and STRTAB_BASE_CFG as Linux writes it for a 2-level table of 2^16
    /// StreamIDs with SPLIT 8: FMT 1 << 16 | SPLIT 8 << 6 | LOG2SIZE 16 = 0x10210.
    #[test]
    fn stream_table_registers_known_answers() {
        assert_eq!(field_mask64(STRTAB_BASE::ADDR), 0x000f_ffff_ffff_ffc0);
        assert_eq!(field_mask64(STRTAB_BASE::RA), 1 << 62);
        let cfg = (STRTAB_BASE_CFG::FMT::TwoLevel
            + STRTAB_BASE_CFG::SPLIT.val(8)
            + STRTAB_BASE_CFG::LOG2SIZE.val(16))
        .value;
        assert_eq!(cfg, 0x10210);
    }

    /// Queue registers (Linux `Q_BASE_ADDR_MASK` GENMASK_ULL(51,5), `Q_BASE_LOG2SIZE`
    /// (4,0), `Q_BASE_RWA` bit 62; `CMDQ_CONS_ERR` GENMASK(30,24); `EVTQ_PROD` overflow
    /// `Q_OVERFLOW_FLAG` bit 31): a CMDQ_BASE of 2^8 entries at 0x8000_0000 with RA.
    #[test]
    fn queue_registers_known_answers() {
        let base =
            (Q_BASE::RA::SET + Q_BASE::ADDR.val(0x8000_0000 >> 5) + Q_BASE::LOG2SIZE.val(8)).value;
        assert_eq!(base, 0x4000_0000_8000_0008);
        assert_eq!(field_mask64(Q_BASE::ADDR), 0x000f_ffff_ffff_ffe0);
        assert_eq!(field_mask32(CMDQ_CONS::ERR), 0x7f00_0000);
        assert_eq!(CMDQ_CONS::ERR.read(0x0100_0005), 1);
        assert_eq!(field_mask32(Q_PROD::OVFLG), 0x8000_0000);
        assert_eq!(field_mask32(EVENTQ_CONS::OVACKFLG), 0x8000_0000);
    }

    /// Index and wrap (reference §9; Linux `Q_IDX`, `Q_WRP`, `queue_full`,
    /// `queue_empty`): with 2^3 entries, wrap is bit 3.
    #[test]
    fn queue_positions_wrap_and_full() {
        let p = QueuePos::from_reg(3, 0x8000_000f);
        assert_eq!((p.index(), p.wrap()), (7, true));
        let n = p.next();
        assert_eq!((n.index(), n.wrap(), n.value), (0, false, 0));
        let cons = QueuePos::from_reg(3, 0);
        assert!(n.empty(cons));
        let prod = QueuePos::from_reg(3, 0b1000);
        assert!(prod.full(cons) && !prod.empty(cons));
        assert_eq!(prod.used(cons), 8);
        assert_eq!(
            QueuePos::from_reg(3, 0b1010).used(QueuePos::from_reg(3, 0b0110)),
            4
        );
        assert_eq!(QueuePos::from_reg(3, 5).used(QueuePos::from_reg(3, 2)), 3);
    }
}
