//! Offline scoring of image sets: the engine behind `anovit calibrate` and `anovit eval`.
//!
//! Frames take exactly the path of the inspection loop (replay decoding, [`Preprocessor`], the
//! engine, [`Scorer`]), so offline figures are the figures of the line. Pixel metrics are taken
//! on the model's input grid: masks are cropped to the ROI and sampled at each input pixel's
//! centre, as the anomaly map sees the part.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, Polyline, PrimitiveStyle, Rectangle};
use embedded_graphics::text::Text;
use serde::Serialize;

use crate::bundle::{Bundle, InputSpec};
use crate::capture::{Frame, FrameSource, ReplaySource};
use crate::dataset::{Layout, Sample};
use crate::display::MemoryFramebuffer;
use crate::error::{Error, Result};
use crate::metrics::{self, Operating, PixelStats};
use crate::pipeline::Engine;
use crate::preprocess::Preprocessor;
use crate::scoring::Scorer;

/// Preprocess -> engine -> score for single frames, with the last map and input kept.
pub struct FrameScorer<E: Engine> {
    pre: Preprocessor,
    engine: E,
    scorer: Scorer,
    spec: InputSpec,
}

impl<E: Engine> FrameScorer<E> {
    /// Buffers for `bundle`'s input and scoring (its reference included) around `engine`.
    pub fn new(bundle: &Bundle, engine: E) -> Self {
        let (spec, scoring) = (&bundle.manifest.input, &bundle.manifest.scoring);
        Self {
            pre: Preprocessor::new(spec),
            engine,
            scorer: Scorer::new(spec.width(), spec.height(), scoring).with_reference(bundle.reference.as_ref()),
            spec: spec.clone(),
        }
    }

    /// The image score of `frame` (NaN when the model produced NaN).
    pub fn score(&mut self, frame: &Frame<'_>) -> std::result::Result<f32, String> {
        let input = self.pre.run(frame).map_err(|e| e.to_string())?;
        let recon = self.engine.infer(input).map_err(|e| e.to_string())?;
        Ok(self.scorer.score(input, recon))
    }

    /// The anomaly map of the last frame (input grid, row-major).
    pub fn map(&self) -> &[f32] {
        self.scorer.map()
    }

    /// Whether the last map peaks near the image border (`Scorer::peak_near_border`).
    pub fn peak_near_border(&self) -> bool {
        self.scorer.peak_near_border()
    }

    /// The border band `peak_near_border` looks at, in pixels of the model input.
    pub fn border_band(&self) -> usize {
        self.scorer.border_band()
    }

    /// The model input of the last frame (NCHW, normalised).
    pub fn input(&self) -> &[f32] {
        self.pre.output()
    }

    /// The input description.
    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }
}

fn replay_error(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Image { path: path.to_path_buf(), why: why.to_string() }
}

/// Decodes the next replayed frame (the file `path`) and scores it; returns the score and the
/// frame's size.
fn score_next<E: Engine>(src: &mut ReplaySource, fs: &mut FrameScorer<E>, path: &Path) -> Result<(f32, u32, u32)> {
    let frame = src.next_frame(Duration::ZERO).map_err(|e| replay_error(path, e))?;
    let frame = frame.ok_or_else(|| replay_error(path, "the replay ended early"))?;
    let score = fs.score(&frame).map_err(|e| replay_error(path, e))?;
    Ok((score, frame.meta.width as u32, frame.meta.height as u32))
}

/// Scores every image of `files` in order; `after` is called after each with the count so far
/// and the scorer (whose map is that image's).
pub fn score_files<E: Engine>(
    fs: &mut FrameScorer<E>,
    files: &[PathBuf],
    mut after: impl FnMut(usize, &FrameScorer<E>),
) -> Result<Vec<f32>> {
    let mut src = ReplaySource::from_files(files.iter().map(|p| (p.clone(), Some(false), "good")))?;
    let mut out = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        out.push(score_next(&mut src, fs, path)?.0);
        after(i + 1, fs);
    }
    Ok(out)
}

/// Samples a defect mask (white > 127) onto the input grid through the ROI, at pixel centres.
pub fn mask_on_input_grid(mask: &image::GrayImage, spec: &InputSpec, out: &mut Vec<bool>) {
    let (w, h) = (spec.width(), spec.height());
    let [rx, ry, rw, rh] = spec.roi.unwrap_or([0, 0, mask.width(), mask.height()]).map(|v| v as usize);
    out.clear();
    for oy in 0..h {
        let sy = (ry + ((oy as f64 + 0.5) * rh as f64 / h as f64) as usize).min(mask.height() as usize - 1);
        for ox in 0..w {
            let sx = (rx + ((ox as f64 + 0.5) * rw as f64 / w as f64) as usize).min(mask.width() as usize - 1);
            out.push(mask.get_pixel(sx as u32, sy as u32).0[0] > 127);
        }
    }
}

/// Image-level figures at one operating point.
#[derive(Clone, Debug, Serialize)]
pub struct PointReport {
    /// Reject when `score >= threshold`.
    pub threshold: f32,
    /// F1 of the defect class.
    pub f1: f64,
    /// Precision.
    pub precision: f64,
    /// Recall (detection rate).
    pub recall: f64,
    /// Good parts rejected.
    pub false_rejects: usize,
    /// Defective parts passed.
    pub escapes: usize,
    /// False-reject rate among good parts.
    pub false_reject_rate: f64,
}

impl From<Operating> for PointReport {
    fn from(o: Operating) -> Self {
        Self {
            threshold: o.threshold,
            f1: o.f1(),
            precision: o.precision(),
            recall: o.recall(),
            false_rejects: o.fp,
            escapes: o.fn_,
            false_reject_rate: o.false_reject_rate(),
        }
    }
}

/// Figures for one defect type (against all good test images).
#[derive(Clone, Debug, Serialize)]
pub struct KindReport {
    /// `good` or the defect type.
    pub kind: String,
    /// Images of this kind.
    pub n: usize,
    /// AUROC of this kind against the good images (null for `good`).
    pub auroc: Option<f64>,
    /// Images rejected at the bundle's threshold.
    pub rejected: usize,
    /// Mean image score.
    pub mean_score: f64,
}

/// Pixel-level figures.
#[derive(Clone, Debug, Serialize)]
pub struct PixelReport {
    /// Pixel AUROC over all test images with ground truth.
    pub auroc: Option<f64>,
    /// Normalised area under the per-region-overlap curve up to this false-positive rate.
    pub aupro_max_fpr: f64,
    /// AUPRO.
    pub aupro: Option<f64>,
    /// Defect regions (8-connected) in the masks.
    pub regions: usize,
    /// Images that contributed (good images and defective ones with masks).
    pub images: usize,
}

/// One scored image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageScore {
    /// File.
    pub path: PathBuf,
    /// `good` or the defect type.
    pub kind: String,
    /// Image score.
    pub score: f32,
}

/// Everything `anovit eval` measures.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Bundle name.
    pub model: String,
    /// `f32` or `int8`.
    pub precision: String,
    /// Data folder.
    pub data: PathBuf,
    /// Its layout.
    pub layout: String,
    /// Test images.
    pub n_images: usize,
    /// Good test images.
    pub n_good: usize,
    /// Defective test images.
    pub n_defect: usize,
    /// Image AUROC.
    pub image_auroc: Option<f64>,
    /// At the best-F1 threshold of this test set (optimistic: chosen on the test set itself).
    pub best_f1: Option<PointReport>,
    /// At the bundle's (calibrated) threshold.
    pub at_threshold: PointReport,
    /// Where the threshold came from.
    pub threshold_source: String,
    /// Pixel figures, when masks exist.
    pub pixel: Option<PixelReport>,
    /// By defect type.
    pub per_kind: Vec<KindReport>,
    /// ROC curve points (false-positive rate, true-positive rate).
    pub roc: Vec<(f64, f64)>,
    /// Every image's score.
    pub scores: Vec<ImageScore>,
}

/// Options of an evaluation run.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Data folder.
    pub data: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// Where reports and pictures go.
    pub out: PathBuf,
    /// Overlay pictures for the first this-many images of each kind (misclassified ones always).
    pub overlays_per_kind: usize,
    /// AUPRO integration limit.
    pub max_fpr: f64,
    /// Also write `maps.npy` / `masks.npy` / `scores.npy` (for cross-checks).
    pub dump: bool,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// A little-endian `.npy` file (format 1.0) of `shape`.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}", dims.join(", ")).into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header);
    bytes.extend_from_slice(data);
    write_file(path, &bytes)
}

/// Scores the test split of `opts.data` and writes `eval.json`, `eval.md`, `roc.png` and
/// `overlays/*.png` into `opts.out`.
pub fn evaluate<E: Engine>(
    bundle: &Bundle,
    engine: E,
    samples: &[Sample],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize),
) -> Result<EvalReport> {
    let m = &bundle.manifest;
    let threshold = m.threshold.value;
    let mut fs = FrameScorer::new(bundle, engine);
    let overlay_dir = opts.out.join("overlays");
    for d in [&opts.out, &overlay_dir] {
        std::fs::create_dir_all(d).map_err(|source| Error::Io { path: d.clone(), source })?;
    }
    let mut src =
        ReplaySource::from_files(samples.iter().map(|s| (s.path.clone(), Some(s.is_defect()), s.kind.as_str())))?;
    let (w, h) = (m.input.width(), m.input.height());
    let has_masks = samples.iter().any(|s| s.mask.is_some());
    let mut pixel = PixelStats::default();
    let mut pixel_images = 0;
    let (mut mask, none) = (Vec::new(), vec![false; w * h]);
    let mut dumps: (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let mut scores = Vec::with_capacity(samples.len());
    let mut overlays_of: std::collections::HashMap<&str, usize> = Default::default();
    for (i, s) in samples.iter().enumerate() {
        let (score, fw, fh) = score_next(&mut src, &mut fs, &s.path)?;
        let truth: Option<&[bool]> = match &s.mask {
            Some(p) => {
                let img = image::open(p).map_err(|e| replay_error(p, e))?.into_luma8();
                if img.dimensions() != (fw, fh) {
                    return Err(replay_error(
                        p,
                        format!("mask is {}x{}, its image {fw}x{fh}", img.width(), img.height()),
                    ));
                }
                mask_on_input_grid(&img, &m.input, &mut mask);
                Some(&mask)
            }
            None if !s.is_defect() => Some(&none),
            None => None,
        };
        if let (true, Some(t)) = (has_masks, truth) {
            pixel.add(fs.map(), t, w, h);
            pixel_images += 1;
        }
        if opts.dump {
            dumps.0.extend(fs.map().iter().flat_map(|v| v.to_le_bytes()));
            dumps.1.extend(truth.unwrap_or(&none).iter().map(|&b| u8::from(b)));
        }
        let wrong = metrics::rejects(score, threshold) != s.is_defect();
        let seen = overlays_of.entry(s.kind.as_str()).or_default();
        if wrong || *seen < opts.overlays_per_kind {
            *seen += 1;
            let stem = s.path.file_stem().and_then(|x| x.to_str()).unwrap_or("image");
            let p = overlay_dir.join(format!("{}{}_{stem}.png", if wrong { "WRONG_" } else { "" }, s.kind));
            overlay(&fs, truth, s, score, threshold).save_png(&p).map_err(|e| replay_error(&p, e))?;
        }
        scores.push(ImageScore { path: s.path.clone(), kind: s.kind.clone(), score });
        progress(i + 1);
    }

    let vals: Vec<f32> = scores.iter().map(|s| s.score).collect();
    let pos: Vec<bool> = samples.iter().map(Sample::is_defect).collect();
    let mut kinds: Vec<&str> = samples.iter().map(|s| s.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let per_kind = kinds
        .iter()
        .map(|&k| {
            let sel: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].kind == k || !pos[i]).collect();
            let own: Vec<f32> = sel.iter().filter(|&&i| samples[i].kind == k).map(|&i| vals[i]).collect();
            KindReport {
                kind: k.to_string(),
                n: own.len(),
                auroc: (k != "good")
                    .then(|| {
                        metrics::roc_auc(
                            &sel.iter().map(|&i| vals[i]).collect::<Vec<_>>(),
                            &sel.iter().map(|&i| pos[i]).collect::<Vec<_>>(),
                        )
                    })
                    .flatten(),
                rejected: own.iter().filter(|&&v| metrics::rejects(v, threshold)).count(),
                mean_score: own.iter().map(|&v| f64::from(v)).sum::<f64>() / own.len().max(1) as f64,
            }
        })
        .collect();
    let report = EvalReport {
        model: m.name.clone(),
        precision: m.model.precision.clone(),
        data: opts.data.clone(),
        layout: format!("{:?}", opts.layout),
        n_images: samples.len(),
        n_good: pos.iter().filter(|&&p| !p).count(),
        n_defect: pos.iter().filter(|&&p| p).count(),
        image_auroc: metrics::roc_auc(&vals, &pos),
        best_f1: metrics::best_f1(&vals, &pos).map(PointReport::from),
        at_threshold: Operating::at(&vals, &pos, threshold).into(),
        threshold_source: m.threshold.source.clone(),
        pixel: has_masks.then(|| PixelReport {
            auroc: pixel.auroc(),
            aupro_max_fpr: opts.max_fpr,
            aupro: pixel.aupro(opts.max_fpr),
            regions: pixel.regions(),
            images: pixel_images,
        }),
        per_kind,
        roc: metrics::roc_curve(&vals, &pos),
        scores,
    };
    let json = serde_json::to_string_pretty(&report).expect("a report always serialises") + "\n";
    write_file(&opts.out.join("eval.json"), json.as_bytes())?;
    write_file(&opts.out.join("eval.md"), report.markdown().as_bytes())?;
    let roc_png = opts.out.join("roc.png");
    roc_plot(&report).save_png(&roc_png).map_err(|e| replay_error(&roc_png, e))?;
    if opts.dump {
        let n = samples.len();
        write_npy(&opts.out.join("maps.npy"), "<f4", &[n, h, w], &dumps.0)?;
        write_npy(&opts.out.join("masks.npy"), "|u1", &[n, h, w], &dumps.1)?;
    }
    Ok(report)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

impl EvalReport {
    /// The report as a Markdown section.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let a = &self.at_threshold;
        let _ = writeln!(s, "### {} ({}) on {}\n", self.model, self.precision, self.data.display());
        let _ = writeln!(
            s,
            "{} test images ({} good, {} defective), layout {}.\n",
            self.n_images, self.n_good, self.n_defect, self.layout
        );
        let _ = writeln!(s, "| metric | value |\n|---|---|");
        let _ = writeln!(s, "| image AUROC | {} |", fmt_opt(self.image_auroc));
        if let Some(p) = &self.pixel {
            let _ = writeln!(s, "| pixel AUROC | {} |", fmt_opt(p.auroc));
            let _ = writeln!(s, "| AUPRO (FPR <= {}) | {} |", p.aupro_max_fpr, fmt_opt(p.aupro));
        }
        if let Some(b) = &self.best_f1 {
            let _ =
                writeln!(s, "| F1 at the best threshold ({:.5}, chosen on this test set) | {:.4} |", b.threshold, b.f1);
        }
        let _ =
            writeln!(s, "| F1 at the bundle threshold ({:.5}, {}) | {:.4} |", a.threshold, self.threshold_source, a.f1);
        let _ = writeln!(
            s,
            "| false rejects at the bundle threshold | {} of {} ({:.1} %) |",
            a.false_rejects,
            self.n_good,
            100.0 * a.false_reject_rate
        );
        let _ = writeln!(s, "| escapes at the bundle threshold | {} of {} |\n", a.escapes, self.n_defect);
        let _ = writeln!(s, "| kind | images | AUROC vs good | rejected | mean score |\n|---|---|---|---|---|");
        for k in &self.per_kind {
            let _ =
                writeln!(s, "| {} | {} | {} | {} | {:.4} |", k.kind, k.n, fmt_opt(k.auroc), k.rejected, k.mean_score);
        }
        s
    }
}

/// Jet-like colour for `t` in [0, 1].
fn heat(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let ch = |c: f32| (1.5 - (4.0 * t - c).abs()).clamp(0.0, 1.0);
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// Input | heatmap over input, with the defect mask outlined in white, and a caption.
fn overlay<E: Engine>(
    fs: &FrameScorer<E>,
    mask: Option<&[bool]>,
    s: &Sample,
    score: f32,
    threshold: f32,
) -> MemoryFramebuffer {
    let spec = fs.spec();
    let (w, h) = (spec.width(), spec.height());
    let plane = w * h;
    let mut fb = MemoryFramebuffer::new(2 * w as u32 + 12, h as u32 + 34);
    let _ = fb.clear(Rgb888::new(24, 24, 24));
    // The map is squared error: its threshold-scale is the image threshold (the smoothed maximum).
    let scale = threshold.max(f32::MIN_POSITIVE);
    let input = fs.input();
    let map = fs.map();
    let pixels = (0..plane).flat_map(|i| {
        let (x, y) = ((i % w) as i32, (i / w) as i32);
        let rgb: [f32; 3] =
            [0, 1, 2].map(|c| ((input[c * plane + i] * spec.std[c] + spec.mean[c]) * 255.0).clamp(0.0, 255.0));
        let hm = heat(map[i] / (1.5 * scale));
        let a = 0.55 * (map[i] / scale).clamp(0.15, 1.0);
        let mut over: [f32; 3] = [0, 1, 2].map(|c| rgb[c] * (1.0 - a) + 255.0 * hm[c] * a);
        let edge = mask.is_some_and(|m| {
            m[i] && [(-1, 0), (1, 0), (0, -1), (0, 1)].iter().any(|(dx, dy)| {
                let (nx, ny) = (x + dx, y + dy);
                nx < 0 || ny < 0 || nx >= w as i32 || ny >= h as i32 || !m[ny as usize * w + nx as usize]
            })
        });
        if edge {
            over = [255.0; 3];
        }
        let c = |v: [f32; 3]| Rgb888::new(v[0] as u8, v[1] as u8, v[2] as u8);
        [Pixel(Point::new(4 + x, 4 + y), c(rgb)), Pixel(Point::new(8 + w as i32 + x, 4 + y), c(over))]
    });
    let _ = fb.draw_iter(pixels);
    let verdict = if metrics::rejects(score, threshold) { "NG" } else { "OK" };
    let caption = format!("{}  score {score:.4} (thr {threshold:.4})  {verdict}", s.kind);
    let style = MonoTextStyle::new(&FONT_7X13, Rgb888::WHITE);
    let _ = Text::new(&caption, Point::new(6, h as i32 + 22), style).draw(&mut fb);
    fb
}

/// The ROC curve with the bundle's operating point.
fn roc_plot(r: &EvalReport) -> MemoryFramebuffer {
    let (pw, ph, x0, y0) = (400i32, 400i32, 50i32, 20i32);
    let mut fb = MemoryFramebuffer::new((x0 + pw + 20) as u32, (y0 + ph + 50) as u32);
    let _ = fb.clear(Rgb888::WHITE);
    let to = |fpr: f64, tpr: f64| {
        Point::new(x0 + (fpr * pw as f64).round() as i32, y0 + ph - (tpr * ph as f64).round() as i32)
    };
    let grey = PrimitiveStyle::with_stroke(Rgb888::new(200, 200, 200), 1);
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        let _ = Line::new(to(v, 0.0), to(v, 1.0)).into_styled(grey).draw(&mut fb);
        let _ = Line::new(to(0.0, v), to(1.0, v)).into_styled(grey).draw(&mut fb);
        let small = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
        let _ = Text::new(&format!("{v:.2}"), to(v, 0.0) + Point::new(-12, 14), small).draw(&mut fb);
        let _ = Text::new(&format!("{v:.2}"), to(0.0, v) + Point::new(-34, 4), small).draw(&mut fb);
    }
    let _ = Line::new(to(0.0, 0.0), to(1.0, 1.0))
        .into_styled(PrimitiveStyle::with_stroke(Rgb888::new(150, 150, 150), 1))
        .draw(&mut fb);
    let _ = Rectangle::new(to(0.0, 1.0), Size::new(pw as u32 + 1, ph as u32 + 1))
        .into_styled(PrimitiveStyle::with_stroke(Rgb888::BLACK, 1))
        .draw(&mut fb);
    let pts: Vec<Point> = r.roc.iter().map(|&(x, y)| to(x, y)).collect();
    let _ = Polyline::new(&pts).into_styled(PrimitiveStyle::with_stroke(Rgb888::new(30, 90, 200), 2)).draw(&mut fb);
    let a = &r.at_threshold;
    let op = to(a.false_reject_rate, a.recall);
    let _ =
        Circle::with_center(op, 9).into_styled(PrimitiveStyle::with_stroke(Rgb888::new(200, 30, 30), 2)).draw(&mut fb);
    let style = MonoTextStyle::new(&FONT_7X13, Rgb888::BLACK);
    let title = format!("{} ({})  image AUROC {}", r.model, r.precision, fmt_opt(r.image_auroc));
    let _ = Text::new(&title, Point::new(x0, 14), style).draw(&mut fb);
    let foot = "false-positive rate (good parts rejected); o = bundle threshold";
    let _ = Text::new(foot, Point::new(x0 - 30, y0 + ph + 40), style).draw(&mut fb);
    fb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        write_npy(&p, "<f4", &[2, 3], &[0u8; 24]).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(header.contains("'shape': (2, 3,)") && header.ends_with('\n'), "{header}");
        assert_eq!(b.len(), 10 + hl + 24);
    }

    #[test]
    fn masks_are_sampled_through_the_roi_at_pixel_centres() {
        let mut img = image::GrayImage::new(8, 4);
        img.put_pixel(5, 1, image::Luma([255]));
        img.put_pixel(6, 1, image::Luma([100])); // anti-aliased edge: below 128 is background
        let spec: InputSpec = serde_json::from_value(serde_json::json!({
            "name": "image", "shape": [1, 3, 2, 2], "layout": "NCHW", "color": "rgb",
            "roi": [4, 0, 4, 4], "resize": "bilinear", "mean": [0, 0, 0], "std": [1, 1, 1]
        }))
        .unwrap();
        let mut out = Vec::new();
        mask_on_input_grid(&img, &spec, &mut out);
        // Output pixel (0, 0) samples source (4 + 1, 0 + 1) = (5, 1).
        assert_eq!(out, vec![true, false, false, false]);
    }
}
