"""Synthetic anomalies with exact masks, for the discriminative stage (docs/MODEL.md).

No downloaded data: every anomaly is made from the good training images themselves or from
procedural textures. Shapes are Perlin-noise regions of varied grain and threshold (DRAEM,
Zavrtanik et al. 2021), small blobs, or thin scratches; fills are

- `patch`:    content of another good image, resized and moved, feathered in (NSA, Schlueter et
              al. 2022: anomalies that look like the part itself);
- `texture`:  a procedural texture (multi-octave noise, gratings, checkers, speckle) blended at
              a random opacity (DRAEM's texture source, without a texture data set);
- `shift`:    the region's own brightness, contrast or colour changed, or the region blurred;
- `scratch`:  thin dark or bright strokes (a random walk of 1-3 px width);
- `missing`:  material missing: the region set to a flat value at the image's dark or bright end.

Values are in standardised units (the training tensors are `(v - mean) / std`), so every shift
is a multiple of the data's spread. Gray data (three equal channels) stays gray.

    python scripts/anomalies.py --data ../shared/data/magnetic_tile --layout magnetic-tile --out sheet.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FILLS = ("patch", "texture", "shift", "scratch", "missing")
# Relative frequency of each fill; patch and texture are DRAEM's and NSA's main sources.
FILL_WEIGHTS = (0.3, 0.25, 0.2, 0.15, 0.1)


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def _i(gen: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=gen))


def perlin(h: int, w: int, res: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Gradient (Perlin) noise of `res` cells along (y, x) over an h x w grid, about [-1, 1]."""
    ry, rx = res
    # Gradient vectors at the (ry + 1) x (rx + 1) lattice corners.
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=gen)
    grad = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)
    ys = torch.linspace(0, ry, h + 1)[:-1]
    xs = torch.linspace(0, rx, w + 1)[:-1]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    y0, x0 = gy.floor().long(), gx.floor().long()
    fy, fx = gy - y0, gx - x0

    def dot(dy: int, dx: int) -> torch.Tensor:
        g = grad[y0 + dy, x0 + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = torch.lerp(dot(0, 0), dot(0, 1), ux)
    bottom = torch.lerp(dot(1, 0), dot(1, 1), ux)
    return math.sqrt(2) * torch.lerp(top, bottom, uy)


def fractal(h: int, w: int, res: int, octaves: int, gen: torch.Generator) -> torch.Tensor:
    """Sum of `octaves` Perlin layers, each twice the frequency and half the amplitude."""
    out, amp = torch.zeros(h, w), 1.0
    for o in range(octaves):
        r = res * 2**o
        out += amp * perlin(h, w, (r, r), gen)
        amp *= 0.5
    return out


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (C, H, W) tensor, reflect borders."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def region_mask(h: int, w: int, gen: torch.Generator, small: bool = False) -> torch.Tensor:
    """A binary region: a Perlin blob field thresholded (large, irregular regions) or, with
    `small`, one to a few small blobs (pits, blowholes). Never empty."""
    for _ in range(20):
        if small:
            m = torch.zeros(h, w, dtype=torch.bool)
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            for _ in range(_i(gen, 1, 4)):
                cy, cx = _u(gen, 0, h - 1), _u(gen, 0, w - 1)
                ry, rx = _u(gen, 1.0, max(2.0, h / 28)), _u(gen, 1.0, max(2.0, w / 28))
                wobble = 1 + 0.3 * perlin(h, w, (4, 4), gen)
                m |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < wobble
        else:
            scale = 2 ** _i(gen, 0, 5)  # 1..16 cells across the image: region size
            noise = perlin(h, w, (scale, scale), gen)
            m = noise > _u(gen, 0.35, 0.7)
        if m.any():
            return m
    m = torch.zeros(h, w, dtype=torch.bool)
    m[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2] = True
    return m


def scratch_mask(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """One to three thin strokes, each a random walk of disks 1-3 px wide."""
    m = torch.zeros(h, w, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for _ in range(_i(gen, 1, 4)):
        y, x = _u(gen, 0, h - 1), _u(gen, 0, w - 1)
        angle, radius = _u(gen, 0, 2 * math.pi), _u(gen, 0.6, 1.6)
        for _ in range(_i(gen, 10, max(11, int(0.4 * max(h, w))))):
            m |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
            angle += _u(gen, -0.25, 0.25)
            y, x = y + 1.5 * math.sin(angle), x + 1.5 * math.cos(angle)
    return m


def texture(c: int, h: int, w: int, gen: torch.Generator, gray: bool) -> torch.Tensor:
    """A procedural texture (C, H, W) in standardised units: noise, grating, checkers or speckle."""
    kind = _i(gen, 0, 4)
    if kind == 0:
        t = fractal(h, w, 2 ** _i(gen, 1, 4), 3, gen)
    elif kind == 1:
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        a, period = _u(gen, 0, math.pi), _u(gen, 3, 24)
        t = torch.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
    elif kind == 2:
        cell = _i(gen, 3, 16)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        t = (((yy // cell) + (xx // cell)) % 2).float() * 2 - 1
    else:
        t = _blur(torch.randn(1, h, w, generator=gen), _u(gen, 0.5, 2.0))[0]
        t = t / t.std().clamp_min(1e-6)
    amp = _u(gen, 0.5, 2.0)
    if gray:
        return (t * amp + _u(gen, -1.5, 1.5)).expand(c, h, w).clone()
    tint = torch.tensor([_u(gen, 0.5, 1.5) for _ in range(c)]).view(c, 1, 1)
    offset = torch.tensor([_u(gen, -1.5, 1.5) for _ in range(c)]).view(c, 1, 1)
    return t * amp * tint + offset


def _feather(mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blend weight: 0 outside the mask, ramping up inside it from its edge (about 0.5) to 1, so
    every changed pixel is inside the mask and no masked pixel is changed by less than a third."""
    soft = _blur(mask.float()[None], _u(gen, 0.5, 2.5))[0]
    return soft.clamp(min=0.35, max=1.0) * mask


def anomaly(x: torch.Tensor, others: torch.Tensor, gen: torch.Generator,
            fill: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One anomalous copy of the standardised image `x` (C, H, W) and its exact mask (H, W, bool):
    the mask holds every pixel that was changed, and only those. `others` (N, C, H, W) are good
    images the `patch` fill takes content from (x itself when N is 0)."""
    c, h, w = x.shape
    gray = bool(torch.equal(x[0], x[-1]) and (c < 3 or torch.equal(x[0], x[1])))
    if fill is None:
        fill = FILLS[int(torch.multinomial(torch.tensor(FILL_WEIGHTS), 1, generator=gen))]
    if fill == "scratch":
        mask = scratch_mask(h, w, gen)
    else:
        mask = region_mask(h, w, gen, small=_u(gen, 0, 1) < 0.3)
    if fill == "patch":
        src = others[_i(gen, 0, len(others))] if len(others) else x
        s = _u(gen, 0.75, 1.5)
        sh, sw = max(2, int(h / s)), max(2, int(w / s))
        y0, x0 = _i(gen, 0, h - min(sh, h) + 1), _i(gen, 0, w - min(sw, w) + 1)
        crop = src[:, y0:y0 + sh, x0:x0 + sw]
        content = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        # Moved: a circular shift, so the patch never lands where it came from.
        content = torch.roll(content, (_i(gen, h // 8, h - h // 8 + 1), _i(gen, w // 8, w - w // 8 + 1)), (1, 2))
        alpha = _feather(mask, gen)
    elif fill == "texture":
        content = texture(c, h, w, gen, gray)
        alpha = _feather(mask, gen) * _u(gen, 0.3, 1.0)
    elif fill == "shift":
        how = _i(gen, 0, 4)
        if how == 0:
            content = x + _u(gen, 0.4, 1.5) * (1 if _u(gen, 0, 1) < 0.5 else -1)
        elif how == 1:
            mu = x[:, mask].mean(dim=1).view(c, 1, 1)
            k = _u(gen, 0.2, 0.6) if _u(gen, 0, 1) < 0.5 else _u(gen, 1.6, 3.0)
            content = mu + (x - mu) * k
        elif how == 2 and not gray:
            content = x + torch.tensor([_u(gen, -1.2, 1.2) for _ in range(c)]).view(c, 1, 1)
        else:
            content = _blur(x, _u(gen, 2.0, 6.0))
        alpha = _feather(mask, gen)
    elif fill == "scratch":
        level = x.amin() - _u(gen, 0, 0.5) if _u(gen, 0, 1) < 0.7 else x.amax() + _u(gen, 0, 0.5)
        content = torch.full_like(x, float(level))
        alpha = mask.float() * _u(gen, 0.6, 1.0)
    elif fill == "missing":
        level = x.amin() if _u(gen, 0, 1) < 0.6 else x.amax()
        content = torch.full_like(x, float(level)) + 0.05 * torch.randn(1, h, w, generator=gen)
        alpha = _feather(mask, gen)
    else:
        raise ValueError(f"unknown fill {fill!r}; expected one of {FILLS}")
    out = x * (1 - alpha) + content * alpha
    # Exact mask: a masked pixel whose fill happened to equal the original is not an anomaly.
    changed = (out - x).abs().amax(dim=0) > 1e-3
    return out, mask & changed, fill


def batch(xb: torch.Tensor, pool: torch.Tensor, share: float,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Makes `share` of the images of a standardised batch (B, C, H, W) anomalous. Returns the
    inputs and (B, 1, H, W) float masks (all zero for the untouched images). `pool` is where
    patches come from (other good images)."""
    out, masks = xb.clone(), torch.zeros(xb.shape[0], 1, *xb.shape[2:])
    for i in range(xb.shape[0]):
        if _u(gen, 0, 1) < share:
            out[i], m, _ = anomaly(xb[i], pool, gen)
            masks[i, 0] = m.float()
    return out, masks


def contact_sheet(images: torch.Tensor, pool: torch.Tensor, mean, std, path: Path, seed: int = 0,
                  per_fill: int = 4) -> Path:
    """A PNG grid: for each fill, `per_fill` pairs of (anomalous image, its mask in red over it)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    rows = []
    for fill in FILLS:
        tiles = []
        for k in range(per_fill):
            x = images[(len(tiles) + k * 7 + FILLS.index(fill) * 3) % len(images)]
            a, mask, _ = anomaly(x, pool, gen, fill)
            rgb = ((a * s + m).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            over = rgb.copy()
            over[mask.numpy()] = (0.5 * over[mask.numpy()] + np.array([127, 0, 0])).astype(np.uint8)
            tiles += [rgb, over]
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


def main(argv=None) -> Path:
    import common

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--layout", choices=common.LAYOUTS, default="mvtec")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--color", choices=("rgb", "gray"), default="rgb")
    p.add_argument("--per-fill", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG file")
    args = p.parse_args(argv)
    samples, _ = common.discover(args.data, args.layout)
    pre = common.Preprocess(args.image_size, args.image_size, (0.0,) * 3, (1.0,) * 3, args.color)
    raw = torch.from_numpy(np.stack([pre(common.load_rgb(s.path)) for s in samples[:: max(1, len(samples) // 32)]]))
    mean = raw.mean(dim=(0, 2, 3))
    std = raw.std(dim=(0, 2, 3)).clamp_min(1e-6)
    x = (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    out = contact_sheet(x, x, mean.tolist(), std.tolist(), args.out, args.seed, args.per_fill)
    print(f"contact sheet of {len(FILLS)} fills x {args.per_fill} samples: {out}")
    return out


if __name__ == "__main__":
    main()
