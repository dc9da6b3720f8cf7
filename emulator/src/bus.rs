//! The MMIO bus: routes register accesses to the unit whose window contains them.
//!
//! Units are registered with their register window (`mmio_base`, `mmio_size`); windows
//! may not overlap. An access is 4 or 8 bytes, naturally aligned, and must lie entirely
//! inside one window; anything else is a typed [`BusError`] naming the address, so a
//! driver that pokes the wrong place is told so instead of reading garbage.

use crate::model::IommuModel;
use iommu_core::mem::PhysMem;
use iommu_core::PhysAddr;
use std::fmt;

/// The position of a unit on the bus, in registration order; stable for the bus's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitIndex(pub usize);

/// Why a registration or an access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The unit's window is empty or runs past the end of the address space.
    BadWindow {
        /// Window base.
        base: PhysAddr,
        /// Window size.
        size: u64,
    },
    /// The unit's window overlaps the window of a unit already on the bus.
    Overlap {
        /// Base of the window being registered.
        base: PhysAddr,
        /// Its size.
        size: u64,
        /// Base of the window it overlaps.
        existing_base: PhysAddr,
        /// Size of that window.
        existing_size: u64,
    },
    /// The access width is not 4 or 8 bytes.
    BadWidth {
        /// Address of the access.
        addr: PhysAddr,
        /// The width asked for.
        width: u8,
    },
    /// The address is not a multiple of the access width.
    Misaligned {
        /// Address of the access.
        addr: PhysAddr,
        /// The width.
        width: u8,
    },
    /// No window contains the address.
    Unclaimed {
        /// Address of the access.
        addr: PhysAddr,
        /// The width.
        width: u8,
    },
    /// The access starts in a window but runs past its end.
    Straddles {
        /// Address of the access.
        addr: PhysAddr,
        /// The width.
        width: u8,
        /// Base of the window it starts in.
        window_base: PhysAddr,
        /// Size of that window.
        window_size: u64,
    },
    /// A 4-byte write carries a value wider than 32 bits.
    ValueTooWide {
        /// Address of the access.
        addr: PhysAddr,
        /// The value.
        value: u64,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BusError::BadWindow { base, size } => {
                write!(f, "MMIO window at {base} of size {size:#x} is empty or overflows")
            }
            BusError::Overlap {
                base,
                size,
                existing_base,
                existing_size,
            } => write!(
                f,
                "MMIO window {base}+{size:#x} overlaps the window {existing_base}+{existing_size:#x} already on the bus"
            ),
            BusError::BadWidth { addr, width } => {
                write!(f, "MMIO access at {addr}: width {width} is not 4 or 8 bytes")
            }
            BusError::Misaligned { addr, width } => {
                write!(f, "MMIO access at {addr}: not aligned to its width {width}")
            }
            BusError::Unclaimed { addr, width } => {
                write!(f, "MMIO access of {width} bytes at {addr}: no unit's window contains it")
            }
            BusError::Straddles {
                addr,
                width,
                window_base,
                window_size,
            } => write!(
                f,
                "MMIO access of {width} bytes at {addr} runs past the end of the window {window_base}+{window_size:#x}"
            ),
            BusError::ValueTooWide { addr, value } => {
                write!(f, "MMIO 4-byte write at {addr}: value {value:#x} does not fit in 32 bits")
            }
        }
    }
}

impl std::error::Error for BusError {}

struct Window {
    base: u64,
    /// Inclusive.
    last: u64,
    unit: UnitIndex,
}

/// The MMIO bus and the units on it.
#[derive(Default)]
pub struct MmioBus {
    units: Vec<Box<dyn IommuModel>>,
    /// Sorted by base, non-overlapping.
    windows: Vec<Window>,
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for u in &self.units {
            l.entry(&format_args!(
                "{} at {}+{:#x}",
                u.kind().name(),
                u.mmio_base(),
                u.mmio_size()
            ));
        }
        l.finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `unit` on the bus at its window. Refused if the window is empty, overflows,
    /// or overlaps a window already registered.
    pub fn register(&mut self, unit: Box<dyn IommuModel>) -> Result<UnitIndex, BusError> {
        let base = unit.mmio_base();
        let size = unit.mmio_size();
        let last = size
            .checked_sub(1)
            .and_then(|s| base.0.checked_add(s))
            .ok_or(BusError::BadWindow { base, size })?;
        let pos = self.windows.partition_point(|w| w.base < base.0);
        let neighbours = [pos.checked_sub(1), Some(pos)];
        for w in neighbours
            .into_iter()
            .flatten()
            .filter_map(|i| self.windows.get(i))
        {
            if w.base <= last && base.0 <= w.last {
                return Err(BusError::Overlap {
                    base,
                    size,
                    existing_base: PhysAddr(w.base),
                    existing_size: w.last - w.base + 1,
                });
            }
        }
        let index = UnitIndex(self.units.len());
        self.units.push(unit);
        self.windows.insert(
            pos,
            Window {
                base: base.0,
                last,
                unit: index,
            },
        );
        Ok(index)
    }

    /// Number of units on the bus.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether the bus has no unit.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The units in registration order.
    pub fn units(&self) -> impl Iterator<Item = &dyn IommuModel> + '_ {
        self.units.iter().map(|u| &**u)
    }

    /// The unit at `index`.
    pub fn unit(&self, index: UnitIndex) -> Option<&dyn IommuModel> {
        self.units.get(index.0).map(|u| &**u)
    }

    /// The unit at `index`, mutably.
    pub fn unit_mut(&mut self, index: UnitIndex) -> Option<&mut dyn IommuModel> {
        match self.units.get_mut(index.0) {
            Some(u) => Some(&mut **u),
            None => None,
        }
    }

    /// The unit whose window starts exactly at `base`.
    pub fn index_of_base(&self, base: PhysAddr) -> Option<UnitIndex> {
        let i = self.windows.partition_point(|w| w.base < base.0);
        self.windows
            .get(i)
            .filter(|w| w.base == base.0)
            .map(|w| w.unit)
    }

    /// Which unit claims an access of `width` bytes at `addr`, and the offset in its
    /// window.
    pub fn decode(&self, addr: PhysAddr, width: u8) -> Result<(UnitIndex, u64), BusError> {
        if width != 4 && width != 8 {
            return Err(BusError::BadWidth { addr, width });
        }
        if !addr.is_aligned(u64::from(width)) {
            return Err(BusError::Misaligned { addr, width });
        }
        let i = self.windows.partition_point(|w| w.base <= addr.0);
        let w = i
            .checked_sub(1)
            .and_then(|i| self.windows.get(i))
            .filter(|w| addr.0 <= w.last)
            .ok_or(BusError::Unclaimed { addr, width })?;
        // `addr <= last`, so `last - addr` cannot underflow.
        if w.last - addr.0 < u64::from(width) - 1 {
            return Err(BusError::Straddles {
                addr,
                width,
                window_base: PhysAddr(w.base),
                window_size: w.last - w.base + 1,
            });
        }
        Ok((w.unit, addr.0 - w.base))
    }

    /// A register read of `width` bytes at physical address `addr`.
    pub fn read(
        &mut self,
        mem: &mut dyn PhysMem,
        addr: PhysAddr,
        width: u8,
    ) -> Result<u64, BusError> {
        let (index, offset) = self.decode(addr, width)?;
        let unit = self
            .units
            .get_mut(index.0)
            .ok_or(BusError::Unclaimed { addr, width })?;
        Ok(unit.mmio_read(mem, offset, width))
    }

    /// A register write of `width` bytes at physical address `addr`.
    pub fn write(
        &mut self,
        mem: &mut dyn PhysMem,
        addr: PhysAddr,
        width: u8,
        value: u64,
    ) -> Result<(), BusError> {
        let (index, offset) = self.decode(addr, width)?;
        if width == 4 && value > u64::from(u32::MAX) {
            return Err(BusError::ValueTooWide { addr, value });
        }
        let unit = self
            .units
            .get_mut(index.0)
            .ok_or(BusError::Unclaimed { addr, width })?;
        unit.mmio_write(mem, offset, width, value);
        Ok(())
    }
}
