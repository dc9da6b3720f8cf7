//! What a scenario run reports: per mode, the machine it built and, per phase of the
//! live update, the DMA transfers and bytes checked and the faults seen.

use std::fmt;

/// DMA activity in one phase of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseReport {
    /// Phase name, e.g. `"before prepare"`.
    pub name: &'static str,
    /// DMA transfers issued.
    pub transfers: u64,
    /// Bytes compared with what the transfer had to read or write.
    pub bytes_checked: u64,
    /// Transfers that did not do what was expected (wrong byte, unexpected fault).
    pub mismatches: u64,
    /// Faults the unit raised for preserved devices in this phase.
    pub faults: u64,
    /// Faults expected in this phase (DMA of devices that were not preserved).
    pub expected_faults: u64,
}

/// The blackout path: what was done between freeze and the end of adopt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlackoutReport {
    /// Register accesses, table entries and record bytes touched by freeze.
    pub freeze_work: u64,
    /// Table entries read and register accesses made by adopt (without verification).
    pub adopt_work: u64,
    /// Pages the kexec kept.
    pub pages_kept: u64,
    /// Pages the kexec turned to poison.
    pub pages_poisoned: u64,
}

/// What the new kernel's verification (after adopt, outside the blackout) checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyCounts {
    /// Domains walked.
    pub domains: usize,
    /// Table pages checked.
    pub tables: u64,
    /// Runs of leaf targets checked to lie in preserved memory, outside the unit's
    /// table pages.
    pub leaf_targets_checked: u64,
}

/// What `finish` did with the pages the handover record named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinishCounts {
    /// Structure pages no longer referenced, freed.
    pub pages_freed: u64,
    /// Pages of the record's runs kept because verification did not establish them as
    /// the unit's own (0 on a clean run).
    pub pages_kept: u64,
}

/// The run of one mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModeReport {
    /// Mode name.
    pub mode: String,
    /// Devices attached.
    pub devices: usize,
    /// Devices preserved across the kexec.
    pub preserved_devices: usize,
    /// Domains created.
    pub domains: usize,
    /// Mapping runs (coalesced by the core walker) over all domains.
    pub mappings: usize,
    /// Bytes mapped over all domains.
    pub mapped_bytes: u64,
    /// Table pages over all domains.
    pub table_pages: u64,
    /// DMA per phase, in order.
    pub phases: Vec<PhaseReport>,
    /// The blackout path.
    pub blackout: BlackoutReport,
    /// Size of the handover record in bytes.
    pub record_bytes: u64,
    /// Whether the mappings after adopt equal those before prepare (core walker).
    pub mappings_unchanged: bool,
    /// What verification after adopt checked (not printed: the text report is kept as
    /// it was; refusals and unverified record runs show as problems).
    pub verify: VerifyCounts,
    /// What `finish` freed and kept (not printed; a kept page shows as a problem).
    pub finish: FinishCounts,
    /// Everything that went wrong, in words.
    pub problems: Vec<String>,
}

impl ModeReport {
    /// Faults raised for preserved devices over all phases.
    pub fn faults(&self) -> u64 {
        self.phases.iter().map(|p| p.faults).sum()
    }

    /// Whether the mode ran clean: no fault, no mismatch, no problem.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
            && self.mappings_unchanged
            && self
                .phases
                .iter()
                .all(|p| p.mismatches == 0 && p.faults == 0)
    }
}

/// The whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Name of the architecture the scenario ran on ([`crate::arch::Arch::name`]).
    pub arch: &'static str,
    /// Seed.
    pub seed: u64,
    /// One report per mode.
    pub modes: Vec<ModeReport>,
}

impl Report {
    /// Whether every mode ran clean.
    pub fn is_clean(&self) -> bool {
        !self.modes.is_empty() && self.modes.iter().all(ModeReport::is_clean)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {} on {} (seed {:#x})",
            self.scenario, self.arch, self.seed
        )?;
        for m in &self.modes {
            writeln!(f)?;
            writeln!(
                f,
                "== mode {}: {} devices ({} preserved), {} domains, {} mapping runs, {} MiB mapped, {} table pages",
                m.mode,
                m.devices,
                m.preserved_devices,
                m.domains,
                m.mappings,
                m.mapped_bytes >> 20,
                m.table_pages
            )?;
            writeln!(
                f,
                "   {:<28} {:>10} {:>14} {:>10} {:>7} {:>9}",
                "phase", "transfers", "bytes checked", "mismatch", "faults", "expected"
            )?;
            for p in &m.phases {
                writeln!(
                    f,
                    "   {:<28} {:>10} {:>14} {:>10} {:>7} {:>9}",
                    p.name, p.transfers, p.bytes_checked, p.mismatches, p.faults, p.expected_faults
                )?;
            }
            writeln!(
                f,
                "   faults on preserved devices: {}; mappings after adopt {}",
                m.faults(),
                if m.mappings_unchanged {
                    "identical to before prepare"
                } else {
                    "DIFFER from before prepare"
                }
            )?;
            writeln!(
                f,
                "   blackout: freeze work {}, adopt work {}; kexec kept {} pages, poisoned {}; record {} bytes",
                m.blackout.freeze_work,
                m.blackout.adopt_work,
                m.blackout.pages_kept,
                m.blackout.pages_poisoned,
                m.record_bytes
            )?;
            for p in &m.problems {
                writeln!(f, "   PROBLEM: {p}")?;
            }
            writeln!(
                f,
                "   result: {}",
                if m.is_clean() { "ok" } else { "FAILED" }
            )?;
        }
        writeln!(f)?;
        write!(
            f,
            "{}",
            if self.is_clean() {
                "all modes ok"
            } else {
                "FAILED"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean_mode() -> ModeReport {
        ModeReport {
            mode: "legacy".into(),
            mappings_unchanged: true,
            phases: vec![PhaseReport {
                name: "before prepare",
                transfers: 3,
                bytes_checked: 100,
                ..PhaseReport::default()
            }],
            ..ModeReport::default()
        }
    }

    #[test]
    fn any_fault_mismatch_problem_or_changed_mapping_fails_the_run() {
        let ok = Report {
            scenario: "t".into(),
            arch: "VT-d",
            seed: 1,
            modes: vec![clean_mode()],
        };
        assert!(ok.is_clean());
        assert!(ok.to_string().ends_with("all modes ok"));
        let mut bad = ok.clone();
        bad.modes[0].phases[0].faults = 1;
        assert!(!bad.is_clean());
        let mut bad = ok.clone();
        bad.modes[0].phases[0].mismatches = 1;
        assert!(!bad.is_clean());
        let mut bad = ok.clone();
        bad.modes[0].mappings_unchanged = false;
        assert!(!bad.is_clean());
        assert!(bad.to_string().contains("DIFFER"));
        let mut bad = ok.clone();
        bad.modes[0].problems.push("adopt refused".into());
        assert!(!bad.is_clean());
        assert!(bad.to_string().contains("PROBLEM: adopt refused"));
        assert!(!Report::default().is_clean());
    }
}
