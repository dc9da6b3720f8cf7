//! `iommu-emu`: plays a named, seeded live-update scenario on the emulator and reports.

use clap::Parser;
use iommu_core::{PageSize, PhysAddr, RequesterId};
use scenarios::config::{parse_page_sizes, parse_ram, parse_size, parse_u64, Mode, Scenario};
use scenarios::{run, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Replays DMA through an emulated Intel VT-d unit across a live update (prepare,
/// freeze, kexec, adopt, finish) and checks every byte.
///
/// Without options it runs the built-in default scenario: legacy, scalable second-stage
/// and scalable first-stage mode, four preserved devices in two domains with 4K, 2M and
/// 1G mappings, plus one device that is not preserved and must fault after freeze.
/// Exit status: 0 when every mode ran clean, 1 when a fault, a wrong byte or an error
/// was seen, 2 on a bad command line.
#[derive(Parser, Debug)]
#[command(
    name = "iommu-emu",
    version,
    after_help = "Examples:
  iommu-emu                                   # the default scenario, all three modes
  iommu-emu --scenario legacy --seed 7
  iommu-emu --mode scalable-fs --device 00:02.0 --device 3b:00.1 --domains 2
  iommu-emu --ram 0x100000000:64G --unit-base 0xfed91000 --map-size 1G --page-sizes 2M,1G
  iommu-emu --save-snapshots /tmp/snaps      # ELF cores before kexec and after adopt
  iommu-emu --list"
)]
struct Cli {
    /// Built-in scenario to start from (see --list).
    #[arg(long, default_value = "default")]
    scenario: String,
    /// List the built-in scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Seed of every random choice.
    #[arg(long, value_parser = parse_u64)]
    seed: Option<u64>,
    /// RAM as BASE:SIZE, e.g. 0:8G or 0x100000000:64G.
    #[arg(long, value_parser = parse_ram)]
    ram: Option<(PhysAddr, u64)>,
    /// MMIO base of the VT-d unit.
    #[arg(long, value_parser = parse_u64)]
    unit_base: Option<u64>,
    /// Mode to run (repeatable): legacy, scalable-ss, scalable-fs.
    #[arg(long = "mode", value_parser = Mode::parse)]
    modes: Vec<Mode>,
    /// A preserved device as [segment:]bus:device.function (repeatable; replaces the
    /// scenario's devices).
    #[arg(long = "device", value_parser = parse_rid)]
    devices: Vec<RequesterId>,
    /// Number of domains the preserved devices are spread over.
    #[arg(long)]
    domains: Option<usize>,
    /// Bytes mapped per domain and page size, e.g. 64M or 16G.
    #[arg(long, value_parser = parse_size)]
    map_size: Option<u64>,
    /// Page sizes, e.g. 4K,2M,1G.
    #[arg(long, value_parser = |s: &str| parse_page_sizes(s).map(PageSizes))]
    page_sizes: Option<PageSizes>,
    /// DMA steps per device and phase.
    #[arg(long)]
    dma_steps: Option<u32>,
    /// Write ELF snapshots (before the kexec, after adopt) into this directory.
    #[arg(long)]
    save_snapshots: Option<PathBuf>,
}

/// A comma-separated page-size list, one command-line value.
#[derive(Clone, Debug)]
struct PageSizes(Vec<PageSize>);

fn parse_rid(s: &str) -> Result<RequesterId, String> {
    s.parse::<RequesterId>().map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for n in Scenario::BUILTIN {
            println!("{n}");
        }
        return ExitCode::SUCCESS;
    }
    let Some(mut s) = Scenario::builtin(&cli.scenario) else {
        eprintln!(
            "iommu-emu: no built-in scenario {:?} (try --list)",
            cli.scenario
        );
        return ExitCode::from(2);
    };
    if let Some(v) = cli.seed {
        s.seed = v;
    }
    if let Some(v) = cli.ram {
        s.ram = v;
    }
    if let Some(v) = cli.unit_base {
        s.unit_base = PhysAddr(v);
    }
    if !cli.modes.is_empty() {
        s.modes = cli.modes;
    }
    if !cli.devices.is_empty() {
        s.devices = cli.devices;
    }
    if let Some(v) = cli.domains {
        s.domains = v;
    }
    if let Some(v) = cli.map_size {
        s.map_bytes = v;
    }
    if let Some(PageSizes(v)) = cli.page_sizes {
        s.page_sizes = v;
    }
    if let Some(v) = cli.dma_steps {
        s.dma_steps = v;
    }
    let opts = RunOptions {
        save_snapshots: cli.save_snapshots,
    };
    match run(&s, &opts) {
        Ok(report) => {
            println!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("iommu-emu: {e}");
            ExitCode::from(2)
        }
    }
}
