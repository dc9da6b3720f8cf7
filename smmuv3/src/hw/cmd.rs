//! Command-queue entries (16 bytes) and their opcodes, reference `smmuv3.md` §9 and
//! §16 (sources per row there; Linux `arm-smmu-v3.h` `CMDQ_*`; QEMU
//! `smmuv3-internal.h` `CMD_*`).

use super::Granule;
use iommu_core::entry::genmask;
use iommu_core::{qword_fields, qword_struct};

qword_struct!(
    /// One command: 2 qwords, the opcode in bits 7:0.
    Cmd,
    2
);

/// Command opcodes (dw0\[7:0\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// 0x01 CMD_PREFETCH_CONFIG.
    PrefetchConfig = 0x01,
    /// 0x03 CMD_CFGI_STE.
    CfgiSte = 0x03,
    /// 0x04 CMD_CFGI_STE_RANGE (Range 31: CMD_CFGI_ALL).
    CfgiSteRange = 0x04,
    /// 0x05 CMD_CFGI_CD.
    CfgiCd = 0x05,
    /// 0x06 CMD_CFGI_CD_ALL.
    CfgiCdAll = 0x06,
    /// 0x10 CMD_TLBI_NH_ALL.
    TlbiNhAll = 0x10,
    /// 0x11 CMD_TLBI_NH_ASID.
    TlbiNhAsid = 0x11,
    /// 0x12 CMD_TLBI_NH_VA.
    TlbiNhVa = 0x12,
    /// 0x13 CMD_TLBI_NH_VAA.
    TlbiNhVaa = 0x13,
    /// 0x20 CMD_TLBI_EL2_ALL.
    TlbiEl2All = 0x20,
    /// 0x21 CMD_TLBI_EL2_ASID.
    TlbiEl2Asid = 0x21,
    /// 0x22 CMD_TLBI_EL2_VA.
    TlbiEl2Va = 0x22,
    /// 0x28 CMD_TLBI_S12_VMALL.
    TlbiS12Vmall = 0x28,
    /// 0x2A CMD_TLBI_S2_IPA.
    TlbiS2Ipa = 0x2A,
    /// 0x30 CMD_TLBI_NSNH_ALL.
    TlbiNsnhAll = 0x30,
    /// 0x40 CMD_ATC_INV.
    AtcInv = 0x40,
    /// 0x41 CMD_PRI_RESP.
    PriResp = 0x41,
    /// 0x44 CMD_RESUME.
    Resume = 0x44,
    /// 0x45 CMD_STALL_TERM.
    StallTerm = 0x45,
    /// 0x46 CMD_SYNC.
    Sync = 0x46,
}

impl Opcode {
    /// Every opcode listed here.
    pub const ALL: [Opcode; 20] = [
        Opcode::PrefetchConfig,
        Opcode::CfgiSte,
        Opcode::CfgiSteRange,
        Opcode::CfgiCd,
        Opcode::CfgiCdAll,
        Opcode::TlbiNhAll,
        Opcode::TlbiNhAsid,
        Opcode::TlbiNhVa,
        Opcode::TlbiNhVaa,
        Opcode::TlbiEl2All,
        Opcode::TlbiEl2Asid,
        Opcode::TlbiEl2Va,
        Opcode::TlbiS12Vmall,
        Opcode::TlbiS2Ipa,
        Opcode::TlbiNsnhAll,
        Opcode::AtcInv,
        Opcode::PriResp,
        Opcode::Resume,
        Opcode::StallTerm,
        Opcode::Sync,
    ];
    /// The opcode of byte `v`; `None` for one this crate does not know (the SMMU
    /// raises CERROR_ILL for an unimplemented opcode). 0x07 is CMD_CFGI_VMS_PIDM,
    /// never CFGI_ALL (QEMU's internal enum value 7 is not an opcode; reference §9).
    pub fn from_byte(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|o| *o as u8 == v)
    }
}

/// CMD_SYNC completion signal CS (dw0\[13:12\]); 3 is CERROR_ILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncCs {
    /// 0: no signal (software polls CMDQ_CONS).
    None,
    /// 1: SIG_IRQ: MSI write of MSIData to MSIAddress (if non-zero) and/or wired IRQ.
    Irq,
    /// 2: SIG_SEV: send an event (WFE wake-up), as NONE unless IDR0.SEV.
    Sev,
}

impl SyncCs {
    /// Decodes CS; `None` for the illegal 3.
    pub const fn from_bits(v: u64) -> Option<Self> {
        match v {
            0 => Some(SyncCs::None),
            1 => Some(SyncCs::Irq),
            2 => Some(SyncCs::Sev),
            _ => None,
        }
    }
    /// The encoding.
    pub const fn bits(self) -> u64 {
        match self {
            SyncCs::None => 0,
            SyncCs::Irq => 1,
            SyncCs::Sev => 2,
        }
    }
}

/// Bits of dw1 holding a TLBI address (63:12).
pub const TLBI_ADDR_MASK: u64 = genmask(63, 12);
/// Bits of dw1 holding a TLBI_S2_IPA address (51:12).
pub const TLBI_IPA_MASK: u64 = genmask(51, 12);
/// Bits of dw1 holding CMD_SYNC's MSIAddress (51:2).
pub const SYNC_MSI_ADDR_MASK: u64 = genmask(51, 2);

qword_fields!(Cmd {
    /// Opcode (dw0\[7:0\]).
    opcode_byte / set_opcode_byte: 7, 0;
    /// SSV (dw0\[11\]): SubstreamID valid (ATC_INV).
    ssv / set_ssv: 11;
    /// SubstreamID (dw0\[31:12\]: CFGI_CD, ATC_INV).
    ssid / set_ssid: 31, 12;
    /// StreamID (dw0\[63:32\]: PREFETCH_CONFIG, CFGI_*, ATC_INV).
    sid / set_sid: 63, 32;
    /// NUM (dw0\[16:12\]): range TLBI, (NUM + 1) · 2^SCALE granules.
    num / set_num: 16, 12;
    /// SCALE (dw0\[24:20\]): range TLBI.
    scale / set_scale: 24, 20;
    /// VMID (dw0\[47:32\]: TLBI commands).
    vmid / set_vmid: 47, 32;
    /// ASID (dw0\[63:48\]: TLBI commands).
    asid / set_asid: 63, 48;
    /// CS (dw0\[13:12\]: CMD_SYNC), raw; see [`Cmd::sync_cs`].
    sync_cs_bits / set_sync_cs_bits: 13, 12;
    /// MSH (dw0\[23:22\]: CMD_SYNC MSI shareability).
    sync_msh / set_sync_msh: 23, 22;
    /// MSIAttr (dw0\[27:24\]: CMD_SYNC MSI memory type, like STE.MemAttr).
    sync_msi_attr / set_sync_msi_attr: 27, 24;
    /// MSIData (dw0\[63:32\]: CMD_SYNC).
    sync_msi_data / set_sync_msi_data: 63, 32;
    /// Leaf (dw1\[0\]: CFGI_STE, CFGI_CD, TLBI_*_VA, TLBI_S2_IPA).
    leaf / set_leaf: 64;
    /// Range (dw1\[4:0\]: CFGI_STE_RANGE, 2^(Range+1) StreamIDs).
    range / set_range: 68, 64;
    /// TTL (dw1\[9:8\]): leaf level hint of a TLBI by address.
    ttl / set_ttl: 73, 72;
    /// TG (dw1\[11:10\]): granule of a range or TTL TLBI (0 none).
    tg_bits / set_tg_bits: 75, 74;
});

impl Cmd {
    /// A command with `op` and every other field 0.
    pub fn new(op: Opcode) -> Self {
        Self::from_qwords([op as u64, 0])
    }
    /// The opcode (`None` if unknown).
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_byte(self.opcode_byte() as u8)
    }
    /// CMD_CFGI_STE for `sid` (Leaf 1: only the STE; 0: also the L1STD on the way).
    pub fn cfgi_ste(sid: u32, leaf: bool) -> Self {
        let mut c = Self::new(Opcode::CfgiSte);
        c.set_sid(sid as u64);
        c.set_leaf(leaf);
        c
    }
    /// CMD_CFGI_STE_RANGE: the aligned block of 2^(range+1) StreamIDs holding `sid`.
    pub fn cfgi_ste_range(sid: u32, range: u8) -> Self {
        let mut c = Self::new(Opcode::CfgiSteRange);
        c.set_sid(sid as u64);
        c.set_range(range as u64);
        c
    }
    /// CMD_CFGI_ALL: CFGI_STE_RANGE with Range 31 (reference §9).
    pub fn cfgi_all() -> Self {
        Self::cfgi_ste_range(0, 31)
    }
    /// CMD_CFGI_CD for SubstreamID `ssid` of `sid` (Leaf 0: also the L1CD).
    pub fn cfgi_cd(sid: u32, ssid: u32, leaf: bool) -> Self {
        let mut c = Self::new(Opcode::CfgiCd);
        c.set_sid(sid as u64);
        c.set_ssid(ssid as u64);
        c.set_leaf(leaf);
        c
    }
    /// CMD_CFGI_CD_ALL for `sid`.
    pub fn cfgi_cd_all(sid: u32) -> Self {
        let mut c = Self::new(Opcode::CfgiCdAll);
        c.set_sid(sid as u64);
        c
    }
    /// A TLBI by ASID and/or VMID (TLBI_NH_ASID, TLBI_S12_VMALL, TLBI_EL2_ASID).
    pub fn tlbi(op: Opcode, vmid: u16, asid: u16) -> Self {
        let mut c = Self::new(op);
        c.set_vmid(vmid as u64);
        c.set_asid(asid as u64);
        c
    }
    /// A TLBI by address (TLBI_NH_VA, TLBI_NH_VAA, TLBI_EL2_VA, TLBI_S2_IPA) of `addr`
    /// with `leaf`, and TTL and TG hints when `ttl` is given with its granule.
    pub fn tlbi_addr(
        op: Opcode,
        vmid: u16,
        asid: u16,
        addr: u64,
        leaf: bool,
        ttl: Option<(u8, Granule)>,
    ) -> Self {
        let mut c = Self::tlbi(op, vmid, asid);
        let mask = if op == Opcode::TlbiS2Ipa {
            TLBI_IPA_MASK
        } else {
            TLBI_ADDR_MASK
        };
        c.set_leaf(leaf);
        if let Some((ttl, g)) = ttl {
            c.set_ttl(ttl as u64);
            c.set_tg_bits(g.tlbi_tg() as u64);
        }
        let q = c.qwords();
        Self::from_qwords([q[0], q[1] | (addr & mask)])
    }
    /// The address of a TLBI by address (dw1\[63:12\]; 51:12 for TLBI_S2_IPA).
    pub fn tlbi_address(&self) -> u64 {
        let mask = if self.opcode() == Some(Opcode::TlbiS2Ipa) {
            TLBI_IPA_MASK
        } else {
            TLBI_ADDR_MASK
        };
        self.qwords()[1] & mask
    }
    /// CMD_SYNC with `cs`, and an MSI of `data` to `msi_addr` (0: none) with
    /// shareability `msh` and memory type `attr`.
    pub fn sync(cs: SyncCs, msi_addr: u64, data: u32, msh: u8, attr: u8) -> Self {
        let mut c = Self::new(Opcode::Sync);
        c.set_sync_cs_bits(cs.bits());
        c.set_sync_msh(msh as u64);
        c.set_sync_msi_attr(attr as u64);
        c.set_sync_msi_data(data as u64);
        let q = c.qwords();
        Self::from_qwords([q[0], msi_addr & SYNC_MSI_ADDR_MASK])
    }
    /// CMD_SYNC's CS (`None` for the illegal 3).
    pub fn sync_cs(&self) -> Option<SyncCs> {
        SyncCs::from_bits(self.sync_cs_bits())
    }
    /// CMD_SYNC's MSIAddress (dw1\[51:2\]).
    pub fn sync_msi_addr(&self) -> u64 {
        self.qwords()[1] & SYNC_MSI_ADDR_MASK
    }
}

/// CMDQ_CONS.ERR values (reference §16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmdError {
    /// 1 CERROR_ILL: unknown opcode, bad parameter or reserved field.
    Ill,
    /// 2 CERROR_ABT: abort fetching the command.
    Abt,
    /// 3 CERROR_ATC_INV_SYNC: ATS invalidation timeout before a CMD_SYNC.
    AtcInvSync,
}

impl CmdError {
    /// The CMDQ_CONS.ERR encoding.
    pub const fn code(self) -> u32 {
        match self {
            CmdError::Ill => 1,
            CmdError::Abt => 2,
            CmdError::AtcInvSync => 3,
        }
    }
    /// Decodes CMDQ_CONS.ERR; `None` for 0 (CERROR_NONE) and unknown values.
    pub const fn from_code(v: u32) -> Option<Self> {
        match v {
            1 => Some(CmdError::Ill),
            2 => Some(CmdError::Abt),
            3 => Some(CmdError::AtcInvSync),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opcodes, reference §9 (Linux `CMDQ_OP_*`, QEMU `SMMU_CMD_*`, IHI0070 for
    /// 0x07 = CFGI_VMS_PIDM not being CFGI_ALL).
    #[test]
    fn opcodes_known_answers() {
        let want: [(Opcode, u8); 20] = [
            (Opcode::PrefetchConfig, 0x01),
            (Opcode::CfgiSte, 0x03),
            (Opcode::CfgiSteRange, 0x04),
            (Opcode::CfgiCd, 0x05),
            (Opcode::CfgiCdAll, 0x06),
            (Opcode::TlbiNhAll, 0x10),
            (Opcode::TlbiNhAsid, 0x11),
            (Opcode::TlbiNhVa, 0x12),
            (Opcode::TlbiNhVaa, 0x13),
            (Opcode::TlbiEl2All, 0x20),
            (Opcode::TlbiEl2Asid, 0x21),
            (Opcode::TlbiEl2Va, 0x22),
            (Opcode::TlbiS12Vmall, 0x28),
            (Opcode::TlbiS2Ipa, 0x2a),
            (Opcode::TlbiNsnhAll, 0x30),
            (Opcode::AtcInv, 0x40),
            (Opcode::PriResp, 0x41),
            (Opcode::Resume, 0x44),
            (Opcode::StallTerm, 0x45),
            (Opcode::Sync, 0x46),
        ];
        for (op, byte) in want {
            assert_eq!(op as u8, byte);
            assert_eq!(Opcode::from_byte(byte), Some(op));
        }
        assert_eq!(Opcode::from_byte(0x07), None);
        assert_eq!(Opcode::from_byte(0), None);
    }

    /// CMD_SYNC as Linux `arm_smmu_cmdq_build_sync_cmd` writes it with an MSI: CS IRQ
    /// (1 << 12) | MSH ISH (3 << 22) | MSIAttr OIWB (0xf << 24) | opcode 0x46 =
    /// 0x0fc0_1046, dw1 = MSI address (51:2); and with CS SEV (2 << 12) = 0x2046.
    #[test]
    fn cmd_sync_known_answers() {
        let c = Cmd::sync(SyncCs::Irq, 0x8000_0f00, 0, 3, 0xf);
        assert_eq!(c.qwords(), [0x0fc0_1046, 0x8000_0f00]);
        assert_eq!(c.sync_cs(), Some(SyncCs::Irq));
        assert_eq!(c.sync_msi_addr(), 0x8000_0f00);
        assert_eq!(Cmd::sync(SyncCs::Sev, 0, 0, 0, 0).qwords(), [0x2046, 0]);
        let d = Cmd::sync(SyncCs::None, 0x1003, 0xdead_beef, 0, 0);
        assert_eq!(d.qwords(), [0xdead_beef_0000_0046, 0x1000]);
        assert_eq!(d.sync_msi_data(), 0xdead_beef);
        assert_eq!(Cmd::from_qwords([0x3046, 0]).sync_cs(), None);
    }

    /// CFGI commands (Linux `CMDQ_CFGI_0_SID` (63,32), `CMDQ_CFGI_0_SSID` (31,12),
    /// `CMDQ_CFGI_1_LEAF` 0, `CMDQ_CFGI_1_RANGE` (4,0); CFGI_ALL = CFGI_STE_RANGE with
    /// Range 31).
    #[test]
    fn cfgi_known_answers() {
        assert_eq!(
            Cmd::cfgi_ste(0x100, true).qwords(),
            [0x0000_0100_0000_0003, 1]
        );
        assert_eq!(Cmd::cfgi_all().qwords(), [0x04, 0x1f]);
        assert_eq!(
            Cmd::cfgi_cd(0x10, 0x12345, false).qwords(),
            [0x0000_0010_1234_5005, 0]
        );
        assert_eq!(Cmd::cfgi_cd_all(7).qwords(), [0x0000_0007_0000_0006, 0]);
        let r = Cmd::cfgi_ste_range(0x40, 5);
        assert_eq!(
            (r.sid(), r.range(), r.opcode()),
            (0x40, 5, Some(Opcode::CfgiSteRange))
        );
    }

    /// TLBI commands (Linux `CMDQ_TLBI_0_VMID` (47,32), `_ASID` (63,48), `_NUM`
    /// (16,12), `_SCALE` (24,20), `CMDQ_TLBI_1_LEAF` 0, `_TTL` (9,8), `_TG` (11,10),
    /// `_VA_MASK` (63,12), `_IPA_MASK` (51,12)): TLBI_NH_VA of ASID 5 at 0x1234_5000,
    /// leaf, TTL 3 with a 4 KiB granule (TG 1).
    #[test]
    fn tlbi_known_answers() {
        let c = Cmd::tlbi_addr(
            Opcode::TlbiNhVa,
            0,
            5,
            0x1234_5678,
            true,
            Some((3, Granule::K4)),
        );
        assert_eq!(c.qwords(), [0x0005_0000_0000_0012, 0x1234_5701]);
        assert_eq!(c.tlbi_address(), 0x1234_5000);
        assert_eq!((c.asid(), c.leaf(), c.ttl(), c.tg_bits()), (5, true, 3, 1));
        let s2 = Cmd::tlbi_addr(Opcode::TlbiS2Ipa, 9, 0, 0xffff_0000_0000_1000, false, None);
        assert_eq!(s2.qwords(), [0x0000_0009_0000_002a, 0x000f_0000_0000_1000]);
        assert_eq!(
            Cmd::tlbi(Opcode::TlbiS12Vmall, 3, 0).qwords(),
            [0x0000_0003_0000_0028, 0]
        );
        assert_eq!(
            Cmd::tlbi(Opcode::TlbiNhAsid, 3, 4).qwords(),
            [0x0004_0003_0000_0011, 0]
        );
        assert_eq!(Cmd::new(Opcode::TlbiNsnhAll).qwords(), [0x30, 0]);
        let mut r = Cmd::new(Opcode::TlbiNhVa);
        r.set_num(31);
        r.set_scale(1);
        assert_eq!(r.qwords()[0], 0x0011_f012);
    }

    /// CMDQ_CONS.ERR codes (reference §16; Linux `CMDQ_ERR_CERROR_ILL_IDX` 1,
    /// `_ABT_IDX` 2, `_ATC_INV_IDX` 3).
    #[test]
    fn command_errors_known_answers() {
        for e in [CmdError::Ill, CmdError::Abt, CmdError::AtcInvSync] {
            assert_eq!(CmdError::from_code(e.code()), Some(e));
        }
        assert_eq!(
            (
                CmdError::Ill.code(),
                CmdError::Abt.code(),
                CmdError::AtcInvSync.code()
            ),
            (1, 2, 3)
        );
        assert_eq!(CmdError::from_code(0), None);
    }
}
