"""Detector.predict and Detector.predict_paths share one decode path and one preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synapse7.demo import load_photos
from synapse7.predict import Detector


@pytest.fixture(scope="module")
def checkpoint(resize32_checkpoint: Path) -> Path:
    # preprocess=resize so that fast_decode (JPEG DCT scaling) applies: 32 px crop, resize 37, draft >= 74 px.
    return resize32_checkpoint


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Photo crops of 320x300 px saved as JPEG (large enough for a 1/4-scale DCT decode), and a bad file."""
    d = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, photo in enumerate(load_photos()[:4]):
        p = d / f"{i}.jpg"
        Image.fromarray(photo[:300, :320]).save(p, quality=90)
        paths.append(str(p))
    (d / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return [*paths[:2], str(d / "bad.jpg"), *paths[2:]]


@pytest.mark.parametrize("fast_decode", [False, True])
def test_predict_equals_predict_paths(checkpoint: Path, jpegs: list[str], fast_decode: bool) -> None:
    det = Detector.from_checkpoint(checkpoint, device="cpu", fast_decode=fast_decode)
    assert det.preset.draft_size == (74 if fast_decode else None)
    streamed = list(det.predict_paths(jpegs, batch_size=2, num_workers=0))
    in_memory = det.predict(jpegs, batch_size=3)
    assert [p.path for p in streamed] == [p.path for p in in_memory] == jpegs
    assert [p.label for p in streamed] == [p.label for p in in_memory]
    assert in_memory[2].label == "ERROR" and in_memory[2].error == streamed[2].error
    good = [i for i in range(len(jpegs)) if i != 2]
    np.testing.assert_allclose(
        [streamed[i].p_ai for i in good], [in_memory[i].p_ai for i in good], rtol=0, atol=1e-6
    )
    # bytes and PIL inputs of the same files go the same way (PIL images are already decoded: full size)
    raw = [Path(jpegs[i]).read_bytes() for i in good]
    from_bytes = [p.p_ai for p in det.predict(raw)]
    np.testing.assert_allclose(from_bytes, [in_memory[i].p_ai for i in good], rtol=0, atol=1e-6)


def test_fast_decode_changes_the_input(checkpoint: Path, jpegs: list[str]) -> None:
    # Guards the test above: with fast_decode the files really are decoded at reduced scale.
    full = Detector.from_checkpoint(checkpoint, device="cpu").predict(jpegs)
    fast = Detector.from_checkpoint(checkpoint, device="cpu", fast_decode=True).predict(jpegs)
    assert any(abs(a.p_ai - b.p_ai) > 1e-6 for a, b in zip(full, fast, strict=True) if a.error is None)


def test_16bit_pil_input_is_scaled_not_clipped(checkpoint: Path, tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64)
    arr = (ramp + np.random.default_rng(0).normal(0, 3000, ramp.shape)).clip(0, 65535).astype(np.uint16)
    arr[0, 0], arr[-1, -1] = 0, 65535  # full range: file decode (mode I, range-scaled) equals I;16 / 257
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    img.save(tmp_path / "g16.png")
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    from_pil, from_file, clipped = det.predict([img, str(tmp_path / "g16.png"), img.convert("RGB")])
    assert from_pil.p_ai == pytest.approx(from_file.p_ai, abs=1e-6)
    assert abs(from_pil.p_ai - clipped.p_ai) > 1e-4  # PIL's own convert clips to 255: a different input


def test_compile_for_inference_gives_the_eager_output() -> None:
    # Detector(compile=True) runs this (inductor freezing, which folds BatchNorm); run 3 of docs/performance.md ran it.
    import torch
    from torch import nn

    from synapse7.predict import compile_for_inference

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1)
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 3, 8, 8)
        want = net(x)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with torch.inference_mode():
        got = compile_for_inference(net)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # freezing really ran: inductor folded the BatchNorm into the convolution (it does not without freezing,
    # e.g. with torch.compile(options={"freezing": True}) on torch 2.14)
    assert counters["inductor"]["binary_folding"] > 0
