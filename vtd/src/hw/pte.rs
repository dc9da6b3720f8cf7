//! Second-stage and first-stage paging entries.
//!
//! Both stages use 4 KiB tables of 512 eight-byte entries, 9 address bits per level.
//! Level 1 maps 4 KiB pages, level 2 (PDE) may map 2 MiB and level 3 (PDPE) 1 GiB;
//! levels 4 and 5 only point to tables.
//!
//! Second-stage entries have no present bit: an entry with R = W = 0 is not present.
//! First-stage entries use the x86-64 (IA-32e) paging format.

use super::addr_mask;
use iommu_core::qword_struct;

/// Entries per paging-structure table.
pub const ENTRIES_PER_TABLE: u64 = 512;
/// Size of a paging entry.
pub const PTE_SIZE: u64 = 8;

/// Index of `addr` in a paging-structure table at `level` (1 = PTE … 5 = PML5E):
/// bits `[12 + 9 (level - 1) + 8 : 12 + 9 (level - 1)]`.
pub const fn level_index(addr: u64, level: u32) -> u64 {
    (addr >> level_shift(level)) & 0x1ff
}

/// log2 of the bytes one entry at `level` maps (12, 21, 30, 39, 48).
pub const fn level_shift(level: u32) -> u32 {
    12 + 9 * (level.saturating_sub(1))
}

/// Second-stage entry bit: read permission.
pub const SL_R: u64 = 1 << 0;
/// Second-stage entry bit: write permission.
pub const SL_W: u64 = 1 << 1;
/// Second-stage entry bit: execute permission (with SLEE).
pub const SL_X: u64 = 1 << 2;
/// Second-stage entry bit: page size (leaf at level 2 or 3).
pub const SL_PS: u64 = 1 << 7;
/// Second-stage entry bit: accessed (with SSADE).
pub const SL_A: u64 = 1 << 8;
/// Second-stage entry bit: dirty (with SSADE, leaf only).
pub const SL_D: u64 = 1 << 9;
/// Second-stage entry bit: snoop (ECAP.SC).
pub const SL_SNP: u64 = 1 << 11;
/// Second-stage entry bit: transient mapping (device-TLB).
///
/// QEMU and the older EDK2 header define TM at bit 62; VirtualBox's 2021 layout marks
/// bit 62 reserved in non-leaf entries. Here it is accepted only in leaves of units with
/// ECAP.DT, as QEMU does.
pub const SL_TM: u64 = 1 << 62;

/// First-stage entry bit: present.
pub const FL_P: u64 = 1 << 0;
/// First-stage entry bit: writable.
pub const FL_RW: u64 = 1 << 1;
/// First-stage entry bit: user.
pub const FL_US: u64 = 1 << 2;
/// First-stage entry bit: page write-through.
pub const FL_PWT: u64 = 1 << 3;
/// First-stage entry bit: page cache disable.
pub const FL_PCD: u64 = 1 << 4;
/// First-stage entry bit: accessed.
pub const FL_A: u64 = 1 << 5;
/// First-stage entry bit: dirty (leaf).
pub const FL_D: u64 = 1 << 6;
/// First-stage entry bit: page size (leaf at level 2 or 3).
pub const FL_PS: u64 = 1 << 7;
/// First-stage entry bit: global (leaf).
pub const FL_G: u64 = 1 << 8;
/// First-stage entry bit: extended accessed (with EAFE).
pub const FL_EA: u64 = 1 << 10;
/// First-stage entry bit: execute disable.
pub const FL_XD: u64 = 1 << 63;

/// Address bits of a paging entry (51:12).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// What a paging-structure unit supports, for reserved-bit checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteCaps {
    /// Host address width in bits: address bits at or above it are reserved.
    pub haw: u32,
    /// Leaf at level 2 (2 MiB) allowed (second stage: CAP.SLLPS bit 0; first stage: always).
    pub large_2m: bool,
    /// Leaf at level 3 (1 GiB) allowed (second stage: CAP.SLLPS bit 1; first stage: CAP.FL1GP).
    pub large_1g: bool,
    /// Second stage: SNP bit defined (ECAP.SC); otherwise bit 11 is reserved.
    pub snoop: bool,
    /// Second stage: TM bit defined in leaves (ECAP.DT); otherwise bit 62 is reserved.
    pub transient: bool,
}

qword_struct!(
    /// Second-stage paging entry: R 0, W 1, X 2, EMT 5:3, IPAT 6, PS 7, A 8, D 9,
    /// SNP 11, ADDR 51:12, TM 62; bits 61:52 and 63 ignored.
    SlPte,
    1
);

impl SlPte {
    /// The entry with raw value `v`.
    pub fn from_raw(v: u64) -> Self {
        Self::from_qwords([v])
    }
    /// The raw value.
    pub fn raw(&self) -> u64 {
        self.qword(0)
    }
    /// A non-leaf entry pointing to the table at `addr`, readable and writable (so the
    /// leaf decides the permissions, as Linux does).
    pub fn table(addr: u64) -> Self {
        Self::from_raw((addr & PTE_ADDR_MASK) | SL_R | SL_W)
    }
    /// A leaf at level 1 mapping the 4 KiB page at `addr`.
    pub fn page(addr: u64, read: bool, write: bool) -> Self {
        Self::from_raw((addr & PTE_ADDR_MASK) | perm_bits(read, write))
    }
    /// A leaf at level 2 or 3 (PS = 1) mapping the large page at `addr`.
    pub fn large_page(addr: u64, read: bool, write: bool) -> Self {
        Self::from_raw((addr & PTE_ADDR_MASK) | perm_bits(read, write) | SL_PS)
    }
    /// Present: R or W set.
    pub fn present(&self) -> bool {
        self.raw() & (SL_R | SL_W) != 0
    }
    /// Read permission.
    pub fn read(&self) -> bool {
        self.raw() & SL_R != 0
    }
    /// Write permission.
    pub fn write(&self) -> bool {
        self.raw() & SL_W != 0
    }
    /// Execute permission.
    pub fn exec(&self) -> bool {
        self.raw() & SL_X != 0
    }
    /// Page-size bit.
    pub fn ps(&self) -> bool {
        self.raw() & SL_PS != 0
    }
    /// Accessed bit.
    pub fn accessed(&self) -> bool {
        self.raw() & SL_A != 0
    }
    /// Dirty bit.
    pub fn dirty(&self) -> bool {
        self.raw() & SL_D != 0
    }
    /// Snoop bit.
    pub fn snp(&self) -> bool {
        self.raw() & SL_SNP != 0
    }
    /// Address field (bits 51:12).
    pub fn addr(&self) -> u64 {
        self.raw() & PTE_ADDR_MASK
    }
    /// Whether the entry is a leaf at `level` (level 1 always; level 2/3 with PS).
    pub fn is_leaf(&self, level: u32) -> bool {
        level == 1 || ((level == 2 || level == 3) && self.ps())
    }
    /// Reserved bits that are set in this present entry at `level` on a unit with
    /// `caps`: address bits `[haw, 52)`, SNP without ECAP.SC, TM outside leaves or
    /// without ECAP.DT, PS at levels 4–5 or at a level whose large page is not supported,
    /// and the low address bits of a large page (20:12 for 2 MiB, 29:12 for 1 GiB).
    pub fn reserved_bits(&self, level: u32, caps: &PteCaps) -> u64 {
        let v = self.raw();
        let mut rsvd = PTE_ADDR_MASK & !addr_mask(caps.haw);
        if !caps.snoop {
            rsvd |= SL_SNP;
        }
        let leaf = self.is_leaf(level);
        if !(leaf && caps.transient) {
            rsvd |= SL_TM;
        }
        match level {
            2 if self.ps() => {
                if !caps.large_2m {
                    rsvd |= SL_PS;
                }
                rsvd |= 0x1f_f000;
            }
            3 if self.ps() => {
                if !caps.large_1g {
                    rsvd |= SL_PS;
                }
                rsvd |= 0x3fff_f000;
            }
            4 | 5 => rsvd |= SL_PS,
            _ => {}
        }
        v & rsvd
    }
}

fn perm_bits(read: bool, write: bool) -> u64 {
    (if read { SL_R } else { 0 }) | (if write { SL_W } else { 0 })
}

qword_struct!(
    /// First-stage paging entry (x86-64 format): P 0, R/W 1, U/S 2, PWT 3, PCD 4, A 5,
    /// D 6, PS 7, G 8, EA 10, ADDR 51:12, XD 63.
    FlPte,
    1
);

impl FlPte {
    /// The entry with raw value `v`.
    pub fn from_raw(v: u64) -> Self {
        Self::from_qwords([v])
    }
    /// The raw value.
    pub fn raw(&self) -> u64 {
        self.qword(0)
    }
    /// A non-leaf entry pointing to the table at `addr`: present, writable, user (so the
    /// leaf decides the permissions, as Linux does).
    pub fn table(addr: u64) -> Self {
        Self::from_raw((addr & PTE_ADDR_MASK) | FL_P | FL_RW | FL_US)
    }
    /// A user leaf at level 1 mapping the 4 KiB page at `addr`.
    pub fn page(addr: u64, write: bool) -> Self {
        Self::from_raw((addr & PTE_ADDR_MASK) | FL_P | FL_US | if write { FL_RW } else { 0 })
    }
    /// A user leaf at level 2 or 3 (PS = 1) mapping the large page at `addr`.
    pub fn large_page(addr: u64, write: bool) -> Self {
        Self::from_raw(Self::page(addr, write).raw() | FL_PS)
    }
    /// Present bit.
    pub fn present(&self) -> bool {
        self.raw() & FL_P != 0
    }
    /// Writable bit.
    pub fn writable(&self) -> bool {
        self.raw() & FL_RW != 0
    }
    /// User bit.
    pub fn user(&self) -> bool {
        self.raw() & FL_US != 0
    }
    /// Accessed bit.
    pub fn accessed(&self) -> bool {
        self.raw() & FL_A != 0
    }
    /// Dirty bit.
    pub fn dirty(&self) -> bool {
        self.raw() & FL_D != 0
    }
    /// Page-size bit.
    pub fn ps(&self) -> bool {
        self.raw() & FL_PS != 0
    }
    /// Execute-disable bit.
    pub fn xd(&self) -> bool {
        self.raw() & FL_XD != 0
    }
    /// Address field (bits 51:12).
    pub fn addr(&self) -> u64 {
        self.raw() & PTE_ADDR_MASK
    }
    /// Whether the entry is a leaf at `level` (level 1 always; level 2/3 with PS).
    pub fn is_leaf(&self, level: u32) -> bool {
        level == 1 || ((level == 2 || level == 3) && self.ps())
    }
    /// Reserved bits that are set in this present entry at `level`: address bits
    /// `[haw, 52)`, PS at levels 4–5 or for an unsupported 1 GiB page, and the low
    /// address bits of a large page above the PAT bit (20:13 for 2 MiB, 29:13 for 1 GiB).
    pub fn reserved_bits(&self, level: u32, caps: &PteCaps) -> u64 {
        let v = self.raw();
        let mut rsvd = PTE_ADDR_MASK & !addr_mask(caps.haw);
        match level {
            2 if self.ps() => {
                if !caps.large_2m {
                    rsvd |= FL_PS;
                }
                rsvd |= 0x1f_e000;
            }
            3 if self.ps() => {
                if !caps.large_1g {
                    rsvd |= FL_PS;
                }
                rsvd |= 0x3fff_e000;
            }
            4 | 5 => rsvd |= FL_PS,
            _ => {}
        }
        v & rsvd
    }
    /// The page address of a leaf at `level` (PAT bit 12 excluded for large pages).
    pub fn leaf_addr(&self, level: u32) -> u64 {
        let a = self.addr();
        if level >= 2 {
            a & !((1u64 << level_shift(level)) - 1)
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: PteCaps = PteCaps {
        haw: 46,
        large_2m: true,
        large_1g: true,
        snoop: false,
        transient: false,
    };

    #[test]
    fn second_stage_bits_match_linux_and_qemu() {
        // Linux iommu.h: DMA_PTE_READ BIT(0), DMA_PTE_WRITE BIT(1), DMA_PTE_LARGE_PAGE BIT(7),
        // DMA_PTE_SNP BIT(11); dma_pte_present = (val & 3) != 0.
        // QEMU: VTD_SL_R 1, VTD_SL_W 2, VTD_SL_PT_PAGE_SIZE_MASK 1 << 7, VTD_SL_TM 1 << 62.
        assert_eq!(
            [SL_R, SL_W, SL_PS, SL_SNP, SL_TM],
            [1, 2, 0x80, 0x800, 1 << 62]
        );
        let p = SlPte::page(0x1234_5000, true, false);
        assert_eq!(p.raw(), 0x1234_5001);
        assert!(p.present() && p.read() && !p.write());
        assert!(!SlPte::from_raw(0x1234_5000).present());
        let l = SlPte::large_page(0x4000_0000, true, true);
        assert_eq!(l.raw(), 0x4000_0083);
        assert!(l.is_leaf(3) && l.is_leaf(2) && !l.is_leaf(4));
        assert_eq!(SlPte::table(0x9000).raw(), 0x9003);
        // VirtualBox / EDK2: X bit 2; Linux generic_pt vtdss: A bit 8, D bit 9.
        assert_eq!([SL_X, SL_A, SL_D], [4, 0x100, 0x200]);
    }

    #[test]
    fn second_stage_reserved_bits_follow_qemu_masks() {
        // QEMU VTD_SPTE_PAGE_L1_RSVD_MASK(aw) = 0x800 | ~(HAW_MASK | IGN_COM) (+TM when
        // no device TLB), VTD_SPTE_PAGE_L4_RSVD_MASK adds 0x80, VTD_SPTE_LPAGE_L2 adds
        // 0x1ff000, VTD_SPTE_LPAGE_L3 adds 0x3ffff000; IGN_COM = 0xbff0000000000000.
        let ok = SlPte::page(0x1234_5000, true, true);
        assert_eq!(ok.reserved_bits(1, &CAPS), 0);
        let snp = SlPte::from_raw(ok.raw() | SL_SNP);
        assert_eq!(snp.reserved_bits(1, &CAPS), SL_SNP);
        let sc = PteCaps {
            snoop: true,
            ..CAPS
        };
        assert_eq!(snp.reserved_bits(1, &sc), 0);
        let high = SlPte::from_raw(ok.raw() | (1 << 46) | (1 << 55) | (1 << 63));
        // bits 55 and 63 are ignored, bit 46 is above HAW.
        assert_eq!(high.reserved_bits(1, &CAPS), 1 << 46);
        let tm = SlPte::from_raw(ok.raw() | SL_TM);
        assert_eq!(tm.reserved_bits(1, &CAPS), SL_TM);
        let dt = PteCaps {
            transient: true,
            ..CAPS
        };
        assert_eq!(tm.reserved_bits(1, &dt), 0);
        assert_eq!(SlPte::from_raw(0x9003 | SL_TM).reserved_bits(2, &dt), SL_TM);
        let l4 = SlPte::from_raw(0x9003 | SL_PS);
        assert_eq!(l4.reserved_bits(4, &CAPS), SL_PS);
        let mis2m = SlPte::large_page(0x20_1000, true, true);
        assert_eq!(mis2m.reserved_bits(2, &CAPS), 0x1000);
        let mis1g = SlPte::large_page(0x4020_0000, true, true);
        assert_eq!(mis1g.reserved_bits(3, &CAPS), 0x20_0000);
        let no1g = PteCaps {
            large_1g: false,
            ..CAPS
        };
        assert_eq!(
            SlPte::large_page(0x4000_0000, true, true).reserved_bits(3, &no1g),
            SL_PS
        );
    }

    #[test]
    fn first_stage_bits_match_linux_and_edk2() {
        // Linux iommu.h: DMA_FL_PTE_PRESENT BIT(0), DMA_FL_PTE_US BIT(2),
        // DMA_FL_PTE_ACCESS BIT(5), DMA_FL_PTE_DIRTY BIT(6), DMA_FL_PTE_XD BIT(63);
        // EDK2 Vtd.h / VirtualBox: R/W bit 1, PS bit 7, G bit 8, EA bit 10.
        assert_eq!(
            [FL_P, FL_RW, FL_US, FL_A, FL_D, FL_PS],
            [1, 2, 4, 0x20, 0x40, 0x80]
        );
        assert_eq!([FL_G, FL_EA, FL_XD], [0x100, 0x400, 1 << 63]);
        let p = FlPte::page(0x5000, false);
        assert_eq!(p.raw(), 0x5005);
        assert!(p.present() && p.user() && !p.writable());
        assert_eq!(FlPte::table(0x6000).raw(), 0x6007);
        let l = FlPte::large_page(0x20_0000, true);
        assert_eq!(l.raw(), 0x20_0087);
        assert_eq!(l.leaf_addr(2), 0x20_0000);
        // The PAT bit (12) of a large page is not part of the address.
        let pat = FlPte::from_raw(0x20_1087);
        assert_eq!(pat.leaf_addr(2), 0x20_0000);
        assert_eq!(pat.reserved_bits(2, &CAPS), 0);
        let bad = FlPte::from_raw(0x20_2087);
        assert_eq!(bad.reserved_bits(2, &CAPS), 0x2000);
        assert_eq!(FlPte::from_raw(0x6087).reserved_bits(4, &CAPS), FL_PS);
        assert_eq!(
            FlPte::from_raw(0x5001 | (1 << 47)).reserved_bits(1, &CAPS),
            1 << 47
        );
    }

    #[test]
    fn level_index_matches_linux_pfn_level_offset() {
        // Linux: pfn_level_offset(pfn, level) = (pfn >> ((level - 1) * 9)) & 0x1ff.
        let addr = 0x0000_7fab_cdef_1000u64;
        for level in 1..=5u32 {
            let pfn = addr >> 12;
            assert_eq!(level_index(addr, level), (pfn >> ((level - 1) * 9)) & 0x1ff);
        }
        assert_eq!(level_shift(1), 12);
        assert_eq!(level_shift(2), 21);
        assert_eq!(level_shift(3), 30);
        assert_eq!(level_shift(5), 48);
    }
}
