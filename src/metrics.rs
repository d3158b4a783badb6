//! Detection and localisation metrics for `anovit eval`: image and pixel AUROC, the ROC curve,
//! F1 (best and at a given threshold) and AUPRO, computed exactly from sorted scores.
//!
//! Conventions follow scikit-learn and the MVTec AD evaluation: a part is rejected when its
//! score is `>= threshold`; tied scores move together; curves are integrated with the trapezoid
//! rule; AUPRO integrates the per-region overlap over the false-positive rate up to a limit and
//! divides by that limit. `scripts/tests/test_eval.py` cross-checks these against scikit-learn.

use std::cmp::Ordering;

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half. `None` when either class is empty or a score is NaN.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let (mut pos, mut neg): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    for (&s, &p) in scores.iter().zip(positive) {
        if p {
            pos.push(s)
        } else {
            neg.push(s)
        }
    }
    auc_two_samples(&mut pos, &mut neg)
}

/// AUROC from the scores of positives and negatives (both sorted here), in one merge pass.
pub fn auc_two_samples(pos: &mut [f32], neg: &mut [f32]) -> Option<f64> {
    if pos.is_empty() || neg.is_empty() || pos.iter().chain(neg.iter()).any(|v| v.is_nan()) {
        return None;
    }
    pos.sort_unstable_by(f32::total_cmp);
    neg.sort_unstable_by(f32::total_cmp);
    // For each positive: negatives strictly below count 1, equal ones 1/2.
    let (mut below, mut upto, mut sum) = (0usize, 0usize, 0f64);
    for &p in pos.iter() {
        while below < neg.len() && neg[below] < p {
            below += 1;
        }
        upto = upto.max(below);
        while upto < neg.len() && neg[upto] <= p {
            upto += 1;
        }
        sum += below as f64 + 0.5 * (upto - below) as f64;
    }
    Some(sum / (pos.len() as f64 * neg.len() as f64))
}

/// Whether the line rejects a part with `score` at `threshold`: at or above it, and always when
/// the score is NaN (a fault rejects).
pub fn rejects(score: f32, threshold: f32) -> bool {
    score >= threshold || score.is_nan()
}

/// `num / den`, or `empty` when `den` is 0.
fn ratio(num: usize, den: usize, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

/// One operating point: reject when `score >= threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Operating {
    /// The threshold.
    pub threshold: f32,
    /// Positives rejected (defects caught).
    pub tp: usize,
    /// Negatives rejected (false rejects).
    pub fp: usize,
    /// Positives passed (escapes).
    pub fn_: usize,
    /// Negatives passed.
    pub tn: usize,
}

impl Operating {
    /// Counts at `threshold`.
    pub fn at(scores: &[f32], positive: &[bool], threshold: f32) -> Self {
        let mut o = Self { threshold, tp: 0, fp: 0, fn_: 0, tn: 0 };
        for (&s, &p) in scores.iter().zip(positive) {
            match (p, rejects(s, threshold)) {
                (true, true) => o.tp += 1,
                (false, true) => o.fp += 1,
                (true, false) => o.fn_ += 1,
                (false, false) => o.tn += 1,
            }
        }
        o
    }

    /// Precision (1 when nothing is rejected, as scikit-learn's curve starts).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp, 1.0)
    }

    /// Recall (detection rate).
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_, 0.0)
    }

    /// F1 score (0 when nothing is detected).
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// False-reject rate among negatives.
    pub fn false_reject_rate(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn, 0.0)
    }
}

/// Scores sorted descending with their labels, NaN first (a NaN part is always rejected).
fn descending(scores: &[f32], positive: &[bool]) -> Vec<(f32, bool)> {
    let mut v: Vec<(f32, bool)> = scores.iter().copied().zip(positive.iter().copied()).collect();
    v.sort_unstable_by(|a, b| match (a.0.is_nan(), b.0.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => b.0.total_cmp(&a.0),
    });
    v
}

/// The ROC curve as (false-positive rate, true-positive rate) points at every distinct score,
/// from (0, 0) to (1, 1). Empty when a class is empty.
pub fn roc_curve(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64)> {
    let np = positive.iter().filter(|&&p| p).count();
    let nn = positive.len() - np;
    if np == 0 || nn == 0 {
        return Vec::new();
    }
    let v = descending(scores, positive);
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    for (i, &(s, p)) in v.iter().enumerate() {
        if p {
            tp += 1
        } else {
            fp += 1
        }
        let last_of_tie = v.get(i + 1).is_none_or(|n| n.0.total_cmp(&s) != Ordering::Equal);
        if last_of_tie {
            pts.push((fp as f64 / nn as f64, tp as f64 / np as f64));
        }
    }
    pts
}

/// The operating point with the highest F1 over all thresholds at observed scores.
pub fn best_f1(scores: &[f32], positive: &[bool]) -> Option<Operating> {
    let np = positive.iter().filter(|&&p| p).count();
    if np == 0 {
        return None;
    }
    let nn = positive.len() - np;
    let v = descending(scores, positive);
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best: Option<Operating> = None;
    for (i, &(s, p)) in v.iter().enumerate() {
        if p {
            tp += 1
        } else {
            fp += 1
        }
        if v.get(i + 1).is_some_and(|n| n.0.total_cmp(&s) == Ordering::Equal) {
            continue;
        }
        let o = Operating { threshold: s, tp, fp, fn_: np - tp, tn: nn - fp };
        if best.is_none_or(|b| o.f1() > b.f1()) {
            best = Some(o);
        }
    }
    best
}

/// Trapezoid area under `(x, y)` points sorted by x.
fn trapezoid(pts: &[(f64, f64)]) -> f64 {
    pts.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum()
}

/// Area under the ROC curve by the trapezoid rule (equals [`roc_auc`]).
pub fn curve_auc(pts: &[(f64, f64)]) -> f64 {
    trapezoid(pts)
}

/// Labels the 8-connected regions of a binary mask (`labels[i] = 0` off the mask, `1..=n` on
/// it) and returns their sizes (`sizes[r - 1]` for region `r`).
pub fn connected_regions(mask: &[bool], width: usize, height: usize, labels: &mut Vec<u32>) -> Vec<usize> {
    labels.clear();
    labels.resize(width * height, 0);
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..width * height {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        labels[start] = id;
        stack.push(start);
        let mut n = 0;
        while let Some(i) = stack.pop() {
            n += 1;
            let (x, y) = ((i % width) as isize, (i / width) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let j = ny as usize * width + nx as usize;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        sizes.push(n);
    }
    sizes
}

/// Pixel-level statistics gathered image by image without keeping the maps: the scores of
/// defect-free pixels, and the scores of defect pixels with their region's size.
#[derive(Debug, Default)]
pub struct PixelStats {
    normal: Vec<f32>,
    defect: Vec<(f32, u32)>,
    regions: Vec<usize>,
    labels: Vec<u32>,
}

impl PixelStats {
    /// Adds one image's anomaly map and ground-truth mask (same size, row-major).
    pub fn add(&mut self, map: &[f32], mask: &[bool], width: usize, height: usize) {
        let offset = self.regions.len() as u32;
        let sizes = connected_regions(mask, width, height, &mut self.labels);
        self.regions.extend(sizes);
        for ((&s, &m), &l) in map.iter().zip(mask).zip(&self.labels) {
            if m {
                self.defect.push((s, offset + l - 1));
            } else {
                self.normal.push(s);
            }
        }
    }

    /// Number of defect regions seen.
    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    /// Pixel AUROC; `None` without defect pixels.
    pub fn auroc(&mut self) -> Option<f64> {
        let mut pos: Vec<f32> = self.defect.iter().map(|d| d.0).collect();
        auc_two_samples(&mut pos, &mut self.normal)
    }

    /// Area under the per-region-overlap curve for false-positive rates up to `max_fpr`,
    /// divided by `max_fpr` (1 is perfect); `None` without defect regions.
    pub fn aupro(&mut self, max_fpr: f64) -> Option<f64> {
        if self.regions.is_empty() || self.normal.is_empty() {
            return None;
        }
        self.normal.sort_unstable_by(|a, b| b.total_cmp(a));
        self.defect.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let (nn, nr) = (self.normal.len() as f64, self.regions.len() as f64);
        let (mut i, mut j) = (0usize, 0usize);
        let mut overlap = 0f64; // sum over regions of (covered pixels / region size)
        let mut pts = vec![(0.0f64, 0.0f64)];
        while i < self.normal.len() || j < self.defect.len() {
            // Next threshold: the largest remaining score; take every pixel at it.
            let t = match (self.normal.get(i), self.defect.get(j)) {
                (Some(&a), Some(&(b, _))) => a.max(b),
                (Some(&a), None) => a,
                (None, Some(&(b, _))) => b,
                (None, None) => unreachable!(),
            };
            while i < self.normal.len() && self.normal[i] >= t {
                i += 1;
            }
            while j < self.defect.len() && self.defect[j].0 >= t {
                overlap += 1.0 / self.regions[self.defect[j].1 as usize] as f64;
                j += 1;
            }
            let (fpr, pro) = (i as f64 / nn, overlap / nr);
            if fpr > max_fpr {
                let (x0, y0) = *pts.last().unwrap_or(&(0.0, 0.0));
                let y = y0 + (pro - y0) * (max_fpr - x0) / (fpr - x0);
                pts.push((max_fpr, y));
                break;
            }
            pts.push((fpr, pro));
        }
        Some(trapezoid(&pts) / max_fpr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_ties_as_half() {
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(roc_auc(&[1.0, 1.0], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(roc_auc(&[f32::NAN, 2.0], &[false, true]), None);
    }

    #[test]
    fn roc_curve_area_equals_auroc() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.2];
        let y = [false, false, true, true, true, false];
        let pts = roc_curve(&s, &y);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        assert!((curve_auc(&pts) - roc_auc(&s, &y).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn best_f1_finds_the_separating_threshold() {
        let s = [0.1, 0.2, 0.3, 0.7, 0.8, 0.25];
        let y = [false, false, false, true, true, true];
        let b = best_f1(&s, &y).unwrap();
        // At 0.7: tp 2, fp 0, fn 1 -> F1 0.8; at 0.25: tp 3, fp 1 -> F1 6/7.
        assert_eq!(b.threshold, 0.25);
        assert!((b.f1() - 6.0 / 7.0).abs() < 1e-12);
        let o = Operating::at(&s, &y, 0.7);
        assert_eq!((o.tp, o.fp, o.fn_, o.tn), (2, 0, 1, 3));
    }

    #[test]
    fn nan_scores_count_as_rejected() {
        let o = Operating::at(&[f32::NAN, 0.1], &[false, true], 0.5);
        assert_eq!((o.fp, o.fn_), (1, 1));
    }

    #[test]
    fn regions_are_eight_connected() {
        #[rustfmt::skip]
        let m = [
            true,  false, false, false,
            false, true,  false, true,
            false, false, false, true,
        ];
        let mut labels = Vec::new();
        let sizes = connected_regions(&m, 4, 3, &mut labels);
        assert_eq!(sizes, vec![2, 2]);
        assert_eq!(labels, vec![1, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 2]);
    }

    #[test]
    fn aupro_is_one_for_a_perfect_map_and_weights_regions_equally() {
        // 1 x 8 image: a large region (4 px) and a small one (1 px), with a gap between.
        let mask = [true, true, true, true, false, true, false, false];
        let mut p = PixelStats::default();
        p.add(&[9.0, 9.0, 9.0, 9.0, 0.0, 9.0, 0.0, 0.0], &mask, 8, 1);
        assert_eq!(p.regions(), 2);
        assert_eq!(p.aupro(0.3), Some(1.0));
        assert_eq!(p.auroc(), Some(1.0));
        // Small region missed entirely (scored below every normal pixel): PRO stays 0.5
        // until all normal pixels are in, beyond the 0.3 limit.
        let mut p = PixelStats::default();
        p.add(&[9.0, 9.0, 9.0, 9.0, 1.0, -1.0, 1.0, 1.0], &mask, 8, 1);
        assert!((p.aupro(0.3).unwrap() - 0.5).abs() < 1e-12);
    }
}
