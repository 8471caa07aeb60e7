"""Frozen-trunk feature cache: run the frozen part of the network once, train the rest from disk.

With frozen early layers and deterministic preprocessing, decoding + resizing + FFT + the frozen stages give
the same tensor for an image in every epoch. `prepare_cached_training` computes that tensor once per image
(the output of the last frozen step: e.g. ResNet layer3 for frozen-early, pooled features for linear-probe),
stores it as float16 in a memory-mapped .npy file, and trains a `TrainableTail` (the remaining stages, pooling
and the head, sharing the full network's modules) on it. Checkpoints stay normal full Synapse-7 checkpoints.

Cache key (sha256, any change gives a new entry and a recompute):
  - every file's CONTENT (blake2b of its bytes, in dataset order; not path/size/mtime, so a rewrite that keeps
    the size and time still invalidates, and a renamed folder does not);
  - the data settings that shape the input (image_size, resize, preprocess, mean, std, align, fast_decode,
    max_pixels), the backbone, the input mode and the cache point;
  - the frozen weights and buffers (sha256 of their bytes);
  - the code: cache format, a hash of the source of the modules that compute the features (SOURCE_MODULES),
    and the synapse7, torch, torchvision and Pillow versions.
The cache is refused (training falls back to the normal path, with the reason printed) when training
augmentation is on, when no backbone stage is frozen (strategy "full", or input "rgb+fft", whose widened first
convolution is always trained), when a frozen stage holds a random layer (dropout / stochastic depth with p > 0),
and for multi-process training. Where the network is cut comes from the backbone's registry row
(`BackboneSpec.features` and `pool`), so a new backbone needs no code here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from synapse7 import __version__
from synapse7.config import RunConfig
from synapse7.data import MultiGenDataset, build_loader
from synapse7.io import atomic_write_text
from synapse7.model import Synapse7Net
from synapse7.module import CachedDetectorModule
from synapse7.perturb import has_train_augmentation

CACHE_FORMAT = 1
META = "meta.json"
FEATURES = "features.npy"

StepFn = Callable[[torch.Tensor], torch.Tensor]


class CacheRefused(Exception):
    """The feature cache cannot be used for this run; `reason` says why (training goes on without it)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Step:
    """One piece of the forward pass, in order. `modules` are paths in Synapse7Net naming."""

    name: str
    modules: tuple[str, ...]
    run: StepFn


def backbone_steps(net: Synapse7Net) -> list[Step]:
    """The backbone's forward pass as ordered steps, from its registry row (`BackboneSpec.features`, then
    `pool`): input the encoder's output, output the pooled features. No backbone needs code here."""
    spec, trunk = net.spec, net.backbone
    steps = [Step(path, (f"backbone.{path}",), trunk.get_submodule(path)) for path in spec.features]
    return [*steps, Step("pool", tuple(f"backbone.{p}" for p in spec.pool_modules), net.pool)]


def _params(net: nn.Module, paths: Sequence[str]) -> list[nn.Parameter]:
    return [p for path in paths for p in net.get_submodule(path).parameters()]


def _random_layers(net: nn.Module, paths: Sequence[str]) -> list[str]:
    """Modules under `paths` that are random in training mode (dropout, stochastic depth, drop path)."""
    out = []
    for path in paths:
        for name, m in net.get_submodule(path).named_modules():
            kind = type(m).__name__
            p = (
                getattr(m, "drop_prob", None)
                if kind == "DropPath"
                else getattr(m, "p", None)
                if "Dropout" in kind or kind == "StochasticDepth"
                else None
            )
            if p:
                out.append(f"{path}.{name}".rstrip(".") + f" ({kind} p={p:g})")
        if getattr(
            net.get_submodule(path), "drop_rate", 0
        ):  # timm's functional dropout before the classifier
            out.append(f"{path} (drop_rate)")
    return out


@dataclass(frozen=True)
class FrozenSplit:
    """Where the network is cut: steps[:n_frozen] are frozen (cached), the rest are trained."""

    steps: tuple[Step, ...]
    n_frozen: int

    @property
    def point(self) -> str:
        """Name of the last cached step ("encoder" when only the spectrum is cached)."""
        return self.steps[self.n_frozen - 1].name if self.n_frozen else "encoder"

    @property
    def frozen_modules(self) -> tuple[str, ...]:
        return ("encoder",) + tuple(m for s in self.steps[: self.n_frozen] for m in s.modules)

    @property
    def linear_probe(self) -> bool:
        return self.n_frozen == len(self.steps)


def plan_split(net: Synapse7Net) -> FrozenSplit:
    """Find the longest frozen prefix of the forward pass (requires_grad is already set by the strategy)."""
    steps = backbone_steps(net)
    n = 0
    while n < len(steps) and not any(p.requires_grad for p in _params(net, steps[n].modules)):
        n += 1
    split = FrozenSplit(tuple(steps), n)
    if n == 0:
        first = ", ".join(p for p in steps[0].modules)
        raise CacheRefused(
            f"no backbone stage is frozen ({first} trains: strategy 'full', or an input mode whose "
            "widened first convolution is new and always trained), so nothing but decoding is reusable"
        )
    random = _random_layers(net, split.frozen_modules[1:])
    if random:
        raise CacheRefused(
            "frozen stages hold random layers, so they are not deterministic in training: "
            + ", ".join(random[:3])
            + (f" and {len(random) - 3} more" if len(random) > 3 else "")
        )
    return split


class FrozenTrunk(nn.Module):
    """Encoder + the frozen steps: (B, 3, S, S) normalised RGB -> cached features. Always in eval mode."""

    def __init__(self, net: Synapse7Net, split: FrozenSplit) -> None:
        super().__init__()
        self.net = net
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.encoder(x)
        for step in self.split.steps[: self.split.n_frozen]:
            x = step.run(x)
        return x


class TrainableTail(nn.Module):
    """The remaining steps + pooling + head: cached features -> logits (B,). Shares the full net's modules."""

    def __init__(self, net: Synapse7Net, split: FrozenSplit) -> None:
        super().__init__()
        self.net = net
        self.split = split

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        for step in self.split.steps[self.split.n_frozen :]:
            feats = step.run(feats)
        return self.net.head(feats).squeeze(-1)  # the steps end with the pooling


# ----------------------------------------------------------------------------------------------------------
# Keys


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """blake2b-128 of a file's bytes; unreadable files get a marker (they are reported as bad when decoded)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        return f"unreadable:{e.errno}"
    return h.hexdigest()


def weights_digest(net: nn.Module, paths: Sequence[str]) -> str:
    """sha256 over the parameters and buffers under `paths` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for path in paths:
        for name, t in sorted(net.get_submodule(path).state_dict().items()):
            a = t.detach().cpu().contiguous()
            h.update(f"{path}.{name}:{a.dtype}:{tuple(a.shape)}".encode())
            h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Modules whose code shapes the cached tensors (decoding, preprocessing, spectrum, network, steps).
SOURCE_MODULES = (
    "synapse7.io",
    "synapse7.transforms",
    "synapse7.spectrum",
    "synapse7.backbones",
    "synapse7.model",
    "synapse7.cache",
)


def code_version() -> dict[str, str]:
    """Library versions and a sha256 of the source of SOURCE_MODULES: any edit there invalidates the cache."""
    h = hashlib.sha256()
    for name in SOURCE_MODULES:
        h.update(Path(importlib.import_module(name).__file__ or "").read_bytes())
    return {
        "cache_format": str(CACHE_FORMAT),
        "synapse7": __version__,
        "source": h.hexdigest(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
    }


def key_parts(cfg: RunConfig, net: Synapse7Net, split: FrozenSplit, files: Sequence[str]) -> dict[str, Any]:
    """Everything the cached tensors depend on (see the module docstring). `files` in dataset order."""
    d = cfg.data
    return {
        "code": code_version(),
        "data": {
            "image_size": d.image_size,
            "resize": d.resolved_resize,
            "preprocess": d.preprocess,
            "mean": list(d.mean),
            "std": list(d.std),
            "align": d.align,
            "fast_decode": d.fast_decode,
            "max_pixels": d.max_pixels,
        },
        "model": {
            "backbone": cfg.model.backbone,
            "input": cfg.model.input,
            "point": split.point,
            "frozen_weights": weights_digest(net, split.frozen_modules),
        },
        "files": hashlib.sha256("\n".join(file_digest(f) for f in files).encode()).hexdigest(),
        "n_files": len(files),
    }


def make_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Storage


@dataclass(frozen=True)
class CacheEntry:
    """One built cache: features.npy (N, *shape) float16, bad rows with reasons, and whether it was a hit."""

    path: Path
    key: str
    shape: tuple[int, ...]
    bad: dict[int, str]
    hit: bool

    @property
    def features(self) -> Path:
        return self.path / FEATURES


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


@torch.inference_mode()
def build_entry(
    root: str | os.PathLike,
    name: str,
    parts: dict[str, Any],
    trunk: FrozenTrunk,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | None = None,
    log: Callable[[str], None] | None = None,
) -> CacheEntry:
    """Return the entry for `parts` under root/<name>-<key>, computing it with `trunk` if absent.

    The entry is written into a temporary folder and renamed into place when complete, so an interrupted
    build leaves no half-filled cache. Older entries of the same `name` are removed once the new one exists.
    """
    root = Path(root)
    key = make_key(parts)
    final = root / f"{name}-{key[:24]}"
    meta = _read_meta(final)
    if meta is not None and meta.get("key") == key and (final / FEATURES).is_file():
        bad = {int(k): v for k, v in meta["bad"].items()}
        return CacheEntry(final, key, tuple(meta["shape"]), bad, hit=True)

    device = device or torch.device("cpu")
    modes = {m: m.training for m in trunk.modules()}  # restored below: the tail must keep training mode
    trunk = trunk.to(device).eval()
    x0 = torch.zeros(1, 3, parts["data"]["image_size"], parts["data"]["image_size"], device=device)
    shape = tuple(trunk(x0).shape[1:])
    n = len(dataset)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{key[:24]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        mm = np.lib.format.open_memmap(tmp / FEATURES, mode="w+", dtype=np.float16, shape=(n, *shape))
        bad: dict[int, str] = {}
        # The build must not shift the RNG stream training draws from (shuffling, dropout, init elsewhere).
        with torch.random.fork_rng(devices=[]):
            loader = build_loader(dataset, batch_size=batch_size, num_workers=num_workers)
            for batch in loader:
                bad.update({int(i): r for i, r in batch["bad"]})
                if "image" not in batch:
                    continue
                x = batch["image"].to(device)
                if device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                f = trunk(x).float()
                h = f.half()
                if not torch.isfinite(h).all() and torch.isfinite(f).all():
                    raise CacheRefused(
                        f"frozen features exceed the float16 range (max |x| = {f.abs().max():.3g})"
                    )
                mm[batch["index"].numpy()] = h.cpu().numpy()
        mm.flush()
        del mm
        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "name": name,
            "shape": list(shape),
            "n": n,
            "bad": {str(k): v for k, v in sorted(bad.items())},
            "parts": parts,
        }
        atomic_write_text(tmp / META, json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for m, mode in modes.items():
            m.train(mode)
    for old in root.glob(f"{name}-*"):  # stale entries of this split, from older keys
        if old != final and _read_meta(old) is not None:
            shutil.rmtree(old, ignore_errors=True)
    if log:
        size = (final / FEATURES).stat().st_size
        log(f"feature cache: computed {n} x {shape} float16 for {name} ({size / 2**20:.1f} MiB) in {final}")
    return CacheEntry(final, key, shape, bad, hit=False)


class CachedFeatureDataset(Dataset):
    """Items like MultiGenDataset's, with `image` = the cached features (float32) instead of the picture."""

    def __init__(self, entry: CacheEntry, base: MultiGenDataset) -> None:
        self.entry, self.base = entry, base
        self._mm: np.ndarray | None = None  # opened lazily, so the dataset pickles for worker processes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i in self.entry.bad:
            return {"index": i, "bad": self.entry.bad[i]}
        if self._mm is None:
            self._mm = np.load(self.entry.features, mmap_mode="r")
        s = self.base.samples[i]
        x = torch.from_numpy(np.asarray(self._mm[i], dtype=np.float32))
        return {
            "image": x,
            "label": s.label,
            "generator": self.base.generators.index(s.generator),
            "index": i,
        }


# ----------------------------------------------------------------------------------------------------------
# Training glue


@dataclass
class CachedTraining:
    module: CachedDetectorModule
    train_loader: DataLoader
    val_loader: DataLoader
    split: FrozenSplit
    entries: dict[str, CacheEntry]


def check_cacheable(cfg: RunConfig, train_pre_ops: Sequence[Any]) -> None:
    """Raise CacheRefused when this run's training input is not deterministic or not single-process."""
    d = cfg.data
    if train_pre_ops or has_train_augmentation(d):
        raise CacheRefused(
            "random training augmentation is on (aug_*_prob > 0, or random crops with "
            "--preprocess crop; --train-crop center makes them fixed): every epoch sees new inputs"
        )
    if d.crops > 1:
        raise CacheRefused(
            "several crops per validation image (--crops > 1): the cache holds one input per image"
        )
    t = cfg.train
    if t.ema_decay > 0:
        raise CacheRefused("weight averaging (--ema-decay) averages the whole network, not the cached tail")
    devices = int(t.devices) if str(t.devices).isdigit() else None
    if (
        t.num_nodes > 1
        or t.dist_strategy not in ("auto", "single_device")
        or (devices or 1) > 1
        or (
            t.devices == "auto" and t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.device_count() > 1
        )
    ):
        raise CacheRefused("multi-process training: the cache is built and read by a single process only")


def _cache_device(cfg: RunConfig) -> torch.device:
    use_cuda = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if use_cuda else "cpu")


def prepare_cached_training(
    cfg: RunConfig,
    module: Any,
    train_set: MultiGenDataset,
    val_set: MultiGenDataset,
    *,
    train_pre_ops: Sequence[Any] = (),
    log: Callable[[str], None] | None = None,
) -> CachedTraining:
    """Build (or reuse) the train and val caches and a module that trains `module.net`'s tail on them.

    Raises CacheRefused (nothing is written) when the cache does not apply; see `check_cacheable`.
    """
    if cfg.train.feature_cache is None:
        raise CacheRefused("no feature cache folder given")
    check_cacheable(cfg, train_pre_ops)
    net: Synapse7Net = module.net
    split = plan_split(net)
    trunk = FrozenTrunk(net, split)
    device = _cache_device(cfg)
    entries = {}
    for name, ds in (("train", train_set), ("val", val_set)):
        parts = key_parts(cfg, net, split, [s.path for s in ds.samples])
        entries[name] = build_entry(
            cfg.train.feature_cache,
            f"{name}-{split.point}",
            parts,
            trunk,
            ds,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            device=device,
            log=log,
        )
        if entries[name].hit and log:
            log(
                f"feature cache: reusing {entries[name].path} ({name}, {len(ds)} images, features {entries[name].shape})"
            )
    net.to("cpu")  # Lightning moves it where it trains
    cached = CachedDetectorModule(cfg.to_dict(), net=net, tail=TrainableTail(net, split))
    bs = cfg.data.batch_size
    # Reading the memmap is cheap: worker processes would only add start-up and copying.
    train_loader = build_loader(
        CachedFeatureDataset(entries["train"], train_set),
        batch_size=bs,
        num_workers=0,
        shuffle=True,
        seed=cfg.train.seed,
    )  # the same permutations as without the cache
    val_loader = build_loader(CachedFeatureDataset(entries["val"], val_set), batch_size=bs, num_workers=0)
    return CachedTraining(cached, train_loader, val_loader, split, entries)
