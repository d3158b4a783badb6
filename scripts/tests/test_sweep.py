"""The recipe sweep: packing round trip, a tiny run that scores as it trains, the report."""

import json

import numpy as np

import sweep


def test_jpeg_packing_round_trips_gray_and_colour():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(40, 200, (2, 3, 4, 4)), np.ones((1, 1, 8, 8))).astype(np.uint8)
    smooth[1] = smooth[1, :1]  # gray: three equal channels, stored as one
    data, offsets = sweep._encode(smooth)
    back = sweep._decode(data, offsets)
    assert back.shape == smooth.shape
    assert np.abs(back.astype(int) - smooth).max() <= 3  # JPEG q95 on flat blocks
    assert (back[1, 0] == back[1, 2]).all()


def test_tiny_run_scores_while_training_and_reports(tmp_path):
    rng = np.random.default_rng(1)
    good = lambda n: np.clip(128 + rng.normal(0, 4, (n, 3, 64, 64)), 0, 255).astype(np.uint8)  # noqa: E731
    test = good(8)
    masks = np.zeros((8, 64, 64), bool)
    test[4:, :, 16:32, 16:32] = 255  # four defects: a bright square
    masks[4:, 16:32, 16:32] = True
    sweep.write_npz(tmp_path / "toy.npz", good(16), good(4), test, ["good"] * 4 + ["square"] * 4, masks)
    out = tmp_path / "r.json"
    sweep.main(["run", "--data", str(tmp_path), "--dataset", "toy", "--size", "tiny", "--inpaint", "4",
                "--epochs", "4", "--out", str(out)])
    r = json.loads(out.read_text())
    assert [e["epoch"] for e in r["evals"]] == [1, 2, 3, 4]
    last = r["evals"][-1]
    assert {"image_auroc_s0", "image_auroc_s4", "pixel_auroc_s4", "per_kind_s4"} <= set(last)
    # A saturated square on flat gray is the easiest defect there is, even for a barely trained model.
    assert last["image_auroc_s0"] > 0.9 and last["pixel_auroc_s0"] > 0.9
    (tmp_path / "summary.json").write_text(json.dumps({"toy-inp4": r}))
    md = tmp_path / "SWEEP.md"
    sweep.main(["report", "--summaries", str(tmp_path / "summary.json"), "--titles", "toy", "--out", str(md)])
    text = md.read_text()
    assert "## toy" in text and "| toy-inp4 | toy | tiny | 4 | 0.0 | 4 |" in text
