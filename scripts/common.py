"""Shared pieces of the training side: data sets, preprocessing, scoring, manifests.

Preprocessing and scoring here are the Python half of the contract in docs/BUNDLE.md; the Rust
runtime implements the same arithmetic and a golden test compares the two, so every step below is
written out in float32 numpy rather than delegated to a library whose details could differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
LAYOUTS = ("mvtec", "magnetic-tile")


# ---------------------------------------------------------------------------------------------
# Data sets


@dataclass(frozen=True)
class Sample:
    """One image of a data set; `kind` is "good" or the defect type, `mask` may be absent."""

    path: Path
    kind: str
    mask: Path | None = None

    @property
    def is_defect(self) -> bool:
        return self.kind != "good"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []


def discover(root: str | Path, layout: str = "mvtec") -> tuple[list[Sample], list[Sample]]:
    """Returns (train, test) samples of a data set; train holds good images only."""
    root = Path(root)
    if layout == "mvtec":
        train = [Sample(p, "good") for p in _images(root / "train" / "good")]
        test = []
        for kind_dir in sorted(d for d in (root / "test").iterdir() if d.is_dir()):
            kind = kind_dir.name
            for p in _images(kind_dir):
                mask = root / "ground_truth" / kind / f"{p.stem}_mask.png"
                test.append(Sample(p, kind, mask if mask.is_file() else None))
    elif layout == "magnetic-tile":
        # The project's fixed protocol (shared/data/README.md): MT_Free sorted by file name,
        # every 4th image (i % 4 == 0) is test; all defect images are test. Masks are
        # <stem>.png beside <stem>.jpg.
        def samples(cls_dir: Path, kind: str) -> list[Sample]:
            imgs = sorted((cls_dir / "Imgs").glob("*.jpg"), key=lambda p: p.name)
            return [Sample(p, kind, p.with_suffix(".png") if p.with_suffix(".png").is_file() else None) for p in imgs]

        free = samples(root / "MT_Free", "good")
        train = [s for i, s in enumerate(free) if i % 4 != 0]
        test = [s for i, s in enumerate(free) if i % 4 == 0]
        for cls_dir in sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("MT_") and d.name != "MT_Free"):
            test += samples(cls_dir, cls_dir.name[3:].lower())
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not train:
        raise FileNotFoundError(f"no training images found in {root} (layout {layout})")
    return train, test


def val_count(n_samples: int, fraction: float) -> int:
    """Images held out for validation: the fraction, rounded, at least one."""
    return max(1, int(round(fraction * n_samples)))


def split_train_val(samples: list[Sample], n_val: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of the good training images into train and validation (held out).

    A pure function of (sorted samples, n_val, seed), so export.py and quantize.py re-derive the
    exact validation split from the manifest's `training` section (seed, n_val) and the data
    fingerprint guarantees the samples are the same.
    """
    order = np.random.default_rng(seed).permutation(len(samples))
    val = sorted((samples[i] for i in order[:n_val]), key=lambda s: s.path)
    train = sorted((samples[i] for i in order[n_val:]), key=lambda s: s.path)
    return train, val


def held_out_split(root: str | Path, layout: str, training: dict) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train, val, test) of the data set a model was trained on, checked by its fingerprint."""
    samples, test = discover(root, layout)
    if data_fingerprint(root, samples) != training["data_fingerprint"]:
        raise ValueError(f"{root}: training images differ from the ones the model was trained on "
                         "(data fingerprint mismatch)")
    train, val = split_train_val(samples, training["n_val"], training["seed"])
    return train, val, test


def load_rgb(path: str | Path) -> np.ndarray:
    """Decodes an image to RGB8 (H, W, 3); grayscale sources are replicated to 3 channels."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Binary defect mask (> 127, since mask edges are anti-aliased); all-false when absent."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


# ---------------------------------------------------------------------------------------------
# Preprocessing (docs/BUNDLE.md, "Preprocessing")


@dataclass(frozen=True)
class Preprocess:
    """The input section of a manifest: everything needed to turn RGB8 into the model input."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str = "rgb"
    roi: tuple[int, int, int, int] | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB8 (H, W, 3) -> normalised float32 (3, height, width)."""
        img = rgb.astype(np.float32)
        if self.color == "gray":
            lum = (np.float32(0.299) * img[..., 0] + np.float32(0.587) * img[..., 1]
                   + np.float32(0.114) * img[..., 2])
            img = np.repeat(lum[..., None], 3, axis=2)
        if self.roi is not None:
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > img.shape[1] or y + h > img.shape[0]:
                raise ValueError(f"roi {self.roi} outside image of {img.shape[1]}x{img.shape[0]}")
            img = img[y:y + h, x:x + w]
        img = resize_bilinear(img, self.height, self.width)
        chw = img.transpose(2, 0, 1) / np.float32(255.0)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)

    def unscaled(self) -> "Preprocess":
        """Same geometry with identity normalisation: values in [0, 1] (for mean/std estimation)."""
        return Preprocess(self.height, self.width, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), self.color, self.roi)

    def to_manifest(self) -> dict:
        return {
            "name": "image",
            "shape": [1, 3, self.height, self.width],
            "layout": "NCHW",
            "color": self.color,
            "roi": list(self.roi) if self.roi is not None else None,
            "resize": "bilinear",
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
        }

    @classmethod
    def from_manifest(cls, inp: dict) -> "Preprocess":
        _, _, h, w = inp["shape"]
        roi = tuple(inp["roi"]) if inp.get("roi") is not None else None
        return cls(h, w, tuple(inp["mean"]), tuple(inp["std"]), inp.get("color", "rgb"), roi)


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight for each output index: half-pixel centres, clamped, in f32."""
    d = np.arange(n_out, dtype=np.float32)
    # Same operation order as the Rust side: ((d + 0.5) * in) / out - 0.5, all in f32.
    s = (d + np.float32(0.5)) * np.float32(n_in) / np.float32(n_out) - np.float32(0.5)
    s = np.clip(s, np.float32(0.0), np.float32(n_in - 1))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (s - i0.astype(np.float32)).astype(np.float32)


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of float32 (H, W, C), no antialiasing; horizontal pass, then vertical.

    Each pass computes a + (b - a) * t in f32.
    """
    x0, x1, tx = _taps(img.shape[1], out_w)
    a, b = img[:, x0], img[:, x1]
    rows = a + (b - a) * tx[None, :, None]
    y0, y1, ty = _taps(img.shape[0], out_h)
    a, b = rows[y0], rows[y1]
    return (a + (b - a) * ty[:, None, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Scoring (docs/BUNDLE.md, "Scoring")


def gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights over [-r, r], r = floor(truncate * sigma + 0.5)."""
    r = int(np.floor(truncate * sigma + 0.5))
    i = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (i / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def smooth(err: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """Separable Gaussian with reflect border (d c b a | a b c d), along rows then columns."""
    if sigma <= 0:
        return err.astype(np.float32)
    w = gaussian_kernel(sigma, truncate)
    r = len(w) // 2
    out = err.astype(np.float32)
    for axis in (1, 0):  # rows first: filter along x, then along y
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")  # numpy "symmetric" == scipy "reflect"
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k in range(len(w)):
            acc += w[k] * (p[:, k:k + n] if axis == 1 else p[k:k + n, :])
        out = acc
    return out


def error_map(inp: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-pixel squared error averaged over channels, in normalised space: (3,H,W) -> (H,W)."""
    d = inp.astype(np.float32) - recon.astype(np.float32)
    return np.mean(d * d, axis=0, dtype=np.float32)


def score(inp: np.ndarray, recon: np.ndarray, sigma: float, truncate: float) -> float:
    """Image score: max of the smoothed error map."""
    return float(smooth(error_map(inp, recon), sigma, truncate).max())


SCORING_KINDS = ("reconstruction_error", "learned_map")


def scoring_kind(scoring: dict) -> str:
    """The manifest's `scoring.kind`; bundles from before the learned map have none."""
    kind = scoring.get("kind", "reconstruction_error")
    if kind not in SCORING_KINDS:
        raise ValueError(f"unknown scoring kind {kind!r}; expected one of {SCORING_KINDS}")
    return kind


def learned_map(logits: np.ndarray) -> np.ndarray:
    """The learned anomaly map from the discriminative stage's logits (1, H, W) or (H, W):
    the per-pixel probability 1 / (1 + exp(-l)), in f32 as the runtime computes it."""
    lg = np.asarray(logits, np.float32).reshape(logits.shape[-2:])
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-lg))).astype(np.float32)


def threshold_good_quantile(good_scores, target_false_reject: float, margin: float) -> dict:
    """The `threshold` section from held-out good scores: q(1 - target) + margin * std."""
    s = np.asarray(good_scores, dtype=np.float64)
    std = float(s.std(ddof=1)) if len(s) > 1 else 0.0
    value = float(np.quantile(s, 1.0 - target_false_reject)) + margin * std
    return {
        "value": value,
        "source": "good-quantile",
        "stats": {
            "n_good": int(len(s)),
            "mean": float(s.mean()),
            "std": std,
            "quantiles": {q: float(np.quantile(s, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
            "target_false_reject": target_false_reject,
            "margin": margin,
        },
    }


def auroc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)))


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(np.linalg.norm(a.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


# ---------------------------------------------------------------------------------------------
# Files, fingerprints and manifests


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_fingerprint(root: str | Path, samples: list[Sample]) -> str:
    """sha256 over "<relative path>  <file sha256>\\n" lines (sha256sum format) sorted by path."""
    root = Path(root)
    lines = sorted(f"{s.path.relative_to(root).as_posix()}  {sha256_file(s.path)}\n" for s in samples)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def write_manifest(bundle: str | Path, manifest: dict) -> Path:
    path = Path(bundle) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(bundle: str | Path) -> dict:
    m = json.loads((Path(bundle) / "manifest.json").read_text())
    if m.get("format") != "anovit-bundle" or m.get("format_version") != 1:
        raise ValueError(f"{bundle}: not an anovit-bundle format_version 1")
    return m


def load_reference(bundle: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The scoring reference (`anovit calibrate --reference`, docs/BUNDLE.md): per-pixel mean and
    1 / (std + floor), as the Rust scorer applies them; None when the bundle has none."""
    ref = manifest["scoring"].get("reference")
    if ref is None:
        return None
    path = bundle / ref["file"]
    if sha256_file(path) != ref["sha256"]:
        raise ValueError(f"{path}: sha256 does not match the manifest")
    _, _, h, w = manifest["input"]["shape"]
    planes = np.fromfile(path, dtype="<f4").reshape(2, h, w)
    return planes[0], (np.float32(1.0) / (planes[1] + np.float32(ref["floor"]))).astype(np.float32)


class OrtModel:
    """An onnxruntime session over a bundle's model, fed one preprocessed image at a time."""

    def __init__(self, bundle: str | Path, threads: int = 2):
        import onnxruntime as ort

        self.bundle = Path(bundle)
        self.manifest = read_manifest(bundle)
        model_path = self.bundle / self.manifest["model"]["file"]
        if sha256_file(model_path) != self.manifest["model"]["sha256"]:
            raise ValueError(f"{model_path}: sha256 does not match the manifest")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.pre = Preprocess.from_manifest(self.manifest["input"])
        self.input_name = self.manifest["input"]["name"]
        self.output_name = self.manifest["outputs"]["reconstruction"]
        self.kind = scoring_kind(self.manifest["scoring"])
        self.map_name = self.manifest["outputs"].get("anomaly_map")
        if self.kind == "learned_map" and not self.map_name:
            raise ValueError(f"{bundle}: scoring kind learned_map needs outputs.anomaly_map")
        self.reference = load_reference(self.bundle, self.manifest)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """(3, H, W) normalised -> (3, H, W) reconstruction."""
        return self.session.run([self.output_name], {self.input_name: x[None]})[0][0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(3, H, W) normalised -> (1, H, W) anomaly logits of the discriminative stage."""
        return self.session.run([self.map_name], {self.input_name: x[None]})[0][0]

    def raw_map(self, x: np.ndarray) -> np.ndarray:
        """The anomaly map before smoothing (H, W), as the manifest's scoring kind defines it."""
        if self.kind == "learned_map":
            return learned_map(self.logits(x))
        return error_map(x, self.reconstruct(x))

    def score_map(self, raw: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """Smoothed (and, with the manifest's sigma, reference-standardised) map of a raw map."""
        sc = self.manifest["scoring"]
        m = smooth(raw, sc["sigma"] if sigma is None else sigma, sc["truncate"])
        if sigma is None and self.reference is not None:
            mean, inv = self.reference
            m = (m - mean) * inv
        return m

    def score(self, x: np.ndarray, sigma: float | None = None) -> float:
        """The runtime's image score (the bundle's scoring reference included, where it has one
        and the manifest's sigma is used)."""
        return float(self.score_map(self.raw_map(x), sigma).max())
