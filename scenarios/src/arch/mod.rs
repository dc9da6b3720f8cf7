//! The seam between the runner and an IOMMU architecture.
//!
//! The runner ([`crate::runner`]) is written once: it plans RAM, pools and DMA targets
//! ([`crate::layout`]), builds the machine with its DMA agents and checkers, plays the
//! phases of a live update, performs the kexec, writes snapshots, compares the mappings
//! before prepare with those after adopt, checks that the device that was not
//! preserved faults from freeze on, and reports. Everything it asks of the IOMMU goes
//! through [`Arch`]: which unit model to put on the bus, what the unit can hold, how
//! much the page pools need, and the driver and handover steps (bring-up, domains,
//! mappings, attach, prepare, freeze, the KHO blob, adopt, verify, finish, walks).
//!
//! [`vtd::Vtd`] implements it for Intel VT-d; its modes are `legacy`, `scalable-ss`
//! and `scalable-fs`.

pub mod amdvi;
pub mod smmuv3;
pub mod vtd;

use crate::config::{ConfigError, Scenario};
use crate::report::{FinishCounts, VerifyCounts};
use emulator::machine::Machine;
use emulator::model::IommuModel;
use iommu_core::kho::{FrameAllocator, KhoOut};
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::{Mapping, Perms};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use std::fmt;

/// What one driver or handover step may touch: the machine (the registers of the unit
/// at `base`, physical memory) and the page pool of the kernel running the step.
pub struct Ctx<'a, P> {
    /// The machine.
    pub machine: &'a mut Machine,
    /// MMIO base of the scenario's unit.
    pub base: PhysAddr,
    /// The running kernel's page pool.
    pub pool: &'a mut P,
}

/// What a unit in one mode can hold, for the checks made before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitLimits {
    /// Domain IDs the driver may hand out (the run needs one per preserved domain plus
    /// one for the unpreserved device's domain).
    pub domain_ids: u64,
    /// Where `domain_ids` comes from, in the spec's words (e.g. `CAP.ND = 2`).
    pub domain_ids_from: String,
    /// Bits of physical address the unit can reach; RAM must end below `2^bits`.
    pub address_bits: u32,
    /// The register field giving `address_bits` (e.g. `CAP.MGAW`).
    pub address_bits_from: &'static str,
    /// Bytes of the register window at the unit's base; it must not overlap RAM.
    pub window: u64,
}

/// Pages the two kernels' pools need for a scenario in one mode (upper bounds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolNeeds {
    /// The old kernel's pool, in pages.
    pub old: u64,
    /// The new kernel's pool, in pages.
    pub new: u64,
    /// What the old pool holds, part by part: pages and what they are (e.g.
    /// `(14, "domain tables")`), in the order a refusal lists them.
    pub old_parts: Vec<(u64, &'static str)>,
}

/// What `adopt` reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Register accesses and entries read: the blackout work of adopt.
    pub work: u64,
    /// Devices adopt blocked, with the reason in words.
    pub blocked: Vec<(RequesterId, String)>,
}

/// What `verify` reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Domains walked, table pages and leaf-target runs checked.
    pub counts: VerifyCounts,
    /// Domains verification refused (their devices are blocked), with the reason.
    pub refused: Vec<(DomainId, String)>,
    /// Memory the handover record claims that verification did not establish as the
    /// unit's own (kept by `finish`, never freed), one entry per record run, in words.
    pub unverified_runs: Vec<String>,
}

/// One domain's translation as the core walker reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainWalk {
    /// The mappings (coalesced runs).
    pub mappings: Vec<Mapping>,
    /// Table pages of the domain.
    pub table_pages: u64,
}

/// One IOMMU architecture as the scenario runner drives it.
///
/// The runner calls, per mode: [`model`](Arch::model) for the unit on the bus,
/// [`pool`](Arch::pool) for the old kernel, [`bring_up`](Arch::bring_up), per domain
/// [`create_domain`](Arch::create_domain) and [`map`](Arch::map), per device
/// [`attach`](Arch::attach), [`walk_domain`](Arch::walk_domain) over the preserved
/// domains; the runner preserves the guest memory in its `KhoOut`, then
/// [`prepare`](Arch::prepare), [`freeze`](Arch::freeze), the runner writes the KHO
/// blob, the kexec, a new
/// [`pool`](Arch::pool) with [`exclude`](Arch::exclude), [`adopt`](Arch::adopt),
/// [`walk_domain`](Arch::walk_domain) again, [`verify`](Arch::verify),
/// [`finish`](Arch::finish) and a last [`map`](Arch::map). Before any run it asks
/// [`unit_limits`](Arch::unit_limits) and [`pool_needs`](Arch::pool_needs) of every
/// mode. A step that fails returns its reason in words; the runner reports it with
/// the step's name.
///
/// **VT-d** ([`vtd::Vtd`]): the unit is the emulator's `VtdUnit` (legacy or scalable
/// capabilities); domains are second-stage or first-stage by mode, tagged by the
/// domain ID in the context or PASID-table entry; devices are found through the root
/// and context tables (and PASID tables in scalable mode); the limits are CAP.ND,
/// CAP.MGAW and the register window.
///
/// **AMD-Vi** ([`amdvi::AmdVi`]): modes `v1` (host page tables, DTE.Mode levels) and
/// `v2` (guest tables through the GCR3 table, x86 paging format); the unit is the
/// emulator's `AmdViUnit` with the DeviceID range IVRS would give it; domains are
/// tagged by the DTE's DomainID (16 bits); devices are found through the device table
/// by DeviceID; `adopt` keeps the device table in place and re-bases the command buffer
/// and event log.
///
/// **SMMUv3** will implement it with modes for stage 1 (STE.Config S1, a context
/// descriptor carrying the ASID and TTB0) and stage 2 (STE.Config S2, the VMID and
/// S2TTB). `model` puts the emulator's SMMUv3 (two 64 KiB register pages) on the bus;
/// `bring_up` programs the stream table (linear or two-level), the command and event
/// queues and sets CR0.SMMUEN through the CR0ACK handshake; `create_domain` hands out
/// an ASID or a VMID (8 or 16 bits by IDR0, which `unit_limits` reports with the
/// address width from IDR5.OAS); `map` is the generic map over the VMSAv8-64 format of
/// the granule; `attach` writes the STE of the StreamID (the requester ID) and, for
/// stage 1, its CD table, then CMD_CFGI_STE and CMD_SYNC; `prepare` pins the stream
/// table (L1 and L2), CD tables and page tables; `freeze` makes the STEs of devices
/// not preserved abort; `adopt` keeps STRTAB_BASE with SMMUEN on and takes fresh
/// command and event queues; `pool_needs` counts stream-table and CD pages, tables at
/// every level of the granule (with concatenated stage-2 start tables) and the queues.
pub trait Arch {
    /// A mode of the arch's units, as named on the command line and in reports.
    type Mode: Copy + fmt::Display;
    /// The driver's state of one unit in one kernel.
    type Unit;
    /// A kernel's page allocator (tables, structures, queues, and the KHO blob's
    /// frames).
    type Pool: FrameAllocator;

    /// Name of the architecture, e.g. `VT-d`.
    fn name(&self) -> &'static str;
    /// The page sizes a mapping may use.
    fn page_sizes(&self) -> &'static [PageSize];
    /// Alignment of the unit's register window (its MMIO base), in bytes.
    fn window_align(&self) -> u64;
    /// Input (IOVA) width in bits of the domains' tables.
    fn iova_bits(&self) -> u32;
    /// What the unit in `mode` at `base` can hold.
    fn unit_limits(&self, mode: Self::Mode, base: PhysAddr) -> Result<UnitLimits, ConfigError>;
    /// What the pools of scenario `s` in `mode` must hold (checked arithmetic; `None`
    /// when a count overflows).
    fn pool_needs(&self, s: &Scenario, mode: Self::Mode) -> Option<PoolNeeds>;
    /// The unit model to put on the machine's bus for `mode` at `base`.
    fn model(&self, mode: Self::Mode, base: PhysAddr) -> Result<Box<dyn IommuModel>, String>;

    /// A page pool over `bytes` of RAM from `base`.
    fn pool(&self, base: PhysAddr, bytes: u64) -> Self::Pool;
    /// Takes the preserved pages out of `pool` (new kernel).
    fn exclude(&self, pool: &mut Self::Pool, preserved: &PageSet);
    /// Old kernel: brings the unit up in `mode`.
    fn bring_up(&self, mode: Self::Mode, cx: Ctx<'_, Self::Pool>) -> Result<Self::Unit, String>;
    /// Creates an empty domain of the kind `mode` uses.
    fn create_domain(
        &self,
        unit: &mut Self::Unit,
        mode: Self::Mode,
        cx: Ctx<'_, Self::Pool>,
    ) -> Result<DomainId, String>;
    /// Maps `len` bytes of `ps` pages at `iova` to `pa` in domain `did`.
    #[allow(clippy::too_many_arguments)]
    fn map(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
        did: DomainId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        ps: PageSize,
        perms: Perms,
    ) -> Result<(), String>;
    /// Attaches device `rid` to domain `did`.
    fn attach(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
        rid: RequesterId,
        did: DomainId,
    ) -> Result<(), String>;
    /// Reads domain `did`'s tables with the core walker.
    fn walk_domain(
        &self,
        unit: &Self::Unit,
        mem: &dyn PhysMem,
        did: DomainId,
    ) -> Result<DomainWalk, String>;

    /// Old kernel: preserves `domains` and `devices` (pins every structure and table
    /// page, adds the unit's record as a client of the arch-neutral outgoing
    /// handover `kho`); returns the record's size in bytes.
    fn prepare(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
        kho: &mut KhoOut,
        domains: &[DomainId],
        devices: &[RequesterId],
    ) -> Result<u64, String>;
    /// Old kernel: cuts off what is not preserved; returns the work done (the freeze
    /// half of the blackout).
    fn freeze(&self, unit: &mut Self::Unit, cx: Ctx<'_, Self::Pool>) -> Result<u64, String>;
    /// New kernel: adopts the unit in `mode` from the blob at `blob`, given the
    /// preserved page set read from it. `Err` when the unit is refused as a whole.
    fn adopt(
        &self,
        mode: Self::Mode,
        cx: Ctx<'_, Self::Pool>,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Self::Unit, Adopted), String>;
    /// New kernel, outside the blackout: walks and checks every adopted domain.
    fn verify(&self, unit: &mut Self::Unit, cx: Ctx<'_, Self::Pool>) -> Result<Verified, String>;
    /// New kernel: ends the handover; domains take new mappings again.
    fn finish(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
    ) -> Result<FinishCounts, String>;
}
