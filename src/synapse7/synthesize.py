"""`synapse7 synthesize`: self-made training fakes, one per real photograph (issue 11, item 5).

Every fake is made from exactly one real photo, so content and framing match and only the way the pixels were
made differs. Both classes go through the same save path (same crop, same size, same format and encoder), and
a manifest CSV pairs each fake with its real. Methods (output folder `synth_<method>`):

  * up-sampling chains (`up_nearest`, `up_bilinear`, `up_bicubic`, `up_tconv`): an antialiased down-scale by
    an integer factor (2-4, one of four PIL filters), then up-sampling back to the photo's size by
    nearest / bilinear / bicubic interpolation, or a fixed (untrained) strided transposed convolution whose
    kernel overlaps unevenly, the checkerboard source in GAN decoders;
  * small autoencoders trained here on the train-split photos (`ae_upconv`: nearest up-sampling + conv, the
    GAN / latent-diffusion VAE decoder; `ae_tconv`: transposed convolutions), 4x or 8x down-sampling. Their
    reconstructions are the fakes (AutoGAN, Zhang et al. 2019; the aligned fakes of Rajan et al., ICLR 2025).

None of this is the output of a real generator: the fakes carry decoder traces only, not a generator's content.

Output: ROOT/synth_<method>/{train,val}/{ai,nature}/<name>.<ext> (the GenImage layout `synapse7.data` reads),
ROOT/manifest.csv, ROOT/synthesize.json (settings and autoencoder training logs) and ROOT/README.md.
The train/val split is by source photo, seeded, and the same for every method of a ROOT.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from synapse7.io import (
    BadImageError,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    open_image,
    printable_path,
    walk_images,
)
from synapse7.perturb import JpegCompress, encode_jpeg, parse_perturbation

CHAIN_METHODS = ("up_nearest", "up_bilinear", "up_bicubic", "up_tconv")
AE_METHODS = ("ae_upconv", "ae_tconv")
METHODS = CHAIN_METHODS + AE_METHODS
PREFIX = "synth_"
FORMAT_FORMS = "'png' or 'jpeg:Q' (Q integer 1-100)"

# Down-scaling filters of the chains; PIL widens each kernel by the factor when reducing (antialiased).
DOWN_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
CHAIN_FACTORS = (2, 3, 4)  # integer factors: decoders up-sample by whole factors, so the trace is periodic
# Range of the std of the seeded noise on the transposed convolution's tent kernel, drawn per photo: the phase
# gains then differ by a few percent, a visible but not overwhelming checkerboard.
TCONV_KERNEL_NOISE = (0.01, 0.04)
AE_LR = 2e-3

DESCRIPTIONS = {
    "up_nearest": "down-scaled by an integer factor 2-4 (antialiased PIL box/bilinear/bicubic/lanczos, drawn per "
    "photo), then nearest-neighbour up-sampled back to the photo's size",
    "up_bilinear": "down-scaled as in up_nearest, then bilinear up-sampling (torch, align_corners=False)",
    "up_bicubic": "down-scaled as in up_nearest, then bicubic up-sampling (torch, align_corners=False, clamped)",
    "up_tconv": "down-scaled as in up_nearest, then a fixed, untrained stride-f transposed convolution whose 2f x 2f "
    "kernel is the bilinear tent plus seeded noise (std 0.01-0.04): output phases get unequal weights, "
    "leaving an f-periodic checkerboard",
    "ae_upconv": "reconstruction by a small autoencoder trained here on the train-split real photos (space-to-depth "
    "+ 1x1 conv encoder); decoder: nearest up-sampling x2 + 3x3 convolution per stage (GAN / "
    "latent-diffusion VAE style)",
    "ae_tconv": "reconstruction by a small autoencoder trained here on the train-split real photos (space-to-depth "
    "+ 1x1 conv encoder); decoder: 4x4 stride-2 transposed convolutions (DCGAN style)",
}


# ----------------------------------------------------------------------------------------------------------
# Settings, seeds and encoding


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the output bytes. The split-defining fields must match across runs into one ROOT."""

    methods: tuple[str, ...] = METHODS
    size: int | None = None  # square crop side; None = native size
    val_fraction: float = 0.2
    seed: int = 0
    max_images: int | None = None
    format: str = "png"
    workers: int = 1
    ae_steps: int = 1500
    ae_max_seconds: float | None = (
        None  # a wall-clock cap; when it stops training early, bytes are not reproducible
    )
    ae_factor: int = 4
    ae_batch_size: int = 8
    ae_crop: int = 48  # small crops, many steps: more progress per CPU minute than large batches

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(METHODS)} (with or without the '{PREFIX}' prefix)"
            )
        if self.size is not None and self.size < 8:
            raise ValueError(f"--size must be >= 8 pixels, got {self.size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {self.max_images}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.ae_factor not in (4, 8):
            raise ValueError(f"--ae-factor must be 4 or 8, got {self.ae_factor}")
        if self.ae_steps < 1:
            raise ValueError(f"--ae-steps must be >= 1, got {self.ae_steps}")
        if self.ae_crop % self.ae_factor:
            raise ValueError(
                f"the autoencoder's training crop ({self.ae_crop}) must be a multiple of its factor"
            )
        parse_format(self.format)

    def split_key(self) -> dict[str, Any]:
        """The settings that decide which photos there are, how they are split, cropped and encoded."""
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "max_images": self.max_images,
            "size": self.size,
            "format": self.format,
        }


def parse_methods(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'up_nearest,synth_ae_tconv' | 'all' | 'chains' | 'ae' -> method names (prefix optional), in order given."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    groups = {"all": METHODS, "chains": CHAIN_METHODS, "ae": AE_METHODS}
    out: list[str] = []
    for it in items:
        name = it.removeprefix(PREFIX)
        for m in groups.get(name, (name,)):
            if m not in out:
                out.append(m)
    return tuple(out)


def parse_format(spec: str) -> tuple[str, int | None]:
    """'png' -> ('png', None); 'jpeg:Q' -> ('jpeg', Q). Raises ValueError naming the valid forms."""
    s = spec.strip().lower() if isinstance(spec, str) else ""
    if s == "png":
        return "png", None
    if s.startswith("jpeg:"):
        try:
            op = parse_perturbation(s)  # validates Q with the perturbation module's rules
        except ValueError:
            op = None
        if isinstance(op, JpegCompress):
            return "jpeg", op.quality
    raise ValueError(f"unknown output format {spec!r}; expected {FORMAT_FORMS}")


def encode(arr: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """(H, W, 3) uint8 -> (file bytes, extension). The one save path of both classes: no metadata is written."""
    kind, quality = parse_format(fmt)
    img = Image.fromarray(arr, "RGB")
    if kind == "jpeg":
        return encode_jpeg(img, int(quality)), ".jpg"
    buf = io.BytesIO()
    img.save(
        buf, format="PNG", compress_level=6
    )  # lossless at any level; fixed so the bytes are reproducible
    return buf.getvalue(), ".png"


def image_seed(seed: int, tag: str, source: str) -> int:
    """A 32-bit seed for one (run seed, method or 'crop', source photo); independent of order and workers."""
    ss = np.random.SeedSequence(
        [seed, zlib.crc32(tag.encode()), zlib.crc32(source.encode("utf-8", "backslashreplace"))]
    )
    return int(ss.generate_state(1)[0])


def list_reals(real_dir: str | os.PathLike) -> list[str]:
    """Image files under `real_dir` (recursive, sorted), as paths relative to it."""
    root = Path(real_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--real {root} is not a directory")
    files, _ = walk_images(root)
    if not files:
        raise FileNotFoundError(f"no image files under --real {root}")
    return [os.path.relpath(f, root) for f in files]


def split_reals(rels: Sequence[str], cfg: SynthConfig) -> dict[str, str]:
    """source (relative path) -> 'train' | 'val': a seeded shuffle, --max-images taken first, then the val share."""
    order = np.random.default_rng(cfg.seed).permutation(len(rels))
    chosen = [rels[i] for i in order[: cfg.max_images or len(rels)]]
    n_val = round(len(chosen) * cfg.val_fraction)
    return {r: ("val" if i < n_val else "train") for i, r in enumerate(chosen)}


def out_name(rel: str, ext: str) -> str:
    """Flat, collision-free file name for a source path: 'bsds500/test_1.jpg' -> 'bsds500__test_1.png'."""
    stem = os.path.splitext(rel)[0].replace(os.sep, "__").replace("/", "__")
    return printable_path(stem) + ext


def crop_photo(
    arr: np.ndarray, size: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A seeded size x size crop (or the whole photo when size is None). Raises ValueError if the photo is smaller."""
    if size is None:
        return arr, None
    h, w = arr.shape[:2]
    if h < size or w < size:
        raise ValueError(f"{w}x{h} is smaller than --size {size}")
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return arr[y : y + size, x : x + size], (x, y)


# ----------------------------------------------------------------------------------------------------------
# Up-sampling chains


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    # np.array copies: decoded images can be read-only, which torch warns about.
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def checkerboard_kernel(factor: int, noise: float, rng: np.random.Generator) -> torch.Tensor:
    """(2f, 2f) kernel for a stride-f transposed convolution: the bilinear tent plus seeded noise of std `noise`,
    scaled so the mean gain over the f*f output phases is 1.

    The tent alone interpolates exactly (every output phase gets total weight 1); the noise makes the phases'
    weights unequal, so the output carries a fixed f-periodic pattern: the checkerboard of transposed-
    convolution decoders (Odena et al. 2016), at a strength set by `noise`.
    """
    tent = 1.0 - np.abs(np.arange(2 * factor) + 0.5 - factor) / factor  # f=2: [0.25, 0.75, 0.75, 0.25]
    k = np.outer(tent, tent) + rng.normal(0.0, noise, size=(2 * factor, 2 * factor))
    phase_gain = k.reshape(2, factor, 2, factor).sum(axis=(0, 2))  # (f, f): weight each output phase receives
    return torch.from_numpy(k / phase_gain.mean()).float()


def upsample_chain(arr: np.ndarray, up: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Down-scale by a random integer factor with a random antialiased filter, then up-sample back with `up`.

    Returns the fake (same shape as `arr`) and its parameters. Every call draws the factor and filter first,
    so the draws of one photo do not depend on the up-sampler.
    """
    h, w = arr.shape[:2]
    factor = int(rng.choice(CHAIN_FACTORS))
    filt = str(rng.choice(list(DOWN_FILTERS)))
    # ceil keeps factor * small >= the photo; the up-sampled image is cropped back to (h, w) at the top left.
    small_size = (max(1, math.ceil(w / factor)), max(1, math.ceil(h / factor)))
    small = Image.fromarray(arr).resize(small_size, DOWN_FILTERS[filt], reducing_gap=None)
    x = _to_tensor(np.asarray(small))
    params: dict[str, Any] = {"factor": factor, "down_filter": filt, "up": up}
    if up == "tconv":
        noise = float(rng.uniform(*TCONV_KERNEL_NOISE))
        k = checkerboard_kernel(factor, noise, rng)
        weight = k.expand(3, 1, *k.shape).contiguous()  # (3, 1, 2f, 2f): one kernel per channel
        # Output pixel o sees input o / f - 1/2 + 1/(2f) after dropping f // 2 rows: aligned within half a pixel.
        y = F.conv_transpose2d(x, weight, stride=factor, groups=3)[..., factor // 2 :, factor // 2 :]
        params["kernel_noise"] = round(noise, 4)
    else:
        kw = {} if up == "nearest" else {"align_corners": False}
        y = F.interpolate(x, scale_factor=factor, mode=up, **kw)
    return _to_uint8(y[..., :h, :w]), params


# ----------------------------------------------------------------------------------------------------------
# Small autoencoders


class TinyAutoencoder(nn.Module):
    """Fully convolutional autoencoder, down-sampling by `factor` (4 or 8): works at any multiple-of-factor size.

    Encoder: space-to-depth (each f x f block becomes 3f^2 channels) and a 1x1 conv to `latent` channels
    (default 3f^2: as many numbers as pixels, so the code can be lossless). Decoder, the part whose traces the
    fakes carry: a 3x3 conv, then per x2 stage nearest up-sampling + 3x3 conv ('upconv', GAN / latent-diffusion
    VAE style) or a 4x4 stride-2 transposed conv ('tconv', DCGAN style), each followed by a 3x3 conv except at
    full resolution; widths 64, 32, 16 toward full resolution keep the CPU cost low.
    A deep convolutional encoder was tried first: after the same few CPU minutes its reconstructions were
    visibly blurred (a blur shortcut); this one reaches 28.4 dB (upconv) / 29.8 dB (tconv) mean PSNR on the val
    pairs of ../shared/data/reals (bench/synth_fidelity.py, docs/synthesize.md).
    """

    def __init__(self, decoder: str, factor: int = 4, latent: int | None = None, base: int = 16) -> None:
        super().__init__()
        if decoder not in ("upconv", "tconv"):
            raise ValueError(f"decoder must be 'upconv' or 'tconv', got {decoder!r}")
        stages = int(math.log2(factor))
        latent = latent or 3 * factor * factor
        ch = [min(base * 2**i, 64) for i in range(stages + 1)]
        act = nn.SiLU
        self.encoder = nn.Sequential(nn.PixelUnshuffle(factor), nn.Conv2d(3 * factor * factor, latent, 1))
        dec: list[nn.Module] = [nn.Conv2d(latent, ch[-1], 3, padding=1, padding_mode="reflect"), act()]
        for i in reversed(range(stages)):
            if decoder == "tconv":
                dec += [nn.ConvTranspose2d(ch[i + 1], ch[i], 4, stride=2, padding=1), act()]
            else:
                dec += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(ch[i + 1], ch[i], 3, padding=1, padding_mode="reflect"),
                    act(),
                ]
            if i > 0:
                dec += [nn.Conv2d(ch[i], ch[i], 3, padding=1, padding_mode="reflect"), act()]
        dec.append(nn.Conv2d(ch[0], 3, 3, padding=1, padding_mode="reflect"))
        self.decoder = nn.Sequential(*dec)
        self.factor, self.kind = factor, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of factor -> reconstruction, same shape (not clamped)."""
        return self.decoder(self.encoder(x - 0.5)) + 0.5


@dataclass
class AeLog:
    """How an autoencoder was trained: written to synthesize.json and the README."""

    method: str
    steps: int
    seconds: float
    final_l1: float
    n_photos: int
    n_crops: int
    stopped_by_time: bool
    params: int
    curve: list[tuple[int, float]] = field(default_factory=list)


def build_crop_pool(
    arrays: Iterable[np.ndarray], crop: int, per_photo: int, rng: np.random.Generator
) -> torch.Tensor:
    """(N, 3, crop, crop) uint8: `per_photo` seeded random crops of each photo at least `crop` pixels a side."""
    crops = []
    for a in arrays:
        h, w = a.shape[:2]
        if h < crop or w < crop:
            continue
        for _ in range(per_photo):
            y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            crops.append(a[y : y + crop, x : x + crop])
    if not crops:
        raise ValueError(
            f"no train-split photo is at least {crop}x{crop}: nothing to train the autoencoders on"
        )
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def train_autoencoder(
    method: str, pool: torch.Tensor, cfg: SynthConfig, n_photos: int, log: Callable[[str], None] = print
) -> tuple[TinyAutoencoder, AeLog]:
    """Train one autoencoder on the crop pool with L1 loss and Adam; seeded (model init and batches)."""
    gen = torch.Generator().manual_seed(image_seed(cfg.seed, method, "model"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(image_seed(cfg.seed, method, "init"))
        model = TinyAutoencoder(method.removeprefix("ae_"), cfg.ae_factor)
    opt = torch.optim.Adam(model.parameters(), lr=AE_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.ae_steps, eta_min=1e-4)
    t0, ema, curve, step = time.monotonic(), None, [], 0
    stopped = False
    model.train()
    for step in range(1, cfg.ae_steps + 1):
        idx = torch.randint(0, len(pool), (cfg.ae_batch_size,), generator=gen)
        x = pool[idx].float() / 255.0
        if torch.rand((), generator=gen) < 0.5:  # flips double the variety of a small pool
            x = x.flip(-1)
        loss = F.l1_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        val = loss.item()
        ema = val if ema is None else 0.98 * ema + 0.02 * val
        if step % 100 == 0 or step == cfg.ae_steps:
            curve.append((step, round(ema, 5)))
            log(
                f"[synthesize] {PREFIX}{method}: step {step}/{cfg.ae_steps}, L1 {ema:.4f}, "
                f"{time.monotonic() - t0:.0f} s"
            )
        if cfg.ae_max_seconds is not None and time.monotonic() - t0 > cfg.ae_max_seconds:
            stopped = step < cfg.ae_steps
            break
    model.eval()
    info = AeLog(
        method=method,
        steps=step,
        seconds=round(time.monotonic() - t0, 1),
        final_l1=round(ema or 0.0, 5),
        n_photos=n_photos,
        n_crops=len(pool),
        stopped_by_time=stopped,
        params=sum(p.numel() for p in model.parameters()),
        curve=curve,
    )
    return model, info


@torch.no_grad()
def reconstruct(model: TinyAutoencoder, arr: np.ndarray, tile: int = 512, margin: int = 32) -> np.ndarray:
    """Reconstruct a photo at its native size: reflect-pad to a multiple of the factor, run in overlapping
    tiles (`margin` pixels of context each side, dropped) when larger than `tile`, crop back. (H, W, 3) uint8."""
    h, w = arr.shape[:2]
    f = model.factor
    x = _to_tensor(arr)
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        # reflect needs pad < side; replicate covers images thinner than the factor.
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        y = model(x)
    else:
        y = torch.empty_like(x)
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
                # margins are multiples of f, so every tile starts on the latent grid of the whole image.
                a0, b0 = max(0, y0 - margin), max(0, x0 - margin)
                a1, b1 = min(H, y1 + margin), min(W, x1 + margin)
                out = model(x[..., a0:a1, b0:b1])
                y[..., y0:y1, x0:x1] = out[..., y0 - a0 : y1 - a0, x0 - b0 : x1 - b0]
    return _to_uint8(y[..., :h, :w])


# ----------------------------------------------------------------------------------------------------------
# One photo -> its real and its fakes (run in worker processes)

_WORKER: dict[str, Any] = {}


def _init_worker(ae_states: dict[str, dict[str, Any]], ae_factor: int) -> None:
    """Worker set-up: one torch thread (identical arithmetic whatever --workers) and the trained autoencoders."""
    torch.set_num_threads(1)
    models = {}
    for method, state in ae_states.items():
        m = TinyAutoencoder(method.removeprefix("ae_"), ae_factor)
        m.load_state_dict(state)
        models[method] = m.eval()
    _WORKER["models"] = models


@dataclass(frozen=True)
class Task:
    source: str  # relative to the --real folder
    path: str
    split: str


def make_fake(method: str, arr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """The fake of one (cropped) real photo by `method`, and its parameters."""
    if method in CHAIN_METHODS:
        return upsample_chain(arr, method.removeprefix("up_"), rng)
    model = _WORKER["models"][method]
    return reconstruct(model, arr), {"decoder": model.kind, "factor": model.factor}


def process_photo(task: Task, cfg: SynthConfig, root: str) -> tuple[list[dict[str, Any]], str | None]:
    """Decode, crop, write the real and each method's fake. Returns manifest rows, or ([], reason) if skipped."""
    try:
        arr = np.asarray(open_image(task.path))
        arr, crop_xy = crop_photo(
            arr, cfg.size, np.random.default_rng(image_seed(cfg.seed, "crop", task.source))
        )
    except (BadImageError, ValueError) as e:
        return [], getattr(e, "reason", str(e))
    real_bytes, ext = encode(arr, cfg.format)
    name = out_name(task.source, ext)
    rows = []
    for method in cfg.methods:
        s = image_seed(cfg.seed, method, task.source)
        fake, params = make_fake(method, arr, np.random.default_rng(s))
        fake_bytes, _ = encode(fake, cfg.format)
        base = Path(f"{PREFIX}{method}") / task.split
        real_rel, fake_rel = base / "nature" / name, base / "ai" / name
        atomic_write_bytes(Path(root) / real_rel, real_bytes)
        atomic_write_bytes(Path(root) / fake_rel, fake_bytes)
        rows.append(
            {
                "method": f"{PREFIX}{method}",
                "split": task.split,
                "source": task.path,
                "real": real_rel.as_posix(),
                "fake": fake_rel.as_posix(),
                "width": arr.shape[1],
                "height": arr.shape[0],
                "crop_xy": "" if crop_xy is None else f"{crop_xy[0]},{crop_xy[1]}",
                "format": cfg.format,
                "params": json.dumps(params, sort_keys=True),
                "seed": s,
            }
        )
    return rows, None


# ----------------------------------------------------------------------------------------------------------
# The command

MANIFEST_FIELDS = (
    "method",
    "split",
    "source",
    "real",
    "fake",
    "width",
    "height",
    "crop_xy",
    "format",
    "params",
    "seed",
)


@dataclass
class SynthResult:
    root: Path
    rows: list[dict[str, Any]]
    bad: dict[str, str]
    ae_logs: list[AeLog]
    seconds: float


def _check_root(root: Path, cfg: SynthConfig, real_dir: Path) -> dict[str, Any]:
    """Refuse to mix splits or overwrite: an existing ROOT must have the same split settings, and the methods
    asked for must not be there yet. Returns the previous synthesize.json (or an empty one)."""
    state_path = root / "synthesize.json"
    state: dict[str, Any] = {"real": str(real_dir.resolve()), "split": cfg.split_key(), "methods": {}}
    if state_path.exists():
        prev = json.loads(state_path.read_text(encoding="utf-8"))
        if prev.get("split") != cfg.split_key() or prev.get("real") != state["real"]:
            raise ValueError(
                f"{root} was made from {prev.get('real')} with {prev.get('split')}; this run has "
                f"{state['real']} with {cfg.split_key()}. Methods of one ROOT must share photos, split, "
                f"crop and format; use another --out"
            )
        state = prev
    for m in cfg.methods:
        d = root / f"{PREFIX}{m}"
        if d.exists() and any(d.iterdir()):
            raise FileExistsError(f"{d} already exists and is not empty; remove it or choose another --out")
    return state


def synthesize(
    real_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    cfg: SynthConfig,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> SynthResult:
    """Make ROOT/synth_<method>/{train,val}/{ai,nature}/ from the photos under `real_dir`; see the module doc."""
    t0 = time.monotonic()
    real_dir, root = Path(real_dir), Path(out_root)
    rels = list_reals(real_dir)
    split = split_reals(rels, cfg)
    ensure_writable_dir(root)
    state = _check_root(root, cfg, real_dir)
    tasks = [Task(r, str(real_dir / r), split[r]) for r in sorted(split)]
    n_val = sum(t.split == "val" for t in tasks)
    log(
        f"[synthesize] {len(tasks)} of {len(rels)} photo(s) from {real_dir}: {len(tasks) - n_val} train, {n_val} val; "
        f"methods: {', '.join(cfg.methods)}"
    )
    bad: dict[str, str] = {}

    ae_states, ae_logs = {}, []
    ae_methods = [m for m in cfg.methods if m in AE_METHODS]
    if ae_methods:
        train_arrays = []
        for t in tasks:
            if t.split != "train":
                continue
            try:
                train_arrays.append(np.asarray(open_image(t.path)))
            except BadImageError as e:
                bad[t.path] = e.reason
                log(f"[synthesize] skipped {e.path}: {e.reason}")
        per_photo = max(1, min(16, 20000 // max(1, len(train_arrays))))  # bounds the pool's memory (~250 MB)
        n_used = sum(min(a.shape[:2]) >= cfg.ae_crop for a in train_arrays)
        pool = build_crop_pool(
            train_arrays, cfg.ae_crop, per_photo, np.random.default_rng(image_seed(cfg.seed, "pool", ""))
        )
        del train_arrays
        for m in ae_methods:
            log(
                f"[synthesize] training {PREFIX}{m} ({cfg.ae_steps} steps, {cfg.ae_factor}x down-sampling) on "
                f"{len(pool)} crops of {cfg.ae_crop} px"
            )
            model, info = train_autoencoder(m, pool, cfg, n_photos=n_used, log=log)
            ae_states[m] = model.state_dict()
            ae_logs.append(info)
        del pool

    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    try:
        if cfg.workers == 1:
            _init_worker(ae_states, cfg.ae_factor)
            _collect((process_photo(t, cfg, str(root)) for t in tasks), tasks, rows, bad, log)
        else:
            with ProcessPoolExecutor(
                cfg.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(ae_states, cfg.ae_factor),
            ) as ex:
                futures = ex.map(
                    process_photo, tasks, [cfg] * len(tasks), [str(root)] * len(tasks), chunksize=4
                )
                _collect(futures, tasks, rows, bad, log)
    finally:
        torch.set_num_threads(threads)
        _WORKER.clear()
    if bad:
        log(f"[synthesize] skipped {len(bad)} bad or too-small photo(s) (listed above)")
    if not rows:
        raise ValueError(f"no photo under {real_dir} could be used ({len(bad)} skipped)")

    for info in ae_logs:
        state["methods"][info.method] = asdict(info)
    for m in cfg.methods:
        state["methods"].setdefault(m, {})
    state["bad_images"] = {**state.get("bad_images", {}), **bad}
    all_rows = _merge_manifest(root, rows, cfg.methods)
    atomic_write_text(root / "synthesize.json", json.dumps(state, indent=2, sort_keys=True) + "\n")
    atomic_write_text(root / "README.md", readme_text(all_rows, state))
    secs = round(time.monotonic() - t0, 1)
    log(f"[synthesize] wrote {len(rows)} pair(s) under {root} in {secs} s")
    return SynthResult(root, rows, bad, ae_logs, secs)


def _collect(
    results: Iterable,
    tasks: Sequence[Task],
    rows: list[dict[str, Any]],
    bad: dict[str, str],
    log: Callable[[str], None],
) -> None:
    done = 0
    for t, (r, reason) in zip(tasks, results, strict=True):
        done += 1
        if reason is not None:
            if t.path not in bad:
                log(f"[synthesize] skipped {BadImageError(t.path, reason)}")
            bad[t.path] = reason
        rows.extend(r)
        if done % 100 == 0:
            log(f"[synthesize] {done}/{len(tasks)} photo(s)")


def _merge_manifest(root: Path, rows: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Write ROOT/manifest.csv: earlier runs' rows for other methods, plus this run's, sorted."""
    path = root / "manifest.csv"
    written = {f"{PREFIX}{m}" for m in methods}
    old = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            old = [r for r in csv.DictReader(f) if r["method"] not in written]
    all_rows = sorted(old + rows, key=lambda r: (r["method"], r["real"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(all_rows)
    atomic_write_text(path, buf.getvalue())
    return all_rows


def readme_text(rows: Sequence[dict[str, Any]], state: dict[str, Any]) -> str:
    """ROOT/README.md: what the fakes are and are not, counts per method and split, and how they were made."""
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["method"], {"train": 0, "val": 0})[r["split"]] += 1
    sp = state["split"]
    framing = "native size" if sp["size"] is None else f"the same seeded {sp['size']}x{sp['size']} crop"
    lines = [
        "# Self-made training fakes (`synapse7 synthesize`)",
        "",
        "**These are not images from real generators.** Each `ai` image was made by Synapse-7 from exactly one",
        "real photograph (its `nature` twin, same file name, same split) by a simple decoder: it carries",
        "up-sampling / decoder traces, not a generator's content, style or semantics. A detector trained only",
        "on them learns those traces; it is no evidence of accuracy on real generator output.",
        "",
        f"- source photos: `{state['real']}`; `manifest.csv` pairs every fake with its real and gives the method,",
        "  its parameters and the per-image seed.",
        f"- both classes written through one save path: format `{sp['format']}`, no metadata, "
        f"{framing}; "
        "the real's pixels are the decoded photo's (not resampled).",
        f"- train/val split by source photo (seed {sp['seed']}, val fraction {sp['val_fraction']}, max images "
        f"{sp['max_images']}), identical for every method here: a photo and its fakes are always in one split.",
        "- the `nature` folders of all methods hold the same photos; merging methods repeats each real once per method.",
        "",
        "Known differences between the classes, besides the decoder trace: the fakes are smoother (detail lost in",
        "the down-sampling), and the reals keep their camera/JPEG history (e.g. 8x8 JPEG block traces) which the",
        "fakes partly lose. `--format jpeg:Q` re-encodes both classes, which gives both a fresh JPEG grid.",
        "Because the fakes hold less detail, their PNG files are smaller: `synapse7 audit ROOT` shows how well",
        "bytes per pixel alone separates the classes per method (a proxy for detail, not an encoder difference).",
        "",
        "| folder | how the fake was made | train pairs | val pairs |",
        "|---|---|---|---|",
    ]
    for method in sorted(counts):
        c = counts[method]
        lines.append(
            f"| `{method}` | {DESCRIPTIONS[method.removeprefix(PREFIX)]} | {c['train']} | {c['val']} |"
        )
    ae = {m: v for m, v in state["methods"].items() if v}
    if ae:
        lines += [
            "",
            "Autoencoders (trained on random crops of the train-split photos only, L1 loss, Adam; the latent has",
            "3f^2 channels at 1/f resolution, as many numbers as pixels, so fidelity is limited by the short",
            "training and the decoder, whose traces are the point; val photos are never seen in training):",
            "",
        ]
        for m, v in sorted(ae.items()):
            early = " (stopped by the time cap: not byte-reproducible)" if v["stopped_by_time"] else ""
            lines.append(
                f"- `{PREFIX}{m}`: {v['params']:,} parameters, {v['steps']} steps in {v['seconds']} s{early}, "
                f"final L1 {v['final_l1']} (0-1 scale), {v['n_crops']} crops of {v['n_photos']} photos"
            )
    n_bad = len(state.get("bad_images", {}))
    lines += [
        "",
        f"Photos skipped (unreadable or smaller than the crop): {n_bad}; listed in `synthesize.json`.",
        "",
    ]
    return "\n".join(lines)
