"""Training-time pieces that do not need a full run."""

import torch

import train


def test_corrupt_pastes_about_the_requested_area_and_leaves_the_batch_alone():
    x = torch.randn(4, 3, 64, 64)
    before = x.clone()
    y = train.corrupt(x, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
    changed = (y != x).any(dim=1).float().mean().item()
    assert 0.15 < changed <= 0.3  # squares may overlap
    assert torch.equal(train.corrupt(x, 0.3, torch.Generator().manual_seed(0)), y)


def test_synthetic_defects_cover_regions_or_darken_spots_and_are_seeded():
    x = torch.randn(24, 1, 64, 64).repeat(1, 3, 1, 1)  # gray, as Magnetic Tile
    before = x.clone()
    y = train.synth_defects(x, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
    assert torch.equal(train.synth_defects(x, 0.2, torch.Generator().manual_seed(0)), y)
    d = y - x
    assert torch.equal(d[:, 0], d[:, 1]) and torch.equal(d[:, 1], d[:, 2])  # gray stays gray
    changed = (d.abs() > 1e-6).any(dim=1).float().mean(dim=(1, 2))
    darkened = (d <= 1e-6).all(dim=(1, 2, 3))
    regions, spots = ~darkened | (changed > 0.1), darkened & (changed <= 0.1)
    # Regions: the requested share plus a soft edge; spots and scratches only ever darken, a little.
    assert ((changed[regions] > 0.12) & (changed[regions] < 0.45)).all(), changed
    assert (changed[spots] > 0).all()
    assert regions.any() and spots.any()
