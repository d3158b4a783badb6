//! The whole loop on replayed frames with the real demo model, a fake clock and a recording pin:
//! exact verdicts and the exact reject-pulse sequence, including a corrupt frame and a late result.

mod common;

use std::time::Duration;

use anovit::actuation::{Edge, Polarity, RecordingPin, RejectLine, StatusLine};
use anovit::capture::{CaptureError, Frame, FrameSource, ReplaySource, SourceStats, SyntheticSource};
use anovit::clock::{Clock, FakeClock};
use anovit::decision::{AlarmPolicy, Decider, Fault, Verdict};
use anovit::ejector::{EjectorCounters, PartTracker, Resolution, Span};
use anovit::model::{InferError, Model};
use anovit::pipeline::{AlarmOutput, Engine, Inspector, Outputs};
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::synth::{Defect, PartSpec, SynthConveyor};
use common::*;

const MS: Duration = Duration::from_millis(1);
const STEP: Duration = Duration::from_millis(10);
const PULSE: Duration = Duration::from_millis(2);
const DEADLINE: Duration = Duration::from_millis(500);

/// The real model, but the fake clock jumps past the deadline while frame `late` is inferred.
struct SlowOn {
    model: Model,
    clock: FakeClock,
    late: usize,
    calls: usize,
}

impl Engine for SlowOn {
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        if self.calls == self.late {
            self.clock.advance(DEADLINE + MS);
        }
        self.calls += 1;
        self.model.infer(input)
    }
}

#[test]
fn verdicts_and_pulses_follow_the_frames() {
    let bundle = demo_bundle();
    let m = &bundle.manifest;
    let dir = tempfile::tempdir().unwrap();
    // Unseen parts (the demo model was trained on seed 7).
    let g = SynthConveyor::new(99, 256, 256, 0.0);
    let mut expected_labels = Vec::new();
    for (k, d) in
        [None, Some(Defect::Scratch), None, Some(Defect::Hole), Some(Defect::Stain), None, Some(Defect::Missing), None]
            .into_iter()
            .enumerate()
    {
        let folder = d.map_or("good", |d| d.name());
        let rgb = synth_frame(&g, PartSpec { index: k as u64, defect: d });
        save_png(&dir.path().join(folder).join(format!("{k:02}.png")), &rgb, 256, 256);
        expected_labels.push(folder);
    }
    // A frame whose header is fine but whose data is cut short: fails at capture, not at start.
    let good_png = std::fs::read(dir.path().join("good/00.png")).unwrap();
    std::fs::write(dir.path().join("good/99_truncated.png"), &good_png[..good_png.len() / 2]).unwrap();

    let source = ReplaySource::open(dir.path(), false).unwrap();
    assert_eq!(source.len(), 9);
    let clock = FakeClock::new();
    let line = RejectLine::new(RecordingPin::<_, 64>::new(clock.clone()), Polarity::ActiveHigh, PULSE).unwrap();
    let engine = SlowOn { model: Model::load(bundle).unwrap(), clock: clock.clone(), late: 6, calls: 0 };
    let mut insp = Inspector::new(
        source,
        Preprocessor::new(&m.input),
        engine,
        Scorer::new(m.input.width(), m.input.height(), &m.scoring),
        Decider::new(m.threshold.value, DEADLINE),
        line,
        clock.clone(),
        Outputs::default(),
    );

    let mut outcomes = Vec::new();
    let mut step_times = Vec::new();
    loop {
        clock.advance(STEP);
        step_times.push(clock.now());
        match insp.step() {
            Some(o) => outcomes.push(o),
            None => break,
        }
    }
    assert_eq!(outcomes.len(), 9, "one verdict per frame");
    // Replay order: sub-folders by name, files by name.
    let labels: Vec<&str> = outcomes.iter().map(|o| o.meta.as_ref().map_or("-", |m| m.label.as_str())).collect();
    assert_eq!(labels, ["good", "good", "good", "good", "-", "hole", "missing", "scratch", "stain"]);
    let verdicts: Vec<Verdict> = outcomes.iter().map(|o| o.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Fault(Fault::Capture(CaptureError::Corrupt)),
            Verdict::Defect,
            Verdict::Defect,
            Verdict::Fault(Fault::Late),
            Verdict::Defect,
        ],
        "scores: {:?}, threshold {}",
        outcomes.iter().map(|o| o.score).collect::<Vec<_>>(),
        m.threshold.value
    );
    // The late frame had a score, and it was below nothing: lateness alone rejects it.
    assert!(outcomes[7].score.is_some());

    // Pulses: rising when the verdict is reached, falling at the next poll after the width.
    let mut want = vec![Edge { at: Duration::ZERO, high: false }];
    for (i, o) in outcomes.iter().enumerate() {
        if o.verdict.is_reject() {
            want.push(Edge { at: o.decided_at, high: true });
            want.push(Edge { at: step_times[i + 1], high: false });
        }
    }
    let report = insp.finish();
    let pin = report.pin.unwrap();
    let edges: Vec<Edge> = pin.edges().copied().collect();
    assert_eq!(edges, want);
    let c = report.counters;
    assert_eq!((c.frames, c.passed, c.defects, c.faults, c.pulses), (9, 4, 3, 2, 5));
    assert_eq!((c.capture_errors, c.late), (1, 1));
    assert_eq!(pin.is_high(), Some(false), "line left idle");
}

/// Synthetic frames, with capture failures on chosen steps; sequence gaps reported as drops.
struct Scripted {
    inner: SyntheticSource,
    script: Vec<Option<CaptureError>>,
    at: usize,
}

impl FrameSource for Scripted {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        let Some(step) = self.script.get(self.at).copied() else { return Ok(None) };
        self.at += 1;
        match step {
            Some(e) => Err(e),
            None => self.inner.next_frame(now),
        }
    }

    fn max_size(&self) -> (usize, usize) {
        self.inner.max_size()
    }

    fn stats(&self) -> SourceStats {
        SourceStats { dropped: 3 * self.at as u64, reopened: 1, ..SourceStats::default() }
    }
}

/// A perfect reconstruction: every frame that reaches the model passes.
struct Echo(Vec<f32>);

impl Engine for Echo {
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        self.0.clear();
        self.0.extend_from_slice(input);
        Ok(&self.0)
    }
}

type EchoInspector<S> = Inspector<S, Echo, RecordingPin<FakeClock, 64>, FakeClock>;

/// The demo bundle's loop around a perfect reconstruction.
fn echo_inspector<S: FrameSource>(
    source: S,
    line: RejectLine<RecordingPin<FakeClock, 64>>,
    clock: &FakeClock,
    outputs: Outputs,
) -> EchoInspector<S> {
    let m = &demo_bundle().manifest;
    Inspector::new(
        source,
        Preprocessor::new(&m.input),
        Echo(Vec::new()),
        Scorer::new(m.input.width(), m.input.height(), &m.scoring),
        Decider::new(m.threshold.value, DEADLINE),
        line,
        clock.clone(),
        outputs,
    )
}

#[test]
fn health_line_follows_the_camera_and_faults_reject() {
    let (t, d, c) = (Some(CaptureError::Timeout), Some(CaptureError::Disconnected), Some(CaptureError::Corrupt));
    let script = vec![None, None, t, t, None, c, d, d, None];
    let source = Scripted { inner: SyntheticSource::new(SynthConveyor::new(3, 256, 256, 0.0), 0, None), script, at: 0 };
    let clock = FakeClock::new();
    let line = RejectLine::new(RecordingPin::<_, 64>::new(clock.clone()), Polarity::ActiveHigh, PULSE).unwrap();
    let health = StatusLine::new(Box::new(RecordingPin::<_, 64>::new(clock.clone())), true).unwrap();
    let alarm = AlarmOutput {
        line: StatusLine::new(Box::new(RecordingPin::<_, 64>::new(clock.clone())), false).unwrap(),
        policy: AlarmPolicy::new(2, 1),
    };
    let outputs = Outputs { health: Some(health), alarm: Some(alarm), ..Outputs::default() };
    let mut insp = echo_inspector(source, line, &clock, outputs);
    let mut states = Vec::new();
    let mut alarms = Vec::new();
    let mut verdicts = Vec::new();
    while let Some(o) = insp.step() {
        clock.advance(STEP);
        states.push(insp.health().and_then(StatusLine::is_on).unwrap());
        alarms.push(insp.alarm().and_then(StatusLine::is_on).unwrap());
        verdicts.push(o.verdict.label());
    }
    // Two faults in a row raise the alarm, one judged part clears it.
    assert_eq!(alarms, [false, false, false, true, false, false, true, true, false]);
    // A corrupt frame still shows a live camera; timeouts and a lost device do not.
    assert_eq!(states, [true, true, false, false, true, true, false, false, true]);
    assert_eq!(verdicts, ["OK", "OK", "FAULT", "FAULT", "OK", "FAULT", "FAULT", "FAULT", "OK"]);
    assert_eq!(insp.health().unwrap().changes(), 5, "off->on, then down and up twice");
    let report = insp.finish();
    let c = report.counters;
    assert_eq!((c.health_drops, c.capture_errors, c.pulses, c.alarms), (2, 5, 5, 2));
    assert_eq!((c.dropped, c.camera_reopened), (27, 1), "the source's own counts reach the counters");
}

/// A tracker that remembers what the loop told it and has room for `room` parts.
#[derive(Default)]
struct Log {
    admitted: Vec<(u64, Span)>,
    resolved: Vec<(u64, bool)>,
    finished: u32,
}

struct FakeTracker {
    log: std::sync::Arc<std::sync::Mutex<Log>>,
    room: usize,
}

impl PartTracker for FakeTracker {
    fn admit(&self, part: u64, seen: Span, _now: Duration) -> bool {
        let mut l = self.log.lock().unwrap();
        l.admitted.push((part, seen));
        l.admitted.len() <= self.room
    }
    fn resolve(&self, part: u64, reject: bool) -> Resolution {
        self.log.lock().unwrap().resolved.push((part, reject));
        Resolution::InTime
    }
    fn counters(&self) -> EjectorCounters {
        let l = self.log.lock().unwrap();
        EjectorCounters { pulses: l.resolved.iter().filter(|r| r.1).count() as u64, ..EjectorCounters::default() }
    }
    fn finish(&mut self) {
        self.log.lock().unwrap().finished += 1;
    }
}

#[test]
fn with_an_ejector_parts_are_admitted_at_capture_resolved_by_verdict_and_overflow_alarms() {
    let t = Some(CaptureError::Timeout);
    let source = Scripted {
        inner: SyntheticSource::new(SynthConveyor::new(3, 256, 256, 0.0), 0, None),
        script: vec![None, t, None, None],
        at: 0,
    };
    let clock = FakeClock::new();
    let line = RejectLine::new(RecordingPin::<_, 64>::new(clock.clone()), Polarity::ActiveHigh, PULSE).unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Log::default()));
    let alarm = AlarmOutput {
        line: StatusLine::new(Box::new(RecordingPin::<_, 64>::new(clock.clone())), false).unwrap(),
        policy: AlarmPolicy::new(3, 100),
    };
    let tracker = FakeTracker { log: log.clone(), room: 3 };
    let outputs = Outputs { alarm: Some(alarm), ejector: Some(Box::new(tracker)), ..Outputs::default() };
    let mut insp = echo_inspector(source, line, &clock, outputs);
    let mut alarms = Vec::new();
    let mut verdicts = Vec::new();
    while let Some(o) = insp.step() {
        clock.advance(STEP);
        alarms.push(insp.alarm().and_then(StatusLine::is_on).unwrap());
        verdicts.push(o.verdict.is_reject());
    }
    assert_eq!(insp.line().pin().changes(), 1, "the loop's own line only went idle: the tracker owns the pulses");
    let report = insp.finish();
    let l = log.lock().unwrap();
    let parts: Vec<u64> = l.admitted.iter().map(|a| a.0).collect();
    assert_eq!(parts, [0, 1, 2, 3], "every part admitted, the faulty capture too");
    let spans: Vec<Span> = l.admitted.iter().map(|a| a.1).collect();
    assert!(spans.iter().all(|s| s.from <= s.to));
    assert!(spans.windows(2).all(|w| w[0].to < w[1].to), "at their capture times");
    assert_eq!(spans[0].from, spans[0].to, "a frame is one instant");
    assert!(
        spans[1].from == spans[0].to && spans[1].to > spans[1].from,
        "the failed capture stands for the belt since the last frame: {spans:?}"
    );
    assert_eq!(spans[2].from, spans[2].to);
    let resolved: Vec<bool> = l.resolved.iter().map(|r| r.1).collect();
    assert_eq!(resolved, verdicts, "resolved by their verdicts");
    assert_eq!(resolved, [false, true, false, false]);
    assert_eq!(alarms, [false, false, false, true], "the fourth part found no room: alarm at once");
    assert_eq!(l.finished, 1, "the tracker serves the parts in flight at the end");
    assert_eq!((report.counters.pulses, report.counters.alarms), (1, 1));
}
