"""Image decoding with clear errors, and atomic file writes.

Every image that enters Synapse-7 (training, evaluation, prediction, audit, web API) is decoded by
`open_image`, so a bad file behaves the same way everywhere: it raises `BadImageError` naming the file, and
never any other exception. tests/corpus/build.py lists the inputs this is checked on (zero-byte, truncated,
wrong magic, bombs, odd modes, animations, EXIF, unreadable, symlink loops, FIFOs, non-UTF-8 names) and
tests/test_fuzz.py fuzzes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import tempfile
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

# The one list of image extensions: folder scans (prediction, datasets, audit) take these, in any case, and
# README.md lists the same (tests/test_cli.py checks both). Files without an extension are taken when their
# first bytes are those of one of these formats, as naming them directly would read them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The decoders tried, whatever the extension says (content is sniffed). Limiting them to the formats of
# IMAGE_EXTENSIONS keeps Pillow's ~40 other plugins (EPS runs Ghostscript; TGA, PCX, SPIDER... accept
# almost any bytes) out of reach of untrusted input. JPEG covers MPO.
DECODE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF")
DEFAULT_MAX_PIXELS = 89_478_485
# libjpeg decodes every scan over the whole image, and a scan can be a few bytes: a 177 KB progressive JPEG
# of 2048x2048 with 10,000 copies of one refinement scan took 76 s to decode. Encoders write about 10 scans.
MAX_JPEG_SCANS = 100


def printable_path(path: str | os.PathLike | bytes) -> str:
    """A form of `path` that can always be printed or written as UTF-8, even for non-UTF-8 file names."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


class BadImageError(Exception):
    """An image could not be decoded. `path` names the file (printable form), `reason` says why."""

    def __init__(self, path: str | os.PathLike | bytes | None, reason: str):
        self.path = printable_path(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# Leading bytes of the formats in DECODE_FORMATS (WebP: RIFF....WEBP, checked below).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def has_image_magic(path: str | os.PathLike) -> bool:
    """Whether the file starts like a JPEG, PNG, GIF, BMP, TIFF or WebP (False when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_image_file(path: str | os.PathLike) -> bool:
    """A folder scan's test: an image extension (any case), or no extension and an image's magic bytes."""
    p = Path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    return p.suffix == "" and os.path.isfile(p) and has_image_magic(p)


def extensions_text() -> str:
    """The accepted extensions for messages: '.jpg, .jpeg, ...' and the extension-less rule."""
    return ", ".join(IMAGE_EXTENSIONS) + " (any case), or no extension with an image's content"


def walk_images(root: str | os.PathLike) -> tuple[list[str], int]:
    """Image files under `root` (sorted, recursive, hidden files and symlinked dirs skipped; see
    `is_image_file`) and a count of the other files."""
    found, other = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            if is_image_file(path):
                found.append(path)
            else:
                other += 1
    return found, other


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
            finite = np.isfinite(arr)  # float TIFFs may hold NaN/inf: scale by the finite range, NaN -> 0
            lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
            arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
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


def open_image(
    source: str | os.PathLike | bytes | IO[bytes],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | os.PathLike | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode `source` (a path or a binary file object) to an 8-bit RGB PIL image, fully loaded.

    Raises `BadImageError` (and nothing else) for zero-byte, truncated, corrupt, unreadable, non-regular or
    oversized input; `name` (default: the path) is what the error names. Animated images give their first
    frame; EXIF orientation is applied (unparseable EXIF is ignored). Images over `max_pixels` (at most
    Pillow's own MAX_IMAGE_PIXELS, which also applies) are rejected from the header, before decoding.
    Truncated pixel data is an error (Pillow's LOAD_TRUNCATED_IMAGES stays off); see tests/corpus/build.py
    for the two truncations decoders cannot see. No file handle outlives the call. `draft_size` (JPEG only,
    opt-in): let libjpeg-turbo decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while both sides stay >=
    draft_size; other formats ignore it.
    """
    is_path = isinstance(source, (str, bytes, os.PathLike))
    label = name if name is not None else (source if is_path else None)
    if is_path:
        try:
            st = os.stat(source)
        except OSError as e:
            raise BadImageError(label, f"cannot access file ({e.strerror or e})") from e
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise BadImageError(label, "not a regular file")
        if st.st_size == 0:
            raise BadImageError(label, "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=DECODE_FORMATS) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImageError(
                        label, f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}"
                    )
                if w < 1 or h < 1:
                    raise BadImageError(label, f"empty image: {w}x{h}")
                img.seek(0)  # first frame of animations
                if img.format in ("JPEG", "MPO") and _jpeg_scans(img.fp, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
                    raise BadImageError(
                        label, f"too many JPEG scans (> {MAX_JPEG_SCANS}): a decoding-time bomb"
                    )
                if draft_size is not None and img.format == "JPEG":
                    img.draft(img.mode, (draft_size, draft_size))
                img.load()
                drafted = img.size
                try:
                    out = ImageOps.exif_transpose(img)  # a new image, independent of the file
                except Exception:  # noqa: BLE001 - broken EXIF is metadata damage, the pixels are fine
                    out = img.copy()
                rgb = _to_rgb(out)
                if drafted != (w, h):  # reduced-scale decode: keep the full size for exact resize geometry
                    rgb.info["full_size"] = (w, h) if out.size == drafted else (h, w)
                return rgb
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(label, f"image too large (decompression bomb guard): {e}") from e
    except PermissionError as e:
        raise BadImageError(label, f"permission denied ({e.strerror})") from e
    except Image.UnidentifiedImageError as e:
        if not is_path and _is_empty(source):
            raise BadImageError(label, "empty input (zero bytes)") from e
        kind = _unsupported_kind(source)
        if kind:
            article = "an" if kind[0] in "AEIOU" else "a"
            raise BadImageError(
                label,
                f"{article} {kind} image, which Synapse-7 does not read (it reads JPEG, PNG, WebP, BMP, GIF "
                f"and TIFF): convert it first, e.g. to PNG, which keeps the decoded pixels; the model has never "
                f"seen {kind}'s codec, so read its score on such a photo with care",
            ) from e
        raise BadImageError(label, "not a recognised image (unknown format or wrong magic bytes)") from e
    except MemoryError as e:
        raise BadImageError(label, "image too large: out of memory while decoding") from e
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        KeyError,
        ZeroDivisionError,
        struct.error,
    ) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated file ({msg})"
        raise BadImageError(label, f"corrupt image: {msg}") from e
    except Exception as e:  # noqa: BLE001 - a decoder bug on hostile bytes is still a bad image, not a crash
        raise BadImageError(label, f"corrupt image: decoder failed ({type(e).__name__}: {e})") from e


def load_image(
    source: str | os.PathLike | bytes | IO[bytes] | Image.Image | np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | os.PathLike | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Any image input -> 8-bit RGB PIL image: the one decode path of Synapse-7.

    Paths and binary file objects go through `open_image`; `bytes` are encoded image data (never a path);
    PIL images are converted by the same rules as decoded files (16-bit and float scaled by their range, not
    clipped); HW or HWC arrays are taken as 8-bit pixels. Raises `BadImageError` naming `name` on bad input.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        if (
            source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[-1] not in (1, 3, 4))
            or not source.size
        ):
            raise BadImageError(name, f"array of shape {source.shape} is not an HxW or HxWx{{1,3,4}} image")
        arr = source if source.ndim == 3 else source[..., None]
        arr = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), "RGB")
    if isinstance(source, bytes):
        return open_image(
            BytesIO(source), max_pixels=max_pixels, name=name or "<bytes>", draft_size=draft_size
        )
    return open_image(source, max_pixels=max_pixels, name=name, draft_size=draft_size)


def _jpeg_scans(fp: IO[bytes], limit: int) -> int:
    """Number of SOS markers in the JPEG stream `fp` (counting stops past `limit`); leaves fp where it was."""
    pos = fp.tell()
    try:
        fp.seek(0)
        data = fp.read()
    finally:
        fp.seek(pos)
    i, n, scans = 2, len(data), 0
    while i + 1 < n and scans <= limit:
        if data[i] != 0xFF:  # entropy-coded data: jump to the next 0xFF
            i = data.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # stuffed 0xFF, TEM, RSTn: no length
            i += 2
        elif marker == 0xD9:  # EOI
            break
        else:  # a segment with a length (APPn, DQT, DHT, SOF, SOS header...); payloads are skipped whole
            scans += marker == 0xDA
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return scans


# ISO-BMFF brands (bytes 8-12, after the "ftyp" box type) of the phone and web formats people try most often.
_BMFF_KINDS = {
    **dict.fromkeys((b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"), "HEIC/HEIF"),
    **dict.fromkeys((b"avif", b"avis"), "AVIF"),
}


def _unsupported_kind(source: str | os.PathLike | bytes | IO[bytes]) -> str | None:
    """'HEIC/HEIF', 'AVIF' or 'JPEG XL' when `source` starts like one of them (never raises)."""
    try:
        if isinstance(source, (str, bytes, os.PathLike)):
            with open(source, "rb") as f:
                head = f.read(12)
        else:
            pos = source.tell()
            source.seek(0)
            head = source.read(12)
            source.seek(pos)
    except (OSError, ValueError, AttributeError):
        return None
    if head[4:8] == b"ftyp":
        return _BMFF_KINDS.get(head[8:12])
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    return None


def _is_empty(fp: IO[bytes]) -> bool:
    try:
        pos = fp.tell()
        empty = fp.read(1) == b""
        fp.seek(pos)
        return empty
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------------
# Atomic writes: a reader, or a run killed mid-way, sees either the old complete file or the new one.


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


_DEFAULT_FILE_MODE = 0o666 & ~_umask()


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
        # mkstemp makes the file 0600; give it the mode a plain open() would (or the replaced file's mode).
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = _DEFAULT_FILE_MODE
        os.chmod(tmp_path, mode)
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
        raise OSError(
            f"output directory {p} has only {free / 2**20:.1f} MiB free; need {min_free_bytes / 2**20:.0f} MiB"
        )
    return p
