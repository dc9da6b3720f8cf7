//! VT-d state in an image: units and their registers ([`Unit`], [`regs`]), the
//! root/context/PASID structures and what each device's requests go through ([`scan`]),
//! and the translation of one address step by step ([`walk`]).
//!
//! Every bit comes from the `vtd` crate's `hw` module and page-table formats.

pub mod regs;
pub mod scan;
pub mod state;
pub mod unit;
pub mod verify;
pub mod walk;

pub use state::{
    list_entries, listing, Listed, SharedRun, SharedStructure, TreeKey, Trees, UnitState,
};
pub use unit::VTD;

use crate::error::InspectError;
use crate::image::{Image, RegValue, UNIT_KIND_VTD};
use iommu_core::pgtable::{Entry, EntryError, Format};
use iommu_core::PhysAddr;
use vtd::format::{first_stage_caps, second_stage_caps, FirstStage, SecondStage};
use vtd::hw::regs::{field_value, field_value32, Ttm, CAP, ECAP, GSTS, RTADDR};

/// A VT-d unit: its registers and the host address width used for reserved-bit checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Position among the image's VT-d units.
    pub index: usize,
    /// Name in the style of Linux (`dmar0`, `dmar1`...).
    pub name: String,
    /// MMIO base.
    pub base: PhysAddr,
    /// Register values (offset, width, value).
    pub regs: Vec<RegValue>,
    /// Whether the registers were made up from command-line options (no unit note).
    pub assumed: bool,
    /// Whether the MMIO base is known: from a unit note, or `--vtd-base` for a unit made
    /// up from options (otherwise it is 0).
    pub base_known: bool,
    /// Host address width in bits: pointer bits at or above it are reserved.
    pub haw: u32,
    /// PCI segment of the unit's devices (from the snapshot's device note; 0 otherwise).
    pub segment: u16,
}

/// Translation table mode, from RTADDR.TTM.
pub type Mode = Ttm;

/// Name of a translation table mode.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Ttm::Legacy => "legacy",
        Ttm::Scalable => "scalable",
        Ttm::Reserved => "reserved",
        Ttm::AbortDma => "abort-dma",
    }
}

/// What the command line says about a unit the image does not describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnitOverride {
    /// `--vtd-rtaddr`: root table address (the unit is then made up from options).
    pub rtaddr: Option<u64>,
    /// `--vtd-mode`.
    pub mode: Option<Mode>,
    /// `--haw`.
    pub haw: Option<u32>,
    /// `--vtd-cap`.
    pub cap: Option<u64>,
    /// `--vtd-ecap`.
    pub ecap: Option<u64>,
    /// `--vtd-base`: the unit's MMIO base (names its `iommu-vtd-<base>` KHO record).
    pub base: Option<u64>,
}

impl Unit {
    /// The value of the register at `offset`, if the image has it.
    pub fn reg(&self, offset: u64) -> Option<u64> {
        self.regs
            .iter()
            .find(|r| r.offset == offset)
            .map(|r| r.value)
    }
    /// CAP (0 when absent).
    pub fn cap(&self) -> u64 {
        self.reg(vtd::hw::regs::CAP).unwrap_or(0)
    }
    /// ECAP (0 when absent).
    pub fn ecap(&self) -> u64 {
        self.reg(vtd::hw::regs::ECAP).unwrap_or(0)
    }
    /// GSTS (0 when absent).
    pub fn gsts(&self) -> u32 {
        self.reg(vtd::hw::regs::GSTS).unwrap_or(0) as u32
    }
    /// RTADDR (0 when absent).
    pub fn rtaddr(&self) -> u64 {
        self.reg(vtd::hw::regs::RTADDR).unwrap_or(0)
    }
    /// The translation table mode (RTADDR.TTM).
    pub fn mode(&self) -> Mode {
        Ttm::from_bits(RTADDR::TTM.read(self.rtaddr()))
    }
    /// The root table address (RTADDR.RTA).
    pub fn root_table(&self) -> PhysAddr {
        PhysAddr(RTADDR::RTA.read(self.rtaddr()) << 12)
    }
    /// GSTS.TES: DMA remapping enabled.
    pub fn enabled(&self) -> bool {
        GSTS::TES.is_set(self.gsts())
    }
    /// GSTS.RTPS: a root table pointer was latched.
    pub fn root_latched(&self) -> bool {
        GSTS::RTPS.is_set(self.gsts())
    }
    /// Number of domain IDs (CAP.ND).
    pub fn domains(&self) -> u32 {
        vtd::hw::regs::domain_count(self.cap())
    }
    /// MGAW + 1 (bits).
    pub fn mgaw(&self) -> u32 {
        CAP::MGAW.read(self.cap()) as u32 + 1
    }

    /// The units of an image: its VT-d unit notes, or one unit made up from `ov` when
    /// `ov.rtaddr` is given (it then replaces the notes).
    pub fn from_image(img: &Image, ov: &UnitOverride) -> Result<Vec<Unit>, InspectError> {
        if let Some(h) = ov.haw {
            if !(12..=64).contains(&h) {
                return Err(InspectError::Usage(format!(
                    "--haw {h}: the host address width is 12 to 64 bits"
                )));
            }
        }
        if let Some(rta) = ov.rtaddr {
            return Ok(vec![Self::assumed(rta, ov)?]);
        }
        if ov.mode.is_some() || ov.cap.is_some() || ov.ecap.is_some() || ov.base.is_some() {
            return Err(InspectError::Usage(
                "--vtd-mode, --vtd-cap, --vtd-ecap and --vtd-base describe a unit given with \
                 --vtd-rtaddr"
                    .into(),
            ));
        }
        let units: Vec<Unit> = img
            .units()
            .iter()
            .filter(|u| u.kind == UNIT_KIND_VTD)
            .enumerate()
            .map(|(index, u)| {
                let cap = u
                    .regs
                    .iter()
                    .find(|r| r.offset == vtd::hw::regs::CAP)
                    .map_or(0, |r| r.value);
                Unit {
                    index,
                    name: format!("dmar{index}"),
                    base: u.base,
                    regs: u.regs.clone(),
                    assumed: false,
                    base_known: true,
                    segment: 0,
                    haw: ov.haw.unwrap_or(CAP::MGAW.read(cap) as u32 + 1),
                }
            })
            .collect();
        if units.is_empty() {
            return Err(InspectError::NoUnits {
                hint: if img.units().is_empty() {
                    "give the root table with --vtd-rtaddr ADDR (and --vtd-mode, --haw)"
                } else {
                    "the snapshot's units are not VT-d units"
                },
            });
        }
        Ok(units)
    }

    /// A unit made up from command-line options: RTADDR from `rta` and the mode, GSTS
    /// with TES and RTPS, and (unless given) a permissive CAP/ECAP: every table width,
    /// 2 MiB and 1 GiB pages, 2^16 domain IDs, pass-through, snoop control, device TLB,
    /// scalable mode with both stages and 20-bit PASIDs.
    pub fn assumed(rta: u64, ov: &UnitOverride) -> Result<Unit, InspectError> {
        if rta & 0xfff != 0 {
            return Err(InspectError::Usage(format!(
                "--vtd-rtaddr {rta:#x}: the root table is 4 KiB aligned (give the address, \
                 not the RTADDR register value with TTM bits)"
            )));
        }
        let mode = ov.mode.unwrap_or(Ttm::Legacy);
        let haw = ov.haw.unwrap_or(52);
        let cap = ov.cap.unwrap_or(
            field_value(CAP::ND, 6)
                | field_value(CAP::SAGAW, 0b01110)
                | field_value(CAP::MGAW, (haw - 1) as u64)
                | field_value(CAP::SLLPS, 0b11)
                | field_value(CAP::FL1GP, 1)
                | field_value(CAP::FL5LP, 1),
        );
        let ecap = ov.ecap.unwrap_or(
            field_value(ECAP::QI, 1)
                | field_value(ECAP::DT, 1)
                | field_value(ECAP::PT, 1)
                | field_value(ECAP::SC, 1)
                | field_value(ECAP::PRS, 1)
                | field_value(ECAP::PASID, 1)
                | field_value(ECAP::PSS, 19)
                | field_value(ECAP::SRS, 1)
                | field_value(ECAP::SMTS, 1)
                | field_value(ECAP::SLADS, 1)
                | field_value(ECAP::SLTS, 1)
                | field_value(ECAP::FLTS, 1)
                | field_value(ECAP::RPS, 1)
                | field_value(ECAP::RPRIVS, 1),
        );
        let gsts = field_value32(GSTS::TES, 1) | field_value32(GSTS::RTPS, 1);
        let rtaddr = rta | field_value(RTADDR::TTM, mode.bits());
        let r = |offset, width, value| RegValue {
            offset,
            width,
            value,
        };
        if let Some(b) = ov.base {
            if b & 0xfff != 0 {
                return Err(InspectError::Usage(format!(
                    "--vtd-base {b:#x}: a VT-d unit's register window is 4 KiB aligned"
                )));
            }
        }
        Ok(Unit {
            index: 0,
            name: "dmar0".into(),
            base: PhysAddr(ov.base.unwrap_or(0)),
            regs: vec![
                r(vtd::hw::regs::CAP, 8, cap),
                r(vtd::hw::regs::ECAP, 8, ecap),
                r(vtd::hw::regs::GSTS, 4, gsts as u64),
                r(vtd::hw::regs::RTADDR, 8, rtaddr),
            ],
            assumed: true,
            base_known: ov.base.is_some(),
            haw,
            segment: 0,
        })
    }
}

/// Which page-table stage a translation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Second-stage tables (legacy mode, or PGTT = second-stage).
    Second,
    /// First-stage tables (PGTT = first-stage).
    First,
}

impl Stage {
    /// `second-stage` or `first-stage`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Second => "second-stage",
            Stage::First => "first-stage",
        }
    }
}

/// A page table a device's requests are translated through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageTable {
    /// Stage.
    pub stage: Stage,
    /// Root table address.
    pub root: PhysAddr,
    /// Levels (3–5).
    pub levels: u8,
    /// Execute requests honoured (second stage with SLEE).
    pub exec: bool,
    /// Input address width limit of the context (`min(AW width, MGAW)` for second-stage).
    pub width: u32,
}

/// The page-table format of a [`PageTable`] on a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdFormat {
    /// Second-stage.
    Second(SecondStage),
    /// First-stage.
    First(FirstStage),
}

impl PageTable {
    /// The format to walk this table with on `unit`.
    pub fn format(&self, unit: &Unit) -> Result<VtdFormat, vtd::format::FormatError> {
        Ok(match self.stage {
            Stage::Second => VtdFormat::Second(
                SecondStage::new(
                    self.levels,
                    second_stage_caps(unit.cap(), unit.ecap(), unit.haw),
                )?
                .with_exec(self.exec),
            ),
            Stage::First => VtdFormat::First(FirstStage::new(
                self.levels,
                first_stage_caps(unit.cap(), unit.haw),
            )?),
        })
    }
}

impl Format for VtdFormat {
    fn name(&self) -> &'static str {
        match self {
            VtdFormat::Second(f) => f.name(),
            VtdFormat::First(f) => f.name(),
        }
    }
    fn root_level(&self) -> u8 {
        match self {
            VtdFormat::Second(f) => f.root_level(),
            VtdFormat::First(f) => f.root_level(),
        }
    }
    fn table_bytes(&self, level: u8) -> u64 {
        match self {
            VtdFormat::Second(f) => f.table_bytes(level),
            VtdFormat::First(f) => f.table_bytes(level),
        }
    }
    fn entry_shift(&self, level: u8) -> u32 {
        match self {
            VtdFormat::Second(f) => f.entry_shift(level),
            VtdFormat::First(f) => f.entry_shift(level),
        }
    }
    fn ia_bits(&self) -> u32 {
        match self {
            VtdFormat::Second(f) => f.ia_bits(),
            VtdFormat::First(f) => f.ia_bits(),
        }
    }
    #[inline]
    fn decode(&self, level: u8, raw: u64) -> Result<Entry, EntryError> {
        match self {
            VtdFormat::Second(f) => f.decode(level, raw),
            VtdFormat::First(f) => f.decode(level, raw),
        }
    }
}
