"""The discriminative stage: synthetic anomalies and their masks, the U-Net, the focal loss, the
default recipe end to end (train with resume -> export with two outputs -> quantize), and the Rust
runtime scoring the learned map as onnxruntime does (`anovit eval`, `anovit calibrate`)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anomalies
import anovit_model
import common
import export
import quantize
import train
from test_end_to_end import make_dataset

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ANOVIT_BIN", ROOT / "target" / "release" / "anovit"))


@pytest.mark.parametrize("fill", anomalies.FILLS)
def test_each_fill_changes_exactly_its_mask_and_is_seeded(fill):
    x = torch.randn(4, 3, 64, 64)
    before = x.clone()
    for seed in range(6):
        out, mask, got = anomalies.anomaly(x[0], x[1:], torch.Generator().manual_seed(seed), fill)
        assert got == fill and mask.dtype == torch.bool and mask.shape == (64, 64) and mask.any()
        changed = (out - x[0]).abs().amax(dim=0) > 1e-3
        assert torch.equal(changed, mask)  # every changed pixel is in the mask, and only those
        assert torch.equal(out[:, ~mask], x[0][:, ~mask])  # outside it, bit for bit the input
        again, mask2, _ = anomalies.anomaly(x[0], x[1:], torch.Generator().manual_seed(seed), fill)
        assert torch.equal(again, out) and torch.equal(mask2, mask)
    assert torch.equal(x, before)


def test_gray_images_stay_gray_and_masks_vary_in_size():
    x = torch.randn(6, 1, 96, 96).repeat(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(3)
    shares = []
    for i in range(40):
        out, mask, _ = anomalies.anomaly(x[i % 6], x, gen)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        shares.append(mask.float().mean().item())
    # From scratches and pits (well under 1 %) to large regions (over 20 %).
    assert min(shares) < 0.01 and max(shares) > 0.2


def test_a_batch_gets_about_its_share_of_anomalies_with_masks():
    x = torch.randn(64, 3, 32, 32)
    inp, masks = anomalies.batch(x, x[:8], 0.5, torch.Generator().manual_seed(0))
    anomalous = masks.flatten(1).amax(dim=1) > 0
    assert 20 <= int(anomalous.sum()) <= 44
    assert torch.equal(inp[~anomalous], x[~anomalous])
    assert masks.shape == (64, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}


def test_contact_sheet_shows_every_fill(tmp_path):
    x = torch.randn(5, 3, 48, 48)
    path = anomalies.contact_sheet(x, x, [0.5] * 3, [0.2] * 3, tmp_path / "sheet.png", per_fill=3)
    with Image.open(path) as im:
        assert im.size == (2 * 3 * 48, len(anomalies.FILLS) * 48)
        sheet = np.asarray(im)
    # The mask overlays are tinted red: each row's second tile differs from its first.
    assert all((sheet[r * 48:(r + 1) * 48, 48:96] != sheet[r * 48:(r + 1) * 48, :48]).any()
               for r in range(len(anomalies.FILLS)))


def test_perlin_noise_is_smooth_and_bounded():
    n = anomalies.perlin(64, 64, (4, 4), torch.Generator().manual_seed(0))
    assert n.shape == (64, 64) and n.abs().max() <= 1.5
    assert (n[1:] - n[:-1]).abs().max() < 0.5  # neighbours close: smooth, not white noise
    assert n.std() > 0.1


@pytest.mark.parametrize("size", sorted(anovit_model.DISC_SIZES))
def test_discriminator_maps_at_the_input_resolution(size):
    d = anovit_model.build_disc(size).eval()
    x = torch.randn(2, 3, 64, 64)
    assert d(x, x).shape == (2, 1, 64, 64)
    # The map is computed at 1/stem of the resolution: constant over stem x stem cells.
    m = d(x, torch.zeros_like(x))[0, 0]
    s = d.stem
    assert torch.equal(m, m[::s, ::s].repeat_interleave(s, 0).repeat_interleave(s, 1))


def test_upsample_is_nearest_neighbour():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert torch.equal(anovit_model.upsample(x, 2), x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_focal_loss_weights_hard_pixels():
    t = torch.tensor([1.0, 0.0, 0.0, 0.0])
    good = anovit_model.focal_loss(torch.tensor([4.0, -4.0, -4.0, -4.0]), t)
    bad = anovit_model.focal_loss(torch.tensor([-4.0, 4.0, -4.0, -4.0]), t)
    assert bad > 100 * good
    # gamma 0, alpha 0.5: half the binary cross-entropy.
    lg = torch.randn(10)
    tt = (torch.rand(10) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(lg, tt)
    assert anovit_model.focal_loss(lg, tt, gamma=0.0, alpha=0.5) == pytest.approx(0.5 * bce.item(), rel=1e-5)


def args_for(data, out, *extra):
    return train.parse_args(["--data", str(data), "--size", "tiny", "--disc-size", "tiny", "--image-size", "64",
                             "--batch", "4", "--val-fraction", "0.25", "--steps", "8", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("disc")
    data = tmp / "data"
    make_dataset(data)
    ckpt = train.train(args_for(data, tmp / "model.pt"))
    f32, int8 = tmp / "f32", tmp / "int8"
    exported = export.main(export.parse_args(["--ckpt", str(tmp / "model.pt"), "--out", str(f32)]))
    quantize.main(quantize.parse_args(["--bundle", str(f32), "--out", str(int8), "--data", str(data),
                                       "--calibration-images", "8"]))
    return {"data": data, "tmp": tmp, "ckpt": ckpt, "f32": f32, "int8": int8, "exported": exported}


def test_the_default_recipe_is_discriminative_with_a_fixed_schedule(learned):
    ckpt = learned["ckpt"]
    assert ckpt["recipe"] == "discriminative" and ckpt["disc_size"] == "tiny"
    assert ckpt["training"]["epochs"] == 3  # 8 steps of batch 4 over 12 training images: 3 steps an epoch
    assert {"image_auroc", "pixel_auroc"} <= set(ckpt["history"][-1])
    assert any(k.startswith("disc.") for k in ckpt["state_dict"])
    assert not Path(str(learned["tmp"] / "model.pt") + ".state").exists()  # finished: no resume state left


def test_a_stopped_run_resumes_to_the_same_weights(learned):
    tmp, data = learned["tmp"], learned["data"]
    stopped = tmp / "stopped.pt"
    # A time budget that is spent at once stops after the first epoch and keeps the state.
    train.train(args_for(data, stopped, "--max-minutes", "1e-9"))
    assert Path(str(stopped) + ".state").is_file()
    resumed = train.train(args_for(data, stopped, "--resume"))
    assert resumed["training"]["epochs"] == 3
    for k, v in learned["ckpt"]["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_the_bundle_has_both_outputs_and_a_learned_scoring(learned):
    import onnx

    m = common.read_manifest(learned["f32"])
    assert m["outputs"] == {"reconstruction": "reconstruction", "anomaly_map": "anomaly_map"}
    sc = m["scoring"]
    assert sc["kind"] == "learned_map" and sc["error"] == "sigmoid" and sc["reduction"] == "max"
    assert sc["sigma"] in (0.0, 2.0, 4.0, 8.0) and set(sc["chosen_by"]["synthetic_image_auroc"]) == {
        "0.0", "2.0", "4.0", "8.0"}
    assert m["model"]["arch"]["discriminative"]["size"] == "tiny"
    g = onnx.load(str(learned["f32"] / "model.onnx")).graph
    assert [o.name for o in g.output] == ["reconstruction", "anomaly_map"]
    assert [d.dim_value for d in g.output[1].type.tensor_type.shape.dim] == [1, 1, 64, 64]
    assert "Resize" not in {n.op_type for n in g.node}
    assert learned["exported"]["parity_rel_l2"] < 1e-5
    assert common.read_manifest(learned["int8"])["outputs"] == m["outputs"]


def test_exported_map_equals_torch(learned):
    model = export.load_model(learned["ckpt"])
    ort = common.OrtModel(learned["f32"], threads=1)
    pre = ort.pre
    for path in sorted((learned["data"] / "test" / "spot").glob("*.png"))[:2]:
        x = pre(common.load_rgb(path))
        with torch.no_grad():
            _, logits = model(torch.from_numpy(x)[None])
        np.testing.assert_allclose(ort.raw_map(x), torch.sigmoid(logits)[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_runtime_scores_the_learned_map_as_onnxruntime(learned):
    if not BIN.is_file():
        pytest.skip(f"{BIN} not built: run `cargo build --release` (scripts/test.sh does)")
    for bundle in (learned["f32"], learned["int8"]):
        out = learned["tmp"] / f"eval-{bundle.name}"
        subprocess.run([BIN, "eval", "--model", bundle, "--data", learned["data"], "--out", out], check=True,
                       capture_output=True)
        r = json.loads((out / "eval.json").read_text())
        assert r["pixel"]["auroc"] is not None
        ort = common.OrtModel(bundle, threads=1)
        for s in r["scores"]:
            ref = ort.score(ort.pre(common.load_rgb(s["path"])))
            assert s["score"] == pytest.approx(ref, rel=1e-3 if bundle.name == "int8" else 1e-5, abs=1e-6)


def test_calibrate_sets_a_threshold_from_the_learned_scores(learned, tmp_path):
    if not BIN.is_file():
        pytest.skip(f"{BIN} not built: run `cargo build --release` (scripts/test.sh does)")
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(learned["f32"], bundle)
    good = learned["data"] / "train" / "good"
    subprocess.run([BIN, "calibrate", "--model", bundle, "--good", good, "--confidence", "0.5"], check=True,
                   capture_output=True)
    t = common.read_manifest(bundle)["threshold"]
    assert t["source"] == "calibrate" and t["stats"]["n_good"] == len(list(good.glob("*.png")))
    ort = common.OrtModel(bundle, threads=1)
    scores = sorted(ort.score(ort.pre(common.load_rgb(p))) for p in sorted(good.glob("*.png")))
    # An order statistic of the good scores (the rule in docs/EVAL.md): one of them, up to f32.
    assert min(abs(t["value"] - s) for s in scores) < 1e-5 * max(1.0, t["value"])
