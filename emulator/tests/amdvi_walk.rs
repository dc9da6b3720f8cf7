//! Independent check of the AMD-Vi model's page-table walker against the driver side's
//! reader (`amdvi::format` on the generic `iommu_core::pgtable::translate`).
//!
//! The model walks with code of its own (`emulator/src/amdvi/walk.rs`, from the
//! reference); the arch crate's formats are used here, as a dev-dependency only, to
//! build tables and to predict the outcome. Every address probed must get the same
//! answer from both: the same output address and permissions, or the same fault kind
//! (IO_PAGE_FAULT not present / reserved-bit, PAGE_TAB_HARDWARE_ERROR). Tables come
//! from proptest (mapped with the generic `map`, then corrupted at random; v1, v2 and
//! nested v2 over v1) and by hand (level skipping, NextLevel 7).

use amdvi::format::{Gcr3Error, GuestV2, HostV1, V1Attrs};
use amdvi::hw::dte::{DeviceTableEntry, Gcr3Entry, Glx, GuestPagingMode};
use amdvi::hw::event::{EventCode, EventEntry, EventFlags};
use amdvi::hw::pte::{self, sized_page_addr, v1_pde};
use amdvi::hw::regs::{self, field_value};
use emulator::amdvi::{AmdViConfig, AmdViUnit};
use emulator::memory::SparseMemory;
use emulator::model::{Access, DmaError, DmaRequest, IommuModel};
use iommu_core::pgtable::{translate, Format, Outcome, Perms, WalkErrorKind};
use iommu_core::{Iova, PageSize, Pasid, PhysAddr, PhysMem, RequesterId};
use proptest::prelude::*;
use std::cell::Cell;
use walkcheck::{build, corrupt, probes, Map};

mod walkcheck;

const BASE: PhysAddr = PhysAddr(0xfed8_0000);
const DEVTAB: u64 = 0x1000;
const EVT: u64 = 0x2000;
const TABLES: u64 = 0x10_0000;
const RAM: u64 = 0x400_0000;
const DEV: u16 = 0x10;
const DOM: u16 = 9;

/// What an address gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// Translated to `pa` with these permissions.
    Mapped { pa: u64, read: bool, write: bool },
    /// IO_PAGE_FAULT with PR = 0.
    NotPresent,
    /// IO_PAGE_FAULT with PR = 1, RZ = 1.
    Reserved,
    /// PAGE_TAB_HARDWARE_ERROR.
    HwError,
}

struct Env {
    mem: SparseMemory,
    unit: AmdViUnit,
}

/// EFR with 6-level host tables (HATS = 2), 5-level guest tables (GATS = 1), GTSup.
fn efr() -> u64 {
    AmdViConfig::new(BASE).efr | field_value(regs::EFR::HATS, 2) | field_value(regs::EFR::GATS, 1)
}

impl Env {
    fn new(c_bit: Option<u8>) -> Self {
        let mut mem = SparseMemory::new(&[(PhysAddr(0), RAM)]).unwrap();
        // RAM never written reads as poison: zero the low 4 MiB (rings, device table,
        // every table this test allocates or writes).
        mem.write(PhysAddr(0), &vec![0u8; 0x40_0000]).unwrap();
        let cfg = AmdViConfig::new(BASE).with_efr(efr()).with_c_bit(c_bit);
        let unit = Self::unit(&mut mem, cfg);
        Self { mem, unit }
    }

    /// A unit with the device table, the event log and IommuEn, EventLogEn, GTEn.
    fn unit(mem: &mut SparseMemory, cfg: AmdViConfig) -> AmdViUnit {
        let mut unit = AmdViUnit::new(cfg);
        unit.mmio_write(mem, regs::DEV_TAB_BASE, 8, DEVTAB);
        unit.mmio_write(mem, regs::EVT_LOG_BASE, 8, EVT | (8 << 56));
        let ctl = field_value(regs::CONTROL::IOMMU_EN, 1)
            | field_value(regs::CONTROL::EVENT_LOG_EN, 1)
            | field_value(regs::CONTROL::GT_EN, 1);
        unit.mmio_write(mem, regs::CONTROL, 8, ctl);
        unit
    }

    fn dte(&mut self, d: DeviceTableEntry) {
        for (i, q) in d.qwords().iter().enumerate() {
            let at = DEVTAB + DEV as u64 * 32 + 8 * i as u64;
            self.mem.write_u64(PhysAddr(at), *q).unwrap();
        }
    }

    /// The latest event, consumed.
    fn last_event(&mut self) -> EventEntry {
        let tail = self.unit.mmio_read(&mut self.mem, regs::EVT_TAIL, 8);
        let at = EVT + (tail + 4096 - 16) % 4096;
        let e = EventEntry::from_qwords([
            self.mem.read_u64(PhysAddr(at)).unwrap(),
            self.mem.read_u64(PhysAddr(at + 8)).unwrap(),
        ]);
        self.unit.mmio_write(&mut self.mem, regs::EVT_HEAD, 8, tail);
        e
    }

    fn one(&mut self, iova: u64, access: Access, pasid: Option<u32>) -> Result<u64, Got> {
        let req = DmaRequest {
            rid: RequesterId::from_sid(0, DEV),
            pasid: pasid.map(Pasid),
            privileged: false,
            iova: Iova(iova),
            access,
        };
        match self.unit.translate(&mut self.mem, &req) {
            Ok(t) => Ok(t.pa.0),
            Err(DmaError::Memory { .. }) => {
                let e = self.last_event();
                assert_eq!(
                    EventCode::from_bits(e.code_bits()),
                    Some(EventCode::PageTabHardwareError)
                );
                Err(Got::HwError)
            }
            Err(DmaError::Fault(f)) => {
                assert_eq!(f.code, 2, "{iova:#x}: {f:?}");
                let e = self.last_event();
                let fl: EventFlags = e.flags();
                Err(if !fl.has(EventFlags::PR) {
                    Got::NotPresent
                } else if fl.has(EventFlags::RZ) {
                    Got::Reserved
                } else {
                    assert!(fl.has(EventFlags::PE), "{iova:#x}: flags {fl:?}");
                    // A permission fault: reported by `probe` as a missing permission.
                    Got::Mapped {
                        pa: u64::MAX,
                        read: false,
                        write: false,
                    }
                })
            }
            Err(e) => panic!("{iova:#x}: {e:?}"),
        }
    }

    /// What the model does with a read and a write of `iova`, with empty caches (a
    /// fresh unit: an IOTLB entry of a replicated NextLevel-7 page may rightly answer
    /// for a slot the tables no longer agree with).
    fn probe(&mut self, iova: u64, pasid: Option<u32>) -> Got {
        self.unit = Self::unit(&mut self.mem, self.unit.config().clone());
        let perm_fault = Got::Mapped {
            pa: u64::MAX,
            read: false,
            write: false,
        };
        let r = self.one(iova, Access::Read, pasid);
        let w = self.one(iova, Access::Write, pasid);
        match (r, w) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{iova:#x}: read and write translate differently");
                Got::Mapped {
                    pa: a,
                    read: true,
                    write: true,
                }
            }
            (Ok(pa), Err(e)) if e == perm_fault => Got::Mapped {
                pa,
                read: true,
                write: false,
            },
            (Err(e), Ok(pa)) if e == perm_fault => Got::Mapped {
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
fn expect<F: Format>(f: &F, mem: &dyn PhysMem, root: u64, iova: u64) -> Got {
    match translate(f, mem, PhysAddr(root), Iova(iova)) {
        Ok(t) => match t.outcome {
            Outcome::Mapped { pa, perms, .. } if !perms.read && !perms.write => {
                let _ = pa;
                Got::Mapped {
                    pa: u64::MAX,
                    read: false,
                    write: false,
                }
            }
            Outcome::Mapped { pa, perms, .. } => Got::Mapped {
                pa: pa.0,
                read: perms.read,
                write: perms.write,
            },
            Outcome::NotPresent { .. } | Outcome::BeyondInputWidth { .. } => Got::NotPresent,
            Outcome::SkippedBitsSet { .. } => Got::Reserved,
        },
        Err(e) => match e.kind {
            WalkErrorKind::Memory(_) => Got::HwError,
            _ => Got::Reserved,
        },
    }
}

fn perms(r: bool, w: bool) -> Perms {
    Perms {
        read: r || !w,
        write: w,
        exec: false,
    }
}

/// Bits a corruption flips: PR, reserved 56:52, NextLevel, low address bits, IR/IW,
/// an address bit past RAM, the C-bit.
fn mask() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(pte::PR),
        (52u32..57).prop_map(|b| 1u64 << b),
        (1u64..8).prop_map(|n| n << 9),
        (12u32..31).prop_map(|b| 1u64 << b),
        (1u32..12).prop_map(|k| ((1u64 << k) - 1) << 12),
        Just(pte::IR),
        Just(pte::IW),
        Just(1u64 << 40),
        Just(1u64 << 47),
    ]
}

fn map_strategy(window: u32) -> impl Strategy<Value = (u64, u64, u32, bool, bool)> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::sample::select(vec![12u32, 12, 13, 15, 16, 20, 21, 21, 22, 27, 30, 31]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(i, p, s, r, w)| {
            let span = 1u64.checked_shl(window).unwrap_or(0).wrapping_sub(1);
            let iova = (i & span) & !((1u64 << s) - 1);
            let pa = (p & ((1u64 << 46) - 1)) & !((1u64 << s) - 1);
            (iova, pa, s, r, w)
        })
}

fn to_maps(raw: &[(u64, u64, u32, bool, bool)]) -> Vec<Map> {
    raw.iter()
        .map(|&(i, p, s, r, w)| (i, p, PageSize::from_shift(s).unwrap(), perms(r, w)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// v1 tables of 1 to 6 levels, with or without a C-bit, mapped and corrupted: the
    /// model and the format agree on every address probed.
    #[test]
    fn v1_model_agrees_with_the_format(
        levels in 1u8..=6,
        c_bit in prop::option::of(Just(47u8)),
        wide in any::<bool>(),
        raw in prop::collection::vec(map_strategy(64), 1..10),
        muts in prop::collection::vec((any::<usize>(), any::<usize>(), mask()), 0..4),
        extra in prop::collection::vec(any::<u64>(), 8),
    ) {
        let f = HostV1::new(levels).unwrap().with_sized_pages(true).with_c_bit(c_bit).unwrap();
        let ia = f.ia_bits();
        // Most addresses in a small window so that mappings share tables.
        let window = if wide { ia } else { ia.min(34) };
        let cut = |a: u64| if window >= 64 { a } else { a & ((1u64 << window) - 1) };
        let raw: Vec<_> = raw.into_iter().map(|(i, p, s, r, w)| (cut(i) & !((1u64 << s) - 1), p, s, r, w)).collect();
        let maps = to_maps(&raw);
        let mut env = Env::new(c_bit);
        let (tables, root0) = build(&f, &mut env.mem, TABLES, &maps, V1Attrs::default());
        // Every entry of a 4 KiB table (a Mode-6 root is 1 KiB, its neighbour zero RAM).
        corrupt(&mut env.mem, &tables, 512, 128, &muts);
        let root = root0 | c_bit.map_or(0, |c| 1u64 << c);
        env.dte(DeviceTableEntry::host(root, levels, DOM, true, true));
        let extra: Vec<u64> = extra.iter().map(|&a| cut(a)).collect();
        for iova in probes(&maps, &extra) {
            let want = expect(&f, &env.mem, root0, iova);
            let got = env.probe(iova, None);
            prop_assert_eq!(got, want, "iova {:#x}", iova);
        }
    }

    /// v2 tables (4 and 5 levels) through a one-level GCR3 table, PASID and GIoV
    /// requests: the model and the format agree.
    #[test]
    fn v2_model_agrees_with_the_format(
        five in any::<bool>(),
        pasid in 0u32..512,
        raw in prop::collection::vec(map_strategy(40), 1..10),
        muts in prop::collection::vec((any::<usize>(), any::<usize>(), prop_oneof![
            Just(pte::V2_P), Just(pte::V2_PS), Just(pte::V2_RW), (12u32..31).prop_map(|b| 1u64 << b), Just(1u64 << 40), Just(pte::V2_NX)
        ]), 0..4),
        extra in prop::collection::vec(0u64..(1 << 40), 8),
    ) {
        let levels = if five { 5 } else { 4 };
        let f = GuestV2::new(levels).unwrap();
        let maps = to_maps(&raw);
        let mut env = Env::new(None);
        let (tables, root) = build(&f, &mut env.mem, TABLES, &maps, ());
        corrupt(&mut env.mem, &tables, 512, 128, &muts);
        let gcr3 = 0x8000u64;
        env.mem.write_u64(PhysAddr(gcr3 + 8 * pasid as u64), Gcr3Entry::new(root).qwords()[0]).unwrap();
        let mut d = DeviceTableEntry::blocking(DOM);
        d.set_bit(amdvi::hw::dte::bits::IR, true);
        d.set_bit(amdvi::hw::dte::bits::IW, true);
        let gpm = if five { GuestPagingMode::Level5 } else { GuestPagingMode::Level4 };
        d.set_guest(gcr3, Glx::One, pasid == 0, gpm);
        env.dte(d);
        for iova in probes(&maps, &extra) {
            let want = match f.gcr3_lookup(&d, &env.mem, pasid) {
                Ok(root) => expect(&f, &env.mem, root.0, iova),
                Err(Gcr3Error::NotPresent { .. }) => Got::NotPresent,
                Err(Gcr3Error::Mem(_)) => Got::HwError,
                Err(e) => panic!("{e:?}"),
            };
            let got = env.probe(iova, Some(pasid));
            prop_assert_eq!(got, want, "pasid {} iova {:#x}", pasid, iova);
            if pasid == 0 {
                // GIoV: a request without a PASID uses PASID 0's tables.
                prop_assert_eq!(env.probe(iova, None), want, "GIoV iova {:#x}", iova);
            }
        }
    }
}

/// Memory as a nested guest walk sees it, on the driver side's reader: every address is
/// a GPA translated by the host (v1) format first (a guest-structure read needs IR).
/// The first host failure is kept in `fail`.
struct HostMem<'a> {
    mem: &'a SparseMemory,
    f: &'a HostV1,
    root: u64,
    fail: Cell<Option<Got>>,
}

impl PhysMem for HostMem<'_> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), iommu_core::MemError> {
        match expect(self.f, self.mem, self.root, addr.0) {
            Got::Mapped { pa, read: true, .. } => self.mem.read(PhysAddr(pa), buf),
            // Host page without IR: a permission fault on the guest structure.
            Got::Mapped { .. } => {
                self.fail.set(Some(PERM));
                Err(iommu_core::MemError::Unbacked { addr })
            }
            other => {
                self.fail.set(Some(other));
                Err(iommu_core::MemError::Unbacked { addr })
            }
        }
    }
    fn write(&mut self, addr: PhysAddr, _data: &[u8]) -> Result<(), iommu_core::MemError> {
        Err(iommu_core::MemError::ReadOnly { addr })
    }
}

const PERM: Got = Got::Mapped {
    pa: u64::MAX,
    read: false,
    write: false,
};

/// The driver side's readers on nested tables, for one access: the GCR3 table and the
/// guest tables read through the host tables, then the host translation of the guest
/// output, permissions combined (the model's order: the host translation of the output
/// comes before the access check).
fn expect_nested(
    g: &GuestV2,
    h: &HostV1,
    mem: &SparseMemory,
    d: &DeviceTableEntry,
    hroot: u64,
    gva: u64,
    access: Access,
) -> Result<u64, Got> {
    let m = HostMem {
        mem,
        f: h,
        root: hroot,
        fail: Cell::new(None),
    };
    let guest = match g.gcr3_lookup(d, &m, 0) {
        Ok(root) => expect(g, &m, root.0, gva),
        Err(Gcr3Error::NotPresent { .. }) => Got::NotPresent,
        Err(Gcr3Error::Mem(_)) => Got::HwError,
        Err(e) => panic!("{e:?}"),
    };
    if let Some(f) = m.fail.get() {
        return Err(f);
    }
    let Got::Mapped {
        pa: gpa,
        read,
        write,
    } = guest
    else {
        return Err(guest);
    };
    match expect(h, mem, hroot, gpa) {
        Got::Mapped {
            pa,
            read: r2,
            write: w2,
        } => {
            let ok = match access {
                Access::Read => read && r2,
                Access::Write => write && w2,
            };
            if ok && pa != u64::MAX {
                Ok(pa)
            } else {
                Err(PERM)
            }
        }
        other => Err(other),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Nested (DTE GV=1, Mode 3): the GCR3 table and 4- or 5-level guest tables read
    /// at GPAs through host v1 tables (2 MiB pages identity-mapping 64 MiB, with holes
    /// and read-only and write-only pages), the guest output translated by the host: the model and the
    /// formats agree for reads and writes.
    #[test]
    fn nested_model_agrees_with_the_formats(
        five in any::<bool>(),
        raw in prop::collection::vec(map_strategy(40), 1..10),
        holes in prop::collection::vec(1u64..32, 0..6),
        read_only in prop::collection::vec(1u64..32, 0..6),
        write_only in prop::collection::vec(1u64..32, 0..6),
        muts in prop::collection::vec((any::<usize>(), any::<usize>(), prop_oneof![
            Just(pte::V2_P), Just(pte::V2_PS), Just(pte::V2_RW), (12u32..31).prop_map(|b| 1u64 << b)
        ]), 0..4),
        extra in prop::collection::vec(0u64..(1 << 40), 8),
    ) {
        let mut env = Env::new(None);
        let (l3, l2) = (0x300_0000u64, 0x300_1000u64);
        env.mem.write(PhysAddr(l3), &[0u8; 0x2000]).unwrap();
        env.mem.write_u64(PhysAddr(l3), v1_pde(l2, 2)).unwrap();
        for b in 0..32u64 {
            if holes.contains(&b) {
                continue;
            }
            let w = if read_only.contains(&b) { 0 } else { pte::IW };
            let r = if write_only.contains(&b) { 0 } else { pte::IR };
            env.mem.write_u64(PhysAddr(l2 + 8 * b), b << 21 | pte::PR | r | w).unwrap();
        }
        let h = HostV1::new(3).unwrap();
        let g = GuestV2::new(if five { 5 } else { 4 }).unwrap();
        // Guest outputs (GPAs) inside the 64 MiB the host maps, mostly.
        let raw: Vec<_> = raw.into_iter().map(|(i, p, s, r, w)| (i, p & ((1 << 27) - 1) & !((1u64 << s) - 1), s, r, w)).collect();
        let maps = to_maps(&raw);
        let (tables, groot) = build(&g, &mut env.mem, TABLES, &maps, ());
        corrupt(&mut env.mem, &tables, 512, 128, &muts);
        let gcr3 = 0x8000u64;
        env.mem.write_u64(PhysAddr(gcr3), Gcr3Entry::new(groot).qwords()[0]).unwrap();
        let mut d = DeviceTableEntry::blocking(DOM);
        d.set_bit(amdvi::hw::dte::bits::IR, true);
        d.set_bit(amdvi::hw::dte::bits::IW, true);
        let gpm = if five { GuestPagingMode::Level5 } else { GuestPagingMode::Level4 };
        d.set_guest(gcr3, Glx::One, true, gpm);
        d.set_mode(amdvi::hw::dte::Mode::Levels(3));
        d.set_page_table_root(l3);
        env.dte(d);
        for gva in probes(&maps, &extra) {
            for access in [Access::Read, Access::Write] {
                let want = expect_nested(&g, &h, &env.mem, &d, l3, gva, access);
                env.unit = Env::unit(&mut env.mem, env.unit.config().clone());
                prop_assert_eq!(env.one(gva, access, None), want, "gva {:#x} {:?}", gva, access);
            }
        }
    }
}

/// Hand-written 4-level tables (not through `map`): the L4 entry skips level 3
/// (NextLevel 2); an L2 entry points to an L1 table holding a replicated NextLevel-7
/// 32 KiB page; another L2 slot holds a NextLevel-7 8 MiB page replicated over 4
/// slots; a NextLevel-0 2 MiB page; a PDE with NextLevel 1 at level 3 (skipping level
/// 2) under a second L4 entry; NextLevel-7 entries as large as their table (reserved). Model and format
/// agree on every interesting address, and the model's answers are the ones the
/// reference gives.
#[test]
fn hand_written_level_skipping_and_nextlevel7_tables_agree() {
    let mut env = Env::new(None);
    let (l4, l2, l1, l3b, l1b) = (
        0x20_0000u64,
        0x20_1000u64,
        0x20_2000u64,
        0x20_3000u64,
        0x20_4000u64,
    );
    let w = |env: &mut Env, a: u64, v: u64| env.mem.write_u64(PhysAddr(a), v).unwrap();
    // L4[0] -> L2 (skips level 3: DVA bits 38:30 must be zero).
    w(&mut env, l4, v1_pde(l2, 2));
    // L2[0] -> L1; L1[8..16] one 32 KiB NextLevel-7 page at 0x4000_0000.
    w(&mut env, l2, v1_pde(l1, 1));
    let p32k = sized_page_addr(0x4000_0000, 15) | (7 << 9) | pte::PR | pte::IR | pte::IW;
    for s in 8..16 {
        w(&mut env, l1 + 8 * s, p32k);
    }
    // L2[4..8]: one 8 MiB NextLevel-7 read-only page at 0x8080_0000... aligned to 8 MiB.
    let p8m = sized_page_addr(0x8000_0000, 23) | (7 << 9) | pte::PR | pte::IR;
    for s in 4..8 {
        w(&mut env, l2 + 8 * s, p8m);
    }
    // L2[9]: a 2 MiB page (NextLevel 0) at 0x6000_0000, write-only.
    w(&mut env, l2 + 8 * 9, 0x6000_0000 | pte::PR | pte::IW);
    // L4[1] -> L3 at l3b; L3b[2] -> L1 at l1b (skips level 2: bits 29:21 zero).
    w(&mut env, l4 + 8, v1_pde(l3b, 3));
    w(&mut env, l3b + 16, v1_pde(l1b, 1));
    w(
        &mut env,
        l1b + 8 * 3,
        0x7000_0000 | pte::PR | pte::IR | pte::IW,
    );
    // L2[12]: a NextLevel-7 entry whose size equals the level's own (2 MiB): reserved.
    w(
        &mut env,
        l2 + 8 * 12,
        sized_page_addr(0x9000_0000, 21) | (7 << 9) | pte::PR | pte::IR,
    );
    // L1[32]: a NextLevel-7 2 MiB page in a level-1 table, and L2[16] a NextLevel-7
    // 1 GiB page in a level-2 table: as large as the table's span, reserved.
    w(
        &mut env,
        l1 + 8 * 32,
        sized_page_addr(0x5000_0000, 21) | (7 << 9) | pte::PR | pte::IR,
    );
    w(
        &mut env,
        l2 + 8 * 16,
        sized_page_addr(0x4000_0000, 30) | (7 << 9) | pte::PR | pte::IR,
    );
    env.dte(DeviceTableEntry::host(l4, 4, DOM, true, true));
    let f = HostV1::new(4).unwrap();
    let l4b = 1u64 << 39;
    let cases = [
        (
            0x8000,
            Got::Mapped {
                pa: 0x4000_0000,
                read: true,
                write: true,
            },
        ),
        (
            0xfff8,
            Got::Mapped {
                pa: 0x4000_7ff8,
                read: true,
                write: true,
            },
        ),
        (
            0xc123,
            Got::Mapped {
                pa: 0x4000_4123,
                read: true,
                write: true,
            },
        ),
        (0x10000, Got::NotPresent),
        // Bit 30 set under the level-skipping L4 entry.
        (1 << 30 | 0x8000, Got::Reserved),
        (
            0x80_0000,
            Got::Mapped {
                pa: 0x8000_0000,
                read: true,
                write: false,
            },
        ),
        (
            0xff_fff0,
            Got::Mapped {
                pa: 0x807f_fff0,
                read: true,
                write: false,
            },
        ),
        (
            0x122_3458,
            Got::Mapped {
                pa: 0x6002_3458,
                read: false,
                write: true,
            },
        ),
        (0x180_0000, Got::Reserved),
        (0x2_0000, Got::Reserved),
        (0x200_0000, Got::Reserved),
        (
            l4b | 2 << 30 | 0x3008,
            Got::Mapped {
                pa: 0x7000_0008,
                read: true,
                write: true,
            },
        ),
        // Bit 21 set under the level-2-skipping L3 entry.
        (l4b | 2 << 30 | 1 << 21 | 0x3008, Got::Reserved),
        (l4b | 3 << 30, Got::NotPresent),
        (1 << 48, Got::NotPresent),
    ];
    for (iova, want) in cases {
        assert_eq!(expect(&f, &env.mem, l4, iova), want, "format at {iova:#x}");
        assert_eq!(env.probe(iova, None), want, "model at {iova:#x}");
    }
}
