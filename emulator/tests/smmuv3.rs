//! The SMMUv3 model driven as a driver would: registers through MMIO, tables written
//! by hand in memory with the `smmuv3::hw` layouts, DMA through the model.

use emulator::machine::{Device, Machine};
use emulator::memory::SparseMemory;
use emulator::model::{Access, DmaError, DmaRequest, IommuModel, Translated};
use emulator::smmuv3::{SmmuV3Config, SmmuV3Unit, StreamMap};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::{Iova, Pasid, PhysAddr, RequesterId};
use smmuv3::hw::cd::{Cd, L1Cd};
use smmuv3::hw::cmd::{Cmd, Opcode, SyncCs};
use smmuv3::hw::event::{Class, Event, EventType};
use smmuv3::hw::regs::{self, CR0, CR2, GBPA, GERROR};
use smmuv3::hw::ste::{Config, L1Std, S1Dss, S1Fmt, Ste, StrtabCfg, StrtabFmt};
use smmuv3::hw::Granule;
use zerocopy::{FromBytes, IntoBytes};

const BASE: PhysAddr = PhysAddr(0x9000_0000);
const RAM: u64 = 0x400_0000;
const STRTAB: u64 = 0x10_0000;
const CMDQ: u64 = 0x20_0000;
const EVTQ: u64 = 0x21_0000;
const MSI: u64 = 0x22_0000;
const CDTAB: u64 = 0x30_0000;
const DATA: u64 = 0x100_0000;
/// Stage-1 leaf: AF | AP\[1\] (EL0 access); stage-2 leaf: AF | S2AP read | write.
const S1_RW: u64 = 1 << 10 | 1 << 6;
const S1_RO: u64 = S1_RW | 1 << 7;
const S2_RW: u64 = 1 << 10 | 1 << 6 | 1 << 7;
const S2_RO: u64 = 1 << 10 | 1 << 6;
/// 4 KiB granule, 39-bit input: Arm levels 1–3.
const L3: &[u32] = &[30, 21, 12];

fn rid(n: u16) -> RequesterId {
    RequesterId::new(0, (n >> 8) as u8, (n >> 3 & 31) as u8, (n & 7) as u8)
}

struct Rig {
    u: SmmuV3Unit,
    mem: SparseMemory,
    next: u64,
    cmd_prod: u32,
}

impl Rig {
    fn new(cfg: SmmuV3Config) -> Self {
        let mut r = Rig {
            u: SmmuV3Unit::new(cfg).unwrap(),
            mem: SparseMemory::new(&[(PhysAddr(0), RAM)]).unwrap(),
            next: 0x40_0000,
            cmd_prod: 0,
        };
        r.zero(STRTAB, 0x1_0000);
        r.zero(CDTAB, 0x1_0000);
        r.zero(EVTQ, 0x1000);
        r.zero(MSI, 0x1000);
        r
    }
    fn zero(&mut self, a: u64, len: usize) {
        self.mem.write(PhysAddr(a), &vec![0; len]).unwrap();
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.u.mmio_write(&mut self.mem, off, 4, v as u64);
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.u.mmio_write(&mut self.mem, off, 8, v);
    }
    fn r32(&mut self, off: u64) -> u32 {
        self.u.mmio_read(&mut self.mem, off, 4) as u32
    }
    fn wq(&mut self, a: u64, v: u64) {
        self.mem.write(PhysAddr(a), &v.to_le_bytes()).unwrap();
    }
    fn rq(&self, a: u64) -> u64 {
        self.mem.read_u64(PhysAddr(a)).unwrap()
    }
    fn put<T: IntoBytes + zerocopy::Immutable>(&mut self, a: u64, v: &T) {
        self.mem.write(PhysAddr(a), v.as_bytes()).unwrap();
    }
    fn table(&mut self, bytes: u64) -> u64 {
        let a = self.next.next_multiple_of(bytes);
        self.next = a + bytes;
        self.zero(a, bytes as usize);
        a
    }
    /// Maps `iova` to `leaf` (output address | attributes) at the level of `leaf_shift`
    /// in the VMSAv8-64 tables under `root`, `shifts` the index shift per level.
    fn map(
        &mut self,
        root: u64,
        root_entries: u64,
        shifts: &[u32],
        iova: u64,
        leaf_shift: u32,
        leaf: u64,
    ) {
        let mut table = root;
        for (i, &sh) in shifts.iter().enumerate() {
            let n = if i == 0 { root_entries } else { 512 };
            let slot = table + ((iova >> sh) & (n - 1)) * 8;
            if sh == leaf_shift {
                // Page (0b11) at the last level, block (0b01) above.
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
        panic!("leaf shift {leaf_shift} not in {shifts:?}");
    }
    /// Stage-2 tables (4 KiB, 39-bit IPA, Arm levels 1–3) identity-mapping the RAM
    /// with 2 MiB blocks, read/write; returns the root.
    fn identity_stage2(&mut self) -> u64 {
        let s2 = self.table(0x1000);
        for b in 0..(RAM >> 21) {
            self.map(s2, 512, L3, b << 21, 21, (b << 21) | S2_RW);
        }
        s2
    }
    fn ctrl(&mut self, cr0: u32) {
        self.w32(regs::CR0, cr0);
        assert_eq!(self.r32(regs::CR0ACK), cr0, "CR0ACK follows CR0");
    }
    /// Linux's bring-up order (reference §11) with a linear or 2-level stream table.
    fn enable(&mut self, strtab_cfg: StrtabCfg) {
        self.ctrl(0);
        self.w32(regs::CR2, CR2::RECINVSID::SET.value);
        self.w64(regs::STRTAB_BASE, STRTAB);
        self.w32(regs::STRTAB_BASE_CFG, strtab_cfg.to_reg());
        self.w64(regs::CMDQ_BASE, CMDQ | 6);
        self.zero(CMDQ, 64 * 16);
        self.w32(regs::CMDQ_PROD, 0);
        self.w32(regs::CMDQ_CONS, 0);
        self.ctrl(CR0::CMDQEN::SET.value);
        self.cmd(Cmd::cfgi_all());
        self.cmd(Cmd::new(Opcode::TlbiNsnhAll));
        self.cmd(Cmd::sync(SyncCs::None, 0, 0, 0, 0));
        self.w64(regs::EVENTQ_BASE, EVTQ | 4);
        self.w32(regs::EVENTQ_PROD, 0);
        self.w32(regs::EVENTQ_CONS, 0);
        self.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value);
        self.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value);
    }
    fn linear(&mut self) {
        self.enable(StrtabCfg {
            fmt: StrtabFmt::Linear,
            log2size: 8,
            split: 6,
        });
    }
    fn cmd(&mut self, c: Cmd) {
        let idx = self.cmd_prod & 63;
        self.put(CMDQ + idx as u64 * 16, &c);
        self.cmd_prod = (self.cmd_prod + 1) & 127;
        self.w32(regs::CMDQ_PROD, self.cmd_prod);
    }
    fn sync(&mut self) {
        self.cmd(Cmd::sync(SyncCs::None, 0, 0, 0, 0));
        assert_eq!(self.r32(regs::CMDQ_CONS), self.cmd_prod, "queue consumed");
    }
    /// Reads and consumes the event queue.
    fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let prod = self.r32(regs::EVENTQ_PROD);
        let mut cons = self.r32(regs::EVENTQ_CONS);
        while (cons & 31) != (prod & 31) {
            let mut b = [0u8; 32];
            self.mem
                .read(PhysAddr(EVTQ + (cons & 15) as u64 * 32), &mut b)
                .unwrap();
            out.push(Event::read_from_bytes(&b).unwrap());
            cons = (cons & 0x8000_0000) | ((cons & 31) + 1) & 31;
        }
        self.w32(regs::EVENTQ_CONS, cons);
        out
    }
    fn dma(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Translated, DmaError> {
        let req = DmaRequest {
            rid: rid(sid),
            pasid: pasid.map(Pasid),
            privileged: false,
            iova: Iova(iova),
            access,
        };
        self.u.translate(&mut self.mem, &req)
    }
    fn pa(&mut self, sid: u16, pasid: Option<u32>, iova: u64) -> u64 {
        self.dma(sid, pasid, iova, Access::Read).unwrap().pa.0
    }
    fn ste(&mut self, sid: u32, s: &Ste) {
        self.put(STRTAB + sid as u64 * 64, s);
    }
}

fn fault_code(r: Result<Translated, DmaError>) -> (u32, bool) {
    match r {
        Err(DmaError::Fault(f)) => (f.code, f.recorded),
        other => panic!("expected a fault, got {other:?}"),
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
/// concatenated), 48-bit S2PS, record faults.
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

/// A rig with SID 1 translating through stage 1: CD 0 with ASID 5, 0x1000 → DATA page
/// and a 2 MiB block at 0x4000_0000 → DATA + 2M... returns the TTB0.
fn s1_rig() -> (Rig, u64) {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    let ttb = r.table(0x1000);
    r.map(ttb, 512, L3, 0x1000, 12, DATA | S1_RW);
    r.map(ttb, 512, L3, 0x4000_0000, 21, (DATA + 0x20_0000) | S1_RW);
    r.map(ttb, 512, L3, 0x2000, 12, (DATA + 0x5000) | S1_RO);
    r.put(CDTAB, &cd(ttb, 5));
    r.ste(1, &s1_ste(CDTAB, 0, S1Fmt::Linear));
    (r, ttb)
}

#[test]
fn cr0_handshake_and_guarded_base_writes() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    assert_eq!(r.r32(regs::CR0ACK), 0);
    r.linear();
    // STRTAB_BASE / _CFG while SMMUEN = 1 are IGNORED (reference §3).
    r.w64(regs::STRTAB_BASE, 0x77_0000);
    r.w32(regs::STRTAB_BASE_CFG, 3);
    assert_eq!(r.u.mmio_read(&mut r.mem, regs::STRTAB_BASE, 8), STRTAB);
    assert_eq!(r.r32(regs::STRTAB_BASE_CFG) & 0x3f, 8);
    // CMDQ_BASE while CMDQEN = 1 too.
    r.w64(regs::CMDQ_BASE, 0x66_0000 | 6);
    assert_eq!(r.u.mmio_read(&mut r.mem, regs::CMDQ_BASE, 8), CMDQ | 6);
    assert_eq!(r.u.diagnostics().len(), 3, "{:?}", r.u.diagnostics());
    // After SMMUEN = 0 (acknowledged) the base may change.
    r.ctrl(CR0::CMDQEN::SET.value);
    r.w64(regs::STRTAB_BASE, 0x77_0000);
    assert_eq!(r.u.mmio_read(&mut r.mem, regs::STRTAB_BASE, 8), 0x77_0000);
    // IDR0 advertises what the config says.
    let idr0 = r.r32(regs::IDR0);
    assert_eq!(idr0 & 3, 3, "S1P and S2P");
    assert_eq!(idr0 >> 27 & 3, 1, "2-level stream tables");
}

#[test]
fn gbpa_abort_and_bypass_while_smmuen_is_0() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    // Reset: GBPA.ABORT = 1; no event.
    assert_eq!(fault_code(r.dma(1, None, 0x1234, Access::Read)), (0, false));
    // A write without UPDATE is ignored.
    r.w32(regs::GBPA, 0);
    assert!(r.dma(1, None, 0x1234, Access::Read).is_err());
    r.w32(regs::GBPA, GBPA::UPDATE::SET.value);
    assert_eq!(r.r32(regs::GBPA), 0, "UPDATE completes at once, ABORT = 0");
    assert_eq!(r.pa(1, None, 0x1234), 0x1234);
    r.w32(regs::GBPA, (GBPA::UPDATE::SET + GBPA::ABORT::SET).value);
    assert!(r.dma(1, None, 0x1234, Access::Write).is_err());
}

#[test]
fn bypass_and_abort_ste() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(Config::Bypass);
    r.ste(2, &s);
    s.set_config(Config::Abort);
    r.ste(3, &s);
    assert_eq!(r.pa(2, None, 0xabc_d000), 0xabc_d000);
    // Abort: terminated, no event.
    assert_eq!(fault_code(r.dma(3, None, 0x1000, Access::Read)), (0, false));
    assert!(r.events().is_empty());
    // Reserved Config 0b001–0b011 behaves as abort: no event (IHI0070 §5.2).
    for c in 1..=3 {
        let mut x = Ste::default();
        x.set_v(true);
        x.set_config_bits(c);
        r.ste(5, &x);
        r.cmd(Cmd::cfgi_ste(5, true));
        r.sync();
        assert_eq!(fault_code(r.dma(5, None, 0x1000, Access::Read)), (0, false));
    }
    assert!(r.events().is_empty());
    // V = 0: C_BAD_STE, recorded.
    assert_eq!(
        fault_code(r.dma(4, None, 0x1000, Access::Read)),
        (0x04, true)
    );
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].event_type(), ev[0].sid()),
        (Some(EventType::CBadSte), 4)
    );
}

#[test]
fn stage1_4k_page_and_2m_block() {
    let (mut r, _) = s1_rig();
    assert_eq!(r.pa(1, None, 0x1abc), DATA + 0xabc);
    let t = r.dma(1, None, 0x4012_3456, Access::Write).unwrap();
    assert_eq!(t.pa.0, DATA + 0x20_0000 + 0x12_3456);
    assert_eq!(t.page_size.bytes(), 0x20_0000);
}

#[test]
fn f_translation_event_fields_and_record_flag() {
    let (mut r, ttb) = s1_rig();
    let mut s = s1_ste(CDTAB, 4, S1Fmt::Linear);
    s.set_s1dss(S1Dss::Terminate);
    r.ste(1, &s);
    r.put(CDTAB + 3 * 64, &cd(ttb, 9));
    assert_eq!(
        fault_code(r.dma(1, Some(3), 0x9000, Access::Write)),
        (0x10, true)
    );
    let ev = r.events();
    assert_eq!(ev.len(), 1);
    let e = ev[0];
    assert_eq!(e.event_type(), Some(EventType::FTranslation));
    assert_eq!((e.sid(), e.substream()), (1, Some(3)));
    assert_eq!(e.input_addr(), 0x9000);
    assert!(!e.rnw(), "a write");
    assert!(!e.s2());
    assert_eq!(e.class(), Some(Class::In));
    // CD.R = 0: logged, not recorded.
    let mut c = cd(ttb, 9);
    c.set_r(false);
    r.put(CDTAB + 3 * 64, &c);
    r.cmd(Cmd::cfgi_cd(1, 3, true));
    r.sync();
    assert_eq!(
        fault_code(r.dma(1, Some(3), 0x9000, Access::Read)),
        (0x10, false)
    );
    assert!(r.events().is_empty());
    // S1DSS terminate: a request without PASID is F_STREAM_DISABLED; an SSID past
    // S1CDMax is C_BAD_SUBSTREAMID.
    assert_eq!(fault_code(r.dma(1, None, 0x1000, Access::Read)).0, 0x06);
    assert_eq!(fault_code(r.dma(1, Some(16), 0x1000, Access::Read)).0, 0x08);
    let ev = r.events();
    assert_eq!(ev[1].ssid(), 16);
}

#[test]
fn stage1_permission_fault() {
    let (mut r, _) = s1_rig();
    assert_eq!(r.pa(1, None, 0x2008), DATA + 0x5008);
    assert_eq!(
        fault_code(r.dma(1, None, 0x2008, Access::Write)),
        (0x13, true)
    );
    let e = r.events()[0];
    assert_eq!(e.event_type(), Some(EventType::FPermission));
    assert!(!e.s2() && !e.rnw());
}

#[test]
fn access_flag_and_address_size_faults() {
    let (mut r, ttb) = s1_rig();
    r.map(ttb, 512, L3, 0x3000, 12, DATA | 1 << 6); // AF = 0
                                                    // IPS 0 (32 bits): an output address at 4 GiB is beyond it.
    let mut c = cd(ttb, 5);
    c.set_ips(0);
    r.put(CDTAB, &c);
    r.map(ttb, 512, L3, 0x6000, 12, 1 << 32 | S1_RW);
    assert_eq!(fault_code(r.dma(1, None, 0x3000, Access::Read)).0, 0x12);
    assert_eq!(fault_code(r.dma(1, None, 0x6000, Access::Read)).0, 0x11);
}

#[test]
fn stage2_with_two_concatenated_start_tables() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    // S2T0SZ 24: 40-bit IPA at Arm level 1 = 1024 entries, two 4 KiB tables (8 KiB).
    let root = r.table(0x2000);
    let ipa = 0x80_4000_0000u64; // index 514: the second table
    r.map(root, 1024, L3, ipa, 12, (DATA + 0x3000) | S2_RW);
    r.map(root, 1024, L3, 0x5000, 12, (DATA + 0x4000) | S2_RO);
    r.ste(7, &with_s2(Ste::default(), Config::S2Trans, root, 24, 3));
    assert_eq!(r.pa(7, None, ipa + 0x10), DATA + 0x3010);
    assert_eq!(
        r.rq(root + 0x1000 + 2 * 8) & !0xfff & 0xffff_ffff_f000,
        r.rq(root + 0x1010) & 0xffff_ffff_f000
    );
    // Stage-2 permission fault: S2 = 1 with the IPA.
    assert_eq!(
        fault_code(r.dma(7, None, 0x5010, Access::Write)),
        (0x13, true)
    );
    let e = r.events()[0];
    assert!(e.s2());
    assert_eq!(e.ipa(), 0x5000);
    // Beyond 40 bits: stage-2 F_TRANSLATION.
    assert_eq!(fault_code(r.dma(7, None, 1 << 40, Access::Read)).0, 0x10);
}

#[test]
fn nested_stage1_walk_translated_by_stage2() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    // Stage 2 identity-maps the IPA window 0..64 MiB with 2 MiB blocks, except that IPA
    // window 0x1000_0000.. holds the stage-1 tables and CD at other PAs.
    let s2 = r.identity_stage2();
    let s1 = r.table(0x1000);
    let ipa_ttb = 0x1000_0000u64;
    r.map(s2, 512, L3, ipa_ttb, 12, s1 | S2_RW);
    // Stage-1 tables: their next-level pointers are IPAs that stage 2 identity-maps.
    r.map(s1, 512, L3, 0x7000, 12, (DATA + 0x8000) | S1_RW);
    let cd_pa = CDTAB + 0x800;
    r.put(cd_pa, &cd(ipa_ttb, 11));
    let ipa_cd = 0x1000_1000u64;
    r.map(s2, 512, L3, ipa_cd, 12, (cd_pa & !0xfff) | S2_RW);
    let s = with_s2(
        s1_ste(ipa_cd + 0x800, 0, S1Fmt::Linear),
        Config::Nested,
        s2,
        25,
        4,
    );
    r.ste(9, &s);
    assert_eq!(r.pa(9, None, 0x7123), DATA + 0x8123);
    // Remove the stage-2 mapping of a stage-1 table page: a stage-2 fault with CLASS TT.
    let l2 = r.rq(s1) & 0xffff_ffff_f000;
    let s2_l2 = r.rq(s2 + ((l2 >> 30) & 511) * 8) & 0xffff_ffff_f000;
    r.wq(s2_l2 + ((l2 >> 21) & 511) * 8, 0);
    r.cmd(Cmd::tlbi(Opcode::TlbiS12Vmall, 4, 0));
    r.sync();
    assert_eq!(fault_code(r.dma(9, None, 0x7123, Access::Read)).0, 0x10);
    let e = r.events()[0];
    assert!(e.s2());
    assert_eq!(e.class(), Some(Class::Tt));
    assert_eq!(e.ipa(), l2 & !0xfff);
}

/// Nested: a stage-1 permission fault is reported before stage 2 of the output IPA is
/// looked at (Arm ARM: AArch64.FullTranslate runs stage 2 only when stage 1 returned
/// no fault). A read-only stage-1 page whose IPA stage 2 does not map: a write is a
/// stage-1 F_PERMISSION, a read a stage-2 F_TRANSLATION naming the IPA.
#[test]
fn nested_stage1_permission_fault_comes_before_stage2_of_the_output() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    // Stage 2 identity-maps IPAs 0..64 MiB; IPA 0x1_0000_0000 is not mapped.
    let s2 = r.identity_stage2();
    let s1 = r.table(0x1000);
    r.map(s1, 512, L3, 0x7000, 12, 0x1_0000_0000 | S1_RO);
    r.put(CDTAB, &cd(s1, 11));
    let s = with_s2(s1_ste(CDTAB, 0, S1Fmt::Linear), Config::Nested, s2, 25, 4);
    r.ste(9, &s);
    assert_eq!(fault_code(r.dma(9, None, 0x7010, Access::Write)).0, 0x13);
    let e = r.events()[0];
    assert_eq!(e.event_type(), Some(EventType::FPermission));
    assert!(!e.s2());
    assert_eq!(fault_code(r.dma(9, None, 0x7010, Access::Read)).0, 0x10);
    let e = r.events()[0];
    assert!(e.s2());
    // The event carries IPA[51:12].
    assert_eq!(e.ipa(), 0x1_0000_0000);
}

#[test]
fn two_level_stream_table_and_cd_table() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.enable(StrtabCfg {
        fmt: StrtabFmt::TwoLevel,
        log2size: 16,
        split: 8,
    });
    let l2 = r.table(256 * 64);
    r.wq(STRTAB + 0x12 * 8, L1Std::new(l2, 8).qwords()[0]);
    let ttb = r.table(0x1000);
    r.map(ttb, 512, L3, 0x1000, 12, DATA | S1_RW);
    // 2-level CD table (S1Fmt 1: 64 CDs per 4 KiB L2), SSID 70 = L1 1, L2 6.
    let cdl2 = r.table(0x1000);
    r.wq(CDTAB + 8, L1Cd::new(cdl2).qwords()[0]);
    r.put(cdl2 + 6 * 64, &cd(ttb, 2));
    r.put(l2 + 0x34 * 64, &s1_ste(CDTAB, 8, S1Fmt::TwoLevel4K));
    assert_eq!(r.pa(0x1234, Some(70), 0x1010), DATA + 0x10);
    // L1CD 0 invalid: C_BAD_SUBSTREAMID; L1STD 0x13 SPAN 0: C_BAD_STREAMID.
    assert_eq!(
        fault_code(r.dma(0x1234, Some(5), 0x1010, Access::Read)).0,
        0x08
    );
    assert_eq!(
        fault_code(r.dma(0x1334, None, 0x1010, Access::Read)).0,
        0x02
    );
    // An L1STD with SPAN 8 covers 128 STEs: index 0x80 is beyond it.
    let mut d = L1Std::new(l2, 8);
    d.set_span(8);
    r.wq(STRTAB + 0x14 * 8, d.qwords()[0]);
    assert_eq!(
        fault_code(r.dma(0x1480, None, 0x1010, Access::Read)).0,
        0x02
    );
}

#[test]
fn bad_streamid_recorded_only_with_recinvsid() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    assert_eq!(
        fault_code(r.dma(0x100, None, 0, Access::Read)),
        (0x02, true)
    );
    assert_eq!(r.events()[0].sid(), 0x100);
    r.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value);
    r.w32(regs::CR2, 0);
    r.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value);
    assert_eq!(
        fault_code(r.dma(0x100, None, 0, Access::Read)),
        (0x02, false)
    );
}

#[test]
fn stale_translation_until_tlbi_nh_va() {
    let (mut r, ttb) = s1_rig();
    assert_eq!(r.pa(1, None, 0x1000), DATA);
    r.map(ttb, 512, L3, 0x1000, 12, (DATA + 0x9000) | S1_RW);
    assert_eq!(r.pa(1, None, 0x1000), DATA, "TLB hit until invalidated");
    // Wrong ASID: still stale.
    r.cmd(Cmd::tlbi_addr(Opcode::TlbiNhVa, 0, 6, 0x1000, true, None));
    r.sync();
    assert_eq!(r.pa(1, None, 0x1000), DATA);
    r.cmd(Cmd::tlbi_addr(Opcode::TlbiNhVa, 0, 5, 0x1000, true, None));
    r.sync();
    assert_eq!(r.pa(1, None, 0x1000), DATA + 0x9000);
}

#[test]
fn stale_ste_until_cfgi_ste() {
    let (mut r, _) = s1_rig();
    assert_eq!(r.pa(1, None, 0x1000), DATA);
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(Config::Bypass);
    r.ste(1, &s);
    assert_eq!(r.pa(1, None, 0x1000), DATA, "cached STE");
    r.cmd(Cmd::cfgi_ste(1, true));
    r.sync();
    assert_eq!(r.pa(1, None, 0x1000), 0x1000);
}

#[test]
fn torn_entry_mode_sees_a_half_written_ste() {
    for refetch in [false, true] {
        let mut cfg = SmmuV3Config::new(BASE);
        cfg.refetch_config = refetch;
        let mut r = Rig::new(cfg);
        r.linear();
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(Config::Bypass);
        r.ste(1, &s);
        assert_eq!(r.pa(1, None, 0x1000), 0x1000);
        // A non-hitless switch to stage 2: qword 0 (Config) first, stage-2 qwords after.
        let root = r.table(0x1000);
        let new = with_s2(Ste::default(), Config::S2Trans, root, 25, 1);
        r.wq(STRTAB + 64, new.qwords()[0]);
        let mid = r.dma(1, None, 0x1000, Access::Read);
        if refetch {
            assert_eq!(fault_code(mid).0, 0x04, "C_BAD_STE between the writes");
        } else {
            assert_eq!(mid.unwrap().pa.0, 0x1000, "the cached STE until CFGI_STE");
        }
    }
}

#[test]
fn cmd_sync_msi_write_and_sev() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    r.cmd(Cmd::sync(SyncCs::Irq, MSI + 8, 0xfeed_beef, 3, 1));
    assert_eq!(r.rq(MSI + 8) & 0xffff_ffff, 0xfeed_beef);
    assert_eq!(r.u.sync_irqs(), 1);
    r.cmd(Cmd::sync(SyncCs::Sev, 0, 0, 0, 0));
    assert_eq!(r.u.sev_events(), 1);
    assert_eq!(r.r32(regs::CMDQ_CONS), r.cmd_prod);
}

#[test]
fn illegal_command_stops_the_queue_with_cmdq_err() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    let before = r.r32(regs::CMDQ_CONS);
    r.cmd(Cmd::from_qwords([0x7f, 0])); // unknown opcode
    r.cmd(Cmd::sync(SyncCs::Irq, MSI, 1, 0, 0));
    let cons = r.r32(regs::CMDQ_CONS);
    assert_eq!(cons & 0xfffff, before, "CONS stays on the failing command");
    assert_eq!(cons >> 24 & 0x7f, 1, "CERROR_ILL");
    let g = r.r32(regs::GERROR) ^ r.r32(regs::GERRORN);
    assert_eq!(g & GERROR::CMDQ_ERR::SET.value, 1);
    assert_eq!(r.rq(MSI), 0, "the SYNC behind it did not run");
    // Replace the command with a no-op, acknowledge: the queue resumes.
    r.put(
        CMDQ + before as u64 * 16,
        &Cmd::sync(SyncCs::None, 0, 0, 0, 0),
    );
    let gerror = r.r32(regs::GERROR);
    r.w32(regs::GERRORN, gerror);
    assert_eq!(r.r32(regs::CMDQ_CONS), r.cmd_prod);
    assert_eq!(r.rq(MSI), 1);
}

#[test]
fn event_queue_wraps_and_overflows() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    // 16 entries: 10 events, consume, 10 more wrap around the end.
    for i in 0..10 {
        r.dma(0x100 + i, None, 0, Access::Read).unwrap_err();
    }
    assert_eq!(r.events().len(), 10);
    for i in 0..10 {
        r.dma(0x100 + i, None, 0, Access::Read).unwrap_err();
    }
    let prod = r.r32(regs::EVENTQ_PROD);
    assert_eq!(prod & 0x1f, 0x10 | 4, "wrapped: wrap bit set, index 4");
    let ev = r.events();
    assert_eq!(
        ev.iter().map(|e| e.sid()).collect::<Vec<_>>(),
        (0x100..0x10a).collect::<Vec<_>>()
    );
    // Fill the 16 entries, then one more overflows.
    for i in 0..17 {
        r.dma(0x100 + i, None, 0, Access::Read).unwrap_err();
    }
    let prod = r.r32(regs::EVENTQ_PROD);
    assert_ne!(prod >> 31, r.r32(regs::EVENTQ_CONS) >> 31, "overflow flag");
    assert!(!r.u.fault_log().last().unwrap().recorded);
    assert_eq!(r.events().len(), 16);
}

#[test]
fn poisoned_walk_is_a_memory_error() {
    let (mut r, ttb) = s1_rig();
    let l2 = r.rq(ttb) & 0xffff_ffff_f000;
    r.mem.poison_range(PhysAddr(l2), 0x1000).unwrap();
    match r.dma(1, None, 0x1000, Access::Read) {
        Err(DmaError::Memory { error, .. }) => {
            assert!(matches!(error, MemError::Poisoned { .. }))
        }
        other => panic!("{other:?}"),
    }
    // An unbacked stream table: F_STE_FETCH with the fetch address.
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    r.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value);
    r.w64(regs::STRTAB_BASE, RAM);
    r.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value);
    assert_eq!(fault_code(r.dma(2, None, 0, Access::Read)).0, 0x03);
    assert_eq!(r.events()[0].fetch_addr(), RAM + 128);
}

#[test]
fn two_smmus_on_one_machine_with_an_iommu_map() {
    let mut m = Machine::with_ram(&[(PhysAddr(0), RAM)]).unwrap();
    let b2 = PhysAddr(BASE.0 + 0x10_0000);
    m.add_unit(Box::new(SmmuV3Unit::new(SmmuV3Config::new(BASE)).unwrap()))
        .unwrap();
    let mut c2 = SmmuV3Config::new(b2);
    // Requester 00:02.0 (RID 0x10) is StreamID 0x40 behind the second SMMU.
    c2.stream_map = vec![StreamMap {
        segment: 0,
        rid_base: 0x10,
        sid_base: 0x40,
        length: 8,
    }];
    m.add_unit(Box::new(SmmuV3Unit::new(c2).unwrap())).unwrap();
    let a = m
        .add_device(Device {
            rid: rid(0x10),
            pasid: None,
            unit: BASE,
        })
        .unwrap();
    let b = m
        .add_device(Device {
            rid: rid(0x18),
            pasid: None,
            unit: b2,
        })
        .unwrap();
    // Both SMMUs stay disabled: unit 1 bypasses, unit 2 (reset GBPA) aborts.
    m.mmio_write(
        PhysAddr(BASE.0 + regs::GBPA),
        4,
        GBPA::UPDATE::SET.value as u64,
    )
    .unwrap();
    m.mem_mut().write(PhysAddr(DATA), &[0; 16]).unwrap();
    m.dma_write(&a, Iova(DATA), &[7; 16]).unwrap();
    assert!(m.dma_write(&b, Iova(DATA), &[9; 16]).is_err());
    assert_eq!(m.fault_log().len(), 1);
    assert_eq!(m.fault_log()[0].unit, b2);
    // The map: 0x10 → 0x40, 0x18 unmapped.
    let u2 = m.unit(b2).unwrap();
    assert_eq!(u2.kind().name(), "smmuv3");
    let mut buf = [0u8; 16];
    m.mem().read(PhysAddr(DATA), &mut buf).unwrap();
    assert_eq!(buf, [7; 16]);
    let c = SmmuV3Config {
        stream_map: vec![StreamMap {
            segment: 0,
            rid_base: 0x10,
            sid_base: 0x40,
            length: 8,
        }],
        ..SmmuV3Config::new(b2)
    };
    assert_eq!(c.stream_id(rid(0x12)), Some(0x42));
    assert_eq!(c.stream_id(rid(0x18)), None);
    // A non-PCI master: requester 0 of segment 0x100, StreamID 0x900.
    let platform = StreamMap {
        segment: 0x100,
        rid_base: 0,
        sid_base: 0x900,
        length: 1,
    };
    let c = SmmuV3Config {
        stream_map: vec![platform],
        ..SmmuV3Config::new(b2)
    };
    assert_eq!(c.stream_id(RequesterId::new(0x100, 0, 0, 0)), Some(0x900));
    assert_eq!(c.stream_id(rid(0)), None);
}

/// Each invalidation kind against the cache it empties: the change stays invisible
/// until that command (and a command for another tag leaves it stale).
#[test]
fn stale_until_each_kind_of_invalidation() {
    type Change = fn(&mut Rig, u64, u64);
    // (name, change, wrong command, right command, the new PA of IOVA 0x1000 of SID 1)
    let remap: Change = |r, ttb, _| r.map(ttb, 512, L3, 0x1000, 12, (DATA + 0x9000) | S1_RW);
    let new_cd: Change = |r, ttb, _| {
        let t2 = r.table(0x1000);
        r.map(t2, 512, L3, 0x1000, 12, (DATA + 0x9000) | S1_RW);
        let _ = ttb;
        // A new ASID: CFGI does not touch the TLB (reference §9).
        r.put(CDTAB, &cd(t2, 7));
    };
    let nh_va_range = {
        let mut c = Cmd::tlbi_addr(Opcode::TlbiNhVa, 0, 5, 0, true, Some((3, Granule::K4)));
        c.set_num(1); // 2 × 2 pages from 0: covers 0x1000
        c
    };
    let rows: Vec<(&str, Change, Cmd, Cmd)> = vec![
        (
            "CFGI_CD",
            new_cd,
            Cmd::cfgi_cd(2, 0, true),
            Cmd::cfgi_cd(1, 0, true),
        ),
        (
            "CFGI_CD_ALL",
            new_cd,
            Cmd::cfgi_cd_all(2),
            Cmd::cfgi_cd_all(1),
        ),
        (
            "CFGI_STE_RANGE",
            new_cd,
            Cmd::cfgi_ste_range(2, 0),
            Cmd::cfgi_ste_range(0, 0),
        ),
        ("CFGI_ALL", new_cd, Cmd::cfgi_ste(3, true), Cmd::cfgi_all()),
        (
            "TLBI_NH_ASID",
            remap,
            Cmd::tlbi(Opcode::TlbiNhAsid, 0, 6),
            Cmd::tlbi(Opcode::TlbiNhAsid, 0, 5),
        ),
        (
            "TLBI_NH_ALL",
            remap,
            Cmd::tlbi(Opcode::TlbiNhAll, 1, 5),
            Cmd::tlbi(Opcode::TlbiNhAll, 0, 0),
        ),
        (
            "TLBI_NH_VAA",
            remap,
            Cmd::tlbi_addr(Opcode::TlbiNhVaa, 0, 0, 0x2000, true, None),
            Cmd::tlbi_addr(Opcode::TlbiNhVaa, 0, 0, 0x1000, true, None),
        ),
        (
            "TLBI_NH_VA range",
            remap,
            Cmd::tlbi_addr(Opcode::TlbiNhVa, 0, 5, 0x4000, true, None),
            nh_va_range,
        ),
        (
            "TLBI_S12_VMALL",
            remap,
            Cmd::tlbi(Opcode::TlbiS12Vmall, 1, 0),
            Cmd::tlbi(Opcode::TlbiS12Vmall, 0, 0),
        ),
        (
            "TLBI_NSNH_ALL",
            remap,
            Cmd::cfgi_all(),
            Cmd::new(Opcode::TlbiNsnhAll),
        ),
    ];
    for (name, change, wrong, right) in rows {
        let (mut r, ttb) = s1_rig();
        assert_eq!(r.pa(1, None, 0x1000), DATA, "{name}");
        change(&mut r, ttb, 0);
        r.cmd(wrong);
        r.sync();
        assert_eq!(
            r.pa(1, None, 0x1000),
            DATA,
            "{name}: stale after another tag's command"
        );
        r.cmd(right);
        r.sync();
        assert_eq!(
            r.pa(1, None, 0x1000),
            DATA + 0x9000,
            "{name}: fresh after the command"
        );
    }
}

#[test]
fn stale_stage2_until_tlbi_s2_ipa() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    let root = r.table(0x1000);
    r.map(root, 512, L3, 0x5000, 12, DATA | S2_RW);
    r.ste(7, &with_s2(Ste::default(), Config::S2Trans, root, 25, 3));
    assert_eq!(r.pa(7, None, 0x5000), DATA);
    r.map(root, 512, L3, 0x5000, 12, (DATA + 0x1000) | S2_RW);
    r.cmd(Cmd::tlbi_addr(Opcode::TlbiS2Ipa, 2, 0, 0x5000, true, None));
    r.sync();
    assert_eq!(r.pa(7, None, 0x5000), DATA, "another VMID");
    r.cmd(Cmd::tlbi_addr(Opcode::TlbiS2Ipa, 3, 0, 0x5000, true, None));
    r.sync();
    assert_eq!(r.pa(7, None, 0x5000), DATA + 0x1000);
}

#[test]
fn unbacked_stage1_descriptor_is_f_walk_eabt() {
    let (mut r, ttb) = s1_rig();
    r.wq(ttb + 2 * 8, RAM | 0b11); // a table beyond RAM
    assert_eq!(
        fault_code(r.dma(1, None, 0x8000_0000, Access::Read)).0,
        0x0b
    );
    let e = r.events()[0];
    assert_eq!(e.class(), Some(Class::Tt));
    assert_eq!(e.fetch_addr(), RAM);
    assert!(!e.s2());
}

#[test]
fn cd_fetch_abort_and_bad_cd() {
    let (mut r, ttb) = s1_rig();
    // S1ContextPtr beyond RAM: F_CD_FETCH with the CD's address.
    r.ste(1, &s1_ste(RAM, 0, S1Fmt::Linear));
    assert_eq!(
        fault_code(r.dma(1, None, 0x1000, Access::Read)),
        (0x09, true)
    );
    assert_eq!(r.events()[0].fetch_addr(), RAM);
    // CD.V = 0: C_BAD_CD; a reserved TG0 too.
    let mut c = cd(ttb, 5);
    c.set_v(false);
    r.put(CDTAB + 64, &c);
    r.ste(2, &s1_ste(CDTAB + 64, 0, S1Fmt::Linear));
    assert_eq!(
        fault_code(r.dma(2, None, 0x1000, Access::Read)),
        (0x0a, true)
    );
    let mut c = cd(ttb, 5);
    c.set_tg0_bits(3);
    r.put(CDTAB + 128, &c);
    r.ste(3, &s1_ste(CDTAB + 128, 0, S1Fmt::Linear));
    assert_eq!(fault_code(r.dma(3, None, 0x1000, Access::Read)).0, 0x0a);
    let ev = r.events();
    assert_eq!(ev.iter().map(|e| e.sid()).collect::<Vec<_>>(), [2, 3]);
    // A privileged PASID request's fault carries PnU.
    r.ste(4, &s1_ste(CDTAB, 4, S1Fmt::Linear));
    r.put(CDTAB + 2 * 64, &cd(ttb, 5));
    let req = DmaRequest {
        rid: rid(4),
        pasid: Some(Pasid(2)),
        privileged: true,
        iova: Iova(0x7000),
        access: Access::Read,
    };
    r.u.translate(&mut r.mem, &req).unwrap_err();
    let e = r.events()[0];
    assert!(e.pnu() && e.rnw());
}

#[test]
fn config_errors_are_typed() {
    let mut c = SmmuV3Config::new(BASE);
    c.oas_bits = 47;
    assert!(SmmuV3Unit::new(c).is_err());
    let mut c = SmmuV3Config::new(BASE);
    c.stream_map = vec![StreamMap {
        segment: 0,
        rid_base: 0xfff0,
        sid_base: 0,
        length: 0x20,
    }];
    let e = SmmuV3Unit::new(c).unwrap_err();
    assert!(e.to_string().contains("iommu-map"), "{e}");
}

/// A live CD rewritten qword by qword (TTB0 in qword 1 before the ASID in qword 0):
/// in torn-entry mode a translation between the writes walks the new table under the
/// old ASID; with the CD cache it keeps the old CD until CFGI_CD.
#[test]
fn torn_entry_mode_sees_a_half_written_cd() {
    for refetch in [false, true] {
        let mut cfg = SmmuV3Config::new(BASE);
        cfg.refetch_config = refetch;
        let mut r = Rig::new(cfg);
        r.linear();
        let old = r.table(0x1000);
        r.map(old, 512, L3, 0x1000, 12, DATA | S1_RW);
        r.put(CDTAB, &cd(old, 5));
        r.ste(1, &s1_ste(CDTAB, 0, S1Fmt::Linear));
        assert_eq!(r.pa(1, None, 0x1000), DATA);
        let new = r.table(0x1000);
        r.map(new, 512, L3, 0x3000, 12, (DATA + 0x7000) | S1_RW);
        let q = cd(new, 6).qwords();
        r.wq(CDTAB + 8, q[1]);
        let mid = r.dma(1, None, 0x3000, Access::Read);
        if refetch {
            assert_eq!(
                mid.unwrap().pa.0,
                DATA + 0x7000,
                "new TTB0 under the old ASID"
            );
        } else {
            assert_eq!(fault_code(mid).0, 0x10, "the cached CD walks the old table");
        }
    }
}

#[test]
fn irq_ctrl_handshake_and_event_msi() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    r.w64(regs::EVENTQ_IRQ_CFG0, MSI + 0x40);
    r.w32(regs::EVENTQ_IRQ_CFG1, 0x1234_5678);
    // No interrupt while IRQ_CTRL.EVENTQ_IRQEN = 0.
    r.dma(0x100, None, 0, Access::Read).unwrap_err();
    assert_eq!((r.u.eventq_irqs(), r.rq(MSI + 0x40)), (0, 0));
    r.w32(regs::IRQ_CTRL, 0b101);
    assert_eq!(r.r32(regs::IRQ_CTRLACK), 0b101);
    r.dma(0x100, None, 0, Access::Read).unwrap_err();
    assert_eq!(r.u.eventq_irqs(), 1);
    assert_eq!(r.rq(MSI + 0x40) & 0xffff_ffff, 0x1234_5678);
    // A command error raises the global-error interrupt.
    r.cmd(Cmd::from_qwords([0x7f, 0]));
    assert_eq!(r.u.gerror_irqs(), 1);
}

/// Without SubstreamIDs (IDR1.SSIDSIZE = 0) S1CDMax is IGNORED: a non-zero value is not
/// an ILLEGAL STE, and a request with a PASID is C_BAD_SUBSTREAMID.
#[test]
fn s1cdmax_ignored_without_substreams() {
    let mut cfg = SmmuV3Config::new(BASE);
    cfg.ssid_bits = 0;
    let mut r = Rig::new(cfg);
    r.linear();
    let ttb = r.table(0x1000);
    r.map(ttb, 512, L3, 0x1000, 12, DATA | S1_RW);
    r.put(CDTAB, &cd(ttb, 5));
    r.ste(1, &s1_ste(CDTAB, 5, S1Fmt::TwoLevel64K));
    assert_eq!(r.pa(1, None, 0x1000), DATA);
    assert_eq!(fault_code(r.dma(1, Some(0), 0x1000, Access::Read)).0, 0x08);
}

/// Stage 1 bypassed: an input beyond the 48-bit IAS is a stage-1 F_ADDR_SIZE; a
/// reserved S1DSS (3) terminates like 0 (IHI0070 §5.2 STE.S1DSS).
#[test]
fn bypassed_stage1_checks_ias_and_reserved_s1dss_terminates() {
    let (mut r, _) = s1_rig();
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(Config::Bypass);
    r.ste(2, &s);
    assert_eq!(r.pa(2, None, (1 << 48) - 0x1000), (1 << 48) - 0x1000);
    assert_eq!(
        fault_code(r.dma(2, None, 1 << 48, Access::Read)),
        (0x11, true)
    );
    let e = r.events()[0];
    assert!(!e.s2());
    assert_eq!(e.input_addr(), 1 << 48);
    let mut s = s1_ste(CDTAB, 2, S1Fmt::Linear);
    s.set_s1dss_bits(3);
    r.ste(3, &s);
    assert_eq!(fault_code(r.dma(3, None, 0x1000, Access::Read)).0, 0x06);
}

/// Base addresses are aligned by the SMMU (IHI0070 §6.3 CMDQ_BASE, STRTAB_BASE): low
/// ADDR bits below the queue or table size are ignored.
#[test]
fn queue_and_stream_table_bases_are_aligned_to_their_size() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    r.ctrl(0);
    // 2^8 STEs = 16 KiB: ADDR bits 13:6 ignored; 64 commands = 1 KiB: bits 9:5 ignored.
    r.w64(regs::STRTAB_BASE, STRTAB + 0x40);
    r.w64(regs::CMDQ_BASE, (CMDQ + 0x60) | 6);
    r.w32(regs::CMDQ_PROD, 0);
    r.w32(regs::CMDQ_CONS, 0);
    r.cmd_prod = 0;
    r.ctrl((CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value);
    r.cmd(Cmd::sync(SyncCs::Irq, MSI, 0x55, 0, 0));
    assert_eq!(r.rq(MSI), 0x55, "the command was read at the aligned base");
    let mut s = Ste::default();
    s.set_v(true);
    s.set_config(Config::Bypass);
    r.ste(1, &s);
    assert_eq!(r.pa(1, None, 0x3000), 0x3000, "STE 1 read at STRTAB + 64");
}

/// A 64 KiB-granule CD (TG0 = 1, T0SZ 25: Arm levels 2 and 3): a 64 KiB page and a
/// 512 MiB block (reference §12).
#[test]
fn stage1_64k_granule_page_and_block() {
    let mut r = Rig::new(SmmuV3Config::new(BASE));
    r.linear();
    let root = r.table(0x1_0000);
    let l3 = r.table(0x1_0000);
    r.wq(root, l3 | 0b11);
    r.wq(l3 + 3 * 8, DATA | 0b11 | S1_RW);
    r.wq(root + 8, 0x8000_0000 | 0b01 | S1_RW);
    let mut c = cd(root, 5);
    c.set_tg0(Granule::K64);
    r.put(CDTAB, &c);
    r.ste(1, &s1_ste(CDTAB, 0, S1Fmt::Linear));
    let t = r.dma(1, None, 0x3_1234, Access::Read).unwrap();
    assert_eq!((t.pa.0, t.page_size.bytes()), (DATA + 0x1234, 0x1_0000));
    let t = r.dma(1, None, 0x2123_4567, Access::Write).unwrap();
    assert_eq!((t.pa.0, t.page_size.bytes()), (0x8123_4567, 0x2000_0000));
    // Granule not in IDR5: the CD is ILLEGAL.
    let mut cfg = SmmuV3Config::new(BASE);
    cfg.gran64k = false;
    let mut r2 = Rig::new(cfg);
    r2.linear();
    r2.put(CDTAB, &c);
    r2.ste(1, &s1_ste(CDTAB, 0, S1Fmt::Linear));
    assert_eq!(fault_code(r2.dma(1, None, 0x3_1234, Access::Read)).0, 0x0a);
}

/// A machine with an SMMUv3 (stage 1 through a linear stream table, command and event
/// queues, event-queue MSI configured) saved as a snapshot and loaded: the registers
/// come back bit for bit, the file re-saves identically, and DMA translates the same.
#[test]
fn snapshot_round_trip_keeps_registers_and_translation() {
    use emulator::snapshot;
    let mut m = Machine::with_ram(&[(PhysAddr(0), RAM)]).unwrap();
    m.add_unit(Box::new(SmmuV3Unit::new(SmmuV3Config::new(BASE)).unwrap()))
        .unwrap();
    let a = m
        .add_device(Device {
            rid: rid(0x10),
            pasid: None,
            unit: BASE,
        })
        .unwrap();
    for (at, len) in [
        (STRTAB, 0x1_0000),
        (CDTAB, 0x1000),
        (EVTQ, 0x1000),
        (CMDQ, 0x1000),
    ] {
        m.mem_mut().write(PhysAddr(at), &vec![0; len]).unwrap();
    }
    for t in [0x40_0000u64, 0x40_1000, 0x40_2000, DATA] {
        m.mem_mut().write(PhysAddr(t), &[0; 4096]).unwrap();
    }
    // 39-bit VA, 4 KiB: L1 @0x40_0000 -> L2 @0x40_1000 -> L3 @0x40_2000; VA 0x1000 ->
    // DATA, read/write.
    let w = |m: &mut Machine, at: u64, v: u64| m.mem_mut().write_u64(PhysAddr(at), v).unwrap();
    w(&mut m, 0x40_0000, 0x40_1000 | 0b11);
    w(&mut m, 0x40_1000, 0x40_2000 | 0b11);
    w(&mut m, 0x40_2000 + 8, DATA | S1_RW | 0b11);
    m.mem_mut()
        .write(PhysAddr(CDTAB), cd(0x40_0000, 5).as_bytes())
        .unwrap();
    m.mem_mut()
        .write(
            PhysAddr(STRTAB + 0x10 * 64),
            s1_ste(CDTAB, 0, S1Fmt::Linear).as_bytes(),
        )
        .unwrap();
    let reg = |m: &mut Machine, off: u64, width: u8, v: u64| {
        m.mmio_write(PhysAddr(BASE.0 + off), width, v).unwrap()
    };
    let st = StrtabCfg {
        fmt: StrtabFmt::Linear,
        log2size: 8,
        split: 6,
    };
    reg(&mut m, regs::STRTAB_BASE, 8, STRTAB);
    reg(&mut m, regs::STRTAB_BASE_CFG, 4, st.to_reg() as u64);
    reg(&mut m, regs::CMDQ_BASE, 8, CMDQ | 6);
    reg(&mut m, regs::EVENTQ_BASE, 8, EVTQ | 4);
    reg(&mut m, regs::EVENTQ_IRQ_CFG0, 8, MSI);
    reg(&mut m, regs::EVENTQ_IRQ_CFG1, 4, 0x1234);
    let on = (CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET).value as u64;
    reg(&mut m, regs::CR0, 4, on);
    m.dma_write(&a, Iova(0x1008), &[3; 8]).unwrap();
    assert!(m.dma_write(&a, Iova(0x5000), &[3; 8]).is_err()); // one event queued
    let before = m.unit(BASE).unwrap().save_registers();
    let bytes = snapshot::to_bytes(&m);
    let mut loaded = snapshot::from_bytes(&bytes).unwrap();
    let unit = loaded.unit(BASE).unwrap();
    assert_eq!(unit.kind().name(), "smmuv3");
    assert_eq!(unit.save_registers(), before);
    assert_eq!(snapshot::to_bytes(&loaded), bytes);
    let prod = loaded
        .mmio_read(PhysAddr(BASE.0 + regs::EVENTQ_PROD), 4)
        .unwrap();
    assert_eq!(prod, 1, "the queued event is still there");
    // The same translations: VA 0x1010 -> DATA + 0x10, VA 0x5000 still faults.
    loaded.dma_write(&a, Iova(0x1010), &[9; 8]).unwrap();
    assert_eq!(
        loaded.mem_mut().read_u64(PhysAddr(DATA + 0x10)).unwrap(),
        0x0909_0909_0909_0909
    );
    assert_eq!(
        loaded.mem_mut().read_u64(PhysAddr(DATA + 8)).unwrap(),
        0x0303_0303_0303_0303
    );
    assert!(loaded.dma_write(&a, Iova(0x5000), &[3; 8]).is_err());
    let prod = loaded
        .mmio_read(PhysAddr(BASE.0 + regs::EVENTQ_PROD), 4)
        .unwrap();
    assert_eq!(prod, 2, "the restored unit records into the same queue");
}

#[test]
fn restore_refuses_malformed_register_sets() {
    use emulator::model::RegisterValue;
    use emulator::smmuv3::SmmuV3RestoreError as E;
    let ok = SmmuV3Unit::new(SmmuV3Config::new(BASE))
        .unwrap()
        .save_registers();
    assert!(SmmuV3Unit::restore(BASE, &ok).is_ok());
    let mut short = ok.clone();
    short.pop();
    assert_eq!(
        SmmuV3Unit::restore(BASE, &short).err(),
        Some(E::Missing {
            offset: regs::EVENTQ_IRQ_CFG2
        })
    );
    let mut dup = ok.clone();
    dup.push(ok[0]);
    assert_eq!(
        SmmuV3Unit::restore(BASE, &dup).err(),
        Some(E::Duplicate { offset: regs::IDR0 })
    );
    let mut wide = ok.clone();
    let i = wide.iter().position(|r| r.offset == regs::CR0).unwrap();
    wide[i].width = 8;
    assert_eq!(
        SmmuV3Unit::restore(BASE, &wide).err(),
        Some(E::BadWidth {
            offset: regs::CR0,
            width: 8,
            expected: 4
        })
    );
    let mut unk = ok.clone();
    unk.push(RegisterValue {
        offset: 0x5000,
        width: 4,
        value: 0,
    });
    assert_eq!(
        SmmuV3Unit::restore(BASE, &unk).err(),
        Some(E::UnknownOffset { offset: 0x5000 })
    );
    // IDR0 with TTF = AArch32 too (bit 2): the model has no AArch32 tables.
    let mut idr = ok.clone();
    idr[0].value |= 1 << 2;
    assert!(matches!(
        SmmuV3Unit::restore(BASE, &idr),
        Err(E::BadIdr { offset: 0, .. })
    ));
    // IDR1 with SIDSIZE 33: refused by the configuration check.
    let mut sid = ok;
    let i = sid.iter().position(|r| r.offset == regs::IDR1).unwrap();
    sid[i].value = (sid[i].value & !0x3f) | 33;
    assert!(matches!(
        SmmuV3Unit::restore(BASE, &sid),
        Err(E::Config(_)) | Err(E::BadIdr { .. })
    ));
}
