//! Stream table entries (STE, 64 bytes) and level-1 stream table descriptors (L1STD,
//! 8 bytes), reference `smmuv3.md` §4 and §5 (sources per row there; Linux
//! `arm-smmu-v3.h` `STRTAB_STE_*`, `STRTAB_L1_DESC_*`; QEMU `smmuv3-internal.h`
//! `STE_*`).

use super::regs::STRTAB_BASE_CFG;
use super::Granule;
use iommu_core::entry::genmask;
use iommu_core::{qword_fields, qword_struct};

qword_struct!(
    /// A stream table entry: 8 qwords; qwords 4–7 hold no field used here.
    Ste,
    8
);

/// STE.Config (bits 3:1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Config {
    /// 0b0xx: abort every transaction, no event.
    Abort,
    /// 0b100: bypass both stages.
    Bypass,
    /// 0b101: stage 1 translates, stage 2 bypassed.
    S1Trans,
    /// 0b110: stage 1 bypassed, stage 2 translates.
    S2Trans,
    /// 0b111: stage 1 then stage 2 (nested).
    Nested,
}

impl Config {
    /// Decodes the 3-bit field (every value means something).
    pub const fn from_bits(v: u64) -> Self {
        match v & 7 {
            4 => Config::Bypass,
            5 => Config::S1Trans,
            6 => Config::S2Trans,
            7 => Config::Nested,
            _ => Config::Abort,
        }
    }
    /// The encoding (0b000 for abort).
    pub const fn bits(self) -> u64 {
        match self {
            Config::Abort => 0,
            Config::Bypass => 4,
            Config::S1Trans => 5,
            Config::S2Trans => 6,
            Config::Nested => 7,
        }
    }
    /// Whether stage 1 translates (Config bit 0 with bit 2).
    pub const fn s1(self) -> bool {
        matches!(self, Config::S1Trans | Config::Nested)
    }
    /// Whether stage 2 translates (Config bit 1 with bit 2).
    pub const fn s2(self) -> bool {
        matches!(self, Config::S2Trans | Config::Nested)
    }
}

/// STE.S1Fmt (bits 5:4): the CD table's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum S1Fmt {
    /// 0: linear, 2^S1CDMax CDs.
    Linear,
    /// 1: 2-level, 4 KiB L2 tables of 64 CDs (\[F\]\[G5\]\[IHI0070\]; Linux never uses it).
    TwoLevel4K,
    /// 2: 2-level, 64 KiB L2 tables of 1024 CDs.
    TwoLevel64K,
}

impl S1Fmt {
    /// Decodes the field; `None` for the reserved 3 (which behaves as 0, reference §14).
    pub const fn from_bits(v: u64) -> Option<Self> {
        match v {
            0 => Some(S1Fmt::Linear),
            1 => Some(S1Fmt::TwoLevel4K),
            2 => Some(S1Fmt::TwoLevel64K),
            _ => None,
        }
    }
    /// The encoding.
    pub const fn bits(self) -> u64 {
        match self {
            S1Fmt::Linear => 0,
            S1Fmt::TwoLevel4K => 1,
            S1Fmt::TwoLevel64K => 2,
        }
    }
    /// SubstreamID bits indexing an L2 CD table (`None` for linear): 6 or 10.
    pub const fn l2_bits(self) -> Option<u32> {
        match self {
            S1Fmt::Linear => None,
            S1Fmt::TwoLevel4K => Some(6),
            S1Fmt::TwoLevel64K => Some(10),
        }
    }
}

/// STE.S1DSS (bits 65:64): what happens to transactions without a SubstreamID when
/// S1CDMax ≠ 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum S1Dss {
    /// 0: terminate with F_STREAM_DISABLED.
    Terminate,
    /// 1: bypass stage 1.
    Bypass,
    /// 2: use CD 0 (and SubstreamID 0 itself is refused).
    Ssid0,
}

impl S1Dss {
    /// Decodes the field; `None` for the reserved 3 (behaves as 0, reference §14).
    pub const fn from_bits(v: u64) -> Option<Self> {
        match v {
            0 => Some(S1Dss::Terminate),
            1 => Some(S1Dss::Bypass),
            2 => Some(S1Dss::Ssid0),
            _ => None,
        }
    }
    /// The encoding.
    pub const fn bits(self) -> u64 {
        match self {
            S1Dss::Terminate => 0,
            S1Dss::Bypass => 1,
            S1Dss::Ssid0 => 2,
        }
    }
}

/// Bits of qword 0 holding S1ContextPtr (51:6).
pub const S1_CONTEXT_PTR_MASK: u64 = genmask(51, 6);
/// Bits of qword 3 holding S2TTB (51:4; spec G.b 55:4 with bits above OAS RES0).
pub const S2TTB_MASK: u64 = genmask(51, 4);

qword_fields!(Ste {
    /// V (bit 0): valid; V = 0 raises C_BAD_STE.
    v / set_v: 0;
    /// Config, raw (bits 3:1); see [`Ste::config`].
    config_bits / set_config_bits: 3, 1;
    /// S1Fmt, raw (bits 5:4); see [`Ste::s1fmt`].
    s1fmt_bits / set_s1fmt_bits: 5, 4;
    /// S1CDMax (bits 63:59): log2 of the number of CDs.
    s1cdmax / set_s1cdmax: 63, 59;
    /// S1DSS, raw (bits 65:64); see [`Ste::s1dss`].
    s1dss_bits / set_s1dss_bits: 65, 64;
    /// S1CIR (bits 67:66): CD-fetch inner cacheability.
    s1cir / set_s1cir: 67, 66;
    /// S1COR (bits 69:68): CD-fetch outer cacheability.
    s1cor / set_s1cor: 69, 68;
    /// S1CSH (bits 71:70): CD-fetch shareability.
    s1csh / set_s1csh: 71, 70;
    /// S1STALLD (bit 91): stage-1 stall disable.
    s1stalld / set_s1stalld: 91;
    /// EATS (bits 93:92): 0 ATS aborted, 1 full ATS, 2 split-stage.
    eats / set_eats: 93, 92;
    /// STRW (bits 95:94): 0 NS-EL1, 2 EL2.
    strw / set_strw: 95, 94;
    /// SHCFG (bits 109:108): 0 NSH, 1 use incoming, 2 OSH, 3 ISH.
    shcfg / set_shcfg: 109, 108;
    /// S2VMID (bits 143:128).
    s2vmid / set_s2vmid: 143, 128;
    /// S2T0SZ (bits 165:160): IPA size is 64 − S2T0SZ.
    s2t0sz / set_s2t0sz: 165, 160;
    /// S2SL0 (bits 167:166): stage-2 start level.
    s2sl0 / set_s2sl0: 167, 166;
    /// S2IR0 (bits 169:168): stage-2 walk inner cacheability.
    s2ir0 / set_s2ir0: 169, 168;
    /// S2OR0 (bits 171:170): stage-2 walk outer cacheability.
    s2or0 / set_s2or0: 171, 170;
    /// S2SH0 (bits 173:172): stage-2 walk shareability.
    s2sh0 / set_s2sh0: 173, 172;
    /// S2TG, raw (bits 175:174); see [`Ste::s2tg`].
    s2tg_bits / set_s2tg_bits: 175, 174;
    /// S2PS (bits 178:176): output size, IDR5.OAS encoding.
    s2ps / set_s2ps: 178, 176;
    /// S2AA64 (bit 179): AArch64 stage-2 tables.
    s2aa64 / set_s2aa64: 179;
    /// S2ENDI (bit 180): big-endian stage-2 walks.
    s2endi / set_s2endi: 180;
    /// S2AFFD (bit 181): stage-2 access-flag fault disable.
    s2affd / set_s2affd: 181;
    /// S2PTW (bit 182): protected table walk.
    s2ptw / set_s2ptw: 182;
    /// S2HD (bit 183): stage-2 hardware dirty-state update.
    s2hd / set_s2hd: 183;
    /// S2HA (bit 184): stage-2 hardware access-flag update.
    s2ha / set_s2ha: 184;
    /// S2S (bit 185): stage-2 stall. (QEMU's unused macros put S2HD/S2HA/S2S one bit
    /// higher; reference §5 shows QEMU is wrong.)
    s2s / set_s2s: 185;
    /// S2R (bit 186): record stage-2 faults.
    s2r / set_s2r: 186;
});

impl Ste {
    /// Config.
    pub fn config(&self) -> Config {
        Config::from_bits(self.config_bits())
    }
    /// Sets Config.
    pub fn set_config(&mut self, c: Config) {
        self.set_config_bits(c.bits());
    }
    /// S1Fmt (`None` for the reserved 3).
    pub fn s1fmt(&self) -> Option<S1Fmt> {
        S1Fmt::from_bits(self.s1fmt_bits())
    }
    /// Sets S1Fmt.
    pub fn set_s1fmt(&mut self, f: S1Fmt) {
        self.set_s1fmt_bits(f.bits());
    }
    /// S1DSS (`None` for the reserved 3).
    pub fn s1dss(&self) -> Option<S1Dss> {
        S1Dss::from_bits(self.s1dss_bits())
    }
    /// Sets S1DSS.
    pub fn set_s1dss(&mut self, d: S1Dss) {
        self.set_s1dss_bits(d.bits());
    }
    /// S2TG (`None` for the reserved 3).
    pub fn s2tg(&self) -> Option<Granule> {
        Granule::from_tg0(self.s2tg_bits())
    }
    /// Sets S2TG.
    pub fn set_s2tg(&mut self, g: Granule) {
        self.set_s2tg_bits(g.tg0() as u64);
    }
    /// S1ContextPtr: the CD table (or L1 CD table) address, bits 51:6.
    pub fn s1_context_ptr(&self) -> u64 {
        self.qwords()[0] & S1_CONTEXT_PTR_MASK
    }
    /// Sets S1ContextPtr (`addr` bits outside 51:6 dropped).
    pub fn set_s1_context_ptr(&mut self, addr: u64) {
        self.set_bits(51, 6, (addr & S1_CONTEXT_PTR_MASK) >> 6);
    }
    /// S2TTB: the stage-2 start table address (qword 3 bits 51:4).
    pub fn s2ttb(&self) -> u64 {
        self.qwords()[3] & S2TTB_MASK
    }
    /// Sets S2TTB (`addr` bits outside 51:4 dropped).
    pub fn set_s2ttb(&mut self, addr: u64) {
        self.set_bits(243, 196, (addr & S2TTB_MASK) >> 4);
    }
}

qword_struct!(
    /// A level-1 stream table descriptor (2-level stream tables).
    L1Std,
    1
);

/// Bits of an L1STD holding L2Ptr (51:6; spec G.b 55:6 with bits above OAS RES0).
pub const L1STD_L2PTR_MASK: u64 = genmask(51, 6);

qword_fields!(L1Std {
    /// SPAN (bits 4:0): 0 invalid, 1–11: the L2 table holds 2^(SPAN−1) STEs.
    span / set_span: 4, 0;
});

impl L1Std {
    /// A descriptor for an L2 table at `l2` of `2^split` STEs (SPAN = SPLIT + 1, as Linux
    /// `arm_smmu_write_strtab_l1_desc`).
    pub fn new(l2: u64, split: u32) -> Self {
        let mut d = Self::default();
        d.set_span(split as u64 + 1);
        d.set_l2ptr(l2);
        d
    }
    /// L2Ptr: the L2 table address.
    pub fn l2ptr(&self) -> u64 {
        self.qwords()[0] & L1STD_L2PTR_MASK
    }
    /// Sets L2Ptr (`addr` bits outside 51:6 dropped).
    pub fn set_l2ptr(&mut self, addr: u64) {
        self.set_bits(51, 6, (addr & L1STD_L2PTR_MASK) >> 6);
    }
    /// STEs the L2 table holds under STRTAB_BASE_CFG.SPLIT `split`, or `None` when the
    /// descriptor is invalid: SPAN 0, reserved (12–31) or above SPLIT + 1 (reference §4,
    /// IHI0070 C_BAD_STREAMID; QEMU and gem5 are lenient by one power of two).
    pub fn l2_entries(&self, split: u32) -> Option<u32> {
        let span = self.span() as u32;
        (1..=11).contains(&span).then_some(())?;
        (span <= split + 1).then_some(1 << (span - 1))
    }
}

/// The stream table's format (STRTAB_BASE_CFG.FMT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StrtabFmt {
    /// 0: an array of 2^LOG2SIZE STEs.
    Linear,
    /// 1: an array of L1STDs, each pointing to an L2 array of STEs.
    TwoLevel,
}

/// Where the STE of a StreamID lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SteSlot {
    /// Index of the STE in a linear table (at STRTAB_BASE + index × 64).
    Linear {
        /// The STE index.
        index: u32,
    },
    /// Index of the L1STD (at STRTAB_BASE + l1 × 8) and of the STE in its L2 table
    /// (at L2Ptr + l2 × 64).
    TwoLevel {
        /// The L1STD index: StreamID\[LOG2SIZE−1:SPLIT\].
        l1: u32,
        /// The STE index in the L2 table: StreamID\[SPLIT−1:0\].
        l2: u32,
    },
}

/// The effective stream table configuration (IHI0070 §6.3 SMMU_STRTAB_BASE_CFG):
/// reserved FMT values behave as linear (FMT is RES0 when IDR0.ST_LEVEL = 0), SPLIT
/// values other than 6, 8 and 10 behave as 6, and LOG2SIZE is capped by IDR1.SIDSIZE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StrtabCfg {
    /// The format.
    pub fmt: StrtabFmt,
    /// log2 of the number of StreamIDs (effective).
    pub log2size: u32,
    /// StreamID bits indexing an L2 table (6, 8 or 10).
    pub split: u32,
}

impl StrtabCfg {
    /// The effective configuration of register value `cfg` on an SMMU with
    /// IDR1.SIDSIZE `sidsize` and (`two_level`) IDR0.ST_LEVEL ≠ 0.
    pub fn effective(cfg: u32, sidsize: u32, two_level: bool) -> Self {
        let fmt = if two_level && STRTAB_BASE_CFG::FMT.read(cfg) == 1 {
            StrtabFmt::TwoLevel
        } else {
            StrtabFmt::Linear
        };
        let split = match STRTAB_BASE_CFG::SPLIT.read(cfg) {
            s @ (6 | 8 | 10) => s,
            _ => 6,
        };
        Self {
            fmt,
            log2size: STRTAB_BASE_CFG::LOG2SIZE.read(cfg).min(sidsize),
            split,
        }
    }
    /// The register value.
    pub fn to_reg(&self) -> u32 {
        let fmt = match self.fmt {
            StrtabFmt::Linear => 0,
            StrtabFmt::TwoLevel => 1,
        };
        (STRTAB_BASE_CFG::FMT.val(fmt)
            + STRTAB_BASE_CFG::SPLIT.val(self.split)
            + STRTAB_BASE_CFG::LOG2SIZE.val(self.log2size))
        .value
    }
    /// Entries of the table STRTAB_BASE points to: STEs (linear) or L1STDs
    /// (2-level: MAX(1, 2^(LOG2SIZE − SPLIT))).
    pub fn base_entries(&self) -> u64 {
        match self.fmt {
            StrtabFmt::Linear => 1 << self.log2size,
            StrtabFmt::TwoLevel => 1 << self.log2size.saturating_sub(self.split),
        }
    }
    /// Where the STE of `sid` lives, or `None` when `sid` ≥ 2^LOG2SIZE (C_BAD_STREAMID).
    pub fn locate(&self, sid: u32) -> Option<SteSlot> {
        if self.log2size < 32 && sid >> self.log2size != 0 {
            return None;
        }
        Some(match self.fmt {
            StrtabFmt::Linear => SteSlot::Linear { index: sid },
            StrtabFmt::TwoLevel => SteSlot::TwoLevel {
                l1: sid >> self.split,
                l2: sid & ((1 << self.split) - 1),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Set = fn(&mut Ste);

    /// An STE as Linux `arm_smmu_make_cdtable_ste` writes it for a stage-1 domain with
    /// a 2-level CD table (S1Fmt 2, S1CDMax 20) at 0x8000_1000: qword 0 = V | Config
    /// S1_TRANS (0b101) | S1Fmt | S1ContextPtr | S1CDMax; qword 1 = S1DSS SSID0 | S1CIR
    /// WBRA (1) | S1COR WBRA | S1CSH ISH (3). Positions: reference §5.
    #[test]
    fn stage1_ste_known_answer() {
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(Config::S1Trans);
        s.set_s1fmt(S1Fmt::TwoLevel64K);
        s.set_s1_context_ptr(0x8000_1000);
        s.set_s1cdmax(20);
        s.set_s1dss(S1Dss::Ssid0);
        s.set_s1cir(1);
        s.set_s1cor(1);
        s.set_s1csh(3);
        assert_eq!(s.qwords(), [0xa000_0000_8000_102b, 0xd6, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s.config(), Config::S1Trans);
        assert!(s.config().s1() && !s.config().s2());
        assert_eq!(s.s1fmt(), Some(S1Fmt::TwoLevel64K));
        assert_eq!(s.s1dss(), Some(S1Dss::Ssid0));
        assert_eq!(s.s1_context_ptr(), 0x8000_1000);
        // A linear table with one CD: Linux's 0x..._100b.
        let lin = Ste::from_qwords([0x8000_100b, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            (lin.v(), lin.config(), lin.s1fmt(), lin.s1cdmax()),
            (true, Config::S1Trans, Some(S1Fmt::Linear), 0)
        );
    }

    /// A stage-2 STE as Linux `arm_smmu_make_s2_domain_ste` writes it: qword 0 = V |
    /// Config S2_TRANS (0b110) = 0xd; qword 1 = SHCFG incoming (1 << 108); qword 2 =
    /// S2VMID 1 | VTCR (S2T0SZ 24, S2SL0 1, S2IR0/S2OR0 WBWA, S2SH0 ISH, S2TG 4K, S2PS
    /// 40 bits) at bits 50:32 of the qword | S2AA64 | S2PTW | S2R; qword 3 = S2TTB.
    #[test]
    fn stage2_ste_known_answer() {
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(Config::S2Trans);
        s.set_shcfg(1);
        s.set_s2vmid(1);
        s.set_s2t0sz(24);
        s.set_s2sl0(1);
        s.set_s2ir0(1);
        s.set_s2or0(1);
        s.set_s2sh0(3);
        s.set_s2tg(Granule::K4);
        s.set_s2ps(2);
        s.set_s2aa64(true);
        s.set_s2ptw(true);
        s.set_s2r(true);
        s.set_s2ttb(0x1_2345_6000);
        assert_eq!(
            s.qwords(),
            [
                0xd,
                1 << 44,
                0x044a_3558_0000_0001,
                0x1_2345_6000,
                0,
                0,
                0,
                0
            ]
        );
        assert_eq!(s.s2tg(), Some(Granule::K4));
        assert_eq!(s.s2ttb(), 0x1_2345_6000);
        // S2TG 64 KiB is 1, 16 KiB 2 (reference §12).
        s.set_s2tg(Granule::K16);
        assert_eq!(s.s2tg_bits(), 2);
        assert_eq!(
            Ste::from_qwords([0, 0, 3 << 46, 0, 0, 0, 0, 0]).s2tg(),
            None
        );
    }

    /// One bit each, at the positions of reference §5 (IHI0070 / gem5 for S2AFFD,
    /// S2HD, S2HA; Linux `STRTAB_STE_1_S1STALLD` 27, `STRTAB_STE_1_EATS` (29,28),
    /// `STRTAB_STE_1_STRW` (31,30), `STRTAB_STE_2_S2ENDI` 52, `S2PTW` 54, `S2S` 57,
    /// `S2R` 58, `S2AA64` 51).
    #[test]
    fn ste_single_bits_known_answers() {
        let cases: [(Set, usize, u64); 10] = [
            (|s| s.set_s1stalld(true), 1, 1 << 27),
            (|s| s.set_eats(1), 1, 1 << 28),
            (|s| s.set_strw(2), 1, 2 << 30),
            (|s| s.set_s2aa64(true), 2, 1 << 51),
            (|s| s.set_s2endi(true), 2, 1 << 52),
            (|s| s.set_s2affd(true), 2, 1 << 53),
            (|s| s.set_s2ptw(true), 2, 1 << 54),
            (|s| s.set_s2hd(true), 2, 1 << 55),
            (|s| s.set_s2ha(true), 2, 1 << 56),
            (|s| s.set_s2s(true), 2, 1 << 57),
        ];
        for (set, q, want) in cases {
            let mut s = Ste::default();
            set(&mut s);
            assert_eq!(s.qwords()[q], want);
            assert_eq!(s.qwords().iter().filter(|&&v| v != 0).count(), 1);
        }
    }

    /// Abort (V | Config 0) and bypass (V | Config 0b100 = 0x9, SHCFG incoming) STEs as
    /// Linux `arm_smmu_make_abort_ste` / `arm_smmu_make_bypass_ste`; every 0b0xx Config is
    /// abort.
    #[test]
    fn abort_and_bypass_known_answers() {
        let abort = Ste::from_qwords([0x1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(abort.config(), Config::Abort);
        for c in 0..4 {
            assert_eq!(Config::from_bits(c), Config::Abort);
        }
        let mut b = Ste::default();
        b.set_v(true);
        b.set_config(Config::Bypass);
        b.set_shcfg(1);
        assert_eq!(b.qwords()[..2], [0x9, 1 << 44]);
        assert_eq!(Config::from_bits(7), Config::Nested);
        assert!(Config::Nested.s1() && Config::Nested.s2());
    }

    /// L1STD as Linux writes it for SPLIT 8 (SPAN 9, L2Ptr bits 51:6): 0x8000_2009; SPAN
    /// above SPLIT + 1, 0 or reserved is invalid (reference §4).
    #[test]
    fn l1std_known_answer() {
        let d = L1Std::new(0x8000_2000, 8);
        assert_eq!(d.qwords(), [0x8000_2009]);
        assert_eq!(d.l2ptr(), 0x8000_2000);
        assert_eq!(d.l2_entries(8), Some(256));
        assert_eq!(d.l2_entries(7), None);
        assert_eq!(L1Std::from_qwords([0x8000_2000]).l2_entries(8), None);
        assert_eq!(L1Std::from_qwords([0x8000_200c]).l2_entries(11), None);
        assert_eq!(L1Std::from_qwords([0x8000_2001]).l2_entries(8), Some(1));
    }

    /// The STE is 64 bytes and reads as little-endian qwords.
    #[test]
    fn ste_is_64_bytes_little_endian() {
        use zerocopy::{FromBytes, IntoBytes};
        assert_eq!(Ste::SIZE, 64);
        let s = Ste::from_qwords([0x0102_0304_0506_0708, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&s.as_bytes()[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Ste::read_from_bytes(s.as_bytes()).unwrap(), s);
    }

    /// STRTAB_BASE_CFG as Linux writes it for 2-level tables (FMT 1, SPLIT 8, LOG2SIZE
    /// = SIDSIZE: 0x10210 for 16 bits) and the IHI0070 rules for reserved values:
    /// FMT 2/3 behave as linear, SPLIT 7 as 6, LOG2SIZE capped by SIDSIZE; StreamID
    /// 0x1234 is L1STD 0x12, STE 0x34.
    #[test]
    fn stream_table_config_known_answers() {
        let c = StrtabCfg::effective(0x10210, 16, true);
        assert_eq!(
            c,
            StrtabCfg {
                fmt: StrtabFmt::TwoLevel,
                log2size: 16,
                split: 8
            }
        );
        assert_eq!(c.to_reg(), 0x10210);
        assert_eq!(c.base_entries(), 256);
        assert_eq!(
            c.locate(0x1234),
            Some(SteSlot::TwoLevel { l1: 0x12, l2: 0x34 })
        );
        assert_eq!(c.locate(0x1_0000), None);
        assert_eq!(
            StrtabCfg::effective(0x10210, 16, false).fmt,
            StrtabFmt::Linear
        );
        assert_eq!(
            StrtabCfg::effective(0x20210, 16, true).fmt,
            StrtabFmt::Linear
        );
        assert_eq!(StrtabCfg::effective(7 << 6 | 5, 16, true).split, 6);
        let small = StrtabCfg::effective(0x10000 | 10 << 6 | 20, 8, true);
        assert_eq!((small.log2size, small.base_entries()), (8, 1));
        let lin = StrtabCfg::effective(5, 16, true);
        assert_eq!(
            (lin.base_entries(), lin.locate(31), lin.locate(32)),
            (32, Some(SteSlot::Linear { index: 31 }), None)
        );
    }
}
