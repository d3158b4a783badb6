"""A short real run of the whole pipeline on a tiny generated data set: train -> export (with its
ONNX parity check) -> quantize -> evaluate, checking the bundles against docs/BUNDLE.md."""

import json

import numpy as np
import pytest
from PIL import Image

import common
import evaluate
import export
import quantize
import train


def make_dataset(root, n_train=16, n_test=4, size=64):
    """A bright square on a noisy dark belt; the defect is a dark spot on the square."""
    rng = np.random.default_rng(0)

    def part(spot: bool):
        img = np.full((size, size, 3), 60.0) + rng.normal(0, 3, (size, size, 3))
        x, y = rng.integers(14, 22, 2)
        img[y:y + 28, x:x + 28] = (180, 182, 186)
        mask = np.zeros((size, size), np.uint8)
        if spot:
            mask[y + 10:y + 16, x + 10:x + 16] = 255
            img[mask > 0] = 40
        return img.clip(0, 255).astype(np.uint8), mask

    for rel, n, spot in (("train/good", n_train, False), ("test/good", n_test, False), ("test/spot", n_test, True)):
        (root / rel).mkdir(parents=True)
        for i in range(n):
            img, mask = part(spot)
            Image.fromarray(img).save(root / rel / f"{i:03}.png")
            if spot:
                (root / "ground_truth/spot").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "ground_truth/spot" / f"{i:03}_mask.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = tmp / "data"
    make_dataset(data)
    ckpt = tmp / "tiny.pt"
    common_args = ["--data", str(data), "--recipe", "reconstruction", "--size", "tiny", "--image-size", "64", "--batch", "4",
                   "--val-fraction", "0.25"]
    stage1 = tmp / "stage1.pt"
    train.train(train.parse_args(common_args + ["--epochs", "2", "--mask-ratio", "0.5", "--out", str(stage1)]))
    # Second stage as in the demo recipe: continue from stage 1 with corrupted inputs.
    train.train(train.parse_args(common_args + ["--epochs", "1", "--init", str(stage1), "--corrupt-ratio", "0.3",
                                                "--cosine", "--out", str(ckpt)]))
    f32, int8 = tmp / "f32", tmp / "int8"
    exported = export.main(export.parse_args(["--ckpt", str(ckpt), "--out", str(f32), "--sigma", "2"]))
    quantize.main(quantize.parse_args(["--bundle", str(f32), "--out", str(int8), "--data", str(data),
                                       "--calibration-images", "8"]))
    report = evaluate.main(evaluate.parse_args(["--bundle", str(int8), "--data", str(data), "--sigmas", "0",
                                                "--out", str(tmp / "eval.json")]))
    return {"data": data, "f32": f32, "int8": int8, "exported": exported, "report": report, "tmp": tmp}


def test_f32_bundle_follows_the_manifest_spec(run):
    m = common.read_manifest(run["f32"])
    assert m["model"]["precision"] == "f32" and m["model"]["sha256"] == common.sha256_file(run["f32"] / "model.onnx")
    assert m["model"]["arch"]["kind"] == "anovit" and m["model"]["params"] > 0 and m["model"]["gflop"] > 0
    assert m["input"]["shape"] == [1, 3, 64, 64] and m["input"]["name"] == "image" and m["input"]["layout"] == "NCHW"
    assert m["outputs"] == {"reconstruction": "reconstruction"}
    assert m["scoring"] == {"error": "squared_mean_channels", "sigma": 2.0, "truncate": 4.0, "reduction": "max"}
    t = m["threshold"]
    assert t["source"] == "good-quantile" and t["stats"]["n_good"] == 4
    assert set(t["stats"]["quantiles"]) == {"0.5", "0.9", "0.99", "1.0"}
    assert t["value"] >= t["stats"]["quantiles"]["0.99"]
    assert m["training"]["n_train"] == 12 and m["training"]["n_val"] == 4 and m["training"]["epochs"] == 3
    assert m["training"]["data_fingerprint"] == common.data_fingerprint(
        run["data"], common.discover(run["data"])[0])
    assert run["exported"]["parity_rel_l2"] < 1e-5


def test_onnx_is_opset_17_with_static_input_and_no_batchnorm(run):
    import onnx

    model = onnx.load(str(run["f32"] / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops and "ConvTranspose" in ops


def test_int8_bundle_is_qoperator_matmul_only(run):
    import onnx

    m = common.read_manifest(run["int8"])
    assert m["model"]["precision"] == "int8"
    q = m["quantization"]
    assert q["calibration_images"] == 8 and 0 <= q["recon_rel_l2_vs_f32"] < 0.05 and q["score_rel_err_vs_f32"] < 0.1
    ops = {n.op_type for n in onnx.load(str(run["int8"] / "model.onnx")).graph.node}
    assert {"QLinearMatMul", "MatMul", "QuantizeLinear", "DequantizeLinear"} <= ops  # attention stays f32
    assert not ops & {"QGemm", "QLinearAdd", "QLinearConcat", "QLinearConv", "Gemm"}


def test_evaluation_report(run):
    r = json.loads((run["tmp"] / "eval.json").read_text())
    assert r["counts"] == {"good": 4, "spot": 4} and len(r["scores"]) == 8
    assert set(r["image_auroc"]) == {"overall", "spot"} and set(r["auroc_by_sigma"]) == {"2.0", "0.0"}
    assert 0.0 <= r["threshold"]["accuracy"] <= 1.0


def test_a_changed_training_set_is_detected(run):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(run["data"] / "train/good/999.png")
    with pytest.raises(ValueError, match="fingerprint"):
        quantize.main(quantize.parse_args(["--bundle", str(run["f32"]), "--out", str(run["tmp"] / "x"),
                                           "--data", str(run["data"])]))
