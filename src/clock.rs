//! Time as a parameter: the loop and every timing rule read a [`Clock`], never `Instant::now()`
//! directly, so tests drive them with a [`FakeClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock: time since an arbitrary start.
pub trait Clock {
    /// Time now.
    fn now(&self) -> Duration;
}

/// The real monotonic clock, counted from its creation.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    /// Starts counting now.
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to, or by a fixed step on every reading. Clones share
/// the same time, so a test can hold one and give another to the code under test.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
    step: u64,
}

impl FakeClock {
    /// Starts at zero and moves only by [`Self::advance`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts at zero and also moves by `step` after every reading.
    pub fn ticking(step: Duration) -> Self {
        Self { nanos: Arc::default(), step: step.as_nanos() as u64 }
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.fetch_add(self.step, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_is_shared_and_ticks() {
        let c = FakeClock::ticking(Duration::from_millis(2));
        let d = c.clone();
        assert_eq!(c.now(), Duration::ZERO);
        assert_eq!(d.now(), Duration::from_millis(2));
        d.advance(Duration::from_millis(10));
        assert_eq!(c.now(), Duration::from_millis(14));
    }
}
