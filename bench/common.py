"""Shared helpers for the speed benchmarks: test images, checkpoints, timing, peak RSS, isolated runs, output.

Every benchmark runs Synapse-7 and the reference-style baseline (bench/baseline.py) in the same invocation and
prints the ratio; absolute images/s depend on the machine and on what else runs on it, the ratios much less.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# ----------------------------------------------------------------------------------------------------------
# Inputs


def photo_crops(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """n HWC uint8 crops (w, h) of scikit-image's bundled photographs (real image statistics, no download)."""
    from synapse7.demo import load_photos

    rng = np.random.default_rng(seed)
    photos = load_photos()
    w, h = size
    out = []
    for _ in range(n):
        p = photos[rng.integers(len(photos))]
        img = Image.fromarray(p)
        scale = max(w / img.width, h / img.height) * rng.uniform(1.0, 1.3)
        img = img.resize(
            (max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.Resampling.BILINEAR
        )
        x, y = rng.integers(0, img.width - w + 1), rng.integers(0, img.height - h + 1)
        out.append(np.asarray(img.crop((x, y, x + w, y + h))))
    return out


def write_images(
    folder: str | os.PathLike,
    n: int,
    *,
    size: tuple[int, int] = (500, 375),
    fmt: str = "jpeg",
    seed: int = 0,
    pool: int = 64,
) -> list[str]:
    """Write n images (JPEG q90 or PNG) into folder, reusing up to `pool` distinct crops; returns sorted paths."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    ext = {"jpeg": ".jpg", "png": ".png"}[fmt]
    existing = sorted(str(p) for p in d.glob(f"*{ext}"))
    if len(existing) == n:
        return existing
    crops = photo_crops(min(n, pool), size, seed)
    paths = []
    for i in range(n):
        p = d / f"{i:06d}{ext}"
        img = Image.fromarray(crops[i % len(crops)])
        img.save(p, quality=90) if fmt == "jpeg" else img.save(p)
        paths.append(str(p))
    return paths


def write_dataset(root: str | os.PathLike, *, n_train: int, n_val: int, size: int = 256) -> Path:
    """A GenImage-layout stand-in dataset (synapse7.demo's generator-style decoders), cached between runs."""
    from synapse7.demo import make_demo_dataset

    root = Path(root)
    marker = root / f".made-{n_train}-{n_val}-{size}"
    if not marker.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        make_demo_dataset(root, size=size, n_train=n_train, n_val=n_val)
        marker.write_text("ok")
    return root


def make_checkpoint(cfg: Any, path: str | os.PathLike, *, seed: int = 0) -> Path:
    """A Synapse-7 checkpoint of an untrained network (speed does not depend on the weights' values)."""
    import torch

    from synapse7.model import build_model

    torch.manual_seed(seed)
    net = build_model(cfg.model)
    with (
        torch.no_grad()
    ):  # untrained features are large: keep logits O(1) so P(AI) comparisons mean something
        net.head.weight.mul_(1e-3)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"config": cfg.to_dict()},
            "synapse7": {"threshold": 0.5},
        },
        p,
    )
    return p


# ----------------------------------------------------------------------------------------------------------
# Measurement


def make_view(
    key: str, root: Path, view: Path, *, fraction: float, seed: int, held: str = "calib", rest: str = "fit"
) -> dict[str, int]:
    """VIEW/KEY/<generator>/{rest,held}/{ai,nature}/: symlinks to ROOT's train split (nothing copied), a seeded
    `fraction` of each generator's files in `held` (chosen by file name, so a paired real and fake go to the
    same side), the others in `rest`. Returns the number of files on each side."""
    from synapse7.data import find_generators

    counts = {rest: 0, held: 0}
    gens = find_generators(root, "train")
    # One name set for every generator folder: a photo of the self-made set is held out for every method.
    names = sorted(
        {
            f.name
            for d in gens.values()
            for cls in ("ai", "nature")
            if (d / cls).is_dir()
            for f in (d / cls).iterdir()
        }
    )
    rng = np.random.default_rng(seed)
    chosen = set(np.array(names)[rng.random(len(names)) < fraction].tolist()) if names else set()
    for gen, split_dir in gens.items():
        for cls in ("ai", "nature"):
            for f in sorted((split_dir / cls).iterdir()) if (split_dir / cls).is_dir() else []:
                side = held if f.name in chosen else rest
                dst = view / key / gen / side / cls / f.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.is_symlink():
                    dst.symlink_to(f.resolve())
                counts[side] += 1
    return counts


def _proc_kib(pid: int, file: str, field: str) -> int:
    """A `Field:   N kB` value from /proc/PID/status or /proc/PID/smaps_rollup (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(PSS, RSS) summed over a process and its descendants, in MiB.

    PSS splits pages shared between processes (forked DataLoader workers share the parent's libraries and
    weights) among them, so its sum is the tree's real footprint; the RSS sum counts shared pages repeatedly.
    """
    pss = rss = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        pss += _proc_kib(p, "smaps_rollup", "Pss")
        rss += _proc_kib(p, "status", "VmRSS")
        stack += _children(p)
    return pss / 1024, rss / 1024


def main_peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that over exec from the forking
    parent, so a freshly spawned child would report its parent's size."""
    return _proc_kib(os.getpid(), "status", "VmHWM") / 1024


class RssSampler:
    """Samples a process tree's memory in a background thread: `samples` holds (seconds, PSS MiB, RSS MiB)."""

    def __init__(self, pid: int | None = None, every: float = 0.25) -> None:
        self.pid, self.every = pid or os.getpid(), every
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - t0, *tree_memory_mib(self.pid)))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def profile(self) -> dict[str, float]:
        """Peak PSS/RSS of the tree and its PSS at 10/50/90 % of the run (flat memory: the last three agree)."""
        if not self.samples:
            return {}
        pss = [s[1] for s in self.samples]
        at = {
            f"tree_pss_at_{q}pct_mib": round(pss[min(len(pss) - 1, int(len(pss) * q / 100))], 1)
            for q in (10, 50, 90)
        }
        return {
            "tree_peak_pss_mib": round(max(pss), 1),
            "tree_peak_rss_sum_mib": round(max(s[2] for s in self.samples), 1),
            **at,
            "memory_samples": len(pss),
        }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _isolated_target(queue: Any, fn: Callable[..., dict], kwargs: dict[str, Any]) -> None:
    try:
        mp.set_start_method("fork", force=True)  # DataLoader workers forked as usual, not spawned like us
        with RssSampler() as sampler:
            out = fn(**kwargs)
        out.update(sampler.profile(), main_peak_rss_mib=round(main_peak_rss_mib(), 1))
        queue.put(("ok", out))
    except BaseException as e:  # noqa: BLE001 - report any failure to the parent
        import traceback

        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_isolated(fn: Callable[..., dict], **kwargs: Any) -> dict[str, Any]:
    """Run fn(**kwargs) in a fresh spawned process, so its memory is its own; returns fn's dict + memory."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_isolated_target, args=(q, fn, kwargs))
    p.start()
    while True:  # a child that dies before reporting (killed, crashed on import) must not hang the bench
        try:
            status, out = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(
                    f"{fn.__name__}: its subprocess exited with code {p.exitcode} without a result"
                ) from None
    p.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its subprocess:\n{out}")
    return out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how much else ran on the CPU."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict[str, Any]:
    """What the figures were measured on, including the load other processes put on the CPU."""
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_text() -> str:
    """`machine()` in one line, for reports."""
    m = machine()
    return (
        f"{platform.system()} {platform.machine()}, {m['cores']} CPU core(s) ({m['cpu']}), {m['gpu'] or 'no GPU'}; "
        f"Python {m['python']}, torch {m['torch']}"
    )


def best_rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Items per second of the fastest of `repeats` calls of fn (each handling n items), after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def report(
    name: str,
    rows: list[dict[str, Any]],
    *,
    extra: dict[str, Any] | None = None,
    out: str | os.PathLike | None = None,
) -> None:
    """Print rows as a markdown table and as one JSON line; optionally write the JSON to `out`."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    print(f"\n## {name}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    payload = {"benchmark": name, "machine": machine(), "argv": sys.argv, "rows": rows, **(extra or {})}
    print("\n" + json.dumps(payload))
    if out:
        from synapse7.io import atomic_write_text

        atomic_write_text(Path(out), json.dumps(payload, indent=1))


def _fmt(v: Any) -> str:
    # 4 significant digits: with 3, an accuracy of 0.9745 would print as 0.975 (one image over 2,000 matters)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
