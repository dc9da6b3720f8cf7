//! The command line of `iommu-live`: a subcommand, then `--name value` options.
//!
//! Numbers are decimal or `0x` hexadecimal; sizes may end in `K`, `M` or `G` (binary
//! units). A PCI function is `SEGMENT:BUS:DEV.FN` or `BUS:DEV.FN` in hexadecimal, as
//! `lspci` and sysfs spell it.

use crate::layout::Layout;
use iommu_core::RequesterId;
use std::fmt;
use vtd::driver::{DomainKind, Mode};

/// QEMU q35's intel-iommu register base (`Q35_HOST_BRIDGE_IOMMU_ADDR`, QEMU
/// `include/hw/i386/intel_iommu.h`), the default of `--iommu`.
pub const DEFAULT_IOMMU_BASE: u64 = 0xfed9_0000;

/// A command-line error: which option, the value given, what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    /// The option (or "subcommand").
    pub option: String,
    /// The value given.
    pub value: String,
    /// What was wrong with it.
    pub problem: String,
}

impl ArgError {
    fn new(option: &str, value: &str, problem: impl Into<String>) -> Self {
        Self {
            option: option.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.option, self.value, self.problem)
    }
}

impl std::error::Error for ArgError {}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_u64(option: &str, s: &str) -> Result<u64, ArgError> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| ArgError::new(option, s, format!("not a number: {e}")))
}

/// Parses a size: a number optionally followed by `K`, `M` or `G` (powers of 1024).
pub fn parse_size(option: &str, s: &str) -> Result<u64, ArgError> {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = parse_u64(option, num)?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| ArgError::new(option, s, "size overflows 64 bits"))
}

/// Parses `BASE:SIZE` (the reserved range, as `memmap=SIZE$BASE` reserves it): both
/// page aligned, size non-zero, the range below 2^64.
pub fn parse_range(option: &str, s: &str) -> Result<(u64, u64), ArgError> {
    let (b, z) = s
        .split_once(':')
        .ok_or_else(|| ArgError::new(option, s, "expected BASE:SIZE"))?;
    let whole = |e: ArgError| ArgError::new(option, s, e.problem);
    let base = parse_u64(option, b).map_err(whole)?;
    let size = parse_size(option, z).map_err(whole)?;
    crate::devmem::check_range("reserved range", base, size)
        .map_err(|e| ArgError::new(option, s, e.to_string()))?;
    Ok((base, size))
}

/// Parses a PCI function `[SEGMENT:]BUS:DEV.FN` (hexadecimal).
pub fn parse_bdf(option: &str, s: &str) -> Result<RequesterId, ArgError> {
    let bad =
        |why: &str| ArgError::new(option, s, format!("{why} (expected [SEGMENT:]BUS:DEV.FN)"));
    let parts: Vec<&str> = s.split(':').collect();
    let (seg, bus, devfn) = match parts.as_slice() {
        [seg, bus, df] => (*seg, *bus, *df),
        [bus, df] => ("0", *bus, *df),
        _ => return Err(bad("wrong number of fields")),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(|| bad("no function"))?;
    let hex = |v: &str, max: u32, what: &str| {
        u32::from_str_radix(v, 16)
            .ok()
            .filter(|&n| n <= max && !v.is_empty())
            .ok_or_else(|| bad(&format!("{what} {v:?} is not hexadecimal up to {max:#x}")))
    };
    let seg = hex(seg, 0xffff, "segment")?;
    let bus = hex(bus, 0xff, "bus")?;
    let dev = hex(dev, 0x1f, "device")?;
    let func = hex(func, 7, "function")?;
    Ok(RequesterId::new(
        seg as u16, bus as u8, dev as u8, func as u8,
    ))
}

/// The sysfs name of a PCI function, `SSSS:BB:DD.F`.
pub fn sysfs_name(rid: RequesterId) -> String {
    rid.to_string()
}

/// A subcommand with its options, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The subcommand.
    pub name: String,
    opts: Vec<(String, String)>,
}

impl Command {
    /// Splits `args` (without the program name) into a subcommand and `--name value`
    /// pairs; an option given twice, or without a value, is an error.
    pub fn parse(args: &[String]) -> Result<Self, ArgError> {
        let (name, rest) = args
            .split_first()
            .ok_or_else(|| ArgError::new("subcommand", "", "missing"))?;
        if name.starts_with('-') {
            return Err(ArgError::new(
                "subcommand",
                name,
                "expected a subcommand first",
            ));
        }
        let mut opts: Vec<(String, String)> = Vec::new();
        let mut it = rest.iter();
        while let Some(o) = it.next() {
            let key = o
                .strip_prefix("--")
                .ok_or_else(|| ArgError::new("option", o, "expected --name"))?;
            let v = it
                .next()
                .ok_or_else(|| ArgError::new(o, "", "missing value"))?;
            if opts.iter().any(|(k, _)| k == key) {
                return Err(ArgError::new(o, v, "given twice"));
            }
            opts.push((key.to_string(), v.clone()));
        }
        Ok(Self {
            name: name.clone(),
            opts,
        })
    }

    /// The value of `--key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `--key`, required.
    pub fn need(&self, key: &str) -> Result<&str, ArgError> {
        self.get(key).ok_or_else(|| {
            ArgError::new(
                &format!("--{key}"),
                "",
                format!("required by {}", self.name),
            )
        })
    }

    /// Refuses options other than `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), ArgError> {
        match self.opts.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, v)) => Err(ArgError::new(
                &format!("--{k}"),
                v,
                format!(
                    "not an option of {} (known: {})",
                    self.name,
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

/// `--iommu`, or [`DEFAULT_IOMMU_BASE`]: a 4 KiB aligned register base.
pub fn iommu_base(cmd: &Command) -> Result<u64, ArgError> {
    let base = cmd
        .get("iommu")
        .map_or(Ok(DEFAULT_IOMMU_BASE), |v| parse_u64("--iommu", v))?;
    if base % crate::devmem::PAGE != 0 {
        return Err(ArgError::new(
            "--iommu",
            &format!("{base:#x}"),
            "a register window starts on a 4 KiB boundary",
        ));
    }
    Ok(base)
}

/// Which unit `run-old` and `run-new` drive, in which mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// VT-d (`--mode legacy|scalable-ss|scalable-fs`).
    Vtd {
        /// The driver's table mode.
        mode: Mode,
        /// The kind of the domains.
        kind: DomainKind,
    },
    /// AMD-Vi (`--mode v1|v2`): host (v1) or guest (v2, through a GCR3 table) tables.
    AmdVi {
        /// v2 (guest) domains.
        v2: bool,
    },
}

/// The options of `run-old` and `run-new` (VT-d) and of `amdvi-run-old` and
/// `amdvi-run-new`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// The unit and its mode.
    pub target: Target,
    /// The mode's name (`legacy`, `scalable-ss`, `scalable-fs`, `v1`, `v2`).
    pub mode_name: String,
    /// The reserved range, split.
    pub layout: Layout,
    /// The unit's register base: `--iommu`, else for VT-d [`DEFAULT_IOMMU_BASE`]; for
    /// AMD-Vi `None` (the caller finds it in the IOMMU's PCI capability block).
    pub iommu: Option<u64>,
    /// The device whose domain is preserved.
    pub preserved: RequesterId,
    /// The device that is not preserved.
    pub other: RequesterId,
    /// `run-new`: the KHO blob's address.
    pub blob: Option<u64>,
}

impl RunOptions {
    /// Parses the options of `run-old` (`new` false) or `run-new` (`new` true, which
    /// also needs `--blob`), for VT-d (`amdvi` false) or AMD-Vi.
    pub fn parse(cmd: &Command, new: bool, amdvi: bool) -> Result<Self, ArgError> {
        let mut known = vec!["mode", "mem", "iommu", "preserved", "other"];
        if new {
            known.push("blob");
        }
        cmd.only(&known)?;
        let m = cmd.need("mode")?;
        let target = match (amdvi, m) {
            (false, "legacy") => Target::Vtd {
                mode: Mode::Legacy,
                kind: DomainKind::SecondStage,
            },
            (false, "scalable-ss") => Target::Vtd {
                mode: Mode::Scalable,
                kind: DomainKind::SecondStage,
            },
            (false, "scalable-fs") => Target::Vtd {
                mode: Mode::Scalable,
                kind: DomainKind::FirstStage,
            },
            (true, "v1") => Target::AmdVi { v2: false },
            (true, "v2") => Target::AmdVi { v2: true },
            (false, _) => {
                return Err(ArgError::new(
                    "--mode",
                    m,
                    "expected legacy, scalable-ss or scalable-fs",
                ))
            }
            (true, _) => return Err(ArgError::new("--mode", m, "expected v1 or v2")),
        };
        let (base, size) = parse_range("--mem", cmd.need("mem")?)?;
        let preserved = parse_bdf("--preserved", cmd.need("preserved")?)?;
        let other = parse_bdf("--other", cmd.need("other")?)?;
        if preserved == other {
            return Err(ArgError::new(
                "--other",
                &other.to_string(),
                "the same function as --preserved",
            ));
        }
        let blob = match new {
            true => {
                let b = parse_u64("--blob", cmd.need("blob")?)?;
                let inside = b % crate::devmem::PAGE == 0 && b >= base && b - base < size;
                if !inside {
                    return Err(ArgError::new(
                        "--blob",
                        &format!("{b:#x}"),
                        format!("not a page inside the reserved range {base:#x}+{size:#x}"),
                    ));
                }
                Some(b)
            }
            false => None,
        };
        let iommu = match (amdvi, cmd.get("iommu")) {
            (true, None) => None,
            _ => Some(iommu_base(cmd)?),
        };
        Ok(Self {
            target,
            mode_name: m.into(),
            layout: Layout::new(base, size)?,
            iommu,
            preserved,
            other,
            blob,
        })
    }
}

/// The option of `start-dma`: the preserved device (the IOVA is
/// [`crate::layout::iova::INFLIGHT`], mapped by `run-old`).
pub fn parse_start_dma(cmd: &Command) -> Result<RequesterId, ArgError> {
    cmd.only(&["preserved"])?;
    parse_bdf("--preserved", cmd.need("preserved")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(parse_u64("x", "0x10").unwrap(), 16);
        assert_eq!(parse_u64("x", "10").unwrap(), 10);
        assert!(parse_u64("x", "0xg").is_err());
        assert_eq!(parse_size("x", "64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("x", "0x1000").unwrap(), 0x1000);
        assert_eq!(parse_size("x", "2G").unwrap(), 2 << 30);
        let e = parse_size("--mem", "0xffffffffffffG").unwrap_err();
        assert_eq!(e.problem, "size overflows 64 bits");
    }

    #[test]
    fn reserved_ranges_are_checked() {
        assert_eq!(
            parse_range("--mem", "0x30000000:64M").unwrap(),
            (0x3000_0000, 64 << 20)
        );
        for bad in [
            "0x30000000",
            "0x30000001:64M",
            "0x30000000:0",
            "0xfffffffffffff000:8K",
            "x:1M",
        ] {
            let e = parse_range("--mem", bad).unwrap_err();
            assert_eq!(e.option, "--mem", "{bad}");
            assert_eq!(e.value, bad);
        }
    }

    #[test]
    fn pci_functions() {
        assert_eq!(
            parse_bdf("--dev", "0000:00:04.0").unwrap(),
            RequesterId::new(0, 0, 4, 0)
        );
        assert_eq!(
            parse_bdf("--dev", "1a:1f.7").unwrap(),
            RequesterId::new(0, 0x1a, 0x1f, 7)
        );
        assert_eq!(sysfs_name(RequesterId::new(0, 0, 5, 0)), "0000:00:05.0");
        for bad in [
            "00:20.0",
            "00:04.8",
            "00:04",
            "0:0:0:0.0",
            "100:00.0",
            "00:.0",
        ] {
            assert!(parse_bdf("--dev", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_and_options() {
        let c = Command::parse(&args("run-old --mode legacy --mem 0x1000:4K")).unwrap();
        assert_eq!(c.name, "run-old");
        assert_eq!(c.get("mode"), Some("legacy"));
        assert_eq!(c.need("mem").unwrap(), "0x1000:4K");
        assert_eq!(c.need("blob").unwrap_err().problem, "required by run-old");
        assert!(c.only(&["mode", "mem"]).is_ok());
        assert_eq!(c.only(&["mode"]).unwrap_err().option, "--mem");
        assert!(Command::parse(&args("x --a 1 --a 2")).is_err());
        assert!(Command::parse(&args("x --a")).is_err());
        assert!(Command::parse(&args("x a")).is_err());
        assert!(Command::parse(&args("--a 1")).is_err());
        assert!(Command::parse(&[]).is_err());
    }

    const RUN: &str = "--mode scalable-fs --mem 0x30000000:64M --preserved 00:04.0 --other 00:05.0";

    #[test]
    fn run_options_of_both_kernels() {
        let old = RunOptions::parse(
            &Command::parse(&args(&format!("run-old {RUN}"))).unwrap(),
            false,
            false,
        )
        .unwrap();
        assert_eq!(
            old.target,
            Target::Vtd {
                mode: Mode::Scalable,
                kind: DomainKind::FirstStage
            }
        );
        assert_eq!(old.iommu, Some(DEFAULT_IOMMU_BASE));
        assert_eq!(old.layout, Layout::new(0x3000_0000, 64 << 20).unwrap());
        assert_eq!(old.other, RequesterId::new(0, 0, 5, 0));
        assert_eq!(old.blob, None);
        let new = Command::parse(&args(&format!(
            "run-new {RUN} --blob 0x3000d000 --iommu 0xfed91000"
        )))
        .unwrap();
        let new = RunOptions::parse(&new, true, false).unwrap();
        assert_eq!(
            (new.blob, new.iommu),
            (Some(0x3000_d000), Some(0xfed9_1000))
        );
    }

    #[test]
    fn amdvi_run_options_take_its_modes_and_find_the_base_later() {
        let run = "--mem 0x30000000:64M --preserved 00:04.0 --other 00:05.0";
        let parse = |s: &str| RunOptions::parse(&Command::parse(&args(s)).unwrap(), false, true);
        let v2 = parse(&format!("amdvi-run-old --mode v2 {run}")).unwrap();
        assert_eq!((v2.target, v2.iommu), (Target::AmdVi { v2: true }, None));
        let v1 = parse(&format!("amdvi-run-old --mode v1 {run} --iommu 0xfed80000")).unwrap();
        assert_eq!(
            (v1.target, v1.iommu),
            (Target::AmdVi { v2: false }, Some(0xfed8_0000))
        );
        let e = parse(&format!("amdvi-run-old --mode legacy {run}")).unwrap_err();
        assert_eq!(
            (e.option.as_str(), e.problem.as_str()),
            ("--mode", "expected v1 or v2")
        );
    }

    #[test]
    fn run_options_refuse_what_cannot_work() {
        let parse = |extra: &str, new: bool| {
            let c = Command::parse(&args(&format!("run {extra}"))).unwrap();
            RunOptions::parse(&c, new, false).unwrap_err()
        };
        assert_eq!(
            parse(&format!("{RUN} --blob 0x3000d000"), false).option,
            "--blob"
        );
        assert_eq!(parse(RUN, true).problem, "required by run");
        let e = parse(&format!("{RUN} --blob 0x40000000"), true);
        assert_eq!(
            (e.option.as_str(), e.value.as_str()),
            ("--blob", "0x40000000")
        );
        assert!(e
            .problem
            .starts_with("not a page inside the reserved range"));
        assert_eq!(
            parse(&format!("{RUN} --blob 0x3000d008"), true).option,
            "--blob"
        );
        let same = "--mode legacy --mem 0x30000000:64M --preserved 00:04.0 --other 0000:00:04.0";
        assert_eq!(
            parse(same, false).problem,
            "the same function as --preserved"
        );
        let mode = "--mode nested --mem 0x30000000:64M --preserved 00:04.0 --other 00:05.0";
        assert_eq!(parse(mode, false).option, "--mode");
        assert_eq!(
            parse(&format!("{RUN} --iommu 0xfed90010"), false).option,
            "--iommu"
        );
        assert_eq!(parse(&format!("{RUN} --dev 1"), false).option, "--dev");
    }

    #[test]
    fn start_dma_names_the_preserved_device_only() {
        let c = Command::parse(&args("start-dma --preserved 00:04.0")).unwrap();
        assert_eq!(parse_start_dma(&c).unwrap(), RequesterId::new(0, 0, 4, 0));
        let c = Command::parse(&args("start-dma --preserved 00:04.0 --mem 0x1000:4K")).unwrap();
        assert_eq!(parse_start_dma(&c).unwrap_err().option, "--mem");
    }
}
