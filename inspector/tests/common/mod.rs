//! Builds emulator snapshots for the inspector's tests: an emulated machine with one
//! VT-d unit programmed through its registers, tables written into its memory the way a
//! driver writes them (bit layouts from `vtd::hw`), saved as an ELF core.
#![allow(dead_code)]

use emulator::machine::{Device, Machine};
use emulator::vtd::{VtdConfig, VtdUnit};
use iommu_core::kho::{write_handover, Client, FrameAllocator};
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::{DomainId, Pasid, PhysAddr, RegisterAccess, RequesterId};
use std::path::{Path, PathBuf};
use vtd::driver::{DomainKind, Mode};
use vtd::hw::pasid::{pasid_dir_index, pasid_table_index, PasidDirEntry, PasidEntry};
use vtd::hw::pte::{level_index, SlPte, PTE_ADDR_MASK, SL_PS};
use vtd::hw::regs::{self, field_mask32, field_value, Ttm, GCMD, GSTS, RTADDR};
use vtd::hw::root::{
    AddressWidth, ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry, TranslationType,
};
use vtd::record::{Record, RecordDevice, RecordDomain, COMPATIBLE};

/// MMIO base of the unit.
pub const UNIT: PhysAddr = PhysAddr(0xfed9_0000);
/// RAM: 64 MiB at 0.
pub const RAM: (u64, u64) = (0, 64 << 20);
/// Where table pages come from.
pub const POOL: u64 = 0x10_0000;

/// A machine with one VT-d unit and a bump allocator of table pages.
pub struct Rig {
    pub m: Machine,
    pub next: u64,
    /// Every page handed out for tables and structures.
    pub pages: Vec<u64>,
    pub root: u64,
    pub scalable: bool,
}

impl Rig {
    fn with(config: VtdConfig, scalable: bool, pool: u64) -> Self {
        let mut m = Machine::with_ram(&[(PhysAddr(RAM.0), RAM.1)]).expect("RAM layout");
        m.add_unit(Box::new(VtdUnit::new(config).expect("VT-d unit")))
            .expect("unit on the bus");
        let mut r = Rig {
            m,
            next: pool,
            pages: Vec::new(),
            root: 0,
            scalable,
        };
        r.root = r.page();
        let ttm = if scalable { Ttm::Scalable } else { Ttm::Legacy };
        let mut regs = r.m.unit_regs(UNIT).expect("unit");
        regs.write64(regs::RTADDR, r.root | field_value(RTADDR::TTM, ttm.bits()));
        regs.write32(regs::GCMD, field_mask32(GCMD::SRTP));
        assert!(GSTS::RTPS.is_set(regs.read32(regs::GSTS)), "root latched");
        regs.write32(regs::GCMD, field_mask32(GCMD::TE));
        assert!(GSTS::TES.is_set(regs.read32(regs::GSTS)), "translation on");
        r
    }

    /// A legacy-mode unit (VT-d 1.0 profile of the emulator).
    pub fn legacy() -> Self {
        Self::with(VtdConfig::legacy(UNIT), false, POOL)
    }

    /// The same with tables allocated from `pool` (to move every table).
    pub fn legacy_at(pool: u64) -> Self {
        Self::with(VtdConfig::legacy(UNIT), false, pool)
    }

    /// A scalable-mode unit.
    pub fn scalable() -> Self {
        Self::with(VtdConfig::scalable(UNIT), true, POOL)
    }

    /// A zeroed page.
    pub fn page(&mut self) -> u64 {
        let p = self.next;
        self.next += 4096;
        self.m
            .mem_mut()
            .write(PhysAddr(p), &[0u8; 4096])
            .expect("page in RAM");
        self.pages.push(p);
        p
    }

    fn w64(&mut self, at: u64, v: u64) {
        self.m.mem_mut().write_u64(PhysAddr(at), v).expect("write");
    }

    fn r64(&mut self, at: u64) -> u64 {
        self.m.mem_mut().read_u64(PhysAddr(at)).expect("read")
    }

    fn wq(&mut self, at: u64, q: &[u64]) {
        for (i, v) in q.iter().enumerate() {
            self.w64(at + 8 * i as u64, *v);
        }
    }

    /// Adds a device to the machine's device note.
    pub fn device(&mut self, rid: RequesterId, pasid: Option<u32>) {
        self.m
            .add_device(Device {
                rid,
                pasid: pasid.map(Pasid),
                unit: UNIT,
            })
            .expect("device");
    }

    /// Legacy: context entry for `rid` with a new `levels`-level second-stage table;
    /// returns the table root.
    pub fn legacy_context(&mut self, rid: RequesterId, did: u16, levels: u32) -> u64 {
        let slpt = self.page();
        self.legacy_context_to(rid, did, levels, slpt);
        slpt
    }

    /// Legacy: context entry for `rid` pointing to an existing table.
    pub fn legacy_context_to(&mut self, rid: RequesterId, did: u16, levels: u32, slpt: u64) {
        let re_at = self.root + rid.bus as u64 * 16;
        let mut re = RootEntry::from_qwords([self.r64(re_at), self.r64(re_at + 8)]);
        if !re.present() {
            let ct = self.page();
            re = RootEntry::new(ct);
            self.wq(re_at, &re.qwords());
        }
        let aw = AddressWidth::from_levels(levels).expect("levels");
        let ce = ContextEntry::new(slpt, aw, did, TranslationType::Untranslated);
        let at = re.context_table() + rid.devfn as u64 * 16;
        self.wq(at, &ce.qwords());
    }

    /// Legacy: a raw context entry (for broken-entry tests); returns its address.
    pub fn legacy_context_raw(&mut self, rid: RequesterId, q: [u64; 2]) -> u64 {
        let re_at = self.root + rid.bus as u64 * 16;
        let mut re = RootEntry::from_qwords([self.r64(re_at), self.r64(re_at + 8)]);
        if !re.present() {
            let ct = self.page();
            re = RootEntry::new(ct);
            self.wq(re_at, &re.qwords());
        }
        let at = re.context_table() + rid.devfn as u64 * 16;
        self.wq(at, &q);
        at
    }

    /// Scalable: context entry for `rid` with a PASID directory; PASID entry `pasid`
    /// second-stage with a new table; returns the table root.
    pub fn scalable_context(&mut self, rid: RequesterId, pasid: u32, did: u16, levels: u32) -> u64 {
        let re_at = self.root + rid.bus as u64 * 16;
        let mut re = ScalableRootEntry::from_qwords([self.r64(re_at), self.r64(re_at + 8)]);
        let (present, mut table) = re.half_for(rid.devfn);
        if !present {
            table = self.page();
            let (lo, hi) = if rid.devfn & 0x80 != 0 {
                (re.lower_present().then(|| re.lower_table()), Some(table))
            } else {
                (Some(table), re.upper_present().then(|| re.upper_table()))
            };
            re = ScalableRootEntry::new(lo, hi);
            self.wq(re_at, &re.qwords());
        }
        let ce_at = table + (rid.devfn & 0x7f) as u64 * 32;
        let mut ce = ScalableContextEntry::from_qwords([
            self.r64(ce_at),
            self.r64(ce_at + 8),
            self.r64(ce_at + 16),
            self.r64(ce_at + 24),
        ]);
        if !ce.present() {
            let dir = self.page();
            ce = ScalableContextEntry::new(dir, 0);
            ce.set_paside(true);
            self.wq(ce_at, &ce.qwords());
        }
        let de_at = ce.pasid_dir() + pasid_dir_index(pasid) * 8;
        let mut de = PasidDirEntry::from_qwords([self.r64(de_at)]);
        if !de.present() {
            de = PasidDirEntry::new(self.page());
            self.wq(de_at, &de.qwords());
        }
        let slpt = self.page();
        let aw = AddressWidth::from_levels(levels).expect("levels");
        let pe = PasidEntry::second_stage(slpt, aw, did);
        self.wq(de.table() + pasid_table_index(pasid) * 64, &pe.qwords());
        slpt
    }

    /// Scalable: PASID entry `pasid` of `rid` (context entry already made by
    /// [`scalable_context`](Self::scalable_context)) becomes first-stage, 4-level, with a
    /// new table; returns the table root.
    pub fn first_stage_pasid(&mut self, rid: RequesterId, pasid: u32, did: u16) -> u64 {
        let re_at = self.root + rid.bus as u64 * 16;
        let re = ScalableRootEntry::from_qwords([self.r64(re_at), self.r64(re_at + 8)]);
        let (_, table) = re.half_for(rid.devfn);
        let ce_at = table + (rid.devfn & 0x7f) as u64 * 32;
        let ce = ScalableContextEntry::from_qwords([self.r64(ce_at), 0, 0, 0]);
        let de_at = ce.pasid_dir() + pasid_dir_index(pasid) * 8;
        let mut de = PasidDirEntry::from_qwords([self.r64(de_at)]);
        if !de.present() {
            de = PasidDirEntry::new(self.page());
            self.wq(de_at, &de.qwords());
        }
        let flpt = self.page();
        let pe = PasidEntry::first_stage(flpt, vtd::hw::pasid::Flpm::Level4, did);
        self.wq(de.table() + pasid_table_index(pasid) * 64, &pe.qwords());
        flpt
    }

    /// Maps a user 4 KiB page in the first-stage table at `root` (4 levels).
    pub fn map_fl(&mut self, root: u64, iova: u64, pa: u64, write: bool) {
        use vtd::hw::pte::{FlPte, FL_P};
        let mut table = root;
        for level in (2..=4).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = self.r64(at);
            if v & FL_P == 0 {
                let t = self.page();
                self.w64(at, FlPte::table(t).raw());
                table = t;
            } else {
                table = v & PTE_ADDR_MASK;
            }
        }
        self.w64(
            table + level_index(iova, 1) * 8,
            FlPte::page(pa, write).raw(),
        );
    }

    /// Maps `iova` to `pa` (4 KiB, 2 MiB or 1 GiB) in the second-stage table at `root`.
    #[allow(clippy::too_many_arguments)]
    pub fn map(&mut self, root: u64, levels: u32, iova: u64, pa: u64, leaf: u32, r: bool, w: bool) {
        let mut table = root;
        for level in ((leaf + 1)..=levels).rev() {
            let at = table + level_index(iova, level) * 8;
            let v = self.r64(at);
            if v & 3 == 0 {
                let t = self.page();
                self.w64(at, SlPte::table(t).raw());
                table = t;
            } else {
                assert_eq!(v & SL_PS, 0, "already mapped by a large page");
                table = v & PTE_ADDR_MASK;
            }
        }
        let at = table + level_index(iova, leaf) * 8;
        let pte = if leaf == 1 {
            SlPte::page(pa, r, w)
        } else {
            SlPte::large_page(pa, r, w)
        };
        self.w64(at, pte.raw());
    }

    /// The address of the leaf entry of `iova` (4 KiB mapping) under `root`.
    pub fn leaf_entry(&mut self, root: u64, levels: u32, iova: u64) -> u64 {
        let mut table = root;
        for level in (2..=levels).rev() {
            let v = self.r64(table + level_index(iova, level) * 8);
            table = v & PTE_ADDR_MASK;
        }
        table + level_index(iova, 1) * 8
    }

    /// Writes a raw qword.
    pub fn poke(&mut self, at: u64, v: u64) {
        self.w64(at, v);
    }

    /// Reads a raw qword.
    pub fn peek(&mut self, at: u64) -> u64 {
        self.r64(at)
    }

    /// The snapshot bytes.
    pub fn bytes(&self) -> Vec<u8> {
        emulator::snapshot::to_bytes(&self.m)
    }

    /// Saves the snapshot under `dir/name`.
    pub fn save(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        emulator::snapshot::save(&self.m, &p).expect("snapshot saved");
        p
    }

    /// Writes a KHO handover preserving `pages` with a VT-d record built from
    /// `domains`/`devices`; returns the blob address.
    pub fn handover(
        &mut self,
        pages: &[u64],
        domains: &[(u16, u64, u8)],
        devices: &[(RequesterId, Option<u32>, u16)],
    ) -> PhysAddr {
        self.handover_with(pages, domains, devices, |_| {})
    }

    /// [`Rig::handover`] with the record changed by `edit` before it is encoded.
    pub fn handover_with(
        &mut self,
        pages: &[u64],
        domains: &[(u16, u64, u8)],
        devices: &[(RequesterId, Option<u32>, u16)],
        edit: impl FnOnce(&mut Record),
    ) -> PhysAddr {
        let mut set = PageSet::new();
        for &p in pages {
            set.insert(PhysAddr(p), 0).expect("page in set");
        }
        let mut sorted: Vec<u64> = pages.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut runs: Vec<(PhysAddr, u64)> = Vec::new();
        for p in sorted {
            match runs.last_mut() {
                Some((s, n)) if s.0 + *n * 4096 == p => *n += 1,
                _ => runs.push((PhysAddr(p), 1)),
            }
        }
        let (cap, ecap, rtaddr) = {
            let mut r = self.m.unit_regs(UNIT).expect("unit");
            (
                r.read64(regs::CAP),
                r.read64(regs::ECAP),
                r.read64(regs::RTADDR),
            )
        };
        let rec = Record {
            mmio_base: UNIT,
            rtaddr,
            cap,
            ecap,
            mode: if self.scalable {
                Mode::Scalable
            } else {
                Mode::Legacy
            },
            haw: 48,
            domains: domains
                .iter()
                .map(|&(id, root, levels)| RecordDomain {
                    id: DomainId(id),
                    kind: DomainKind::SecondStage,
                    levels,
                    root: PhysAddr(root),
                })
                .collect(),
            devices: devices
                .iter()
                .map(|&(rid, pasid, d)| RecordDevice {
                    rid,
                    pasid: pasid.map(Pasid),
                    domain: DomainId(d),
                })
                .collect(),
            pages: runs,
        };
        let mut rec = rec;
        edit(&mut rec);
        let payload = rec.encode();
        let name = vtd::handover::client_name(UNIT);
        let clients = [Client {
            name: &name,
            compatible: COMPATIBLE,
            payload: &payload,
        }];
        struct Bump(u64);
        impl FrameAllocator for Bump {
            fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr> {
                let p = self.0;
                self.0 += pages as u64 * 4096;
                Some(PhysAddr(p))
            }
        }
        let mut alloc = Bump(0x300_0000);
        let w = write_handover(self.m.mem_mut(), &mut alloc, &set, &clients).expect("handover");
        w.blob
    }
}

/// `0000:bb:dd.f`.
pub fn rid(bus: u8, dev: u8, func: u8) -> RequesterId {
    RequesterId::new(0, bus, dev, func)
}

/// A legacy machine with two devices in two domains and a few mappings of every page
/// size; returns the rig and the two table roots.
pub fn sample_legacy(pool: u64) -> (Rig, u64, u64) {
    let mut r = Rig::legacy_at(pool);
    let a = rid(0, 2, 0);
    let b = rid(3, 0, 1);
    r.device(a, None);
    r.device(b, None);
    let ta = r.legacy_context(a, 1, 4);
    let tb = r.legacy_context(b, 2, 4);
    // Device A: 16 KiB contiguous, one read-only page, a 2 MiB page.
    for i in 0..4 {
        r.map(
            ta,
            4,
            0x10_0000 + i * 0x1000,
            0x80_0000 + i * 0x1000,
            1,
            true,
            true,
        );
    }
    r.map(ta, 4, 0x20_0000, 0x90_0000, 1, true, false);
    r.map(ta, 4, 0x4000_0000, 0x120_0000 & !0x1f_ffff, 2, true, true);
    // Device B: two pages, not contiguous in PA.
    r.map(tb, 4, 0x1000, 0xa0_0000, 1, true, true);
    r.map(tb, 4, 0x2000, 0xb0_0000, 1, false, true);
    (r, ta, tb)
}

/// A scalable-mode machine: one device with its RID_PASID (0) entry and PASID 7, each
/// with a second-stage table and mappings.
pub fn sample_scalable() -> (Rig, u64, u64) {
    let mut r = Rig::scalable();
    let d = rid(0, 4, 0);
    r.device(d, None);
    r.device(d, Some(7));
    let t0 = r.scalable_context(d, 0, 5, 4);
    let t7 = r.scalable_context(d, 7, 6, 3);
    r.map(t0, 4, 0x1000, 0xc0_0000, 1, true, true);
    r.map(t0, 4, 0x2000, 0xc0_1000, 1, true, true);
    r.map(t7, 3, 0x4000_0000, 0x4000_0000, 3, true, false);
    (r, t0, t7)
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// File offset of program header `i`.
pub fn phdr(i: usize) -> usize {
    64 + 56 * i
}

/// Damaged copies of an emulator snapshot `bytes` (its PT_NOTE is program header 0 and it
/// has at least two PT_LOADs, the first holding more than one page), each breaking one
/// layout rule both readers share, named by the rule:
/// - `repeat-other-bytes`: PT_LOAD 2 repeats the second page of PT_LOAD 1 (wholly
///   inside it) but its file bytes differ;
/// - `unaligned-paddr`: PT_LOAD 1's `p_paddr` is 8 bytes past a page boundary;
/// - `device-without-unit`: the first device of the device note is behind a unit at
///   0xdead_0000, which the machine does not have.
pub fn layout_breaking_files(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let (p1, p2) = (phdr(1), phdr(2));
    let paddr1 = le64(bytes, p1 + 24);
    let size1 = le64(bytes, p1 + 32);
    let off2 = le64(bytes, p2 + 8) as usize;
    assert!(size1 > 4096, "PT_LOAD 1 has more than one page");
    let mut repeat = bytes.to_vec();
    repeat[p2 + 24..p2 + 32].copy_from_slice(&(paddr1 + 4096).to_le_bytes());
    repeat[p2 + 32..p2 + 40].copy_from_slice(&4096u64.to_le_bytes());
    repeat[p2 + 40..p2 + 48].copy_from_slice(&4096u64.to_le_bytes());
    let second_page = le64(bytes, p1 + 8) as usize + 4096;
    repeat[off2..off2 + 4096].copy_from_slice(&bytes[second_page..second_page + 4096]);
    repeat[off2 + 100] ^= 0x5a;
    let mut unaligned = bytes.to_vec();
    unaligned[p1 + 24..p1 + 32].copy_from_slice(&(paddr1 + 8).to_le_bytes());
    let mut orphan = bytes.to_vec();
    let dev_entry = device_note_desc(bytes) + 8;
    orphan[dev_entry + 16..dev_entry + 24].copy_from_slice(&0xdead_0000u64.to_le_bytes());
    vec![
        ("repeat-other-bytes", repeat),
        ("unaligned-paddr", unaligned),
        ("device-without-unit", orphan),
    ]
}

/// File offset of the device note's descriptor.
pub fn device_note_desc(bytes: &[u8]) -> usize {
    let start = le64(bytes, phdr(0) + 8) as usize;
    let end = start + le64(bytes, phdr(0) + 32) as usize;
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut pos = start;
    while pos < end {
        let (namesz, descsz, t) = (word(pos), word(pos + 4), word(pos + 8) as u32);
        let desc = pos + 12 + namesz.div_ceil(4) * 4;
        if t == emulator::snapshot::NT_IOMMU_DEVICES {
            return desc;
        }
        pos = desc + descsz.div_ceil(4) * 4;
    }
    panic!("no device note")
}

/// Sets the value of the register at `reg` in the (first) unit note of snapshot `bytes`.
pub fn set_note_register(bytes: &mut [u8], reg: u64, value: u64) {
    let start = le64(bytes, phdr(0) + 8) as usize;
    let end = start + le64(bytes, phdr(0) + 32) as usize;
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let mut pos = start;
    while pos < end {
        let (namesz, descsz, t) = (word(bytes, pos), word(bytes, pos + 4), word(bytes, pos + 8));
        let desc = pos + 12 + namesz.div_ceil(4) * 4;
        if t as u32 == emulator::snapshot::NT_IOMMU_UNIT {
            let n = word(bytes, desc + 4);
            for i in 0..n {
                let e = desc + 24 + 24 * i;
                if le64(bytes, e) == reg {
                    bytes[e + 16..e + 24].copy_from_slice(&value.to_le_bytes());
                    return;
                }
            }
        }
        pos = desc + descsz.div_ceil(4) * 4;
    }
    panic!("no register {reg:#x} in a unit note")
}
