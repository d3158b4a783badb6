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

/// An open output device streaming RGB24 or MJPEG frames of one size.
pub struct Feeder {
    stream: MmapStream<'static>,
    // After the stream: the ring is unmapped before the descriptor closes.
    _dev: Device,
    width: u32,
    height: u32,
    mjpeg: bool,
    frame: Duration,
    next_at: Option<Instant>,
}

impl Feeder {
    /// Opens `path`, sets RGB24 (or MJPEG) at `width` x `height` and `fps`.
    pub fn open(path: &Path, width: u32, height: u32, fps: u32, mjpeg: bool) -> Result<Self, String> {
        let dev = Device::with_path(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let caps = dev.query_caps().map_err(|e| format!("{} is not a V4L2 device: {e}", path.display()))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_OUTPUT) {
            return Err(format!("{} ({}) is not a video output (a v4l2loopback device is)", path.display(), caps.card));
        }
        let code = if mjpeg { *b"MJPG" } else { *b"RGB3" };
        let name = String::from_utf8_lossy(&code).into_owned();
        let want = Format::new(width, height, FourCC::new(&code));
        let got = Output::set_format(&dev, &want).map_err(|e| format!("cannot set {name} {width}x{height}: {e}"))?;
        if got.fourcc.repr != code || (got.width, got.height) != (width, height) {
            return Err(format!(
                "{} took {}x{} {} instead of {name} {width}x{height} (another writer may hold its format)",
                path.display(),
                got.width,
                got.height,
                String::from_utf8_lossy(&got.fourcc.repr)
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
            mjpeg,
            frame: Duration::from_secs_f64(1.0 / f64::from(fps.max(1))),
            next_at: None,
        })
    }

    /// Queues one frame (RGB24 pixels, or one JPEG image for MJPEG), waiting for its slot in
    /// the frame rate.
    pub fn write(&mut self, frame: &[u8]) -> Result<(), String> {
        let size = frame.len();
        let raw = (self.width * self.height * 3) as usize;
        if !self.mjpeg && size != raw {
            return Err(format!("frame has {size} bytes, {}x{} RGB24 needs {raw}", self.width, self.height));
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
        buf[..size].copy_from_slice(frame);
        meta.bytesused = size as u32;
        Ok(())
    }
}

/// Decodes images into RGB24 frames that all have the size of the first; with `jpeg_quality`,
/// encodes each as a JPEG image (for MJPEG).
pub fn load_frames(paths: &[PathBuf], jpeg_quality: Option<u8>) -> Result<(u32, u32, Vec<Vec<u8>>), String> {
    let mut size = None;
    let mut frames = Vec::with_capacity(paths.len());
    for p in paths {
        let img = image::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?.to_rgb8();
        let (w, h) = img.dimensions();
        if *size.get_or_insert((w, h)) != (w, h) {
            let (w0, h0) = size.unwrap_or_default();
            return Err(format!("{} is {w}x{h}, the first image is {w0}x{h0}: feed images of one size", p.display()));
        }
        frames.push(match jpeg_quality {
            None => img.into_raw(),
            Some(q) => {
                let mut jpeg = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, q)
                    .encode_image(&img)
                    .map_err(|e| format!("cannot encode {} as JPEG: {e}", p.display()))?;
                jpeg
            }
        });
    }
    let (w, h) = size.ok_or("no images to feed")?;
    Ok((w, h, frames))
}
