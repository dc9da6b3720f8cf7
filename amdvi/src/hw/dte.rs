//! The device table entry (256 bits, one per DeviceID) and the GCR3 table entry.
//!
//! Positions from `shared/reference/amdvi.md` §6 and §7.2 (Linux `amd_iommu_types.h`
//! `DEV_ENTRY_*`/`DTE_*`, Xen `iommu-defs.h`, QEMU `amd_iommu.h`, VirtualBox, FreeBSD
//! `amd_reg.h`).
//!
//! What V and TV mean (reference §6): V = 0 forwards every address untranslated
//! (a zeroed device table does **not** block DMA); V = 1, TV = 0 aborts a request that
//! needs a walk; V = 1, TV = 1, Mode = 0 passes through with IR/IW applied. A blocking
//! entry is V = 1, TV = 1, IR = IW = 0 ([`DeviceTableEntry::blocking`]).

use super::ADDR_51_12;
use iommu_core::qword_struct;

/// Host (v1) paging mode, DTE bits 11:9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 0: no translation (DVA = SPA, IR/IW still apply).
    Disabled,
    /// 1–6: a v1 table of that many levels.
    Levels(u8),
    /// 7: reserved (an ILLEGAL_DEV_TABLE_ENTRY).
    Reserved,
}

impl Mode {
    /// Decodes the 3-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 7 {
            0 => Self::Disabled,
            7 => Self::Reserved,
            n => Self::Levels(n as u8),
        }
    }
    /// The 3-bit encoding (a `Levels` value outside 1..=6 encodes as 7, reserved).
    pub fn bits(self) -> u64 {
        match self {
            Self::Disabled => 0,
            Self::Levels(n @ 1..=6) => n as u64,
            Self::Levels(_) | Self::Reserved => 7,
        }
    }
}

/// Fixed and arbitrated interrupt control, DTE bits 189:188.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntCtl {
    /// 0: target abort.
    Abort,
    /// 1: forward unmapped.
    Forward,
    /// 2: remap through the interrupt remapping table.
    Remap,
    /// 3: reserved.
    Reserved,
}

impl IntCtl {
    /// Decodes the 2-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            0 => Self::Abort,
            1 => Self::Forward,
            2 => Self::Remap,
            _ => Self::Reserved,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        self as u64
    }
}

/// GCR3 table levels, DTE bits 57:56 (encoding from FreeBSD `amd_reg.h`; unconfirmed
/// by a second source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Glx {
    /// 0: one-level GCR3 table.
    One,
    /// 1: two-level GCR3 table.
    Two,
    /// 2: three-level GCR3 table (newer specifications).
    Three,
    /// 3: reserved.
    Reserved,
}

impl Glx {
    /// Decodes the 2-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            0 => Self::One,
            1 => Self::Two,
            2 => Self::Three,
            _ => Self::Reserved,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        self as u64
    }
}

/// Port I/O control, DTE bits 100:99 (Xen, FreeBSD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoCtl {
    /// 0: abort.
    Abort,
    /// 1: forward.
    Forward,
    /// 2: translate.
    Translate,
    /// 3: reserved.
    Reserved,
}

impl IoCtl {
    /// Decodes the 2-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            0 => Self::Abort,
            1 => Self::Forward,
            2 => Self::Translate,
            _ => Self::Reserved,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        self as u64
    }
}

/// Guest (v2) page-table levels, DTE bits 183:182 (Linux `DTE_GPT_LEVEL_SHIFT` 54 in
/// qword 2, `GUEST_PGTABLE_4_LEVEL` 0 / `GUEST_PGTABLE_5_LEVEL` 1; older Xen and
/// VirtualBox headers mark these bits reserved — they predate the field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestPagingMode {
    /// 0: 4-level.
    Level4,
    /// 1: 5-level.
    Level5,
    /// 2 or 3: reserved.
    Reserved(u8),
}

impl GuestPagingMode {
    /// Decodes the 2-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            0 => Self::Level4,
            1 => Self::Level5,
            n => Self::Reserved(n as u8),
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::Level4 => 0,
            Self::Level5 => 1,
            Self::Reserved(n) => n as u64 & 3,
        }
    }
    /// Number of levels, `None` if reserved.
    pub fn levels(self) -> Option<u8> {
        match self {
            Self::Level4 => Some(4),
            Self::Level5 => Some(5),
            Self::Reserved(_) => None,
        }
    }
}

/// Bit positions of the device table entry.
pub mod bits {
    /// V: entry valid.
    pub const V: u32 = 0;
    /// TV: translation information valid.
    pub const TV: u32 = 1;
    /// HAD (8:7): host access/dirty update.
    pub const HAD: (u32, u32) = (8, 7);
    /// Mode (11:9).
    pub const MODE: (u32, u32) = (11, 9);
    /// Page Table Root Pointer (51:12).
    pub const PT_ROOT: (u32, u32) = (51, 12);
    /// PPR: peripheral page requests enabled.
    pub const PPR: u32 = 52;
    /// GRPR: guest PPR response with PASID.
    pub const GRPR: u32 = 53;
    /// GIoV: requests without PASID use the guest tables (PASID 0).
    pub const GIOV: u32 = 54;
    /// GV: guest translation valid.
    pub const GV: u32 = 55;
    /// GLX (57:56).
    pub const GLX: (u32, u32) = (57, 56);
    /// GCR3 table root pointer bits 14:12 (60:58).
    pub const GCR3_14_12: (u32, u32) = (60, 58);
    /// IR: read permission.
    pub const IR: u32 = 61;
    /// IW: write permission.
    pub const IW: u32 = 62;
    /// DomainID (79:64).
    pub const DOMAIN_ID: (u32, u32) = (79, 64);
    /// GCR3 table root pointer bits 30:15 (95:80).
    pub const GCR3_30_15: (u32, u32) = (95, 80);
    /// I: IOTLB (ATS) enable.
    pub const I: u32 = 96;
    /// SE: suppress I/O page-fault events.
    pub const SE: u32 = 97;
    /// SA: suppress all I/O page-fault events.
    pub const SA: u32 = 98;
    /// IoCtl (100:99).
    pub const IOCTL: (u32, u32) = (100, 99);
    /// Cache: IOTLB cache hint.
    pub const CACHE: u32 = 101;
    /// SD: snoop disable.
    pub const SD: u32 = 102;
    /// EX: allow the exclusion range.
    pub const EX: u32 = 103;
    /// SysMgt (105:104).
    pub const SYSMGT: (u32, u32) = (105, 104);
    /// GCR3 table root pointer bits 51:31 (127:107).
    pub const GCR3_51_31: (u32, u32) = (127, 107);
    /// IV: interrupt map valid.
    pub const IV: u32 = 128;
    /// IntTabLen (132:129): 2^IntTabLen entries.
    pub const INT_TAB_LEN: (u32, u32) = (132, 129);
    /// IG: ignore unmapped interrupts.
    pub const IG: u32 = 133;
    /// Interrupt Table Root Pointer bits 51:6 (179:134).
    pub const INT_TAB_ROOT: (u32, u32) = (179, 134);
    /// GuestPagingMode (183:182).
    pub const GUEST_PAGING_MODE: (u32, u32) = (183, 182);
    /// INITPass.
    pub const INIT_PASS: u32 = 184;
    /// EIntPass.
    pub const EINT_PASS: u32 = 185;
    /// NMIPass.
    pub const NMI_PASS: u32 = 186;
    /// IntCtl (189:188).
    pub const INT_CTL: (u32, u32) = (189, 188);
    /// Lint0Pass.
    pub const LINT0_PASS: u32 = 190;
    /// Lint1Pass.
    pub const LINT1_PASS: u32 = 191;
}

qword_struct!(
    /// Device table entry (256 bits), indexed by DeviceID (PCI requester ID).
    DeviceTableEntry,
    4
);

impl DeviceTableEntry {
    /// A blocking entry for `domain_id`: V = 1, TV = 1, Mode = 0, IR = IW = 0 (every
    /// DMA is refused; V = 0 would pass it through).
    pub fn blocking(domain_id: u16) -> Self {
        let mut e = Self::default();
        e.set_bit(bits::V, true);
        e.set_bit(bits::TV, true);
        e.set_domain_id(domain_id);
        e
    }

    /// A v1 (host) translation entry as Linux writes one: V, TV, Mode = `levels`,
    /// the root table, IR and IW as given, DomainID.
    pub fn host(root: u64, levels: u8, domain_id: u16, ir: bool, iw: bool) -> Self {
        let mut e = Self::blocking(domain_id);
        e.set_mode(Mode::Levels(levels));
        e.set_page_table_root(root);
        e.set_bit(bits::IR, ir);
        e.set_bit(bits::IW, iw);
        e
    }

    /// V: the entry is valid.
    pub fn valid(&self) -> bool {
        self.bit(bits::V)
    }
    /// TV: the translation fields are valid.
    pub fn translation_valid(&self) -> bool {
        self.bit(bits::TV)
    }
    /// Host paging mode.
    pub fn mode(&self) -> Mode {
        Mode::from_bits(self.bits(bits::MODE.0, bits::MODE.1))
    }
    /// Sets the host paging mode.
    pub fn set_mode(&mut self, m: Mode) {
        self.set_bits(bits::MODE.0, bits::MODE.1, m.bits());
    }
    /// Page Table Root Pointer (bits 51:12 as an address).
    pub fn page_table_root(&self) -> u64 {
        self.qwords()[0] & ADDR_51_12
    }
    /// Sets the Page Table Root Pointer (low 12 bits and bits above 51 dropped).
    pub fn set_page_table_root(&mut self, root: u64) {
        self.set_bits(51, 12, root >> 12);
    }
    /// IR: reads allowed.
    pub fn ir(&self) -> bool {
        self.bit(bits::IR)
    }
    /// IW: writes allowed.
    pub fn iw(&self) -> bool {
        self.bit(bits::IW)
    }
    /// DomainID.
    pub fn domain_id(&self) -> u16 {
        self.bits(bits::DOMAIN_ID.0, bits::DOMAIN_ID.1) as u16
    }
    /// Sets the DomainID.
    pub fn set_domain_id(&mut self, d: u16) {
        self.set_bits(bits::DOMAIN_ID.0, bits::DOMAIN_ID.1, d as u64);
    }
    /// GV: guest (v2) translation valid.
    pub fn guest_valid(&self) -> bool {
        self.bit(bits::GV)
    }
    /// GIoV: requests without a PASID translate through the guest tables.
    pub fn giov(&self) -> bool {
        self.bit(bits::GIOV)
    }
    /// GCR3 table levels.
    pub fn glx(&self) -> Glx {
        Glx::from_bits(self.bits(bits::GLX.0, bits::GLX.1))
    }
    /// The GCR3 table root pointer, reassembled from bits 60:58, 95:80 and 127:107.
    pub fn gcr3_root(&self) -> u64 {
        (self.bits(bits::GCR3_14_12.0, bits::GCR3_14_12.1) << 12)
            | (self.bits(bits::GCR3_30_15.0, bits::GCR3_30_15.1) << 15)
            | (self.bits(bits::GCR3_51_31.0, bits::GCR3_51_31.1) << 31)
    }
    /// Sets the GCR3 table root pointer (split over the three fields).
    pub fn set_gcr3_root(&mut self, root: u64) {
        self.set_bits(bits::GCR3_14_12.0, bits::GCR3_14_12.1, root >> 12);
        self.set_bits(bits::GCR3_30_15.0, bits::GCR3_30_15.1, root >> 15);
        self.set_bits(bits::GCR3_51_31.0, bits::GCR3_51_31.1, root >> 31);
    }
    /// Makes the entry a v2 (guest) translation entry: GV, GLX, the GCR3 table root,
    /// GIoV (requests without PASID through PASID 0's tables) and the guest paging
    /// mode. Mode (host tables) is set to 0, as Linux does for v2 domains.
    pub fn set_guest(&mut self, gcr3_root: u64, glx: Glx, giov: bool, gpm: GuestPagingMode) {
        self.set_mode(Mode::Disabled);
        self.set_bit(bits::GV, true);
        self.set_bit(bits::GIOV, giov);
        self.set_bits(bits::GLX.0, bits::GLX.1, glx.bits());
        self.set_gcr3_root(gcr3_root);
        self.set_bits(
            bits::GUEST_PAGING_MODE.0,
            bits::GUEST_PAGING_MODE.1,
            gpm.bits(),
        );
    }
    /// Guest paging mode.
    pub fn guest_paging_mode(&self) -> GuestPagingMode {
        GuestPagingMode::from_bits(self.bits(bits::GUEST_PAGING_MODE.0, bits::GUEST_PAGING_MODE.1))
    }
    /// I: IOTLB (ATS) enabled.
    pub fn iotlb(&self) -> bool {
        self.bit(bits::I)
    }
    /// SE: I/O page-fault events suppressed (once per translation, cached).
    pub fn suppress_events(&self) -> bool {
        self.bit(bits::SE)
    }
    /// SA: all I/O page-fault events suppressed.
    pub fn suppress_all(&self) -> bool {
        self.bit(bits::SA)
    }
    /// Port I/O control.
    pub fn ioctl(&self) -> IoCtl {
        IoCtl::from_bits(self.bits(bits::IOCTL.0, bits::IOCTL.1))
    }
    /// EX: the exclusion range applies to this device.
    pub fn exclusion(&self) -> bool {
        self.bit(bits::EX)
    }
    /// SysMgt (2 bits); value 3 is disputed (Xen "forward DMA", FreeBSD
    /// "translated"), so it is given raw.
    pub fn sysmgt(&self) -> u8 {
        self.bits(bits::SYSMGT.0, bits::SYSMGT.1) as u8
    }
    /// IV: the interrupt remapping fields are valid.
    pub fn int_valid(&self) -> bool {
        self.bit(bits::IV)
    }
    /// IntTabLen: the interrupt remapping table has `2^IntTabLen` entries.
    pub fn int_tab_len(&self) -> u8 {
        self.bits(bits::INT_TAB_LEN.0, bits::INT_TAB_LEN.1) as u8
    }
    /// Interrupt remapping table root (bits 51:6 as an address).
    pub fn int_table_root(&self) -> u64 {
        self.bits(bits::INT_TAB_ROOT.0, bits::INT_TAB_ROOT.1) << 6
    }
    /// Sets IV, IntTabLen, the table root (low 6 bits dropped) and IntCtl.
    pub fn set_int_remap(&mut self, root: u64, len: u8, ctl: IntCtl) {
        self.set_bit(bits::IV, true);
        self.set_bits(bits::INT_TAB_LEN.0, bits::INT_TAB_LEN.1, len as u64);
        self.set_bits(bits::INT_TAB_ROOT.0, bits::INT_TAB_ROOT.1, root >> 6);
        self.set_bits(bits::INT_CTL.0, bits::INT_CTL.1, ctl.bits());
    }
    /// Interrupt control.
    pub fn int_ctl(&self) -> IntCtl {
        IntCtl::from_bits(self.bits(bits::INT_CTL.0, bits::INT_CTL.1))
    }

    /// Bits set that FreeBSD `amd_reg.h` marks reserved in a valid entry, as four
    /// qword masks: 6:2, 63 and 181:180 (only FreeBSD names them; unconfirmed).
    pub fn reserved_bits(&self) -> [u64; 4] {
        let q = self.qwords();
        [q[0] & (0x7c | (1 << 63)), 0, q[2] & (3 << (180 - 128)), 0]
    }
}

qword_struct!(
    /// GCR3 table entry (64 bits), indexed by PASID: V bit 0, guest CR3 (the guest
    /// page-table root) bits 51:12 (Linux `GCR3_VALID` 1 and `cr3 & PAGE_MASK`;
    /// unconfirmed by a second source).
    Gcr3Entry,
    1
);

impl Gcr3Entry {
    /// A valid entry pointing to the guest page-table root `root`.
    pub fn new(root: u64) -> Self {
        Self::from_qwords([(root & ADDR_51_12) | 1])
    }
    /// V: the entry is valid.
    pub fn valid(&self) -> bool {
        self.bit(0)
    }
    /// The guest page-table root.
    pub fn root(&self) -> u64 {
        self.qwords()[0] & ADDR_51_12
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn host_entry_as_linux_writes_it() {
        // Linux set_dte_entry for a v1 domain: data[0] = root | (mode & 7) << 9 |
        // DTE_FLAG_IR (BIT 61) | DTE_FLAG_IW (BIT 62) | DTE_FLAG_TV | DTE_FLAG_V;
        // data[1] = domid (DEV_DOMID_MASK 0xffff).
        let e = DeviceTableEntry::host(0x1234_5000, 3, 5, true, true);
        assert_eq!(e.qwords(), [0x6000_0000_1234_5603, 5, 0, 0]);
        assert_eq!(e.as_bytes().len(), 32);
        assert_eq!(
            (
                e.valid(),
                e.translation_valid(),
                e.mode(),
                e.page_table_root()
            ),
            (true, true, Mode::Levels(3), 0x1234_5000)
        );
        assert_eq!((e.ir(), e.iw(), e.domain_id()), (true, true, 5));
        // QEMU amd_iommu.h: AMDVI_DEV_VALID 1, AMDVI_DEV_TRANSLATION_VALID 2,
        // AMDVI_DEV_MODE_MASK 0xe00, AMDVI_DEV_PT_ROOT_MASK 0xffffffffff000,
        // AMDVI_DEV_PERM_READ 1 << 61, AMDVI_DEV_PERM_WRITE 1 << 62.
        let e = DeviceTableEntry::from_qwords([0xfff_ffff_ffff_fe03 | (3 << 61), 0xffff, 0, 0]);
        assert_eq!(e.page_table_root(), 0xf_ffff_ffff_f000);
        assert_eq!(e.mode(), Mode::Reserved);
        assert_eq!(e.domain_id(), 0xffff);
        assert_eq!(Mode::from_bits(0), Mode::Disabled);
        assert_eq!(Mode::Levels(9).bits(), 7);
    }

    #[test]
    fn blocking_entry_is_valid_with_no_permissions() {
        // Reference §6: V=1, TV=1, IR=IW=0 blocks; V=0 would pass DMA through.
        let e = DeviceTableEntry::blocking(0x42);
        assert_eq!(e.qwords(), [3, 0x42, 0, 0]);
        assert_eq!((e.ir(), e.iw(), e.mode()), (false, false, Mode::Disabled));
    }

    #[test]
    fn flag_bits_known_answers() {
        // Linux DEV_ENTRY_* bit numbers: PPR 0x34, IR 0x3d, IW 0x3e, NO_PAGE_FAULT (SA)
        // 0x62, EX 0x67, SYSMGT1 0x68, SYSMGT2 0x69, IRQ_TBL_EN (IV) 0x80, INIT_PASS
        // 0xb8, EINT_PASS 0xb9, NMI_PASS 0xba, LINT0_PASS 0xbe, LINT1_PASS 0xbf;
        // DTE_FLAG_IOTLB BIT(32) of data[1] = 96; DTE_FLAG_GIOV 54, DTE_FLAG_GV 55,
        // DTE_GLX_SHIFT 56.
        assert_eq!(
            [
                bits::PPR,
                bits::IR,
                bits::IW,
                bits::SA,
                bits::EX,
                bits::SYSMGT.1,
                bits::SYSMGT.0,
                bits::IV,
                bits::INIT_PASS,
                bits::EINT_PASS,
                bits::NMI_PASS,
                bits::LINT0_PASS,
                bits::LINT1_PASS,
                bits::I,
                bits::GIOV,
                bits::GV,
                bits::GLX.1
            ],
            [
                0x34, 0x3d, 0x3e, 0x62, 0x67, 0x68, 0x69, 0x80, 0xb8, 0xb9, 0xba, 0xbe, 0xbf, 96,
                54, 55, 56
            ]
        );
        // Xen/VirtualBox: SE bit 97 (SA 98), IoCtl 100:99.
        let mut e = DeviceTableEntry::default();
        e.set_bit(bits::SE, true);
        e.set_bits(bits::IOCTL.0, bits::IOCTL.1, 2);
        e.set_bit(bits::EX, true);
        assert_eq!(e.qwords()[1], (1 << 33) | (2 << 35) | (1 << 39));
        assert!(e.suppress_events() && !e.suppress_all() && e.exclusion());
        assert_eq!(e.ioctl(), IoCtl::Translate);
        e.set_bits(bits::SYSMGT.0, bits::SYSMGT.1, 3);
        assert_eq!(e.sysmgt(), 3);
    }

    #[test]
    fn interrupt_fields_known_answers() {
        // Linux: DTE_IRQ_REMAP_ENABLE 1 (IV), DTE_INTTABLEN = 9 << 1,
        // DTE_IRQ_PHYS_ADDR_MASK GENMASK(51, 6), DTE_IRQ_REMAP_INTCTL 2 << 60, all in
        // data[2].
        let mut e = DeviceTableEntry::default();
        e.set_int_remap(0x1_2345_6780, 9, IntCtl::Remap);
        assert_eq!(e.qwords()[2], 1 | (9 << 1) | 0x1_2345_6780 | (2 << 60));
        assert_eq!(
            (
                e.int_valid(),
                e.int_tab_len(),
                e.int_table_root(),
                e.int_ctl()
            ),
            (true, 9, 0x1_2345_6780, IntCtl::Remap)
        );
        assert_eq!(IntCtl::from_bits(3), IntCtl::Reserved);
    }

    #[test]
    fn guest_fields_known_answers() {
        // Linux DTE_GCR3_VAL_A/B/C with DTE_GCR3_SHIFT_A 58 (data[0]), SHIFT_B 16 and
        // SHIFT_C 43 (data[1]); GLX at 56; DTE_GPT_LEVEL_SHIFT 54 in data[2].
        let root = 0x000a_bcde_f123_4000u64 & ADDR_51_12;
        let mut e = DeviceTableEntry::blocking(7);
        e.set_guest(root, Glx::Two, true, GuestPagingMode::Level5);
        let a = (root >> 12) & 7;
        let b = (root >> 15) & 0xffff;
        let c = (root >> 31) & 0x1f_ffff;
        assert_eq!(
            e.qwords(),
            [
                3 | (1 << 54) | (1 << 55) | (1 << 56) | (a << 58),
                7 | (b << 16) | (c << 43),
                1 << 54,
                0
            ]
        );
        assert_eq!(e.gcr3_root(), root);
        assert_eq!((e.guest_valid(), e.giov(), e.glx()), (true, true, Glx::Two));
        assert_eq!(e.guest_paging_mode().levels(), Some(5));
        assert_eq!(GuestPagingMode::from_bits(2).levels(), None);
        // Linux __set_gcr3: *pte = (cr3 & PAGE_MASK) | GCR3_VALID.
        let g = Gcr3Entry::new(0x7_6543_2000);
        assert_eq!(g.qwords(), [0x7_6543_2001]);
        assert_eq!((g.valid(), g.root()), (true, 0x7_6543_2000));
    }

    #[test]
    fn reserved_bits_per_freebsd() {
        let mut e = DeviceTableEntry::host(0x1000, 4, 1, true, true);
        assert_eq!(e.reserved_bits(), [0; 4]);
        e.set_bit(3, true);
        e.set_bit(63, true);
        e.set_bit(181, true);
        assert_eq!(e.reserved_bits(), [(1 << 3) | (1 << 63), 0, 1 << 53, 0]);
    }
}
