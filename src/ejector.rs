//! The reject decision travels with the part to the ejector (`../shared/notes/line-practice.md`).
//!
//! Every part is a reject from the moment it is seen until a pass confirms it in time: the
//! tracker holds one slot per part between the camera and the ejector, keyed by the belt
//! position where its pulse must start (the part's position at capture, plus the camera-to-ejector
//! travel, minus the actuator's lead). Positions are encoder counts when the belt has an encoder,
//! else microseconds of the loop's clock (travel = distance / belt speed). A result that comes
//! after its part's slot has been served cannot save it: the part was rejected and the result is
//! counted as late. A part that finds no free slot cannot be tracked: it is rejected at once and
//! the overflow raises the alarm (the line must stop). Capacity is fixed (heapless): nothing is
//! allocated per part.
//!
//! [`Ejector::service`] is the whole timing logic, driven by any clock and position; a thread
//! ([`Ejector::spawn`]) calls it at the next due time (time base) or every half millisecond
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
    reject: bool,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
        }
    }

    /// Admits part `part`, seen at belt position `at` (time `now`), as a reject until
    /// [`Self::resolve`] says otherwise. Returns `false` when no slot was free: the part was
    /// rejected at once (the caller raises the alarm).
    pub fn admit(&mut self, part: u64, at: u64, now: Duration) -> bool {
        self.counters.admitted += 1;
        let lead = match self.placement.base {
            Base::Time => self.placement.lead.as_micros() as u64,
            Base::Encoder => (self.placement.lead.as_secs_f64() * self.speed).round() as u64,
        };
        // Parts keep their order on the belt: none can reach the ejector before the one ahead.
        let earliest = self.slots.back().map_or(0, |s| s.fire_at);
        let fire_at = (at + self.placement.travel).saturating_sub(lead).max(earliest);
        if self.slots.push_back(Slot { part, fire_at, reject: true }).is_err() {
            self.counters.overflows += 1;
            self.fire(now);
            return false;
        }
        true
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

    /// Serves every slot due at belt position `pos` (time `now`) and ends a pulse whose width
    /// has passed. Returns when to call again: the position of the next slot, if any.
    pub fn service(&mut self, pos: u64, now: Duration) -> Option<u64> {
        self.sample_speed(pos, now);
        if self.line.poll(now).is_err() {
            self.counters.output_errors += 1;
        }
        while let Some(slot) = self.slots.front().copied().filter(|s| s.fire_at <= pos) {
            self.slots.pop_front();
            if slot.reject {
                self.fire(now);
            } else {
                self.counters.passed += 1;
            }
        }
        self.slots.front().map(|s| s.fire_at)
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
    /// Admits part `part`, captured at `captured_at` on the loop's clock, as a reject. `false`:
    /// no slot was free, the part was rejected at once (raise the alarm).
    fn admit(&self, part: u64, captured_at: Duration) -> bool;
    /// Records part `part`'s verdict.
    fn resolve(&self, part: u64, reject: bool) -> Resolution;
    /// Counters so far.
    fn counters(&self) -> EjectorCounters;
    /// Serves every part still on its way (each at its time), ends the last pulse and stops.
    fn finish(&mut self);
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
    fn at(&self, now: Duration) -> u64 {
        match self {
            BeltPosition::Clock => now.as_micros() as u64,
            BeltPosition::Encoder(c) => c.load(Ordering::Relaxed),
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
    /// Starts serving `ejector`, reading positions from `belt` and time from `clock`.
    pub fn spawn<C: Clock + Send + 'static>(
        ejector: Ejector<P>,
        belt: BeltPosition,
        clock: C,
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
    fn admit(&self, part: u64, captured_at: Duration) -> bool {
        let at = self.belt.at(captured_at);
        let ok = self.shared.lock().0.admit(part, at, captured_at);
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
        assert_eq!(e.service(199, Duration::from_millis(21)), Some(200));
        assert_eq!(e.service(200, Duration::from_millis(22)), None, "both served together, in order");
        assert_eq!(e.counters().pulses, 2);
    }
}
