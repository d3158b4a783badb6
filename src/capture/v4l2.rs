//! V4L2 cameras through the `v4l` crate: mmap streaming with a fixed buffer ring, frames
//! converted into one buffer owned by the source, driver sequence numbers and timestamps,
//! dropped-frame detection, and reopening after the device comes back.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::io::traits::CaptureStream;
use v4l::prelude::{Device, MmapStream};
use v4l::video::Capture;
use v4l::{Format, FourCC};

use super::convert::{convert, CameraFormat};
use super::{CaptureError, Frame, FrameMeta, FrameSource, SourceStats, Trigger};
use crate::ejector::Watermark;
use crate::error::Error;

/// What to open and how (from the board profile's `[camera]`).
#[derive(Clone, Debug, PartialEq)]
pub struct V4l2Config {
    /// A device path (`/dev/video0`) or a card name as the driver reports it (`vivid`, or the
    /// start of a webcam's name): names survive renumbering when cameras are replugged.
    pub device: String,
    /// Pixel format; `None` takes the first the camera offers of YUYV, RGB24, GREY, MJPEG.
    pub format: Option<CameraFormat>,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second asked of the driver (VIDIOC_S_PARM).
    pub fps: u32,
    /// Buffers in the mmap ring.
    pub buffers: u32,
    /// No frame for this long is a stall.
    pub timeout: Duration,
}

/// What was agreed with the driver.
#[derive(Clone, Debug, PartialEq)]
pub struct Negotiated {
    /// Device node opened.
    pub path: PathBuf,
    /// Card name reported by the driver.
    pub card: String,
    /// Driver name.
    pub driver: String,
    /// Pixel format.
    pub format: CameraFormat,
    /// Frame size.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Bytes per row in the driver's buffers.
    pub stride: u32,
    /// Frame rate the driver set, frames per second.
    pub fps: f64,
}

struct Open {
    stream: Option<MmapStream<'static>>,
    // Declared after the stream: the ring must be unmapped before the descriptor closes.
    dev: Device,
    neg: Negotiated,
}

/// A V4L2 capture device as a [`FrameSource`].
pub struct V4l2Source {
    cfg: V4l2Config,
    open: Option<Open>,
    neg: Negotiated,
    pixels: Vec<u8>,
    meta: FrameMeta,
    last_seq: Option<u32>,
    stats: SourceStats,
    /// CLOCK_MONOTONIC minus the loop's clock, to put driver timestamps on the loop's clock.
    mono_offset: Option<Duration>,
    trigger: Option<Box<dyn Trigger>>,
    trigger_delay: Duration,
    /// Where the trigger wait marks the times it saw no part (for the ejector).
    idle: Option<Watermark>,
}

impl V4l2Source {
    /// Opens the device and negotiates format, size and rate. Failing here is a set-up error
    /// with a message for the integrator; failures once running become [`CaptureError`]s.
    pub fn open(cfg: V4l2Config) -> Result<Self, Error> {
        let open = open_device(&cfg).map_err(|why| Error::Camera { device: cfg.device.clone(), why })?;
        let neg = open.neg.clone();
        let (w, h) = (neg.width as usize, neg.height as usize);
        let format = neg.format.output();
        let meta = FrameMeta::new(w, h, format);
        Ok(Self {
            cfg,
            open: Some(open),
            neg,
            pixels: vec![0; w * h * format.bytes_per_pixel()],
            meta,
            last_seq: None,
            stats: SourceStats::default(),
            mono_offset: None,
            trigger: None,
            trigger_delay: Duration::ZERO,
            idle: None,
        })
    }

    /// Inspects one part per trigger edge (a part-present sensor): the first frame exposed at
    /// least `delay` after the edge, and within two frame periods of that (later, the part has
    /// moved on: it was missed). The part's time is its edge plus `delay`, which is where the
    /// ejector counts from. Frames between parts are read and discarded (`skipped`); while no
    /// edge comes, `idle` is marked with the time.
    pub fn with_trigger(mut self, trigger: Box<dyn Trigger>, delay: Duration, idle: Watermark) -> Self {
        self.trigger = Some(trigger);
        self.trigger_delay = delay;
        self.idle = Some(idle);
        self
    }

    /// One frame period at the negotiated rate (30 fps when the driver did not say).
    fn frame_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / if self.neg.fps > 0.0 { self.neg.fps } else { 30.0 })
    }

    /// What was agreed with the driver.
    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    /// Closes the device (after it failed), so that it can be unloaded or replugged.
    fn close(&mut self) {
        if let Some(mut o) = self.open.take() {
            // The v4l crate panics in drop when stopping a broken stream fails in unusual ways;
            // a vanished camera must never take the inspection loop down with it.
            let stream = o.stream.take();
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream))).is_err() {
                log::warn!("camera {}: the stream did not stop cleanly", self.neg.path.display());
            }
        }
        self.last_seq = None;
    }

    /// Tries to reopen the camera until `timeout` has passed. The same size and format are
    /// required: the loop's buffers were sized for them.
    fn reopen(&mut self) -> Result<(), CaptureError> {
        let until = Instant::now() + self.cfg.timeout;
        loop {
            match open_device(&self.cfg) {
                Ok(o)
                    if o.neg.format == self.neg.format
                        && (o.neg.width, o.neg.height) == (self.neg.width, self.neg.height) =>
                {
                    log::warn!("camera {} is back ({})", o.neg.path.display(), o.neg.card);
                    self.neg = o.neg.clone();
                    self.open = Some(o);
                    self.stats.reopened += 1;
                    return Ok(());
                }
                Ok(o) => {
                    log::error!(
                        "camera {} came back as {:?} {}x{}, not {:?} {}x{}: not using it",
                        o.neg.path.display(),
                        o.neg.format,
                        o.neg.width,
                        o.neg.height,
                        self.neg.format,
                        self.neg.width,
                        self.neg.height
                    );
                }
                Err(why) => log::debug!("camera {} not back yet: {why}", self.cfg.device),
            }
            if Instant::now() >= until {
                return Err(CaptureError::Disconnected);
            }
            std::thread::sleep(Duration::from_millis(100).min(self.cfg.timeout));
        }
    }

    fn loop_time(&mut self, ts: v4l::timestamp::Timestamp, flags: BufFlags, now: Duration) -> Duration {
        let Some(at) = monotonic(ts, flags) else { return now };
        self.mono_to_loop(at, now)
    }

    /// A CLOCK_MONOTONIC time on the loop's clock (`now` is the loop's time of the call).
    fn mono_to_loop(&mut self, at: Duration, now: Duration) -> Duration {
        let offset = *self.mono_offset.get_or_insert_with(|| monotonic_now().saturating_sub(now));
        // A clock running ahead of ours is not to be trusted.
        at.saturating_sub(offset).min(now)
    }

    /// Creates the buffer ring if the stream was (re)started.
    fn ensure_stream(&mut self) -> Result<(), CaptureError> {
        let Some(o) = self.open.as_mut() else { return Err(CaptureError::Disconnected) };
        if o.stream.is_some() {
            return Ok(());
        }
        match MmapStream::with_buffers(&o.dev, Type::VideoCapture, self.cfg.buffers) {
            Ok(mut s) => {
                s.set_timeout(self.cfg.timeout);
                o.stream = Some(s);
                Ok(())
            }
            Err(e) => {
                log::error!("camera {}: cannot map its buffers: {e}", o.neg.path.display());
                self.close();
                Err(CaptureError::Disconnected)
            }
        }
    }

    /// What a failed dequeue means for the loop, after cleaning up.
    fn stream_failed(&mut self, e: io::Error) -> CaptureError {
        if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) {
            // The crate's stream cannot resume after a failed dequeue (its buffer is already
            // queued again): restart streaming on the next call. A signal (SIGTERM while
            // waiting) is no stall, but this part has no frame either.
            if let Some(o) = self.open.as_mut() {
                o.stream = None;
            }
            self.last_seq = None;
            if e.kind() == io::ErrorKind::TimedOut {
                self.stats.timeouts += 1;
            }
            return CaptureError::Timeout;
        }
        log::error!("camera {}: {e}; closing it and waiting for it to come back", self.neg.path.display());
        self.close();
        CaptureError::Disconnected
    }

    /// Waits for the next trigger edge, dequeuing camera frames meanwhile (unconverted) so that
    /// the ring holds fresh frames and the driver drops none. Its CLOCK_MONOTONIC time, or `None`
    /// when a signal (SIGTERM) ends the wait. No frame for the camera timeout is a stall.
    fn wait_for_trigger(&mut self) -> Result<Option<Duration>, CaptureError> {
        let timeout_ms = i32::try_from(self.cfg.timeout.as_millis()).unwrap_or(i32::MAX);
        loop {
            let (Some(trigger), Some(stream)) =
                (self.trigger.as_mut(), self.open.as_ref().and_then(|o| o.stream.as_ref()))
            else {
                return Err(CaptureError::Disconnected);
            };
            let mut fds = [
                libc::pollfd { fd: trigger.fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stream.handle().fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: poll reads and writes the two pollfd entries of the array it is given.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    return Ok(None);
                }
                return Err(self.stream_failed(io::Error::last_os_error()));
            }
            if n == 0 {
                return Err(self.stream_failed(io::Error::new(io::ErrorKind::TimedOut, "no frame while waiting")));
            }
            if fds[0].revents == 0 {
                // No edge up to now: the belt that passed meanwhile held no part.
                if let (Some(idle), Some(offset)) = (&self.idle, self.mono_offset) {
                    idle.mark(monotonic_now().saturating_sub(offset));
                }
            }
            if fds[0].revents != 0 {
                match trigger.read_edge() {
                    Ok(at) => {
                        self.stats.triggers += 1;
                        return Ok(Some(at));
                    }
                    Err(e) => log::error!("trigger input: {e}"),
                }
            }
            if fds[1].revents != 0 {
                let Some(stream) = self.open.as_mut().and_then(|o| o.stream.as_mut()) else { continue };
                match stream.next() {
                    Ok((_, m)) => {
                        let seq = m.sequence;
                        count_gap(&mut self.last_seq, &mut self.stats, seq);
                    }
                    Err(e) => return Err(self.stream_failed(e)),
                }
            }
        }
    }
}

fn monotonic_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        if self.open.is_none() {
            self.reopen()?;
        }
        self.ensure_stream()?;
        // Triggered: the first frame exposed after the edge (plus the travel delay) is the part's.
        let not_before = if self.trigger.is_some() {
            match self.wait_for_trigger()? {
                Some(edge) => Some(edge + self.trigger_delay),
                None => return Ok(None),
            }
        } else {
            None
        };
        let (w, h, fmt, stride) = (self.neg.width as usize, self.neg.height as usize, self.neg.format, self.neg.stride);
        let period = self.frame_period();
        let (seq, converted, ts, flags, late) = loop {
            let Some(stream) = self.open.as_mut().and_then(|o| o.stream.as_mut()) else {
                return Err(CaptureError::Disconnected);
            };
            let (buf, m) = match stream.next() {
                Ok(x) => x,
                Err(e) => return Err(self.stream_failed(e)),
            };
            count_gap(&mut self.last_seq, &mut self.stats, m.sequence);
            if not_before.is_some_and(|t| monotonic(m.timestamp, m.flags).is_some_and(|at| at < t)) {
                self.stats.skipped += 1;
                continue;
            }
            // The first frame after the part came into view came too late to show it.
            let late =
                not_before.is_some_and(|t| monotonic(m.timestamp, m.flags).is_some_and(|at| at > t + 2 * period));
            let data = &buf[..(m.bytesused as usize).min(buf.len())];
            let converted = if m.flags.contains(BufFlags::ERROR) {
                Err("the driver marked the buffer as corrupted".to_string())
            } else {
                convert(fmt, data, w, h, stride as usize, &mut self.pixels).map_err(|e| e.to_string())
            };
            break (m.sequence, converted, m.timestamp, m.flags, late);
        };
        self.meta.seq = u64::from(seq);
        let exposed = self.loop_time(ts, flags, now);
        // A triggered part's time is when it came into view: where the ejector counts from.
        self.meta.timestamp = match not_before {
            Some(t) => self.mono_to_loop(t, now).min(exposed),
            None => exposed,
        };
        if late {
            log::warn!(
                "camera {} frame {seq}: exposed too long after the part's trigger, the part was missed",
                self.neg.path.display()
            );
            return Err(CaptureError::Missed);
        }
        if let Err(why) = converted {
            log::warn!("camera {} frame {seq}: {why}", self.neg.path.display());
            return Err(CaptureError::Corrupt);
        }
        Ok(Some(Frame { data: &self.pixels, meta: &self.meta }))
    }

    fn max_size(&self) -> (usize, usize) {
        (self.neg.width as usize, self.neg.height as usize)
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// Books a gap in the driver's sequence numbers as dropped frames.
fn count_gap(last_seq: &mut Option<u32>, stats: &mut SourceStats, seq: u32) {
    if let Some(last) = *last_seq {
        let gap = seq.wrapping_sub(last).wrapping_sub(1);
        // A backwards step (driver restart) is not a gap.
        if gap < u32::MAX / 2 {
            stats.dropped += u64::from(gap);
        }
    }
    *last_seq = Some(seq);
}

/// A buffer's timestamp on CLOCK_MONOTONIC, when the driver stamps it so.
fn monotonic(ts: v4l::timestamp::Timestamp, flags: BufFlags) -> Option<Duration> {
    let (sec, usec) = (u64::try_from(ts.sec).ok()?, u64::try_from(ts.usec).ok()?);
    let stamped = (flags & BufFlags::TIMESTAMP_MASK) == BufFlags::TIMESTAMP_MONOTONIC && (sec, usec) != (0, 0);
    stamped.then(|| Duration::from_secs(sec) + Duration::from_micros(usec))
}

/// Finds the device node: a path as given, else the first `/dev/video*` capture node whose
/// card name starts with `name`.
fn resolve(name: &str) -> Result<(PathBuf, Device), String> {
    if name.starts_with('/') {
        let dev = Device::with_path(name).map_err(|e| format!("cannot open {name}: {e}"))?;
        return Ok((PathBuf::from(name), dev));
    }
    let mut seen = Vec::new();
    for path in video_nodes() {
        let Ok(dev) = Device::with_path(&path) else { continue };
        let Ok(caps) = dev.query_caps() else { continue };
        if caps.card.starts_with(name) && caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            return Ok((path, dev));
        }
        seen.push(format!("{} ({})", path.display(), caps.card));
    }
    Err(if seen.is_empty() {
        format!("no camera named {name:?}: no /dev/video* device could be opened")
    } else {
        format!("no capture device named {name:?}; found {}", seen.join(", "))
    })
}

/// `/dev/video*`, sorted.
fn video_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> =
        std::fs::read_dir("/dev").map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    nodes.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("video")));
    nodes.sort();
    nodes
}

fn open_device(cfg: &V4l2Config) -> Result<Open, String> {
    let (path, dev) = resolve(&cfg.device)?;
    let caps = dev.query_caps().map_err(|e| format!("{} is not a V4L2 device: {e}", path.display()))?;
    if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
        return Err(format!("{} ({}) cannot capture single-planar video", path.display(), caps.card));
    }
    if !caps.capabilities.contains(CapFlags::STREAMING) {
        return Err(format!("{} ({}) does not support streaming I/O", path.display(), caps.card));
    }
    let offered: Vec<[u8; 4]> = dev
        .enum_formats()
        .map_err(|e| format!("cannot list the formats of {}: {e}", path.display()))?
        .into_iter()
        .map(|d| d.fourcc.repr)
        .collect();
    let names = || offered.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(", ");
    let format = match cfg.format {
        Some(f) if offered.contains(&f.fourcc()) => f,
        Some(f) => {
            return Err(format!("{} does not offer {f:?}; it offers {}", path.display(), names()));
        }
        None => CameraFormat::ALL.into_iter().find(|f| offered.contains(&f.fourcc())).ok_or_else(|| {
            format!("{} offers none of YUYV, RGB3, GREY, MJPG (it offers {})", path.display(), names())
        })?,
    };
    let want = Format::new(cfg.width, cfg.height, FourCC::new(&format.fourcc()));
    let got = dev.set_format(&want).map_err(|e| format!("cannot set the format of {}: {e}", path.display()))?;
    if got.fourcc.repr != format.fourcc() || (got.width, got.height) != (cfg.width, cfg.height) {
        return Err(format!(
            "{} set {}x{} {} when asked for {}x{} {:?}; choose a size it supports (`v4l2-ctl --list-formats-ext`)",
            path.display(),
            got.width,
            got.height,
            String::from_utf8_lossy(&got.fourcc.repr),
            cfg.width,
            cfg.height,
            format
        ));
    }
    let params = dev
        .set_params(&v4l::video::capture::Parameters::with_fps(cfg.fps))
        .map_err(|e| format!("cannot set {} fps on {}: {e}", cfg.fps, path.display()))?;
    let i = params.interval;
    let fps = if i.numerator == 0 { 0.0 } else { f64::from(i.denominator) / f64::from(i.numerator) };
    if (fps - f64::from(cfg.fps)).abs() > 0.01 * f64::from(cfg.fps) {
        log::warn!("camera {} runs at {fps:.2} fps, not the {} asked for", path.display(), cfg.fps);
    }
    let neg = Negotiated {
        path,
        card: caps.card,
        driver: caps.driver,
        format,
        width: got.width,
        height: got.height,
        stride: got.stride,
        fps,
    };
    Ok(Open { stream: None, dev, neg })
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, driver {}): {:?} {}x{} at {:.2} fps",
            self.path.display(),
            self.card,
            self.driver,
            self.format,
            self.width,
            self.height,
            self.fps
        )
    }
}

/// One line per V4L2 capture device: path, card, driver and the formats it offers.
pub fn list_devices() -> Vec<String> {
    let mut out = Vec::new();
    for path in video_nodes() {
        let Ok(dev) = Device::with_path(&path) else { continue };
        let Ok(caps) = dev.query_caps() else { continue };
        let formats = dev
            .enum_formats()
            .map(|f| {
                f.iter().map(|d| String::from_utf8_lossy(&d.fourcc.repr).into_owned()).collect::<Vec<_>>().join(" ")
            })
            .unwrap_or_default();
        let kind = if caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) { "capture" } else { "other" };
        out.push(format!("{}  {:?}  driver {}  {kind}  formats: {formats}", path.display(), caps.card, caps.driver));
    }
    if out.is_empty() {
        out.push("no V4L2 devices found under /dev".into());
    }
    out
}
