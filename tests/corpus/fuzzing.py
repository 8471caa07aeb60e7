"""The fuzzing harness shared by tests/test_fuzz.py (Hypothesis) and bench/fuzz.py (time-bounded loop).

An input is described by a `Plan`: a valid seed image (or random bytes behind a format's magic) and a list
of byte-level mutations (bit flips, overwrites with boundary values, truncation, deletion, duplication,
insertion, splices with another seed), optionally with every PNG chunk CRC repaired so the mutation reaches
past PNG's checksums into the decoder. `build_checker` gives a function that feeds the bytes to `open_image`,
from a file, from BytesIO and from BytesIO with reduced-scale JPEG decoding (`draft_size`), then each
result to `ClassificationPreset(crop_size=32, resize_size=36)`.

The property: each route either gives a finite float32 (3, 32, 32) tensor or raises `BadImageError` naming
the input, all routes agree, and nothing takes longer than the time bound. Anything else is a `Finding`.
"""

from __future__ import annotations

import contextlib
import io
import random
import signal
import struct
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .build import PNG_SIG, seed_images

CROP, RESIZE = 32, 36
ROUTES = ("file", "bytes", "draft")  # open_image(path), open_image(BytesIO), open_image(BytesIO, draft_size=)
FUZZ_MAX_PIXELS = 1 << 22  # keeps each example fast; the real limit is covered by the corpus bombs

SEEDS: dict[str, bytes] = seed_images()
EXTENSIONS = {
    "jpeg": ".jpg",
    "png": ".png",
    "apng": ".png",
    "gif": ".gif",
    "webp": ".webp",
    "bmp": ".bmp",
    "tiff": ".tif",
}
MAGICS: dict[str, bytes] = {
    "none": b"",
    "png": PNG_SIG,
    "jpeg": b"\xff\xd8\xff",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    "bmp": b"BM",
    "tiff": b"II*\x00",
}
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_WIDE = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 16384, 65500)
OP_KINDS = ("flip", "set", "truncate", "delete", "dup", "insert", "u16", "u32", "splice")


def extension_for(seed: str) -> str:
    for prefix, ext in EXTENSIONS.items():
        if seed.startswith(prefix):
            return ext
    return ".img"


@dataclass(frozen=True)
class Plan:
    """How to build one fuzz input. `seed` names a SEEDS entry, or is "random:<magic>" for random bytes."""

    seed: str
    ops: tuple[tuple, ...] = ()
    body: bytes = b""  # the random bytes, for random seeds
    fix_crc: bool = False

    def render(self) -> bytes:
        if self.seed.startswith("random:"):
            data = MAGICS[self.seed.split(":", 1)[1]] + self.body
        else:
            data = SEEDS[self.seed]
        for op in self.ops:
            data = apply_op(data, op)
        if self.fix_crc:
            data = fix_png_crcs(data)
        return data

    @property
    def ext(self) -> str:
        return extension_for(self.seed.split(":", 1)[-1])


def apply_op(data: bytes, op: tuple) -> bytes:
    """One mutation. Positions are taken modulo the length so every op applies to any input."""
    kind = op[0]
    n = len(data)
    if n == 0:
        return bytes(op[2]) if kind == "insert" else data
    pos = op[1] % n
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (1 << (op[2] % 8))]) + data[pos + 1 :]
    if kind == "set":
        return data[:pos] + bytes([op[2] & 0xFF]) + data[pos + 1 :]
    if kind == "truncate":
        return data[:pos]
    if kind == "delete":
        return data[:pos] + data[pos + op[2] :]
    if kind == "dup":
        return data[: pos + op[2]] + data[pos : pos + op[2]] + data[pos + op[2] :]
    if kind == "insert":
        return data[:pos] + bytes(op[2]) + data[pos:]
    if kind in ("u16", "u32"):
        fmt = (">" if op[3] else "<") + ("H" if kind == "u16" else "I")
        width = struct.calcsize(fmt)
        value = op[2] & (0xFFFF if kind == "u16" else 0xFFFFFFFF)
        return data[:pos] + struct.pack(fmt, value) + data[pos + width :]
    if kind == "splice":
        other = SEEDS[op[2]]
        return data[:pos] + other[op[3] % max(len(other), 1) :]
    raise ValueError(f"unknown op {op!r}")


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC of a PNG-looking input (a no-op for anything else)."""
    if not data.startswith(PNG_SIG):
        return data
    out, i = bytearray(data[:8]), 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + 8 + length
        if end + 4 > len(data):
            break
        body = data[i + 4 : end]
        out += data[i : i + 4] + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        i = end + 4
    out += data[i:]
    return bytes(out)


def random_plan(rng: random.Random) -> Plan:
    """A plan drawn from `rng`, with the same distribution of shapes the Hypothesis strategy explores."""
    if rng.random() < 0.15:
        body = rng.randbytes(rng.choice((0, 1, 7, 64, 512, 4096)))
        return Plan(seed=f"random:{rng.choice(sorted(MAGICS))}", body=body)
    ops = []
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        kind = rng.choice(OP_KINDS)
        pos = (
            rng.randrange(1 << 16) if rng.random() < 0.5 else rng.randrange(64)
        )  # headers are where bugs live
        if kind in ("flip", "set"):
            arg = rng.choice(INTERESTING) if kind == "set" and rng.random() < 0.5 else rng.randrange(256)
            ops.append((kind, pos, arg))
        elif kind == "truncate":
            ops.append((kind, pos))
        elif kind in ("delete", "dup"):
            ops.append((kind, pos, rng.choice((1, 2, 4, 16, 256))))
        elif kind == "insert":
            ops.append((kind, pos, tuple(rng.randbytes(rng.choice((1, 4, 16))))))
        elif kind in ("u16", "u32"):
            ops.append((kind, pos, rng.choice(INTERESTING_WIDE), rng.random() < 0.5))
        else:
            ops.append((kind, pos, rng.choice(sorted(SEEDS)), rng.randrange(1 << 16)))
    return Plan(seed=rng.choice(sorted(SEEDS)), ops=tuple(ops), fix_crc=rng.random() < 0.5)


# ----------------------------------------------------------------------------------------------------------
# Checking one input.


class FuzzTimeout(Exception):
    """One input took longer than the per-input bound."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise FuzzTimeout in the main thread after `seconds` (a no-op where SIGALRM is unavailable)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def _alarm(signum, frame):
        raise FuzzTimeout(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if old_delay > 0:  # put back an outer timer (pytest-timeout uses SIGALRM too), minus the time spent
            signal.setitimer(
                signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval
            )


@dataclass
class Finding:
    """A property violation: which route, what went wrong, and where."""

    route: str
    kind: str  # exception type name, "timeout", "bad-tensor", "missing-name" or "disagree"
    message: str
    where: str = ""  # last traceback frame, to tell findings apart

    @property
    def signature(self) -> str:
        return f"{self.route}:{self.kind}:{self.where}"

    def __str__(self) -> str:
        return f"[{self.route}] {self.kind}: {self.message}" + (f" (at {self.where})" if self.where else "")


@dataclass
class Result:
    outcome: str  # "ok" | "bad" | "fail"
    detail: str = ""
    finding: Finding | None = None
    per_route: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # unexpected-but-handled decoder exceptions


def _last_frame(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{Path(f.filename).name}:{f.lineno}:{f.name}"


def build_checker(
    tmpdir: str | Path, *, time_bound: float = 5.0, max_pixels: int = FUZZ_MAX_PIXELS
) -> Callable[[bytes, str], Result]:
    """A function (data, ext) -> Result that runs the property over both routes. Imports synapse7 lazily."""
    import torch

    from synapse7.io import BadImageError, open_image
    from synapse7.transforms import ClassificationPreset

    preset = ClassificationPreset(crop_size=CROP, resize_size=RESIZE)
    tmp = Path(tmpdir)
    tmp.mkdir(parents=True, exist_ok=True)

    def one(route: str, data: bytes, ext: str) -> tuple[str, str]:
        name = f"fuzz-input{ext}"
        if route == "file":
            path = tmp / name
            path.write_bytes(data)
            img = open_image(path, max_pixels=max_pixels)
        elif route == "draft":  # the fast-decode path (reduced-scale JPEG decoding)
            img = open_image(io.BytesIO(data), max_pixels=max_pixels, name=name, draft_size=RESIZE)
        else:
            img = open_image(io.BytesIO(data), max_pixels=max_pixels, name=name)
        size = img.size
        x = preset(img)
        if not (
            isinstance(x, torch.Tensor)
            and x.dtype == torch.float32
            and tuple(x.shape) == (3, CROP, CROP)
            and bool(torch.isfinite(x).all())
        ):
            raise _BadTensor(
                f"got {type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}"
            )
        return "ok", f"{size[0]}x{size[1]}"

    def check(data: bytes, ext: str = ".img") -> Result:
        per: dict[str, str] = {}
        notes: list[str] = []
        for route in ROUTES:
            try:
                with time_limit(time_bound):
                    outcome, detail = one(route, data, ext)
                per[route] = f"{outcome} {detail}"
            except BadImageError as e:
                expected_name = str(tmp / f"fuzz-input{ext}") if route == "file" else f"fuzz-input{ext}"
                if expected_name not in str(e) or not e.reason:
                    f = Finding(route, "missing-name", f"BadImageError without the file name or reason: {e}")
                    return Result("fail", str(f), f, per)
                per[route] = "bad"
                if "decoder failed" in e.reason:  # caught by open_image's last-resort handler: worth a look
                    notes.append(f"{route}: {e.reason[:200]}")
            except _BadTensor as e:
                f = Finding(route, "bad-tensor", str(e))
                return Result("fail", str(f), f, per)
            except FuzzTimeout as e:
                f = Finding(route, "timeout", str(e))
                return Result("fail", str(f), f, per)
            except Exception as e:  # noqa: BLE001 - any other exception is exactly what we hunt for
                f = Finding(route, type(e).__name__, str(e)[:300], _last_frame(e))
                return Result("fail", str(f), f, per)
        # All routes read the same bytes, so they must agree (a zero-byte file is "bad" every way); the draft
        # route decodes JPEGs smaller, so only its outcome is compared.
        if per["file"] != per["bytes"] or per["draft"].split()[0] != per["file"].split()[0]:
            f = Finding("all", "disagree", ", ".join(f"{k} -> {v}" for k, v in per.items()))
            return Result("fail", str(f), f, per)
        return Result(per["file"].split()[0], per["file"], None, per, notes)

    return check


class _BadTensor(Exception):
    pass


def minimize(data: bytes, still_fails: Callable[[bytes], bool], *, budget_s: float = 20.0) -> bytes:
    """Greedy delta-debugging: drop chunks, then zero bytes, while the same failure persists."""
    deadline = time.monotonic() + budget_s
    best = data
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, shrunk = 0, False
        while i < len(best) and time.monotonic() < deadline:
            cand = best[:i] + best[i + chunk :]
            if cand and still_fails(cand):
                best, shrunk = cand, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    for i in range(len(best)):
        if time.monotonic() >= deadline:
            break
        if best[i] != 0:
            cand = best[:i] + b"\x00" + best[i + 1 :]
            if still_fails(cand):
                best = cand
    return best
