"""Global FFT spectra: pure, batched tensor functions that run on whatever device the input is on."""

from __future__ import annotations

import functools
import math

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


@functools.lru_cache(maxsize=8)
def dft_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin parts (n, n) of the ortho-normalised 1-D DFT with fftshift folded into the rows (float64).

    Row i holds frequency (i - n // 2) mod n, which is where fftshift puts it.
    """
    k = torch.arange(n, dtype=torch.float64)
    freq = (k - n // 2) % n
    angle = 2 * math.pi * torch.outer(freq, k) / n
    return torch.cos(angle) / math.sqrt(n), torch.sin(angle) / math.sqrt(n)


def log_magnitude_matmul(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`log_magnitude` with the 2-D DFT as real matrix products, for exporters without a usable FFT.

    ONNX has a DFT op, but ONNX Runtime's CPU kernel was 5x slower than this and less accurate at 224 px
    (docs/performance.md). With A = C - iS: A_H x A_W^T = (C x C^T - S x S^T) - i (C x S^T + S x C^T).
    Agrees with torch.fft to ~1e-3 after standardisation (tests/test_export.py).
    """
    h, w = x.shape[-2:]
    ch, sh = dft_matrices(h)
    cw, sw = dft_matrices(w)
    with torch.autocast(device_type=x.device.type, enabled=False):
        left = torch.cat([ch, sh]).to(x.device, torch.float32)  # (2H, H)
        right = torch.cat([cw.T, sw.T], dim=1).to(x.device, torch.float32)  # (W, 2W)
        u = left @ (x.float() @ right)  # (..., 2H, 2W): [[CxC', CxS'], [SxC', SxS']]
        re = u[..., :h, :w] - u[..., h:, w:]
        im = u[..., :h, w:] + u[..., h:, :w]
        return torch.log(torch.sqrt(re * re + im * im) + eps)


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance per sample and channel over the spatial dims. x: (B, C, H, W)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + eps)


def spectrum_features(x: torch.Tensor, *, dft: str = "fft") -> torch.Tensor:
    """Standardised global log-magnitude spectrum. x: (B, 3, H, W) -> (B, 3, H, W).

    dft="fft" uses torch.fft; dft="matmul" uses `log_magnitude_matmul` (set for ONNX export only).
    """
    return standardize(log_magnitude_matmul(x) if dft == "matmul" else log_magnitude(x))


class InputEncoder(nn.Module):
    """Turns the normalised RGB batch into the backbone's input for an input mode.

    fft: (B, 3, H, W) spectrum; rgb: the image unchanged; rgb+fft: (B, 6, H, W), image then spectrum.
    """

    def __init__(self, mode: str = "fft") -> None:
        super().__init__()
        if mode not in INPUT_MODES:
            raise ValueError(f"unknown input mode {mode!r}; choose from {', '.join(INPUT_MODES)}")
        self.mode = mode
        self.dft = "fft"  # "matmul" only while exporting to ONNX (synapse7.export)

    @property
    def out_channels(self) -> int:
        return 6 if self.mode == "rgb+fft" else 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "rgb":
            return x
        spec = spectrum_features(x, dft=self.dft).to(x.dtype)
        if self.mode == "fft":
            return spec
        return torch.cat([x, spec], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
