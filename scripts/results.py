"""The default recipe on every data set in ../shared/data: AnoViT with the discriminative stage
(scripts/train.py with no recipe options), f32 and int8, beside the reconstruction-only AnoViT and
the CAE baselines. Writes docs/results.json (one object per row) and the `default-recipe` section
of docs/RESULTS.md; every run's bundles, reports and overlays stay in out/results/<data>-s<seed>/.

    .venv/bin/python scripts/results.py                         # every data set, seeds 0 1 2
    .venv/bin/python scripts/results.py --datasets bottle --seeds 0
    .venv/bin/python scripts/results.py --reuse --finished-only # rebuild the page from finished runs

Per run: train (seeded, fixed steps), export (the image score's sigma chosen on the validation
goods and their synthetic anomalies), quantize, `anovit calibrate` on the validation goods (never
the test set), `anovit eval` on the test split, and `anovit bench` of the compiled int8 plan side
by side with the demo-int8 plan (the frame-cost ratio). Baseline rows come from scripts/compare.py
runs (`edge-c01`: reconstruction-only AnoViT, one stage, 10 % corruption; `cae-c01`: the CAE with
the same recipe) found in out/compare/, trained here with --baselines where missing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import common
import compare
from docsection import write_section

ROOT, DATA, ANOVIT, sh = compare.ROOT, compare.DATA, compare.ANOVIT, compare.sh
OUT = ROOT / "out" / "results"
BASELINES = {"edge-c01": "reconstruction-only AnoViT-edge", "cae-c01": "CAE"}
MODEL = "anovit-edge+disc"
# What the issue asks of each data set (image / pixel AUROC; escapes as a share of the defective).
TARGETS = {
    "magnetic_tile": {"image": 0.95, "pixel": 0.95, "escape_share": 0.05},
    "bottle": {"image": 0.995, "escapes": 2},
    "kolektorsdd": {"image": 0.95},
    "bsdata": {"image": 0.95},
}
PLAN_RE = re.compile(r"^plan (\S+) \(int8\) 1 thread\(s\): median ([0-9.]+) ms", re.M)


def plan_ratios(runs: list[Path], demo_plan: Path, log: Path) -> list[float]:
    """Median time of each run's compiled int8 plan over the demo-int8 plan's, one thread, all
    timed in turn in one `anovit bench` run (so they share the machine's state alike)."""
    # Compiled into folders of distinct names: bench labels each plan by its folder name.
    plans = [OUT / f"plan-{run.name}" for run in runs]
    for run, plan in zip(runs, plans):
        if not (plan / "manifest.json").is_file():
            sh([ANOVIT, "compile", "--model", run / "int8", "--out", plan], log)
    models = [a for p in [demo_plan, *plans] for a in ("--model", p)]
    out = sh([ANOVIT, "bench", *models, "--threads", "1", "--frames", "0", "--runs", "10", "--rounds", "10"], log)
    medians = {name: float(ms) for name, ms in PLAN_RE.findall(out)}
    return [medians[p.name] / medians[demo_plan.name] for p in plans]


def run_one(ds: str, seed: int, py: str, demo_plan: Path, threads: int, device: str = "cpu") -> dict:
    cfg = compare.DATASETS[ds]
    data = DATA / cfg["path"]
    run = OUT / f"{ds}-s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    ckpt = run / "model.pt"
    if not ckpt.is_file() or (run / "model.pt.state").is_file():
        # The default recipe: nothing but data, layout, seed, output (and --resume after a stop).
        sh([py, "scripts/train.py", "--data", data, "--layout", cfg["layout"], "--seed", seed, "--threads", threads,
            "--device", device, "--resume", "--out", ckpt], log)
    bundles = {"f32": run / "f32", "int8": run / "int8"}
    sh([py, "scripts/export.py", "--ckpt", ckpt, "--out", bundles["f32"], "--name", f"{ds}-s{seed}-f32"], log)
    sh([py, "scripts/quantize.py", "--bundle", bundles["f32"], "--out", bundles["int8"], "--data", data,
        "--layout", cfg["layout"], "--name", f"{ds}-s{seed}-int8"], log)
    manifest = common.read_manifest(bundles["f32"])
    _, good = compare.val_goods(run, data, cfg["layout"], manifest)
    import torch

    trained = torch.load(ckpt, map_location="cpu", weights_only=False)
    out = {"dataset": ds, "model": MODEL, "seed": seed, "train_minutes": trained["train_seconds"] / 60,
           "train_threads": trained["args"]["threads"], "train_device": trained["args"]["device"],
           "steps": trained["args"]["steps"],
           "epochs": manifest["training"]["epochs"], "params": manifest["model"]["params"],
           "gflop": manifest["model"]["gflop"], "sigma": manifest["scoring"]["sigma"], "results": {}}
    for prec, b in bundles.items():
        out["results"][prec] = compare.evaluate(run, prec, b, good, data, cfg["layout"], {}, log)
    out["plan_ms_ratio_vs_demo_int8"] = plan_ratios([run], demo_plan, log)[0]
    (run / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def row(s: dict, prec: str) -> dict:
    """One docs/results.json object."""
    r = s["results"][prec]
    px = r.get("pixel") or {}
    a = r["at_threshold"]
    return {"dataset": s["dataset"], "model": s["model"], "precision": prec, "seed": s.get("seed", 0),
            "image_auroc": r["image_auroc"], "pixel_auroc": px.get("auroc"), "aupro": px.get("aupro"),
            "escapes": a["escapes"], "defective": r["n_defect"], "false_rejects": a["false_rejects"],
            "good": r["n_good"], "train_minutes": round(s["train_minutes"], 1),
            "plan_ms_ratio_vs_demo_int8": (round(s["plan_ms_ratio_vs_demo_int8"], 3)
                                           if "plan_ms_ratio_vs_demo_int8" in s else None)}


def spread(vals: list[float], nd: int = 3) -> str:
    """Mean and sample standard deviation over seeds (the value itself for one)."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{nd}f}"
    return f"{statistics.mean(vals):.{nd}f} ± {statistics.stdev(vals):.{nd}f}"


def section(summaries: list[dict], baselines: list[dict], missing: list[str]) -> str:
    lines = ["## The default recipe: AnoViT with the discriminative stage (issue 23)", "",
             "Regenerated by `.venv/bin/python scripts/results.py` (rows also in `docs/results.json`). The model:",
             "AnoViT-edge (the reconstructive stage) and a U-Net of 0.13 M parameters that reads the image, the",
             "reconstruction and their squared difference and outputs anomaly logits at 1/4 of the input",
             "resolution, upsampled (docs/MODEL.md). Trained by `scripts/train.py` with its defaults: 2000 steps",
             "of batch 8 on the good training images, half of each batch given synthetic anomalies with exact",
             "masks (`scripts/anomalies.py`), reconstruction MSE against the clean image plus focal loss on the",
             "mask, cosine schedule; the epoch kept and the image score's sigma chosen on the validation goods",
             "and their synthetic anomalies only. Score: max of the smoothed sigmoid map. Threshold: `anovit",
             "calibrate` on the validation goods (1 % target, 95 % confidence). int8: the bundle quantised by",
             "`scripts/quantize.py` and run by tract's integer path (the discriminative stage stays f32).",
             "`plan ratio`: median time of the compiled int8 plan over the demo-int8 plan's, 1 thread, side by",
             "side in one `anovit bench` run (AMD EPYC, 2 cores; `--rebench` times them all again in one run).",
             "Baselines: the reconstruction-only recipes of `scripts/compare.py` (`edge-c01`, `cae-c01`); where",
             "their runs are not in out/compare/, the section below has them for bottle and Magnetic Tile.", "",
             "| data set | model | precision | seeds | image AUROC | pixel AUROC | AUPRO 0.3 | escapes | false rejects "
             "| train min | plan ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for s in summaries + baselines:
        for prec in s["results"]:
            groups.setdefault((s["dataset"], s["model"], prec), []).append(row(s, prec))
    for ds in compare.DATASETS:
        for (d, model, prec), rows in groups.items():
            if d != ds:
                continue
            esc = ", ".join(f"{r['escapes']}/{r['defective']}" for r in rows)
            fr = ", ".join(f"{r['false_rejects']}/{r['good']}" for r in rows)
            ratio = [r["plan_ms_ratio_vs_demo_int8"] for r in rows if r["plan_ms_ratio_vs_demo_int8"] is not None]
            lines.append(f"| {ds} | {BASELINES.get(model, model)} | {prec} | {','.join(str(r['seed']) for r in rows)} "
                         f"| {spread([r['image_auroc'] for r in rows])} | {spread([r['pixel_auroc'] for r in rows])} "
                         f"| {spread([r['aupro'] for r in rows])} | {esc} | {fr} "
                         f"| {spread([r['train_minutes'] for r in rows], 0)} "
                         f"| {spread(ratio) if ratio else '–'} |")
    lines += ["", "How each run was trained (`train min` is wall time, with whatever else shared the cores):", ""]
    for s_ in summaries:
        lines.append(f"- {s_['dataset']} seed {s_['seed']}: {s_['steps']} steps ({s_['epochs']} epochs), "
                     f"{s_['train_threads']} thread(s) on {s_.get('train_device', 'cpu')}, "
                     f"{s_['train_minutes']:.0f} min; image score sigma {s_['sigma']:g}.")
    lines += ["", "Against the targets of issue 23 (f32 and int8, every seed):", ""]
    for ds, t in TARGETS.items():
        rows = [row(s, p) for s in summaries if s["dataset"] == ds for p in s["results"]]
        if not rows:
            lines.append(f"- {ds}: not run.")
            continue
        worst_img = min(r["image_auroc"] for r in rows)
        parts = [f"image AUROC >= {t['image']}: worst {worst_img:.3f} "
                 + ("reached" if worst_img >= t["image"] else f"**missed by {t['image'] - worst_img:.3f}**")]
        if "pixel" in t:
            worst_px = min(r["pixel_auroc"] for r in rows)
            parts.append(f"pixel AUROC >= {t['pixel']}: worst {worst_px:.3f} "
                         + ("reached" if worst_px >= t["pixel"] else f"**missed by {t['pixel'] - worst_px:.3f}**"))
        if "escape_share" in t:
            worst = max(r["escapes"] / r["defective"] for r in rows)
            parts.append(f"escapes <= {100 * t['escape_share']:.0f} %: worst {100 * worst:.1f} % "
                         + ("reached" if worst <= t["escape_share"] else "**missed**"))
        if "escapes" in t:
            worst = max(r["escapes"] for r in rows)
            parts.append(f"escapes <= {t['escapes']}: worst {worst} " + ("reached" if worst <= t["escapes"] else "**missed**"))
        for s in summaries:
            if s["dataset"] == ds:
                d = s["results"]["int8"]["image_auroc"] - s["results"]["f32"]["image_auroc"]
                px8, px32 = ((s["results"][p].get("pixel") or {}).get("auroc") for p in ("int8", "f32"))
                dp = f", pixel {px8 - px32:+.4f}" if px8 is not None and px32 is not None else ""
                parts.append(f"int8 - f32 (seed {s['seed']}): image {d:+.4f}{dp}")
        lines.append(f"- {ds}: " + "; ".join(parts) + ".")
    if missing:
        lines += ["", f"Not run for this version of the page: {', '.join(f'`{m}`' for m in missing)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2, help="training threads")
    p.add_argument("--device", default="cpu", help="training device (cuda on a GPU machine: the same recipe, "
                                                   "results differ in the last bits; the rows say so)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs (out/results/*/summary.json)")
    p.add_argument("--finished-only", action="store_true", help="with --reuse: train nothing, list what is missing")
    p.add_argument("--baselines", action="store_true", help="train the compare.py baselines that are missing")
    p.add_argument("--rebench", action="store_true",
                   help="time every run's plan again, all in one `anovit bench` run (on a quiet machine)")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "results.json")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "RESULTS.md")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: the results need the shared data sets")
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    demo_plan = OUT / "demo-int8-plan"
    if not (demo_plan / "manifest.json").is_file():
        sh([ANOVIT, "compile", "--model", ROOT / "models" / "demo-int8", "--out", demo_plan], OUT / "log.txt")
    summaries, baselines, missing = [], [], []
    for ds in args.datasets:
        for seed in args.seeds:
            done = OUT / f"{ds}-s{seed}" / "summary.json"
            if args.reuse and done.is_file():
                summaries.append(json.loads(done.read_text()))
            elif args.finished_only:
                missing.append(f"{ds}-s{seed}")
            else:
                summaries.append(run_one(ds, seed, sys.executable, demo_plan, args.threads, args.device))
        for model in BASELINES:
            done = compare.OUT / f"{ds}-{model}" / "summary.json"
            if done.is_file():
                baselines.append({**json.loads(done.read_text()), "seed": 0})
            elif args.baselines:
                baselines.append({**compare.run_one(ds, model, sys.executable), "seed": 0})
            else:
                missing.append(f"{ds}-{model} (compare.py)")
    if args.rebench and summaries:
        runs = [OUT / f"{s['dataset']}-s{s['seed']}" for s in summaries]
        for s, r, run in zip(summaries, plan_ratios(runs, demo_plan, OUT / "log.txt"), runs):
            s["plan_ms_ratio_vs_demo_int8"] = r
            (run / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    rows = [row(s, prec) for s in summaries + baselines for prec in s["results"]]
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    write_section(args.results, "default-recipe", section(summaries, baselines, missing))
    print(f"wrote {args.json} ({len(rows)} rows) and the default-recipe section of {args.results}")


if __name__ == "__main__":
    main()
