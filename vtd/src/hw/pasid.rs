//! PASID directory and PASID table entries (scalable mode).
//!
//! A PASID is looked up in two levels: the directory entry at index `PASID[19:6]`
//! (8-byte entries) points to a 4 KiB PASID table whose entry `PASID[5:0]` (64-byte
//! entries) says how requests with that PASID are translated.

use super::addr_mask;
use iommu_core::qword_struct;

/// Size of a PASID-directory entry.
pub const PASID_DIR_ENTRY_SIZE: u64 = 8;
/// Size of a PASID-table entry.
pub const PASID_ENTRY_SIZE: u64 = 64;
/// PASIDs per PASID table (one 4 KiB page).
pub const PASIDS_PER_TABLE: u32 = 64;

/// Directory index of a PASID, `PASID[19:6]`.
pub fn pasid_dir_index(pasid: u32) -> u64 {
    ((pasid >> 6) & 0x3fff) as u64
}

/// Table index of a PASID, `PASID[5:0]`.
pub fn pasid_table_index(pasid: u32) -> u64 {
    (pasid & 0x3f) as u64
}

/// PASID-granular translation type (PASID-entry PGTT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pgtt {
    /// 1: first-stage only.
    FirstStage,
    /// 2: second-stage only.
    SecondStage,
    /// 3: nested (first stage, then second stage).
    Nested,
    /// 4: pass-through.
    PassThrough,
}

impl Pgtt {
    /// Decodes the 3-bit PGTT field; 0 and 5–7 are reserved.
    pub fn from_bits(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::FirstStage),
            2 => Some(Self::SecondStage),
            3 => Some(Self::Nested),
            4 => Some(Self::PassThrough),
            _ => None,
        }
    }
    /// The 3-bit encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::FirstStage => 1,
            Self::SecondStage => 2,
            Self::Nested => 3,
            Self::PassThrough => 4,
        }
    }
}

/// First-stage paging mode (PASID-entry FLPM / FSPM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flpm {
    /// 0: 4-level paging (48-bit).
    Level4,
    /// 1: 5-level paging (57-bit, needs CAP.FL5LP).
    Level5,
}

impl Flpm {
    /// Decodes the 2-bit FLPM field; 2 and 3 are reserved.
    pub fn from_bits(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Level4),
            1 => Some(Self::Level5),
            _ => None,
        }
    }
    /// The 2-bit encoding.
    pub fn bits(self) -> u64 {
        match self {
            Self::Level4 => 0,
            Self::Level5 => 1,
        }
    }
    /// Number of first-stage levels, `4 + FLPM`.
    pub fn levels(self) -> u32 {
        4 + self.bits() as u32
    }
    /// Input address width in bits (48 or 57).
    pub fn width(self) -> u32 {
        12 + 9 * self.levels()
    }
    /// The PASID-entry AW value covering this paging mode's input width: 4-level
    /// (48-bit) → AW 2, 5-level (57-bit) → AW 3 (AW encodes `30 + 9·AW` bits).
    pub fn address_width(self) -> super::root::AddressWidth {
        match self {
            Self::Level4 => super::root::AddressWidth::Bits48,
            Self::Level5 => super::root::AddressWidth::Bits57,
        }
    }
}

qword_struct!(
    /// PASID-directory entry (64 bits): P 0, FPD 1, SMPTBLPTR 63:12; bits 11:2 reserved.
    PasidDirEntry,
    1
);

impl PasidDirEntry {
    /// A present entry pointing to the PASID table at `table`.
    pub fn new(table: u64) -> Self {
        Self::from_qwords([(table & !0xfff) | 1])
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
    /// PASID-table pointer.
    pub fn table(&self) -> u64 {
        self.qword(0) & !0xfff
    }
    /// Reserved bits that are set: bits 11:2 and pointer bits at or above `haw`.
    pub fn reserved_bits(&self, haw: u32) -> u64 {
        self.qword(0) & (0xffc | (!addr_mask(haw) & !0xfff))
    }
}

qword_struct!(
    /// PASID-table entry (512 bits). Qword 0: P 0, FPD 1, AW 4:2, SLEE 5, PGTT 8:6,
    /// SSADE 9, SLPTPTR 63:12. Qword 1: DID 15:0, PWSNP 23, PGSNP 24, CD 25, EMTE 26,
    /// EMT 29:27, PWT 30, PCD 31, PAT 63:32. Qword 2: SRE 0, ERE 1, FLPM 3:2, WPE 4,
    /// NXE 5, SMEP 6, EAFE 7, FLPTPTR 63:12. Reserved: qword 0 bits 11:10, qword 1 bits
    /// 22:16, qword 2 bits 11:8, qwords 3–7.
    PasidEntry,
    8
);

impl PasidEntry {
    /// A present entry with the given translation type and domain ID; pointers and
    /// other fields are set with the builder methods.
    pub fn new(pgtt: Pgtt, did: u16) -> Self {
        let mut e = Self::default();
        e.set_bit(0, true);
        e.set_pgtt_bits(pgtt.bits());
        e.set_did(did);
        e
    }
    /// A present second-stage-only entry.
    pub fn second_stage(slptptr: u64, aw: super::root::AddressWidth, did: u16) -> Self {
        let mut e = Self::new(Pgtt::SecondStage, did);
        e.set_slptptr(slptptr);
        e.set_aw(aw.bits());
        e
    }
    /// A present first-stage-only entry. AW is set to the width of the paging mode
    /// ([`Flpm::address_width`]): Linux programs AW in every PASID entry it builds,
    /// first-stage included (`intel_pasid_setup_first_level` calls
    /// `pasid_set_address_width`), and QEMU's intel-iommu bounds first-stage input
    /// addresses by `30 + 9·AW`, so an entry with AW = 0 faults (0x80) every request at
    /// or above 1 GiB there.
    pub fn first_stage(flptptr: u64, flpm: Flpm, did: u16) -> Self {
        let mut e = Self::new(Pgtt::FirstStage, did);
        e.set_flptptr(flptptr);
        e.set_flpm(flpm.bits());
        e.set_aw(flpm.address_width().bits());
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
    /// Raw AW field (bits 4:2), same encoding as the context-entry AW: the second-stage
    /// table's width, and (QEMU) the bound on first-stage input addresses.
    pub fn aw(&self) -> u64 {
        self.bits(4, 2)
    }
    /// Sets the raw AW field.
    pub fn set_aw(&mut self, v: u64) {
        self.set_bits(4, 2, v)
    }
    /// Second-stage execute enable.
    pub fn slee(&self) -> bool {
        self.bit(5)
    }
    /// Raw PGTT field (bits 8:6).
    pub fn pgtt_bits(&self) -> u64 {
        self.bits(8, 6)
    }
    /// Sets the raw PGTT field.
    pub fn set_pgtt_bits(&mut self, v: u64) {
        self.set_bits(8, 6, v)
    }
    /// Decoded PGTT, `None` when reserved.
    pub fn pgtt(&self) -> Option<Pgtt> {
        Pgtt::from_bits(self.pgtt_bits())
    }
    /// Second-stage A/D enable.
    pub fn ssade(&self) -> bool {
        self.bit(9)
    }
    /// Sets second-stage A/D enable.
    pub fn set_ssade(&mut self, v: bool) {
        self.set_bit(9, v)
    }
    /// Second-stage page-table pointer.
    pub fn slptptr(&self) -> u64 {
        self.qword(0) & !0xfff
    }
    /// Sets the second-stage page-table pointer.
    pub fn set_slptptr(&mut self, a: u64) {
        self.set_bits(63, 12, a >> 12)
    }
    /// Domain ID (bits 79:64).
    pub fn did(&self) -> u16 {
        self.bits(79, 64) as u16
    }
    /// Sets the domain ID.
    pub fn set_did(&mut self, did: u16) {
        self.set_bits(79, 64, did as u64)
    }
    /// Page-walk snoop (bit 87).
    pub fn pwsnp(&self) -> bool {
        self.bit(87)
    }
    /// Page snoop (bit 88).
    pub fn pgsnp(&self) -> bool {
        self.bit(88)
    }
    /// Supervisor request enable (bit 128).
    pub fn sre(&self) -> bool {
        self.bit(128)
    }
    /// Sets supervisor request enable.
    pub fn set_sre(&mut self, v: bool) {
        self.set_bit(128, v)
    }
    /// Execute request enable (bit 129).
    pub fn ere(&self) -> bool {
        self.bit(129)
    }
    /// Raw first-stage paging mode (bits 131:130).
    pub fn flpm(&self) -> u64 {
        self.bits(131, 130)
    }
    /// Sets the raw first-stage paging mode.
    pub fn set_flpm(&mut self, v: u64) {
        self.set_bits(131, 130, v)
    }
    /// Write-protect enable (bit 132): supervisor writes honour the R/W bit.
    pub fn wpe(&self) -> bool {
        self.bit(132)
    }
    /// Sets write-protect enable.
    pub fn set_wpe(&mut self, v: bool) {
        self.set_bit(132, v)
    }
    /// Extended-accessed flag enable (bit 135).
    pub fn eafe(&self) -> bool {
        self.bit(135)
    }
    /// First-stage page-table pointer (bits 191:140).
    pub fn flptptr(&self) -> u64 {
        self.qword(2) & !0xfff
    }
    /// Sets the first-stage page-table pointer.
    pub fn set_flptptr(&mut self, a: u64) {
        self.set_bits(191, 140, a >> 12)
    }
    /// Reserved bits that are set, as per-qword masks for a unit of host address width
    /// `haw`. Pointer bits at or above `haw` are counted only for the stages `pgtt` uses
    /// (the unused pointer is ignored by hardware).
    pub fn reserved_bits(&self, haw: u32) -> [u64; 8] {
        let above = !addr_mask(haw) & !0xfff;
        let pgtt = self.pgtt();
        let uses_sl = matches!(pgtt, Some(Pgtt::SecondStage) | Some(Pgtt::Nested));
        let uses_fl = matches!(pgtt, Some(Pgtt::FirstStage) | Some(Pgtt::Nested));
        let mut out = [0u64; 8];
        out[0] = self.qword(0) & (0xc00 | if uses_sl { above } else { 0 });
        out[1] = self.qword(1) & 0x007f_0000;
        out[2] = self.qword(2) & (0xf00 | if uses_fl { above } else { 0 });
        for (i, o) in out.iter_mut().enumerate().skip(3) {
            *o = self.qword(i);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::root::AddressWidth;
    use super::*;

    #[test]
    fn sizes_and_indices_match_qemu() {
        // QEMU: VTD_PASID_DIR_ENTRY_SIZE 8, VTD_PASID_ENTRY_SIZE 64,
        // VTD_PASID_DIR_INDEX(p) = (p >> 6) & 0x3fff, VTD_PASID_TABLE_INDEX(p) = p & 0x3f.
        assert_eq!(
            core::mem::size_of::<PasidDirEntry>() as u64,
            PASID_DIR_ENTRY_SIZE
        );
        assert_eq!(core::mem::size_of::<PasidEntry>() as u64, PASID_ENTRY_SIZE);
        assert_eq!(pasid_dir_index(0xfffff), 0x3fff);
        assert_eq!(pasid_dir_index(0x1_2345), 0x48d);
        assert_eq!(pasid_table_index(0x1_2345), 0x05);
        assert_eq!(PASIDS_PER_TABLE as u64 * PASID_ENTRY_SIZE, 4096);
    }

    #[test]
    fn pasid_dir_entry_matches_linux_and_qemu() {
        // Linux pasid.h: PASID_PTE_PRESENT 1, PDE_PFN_MASK PAGE_MASK;
        // QEMU: VTD_PASID_DIR_FPD 1 << 1, VTD_PASID_TABLE_BASE_ADDR_MASK ~0xfff.
        let mut d = PasidDirEntry::new(0x7_7000);
        assert_eq!(d.qword(0), 0x7_7001);
        d.set_fpd(true);
        assert_eq!(d.qword(0), 0x7_7003);
        assert!(d.present() && d.fpd());
        assert_eq!(d.table(), 0x7_7000);
        assert_eq!(d.reserved_bits(46), 0);
        let bad = PasidDirEntry::from_qwords([0x7_7005 | (1 << 50)]);
        assert_eq!(bad.reserved_bits(46), 4 | (1 << 50));
    }

    #[test]
    fn pasid_entry_matches_linux_and_qemu() {
        // Linux pasid.h: PASID_ENTRY_PGTT_FL_ONLY 1, SL_ONLY 2, NESTED 3, PT 4, written to
        // val[0] bits 8:6 (pasid_set_translation_type); pasid_set_address_width: val[0]
        // GENMASK(4,2); pasid_set_domain_id: val[1] GENMASK(15,0); pasid_set_sre: val[2]
        // bit 0; pasid_set_flpm: val[2] GENMASK(3,2); pasid_set_wpe: val[2] bit 4;
        // pasid_set_eafe: val[2] bit 7; pasid_set_flptr: val[2] GENMASK(63,12);
        // pasid_set_pwsnp: val[1] bit 23; pasid_set_pgsnp: val[1] bit 24;
        // pasid_set_ssade: val[0] bit 9.
        // QEMU: VTD_SM_PASID_ENTRY_SLT 2 << 6, VTD_SM_PASID_ENTRY_PT 4 << 6.
        let e = PasidEntry::second_stage(0x12_3000, AddressWidth::Bits48, 0x77);
        assert_eq!(e.qword(0), 0x12_3000 | (2 << 6) | (2 << 2) | 1);
        assert_eq!(e.qword(1), 0x77);
        assert_eq!(e.pgtt(), Some(Pgtt::SecondStage));
        assert_eq!(e.slptptr(), 0x12_3000);
        assert_eq!(e.did(), 0x77);
        let mut f = PasidEntry::first_stage(0x45_6000, Flpm::Level5, 9);
        f.set_sre(true);
        f.set_wpe(true);
        // AW (val[0] bits 4:2) is set for first stage too: Linux
        // intel_pasid_setup_first_level → pasid_set_address_width; 5-level → AW 3.
        assert_eq!(f.qword(0), (1 << 6) | (3 << 2) | 1);
        assert_eq!(f.aw(), 3);
        assert_eq!(f.qword(2), 0x45_6000 | (1 << 2) | 1 | (1 << 4));
        assert_eq!(f.flptptr(), 0x45_6000);
        assert_eq!(Flpm::from_bits(f.flpm()), Some(Flpm::Level5));
        assert!(f.sre() && f.wpe() && !f.eafe() && !f.ere());
        let pt = PasidEntry::new(Pgtt::PassThrough, 1);
        assert_eq!(pt.qword(0), (4 << 6) | 1);
        let mut s = PasidEntry::new(Pgtt::SecondStage, 0);
        s.set_ssade(true);
        assert_eq!(s.qword(0) & (1 << 9), 1 << 9);
        let snoop = PasidEntry::from_qwords([1, (1 << 23) | (1 << 24), 1 << 7, 0, 0, 0, 0, 0]);
        assert!(snoop.pwsnp() && snoop.pgsnp() && snoop.eafe());
    }

    #[test]
    fn first_stage_entry_sets_aw_like_linux() {
        // Linux pasid.h pasid_set_address_width: val[0] GENMASK_ULL(4, 2), value agaw;
        // QEMU intel_iommu_internal.h VTD_SM_PASID_ENTRY_AW 7ULL at bit 2, input width
        // 30 + 9·AW (vtd_get_iova_agaw) for first- and second-stage entries alike.
        let e = PasidEntry::first_stage(0x45_6000, Flpm::Level4, 9);
        assert_eq!(e.qword(0), (1 << 6) | (2 << 2) | 1);
        assert_eq!(e.aw(), 2);
        assert_eq!(Flpm::Level4.address_width().width(), Flpm::Level4.width());
        assert_eq!(Flpm::Level5.address_width().width(), Flpm::Level5.width());
        let mut z = e;
        z.set_aw(0);
        assert_eq!(z.qword(0), (1 << 6) | 1);
    }

    #[test]
    fn pasid_entry_reserved_bits() {
        let mut e = PasidEntry::second_stage(0x12_3000, AddressWidth::Bits48, 1);
        assert_eq!(e.reserved_bits(46), [0; 8]);
        e.set_qword(0, e.qword(0) | 0x400 | (1 << 47));
        e.set_qword(1, e.qword(1) | (1 << 16));
        e.set_qword(2, 0x100 | (1 << 50));
        e.set_qword(5, 9);
        let r = e.reserved_bits(46);
        assert_eq!(r[0], 0x400 | (1 << 47));
        assert_eq!(r[1], 1 << 16);
        // FLPTPTR above HAW is ignored for a second-stage-only entry.
        assert_eq!(r[2], 0x100);
        assert_eq!(r[5], 9);
    }

    #[test]
    fn encodings() {
        // QEMU: first-stage levels = 4 + FLPM; Linux: FLPM 0 = 4-level, 1 = 5-level.
        assert_eq!(Flpm::Level4.levels(), 4);
        assert_eq!(Flpm::Level4.width(), 48);
        assert_eq!(Flpm::Level5.width(), 57);
        assert_eq!(Flpm::from_bits(2), None);
        for v in 1..5 {
            assert_eq!(Pgtt::from_bits(v).map(Pgtt::bits), Some(v));
        }
        assert_eq!(Pgtt::from_bits(0), None);
        assert_eq!(Pgtt::from_bits(5), None);
    }
}
