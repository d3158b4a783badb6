"""Evaluates a bundle on the test split with onnxruntime: image AUROC overall and per defect type,
and how well the bundle's own threshold sorts the parts (verdict match rate).

    python scripts/evaluate.py --bundle models/demo-f32 --data out/demo-data --out docs/demo_model_eval.json

`--sigmas 0 2 8` also reports AUROC for other smoothing widths (informative: the bundle's
threshold belongs to its own sigma). Per-image scores are kept in the JSON, e.g. as references
for the Rust runtime.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--layout", choices=common.LAYOUTS, default="mvtec")
    p.add_argument("--sigmas", type=float, nargs="*", default=[], help="extra sigmas to report AUROC for")
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    return p.parse_args(argv)


def aurocs(kinds: list[str], scores: np.ndarray) -> dict:
    """Overall AUROC and one per defect type (that type against all good images)."""
    kinds_arr = np.asarray(kinds)
    good = kinds_arr == "good"
    out = {"overall": common.auroc(~good, scores)}
    for k in sorted(set(kinds) - {"good"}):
        sel = good | (kinds_arr == k)
        out[k] = common.auroc(kinds_arr[sel] != "good", scores[sel])
    return out


def main(args) -> dict:
    model = common.OrtModel(args.bundle)
    m = model.manifest
    sc = m["scoring"]
    _, test = common.discover(args.data, args.layout)
    sigmas = [sc["sigma"]] + [s for s in args.sigmas if s != sc["sigma"]]
    scores = {s: [] for s in sigmas}
    t0 = time.time()
    for smp in test:
        x = model.pre(common.load_rgb(smp.path))
        err = model.raw_map(x)
        for s in sigmas:
            scores[s].append(float(common.smooth(err, s, sc["truncate"]).max()))
    seconds = time.time() - t0
    kinds = [s.kind for s in test]
    main_scores = np.asarray(scores[sc["sigma"]])
    thr = m["threshold"]["value"]
    reject = main_scores >= thr
    defect = np.asarray([s.is_defect for s in test])
    report = {
        "bundle": str(args.bundle),
        "name": m["name"],
        "precision": m["model"]["precision"],
        "data": str(args.data),
        "sigma": sc["sigma"],
        "counts": {k: kinds.count(k) for k in sorted(set(kinds))},
        "image_auroc": aurocs(kinds, main_scores),
        "threshold": {
            "value": thr,
            "accuracy": float(np.mean(reject == defect)),
            "false_reject_rate": float(np.mean(reject[~defect])),
            "miss_rate": float(np.mean(~reject[defect])),
            "missed_per_kind": {k: int(np.sum(~reject[np.asarray(kinds) == k])) for k in sorted(set(kinds) - {"good"})},
        },
        "auroc_by_sigma": {str(s): aurocs(kinds, np.asarray(scores[s])) for s in sigmas},
        "seconds_per_image": seconds / len(test),
        "scores": [{"image": str(s.path.relative_to(args.data)), "kind": s.kind, "score": v}
                   for s, v in zip(test, scores[sc["sigma"]])],
    }
    au = report["image_auroc"]
    print(f"{m['name']} ({report['precision']}, sigma {sc['sigma']}) on {len(test)} test images: image AUROC "
          f"{au['overall']:.4f}  " + "  ".join(f"{k} {v:.4f}" for k, v in au.items() if k != "overall"))
    t = report["threshold"]
    print(f"threshold {thr:.5f}: accuracy {t['accuracy']:.4f}, false rejects {t['false_reject_rate']:.3f}, "
          f"misses {t['miss_rate']:.3f} {t['missed_per_kind']}")
    for s in sigmas[1:]:
        print(f"  sigma {s}: AUROC {report['auroc_by_sigma'][str(s)]['overall']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(parse_args())
