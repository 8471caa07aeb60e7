from __future__ import annotations

import math

import pytest
import torch

from synapse7.spectrum import InputEncoder, log_magnitude, spectrum_features, standardize


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
    single = torch.cat([spectrum_features(x[i:i + 1]) for i in range(5)])
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
