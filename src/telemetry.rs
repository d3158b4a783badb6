//! Counters, latency statistics, the per-frame event log and the periodic summary.
//!
//! Every frame is accounted for: each ends in exactly one of pass / defect / fault, and each
//! fault kind has its own counter. Events are JSON lines written straight into a buffered
//! writer (no intermediate strings), so logging allocates nothing per frame.

use std::io::Write;
use std::time::Duration;

use crate::capture::FrameMeta;
use crate::decision::{Fault, Verdict};

/// How many recent frame latencies the percentiles are computed over.
pub const LATENCY_WINDOW: usize = 1024;

/// The station's state now, as the status screen shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The camera delivered the last frame.
    pub camera_ok: bool,
    /// The alarm line is up.
    pub alarm: bool,
    /// A result came late in the last parts.
    pub late: bool,
}

/// Frame counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Parts judged (every frame, good or bad).
    pub frames: u64,
    /// Passed.
    pub passed: u64,
    /// Rejected on score.
    pub defects: u64,
    /// Rejected because of a fault (sum of the fault counters below).
    pub faults: u64,
    /// Fault: the camera delivered no usable frame.
    pub capture_errors: u64,
    /// Fault: preprocessing failed.
    pub preprocess_errors: u64,
    /// Fault: inference failed or gave a non-finite score.
    pub inference_errors: u64,
    /// Fault: the result missed its deadline.
    pub late: u64,
    /// Reject pulses fired.
    pub pulses: u64,
    /// Results that came after their part reached the ejector (the part was rejected).
    pub ejector_late: u64,
    /// Parts rejected untracked because the ejector's queue was full.
    pub ejector_overflows: u64,
    /// Times belt the loop had not looked at reached the ejector (held rejected).
    pub ejector_unseen: u64,
    /// Output line errors (GPIO writes that failed).
    pub output_errors: u64,
    /// Event log writes that failed (e.g. disk full); the line keeps running.
    pub log_errors: u64,
    /// Frames the camera produced but the loop never received (driver sequence gaps).
    pub dropped: u64,
    /// Times the camera was reopened after it went away.
    pub camera_reopened: u64,
    /// Trigger edges received (triggered capture: one part each).
    pub triggers: u64,
    /// Camera frames read and discarded between triggered parts.
    pub skipped: u64,
    /// Belt encoder edges counted.
    pub encoder_edges: u64,
    /// Times the alarm was raised.
    pub alarms: u64,
    /// Times the health line went down.
    pub health_drops: u64,
    /// Frames with known ground truth.
    pub truth_known: u64,
    /// Of those, frames whose verdict matched it (reject for defective, pass for good).
    pub truth_matched: u64,
    /// Defective parts (by ground truth) that passed: escapes.
    pub escapes: u64,
    /// Good parts (by ground truth) that were rejected.
    pub false_rejects: u64,
}

impl Counters {
    /// Books one verdict.
    pub fn record(&mut self, verdict: Verdict, truth: Option<bool>) {
        self.frames += 1;
        match verdict {
            Verdict::Pass => self.passed += 1,
            Verdict::Defect => self.defects += 1,
            Verdict::Fault(f) => {
                self.faults += 1;
                match f {
                    Fault::Capture(_) => self.capture_errors += 1,
                    Fault::Preprocess(_) => self.preprocess_errors += 1,
                    Fault::Inference(_) | Fault::BadScore => self.inference_errors += 1,
                    Fault::Late => self.late += 1,
                }
            }
        }
        if let Some(defective) = truth {
            self.truth_known += 1;
            let rejected = verdict.is_reject();
            if rejected == defective {
                self.truth_matched += 1;
            } else if defective {
                self.escapes += 1;
            } else {
                self.false_rejects += 1;
            }
        }
    }
}

/// Per-stage time of one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Waiting for and receiving the frame.
    pub capture: Duration,
    /// Frame -> model input.
    pub preprocess: Duration,
    /// Model.
    pub infer: Duration,
    /// Anomaly map and score.
    pub score: Duration,
    /// Decide, actuate, display, log.
    pub output: Duration,
}

impl StageTimes {
    /// Capture to verdict.
    pub fn total(&self) -> Duration {
        self.capture + self.preprocess + self.infer + self.score + self.output
    }
}

/// A ring of recent latencies with percentiles computed in a fixed scratch buffer.
#[derive(Debug)]
pub struct LatencyWindow {
    ring: Box<[u32; LATENCY_WINDOW]>,
    scratch: Box<[u32; LATENCY_WINDOW]>,
    len: usize,
    next: usize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self { ring: Box::new([0; LATENCY_WINDOW]), scratch: Box::new([0; LATENCY_WINDOW]), len: 0, next: 0 }
    }
}

impl LatencyWindow {
    /// Adds one latency (saturating at about 71 minutes).
    pub fn push(&mut self, d: Duration) {
        self.ring[self.next] = d.as_micros().min(u32::MAX as u128) as u32;
        self.next = (self.next + 1) % LATENCY_WINDOW;
        self.len = (self.len + 1).min(LATENCY_WINDOW);
    }

    /// Nearest-rank percentiles (`p` in 0..=100) of the window; `None` when empty.
    pub fn percentiles<const K: usize>(&mut self, p: [u32; K]) -> Option<[Duration; K]> {
        if self.len == 0 {
            return None;
        }
        let s = &mut self.scratch[..self.len];
        s.copy_from_slice(&self.ring[..self.len]);
        s.sort_unstable();
        Some(p.map(|p| {
            let rank = (p as usize * self.len).div_ceil(100).clamp(1, self.len);
            Duration::from_micros(u64::from(s[rank - 1]))
        }))
    }
}

/// What happened to one part: the record behind the event log, the display and the terminal.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Part number in this run (every step, including failed captures).
    pub part: u64,
    /// Frame metadata, when a frame arrived.
    pub meta: Option<FrameMeta>,
    /// Score, when one was computed.
    pub score: Option<f32>,
    /// The verdict.
    pub verdict: Verdict,
    /// Stage times.
    pub times: StageTimes,
    /// When the verdict was reached.
    pub decided_at: Duration,
}

/// Writes one part as a JSON line.
pub fn write_event<W: Write>(w: &mut W, o: &Outcome, threshold: f32) -> std::io::Result<()> {
    write!(w, "{{\"seq\":{},", o.part)?;
    match &o.meta {
        Some(m) => {
            write!(w, "\"frame_seq\":{},\"captured_us\":{},\"label\":\"", m.seq, m.timestamp.as_micros())?;
            // Labels come from file names: escape what JSON needs.
            for ch in m.label.chars() {
                match ch {
                    '"' | '\\' => write!(w, "\\{ch}")?,
                    c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
                    c => write!(w, "{c}")?,
                }
            }
            write!(w, "\",")?;
            match m.truth {
                Some(t) => write!(w, "\"truth\":{},", if t { "\"defect\"" } else { "\"good\"" })?,
                None => write!(w, "\"truth\":null,")?,
            }
        }
        None => write!(w, "\"frame_seq\":null,\"captured_us\":null,\"label\":null,\"truth\":null,")?,
    }
    write!(w, "\"decided_us\":{},", o.decided_at.as_micros())?;
    match o.score.filter(|s| s.is_finite()) {
        Some(s) => write!(w, "\"score\":{s},")?,
        None => write!(w, "\"score\":null,")?,
    }
    write!(w, "\"threshold\":{threshold},\"verdict\":\"{}\",", o.verdict.label())?;
    match o.verdict {
        Verdict::Fault(f) => write!(w, "\"fault\":\"{}\",", f.code())?,
        _ => write!(w, "\"fault\":null,")?,
    }
    let t = &o.times;
    writeln!(
        w,
        "\"latency_us\":{{\"capture\":{},\"preprocess\":{},\"infer\":{},\"score\":{},\"output\":{},\"total\":{}}}}}",
        t.capture.as_micros(),
        t.preprocess.as_micros(),
        t.infer.as_micros(),
        t.score.as_micros(),
        t.output.as_micros(),
        t.total().as_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{CaptureError, PixelFormat};

    #[test]
    fn every_verdict_lands_in_exactly_one_bucket() {
        let mut c = Counters::default();
        c.record(Verdict::Pass, Some(false));
        c.record(Verdict::Defect, Some(true));
        c.record(Verdict::Pass, Some(true));
        c.record(Verdict::Fault(Fault::Late), Some(false));
        c.record(Verdict::Fault(Fault::Capture(CaptureError::Corrupt)), None);
        assert_eq!(c.frames, 5);
        assert_eq!(c.passed + c.defects + c.faults, c.frames);
        assert_eq!(c.late + c.capture_errors + c.preprocess_errors + c.inference_errors, c.faults);
        assert_eq!((c.truth_known, c.truth_matched, c.escapes, c.false_rejects), (4, 2, 1, 1));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut w = LatencyWindow::default();
        assert!(w.percentiles([50]).is_none());
        for ms in (1..=100).rev() {
            w.push(Duration::from_millis(ms));
        }
        let [p50, p99, p100] = w.percentiles([50, 99, 100]).unwrap();
        assert_eq!((p50.as_millis(), p99.as_millis(), p100.as_millis()), (50, 99, 100));
        for _ in 0..LATENCY_WINDOW {
            w.push(Duration::from_millis(7));
        }
        assert_eq!(w.percentiles([100]).unwrap()[0].as_millis(), 7);
    }

    #[test]
    fn events_are_valid_json_with_escaped_labels() {
        let mut meta = FrameMeta {
            seq: 3,
            timestamp: Duration::from_micros(1500),
            width: 1,
            height: 1,
            format: PixelFormat::Rgb8,
            truth: Some(true),
            label: Default::default(),
        };
        meta.label.push_str("a\"b\\c").unwrap();
        let mut out = Vec::new();
        let times = StageTimes { infer: Duration::from_micros(40), ..Default::default() };
        let mut o = Outcome {
            part: 3,
            meta: Some(meta),
            score: Some(0.25),
            verdict: Verdict::Pass,
            times,
            decided_at: Duration::from_micros(1600),
        };
        write_event(&mut out, &o, 0.5).unwrap();
        o.meta = None;
        o.score = None;
        o.verdict = Verdict::Fault(Fault::Late);
        write_event(&mut out, &o, 0.5).unwrap();
        let lines: Vec<serde_json::Value> =
            std::str::from_utf8(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["label"], "a\"b\\c");
        assert_eq!(lines[0]["truth"], "defect");
        assert_eq!(lines[0]["score"], 0.25);
        assert_eq!(lines[0]["latency_us"]["total"], 40);
        assert_eq!(lines[1]["fault"], "late");
        assert!(lines[1]["score"].is_null());
    }
}
