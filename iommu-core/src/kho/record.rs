//! Versioned client records: the data a KHO client node's `preserved-data` points to.
//!
//! Linux KHO clients hand over their own FDTs or ABI structs; the clients of this
//! project (the IOMMU backends) hand over a raw record with a self-describing envelope,
//! so that the next kernel can refuse data it does not understand before looking at it.
//! The envelope (little-endian, like the rest of the in-memory KHO structures on x86-64
//! and arm64) is:
//!
//! ```text
//! offset size field
//! 0x00   8    magic, the ASCII bytes "KHOIOREC"
//! 0x08   4    header size, 0x40
//! 0x0c   4    CRC32C over the header (with this field taken as 0) and the payload
//! 0x10   8    payload length in bytes
//! 0x18   40   compatible string "<family>-v<version>", NUL-terminated, NUL-padded
//! 0x40   ...  payload
//! ```
//!
//! The envelope is the same for every version; the version in the compatible string
//! governs only the payload. So the checks run in this order: magic, header size,
//! length bound, checksum (which covers the compatible string too), then the compatible
//! string: a different family gives [`RecordError::Family`], a version outside the
//! reader's range gives [`RecordError::Version`], each naming what was found and what is
//! supported.
//!
//! # CRC32C
//!
//! The checksum is CRC-32C (Castagnoli): polynomial 0x1EDC6F41, processed bit-reflected
//! (0x82F63B78), initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF, the CRC of iSCSI
//! (RFC 3720), ext4 metadata and Linux `crc32c()`. It is computed here with a 256-entry
//! table generated at compile time. Test vectors: "123456789" gives 0xE3069283 (the
//! standard check value), and RFC 3720 appendix B.4 gives values for 32-byte buffers.

use crate::addr::PhysAddr;
use crate::mem::{MemError, PhysMem};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// The magic at the start of every record.
pub const RECORD_MAGIC: [u8; 8] = *b"KHOIOREC";
/// Size of the record header.
pub const RECORD_HEADER_SIZE: usize = 0x40;
/// Size of the compatible field (so at most 39 characters).
pub const COMPATIBLE_FIELD: usize = 40;
/// Largest payload accepted (64 MiB): a reader never allocates more for one record.
pub const MAX_RECORD_PAYLOAD: u64 = 64 << 20;

const OFF_HEADER_SIZE: usize = 0x08;
const OFF_CRC: usize = 0x0c;
const OFF_LEN: usize = 0x10;
const OFF_COMPATIBLE: usize = 0x18;

/// CRC-32C lookup table (reflected polynomial 0x82F63B78).
const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Continues a CRC-32C computation: `state` is the running register (start with
/// `0xFFFFFFFF`); the final CRC is the state XOR `0xFFFFFFFF`.
pub fn crc32c_update(mut state: u32, data: &[u8]) -> u32 {
    for &b in data {
        state = CRC32C_TABLE[((state ^ u32::from(b)) & 0xff) as usize] ^ (state >> 8);
    }
    state
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_update(0xFFFF_FFFF, data) ^ 0xFFFF_FFFF
}

/// Why a compatible string is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompatibleError {
    /// Longer than 39 characters.
    TooLong,
    /// No NUL terminator in the 40-byte field.
    Unterminated,
    /// Bytes after the NUL terminator are not all zero.
    DirtyPadding,
    /// A character outside `a-z 0-9 , . _ -`.
    BadChar(u8),
    /// Not of the form `<family>-v<version>` with a non-empty family and a decimal
    /// version from 1 to 2^32-1 without leading zeros.
    NoVersion,
}

impl fmt::Display for CompatibleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CompatibleError::TooLong => {
                write!(f, "longer than {} characters", COMPATIBLE_FIELD - 1)
            }
            CompatibleError::Unterminated => f.write_str("not NUL-terminated"),
            CompatibleError::DirtyPadding => f.write_str("non-zero bytes after the terminator"),
            CompatibleError::BadChar(c) => write!(f, "character {c:#04x} is not allowed"),
            CompatibleError::NoVersion => {
                f.write_str("not of the form <family>-v<version>, e.g. iommu-vtd-v1")
            }
        }
    }
}

/// Splits `"<family>-v<version>"` into family and version.
pub fn parse_compatible(s: &str) -> Result<(&str, u32), CompatibleError> {
    if s.len() >= COMPATIBLE_FIELD {
        return Err(CompatibleError::TooLong);
    }
    if let Some(&c) = s
        .as_bytes()
        .iter()
        .find(|&&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || b",._-".contains(&c)))
    {
        return Err(CompatibleError::BadChar(c));
    }
    let (family, version) = s.rsplit_once("-v").ok_or(CompatibleError::NoVersion)?;
    if family.is_empty()
        || version.is_empty()
        || version.starts_with('0')
        || !version.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(CompatibleError::NoVersion);
    }
    let version: u32 = version.parse().map_err(|_| CompatibleError::NoVersion)?;
    Ok((family, version))
}

/// The record family and range of versions a reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Supported<'a> {
    /// Family, e.g. `"iommu-vtd"`.
    pub family: &'a str,
    /// Oldest version read.
    pub oldest: u32,
    /// Newest version read.
    pub newest: u32,
}

impl Supported<'_> {
    /// What this reader supports, as compatible strings: `iommu-vtd-v1`, or
    /// `iommu-vtd-v1..iommu-vtd-v3` for a range.
    pub fn describe(&self) -> String {
        if self.oldest == self.newest {
            format!("{}-v{}", self.family, self.newest)
        } else {
            format!(
                "{f}-v{}..{f}-v{}",
                self.oldest,
                self.newest,
                f = self.family
            )
        }
    }
}

/// Why a record was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Reading the record from memory failed.
    Mem {
        /// Start of the record.
        pa: PhysAddr,
        /// Why.
        err: MemError,
    },
    /// Fewer bytes than the header, or than header and payload (reading from a buffer).
    Truncated {
        /// Start of the record.
        pa: PhysAddr,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// The first 8 bytes are not [`RECORD_MAGIC`].
    Magic {
        /// Start of the record.
        pa: PhysAddr,
        /// Bytes found.
        found: [u8; 8],
    },
    /// The header size field is not [`RECORD_HEADER_SIZE`].
    HeaderSize {
        /// Start of the record.
        pa: PhysAddr,
        /// Value found.
        found: u32,
    },
    /// The payload length is above [`MAX_RECORD_PAYLOAD`] or runs past the end of the
    /// address space.
    Length {
        /// Start of the record.
        pa: PhysAddr,
        /// Length found.
        len: u64,
        /// Largest length accepted.
        max: u64,
    },
    /// The CRC32C does not match.
    Checksum {
        /// Start of the record.
        pa: PhysAddr,
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over header and payload.
        computed: u32,
    },
    /// The compatible field is malformed.
    BadCompatible {
        /// Start of the record.
        pa: PhysAddr,
        /// What is wrong.
        reason: CompatibleError,
    },
    /// The record belongs to another family of data.
    Family {
        /// Start of the record.
        pa: PhysAddr,
        /// Compatible string found.
        found: String,
        /// What the reader supports.
        supported: String,
    },
    /// The record's version is newer (or older) than the reader supports.
    Version {
        /// Start of the record.
        pa: PhysAddr,
        /// Compatible string found, e.g. `iommu-vtd-v2`.
        found: String,
        /// What the reader supports, e.g. `iommu-vtd-v1`.
        supported: String,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Mem { pa, err } => write!(f, "record at {pa}: {err}"),
            RecordError::Truncated { pa, need, have } => write!(
                f,
                "record at {pa}: truncated, {need:#x} bytes needed, {have:#x} available"
            ),
            RecordError::Magic { pa, found } => write!(
                f,
                "record at {pa}: bad magic {found:02x?} (expected \"KHOIOREC\")"
            ),
            RecordError::HeaderSize { pa, found } => write!(
                f,
                "record at {pa}: header size {found:#x}, expected {RECORD_HEADER_SIZE:#x}"
            ),
            RecordError::Length { pa, len, max } => write!(
                f,
                "record at {pa}: payload length {len:#x} exceeds {max:#x} or the address space"
            ),
            RecordError::Checksum {
                pa,
                stored,
                computed,
            } => write!(
                f,
                "record at {pa}: CRC32C mismatch, stored {stored:#010x}, computed {computed:#010x}"
            ),
            RecordError::BadCompatible { pa, reason } => {
                write!(f, "record at {pa}: bad compatible string: {reason}")
            }
            RecordError::Family {
                pa,
                found,
                supported,
            } => write!(
                f,
                "record at {pa} is {found:?}, a different kind of data than {supported:?}"
            ),
            RecordError::Version {
                pa,
                found,
                supported,
            } => write!(
                f,
                "record at {pa} has version {found:?}, this reader supports {supported:?}"
            ),
        }
    }
}

/// A record that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The compatible string, e.g. `iommu-vtd-v1`.
    pub compatible: String,
    /// Its version number.
    pub version: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Total bytes of a record with a payload of `payload_len` bytes.
pub const fn record_size(payload_len: usize) -> usize {
    RECORD_HEADER_SIZE + payload_len
}

/// Encodes a record. `compatible` must be `<family>-v<version>` (see
/// [`parse_compatible`]); the payload at most [`MAX_RECORD_PAYLOAD`] bytes. Errors name
/// address 0 (nothing is in memory yet).
pub fn encode_record(compatible: &str, payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    let pa = PhysAddr(0);
    parse_compatible(compatible).map_err(|reason| RecordError::BadCompatible { pa, reason })?;
    let len = payload.len() as u64;
    if len > MAX_RECORD_PAYLOAD {
        return Err(RecordError::Length {
            pa,
            len,
            max: MAX_RECORD_PAYLOAD,
        });
    }
    let mut out = vec![0u8; record_size(payload.len())];
    out[..8].copy_from_slice(&RECORD_MAGIC);
    out[OFF_HEADER_SIZE..OFF_HEADER_SIZE + 4]
        .copy_from_slice(&(RECORD_HEADER_SIZE as u32).to_le_bytes());
    out[OFF_LEN..OFF_LEN + 8].copy_from_slice(&len.to_le_bytes());
    out[OFF_COMPATIBLE..OFF_COMPATIBLE + compatible.len()].copy_from_slice(compatible.as_bytes());
    out[RECORD_HEADER_SIZE..].copy_from_slice(payload);
    let crc = crc32c(&out);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

/// Checks the header fields that bound the read; returns the payload length.
fn check_header(pa: PhysAddr, hdr: &[u8; RECORD_HEADER_SIZE]) -> Result<u64, RecordError> {
    if hdr[..8] != RECORD_MAGIC {
        let mut found = [0u8; 8];
        found.copy_from_slice(&hdr[..8]);
        return Err(RecordError::Magic { pa, found });
    }
    let hsize = le32(hdr, OFF_HEADER_SIZE);
    if hsize as usize != RECORD_HEADER_SIZE {
        return Err(RecordError::HeaderSize { pa, found: hsize });
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&hdr[OFF_LEN..OFF_LEN + 8]);
    let len = u64::from_le_bytes(l);
    let fits = pa
        .checked_add(RECORD_HEADER_SIZE as u64)
        .and_then(|p| p.checked_add(len))
        .is_some();
    if len > MAX_RECORD_PAYLOAD || !fits {
        return Err(RecordError::Length {
            pa,
            len,
            max: MAX_RECORD_PAYLOAD,
        });
    }
    Ok(len)
}

/// Checks checksum and compatible string of a complete record.
fn check_rest(
    pa: PhysAddr,
    hdr: &[u8; RECORD_HEADER_SIZE],
    payload: &[u8],
    supported: &Supported<'_>,
) -> Result<Record, RecordError> {
    let stored = le32(hdr, OFF_CRC);
    let mut zeroed = *hdr;
    zeroed[OFF_CRC..OFF_CRC + 4].fill(0);
    let computed = crc32c_update(crc32c_update(0xFFFF_FFFF, &zeroed), payload) ^ 0xFFFF_FFFF;
    if stored != computed {
        return Err(RecordError::Checksum {
            pa,
            stored,
            computed,
        });
    }
    let field = &hdr[OFF_COMPATIBLE..OFF_COMPATIBLE + COMPATIBLE_FIELD];
    let bad = |reason| RecordError::BadCompatible { pa, reason };
    let nul = field
        .iter()
        .position(|&c| c == 0)
        .ok_or(bad(CompatibleError::Unterminated))?;
    if field[nul..].iter().any(|&c| c != 0) {
        return Err(bad(CompatibleError::DirtyPadding));
    }
    if let Some(&c) = field[..nul].iter().find(|c| !c.is_ascii()) {
        return Err(bad(CompatibleError::BadChar(c)));
    }
    let compatible: String = field[..nul].iter().map(|&c| c as char).collect();
    let (family, version) = parse_compatible(&compatible).map_err(bad)?;
    if family != supported.family {
        return Err(RecordError::Family {
            pa,
            found: compatible,
            supported: supported.describe(),
        });
    }
    if version < supported.oldest || version > supported.newest {
        return Err(RecordError::Version {
            pa,
            found: compatible,
            supported: supported.describe(),
        });
    }
    Ok(Record {
        compatible,
        version,
        payload: payload.to_vec(),
    })
}

/// Checks and decodes a record held in `bytes` (bytes past the record are ignored);
/// `pa` is where the bytes came from, used in errors.
pub fn decode_record(
    bytes: &[u8],
    pa: PhysAddr,
    supported: &Supported<'_>,
) -> Result<Record, RecordError> {
    let hdr: &[u8; RECORD_HEADER_SIZE] = bytes
        .get(..RECORD_HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or(RecordError::Truncated {
            pa,
            need: RECORD_HEADER_SIZE as u64,
            have: bytes.len() as u64,
        })?;
    let len = check_header(pa, hdr)?;
    let payload = bytes
        .get(RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + len as usize)
        .ok_or(RecordError::Truncated {
            pa,
            need: RECORD_HEADER_SIZE as u64 + len,
            have: bytes.len() as u64,
        })?;
    check_rest(pa, hdr, payload, supported)
}

/// Reads, checks and decodes the record at `pa`: the header first, then (after its
/// length is checked against [`MAX_RECORD_PAYLOAD`]) the payload.
pub fn read_record<M: PhysMem + ?Sized>(
    mem: &M,
    pa: PhysAddr,
    supported: &Supported<'_>,
) -> Result<Record, RecordError> {
    let mut hdr = [0u8; RECORD_HEADER_SIZE];
    mem.read(pa, &mut hdr)
        .map_err(|err| RecordError::Mem { pa, err })?;
    let len = check_header(pa, &hdr)?;
    let mut payload = vec![0u8; len as usize];
    let ppa = PhysAddr(pa.0 + RECORD_HEADER_SIZE as u64); // checked in check_header
    mem.read(ppa, &mut payload)
        .map_err(|err| RecordError::Mem { pa, err })?;
    check_rest(pa, &hdr, &payload, supported)
}
