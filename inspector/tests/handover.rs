//! The inspector on snapshots of a real handover: the vtd driver maps and attaches,
//! prepares (record + pinned pages in KHO), freezes, the machine kexecs, the new
//! kernel's driver adopts. Snapshots before the kexec and after adopt must show the same
//! translations, and `verify` must accept the driver's own record.

use emulator::machine::{Device, Machine};
use emulator::vtd::{VtdConfig, VtdUnit};
use iommu_core::kho::read_preserved;
use iommu_core::pgtable::Perms;
use iommu_core::{Iova, PageSize, PhysAddr, RequesterId};
use std::path::Path;
use std::process::{Command, Output};
use vtd::driver::{DomainKind, Hw, Mode, PagePool, Unit, UnitConfig};
use vtd::handover::{KhoOut, Selection};

const BASE: PhysAddr = PhysAddr(0xfed9_0000);
const POOL: (PhysAddr, u64) = (PhysAddr(16 << 20), 64 << 20);
const A: RequesterId = RequesterId::new(0, 0, 3, 0);
const B: RequesterId = RequesterId::new(0, 0, 3, 1);
const C: RequesterId = RequesterId::new(0, 2, 0, 0);

struct World {
    m: Machine,
    pool: PagePool,
}

impl World {
    fn hw<T>(&mut self, f: impl FnOnce(&mut Hw<'_>) -> T) -> T {
        let (mut regs, mut mem) = self.m.driver_access(BASE).expect("unit");
        let mut hw = Hw {
            regs: &mut regs,
            mem: &mut mem,
            pages: &mut self.pool,
        };
        f(&mut hw)
    }
}

fn inspect(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iommu-inspect"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("iommu-inspect runs")
}

fn run(config: VtdConfig, mode: Mode, kind: DomainKind) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut m = Machine::with_ram(&[(PhysAddr(0), 1 << 30)]).unwrap();
    m.add_unit(Box::new(VtdUnit::new(config).unwrap())).unwrap();
    for rid in [A, B, C] {
        m.add_device(Device {
            rid,
            pasid: None,
            unit: BASE,
        })
        .unwrap();
    }
    let mut w = World {
        m,
        pool: PagePool::new(POOL.0, POOL.1),
    };
    let cfg = UnitConfig::new(BASE, mode);
    let mut unit = w.hw(|hw| Unit::init(hw, &cfg)).expect("bring-up");
    let (d1, d2) = w.hw(|hw| {
        let d1 = unit.create_domain(hw, kind).unwrap();
        let d2 = unit.create_domain(hw, kind).unwrap();
        unit.map(
            hw,
            d1,
            Iova(0x1000),
            PhysAddr(0x2000_0000),
            0x4000,
            PageSize::SIZE_4K,
            Perms::RW,
        )
        .unwrap();
        unit.map(
            hw,
            d1,
            Iova(0x40_0000),
            PhysAddr(0x2040_0000),
            0x20_0000,
            PageSize::SIZE_2M,
            Perms::RW,
        )
        .unwrap();
        unit.map(
            hw,
            d2,
            Iova(0x1000),
            PhysAddr(0x3000_0000),
            0x1000,
            PageSize::SIZE_4K,
            Perms::RW,
        )
        .unwrap();
        unit.attach(hw, A, d1).unwrap();
        unit.attach(hw, B, d1).unwrap();
        unit.attach(hw, C, d2).unwrap();
        (d1, d2)
    });
    let _ = d2;
    emulator::snapshot::save(&w.m, &d.join("running.elf")).unwrap();
    let mut kho = KhoOut::new();
    let sel = Selection {
        domains: vec![d1],
        devices: vec![A, B],
    };
    // The guest memory the domain maps is preserved by its owner before prepare, which
    // refuses leaves into memory no KHO client preserves.
    kho.preserve_range(PhysAddr(0x2000_0000), 4).unwrap();
    kho.preserve_range(PhysAddr(0x2040_0000), 0x200).unwrap();
    w.hw(|hw| unit.prepare(hw, &mut kho, &sel))
        .expect("prepare");
    let blob = {
        let (_, mut mem) = w.m.driver_access(BASE).unwrap();
        kho.finalize(&mut mem, &mut w.pool).expect("finalize")
    };
    w.hw(|hw| unit.freeze(hw)).expect("freeze");
    emulator::snapshot::save(&w.m, &d.join("before.elf")).unwrap();
    w.m.kexec(blob).expect("kexec");
    let preserved = read_preserved(&*w.m.mem(), blob).unwrap();
    w.pool = PagePool::new(POOL.0, POOL.1);
    w.pool.exclude(&preserved);
    let (_new, report) = w.hw(|hw| Unit::adopt(hw, &cfg, blob)).expect("adopt");
    assert!(report.blocked.is_empty());
    emulator::snapshot::save(&w.m, &d.join("adopted.elf")).unwrap();

    // The driver's own record and pinned pages pass verification, before and after.
    for img in ["before.elf", "adopted.elf"] {
        let o = inspect(d, &["verify", img]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{img}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("KHO blob at"), "{s}");
        assert!(
            s.contains("unit dmar0: ") && !s.contains(" 0 page-table pages"),
            "{s}"
        );
        assert!(s.contains("ok: no problem found"), "{s}");
    }
    // Before the kexec and after adopt: the same translations, the same tables.
    for extra in [&["--semantic"][..], &[][..]] {
        let mut args = vec!["diff", "before.elf", "adopted.elf"];
        args.extend_from_slice(extra);
        let o = inspect(d, &args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // Freeze removed the device that was not preserved.
    let o = inspect(d, &["diff", "--semantic", "running.elf", "before.elf"]);
    assert_eq!(o.status.code(), Some(1));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("device 0000:02:00.0"), "{s}");
    assert!(!s.contains("device 0000:00:03.0"), "{s}");
    // The adopted device translates.
    let o = inspect(d, &["walk", "0x2010", "--device", "00:03.1", "adopted.elf"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("=> translates to 0x20001010"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn legacy_handover_before_kexec_and_after_adopt() {
    run(
        VtdConfig::legacy(BASE),
        Mode::Legacy,
        DomainKind::SecondStage,
    );
}

#[test]
fn scalable_second_stage_handover() {
    run(
        VtdConfig::scalable(BASE),
        Mode::Scalable,
        DomainKind::SecondStage,
    );
}

#[test]
fn scalable_first_stage_handover() {
    run(
        VtdConfig::scalable(BASE),
        Mode::Scalable,
        DomainKind::FirstStage,
    );
}
