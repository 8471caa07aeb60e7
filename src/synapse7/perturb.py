"""Image perturbations (PIL -> PIL): JPEG re-compression, rescaling, Gaussian blur, alignment, augmentation.

Every operator is exact and deterministic: the same input gives the same output bytes/pixels on every call.
They are used in three places, with one implementation each:
  * evaluation under perturbation (`parse_perturbation_list("jpeg:95,jpeg:65,resize:0.5,blur:1,none")`);
  * format alignment of both classes (`build_align("png" | "jpeg:Q")`, see `DataConfig.align`);
  * CNNSpot-style training augmentation (`RandomAugment`, `build_train_ops(cfg.data)`).

Inputs of any PIL mode are accepted and converted to 8-bit RGB first (`synapse7.io` rules), so the output never
depends on how the input was stored (palette, grayscale, alpha, 16-bit ...).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from synapse7.config import DataConfig
from synapse7.io import _to_rgb

PilOp = Callable[[Image.Image], Image.Image]  # one image operation; presets run them before resizing

# libjpeg's chroma subsampling codes as PIL's `subsampling=` takes them.
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
# 4:2:0 is PIL's/libjpeg's default and what cameras and web encoders mostly write; fixing it explicitly keeps
# the result independent of the input (PIL can otherwise be asked to "keep" a JPEG input's sampling).
DEFAULT_SUBSAMPLING = "4:2:0"

PERTURBATION_FORMS = "'jpeg:Q' (Q integer 1-100), 'resize:F' (F > 0), 'blur:S' (sigma S >= 0) or 'none'"
ALIGN_FORMS = "'png', 'jpeg:Q' (Q integer 1-100) or 'none'"


def encode_jpeg(img: Image.Image, quality: int, subsampling: str = DEFAULT_SUBSAMPLING) -> bytes:
    """Baseline JPEG bytes of `img` (converted to RGB) at IJG quality `quality`; no metadata is written."""
    buf = io.BytesIO()
    # optimize/progressive off and no EXIF/ICC/dpi: the bytes depend on the pixels and the settings only.
    _to_rgb(img).save(
        buf,
        format="JPEG",
        quality=int(quality),
        subsampling=SUBSAMPLING[subsampling],
        optimize=False,
        progressive=False,
    )
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    """Decode in-memory image bytes; the result keeps `.format` (and `.quantization` for JPEG)."""
    out = Image.open(io.BytesIO(data))
    out.load()
    return out


@dataclass(frozen=True)
class Identity:
    """Returns its input unchanged (the 'none' perturbation)."""

    kind = "none"

    @property
    def strength(self) -> float:
        return 0.0

    @property
    def spec(self) -> str:
        return "none"

    def __call__(self, img: Image.Image) -> Image.Image:
        return img


@dataclass(frozen=True)
class JpegCompress:
    """Re-encode as baseline JPEG at `quality` (4:2:0 by default) in memory and decode again."""

    quality: int
    subsampling: str = DEFAULT_SUBSAMPLING
    kind = "jpeg"

    def __post_init__(self) -> None:
        if (
            isinstance(self.quality, bool)
            or not isinstance(self.quality, int)
            or not 1 <= self.quality <= 100
        ):
            raise ValueError(f"JPEG quality must be an integer in 1..100, got {self.quality!r}")
        if self.subsampling not in SUBSAMPLING:
            raise ValueError(f"subsampling must be one of {', '.join(SUBSAMPLING)}, got {self.subsampling!r}")

    @property
    def strength(self) -> float:
        return float(self.quality)

    @property
    def spec(self) -> str:
        return f"jpeg:{self.quality}"

    def __call__(self, img: Image.Image) -> Image.Image:
        return _decode(encode_jpeg(img, self.quality, self.subsampling))


@dataclass(frozen=True)
class Rescale:
    """Resize by `factor` with PIL's bicubic filter (antialiased: PIL widens the kernel when downscaling).

    Output size is (round(w * factor), round(h * factor)), rounding halves up, at least 1 pixel per side.
    """

    factor: float
    kind = "resize"

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"resize factor must be a finite number > 0, got {self.factor!r}")

    @property
    def strength(self) -> float:
        return float(self.factor)

    @property
    def spec(self) -> str:
        return f"resize:{self.factor:g}"

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        return max(1, math.floor(w * self.factor + 0.5)), max(1, math.floor(h * self.factor + 0.5))

    def __call__(self, img: Image.Image) -> Image.Image:
        img = _to_rgb(img)
        size = self.output_size(img.size)
        if size == img.size:
            return img
        # reducing_gap=None: no JPEG draft / box pre-reduction, so the result is exactly the bicubic kernel.
        return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur with standard deviation `sigma` pixels (sigma 0 is the identity).

    A true sampled Gaussian (torchvision), truncated at 4 sigma like scipy's `gaussian_filter` that CNNSpot
    uses, with reflect padding; the kernel is shortened on images smaller than it.
    """

    sigma: float
    kind = "blur"

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"blur sigma must be a finite number >= 0, got {self.sigma!r}")

    @property
    def strength(self) -> float:
        return float(self.sigma)

    @property
    def spec(self) -> str:
        return f"blur:{self.sigma:g}"

    def __call__(self, img: Image.Image) -> Image.Image:
        img = _to_rgb(img)
        w, h = img.size
        # Reflect padding needs radius < side.
        radius = min(math.ceil(4.0 * self.sigma), min(w, h) - 1)
        if self.sigma == 0 or radius < 1:
            return img
        t = TF.pil_to_tensor(img)  # (3, H, W) uint8
        t = TF.gaussian_blur(t, kernel_size=[2 * radius + 1] * 2, sigma=[float(self.sigma)] * 2)
        return TF.to_pil_image(t)


@dataclass(frozen=True)
class PngAlign:
    """Lossless re-save as PNG in memory and decode: pixels are the RGB input's, the format is always PNG."""

    kind = "png"

    @property
    def spec(self) -> str:
        return "png"

    def __call__(self, img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        # compress_level only trades speed for size; PNG is lossless at every level.
        _to_rgb(img).save(buf, format="PNG", compress_level=1)
        return _decode(buf.getvalue())


def _parse_number(text: str, kind: type, spec: str, forms: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"bad value {text!r} in {spec!r}; expected {forms}") from None


def parse_perturbation(spec: str) -> JpegCompress | Rescale | GaussianBlur | Identity:
    """'jpeg:65' | 'resize:0.5' | 'blur:1' | 'none' -> operator. Raises ValueError naming the valid forms."""
    if not isinstance(spec, str):
        raise ValueError(f"perturbation must be a string, one of {PERTURBATION_FORMS}; got {spec!r}")
    s = spec.strip().lower()
    if s in ("none", "identity"):
        return Identity()
    name, sep, arg = s.partition(":")
    if not sep or not arg.strip():
        raise ValueError(f"unknown perturbation {spec!r}; expected {PERTURBATION_FORMS}")
    arg = arg.strip()
    try:
        if name == "jpeg":
            return JpegCompress(int(_parse_number(arg, int, spec, PERTURBATION_FORMS)))
        if name == "resize":
            return Rescale(float(_parse_number(arg, float, spec, PERTURBATION_FORMS)))
        if name == "blur":
            return GaussianBlur(float(_parse_number(arg, float, spec, PERTURBATION_FORMS)))
    except ValueError as e:
        if "expected" in str(e):
            raise
        raise ValueError(f"{e} (in {spec!r}); expected {PERTURBATION_FORMS}") from None
    raise ValueError(f"unknown perturbation {spec!r}; expected {PERTURBATION_FORMS}")


def parse_perturbation_list(
    specs: str | Sequence[str],
) -> list[JpegCompress | Rescale | GaussianBlur | Identity]:
    """'jpeg:95,jpeg:65,none' (or a list of specs) -> operators, in the given order."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    if not items or any(not str(it).strip() for it in items):
        raise ValueError(
            f"empty item in perturbation list {specs!r}; give a comma list of {PERTURBATION_FORMS}"
        )
    return [parse_perturbation(it) for it in items]


def build_align(spec: str) -> PilOp:
    """Alignment op for `DataConfig.align`: 'png' (lossless PNG round trip), 'jpeg:Q' (JPEG at quality Q),
    or 'none' (identity, as `--align none` passes it).

    Applied identically to both classes, so neither format nor JPEG quality can tell them apart.
    """
    s = spec.strip().lower() if isinstance(spec, str) else ""
    if s == "png":
        return PngAlign()
    if s == "none":
        return Identity()
    if s.startswith("jpeg:"):
        try:
            return parse_perturbation(s)
        except ValueError:
            pass
    raise ValueError(f"unknown alignment {spec!r}; expected {ALIGN_FORMS}")


# ----------------------------------------------------------------------------------------------------------
# Training-time augmentation (CNNSpot: Wang et al. 2020, blur sigma ~ U(0, 3), JPEG quality ~ U{30..100}).


@dataclass(frozen=True)
class RandomAugment:
    """Random resize, Gaussian blur and JPEG re-compression, each applied with its own probability.

    Order: resize, blur, JPEG, so the JPEG block grid (what a re-upload leaves last) is never smeared by a
    later op. Randomness comes from torch's global RNG (or `generator`): Lightning's
    `seed_everything(workers=True)` seeds each DataLoader worker, which makes runs reproducible. Every call
    draws the same six numbers whatever is applied, so one probability never shifts another op's draws.
    Blur sigma and resize scale are uniform in their ranges; JPEG quality is a uniform integer (inclusive).
    """

    # Defaults: DataConfig's aug_* fields, the one place they are set.
    blur_prob: float = DataConfig.aug_blur_prob
    blur_sigma: tuple[float, float] = DataConfig.aug_blur_sigma
    jpeg_prob: float = DataConfig.aug_jpeg_prob
    jpeg_quality: tuple[int, int] = DataConfig.aug_jpeg_quality
    resize_prob: float = DataConfig.aug_resize_prob
    resize_scale: tuple[float, float] = DataConfig.aug_resize_scale
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        for name in ("blur_prob", "jpeg_prob", "resize_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        _check_range("blur_sigma", self.blur_sigma, low=0.0)
        _check_range("jpeg_quality", self.jpeg_quality, low=1, high=100, integer=True)
        _check_range("resize_scale", self.resize_scale, low=0.0, strict_low=True)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def sample(self) -> list[PilOp]:
        """Draw the ops for one image (possibly none)."""
        u = [self._uniform() for _ in range(3)]  # apply? resize, blur, jpeg
        scale = self.resize_scale[0] + (self.resize_scale[1] - self.resize_scale[0]) * self._uniform()
        sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * self._uniform()
        lo, hi = self.jpeg_quality
        quality = int(torch.randint(int(lo), int(hi) + 1, (), generator=self.generator))
        ops: list[PilOp] = []
        if u[0] < self.resize_prob:
            ops.append(Rescale(scale))
        if u[1] < self.blur_prob:
            ops.append(GaussianBlur(sigma))
        if u[2] < self.jpeg_prob:
            ops.append(JpegCompress(quality))
        return ops

    def __call__(self, img: Image.Image) -> Image.Image:
        for op in self.sample():
            img = op(img)
        return img


def _check_range(
    name: str,
    r: Sequence[float],
    *,
    low: float,
    high: float | None = None,
    integer: bool = False,
    strict_low: bool = False,
) -> None:
    if len(r) != 2 or r[0] > r[1]:
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {r!r}")
    if integer and not all(float(v).is_integer() for v in r):
        raise ValueError(f"{name} must hold integers, got {r!r}")
    if (r[0] <= low) if strict_low else (r[0] < low):
        raise ValueError(f"{name} must be {'>' if strict_low else '>='} {low}, got {r!r}")
    if high is not None and r[1] > high:
        raise ValueError(f"{name} must be <= {high}, got {r!r}")


@dataclass(frozen=True)
class RandomHFlip:
    """Mirror left-right with probability `prob`; one draw from torch's RNG (or `generator`) per call."""

    prob: float = 0.5
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.prob}")

    def __call__(self, img: Image.Image) -> Image.Image:
        if float(torch.rand((), generator=self.generator)) < self.prob:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


@dataclass(frozen=True)
class RandomCrop:
    """A size x size crop at a uniformly drawn position (torch's RNG, or `generator`); images smaller than
    `size` on a side keep that side whole (the preset pads them afterwards, never resizes)."""

    size: int
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"crop size must be >= 1, got {self.size}")

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        x = int(torch.randint(0, max(0, w - self.size) + 1, (), generator=self.generator))
        y = int(torch.randint(0, max(0, h - self.size) + 1, (), generator=self.generator))
        return img.crop((x, y, x + min(w, self.size), y + min(h, self.size)))


def build_train_ops(cfg: DataConfig) -> list[PilOp]:
    """Training-only PIL ops from the `aug_*` fields of a data config (empty when all probabilities are 0)."""
    ops: list[PilOp] = []
    if cfg.aug_blur_prob > 0 or cfg.aug_jpeg_prob > 0 or cfg.aug_resize_prob > 0:
        ops.append(
            RandomAugment(
                blur_prob=cfg.aug_blur_prob,
                blur_sigma=tuple(cfg.aug_blur_sigma),
                jpeg_prob=cfg.aug_jpeg_prob,
                jpeg_quality=tuple(int(v) for v in cfg.aug_jpeg_quality),
                resize_prob=cfg.aug_resize_prob,
                resize_scale=tuple(cfg.aug_resize_scale),
            )
        )
    if cfg.aug_flip_prob > 0:
        ops.append(RandomHFlip(cfg.aug_flip_prob))
    # Rotation and jitter see the whole image (no rotated-in corners inside the crop when it is large enough);
    # masking hides patches of what the network will see, so it comes after the crop.
    ops += build_safe_ops(
        rotation_prob=cfg.aug_rotate_prob,
        rotation_degrees=cfg.aug_rotate_degrees,
        jitter_prob=cfg.aug_jitter_prob,
        jitter=cfg.aug_jitter,
        mask_prob=0.0,
    )
    if cfg.preprocess == "crop" and cfg.train_crop == "random":
        ops.append(RandomCrop(cfg.image_size))  # the preset's centre crop then keeps it whole
    ops += build_safe_ops(
        rotation_prob=0.0,
        jitter_prob=0.0,
        mask_prob=cfg.aug_mask_prob,
        mask_ratio=tuple(cfg.aug_mask_ratio),
        mask_patch=cfg.aug_mask_patch,
    )
    return ops


def has_train_augmentation(cfg: DataConfig) -> bool:
    """True when the config asks for random training ops, i.e. training inputs change from epoch to epoch."""
    return bool(build_train_ops(cfg))


# SAFE-style training augmentation (Li et al., KDD 2025): rotation, colour jitter, patch masking. Same style as
# the ops above: frozen dataclasses, torch's global RNG or a given `generator`, a fixed number of draws per call.
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
            raise ValueError(
                f"rotation interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )

    def __call__(self, img: Image.Image) -> Image.Image:
        u = float(torch.rand((), generator=self.generator))
        angle = _uniform(-self.degrees, self.degrees, self.generator)
        if u >= self.prob or angle == 0.0:
            return img
        return TF.rotate(
            _to_rgb(img),
            angle,
            interpolation=INTERPOLATIONS[self.interpolation],
            expand=False,
            fill=[self.fill] * 3,
        )


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
        ops = (
            lambda im: TF.adjust_brightness(im, factors[0]),
            lambda im: TF.adjust_contrast(im, factors[1]),
            lambda im: TF.adjust_saturation(im, factors[2]),
            lambda im: TF.adjust_hue(im, shift),
        )
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
            raise ValueError(
                f"mask ratio must be a (low, high) pair in [0, 1] with low <= high, got {self.ratio!r}"
            )
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


def build_safe_ops(
    *,
    rotation_prob: float = 1.0,
    rotation_degrees: float = 180.0,
    jitter_prob: float = 1.0,
    jitter: float = 0.5,
    mask_prob: float = 0.5,
    mask_ratio: tuple[float, float] = (0.0, 0.75),
    mask_patch: int = 16,
    generator: torch.Generator | None = None,
) -> list[PilOp]:
    """SAFE's rotation, colour jitter and masking in that order (a probability of 0 leaves an op out)."""
    ops: list[PilOp] = []
    if rotation_prob > 0:
        ops.append(RandomRotation(rotation_degrees, rotation_prob, generator=generator))
    if jitter_prob > 0:
        ops.append(ColorJitter(jitter, jitter, jitter, prob=jitter_prob, generator=generator))
    if mask_prob > 0:
        ops.append(RandomPatchMask(tuple(mask_ratio), mask_patch, mask_prob, generator=generator))
    return ops
