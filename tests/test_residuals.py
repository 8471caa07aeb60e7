"""Residual encoders against hand-computed values."""

import torch

from synapse7.residuals import RESIDUALS, haar_hh, npr_residual, srm_residual


def test_npr_residual_hand_computed_4x4():
    x = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])[None, None]
    # Each 2x2 block minus its top-left pixel.
    expected = torch.tensor([[0.0, 1, 0, 1], [4, 5, 4, 5], [0, 1, 0, 1], [4, 5, 4, 5]])[None, None]
    assert torch.equal(npr_residual(x), expected)


def test_npr_residual_odd_size_and_zero_on_nearest_upsampled_images():
    small = torch.rand(2, 3, 4, 5)
    up = small.repeat_interleave(2, -2).repeat_interleave(2, -1)  # what a nearest 2x decoder makes
    assert torch.allclose(npr_residual(up), torch.zeros_like(up))
    odd = torch.rand(1, 3, 7, 9)
    r = npr_residual(odd)
    assert r.shape == odd.shape
    assert r[0, 0, 6, 8] == odd[0, 0, 6, 8] - odd[0, 0, 6, 8]  # last block is its own anchor
    assert torch.isclose(r[0, 1, 6, 7], odd[0, 1, 6, 7] - odd[0, 1, 6, 6])


def test_haar_hh_hand_computed():
    x = torch.tensor([[1.0, 2, 4], [3, 8, 5], [0, 0, 0]])[None, None]
    hh = haar_hh(x)
    assert hh.shape == x.shape
    assert torch.isclose(hh[0, 0, 0, 0], torch.tensor((1 - 2 - 3 + 8) / 2))
    assert torch.isclose(hh[0, 0, 0, 1], torch.tensor((2 - 4 - 8 + 5) / 2))
    # Smooth (linear) images have no diagonal detail.
    ramp = (torch.arange(8.0)[:, None] + 2 * torch.arange(8.0)[None, :])[None, None].repeat(1, 3, 1, 1)
    assert torch.allclose(haar_hh(ramp), torch.zeros_like(ramp), atol=1e-6)


def test_srm_residual_hand_computed_and_blind_to_constants():
    x = torch.zeros(1, 3, 9, 9)
    x[..., 4, 4] = 1.0  # an impulse returns each (flipped = same, symmetric) kernel around it
    r = srm_residual(x)
    assert r.shape == (1, 3, 9, 9)
    assert torch.isclose(r[0, 0, 4, 4], torch.tensor(-4 / 4))
    assert torch.isclose(r[0, 1, 4, 4], torch.tensor(-12 / 12))
    assert torch.isclose(r[0, 2, 4, 4], torch.tensor(-2 / 2))
    assert torch.isclose(r[0, 2, 4, 3], torch.tensor(1 / 2))
    assert torch.isclose(r[0, 2, 3, 4], torch.tensor(0.0))  # the third filter is horizontal only
    assert torch.allclose(srm_residual(torch.full((1, 3, 6, 6), 0.7)), torch.zeros(1, 3, 6, 6), atol=1e-6)


def test_every_residual_keeps_batch_and_spatial_shape():
    x = torch.rand(2, 3, 11, 6)
    for name, fn in RESIDUALS.items():
        out = fn(x)
        assert out.shape[0] == 2 and out.shape[-2:] == (11, 6), name
        assert torch.isfinite(out).all(), name
