"""Trains AnoViT on good images only; the best weights go into a checkpoint for export.py.

Two recipes (docs/MODEL.md):
- `discriminative` (the default, and the best we have): DRAEM-style. Synthetic anomalies with
  exact masks (scripts/anomalies.py) are put on half of the training images; AnoViT learns to
  restore the clean image from the anomalous one, and a small U-Net reading the image and its
  reconstruction learns the anomaly mask (focal loss). Fixed schedule (--steps, cosine), the best
  epoch by the loss on a fixed synthetic-anomaly set made from the validation goods.
- `reconstruction`: MSE reconstruction only, early stopping on the validation goods' loss.

    python scripts/train.py --data ../shared/data/mvtec_ad_bottle_256 --out out/bottle.pt
    python scripts/train.py --data out/demo-data --recipe reconstruction --epochs 60 --out out/demo.pt

Progress (with an ETA) is printed per epoch; an interrupted run goes on with --resume.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import anomalies
import anovit_model
import common

CORRUPT_STYLES = ("patch", "defects")
RECIPES = ("discriminative", "reconstruction")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data set root")
    p.add_argument("--layout", choices=common.LAYOUTS, default="mvtec")
    p.add_argument("--size", choices=anovit_model.SIZE_NAMES, default="edge")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--color", choices=("rgb", "gray"), default="rgb")
    p.add_argument("--roi", type=lambda s: tuple(int(v) for v in s.split(",")), default=None, help="x,y,w,h")
    p.add_argument("--recipe", choices=RECIPES, default="discriminative")
    p.add_argument("--disc-size", choices=sorted(anovit_model.DISC_SIZES), default="edge",
                   help="discriminative stage size (recipe discriminative)")
    p.add_argument("--steps", type=int, default=2000,
                   help="optimiser steps of the discriminative recipe (epochs follow from the data size); "
                        "about 20 min for AnoViT-edge on 2 cores")
    p.add_argument("--anomaly-share", type=float, default=0.5,
                   help="share of training images made anomalous (recipe discriminative)")
    p.add_argument("--disc-lr", type=float, default=5e-4, help="learning rate of the discriminative stage")
    p.add_argument("--resume", action="store_true",
                   help="go on from the last finished epoch of an interrupted run with the same --out")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs (default: 200 for reconstruction; from --steps for discriminative)")
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


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def disc_batch(model: anovit_model.TwoStage, clean: torch.Tensor, inp: torch.Tensor, mask: torch.Tensor):
    """Losses of one batch: the reconstruction of the anomalous input against the clean image
    (MSE), and the anomaly logits against the exact mask (focal loss)."""
    recon, logits = model(inp)
    return F.mse_loss(recon, clean), anovit_model.focal_loss(logits, mask), logits


def run_epoch_disc(model, opts, scheds, x_train: torch.Tensor, args, gen: torch.Generator,
                   anomaly_gen: torch.Generator) -> tuple[float, float]:
    """One shuffled pass of the discriminative recipe; mean reconstruction and focal losses."""
    model.train()
    order = torch.randperm(len(x_train), generator=gen)
    rec_total = seg_total = 0.0
    for i in range(0, len(order), args.batch):
        xb = x_train[order[i:i + args.batch]]
        # Patch content comes from a random handful of other training images.
        pool = x_train[torch.randint(0, len(x_train), (min(8, len(x_train)),), generator=anomaly_gen)]
        inp, mask = anomalies.batch(xb, pool, args.anomaly_share, anomaly_gen)
        xb, inp, mask = xb.to(args.device), inp.to(args.device), mask.to(args.device)
        rec, seg, _ = disc_batch(model, xb, inp, mask)
        loss = rec + seg
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        for sc in scheds:
            sc.step()
        rec_total += rec.item() * len(xb)
        seg_total += seg.item() * len(xb)
    return rec_total / len(x_train), seg_total / len(x_train)


def synthetic_validation(x_val: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation set of the discriminative recipe: every validation good twice, once
    as it is and once with a synthetic anomaly (seeded, the same every epoch and every run)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    anom, masks = anomalies.batch(x_val, x_val, 1.0, gen)
    return torch.cat([x_val, anom]), torch.cat([torch.zeros_like(masks), masks])


def evaluate_disc(model, x: torch.Tensor, masks: torch.Tensor, batch: int, device: str = "cpu") -> dict:
    """Losses and the synthetic image / pixel AUROC (map: sigmoid of the logits, max for the
    image) on the fixed synthetic validation set."""
    model.eval()
    rec = seg = 0.0
    probs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, mb = x[i:i + batch].to(device), masks[i:i + batch].to(device)
            # rec: the reconstruction against the input as given (anomalous ones included), so
            # the kept epoch is the one that reconstructs and segments this fixed set best.
            r, sg, logits = disc_batch(model, xb, xb, mb)
            rec += r.item() * len(xb)
            seg += sg.item() * len(xb)
            probs.append(torch.sigmoid(logits).cpu())
    p = torch.cat(probs)[:, 0]
    m = masks[:, 0] > 0.5
    labels = m.flatten(1).any(dim=1).numpy()
    out = {"rec": rec / len(x), "seg": seg / len(x)}
    out["loss"] = out["rec"] + out["seg"]
    if labels.any() and not labels.all():
        out["image_auroc"] = common.auroc(labels, p.flatten(1).amax(dim=1).numpy())
        sel = torch.from_numpy(labels)
        out["pixel_auroc"] = common.auroc(m[sel].flatten().numpy(), p[sel].flatten().numpy())
    return out


def args_dict(args) -> dict:
    """The run's arguments as saved in checkpoints (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    disc = args.recipe == "discriminative"
    if disc and args.inpaint > 1:
        raise SystemExit("--inpaint needs --recipe reconstruction (inpainting x the discriminative stage would "
                         "multiply the frame cost)")

    samples, _ = common.discover(args.data, args.layout)
    fingerprint = common.data_fingerprint(args.data, samples)
    train_s, val_s = common.split_train_val(samples, common.val_count(len(samples), args.val_fraction), args.seed)
    if args.max_train_images:
        train_s = train_s[: args.max_train_images]
    steps_per_epoch = -(-len(train_s) // args.batch)
    if args.epochs is None:
        args.epochs = max(1, -(-args.steps // steps_per_epoch)) if disc else 200

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
        # A reconstruction checkpoint warm-starts the reconstructive stage of a discriminative run.
        if init.get("disc_size"):
            if not disc:
                raise ValueError(f"{args.init}: a discriminative checkpoint; continue it with --recipe discriminative")
            args.disc_size = init["disc_size"]
            model = anovit_model.TwoStage(model, anovit_model.build_disc(init["disc_size"]))
        model.load_state_dict(init["state_dict"])
        epoch0 = init["training"]["epochs"]
        print(f"init: weights of {args.init} (best epoch {init['training']['best_epoch']})", flush=True)
    if disc and not isinstance(model, anovit_model.TwoStage):
        model = anovit_model.TwoStage(model, anovit_model.build_disc(args.disc_size))
    params = anovit_model.count_params(model)
    gflop = anovit_model.count_gflop(model, args.image_size)
    model.to(args.device)
    print(f"model: {args.size}{f' + discriminative {args.disc_size}' if disc else ''}, {params / 1e6:.2f} M params, "
          f"{gflop:.3f} GFLOP/frame, recipe {args.recipe}, {args.epochs} epochs of {steps_per_epoch} steps, "
          f"mask_ratio {args.mask_ratio}, corrupt_ratio {args.corrupt_ratio}, inpaint {args.inpaint}", flush=True)

    if disc:
        # The paper's Adam for AnoViT, plain Adam for the U-Net; both decay over the whole schedule.
        total = args.epochs * steps_per_epoch
        opts = [torch.optim.Adam(model.recon.parameters(), lr=args.lr, betas=(0.5, 0.999)),
                torch.optim.Adam(model.disc.parameters(), lr=args.disc_lr)]
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total) for o in opts]
        x_vs, m_vs = synthetic_validation(x_val, args.seed)
    else:
        opt, sched = make_optimizer(model, args)
        opts, scheds = [opt], [sched] if sched else []
    gen = torch.Generator().manual_seed(args.seed)
    corrupt_gen = torch.Generator().manual_seed(args.seed + 1)  # own stream: shuffling stays the same
    best = {"val_loss": float("inf"), "epoch": 0, "state": None}
    history = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spent = 0.0  # training seconds of earlier runs of this schedule (--resume)
    if args.resume and state_path(args.out).is_file():
        st = torch.load(state_path(args.out), map_location="cpu", weights_only=False)
        if st["args"]["data"] != str(args.data) or st["args"]["seed"] != args.seed or st["epochs"] != args.epochs:
            raise SystemExit(f"{state_path(args.out)}: another run (data, seed or schedule differ); "
                             "remove it or choose another --out")
        model.load_state_dict(st["model"])
        for o, so in zip(opts, st["opts"]):
            o.load_state_dict(so)
        for sc, ss in zip(scheds, st["scheds"]):
            sc.load_state_dict(ss)
        gen.set_state(st["gen"])
        corrupt_gen.set_state(st["corrupt_gen"])
        best, history, spent = st["best"], st["history"], st["seconds"]
        print(f"resumed after epoch {len(history)} of {args.epochs} ({fmt_minutes(spent)} spent)", flush=True)
    start = time.time() - spent

    def checkpoint() -> dict:
        return {
            "state_dict": best["state"],
            "size": args.size,
            "recipe": args.recipe,
            "disc_size": args.disc_size if disc else None,
            "arch": anovit_model.arch_dict(args.size, args.inpaint, args.disc_size if disc else None),
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
                "recipe": args.recipe,
            },
            "args": args_dict(args),
            "history": history,
            "train_seconds": time.time() - start,
        }

    finished = True  # False when stopped by the time budget: the state is kept for --resume
    for epoch in range(len(history) + 1, args.epochs + 1):
        t_ep = time.time()
        if disc:
            rec, seg = run_epoch_disc(model, opts, scheds, x_train, args, gen, corrupt_gen)
            v = evaluate_disc(model, x_vs, m_vs, args.batch, args.device)
            loss, val_loss = rec + seg, v["loss"]
            rec_line = (f"rec {rec:.4f} focal {seg:.4f}  val rec {v['rec']:.4f} focal {v['seg']:.4f} "
                        f"synthetic AUROC image {v.get('image_auroc', float('nan')):.3f} "
                        f"pixel {v.get('pixel_auroc', float('nan')):.3f}")
        else:
            loss = run_epoch(model, opts[0], x_train, args, gen, corrupt_gen)
            for sc in scheds:
                sc.step()
            val_loss = evaluate_loss(model, x_val, args.batch, args.device)
            v, rec_line = {}, f"loss {loss:.5f}  val {val_loss:.5f}"
        dt = time.time() - t_ep
        history.append({"epoch": epoch, "loss": loss, "val_loss": val_loss, "seconds": dt,
                        **{k: v[k] for k in ("image_auroc", "pixel_auroc") if k in v}})
        improved = val_loss < best["val_loss"]
        if improved:
            best = {"val_loss": val_loss, "epoch": epoch,
                    "state": {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}}
            torch.save(checkpoint(), args.out)  # best so far: inspectable mid-run, survives a crash
        elapsed = time.time() - start
        eta = elapsed / len(history) * (args.epochs - len(history))
        print(f"epoch {epoch:3d}/{args.epochs}  {rec_line}{' *' if improved else '  '}  {dt:.1f}s "
              f"({len(x_train) / dt:.1f} img/s)  elapsed {fmt_minutes(elapsed)}, ETA {fmt_minutes(eta)}", flush=True)
        torch.save({"model": model.state_dict(), "opts": [o.state_dict() for o in opts],
                    "scheds": [sc.state_dict() for sc in scheds], "gen": gen.get_state(),
                    "corrupt_gen": corrupt_gen.get_state(), "best": best, "history": history,
                    "seconds": elapsed, "epochs": args.epochs,
                    "args": args_dict(args)},
                   state_path(args.out))
        # The discriminative recipe runs its fixed cosine schedule to the end.
        if not disc and epoch - best["epoch"] >= args.patience:
            print(f"early stop: no val improvement for {args.patience} epochs", flush=True)
            break
        if args.max_minutes and elapsed > 60 * args.max_minutes and epoch < args.epochs:
            print(f"time budget of {args.max_minutes} min reached: --resume goes on from here", flush=True)
            finished = False
            break

    ckpt = checkpoint()
    torch.save(ckpt, args.out)
    if finished:
        state_path(args.out).unlink(missing_ok=True)
    print(f"best epoch {best['epoch']} val {best['val_loss']:.5f}; {len(history)} epochs in "
          f"{ckpt['train_seconds'] / 60:.1f} min; saved {args.out}", flush=True)
    return ckpt


if __name__ == "__main__":
    train(parse_args())
