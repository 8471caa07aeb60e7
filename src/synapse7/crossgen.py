"""Cross-generator protocols: GenImage's "train on one, test on all" matrix, and leave-one-generator-out.

Every sub-run is an ordinary `train()` into OUT/<mode>/<name>/run followed by `evaluate()` of its best.ckpt
into OUT/<mode>/<name>/eval, so each can be inspected (or re-evaluated) on its own. Running the same command
again skips finished sub-runs and resumes interrupted ones; a sub-run trained with another config is an error.
Validation during training (which picks best.ckpt) only ever sees the training generators.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from synapse7.config import RunConfig
from synapse7.data import LayoutError, find_generators
from synapse7.evaluate import evaluate
from synapse7.io import atomic_write_text, ensure_writable_dir
from synapse7.model import resolve_normalization
from synapse7.reports import table_csv, table_markdown, write_json
from synapse7.train import train

CROSSGEN_MODES = ("train-one-test-all", "leave-one-out")
LOO_COLUMNS = ["held_out", "accuracy", "ap", "roc_auc", "real_acc", "fake_acc", "support", "seen_accuracy"]


@dataclass(frozen=True)
class SubRun:
    """One training + evaluation of a protocol: `name` is the row (training or held-out generator)."""

    name: str
    train_generators: tuple[str, ...]
    test_generators: tuple[str, ...]
    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def eval_dir(self) -> Path:
        return self.folder / "eval"


@dataclass(frozen=True)
class CrossGenResult:
    mode: str
    columns: list[str]  # test generators
    per_run: dict[str, list[dict[str, Any]]]  # row name -> evaluate's per-generator rows (with "ALL")
    table: list[dict[str, Any]]
    out_dir: Path | None


def available_generators(root: str | Path, train_split: str = "train", val_split: str = "val") -> list[str]:
    """Generators with both a training and a validation split, sorted."""
    both = sorted(set(find_generators(root, train_split)) & set(find_generators(root, val_split)))
    if not both:
        raise LayoutError(f"no generator under {root} has both '{train_split}' and '{val_split}' splits")
    return both


def plan_crossgen(cfg: RunConfig, out_dir: str | Path, mode: str) -> list[SubRun]:
    """The sub-runs of `mode`. cfg.data.test_generators: the columns and the pool (default: every generator);
    cfg.data.train_generators: which rows to run (training generators, or held-out ones; default: the pool)."""
    if mode not in CROSSGEN_MODES:
        raise ValueError(f"mode must be one of {', '.join(CROSSGEN_MODES)}, got {mode!r}")
    if cfg.data.root is None:
        raise LayoutError("no dataset root given (--data ROOT)")
    found = available_generators(cfg.data.root, cfg.data.train_split, cfg.data.val_split)
    pool = list(cfg.data.test_generators or found)
    rows = list(cfg.data.train_generators or pool)
    missing = sorted((set(pool) | set(rows)) - set(found))
    if missing:
        raise LayoutError(
            f"generator(s) {', '.join(missing)} not found (with train and val splits) under "
            f"{cfg.data.root}; available: {', '.join(found)}"
        )
    if mode == "leave-one-out":
        if len(pool) < 2:
            raise ValueError("leave-one-out needs at least two generators")
        extra = sorted(set(rows) - set(pool))
        if extra:
            raise ValueError(f"held-out generator(s) {', '.join(extra)} are not among the test generators")
    base = Path(out_dir) / mode
    if mode == "train-one-test-all":
        return [SubRun(g, (g,), tuple(pool), base / g) for g in rows]
    return [SubRun(g, tuple(x for x in pool if x != g), tuple(pool), base / f"without_{g}") for g in rows]


def sub_config(cfg: RunConfig, run: SubRun) -> RunConfig:
    """The training config of one sub-run: train and validate on its training generators only."""
    return replace(
        cfg,
        data=replace(cfg.data, train_generators=run.train_generators, test_generators=run.train_generators),
    )


def _check_same_config(run_dir: Path, cfg: RunConfig) -> None:
    saved = run_dir / "config.yaml"
    # train() saves the config with the backbone's pretrained normalisation filled in.
    if saved.is_file() and yaml.safe_load(saved.read_text()) != resolve_normalization(cfg).to_dict():
        raise FileExistsError(f"{run_dir} was trained with another config ({saved}); use another --out")


def train_sub_run(
    cfg: RunConfig,
    run: SubRun,
    *,
    progress: bool = False,
    calibrate: Callable[[Path, RunConfig], Any] | None = None,
) -> Path:
    """Train one sub-run unless finished (train_result.json), resuming an interrupted one; returns best.ckpt."""

    rcfg = sub_config(cfg, run)
    done = run.run_dir / "train_result.json"
    _check_same_config(run.run_dir, rcfg)
    if not done.is_file():
        res = train(rcfg, run.run_dir, resume=(run.run_dir / "last.ckpt").is_file(), progress=progress)
        if calibrate is not None:
            calibrate(res.best_ckpt, rcfg)
        atomic_write_text(
            done,
            json.dumps(
                {
                    "best_ckpt": str(res.best_ckpt),
                    "best_val_auc": res.best_val_auc,
                    "epochs": res.epochs_run,
                    "steps": res.global_step,
                    "bad_images": res.bad_images,
                },
                indent=2,
            )
            + "\n",
        )
    return run.run_dir / "best.ckpt"


def evaluate_sub_run(cfg: RunConfig, run: SubRun, *, device: str | None = None) -> list[dict[str, Any]]:
    """Evaluate a sub-run's best.ckpt on its test generators (cached in eval/crossgen_eval.json)."""

    cache = run.eval_dir / "crossgen_eval.json"
    ckpt = run.run_dir / "best.ckpt"
    if cache.is_file() and cache.stat().st_mtime >= ckpt.stat().st_mtime:
        return json.loads(cache.read_text())["per_generator"]
    assert cfg.data.root is not None
    res = evaluate(
        ckpt,
        cfg.data.root,
        split=cfg.data.val_split,
        out_dir=run.eval_dir,
        generators=list(run.test_generators),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        device=device,
        quiet=True,
    )
    write_json(cache, {"metrics": res.metrics, "per_generator": res.per_generator})
    return res.per_generator


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _metric(rows: list[dict[str, Any]], generator: str, key: str) -> float:
    for r in rows:
        if r["generator"] == generator:
            v = r.get(key)
            return float("nan") if v is None else float(v)
    return float("nan")


def train_one_test_all_table(
    per_run: dict[str, list[dict[str, Any]]], columns: Sequence[str], metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """Rows = training generator, columns = test generator, then "avg" (all columns, as GenImage averages)
    and "avg_unseen" (columns other than the training generator); a last "mean" row averages each column."""
    table = []
    for name, rows in per_run.items():
        vals = {c: _metric(rows, c, metric) for c in columns}
        table.append(
            {
                "train": name,
                **vals,
                "avg": _nanmean(list(vals.values())),
                "avg_unseen": _nanmean([v for c, v in vals.items() if c != name]),
            }
        )
    if table:
        keys = [*columns, "avg", "avg_unseen"]
        table.append({"train": "mean", **{k: _nanmean([r[k] for r in table]) for k in keys}})
    return table


def leave_one_out_table(
    per_run: dict[str, list[dict[str, Any]]], columns: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per held-out generator: its metrics, and the mean accuracy over the generators trained on."""
    table = []
    for name, rows in per_run.items():
        row = {"held_out": name, **{k: _metric(rows, name, k) for k in LOO_COLUMNS[1:-1]}}
        row["support"] = int(row["support"]) if not math.isnan(row["support"]) else 0
        row["seen_accuracy"] = _nanmean([_metric(rows, c, "accuracy") for c in columns if c != name])
        table.append(row)
    if table:
        table.append(
            {
                "held_out": "mean",
                **{k: _nanmean([r[k] for r in table]) for k in LOO_COLUMNS[1:] if k != "support"},
                "support": sum(r["support"] for r in table),
            }
        )
    return table


def crossgen_table(
    mode: str, per_run: dict[str, list[dict[str, Any]]], columns: Sequence[str]
) -> list[dict[str, Any]]:
    if mode == "train-one-test-all":
        return train_one_test_all_table(per_run, columns)
    return leave_one_out_table(per_run, columns)


def crossgen_markdown(result: CrossGenResult, cfg: RunConfig | None = None) -> str:
    parts = []
    if cfg is not None:
        parts.append(
            f"Cross-generator protocol `{result.mode}` on `{cfg.data.root}` (split {cfg.data.val_split}): "
            f"{cfg.model.backbone}, input {cfg.model.input}, weights {cfg.model.weights}, "
            f"{cfg.train.epochs} epoch(s), image size {cfg.data.image_size}, preprocess "
            f"{cfg.data.preprocess}, align {cfg.data.align or 'none'}, seed {cfg.train.seed}.\n"
        )
    if result.mode == "train-one-test-all":
        cols = ["train", *result.columns, "avg", "avg_unseen"]
        parts.append("Accuracy (rows: training generator; columns: test generator):\n")
        parts.append(table_markdown(result.table, cols))
        ap = train_one_test_all_table(result.per_run, result.columns, "ap")
        parts.append("\nAverage precision:\n")
        parts.append(table_markdown(ap, cols))
    else:
        parts.append("Leave one generator out (train on the others, test on the held-out one):\n")
        parts.append(table_markdown(result.table, LOO_COLUMNS))
        matrix = train_one_test_all_table(result.per_run, result.columns)
        parts.append(
            "\nAccuracy of each leave-one-out model on every generator (rows: held-out generator):\n"
        )
        parts.append(
            table_markdown(
                [{**r, "held_out": r["train"]} for r in matrix[:-1]], ["held_out", *result.columns]
            )
        )
    return "\n".join(parts)


def write_crossgen(result: CrossGenResult, out_dir: str | Path, cfg: RunConfig | None = None) -> None:
    """crossgen.md, crossgen.csv (the main table) and crossgen.json, each written atomically."""
    out = ensure_writable_dir(out_dir)
    cols = (
        ["train", *result.columns, "avg", "avg_unseen"]
        if result.mode == "train-one-test-all"
        else LOO_COLUMNS
    )
    atomic_write_text(out / "crossgen.csv", table_csv(result.table, cols))
    atomic_write_text(out / "crossgen.md", crossgen_markdown(result, cfg))
    payload = {
        "mode": result.mode,
        "columns": result.columns,
        "table": result.table,
        "per_run": result.per_run,
        "config": cfg.to_dict() if cfg is not None else None,
    }
    write_json(out / "crossgen.json", payload)


def run_crossgen(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    mode: str = "train-one-test-all",
    progress: bool = False,
    device: str | None = None,
    calibrate: Callable[[Path, RunConfig], Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> CrossGenResult:
    """Run every sub-run of `mode` (skipping finished ones) and write the table into out_dir."""
    say = log or (lambda m: print(m, file=sys.stderr))
    out = ensure_writable_dir(out_dir)
    previous = out / "crossgen.json"
    if previous.is_file() and json.loads(previous.read_text()).get("mode") != mode:
        raise FileExistsError(f"{out} holds the tables of another protocol ({previous}); use another --out")
    plan = plan_crossgen(cfg, out, mode)
    columns = list(plan[0].test_generators) if plan else []
    per_run: dict[str, list[dict[str, Any]]] = {}
    for i, run in enumerate(plan, 1):
        say(f"crossgen {mode} [{i}/{len(plan)}] {run.name}: train on {', '.join(run.train_generators)}")
        train_sub_run(cfg, run, progress=progress, calibrate=calibrate)
        per_run[run.name] = evaluate_sub_run(cfg, run, device=device)
        say(
            f"crossgen {mode} [{i}/{len(plan)}] {run.name}: accuracy on "
            + ", ".join(f"{c} {_metric(per_run[run.name], c, 'accuracy'):.3f}" for c in columns)
        )
    result = CrossGenResult(mode, columns, per_run, crossgen_table(mode, per_run, columns), out)
    write_crossgen(result, out, cfg)
    return result
