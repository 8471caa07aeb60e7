"""GenImage-layout discovery, MultiGenDataset and the Lightning data module.

Layouts accepted (class folders `ai`/`nature`, `fake`/`real` or CNNDetection's `1_fake`/`0_real`, any depth of
files below):
    ROOT/<generator>/<split>/{ai,nature}/...     Tiny GenImage: every generator folder is merged
    ROOT/<split>/{ai,nature}/...                 a single generator folder (named after ROOT)
Generators are found from folder names; nothing here lists them.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from synapse7.config import DataConfig
from synapse7.io import BadImageError, printable_path, walk_images
from synapse7.transforms import ClassificationPreset, PilOp, build_preset

CLASS_DIRS = {"ai": 1, "nature": 0, "fake": 1, "real": 0, "1_fake": 1, "0_real": 0}
# Folder names of each label, for messages.
CLASS_FOLDERS = {label: "/".join(d for d, v in CLASS_DIRS.items() if v == label) for label in (0, 1)}
CLASS_NAMES = ("REAL", "AI")  # index = label

EXPECTED_TREE = """expected layout (class folders may also be named real / fake or 0_real / 1_fake):
  ROOT/<generator>/{split}/ai/*.png|jpg|...       label 1 (AI-generated)
  ROOT/<generator>/{split}/nature/*.png|jpg|...   label 0 (real)
or, for a single generator:
  ROOT/{split}/ai/...  and  ROOT/{split}/nature/..."""


class LayoutError(ValueError):
    """The dataset root does not follow the expected layout, or a split is empty."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # 1 = AI, 0 = real
    generator: str


def _class_dirs(split_dir: Path) -> dict[str, int]:
    if not split_dir.is_dir():
        return {}
    return {
        d.name: CLASS_DIRS[d.name] for d in sorted(split_dir.iterdir()) if d.name in CLASS_DIRS and d.is_dir()
    }


def find_generators(root: str | os.PathLike, split: str) -> dict[str, Path]:
    """Map generator name -> its split folder. Raises LayoutError with the expected tree if none is found."""
    r = Path(root)
    if not r.is_dir():
        raise LayoutError(
            f"dataset root {printable_path(r)} is not a directory\n" + EXPECTED_TREE.format(split=split)
        )
    if _class_dirs(r / split):
        return {r.resolve().name: r / split}
    gens = {g.name: g / split for g in sorted(r.iterdir()) if g.is_dir() and _class_dirs(g / split)}
    if not gens:
        seen = sorted(p.name for p in r.iterdir())[:20]
        raise LayoutError(
            f"no '{split}' split with ai/nature folders found under {printable_path(r)} "
            f"(it contains: {', '.join(seen) or 'nothing'})\n" + EXPECTED_TREE.format(split=split)
        )
    return gens


Roots = str | os.PathLike | Sequence[str | os.PathLike]


def root_list(root: Roots) -> list[str | os.PathLike]:
    """One root or several (e.g. `--data A --data B`) as a list."""
    return [root] if isinstance(root, (str, os.PathLike)) else list(root)


def find_generators_multi(roots: Roots, split: str) -> dict[str, Path]:
    """find_generators over one or several roots, merged. A generator name found under more than one root is
    kept apart as `<root folder name>:<generator>` (e.g. two single-generator roots both called `train`)."""
    per_root = [(Path(r), find_generators(r, split)) for r in root_list(roots)]
    counts = Counter(g for _, found in per_root for g in found)
    merged: dict[str, Path] = {}
    for r, found in per_root:
        for g, d in found.items():
            name = g if counts[g] == 1 else f"{r.resolve().name}:{g}"
            if name in merged:
                raise LayoutError(
                    f"generator {name} is found twice (roots {printable_path(r)} and another with the "
                    f"same folder name); rename one of the roots"
                )
            merged[name] = d
    return merged


def discover_samples(root: Roots, split: str, generators: Sequence[str] | None = None) -> list[Sample]:
    """All labelled image files of a split, in a stable order, each tagged with its generator.

    `root` may be several roots: their generators are merged (see `find_generators_multi`).
    """
    found = find_generators_multi(root, split)
    root = ", ".join(printable_path(r) for r in root_list(root))
    if generators:
        missing = sorted(set(generators) - set(found))
        if missing:
            raise LayoutError(
                f"generator(s) {', '.join(missing)} not found under {printable_path(root)} "
                f"for split '{split}'; available: {', '.join(found)}"
            )
        found = {g: found[g] for g in generators}
    samples: list[Sample] = []
    ignored = 0
    total: Counter = Counter()
    for gen, split_dir in found.items():
        counts: Counter = Counter()
        for cls, label in _class_dirs(split_dir).items():
            files, other = walk_images(split_dir / cls)
            ignored += other
            counts[label] += len(files)
            samples.extend(Sample(f, label, gen) for f in files)
        total += counts
        if (counts[0] == 0) != (counts[1] == 0):  # the split as a whole is checked below; this one is a note
            missing = CLASS_FOLDERS[0 if counts[0] == 0 else 1]
            print(f"note: generator {gen} has no {missing} images in split '{split}'", file=sys.stderr)
    if not samples:
        raise LayoutError(
            f"split '{split}' under {printable_path(root)} holds no images "
            f"(generators: {', '.join(found)})\n" + EXPECTED_TREE.format(split=split)
        )
    if total[0] == 0 or total[1] == 0:  # one class only: AUC, thresholds and training are all meaningless
        label = 0 if total[0] == 0 else 1
        raise LayoutError(
            f"split '{split}' under {printable_path(root)} has no {CLASS_NAMES[label]} images: "
            f"no {CLASS_FOLDERS[label]} folder with images (generators: {', '.join(found)})\n"
            + EXPECTED_TREE.format(split=split)
        )
    if ignored:
        print(
            f"note: ignored {ignored} non-image file(s) under {printable_path(root)}/{split}", file=sys.stderr
        )
    return samples


class MultiGenDataset(Dataset):
    """Every generator folder of a split merged into one stream; each item remembers its generator.

    Items are dicts: image (3, S, S) float (uint8 with normalize=False: a quarter of the bytes to pass
    between worker processes, normalised per batch by the consumer), label (0/1; -1 for unlabelled files,
    see `from_paths`), generator (index into `.generators`), index. With on_bad_image="skip", an undecodable
    file gives {"index", "bad": reason} instead, which `collate_skip_bad` drops from the batch and reports;
    with "error" it raises BadImageError. Files are decoded by the preset (`ClassificationPreset.decode`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: ClassificationPreset | None = None,
        *,
        generators: Sequence[str] | None = None,
        on_bad_image: str = "skip",
        samples: Sequence[Sample] | None = None,
        max_pixels: int = DataConfig.max_pixels,
        normalize: bool = True,
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if samples is None:
            if root is None:
                raise ValueError("give a dataset root or a list of samples")
            samples = discover_samples(root, split, generators)
        self.samples = list(samples)
        self.generators = sorted({s.generator for s in self.samples})
        self._gen_index = {g: i for i, g in enumerate(self.generators)}
        self.transform = transform or ClassificationPreset()
        self.on_bad_image = on_bad_image
        self.max_pixels = max_pixels
        self.normalize = normalize

    @classmethod
    def from_paths(
        cls, paths: Sequence[str], transform: ClassificationPreset, *, max_pixels: int, normalize: bool = True
    ) -> MultiGenDataset:
        """Unlabelled files (label -1, no generator), bad ones skipped: what prediction reads."""
        return cls(
            samples=[Sample(p, -1, "") for p in paths],
            transform=transform,
            max_pixels=max_pixels,
            normalize=normalize,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        try:
            x = self.transform.load(s.path, max_pixels=self.max_pixels)
            if self.normalize:
                x = self.transform.normalize(x)
        except BadImageError as e:
            if self.on_bad_image == "error":
                raise
            return {"index": i, "bad": e.reason}
        return {"image": x, "label": s.label, "generator": self._gen_index[s.generator], "index": i}

    def class_counts(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for s in self.samples:
            out.setdefault(s.generator, Counter())[CLASS_NAMES[s.label]] += 1
        return out


def collate_skip_bad(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack good items; bad ones are listed as (index, reason) under "bad". Batch may be empty."""
    good = [it for it in items if "bad" not in it]
    batch: dict[str, Any] = {"bad": [(it["index"], it["bad"]) for it in items if "bad" in it]}
    if good:
        batch["image"] = torch.stack([it["image"] for it in good])
        batch["label"] = torch.tensor([it["label"] for it in good], dtype=torch.long)
        batch["generator"] = torch.tensor([it["generator"] for it in good], dtype=torch.long)
        batch["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
    else:
        batch["index"] = torch.zeros(0, dtype=torch.long)
    return batch


class ResumableShuffleSampler(torch.utils.data.Sampler[int]):
    """A seeded shuffle (a new permutation per epoch) that can start part-way through an epoch.

    The permutation depends only on (seed, epoch), so a run killed mid-epoch and resumed sees exactly the
    images an uninterrupted run would have seen, in the same order.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at each epoch start
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        start, self.start = self.start, 0  # the skip applies once, to the resumed epoch
        return iter(order[start:])

    def __len__(self) -> int:
        return self.n - self.start


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch: its state is (epoch, batches already yielded).

    Lightning stores `state_dict()` in every checkpoint and calls `load_state_dict` on resume; the sampler
    then skips the batches already trained on, so the resumed run takes the same optimiser steps.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, **kwargs: Any) -> None:
        self._rsampler = ResumableShuffleSampler(len(dataset), seed)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=self._rsampler, **kwargs)
        self._yielded = 0
        # Batches actually trained on this epoch. Lightning pre-fetches one batch ahead, so the count of
        # batches yielded overshoots; the data module points this at the trainer's own progress counter.
        self.progress: Callable[[], int] | None = None

    def __iter__(self):
        self._yielded = self._rsampler.start // self.batch_size if self._rsampler.start else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        return (
            -(-self._rsampler.n // self.batch_size)
            if not self.drop_last
            else self._rsampler.n // self.batch_size
        )

    def state_dict(self) -> dict[str, int]:
        done = self.progress() if self.progress is not None else self._yielded
        return {"epoch": self._rsampler.epoch, "batches": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._rsampler.epoch = int(state["epoch"])
        self._rsampler.start = int(state["batches"]) * int(self.batch_size or 1)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int | None = None,
    collate_fn: Any = collate_skip_bad,
) -> DataLoader:
    """A DataLoader that drops bad images from batches (`collate_fn`). shuffle with a seed gives a resumable
    loader."""
    kwargs: dict[str, Any] = dict(
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )
    if shuffle and seed is not None:
        return ResumableDataLoader(dataset, batch_size=batch_size, seed=seed, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)


class BadImageLog:
    """Collects (path, reason) for skipped images, once per path, and writes them as CSV."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, dataset: MultiGenDataset, bad: list[tuple[int, str]]) -> None:
        for idx, reason in bad:
            path = printable_path(dataset.samples[idx].path)
            if path not in self.items:
                self.items[path] = reason
                print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.items)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "reason"])
        for p, r in sorted(self.items.items()):
            w.writerow([p, r])
        return buf.getvalue()


def build_datasets(
    cfg: DataConfig, *, train_pre_ops: Sequence[PilOp] = ()
) -> tuple[MultiGenDataset, MultiGenDataset]:
    """Train and validation datasets for a data config. Augmentations apply to training only."""
    if cfg.root is None:
        raise LayoutError("no dataset root given (--data ROOT)")
    common = dict(on_bad_image=cfg.on_bad_image, max_pixels=cfg.max_pixels)
    # Training sees one crop per image and step (a random one with preprocess=crop); `crops` (k*k tiles whose
    # logits are combined) is how validation, evaluation and prediction look at the whole image.
    train = MultiGenDataset(
        cfg.root,
        cfg.train_split,
        build_preset(replace(cfg, crops=1), pre_ops=train_pre_ops),
        generators=cfg.train_generators,
        **common,
    )
    val = MultiGenDataset(
        cfg.root,
        cfg.val_split,
        build_preset(cfg),
        generators=cfg.test_generators or cfg.train_generators,
        **common,
    )
    return train, val
