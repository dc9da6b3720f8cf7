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

    #[test]
    fn a_missing_function_names_itself() {
        let root = tempfile::tempdir().unwrap();
        let f = PciFunction::new(root.path(), RequesterId::new(0, 0, 5, 0));
        let e = f.enable().unwrap_err().to_string();
        assert!(e.starts_with("PCI 0000:00:05.0: "), "{e}");
        assert!(e.contains("config"), "{e}");
    }
}
