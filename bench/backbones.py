"""Backbone comparison: ResNet-34 from scratch (the baseline) against EfficientNet-Lite0 with ImageNet weights.

Each row is one `synapse7 train` command run as a subprocess; the row's val accuracy and AUC are those of the
last epoch (no epoch selection on val), read from RUN_DIR/logs/metrics.csv. Time per epoch is the command's
wall time divided by its epochs, so it includes start-up and one validation pass per epoch.

    PYTHONPATH=src .venv/bin/python bench/backbones.py                 # all rows, CIFAKE sd14 at 32 px
    PYTHONPATH=src .venv/bin/python bench/backbones.py --dry-run       # print the commands only

Results go to docs/backbones_results.md (and a JSON file beside the runs); runs go outside the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import load_average, machine_text
from synapse7.io import atomic_write_text
from synapse7.reports import fmt_value

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifake"


@dataclass(frozen=True)
class Row:
    name: str
    backbone: str
    weights: str
    strategy: str  # a named strategy or "all"
    input: str

    @property
    def is_baseline(self) -> bool:
        return self.weights == "none"


@dataclass(frozen=True)
class RowResult:
    row: Row
    command: str
    returncode: int
    wall_s: float
    epochs: int
    s_per_epoch: float | None
    val_acc: float | None
    val_auc: float | None
    trainable_params: str | None
    error: str | None = None


def build_rows(inputs: list[str]) -> list[Row]:
    rows = []
    for mode in inputs:
        rows.append(Row(f"resnet34 scratch {mode}", "resnet34", "none", "all", mode))
        for strategy in ("frozen-early", "linear-probe", "full"):
            rows.append(
                Row(f"efficientnet_lite0 {strategy} {mode}", "efficientnet_lite0", "imagenet", strategy, mode)
            )
    return rows


def train_command(row: Row, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "synapse7.cli",
        "train",
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--num-workers",
        "0",
        "--backbone",
        row.backbone,
        "--weights",
        row.weights,
        "--input",
        row.input,
        "--seed",
        str(args.seed),
        "--accelerator",
        "cpu",
        "--no-progress",
    ]
    cmd += ["--trainable", "all"] if row.strategy == "all" else ["--strategy", row.strategy]
    if args.limit_train_batches:
        cmd += ["--limit-train-batches", str(args.limit_train_batches)]
    return cmd + shlex.split(args.extra)


def read_last_val(metrics_csv: Path) -> tuple[float | None, float | None]:
    """(val_acc, val_auc) of the last validation row in a Lightning CSVLogger metrics file."""
    if not metrics_csv.is_file():
        return None, None
    with metrics_csv.open(newline="") as f:
        vals = [r for r in csv.DictReader(f) if r.get("val_auc")]
    if not vals:
        return None, None
    return float(vals[-1]["val_acc"]), float(vals[-1]["val_auc"])


def run_row(row: Row, args: argparse.Namespace, out: Path) -> RowResult:
    cmd = train_command(row, args, out)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(args.threads)}
    shown = f"OMP_NUM_THREADS={args.threads} PYTHONPATH=src " + shlex.join(
        [".venv/bin/python" if c == sys.executable else c for c in cmd]
    )
    print(f"[bench] {row.name}: {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    acc, auc = read_last_val(out / "logs" / "metrics.csv")
    m = re.search(r"trainable=([\d,]+/[\d,]+) params", proc.stderr)
    err = None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]
    if out.is_dir():  # keep the run's log for failures and for the record
        atomic_write_text(out / "stderr.txt", proc.stderr)
    return RowResult(
        row,
        shown,
        proc.returncode,
        wall,
        args.epochs,
        wall / args.epochs if args.epochs else None,
        acc,
        auc,
        m.group(1) if m else None,
        str(err) if err else None,
    )


def results_markdown(results: list[RowResult], meta: dict[str, str]) -> str:
    """The comparison table; ratios are against the ResNet-34-from-scratch row with the same input mode."""
    base = {r.row.input: r for r in results if r.row.is_baseline}
    lines = ["# Backbone comparison (bench/backbones.py)", ""]
    lines += [f"- **{k}:** {v}" for k, v in meta.items()]
    lines += [
        "",
        "Val metrics are from the last epoch (no selection on val). s/epoch = wall time of the "
        "`synapse7 train` command / epochs (includes start-up and validation). Ratios are against "
        "ResNet-34 from scratch with the same input, measured in the same run. On a shared machine the "
        "times move with the load average above; treat ratios within ~2x as noise.",
        "",
        "| row | input | trainable params | val acc | val AUC | AUC − baseline | s/epoch | time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = base.get(r.row.input)
        d_auc = (r.val_auc - b.val_auc) if (b and r.val_auc is not None and b.val_auc is not None) else None
        ratio = (r.s_per_epoch / b.s_per_epoch) if (b and r.s_per_epoch and b.s_per_epoch) else None
        status = "" if r.returncode == 0 else f" (failed: {r.error})"
        lines.append(
            f"| {r.row.name}{status} | {r.row.input} | {r.trainable_params or 'n/a'} | "
            f"{fmt_value(r.val_acc, '.4f', none='n/a')} | {fmt_value(r.val_auc, '.4f', none='n/a')} | {fmt_value(d_auc, '+.4f', none='n/a')} | "
            f"{fmt_value(r.s_per_epoch, '.1f', none='n/a')} | {fmt_value(ratio, '.2f', none='n/a') + ('×' if ratio else '')} |"
        )
    lines += ["", "## Commands", ""]
    lines += [f"{i}. {r.row.name}: `{r.command}`" for i, r in enumerate(results, 1)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="GenImage-layout root (default: CIFAKE, sd14)"
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit-train-batches", type=int, default=100, help="training batches per epoch (0: all)")
    p.add_argument("--inputs", default="rgb,fft", help="comma list of input modes")
    p.add_argument("--only", help="run only rows whose name contains this text")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS per run (1 is fastest on a busy box)"
    )
    p.add_argument(
        "--runs", type=Path, default=Path("/tmp/synapse7_bench_backbones"), help="run folders (not the repo)"
    )
    p.add_argument("--results", type=Path, default=REPO / "docs" / "backbones_results.md")
    p.add_argument(
        "--extra", default="", help="more `synapse7 train` flags for every row, e.g. '--align jpeg:96'"
    )
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)

    rows = [r for r in build_rows(args.inputs.split(",")) if not args.only or args.only in r.name]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.dry_run:
        for r in rows:
            print(shlex.join(train_command(r, args, args.runs / stamp / r.name.replace(" ", "_"))))
        return 0
    meta = {
        "machine": machine_text(),
        "data": str(args.data),
        "load average at start": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget": f"{args.epochs} epochs x {args.limit_train_batches or 'all'} batches of {args.batch_size} "
        f"at {args.image_size} px, {args.threads} thread(s) per run, runs one after another",
    }
    t0 = time.perf_counter()
    results = []
    for r in rows:
        res = run_row(r, args, args.runs / stamp / r.name.replace(" ", "_"))
        print(
            f"[bench] -> acc={res.val_acc} auc={res.val_auc} {res.wall_s:.0f}s rc={res.returncode}",
            file=sys.stderr,
            flush=True,
        )
        results.append(res)
    meta["load average at end"] = load_average()
    meta["total runtime"] = f"{time.perf_counter() - t0:.0f} s for {len(rows)} runs"
    meta["bench command"] = "PYTHONPATH=src .venv/bin/python bench/backbones.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    text = results_markdown(results, meta)
    atomic_write_text(args.results, text)
    atomic_write_text(
        args.runs / stamp / "results.json",
        json.dumps([asdict(r) for r in results] + [meta], indent=1, default=str),
    )
    print(text)
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
