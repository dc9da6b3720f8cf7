//! Physical memory as the IOMMU sees it.
//!
//! Everything that reads or writes tables goes through [`PhysMem`]: the driver in a
//! kernel (backed by the direct map), the emulator (sparse memory with poison), the
//! inspector (a memory image). Reads of memory that is not there, or that holds
//! poison, are errors, never silent zeros.

use crate::addr::PhysAddr;
use core::fmt;

/// Why a physical memory access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// No memory backs this address (outside RAM, outside the image).
    Unbacked {
        /// First address of the access that is not backed.
        addr: PhysAddr,
    },
    /// The memory holds poison: it was never written, or a kexec did not preserve it.
    Poisoned {
        /// First poisoned address of the access.
        addr: PhysAddr,
    },
    /// The access runs past the end of the 64-bit address space.
    Overflow {
        /// Start of the access.
        addr: PhysAddr,
        /// Length of the access.
        len: u64,
    },
    /// The memory may not be written (a read-only image).
    ReadOnly {
        /// Address of the refused write.
        addr: PhysAddr,
    },
}

impl MemError {
    /// The address the error is about.
    pub fn addr(&self) -> PhysAddr {
        match *self {
            MemError::Unbacked { addr }
            | MemError::Poisoned { addr }
            | MemError::Overflow { addr, .. }
            | MemError::ReadOnly { addr } => addr,
        }
    }
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Unbacked { addr } => write!(f, "no memory at physical address {addr}"),
            MemError::Poisoned { addr } => write!(
                f,
                "physical address {addr} holds poison (never written, or not preserved across kexec)"
            ),
            MemError::Overflow { addr, len } => {
                write!(f, "access of {len:#x} bytes at {addr} overflows the address space")
            }
            MemError::ReadOnly { addr } => write!(f, "physical address {addr} is read-only"),
        }
    }
}

/// Byte-addressed physical memory.
///
/// Only [`read`](PhysMem::read) and [`write`](PhysMem::write) are required; the
/// little-endian integer accessors are built on them. Implementations must not leave an
/// access half-done on error where they can avoid it: a failed write changes nothing.
pub trait PhysMem {
    /// Reads `buf.len()` bytes starting at `addr`.
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError>;

    /// Writes `data` starting at `addr`.
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError>;

    /// Reads a little-endian u64.
    fn read_u64(&self, addr: PhysAddr) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u64.
    fn write_u64(&mut self, addr: PhysAddr, value: u64) -> Result<(), MemError> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Reads a little-endian u32.
    fn read_u32(&self, addr: PhysAddr) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a little-endian u32.
    fn write_u32(&mut self, addr: PhysAddr, value: u32) -> Result<(), MemError> {
        self.write(addr, &value.to_le_bytes())
    }
}

impl<M: PhysMem + ?Sized> PhysMem for &mut M {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read(addr, buf)
    }
    fn write(&mut self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        (**self).write(addr, data)
    }
}

/// A read-only view of memory: every write is refused with [`MemError::ReadOnly`].
///
/// Lets code that only reads (walkers, verifiers) take a `&T` where a `PhysMem` is needed.
pub struct ReadOnly<'a, M: PhysMem + ?Sized>(pub &'a M);

impl<M: PhysMem + ?Sized> PhysMem for ReadOnly<'_, M> {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.0.read(addr, buf)
    }
    fn write(&mut self, addr: PhysAddr, _data: &[u8]) -> Result<(), MemError> {
        Err(MemError::ReadOnly { addr })
    }
}
