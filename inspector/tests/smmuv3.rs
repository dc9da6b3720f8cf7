//! The SMMUv3 plug-in on images built with the emulator's SMMUv3 model (registers set
//! through MMIO in Linux's order, tables written by hand through `smmuv3::hw`): STEs
//! per StreamID and CDs per SubstreamID decoded with `arm-smmu-v3.h` names, stage-1,
//! stage-2 (concatenated) and nested mappings, `walk` ending with the event the model
//! itself raises for the same transaction, `diff`, malformed input as typed errors, the
//! `verify` seam and the CLI.

use emulator::dma::{DmaAgent, TransferError};
use emulator::machine::{Device, Machine};
use emulator::model::DmaError;
use emulator::smmuv3::{SmmuV3Config, SmmuV3Unit};
use inspector::arch::{ArchUnit, WalkEnd};
use inspector::diff::diff;
use inspector::dump::{dump, OutputFormat};
use inspector::image::{Image, OpenAs};
use inspector::model::{Filter, LoadOptions, Loaded};
use inspector::smmuv3::{stream_rid, Handling, SmmuOverride, SmmuState};
use inspector::InspectError;
use iommu_core::mem::PhysMem;
use iommu_core::{Iova, Pasid, PhysAddr, RequesterId};
use proptest::prelude::*;

mod plugin;
use smmuv3::hw::cd::{Cd, L1Cd};
use smmuv3::hw::regs::{self, CR0, CR2};
use smmuv3::hw::ste::{Config, L1Std, S1Dss, S1Fmt, Ste, StrtabCfg, StrtabFmt};
use smmuv3::hw::Granule;

const BASE: PhysAddr = PhysAddr(0x9000_0000);
const STRTAB: u64 = 0x10_0000;
const CMDQ: u64 = 0x20_0000;
const EVTQ: u64 = 0x21_0000;
const CDTAB: u64 = 0x30_0000;
const DATA: u64 = 0x100_0000;
/// Stage-1 leaf: AF | AP\[1\]; read-only adds AP\[2\]. Stage-2 leaf: AF | S2AP r/w.
const S1_RW: u64 = 1 << 10 | 1 << 6;
const S1_RO: u64 = S1_RW | 1 << 7;
const S2_RW: u64 = 1 << 10 | 1 << 6 | 1 << 7;
/// 4 KiB granule, 39-bit input: Arm levels 1-3.
const L3: &[u32] = &[30, 21, 12];

struct Rig {
    m: Machine,
    next: u64,
    agents: Vec<(u16, DmaAgent)>,
}

impl Rig {
    /// One SMMU at BASE (re-fetching STEs and CDs on every transaction, so a test may
    /// rewrite them), requesters 0x1-0x3 and 0x41 behind it, enabled with `cfg`.
    fn new(cfg: StrtabCfg) -> Self {
        let mut m = Machine::with_ram(&[(PhysAddr(0), 0x400_0000)]).unwrap();
        let mut c = SmmuV3Config::new(BASE);
        c.refetch_config = true;
        m.add_unit(Box::new(SmmuV3Unit::new(c).unwrap())).unwrap();
        let mut agents = Vec::new();
        for sid in [1u16, 2, 3, 0x41] {
            let a = m
                .add_device(Device {
                    rid: RequesterId::from_sid(0, sid),
                    pasid: None,
                    unit: BASE,
                })
                .unwrap();
            agents.push((sid, a));
        }
        let mut r = Rig {
            m,
            next: 0x40_0000,
            agents,
        };
        for (a, n) in [
            (STRTAB, 0x1_0000),
            (CDTAB, 0x1_0000),
            (EVTQ, 0x2000),
            (CMDQ, 0x1000),
        ] {
            r.zero(a, n);
        }
        r.zero(DATA, 0x40_0000);
        r.w32(regs::CR0, 0);
        r.w32(regs::CR2, CR2::RECINVSID::SET.value);
        r.w64(regs::STRTAB_BASE, STRTAB);
        r.w32(regs::STRTAB_BASE_CFG, cfg.to_reg());
        r.w64(regs::CMDQ_BASE, CMDQ | 6);
        r.w64(regs::EVENTQ_BASE, EVTQ | 4);
        r.w32(regs::CR0, CR0::CMDQEN::SET.value);
        r.w32(regs::CR0, (CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value);
        r.w32(
            regs::CR0,
            (CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value,
        );
        r
    }
    fn linear() -> Self {
        Self::new(StrtabCfg {
            fmt: StrtabFmt::Linear,
            log2size: 8,
            split: 6,
        })
    }
    fn zero(&mut self, a: u64, len: usize) {
        self.m.mem_mut().write(PhysAddr(a), &vec![0; len]).unwrap();
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.m
            .mmio_write(PhysAddr(BASE.0 + off), 4, v as u64)
            .unwrap();
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.m.mmio_write(PhysAddr(BASE.0 + off), 8, v).unwrap();
    }
    fn wq(&mut self, a: u64, v: u64) {
        self.m.mem_mut().write_u64(PhysAddr(a), v).unwrap();
    }
    fn rq(&self, a: u64) -> u64 {
        self.m.mem().read_u64(PhysAddr(a)).unwrap()
    }
    fn put(&mut self, a: u64, q: &[u64]) {
        for (i, v) in q.iter().enumerate() {
            self.wq(a + 8 * i as u64, *v);
        }
    }
    fn table(&mut self, bytes: u64) -> u64 {
        let a = self.next.next_multiple_of(bytes);
        self.next = a + bytes;
        self.zero(a, bytes as usize);
        a
    }
    /// Maps `iova` to `leaf` at the level of `leaf_shift` in the tables under `root`;
    /// `base` is added to every table address written (the IPA of the table: nested
    /// stage-1 tables are written at PA `ipa - base`... here stage 2 maps IPA = PA +
    /// `base`).
    fn map(&mut self, root: u64, root_entries: u64, iova: u64, leaf_shift: u32, leaf: u64) {
        let mut table = root;
        for (i, &sh) in L3.iter().enumerate() {
            let n = if i == 0 { root_entries } else { 512 };
            let slot = table + ((iova >> sh) & (n - 1)) * 8;
            if sh == leaf_shift {
                let ty = if sh == 12 { 0b11 } else { 0b01 };
                self.wq(slot, leaf | ty);
                return;
            }
            let cur = self.rq(slot);
            table = if cur & 1 != 0 {
                cur & 0x000f_ffff_ffff_f000
            } else {
                let t = self.table(0x1000);
                self.wq(slot, t | 0b11);
                t
            };
        }
        panic!("bad leaf shift {leaf_shift}");
    }
    fn ste(&mut self, sid: u32, s: &Ste) {
        self.put(STRTAB + sid as u64 * 64, &s.qwords());
    }
    /// The event code of the model for a DMA (None: translated), and the PA on success.
    fn dma(&mut self, sid: u16, ssid: Option<u32>, iova: u64, write: bool) -> Result<(), u32> {
        let mut a = self.agents.iter().find(|x| x.0 == sid).unwrap().1;
        if let Some(p) = ssid {
            a = self
                .m
                .add_device(Device {
                    rid: RequesterId::from_sid(0, sid),
                    pasid: Some(Pasid(p)),
                    unit: BASE,
                })
                .unwrap_or(a);
        }
        let r = if write {
            self.m.dma_write(&a, Iova(iova), &[0; 8])
        } else {
            let mut b = [0u8; 8];
            self.m.dma_read(&a, Iova(iova), &mut b)
        };
        match r {
            Ok(()) => Ok(()),
            Err(TransferError::Dma {
                error: DmaError::Fault(f),
                ..
            }) => Err(f.code),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    fn image(&self, name: &str) -> Image {
        Image::from_bytes(name, emulator::snapshot::to_bytes(&self.m), OpenAs::Elf).unwrap()
    }
    fn load(&self, name: &str) -> Loaded {
        Loaded::from_image(self.image(name), &LoadOptions::default()).unwrap()
    }
}

fn cd(ttb0: u64, asid: u16) -> Cd {
    let mut c = Cd::default();
    c.set_v(true);
    c.set_t0sz(25);
    c.set_tg0(Granule::K4);
    c.set_ips(5);
    c.set_epd1(true);
    c.set_aa64(true);
    c.set_r(true);
    c.set_a(true);
    c.set_asid(asid as u64);
    c.set_ttb0(ttb0);
    c
}

fn s1_ste(cdtab: u64, cdmax: u64, fmt: S1Fmt) -> Ste {
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(Config::S1Trans);
    s.set_s1_context_ptr(cdtab);
    s.set_s1cdmax(cdmax);
    s.set_s1fmt(fmt);
    s.set_s1dss(S1Dss::Ssid0);
    s
}

/// Stage-2 fields: 4 KiB, S2SL0 1 (Arm level 1), `s2t0sz` (25: one table; 24: two
/// concatenated), 48-bit S2PS, S2R.
fn with_s2(mut s: Ste, config: Config, ttb: u64, s2t0sz: u64, vmid: u16) -> Ste {
    s.set_v(true);
    s.set_config(config);
    s.set_s2vmid(vmid as u64);
    s.set_s2t0sz(s2t0sz);
    s.set_s2sl0(1);
    s.set_s2tg(Granule::K4);
    s.set_s2ps(5);
    s.set_s2aa64(true);
    s.set_s2r(true);
    s.set_s2ttb(ttb);
    s
}

fn unit(l: &Loaded) -> &SmmuState {
    l.units
        .iter()
        .find_map(|u| u.as_any().downcast_ref::<SmmuState>())
        .expect("an SMMUv3")
}

fn text(l: &Loaded, fmt: OutputFormat) -> String {
    let mut out = Vec::new();
    dump(l, &Filter::default(), fmt, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn walk(l: &Loaded, sid: u32, ssid: Option<u32>, iova: u64, write: bool) -> WalkEnd {
    unit(l)
        .translate(&l.image, stream_rid(sid), ssid, Iova(iova), write)
        .unwrap()
        .end
}

fn code(w: &WalkEnd) -> Result<u64, u32> {
    match w {
        WalkEnd::Mapped { pa, .. } => Ok(pa.0),
        WalkEnd::Untranslated { pa } => Ok(pa.0),
        WalkEnd::Fault { code, .. } => Err(*code as u32),
    }
}

/// SID 1: stage 1 through CD 0 (ASID 5); SID 2: stage 2 with two concatenated start
/// tables (S2T0SZ 24, VMID 9); SID 3: nested, its CD and stage-1 tables at IPAs stage 2
/// maps 1 GiB above their PAs.
fn three_streams() -> (Rig, u64) {
    let mut r = Rig::linear();
    // SID 1: stage 1.
    let ttb = r.table(0x1000);
    r.map(ttb, 512, 0x1000, 12, DATA | S1_RW);
    r.map(ttb, 512, 0x4000_0000, 21, (DATA + 0x20_0000) | S1_RW);
    r.map(ttb, 512, 0x2000, 12, (DATA + 0x5000) | S1_RO);
    r.put(CDTAB, &cd(ttb, 5).qwords());
    r.ste(1, &s1_ste(CDTAB, 0, S1Fmt::Linear));
    // SID 2: stage 2, two concatenated level-1 tables (1024 entries).
    let s2 = r.table(0x2000);
    r.map(s2, 1024, 0x80_0000_1000, 12, (DATA + 0x3000) | S2_RW);
    r.map(s2, 1024, 0x1000, 12, (DATA + 0x4000) | S2_RW);
    r.ste(2, &with_s2(Ste::default(), Config::S2Trans, s2, 24, 9));
    // SID 3: nested. Stage 2 maps IPA 0x4000_0000.. to PA 0.. (a 1 GiB block) and
    // IPA 0x8000_0000 to DATA + 0x6000.
    let s2n = r.table(0x1000);
    r.wq(s2n + 8, S2_RW | 0b01); // level 1 [1]: IPA 1 GiB -> PA 0, 1 GiB block
    r.map(s2n, 512, 0x8000_0000, 12, (DATA + 0x6000) | S2_RW);
    // Stage-1 tables of SID 3, every pointer an IPA (PA + 1 GiB).
    let ttb3 = r.table(0x1000);
    let (l2, l3) = (r.table(0x1000), r.table(0x1000));
    r.wq(ttb3, (l2 + 0x4000_0000) | 0b11);
    r.wq(l2, (l3 + 0x4000_0000) | 0b11);
    r.wq(l3 + 7 * 8, 0x8000_0000 | S1_RW | 0b11);
    let cd3 = CDTAB + 0x1000;
    r.put(cd3, &cd(ttb3 + 0x4000_0000, 6).qwords());
    let mut s = s1_ste(cd3 + 0x4000_0000, 0, S1Fmt::Linear);
    s = with_s2(s, Config::Nested, s2n, 25, 11);
    r.ste(3, &s);
    (r, ttb)
}

/// The STE and CD fields set by hand read back with Linux's names (text and JSON), and
/// each stream's mappings are listed: stage 1, stage 2 through concatenated tables,
/// nested composed to PAs.
#[test]
fn streams_decoded_with_linux_names_and_mappings_listed() {
    let (r, ttb) = three_streams();
    let l = r.load("smmu.elf");
    let u = unit(&l);
    assert_eq!(
        (u.name.as_str(), u.base, u.strtab()),
        ("smmu0", BASE, PhysAddr(STRTAB))
    );
    let h: Vec<(u32, &Handling)> = u.entries.iter().map(|e| (e.sid, &e.handling)).collect();
    // SID 0x41 has V=0; the snapshot's device note lists it, so it shows, refused.
    assert_eq!(
        h,
        [
            (1, &Handling::Stage1),
            (2, &Handling::Stage2),
            (3, &Handling::Nested),
            (
                0x41,
                &Handling::Refused(0x04, "STRTAB_STE_0_V clear: C_BAD_STE".into())
            )
        ]
    );
    let t = text(&l, OutputFormat::Text);
    for want in [
        "unit smmu0: SMMUv3, registers at 0x90000000",
        "FMT=0 SPLIT=6 LOG2SIZE=8",
        "SMMUEN=1",
        &format!("StreamID 0x1  STE 0x100040: STRTAB_STE_0_CFG=s1_trans S1FMT=0 S1CDMAX=0 S1CTXPTR=0x300000 S1DSS=2; CD 0x300000: CTXDESC_CD_0_ASID=0x5 TTB0={ttb:#x} T0SZ=25 TG0=0 IPS=5 EPD0=0 AA64=1 R=1  => stage 1 4K start level 1 at {ttb:#x}"),
        "STRTAB_STE_0_CFG=s2_trans S2VMID=0x9 S2T0SZ=24 S2SL0=1 S2TG=0 S2PS=5",
        "start level 1 (2 concatenated tables)",
        "0x0000000000001000-0x0000000000001fff  0x0000000001000000-0x0000000001000fff          0x1000  rwx  4K",
        "0x0000000040000000-0x00000000401fffff  0x0000000001200000-0x00000000013fffff        0x200000  rwx  2M",
        "0x0000008000001000-0x0000008000001fff  0x0000000001003000-0x0000000001003fff          0x1000  rwx  4K",
        "0x0000000000007000-0x0000000000007fff  0x0000000001006000-0x0000000001006fff          0x1000  rwx  4K",
        "0000:00:08.1  no pasid  StreamID 0x41  STE 0x101040: STRTAB_STE_0_CFG=abort  => refused: STRTAB_STE_0_V clear: C_BAD_STE (event 0x04)",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    let j = text(&l, OutputFormat::Json);
    for want in [
        "\"kind\": \"smmuv3\"",
        "\"stream_table\": \"0x100000\"",
        "\"STRTAB_STE_0_CFG\": \"0x5\"",
        "\"CTXDESC_CD_0_TCR_T0SZ\": \"0x19\"",
        "\"CTXDESC_CD_0_ASID\": \"0x5\"",
        "\"STRTAB_STE_2_S2VMID\": \"0x9\"",
        "\"format\": \"nested\"",
    ] {
        assert!(j.contains(want), "missing {want:?} in:\n{j}");
    }
}

/// `walk` ends as the model ends the same transaction: the same PA, or the same
/// event (F_TRANSLATION, F_PERMISSION, C_BAD_STE, C_BAD_SUBSTREAMID, C_BAD_STREAMID),
/// through stage 1, stage 2 with concatenated tables and nested translation.
#[test]
fn walk_matches_the_model_transaction_by_transaction() {
    let (mut r, _) = three_streams();
    // SID 3's stage-1 level-1 entry 1 points to a table at IPA 0x9000_0000, which stage
    // 2 does not map: a stage-2 F_TRANSLATION (CLASS = TT) for IOVA 0x4000_7000.
    let ttb3 = (r.rq(CDTAB + 0x1000 + 8) & 0x000f_ffff_ffff_fff0) - 0x4000_0000;
    r.wq(ttb3 + 8, 0x9000_0000 | 0b11);
    let l = r.load("walk.elf");
    let cases: [(u16, u64, bool, Result<u64, u32>); 10] = [
        (1, 0x1008, true, Ok(DATA + 8)),
        (1, 0x4010_0000, false, Ok(DATA + 0x30_0000)),
        (1, 0x2000, false, Ok(DATA + 0x5000)),
        (1, 0x2000, true, Err(0x13)),
        (1, 0x9000, false, Err(0x10)),
        (2, 0x80_0000_1010, true, Ok(DATA + 0x3010)),
        (2, 0x1010, false, Ok(DATA + 0x4010)),
        (3, 0x7018, true, Ok(DATA + 0x6018)),
        (3, 0x4000_7018, true, Err(0x10)),
        (0x41, 0x0, false, Err(0x04)),
    ];
    for (sid, iova, write, want) in cases {
        let w = walk(&l, sid as u32, None, iova, write);
        assert_eq!(code(&w), want, "walk of {sid:#x} {iova:#x}: {w:?}");
        let model = r.dma(sid, None, iova, write);
        assert_eq!(
            model.map(|_| ()),
            want.map(|_| ()),
            "model at {sid:#x} {iova:#x}"
        );
    }
    // The events the model recorded are pending in a new snapshot, in order.
    let after = r.load("after.elf");
    let ev = &unit(&after).events;
    let got: Vec<&str> = ev.pending.iter().map(|e| e.name).collect();
    assert_eq!(
        got,
        [
            "F_PERMISSION",
            "F_TRANSLATION",
            "F_TRANSLATION",
            "C_BAD_STE"
        ],
        "{ev:?}"
    );
    assert!(
        ev.pending[0].detail.starts_with("StreamID 0x1 RnW=0"),
        "{ev:?}"
    );
    assert!(ev.pending[2].detail.contains("S2=1"), "{ev:?}");
    // A SubstreamID on a stream with one CD: C_BAD_SUBSTREAMID; a StreamID beyond
    // LOG2SIZE: C_BAD_STREAMID.
    assert_eq!(code(&walk(&l, 1, Some(1), 0x1000, false)), Err(0x08));
    assert_eq!(r.dma(1, Some(1), 0x1000, false), Err(0x08));
    assert_eq!(code(&walk(&l, 0x1000, None, 0x1000, false)), Err(0x02));
    // The steps: STE, CD, then the stage-1 descriptors by Arm level.
    let w = unit(&l)
        .translate(&l.image, stream_rid(1), None, Iova(0x1008), false)
        .unwrap();
    let what: Vec<&str> = w.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "STE of StreamID 0x1",
            "CD of SubstreamID 0x0",
            "stage 1 level 1 descriptor [0x0]",
            "stage 1 level 2 descriptor [0x0]",
            "stage 1 level 3 descriptor [0x1]"
        ]
    );
    assert!(w.steps[0].meaning.contains("STRTAB_STE_0_CFG=0x5"), "{w:?}");
}

/// A 2-level stream table (SPLIT 6: SID 0x41 in L1STD 1) and a 2-level CD table
/// (S1Fmt 64-CD leaves, S1CDMAX 8): SubstreamIDs 0 and 0x43 are listed, SSID 0 serving
/// transactions without SubstreamID (S1DSS SSID0); walks match the model.
#[test]
fn two_level_stream_and_cd_tables() {
    let mut r = Rig::new(StrtabCfg {
        fmt: StrtabFmt::TwoLevel,
        log2size: 8,
        split: 6,
    });
    let l2 = r.table(0x1000);
    r.wq(STRTAB + 8, L1Std::new(l2, 6).qwords()[0]);
    let ttb0 = r.table(0x1000);
    r.map(ttb0, 512, 0x1000, 12, DATA | S1_RW);
    let ttb1 = r.table(0x1000);
    r.map(ttb1, 512, 0x1000, 12, (DATA + 0x7000) | S1_RW);
    let l1cd = CDTAB;
    let cds0 = r.table(0x1000);
    let cds1 = r.table(0x1000);
    r.wq(l1cd, L1Cd::new(cds0).qwords()[0]);
    r.wq(l1cd + 8, L1Cd::new(cds1).qwords()[0]);
    r.put(cds0, &cd(ttb0, 1).qwords());
    r.put(cds1 + 3 * 64, &cd(ttb1, 2).qwords());
    r.put(l2 + 64, &s1_ste(l1cd, 8, S1Fmt::TwoLevel4K).qwords());
    let l = r.load("2lvl.elf");
    let u = unit(&l);
    let e: Vec<(u32, Option<u32>, bool)> = u
        .entries
        .iter()
        .filter(|e| e.sid == 0x41)
        .map(|e| (e.sid, e.ssid, e.no_ssid))
        .collect();
    assert_eq!(e, [(0x41, Some(0), true), (0x41, Some(0x43), false)]);
    assert_eq!(u.entries[0].l1std.map(|x| x.0), Some(PhysAddr(STRTAB + 8)));
    assert_eq!(code(&walk(&l, 0x41, None, 0x1008, false)), Ok(DATA + 8));
    assert_eq!(
        code(&walk(&l, 0x41, Some(0x43), 0x1008, false)),
        Ok(DATA + 0x7008)
    );
    assert_eq!(r.dma(0x41, Some(0x43), 0x1008, false), Ok(()));
    // SSID 0 with S1DSS = SSID0: F_STREAM_DISABLED; SSID 0x80 under an invalid L1CD:
    // C_BAD_SUBSTREAMID; SSID 0x44 (a CD with V=0): C_BAD_CD.
    for (ssid, ev) in [(0u32, 0x06u32), (0x80, 0x08), (0x44, 0x0a)] {
        assert_eq!(code(&walk(&l, 0x41, Some(ssid), 0x1008, false)), Err(ev));
        assert_eq!(
            r.dma(0x41, Some(ssid), 0x1008, false),
            Err(ev),
            "model {ssid:#x}"
        );
    }
    // StreamID 0x81 sits under an invalid L1STD: C_BAD_STREAMID.
    assert_eq!(code(&walk(&l, 0x81, None, 0, false)), Err(0x02));
}

/// With SMMUEN = 0 GBPA decides: ABORT = 1 (the reset value) aborts every
/// transaction without an event, as the model does; no STE is read.
#[test]
fn smmuen_clear_with_gbpa_abort_aborts_silently() {
    let (mut r, _) = three_streams();
    r.w32(regs::CR0, 0);
    let l = r.load("off.elf");
    let t = text(&l, OutputFormat::Text);
    assert!(
        t.contains("disabled (SMMUEN=0, GBPA applies)") && t.contains("ABORT=1"),
        "{t}"
    );
    let w = unit(&l)
        .translate(&l.image, stream_rid(1), None, Iova(0x1008), false)
        .unwrap();
    assert!(w.steps.is_empty(), "{w:?}");
    assert!(
        matches!(
            w.end,
            WalkEnd::Fault {
                code: 0,
                fpd: true,
                ..
            }
        ),
        "{w:?}"
    );
    assert_eq!(r.dma(1, None, 0x1008, false), Err(0));
}

/// `diff`: a changed PTE shows as a changed mapping, a changed STE (another VMID) as a
/// changed device; the same state is no difference.
#[test]
fn diff_detects_a_changed_pte_and_a_changed_ste() {
    let (mut r, ttb) = three_streams();
    let a = r.load("a.elf");
    assert!(diff(&a, &r.load("a2.elf"), false).same());
    // Stage 1 of SID 1: IOVA 0x1000 moves to DATA + 0x9000.
    let l2 = r.rq(ttb) & 0x000f_ffff_ffff_f000;
    let l3 = r.rq(l2) & 0x000f_ffff_ffff_f000;
    r.wq(l3 + 8, (DATA + 0x9000) | S1_RW | 0b11);
    let b = r.load("b.elf");
    let mut out = Vec::new();
    inspector::diff::write_text(&diff(&a, &b, false), "a", "b", &mut out).unwrap();
    let t = String::from_utf8(out).unwrap();
    assert!(
        t.contains("device 0000:00:00.1 (smmu0)") && t.contains("pa 0x1009000"),
        "{t}"
    );
    let s = Ste::from_qwords([
        r.rq(STRTAB + 128),
        r.rq(STRTAB + 136),
        r.rq(STRTAB + 144),
        r.rq(STRTAB + 152),
        0,
        0,
        0,
        0,
    ]);
    let mut s = s;
    s.set_s2vmid(12);
    r.ste(2, &s);
    let c = r.load("c.elf");
    let d = diff(&b, &c, false);
    let mut out = Vec::new();
    inspector::diff::write_text(&d, "b", "c", &mut out).unwrap();
    let t = String::from_utf8(out).unwrap();
    assert!(
        t.contains("device 0000:00:00.2 (smmu0)") && t.contains("0x000c"),
        "{t}"
    );
}

/// Malformed STEs, CDs and tables: typed problems naming the SMMU, the StreamID (and
/// SubstreamID), the address and what is wrong; the walk raises the model's event.
#[test]
fn malformed_structures_are_typed_problems() {
    let (mut r, _) = three_streams();
    // SID 2: S2TG 3 (reserved) makes the STE ILLEGAL.
    let mut bad = with_s2(Ste::default(), Config::S2Trans, 0x40_0000, 25, 9);
    bad.set_s2tg_bits(3);
    r.ste(2, &bad);
    // SID 1: the stage-1 root outside RAM.
    let mut c = cd(0x4000_0000, 5);
    c.set_ttb0(0x4000_0000);
    r.put(CDTAB, &c.qwords());
    let l = r.load("bad.elf");
    let u = unit(&l);
    let p = u
        .problems
        .iter()
        .find(|p| p.requester == "StreamID 0x2")
        .unwrap();
    assert_eq!((p.unit.as_str(), p.addr), ("smmu0", PhysAddr(STRTAB + 128)));
    assert!(
        p.what.contains("granule encoding 3 is reserved") && p.what.contains("C_BAD_STE"),
        "{p}"
    );
    assert_eq!(code(&walk(&l, 2, None, 0x1000, false)), Err(0x04));
    assert_eq!(r.dma(2, None, 0x1000, false), Err(0x04));
    let tp = u.table_problems(&l.image);
    let p = tp.iter().find(|p| p.requester == "StreamID 0x1").unwrap();
    assert_eq!(p.addr, PhysAddr(0x4000_0000));
    assert!(
        p.to_string()
            .starts_with("smmu0: StreamID 0x1 at 0x40000000: "),
        "{p}"
    );
    assert_eq!(code(&walk(&l, 1, None, 0x1000, false)), Err(0x0b));
    assert_eq!(r.dma(1, None, 0x1000, false), Err(0x0b));
}

/// A loop of table pointers (a level-2 table descriptor pointing back at the level-1
/// table) is a typed problem; the dump ends.
#[test]
fn a_loop_of_table_pointers_is_reported_not_followed() {
    let mut r = Rig::linear();
    let ttb = r.table(0x1000);
    let l2 = r.table(0x1000);
    r.wq(ttb, l2 | 0b11);
    r.wq(l2, ttb | 0b11);
    r.put(CDTAB, &cd(ttb, 5).qwords());
    r.ste(1, &s1_ste(CDTAB, 0, S1Fmt::Linear));
    let l = r.load("loop.elf");
    let tp = unit(&l).table_problems(&l.image);
    assert!(
        tp.iter()
            .any(|p| p.requester == "StreamID 0x1" && p.what.contains("cycle")),
        "{tp:?}"
    );
    assert!(text(&l, OutputFormat::Text).contains("!! "));
}

/// `verify` of an image with an SMMUv3: the typed "no record support yet" error.
#[test]
fn verify_says_smmuv3_records_are_not_read_yet() {
    let l = Rig::linear().load("v.elf");
    plugin::assert_no_record_support(&l, "smmu0", "SMMUv3", "iommu-smmuv3-0x90000000");
}

/// The first `len` bytes of the rig's memory as a raw image.
fn raw_image(r: &Rig, len: usize) -> Vec<u8> {
    plugin::raw_image(&r.image("raw-source.elf"), len)
}

fn raw_load(bytes: Vec<u8>, ov: SmmuOverride) -> Result<Loaded, InspectError> {
    plugin::raw_load(
        bytes,
        LoadOptions {
            smmu: ov,
            ..LoadOptions::default()
        },
    )
}

/// A raw image with the stream table on the command line; an absurd LOG2SIZE and an
/// image too short are typed errors naming the SMMU, the stream table and the address.
#[test]
fn raw_images_with_the_stream_table_on_the_command_line() {
    let (r, _) = three_streams();
    let bytes = raw_image(&r, 0x110_0000);
    let ov = SmmuOverride {
        strtab: Some(STRTAB),
        strtab_cfg: Some(8),
        ..SmmuOverride::default()
    };
    let l = raw_load(bytes.clone(), ov).unwrap();
    let u = unit(&l);
    assert!(u.assumed);
    assert_eq!(u.entries.len(), 3);
    assert_eq!(code(&walk(&l, 3, None, 0x7018, true)), Ok(DATA + 0x6018));
    // LOG2SIZE 32, linear: 2^32 STEs.
    let err = raw_load(
        bytes.clone(),
        SmmuOverride {
            strtab_cfg: Some(32),
            ..ov
        },
    )
    .unwrap_err();
    match &err {
        InspectError::Structure(p) => {
            assert_eq!(
                (p.unit.as_str(), p.requester.as_str()),
                ("smmu0", "stream table")
            );
            assert!(p.what.contains("LOG2SIZE 32"), "{p}");
        }
        e => panic!("{e:?}"),
    }
    // An image ending inside the stream table.
    let err = raw_load(bytes[..0x10_2000].to_vec(), ov).unwrap_err();
    assert!(
        matches!(&err, InspectError::Structure(p) if p.addr == PhysAddr(0x10_2000)),
        "{err:?}"
    );
    // --smmu-strtab without --smmu-strtab-cfg.
    assert!(matches!(
        raw_load(
            bytes,
            SmmuOverride {
                strtab_cfg: None,
                ..ov
            }
        ),
        Err(InspectError::Usage(_))
    ));
}

/// Through the binary: dump of a raw image with `--smmu-strtab`, `walk --stream`.
#[test]
fn cli_dump_and_walk() {
    let (r, _) = three_streams();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("mem.raw");
    std::fs::write(&raw, raw_image(&r, 0x110_0000)).unwrap();
    let elf = dir.path().join("smmu.elf");
    std::fs::write(&elf, emulator::snapshot::to_bytes(&r.m)).unwrap();
    let (code, out, err) = plugin::cli(&[
        "dump",
        raw.to_str().unwrap(),
        "--base",
        "0",
        "--smmu-strtab",
        "0x100000",
        "--smmu-strtab-cfg",
        "8",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("unit smmu0: SMMUv3") && out.contains("StreamID 0x3"),
        "{out}"
    );
    let (code, out, err) = plugin::cli(&[
        "walk",
        "0x7018",
        elf.to_str().unwrap(),
        "--stream",
        "3",
        "--write",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("=> translates to 0x1006018 (rwx, 4K page, domain 0x000b)"),
        "{out}"
    );
    let (code, out, _) = plugin::cli(&[
        "walk",
        "0x1000",
        elf.to_str().unwrap(),
        "--stream",
        "1:1",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"reason\": \"C_BAD_SUBSTREAMID\""), "{out}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random bytes as a raw image with a linear stream table of 64 STEs at 0 and a
    /// random configuration: loading, the dumps and walks never panic nor loop.
    #[test]
    fn random_images_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0x1000..0x8000),
                                 two_level in any::<bool>(), sid in 0u32..64, ssid in proptest::option::of(0u32..64),
                                 iova in any::<u64>()) {
        let cfg = if two_level { 1 << 16 | 6 << 6 | 8 } else { 6 };
        let Ok(l) = raw_load(bytes, SmmuOverride { strtab: Some(0), strtab_cfg: Some(cfg), ..SmmuOverride::default() }) else {
            return Ok(());
        };
        let _ = text(&l, OutputFormat::Text);
        let _ = text(&l, OutputFormat::Json);
        let u = unit(&l);
        let _ = u.table_problems(&l.image);
        let _ = u.translate(&l.image, stream_rid(sid), ssid, Iova(iova), false);
    }

    /// Random structures whose pointers land in a small image (stream table at page 0,
    /// linear or 2-level, random IDRs): loading, dumps and walks never panic nor loop,
    /// and the image compares the same as itself.
    #[test]
    fn random_structures_never_panic(words in proptest::collection::vec(plugin::word(), 64..1600),
                                     two_level in any::<bool>(), idr0 in any::<u32>(), idr1 in 0u32..0x800, idr5 in any::<u32>(),
                                     sid in 0u32..64, ssid in proptest::option::of(0u32..64), iova in any::<u64>()) {
        let cfg = if two_level { 1 << 16 | 6 << 6 | 8 } else { 6 };
        let ov = SmmuOverride { strtab: Some(0), strtab_cfg: Some(cfg), idr0: Some(idr0), idr1: Some(idr1), idr5: Some(idr5), ..SmmuOverride::default() };
        let Ok(l) = raw_load(plugin::words_image(&words), ov) else {
            return Ok(());
        };
        let _ = text(&l, OutputFormat::Text);
        let _ = text(&l, OutputFormat::Json);
        let u = unit(&l);
        let _ = u.table_problems(&l.image);
        for s in [None, ssid] {
            let _ = u.translate(&l.image, stream_rid(sid), s, Iova(iova & 0xffff_ffff), true);
        }
        let again = raw_load(plugin::words_image(&words), ov).unwrap();
        prop_assert!(diff(&l, &again, false).same());
    }

    /// Well-formed STEs (random Config among bypass, stage 1, stage 2 and nested) and
    /// CDs whose table pointers land anywhere in a small image of random descriptors:
    /// stage-1, stage-2 and nested walks and their composition meet random tables,
    /// cycles and aliases, and never panic nor loop.
    #[test]
    fn random_tables_under_valid_stes_never_panic(words in proptest::collection::vec(plugin::word(), 64..1600),
                                                  cfgs in proptest::collection::vec(4u64..8, 8),
                                                  ptrs in proptest::collection::vec(1u64..plugin::PAGES, 24),
                                                  iovas in proptest::collection::vec(0u64..1 << 39, 4)) {
        let mut b = plugin::words_image(&words);
        // Page 0: 8 STEs; page 1: 8 CDs (linear, one per stream).
        b[..0x2000].fill(0);
        for (i, c) in cfgs.iter().enumerate() {
            let mut ste = with_s2(s1_ste(0x1000 + i as u64 * 64, 0, S1Fmt::Linear), Config::Nested, ptrs[i] << 12, 25, i as u16);
            ste.set_config_bits(*c);
            let mut cd = cd(ptrs[8 + i] << 12, i as u16);
            cd.set_affd(i % 2 == 0);
            for (k, q) in ste.qwords().iter().enumerate() {
                let at = i * 64 + k * 8;
                b[at..at + 8].copy_from_slice(&q.to_le_bytes());
            }
            for (k, q) in cd.qwords().iter().enumerate() {
                let at = 0x1000 + i * 64 + k * 8;
                b[at..at + 8].copy_from_slice(&q.to_le_bytes());
            }
        }
        let ov = SmmuOverride { strtab: Some(0), strtab_cfg: Some(3), ..SmmuOverride::default() };
        let l = raw_load(b, ov).unwrap();
        let _ = text(&l, OutputFormat::Text);
        let u = unit(&l);
        let _ = u.table_problems(&l.image);
        for (sid, iova) in iovas.iter().enumerate() {
            let _ = u.translate(&l.image, stream_rid(sid as u32), None, Iova(*iova), sid % 2 == 0);
        }
    }
}
