"""Image decoding with clear errors, and atomic file writes.

Every image that enters Synapse-7 (training, evaluation, prediction, audit, web API) is decoded by
`load_image`, so a bad file behaves the same way everywhere: it raises `BadImageError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 89_478_485


class BadImageError(Exception):
    """An image could not be decoded. `path` names the file, `reason` says why."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (16-bit, CMYK, palette, LA, RGBA, 1-bit, float) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's own convert clips 16-bit values to 255; scale by the actual range instead.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        # Alpha is dropped (composited on black would invent edges); colour channels are kept as stored.
        img = img.convert("RGBA")
        return Image.fromarray(np.asarray(img)[..., :3], "RGB")
    return img.convert("RGB")


def open_image(source: str | os.PathLike | IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | os.PathLike | None = None) -> Image.Image:
    """Decode `source` (a path or a binary file object) to an 8-bit RGB PIL image.

    Raises `BadImageError` for zero-byte, truncated, corrupt, unreadable or oversized input. Animated images
    give their first frame; EXIF orientation is applied.
    """
    label = name if name is not None else (source if isinstance(source, (str, os.PathLike)) else None)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        try:
            st = p.stat()
        except OSError as e:
            raise BadImageError(label, f"cannot access file ({e.strerror or e})") from e
        if not p.is_file():
            raise BadImageError(label, "not a regular file")
        if st.st_size == 0:
            raise BadImageError(label, "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            w, h = img.size
            if w * h > max_pixels:
                raise BadImageError(label, f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
            if w < 1 or h < 1:
                raise BadImageError(label, f"empty image: {w}x{h}")
            img.seek(0)  # first frame of animations
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(label, f"decompression bomb: {e}") from e
    except PermissionError as e:
        raise BadImageError(label, f"permission denied ({e.strerror})") from e
    except Image.UnidentifiedImageError as e:
        raise BadImageError(label, "not a recognised image (unknown or wrong magic bytes)") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError,
            MemoryError, struct.error) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated file ({msg})"
        raise BadImageError(label, f"corrupt image: {msg}") from e


# ----------------------------------------------------------------------------------------------------------
# Atomic writes: a reader, or a run killed mid-way, sees either the old complete file or the new one.


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def ensure_writable_dir(path: str | os.PathLike, *, min_free_bytes: int = 50 * 2**20) -> Path:
    """Create `path` if needed and check that it is writable with room to spare, before any long work."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output directory {p}: {e.strerror or e}") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {p} is not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=p, prefix=".synapse7-write-test-"):
            pass
    except OSError as e:
        raise OSError(f"output directory {p} is not writable: {e.strerror or e}") from e
    free = shutil.disk_usage(p).free
    if free < min_free_bytes:
        raise OSError(f"output directory {p} has only {free / 2**20:.1f} MiB free; need {min_free_bytes / 2**20:.0f} MiB")
    return p
