"""Per-image decoding + preprocessing cost, one thread (as inside a DataLoader worker), no model.

    PYTHONPATH=src .venv/bin/python bench/decode.py --n 64

For each input kind: the baseline's __getitem__ (PIL open, v1 Resize/CenterCrop/ToTensor/Normalize, numpy FFT
spectrum), Synapse-7's worker path (synapse7.io.open_image + ClassificationPreset: uint8 resize before the float
conversion; the spectrum is computed later, batched, in the model), the same with fast_decode (JPEG DCT scaling),
and torchvision.io.decode_image for reference (no EXIF / bomb / truncation handling). The batched torch FFT that
replaces the per-sample numpy FFT is timed separately, per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import best_rate, report, write_images


def _rate(fn: Callable[[str], object], paths: list[str], repeats: int) -> float:
    fn(paths[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t)
    return len(paths) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images per kind")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "synapse7-bench"))
    ap.add_argument("--out")
    a = ap.parse_args()

    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    from baseline import BaselineDataset
    from synapse7.io import open_image
    from synapse7.spectrum import spectrum_features
    from synapse7.transforms import ClassificationPreset

    torch.set_num_threads(1)
    s, r = a.image_size, round(a.image_size * 256 / 224)
    kinds = {
        "JPEG 500x375 (ImageNet-like)": dict(size=(500, 375), fmt="jpeg"),
        "JPEG 2048x1536 (camera-like)": dict(size=(2048, 1536), fmt="jpeg"),
        "PNG 512x512 (generator-like)": dict(size=(512, 512), fmt="png"),
    }
    exact = ClassificationPreset(crop_size=s, resize_size=r)
    fast = ClassificationPreset(crop_size=s, resize_size=r, fast_decode=True)

    def baseline_item(ds: BaselineDataset) -> Callable[[str], object]:
        return lambda p: ds[ds.index[p]]

    def ours(preset: ClassificationPreset) -> Callable[[str], object]:
        return lambda p: preset(open_image(p, draft_size=preset.draft_size))

    def tv_decode(p: str) -> torch.Tensor:
        t = decode_image(read_file(p), mode=ImageReadMode.RGB)
        t = F.center_crop(F.resize(t, [r], antialias=True), [s, s])
        return F.normalize(t.float().div_(255.0), exact.mean, exact.std)

    rows = []
    for kind, spec in kinds.items():
        w, h = spec["size"]
        paths = write_images(
            Path(a.work) / f"decode-{spec['fmt']}-{w}x{h}-{a.n}", a.n, size=(w, h), fmt=spec["fmt"], pool=16
        )
        ds = BaselineDataset([(p, 0) for p in paths], image_size=s, resize_size=r)
        ds.index = {p: i for i, p in enumerate(paths)}  # type: ignore[attr-defined]
        base = _rate(baseline_item(ds), paths, a.repeats)
        res = {
            "baseline __getitem__ (incl. numpy FFT)": base,
            "synapse7 worker (FFT later, batched)": _rate(ours(exact), paths, a.repeats),
            "synapse7 worker, fast_decode": _rate(ours(fast), paths, a.repeats),
            "torchvision.io.decode_image + same resize": _rate(tv_decode, paths, a.repeats),
        }
        for name, v in res.items():
            rows.append({"input": kind, "pipeline": name, "img/s (1 thread)": v, "x baseline": v / base})

    # The spectrum: per sample in numpy (baseline, inside __getitem__) vs batched torch.fft (Synapse-7).
    from baseline import numpy_spectrum

    x = torch.randn(32, 3, s, s)
    xn = x.numpy()
    np_rate = best_rate(lambda: [numpy_spectrum(xn[i]) for i in range(32)], 32, a.repeats)
    torch_rate = best_rate(lambda: spectrum_features(x), 32, a.repeats)
    rows.append(
        {
            "input": f"spectrum {s}px",
            "pipeline": "numpy per sample (baseline)",
            "img/s (1 thread)": np_rate,
            "x baseline": 1.0,
        }
    )
    rows.append(
        {
            "input": f"spectrum {s}px",
            "pipeline": "torch.fft batched (synapse7)",
            "img/s (1 thread)": torch_rate,
            "x baseline": torch_rate / np_rate,
        }
    )
    report("decoding and preprocessing", rows, extra={"n": a.n, "image_size": s, "resize": r}, out=a.out)


if __name__ == "__main__":
    main()
