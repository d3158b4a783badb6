//! Score -> verdict. Every part is a reject until a valid, timely score below the threshold
//! confirms it: a fault anywhere upstream, a non-finite score or a late result all reject.

use std::fmt;
use std::time::Duration;

use crate::capture::CaptureError;
use crate::model::InferError;
use crate::preprocess::PreprocessError;

/// Why a part could not be judged on its merits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The camera delivered no usable frame.
    Capture(CaptureError),
    /// The frame could not be turned into model input.
    Preprocess(PreprocessError),
    /// The model failed.
    Inference(InferError),
    /// The score is NaN or infinite.
    BadScore,
    /// The result came after the deadline.
    Late,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Capture(e) => write!(f, "capture: {e}"),
            Fault::Preprocess(e) => write!(f, "preprocess: {e}"),
            Fault::Inference(e) => write!(f, "inference: {e}"),
            Fault::BadScore => f.write_str("non-finite score"),
            Fault::Late => f.write_str("result late"),
        }
    }
}

impl Fault {
    /// Short machine-readable name for event logs.
    pub fn code(self) -> &'static str {
        match self {
            Fault::Capture(CaptureError::Corrupt) => "capture_corrupt",
            Fault::Capture(CaptureError::Timeout) => "capture_timeout",
            Fault::Capture(CaptureError::Missed) => "capture_missed",
            Fault::Capture(_) => "capture_lost",
            Fault::Preprocess(_) => "preprocess",
            Fault::Inference(_) => "inference",
            Fault::BadScore => "bad_score",
            Fault::Late => "late",
        }
    }
}

/// The outcome for one part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good part: let it pass.
    Pass,
    /// The score reached the threshold.
    Defect,
    /// No trustworthy result: rejected to be safe.
    Fault(Fault),
}

impl Verdict {
    /// Whether the ejector must fire.
    pub fn is_reject(self) -> bool {
        !matches!(self, Verdict::Pass)
    }

    /// `OK`, `NG` or `FAULT`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "OK",
            Verdict::Defect => "NG",
            Verdict::Fault(_) => "FAULT",
        }
    }
}

/// Threshold and deadline from the bundle and the board profile.
#[derive(Clone, Copy, Debug)]
pub struct Decider {
    threshold: f32,
    deadline: Duration,
}

impl Decider {
    /// `threshold`: scores at or above it are defects. `deadline`: longest allowed time from
    /// capture to decision.
    pub fn new(threshold: f32, deadline: Duration) -> Self {
        Self { threshold, deadline }
    }

    /// The threshold.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Sets the threshold (the set-up page, with its token).
    pub fn set_threshold(&mut self, threshold: f32) {
        self.threshold = threshold;
    }

    /// Decides one part from its score (or the fault that prevented one), its capture time and
    /// the time now.
    pub fn decide(&self, score: Result<f32, Fault>, captured: Duration, now: Duration) -> Verdict {
        let score = match score {
            Ok(s) if s.is_finite() => s,
            Ok(_) => return Verdict::Fault(Fault::BadScore),
            Err(f) => return Verdict::Fault(f),
        };
        if now.saturating_sub(captured) > self.deadline {
            return Verdict::Fault(Fault::Late);
        }
        if score >= self.threshold {
            Verdict::Defect
        } else {
            Verdict::Pass
        }
    }
}

/// When the alarm output rises: repeated faults (late results, a camera that delivers nothing,
/// failing inference) mean the station is not inspecting and the line should be stopped; one
/// fault alone is handled by rejecting its part.
#[derive(Clone, Copy, Debug)]
pub struct AlarmPolicy {
    raise_after: u32,
    clear_after: u32,
    faults_in_a_row: u32,
    judged_in_a_row: u32,
    raised: bool,
}

impl AlarmPolicy {
    /// Raises after `raise_after` faults in a row; clears after `clear_after` parts in a row
    /// judged on their merits (OK or NG).
    pub fn new(raise_after: u32, clear_after: u32) -> Self {
        Self {
            raise_after: raise_after.max(1),
            clear_after: clear_after.max(1),
            faults_in_a_row: 0,
            judged_in_a_row: 0,
            raised: false,
        }
    }

    /// Books one verdict; the new alarm state when it changes.
    pub fn record(&mut self, v: Verdict) -> Option<bool> {
        if matches!(v, Verdict::Fault(_)) {
            self.faults_in_a_row += 1;
            self.judged_in_a_row = 0;
        } else {
            self.judged_in_a_row += 1;
            self.faults_in_a_row = 0;
        }
        let want = if self.raised {
            self.judged_in_a_row < self.clear_after
        } else {
            self.faults_in_a_row >= self.raise_after
        };
        (want != self.raised).then(|| {
            self.raised = want;
            want
        })
    }

    /// Raises the alarm now, whatever the verdicts (e.g. a queue that overflowed).
    pub fn force(&mut self) -> Option<bool> {
        self.judged_in_a_row = 0;
        (!self.raised).then(|| {
            self.raised = true;
            true
        })
    }

    /// Whether the alarm is up.
    pub fn is_raised(&self) -> bool {
        self.raised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn threshold_deadline_and_faults() {
        let d = Decider::new(1.0, 100 * MS);
        assert_eq!(d.decide(Ok(0.99), MS, 50 * MS), Verdict::Pass);
        assert_eq!(d.decide(Ok(1.0), MS, 50 * MS), Verdict::Defect);
        assert_eq!(d.decide(Ok(0.1), MS, 102 * MS), Verdict::Fault(Fault::Late));
        assert_eq!(d.decide(Ok(f32::NAN), MS, 2 * MS), Verdict::Fault(Fault::BadScore));
        assert_eq!(d.decide(Ok(f32::INFINITY), MS, 2 * MS), Verdict::Fault(Fault::BadScore));
        let f = Fault::Capture(CaptureError::Corrupt);
        assert_eq!(d.decide(Err(f), MS, 2 * MS), Verdict::Fault(f));
        assert!(Verdict::Fault(f).is_reject() && Verdict::Defect.is_reject() && !Verdict::Pass.is_reject());
    }

    #[test]
    fn alarm_rises_on_repeated_faults_and_clears_on_judged_parts() {
        let mut a = AlarmPolicy::new(3, 2);
        let late = Verdict::Fault(Fault::Late);
        let seq =
            [late, late, Verdict::Pass, late, late, late, late, Verdict::Defect, late, Verdict::Pass, Verdict::Pass];
        let changes: Vec<Option<bool>> = seq.iter().map(|&v| a.record(v)).collect();
        assert_eq!(
            changes,
            [None, None, None, None, None, Some(true), None, None, None, None, Some(false)],
            "two faults are not an alarm; a pass between resets; a fault restarts the clearing count"
        );
        assert_eq!(a.force(), Some(true));
        assert_eq!(a.force(), None);
    }
}
