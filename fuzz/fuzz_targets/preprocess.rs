//! Frames of any size and pixel layout through `Preprocessor::run` (ROI crop, bilinear resize,
//! normalisation), as the loop feeds them: one preprocessor per bundle, built from an input spec
//! that passed the manifest's validation, then frames of whatever size the source delivers
//! (replay folders mix sizes; cameras give RGB, grey or packed YUYV of even width), each with
//! exactly `width * height * bytes_per_pixel` bytes, as every `FrameSource` lends them.
//!
//! Input: `[model w, model h, flags, roi x, y, w, h, mean r, g, b, std r, g, b, frames,
//! (format, width, height) per frame, pixel bytes...]`; the pixel bytes repeat to fill frames.
#![no_main]

use std::sync::OnceLock;

use anovit::bundle::{ColorMode, Manifest};
use anovit::capture::{Frame, FrameMeta, PixelFormat};
use anovit::preprocess::Preprocessor;
use libfuzzer_sys::fuzz_target;

/// A valid manifest whose input spec each run replaces (and validates again).
fn base() -> &'static Manifest {
    static BASE: OnceLock<Manifest> = OnceLock::new();
    BASE.get_or_init(|| {
        Manifest::parse(
            r#"{"format": "anovit-bundle", "format_version": 1, "name": "fuzz",
                "model": {"file": "model.onnx", "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "precision": "f32"},
                "input": {"name": "image", "shape": [1, 3, 16, 16], "layout": "NCHW", "color": "rgb",
                          "resize": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                "outputs": {"reconstruction": "reconstruction"},
                "scoring": {"error": "squared_mean_channels", "sigma": 2.0, "truncate": 4.0, "reduction": "max"},
                "threshold": {"value": 0.5, "source": "fuzz"}}"#,
        )
        .expect("base manifest")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<14>() else { return };
    let mut m = base().clone();
    let i = &mut m.input;
    // Model inputs are multiples of 16 (validated); small ones keep each run fast.
    i.shape = vec![1, 3, 16 * (1 + usize::from(head[1]) % 4), 16 * (1 + usize::from(head[0]) % 4)];
    i.color = if head[2] & 1 != 0 { ColorMode::Gray } else { ColorMode::Rgb };
    i.roi = (head[2] & 2 != 0).then(|| [head[3], head[4], head[5], head[6]].map(u32::from));
    i.mean = [head[7], head[8], head[9]].map(|b| f32::from(b) / 255.0);
    i.std = [head[10], head[11], head[12]].map(|b| (f32::from(b) + 1.0) / 256.0);
    // What the validation refuses never reaches a preprocessor.
    if m.validate().is_err() {
        return;
    }
    let frames = 1 + usize::from(head[13]) % 3;
    let Some((sizes, pixels)) = rest.split_at_checked(3 * frames) else { return };
    let mut p = Preprocessor::new(&m.input);
    let mut buf = Vec::new();
    for s in sizes.chunks_exact(3) {
        let (format, width) = match s[0] % 3 {
            0 => (PixelFormat::Rgb8, 1 + usize::from(s[1]) % 96),
            1 => (PixelFormat::Gray8, 1 + usize::from(s[1]) % 96),
            _ => (PixelFormat::Yuyv, 2 * (1 + usize::from(s[1]) % 48)),
        };
        let height = 1 + usize::from(s[2]) % 96;
        let len = width * height * format.bytes_per_pixel();
        buf.clear();
        buf.extend(pixels.iter().copied().cycle().take(len));
        buf.resize(len, 0);
        let meta = FrameMeta::new(width, height, format);
        let Ok(out) = p.run(&Frame { data: &buf, meta: &meta }) else { continue };
        assert_eq!(out.len(), 3 * m.input.width() * m.input.height());
        // Pixels are 0..=255 and the resize interpolates: each value lies within the
        // normalised range of its channel.
        let plane = m.input.width() * m.input.height();
        for (c, chan) in out.chunks_exact(plane).enumerate() {
            let (lo, hi) = ((0.0 - m.input.mean[c]) / m.input.std[c], (1.0 - m.input.mean[c]) / m.input.std[c]);
            let eps = 1e-3 * (1.0 + lo.abs().max(hi.abs()));
            for &v in chan {
                assert!(v.is_finite() && v >= lo - eps && v <= hi + eps, "{v} outside [{lo}, {hi}] in channel {c}");
            }
        }
    }
});
