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


@pytest.mark.parametrize("phases", [2, 4])
def test_inpainting_never_sees_the_patch_it_reconstructs(phases):
    # The whole point of inpainting: a defect inside a patch cannot be copied, because the pass
    # that reconstructs that patch's pixels has the patch masked. Changing one patch's pixels
    # must leave exactly those output pixels unchanged (and change others: context is used).
    torch.manual_seed(0)
    m = anovit_model.build("tiny", image_size=64, inpaint=phases).eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[:, :, 16:32, 32:48] += 5.0  # patch (1, 2)
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[:, :, 16:32, 32:48], b[:, :, 16:32, 32:48])
    assert not torch.allclose(a, b)
    # Each pixel comes from exactly one pass.
    assert torch.equal(m.pixel_select.sum(dim=0), torch.ones(1, 1, 64, 64))


def test_phases_keep_direct_neighbours_visible():
    for phases in (2, 4, 9):
        p = anovit_model.phase_of_patches(6, phases).view(6, 6)
        assert sorted(p.unique().tolist()) == list(range(phases))
        assert (p[1:] != p[:-1]).all() and (p[:, 1:] != p[:, :-1]).all()
    with pytest.raises(ValueError, match="inpaint phases"):
        anovit_model.phase_of_patches(6, 3)


def test_inpainting_loss_counts_only_masked_pixels():
    torch.manual_seed(0)
    m = anovit_model.build("tiny", image_size=64, inpaint=4).train()
    x = torch.randn(2, 3, 64, 64)
    gen = torch.Generator().manual_seed(1)
    loss = anovit_model.reconstruction_loss(m, x, x, gen)
    phase = torch.randint(0, 4, (2,), generator=torch.Generator().manual_seed(1))
    mask = m.pixel_mask(phase)
    assert mask.sum() == 2 * 64 * 64 / 4
    expected = (((m(x, phase) - x) ** 2) * mask).sum() / (mask.sum() * 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="CAE"):
        anovit_model.build("cae", inpaint=4)
