"""Preprocessing presets (PIL image -> normalised CHW float tensor).

Resizing runs on uint8 tensors (torchvision's antialiased bilinear kernel) before the float conversion, which
is both faster and within a few grey levels of the reference's PIL Resize -> ToTensor -> Normalize chain
(tests/test_decode.py measures the difference). With `fast_decode`, large JPEGs are decoded at a reduced scale
by libjpeg-turbo's DCT scaling (PIL `draft`), which is several times faster and differs a little more
(docs/performance.md gives the measured tolerance).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from synapse7.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from synapse7.io import DEFAULT_MAX_PIXELS, BadImageError, load_image
from synapse7.perturb import PilOp, build_align

MAX_ASPECT = 8  # longer side kept before resizing, in multiples of the shorter side
RESIZE_INTERPOLATIONS = {  # config.RESIZE_KERNELS
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST_EXACT,  # pixel centres, so a 3x enlargement repeats each pixel 3x3
}


def limit_aspect(t: torch.Tensor, max_aspect: int = MAX_ASPECT) -> torch.Tensor:
    """Centre-crop the long side of (..., H, W) to about `max_aspect` x the short side; others pass unchanged.

    Resizing scales the short side up to the target, so a 1x70000 strip resized to 256 would need ~15 GB and
    a minute; the centre crop that follows only keeps the middle anyway (found by the tests/corpus cases).
    The amount cut has the parity of the long side, so the kept centre is the true centre.
    """
    h, w = t.shape[-2:]
    short, long = min(h, w), max(h, w)
    if long <= max_aspect * short:
        return t
    keep = max_aspect * short + (long - max_aspect * short) % 2
    return F.center_crop(t, [h, keep] if w > h else [keep, w])


def grid_side(crops: int) -> int:
    """k for crops = k*k; raises ValueError otherwise."""
    k = round(crops**0.5) if crops >= 1 else 0
    if k < 1 or k * k != crops:
        raise ValueError(f"crops must be a square number (1, 4, 9, 16, ...), got {crops}")
    return k


def pad_to(t: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (..., H, W) symmetrically so that both sides are >= size (reflected where the image is big enough
    to reflect, else its edge pixels repeated); larger images pass unchanged."""
    h, w = t.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return t
    pad = [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2]  # left, top, right, bottom
    mode = "reflect" if ph < h and pw < w else "edge"
    return F.pad(t, pad, padding_mode=mode)


def grid_crops(t: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """k x k crops of (C, H, W) (H, W >= size) at evenly spaced positions covering the image -> (k*k, C, size, size).

    The first and last crops touch the borders; crops overlap when the image is smaller than k * size.
    """
    h, w = t.shape[-2:]
    ys = [round(i * (h - size) / (k - 1)) if k > 1 else (h - size) // 2 for i in range(k)]
    xs = [round(i * (w - size) / (k - 1)) if k > 1 else (w - size) // 2 for i in range(k)]
    return torch.stack([t[..., y : y + size, x : x + size] for y in ys for x in xs])


class ClassificationPreset:
    """Deterministic preprocessing: optional PIL ops, resize (shorter side), centre-crop, normalise.

    preprocess="resize" follows the reference (resize to `resize_size`, crop `crop_size`);
    preprocess="crop" crops at native resolution, keeping the high-frequency artefacts resizing smears
    (images smaller than the crop are padded, never resized).
    crops=k*k > 1 returns (k*k, 3, crop, crop) tiles on an evenly spaced k x k grid instead of the one centre
    crop, so that the whole image is looked at; the model combines their logits (Synapse7Net.crop_vote).
    fast_decode=True lets `decode` use reduced-scale JPEG decoding; it only applies to preprocess="resize"
    without pre_ops (alignment and perturbations are defined on the full-resolution image).
    """

    def __init__(
        self,
        *,
        crop_size: int = 224,
        resize_size: int | None = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        preprocess: str = "resize",
        pre_ops: Sequence[PilOp] = (),
        fast_decode: bool = False,
        crops: int = 1,
        min_side: int = 0,
        interpolation: str = "bilinear",
    ) -> None:
        if preprocess not in ("resize", "crop"):
            raise ValueError(f"preprocess must be 'resize' or 'crop', got {preprocess!r}")
        if interpolation not in RESIZE_INTERPOLATIONS:
            raise ValueError(
                f"resize interpolation must be one of {', '.join(RESIZE_INTERPOLATIONS)}, got {interpolation!r}"
            )
        self.interpolation = interpolation
        grid_side(crops)  # validates
        self.crop_size = crop_size
        self.resize_size = resize_size if resize_size is not None else crop_size
        self.mean = list(mean)
        self.std = list(std)
        self.preprocess = preprocess
        self.pre_ops = list(pre_ops)
        self.fast_decode = fast_decode
        self.crops = crops
        self.min_side = min_side  # `load` refuses images with a shorter side (0: no check)

    @property
    def draft_size(self) -> int | None:
        """Smallest side a JPEG may be DCT-downscaled to before resizing (None: decode at full size).

        Twice the resize target, so the antialiased resize still low-passes by >= 2x after the DCT scaling:
        scaling straight to the target left up to ~48 grey levels of blocky error on textures, 2x leaves ~1.
        """
        if not self.fast_decode or self.preprocess != "resize" or self.pre_ops:
            return None
        return 2 * self.resize_size

    def decode(
        self,
        source: str | os.PathLike | bytes | IO[bytes] | Image.Image | np.ndarray,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        name: str | os.PathLike | None = None,
    ) -> Image.Image:
        """`io.load_image` with this preset's decoding shortcut (reduced-scale JPEG decoding when enabled).

        Every image Synapse-7 reads (datasets, `Detector.predict`, the web API) is decoded here.
        """
        return load_image(source, max_pixels=max_pixels, name=name, draft_size=self.draft_size)

    def load(
        self,
        source: str | os.PathLike | bytes | IO[bytes] | Image.Image | np.ndarray,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        name: str | os.PathLike | None = None,
    ) -> torch.Tensor:
        """decode + to_uint8: uint8 (3, crop, crop), not yet normalised. Raises BadImageError for an image
        smaller than `min_side`."""
        img = self.decode(source, max_pixels=max_pixels, name=name)
        if min(img.size) < self.min_side:
            label = name if name is not None else (source if isinstance(source, (str, os.PathLike)) else None)
            raise BadImageError(
                label,
                f"image too small: {img.width}x{img.height}; this model needs at least "
                f"{self.min_side} px on the shorter side (its input is {self.crop_size} px)",
            )
        return self.to_uint8(img)

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB -> uint8 tensor (3, crop, crop), before normalisation."""
        for op in self.pre_ops:
            img = op(img)
        t = F.pil_to_tensor(img)  # (3, H, W) uint8
        if self.preprocess == "resize":
            size = self._full_size_target(img.info.get("full_size")) if not self.pre_ops else None
            mode = RESIZE_INTERPOLATIONS[self.interpolation]
            t = F.resize(limit_aspect(t), size or [self.resize_size], interpolation=mode, antialias=True)
        else:
            t = pad_to(t, self.crop_size)
        if self.crops > 1:
            return grid_crops(t, self.crop_size, grid_side(self.crops))
        return F.center_crop(t, [self.crop_size, self.crop_size])

    def _full_size_target(self, full: tuple[int, int] | None) -> list[int] | None:
        """[H, W] the reference resize gives the full-size image, for an image decoded at reduced scale.

        Computing it from the reduced size instead (rounded up by the DCT scaling) can change the long side by
        a pixel and shift the centre crop by half a pixel, which alone cost ~3 grey levels on textures.
        """
        if full is None:
            return None
        w, h = full
        short, long = min(w, h), max(w, h)
        if long > MAX_ASPECT * short:  # limit_aspect crops first; the plain path handles it
            return None
        new_long = int(self.resize_size * long / short)  # torchvision's own rounding
        return [new_long, self.resize_size] if w <= h else [self.resize_size, new_long]

    def normalize(self, t: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> normalised float32."""
        return F.normalize(t.float().div_(255.0), self.mean, self.std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(img))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, resize_size={self.resize_size}, "
            f"preprocess={self.preprocess!r}, interpolation={self.interpolation!r}, crops={self.crops}, "
            f"fast_decode={self.fast_decode}, "
            f"pre_ops={self.pre_ops})"
        )


def min_input_side(cfg: DataConfig) -> int:
    """The smallest shorter side a model of this config classifies: a quarter of its input size, at least 8 px.

    Below it, resizing up more than 4x (preprocess "resize") or padding more than 15/16 of the crop ("crop")
    leaves nothing of what the model was trained on; the FFT of fewer than 8 pixels is no spectrum at all.
    A 32 px CIFAKE image upsampled to 96 passes (limit 24); a 4x4 image never does.
    """
    return max(8, -(-cfg.image_size // 4))


def build_preset(
    cfg: DataConfig, *, pre_ops: Sequence[PilOp] = (), check_size: bool = False
) -> ClassificationPreset:
    """The evaluation/inference preset for a data config (alignment ops first, if configured). check_size:
    refuse images under `min_input_side` (prediction does; datasets for training and evaluation do not)."""
    ops: list[PilOp] = []
    if cfg.align:
        ops.append(build_align(cfg.align))
    ops.extend(pre_ops)
    return ClassificationPreset(
        crop_size=cfg.image_size,
        resize_size=cfg.resolved_resize,
        mean=cfg.mean,
        std=cfg.std,
        preprocess=cfg.preprocess,
        pre_ops=ops,
        fast_decode=cfg.fast_decode,
        crops=cfg.crops,
        min_side=min_input_side(cfg) if check_size else 0,
        interpolation=cfg.resize_interpolation,
    )
