//! The whole loop on replayed frames with the real demo model, a fake clock and a recording pin:
//! exact verdicts and the exact reject-pulse sequence, including a corrupt frame and a late result.

mod common;

use std::time::Duration;

use anovit::actuation::{Edge, Polarity, RecordingPin, RejectLine, StatusLine};
use anovit::capture::{CaptureError, Frame, FrameSource, ReplaySource, SourceStats, SyntheticSource};
use anovit::clock::{Clock, FakeClock};
use anovit::decision::{AlarmPolicy, Decider, Fault, Verdict};
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

#[test]
fn health_line_follows_the_camera_and_faults_reject() {
    let m = &demo_bundle().manifest;
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
    let mut insp = Inspector::new(
        source,
        Preprocessor::new(&m.input),
        Echo(Vec::new()),
        Scorer::new(m.input.width(), m.input.height(), &m.scoring),
        Decider::new(m.threshold.value, DEADLINE),
        line,
        clock.clone(),
        outputs,
    );
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
