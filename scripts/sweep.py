"""Recipe sweep: many training variants side by side, scored on the test split while they train.

An exploration tool, not the published comparison (that is compare.py, through the Rust `anovit
eval`). It packs each data set once into a small .npz (224 px, uint8, the split of train.py) so the
sweep can run where the data is not, e.g. on a GPU machine, then trains every variant of a grid in
parallel processes and records image AUROC (several smoothing sigmas) and pixel AUROC at a few
epochs of each run. Scoring here is common.score's arithmetic in torch (reflect border differs at
the outermost pixel), good enough to rank recipes.

    .venv/bin/python scripts/sweep.py pack --out sweep-data          # here, where ../shared/data is
    python3 scripts/sweep.py grid --data sweep-data --out out/sweep --device cuda --minutes 6
    python3 scripts/sweep.py run --data sweep-data --dataset bottle --size edge --inpaint 4 --epochs 300 --out r.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import anovit_model
import common
import train as train_mod

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {"bottle": ("mvtec_ad_bottle_256", "mvtec"), "magnetic_tile": ("magnetic_tile", "magnetic-tile")}
SIGMAS = (0.0, 2.0, 4.0, 8.0)
BORDER = 8  # pixels: "at the border" in the border share of the good maps' maxima


def _encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, S, S) -> concatenated JPEG bytes (quality 95, no chroma subsampling) and
    offsets: small enough to travel; the loss is far below what ranks recipes."""
    import io
    from PIL import Image
    chunks = []
    for img in images:
        buf = io.BytesIO()
        gray = (img[0] == img[1]).all() and (img[1] == img[2]).all()
        Image.fromarray(img[0] if gray else img.transpose(1, 2, 0)).save(buf, "JPEG", quality=95, subsampling=0)
        chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
    return np.concatenate(chunks), np.cumsum([0] + [len(c) for c in chunks])


def _decode(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    import io
    from PIL import Image
    return np.stack([np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB")).transpose(2, 0, 1)
                     for a, b in zip(offsets[:-1], offsets[1:])])


def write_npz(path: Path, train: np.ndarray, val: np.ndarray, test: np.ndarray, kinds: list[str],
              masks: np.ndarray | None) -> None:
    """The packed form `run` reads: uint8 (N, 3, S, S) splits, test kinds ("good" or a defect
    type) and optional boolean (N, S, S) test masks."""
    arrays = {}
    for split, imgs in (("train", train), ("val", val), ("test", test)):
        arrays[split], arrays[f"{split}_offsets"] = _encode(imgs)
    has = masks is not None
    masks = masks if has else np.zeros((len(test), 1, 1), bool)
    np.savez_compressed(path, **arrays, labels=np.array([k != "good" for k in kinds]), kinds=np.array(kinds),
                        has_masks=np.array(has), masks=np.packbits(masks), mask_shape=np.array(masks.shape))


def pack(args) -> None:
    """One .npz per data set: train/val/test images (after the board's resize, JPEG-encoded),
    test labels, kinds, and bit-packed masks on the same grid."""
    args.out.mkdir(parents=True, exist_ok=True)
    size = args.image_size
    geom = common.Preprocess(size, size, (0.0,) * 3, (1.0,) * 3)
    for ds, (folder, layout) in DATASETS.items():
        root = DATA / folder
        samples, test = common.discover(root, layout)
        # train.py's default split (fraction 0.1, seed 0): the sweep trains on what it trains on.
        train_s, val_s = common.split_train_val(samples, common.val_count(len(samples), 0.1), 0)
        load = lambda ss: np.stack([np.round(geom(common.load_rgb(s.path)) * 255).astype(np.uint8) for s in ss])  # noqa: E731
        masks = np.zeros((len(test), size, size), bool)
        for i, s in enumerate(test):
            if s.mask:
                m = common.load_mask(s.mask, (0, 0)).astype(np.float32)[..., None]
                masks[i] = common.resize_bilinear(m, size, size)[..., 0] >= 0.5
        write_npz(args.out / f"{ds}.npz", load(train_s), load(val_s), load(test), [s.kind for s in test],
                  masks if any(s.mask for s in test) else None)
        print(f"{ds}: {len(train_s)} train, {len(val_s)} val, {len(test)} test -> "
              f"{(args.out / f'{ds}.npz').stat().st_size / 1e6:.1f} MB", flush=True)
        if masks.any():  # pooled pixel AUROC weighs each kind by its defect pixels
            kinds = np.array([s.kind for s in test])
            area = {k: float(masks[kinds == k].mean()) for k in sorted(set(kinds) - {"good"})}
            share = {k: float(masks[kinds == k].sum() / masks.sum()) for k in area}
            print("  defect pixels per kind: " + ", ".join(
                f"{k} {100 * share[k]:.1f} % (masks cover {100 * area[k]:.1f} % of its images)" for k in area))


def smooth(err: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 1, H, W) separable Gaussian, reflect border."""
    if sigma <= 0:
        return err
    w = torch.from_numpy(common.gaussian_kernel(sigma, 4.0)).to(err.device)
    r = len(w) // 2
    err = F.conv2d(F.pad(err, (r, r, 0, 0), mode="reflect"), w.view(1, 1, 1, -1))
    return F.conv2d(F.pad(err, (0, 0, r, r), mode="reflect"), w.view(1, 1, -1, 1))


@torch.no_grad()
def error_maps(model, x, device, batch=16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (N, 1, H, W) squared-error maps: both signs, and the darker-than-reconstructed part."""
    both, dark = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device)
        d = model(xb) - xb
        both.append((d ** 2).mean(dim=1, keepdim=True))
        dark.append((d.clamp(min=0) ** 2).mean(dim=1, keepdim=True))
    return torch.cat(both), torch.cat(dark)


def border_share(maps: torch.Tensor, margin: int = BORDER) -> float:
    """Share of maps whose maximum lies within `margin` pixels of the image border."""
    n, _, h, w = maps.shape
    at = maps.flatten(1).argmax(dim=1)
    y, x = at // w, at % w
    near = (torch.minimum(y, h - 1 - y) < margin) | (torch.minimum(x, w - 1 - x) < margin)
    return float(near.float().mean())


@torch.no_grad()
def evaluate(model, x_test, labels, kinds, masks, device, x_val=None, batch=16) -> dict:
    from sklearn.metrics import roc_auc_score
    model.eval()
    err, dark = error_maps(model, x_test, device, batch)
    out = {}

    def figures(sm: torch.Tensor, tag: str, pixel: bool) -> np.ndarray:
        scores = sm.flatten(1).amax(dim=1).cpu().numpy()
        out[f"image_auroc_{tag}"] = float(roc_auc_score(labels, scores))
        if masks is not None and pixel:
            px = sm[:, 0, ::2, ::2].cpu().numpy().ravel()
            out[f"pixel_auroc_{tag}"] = float(roc_auc_score(masks[:, ::2, ::2].ravel(), px))
        return scores

    smoothed = {s: smooth(err, s) for s in SIGMAS}
    for s, sm in smoothed.items():
        scores = figures(sm, f"s{s:g}", s in (0.0, 4.0))
        per_kind = {}
        for k in sorted(set(kinds) - {"good"}):
            sel = (kinds == k) | (kinds == "good")
            per_kind[k] = round(float(roc_auc_score(labels[sel], scores[sel])), 4)
        out[f"per_kind_s{s:g}"] = per_kind
    # Where the good parts' maxima lie, and two scorings that answer it: only the darker-than-
    # reconstructed error (polarity), and the per-pixel reference of `anovit calibrate --reference`
    # (each pixel standardised by the validation images' smoothed maps, floor 0.1 x mean std).
    good = torch.from_numpy(np.asarray(labels) == 0)
    out["good_max_at_border_s4"] = border_share(smoothed[4.0][good])
    figures(smooth(dark, 4.0), "s4_dark", True)
    if x_val is not None:
        ref = smooth(error_maps(model, x_val, device, batch)[0], 4.0)
        mean, std = ref.mean(dim=0), ref.std(dim=0, unbiased=False)
        figures((smoothed[4.0] - mean) / (std + 0.1 * std.mean()), "s4_ref", True)
    return out


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    packed = args.data / f"{args.dataset}.npz"
    if not packed.is_file():
        sys.exit(f"{packed} not found: run `sweep.py pack --out {args.data}` first")
    d = np.load(packed)
    x_train = torch.from_numpy(_decode(d["train"], d["train_offsets"])).float() / 255
    mean, std = x_train.mean(dim=(0, 2, 3), keepdim=True), x_train.std(dim=(0, 2, 3), keepdim=True)
    x_train = (x_train - mean) / std
    x_test = (torch.from_numpy(_decode(d["test"], d["test_offsets"])).float() / 255 - mean) / std
    x_val = (torch.from_numpy(_decode(d["val"], d["val_offsets"])).float() / 255 - mean) / std
    labels, kinds = d["labels"], d["kinds"]
    masks = np.unpackbits(d["masks"])[: int(np.prod(d["mask_shape"]))].reshape(d["mask_shape"]).astype(bool) \
        if bool(d["has_masks"]) else None

    model = anovit_model.build(args.size, x_train.shape[-1], 0.0, args.inpaint).to(args.device)
    opt, sched = train_mod.make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    corrupt_gen = torch.Generator().manual_seed(args.seed + 1)
    checkpoints = {max(1, round(args.epochs * f)) for f in (0.25, 0.5, 0.75, 1.0)}
    if args.eval_every:
        checkpoints |= set(range(args.eval_every, args.epochs + 1, args.eval_every))
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
              "evals": []}
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        loss = train_mod.run_epoch(model, opt, x_train, args, gen, corrupt_gen)
        if sched:
            sched.step()
        late = args.minutes and time.time() - start > 60 * args.minutes
        if epoch in checkpoints or late:
            ev = evaluate(model, x_test, labels, kinds, masks, args.device, x_val)
            ev.update(epoch=epoch, loss=loss, minutes=(time.time() - start) / 60)
            result["evals"].append(ev)
            print(json.dumps({k: v for k, v in ev.items() if not k.startswith("per_kind")}), flush=True)
            args.out.write_text(json.dumps(result, indent=1))
        if late:
            result["stopped_early"] = epoch
            break
    args.out.write_text(json.dumps(result, indent=1))
    return result


# name: (dataset, size, inpaint, corrupt ratio, epochs, extra args)
GRID = {
    "bottle-edge": ("bottle", "edge", 1, 0.0, 300, []),
    "bottle-edge-c01": ("bottle", "edge", 1, 0.1, 300, []),
    "bottle-cae": ("bottle", "cae", 1, 0.0, 300, []),
    "bottle-inp2": ("bottle", "edge", 2, 0.0, 300, []),
    "bottle-inp4": ("bottle", "edge", 4, 0.0, 300, []),
    "bottle-inp4-c01": ("bottle", "edge", 4, 0.1, 300, []),
    "bottle-inp9": ("bottle", "edge", 9, 0.0, 300, []),
    "bottle-inp4-cos": ("bottle", "edge", 4, 0.0, 300, ["--cosine", "--lr", "5e-4"]),
    "bottle-edge-c02": ("bottle", "edge", 1, 0.2, 300, []),
    "bottle-cae-c01": ("bottle", "cae", 1, 0.1, 300, []),
    "bottle-inp2-c01": ("bottle", "edge", 2, 0.1, 300, []),
    "mt-edge": ("magnetic_tile", "edge", 1, 0.0, 100, []),
    "mt-edge-c01": ("magnetic_tile", "edge", 1, 0.1, 100, []),
    "mt-cae-c01": ("magnetic_tile", "cae", 1, 0.1, 100, []),
    "mt-inp2-c02": ("magnetic_tile", "edge", 2, 0.2, 100, []),
    "mt-cae": ("magnetic_tile", "cae", 1, 0.0, 100, []),
    "mt-inp2": ("magnetic_tile", "edge", 2, 0.0, 100, []),
    "mt-inp4": ("magnetic_tile", "edge", 4, 0.0, 100, []),
    "mt-inp4-c01": ("magnetic_tile", "edge", 4, 0.1, 100, []),
    "mt-inp9": ("magnetic_tile", "edge", 9, 0.0, 100, []),
    "mt-inp4-cos": ("magnetic_tile", "edge", 4, 0.0, 100, ["--cosine", "--lr", "5e-4"]),
    # compare.py's one-stage recipe (25 epochs, cosine) with patch corruption and synthetic defects
    "mt-edge-c01-25": ("magnetic_tile", "edge", 1, 0.1, 25, ["--cosine"]),
    "mt-edge-d01-25": ("magnetic_tile", "edge", 1, 0.1, 25, ["--cosine", "--corrupt-style", "defects"]),
}


def grid(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in GRID if not args.only or n in args.only]
    procs = {}
    for name in names:
        ds, size, inp, cor, epochs, extra = GRID[name]
        epochs = max(1, int(epochs * args.epoch_scale))
        cmd = [sys.executable, __file__, "run", "--data", args.data, "--dataset", ds, "--size", size,
               "--eval-every", args.eval_every,
               "--inpaint", inp, "--corrupt-ratio", cor, "--epochs", epochs, "--device", args.device,
               "--minutes", args.minutes, "--threads", args.threads, "--out", args.out / f"{name}.json", *extra]
        log = open(args.out / f"{name}.log", "w")
        procs[name] = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT)
    failed = [n for n, p in procs.items() if p.wait()]
    summary = {}
    for name in names:
        f = args.out / f"{name}.json"
        if f.exists():
            summary[name] = json.loads(f.read_text())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, r in summary.items():
        for ev in r["evals"]:
            figs = "  ".join(f"{k.replace('image_auroc_', 'img ').replace('pixel_auroc_', 'px ')} {v:.3f}"
                             for k, v in ev.items() if "auroc" in k)
            print(f"{name:18s} ep {ev['epoch']:4d} {ev['minutes']:5.1f} min  {figs}")
    if failed:
        sys.exit(f"failed runs: {failed} (see their .log)")


def report(args) -> None:
    """Markdown tables of one or more grid summaries (each with its own heading and command)."""
    lines = ["# Recipe sweep (`scripts/sweep.py`)", "",
             "Exploration figures, not the published comparison (`docs/RESULTS.md`): torch scoring on the",
             "test split *during* training, so choosing by them is optimistic; image AUROC carries about",
             "+/-0.03 of noise on bottle (20 good test images). Recipe as in `scripts/train.py` (224 px, batch 8,",
             "Adam 2e-4 (0.5, 0.999), corruption and inpainting as named); all runs of a grid share the machine.",
             "Score: max of the squared-error map smoothed with sigma s; pixel AUROC on every 2nd pixel.",
             "Each grid's figures are kept in `docs/sweep/<date>-gridN.json`, what it showed beside them in",
             "`.md`; `sweep.py report --summaries ... --titles ...` renders this page from them.", ""]
    for title, path in zip(args.titles, args.summaries):
        data = json.loads(Path(path).read_text())
        lines += [f"## {title}", "", "| run | data | model | inpaint | corrupt | epoch | min | image s0 | s2 | s4 | s8 "
                  "| pixel s4 | per kind (s4) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in data.items():
            c = r["config"]
            for ev in r["evals"]:
                px = ev.get("pixel_auroc_s4")
                kinds = ", ".join(f"{k} {v:.2f}" for k, v in ev["per_kind_s4"].items())
                corrupt = f"{c['corrupt_ratio']}" + (f" {c['corrupt_style']}" if c.get("corrupt_style", "patch") != "patch" else "")
                lines.append(f"| {name} | {c['dataset']} | {c['size']} | {c['inpaint']} | {corrupt} "
                             f"| {ev['epoch']} | {ev['minutes']:.1f} | "
                             + " | ".join(f"{ev[f'image_auroc_s{s:g}']:.3f}" for s in SIGMAS)
                             + f" | {'–' if px is None else f'{px:.3f}'} | {kinds} |")
        lines.append("")
        scored = [(name, ev) for name, r in data.items() for ev in r["evals"] if "good_max_at_border_s4" in ev]
        if scored:
            lines += [f"Scorings at sigma 4: *good maxima at border*: share of good test images whose map peaks within "
                      f"{BORDER} px of the image border; *dark*: only the error where the part is darker than its "
                      "reconstruction; *ref*: the per-pixel reference (standardised by the validation images' maps).",
                      "", "| run | epoch | good maxima at border | image | image dark | image ref | pixel | pixel dark "
                      "| pixel ref |", "|---|---|---|---|---|---|---|---|---|"]
            fig = lambda ev, k: "–" if ev.get(k) is None else f"{ev[k]:.3f}"  # noqa: E731
            for name, ev in scored:
                lines.append(f"| {name} | {ev['epoch']} | {ev['good_max_at_border_s4']:.2f} | "
                             + " | ".join(fig(ev, f"{kind}_auroc_s4{tag}") for kind in ("image", "pixel")
                                          for tag in ("", "_dark", "_ref")) + " |")
            lines.append("")
        notes = Path(path).with_suffix(".md")  # what the grid showed, kept beside its figures
        if notes.is_file():
            lines += [notes.read_text().strip(), ""]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--image-size", type=int, default=224)
    pk.set_defaults(func=pack)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--dataset", required=True, help="reads <data>/<dataset>.npz (from pack)")
    r.add_argument("--size", choices=anovit_model.SIZE_NAMES, default="edge")
    r.add_argument("--inpaint", type=int, default=1, choices=anovit_model.INPAINT_PHASES)
    r.add_argument("--corrupt-ratio", type=float, default=0.0)
    r.add_argument("--corrupt-style", choices=train_mod.CORRUPT_STYLES, default="patch")
    r.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 per run when runs share cores)")
    r.add_argument("--epochs", type=int, default=100)
    r.add_argument("--batch", type=int, default=8)
    r.add_argument("--lr", type=float, default=2e-4)
    r.add_argument("--cosine", action="store_true")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--minutes", type=float, default=0.0, help="stop (after scoring) once past this")
    r.add_argument("--eval-every", type=int, default=0, help="also score every N epochs")
    r.add_argument("--out", type=Path, required=True)
    r.set_defaults(func=run)
    g = sub.add_parser("grid")
    g.add_argument("--data", type=Path, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--device", default="cpu")
    g.add_argument("--minutes", type=float, default=0.0)
    g.add_argument("--epoch-scale", type=float, default=1.0, help="multiplies every run's epochs (smoke tests)")
    g.add_argument("--eval-every", type=int, default=0)
    g.add_argument("--only", nargs="*", help="run only these names")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    g.set_defaults(func=grid)
    rp = sub.add_parser("report")
    rp.add_argument("--summaries", nargs="+", type=Path, required=True)
    rp.add_argument("--titles", nargs="+", required=True, help="one heading per summary (say the command)")
    rp.add_argument("--out", type=Path, required=True)
    rp.set_defaults(func=report)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
