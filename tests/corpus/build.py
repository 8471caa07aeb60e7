"""Generate the bad-input corpus into a directory and say what each file must do.

What `synapse7.io.open_image` guarantees, and so what the cases expect:

* "ok": the file decodes to an 8-bit RGB image of `size` (width, height), after EXIF orientation, first
  frame of an animation, alpha dropped, 16-bit/float scaled to 8 bits.
* "bad": `BadImageError` whose message names the file and whose reason contains one of `reason`.
  Every entry point (dataset with on_bad_image="skip", predict, evaluate, audit) skips such a file and
  reports it by name; with on_bad_image="error" it raises that error.

Truncation: Pillow's LOAD_TRUNCATED_IMAGES stays off, so an image whose pixel data stops early is "bad".
A JPEG missing only its 2-byte EOI marker is "bad" too: Pillow reports it truncated because libjpeg
never saw the end of the scan. A PNG missing only IEND (all IDAT data present) is "ok": every pixel is
there. Two documented limits ("limits" category, "ok"): a JPEG cut mid-scan but ending in EOI, and a PNG
whose complete zlib stream holds fewer rows than IHDR claims, decode with the missing area filled
(grey / black) because libjpeg and zlib report a clean end; Pillow gives no way to tell.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OK, BAD = "ok", "bad"


@dataclass(frozen=True)
class Case:
    """One corpus file and the behaviour it expects from open_image."""

    name: str
    path: Path
    category: str
    expected: str  # "ok" | "bad"
    size: tuple[int, int] | None = None  # (width, height) of the RGB result, for "ok" (and root_reads)
    reason: tuple[str, ...] = ()  # for "bad": the lower-cased reason contains one of these
    note: str = ""
    root_reads: bool = False  # chmod 000: root bypasses permissions, so for root the file is "ok"
    discoverable: bool = True  # listed as a file by folder discovery (os.walk without following links)
    pixel: tuple[tuple[int, int], tuple[int, int, int]] | None = None  # ((x, y), rgb) to check, +-8


def expected_outcome(case: Case, euid: int | None = None) -> str:
    """The outcome for a process running as `euid` (default: this process)."""
    if case.root_reads and (os.geteuid() if euid is None else euid) == 0:
        return OK
    return case.expected


def summarize(cases: Sequence[Case]) -> dict[str, Counter]:
    """Counts of cases per category and expected outcome, for reports."""
    out: dict[str, Counter] = {}
    for c in cases:
        out.setdefault(c.category, Counter())[c.expected] += 1
    return out


# ----------------------------------------------------------------------------------------------------------
# Encoders (all small and deterministic for a given Pillow version).


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """An RGB image with enough detail that every JPEG/PNG truncation offset cuts real pixel data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    arr = (base + rng.integers(-40, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)
    )


PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_raw(
    w: int, h: int, idat: bytes, *, bit_depth: int = 8, color_type: int = 0, extra: bytes = b""
) -> bytes:
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    return PNG_SIG + ihdr + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bilevel_blank(w: int, h: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, built row by row so it never holds the pixels in memory."""
    row = b"\x00" + bytes((w + 7) // 8)
    per = max(1, (1 << 20) // len(row))
    comp, parts, left = zlib.compressobj(9), [], h
    while left > 0:
        k = min(left, per)
        parts.append(comp.compress(row * k))
        left -= k
    parts.append(comp.flush())
    return png_raw(w, h, b"".join(parts), bit_depth=1)


def jpeg_with_size(w: int, h: int) -> bytes:
    """A tiny JPEG whose SOF0 header claims w x h (the scan data is for 8x8)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (90, 120, 150)), "JPEG"))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def gif_with_screen(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def webp_with_size(w: int, h: int) -> bytes:
    """A lossless WebP whose VP8L header claims w x h (at most 16384 each)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (1, 2, 3)), "WEBP", lossless=True))
    sig = data.find(b"VP8L") + 8
    assert data[sig] == 0x2F, "unexpected VP8L layout"
    (v,) = struct.unpack("<I", data[sig + 1 : sig + 5])
    v = (v & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)
    data[sig + 1 : sig + 5] = struct.pack("<I", v)
    return bytes(data)


def jpeg_scan_bomb(size: int = 2048, copies: int = 1000) -> bytes:
    """A flat progressive JPEG with its last (16-byte) refinement scan repeated: ~32 KB that libjpeg needs
    ~7 s to decode at 2048x2048, since every scan walks the whole image."""
    data = encode(Image.new("L", (size, size), 128), "JPEG", quality=50, progressive=True)
    last_sos = data.rfind(b"\xff\xda")
    return data[:-2] + data[last_sos:-2] * copies + b"\xff\xd9"


def jpeg_exif(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=92, exif=exif.tobytes())


def animation(fmt: str, size: tuple[int, int] = (30, 16), **kw) -> bytes:
    frames = [Image.new("RGB", size, c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kw)


def seed_images() -> dict[str, bytes]:
    """Small valid encodings of every supported format, the starting points for fuzzing."""
    img = noise_image(24, 16, seed=3)
    gray16 = Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 170)
    return {
        "jpeg": encode(img, "JPEG", quality=85),
        "jpeg_progressive": encode(img, "JPEG", quality=85, progressive=True),
        "jpeg_exif": jpeg_exif(img, 6),
        "jpeg_cmyk": encode(img.convert("CMYK"), "JPEG"),
        "png": encode(img, "PNG"),
        "png_palette": encode(img.convert("P"), "PNG", transparency=0),
        "png_gray16": encode(gray16, "PNG"),
        "png_rgba": encode(img.convert("RGBA"), "PNG"),
        "apng": animation("PNG", (12, 8)),
        "gif": animation("GIF", (12, 8)),
        "webp": encode(img, "WEBP", quality=80),
        "webp_lossless": encode(img, "WEBP", lossless=True),
        "webp_anim": animation("WEBP", (12, 8), lossless=True),
        "bmp": encode(img, "BMP"),
        "tiff": encode(img, "TIFF"),
        "tiff_gray16": encode(gray16, "TIFF"),
    }


# ----------------------------------------------------------------------------------------------------------
# The corpus.

_Maker = Callable[[Path], None]


def _bytes(data: bytes) -> _Maker:
    return lambda p: p.write_bytes(data)


def _symlink(target: str, *, target_is_directory: bool = False) -> _Maker:
    return lambda p: os.symlink(target, p, target_is_directory=target_is_directory)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _specs() -> list[tuple[str, str, str, _Maker, dict]]:
    """(file name, category, expected, maker, extra Case fields). Names may be bytes (non-UTF-8)."""
    img = noise_image(64, 48)
    jpg, png = encode(img, "JPEG", quality=90), encode(img, "PNG")
    small = noise_image(40, 20, seed=1)
    gray16 = Image.fromarray(np.arange(40 * 20, dtype=np.uint16).reshape(20, 40) * 80)
    rgb16 = png_raw(
        6,
        4,
        zlib.compress(b"".join(b"\x00" + bytes(range(r * 36, r * 36 + 36)) for r in range(4))),
        bit_depth=16,
        color_type=2,
    )
    palette_trns = Image.new("P", (40, 20), 0)
    palette_trns.putpalette([255, 0, 0] * 256)
    nanf = np.array([[np.nan, np.inf, 1.0, -np.inf, 0.5]] * 3, dtype=np.float32)
    ztxt_bomb = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(8 << 20), 9))
    tall = png_bilevel_blank(3, 70000)
    wide = png_bilevel_blank(70000, 3)
    n_jpg, n_png = len(jpg), len(png)
    too_large = ("too large",)
    truncated = ("truncated",)
    unknown = ("not a recognised",)
    corrupt = ("corrupt",)
    cant_access = ("cannot access",)
    not_file = ("not a regular file",)
    S = (64, 48)
    specs: list[tuple[str, str, str, _Maker, dict]] = [
        # zero-byte files
        ("empty.jpg", "empty", BAD, _bytes(b""), dict(reason=("zero-byte",))),
        ("empty.png", "empty", BAD, _bytes(b""), dict(reason=("zero-byte",))),
        ("EMPTY.JPG", "empty", BAD, _bytes(b""), dict(reason=("zero-byte",))),
        # truncation (see module docstring for why the JPEG without EOI is bad and the PNG without IEND ok)
        ("trunc_jpg_10.jpg", "truncated", BAD, _bytes(jpg[:10]), dict(reason=truncated + unknown)),
        ("trunc_jpg_300.jpg", "truncated", BAD, _bytes(jpg[:300]), dict(reason=truncated)),
        ("trunc_jpg_half.jpg", "truncated", BAD, _bytes(jpg[: n_jpg // 2]), dict(reason=truncated)),
        (
            "trunc_jpg_no_eoi.jpg",
            "truncated",
            BAD,
            _bytes(jpg[:-2]),
            dict(reason=truncated, note="only the EOI marker missing"),
        ),
        ("trunc_png_10.png", "truncated", BAD, _bytes(png[:10]), dict(reason=truncated + unknown)),
        ("trunc_png_100.png", "truncated", BAD, _bytes(png[:100]), dict(reason=truncated)),
        ("trunc_png_half.png", "truncated", BAD, _bytes(png[: n_png // 2]), dict(reason=truncated)),
        ("trunc_png_no_iend.png", "truncated", OK, _bytes(png[:-12]), dict(size=S, note="all IDAT present")),
        ("trunc_png_minus2.png", "truncated", OK, _bytes(png[:-2]), dict(size=S, note="IEND CRC cut")),
        (
            "comma, space.jpg",
            "truncated",
            BAD,
            _bytes(jpg[: n_jpg // 3]),
            dict(reason=truncated, note="name needs CSV quoting"),
        ),
        # wrong magic bytes / not an image: content is sniffed, the extension does not matter
        ("png_named.jpg", "wrong_magic", OK, _bytes(png), dict(size=S)),
        ("jpeg_named.png", "wrong_magic", OK, _bytes(jpg), dict(size=S)),
        ("gif_named.webp", "wrong_magic", OK, _bytes(animation("GIF")), dict(size=(30, 16))),
        ("random.png", "wrong_magic", BAD, _bytes(random.Random(7).randbytes(4096)), dict(reason=unknown)),
        (
            "random_png_magic.png",
            "wrong_magic",
            BAD,
            _bytes(PNG_SIG + random.Random(8).randbytes(4096)),
            dict(reason=unknown + corrupt),
        ),
        (
            "text.jpg",
            "wrong_magic",
            BAD,
            _bytes(b"this is a text file, not a JPEG\n" * 20),
            dict(reason=unknown),
        ),
        ("soi_eoi.jpg", "wrong_magic", BAD, _bytes(b"\xff\xd8\xff\xd9"), dict(reason=unknown + truncated)),
        (
            "html.png",
            "wrong_magic",
            BAD,
            _bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"),
            dict(reason=unknown),
        ),
        ("png_header_only.png", "corrupt", BAD, _bytes(png[:33]), dict(reason=unknown + truncated)),
        (
            "png_zero_width.png",
            "corrupt",
            BAD,
            _bytes(png_raw(0, 5, zlib.compress(b"\0" * 5))),
            dict(reason=unknown + ("empty image",)),
        ),
        (
            "png_bad_crc.png",
            "corrupt",
            BAD,
            _bytes(png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]),
            dict(reason=unknown + corrupt),
        ),
        (
            "png_bad_zlib.png",
            "corrupt",
            BAD,
            _bytes(png_raw(5, 5, b"\x78\x9c" + b"\xff" * 20)),
            dict(reason=corrupt),
        ),
        (
            "png_bad_filter.png",
            "corrupt",
            BAD,
            _bytes(png_raw(5, 5, zlib.compress(b"\x09" + bytes(29)))),
            dict(reason=corrupt),
        ),
        # documented limits: the decoder reports a clean end, so the missing area is filled in
        (
            "limit_jpg_cut_with_eoi.jpg",
            "limits",
            OK,
            _bytes(jpg[: n_jpg // 2] + b"\xff\xd9"),
            dict(size=S, note="libjpeg fills the rest grey"),
        ),
        (
            "limit_png_short_idat.png",
            "limits",
            OK,
            _bytes(png_raw(5, 5, zlib.compress(bytes(12)))),
            dict(size=(5, 5), note="zlib ends early; rows filled black"),
        ),
        # extreme sizes (under the pixel limit)
        (
            "tiny_1x1.png",
            "size",
            OK,
            _bytes(encode(Image.new("RGB", (1, 1), (7, 8, 9)), "PNG")),
            dict(size=(1, 1), pixel=((0, 0), (7, 8, 9))),
        ),
        (
            "tiny_1x1.jpg",
            "size",
            OK,
            _bytes(encode(Image.new("RGB", (1, 1), (200, 100, 50)), "JPEG")),
            dict(size=(1, 1)),
        ),
        ("tiny_1x1.gif", "size", OK, _bytes(encode(Image.new("P", (1, 1)), "GIF")), dict(size=(1, 1))),
        ("tall_3x70000.png", "size", OK, _bytes(tall), dict(size=(3, 70000))),
        ("wide_70000x3.png", "size", OK, _bytes(wide), dict(size=(70000, 3))),
        # decompression bombs: rejected from the header, before any pixel is decoded
        (
            "bomb_png_20000x20000.png",
            "bomb",
            BAD,
            _bytes(png_bilevel_blank(20000, 20000)),
            dict(reason=too_large),
        ),
        (
            "bomb_png_10000x10000.png",
            "bomb",
            BAD,
            _bytes(png_bilevel_blank(10000, 10000)),
            dict(reason=too_large, note="between PIL's warning and error thresholds"),
        ),
        (
            "bomb_jpg_65500x65500.jpg",
            "bomb",
            BAD,
            _bytes(jpeg_with_size(65500, 65500)),
            dict(reason=too_large),
        ),
        (
            "bomb_gif_65535x65535.gif",
            "bomb",
            BAD,
            _bytes(gif_with_screen(65535, 65535)),
            dict(reason=too_large),
        ),
        (
            "bomb_webp_16384x16384.webp",
            "bomb",
            BAD,
            _bytes(webp_with_size(16384, 16384)),
            dict(reason=too_large),
        ),
        (
            "bomb_jpg_scans.jpg",
            "bomb",
            BAD,
            _bytes(jpeg_scan_bomb()),
            dict(reason=("too many jpeg scans",), note="decoding-time bomb: 1000 copies of a 16-byte scan"),
        ),
        (
            "bomb_png_ztxt.png",
            "bomb",
            BAD,
            _bytes(png_raw(5, 5, zlib.compress(bytes(30)), extra=ztxt_bomb)),
            dict(reason=too_large, note="8 MiB zTXt metadata chunk"),
        ),
        # colour modes and bit depths
        (
            "gray16.png",
            "mode",
            OK,
            _bytes(encode(gray16, "PNG")),
            dict(size=(40, 20), pixel=((0, 0), (0, 0, 0))),
        ),
        ("rgb16.png", "mode", OK, _bytes(rgb16), dict(size=(6, 4))),
        ("gray16.tif", "mode", OK, _bytes(encode(gray16, "TIFF")), dict(size=(40, 20))),
        (
            "int32.tiff",
            "mode",
            OK,
            _bytes(encode(Image.fromarray(np.arange(40, dtype=np.int32).reshape(4, 10) * 9999), "TIFF")),
            dict(size=(10, 4)),
        ),
        (
            "float_nan_inf.tif",
            "mode",
            OK,
            _bytes(encode(Image.fromarray(nanf, "F"), "TIFF")),
            dict(size=(5, 3), note="NaN/inf pixels"),
        ),
        (
            "cmyk.jpg",
            "mode",
            OK,
            _bytes(encode(Image.new("CMYK", (40, 20), (0, 255, 0, 0)), "JPEG")),
            dict(size=(40, 20), pixel=((5, 5), (255, 0, 255))),
        ),
        (
            "palette.png",
            "mode",
            OK,
            _bytes(encode(Image.new("RGB", (40, 20), (9, 99, 199)).convert("P"), "PNG")),
            dict(size=(40, 20)),
        ),
        (
            "palette_trns.png",
            "mode",
            OK,
            _bytes(encode(palette_trns, "PNG", transparency=0)),
            dict(size=(40, 20), pixel=((3, 3), (255, 0, 0))),
        ),
        (
            "la.png",
            "mode",
            OK,
            _bytes(encode(Image.new("LA", (40, 20), (128, 50)), "PNG")),
            dict(size=(40, 20), pixel=((0, 0), (128, 128, 128))),
        ),
        (
            "rgba.png",
            "mode",
            OK,
            _bytes(encode(Image.new("RGBA", (40, 20), (10, 20, 30, 0)), "PNG")),
            dict(size=(40, 20), pixel=((0, 0), (10, 20, 30))),
        ),
        (
            "bilevel.png",
            "mode",
            OK,
            _bytes(encode(Image.new("1", (40, 20), 1), "PNG")),
            dict(size=(40, 20), pixel=((0, 0), (255, 255, 255))),
        ),
        ("gray.jpg", "mode", OK, _bytes(encode(small.convert("L"), "JPEG")), dict(size=(40, 20))),
        ("progressive.jpg", "mode", OK, _bytes(encode(small, "JPEG", progressive=True)), dict(size=(40, 20))),
        # animations: the first frame
        (
            "anim.gif",
            "animated",
            OK,
            _bytes(animation("GIF")),
            dict(size=(30, 16), pixel=((0, 0), (255, 0, 0))),
        ),
        (
            "anim.webp",
            "animated",
            OK,
            _bytes(animation("WEBP", lossless=True)),
            dict(size=(30, 16), pixel=((0, 0), (255, 0, 0))),
        ),
        (
            "anim_apng.png",
            "animated",
            OK,
            _bytes(animation("PNG")),
            dict(size=(30, 16), pixel=((0, 0), (255, 0, 0))),
        ),
        # EXIF orientation is applied (6 and 8 swap width and height)
        ("exif_orient6.jpg", "exif", OK, _bytes(jpeg_exif(small, 6)), dict(size=(20, 40))),
        ("exif_orient8.jpg", "exif", OK, _bytes(jpeg_exif(small, 8)), dict(size=(20, 40))),
        ("exif_orient3.jpg", "exif", OK, _bytes(jpeg_exif(small, 3)), dict(size=(40, 20))),
        ("exif_orient9_invalid.jpg", "exif", OK, _bytes(jpeg_exif(small, 9)), dict(size=(40, 20))),
        (
            "exif_junk.jpg",
            "exif",
            OK,
            _bytes(encode(small, "JPEG", exif=b"Exif\x00\x00" + b"\xde\xad" * 20)),
            dict(size=(40, 20), note="unparseable EXIF is ignored"),
        ),
        # extensions
        ("UPPER.JPG", "extension", OK, _bytes(jpg), dict(size=S)),
        ("UPPER.PNG", "extension", OK, _bytes(png), dict(size=S)),
        ("photo.jpeg", "extension", OK, _bytes(jpg), dict(size=S)),
        ("still.webp", "extension", OK, _bytes(encode(small, "WEBP")), dict(size=(40, 20))),
        ("image.bmp", "extension", OK, _bytes(encode(small, "BMP")), dict(size=(40, 20))),
        # unreadable (only where the process is not root)
        (
            "unreadable.png",
            "unreadable",
            BAD,
            _bytes(encode(small, "PNG")),
            dict(reason=("permission",), root_reads=True, size=(40, 20)),
        ),
        # symlinks and special files: never followed into a loop, never opened when not a regular file
        ("self_loop.jpg", "symlink", BAD, _symlink("self_loop.jpg"), dict(reason=cant_access)),
        ("pair_a.jpg", "symlink", BAD, _symlink("pair_b.jpg"), dict(reason=cant_access)),
        ("pair_b.jpg", "symlink", BAD, _symlink("pair_a.jpg"), dict(reason=cant_access)),
        ("dangling.png", "symlink", BAD, _symlink("no_such_file.png"), dict(reason=cant_access)),
        (
            "dir_link.png",
            "symlink",
            BAD,
            _symlink(".", target_is_directory=True),
            dict(reason=not_file, discoverable=False, note="a directory link named like an image"),
        ),
        ("fifo.png", "special", BAD, _fifo, dict(reason=not_file, note="opening it would block forever")),
        # file names that are not valid UTF-8 (or not ASCII)
        (b"\xff\xfe.png", "name", OK, _bytes(png), dict(size=S)),
        (b"bad\xe9name.jpg", "name", BAD, _bytes(b""), dict(reason=("zero-byte",))),
        (b"trunc_\xc3\x28.jpg", "name", BAD, _bytes(jpg[: n_jpg // 2]), dict(reason=truncated)),
        ("ünïcødé 画像.jpg", "name", OK, _bytes(jpg), dict(size=S)),
    ]
    return specs


def build_corpus(directory: str | os.PathLike, *, subdirs: Sequence[str] = ()) -> list[Case]:
    """Write every case into `directory` (spread round-robin over `subdirs` if given) and return them.

    Each target folder also gets directory symlink loops (`loop -> .`, `loop_a <-> loop_b`), which are not
    cases: folder discovery must simply not hang on them. The unreadable case is chmod 000; everything
    else is world-readable so a test can re-check the corpus as an unprivileged user.
    """
    root = Path(directory)
    targets = [root / s for s in subdirs] or [root]
    for t in targets:
        t.mkdir(parents=True, exist_ok=True)
        os.symlink(".", t / "loop", target_is_directory=True)
        os.symlink("loop_b", t / "loop_a")
        os.symlink("loop_a", t / "loop_b")
    cases, pair_dir = [], targets[0]
    for i, (fname, category, expected, make, extra) in enumerate(_specs()):
        t = targets[i % len(targets)]
        if fname == "pair_a.jpg":
            pair_dir = t
        elif fname == "pair_b.jpg":  # the two links of a loop must share a folder
            t = pair_dir
        path = Path(os.fsdecode(os.path.join(os.fsencode(t), os.fsencode(fname))))
        make(path)
        name = os.fsdecode(fname)
        cases.append(Case(name=name, path=path, category=category, expected=expected, **extra))
    for c in cases:
        if c.category == "unreadable":
            os.chmod(c.path, 0)
        elif c.path.is_file() and not c.path.is_symlink():
            os.chmod(c.path, 0o644)
    for d in [root, *targets]:
        os.chmod(d, 0o755)
    return cases
