"""The recipe sweep: packing round trip, a tiny run that scores as it trains, the report."""

import json

import numpy as np
import torch

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
    assert {"good_max_at_border_s4", "image_auroc_s4_dark", "pixel_auroc_s4_dark", "image_auroc_s4_ref",
            "pixel_auroc_s4_ref"} <= set(last)
    (tmp_path / "summary.json").write_text(json.dumps({"toy-inp4": r}))
    (tmp_path / "summary.md").write_text("The square was found.\n")
    md = tmp_path / "SWEEP.md"
    sweep.main(["report", "--summaries", str(tmp_path / "summary.json"), "--titles", "toy", "--out", str(md)])
    text = md.read_text()
    assert "## toy" in text and "| toy-inp4 | toy | tiny | 4 | 0.0 | 4 |" in text
    assert f"| toy-inp4 | 4 | {last['good_max_at_border_s4']:.2f} | {last['image_auroc_s4']:.3f} |" in text
    assert text.rstrip().endswith("The square was found.")


def test_dark_map_keeps_only_where_the_part_is_darker_than_its_reconstruction():
    x = torch.zeros(2, 3, 8, 8)
    x[0, :, 2, 3] = -2.0  # darker than the (zero) reconstruction
    x[1, :, 5, 5] = 3.0  # brighter
    both, dark = sweep.error_maps(lambda t: torch.zeros_like(t), x, "cpu")
    assert both[0, 0, 2, 3] == 4.0 and both[1, 0, 5, 5] == 9.0
    assert dark[0, 0, 2, 3] == 4.0 and dark[1].abs().sum() == 0.0


def test_border_share_counts_maps_that_peak_near_the_edge():
    maps = torch.zeros(4, 1, 32, 32)
    maps[0, 0, 0, 16] = maps[1, 0, 16, 31 - 3] = 1.0  # on the top edge; 3 px from the right one
    maps[2, 0, 16, 16] = maps[3, 0, 10, 20] = 1.0  # inside
    assert sweep.border_share(maps, margin=8) == 0.5
    assert sweep.border_share(maps, margin=3) == 0.25
