"""Scoring against scipy's reference Gaussian (docs/BUNDLE.md, Scoring and Threshold)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import common


@pytest.mark.parametrize("sigma,truncate", [(1.0, 4.0), (2.5, 4.0), (4.0, 4.0), (6.0, 2.0), (15.0, 4.0)])
def test_smoothing_matches_scipy_reflect(sigma, truncate):
    err = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    ref = gaussian_filter(err.astype(np.float64), sigma, mode="reflect", truncate=truncate)
    np.testing.assert_allclose(common.smooth(err, sigma, truncate), ref, rtol=2e-5, atol=1e-7)


def test_kernel_radius_and_normalisation():
    w = common.gaussian_kernel(4.0, 4.0)
    assert len(w) == 2 * 16 + 1  # floor(4 * 4 + 0.5) = 16
    assert len(common.gaussian_kernel(1.2, 3.0)) == 2 * 4 + 1  # floor(3.6 + 0.5) = 4
    assert abs(float(w.sum()) - 1.0) < 1e-6


def test_sigma_zero_is_no_smoothing_and_score_is_max():
    x = np.zeros((3, 4, 5), np.float32)
    r = x.copy()
    r[:, 1, 2] = (1.0, 2.0, 3.0)
    e = common.error_map(x, r)
    assert e[1, 2] == pytest.approx((1 + 4 + 9) / 3)
    assert common.score(x, r, 0.0, 4.0) == pytest.approx(14 / 3)
    assert common.score(x, r, 1.0, 4.0) < 14 / 3


def test_threshold_good_quantile():
    scores = np.arange(101, dtype=np.float64)  # q(0.99) = 99
    t = common.threshold_good_quantile(scores, 0.01, 1.0)
    assert t["value"] == pytest.approx(99 + scores.std(ddof=1))
    assert t["source"] == "good-quantile"
    assert t["stats"]["quantiles"]["1.0"] == 100 and t["stats"]["n_good"] == 101
