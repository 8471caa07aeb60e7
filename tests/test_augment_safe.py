"""SAFE-style augmentation: seeded and reproducible, fixed draws, masking fraction, rotation keeps the size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from synapse7.perturb import ColorJitter, RandomPatchMask, RandomRotation, build_safe_ops


def _image(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """Random colours in 1..255: no pixel is 0 before masking."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _apply(ops, img: Image.Image, n: int = 4) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        x = img
        for op in ops:
            x = op(x)
        out.append(np.asarray(x))
    return out


def test_seeded_reproducible_and_seed_dependent() -> None:
    img = _image()
    a = _apply(build_safe_ops(mask_prob=1.0, generator=_gen(7)), img)
    b = _apply(build_safe_ops(mask_prob=1.0, generator=_gen(7)), img)
    c = _apply(build_safe_ops(mask_prob=1.0, generator=_gen(8)), img)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert all(x.shape == (48, 64, 3) for x in a)
    # the global RNG path (Lightning seeds it per worker) is reproducible too
    torch.manual_seed(3)
    d = _apply(build_safe_ops(), img)
    torch.manual_seed(3)
    e = _apply(build_safe_ops(), img)
    assert all(np.array_equal(x, y) for x, y in zip(d, e, strict=True))


@pytest.mark.parametrize("op_cls", [RandomRotation, ColorJitter, RandomPatchMask])
def test_draws_do_not_depend_on_the_probability(op_cls) -> None:
    img = _image()
    g0, g1 = _gen(1), _gen(1)
    op_cls(prob=0.0, generator=g0)(img)
    op_cls(prob=1.0, generator=g1)(img)
    assert torch.equal(g0.get_state(), g1.get_state())  # an op applied or not consumes the same draws
    assert np.array_equal(np.asarray(op_cls(prob=0.0)(img)), np.asarray(img))


@pytest.mark.parametrize(
    ("w", "h", "patch", "ratio", "expected"),
    [
        (64, 48, 16, 0.5, 0.5),  # 12 whole cells, 6 masked
        (64, 64, 8, 0.25, 0.25),  # 64 cells, 16 masked
        (64, 48, 16, 1.0, 1.0),
        (64, 48, 16, 0.0, 0.0),
    ],
)
def test_masking_fraction_exact(w: int, h: int, patch: int, ratio: float, expected: float) -> None:
    img = _image(w, h)
    op = RandomPatchMask((ratio, ratio), patch, prob=1.0, generator=_gen(0))
    out = np.asarray(op(img))
    masked = (out == 0).all(axis=-1)
    assert masked.mean() == pytest.approx(expected)
    # whole cells only: every masked cell is masked entirely, others untouched
    cells = masked.reshape(h // patch, patch, w // patch, patch)
    assert np.all(cells.all(axis=(1, 3)) == cells.any(axis=(1, 3)))
    np.testing.assert_array_equal(out[~masked], np.asarray(img)[~masked])


def test_masking_partial_edge_cells_and_ratio_range() -> None:
    # 70x50 with 16 px cells: a 5x4 grid whose last column (6 px) and last row (2 px) are partial
    op = RandomPatchMask((1.0, 1.0), 16, prob=1.0, generator=_gen(0))
    assert (np.asarray(op(_image(70, 50))) == 0).all()
    fracs = []
    op = RandomPatchMask((0.2, 0.4), 8, prob=1.0, generator=_gen(2))
    for _ in range(30):
        m = op.mask((64, 64))
        fracs.append(m.mean())
    assert 0.2 - 1 / 64 <= min(fracs) and max(fracs) <= 0.4 + 1 / 64 and np.std(fracs) > 0


def test_rotation_keeps_size_and_matches_the_drawn_angle() -> None:
    img = _image(63, 41)
    out = RandomRotation(180, prob=1.0, generator=_gen(5))(img)
    assert out.size == img.size and out.mode == "RGB"
    replay = _gen(5)
    torch.rand((), generator=replay)  # the apply draw
    angle = -180 + 360 * float(torch.rand((), generator=replay))
    expected = TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST, expand=False, fill=[0, 0, 0])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    # nearest keeps values: every output pixel is an input pixel or the fill
    inp = {tuple(p) for p in np.asarray(img).reshape(-1, 3)}
    assert {tuple(p) for p in np.asarray(out).reshape(-1, 3)} <= inp | {(0, 0, 0)}
    assert np.array_equal(np.asarray(RandomRotation(0.0)(img)), np.asarray(img))


def test_colour_jitter_changes_colours_only_within_range() -> None:
    img = Image.fromarray(np.full((16, 16, 3), 100, np.uint8))
    outs = _apply([ColorJitter(0.5, 0.0, 0.0, generator=_gen(4))], img, n=20)
    means = [o.mean() for o in outs]
    assert min(means) >= 50 - 1 and max(means) <= 150 + 1 and np.std(means) > 5
    hue = ColorJitter(0.0, 0.0, 0.0, hue=0.3, generator=_gen(1))
    assert hue(_image()).size == (64, 48)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomRotation(prob=1.5),
        lambda: RandomRotation(degrees=200),
        lambda: RandomRotation(interpolation="cubic"),
        lambda: ColorJitter(brightness=1.5),
        lambda: ColorJitter(hue=0.7),
        lambda: RandomPatchMask(ratio=(0.5, 0.2)),
        lambda: RandomPatchMask(patch=0),
    ],
)
def test_bad_settings_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make()
