//! Page-table entries: v1 (host) PDEs/PTEs and the v2 (guest, x86-64) entry bits.
//!
//! v1 (reference §7.1; Linux `amd_iommu_types.h` `IOMMU_PTE_*`, `PM_LEVEL_*`,
//! `generic_pt/fmt/amdv1.h`; QEMU `amd_iommu.h`; Xen; VirtualBox; FreeBSD): PR bit 0,
//! A 5, D 6, NextLevel 11:9, address 51:12, U 59, FC 60, IR 61, IW 62. NextLevel names
//! the level of the table an entry points to (it may skip levels), 0 makes the entry a
//! page of the level's own span, 7 a page whose size is encoded in the address bits
//! (the run of ones above bit 11), replicated in every entry the page spans.
//!
//! v2 (reference §7.2; Linux `io_pgtable_v2.c` `IOMMU_PAGE_*`): the x86-64 long-mode
//! layout.

use super::ADDR_51_12;

/// v1 PR: present.
pub const PR: u64 = 1 << 0;
/// v1 A: accessed (set by the IOMMU with host access updates).
pub const A: u64 = 1 << 5;
/// v1 D: dirty (leaf only).
pub const D: u64 = 1 << 6;
/// v1 NextLevel field shift (bits 11:9).
pub const NEXT_LEVEL_SHIFT: u32 = 9;
/// v1 NextLevel field mask, in place.
pub const NEXT_LEVEL_MASK: u64 = 7 << NEXT_LEVEL_SHIFT;
/// v1 address field (bits 51:12).
pub const ADDR_MASK: u64 = ADDR_51_12;
/// v1 PMC (58:57): page-migration control in newer specifications (FreeBSD); reserved
/// in the older layouts of Xen and VirtualBox.
pub const PMC: u64 = 3 << 57;
/// v1 U: untranslated access only (leaf).
pub const U: u64 = 1 << 59;
/// v1 FC: force coherent (leaf).
pub const FC: u64 = 1 << 60;
/// v1 IR: read permission.
pub const IR: u64 = 1 << 61;
/// v1 IW: write permission.
pub const IW: u64 = 1 << 62;
/// v1 bits 56:52: reserved in every layout seen (Xen, VirtualBox, FreeBSD).
pub const RSVD_56_52: u64 = 0x1f << 52;

/// The NextLevel field of a v1 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextLevel {
    /// 0: a page of the entry's own span (4 KiB at level 1, 2 MiB at level 2, …).
    Page,
    /// 1–6: a pointer to a table of that level.
    Table(u8),
    /// 7: a page whose size is encoded in the address bits.
    SizedPage,
}

impl NextLevel {
    /// Decodes the 3-bit field.
    pub fn from_bits(v: u64) -> Self {
        match v & 7 {
            0 => Self::Page,
            7 => Self::SizedPage,
            n => Self::Table(n as u8),
        }
    }
    /// The 3-bit encoding (a `Table` level outside 1..=6 encodes as 7).
    pub fn bits(self) -> u64 {
        match self {
            Self::Page => 0,
            Self::Table(n @ 1..=6) => n as u64,
            Self::Table(_) | Self::SizedPage => 7,
        }
    }
    /// The NextLevel of the raw entry `raw`.
    pub fn of(raw: u64) -> Self {
        Self::from_bits(raw >> NEXT_LEVEL_SHIFT)
    }
}

/// A v1 PDE pointing to the level-`next_level` table at `table` with IR = IW = 1 (as
/// Linux writes every PDE: permissions come from the leaf).
pub const fn v1_pde(table: u64, next_level: u8) -> u64 {
    (table & ADDR_MASK) | ((next_level as u64 & 7) << NEXT_LEVEL_SHIFT) | PR | IR | IW
}

/// The address field of a NextLevel-7 page of `2^size_shift` bytes at `pa` (aligned
/// to the size, `size_shift` 13..=52): the page address with bits
/// `12 .. size_shift - 2` set and bit `size_shift - 1` clear (Linux `PAGE_SIZE_PTE`).
pub const fn sized_page_addr(pa: u64, size_shift: u32) -> u64 {
    let size = 1u64 << size_shift;
    ((pa | (size - 1)) & !(size >> 1)) & ADDR_MASK
}

/// log2 of the page size a NextLevel-7 entry `raw` encodes: one more than the lowest
/// clear bit of `raw | 0xfff` (Linux `PTE_PAGE_SIZE`, QEMU's walker). Bits above 51
/// are not looked at; an address field of all ones encodes no size (`None`).
pub const fn sized_page_shift(raw: u64) -> Option<u32> {
    let z = (!(raw | !ADDR_MASK | 0xfff)).trailing_zeros();
    if z >= 52 {
        None
    } else {
        Some(z + 1)
    }
}

/// v2 P: present.
pub const V2_P: u64 = 1 << 0;
/// v2 R/W: writable.
pub const V2_RW: u64 = 1 << 1;
/// v2 U/S: user.
pub const V2_US: u64 = 1 << 2;
/// v2 PWT.
pub const V2_PWT: u64 = 1 << 3;
/// v2 PCD.
pub const V2_PCD: u64 = 1 << 4;
/// v2 A: accessed.
pub const V2_A: u64 = 1 << 5;
/// v2 D: dirty.
pub const V2_D: u64 = 1 << 6;
/// v2 PS: 2 MiB / 1 GiB page at levels 2 / 3.
pub const V2_PS: u64 = 1 << 7;
/// v2 G: global.
pub const V2_G: u64 = 1 << 8;
/// v2 PAT bit of a 2 MiB / 1 GiB page (bit 12; bit 7 in a 4 KiB PTE).
pub const V2_PAT_LARGE: u64 = 1 << 12;
/// v2 NX: no execute.
pub const V2_NX: u64 = 1 << 63;
/// v2 address field (bits 51:12).
pub const V2_ADDR_MASK: u64 = ADDR_51_12;

/// A v2 table entry as Linux writes one (`set_pgtable_attr`): P, R/W, U/S and A.
pub const fn v2_table(table: u64) -> u64 {
    (table & V2_ADDR_MASK) | V2_P | V2_RW | V2_US | V2_A
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_bits_known_answers() {
        // Linux IOMMU_PTE_PR BIT(0), IOMMU_PTE_HD BIT(6), IOMMU_PTE_U BIT(59),
        // IOMMU_PTE_FC BIT(60), IOMMU_PTE_IR BIT(61), IOMMU_PTE_IW BIT(62),
        // PM_ADDR_MASK 0x000ffffffffff000, PM_LEVEL_ENC(x) = (x << 9) & 0xe00.
        assert_eq!(
            [PR, D, U, FC, IR, IW],
            [1, 0x40, 1 << 59, 1 << 60, 1 << 61, 1 << 62]
        );
        assert_eq!(ADDR_MASK, 0x000f_ffff_ffff_f000);
        assert_eq!(NEXT_LEVEL_MASK, 0xe00);
        // Linux PM_LEVEL_PDE(2, 0x5000) = 0x5000 | 0x400 | PR | IR | IW.
        assert_eq!(v1_pde(0x5000, 2), 0x6000_0000_0000_5401);
        assert_eq!(NextLevel::of(0x6000_0000_0000_5401), NextLevel::Table(2));
        assert_eq!(NextLevel::of(0xe01), NextLevel::SizedPage);
        assert_eq!(NextLevel::of(0x1), NextLevel::Page);
        assert_eq!(NextLevel::Table(8).bits(), 7);
    }

    #[test]
    fn sized_page_encoding_known_answers() {
        // Linux PAGE_SIZE_PTE(address, pagesize) = ((address | (pagesize - 1)) &
        // ~(pagesize >> 1)) & PM_ADDR_MASK; PTE_PAGE_SIZE(pte) = 1 << (1 + ffz(pte |
        // 0xfff)). 8 KiB: bit 12 clear; 32 KiB: bits 13:12 set, bit 14 clear.
        assert_eq!(sized_page_addr(0x1_0000, 13), 0x1_0000);
        assert_eq!(sized_page_addr(0x2_0000, 15), 0x2_3000);
        assert_eq!(sized_page_addr(0x20_0000, 21), 0x2f_f000);
        assert_eq!(sized_page_shift(0x2_3e01), Some(15));
        assert_eq!(sized_page_shift(0x1_0e01), Some(13));
        assert_eq!(sized_page_shift(0x2f_fe01 | IR | IW), Some(21));
        // All address bits set: no clear bit below 52.
        assert_eq!(sized_page_shift(ADDR_MASK | 0xe01), None);
        // The largest: bits 50:12 set, 51 clear = 2^52.
        assert_eq!(sized_page_shift(0x0007_ffff_ffff_fe01), Some(52));
        // A whole PTE as Linux's v1 map writes a 32 KiB RW page:
        // PAGE_SIZE_PTE | PM_LEVEL_ENC(7) | PR | IR | IW.
        assert_eq!(
            sized_page_addr(0x2_0000, 15) | (7 << 9) | PR | IR | IW,
            0x6000_0000_0002_3e01
        );
    }

    #[test]
    fn v2_bits_known_answers() {
        // Linux io_pgtable_v2.c: IOMMU_PAGE_PRESENT BIT(0), RW BIT(1), USER BIT(2),
        // PWT BIT(3), PCD BIT(4), ACCESS BIT(5), DIRTY BIT(6), PSE BIT(7), NX BIT(63);
        // set_pgtable_attr = PRESENT | RW | USER | ACCESS.
        assert_eq!(
            [V2_P, V2_RW, V2_US, V2_PWT, V2_PCD, V2_A, V2_D, V2_PS, V2_NX],
            [1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 1 << 63]
        );
        assert_eq!(v2_table(0x1234_5000), 0x1234_5027);
    }
}
