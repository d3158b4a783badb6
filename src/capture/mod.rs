//! Frame sources: where frames come from.
//!
//! A source lends one frame at a time, borrowed from buffers it owns (like the v4l crate's
//! streams), so the steady-state loop copies nothing and allocates nothing.

pub mod convert;
#[cfg(feature = "hw-v4l")]
pub mod feed;
mod prefetch;
mod replay;
mod synthetic;
#[cfg(feature = "hw-v4l")]
pub mod v4l2;

use std::fmt;
use std::time::Duration;

pub use prefetch::Prefetched;
pub use replay::{list_images, ReplaySource};
pub use synthetic::SyntheticSource;

/// Pixel layout of a frame's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Interleaved 8-bit R, G, B.
    Rgb8,
    /// 8-bit luminance.
    Gray8,
    /// Packed 4:2:2 Y0 U Y1 V, as most USB and CSI cameras send it (even width). Kept packed:
    /// the preprocessing converts only the pixels it samples (`convert::yuyv_to_rgb`), which
    /// costs less than converting whole frames.
    Yuyv,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 => 3,
            PixelFormat::Gray8 => 1,
            PixelFormat::Yuyv => 2,
        }
    }
}

/// What is known about a frame besides its pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameMeta {
    /// Sequence number from capture; gaps mean dropped frames.
    pub seq: u64,
    /// Capture time on the loop's clock.
    pub timestamp: Duration,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixel layout.
    pub format: PixelFormat,
    /// Ground truth when the source knows it (synthetic frames, labelled replay folders):
    /// `Some(true)` for a defective part.
    pub truth: Option<bool>,
    /// Label for logs (defect type or file stem), fixed capacity so that it never allocates.
    pub label: heapless::String<32>,
}

impl FrameMeta {
    /// Metadata of a `width` x `height` frame with no sequence number, time or label yet.
    pub fn new(width: usize, height: usize, format: PixelFormat) -> Self {
        Self { seq: 0, timestamp: Duration::ZERO, width, height, format, truth: None, label: heapless::String::new() }
    }
}

/// A frame lent by a source until its next call.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Pixel bytes, `width * height * bytes_per_pixel`, rows without padding.
    pub data: &'a [u8],
    /// Metadata.
    pub meta: &'a FrameMeta,
}

/// Why a source could not deliver a frame. The loop counts it and gives the part the safe verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaptureError {
    /// The frame's bytes could not be decoded or have the wrong size.
    Corrupt,
    /// No frame arrived in time.
    Timeout,
    /// The device went away.
    Disconnected,
    /// Triggered capture: no frame was exposed while the part was in view (the camera or the
    /// loop fell behind), so the part was never seen.
    Missed,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaptureError::Corrupt => "corrupt frame",
            CaptureError::Timeout => "camera timeout",
            CaptureError::Disconnected => "camera disconnected",
            CaptureError::Missed => "part not imaged in time",
        })
    }
}

impl std::error::Error for CaptureError {}

/// What a source counts about frames the loop never saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Frames the camera produced that were lost before capture (driver sequence gaps).
    pub dropped: u64,
    /// Times no frame came within the timeout.
    pub timeouts: u64,
    /// Times the device was reopened after it went away.
    pub reopened: u64,
    /// Trigger edges received (triggered capture).
    pub triggers: u64,
    /// Frames read and discarded because they were exposed before the part's trigger.
    pub skipped: u64,
}

/// A part-present input: a file descriptor that becomes readable on an edge.
pub trait Trigger: Send {
    /// Descriptor to poll for readability.
    fn fd(&self) -> std::os::fd::RawFd;

    /// Reads the pending edge: its time on CLOCK_MONOTONIC.
    fn read_edge(&mut self) -> std::io::Result<Duration>;
}

/// A camera, or anything that stands in for one.
pub trait FrameSource {
    /// The next frame, `Ok(None)` at the end of a finite source. `now` stamps frames from
    /// sources without a hardware clock.
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError>;

    /// Largest frame this source can deliver, for sizing buffers at start-up.
    fn max_size(&self) -> (usize, usize);

    /// Counts of frames lost before capture and of device trouble.
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
}

impl<T: FrameSource + ?Sized> FrameSource for Box<T> {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        (**self).next_frame(now)
    }

    fn max_size(&self) -> (usize, usize) {
        (**self).max_size()
    }

    fn stats(&self) -> SourceStats {
        (**self).stats()
    }
}

/// A source that ends after `n` parts (frames or capture faults), for runs of a fixed length
/// on an endless camera.
pub struct Limited<S> {
    inner: S,
    left: u64,
}

impl<S: FrameSource> Limited<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, n: u64) -> Self {
        Self { inner, left: n }
    }
}

impl<S: FrameSource> FrameSource for Limited<S> {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.inner.next_frame(now)
    }

    fn max_size(&self) -> (usize, usize) {
        self.inner.max_size()
    }

    fn stats(&self) -> SourceStats {
        self.inner.stats()
    }
}
