//! DMA agents, the transfer engine, a checker and a seeded workload.
//!
//! A [`DmaAgent`] is a requester (segment/BDF, optional PASID) that issues reads and writes
//! of any length. A transfer is split at 4 KiB IOVA boundaries, as PCIe splits requests
//! that cross a page; each piece is translated by the device's IOMMU unit
//! ([`IommuModel::translate`]) and then reaches memory at the translated address. The
//! transfer stops at the first piece that fails; the pieces before it have reached memory,
//! exactly as on a bus ([`TransferError::Dma`] says how many bytes got through).
//!
//! [`DmaChecker`] issues transfers on a [`Machine`] and compares each with what the test
//! expects: the bytes of a write at the right physical address, the bytes a read returns,
//! a fault where one is expected. [`Workload`] drives a checker with seeded random traffic
//! over a list of mappings, so a scenario can keep DMA going between any two steps.

use crate::machine::Machine;
use crate::model::{Access, DmaError, DmaRequest, IommuModel};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::Perms;
use iommu_core::{Iova, Pasid, PhysAddr, RequesterId};
use std::fmt;

/// Transfers are split at this IOVA boundary.
pub const DMA_PAGE: u64 = 4096;

/// A device issuing DMA: its requester ID, the PASID it tags requests with (if any) and
/// whether PASID-tagged requests are privileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaAgent {
    /// Segment/bus/device/function.
    pub rid: RequesterId,
    /// The PASID of every request, if the device uses PASID prefixes.
    pub pasid: Option<Pasid>,
    /// Privileged-mode requests (only meaningful with a PASID).
    pub privileged: bool,
}

impl DmaAgent {
    /// An agent without PASID.
    pub const fn new(rid: RequesterId) -> Self {
        Self {
            rid,
            pasid: None,
            privileged: false,
        }
    }

    /// An agent tagging its requests with `pasid` (user mode).
    pub const fn with_pasid(rid: RequesterId, pasid: Pasid) -> Self {
        Self {
            rid,
            pasid: Some(pasid),
            privileged: false,
        }
    }

    /// The request this agent puts on the bus for `iova`.
    pub const fn request(&self, iova: Iova, access: Access) -> DmaRequest {
        DmaRequest {
            rid: self.rid,
            pasid: self.pasid,
            privileged: self.privileged,
            iova,
            access,
        }
    }
}

impl fmt::Display for DmaAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rid)?;
        if let Some(p) = self.pasid {
            write!(f, " PASID {p}")?;
            if self.privileged {
                f.write_str(" (privileged)")?;
            }
        }
        Ok(())
    }
}

/// Why a transfer did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// The machine has no device with this requester ID, so no unit to route it to.
    UnknownDevice {
        /// The requester.
        rid: RequesterId,
    },
    /// `iova + len` runs past the end of the 64-bit IOVA space.
    IovaOverflow {
        /// Start of the transfer.
        iova: Iova,
        /// Its length.
        len: u64,
    },
    /// A piece of the transfer failed; the `done` bytes before it reached memory.
    Dma {
        /// Bytes transferred before the failing piece.
        done: u64,
        /// Why the piece failed.
        error: DmaError,
    },
}

impl TransferError {
    /// The DMA error, if the transfer failed in the IOMMU or in memory.
    pub fn dma_error(&self) -> Option<&DmaError> {
        match self {
            TransferError::Dma { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::UnknownDevice { rid } => {
                write!(f, "no device {rid} on the machine")
            }
            TransferError::IovaOverflow { iova, len } => {
                write!(
                    f,
                    "transfer of {len:#x} bytes at IOVA {iova} overflows the IOVA space"
                )
            }
            TransferError::Dma { done, error } => {
                write!(f, "{error} (after {done:#x} bytes)")
            }
        }
    }
}

impl std::error::Error for TransferError {}

/// Moves `len` bytes at `iova` for `agent` through `unit`: one request per piece of the
/// range split at [`DMA_PAGE`] boundaries, each translated and then handed to
/// `access_memory(mem, pa, offset, len)`. Stops at the first piece that fails.
fn transfer(
    unit: &mut dyn IommuModel,
    mem: &mut dyn PhysMem,
    agent: &DmaAgent,
    iova: Iova,
    len: usize,
    access: Access,
    mut access_memory: impl FnMut(&mut dyn PhysMem, PhysAddr, usize, usize) -> Result<(), MemError>,
) -> Result<(), TransferError> {
    if len > 0 && iova.0.checked_add(len as u64 - 1).is_none() {
        return Err(TransferError::IovaOverflow {
            iova,
            len: len as u64,
        });
    }
    let mut off = 0usize;
    while off < len {
        let cur = Iova(iova.0 + off as u64);
        let n = ((DMA_PAGE - cur.0 % DMA_PAGE) as usize).min(len - off);
        let request = agent.request(cur, access);
        let done = off as u64;
        let t = unit
            .translate(mem, &request)
            .map_err(|error| TransferError::Dma { done, error })?;
        access_memory(mem, t.pa, off, n).map_err(|error| TransferError::Dma {
            done,
            error: DmaError::Data { request, error },
        })?;
        off += n;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `iova` for `agent` through `unit`.
pub fn dma_read(
    unit: &mut dyn IommuModel,
    mem: &mut dyn PhysMem,
    agent: &DmaAgent,
    iova: Iova,
    buf: &mut [u8],
) -> Result<(), TransferError> {
    let len = buf.len();
    transfer(
        unit,
        mem,
        agent,
        iova,
        len,
        Access::Read,
        |mem, pa, off, n| mem.read(pa, &mut buf[off..off + n]),
    )
}

/// Writes `data` at `iova` for `agent` through `unit`.
pub fn dma_write(
    unit: &mut dyn IommuModel,
    mem: &mut dyn PhysMem,
    agent: &DmaAgent,
    iova: Iova,
    data: &[u8],
) -> Result<(), TransferError> {
    transfer(
        unit,
        mem,
        agent,
        iova,
        data.len(),
        Access::Write,
        |mem, pa, off, n| mem.write(pa, &data[off..off + n]),
    )
}

/// How a transfer is expected to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedFailure {
    /// An IOMMU fault (optionally with this architectural code) for the request at the
    /// transfer's first IOVA.
    Fault {
        /// The fault code, or `None` for any code.
        code: Option<u32>,
    },
    /// The unit's table walk read unbacked or poisoned memory ([`DmaError::Memory`]).
    WalkError,
    /// The translated data access hit unbacked or poisoned memory ([`DmaError::Data`]).
    DataError,
    /// Any of the above.
    Any,
}

impl fmt::Display for ExpectedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedFailure::Fault { code: Some(c) } => write!(f, "fault {c:#x}"),
            ExpectedFailure::Fault { code: None } => f.write_str("a fault"),
            ExpectedFailure::WalkError => f.write_str("a walk through bad memory"),
            ExpectedFailure::DataError => f.write_str("a data access to bad memory"),
            ExpectedFailure::Any => f.write_str("a failure"),
        }
    }
}

/// One way a transfer differed from the expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// After a write, memory at the expected physical address holds other bytes.
    WrongBytes {
        /// The writer.
        agent: DmaAgent,
        /// IOVA of the first wrong byte.
        iova: Iova,
        /// Physical address of the first wrong byte.
        pa: PhysAddr,
        /// The byte written.
        expected: u8,
        /// The byte memory holds.
        found: u8,
        /// How many bytes of the transfer are wrong.
        count: u64,
    },
    /// After a write, memory at the expected physical address cannot be read.
    Unreadable {
        /// The writer (or reader whose expected data was to come from memory).
        agent: DmaAgent,
        /// IOVA of the transfer.
        iova: Iova,
        /// Why memory could not be read.
        error: MemError,
    },
    /// A read returned other bytes than expected.
    WrongReadData {
        /// The reader.
        agent: DmaAgent,
        /// IOVA of the first wrong byte.
        iova: Iova,
        /// The byte expected.
        expected: u8,
        /// The byte returned.
        found: u8,
        /// How many bytes of the transfer are wrong.
        count: u64,
    },
    /// A transfer expected to succeed failed.
    Unexpected {
        /// The requester.
        agent: DmaAgent,
        /// IOVA of the transfer.
        iova: Iova,
        /// Its length.
        len: u64,
        /// Read or write.
        access: Access,
        /// What happened.
        error: TransferError,
    },
    /// A transfer expected to fail went through.
    MissingFailure {
        /// The requester.
        agent: DmaAgent,
        /// IOVA of the transfer.
        iova: Iova,
        /// Its length.
        len: u64,
        /// Read or write.
        access: Access,
        /// What was expected.
        expected: ExpectedFailure,
    },
    /// A transfer failed, but not as expected (other code, other IOVA, other kind).
    WrongFailure {
        /// The requester.
        agent: DmaAgent,
        /// IOVA of the transfer.
        iova: Iova,
        /// Read or write.
        access: Access,
        /// What was expected.
        expected: ExpectedFailure,
        /// What happened.
        error: TransferError,
    },
    /// A write expected to be blocked changed memory at the physical address it would
    /// have reached.
    BlockedWriteLanded {
        /// The writer.
        agent: DmaAgent,
        /// IOVA of the write.
        iova: Iova,
        /// The guarded physical address.
        pa: PhysAddr,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::WrongBytes {
                agent,
                iova,
                pa,
                expected,
                found,
                count,
            } => write!(
                f,
                "{agent} write at IOVA {iova}: PA {pa} holds {found:#04x}, expected {expected:#04x} ({count} wrong bytes in the transfer)"
            ),
            Mismatch::Unreadable { agent, iova, error } => {
                write!(f, "{agent} transfer at IOVA {iova}: memory at the expected PA: {error}")
            }
            Mismatch::WrongReadData {
                agent,
                iova,
                expected,
                found,
                count,
            } => write!(
                f,
                "{agent} read at IOVA {iova} returned {found:#04x}, expected {expected:#04x} ({count} wrong bytes in the transfer)"
            ),
            Mismatch::Unexpected {
                agent,
                iova,
                len,
                access,
                error,
            } => write!(
                f,
                "{agent} {access} of {len:#x} bytes at IOVA {iova} failed unexpectedly: {error}"
            ),
            Mismatch::MissingFailure {
                agent,
                iova,
                len,
                access,
                expected,
            } => write!(
                f,
                "{agent} {access} of {len:#x} bytes at IOVA {iova} went through; expected {expected}"
            ),
            Mismatch::WrongFailure {
                agent,
                iova,
                access,
                expected,
                error,
            } => write!(
                f,
                "{agent} {access} at IOVA {iova}: expected {expected}, got: {error}"
            ),
            Mismatch::BlockedWriteLanded { agent, iova, pa } => write!(
                f,
                "{agent} write at IOVA {iova} was to be blocked but changed memory at PA {pa}"
            ),
        }
    }
}

/// Counters of a [`DmaChecker`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Transfers issued.
    pub transfers: u64,
    /// Bytes compared with the expectation.
    pub bytes_checked: u64,
    /// Transfers that failed as expected.
    pub expected_failures: u64,
    /// Transfers that did not match the expectation.
    pub mismatched_transfers: u64,
}

/// The outcome of a checked run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The counters.
    pub stats: CheckStats,
    /// Every mismatch, oldest first.
    pub mismatches: Vec<Mismatch>,
}

impl CheckReport {
    /// Whether every transfer matched its expectation.
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} transfers, {} bytes checked, {} expected failures, {} mismatched transfers",
            s.transfers, s.bytes_checked, s.expected_failures, s.mismatched_transfers
        )?;
        for m in &self.mismatches {
            write!(f, "\n  {m}")?;
        }
        Ok(())
    }
}

/// Issues transfers on a machine and compares each with what the test expects.
#[derive(Clone, Debug, Default)]
pub struct DmaChecker {
    stats: CheckStats,
    mismatches: Vec<Mismatch>,
}

/// Compares two byte strings; returns (index of first difference, number of differences).
fn diff(expected: &[u8], found: &[u8]) -> Option<(usize, u64)> {
    let mut first = None;
    let mut count = 0u64;
    for (i, (a, b)) in expected.iter().zip(found).enumerate() {
        if a != b {
            first.get_or_insert(i);
            count += 1;
        }
    }
    first.map(|i| (i, count))
}

impl DmaChecker {
    /// A checker with no transfer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters so far.
    pub fn stats(&self) -> CheckStats {
        self.stats
    }

    /// The mismatches so far, oldest first.
    pub fn mismatches(&self) -> &[Mismatch] {
        &self.mismatches
    }

    /// The counters and mismatches so far.
    pub fn report(&self) -> CheckReport {
        CheckReport {
            stats: self.stats,
            mismatches: self.mismatches.clone(),
        }
    }

    fn mismatch(&mut self, m: Mismatch) -> bool {
        self.stats.mismatched_transfers += 1;
        self.mismatches.push(m);
        false
    }

    /// Writes `data` at `iova` and checks that it landed at `pa`: the write must succeed
    /// and memory at `[pa, pa + len)` must then hold `data`. Returns whether it matched.
    pub fn write_lands(
        &mut self,
        machine: &mut Machine,
        agent: &DmaAgent,
        iova: Iova,
        data: &[u8],
        pa: PhysAddr,
    ) -> bool {
        self.stats.transfers += 1;
        if let Err(error) = machine.dma_write(agent, iova, data) {
            return self.mismatch(Mismatch::Unexpected {
                agent: *agent,
                iova,
                len: data.len() as u64,
                access: Access::Write,
                error,
            });
        }
        let mut found = vec![0u8; data.len()];
        if let Err(error) = machine.mem().read(pa, &mut found) {
            return self.mismatch(Mismatch::Unreadable {
                agent: *agent,
                iova,
                error,
            });
        }
        self.stats.bytes_checked += data.len() as u64;
        match diff(data, &found) {
            None => true,
            Some((i, count)) => self.mismatch(Mismatch::WrongBytes {
                agent: *agent,
                iova: Iova(iova.0 + i as u64),
                pa: PhysAddr(pa.0 + i as u64),
                expected: data[i],
                found: found[i],
                count,
            }),
        }
    }

    /// Reads `expected.len()` bytes at `iova` and checks that the read succeeds and
    /// returns `expected`.
    pub fn read_returns(
        &mut self,
        machine: &mut Machine,
        agent: &DmaAgent,
        iova: Iova,
        expected: &[u8],
    ) -> bool {
        self.stats.transfers += 1;
        let mut found = vec![0u8; expected.len()];
        if let Err(error) = machine.dma_read(agent, iova, &mut found) {
            return self.mismatch(Mismatch::Unexpected {
                agent: *agent,
                iova,
                len: expected.len() as u64,
                access: Access::Read,
                error,
            });
        }
        self.stats.bytes_checked += expected.len() as u64;
        match diff(expected, &found) {
            None => true,
            Some((i, count)) => self.mismatch(Mismatch::WrongReadData {
                agent: *agent,
                iova: Iova(iova.0 + i as u64),
                expected: expected[i],
                found: found[i],
                count,
            }),
        }
    }

    /// Reads `len` bytes at `iova` and checks that they equal memory at `pa` (which
    /// must be readable).
    pub fn read_matches_memory(
        &mut self,
        machine: &mut Machine,
        agent: &DmaAgent,
        iova: Iova,
        len: usize,
        pa: PhysAddr,
    ) -> bool {
        let mut expected = vec![0u8; len];
        if let Err(error) = machine.mem().read(pa, &mut expected) {
            self.stats.transfers += 1;
            return self.mismatch(Mismatch::Unreadable {
                agent: *agent,
                iova,
                error,
            });
        }
        self.read_returns(machine, agent, iova, &expected)
    }

    /// Issues a transfer expected to fail and says whether it failed as `expected`.
    fn issue_failing(
        machine: &mut Machine,
        agent: &DmaAgent,
        access: Access,
        iova: Iova,
        len: usize,
        expected: ExpectedFailure,
    ) -> Result<(), Mismatch> {
        let result = match access {
            Access::Read => {
                let mut buf = vec![0u8; len];
                machine.dma_read(agent, iova, &mut buf)
            }
            Access::Write => {
                let data: Vec<u8> = (0..len).map(|i| 0xA5 ^ i as u8).collect();
                machine.dma_write(agent, iova, &data)
            }
        };
        let error = match result {
            Ok(()) => {
                return Err(Mismatch::MissingFailure {
                    agent: *agent,
                    iova,
                    len: len as u64,
                    access,
                    expected,
                })
            }
            Err(e) => e,
        };
        // The first piece must be the one refused.
        let ok = match &error {
            TransferError::Dma { done: 0, error: e } => match (e, expected) {
                (DmaError::Fault(ev), ExpectedFailure::Fault { code }) => {
                    ev.iova == iova
                        && ev.rid == agent.rid
                        && ev.access == access
                        && code.map_or(true, |c| c == ev.code)
                }
                (DmaError::Fault(ev), ExpectedFailure::Any) => ev.iova == iova,
                (DmaError::Memory { .. }, ExpectedFailure::WalkError | ExpectedFailure::Any)
                | (DmaError::Data { .. }, ExpectedFailure::DataError | ExpectedFailure::Any) => {
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Mismatch::WrongFailure {
                agent: *agent,
                iova,
                access,
                expected,
                error,
            })
        }
    }

    /// Issues a `len`-byte `access` at `iova` (a write writes a fixed pattern) and checks
    /// that it fails as `expected`, at `iova` itself: the first piece must be the one
    /// refused, and a fault must name this requester, IOVA and access.
    pub fn expect_failure(
        &mut self,
        machine: &mut Machine,
        agent: &DmaAgent,
        access: Access,
        iova: Iova,
        len: usize,
        expected: ExpectedFailure,
    ) -> bool {
        self.stats.transfers += 1;
        match Self::issue_failing(machine, agent, access, iova, len, expected) {
            Ok(()) => {
                self.stats.expected_failures += 1;
                true
            }
            Err(m) => self.mismatch(m),
        }
    }

    /// Like [`expect_failure`](Self::expect_failure) for a write, and also checks that
    /// the raw bytes and the poison state of `[guard_pa, guard_pa + len)` (where the
    /// write would land if it were let through) are unchanged afterwards.
    pub fn expect_blocked_write(
        &mut self,
        machine: &mut Machine,
        agent: &DmaAgent,
        iova: Iova,
        len: usize,
        guard_pa: PhysAddr,
        expected: ExpectedFailure,
    ) -> bool {
        self.stats.transfers += 1;
        let snapshot = |m: &Machine| {
            let mut raw = vec![0u8; len];
            let raw = m.mem().read_raw(guard_pa, &mut raw).map(|()| raw);
            (raw, m.mem().first_poisoned(guard_pa, len as u64))
        };
        let before = snapshot(machine);
        if let Err(m) = Self::issue_failing(machine, agent, Access::Write, iova, len, expected) {
            return self.mismatch(m);
        }
        if before.0.is_ok() {
            self.stats.bytes_checked += len as u64;
            if snapshot(machine) != before {
                return self.mismatch(Mismatch::BlockedWriteLanded {
                    agent: *agent,
                    iova,
                    pa: guard_pa,
                });
            }
        }
        self.stats.expected_failures += 1;
        true
    }
}

/// One mapping a [`Workload`] exercises: `len` bytes at `iova` translate to `pa` with
/// `perms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingSpec {
    /// First IOVA.
    pub iova: Iova,
    /// Physical address of the first IOVA.
    pub pa: PhysAddr,
    /// Length in bytes.
    pub len: u64,
    /// What the device may do.
    pub perms: Perms,
}

/// A small, fast, seeded pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, bound)` (`0` if `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// Seeded, continuous DMA over a list of mappings, checked byte for byte.
///
/// Each [`step`](Self::step) visits every mapping once with one transfer of random
/// length (up to [`max_transfer`](Self::with_max_transfer), crossing page boundaries) at
/// a random offset:
///
/// - writable and readable: write random bytes (they must land at the mapping's PA),
///   then read them back (they must come back);
/// - writable only: the write must land, then a read must fault;
/// - readable only: the read must return what memory holds at the PA, and a write must
///   fault without changing memory;
/// - neither: a read and a write must both fault.
#[derive(Clone, Debug)]
pub struct Workload {
    agent: DmaAgent,
    mappings: Vec<MappingSpec>,
    rng: SplitMix64,
    max_transfer: u64,
    steps: u64,
}

impl Workload {
    /// A workload for `agent` over `mappings`, seeded with `seed`; transfers are at most
    /// 16 KiB until [`with_max_transfer`](Self::with_max_transfer) says otherwise.
    pub fn new(agent: DmaAgent, mappings: Vec<MappingSpec>, seed: u64) -> Self {
        Self {
            agent,
            mappings,
            rng: SplitMix64::new(seed),
            max_transfer: 16 * 1024,
            steps: 0,
        }
    }

    /// Sets the largest transfer (at least 1 byte).
    pub fn with_max_transfer(mut self, bytes: u64) -> Self {
        self.max_transfer = bytes.max(1);
        self
    }

    /// The agent issuing the traffic.
    pub fn agent(&self) -> &DmaAgent {
        &self.agent
    }

    /// Number of steps run.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Runs one step (one transfer pattern per mapping) and returns whether every
    /// transfer of it matched.
    pub fn step(&mut self, machine: &mut Machine, checker: &mut DmaChecker) -> bool {
        self.steps += 1;
        let mut clean = true;
        for i in 0..self.mappings.len() {
            let m = self.mappings[i];
            if m.len == 0 {
                continue;
            }
            let len = 1 + self.rng.below(m.len.min(self.max_transfer));
            let off = self.rng.below(m.len - len + 1);
            let iova = Iova(m.iova.0 + off);
            let pa = PhysAddr(m.pa.0 + off);
            let n = len as usize;
            let fault = ExpectedFailure::Fault { code: None };
            let a = self.agent;
            match (m.perms.read, m.perms.write) {
                (true, true) => {
                    let mut data = vec![0u8; n];
                    self.rng.fill(&mut data);
                    clean &= checker.write_lands(machine, &a, iova, &data, pa);
                    clean &= checker.read_returns(machine, &a, iova, &data);
                }
                (false, true) => {
                    let mut data = vec![0u8; n];
                    self.rng.fill(&mut data);
                    clean &= checker.write_lands(machine, &a, iova, &data, pa);
                    clean &= checker.expect_failure(machine, &a, Access::Read, iova, n, fault);
                }
                (true, false) => {
                    clean &= checker.read_matches_memory(machine, &a, iova, n, pa);
                    clean &= checker.expect_blocked_write(machine, &a, iova, n, pa, fault);
                }
                (false, false) => {
                    clean &= checker.expect_failure(machine, &a, Access::Read, iova, n, fault);
                    clean &= checker.expect_blocked_write(machine, &a, iova, n, pa, fault);
                }
            }
        }
        clean
    }
}
