"""Global FFT spectra: pure, batched tensor functions that run on whatever device the input is on."""

from __future__ import annotations

import torch
from torch import nn

INPUT_MODES = ("fft", "rgb", "rgb+fft")


def log_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log|FFT2(x)| per channel with the zero frequency shifted to the centre.

    x: (..., H, W) real. Returns float32 (..., H, W). Computed in float32 even under autocast, since
    half-precision FFTs lose the small high-frequency magnitudes this detector relies on.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        f = torch.fft.fft2(x.float(), norm="ortho")  # (..., H, W) complex64
        f = torch.fft.fftshift(f, dim=(-2, -1))
        return torch.log(f.abs() + eps)


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance per sample and channel over the spatial dims. x: (B, C, H, W)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + eps)


def spectrum_features(x: torch.Tensor) -> torch.Tensor:
    """Standardised global log-magnitude spectrum. x: (B, 3, H, W) -> (B, 3, H, W)."""
    return standardize(log_magnitude(x))


class InputEncoder(nn.Module):
    """Turns the normalised RGB batch into the backbone's input for an input mode.

    fft: (B, 3, H, W) spectrum; rgb: the image unchanged; rgb+fft: (B, 6, H, W), image then spectrum.
    """

    def __init__(self, mode: str = "fft") -> None:
        super().__init__()
        if mode not in INPUT_MODES:
            raise ValueError(f"unknown input mode {mode!r}; choose from {', '.join(INPUT_MODES)}")
        self.mode = mode

    @property
    def out_channels(self) -> int:
        return 6 if self.mode == "rgb+fft" else 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "rgb":
            return x
        spec = spectrum_features(x).to(x.dtype)
        if self.mode == "fft":
            return spec
        return torch.cat([x, spec], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
