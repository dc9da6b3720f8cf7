//! A machine with one emulated SMMUv3 and the `smmuv3` driver's platform around it,
//! shared by the SMMUv3 handover tests and benchmarks: bring-up, domains of a mode,
//! masters attached, DMA checks, and the kexec between the two kernels.

use emulator::dma::DmaAgent;
use emulator::machine::{Device, Machine};
use emulator::smmuv3::{SmmuV3Config, SmmuV3Unit};
use iommu_core::kho::{read_preserved_in, KhoOut};
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use smmuv3::driver::{Hw, PagePool, Stage, Unit, UnitConfig};
use smmuv3::handover::{AdoptFailure, AdoptReport};
use smmuv3::hw::ste::StrtabFmt;
use smmuv3::hw::Granule;

/// MMIO base of the SMMU.
pub const BASE: PhysAddr = PhysAddr(0x9000_0000);
/// RAM: 4 GiB from 4 GiB (sparse).
pub const RAM: (PhysAddr, u64) = (PhysAddr(1 << 32), 4 << 30);
/// The old kernel's pool: 256 MiB from 4 GiB + 16 MiB.
pub const OLD_POOL: (PhysAddr, u64) = (PhysAddr((1 << 32) + (16 << 20)), 256 << 20);
/// The new kernel's pool: 64 MiB from 4 GiB + 512 MiB.
pub const NEW_POOL: (PhysAddr, u64) = (PhysAddr((1 << 32) + (512 << 20)), 64 << 20);
/// Guest memory the masters DMA into: from 5 GiB.
pub const DATA: u64 = 5 << 30;
/// IOVAs start here.
pub const IOVA: u64 = 1 << 32;

/// The machine, the SMMU's base, the running kernel's pool and the SMMU's config.
pub struct Rig {
    /// The machine.
    pub machine: Machine,
    /// The running kernel's pool.
    pub pool: PagePool,
    /// The SMMU's configuration.
    pub cfg: SmmuV3Config,
}

impl Rig {
    /// A machine with RAM and one SMMU with `cfg` (its base must be [`BASE`]).
    pub fn new(cfg: SmmuV3Config) -> Rig {
        let mut machine = Machine::with_ram(&[RAM]).expect("ram");
        machine
            .add_unit(Box::new(SmmuV3Unit::new(cfg.clone()).expect("config")))
            .expect("unit");
        Rig {
            machine,
            pool: PagePool::new(OLD_POOL.0, OLD_POOL.1),
            cfg,
        }
    }

    /// Runs `f` with the driver's view of the platform.
    pub fn hw<T>(&mut self, f: impl FnOnce(&mut Hw<'_>) -> T) -> T {
        let (mut regs, mut mem) = self.machine.driver_access(BASE).expect("unit");
        let mut hw = Hw {
            regs: &mut regs,
            mem: &mut mem,
            pages: &mut self.pool,
        };
        f(&mut hw)
    }

    /// Adds a master behind the SMMU; returns its agent and StreamID.
    pub fn add_master(&mut self, rid: RequesterId) -> (DmaAgent, u32) {
        let a = self
            .machine
            .add_device(Device {
                rid,
                pasid: None,
                unit: BASE,
            })
            .expect("device");
        (a, self.cfg.stream_id(rid).expect("StreamID"))
    }

    /// Writes a pattern through `agent` at `iova` and reads it back through the SMMU and
    /// from memory at `pa`: `Ok` when both agree, `Err` with the DMA error otherwise.
    pub fn dma(&mut self, agent: &DmaAgent, iova: u64, pa: u64, seed: u8) -> Result<(), String> {
        let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(7) ^ seed).collect();
        self.machine
            .dma_write(agent, Iova(iova), &data)
            .map_err(|e| e.to_string())?;
        let mut back = vec![0u8; 64];
        self.machine
            .dma_read(agent, Iova(iova), &mut back)
            .map_err(|e| e.to_string())?;
        let mut raw = vec![0u8; 64];
        iommu_core::mem::PhysMem::read(&*self.machine.mem(), PhysAddr(pa), &mut raw)
            .map_err(|e| e.to_string())?;
        if back != data || raw != data {
            return Err(format!("bytes at IOVA {iova:#x} do not land at {pa:#x}"));
        }
        Ok(())
    }

    /// Whether a write of `agent` at `iova` fails (aborted or faulted).
    pub fn blocked(&mut self, agent: &DmaAgent, iova: u64) -> bool {
        self.machine
            .dma_write(agent, Iova(iova), &[0xa5; 8])
            .is_err()
    }

    /// Finalises `kho`, kexecs, and gives the new kernel its pool (the preserved pages
    /// excluded); returns the blob's address.
    pub fn kexec(&mut self, kho: &mut KhoOut) -> PhysAddr {
        let blob = kho
            .finalize(self.machine.mem_mut(), &mut self.pool)
            .expect("KHO blob");
        self.machine.kexec(blob).expect("kexec");
        let preserved = read_preserved_in(&*self.machine.mem(), blob, &[RAM]).expect("set");
        self.pool = PagePool::new(NEW_POOL.0, NEW_POOL.1);
        self.pool.exclude(&preserved);
        blob
    }

    /// New kernel: adopts the SMMU from `blob` with `ucfg`.
    pub fn adopt(
        &mut self,
        ucfg: &UnitConfig,
        blob: PhysAddr,
    ) -> Result<(Unit, AdoptReport), Box<AdoptFailure>> {
        let preserved = read_preserved_in(&*self.machine.mem(), blob, &[RAM]).expect("set");
        self.hw(|hw| Unit::adopt_with_preserved(hw, ucfg, blob, preserved))
    }
}

/// The leaf sizes a granule's domains use in these tests: its page and one block.
pub fn sizes(g: Granule) -> [PageSize; 2] {
    let p = |b| PageSize::new(b).expect("page size");
    match g {
        Granule::K4 => [p(4 << 10), p(2 << 20)],
        Granule::K16 => [p(16 << 10), p(32 << 20)],
        Granule::K64 => [p(64 << 10), p(512 << 20)],
    }
}

/// A driver configuration for the SMMU at [`BASE`] (2-level stream tables go with
/// 2-level CD tables).
pub fn ucfg(strtab: StrtabFmt) -> UnitConfig {
    UnitConfig {
        mmio_base: BASE,
        strtab,
        two_level_cd: strtab == StrtabFmt::TwoLevel,
    }
}

/// One domain's mappings: `(iova, pa, len)`.
pub type Maps = Vec<(u64, u64, u64)>;

/// Old kernel: brings the SMMU up and creates `n` domains of `stage` with `g` tables,
/// each mapping one run of each of the granule's two leaf sizes; domain `i` maps IOVAs
/// from [`IOVA`] to guest memory from [`DATA`] + `i` × 2 GiB / `n`.
pub fn setup(
    rig: &mut Rig,
    strtab: StrtabFmt,
    stage: Stage,
    g: Granule,
    n: usize,
) -> (Unit, Vec<(DomainId, Maps)>) {
    let mut unit = rig
        .hw(|hw| Unit::init(hw, &ucfg(strtab)))
        .expect("bring-up");
    let [page, block] = sizes(g);
    let mut out = Vec::new();
    for i in 0..n as u64 {
        let did = rig
            .hw(|hw| unit.create_domain(hw, stage, g))
            .expect("domain");
        let base = DATA + i * block.bytes().max(4 << 20) * 2;
        let maps = vec![
            (IOVA, base, 4 * page.bytes()),
            (
                IOVA + block.bytes().max(1 << 30),
                base + block.bytes().max(4 << 20),
                block.bytes(),
            ),
        ];
        for (&(iova, pa, len), ps) in maps.iter().zip([page, block]) {
            rig.hw(|hw| unit.map(hw, did, Iova(iova), PhysAddr(pa), len, ps, Perms::RW))
                .expect("map");
        }
        out.push((did, maps));
    }
    (unit, out)
}

/// Preserves every mapping's guest memory in `kho`.
pub fn preserve_guest(kho: &mut KhoOut, domains: &[(DomainId, Maps)]) {
    for (_, maps) in domains {
        for &(_, pa, len) in maps {
            kho.preserve_range(PhysAddr(pa), len / 4096)
                .expect("preserve");
        }
    }
}
