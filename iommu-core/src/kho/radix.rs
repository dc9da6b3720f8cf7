//! The preserved-memory map in physical memory: a [`PageSet`] serialised as Linux
//! KHO's radix tree (ABI "kho-v2", `include/linux/kho/abi/kexec_handover.h`).
//!
//! Every node is one 4 KiB page:
//!
//! - levels 5 (the root) to 1 are `struct kho_radix_node`: 512 little-endian u64
//!   physical addresses of the next level's nodes, 0 for none;
//! - level 0 nodes are `struct kho_radix_leaf`: 32768 bits, stored as 512 little-endian
//!   u64 words (bit `b` of the leaf is bit `b % 64` of word `b / 64`).
//!
//! A block's key (see [`radix_key`]) picks the path: bits
//! 14:0 are the bit in the leaf, bits 23:15 the index in the level-1 node, 32:24 level
//! 2, 41:33 level 3, 50:42 level 4 and 59:51 the root (the diagram of the ABI header).
//! Keys of valid blocks are below 2^53, so only root entries 0 to 3 can be used.
//!
//! Linux walks this tree in `kho_radix_walk_tree` (and its callers
//! `kho_mem_retrieve` / `kho_preserved_memory_reserve`) trusting its content. [`read`]
//! trusts nothing: the walk is bounded by the fixed depth, by a node budget and by a
//! visited set (a node page referenced twice is an error, so aliasing cannot multiply
//! the work), and every bad entry is reported with the node address, level and index.

use crate::addr::PhysAddr;
use crate::mem::{MemError, PhysMem};
use crate::pageset::{
    radix_key, radix_key_decode, PageSet, PageSetError, LEAF_BITS, LEAF_BITS_LOG2, LEAF_WORDS,
    MAX_ORDER, PAGE_SIZE,
};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

/// Entries in a table node: `1 << KHO_TABLE_SIZE_LOG2`.
pub const TABLE_ENTRIES: usize = 512;
/// log2 of [`TABLE_ENTRIES`]: Linux `KHO_TABLE_SIZE_LOG2`.
pub const TABLE_SIZE_LOG2: u32 = 9;
/// Levels including the leaf level: Linux `KHO_TREE_MAX_DEPTH` (6).
pub const TREE_DEPTH: u32 = 6;
/// Level of the root node (5).
pub const ROOT_LEVEL: u32 = TREE_DEPTH - 1;
/// Root entries that valid keys (below 2^53) can use: indices `0..4`.
pub const ROOT_ENTRIES_USED: usize = 1 << (53 - (LEAF_BITS_LOG2 + TABLE_SIZE_LOG2 * 4));

/// A node page of the serialised tree.
pub type NodePage = [u8; PAGE_SIZE as usize];

/// What is wrong with a serialised tree, or why one cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadixError {
    /// The root address is 0 (Linux refuses a null `preserved-memory-map` as well).
    NullRoot,
    /// A node address (the root, or a table entry) that is not 4 KiB aligned.
    MisalignedNode {
        /// The node holding the entry (`None` for the root pointer itself).
        parent: Option<PhysAddr>,
        /// Level of the node pointed to.
        level: u32,
        /// Index of the entry in the parent.
        index: usize,
        /// The address found.
        addr: PhysAddr,
    },
    /// A root entry for keys at or above 2^53, which no block encodes.
    EntryBeyondKeySpace {
        /// The root node.
        node: PhysAddr,
        /// Index of the entry.
        index: usize,
        /// The entry.
        entry: u64,
    },
    /// A node page reached a second time (from two entries, or in a cycle).
    SharedNode {
        /// The node.
        addr: PhysAddr,
        /// Level at which it was reached the second time.
        level: u32,
    },
    /// More node pages than the budget.
    TooManyNodes {
        /// The budget.
        max: usize,
    },
    /// A node could not be read.
    Mem {
        /// The node.
        addr: PhysAddr,
        /// Its level.
        level: u32,
        /// Why.
        err: MemError,
    },
    /// A set leaf bit whose key encodes no block (key 0).
    InvalidKey {
        /// The leaf.
        leaf: PhysAddr,
        /// The bit.
        bit: u32,
        /// The key.
        key: u64,
    },
    /// A set leaf bit for a block order above [`MAX_ORDER`].
    OrderTooLarge {
        /// The leaf.
        leaf: PhysAddr,
        /// The bit.
        bit: u32,
        /// The order encoded.
        order: u32,
    },
    /// A set leaf bit for a block that overlaps a block read before.
    Overlap {
        /// The leaf.
        leaf: PhysAddr,
        /// The bit.
        bit: u32,
        /// The block's address.
        addr: PhysAddr,
        /// The block's order.
        order: u32,
        /// The block it overlaps.
        existing: PhysAddr,
        /// Order of the block it overlaps.
        existing_order: u32,
    },
    /// Building: fewer node frames than the tree needs.
    NotEnoughFrames {
        /// Frames needed.
        need: usize,
        /// Frames given.
        have: usize,
    },
}

impl fmt::Display for RadixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RadixError::NullRoot => f.write_str("preserved-memory map root address is 0"),
            RadixError::MisalignedNode {
                parent: None, addr, ..
            } => write!(f, "preserved-memory map root {addr} is not 4 KiB aligned"),
            RadixError::MisalignedNode {
                parent: Some(p),
                level,
                index,
                addr,
            } => write!(
                f,
                "radix node {p} entry {index} points to {addr}, not a 4 KiB aligned \
                 level-{level} node"
            ),
            RadixError::EntryBeyondKeySpace { node, index, entry } => write!(
                f,
                "radix root {node} entry {index} = {entry:#x} lies beyond the key space \
                 (only entries 0..{ROOT_ENTRIES_USED} can be used)"
            ),
            RadixError::SharedNode { addr, level } => write!(
                f,
                "radix node {addr} reached twice (at level {level}): the map is not a tree"
            ),
            RadixError::TooManyNodes { max } => {
                write!(f, "preserved-memory map has more than {max} node pages")
            }
            RadixError::Mem { addr, level, err } => {
                write!(f, "cannot read level-{level} radix node {addr}: {err}")
            }
            RadixError::InvalidKey { leaf, bit, key } => {
                write!(
                    f,
                    "radix leaf {leaf} bit {bit}: key {key:#x} encodes no block"
                )
            }
            RadixError::OrderTooLarge { leaf, bit, order } => write!(
                f,
                "radix leaf {leaf} bit {bit}: block order {order} above the maximum {MAX_ORDER}"
            ),
            RadixError::Overlap {
                leaf,
                bit,
                addr,
                order,
                existing,
                existing_order,
            } => write!(
                f,
                "radix leaf {leaf} bit {bit}: block {addr} of order {order} overlaps block \
                 {existing} of order {existing_order}"
            ),
            RadixError::NotEnoughFrames { need, have } => {
                write!(f, "radix tree needs {need} node pages, {have} given")
            }
        }
    }
}

/// Number of node pages the tree of `set` takes: the root, the distinct table nodes of
/// levels 4 to 1, and the leaves.
pub fn node_count(set: &PageSet) -> usize {
    let leaves: Vec<u64> = set.leaves().map(|(i, _)| i).collect();
    let mut n = 1 + leaves.len();
    for level in 1..ROOT_LEVEL {
        let shift = TABLE_SIZE_LOG2 * level;
        let mut prev = None;
        for &l in &leaves {
            // Leaves are sorted, so equal prefixes are adjacent.
            let p = l >> shift;
            if prev != Some(p) {
                n += 1;
                prev = Some(p);
            }
        }
    }
    n
}

/// Most node pages that inserting `blocks` more blocks can add to a tree: each block
/// adds at most one leaf and one node on each of levels 1 to 4.
pub const fn extra_nodes_bound(blocks: usize) -> usize {
    blocks * (TREE_DEPTH as usize - 1)
}

/// A serialised tree ready to be written: node pages and their addresses.
#[derive(Clone)]
pub struct TreeImage {
    /// The root node: the value of the `preserved-memory-map` property.
    pub root: PhysAddr,
    /// Every node page, root first, with its address.
    pub nodes: Vec<(PhysAddr, Box<NodePage>)>,
}

impl TreeImage {
    /// Writes every node page.
    pub fn write<M: PhysMem + ?Sized>(&self, mem: &mut M) -> Result<(), MemError> {
        for (addr, page) in &self.nodes {
            mem.write(*addr, &page[..])?;
        }
        Ok(())
    }
}

/// Lays out the tree of `set` in the node frames `frames` (4 KiB aligned, distinct;
/// the first becomes the root). Writes nothing.
pub fn build(set: &PageSet, frames: &[PhysAddr]) -> Result<TreeImage, RadixError> {
    let need = node_count(set);
    if frames.len() < need {
        return Err(RadixError::NotEnoughFrames {
            need,
            have: frames.len(),
        });
    }
    // Node identity: (level, leaf index >> (9 * level)). Assign frames root first, then
    // level by level downwards, each in prefix order.
    let mut tables: BTreeMap<(u32, u64), [u64; TABLE_ENTRIES]> = BTreeMap::new();
    tables.insert((ROOT_LEVEL, 0), [0; TABLE_ENTRIES]);
    for (l, _) in set.leaves() {
        for level in 1..ROOT_LEVEL {
            tables
                .entry((level, l >> (TABLE_SIZE_LOG2 * level)))
                .or_insert([0; TABLE_ENTRIES]);
        }
    }
    let mut addr_of: BTreeMap<(u32, u64), PhysAddr> = BTreeMap::new();
    let mut next = frames.iter().copied();
    let mut take = || {
        next.next().ok_or(RadixError::NotEnoughFrames {
            need,
            have: frames.len(),
        })
    };
    for level in (1..=ROOT_LEVEL).rev() {
        for (&(lv, prefix), _) in tables.range((level, 0)..=(level, u64::MAX)) {
            addr_of.insert((lv, prefix), take()?);
        }
    }
    for (l, _) in set.leaves() {
        addr_of.insert((0, l), take()?);
    }
    // Link every node into its parent.
    for (&(level, prefix), &addr) in &addr_of {
        if level == ROOT_LEVEL {
            continue;
        }
        let parent = (level + 1, prefix >> TABLE_SIZE_LOG2);
        let index = (prefix % TABLE_ENTRIES as u64) as usize;
        if let Some(t) = tables.get_mut(&parent) {
            t[index] = addr.0;
        }
    }
    let mut nodes = Vec::with_capacity(need);
    for level in (1..=ROOT_LEVEL).rev() {
        for (&(lv, prefix), table) in tables.range((level, 0)..=(level, u64::MAX)) {
            let mut page: Box<NodePage> = Box::new([0; PAGE_SIZE as usize]);
            for (i, e) in table.iter().enumerate() {
                page[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
            }
            let addr = addr_of.get(&(lv, prefix)).copied().unwrap_or_default();
            nodes.push((addr, page));
        }
    }
    for (l, leaf) in set.leaves() {
        let mut page: Box<NodePage> = Box::new([0; PAGE_SIZE as usize]);
        for (i, w) in leaf.iter().enumerate() {
            page[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let addr = addr_of.get(&(0, l)).copied().unwrap_or_default();
        nodes.push((addr, page));
    }
    let root = nodes.first().map(|(a, _)| *a).unwrap_or_default();
    Ok(TreeImage { root, nodes })
}

/// The result of reading a serialised tree.
#[derive(Clone, Debug)]
pub struct TreeRead {
    /// The preserved blocks it holds.
    pub set: PageSet,
    /// The node pages it is made of, in the order they were visited (root first).
    pub nodes: Vec<PhysAddr>,
}

/// Reads the tree whose root is at `root`, visiting at most `max_nodes` node pages.
///
/// The work is bounded by the budget: at most `max_nodes` page reads and, for each leaf,
/// one [`PageSet::insert_leaf_word`] per non-zero word (512 per leaf), whatever the
/// density of the bits: leaves are visited in key order, largest order first, so a word
/// never meets a smaller block already read and goes in at once (a full leaf costs its
/// 512 words, not 32768 inserts). The set read can claim far more pages than the
/// machine has: [`read_preserved_in`](super::read_preserved_in) bounds it by RAM.
pub fn read<M: PhysMem + ?Sized>(
    mem: &M,
    root: PhysAddr,
    max_nodes: usize,
) -> Result<TreeRead, RadixError> {
    if root.0 == 0 {
        return Err(RadixError::NullRoot);
    }
    if !root.is_aligned(PAGE_SIZE) {
        return Err(RadixError::MisalignedNode {
            parent: None,
            level: ROOT_LEVEL,
            index: 0,
            addr: root,
        });
    }
    let mut set = PageSet::new();
    let mut visited: BTreeSet<u64> = BTreeSet::new();
    let mut nodes = Vec::new();
    // (level, node address, leaf-index prefix of the node)
    let mut stack: Vec<(u32, PhysAddr, u64)> = Vec::new();
    stack.push((ROOT_LEVEL, root, 0));
    let mut page: Box<NodePage> = Box::new([0; PAGE_SIZE as usize]);
    while let Some((level, addr, prefix)) = stack.pop() {
        if !visited.insert(addr.0) {
            return Err(RadixError::SharedNode { addr, level });
        }
        if visited.len() > max_nodes {
            return Err(RadixError::TooManyNodes { max: max_nodes });
        }
        nodes.push(addr);
        mem.read(addr, &mut page[..])
            .map_err(|err| RadixError::Mem { addr, level, err })?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&page[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        if level == 0 {
            for w in 0..LEAF_WORDS {
                let bits = word(w);
                if bits == 0 {
                    continue;
                }
                // One order per word (leaf 0 aside): check it once, then the whole word
                // goes in at once (O(words) for a full leaf, not O(bits)).
                let bit0 = w as u32 * 64 + bits.trailing_zeros();
                let key0 = (prefix << LEAF_BITS_LOG2) | u64::from(bit0);
                let (_, order0) = radix_key_decode(key0).ok_or(RadixError::InvalidKey {
                    leaf: addr,
                    bit: bit0,
                    key: key0,
                })?;
                if order0 > MAX_ORDER {
                    return Err(RadixError::OrderTooLarge {
                        leaf: addr,
                        bit: bit0,
                        order: order0,
                    });
                }
                if prefix == 0 {
                    // Keys below 2^15 encode orders above 37 (or none): caught above.
                    return Err(RadixError::InvalidKey {
                        leaf: addr,
                        bit: bit0,
                        key: key0,
                    });
                }
                set.insert_leaf_word(prefix, w, bits).map_err(|e| match e {
                    PageSetError::Overlap {
                        addr: block,
                        order,
                        existing,
                        existing_order,
                    } => RadixError::Overlap {
                        leaf: addr,
                        bit: (radix_key(block, order) % LEAF_BITS) as u32,
                        addr: block,
                        order,
                        existing,
                        existing_order,
                    },
                    // The order was checked above and decoded keys are aligned.
                    _ => RadixError::InvalidKey {
                        leaf: addr,
                        bit: bit0,
                        key: key0,
                    },
                })?;
            }
            debug_assert!(LEAF_BITS == LEAF_WORDS as u64 * 64);
            continue;
        }
        // Push children in reverse so they are visited in increasing index order.
        for index in (0..TABLE_ENTRIES).rev() {
            let entry = word(index);
            if entry == 0 {
                continue;
            }
            if level == ROOT_LEVEL && index >= ROOT_ENTRIES_USED {
                return Err(RadixError::EntryBeyondKeySpace {
                    node: addr,
                    index,
                    entry,
                });
            }
            let child = PhysAddr(entry);
            if !child.is_aligned(PAGE_SIZE) {
                return Err(RadixError::MisalignedNode {
                    parent: Some(addr),
                    level: level - 1,
                    index,
                    addr: child,
                });
            }
            stack.push((level - 1, child, (prefix << TABLE_SIZE_LOG2) | index as u64));
        }
    }
    Ok(TreeRead { set, nodes })
}
