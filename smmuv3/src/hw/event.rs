//! Event-queue records (32 bytes) and event types, reference `smmuv3.md` §10, §13 and
//! §15 (sources per row there; Linux `arm-smmu-v3.h` `EVTQ_*`; QEMU
//! `smmuv3-internal.h` `EVT_SET_*`).

use iommu_core::entry::genmask;
use iommu_core::{qword_fields, qword_struct};

qword_struct!(
    /// One event record: 4 qwords.
    Event,
    4
);

/// Event types (dw0\[7:0\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// 0x01: unsupported upstream transaction.
    FUut = 0x01,
    /// 0x02: StreamID out of range or no valid L1STD for it (only with CR2.RECINVSID).
    CBadStreamid = 0x02,
    /// 0x03: external abort fetching an STE.
    FSteFetch = 0x03,
    /// 0x04: STE invalid (V = 0) or ILLEGAL.
    CBadSte = 0x04,
    /// 0x05: bad ATS translation request.
    FBadAtsTreq = 0x05,
    /// 0x06: transaction without SubstreamID on a stream whose S1DSS refuses it, or
    /// SubstreamID 0 with S1DSS = SSID0.
    FStreamDisabled = 0x06,
    /// 0x07: translation forbidden.
    FTranslForbidden = 0x07,
    /// 0x08: SubstreamID out of range or its L1CD invalid.
    CBadSubstreamid = 0x08,
    /// 0x09: external abort fetching a CD.
    FCdFetch = 0x09,
    /// 0x0A: CD invalid or ILLEGAL.
    CBadCd = 0x0A,
    /// 0x0B: external abort on a translation-table walk.
    FWalkEabt = 0x0B,
    /// 0x10: translation fault (invalid descriptor, input outside the range).
    FTranslation = 0x10,
    /// 0x11: address size fault (output beyond IPS/S2PS).
    FAddrSize = 0x11,
    /// 0x12: access flag fault.
    FAccess = 0x12,
    /// 0x13: permission fault.
    FPermission = 0x13,
    /// 0x20: TLB conflict.
    FTlbConflict = 0x20,
    /// 0x21: configuration cache conflict.
    FCfgConflict = 0x21,
    /// 0x24: PRI page request.
    EPageRequest = 0x24,
    /// 0x25: external abort fetching a VMS.
    FVmsFetch = 0x25,
}

impl EventType {
    /// Every event type listed here.
    pub const ALL: [EventType; 19] = [
        EventType::FUut,
        EventType::CBadStreamid,
        EventType::FSteFetch,
        EventType::CBadSte,
        EventType::FBadAtsTreq,
        EventType::FStreamDisabled,
        EventType::FTranslForbidden,
        EventType::CBadSubstreamid,
        EventType::FCdFetch,
        EventType::CBadCd,
        EventType::FWalkEabt,
        EventType::FTranslation,
        EventType::FAddrSize,
        EventType::FAccess,
        EventType::FPermission,
        EventType::FTlbConflict,
        EventType::FCfgConflict,
        EventType::EPageRequest,
        EventType::FVmsFetch,
    ];
    /// The type of code `v` (`None` if unknown).
    pub fn from_code(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == v)
    }
    /// The name in the specification's words (e.g. `"F_TRANSLATION"`).
    pub const fn name(self) -> &'static str {
        match self {
            EventType::FUut => "F_UUT",
            EventType::CBadStreamid => "C_BAD_STREAMID",
            EventType::FSteFetch => "F_STE_FETCH",
            EventType::CBadSte => "C_BAD_STE",
            EventType::FBadAtsTreq => "F_BAD_ATS_TREQ",
            EventType::FStreamDisabled => "F_STREAM_DISABLED",
            EventType::FTranslForbidden => "F_TRANSL_FORBIDDEN",
            EventType::CBadSubstreamid => "C_BAD_SUBSTREAMID",
            EventType::FCdFetch => "F_CD_FETCH",
            EventType::CBadCd => "C_BAD_CD",
            EventType::FWalkEabt => "F_WALK_EABT",
            EventType::FTranslation => "F_TRANSLATION",
            EventType::FAddrSize => "F_ADDR_SIZE",
            EventType::FAccess => "F_ACCESS",
            EventType::FPermission => "F_PERMISSION",
            EventType::FTlbConflict => "F_TLB_CONFLICT",
            EventType::FCfgConflict => "F_CFG_CONFLICT",
            EventType::EPageRequest => "E_PAGE_REQUEST",
            EventType::FVmsFetch => "F_VMS_FETCH",
        }
    }
    /// Whether CD.R / STE.S2R can suppress recording (the four translation faults;
    /// reference §10, IHI0070 §5.5).
    pub const fn suppressible(self) -> bool {
        matches!(
            self,
            EventType::FTranslation
                | EventType::FAddrSize
                | EventType::FAccess
                | EventType::FPermission
        )
    }
}

/// What a faulting access was for (CLASS, dw1\[41:40\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// 0: fetching a CD (or L1CD).
    Cd,
    /// 1: a stage-1 translation-table walk.
    Tt,
    /// 2: the input address of the transaction.
    In,
}

impl Class {
    /// Decodes CLASS; `None` for the reserved 3.
    pub const fn from_bits(v: u64) -> Option<Self> {
        match v {
            0 => Some(Class::Cd),
            1 => Some(Class::Tt),
            2 => Some(Class::In),
            _ => None,
        }
    }
    /// The encoding.
    pub const fn bits(self) -> u64 {
        match self {
            Class::Cd => 0,
            Class::Tt => 1,
            Class::In => 2,
        }
    }
}

/// Bits of dw3 holding the IPA (51:12; G.b 55:12, Linux masks to 51).
pub const IPA_MASK: u64 = genmask(51, 12);
/// Bits of dw3 holding FetchAddr (51:3; G.b 55:3).
pub const FETCH_ADDR_MASK: u64 = genmask(51, 3);

qword_fields!(Event {
    /// Event type code (dw0\[7:0\]); see [`Event::event_type`].
    code / set_code: 7, 0;
    /// SSV (dw0\[11\]): SubstreamID valid.
    ssv / set_ssv: 11;
    /// SubstreamID (dw0\[31:12\]).
    ssid / set_ssid: 31, 12;
    /// StreamID (dw0\[63:32\]).
    sid / set_sid: 63, 32;
    /// STAG (dw1\[15:0\]): stall tag.
    stag / set_stag: 79, 64;
    /// Stall (dw1\[31\]).
    stall / set_stall: 95;
    /// PnU (dw1\[33\]): 1 privileged.
    pnu / set_pnu: 97;
    /// InD (dw1\[34\]): 1 instruction.
    ind / set_ind: 98;
    /// RnW (dw1\[35\]): 1 read, 0 write.
    rnw / set_rnw: 99;
    /// S2 (dw1\[39\]): the fault is in stage 2.
    s2 / set_s2: 103;
    /// CLASS, raw (dw1\[41:40\]); see [`Event::class`].
    class_bits / set_class_bits: 105, 104;
    /// TTRnW (dw1\[44\], F_PERMISSION with CLASS TT; position from Linux only).
    ttrnw / set_ttrnw: 108;
    /// InputAddr (dw2): the transaction's input address.
    input_addr / set_input_addr: 191, 128;
});

impl Event {
    /// A record of `ty` for StreamID `sid`, every other field 0.
    pub fn new(ty: EventType, sid: u32) -> Self {
        let mut e = Self::default();
        e.set_code(ty as u64);
        e.set_sid(sid as u64);
        e
    }
    /// The event type (`None` for an unknown code).
    pub fn event_type(&self) -> Option<EventType> {
        EventType::from_code(self.code() as u8)
    }
    /// CLASS (`None` for the reserved 3).
    pub fn class(&self) -> Option<Class> {
        Class::from_bits(self.class_bits())
    }
    /// Sets CLASS.
    pub fn set_class(&mut self, c: Class) {
        self.set_class_bits(c.bits());
    }
    /// Sets SSV and SubstreamID (`None`: SSV = 0).
    pub fn set_substream(&mut self, ssid: Option<u32>) {
        self.set_ssv(ssid.is_some());
        self.set_ssid(ssid.unwrap_or(0) as u64);
    }
    /// The SubstreamID when SSV = 1.
    pub fn substream(&self) -> Option<u32> {
        self.ssv().then_some(self.ssid() as u32)
    }
    /// IPA (dw3\[51:12\]) of a stage-2 fault.
    pub fn ipa(&self) -> u64 {
        self.qwords()[3] & IPA_MASK
    }
    /// Sets the IPA (bits outside 51:12 dropped).
    pub fn set_ipa(&mut self, ipa: u64) {
        self.set_bits(255, 192, ipa & IPA_MASK);
    }
    /// FetchAddr (dw3\[51:3\]) of F_STE_FETCH, F_CD_FETCH, F_WALK_EABT. (QEMU writes
    /// F_CD_FETCH's address to dw2; reference §15 follows the specification.)
    pub fn fetch_addr(&self) -> u64 {
        self.qwords()[3] & FETCH_ADDR_MASK
    }
    /// Sets FetchAddr (bits outside 51:3 dropped).
    pub fn set_fetch_addr(&mut self, pa: u64) {
        self.set_bits(255, 192, pa & FETCH_ADDR_MASK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Event codes, reference §10 (Linux `EVT_ID_TRANSLATION_FAULT` 0x10,
    /// `EVT_ID_ADDR_SIZE_FAULT` 0x11, `EVT_ID_ACCESS_FAULT` 0x12,
    /// `EVT_ID_PERMISSION_FAULT` 0x13, `EVT_ID_BAD_STE_CONFIG` 0x04 …; QEMU
    /// `SMMU_EVT_*`; IHI0070 for 0x25).
    #[test]
    fn event_codes_known_answers() {
        let want = [
            (EventType::FUut, 0x01, "F_UUT"),
            (EventType::CBadStreamid, 0x02, "C_BAD_STREAMID"),
            (EventType::FSteFetch, 0x03, "F_STE_FETCH"),
            (EventType::CBadSte, 0x04, "C_BAD_STE"),
            (EventType::FBadAtsTreq, 0x05, "F_BAD_ATS_TREQ"),
            (EventType::FStreamDisabled, 0x06, "F_STREAM_DISABLED"),
            (EventType::FTranslForbidden, 0x07, "F_TRANSL_FORBIDDEN"),
            (EventType::CBadSubstreamid, 0x08, "C_BAD_SUBSTREAMID"),
            (EventType::FCdFetch, 0x09, "F_CD_FETCH"),
            (EventType::CBadCd, 0x0a, "C_BAD_CD"),
            (EventType::FWalkEabt, 0x0b, "F_WALK_EABT"),
            (EventType::FTranslation, 0x10, "F_TRANSLATION"),
            (EventType::FAddrSize, 0x11, "F_ADDR_SIZE"),
            (EventType::FAccess, 0x12, "F_ACCESS"),
            (EventType::FPermission, 0x13, "F_PERMISSION"),
            (EventType::FTlbConflict, 0x20, "F_TLB_CONFLICT"),
            (EventType::FCfgConflict, 0x21, "F_CFG_CONFLICT"),
            (EventType::EPageRequest, 0x24, "E_PAGE_REQUEST"),
            (EventType::FVmsFetch, 0x25, "F_VMS_FETCH"),
        ];
        for (t, code, name) in want {
            assert_eq!((t as u8, t.name()), (code, name));
            assert_eq!(EventType::from_code(code), Some(t));
        }
        assert_eq!(EventType::from_code(0x0c), None);
        let sup: alloc::vec::Vec<_> = EventType::ALL
            .into_iter()
            .filter(|t| t.suppressible())
            .collect();
        assert_eq!(
            sup,
            [
                EventType::FTranslation,
                EventType::FAddrSize,
                EventType::FAccess,
                EventType::FPermission
            ]
        );
    }

    /// An F_TRANSLATION record as QEMU `smmuv3_record_event` lays it out (EVT_SET_TYPE
    /// dw0[7:0], EVT_SET_SID dw0[63:32], EVT_SET_RNW dw1[35], EVT_SET_CLASS dw1[41:40],
    /// EVT_SET_ADDR dw2) and Linux decodes it (`EVTQ_0_ID`, `EVTQ_0_SID`, `EVTQ_1_RnW`
    /// 35, `EVTQ_1_CLASS` (41,40), `EVTQ_2_ADDR`): a read from StreamID 0x10 at
    /// 0xdead_b000, stage 1, CLASS IN.
    #[test]
    fn f_translation_known_answer() {
        let mut e = Event::new(EventType::FTranslation, 0x10);
        e.set_rnw(true);
        e.set_class(Class::In);
        e.set_input_addr(0xdead_b000);
        assert_eq!(
            e.qwords(),
            [0x0000_0010_0000_0010, 0x0000_0208_0000_0000, 0xdead_b000, 0]
        );
        assert_eq!(e.event_type(), Some(EventType::FTranslation));
        assert_eq!(e.class(), Some(Class::In));
        assert_eq!(e.substream(), None);
    }

    /// A stage-2 F_PERMISSION with SubstreamID, stall tag and IPA (positions: reference
    /// §10 and §15; SSV dw0[11], SubstreamID dw0[31:12], STAG dw1[15:0], Stall dw1[31],
    /// PnU dw1[33], InD dw1[34], S2 dw1[39], TTRnW dw1[44] (Linux only), IPA dw3[51:12]).
    #[test]
    fn stage2_fault_fields_known_answer() {
        let mut e = Event::new(EventType::FPermission, 3);
        e.set_substream(Some(0x12345));
        e.set_stag(0xbeef);
        e.set_stall(true);
        e.set_pnu(true);
        e.set_ind(true);
        e.set_s2(true);
        e.set_class(Class::Tt);
        e.set_ttrnw(true);
        e.set_input_addr(0x1000);
        e.set_ipa(0x8_0000_1fff);
        assert_eq!(
            e.qwords(),
            [
                0x0000_0003_1234_5813,
                0x0000_1186_8000_beef,
                0x1000,
                0x8_0000_1000
            ]
        );
        assert_eq!(e.substream(), Some(0x12345));
        assert_eq!(e.ipa(), 0x8_0000_1000);
        let mut f = Event::new(EventType::FWalkEabt, 1);
        f.set_fetch_addr(0x4000_0008);
        assert_eq!(f.fetch_addr(), 0x4000_0008);
        assert_eq!(Event::from_qwords([0, 3 << 40, 0, 0]).class(), None);
    }
}
