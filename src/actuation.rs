//! The reject line: any `embedded_hal::digital::OutputPin`, pulsed for a fixed width.
//!
//! Wiring quirks live in one pure function, [`line_level`]: active-low outputs and the
//! "good = energised" convention (the line is energised while parts pass and drops to reject,
//! so that a crash or power loss rejects by default).

use std::time::Duration;

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

    /// Starts a reject pulse now. A pulse still active is ended first, so that every reject
    /// shows as its own edge.
    pub fn fire(&mut self, now: Duration) -> Result<(), P::Error> {
        if self.release_at.is_some() {
            self.pin.set_state(line_level(false, self.polarity))?;
        }
        self.pin.set_state(line_level(true, self.polarity))?;
        self.release_at = Some(now + self.width);
        self.pulses += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

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
    fn back_to_back_rejects_give_separate_edges_and_good_energised_idles_high() {
        let clock = FakeClock::new();
        let pin: RecordingPin<_, 16> = RecordingPin::new(clock.clone());
        let mut line = RejectLine::new(pin, Polarity::GoodEnergised, 30 * MS).unwrap();
        assert_eq!(line.pin().is_high(), Some(true));
        line.fire(clock.now()).unwrap();
        clock.advance(5 * MS);
        line.fire(clock.now()).unwrap();
        assert_eq!(line.pulses(), 2);
        assert_eq!(line.pin().changes(), 4);
        let pin = line.release().unwrap();
        assert_eq!(pin.is_high(), Some(true));
    }
}
