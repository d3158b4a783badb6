//! Frame -> model input: ROI crop, bilinear resize, normalisation, into a buffer allocated once.
//!
//! The arithmetic follows `docs/BUNDLE.md` step by step, in the same order as
//! `scripts/common.py`, so that Rust and Python scores agree to 1e-4.

use std::fmt;

use crate::bundle::{ColorMode, InputSpec};
use crate::capture::convert::yuyv_to_rgb;
use crate::capture::{Frame, PixelFormat};

/// Why a frame could not be preprocessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreprocessError {
    /// The frame's byte count does not match its stated size and format.
    SizeMismatch,
    /// The ROI does not fit inside the frame.
    RoiOutside,
}

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PreprocessError::SizeMismatch => "frame size does not match its data",
            PreprocessError::RoiOutside => "ROI does not fit inside the frame",
        })
    }
}

impl std::error::Error for PreprocessError {}

/// One axis of the resize: for each output index, two source indices and a weight.
#[derive(Clone, Copy, Debug, Default)]
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
}

/// Fills `taps` for resizing `src` samples (starting at `offset`) to `taps.len()` samples.
/// Operation order as in `scripts/common.py`: `((d + 0.5) * in) / out - 0.5`, in f32.
fn fill_taps(taps: &mut [Tap], src: usize, offset: usize) {
    let out = taps.len() as f32;
    for (d, t) in taps.iter_mut().enumerate() {
        let s = ((d as f32 + 0.5) * src as f32 / out - 0.5).clamp(0.0, (src - 1) as f32);
        let i0 = s.floor() as usize;
        *t = Tap { i0: offset + i0, i1: offset + (i0 + 1).min(src - 1), f: s - i0 as f32 };
    }
}

/// `a + (b - a) * t`: the interpolation form both implementations use.
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Normalisation `v * scale + offset` per channel.
struct Norm {
    scale: [f32; 3],
    offset: [f32; 3],
}

/// Output pixels per block of [`yuyv_output_row`].
const BLOCK: usize = 16;

crate::simd::multiversion! {
    /// One output row of [`Preprocessor::resize_yuyv`] from source rows `r0` and `r1`.
    fn yuyv_output_row(
        r0: &[u8],
        r1: &[u8],
        fy: f32,
        xs: &[Tap],
        norm: &Norm,
        out: [&mut [f32]; 3],
    ) {
        let [o0, o1, o2] = out;
        for (b, taps) in xs.chunks(BLOCK).enumerate() {
            // Corners (r0, x0), (r0, x1), (r1, x0), (r1, x1): luma and the pair's chroma.
            let (mut y, mut u, mut v) = ([[0i32; BLOCK]; 4], [[0i32; BLOCK]; 4], [[0i32; BLOCK]; 4]);
            let mut fx = [0f32; BLOCK];
            for (k, t) in taps.iter().enumerate() {
                for (c, (row, x)) in [(r0, t.i0), (r0, t.i1), (r1, t.i0), (r1, t.i1)].into_iter().enumerate() {
                    let (o, pair) = (2 * x, (2 * x) & !3);
                    (y[c][k], u[c][k], v[c][k]) = (row[o].into(), row[pair + 1].into(), row[pair + 3].into());
                }
                fx[k] = t.f;
            }
            // convert::yuyv_to_rgb, lane-wise.
            let mut rgb = [[[0f32; BLOCK]; 3]; 4];
            for c in 0..4 {
                for k in 0..BLOCK {
                    let clamp = |t: i32| (t >> 8).clamp(0, 255) as f32;
                    let (uu, vv) = (u[c][k] - 128, v[c][k] - 128);
                    let l = 298 * (y[c][k] - 16) + 128;
                    rgb[c][0][k] = clamp(l + 409 * vv);
                    rgb[c][1][k] = clamp(l - 100 * uu - 208 * vv);
                    rgb[c][2][k] = clamp(l + 516 * uu);
                }
            }
            let n = taps.len();
            for (ch, o) in [&mut *o0, &mut *o1, &mut *o2].into_iter().enumerate() {
                let o = &mut o[b * BLOCK..b * BLOCK + n];
                for (k, dst) in o.iter_mut().enumerate() {
                    let top = lerp(rgb[0][ch][k], rgb[1][ch][k], fx[k]);
                    let bottom = lerp(rgb[2][ch][k], rgb[3][ch][k], fx[k]);
                    *dst = lerp(top, bottom, fy) * norm.scale[ch] + norm.offset[ch];
                }
            }
        }
    }
}

/// Reusable preprocessing state for one model input size.
#[derive(Debug)]
pub struct Preprocessor {
    width: usize,
    height: usize,
    color: ColorMode,
    roi: Option<[u32; 4]>,
    mean: [f32; 3],
    std: [f32; 3],
    xs: Vec<Tap>,
    ys: Vec<Tap>,
    /// The source geometry the taps were computed for.
    taps_for: (usize, usize),
    out: Vec<f32>,
}

impl Preprocessor {
    /// Allocates every buffer for `spec`'s input size.
    pub fn new(spec: &InputSpec) -> Self {
        let (width, height) = (spec.width(), spec.height());
        Self {
            width,
            height,
            color: spec.color,
            roi: spec.roi,
            mean: spec.mean,
            std: spec.std,
            xs: vec![Tap::default(); width],
            ys: vec![Tap::default(); height],
            taps_for: (0, 0),
            out: vec![0.0; 3 * width * height],
        }
    }

    /// Width and height of the model input.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The model input written by the last [`Self::run`], NCHW.
    pub fn output(&self) -> &[f32] {
        &self.out
    }

    /// Preprocesses `frame` into the internal buffer and returns it.
    pub fn run(&mut self, frame: &Frame<'_>) -> Result<&[f32], PreprocessError> {
        let m = frame.meta;
        let bpp = m.format.bytes_per_pixel();
        // YUYV pixels come in pairs: an odd width has no chroma for its last pixel.
        let odd_yuyv = m.format == PixelFormat::Yuyv && m.width % 2 == 1;
        if m.width == 0 || m.height == 0 || frame.data.len() != m.width * m.height * bpp || odd_yuyv {
            return Err(PreprocessError::SizeMismatch);
        }
        let [rx, ry, rw, rh] = self.roi.unwrap_or([0, 0, m.width as u32, m.height as u32]).map(|v| v as usize);
        if rx + rw > m.width || ry + rh > m.height {
            return Err(PreprocessError::RoiOutside);
        }
        // Taps depend only on the source geometry: recompute when it changes, without allocating.
        let key = (m.width << 32 | m.height, rx << 48 | ry << 32 | rw << 16 | rh);
        if self.taps_for != key {
            fill_taps(&mut self.xs, rw, rx);
            fill_taps(&mut self.ys, rh, ry);
            self.taps_for = key;
        }
        let stride = m.width * bpp;
        // One source pixel (row slice, byte offset) as three f32 channels; luminance first in
        // gray mode, as in Python. One monomorphised loop per pixel kind.
        let luma = |[r, g, b]: [f32; 3]| [0.299 * r + 0.587 * g + 0.114 * b; 3];
        // YUYV: byte 2x is pixel x's luma, its pair's chroma sits at (2x & !3) + 1 and + 3.
        let yuyv = |r: &[u8], o: usize| yuyv_to_rgb(r[o], r[(o & !3) + 1], r[(o & !3) + 3]).map(f32::from);
        let rgb = |r: &[u8], o: usize| [f32::from(r[o]), f32::from(r[o + 1]), f32::from(r[o + 2])];
        match (m.format, self.color) {
            (PixelFormat::Gray8, _) => self.resize(frame.data, stride, 1, |r: &[u8], o| [f32::from(r[o]); 3]),
            (PixelFormat::Yuyv, ColorMode::Gray) => self.resize(frame.data, stride, 2, |r: &[u8], o| luma(yuyv(r, o))),
            (PixelFormat::Yuyv, _) => self.resize_yuyv(frame.data, stride),
            (PixelFormat::Rgb8, ColorMode::Gray) => self.resize(frame.data, stride, 3, |r: &[u8], o| luma(rgb(r, o))),
            (PixelFormat::Rgb8, _) => self.resize(frame.data, stride, 3, rgb),
        }
        Ok(&self.out)
    }

    /// Runs `row(r0, r1, fy, xs, scale, offset, [out planes' row])` for each output row: the two
    /// source rows it interpolates between, its vertical weight, the horizontal taps, and
    /// `(v / 255 - mean) / std` as one multiply-add (divisions dominated the loop).
    fn each_row(
        &mut self,
        data: &[u8],
        stride: usize,
        mut row: impl FnMut(&[u8], &[u8], f32, &[Tap], &Norm, [&mut [f32]; 3]),
    ) {
        let plane = self.width * self.height;
        let norm = Norm {
            scale: std::array::from_fn(|c| 1.0 / (255.0 * self.std[c])),
            offset: std::array::from_fn(|c| -self.mean[c] / self.std[c]),
        };
        let (p0, rest) = self.out.split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        let rows =
            p0.chunks_exact_mut(self.width).zip(p1.chunks_exact_mut(self.width)).zip(p2.chunks_exact_mut(self.width));
        for (ty, ((o0, o1), o2)) in self.ys.iter().zip(rows) {
            let (r0, r1) = (&data[ty.i0 * stride..][..stride], &data[ty.i1 * stride..][..stride]);
            row(r0, r1, ty.f, &self.xs, &norm, [o0, o1, o2]);
        }
    }

    /// [`Self::resize`] of YUYV into RGB, the same arithmetic in the same order (bit-identical),
    /// laid out for vector units: each block of output pixels gathers its four source pixels'
    /// bytes, then converts, interpolates and normalises them lane-wise (a third of the scalar
    /// loop's time; the loop's default camera format).
    fn resize_yuyv(&mut self, data: &[u8], stride: usize) {
        self.each_row(data, stride, yuyv_output_row);
    }

    /// Bilinear resize and normalisation of `data` (rows of `stride` bytes, `bpp` bytes per
    /// pixel) into the output planes, with the taps already computed.
    fn resize(&mut self, data: &[u8], stride: usize, bpp: usize, px: impl Fn(&[u8], usize) -> [f32; 3]) {
        self.each_row(data, stride, |r0, r1, fy, xs, norm, [o0, o1, o2]| {
            for (ox, tx) in xs.iter().enumerate() {
                let (x0, x1) = (tx.i0 * bpp, tx.i1 * bpp);
                // Horizontal pass on both rows, then vertical, as in Python.
                let (a, b, c, d) = (px(r0, x0), px(r0, x1), px(r1, x0), px(r1, x1));
                let v: [f32; 3] = std::array::from_fn(|ch| {
                    lerp(lerp(a[ch], b[ch], tx.f), lerp(c[ch], d[ch], tx.f), fy) * norm.scale[ch] + norm.offset[ch]
                });
                (o0[ox], o1[ox], o2[ox]) = (v[0], v[1], v[2]);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{FrameMeta, PixelFormat};

    fn spec(w: usize, h: usize, roi: Option<[u32; 4]>) -> InputSpec {
        InputSpec {
            name: "image".into(),
            shape: vec![1, 3, h, w],
            layout: "NCHW".into(),
            color: ColorMode::Rgb,
            roi,
            resize: "bilinear".into(),
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        }
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
    }

    fn meta(w: usize, h: usize, format: PixelFormat) -> FrameMeta {
        FrameMeta::new(w, h, format)
    }

    #[test]
    fn identity_size_copies_pixels_planar() {
        let data: Vec<u8> = (0..2 * 2 * 3).map(|v| v as u8).collect();
        let m = meta(2, 2, PixelFormat::Rgb8);
        let mut p = Preprocessor::new(&spec(2, 2, None));
        let out = p.run(&Frame { data: &data, meta: &m }).unwrap();
        // With std = 1/255 and mean 0, values come out as raw bytes.
        close(out, &[0.0, 3.0, 6.0, 9.0, 1.0, 4.0, 7.0, 10.0, 2.0, 5.0, 8.0, 11.0]);
    }

    #[test]
    fn downscale_by_two_averages_pairs_with_half_pixel_centres() {
        // 4x1 gray row 0, 10, 20, 30 -> 2x1: centres at source 0.5 and 2.5.
        let data = [0u8, 10, 20, 30];
        let m = meta(4, 1, PixelFormat::Gray8);
        let mut s = spec(2, 1, None);
        s.shape = vec![1, 3, 1, 2];
        let mut p = Preprocessor::new(&s);
        let out = p.run(&Frame { data: &data, meta: &m }).unwrap();
        close(&out[..2], &[5.0, 25.0]);
        close(&out[2..4], &[5.0, 25.0]);
    }

    #[test]
    fn upscale_clamps_at_the_edges() {
        let data = [0u8, 100];
        let m = meta(2, 1, PixelFormat::Gray8);
        let mut s = spec(4, 1, None);
        s.shape = vec![1, 3, 1, 4];
        let mut p = Preprocessor::new(&s);
        let out = p.run(&Frame { data: &data, meta: &m }).unwrap();
        // s = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamp -> 0, 25, 75, 100.
        close(&out[..4], &[0.0, 25.0, 75.0, 100.0]);
    }

    #[test]
    fn roi_selects_the_window_and_must_fit() {
        let data: Vec<u8> = (0..16).collect();
        let m = meta(4, 4, PixelFormat::Gray8);
        let mut s = spec(2, 2, Some([2, 2, 2, 2]));
        s.shape = vec![1, 3, 2, 2];
        let mut p = Preprocessor::new(&s);
        close(&p.run(&Frame { data: &data, meta: &m }).unwrap()[..4], &[10.0, 11.0, 14.0, 15.0]);
        let mut s = spec(2, 2, Some([3, 0, 2, 2]));
        s.shape = vec![1, 3, 2, 2];
        let mut p = Preprocessor::new(&s);
        assert_eq!(p.run(&Frame { data: &data, meta: &m }), Err(PreprocessError::RoiOutside));
    }

    #[test]
    fn yuyv_frames_give_the_input_their_rgb_conversion_gives() {
        // Small, and large enough for whole and partial blocks of the vector path, up and down.
        for (w, h, ow, oh) in [(10, 6, 4, 3), (64, 40, 37, 21), (30, 20, 50, 33)] {
            // Bytes over the whole range, so the conversion clamps at both ends.
            let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (i * 29 % 256) as u8).collect();
            let mut rgb = vec![0u8; w * h * 3];
            crate::capture::convert::yuyv_frame(&yuyv, w, &mut rgb);
            for (color, roi) in
                [(ColorMode::Rgb, None), (ColorMode::Rgb, Some([3, 1, 7, 4])), (ColorMode::Gray, Some([1, 1, 7, 4]))]
            {
                let mut s = spec(ow, oh, roi);
                s.shape = vec![1, 3, oh, ow];
                s.color = color;
                let mut p = Preprocessor::new(&s);
                let want = p.run(&Frame { data: &rgb, meta: &meta(w, h, PixelFormat::Rgb8) }).unwrap().to_vec();
                let got = p.run(&Frame { data: &yuyv, meta: &meta(w, h, PixelFormat::Yuyv) }).unwrap();
                assert_eq!(got, &want[..], "{color:?} {w}x{h} -> {ow}x{oh} roi {roi:?}");
            }
        }
        let odd = meta(3, 1, PixelFormat::Yuyv);
        let mut p = Preprocessor::new(&spec(2, 1, None));
        assert_eq!(p.run(&Frame { data: &[0; 6], meta: &odd }), Err(PreprocessError::SizeMismatch));
    }

    #[test]
    fn wrong_byte_count_is_an_error_not_a_panic() {
        let m = meta(4, 4, PixelFormat::Rgb8);
        let mut p = Preprocessor::new(&spec(2, 2, None));
        assert_eq!(p.run(&Frame { data: &[0; 10], meta: &m }), Err(PreprocessError::SizeMismatch));
    }

    #[test]
    fn normalisation_and_gray_mode() {
        let data = [255u8, 0, 0];
        let m = meta(1, 1, PixelFormat::Rgb8);
        let mut s = spec(1, 1, None);
        s.shape = vec![1, 3, 1, 1];
        s.mean = [0.5, 0.25, 0.0];
        s.std = [0.5, 0.5, 0.25];
        s.color = ColorMode::Gray;
        let mut p = Preprocessor::new(&s);
        let out = p.run(&Frame { data: &data, meta: &m }).unwrap();
        let l = 0.299f32;
        let want = [(l - 0.5) / 0.5, (l - 0.25) / 0.5, l / 0.25];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-5, "{out:?} vs {want:?}");
        }
    }
}
