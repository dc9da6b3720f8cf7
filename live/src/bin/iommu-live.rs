//! `iommu-live`: the `vtd` driver and handover on a running Linux, with QEMU's `edu`
//! devices doing the DMA.
//!
//! ```text
//! iommu-live run-old   --mode M --mem BASE:SIZE --preserved BDF --other BDF [--iommu BASE]
//! iommu-live start-dma --preserved BDF
//! iommu-live run-new   --mode M --mem BASE:SIZE --preserved BDF --other BDF --blob ADDR [--iommu BASE]
//! iommu-live status    [--iommu BASE]
//! iommu-live dump      --mem BASE:SIZE [--iommu BASE]
//! iommu-live amdvi-run-old --mode v1|v2 --mem BASE:SIZE --preserved BDF --other BDF [--iommu BASE]
//! iommu-live amdvi-run-new --mode v1|v2 --mem BASE:SIZE --preserved BDF --other BDF --blob ADDR [--iommu BASE]
//! iommu-live amdvi-status [--iommu BASE]
//! iommu-live amdvi-dump   --mem BASE:SIZE [--iommu BASE]
//! ```
//!
//! The `amdvi-` subcommands do the same with the `amdvi` driver and handover (see
//! the `amdvi` module); `start-dma` serves both.
//!
//! `run-old` (old kernel): bring-up, two domains, mappings (4K, 2M, 1G where the unit
//! allows, read-only, a high IOVA), attach, DMA checked byte for byte, then loads the
//! in-flight pattern into the preserved device, prepares (KHO blob; prints
//! `BLOB=<address>`) and freezes. `start-dma`: starts the preserved device's DMA and
//! returns at once (the caller runs `kexec -e` next). `run-new` (new kernel): reads the
//! blob, adopts, checks no fault was recorded across the kexec, verifies, checks the
//! in-flight DMA landed, DMAs through the adopted tables, checks the unpreserved device
//! faults, finishes, maps anew and DMAs again. `status`: the unit's main registers.
//! `dump`: the unit's live structures in `iommu-inspect`'s JSON schema
//! (`iommu-inspect/dump/v2`), read by the inspector's code from a copy of the reserved
//! range and the unit's registers.
//!
//! Every check prints `PASS: <what>`; the first failure prints `FAIL: <what>` and the
//! exit status is 1 (2 for a command-line error).

use iommu_core::mem::PhysMem;
use iommu_core::{DomainId, Iova, PhysAddr, RegisterAccess, RequesterId};
use iommu_live::args::{self, ArgError, Command, RunOptions, Target};
use iommu_live::devmem::Registers;
use iommu_live::edu::{Direction, Edu, BUFFER_SIZE};
use iommu_live::layout::{iova, BUFFERS_BYTES, PAGE};
use iommu_live::pci::{PciFunction, SYSFS_PCI_DEVICES};
use iommu_live::platform::Platform;
use std::path::Path;
use std::process::ExitCode;
use vtd::driver::{DomainKind, Fault, Unit, UnitConfig};
use vtd::handover::Selection;
use vtd::hw::regs::{self, GSTS};

#[path = "iommu-live/amdvi.rs"]
mod amdvi;
#[path = "iommu-live/checks.rs"]
mod checks;

use checks::{map_pass, Driver, Expected, Mapping};

/// Polls of an `edu` transfer (1 ms apart): a transfer takes about 100 ms of virtual
/// time; TCG on a loaded host may stretch that.
const EDU_POLLS: u32 = 20_000;

/// A failed step: what was checked and what was found.
type Step<T = ()> = Result<T, String>;

fn pass(what: impl AsRef<str>) {
    println!("PASS: {}", what.as_ref());
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match Command::parse(&argv) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let r = match cmd.name.as_str() {
        "run-old" => RunOptions::parse(&cmd, false, false).map(run_old),
        "start-dma" => args::parse_start_dma(&cmd).map(start_dma),
        "run-new" => RunOptions::parse(&cmd, true, false).map(run_new),
        "amdvi-run-old" => RunOptions::parse(&cmd, false, true).map(amdvi::run_old),
        "amdvi-run-new" => RunOptions::parse(&cmd, true, true).map(amdvi::run_new),
        "amdvi-dump" => cmd
            .only(&["mem", "iommu"])
            .and_then(|()| args::parse_range("--mem", cmd.need("mem")?))
            .and_then(|r| {
                let iommu = cmd.get("iommu");
                Ok((r, iommu.map(|v| args::parse_u64("--iommu", v)).transpose()?))
            })
            .map(amdvi::dump),
        "amdvi-status" => cmd
            .only(&["iommu"])
            .and_then(|()| {
                cmd.get("iommu")
                    .map(|v| args::parse_u64("--iommu", v))
                    .transpose()
            })
            .map(amdvi::status),
        "status" => cmd
            .only(&["iommu"])
            .and_then(|()| args::iommu_base(&cmd))
            .map(status),
        "dump" => cmd
            .only(&["mem", "iommu"])
            .and_then(|()| args::parse_range("--mem", cmd.need("mem")?))
            .and_then(|r| Ok((r, args::iommu_base(&cmd)?)))
            .map(dump),
        _ => Err(ArgError {
            option: "subcommand".into(),
            value: cmd.name.clone(),
            problem: "expected run-old, start-dma, run-new, status, dump, amdvi-run-old, \
                      amdvi-run-new, amdvi-status or amdvi-dump"
                .into(),
        }),
    };
    match r {
        Err(e) => usage(&e),
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(what)) => {
            println!("FAIL: {what}");
            ExitCode::from(1)
        }
    }
}

fn usage(e: &ArgError) -> ExitCode {
    println!("FAIL: command line: {e}");
    eprintln!(
        "usage: iommu-live run-old|run-new --mode legacy|scalable-ss|scalable-fs --mem BASE:SIZE \
         --preserved BDF --other BDF [--blob ADDR (run-new)] [--iommu BASE]\n       \
         iommu-live start-dma --preserved BDF\n       \
         iommu-live status [--iommu BASE]\n       \
         iommu-live dump --mem BASE:SIZE [--iommu BASE]\n       \
         iommu-live amdvi-run-old|amdvi-run-new --mode v1|v2 --mem BASE:SIZE \
         --preserved BDF --other BDF [--blob ADDR (run-new)] [--iommu BASE]\n       \
         iommu-live amdvi-status [--iommu BASE]\n       \
         iommu-live amdvi-dump --mem BASE:SIZE [--iommu BASE]"
    );
    ExitCode::from(2)
}

/// An `edu` device, memory decoding and bus mastering on.
struct Dev {
    rid: RequesterId,
    edu: Edu<Registers>,
}

impl Dev {
    fn open(rid: RequesterId) -> Step<Self> {
        let f = PciFunction::new(Path::new(SYSFS_PCI_DEVICES), rid);
        let before = f.command().map_err(|e| e.to_string())?;
        let after = f.enable().map_err(|e| e.to_string())?;
        pass(format!(
            "pci {rid}: command {before:#06x} -> {after:#06x} (memory space and bus master on)"
        ));
        let bar = f.map_bar0().map_err(|e| e.to_string())?;
        let edu = Edu::new(bar).map_err(|e| format!("pci {rid}: {e}"))?;
        Ok(Self { rid, edu })
    }

    /// One transfer of the whole buffer, waited for.
    fn transfer(&mut self, dir: Direction, addr: u64) -> Step {
        self.edu
            .transfer(dir, addr, 0, BUFFER_SIZE, EDU_POLLS, sleep_1ms)
            .map_err(|x| format!("pci {}: DMA {dir:?} at {addr:#x}: {x}", self.rid))
    }

    /// DMA read: memory at `addr` into the buffer.
    fn read(&mut self, addr: u64) -> Step {
        self.transfer(Direction::MemoryToBuffer, addr)
    }

    /// DMA write: the buffer to memory at `addr`.
    fn write(&mut self, addr: u64) -> Step {
        self.transfer(Direction::BufferToMemory, addr)
    }

    /// Waits for a transfer started earlier (by another process, another kernel).
    fn wait(&mut self, what: &str) -> Step {
        self.edu
            .wait(EDU_POLLS, sleep_1ms)
            .map_err(|e| format!("pci {}: {what}: {e}", self.rid))
    }
}

fn sleep_1ms() {
    std::thread::sleep(std::time::Duration::from_millis(1));
}

fn read_page(p: &Platform, pa: u64) -> Step<Vec<u8>> {
    let mut b = vec![0u8; PAGE as usize];
    p.mem
        .read(PhysAddr(pa), &mut b)
        .map_err(|e| format!("reading {pa:#x}: {e}"))?;
    Ok(b)
}

fn write_page(p: &mut Platform, pa: u64, data: &[u8]) -> Step {
    p.mem
        .write(PhysAddr(pa), data)
        .map_err(|e| format!("writing {pa:#x}: {e}"))
}

fn zero_page(p: &mut Platform, pa: u64) -> Step {
    write_page(p, pa, &[0u8; PAGE as usize])
}

/// Checks the page at `pa` holds `want`, naming the first differing byte.
fn expect_page(p: &Platform, pa: u64, want: &[u8], what: &str) -> Step {
    let got = read_page(p, pa)?;
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => {
            pass(format!("{what}: {} bytes at {pa:#x} equal", want.len()));
            Ok(())
        }
        Some(i) => Err(format!(
            "{what}: byte {i:#x} at {:#x} is {:#04x}, expected {:#04x}",
            pa + i as u64,
            got[i],
            want[i]
        )),
    }
}

/// The CPU writes `data` at `pa`; the device reads it (at `addr`) into its buffer.
fn load(p: &mut Platform, dev: &mut Dev, pa: u64, addr: u64, data: &[u8]) -> Step {
    write_page(p, pa, data)?;
    dev.read(addr)
}

/// The device writes its buffer to `addr`; the page at `pa` must then hold `want`.
fn store_check(p: &Platform, dev: &mut Dev, addr: u64, pa: u64, want: &[u8], what: &str) -> Step {
    dev.write(addr)?;
    expect_page(p, pa, want, what)
}

/// GSTS, which must have translation enabled.
fn translation_on(regs: &mut Registers, what: &str) -> Step<u32> {
    let gsts = regs.read32(regs::GSTS);
    if GSTS::TES.is_set(gsts) {
        Ok(gsts)
    } else {
        Err(format!("{what}: GSTS {gsts:#x} has translation off"))
    }
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> Vec<String> {
    items.iter().map(f).collect()
}

impl Driver for Unit {
    type Kind = DomainKind;

    fn new_domain(&mut self, p: &mut Platform, kind: DomainKind) -> Step<DomainId> {
        self.create_domain(&mut p.hw(), kind)
            .map_err(|e| format!("domain: {e}"))
    }

    fn map(&mut self, p: &mut Platform, m: Mapping) -> Step {
        let (did, iova, pa, ps, perms) = m;
        let r = Unit::map(
            self,
            &mut p.hw(),
            did,
            Iova(iova),
            PhysAddr(pa),
            ps.bytes(),
            ps,
            perms,
        );
        map_pass(m, r.map_err(|e| e.to_string()))
    }

    fn attach(&mut self, p: &mut Platform, rid: RequesterId, did: DomainId) -> Step {
        Unit::attach(self, &mut p.hw(), rid, did)
            .map_err(|e| format!("attach {rid} to {did}: {e}"))?;
        pass(format!("attach {rid} to {did}"));
        Ok(())
    }

    /// Reads the unit's fault records.
    fn expect_faults(&mut self, p: &mut Platform, expected: &[Expected], what: &str) -> Step {
        let faults = self.poll_faults(&mut p.hw());
        let names = list(&faults, |f| f.to_string());
        let matches = |f: &Fault, &(rid, addr, write): &Expected| {
            f.rid == rid && f.addr == addr & !(PAGE - 1) && f.write == write
        };
        checks::match_faults(&faults, &names, expected, matches, (what, "fault record"))
    }

    fn finish(&mut self, p: &mut Platform) -> Step {
        let fin = Unit::finish(self, &mut p.hw()).map_err(|e| format!("finish: {e}"))?;
        pass(format!(
            "finish: {} pages freed, {} kept",
            fin.pages_freed, fin.pages_kept
        ));
        Ok(())
    }
}

/// The VT-d mode, domain kind and register base of `c`.
fn vtd_target(c: &RunOptions) -> Step<(vtd::driver::Mode, DomainKind, u64)> {
    match c.target {
        Target::Vtd { mode, kind } => Ok((mode, kind, c.iommu.unwrap_or(args::DEFAULT_IOMMU_BASE))),
        Target::AmdVi { .. } => Err("an AMD-Vi mode given to a VT-d subcommand".into()),
    }
}

/// `run-old`: everything of the old kernel up to `freeze`.
fn run_old(c: RunOptions) -> Step {
    let l = c.layout;
    let (mode, kind, iommu) = vtd_target(&c)?;
    let mut p = Platform::devmem(iommu, l).map_err(|e| e.to_string())?;
    for off in (0..BUFFERS_BYTES).step_by(PAGE as usize) {
        zero_page(&mut p, l.buf(off))?;
    }

    let cfg = UnitConfig::new(PhysAddr(iommu), mode);
    let mut unit = Unit::init(&mut p.hw(), &cfg).map_err(|e| format!("bring-up: {e}"))?;
    let gsts = translation_on(&mut p.regs, "bring-up")?;
    pass(format!(
        "bring-up {} at {:#x}: CAP {:#x} ECAP {:#x} GSTS {gsts:#x} (translation on)",
        c.mode_name,
        iommu,
        unit.cap(),
        unit.ecap()
    ));
    let d1 = checks::old_kernel(&mut unit, &mut p, &c, kind)?;

    let mut kho = checks::kho_with_buffers(&c)?;
    let sel = Selection {
        domains: vec![d1],
        devices: vec![c.preserved],
    };
    let r = unit
        .prepare(&mut p.hw(), &mut kho, &sel)
        .map_err(|e| format!("prepare: {e}"))?;
    pass(format!(
        "prepare: {} domain, {} device, {} pages pinned, {} leaves, {} record bytes",
        r.domains, r.devices, r.pinned_pages, r.leaves, r.record_bytes
    ));
    let blob = checks::write_blob(&mut p, &mut kho)?;
    let f = unit
        .freeze(&mut p.hw())
        .map_err(|e| format!("freeze: {e}"))?;
    translation_on(&mut p.regs, "freeze")?;
    pass(format!(
        "freeze: {} devices cleared, {} entries written, translation still on",
        f.devices_cleared, f.entries_written
    ));
    println!("BLOB={:#x}", blob.0);
    Ok(())
}

/// `start-dma`: the preserved device writes its buffer to the in-flight IOVA; returns
/// while the transfer runs.
fn start_dma(rid: RequesterId) -> Step {
    let mut a = Dev::open(rid)?;
    a.edu
        .start(Direction::BufferToMemory, iova::INFLIGHT, 0, BUFFER_SIZE)
        .map_err(|e| format!("pci {rid}: starting the in-flight DMA: {e}"))?;
    if !a.edu.busy() {
        return Err(format!("pci {rid}: the DMA finished before kexec"));
    }
    pass(format!(
        "DMA in flight: {rid} buffer -> IOVA {:#x}, {BUFFER_SIZE} bytes, busy",
        iova::INFLIGHT
    ));
    Ok(())
}

/// `run-new`: the new kernel's side.
fn run_new(c: RunOptions) -> Step {
    let l = c.layout;
    let (mode, kind, iommu) = vtd_target(&c)?;
    let mut p = Platform::devmem(iommu, l).map_err(|e| e.to_string())?;
    let (blob, preserved) = checks::read_blob(&mut p, &c)?;

    let cfg = UnitConfig::new(PhysAddr(iommu), mode);
    let (mut unit, r) = Unit::adopt_with_preserved(&mut p.hw(), &cfg, blob, preserved)
        .map_err(|f| format!("adopt: {}", f.error))?;
    checks::check_adopt(
        &c.mode_name,
        checks::Adopted {
            domains: r.domains,
            devices: r.devices,
            blocked: list(&r.blocked, |b| format!("{}: {}", b.rid, b.error)),
            refused: list(&r.refused_domains, |(d, e)| format!("{d}: {e}")),
            registers_read: r.registers_read,
            entries_read: r.entries_read,
        },
    )?;
    if !r.stale_faults.is_empty() {
        let names = list(&r.stale_faults, |f| f.to_string());
        return Err(format!("faults recorded across the kexec: {names:?}"));
    }
    pass("no fault recorded across the kexec");
    let gsts = translation_on(&mut p.regs, "adopt")?;
    pass(format!("translation stayed on: GSTS {gsts:#x}"));

    let v = unit
        .verify(&mut p.hw())
        .map_err(|e| format!("verify: {e}"))?;
    checks::check_verify(
        list(&v.failures, |(d, e)| format!("{d}: {e}")),
        list(&v.unverified_runs, |e| e.to_string()),
        (v.tables, v.leaves, v.leaf_targets_checked),
    )?;
    let did = unit
        .domains()
        .next()
        .map(|d| d.id)
        .ok_or("adopt: no domain")?;

    checks::new_kernel(&mut unit, &mut p, &c, did, kind)
}

/// `status`: the unit's main registers.
fn status(base: u64) -> Step {
    let mut r = Registers::devmem(base).map_err(|e| e.to_string())?;
    let ver = r.read32(regs::VER);
    let gsts = r.read32(regs::GSTS);
    println!(
        "VER={ver:#x} CAP={:#x} ECAP={:#x} GSTS={gsts:#x} RTADDR={:#x} FSTS={:#x}",
        r.read64(regs::CAP),
        r.read64(regs::ECAP),
        r.read64(regs::RTADDR),
        r.read32(regs::FSTS)
    );
    if ver == u32::MAX {
        return Err(format!(
            "status: no VT-d unit at {base:#x} (VER reads all ones)"
        ));
    }
    pass(format!(
        "status of the unit at {base:#x}: translation {}",
        if GSTS::TES.is_set(gsts) { "on" } else { "off" }
    ));
    Ok(())
}

/// `dump`: the live unit through `iommu-inspect`'s dump. The inspector reads a copy of
/// the reserved range (where every structure of the unit lives) as a raw image, with
/// the unit described by its live CAP, ECAP and RTADDR (GSTS is the inspector's
/// assumption, TES and RTPS set, and the JSON says `registers_assumed`).
fn dump(((base, size), iommu): ((u64, u64), u64)) -> Step {
    use inspector::model::LoadOptions;
    use inspector::vtd::UnitOverride;

    let mut r = Registers::devmem(iommu).map_err(|e| e.to_string())?;
    translation_on(&mut r, "dump")?;
    let (cap, ecap, rtaddr) = (
        r.read64(regs::CAP),
        r.read64(regs::ECAP),
        r.read64(regs::RTADDR),
    );
    let opts = LoadOptions {
        open: inspector::image::OpenAs::Raw { base },
        unit: UnitOverride {
            rtaddr: Some(regs::RTADDR::RTA.read(rtaddr) << 12),
            mode: Some(regs::Ttm::from_bits(regs::RTADDR::TTM.read(rtaddr))),
            haw: Some(regs::CAP::MGAW.read(cap) as u32 + 1),
            cap: Some(cap),
            ecap: Some(ecap),
            base: Some(iommu),
        },
        ..LoadOptions::default()
    };
    let what = format!("the unit at {iommu:#x} (RTADDR {rtaddr:#x})");
    dump_range(base, size, &opts, &what)
}

/// Dumps the reserved range `base..base + size` as a raw image with `opts` (which
/// describe the unit from its live registers) in `iommu-inspect`'s JSON, and checks
/// the output carries the dump schema; `what` names the unit in the PASS line.
fn dump_range(base: u64, size: u64, opts: &inspector::model::LoadOptions, what: &str) -> Step {
    use inspector::dump::{self, OutputFormat};
    use inspector::image::{Image, OpenAs};
    use inspector::model::{Filter, Loaded};
    use iommu_live::devmem::Window;

    let w = Window::devmem("reserved range", base, size).map_err(|e| e.to_string())?;
    // The copy is as large as the range: refused with an error, not an abort, when the
    // memory is not there.
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(size as usize)
        .map_err(|e| format!("dump: no memory for a copy of {size:#x} bytes: {e}"))?;
    bytes.resize(size as usize, 0);
    w.read_bytes(base, &mut bytes)
        .map_err(|e| format!("dump: reading the reserved range: {e}"))?;
    let image = Image::from_bytes("/dev/mem", bytes, OpenAs::Raw { base })
        .map_err(|e| format!("dump: {e}"))?;
    let loaded = Loaded::from_image(image, opts).map_err(|e| format!("dump: {e}"))?;
    let mut out = Vec::new();
    dump::dump(&loaded, &Filter::default(), OutputFormat::Json, &mut out)
        .map_err(|e| format!("dump: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    println!("{text}");
    if !text.contains(&format!("\"schema\": \"{}\"", dump::DUMP_SCHEMA)) {
        return Err(format!(
            "dump: no {} schema key in the output",
            dump::DUMP_SCHEMA
        ));
    }
    pass(format!(
        "dump: {} of {what}, {} bytes of JSON",
        dump::DUMP_SCHEMA,
        out.len()
    ));
    Ok(())
}
