"""A real Optuna sweep and its check: the best configuration found against the hand-set default, same budget.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 .venv/bin/python bench/sweep.py --data ../shared/data/cifake \
        --space bench/sweep_cifake.yaml --out bench_out/sweep_cifake --trials 8

1. The sweep never sees the evaluation split: ROOT/<generator>/train is split (seeded, per generator and class)
   into an inner train and an inner val (--holdout of it), made of symlinks under OUT/inner (no image copied).
2. `synapse7.sweep.run_sweep` searches the space on the inner split (sqlite storage in OUT: rerunning the command
   continues an interrupted sweep).
3. The hand-set default (the space's base config with the library defaults for every searched field) and the
   best configuration are each trained on the whole ROOT train split with the same budget, and evaluated on
   ROOT/val with `synapse7.evaluate.evaluate`. OUT/sweep_result.md gets the table; docs/sweep_results.md is
   written from it when --docs is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synapse7.config import RunConfig, load_config  # noqa: E402
from synapse7.data import CLASS_NAMES, discover_samples  # noqa: E402
from synapse7.io import atomic_write_text  # noqa: E402


def display(path: Path) -> str:
    """A path relative to the repository when it is inside it (the docs must not name this machine's folders)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def inner_split(root: Path, out: Path, holdout: float, seed: int) -> Path:
    """OUT/<generator>/{train,val}/{ai,nature}/ as symlinks to ROOT's train images; returns OUT."""
    if (out / ".done").exists():
        return out
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[str]] = {}
    for s in discover_samples(root, "train"):
        groups.setdefault((s.generator, s.label), []).append(s.path)
    for (gen, label), paths in groups.items():
        order = rng.permutation(len(paths))
        n_val = round(holdout * len(paths))
        cls = "ai" if CLASS_NAMES[label] == "AI" else "nature"
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "train"
            d = out / gen / split / cls
            d.mkdir(parents=True, exist_ok=True)
            link = d / f"{i:06d}_{Path(paths[i]).name}"
            if not link.exists():
                link.symlink_to(Path(paths[i]).resolve())
    (out / ".done").write_text("")
    return out


def train_and_evaluate(cfg: RunConfig, root: Path, run: Path) -> dict:
    from synapse7.evaluate import evaluate
    from synapse7.train import train

    if not (run / "best.ckpt").exists():
        train(cfg, run, resume=(run / "last.ckpt").exists(), progress=False)
    # config.yaml is written when training starts and last.ckpt when it ends: the wall-clock time of the
    # training, also when this invocation reuses a finished run
    t_train = (run / "last.ckpt").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    # last.ckpt: the end of the budget, as in the README's CIFAKE comparisons (best.ckpt is chosen on val)
    ev = evaluate(run / "last.ckpt", root, split="val", out_dir=run / "eval_last", num_workers=0, quiet=True)
    m = ev.metrics
    return {
        "accuracy": m["accuracy"],
        "roc_auc": m["roc_auc"],
        "real_acc": m["real_acc"],
        "fake_acc": m["fake_acc"],
        "train_seconds": round(t_train, 1),
    }


def search_time(storage: str) -> tuple[float, float]:
    """Wall-clock span of the study (first trial start to last trial end) and the sum of its trials' times."""
    import optuna

    trials = [t for t in optuna.load_study(study_name="bench", storage=storage).trials if t.datetime_complete]
    if not trials:
        return 0.0, 0.0
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return span.total_seconds(), busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--space", type=Path, default=REPO / "bench" / "sweep_cifake.yaml")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "sweep")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--timeout", type=float, help="seconds for the search (the final trainings come on top)")
    ap.add_argument("--holdout", type=float, default=0.2, help="part of ROOT/train the sweep validates on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", action="store_true", help="also write docs/sweep_results.md")
    args = ap.parse_args()

    from synapse7.sweep import load_search_space, run_sweep

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = load_search_space(args.space)
    inner = inner_split(args.data.resolve(), out / "inner", args.holdout, args.seed)
    storage = f"sqlite:///{out / 'sweep.db'}"
    res = run_sweep(
        inner,
        out / "sweep",
        space=space,
        n_trials=args.trials,
        timeout=args.timeout,
        storage=storage,
        study_name="bench",
        seed=args.seed,
    )
    span_s, busy_s = search_time(storage)
    if res.best_yaml is None:
        sys.exit("no trial completed")
    configs = {
        "hand-set default": space.config({}, str(args.data.resolve())),
        "sweep best": load_config(res.best_yaml, data={"root": str(args.data.resolve())}),
    }
    rows = {
        name: train_and_evaluate(cfg, args.data.resolve(), out / "final" / name.replace(" ", "_"))
        for name, cfg in configs.items()
    }
    searched = [p.name for p in space.params]

    def value(cfg: RunConfig, name: str) -> object:
        section, key = name.split(".")
        return getattr(getattr(cfg, section), key)

    lines = [
        f"# Optuna sweep on `{args.data}`",
        "",
        f"Search: {res.n_complete} completed + {res.n_pruned} pruned trial(s) ({res.n_failed} failed), TPE, median "
        f"pruning on the inner val ROC-AUC after each epoch; {span_s / 60:.1f} min of search from the first trial's "
        f"start to the last one's end ({busy_s / 60:.1f} min in trials; every trial is listed in "
        f"`{display(out / 'sweep' / 'trials.csv')}`). The search validated on {args.holdout:.0%} of the train split "
        f"held out (symlinks, seed {args.seed}); it never saw `val`.",
        "",
        "Both configurations below are then trained on the whole train split with the same budget "
        f"(`train.epochs={configs['sweep best'].train.epochs}`, `limit_train_batches="
        f"{configs['sweep best'].train.limit_train_batches}`, batch {configs['sweep best'].data.batch_size}, "
        f"seed {configs['sweep best'].train.seed}) and evaluated on `val` (last.ckpt, threshold 0.5).",
        "",
        "| configuration | "
        + " | ".join(f"`{n}`" for n in searched)
        + " | val accuracy | val ROC-AUC | real acc | fake acc | train s |",
        "|---|" + "---|" * len(searched) + "---|---|---|---|---|",
    ]
    for name, cfg in configs.items():
        r = rows[name]
        vals = " | ".join(
            f"{v:.3g}" if isinstance(v, float) else str(v) for v in (value(cfg, n) for n in searched)
        )
        lines.append(
            f"| {name} | {vals} | {r['accuracy']:.4f} | {r['roc_auc']:.4f} | {r['real_acc']:.3f} | "
            f"{r['fake_acc']:.3f} | {r['train_seconds']:.0f} |"
        )
    cmd = "OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 .venv/bin/python bench/sweep.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    lines += [
        "",
        f"Best inner-val ROC-AUC in the search: {res.best_value:.4f} (trial {res.best_trial}). Each row is one "
        "training with one seed; with budgets this short, a gap of a point or two may be seed noise (not "
        "measured here). `train s` is wall-clock time on a CPU shared with other jobs.",
        "",
        "Command (rerunning it continues the study and reuses finished trainings):",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, no GPU, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "",
        "![optimisation history](sweep/history.png) ![parameter importances](sweep/importances.png)",
    ]
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(out / "sweep_result.md", text)
    (out / "sweep_result.json").write_text(
        json.dumps({"rows": rows, "search_seconds": span_s, "best_params": res.best_params}, indent=1)
    )
    if args.docs:  # the table and the study's two plots (small PNGs made by run_sweep)
        atomic_write_text(REPO / "docs" / "sweep_results.md", text)
        for name in ("history.png", "importances.png"):
            if (out / "sweep" / name).exists():
                (REPO / "docs" / "sweep").mkdir(exist_ok=True)
                (REPO / "docs" / "sweep" / name).write_bytes((out / "sweep" / name).read_bytes())
    print(text)


if __name__ == "__main__":
    main()
