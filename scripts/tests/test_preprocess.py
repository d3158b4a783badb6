"""Preprocessing against hand-computed cases (docs/BUNDLE.md, Preprocessing)."""

import numpy as np
import pytest

import common


def row(values):
    """A 1 x W x 3 float32 image whose three channels all hold `values`."""
    return np.repeat(np.asarray(values, np.float32)[None, :, None], 3, axis=2)


def test_downscale_by_two_takes_pixel_pair_means():
    # s = (d + 0.5) * 4 / 2 - 0.5 = 0.5, 2.5: halfway between pixels 0|1 and 2|3.
    out = common.resize_bilinear(row([0, 10, 20, 30]), 1, 2)
    np.testing.assert_array_equal(out[0, :, 0], [5, 25])


def test_upscale_clamps_at_the_borders():
    # s = (d + 0.5) * 2 / 4 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped to 0 and 1 at the ends.
    out = common.resize_bilinear(row([0, 10]), 1, 4)
    np.testing.assert_array_equal(out[0, :, 0], [0, 2.5, 7.5, 10])


def test_non_integer_ratio_hand_computed():
    # in 3 -> out 2: s = (d + 0.5) * 1.5 - 0.5 = 0.25, 1.75.
    out = common.resize_bilinear(row([0, 100, 200]), 1, 2)
    np.testing.assert_allclose(out[0, :, 0], [25, 175], rtol=1e-6)


def test_resize_is_separable_in_both_axes_and_identity_at_same_size():
    img = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    np.testing.assert_array_equal(common.resize_bilinear(img, 4, 6), img)
    col = common.resize_bilinear(img[:, :1], 2, 1)  # vertical only: rows 0|1 and 2|3 averaged
    np.testing.assert_allclose(col[:, 0], (img[0:4:2, 0] + img[1:4:2, 0]) / 2)


def test_normalisation_crop_and_layout():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 4:8] = (255, 51, 0)
    pre = common.Preprocess(2, 4, mean=(0.5, 0.1, 0.0), std=(0.25, 0.5, 1.0), roi=(4, 2, 4, 2))
    x = pre(rgb)
    assert x.shape == (3, 2, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.25, (0.2 - 0.1) / 0.5, 0.0], rtol=1e-6)


def test_gray_takes_luminance_on_all_three_channels():
    rgb = np.full((4, 4, 3), (100, 50, 200), np.uint8)
    x = common.Preprocess(4, 4, (0.0,) * 3, (1.0,) * 3, color="gray")(rgb)
    np.testing.assert_allclose(x[:, 0, 0], [(0.299 * 100 + 0.587 * 50 + 0.114 * 200) / 255] * 3, rtol=1e-6)


def test_roi_outside_the_image_is_refused():
    with pytest.raises(ValueError):
        common.Preprocess(4, 4, (0.0,) * 3, (1.0,) * 3, roi=(6, 0, 4, 4))(np.zeros((8, 8, 3), np.uint8))


def test_manifest_round_trip():
    pre = common.Preprocess(32, 48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "rgb", (1, 2, 3, 4))
    assert common.Preprocess.from_manifest(pre.to_manifest()) == pre
