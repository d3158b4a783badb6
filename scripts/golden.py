"""Writes tests/data/golden.json: reference scores for the Rust golden test (tests/golden.rs).

Each entry is an image, the demo bundle's onnxruntime score of it computed with the Python
preprocessing and scoring of docs/BUNDLE.md, and how the Rust side gets the same pixels:
synthetic frames are re-rendered by the Rust generator from (seed, index, defect); real images
(MVTec bottle, PNG so that both sides decode identical pixels) are read from ../shared/data.

Usage: .venv/bin/python scripts/golden.py [--bundle models/demo-f32] [--out tests/data/golden.json]
       .venv/bin/python scripts/golden.py --bundle models/demo-int8 --out tests/data/golden-int8.json \
           --tolerance 0.01 --reference-f32 models/demo-f32

For an int8 bundle each synthetic entry also records `int8_vs_f32`: the relative L2 distance of
onnxruntime's int8 reconstruction from the f32 one, the quantisation error tract's int8 plan is
held to (tests/golden.rs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import common

REPO = Path(__file__).resolve().parents[1]
SEED = 99  # not the training seed (7): unseen parts
# Frame order written by `anovit synth --train 0 --test-good 2 --test-per-defect 1`.
SYNTH = [("test/good/000.png", 0, None), ("test/good/001.png", 1, None), ("test/scratch/000.png", 2, "scratch"),
         ("test/hole/000.png", 3, "hole"), ("test/stain/000.png", 4, "stain"), ("test/missing/000.png", 5, "missing")]
REAL = ["mvtec_ad_bottle_256/test/good/000.png", "mvtec_ad_bottle_256/test/broken_large/000.png",
        "mvtec_ad_bottle_256/test/contamination/003.png"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "models/demo-f32"))
    ap.add_argument("--out", default=str(REPO / "tests/data/golden.json"))
    ap.add_argument("--shared-data", default=str(REPO / "../shared/data"))
    ap.add_argument("--tolerance", type=float, default=1e-4, help="relative score tolerance written for the test")
    ap.add_argument("--reference-f32", help="the f32 bundle an int8 bundle was quantised from")
    args = ap.parse_args()
    model = common.OrtModel(args.bundle)
    f32 = common.OrtModel(args.reference_f32) if args.reference_f32 else None
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["cargo", "run", "--release", "--quiet", "--", "synth", "--out", tmp, "--seed", str(SEED),
                        "--train", "0", "--test-good", "2", "--test-per-defect", "1"], cwd=REPO, check=True)
        for rel, index, defect in SYNTH:
            x = model.pre(common.load_rgb(Path(tmp) / rel))
            entry = {"synthetic": {"seed": SEED, "index": index, "defect": defect, "size": 256},
                     "score": model.score(x)}
            if f32 is not None:
                r8, r32 = model.reconstruct(x), f32.reconstruct(x)
                entry["int8_vs_f32"] = float(np.linalg.norm(r8 - r32) / np.linalg.norm(r32))
            entries.append(entry)
    shared = Path(args.shared_data)
    for rel in REAL:
        p = shared / rel
        if not p.is_file():
            raise SystemExit(f"{p} is missing: the golden file needs the real images of ../shared/data")
        entries.append({"shared_data": rel, "score": model.score(model.pre(common.load_rgb(p)))})
    out = {"bundle": str(Path(args.bundle).resolve().relative_to(REPO)), "model_sha256": model.manifest["model"]["sha256"],
           "engine": "onnxruntime", "rel_tolerance": args.tolerance, "entries": entries}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for e in entries:
        print(f"{e.get('shared_data') or e['synthetic']}: {e['score']:.6g}")


if __name__ == "__main__":
    main()
