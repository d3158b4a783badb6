"""AnoViT shapes, sizes and the pretrained-checkpoint path."""

import pytest
import torch

import anovit_model


def test_edge_fits_the_board_budget():
    m = anovit_model.build("edge").eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 224, 224)).shape == (1, 3, 224, 224)
    assert anovit_model.count_gflop(m, 224) <= 2.0
    # f32 weights under 12 MB, the budget of a bundled model.
    assert 2.5e6 < anovit_model.count_params(m) < 3.0e6


def test_paper_size_is_vit_base():
    m = anovit_model.build("paper")
    assert 85e6 < anovit_model.count_params(m) < 95e6  # ViT-B/16 (86 M) + decoder
    assert m.blocks[0].attn.qkv.weight.shape == (3 * 768, 768)


def test_gflop_counts_matmuls_by_hand():
    # tiny at 64 px: 16 tokens (+1 class token); hand count of every multiply-add.
    m = anovit_model.build("tiny", image_size=64)
    d, n, h = 32, 17, 64
    enc = 16 * 3 * 256 * d + n * (d * 3 * d + d * d + 2 * d * h + 2 * n * d)
    dec = 16 * d * 16 * 16 + 64 * 16 * 8 * 16 + 256 * 8 * 8 * 16 + 1024 * 8 * 3 * 16
    assert anovit_model.count_gflop(m, 64) == pytest.approx(2 * (enc + dec) / 1e9)


def test_mask_ratio_masks_only_in_training():
    torch.manual_seed(0)
    m = anovit_model.build("tiny", image_size=64, mask_ratio=0.5)
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
        m.train()
        c = m(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_timm_named_checkpoint_loads_and_pos_embed_is_interpolated(tmp_path):
    src = anovit_model.build("tiny", image_size=128)  # 8x8 grid
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    sd["head.weight"] = torch.zeros(10, 32)  # a classifier head the encoder does not use
    path = tmp_path / "vit.pth"
    torch.save({"model": sd}, path)
    dst = anovit_model.build("tiny", image_size=64)  # 4x4 grid
    report = anovit_model.load_pretrained(dst, path)
    assert "pos_embed" in report["matched"] and "blocks.0.attn.qkv.weight" in report["matched"]
    assert report["unused"] == ["head.weight"] and report["missing_encoder"] == ["mask_token"]
    assert torch.equal(dst.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    assert torch.equal(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # class-token position kept
