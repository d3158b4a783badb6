"""Quantizes an f32 bundle to an int8 bundle with onnxruntime's static quantization.

The form is the one tract can run with integer matmuls (shared notes, tract-int8-route.md):
QOperator, weight MatMuls only (the attention activation x activation MatMuls are excluded),
per-channel QInt8 weights, QUInt8 activations, and no quant_pre_process (it fuses MatMul+Add into
Gemm, which QOperator emits as com.microsoft::QGemm, which tract cannot load).

    python scripts/quantize.py --bundle models/demo-f32 --out models/demo-int8 --data out/demo-data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

import common
import export


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="f32 bundle directory")
    p.add_argument("--out", type=Path, required=True, help="int8 bundle directory")
    p.add_argument("--data", required=True, help="the data set the f32 model was trained on")
    p.add_argument("--layout", choices=common.LAYOUTS, default="mvtec")
    p.add_argument("--name", default=None, help="bundle name (default: f32 name with f32 -> int8)")
    p.add_argument("--calibration-images", type=int, default=32)
    p.add_argument("--test-per-kind", type=int, default=5, help="test images per kind in the error check")
    return p.parse_args(argv)


class Images(CalibrationDataReader):
    def __init__(self, input_name: str, images: list[np.ndarray]):
        self.feed = iter([{input_name: x[None]} for x in images])

    def get_next(self):
        return next(self.feed, None)


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no constant operand: attention's q k^T and attn v."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def main(args) -> dict:
    f32 = common.OrtModel(args.bundle)
    m32 = f32.manifest
    train_s, val_s, test = common.held_out_split(args.data, args.layout, m32["training"])
    pre = f32.pre
    # Calibrate on good training images spread over the split; check on images it never saw.
    step = max(1, len(train_s) // args.calibration_images)
    calib = [pre(common.load_rgb(s.path)) for s in train_s[::step][: args.calibration_images]]
    val = [pre(common.load_rgb(s.path)) for s in val_s]
    per_kind: dict[str, list] = {}
    for s in test:
        if len(per_kind.setdefault(s.kind, [])) < args.test_per_kind:
            per_kind[s.kind].append(pre(common.load_rgb(s.path)))
    check = val + [x for xs in per_kind.values() for x in xs]

    src = args.bundle / m32["model"]["file"]
    excluded = activation_matmuls(onnx.load(str(src)))
    args.out.mkdir(parents=True, exist_ok=True)
    model_file = args.out / "model.onnx"
    quantize_static(
        str(src), str(model_file), Images(m32["input"]["name"], calib),
        quant_format=QuantFormat.QOperator, op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )

    sc = m32["scoring"]
    name = args.name or m32["name"].replace("f32", "int8")
    manifest = export.base_manifest(name, model_file, "int8", {**m32["model"], "outputs": list(m32["outputs"])},
                                    m32["input"], sc)
    manifest["training"] = m32["training"]
    common.write_manifest(args.out, manifest)  # no threshold yet: not a usable bundle until the end

    i8 = common.OrtModel(args.out)
    recon_err, score_err = [], []
    for x in check:
        recon_err.append(common.rel_l2(i8.reconstruct(x), f32.reconstruct(x)))
        # An explicit sigma scores without the reference: the model's own error, not the reference's.
        s32, s8 = (m.score(x, sc["sigma"]) for m in (f32, i8))
        score_err.append(abs(s8 - s32) / s32)
    stats = m32["threshold"]["stats"]
    manifest["threshold"] = common.threshold_good_quantile(
        [i8.score(x) for x in val], stats["target_false_reject"], stats["margin"])
    manifest["quantization"] = {
        "method": "onnxruntime quantize_static: QOperator, weight MatMuls only, per-channel QInt8 weights, "
                  "QUInt8 activations, MinMax calibration",
        "calibration_images": len(calib),
        # Worst case over the held-out check images (validation good + a few test images per kind).
        "recon_rel_l2_vs_f32": max(recon_err),
        "score_rel_err_vs_f32": max(score_err),
    }
    common.write_manifest(args.out, manifest)
    print(f"int8 bundle {args.out}: {model_file.stat().st_size / 1e6:.2f} MB, {len(excluded)} attention "
          f"MatMuls kept in f32; on {len(check)} held-out images: recon rel L2 vs f32 mean "
          f"{np.mean(recon_err):.2e} max {max(recon_err):.2e}, score rel err mean {np.mean(score_err):.2e} "
          f"max {max(score_err):.2e}; threshold {manifest['threshold']['value']:.5f} "
          f"(f32 {m32['threshold']['value']:.5f})")
    return manifest


if __name__ == "__main__":
    main(parse_args())
