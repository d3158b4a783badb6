"""Exports a trained checkpoint to an f32 bundle (model.onnx + manifest.json, docs/BUNDLE.md).

Checks onnxruntime against PyTorch on real images (fails loudly above --parity-tol), then scores
the held-out good images with onnxruntime, the engine that ships, to set the threshold.

    python scripts/export.py --ckpt out/demo.pt --out models/demo-f32
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import anovit_model
import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="bundle directory")
    p.add_argument("--data", default=None, help="data set root (default: the one in the checkpoint)")
    p.add_argument("--name", default=None, help="bundle name (default: anovit-<size>-f32)")
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothing sigma (default: 4 for reconstruction error; for a learned map the one of "
                        "--sigmas that best tells the validation goods from their synthetic anomalies)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0],
                   help="candidate sigmas for a learned map")
    p.add_argument("--truncate", type=float, default=4.0)
    p.add_argument("--target-false-reject", type=float, default=0.01)
    p.add_argument("--margin", type=float, default=1.0, help="threshold margin in std of the good scores")
    p.add_argument("--parity-images", type=int, default=3, help="validation images in the parity check")
    p.add_argument("--parity-tol", type=float, default=1e-5, help="max relative L2, ONNX vs PyTorch")
    return p.parse_args(argv)


def load_model(ckpt: dict) -> nn.Module:
    """The checkpoint's model: AnoViT (or the CAE), or both stages when it has a discriminative one."""
    model = anovit_model.build(ckpt["size"], ckpt["image_size"], inpaint=ckpt.get("inpaint", 1))
    if ckpt.get("disc_size"):
        model = anovit_model.TwoStage(model, anovit_model.build_disc(ckpt["disc_size"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Folds each decoder BatchNorm (inference statistics) into the ConvTranspose before it, so
    the exported graph carries no BatchNormalization at all (the discriminative stage's
    Conv + BatchNorm pairs are folded by every runtime itself)."""
    if isinstance(model, anovit_model.TwoStage):
        fold_batchnorm(model.recon)
        return model
    folded = []
    for stage in model.decoder:
        if isinstance(stage, nn.Sequential):
            conv, bn, relu = stage
            k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                       conv.padding, bias=True)
            # ConvTranspose2d weight is (in, out, kh, kw): BatchNorm scales the out axis.
            fused.weight.data = conv.weight.data * k.view(1, -1, 1, 1)
            fused.bias.data = bn.bias.data - bn.running_mean * k
            folded.append(nn.Sequential(fused, relu))
        else:
            folded.append(stage)
    model.decoder = nn.Sequential(*folded)
    return model


def output_names(model: nn.Module) -> list[str]:
    return ["reconstruction", "anomaly_map"] if isinstance(model, anovit_model.TwoStage) else ["reconstruction"]


def export_onnx(model: nn.Module, path: Path, image_size: int) -> None:
    dummy = torch.zeros(1, 3, image_size, image_size)
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    # dynamo=False: the TorchScript exporter honours opset 17 (the dynamo one silently gives 18).
    torch.onnx.export(model, (dummy,), str(path), opset_version=17, dynamo=False, input_names=["image"],
                      output_names=output_names(model), do_constant_folding=True)


def torch_outputs(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None])
    return [o.numpy()[0] for o in (out if isinstance(out, tuple) else (out,))]


def parity_check(model: nn.Module, ort_model: common.OrtModel, images: list[np.ndarray], tol: float) -> float:
    """Worst relative L2 between onnxruntime and PyTorch over every output (reconstruction, and
    the learned map's probabilities where there is one); raises above tol."""
    worst = 0.0
    for x in images:
        ref = torch_outputs(model, x)
        worst = max(worst, common.rel_l2(ort_model.reconstruct(x), ref[0]))
        if len(ref) > 1:
            worst = max(worst, common.rel_l2(ort_model.raw_map(x), common.learned_map(ref[1])))
    if not worst < tol:
        raise SystemExit(f"PARITY FAILED: onnxruntime vs PyTorch relative L2 {worst:.3e} >= {tol:.0e}")
    return worst


def choose_sigma(ort_model: common.OrtModel, val: list[np.ndarray], seed: int, sigmas: list[float],
                 truncate: float) -> dict:
    """The image score's smoothing for a learned map, chosen on validation goods only: the sigma
    whose max-of-smoothed-map best separates the goods from synthetic anomalies made on them
    (train.synthetic_validation, the set the training chose its epoch by). Ties: the smaller."""
    import train

    x, masks = train.synthetic_validation(torch.from_numpy(np.stack(val)), seed)
    labels = masks.flatten(1).amax(dim=1).numpy() > 0.5
    raws = [ort_model.raw_map(xi) for xi in x.numpy()]
    aurocs = {s: common.auroc(labels, [common.smooth(r, s, truncate).max() for r in raws]) for s in sigmas}
    best = max(sigmas, key=lambda s: (round(aurocs[s], 6), -s))
    return {"sigma": best, "synthetic_image_auroc": {str(s): round(a, 6) for s, a in aurocs.items()}}


def base_manifest(name: str, model_file: Path, precision: str, model: dict, inp: dict, scoring: dict) -> dict:
    """Everything in the manifest except threshold, training (and quantization for int8).
    `model` needs arch, params and gflop."""
    return {
        "format": "anovit-bundle",
        "format_version": 1,
        "name": name,
        "model": {
            "file": model_file.name,
            "sha256": common.sha256_file(model_file),
            "precision": precision,
            "arch": model["arch"],
            "params": int(model["params"]),
            "gflop": round(float(model["gflop"]), 4),
        },
        "input": inp,
        "outputs": {name: name for name in model.get("outputs", ["reconstruction"])},
        "scoring": scoring,
    }


def main(args) -> dict:
    torch.set_num_threads(2)
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    data = Path(args.data or ckpt["training"]["dataset"])
    pre = common.Preprocess.from_manifest(ckpt["input"])
    _, val_s, test = common.held_out_split(data, ckpt["training"]["layout"], ckpt["training"])
    val = [pre(common.load_rgb(s.path)) for s in val_s]
    # Parity on held-out good images plus one image of each defect type: real inputs, both classes.
    first_of_kind = {s.kind: s for s in reversed(test)}
    parity_inputs = val[: args.parity_images] + [pre(common.load_rgb(s.path)) for s in first_of_kind.values()]

    args.out.mkdir(parents=True, exist_ok=True)
    model_file = args.out / "model.onnx"
    reference = load_model(ckpt)  # unfolded: the parity check also checks the BatchNorm fold
    export_onnx(fold_batchnorm(load_model(ckpt)), model_file, ckpt["image_size"])

    name = args.name or f"anovit-{ckpt['size']}-f32"
    learned = bool(ckpt.get("disc_size"))
    if learned:
        # Sigma chosen below, once onnxruntime can score; 0 until then.
        scoring = {"kind": "learned_map", "error": "sigmoid", "sigma": args.sigma or 0.0, "truncate": args.truncate,
                   "reduction": "max"}
    else:
        scoring = {"error": "squared_mean_channels", "sigma": 4.0 if args.sigma is None else args.sigma,
                   "truncate": args.truncate, "reduction": "max"}
    manifest = base_manifest(name, model_file, "f32", {**ckpt, "outputs": output_names(reference)}, ckpt["input"],
                             scoring)
    manifest["training"] = {k: v for k, v in ckpt["training"].items() if k != "layout"}
    # Written without a threshold first (the runtime refuses such a bundle) so that OrtModel can
    # load it; a failed parity check therefore never leaves a usable bundle behind.
    common.write_manifest(args.out, manifest)

    ort_model = common.OrtModel(args.out)
    parity = parity_check(reference, ort_model, parity_inputs, args.parity_tol)
    if learned and args.sigma is None:
        chosen = choose_sigma(ort_model, val, ckpt["training"]["seed"], args.sigmas, args.truncate)
        manifest["scoring"]["sigma"] = chosen["sigma"]
        manifest["scoring"]["chosen_by"] = chosen
        common.write_manifest(args.out, manifest)
        ort_model = common.OrtModel(args.out)
        print(f"sigma {chosen['sigma']} (synthetic image AUROC on the validation goods by sigma: "
              f"{chosen['synthetic_image_auroc']})")
    t0 = time.time()
    val_scores = [ort_model.score(x) for x in val]
    ms = 1000 * (time.time() - t0) / len(val)
    manifest["threshold"] = common.threshold_good_quantile(val_scores, args.target_false_reject, args.margin)
    common.write_manifest(args.out, manifest)
    size_mb = model_file.stat().st_size / 1e6
    print(f"exported {model_file} ({size_mb:.2f} MB, opset 17); parity vs PyTorch on {len(parity_inputs)} "
          f"images: rel L2 {parity:.2e}; onnxruntime {ms:.1f} ms/image (incl. scoring)")
    print(f"threshold {manifest['threshold']['value']:.5f} from {len(val_scores)} good validation scores "
          f"(max {max(val_scores):.5f}); manifest {args.out / 'manifest.json'}")
    return {"parity_rel_l2": parity, "manifest": manifest, "val_scores": val_scores}


if __name__ == "__main__":
    main(parse_args())
