//! `iommu-inspect`: dump, diff and verify IOMMU state from snapshots and memory images.
//!
//! Exit status: `dump` and `walk` 0 on success; `diff` 0 same, 1 different; `verify` 0
//! clean, 1 problems; 2 for any error (one line on stderr).

use clap::{Args, Parser, Subcommand, ValueEnum};
use inspector::diff;
use inspector::dump::{self, OutputFormat};
use inspector::image::OpenAs;
use inspector::model::{parse_range, parse_u64, Filter, LoadOptions, Loaded};
use inspector::progress::Progress;
use inspector::translate;
use inspector::verify::{self, VerifyOptions};
use inspector::vtd::UnitOverride;
use inspector::InspectError;
use iommu_core::{Iova, RequesterId};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vtd::hw::regs::Ttm;

const EXAMPLES: &str = "\
Examples:
  iommu-inspect dump before.elf
  iommu-inspect dump before.elf --device 00:02.0 --iova 0x100000+0x10000
  iommu-inspect dump before.elf --json > before.json
  iommu-inspect dump before.elf --format linux      # like debugfs dmar/domain_translation_struct
  iommu-inspect walk 0x1234000 --device 0000:03:00.0 before.elf
  iommu-inspect walk 0x1000 --device 03:00.0 --pasid 5 --write after.elf
  iommu-inspect diff before.elf after.elf             # exit 0 same, 1 different, 2 error
  iommu-inspect diff --semantic before.elf after.elf  # translations only
  iommu-inspect verify before-kexec.elf               # handover record vs tables
  iommu-inspect dump vmcore --vtd-rtaddr 0x7f000000 --vtd-mode scalable --haw 46
  iommu-inspect verify vmcore --vtd-rtaddr 0x7f000000 --vtd-base 0xfed90000 --kho-blob 0x2f000000
  iommu-inspect dump mem.raw --base 0x0 --vtd-rtaddr 0x100000
  iommu-inspect dump mem.raw --base 0x0 --amdvi-devtab 0x100000 --amdvi-devtab-size 0
  iommu-inspect dump amd.elf --format linux          # like debugfs iommu/amd/devtbl
  iommu-inspect walk 0x1000 --devid 0x10 --write amd.elf
  iommu-inspect dump mem.raw --base 0x0 --smmu-strtab 0x100000 --smmu-strtab-cfg 0x8
  iommu-inspect walk 0x1000 --stream 0x3:0x1 smmu.elf";

/// Inspect IOMMU state (Intel VT-d, AMD-Vi, Arm SMMUv3) in emulator snapshots, ELF memory
/// cores and raw memory images: registers, device/stream/context structures, page
/// tables and mappings.
#[derive(Parser, Debug)]
#[command(name = "iommu-inspect", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct ImageOpts {
    /// Read the file as raw physical memory starting at this address (not ELF).
    #[arg(long, value_parser = num)]
    base: Option<u64>,
    /// Root table address of the VT-d unit, for images without IOMMU notes (QEMU
    /// dump-guest-memory, kdump vmcore, raw memory). Replaces the snapshot's units.
    #[arg(long = "vtd-rtaddr", value_parser = num)]
    vtd_rtaddr: Option<u64>,
    /// Translation table mode of that unit.
    #[arg(long = "vtd-mode", value_enum)]
    vtd_mode: Option<ModeArg>,
    /// CAP register value of that unit (default: permissive, every feature).
    #[arg(long = "vtd-cap", value_parser = num)]
    vtd_cap: Option<u64>,
    /// ECAP register value of that unit (default: permissive, every feature).
    #[arg(long = "vtd-ecap", value_parser = num)]
    vtd_ecap: Option<u64>,
    /// MMIO base of that unit: names its KHO record (`iommu-vtd-<base>`) for verify.
    #[arg(long = "vtd-base", value_parser = num)]
    vtd_base: Option<u64>,
    /// Host address width in bits for reserved-bit checks (default CAP.MGAW + 1, or 52
    /// for a unit given on the command line).
    #[arg(long)]
    haw: Option<u32>,
    /// AMD-Vi device table, for images without IOMMU notes: the Device Table Base
    /// register value (DevTabBase 51:12, Size 8:0) or the table's address. Replaces the
    /// snapshot's AMD-Vi units.
    #[arg(long = "amdvi-devtab", value_parser = num)]
    amdvi_devtab: Option<u64>,
    /// Size field of that device table (4 KiB pages - 1; default the register value's,
    /// or 0x1ff: 2 MiB, 65536 DeviceIDs).
    #[arg(long = "amdvi-devtab-size", value_parser = num)]
    amdvi_devtab_size: Option<u64>,
    /// Extended Feature register of that unit (default 0x9810: GTSup, HATS=2 for 6-level
    /// v1 tables, GATS=1 for 5-level v2 tables, GLXSup=2).
    #[arg(long = "amdvi-efr", value_parser = num)]
    amdvi_efr: Option<u64>,
    /// Control register of that unit (default 0x10001: IommuEn, GTEn).
    #[arg(long = "amdvi-control", value_parser = num)]
    amdvi_control: Option<u64>,
    /// MMIO base of that unit (names its `iommu-amdvi-<base>` record).
    #[arg(long = "amdvi-base", value_parser = num)]
    amdvi_base: Option<u64>,
    /// SME C-bit position (12..51) in AMD-Vi table pointers, page addresses and the
    /// device table base, stripped from every address (default: none). Applies to every
    /// AMD-Vi unit, snapshot units too.
    #[arg(long = "amdvi-c-bit", value_parser = clap::value_parser!(u8))]
    amdvi_c_bit: Option<u8>,
    /// SMMUv3 stream table, for images without IOMMU notes: the STRTAB_BASE value (ADDR
    /// 51:6). Replaces the snapshot's SMMUv3s; needs --smmu-strtab-cfg.
    #[arg(long = "smmu-strtab", value_parser = num)]
    smmu_strtab: Option<u64>,
    /// STRTAB_BASE_CFG of that SMMU (FMT 17:16, SPLIT 10:6, LOG2SIZE 5:0).
    #[arg(long = "smmu-strtab-cfg", value_parser = num32)]
    smmu_strtab_cfg: Option<u32>,
    /// IDR0 of that SMMU (default 0x090c_100b: S1P, S2P, AArch64 tables, ASID16, VMID16, STALL_MODEL 1,
    /// 2-level CD tables, 2-level stream tables).
    #[arg(long = "smmu-idr0", value_parser = num32)]
    smmu_idr0: Option<u32>,
    /// IDR1 of that SMMU (default 0x520: SIDSIZE 32, SSIDSIZE 20).
    #[arg(long = "smmu-idr1", value_parser = num32)]
    smmu_idr1: Option<u32>,
    /// IDR5 of that SMMU (default 0x75: OAS 48 bits, 4K, 16K and 64K granules).
    #[arg(long = "smmu-idr5", value_parser = num32)]
    smmu_idr5: Option<u32>,
    /// MMIO base of that SMMU (names its `iommu-smmuv3-<base>` record).
    #[arg(long = "smmu-base", value_parser = num)]
    smmu_base: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Legacy,
    Scalable,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum FormatArg {
    Text,
    Json,
    Linux,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Registers, structures, devices and their mappings.
    Dump {
        /// The image.
        image: PathBuf,
        #[command(flatten)]
        img: ImageOpts,
        /// Only this device (\[segment:\]bus:device.function, hex).
        // The help is given as text: clap would show the doc comment's escapes.
        #[arg(
            long,
            value_parser = bdf,
            help = "Only this device ([segment:]bus:device.function, hex)"
        )]
        device: Option<RequesterId>,
        /// Only this PASID (scalable mode; 20 bits).
        #[arg(long, value_parser = pasid20)]
        pasid: Option<u32>,
        /// Only devices of this domain ID.
        #[arg(long, value_parser = num16)]
        domain: Option<u16>,
        /// Only mappings in this IOVA range: START-END, START+SIZE or ADDR.
        #[arg(long, value_parser = range)]
        iova: Option<(u64, u64)>,
        /// JSON output (same as --format json).
        #[arg(long)]
        json: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
    },
    /// Translate one address for one device, step by step, or say why it would fault.
    Walk {
        /// The IOVA.
        #[arg(value_parser = num)]
        iova: u64,
        /// The image.
        image: PathBuf,
        /// The requester (\[segment:\]bus:device.function, hex).
        #[arg(
            long,
            value_parser = bdf,
            help = "The requester ([segment:]bus:device.function, hex)",
            required_unless_present_any = ["devid", "stream"]
        )]
        device: Option<RequesterId>,
        /// The requester as an AMD-Vi DeviceID (16 bits: bus << 8 | devfn).
        #[arg(long, value_parser = num16, conflicts_with_all = ["device", "stream"])]
        devid: Option<u16>,
        /// The requester as an SMMUv3 StreamID, with an optional SubstreamID.
        #[arg(
            long,
            value_parser = stream,
            conflicts_with_all = ["device", "pasid"],
            help = "The requester as an SMMUv3 StreamID, with an optional SubstreamID: SID[:SSID]"
        )]
        stream: Option<(u32, Option<u32>)>,
        /// The request's PASID (scalable mode; 20 bits); none = request without PASID.
        #[arg(long, value_parser = pasid20)]
        pasid: Option<u32>,
        /// Translate a write (default: a read).
        #[arg(long)]
        write: bool,
        /// Which unit when the image has several (name like dmar1, or MMIO base).
        #[arg(long)]
        unit: Option<String>,
        #[command(flatten)]
        img: ImageOpts,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Compare two images device by device (exit 0 same, 1 different, 2 error).
    Diff {
        /// First image.
        a: PathBuf,
        /// Second image.
        b: PathBuf,
        /// Ignore where tables live and which domain IDs tag them; compare translations.
        #[arg(long)]
        semantic: bool,
        #[command(flatten)]
        img: ImageOpts,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check the handover record and preserved set against the tables (exit 0 clean, 1
    /// problems, 2 error).
    Verify {
        /// The image.
        image: PathBuf,
        /// Address of the KHO blob (the KHO FDT the kexec'd kernel was given). Default:
        /// scan the image for it if it holds at most 1 GiB of memory.
        #[arg(long = "kho-blob", value_parser = num)]
        kho_blob: Option<u64>,
        /// Scan only this physical range for the KHO blob: START-END (inclusive),
        /// START+SIZE or ADDR.
        #[arg(long = "kho-scan", value_parser = phys_range, conflicts_with = "kho_blob")]
        kho_scan: Option<(u64, u64)>,
        /// The VT-d record from a file (a KHO client record or a bare payload).
        #[arg(long)]
        record: Option<PathBuf>,
        #[command(flatten)]
        img: ImageOpts,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn num(s: &str) -> Result<u64, String> {
    parse_u64(s)
}

fn bdf(s: &str) -> Result<RequesterId, String> {
    s.parse::<RequesterId>().map_err(|e| e.to_string())
}

/// A PASID: 20 bits (VT-d PASIDs are 20-bit; ECAP.PSS can only narrow that).
fn pasid20(s: &str) -> Result<u32, String> {
    let v = parse_u64(s)?;
    if v >= 1 << 20 {
        return Err(format!("{s}: a PASID is 20 bits (at most 0xfffff)"));
    }
    Ok(v as u32)
}

fn num32(s: &str) -> Result<u32, String> {
    let v = parse_u64(s)?;
    u32::try_from(v).map_err(|_| format!("{s} does not fit 32 bits"))
}

/// `SID[:SSID]` (hex with 0x or decimal each).
fn stream(s: &str) -> Result<(u32, Option<u32>), String> {
    let (a, b) = match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let sid = num32(a)?;
    let ssid = b.map(num32).transpose()?;
    if ssid.is_some_and(|x| x >= 1 << 20) {
        return Err(format!("{s}: a SubstreamID is at most 20 bits"));
    }
    Ok((sid, ssid))
}

fn num16(s: &str) -> Result<u16, String> {
    let v = parse_u64(s)?;
    u16::try_from(v).map_err(|_| format!("{s} does not fit 16 bits"))
}

fn range(s: &str) -> Result<(u64, u64), String> {
    parse_range(s)
}

fn phys_range(s: &str) -> Result<(u64, u64), String> {
    parse_range(s).map_err(|e| e.replace("IOVA range", "physical range"))
}

fn load_opts(o: &ImageOpts) -> LoadOptions {
    LoadOptions {
        open: match o.base {
            Some(base) => OpenAs::Raw { base },
            None => OpenAs::Elf,
        },
        unit: UnitOverride {
            rtaddr: o.vtd_rtaddr,
            mode: o.vtd_mode.map(|m| match m {
                ModeArg::Legacy => Ttm::Legacy,
                ModeArg::Scalable => Ttm::Scalable,
            }),
            haw: o.haw,
            cap: o.vtd_cap,
            ecap: o.vtd_ecap,
            base: o.vtd_base,
        },
        amdvi: inspector::amdvi::AmdViOverride {
            devtab: o.amdvi_devtab,
            devtab_size: o.amdvi_devtab_size,
            efr: o.amdvi_efr,
            control: o.amdvi_control,
            base: o.amdvi_base,
            c_bit: o.amdvi_c_bit,
        },
        smmu: inspector::smmuv3::SmmuOverride {
            strtab: o.smmu_strtab,
            strtab_cfg: o.smmu_strtab_cfg,
            idr0: o.smmu_idr0,
            idr1: o.smmu_idr1,
            idr5: o.smmu_idr5,
            base: o.smmu_base,
        },
    }
}

fn open(path: &Path, o: &ImageOpts) -> Result<Loaded, InspectError> {
    let opts = load_opts(o);
    let image = inspector::image::Image::open(path, opts.open)?;
    Loaded::from_image(image, &opts)
}

fn run(cli: Cli) -> Result<u8, InspectError> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let code = match cli.cmd {
        Cmd::Dump {
            image,
            img,
            device,
            pasid,
            domain,
            iova,
            json,
            format,
        } => {
            let l = open(&image, &img)?;
            let filter = Filter {
                device,
                pasid,
                domain,
                iova,
            };
            let fmt = match (json, format) {
                (true, _) | (_, FormatArg::Json) => OutputFormat::Json,
                (_, FormatArg::Linux) => OutputFormat::Linux,
                _ => OutputFormat::Text,
            };
            let mut p = Progress::new("dumping", dump::work(&l), l.image.file_size());
            dump::dump_with_progress(&l, &filter, fmt, &mut out, &mut p)?;
            0
        }
        Cmd::Walk {
            iova,
            image,
            device,
            devid,
            stream,
            pasid,
            write,
            unit,
            img,
            json,
        } => {
            let l = open(&image, &img)?;
            let (device, pasid) = match (device, devid, stream) {
                (Some(d), _, _) => (d, pasid),
                (None, Some(id), _) => (RequesterId::from_sid(0, id), pasid),
                (None, None, Some((sid, ssid))) => (inspector::smmuv3::stream_rid(sid), ssid),
                _ => {
                    return Err(InspectError::Usage(
                        "give --device, --devid or --stream".into(),
                    ))
                }
            };
            let units = &l.units;
            let us = match &unit {
                Some(u) => units
                    .iter()
                    .find(|x| x.name() == *u || parse_u64(u).is_ok_and(|b| b == x.id().base.0))
                    .ok_or_else(|| InspectError::Usage(format!("no unit {u} in the image")))?,
                None => {
                    let behind: Vec<_> = units.iter().filter(|x| x.serves(device)).collect();
                    match (behind.len(), units.len()) {
                        (1, _) => behind[0],
                        (_, 1) => &units[0],
                        _ => {
                            return Err(InspectError::Usage(format!(
                                "the image has {} units; choose one with --unit",
                                units.len()
                            )))
                        }
                    }
                }
            };
            let t = us.translate(&l.image, device, pasid, Iova(iova), write)?;
            if json {
                translate::write_json(&t, us.name(), &mut out)?;
            } else {
                translate::write_text(&t, us.name(), &mut out)?;
            }
            0
        }
        Cmd::Diff {
            a,
            b,
            semantic,
            img,
            json,
        } => {
            let la = open(&a, &img)?;
            let lb = open(&b, &img)?;
            let d = diff::diff(&la, &lb, semantic);
            let (na, nb) = (a.display().to_string(), b.display().to_string());
            if json {
                diff::write_json(&d, &na, &nb, &mut out)?;
            } else {
                diff::write_text(&d, &na, &nb, &mut out)?;
            }
            u8::from(!d.same())
        }
        Cmd::Verify {
            image,
            kho_blob,
            kho_scan,
            record,
            img,
            json,
        } => {
            let record = match record {
                Some(p) => {
                    Some(std::fs::read(&p).map_err(|err| InspectError::Io { path: p, err })?)
                }
                None => None,
            };
            let l = open(&image, &img)?;
            let scanned = match kho_scan {
                Some((a, b)) => l
                    .image
                    .segments()
                    .iter()
                    .map(|s| {
                        let (lo, hi) = (s.paddr.max(a), (s.paddr + (s.size - 1)).min(b));
                        if lo <= hi {
                            hi - lo + 1
                        } else {
                            0
                        }
                    })
                    .sum(),
                None => l.image.memory_bytes(),
            };
            let mut p = Progress::new("searching for the KHO blob", scanned, l.image.file_size());
            let r = verify::verify(
                &l,
                &VerifyOptions {
                    blob: kho_blob,
                    record,
                    scan: kho_scan,
                },
                &mut p,
            )?;
            if json {
                verify::write_json(&r, &mut out)?;
            } else {
                verify::write_text(&r, &mut out)?;
            }
            u8::from(!r.clean())
        }
    };
    out.flush()?;
    Ok(code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(c) => ExitCode::from(c),
        Err(InspectError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(0)
        }
        Err(e) => {
            eprintln!("iommu-inspect: {e}");
            ExitCode::from(2)
        }
    }
}
