//! A PCI function through sysfs (`/sys/bus/pci/devices/<SSSS:BB:DD.F>/`): its command
//! register in `config`, its BAR0 through `resource` and `resource0`.
//!
//! No driver binds the devices the checks use, so nothing else enables their decoding
//! or bus mastering: [`PciFunction::enable`] sets both in the command register.

use crate::devmem::{MapError, Registers, Window, PAGE};
use iommu_core::RequesterId;
use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where Linux lists PCI functions.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Offset of the command register in configuration space (PCI Local Bus spec 3.0,
/// §6.2.2; Linux `PCI_COMMAND`).
pub const PCI_COMMAND: u64 = 0x04;
/// Command register: Memory Space enable (bit 1; Linux `PCI_COMMAND_MEMORY`).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: Bus Master enable (bit 2; Linux `PCI_COMMAND_MASTER`).
pub const COMMAND_MASTER: u16 = 1 << 2;

/// A PCI error, naming the function and what failed.
#[derive(Debug)]
pub enum PciError {
    /// A sysfs file could not be read or written.
    Io {
        /// The function.
        rid: RequesterId,
        /// The file.
        path: PathBuf,
        /// The system's error.
        error: std::io::Error,
    },
    /// The `resource` file does not describe a memory BAR0.
    NoBar0 {
        /// The function.
        rid: RequesterId,
        /// What was found.
        found: String,
    },
    /// BAR0 could not be mapped.
    Map(MapError),
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::Io { rid, path, error } => {
                write!(f, "PCI {rid}: {}: {error}", path.display())
            }
            PciError::NoBar0 { rid, found } => {
                write!(f, "PCI {rid}: no memory BAR0 in sysfs resource ({found:?})")
            }
            PciError::Map(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PciError {}

/// Parses the first line of a sysfs `resource` file (`start end flags`, hexadecimal):
/// BAR0's base and size, if it is a memory BAR (flags bit 9, Linux `IORESOURCE_MEM`).
pub fn parse_bar0(resource: &str) -> Option<(u64, u64)> {
    let line = resource.lines().next()?;
    let mut f = line
        .split_whitespace()
        .map(|v| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok());
    let (start, end, flags) = (f.next()??, f.next()??, f.next()??);
    const IORESOURCE_MEM: u64 = 0x200;
    if flags & IORESOURCE_MEM == 0 || end < start || start == 0 {
        return None;
    }
    Some((start, end - start + 1))
}

/// Offset of the status register (PCI Local Bus spec 3.0, §6.2.3; Linux `PCI_STATUS`).
pub const PCI_STATUS: usize = 0x06;
/// Status register: a capabilities list is present (bit 4; Linux `PCI_STATUS_CAP_LIST`).
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the capabilities pointer (Linux `PCI_CAPABILITY_LIST`).
pub const PCI_CAPABILITY_LIST: usize = 0x34;
/// Capability ID of the AMD IOMMU capability block ("Secure Device", 0Fh; AMD I/O
/// Virtualization Technology spec §3.7 "IOMMU Capability Block"; QEMU
/// `AMDVI_CAPAB_ID_SEC`).
pub const CAP_ID_SECURE_DEVICE: u8 = 0x0f;
/// The IOMMU capability header's CapType (bits 18:16) for an IOMMU (011b; QEMU
/// `AMDVI_CAPAB_INIT_TYPE` is `3 << 16`).
pub const CAP_TYPE_IOMMU: u32 = 0b011;

/// The offset of the first capability `id` in configuration space `cfg`, following
/// the list from [`PCI_CAPABILITY_LIST`]; at most 48 entries are followed (the most a
/// 256-byte space can hold), so a looping list ends.
pub fn find_capability(cfg: &[u8], id: u8) -> Option<usize> {
    let status = u16::from_le_bytes([*cfg.get(PCI_STATUS)?, *cfg.get(PCI_STATUS + 1)?]);
    if status & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = (*cfg.get(PCI_CAPABILITY_LIST)? & !3) as usize;
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        if *cfg.get(at)? == id {
            return Some(at);
        }
        at = (*cfg.get(at + 1)? & !3) as usize;
    }
    None
}

/// The MMIO base an AMD IOMMU's capability block in `cfg` gives: the IOMMU Base
/// Address Low register (block offset 04h: bits 31:14 of the base, bit 0 Enable) and
/// High register (08h: bits 63:32) (AMD I/O Virtualization Technology spec §3.7).
/// `None` without a capability block of CapType IOMMU.
pub fn amd_iommu_capability_base(cfg: &[u8]) -> Option<u64> {
    let at = find_capability(cfg, CAP_ID_SECURE_DEVICE)?;
    let dword = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            cfg.get(at + off..at + off + 4)?.try_into().ok()?,
        ))
    };
    if (dword(0)? >> 16) & 0b111 != CAP_TYPE_IOMMU {
        return None;
    }
    Some((dword(8)? as u64) << 32 | (dword(4)? & 0xffff_c000) as u64)
}

/// Looks through every function under `root` for an AMD IOMMU capability block;
/// returns the first function that has one, with the base its block gives.
pub fn find_amd_iommu(root: &Path) -> Result<Option<(RequesterId, u64)>, String> {
    let dir = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let Ok(rid) = crate::args::parse_bdf("sysfs", &name) else {
            continue;
        };
        let cfg = PciFunction::new(root, rid)
            .config()
            .map_err(|e| e.to_string())?;
        if let Some(base) = amd_iommu_capability_base(&cfg) {
            return Ok(Some((rid, base)));
        }
    }
    Ok(None)
}

/// A PCI function in sysfs.
#[derive(Clone, Debug)]
pub struct PciFunction {
    rid: RequesterId,
    dir: PathBuf,
}

impl PciFunction {
    /// The function `rid` under `root` (normally [`SYSFS_PCI_DEVICES`]).
    pub fn new(root: &Path, rid: RequesterId) -> Self {
        Self {
            rid,
            dir: root.join(rid.to_string()),
        }
    }

    /// The function's requester ID.
    pub fn rid(&self) -> RequesterId {
        self.rid
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> PciError {
        let rid = self.rid;
        move |error| PciError::Io { rid, path, error }
    }

    /// Reads the configuration space sysfs shows (256 bytes for root, 64 for others).
    pub fn config(&self) -> Result<Vec<u8>, PciError> {
        let path = self.dir.join("config");
        std::fs::read(&path).map_err(self.io(path))
    }

    /// Reads the command register.
    pub fn command(&self) -> Result<u16, PciError> {
        let path = self.dir.join("config");
        let f = OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(self.io(path.clone()))?;
        let mut b = [0u8; 2];
        f.read_exact_at(&mut b, PCI_COMMAND)
            .map_err(self.io(path))?;
        Ok(u16::from_le_bytes(b))
    }

    /// Sets Memory Space and Bus Master enable in the command register (the other
    /// bits kept); returns the register as read back.
    pub fn enable(&self) -> Result<u16, PciError> {
        let path = self.dir.join("config");
        let cmd = self.command()? | COMMAND_MEMORY | COMMAND_MASTER;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(self.io(path.clone()))?;
        f.write_all_at(&cmd.to_le_bytes(), PCI_COMMAND)
            .map_err(self.io(path))?;
        self.command()
    }

    /// BAR0's base and size from the `resource` file.
    pub fn bar0(&self) -> Result<(u64, u64), PciError> {
        let path = self.dir.join("resource");
        let text = std::fs::read_to_string(&path).map_err(self.io(path))?;
        parse_bar0(&text).ok_or_else(|| PciError::NoBar0 {
            rid: self.rid,
            found: text.lines().next().unwrap_or("").to_string(),
        })
    }

    /// Maps the first page of BAR0 (through `resource0`) as registers.
    pub fn map_bar0(&self) -> Result<Registers, PciError> {
        let (base, _) = self.bar0()?;
        let path = self.dir.join("resource0");
        let p = path.to_string_lossy().into_owned();
        Window::file_at("BAR0", &p, 0, base, PAGE)
            .map(Registers::new)
            .map_err(PciError::Map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar0_from_the_resource_file() {
        let text = "0x00000000fea00000 0x00000000feafffff 0x0000000000040200\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        assert_eq!(parse_bar0(text), Some((0xfea0_0000, 1 << 20)));
        // An I/O BAR, an empty one, garbage.
        assert_eq!(parse_bar0("0x0000c000 0x0000c03f 0x00040101\n"), None);
        assert_eq!(parse_bar0("0x0 0x0 0x0\n"), None);
        assert_eq!(parse_bar0("zz\n"), None);
        assert_eq!(parse_bar0(""), None);
    }

    #[test]
    fn enable_sets_memory_and_master_and_keeps_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let rid = RequesterId::new(0, 0, 4, 0);
        let dir = root.path().join("0000:00:04.0");
        std::fs::create_dir(&dir).unwrap();
        let mut cfg = vec![0u8; 256];
        cfg[..4].copy_from_slice(&[0x34, 0x12, 0xe8, 0x11]);
        cfg[4] = 0x40; // parity error response, a bit to keep
        std::fs::write(dir.join("config"), &cfg).unwrap();
        let f = PciFunction::new(root.path(), rid);
        assert_eq!(f.command().unwrap(), 0x40);
        assert_eq!(f.enable().unwrap(), 0x46);
        let back = std::fs::read(dir.join("config")).unwrap();
        assert_eq!(&back[..6], &[0x34, 0x12, 0xe8, 0x11, 0x46, 0]);
    }

    /// A configuration space shaped as QEMU's amd-iommu builds it (`amdvi_pci_realize`:
    /// the IOMMU block first, then MSI), base 0xfed80000 (QEMU `AMDVI_BASE_ADDR`).
    fn amd_iommu_config(low: u32, high: u32) -> Vec<u8> {
        let mut cfg = vec![0u8; 256];
        cfg[..4].copy_from_slice(&[0x22, 0x10, 0x19, 0x14]);
        cfg[PCI_STATUS] = STATUS_CAP_LIST as u8;
        cfg[PCI_CAPABILITY_LIST] = 0x40;
        cfg[0x40..0x44].copy_from_slice(&(0x0f_u32 | 0x54 << 8 | 3 << 16).to_le_bytes());
        cfg[0x44..0x48].copy_from_slice(&low.to_le_bytes());
        cfg[0x48..0x4c].copy_from_slice(&high.to_le_bytes());
        cfg[0x54] = 0x05; // MSI, the end of the list
        cfg
    }

    #[test]
    fn the_amd_iommu_base_comes_from_its_capability_block() {
        let cfg = amd_iommu_config(0xfed8_0001, 0);
        assert_eq!(find_capability(&cfg, 0x05), Some(0x54));
        assert_eq!(amd_iommu_capability_base(&cfg), Some(0xfed8_0000));
        let high = amd_iommu_config(0xfed8_0000, 0x1);
        assert_eq!(amd_iommu_capability_base(&high), Some(0x1_fed8_0000));
        // Not an IOMMU block (CapType 0), no capability list, a list that loops.
        let mut other = amd_iommu_config(0xfed8_0000, 0);
        other[0x42] = 0;
        assert_eq!(amd_iommu_capability_base(&other), None);
        let mut none = amd_iommu_config(0xfed8_0000, 0);
        none[PCI_STATUS] = 0;
        assert_eq!(amd_iommu_capability_base(&none), None);
        let mut looping = amd_iommu_config(0, 0);
        looping[0x40] = 0x09;
        looping[0x55] = 0x40;
        assert_eq!(find_capability(&looping, 0x0f), None);
        // Cut short: no panic.
        assert_eq!(amd_iommu_capability_base(&cfg[..0x46]), None);

        let root = tempfile::tempdir().unwrap();
        for (name, cfg) in [("0000:00:01.0", vec![0u8; 64]), ("0000:00:02.0", cfg)] {
            std::fs::create_dir(root.path().join(name)).unwrap();
            std::fs::write(root.path().join(name).join("config"), cfg).unwrap();
        }
        std::fs::write(root.path().join("not-a-function"), b"").unwrap();
        assert_eq!(
            find_amd_iommu(root.path()).unwrap(),
            Some((RequesterId::new(0, 0, 2, 0), 0xfed8_0000))
        );
    }

    #[test]
    fn a_missing_function_names_itself() {
        let root = tempfile::tempdir().unwrap();
        let f = PciFunction::new(root.path(), RequesterId::new(0, 0, 5, 0));
        let e = f.enable().unwrap_err().to_string();
        assert!(e.starts_with("PCI 0000:00:05.0: "), "{e}");
        assert!(e.contains("config"), "{e}");
    }
}
