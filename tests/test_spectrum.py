from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from synapse7.demo import load_photos
from synapse7.spectrum import (
    InputEncoder,
    log_magnitude,
    log_magnitude_matmul,
    spectrum_features,
    standardize,
)
from synapse7.transforms import ClassificationPreset

# Measured: matmul vs torch.fft standardised spectra differ by <= 3.2e-3 at single near-zero-magnitude bins of
# 224 px photos (mean ~1e-6).
SPECTRUM_ATOL = 1e-2
SPECTRUM_MEAN = 1e-4


def test_sinusoid_peaks_at_its_frequency() -> None:
    n, k = 32, 5  # 5 cycles along x
    x = torch.arange(n).float()
    img = torch.cos(2 * math.pi * k * x / n).expand(n, n)[None, None]  # (1, 1, 32, 32)
    mag = log_magnitude(img)[0, 0]
    centre = n // 2
    top2 = torch.topk(mag.flatten(), 2).indices
    peaks = sorted((int(i) // n, int(i) % n) for i in top2)
    assert peaks == [(centre, centre - k), (centre, centre + k)]


def test_dc_is_centred_after_shift() -> None:
    img = torch.ones(1, 3, 16, 16)
    mag = log_magnitude(img)
    assert torch.argmax(mag[0, 0]).item() == 8 * 16 + 8


def test_standardize_zero_mean_unit_std() -> None:
    x = torch.randn(4, 3, 20, 20) * 7 + 3
    s = standardize(x)
    assert torch.allclose(s.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-5)
    assert torch.allclose(s.std(dim=(-2, -1)), torch.ones(4, 3), atol=1e-3)


def test_batched_equals_per_sample() -> None:
    x = torch.randn(5, 3, 24, 24)
    batched = spectrum_features(x)
    single = torch.cat([spectrum_features(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize(("mode", "channels"), [("fft", 3), ("rgb", 3), ("rgb+fft", 6)])
def test_encoder_modes(mode: str, channels: int) -> None:
    enc = InputEncoder(mode)
    x = torch.randn(2, 3, 32, 32)
    out = enc(x)
    assert out.shape == (2, channels, 32, 32) and enc.out_channels == channels
    assert torch.isfinite(out).all()
    if mode == "rgb":
        assert torch.equal(out, x)


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="rgb\\+fft"):
        InputEncoder("wavelet")


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 31, 20), (1, 1, 7, 5), (3, 64, 48)])
def test_matmul_dft_equals_fft(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_magnitude_matmul(x), log_magnitude(x), rtol=0, atol=1e-4)


def fft2_reference(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The textbook definition: full complex fft2, fftshift, log magnitude."""
    f = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
    return torch.log(f.abs() + eps)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 31, 20), (2, 1, 7, 6), (1, 1, 1, 1), (1, 2, 2, 3)])
def test_rfft_log_magnitude_equals_full_fft(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_magnitude(x), fft2_reference(x), rtol=0, atol=2e-4)


def test_standardize_matches_definition() -> None:
    x = torch.randn(2, 3, 20, 30, generator=torch.Generator().manual_seed(0)) * 3 + 2
    ref = (x - x.mean(dim=(-2, -1), keepdim=True)) / (x.std(dim=(-2, -1), keepdim=True) + 1e-6)
    torch.testing.assert_close(standardize(x), ref, rtol=0, atol=1e-5)


def test_matmul_spectrum_on_photos() -> None:
    preset = ClassificationPreset(crop_size=224, resize_size=256)
    x = torch.stack([preset(Image.fromarray(p)) for p in load_photos()[:4]])
    d = (spectrum_features(x, dft="matmul") - spectrum_features(x)).abs()
    assert float(d.max()) <= SPECTRUM_ATOL and float(d.mean()) <= SPECTRUM_MEAN
