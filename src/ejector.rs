//! The reject decision travels with the part to the ejector (`../shared/notes/line-practice.md`).
//!
//! Every part is a reject from the moment it is seen until a pass confirms it in time: the
//! tracker holds one slot per part between the camera and the ejector, keyed by the belt
//! position where its pulse must start (the part's position at capture, plus the camera-to-ejector
//! travel, minus the actuator's lead). Positions are encoder counts when the belt has an encoder,
//! else microseconds of the loop's clock (travel = distance / belt speed). A result that comes
//! after its part's slot has been served cannot save it: the part was rejected and the result is
//! counted as late. A part that finds no free slot cannot be tracked: it is rejected at once and
//! the overflow raises the alarm (the line must stop). A capture that failed saw nothing of the
//! belt that passed the camera meanwhile: it is admitted as a span (from the last frame seen to
//! the failure), and the line is held on while that whole span passes the ejector. The belt
//! the loop has not even looked at yet (it fell behind, e.g. on a slow inference) is held
//! rejected too when it reaches the ejector: everything past the last part admitted (or past
//! the time a triggered source has seen no part-present edge until) is unseen. Capacity is fixed
//! (heapless): nothing is allocated per part.
//!
//! [`Ejector::service`] is the whole timing logic, driven by any clock and position; a thread
//! ([`EjectorThread::spawn`]) calls it at the next due time (time base) or every half millisecond
//! (encoder base).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use embedded_hal::digital::OutputPin;

use crate::actuation::RejectLine;
use crate::clock::Clock;

/// Parts that can be between the camera and the ejector at once.
pub const CAPACITY: usize = 64;

/// How long a stop waits for the parts still on their way to reach the ejector.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// What belt positions count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Encoder edges: travel in counts, the lead converted with the measured belt speed.
    Encoder,
    /// Time: positions are microseconds of the loop's clock, travel = distance / belt speed.
    Time,
}

/// Where the ejector is and how it acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// What positions count.
    pub base: Base,
    /// Camera to ejector: counts (encoder) or microseconds (time).
    pub travel: u64,
    /// The actuator's delay from signal to effect (valve, diverter): the pulse starts this much
    /// before the part arrives.
    pub lead: Duration,
}

/// One part on its way to the ejector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    part: u64,
    fire_at: u64,
    /// Where a rejected span ends (equal to `fire_at` for a part seen in one frame).
    until: u64,
    reject: bool,
}

/// The stretch of belt, in times of the loop's clock, that one part stands for: a frame's
/// exposure (`from == to`), or, for a failed capture, everything since the last frame seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Start.
    pub from: Duration,
    /// End.
    pub to: Duration,
}

impl Span {
    /// One instant.
    pub fn at(t: Duration) -> Self {
        Self { from: t, to: t }
    }
}

/// How a part's result met its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// In time: the ejector will act on it.
    InTime,
    /// After the part's slot was served: the part was rejected whatever the result.
    Late,
}

/// What the ejector has done, for the loop's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EjectorCounters {
    /// Parts admitted.
    pub admitted: u64,
    /// Pulses started (one per rejected part; overlapping pulses extend each other).
    pub pulses: u64,
    /// Parts let through on a pass that came in time.
    pub passed: u64,
    /// Results that came after their part's slot was served.
    pub late: u64,
    /// Parts rejected at once because every slot was taken.
    pub overflows: u64,
    /// Times belt the loop had not looked at reached the ejector (the line was held on).
    pub unseen: u64,
    /// Pin writes that failed.
    pub output_errors: u64,
}

/// The queue of parts and the reject line they drive.
pub struct Ejector<P: OutputPin> {
    placement: Placement,
    slots: heapless::Deque<Slot, CAPACITY>,
    line: RejectLine<P>,
    counters: EjectorCounters,
    /// Belt speed in positions per second (encoder base), from the positions seen.
    speed: f64,
    last_sample: Option<(Duration, u64)>,
    /// The line stays on until the belt reaches this position (a rejected span).
    hold_until: Option<u64>,
    /// How far along the belt (at the camera) the loop has accounted for; `None` before the
    /// first part and once stopping.
    seen_until: Option<u64>,
    /// Unseen belt is at the ejector now.
    blind: bool,
}

impl<P: OutputPin> Ejector<P> {
    /// An empty belt in front of `line`.
    pub fn new(placement: Placement, line: RejectLine<P>) -> Self {
        Self {
            placement,
            slots: heapless::Deque::new(),
            line,
            counters: EjectorCounters::default(),
            speed: 0.0,
            last_sample: None,
            hold_until: None,
            seen_until: None,
            blind: false,
        }
    }

    /// Admits part `part`, seen at belt position `at` (time `now`), as a reject until
    /// [`Self::resolve`] says otherwise. Returns `false` when no slot was free: the part was
    /// rejected at once (the caller raises the alarm).
    pub fn admit(&mut self, part: u64, at: u64, now: Duration) -> bool {
        self.admit_span(part, at, at, now)
    }

    /// Admits part `part` standing for the belt between positions `from` and `to` (a failed
    /// capture): if it is a reject, the line is held on while the whole span passes.
    pub fn admit_span(&mut self, part: u64, from: u64, to: u64, now: Duration) -> bool {
        self.counters.admitted += 1;
        self.mark_seen(to.max(from));
        let lead = self.lead();
        // Parts keep their order on the belt: none can reach the ejector before the one ahead.
        let earliest = self.slots.back().map_or(0, |s| s.fire_at);
        let fire_at = (from + self.placement.travel).saturating_sub(lead).max(earliest);
        let until = (to.max(from) + self.placement.travel).saturating_sub(lead).max(fire_at);
        if self.slots.push_back(Slot { part, fire_at, until, reject: true }).is_err() {
            self.counters.overflows += 1;
            self.fire(now);
            // The part cannot be followed: hold the line from now until it has passed the
            // ejector (everything between is rejected with it).
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
            return false;
        }
        true
    }

    /// Records that the belt up to position `pos` (at the camera) holds no part the loop has
    /// not admitted: a triggered source waiting with no part-present edge.
    pub fn mark_seen(&mut self, pos: u64) {
        self.seen_until = Some(self.seen_until.map_or(pos, |s| s.max(pos)));
    }

    /// Stops holding the line for unseen belt: the loop has stopped looking.
    pub fn stop_watching(&mut self) {
        self.seen_until = None;
    }

    /// The actuator lead in positions.
    fn lead(&self) -> u64 {
        match self.placement.base {
            Base::Time => self.placement.lead.as_micros() as u64,
            Base::Encoder => (self.placement.lead.as_secs_f64() * self.speed).round() as u64,
        }
    }

    /// Records part `part`'s verdict.
    pub fn resolve(&mut self, part: u64, reject: bool) -> Resolution {
        match self.slots.iter_mut().find(|s| s.part == part) {
            Some(slot) => {
                slot.reject = reject;
                Resolution::InTime
            }
            None => {
                self.counters.late += 1;
                Resolution::Late
            }
        }
    }

    /// Serves every slot due at belt position `pos` (time `now`), holds the line over a
    /// rejected span and ends a pulse whose width has passed. Returns when to call again: the
    /// position of the next slot or of a held span's end, if any.
    pub fn service(&mut self, pos: u64, now: Duration) -> Option<u64> {
        self.sample_speed(pos, now);
        while let Some(slot) = self.slots.front().copied().filter(|s| s.fire_at <= pos) {
            self.slots.pop_front();
            if slot.reject {
                self.fire(now);
                if slot.until > slot.fire_at {
                    self.hold_until = Some(self.hold_until.map_or(slot.until, |h| h.max(slot.until)));
                }
            } else {
                self.counters.passed += 1;
            }
        }
        // Where belt the loop has not looked at starts to reach the ejector.
        let unseen_from = self.seen_until.map(|s| (s + self.placement.travel).saturating_sub(self.lead()) + 1);
        let blind = unseen_from.is_some_and(|u| pos >= u);
        if blind && !self.blind {
            self.counters.unseen += 1;
            log::error!("belt the loop has not looked at is passing the ejector: holding the reject line on");
        }
        self.blind = blind;
        if let Some(h) = self.hold_until {
            // Extended before the pulse can lapse; once the span's end is reached, one more
            // full width covers the part at its end.
            if self.line.hold(now).is_err() {
                self.counters.output_errors += 1;
            }
            if pos >= h {
                self.hold_until = None;
            }
        }
        if blind && self.line.hold(now).is_err() {
            self.counters.output_errors += 1;
        }
        if self.line.poll(now).is_err() {
            self.counters.output_errors += 1;
        }
        let watch = unseen_from.filter(|_| !blind);
        [self.slots.front().map(|s| s.fire_at), self.hold_until, watch].into_iter().flatten().min()
    }

    /// Time left of the active pulse.
    pub fn pulse_remaining(&self, now: Duration) -> Option<Duration> {
        self.line.remaining(now)
    }

    /// Parts between the camera and the ejector.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Counters so far.
    pub fn counters(&self) -> EjectorCounters {
        self.counters
    }

    /// The measured belt speed in positions per second (encoder base).
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The reject line (tests read a recording pin through it).
    pub fn line(&self) -> &RejectLine<P> {
        &self.line
    }

    fn fire(&mut self, now: Duration) {
        match self.line.fire(now) {
            Ok(()) => self.counters.pulses += 1,
            Err(_) => self.counters.output_errors += 1,
        }
    }

    /// Belt speed over windows of at least 20 ms, smoothed.
    fn sample_speed(&mut self, pos: u64, now: Duration) {
        let Some((t0, p0)) = self.last_sample else {
            self.last_sample = Some((now, pos));
            return;
        };
        let dt = now.saturating_sub(t0).as_secs_f64();
        if dt >= 0.02 {
            let v = pos.saturating_sub(p0) as f64 / dt;
            self.speed = if self.speed == 0.0 { v } else { 0.7 * self.speed + 0.3 * v };
            self.last_sample = Some((now, pos));
        }
    }
}

/// Where the loop's part tracking goes: the ejector thread, or a test's stand-in.
pub trait PartTracker: Send {
    /// Admits part `part`, the belt seen over `seen` on the loop's clock (`now` is the time of
    /// the call), as a reject. `false`: no slot was free, the part was rejected at once (raise
    /// the alarm).
    fn admit(&self, part: u64, seen: Span, now: Duration) -> bool;
    /// Records part `part`'s verdict.
    fn resolve(&self, part: u64, reject: bool) -> Resolution;
    /// Counters so far.
    fn counters(&self) -> EjectorCounters;
    /// Serves every part still on its way (each at its time), ends the last pulse and stops.
    fn finish(&mut self);
}

/// A time on the loop's clock up to which a triggered source has seen no part-present edge
/// (shared between the source, which marks it while it waits, and the ejector thread). While
/// the loop waits for the next part, the empty belt is not unseen belt.
#[derive(Clone, Debug, Default)]
pub struct Watermark(Arc<AtomicU64>);

impl Watermark {
    /// Records that no edge came before `t`.
    pub fn mark(&self, t: Duration) {
        self.0.fetch_max(t.as_micros() as u64 + 1, Ordering::Relaxed);
    }

    /// The latest mark.
    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }
}

/// Belt positions as the thread reads them.
#[derive(Clone, Debug)]
pub enum BeltPosition {
    /// Microseconds of the loop's clock.
    Clock,
    /// The running count of the encoder's edges.
    Encoder(Arc<AtomicU64>),
}

impl BeltPosition {
    /// The position now.
    fn at(&self, now: Duration) -> u64 {
        match self {
            BeltPosition::Clock => now.as_micros() as u64,
            BeltPosition::Encoder(c) => c.load(Ordering::Relaxed),
        }
    }

    /// The position at `t` (at or before `now`): the encoder is read now and taken back at
    /// `speed` positions per second.
    fn at_past(&self, t: Duration, now: Duration, speed: f64) -> u64 {
        match self {
            BeltPosition::Clock => t.as_micros() as u64,
            BeltPosition::Encoder(c) => {
                let back = (now.saturating_sub(t).as_secs_f64() * speed).round() as u64;
                c.load(Ordering::Relaxed).saturating_sub(back)
            }
        }
    }
}

struct Shared<P: OutputPin> {
    state: Mutex<(Ejector<P>, bool)>,
    wake: Condvar,
}

impl<P: OutputPin> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, (Ejector<P>, bool)> {
        // A panic elsewhere must not silence the ejector: keep serving the state as it is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The ejector on a thread of its own, owning the reject pin: it wakes at each part's due time
/// (time base) or every half millisecond while parts are on their way (encoder base), and at
/// each pulse's end.
pub struct EjectorThread<P: OutputPin> {
    shared: Arc<Shared<P>>,
    belt: BeltPosition,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<P: OutputPin + Send + 'static> EjectorThread<P> {
    /// Starts serving `ejector`, reading positions from `belt` and time from `clock`;
    /// `idle` is where a triggered source marks the times it saw no part.
    pub fn spawn<C: Clock + Send + 'static>(
        ejector: Ejector<P>,
        belt: BeltPosition,
        clock: C,
        idle: Option<Watermark>,
    ) -> std::io::Result<Self> {
        let base = ejector.placement.base;
        let shared = Arc::new(Shared { state: Mutex::new((ejector, false)), wake: Condvar::new() });
        let (s, b) = (Arc::clone(&shared), belt.clone());
        let thread = std::thread::Builder::new().name("anovit-ejector".into()).spawn(move || {
            let mut g = s.lock();
            let mut stopping_since = None;
            loop {
                let now = clock.now();
                let pos = b.at(now);
                if g.1 {
                    g.0.stop_watching();
                } else if let Some(t) = idle.as_ref().and_then(Watermark::get) {
                    let speed = g.0.speed();
                    g.0.mark_seen(b.at_past(t.min(now), now, speed));
                }
                let next = g.0.service(pos, now);
                let pulse = g.0.pulse_remaining(now);
                if g.1 && next.is_none() && pulse.is_none() {
                    break;
                }
                // A belt that stands still at stop would hold its parts forever: give up after
                // STOP_WAIT, saying so (their rejects did not fire: they never reached the ejector).
                if g.1 && pulse.is_none() && now.saturating_sub(*stopping_since.get_or_insert(now)) > STOP_WAIT {
                    log::error!(
                        "stopping with {} part(s) still on their way to the ejector: the belt did not bring them there within {STOP_WAIT:?}",
                        g.0.in_flight()
                    );
                    break;
                }
                let mut wait = Duration::from_millis(20);
                if let Some(due) = next {
                    wait = wait.min(match base {
                        Base::Time => Duration::from_micros(due.saturating_sub(pos)),
                        Base::Encoder => Duration::from_micros(500),
                    });
                }
                if let Some(left) = pulse {
                    wait = wait.min(left);
                }
                g = s.wake.wait_timeout(g, wait).unwrap_or_else(PoisonError::into_inner).0;
            }
        })?;
        Ok(Self { shared, belt, thread: Some(thread) })
    }
}

impl<P: OutputPin + Send + 'static> PartTracker for EjectorThread<P> {
    fn admit(&self, part: u64, seen: Span, now: Duration) -> bool {
        let mut g = self.shared.lock();
        let speed = g.0.speed();
        let (from, to) = (self.belt.at_past(seen.from, now, speed), self.belt.at_past(seen.to, now, speed));
        let ok = g.0.admit_span(part, from, to, now);
        drop(g);
        self.shared.wake.notify_one();
        ok
    }

    fn resolve(&self, part: u64, reject: bool) -> Resolution {
        let r = self.shared.lock().0.resolve(part, reject);
        self.shared.wake.notify_one();
        r
    }

    fn counters(&self) -> EjectorCounters {
        self.shared.lock().0.counters()
    }

    fn finish(&mut self) {
        self.shared.lock().1 = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the ejector thread panicked");
            }
        }
    }
}

impl<P: OutputPin> Drop for EjectorThread<P> {
    fn drop(&mut self) {
        // Without `finish`, the thread still serves the parts on their way, then ends.
        self.shared.lock().1 = true;
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::{Polarity, RecordingPin};
    use crate::clock::FakeClock;

    const WIDTH: Duration = Duration::from_millis(20);

    fn ejector(placement: Placement, clock: &FakeClock) -> Ejector<RecordingPin<FakeClock, 1024>> {
        let line = RejectLine::new(RecordingPin::new(clock.clone()), Polarity::ActiveHigh, WIDTH).unwrap();
        Ejector::new(placement, line)
    }

    /// Rising edges (pulse starts) recorded by the fake pin.
    fn starts(e: &Ejector<RecordingPin<FakeClock, 1024>>) -> Vec<Duration> {
        e.line().pin().edges().filter(|e| e.high).map(|e| e.at).collect()
    }

    /// A belt at `speed` counts per second (or microseconds per second on the time base): parts
    /// every `spacing` seconds, every third one defective, results `delay` after capture; the
    /// driver services at 100 µs steps. Returns the pulse starts and each defective part's ideal
    /// start (arrival at the ejector minus the lead).
    fn run_belt(
        base: Base,
        speed: f64,
        spacing: f64,
        delay: Duration,
    ) -> (Vec<Duration>, Vec<Duration>, EjectorCounters) {
        let travel_s = 0.8;
        let lead = Duration::from_millis(30);
        let travel = (travel_s * speed).round() as u64;
        let clock = FakeClock::new();
        let mut e = ejector(Placement { base, travel, lead }, &clock);
        let step = Duration::from_micros(100);
        let pos_at = |t: Duration| (t.as_secs_f64() * speed) as u64;
        let (mut ideal, mut pending) = (Vec::new(), Vec::new());
        let mut next_part = Duration::from_millis(100);
        let mut part = 0u64;
        let end = Duration::from_secs(3);
        let mut t = Duration::ZERO;
        while t < end + Duration::from_secs(1) {
            let pos = pos_at(t);
            if t >= next_part && t < end {
                e.admit(part, pos, t);
                let bad = part.is_multiple_of(3);
                if bad {
                    ideal.push(t + Duration::from_secs_f64(travel_s) - lead);
                }
                pending.push((t + delay, part, bad));
                part += 1;
                next_part += Duration::from_secs_f64(spacing);
            }
            // Between parts the loop waits for the next: the belt so far holds no other.
            e.mark_seen(pos);
            pending.retain(|&(at, p, bad)| {
                if at <= t {
                    e.resolve(p, bad);
                }
                at > t
            });
            e.service(pos, t);
            clock.advance(step);
            t += step;
        }
        (starts(&e), ideal, e.counters())
    }

    fn assert_on_time(got: &[Duration], want: &[Duration], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: one pulse per defective part");
        for (g, w) in got.iter().zip(want) {
            let err = g.abs_diff(*w);
            assert!(err <= Duration::from_millis(1), "{what}: pulse at {g:?}, due {w:?} ({err:?} off)");
        }
    }

    #[test]
    fn pulses_land_within_a_millisecond_on_both_bases_at_slow_and_fast_belts() {
        // Encoder: 1000 counts/s is 0.1 m/s at 10 counts/mm; 20000 counts/s is 2 m/s.
        for (base, speed) in [(Base::Encoder, 1_000.0), (Base::Encoder, 20_000.0), (Base::Time, 1e6)] {
            // Parts 100 ms apart, pulses 20 ms wide: no two pulses merge.
            let (got, want, c) = run_belt(base, speed, 0.1, Duration::from_millis(50));
            assert_on_time(&got, &want, &format!("{base:?} at {speed}/s"));
            assert_eq!((c.late, c.overflows), (0, 0));
            assert_eq!(c.pulses as usize, want.len());
            assert_eq!(c.passed + c.pulses, c.admitted, "every part either passed or was rejected");
        }
    }

    #[test]
    fn a_result_after_the_part_reached_the_ejector_is_late_and_the_part_rejected() {
        // Results 0.9 s after capture, travel 0.8 s: every part is rejected, every result late.
        let (got, _, c) = run_belt(Base::Time, 1e6, 0.1, Duration::from_millis(900));
        assert_eq!(c.late, c.admitted);
        assert_eq!((c.passed, c.pulses), (0, c.admitted));
        assert_eq!(got.len() as u64, c.admitted);
    }

    #[test]
    fn an_unresolved_part_is_rejected() {
        let clock = FakeClock::new();
        let mut e = ejector(Placement { base: Base::Time, travel: 1000, lead: Duration::ZERO }, &clock);
        assert!(e.admit(7, 0, Duration::ZERO));
        e.stop_watching();
        assert_eq!(e.service(999, Duration::ZERO), Some(1000));
        assert_eq!(e.counters().pulses, 0);
        assert_eq!(e.service(1000, Duration::from_micros(1000)), None);
        assert_eq!(e.counters().pulses, 1, "no pass came: rejected");
    }

    #[test]
    fn overflow_rejects_at_once_and_reports_it() {
        let clock = FakeClock::new();
        let mut e = ejector(Placement { base: Base::Time, travel: 1_000_000, lead: Duration::ZERO }, &clock);
        for part in 0..CAPACITY as u64 {
            assert!(e.admit(part, part, Duration::ZERO));
        }
        assert!(!e.admit(99, 99, Duration::ZERO), "no free slot");
        let c = e.counters();
        assert_eq!((c.overflows, c.pulses), (1, 1), "the untracked part is rejected now");
        assert!(e.line().is_active());
        assert_eq!(e.resolve(99, false), Resolution::Late, "its result cannot save it");
        assert_eq!(e.in_flight(), CAPACITY);
    }

    /// Services `e` every 100 µs of positions `0..end` at `speed` positions per second; the
    /// line's level at each step.
    fn drive(e: &mut Ejector<RecordingPin<FakeClock, 1024>>, clock: &FakeClock, speed: f64, end: u64) -> Vec<bool> {
        let step = Duration::from_micros(100);
        let mut on = Vec::new();
        let mut t = Duration::ZERO;
        loop {
            let pos = (t.as_secs_f64() * speed).round() as u64;
            if pos > end {
                return on;
            }
            e.service(pos, t);
            on.push(e.line().is_active());
            clock.advance(step);
            t += step;
        }
    }

    #[test]
    fn a_failed_capture_holds_the_line_while_its_whole_span_passes() {
        for (base, speed) in [(Base::Time, 1e6), (Base::Encoder, 5_000.0)] {
            let clock = FakeClock::new();
            let travel = (0.1 * speed) as u64;
            let mut e = ejector(Placement { base, travel, lead: Duration::ZERO }, &clock);
            // The belt from 10 ms to 310 ms was not seen; a part seen at 400 ms passes.
            let (from, to) = ((0.01 * speed) as u64, (0.31 * speed) as u64);
            assert!(e.admit_span(0, from, to, Duration::ZERO));
            assert!(e.admit(1, (0.4 * speed) as u64, Duration::ZERO));
            assert_eq!(e.resolve(1, false), Resolution::InTime);
            e.stop_watching();
            let on = drive(&mut e, &clock, speed, (0.7 * speed) as u64);
            let ms = |i: usize| i as f64 / 10.0;
            let first = on.iter().position(|&o| o).unwrap();
            let last = on.iter().rposition(|&o| o).unwrap();
            assert!((ms(first) - 110.0).abs() <= 0.3, "{base:?}: on at {} ms, due at 110 ms", ms(first));
            assert!(on[first..=last].iter().all(|&o| o), "{base:?}: held without a gap");
            // Until the span's end (410 ms) reaches the ejector, plus one pulse width.
            assert!((ms(last) - 430.0).abs() <= 0.3, "{base:?}: off at {} ms, expected 430 ms", ms(last));
            let c = e.counters();
            assert_eq!((c.pulses, c.passed), (1, 1), "{base:?}: one pulse for the span, the seen part passed");
            assert_eq!(e.line().pin().edges().filter(|e| e.high).count(), 1);
        }
    }

    #[test]
    fn overflow_holds_the_line_until_the_untracked_part_has_passed() {
        let clock = FakeClock::new();
        let mut e = ejector(Placement { base: Base::Time, travel: 100_000, lead: Duration::ZERO }, &clock);
        for part in 0..CAPACITY as u64 {
            assert!(e.admit(part, part * 100, Duration::ZERO));
            e.resolve(part, false);
        }
        assert!(!e.admit(99, 50_000, Duration::ZERO));
        e.stop_watching();
        let on = drive(&mut e, &clock, 1e6, 200_000);
        // Held from now until the untracked part (due at 150 ms) has passed, plus a width.
        let last = on.iter().rposition(|&o| o).unwrap();
        assert!(on[..=last].iter().all(|&o| o));
        assert_eq!(last, 1699, "off at 170 ms");
    }

    #[test]
    fn belt_the_loop_has_not_looked_at_holds_the_line_until_it_catches_up() {
        let clock = FakeClock::new();
        let mut e = ejector(Placement { base: Base::Time, travel: 100_000, lead: Duration::ZERO }, &clock);
        // A part seen at 10 ms passes; then the loop is stuck until 300 ms.
        assert!(e.admit(0, 10_000, Duration::ZERO));
        e.resolve(0, false);
        let step = Duration::from_micros(100);
        let mut on = Vec::new();
        for i in 0..5000u64 {
            let t = step * i as u32;
            if t >= Duration::from_millis(300) {
                // It has caught up and waits for parts: the belt up to now holds none.
                e.mark_seen(t.as_micros() as u64);
            }
            e.service(t.as_micros() as u64, t);
            on.push(e.line().is_active());
            clock.advance(step);
        }
        let first = on.iter().position(|&o| o).unwrap();
        let last = on.iter().rposition(|&o| o).unwrap();
        assert_eq!(first, 1101, "on as soon as belt after the last part seen (10 ms) reaches the ejector");
        assert!(on[first..=last].iter().all(|&o| o));
        assert_eq!(last, 3198, "held until the loop caught up (300 ms), plus a width");
        let c = e.counters();
        assert_eq!((c.unseen, c.pulses, c.passed), (1, 0, 1), "one blind episode; the part seen passed");
        e.stop_watching();
        assert_eq!(e.service(1_000_000, Duration::from_secs(1)), None, "a stopped loop leaves nothing to watch");
    }

    #[test]
    fn watermark_keeps_the_latest_mark() {
        let w = Watermark::default();
        assert_eq!(w.get(), None);
        w.mark(Duration::from_millis(5));
        w.mark(Duration::from_millis(3));
        assert_eq!(w.get(), Some(Duration::from_millis(5)));
        w.mark(Duration::ZERO);
        assert_eq!(w.clone().get(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn encoder_positions_in_the_past_are_taken_back_at_the_belt_speed() {
        let count = Arc::new(AtomicU64::new(10_000));
        let belt = BeltPosition::Encoder(count);
        let now = Duration::from_secs(2);
        assert_eq!(belt.at_past(now - Duration::from_millis(30), now, 2_000.0), 9_940);
        assert_eq!(belt.at_past(Duration::ZERO, now, 1e9), 0, "never before the start");
        assert_eq!(BeltPosition::Clock.at_past(Duration::from_millis(3), now, 0.0), 3_000);
    }

    #[test]
    fn parts_keep_their_order_when_the_lead_changes_with_speed() {
        let clock = FakeClock::new();
        let mut e = ejector(Placement { base: Base::Encoder, travel: 100, lead: Duration::from_millis(10) }, &clock);
        e.service(0, Duration::ZERO);
        // No speed measured yet: no lead, due at 200.
        e.admit(0, 100, Duration::ZERO);
        assert_eq!(e.service(199, Duration::from_millis(20)), Some(200));
        assert!((e.speed() - 9950.0).abs() < 1.0, "{}", e.speed());
        // At ~10000 counts/s the lead is 100 counts: due at 150, but part 0 is ahead of it.
        e.admit(1, 150, Duration::from_millis(20));
        e.stop_watching();
        assert_eq!(e.service(199, Duration::from_millis(21)), Some(200));
        assert_eq!(e.service(200, Duration::from_millis(22)), None, "both served together, in order");
        assert_eq!(e.counters().pulses, 2);
    }
}
