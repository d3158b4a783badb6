//! The reject line: any `embedded_hal::digital::OutputPin`, pulsed for a fixed width.
//!
//! Wiring quirks live in one pure function, [`line_level`]: active-low outputs and the
//! "good = energised" convention (the line is energised while parts pass and drops to reject,
//! so that a crash or power loss rejects by default).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorType, OutputPin, PinState};

use crate::clock::Clock;

/// How the reject line is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Polarity {
    /// Line high while rejecting.
    #[default]
    ActiveHigh,
    /// Line low while rejecting.
    ActiveLow,
    /// Line high while idle (parts pass), low while rejecting: power loss rejects.
    GoodEnergised,
}

/// Electrical level for a logical reject state.
pub fn line_level(rejecting: bool, polarity: Polarity) -> PinState {
    let high = match polarity {
        Polarity::ActiveHigh => rejecting,
        Polarity::ActiveLow | Polarity::GoodEnergised => !rejecting,
    };
    PinState::from(high)
}

/// A reject output that fires pulses of a fixed width and releases them on [`RejectLine::poll`].
#[derive(Debug)]
pub struct RejectLine<P: OutputPin> {
    pin: P,
    polarity: Polarity,
    width: Duration,
    release_at: Option<Duration>,
    pulses: u64,
}

impl<P: OutputPin> RejectLine<P> {
    /// Takes the pin and drives it to the idle (not rejecting) level.
    pub fn new(mut pin: P, polarity: Polarity, width: Duration) -> Result<Self, P::Error> {
        pin.set_state(line_level(false, polarity))?;
        Ok(Self { pin, polarity, width, release_at: None, pulses: 0 })
    }

    /// Starts a reject pulse now. A reject while a pulse is on extends it to a full width from
    /// now: the ejector stays on for both parts (a dip of microseconds between them would be
    /// invisible to an air valve and to a PLC input filter, so none is made).
    pub fn fire(&mut self, now: Duration) -> Result<(), P::Error> {
        // Written even when already on: a timed output restarts its own timer on it.
        self.pin.set_state(line_level(true, self.polarity))?;
        self.release_at = Some(now + self.width);
        self.pulses += 1;
        Ok(())
    }

    /// Keeps the line rejecting until at least a full width from now without counting a new
    /// pulse: a span of belt held rejected across several widths.
    pub fn hold(&mut self, now: Duration) -> Result<(), P::Error> {
        self.pin.set_state(line_level(true, self.polarity))?;
        self.release_at = Some(self.release_at.map_or(now + self.width, |t| t.max(now + self.width)));
        Ok(())
    }

    /// Ends the pulse once its width has elapsed.
    pub fn poll(&mut self, now: Duration) -> Result<(), P::Error> {
        if self.release_at.is_some_and(|t| now >= t) {
            self.pin.set_state(line_level(false, self.polarity))?;
            self.release_at = None;
        }
        Ok(())
    }

    /// Time left of the active pulse, if any.
    pub fn remaining(&self, now: Duration) -> Option<Duration> {
        self.release_at.map(|t| t.saturating_sub(now))
    }

    /// Whether a pulse is active.
    pub fn is_active(&self) -> bool {
        self.release_at.is_some()
    }

    /// Pulses fired so far.
    pub fn pulses(&self) -> u64 {
        self.pulses
    }

    /// The pin (tests read a recording pin's edges through this).
    pub fn pin(&self) -> &P {
        &self.pin
    }

    /// Ends any pulse and returns the pin.
    pub fn release(mut self) -> Result<P, P::Error> {
        self.pin.set_state(line_level(false, self.polarity))?;
        Ok(self.pin)
    }
}

/// An output pin behind a trait object, so that optional indicator lines do not multiply the
/// loop's type parameters.
pub trait LevelPin: Send {
    /// Drives the line high or low.
    fn set_level(&mut self, high: bool) -> Result<(), String>;
}

impl<P: OutputPin + Send> LevelPin for P {
    fn set_level(&mut self, high: bool) -> Result<(), String> {
        self.set_state(PinState::from(high)).map_err(|e| format!("{e:?}"))
    }
}

/// An on/off indicator (health/ready): written only when its state changes.
pub struct StatusLine {
    pin: Box<dyn LevelPin>,
    active_low: bool,
    on: Option<bool>,
    changes: u64,
}

impl StatusLine {
    /// Takes the pin and drives it off.
    pub fn new(pin: Box<dyn LevelPin>, active_low: bool) -> Result<Self, String> {
        let mut s = Self { pin, active_low, on: None, changes: 0 };
        s.set(false)?;
        s.changes = 0;
        Ok(s)
    }

    /// Turns the indicator on or off (no write when unchanged).
    pub fn set(&mut self, on: bool) -> Result<(), String> {
        if self.on == Some(on) {
            return Ok(());
        }
        self.pin.set_level(on != self.active_low)?;
        self.on = Some(on);
        self.changes += 1;
        Ok(())
    }

    /// Current state (`None` before the first successful write).
    pub fn is_on(&self) -> Option<bool> {
        self.on
    }

    /// State changes so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

impl std::fmt::Debug for StatusLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusLine").field("on", &self.on).field("active_low", &self.active_low).finish()
    }
}

/// One level change seen by a [`RecordingPin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// When, on the pin's clock.
    pub at: Duration,
    /// New level (true = high).
    pub high: bool,
}

/// Host stand-in for a GPIO line: remembers the last `N` level changes with their times.
#[derive(Debug)]
pub struct RecordingPin<C: Clock, const N: usize = 1024> {
    clock: C,
    level: Option<bool>,
    edges: heapless::Deque<Edge, N>,
    changes: u64,
}

impl<C: Clock, const N: usize> RecordingPin<C, N> {
    /// A pin with no level set yet.
    pub fn new(clock: C) -> Self {
        Self { clock, level: None, edges: heapless::Deque::new(), changes: 0 }
    }

    /// The most recent level changes, oldest first.
    pub fn edges(&self) -> impl Iterator<Item = &Edge> {
        self.edges.iter()
    }

    /// Level changes since creation (including those no longer remembered).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Current level.
    pub fn is_high(&self) -> Option<bool> {
        self.level
    }

    fn set(&mut self, high: bool) {
        if self.level == Some(high) {
            return;
        }
        self.level = Some(high);
        self.changes += 1;
        if self.edges.is_full() {
            self.edges.pop_front();
        }
        let _ = self.edges.push_back(Edge { at: self.clock.now(), high });
    }
}

impl<C: Clock, const N: usize> ErrorType for RecordingPin<C, N> {
    type Error = core::convert::Infallible;
}

impl<C: Clock, const N: usize> OutputPin for RecordingPin<C, N> {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.set(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.set(true);
        Ok(())
    }
}

/// A real-time output for the reject line: it ends each pulse itself, on time, from a timer
/// thread, while the loop is busy with the next frame (the loop only polls between frames,
/// which could stretch a pulse to a whole frame period). [`RejectLine`] drives it as any pin;
/// its own release on the next poll then finds the line already idle.
pub struct TimedPin<P: OutputPin + Send + 'static> {
    shared: Arc<(Mutex<Timed<P>>, Condvar)>,
    active: PinState,
    width: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Timed<P> {
    pin: P,
    release_at: Option<Instant>,
    idle: PinState,
    stop: bool,
}

impl<P: OutputPin + Send + 'static> TimedPin<P> {
    /// Wraps `pin`, whose rejecting level is `line_level(true, polarity)`, ending pulses after
    /// `width`.
    pub fn spawn(pin: P, polarity: Polarity, width: Duration) -> std::io::Result<Self> {
        let (active, idle) = (line_level(true, polarity), line_level(false, polarity));
        let shared = Arc::new((Mutex::new(Timed { pin, release_at: None, idle, stop: false }), Condvar::new()));
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("reject-timer".into()).spawn(move || release_loop(&worker))?;
        Ok(Self { shared, active, width, thread: Some(thread) })
    }
}

fn release_loop<P: OutputPin>(shared: &(Mutex<Timed<P>>, Condvar)) {
    let (lock, cv) = shared;
    // A poisoned lock means the loop thread panicked mid-write; keep ending pulses regardless.
    let mut t = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !t.stop {
        t = match t.release_at {
            Some(at) if Instant::now() >= at => {
                let idle = t.idle;
                if let Err(e) = t.pin.set_state(idle) {
                    log::error!("reject line: cannot end the pulse: {e:?}");
                }
                t.release_at = None;
                t
            }
            Some(at) => cv.wait_timeout(t, at - Instant::now()).unwrap_or_else(|e| e.into_inner()).0,
            None => cv.wait(t).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

impl<P: OutputPin + Send + 'static> Drop for TimedPin<P> {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<P: OutputPin + Send + 'static> ErrorType for TimedPin<P> {
    type Error = P::Error;
}

impl<P: OutputPin + Send + 'static> OutputPin for TimedPin<P> {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.set_state(PinState::Low)
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.set_state(PinState::High)
    }

    fn set_state(&mut self, state: PinState) -> Result<(), Self::Error> {
        let (lock, cv) = &*self.shared;
        let mut t = lock.lock().unwrap_or_else(|e| e.into_inner());
        t.pin.set_state(state)?;
        t.release_at = (state == self.active).then(|| Instant::now() + self.width);
        cv.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{FakeClock, MonotonicClock};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn polarity_table() {
        assert_eq!(line_level(true, Polarity::ActiveHigh), PinState::High);
        assert_eq!(line_level(false, Polarity::ActiveHigh), PinState::Low);
        assert_eq!(line_level(true, Polarity::ActiveLow), PinState::Low);
        assert_eq!(line_level(false, Polarity::GoodEnergised), PinState::High);
        assert_eq!(line_level(true, Polarity::GoodEnergised), PinState::Low);
    }

    #[test]
    fn pulses_have_the_configured_width() {
        let clock = FakeClock::new();
        let pin: RecordingPin<_, 16> = RecordingPin::new(clock.clone());
        let mut line = RejectLine::new(pin, Polarity::ActiveHigh, 30 * MS).unwrap();
        clock.advance(10 * MS);
        line.fire(clock.now()).unwrap();
        clock.advance(29 * MS);
        line.poll(clock.now()).unwrap();
        assert!(line.is_active());
        clock.advance(MS);
        line.poll(clock.now()).unwrap();
        assert!(!line.is_active());
        let e: Vec<_> = line.pin().edges().copied().collect();
        assert_eq!(
            e,
            vec![
                Edge { at: Duration::ZERO, high: false },
                Edge { at: 10 * MS, high: true },
                Edge { at: 40 * MS, high: false }
            ]
        );
        assert_eq!(line.pulses(), 1);
    }

    #[test]
    fn back_to_back_rejects_extend_the_pulse_and_good_energised_idles_high() {
        let clock = FakeClock::new();
        let pin: RecordingPin<_, 16> = RecordingPin::new(clock.clone());
        let mut line = RejectLine::new(pin, Polarity::GoodEnergised, 30 * MS).unwrap();
        assert_eq!(line.pin().is_high(), Some(true));
        line.fire(clock.now()).unwrap();
        clock.advance(5 * MS);
        line.fire(clock.now()).unwrap();
        assert_eq!(line.pulses(), 2, "both rejects are counted");
        assert_eq!(line.pin().changes(), 2, "one pulse: idle -> reject, no dip between the parts");
        clock.advance(29 * MS);
        line.poll(clock.now()).unwrap();
        assert!(line.is_active(), "the second reject restarted the width");
        clock.advance(MS);
        line.poll(clock.now()).unwrap();
        assert!(!line.is_active());
        let pin = line.release().unwrap();
        assert_eq!(pin.is_high(), Some(true));
    }

    #[test]
    fn timed_pin_ends_the_pulse_while_the_loop_is_busy() {
        let clock = MonotonicClock::new();
        let width = 20 * MS;
        let pin = TimedPin::spawn(RecordingPin::<_, 16>::new(clock), Polarity::ActiveLow, width).unwrap();
        let mut line = RejectLine::new(pin, Polarity::ActiveLow, width).unwrap();
        line.fire(clock.now()).unwrap();
        // The loop does not poll for 50 widths (a slow inference): the timer ends the pulse.
        std::thread::sleep(50 * width);
        let shared = Arc::clone(&line.pin().shared);
        let t = shared.0.lock().unwrap();
        let edges: Vec<Edge> = t.pin.edges().copied().collect();
        assert_eq!(edges.iter().map(|e| e.high).collect::<Vec<_>>(), [true, false, true], "idle, pulse, idle");
        assert!(edges[2].at - edges[1].at >= width, "the pulse ended early: {:?}", edges[2].at - edges[1].at);
    }
}
