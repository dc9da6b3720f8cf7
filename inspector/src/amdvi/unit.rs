//! [`AmdViState`] through the common commands: the unit's head (registers by field, the
//! device table, its problems), one listing entry per DTE (and per GCR3-table entry),
//! the trees, `diff` attributes, `walk`, and Linux's debugfs `devtbl` layout.

use super::{AmdViState, DevEntry, Handling, Tree};
use crate::arch::{ArchUnit, EntryView, LinuxPart, TableDesc, UnitId, Walk};
use crate::error::{InspectError, StructureProblem};
use crate::fields::{
    walk_problems, write_events_json, write_events_text, write_problems_json, write_problems_text,
    write_registers_json, write_registers_text, write_unit_line, Register,
};
use crate::image::Image;
use crate::json::Json;
use crate::model::{walk_format, Filter, TableWalk};
use crate::progress::Progress;
use crate::tree::{tables_of, TreeTable};
use crate::verify::Checker;
use amdvi::format::{GuestV2, HostV1};
use amdvi::hw::regs::{self, field_mask, CONTROL, DEV_TAB_BASE, EFR, EXCL_BASE, STATUS};
use iommu_core::pgtable::{Format, Mapping};
use iommu_core::{Iova, PhysAddr, RequesterId};
use std::any::Any;
use std::io::{self, Write};

/// ILLEGAL_DEV_TABLE_ENTRY.
pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
/// IO_PAGE_FAULT.
pub const IO_PAGE_FAULT: u8 = 0x2;
/// DEV_TAB_HARDWARE_ERROR.
pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
/// PAGE_TAB_HARDWARE_ERROR.
pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
/// Code of a target abort that logs no event (DTE V = 1, TV = 0).
pub const TARGET_ABORT: u8 = 0x0;

/// The registers shown, by field.
fn decoded(u: &AmdViState) -> Vec<Register> {
    let v = |o| u.reg(o);
    let dtb = v(regs::DEV_TAB_BASE);
    let ctl = v(regs::CONTROL);
    let efr = v(regs::EFR);
    let exb = v(regs::EXCL_BASE);
    let st = v(regs::STATUS);
    let mut out = vec![
        (
            "DEV_TAB_BASE",
            regs::DEV_TAB_BASE,
            vec![
                ("DevTabBase", dtb & field_mask(DEV_TAB_BASE::BASE)),
                ("Size", DEV_TAB_BASE::SIZE.read(dtb)),
            ],
        ),
        (
            "CONTROL",
            regs::CONTROL,
            vec![
                ("IommuEn", CONTROL::IOMMU_EN.read(ctl)),
                ("EventLogEn", CONTROL::EVENT_LOG_EN.read(ctl)),
                ("EventIntEn", CONTROL::EVENT_INT_EN.read(ctl)),
                ("ComWaitIntEn", CONTROL::COM_WAIT_INT_EN.read(ctl)),
                ("InvTimeout", CONTROL::INV_TIMEOUT.read(ctl)),
                ("Coherent", CONTROL::COHERENT.read(ctl)),
                ("CmdBufEn", CONTROL::CMD_BUF_EN.read(ctl)),
                ("PPREn", CONTROL::PPR_EN.read(ctl)),
                ("GTEn", CONTROL::GT_EN.read(ctl)),
                ("GAEn", CONTROL::GA_EN.read(ctl)),
                ("XTEn", CONTROL::XT_EN.read(ctl)),
            ],
        ),
        (
            "EFR",
            regs::EFR,
            vec![
                ("PPRSup", EFR::PPR_SUP.read(efr)),
                ("NXSup", EFR::NX_SUP.read(efr)),
                ("GTSup", EFR::GT_SUP.read(efr)),
                ("IASup", EFR::IA_SUP.read(efr)),
                ("GASup", EFR::GA_SUP.read(efr)),
                ("HATS", EFR::HATS.read(efr)),
                ("GATS", EFR::GATS.read(efr)),
                ("GLXSup", EFR::GLX_SUP.read(efr)),
                ("PASmax", EFR::PAS_MAX.read(efr)),
                ("GIoSup", EFR::GIO_SUP.read(efr)),
                ("SNPSup", EFR::SNP_SUP.read(efr)),
            ],
        ),
        (
            "EXCL_BASE",
            regs::EXCL_BASE,
            vec![
                ("ExEn", EXCL_BASE::EX_EN.read(exb)),
                ("Allow", EXCL_BASE::ALLOW.read(exb)),
                ("ExclRangeBase", exb & field_mask(EXCL_BASE::BASE)),
            ],
        ),
        ("EXCL_LIMIT", regs::EXCL_LIMIT, vec![]),
        ("CMD_BUF_BASE", regs::CMD_BUF_BASE, vec![]),
        ("EVT_LOG_BASE", regs::EVT_LOG_BASE, vec![]),
        (
            "STATUS",
            regs::STATUS,
            vec![
                ("EventOverflow", STATUS::EVENT_OVERFLOW.read(st)),
                ("EventLogInt", STATUS::EVENT_LOG_INT.read(st)),
                ("ComWaitInt", STATUS::COM_WAIT_INT.read(st)),
                ("EventLogRun", STATUS::EVENT_LOG_RUN.read(st)),
                ("CmdBufRun", STATUS::CMD_BUF_RUN.read(st)),
            ],
        ),
    ];
    out.retain(|(_, o, _)| u.regs.iter().any(|r| r.offset == *o));
    for r in &u.regs {
        if !out.iter().any(|(_, o, _)| *o == r.offset) {
            let name = match r.offset {
                regs::CMD_HEAD => "CMD_HEAD",
                regs::CMD_TAIL => "CMD_TAIL",
                regs::EVT_HEAD => "EVT_HEAD",
                regs::EVT_TAIL => "EVT_TAIL",
                regs::PPR_LOG_BASE => "PPR_LOG_BASE",
                regs::EFR2 => "EFR2",
                _ => "register",
            };
            out.push((name, r.offset, vec![]));
        }
    }
    out.into_iter()
        .map(|(name, offset, fields)| Register {
            name,
            offset,
            width: u
                .regs
                .iter()
                .find(|r| r.offset == offset)
                .map_or(8, |r| r.width),
            value: u.reg(offset),
            fields,
        })
        .collect()
}

/// One line of what a DTE (or GCR3 entry) does.
pub fn summary_of(u: &AmdViState, e: &DevEntry) -> String {
    let d = &e.dte;
    let perms = format!(
        "{}{}",
        if d.ir() { "IR" } else { "--" },
        if d.iw() { " IW" } else { " --" }
    );
    let dom = format!("DomainID {:#06x}", d.domain_id());
    match &e.handling {
        Handling::PassThrough => {
            "DTE V=0: pass-through (every address forwarded untranslated)".into()
        }
        Handling::Untranslated => format!("{dom}  untranslated (TV=1 Mode 0, {perms})"),
        Handling::Blocked => {
            format!("{dom}  blocked: TV=1 Mode 0 IR=IW=0 (IO_PAGE_FAULT {IO_PAGE_FAULT:#x})")
        }
        Handling::Abort => "blocked: V=1 TV=0, target abort (no event)".into(),
        Handling::Illegal(w) => {
            format!("illegal DTE: {w} (ILLEGAL_DEV_TABLE_ENTRY {ILLEGAL_DEV_TABLE_ENTRY:#x})")
        }
        Handling::V1(l) => {
            let t = e.tree.map(|t| u.trees[t].root).unwrap_or(PhysAddr(0));
            format!("{dom}  v1 Mode {l} ({l}-level) table at {t}, {perms}")
        }
        Handling::V2(l) => {
            let t = e.tree.map(|t| u.trees[t].root).unwrap_or(PhysAddr(0));
            let (ga, gv) = e.gcr3.unwrap_or((PhysAddr(0), 0));
            format!(
                "{dom}  v2 {l}-level guest table at {t} (GCR3 entry {ga} = {gv:#x}, GLX {}, GIoV {}), {perms}",
                d.glx().bits(),
                d.giov() as u8
            )
        }
    }
}

impl AmdViState {
    fn view(&self, e: &DevEntry) -> EntryView {
        let (translation, blocked) = match &e.handling {
            Handling::PassThrough => ("pass-through", None),
            Handling::Untranslated => ("untranslated", None),
            Handling::Blocked => ("blocked", Some(IO_PAGE_FAULT)),
            Handling::Abort => ("blocked", Some(TARGET_ABORT)),
            Handling::Illegal(_) => ("illegal", Some(ILLEGAL_DEV_TABLE_ENTRY)),
            Handling::V1(_) => ("v1", None),
            Handling::V2(_) => ("v2", None),
        };
        EntryView {
            rid: self.rid(e.devid),
            pasid: e.pasid,
            rid_pasid: e.pasid == Some(0) && e.dte.giov(),
            did: e.dte.valid().then(|| e.dte.domain_id()),
            translation,
            blocked,
            fpd: e.dte.suppress_all() || e.dte.suppress_events(),
            table: e.tree.map(|t| self.tree(t)),
            tree: e.tree,
        }
    }

    /// The page-table problems of every tree as typed problems naming the first
    /// DeviceID (and PASID) that uses the tree and the entry's address.
    pub fn table_problems(&self, image: &Image) -> Vec<StructureProblem> {
        let mut out = Vec::new();
        for t in 0..self.trees.len() {
            let Some(e) = self.entries.iter().find(|e| e.tree == Some(t)) else {
                continue;
            };
            let w = self.walk_tree(image, t, &mut |_| {});
            let who = match e.pasid {
                Some(p) => format!("DeviceID {:#06x} PASID {p:#x}", e.devid),
                None => format!("DeviceID {:#06x}", e.devid),
            };
            out.extend(walk_problems(&self.name, &who, self.trees[t].root, w));
        }
        out
    }

    fn format_of(&self, t: &Tree) -> Result<Box<dyn FormatBox>, String> {
        if t.guest {
            GuestV2::new(t.levels)
                .and_then(|f| f.with_c_bit(self.c_bit))
                .map(|f| Box::new(f) as Box<dyn FormatBox>)
                .map_err(|e| e.to_string())
        } else {
            HostV1::new(t.levels)
                .and_then(|f| f.with_c_bit(self.c_bit))
                .map(|f| Box::new(f.with_sized_pages(true)) as Box<dyn FormatBox>)
                .map_err(|e| e.to_string())
        }
    }
}

/// A page-table format the unit's trees use, walked behind one pointer.
trait FormatBox {
    fn walk(&self, image: &Image, root: PhysAddr, visit: &mut dyn FnMut(&Mapping)) -> TableWalk;
    fn tables(&self, image: &Image, root: PhysAddr) -> Vec<TreeTable>;
}

impl<F: Format> FormatBox for F {
    fn walk(&self, image: &Image, root: PhysAddr, visit: &mut dyn FnMut(&Mapping)) -> TableWalk {
        walk_format(self, image, root, visit)
    }
    fn tables(&self, image: &Image, root: PhysAddr) -> Vec<TreeTable> {
        tables_of(self, image, root)
    }
}

impl ArchUnit for AmdViState {
    fn kind(&self) -> &'static str {
        "amdvi"
    }
    fn kind_title(&self) -> &'static str {
        "AMD-Vi"
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> UnitId {
        UnitId {
            kind: "amdvi",
            index: self.index,
            base: self.base,
            assumed: self.assumed,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn text_head(&self, filter: &Filter, out: &mut dyn Write) -> io::Result<()> {
        write_unit_line(out, &self.name, "AMD-Vi", self.base, self.assumed)?;
        write_registers_text(&decoded(self), out)?;
        let valid = self.entries.iter().filter(|e| e.dte.valid()).count();
        writeln!(
            out,
            "  translation: {}, device table {} (Size {:#x}: {} DTEs), {} DTEs with V=1 listed",
            if self.enabled() {
                "enabled"
            } else {
                "disabled"
            },
            self.devtab(),
            self.devtab_size(),
            self.devtab_entries(),
            valid
        )?;
        write_events_text(&self.events, out)?;
        let dev = filter.device.map(|d| format!("DeviceID {:#06x}", d.sid()));
        write_problems_text(
            self.problems
                .iter()
                .filter(|p| dev.as_ref().map_or(true, |d| p.requester == *d)),
            out,
        )?;
        Ok(())
    }

    fn json_head(&self, j: &mut Json<&mut dyn Write>, filter: &Filter) -> io::Result<()> {
        j.kv_hex("base", self.base.0)?;
        j.kv_bool("registers_assumed", self.assumed)?;
        write_registers_json(&decoded(self), j)?;
        j.kv_bool("translation_enabled", self.enabled())?;
        j.kv_hex("device_table", self.devtab().0)?;
        j.kv_hex("device_table_size", self.devtab_size())?;
        j.kv_uint("device_table_entries", self.devtab_entries() as u64)?;
        write_events_json(&self.events, j)?;
        let dev = filter.device.map(|d| format!("DeviceID {:#06x}", d.sid()));
        write_problems_json(
            self.problems
                .iter()
                .filter(|p| dev.as_ref().map_or(true, |d| p.requester == *d)),
            j,
        )
    }

    fn entries(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> EntryView {
        self.view(&self.entries[i])
    }
    fn summary(&self, i: usize) -> String {
        let e = &self.entries[i];
        format!("DeviceID {:#06x}  {}", e.devid, summary_of(self, e))
    }
    fn json_entry(
        &self,
        j: &mut Json<&mut dyn Write>,
        i: usize,
        _tree: Option<usize>,
    ) -> io::Result<()> {
        let e = &self.entries[i];
        let d = &e.dte;
        j.kv_hex("device_id", e.devid as u64)?;
        j.kv_hex("dte_addr", e.addr.0)?;
        j.kv_hex_list("dte", &d.qwords())?;
        j.key("dte_fields")?;
        j.begin_object(true)?;
        j.kv_bool("V", d.valid())?;
        j.kv_bool("TV", d.translation_valid())?;
        j.kv_uint("Mode", d.bits(11, 9))?;
        j.kv_hex("PageTableRootPtr", d.page_table_root())?;
        j.kv_bool("IR", d.ir())?;
        j.kv_bool("IW", d.iw())?;
        j.kv_hex("DomainID", d.domain_id() as u64)?;
        j.kv_bool("GV", d.guest_valid())?;
        j.kv_bool("GIoV", d.giov())?;
        j.kv_uint("GLX", d.glx().bits())?;
        j.kv_hex("GCR3TRP", d.gcr3_root())?;
        j.kv_uint("GuestPagingMode", d.guest_paging_mode().bits())?;
        j.kv_bool("SA", d.suppress_all())?;
        j.kv_bool("SE", d.suppress_events())?;
        j.kv_bool("EX", d.exclusion())?;
        j.kv_bool("IV", d.int_valid())?;
        j.end_object()?;
        if let Some((a, v)) = e.gcr3 {
            j.kv_hex("gcr3_entry_addr", a.0)?;
            j.kv_hex("gcr3_entry", v)?;
        }
        if let Handling::Illegal(w) = &e.handling {
            j.kv_str("illegal", w)?;
        }
        Ok(())
    }

    fn trees(&self) -> usize {
        self.trees.len()
    }
    fn tree(&self, t: usize) -> TableDesc {
        let x = &self.trees[t];
        TableDesc {
            format: if x.guest { "amdvi-v2" } else { "amdvi-v1" },
            root: x.root,
            levels: x.levels,
        }
    }
    fn json_tree(&self, j: &mut Json<&mut dyn Write>, t: usize) -> io::Result<()> {
        let x = &self.trees[t];
        j.kv_str("format", if x.guest { "v2" } else { "v1" })?;
        j.kv_hex("root", x.root.0)?;
        j.kv_uint("levels", x.levels as u64)?;
        j.kv_bool("dte_ir", x.ir)?;
        j.kv_bool("dte_iw", x.iw)
    }
    fn walk_tree(&self, image: &Image, t: usize, visit: &mut dyn FnMut(&Mapping)) -> TableWalk {
        let x = self.trees[t];
        match self.format_of(&x) {
            Ok(f) => f.walk(image, x.root, &mut |m| {
                // IR/IW are ANDed over the DTE and every level (reference §7.1).
                let mut m = *m;
                m.perms.read &= x.ir;
                m.perms.write &= x.iw;
                m.perms.exec = false;
                visit(&m)
            }),
            Err(e) => TableWalk {
                fatal: Some(e),
                ..TableWalk::default()
            },
        }
    }
    fn tree_tables(&self, image: &Image, t: usize) -> Vec<TreeTable> {
        let x = self.trees[t];
        self.format_of(&x)
            .map(|f| f.tables(image, x.root))
            .unwrap_or_default()
    }

    fn attrs(&self) -> Vec<(&'static str, String, bool)> {
        let ex = self.reg(regs::EXCL_BASE);
        vec![
            ("translation_enabled", self.enabled().to_string(), true),
            ("device_table", self.devtab().to_string(), false),
            (
                "device_table_size",
                format!("{:#x}", self.devtab_size()),
                true,
            ),
            (
                "exclusion_range",
                format!("{:#x}-{:#x}", ex, self.reg(regs::EXCL_LIMIT)),
                true,
            ),
            (
                "guest_translation",
                CONTROL::GT_EN.read(self.reg(regs::CONTROL)).to_string(),
                true,
            ),
        ]
    }

    fn serves(&self, rid: RequesterId) -> bool {
        rid.segment == self.segment && self.noted.binary_search(&rid.sid()).is_ok()
    }

    fn translate(
        &self,
        image: &Image,
        rid: RequesterId,
        pasid: Option<u32>,
        iova: Iova,
        write: bool,
    ) -> Result<Walk, InspectError> {
        super::walk::translate(self, image, rid, pasid, iova, write)
    }

    fn verify(&self, image: &Image, ck: &mut Checker<'_>) -> Result<(), InspectError> {
        super::verify::verify_unit(self, image, ck)
    }

    /// Linux's debugfs `iommu/amd/devtbl` (drivers/iommu/amd/debugfs.c `dump_dte`): a
    /// header, then per device `SSSS:BB:DD.F`, qwords 3 to 0 and the unit
    /// (`iommuN`). Linux shows one DeviceID per read; here every DTE with V = 1 (and
    /// every DeviceID the snapshot lists) of the filter follows one header per unit.
    fn linux(
        &self,
        part: LinuxPart,
        _image: &Image,
        filter: &Filter,
        out: &mut dyn Write,
        progress: &mut Progress,
        done: &mut u64,
    ) -> io::Result<u64> {
        if part != LinuxPart::Devices {
            return Ok(0);
        }
        let mut header = false;
        let mut last = None;
        for (i, e) in self.entries.iter().enumerate() {
            progress.set(*done + i as u64);
            if last == Some(e.devid)
                || !filter.matches(
                    self.rid(e.devid),
                    None,
                    e.dte.valid().then(|| e.dte.domain_id()),
                )
            {
                continue;
            }
            last = Some(e.devid);
            if !header {
                header = true;
                writeln!(
                    out,
                    "{:<12} {:>16} {:>16} {:>16} {:>16} iommu",
                    "DeviceId", "QWORD[3]", "QWORD[2]", "QWORD[1]", "QWORD[0]"
                )?;
            }
            let r = self.rid(e.devid);
            let q = e.dte.qwords();
            writeln!(
                out,
                "{:04x}:{:02x}:{:02x}.{:x} {:016x} {:016x} {:016x} {:016x} iommu{}",
                r.segment,
                r.bus,
                r.device(),
                r.function(),
                q[3],
                q[2],
                q[1],
                q[0],
                self.index
            )?;
        }
        *done += self.entries.len() as u64;
        Ok(0)
    }
}
