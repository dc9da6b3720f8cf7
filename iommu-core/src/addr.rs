//! Addresses and identifiers, each a distinct type printed in hex.
//!
//! Mixing up a physical address and an IOVA is the classic IOMMU bug; here it is a
//! type error. Every type prints as hex (`0x…`) through `Display` and `Debug`, and a
//! requester ID prints as `ssss:bb:dd.f`, the way `lspci` and the kernel print it.

use core::fmt;

macro_rules! hex_newtype {
    ($(#[$m:meta])* $name:ident($inner:ty), $width:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#0w$x}", self.0, w = $width + 2)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

hex_newtype!(
    /// A host physical address: what the IOMMU's output and the table pointers are.
    PhysAddr(u64),
    0
);
hex_newtype!(
    /// An I/O virtual address: what a device puts on the bus.
    Iova(u64),
    0
);
hex_newtype!(
    /// A domain ID (VT-d DID, AMD DomainID, SMMU VMID or ASID): the tag of an IOTLB entry.
    DomainId(u16),
    4
);
hex_newtype!(
    /// A process address space ID (PASID / SubstreamID), up to 20 bits.
    Pasid(u32),
    5
);

impl PhysAddr {
    /// The address plus `off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<Self> {
        match self.0.checked_add(off) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
    /// The address rounded down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: u64) -> Self {
        Self(self.0 & !(align - 1))
    }
    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
    /// The 4 KiB page frame number.
    pub const fn pfn(self) -> u64 {
        self.0 >> 12
    }
}

impl Iova {
    /// The address plus `off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<Self> {
        match self.0.checked_add(off) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
    /// The address rounded down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: u64) -> Self {
        Self(self.0 & !(align - 1))
    }
    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

/// A PCI requester ID with its segment: `segment:bus:device.function`.
///
/// VT-d calls the 16-bit `bus << 8 | devfn` value the source ID (SID), AMD-Vi the
/// DeviceID, SMMUv3 (for PCI) the StreamID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RequesterId {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device and function, `device << 3 | function`.
    pub devfn: u8,
}

impl RequesterId {
    /// Builds a requester ID from segment, bus, device (0–31) and function (0–7).
    ///
    /// Device and function are masked to their widths.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Self {
        Self {
            segment,
            bus,
            devfn: (device & 0x1f) << 3 | (function & 7),
        }
    }
    /// Builds a requester ID from a segment and the 16-bit `bus << 8 | devfn` value.
    pub const fn from_sid(segment: u16, sid: u16) -> Self {
        Self {
            segment,
            bus: (sid >> 8) as u8,
            devfn: sid as u8,
        }
    }
    /// The 16-bit source ID, `bus << 8 | devfn`.
    pub const fn sid(self) -> u16 {
        (self.bus as u16) << 8 | self.devfn as u16
    }
    /// Device number, 0–31.
    pub const fn device(self) -> u8 {
        self.devfn >> 3
    }
    /// Function number, 0–7.
    pub const fn function(self) -> u8 {
        self.devfn & 7
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment,
            self.bus,
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequesterId({self})")
    }
}

/// Error parsing a requester ID from text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseRequesterIdError;

impl fmt::Display for ParseRequesterIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "expected a PCI address as [segment:]bus:device.function in hex, e.g. 0000:3b:00.1",
        )
    }
}

impl core::str::FromStr for RequesterId {
    type Err = ParseRequesterIdError;

    /// Parses `ssss:bb:dd.f` or `bb:dd.f` (hex, like `lspci`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (head, func) = s.rsplit_once('.').ok_or(ParseRequesterIdError)?;
        let mut parts = head.rsplitn(3, ':');
        let dev = parts.next().ok_or(ParseRequesterIdError)?;
        let bus = parts.next().ok_or(ParseRequesterIdError)?;
        let seg = parts.next().unwrap_or("0");
        let p = |t: &str, max: u32| -> Result<u32, ParseRequesterIdError> {
            let v = u32::from_str_radix(t, 16).map_err(|_| ParseRequesterIdError)?;
            if t.is_empty() || v > max {
                Err(ParseRequesterIdError)
            } else {
                Ok(v)
            }
        };
        Ok(Self::new(
            p(seg, 0xffff)? as u16,
            p(bus, 0xff)? as u8,
            p(dev, 0x1f)? as u8,
            p(func, 7)? as u8,
        ))
    }
}

/// A page or block size: a power of two, at least 4 KiB.
///
/// Not an enum: AMD-Vi v1 tables encode any power-of-two size, ARM tables use 4K/16K/64K
/// granules with their own block sizes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize(u64);

impl PageSize {
    /// 4 KiB.
    pub const SIZE_4K: Self = Self(1 << 12);
    /// 16 KiB (ARM granule).
    pub const SIZE_16K: Self = Self(1 << 14);
    /// 64 KiB (ARM granule).
    pub const SIZE_64K: Self = Self(1 << 16);
    /// 2 MiB.
    pub const SIZE_2M: Self = Self(1 << 21);
    /// 1 GiB.
    pub const SIZE_1G: Self = Self(1 << 30);

    /// A page size of `bytes`, if it is a power of two of at least 4 KiB.
    pub const fn new(bytes: u64) -> Option<Self> {
        if bytes.is_power_of_two() && bytes >= 4096 {
            Some(Self(bytes))
        } else {
            None
        }
    }
    /// A page size of `1 << shift` bytes, if `12 <= shift < 64`.
    pub const fn from_shift(shift: u32) -> Option<Self> {
        if shift >= 12 && shift < 64 {
            Some(Self(1 << shift))
        } else {
            None
        }
    }
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b % (1 << 30) == 0 {
            write!(f, "{}G", b >> 30)
        } else if b >= 1 << 20 && b % (1 << 20) == 0 {
            write!(f, "{}M", b >> 20)
        } else {
            write!(f, "{}K", b >> 10)
        }
    }
}

impl fmt::Debug for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageSize({self})")
    }
}

/// A non-empty range `[start, start + size)` whose start and size are multiples of an
/// alignment (checked at construction).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlignedRange {
    start: u64,
    size: u64,
}

/// Why a range could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// The size is zero.
    Empty,
    /// `start + size` does not fit in 64 bits.
    Overflow {
        /// Requested start.
        start: u64,
        /// Requested size.
        size: u64,
    },
    /// Start or size is not a multiple of the alignment.
    Misaligned {
        /// Requested start.
        start: u64,
        /// Requested size.
        size: u64,
        /// Required alignment.
        align: u64,
    },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RangeError::Empty => f.write_str("empty range"),
            RangeError::Overflow { start, size } => {
                write!(f, "range {start:#x}+{size:#x} overflows 64 bits")
            }
            RangeError::Misaligned { start, size, align } => {
                write!(f, "range {start:#x}+{size:#x} is not aligned to {align:#x}")
            }
        }
    }
}

impl AlignedRange {
    /// The range `[start, start + size)`; start and size must be multiples of `align`
    /// (a power of two), the size non-zero, the end within 64 bits (the end may be
    /// exactly 2^64).
    pub const fn new(start: u64, size: u64, align: u64) -> Result<Self, RangeError> {
        if size == 0 {
            return Err(RangeError::Empty);
        }
        if start & (align - 1) != 0 || size & (align - 1) != 0 {
            return Err(RangeError::Misaligned { start, size, align });
        }
        if start.checked_add(size - 1).is_none() {
            return Err(RangeError::Overflow { start, size });
        }
        Ok(Self { start, size })
    }
    /// First address.
    pub const fn start(self) -> u64 {
        self.start
    }
    /// Size in bytes.
    pub const fn size(self) -> u64 {
        self.size
    }
    /// Last address (inclusive); never overflows.
    pub const fn last(self) -> u64 {
        self.start + (self.size - 1)
    }
    /// Whether `addr` lies in the range.
    pub const fn contains(self, addr: u64) -> bool {
        addr >= self.start && addr <= self.last()
    }
    /// Whether the two ranges share an address.
    pub const fn overlaps(self, other: Self) -> bool {
        self.start <= other.last() && other.start <= self.last()
    }
}

impl fmt::Display for AlignedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.last())
    }
}

impl fmt::Debug for AlignedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedRange({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn hex_display() {
        assert_eq!(format!("{}", PhysAddr(0x1000)), "0x1000");
        assert_eq!(format!("{}", DomainId(5)), "0x0005");
        assert_eq!(format!("{:?}", Iova(0xdead_b000)), "Iova(0xdeadb000)");
        assert_eq!(format!("{}", PageSize::SIZE_2M), "2M");
        assert_eq!(format!("{}", PageSize::SIZE_16K), "16K");
    }

    #[test]
    fn requester_id_roundtrip() {
        let r = RequesterId::new(1, 0x3b, 0x1f, 7);
        assert_eq!(r.sid(), 0x3bff);
        assert_eq!(format!("{r}"), "0001:3b:1f.7");
        assert_eq!("0001:3b:1f.7".parse::<RequesterId>(), Ok(r));
        assert_eq!("3b:1f.7".parse::<RequesterId>().unwrap().segment, 0);
        assert!("3b:20.0".parse::<RequesterId>().is_err());
        assert!("3b:1f.8".parse::<RequesterId>().is_err());
        assert!("garbage".parse::<RequesterId>().is_err());
        assert_eq!(
            RequesterId::from_sid(0, 0x0308),
            RequesterId::new(0, 3, 1, 0)
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(AlignedRange::new(0, 0, 4096), Err(RangeError::Empty));
        assert!(matches!(
            AlignedRange::new(0x1001, 0x1000, 4096),
            Err(RangeError::Misaligned { .. })
        ));
        let r = AlignedRange::new(u64::MAX - 0xfff, 0x1000, 4096).unwrap();
        assert_eq!(r.last(), u64::MAX);
        assert!(AlignedRange::new(u64::MAX - 0xfff, 0x2000, 4096).is_err());
        assert!(r.contains(u64::MAX));
        assert_eq!(PageSize::new(3000), None);
        assert_eq!(PageSize::from_shift(30), Some(PageSize::SIZE_1G));
    }
}
