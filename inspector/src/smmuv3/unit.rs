//! [`SmmuState`] through the common commands. Linux has no SMMUv3 debugfs; the text
//! names fields as `arm-smmu-v3.h` does (`STRTAB_STE_0_CFG`, `CTXDESC_CD_0_TCR_T0SZ`,
//! ...) so a kernel engineer reads it against the header.

use super::{stream_rid, Handling, S2Mem, SmmuState, StreamEntry, Tree};
use crate::arch::{ArchUnit, EntryView, TableDesc, UnitId, Walk};
use crate::error::{InspectError, StructureProblem};
use crate::fields::{
    walk_problems, write_events_json, write_events_text, write_problems_json, write_problems_text,
    write_registers_json, write_registers_text, write_unit_line, Register,
};
use crate::image::Image;
use crate::json::Json;
use crate::model::{walk_format, walk_limits, Filter, TableWalk};
use crate::tree::{tables_of, TreeTable};
use crate::verify::Checker;
use iommu_core::pgtable::{walk_with, Mapping};
use iommu_core::{Iova, PhysAddr, RequesterId};
use smmuv3::format::Vmsa;
use smmuv3::hw::cd::Cd;
use smmuv3::hw::regs::{self, CR0, GBPA, IDR0, IDR1, IDR5, STRTAB_BASE, STRTAB_BASE_CFG};
use smmuv3::hw::ste::{Config, Ste};
use std::any::Any;
use std::io::{self, Write};

/// `STRTAB_STE_0_CFG` in Linux's words.
pub fn cfg_name(c: Config) -> &'static str {
    match c {
        Config::Abort => "abort",
        Config::Bypass => "bypass",
        Config::S1Trans => "s1_trans",
        Config::S2Trans => "s2_trans",
        Config::Nested => "nested",
    }
}

/// The STE's fields, named as `arm-smmu-v3.h` names them.
pub fn ste_fields(s: &Ste) -> Vec<(&'static str, u64)> {
    let mut v = vec![
        ("STRTAB_STE_0_V", s.v() as u64),
        ("STRTAB_STE_0_CFG", s.config_bits()),
    ];
    let c = s.config();
    if c.s1() {
        v.extend([
            ("STRTAB_STE_0_S1FMT", s.s1fmt_bits()),
            ("STRTAB_STE_0_S1CTXPTR", s.s1_context_ptr()),
            ("STRTAB_STE_0_S1CDMAX", s.s1cdmax()),
            ("STRTAB_STE_1_S1DSS", s.s1dss_bits()),
            ("STRTAB_STE_1_S1CIR", s.s1cir()),
            ("STRTAB_STE_1_S1COR", s.s1cor()),
            ("STRTAB_STE_1_S1CSH", s.s1csh()),
            ("STRTAB_STE_1_S1STALLD", s.s1stalld() as u64),
        ]);
    }
    v.extend([
        ("STRTAB_STE_1_EATS", s.eats()),
        ("STRTAB_STE_1_STRW", s.strw()),
        ("STRTAB_STE_1_SHCFG", s.shcfg()),
    ]);
    if c.s2() || c == Config::S1Trans {
        v.push(("STRTAB_STE_2_S2VMID", s.s2vmid()));
    }
    if c.s2() {
        v.extend([
            ("STRTAB_STE_2_VTCR_S2T0SZ", s.s2t0sz()),
            ("STRTAB_STE_2_VTCR_S2SL0", s.s2sl0()),
            ("STRTAB_STE_2_VTCR_S2IR0", s.s2ir0()),
            ("STRTAB_STE_2_VTCR_S2OR0", s.s2or0()),
            ("STRTAB_STE_2_VTCR_S2SH0", s.s2sh0()),
            ("STRTAB_STE_2_VTCR_S2TG", s.s2tg_bits()),
            ("STRTAB_STE_2_VTCR_S2PS", s.s2ps()),
            ("STRTAB_STE_2_S2AA64", s.s2aa64() as u64),
            ("STRTAB_STE_2_S2ENDI", s.s2endi() as u64),
            ("STRTAB_STE_2_S2AFFD", s.s2affd() as u64),
            ("STRTAB_STE_2_S2PTW", s.s2ptw() as u64),
            ("STRTAB_STE_2_S2S", s.s2s() as u64),
            ("STRTAB_STE_2_S2R", s.s2r() as u64),
            ("STRTAB_STE_3_S2TTB", s.s2ttb()),
        ]);
    }
    v
}

/// The CD's fields, named as `arm-smmu-v3.h` names them.
pub fn cd_fields(c: &Cd) -> Vec<(&'static str, u64)> {
    vec![
        ("CTXDESC_CD_0_TCR_T0SZ", c.t0sz()),
        ("CTXDESC_CD_0_TCR_TG0", c.tg0_bits()),
        ("CTXDESC_CD_0_TCR_IRGN0", c.ir0()),
        ("CTXDESC_CD_0_TCR_ORGN0", c.or0()),
        ("CTXDESC_CD_0_TCR_SH0", c.sh0()),
        ("CTXDESC_CD_0_TCR_EPD0", c.epd0() as u64),
        ("CTXDESC_CD_0_TCR_EPD1", c.epd1() as u64),
        ("CTXDESC_CD_0_ENDI", c.endi() as u64),
        ("CTXDESC_CD_0_V", c.v() as u64),
        ("CTXDESC_CD_0_TCR_IPS", c.ips()),
        ("CTXDESC_CD_0_AFFD", c.affd() as u64),
        ("CTXDESC_CD_0_TCR_TBI0", c.tbi0() as u64),
        ("CTXDESC_CD_0_AA64", c.aa64() as u64),
        ("CTXDESC_CD_0_TCR_HA", c.ha() as u64),
        ("CTXDESC_CD_0_TCR_HD", c.hd() as u64),
        ("CTXDESC_CD_0_S", c.s() as u64),
        ("CTXDESC_CD_0_R", c.r() as u64),
        ("CTXDESC_CD_0_A", c.a() as u64),
        ("CTXDESC_CD_0_ASET", c.aset() as u64),
        ("CTXDESC_CD_0_ASID", c.asid()),
        ("CTXDESC_CD_1_TTB0", c.ttb0()),
        ("CTXDESC_CD_3_MAIR", c.mair()),
    ]
}

/// The registers shown, by field.
fn decoded(u: &SmmuState) -> Vec<Register> {
    let r = |o| u.reg(o);
    let i0 = r(regs::IDR0) as u32;
    let i1 = r(regs::IDR1) as u32;
    let i5 = r(regs::IDR5) as u32;
    let c0 = r(regs::CR0) as u32;
    let gb = r(regs::GBPA) as u32;
    let sb = r(regs::STRTAB_BASE);
    let sc = r(regs::STRTAB_BASE_CFG) as u32;
    let f = |x: u32| x as u64;
    let mut out = vec![
        (
            "IDR0",
            regs::IDR0,
            vec![
                ("S2P", f(IDR0::S2P.read(i0))),
                ("S1P", f(IDR0::S1P.read(i0))),
                ("TTF", f(IDR0::TTF.read(i0))),
                ("HYP", f(IDR0::HYP.read(i0))),
                ("ASID16", f(IDR0::ASID16.read(i0))),
                ("VMID16", f(IDR0::VMID16.read(i0))),
                ("CD2L", f(IDR0::CD2L.read(i0))),
                ("STALL_MODEL", f(IDR0::STALL_MODEL.read(i0))),
                ("ST_LEVEL", f(IDR0::ST_LEVEL.read(i0))),
            ],
        ),
        (
            "IDR1",
            regs::IDR1,
            vec![
                ("SIDSIZE", f(IDR1::SIDSIZE.read(i1))),
                ("SSIDSIZE", f(IDR1::SSIDSIZE.read(i1))),
                ("EVENTQS", f(IDR1::EVENTQS.read(i1))),
                ("CMDQS", f(IDR1::CMDQS.read(i1))),
            ],
        ),
        (
            "IDR5",
            regs::IDR5,
            vec![
                ("OAS", f(IDR5::OAS.read(i5))),
                ("GRAN4K", f(IDR5::GRAN4K.read(i5))),
                ("GRAN16K", f(IDR5::GRAN16K.read(i5))),
                ("GRAN64K", f(IDR5::GRAN64K.read(i5))),
                ("VAX", f(IDR5::VAX.read(i5))),
            ],
        ),
        (
            "CR0",
            regs::CR0,
            vec![
                ("SMMUEN", f(CR0::SMMUEN.read(c0))),
                ("EVENTQEN", f(CR0::EVENTQEN.read(c0))),
                ("CMDQEN", f(CR0::CMDQEN.read(c0))),
            ],
        ),
        ("CR0ACK", regs::CR0ACK, vec![]),
        (
            "GBPA",
            regs::GBPA,
            vec![
                ("ABORT", f(GBPA::ABORT.read(gb))),
                ("UPDATE", f(GBPA::UPDATE.read(gb))),
            ],
        ),
        ("GERROR", regs::GERROR, vec![]),
        ("GERRORN", regs::GERRORN, vec![]),
        (
            "STRTAB_BASE",
            regs::STRTAB_BASE,
            vec![
                ("ADDR", STRTAB_BASE::ADDR.read(sb) << 6),
                ("RA", STRTAB_BASE::RA.read(sb)),
            ],
        ),
        (
            "STRTAB_BASE_CFG",
            regs::STRTAB_BASE_CFG,
            vec![
                ("FMT", f(STRTAB_BASE_CFG::FMT.read(sc))),
                ("SPLIT", f(STRTAB_BASE_CFG::SPLIT.read(sc))),
                ("LOG2SIZE", f(STRTAB_BASE_CFG::LOG2SIZE.read(sc))),
            ],
        ),
        ("CMDQ_BASE", regs::CMDQ_BASE, vec![]),
        ("CMDQ_PROD", regs::CMDQ_PROD, vec![]),
        ("CMDQ_CONS", regs::CMDQ_CONS, vec![]),
        ("EVENTQ_BASE", regs::EVENTQ_BASE, vec![]),
        ("EVENTQ_PROD", regs::EVENTQ_PROD, vec![]),
        ("EVENTQ_CONS", regs::EVENTQ_CONS, vec![]),
    ];
    out.retain(|(_, o, _)| u.regs.iter().any(|r| r.offset == *o));
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

/// One line: the STE (and CD) fields that decide the translation.
pub fn summary_of(u: &SmmuState, e: &StreamEntry) -> String {
    let s = &e.ste;
    let mut t = format!(
        "STE {}: STRTAB_STE_0_CFG={}",
        e.ste_addr,
        cfg_name(s.config())
    );
    let c = s.config();
    if c.s1() {
        t += &format!(
            " S1FMT={} S1CDMAX={} S1CTXPTR={:#x} S1DSS={}",
            s.s1fmt_bits(),
            s.s1cdmax(),
            s.s1_context_ptr(),
            s.s1dss_bits()
        );
    }
    if c.s2() {
        t += &format!(
            " S2VMID={:#x} S2T0SZ={} S2SL0={} S2TG={} S2PS={} S2TTB={:#x} S2R={}",
            s.s2vmid(),
            s.s2t0sz(),
            s.s2sl0(),
            s.s2tg_bits(),
            s.s2ps(),
            s.s2ttb(),
            s.s2r() as u8
        );
    }
    if let Some((a, cd)) = &e.cd {
        t += &format!(
            "; CD {a}{}: CTXDESC_CD_0_ASID={:#x} TTB0={:#x} T0SZ={} TG0={} IPS={} EPD0={} AA64={} R={}",
            if c.s2() { " (IPA)" } else { "" },
            cd.asid(),
            cd.ttb0(),
            cd.t0sz(),
            cd.tg0_bits(),
            cd.ips(),
            cd.epd0() as u8,
            cd.aa64() as u8,
            cd.r() as u8
        );
    }
    let what = match &e.handling {
        Handling::Abort => "abort (no event)".to_string(),
        Handling::Bypass => "bypass".into(),
        Handling::Stage1 | Handling::Stage2 | Handling::Nested => match e.tree {
            Some(i) => {
                let tr = &u.trees[i];
                let g = |x: &Option<(Vmsa, PhysAddr)>| {
                    x.map(|(f, r)| format!("{} {} at {r}", f.granule(), level_text(&f)))
                };
                match (g(&tr.s1), g(&tr.s2)) {
                    (Some(a), Some(b)) => format!("nested: stage 1 {a} (IPA), stage 2 {b}"),
                    (Some(a), None) => format!("stage 1 {a}"),
                    (None, Some(b)) => format!("stage 2 {b}"),
                    _ => String::new(),
                }
            }
            None => "stage 1 EPD0: every address F_TRANSLATION".into(),
        },
        Handling::Refused(code, why) => format!("refused: {why} (event {code:#04x})"),
    };
    format!("{t}  => {what}")
}

fn level_text(f: &Vmsa) -> String {
    let c = f.concatenated();
    if c > 1 {
        format!(
            "start level {} ({c} concatenated tables)",
            f.arm_start_level()
        )
    } else {
        format!("start level {}", f.arm_start_level())
    }
}

impl SmmuState {
    fn view(&self, e: &StreamEntry) -> EntryView {
        let (translation, blocked) = match &e.handling {
            Handling::Abort => ("abort", Some(0)),
            Handling::Bypass => ("bypass", None),
            Handling::Stage1 => ("stage-1", None),
            Handling::Stage2 => ("stage-2", None),
            Handling::Nested => ("nested", None),
            Handling::Refused(c, _) => ("refused", Some(*c)),
        };
        let did = match (&e.handling, &e.cd) {
            (Handling::Stage1, Some((_, cd))) => Some(cd.asid() as u16),
            (Handling::Stage2 | Handling::Nested, _) => Some(e.ste.s2vmid() as u16),
            _ => None,
        };
        let fpd = match (&e.cd, e.ste.config().s2()) {
            (Some((_, cd)), _) => !cd.r(),
            (None, true) => !e.ste.s2r(),
            _ => false,
        };
        EntryView {
            rid: stream_rid(e.sid),
            pasid: e.ssid,
            rid_pasid: e.ssid.is_some() && e.no_ssid,
            did,
            translation,
            blocked,
            fpd,
            table: e.tree.map(|t| self.tree(t)),
            tree: e.tree,
        }
    }

    /// The page-table problems of every tree as typed problems naming the first
    /// StreamID (and SubstreamID) that uses the tree and the descriptor's address.
    pub fn table_problems(&self, image: &Image) -> Vec<StructureProblem> {
        let mut out = Vec::new();
        for t in 0..self.trees.len() {
            let Some(e) = self.entries.iter().find(|e| e.tree == Some(t)) else {
                continue;
            };
            let w = self.walk_tree(image, t, &mut |_| {});
            let who = super::requester(Some(e.sid), e.ssid);
            let x = self.trees[t];
            let root = x.s1.or(x.s2).map_or(PhysAddr(0), |s| s.1);
            out.extend(walk_problems(&self.name, &who, root, w));
        }
        out
    }
}

/// The stage-2 mappings of a nested tree, sorted, and the stage-1 mappings composed
/// with them: each stage-1 run's IPA range split where stage 2 maps it, permissions
/// intersected, page size the smaller of the two.
fn walk_nested(
    image: &Image,
    s1: (Vmsa, PhysAddr),
    s2: (Vmsa, PhysAddr),
    visit: &mut dyn FnMut(&Mapping),
) -> TableWalk {
    let mut s2maps = Vec::new();
    let w2 = walk_format(&s2.0, image, s2.1, |m| s2maps.push(*m));
    let mem = S2Mem {
        image,
        fmt: s2.0,
        root: s2.1,
    };
    let mut w1 = match walk_with(&s1.0, &mem, s1.1, &walk_limits(), |m: &Mapping| {
        let (first, last) = (m.pa.0, m.pa.0 + (m.size - 1));
        let mut i = s2maps.partition_point(|x: &Mapping| x.iova_last().0 < first);
        while let Some(x) = s2maps.get(i) {
            if x.iova.0 > last {
                break;
            }
            let lo = x.iova.0.max(first);
            let hi = x.iova_last().0.min(last);
            let ps = if m.page_size.bytes() <= x.page_size.bytes() {
                m.page_size
            } else {
                x.page_size
            };
            visit(&Mapping {
                iova: Iova(m.iova.0 + (lo - first)),
                pa: PhysAddr(x.pa.0 + (lo - x.iova.0)),
                size: hi - lo + 1,
                perms: m.perms.intersect(x.perms),
                page_size: ps,
            });
            i += 1;
        }
    }) {
        Ok(s) => TableWalk {
            mappings: Vec::new(),
            tables: s.tables,
            problems: s.problems,
            fatal: None,
        },
        Err(e) => TableWalk {
            fatal: Some(format!("stage 1: {e}")),
            ..TableWalk::default()
        },
    };
    w1.tables.extend(w2.tables);
    w1.problems.extend(w2.problems);
    if w1.fatal.is_none() {
        w1.fatal = w2.fatal.map(|f| format!("stage 2: {f}"));
    }
    w1
}

impl ArchUnit for SmmuState {
    fn kind(&self) -> &'static str {
        "smmuv3"
    }
    fn kind_title(&self) -> &'static str {
        "SMMUv3"
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> UnitId {
        UnitId {
            kind: "smmuv3",
            index: self.index,
            base: self.base,
            assumed: self.assumed,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn text_head(&self, filter: &Filter, out: &mut dyn Write) -> io::Result<()> {
        write_unit_line(out, &self.name, "SMMUv3", self.base, self.assumed)?;
        write_registers_text(&decoded(self), out)?;
        writeln!(
            out,
            "  translation: {}, stream table {} ({}, {} StreamID bits{}), {} entries listed",
            if self.enabled() {
                "enabled (SMMUEN=1)"
            } else {
                "disabled (SMMUEN=0, GBPA applies)"
            },
            self.strtab(),
            match self.cfg.fmt {
                smmuv3::hw::ste::StrtabFmt::Linear => "linear",
                smmuv3::hw::ste::StrtabFmt::TwoLevel => "2-level",
            },
            self.cfg.log2size,
            match self.cfg.fmt {
                smmuv3::hw::ste::StrtabFmt::Linear => String::new(),
                smmuv3::hw::ste::StrtabFmt::TwoLevel => format!(", SPLIT {}", self.cfg.split),
            },
            self.entries.len()
        )?;
        write_events_text(&self.events, out)?;
        let sid = filter
            .device
            .map(|d| super::requester(Some(super::rid_stream(d)), None));
        write_problems_text(
            self.problems.iter().filter(|p| {
                sid.as_ref()
                    .map_or(true, |s| p.requester.starts_with(s.as_str()))
            }),
            out,
        )?;
        Ok(())
    }

    fn json_head(&self, j: &mut Json<&mut dyn Write>, _filter: &Filter) -> io::Result<()> {
        j.kv_hex("base", self.base.0)?;
        j.kv_bool("registers_assumed", self.assumed)?;
        write_registers_json(&decoded(self), j)?;
        j.kv_bool("translation_enabled", self.enabled())?;
        j.kv_hex("stream_table", self.strtab().0)?;
        j.kv_str(
            "stream_table_format",
            match self.cfg.fmt {
                smmuv3::hw::ste::StrtabFmt::Linear => "linear",
                smmuv3::hw::ste::StrtabFmt::TwoLevel => "2-level",
            },
        )?;
        j.kv_uint("stream_table_log2size", self.cfg.log2size as u64)?;
        j.kv_uint("stream_table_split", self.cfg.split as u64)?;
        write_events_json(&self.events, j)?;
        write_problems_json(self.problems.iter(), j)
    }

    fn entries(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> EntryView {
        self.view(&self.entries[i])
    }
    fn summary(&self, i: usize) -> String {
        let e = &self.entries[i];
        format!("StreamID {:#x}  {}", e.sid, summary_of(self, e))
    }
    fn json_entry(
        &self,
        j: &mut Json<&mut dyn Write>,
        i: usize,
        _tree: Option<usize>,
    ) -> io::Result<()> {
        let e = &self.entries[i];
        j.kv_hex("stream_id", e.sid as u64)?;
        j.key("substream_id")?;
        match e.ssid {
            Some(s) => j.uint(s as u64)?,
            None => j.null()?,
        }
        if let Some((a, v)) = e.l1std {
            j.kv_hex("l1std_addr", a.0)?;
            j.kv_hex("l1std", v)?;
        }
        j.kv_hex("ste_addr", e.ste_addr.0)?;
        j.kv_hex_list("ste", &e.ste.qwords())?;
        j.key("ste_fields")?;
        j.begin_object(true)?;
        for (n, v) in ste_fields(&e.ste) {
            j.kv_hex(n, v)?;
        }
        j.end_object()?;
        if let Some((a, cd)) = &e.cd {
            j.kv_hex("cd_addr", a.0)?;
            j.kv_hex_list("cd", &cd.qwords())?;
            j.key("cd_fields")?;
            j.begin_object(true)?;
            for (n, v) in cd_fields(cd) {
                j.kv_hex(n, v)?;
            }
            j.end_object()?;
        }
        if let Handling::Refused(c, why) = &e.handling {
            j.kv_uint("event", *c as u64)?;
            j.kv_str("refused", why)?;
        }
        Ok(())
    }

    fn trees(&self) -> usize {
        self.trees.len()
    }
    fn tree(&self, t: usize) -> TableDesc {
        let x: &Tree = &self.trees[t];
        let (root, levels) = match x.s1.or(x.s2) {
            Some((f, r)) => (r, 4 - f.arm_start_level()),
            None => (PhysAddr(0), 0),
        };
        TableDesc {
            format: x.kind(),
            root,
            levels,
        }
    }
    fn json_tree(&self, j: &mut Json<&mut dyn Write>, t: usize) -> io::Result<()> {
        let x = &self.trees[t];
        j.kv_str("format", x.kind())?;
        for (name, s) in [("stage1", x.s1), ("stage2", x.s2)] {
            if let Some((f, r)) = s {
                j.key(name)?;
                j.begin_object(true)?;
                j.kv_hex("root", r.0)?;
                j.kv_str("granule", &f.granule().to_string())?;
                j.kv_uint("start_level", f.arm_start_level() as u64)?;
                j.kv_uint("concatenated", f.concatenated())?;
                j.end_object()?;
            }
        }
        Ok(())
    }
    fn walk_tree(&self, image: &Image, t: usize, visit: &mut dyn FnMut(&Mapping)) -> TableWalk {
        let x = self.trees[t];
        match (x.s1, x.s2) {
            (Some(a), Some(b)) => walk_nested(image, a, b, visit),
            (Some((f, r)), None) | (None, Some((f, r))) => walk_format(&f, image, r, visit),
            (None, None) => TableWalk::default(),
        }
    }
    fn tree_tables(&self, image: &Image, t: usize) -> Vec<TreeTable> {
        let x = self.trees[t];
        match (x.s1, x.s2) {
            (Some((f, r)), Some((f2, r2))) => {
                let mem = S2Mem {
                    image,
                    fmt: f2,
                    root: r2,
                };
                let mut v = tables_of(&f, &mem, r);
                v.extend(tables_of(&f2, image, r2));
                v
            }
            (Some((f, r)), None) | (None, Some((f, r))) => tables_of(&f, image, r),
            (None, None) => Vec::new(),
        }
    }

    fn attrs(&self) -> Vec<(&'static str, String, bool)> {
        vec![
            ("translation_enabled", self.enabled().to_string(), true),
            ("stream_table", self.strtab().to_string(), false),
            (
                "stream_table_cfg",
                format!("{:#x}", self.reg(regs::STRTAB_BASE_CFG)),
                true,
            ),
            (
                "gbpa_abort",
                GBPA::ABORT.read(self.reg(regs::GBPA) as u32).to_string(),
                true,
            ),
        ]
    }

    fn serves(&self, rid: RequesterId) -> bool {
        self.noted.binary_search(&super::rid_stream(rid)).is_ok()
    }

    fn translate(
        &self,
        image: &Image,
        rid: RequesterId,
        pasid: Option<u32>,
        iova: Iova,
        write: bool,
    ) -> Result<Walk, InspectError> {
        Ok(super::walk::translate(self, image, rid, pasid, iova, write))
    }

    fn verify(&self, _image: &Image, _ck: &mut Checker<'_>) -> Result<(), InspectError> {
        Err(InspectError::NoRecordSupport {
            unit: self.name.clone(),
            arch: "SMMUv3",
            record: format!("iommu-smmuv3-{:#x}", self.base.0),
        })
    }
}
