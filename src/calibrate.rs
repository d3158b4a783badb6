//! A decision threshold from good parts only (users rarely have defect images at set-up).
//!
//! The threshold is an order statistic of the good scores chosen so that the true false-reject
//! rate is at most the target with the given confidence (a distribution-free binomial bound:
//! the safety margin grows as the sample shrinks). The expected false-reject rate at an order
//! statistic is exact for any score distribution: `(n - k + 1) / (n + 1)` for the k-th smallest
//! of n. An optional relative margin raises the threshold further.

use serde::Serialize;

use crate::scoring::Reference;

/// The reference's std floor, as a fraction of the mean per-pixel std: large enough that a
/// pixel which happened to vary little among the good images cannot turn noise into a defect.
pub const REFERENCE_FLOOR: f64 = 0.1;

/// Fewest good images a reference is built from (its leave-one-out statistics need a few).
pub const REFERENCE_MIN_IMAGES: usize = 5;

/// Per-pixel mean and std of good smoothed error `maps` (all of one size), and each map's
/// leave-one-out score: the maximum of its map standardised by the statistics of the *other*
/// maps. The threshold is chosen from those, so it is not biased low by a reference that has
/// already seen the image it scores.
pub fn reference_from_maps(maps: &[Vec<f32>]) -> Result<(Reference, Vec<f32>), CalibrationError> {
    let n = maps.len();
    if n < REFERENCE_MIN_IMAGES {
        return Err(CalibrationError::BadParameter("a scoring reference needs at least 5 good images"));
    }
    let plane = maps[0].len();
    if maps.iter().any(|m| m.len() != plane) {
        return Err(CalibrationError::BadParameter("good maps of different sizes"));
    }
    if let Some(i) = maps.iter().position(|m| m.iter().any(|v| !v.is_finite())) {
        return Err(CalibrationError::NotFinite(i));
    }
    let (mut sum, mut sq) = (vec![0.0f64; plane], vec![0.0f64; plane]);
    for m in maps {
        for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(m) {
            *s += f64::from(v);
            *q += f64::from(v) * f64::from(v);
        }
    }
    let stats = |s: f64, q: f64, k: f64| {
        let mean = s / k;
        (mean, (q / k - mean * mean).max(0.0).sqrt())
    };
    let (mean, std): (Vec<f64>, Vec<f64>) = sum.iter().zip(&sq).map(|(&s, &q)| stats(s, q, n as f64)).unzip();
    let floor = (REFERENCE_FLOOR * std.iter().sum::<f64>() / plane as f64).max(1e-12);
    let loo = maps
        .iter()
        .map(|m| {
            let mut best = f64::NEG_INFINITY;
            for ((&s, &q), &v) in sum.iter().zip(&sq).zip(m) {
                let v = f64::from(v);
                let (mu, sd) = stats(s - v, q - v * v, (n - 1) as f64);
                best = best.max((v - mu) / (sd + floor));
            }
            best as f32
        })
        .collect();
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    Ok((Reference { mean: to32(mean), std: to32(std), floor: floor as f32 }, loo))
}

/// The chosen threshold and what it promises.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    /// Reject when `score >= value`.
    pub value: f32,
    /// Number of good scores it was chosen from.
    pub n_good: usize,
    /// The false-reject rate asked for.
    pub target_false_reject: f64,
    /// Confidence that the true false-reject rate is at most the target.
    pub confidence: f64,
    /// Confidence actually reached (below `confidence` when there are too few images).
    pub achieved_confidence: f64,
    /// Rank (1-based, ascending) of the order statistic used.
    pub rank: usize,
    /// Relative margin applied on top.
    pub margin: f64,
    /// Expected false-reject rate on new good parts (at most this when a margin is applied).
    pub expected_false_reject: f64,
    /// Good images needed to reach the confidence at this target.
    pub n_needed: usize,
    /// Mean of the good scores.
    pub mean: f64,
    /// Standard deviation of the good scores.
    pub std: f64,
    /// Quantiles 0.5, 0.9, 0.99 and the maximum of the good scores.
    pub quantiles: [(f64, f64); 4],
}

/// Why no threshold could be chosen.
#[derive(Debug, PartialEq)]
pub enum CalibrationError {
    /// No scores at all.
    Empty,
    /// A score is NaN or infinite (the model or the image is broken).
    NotFinite(usize),
    /// Target or confidence outside (0, 1), or a negative margin.
    BadParameter(&'static str),
}

impl std::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "no good images to calibrate on"),
            Self::NotFinite(i) => write!(f, "image {i} scored NaN or infinity: check the model and the image"),
            Self::BadParameter(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for CalibrationError {}

/// `P(Binomial(n, q) <= k)` for k = 0..=n, summed in log space so large n does not underflow.
fn binomial_cdf(n: usize, q: f64) -> Vec<f64> {
    let (lq, lp) = (q.ln(), (1.0 - q).ln());
    let mut log_pmf = n as f64 * lp; // k = 0
    let mut acc = 0.0;
    let mut cdf = Vec::with_capacity(n + 1);
    for k in 0..=n {
        acc += log_pmf.exp();
        cdf.push(acc.min(1.0));
        if k < n {
            log_pmf += ((n - k) as f64).ln() - ((k + 1) as f64).ln() + lq - lp;
        }
    }
    cdf
}

/// Smallest sample size whose maximum bounds the target with the confidence.
fn needed(target: f64, confidence: f64) -> usize {
    ((1.0 - confidence).ln() / (1.0 - target).ln()).ceil() as usize
}

fn quantile(sorted: &[f32], q: f64) -> f64 {
    // Linear interpolation between order statistics, as numpy's default.
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    f64::from(sorted[lo]) + (pos - lo as f64) * f64::from(sorted[hi] - sorted[lo])
}

impl Calibration {
    /// Checks the parameters alone (before any image is scored).
    pub fn check_parameters(target: f64, confidence: f64, margin: f64) -> Result<(), CalibrationError> {
        if !(target > 0.0 && target < 1.0) {
            return Err(CalibrationError::BadParameter("the target false-reject rate must lie in (0, 1)"));
        }
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(CalibrationError::BadParameter("the confidence must lie in (0, 1)"));
        }
        if !(margin >= 0.0 && margin.is_finite()) {
            return Err(CalibrationError::BadParameter("the margin must be 0 or more"));
        }
        Ok(())
    }

    /// Chooses the threshold for `target` false-reject rate at `confidence` from good `scores`.
    pub fn from_scores(
        scores: &[f32],
        target: f64,
        confidence: f64,
        margin: f64,
    ) -> Result<Calibration, CalibrationError> {
        Self::check_parameters(target, confidence, margin)?;
        if scores.is_empty() {
            return Err(CalibrationError::Empty);
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(CalibrationError::NotFinite(i));
        }
        let mut s = scores.to_vec();
        s.sort_unstable_by(f32::total_cmp);
        let n = s.len();
        // x_(k) >= the (1 - target) quantile  <=>  at most k - 1 samples fall below it.
        let cdf = binomial_cdf(n, 1.0 - target);
        let rank = cdf.iter().position(|&c| c >= confidence).map_or(n, |k| k + 1).min(n);
        let achieved = cdf[rank - 1];
        let value = (f64::from(s[rank - 1]) * (1.0 + margin)) as f32;
        let mean = s.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = s.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n.saturating_sub(1).max(1) as f64;
        Ok(Calibration {
            value,
            n_good: n,
            target_false_reject: target,
            confidence,
            achieved_confidence: achieved,
            rank,
            margin,
            // Exact for the order statistic; a margin can only lower it, by an amount the good
            // samples cannot tell (it moves past the data), so it is not credited.
            expected_false_reject: (n - rank + 1) as f64 / (n + 1) as f64,
            n_needed: needed(target, confidence),
            mean,
            std: var.sqrt(),
            quantiles: [0.5, 0.9, 0.99, 1.0].map(|q| (q, quantile(&s, q))),
        })
    }

    /// Whether there were enough images for the asked confidence.
    pub fn is_confident(&self) -> bool {
        self.achieved_confidence >= self.confidence
    }

    /// The manifest's `threshold` section for this calibration.
    pub fn to_manifest(&self, images: &str) -> serde_json::Value {
        let q: serde_json::Map<String, serde_json::Value> =
            self.quantiles.iter().map(|(q, v)| (format!("{q}"), serde_json::json!(v))).collect();
        serde_json::json!({
            "value": self.value,
            "source": "calibrate",
            "stats": {
                "n_good": self.n_good,
                "images": images,
                "mean": self.mean,
                "std": self.std,
                "quantiles": q,
                "target_false_reject": self.target_false_reject,
                "confidence": self.confidence,
                "achieved_confidence": self.achieved_confidence,
                "rank": self.rank,
                "margin": self.margin,
                "expected_false_reject": self.expected_false_reject,
            }
        })
    }
}

/// Where the good calibration images' maps peak: the share within the border band, against the
/// share of the image the band covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BorderPeaks {
    /// Share of the good maps whose maximum lies in the band.
    pub share: f64,
    /// Share of a `width x height` map the band of `band` pixels covers.
    pub band_area: f64,
}

impl BorderPeaks {
    /// `at_border` of `n` maps peaked within `band` pixels of the edge of a `width x height` map.
    pub fn new(at_border: usize, n: usize, band: usize, width: usize, height: usize) -> Self {
        let (w, h, b) = (width as f64, height as f64, band as f64);
        let inner = (w - 2.0 * b).max(0.0) * (h - 2.0 * b).max(0.0);
        Self { share: at_border as f64 / n.max(1) as f64, band_area: 1.0 - inner / (w * h) }
    }

    /// Most good parts peak in the band, and far more than its area would explain: their
    /// threshold is then the border's.
    pub fn dominates(&self) -> bool {
        self.share > 0.5 && self.share > 2.0 * self.band_area
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn border_peaks_dominate_only_when_far_above_the_band_area() {
        // 224 px, band 8: the band covers 1 - (208 / 224)^2 = 13.8 % of the image.
        let b = BorderPeaks::new(67, 71, 8, 224, 224);
        assert!((b.band_area - (1.0 - (208.0f64 / 224.0).powi(2))).abs() < 1e-12);
        assert!(b.dominates(), "{b:?}");
        assert!(!BorderPeaks::new(30, 71, 8, 224, 224).dominates()); // under half
        assert!(!BorderPeaks::new(50, 71, 40, 224, 224).dominates()); // a band of 58 % explains 70 %
        assert_eq!(BorderPeaks::new(0, 0, 8, 224, 224).share, 0.0);
    }

    #[test]
    fn binomial_cdf_matches_closed_forms() {
        let c = binomial_cdf(3, 0.5);
        assert_eq!(c.len(), 4);
        for (got, want) in c.iter().zip([0.125, 0.5, 0.875, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // Large n stays finite and monotone.
        let c = binomial_cdf(100_000, 0.99);
        assert!(c.windows(2).all(|w| w[0] <= w[1]) && (c[100_000] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn threshold_is_an_order_statistic_above_the_target_quantile() {
        let scores: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        let c = Calibration::from_scores(&scores, 0.01, 0.95, 0.0).unwrap();
        // Bin(1000, 0.99): mean 990, sd 3.15 -> the 95 % bound sits near 995.
        assert!((994..=996).contains(&c.rank), "{}", c.rank);
        assert_eq!(c.value, c.rank as f32);
        assert!(c.is_confident());
        assert!(c.expected_false_reject < 0.01);
        assert!((c.expected_false_reject - (1000 - c.rank + 1) as f64 / 1001.0).abs() < 1e-12);
        assert_eq!(c.quantiles[3], (1.0, 1000.0));
        assert_eq!(c.n_needed, 299);
    }

    #[test]
    fn too_few_images_use_the_maximum_and_say_so() {
        let c = Calibration::from_scores(&[0.1, 0.3, 0.2], 0.01, 0.95, 0.0).unwrap();
        assert_eq!((c.value, c.rank), (0.3, 3));
        assert!(!c.is_confident());
        assert!((c.achieved_confidence - (1.0 - 0.99f64.powi(3))).abs() < 1e-9);
        assert_eq!(c.expected_false_reject, 0.25);
    }

    #[test]
    fn margin_raises_the_threshold() {
        let c = Calibration::from_scores(&[1.0, 2.0, 4.0], 0.01, 0.95, 0.5).unwrap();
        assert_eq!(c.value, 6.0);
        assert_eq!(c.expected_false_reject, 0.25);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(Calibration::from_scores(&[], 0.01, 0.95, 0.0), Err(CalibrationError::Empty));
        assert_eq!(Calibration::from_scores(&[1.0, f32::NAN], 0.01, 0.95, 0.0), Err(CalibrationError::NotFinite(1)));
        assert!(Calibration::from_scores(&[1.0], 0.0, 0.95, 0.0).is_err());
        assert!(Calibration::from_scores(&[1.0], 0.01, 1.0, 0.0).is_err());
        assert!(Calibration::from_scores(&[1.0], 0.01, 0.9, -1.0).is_err());
    }

    #[test]
    fn reference_statistics_and_leave_one_out_scores() {
        // Two pixels, five maps: pixel 0 always 1.0 (no spread), pixel 1 spreads.
        let maps: Vec<Vec<f32>> = [0.0f32, 1.0, 2.0, 3.0, 4.0].iter().map(|&v| vec![1.0, v]).collect();
        let (r, loo) = reference_from_maps(&maps).unwrap();
        assert_eq!(r.mean, vec![1.0, 2.0]);
        assert_eq!(r.std[0], 0.0);
        assert!((r.std[1] - 2f32.sqrt()).abs() < 1e-6);
        assert!((f64::from(r.floor) - 0.1 * 2f64.sqrt() / 2.0).abs() < 1e-6);
        // Brute force: leave map i out, standardise it by the other four.
        for (i, m) in maps.iter().enumerate() {
            let others: Vec<f64> =
                maps.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| f64::from(m[1])).collect();
            let mu = others.iter().sum::<f64>() / 4.0;
            let sd = (others.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 4.0).sqrt();
            let z1 = (f64::from(m[1]) - mu) / (sd + f64::from(r.floor));
            let want = z1.max(0.0); // pixel 0: (1 - 1) / (0 + floor) = 0
            assert!((f64::from(loo[i]) - want).abs() < 1e-5, "{i}: {} vs {want}", loo[i]);
        }
        assert!(reference_from_maps(&maps[..4]).is_err());
        let mut bad = maps.clone();
        bad[2][1] = f32::NAN;
        assert_eq!(reference_from_maps(&bad).unwrap_err(), CalibrationError::NotFinite(2));
    }
}
