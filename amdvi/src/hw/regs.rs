//! The AMD-Vi unit's MMIO registers: offsets, fields and encodings.
//!
//! Offsets are byte offsets from the unit's register base (the IVHD's IOMMU base
//! address); every register here is 64 bits wide. Positions come from
//! `shared/reference/amdvi.md` §1–§5 (Linux `amd_iommu_types.h`, Xen `iommu-defs.h`,
//! QEMU `amd_iommu.h`, VirtualBox `DevIommuAmd.cpp`, FreeBSD `amd_reg.h`).
//!
//! Field definitions use `tock-registers` bitfields; read them with
//! `FIELD.read(value)` or through a [`LocalRegisterCopy`].

use tock_registers::register_bitfields;
pub use tock_registers::LocalRegisterCopy;

/// Device Table Base register: DevTabBase and Size.
pub const DEV_TAB_BASE: u64 = 0x0000;
/// Command Buffer Base register: ComBase and ComLen.
pub const CMD_BUF_BASE: u64 = 0x0008;
/// Event Log Base register: EventBase and EventLen.
pub const EVT_LOG_BASE: u64 = 0x0010;
/// Control register.
pub const CONTROL: u64 = 0x0018;
/// Exclusion Range Base register.
pub const EXCL_BASE: u64 = 0x0020;
/// Exclusion Range Limit register.
pub const EXCL_LIMIT: u64 = 0x0028;
/// Extended Feature register (read-only).
pub const EFR: u64 = 0x0030;
/// PPR Log Base register (same layout as the Event Log Base).
pub const PPR_LOG_BASE: u64 = 0x0038;
/// Extended Feature 2 register (read-only).
pub const EFR2: u64 = 0x01a0;
/// Command Buffer Head pointer.
pub const CMD_HEAD: u64 = 0x2000;
/// Command Buffer Tail pointer.
pub const CMD_TAIL: u64 = 0x2008;
/// Event Log Head pointer.
pub const EVT_HEAD: u64 = 0x2010;
/// Event Log Tail pointer.
pub const EVT_TAIL: u64 = 0x2018;
/// Status register.
pub const STATUS: u64 = 0x2020;
/// PPR Log Head pointer.
pub const PPR_HEAD: u64 = 0x2030;
/// PPR Log Tail pointer.
pub const PPR_TAIL: u64 = 0x2038;
/// Size of the base MMIO window (Xen, QEMU, VirtualBox); performance-counter banks lie
/// beyond it.
pub const MMIO_WINDOW: u64 = 0x4000;

/// Bytes of one device table entry.
pub const DTE_BYTES: u64 = 32;
/// Bytes of one command-buffer or event-log entry.
pub const RING_ENTRY_BYTES: u64 = 16;
/// Smallest ComLen / EventLen: 2^8 = 256 entries (4 KiB).
pub const RING_LEN_MIN: u8 = 8;
/// Largest ComLen / EventLen: 2^15 = 32768 entries (512 KiB).
pub const RING_LEN_MAX: u8 = 15;

/// Number of device table entries the Device Table Base Size field describes:
/// `(Size + 1) * 4 KiB / 32` (QEMU decodes it so; Xen writes `pages - 1`).
pub fn devtab_entries(size: u64) -> u32 {
    (((size & 0x1ff) + 1) * 4096 / DTE_BYTES) as u32
}

/// The Size field for a device table that holds DeviceID `last` (the table is whole
/// 4 KiB pages of 128 entries).
pub fn devtab_size_for(last: u16) -> u64 {
    (last as u64 * DTE_BYTES) / 4096
}

/// Entries of a command buffer or event log of length field `len`
/// (`2^len`), or `None` for the reserved encodings below 8.
pub fn ring_entries(len: u8) -> Option<u32> {
    (RING_LEN_MIN..=RING_LEN_MAX)
        .contains(&len)
        .then(|| 1u32 << len)
}

// The field helpers every architecture shares.
pub use iommu_core::entry::{field_mask, field_value};

/// Host (v1) page-table levels the unit supports, `4 + EFR.HATS` (Xen
/// `max_paging_mode = 4 + hats`, FreeBSD HATS_4LVL/5LVL/6LVL = 0/1/2); `None` for the
/// reserved value 3.
pub fn host_levels(efr: u64) -> Option<u8> {
    match EFR::HATS.read(efr) {
        h @ 0..=2 => Some(4 + h as u8),
        _ => None,
    }
}

/// Guest (v2) page-table levels the unit supports from EFR.GATS: 0 is 4-level, 1 is
/// 5-level (Linux compares GATS with `GUEST_PGTABLE_5_LEVEL` = 1); `None` otherwise.
pub fn guest_levels(efr: u64) -> Option<u8> {
    match EFR::GATS.read(efr) {
        0 => Some(4),
        1 => Some(5),
        _ => None,
    }
}

/// Control.InvTimeout encodings (Linux `CTRL_INV_TO_*`, FreeBSD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvTimeout {
    /// 0: no timeout.
    None,
    /// 1: 1 ms.
    Ms1,
    /// 2: 10 ms.
    Ms10,
    /// 3: 100 ms.
    Ms100,
    /// 4: 1 s.
    S1,
    /// 5: 10 s.
    S10,
    /// 6: 100 s.
    S100,
    /// 7: reserved.
    Reserved,
}

impl InvTimeout {
    /// Decodes the 3-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 7 {
            0 => Self::None,
            1 => Self::Ms1,
            2 => Self::Ms10,
            3 => Self::Ms100,
            4 => Self::S1,
            5 => Self::S10,
            6 => Self::S100,
            _ => Self::Reserved,
        }
    }
    /// The 3-bit encoding.
    pub fn bits(self) -> u64 {
        self as u64
    }
}

/// Status bits software clears by writing 1 (RW1C): EventOverflow, EventLogInt,
/// ComWaitInt, PprOverflow, PPRInt, GALOverflow, GAInt.
pub const STATUS_RW1C: u64 = 0b110_0110_0111;

/// Register field definitions (tock-registers bitfields).
///
/// Field names follow the AMD specification; `shared/reference/amdvi.md` names the
/// sources of every position.
#[allow(missing_docs)]
mod fields {
    use super::register_bitfields;

    register_bitfields![u64,
        /// Device Table Base register (§2).
        pub DEV_TAB_BASE [
            SIZE OFFSET(0) NUMBITS(9) [],
            BASE OFFSET(12) NUMBITS(40) []
        ],
        /// Command Buffer Base register (§2).
        pub CMD_BUF_BASE [
            BASE OFFSET(12) NUMBITS(40) [],
            LEN OFFSET(56) NUMBITS(4) []
        ],
        /// Event Log Base register (§2).
        pub EVT_LOG_BASE [
            BASE OFFSET(12) NUMBITS(40) [],
            LEN OFFSET(56) NUMBITS(4) []
        ],
        /// Command/Event Log Head and Tail pointers: byte offset of a 16-byte entry.
        pub RING_PTR [
            OFFSET OFFSET(4) NUMBITS(15) []
        ],
        /// Control register (§3).
        pub CONTROL [
            IOMMU_EN OFFSET(0) NUMBITS(1) [],
            HT_TUN_EN OFFSET(1) NUMBITS(1) [],
            EVENT_LOG_EN OFFSET(2) NUMBITS(1) [],
            EVENT_INT_EN OFFSET(3) NUMBITS(1) [],
            COM_WAIT_INT_EN OFFSET(4) NUMBITS(1) [],
            INV_TIMEOUT OFFSET(5) NUMBITS(3) [],
            PASS_PW OFFSET(8) NUMBITS(1) [],
            RES_PASS_PW OFFSET(9) NUMBITS(1) [],
            COHERENT OFFSET(10) NUMBITS(1) [],
            ISOC OFFSET(11) NUMBITS(1) [],
            CMD_BUF_EN OFFSET(12) NUMBITS(1) [],
            PPR_LOG_EN OFFSET(13) NUMBITS(1) [],
            PPR_INT_EN OFFSET(14) NUMBITS(1) [],
            PPR_EN OFFSET(15) NUMBITS(1) [],
            GT_EN OFFSET(16) NUMBITS(1) [],
            GA_EN OFFSET(17) NUMBITS(1) [],
            GAM_EN OFFSET(25) NUMBITS(3) [],
            GA_LOG_EN OFFSET(28) NUMBITS(1) [],
            GA_INT_EN OFFSET(29) NUMBITS(1) [],
            DEV_TBL_SEG_EN OFFSET(34) NUMBITS(3) [],
            XT_EN OFFSET(50) NUMBITS(1) [],
            INT_CAP_XT_EN OFFSET(51) NUMBITS(1) []
        ],
        /// Exclusion Range Base register.
        pub EXCL_BASE [
            EX_EN OFFSET(0) NUMBITS(1) [],
            ALLOW OFFSET(1) NUMBITS(1) [],
            BASE OFFSET(12) NUMBITS(40) []
        ],
        /// Exclusion Range Limit register: the last 4 KiB page of the range.
        pub EXCL_LIMIT [
            LIMIT OFFSET(12) NUMBITS(40) []
        ],
        /// Extended Feature register (§5).
        pub EFR [
            PREF_SUP OFFSET(0) NUMBITS(1) [],
            PPR_SUP OFFSET(1) NUMBITS(1) [],
            XT_SUP OFFSET(2) NUMBITS(1) [],
            NX_SUP OFFSET(3) NUMBITS(1) [],
            GT_SUP OFFSET(4) NUMBITS(1) [],
            IA_SUP OFFSET(6) NUMBITS(1) [],
            GA_SUP OFFSET(7) NUMBITS(1) [],
            HE_SUP OFFSET(8) NUMBITS(1) [],
            PC_SUP OFFSET(9) NUMBITS(1) [],
            HATS OFFSET(10) NUMBITS(2) [],
            GATS OFFSET(12) NUMBITS(2) [],
            GLX_SUP OFFSET(14) NUMBITS(2) [],
            GAM_SUP OFFSET(21) NUMBITS(3) [],
            PAS_MAX OFFSET(32) NUMBITS(5) [],
            DEV_TBL_SEG_SUP OFFSET(38) NUMBITS(2) [],
            GIO_SUP OFFSET(48) NUMBITS(1) [],
            HA_SUP OFFSET(49) NUMBITS(1) [],
            EPH_SUP OFFSET(50) NUMBITS(1) [],
            HD_SUP OFFSET(52) NUMBITS(1) [],
            SNP_SUP OFFSET(63) NUMBITS(1) []
        ],
        /// Status register (§4). Xen's header puts the GA-log bits in another order;
        /// Linux, VirtualBox and FreeBSD agree on this one.
        pub STATUS [
            EVENT_OVERFLOW OFFSET(0) NUMBITS(1) [],
            EVENT_LOG_INT OFFSET(1) NUMBITS(1) [],
            COM_WAIT_INT OFFSET(2) NUMBITS(1) [],
            EVENT_LOG_RUN OFFSET(3) NUMBITS(1) [],
            CMD_BUF_RUN OFFSET(4) NUMBITS(1) [],
            PPR_OVERFLOW OFFSET(5) NUMBITS(1) [],
            PPR_INT OFFSET(6) NUMBITS(1) [],
            PPR_LOG_RUN OFFSET(7) NUMBITS(1) [],
            GA_LOG_RUN OFFSET(8) NUMBITS(1) [],
            GA_OVERFLOW OFFSET(9) NUMBITS(1) [],
            GA_INT OFFSET(10) NUMBITS(1) []
        ]
    ];
}

pub use fields::{
    CMD_BUF_BASE, CONTROL, DEV_TAB_BASE, EFR, EVT_LOG_BASE, EXCL_BASE, EXCL_LIMIT, RING_PTR, STATUS,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_linux_and_qemu() {
        // Linux amd_iommu_types.h MMIO_*_OFFSET; QEMU amd_iommu.h AMDVI_MMIO_*.
        assert_eq!(
            [
                DEV_TAB_BASE,
                CMD_BUF_BASE,
                EVT_LOG_BASE,
                CONTROL,
                EXCL_BASE,
                EXCL_LIMIT,
                EFR
            ],
            [0x0, 0x8, 0x10, 0x18, 0x20, 0x28, 0x30]
        );
        assert_eq!(
            [CMD_HEAD, CMD_TAIL, EVT_HEAD, EVT_TAIL, STATUS, PPR_HEAD, PPR_TAIL],
            [0x2000, 0x2008, 0x2010, 0x2018, 0x2020, 0x2030, 0x2038]
        );
        assert_eq!((PPR_LOG_BASE, EFR2, MMIO_WINDOW), (0x38, 0x1a0, 0x4000));
    }

    #[test]
    fn base_registers_known_answers() {
        // Linux: MMIO_CMD_SIZE_512 = 0x9 << 56, EVT_LEN_MASK = 0x9 << 56 (512 entries,
        // 8 KiB); the base is the buffer's physical address.
        let cmd = 0x1234_5000u64 | (0x9 << 56);
        assert_eq!(CMD_BUF_BASE::BASE.read(cmd) << 12, 0x1234_5000);
        assert_eq!(CMD_BUF_BASE::LEN.read(cmd), 9);
        assert_eq!(ring_entries(9), Some(512));
        assert_eq!(ring_entries(15), Some(32768));
        assert_eq!(ring_entries(7), None);
        assert_eq!(
            field_value(EVT_LOG_BASE::LEN, 9) | field_value(EVT_LOG_BASE::BASE, 0x8_0000 >> 12),
            (0x9 << 56) | 0x8_0000
        );
        assert_eq!(field_mask(CMD_BUF_BASE::BASE), 0x000f_ffff_ffff_f000);
        // Device table: Size = pages - 1 (Xen); 0x1ff = 2 MiB = 65536 entries (QEMU
        // `(size + 1) * 4096 / 32`).
        let dev = 0x4000_0000u64 | 0x1ff;
        assert_eq!(DEV_TAB_BASE::SIZE.read(dev), 0x1ff);
        assert_eq!(DEV_TAB_BASE::BASE.read(dev) << 12, 0x4000_0000);
        assert_eq!(devtab_entries(0x1ff), 65536);
        assert_eq!(devtab_entries(0), 128);
        assert_eq!(devtab_size_for(0xffff), 0x1ff);
        assert_eq!(devtab_size_for(127), 0);
        assert_eq!(devtab_size_for(128), 1);
        // Head/tail: byte offset bits 18:4 (Xen IOMMU_RING_BUFFER_PTR_MASK 0x0007FFF0).
        assert_eq!(field_mask(RING_PTR::OFFSET), 0x7fff0);
        // Exclusion range (Linux MMIO_EXCL_ENABLE_MASK 1, MMIO_EXCL_ALLOW_MASK 2).
        assert_eq!(field_mask(EXCL_BASE::EX_EN), 1);
        assert_eq!(field_mask(EXCL_BASE::ALLOW), 2);
        assert_eq!(field_mask(EXCL_LIMIT::LIMIT), 0x000f_ffff_ffff_f000);
    }

    #[test]
    fn control_bits_known_answers() {
        // Linux CONTROL_* bit numbers.
        let c = |f: tock_registers::fields::Field<u64, CONTROL::Register>| f.shift;
        assert_eq!(
            [
                c(CONTROL::IOMMU_EN),
                c(CONTROL::HT_TUN_EN),
                c(CONTROL::EVENT_LOG_EN),
                c(CONTROL::EVENT_INT_EN),
                c(CONTROL::COM_WAIT_INT_EN),
                c(CONTROL::INV_TIMEOUT),
                c(CONTROL::PASS_PW),
                c(CONTROL::RES_PASS_PW),
                c(CONTROL::COHERENT),
                c(CONTROL::ISOC),
                c(CONTROL::CMD_BUF_EN),
                c(CONTROL::PPR_LOG_EN),
                c(CONTROL::PPR_INT_EN),
                c(CONTROL::PPR_EN),
                c(CONTROL::GT_EN),
                c(CONTROL::GA_EN),
                c(CONTROL::GAM_EN),
                c(CONTROL::GA_LOG_EN),
                c(CONTROL::GA_INT_EN),
                c(CONTROL::XT_EN),
                c(CONTROL::INT_CAP_XT_EN)
            ],
            [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 25, 28, 29, 50, 51]
        );
        // Linux CTRL_INV_TO_MASK = 7 << 5; CTRL_INV_TO_1S = 4, CTRL_INV_TO_100S = 6.
        assert_eq!(field_mask(CONTROL::INV_TIMEOUT), 7 << 5);
        assert_eq!(InvTimeout::from_bits(4), InvTimeout::S1);
        assert_eq!(InvTimeout::S100.bits(), 6);
        assert_eq!(InvTimeout::from_bits(7), InvTimeout::Reserved);
        // Xen/VirtualBox: DevTblSegEn 36:34.
        assert_eq!(field_mask(CONTROL::DEV_TBL_SEG_EN), 7 << 34);
        // What Linux's bring-up ends with: IommuEn | EventLogEn | EventIntEn |
        // CmdBufEn.
        let v = CONTROL::IOMMU_EN::SET
            + CONTROL::EVENT_LOG_EN::SET
            + CONTROL::EVENT_INT_EN::SET
            + CONTROL::CMD_BUF_EN::SET;
        assert_eq!(v.value, 0x100d);
    }

    #[test]
    fn status_and_efr_known_answers() {
        // Linux MMIO_STATUS_*_MASK: overflow BIT(0), int BIT(1), ComWaitInt BIT(2),
        // EventLogRun BIT(3), PPR overflow/int/run 5/6/7, GA run/overflow/int 8/9/10;
        // CmdBufRun bit 4 (Xen, QEMU AMDVI_MMIO_STATUS_CMDBUF_RUN).
        let s = |f: tock_registers::fields::Field<u64, STATUS::Register>| f.mask << f.shift;
        assert_eq!(
            [
                s(STATUS::EVENT_OVERFLOW),
                s(STATUS::EVENT_LOG_INT),
                s(STATUS::COM_WAIT_INT),
                s(STATUS::EVENT_LOG_RUN),
                s(STATUS::CMD_BUF_RUN),
                s(STATUS::PPR_OVERFLOW),
                s(STATUS::PPR_INT),
                s(STATUS::PPR_LOG_RUN),
                s(STATUS::GA_LOG_RUN),
                s(STATUS::GA_OVERFLOW),
                s(STATUS::GA_INT)
            ],
            [1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200, 0x400]
        );
        assert_eq!(STATUS_RW1C, 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x200 | 0x400);
        // Linux FEATURE_*: GT BIT(4), IA BIT(6), GATS 13:12, GLX 15:14, PASMAX 36:32,
        // GIOSUP BIT(48), SNP BIT(63); HATS 11:10 (Xen, QEMU AMDVI_EXT_FEATURE_HATS).
        let efr = (1u64 << 4)
            | (1 << 6)
            | (2 << 10)
            | (1 << 12)
            | (1 << 14)
            | (0xf << 32)
            | (1 << 48)
            | (1 << 63);
        assert!(EFR::GT_SUP.is_set(efr));
        assert!(EFR::IA_SUP.is_set(efr));
        assert!(!EFR::NX_SUP.is_set(efr));
        assert_eq!(EFR::PAS_MAX.read(efr), 0xf);
        assert_eq!(EFR::GLX_SUP.read(efr), 1);
        assert!(EFR::GIO_SUP.is_set(efr));
        assert!(EFR::SNP_SUP.is_set(efr));
        assert_eq!(host_levels(efr), Some(6));
        assert_eq!(host_levels(0), Some(4));
        assert_eq!(host_levels(3 << 10), None);
        assert_eq!(guest_levels(efr), Some(5));
        assert_eq!(guest_levels(0), Some(4));
        assert_eq!(guest_levels(2 << 12), None);
    }
}
