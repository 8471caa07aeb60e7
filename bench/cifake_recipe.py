"""CIFAKE with a margin (issue 16): every choice on a held-out part of train, val reported once, three seeds.

    PYTHONPATH=src .venv/bin/python bench/cifake_recipe.py [--out DIR] [--jobs 2]
    (also: PYTHONPATH=src .venv/bin/python bench/accuracy.py --only cifake-recipe)

Protocol:
  1. A seeded fifth of cifake/sd14's train images becomes `holdout` (symlinks under --out, nothing copied); the
     rest is `fit`. Every candidate trains on `fit` only; `holdout` picks everything (recipe, TTA, EMA or raw
     weights); the val split is not read until step 4.
  2. Candidates (CANDIDATES below), seed 0, each evaluated on holdout with and without flip TTA; runs with
     weight averaging also with their raw (non-averaged) weights, from the same checkpoint. That measures each
     lever in the same run or against the same baseline run.
  3. The rule, fixed before any result: the candidate and TTA setting with the highest holdout accuracy (ties:
     ROC-AUC, then the cheaper).
  4. Once: the chosen recipe, trained on all of train (fit + holdout; nothing is chosen after this point) with
     three seeds, on val (mean, spread), and the two- and three-seed ensembles, in docs/results_cifake.md.

Rounds. Round 1 (2026-12-01) had candidates base, lev, lev128, and its step 4 trained the chosen `lev` on `fit`
only: val 0.9725 +- 0.0009, short of the target. Round 2 (2026-12-02) added lev16 and levnn, the levers the
issue lists that round 1 had not measured, and changed step 4 to train on all of train, both decided before
any round-2 result. Val had been read once by then (round 1's step 4); no round-2 choice reads it. Round 3
(2026-12-02, later) adds the last lever the issue lists, a two-seed ensemble, as a candidate: `lev16x2`, round
2's choice trained with seeds 0 and 1 on `fit`, scored as one model (`synapse7 evaluate --checkpoint A
--checkpoint B`: the mean of the two logits), with and without flip TTA. Its step 4, if the rule picks it: three
ensembles of the recipe trained on all of train, seeds paired (0, 1), (2, 3), (4, 5), each evaluated once on
val. Decided before any round-3 result, but after round 2's val results, which had shown a two-seed ensemble of
seeds 0 and 1 (0.9800 / 0.9978): that pair's val figure was known when round 3 was designed, the other two were
not. The rule is unchanged and runs over every candidate, single or ensemble.

Results are kept in a store (docs/results_cifake.json: each step's record, machine and metrics), so that the
page is rendered from every measurement, a later run adds to it, and a step whose result is stored is not run
again (to measure everything afresh, give a new `--store FILE` and `--results FILE`). Steps are also skipped when their result exists under --out, so an interrupted run continues where it
stopped. `--jobs 2` (or 3) runs two (three) trainings at once, each with one torch thread and one data worker,
which on a 2-core machine finishes two trainings sooner than one after the other with two threads each.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from accuracy import Ledger, Step, bench_parser, ledger_rows, rel  # noqa: E402
from common import load_average, machine_text, make_view  # noqa: E402
from synapse7.io import atomic_write_text  # noqa: E402

HOLDOUT_FRACTION, VIEW_SEED = 0.2, 0
SEEDS = (0, 1, 2)
# The CIFAKE recipe of docs/results.md (issue 3), with 10 epochs (its 14 were chosen on val): EfficientNet-Lite0,
# ImageNet weights, full fine-tuning, 32 px images upsampled to 96, flips, AdamW lr 1e-3, batch 64.
BASE = (
    "--backbone efficientnet_lite0 --weights imagenet --input rgb --strategy full --image-size 96 "
    "--resize-size 96 --aug-flip-prob 0.5 --epochs 10 --batch-size 64 --lr 1e-3"
)
# Training levers, set once beforehand (not tuned): one epoch of warm-up then a per-step cosine, targets
# smoothed by 0.1, and an EMA of the weights whose horizon (1 / (1 - 0.995) = 200 steps) is two epochs of `fit`.
LEVERS = "--warmup-epochs 1 --label-smoothing 0.1 --ema-decay 0.995"
CANDIDATES: dict[str, tuple[str, str, int]] = {  # name: (flags, what it is, round)
    "base": (BASE, "the issue-3 recipe (10 epochs)", 1),
    "lev": (f"{BASE} {LEVERS}", "+ warm-up/cosine, label smoothing, EMA", 1),
    "lev128": (
        f"{BASE} {LEVERS} --image-size 128 --resize-size 128",
        "+ the levers, 128 px input instead of 96",
        1,
    ),
    "lev16": (
        f"{BASE.replace('--epochs 10', '--epochs 16')} {LEVERS}",
        "+ the levers, 16 epochs instead of 10 (a longer warm-up/cosine schedule)",
        2,
    ),
    "levnn": (
        f"{BASE} {LEVERS} --resize-interpolation nearest",
        "+ the levers, nearest up-sampling to 96 px (each pixel repeated 3x3) instead of bilinear",
        2,
    ),
}
# Ensemble candidates: name -> (single candidate, its seeds, what it is, round); scored as one model.
ENSEMBLES: dict[str, tuple[str, tuple[int, ...], str, int]] = {
    "lev16x2": ("lev16", (0, 1), "two seeds of lev16 (0 and 1), the mean of their logits", 3),
}
COST = {
    "base": 1.0,
    "lev": 1.0,
    "lev128": 1.8,
    "lev16": 1.6,
    "levnn": 1.0,
    "lev16x2": 3.2,
}  # relative training cost, for ties
# Step 4 of an ensemble candidate: three ensembles, from seeds paired as fixed here before round 3's results.
ENSEMBLE_SEEDS = ((0, 1), (2, 3), (4, 5))
TTAS = ("none", "flip")
CONFIG = "data:\n  mean: [0.5, 0.5, 0.5]\n  std: [0.5, 0.5, 0.5]\n  train_split: fit\n  val_split: holdout\n"
# Step 4: all of train. Lightning still validates each epoch; on holdout (a part of the training images), a
# progress figure only: the models are taken after their last epoch.
CONFIG_ALL = CONFIG.replace("train_split: fit", "train_split: train")
TARGETS = {"accuracy": 0.980, "roc_auc": 0.997}
METRIC_KEYS = ("accuracy", "roc_auc", "ap", "support")


class Store(Ledger):
    """docs/results_cifake.json: every step's ledger record, with the machine it ran on and, for evaluations,
    its metrics; ensembles too. Rewritten atomically after each step, so runs on several machines add up."""

    def ok(self, name: str, *, metrics: bool) -> bool:
        r = self.records.get(name)
        return r is not None and r.get("rc") == 0 and (not metrics or "metrics" in r)


@dataclass
class Plan:
    out: Path
    data: Path
    jobs: int
    store: Store

    @property
    def view(self) -> Path:
        return self.out / "view" / "cifake"

    def run(self, cand: str, seed: int, where: str = "fit") -> Path:
        return self.out / (f"c16_{cand}_s{seed}" if where == "fit" else f"c16_{cand}_{where}_s{seed}")

    @staticmethod
    def tag(cand: str, seed: int, where: str = "fit") -> str:
        return f"{cand} s{seed}" if where == "fit" else f"{cand} {where} s{seed}"

    def train(self, cand: str, seed: int, where: str = "fit") -> Step:
        run = self.run(cand, seed, where)
        config = self.out / ("c16.yaml" if where == "fit" else "c16_all.yaml")
        argv = ["train", "--data", rel(self.view), "--out", rel(run), "--config", rel(config)]
        argv += [
            *shlex.split(CANDIDATES[cand][0]),
            "--seed",
            str(seed),
            "--num-workers",
            "1",
            "--no-progress",
        ]
        return Step(
            f"train {self.tag(cand, seed, where)}",
            "cifake16",
            argv,
            run / "train_done.json",
            resume_if=run / "last.ckpt",
        )

    def evaluate(
        self, cand: str, seed: int, split: str, tta: str, weights: str = "last", where: str = "fit"
    ) -> Step:
        run = self.run(cand, seed, where)
        dest = run / f"eval_{split}_{weights}_{tta}"
        root = self.view if split == "holdout" else self.data / "cifake"
        argv = [
            "evaluate",
            "--data",
            rel(root),
            "--split",
            split,
            "--checkpoint",
            rel(run / f"{weights}.ckpt"),
        ]
        argv += ["--out", rel(dest), "--tta", tta, "--num-workers", "1"]
        return Step(
            f"evaluate {self.tag(cand, seed, where)} {weights} on {split} tta {tta}",
            "cifake16",
            argv,
            dest / "metrics.json",
            needs=[f"train {self.tag(cand, seed, where)}"],
        )

    def metrics(
        self, cand: str, seed: int, split: str, tta: str, weights: str = "last", where: str = "fit"
    ) -> dict[str, Any] | None:
        return self.result(f"evaluate {self.tag(cand, seed, where)} {weights} on {split} tta {tta}")

    def result(self, name: str) -> dict[str, Any] | None:
        r = self.store.records.get(name)
        return None if r is None or r.get("rc") != 0 else r.get("metrics")

    @staticmethod
    def ens_tag(ens: str, seeds: tuple[int, ...], where: str = "fit") -> str:
        s = "+".join(map(str, seeds))
        return f"{ens} s{s}" if where == "fit" else f"{ens} {where} s{s}"

    def evaluate_ensemble(
        self, ens: str, seeds: tuple[int, ...], split: str, tta: str, where: str = "fit"
    ) -> Step:
        """The members' last.ckpt through `synapse7 evaluate` as one model (several --checkpoint)."""
        cand = ENSEMBLES[ens][0]
        tag = self.ens_tag(ens, seeds, where)
        dest = self.out / ("c16_" + tag.replace(" ", "_").replace("+", "-")) / f"eval_{split}_{tta}"
        root = self.view if split == "holdout" else self.data / "cifake"
        argv = ["evaluate", "--data", rel(root), "--split", split]
        for seed in seeds:
            argv += ["--checkpoint", rel(self.run(cand, seed, where) / "last.ckpt")]
        argv += ["--out", rel(dest), "--tta", tta, "--num-workers", "1"]
        needs = [f"train {self.tag(cand, seed, where)}" for seed in seeds]
        return Step(
            f"evaluate {tag} on {split} tta {tta}", "cifake16", argv, dest / "metrics.json", needs=needs
        )

    def scored(self, cand: str, split: str, tta: str, where: str = "fit") -> dict[str, Any] | None:
        """Seed 0 of a single candidate, or an ensemble candidate's own seeds."""
        if cand in ENSEMBLES:
            return self.result(self.evaluate_ensemble(cand, ENSEMBLES[cand][1], split, tta, where).name)
        return self.metrics(cand, 0, split, tta, where=where)


def write_raw_checkpoint(run: Path) -> bool:
    """RUN/raw.ckpt: last.ckpt with the raw weights Lightning's weight averaging keeps beside the averaged ones
    (`current_model_state`). False for runs without averaging."""
    import torch

    dest = run / "raw.ckpt"
    if dest.is_file():
        return True
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    if "current_model_state" not in ckpt:
        return False
    keep = ("state_dict", "hyper_parameters", "synapse7", "epoch", "global_step", "pytorch-lightning_version")
    raw = {k: ckpt[k] for k in keep if k in ckpt}
    raw["state_dict"] = ckpt["current_model_state"]
    torch.save(raw, dest)
    return True


_LOCK = threading.Lock()


def _run_one(step: Step, store: Store, log_dir: Path, threads: int) -> bool:
    if store.ok(step.name, metrics=step.resume_if is None):
        print(f"[skip] {step.name}: stored in {rel(store.path)}", flush=True)
        return True
    resume = step.resume_if is not None and step.resume_if.exists()
    if step.done.exists():
        print(f"[skip] {step.name}: {rel(step.done)} exists", flush=True)
    else:
        _execute(step, store, log_dir, threads, resume)
    rec = store.records.get(step.name)
    if step.resume_if is None and step.done.is_file() and (rec is None or "metrics" not in rec):
        m = json.loads(step.done.read_text())
        rec = rec or {"command": step.command(), "rc": 0, "note": f"found under {rel(step.done.parent)}"}
        with _LOCK:
            store.put(step.name, {**rec, "metrics": {k: m[k] for k in METRIC_KEYS}})
    return store.ok(step.name, metrics=False) or step.done.exists()


def _execute(step: Step, store: Store, log_dir: Path, threads: int, resume: bool) -> None:
    cmd = step.command(resume)
    log = log_dir / (step.name.replace(" ", "_") + ".log")
    print(f"[run ] {step.name}: {cmd}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    started, load0, t0 = datetime.now().isoformat(timespec="seconds"), load_average(), time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n# {started} {cmd}\n")
        fh.flush()
        argv = [sys.executable, "-m", "synapse7.cli", *step.argv, *(["--resume"] if resume else [])]
        rc = subprocess.run(argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    with _LOCK:
        prev = store.records.get(step.name, {})
        total = seconds + (prev.get("seconds", 0.0) if resume and prev.get("rc") is None else 0.0)
        rec = {
            "command": step.command(False),
            "seconds": round(total, 1),
            "started": started,
            "load_start": load0,
            "load_end": load_average(),
            "rc": rc,
            "resumed": resume,
            "torch_threads": threads,
            "machine": machine_text(),
        }
        if resume and prev.get("note"):  # e.g. a training started by hand, then resumed here
            rec["note"] = prev["note"] + "; interrupted and resumed by the bench"
        if rc == 0 and step.resume_if is not None:
            atomic_write_text(step.done, json.dumps(rec, indent=2) + "\n")
        store.put(step.name, rec)
    print(f"[{'done' if rc == 0 else 'FAIL'}] {step.name}: rc={rc} in {seconds:.0f} s", flush=True)


def run_all(steps: list[Step], plan: Plan) -> None:
    """Trainings `plan.jobs` at a time; each evaluation as soon as its trainings are done (an ensemble's: all of
    them). A training whose evaluations are all stored is not run again (its checkpoints may be on another
    machine)."""
    threads = 2 if plan.jobs == 1 else 1
    log_dir = plan.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    steps = list({s.name: s for s in steps}.values())  # a training shared by two candidates runs once
    trains = [s for s in steps if s.resume_if is not None]
    evals = [s for s in steps if s.resume_if is None]
    by_name = {t.name: t for t in trains}
    claimed: set[str] = set()

    def claim(e: Step) -> bool:
        """True once, for an evaluation whose trainings are all finished here, checkpoints present."""
        done = [
            n in by_name
            and (by_name[n].done.exists() or plan.store.ok(n, metrics=False))
            and by_name[n].resume_if.exists()
            for n in e.needs
        ]
        with _LOCK:
            if not all(done) or e.name in claimed:
                return False
            claimed.add(e.name)
            return True

    def chain(t: Step) -> None:
        mine = [e for e in evals if t.name in e.needs]
        if all(plan.store.ok(e.name, metrics=True) for e in mine) and plan.store.ok(t.name, metrics=False):
            print(f"[skip] {t.name} and its evaluations: stored in {rel(plan.store.path)}", flush=True)
            return
        if t.done.exists() or plan.store.ok(t.name, metrics=False):  # stored, but an evaluation is missing
            if not t.resume_if.exists():
                print(f"[FAIL] {t.name}: stored, but {rel(t.resume_if)} is not here to evaluate", flush=True)
                return
        elif not _run_one(t, plan.store, log_dir, threads):
            return
        write_raw_checkpoint(t.done.parent)
        for e in mine:
            ckpt = e.argv[e.argv.index("--checkpoint") + 1]
            if (ckpt.endswith("last.ckpt") or (t.done.parent / "raw.ckpt").is_file()) and claim(e):
                _run_one(e, plan.store, log_dir, threads)

    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        list(pool.map(chain, trains))
    for e in evals:  # an ensemble whose trainings were all stored before this run
        if not plan.store.ok(e.name, metrics=True) and claim(e):
            _run_one(e, plan.store, log_dir, 2)


def candidate_steps(plan: Plan, cand: str, seed: int) -> list[Step]:
    steps = [plan.train(cand, seed)]
    for tta in TTAS:
        steps.append(plan.evaluate(cand, seed, "holdout", tta))
        if "--ema-decay" in CANDIDATES[cand][0]:
            steps.append(plan.evaluate(cand, seed, "holdout", tta, weights="raw"))
    return steps


def ensemble_steps(plan: Plan, ens: str) -> list[Step]:
    """An ensemble candidate: its members' trainings on fit, each member alone and the ensemble on holdout with
    each TTA (the members alone measure what ensembling adds)."""
    cand, seeds = ENSEMBLES[ens][:2]
    steps = [plan.train(cand, seed) for seed in seeds]
    steps += [plan.evaluate(cand, seed, "holdout", tta) for seed in seeds for tta in TTAS]
    return steps + [plan.evaluate_ensemble(ens, seeds, "holdout", tta) for tta in TTAS]


def final_steps(plan: Plan, cand: str, tta: str) -> list[Step]:
    """Step 4: the chosen recipe on all of train, three seeds (an ensemble: three ensembles, ENSEMBLE_SEEDS),
    each evaluated once on val."""
    out: list[Step] = []
    if cand in ENSEMBLES:
        single = ENSEMBLES[cand][0]
        for seeds in ENSEMBLE_SEEDS:
            out += [plan.train(single, seed, "all") for seed in seeds]
            out.append(plan.evaluate_ensemble(cand, seeds, "val", tta, "all"))
        return out
    for seed in SEEDS:
        out += [plan.train(cand, seed, "all"), plan.evaluate(cand, seed, "val", tta, where="all")]
    return out


# Round 1's step 4 (the chosen `lev` trained on `fit` only; kept from the store, not run again), and round 2's
# (`lev16` on all of train, three seeds).
ROUND1_FINAL = ("lev", "flip")
ROUND2_FINAL = ("lev16", "flip")


def round1_steps(plan: Plan) -> list[Step]:
    cand, tta = ROUND1_FINAL
    steps = [s for seed in SEEDS[1:] for s in candidate_steps(plan, cand, seed)]
    return steps + [plan.evaluate(cand, seed, "val", tta) for seed in SEEDS]


def choose(plan: Plan) -> tuple[str, str] | None:
    """The rule of step 3, on holdout only: (candidate, tta) or None until every candidate is evaluated."""
    scored = []
    for cand in [*CANDIDATES, *ENSEMBLES]:
        for tta in TTAS:
            m = plan.scored(cand, "holdout", tta)
            if m is None:
                return None
            scored.append((-m["accuracy"], -m["roc_auc"], COST[cand], tta == "flip", cand, tta))
    best = min(scored)
    return best[4], best[5]


def ensemble(plan: Plan, cand: str, seeds: tuple[int, ...], split: str, tta: str, where: str) -> dict | None:
    """Accuracy (mean logit >= 0) and ROC-AUC of the runs' mean logit, from their predictions.csv files; kept
    in the store, which answers when the files are not here."""
    import csv

    from sklearn.metrics import roc_auc_score

    name = f"ensemble {cand} {where} seeds {','.join(map(str, seeds))} on {split} tta {tta}"
    tables = []
    for seed in seeds:
        p = plan.run(cand, seed, where) / f"eval_{split}_last_{tta}" / "predictions.csv"
        if not p.is_file():
            r = plan.store.records.get(name)
            return r["metrics"] if r else None
        with open(p, newline="", encoding="utf-8") as fh:
            tables.append(
                {row["path"]: (int(row["label"]), float(row["p_ai"])) for row in csv.DictReader(fh)}
            )
    paths = sorted(set.intersection(*(set(t) for t in tables)))
    y = np.array([tables[0][p][0] for p in paths])
    q = np.clip(np.array([[t[p][1] for p in paths] for t in tables]), 1e-6, 1 - 1e-6)
    z = np.log(q / (1 - q)).mean(axis=0)
    m = {
        "n": len(paths),
        "accuracy": float(((z >= 0) == (y == 1)).mean()),
        "roc_auc": float(roc_auc_score(y, z)),
    }
    if plan.store.records.get(name, {}).get("metrics") != m:
        plan.store.put(name, {"rc": 0, "machine": machine_text(), "metrics": m})
    return m


def _f(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


# A lever measured by hand after round 1's choice (not one of CANDIDATES, so not eligible); kept verbatim.
AFTER_THE_CHOICE = """\
## After round 1's choice: EfficientNet-Lite1 (measured by hand, 2026-12-02)

Outside the rule above (round 1's choice had been made; Lite1 is not a candidate): round 1's chosen `lev` recipe
with `--backbone efficientnet_lite1`, seed 0, on the same fit/holdout view, to measure the Lite1 lever the issue
lists. Command (from the repository
root, `VIEW` and `c16.yaml` as made by this bench): `PYTHONPATH=src .venv/bin/python -m synapse7.cli train --data
VIEW/cifake --out RUN --config c16.yaml --backbone efficientnet_lite1 --weights imagenet --input rgb --strategy
full --image-size 96 --resize-size 96 --aug-flip-prob 0.5 --epochs 10 --batch-size 64 --lr 1e-3 --warmup-epochs
1 --label-smoothing 0.1 --ema-decay 0.995 --seed 0 --num-workers 1 --no-progress`, then `evaluate --data
VIEW/cifake --split holdout --checkpoint RUN/last.ckpt --tta none|flip`. Training: 1,010 s, alone on a 2-core AMD
EPYC (torch 2.14.1, no GPU).

| backbone | holdout acc / AUC, no TTA | with flip TTA |
|---|---|---|
| EfficientNet-Lite0 (`lev`, above) | 0.9658 / 0.9942 | 0.9676 / 0.9959 |
| EfficientNet-Lite1 | 0.9556 / 0.9908 | 0.9652 / 0.9924 |

At the recipe's 96 px, Lite1 (pretrained at 240 px) costs 0.0102 accuracy without TTA and 0.0024 with it.
Lite2 was not measured.
"""

# Written after round 3's val results (2026-12-02); kept verbatim.
NO_ROUND4 = """\
## After round 3: why there is no round 4

Round 3's step 4 missed the target by one figure: ROC-AUC 0.9966 for the ensemble of seeds 4 + 5, 0.0004 under
0.997; its other five target figures meet it. Of the levers the issue lists, SWA and EfficientNet-Lite2 are not
measured. The one within reach of this 2-core CPU in a session, a three-seed ensemble, was started on 2026-12-02
(four trainings) and stopped after five minutes, before any result: its step 4 would have evaluated the triples
(0, 1, 2), (3, 4, 5), (6, 7, 8), and the triple (0, 1, 2) had already been scored on val with round 2 (accuracy
0.9795, below 0.980; section "Round 2's step 4"). It could meet the target only with triples picked around that
known result, which is choosing on val. More generally, a fourth round designed after three readings of val
would be chosen on val in all but name, so the figures above stand as they are: the mean of the three
ensembles meets both targets (0.9817 / 0.9972), and one of the three falls short on ROC-AUC.
"""


def render(plan: Plan, steps: list[Step], chosen: tuple[str, str] | None) -> str:
    store = plan.store
    machines = sorted({r["machine"] for r in store.records.values() if r.get("machine")})
    L = [
        "# CIFAKE with a margin (issue 16)",
        "",
        "Written by `bench/cifake_recipe.py` (protocol and rounds in its docstring) from its store "
        "`docs/results_cifake.json`; every figure was measured by the commands listed below, each row naming "
        "its machine in the store. Machines:",
        "",
        *[f"- {m}" for m in machines],
        "",
        f"- **written:** {datetime.now().isoformat(timespec='seconds')}",
        f"- **data:** `../shared/data/cifake/sd14`; train split cut into `fit` ({100 - HOLDOUT_FRACTION * 100:.0f}%) "
        f"and `holdout` ({HOLDOUT_FRACTION * 100:.0f}%, seed {VIEW_SEED}, by file name) under `{rel(plan.view)}`; "
        "config `c16.yaml`: mean = std = 0.5 (the weights' normalisation), train on fit, validate on holdout; "
        "`c16_all.yaml` (step 4): train on all of train",
        "- **thresholds:** P(AI) >= 0.5 everywhere (none chosen); models as after their last epoch (`last.ckpt`)",
        "",
        "Holdout: 1,668 images, so one standard error of an accuracy near 0.975 is about 0.004 "
        "(sqrt(0.975 x 0.025 / 1668)); differences below that are noise.",
        "",
        "## 1. Candidates on holdout (seed 0)",
        "",
        "| candidate | round | what | TTA | weights | holdout accuracy | holdout ROC-AUC | training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cand, (flags, what, rnd) in CANDIDATES.items():
        rec = store.records.get(f"train {cand} s0")
        t = f"{rec['seconds']:.0f} s" if rec and rec.get("rc") == 0 else "not run"
        for tta in TTAS:
            for w in ("last", "raw"):
                m = plan.metrics(cand, 0, "holdout", tta, w)
                if m is None and w == "raw":
                    continue
                label = {"last": "EMA" if "--ema-decay" in flags else "final", "raw": "raw (no EMA)"}[w]
                L.append(
                    f"| {cand} | {rnd} | {what} | {tta} | {label} | {_f(m and m['accuracy'])} "
                    f"| {_f(m and m['roc_auc'])} | {t} |"
                )
    for ens, (single, seeds, what, rnd) in ENSEMBLES.items():
        recs = [store.records.get(f"train {single} s{seed}") for seed in seeds]
        ok = all(r and r.get("rc") == 0 for r in recs)
        t = " + ".join(f"{r['seconds']:.0f} s" for r in recs) if ok else "not run"
        for tta in TTAS:
            m = plan.scored(ens, "holdout", tta)
            L.append(
                f"| {ens} | {rnd} | {what} | {tta} | EMA | {_f(m and m['accuracy'])} "
                f"| {_f(m and m['roc_auc'])} | {t} |"
            )
    L += ["", "## 2. What each lever added (holdout accuracy, same seed)", ""]
    L += lever_lines(plan)
    L += ["", "## 3. Choice", ""]
    if chosen is None:
        L.append("Not made yet: some candidate has no holdout result.")
    else:
        cand, tta = chosen
        if cand in ENSEMBLES:
            single = ENSEMBLES[cand][0]
            L.append(
                f"By the rule (highest holdout accuracy, then ROC-AUC, then the cheaper): **{cand}** "
                f"({ENSEMBLES[cand][2]}) with TTA **{tta}**: two trainings `synapse7 train "
                f"{CANDIDATES[single][0]} --seed S` (S = A and B), scored together by `synapse7 evaluate "
                f"--checkpoint A/last.ckpt --checkpoint B/last.ckpt --tta {tta}` (or `synapse7 predict` with "
                "the same flags)."
            )
            L += ["", "## 4. Val, once (the chosen recipe trained on all of train: three ensembles)", ""]
            L += ensemble_val_lines(plan, cand, tta)
        else:
            L.append(
                f"By the rule (highest holdout accuracy, then ROC-AUC, then the cheaper): **{cand}** "
                f"({CANDIDATES[cand][1]}) with TTA **{tta}**: `synapse7 train {CANDIDATES[cand][0]} --seed S`, "
                f"evaluated with `--tta {tta}`."
            )
            L += ["", "## 4. Val, once (the chosen recipe trained on all of train, three seeds)", ""]
            L += [
                "Trained on fit + holdout (a quarter more images than any candidate saw), so the difference "
                "from round 1's step 4 below (trained on fit only) mixes the chosen recipe's gain with the "
                "added data; holdout cannot separate them, as these models have trained on it.",
                "",
            ]
            L += val_lines(plan, cand, tta, "all")
    if chosen != ROUND2_FINAL:
        L += ["", f"## Round 2's step 4 ({ROUND2_FINAL[0]} with TTA {ROUND2_FINAL[1]}, all of train)", ""]
        L += val_lines(plan, *ROUND2_FINAL, "all")
    cand, tta = ROUND1_FINAL
    L += ["", f"## Round 1's step 4 ({cand} with TTA {tta}, trained on `fit` only)", ""]
    ens = ensemble(plan, cand, SEEDS[:2], "holdout", tta, "fit")
    if ens:
        L.append(
            f"Two-seed ensemble (seeds 0, 1; mean logit) on holdout: accuracy {_f(ens['accuracy'])}, "
            f"ROC-AUC {_f(ens['roc_auc'])}.\n"
        )
    L += val_lines(plan, cand, tta, "fit")
    L += [
        "",
        "## Commands",
        "",
        "| step | command | time | load at start / end | result |",
        "|---|---|---|---|---|",
    ]
    L += ledger_rows(steps, store, threads=True)
    L.append(
        "\n`raw.ckpt` is made by the bench from `last.ckpt` (`current_model_state`: the weights before averaging)."
    )
    L += ["", AFTER_THE_CHOICE, NO_ROUND4]
    return "\n".join(L)


def val_lines(plan: Plan, cand: str, tta: str, where: str) -> list[str]:
    L = ["| seed | val accuracy | val ROC-AUC | val AP |", "|---|---|---|---|"]
    accs, aucs = [], []
    for s in SEEDS:
        m = plan.metrics(cand, s, "val", tta, where=where)
        if m:
            accs.append(m["accuracy"])
            aucs.append(m["roc_auc"])
        L.append(f"| {s} | {_f(m and m['accuracy'])} | {_f(m and m['roc_auc'])} | {_f(m and m['ap'])} |")
    L += target_lines(accs, aucs, len(SEEDS), "seed")
    for k in (2, 3):
        ens = ensemble(plan, cand, SEEDS[:k], "val", tta, where)
        if ens:
            L.append(
                f"\nEnsemble of seeds {', '.join(map(str, SEEDS[:k]))} on val (mean logit; reported, not "
                f"chosen on val): accuracy {_f(ens['accuracy'])}, ROC-AUC {_f(ens['roc_auc'])}."
            )
    return L


def ensemble_val_lines(plan: Plan, ens: str, tta: str) -> list[str]:
    """Step 4 of an ensemble candidate: each ensemble of ENSEMBLE_SEEDS on val, mean and spread, targets."""
    L = [
        "Members trained on fit + holdout (a quarter more images than any candidate saw). The pairs were fixed "
        "before round 3's results; the first pair's val figure had been reported with round 2 (below), the "
        "other two are new.",
        "",
        "| ensemble (seeds) | val accuracy | val ROC-AUC | val AP |",
        "|---|---|---|---|",
    ]
    accs, aucs = [], []
    for seeds in ENSEMBLE_SEEDS:
        m = plan.result(plan.evaluate_ensemble(ens, seeds, "val", tta, "all").name)
        if m:
            accs.append(m["accuracy"])
            aucs.append(m["roc_auc"])
        L.append(
            f"| {' + '.join(map(str, seeds))} | {_f(m and m['accuracy'])} | {_f(m and m['roc_auc'])} "
            f"| {_f(m and m['ap'])} |"
        )
    return L + target_lines(accs, aucs, len(ENSEMBLE_SEEDS), "ensemble")


def target_lines(accs: list[float], aucs: list[float], n: int, unit: str) -> list[str]:
    """The mean ± sd row and the target check, once all `n` results are in."""
    if len(accs) < n:
        return []
    a, u = np.array(accs), np.array(aucs)
    ok = a.min() >= TARGETS["accuracy"] and u.min() >= TARGETS["roc_auc"]
    return [
        f"| mean ± sd (min-max) | {a.mean():.4f} ± {a.std(ddof=1):.4f} ({a.min():.4f}-{a.max():.4f}) "
        f"| {u.mean():.4f} ± {u.std(ddof=1):.4f} ({u.min():.4f}-{u.max():.4f}) | |",
        f"\nTargets (every {unit}): accuracy >= {TARGETS['accuracy']}, ROC-AUC >= {TARGETS['roc_auc']}: "
        f"**{'met' if ok else 'not met'}**.",
    ]


def lever_lines(plan: Plan) -> list[str]:
    def acc(cand: str, tta: str, w: str = "last") -> float | None:
        m = plan.metrics(cand, 0, "holdout", tta, w)
        return None if m is None else m["accuracy"]

    rows = [
        ("flip TTA (base)", acc("base", "flip"), acc("base", "none")),
        ("flip TTA (lev)", acc("lev", "flip"), acc("lev", "none")),
        ("EMA weights vs raw, same run (lev)", acc("lev", "none"), acc("lev", "none", "raw")),
        (
            "warm-up/cosine + label smoothing, raw weights (lev raw vs base)",
            acc("lev", "none", "raw"),
            acc("base", "none"),
        ),
        ("all three levers (lev vs base)", acc("lev", "none"), acc("base", "none")),
        ("128 px instead of 96 (lev128 vs lev)", acc("lev128", "none"), acc("lev", "none")),
        ("16 epochs instead of 10 (lev16 vs lev)", acc("lev16", "none"), acc("lev", "none")),
        ("16 epochs instead of 10, with flip TTA", acc("lev16", "flip"), acc("lev", "flip")),
        ("nearest up-sampling instead of bilinear (levnn vs lev)", acc("levnn", "none"), acc("lev", "none")),
        ("nearest up-sampling, with flip TTA", acc("levnn", "flip"), acc("lev", "flip")),
    ]
    for ens, (single, seeds, _, _) in ENSEMBLES.items():
        for tta in TTAS:
            m = plan.scored(ens, "holdout", tta)
            alone = [plan.metrics(single, seed, "holdout", tta) for seed in seeds]
            mean = None if None in alone else float(np.mean([a["accuracy"] for a in alone]))
            name = f"ensemble of seeds {' and '.join(map(str, seeds))} ({ens}), TTA {tta}"
            rows.append(
                (f"{name}, vs {single} seed 0", None if m is None else m["accuracy"], acc(single, tta))
            )
            rows.append(
                (f"{name}, vs the mean of its members alone", None if m is None else m["accuracy"], mean)
            )
    out = ["| lever | with | without | difference |", "|---|---|---|---|"]
    for name, a, b in rows:
        d = None if a is None or b is None else a - b
        out.append(f"| {name} | {_f(a)} | {_f(b)} | {_f(d, '+.4f')} |")
    return out


def link_all(view: Path) -> None:
    """VIEW/<generator>/train/{ai,nature}: every file of fit and holdout (symlinks to the same targets)."""
    for gen in sorted(d for d in view.iterdir() if d.is_dir()):
        for side in ("fit", "holdout"):
            for f in sorted((gen / side).glob("*/*")):
                dst = gen / "train" / f.parent.name / f.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.is_symlink():
                    dst.symlink_to(f.resolve())


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "/tmp/synapse7_bench_accuracy", "checkpoints and logs")
    ap.add_argument("--results", type=Path, default=REPO / "docs" / "results_cifake.md")
    ap.add_argument(
        "--store", type=Path, default=REPO / "docs" / "results_cifake.json", help="the results store (JSON)"
    )
    ap.add_argument("--jobs", type=int, choices=(1, 2, 3), default=2, help="trainings at once (default 2)")
    ap.add_argument("--render-only", action="store_true", help="only rewrite the results file")
    args = ap.parse_args(argv)
    if not (args.data / "cifake").is_dir():
        print(f"bench/cifake_recipe.py: {args.data / 'cifake'} is absent; nothing to run", file=sys.stderr)
        return 1
    plan = Plan(args.out.resolve(), args.data.resolve(), args.jobs, Store(args.store))
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.out / "c16.yaml", CONFIG)
    atomic_write_text(plan.out / "c16_all.yaml", CONFIG_ALL)
    counts = make_view(
        "cifake",
        plan.data / "cifake",
        plan.out / "view",
        fraction=HOLDOUT_FRACTION,
        seed=VIEW_SEED,
        held="holdout",
    )
    link_all(plan.view)
    print(f"[view] cifake: {counts['fit']} fit, {counts['holdout']} holdout images", flush=True)
    steps = [s for cand in CANDIDATES for s in candidate_steps(plan, cand, 0)]
    steps += [s for ens in ENSEMBLES for s in ensemble_steps(plan, ens)]
    if not args.render_only:
        run_all(steps, plan)
    chosen = choose(plan)
    if chosen is not None:
        final = final_steps(plan, *chosen)
        if not args.render_only:
            run_all(final, plan)
        steps += final
    if chosen != ROUND2_FINAL:
        steps += final_steps(plan, *ROUND2_FINAL)
    steps += round1_steps(plan)
    steps = list({s.name: s for s in steps}.values())
    if not plan.store.records:  # nothing measured yet: keep the page
        print(
            f"bench/cifake_recipe.py: {rel(args.store)} holds no results; {rel(args.results)} left as it is"
        )
        return 0
    atomic_write_text(args.results, render(plan, steps, chosen))
    print(f"wrote {rel(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
