//! A flattened device tree (FDT, "DTB") writer and a strict reader, format version 17.
//!
//! The layout is the one of the Devicetree Specification (v0.4, chapter 5 "Flattened
//! Devicetree (DTB) Format") and of Linux's `scripts/dtc/libfdt/fdt.h`
//! (`struct fdt_header`, `FDT_MAGIC`, the `FDT_*` tokens); every integer is big-endian:
//!
//! ```text
//! 0x00 magic 0xd00dfeed      0x14 version (17)
//! 0x04 totalsize             0x18 last_comp_version (16)
//! 0x08 off_dt_struct         0x1c boot_cpuid_phys
//! 0x0c off_dt_strings        0x20 size_dt_strings
//! 0x10 off_mem_rsvmap        0x24 size_dt_struct
//! ```
//!
//! followed, in what [`FdtWriter`] produces (the order libfdt's sequential-write API
//! produces), by:
//!
//! - the memory reservation block: 8-byte aligned pairs of big-endian u64 address and
//!   size, ended by an all-zero pair;
//! - the structure block: 4-byte aligned tokens, `FDT_BEGIN_NODE` with the
//!   NUL-terminated node name padded to 4 bytes, `FDT_PROP` with value length, name
//!   offset and the value padded to 4 bytes, `FDT_END_NODE`, `FDT_NOP`, and one final
//!   `FDT_END`;
//! - the strings block: NUL-terminated property names.
//!
//! [`parse`] accepts only well-formed blobs and names the byte offset (from the start
//! of the blob) and what is wrong for everything else. It never panics, never reads
//! outside the slice and does work linear in the blob size.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// `FDT_MAGIC`.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// The version written, and the lowest read: 17 (the one with `size_dt_struct`).
pub const FDT_VERSION: u32 = 17;
/// `last_comp_version` written: 16 (version 17 is backward compatible with 16).
pub const FDT_LAST_COMP_VERSION: u32 = 16;
/// Size of `struct fdt_header` for version 17.
pub const FDT_HEADER_SIZE: usize = 40;
/// `FDT_BEGIN_NODE` token.
pub const FDT_BEGIN_NODE: u32 = 0x1;
/// `FDT_END_NODE` token.
pub const FDT_END_NODE: u32 = 0x2;
/// `FDT_PROP` token.
pub const FDT_PROP: u32 = 0x3;
/// `FDT_NOP` token.
pub const FDT_NOP: u32 = 0x4;
/// `FDT_END` token.
pub const FDT_END: u32 = 0x9;

/// Longest node name (without unit address) and property name: 31 characters
/// (Devicetree Specification 2.2.1 and 2.2.4).
pub const MAX_NAME_LEN: usize = 31;

/// Why a node or property name is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty (only the root node has an empty name).
    Empty,
    /// The name (or the part before `@`) is longer than [`MAX_NAME_LEN`].
    TooLong,
    /// A character outside the allowed set.
    BadChar(u8),
    /// A node name with an empty unit address, or with two `@`.
    BadUnitAddress,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NameError::Empty => f.write_str("empty name"),
            NameError::TooLong => write!(f, "longer than {MAX_NAME_LEN} characters"),
            NameError::BadChar(c) => write!(f, "character {c:#04x} is not allowed"),
            NameError::BadUnitAddress => f.write_str("malformed unit address after '@'"),
        }
    }
}

/// Checks a (non-root) node name: `node-name[@unit-address]`, each part 1 to 31 of
/// `0-9 a-z A-Z , . _ + -` (Devicetree Specification table 2.1).
pub fn check_node_name(name: &[u8]) -> Result<(), NameError> {
    let ok = |c: u8| c.is_ascii_alphanumeric() || b",._+-".contains(&c);
    let (base, unit) = match name.iter().position(|&c| c == b'@') {
        Some(at) => (&name[..at], Some(&name[at + 1..])),
        None => (name, None),
    };
    if base.is_empty() {
        return Err(NameError::Empty);
    }
    if base.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if let Some(&c) = base.iter().find(|&&c| !ok(c)) {
        return Err(NameError::BadChar(c));
    }
    if let Some(unit) = unit {
        if unit.is_empty() || unit.len() > MAX_NAME_LEN || unit.contains(&b'@') {
            return Err(NameError::BadUnitAddress);
        }
        if let Some(&c) = unit.iter().find(|&&c| !ok(c)) {
            return Err(NameError::BadChar(c));
        }
    }
    Ok(())
}

/// Checks a property name: 1 to 31 of `0-9 a-z A-Z , . _ + ? # -` (Devicetree
/// Specification table 2.2).
pub fn check_property_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    match name
        .iter()
        .find(|&&c| !(c.is_ascii_alphanumeric() || b",._+?#-".contains(&c)))
    {
        Some(&c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// Why [`FdtWriter`] refused a call. The writer is unchanged by a refused call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdtWriteError {
    /// The first node must be the root, with an empty name.
    RootName {
        /// Name given.
        name: String,
    },
    /// A second top-level node after the root was closed.
    SecondRoot {
        /// Name given.
        name: String,
    },
    /// A node name that the specification does not allow.
    BadNodeName {
        /// Name given.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// A property name that the specification does not allow.
    BadPropertyName {
        /// Name given.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// Two children of one node with the same name.
    DuplicateNode {
        /// The repeated name.
        name: String,
    },
    /// Two properties of one node with the same name.
    DuplicateProperty {
        /// The repeated name.
        name: String,
    },
    /// A property outside any node.
    PropertyOutsideNode {
        /// Property name.
        name: String,
    },
    /// A property after a sub-node of the same node (the structure block requires
    /// properties first).
    PropertyAfterSubnode {
        /// Property name.
        name: String,
    },
    /// A string property value containing a NUL byte.
    NulInString {
        /// Property name.
        name: String,
    },
    /// `end_node` with no open node.
    EndWithoutBegin,
    /// `finish` with nodes still open.
    UnclosedNode {
        /// Innermost open node.
        name: String,
    },
    /// `finish` without a root node.
    NoRoot,
    /// The blob would not fit the 32-bit sizes of the header.
    TooLarge,
}

impl fmt::Display for FdtWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdtWriteError::RootName { name } => {
                write!(f, "the root node must have an empty name, not {name:?}")
            }
            FdtWriteError::SecondRoot { name } => {
                write!(f, "node {name:?} would be a second root node")
            }
            FdtWriteError::BadNodeName { name, reason } => {
                write!(f, "bad node name {name:?}: {reason}")
            }
            FdtWriteError::BadPropertyName { name, reason } => {
                write!(f, "bad property name {name:?}: {reason}")
            }
            FdtWriteError::DuplicateNode { name } => write!(f, "duplicate node {name:?}"),
            FdtWriteError::DuplicateProperty { name } => {
                write!(f, "duplicate property {name:?}")
            }
            FdtWriteError::PropertyOutsideNode { name } => {
                write!(f, "property {name:?} outside any node")
            }
            FdtWriteError::PropertyAfterSubnode { name } => {
                write!(f, "property {name:?} after a sub-node of the same node")
            }
            FdtWriteError::NulInString { name } => {
                write!(f, "string value of property {name:?} contains a NUL byte")
            }
            FdtWriteError::EndWithoutBegin => f.write_str("end_node without an open node"),
            FdtWriteError::UnclosedNode { name } => write!(f, "node {name:?} is not closed"),
            FdtWriteError::NoRoot => f.write_str("no root node"),
            FdtWriteError::TooLarge => f.write_str("blob larger than 4 GiB"),
        }
    }
}

struct OpenNode {
    name: String,
    props: Vec<String>,
    children: Vec<String>,
}

/// Builds an FDT blob node by node, checking names and structure as it goes.
pub struct FdtWriter {
    reservations: Vec<(u64, u64)>,
    structure: Vec<u8>,
    strings: Vec<u8>,
    open: Vec<OpenNode>,
    root_done: bool,
}

impl Default for FdtWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

impl FdtWriter {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            reservations: Vec::new(),
            structure: Vec::new(),
            strings: Vec::new(),
            open: Vec::new(),
            root_done: false,
        }
    }

    /// Adds a memory reservation entry (`struct fdt_reserve_entry`).
    pub fn add_reservation(&mut self, address: u64, size: u64) {
        self.reservations.push((address, size));
    }

    /// Opens a node: the root (empty name) first, then children of the innermost
    /// open node.
    pub fn begin_node(&mut self, name: &str) -> Result<(), FdtWriteError> {
        match self.open.last_mut() {
            None if self.root_done => {
                return Err(FdtWriteError::SecondRoot { name: name.into() });
            }
            None if !name.is_empty() => {
                return Err(FdtWriteError::RootName { name: name.into() });
            }
            None => {}
            Some(parent) => {
                check_node_name(name.as_bytes()).map_err(|reason| FdtWriteError::BadNodeName {
                    name: name.into(),
                    reason,
                })?;
                if parent.children.iter().any(|c| c == name) {
                    return Err(FdtWriteError::DuplicateNode { name: name.into() });
                }
                parent.children.push(name.into());
            }
        }
        self.structure
            .extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        pad4(&mut self.structure);
        self.open.push(OpenNode {
            name: name.into(),
            props: Vec::new(),
            children: Vec::new(),
        });
        Ok(())
    }

    /// Adds a property with a raw value to the innermost open node.
    pub fn property(&mut self, name: &str, value: &[u8]) -> Result<(), FdtWriteError> {
        let node = self
            .open
            .last_mut()
            .ok_or_else(|| FdtWriteError::PropertyOutsideNode { name: name.into() })?;
        check_property_name(name.as_bytes()).map_err(|reason| FdtWriteError::BadPropertyName {
            name: name.into(),
            reason,
        })?;
        if !node.children.is_empty() {
            return Err(FdtWriteError::PropertyAfterSubnode { name: name.into() });
        }
        if node.props.iter().any(|p| p == name) {
            return Err(FdtWriteError::DuplicateProperty { name: name.into() });
        }
        let len = u32::try_from(value.len()).map_err(|_| FdtWriteError::TooLarge)?;
        node.props.push(name.into());
        // Property names are shared in the strings block, as libfdt does.
        let nameoff = find_string(&self.strings, name.as_bytes()).unwrap_or_else(|| {
            let off = self.strings.len();
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        });
        let nameoff = u32::try_from(nameoff).map_err(|_| FdtWriteError::TooLarge)?;
        self.structure.extend_from_slice(&FDT_PROP.to_be_bytes());
        self.structure.extend_from_slice(&len.to_be_bytes());
        self.structure.extend_from_slice(&nameoff.to_be_bytes());
        self.structure.extend_from_slice(value);
        pad4(&mut self.structure);
        Ok(())
    }

    /// Adds a NUL-terminated string property.
    pub fn property_string(&mut self, name: &str, value: &str) -> Result<(), FdtWriteError> {
        if value.as_bytes().contains(&0) {
            return Err(FdtWriteError::NulInString { name: name.into() });
        }
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.property(name, &v)
    }

    /// Closes the innermost open node.
    pub fn end_node(&mut self) -> Result<(), FdtWriteError> {
        self.open.pop().ok_or(FdtWriteError::EndWithoutBegin)?;
        self.structure
            .extend_from_slice(&FDT_END_NODE.to_be_bytes());
        if self.open.is_empty() {
            self.root_done = true;
        }
        Ok(())
    }

    /// Emits the blob: header, reservation block, structure block, strings block.
    pub fn finish(&self, boot_cpuid_phys: u32) -> Result<Vec<u8>, FdtWriteError> {
        if let Some(node) = self.open.last() {
            return Err(FdtWriteError::UnclosedNode {
                name: node.name.clone(),
            });
        }
        if !self.root_done {
            return Err(FdtWriteError::NoRoot);
        }
        let off_rsv = FDT_HEADER_SIZE; // 40, a multiple of 8
        let rsv_len = (self.reservations.len() + 1) * 16;
        let off_struct = off_rsv + rsv_len;
        let size_struct = self.structure.len() + 4; // + FDT_END
        let off_strings = off_struct + size_struct;
        let total = off_strings + self.strings.len();
        let u = |v: usize| u32::try_from(v).map_err(|_| FdtWriteError::TooLarge);
        let mut out = Vec::with_capacity(total);
        for field in [
            FDT_MAGIC,
            u(total)?,
            u(off_struct)?,
            u(off_strings)?,
            u(off_rsv)?,
            FDT_VERSION,
            FDT_LAST_COMP_VERSION,
            boot_cpuid_phys,
            u(self.strings.len())?,
            u(size_struct)?,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        for &(a, s) in self.reservations.iter().chain([(0, 0)].iter()) {
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(&self.structure);
        out.extend_from_slice(&FDT_END.to_be_bytes());
        out.extend_from_slice(&self.strings);
        Ok(out)
    }
}

/// Offset of `name` as a whole NUL-terminated string in a strings block.
fn find_string(strings: &[u8], name: &[u8]) -> Option<usize> {
    let mut off = 0;
    while off < strings.len() {
        let end = strings[off..].iter().position(|&c| c == 0)? + off;
        if &strings[off..end] == name {
            return Some(off);
        }
        off = end + 1;
    }
    None
}

/// What is wrong with a blob. Every offset counts bytes from the start of the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// The blob (or a block or item inside it) ends before `need` bytes at `offset`.
    Truncated {
        /// Where the missing bytes start.
        offset: usize,
        /// Bytes needed from `offset`.
        need: usize,
        /// What was being read.
        what: &'static str,
    },
    /// The first word is not `0xd00dfeed`.
    BadMagic {
        /// Word found at offset 0.
        found: u32,
    },
    /// `totalsize` is smaller than the header.
    BadTotalSize {
        /// Value of `totalsize`.
        totalsize: u32,
    },
    /// A version this reader does not handle (below 17, or a `last_comp_version`
    /// above 17).
    Version {
        /// `version` field.
        version: u32,
        /// `last_comp_version` field.
        last_comp_version: u32,
    },
    /// A block reaches outside `totalsize` or into the header.
    BlockOutOfBounds {
        /// Which block.
        block: &'static str,
        /// Its offset.
        offset: usize,
        /// Its size.
        size: usize,
    },
    /// The memory reservation block is not 8-byte aligned.
    MisalignedReservations {
        /// Its offset.
        offset: usize,
    },
    /// The structure block starts (or ends) off a 4-byte boundary, so its tokens are
    /// misaligned.
    MisalignedToken {
        /// Offset of the misaligned start or end.
        offset: usize,
    },
    /// Two blocks share bytes.
    BlocksOverlap {
        /// One block.
        first: &'static str,
        /// The other block.
        second: &'static str,
    },
    /// The reservation block has no all-zero terminator before `totalsize`.
    ReservationsUnterminated {
        /// Offset where the next entry would be.
        offset: usize,
    },
    /// A token word that is none of the `FDT_*` tokens.
    UnknownToken {
        /// Offset of the token.
        offset: usize,
        /// The word found.
        token: u32,
    },
    /// A node name with no NUL before the end of the structure block.
    UnterminatedName {
        /// Offset of the name.
        offset: usize,
    },
    /// A node name the specification does not allow, or a root with a name.
    BadNodeName {
        /// Offset of the name.
        offset: usize,
        /// What is wrong.
        reason: NameError,
    },
    /// A root node whose name is not empty.
    RootNotEmpty {
        /// Offset of the name.
        offset: usize,
    },
    /// A property name offset that points outside the strings block.
    StringOffsetOutOfRange {
        /// Offset of the `FDT_PROP` token.
        offset: usize,
        /// The name offset found.
        nameoff: u32,
        /// Size of the strings block.
        strings_size: usize,
    },
    /// A property name in the strings block with no NUL before the block ends.
    UnterminatedString {
        /// Offset of the `FDT_PROP` token.
        offset: usize,
        /// The name offset.
        nameoff: u32,
    },
    /// A property name the specification does not allow.
    BadPropertyName {
        /// Offset of the `FDT_PROP` token.
        offset: usize,
        /// What is wrong.
        reason: NameError,
    },
    /// A property before the root node or after it was closed.
    PropertyOutsideNode {
        /// Offset of the `FDT_PROP` token.
        offset: usize,
    },
    /// A property after a sub-node of the same node.
    PropertyAfterSubnode {
        /// Offset of the `FDT_PROP` token.
        offset: usize,
    },
    /// Two properties of one node with the same name.
    DuplicateProperty {
        /// Offset of the second one.
        offset: usize,
        /// Its name.
        name: String,
    },
    /// Two children of one node with the same name.
    DuplicateNode {
        /// Offset of the second one.
        offset: usize,
        /// Its name.
        name: String,
    },
    /// Nodes nested deeper than the reader allows.
    NestingTooDeep {
        /// Offset of the `FDT_BEGIN_NODE` that goes too deep.
        offset: usize,
        /// Deepest nesting allowed (the root is depth 1).
        max: usize,
    },
    /// A node still open at `FDT_END` or at the end of the structure block.
    NodeWithoutEnd {
        /// Offset of its `FDT_BEGIN_NODE`.
        offset: usize,
        /// Its name.
        name: String,
    },
    /// An `FDT_END_NODE` with no open node.
    EndWithoutBegin {
        /// Offset of the token.
        offset: usize,
    },
    /// A second top-level node.
    SecondRoot {
        /// Offset of its `FDT_BEGIN_NODE`.
        offset: usize,
    },
    /// The structure block has no root node.
    NoRoot {
        /// Offset of the `FDT_END` token.
        offset: usize,
    },
    /// The structure block ends without `FDT_END`.
    MissingEnd {
        /// End of the structure block.
        offset: usize,
    },
    /// Bytes of the structure block after `FDT_END`.
    TrailingData {
        /// Offset of the first byte after `FDT_END`.
        offset: usize,
    },
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdtError::Truncated { offset, need, what } => {
                write!(
                    f,
                    "truncated {what}: {need} bytes needed at offset {offset:#x}"
                )
            }
            FdtError::BadMagic { found } => {
                write!(
                    f,
                    "bad magic {found:#010x} at offset 0 (expected {FDT_MAGIC:#010x})"
                )
            }
            FdtError::BadTotalSize { totalsize } => {
                write!(f, "totalsize {totalsize:#x} is smaller than the header")
            }
            FdtError::Version {
                version,
                last_comp_version,
            } => write!(
                f,
                "unsupported FDT version {version} (last compatible {last_comp_version}); \
                 this reader handles version {FDT_VERSION}"
            ),
            FdtError::BlockOutOfBounds {
                block,
                offset,
                size,
            } => write!(
                f,
                "{block} block at offset {offset:#x} size {size:#x} lies outside the blob"
            ),
            FdtError::MisalignedReservations { offset } => write!(
                f,
                "memory reservation block at offset {offset:#x} is not 8-byte aligned"
            ),
            FdtError::MisalignedToken { offset } => {
                write!(
                    f,
                    "misaligned token: structure block edge at offset {offset:#x}"
                )
            }
            FdtError::BlocksOverlap { first, second } => {
                write!(f, "{first} block overlaps {second} block")
            }
            FdtError::ReservationsUnterminated { offset } => write!(
                f,
                "memory reservation block not terminated before offset {offset:#x}"
            ),
            FdtError::UnknownToken { offset, token } => {
                write!(f, "unknown token {token:#x} at offset {offset:#x}")
            }
            FdtError::UnterminatedName { offset } => {
                write!(f, "unterminated node name at offset {offset:#x}")
            }
            FdtError::BadNodeName { offset, reason } => {
                write!(f, "bad node name at offset {offset:#x}: {reason}")
            }
            FdtError::RootNotEmpty { offset } => {
                write!(f, "root node at offset {offset:#x} has a non-empty name")
            }
            FdtError::StringOffsetOutOfRange {
                offset,
                nameoff,
                strings_size,
            } => write!(
                f,
                "property at offset {offset:#x}: name offset {nameoff:#x} outside the \
                 strings block of {strings_size:#x} bytes"
            ),
            FdtError::UnterminatedString { offset, nameoff } => write!(
                f,
                "property at offset {offset:#x}: name at strings offset {nameoff:#x} is \
                 not terminated"
            ),
            FdtError::BadPropertyName { offset, reason } => {
                write!(f, "property at offset {offset:#x}: bad name: {reason}")
            }
            FdtError::PropertyOutsideNode { offset } => {
                write!(f, "property at offset {offset:#x} outside any node")
            }
            FdtError::PropertyAfterSubnode { offset } => {
                write!(f, "property at offset {offset:#x} after a sub-node")
            }
            FdtError::DuplicateProperty { offset, name } => {
                write!(f, "duplicate property {name:?} at offset {offset:#x}")
            }
            FdtError::DuplicateNode { offset, name } => {
                write!(f, "duplicate node {name:?} at offset {offset:#x}")
            }
            FdtError::NestingTooDeep { offset, max } => write!(
                f,
                "node at offset {offset:#x} nested deeper than {max} levels"
            ),
            FdtError::NodeWithoutEnd { offset, name } => write!(
                f,
                "node {name:?} opened at offset {offset:#x} has no FDT_END_NODE"
            ),
            FdtError::EndWithoutBegin { offset } => {
                write!(f, "FDT_END_NODE at offset {offset:#x} closes no node")
            }
            FdtError::SecondRoot { offset } => {
                write!(f, "second root node at offset {offset:#x}")
            }
            FdtError::NoRoot { offset } => {
                write!(f, "FDT_END at offset {offset:#x} before any root node")
            }
            FdtError::MissingEnd { offset } => {
                write!(
                    f,
                    "structure block ends at offset {offset:#x} without FDT_END"
                )
            }
            FdtError::TrailingData { offset } => {
                write!(f, "data after FDT_END at offset {offset:#x}")
            }
        }
    }
}

/// The fixed header of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdtHeader {
    /// `totalsize`.
    pub totalsize: u32,
    /// `off_dt_struct`.
    pub off_dt_struct: u32,
    /// `off_dt_strings`.
    pub off_dt_strings: u32,
    /// `off_mem_rsvmap`.
    pub off_mem_rsvmap: u32,
    /// `version`.
    pub version: u32,
    /// `last_comp_version`.
    pub last_comp_version: u32,
    /// `boot_cpuid_phys`.
    pub boot_cpuid_phys: u32,
    /// `size_dt_strings`.
    pub size_dt_strings: u32,
    /// `size_dt_struct`.
    pub size_dt_struct: u32,
}

fn be32(b: &[u8], off: usize, what: &'static str) -> Result<u32, FdtError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(FdtError::Truncated {
            offset: off,
            need: 4,
            what,
        })
}

fn be64(b: &[u8], off: usize, what: &'static str) -> Result<u64, FdtError> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(FdtError::Truncated {
            offset: off,
            need: 8,
            what,
        })
}

impl FdtHeader {
    /// Reads and checks the magic, `totalsize` (at least the header) and the version.
    /// `bytes` needs only the first [`FDT_HEADER_SIZE`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, FdtError> {
        if bytes.len() < FDT_HEADER_SIZE {
            return Err(FdtError::Truncated {
                offset: bytes.len(),
                need: FDT_HEADER_SIZE - bytes.len(),
                what: "header",
            });
        }
        let w = |i: usize| be32(bytes, i * 4, "header");
        let magic = w(0)?;
        if magic != FDT_MAGIC {
            return Err(FdtError::BadMagic { found: magic });
        }
        let h = FdtHeader {
            totalsize: w(1)?,
            off_dt_struct: w(2)?,
            off_dt_strings: w(3)?,
            off_mem_rsvmap: w(4)?,
            version: w(5)?,
            last_comp_version: w(6)?,
            boot_cpuid_phys: w(7)?,
            size_dt_strings: w(8)?,
            size_dt_struct: w(9)?,
        };
        if (h.totalsize as usize) < FDT_HEADER_SIZE {
            return Err(FdtError::BadTotalSize {
                totalsize: h.totalsize,
            });
        }
        if h.version < FDT_VERSION || h.last_comp_version > FDT_VERSION {
            return Err(FdtError::Version {
                version: h.version,
                last_comp_version: h.last_comp_version,
            });
        }
        Ok(h)
    }
}

/// A property read from a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdtProperty {
    /// Its name.
    pub name: String,
    /// Offset of its `FDT_PROP` token in the blob.
    pub offset: usize,
    /// Its raw value.
    pub value: Vec<u8>,
}

/// A node read from a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdtNode {
    /// Its name (empty for the root).
    pub name: String,
    /// Offset of its `FDT_BEGIN_NODE` token in the blob.
    pub offset: usize,
    /// Its properties, in blob order.
    pub properties: Vec<FdtProperty>,
    /// Its children, in blob order.
    pub children: Vec<FdtNode>,
}

impl FdtNode {
    /// The property called `name`.
    pub fn property(&self, name: &str) -> Option<&FdtProperty> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// The child called `name`.
    pub fn child(&self, name: &str) -> Option<&FdtNode> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// A parsed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fdt {
    /// The header.
    pub header: FdtHeader,
    /// Memory reservation entries (address, size), without the terminator.
    pub reservations: Vec<(u64, u64)>,
    /// The root node.
    pub root: FdtNode,
}

/// Parses a whole blob, strictly: see [`FdtError`] for everything that is refused.
/// Nodes may nest at most `max_depth` levels (the root is level 1). Bytes after
/// `totalsize` are ignored.
pub fn parse(blob: &[u8], max_depth: usize) -> Result<Fdt, FdtError> {
    let header = FdtHeader::parse(blob)?;
    let total = header.totalsize as usize;
    if blob.len() < total {
        return Err(FdtError::Truncated {
            offset: blob.len(),
            need: total - blob.len(),
            what: "blob (totalsize)",
        });
    }
    let blob = &blob[..total];

    // Blocks: inside [header end, totalsize), the right alignment, no overlap.
    let block = |name: &'static str, off: u32, size: u64| -> Result<(usize, usize), FdtError> {
        let (off, size) = (off as usize, size as usize);
        let fits = matches!(off.checked_add(size), Some(end) if end <= total);
        if off < FDT_HEADER_SIZE || !fits {
            return Err(FdtError::BlockOutOfBounds {
                block: name,
                offset: off,
                size,
            });
        }
        Ok((off, off + size))
    };
    let rsv_off = header.off_mem_rsvmap as usize;
    if rsv_off % 8 != 0 {
        return Err(FdtError::MisalignedReservations { offset: rsv_off });
    }
    let mut reservations = Vec::new();
    let rsv_end = {
        let mut off = rsv_off;
        loop {
            if off < FDT_HEADER_SIZE || off + 16 > total {
                return Err(if rsv_off < FDT_HEADER_SIZE {
                    FdtError::BlockOutOfBounds {
                        block: "memory reservation",
                        offset: rsv_off,
                        size: 16,
                    }
                } else {
                    FdtError::ReservationsUnterminated { offset: off }
                });
            }
            let a = be64(blob, off, "reservation entry")?;
            let s = be64(blob, off + 8, "reservation entry")?;
            off += 16;
            if a == 0 && s == 0 {
                break off;
            }
            reservations.push((a, s));
        }
    };
    let (st_off, st_end) = block(
        "structure",
        header.off_dt_struct,
        u64::from(header.size_dt_struct),
    )?;
    if st_off % 4 != 0 {
        return Err(FdtError::MisalignedToken { offset: st_off });
    }
    if st_end % 4 != 0 {
        return Err(FdtError::MisalignedToken { offset: st_end });
    }
    let (sr_off, sr_end) = block(
        "strings",
        header.off_dt_strings,
        u64::from(header.size_dt_strings),
    )?;
    let overlap = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
    if overlap((rsv_off, rsv_end), (st_off, st_end)) {
        return Err(FdtError::BlocksOverlap {
            first: "memory reservation",
            second: "structure",
        });
    }
    if overlap((rsv_off, rsv_end), (sr_off, sr_end)) {
        return Err(FdtError::BlocksOverlap {
            first: "memory reservation",
            second: "strings",
        });
    }
    if overlap((st_off, st_end), (sr_off, sr_end)) {
        return Err(FdtError::BlocksOverlap {
            first: "structure",
            second: "strings",
        });
    }
    let st = &blob[..st_end]; // reads below are bounded by the structure block end
    let strings = &blob[sr_off..sr_end];

    let mut stack: Vec<FdtNode> = Vec::new();
    let mut root: Option<FdtNode> = None;
    let mut pos = st_off;
    loop {
        if pos >= st_end {
            return Err(match stack.pop() {
                Some(n) => FdtError::NodeWithoutEnd {
                    offset: n.offset,
                    name: n.name,
                },
                None => FdtError::MissingEnd { offset: st_end },
            });
        }
        let token = be32(st, pos, "token")?;
        match token {
            FDT_BEGIN_NODE => {
                let name_off = pos + 4;
                let len = st
                    .get(name_off..)
                    .and_then(|s| s.iter().position(|&c| c == 0))
                    .ok_or(FdtError::UnterminatedName { offset: name_off })?;
                let name = &st[name_off..name_off + len];
                if stack.is_empty() {
                    if root.is_some() {
                        return Err(FdtError::SecondRoot { offset: pos });
                    }
                    if !name.is_empty() {
                        return Err(FdtError::RootNotEmpty { offset: name_off });
                    }
                } else {
                    check_node_name(name).map_err(|reason| FdtError::BadNodeName {
                        offset: name_off,
                        reason,
                    })?;
                }
                if stack.len() >= max_depth {
                    return Err(FdtError::NestingTooDeep {
                        offset: pos,
                        max: max_depth,
                    });
                }
                // Names are ASCII after the check above (the root's is empty).
                let name: String = name.iter().map(|&c| c as char).collect();
                if let Some(parent) = stack.last() {
                    if parent.children.iter().any(|c| c.name == name) {
                        return Err(FdtError::DuplicateNode { offset: pos, name });
                    }
                }
                stack.push(FdtNode {
                    name,
                    offset: pos,
                    properties: Vec::new(),
                    children: Vec::new(),
                });
                pos = align4(name_off + len + 1);
            }
            FDT_END_NODE => {
                let node = stack
                    .pop()
                    .ok_or(FdtError::EndWithoutBegin { offset: pos })?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
                pos += 4;
            }
            FDT_PROP => {
                let len = be32(st, pos + 4, "property length")? as usize;
                let nameoff = be32(st, pos + 8, "property name offset")?;
                let val_off = pos + 12;
                let value = val_off
                    .checked_add(len)
                    .and_then(|end| st.get(val_off..end))
                    .ok_or(FdtError::Truncated {
                        offset: val_off,
                        need: len,
                        what: "property value",
                    })?;
                let node = stack
                    .last_mut()
                    .ok_or(FdtError::PropertyOutsideNode { offset: pos })?;
                if !node.children.is_empty() {
                    return Err(FdtError::PropertyAfterSubnode { offset: pos });
                }
                let name =
                    strings
                        .get(nameoff as usize..)
                        .ok_or(FdtError::StringOffsetOutOfRange {
                            offset: pos,
                            nameoff,
                            strings_size: strings.len(),
                        })?;
                if name.is_empty() {
                    return Err(FdtError::StringOffsetOutOfRange {
                        offset: pos,
                        nameoff,
                        strings_size: strings.len(),
                    });
                }
                let nlen =
                    name.iter()
                        .position(|&c| c == 0)
                        .ok_or(FdtError::UnterminatedString {
                            offset: pos,
                            nameoff,
                        })?;
                let name = &name[..nlen];
                check_property_name(name).map_err(|reason| FdtError::BadPropertyName {
                    offset: pos,
                    reason,
                })?;
                let name: String = name.iter().map(|&c| c as char).collect();
                if node.properties.iter().any(|p| p.name == name) {
                    return Err(FdtError::DuplicateProperty { offset: pos, name });
                }
                node.properties.push(FdtProperty {
                    name,
                    offset: pos,
                    value: value.to_vec(),
                });
                pos = align4(val_off + len);
            }
            FDT_NOP => pos += 4,
            FDT_END => {
                if let Some(n) = stack.pop() {
                    return Err(FdtError::NodeWithoutEnd {
                        offset: n.offset,
                        name: n.name,
                    });
                }
                let root = root.ok_or(FdtError::NoRoot { offset: pos })?;
                if pos + 4 != st_end {
                    return Err(FdtError::TrailingData { offset: pos + 4 });
                }
                return Ok(Fdt {
                    header,
                    reservations,
                    root,
                });
            }
            other => {
                return Err(FdtError::UnknownToken {
                    offset: pos,
                    token: other,
                })
            }
        }
    }
}

fn align4(v: usize) -> usize {
    (v + 3) & !3
}
