"""Explanations: the analysed region against the real crop, the occlusion map against a model whose evidence is
known, the spectrum and residual on the tensor the model classifies, and the rendered PNG views."""

from __future__ import annotations

import io
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("captum")

from synapse7.config import RunConfig  # noqa: E402
from synapse7.explain import analysed_region, explain, preview_png, render_views, residual_for_mode  # noqa: E402
from synapse7.model import build_model  # noqa: E402
from synapse7.predict import Detector  # noqa: E402
from synapse7.spectrum import log_magnitude  # noqa: E402
from synapse7.transforms import ClassificationPreset  # noqa: E402


def _ramp(width: int, height: int) -> Image.Image:
    """R encodes x and G encodes y linearly, so a crop's border values say where it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "preset"),
    [
        ((300, 200), ClassificationPreset(crop_size=224, resize_size=256)),
        ((200, 300), ClassificationPreset(crop_size=224, resize_size=256)),
        ((150, 100), ClassificationPreset(crop_size=64, preprocess="crop")),
        ((120, 90), ClassificationPreset(crop_size=32, resize_size=37)),
    ],
)
def test_region_is_where_the_crop_comes_from(size: tuple[int, int], preset: ClassificationPreset) -> None:
    w, h = size
    crop = preset.to_uint8(_ramp(w, h)).float().numpy()  # (3, S, S)
    r = analysed_region(w, h, preset)
    s = preset.crop_size
    # The crop's first/last column sample the image at the centres of the region's first/last output pixels
    # (a linear ramp survives the antialiased resize). Compared in image pixels, within the ramp's rounding (half
    # a grey level) and a little of the resampling filter's.
    px, py = (r.x1 - r.x0) / s, (r.y1 - r.y0) / s
    expect = {
        "left": r.x0 + px / 2 - 0.5,
        "right": r.x1 - px / 2 - 0.5,
        "top": r.y0 + py / 2 - 0.5,
        "bottom": r.y1 - py / 2 - 0.5,
    }
    got = {
        "left": crop[0, :, 0].mean() * (w - 1) / 255,
        "right": crop[0, :, -1].mean() * (w - 1) / 255,
        "top": crop[1, 0, :].mean() * (h - 1) / 255,
        "bottom": crop[1, -1, :].mean() * (h - 1) / 255,
    }
    for side in expect:
        unit = (w if side in ("left", "right") else h) - 1
        assert got[side] == pytest.approx(expect[side], abs=0.25 + 0.5 * unit / 255), (side, r)


def test_padded_and_grid_regions() -> None:
    from synapse7.explain import analysed_regions

    # Smaller than the crop: padded, never resized; the box is the whole image and the pixels sit in the centre.
    img = _ramp(40, 30)
    preset = ClassificationPreset(crop_size=64, preprocess="crop")
    (r,) = analysed_regions(40, 30, preset)
    assert (r.x0, r.y0, r.x1, r.y1) == (0, 0, 40, 30)
    crop = preset.to_uint8(img)
    assert np.array_equal(crop[:, 17:47, 12:52].permute(1, 2, 0).numpy(), np.asarray(img))
    # A k x k grid: one box per crop, at the crops' positions, corners first and last.
    grid = ClassificationPreset(crop_size=32, preprocess="crop", crops=4)
    regions = analysed_regions(100, 70, grid)
    crops = grid.to_uint8(_ramp(100, 70))
    ramp = np.asarray(_ramp(100, 70))
    assert len(regions) == 4 and (regions[0].x0, regions[0].y0, regions[3].x1, regions[3].y1) == (
        0,
        0,
        100,
        70,
    )
    for r, c in zip(regions, crops, strict=True):
        assert np.array_equal(c.permute(1, 2, 0).numpy(), ramp[int(r.y0) : int(r.y1), int(r.x0) : int(r.x1)])


class _PatchNet(nn.Module):
    """logit = 10 x the texture (std) of rows 0:8, columns 8:16: all evidence in one known patch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x[:, :, 0:8, 8:16].flatten(1).std(dim=1)


def test_occlusion_map_finds_the_evidence() -> None:
    cfg = RunConfig().override(data={"image_size": 32, "resize_size": 32}, model={"input": "rgb"})
    det = Detector(_PatchNet(), cfg, device="cpu")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    e = explain(det, img, grid=4)
    assert e.window == 8 and e.heatmap.shape == (32, 32)
    inside = e.heatmap[0:8, 8:16]
    assert (inside > 1.0).all()  # blurring the patch away drops the logit
    outside = e.heatmap.copy()
    outside[0:8, 8:16] = 0
    assert np.abs(outside).max() < 1e-4  # nothing else matters to this model
    assert e.label == "AI" and e.p_ai == pytest.approx(
        float(torch.sigmoid(_PatchNet()(det.preset(img)[None]))[0])
    )


@pytest.fixture(scope="module")
def detector() -> Detector:
    cfg = RunConfig().override(
        data={"image_size": 32}, model={"backbone": "resnet18", "weights": "none", "input": "fft"}
    )
    torch.manual_seed(0)
    return Detector(build_model(cfg.model, load_weights=False), cfg, device="cpu")


def test_explanation_is_of_what_predict_classifies(detector: Detector) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    e = explain(detector, img)
    ref = detector.predict([img])[0]
    assert e.p_ai == pytest.approx(ref.p_ai, abs=1e-6) and e.label == ref.label
    x = detector.preset(img)[None]
    np.testing.assert_allclose(e.spectrum, log_magnitude(x)[0].mean(0).numpy(), atol=1e-5)
    np.testing.assert_array_equal(e.crop, detector.preset.to_uint8(img).permute(1, 2, 0).numpy())
    assert e.residual is None and e.residual_name is None  # fft input: no residual encoder
    assert e.image.shape == (50, 70, 3)
    assert np.abs(e.heatmap).max() > 0


def test_residual_hook_uses_the_encoders_residual(
    detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    def npr(x: torch.Tensor) -> torch.Tensor:  # stand-in with the interface of synapse7.residuals
        up = x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)
        return x - up

    monkeypatch.setitem(sys.modules, "synapse7.residuals", types.SimpleNamespace(RESIDUALS={"npr": npr}))
    assert residual_for_mode("fft") is None and residual_for_mode("rgb+fft") is None
    name, fn = residual_for_mode("rgb+npr")
    assert name == "npr" and fn is npr
    det = Detector(
        detector.net, replace(detector.cfg, model=replace(detector.cfg.model, input="npr")), device="cpu"
    )
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    e = explain(det, img, grid=2)
    assert e.residual_name == "npr"
    np.testing.assert_allclose(e.residual, npr(det.preset(img)[None])[0].abs().mean(0).numpy(), atol=1e-6)
    assert "residual" in render_views(e)


def test_views_are_pngs_with_the_region_drawn(detector: Detector) -> None:
    img = Image.fromarray(np.full((100, 200, 3), 90, np.uint8))
    e = explain(detector, img, grid=2)
    views = render_views(e)
    assert set(views) == {"regions", "crop", "spectrum", "heatmap"}
    decoded = {k: Image.open(io.BytesIO(v)) for k, v in views.items()}
    assert all(im.format == "PNG" for im in decoded.values())
    assert min(decoded["spectrum"].size) >= 224  # a 32 px map is enlarged to be seen
    regions = np.asarray(decoded["regions"].convert("RGB")).astype(int)
    f = regions.shape[1] / 200
    cx, y0 = regions.shape[1] // 2, int(e.region.y0 * f)
    assert (255, 214, 10) in {
        tuple(regions[y, cx]) for y in (y0, y0 + 1)
    }  # the outline on the box's top edge
    assert (
        regions[regions.shape[0] // 2, 2].sum() < regions[regions.shape[0] // 2, cx].sum()
    )  # outside dimmed


def test_tiff_preview_is_png() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((600, 300), np.uint16) + 30000).save(buf, format="TIFF")  # 16-bit grey
    from synapse7.io import open_image

    png = Image.open(io.BytesIO(preview_png(open_image(io.BytesIO(buf.getvalue())))))
    assert png.format == "PNG" and png.mode == "RGB" and max(png.size) == 384 and png.size[0] == 192


def test_multi_crop_model_is_explained_on_its_strongest_crop() -> None:
    cfg = RunConfig().override(
        data={"image_size": 32, "preprocess": "crop", "crops": 4},
        model={"backbone": "npr_resnet", "weights": "none", "input": "npr"},
    )
    torch.manual_seed(0)
    det = Detector(build_model(cfg.model, load_weights=False), cfg, device="cpu")
    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    e = explain(det, img, grid=4)
    assert e.p_ai == pytest.approx(det.predict([img])[0].p_ai, abs=1e-6)  # the verdict combines the 4 crops
    per_crop = det.predict_batch(det.preset.normalize(det.preset.to_uint8(img)))
    assert len(e.regions) == 4 and e.region == e.regions[int(np.argmax(per_crop))]
    assert e.heatmap.shape == (32, 32) and e.residual is not None and e.residual_name == "npr"
    assert set(render_views(e)) >= {"regions", "spectrum", "heatmap", "residual"}
