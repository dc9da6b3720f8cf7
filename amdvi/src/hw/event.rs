//! Event-log entries (128 bits; the event code in bits 63:60).
//!
//! Layouts from `shared/reference/amdvi.md` §10: Linux `iommu_print_event` decodes
//! `type = dw1[31:28]`, `devid = dw0[15:0]`, `pasid = dw0[19:16] << 16 | dw1[15:0]`,
//! `flags = dw1[27:16]`, `address = dw3:dw2`; Xen decodes the same flag bits; the
//! per-code field layouts follow VirtualBox and FreeBSD `amd_reg.h`.

use iommu_core::qword_struct;

/// Event codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventCode {
    /// 0x1: the device table entry is malformed.
    IllegalDevTableEntry,
    /// 0x2: a translation or permission fault.
    IoPageFault,
    /// 0x3: reading the device table failed.
    DevTabHardwareError,
    /// 0x4: reading a page table failed.
    PageTabHardwareError,
    /// 0x5: a malformed command.
    IllegalCommandError,
    /// 0x6: reading the command buffer (or a completion store) failed.
    CommandHardwareError,
    /// 0x7: an IOTLB invalidation timed out.
    IotlbInvTimeout,
    /// 0x8: an invalid device request.
    InvalidDeviceRequest,
    /// 0x9: an invalid peripheral page request.
    InvalidPprRequest,
    /// 0xA: an event counter reached zero (FreeBSD; unconfirmed).
    EventCounterZero,
    /// 0xD: an SEV-SNP RMP page fault (Linux; unconfirmed).
    RmpPageFault,
    /// 0xE: an SEV-SNP RMP hardware error (Linux; unconfirmed).
    RmpHardwareError,
}

impl EventCode {
    /// Decodes the 4-bit code; `None` for the values no source names.
    pub fn from_bits(v: u8) -> Option<Self> {
        Some(match v {
            0x1 => Self::IllegalDevTableEntry,
            0x2 => Self::IoPageFault,
            0x3 => Self::DevTabHardwareError,
            0x4 => Self::PageTabHardwareError,
            0x5 => Self::IllegalCommandError,
            0x6 => Self::CommandHardwareError,
            0x7 => Self::IotlbInvTimeout,
            0x8 => Self::InvalidDeviceRequest,
            0x9 => Self::InvalidPprRequest,
            0xa => Self::EventCounterZero,
            0xd => Self::RmpPageFault,
            0xe => Self::RmpHardwareError,
            _ => return None,
        })
    }
    /// The 4-bit code.
    pub fn bits(self) -> u8 {
        match self {
            Self::IllegalDevTableEntry => 0x1,
            Self::IoPageFault => 0x2,
            Self::DevTabHardwareError => 0x3,
            Self::PageTabHardwareError => 0x4,
            Self::IllegalCommandError => 0x5,
            Self::CommandHardwareError => 0x6,
            Self::IotlbInvTimeout => 0x7,
            Self::InvalidDeviceRequest => 0x8,
            Self::InvalidPprRequest => 0x9,
            Self::EventCounterZero => 0xa,
            Self::RmpPageFault => 0xd,
            Self::RmpHardwareError => 0xe,
        }
    }
}

/// The 12-bit flag field (bits 59:48), bit positions relative to bit 48 (Xen's
/// `IOMMU_EVENT_*` flag masks, Linux `EVENT_FLAG_I` 0x008 and `EVENT_FLAG_RW` 0x020).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EventFlags(pub u16);

impl EventFlags {
    /// GN: the address is a guest (PASID) address.
    pub const GN: u16 = 1 << 0;
    /// NX: an instruction fetch.
    pub const NX: u16 = 1 << 1;
    /// US: a user-mode request.
    pub const US: u16 = 1 << 2;
    /// I: an interrupt request (not a memory access).
    pub const I: u16 = 1 << 3;
    /// PR: the page was present.
    pub const PR: u16 = 1 << 4;
    /// RW: a write (0: a read).
    pub const RW: u16 = 1 << 5;
    /// PE: a permission error.
    pub const PE: u16 = 1 << 6;
    /// RZ: a reserved bit was set or a level was invalid.
    pub const RZ: u16 = 1 << 7;
    /// TR: a translation (ATS) request.
    pub const TR: u16 = 1 << 8;
    /// The hardware-error Type field (bits 10:9, event bits 58:57).
    pub const TYPE_SHIFT: u16 = 9;

    /// Whether every flag of `mask` is set.
    pub fn has(self, mask: u16) -> bool {
        self.0 & mask == mask
    }
    /// The hardware-error Type field.
    pub fn hw_type(self) -> u8 {
        ((self.0 >> Self::TYPE_SHIFT) & 3) as u8
    }
}

/// A decoded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// ILLEGAL_DEV_TABLE_ENTRY.
    IllegalDevTableEntry {
        /// DeviceID.
        device_id: u16,
        /// PASID (with GN).
        pasid: u32,
        /// Flags (GN, I, RW, RZ, TR).
        flags: EventFlags,
        /// The request's address (bits 63:2).
        address: u64,
    },
    /// IO_PAGE_FAULT.
    IoPageFault {
        /// DeviceID.
        device_id: u16,
        /// DomainID, or the PASID with GN (bits 19:16 and 47:32).
        domain_or_pasid: u32,
        /// Flags.
        flags: EventFlags,
        /// The faulting address.
        address: u64,
    },
    /// DEV_TAB_HARDWARE_ERROR.
    DevTabHardwareError {
        /// DeviceID.
        device_id: u16,
        /// Flags (I, RW, TR, Type).
        flags: EventFlags,
        /// The device table address accessed (bits 63:4).
        address: u64,
    },
    /// PAGE_TAB_HARDWARE_ERROR.
    PageTabHardwareError {
        /// DeviceID.
        device_id: u16,
        /// DomainID, or the PASID with GN.
        domain_or_pasid: u32,
        /// Flags (GN, I, RW, TR, Type).
        flags: EventFlags,
        /// The page-table entry's address (bits 63:3).
        address: u64,
    },
    /// ILLEGAL_COMMAND_ERROR.
    IllegalCommandError {
        /// Address of the command (bits 63:4).
        address: u64,
    },
    /// COMMAND_HARDWARE_ERROR.
    CommandHardwareError {
        /// Flags (Type).
        flags: EventFlags,
        /// Address of the failed access (bits 63:4).
        address: u64,
    },
    /// IOTLB_INV_TIMEOUT.
    IotlbInvTimeout {
        /// DeviceID.
        device_id: u16,
        /// Address of the command that timed out (bits 63:4).
        address: u64,
    },
    /// Any other code, kept raw.
    Other {
        /// The code.
        code: EventCode,
    },
}

qword_struct!(
    /// One event-log entry (128 bits).
    EventEntry,
    2
);

impl EventEntry {
    /// An entry from its fields: `code` (63:60), `device_id` (15:0), the 20-bit
    /// `pasid` (19:16 and 47:32; the DomainID for I/O page faults), `flags` (59:48)
    /// and the 64-bit `address` (127:64, low bits as the event's layout defines).
    pub fn new(
        code: EventCode,
        device_id: u16,
        pasid: u32,
        flags: EventFlags,
        address: u64,
    ) -> Self {
        let q0 = device_id as u64
            | (((pasid >> 16) as u64 & 0xf) << 16)
            | ((pasid as u64 & 0xffff) << 32)
            | (((flags.0 & 0xfff) as u64) << 48)
            | ((code.bits() as u64) << 60);
        Self::from_qwords([q0, address])
    }

    /// An IO_PAGE_FAULT for `device_id` in `domain_id` at `address`.
    pub fn io_page_fault(device_id: u16, domain_id: u16, flags: EventFlags, address: u64) -> Self {
        Self::new(
            EventCode::IoPageFault,
            device_id,
            domain_id as u32,
            flags,
            address,
        )
    }

    /// The code field (63:60), raw.
    pub fn code_bits(&self) -> u8 {
        self.bits(63, 60) as u8
    }
    /// DeviceID (15:0).
    pub fn device_id(&self) -> u16 {
        self.bits(15, 0) as u16
    }
    /// The 20-bit PASID / DomainID field (19:16 high, 47:32 low), as Linux decodes it.
    pub fn pasid(&self) -> u32 {
        ((self.bits(19, 16) as u32) << 16) | self.bits(47, 32) as u32
    }
    /// Flags (59:48).
    pub fn flags(&self) -> EventFlags {
        EventFlags(self.bits(59, 48) as u16)
    }
    /// The address qword (127:64).
    pub fn address(&self) -> u64 {
        self.qwords()[1]
    }

    /// Decodes the entry; `None` for an unknown code.
    pub fn decode(&self) -> Option<Event> {
        let code = EventCode::from_bits(self.code_bits())?;
        let (device_id, flags, a) = (self.device_id(), self.flags(), self.address());
        Some(match code {
            EventCode::IllegalDevTableEntry => Event::IllegalDevTableEntry {
                device_id,
                pasid: self.pasid(),
                flags,
                address: a & !3,
            },
            EventCode::IoPageFault => Event::IoPageFault {
                device_id,
                domain_or_pasid: self.pasid(),
                flags,
                address: a,
            },
            EventCode::DevTabHardwareError => Event::DevTabHardwareError {
                device_id,
                flags,
                address: a & !0xf,
            },
            EventCode::PageTabHardwareError => Event::PageTabHardwareError {
                device_id,
                domain_or_pasid: self.pasid(),
                flags,
                address: a & !7,
            },
            EventCode::IllegalCommandError => Event::IllegalCommandError { address: a & !0xf },
            EventCode::CommandHardwareError => Event::CommandHardwareError {
                flags,
                address: a & !0xf,
            },
            EventCode::IotlbInvTimeout => Event::IotlbInvTimeout {
                device_id,
                address: a & !0xf,
            },
            code => Event::Other { code },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_known_answers() {
        // Linux EVENT_TYPE_ILL_DEV 0x1, IO_FAULT 0x2, DEV_TAB_ERR 0x3, PAGE_TAB_ERR
        // 0x4, ILL_CMD 0x5, CMD_HARD_ERR 0x6, IOTLB_INV_TO 0x7, INV_DEV_REQ 0x8,
        // INV_PPR_REQ 0x9, RMP_FAULT 0xd, RMP_HW_ERR 0xe.
        for v in [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xd, 0xe] {
            assert_eq!(EventCode::from_bits(v).map(EventCode::bits), Some(v));
        }
        for v in [0u8, 0xb, 0xc, 0xf] {
            assert_eq!(EventCode::from_bits(v), None);
        }
    }

    #[test]
    fn io_page_fault_as_linux_decodes_it() {
        // A write to an unmapped page: Linux iommu_print_event reads dw0 = devid |
        // pasid[19:16] << 16, dw1 = domid/pasid[15:0] | flags << 16 | type << 28,
        // dw2/dw3 = address; EVENT_FLAG_RW 0x020.
        let flags = EventFlags(EventFlags::RW);
        let e = EventEntry::io_page_fault(0x0310, 0x0005, flags, 0x1_2345_6789);
        assert_eq!(e.qwords(), [0x2020_0005_0000_0310, 0x1_2345_6789]);
        assert_eq!(
            e.decode(),
            Some(Event::IoPageFault {
                device_id: 0x310,
                domain_or_pasid: 5,
                flags,
                address: 0x1_2345_6789
            })
        );
        // A present page with a permission error on a read: PR 0x010, PE 0x040
        // (Xen IOMMU_EVENT_* flags, relative to bit 48).
        let e = EventEntry::from_qwords([0x2050_0001_0000_0008, 0x4000]);
        match e.decode() {
            Some(Event::IoPageFault {
                device_id: 8,
                domain_or_pasid: 1,
                flags,
                address: 0x4000,
            }) => {
                assert!(flags.has(EventFlags::PR | EventFlags::PE));
                assert!(!flags.has(EventFlags::RW));
            }
            other => panic!("{other:?}"),
        }
        // A 20-bit PASID with GN: bits 19:16 and 47:32.
        let e = EventEntry::new(
            EventCode::IoPageFault,
            1,
            0xa_bcde,
            EventFlags(EventFlags::GN),
            0,
        );
        assert_eq!(e.qwords()[0], 0x2001_bcde_000a_0001);
        assert_eq!(e.pasid(), 0xa_bcde);
    }

    #[test]
    fn other_events_known_answers() {
        // ILLEGAL_DEV_TABLE_ENTRY: address 127:66 (bits 1:0 of qword 1 reserved),
        // RZ flag bit 55 (VirtualBox, FreeBSD).
        let e = EventEntry::new(
            EventCode::IllegalDevTableEntry,
            0x10,
            0,
            EventFlags(EventFlags::RZ),
            0x5003,
        );
        assert_eq!(e.qwords(), [0x1080_0000_0000_0010, 0x5003]);
        assert_eq!(
            e.decode(),
            Some(Event::IllegalDevTableEntry {
                device_id: 0x10,
                pasid: 0,
                flags: EventFlags(EventFlags::RZ),
                address: 0x5000
            })
        );
        // ILLEGAL_COMMAND_ERROR: the command's address in 127:68.
        let e = EventEntry::new(
            EventCode::IllegalCommandError,
            0,
            0,
            EventFlags(0),
            0x8_0030,
        );
        assert_eq!(e.qwords(), [0x5000_0000_0000_0000, 0x8_0030]);
        assert_eq!(
            e.decode(),
            Some(Event::IllegalCommandError { address: 0x8_0030 })
        );
        // PAGE_TAB_HARDWARE_ERROR with Type 58:57 = 2 and TR (bit 56).
        let fl = EventFlags(EventFlags::TR | (2 << EventFlags::TYPE_SHIFT));
        let e = EventEntry::new(EventCode::PageTabHardwareError, 3, 9, fl, 0x7_7008);
        assert_eq!(e.qwords()[0], 0x4500_0009_0000_0003);
        assert_eq!(e.flags().hw_type(), 2);
        assert!(matches!(
            e.decode(),
            Some(Event::PageTabHardwareError {
                device_id: 3,
                domain_or_pasid: 9,
                address: 0x7_7008,
                ..
            })
        ));
        assert!(matches!(
            EventEntry::new(
                EventCode::DevTabHardwareError,
                2,
                0,
                EventFlags(0),
                0x1_0040
            )
            .decode(),
            Some(Event::DevTabHardwareError {
                device_id: 2,
                address: 0x1_0040,
                ..
            })
        ));
        assert!(matches!(
            EventEntry::new(EventCode::CommandHardwareError, 0, 0, EventFlags(0), 0x9000).decode(),
            Some(Event::CommandHardwareError {
                address: 0x9000,
                ..
            })
        ));
        assert_eq!(
            EventEntry::new(EventCode::InvalidPprRequest, 0, 0, EventFlags(0), 0).decode(),
            Some(Event::Other {
                code: EventCode::InvalidPprRequest
            })
        );
        assert_eq!(EventEntry::from_qwords([0xb << 60, 0]).decode(), None);
    }
}
