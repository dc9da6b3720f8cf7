//! Which architectures and modes a run plays: the `--arch` and `--mode` values of
//! `iommu-emu`, resolved against the architectures that exist.
//!
//! Mode names are unique across architectures (`legacy`, `v1`, `s2`, ...), so a mode
//! alone names its architecture. Without `--arch` and `--mode` every architecture runs
//! in all its modes (VT-d in the scenario's modes); `--mode` alone runs the
//! architectures its values belong to; `--arch` alone runs those architectures in all
//! their modes; with both, every mode must belong to a chosen architecture, and a chosen
//! architecture no mode names runs in all its modes.

use crate::arch::amdvi::{self, AmdVi};
use crate::arch::vtd::{self, Vtd};
use crate::config::{parse_u64, ConfigError, Scenario};
use crate::layout::UNPRESERVED_DEVICE;
use crate::report::Report;
use crate::runner::{run_on, RunError, RunOptions};
use iommu_core::RequesterId;
use std::fmt;
use std::ops::RangeInclusive;

/// An architecture `iommu-emu` can run, as named by `--arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ArchName {
    /// Intel VT-d (`vtd`).
    Vtd,
    /// AMD-Vi (`amdvi`).
    AmdVi,
}

impl ArchName {
    /// Every architecture, in the order runs are played and reported.
    pub const ALL: [ArchName; 2] = [ArchName::Vtd, ArchName::AmdVi];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ArchName::Vtd => "vtd",
            ArchName::AmdVi => "amdvi",
        }
    }

    /// The architecture named `s` on the command line.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                ConfigError::new("arch", s, format!("expected one of {}", Self::names()))
            })
    }

    /// The names of its modes, in the order they run by default.
    pub fn mode_names(self) -> Vec<&'static str> {
        match self {
            ArchName::Vtd => vtd::Mode::ALL.iter().map(|m| m.name()).collect(),
            ArchName::AmdVi => amdvi::Mode::ALL.iter().map(|m| m.name()).collect(),
        }
    }

    fn names() -> String {
        let v: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
        v.join(", ")
    }
}

impl fmt::Display for ArchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run on one architecture: its modes by name (empty: the default modes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The architecture.
    pub arch: ArchName,
    /// Its modes as given (`--mode` values), empty for the architecture's default.
    pub modes: Vec<String>,
}

/// Resolves `--arch` values `arches` and `--mode` values `modes` into one selection per
/// architecture to run, in [`ArchName::ALL`] order (see the module documentation).
pub fn select(arches: &[ArchName], modes: &[String]) -> Result<Vec<Selection>, ConfigError> {
    let owner = |m: &str| {
        ArchName::ALL
            .into_iter()
            .find(|a| a.mode_names().contains(&m))
    };
    let mut out: Vec<Selection> = ArchName::ALL
        .into_iter()
        .filter(|a| arches.contains(a))
        .map(|arch| Selection {
            arch,
            modes: Vec::new(),
        })
        .collect();
    for m in modes {
        let Some(arch) = owner(m) else {
            let all: Vec<String> = ArchName::ALL
                .iter()
                .map(|a| format!("{}: {}", a, a.mode_names().join(", ")))
                .collect();
            return Err(ConfigError::new(
                "mode",
                m.clone(),
                format!("no architecture has this mode ({})", all.join("; ")),
            ));
        };
        match out.iter_mut().find(|s| s.arch == arch) {
            Some(sel) => {
                if !sel.modes.contains(m) {
                    sel.modes.push(m.clone());
                }
            }
            None if arches.is_empty() => out.push(Selection {
                arch,
                modes: vec![m.clone()],
            }),
            None => {
                return Err(ConfigError::new(
                    "mode",
                    m.clone(),
                    format!("is a mode of {arch}, which no --arch names"),
                ))
            }
        }
    }
    if arches.is_empty() && modes.is_empty() {
        out = ArchName::ALL
            .into_iter()
            .map(|arch| Selection {
                arch,
                modes: Vec::new(),
            })
            .collect();
    }
    out.sort_by_key(|s| s.arch);
    Ok(out)
}

/// Options of one architecture that are not part of the arch-neutral [`Scenario`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchOptions {
    /// AMD-Vi: the DeviceIDs behind the unit, as ACPI IVRS would give them (default
    /// every DeviceID).
    pub amdvi_device_ids: Option<RangeInclusive<u16>>,
}

/// Parses a DeviceID range `FIRST-LAST`, each end a PCI `bus:device.function` or a
/// number (`0x` for hex), e.g. `00:00.0-3f:1f.7` or `0x0-0x3fff`.
pub fn parse_device_ids(s: &str) -> Result<RangeInclusive<u16>, String> {
    let one = |t: &str| -> Result<u16, String> {
        if t.contains(':') {
            let rid: RequesterId = t.parse().map_err(|e| format!("{t:?}: {e}"))?;
            if rid.segment != 0 {
                return Err(format!("{t:?}: a DeviceID has no segment"));
            }
            return Ok(u16::from(rid.bus) << 8 | u16::from(rid.devfn));
        }
        let v = parse_u64(t)?;
        u16::try_from(v).map_err(|_| format!("{t:?}: a DeviceID is 16 bits"))
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    let (a, b) = (one(a.trim())?, one(b.trim())?);
    if a > b {
        return Err(format!("{s:?}: the first DeviceID is above the last"));
    }
    Ok(a..=b)
}

/// Runs scenario `s` on every selection, in order, one report each. Stops at the first
/// error (a refused scenario or an I/O error); a run that saw a fault still reports.
pub fn run_selected(
    s: &Scenario,
    selections: &[Selection],
    arch_opts: &ArchOptions,
    opts: &RunOptions,
) -> Result<Vec<Report>, RunError> {
    let mut reports = Vec::new();
    for sel in selections {
        let report = match sel.arch {
            ArchName::Vtd => {
                let modes = parse_modes(&sel.modes, vtd::Mode::parse)?.unwrap_or(s.modes.clone());
                run_on(&Vtd, s, &modes, opts)?
            }
            ArchName::AmdVi => {
                let mut arch = AmdVi::default();
                if let Some(ids) = &arch_opts.amdvi_device_ids {
                    check_device_ids(s, ids)?;
                    arch.device_ids = ids.clone();
                }
                let modes = parse_modes(&sel.modes, amdvi::Mode::parse)?
                    .unwrap_or(amdvi::Mode::ALL.to_vec());
                run_on(&arch, s, &modes, opts)?
            }
        };
        reports.push(report);
    }
    Ok(reports)
}

/// Refuses an AMD-Vi DeviceID range that leaves a device of `s` (or the built-in
/// unpreserved device) outside the unit.
fn check_device_ids(s: &Scenario, ids: &RangeInclusive<u16>) -> Result<(), ConfigError> {
    let outside =
        s.devices.iter().chain([&UNPRESERVED_DEVICE]).find(|d| {
            d.segment != 0 || !ids.contains(&(u16::from(d.bus) << 8 | u16::from(d.devfn)))
        });
    match outside {
        Some(d) => Err(ConfigError::new(
            "amdvi-device-ids",
            format!("{:#06x}-{:#06x}", ids.start(), ids.end()),
            format!(
                "device {d} is not behind the unit (DeviceIDs of segment 0 in the range; \
                 {UNPRESERVED_DEVICE} is the built-in unpreserved device)"
            ),
        )),
        None => Ok(()),
    }
}

/// The modes named, or `None` for the architecture's default.
fn parse_modes<M>(
    names: &[String],
    parse: impl Fn(&str) -> Result<M, ConfigError>,
) -> Result<Option<Vec<M>>, ConfigError> {
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|n| parse(n))
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_given_selects_every_arch_with_its_default_modes() {
        let sel = select(&[], &[]).unwrap();
        assert_eq!(sel.len(), ArchName::ALL.len());
        assert!(sel.iter().all(|s| s.modes.is_empty()));
    }

    #[test]
    fn a_mode_alone_selects_its_arch() {
        let sel = select(&[], &modes(&["scalable-fs", "legacy", "legacy"])).unwrap();
        assert_eq!(
            sel,
            vec![Selection {
                arch: ArchName::Vtd,
                modes: modes(&["scalable-fs", "legacy"])
            }]
        );
    }

    #[test]
    fn modes_of_several_arches_select_each_and_an_arch_no_mode_names_runs_all_its_modes() {
        let sel = select(&[], &modes(&["v2", "legacy"])).unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(
            (sel[0].arch, &sel[0].modes),
            (ArchName::Vtd, &modes(&["legacy"]))
        );
        assert_eq!(
            (sel[1].arch, &sel[1].modes),
            (ArchName::AmdVi, &modes(&["v2"]))
        );
        let sel = select(&[ArchName::AmdVi, ArchName::Vtd], &modes(&["v1"])).unwrap();
        assert_eq!(sel[0].arch, ArchName::Vtd);
        assert!(sel[0].modes.is_empty());
        assert_eq!(sel[1].modes, modes(&["v1"]));
        let e = select(&[ArchName::Vtd], &modes(&["v1"])).unwrap_err();
        assert!(
            e.reason
                .contains("is a mode of amdvi, which no --arch names"),
            "{e}"
        );
    }

    #[test]
    fn device_id_ranges_parse_as_numbers_or_bdfs_and_bad_ones_are_refused() {
        assert_eq!(parse_device_ids("0x100-0x1ff").unwrap(), 0x100..=0x1ff);
        assert_eq!(parse_device_ids("00:00.0-3f:1f.7").unwrap(), 0..=0x3fff);
        assert!(parse_device_ids("0x200-0x100")
            .unwrap_err()
            .contains("above"));
        assert!(parse_device_ids("0x10000-0x10001")
            .unwrap_err()
            .contains("16 bits"));
        assert!(parse_device_ids("5").unwrap_err().contains("FIRST-LAST"));
    }

    #[test]
    fn an_unknown_mode_or_arch_is_refused_naming_every_arch_and_mode() {
        let e = select(&[], &modes(&["v9"])).unwrap_err();
        assert_eq!(e.option, "mode");
        assert!(
            e.reason.contains("vtd: legacy, scalable-ss, scalable-fs"),
            "{e}"
        );
        let e = ArchName::parse("x86").unwrap_err();
        assert_eq!(e.option, "arch");
        assert!(e.reason.contains("vtd"), "{e}");
    }
}
