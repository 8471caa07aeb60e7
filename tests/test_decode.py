"""Decoding and preprocessing match the reference transform within stated tolerances.

Reference: torchvision.transforms v1 Resize(256, bilinear) on the PIL image -> CenterCrop(224) -> ToTensor ->
Normalize, as in the torchvision classification references. Tolerances are on the normalised scale, where one
grey level is 1 / (255 * std) ~= 0.0175 for the ImageNet std of 0.224 (the smallest std gives the largest step).

- Default path (uint8 antialiased resize in torch): measured max 1 grey level, mean < 1e-4 on photos and noise.
- fast_decode (libjpeg-turbo DCT scaling to >= 2x the resize target, then the same resize): measured on the
  scikit-image photos saved as JPEG at 2-8x the target: mean 0.002-0.022 (0.1-1.3 grey levels), 99th
  percentile <= 0.09, max <= 0.6 (single pixels on a hard black/bright edge). The bounds below add headroom.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from synapse7.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from synapse7.demo import load_photos
from synapse7.io import open_image
from synapse7.transforms import ClassificationPreset, build_preset

ONE_LEVEL = 1.0 / (255.0 * min(IMAGENET_STD))  # one grey level on the normalised scale (~0.0175)
EXACT_MAX = ONE_LEVEL + 1e-5
EXACT_MEAN = 2e-4
DRAFT_MEAN = 0.03  # ~1.7 grey levels
DRAFT_P99 = 0.12
DRAFT_MAX = 0.75


def reference(resize: int = 256, crop: int = 224) -> T.Compose:
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(p) for p in load_photos()[:4]]


def _synthetic() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 437, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:517, 0:389]
    grad = np.stack([(xx * 255 // 388), (yy * 255 // 516), ((xx + yy) % 256)], -1).astype(np.uint8)
    small = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))  # upscaled to 256
    return [noise, Image.fromarray(grad), small]


def _diffs(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    d = (a - b).abs().flatten()
    return float(d.max()), float(d.mean()), float(d.quantile(0.99))


def test_default_path_matches_reference(photos: list[Image.Image]) -> None:
    ref, ours = reference(), ClassificationPreset(crop_size=224, resize_size=256)
    for img in [*photos, *_synthetic()]:
        a, r = ours(img), ref(img)
        assert a.shape == r.shape == (3, 224, 224) and a.dtype == torch.float32
        mx, mean, _ = _diffs(a, r)
        assert mx <= EXACT_MAX and mean <= EXACT_MEAN, (img.size, mx, mean)


def test_default_path_other_sizes(photos: list[Image.Image]) -> None:
    ref, ours = reference(73, 64), ClassificationPreset(crop_size=64, resize_size=73)
    for img in photos[:2]:
        mx, mean, _ = _diffs(ours(img), ref(img))
        assert mx <= EXACT_MAX and mean <= EXACT_MEAN


@pytest.mark.parametrize("scale", [2.0, 4.0])
def test_fast_decode_within_tolerance(photos: list[Image.Image], scale: float) -> None:
    ref = reference()
    fast = ClassificationPreset(crop_size=224, resize_size=256, fast_decode=True)
    exact = ClassificationPreset(crop_size=224, resize_size=256)
    for img in photos[: 5 - int(scale)]:  # fewer of the larger ones: the full-size reference decode dominates
        s = 512 * scale / min(img.size)  # shorter side = scale x the draft floor of 2 * 256
        big = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.LANCZOS)
        data = _jpeg(big)
        decoded = fast.decode(io.BytesIO(data))
        # DCT scaling really happened (1/2 .. 1/8), and kept the short side >= 2x the resize target.
        assert min(decoded.size) < min(big.size) and min(decoded.size) >= 512
        full = open_image(io.BytesIO(data))
        r = ref(full)
        mx, mean, p99 = _diffs(fast(decoded), r)
        assert mean <= DRAFT_MEAN and p99 <= DRAFT_P99 and mx <= DRAFT_MAX, (big.size, mx, mean, p99)
        # The default preset on the same file stays exact.
        assert _diffs(exact(exact.decode(io.BytesIO(data))), r)[0] <= EXACT_MAX


def test_fast_decode_only_where_it_applies(photos: list[Image.Image]) -> None:
    big = photos[0].resize((2048, 2048))
    png = io.BytesIO()
    big.save(png, "PNG")
    fast = ClassificationPreset(crop_size=224, resize_size=256, fast_decode=True)
    assert fast.decode(io.BytesIO(png.getvalue())).size == (2048, 2048)  # PNG: no DCT, full decode
    assert fast.decode(io.BytesIO(_jpeg(big))).size == (512, 512)  # 1/4 scale
    assert ClassificationPreset(resize_size=256).decode(io.BytesIO(_jpeg(big))).size == (
        2048,
        2048,
    )  # opt-in only
    # Native-resolution cropping and PIL pre-ops are defined on the full image: never drafted.
    assert ClassificationPreset(preprocess="crop", fast_decode=True).draft_size is None
    assert ClassificationPreset(fast_decode=True, pre_ops=[lambda im: im]).draft_size is None
    # A JPEG smaller than twice the target decodes at full size.
    small = photos[0].resize((500, 400))
    assert fast.decode(io.BytesIO(_jpeg(small))).size == (500, 400)


def test_data_config_flag_reaches_preset() -> None:
    assert build_preset(DataConfig()).draft_size is None
    assert build_preset(DataConfig(fast_decode=True, image_size=64, resize_size=73)).draft_size == 146
