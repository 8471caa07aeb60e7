"""Spectral fingerprints: mean log-magnitude spectra per generator and class, of the image and of its residual.

`compute_fingerprints` streams over a GenImage-layout split in batches on any device (running sums, so a
folder larger than memory is fine) and returns the means; `write_fingerprints` draws them (a PNG grid and a
radial-profile plot) and writes a JSON of summary statistics. `synapse7 fingerprint ROOT --out DIR` runs both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from synapse7.config import DataConfig
from synapse7.data import CLASS_NAMES, MultiGenDataset, Sample, build_loader, discover_samples
from synapse7.io import atomic_path, atomic_write_text, ensure_writable_dir
from synapse7.residuals import npr_residual
from synapse7.spectrum import log_magnitude
from synapse7.transforms import build_preset

KINDS = ("spectrum", "residual")
WINDOWS = ("hann", "none")


def _windowed(x: torch.Tensor, window: str) -> torch.Tensor:
    """x (B, C, S, S) minus its mean, times a 2-D Hann window (window="hann"), or x unchanged ("none").

    An image is not periodic, so the FFT sees a jump at its borders that puts a bright cross on both axes of
    every spectrum; in the mean over many images it hides the periodic artefacts this tool looks for (a real
    dataset's strongest "peaks" were all on that cross). The window tapers the borders away; the mean is
    removed first so that the window does not leak the DC term into the low frequencies.
    """
    if window == "none":
        return x
    s = x.shape[-1]
    w = torch.hann_window(s, periodic=True, dtype=x.dtype, device=x.device)
    return (x - x.mean(dim=(-2, -1), keepdim=True)) * (w[:, None] * w[None, :])


@dataclass(frozen=True)
class FingerprintResult:
    """Mean spectra per group. Groups are (generator, class name); arrays are fftshifted (DC at [S//2, S//2])."""

    groups: list[tuple[str, str]]
    counts: list[int]
    spectrum: np.ndarray  # (G, S, S) mean over images and channels of log|FFT2(x)|
    residual: np.ndarray  # (G, S, S) the same for the NPR residual
    size: int
    split: str
    window: str = "hann"

    def real_mean(self, kind: str) -> np.ndarray:
        """The real class pooled over every generator folder (weighted by image count). (S, S)."""
        arr = getattr(self, kind)
        idx = [i for i, (_, c) in enumerate(self.groups) if c == "REAL" and self.counts[i]]
        if not idx:
            raise ValueError("no real (nature) images: nothing to compare the generators with")
        w = np.asarray([self.counts[i] for i in idx], dtype=np.float64)
        return np.tensordot(w / w.sum(), arr[idx], axes=1)

    def fake_groups(self) -> list[int]:
        return [i for i, (_, c) in enumerate(self.groups) if c == "AI" and self.counts[i]]


def radial_profile(spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal mean of an fftshifted (S, S) spectrum by integer radius. Returns (freq cycles/pixel, profile)."""
    h, w = spec.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.rint(np.hypot(yy - h // 2, xx - w // 2)).astype(int)
    n_bins = min(h, w) // 2 + 1  # beyond S/2 only the corners remain
    keep = r < n_bins
    sums = np.bincount(r[keep], weights=spec[keep], minlength=n_bins)
    counts = np.bincount(r[keep], minlength=n_bins)
    return np.arange(n_bins) / min(h, w), sums / np.maximum(counts, 1)


def spectral_peaks(spec: np.ndarray, k: int = 5, min_radius: int = 2) -> list[dict[str, float]]:
    """The k strongest periodic components of an fftshifted (S, S) mean spectrum.

    The radial trend (natural images fall off as 1/f) is subtracted first, so a peak is a frequency that stands
    out from its own ring, which is what a periodic up-sampling artefact does. Each peak is reported once
    (the spectrum of a real image is symmetric), as frequencies in cycles/pixel and its height in log units.
    """
    h, w = spec.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.rint(np.hypot(yy - h // 2, xx - w // 2)).astype(int)
    # The trend is each ring's median, not its mean: a strong peak must not raise its own baseline.
    n_bins = len(radial_profile(spec)[1])
    ring = np.minimum(r, n_bins - 1)
    medians = np.array([np.median(spec[ring == b]) for b in range(n_bins)])
    trend = medians[ring]
    excess = spec - trend
    fy, fx = (yy - h // 2) / h, (xx - w // 2) / w
    # One of each symmetric pair: fx > 0, or fx == 0 and fy >= 0; nothing near DC.
    half = (fx > 0) | ((fx == 0) & (fy >= 0))
    excess = np.where(half & (r >= min_radius), excess, -np.inf)
    order = np.argsort(excess, axis=None)[::-1][:k]
    out = []
    for flat in order:
        i, j = np.unravel_index(flat, spec.shape)
        out.append({"fy": float(fy[i, j]), "fx": float(fx[i, j]), "excess": float(excess[i, j])})
    return out


def _select(samples: list[Sample], max_per_group: int | None, seed: int) -> list[Sample]:
    if max_per_group is None:
        return samples
    rng = np.random.default_rng(seed)
    by_group: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        by_group.setdefault((s.generator, s.label), []).append(s)
    out: list[Sample] = []
    for group in by_group.values():
        pick = rng.permutation(len(group))[:max_per_group]
        out.extend(group[i] for i in sorted(pick))
    return out


def compute_fingerprints(
    root: str | Path,
    *,
    split: str = "val",
    image_size: int = 256,
    preprocess: str = "crop",
    generators: Sequence[str] | None = None,
    max_per_group: int | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | torch.device | None = None,
    on_bad_image: str = "skip",
    progress: bool = True,
    seed: int = 0,
    window: str = "hann",
) -> FingerprintResult:
    """Mean log-magnitude spectra (image and NPR residual) per generator and class of a split.

    Images are centre-cropped to image_size at native resolution (preprocess="crop": no resampling to smear
    the artefacts; smaller images are resized up) or resized then cropped ("resize"), as in training.
    max_per_group: a seeded random subset of at most this many images per generator and class.
    window: "hann" tapers each image (and residual) before its FFT (see `_windowed`); "none" gives the plain
    spectrum the model's `rgb+fft`/`fft` input is made of.
    """
    from synapse7.predict import pick_device

    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if image_size % 2:
        raise ValueError(f"image_size must be even for the factor-2 residual, got {image_size}")
    dev = pick_device(device)
    samples = _select(discover_samples(root, split, generators), max_per_group, seed)
    preset = build_preset(DataConfig(root=str(root), image_size=image_size, preprocess=preprocess))
    ds = MultiGenDataset(
        samples=samples, transform=preset, on_bad_image=on_bad_image, normalize=False
    )  # uint8
    loader = build_loader(ds, batch_size=batch_size, num_workers=num_workers)
    n_groups = 2 * len(ds.generators)  # group = generator index * 2 + label
    acc = torch.float32 if dev.type == "mps" else torch.float64  # float64 sums: no drift over large folders
    sums = {k: torch.zeros(n_groups, image_size, image_size, dtype=acc, device=dev) for k in KINDS}
    counts = torch.zeros(n_groups, dtype=torch.long, device=dev)
    bad = 0
    it: Any = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="fingerprint", unit="batch", file=sys.stderr)
    with torch.inference_mode():
        for batch in it:
            bad += len(batch["bad"])
            if "image" not in batch:
                continue
            x = batch["image"].to(dev, non_blocking=True).float().div_(255.0)  # (B, 3, S, S) in [0, 1]
            group = (batch["generator"] * 2 + batch["label"]).to(dev)
            for kind, t in (("spectrum", x), ("residual", npr_residual(x))):
                spec = log_magnitude(_windowed(t, window)).mean(dim=1)  # (B, S, S): channels averaged
                sums[kind].index_add_(0, group, spec.to(acc))
            counts += torch.bincount(group, minlength=n_groups)
    if bad:
        print(f"fingerprint: skipped {bad} bad image(s)", file=sys.stderr)
    n = counts.cpu().numpy()
    denom = np.maximum(n, 1)[:, None, None]
    return FingerprintResult(
        groups=[(g, CLASS_NAMES[label]) for g in ds.generators for label in (0, 1)],
        counts=[int(c) for c in n],
        spectrum=(sums["spectrum"].cpu().numpy() / denom).astype(np.float32),
        residual=(sums["residual"].cpu().numpy() / denom).astype(np.float32),
        size=image_size,
        split=split,
        window=window,
    )


def fingerprint_summary(res: FingerprintResult, *, peaks: int = 5) -> dict[str, Any]:
    """Summary statistics of every mean spectrum and of each generator's difference from the real class."""

    def stats(a: np.ndarray) -> dict[str, Any]:
        freq, prof = radial_profile(a)
        return {
            "mean": float(a.mean()),
            "std": float(a.std()),
            "min": float(a.min()),
            "max": float(a.max()),
            "peaks": spectral_peaks(a, peaks),
            "radial_profile": [round(float(v), 4) for v in prof],
        }

    out: dict[str, Any] = {
        "split": res.split,
        "size": res.size,
        "window": res.window,
        "radial_freq": [round(float(f), 5) for f in radial_profile(res.spectrum[0])[0]],
        "groups": [],
    }
    real = (
        {k: res.real_mean(k) for k in KINDS}
        if any(c == "REAL" and n for (_, c), n in zip(res.groups, res.counts, strict=True))
        else None
    )
    for i, (gen, cls) in enumerate(res.groups):
        if not res.counts[i]:
            continue
        row: dict[str, Any] = {"generator": gen, "class": cls, "n_images": res.counts[i]}
        for kind in KINDS:
            arr = getattr(res, kind)[i]
            row[kind] = stats(arr)
            if cls == "AI" and real is not None:
                diff = arr - real[kind]
                row[f"{kind}_minus_real"] = {
                    "mean_abs": float(np.abs(diff).mean()),
                    "max": float(diff.max()),
                    "min": float(diff.min()),
                    "peaks": spectral_peaks(diff, peaks),
                }
        out["groups"].append(row)
    return out


def _rows(res: FingerprintResult) -> list[tuple[str, int | None]]:
    """Figure rows: the pooled real class, then every generator's AI class."""
    rows: list[tuple[str, int | None]] = [("real (all nature)", None)]
    rows += [(res.groups[i][0], i) for i in res.fake_groups()]
    return rows


def _save_png(fig: Any, path: Path, dpi: int, *, layout: bool = True) -> None:
    """Save a figure as a 256-colour PNG: spectra are noisy, and full RGB made the docs figures ~2 MB."""
    import io

    if layout:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    img = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=True)


def plot_fingerprint_grid(res: FingerprintResult, path: Path, *, dpi: int = 64) -> None:
    """Rows: pooled real, then each generator; columns: spectrum, residual spectrum, and their minus-real."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. a notebook's) alone

    rows = _rows(res)
    real = {k: res.real_mean(k) for k in KINDS}
    cols = ["mean log|FFT|", "mean log|FFT| of NPR residual", "minus real", "residual minus real"]
    fig = Figure(figsize=(10, 2.5 * len(rows)))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    diffs = [getattr(res, k)[i] - real[k] for _, i in rows if i is not None for k in KINDS]
    lim = float(np.percentile(np.abs(np.stack(diffs)), 99.5)) if diffs else 1.0  # one shared scale for diffs
    for r, (name, i) in enumerate(rows):
        for c, kind in enumerate(KINDS):
            arr = real[kind] if i is None else getattr(res, kind)[i]
            axes[r, c].imshow(arr, cmap="viridis", interpolation="antialiased")
            if i is not None:
                axes[r, c + 2].imshow(
                    arr - real[kind], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="antialiased"
                )
        n = (
            sum(res.counts[j] for j, (_, cl) in enumerate(res.groups) if cl == "REAL")
            if i is None
            else res.counts[i]
        )
        axes[r, 0].set_ylabel(f"{name}\n(n={n})", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.axis("off")
    for c, title in enumerate(cols):
        axes[0, c].set_title(title, fontsize=9)
    fig.suptitle(
        f"Mean spectra, split '{res.split}', {res.size} px, window {res.window} (DC at the centre; diff scale ±{lim:.2f})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title above the columns
    _save_png(fig, path, dpi, layout=False)


def plot_radial_profiles(res: FingerprintResult, path: Path, *, dpi: int = 100) -> None:
    """Azimuthally averaged mean spectrum (left) and residual spectrum (right), one line per row of the grid."""
    from matplotlib.figure import Figure

    real = {k: res.real_mean(k) for k in KINDS}
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, KINDS, strict=True):
        for name, i in _rows(res):
            arr = real[kind] if i is None else getattr(res, kind)[i]
            freq, prof = radial_profile(arr)
            ax.plot(
                freq, prof, lw=2.2 if i is None else 1.2, color="black" if i is None else None, label=name
            )
        ax.set_xlabel("spatial frequency (cycles/pixel)")
        ax.set_ylabel("mean log-magnitude")
        ax.set_title("image" if kind == "spectrum" else "NPR residual")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    _save_png(fig, path, dpi)


def write_fingerprints(
    res: FingerprintResult, out_dir: str | Path, *, save_arrays: bool = False
) -> dict[str, Path]:
    """fingerprint.png, radial_profile.png, fingerprint.json (and fingerprint.npz with save_arrays) in out_dir."""
    out = ensure_writable_dir(out_dir)
    paths = {
        "grid": out / "fingerprint.png",
        "radial": out / "radial_profile.png",
        "json": out / "fingerprint.json",
    }
    atomic_write_text(paths["json"], json.dumps(fingerprint_summary(res), indent=1))
    plot_fingerprint_grid(res, paths["grid"])
    plot_radial_profiles(res, paths["radial"])
    if save_arrays:
        paths["arrays"] = out / "fingerprint.npz"
        with atomic_path(paths["arrays"]) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                spectrum=res.spectrum,
                residual=res.residual,
                counts=np.asarray(res.counts),
                groups=np.asarray([f"{g}/{c}" for g, c in res.groups]),
            )
    return paths
