//! The frame loop: capture -> preprocess -> model -> score -> decide -> actuate, display, log.
//!
//! Every buffer is allocated when the [`Inspector`] is built; a step allocates nothing in this
//! crate's code (the model boundary is measured separately, see `tests/alloc.rs`). A frame that
//! fails anywhere still gets exactly one verdict, the safe one, and is counted.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use embedded_hal::digital::OutputPin;

use crate::actuation::{RejectLine, StatusLine};
use crate::capture::{CaptureError, FrameSource};
use crate::clock::Clock;
use crate::decision::{AlarmPolicy, Decider, Fault, Verdict};
use crate::display::{draw_status, Heatmap, Layout, MemoryFramebuffer, Panel, Status};
use crate::ejector::{PartTracker, Span};
use crate::fleet::scene::Scene;
use crate::fleet::Outbox;
use crate::model::{InferError, Model};
use crate::preprocess::Preprocessor;
use crate::scoring::Scorer;
use crate::service::Notifier;
pub use crate::telemetry::Outcome;
use crate::telemetry::{write_event, Counters, Health, LatencyWindow, StageTimes};

/// Something that turns a model input into the output its bundle scores (a reconstruction, or
/// a learned map's logits): the tract model, or a wrapper around it in tests.
pub trait Engine {
    /// Runs one input (NCHW f32) and returns the scored output (`Manifest::scored_output`).
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError>;
}

impl Engine for Model {
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        Model::infer(self, input)
    }
}

/// Optional outputs of the loop.
pub struct Outputs {
    /// Status screen (drawn in memory).
    pub display: Option<MemoryFramebuffer>,
    /// Its design.
    pub layout: Layout,
    /// Where the drawn screen is shown (a framebuffer device, a panel).
    pub panel: Option<Box<dyn Panel>>,
    /// JSON-lines event log.
    pub events: Option<Box<dyn Write + Send>>,
    /// Time between periodic summaries in the log.
    pub summary_every: Duration,
    /// Health/ready line: on while frames arrive, off while the camera stalls or is gone.
    pub health: Option<StatusLine>,
    /// Running edge count of the belt encoder, when there is one.
    pub encoder: Option<Arc<AtomicU64>>,
    /// Alarm line: raised on repeated faults (the line should stop).
    pub alarm: Option<AlarmOutput>,
    /// systemd notifications (watchdog pings once per part).
    pub notifier: Option<Notifier>,
    /// Part tracking to the ejector (`[ejector]`): every part is admitted as a reject when it
    /// is captured and resolved by its verdict; the tracker owns the reject pulses. Without it,
    /// the reject line pulses at the verdict.
    pub ejector: Option<Box<dyn PartTracker>>,
    /// Messages for the plant (MQTT): part events, counters, alarms, reject thumbnails.
    pub outbox: Option<Arc<Outbox>>,
    /// What the set-up page shows, and the threshold it asks for.
    pub scene: Option<Arc<Scene>>,
}

/// How many parts the screen's late-results banner stays up after a late result.
const LATE_BANNER_PARTS: u64 = 100;

/// The alarm line and the rule that drives it.
pub struct AlarmOutput {
    /// The line.
    pub line: StatusLine,
    /// When it rises and clears.
    pub policy: AlarmPolicy,
}

impl Default for Outputs {
    fn default() -> Self {
        Self {
            display: None,
            layout: Layout::Colour,
            panel: None,
            events: None,
            summary_every: Duration::from_secs(5),
            health: None,
            encoder: None,
            alarm: None,
            notifier: None,
            ejector: None,
            outbox: None,
            scene: None,
        }
    }
}

/// The whole inspection loop with its state.
pub struct Inspector<S: FrameSource, E: Engine, P: OutputPin, C: Clock> {
    source: S,
    pre: Preprocessor,
    engine: E,
    scorer: Scorer,
    decider: Decider,
    line: RejectLine<P>,
    clock: C,
    out: Outputs,
    counters: Counters,
    latency: LatencyWindow,
    part: u64,
    last_summary: Duration,
    last_frame_at: Option<Duration>,
    frame_interval_s: f32,
    /// The last part rejected on its score, for the screen.
    heatmap: Option<Heatmap>,
    /// The camera delivered the last frame.
    camera_ok: bool,
    /// The last part with a late result.
    last_late: Option<u64>,
    /// Up to when the belt has been seen (last frame's exposure) or given up for lost (a failed
    /// capture's span): the next failed capture stands for the belt after it.
    seen_until: Option<Duration>,
    /// The set-up page took this part's frame (its map follows).
    scene_took_frame: bool,
}

impl<S: FrameSource, E: Engine, P: OutputPin, C: Clock> Inspector<S, E, P, C> {
    /// Wires the stages together. `pre` and `scorer` must match the engine's input size.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: S,
        pre: Preprocessor,
        engine: E,
        scorer: Scorer,
        decider: Decider,
        line: RejectLine<P>,
        clock: C,
        out: Outputs,
    ) -> Self {
        let last_summary = clock.now();
        let heatmap = out.display.as_ref().map(|_| Heatmap::new());
        Self {
            source,
            pre,
            engine,
            scorer,
            decider,
            line,
            clock,
            out,
            counters: Counters::default(),
            latency: LatencyWindow::default(),
            part: 0,
            last_summary,
            last_frame_at: None,
            frame_interval_s: 0.0,
            seen_until: None,
            scene_took_frame: false,
            heatmap,
            camera_ok: true,
            last_late: None,
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The reject line (tests read a recording pin through it).
    pub fn line(&self) -> &RejectLine<P> {
        &self.line
    }

    /// The status screen, when there is one.
    pub fn display(&self) -> Option<&MemoryFramebuffer> {
        self.out.display.as_ref()
    }

    /// Tells systemd (when run as a notify service) that the station is up.
    pub fn notify_ready(&self) {
        if let Some(n) = &self.out.notifier {
            n.ready();
        }
    }

    /// The alarm line, when there is one.
    pub fn alarm(&self) -> Option<&StatusLine> {
        self.out.alarm.as_ref().map(|a| &a.line)
    }

    /// The health line, when there is one.
    pub fn health(&self) -> Option<&StatusLine> {
        self.out.health.as_ref()
    }

    /// The anomaly map of the last scored frame.
    pub fn anomaly_map(&self) -> &[f32] {
        self.scorer.map()
    }

    /// Processes one part. `None` when the source has ended.
    pub fn step(&mut self) -> Option<Outcome> {
        let t0 = self.clock.now();
        self.poll_line(t0);
        if let Some(t) = self.out.scene.as_ref().and_then(|s| s.take_threshold()) {
            self.decider.set_threshold(t);
        }
        self.scene_took_frame = false;
        let mut times = StageTimes::default();
        let captured = self.source.next_frame(t0);
        let t1 = self.clock.now();
        times.capture = t1 - t0;
        // The part becomes a reject now, before anything can hang or fail on it. A failed
        // capture stands for all the belt no frame showed: since the last one, up to now.
        let seen = match &captured {
            Ok(Some(f)) => Span::at(f.meta.timestamp),
            _ => Span { from: self.seen_until.unwrap_or(t0).min(t1), to: t1 },
        };
        if !matches!(captured, Ok(None)) {
            self.seen_until = Some(seen.to);
        }
        let tracked = match (&captured, &self.out.ejector) {
            (Ok(None), _) | (_, None) => true,
            (_, Some(e)) => e.admit(self.part, seen, t1),
        };
        let camera_alive = match &captured {
            Ok(_) | Err(CaptureError::Corrupt | CaptureError::Missed) => true,
            Err(_) => false,
        };
        set_health(&mut self.out.health, &mut self.counters, camera_alive);
        self.camera_ok = camera_alive;
        let (meta, result) = match captured {
            Ok(None) => return None,
            Err(e) => (None, Err(Fault::Capture(e))),
            Ok(Some(frame)) => {
                let meta = frame.meta.clone();
                self.scene_took_frame = self.out.scene.as_ref().is_some_and(|s| s.offer_frame(self.part, &frame));
                let result = match self.pre.run(&frame) {
                    Err(e) => {
                        times.preprocess = self.clock.now() - t1;
                        Err(Fault::Preprocess(e))
                    }
                    Ok(input) => {
                        let t2 = self.clock.now();
                        times.preprocess = t2 - t1;
                        match self.engine.infer(input) {
                            Err(e) => {
                                times.infer = self.clock.now() - t2;
                                Err(Fault::Inference(e))
                            }
                            Ok(recon) => {
                                let t3 = self.clock.now();
                                times.infer = t3 - t2;
                                let s = self.scorer.score(input, recon);
                                times.score = self.clock.now() - t3;
                                Ok(s)
                            }
                        }
                    }
                };
                (Some(meta), result)
            }
        };
        let stats = self.source.stats();
        self.counters.dropped = stats.dropped;
        self.counters.camera_reopened = stats.reopened;
        self.counters.triggers = stats.triggers;
        self.counters.skipped = stats.skipped;
        if let Some(e) = &self.out.encoder {
            self.counters.encoder_edges = e.load(Ordering::Relaxed);
        }
        let t4 = self.clock.now();
        let captured_at = meta.as_ref().map_or(t0, |m| m.timestamp);
        let verdict = self.decider.decide(result, captured_at, t4);
        let score = result.ok();
        if let Some(e) = &self.out.ejector {
            e.resolve(self.part, verdict.is_reject());
            let late_before = self.counters.ejector_late;
            self.sync_ejector_counters();
            if self.counters.ejector_late > late_before {
                self.last_late = Some(self.part);
            }
        } else if verdict.is_reject() {
            match self.line.fire(t4) {
                Ok(()) => self.counters.pulses += 1,
                Err(_) => self.counters.output_errors += 1,
            }
        }
        self.counters.record(verdict, meta.as_ref().and_then(|m| m.truth));
        if let (Verdict::Defect, Some(h)) = (verdict, self.heatmap.as_mut()) {
            h.update(self.scorer.map(), self.scorer.width(), self.scorer.height(), self.decider.threshold(), self.part);
        }
        if let (Verdict::Defect, Some(ob)) = (verdict, self.out.outbox.as_ref().filter(|o| o.wants_thumbnails())) {
            let (w, h) = self.pre.size();
            let s = &self.scorer;
            ob.offer_thumbnail(
                self.part,
                self.pre.output(),
                w,
                h,
                s.map(),
                s.width(),
                s.height(),
                self.decider.threshold(),
            );
        }
        if matches!(verdict, Verdict::Fault(Fault::Late)) {
            self.last_late = Some(self.part);
        }
        self.update_alarm(verdict);
        if !tracked {
            self.raise_alarm("the ejector's queue is full: a part was rejected untracked");
        }
        if let Some(n) = self.out.notifier.as_mut() {
            n.tick(t4);
        }
        if let Some(prev) = self.last_frame_at.replace(t4) {
            let dt = (t4 - prev).as_secs_f32();
            self.frame_interval_s =
                if self.frame_interval_s == 0.0 { dt } else { 0.9 * self.frame_interval_s + 0.1 * dt };
        }
        let part = self.part;
        self.part += 1;
        let t5 = self.clock.now();
        times.output = t5 - t4;
        // Frame exposure (or, without a camera clock, the capture call) to verdict and outputs:
        // waiting for a triggered part is not latency, a frame aged in the camera's ring is.
        self.latency.push(t5.saturating_sub(captured_at));
        let outcome = Outcome { part, meta, score, verdict, times, decided_at: t4 };
        self.emit(&outcome);
        Some(outcome)
    }

    /// Camera, alarm and late results as of part `part`.
    fn health_at(&self, part: u64) -> Health {
        Health {
            camera_ok: self.camera_ok,
            alarm: self.out.alarm.as_ref().is_some_and(|a| a.line.is_on() == Some(true)),
            late: self.last_late.is_some_and(|p| part.saturating_sub(p) < LATE_BANNER_PARTS),
        }
    }

    /// Recent frames per second (smoothed), 0 before the second frame.
    fn fps(&self) -> f32 {
        if self.frame_interval_s > 0.0 {
            1.0 / self.frame_interval_s
        } else {
            0.0
        }
    }

    /// With an ejector, its thread fires the pulses: the loop's counters take its figures.
    fn sync_ejector_counters(&mut self) {
        if let Some(e) = &self.out.ejector {
            let c = e.counters();
            (self.counters.pulses, self.counters.ejector_late, self.counters.ejector_overflows) =
                (c.pulses, c.late, c.overflows);
            self.counters.ejector_unseen = c.unseen;
        }
    }

    /// Raises the alarm at once (not by the policy's count): the line must stop.
    fn raise_alarm(&mut self, why: &str) {
        log::error!("ALARM: {why}");
        let Some(a) = self.out.alarm.as_mut() else { return };
        if a.line.is_on() != Some(true) {
            self.counters.alarms += 1;
            if let Some(ob) = &self.out.outbox {
                ob.alarm(self.part, true, why);
            }
        }
        if a.line.set(true).is_err() {
            self.counters.output_errors += 1;
        }
    }

    fn update_alarm(&mut self, verdict: Verdict) {
        let Some(a) = self.out.alarm.as_mut() else { return };
        let Some(on) = a.policy.record(verdict) else { return };
        if a.line.set(on).is_err() {
            self.counters.output_errors += 1;
        }
        let why = if on { "repeated faults: the station is not inspecting" } else { "parts are judged again" };
        if on {
            self.counters.alarms += 1;
            log::error!("ALARM: {why} (last: {})", verdict.label());
        } else {
            log::warn!("alarm cleared: {why}");
        }
        if let Some(ob) = &self.out.outbox {
            ob.alarm(self.part, on, why);
        }
    }

    fn poll_line(&mut self, now: Duration) {
        if self.line.poll(now).is_err() {
            self.counters.output_errors += 1;
        }
    }

    /// Display, event log and periodic summary for one part.
    fn emit(&mut self, o: &Outcome) {
        let threshold = self.decider.threshold();
        let fps = self.fps();
        let health = self.health_at(o.part);
        if let Some(fb) = self.out.display.as_mut() {
            let p99 = self.latency.percentiles([99]).map_or(Duration::ZERO, |[p]| p);
            let status = Status {
                seq: o.part,
                verdict: o.verdict,
                score: o.score,
                threshold,
                counters: &self.counters,
                fps,
                p99,
                health,
                // Filled at the first defect (the only verdict that updates it).
                heatmap: self.heatmap.as_ref().filter(|_| self.counters.defects > 0),
            };
            let _ = draw_status(fb, &status, self.out.layout);
            if let Some(panel) = self.out.panel.as_mut() {
                if let Err(why) = panel.show(fb) {
                    self.counters.output_errors += 1;
                    if self.counters.output_errors.is_power_of_two() {
                        log::error!("display: {why}");
                    }
                }
            }
        }
        if let Some(w) = self.out.events.as_mut() {
            if let Err(e) = write_event(w, o, threshold) {
                self.counters.log_errors += 1;
                // Said at the first failure and at each power of two: a full disk is loud but
                // does not flood the journal.
                if self.counters.log_errors.is_power_of_two() {
                    log::error!(
                        "event log: cannot write ({e}); {} event(s) lost so far, inspection goes on: free space where it is written",
                        self.counters.log_errors
                    );
                }
            }
        }
        if let Some(sc) = &self.out.scene {
            let map = (self.scene_took_frame && o.score.is_some()).then(|| self.scorer.map());
            sc.record(o, map, threshold, &self.counters, fps);
        }
        if let Some(ob) = &self.out.outbox {
            ob.part(o, threshold);
            if ob.counters_due(o.decided_at) {
                let [p50, p99] = self.latency.percentiles([50, 99]).unwrap_or([Duration::ZERO; 2]);
                ob.push_counters(o.decided_at, &self.counters, health, fps, p50, p99);
            }
        }
        if o.decided_at.saturating_sub(self.last_summary) >= self.out.summary_every {
            self.last_summary = o.decided_at;
            self.log_summary(fps);
        }
    }

    fn log_summary(&mut self, fps: f32) {
        let c = self.counters;
        let [p50, p99] = self.latency.percentiles([50, 99]).unwrap_or([Duration::ZERO; 2]);
        log::info!(
            "parts {} | OK {} NG {} FAULT {} (capture {}, preprocess {}, inference {}, late {}) | {:.1} fps | latency p50 {:.1} ms p99 {:.1} ms | pulses {}{} | camera dropped {} reopened {} | triggers {} skipped {} encoder {}",
            c.frames,
            c.passed,
            c.defects,
            c.faults,
            c.capture_errors,
            c.preprocess_errors,
            c.inference_errors,
            c.late,
            fps,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            c.pulses,
            EjectorNote(self.out.ejector.is_some().then_some((c.ejector_late, c.ejector_overflows, c.ejector_unseen))),
            c.dropped,
            c.camera_reopened,
            c.triggers,
            c.skipped,
            c.encoder_edges
        );
    }

    /// Runs until the source ends, calling `on_part` after each part.
    pub fn run(&mut self, on_part: impl FnMut(&Outcome)) {
        self.run_until(&AtomicBool::new(false), on_part);
    }

    /// Runs until the source ends or `stop` is set (checked between parts, e.g. by a SIGTERM
    /// handler), calling `on_part` after each part.
    pub fn run_until(&mut self, stop: &AtomicBool, mut on_part: impl FnMut(&Outcome)) {
        while !stop.load(Ordering::Relaxed) {
            match self.step() {
                Some(o) => on_part(&o),
                None => break,
            }
        }
    }

    /// Ends the run: waits out (on the loop's clock) any active pulse, leaves the reject line
    /// idle, flushes the event log and logs a final summary.
    pub fn finish(mut self) -> Report<P> {
        if let Some(e) = self.out.ejector.as_mut() {
            // Parts still on their way are served at their time: none leaves untreated.
            e.finish();
            self.sync_ejector_counters();
        }
        if let Some(e) = &self.out.encoder {
            self.counters.encoder_edges = e.load(Ordering::Relaxed);
        }
        let fps = self.fps();
        self.log_summary(fps);
        if let Some(w) = self.out.events.as_mut() {
            if w.flush().is_err() {
                self.counters.log_errors += 1;
            }
        }
        let [p50, p99] = self.latency.percentiles([50, 99]).unwrap_or([Duration::ZERO; 2]);
        if let Some(ob) = &self.out.outbox {
            ob.push_counters(self.clock.now(), &self.counters, self.health_at(self.part), fps, p50, p99);
        }
        // Cutting the last reject pulse short could let its part pass the ejector.
        if let Some(left) = self.line.remaining(self.clock.now()) {
            std::thread::sleep(left);
        }
        let pin = self.line.release().ok();
        for line in [self.out.health.as_mut(), self.out.alarm.as_mut().map(|a| &mut a.line)].into_iter().flatten() {
            if line.set(false).is_err() {
                self.counters.output_errors += 1;
            }
        }
        if let Some(n) = &self.out.notifier {
            n.stopping();
        }
        Report { counters: self.counters, p50, p99, pin, display: self.out.display }
    }
}

/// The ejector's part of a summary, when there is an ejector (written without allocating).
struct EjectorNote(Option<(u64, u64, u64)>);

impl std::fmt::Display for EjectorNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((late, overflow, unseen)) => write!(f, " (ejector late {late} overflow {overflow} unseen {unseen})"),
            None => Ok(()),
        }
    }
}

/// Drives the health line; a frame that arrives (even corrupt) shows the camera is alive.
fn set_health(health: &mut Option<StatusLine>, counters: &mut Counters, alive: bool) {
    let Some(h) = health.as_mut() else { return };
    let was_on = h.is_on() == Some(true);
    match h.set(alive) {
        Ok(()) if was_on && !alive => {
            counters.health_drops += 1;
            log::warn!("health line down: the camera delivers no frames");
        }
        Ok(()) if !was_on && alive => log::info!("health line up: inspecting"),
        Ok(()) => {}
        Err(_) => counters.output_errors += 1,
    }
}

/// The outcome of a whole run.
pub struct Report<P> {
    /// Final counters.
    pub counters: Counters,
    /// Median frame latency of the last frames.
    pub p50: Duration,
    /// 99th percentile frame latency of the last frames.
    pub p99: Duration,
    /// The reject pin, released to idle (`None` if releasing failed).
    pub pin: Option<P>,
    /// The last screen.
    pub display: Option<MemoryFramebuffer>,
}
