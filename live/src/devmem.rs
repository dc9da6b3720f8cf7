//! Physical memory and MMIO registers through `/dev/mem`.
//!
//! A [`Window`] is one shared mapping of a physical range. Accesses are volatile and,
//! where address and length allow, 8 or 4 bytes wide, so that a 64-bit table entry is
//! written in one store (the IOMMU may walk the tables at any time) and a register is
//! accessed with the width the specification gives it.
//!
//! With `CONFIG_STRICT_DEVMEM` (Debian), `/dev/mem` maps only ranges that are not
//! System RAM; `memmap=SIZE$BASE` makes the reserved range such a range, and
//! `iomem=relaxed` lets user space map MMIO that a driver might claim.

use iommu_core::mem::{MemError, PhysMem};
use iommu_core::{PhysAddr, RegisterAccess};
use memmap2::{MmapMut, MmapOptions};
use std::fmt;
use std::fs::OpenOptions;

/// Bytes of a page: mappings start and end on page boundaries.
pub const PAGE: u64 = 4096;

/// Why a window could not be mapped.
#[derive(Debug)]
pub enum MapError {
    /// Base or size not page aligned, size zero, or the range wraps.
    BadRange {
        /// What the range is for.
        what: &'static str,
        /// Physical base.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// `/dev/mem` could not be opened or mapped.
    Io {
        /// What the range is for.
        what: &'static str,
        /// Physical base.
        base: u64,
        /// Size in bytes.
        size: u64,
        /// The system's error.
        error: std::io::Error,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::BadRange { what, base, size } => write!(
                f,
                "{what}: range {base:#x}+{size:#x} is empty, not page aligned or wraps"
            ),
            MapError::Io {
                what,
                base,
                size,
                error,
            } => write!(
                f,
                "{what}: cannot map /dev/mem at {base:#x}+{size:#x}: {error} \
                 (is the range reserved with memmap= and the kernel booted with iomem=relaxed?)"
            ),
        }
    }
}

impl std::error::Error for MapError {}

/// Checks that `base..base+size` is a non-empty, page-aligned range that does not wrap.
pub fn check_range(what: &'static str, base: u64, size: u64) -> Result<(), MapError> {
    let ok = size != 0 && base % PAGE == 0 && size % PAGE == 0 && base.checked_add(size).is_some();
    if ok {
        Ok(())
    } else {
        Err(MapError::BadRange { what, base, size })
    }
}

/// A mapped physical range.
pub struct Window {
    map: MmapMut,
    base: u64,
    what: &'static str,
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Window({}: {:#x}+{:#x})",
            self.what,
            self.base,
            self.map.len()
        )
    }
}

impl Window {
    /// Maps `size` bytes of physical memory at `base` from `/dev/mem` (shared, read and
    /// write). `what` names the range in errors.
    pub fn devmem(what: &'static str, base: u64, size: u64) -> Result<Self, MapError> {
        Self::file(what, "/dev/mem", base, size)
    }

    /// Maps `size` bytes at offset `base` of the file at `path` (shared), which stands
    /// for physical memory from `base` on: `/dev/mem`, a PCI `resourceN` file (offset
    /// 0), or an ordinary file in tests.
    pub fn file(what: &'static str, path: &str, base: u64, size: u64) -> Result<Self, MapError> {
        Self::file_at(what, path, base, base, size)
    }

    /// Maps `size` bytes at `offset` of the file at `path`; the window's physical base
    /// is `base` (for a BAR's `resourceN` file, offset 0 is the BAR's address).
    pub fn file_at(
        what: &'static str,
        path: &str,
        offset: u64,
        base: u64,
        size: u64,
    ) -> Result<Self, MapError> {
        check_range(what, base, size)?;
        check_range(what, offset, size)?;
        let io = |error| MapError::Io {
            what,
            base,
            size,
            error,
        };
        let len = usize::try_from(size).map_err(|_| MapError::BadRange { what, base, size })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        // SAFETY: the mapping is shared and its contents may change under us (devices,
        // the IOMMU, another process): it is only ever accessed through raw volatile
        // reads and writes in this module, never as a Rust reference to its bytes, so no
        // aliasing or validity assumption is made about it. The length was checked.
        let map =
            unsafe { MmapOptions::new().offset(offset).len(len).map_mut(&file) }.map_err(io)?;
        Ok(Self { map, base, what })
    }

    /// An anonymous (private, zeroed) window standing for `size` bytes at `base`: what
    /// tests use in place of `/dev/mem`.
    pub fn anonymous(what: &'static str, base: u64, size: u64) -> Result<Self, MapError> {
        check_range(what, base, size)?;
        let len = usize::try_from(size).map_err(|_| MapError::BadRange { what, base, size })?;
        let map = MmapMut::map_anon(len).map_err(|error| MapError::Io {
            what,
            base,
            size,
            error,
        })?;
        Ok(Self { map, base, what })
    }

    /// Physical base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Offset of `len` bytes at `addr` inside the window, if they are all inside.
    fn offset(&self, addr: u64, len: u64) -> Result<usize, MemError> {
        let end = addr.checked_add(len).ok_or(MemError::Overflow {
            addr: PhysAddr(addr),
            len,
        })?;
        if addr < self.base {
            return Err(MemError::Unbacked {
                addr: PhysAddr(addr),
            });
        }
        if end > self.base + self.size() {
            return Err(MemError::Unbacked {
                addr: PhysAddr(addr.max(self.base + self.size())),
            });
        }
        Ok((addr - self.base) as usize)
    }

    /// Reads `buf.len()` bytes at physical `addr`.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let off = self.offset(addr, buf.len() as u64)?;
        let p = self.map.as_ptr();
        let mut i = 0;
        while i < buf.len() {
            let at = off + i;
            let left = buf.len() - i;
            if at % 8 == 0 && left >= 8 {
                // SAFETY: `at..at + 8` lies inside the mapping (checked by `offset`) and
                // is 8-byte aligned (the mapping is page aligned); a volatile read of
                // plain memory or MMIO has no further requirement.
                let v = unsafe { p.add(at).cast::<u64>().read_volatile() };
                buf[i..i + 8].copy_from_slice(&v.to_le_bytes());
                i += 8;
            } else if at % 4 == 0 && left >= 4 {
                // SAFETY: as above, for 4 aligned bytes inside the mapping.
                let v = unsafe { p.add(at).cast::<u32>().read_volatile() };
                buf[i..i + 4].copy_from_slice(&v.to_le_bytes());
                i += 4;
            } else {
                // SAFETY: as above, for one byte inside the mapping.
                buf[i] = unsafe { p.add(at).read_volatile() };
                i += 1;
            }
        }
        Ok(())
    }

    /// Writes `data` at physical `addr`.
    pub fn write_bytes(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.offset(addr, data.len() as u64)?;
        let p = self.map.as_mut_ptr();
        let mut i = 0;
        while i < data.len() {
            let at = off + i;
            let left = data.len() - i;
            if at % 8 == 0 && left >= 8 {
                let v = u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
                // SAFETY: `at..at + 8` lies inside the writable mapping (checked by
                // `offset`) and is 8-byte aligned; one volatile store, so the IOMMU
                // never sees half an entry.
                unsafe { p.add(at).cast::<u64>().write_volatile(v) };
                i += 8;
            } else if at % 4 == 0 && left >= 4 {
                let v = u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes"));
                // SAFETY: as above, for 4 aligned bytes inside the mapping.
                unsafe { p.add(at).cast::<u32>().write_volatile(v) };
                i += 4;
            } else {
                // SAFETY: as above, for one byte inside the mapping.
                unsafe { p.add(at).write_volatile(data[i]) };
                i += 1;
            }
        }
        Ok(())
    }
}

impl PhysMem for Window {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.read_bytes(addr.0, buf)
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.write_bytes(addr.0, data)
    }
}

/// An IOMMU's register window: [`RegisterAccess`] with offsets from the window's base.
///
/// An offset outside the window (a driver bug) reads as all ones and drops the write,
/// like a PCI master abort, and is counted in [`Registers::stray`].
#[derive(Debug)]
pub struct Registers {
    window: Window,
    /// Accesses outside the window.
    pub stray: u64,
}

impl Registers {
    /// Registers in `window`.
    pub fn new(window: Window) -> Self {
        Self { window, stray: 0 }
    }

    /// Maps the 4 KiB register window of a unit at `base` from `/dev/mem`.
    pub fn devmem(base: u64) -> Result<Self, MapError> {
        Self::devmem_sized(base, PAGE)
    }

    /// Maps a register window of `size` bytes at `base` from `/dev/mem` (AMD-Vi's is
    /// 16 KiB: its ring pointers are at 0x2000).
    pub fn devmem_sized(base: u64, size: u64) -> Result<Self, MapError> {
        Window::devmem("IOMMU registers", base, size).map(Self::new)
    }

    /// The window.
    pub fn window(&self) -> &Window {
        &self.window
    }

    fn read<const N: usize>(&mut self, offset: u64) -> Option<[u8; N]> {
        let mut b = [0; N];
        let addr = self.window.base.checked_add(offset)?;
        if offset % N as u64 != 0 || self.window.read_bytes(addr, &mut b).is_err() {
            self.stray += 1;
            return None;
        }
        Some(b)
    }

    fn write(&mut self, offset: u64, b: &[u8]) {
        let ok = offset % b.len() as u64 == 0
            && self
                .window
                .base
                .checked_add(offset)
                .is_some_and(|a| self.window.write_bytes(a, b).is_ok());
        if !ok {
            self.stray += 1;
        }
    }
}

impl RegisterAccess for Registers {
    fn read32(&mut self, offset: u64) -> u32 {
        self.read::<4>(offset).map_or(u32::MAX, u32::from_le_bytes)
    }
    fn write32(&mut self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
    fn read64(&mut self, offset: u64) -> u64 {
        self.read::<8>(offset).map_or(u64::MAX, u64::from_le_bytes)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.write(offset, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_page_aligned_non_empty_and_not_wrap() {
        assert!(check_range("t", 0x1000, 0x2000).is_ok());
        for (b, s) in [
            (0x1001, 0x1000),
            (0x1000, 0x1001),
            (0x1000, 0),
            (u64::MAX - 0xfff, 0x2000),
        ] {
            let e = check_range("pool", b, s).unwrap_err();
            assert!(e.to_string().starts_with("pool: range"), "{e}");
        }
    }

    #[test]
    fn accesses_outside_the_window_are_unbacked_errors() {
        let mut w = Window::anonymous("t", 0x10_0000, 0x2000).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(
            w.read_bytes(0xf_fff8, &mut b),
            Err(MemError::Unbacked {
                addr: PhysAddr(0xf_fff8)
            })
        );
        assert_eq!(
            w.write_bytes(0x10_1ff8, &b),
            Err(MemError::Unbacked {
                addr: PhysAddr(0x10_2000)
            })
        );
        assert!(matches!(
            w.read_bytes(u64::MAX - 4, &mut b),
            Err(MemError::Overflow { .. })
        ));
        // The last bytes inside are fine.
        w.write_bytes(0x10_1ff0, &[7; 16]).unwrap();
    }

    #[test]
    fn unaligned_and_mixed_width_accesses_round_trip() {
        let mut w = Window::anonymous("t", 0x4000, 0x1000).unwrap();
        let data: Vec<u8> = (0..37u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(5))
            .collect();
        w.write_bytes(0x4003, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        w.read_bytes(0x4003, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            w.read_u64(PhysAddr(0x4008)).unwrap(),
            u64::from_le_bytes(data[5..13].try_into().unwrap())
        );
        let mut before = [0u8; 3];
        w.read_bytes(0x4000, &mut before).unwrap();
        assert_eq!(before, [0; 3], "bytes before the write untouched");
    }

    #[test]
    fn registers_are_offsets_from_the_window_and_strays_are_counted() {
        let mut r = Registers::new(Window::anonymous("regs", 0xfed9_0000, PAGE).unwrap());
        r.write64(0x20, 0x1122_3344_5566_7788);
        assert_eq!(r.read32(0x20), 0x5566_7788);
        assert_eq!(r.read32(0x24), 0x1122_3344);
        assert_eq!(
            r.window().read_u64(PhysAddr(0xfed9_0020)).unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(r.stray, 0);
        assert_eq!(r.read64(0x1000), u64::MAX);
        r.write32(0x1ffc, 1);
        assert_eq!(r.read32(0x22), u32::MAX, "misaligned");
        assert_eq!(r.stray, 3);
    }
}
