//! DMA agents, the transfer engine, the checker and the seeded workload, on the fake unit.

mod common;

use common::*;
use emulator::dma::{
    self, CheckStats, DmaAgent, DmaChecker, ExpectedFailure, MappingSpec, Mismatch, TransferError,
    Workload,
};
use emulator::machine::Machine;
use emulator::memory::SparseMemory;
use emulator::model::{
    Access, DmaError, DmaRequest, FaultEvent, IommuModel, RegisterValue, Translated, UnitKind,
};
use iommu_core::mem::{MemError, PhysMem};
use iommu_core::pgtable::Perms;
use iommu_core::{Iova, Pasid, PhysAddr, RequesterId};

#[test]
fn transfers_are_split_at_4k_iova_boundaries() {
    let mut unit = FakeUnit::new(UNIT_A); // pass-through
    let mut mem = SparseMemory::new(&[(PhysAddr(0), 0x10_0000)]).unwrap();
    let agent = DmaAgent::with_pasid(DEV_A, Pasid(5));
    let data: Vec<u8> = (0..0x2020u32).map(|i| i as u8).collect();
    dma::dma_write(&mut unit, &mut mem, &agent, Iova(0x1ff0), &data).unwrap();
    let seen: Vec<(u64, Access, Option<Pasid>)> = unit
        .requests
        .iter()
        .map(|r| (r.iova.0, r.access, r.pasid))
        .collect();
    let p = Some(Pasid(5));
    assert_eq!(
        seen,
        vec![
            (0x1ff0, Access::Write, p),
            (0x2000, Access::Write, p),
            (0x3000, Access::Write, p),
            (0x4000, Access::Write, p),
        ]
    );
    let mut back = vec![0u8; data.len()];
    dma::dma_read(&mut unit, &mut mem, &agent, Iova(0x1ff0), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(unit.requests.len(), 8);
    assert!(unit.requests[4..].iter().all(|r| r.access == Access::Read));
    // A zero-length transfer issues no request.
    dma::dma_read(&mut unit, &mut mem, &agent, Iova(0x1000), &mut []).unwrap();
    assert_eq!(unit.requests.len(), 8);
    assert_eq!(
        dma::dma_read(
            &mut unit,
            &mut mem,
            &agent,
            Iova(u64::MAX - 3),
            &mut [0u8; 8]
        ),
        Err(TransferError::IovaOverflow {
            iova: Iova(u64::MAX - 3),
            len: 8
        })
    );
}

#[test]
fn a_failing_piece_stops_the_transfer_after_the_pieces_before_it() {
    let mut m = two_unit_machine();
    map(&mut m, TABLE_A, 0, 0x20_0000, PTE_R | PTE_W);
    map(&mut m, TABLE_A, 1, 0x30_0000, PTE_R | PTE_W);
    let a = DmaAgent::new(DEV_A);
    let data = vec![0x5au8; 0x3000];
    let e = m.dma_write(&a, Iova(0), &data).unwrap_err();
    match &e {
        TransferError::Dma {
            done: 0x2000,
            error: DmaError::Fault(ev),
        } => {
            assert_eq!(ev.iova, Iova(0x2000));
            assert_eq!(ev.code, FAULT_NOT_PRESENT);
            assert_eq!(ev.unit, UNIT_A);
            assert_eq!(ev.access, Access::Write);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        m.mem().read_u64(PhysAddr(0x20_0ff8)),
        Ok(0x5a5a_5a5a_5a5a_5a5a)
    );
    assert_eq!(
        m.mem().read_u64(PhysAddr(0x30_0ff8)),
        Ok(0x5a5a_5a5a_5a5a_5a5a)
    );
    assert_eq!(m.fault_log().len(), 1);
}

#[test]
fn data_accesses_to_bad_memory_are_data_errors() {
    let mut m = two_unit_machine();
    // Outside RAM (RAM is [0, 64 MiB) and [4 GiB, 4 GiB + 16 MiB)).
    map(&mut m, TABLE_A, 0, 0x8000_0000, PTE_R | PTE_W);
    // Inside RAM but never written.
    map(&mut m, TABLE_A, 1, 0x40_0000, PTE_R | PTE_W);
    let a = DmaAgent::new(DEV_A);
    let e = m.dma_write(&a, Iova(0x10), &[1, 2, 3]).unwrap_err();
    assert_eq!(
        e.dma_error(),
        Some(&DmaError::Data {
            request: a.request(Iova(0x10), Access::Write),
            error: MemError::Unbacked {
                addr: PhysAddr(0x8000_0010)
            }
        })
    );
    let mut buf = [0u8; 4];
    let e = m.dma_read(&a, Iova(0x1008), &mut buf).unwrap_err();
    assert_eq!(
        e.dma_error(),
        Some(&DmaError::Data {
            request: a.request(Iova(0x1008), Access::Read),
            error: MemError::Poisoned {
                addr: PhysAddr(0x40_0008)
            }
        })
    );
    assert_eq!(m.error_log().len(), 2);
    assert!(m.fault_log().is_empty());
    let stranger = DmaAgent::new(RequesterId::new(0, 9, 9, 0));
    assert_eq!(
        m.dma_read(&stranger, Iova(0), &mut buf),
        Err(TransferError::UnknownDevice { rid: stranger.rid })
    );
}

#[test]
fn the_checker_accepts_correct_transfers_and_counts_them() {
    let mut m = two_unit_machine();
    map(&mut m, TABLE_A, 3, 0x20_0000, PTE_R | PTE_W);
    map(&mut m, TABLE_A, 4, 0x20_1000, PTE_R);
    let a = DmaAgent::new(DEV_A);
    let mut c = DmaChecker::new();
    let data: Vec<u8> = (0..100u8).collect();
    assert!(c.write_lands(&mut m, &a, Iova(0x3f80), &data, PhysAddr(0x20_0f80)));
    assert!(c.read_returns(&mut m, &a, Iova(0x3f80), &data));
    assert!(c.expect_failure(
        &mut m,
        &a,
        Access::Write,
        Iova(0x4100),
        8,
        ExpectedFailure::Fault {
            code: Some(FAULT_WRITE)
        }
    ));
    assert!(c.expect_failure(
        &mut m,
        &a,
        Access::Read,
        Iova(0x9000),
        8,
        ExpectedFailure::Fault {
            code: Some(FAULT_NOT_PRESENT)
        }
    ));
    assert!(c.expect_blocked_write(
        &mut m,
        &a,
        Iova(0x4000),
        16,
        PhysAddr(0x20_1000),
        ExpectedFailure::Fault { code: None }
    ));
    let r = c.report();
    assert!(r.is_clean(), "{r}");
    assert_eq!(
        r.stats,
        CheckStats {
            transfers: 5,
            bytes_checked: 100 + 100 + 16,
            expected_failures: 3,
            mismatched_transfers: 0
        }
    );
}

#[test]
fn the_checker_reports_every_kind_of_mismatch() {
    let mut m = two_unit_machine();
    map(&mut m, TABLE_A, 0, 0x20_0000, PTE_R | PTE_W);
    m.mem_mut()
        .write(PhysAddr(0x20_0000), &[0u8; 0x2000])
        .unwrap();
    let a = DmaAgent::new(DEV_A);
    let mut c = DmaChecker::new();

    // A unit that translates 4 KiB too far: the write lands at the wrong place.
    m.mmio_write(PhysAddr(UNIT_A.0 + REG_SKEW), 8, 0x1000)
        .unwrap();
    assert!(!c.write_lands(&mut m, &a, Iova(0x10), &[9, 9, 0, 9], PhysAddr(0x20_0010)));
    match &c.mismatches()[0] {
        Mismatch::WrongBytes {
            iova,
            pa,
            expected,
            found,
            count,
            ..
        } => {
            assert_eq!((*iova, *pa), (Iova(0x10), PhysAddr(0x20_0010)));
            assert_eq!((*expected, *found, *count), (9, 0, 3));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The read through the same broken unit returns the bytes from the wrong page,
    // which here are the ones written, so ask for other bytes.
    assert!(!c.read_returns(&mut m, &a, Iova(0x10), &[9, 9, 1, 9]));
    assert!(matches!(
        c.mismatches()[1],
        Mismatch::WrongReadData {
            iova: Iova(0x12),
            expected: 1,
            found: 0,
            count: 1,
            ..
        }
    ));
    m.mmio_write(PhysAddr(UNIT_A.0 + REG_SKEW), 8, 0).unwrap();

    // A fault where none is expected.
    assert!(!c.write_lands(&mut m, &a, Iova(0x5000), &[1], PhysAddr(0x20_0000)));
    assert!(matches!(
        &c.mismatches()[2],
        Mismatch::Unexpected {
            error: TransferError::Dma {
                error: DmaError::Fault(_),
                ..
            },
            ..
        }
    ));
    // No fault where one is expected.
    let f = ExpectedFailure::Fault { code: None };
    assert!(!c.expect_failure(&mut m, &a, Access::Read, Iova(0x0), 4, f));
    assert!(matches!(c.mismatches()[3], Mismatch::MissingFailure { .. }));
    // A fault with another code, and a fault at another IOVA than the first.
    let f = ExpectedFailure::Fault {
        code: Some(FAULT_WRITE),
    };
    assert!(!c.expect_failure(&mut m, &a, Access::Write, Iova(0x5000), 4, f));
    assert!(matches!(c.mismatches()[4], Mismatch::WrongFailure { .. }));
    let f = ExpectedFailure::Fault { code: None };
    assert!(!c.expect_failure(&mut m, &a, Access::Write, Iova(0xff0), 0x20, f));
    assert!(matches!(c.mismatches()[5], Mismatch::WrongFailure { .. }));
    // The wrong kind of failure.
    assert!(!c.expect_failure(
        &mut m,
        &a,
        Access::Write,
        Iova(0x5000),
        4,
        ExpectedFailure::WalkError
    ));
    // Memory at the expected PA is unreadable.
    map(&mut m, TABLE_A, 7, 0x30_0000, PTE_R | PTE_W);
    assert!(!c.read_matches_memory(&mut m, &a, Iova(0x7000), 8, PhysAddr(0x30_0000)));
    assert!(matches!(
        c.mismatches()[7],
        Mismatch::Unreadable {
            error: MemError::Poisoned { .. },
            ..
        }
    ));
    let r = c.report();
    assert_eq!(r.stats.mismatched_transfers, 8);
    assert_eq!(r.mismatches.len(), 8);
    assert!(!r.is_clean());
    let text = r.to_string();
    assert!(
        text.contains("PA 0x200010 holds 0x00, expected 0x09"),
        "{text}"
    );
}

/// A broken unit that scribbles on memory before reporting a fault.
struct Scribbler(FakeUnit, PhysAddr);

impl IommuModel for Scribbler {
    fn kind(&self) -> UnitKind {
        UnitKind::Vtd
    }
    fn mmio_base(&self) -> PhysAddr {
        self.0.mmio_base()
    }
    fn mmio_size(&self) -> u64 {
        WINDOW
    }
    fn mmio_read(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8) -> u64 {
        self.0.mmio_read(mem, offset, width)
    }
    fn mmio_write(&mut self, mem: &mut dyn PhysMem, offset: u64, width: u8, value: u64) {
        self.0.mmio_write(mem, offset, width, value)
    }
    fn translate(
        &mut self,
        mem: &mut dyn PhysMem,
        request: &DmaRequest,
    ) -> Result<Translated, DmaError> {
        let _ = mem.write(self.1, &[0xee]);
        Err(DmaError::Fault(FaultEvent {
            unit: self.0.base,
            rid: request.rid,
            pasid: request.pasid,
            iova: request.iova,
            access: request.access,
            code: FAULT_WRITE,
            reason: "write not allowed",
            recorded: true,
        }))
    }
    fn fault_log(&self) -> &[FaultEvent] {
        &[]
    }
    fn diagnostics(&self) -> &[String] {
        &[]
    }
    fn save_registers(&self) -> Vec<RegisterValue> {
        Vec::new()
    }
}

#[test]
fn a_blocked_write_that_changes_memory_is_caught() {
    let mut m = Machine::with_ram(&RAM).unwrap();
    let guard = PhysAddr(0x20_0000);
    m.add_unit(Box::new(Scribbler(FakeUnit::new(UNIT_A), guard)))
        .unwrap();
    let a = m
        .add_device(emulator::machine::Device {
            rid: DEV_A,
            pasid: None,
            unit: UNIT_A,
        })
        .unwrap();
    let mut c = DmaChecker::new();
    assert!(!c.expect_blocked_write(
        &mut m,
        &a,
        Iova(0),
        8,
        guard,
        ExpectedFailure::Fault { code: None }
    ));
    assert_eq!(
        c.mismatches(),
        &[Mismatch::BlockedWriteLanded {
            agent: a,
            iova: Iova(0),
            pa: guard
        }]
    );
    assert_eq!(c.stats().expected_failures, 0);
}

fn workload_machine() -> (Machine, Vec<MappingSpec>) {
    let mut m = two_unit_machine();
    let specs = vec![
        (0u64, 0x20_0000u64, 3u64, Perms::RW),
        (3, 0x21_0000, 2, Perms::R),
        (5, 0x22_0000, 1, Perms::W),
        (6, 0x23_0000, 1, Perms::default()),
    ];
    let mut out = Vec::new();
    for (first, pa, pages, perms) in specs {
        let bits = u64::from(perms.read) * PTE_R + u64::from(perms.write) * PTE_W;
        for k in 0..pages {
            // A table entry with no permission is not present in this fake: map it
            // read-only and let the spec say "none" only where the entry is absent.
            if bits != 0 {
                map(&mut m, TABLE_A, first + k, pa + k * 0x1000, bits);
            }
        }
        // Read-only pages need content for the reads to check.
        if perms.read && !perms.write {
            m.mem_mut()
                .write(PhysAddr(pa), &vec![0x42u8; (pages * 0x1000) as usize])
                .unwrap();
        }
        out.push(MappingSpec {
            iova: Iova(first * 0x1000),
            pa: PhysAddr(pa),
            len: pages * 0x1000,
            perms,
        });
    }
    (m, out)
}

#[test]
fn the_workload_runs_clean_over_correct_mappings() {
    let (mut m, specs) = workload_machine();
    let mut w = Workload::new(DmaAgent::new(DEV_A), specs, 7).with_max_transfer(6000);
    let mut c = DmaChecker::new();
    for _ in 0..20 {
        assert!(w.step(&mut m, &mut c), "{}", c.report());
    }
    let s = c.stats();
    assert_eq!(w.steps(), 20);
    assert_eq!(s.transfers, 20 * 8);
    assert_eq!(s.expected_failures, 20 * 4);
    assert_eq!(s.mismatched_transfers, 0);
    assert!(s.bytes_checked > 20 * 4, "{s:?}");
    // Every expected failure is in the machine's fault log, nothing in the error log.
    assert_eq!(m.fault_log().len(), 20 * 4);
    assert!(m.error_log().is_empty());
}

#[test]
fn the_workload_is_deterministic_and_catches_a_moved_page() {
    let run = |seed| {
        let (mut m, specs) = workload_machine();
        let mut w = Workload::new(DmaAgent::new(DEV_A), specs, seed);
        let mut c = DmaChecker::new();
        for _ in 0..5 {
            w.step(&mut m, &mut c);
        }
        let mut raw = vec![0u8; 0x3000];
        m.mem().read_raw(PhysAddr(0x20_0000), &mut raw).unwrap();
        (raw, c.stats())
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1).0, run(2).0);

    // Retarget one RW page behind the workload's back: the writes land elsewhere.
    let (mut m, specs) = workload_machine();
    map(&mut m, TABLE_A, 1, 0x2f_0000, PTE_R | PTE_W);
    map(&mut m, TABLE_A, 0, 0x2f_0000, PTE_R | PTE_W);
    map(&mut m, TABLE_A, 2, 0x2f_0000, PTE_R | PTE_W);
    let mut w = Workload::new(DmaAgent::new(DEV_A), specs, 3);
    let mut c = DmaChecker::new();
    let mut clean = true;
    for _ in 0..5 {
        clean &= w.step(&mut m, &mut c);
    }
    assert!(!clean);
    assert!(c
        .mismatches()
        .iter()
        .any(|x| matches!(x, Mismatch::WrongBytes { .. } | Mismatch::Unreadable { .. })));
}
