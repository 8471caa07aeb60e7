"""Perturbation operators, alignment and training augmentation: exact, deterministic, reproducible."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin, features

from synapse7.audit import estimate_jpeg_quality
from synapse7.config import DataConfig, RunConfig
from synapse7.io import _to_rgb, open_image
from synapse7.perturb import (
    GaussianBlur,
    Identity,
    JpegCompress,
    PngAlign,
    RandomAugment,
    RandomHFlip,
    Rescale,
    build_align,
    build_train_ops,
    encode_jpeg,
    has_train_augmentation,
    parse_perturbation,
    parse_perturbation_list,
)


def _image(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    """Noise plus a smooth gradient: high and low frequencies both present."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    arr = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)


def _pil_jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)  # PIL's own defaults
    buf.seek(0)
    return Image.open(buf)


# ---- JPEG ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [30, 65, 95, 100])
def test_jpeg_equals_pil_own_save(quality: int) -> None:
    img = _image()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    assert encode_jpeg(img, quality) == buf.getvalue()  # bytes for bytes: PIL's default 4:2:0, no metadata
    out = JpegCompress(quality)(img)
    assert out.size == img.size and out.mode == "RGB" and out.format == "JPEG"
    np.testing.assert_array_equal(_px(out), _px(_pil_jpeg_roundtrip(img, quality)))


def test_jpeg_is_deterministic_and_lossy_by_quality() -> None:
    img = _image()
    a, b = JpegCompress(65)(img), JpegCompress(65)(img)
    np.testing.assert_array_equal(_px(a), _px(b))
    err = {q: np.abs(_px(JpegCompress(q)(img)).astype(int) - _px(img)).mean() for q in (30, 65, 95)}
    assert err[30] > err[65] > err[95] > 0


def test_jpeg_quality_recovered_from_output() -> None:
    for q in (30, 65, 96):
        out = JpegCompress(q)(_image())
        est = estimate_jpeg_quality(out.quantization)
        assert est is not None and est.quality == q and est.exact


# ---- resize / blur / none ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "size"),
    [(0.5, (24, 20)), (0.25, (12, 10)), (1.5, (72, 60)), (0.33, (16, 13)), (0.01, (1, 1)), (1.0, (48, 40))],
)
def test_resize_exact_size_and_pixels(factor: float, size: tuple[int, int]) -> None:
    img = _image(48, 40)
    out = Rescale(factor)(img)
    assert out.size == size
    ref = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=None) if size != img.size else img
    np.testing.assert_array_equal(_px(out), _px(ref))


def test_resize_rounds_halves_up() -> None:
    assert Rescale(0.5).output_size((45, 31)) == (23, 16)  # 22.5 -> 23, 15.5 -> 16


def _high_freq_energy(img: Image.Image) -> float:
    g = np.asarray(img.convert("L"), dtype=np.float64)
    f = np.fft.fftshift(np.abs(np.fft.fft2(g - g.mean())) ** 2)
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    return float(f[r > 0.25].sum())


def test_blur_sigma0_is_identity_and_blur_removes_high_frequencies() -> None:
    img = _image(64, 64)
    np.testing.assert_array_equal(_px(GaussianBlur(0)(img)), _px(img))
    e0, e1, e3 = (_high_freq_energy(GaussianBlur(s)(img)) for s in (0, 1, 3))
    assert e1 < 0.2 * e0 and e3 < e1
    out = GaussianBlur(1)(img)
    assert out.size == img.size and out.mode == "RGB"
    np.testing.assert_array_equal(_px(out), _px(GaussianBlur(1)(img)))  # deterministic
    # A flat image stays flat (kernel sums to 1, reflect padding).
    flat = Image.new("RGB", (20, 16), (10, 120, 250))
    np.testing.assert_array_equal(_px(GaussianBlur(3)(flat)), _px(flat))


def test_blur_handles_images_smaller_than_kernel() -> None:
    for size in ((1, 1), (2, 5), (7, 7)):
        out = GaussianBlur(3)(_image(*size))
        assert out.size == size


def test_none_is_identity() -> None:
    img = _image()
    assert parse_perturbation("none")(img) is img
    assert Identity()(img) is img


# ---- parsing -----------------------------------------------------------------------------------------------


def test_parse_perturbation_forms() -> None:
    assert parse_perturbation("jpeg:65") == JpegCompress(65)
    assert parse_perturbation(" Resize:0.5 ") == Rescale(0.5)
    assert parse_perturbation("blur:1") == GaussianBlur(1.0)
    assert isinstance(parse_perturbation("none"), Identity)
    ops = parse_perturbation_list("jpeg:95,jpeg:65,jpeg:30,resize:0.5,resize:0.25,blur:1,blur:3,none")
    assert [op.spec for op in ops] == [
        "jpeg:95",
        "jpeg:65",
        "jpeg:30",
        "resize:0.5",
        "resize:0.25",
        "blur:1",
        "blur:3",
        "none",
    ]
    assert [op.strength for op in ops[:3]] == [95.0, 65.0, 30.0]


@pytest.mark.parametrize(
    "spec",
    [
        "jpeg:0",
        "jpeg:101",
        "jpeg:65.5",
        "jpeg:abc",
        "jpeg",
        "jpeg:",
        "resize:0",
        "resize:-1",
        "resize:nan",
        "blur:-1",
        "blur:inf",
        "sharpen:1",
        "",
        "png",
    ],
)
def test_parse_perturbation_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"jpeg:Q.*resize:F.*blur:S.*none"):
        parse_perturbation(spec)


def test_parse_perturbation_list_rejects_empty_items() -> None:
    with pytest.raises(ValueError, match="empty item"):
        parse_perturbation_list("jpeg:95,,none")
    with pytest.raises(ValueError, match="sharpen"):
        parse_perturbation_list("jpeg:95,sharpen:2")


# ---- alignment ---------------------------------------------------------------------------------------------


def _inputs(tmp_path: Path) -> dict[str, Path]:
    """The same picture stored in many formats and modes."""
    rgb = _image(40, 32, seed=3)
    out = {}

    def save(name: str, img: Image.Image, fmt: str, **kw) -> None:
        p = tmp_path / name
        img.save(p, format=fmt, **kw)
        out[name] = p

    save("rgb.png", rgb, "PNG")
    save("q50.jpg", rgb, "JPEG", quality=50)
    save("q95_444.jpg", rgb, "JPEG", quality=95, subsampling=0)
    save("gray.jpg", rgb.convert("L"), "JPEG", quality=80)
    save("gray.png", rgb.convert("L"), "PNG")
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    save("rgba.png", rgba, "PNG")
    save("palette.png", rgb.quantize(64), "PNG")
    save("palette.gif", rgb.quantize(32), "GIF")
    if features.check("webp"):
        save("lossy.webp", rgb, "WEBP", quality=60)
    return out


def test_jpeg_alignment_same_format_and_quality_whatever_the_input(tmp_path: Path) -> None:
    align = build_align("jpeg:96")
    signatures = set()
    for name, path in _inputs(tmp_path).items():
        for src in (Image.open(path), open_image(path)):  # raw mode as stored, and the pipeline's RGB
            out = align(src)
            assert out.format == "JPEG" and out.mode == "RGB" and out.size == src.size, name
            est = estimate_jpeg_quality(out.quantization)
            assert est is not None and est.quality == 96 and est.exact, name
            signatures.add((JpegImagePlugin.get_sampling(out), tuple(map(tuple, out.quantization.values()))))
            # Pixels equal decode(encode_jpeg(rgb(input), 96)).
            np.testing.assert_array_equal(_px(out), _px(_pil_jpeg_roundtrip(_to_rgb(src), 96)), err_msg=name)
    assert len(signatures) == 1  # one sampling and one set of tables for every input format


def test_png_alignment_is_lossless_and_uniform(tmp_path: Path) -> None:
    align = build_align("png")
    assert isinstance(align, PngAlign)
    for name, path in _inputs(tmp_path).items():
        for src in (Image.open(path), open_image(path)):
            out = align(src)
            assert out.format == "PNG" and out.mode == "RGB", name
            np.testing.assert_array_equal(np.asarray(out), np.asarray(_to_rgb(src)), err_msg=name)


def test_alignment_is_deterministic() -> None:
    align = build_align("jpeg:96")
    once = align(_image())
    # Re-encoding an aligned image is deterministic (same function of the pixels).
    np.testing.assert_array_equal(_px(align(once)), _px(align(Image.fromarray(_px(once)))))


@pytest.mark.parametrize("spec", ["bmp", "jpeg", "jpeg:", "jpeg:0", "resize:0.5", "blur:1", ""])
def test_build_align_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"'png', 'jpeg:Q'.*'none'"):
        build_align(spec)


def test_build_align_none_is_identity() -> None:
    img = _image()
    assert build_align("none")(img) is img
    assert build_align(" JPEG:96 ") == JpegCompress(96)


# ---- training augmentation ---------------------------------------------------------------------------------


def _run(aug: RandomAugment, seed: int, n: int = 6) -> list[np.ndarray]:
    torch.manual_seed(seed)
    return [_px(aug(_image(32, 32, seed=i))) for i in range(n)]


def test_random_augment_reproducible_under_seed_and_varies_across_seeds() -> None:
    aug = RandomAugment(blur_prob=0.5, jpeg_prob=0.5, resize_prob=0.5)
    a, b, c = _run(aug, 0), _run(aug, 0), _run(aug, 1)
    assert all(x.shape == y.shape and (x == y).all() for x, y in zip(a, b, strict=True))
    assert any(x.shape != y.shape or (x != y).any() for x, y in zip(a, c, strict=True))


def test_random_augment_probabilities_and_ranges() -> None:
    img = _image(32, 32)
    torch.manual_seed(0)
    assert all(RandomAugment()(img) is img for _ in range(5))  # all probabilities 0: identity
    aug = RandomAugment(
        blur_prob=1.0,
        blur_sigma=(0.5, 1.0),
        jpeg_prob=1.0,
        jpeg_quality=(40, 41),
        resize_prob=1.0,
        resize_scale=(0.5, 0.75),
    )
    draws = [aug.sample() for _ in range(200)]
    assert all([type(op) for op in ops] == [Rescale, GaussianBlur, JpegCompress] for ops in draws)
    assert {ops[2].quality for ops in draws} == {40, 41}  # inclusive integer range
    assert all(0.5 <= ops[0].factor <= 0.75 and 0.5 <= ops[1].sigma <= 1.0 for ops in draws)
    half = RandomAugment(jpeg_prob=0.5)
    frac = np.mean([len(half.sample()) for _ in range(2000)])
    assert 0.45 < frac < 0.55


def test_random_augment_with_generator() -> None:
    aug = RandomAugment(
        blur_prob=0.5, jpeg_prob=0.5, resize_prob=0.5, generator=torch.Generator().manual_seed(3)
    )
    first = [aug.sample() for _ in range(10)]
    aug.generator.manual_seed(3)
    assert [aug.sample() for _ in range(10)] == first


@pytest.mark.parametrize(
    "kwargs",
    [
        {"blur_prob": 1.5},
        {"jpeg_prob": -0.1},
        {"jpeg_quality": (0, 100)},
        {"jpeg_quality": (50, 40)},
        {"blur_sigma": (-1.0, 2.0)},
        {"resize_scale": (0.0, 1.0)},
        {"jpeg_quality": (30.5, 90)},
    ],
)
def test_random_augment_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RandomAugment(**kwargs)


def test_build_train_ops_from_config() -> None:
    assert build_train_ops(DataConfig()) == []
    cfg = (
        RunConfig()
        .override(
            data={
                "aug_jpeg_prob": 0.5,
                "aug_jpeg_quality": [50, 60],
                "aug_blur_prob": 0.1,
                "aug_resize_prob": 0.2,
                "aug_resize_scale": [0.8, 1.2],
            }
        )
        .data
    )
    (op,) = build_train_ops(cfg)
    assert op == RandomAugment(
        blur_prob=0.1,
        blur_sigma=(0.0, 3.0),
        jpeg_prob=0.5,
        jpeg_quality=(50, 60),
        resize_prob=0.2,
        resize_scale=(0.8, 1.2),
    )


def test_random_flip_mirrors_exactly_and_reproducibly() -> None:
    img = _image(33, 20)
    assert (_px(RandomHFlip(1.0)(img)) == _px(img)[:, ::-1]).all()  # an exact mirror, no resampling
    assert RandomHFlip(0.0)(img) is img
    g = torch.Generator()
    flip = RandomHFlip(0.5, generator=g)
    g.manual_seed(5)
    first = [flip(img) is img for _ in range(200)]
    g.manual_seed(5)
    assert [flip(img) is img for _ in range(200)] == first
    assert 70 < sum(first) < 130  # about half kept
    with pytest.raises(ValueError):
        RandomHFlip(1.5)


def test_flip_is_a_train_op_and_counts_as_augmentation() -> None:
    cfg = RunConfig().override(data={"aug_flip_prob": 0.5}).data
    assert build_train_ops(cfg) == [RandomHFlip(0.5)] and has_train_augmentation(cfg)
    assert not has_train_augmentation(DataConfig())
    both = RunConfig().override(data={"aug_flip_prob": 0.5, "aug_jpeg_prob": 0.5}).data
    assert [type(op) for op in build_train_ops(both)] == [RandomAugment, RandomHFlip]
