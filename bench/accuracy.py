"""Accuracy protocols of issue 3, end to end on ../shared/data, written up in docs/results.md.

    PYTHONPATH=src .venv/bin/python bench/accuracy.py [--only cifake,genimage,robustness] [--out DIR]

Protocols (each a list of `synapse7` CLI commands, run one after another in subprocesses):
  cifake      train on cifake/sd14 train, evaluate on val: accuracy (target >= 0.975) and ROC-AUC (>= 0.995);
              also the accuracy at a threshold chosen on val itself (optimistic: chosen on the test data).
  genimage    audit genimage-mini; train without and with --align jpeg:96 and evaluate each both ways
              (the 2x2 table shows how much of the raw score is the file format); leave-one-generator-out
              under --align jpeg:96.
  robustness  cifake val accuracy under jpeg:95/65/30, resize:0.5/0.25, blur:1/3 for the cifake model above
              and for one trained with blur/JPEG/resize augmentation (target: the augmented model loses
              <= 5 points at jpeg:65).

Every step is skipped when its result already exists under --out, and an interrupted training is resumed,
so a run can be stopped and started again without losing finished work. docs/results.md is rewritten from
whatever results exist at the end of every invocation (missing ones are listed as not run). Each figure is
given with the exact commands behind it, their wall-clock time and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from common import load_average, machine_text  # noqa: E402
from synapse7.io import atomic_write_text  # noqa: E402
from synapse7.reports import fmt_value  # noqa: E402

PROTOCOLS = ("cifake", "genimage", "robustness")
PERTURB = "jpeg:95,jpeg:65,jpeg:30,resize:0.5,resize:0.25,blur:1,blur:3,none"
# Model settings (flags of `synapse7 train`). EfficientNet-Lite0 is the only backbone with ImageNet weights
# available offline here (docs/backbones.md); in docs/backbones_results.md it beat the others on cifake.
# CIFAKE's 32 px images are upsampled to 96 px (resize 96, crop 96: nothing is cut off) so the pretrained stages
# see objects at a scale near ImageNet's; at native 32 px the last stage works on a 1x1 map. Measured: 32 px
# crop, 8 epochs reached 0.9475 val accuracy (git history of docs/results.md); 96 px passed 0.959 after one epoch.
CIFAKE_TRAIN = (
    "--backbone efficientnet_lite0 --weights imagenet --input rgb --strategy full --image-size 96 "
    "--resize-size 96 --aug-flip-prob 0.5 --epochs 10 --batch-size 64 --lr 1e-3 --seed 42"
)
AUG = (
    "--aug-blur-prob 0.5 --aug-blur-sigma 0,3 --aug-jpeg-prob 0.5 --aug-jpeg-quality 30,100 "
    "--aug-resize-prob 0.25 --aug-resize-scale 0.25,1"
)
GENIMAGE_TRAIN = (
    "--backbone efficientnet_lite0 --weights imagenet --input rgb --strategy frozen-early "
    "--image-size 128 --preprocess crop --train-crop center --epochs 8 --batch-size 32 --lr 1e-3 --seed 42"
)
# The weights expect inputs normalised with mean = std = 0.5 (docs/backbones.md); a config file sets that.
HALF_NORM = "data:\n  mean: [0.5, 0.5, 0.5]\n  std: [0.5, 0.5, 0.5]\n"
TARGETS = {"cifake_acc": 0.975, "cifake_auc": 0.995, "jpeg65_drop": 0.05}


def rel(p: str | Path) -> str:
    """A path as short as possible for the write-up: relative to the repository when inside or beside it."""
    p = Path(p).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        try:
            return prefix + str(p.relative_to(base))
        except ValueError:
            pass
    return str(p)


@dataclass
class Step:
    """One `synapse7` command. `done` exists once it has finished; `resume_if` (training) means interrupted."""

    name: str
    protocol: str
    argv: list[str]
    done: Path
    resume_if: Path | None = None
    needs: list[str] = field(default_factory=list)

    def command(self, resume: bool = False) -> str:
        args = self.argv + (["--resume"] if resume else [])
        return "PYTHONPATH=src .venv/bin/python -m synapse7.cli " + " ".join(shlex.quote(a) for a in args)


class Ledger:
    """Runtime records of the steps (OUT/ledger.json), rewritten atomically after each step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    def put(self, name: str, record: dict[str, Any]) -> None:
        self.records[name] = record
        atomic_write_text(self.path, json.dumps(self.records, indent=2) + "\n")


def ledger_rows(steps: list[Step], ledger: Ledger, *, threads: bool = False) -> list[str]:
    """One `| step | command | time | load at start / end | result |` row per step, from its ledger record."""
    rows = []
    for s in steps:
        r = ledger.records.get(s.name)
        status = "not run" if r is None else ("ok" if r["rc"] == 0 else f"failed (rc {r['rc']})")
        if r and r.get("note"):
            status += f" ({r['note']})"
        timed = r is not None and r.get("seconds") is not None  # a record made from files found has no time
        t = f"{r['seconds']:.0f} s" if timed else ""
        if timed and threads:
            t += f" ({r.get('torch_threads', 2)} torch thread(s))"
        loads = f"{r.get('load_start', '')} / {r.get('load_end', '')}" if timed else ""
        rows.append(f"| {s.name} | `{s.command()}` | {t} | {loads} | {status} |")
    return rows


def _input_of(flags: str) -> str:
    words = shlex.split(flags)
    from synapse7.config import ModelConfig

    return (
        words[len(words) - 1 - words[::-1].index("--input") + 1]
        if "--input" in words
        else ModelConfig().input
    )


def _epochs_of(flags: str) -> str:
    words = shlex.split(flags)
    return words[len(words) - 1 - words[::-1].index("--epochs") + 1] if "--epochs" in words else "default"


def genimage_variants(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(folder prefix, extra flags): the --genimage-train model, then one per extra input mode."""
    base = _input_of(args.genimage_train)
    extra = [m.strip() for m in args.genimage_extra_inputs.split(",") if m.strip() and m.strip() != base]
    return [("", "")] + [(m.replace("+", "_") + "_", f"--input {m}") for m in extra]


def build_steps(data: Path, out: Path, args: argparse.Namespace) -> list[Step]:
    cifake, gm = data / "cifake", data / "genimage-mini"
    norm = out / "half_norm.yaml"
    common = ["--num-workers", str(args.num_workers), "--no-progress"]
    ev = ["--num-workers", str(args.num_workers)]

    def train(name: str, protocol: str, root: Path, flags: str, *extra: str) -> Step:
        run = out / name
        return Step(
            f"train {name}",
            protocol,
            [
                "train",
                "--data",
                rel(root),
                "--out",
                rel(run),
                "--config",
                rel(norm),
                *shlex.split(flags),
                *extra,
                *common,
            ],
            run / "train_done.json",
            resume_if=run / "last.ckpt",
        )

    def evaluate(
        name: str, protocol: str, root: Path, ckpt: Path, dest: Path, *extra: str, needs: str
    ) -> Step:
        return Step(
            name,
            protocol,
            ["evaluate", "--data", rel(root), "--checkpoint", rel(ckpt), "--out", rel(dest), *extra, *ev],
            dest / ("robustness.json" if "--perturb" in extra else "metrics.json"),
            needs=[needs],
        )

    base, aug = out / "cifake_base", out / "cifake_aug"
    # The frozen stages' outputs are cached on disk (synapse7.cache): alignment is deterministic, so each image
    # is decoded, re-encoded and run through the frozen stages once instead of once per epoch.
    gm_flags = args.genimage_train + (
        f" --feature-cache {rel(out / 'feature_cache')}" if args.feature_cache else ""
    )
    steps = [
        # cifake (its model is also the non-augmented model of the robustness protocol)
        train("cifake_base", "cifake", cifake, args.cifake_train),
        evaluate(
            "evaluate cifake_base",
            "cifake",
            cifake,
            base / "last.ckpt",
            base / "eval",
            needs="train cifake_base",
        ),
        Step(
            "calibrate cifake_base",
            "cifake",
            [
                "calibrate",
                "--data",
                rel(cifake),
                "--checkpoint",
                rel(base / "last.ckpt"),
                "--method",
                "accuracy",
                "--out",
                rel(base / "calibrated.ckpt"),
                *ev,
            ],
            base / "calibrated.ckpt",
            needs=["train cifake_base"],
        ),
        evaluate(
            "evaluate cifake_base calibrated",
            "cifake",
            cifake,
            base / "calibrated.ckpt",
            base / "eval_calibrated",
            needs="calibrate cifake_base",
        ),
        # robustness
        evaluate(
            "perturb cifake_base",
            "robustness",
            cifake,
            base / "last.ckpt",
            base / "robust",
            "--perturb",
            args.perturb,
            needs="train cifake_base",
        ),
        train("cifake_aug", "robustness", cifake, args.cifake_train, *shlex.split(args.aug)),
        evaluate(
            "perturb cifake_aug",
            "robustness",
            cifake,
            aug / "last.ckpt",
            aug / "robust",
            "--perturb",
            args.perturb,
            needs="train cifake_aug",
        ),
        # genimage-mini
        Step(
            "audit genimage-mini",
            "genimage",
            ["audit", rel(gm), "--out", rel(out / "gm_audit")],
            out / "gm_audit" / "audit.json",
        ),
    ]
    for prefix, extra in genimage_variants(args):
        flags = f"{gm_flags} {extra}".strip()
        steps += [
            train(f"gm_{prefix}raw", "genimage", gm, flags),
            train(f"gm_{prefix}jpeg96", "genimage", gm, flags, "--align", "jpeg:96"),
        ]
        for model in ("raw", "jpeg96"):
            ckpt_dir = out / f"gm_{prefix}{model}"
            for ev_align in ("none", "jpeg:96"):
                tag = "raw" if ev_align == "none" else "jpeg96"
                steps.append(
                    evaluate(
                        f"evaluate gm_{prefix}{model} on {tag}",
                        "genimage",
                        gm,
                        ckpt_dir / "last.ckpt",
                        ckpt_dir / f"eval_{tag}",
                        "--align",
                        ev_align,
                        needs=f"train gm_{prefix}{model}",
                    )
                )
    loo = out / "gm_loo_jpeg96"
    steps.append(
        Step(
            "leave-one-out gm jpeg96",
            "genimage",
            [
                "crossgen",
                "--data",
                rel(gm),
                "--out",
                rel(loo),
                "--mode",
                "leave-one-out",
                "--config",
                rel(norm),
                *shlex.split(gm_flags),
                "--align",
                "jpeg:96",
                *common,
            ],
            loo / "crossgen.json",
        )
    )
    if args.cifake_long_epochs:
        # The cifake model again with a longer schedule (the cosine decay stretched over more epochs); last, so
        # that every other protocol is done first. The later --epochs flag wins.
        long = out / "cifake_long"
        steps += [
            train(
                "cifake_long", "cifake", cifake, args.cifake_train, "--epochs", str(args.cifake_long_epochs)
            ),
            evaluate(
                "evaluate cifake_long",
                "cifake",
                cifake,
                long / "last.ckpt",
                long / "eval",
                needs="train cifake_long",
            ),
        ]
    return steps


def _same_config(step: Step) -> bool:
    """Whether the interrupted run in step's folder was started with the config step's flags resolve to."""
    import yaml

    from synapse7.cli import build_parser, config_from_args
    from synapse7.model import resolve_normalization

    saved = step.done.parent / "config.yaml"
    if not saved.is_file():
        return True
    cwd = os.getcwd()
    os.chdir(REPO)  # the flags hold paths relative to the repository
    try:
        want = resolve_normalization(config_from_args(build_parser().parse_args(step.argv))).to_dict()
    finally:
        os.chdir(cwd)
    return yaml.safe_load(saved.read_text()) == want


def run_steps(steps: list[Step], ledger: Ledger, log_dir: Path) -> None:
    failed: set[str] = set()
    for step in steps:
        if step.done.exists() and step.resume_if is not None:
            made_by = json.loads(step.done.read_text()).get("command")
            if made_by != step.command():
                raise SystemExit(
                    f"bench/accuracy.py: {rel(step.done.parent)} was trained by another command:\n"
                    f"  {made_by}\nnot\n  {step.command()}\nuse another --out"
                )
        if step.done.exists():
            print(f"[skip] {step.name}: {rel(step.done)} exists", flush=True)
            continue
        if any(n in failed for n in step.needs):
            print(f"[skip] {step.name}: a step it needs failed", flush=True)
            failed.add(step.name)
            continue
        resume = step.resume_if is not None and step.resume_if.exists()
        if resume and not _same_config(step):
            raise SystemExit(
                f"bench/accuracy.py: {rel(step.done.parent)} holds an interrupted run with another "
                "config; remove it or use another --out"
            )
        cmd = step.command(resume)
        log = log_dir / (step.name.replace(" ", "_").replace(":", "") + ".log")
        print(f"[run ] {step.name}: {cmd}\n       log: {rel(log)}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        started, load0, t0 = datetime.now().isoformat(timespec="seconds"), load_average(), time.perf_counter()
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"\n# {started} {cmd}\n")
            fh.flush()
            argv = [sys.executable, "-m", "synapse7.cli", *step.argv, *(["--resume"] if resume else [])]
            rc = subprocess.run(argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
        prev = ledger.records.get(step.name, {})
        # A resumed training's time adds to the interrupted part's.
        total = seconds + (prev.get("seconds", 0.0) if resume and prev.get("rc") is None else 0.0)
        rec = {
            "command": step.command(False),
            "seconds": round(total, 1),
            "started": prev.get("started", started) if resume else started,
            "load_start": load0,
            "load_end": load_average(),
            "rc": rc,
            "resumed": resume,
        }
        if rc == 0 and step.resume_if is not None:
            atomic_write_text(step.done, json.dumps(rec, indent=2) + "\n")
        ledger.put(step.name, rec)
        print(f"[{'done' if rc == 0 else 'FAIL'}] {step.name}: rc={rc} in {seconds:.0f} s", flush=True)
        if rc != 0:
            failed.add(step.name)


# ----------------------------------------------------------------------------------------------------------
# Write-up: read whatever results exist and render docs/results.md


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _f(v: Any, spec: str = ".4f") -> str:
    return fmt_value(None if v is None else float(v), spec, none="n/a")


class Figures:
    """Rows of the summary table: figure, value, target, met, the step names behind it."""

    def __init__(self, ledger: Ledger, steps: dict[str, Step]) -> None:
        self.ledger, self.steps = ledger, steps
        self.rows: list[tuple[str, str, str, str, str, list[str]]] = []

    def add(
        self,
        protocol: str,
        figure: str,
        value: float | None,
        behind: list[str],
        target: str = "",
        met: Callable[[float], bool] | None = None,
    ) -> None:
        ok = "" if value is None or met is None else ("yes" if met(value) else "**no**")
        self.rows.append((protocol, figure, _f(value), target, ok, behind))

    def runtime(self, names: list[str]) -> str:
        parts = []
        for n in names:
            r = self.ledger.records.get(n)
            parts.append(f"{n}: {r['seconds']:.0f} s" if r else f"{n}: not run")
        return "; ".join(parts)


def _metric(path: Path, key: str) -> float | None:
    d = _load(path)
    return None if d is None or d.get(key) is None else float(d[key])


def _robust_acc(path: Path) -> dict[str, float]:
    d = _load(path)
    if d is None:
        return {}
    return {r["perturbation"]: r["accuracy"] for r in d["rows"] if r["generator"] == "ALL"}


def invocations(out: Path) -> list[tuple[str, str]]:
    """(start time, command) of every bench invocation that ran steps into `out`."""
    d = _load(out / "invocations.json")
    return [(r["started"], r["command"]) for r in d["runs"]] if d else []


def record_invocation(out: Path, argv: list[str]) -> None:
    path = out / "invocations.json"
    d = _load(path) or {"runs": []}
    d["runs"].append(
        {
            "started": datetime.now().isoformat(timespec="seconds"),
            "command": "PYTHONPATH=src .venv/bin/python bench/accuracy.py " + " ".join(argv),
        }
    )
    atomic_write_text(path, json.dumps(d, indent=2) + "\n")


def render(out: Path, steps: list[Step], ledger: Ledger, args: argparse.Namespace) -> str:
    by = {s.name: s for s in steps}
    figs = Figures(ledger, by)
    base, aug = out / "cifake_base", out / "cifake_aug"
    acc = _metric(base / "eval" / "metrics.json", "accuracy")
    auc = _metric(base / "eval" / "metrics.json", "roc_auc")
    trb, evb = "train cifake_base", "evaluate cifake_base"
    ep = _epochs_of(args.cifake_train)
    figs.add(
        "cifake",
        f"val accuracy (threshold 0.5), {ep} epochs",
        acc,
        [trb, evb],
        ">= 0.975",
        lambda v: v >= 0.975,
    )
    figs.add("cifake", f"val ROC-AUC, {ep} epochs", auc, [trb, evb], ">= 0.995", lambda v: v >= 0.995)
    figs.add("cifake", "val AP", _metric(base / "eval" / "metrics.json", "ap"), [trb, evb])
    figs.add("cifake", "val ECE", _metric(base / "eval" / "metrics.json", "ece"), [trb, evb])
    if args.cifake_long_epochs:
        names, ep = ["train cifake_long", "evaluate cifake_long"], args.cifake_long_epochs
        long_metrics = out / "cifake_long" / "eval" / "metrics.json"
        figs.add(
            "cifake",
            f"val accuracy (threshold 0.5), {ep} epochs",
            _metric(long_metrics, "accuracy"),
            names,
            ">= 0.975",
            lambda v: v >= 0.975,
        )
        figs.add(
            "cifake",
            f"val ROC-AUC, {ep} epochs",
            _metric(long_metrics, "roc_auc"),
            names,
            ">= 0.995",
            lambda v: v >= 0.995,
        )
        figs.add("cifake", f"val AP, {ep} epochs", _metric(long_metrics, "ap"), names)
    cal = _load(base / "eval_calibrated" / "metrics.json")
    figs.add(
        "cifake",
        "val accuracy at a threshold chosen on val itself (optimistic)",
        None if cal is None else cal["accuracy"],
        [trb, "calibrate cifake_base", "evaluate cifake_base calibrated"],
    )
    rb, ra = _robust_acc(base / "robust" / "robustness.json"), _robust_acc(aug / "robust" / "robustness.json")
    for model, table, names in (
        ("no augmentation", rb, [trb, "perturb cifake_base"]),
        ("augmented", ra, ["train cifake_aug", "perturb cifake_aug"]),
    ):
        for p in ("none", "jpeg:65", "jpeg:30", "resize:0.5"):
            figs.add("robustness", f"cifake val accuracy, {model}, {p}", table.get(p), names)
        if "none" in table and "jpeg:65" in table:
            drop = table["none"] - table["jpeg:65"]
            target = "<= 0.05" if model == "augmented" else ""
            figs.add(
                "robustness",
                f"accuracy lost at jpeg:65, {model}",
                drop,
                names,
                target,
                (lambda v: v <= 0.05) if model == "augmented" else None,
            )
    audit = _load(out / "gm_audit" / "audit.json")
    if audit is not None:
        for s in audit.get("flagged", []):
            if s.get("scope") == "all":
                figs.add(
                    "genimage",
                    f"audit: one-feature balanced accuracy of `{s['feature']}` ({s['rule']})",
                    s["balanced_accuracy"],
                    ["audit genimage-mini"],
                    "flagged (shortcut)",
                )
    else:
        figs.add("genimage", "audit", None, ["audit genimage-mini"])
    for prefix, extra in genimage_variants(args):
        mode = _input_of(f"{args.genimage_train} {extra}")
        accs = {}
        for model in ("raw", "jpeg96"):
            for tag in ("raw", "jpeg96"):
                name = f"evaluate gm_{prefix}{model} on {tag}"
                accs[model, tag] = _metric(
                    out / f"gm_{prefix}{model}" / f"eval_{tag}" / "metrics.json", "accuracy"
                )
                figs.add(
                    "genimage",
                    f"val accuracy ({mode} input), trained {'with' if model == 'jpeg96' else 'without'}"
                    f" --align jpeg:96, evaluated {'with' if tag == 'jpeg96' else 'without'}",
                    accs[model, tag],
                    [f"train gm_{prefix}{model}", name],
                )
        a, b = accs["raw", "raw"], accs["jpeg96", "jpeg96"]
        figs.add(
            "genimage",
            f"({mode} input) raw accuracy minus format-aligned accuracy (both in training and evaluation)",
            None if a is None or b is None else a - b,
            [f"evaluate gm_{prefix}raw on raw", f"evaluate gm_{prefix}jpeg96 on jpeg96"],
        )
    loo = _load(out / "gm_loo_jpeg96" / "crossgen.json")
    loo_name = "leave-one-out gm jpeg96"
    if loo is not None:
        for r in loo["table"]:
            label = (
                "mean over held-out generators" if r["held_out"] == "mean" else f"held out {r['held_out']}"
            )
            figs.add(
                "genimage", f"leave-one-out (--align jpeg:96) accuracy, {label}", r["accuracy"], [loo_name]
            )
    else:
        figs.add("genimage", "leave-one-out (--align jpeg:96)", None, [loo_name])

    lines = [
        "# Accuracy results (issue 3)",
        "",
        "Written by `bench/accuracy.py`; every figure below was measured by the commands listed with it, on "
        "this machine:",
        "",
        f"- **machine:** {machine_text()}; other jobs may share the CPU (load averages per step in the ledger "
        "below; a step's wall-clock time includes any time it was paused)",
        f"- **written:** {datetime.now().isoformat(timespec='seconds')}",
        "- **bench invocations** (each skips the steps already done): "
        + "; ".join(f"`{c}` ({t})" for t, c in invocations(out)),
        f"- **data:** `{rel(args.data)}` (see its README.md); results and checkpoints under `{rel(out)}`",
        f"- **`{rel(out / 'half_norm.yaml')}`** (passed as `--config`): "
        "`data: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}`, the normalisation the EfficientNet-Lite0 "
        "weights expect",
        "",
        "Models are evaluated as they are after their last epoch (`last.ckpt`), so no checkpoint is picked on "
        "the val split that is reported; in leave-one-out, `best.ckpt` is picked by val AUC on the training "
        "generators only and the held-out generator is never seen before its test. "
        "Thresholds are the default 0.5 unless said otherwise. cifake/sd14 has no split besides train and val, "
        "so the calibrated-threshold row chooses its threshold on the very data it reports on and is an upper "
        "bound, not a test figure.",
        "",
        "The CIFAKE epoch count below was chosen after looking at val. Issue 16's protocol, where every choice "
        "is made on a holdout cut from train and val is reported once for three seeds, has its own page: "
        "[results_cifake.md](results_cifake.md) (`bench/accuracy.py --only cifake-recipe`).",
        "",
        "## Summary",
        "",
        "| protocol | figure | value | target | met | steps (wall-clock time) |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, figure, value, target, ok, behind in figs.rows:
        lines.append(f"| {protocol} | {figure} | {value} | {target} | {ok} | {figs.runtime(behind)} |")
    lines += [
        "",
        "## Commands",
        "",
        "Run from the repository root; `time` is the wall-clock time of the step (a resumed training adds "
        "its parts), with the 1/5/15-minute load averages at its start and end.",
        "",
        "| step | command | time | load at start / end | result |",
        "|---|---|---|---|---|",
    ]
    lines += ledger_rows(steps, ledger)
    lines += _details(out, args)
    return "\n".join(lines) + "\n"


def _details(out: Path, args: argparse.Namespace) -> list[str]:
    lines: list[str] = ["", "## Details"]
    for title, path in (
        ("cifake val, per generator (no augmentation)", out / "cifake_base" / "eval" / "per_generator.md"),
        ("robustness, model trained without augmentation", out / "cifake_base" / "robust" / "robustness.md"),
        ("robustness, model trained with augmentation", out / "cifake_aug" / "robust" / "robustness.md"),
        ("genimage-mini leave-one-out (--align jpeg:96)", out / "gm_loo_jpeg96" / "crossgen.md"),
    ):
        if path.is_file():
            text = path.read_text()
            if path.name == "robustness.md":  # the pivot only; the full table is in the file
                text = text.split("All metrics:")[0]
            lines += ["", f"### {title}", "", f"From `{rel(path)}`:", "", text.strip()]
    for prefix, extra in genimage_variants(args):
        mode = _input_of(f"{args.genimage_train} {extra}")
        for model in ("raw", "jpeg96"):
            for tag in ("raw", "jpeg96"):
                path = out / f"gm_{prefix}{model}" / f"eval_{tag}" / "per_generator.md"
                if path.is_file():
                    lines += [
                        "",
                        f"### genimage-mini val, {mode} input, trained {model}, evaluated {tag}",
                        "",
                        path.read_text().strip(),
                    ]
    return lines


def bench_parser(description: str, out: str, out_help: str) -> argparse.ArgumentParser:
    """The parser every step-running bench starts from: --data (../shared/data) and --out (outside the repo)."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder"
    )
    ap.add_argument("--out", type=Path, default=Path(out), help=out_help)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(
        __doc__,
        "/tmp/synapse7_bench_accuracy",
        "results, checkpoints and logs (not in the repository: checkpoints are large)",
    )
    ap.add_argument(
        "--only",
        default=",".join(PROTOCOLS),
        help=f"comma list of {', '.join(PROTOCOLS)}, or cifake-recipe (issue 16: bench/cifake_recipe.py, "
        "written to docs/results_cifake.md)",
    )
    ap.add_argument("--results", type=Path, default=REPO / "docs" / "results.md")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument(
        "--cifake-train", default=CIFAKE_TRAIN, help="`synapse7 train` flags for both cifake models"
    )
    ap.add_argument(
        "--cifake-long-epochs",
        type=int,
        default=14,
        help="also train the cifake model for this many epochs, after every other step (0: skip)",
    )
    ap.add_argument("--aug", default=AUG, help="augmentation flags added for the augmented cifake model")
    ap.add_argument(
        "--genimage-train", default=GENIMAGE_TRAIN, help="`synapse7 train` flags for genimage-mini"
    )
    ap.add_argument(
        "--genimage-extra-inputs",
        default="fft",
        help="also train the genimage-mini raw/aligned pair with these input modes (comma list; '' none)",
    )
    ap.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_false",
        help="do not pass --feature-cache to the genimage-mini trainings",
    )
    ap.add_argument("--perturb", default=PERTURB)
    ap.add_argument(
        "--render-only", action="store_true", help="only rewrite the results file from existing results"
    )
    args = ap.parse_args(argv)
    args.argv_shown = [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if "cifake-recipe" in only:  # issue 16's protocol: its own bench and write-up (docs/results_cifake.md)
        import cifake_recipe

        rc = cifake_recipe.main(["--data", str(args.data), "--out", str(args.out)])
        only.remove("cifake-recipe")
        if rc or not only:
            return rc
    unknown = sorted(set(only) - set(PROTOCOLS))
    if unknown:
        ap.error(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    if not args.data.is_dir():
        print(f"bench/accuracy.py: {args.data} is absent; nothing to run", file=sys.stderr)
        return 1
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "half_norm.yaml", HALF_NORM)
    ledger = Ledger(out / "ledger.json")
    steps = build_steps(args.data.resolve(), out, args)
    if not args.render_only:
        chosen = [s for s in steps if s.protocol in only]
        # The robustness protocol's un-augmented model is the cifake model: train it whichever is asked for.
        if "robustness" in only and "cifake" not in only:
            chosen = [s for s in steps if s.name == "train cifake_base"] + chosen
        record_invocation(out, args.argv_shown)
        run_steps(chosen, ledger, out / "logs")
    atomic_write_text(args.results, render(out, steps, ledger, args))
    print(f"wrote {rel(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
