//! Command-buffer entries (128 bits; the opcode in bits 63:60).
//!
//! Layouts from `shared/reference/amdvi.md` §9 (Linux `build_completion_wait`,
//! `build_inv_*` and `CMD_*`; Xen `iommu_cmd.c`; VirtualBox; FreeBSD `amd_reg.h`).

use iommu_core::qword_struct;

/// COMPLETION_WAIT opcode.
pub const OP_COMPLETION_WAIT: u8 = 0x1;
/// INVALIDATE_DEVTAB_ENTRY opcode.
pub const OP_INVALIDATE_DEVTAB_ENTRY: u8 = 0x2;
/// INVALIDATE_IOMMU_PAGES opcode.
pub const OP_INVALIDATE_IOMMU_PAGES: u8 = 0x3;
/// INVALIDATE_IOTLB_PAGES opcode.
pub const OP_INVALIDATE_IOTLB_PAGES: u8 = 0x4;
/// INVALIDATE_INTERRUPT_TABLE opcode.
pub const OP_INVALIDATE_INTERRUPT_TABLE: u8 = 0x5;
/// PREFETCH_IOMMU_PAGES opcode.
pub const OP_PREFETCH_IOMMU_PAGES: u8 = 0x6;
/// COMPLETE_PPR_REQUEST opcode.
pub const OP_COMPLETE_PPR_REQUEST: u8 = 0x7;
/// INVALIDATE_IOMMU_ALL opcode (needs EFR.IASup).
pub const OP_INVALIDATE_IOMMU_ALL: u8 = 0x8;

/// The Address field of a page invalidation meaning "every page" (with S = 1): Linux
/// `CMD_INV_IOMMU_ALL_PAGES_ADDRESS` with the low 12 bits dropped.
pub const ALL_PAGES_ADDRESS: u64 = 0x7fff_ffff_ffff_f000;

/// Command opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x1.
    CompletionWait,
    /// 0x2.
    InvalidateDevtabEntry,
    /// 0x3.
    InvalidateIommuPages,
    /// 0x4.
    InvalidateIotlbPages,
    /// 0x5.
    InvalidateInterruptTable,
    /// 0x6.
    PrefetchIommuPages,
    /// 0x7.
    CompletePprRequest,
    /// 0x8.
    InvalidateIommuAll,
}

impl Opcode {
    /// Decodes an opcode; `None` for the values this crate does not know (0, 0x9 and
    /// up: reserved or virtualized-IOMMU commands).
    pub fn from_bits(v: u8) -> Option<Self> {
        Some(match v {
            OP_COMPLETION_WAIT => Self::CompletionWait,
            OP_INVALIDATE_DEVTAB_ENTRY => Self::InvalidateDevtabEntry,
            OP_INVALIDATE_IOMMU_PAGES => Self::InvalidateIommuPages,
            OP_INVALIDATE_IOTLB_PAGES => Self::InvalidateIotlbPages,
            OP_INVALIDATE_INTERRUPT_TABLE => Self::InvalidateInterruptTable,
            OP_PREFETCH_IOMMU_PAGES => Self::PrefetchIommuPages,
            OP_COMPLETE_PPR_REQUEST => Self::CompletePprRequest,
            OP_INVALIDATE_IOMMU_ALL => Self::InvalidateIommuAll,
            _ => return None,
        })
    }
}

/// An address range of a page invalidation: S = 0 names one 4 KiB page; S = 1 a
/// naturally aligned power-of-two range whose size is given by the lowest clear
/// address bit at or above bit 12 (bits 12..n-1 set, bit n clear: 2^(n+1) bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvRange {
    /// The Address field (bits 63:12 of the address, low 12 bits zero).
    pub address: u64,
    /// S: the size is encoded in the address.
    pub s: bool,
}

impl InvRange {
    /// Every page (Linux and Xen's whole-domain flush).
    pub const ALL: Self = Self {
        address: ALL_PAGES_ADDRESS,
        s: true,
    };

    /// The smallest range covering `[start, start + len)` (`len` at least 1), as Linux
    /// `build_inv_address` computes it: one page if the range lies in one page, else
    /// the naturally aligned power of two holding both ends, or every page if that
    /// would reach above bit 51.
    pub fn covering(start: u64, len: u64) -> Self {
        let end = start.saturating_add(len.max(1) - 1);
        if start >> 12 == end >> 12 {
            return Self {
                address: start & !0xfff,
                s: false,
            };
        }
        let msb = 63 - (start ^ end).leading_zeros();
        if msb > 51 {
            return Self::ALL;
        }
        Self {
            address: (start | ((1u64 << msb) - 1)) & !0xfff,
            s: true,
        }
    }

    /// The range as `(first byte, last byte)` (inclusive, so every page fits).
    pub fn bounds(&self) -> (u64, u64) {
        let a = self.address & !0xfff;
        if !self.s {
            return (a, a | 0xfff);
        }
        // Lowest clear bit at or above 12; size 2^(n+1).
        let n = (!(a | 0xfff)).trailing_zeros();
        if n >= 63 {
            return (0, u64::MAX);
        }
        let size = 1u64 << (n + 1);
        let first = a & !(size - 1);
        (first, first + (size - 1))
    }
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// COMPLETION_WAIT.
    CompletionWait {
        /// S: store `data` at `addr` once every earlier command has completed.
        store: bool,
        /// I: set Status.ComWaitInt (interrupt if enabled).
        interrupt: bool,
        /// F: flush queue.
        flush: bool,
        /// Store address (bits 51:3, 8-byte aligned).
        addr: u64,
        /// Store data.
        data: u64,
    },
    /// INVALIDATE_DEVTAB_ENTRY.
    InvalidateDevtabEntry {
        /// DeviceID.
        device_id: u16,
    },
    /// INVALIDATE_IOMMU_PAGES.
    InvalidateIommuPages {
        /// DomainID.
        domain_id: u16,
        /// PASID (with GN).
        pasid: u32,
        /// GN: guest (PASID) addresses.
        gn: bool,
        /// PDE: cached page-directory entries too.
        pde: bool,
        /// The range.
        range: InvRange,
    },
    /// INVALIDATE_IOTLB_PAGES (ATS device TLB).
    InvalidateIotlbPages {
        /// DeviceID.
        device_id: u16,
        /// MaxPend.
        max_pend: u8,
        /// QueueID (Linux and Xen put the DeviceID there).
        queue_id: u16,
        /// PASID (see [`Command::iotlb_pasid`] for the disputed placement).
        pasid: u32,
        /// GN.
        gn: bool,
        /// The range.
        range: InvRange,
    },
    /// INVALIDATE_INTERRUPT_TABLE.
    InvalidateInterruptTable {
        /// DeviceID.
        device_id: u16,
    },
    /// PREFETCH_IOMMU_PAGES (not decoded further).
    PrefetchIommuPages,
    /// COMPLETE_PPR_REQUEST (not decoded further).
    CompletePprRequest,
    /// INVALIDATE_IOMMU_ALL.
    InvalidateIommuAll,
}

qword_struct!(
    /// One command-buffer entry (128 bits).
    Command,
    2
);

impl Command {
    /// The opcode field (bits 63:60).
    pub fn opcode_bits(&self) -> u8 {
        self.bits(63, 60) as u8
    }

    /// COMPLETION_WAIT storing `data` at `addr` (8-byte aligned) with S = 1, and I as
    /// `interrupt` (Linux `build_completion_wait`).
    pub fn completion_wait(addr: u64, data: u64, interrupt: bool) -> Self {
        let q0 = (addr & 0x000f_ffff_ffff_fff8)
            | 1
            | ((interrupt as u64) << 1)
            | ((OP_COMPLETION_WAIT as u64) << 60);
        Self::from_qwords([q0, data])
    }

    /// COMPLETION_WAIT with neither store nor interrupt, only I = `interrupt`.
    pub fn completion_wait_interrupt() -> Self {
        Self::from_qwords([2 | ((OP_COMPLETION_WAIT as u64) << 60), 0])
    }

    /// INVALIDATE_DEVTAB_ENTRY for `device_id`.
    pub fn invalidate_devtab_entry(device_id: u16) -> Self {
        Self::from_qwords([
            device_id as u64 | ((OP_INVALIDATE_DEVTAB_ENTRY as u64) << 60),
            0,
        ])
    }

    /// INVALIDATE_IOMMU_PAGES for `domain_id` over `range` with PDE = `pde` (GN = 0).
    pub fn invalidate_iommu_pages(domain_id: u16, range: InvRange, pde: bool) -> Self {
        let q0 = ((domain_id as u64) << 32) | ((OP_INVALIDATE_IOMMU_PAGES as u64) << 60);
        let q1 = (range.address & !0xfff) | range.s as u64 | ((pde as u64) << 1);
        Self::from_qwords([q0, q1])
    }

    /// INVALIDATE_IOTLB_PAGES for `device_id` over `range` (PASID 0, GN = 0), QueueID
    /// = DeviceID as Linux and Xen write it.
    pub fn invalidate_iotlb_pages(device_id: u16, max_pend: u8, range: InvRange) -> Self {
        let q0 = device_id as u64
            | ((max_pend as u64) << 24)
            | ((device_id as u64) << 32)
            | ((OP_INVALIDATE_IOTLB_PAGES as u64) << 60);
        let q1 = (range.address & !0xfff) | range.s as u64;
        Self::from_qwords([q0, q1])
    }

    /// INVALIDATE_INTERRUPT_TABLE for `device_id`.
    pub fn invalidate_interrupt_table(device_id: u16) -> Self {
        Self::from_qwords([
            device_id as u64 | ((OP_INVALIDATE_INTERRUPT_TABLE as u64) << 60),
            0,
        ])
    }

    /// INVALIDATE_IOMMU_ALL.
    pub fn invalidate_iommu_all() -> Self {
        Self::from_qwords([(OP_INVALIDATE_IOMMU_ALL as u64) << 60, 0])
    }

    /// The PASID of an INVALIDATE_IOTLB_PAGES: bits 23:16 = PASID\[15:8\], 55:48 =
    /// PASID\[7:0\], 59:56 = PASID\[19:16\] as Linux and FreeBSD lay it out. Xen and
    /// VirtualBox put PASID\[7:0\] at 23:16 and PASID\[19:8\] at 59:48 instead (an
    /// older layout, reference §9); both agree for PASID 0.
    pub fn iotlb_pasid(&self) -> u32 {
        ((self.bits(23, 16) as u32) << 8)
            | self.bits(55, 48) as u32
            | ((self.bits(59, 56) as u32) << 16)
    }

    /// Bits set outside the fields of the command's layout, as `[qw0, qw1]` masks
    /// (all zero for an unknown opcode, which is an error of its own).
    pub fn reserved_bits(&self) -> [u64; 2] {
        let [q0, q1] = self.qwords();
        let op = 0xfu64 << 60;
        let (d0, d1) = match Opcode::from_bits(self.opcode_bits()) {
            Some(Opcode::CompletionWait) => (op | 0x000f_ffff_ffff_ffff, u64::MAX),
            Some(Opcode::InvalidateDevtabEntry | Opcode::InvalidateInterruptTable) => {
                (op | 0xffff, 0)
            }
            Some(Opcode::InvalidateIommuPages) => (op | 0xffff_0000_0000 | 0xf_ffff, !0xff8u64),
            // Type (69:68) is defined by VirtualBox and FreeBSD.
            Some(Opcode::InvalidateIotlbPages) => (op | 0x0fff_ffff_ffff_ffff, !0xfcau64),
            Some(Opcode::InvalidateIommuAll) => (op, 0),
            Some(Opcode::PrefetchIommuPages | Opcode::CompletePprRequest) | None => {
                (u64::MAX, u64::MAX)
            }
        };
        [q0 & !d0, q1 & !d1]
    }

    /// Decodes the command; `None` for an unknown opcode (an ILLEGAL_COMMAND_ERROR).
    pub fn decode(&self) -> Option<Cmd> {
        let [q0, q1] = self.qwords();
        let range = InvRange {
            address: q1 & !0xfff,
            s: q1 & 1 != 0,
        };
        Some(match Opcode::from_bits(self.opcode_bits())? {
            Opcode::CompletionWait => Cmd::CompletionWait {
                store: q0 & 1 != 0,
                interrupt: q0 & 2 != 0,
                flush: q0 & 4 != 0,
                addr: q0 & 0x000f_ffff_ffff_fff8,
                data: q1,
            },
            Opcode::InvalidateDevtabEntry => Cmd::InvalidateDevtabEntry {
                device_id: q0 as u16,
            },
            Opcode::InvalidateIommuPages => Cmd::InvalidateIommuPages {
                domain_id: (q0 >> 32) as u16,
                pasid: (q0 & 0xf_ffff) as u32,
                gn: q1 & 4 != 0,
                pde: q1 & 2 != 0,
                range,
            },
            Opcode::InvalidateIotlbPages => Cmd::InvalidateIotlbPages {
                device_id: q0 as u16,
                max_pend: (q0 >> 24) as u8,
                queue_id: (q0 >> 32) as u16,
                pasid: self.iotlb_pasid(),
                gn: q1 & 4 != 0,
                range,
            },
            Opcode::InvalidateInterruptTable => Cmd::InvalidateInterruptTable {
                device_id: q0 as u16,
            },
            Opcode::PrefetchIommuPages => Cmd::PrefetchIommuPages,
            Opcode::CompletePprRequest => Cmd::CompletePprRequest,
            Opcode::InvalidateIommuAll => Cmd::InvalidateIommuAll,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_wait_known_answer() {
        // Linux build_completion_wait: data[0] = lower_32_bits(paddr) |
        // CMD_COMPL_WAIT_STORE_MASK (1), data[1] = upper_32_bits(paddr) | 0x1 << 28,
        // data[2..3] = the 64-bit store data.
        let c = Command::completion_wait(0x1_2345_6788, 0xdead_beef_0000_0001, false);
        assert_eq!(c.qwords(), [0x1000_0001_2345_6789, 0xdead_beef_0000_0001]);
        assert_eq!(
            c.decode(),
            Some(Cmd::CompletionWait {
                store: true,
                interrupt: false,
                flush: false,
                addr: 0x1_2345_6788,
                data: 0xdead_beef_0000_0001
            })
        );
        // CMD_COMPL_WAIT_INT_MASK 0x02.
        assert_eq!(
            Command::completion_wait(0x1000, 7, true).qwords()[0],
            0x1000_0000_0000_1003
        );
        assert_eq!(
            Command::completion_wait_interrupt().qwords(),
            [0x1000_0000_0000_0002, 0]
        );
        assert_eq!(c.reserved_bits(), [0, 0]);
        // Bits 59:52 are not part of the layout.
        let bad = Command::from_qwords([c.qwords()[0] | (1 << 55), 0]);
        assert_eq!(bad.reserved_bits(), [1 << 55, 0]);
    }

    #[test]
    fn invalidate_iommu_pages_all_known_answer() {
        // Linux build_inv_iommu_pages for the whole domain: data[1] = domid | 3 << 28,
        // address CMD_INV_IOMMU_ALL_PAGES_ADDRESS & PAGE_MASK with
        // CMD_INV_IOMMU_PAGES_SIZE_MASK (1) and CMD_INV_IOMMU_PAGES_PDE_MASK (2).
        let c = Command::invalidate_iommu_pages(0x1234, InvRange::ALL, true);
        assert_eq!(c.qwords(), [0x3000_1234_0000_0000, 0x7fff_ffff_ffff_f003]);
        assert_eq!(InvRange::ALL.bounds(), (0, u64::MAX));
        assert_eq!(
            c.decode(),
            Some(Cmd::InvalidateIommuPages {
                domain_id: 0x1234,
                pasid: 0,
                gn: false,
                pde: true,
                range: InvRange::ALL
            })
        );
        assert_eq!(c.reserved_bits(), [0, 0]);
    }

    #[test]
    fn invalidation_range_encoding_as_linux_build_inv_address() {
        // One page: S = 0, address = page.
        let r = InvRange::covering(0x1_2345_6000, 0x1000);
        assert_eq!((r.address, r.s), (0x1_2345_6000, false));
        assert_eq!(r.bounds(), (0x1_2345_6000, 0x1_2345_6fff));
        // 0x4000..0x8000: msb_diff = fls64(0x4000 ^ 0x7fff) - 1 = 13, address |
        // 0x1fff = 0x5fff → 0x5000 with S: bit 12 set, bit 13 clear, 16 KiB at 0x4000.
        let r = InvRange::covering(0x4000, 0x4000);
        assert_eq!((r.address, r.s), (0x5000, true));
        assert_eq!(r.bounds(), (0x4000, 0x7fff));
        // 0x6000..0x9000 crosses bit 15: the 64 KiB range at 0.
        let r = InvRange::covering(0x6000, 0x3000);
        assert_eq!((r.address, r.s), (0x7000, true));
        assert_eq!(r.bounds(), (0, 0xffff));
        // A 2 MiB page: bits 20:12 set, bit 21 clear.
        let r = InvRange::covering(0x4020_0000, 0x20_0000);
        assert_eq!((r.address, r.s), (0x402f_f000, true));
        assert_eq!(r.bounds(), (0x4020_0000, 0x403f_ffff));
        // A range reaching above bit 51: every page.
        assert_eq!(InvRange::covering(0, 1 << 60), InvRange::ALL);
    }

    #[test]
    fn other_commands_known_answers() {
        // Linux build_inv_dte: data[0] = devid, type 0x2 << 28 in data[1].
        let c = Command::invalidate_devtab_entry(0x0310);
        assert_eq!(c.qwords(), [0x2000_0000_0000_0310, 0]);
        assert_eq!(
            c.decode(),
            Some(Cmd::InvalidateDevtabEntry { device_id: 0x310 })
        );
        // Linux build_inv_irt: data[0] = devid, type 0x5; build_inv_all: type 0x8.
        assert_eq!(
            Command::invalidate_interrupt_table(0xff).qwords(),
            [0x5000_0000_0000_00ff, 0]
        );
        assert_eq!(
            Command::invalidate_iommu_all().qwords(),
            [0x8000_0000_0000_0000, 0]
        );
        assert_eq!(
            Command::invalidate_iommu_all().decode(),
            Some(Cmd::InvalidateIommuAll)
        );
        // Linux build_inv_iotlb_pages: data[0] = devid | maxpend << 24, data[1] =
        // devid (QueueID) | type 0x4 << 28, address | SIZE_MASK.
        let c = Command::invalidate_iotlb_pages(0x0100, 0x20, InvRange::ALL);
        assert_eq!(c.qwords(), [0x4000_0100_2000_0100, 0x7fff_ffff_ffff_f001]);
        assert_eq!(c.reserved_bits(), [0, 0]);
        // PASID placement as Linux writes it (data[0] |= (pasid >> 8) & 0xff) << 16,
        // data[1] |= (pasid & 0xff) << 16) and FreeBSD's pasid2 at 59:56.
        let mut p = Command::from_qwords([0, 0]);
        p.set_bits(23, 16, 0xab);
        p.set_bits(55, 48, 0xcd);
        p.set_bits(59, 56, 0x3);
        assert_eq!(p.iotlb_pasid(), 0x3abcd);
        // Unknown opcodes.
        assert_eq!(Command::from_qwords([0, 0]).decode(), None);
        assert_eq!(Command::from_qwords([0xf << 60, 0]).decode(), None);
        assert_eq!(Opcode::from_bits(6), Some(Opcode::PrefetchIommuPages));
        // Reserved bits of a devtab invalidation: anything above DeviceID.
        let bad = Command::from_qwords([0x2000_0000_0001_0310, 1]);
        assert_eq!(bad.reserved_bits(), [1 << 16, 1]);
    }
}
