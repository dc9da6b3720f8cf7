//! Plays a scenario on the emulator: one machine per mode, the arch's driver in the old
//! kernel, the live-update handover, a kexec, the driver of the new kernel adopting the
//! unit, and DMA agents checking every byte in every phase.
//!
//! The runner is written once, against [`Arch`]: every step that touches the IOMMU
//! (bring-up, domains, mappings, attach, prepare, freeze, the KHO blob, adopt, verify,
//! finish, walks) goes through it. [`run`] plays a scenario on VT-d ([`Vtd`], the arch
//! of [`Scenario::modes`]); [`run_on`] on any arch.
//!
//! Memory layout: see [`crate::layout`]; everything lies inside the scenario's RAM.

use crate::arch::vtd::Vtd;
use crate::arch::{Arch, Ctx};
use crate::config::{ConfigError, Scenario};
use crate::layout::{check_unit_for, Layout};
use crate::report::{ModeReport, PhaseReport, Report};
use emulator::dma::{DmaAgent, DmaChecker, ExpectedFailure, MappingSpec, Workload};
use emulator::machine::{Device, Machine};
use emulator::model::Access;
use emulator::snapshot;
use iommu_core::kho::KhoOut;
use iommu_core::pgtable::{Mapping, Perms};
use iommu_core::{DomainId, Iova, PageSize, PhysAddr};
use std::fmt;
use std::path::{Path, PathBuf};

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

/// Runs every mode of VT-d scenario `s` and reports: [`run_on`] with [`Vtd`] and
/// `s.modes`.
pub fn run(s: &Scenario, opts: &RunOptions) -> Result<Report, RunError> {
    run_on(&Vtd, s, &s.modes, opts)
}

/// Runs scenario `s` on `arch` in each of `modes` (the scenario's own `modes` are
/// VT-d's and not read) and reports.
pub fn run_on<A: Arch>(
    arch: &A,
    s: &Scenario,
    modes: &[A::Mode],
    opts: &RunOptions,
) -> Result<Report, RunError> {
    s.validate_for(arch, modes)?;
    check_unit_for(arch, s, modes)?;
    let layout = Layout::plan_for(arch, s, modes)?;
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
        arch: arch.name(),
        seed: s.seed,
        modes: Vec::new(),
    };
    for &mode in modes {
        report.modes.push(run_mode(arch, s, mode, &layout, opts)?);
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

/// What a step may touch: the machine, the unit's base, the running kernel's pool.
fn cx<'a, P>(machine: &'a mut Machine, base: PhysAddr, pool: &'a mut P) -> Ctx<'a, P> {
    Ctx {
        machine,
        base,
        pool,
    }
}

fn run_mode<A: Arch>(
    arch: &A,
    s: &Scenario,
    mode: A::Mode,
    layout: &Layout,
    opts: &RunOptions,
) -> Result<ModeReport, RunError> {
    let base = s.unit_base;
    let (ram_base, ram_size) = s.ram;
    let mut machine = match Machine::with_ram(&[(ram_base, ram_size)]) {
        Ok(m) => m,
        Err(e) => return Err(ConfigError::new("ram", format!("{ram_base}"), e.to_string()).into()),
    };
    let unit = arch
        .model(mode, base)
        .map_err(|e| ConfigError::new("unit-base", base.to_string(), e))?;
    machine
        .add_unit(unit)
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
    let mut pool = arch.pool(layout.old_pool.0, layout.old_pool.1);
    let mut run = Run {
        s,
        machine,
        report: ModeReport {
            mode: mode.to_string(),
            ..ModeReport::default()
        },
        workloads: Vec::new(),
        unpreserved,
        unpreserved_iova: Iova(0),
        unpreserved_pa: PhysAddr(0),
    };

    let setup = (|| -> Result<(A::Unit, Vec<DomainPlan>), String> {
        let mut unit = arch
            .bring_up(mode, cx(&mut run.machine, base, &mut pool))
            .map_err(|e| format!("bring-up: {e}"))?;
        let mut plans = Vec::new();
        // One extra domain for the unpreserved device.
        for d in 0..=s.domains {
            let did = arch
                .create_domain(&mut unit, mode, cx(&mut run.machine, base, &mut pool))
                .map_err(|e| format!("create domain {d}: {e}"))?;
            let mut plan = DomainPlan {
                did,
                mappings: Vec::new(),
            };
            for (i, &ps) in s.page_sizes.iter().enumerate() {
                let len = s.map_bytes.next_multiple_of(ps.bytes());
                let (iova, data) = (layout.iovas[d][i], layout.targets[d][i]);
                arch.map(
                    &mut unit,
                    cx(&mut run.machine, base, &mut pool),
                    did,
                    iova,
                    data,
                    len,
                    ps,
                    Perms::RW,
                )
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
            arch.attach(&mut unit, cx(&mut run.machine, base, &mut pool), rid, did)
                .map_err(|e| format!("attach {rid} to {did}: {e}"))?;
        }
        let last = &plans[s.domains];
        arch.attach(
            &mut unit,
            cx(&mut run.machine, base, &mut pool),
            UNPRESERVED_DEVICE,
            last.did,
        )
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
    let before = match walk_all(arch, &unit, &run.machine, &preserved_dids) {
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
    let prep = arch.prepare(
        &mut unit,
        cx(&mut run.machine, base, &mut pool),
        &mut kho,
        &preserved_dids,
        &s.devices,
    );
    match prep {
        Ok(bytes) => run.report.record_bytes = bytes,
        Err(e) => run.report.problems.push(format!("prepare: {e}")),
    }
    run.phase("prepare -> freeze", false);

    // ---- freeze.
    match arch.freeze(&mut unit, cx(&mut run.machine, base, &mut pool)) {
        Ok(work) => run.report.blackout.freeze_work = work,
        Err(e) => run.report.problems.push(format!("freeze: {e}")),
    }
    run.phase("freeze -> kexec", true);

    // ---- kexec.
    let blob = match kho.finalize(run.machine.mem_mut(), &mut pool) {
        Ok(b) => b,
        Err(e) => {
            run.report
                .problems
                .push(format!("writing the KHO blob: {e}"));
            return Ok(run.finish_report());
        }
    };
    save_snapshot(&run.machine, opts, &mode.to_string(), "before-kexec")?;
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
    let mut pool = arch.pool(layout.new_pool.0, layout.new_pool.1);
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
    arch.exclude(&mut pool, &preserved);
    let adopted = arch.adopt(mode, cx(&mut run.machine, base, &mut pool), blob, preserved);
    let mut unit = match adopted {
        Ok((u, r)) => {
            run.report.blackout.adopt_work = r.work;
            for (rid, error) in &r.blocked {
                run.report
                    .problems
                    .push(format!("adopt blocked {rid}: {error}"));
            }
            u
        }
        Err(e) => {
            run.report
                .problems
                .push(format!("adopt refused the unit: {e}"));
            return Ok(run.finish_report());
        }
    };
    run.phase("after adopt", true);
    save_snapshot(&run.machine, opts, &mode.to_string(), "after-adopt")?;
    match walk_all(arch, &unit, &run.machine, &preserved_dids) {
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

    // ---- verify (outside the blackout), finish, then the domains take new mappings
    // again.
    match arch.verify(&mut unit, cx(&mut run.machine, base, &mut pool)) {
        Ok(v) => {
            run.report.verify = v.counts;
            for (did, e) in &v.refused {
                run.report
                    .problems
                    .push(format!("verify refused domain {did}: {e}"));
            }
            for e in &v.unverified_runs {
                run.report.problems.push(format!("verify: {e}"));
            }
        }
        Err(e) => run.report.problems.push(format!("verify: {e}")),
    }
    match arch.finish(&mut unit, cx(&mut run.machine, base, &mut pool)) {
        Ok(f) => {
            run.report.finish = f;
            if f.pages_kept != 0 {
                run.report.problems.push(format!(
                    "finish kept {} pages of the record's runs that verification did not \
                     establish as the unit's own",
                    f.pages_kept
                ));
            }
        }
        Err(e) => run.report.problems.push(format!("finish: {e}")),
    }
    let extra_iova = layout.extra_iova;
    let did = preserved_dids[0];
    let spare = plans[0].mappings[0];
    // The arch's smallest page (4 KiB, or a 16/64 KiB granule's page).
    let extra = arch
        .page_sizes()
        .iter()
        .copied()
        .min_by_key(|p| p.bytes())
        .unwrap_or(PageSize::SIZE_4K);
    match arch.map(
        &mut unit,
        cx(&mut run.machine, base, &mut pool),
        did,
        extra_iova,
        spare.pa,
        extra.bytes(),
        extra,
        Perms::RW,
    ) {
        Ok(()) => {
            let mut mappings = plans[0].mappings.clone();
            mappings.push(MappingSpec {
                iova: extra_iova,
                pa: spare.pa,
                len: extra.bytes(),
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

/// Per domain: its ID, its mappings and its table page count, by the core walker.
fn walk_all<A: Arch>(
    arch: &A,
    unit: &A::Unit,
    machine: &Machine,
    dids: &[DomainId],
) -> Result<Vec<(DomainId, Vec<Mapping>, u64)>, String> {
    let mem = machine.mem();
    dids.iter()
        .map(|&did| match arch.walk_domain(unit, &*mem, did) {
            Ok(w) => Ok((did, w.mappings, w.table_pages)),
            Err(e) => Err(format!("walking domain {did}: {e}")),
        })
        .collect()
}

fn save_snapshot(
    machine: &Machine,
    opts: &RunOptions,
    mode: &str,
    when: &str,
) -> Result<(), RunError> {
    let Some(dir) = &opts.save_snapshots else {
        return Ok(());
    };
    let path = Path::new(dir).join(format!("{mode}-{when}.elf"));
    snapshot::save(machine, &path).map_err(|error| RunError::Snapshot { path, error })
}
