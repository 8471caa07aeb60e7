"""Global FFT spectra: pure, batched tensor functions that run on whatever device the input is on."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from synapse7.config import ModelConfig
from synapse7.residuals import RESIDUALS


def log_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log|FFT2(x)| per channel with the zero frequency shifted to the centre.

    x: (..., H, W) real. Returns float32 (..., H, W). Computed in float32 even under autocast, since
    half-precision FFTs lose the small high-frequency magnitudes this detector relies on.
    A real input's spectrum is Hermitian (|F[k1, k2]| = |F[-k1, -k2]|), so only the rfft2 half is computed
    and logged, and one gather mirrors it and applies fftshift: ~5x faster than fft2 + fftshift on CPU,
    equal to it within float32 rounding (tests/test_spectrum.py).
    """
    h, w = x.shape[-2:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        half = torch.log(torch.fft.rfft2(x.float(), norm="ortho").abs() + eps)  # (..., H, W//2+1)
        return _mirror_shift(half, h, w)


# The cached constants are numpy arrays, not tensors: a tensor made while torch.export traces would be a fake
# tensor, and caching it would break every later eager call.
@functools.lru_cache(maxsize=16)
def _mirror_shift_index(h: int, w: int) -> np.ndarray:
    """For each fftshifted position of the full (H, W) spectrum, its flat index in the rfft2 half (H, W//2+1)."""
    i = np.arange(h)[:, None]
    j = np.arange(w)[None, :]
    k1, k2 = (i - h // 2) % h, (j - w // 2) % w  # unshifted frequencies at shifted position (i, j)
    mirror = k2 > w // 2  # not stored in the half: use the conjugate-symmetric bin (-k1, -k2)
    row = np.where(mirror, (-k1) % h, k1)
    col = np.where(mirror, w - k2, k2)
    return (row * (w // 2 + 1) + col).reshape(-1)


def _mirror_shift(half: torch.Tensor, h: int, w: int) -> torch.Tensor:
    idx = torch.from_numpy(_mirror_shift_index(h, w)).to(half.device)
    return half.flatten(-2)[..., idx].unflatten(-1, (h, w))


@functools.lru_cache(maxsize=8)
def _dft_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(n, dtype=np.float64)
    angle = 2 * math.pi * np.outer(k, k) / n
    return np.cos(angle) / math.sqrt(n), np.sin(angle) / math.sqrt(n)


def dft_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin parts (n, n) of the ortho-normalised 1-D DFT, float64: [k, m] = cos|sin(2 pi k m / n) / sqrt(n)."""
    c, s = _dft_arrays(n)
    return torch.from_numpy(c), torch.from_numpy(s)


def log_magnitude_matmul(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`log_magnitude` with the 2-D DFT as real matrix products, for exporters without a usable FFT.

    ONNX has a DFT op, but ONNX Runtime's CPU kernel was 8x slower than this and 0.055 off at 224 px
    (bench/spectrum.py, docs/performance.md). With A = C - iS: A_H x A_W^T = (C x C^T - S x S^T) - i (C x S^T + S x C^T); only the
    W//2+1 columns of the rfft half are computed, then mirrored like `log_magnitude`.
    Agrees with torch.fft to ~1e-3 after standardisation (tests/test_spectrum.py).
    """
    h, w = x.shape[-2:]
    wh = w // 2 + 1
    ch, sh = dft_matrices(h)
    cw, sw = dft_matrices(w)
    with torch.autocast(device_type=x.device.type, enabled=False):
        left = torch.cat([ch, sh]).to(x.device, torch.float32)  # (2H, H)
        right = torch.cat([cw[:wh].T, sw[:wh].T], dim=1).to(x.device, torch.float32)  # (W, 2 wh)
        u = left @ (x.float() @ right)  # (..., 2H, 2 wh): [[C x Cw', C x Sw'], [S x Cw', S x Sw']]
        re = u[..., :h, :wh] - u[..., h:, wh:]
        im = u[..., :h, wh:] + u[..., h:, :wh]
        return _mirror_shift(torch.log(torch.sqrt(re * re + im * im) + eps), h, w)


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance per sample and channel over the spatial dims. x: (B, C, H, W)."""
    std, mean = torch.std_mean(x, dim=(-2, -1), keepdim=True)  # one pass for both (unbiased std, as x.std)
    inv = 1.0 / (std + eps)
    return torch.addcmul(-mean * inv, x, inv)  # (x - mean) / (std + eps) in one pass over x


def spectrum_features(x: torch.Tensor, *, dft: str = "fft") -> torch.Tensor:
    """Standardised global log-magnitude spectrum. x: (B, 3, H, W) -> (B, 3, H, W).

    dft="fft" uses torch.fft; dft="matmul" uses `log_magnitude_matmul` (set for ONNX export only).
    """
    return standardize(log_magnitude_matmul(x) if dft == "matmul" else log_magnitude(x))


def _rgb(x: torch.Tensor, dft: str) -> torch.Tensor:
    return x


def _fft(x: torch.Tensor, dft: str) -> torch.Tensor:
    return spectrum_features(x, dft=dft).to(x.dtype)


def _residual(name: str) -> Callable[[torch.Tensor, str], torch.Tensor]:
    # Residuals are not standardised per image: how much residual energy an image has is part of the evidence
    # (the batch norm after the first convolution rescales them globally).
    return lambda x, dft: RESIDUALS[name](x)


@dataclass(frozen=True)
class Encoding:
    """One input component: the channels it gives the backbone, and fn(x, dft) -> (B, channels, H, W)."""

    channels: int
    fn: Callable[[torch.Tensor, str], torch.Tensor]


# The input components: a new one is one row here. A mode is one component or several joined by "+",
# stacked along channels in that order (their channels widen the backbone's first convolution).
ENCODERS: dict[str, Encoding] = {
    "rgb": Encoding(3, _rgb),  # the normalised image unchanged
    "fft": Encoding(3, _fft),  # the reference: the standardised global log-magnitude spectrum
    "npr": Encoding(3, _residual("npr")),  # NPR: x - up(down(x)), nearest, factor 2 (synapse7.residuals)
    "hh": Encoding(3, _residual("hh")),  # SAFE: the HH band of a one-level Haar DWT, undecimated
    "srm": Encoding(3, _residual("srm")),  # three SRM high-pass filters of the luminance
}
# The documented modes (any "+" combination of components is accepted).
INPUT_MODES = ("fft", "rgb", "rgb+fft", "npr", "hh", "srm", "rgb+npr", "npr+srm")


def parse_input_mode(mode: str) -> tuple[str, ...]:
    """'rgb+fft' -> ('rgb', 'fft'); raises ValueError naming the known components for anything else."""
    parts = tuple(p.strip() for p in mode.split("+"))
    bad = [p for p in parts if p not in ENCODERS]
    if not mode or bad or len(set(parts)) != len(parts):
        raise ValueError(
            f"unknown input mode {mode!r}; use one of {', '.join(ENCODERS)} or several joined by "
            f"'+' (e.g. {', '.join(INPUT_MODES)})"
        )
    return parts


class InputEncoder(nn.Module):
    """Turns the normalised RGB batch (B, 3, H, W) into the backbone's input for an input mode (ENCODERS).

    "rgb+fft" gives (B, 6, H, W): image, then spectrum. Everything is computed batched on the input's device.
    """

    def __init__(self, mode: str = ModelConfig.input) -> None:
        super().__init__()
        self.parts = parse_input_mode(mode)
        self.mode = mode
        self.dft = "fft"  # "matmul" only while exporting to ONNX (synapse7.export)

    @property
    def out_channels(self) -> int:
        return sum(ENCODERS[p].channels for p in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [ENCODERS[p].fn(x, self.dft) for p in self.parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
