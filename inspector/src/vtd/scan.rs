//! The root, context and PASID structures of a unit, and what each present context (or
//! PASID-table) entry sends its requests through.
//!
//! The checks on each entry follow the VT-d specification as the emulator's model
//! applies them (reserved bits, domain ID range, translation type against ECAP, address
//! width against CAP.SAGAW); an entry that fails one is listed with the fault reason a
//! request through it would get.

use super::{PageTable, Stage, Unit};
use iommu_core::mem::PhysMem;
use iommu_core::{PhysAddr, RequesterId};
use std::collections::HashMap;
use vtd::hw::fault::FaultReason as FR;
use vtd::hw::pasid::{Flpm, PasidDirEntry, PasidEntry, Pgtt, PASIDS_PER_TABLE};
use vtd::hw::regs::{Ttm, CAP, ECAP};
use vtd::hw::root::{
    AddressWidth, ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry, TranslationType,
};

/// Most present context and PASID-table entries listed per unit, and most records the
/// scan holds per unit (entries of distinct PASID directories and tables, structure
/// pages); past either the scan stops with a problem (a corrupt image could otherwise
/// make billions).
pub const MAX_CONTEXTS: usize = 1 << 20;

/// Why requests through an entry are blocked: the fault reason and the detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The fault reason a request would be reported with.
    pub reason: FR,
    /// What in the entry causes it.
    pub why: String,
}

impl Blocked {
    fn new(reason: FR, why: impl Into<String>) -> Self {
        Self {
            reason,
            why: why.into(),
        }
    }
}

/// What requests through a context (or PASID-table) entry are translated by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Translation {
    /// A page table.
    Tables(PageTable),
    /// Pass-through: the IOVA is the physical address.
    PassThrough,
    /// Every request faults.
    Blocked(Blocked),
}

impl Translation {
    /// Short name: `second-stage`, `first-stage`, `pass-through`, `blocked`.
    pub fn name(&self) -> &'static str {
        match self {
            Translation::Tables(t) => t.stage.name(),
            Translation::PassThrough => "pass-through",
            Translation::Blocked(_) => "blocked",
        }
    }
    /// The page table, if any.
    pub fn table(&self) -> Option<&PageTable> {
        match self {
            Translation::Tables(t) => Some(t),
            _ => None,
        }
    }
}

/// A problem in the structures, located at an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Address of the entry (or table) at fault.
    pub addr: PhysAddr,
    /// What is wrong.
    pub what: String,
    /// The fault reason a request reaching it would get, if one applies.
    pub fault: Option<FR>,
}

/// A page of the translation structures (not the page tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructPage {
    /// Address.
    pub addr: PhysAddr,
    /// Bytes (4 KiB, or a whole PASID directory).
    pub bytes: u64,
    /// `root table`, `context table`, `PASID directory`, `PASID table`.
    pub kind: &'static str,
    /// Who points to it (e.g. `bus 0x03 lower half`).
    pub owner: String,
}

/// A root entry that points somewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRecord {
    /// Bus number.
    pub bus: u8,
    /// Address of the entry.
    pub addr: PhysAddr,
    /// Raw qwords (lo, hi).
    pub raw: [u64; 2],
    /// Context tables it points to: `(half, address)`; half is `None` in legacy mode,
    /// `Some(false)` lower, `Some(true)` upper.
    pub tables: Vec<(Option<bool>, PhysAddr)>,
}

/// One present context entry (legacy) or PASID-table entry (scalable) and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The requester.
    pub rid: RequesterId,
    /// The PASID of the PASID-table entry (scalable mode only).
    pub pasid: Option<u32>,
    /// This PASID-table entry serves requests without PASID (RID_PASID).
    pub rid_pasid: bool,
    /// Root entry: address and raw qwords.
    pub root_entry: (PhysAddr, [u64; 2]),
    /// Context entry: address and raw qwords (2 legacy, 4 scalable).
    pub context_entry: (PhysAddr, Vec<u64>),
    /// PASID-directory entry: address and raw value.
    pub pasid_dir_entry: Option<(PhysAddr, u64)>,
    /// PASID-table entry: address and raw qwords.
    pub pasid_entry: Option<(PhysAddr, [u64; 8])>,
    /// Domain ID, when the entry has one.
    pub did: Option<u16>,
    /// Fault processing disabled on the path.
    pub fpd: bool,
    /// What requests go through.
    pub translation: Translation,
}

impl Context {
    /// `segment:bus:dev.fn` and, for PASID entries, `pasid N`.
    pub fn label(&self) -> String {
        match self.pasid {
            Some(p) => format!("{} pasid {p:#x}", self.rid),
            None => self.rid.to_string(),
        }
    }
}

/// A unit's structures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Mode (RTADDR.TTM).
    pub mode: Ttm,
    /// Root table address.
    pub root_table: PhysAddr,
    /// Root entries that point somewhere, by bus.
    pub roots: Vec<RootRecord>,
    /// Present context / PASID-table entries, by bus, devfn, PASID.
    pub contexts: Contexts,
    /// Problems met.
    pub problems: Vec<Problem>,
    /// Every structure page read, in scan order.
    pub pages: Vec<StructPage>,
    /// Why the tables were not scanned, if they were not.
    pub skipped: Option<String>,
}

/// A PASID table read once: its present entries and what each does.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TableScan {
    /// Address of the table.
    addr: PhysAddr,
    /// Present entries: index in the table, raw qwords, translation.
    entries: Vec<(u8, [u64; 8], Translation)>,
}

/// A present, readable directory entry of a PASID directory read once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirEnt {
    /// Index in the directory.
    index: u32,
    /// Raw value.
    raw: u64,
    /// The PASID table (index in [`Contexts::tables`]).
    table: u32,
    /// Entries of the directory's earlier directory entries (the first PASID entry of
    /// this one, counted through the directory).
    start: usize,
}

/// A PASID directory read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DirScan {
    /// Address of the directory.
    addr: PhysAddr,
    /// Present directory entries whose table was read.
    entries: Vec<DirEnt>,
    /// Present PASID entries reachable through it.
    total: usize,
}

/// One run of [`Contexts`]: an entry in full, or a scalable context entry's PASID
/// entries, reached through a PASID directory shared with any other context entry
/// pointing at it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Run {
    One(Context),
    Pasids {
        /// The context-level fields (PASID fields unset).
        base: Context,
        /// The device's RID_PASID.
        rid_pasid: u32,
        /// The directory (index in [`Contexts::dirs`]).
        dir: u32,
        /// Entries of the directory listed (fewer than its total when the scan's
        /// budget ran out in it).
        count: usize,
    },
}

/// The present context entries (legacy) or PASID-table entries (scalable) of a unit, in
/// bus, devfn, PASID order. Every PASID directory and PASID table is read and decoded
/// once, however many context entries or directory entries point at it; a device's
/// entries are produced from the shared records when asked for, so the memory grows with
/// the distinct structures and the devices, not with devices × PASIDs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contexts {
    runs: Vec<Run>,
    /// Index of each run's first entry.
    starts: Vec<usize>,
    dirs: Vec<DirScan>,
    tables: Vec<TableScan>,
    len: usize,
}

impl From<Vec<Context>> for Contexts {
    fn from(v: Vec<Context>) -> Self {
        let mut c = Contexts::default();
        for x in v {
            c.push_one(x);
        }
        c
    }
}

impl Contexts {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct PASID tables decoded (each once, however many directory entries point
    /// at it).
    pub fn pasid_tables(&self) -> usize {
        self.tables.len()
    }

    /// Distinct PASID directories decoded (each once, however many context entries
    /// point at it).
    pub fn pasid_directories(&self) -> usize {
        self.dirs.len()
    }

    /// Entry records held: entries in full, directory entries and PASID-table entries
    /// of the distinct structures (what the memory grows with).
    pub fn records(&self) -> usize {
        self.runs.len()
            + self.dirs.iter().map(|d| d.entries.len()).sum::<usize>()
            + self.tables.iter().map(|t| t.entries.len()).sum::<usize>()
    }

    fn push_one(&mut self, c: Context) {
        self.starts.push(self.len);
        self.runs.push(Run::One(c));
        self.len += 1;
    }

    /// Entry `i` (panics past [`Contexts::len`], like indexing).
    pub fn get(&self, i: usize) -> Context {
        assert!(i < self.len, "context {i} of {}", self.len);
        let r = self.starts.partition_point(|&s| s <= i) - 1;
        self.entry(r, i - self.starts[r])
    }

    fn entry(&self, r: usize, k: usize) -> Context {
        match &self.runs[r] {
            Run::One(c) => c.clone(),
            Run::Pasids {
                base,
                rid_pasid,
                dir,
                ..
            } => {
                let d = &self.dirs[*dir as usize];
                let e = d.entries.partition_point(|e| e.start <= k) - 1;
                let de = d.entries[e];
                let t = &self.tables[de.table as usize];
                let (ti, w, tr) = &t.entries[k - de.start];
                let pe = PasidEntry::from_qwords(*w);
                let pasid = de.index * 64 + *ti as u32;
                Context {
                    pasid: Some(pasid),
                    rid_pasid: pasid == *rid_pasid,
                    pasid_dir_entry: Some((PhysAddr(d.addr.0 + de.index as u64 * 8), de.raw)),
                    pasid_entry: Some((PhysAddr(t.addr.0 + *ti as u64 * 64), *w)),
                    did: Some(pe.did()),
                    fpd: base.fpd || PasidDirEntry::from_qwords([de.raw]).fpd() || pe.fpd(),
                    translation: tr.clone(),
                    ..base.clone()
                }
            }
        }
    }

    /// The entries in order, each made when reached.
    pub fn iter(&self) -> impl Iterator<Item = Context> + '_ {
        self.runs.iter().enumerate().flat_map(move |(r, run)| {
            let n = match run {
                Run::One(_) => 1,
                Run::Pasids { count, .. } => *count,
            };
            (0..n).map(move |k| self.entry(r, k))
        })
    }
}

fn page_qwords(mem: &dyn PhysMem, at: u64, bytes: usize) -> Result<Vec<u64>, iommu_core::MemError> {
    let mut b = vec![0u8; bytes];
    mem.read(PhysAddr(at), &mut b)?;
    Ok(b.chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect())
}

fn rsvd_text(masks: &[u64]) -> String {
    masks
        .iter()
        .enumerate()
        .filter(|(_, m)| **m != 0)
        .map(|(i, m)| format!("qword {i} bits {m:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a present legacy context entry does on `unit`.
pub fn legacy_context(unit: &Unit, ce: &ContextEntry) -> Translation {
    let rsvd = ce.reserved_bits(unit.haw);
    if rsvd != [0, 0] {
        return Translation::Blocked(Blocked::new(
            FR::ContextEntryReserved,
            format!(
                "reserved bits set in the context entry: {}",
                rsvd_text(&rsvd)
            ),
        ));
    }
    if ce.did() as u32 >= unit.domains() {
        return Translation::Blocked(Blocked::new(
            FR::ContextEntryReserved,
            format!(
                "domain ID {:#x} is beyond the {} IDs of CAP.ND",
                ce.did(),
                unit.domains()
            ),
        ));
    }
    let invalid = |why: String| Translation::Blocked(Blocked::new(FR::ContextEntryInvalid, why));
    let ecap = unit.ecap();
    match ce.tt() {
        TranslationType::Reserved => invalid("translation type 3 is reserved".into()),
        TranslationType::DeviceTlb if !ECAP::DT.is_set(ecap) => {
            invalid("translation type 1 (device TLB) without ECAP.DT".into())
        }
        TranslationType::PassThrough if !ECAP::PT.is_set(ecap) => {
            invalid("translation type 2 (pass-through) without ECAP.PT".into())
        }
        TranslationType::PassThrough => Translation::PassThrough,
        TranslationType::Untranslated | TranslationType::DeviceTlb => {
            let Some(aw) = AddressWidth::from_bits(ce.aw()) else {
                return invalid(format!("address width field {} is not 1, 2 or 3", ce.aw()));
            };
            if CAP::SAGAW.read(unit.cap()) & aw.sagaw_bit() == 0 {
                return invalid(format!(
                    "{}-level tables not in CAP.SAGAW {:#07b}",
                    aw.levels(),
                    CAP::SAGAW.read(unit.cap())
                ));
            }
            Translation::Tables(PageTable {
                stage: Stage::Second,
                root: PhysAddr(ce.slptptr()),
                levels: aw.levels() as u8,
                exec: false,
                width: aw.width().min(unit.mgaw()),
            })
        }
    }
}

/// Checks a present scalable-mode context entry on `unit`.
pub fn scalable_context(unit: &Unit, ce: &ScalableContextEntry) -> Result<(), Blocked> {
    let rsvd = ce.reserved_bits(unit.haw);
    if rsvd != [0; 4] {
        return Err(Blocked::new(
            FR::SmContextEntryReserved,
            format!(
                "reserved bits set in the context entry: {}",
                rsvd_text(&rsvd)
            ),
        ));
    }
    let ecap = unit.ecap();
    if ce.dte() && !ECAP::DT.is_set(ecap) {
        return Err(Blocked::new(
            FR::SmContextEntryInvalid,
            "DTE set without ECAP.DT",
        ));
    }
    if ce.pre() && !ECAP::PRS.is_set(ecap) {
        return Err(Blocked::new(
            FR::SmContextEntryInvalid,
            "PRE set without ECAP.PRS",
        ));
    }
    Ok(())
}

/// What a present PASID-table entry does on `unit`.
pub fn pasid_entry(unit: &Unit, pe: &PasidEntry) -> Translation {
    let rsvd = pe.reserved_bits(unit.haw);
    if rsvd != [0; 8] {
        return Translation::Blocked(Blocked::new(
            FR::SmPasidEntryReserved,
            format!("reserved bits set in the PASID entry: {}", rsvd_text(&rsvd)),
        ));
    }
    if pe.did() as u32 >= unit.domains() {
        return Translation::Blocked(Blocked::new(
            FR::SmPasidEntryReserved,
            format!(
                "domain ID {:#x} is beyond the {} IDs of CAP.ND",
                pe.did(),
                unit.domains()
            ),
        ));
    }
    let invalid = |why: String| Translation::Blocked(Blocked::new(FR::SmPasidEntryInvalid, why));
    let (cap, ecap) = (unit.cap(), unit.ecap());
    if pe.ssade() && !ECAP::SLADS.is_set(ecap) {
        return invalid("SSADE set without ECAP.SLADS".into());
    }
    match pe.pgtt() {
        None => invalid(format!("PGTT {} is reserved", pe.pgtt_bits())),
        Some(Pgtt::Nested) => invalid("nested translation (PGTT 3) is not decoded".into()),
        Some(Pgtt::PassThrough) if !ECAP::PT.is_set(ecap) => {
            invalid("pass-through PGTT without ECAP.PT".into())
        }
        Some(Pgtt::PassThrough) => Translation::PassThrough,
        Some(Pgtt::SecondStage) => {
            if !ECAP::SLTS.is_set(ecap) {
                return invalid("second-stage PGTT without ECAP.SLTS".into());
            }
            let Some(aw) = AddressWidth::from_bits(pe.aw()) else {
                return invalid(format!("address width field {} is not 1, 2 or 3", pe.aw()));
            };
            if CAP::SAGAW.read(cap) & aw.sagaw_bit() == 0 {
                return invalid(format!(
                    "{}-level tables not in CAP.SAGAW {:#07b}",
                    aw.levels(),
                    CAP::SAGAW.read(cap)
                ));
            }
            Translation::Tables(PageTable {
                stage: Stage::Second,
                root: PhysAddr(pe.slptptr()),
                levels: aw.levels() as u8,
                exec: pe.slee(),
                width: aw.width().min(unit.mgaw()),
            })
        }
        Some(Pgtt::FirstStage) => {
            if !ECAP::FLTS.is_set(ecap) {
                return invalid("first-stage PGTT without ECAP.FLTS".into());
            }
            let flpm = match Flpm::from_bits(pe.flpm()) {
                Some(Flpm::Level4) => Flpm::Level4,
                Some(Flpm::Level5) if CAP::FL5LP.is_set(cap) => Flpm::Level5,
                Some(Flpm::Level5) => {
                    return invalid("5-level first-stage paging without CAP.FL5LP".into())
                }
                None => return invalid(format!("FLPM {} is reserved", pe.flpm())),
            };
            // First-stage input addresses are bounded by the paging mode and by the
            // entry's AW (30 + 9·AW bits), as QEMU's intel-iommu bounds them
            // (vtd_get_iova_agaw for every PGTT) and Linux programs AW in first-stage
            // entries (pasid_set_address_width); AW 4-7 are reserved encodings, so the
            // entry is invalid. The emulator's model applies the same rule.
            let aw = pe.aw();
            if aw > 3 {
                return invalid(format!("address width field {aw} is reserved (4-7)"));
            }
            Translation::Tables(PageTable {
                stage: Stage::First,
                root: PhysAddr(pe.flptptr()),
                levels: flpm.levels() as u8,
                exec: false,
                width: flpm.width().min(30 + 9 * aw as u32),
            })
        }
    }
}

/// The RID_PASID of a scalable context entry on `unit` (0 without ECAP.RPS).
pub fn rid_pasid(unit: &Unit, ce: &ScalableContextEntry) -> u32 {
    if ECAP::RPS.is_set(unit.ecap()) {
        ce.rid_pasid()
    } else {
        0
    }
}

struct Scanner<'a> {
    unit: &'a Unit,
    mem: &'a dyn PhysMem,
    s: Scan,
    full: bool,
    /// PASID directories read, by (address, entries).
    dir_ids: HashMap<(u64, u64), u32>,
    /// PASID tables read, by address.
    table_ids: HashMap<u64, u32>,
    /// Records held (directory entries, PASID entries, structure pages).
    records: usize,
}

impl Scanner<'_> {
    fn problem(&mut self, addr: u64, fault: Option<FR>, what: String) {
        self.s.problems.push(Problem {
            addr: PhysAddr(addr),
            what,
            fault,
        });
    }

    /// Stops the scan with a problem at `at` (once).
    fn stop(&mut self, at: u64, what: &str) {
        if !self.full {
            self.full = true;
            self.problem(
                at,
                None,
                format!("more than {MAX_CONTEXTS} {what}; the scan stops here"),
            );
        }
    }

    fn push(&mut self, c: Context) -> bool {
        if self.s.contexts.len() >= MAX_CONTEXTS {
            self.stop(c.context_entry.0 .0, "present entries");
            return false;
        }
        self.s.contexts.push_one(c);
        true
    }

    /// Takes one record from the budget; false (and the scan stops) when it is spent.
    fn record(&mut self, at: u64) -> bool {
        if self.records >= MAX_CONTEXTS {
            self.stop(
                at,
                "PASID-directory entries, PASID entries and structure pages",
            );
            return false;
        }
        self.records += 1;
        true
    }

    fn page(&mut self, at: u64, p: StructPage) -> bool {
        if !self.record(at) {
            return false;
        }
        self.s.pages.push(p);
        true
    }

    fn legacy(&mut self) {
        let rt = self.s.root_table.0;
        let roots = match page_qwords(self.mem, rt, 4096) {
            Ok(q) => q,
            Err(e) => {
                self.problem(rt, Some(FR::RootTableAccess), format!("root table: {e}"));
                return;
            }
        };
        for bus in 0..=255u8 {
            let at = rt + bus as u64 * 16;
            let re = RootEntry::from_qwords([roots[2 * bus as usize], roots[2 * bus as usize + 1]]);
            if !re.present() {
                continue;
            }
            let rsvd = re.reserved_bits(self.unit.haw);
            let ct = re.context_table();
            self.s.roots.push(RootRecord {
                bus,
                addr: PhysAddr(at),
                raw: re.qwords(),
                tables: vec![(None, PhysAddr(ct))],
            });
            if rsvd != [0, 0] {
                self.problem(
                    at,
                    Some(FR::RootEntryReserved),
                    format!(
                        "root entry of bus {bus:#04x}: reserved bits set ({}); every request \
                         of the bus faults",
                        rsvd_text(&rsvd)
                    ),
                );
                continue;
            }
            let ctx = match page_qwords(self.mem, ct, 4096) {
                Ok(q) => q,
                Err(e) => {
                    self.problem(
                        at,
                        Some(FR::ContextTableAccess),
                        format!("context table of bus {bus:#04x}: {e}"),
                    );
                    continue;
                }
            };
            self.s.pages.push(StructPage {
                addr: PhysAddr(ct),
                bytes: 4096,
                kind: "context table",
                owner: format!("bus {bus:#04x}"),
            });
            for devfn in 0..=255u8 {
                let cat = ct + devfn as u64 * 16;
                let ce = ContextEntry::from_qwords([
                    ctx[2 * devfn as usize],
                    ctx[2 * devfn as usize + 1],
                ]);
                if !ce.present() {
                    continue;
                }
                let rid = RequesterId {
                    segment: self.unit.segment,
                    bus,
                    devfn,
                };
                let translation = legacy_context(self.unit, &ce);
                let did = Some(ce.did());
                if !self.push(Context {
                    rid,
                    pasid: None,
                    rid_pasid: false,
                    root_entry: (PhysAddr(at), re.qwords()),
                    context_entry: (PhysAddr(cat), ce.qwords().to_vec()),
                    pasid_dir_entry: None,
                    pasid_entry: None,
                    did,
                    fpd: ce.fpd(),
                    translation,
                }) {
                    return;
                }
            }
        }
    }

    fn scalable(&mut self) {
        let rt = self.s.root_table.0;
        let roots = match page_qwords(self.mem, rt, 4096) {
            Ok(q) => q,
            Err(e) => {
                self.problem(rt, Some(FR::SmRootEntryAccess), format!("root table: {e}"));
                return;
            }
        };
        for bus in 0..=255u8 {
            let at = rt + bus as u64 * 16;
            let re = ScalableRootEntry::from_qwords([
                roots[2 * bus as usize],
                roots[2 * bus as usize + 1],
            ]);
            let mut tables = Vec::new();
            if re.lower_present() {
                tables.push((Some(false), PhysAddr(re.lower_table())));
            }
            if re.upper_present() {
                tables.push((Some(true), PhysAddr(re.upper_table())));
            }
            if tables.is_empty() {
                continue;
            }
            self.s.roots.push(RootRecord {
                bus,
                addr: PhysAddr(at),
                raw: re.qwords(),
                tables: tables.clone(),
            });
            for (half, ct) in tables {
                let upper = half == Some(true);
                let first_devfn: u8 = if upper { 0x80 } else { 0 };
                let hname = if upper { "upper" } else { "lower" };
                let rsvd = re.reserved_bits_for(first_devfn, self.unit.haw);
                if rsvd != 0 {
                    self.problem(
                        at,
                        Some(FR::SmRootEntryReserved),
                        format!(
                            "root entry of bus {bus:#04x}, {hname} half: reserved bits {rsvd:#x} \
                             set; its requests fault"
                        ),
                    );
                    continue;
                }
                let ctx = match page_qwords(self.mem, ct.0, 4096) {
                    Ok(q) => q,
                    Err(e) => {
                        self.problem(
                            at,
                            Some(FR::SmContextEntryAccess),
                            format!("{hname} context table of bus {bus:#04x}: {e}"),
                        );
                        continue;
                    }
                };
                self.s.pages.push(StructPage {
                    addr: ct,
                    bytes: 4096,
                    kind: "context table",
                    owner: format!("bus {bus:#04x} {hname} half"),
                });
                for i in 0..128u8 {
                    let devfn = first_devfn | i;
                    let cat = ct.0 + i as u64 * 32;
                    let q = &ctx[4 * i as usize..4 * i as usize + 4];
                    let ce = ScalableContextEntry::from_qwords([q[0], q[1], q[2], q[3]]);
                    if !ce.present() {
                        continue;
                    }
                    let rid = RequesterId {
                        segment: self.unit.segment,
                        bus,
                        devfn,
                    };
                    if !self.scalable_context(rid, (PhysAddr(at), re.qwords()), cat, &ce) {
                        return;
                    }
                }
            }
        }
    }

    /// Returns false when the context budget is exhausted.
    fn scalable_context(
        &mut self,
        rid: RequesterId,
        root_entry: (PhysAddr, [u64; 2]),
        cat: u64,
        ce: &ScalableContextEntry,
    ) -> bool {
        let base = Context {
            rid,
            pasid: None,
            rid_pasid: false,
            root_entry,
            context_entry: (PhysAddr(cat), ce.qwords().to_vec()),
            pasid_dir_entry: None,
            pasid_entry: None,
            did: None,
            fpd: ce.fpd(),
            translation: Translation::PassThrough,
        };
        if let Err(b) = scalable_context(self.unit, ce) {
            return self.push(Context {
                translation: Translation::Blocked(b),
                ..base
            });
        }
        let dir = ce.pasid_dir();
        let entries = ce.pasid_dir_entries();
        let id = match self.dir_ids.get(&(dir, entries)) {
            Some(&id) => {
                // Read before: its pages are reached by this device too.
                let d = std::mem::take(&mut self.s.contexts.dirs[id as usize]);
                let ok = self.dir_pages(rid, &d, entries);
                self.s.contexts.dirs[id as usize] = d;
                if !ok {
                    return false;
                }
                id
            }
            None => {
                let dq = match page_qwords(self.mem, dir, (entries * 8) as usize) {
                    Ok(q) => q,
                    Err(e) => {
                        self.problem(
                            cat,
                            Some(FR::SmPasidDirAccess),
                            format!("PASID directory of {rid}: {e}"),
                        );
                        return self.push(Context {
                            translation: Translation::Blocked(Blocked::new(
                                FR::SmPasidDirAccess,
                                format!("PASID directory at {dir:#x} cannot be read: {e}"),
                            )),
                            ..base
                        });
                    }
                };
                let Some(d) = self.read_dir(rid, dir, entries, &dq) else {
                    return false;
                };
                let id = self.s.contexts.dirs.len() as u32;
                self.s.contexts.dirs.push(d);
                self.dir_ids.insert((dir, entries), id);
                id
            }
        };
        let total = self.s.contexts.dirs[id as usize].total;
        let room = MAX_CONTEXTS - self.s.contexts.len();
        let count = total.min(room);
        if count > 0 {
            let c = &mut self.s.contexts;
            c.starts.push(c.len);
            c.runs.push(Run::Pasids {
                base,
                rid_pasid: rid_pasid(self.unit, ce),
                dir: id,
                count,
            });
            c.len += count;
        }
        if count < total {
            self.stop(cat, "present entries");
            return false;
        }
        true
    }

    /// The structure pages of a directory read before, reached by `rid` too.
    fn dir_pages(&mut self, rid: RequesterId, d: &DirScan, entries: u64) -> bool {
        if !self.page(
            d.addr.0,
            StructPage {
                addr: d.addr,
                bytes: (entries * 8).max(4096),
                kind: "PASID directory",
                owner: rid.to_string(),
            },
        ) {
            return false;
        }
        for de in &d.entries {
            let di = de.index as u64;
            let addr = self.s.contexts.tables[de.table as usize].addr;
            if !self.page(
                d.addr.0 + di * 8,
                StructPage {
                    addr,
                    bytes: 4096,
                    kind: "PASID table",
                    owner: format!("{rid} PASIDs {:#x}-{:#x}", di * 64, di * 64 + 63),
                },
            ) {
                return false;
            }
        }
        true
    }

    /// Reads a PASID directory met for the first time (its raw entries `dq`), and the
    /// PASID tables it points to that were not read before. None when the budget ran out.
    fn read_dir(
        &mut self,
        rid: RequesterId,
        dir: u64,
        entries: u64,
        dq: &[u64],
    ) -> Option<DirScan> {
        if !self.page(
            dir,
            StructPage {
                addr: PhysAddr(dir),
                bytes: (entries * 8).max(4096),
                kind: "PASID directory",
                owner: rid.to_string(),
            },
        ) {
            return None;
        }
        let mut d = DirScan {
            addr: PhysAddr(dir),
            entries: Vec::new(),
            total: 0,
        };
        for (di, &raw) in dq.iter().enumerate() {
            let de = PasidDirEntry::from_qwords([raw]);
            if !de.present() {
                continue;
            }
            let dat = dir + di as u64 * 8;
            let rsvd = de.reserved_bits(self.unit.haw);
            if rsvd != 0 {
                self.problem(
                    dat,
                    Some(FR::SmPasidDirReserved),
                    format!(
                        "PASID directory entry {di:#x} of {rid}: reserved bits {rsvd:#x} set; \
                         PASIDs {:#x}-{:#x} fault",
                        di * 64,
                        di * 64 + 63
                    ),
                );
                continue;
            }
            let pt = de.table();
            let table = match self.table_ids.get(&pt) {
                Some(&t) => t,
                None => {
                    let pq = match page_qwords(self.mem, pt, 4096) {
                        Ok(q) => q,
                        Err(e) => {
                            self.problem(
                                dat,
                                Some(FR::SmPasidEntryAccess),
                                format!("PASID table {pt:#x} of {rid}: {e}"),
                            );
                            continue;
                        }
                    };
                    let mut t = TableScan {
                        addr: PhysAddr(pt),
                        entries: Vec::new(),
                    };
                    for ti in 0..PASIDS_PER_TABLE as usize {
                        let mut w = [0u64; 8];
                        w.copy_from_slice(&pq[8 * ti..8 * ti + 8]);
                        let pe = PasidEntry::from_qwords(w);
                        if !pe.present() {
                            continue;
                        }
                        if !self.record(dat) {
                            return None;
                        }
                        t.entries.push((ti as u8, w, pasid_entry(self.unit, &pe)));
                    }
                    let id = self.s.contexts.tables.len() as u32;
                    self.s.contexts.tables.push(t);
                    self.table_ids.insert(pt, id);
                    id
                }
            };
            if !self.page(
                dat,
                StructPage {
                    addr: PhysAddr(pt),
                    bytes: 4096,
                    kind: "PASID table",
                    owner: format!("{rid} PASIDs {:#x}-{:#x}", di * 64, di * 64 + 63),
                },
            ) || !self.record(dat)
            {
                return None;
            }
            d.entries.push(DirEnt {
                index: di as u32,
                raw,
                table,
                start: d.total,
            });
            d.total += self.s.contexts.tables[table as usize].entries.len();
        }
        Some(d)
    }
}

/// Scans the structures of `unit` in `mem`.
pub fn scan(unit: &Unit, mem: &dyn PhysMem) -> Scan {
    let mode = unit.mode();
    let root_table = unit.root_table();
    let mut sc = Scanner {
        unit,
        mem,
        s: Scan {
            mode,
            root_table,
            roots: Vec::new(),
            contexts: Contexts::default(),
            problems: Vec::new(),
            pages: Vec::new(),
            skipped: None,
        },
        full: false,
        dir_ids: HashMap::new(),
        table_ids: HashMap::new(),
        records: 0,
    };
    if !unit.root_latched() && !unit.enabled() && unit.rtaddr() == 0 {
        sc.s.skipped = Some("no root table: RTADDR is 0 and GSTS.RTPS is clear".into());
        return sc.s;
    }
    match mode {
        Ttm::Legacy => {
            sc.s.pages.push(StructPage {
                addr: root_table,
                bytes: 4096,
                kind: "root table",
                owner: unit.name.clone(),
            });
            sc.legacy()
        }
        Ttm::Scalable => {
            if !ECAP::SMTS.is_set(unit.ecap()) {
                sc.problem(
                    unit.rtaddr(),
                    Some(FR::SmTtmForPasidRequest),
                    "RTADDR.TTM selects scalable mode, which ECAP.SMTS does not offer".into(),
                );
                sc.s.skipped = Some("scalable mode without ECAP.SMTS".into());
                return sc.s;
            }
            sc.s.pages.push(StructPage {
                addr: root_table,
                bytes: 4096,
                kind: "root table",
                owner: unit.name.clone(),
            });
            sc.scalable()
        }
        Ttm::Reserved => {
            sc.problem(
                unit.rtaddr(),
                Some(FR::SmTtmForPasidRequest),
                "RTADDR.TTM is the reserved value 2".into(),
            );
            sc.s.skipped = Some("reserved translation table mode".into());
        }
        Ttm::AbortDma => {
            sc.s.skipped = Some("abort-DMA mode: every request is blocked".into());
        }
    }
    sc.s
}
