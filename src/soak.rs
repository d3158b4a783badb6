//! Soak: the whole loop over a long run of parts on a simulated belt, with faults injected at
//! every stage, checked part by part against what physically happens at the ejector.
//!
//! Time is simulated (a [`FakeClock`] moved only by the simulated camera and model), so a run of
//! 100,000 parts takes minutes, not hours, and is the same on every machine for the same seed.
//! Everything between capture and the reject line is the production code: MJPEG decoding
//! ([`convert`]), preprocessing, scoring, the decision and its deadline, the [`Inspector`] with
//! its alarm and health lines, the event log and the [`Ejector`] serving every slot at its time.
//! Two parts are stand-ins:
//! - the camera: a triggered station (one part every `period`, a part-present edge each), frames
//!   exposed on a free-running grid at `fps`, taken as a V4L2 source takes them: the first frame
//!   exposed after the part's edge, missed when none came within two frame periods; stalls and
//!   disconnections cost the camera timeout per part, as the real source's waits do;
//! - the model: an oracle that reconstructs good parts perfectly and defective ones badly, so
//!   that every escape the soak finds is the runtime's fault, never the model's accuracy.
//!
//! The physical check: a part is ejected when the reject line is on as it passes the ejector
//! (its arrival plus the belt travel, less the actuator lead). Every part whose verdict rejects
//! it, or whose verdict came after it passed, must be ejected; every defective part must be.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::actuation::{Polarity, RecordingPin, RejectLine, StatusLine};
use crate::bundle::Manifest;
use crate::capture::convert::{convert, CameraFormat};
use crate::capture::{CaptureError, Frame, FrameMeta, FrameSource, PixelFormat, SourceStats};
use crate::clock::{Clock, FakeClock};
use crate::decision::{AlarmPolicy, Decider, Fault, Verdict};
use crate::display::MemoryFramebuffer;
use crate::ejector::{Base, Ejector, EjectorCounters, PartTracker, Placement, Resolution, Span};
use crate::model::InferError;
use crate::pipeline::{AlarmOutput, Engine, Inspector, Outcome, Outputs};
use crate::preprocess::Preprocessor;
use crate::scoring::Scorer;
use crate::synth::{Rng, SynthConveyor};
use crate::telemetry::Counters;

/// The station simulated, and how often each fault is injected.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SoakConfig {
    /// Parts to run.
    pub parts: u64,
    /// Seed of the parts and of the faults.
    pub seed: u64,
    /// Share of parts with a corrupt frame, and of parts with a late inference; the rarer
    /// faults are fractions of it (see [`FaultKind::share`]).
    pub fault_rate: f64,
    /// Share of defective parts.
    pub defect_rate: f64,
    /// One part every this long.
    pub period: Duration,
    /// Camera frame rate (free-running exposures).
    pub fps: u32,
    /// Frame side in pixels (MJPEG, square).
    pub size: usize,
    /// Camera to ejector.
    pub travel: Duration,
    /// Actuator lead.
    pub lead: Duration,
    /// Reject pulse width.
    pub pulse: Duration,
    /// Result deadline (capture to decision).
    pub deadline: Duration,
    /// The camera source's timeout.
    pub camera_timeout: Duration,
    /// Normal inference time (each run takes 80 to 120 % of it).
    pub infer: Duration,
    /// How far the ejector's configured travel is from the belt's (a commissioning error, for
    /// showing that the soak catches parts that miss the pulse); zero for a correct station.
    pub misalign: Duration,
    /// Count growth of the process's resident memory as a broken invariant (only meaningful
    /// when the soak has the process to itself, as `anovit soak` does).
    pub check_memory: bool,
}

impl Default for SoakConfig {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            parts: 100_000,
            seed: 1,
            fault_rate: 0.01,
            defect_rate: 0.1,
            period: ms(50),
            fps: 30,
            size: 256,
            travel: ms(400),
            lead: ms(10),
            pulse: ms(20),
            deadline: ms(250),
            camera_timeout: ms(500),
            infer: ms(25),
            misalign: Duration::ZERO,
            check_memory: true,
        }
    }
}

/// What can be injected into a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FaultKind {
    /// The frame's bytes are a truncated, garbled or wrongly sized MJPEG image.
    CorruptFrame,
    /// The camera delivers nothing for 0.2 to 3 s.
    CameraStall,
    /// The camera disappears for 0.5 to 4 s, then comes back.
    CameraDisconnect,
    /// The inference takes 300 to 900 ms.
    LateInference,
    /// The inference fails.
    InferenceError,
    /// The inference returns NaN.
    NanOutput,
    /// The event log cannot be written (disk full).
    LogWriteFailure,
}

impl FaultKind {
    const ALL: [FaultKind; 7] = [
        FaultKind::CorruptFrame,
        FaultKind::CameraStall,
        FaultKind::CameraDisconnect,
        FaultKind::LateInference,
        FaultKind::InferenceError,
        FaultKind::NanOutput,
        FaultKind::LogWriteFailure,
    ];

    /// Its place in [`Self::ALL`] (and in the tallies kept in that order).
    fn index(self) -> usize {
        Self::ALL.iter().position(|&f| f == self).unwrap_or(0)
    }

    /// Share of parts that get this fault, relative to the fault rate.
    pub fn share(self) -> f64 {
        match self {
            FaultKind::CorruptFrame | FaultKind::LateInference => 1.0,
            FaultKind::InferenceError | FaultKind::NanOutput | FaultKind::LogWriteFailure => 0.2,
            FaultKind::CameraStall => 0.05,
            FaultKind::CameraDisconnect => 0.02,
        }
    }

    /// The verdict codes a part with this fault may get (none: not a verdict, a log error).
    fn expected_codes(self) -> &'static [&'static str] {
        match self {
            FaultKind::CorruptFrame => &["capture_corrupt"],
            // Or missed, when the camera came back before the source gave up on the part.
            FaultKind::CameraStall => &["capture_timeout", "capture_missed"],
            FaultKind::CameraDisconnect => &["capture_lost", "capture_missed"],
            FaultKind::LateInference => &["late"],
            FaultKind::InferenceError => &["inference"],
            FaultKind::NanOutput => &["bad_score"],
            FaultKind::LogWriteFailure => &[],
        }
    }
}

/// Per kind: parts it was drawn for, how many reached the stage it acts on, how many the loop
/// counted as that fault.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Injection {
    /// Drawn.
    pub drawn: u64,
    /// Took effect (an engine fault needs a frame to reach the engine).
    pub effective: u64,
    /// Of those, counted by the loop with the matching fault (or log error).
    pub counted: u64,
}

/// Everything one soak run found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SoakReport {
    /// The station and fault rates.
    pub config: SoakConfig,
    /// Parts that arrived at the camera.
    pub parts: u64,
    /// Verdicts given (must equal `parts`).
    pub verdicts: u64,
    /// The loop's counters at the end.
    pub counters: Counters,
    /// The ejector's counters.
    pub ejector: EjectorCounters,
    /// Per injected kind, in [`FaultKind`] order.
    pub injected: Vec<(FaultKind, Injection)>,
    /// Fault verdicts on parts with no fault of their own (in an outage, behind a late one).
    pub collateral_faults: u64,
    /// Defective parts (ground truth).
    pub defective: u64,
    /// Parts ejected (line on as they passed the ejector).
    pub ejected: u64,
    /// Parts that had to be ejected: a reject verdict, or a verdict after they passed.
    pub must_eject: u64,
    /// Defective parts not ejected.
    pub escapes: u64,
    /// Parts that had to be ejected and were not.
    pub unsafe_passes: u64,
    /// Good parts with a timely pass that were ejected anyway (inside a held span).
    pub collateral_ejects: u64,
    /// Rising edges of the reject line.
    pub pulse_edges: u64,
    /// Resident memory after 10 % of the parts and at each further tenth, KiB.
    pub rss_kib: Vec<u64>,
    /// Simulated time, seconds.
    pub simulated_s: f64,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Broken invariants (the first 20, with the count of all in `violation_count`).
    pub violations: Vec<String>,
    /// All broken invariants.
    pub violation_count: u64,
}

impl SoakReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }
}

/// What is known of one part until the ejector has dealt with it.
#[derive(Clone, Copy, Debug)]
struct PartRecord {
    arrival: Duration,
    /// When it passes the ejector (less the lead): where the line must be on.
    due: Duration,
    defective: bool,
    fault: Option<FaultKind>,
    /// Its capture failed because of an outage or backlog it did not cause.
    collateral: bool,
    engine_reached: bool,
    verdict: Option<(Verdict, Duration)>,
}

/// The simulated world: time, the ejector on its belt, the parts on their way.
struct World {
    clock: FakeClock,
    ejector: Ejector<RecordingPin<FakeClock, 1024>>,
    next_service: Option<u64>,
    records: VecDeque<PartRecord>,
    /// Part number of `records[0]`.
    first: u64,
    /// The part being captured or inferred, for the stand-ins.
    current: u64,
}

fn micros(t: Duration) -> u64 {
    t.as_micros() as u64
}

impl World {
    /// Moves time to `t`, serving the ejector at every due time and pulse end on the way, as
    /// its thread would.
    fn advance_to(&mut self, t: Duration) {
        loop {
            let now = self.clock.now();
            match self.pending(now).into_iter().flatten().min() {
                Some(d) if d <= t => {
                    self.clock.advance(d.saturating_sub(now));
                    let now = self.clock.now();
                    self.next_service = self.ejector.service(micros(now), now);
                }
                _ => break,
            }
        }
        let now = self.clock.now();
        self.clock.advance(t.saturating_sub(now));
        let now = self.clock.now();
        self.next_service = self.ejector.service(micros(now), now);
    }

    /// When the ejector needs serving next: the end of the active pulse, the next due position.
    fn pending(&self, now: Duration) -> [Option<Duration>; 2] {
        let pulse_end = self.ejector.pulse_remaining(now).map(|r| now + r);
        [pulse_end, self.next_service.map(Duration::from_micros)]
    }

    fn record(&mut self, part: u64) -> Option<&mut PartRecord> {
        let i = part.checked_sub(self.first)?;
        self.records.get_mut(i as usize)
    }

    /// Whether the line was on at `t` (the last change at or before `t`).
    fn line_on_at(&self, t: Duration) -> Option<bool> {
        let mut level = None;
        for e in self.ejector.line().pin().edges() {
            if e.at > t {
                break;
            }
            level = Some(e.high);
        }
        level
    }
}

/// The world, shared by the stand-ins and the tracker.
#[derive(Clone)]
struct Shared(Arc<Mutex<World>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The ejector as the loop sees it, served in simulated time.
struct SimTracker(Shared);

impl PartTracker for SimTracker {
    fn admit(&self, part: u64, seen: Span, now: Duration) -> bool {
        let mut w = self.0.lock();
        let ok = w.ejector.admit_span(part, micros(seen.from), micros(seen.to), now);
        w.next_service = w.ejector.service(micros(now), now);
        ok
    }

    fn resolve(&self, part: u64, reject: bool) -> Resolution {
        self.0.lock().ejector.resolve(part, reject)
    }

    fn counters(&self) -> EjectorCounters {
        self.0.lock().ejector.counters()
    }

    fn finish(&mut self) {
        let mut w = self.0.lock();
        w.ejector.stop_watching();
        loop {
            let now = w.clock.now();
            match w.pending(now).into_iter().flatten().max() {
                Some(t) => w.advance_to(t.max(now + Duration::from_micros(1))),
                None => break,
            }
        }
    }
}

/// A camera outage: no frames until `until`.
#[derive(Clone, Copy, Debug)]
struct Outage {
    until: Duration,
    disconnect: bool,
}

/// What the frame of a part will be.
enum Shot {
    Good(usize),
    Corrupt(usize),
}

/// The triggered camera (see the module's description).
struct SimCamera {
    world: Shared,
    cfg: SoakConfig,
    /// Good (first half) and defective (second half) parts, as MJPEG.
    pool: Vec<Vec<u8>>,
    /// Truncated, garbled, wrongly sized and empty frames.
    corrupt: Vec<Vec<u8>>,
    pixels: Vec<u8>,
    meta: FrameMeta,
    next_part: u64,
    outage: Option<Outage>,
    stats: SourceStats,
    frame: Duration,
}

const POOL: usize = 8;
/// Frames the driver's ring holds: older ones are overwritten.
const RING: u32 = 4;

impl SimCamera {
    fn new(world: Shared, cfg: &SoakConfig) -> Result<Self, String> {
        let encode = |rgb: &[u8], side: usize| -> Result<Vec<u8>, String> {
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
                .encode(rgb, side as u32, side as u32, image::ExtendedColorType::Rgb8)
                .map_err(|e| format!("cannot encode a soak frame: {e}"))?;
            Ok(jpeg)
        };
        let s = cfg.size;
        let (mut rgb, mut mask) = (vec![0; s * s * 3], vec![0; s * s]);
        let mut pool = Vec::new();
        for rate in [0.0, 1.0] {
            let gen = SynthConveyor::new(cfg.seed, s, s, rate);
            for i in 0..POOL as u64 {
                gen.render(gen.spec(i), &mut rgb, &mut mask);
                pool.push(encode(&rgb, s)?);
            }
        }
        let whole = &pool[0];
        let mut garbled = whole.clone();
        let mut r = Rng::new(cfg.seed, u64::MAX);
        // Keep the headers, scramble the entropy-coded data.
        for b in garbled.iter_mut().skip(whole.len() / 3) {
            *b = r.next_u64() as u8;
        }
        let small = {
            let half = s / 2;
            let gen = SynthConveyor::new(cfg.seed, half, half, 0.0);
            let (mut rgb, mut mask) = (vec![0; half * half * 3], vec![0; half * half]);
            gen.render(gen.spec(0), &mut rgb, &mut mask);
            encode(&rgb, half)?
        };
        let corrupt = vec![
            whole[..whole.len() / 10].to_vec(),
            whole[..whole.len() / 2].to_vec(),
            whole[..whole.len() * 9 / 10].to_vec(),
            whole[..whole.len() * 97 / 100].to_vec(),
            garbled,
            small,
            Vec::new(),
        ];
        Ok(Self {
            world,
            cfg: cfg.clone(),
            pool,
            corrupt,
            pixels: vec![0; s * s * 3],
            meta: FrameMeta::new(s, s, PixelFormat::Rgb8),
            next_part: 0,
            outage: None,
            stats: SourceStats::default(),
            frame: Duration::from_secs_f64(1.0 / f64::from(cfg.fps.max(1))),
        })
    }

    /// The faults and truth of part `k`, drawn from its own stream.
    fn draw(&self, k: u64) -> (bool, Option<FaultKind>, f32) {
        let mut r = Rng::new(self.cfg.seed, k.wrapping_mul(3).wrapping_add(7));
        let defective = f64::from(r.unit()) < self.cfg.defect_rate;
        let mut u = f64::from(r.unit());
        let mut fault = None;
        for kind in FaultKind::ALL {
            let p = kind.share() * self.cfg.fault_rate;
            if u < p {
                fault = Some(kind);
                break;
            }
            u -= p;
        }
        (defective, fault, r.unit())
    }

    /// The first exposure at or after `t` on the camera's grid.
    fn exposure_after(&self, t: Duration) -> Duration {
        let f = self.frame.as_nanos();
        Duration::from_nanos((t.as_nanos().div_ceil(f) * f) as u64)
    }
}

impl FrameSource for SimCamera {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        let k = self.next_part;
        if k >= self.cfg.parts {
            return Ok(None);
        }
        self.next_part += 1;
        let arrival = Duration::from_nanos((self.cfg.period.as_nanos() as u64).saturating_mul(k));
        let (defective, fault, x) = self.draw(k);
        let mut w = self.world.lock();
        // Waiting for the part-present edge: until it comes, no part is on the belt unseen.
        let idle_at = w.clock.now().max(now);
        if idle_at < arrival {
            // Edges come in order: up to this one (not its part), the belt holds no part.
            w.ejector.mark_seen(micros(arrival).saturating_sub(1));
            w.advance_to(arrival);
        }
        w.current = k;
        let due = (arrival + self.cfg.travel).saturating_sub(self.cfg.lead);
        w.records.push_back(PartRecord {
            arrival,
            due,
            defective,
            fault,
            collateral: false,
            engine_reached: false,
            verdict: None,
        });
        if w.records.len() == 1 {
            w.first = k;
        }
        let started = w.clock.now().max(now);
        match fault {
            Some(FaultKind::CameraStall) => {
                self.outage =
                    Some(Outage { until: arrival + Duration::from_secs_f32(0.2 + 2.8 * x), disconnect: false })
            }
            Some(FaultKind::CameraDisconnect) => {
                self.outage = Some(Outage { until: arrival + Duration::from_secs_f32(0.5 + 3.5 * x), disconnect: true })
            }
            _ => {}
        }
        let own_outage = matches!(fault, Some(FaultKind::CameraStall | FaultKind::CameraDisconnect));
        // Frames come again from here on.
        let mut back_at = Duration::ZERO;
        if let Some(o) = self.outage.filter(|o| started < o.until) {
            if let Some(r) = w.record(k) {
                r.collateral = !own_outage;
            }
            // The real source waits its timeout for a frame (or for the device to reappear).
            let give_up = started + self.cfg.camera_timeout;
            if o.until > give_up {
                w.advance_to(give_up);
                if o.disconnect {
                    return Err(CaptureError::Disconnected);
                }
                self.stats.timeouts += 1;
                return Err(CaptureError::Timeout);
            }
            w.advance_to(o.until);
            if o.disconnect {
                self.stats.reopened += 1;
            }
            self.outage = None;
            back_at = o.until;
        }
        // The first frame exposed after the edge that the ring still holds.
        let oldest_kept = started.saturating_sub(self.frame * RING);
        let exposed = self.exposure_after(arrival.max(oldest_kept).max(back_at));
        let now = w.clock.now();
        w.advance_to(exposed.max(now) + Duration::from_millis(1));
        if exposed > arrival + 2 * self.frame {
            if let Some(r) = w.record(k) {
                r.collateral = !own_outage;
            }
            self.stats.dropped += 1;
            return Err(CaptureError::Missed);
        }
        drop(w);
        let shot = match fault {
            Some(FaultKind::CorruptFrame) => Shot::Corrupt((k as usize) % self.corrupt.len()),
            _ => Shot::Good((k as usize) % POOL + if defective { POOL } else { 0 }),
        };
        let bytes = match shot {
            Shot::Good(i) => &self.pool[i],
            Shot::Corrupt(i) => &self.corrupt[i],
        };
        let s = self.cfg.size;
        if convert(CameraFormat::Mjpeg, bytes, s, s, 0, &mut self.pixels).is_err() {
            return Err(CaptureError::Corrupt);
        }
        self.meta.seq = k;
        // The part's own time (its edge), which the ejector and the deadline count from.
        self.meta.timestamp = arrival;
        self.meta.truth = Some(defective);
        Ok(Some(Frame { data: &self.pixels, meta: &self.meta }))
    }

    fn max_size(&self) -> (usize, usize) {
        (self.cfg.size, self.cfg.size)
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// The oracle model with injected faults (see the module's description).
struct SimModel {
    world: Shared,
    cfg: SoakConfig,
    out: Vec<f32>,
}

impl Engine for SimModel {
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        let mut w = self.world.lock();
        let k = w.current;
        let (defective, fault, x) = {
            let r = w.record(k).ok_or(InferError::Engine)?;
            r.engine_reached = true;
            (r.defective, r.fault, Rng::new(self.cfg.seed, k.wrapping_mul(5).wrapping_add(3)).unit())
        };
        let took = match fault {
            Some(FaultKind::LateInference) => Duration::from_secs_f32(0.3 + 0.6 * x),
            _ => self.cfg.infer.mul_f32(0.8 + 0.4 * x),
        };
        let now = w.clock.now();
        w.advance_to(now + took);
        drop(w);
        match fault {
            Some(FaultKind::InferenceError) => return Err(InferError::Engine),
            Some(FaultKind::NanOutput) => {
                self.out.clear();
                self.out.resize(input.len(), f32::NAN);
                return Ok(&self.out);
            }
            _ => {}
        }
        self.out.clear();
        self.out.extend_from_slice(input);
        if defective {
            // A reconstruction far from the frame where the defect is (here: everywhere).
            self.out.iter_mut().for_each(|v| *v += 4.0);
        }
        Ok(&self.out)
    }
}

/// The event log behind a disk that fills up for the parts drawn for it.
struct SimLog {
    world: Shared,
    inner: Box<dyn Write + Send>,
}

impl Write for SimLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.world.lock();
        let k = w.current;
        if w.record(k).is_some_and(|r| r.fault == Some(FaultKind::LogWriteFailure)) {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        drop(w);
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page / 1024
}

/// The tallies kept while parts are checked.
#[derive(Default)]
struct Tally {
    parts: u64,
    verdicts: u64,
    defective: u64,
    ejected: u64,
    must_eject: u64,
    escapes: u64,
    unsafe_passes: u64,
    collateral_ejects: u64,
    collateral_faults: u64,
    injected: [Injection; 7],
    violations: Vec<String>,
    violation_count: u64,
}

impl Tally {
    fn violation(&mut self, why: String) {
        self.violation_count += 1;
        if self.violations.len() < 20 {
            self.violations.push(why);
        }
    }

    /// Checks part `k` once the ejector has dealt with it.
    fn settle(&mut self, k: u64, r: &PartRecord, on: Option<bool>) {
        self.parts += 1;
        let Some((verdict, decided_at)) = r.verdict else {
            self.violation(format!("part {k}: no verdict"));
            return;
        };
        let Some(on) = on else {
            self.violation(format!("part {k}: the reject line's history does not reach back to {:?}", r.due));
            return;
        };
        let must = verdict.is_reject() || decided_at >= r.due;
        self.defective += u64::from(r.defective);
        self.must_eject += u64::from(must);
        self.ejected += u64::from(on);
        if r.defective && !on {
            self.escapes += 1;
            self.violation(format!(
                "part {k} (at the camera at {:?}): defective, not ejected (verdict {})",
                r.arrival,
                verdict.label()
            ));
        } else if must && !on {
            self.unsafe_passes += 1;
            self.violation(format!(
                "part {k}: verdict {} at {decided_at:?}, passed the ejector at {:?} with the line off",
                verdict.label(),
                r.due
            ));
        }
        if on && !must {
            self.collateral_ejects += 1;
        }
        let code = match verdict {
            Verdict::Fault(f) => Some(f.code()),
            _ => None,
        };
        if let Some(kind) = r.fault {
            let inj = &mut self.injected[kind.index()];
            inj.drawn += 1;
            let effective = match kind {
                FaultKind::LateInference | FaultKind::InferenceError | FaultKind::NanOutput => r.engine_reached,
                FaultKind::CorruptFrame => !r.collateral,
                _ => true,
            };
            let want = kind.expected_codes();
            if effective {
                inj.effective += 1;
                if code.is_some_and(|c| want.contains(&c)) {
                    inj.counted += 1;
                } else if !want.is_empty() {
                    self.violation(format!(
                        "part {k}: injected {kind:?}, verdict {} ({code:?}), expected one of {want:?}",
                        verdict.label()
                    ));
                }
            }
        } else if code.is_some() && !r.collateral && !matches!(verdict, Verdict::Fault(Fault::Late)) {
            self.violation(format!("part {k}: fault {code:?} with nothing injected"));
        }
        if code.is_some() && (r.fault.is_none() || r.collateral) {
            self.collateral_faults += 1;
        }
    }
}

/// Runs a soak on the input, scoring and threshold of `manifest` (its model is not run).
pub fn run(cfg: &SoakConfig, manifest: &Manifest) -> Result<SoakReport, String> {
    let started = Instant::now();
    let clock = FakeClock::new();
    let width = cfg.pulse;
    let placement = Placement { base: Base::Time, travel: micros(cfg.travel + cfg.misalign), lead: cfg.lead };
    let Ok(line) = RejectLine::new(RecordingPin::new(clock.clone()), Polarity::ActiveHigh, width);
    let world = Shared(Arc::new(Mutex::new(World {
        clock: clock.clone(),
        ejector: Ejector::new(placement, line),
        next_service: None,
        records: VecDeque::new(),
        first: 0,
        current: 0,
    })));
    let camera = SimCamera::new(world.clone(), cfg)?;
    let model = SimModel { world: world.clone(), cfg: cfg.clone(), out: Vec::new() };
    let lamp = |clock: &FakeClock| StatusLine::new(Box::new(RecordingPin::<_, 4>::new(clock.clone())), false);
    let outputs = Outputs {
        display: Some(MemoryFramebuffer::new(320, 240)),
        events: Some(Box::new(SimLog { world: world.clone(), inner: Box::new(std::io::sink()) })),
        summary_every: Duration::from_secs(3600),
        health: Some(lamp(&clock)?),
        alarm: Some(AlarmOutput { line: lamp(&clock)?, policy: AlarmPolicy::new(5, 50) }),
        ejector: Some(Box::new(SimTracker(world.clone()))),
        ..Outputs::default()
    };
    let Ok(own_line) = RejectLine::new(RecordingPin::<_, 4>::new(clock.clone()), Polarity::ActiveHigh, width);
    let mut insp = Inspector::new(
        camera,
        Preprocessor::new(&manifest.input),
        model,
        Scorer::new(manifest.input.width(), manifest.input.height(), &manifest.scoring),
        Decider::new(manifest.threshold.value, cfg.deadline),
        own_line,
        clock.clone(),
        outputs,
    );
    let mut tally = Tally::default();
    let mut rss = Vec::new();
    let tenth = (cfg.parts / 10).max(1);
    let mut next_part = 0u64;
    let settle = |w: &mut World, tally: &mut Tally, all: bool| {
        let now = w.clock.now();
        while let Some(r) = w.records.front().copied() {
            // Settled once it has passed the ejector (and its pulse has had time to start).
            if !all && (r.verdict.is_none() || r.due >= now) {
                break;
            }
            let on = w.line_on_at(r.due);
            let k = w.first;
            tally.settle(k, &r, on);
            w.records.pop_front();
            w.first += 1;
        }
    };
    insp.notify_ready();
    let mut outcome = |o: &Outcome, tally: &mut Tally| {
        let mut w = world.lock();
        tally.verdicts += 1;
        if o.part != next_part {
            tally.violation(format!("verdict for part {} when part {next_part} was next", o.part));
        }
        next_part = o.part + 1;
        match w.record(o.part) {
            Some(r) if r.verdict.is_none() => r.verdict = Some((o.verdict, o.decided_at)),
            Some(_) => tally.violation(format!("part {}: a second verdict", o.part)),
            None => tally.violation(format!("part {}: a verdict for a part never seen", o.part)),
        }
        settle(&mut w, tally, false);
    };
    while let Some(o) = insp.step() {
        outcome(&o, &mut tally);
        if (o.part + 1) % tenth == 0 {
            rss.push(rss_kib());
        }
    }
    let report = insp.finish();
    settle(&mut world.lock(), &mut tally, true);
    let w = world.lock();
    let ejector = w.ejector.counters();
    // The line starts idle (one change) and ends idle: two changes per pulse.
    let rises = w.ejector.line().pin().changes().saturating_sub(1).div_ceil(2);
    let simulated_s = w.clock.now().as_secs_f64();
    drop(w);
    let c = report.counters;
    if ejector.admitted != cfg.parts || ejector.pulses + ejector.passed != ejector.admitted {
        tally.violation(format!(
            "ejector: {} parts admitted, {} let through, {} pulses started: not one pulse per rejected part",
            ejector.admitted, ejector.passed, ejector.pulses
        ));
    }
    if tally.verdicts != cfg.parts || c.frames != cfg.parts {
        tally.violation(format!("{} parts, {} verdicts, {} counted frames", cfg.parts, tally.verdicts, c.frames));
    }
    if c.passed + c.defects + c.faults != c.frames {
        tally.violation("counters: pass + defect + fault != frames".into());
    }
    let faults_by_kind = c.capture_errors + c.preprocess_errors + c.inference_errors + c.late;
    if faults_by_kind != c.faults {
        tally.violation(format!("counters: {} faults, {faults_by_kind} by kind", c.faults));
    }
    let log = FaultKind::LogWriteFailure.index();
    let log_failures = tally.injected[log].effective;
    if c.log_errors != log_failures {
        tally.violation(format!("{log_failures} log writes failed, {} counted", c.log_errors));
    }
    tally.injected[log].counted = c.log_errors.min(log_failures);
    if let (Some(first), Some(last), true) = (rss.first(), rss.last(), cfg.check_memory) {
        if *last > first + 4096 {
            tally.violation(format!("resident memory grew from {first} KiB to {last} KiB"));
        }
    }
    Ok(SoakReport {
        config: cfg.clone(),
        parts: tally.parts,
        verdicts: tally.verdicts,
        counters: c,
        ejector,
        injected: FaultKind::ALL.into_iter().zip(tally.injected).collect(),
        collateral_faults: tally.collateral_faults,
        defective: tally.defective,
        ejected: tally.ejected,
        must_eject: tally.must_eject,
        escapes: tally.escapes,
        unsafe_passes: tally.unsafe_passes,
        collateral_ejects: tally.collateral_ejects,
        pulse_edges: rises,
        rss_kib: rss,
        simulated_s,
        wall_s: started.elapsed().as_secs_f64(),
        violations: tally.violations,
        violation_count: tally.violation_count,
    })
}

/// The report as Markdown (the soak section of docs/RELIABILITY.md).
pub fn render(r: &SoakReport, command: &str) -> String {
    let c = &r.counters;
    let cfg = &r.config;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut s = String::new();
    let _ = writeln!(s, "## Soak\n");
    let _ = writeln!(
        s,
        "`{command}` ({:.0} s wall, {:.0} s of simulated belt). **{}**: {} broken invariants.\n",
        r.wall_s,
        r.simulated_s,
        if r.passed() { "PASSED" } else { "FAILED" },
        r.violation_count
    );
    let _ = writeln!(
        s,
        "Station: a part every {:.0} ms ({} parts, {:.0} % defective), triggered capture of {}x{} MJPEG \
         frames at {} fps, camera timeout {:.0} ms, inference {:.0} ms, deadline {:.0} ms, camera to \
         ejector {:.0} ms, lead {:.0} ms, pulse {:.0} ms; fault rate {:.1} %, seed {}.\n",
        ms(cfg.period),
        cfg.parts,
        cfg.defect_rate * 100.0,
        cfg.size,
        cfg.size,
        cfg.fps,
        ms(cfg.camera_timeout),
        ms(cfg.infer),
        ms(cfg.deadline),
        ms(cfg.travel),
        ms(cfg.lead),
        ms(cfg.pulse),
        cfg.fault_rate * 100.0,
        cfg.seed
    );
    let _ = writeln!(s, "| Check | Figure |\n|---|---|");
    let rows: [(&str, String); 13] = [
        ("parts / verdicts / frames counted", format!("{} / {} / {}", r.parts, r.verdicts, c.frames)),
        ("OK / NG / FAULT", format!("{} / {} / {}", c.passed, c.defects, c.faults)),
        ("defective parts / ejected of them", format!("{} / {}", r.defective, r.defective - r.escapes)),
        ("escapes (defective, not ejected)", r.escapes.to_string()),
        ("parts that had to be ejected / were not", format!("{} / {}", r.must_eject, r.unsafe_passes)),
        ("good parts ejected with a held span", r.collateral_ejects.to_string()),
        (
            "ejector: parts admitted / let through / pulses started (one per rejected part)",
            format!("{} / {} / {}", r.ejector.admitted, r.ejector.passed, r.ejector.pulses),
        ),
        (
            "ejector: late results / overflows / unseen belt held",
            format!("{} / {} / {}", r.ejector.late, r.ejector.overflows, r.ejector.unseen),
        ),
        ("rising edges on the reject line (adjacent rejects merge)", r.pulse_edges.to_string()),
        ("faults on parts with no fault of their own", r.collateral_faults.to_string()),
        ("alarms raised / health drops", format!("{} / {}", c.alarms, c.health_drops)),
        ("camera reopened / parts not imaged in time", format!("{} / {}", c.camera_reopened, c.dropped)),
        ("resident memory at each tenth (KiB)", r.rss_kib.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s, "\n| Injected | Drawn | Took effect | Counted as that fault |\n|---|---:|---:|---:|");
    for (kind, i) in &r.injected {
        let _ = writeln!(s, "| {kind:?} | {} | {} | {} |", i.drawn, i.effective, i.counted);
    }
    let _ = writeln!(
        s,
        "\n*Drawn*: parts the fault was drawn for; *took effect*: the fault reached its stage (an \
         engine fault needs the part's frame to reach the model, a corrupt frame needs the part to be \
         imaged at all); *counted*: the part's verdict carries that fault's code (for the log, the \
         loop's count of failed writes). Parts with no fault of their own that still faulted were \
         behind a late inference or inside a camera outage: not imaged in time (`capture_missed`) or \
         judged too late (`late`), all rejected. The model is an oracle (perfect reconstructions of good \
         parts): an escape here could only be the runtime's. RSS is the whole process's."
    );
    if !r.violations.is_empty() {
        let _ = writeln!(s, "\nBroken invariants (first {}):\n", r.violations.len());
        for v in &r.violations {
            let _ = writeln!(s, "- {v}");
        }
    }
    s
}
