//! The outgoing handover of the old kernel: every client's record and preserved pages,
//! collected until [`KhoOut::finalize`] writes them as one KHO blob. Arch-neutral: each
//! IOMMU backend adds its own client (`iommu-vtd-<base>`, ...), and the owners of other
//! memory (guest memory, like preserved memfds) add the pages they keep.

use super::{write_handover, Client, FrameAllocator, KhoError, Written};
use crate::addr::PhysAddr;
use crate::mem::PhysMem;
use crate::pageset::{PageSet, PageSetError};
use alloc::string::String;
use alloc::vec::Vec;

/// One client's data waiting in a [`KhoOut`].
#[derive(Clone, Debug)]
struct ClientData {
    name: String,
    payload: Vec<u8>,
    compatible: String,
    pages: PageSet,
}

/// The outgoing kexec handover: clients' records and preserved pages, written as one
/// KHO blob by [`finalize`](KhoOut::finalize) (Linux's KHO finalisation).
#[derive(Debug, Default)]
pub struct KhoOut {
    clients: Vec<ClientData>,
    preserved: PageSet,
    written: Option<Written>,
}

impl KhoOut {
    /// An empty handover.
    pub fn new() -> Self {
        Self::default()
    }

    /// Preserves pages of other subsystems too (guest memory the devices DMA into).
    pub fn preserve(&mut self, set: &PageSet) {
        self.preserved = self.preserved.union(set);
        self.written = None;
    }

    /// Preserves `pages` pages from `start`.
    pub fn preserve_range(&mut self, start: PhysAddr, pages: u64) -> Result<(), PageSetError> {
        let mut s = PageSet::new();
        s.insert_range(start, pages)?;
        self.preserve(&s);
        Ok(())
    }

    /// Adds client `name`'s record (`compatible` names its family and version, e.g.
    /// `iommu-vtd-v1`) and the pages it preserves. Refused (`false`) if a client of that
    /// name is already there.
    pub fn add_client(
        &mut self,
        name: String,
        compatible: String,
        payload: Vec<u8>,
        pages: PageSet,
    ) -> bool {
        if self.clients.iter().any(|c| c.name == name) {
            return false;
        }
        self.clients.push(ClientData {
            name,
            compatible,
            payload,
            pages,
        });
        self.written = None;
        true
    }

    /// Removes client `name` (a cancelled preparation).
    pub fn remove_client(&mut self, name: &str) {
        self.clients.retain(|c| c.name != name);
        self.written = None;
    }

    /// Names of the clients added.
    pub fn clients(&self) -> impl Iterator<Item = &str> + '_ {
        self.clients.iter().map(|c| c.name.as_str())
    }

    /// Every page to preserve: the clients' pages and the extra ones.
    pub fn preserved(&self) -> PageSet {
        let mut s = self.preserved.clone();
        for c in &self.clients {
            s = s.union(&c.pages);
        }
        s
    }

    /// Writes the blob (records, preserved-page map, FDT) and returns its physical
    /// address: the one value the next kernel gets.
    pub fn finalize(
        &mut self,
        mem: &mut dyn PhysMem,
        frames: &mut dyn FrameAllocator,
    ) -> Result<PhysAddr, KhoError> {
        let preserved = self.preserved();
        let clients: Vec<Client<'_>> = self
            .clients
            .iter()
            .map(|c| Client {
                name: &c.name,
                compatible: &c.compatible,
                payload: &c.payload,
            })
            .collect();
        let w = write_handover(mem, frames, &preserved, &clients)?;
        let blob = w.blob;
        self.written = Some(w);
        Ok(blob)
    }

    /// What the last [`finalize`](KhoOut::finalize) wrote (cleared by any change).
    pub fn written(&self) -> Option<&Written> {
        self.written.as_ref()
    }
}
