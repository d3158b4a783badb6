//! Replays a folder of images as if a camera had captured them.
//!
//! Files are listed and their headers checked at start-up (an unreadable file stops the start
//! with its name). Frames are decoded lazily into buffers sized for the largest image, so a
//! folder of any length costs the memory of one frame. In MVTec layout (`good/`, `<defect>/`
//! sub-folders) the folder names give each frame its ground truth.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{ColorType, ImageDecoder, ImageReader};

use super::{CaptureError, Frame, FrameMeta, FrameSource, PixelFormat};
use crate::error::{Error, Result};

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    truth: Option<bool>,
    label: heapless::String<32>,
}

/// Largest width and height of a replayed image (the largest camera frame a board profile allows).
const MAX_SIDE: u32 = 8192;

/// A folder of PNG/JPEG images played back in name order.
#[derive(Debug)]
pub struct ReplaySource {
    entries: Vec<Entry>,
    next: usize,
    seq: u64,
    loops: bool,
    file: Vec<u8>,
    pixels: Vec<u8>,
    rgba: Vec<u8>,
    max: (usize, usize),
    meta: FrameMeta,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// The PNG/JPEG files directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_image(p)).collect();
    v.sort();
    Ok(v)
}

fn label(s: &str) -> heapless::String<32> {
    let mut l = heapless::String::new();
    for c in s.chars() {
        if l.push(c).is_err() {
            break;
        }
    }
    l
}

impl ReplaySource {
    /// Lists `dir`. Images directly inside have unknown truth; sub-folders are labelled
    /// (`good` = good, anything else = defective). `loops`: start over at the end.
    pub fn open(dir: &Path, loops: bool) -> Result<Self> {
        let mut entries = Vec::new();
        for p in list_images(dir)? {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
            entries.push(Entry { path: p, truth: None, label: label(&stem) });
        }
        let rd = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let mut subdirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        subdirs.sort();
        for sd in subdirs {
            let name = sd.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string();
            for p in list_images(&sd)? {
                entries.push(Entry { path: p, truth: Some(name != "good"), label: label(&name) });
            }
        }
        if entries.is_empty() {
            return Err(Error::Image {
                path: dir.to_path_buf(),
                why: "the folder holds no .png or .jpg images".into(),
            });
        }
        Self::with_entries(entries, loops)
    }

    /// The files in replay order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().map(|e| e.path.as_path())
    }

    /// Plays the given files in this order, each with its truth (`Some(true)` = defective) and
    /// label; for data sets whose layout is not a folder tree (see [`crate::dataset`]).
    pub fn from_files<'a>(files: impl IntoIterator<Item = (PathBuf, Option<bool>, &'a str)>) -> Result<Self> {
        let entries: Vec<Entry> =
            files.into_iter().map(|(path, truth, l)| Entry { path, truth, label: label(l) }).collect();
        if entries.is_empty() {
            return Err(Error::Image { path: PathBuf::new(), why: "no images to replay".into() });
        }
        Self::with_entries(entries, false)
    }

    fn with_entries(entries: Vec<Entry>, loops: bool) -> Result<Self> {
        let mut max = (0, 0);
        for e in &entries {
            let (w, h) = image::image_dimensions(&e.path)
                .map_err(|err| Error::Image { path: e.path.clone(), why: err.to_string() })?;
            // The buffers are sized from headers alone: a corrupt one must not ask for gigabytes.
            if w > MAX_SIDE || h > MAX_SIDE {
                return Err(Error::Image {
                    path: e.path.clone(),
                    why: format!("is {w}x{h}: replayed images can be at most {MAX_SIDE}x{MAX_SIDE} pixels"),
                });
            }
            max = (max.0.max(w as usize), max.1.max(h as usize));
        }
        Ok(Self {
            entries,
            next: 0,
            seq: 0,
            loops,
            file: Vec::new(),
            pixels: vec![0; max.0 * max.1 * 3],
            rgba: vec![0; max.0 * max.1 * 4],
            max,
            meta: FrameMeta::new(0, 0, PixelFormat::Rgb8),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the folder is empty (never, after a successful open).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decodes one file into `self.pixels`, setting size and format in `self.meta`.
    fn decode(&mut self, idx: usize) -> std::result::Result<(), CaptureError> {
        let path = &self.entries[idx].path;
        self.file.clear();
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut self.file)).map_err(|_| CaptureError::Corrupt)?;
        let dec = ImageReader::new(std::io::Cursor::new(&self.file[..]))
            .with_guessed_format()
            .map_err(|_| CaptureError::Corrupt)?
            .into_decoder()
            .map_err(|_| CaptureError::Corrupt)?;
        let (w, h) = dec.dimensions();
        let (w, h) = (w as usize, h as usize);
        // A file that grew since start-up would not fit the buffers: refuse it as corrupt.
        if w == 0 || h == 0 || w * h > self.max.0 * self.max.1 {
            return Err(CaptureError::Corrupt);
        }
        let format = match dec.color_type() {
            ColorType::L8 => {
                dec.read_image(&mut self.pixels[..w * h]).map_err(|_| CaptureError::Corrupt)?;
                PixelFormat::Gray8
            }
            ColorType::Rgb8 => {
                dec.read_image(&mut self.pixels[..w * h * 3]).map_err(|_| CaptureError::Corrupt)?;
                PixelFormat::Rgb8
            }
            ColorType::Rgba8 => {
                dec.read_image(&mut self.rgba[..w * h * 4]).map_err(|_| CaptureError::Corrupt)?;
                for (d, s) in self.pixels.chunks_exact_mut(3).zip(self.rgba[..w * h * 4].chunks_exact(4)) {
                    d.copy_from_slice(&s[..3]);
                }
                PixelFormat::Rgb8
            }
            _ => return Err(CaptureError::Corrupt),
        };
        self.meta.width = w;
        self.meta.height = h;
        self.meta.format = format;
        Ok(())
    }
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self, now: Duration) -> std::result::Result<Option<Frame<'_>>, CaptureError> {
        if self.next >= self.entries.len() {
            if !self.loops {
                return Ok(None);
            }
            self.next = 0;
        }
        let idx = self.next;
        self.next += 1;
        self.meta.seq = self.seq;
        self.seq += 1;
        let e = &self.entries[idx];
        self.meta.truth = e.truth;
        self.meta.label.clone_from(&e.label);
        self.meta.timestamp = now;
        self.decode(idx)?;
        let n = self.meta.width * self.meta.height * self.meta.format.bytes_per_pixel();
        Ok(Some(Frame { data: &self.pixels[..n], meta: &self.meta }))
    }

    fn max_size(&self) -> (usize, usize) {
        self.max
    }
}
