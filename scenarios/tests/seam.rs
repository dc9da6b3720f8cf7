//! The runner reaches the IOMMU only through `scenarios::arch::Arch`: a wrapper arch
//! that records every call and delegates to VT-d sees each step, in the order of a live
//! update, and the report through the wrapper is the report of `run`. Wrappers that
//! alter what `verify` or `finish` return show that the runner turns refusals,
//! unverified record runs and kept pages into problems.

use emulator::model::IommuModel;
use iommu_core::kho::KhoOut;
use iommu_core::mem::PhysMem;
use iommu_core::pageset::PageSet;
use iommu_core::pgtable::Perms;
use iommu_core::{DomainId, Iova, PageSize, PhysAddr, RequesterId};
use scenarios::arch::vtd::{Mode, Vtd};
use scenarios::arch::{Adopted, Arch, Ctx, DomainWalk, PoolNeeds, UnitLimits, Verified};
use scenarios::config::{ConfigError, Scenario};
use scenarios::report::FinishCounts;
use scenarios::{run, run_on, RunOptions};
use std::cell::RefCell;

/// What to change in the VT-d answers.
#[derive(Clone, Copy, Default)]
struct Tamper {
    /// `verify` also reports a record run it could not establish.
    unverified_run: bool,
    /// `verify` also reports a refused domain.
    refused_domain: bool,
    /// `finish` reports this many kept pages.
    pages_kept: u64,
}

/// VT-d, with every call recorded by name (steps that touch the unit) and, optionally,
/// some answers altered.
#[derive(Default)]
struct Recording {
    log: RefCell<Vec<&'static str>>,
    tamper: Tamper,
}

impl Recording {
    fn note(&self, step: &'static str) {
        self.log.borrow_mut().push(step);
    }
}

impl Arch for Recording {
    type Mode = Mode;
    type Unit = <Vtd as Arch>::Unit;
    type Pool = <Vtd as Arch>::Pool;

    fn name(&self) -> &'static str {
        Vtd.name()
    }
    fn page_sizes(&self) -> &'static [PageSize] {
        Vtd.page_sizes()
    }
    fn window_align(&self) -> u64 {
        Vtd.window_align()
    }
    fn iova_bits(&self) -> u32 {
        Vtd.iova_bits()
    }
    fn unit_limits(&self, mode: Mode, base: PhysAddr) -> Result<UnitLimits, ConfigError> {
        self.note("unit_limits");
        Vtd.unit_limits(mode, base)
    }
    fn pool_needs(&self, s: &Scenario, mode: Mode) -> Option<PoolNeeds> {
        self.note("pool_needs");
        Vtd.pool_needs(s, mode)
    }
    fn model(&self, mode: Mode, base: PhysAddr) -> Result<Box<dyn IommuModel>, String> {
        self.note("model");
        Vtd.model(mode, base)
    }
    fn pool(&self, base: PhysAddr, bytes: u64) -> Self::Pool {
        self.note("pool");
        Vtd.pool(base, bytes)
    }
    fn exclude(&self, pool: &mut Self::Pool, preserved: &PageSet) {
        self.note("exclude");
        Vtd.exclude(pool, preserved)
    }
    fn bring_up(&self, mode: Mode, cx: Ctx<'_, Self::Pool>) -> Result<Self::Unit, String> {
        self.note("bring_up");
        Vtd.bring_up(mode, cx)
    }
    fn create_domain(
        &self,
        unit: &mut Self::Unit,
        mode: Mode,
        cx: Ctx<'_, Self::Pool>,
    ) -> Result<DomainId, String> {
        self.note("create_domain");
        Vtd.create_domain(unit, mode, cx)
    }
    fn map(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
        did: DomainId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        ps: PageSize,
        perms: Perms,
    ) -> Result<(), String> {
        self.note("map");
        Vtd.map(unit, cx, did, iova, pa, len, ps, perms)
    }
    fn attach(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
        rid: RequesterId,
        did: DomainId,
    ) -> Result<(), String> {
        self.note("attach");
        Vtd.attach(unit, cx, rid, did)
    }
    fn walk_domain(
        &self,
        unit: &Self::Unit,
        mem: &dyn PhysMem,
        did: DomainId,
    ) -> Result<DomainWalk, String> {
        self.note("walk_domain");
        Vtd.walk_domain(unit, mem, did)
    }
    fn prepare(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
        kho: &mut KhoOut,
        domains: &[DomainId],
        devices: &[RequesterId],
    ) -> Result<u64, String> {
        self.note("prepare");
        Vtd.prepare(unit, cx, kho, domains, devices)
    }
    fn freeze(&self, unit: &mut Self::Unit, cx: Ctx<'_, Self::Pool>) -> Result<u64, String> {
        self.note("freeze");
        Vtd.freeze(unit, cx)
    }
    fn adopt(
        &self,
        mode: Mode,
        cx: Ctx<'_, Self::Pool>,
        blob: PhysAddr,
        preserved: PageSet,
    ) -> Result<(Self::Unit, Adopted), String> {
        self.note("adopt");
        Vtd.adopt(mode, cx, blob, preserved)
    }
    fn verify(&self, unit: &mut Self::Unit, cx: Ctx<'_, Self::Pool>) -> Result<Verified, String> {
        self.note("verify");
        let mut v = Vtd.verify(unit, cx)?;
        if self.tamper.unverified_run {
            v.unverified_runs
                .push("record run 0x7000000 (2 pages) holds pages that are not tables".into());
        }
        if self.tamper.refused_domain {
            v.refused
                .push((DomainId(2), "a leaf maps a table page".into()));
        }
        Ok(v)
    }
    fn finish(
        &self,
        unit: &mut Self::Unit,
        cx: Ctx<'_, Self::Pool>,
    ) -> Result<FinishCounts, String> {
        self.note("finish");
        let mut f = Vtd.finish(unit, cx)?;
        f.pages_kept += self.tamper.pages_kept;
        Ok(f)
    }
}

/// Two devices in two domains, 4K and 2M pages: small enough to list every call.
fn small() -> Scenario {
    let mut s = Scenario::default_scenario();
    s.devices.truncate(2);
    s.domains = 2;
    s.page_sizes = vec![PageSize::SIZE_4K, PageSize::SIZE_2M];
    s.dma_steps = 2;
    s
}

/// Every step of a legacy-mode run goes through the arch, in the order of a live
/// update, and verify comes after adopt and before finish. A runner that called the
/// VT-d driver directly, skipped a step or reordered one fails here.
#[test]
fn the_runner_reaches_every_step_through_the_arch_in_order() {
    let s = small();
    let arch = Recording::default();
    let r = run_on(&arch, &s, &[Mode::Legacy], &RunOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    let mut want = vec!["unit_limits", "pool_needs", "model", "pool", "bring_up"];
    // Three domains (two preserved, one for the unpreserved device), two page sizes.
    for _ in 0..3 {
        want.extend(["create_domain", "map", "map"]);
    }
    want.extend(["attach"; 3]);
    want.extend(["walk_domain"; 2]);
    want.extend(["prepare", "freeze", "pool", "exclude", "adopt"]);
    want.extend(["walk_domain"; 2]);
    want.extend(["verify", "finish", "map"]);
    assert_eq!(*arch.log.borrow(), want);
}

/// Through the recording wrapper the report is the one `run` gives for VT-d, in every
/// mode: the wrapper adds nothing and the runner has no second path.
#[test]
fn the_report_through_a_wrapper_arch_is_the_vtd_report() {
    let mut s = small();
    s.modes = Mode::ALL.to_vec();
    let direct = run(&s, &RunOptions::default()).unwrap();
    let arch = Recording::default();
    let wrapped = run_on(&arch, &s, &Mode::ALL, &RunOptions::default()).unwrap();
    assert_eq!(wrapped, direct);
    assert_eq!(wrapped.to_string(), direct.to_string());
    assert_eq!(
        arch.log.borrow().iter().filter(|&&c| c == "verify").count(),
        3
    );
}

/// On the clean path verify walks every preserved domain and checks leaf targets, and
/// finish keeps no page: the counts are in the report (the text is unchanged).
#[test]
fn verify_runs_after_adopt_and_finish_keeps_no_page_on_the_clean_path() {
    let r = run(&small(), &RunOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
    for m in &r.modes {
        assert_eq!(m.verify.domains, 2, "{}", m.mode);
        assert!(m.verify.tables > 0, "{}", m.mode);
        assert!(
            m.verify.leaf_targets_checked >= 4,
            "{}: {:?}",
            m.mode,
            m.verify
        );
        assert_eq!(m.finish.pages_kept, 0, "{}", m.mode);
    }
}

/// A record run verification could not establish, a domain it refused, or a page
/// finish kept is a problem: the run fails with it named.
#[test]
fn unverified_runs_refused_domains_and_kept_pages_fail_the_run() {
    for (tamper, says) in [
        (
            Tamper {
                unverified_run: true,
                ..Tamper::default()
            },
            "verify: record run 0x7000000",
        ),
        (
            Tamper {
                refused_domain: true,
                ..Tamper::default()
            },
            "verify refused domain 0x0002: a leaf maps a table page",
        ),
        (
            Tamper {
                pages_kept: 3,
                ..Tamper::default()
            },
            "finish kept 3 pages",
        ),
    ] {
        let arch = Recording {
            tamper,
            ..Recording::default()
        };
        let r = run_on(&arch, &small(), &[Mode::Legacy], &RunOptions::default()).unwrap();
        assert!(!r.is_clean(), "{r}");
        let text = r.to_string();
        assert!(text.contains(&format!("PROBLEM: {says}")), "{text}");
        assert!(text.trim_end().ends_with("FAILED"), "{text}");
    }
}
