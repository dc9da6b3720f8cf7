//! The per-architecture seam: what `dump` and `diff` need from one IOMMU unit of any
//! architecture.
//!
//! The commands are written once against [`ArchUnit`]: the image header, the unit loop,
//! the device listing, each distinct page-table tree walked once and listed under the
//! first device that uses it (text and JSON), the unit and device comparisons of `diff`
//! and the tree comparisons. An architecture supplies an [`Arch`] that finds its units
//! in an image, and a unit type implementing [`ArchUnit`]; it is registered by one line
//! in [`REGISTERED`]. VT-d's implementation is [`crate::vtd::VTD`] (units
//! [`crate::vtd::UnitState`]).
//!
//! How AMD-Vi ([`crate::amdvi`]) and SMMUv3 ([`crate::smmuv3`]) fill each method (the
//! facts are in `shared/reference/amdvi.md` and `smmuv3.md` beside the checkout):
//!
//! - **AMD-Vi.** [`Arch::load`] takes the image's unit notes of kind
//!   [`crate::image::UNIT_KIND_AMDVI`] (or `--amdvi-devtab`) and reads the Device Table
//!   Base register (Size + 1 4 KiB pages of 32-byte DTEs indexed by DeviceID), Control,
//!   EFR and the exclusion range. `text_head`/`json_head` decode the registers by field
//!   and list the DTEs with problems (reserved bits, Mode 7 or beyond EFR.HATS, GV=1
//!   without GTEn) as ILLEGAL_DEV_TABLE_ENTRY. [`ArchUnit::entry`]: one entry per DTE
//!   with V=1 (V=0 forwards untranslated: listed as `pass-through` only when the
//!   snapshot's device note names the DeviceID), `rid` = DeviceID, `domain` = DomainID,
//!   translation `v1` (Mode 1–6, level skipping and NextLevel=7 pages decoded by the v1
//!   format), `untranslated` (Mode 0 with IR or IW), `blocked` (Mode 0 with IR=IW=0:
//!   IO_PAGE_FAULT; TV=0: target abort, code 0), `illegal`; `fpd` = SA or SE; with GV=1
//!   one entry per valid GCR3-table entry (GLX 0/1/2), `pasid` set, a `v2` tree
//!   (GuestPagingMode 0/1: 4 or 5 levels). Trees are keyed by (format, root, levels,
//!   DTE IR/IW: the DTE's permissions are ANDed into the mappings). `translate` reads
//!   the DTE, the GCR3 entries and each level as [`Step`]s and ends in an event code;
//!   `verify` reads the unit's `iommu-amdvi-v1` record (KHO client
//!   `iommu-amdvi-<base>`) and checks it against the registers and the device table
//!   ([`crate::amdvi::verify`]); `linux`: debugfs `devtbl`.
//! - **SMMUv3.** [`Arch::load`] takes the notes of kind
//!   [`crate::image::UNIT_KIND_SMMUV3`] (or `--smmu-strtab`) and reads `IDR0/1/5`,
//!   `CR0`, `GBPA`, `STRTAB_BASE`, `STRTAB_BASE_CFG` (FMT linear or 2-level, LOG2SIZE,
//!   SPLIT). The head sections decode those registers and list the L1STDs, STEs and CDs
//!   with problems and the event a transaction would record (C_BAD_STREAMID 0x02,
//!   C_BAD_STE 0x04, C_BAD_CD 0x0A...). Entries: one per valid STE, `rid` = StreamID
//!   (low 16 bits as a RID), `domain` = S2VMID (or the CD's ASID with stage 1 only),
//!   translation `stage-1`, `stage-2`, `nested`, `bypass`, `abort` or `refused`; with
//!   S1CDMax > 0 one entry per valid CD (S1Fmt linear or 2-level), `pasid` =
//!   SubstreamID; `fpd` where the CD or STE records no fault (CD.R / S2R clear). Trees
//!   are VMSAv8-64 tables (stage 1, stage 2 with concatenated start tables, or nested:
//!   stage-1 tables at IPAs read through stage 2, mappings composed to PAs).
//!   `translate` reads the L1STD, STE, L1CD, CD and each descriptor as steps and ends
//!   in an event number (F_TRANSLATION 0x10, F_PERMISSION 0x13...); `verify` returns
//!   [`InspectError::NoRecordSupport`]; `linux`: none (Linux has no SMMUv3 debugfs).
//!
//! A unit's `problems` and `summary` strings, the fault codes and the tree descriptions
//! are the architecture's own words; everything else in the outputs is common.

use crate::error::InspectError;
use crate::image::Image;
use crate::json::Json;
use crate::model::{Filter, LoadOptions, TableWalk};
use crate::progress::Progress;
use crate::tree::TreeTable;
use crate::verify::Checker;
use iommu_core::pgtable::{Mapping, Perms};
use iommu_core::{Iova, PageSize, PhysAddr, RequesterId};
use std::any::Any;
use std::fmt::Debug;
use std::io::{self, Write};

/// An architecture: finds its units in an image.
pub trait Arch: Sync {
    /// Short name (`vtd`).
    fn name(&self) -> &'static str;
    /// The image's units of this architecture, scanned (none when the image has none).
    /// `opts` carries the command-line description of units the image does not
    /// describe.
    fn load(
        &self,
        image: &Image,
        opts: &LoadOptions,
    ) -> Result<Vec<Box<dyn ArchUnit>>, InspectError>;
}

/// The architectures `iommu-inspect` knows, in the order their units are listed. A new
/// architecture is one more line here.
pub static REGISTERED: &[&dyn Arch] = &[
    &crate::vtd::VTD,
    &crate::amdvi::AMDVI,
    &crate::smmuv3::SMMUV3,
];

/// How a unit is matched with the same unit of another image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitId {
    /// Architecture (`vtd`).
    pub kind: &'static str,
    /// Position among the image's units of that architecture.
    pub index: usize,
    /// MMIO base.
    pub base: PhysAddr,
    /// The unit was described on the command line (it is then matched by index).
    pub assumed: bool,
}

impl UnitId {
    /// Whether `self` and `other` are the same unit in two images.
    pub fn same(&self, other: &UnitId) -> bool {
        self.kind == other.kind
            && if self.assumed || other.assumed {
                self.index == other.index
            } else {
                self.base == other.base
            }
    }
    /// The unit's key in a device key: the MMIO base, or the index for a unit described
    /// on the command line.
    pub fn key(&self) -> u64 {
        if self.assumed {
            self.index as u64
        } else {
            self.base.0
        }
    }
}

/// What identifies a page-table tree in an arch-neutral way (compared by `diff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableDesc {
    /// Format name (`second-stage`, `first-stage`, `v1`, `stage-2`...).
    pub format: &'static str,
    /// Root table address.
    pub root: PhysAddr,
    /// Levels.
    pub levels: u8,
}

/// One device entry of a unit (a context entry, a PASID entry, a DTE, an STE...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// The requester (or stream).
    pub rid: RequesterId,
    /// PASID (substream), if the entry is one.
    pub pasid: Option<u32>,
    /// The entry also serves requests without PASID.
    pub rid_pasid: bool,
    /// Domain tag.
    pub did: Option<u16>,
    /// Translation name (`second-stage`, `pass-through`, `blocked`...).
    pub translation: &'static str,
    /// Fault code a request gets, when blocked.
    pub blocked: Option<u8>,
    /// Faults are not reported for it.
    pub fpd: bool,
    /// Its page table.
    pub table: Option<TableDesc>,
    /// Index of its tree among the unit's trees.
    pub tree: Option<usize>,
}

impl EntryView {
    /// `segment:bus:dev.fn` and, for PASID entries, `pasid N`.
    pub fn label(&self) -> String {
        match self.pasid {
            Some(p) => format!("{} pasid {p:#x}", self.rid),
            None => self.rid.to_string(),
        }
    }
}

/// One item of a unit's device listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The entry at this index, in full.
    Entry(usize),
    /// A line about several entries from `at` on (e.g. entries that repeat a structure
    /// listed before), shown under the requester.
    Note {
        /// Index of the first entry it stands for.
        at: usize,
        /// The requester.
        rid: RequesterId,
        /// The text.
        text: String,
    },
}

/// Where a unit's Linux debugfs output goes: first every unit's unit-wide part, then
/// every unit's per-device part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxPart {
    /// The unit-wide file (VT-d: `dmar_translation_struct`).
    Unit,
    /// The per-device files (VT-d: `domain_translation_struct`).
    Devices,
}

/// One structure or table entry read while translating one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What was read (`root entry`, `context entry`, `level 4 entry`, `DTE`, `STE`...).
    pub what: String,
    /// Its address.
    pub addr: PhysAddr,
    /// Its raw 64-bit words.
    pub raw: Vec<u64>,
    /// What it says.
    pub meaning: String,
}

/// How the translation of one address ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// Translation is disabled: the address goes out untranslated.
    Untranslated {
        /// The physical address (= the IOVA).
        pa: PhysAddr,
    },
    /// The request translates.
    Mapped {
        /// Physical address.
        pa: PhysAddr,
        /// Effective permissions.
        perms: Perms,
        /// Page size.
        page_size: PageSize,
        /// Domain tag, when there is one.
        did: Option<u16>,
    },
    /// The request faults.
    Fault {
        /// The architecture's fault code (VT-d fault reason, AMD-Vi event code, SMMUv3
        /// event number).
        code: u8,
        /// Its name in the specification's words.
        reason: &'static str,
        /// Why.
        detail: String,
        /// The fault is not recorded (VT-d FPD, AMD-Vi SA, SMMUv3 S1CD... suppression).
        fpd: bool,
    },
}

/// One address translated for one requester, step by step (the `walk` command).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The requester.
    pub rid: RequesterId,
    /// The PASID of the request, if any.
    pub pasid: Option<u32>,
    /// The address.
    pub iova: Iova,
    /// A write (otherwise a read).
    pub write: bool,
    /// The structures read, in order.
    pub steps: Vec<Step>,
    /// The result.
    pub end: WalkEnd,
}

/// One IOMMU unit of an image, scanned: what the common commands ask of it.
pub trait ArchUnit: Debug + Send + Sync {
    /// The architecture (`vtd`).
    fn kind(&self) -> &'static str;
    /// The architecture's name in text (`VT-d`).
    fn kind_title(&self) -> &'static str;
    /// Name (`dmar0`).
    fn name(&self) -> &str;
    /// Identity across images.
    fn id(&self) -> UnitId;
    /// Itself, for commands specific to one architecture.
    fn as_any(&self) -> &dyn Any;

    /// Text: the unit's header, registers, structures and their problems, in the order
    /// the dump shows them before the devices.
    fn text_head(&self, filter: &Filter, out: &mut dyn Write) -> io::Result<()>;
    /// JSON: the unit object's members after `name` and `kind`, before `devices`.
    fn json_head(&self, j: &mut Json<&mut dyn Write>, filter: &Filter) -> io::Result<()>;

    /// Number of device entries.
    fn entries(&self) -> usize;
    /// The entry at `i` (below [`ArchUnit::entries`]).
    fn entry(&self, i: usize) -> EntryView;
    /// Every entry in order (the default asks [`ArchUnit::entry`] for each).
    fn entry_iter(&self) -> Box<dyn Iterator<Item = EntryView> + '_> {
        Box::new((0..self.entries()).map(|i| self.entry(i)))
    }
    /// The listing of the entries that pass `filter`, in order (the default: every such
    /// entry in full).
    fn listing(&self, filter: &Filter) -> Vec<Item> {
        self.entry_iter()
            .enumerate()
            .filter(|(_, e)| filter.entry(e))
            .map(|(i, _)| Item::Entry(i))
            .collect()
    }
    /// What entry `i` does, in one line (after its requester and PASID).
    fn summary(&self, i: usize) -> String;
    /// JSON: entry `i`'s members after `fpd` (`tree`: its tree's index).
    fn json_entry(
        &self,
        j: &mut Json<&mut dyn Write>,
        i: usize,
        tree: Option<usize>,
    ) -> io::Result<()>;
    /// JSON: members between `devices` and `page_tables` (none by default).
    fn json_after_devices(
        &self,
        _j: &mut Json<&mut dyn Write>,
        _filter: &Filter,
    ) -> io::Result<()> {
        Ok(())
    }
    /// Text: lines after the devices (e.g. devices the snapshot lists that no entry
    /// serves); returns how many it wrote.
    fn text_tail(
        &self,
        _image: &Image,
        _filter: &Filter,
        _out: &mut dyn Write,
    ) -> io::Result<usize> {
        Ok(0)
    }
    /// JSON: members after `page_tables` (none by default).
    fn json_tail(
        &self,
        _image: &Image,
        _j: &mut Json<&mut dyn Write>,
        _filter: &Filter,
    ) -> io::Result<()> {
        Ok(())
    }

    /// Number of distinct page-table trees.
    fn trees(&self) -> usize;
    /// Tree `t`'s description.
    fn tree(&self, t: usize) -> TableDesc;
    /// JSON: tree `t`'s members after `id`, before `devices`.
    fn json_tree(&self, j: &mut Json<&mut dyn Write>, t: usize) -> io::Result<()>;
    /// Walks tree `t`, streaming each mapping run to `visit`.
    fn walk_tree(&self, image: &Image, t: usize, visit: &mut dyn FnMut(&Mapping)) -> TableWalk;
    /// The tables of tree `t` by position.
    fn tree_tables(&self, image: &Image, t: usize) -> Vec<TreeTable>;

    /// Unit attributes `diff` compares: `(name, value, compared in semantic mode)`.
    fn attrs(&self) -> Vec<(&'static str, String, bool)>;

    /// Whether the image's device notes put `rid` behind this unit (`walk` picks the
    /// unit by it when the image has several).
    fn serves(&self, _rid: RequesterId) -> bool {
        false
    }
    /// `walk`: translates `iova` for `rid` (and `pasid`) step by step, or says why
    /// the requester cannot be asked of this unit. The default: not supported.
    fn translate(
        &self,
        _image: &Image,
        _rid: RequesterId,
        _pasid: Option<u32>,
        _iova: Iova,
        _write: bool,
    ) -> Result<Walk, InspectError> {
        Err(InspectError::Usage(format!(
            "walk does not translate through {} units yet",
            self.kind_title()
        )))
    }

    /// `verify`: checks the unit's handover state (its record, read from the KHO blob or
    /// the record file [`Checker::record_file`]) against its structures and tables,
    /// every page it reaches through [`Checker::check_page`]. The default says the
    /// architecture's handover is not checked.
    fn verify(&self, _image: &Image, ck: &mut Checker<'_>) -> Result<(), InspectError> {
        ck.note(format!(
            "{}: the handover of {} units is not checked",
            self.name(),
            self.kind_title()
        ));
        Ok(())
    }

    /// `--format linux`: the unit's part of the Linux debugfs layout (nothing by
    /// default: not every architecture has one).
    fn linux(
        &self,
        _part: LinuxPart,
        _image: &Image,
        _filter: &Filter,
        _out: &mut dyn Write,
        _progress: &mut Progress,
        _done: &mut u64,
    ) -> io::Result<u64> {
        Ok(0)
    }
}
