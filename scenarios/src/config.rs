//! What a scenario is made of: the machine, the unit, the devices, the domains and their
//! mappings, the DMA workload and the seed. Built-in scenarios are named presets of it;
//! every field can be overridden from the command line to mirror a real machine.

use crate::arch::vtd::Vtd;
use crate::arch::Arch;
use crate::layout::{MAX_DEVICES, MAX_DMA_STEPS, MAX_STEPS_PER_PHASE};
use iommu_core::{PageSize, PhysAddr, RequesterId};
use std::fmt;

/// The modes of a scenario's unit: VT-d's (`legacy`, `scalable-ss`, `scalable-fs`),
/// defined with the VT-d arch.
pub use crate::arch::vtd::Mode;

/// A value on the command line (or in a preset) that makes no sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The option.
    pub option: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// An error about `option` set to `value`.
    pub fn new(option: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            option,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{} {:?}: {}", self.option, self.value, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// One scenario, fully specified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Name for the report.
    pub name: String,
    /// Seed of every random choice (data patterns, transfer sizes and offsets).
    pub seed: u64,
    /// RAM: base and size in bytes (4 KiB aligned).
    pub ram: (PhysAddr, u64),
    /// MMIO base of the unit.
    pub unit_base: PhysAddr,
    /// VT-d modes to run, one machine each ([`crate::run`]; [`crate::run_on`] takes
    /// the modes of any arch instead).
    pub modes: Vec<Mode>,
    /// Devices behind the unit; they are spread over the domains round-robin.
    pub devices: Vec<RequesterId>,
    /// Number of domains.
    pub domains: usize,
    /// Bytes mapped per domain and page size (rounded up to a whole page).
    pub map_bytes: u64,
    /// Page sizes used for the mappings of every domain.
    pub page_sizes: Vec<PageSize>,
    /// DMA steps per device in each phase (one step = one checked transfer per mapping).
    pub dma_steps: u32,
}

impl Scenario {
    /// The built-in default: every mode, 4 devices on two buses in 2 domains, each domain
    /// mapping 4K, 2M and 1G pages.
    pub fn default_scenario() -> Self {
        Self {
            name: "default".into(),
            seed: 0x10_4d_0c,
            // Above 4 GiB, clear of the unit's registers below it (as on a PC, where
            // RAM below 4 GiB stops at the MMIO hole).
            ram: (PhysAddr(1 << 32), 8 << 30),
            unit_base: PhysAddr(0xfed9_0000),
            modes: Mode::ALL.to_vec(),
            devices: vec![
                RequesterId::new(0, 0x00, 0x02, 0),
                RequesterId::new(0, 0x00, 0x03, 0),
                RequesterId::new(0, 0x3b, 0x00, 0),
                RequesterId::new(0, 0x3b, 0x00, 1),
            ],
            domains: 2,
            map_bytes: 8 << 20,
            page_sizes: vec![PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G],
            dma_steps: 8,
        }
    }

    /// The built-in scenarios by name.
    pub fn builtin(name: &str) -> Option<Self> {
        let mut s = Self::default_scenario();
        match name {
            "default" => {}
            "legacy" | "scalable-ss" | "scalable-fs" => {
                s.modes = vec![Mode::parse(name).ok()?];
                s.name = name.into();
            }
            "many-domains" => {
                s.name = name.into();
                s.modes = vec![Mode::Legacy];
                s.devices = (0..16).map(|d| RequesterId::new(0, 0x10, d, 0)).collect();
                s.domains = 16;
                s.map_bytes = 64 << 20;
                s.page_sizes = vec![PageSize::SIZE_4K, PageSize::SIZE_2M];
            }
            _ => return None,
        }
        Some(s)
    }

    /// Names of the built-in scenarios.
    pub const BUILTIN: [&'static str; 5] = [
        "default",
        "legacy",
        "scalable-ss",
        "scalable-fs",
        "many-domains",
    ];

    /// Checks the VT-d scenario on its own: [`Scenario::validate_for`] with [`Vtd`]
    /// and `self.modes`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_for(&Vtd, &self.modes)
    }

    /// Checks the scenario on its own, run on `arch` in `modes`: at least one mode,
    /// devices distinct and not too many, domains between 1 and the devices, page sizes
    /// the arch has, sizes aligned, DMA steps between 1 and the limits. What the unit
    /// and the RAM must hold is checked by [`crate::layout`].
    pub fn validate_for<A: Arch>(&self, arch: &A, modes: &[A::Mode]) -> Result<(), ConfigError> {
        if modes.is_empty() {
            return Err(ConfigError::new("mode", "", "at least one mode is needed"));
        }
        if self.devices.is_empty() {
            return Err(ConfigError::new(
                "device",
                "",
                "at least one device is needed",
            ));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(ConfigError::new(
                "device",
                format!("({} devices)", self.devices.len()),
                format!("at most {MAX_DEVICES} devices (MAX_DEVICES)"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.devices {
            if !seen.insert(*d) {
                return Err(ConfigError::new("device", d.to_string(), "listed twice"));
            }
            if d.segment != 0 {
                return Err(ConfigError::new(
                    "device",
                    d.to_string(),
                    "the emulated unit serves segment 0 only",
                ));
            }
        }
        if self.domains == 0 || self.domains > self.devices.len() {
            return Err(ConfigError::new(
                "domains",
                self.domains.to_string(),
                format!(
                    "need between 1 and the number of devices ({})",
                    self.devices.len()
                ),
            ));
        }
        if self.page_sizes.is_empty() {
            return Err(ConfigError::new(
                "page-sizes",
                "",
                "at least one page size is needed",
            ));
        }
        let sizes = arch.page_sizes();
        for p in &self.page_sizes {
            if !sizes.contains(p) {
                return Err(ConfigError::new(
                    "page-sizes",
                    p.to_string(),
                    format!("{} pages are {}", arch.name(), one_of(sizes)),
                ));
            }
        }
        let (base, size) = self.ram;
        if base.0 % 4096 != 0 || size % 4096 != 0 || size == 0 {
            return Err(ConfigError::new(
                "ram",
                format!("{base}+{size:#x}"),
                "base and size must be non-zero multiples of 4 KiB",
            ));
        }
        if base.0.checked_add(size).is_none() {
            return Err(ConfigError::new(
                "ram",
                format!("{base}+{size:#x}"),
                "overflows",
            ));
        }
        if self.dma_steps == 0 || self.dma_steps > MAX_DMA_STEPS {
            return Err(ConfigError::new(
                "dma-steps",
                self.dma_steps.to_string(),
                format!(
                    "need 1 to {MAX_DMA_STEPS} (MAX_DMA_STEPS): every phase must check the \
                     preserved devices' DMA"
                ),
            ));
        }
        let steps = self.dma_steps as u64 * self.devices.len() as u64;
        if steps > MAX_STEPS_PER_PHASE {
            return Err(ConfigError::new(
                "dma-steps",
                self.dma_steps.to_string(),
                format!(
                    "{} devices x {} steps = {steps} DMA steps per phase, more than \
                     {MAX_STEPS_PER_PHASE} (MAX_STEPS_PER_PHASE)",
                    self.devices.len(),
                    self.dma_steps
                ),
            ));
        }
        if self.map_bytes == 0 || self.map_bytes % 4096 != 0 {
            return Err(ConfigError::new(
                "map-size",
                self.map_bytes.to_string(),
                "must be a non-zero multiple of 4 KiB",
            ));
        }
        Ok(())
    }
}

/// `4K, 2M or 1G`: the page sizes as a list in words.
fn one_of(sizes: &[PageSize]) -> String {
    let names: Vec<String> = sizes.iter().map(|p| p.to_string()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => "none".into(),
    }
}

/// Parses a size like `4096`, `0x1000`, `64K`, `2M`, `1G`, `16GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        return parse_u64(t);
    }
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown size suffix {c:?}")),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    parse_u64(num)?
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Parses a decimal or `0x` hexadecimal number.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => t.replace('_', "").parse(),
    };
    r.map_err(|_| format!("{s:?}: not a number (decimal or 0x hex)"))
}

/// Parses `BASE:SIZE`, e.g. `0x100000000:16G`.
pub fn parse_ram(s: &str) -> Result<(PhysAddr, u64), String> {
    let (b, z) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected BASE:SIZE, e.g. 0:8G"))?;
    Ok((PhysAddr(parse_u64(b)?), parse_size(z)?))
}

/// Parses a page-size list like `4K,2M,1G`.
pub fn parse_page_sizes(s: &str) -> Result<Vec<PageSize>, String> {
    s.split(',')
        .map(|p| {
            let b = parse_size(p)?;
            PageSize::new(b).ok_or_else(|| format!("{p:?}: not a page size"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_numbers() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x2000"), Ok(0x2000));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("512B"), Ok(512));
        assert!(parse_size("3Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(
            parse_ram("0x1_0000_0000:1G"),
            Ok((PhysAddr(1 << 32), 1 << 30))
        );
        assert!(parse_ram("12").is_err());
        assert_eq!(
            parse_page_sizes("4K,2M"),
            Ok(vec![PageSize::SIZE_4K, PageSize::SIZE_2M])
        );
        assert!(parse_page_sizes("3K").is_err());
    }

    #[test]
    fn builtins_are_valid() {
        for n in Scenario::BUILTIN {
            Scenario::builtin(n).unwrap().validate().unwrap();
        }
        assert!(Scenario::builtin("nope").is_none());
    }

    #[test]
    fn validation_names_the_option() {
        let mut s = Scenario::default_scenario();
        s.domains = 9;
        assert_eq!(s.validate().unwrap_err().option, "domains");
        let mut s = Scenario::default_scenario();
        s.devices.push(s.devices[0]);
        assert_eq!(s.validate().unwrap_err().option, "device");
        let mut s = Scenario::default_scenario();
        s.ram = (PhysAddr(0x1001), 1 << 30);
        assert_eq!(s.validate().unwrap_err().option, "ram");
        assert_eq!(Mode::parse("x").unwrap_err().option, "mode");
    }
}
