"""Data set discovery: MVTec layout (generated here) and the Magnetic Tile protocol (real data)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import common

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_mvtec_layout_with_masks(tmp_path):
    for rel in ("train/good/000.png", "train/good/001.png", "test/good/000.png", "test/crack/000.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / rel)  # gray on disk
    (tmp_path / "ground_truth/crack").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "ground_truth/crack/000_mask.png")
    train, test = common.discover(tmp_path, "mvtec")
    assert len(train) == 2 and [s.kind for s in test] == ["crack", "good"]
    assert test[0].mask is not None and test[1].mask is None
    assert common.load_rgb(train[0].path).shape == (8, 8, 3)
    assert common.load_mask(test[0].mask, (8, 8)).all()


def test_split_is_seeded_and_disjoint(tmp_path):
    samples = [common.Sample(tmp_path / f"{i:03}.png", "good") for i in range(50)]
    tr, va = common.split_train_val(samples, 5, seed=3)
    assert len(va) == 5 and len(tr) == 45 and not set(tr) & set(va)
    assert common.split_train_val(samples, 5, seed=3) == (tr, va)
    assert common.split_train_val(samples, 5, seed=4)[1] != va


def test_magnetic_tile_protocol_split():
    root = SHARED_DATA / "magnetic_tile"
    if not root.is_dir():
        pytest.skip(f"REAL DATA ABSENT: {root} not found; the Magnetic Tile split is NOT tested")
    train, test = common.discover(root, "magnetic-tile")
    counts = {}
    for s in test:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    assert len(train) == 714
    assert counts == {"good": 238, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert all(s.mask is not None for s in test)
    free = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"), key=lambda p: p.name)
    assert test[0].path == free[0] and train[0].path == free[1]
    assert common.load_rgb(train[0].path).shape[2] == 3
