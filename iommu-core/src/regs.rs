//! Access to an IOMMU unit's MMIO registers.
//!
//! The driver side never dereferences MMIO itself: it goes through [`RegisterAccess`],
//! which the emulator implements over its register models and a kernel would implement
//! over `ioremap`ped memory. Offsets are byte offsets from the unit's MMIO base.

/// 32- and 64-bit register access at byte offsets from a unit's MMIO base.
///
/// 64-bit accesses are single accesses (VT-d and SMMUv3 define 64-bit registers that
/// must not be split where the hardware latches on the upper half).
pub trait RegisterAccess {
    /// Reads the 32-bit register at `offset`.
    fn read32(&mut self, offset: u64) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: u64, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&mut self, offset: u64) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&mut self, offset: u64, value: u64);
}

impl<R: RegisterAccess + ?Sized> RegisterAccess for &mut R {
    fn read32(&mut self, offset: u64) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&mut self, offset: u64, value: u32) {
        (**self).write32(offset, value)
    }
    fn read64(&mut self, offset: u64) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        (**self).write64(offset, value)
    }
}
