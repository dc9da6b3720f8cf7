//! Updating an STE or a CD the SMMU may be reading, by the used-bits rule
//! (`shared/reference/smmuv3.md` §11; Linux `arm_smmu_write_entry`,
//! `arm_smmu_get_ste_used`, `arm_smmu_get_cd_used`).
//!
//! The SMMU reads each qword with single-copy atomicity but an entry as several reads,
//! so one step may change the *used* bits of at most one qword. [`plan`] turns the
//! current and the target entry into steps; after each step that changed memory the
//! caller makes the SMMU drop what it cached (CFGI_STE or CFGI_CD, then CMD_SYNC).

use alloc::vec::Vec;

use crate::hw::ste::{Config, S1Dss};

/// How an entry went from its old to its new value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateKind {
    /// Nothing changed.
    Unchanged,
    /// Only bits the SMMU ignores changed: one step.
    Plain,
    /// The used bits of one qword changed: three steps, never an invalid entry.
    Hitless,
    /// The used bits of several qwords changed: V = 0 first (traffic aborts with
    /// C_BAD_STE / C_BAD_CD for the window), then the other qwords, then qword 0.
    Breaking,
}

/// Bits of `bits` in qword `q` from bit `hi` down to `lo` of the whole entry.
const fn span(hi: u32, lo: u32) -> u64 {
    let (h, l) = (hi % 64, lo % 64);
    (u64::MAX >> (63 - h)) & !((1u64 << l) - 1)
}

/// The STE bits the SMMU uses given the STE's current value (reference §11, Linux
/// `arm_smmu_get_ste_used`).
pub fn ste_used(q: &[u64; 8]) -> [u64; 8] {
    let mut u = [0u64; 8];
    u[0] = 1; // V
    if q[0] & 1 == 0 {
        return u;
    }
    u[0] |= span(3, 1); // Config
    let cfg = Config::from_bits((q[0] >> 1) & 7);
    if cfg == Config::Bypass {
        u[1] |= span(109, 108); // SHCFG
    }
    if cfg.s1() {
        // S1Fmt, S1ContextPtr 51:6, S1CDMax.
        u[0] |= span(5, 4) | span(51, 6) | span(63, 59);
        // S1DSS, S1CIR, S1COR, S1CSH, S1STALLD, EATS, STRW.
        u[1] |= span(71, 64) | span(91, 91) | span(95, 92);
        u[2] |= span(143, 128); // S2VMID
        if (q[1] & 3) == S1Dss::Bypass.bits() {
            u[1] |= span(109, 108);
        }
    }
    if cfg.s2() {
        u[1] |= span(93, 92) | span(109, 108); // EATS, SHCFG
                                               // S2VMID, S2T0SZ .. S2PS, S2AA64, S2ENDI, S2AFFD, S2PTW, S2HD, S2HA, S2S, S2R.
        u[2] |= span(143, 128) | span(186, 160);
        u[3] |= span(243, 196); // S2TTB 51:4
    }
    u
}

/// The CD bits the SMMU uses given the CD's current value: only V when V = 0, every
/// bit when V = 1 except the TTB0 walk fields when EPD0 = 1 (reference §11, Linux
/// `arm_smmu_get_cd_used`).
pub fn cd_used(q: &[u64; 8]) -> [u64; 8] {
    let v = 1u64 << 31;
    if q[0] & v == 0 {
        return [v, 0, 0, 0, 0, 0, 0, 0];
    }
    let mut u = [u64::MAX; 8];
    if q[0] & (1 << 14) != 0 {
        // EPD0: T0SZ, TG0, IR0, OR0, SH0 and TTB0 are ignored.
        u[0] &= !span(13, 0);
        u[1] = 0;
    }
    u
}

/// The steps that take an entry from `cur` to `target`: each step is the qwords to
/// write (index, value), in order, followed by an invalidation and a CMD_SYNC. Steps
/// that would write nothing are left out.
pub fn plan<const N: usize>(
    cur: [u64; N],
    target: [u64; N],
    used: fn(&[u64; N]) -> [u64; N],
) -> (UpdateKind, Vec<Vec<(usize, u64)>>) {
    let cur_used = used(&cur);
    let target_used = used(&target);
    let mut unused_update = [0u64; N];
    let mut diff = Vec::new();
    for i in 0..N {
        unused_update[i] = (cur[i] & cur_used[i]) | (target[i] & !cur_used[i]);
        if unused_update[i] & target_used[i] != target[i] & target_used[i] {
            diff.push(i);
        }
    }
    let mut now = cur;
    let mut steps = Vec::new();
    let mut step = |now: &mut [u64; N], want: &[u64; N], range: core::ops::Range<usize>| {
        let w: Vec<(usize, u64)> = range
            .filter(|&i| now[i] != want[i])
            .map(|i| (i, want[i]))
            .collect();
        for &(i, v) in &w {
            now[i] = v;
        }
        if !w.is_empty() {
            steps.push(w);
        }
    };
    let kind = match diff.len() {
        0 => {
            step(&mut now, &target, 0..N);
            UpdateKind::Plain
        }
        1 => {
            let c = diff[0];
            step(&mut now, &unused_update, 0..N);
            step(&mut now, &target, c..c + 1);
            step(&mut now, &target, 0..N);
            UpdateKind::Hitless
        }
        _ => {
            let mut off = unused_update;
            off[0] = 0;
            step(&mut now, &off, 0..1);
            step(&mut now, &target, 1..N);
            step(&mut now, &target, 0..1);
            UpdateKind::Breaking
        }
    };
    if steps.is_empty() {
        return (UpdateKind::Unchanged, steps);
    }
    (kind, steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::ste::Ste;

    fn s1_ste(ctx: u64) -> Ste {
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(Config::S1Trans);
        s.set_s1_context_ptr(ctx);
        s.set_s1dss(S1Dss::Ssid0);
        s.set_s1cir(1);
        s
    }

    fn s2_ste(ttb: u64, vmid: u16) -> Ste {
        let mut s = Ste::default();
        s.set_v(true);
        s.set_config(Config::S2Trans);
        s.set_s2vmid(vmid as u64);
        s.set_s2t0sz(16);
        s.set_s2aa64(true);
        s.set_s2ttb(ttb);
        s
    }

    /// Used-bit masks at the positions of reference §5 (Linux `STRTAB_STE_0_CFG`
    /// GENMASK(3, 1), `STRTAB_STE_0_S1CTXPTR_MASK` GENMASK(51, 6), `STRTAB_STE_2_S2VMID`
    /// GENMASK(15, 0), `STRTAB_STE_3_S2TTB_MASK` GENMASK(51, 4)).
    #[test]
    fn ste_used_bits_known_answers() {
        assert_eq!(ste_used(&Ste::default().qwords()), [1, 0, 0, 0, 0, 0, 0, 0]);
        let u = ste_used(&s1_ste(0x1000).qwords());
        assert_eq!(u[0], 0xf80f_ffff_ffff_ffff);
        assert_eq!(u[2], 0xffff);
        assert_eq!(u[3], 0);
        let u = ste_used(&s2_ste(0x2000, 1).qwords());
        assert_eq!(u[0], 0xf);
        assert_eq!(u[3], 0x000f_ffff_ffff_fff0);
        assert_eq!(u[2] & 0xffff, 0xffff);
    }

    /// Reference §11 examples: a stage-1 CD table pointer change alone is hitless, a
    /// change from stage 1 to stage 2 is breaking, a new STE over V = 0 writes the
    /// other qwords then qword 0, abort from stage 2 is hitless.
    #[test]
    fn update_kinds() {
        let a = s1_ste(0x1000).qwords();
        let b = s1_ste(0x2000).qwords();
        let (k, steps) = plan(a, b, ste_used);
        assert_eq!(k, UpdateKind::Hitless);
        assert_eq!(steps.len(), 1, "only qword 0 differs: one step");
        let (k, _) = plan(a, s2_ste(0x3000, 2).qwords(), ste_used);
        assert_eq!(k, UpdateKind::Breaking);
        let (k, steps) = plan([0; 8], a, ste_used);
        assert_eq!(k, UpdateKind::Hitless);
        assert_eq!(steps.last().map(|s| s[0].0), Some(0), "qword 0 last");
        let mut abort = Ste::default();
        abort.set_v(true);
        let (k, _) = plan(s2_ste(0x3000, 2).qwords(), abort.qwords(), ste_used);
        assert_eq!(k, UpdateKind::Hitless);
        assert_eq!(plan(a, a, ste_used).0, UpdateKind::Unchanged);
    }

    fn nested(ctx: u64, ttb: u64, vmid: u16) -> Ste {
        let mut s = s2_ste(ttb, vmid);
        let s1 = s1_ste(ctx);
        s.set_config(Config::Nested);
        s.set_s1_context_ptr(ctx);
        s.set_s1dss(S1Dss::Ssid0);
        s.set_s1cir(s1.s1cir());
        s
    }

    /// Whether `e` and `t` differ in the bits the SMMU uses reading `e`.
    fn differs_in_used(e: &[u64; 8], t: &[u64; 8]) -> bool {
        let u = ste_used(e);
        (0..8).any(|i| (e[i] ^ t[i]) & u[i] != 0)
    }

    /// Linux `arm-smmu-v3-test.c` `arm_smmu_v3_test_ste_expect_transition`, over every
    /// pair of a set of STEs: replaying the plan one qword store at a time, every entry
    /// the SMMU could fetch is, in its used bits, the old or the new entry, or (only in a
    /// breaking update) invalid; the CMD_SYNC count is the number of steps: at most 3
    /// for hitless, exactly 3 for breaking.
    #[test]
    fn every_transition_passes_only_through_old_new_or_invalid() {
        let mut abort = Ste::default();
        abort.set_v(true);
        let mut bypass = abort;
        bypass.set_config(Config::Bypass);
        let mut s1_bypass_dss = s1_ste(0x1000);
        s1_bypass_dss.set_s1dss(S1Dss::Bypass);
        let set = [
            Ste::default(),
            abort,
            bypass,
            s1_ste(0x1000),
            s1_ste(0x2000),
            s1_bypass_dss,
            s2_ste(0x3000, 1),
            s2_ste(0x4000, 2),
            nested(0x1000, 0x3000, 1),
            nested(0x5000, 0x3000, 1),
        ];
        for old in &set {
            for new in &set {
                let (o, n) = (old.qwords(), new.qwords());
                let (kind, steps) = plan(o, n, ste_used);
                let mut cur = o;
                let mut went_invalid = false;
                for step in &steps {
                    for &(i, v) in step {
                        cur[i] = v;
                        let ok = !differs_in_used(&cur, &o) || !differs_in_used(&cur, &n);
                        let invalid = cur[0] & 1 == 0;
                        went_invalid |= invalid && !ok;
                        assert!(
                            ok || (invalid && kind == UpdateKind::Breaking),
                            "{old:?} -> {new:?}: torn {cur:x?} ({kind:?})"
                        );
                    }
                }
                assert_eq!(cur, n, "the plan ends at the target");
                match kind {
                    UpdateKind::Unchanged => assert_eq!(o, n),
                    UpdateKind::Plain => assert_eq!(steps.len(), 1),
                    UpdateKind::Hitless => assert!(steps.len() <= 3 && !went_invalid),
                    UpdateKind::Breaking => assert_eq!(steps.len(), 3),
                }
            }
        }
        // Named cases (Linux's test expectations): S1 -> S2 and S2 -> S1 break;
        // abort <-> bypass and S1 CD-table switches are hitless.
        let k = |a: &Ste, b: &Ste| plan(a.qwords(), b.qwords(), ste_used).0;
        assert_eq!(k(&set[3], &set[6]), UpdateKind::Breaking);
        assert_eq!(k(&set[6], &set[3]), UpdateKind::Breaking);
        assert_eq!(k(&abort, &bypass), UpdateKind::Hitless);
        assert_eq!(k(&set[3], &set[4]), UpdateKind::Hitless);
        assert_eq!(k(&set[6], &abort), UpdateKind::Hitless);
    }
}
