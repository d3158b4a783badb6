//! Images into a V4L2 output device (a `v4l2loopback` virtual camera) at a steady rate, so that
//! recorded or chosen parts travel the real capture path: commissioning dry runs and tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use v4l::buffer::Type;
use v4l::capability::Flags as CapFlags;
use v4l::io::traits::OutputStream;
use v4l::prelude::{Device, MmapStream};
use v4l::video::output::Parameters;
use v4l::video::Output;
use v4l::{Format, FourCC};

/// An open output device streaming RGB24 frames of one size.
pub struct Feeder {
    stream: MmapStream<'static>,
    // After the stream: the ring is unmapped before the descriptor closes.
    _dev: Device,
    width: u32,
    height: u32,
    frame: Duration,
    next_at: Option<Instant>,
}

impl Feeder {
    /// Opens `path`, sets RGB24 at `width` x `height` and `fps`.
    pub fn open(path: &Path, width: u32, height: u32, fps: u32) -> Result<Self, String> {
        let dev = Device::with_path(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let caps = dev.query_caps().map_err(|e| format!("{} is not a V4L2 device: {e}", path.display()))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_OUTPUT) {
            return Err(format!("{} ({}) is not a video output (a v4l2loopback device is)", path.display(), caps.card));
        }
        let want = Format::new(width, height, FourCC::new(b"RGB3"));
        let got = Output::set_format(&dev, &want).map_err(|e| format!("cannot set RGB24 {width}x{height}: {e}"))?;
        if got.fourcc.repr != *b"RGB3" || (got.width, got.height) != (width, height) {
            return Err(format!(
                "{} took {}x{} instead of RGB24 {width}x{height}",
                path.display(),
                got.width,
                got.height
            ));
        }
        if let Err(e) = Output::set_params(&dev, &Parameters::with_fps(fps.max(1))) {
            log::debug!("{}: cannot set the frame rate: {e}", path.display());
        }
        let stream = MmapStream::with_buffers(&dev, Type::VideoOutput, 2)
            .map_err(|e| format!("cannot map the output buffers of {}: {e}", path.display()))?;
        Ok(Self {
            stream,
            _dev: dev,
            width,
            height,
            frame: Duration::from_secs_f64(1.0 / f64::from(fps.max(1))),
            next_at: None,
        })
    }

    /// Queues one RGB24 frame, waiting for its slot in the frame rate.
    pub fn write(&mut self, rgb: &[u8]) -> Result<(), String> {
        let size = (self.width * self.height * 3) as usize;
        if rgb.len() != size {
            return Err(format!("frame has {} bytes, {}x{} RGB24 needs {size}", rgb.len(), self.width, self.height));
        }
        let at = *self.next_at.get_or_insert_with(Instant::now);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        self.next_at = Some(at + self.frame);
        let (buf, meta) = self.stream.next().map_err(|e| format!("cannot queue a frame: {e}"))?;
        if buf.len() < size {
            return Err(format!("the device's buffers hold {} bytes, a frame needs {size}", buf.len()));
        }
        buf[..size].copy_from_slice(rgb);
        meta.bytesused = size as u32;
        Ok(())
    }
}

/// Decodes images into RGB24 frames that all have the size of the first.
pub fn load_frames(paths: &[PathBuf]) -> Result<(u32, u32, Vec<Vec<u8>>), String> {
    let mut size = None;
    let mut frames = Vec::with_capacity(paths.len());
    for p in paths {
        let img = image::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?.to_rgb8();
        let (w, h) = img.dimensions();
        if *size.get_or_insert((w, h)) != (w, h) {
            let (w0, h0) = size.unwrap_or_default();
            return Err(format!("{} is {w}x{h}, the first image is {w0}x{h0}: feed images of one size", p.display()));
        }
        frames.push(img.into_raw());
    }
    let (w, h) = size.ok_or("no images to feed")?;
    Ok((w, h, frames))
}
