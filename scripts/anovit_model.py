"""AnoViT (Lee & Kang 2022): a ViT encoder whose patch embeddings, class token dropped, are
reshaped in patch order into a D x H/16 x W/16 map that a convolutional decoder turns back into
the image. Anomaly score = reconstruction error (see common.score).

Module names follow timm's VisionTransformer (patch_embed.proj, cls_token, pos_embed,
blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm) so that a local timm checkpoint
loads with a plain state_dict load.

Run as a script to print parameters and GFLOP of each size:  python scripts/anovit_model.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    # Board size: ViT-Ti width, half depth, MLP 3x: ~1.6 GFLOP per 224x224 frame (limit 2) and
    # under 12 MB of f32 weights.
    "edge": dict(dim=192, depth=6, heads=3, mlp_ratio=3.0, decoder=(128, 64, 32)),
    # The paper's encoder (ViT-B/16) and decoder widths.
    "paper": dict(dim=768, depth=12, heads=12, mlp_ratio=4.0, decoder=(256, 128, 64)),
    # Test-only: small enough for a CPU end-to-end run in seconds.
    "tiny": dict(dim=32, depth=1, heads=2, mlp_ratio=2.0, decoder=(16, 8, 8)),
}
PATCH = 16
# The paper's baseline: a convolutional autoencoder with the same decoder and a bottleneck of the
# same shape (dim x H/16 x W/16), sized to AnoViT-edge's parameter count (2.9 M vs 3.0 M).
CAE_SIZES = {"cae": dict(dim=192, encoder=(64, 128, 256), refine=3, decoder=(128, 64, 32))}


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = PATCH):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), patches in raster order


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        # timm's qkv layout: (B, N, 3, heads, head_dim), so pretrained weights mean the same thing.
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        # Written out (no F.scaled_dot_product_attention) so the ONNX graph holds two plain
        # activation x activation MatMuls that quantize.py can find and exclude.
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        # tanh GELU: tract 0.23.9 has no NNEF serializer for the exact (erf) GELU.
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def up_stage(c_in: int, c_out: int) -> nn.Sequential:
    # BatchNorm instead of the paper's InstanceNorm: at inference BatchNorm is a fixed affine map
    # that folds into the ConvTranspose weights at export, while InstanceNorm computes statistics
    # per frame and stays in the graph, costing time on the board.
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


INPAINT_PHASES = (1, 2, 4, 9)


def phase_of_patches(grid: int, phases: int) -> torch.Tensor:
    """Phase index of each patch (row-major, grid x grid) for inpainting with `phases` passes.
    2: a checkerboard; s*s: patch (i, j) has phase (i % s) * s + j % s. Every masked patch keeps
    all its 4 direct neighbours visible, so each is inpainted from its surroundings."""
    if phases not in INPAINT_PHASES:
        raise ValueError(f"inpaint phases must be one of {INPAINT_PHASES}, got {phases}")
    i, j = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    if phases == 2:
        return ((i + j) % 2).flatten()
    s = math.isqrt(phases)
    return ((i % s) * s + j % s).flatten()


class AnoViT(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, decoder=(128, 64, 32),
                 image_size: int = 224, mask_ratio: float = 0.0, patch: int = PATCH, inpaint: int = 1):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        if len(decoder) != int(math.log2(patch)) - 1:
            raise ValueError(f"decoder needs {int(math.log2(patch)) - 1} stages for patch {patch}")
        self.dim, self.grid, self.mask_ratio, self.patch = dim, image_size // patch, mask_ratio, patch
        # Inpainting (inpaint > 1 phases): each patch is reconstructed by a pass in which its own
        # token is masked, so the model never sees what it reconstructs and cannot copy a defect.
        # Inference runs all phases as one batch and keeps, per pixel, its masked pass.
        self.inpaint = inpaint
        phase = phase_of_patches(self.grid, inpaint)
        self.register_buffer("token_phase", phase, persistent=False)
        pix = phase.view(self.grid, self.grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        self.register_buffer("pixel_select", (pix[None] == torch.arange(inpaint)[:, None, None]).float()[:, None, None],
                             persistent=False)  # (phases, 1, 1, H, W)
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        # Replaces masked patch tokens during training (mask_ratio > 0): the model must then
        # inpaint those patches from context instead of copying them, defects included.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        chans = (dim, *decoder)
        self.decoder = nn.Sequential(
            *(up_stage(a, b) for a, b in zip(chans[:-1], chans[1:])),
            # No output activation: the targets are per-channel standardised, a Tanh would clip them.
            nn.ConvTranspose2d(chans[-1], 3, kernel_size=4, stride=2, padding=1),
        )
        self._init_weights()

    def _init_weights(self):
        for p in (self.cls_token, self.pos_embed, self.mask_token):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)  # N(0, 0.02) as in the paper
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def pixel_mask(self, phase: torch.Tensor) -> torch.Tensor:
        """(B,) phases -> (B, 1, H, W) float mask of the pixels those passes inpaint."""
        return self.pixel_select[phase, 0]

    def forward(self, x, phase: torch.Tensor | None = None):
        """Reconstruction. `phase` (B,) masks the patches of that inpainting phase per image
        (training); in eval mode with inpaint > 1 all phases run and are merged per pixel."""
        if phase is None and self.inpaint > 1 and not self.training:
            b = x.shape[0]
            phases = torch.arange(self.inpaint, device=x.device).repeat_interleave(b)
            out = self._reconstruct(x.repeat(self.inpaint, 1, 1, 1), phases)
            out = out.view(self.inpaint, b, *out.shape[1:])
            return (out * self.pixel_select).sum(dim=0)
        return self._reconstruct(x, phase)

    def _reconstruct(self, x, phase: torch.Tensor | None):
        tokens = self.patch_embed(x)
        if phase is not None:
            masked = self.token_phase[None, :] == phase[:, None]
            tokens = torch.where(masked[..., None], self.mask_token.expand_as(tokens), tokens)
        elif self.training and self.mask_ratio > 0:
            b, n, _ = tokens.shape
            n_mask = int(round(self.mask_ratio * n))
            # Exactly n_mask random patches per image: ranks of a random permutation.
            masked = torch.rand(b, n, device=x.device).argsort(dim=1).argsort(dim=1) < n_mask
            tokens = torch.where(masked[..., None], self.mask_token.expand_as(tokens), tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, 1:]  # drop the class token; keep every patch, in patch order
        fmap = x.transpose(1, 2).reshape(x.shape[0], self.dim, self.grid, self.grid)
        return self.decoder(fmap)


def conv_stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    k, pad = (4, 1) if stride == 2 else (3, 1)
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class CAE(nn.Module):
    """Strided convolutions down to dim x H/16 x W/16, a few 3x3 refinements, AnoViT's decoder."""

    def __init__(self, dim: int, encoder=(64, 128, 256), refine: int = 3, decoder=(128, 64, 32),
                 image_size: int = 224):
        super().__init__()
        if image_size % PATCH:
            raise ValueError(f"image size {image_size} is not a multiple of {PATCH}")
        chans = (3, *encoder, dim)
        self.encoder = nn.Sequential(*(conv_stage(a, b, 2) for a, b in zip(chans[:-1], chans[1:])),
                                     *(conv_stage(dim, dim, 1) for _ in range(refine)))
        dchans = (dim, *decoder)
        self.decoder = nn.Sequential(
            *(up_stage(a, b) for a, b in zip(dchans[:-1], dchans[1:])),
            nn.ConvTranspose2d(dchans[-1], 3, kernel_size=4, stride=2, padding=1),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.decoder(self.encoder(x))


# The discriminative stage (DRAEM's segmentation network, sized for the board): a small U-Net.
# `stem`: stride of its first convolution (the map's resolution is 1/stem of the input's, its
# logits upsampled back); `chans`: encoder widths, one stride-2 level each after the stem;
# `outs`: decoder widths, finest level first.
DISC_SIZES = {
    # 1/4 resolution, 0.14 GFLOP: the board size.
    "edge": dict(stem=4, chans=(24, 32, 48, 64), outs=(16, 32, 48)),
    # 1/2 resolution, 0.28 GFLOP: finer maps for very small defects, about twice the cost.
    "fine": dict(stem=2, chans=(16, 32, 64, 64, 64), outs=(8, 16, 32, 32)),
    # Test-only.
    "tiny": dict(stem=2, chans=(4, 4, 4), outs=(4, 4)),
}


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    k, pad = (3, 1) if stride <= 2 else (stride, 0)
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def upsample(x: torch.Tensor, f: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by `f` as reshape and expand: plain ONNX shape ops that every
    runtime and tract's NNEF plans carry (no Resize operator)."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, f, w, f).reshape(b, c, f * h, f * w)


class Discriminator(nn.Module):
    """A small U-Net that reads the image, its reconstruction and their squared difference (7
    channels) and returns per-pixel anomaly logits (1 channel) at the input resolution: computed
    at 1/stem of it and upsampled (nearest) at the end."""

    def __init__(self, stem: int = 4, chans=(24, 32, 48, 64), outs=(16, 32, 48)):
        super().__init__()
        if len(outs) != len(chans) - 1:
            raise ValueError("a U-Net of n encoder levels has n - 1 decoder levels")
        self.stem = stem
        strides = [stem] + [2] * (len(chans) - 1)
        self.down = nn.ModuleList(conv_bn_relu(c_in, c_out, st)
                                  for c_in, c_out, st in zip([7, *chans[:-1]], chans, strides))
        below = [*outs[1:], chans[-1]]  # channels arriving from the level below
        self.up = nn.ModuleList(conv_bn_relu(below[i] + chans[i], outs[i]) for i in range(len(outs)))
        self.head = nn.Conv2d(outs[0], 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        err = ((x - recon) ** 2).mean(dim=1, keepdim=True)
        h = torch.cat([x, recon, err], dim=1)
        skips = []
        for d in self.down:
            h = d(h)
            skips.append(h)
        h = skips.pop()
        for u in reversed(self.up):
            h = u(torch.cat([upsample(h, 2), skips.pop()], dim=1))
        return upsample(self.head(h), self.stem)


class TwoStage(nn.Module):
    """AnoViT (the reconstructive stage) and the discriminative stage in one graph:
    image -> (reconstruction, anomaly logits)."""

    def __init__(self, recon: nn.Module, disc: Discriminator):
        super().__init__()
        self.recon, self.disc = recon, disc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.recon(x)
        return r, self.disc(x, r)


def build_disc(size: str) -> Discriminator:
    if size not in DISC_SIZES:
        raise ValueError(f"unknown discriminative size {size!r}; expected one of {sorted(DISC_SIZES)}")
    return Discriminator(**DISC_SIZES[size])


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.75) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels: defect pixels are a tiny share, so
    the well-classified background is down-weighted by (1 - p_t)^gamma; `alpha` weights the
    defect class."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * bce).mean()


SIZE_NAMES = sorted([*SIZES, *CAE_SIZES])


def build(size: str, image_size: int = 224, mask_ratio: float = 0.0, inpaint: int = 1) -> nn.Module:
    if size in CAE_SIZES:
        if mask_ratio or inpaint > 1:
            raise ValueError("token masking and inpainting need a ViT encoder; the CAE has no tokens")
        return CAE(**CAE_SIZES[size], image_size=image_size)
    return AnoViT(**SIZES[size], image_size=image_size, mask_ratio=mask_ratio, inpaint=inpaint)


def reconstruction_loss(model: nn.Module, inp: torch.Tensor, target: torch.Tensor,
                        gen: torch.Generator | None = None) -> torch.Tensor:
    """Training loss. Plain models: MSE over the image. Inpainting models: one random phase per
    image is masked and the MSE counts only the pixels of the masked patches, exactly the pixels
    inference takes from that pass."""
    if getattr(model, "inpaint", 1) <= 1:
        return F.mse_loss(model(inp), target)
    phase = torch.randint(0, model.inpaint, (inp.shape[0],), generator=gen).to(inp.device)
    m = model.pixel_mask(phase)
    d = (model(inp, phase) - target) ** 2 * m
    return d.sum() / (m.sum() * target.shape[1])


def arch_dict(size: str, inpaint: int = 1, disc_size: str | None = None) -> dict:
    """The manifest's informative `model.arch` object."""
    if size in CAE_SIZES:
        cfg = CAE_SIZES[size]
        arch = {"kind": "cae", "size": size, "dim": cfg["dim"], "encoder": list(cfg["encoder"]),
                "refine": cfg["refine"], "decoder": list(cfg["decoder"])}
    else:
        cfg = SIZES[size]
        arch = {"kind": "anovit", "size": size, "dim": cfg["dim"], "depth": cfg["depth"], "heads": cfg["heads"],
                "mlp_ratio": float(cfg["mlp_ratio"]), "patch": PATCH, "decoder": list(cfg["decoder"]),
                "inpaint_phases": inpaint}
    if disc_size is not None:
        arch["discriminative"] = {"kind": "unet", "size": disc_size, **DISC_SIZES[disc_size]}
    return arch


def count_params(model: nn.Module) -> int:
    """Parameters used at inference (the training-only mask token excluded)."""
    return sum(p.numel() for name, p in model.named_parameters() if name.split(".")[-1] != "mask_token")


@torch.no_grad()
def count_gflop(model: AnoViT, image_size: int) -> float:
    """GFLOP per frame: multiply-adds of linear, conv, transposed conv and the two attention
    matmuls, times 2. Norms, softmax, GELU and additions are not counted."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Linear):
            macs += out.numel() * m.in_features
        elif isinstance(m, nn.Conv2d):
            macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            macs += inp[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, Attention):
            b, n, d = inp[0].shape
            macs += 2 * b * n * n * d  # q k^T and attn v, over all heads

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, Attention))]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return 2 * macs / 1e9


def load_pretrained(model: AnoViT, path: str | Path) -> dict:
    """Loads a local timm-named ViT checkpoint into the encoder (strict=False) and reports what
    matched. pos_embed is interpolated (bicubic, as timm does) when the patch grid differs."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    own = model.state_dict()
    pe = sd.get("pos_embed")
    if pe is not None and pe.shape != own["pos_embed"].shape and pe.shape[-1] == own["pos_embed"].shape[-1]:
        old = int(math.isqrt(pe.shape[1] - 1))
        grid = pe[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(model.grid, model.grid), mode="bicubic", align_corners=False)
        sd["pos_embed"] = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, model.grid**2, -1)], dim=1)
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    report = {
        "matched": sorted(usable),
        "shape_mismatch": sorted(k for k in sd if k in own and k not in usable),
        "unused": sorted(k for k in sd if k not in own),
        "missing_encoder": sorted(k for k in own if k not in usable and not k.startswith("decoder")),
    }
    print(f"pretrained {path}: {len(report['matched'])} tensors loaded, "
          f"{len(report['shape_mismatch'])} shape mismatches, {len(report['unused'])} unused, "
          f"encoder tensors left at init: {report['missing_encoder']}")
    return report


if __name__ == "__main__":
    for name in ("edge", "paper"):
        m = build(name)
        print(f"{name}: {count_params(m) / 1e6:.2f} M params, {count_gflop(m, 224):.3f} GFLOP per 224x224 frame")
    for name in DISC_SIZES:
        d = build_disc(name)
        print(f"discriminative {name}: {count_params(d) / 1e6:.3f} M params, "
              f"{count_gflop(TwoStage(build('edge'), d), 224) - count_gflop(build('edge'), 224):.3f} GFLOP per frame")
