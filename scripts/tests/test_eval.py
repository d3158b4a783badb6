"""Cross-checks `anovit eval`'s metrics (written in Rust) against scikit-learn and an
independent numpy AUPRO on the same scores, maps and masks."""

import json
import os
import subprocess
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ANOVIT_BIN", ROOT / "target" / "release" / "anovit"))


def regions(mask: np.ndarray) -> np.ndarray:
    """8-connected labels by breadth-first search (0 = background)."""
    lab = np.zeros(mask.shape, dtype=np.int32)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if lab[y, x]:
            continue
        n += 1
        lab[y, x] = n
        q = deque([(y, x)])
        while q:
            cy, cx = q.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not lab[ny, nx]:
                        lab[ny, nx] = n
                        q.append((ny, nx))
    return lab


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """PRO over FPR at every distinct score, trapezoid up to max_fpr (interpolated), / max_fpr."""
    weights, normal = [], []
    for m, k in zip(maps, masks):
        lab = regions(k)
        sizes = np.bincount(lab.ravel())
        w = np.where(lab > 0, 1.0 / np.maximum(sizes[lab], 1), 0.0)
        weights.append(w.ravel())
        normal.append(~k.ravel())
    w, normal = np.concatenate(weights), np.concatenate(normal)
    n_regions = sum(int(regions(k).max()) for k in masks)
    s = maps.reshape(-1).astype(np.float64)
    order = np.argsort(-s, kind="stable")
    s, w, normal = s[order], w[order], normal[order]
    last = np.r_[s[1:] != s[:-1], True]  # last index of each group of tied scores
    fpr = np.cumsum(normal)[last] / normal.sum()
    pro = np.cumsum(w)[last] / n_regions
    fpr, pro = np.r_[0.0, fpr], np.r_[0.0, pro]
    k = np.searchsorted(fpr, max_fpr, side="right")
    x, y = fpr[:k], pro[:k]
    if k < len(fpr):
        y_end = pro[k - 1] + (pro[k] - pro[k - 1]) * (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x, y = np.r_[x, max_fpr], np.r_[y, y_end]
    return float(np.trapezoid(y, x) / max_fpr)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    if not BIN.is_file():
        pytest.skip(f"{BIN} not built: run `cargo build --release` (scripts/test.sh does)")
    d = tmp_path_factory.mktemp("eval")
    data, out = d / "data", d / "out"
    subprocess.run([BIN, "synth", "--out", data, "--seed", "5", "--train", "0", "--test-good", "12",
                    "--test-per-defect", "4"], check=True, capture_output=True)
    subprocess.run([BIN, "eval", "--model", ROOT / "models" / "demo-int8", "--data", data, "--out", out,
                    "--dump", "--overlays", "1"], check=True, capture_output=True)
    report = json.loads((out / "eval.json").read_text())
    maps = np.load(out / "maps.npy")
    masks = np.load(out / "masks.npy").astype(bool)
    return report, maps, masks, out


def test_image_metrics_match_sklearn(evaluated):
    r, _, _, _ = evaluated
    scores = np.array([s["score"] for s in r["scores"]])
    y = np.array([s["kind"] != "good" for s in r["scores"]])
    assert r["n_images"] == 28 and r["n_defect"] == 16
    assert r["image_auroc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    p, rec, _ = precision_recall_curve(y, scores)
    f1 = np.max(np.where(p + rec > 0, 2 * p * rec / np.maximum(p + rec, 1e-300), 0))
    assert r["best_f1"]["f1"] == pytest.approx(f1, abs=1e-12)
    for k in r["per_kind"]:
        if k["kind"] != "good":
            sel = np.array([s["kind"] in (k["kind"], "good") for s in r["scores"]])
            assert k["auroc"] == pytest.approx(roc_auc_score(y[sel], scores[sel]), abs=1e-12)
    thr = r["at_threshold"]["threshold"]
    assert r["at_threshold"]["false_rejects"] == int(np.sum(~y & (scores >= thr)))
    assert r["at_threshold"]["escapes"] == int(np.sum(y & (scores < thr)))


def test_pixel_metrics_match_sklearn_and_reference_aupro(evaluated):
    r, maps, masks, _ = evaluated
    assert maps.shape == (28, 224, 224) and masks.any()
    # The image score is the smoothed map's maximum.
    assert np.allclose(maps.reshape(28, -1).max(axis=1), [s["score"] for s in r["scores"]], rtol=1e-6)
    px = r["pixel"]
    assert px["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert px["aupro"] == pytest.approx(aupro(maps, masks, 0.3), abs=1e-6)
    assert px["regions"] == sum(int(regions(k).max()) for k in masks)


def test_pictures_are_written(evaluated):
    _, _, _, out = evaluated
    assert (out / "roc.png").stat().st_size > 1000
    assert (out / "eval.md").read_text().count("| ") > 10
    assert len(list((out / "overlays").glob("*.png"))) >= 5  # one per kind, plus any misclassified


def test_inpainting_bundle_runs_in_tract_as_in_onnxruntime(tmp_path):
    # The inpainting graph (a batch of masked passes merged by constant masks) must score the same
    # in the Rust runtime as in onnxruntime, f32 and int8, through `anovit eval`.
    if not BIN.is_file():
        pytest.skip(f"{BIN} not built: run `cargo build --release` (scripts/test.sh does)")
    import common
    import export
    import quantize
    import train
    from test_end_to_end import make_dataset

    data = tmp_path / "data"
    make_dataset(data)
    ckpt = tmp_path / "inp.pt"
    train.train(train.parse_args(["--data", str(data), "--recipe", "reconstruction", "--size", "tiny",
                                  "--image-size", "64", "--batch", "4", "--val-fraction", "0.25", "--epochs", "2",
                                  "--inpaint", "4", "--corrupt-ratio", "0.1", "--out", str(ckpt)]))
    f32, int8 = tmp_path / "f32", tmp_path / "int8"
    export.main(export.parse_args(["--ckpt", str(ckpt), "--out", str(f32), "--sigma", "2"]))
    quantize.main(quantize.parse_args(["--bundle", str(f32), "--out", str(int8), "--data", str(data),
                                       "--calibration-images", "8"]))
    for bundle in (f32, int8):
        m = common.read_manifest(bundle)
        assert m["model"]["arch"]["inpaint_phases"] == 4
        out = tmp_path / f"eval-{bundle.name}"
        subprocess.run([BIN, "eval", "--model", bundle, "--data", data, "--out", out], check=True, capture_output=True)
        r = json.loads((out / "eval.json").read_text())
        ort = common.OrtModel(bundle, threads=1)
        pre = common.Preprocess.from_manifest(m["input"])
        for s in r["scores"]:
            ref = ort.score(pre(common.load_rgb(s["path"])))
            assert s["score"] == pytest.approx(ref, rel=1e-3 if bundle is int8 else 1e-5)


def test_reference_scoring_matches_onnxruntime(tmp_path):
    # `calibrate --reference` standardises maps per pixel; the Python side (OrtModel.score) must
    # give the runtime's scores for such a bundle, and eval's maps must be those standardised maps.
    if not BIN.is_file():
        pytest.skip(f"{BIN} not built: run `cargo build --release` (scripts/test.sh does)")
    import shutil

    import common

    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "models" / "demo-f32", bundle)
    data = tmp_path / "data"
    subprocess.run([BIN, "synth", "--out", data, "--seed", "21", "--train", "10", "--test-good", "3",
                    "--test-per-defect", "1"], check=True, capture_output=True)
    subprocess.run([BIN, "calibrate", "--model", bundle, "--good", data / "train" / "good", "--reference"],
                   check=True, capture_output=True)
    m = common.read_manifest(bundle)
    assert m["scoring"]["reference"]["n_good"] == 10
    out = tmp_path / "eval"
    subprocess.run([BIN, "eval", "--model", bundle, "--data", data, "--out", out, "--dump"], check=True,
                   capture_output=True)
    r = json.loads((out / "eval.json").read_text())
    maps = np.load(out / "maps.npy")
    ort = common.OrtModel(bundle, threads=1)
    mean, inv = ort.reference
    for s, mp in zip(r["scores"], maps):
        x = ort.pre(common.load_rgb(s["path"]))
        raw = common.smooth(common.error_map(x, ort.reconstruct(x)), m["scoring"]["sigma"], m["scoring"]["truncate"])
        assert np.allclose(mp, (raw - mean) * inv, rtol=1e-4, atol=1e-4)
        assert s["score"] == pytest.approx(ort.score(x), rel=1e-4, abs=1e-4)
