//! Root and context entries, legacy (RTADDR.TTM = 00) and scalable mode (TTM = 01).
//!
//! Legacy: the root table holds 256 16-byte root entries indexed by bus; each points to
//! a context table of 256 16-byte context entries indexed by devfn. Scalable mode: each
//! 16-byte root entry points to two context tables (lower for devfn 0–127, upper for
//! 128–255) of 128 32-byte scalable-mode context entries indexed by `devfn & 0x7f`.

use super::addr_mask;
use iommu_core::qword_struct;

/// Number of root entries in the root table (one per bus).
pub const ROOT_ENTRIES: usize = 256;
/// Size of a root entry (both modes).
pub const ROOT_ENTRY_SIZE: u64 = 16;
/// Size of a legacy context entry.
pub const CONTEXT_ENTRY_SIZE: u64 = 16;
/// Size of a scalable-mode context entry.
pub const SM_CONTEXT_ENTRY_SIZE: u64 = 32;

/// Adjusted guest address width (context-entry and PASID-entry AW field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressWidth {
    /// AW = 1: 39-bit, 3-level table.
    Bits39,
    /// AW = 2: 48-bit, 4-level table.
    Bits48,
    /// AW = 3: 57-bit, 5-level table.
    Bits57,
}

impl AddressWidth {
    /// Decodes the 3-bit AW field; 0 (30-bit, 2-level) and 4–7 are not defined for
    /// remapping units of VT-d 3.x and give `None`.
    pub fn from_bits(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Bits39),
            2 => Some(Self::Bits48),
            3 => Some(Self::Bits57),
            _ => None,
        }
    }
    /// The AW encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::Bits39 => 1,
            Self::Bits48 => 2,
            Self::Bits57 => 3,
        }
    }
    /// Number of second-stage table levels, `AW + 2`.
    pub fn levels(self) -> u32 {
        self.bits() as u32 + 2
    }
    /// Input address width in bits, `30 + 9 * AW`.
    pub fn width(self) -> u32 {
        30 + 9 * self.bits() as u32
    }
    /// The CAP.SAGAW bit that must be set for this width (bit AW of SAGAW).
    pub fn sagaw_bit(self) -> u64 {
        1 << self.bits()
    }
    /// The width for a number of levels (3, 4 or 5).
    pub fn from_levels(levels: u32) -> Option<Self> {
        match levels {
            3 => Some(Self::Bits39),
            4 => Some(Self::Bits48),
            5 => Some(Self::Bits57),
            _ => None,
        }
    }
}

/// Translation type of a legacy context entry (TT field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TranslationType {
    /// 0: untranslated requests through second-stage tables; translation requests blocked.
    Untranslated,
    /// 1: as 0, plus device-TLB (ATS) translation requests allowed (needs ECAP.DT).
    DeviceTlb,
    /// 2: pass-through, untranslated requests use the input address (needs ECAP.PT).
    PassThrough,
    /// 3: reserved.
    Reserved,
}

impl TranslationType {
    /// Decodes the 2-bit TT field.
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            0 => Self::Untranslated,
            1 => Self::DeviceTlb,
            2 => Self::PassThrough,
            _ => Self::Reserved,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::Untranslated => 0,
            Self::DeviceTlb => 1,
            Self::PassThrough => 2,
            Self::Reserved => 3,
        }
    }
}

qword_struct!(
    /// Legacy root entry (128 bits): P bit 0, CTP 63:12; bits 11:1 and 127:64 reserved.
    RootEntry,
    2
);

impl RootEntry {
    /// A present root entry pointing to the context table at `ctp` (low 12 bits dropped).
    pub fn new(ctp: u64) -> Self {
        Self::from_qwords([(ctp & !0xfff) | 1, 0])
    }
    /// Present bit.
    pub fn present(&self) -> bool {
        self.bit(0)
    }
    /// Context-table pointer (bits 63:12, as an address).
    pub fn context_table(&self) -> u64 {
        self.qword(0) & !0xfff
    }
    /// Reserved bits that are set, for a unit of host address width `haw`: bits 11:1,
    /// CTP bits at or above `haw` (qword 0) and all of qword 1. Returns `[qw0, qw1]` masks.
    pub fn reserved_bits(&self, haw: u32) -> [u64; 2] {
        let rsvd0 = 0xffe | (!addr_mask(haw) & !0xfff);
        [self.qword(0) & rsvd0, self.qword(1)]
    }
}

qword_struct!(
    /// Legacy context entry (128 bits): P 0, FPD 1, TT 3:2, SLPTPTR 63:12, AW 66:64,
    /// AVAIL 70:67, DID 87:72; bits 11:4, 71 and 127:88 reserved.
    ContextEntry,
    2
);

impl ContextEntry {
    /// A present context entry translating through the second-stage table at `slptptr`.
    pub fn new(slptptr: u64, aw: AddressWidth, did: u16, tt: TranslationType) -> Self {
        let mut e = Self::from_qwords([(slptptr & !0xfff) | 1, 0]);
        e.set_tt(tt);
        e.set_aw(aw.bits());
        e.set_did(did);
        e
    }
    /// Present bit.
    pub fn present(&self) -> bool {
        self.bit(0)
    }
    /// Sets the present bit.
    pub fn set_present(&mut self, v: bool) {
        self.set_bit(0, v)
    }
    /// Fault processing disable.
    pub fn fpd(&self) -> bool {
        self.bit(1)
    }
    /// Sets fault processing disable.
    pub fn set_fpd(&mut self, v: bool) {
        self.set_bit(1, v)
    }
    /// Translation type.
    pub fn tt(&self) -> TranslationType {
        TranslationType::from_bits(self.bits(3, 2))
    }
    /// Sets the translation type.
    pub fn set_tt(&mut self, tt: TranslationType) {
        self.set_bits(3, 2, tt.bits())
    }
    /// Second-stage page-table pointer (bits 63:12, as an address).
    pub fn slptptr(&self) -> u64 {
        self.qword(0) & !0xfff
    }
    /// Raw AW field (bits 66:64).
    pub fn aw(&self) -> u64 {
        self.bits(66, 64)
    }
    /// Sets the raw AW field.
    pub fn set_aw(&mut self, aw: u64) {
        self.set_bits(66, 64, aw)
    }
    /// Software-available bits 70:67.
    pub fn avail(&self) -> u64 {
        self.bits(70, 67)
    }
    /// Domain ID (bits 87:72).
    pub fn did(&self) -> u16 {
        self.bits(87, 72) as u16
    }
    /// Sets the domain ID.
    pub fn set_did(&mut self, did: u16) {
        self.set_bits(87, 72, did as u64)
    }
    /// Reserved bits that are set, as `[qw0, qw1]` masks: bits 11:4, SLPTPTR bits at or
    /// above `haw`, bit 71 and bits 127:88.
    pub fn reserved_bits(&self, haw: u32) -> [u64; 2] {
        let rsvd0 = 0xff0 | (!addr_mask(haw) & !0xfff);
        let rsvd1 = 0xffff_ffff_ff00_0080;
        [self.qword(0) & rsvd0, self.qword(1) & rsvd1]
    }
}

qword_struct!(
    /// Scalable-mode root entry (128 bits): LP 0, LCTP 63:12, UP 64, UCTP 127:76;
    /// bits 11:1 and 75:65 reserved.
    ScalableRootEntry,
    2
);

impl ScalableRootEntry {
    /// A root entry with optional lower (devfn 0–127) and upper (128–255) context tables.
    pub fn new(lower: Option<u64>, upper: Option<u64>) -> Self {
        let lo = lower.map_or(0, |a| (a & !0xfff) | 1);
        let hi = upper.map_or(0, |a| (a & !0xfff) | 1);
        Self::from_qwords([lo, hi])
    }
    /// Lower context table present.
    pub fn lower_present(&self) -> bool {
        self.bit(0)
    }
    /// Lower context-table pointer.
    pub fn lower_table(&self) -> u64 {
        self.qword(0) & !0xfff
    }
    /// Upper context table present.
    pub fn upper_present(&self) -> bool {
        self.bit(64)
    }
    /// Upper context-table pointer.
    pub fn upper_table(&self) -> u64 {
        self.qword(1) & !0xfff
    }
    /// `(present, table)` for the half that serves `devfn`.
    pub fn half_for(&self, devfn: u8) -> (bool, u64) {
        if devfn & 0x80 != 0 {
            (self.upper_present(), self.upper_table())
        } else {
            (self.lower_present(), self.lower_table())
        }
    }
    /// Reserved bits that are set in the half serving `devfn` (bits 11:1 of that qword,
    /// pointer bits at or above `haw`).
    pub fn reserved_bits_for(&self, devfn: u8, haw: u32) -> u64 {
        let q = self.qword(if devfn & 0x80 != 0 { 1 } else { 0 });
        q & (0xffe | (!addr_mask(haw) & !0xfff))
    }
}

qword_struct!(
    /// Scalable-mode context entry (256 bits): P 0, FPD 1, DTE 2, PASIDE 3, PRE 4,
    /// PDTS 11:9, PASIDDIRPTR 63:12, RID_PASID 83:64, RID_PRIV 84; bits 8:5, 127:85 and
    /// 255:128 reserved.
    ScalableContextEntry,
    4
);

impl ScalableContextEntry {
    /// A present entry with the PASID directory at `pasid_dir` holding
    /// `2^(pdts + 7)` entries.
    pub fn new(pasid_dir: u64, pdts: u64) -> Self {
        let mut e = Self::from_qwords([(pasid_dir & !0xfff) | 1, 0, 0, 0]);
        e.set_pdts(pdts);
        e
    }
    /// Present bit.
    pub fn present(&self) -> bool {
        self.bit(0)
    }
    /// Fault processing disable.
    pub fn fpd(&self) -> bool {
        self.bit(1)
    }
    /// Sets fault processing disable.
    pub fn set_fpd(&mut self, v: bool) {
        self.set_bit(1, v)
    }
    /// Device-TLB enable.
    pub fn dte(&self) -> bool {
        self.bit(2)
    }
    /// PASID enable: requests with PASID are allowed.
    pub fn paside(&self) -> bool {
        self.bit(3)
    }
    /// Sets PASID enable.
    pub fn set_paside(&mut self, v: bool) {
        self.set_bit(3, v)
    }
    /// Page-request enable.
    pub fn pre(&self) -> bool {
        self.bit(4)
    }
    /// Sets or clears page-request enable.
    pub fn set_pre(&mut self, v: bool) {
        self.set_bit(4, v)
    }
    /// PASID-directory size field; the directory has `2^(PDTS + 7)` entries.
    pub fn pdts(&self) -> u64 {
        self.bits(11, 9)
    }
    /// Sets the PASID-directory size field.
    pub fn set_pdts(&mut self, v: u64) {
        self.set_bits(11, 9, v)
    }
    /// Number of PASID-directory entries, `2^(PDTS + 7)`.
    pub fn pasid_dir_entries(&self) -> u64 {
        1 << (self.pdts() + 7)
    }
    /// PASID-directory pointer.
    pub fn pasid_dir(&self) -> u64 {
        self.qword(0) & !0xfff
    }
    /// RID_PASID: the PASID used for requests without PASID (ECAP.RPS).
    pub fn rid_pasid(&self) -> u32 {
        self.bits(83, 64) as u32
    }
    /// Sets RID_PASID.
    pub fn set_rid_pasid(&mut self, p: u32) {
        self.set_bits(83, 64, p as u64)
    }
    /// RID_PRIV: privilege of requests without PASID (ECAP.RPRIVS).
    pub fn rid_priv(&self) -> bool {
        self.bit(84)
    }
    /// Reserved bits that are set, as per-qword masks: bits 8:5 and pointer bits at or
    /// above `haw` in qword 0, bits 127:85 in qword 1, all of qwords 2 and 3.
    pub fn reserved_bits(&self, haw: u32) -> [u64; 4] {
        let rsvd0 = 0x1e0 | (!addr_mask(haw) & !0xfff);
        let rsvd1 = 0xffff_ffff_ffe0_0000;
        [
            self.qword(0) & rsvd0,
            self.qword(1) & rsvd1,
            self.qword(2),
            self.qword(3),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<RootEntry>(), 16);
        assert_eq!(core::mem::size_of::<ContextEntry>(), 16);
        assert_eq!(core::mem::size_of::<ScalableRootEntry>(), 16);
        assert_eq!(core::mem::size_of::<ScalableContextEntry>(), 32);
        // Root and context tables are one 4 KiB page: 256 × 16 (legacy), 128 × 32 (scalable).
        assert_eq!(ROOT_ENTRIES as u64 * ROOT_ENTRY_SIZE, 4096);
        assert_eq!(128 * SM_CONTEXT_ENTRY_SIZE, 4096);
    }

    #[test]
    fn legacy_root_entry_matches_qemu() {
        // QEMU intel_iommu_internal.h: VTD_ROOT_ENTRY_P 1, VTD_ROOT_ENTRY_CTP ~0xfff,
        // VTD_ROOT_ENTRY_RSVD(aw) = 0xffe | ~VTD_HAW_MASK(aw) (in qword 0).
        let r = RootEntry::new(0x1_2345_6000);
        assert_eq!(r.qwords(), [0x1_2345_6001, 0]);
        assert!(r.present());
        assert_eq!(r.context_table(), 0x1_2345_6000);
        assert_eq!(r.reserved_bits(39), [0, 0]);
        let bad = RootEntry::from_qwords([0x1_2345_6003 | (1 << 45), 1]);
        assert_eq!(bad.reserved_bits(39), [2 | (1 << 45), 1]);
        // Little-endian byte image: P is bit 0 of byte 0.
        let b = r.as_bytes();
        assert_eq!(b[0], 0x01);
        assert_eq!(b[1], 0x60);
        assert_eq!(RootEntry::read_from_bytes(b).unwrap(), r);
    }

    #[test]
    fn legacy_context_entry_matches_linux_and_qemu() {
        // Linux iommu.h: CONTEXT_TT_MULTI_LEVEL 0, CONTEXT_TT_DEV_IOTLB 1,
        // CONTEXT_TT_PASS_THROUGH 2 (in bits 3:2); context hi: AW 2:0, DID 23:8.
        // QEMU: VTD_CONTEXT_ENTRY_FPD 1<<1, VTD_CONTEXT_TT_PASS_THROUGH 2<<2,
        // VTD_CONTEXT_ENTRY_DID(hi) = (hi >> 8) & 0xffff,
        // VTD_CONTEXT_ENTRY_RSVD_HI 0xffffffffff000080, RSVD_LO(aw) 0xff0 | ~HAW_MASK.
        let mut c = ContextEntry::new(
            0xabc_d000,
            AddressWidth::Bits48,
            0x1234,
            TranslationType::Untranslated,
        );
        assert_eq!(c.qwords(), [0xabc_d001, (0x1234 << 8) | 2]);
        c.set_fpd(true);
        c.set_tt(TranslationType::PassThrough);
        assert_eq!(c.qword(0), 0xabc_d001 | 2 | (2 << 2));
        assert!(c.fpd());
        assert_eq!(c.tt(), TranslationType::PassThrough);
        assert_eq!(c.did(), 0x1234);
        assert_eq!(AddressWidth::from_bits(c.aw()), Some(AddressWidth::Bits48));
        assert_eq!(c.reserved_bits(46), [0, 0]);
        let bad = ContextEntry::from_qwords([0xabc_d011, (1 << 7) | (1 << 24) | (0xf << 3)]);
        // AVAIL (70:67) is software-available, not reserved.
        assert_eq!(bad.reserved_bits(46), [0x10, (1 << 7) | (1 << 24)]);
        assert_eq!(bad.avail(), 0xf);
    }

    #[test]
    fn address_width_encoding_matches_linux_and_xen() {
        // Linux/Xen: levels = AW + 2, width = 30 + 9 * AW; QEMU VTD_CAP_SAGAW_39bit 0x2,
        // VTD_CAP_SAGAW_48bit 0x4 (SAGAW bit AW).
        assert_eq!(AddressWidth::Bits39.levels(), 3);
        assert_eq!(AddressWidth::Bits39.width(), 39);
        assert_eq!(AddressWidth::Bits48.width(), 48);
        assert_eq!(AddressWidth::Bits57.width(), 57);
        assert_eq!(AddressWidth::Bits57.levels(), 5);
        assert_eq!(AddressWidth::Bits39.sagaw_bit(), 0x2);
        assert_eq!(AddressWidth::Bits48.sagaw_bit(), 0x4);
        assert_eq!(AddressWidth::from_bits(0), None);
        assert_eq!(AddressWidth::from_bits(4), None);
        assert_eq!(AddressWidth::from_levels(4), Some(AddressWidth::Bits48));
    }

    #[test]
    fn scalable_root_entry_matches_linux() {
        // Linux iommu.c (iommu_context_addr, scalable mode): devfn >= 0x80 uses root->hi,
        // each half holds present bit 0 and a 4 KiB-aligned context-table pointer;
        // QEMU VTD_DEVFN_CHECK_MASK 0x80.
        let r = ScalableRootEntry::new(Some(0x10_0000), Some(0x20_0000));
        assert_eq!(r.qwords(), [0x10_0001, 0x20_0001]);
        assert_eq!(r.half_for(0x7f), (true, 0x10_0000));
        assert_eq!(r.half_for(0x80), (true, 0x20_0000));
        let l = ScalableRootEntry::new(Some(0x10_0000), None);
        assert_eq!(l.half_for(0x81), (false, 0));
        let bad = ScalableRootEntry::from_qwords([0x10_0003, 0x20_0801]);
        assert_eq!(bad.reserved_bits_for(0, 46), 2);
        assert_eq!(bad.reserved_bits_for(0x80, 46), 0x800);
    }

    #[test]
    fn scalable_context_entry_matches_linux_and_qemu() {
        // Linux iommu.h: CONTEXT_PASIDE BIT_ULL(3); pasid.h: is_pasid_enabled(e) =
        // (e->lo >> 3) & 1, get_pasid_dir_size(e) = 1 << (((e->lo >> 9) & 7) + 7);
        // QEMU: VTD_SM_CONTEXT_ENTRY_RID2PASID_MASK 0xfffff (qword 1),
        // VTD_SM_CONTEXT_ENTRY_RSVD_VAL0(aw) 0x1e0 | ~HAW_MASK,
        // VTD_SM_CONTEXT_ENTRY_RSVD_VAL1 0xffffffffffe00000.
        let mut c = ScalableContextEntry::new(0x55_5000, 2);
        c.set_paside(true);
        c.set_rid_pasid(0xabcde);
        assert_eq!(c.qword(0), 0x55_5001 | (2 << 9) | (1 << 3));
        assert_eq!(c.qword(1), 0xabcde);
        assert_eq!(c.pasid_dir_entries(), 512);
        assert!(c.paside() && !c.pre() && !c.dte() && !c.fpd());
        assert_eq!(c.rid_pasid(), 0xabcde);
        assert_eq!(c.reserved_bits(46), [0; 4]);
        // Linux pasid.h: context_set_sm_pre() sets BIT_ULL(4) of the low qword; QEMU
        // VTD_CE_GET_PRE reads the same bit.
        c.set_pre(true);
        assert_eq!(c.qword(0), 0x55_5001 | (2 << 9) | (1 << 3) | (1 << 4));
        assert!(c.pre());
        c.set_pre(false);
        assert_eq!(c.qword(0), 0x55_5001 | (2 << 9) | (1 << 3));
        let bad = ScalableContextEntry::from_qwords([0x55_5021, 1 << 21, 0, 4]);
        assert_eq!(bad.reserved_bits(46), [0x20, 1 << 21, 0, 4]);
        // RID_PRIV (bit 84) is not reserved.
        let p = ScalableContextEntry::from_qwords([1, 1 << 20, 0, 0]);
        assert!(p.rid_priv());
        assert_eq!(p.reserved_bits(46), [0; 4]);
    }

    #[test]
    fn translation_type_roundtrip() {
        for v in 0..4 {
            assert_eq!(TranslationType::from_bits(v).bits(), v);
        }
        assert_eq!(TranslationType::from_bits(3), TranslationType::Reserved);
    }
}
