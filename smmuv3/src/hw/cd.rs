//! Context descriptors (CD, 64 bytes) and level-1 CD descriptors (L1CD, 8 bytes),
//! reference `smmuv3.md` §6 and §14 (sources per row there; Linux `arm-smmu-v3.h`
//! `CTXDESC_CD_*`, `CTXDESC_L1_DESC_*`; QEMU `smmuv3-internal.h` `CD_*`).

use super::ste::S1Fmt;
use super::Granule;
use iommu_core::entry::genmask;
use iommu_core::{qword_fields, qword_struct};

qword_struct!(
    /// A context descriptor: 8 qwords; qwords 5–7 hold no field used here.
    Cd,
    8
);

/// Bits of qwords 1 and 2 holding TTB0 / TTB1 (51:4; spec G.b 55:4).
pub const TTB_MASK: u64 = genmask(51, 4);

qword_fields!(Cd {
    /// T0SZ (bits 5:0): VA size is 64 − T0SZ.
    t0sz / set_t0sz: 5, 0;
    /// TG0, raw (bits 7:6); see [`Cd::tg0`].
    tg0_bits / set_tg0_bits: 7, 6;
    /// IR0 (bits 9:8): walk inner cacheability (0 NC, 1 WBWA, 2 WT, 3 WB).
    ir0 / set_ir0: 9, 8;
    /// OR0 (bits 11:10): walk outer cacheability.
    or0 / set_or0: 11, 10;
    /// SH0 (bits 13:12): walk shareability (0 NSH, 2 OSH, 3 ISH).
    sh0 / set_sh0: 13, 12;
    /// EPD0 (bit 14): no TTB0 walks.
    epd0 / set_epd0: 14;
    /// ENDI (bit 15): big-endian walks.
    endi / set_endi: 15;
    /// T1SZ (bits 21:16).
    t1sz / set_t1sz: 21, 16;
    /// TG1, raw (bits 23:22; its own encoding, see [`Granule::from_tg1`]).
    tg1_bits / set_tg1_bits: 23, 22;
    /// EPD1 (bit 30): no TTB1 walks.
    epd1 / set_epd1: 30;
    /// V (bit 31): valid.
    v / set_v: 31;
    /// IPS (bits 34:32): intermediate physical address size, IDR5.OAS encoding.
    ips / set_ips: 34, 32;
    /// AFFD (bit 35): access-flag fault disable.
    affd / set_affd: 35;
    /// TBI0 (bit 38): top-byte ignore, TTB0.
    tbi0 / set_tbi0: 38;
    /// TBI1 (bit 39).
    tbi1 / set_tbi1: 39;
    /// AA64 (bit 41): AArch64 tables.
    aa64 / set_aa64: 41;
    /// HD (bit 42): hardware dirty-state update.
    hd / set_hd: 42;
    /// HA (bit 43): hardware access-flag update.
    ha / set_ha: 43;
    /// S (bit 44): stall faults.
    s / set_s: 44;
    /// R (bit 45): record faults.
    r / set_r: 45;
    /// A (bit 46): abort terminated transactions (instead of RAZ/WI).
    a / set_a: 46;
    /// ASET (bit 47): ASID set (not shared with the CPU).
    aset / set_aset: 47;
    /// ASID (bits 63:48).
    asid / set_asid: 63, 48;
    /// MAIR (qword 3): memory attribute indirection, as MAIR_EL1.
    mair / set_mair: 255, 192;
    /// AMAIR (qword 4).
    amair / set_amair: 319, 256;
});

impl Cd {
    /// TG0 (`None` for the reserved 3).
    pub fn tg0(&self) -> Option<Granule> {
        Granule::from_tg0(self.tg0_bits())
    }
    /// Sets TG0.
    pub fn set_tg0(&mut self, g: Granule) {
        self.set_tg0_bits(g.tg0() as u64);
    }
    /// TTB0: the stage-1 start table address (qword 1 bits 51:4).
    pub fn ttb0(&self) -> u64 {
        self.qwords()[1] & TTB_MASK
    }
    /// Sets TTB0 (`addr` bits outside 51:4 dropped).
    pub fn set_ttb0(&mut self, addr: u64) {
        self.set_bits(115, 68, (addr & TTB_MASK) >> 4);
    }
    /// TTB1 (qword 2 bits 51:4).
    pub fn ttb1(&self) -> u64 {
        self.qwords()[2] & TTB_MASK
    }
    /// Sets TTB1 (`addr` bits outside 51:4 dropped).
    pub fn set_ttb1(&mut self, addr: u64) {
        self.set_bits(179, 132, (addr & TTB_MASK) >> 4);
    }
}

qword_struct!(
    /// A level-1 CD descriptor (2-level CD tables).
    L1Cd,
    1
);

/// Bits of an L1CD holding L2Ptr (51:12; spec G.b 55:12).
pub const L1CD_L2PTR_MASK: u64 = genmask(51, 12);

qword_fields!(L1Cd {
    /// V (bit 0): valid; V = 0 raises C_BAD_SUBSTREAMID.
    v / set_v: 0;
});

impl L1Cd {
    /// A valid descriptor for the L2 CD table at `l2` (Linux `arm_smmu_write_cd_l1_desc`:
    /// `V | l2ptr & GENMASK(51, 12)`).
    pub fn new(l2: u64) -> Self {
        Self::from_qwords([(l2 & L1CD_L2PTR_MASK) | 1])
    }
    /// L2Ptr: the L2 CD table address.
    pub fn l2ptr(&self) -> u64 {
        self.qwords()[0] & L1CD_L2PTR_MASK
    }
}

/// Where the CD of SubstreamID `ssid` lives in a CD table of format `fmt`: the L1 index
/// (`None` for linear tables) and the index of the CD in its (L2 or linear) table
/// (reference §14).
pub const fn cd_index(fmt: S1Fmt, ssid: u32) -> (Option<u32>, u32) {
    match fmt.l2_bits() {
        None => (None, ssid),
        Some(b) => (Some(ssid >> b), ssid & ((1 << b) - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Set = fn(&mut Cd);

    /// A CD as Linux `arm_smmu_make_s1_cd` writes it for a 48-bit 4 KiB stage-1 domain
    /// with ASID 1: T0SZ 16 | TG0 4K | IR0 WBWA (1) | OR0 WBWA | SH0 ISH (3) | EPD1 | V
    /// | IPS 48 bits (5) | AA64 | R | A | ASET | ASID; qword 1 TTB0; qword 3 Linux's
    /// io-pgtable MAIR (NC 0x44, WBRWA 0xff, DEVICE 0x04, INC_OWBRWA 0xf4) = 0xf404ff44.
    /// Positions: reference §6.
    #[test]
    fn stage1_cd_known_answer() {
        let mut c = Cd::default();
        c.set_t0sz(16);
        c.set_tg0(Granule::K4);
        c.set_ir0(1);
        c.set_or0(1);
        c.set_sh0(3);
        c.set_epd1(true);
        c.set_v(true);
        c.set_ips(5);
        c.set_aa64(true);
        c.set_r(true);
        c.set_a(true);
        c.set_aset(true);
        c.set_asid(1);
        c.set_ttb0(0x8123_4000);
        c.set_mair(0xf404_ff44);
        assert_eq!(
            c.qwords(),
            [
                0x0001_e205_c000_3510,
                0x8123_4000,
                0,
                0xf404_ff44,
                0,
                0,
                0,
                0
            ]
        );
        assert_eq!(c.tg0(), Some(Granule::K4));
        assert_eq!(
            (c.t0sz(), c.ips(), c.asid(), c.ttb0()),
            (16, 5, 1, 0x8123_4000)
        );
    }

    /// TG0 encodings 0 4K, 1 64K, 2 16K and TG1 1 16K, 2 4K, 3 64K (reference §12);
    /// single bits AFFD 35, TBI0 38, TBI1 39, HD 42, HA 43, S 44, EPD0 14, ENDI 15
    /// (reference §6; Linux `CTXDESC_CD_0_TCR_EPD0` 14, `CTXDESC_CD_0_TCR_HD` 42,
    /// `_HA` 43, `CTXDESC_CD_0_S` 44).
    #[test]
    fn cd_fields_known_answers() {
        let mut c = Cd::default();
        c.set_tg0(Granule::K64);
        assert_eq!(c.qwords()[0], 1 << 6);
        c.set_tg0(Granule::K16);
        assert_eq!(c.qwords()[0], 2 << 6);
        c.set_tg1_bits(Granule::K4.tg1() as u64);
        assert_eq!(c.qwords()[0], 2 << 6 | 2 << 22);
        assert_eq!(Cd::from_qwords([3 << 6, 0, 0, 0, 0, 0, 0, 0]).tg0(), None);
        let bits: [(Set, u64); 8] = [
            (|c| c.set_epd0(true), 1 << 14),
            (|c| c.set_endi(true), 1 << 15),
            (|c| c.set_affd(true), 1 << 35),
            (|c| c.set_tbi0(true), 1 << 38),
            (|c| c.set_tbi1(true), 1 << 39),
            (|c| c.set_hd(true), 1 << 42),
            (|c| c.set_ha(true), 1 << 43),
            (|c| c.set_s(true), 1 << 44),
        ];
        for (set, want) in bits {
            let mut c = Cd::default();
            set(&mut c);
            assert_eq!(c.qwords()[0], want);
        }
        let mut c = Cd::default();
        c.set_t1sz(25);
        c.set_ttb1(0xabc0);
        c.set_amair(7);
        assert_eq!(c.qwords()[..5], [25 << 16, 0, 0xabc0, 0, 7]);
    }

    /// L1CD as Linux writes it (V | L2Ptr 51:12): 0x8010_0001; the CD of SubstreamID
    /// 0x12345 in a 64 KiB-L2 table (S1Fmt 2) is L1 entry 0x48, CD 0x345; with 4 KiB L2
    /// tables (S1Fmt 1) L1 entry 0x48d, CD 5 (reference §14).
    #[test]
    fn l1cd_and_indices_known_answers() {
        let d = L1Cd::new(0x8010_0000);
        assert_eq!(d.qwords(), [0x8010_0001]);
        assert!(d.v());
        assert_eq!(d.l2ptr(), 0x8010_0000);
        assert_eq!(cd_index(S1Fmt::TwoLevel64K, 0x12345), (Some(0x48), 0x345));
        assert_eq!(cd_index(S1Fmt::TwoLevel4K, 0x12345), (Some(0x48d), 5));
        assert_eq!(cd_index(S1Fmt::Linear, 7), (None, 7));
    }
}
