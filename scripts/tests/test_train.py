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
