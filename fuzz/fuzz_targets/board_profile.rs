//! Board profiles (`board/*.toml`): `BoardProfile::parse` must turn any text into a profile or
//! an error naming the key. A profile that validates is then used the way `anovit run` uses it
//! (reject pulse, deadline, alarm policy, display, camera settings, and the ejector placement
//! driven over a long run), so that nothing the validation lets through can panic later.
#![no_main]

use std::time::Duration;

use anovit::actuation::{RecordingPin, RejectLine};
use anovit::board::{BoardProfile, DisplayKind};
use anovit::capture::CaptureError;
use anovit::clock::FakeClock;
use anovit::decision::{AlarmPolicy, Decider, Fault, Verdict};
use anovit::display::MemoryFramebuffer;
use anovit::ejector::{Base, Ejector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `BoardProfile::load` reads the file with `read_to_string`: only UTF-8 text gets here.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(p) = BoardProfile::parse(text) else { return };
    let (pulse, deadline) = (p.pulse(), p.deadline());
    #[cfg(feature = "v4l")]
    let _ = p.v4l2_config();
    let _ = Duration::from_secs(p.telemetry.summary_every_s);
    if let Some(t) = &p.trigger {
        let _ = Duration::from_millis(t.delay_ms);
    }
    if let Some(a) = &p.alarm {
        let mut policy = AlarmPolicy::new(a.raise_after, a.clear_after);
        for _ in 0..=a.raise_after.min(64) {
            policy.record(Verdict::Fault(Fault::Capture(CaptureError::Timeout)));
        }
    }
    let decider = Decider::new(0.5, deadline);
    let _ = decider.decide(Ok(0.1), Duration::from_secs(3600), Duration::from_secs(3600) + deadline);
    if p.display.kind == DisplayKind::Memory {
        let fb = MemoryFramebuffer::new(p.display.width, p.display.height);
        assert_eq!(fb.rgb().len(), 3 * p.display.width as usize * p.display.height as usize);
    }
    let Some(placement) = p.placement() else { return };
    // The ejector as `anovit run` drives it: each part admitted at the belt position of its
    // capture (a failed capture: the span since the last frame), its verdict recorded, the
    // belt served as it moves on, then run out at stop. A station runs for months: captures
    // up to 100 days in.
    let Ok(line) = RejectLine::new(RecordingPin::<_, 16>::new(FakeClock::new()), p.reject.polarity, pulse);
    let mut ejector = Ejector::new(placement, line);
    // Belt positions: microseconds of the loop's clock, or the edges of an encoder giving 10000
    // edges per second (one every 100 us).
    let us_per_pos = match placement.base {
        Base::Time => 1,
        Base::Encoder => 100,
    };
    let time_of = |pos: u64| Duration::from_micros(pos.saturating_mul(us_per_pos));
    let mut pos = 0;
    for (part, us) in [0u64, 1_000, 1_000_000, 3_600_000_000, 8_640_000_000_000].into_iter().enumerate() {
        let (part, last) = (part as u64, pos);
        pos = us / us_per_pos;
        ejector.service(pos, time_of(pos));
        if part % 3 == 2 {
            ejector.admit_span(part, last, pos, time_of(pos));
        } else {
            ejector.admit(part, pos, time_of(pos));
        }
        ejector.resolve(part, part % 2 == 0);
    }
    // Stop: the belt runs on until every part has passed the ejector.
    ejector.stop_watching();
    while let Some(due) = ejector.service(pos, time_of(pos)) {
        assert!(due > pos, "due at {due}, not served at {pos}");
        pos = due;
    }
});
