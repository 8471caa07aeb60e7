"""Why a detector decided what it did: the spectrum and residual it saw, where the evidence lies, what it read.

`explain(det, image)` computes, for one image, on the exact tensor `Detector.predict` classifies:

- the log-magnitude spectrum of the analysed crop (`synapse7.spectrum.log_magnitude`, channel mean);
- the residual an artifact encoder computes from it, for input modes that use one (`residual_for_mode`: the
  hook looks the mode's parts up in `synapse7.residuals.RESIDUALS`, e.g. "npr" for x - up(down(x)));
- an occlusion map (Zeiler & Fergus 2014, via Captum's `Occlusion`): the drop in the AI logit when each
  patch is replaced by a blurred copy of itself. Occlusion rather than Grad-CAM because it is defined in image
  coordinates for every input mode (with the spectrum as input, Grad-CAM's map lives in frequency space); a
  blurred patch rather than a flat grey one because the evidence is high-frequency, and a flat patch's hard
  edges add spectral artefacts of their own (they pushed a demo model towards AI wherever it was put);
- the region the model analysed (the centre crop after resizing), as a box in the image's own pixels.

`render_views` turns that into PNG images (writing kept apart from computing). Captum is in the `serve` extra.
"""

from __future__ import annotations

import importlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as TF

from synapse7.spectrum import log_magnitude
from synapse7.transforms import MAX_ASPECT, ClassificationPreset, grid_side

if TYPE_CHECKING:
    from synapse7.predict import Detector

ResidualFn = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_GRID = 8  # occlusion patches per side: 64 forward passes per image


@dataclass(frozen=True)
class Region:
    """A box in image pixels, [x0, x1) x [y0, y1) (floats: the resize maps it to sub-pixel bounds)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in vars(self).items()}


@dataclass(frozen=True)
class Explanation:
    """Everything shown for one image. Maps are (S, S) over the analysed crop, S = the model's image size."""

    p_ai: float
    label: str
    image: np.ndarray  # (H, W, 3) uint8: the decoded image
    crop: np.ndarray  # (S, S, 3) uint8: the analysed crop, before normalisation
    region: Region  # the shown crop's box in `image` (with several crops: the one with the most AI evidence)
    spectrum: np.ndarray  # (S, S) float32: log|FFT2| of the normalised crop, fftshifted, channel mean
    heatmap: np.ndarray  # (S, S) float32: AI-logit drop when the patch is occluded (> 0: evidence for AI)
    window: int  # occlusion patch side, in crop pixels
    residual: np.ndarray | None = None  # (S, S) float32: |residual| channel mean, for artifact encoders
    residual_name: str | None = None
    regions: tuple[Region, ...] = ()  # every analysed crop's box (one unless the model scores k*k crops)


def _centre_offset(size: int, keep: int) -> int:
    return int(round((size - keep) / 2.0))  # torchvision's center_crop rounding


def analysed_regions(width: int, height: int, preset: ClassificationPreset) -> list[Region]:
    """The boxes of a width x height image that `preset.to_uint8` keeps, one per crop (k*k with `crops`).

    Mirrors ClassificationPreset.to_uint8 step by step, with torchvision's roundings (tests/test_explain.py
    checks it against the real crops). "resize": the long side is cut to MAX_ASPECT x the short one, the short
    side scaled to the resize target; "crop": native resolution, images smaller than the crop padded (a box
    never extends past the image: the padding is not image). Then the centre crop, or the k x k grid.
    """
    if preset.preprocess == "resize":
        short, long = min(width, height), max(width, height)
        kept = long if long <= MAX_ASPECT * short else MAX_ASPECT * short + (long - MAX_ASPECT * short) % 2
        kw, kh = (kept, short) if width >= height else (short, kept)
        ox, oy = _centre_offset(width, kw), _centre_offset(height, kh)
        new_long = int(preset.resize_size * kept / short)  # torchvision's resize rounding
        rw, rh = (new_long, preset.resize_size) if kw >= kh else (preset.resize_size, new_long)
        sx, sy = rw / kw, rh / kh
    else:  # padded to at least the crop size, symmetrically (transforms.pad_to)
        rw, rh = max(width, preset.crop_size), max(height, preset.crop_size)
        ox, oy = -((rw - width) // 2), -((rh - height) // 2)
        sx = sy = 1.0
    s = preset.crop_size
    k = grid_side(preset.crops)
    if k == 1:
        cw, ch = min(rw, s), min(rh, s)
        starts = [(_centre_offset(rw, cw), _centre_offset(rh, ch))]
    else:
        cw = ch = s
        ys = [round(i * (rh - s) / (k - 1)) for i in range(k)]
        xs = [round(i * (rw - s) / (k - 1)) for i in range(k)]
        starts = [(x, y) for y in ys for x in xs]
    out = []
    for left, top in starts:
        x0, y0 = ox + left / sx, oy + top / sy
        x1, y1 = ox + (left + cw) / sx, oy + (top + ch) / sy
        out.append(Region(max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)))
    return out


def analysed_region(width: int, height: int, preset: ClassificationPreset) -> Region:
    """The box of the (first) analysed crop; see `analysed_regions`."""
    return analysed_regions(width, height, preset)[0]


def residual_for_mode(input_mode: str) -> tuple[str, ResidualFn] | None:
    """The residual an input mode's encoder computes ("npr", "rgb+npr", ...), or None for fft / rgb / rgb+fft.

    Looked up in `synapse7.residuals.RESIDUALS` (name -> batched function) when that module exists, so new
    artifact encoders show up here without a change.
    """
    try:
        residuals = importlib.import_module("synapse7.residuals")
    except ModuleNotFoundError:
        return None
    table: dict[str, ResidualFn] = getattr(residuals, "RESIDUALS", {})
    for part in input_mode.split("+"):
        if part in table:
            return part, table[part]
    return None


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)  # float32 sigmoid saturates; keep the logit finite
    return np.log(p) - np.log1p(-p)


def occlusion_map(
    det: Detector, x: torch.Tensor, *, grid: int = DEFAULT_GRID, batch: int = 16
) -> tuple[np.ndarray, int]:
    """Captum occlusion on the AI logit. x: (1, 3, S, S) normalised. Returns ((S, S) map, window side).

    The forward goes through `det.predict_batch`, so the map is of the model exactly as served (eager, bf16,
    compiled or ONNX). The baseline is x under a Gaussian blur (sigma 2 px), which removes the fine structure
    generator up-sampling leaves (periods of 2-4 px) and keeps the content.
    """
    from captum.attr import Occlusion

    s = x.shape[-1]
    window = max(1, math.ceil(s / grid))

    def forward(batch_x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_logit(det.predict_batch(batch_x)))  # (B,)

    blurred = TF.gaussian_blur(x, kernel_size=[9, 9], sigma=[2.0, 2.0])
    attr = Occlusion(forward).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, window, window),
        baselines=blurred,
        perturbations_per_eval=batch,
    )
    # Every channel of a patch is occluded together, so each channel holds the same value: keep one.
    return attr[0, 0].float().numpy(), window


def explain(det: Detector, image: Image.Image, *, grid: int = DEFAULT_GRID) -> Explanation:
    """Classify `image` (RGB) as `det.predict` does and compute what `Explanation` holds.

    A model that scores k*k crops is explained on the crop with the highest P(AI) (where the evidence for its
    verdict is strongest); the verdict itself combines every crop, as in `predict`.
    """
    preset = det.preset
    # The preset's own path (alignment ops included, which re-encode without resizing: the region maps 1:1).
    u8 = preset.to_uint8(image)
    crops = u8 if u8.dim() == 4 else u8[None]  # (K, 3, S, S)
    x_all = preset.normalize(crops)
    if len(crops) > 1:
        p_ai = float(det.predict_batch(x_all[None])[0])  # the crops' logits combined, as predict does
        idx = int(np.argmax(det.predict_batch(x_all)))
    else:
        p_ai, idx = float(det.predict_batch(x_all)[0]), 0
    x = x_all[idx : idx + 1]  # (1, 3, S, S)
    spectrum = log_magnitude(x)[0].mean(0).numpy()
    residual, residual_name = None, None
    found = residual_for_mode(det.cfg.model.input)
    if found is not None:
        residual_name, fn = found
        residual = fn(x)[0].abs().mean(0).float().numpy()
    heat, window = occlusion_map(det, x, grid=grid)
    regions = analysed_regions(*image.size, preset)
    return Explanation(
        p_ai=p_ai,
        label="AI" if p_ai >= det.threshold else "REAL",
        image=np.asarray(image),
        crop=crops[idx].permute(1, 2, 0).numpy(),
        region=regions[idx],
        spectrum=spectrum,
        heatmap=heat,
        window=window,
        residual=residual,
        residual_name=residual_name,
        regions=tuple(regions),
    )


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _scaled(a: np.ndarray, lo_q: float = 1.0, hi_q: float = 99.5) -> np.ndarray:
    """a -> [0, 1] between two percentiles (a few extreme bins, like the DC term, would flatten the rest)."""
    lo, hi = np.percentile(a, [lo_q, hi_q])
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def _colormap(name: str, a: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](a)[..., :3] * 255).astype(np.uint8)


def _png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # optimize=True took ~0.3 s more per explanation for a few % smaller files
    return buf.getvalue()


def _upscale(img: Image.Image, min_side: int) -> Image.Image:
    """Tiny crops (32 px models) enlarged by an integer factor with nearest sampling, so pixels stay pixels."""
    f = max(1, math.ceil(min_side / max(img.size)))
    return img if f == 1 else img.resize((img.width * f, img.height * f), Image.NEAREST)


def heatmap_overlay(crop: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The crop, greyed, under a diverging map: red = evidence for AI, blue = evidence for REAL."""
    m = float(np.abs(heat).max())
    norm = heat / m if m > 0 else np.zeros_like(heat)
    colour = _colormap("coolwarm", (norm + 1) / 2).astype(np.float32)
    grey = crop.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1)
    alpha = 0.25 + 0.6 * np.abs(norm)[..., None]  # strong evidence opaque, none faint
    return (grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def draw_region(
    image: np.ndarray, region: Region, *, max_side: int = 384, others: Sequence[Region] = ()
) -> Image.Image:
    """The image shrunk to `max_side`, dimmed outside the analysed regions, `region` outlined in yellow and the
    `others` (the model's other crops) in white."""
    img = Image.fromarray(image)
    f = min(1.0, max_side / max(img.size))
    if f < 1:
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
    img = _upscale(img, 160)
    f = img.width / image.shape[1]

    def box(r: Region) -> list[float]:
        return [r.x0 * f, r.y0 * f, r.x1 * f - 1, r.y1 * f - 1]

    shade = Image.new("L", img.size, 110)
    for r in (*others, region):
        ImageDraw.Draw(shade).rectangle(box(r), fill=0)
    img = Image.composite(Image.new("RGB", img.size, (0, 0, 0)), img.convert("RGB"), shade)
    width = max(2, round(max(img.size) / 160))
    draw = ImageDraw.Draw(img)
    for r in others:
        draw.rectangle(box(r), outline=(235, 235, 235), width=max(1, width // 2))
    draw.rectangle(box(region), outline=(255, 214, 10), width=width)
    return img


def preview_png(image: Image.Image, *, max_side: int = 384) -> bytes:
    """A PNG preview of any decoded image (TIFF included, which browsers do not display)."""
    img = image.convert("RGB")
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    return _png(img)


def render_views(e: Explanation, *, max_side: int = 384) -> dict[str, bytes]:
    """PNG bytes per view: regions (the image with the analysed box), crop, spectrum, heatmap, residual."""
    views = {
        "regions": _png(
            draw_region(e.image, e.region, max_side=max_side, others=[r for r in e.regions if r != e.region])
        ),
        "crop": _png(_upscale(Image.fromarray(e.crop), 224)),
        "spectrum": _png(_upscale(Image.fromarray(_colormap("magma", _scaled(e.spectrum))), 224)),
        "heatmap": _png(_upscale(Image.fromarray(heatmap_overlay(e.crop, e.heatmap)), 224)),
    }
    if e.residual is not None:
        views["residual"] = _png(_upscale(Image.fromarray(_colormap("gray", _scaled(e.residual))), 224))
    return views
