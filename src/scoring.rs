//! Reconstruction -> anomaly map -> image score (see `docs/BUNDLE.md`, Scoring).
//!
//! Pure arithmetic on buffers allocated once; the same steps as `scripts/common.py`.

use crate::bundle::{ScoringKind, ScoringSpec};

/// Per-pixel statistics of good parts' smoothed error maps (`anovit calibrate --reference`).
/// With it, the map becomes `(map - mean) / (std + floor)`: how unusual the error is *at that
/// spot*, so places that are always hard to reconstruct (edges, reflections, threads) stop
/// dominating the score of a fixtured part.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// Mean smoothed error per pixel, row-major.
    pub mean: Vec<f32>,
    /// Standard deviation per pixel (over the good maps, population).
    pub std: Vec<f32>,
    /// Added to `std` so quiet pixels do not amplify noise.
    pub floor: f32,
}

impl Reference {
    /// Bytes of the bundle's reference file: `mean` then `std`, f32 little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.mean.iter().chain(&self.std).flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Parses a reference file for a `plane`-pixel map; the error says what is wrong.
    pub fn from_bytes(bytes: &[u8], plane: usize, floor: f32) -> Result<Self, String> {
        if bytes.len() != 8 * plane {
            return Err(format!("holds {} bytes, a {plane}-pixel map needs {}", bytes.len(), 8 * plane));
        }
        let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.iter().any(|x| !x.is_finite()) || v[plane..].iter().any(|&x| x < 0.0) {
            return Err("holds a non-finite value or a negative deviation".into());
        }
        if !(floor.is_finite() && floor > 0.0) {
            return Err(format!("floor {floor} must be positive"));
        }
        Ok(Self { mean: v[..plane].to_vec(), std: v[plane..].to_vec(), floor })
    }

    /// The per-pixel factors `1 / (std + floor)` [`standardise`] multiplies by, in f32.
    pub fn factors(&self) -> Vec<f32> {
        self.std.iter().map(|s| 1.0 / (s + self.floor)).collect()
    }
}

/// `map[p] = (map[p] - mean[p]) * factors[p]`: a smoothed map standardised by a reference
/// ([`Reference::factors`]), as the runtime scores with it.
pub fn standardise(map: &mut [f32], mean: &[f32], factors: &[f32]) {
    for ((v, m), k) in map.iter_mut().zip(mean).zip(factors) {
        *v = (*v - m) * k;
    }
}

/// Gaussian kernel of `sigma` with radius `floor(truncate * sigma + 0.5)`, normalised to 1.
/// `sigma == 0` gives the identity kernel `[1]`.
pub fn gaussian_kernel(sigma: f32, truncate: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    // In f64, then rounded once, as `scripts/common.py` does.
    let (sigma, truncate) = (f64::from(sigma), f64::from(truncate));
    let r = (truncate * sigma + 0.5).floor() as i64;
    let k: Vec<f64> = (-r..=r).map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp()).collect();
    let sum: f64 = k.iter().sum();
    k.iter().map(|v| (v / sum) as f32).collect()
}

/// Index `i` (may be outside `0..n`) mirrored into range, edge sample repeated
/// (`d c b a | a b c d | d c b a`), for any distance from the edge.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let m = i.rem_euclid(2 * n);
    (if m < n { m } else { 2 * n - 1 - m }) as usize
}

/// Outputs kept in registers at a time by [`fir`].
const LANES: usize = 16;

/// `out[i] = sum_k kernel[k] * base[start[k] + i]` for a symmetric kernel of odd length:
/// mirrored taps are added before their one multiply, and `LANES` outputs are kept in
/// registers at a time, so that the loop vectorises and each output is stored once.
#[inline(always)]
fn fir(out: &mut [f32], base: &[f32], start: &[usize], kernel: &[f32]) {
    let (n, r) = (out.len(), kernel.len() / 2);
    let pairs = || kernel[..r].iter().zip(&start[..r]).zip(start[r + 1..].iter().rev());
    let mut chunks = out.chunks_exact_mut(LANES);
    for (c, o) in (&mut chunks).enumerate() {
        let x0 = c * LANES;
        let lanes = |s: usize| -> &[f32; LANES] { base[s + x0..s + x0 + LANES].try_into().expect("LANES samples") };
        let mut acc = [0f32; LANES];
        for (a, x) in acc.iter_mut().zip(lanes(start[r])) {
            *a = kernel[r] * x;
        }
        for ((&kw, &s0), &s1) in pairs() {
            for ((a, x), y) in acc.iter_mut().zip(lanes(s0)).zip(lanes(s1)) {
                *a += kw * (x + y);
            }
        }
        o.copy_from_slice(&acc);
    }
    let x0 = n - chunks.into_remainder().len();
    for i in x0..n {
        out[i] =
            pairs().fold(kernel[r] * base[start[r] + i], |a, ((&kw, &s0), &s1)| a + kw * (base[s0 + i] + base[s1 + i]));
    }
}

crate::simd::multiversion! {
    /// Separable convolution of a `w x h` plane `src` with `kernel` along both axes, reflect
    /// borders, into `dst`. Scratch: `pad` holds a row with its borders (`w + kernel.len() - 1`),
    /// `rows` a `w x h` plane, `start` one offset per tap. Compiled per vector width.
    #[allow(clippy::too_many_arguments)]
    fn smooth(
        src: &[f32],
        dst: &mut [f32],
        rows: &mut [f32],
        pad: &mut [f32],
        start: &mut [usize],
        w: usize,
        h: usize,
        kernel: &[f32],
    ) {
        let r = kernel.len() / 2;
        for (k, s) in start.iter_mut().enumerate() {
            *s = k;
        }
        for (s, d) in src.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
            pad[r..r + w].copy_from_slice(s);
            for i in (0..r).chain(r + w..pad.len()) {
                pad[i] = s[reflect(i as isize - r as isize, w)];
            }
            fir(d, pad, start, kernel);
        }
        for (y, d) in dst.chunks_exact_mut(w).enumerate() {
            for (k, s) in start.iter_mut().enumerate() {
                *s = reflect(y as isize + k as isize - r as isize, h) * w;
            }
            fir(d, rows, start, kernel);
        }
    }
}

crate::simd::multiversion! {
    /// The anomaly map before smoothing: per pixel, the channels' mean squared error.
    fn squared_error(out: &mut [f32], input: &[f32], recon: &[f32]) {
        let plane = out.len();
        let (i0, i1, i2) = (&input[..plane], &input[plane..2 * plane], &input[2 * plane..3 * plane]);
        let (r0, r1, r2) = (&recon[..plane], &recon[plane..2 * plane], &recon[2 * plane..3 * plane]);
        for (i, e) in out.iter_mut().enumerate() {
            let (d0, d1, d2) = (i0[i] - r0[i], i1[i] - r1[i], i2[i] - r2[i]);
            *e = (d0 * d0 + d1 * d1 + d2 * d2) / 3.0;
        }
    }
}

crate::simd::multiversion! {
    /// The learned anomaly map before smoothing: per pixel, the probability `1 / (1 + e^-l)` of
    /// the discriminative stage's logit (NaN stays NaN).
    fn sigmoid(out: &mut [f32], logits: &[f32]) {
        for (p, &l) in out.iter_mut().zip(logits) {
            *p = 1.0 / (1.0 + (-l).exp());
        }
    }
}

/// Whether the (first) maximum of a row-major map `width` pixels wide lies within `band` pixels
/// of its edge. Reconstructions are weakest at the image border, and on Magnetic Tile the good
/// parts' maps peak there (docs/SWEEP.md, grid 3), so their threshold is set by the border rather
/// than by the part. NaN never counts as the maximum.
pub fn peak_near_border(map: &[f32], width: usize, band: usize) -> bool {
    let height = map.len() / width;
    let mut best = (f32::NEG_INFINITY, None);
    for (i, &v) in map.iter().enumerate() {
        if v > best.0 {
            best = (v, Some(i));
        }
    }
    best.1.is_some_and(|i| {
        let (y, x) = (i / width, i % width);
        y.min(height - 1 - y) < band || x.min(width - 1 - x) < band
    })
}

/// Turns reconstructions into anomaly maps and scores, reusing its buffers.
#[derive(Debug)]
pub struct Scorer {
    kind: ScoringKind,
    width: usize,
    height: usize,
    kernel: Vec<f32>,
    map: Vec<f32>,
    tmp: Vec<f32>,
    rows: Vec<f32>,
    pad: Vec<f32>,
    start: Vec<usize>,
    /// Per-pixel mean and 1 / (std + floor) of the reference, when there is one.
    reference: Option<(Vec<f32>, Vec<f32>)>,
}

impl Scorer {
    /// Buffers for `width x height` maps with `spec`'s smoothing.
    pub fn new(width: usize, height: usize, spec: &ScoringSpec) -> Self {
        let kernel = gaussian_kernel(spec.sigma, spec.truncate);
        Self {
            kind: spec.kind,
            width,
            height,
            pad: vec![0.0; width + 2 * (kernel.len() / 2)],
            start: vec![0; kernel.len()],
            kernel,
            map: vec![0.0; width * height],
            tmp: vec![0.0; width * height],
            rows: vec![0.0; width * height],
            reference: None,
        }
    }

    /// Standardises every map by `reference` (its planes must have `width * height` pixels).
    pub fn with_reference(mut self, reference: Option<&Reference>) -> Self {
        self.reference = reference.map(|r| {
            debug_assert_eq!(r.mean.len(), self.map.len());
            (r.mean.clone(), r.factors())
        });
        self
    }

    /// The smoothed anomaly map of the last [`Self::score`], row-major `height x width`.
    pub fn map(&self) -> &[f32] {
        &self.map
    }

    /// Map width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Map height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width in map pixels of the border band [`Self::peak_near_border`] looks at: 1/28 of the
    /// shorter side (8 px at 224, half a ViT patch), at least 1.
    pub fn border_band(&self) -> usize {
        (self.width.min(self.height) / 28).max(1)
    }

    /// Whether the last map peaks near its border ([`peak_near_border`] with [`Self::border_band`]).
    pub fn peak_near_border(&self) -> bool {
        peak_near_border(&self.map, self.width, self.border_band())
    }

    /// Scores one frame from its model input (NCHW, 3 channels) and the model output the
    /// bundle scores: the reconstruction (NCHW, 3 channels) or the anomaly logits (one plane).
    /// A non-finite output gives a NaN score, which the decision treats as a fault.
    pub fn score(&mut self, input: &[f32], output: &[f32]) -> f32 {
        let plane = self.width * self.height;
        debug_assert_eq!(input.len(), 3 * plane);
        match self.kind {
            ScoringKind::ReconstructionError => {
                debug_assert_eq!(output.len(), 3 * plane);
                squared_error(&mut self.tmp, input, output);
            }
            ScoringKind::LearnedMap => {
                debug_assert_eq!(output.len(), plane);
                sigmoid(&mut self.tmp, output);
            }
        }
        let (w, h) = (self.width, self.height);
        smooth(&self.tmp, &mut self.map, &mut self.rows, &mut self.pad, &mut self.start, w, h, &self.kernel);
        if let Some((mean, inv)) = &self.reference {
            standardise(&mut self.map, mean, inv);
        }
        // NaN tracked apart from the maximum, so that the loop vectorises.
        let (max, nan) = self.map.iter().fold((f32::NEG_INFINITY, false), |(m, nan), &v| (m.max(v), nan | v.is_nan()));
        if nan {
            f32::NAN
        } else {
            max
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sigma: f32) -> ScoringSpec {
        ScoringSpec {
            kind: ScoringKind::ReconstructionError,
            error: "squared_mean_channels".into(),
            sigma,
            truncate: 4.0,
            reduction: "max".into(),
            reference: None,
        }
    }

    #[test]
    fn kernel_matches_scipy_radius_and_sums_to_one() {
        let k = gaussian_kernel(1.5, 4.0);
        assert_eq!(k.len(), 2 * 6 + 1);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(gaussian_kernel(0.0, 4.0), vec![1.0]);
    }

    #[test]
    fn reflect_mirrors_with_edge_repeated() {
        let got: Vec<usize> = (-4..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]);
        assert_eq!(reflect(-9, 2), 0);
    }

    #[test]
    fn unsmoothed_score_is_max_channel_mean_squared_error() {
        let mut s = Scorer::new(2, 1, &spec(0.0));
        let input = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let recon = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
        assert_eq!(s.score(&input, &recon), 4.0);
        assert_eq!(s.map(), &[1.0, 4.0]);
    }

    #[test]
    fn smoothing_preserves_a_constant_map_and_spreads_a_spike() {
        let mut s = Scorer::new(9, 7, &spec(1.0));
        let input = vec![0.0; 3 * 63];
        let recon = vec![2.0; 3 * 63];
        assert!((s.score(&input, &recon) - 4.0).abs() < 1e-5);
        let mut recon = vec![0.0; 3 * 63];
        for c in 0..3 {
            recon[c * 63 + 3 * 9 + 4] = 1.0;
        }
        let peak = s.score(&input, &recon);
        let k = gaussian_kernel(1.0, 4.0);
        assert!((peak - k[4] * k[4]).abs() < 1e-6, "{peak}");
        // Energy is preserved away from borders.
        assert!((s.map().iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn peaks_near_the_border_are_told_from_peaks_inside() {
        // 56 x 56: a band of 2 px. One spike per frame, unsmoothed, so the map peaks there.
        let mut s = Scorer::new(56, 56, &spec(0.0));
        assert_eq!(s.border_band(), 2);
        let input = vec![0.0; 3 * 56 * 56];
        let mut at = |y: usize, x: usize, nan: Option<usize>| {
            let mut recon = vec![0.0; 3 * 56 * 56];
            recon[y * 56 + x] = 3.0;
            if let Some(i) = nan {
                recon[i] = f32::NAN;
            }
            s.score(&input, &recon);
            s.peak_near_border()
        };
        assert!(at(0, 30, None) && at(30, 54, None) && at(55, 55, None) && at(1, 1, None));
        assert!(!at(2, 30, None) && !at(30, 53, None) && !at(28, 28, None));
        // A NaN pixel (a faulty frame, refused elsewhere) is not taken for the peak.
        assert!(!at(28, 28, Some(0)));
        assert_eq!(Scorer::new(20, 224, &spec(0.0)).border_band(), 1);
    }

    #[test]
    fn a_learned_map_is_the_sigmoid_of_the_logits_smoothed() {
        let learned = |sigma| ScoringSpec { kind: ScoringKind::LearnedMap, error: "sigmoid".into(), ..spec(sigma) };
        // Unsmoothed: the map is exactly the per-pixel probability; the input is not read.
        let mut s = Scorer::new(3, 1, &learned(0.0));
        let logits = [0.0, 2.0, -30.0];
        let score = s.score(&[9.0; 9], &logits);
        let want: Vec<f32> = logits.iter().map(|&l: &f32| 1.0 / (1.0 + (-l).exp())).collect();
        assert_eq!(s.map(), &want[..]);
        assert_eq!(score, want[1]);
        assert_eq!(s.map()[0], 0.5);
        assert!(s.map()[2] < 1e-12);
        // Smoothed: one confident pixel in a quiet plane scores its probability times the
        // kernel's centre weight squared, plus the quiet pixels' share around it.
        let mut s = Scorer::new(9, 7, &learned(1.0));
        let mut logits = vec![-40.0; 63];
        logits[3 * 9 + 4] = 40.0;
        let k = gaussian_kernel(1.0, 4.0);
        assert!((s.score(&[0.0; 3 * 63], &logits) - k[4] * k[4]).abs() < 1e-6);
        logits[0] = f32::NAN;
        assert!(s.score(&[0.0; 3 * 63], &logits).is_nan());
    }

    #[test]
    fn nan_reconstruction_gives_nan_score() {
        let mut s = Scorer::new(2, 1, &spec(0.0));
        assert!(s.score(&[0.0; 6], &[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]).is_nan());
    }

    #[test]
    fn a_reference_standardises_the_map_per_pixel() {
        let r = Reference { mean: vec![1.0, 0.0], std: vec![0.5, 2.0], floor: 0.5 };
        let mut s = Scorer::new(2, 1, &spec(0.0)).with_reference(Some(&r));
        let input = [0.0; 6];
        let recon = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]; // raw map [4, 4]
                                                    // (4 - 1) / (0.5 + 0.5) = 3 and (4 - 0) / (2 + 0.5) = 1.6.
        assert_eq!(s.score(&input, &recon), 3.0);
        assert_eq!(s.map(), &[3.0, 1.6]);
        let back = Reference::from_bytes(&r.to_bytes(), 2, 0.5).unwrap();
        assert_eq!(back, r);
        assert!(Reference::from_bytes(&r.to_bytes(), 3, 0.5).unwrap_err().contains("needs 24"));
        assert!(Reference::from_bytes(&r.to_bytes(), 2, 0.0).unwrap_err().contains("positive"));
        let neg = Reference { std: vec![-1.0, 0.0], ..r };
        assert!(Reference::from_bytes(&neg.to_bytes(), 2, 0.5).is_err());
    }
}
