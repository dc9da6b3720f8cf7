//! Plays a scenario on the emulator: one machine per mode, the VT-d driver in the old
//! kernel, the live-update handover, a kexec, the driver of the new kernel adopting the
//! unit, and DMA agents checking every byte in every phase.
//!
//! Memory layout: see [`crate::layout`]; everything lies inside the scenario's RAM.

use crate::config::{ConfigError, Mode, Scenario};
use crate::layout::{check_unit, unit_config, Layout};
use crate::report::{ModeReport, PhaseReport, Report};
use emulator::dma::{DmaAgent, DmaChecker, ExpectedFailure, MappingSpec, Workload};
use emulator::machine::{Device, Machine};
use emulator::model::Access;
use emulator::snapshot;
use emulator::vtd::VtdUnit;
use iommu_core::pgtable::{Mapping, Perms, WalkLimits};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};
use std::fmt;
use std::path::{Path, PathBuf};
use vtd::driver::{DomainKind, Hw, Mode as DriverMode, PagePool, Unit, UnitConfig};
use vtd::handover::{KhoOut, Selection};

/// Options of a run that are not part of the scenario itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Write ELF snapshots before the kexec and after adopt into this directory.
    pub save_snapshots: Option<PathBuf>,
}

/// A run could not be carried out at all (as opposed to a run that found a problem,
/// which is reported in the [`Report`]).
#[derive(Debug)]
pub enum RunError {
    /// The scenario is inconsistent.
    Config(ConfigError),
    /// A snapshot could not be written.
    Snapshot {
        /// Target file.
        path: PathBuf,
        /// Why.
        error: snapshot::SnapshotError,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "bad scenario: {e}"),
            RunError::Snapshot { path, error } => {
                write!(f, "cannot write snapshot {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for RunError {}

/// Exit status of `iommu-emu` when every mode ran clean.
pub const EXIT_OK: u8 = 0;
/// Exit status when a run found a problem (a fault, a wrong byte, an error).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a command line (or scenario) that cannot work; nothing was run.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of an I/O error (a snapshot or the report could not be written).
pub const EXIT_IO: u8 = 3;

impl RunError {
    /// The exit status `iommu-emu` gives this error: [`EXIT_USAGE`] for a scenario
    /// that cannot work, [`EXIT_IO`] for a file that could not be written.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunError::Config(_) => EXIT_USAGE,
            RunError::Snapshot { .. } => EXIT_IO,
        }
    }
}

impl From<ConfigError> for RunError {
    fn from(e: ConfigError) -> Self {
        RunError::Config(e)
    }
}

pub use crate::layout::UNPRESERVED_DEVICE;

/// One domain as the scenario set it up.
#[derive(Clone, Debug)]
struct DomainPlan {
    did: DomainId,
    mappings: Vec<MappingSpec>,
}

/// Runs every mode of `s` and reports.
pub fn run(s: &Scenario, opts: &RunOptions) -> Result<Report, RunError> {
    s.validate()?;
    check_unit(s)?;
    let layout = Layout::plan(s)?;
    if let Some(dir) = &opts.save_snapshots {
        // A path through an existing file is a bad option, not an I/O error.
        if let Some(file) = dir.ancestors().find(|p| p.exists() && !p.is_dir()) {
            return Err(ConfigError::new(
                "save-snapshots",
                dir.display().to_string(),
                format!(
                    "{} exists and is not a directory (snapshots are written into a \
                     directory, created if missing)",
                    file.display()
                ),
            )
            .into());
        }
        std::fs::create_dir_all(dir).map_err(|e| RunError::Snapshot {
            path: dir.clone(),
            error: snapshot::SnapshotError::Io {
                path: dir.clone(),
                op: "create the snapshot directory",
                kind: e.kind(),
                message: e.to_string(),
            },
        })?;
    }
    let mut report = Report {
        scenario: s.name.clone(),
        seed: s.seed,
        modes: Vec::new(),
    };
    for &mode in &s.modes {
        report.modes.push(run_mode(s, mode, &layout, opts)?);
    }
    Ok(report)
}

/// The machine of one mode plus the bookkeeping of a run.
struct Run<'a> {
    s: &'a Scenario,
    machine: Machine,
    report: ModeReport,
    /// Each device's workload with the index of its domain.
    workloads: Vec<(usize, Workload)>,
    unpreserved: DmaAgent,
    unpreserved_iova: Iova,
    unpreserved_pa: PhysAddr,
}

fn run_mode(
    s: &Scenario,
    mode: Mode,
    layout: &Layout,
    opts: &RunOptions,
) -> Result<ModeReport, RunError> {
    let base = s.unit_base;
    let (ram_base, ram_size) = s.ram;
    let mut machine = match Machine::with_ram(&[(ram_base, ram_size)]) {
        Ok(m) => m,
        Err(e) => return Err(ConfigError::new("ram", format!("{ram_base}"), e.to_string()).into()),
    };
    let cfg = unit_config(mode, base);
    let unit = VtdUnit::new(cfg)
        .map_err(|e| ConfigError::new("unit-base", base.to_string(), e.to_string()))?;
    machine
        .add_unit(Box::new(unit))
        .map_err(|e| ConfigError::new("unit-base", base.to_string(), e.to_string()))?;

    let mut agents = Vec::new();
    for &rid in s.devices.iter().chain([&UNPRESERVED_DEVICE]) {
        let agent = machine
            .add_device(Device {
                rid,
                pasid: None,
                unit: base,
            })
            .map_err(|e| ConfigError::new("device", rid.to_string(), e.to_string()))?;
        agents.push(agent);
    }
    let unpreserved = agents.pop().expect("the unpreserved device was added");

    // ---- old kernel: bring-up, domains, mappings, attach.
    let driver_mode = match mode {
        Mode::Legacy => DriverMode::Legacy,
        _ => DriverMode::Scalable,
    };
    let kind = match mode {
        Mode::ScalableFirstStage => DomainKind::FirstStage,
        _ => DomainKind::SecondStage,
    };
    let mut pool = PagePool::new(layout.old_pool.0, layout.old_pool.1);
    let ucfg = UnitConfig::new(base, driver_mode);
    let mut run = Run {
        s,
        machine,
        report: ModeReport {
            mode: mode.name().into(),
            ..ModeReport::default()
        },
        workloads: Vec::new(),
        unpreserved,
        unpreserved_iova: Iova(0),
        unpreserved_pa: PhysAddr(0),
    };

    let setup = (|| -> Result<(Unit, Vec<DomainPlan>), String> {
        let mut unit = with_hw(&mut run.machine, base, &mut pool, |hw| {
            Unit::init(hw, &ucfg)
        })
        .map_err(|e| format!("bring-up: {e}"))?;
        let mut plans = Vec::new();
        // One extra domain for the unpreserved device.
        for d in 0..=s.domains {
            let did = with_hw(&mut run.machine, base, &mut pool, |hw| {
                unit.create_domain(hw, kind)
            })
            .map_err(|e| format!("create domain {d}: {e}"))?;
            let mut plan = DomainPlan {
                did,
                mappings: Vec::new(),
            };
            for (i, &ps) in s.page_sizes.iter().enumerate() {
                let len = s.map_bytes.next_multiple_of(ps.bytes());
                let (iova, data) = (layout.iovas[d][i], layout.targets[d][i]);
                with_hw(&mut run.machine, base, &mut pool, |hw| {
                    unit.map(hw, did, iova, data, len, ps, Perms::RW)
                })
                .map_err(|e| format!("map {len:#x} bytes of {ps} pages in {did}: {e}"))?;
                plan.mappings.push(MappingSpec {
                    iova,
                    pa: data,
                    len,
                    perms: Perms::RW,
                });
            }
            plans.push(plan);
        }
        // Devices round-robin over the preserved domains; the extra device alone in
        // the last domain.
        for (i, &rid) in s.devices.iter().enumerate() {
            let did = plans[i % s.domains].did;
            with_hw(&mut run.machine, base, &mut pool, |hw| {
                unit.attach(hw, rid, did)
            })
            .map_err(|e| format!("attach {rid} to {did}: {e}"))?;
        }
        let last = &plans[s.domains];
        with_hw(&mut run.machine, base, &mut pool, |hw| {
            unit.attach(hw, UNPRESERVED_DEVICE, last.did)
        })
        .map_err(|e| format!("attach {UNPRESERVED_DEVICE}: {e}"))?;
        Ok((unit, plans))
    })();
    let (mut unit, plans) = match setup {
        Ok(v) => v,
        Err(p) => {
            run.report.problems.push(p);
            return Ok(run.finish_report());
        }
    };
    run.unpreserved_iova = plans[s.domains].mappings[0].iova;
    run.unpreserved_pa = plans[s.domains].mappings[0].pa;
    for (i, agent) in agents.iter().enumerate() {
        let dom = i % s.domains;
        let seed = s.seed ^ ((agent.rid.sid() as u64) << 32);
        run.workloads
            .push((dom, workload(*agent, plans[dom].mappings.clone(), seed)));
    }
    run.report.devices = s.devices.len() + 1;
    run.report.preserved_devices = s.devices.len();
    run.report.domains = plans.len();
    let preserved_dids: Vec<DomainId> = plans[..s.domains].iter().map(|p| p.did).collect();
    let before = match walk_all(&unit, &run.machine, &preserved_dids) {
        Ok(w) => w,
        Err(p) => {
            run.report.problems.push(p);
            return Ok(run.finish_report());
        }
    };
    run.report.mappings = before.iter().map(|(_, m, _)| m.len()).sum();
    run.report.mapped_bytes = before
        .iter()
        .flat_map(|(_, m, _)| m.iter())
        .map(|m| m.size)
        .sum();
    run.report.table_pages = before.iter().map(|(_, _, t)| *t).sum();

    run.phase("before prepare", false);

    // ---- prepare.
    let mut kho = KhoOut::new();
    // Guest memory the devices DMA into is preserved too (by the VMM, in real life),
    // before prepare: prepare checks every leaf target lies in preserved memory.
    for plan in &plans[..s.domains] {
        for m in &plan.mappings {
            if let Err(e) = kho.preserve_range(m.pa, m.len / 4096) {
                run.report
                    .problems
                    .push(format!("preserving guest memory at {}: {e}", m.pa));
            }
        }
    }
    let sel = Selection {
        domains: preserved_dids.clone(),
        devices: s.devices.clone(),
    };
    let prep = with_hw(&mut run.machine, base, &mut pool, |hw| {
        unit.prepare(hw, &mut kho, &sel)
    });
    match prep {
        Ok(r) => run.report.record_bytes = r.record_bytes as u64,
        Err(e) => run.report.problems.push(format!("prepare: {e}")),
    }
    run.phase("prepare -> freeze", false);

    // ---- freeze.
    match with_hw(&mut run.machine, base, &mut pool, |hw| unit.freeze(hw)) {
        Ok(r) => run.report.blackout.freeze_work = r.entries_written,
        Err(e) => run.report.problems.push(format!("freeze: {e}")),
    }
    run.phase("freeze -> kexec", true);

    // ---- kexec.
    let blob = kho.finalize(run.machine.mem_mut(), &mut pool);
    let blob = match blob {
        Ok(b) => b,
        Err(e) => {
            run.report
                .problems
                .push(format!("writing the KHO blob: {e}"));
            return Ok(run.finish_report());
        }
    };
    save_snapshot(&run.machine, opts, mode, "before-kexec")?;
    drop(unit);
    match run.machine.kexec(blob) {
        Ok(k) => {
            run.report.blackout.pages_kept = k.pages_kept;
            run.report.blackout.pages_poisoned = k.pages_poisoned;
        }
        Err(e) => {
            run.report.problems.push(format!("kexec: {e}"));
            return Ok(run.finish_report());
        }
    }

    // ---- new kernel: the blob's address is all it has.
    run.phase("new kernel, before adopt", true);
    let mut pool = PagePool::new(layout.new_pool.0, layout.new_pool.1);
    let read = iommu_core::kho::read_preserved_in(&*run.machine.mem(), blob, &[s.ram]);
    let preserved = match read {
        Ok(set) => set,
        Err(e) => {
            run.report
                .problems
                .push(format!("reading the preserved set: {e}"));
            return Ok(run.finish_report());
        }
    };
    pool.exclude(&preserved);
    let adopted = with_hw(&mut run.machine, base, &mut pool, |hw| {
        Unit::adopt_with_preserved(hw, &ucfg, blob, preserved)
    });
    let mut unit = match adopted {
        Ok((u, r)) => {
            run.report.blackout.adopt_work = r.registers_read + r.entries_read;
            for b in &r.blocked {
                run.report
                    .problems
                    .push(format!("adopt blocked {}: {}", b.rid, b.error));
            }
            u
        }
        Err(f) => {
            run.report
                .problems
                .push(format!("adopt refused the unit: {}", f.error));
            return Ok(run.finish_report());
        }
    };
    run.phase("after adopt", true);
    save_snapshot(&run.machine, opts, mode, "after-adopt")?;
    match walk_all(&unit, &run.machine, &preserved_dids) {
        Ok(after) => {
            run.report.mappings_unchanged = after == before;
            if after != before {
                run.report
                    .problems
                    .push("the mappings after adopt differ from those before prepare".into());
            }
        }
        Err(p) => run.report.problems.push(format!("after adopt: {p}")),
    }

    // ---- finish, then the domains take new mappings again.
    if let Err(e) = with_hw(&mut run.machine, base, &mut pool, |hw| unit.finish(hw)) {
        run.report.problems.push(format!("finish: {e}"));
    }
    let extra_iova = layout.extra_iova;
    let did = preserved_dids[0];
    let spare = plans[0].mappings[0];
    match with_hw(&mut run.machine, base, &mut pool, |hw| {
        unit.map(
            hw,
            did,
            extra_iova,
            spare.pa,
            4096,
            PageSize::SIZE_4K,
            Perms::RW,
        )
    }) {
        Ok(()) => {
            let mut mappings = plans[0].mappings.clone();
            mappings.push(MappingSpec {
                iova: extra_iova,
                pa: spare.pa,
                len: 4096,
                perms: Perms::RW,
            });
            for (_, w) in run.workloads.iter_mut().filter(|(dom, _)| *dom == 0) {
                *w = workload(*w.agent(), mappings.clone(), s.seed ^ 0xf1);
            }
        }
        Err(e) => run.report.problems.push(format!("map after finish: {e}")),
    }
    run.phase("after finish", true);
    Ok(run.finish_report())
}

impl Run<'_> {
    /// Runs the DMA workload of every device for one phase and records it. From
    /// `after_freeze` on, the unpreserved device's DMA must fault.
    fn phase(&mut self, name: &'static str, after_freeze: bool) {
        let faults_before = self.machine.fault_log().len();
        let mut checker = DmaChecker::new();
        for _ in 0..self.s.dma_steps {
            for (_, w) in &mut self.workloads {
                w.step(&mut self.machine, &mut checker);
            }
        }
        let mut unpreserved = DmaChecker::new();
        let agent = self.unpreserved;
        if after_freeze {
            unpreserved.expect_blocked_write(
                &mut self.machine,
                &agent,
                self.unpreserved_iova,
                64,
                self.unpreserved_pa,
                ExpectedFailure::Fault { code: None },
            );
            unpreserved.expect_failure(
                &mut self.machine,
                &agent,
                Access::Read,
                self.unpreserved_iova,
                64,
                ExpectedFailure::Fault { code: None },
            );
        } else {
            unpreserved.write_lands(
                &mut self.machine,
                &agent,
                self.unpreserved_iova,
                &[0x5a; 64],
                self.unpreserved_pa,
            );
        }
        let faults: Vec<_> = self.machine.fault_log()[faults_before..].to_vec();
        let (expected, unexpected): (Vec<_>, Vec<_>) =
            faults.iter().partition(|f| f.rid == UNPRESERVED_DEVICE);
        for f in unexpected.iter().take(4) {
            self.report.problems.push(format!("{name}: {f}"));
        }
        for m in checker
            .mismatches()
            .iter()
            .chain(unpreserved.mismatches())
            .take(4)
        {
            self.report.problems.push(format!("{name}: {m}"));
        }
        let a = checker.stats();
        let b = unpreserved.stats();
        self.report.phases.push(PhaseReport {
            name,
            transfers: a.transfers + b.transfers,
            bytes_checked: a.bytes_checked + b.bytes_checked,
            mismatches: a.mismatched_transfers + b.mismatched_transfers,
            faults: unexpected.len() as u64,
            expected_faults: expected.len() as u64,
        });
    }

    /// Merges the phases (recorded in `self.report`) into the mode's report.
    fn finish_report(&mut self) -> ModeReport {
        let mut r = std::mem::take(&mut self.report);
        let errors = self.machine.error_log();
        for e in errors.iter().take(4) {
            r.problems.push(format!("emulator: {e}"));
        }
        r
    }
}

/// A device's DMA workload over `mappings`, transfers up to 16 KiB.
fn workload(agent: DmaAgent, mappings: Vec<MappingSpec>, seed: u64) -> Workload {
    Workload::new(agent, mappings, seed).with_max_transfer(16 << 10)
}

/// Lends the driver the unit's registers, memory and a page pool for one call.
fn with_hw<T>(
    machine: &mut Machine,
    base: PhysAddr,
    pool: &mut PagePool,
    f: impl FnOnce(&mut Hw<'_>) -> T,
) -> T {
    let (mut regs, mut mem) = machine
        .driver_access(base)
        .expect("the scenario's unit is on the bus");
    let mut hw = Hw {
        regs: &mut regs,
        mem: &mut mem,
        pages: pool,
    };
    f(&mut hw)
}

/// Per domain: its ID, its mappings and its table page count, by the core walker.
fn walk_all(
    unit: &Unit,
    machine: &Machine,
    dids: &[DomainId],
) -> Result<Vec<(DomainId, Vec<Mapping>, u64)>, String> {
    let mem = machine.mem();
    dids.iter()
        .map(
            |&did| match unit.walk_domain(&*mem, did, &WalkLimits::default()) {
                Ok(Ok(w)) => Ok((did, w.mappings, w.tables.len() as u64)),
                Ok(Err(e)) => Err(format!("walking domain {did}: {e}")),
                Err(e) => Err(format!("walking domain {did}: {e}")),
            },
        )
        .collect()
}

fn save_snapshot(
    machine: &Machine,
    opts: &RunOptions,
    mode: Mode,
    when: &str,
) -> Result<(), RunError> {
    let Some(dir) = &opts.save_snapshots else {
        return Ok(());
    };
    let path = Path::new(dir).join(format!("{}-{when}.elf", mode.name()));
    snapshot::save(machine, &path).map_err(|error| RunError::Snapshot { path, error })
}
