//! Fault recording registers and DMA-remapping fault reasons.

use super::regs::{field_value, FRCD_HI, FRCD_LO};
use iommu_core::qword_struct;

qword_struct!(
    /// One primary fault recording register (128 bits): FI 63:12, SID 79:64, T2 92,
    /// PRIV 93, EXE 94, PP 95, FR 103:96, PV 123:104, AT 125:124, T1 126, F 127.
    FaultRecord,
    2
);

/// Request type of a faulted request, from the (T1, T2) pair of a fault record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultRequestType {
    /// T1 = 0, T2 = 0.
    Write,
    /// T1 = 0, T2 = 1.
    PageRequest,
    /// T1 = 1, T2 = 0.
    Read,
    /// T1 = 1, T2 = 1.
    AtomicOp,
}

impl FaultRecord {
    /// A valid (F = 1) record of an untranslated request.
    pub fn new(
        page_addr: u64,
        sid: u16,
        req: FaultRequestType,
        reason: u8,
        pasid: Option<u32>,
        privileged: bool,
    ) -> Self {
        let (t1, t2) = match req {
            FaultRequestType::Write => (0, 0),
            FaultRequestType::PageRequest => (0, 1),
            FaultRequestType::Read => (1, 0),
            FaultRequestType::AtomicOp => (1, 1),
        };
        let mut hi = field_value(FRCD_HI::SID, sid as u64)
            | field_value(FRCD_HI::T2, t2)
            | field_value(FRCD_HI::T1, t1)
            | field_value(FRCD_HI::FR, reason as u64)
            | field_value(FRCD_HI::F, 1);
        if let Some(p) = pasid {
            hi |= field_value(FRCD_HI::PP, 1)
                | field_value(FRCD_HI::PV, p as u64)
                | field_value(FRCD_HI::PRIV, privileged as u64);
        }
        Self::from_qwords([page_addr & !0xfff, hi])
    }
    /// Fault valid bit.
    pub fn valid(&self) -> bool {
        FRCD_HI::F.is_set(self.qword(1))
    }
    /// Faulting page address.
    pub fn fault_info(&self) -> u64 {
        FRCD_LO::FI.read(self.qword(0)) << 12
    }
    /// Source ID.
    pub fn sid(&self) -> u16 {
        FRCD_HI::SID.read(self.qword(1)) as u16
    }
    /// Fault reason.
    pub fn reason(&self) -> u8 {
        FRCD_HI::FR.read(self.qword(1)) as u8
    }
    /// PASID, when the PASID-present bit is set.
    pub fn pasid(&self) -> Option<u32> {
        let hi = self.qword(1);
        FRCD_HI::PP.is_set(hi).then(|| FRCD_HI::PV.read(hi) as u32)
    }
    /// Request type from T1/T2.
    pub fn request_type(&self) -> FaultRequestType {
        let hi = self.qword(1);
        match (FRCD_HI::T1.is_set(hi), FRCD_HI::T2.is_set(hi)) {
            (false, false) => FaultRequestType::Write,
            (false, true) => FaultRequestType::PageRequest,
            (true, false) => FaultRequestType::Read,
            (true, true) => FaultRequestType::AtomicOp,
        }
    }
}

macro_rules! fault_reasons {
    ($($(#[$m:meta])* $name:ident = $code:expr, $text:expr;)*) => {
        /// A DMA-remapping fault reason (FRCD.FR).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FaultReason {
            $($(#[$m])* $name,)*
        }

        impl FaultReason {
            /// Every reason defined here.
            pub const ALL: &'static [FaultReason] = &[$(FaultReason::$name,)*];

            /// The 8-bit code.
            pub const fn code(self) -> u8 {
                match self {
                    $(FaultReason::$name => $code,)*
                }
            }
            /// The condition, in the words of the specification as Linux prints it.
            pub const fn description(self) -> &'static str {
                match self {
                    $(FaultReason::$name => $text,)*
                }
            }
            /// The reason with `code`, if defined here.
            pub fn from_code(code: u8) -> Option<Self> {
                match code {
                    $($code => Some(FaultReason::$name),)*
                    _ => None,
                }
            }
        }
    };
}

fault_reasons! {
    /// 0x1: root entry not present.
    RootEntryNotPresent = 0x01, "Present bit in root entry is clear";
    /// 0x2: context entry not present.
    ContextEntryNotPresent = 0x02, "Present bit in context entry is clear";
    /// 0x3: invalid programming of a context entry.
    ContextEntryInvalid = 0x03, "Invalid context entry";
    /// 0x4: input address beyond MGAW / the context's AGAW.
    AddressBeyondMgaw = 0x04, "Access beyond MGAW";
    /// 0x5: write to a page without write permission.
    WriteNotAllowed = 0x05, "PTE Write access is not set";
    /// 0x6: read from a page without read permission.
    ReadNotAllowed = 0x06, "PTE Read access is not set";
    /// 0x7: error accessing a second-stage paging entry.
    PagingEntryAccess = 0x07, "Next page table ptr is invalid";
    /// 0x8: error accessing the root table.
    RootTableAccess = 0x08, "Root table address invalid";
    /// 0x9: error accessing a context table.
    ContextTableAccess = 0x09, "Context table ptr is invalid";
    /// 0xA: reserved field set in a present root entry.
    RootEntryReserved = 0x0A, "non-zero reserved fields in RTP";
    /// 0xB: reserved field set in a present context entry.
    ContextEntryReserved = 0x0B, "non-zero reserved fields in CTP";
    /// 0xC: reserved field set in a present second-stage paging entry.
    PagingEntryReserved = 0x0C, "non-zero reserved fields in PTE";
    /// 0xD: request blocked by the context entry's translation type.
    TranslationTypeBlocked = 0x0D, "PCE for translation request specifies blocking";
    /// 0x30: invalid root table address (scalable mode).
    SmInvalidRootTableAddress = 0x30, "SM: Invalid Root Table Address";
    /// 0x31: RTADDR.TTM is legacy for a request with PASID (QEMU also uses it for an
    /// invalid TTM).
    SmTtmForPasidRequest = 0x31, "SM: TTM 0 for request with PASID";
    /// 0x38: error accessing a scalable-mode root entry.
    SmRootEntryAccess = 0x38, "SM: Error attempting to access Root Entry";
    /// 0x39: scalable-mode root entry (half) not present.
    SmRootEntryNotPresent = 0x39, "SM: Present bit in Root Entry is clear";
    /// 0x3A: reserved field set in a scalable-mode root entry.
    SmRootEntryReserved = 0x3A, "SM: Non-zero reserved field set in Root Entry";
    /// 0x40: error accessing a scalable-mode context entry.
    SmContextEntryAccess = 0x40, "SM: Error attempting to access Context Entry";
    /// 0x41: scalable-mode context entry not present.
    SmContextEntryNotPresent = 0x41, "SM: Present bit in Context Entry is clear";
    /// 0x42: reserved field set in a scalable-mode context entry.
    SmContextEntryReserved = 0x42, "SM: Non-zero reserved field set in the Context Entry";
    /// 0x43: invalid scalable-mode context entry.
    SmContextEntryInvalid = 0x43, "SM: Invalid Context Entry";
    /// 0x44: DTE clear for a translation request.
    SmDteClear = 0x44, "SM: DTE field in Context Entry is clear";
    /// 0x45: PASIDE clear for a request with PASID.
    SmPasidDisabled = 0x45, "SM: PASID Enable field in Context Entry is clear";
    /// 0x46: PASID beyond the PASID directory size.
    SmPasidTooLarge = 0x46, "SM: PASID is larger than the max in Context Entry";
    /// 0x47: PRE clear for a page request.
    SmPreClear = 0x47, "SM: PRE field in Context-Entry is clear";
    /// 0x48: RID_PASID field error.
    SmRidPasidError = 0x48, "SM: RID_PASID field error in Context-Entry";
    /// 0x50: error accessing a PASID-directory entry.
    SmPasidDirAccess = 0x50, "SM: Error attempting to access the PASID Directory Entry";
    /// 0x51: PASID-directory entry not present.
    SmPasidDirNotPresent = 0x51, "SM: Present bit in Directory Entry is clear";
    /// 0x52: reserved field set in a PASID-directory entry.
    SmPasidDirReserved = 0x52, "SM: Non-zero reserved field set in PASID Directory Entry";
    /// 0x58: error accessing a PASID-table entry.
    SmPasidEntryAccess = 0x58, "SM: Error attempting to access PASID Table Entry";
    /// 0x59: PASID-table entry not present.
    SmPasidEntryNotPresent = 0x59, "SM: Present bit in PASID Table Entry is clear";
    /// 0x5A: reserved field set in a PASID-table entry.
    SmPasidEntryReserved = 0x5A, "SM: Non-zero reserved field set in PASID Table Entry";
    /// 0x5B: invalid PASID-table entry programming.
    SmPasidEntryInvalid = 0x5B, "SM: Invalid Scalable-Mode PASID Table Entry";
    /// 0x5C: ERE clear for an execute request.
    SmEreClear = 0x5C, "SM: ERE field is clear in PASID Table Entry";
    /// 0x5D: SRE clear for a supervisor request.
    SmSreClear = 0x5D, "SM: SRE field is clear in PASID Table Entry";
    /// 0x70: error accessing a first-stage paging entry.
    SmFlEntryAccess = 0x70, "SM: Error attempting to access first-level paging entry";
    /// 0x71: first-stage paging entry not present.
    SmFlEntryNotPresent = 0x71, "SM: Present bit in first-level paging entry is clear";
    /// 0x72: reserved field set in a first-stage paging entry.
    SmFlEntryReserved = 0x72, "SM: Non-zero reserved field set in first-level paging entry";
    // 0x73: Linux names it "Error attempting to access FL-PML4 entry"; QEMU uses 0x73
    // for an invalid first-stage table pointer in the PASID entry. Not used here.
    /// 0x78: error accessing a second-stage paging entry.
    SmSlEntryAccess = 0x78, "SM: Error attempting to access second-level paging entry";
    /// 0x79: read/write permission error in a second-stage paging entry.
    SmSlPermission = 0x79, "SM: Read/Write permission error in second-level paging entry";
    /// 0x7A: reserved field set in a second-stage paging entry.
    SmSlEntryReserved = 0x7A, "SM: Non-zero reserved field set in second-level paging entry";
    /// 0x7B: invalid second-stage page-table pointer.
    SmSlPointerInvalid = 0x7B, "SM: Invalid second-level page table pointer";
    /// 0x80: address not canonical for first-stage translation.
    SmNonCanonical = 0x80, "SM: Address in first-level translation is not canonical";
    /// 0x81: user request to a supervisor page (U/S = 0).
    SmUserSupervisor = 0x81, "SM: U/S set 0 for first-level translation with user privilege";
    /// 0x82: no execute permission.
    SmNoExecute = 0x82, "SM: No execute permission for request with PASID and ER=1";
    /// 0x83: input address beyond the translation's address width.
    SmAddressBeyondMax = 0x83, "SM: Address beyond the DMA hardware max";
    /// 0x84: second-stage entry address beyond the maximum.
    SmSlAddressBeyondMax = 0x84, "SM: Second-level entry address beyond the max";
    /// 0x85: write or atomic request without write permission.
    SmNoWrite = 0x85, "SM: No write permission for Write/AtomicOp request";
    /// 0x86: read or atomic request without read permission.
    SmNoRead = 0x86, "SM: No read permission for Read/AtomicOp request";
    /// 0x87: invalid address-interrupt address.
    SmInterruptAddress = 0x87, "SM: Invalid address-interrupt address";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_codes_match_qemu_enum_and_linux_strings() {
        // QEMU VTDFaultReason: VTD_FR_ROOT_ENTRY_P = 1 ... VTD_FR_CONTEXT_ENTRY_TT = 0xd;
        // Linux dmar.c dma_remap_fault_reasons[] indexed by code.
        assert_eq!(FaultReason::RootEntryNotPresent.code(), 0x1);
        assert_eq!(FaultReason::ContextEntryInvalid.code(), 0x3);
        assert_eq!(FaultReason::AddressBeyondMgaw.code(), 0x4);
        assert_eq!(FaultReason::WriteNotAllowed.code(), 0x5);
        assert_eq!(FaultReason::ReadNotAllowed.code(), 0x6);
        assert_eq!(FaultReason::RootTableAccess.code(), 0x8);
        assert_eq!(FaultReason::PagingEntryReserved.code(), 0xC);
        assert_eq!(FaultReason::TranslationTypeBlocked.code(), 0xD);
        assert_eq!(
            FaultReason::WriteNotAllowed.description(),
            "PTE Write access is not set"
        );
    }

    #[test]
    fn scalable_codes_match_linux_and_virtualbox() {
        // Linux dmar.c dma_remap_sm_fault_reasons[code - 0x30]; VirtualBox iommu-intel.h:
        // SCT.1–9 = 0x40–0x48, SPD.1–3 = 0x50–0x52, SPT.1–6 = 0x58–0x5D,
        // SSL.1–6 = 0x78–0x7D, SGN.1–10 = 0x80–0x89. QEMU: VTD_FR_PASID_TABLE_INV 0x58,
        // VTD_FR_FS_PAGING_ENTRY_RSVD 0x72, VTD_FR_FS_NON_CANONICAL 0x80,
        // VTD_FR_FS_PAGING_ENTRY_US 0x81, VTD_FR_SM_WRITE 0x85.
        assert_eq!(FaultReason::SmInvalidRootTableAddress.code(), 0x30);
        assert_eq!(FaultReason::SmRootEntryNotPresent.code(), 0x39);
        assert_eq!(FaultReason::SmContextEntryNotPresent.code(), 0x41);
        assert_eq!(FaultReason::SmRidPasidError.code(), 0x48);
        assert_eq!(FaultReason::SmPasidDirNotPresent.code(), 0x51);
        assert_eq!(FaultReason::SmPasidEntryAccess.code(), 0x58);
        assert_eq!(FaultReason::SmSreClear.code(), 0x5D);
        assert_eq!(FaultReason::SmFlEntryReserved.code(), 0x72);
        assert_eq!(FaultReason::SmSlEntryReserved.code(), 0x7A);
        assert_eq!(FaultReason::SmNonCanonical.code(), 0x80);
        assert_eq!(FaultReason::SmUserSupervisor.code(), 0x81);
        assert_eq!(FaultReason::SmNoWrite.code(), 0x85);
        assert_eq!(FaultReason::SmNoRead.code(), 0x86);
        assert_eq!(
            FaultReason::SmPasidEntryNotPresent.description(),
            "SM: Present bit in PASID Table Entry is clear"
        );
        for r in FaultReason::ALL {
            assert_eq!(FaultReason::from_code(r.code()), Some(*r));
        }
        assert_eq!(FaultReason::from_code(0x20), None);
    }

    #[test]
    fn fault_record_matches_linux_decoding() {
        // Linux dmar.c dmar_fault: dword 3 bit 31 = F, bit 30 = type (1 = read),
        // reason = dword3 & 0xff, pasid = (dword3 >> 8) & 0xfffff; dword 2: SID 15:0,
        // PASID present bit 31; qword 0 & PAGE_MASK = address.
        let r = FaultRecord::new(
            0x1234_5678,
            0x0308,
            FaultRequestType::Read,
            0x59,
            Some(0x42),
            false,
        );
        let hi = r.qword(1);
        let (dw2, dw3) = (hi as u32, (hi >> 32) as u32);
        assert_eq!(dw3 >> 31, 1);
        assert_eq!((dw3 >> 30) & 1, 1);
        assert_eq!(dw3 & 0xff, 0x59);
        assert_eq!((dw3 >> 8) & 0xfffff, 0x42);
        assert_eq!(dw2 & 0xffff, 0x0308);
        assert_eq!(dw2 >> 31, 1);
        assert_eq!(r.qword(0), 0x1234_5000);
        assert!(r.valid());
        assert_eq!(r.reason(), 0x59);
        assert_eq!(r.pasid(), Some(0x42));
        assert_eq!(r.sid(), 0x0308);
        assert_eq!(r.fault_info(), 0x1234_5000);
        assert_eq!(r.request_type(), FaultRequestType::Read);
        let w = FaultRecord::new(0, 1, FaultRequestType::Write, 5, None, true);
        assert_eq!((w.qword(1) >> 62) & 1, 0);
        assert_eq!(w.pasid(), None);
        // PRIV is only meaningful with a PASID.
        assert_eq!((w.qword(1) >> 29) & 1, 0);
        assert_eq!(w.request_type(), FaultRequestType::Write);
    }
}
