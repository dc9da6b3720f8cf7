//! Independent check of the SMMUv3 model's VMSAv8-64 walker against the driver side's
//! reader (`smmuv3::format::Vmsa` on the generic `iommu_core::pgtable::translate`).
//!
//! The model walks with code of its own (`emulator/src/smmuv3/walk.rs`, from the Arm
//! ARM); the arch crate's format is used here, as a dev-dependency only, to build the
//! tables and to predict the outcome. Every address probed must get the same answer
//! from both: the same output address and permissions, or the same event (F_TRANSLATION,
//! F_ADDR_SIZE, F_ACCESS, F_PERMISSION, F_WALK_EABT). Tables come from proptest (every
//! granule, start level and output size, stage 1, stage 2 and nested, mapped with the
//! generic `map`, then corrupted at random) and by hand (concatenated stage-2 start tables, 64
//! KiB blocks).

use emulator::memory::SparseMemory;
use emulator::model::{Access, DmaError, DmaRequest, IommuModel};
use emulator::smmuv3::{SmmuV3Config, SmmuV3Unit};
use iommu_core::pgtable::{translate, Format, Outcome, Perms, WalkErrorKind, WriteFormat};
use iommu_core::{Iova, MemError, PageSize, PhysAddr, PhysMem, RequesterId};
use proptest::prelude::*;
use std::cell::Cell;
use walkcheck::{build, corrupt, probes, Map};

mod walkcheck;
use smmuv3::format::{Attrs, Caps, Vmsa};
use smmuv3::hw::cd::Cd;
use smmuv3::hw::event::EventType;
use smmuv3::hw::regs::{self, CR0};
use smmuv3::hw::ste::{Config, S1Dss, S1Fmt, Ste, StrtabCfg, StrtabFmt};
use smmuv3::hw::Granule;
use zerocopy::IntoBytes;

const BASE: PhysAddr = PhysAddr(0x9000_0000);
const RAM: u64 = 0x400_0000;
const STRTAB: u64 = 0x4000; // aligned to the 16 KiB table (IHI0070 STRTAB_BASE)
const CDTAB: u64 = 0x8000;
const TABLES: u64 = 0x10_0000;
const SID: u16 = 1;

/// What an address gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// Translated to `pa`; with neither permission, `pa` is `u64::MAX`.
    Mapped { pa: u64, read: bool, write: bool },
    /// The event of this type.
    Event(EventType),
    /// A descriptor read hit poisoned memory (a memory error, no event).
    Poison,
}

const NO_ACCESS: Got = Got::Mapped {
    pa: u64::MAX,
    read: false,
    write: false,
};

struct Env {
    mem: SparseMemory,
    cfg: SmmuV3Config,
}

impl Env {
    fn new(oas_bits: u32) -> Self {
        let mut mem = SparseMemory::new(&[(PhysAddr(0), RAM)]).unwrap();
        // RAM never written reads as poison: zero the stream table, the CD and every
        // table this test allocates.
        mem.write(PhysAddr(0), &vec![0u8; 0x100_0000]).unwrap();
        let mut cfg = SmmuV3Config::new(BASE);
        cfg.oas_bits = oas_bits;
        Self { mem, cfg }
    }

    fn caps(&self) -> Caps {
        Caps::from_idr(self.cfg.idr0(), self.cfg.idr5()).unwrap()
    }

    fn ste(&mut self, s: &Ste) {
        self.mem
            .write(PhysAddr(STRTAB + SID as u64 * 64), s.as_bytes())
            .unwrap();
    }

    /// A fresh SMMU (empty TLB and config caches) with a linear stream table, enabled.
    fn unit(&mut self) -> SmmuV3Unit {
        let mut u = SmmuV3Unit::new(self.cfg.clone()).unwrap();
        let st = StrtabCfg {
            fmt: StrtabFmt::Linear,
            log2size: 8,
            split: 6,
        };
        u.mmio_write(&mut self.mem, regs::STRTAB_BASE, 8, STRTAB);
        u.mmio_write(&mut self.mem, regs::STRTAB_BASE_CFG, 4, st.to_reg() as u64);
        u.mmio_write(&mut self.mem, regs::CR0, 4, CR0::SMMUEN::SET.value as u64);
        u
    }

    fn one(&mut self, iova: u64, access: Access) -> Result<u64, Got> {
        let mut u = self.unit();
        let req = DmaRequest {
            rid: RequesterId::new(0, 0, 0, SID as u8),
            pasid: None,
            privileged: false,
            iova: Iova(iova),
            access,
        };
        match u.translate(&mut self.mem, &req) {
            Ok(t) => Ok(t.pa.0),
            Err(DmaError::Fault(f)) => {
                let ty = EventType::from_code(f.code as u8).expect("an event type");
                Err(if ty == EventType::FPermission {
                    NO_ACCESS
                } else {
                    Got::Event(ty)
                })
            }
            Err(DmaError::Memory { .. }) => Err(Got::Poison),
            Err(e) => panic!("{iova:#x}: {e:?}"),
        }
    }

    /// What the model does with a read and a write of `iova`.
    fn probe(&mut self, iova: u64) -> Got {
        let r = self.one(iova, Access::Read);
        let w = self.one(iova, Access::Write);
        match (r, w) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{iova:#x}");
                Got::Mapped {
                    pa: a,
                    read: true,
                    write: true,
                }
            }
            (Ok(pa), Err(NO_ACCESS)) => Got::Mapped {
                pa,
                read: true,
                write: false,
            },
            (Err(NO_ACCESS), Ok(pa)) => Got::Mapped {
                pa,
                read: false,
                write: true,
            },
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{iova:#x}: read and write fault differently");
                a
            }
            (a, b) => panic!("{iova:#x}: read {a:?}, write {b:?}"),
        }
    }
}

/// The driver side's reader on the same tables.
fn expect(f: &Vmsa, mem: &dyn PhysMem, root: u64, iova: u64) -> Got {
    match translate(f, mem, PhysAddr(root), Iova(iova)) {
        Ok(t) => match t.outcome {
            Outcome::Mapped { perms, .. } if !perms.read && !perms.write => NO_ACCESS,
            Outcome::Mapped { pa, perms, .. } => Got::Mapped {
                pa: pa.0,
                read: perms.read,
                write: perms.write,
            },
            _ => Got::Event(EventType::FTranslation),
        },
        Err(e) => Got::Event(match e.kind {
            WalkErrorKind::Memory(MemError::Poisoned { .. }) => return Got::Poison,
            WalkErrorKind::Memory(_) => EventType::FWalkEabt,
            WalkErrorKind::BadEntry(b) if b.reason.contains("F_ACCESS") => EventType::FAccess,
            WalkErrorKind::BadEntry(b) if b.reason.contains("F_ADDR_SIZE") => EventType::FAddrSize,
            _ => EventType::FTranslation,
        }),
    }
}

/// A valid AArch64 CD with TTB0 of granule `g`, `t0sz`, IPS `ips`, TTB1 off, faults
/// recorded, ASID 3.
fn s1_cd(g: Granule, t0sz: u64, ips: u64) -> Cd {
    let mut cd = Cd::default();
    cd.set_v(true);
    cd.set_t0sz(t0sz);
    cd.set_tg0(g);
    cd.set_ips(ips);
    cd.set_epd1(true);
    cd.set_aa64(true);
    cd.set_r(true);
    cd.set_asid(3);
    cd
}

/// A valid STE of `config` with the linear CD table at CDTAB (one CD).
fn s1_ste(config: Config) -> Ste {
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(config);
    s.set_s1_context_ptr(CDTAB);
    s.set_s1fmt(S1Fmt::Linear);
    s.set_s1dss(S1Dss::Ssid0);
    s
}

/// Descriptor bits a corruption flips: valid, table/page, AP/S2AP, AF, low address
/// bits (16: nT in a block), OA\[49:48\], a high address bit, upper attributes.
fn mask() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        Just(2u64),
        Just(1u64 << 6),
        Just(1u64 << 7),
        Just(1u64 << 10),
        (12u32..30).prop_map(|b| 1u64 << b),
        Just(1u64 << 48),
        Just(1u64 << 49),
        Just(1u64 << 45),
        (54u32..64).prop_map(|b| 1u64 << b),
    ]
}

fn granule() -> impl Strategy<Value = Granule> {
    prop::sample::select(vec![Granule::K4, Granule::K16, Granule::K64])
}

/// Mappings: IOVA and PA aligned to one of the sizes a granule may offer.
fn maps(window: u32, oa: u32, raw: &[(u64, u64, u32, bool, bool)]) -> Vec<Map> {
    raw.iter()
        .map(|&(i, p, s, r, w)| {
            let a = !((1u64 << s) - 1);
            let iova = (i & ((1u64 << window) - 1)) & a;
            let pa = (p & ((1u64 << oa) - 1)) & a;
            let perms = Perms {
                read: r || !w,
                write: w,
                exec: false,
            };
            (iova, pa, PageSize::from_shift(s).unwrap(), perms)
        })
        .collect()
}

fn raw_maps() -> impl Strategy<Value = Vec<(u64, u64, u32, bool, bool)>> {
    prop::collection::vec(
        (
            any::<u64>(),
            any::<u64>(),
            prop::sample::select(vec![12u32, 14, 16, 21, 25, 29, 30, 42]),
            any::<bool>(),
            any::<bool>(),
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Stage 1 (a CD's TTB0): every granule, T0SZ 16..=39, IPS 0..=6, OAS 48 or 52,
    /// AFFD on or off; mapped and corrupted: the model and the format agree.
    #[test]
    fn stage1_model_agrees_with_the_format(
        g in granule(),
        t0sz in 16u64..=39,
        ips in 0u64..=6,
        oas52 in any::<bool>(),
        affd in any::<bool>(),
        raw in raw_maps(),
        muts in prop::collection::vec((any::<usize>(), any::<usize>(), mask()), 0..4),
        extra in prop::collection::vec(any::<u64>(), 8),
    ) {
        let mut env = Env::new(if oas52 { 52 } else { 48 });
        let mut cd = s1_cd(g, t0sz, ips);
        cd.set_affd(affd);
        let f = Vmsa::from_cd(&env.caps(), &cd).unwrap();
        let ia = 64 - t0sz as u32;
        let window = ia.min(36);
        let maps = maps(window, f.oa_bits(), &raw);
        let (tables, root) = build(&f, &mut env.mem, TABLES, &maps, Attrs::default());
        // The first 8 KiB of a table hold every entry these mappings use.
        corrupt(&mut env.mem, &tables, 1024, 2, &muts);
        cd.set_ttb0(root);
        env.mem.write(PhysAddr(CDTAB), cd.as_bytes()).unwrap();
        let s = s1_ste(Config::S1Trans);
        env.ste(&s);
        let extra: Vec<u64> = extra.iter().map(|a| a & ((1u64 << window) - 1)).collect();
        for iova in probes(&maps, &extra) {
            let want = expect(&f, &env.mem, root, iova);
            prop_assert_eq!(env.probe(iova), want, "{} iova {:#x}", f.name(), iova);
        }
    }

    /// Stage 2 (an STE's S2TTB): every granule, every S2SL0 with 1 to 16 concatenated
    /// start tables, S2PS 0..=6, OAS 48 or 52, S2AFFD on or off.
    #[test]
    fn stage2_model_agrees_with_the_format(
        g in granule(),
        sl0 in 0u64..=2,
        extra_bits in 0u32..=4,
        s2ps in 0u64..=6,
        oas52 in any::<bool>(),
        affd in any::<bool>(),
        raw in raw_maps(),
        muts in prop::collection::vec((any::<usize>(), any::<usize>(), mask()), 0..4),
        extra in prop::collection::vec(any::<u64>(), 8),
    ) {
        let mut env = Env::new(if oas52 { 52 } else { 48 });
        // The start level's reach plus one table's index bits plus 0–4 concatenation
        // bits, within the S2T0SZ limits (skip the combinations outside them).
        let start = if g == Granule::K4 { 2 - sl0 as u32 } else { 3 - sl0 as u32 };
        let stride = g.shift() - 3;
        let reach = g.shift() + (3 - start) * stride;
        let ia = reach + stride + extra_bits;
        let min = if g == Granule::K64 { 12 } else { 16 };
        prop_assume!(ia <= 64 - min.max(64 - env.cfg.oas_bits) && ia >= 25);
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(Config::S2Trans);
        s.set_s2vmid(4);
        s.set_s2t0sz(64 - ia as u64);
        s.set_s2sl0(sl0);
        s.set_s2tg(g);
        s.set_s2ps(s2ps);
        s.set_s2aa64(true);
        s.set_s2affd(affd);
        s.set_s2r(true);
        let f = Vmsa::from_ste(&env.caps(), &s).unwrap();
        let window = ia.min(36);
        let maps = maps(window, f.oa_bits(), &raw);
        let (tables, root) = build(&f, &mut env.mem, TABLES, &maps, Attrs::default());
        // The first 8 KiB of a table hold every entry these mappings use.
        corrupt(&mut env.mem, &tables, 1024, 2, &muts);
        s.set_s2ttb(root);
        env.ste(&s);
        let extra: Vec<u64> = extra.iter().map(|a| a & ((1u64 << window) - 1)).collect();
        let ias = env.cfg.oas_bits;
        for iova in probes(&maps, &extra) {
            // Stage 1 bypassed: an input beyond the IAS is a stage-1 Address size
            // fault before stage 2 is looked at (IHI0070 §3.4, STE.S1DSS); the walk
            // comparison is for the others.
            let want = if iova >> ias != 0 {
                Got::Event(EventType::FAddrSize)
            } else {
                expect(&f, &env.mem, root, iova)
            };
            prop_assert_eq!(env.probe(iova), want, "{} iova {:#x}", f.name(), iova);
        }
    }
}

/// Memory as a nested stage-1 walk sees it, on the driver side's reader: every address
/// is an IPA translated by the stage-2 format first (a table read needs S2AP read). The
/// first stage-2 failure is kept in `fail`.
struct S2Mem<'a> {
    mem: &'a SparseMemory,
    f2: &'a Vmsa,
    root2: u64,
    fail: Cell<Option<Got>>,
}

impl PhysMem for S2Mem<'_> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        match expect(self.f2, self.mem, self.root2, addr.0) {
            Got::Mapped { pa, read: true, .. } => self.mem.read(PhysAddr(pa), buf),
            other => {
                self.fail.set(Some(other));
                Err(MemError::Unbacked { addr })
            }
        }
    }
    fn write(&mut self, addr: PhysAddr, _data: &[u8]) -> Result<(), MemError> {
        Err(MemError::ReadOnly { addr })
    }
}

/// The driver side's reader on nested tables, for one access: stage 1 with its table
/// reads through stage 2, stage 1's permission for the access, then stage 2 of the
/// output IPA and its permission (a stage-1 fault comes before stage 2 of the output
/// is looked at).
fn expect_nested(
    f1: &Vmsa,
    f2: &Vmsa,
    mem: &SparseMemory,
    (root1, root2): (u64, u64),
    va: u64,
    access: Access,
) -> Result<u64, Got> {
    let m = S2Mem {
        mem,
        f2,
        root2,
        fail: Cell::new(None),
    };
    let s1 = expect(f1, &m, root1, va);
    if let Some(f) = m.fail.get() {
        return Err(f);
    }
    let allowed = |read: bool, write: bool| match access {
        Access::Read => read,
        Access::Write => write,
    };
    match s1 {
        Got::Mapped {
            pa: ipa,
            read,
            write,
        } if allowed(read, write) => match expect(f2, mem, root2, ipa) {
            Got::Mapped { pa, read, write } if allowed(read, write) => Ok(pa),
            Got::Mapped { .. } => Err(NO_ACCESS),
            other => Err(other),
        },
        Got::Mapped { .. } => Err(NO_ACCESS),
        other => Err(other),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Nested (STE.Config 0b111): stage-1 tables of every granule whose descriptors are
    /// read at IPAs through a stage 2 (4 KiB, 2 MiB blocks identity-mapping 64 MiB, with
    /// holes and read-only blocks), the stage-1 output translated by stage 2: the model
    /// and the formats agree.
    #[test]
    fn nested_model_agrees_with_the_formats(
        g in granule(),
        t0sz in 16u64..=39,
        raw in raw_maps(),
        holes in prop::collection::vec(1u64..32, 0..6),
        read_only in prop::collection::vec(1u64..32, 0..6),
        muts in prop::collection::vec((any::<usize>(), any::<usize>(), mask()), 0..4),
        extra in prop::collection::vec(any::<u64>(), 8),
    ) {
        let mut env = Env::new(48);
        // Stage 2: S2T0SZ 25 (39-bit IPA), S2SL0 1 (level 1), L1[0] -> L2 of 2 MiB
        // blocks; block 0 (the CD and the stage-1 tables' first pages) always RW.
        let (l1, l2) = (0x300_0000u64, 0x300_1000u64);
        env.mem.write(PhysAddr(l1), &[0u8; 0x2000]).unwrap();
        env.mem.write_u64(PhysAddr(l1), l2 | 0b11).unwrap();
        for b in 0..32u64 {
            if holes.contains(&b) {
                continue;
            }
            let w = if read_only.contains(&b) { 0 } else { 1 << 7 };
            env.mem.write_u64(PhysAddr(l2 + 8 * b), b << 21 | 1 << 10 | 1 << 6 | w | 0b01).unwrap();
        }
        let mut s = s1_ste(Config::Nested);
        s.set_s2vmid(4);
        s.set_s2t0sz(25);
        s.set_s2sl0(1);
        s.set_s2tg(Granule::K4);
        s.set_s2ps(5);
        s.set_s2aa64(true);
        s.set_s2r(true);
        s.set_s2ttb(l1);
        let f2 = Vmsa::from_ste(&env.caps(), &s).unwrap();
        let mut cd = s1_cd(g, t0sz, 5);
        let f1 = Vmsa::from_cd(&env.caps(), &cd).unwrap();
        let window = (64 - t0sz as u32).min(36);
        // Stage-1 outputs (IPAs) inside the 64 MiB stage 2 maps, mostly.
        let maps = maps(window, 27, &raw);
        let (tables, root1) = build(&f1, &mut env.mem, TABLES, &maps, Attrs::default());
        corrupt(&mut env.mem, &tables, 1024, 2, &muts);
        cd.set_ttb0(root1);
        env.mem.write(PhysAddr(CDTAB), cd.as_bytes()).unwrap();
        env.ste(&s);
        let extra: Vec<u64> = extra.iter().map(|a| a & ((1u64 << window) - 1)).collect();
        for va in probes(&maps, &extra) {
            for access in [Access::Read, Access::Write] {
                let want = expect_nested(&f1, &f2, &env.mem, (root1, l1), va, access);
                prop_assert_eq!(env.one(va, access), want, "{} va {:#x} {:?}", f1.name(), va, access);
            }
        }
    }
}

/// Stage-2 tables written by hand (not through `map`): 4 KiB granule, S2SL0 1 (Arm
/// level 1) with S2T0SZ 22, so the start level resolves 42 IPA bits with 8 concatenated
/// level-1 tables (IPA bits 41:39 pick the table); a 1 GiB block in the sixth table, a
/// 2 MiB block and a page below the third. Model and format agree, on the values the
/// Arm ARM gives.
#[test]
fn hand_written_concatenated_stage2_start_tables_agree() {
    let mut env = Env::new(48);
    let root = 0x20_0000u64; // 8 tables of 4 KiB, aligned to 32 KiB.
    let (l2, l3) = (0x30_0000u64, 0x30_1000u64);
    let w = |env: &mut Env, a: u64, v: u64| env.mem.write_u64(PhysAddr(a), v).unwrap();
    let s2_rw = 1 << 10 | 1 << 6 | 1 << 7;
    // Table 5 (IPA bits 41:39 = 5), entry 3: a 1 GiB block at 0x80_4000_0000, RW.
    w(
        &mut env,
        root + 5 * 0x1000 + 8 * 3,
        0x80_4000_0000 | s2_rw | 0b01,
    );
    // Table 2, entry 7 -> L2; L2[1]: 2 MiB block, read-only; L2[2] -> L3; L3[5] page.
    w(&mut env, root + 2 * 0x1000 + 8 * 7, l2 | 0b11);
    w(&mut env, l2 + 8, 0x12_3400_0000 | 1 << 10 | 1 << 6 | 0b01);
    w(&mut env, l2 + 16, l3 | 0b11);
    w(&mut env, l3 + 8 * 5, 0xabc_d000 | s2_rw | 0b11);
    // Table 7, entry 0: a block with AF = 0 (F_ACCESS); entry 1: a block beyond the
    // 40-bit S2PS (F_ADDR_SIZE); entry 2: a level-1 block with AF = 0 and beyond the
    // output size: Address size is reported before Access flag (AArch64.S1Walk /
    // S2Walk report OA out of range from the walk, the AF check comes after).
    w(&mut env, root + 7 * 0x1000, 0x4000_0000 | 1 << 6 | 0b01);
    w(
        &mut env,
        root + 7 * 0x1000 + 8,
        0x100_0000_0000 | s2_rw | 0b01,
    );
    w(
        &mut env,
        root + 7 * 0x1000 + 16,
        0x200_0000_0000 | 1 << 6 | 0b01,
    );
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(Config::S2Trans);
    s.set_s2t0sz(22);
    s.set_s2sl0(1);
    s.set_s2tg(Granule::K4);
    s.set_s2ps(2);
    s.set_s2aa64(true);
    s.set_s2r(true);
    s.set_s2ttb(root);
    env.ste(&s);
    let f = Vmsa::from_ste(&env.caps(), &s).unwrap();
    assert_eq!(f.concatenated(), 8);
    let t = |n: u64| n << 39;
    let cases = [
        (
            t(5) | 3 << 30 | 0x1234_5678,
            Got::Mapped {
                pa: 0x80_5234_5678,
                read: true,
                write: true,
            },
        ),
        (t(5) | 4 << 30, Got::Event(EventType::FTranslation)),
        (
            t(2) | 7 << 30 | 1 << 21 | 0x42,
            Got::Mapped {
                pa: 0x12_3400_0042,
                read: true,
                write: false,
            },
        ),
        (
            t(2) | 7 << 30 | 2 << 21 | 5 << 12 | 0x10,
            Got::Mapped {
                pa: 0xabc_d010,
                read: true,
                write: true,
            },
        ),
        (
            t(2) | 7 << 30 | 2 << 21 | 6 << 12,
            Got::Event(EventType::FTranslation),
        ),
        (t(7), Got::Event(EventType::FAccess)),
        (t(7) | 1 << 30, Got::Event(EventType::FAddrSize)),
        (t(7) | 2 << 30, Got::Event(EventType::FAddrSize)),
        // IPA bit 42 is beyond the 42-bit input.
        (1 << 42, Got::Event(EventType::FTranslation)),
    ];
    for (ipa, want) in cases {
        assert_eq!(env.probe(ipa), want, "model at {ipa:#x}");
        assert_eq!(expect(&f, &env.mem, root, ipa), want, "format at {ipa:#x}");
    }
}

/// Stage-1 tables written by hand with the 64 KiB granule: T0SZ 22 (42-bit VA, Arm
/// level 2 start resolving bits 41:29), a 512 MiB block, a page under a level-3 table,
/// a block with a RES0 address bit; with a 52-bit OAS and IPS a 4 TiB level-1 block
/// under T0SZ 16 whose OA\[51:48\] sit in bits 15:12, which is no block with IPS 48.
#[test]
fn hand_written_64k_blocks_agree() {
    let mut env = Env::new(52);
    let w = |env: &mut Env, a: u64, v: u64| env.mem.write_u64(PhysAddr(a), v).unwrap();
    let s1_rw = 1 << 10 | 1 << 6;
    // T0SZ 22: level 2 is the start (bits 41:29), a 64 KiB-aligned 64 KiB table.
    let root = 0x20_0000u64;
    let l3 = 0x30_0000u64;
    w(&mut env, root + 8 * 3, 0x2_2000_0000 | s1_rw | 0b01);
    w(&mut env, root + 8 * 4, l3 | 0b11);
    w(&mut env, l3 + 8 * 9, 0x77_0000 | s1_rw | 1 << 7 | 0b11);
    // A 512 MiB block with RES0 address bits (bit 20) set: refused.
    w(&mut env, root + 8 * 5, 0x4_0010_0000 | s1_rw | 0b01);
    let mut cd = s1_cd(Granule::K64, 22, 6);
    cd.set_ttb0(root);
    env.mem.write(PhysAddr(CDTAB), cd.as_bytes()).unwrap();
    let s = s1_ste(Config::S1Trans);
    env.ste(&s);
    let f = Vmsa::from_cd(&env.caps(), &cd).unwrap();
    let cases = [
        (
            3 << 29 | 0x123_4567,
            Got::Mapped {
                pa: 0x2_2123_4567,
                read: true,
                write: true,
            },
        ),
        (
            4 << 29 | 9 << 16 | 0x88,
            Got::Mapped {
                pa: 0x77_0088,
                read: true,
                write: false,
            },
        ),
        (5 << 29, Got::Event(EventType::FTranslation)),
        (6 << 29, Got::Event(EventType::FTranslation)),
    ];
    for (va, want) in cases {
        assert_eq!(env.probe(va), want, "model at {va:#x}");
        assert_eq!(expect(&f, &env.mem, root, va), want, "format at {va:#x}");
    }
    // T0SZ 16 (48-bit VA), 64 KiB granule: level 1 start (bits 47:42, 64 entries); a
    // 4 TiB level-1 block at PA 0xa_0400_0000_0000 (OA[51:48] = 0xa in bits 15:12).
    let root1 = 0x40_0000u64;
    w(
        &mut env,
        root1 + 8 * 2,
        0x0400_0000_0000 | 0xa << 12 | s1_rw | 0b01,
    );
    cd.set_t0sz(16);
    cd.set_ttb0(root1);
    env.mem.write(PhysAddr(CDTAB), cd.as_bytes()).unwrap();
    let f = Vmsa::from_cd(&env.caps(), &cd).unwrap();
    let va = 2 << 42 | 0x3_1234_5678;
    let want = Got::Mapped {
        pa: 0xa_0403_1234_5678,
        read: true,
        write: true,
    };
    assert_eq!(env.probe(va), want, "model at {va:#x}");
    assert_eq!(expect(&f, &env.mem, root1, va), want, "format at {va:#x}");
    // With a 48-bit IPS the same level-1 descriptor is no block: 64 KiB level-1 blocks
    // exist only with a 52-bit output size (reference §12): translation fault.
    cd.set_ips(5);
    env.mem.write(PhysAddr(CDTAB), cd.as_bytes()).unwrap();
    let f = Vmsa::from_cd(&env.caps(), &cd).unwrap();
    let want = Got::Event(EventType::FTranslation);
    assert_eq!(env.probe(va), want, "model at {va:#x}, IPS 48");
    assert_eq!(
        expect(&f, &env.mem, root1, va),
        want,
        "format at {va:#x}, IPS 48"
    );
}
