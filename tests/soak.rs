//! The soak harness on short runs: every invariant holds with every fault injected, and a
//! station whose ejector is set up wrong is caught.

mod common;

use std::time::Duration;

use anovit::soak::{self, FaultKind, SoakConfig};

#[test]
fn a_soak_with_every_fault_injected_keeps_every_invariant() {
    // Another test shares the process: its memory is not this soak's (the CLI test checks it).
    let cfg = SoakConfig { parts: 4_000, fault_rate: 0.05, seed: 7, check_memory: false, ..SoakConfig::default() };
    let r = soak::run(&cfg, &common::demo_bundle().manifest).unwrap();
    assert!(r.passed(), "broken invariants: {:#?}", r.violations);
    assert_eq!((r.parts, r.verdicts, r.counters.frames), (4_000, 4_000, 4_000), "one verdict per part");
    assert_eq!((r.escapes, r.unsafe_passes), (0, 0));
    assert!(r.defective > 300, "{} defective parts", r.defective);
    for (kind, i) in &r.injected {
        assert!(i.effective > 0, "{kind:?} never took effect: {i:?}");
        assert_eq!(i.counted, i.effective, "{kind:?}: every injected fault counted");
    }
    let late = r.injected.iter().find(|(k, _)| *k == FaultKind::LateInference).unwrap().1;
    assert!(r.ejector.late >= late.effective / 2, "late inferences reached the ejector late: {:?}", r.ejector);
    assert!(r.ejector.unseen > 0, "a loop stuck on a slow inference left belt unseen: {:?}", r.ejector);
    assert!(r.counters.alarms > 0 && r.counters.health_drops > 0, "stalls raise the alarm and drop health");
    assert!(r.pulse_edges > 0 && r.pulse_edges <= r.ejector.pulses);
    assert_eq!(r.rss_kib.len(), 10);
    let text = soak::render(&r, "anovit soak --parts 4000");
    assert!(text.contains("**PASSED**: 0 broken invariants"), "{text}");
}

#[test]
fn a_misaligned_ejector_lets_defective_parts_through_and_the_soak_says_so() {
    // The ejector thinks the belt takes 40 ms longer than it does: its 20 ms pulses come after
    // the parts have gone.
    let cfg = SoakConfig {
        parts: 600,
        fault_rate: 0.0,
        misalign: Duration::from_millis(40),
        check_memory: false,
        ..SoakConfig::default()
    };
    let r = soak::run(&cfg, &common::demo_bundle().manifest).unwrap();
    assert!(!r.passed());
    // Only where the late pulse of the part ahead overlaps does a defective part meet a pulse.
    assert!(r.escapes * 4 > r.defective * 3, "{} of {} defective parts escaped", r.escapes, r.defective);
    assert!(r.violations.iter().any(|v| v.contains("defective, not ejected")), "{:?}", r.violations);
    let faultless = SoakConfig { misalign: Duration::ZERO, ..cfg };
    let r = soak::run(&faultless, &common::demo_bundle().manifest).unwrap();
    assert!(r.passed(), "{:?}", r.violations);
    assert_eq!((r.counters.faults, r.collateral_ejects), (0, 0), "no faults, no span held");
    assert_eq!(r.pulse_edges, r.defective, "one pulse per defective part");
}
