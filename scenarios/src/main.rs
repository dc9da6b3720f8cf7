//! `iommu-emu`: plays a named, seeded live-update scenario on the emulator and reports.

use clap::Parser;
use iommu_core::{PageSize, PhysAddr, RequesterId};
use scenarios::config::{parse_page_sizes, parse_ram, parse_size, parse_u64, Scenario};
use scenarios::{
    parse_device_ids, run_selected, select, ArchName, ArchOptions, RunOptions, EXIT_FAILED,
    EXIT_IO, EXIT_OK, EXIT_USAGE,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Replays DMA through an emulated IOMMU (Intel VT-d, AMD-Vi) across a live update
/// (prepare, freeze, kexec, adopt, finish) and checks every byte.
///
/// Without options it runs the built-in default scenario on every architecture in every
/// mode (VT-d legacy, scalable second-stage and scalable first-stage; AMD-Vi v1 and v2):
/// four preserved devices in two domains with 4K, 2M and 1G mappings, plus one device
/// that is not preserved and must fault after freeze.
/// Exit status: 0 when every mode ran clean; 1 when a fault, a wrong byte or an error
/// was seen; 2 when the command line (or the scenario it makes) cannot work, with the
/// reason, before anything runs; 3 on an I/O error (a snapshot or the report could not
/// be written, e.g. a full disk).
#[derive(Parser, Debug)]
#[command(
    name = "iommu-emu",
    version,
    after_help = "Examples:
  iommu-emu                                   # the default scenario, every arch and mode
  iommu-emu --arch amdvi --mode v2 --amdvi-device-ids 00:00.0-f0:1f.7
  iommu-emu --scenario legacy --seed 7
  iommu-emu --mode scalable-fs --device 00:02.0 --device 3b:00.1 --domains 2
  iommu-emu --ram 0x100000000:64G --unit-base 0xfed91000 --map-size 1G --page-sizes 2M,1G
  iommu-emu --save-snapshots /tmp/snaps      # ELF cores before kexec and after adopt
  iommu-emu --list

Exit status:
  0  every mode ran clean
  1  a fault of a preserved device, a wrong byte or an error was seen
  2  the command line or the scenario cannot work (the reason is printed; nothing ran)
  3  an I/O error: a snapshot or the report could not be written (e.g. disk full)"
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
    /// Architecture to run (repeatable): vtd, amdvi. Default: every architecture, or those the
    /// --mode values belong to.
    #[arg(long = "arch", value_parser = ArchName::parse)]
    arches: Vec<ArchName>,
    /// Mode to run (repeatable); a mode names its architecture: VT-d legacy,
    /// scalable-ss, scalable-fs; AMD-Vi v1 (host tables), v2 (guest tables through the
    /// GCR3 table). Default: every mode of each architecture run.
    #[arg(long = "mode")]
    modes: Vec<String>,
    /// AMD-Vi: the DeviceIDs behind the unit (as ACPI IVRS gives them), FIRST-LAST as
    /// bus:device.function or numbers, e.g. 00:00.0-3f:1f.7. Default: every DeviceID.
    #[arg(long, value_parser = parse_device_ids)]
    amdvi_device_ids: Option<std::ops::RangeInclusive<u16>>,
    /// A preserved device as `[segment:]bus:device.function` (repeatable; replaces the
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
    /// DMA steps per device and phase (1 to 65536; devices x steps at most 2^20).
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
        let text: String = Scenario::BUILTIN.iter().map(|n| format!("{n}\n")).collect();
        return print(&text, ExitCode::SUCCESS);
    }
    let Some(mut s) = Scenario::builtin(&cli.scenario) else {
        eprintln!(
            "iommu-emu: no built-in scenario {:?} (try --list)",
            cli.scenario
        );
        return ExitCode::from(EXIT_USAGE);
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
    let selections = match select(&cli.arches, &cli.modes) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("iommu-emu: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let opts = RunOptions {
        save_snapshots: cli.save_snapshots,
    };
    let arch_opts = ArchOptions {
        amdvi_device_ids: cli.amdvi_device_ids,
    };
    match run_selected(&s, &selections, &arch_opts, &opts) {
        Ok(reports) => {
            let code = if reports.iter().all(|r| r.is_clean()) {
                EXIT_OK
            } else {
                EXIT_FAILED
            };
            let text: Vec<String> = reports.iter().map(|r| format!("{r}\n")).collect();
            print(&text.join("\n"), ExitCode::from(code))
        }
        Err(e) => {
            eprintln!("iommu-emu: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}

/// Writes `text` to standard output and returns `code`, or [`EXIT_IO`] when the output
/// cannot be written (a full disk, a closed pipe).
fn print(text: &str, code: ExitCode) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) => {
            eprintln!("iommu-emu: writing the report to standard output: {e}");
            ExitCode::from(EXIT_IO)
        }
    }
}
