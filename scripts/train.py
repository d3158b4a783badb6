"""Trains AnoViT on good images only (MSE reconstruction), with early stopping on a held-out
validation split of the good images; the best weights go into a checkpoint for export.py.

    python scripts/train.py --data out/demo-data --size edge --epochs 60 --out out/demo.pt
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import anovit_model
import common

CORRUPT_STYLES = ("patch", "defects")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data set root")
    p.add_argument("--layout", choices=common.LAYOUTS, default="mvtec")
    p.add_argument("--size", choices=anovit_model.SIZE_NAMES, default="edge")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--color", choices=("rgb", "gray"), default="rgb")
    p.add_argument("--roi", type=lambda s: tuple(int(v) for v in s.split(",")), default=None, help="x,y,w,h")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--cosine", action="store_true", help="cosine-decay the learning rate over --epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=12)
    p.add_argument("--mask-ratio", type=float, default=0.0, help="share of patch tokens masked in training")
    p.add_argument("--corrupt-ratio", type=float, default=0.0,
                   help="training inputs get this share of their area pasted over from elsewhere (target stays clean)")
    p.add_argument("--corrupt-style", choices=CORRUPT_STYLES, default="patch",
                   help="patch: squares from other images; defects: synthetic defects (smooth-edged regions "
                        "of shifted brightness or foreign texture, dark spots and scratches)")
    p.add_argument("--inpaint", type=int, default=1, choices=anovit_model.INPAINT_PHASES,
                   help="inpainting phases: each patch is reconstructed with its own token masked (1 = off)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from the weights of a checkpoint of this script (a second training stage)")
    p.add_argument("--pretrained", type=Path, default=None, help="local timm-named ViT checkpoint")
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (results then differ in the last bits)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file")
    return p.parse_args(argv)


def load_stack(samples, pre: common.Preprocess) -> torch.Tensor:
    return torch.from_numpy(np.stack([pre(common.load_rgb(s.path)) for s in samples]))


def corrupt(xb: torch.Tensor, ratio: float, gen: torch.Generator, size: int = anovit_model.PATCH) -> torch.Tensor:
    """Pastes size x size squares cut from random places of the batch over random places of each
    image, covering about `ratio` of its area. The loss still compares with the clean image, so
    the model learns to replace content that does not belong there instead of copying it: a
    reconstruction model that copies its input copies the defects too (docs/MODEL.md)."""
    b, _, h, w = xb.shape
    n = int(round(ratio * h * w / size**2))
    out = xb.clone()
    ys, xs, sys_, sxs = (torch.randint(0, hi - size + 1, (b, n), generator=gen) for hi in (h, w, h, w))
    src = torch.randint(0, b, (b, n), generator=gen)
    for i in range(b):
        for y, x, sy, sx, j in zip(ys[i].tolist(), xs[i].tolist(), sys_[i].tolist(), sxs[i].tolist(), src[i].tolist()):
            out[i, :, y:y + size, x:x + size] = xb[j, :, sy:sy + size, sx:sx + size]
    return out


def synth_defects(xb: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Synthetic defects over about `ratio` of each image (DRAEM-style, Zavrtanik et al. 2021): a
    smooth-edged random region (bicubic-upsampled noise of a random grain) whose brightness is
    shifted or whose content comes from another image of the batch, or dark spots and scratches.
    The loss still targets the clean image, so the model learns to restore what good parts look
    like instead of copying brightness changes, holes and cracks (the Magnetic Tile defects,
    docs/SWEEP.md). Values are in standardised units, so shifts are in multiples of the data's std."""
    b, c, h, w = xb.shape
    out = xb.clone()

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=gen))

    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for i in range(b):
        kind = int(torch.randint(0, 3, (1,), generator=gen))
        if kind < 2:
            grain = int(torch.randint(2, 9, (1,), generator=gen))
            noise = torch.rand(1, 1, grain, grain, generator=gen)
            up = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
            cut = torch.quantile(up.flatten(), 1.0 - ratio)
            region = ((up - cut) / 0.03).clamp(0.0, 1.0)  # soft edge a few pixels wide
            if kind == 0:
                out[i] += region * u(0.3, 1.2) * (1 if torch.rand(1, generator=gen) < 0.5 else -1)
            else:
                j = (i + 1 + int(torch.randint(0, max(1, b - 1), (1,), generator=gen))) % b
                out[i] = out[i] * (1 - region) + xb[j] * region
        else:
            dark = torch.zeros(h, w)
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                y, x = u(0, h - 1), u(0, w - 1)
                steps = 1 if torch.rand(1, generator=gen) < 0.5 else int(torch.randint(8, 40, (1,), generator=gen))
                angle, radius = u(0, 6.2832), u(1.0, 4.0) if steps == 1 else u(0.7, 1.5)
                for _ in range(steps):  # a spot, or a scratch as a random walk of spots
                    dark = torch.maximum(dark, torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * radius**2)))
                    angle += u(-0.4, 0.4)
                    step = torch.tensor(angle)  # f32 trigonometry: the figures in docs/SWEEP.md were made so
                    y, x = y + 2 * torch.sin(step).item(), x + 2 * torch.cos(step).item()
            out[i] -= dark * u(1.0, 3.0)
    return out


def evaluate_loss(model, x: torch.Tensor, batch: int, device: str = "cpu") -> float:
    model.eval()
    with torch.no_grad():
        total = sum(F.mse_loss(model(xb), xb, reduction="sum").item()
                    for xb in (x[i:i + batch].to(device) for i in range(0, len(x), batch)))
    return total / x.numel()


def run_epoch(model, opt, x_train: torch.Tensor, args, gen: torch.Generator, corrupt_gen: torch.Generator) -> float:
    """One shuffled pass over x_train (kept on the CPU; batches move to args.device); mean loss."""
    model.train()
    order = torch.randperm(len(x_train), generator=gen)
    total = 0.0
    for i in range(0, len(order), args.batch):
        xb = x_train[order[i:i + args.batch]]
        if args.corrupt_ratio <= 0:
            inp = xb
        elif args.corrupt_style == "defects":
            inp = synth_defects(xb, args.corrupt_ratio, corrupt_gen)
        else:
            inp = corrupt(xb, args.corrupt_ratio, corrupt_gen)
        xb, inp = xb.to(args.device), inp.to(args.device)
        loss = anovit_model.reconstruction_loss(model, inp, xb, corrupt_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(xb)
    return total / len(x_train)


def make_optimizer(model, args):
    """Adam with the paper's betas; cosine decay over args.epochs when args.cosine."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999))
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs) if args.cosine else None


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True)

    samples, _ = common.discover(args.data, args.layout)
    fingerprint = common.data_fingerprint(args.data, samples)
    train_s, val_s = common.split_train_val(samples, common.val_count(len(samples), args.val_fraction), args.seed)
    if args.max_train_images:
        train_s = train_s[: args.max_train_images]

    # Decode and preprocess everything once: the data set fits in memory and epochs stay cheap.
    t0 = time.time()
    geom = common.Preprocess(args.image_size, args.image_size, (0.0,) * 3, (1.0,) * 3, args.color, args.roi)
    raw_train = load_stack(train_s, geom)
    init = torch.load(args.init, map_location="cpu", weights_only=False) if args.init else None
    if init is not None:
        # A continued stage keeps the normalisation its weights were trained with, even on new data.
        mean, std = tuple(init["input"]["mean"]), tuple(init["input"]["std"])
    else:
        mean = tuple(float(v) for v in raw_train.mean(dim=(0, 2, 3), dtype=torch.float64))
        std = tuple(float(v) for v in raw_train.std(dim=(0, 2, 3)).double())
    pre = common.Preprocess(args.image_size, args.image_size, mean, std, args.color, args.roi)
    m_t, s_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x_train = ((raw_train - m_t) / s_t).float()
    del raw_train
    x_val = load_stack(val_s, pre)
    print(f"data: {len(train_s)} train / {len(val_s)} val images at {args.image_size}px, "
          f"mean {np.round(mean, 4).tolist()} std {np.round(std, 4).tolist()}, loaded in {time.time() - t0:.1f}s",
          flush=True)

    model = anovit_model.build(args.size, args.image_size, args.mask_ratio, args.inpaint)
    if args.pretrained:
        anovit_model.load_pretrained(model, args.pretrained)
    epoch0 = 0  # epochs of the stage this run continues, so the manifest counts the whole schedule
    if init is not None:
        if init["size"] != args.size or init["input"] != pre.to_manifest():
            raise ValueError(f"{args.init}: other size or preprocessing than this run")
        model.load_state_dict(init["state_dict"])
        epoch0 = init["training"]["epochs"]
        print(f"init: weights of {args.init} (best epoch {init['training']['best_epoch']})", flush=True)
    params = anovit_model.count_params(model)
    gflop = anovit_model.count_gflop(model, args.image_size)
    model.to(args.device)
    print(f"model: {args.size}, {params / 1e6:.2f} M params, {gflop:.3f} GFLOP/frame, "
          f"mask_ratio {args.mask_ratio}, corrupt_ratio {args.corrupt_ratio}, inpaint {args.inpaint}", flush=True)

    opt, sched = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    corrupt_gen = torch.Generator().manual_seed(args.seed + 1)  # own stream: shuffling stays the same
    best = {"val_loss": float("inf"), "epoch": 0, "state": None}
    history = []
    start = time.time()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> dict:
        return {
            "state_dict": best["state"],
            "size": args.size,
            "arch": anovit_model.arch_dict(args.size, args.inpaint),
            "image_size": args.image_size,
            "mask_ratio": args.mask_ratio,
            "inpaint": args.inpaint,
            "corrupt_ratio": args.corrupt_ratio,
            "corrupt_style": args.corrupt_style,
            "params": params,
            "gflop": gflop,
            "input": pre.to_manifest(),
            "training": {
                "dataset": str(args.data),
                "layout": args.layout,
                "data_fingerprint": fingerprint,
                "n_train": len(train_s),
                "n_val": len(val_s),
                "epochs": epoch0 + len(history),
                "best_epoch": epoch0 + best["epoch"],
                "seed": args.seed,
                "val_loss": best["val_loss"],
            },
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "history": history,
            "train_seconds": time.time() - start,
        }

    for epoch in range(1, args.epochs + 1):
        t_ep = time.time()
        loss = run_epoch(model, opt, x_train, args, gen, corrupt_gen)
        if sched:
            sched.step()
        val_loss = evaluate_loss(model, x_val, args.batch, args.device)
        dt = time.time() - t_ep
        history.append({"epoch": epoch, "loss": loss, "val_loss": val_loss, "seconds": dt})
        improved = val_loss < best["val_loss"]
        if improved:
            best = {"val_loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            torch.save(checkpoint(), args.out)  # best so far: inspectable mid-run, survives a crash
        print(f"epoch {epoch:3d}  loss {loss:.5f}  val {val_loss:.5f}{' *' if improved else '  '}  "
              f"{dt:.1f}s ({len(x_train) / dt:.1f} img/s)", flush=True)
        if epoch - best["epoch"] >= args.patience:
            print(f"early stop: no val improvement for {args.patience} epochs", flush=True)
            break
        if args.max_minutes and time.time() - start > 60 * args.max_minutes:
            print(f"time budget of {args.max_minutes} min reached", flush=True)
            break

    ckpt = checkpoint()
    torch.save(ckpt, args.out)
    print(f"best epoch {best['epoch']} val {best['val_loss']:.5f}; {len(history)} epochs in "
          f"{ckpt['train_seconds'] / 60:.1f} min; saved {args.out}", flush=True)
    return ckpt


if __name__ == "__main__":
    train(parse_args())
