//! The kexec-handover (KHO) blob and versioned client records.
//!
//! At a kexec the new kernel receives nothing but physical memory and one physical
//! address: that of the KHO blob. This module writes that blob, in the layout of Linux
//! KHO ABI "kho-v2" (`include/linux/kho/abi/kexec_handover.h`, written by
//! `kho_out_fdt_setup` and `kho_add_subtree` in `kernel/liveupdate/kexec_handover.c`),
//! and reads it back strictly:
//!
//! ```text
//! / {
//!     compatible = "kho-v2";
//!     preserved-memory-map = <u64: physical address of the radix tree root>;
//!     <client-name> {
//!         preserved-data = <u64: physical address of the client's record>;
//!     };
//!     ...
//! };
//! ```
//!
//! - The blob is a flattened device tree, version 17, written by the hand-made
//!   [`fdt::FdtWriter`] and read by the strict [`fdt::parse`]. Like Linux, the root FDT
//!   has an empty memory reservation block.
//! - `preserved-memory-map` points to the preserved pages serialised as KHO's radix
//!   tree ([`radix`]).
//! - Each client node's `preserved-data` points to a versioned [`record`]. Linux v2
//!   uses this property name for any preserved data blob (kho-v1 called it `fdt` and
//!   required a sub-FDT); our clients store records, not FDTs, so v2's name fits.
//! - **Byte order of the u64 properties**: Linux stores both u64 properties in CPU byte
//!   order (`fdt_property(..., &phys, sizeof(phys))`, read back with
//!   `get_unaligned((const u64 *)...)`), not as big-endian FDT cells. Both x86-64 and
//!   arm64 kernels are little-endian, so the value is little-endian here too. `dtc`
//!   therefore shows `<0x00104000 0x00000000>` for 0x401000 (hex bytes
//!   `00 10 40 00 00 00 00 00`); this disagrees with the devicetree convention, and we
//!   follow Linux.
//!
//! # Memory and what must survive
//!
//! [`write_handover`] takes one contiguous region from a [`FrameAllocator`] and lays out,
//! in order: the blob, each record (page aligned), the radix-tree nodes. The blob and
//! record pages are added to the preserved set that is serialised (Linux preserves its
//! FDT with `kho_alloc_preserve`, and clients preserve their data); the tree nodes are
//! not in the set (Linux does not preserve them either: the next kernel reads them
//! before it allocates anything). [`read_preserved`], given only the blob address,
//! returns every page that must survive: the set read from the tree, plus the blob's
//! pages, plus the tree's node pages.
//!
//! Writing is all or nothing: everything is validated, allocated (one allocation) and
//! laid out before the first byte is written; if a write fails, the blob's magic, which
//! is written last, is not there, so no half-written blob can pass for a valid one.

pub mod fdt;
mod out;
pub mod radix;
pub mod record;

pub use out::KhoOut;

use crate::addr::PhysAddr;
use crate::mem::{MemError, PhysMem};
use crate::pageset::{range_blocks, PageSet, PageSetError, PAGE_SIZE};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use fdt::{FdtError, FdtHeader, FdtWriteError, FdtWriter, FDT_HEADER_SIZE};
use radix::RadixError;
use record::{Record, RecordError, Supported};

/// The root node's compatible string: Linux `KHO_FDT_COMPATIBLE` of ABI v2.
pub const KHO_FDT_COMPATIBLE: &str = "kho-v2";
/// Linux `KHO_FDT_MEMORY_MAP_PROP_NAME`.
pub const PROP_PRESERVED_MEMORY_MAP: &str = "preserved-memory-map";
/// Linux `KHO_FDT_SUB_TREE_PROP_NAME` of ABI v2.
pub const PROP_PRESERVED_DATA: &str = "preserved-data";
/// Largest blob read (1 MiB). Linux's root FDT is one page.
pub const MAX_BLOB_SIZE: u32 = 1 << 20;
/// Most radix-tree node pages read (65536 pages, 256 MiB of tree).
pub const MAX_TREE_NODES: usize = 1 << 16;
/// Nesting of the KHO FDT: the root and its client nodes.
const KHO_FDT_DEPTH: usize = 2;

/// Gives the KHO writer physical memory to put the blob, records and tree in.
pub trait FrameAllocator {
    /// `pages` contiguous, 4 KiB aligned, free pages, or `None`.
    fn alloc_contiguous(&mut self, pages: usize) -> Option<PhysAddr>;
}

/// One client's data to hand over.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// Node name in the blob (a devicetree node name, e.g. `iommu-vtd`).
    pub name: &'a str,
    /// Record compatible string, `<family>-v<version>`, e.g. `iommu-vtd-v1`.
    pub compatible: &'a str,
    /// Record payload.
    pub payload: &'a [u8],
}

/// A client node of a blob: its name and the address of its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientNode {
    /// Node name.
    pub name: String,
    /// Value of `preserved-data`.
    pub data: PhysAddr,
}

/// What [`write_handover`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// The blob: the one address the next kernel gets.
    pub blob: PhysAddr,
    /// Its size (`totalsize`).
    pub blob_size: u32,
    /// Root of the radix tree (`preserved-memory-map`).
    pub memory_map: PhysAddr,
    /// Client nodes, in blob order.
    pub clients: Vec<ClientNode>,
    /// The region allocated: start and pages (the tail past the tree may be unused).
    pub region: (PhysAddr, u64),
    /// The tree's node pages, root first.
    pub tree_nodes: Vec<PhysAddr>,
    /// The set serialised in the tree: the caller's set plus blob and record pages.
    pub serialized: PageSet,
}

impl Written {
    /// Every page that must survive the kexec: what [`read_preserved`] will return.
    pub fn must_survive(&self) -> PageSet {
        let mut extra = PageSet::new();
        for &n in &self.tree_nodes {
            // Tree nodes come from the region's tree part, outside the serialised set.
            let _ = extra.insert(n, 0);
        }
        self.serialized.union(&extra)
    }
}

/// A blob as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    /// Where it is.
    pub blob: PhysAddr,
    /// Its size (`totalsize`).
    pub blob_size: u32,
    /// Root of the radix tree (`preserved-memory-map`).
    pub memory_map: PhysAddr,
    /// Client nodes, in blob order.
    pub clients: Vec<ClientNode>,
}

impl Handover {
    /// Address of the data of the client called `name`.
    pub fn client(&self, name: &str) -> Option<PhysAddr> {
        self.clients.iter().find(|c| c.name == name).map(|c| c.data)
    }
}

/// Why a handover could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KhoError {
    /// The blob is malformed; the offset inside is from the blob start.
    Fdt {
        /// Blob address.
        blob: PhysAddr,
        /// What is wrong.
        err: FdtError,
    },
    /// The blob could not be built (bad client name...).
    FdtWrite(FdtWriteError),
    /// A memory access failed.
    Mem {
        /// What was being read or written.
        what: &'static str,
        /// Why.
        err: MemError,
    },
    /// The blob's `totalsize` is above [`MAX_BLOB_SIZE`].
    BlobSize {
        /// Blob address.
        blob: PhysAddr,
        /// `totalsize` found or needed.
        size: u64,
        /// Largest size accepted.
        max: u32,
    },
    /// The root node's compatible is not [`KHO_FDT_COMPATIBLE`].
    Compatible {
        /// Blob address.
        blob: PhysAddr,
        /// Compatible found (its strings joined by `,`; empty when absent).
        found: String,
        /// What this reader supports.
        expected: &'static str,
    },
    /// A required property is missing.
    MissingProperty {
        /// Node (`/` for the root).
        node: String,
        /// Property.
        property: &'static str,
    },
    /// A property has the wrong length or format.
    PropertyFormat {
        /// Node (`/` for the root).
        node: String,
        /// Property.
        property: &'static str,
        /// Offset of the property in the blob.
        offset: usize,
        /// Its length.
        len: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// The preserved-memory map is bad.
    Radix(RadixError),
    /// A client's data page is not in the preserved set.
    ClientNotPreserved {
        /// Client node.
        name: String,
        /// Its data address.
        data: PhysAddr,
    },
    /// Two clients with one name.
    DuplicateClient {
        /// The name.
        name: String,
    },
    /// A client record could not be encoded, or was refused when read.
    Record {
        /// Client node.
        client: String,
        /// Why.
        err: RecordError,
    },
    /// No client of that name in the blob.
    NoSuchClient {
        /// The name asked for.
        name: String,
    },
    /// The allocator had no region of this size.
    AllocFailed {
        /// Pages asked for.
        pages: u64,
    },
    /// The allocator returned a region that is not 4 KiB aligned or wraps around.
    BadAllocation {
        /// Start returned.
        start: PhysAddr,
        /// Pages asked for.
        pages: u64,
    },
    /// The allocator returned pages that are already in the preserved set.
    RegionPreserved {
        /// Start of the region.
        start: PhysAddr,
        /// Pages in it.
        pages: u64,
        /// A preserved block inside it.
        block: PhysAddr,
        /// That block's order.
        order: u32,
    },
    /// A page-set operation failed.
    PageSet(PageSetError),
    /// The preserved-memory map claims more pages than the machine's RAM holds.
    PreservedExceedsRam {
        /// Pages the map claims.
        pages: u64,
        /// Pages of RAM.
        ram_pages: u64,
    },
    /// A block of the preserved-memory map lies (partly) outside RAM.
    PreservedOutsideRam {
        /// The block.
        block: PhysAddr,
        /// Its order.
        order: u32,
    },
}

impl fmt::Display for KhoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KhoError::Fdt { blob, err } => write!(f, "KHO blob at {blob}: {err}"),
            KhoError::FdtWrite(e) => write!(f, "cannot build KHO blob: {e}"),
            KhoError::Mem { what, err } => write!(f, "{what}: {err}"),
            KhoError::BlobSize { blob, size, max } => write!(
                f,
                "KHO blob at {blob}: size {size:#x} above the maximum {max:#x}"
            ),
            KhoError::Compatible {
                blob,
                found,
                expected,
            } => write!(
                f,
                "KHO blob at {blob}: root compatible {found:?}, this reader supports {expected:?}"
            ),
            KhoError::MissingProperty { node, property } => {
                write!(f, "KHO node {node:?} has no {property:?} property")
            }
            KhoError::PropertyFormat {
                node,
                property,
                offset,
                len,
                expected,
            } => write!(
                f,
                "KHO node {node:?} property {property:?} at blob offset {offset:#x}: \
                 {len} bytes, expected {expected}"
            ),
            KhoError::Radix(e) => write!(f, "preserved-memory map: {e}"),
            KhoError::ClientNotPreserved { name, data } => write!(
                f,
                "KHO client {name:?}: data at {data} is not in the preserved set"
            ),
            KhoError::DuplicateClient { name } => write!(f, "two KHO clients named {name:?}"),
            KhoError::Record { client, err } => write!(f, "KHO client {client:?}: {err}"),
            KhoError::NoSuchClient { name } => write!(f, "no KHO client named {name:?}"),
            KhoError::AllocFailed { pages } => {
                write!(f, "no {pages} contiguous free pages for the KHO handover")
            }
            KhoError::BadAllocation { start, pages } => write!(
                f,
                "allocator returned {start} for {pages} pages: not page aligned or wraps"
            ),
            KhoError::RegionPreserved {
                start,
                pages,
                block,
                order,
            } => write!(
                f,
                "allocated region {start} ({pages} pages) holds preserved block {block} \
                 of order {order}"
            ),
            KhoError::PageSet(e) => write!(f, "{e}"),
            KhoError::PreservedExceedsRam { pages, ram_pages } => write!(
                f,
                "preserved-memory map claims {pages:#x} pages, more than the {ram_pages:#x} \
                 pages of RAM"
            ),
            KhoError::PreservedOutsideRam { block, order } => write!(
                f,
                "preserved-memory map holds block {block} of order {order}, outside RAM"
            ),
        }
    }
}

impl From<RadixError> for KhoError {
    fn from(e: RadixError) -> Self {
        KhoError::Radix(e)
    }
}

impl From<PageSetError> for KhoError {
    fn from(e: PageSetError) -> Self {
        KhoError::PageSet(e)
    }
}

impl From<FdtWriteError> for KhoError {
    fn from(e: FdtWriteError) -> Self {
        KhoError::FdtWrite(e)
    }
}

/// Builds the KHO blob.
fn build_blob(memory_map: PhysAddr, clients: &[ClientNode]) -> Result<Vec<u8>, FdtWriteError> {
    let mut w = FdtWriter::new();
    w.begin_node("")?;
    w.property_string("compatible", KHO_FDT_COMPATIBLE)?;
    // CPU byte order, as Linux writes it (see the module documentation).
    w.property(PROP_PRESERVED_MEMORY_MAP, &memory_map.0.to_le_bytes())?;
    for c in clients {
        w.begin_node(&c.name)?;
        w.property(PROP_PRESERVED_DATA, &c.data.0.to_le_bytes())?;
        w.end_node()?;
    }
    w.end_node()?;
    w.finish(0)
}

/// Pages needed for `bytes` bytes.
fn pages_for(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(PAGE_SIZE)
}

/// Most blocks a range of `pages` pages splits into, whatever its alignment: one per
/// order going up to the largest aligned boundary, one per order coming down, plus the
/// run of maximum-order blocks in between.
fn range_blocks_bound(pages: u64) -> usize {
    let bits = 64 - pages.leading_zeros() as usize;
    2 * bits + (pages >> crate::pageset::MAX_ORDER) as usize
}

/// Writes a handover: the records of `clients`, the preserved set `preserved` (plus the
/// pages this call allocates for the blob and the records) as a radix tree, and the
/// blob pointing to both. Returns what was written; `Written::blob` is the address to
/// give the next kernel.
///
/// All or nothing: on `Err`, no valid blob exists at any address returned, and nothing
/// is written unless all validation and the allocation succeeded.
pub fn write_handover<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
    mem: &mut M,
    alloc: &mut A,
    preserved: &PageSet,
    clients: &[Client<'_>],
) -> Result<Written, KhoError> {
    // 1. Validate and encode, all in memory.
    let mut records = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter().enumerate() {
        if clients[..i].iter().any(|d| d.name == c.name) {
            return Err(KhoError::DuplicateClient {
                name: c.name.into(),
            });
        }
        let rec =
            record::encode_record(c.compatible, c.payload).map_err(|err| KhoError::Record {
                client: c.name.into(),
                err,
            })?;
        records.push(rec);
    }
    // Node names are checked by the FDT writer; build once with placeholder addresses
    // to learn the blob size (the values are fixed-size, so it does not change).
    let placeholder: Vec<ClientNode> = clients
        .iter()
        .map(|c| ClientNode {
            name: c.name.into(),
            data: PhysAddr(0),
        })
        .collect();
    let blob_len = build_blob(PhysAddr(0), &placeholder)?.len();
    if blob_len > MAX_BLOB_SIZE as usize {
        return Err(KhoError::BlobSize {
            blob: PhysAddr(0),
            size: blob_len as u64,
            max: MAX_BLOB_SIZE,
        });
    }

    // 2. Size and allocate one region: blob, records, tree.
    let blob_pages = pages_for(blob_len);
    let record_pages: Vec<u64> = records.iter().map(|r| pages_for(r.len())).collect();
    let data_pages = blob_pages + record_pages.iter().sum::<u64>();
    let tree_pages = (radix::node_count(preserved)
        + radix::extra_nodes_bound(range_blocks_bound(data_pages))) as u64;
    let total = data_pages + tree_pages;
    let start = usize::try_from(total)
        .ok()
        .and_then(|n| alloc.alloc_contiguous(n))
        .ok_or(KhoError::AllocFailed { pages: total })?;
    let region_ok = start.is_aligned(PAGE_SIZE)
        && total
            .checked_mul(PAGE_SIZE)
            .and_then(|bytes| start.0.checked_add(bytes - 1))
            .is_some();
    if !region_ok {
        return Err(KhoError::BadAllocation {
            start,
            pages: total,
        });
    }
    let mut region = PageSet::new();
    region.insert_range(start, total)?;
    let first_shared = region.intersection(preserved).iter().next();
    if let Some((block, order)) = first_shared.and_then(|(p, _)| preserved.containing_block(p)) {
        return Err(KhoError::RegionPreserved {
            start,
            pages: total,
            block,
            order,
        });
    }

    // 3. Lay out: addresses of blob, records, tree nodes.
    let page = |i: u64| PhysAddr(start.0 + i * PAGE_SIZE);
    let blob = start;
    let mut next = blob_pages;
    let mut nodes = Vec::with_capacity(clients.len());
    for (c, &p) in clients.iter().zip(&record_pages) {
        nodes.push(ClientNode {
            name: c.name.into(),
            data: page(next),
        });
        next += p;
    }
    let mut serialized = preserved.clone();
    serialized.insert_range(start, data_pages)?;
    let frames: Vec<PhysAddr> = (data_pages..total).map(page).collect();
    let tree = radix::build(&serialized, &frames)?;
    let blob_bytes = build_blob(tree.root, &nodes)?;
    if blob_bytes.len() != blob_len {
        // Cannot happen: only fixed-size values changed. Refuse rather than overrun.
        return Err(KhoError::BlobSize {
            blob,
            size: blob_bytes.len() as u64,
            max: blob_len as u32,
        });
    }

    // 4. Write: records, tree, blob body, and the blob magic last.
    let werr = |what| move |err| KhoError::Mem { what, err };
    for (n, r) in nodes.iter().zip(&records) {
        mem.write(n.data, r).map_err(werr("writing a KHO record"))?;
    }
    tree.write(mem)
        .map_err(werr("writing the preserved-memory map"))?;
    mem.write(PhysAddr(blob.0 + 4), &blob_bytes[4..])
        .map_err(werr("writing the KHO blob"))?;
    mem.write(blob, &blob_bytes[..4])
        .map_err(werr("writing the KHO blob magic"))?;

    Ok(Written {
        blob,
        blob_size: blob_len as u32,
        memory_map: tree.root,
        clients: nodes,
        region: (start, total),
        tree_nodes: tree.nodes.iter().map(|(a, _)| *a).collect(),
        serialized,
    })
}

/// Reads a u64 property in CPU (little-endian) byte order.
fn u64_prop(node: &fdt::FdtNode, path: &str, name: &'static str) -> Result<u64, KhoError> {
    let p = node.property(name).ok_or(KhoError::MissingProperty {
        node: path.into(),
        property: name,
    })?;
    let bytes: [u8; 8] = p
        .value
        .as_slice()
        .try_into()
        .map_err(|_| KhoError::PropertyFormat {
            node: path.into(),
            property: name,
            offset: p.offset,
            len: p.value.len(),
            expected: "8 bytes (a u64 physical address)",
        })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads and checks the blob at `blob`: FDT structure, root compatible, the memory map
/// address and every client node. Does not read the tree or the records.
pub fn read_handover<M: PhysMem + ?Sized>(mem: &M, blob: PhysAddr) -> Result<Handover, KhoError> {
    let mut hdr = [0u8; FDT_HEADER_SIZE];
    mem.read(blob, &mut hdr).map_err(|err| KhoError::Mem {
        what: "reading the KHO blob header",
        err,
    })?;
    let header = FdtHeader::parse(&hdr).map_err(|err| KhoError::Fdt { blob, err })?;
    if header.totalsize > MAX_BLOB_SIZE {
        return Err(KhoError::BlobSize {
            blob,
            size: u64::from(header.totalsize),
            max: MAX_BLOB_SIZE,
        });
    }
    let mut bytes = alloc::vec![0u8; header.totalsize as usize];
    mem.read(blob, &mut bytes).map_err(|err| KhoError::Mem {
        what: "reading the KHO blob",
        err,
    })?;
    let tree = fdt::parse(&bytes, KHO_FDT_DEPTH).map_err(|err| KhoError::Fdt { blob, err })?;
    let root = &tree.root;

    let compat = root.property("compatible");
    let strings: Vec<&[u8]> = match compat {
        Some(p) if p.value.last() == Some(&0) => {
            p.value[..p.value.len() - 1].split(|&c| c == 0).collect()
        }
        Some(p) => {
            return Err(KhoError::PropertyFormat {
                node: "/".into(),
                property: "compatible",
                offset: p.offset,
                len: p.value.len(),
                expected: "a NUL-terminated string list",
            })
        }
        None => Vec::new(),
    };
    if !strings.iter().any(|s| *s == KHO_FDT_COMPATIBLE.as_bytes()) {
        let found = strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        return Err(KhoError::Compatible {
            blob,
            found,
            expected: KHO_FDT_COMPATIBLE,
        });
    }
    let memory_map = PhysAddr(u64_prop(root, "/", PROP_PRESERVED_MEMORY_MAP)?);
    let mut clients = Vec::with_capacity(root.children.len());
    for c in &root.children {
        let data = PhysAddr(u64_prop(c, &c.name, PROP_PRESERVED_DATA)?);
        clients.push(ClientNode {
            name: c.name.clone(),
            data,
        });
    }
    Ok(Handover {
        blob,
        blob_size: header.totalsize,
        memory_map,
        clients,
    })
}

/// Every page that must survive the kexec, from the blob address alone: the preserved
/// set read from the radix tree, plus the blob's pages, plus the tree's node pages.
/// Also checks that each client's data page is in the preserved set.
pub fn read_preserved<M: PhysMem + ?Sized>(mem: &M, blob: PhysAddr) -> Result<PageSet, KhoError> {
    let h = read_handover(mem, blob)?;
    let tree = radix::read(mem, h.memory_map, MAX_TREE_NODES)?;
    for c in &h.clients {
        if !tree.set.contains(c.data) {
            return Err(KhoError::ClientNotPreserved {
                name: c.name.clone(),
                data: c.data,
            });
        }
    }
    let mut extra = PageSet::new();
    let first = blob.align_down(PAGE_SIZE);
    let last = PhysAddr(blob.0.saturating_add(u64::from(h.blob_size) - 1)).align_down(PAGE_SIZE);
    for (a, o) in range_blocks(first, (last.0 - first.0) / PAGE_SIZE + 1)? {
        extra.insert(a, o)?;
    }
    for &n in &tree.nodes {
        if !extra.contains(n) {
            extra.insert(n, 0)?;
        }
    }
    Ok(tree.set.union(&extra))
}

/// [`read_preserved`] for a kernel that knows its RAM (`(start, bytes)` ranges, as its
/// firmware memory map gives them): the map may claim at most the pages of RAM, every
/// block inside one range. What the next kernel keeps its allocator off is then
/// bounded by the memory behind it, and a map that claims more names what is wrong
/// instead of leaving the allocator without a page.
///
/// The work: the tree read (O(node pages), see [`radix::read`]), then, once the page
/// count fits in RAM, one check per block (at most one per page of RAM).
pub fn read_preserved_in<M: PhysMem + ?Sized>(
    mem: &M,
    blob: PhysAddr,
    ram: &[(PhysAddr, u64)],
) -> Result<PageSet, KhoError> {
    let set = read_preserved(mem, blob)?;
    let ram_pages = ram
        .iter()
        .fold(0u64, |n, &(_, bytes)| n.saturating_add(bytes / PAGE_SIZE));
    if set.page_count() > ram_pages {
        return Err(KhoError::PreservedExceedsRam {
            pages: set.page_count(),
            ram_pages,
        });
    }
    for (block, order) in set.iter() {
        let bytes = PAGE_SIZE << order;
        let inside = ram.iter().any(|&(start, len)| {
            block.0 >= start.0
                && block
                    .0
                    .checked_add(bytes)
                    .is_some_and(|end| end <= start.0.saturating_add(len))
        });
        if !inside {
            return Err(KhoError::PreservedOutsideRam { block, order });
        }
    }
    Ok(set)
}

/// Reads the record of client `name` of a blob read with [`read_handover`].
pub fn read_client_record<M: PhysMem + ?Sized>(
    mem: &M,
    handover: &Handover,
    name: &str,
    supported: &Supported<'_>,
) -> Result<Record, KhoError> {
    let data = handover
        .client(name)
        .ok_or(KhoError::NoSuchClient { name: name.into() })?;
    record::read_record(mem, data, supported).map_err(|err| KhoError::Record {
        client: name.into(),
        err,
    })
}
