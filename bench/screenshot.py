"""Screenshots of the web page and the offline API docs, taken in a real headless Chromium.

    python bench/screenshot.py [--checkpoint RUN/best.ckpt] [--out docs/screenshots]   # default: the shipped model

Serves the checkpoint on 127.0.0.1 (a free port), uploads through the page a photo (scikit-image's astronaut,
JPEG), a demo stand-in "AI" image (a photo crop through the demo's transposed-convolution decoder, PNG), a
TIFF (scikit-image's coffee) and a truncated JPEG, waits for every verdict and explanation, and writes
OUT/page.png (the whole page) and OUT/docs.png (/docs, Swagger UI served by the app itself). Each PNG is
palette-reduced when needed to stay under --max-kb. Needs chromium + chromium-driver (Debian) and selenium.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synapse7.predict import Detector  # noqa: E402
from synapse7.serve import create_app  # noqa: E402
from synapse7.serve.testing import (  # noqa: E402
    find_chromium,
    full_page_screenshot,
    headless_chromium,
    running_server,
    upload_and_wait,
)


def make_uploads(folder: Path) -> list[Path]:
    """The four files the screenshot shows, written to `folder`."""
    from skimage import data

    from synapse7.demo import STANDIN_GENERATORS

    photo, standin, tiff, broken = (
        folder / n for n in ("astronaut.jpg", "standin_transposed_conv.png", "coffee.tif", "truncated.jpg")
    )
    Image.fromarray(data.astronaut()).save(photo, quality=92)
    crop = data.chelsea()[40:296, 100:356]  # 256 x 256 photo crop
    Image.fromarray(STANDIN_GENERATORS["standin_transposed_conv"](crop, np.random.default_rng(0))).save(
        standin
    )
    Image.fromarray(data.coffee()).save(tiff)
    broken.write_bytes(photo.read_bytes()[:20_000])
    return [photo, standin, tiff, broken]


def shrink_png(path: Path, max_kb: int) -> int:
    """Re-encode `path` with a 256-colour palette when it is over `max_kb`; returns its size in bytes."""
    if path.stat().st_size <= max_kb * 1024:
        return path.stat().st_size
    img = Image.open(path).convert("RGB")
    for colours in (256, 128, 64):
        buf = io.BytesIO()
        img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, "PNG", optimize=True
        )
        if buf.tell() <= max_kb * 1024:
            break
    path.write_bytes(buf.getvalue())
    return buf.tell()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoint", metavar="CKPT", help="the model to serve (default: the shipped default model)"
    )
    ap.add_argument(
        "--out",
        default="docs/screenshots",
        metavar="DIR",
        help="where the PNGs go (default docs/screenshots)",
    )
    ap.add_argument("--max-kb", type=int, default=400, help="largest PNG kept, in KB (default 400)")
    args = ap.parse_args(argv)
    found = find_chromium()
    if isinstance(found, str):
        print(f"screenshot: error: {found}", file=sys.stderr)
        return 1
    out = Path(args.out)
    det = (
        Detector.default(device="cpu")
        if args.checkpoint is None
        else Detector.from_checkpoint(args.checkpoint, device="cpu")
    )
    with (
        tempfile.TemporaryDirectory(prefix="synapse7-shot-") as tmp,
        running_server(create_app(det)) as base,
        headless_chromium(width=1280, height=900) as driver,
    ):
        uploads = make_uploads(Path(tmp))
        upload_and_wait(driver, base, uploads)
        shots = [full_page_screenshot(driver, out / "page.png")]
        driver.set_window_size(1280, 900)
        driver.get(base + "/docs")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        shots.append(full_page_screenshot(driver, out / "docs.png"))
        for p in det.predict(list(map(str, uploads))):
            print(f"{Path(p.path).name}\t{p.label}\t{p.p_ai:.4f}\t{p.error or ''}")
    for shot in shots:
        size = shrink_png(shot, args.max_kb)
        print(f"{shot}\t{Image.open(shot).size[0]}x{Image.open(shot).size[1]}\t{size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
