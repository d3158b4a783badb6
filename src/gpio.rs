//! GPIO character-device lines through linux-embedded-hal (feature `hw-gpio`): chips and lines
//! chosen by path, label, offset or name, so profiles survive chip renumbering.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use embedded_hal::digital::PinState;
use linux_embedded_hal::gpio_cdev::{chips, Chip, EventRequestFlags, Line, LineEventHandle, LineRequestFlags};
use linux_embedded_hal::CdevPin;

pub use crate::board::{Edges, LineSpec};
use crate::capture::Trigger;
use crate::error::Error;

/// Opens a chip by device path (`/dev/gpiochip0`), device name (`gpiochip0`) or label
/// (`pinctrl-bcm2711`, a gpio-sim chip's label).
fn find_chip(spec: &str) -> Result<Chip, String> {
    if spec.starts_with('/') {
        return Chip::new(spec).map_err(|e| format!("cannot open the chip: {e}"));
    }
    let mut seen = Vec::new();
    for chip in chips().map_err(|e| format!("cannot list GPIO chips: {e}"))?.flatten() {
        if chip.name() == spec || chip.label() == spec {
            return Ok(chip);
        }
        seen.push(format!("{} ({})", chip.name(), chip.label()));
    }
    Err(format!(
        "no chip with that name or label; found: {}",
        if seen.is_empty() { "none".into() } else { seen.join(", ") }
    ))
}

/// The offset of a line given by offset or name.
fn line_offset(c: &Chip, line: &LineSpec) -> Result<u32, String> {
    match line {
        LineSpec::Offset(n) => Ok(*n),
        LineSpec::Name(name) => c
            .lines()
            .find(|l| l.info().ok().and_then(|i| i.name().map(|n| n == name)).unwrap_or(false))
            .map(|l| l.offset())
            .ok_or_else(|| format!("the chip has no line named {name:?}")),
    }
}

/// A start-up error about `line` of `chip`.
fn gpio_error(chip: &str, line: &LineSpec, why: String) -> Error {
    Error::Gpio { chip: chip.to_string(), line: line.to_string(), why }
}

/// The line a profile names, on the chip it names.
fn find_line(chip: &str, line: &LineSpec) -> Result<Line, Error> {
    let err = |why| gpio_error(chip, line, why);
    let mut c = find_chip(chip).map_err(err)?;
    let offset = line_offset(&c, line).map_err(err)?;
    c.get_line(offset).map_err(|e| err(format!("no such line: {e}")))
}

/// Requests a line as an output owned by `anovit` (shown as `consumer` in `gpioinfo`), starting
/// at `initial`.
pub fn open_output(chip: &str, line: &LineSpec, initial: PinState, consumer: &str) -> Result<CdevPin, Error> {
    let err = |why| gpio_error(chip, line, why);
    let handle = find_line(chip, line)?
        .request(LineRequestFlags::OUTPUT, u8::from(initial == PinState::High), consumer)
        .map_err(|e| err(format!("cannot request it as an output (is another program holding it?): {e}")))?;
    CdevPin::new(handle).map_err(|e| err(e.to_string()))
}

/// A GPIO input delivering edge events from the kernel, with kernel timestamps.
pub struct EdgeInput {
    handle: LineEventHandle,
}

impl EdgeInput {
    /// Requests `line` of `chip` as an input reporting `edges`.
    pub fn open(chip: &str, line: &LineSpec, edges: Edges, consumer: &str) -> Result<Self, Error> {
        let l = find_line(chip, line)?;
        let flags = match edges {
            Edges::Rising => EventRequestFlags::RISING_EDGE,
            Edges::Falling => EventRequestFlags::FALLING_EDGE,
            Edges::Both => EventRequestFlags::BOTH_EDGES,
        };
        let handle = l
            .events(LineRequestFlags::INPUT, flags, consumer)
            .map_err(|e| gpio_error(chip, line, format!("cannot request it as an input with edge events: {e}")))?;
        Ok(Self { handle })
    }

    /// Blocks until the next edge; its kernel timestamp (CLOCK_MONOTONIC).
    pub fn next_edge(&mut self) -> std::io::Result<Duration> {
        let ev = self.handle.get_event().map_err(std::io::Error::other)?;
        Ok(Duration::from_nanos(ev.timestamp()))
    }
}

impl Trigger for EdgeInput {
    fn fd(&self) -> RawFd {
        self.handle.file().as_raw_fd()
    }

    fn read_edge(&mut self) -> std::io::Result<Duration> {
        self.next_edge()
    }
}

/// Counts edges of an encoder (or any pulse input) on a thread of its own, so that no edge is
/// missed while the loop is busy; the count is read lock-free.
pub struct EdgeCounter {
    count: Arc<AtomicU64>,
}

impl EdgeCounter {
    /// Starts counting `input`'s edges.
    pub fn spawn(mut input: EdgeInput) -> std::io::Result<Self> {
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        std::thread::Builder::new().name("encoder".into()).spawn(move || loop {
            match input.next_edge() {
                Ok(_) => {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    log::error!("encoder input stopped: {e}");
                    return;
                }
            }
        })?;
        Ok(Self { count })
    }

    /// A handle on the running count.
    pub fn count(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }
}
