"""SAFE-style training augmentation (Li et al., KDD 2025; issue 11, item 4): rotation, colour jitter, patch masking.

PIL -> PIL operators in the style of `synapse7.perturb`'s `RandomAugment` / `RandomHFlip`: frozen dataclasses,
randomness from torch's global RNG or a given `generator` (so Lightning's seeded workers make runs
reproducible), and a fixed number of draws per call whatever is applied, so one probability never shifts
another op's draws. Defaults are SAFE's training recipe: `RandomRotation(180)`, `ColorJitter(0.5, 0.5, 0.5)`,
`RandomMask(ratio=(0, 0.75), patch_size=16, p=0.5)`. They go after the crop and the CNNSpot ops
(`build_safe_ops` gives them in that order); none of them resamples the image except the rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from synapse7.io import _to_rgb
from synapse7.transforms import PilOp

INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class RandomRotation:
    """Rotate by an angle uniform in [-degrees, degrees] with probability `prob`; size kept, corners `fill`.

    Nearest-neighbour by default (as torchvision's RandomRotation): pixel values are moved, not blended, so
    local generation traces survive better than under bilinear resampling. Two draws per call.
    """

    degrees: float = 180.0
    prob: float = 1.0
    interpolation: str = "nearest"
    fill: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_prob("rotation prob", self.prob)
        if not (math.isfinite(self.degrees) and 0 <= self.degrees <= 180):
            raise ValueError(f"rotation degrees must be in [0, 180], got {self.degrees}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"rotation interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def __call__(self, img: Image.Image) -> Image.Image:
        u = float(torch.rand((), generator=self.generator))
        angle = _uniform(-self.degrees, self.degrees, self.generator)
        if u >= self.prob or angle == 0.0:
            return img
        return TF.rotate(_to_rgb(img), angle, interpolation=INTERPOLATIONS[self.interpolation], expand=False,
                         fill=[self.fill] * 3)


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast and saturation factors uniform in [1 - x, 1 + x] (hue shift uniform in [-hue, hue]),
    applied in a random order with probability `prob`. Six draws and one permutation per call."""

    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.0
    prob: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_prob("colour jitter prob", self.prob)
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v < 1):
                raise ValueError(f"colour jitter {name} must be in [0, 1), got {v}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"colour jitter hue must be in [0, 0.5], got {self.hue}")

    def __call__(self, img: Image.Image) -> Image.Image:
        g = self.generator
        u = float(torch.rand((), generator=g))
        factors = [_uniform(1 - x, 1 + x, g) for x in (self.brightness, self.contrast, self.saturation)]
        shift = _uniform(-self.hue, self.hue, g)
        order = torch.randperm(4, generator=g).tolist()
        if u >= self.prob:
            return img
        out = _to_rgb(img)
        ops = (lambda im: TF.adjust_brightness(im, factors[0]), lambda im: TF.adjust_contrast(im, factors[1]),
               lambda im: TF.adjust_saturation(im, factors[2]), lambda im: TF.adjust_hue(im, shift))
        for i in order:
            if i == 3 and self.hue == 0:  # hue 0 is the identity; skipping it saves an HSV round trip
                continue
            out = ops[i](out)
        return out


@dataclass(frozen=True)
class RandomPatchMask:
    """With probability `prob`, set a random `ratio` (uniform in the range) of the patch x patch grid cells to
    `fill`. Cells are chosen without replacement; edge cells of sizes not divisible by `patch` are partial.
    Draws: two numbers and one permutation of the cells per call."""

    ratio: tuple[float, float] = (0.0, 0.75)
    patch: int = 16
    prob: float = 0.5
    fill: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_prob("mask prob", self.prob)
        lo, hi = self.ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"mask ratio must be a (low, high) pair in [0, 1] with low <= high, got {self.ratio!r}")
        if self.patch < 1:
            raise ValueError(f"mask patch must be >= 1 pixel, got {self.patch}")

    def mask(self, size: tuple[int, int]) -> np.ndarray | None:
        """The (H, W) boolean mask (True = masked) drawn for an image of PIL `size` (W, H), or None."""
        w, h = size
        rows, cols = math.ceil(h / self.patch), math.ceil(w / self.patch)
        u = float(torch.rand((), generator=self.generator))
        ratio = _uniform(*self.ratio, self.generator)
        cells = torch.randperm(rows * cols, generator=self.generator).numpy()
        if u >= self.prob:
            return None
        grid = np.zeros(rows * cols, dtype=bool)
        grid[cells[: round(ratio * rows * cols)]] = True
        full = np.repeat(np.repeat(grid.reshape(rows, cols), self.patch, axis=0), self.patch, axis=1)
        return full[:h, :w]

    def __call__(self, img: Image.Image) -> Image.Image:
        m = self.mask(img.size)
        if m is None or not m.any():
            return img
        arr = np.array(_to_rgb(img))
        arr[m] = self.fill
        return Image.fromarray(arr, "RGB")


def build_safe_ops(*, rotation_prob: float = 1.0, rotation_degrees: float = 180.0, jitter_prob: float = 1.0,
                   jitter: float = 0.5, mask_prob: float = 0.5, mask_ratio: tuple[float, float] = (0.0, 0.75),
                   mask_patch: int = 16, generator: torch.Generator | None = None) -> list[PilOp]:
    """SAFE's rotation, colour jitter and masking in that order (a probability of 0 leaves an op out)."""
    ops: list[PilOp] = []
    if rotation_prob > 0:
        ops.append(RandomRotation(rotation_degrees, rotation_prob, generator=generator))
    if jitter_prob > 0:
        ops.append(ColorJitter(jitter, jitter, jitter, prob=jitter_prob, generator=generator))
    if mask_prob > 0:
        ops.append(RandomPatchMask(tuple(mask_ratio), mask_patch, mask_prob, generator=generator))
    return ops
