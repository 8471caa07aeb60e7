"""Cross-dataset generalisation matrix (issue 11), end to end on ../shared/data, written to docs/generalization.md.

    PYTHONPATH=src .venv/bin/python bench/generalization.py [--only ROW1,ROW2] [--out DIR]

Rows are (training data x recipe); columns are test sets. Each cell is the row's model evaluated on the
column's val split: ROC-AUC, accuracy at the model's stored threshold, real and fake accuracy.

Training data:
  synth    self-made fakes: `synapse7 synthesize` on ../shared/data/reals (700 photos; up-sampling chains and
           small autoencoders the command trains itself). Both classes PNG at native size, paired per photo.
  gm       genimage-mini, both classes re-encoded as JPEG q96 (--align jpeg:96), so the file format says nothing.
  cifake   cifake/sd14 (32x32 JPEG, both classes).
Test columns: wild/realorai_game (never trained on, no threshold chosen on it: the stand-in for generators
we have never seen), genimage-mini val (jpeg:96), cifake val, synth val. A row's own training data is marked
"seen" in its column (its val split is not a test of generalisation).

Thresholds: every row is trained with `--calibrate accuracy`, which picks the threshold on the row's own
validation split (its training data's val split, never a test column).

Every step is skipped when its result exists under --out (a training killed half-way resumes), so the bench
can be stopped and restarted. Every cell measured is also kept in docs/generalization.json (committed) with the
machine, date and run time behind it, and the write-up is rendered from that store: running only some rows
(`--only`) on another machine, whose --out lacks the other rows, replaces those rows' cells and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from accuracy import REPO, Ledger, Step, bench_parser, record_invocation, rel, run_steps  # noqa: E402 (bench helpers)
from common import machine_text  # noqa: E402
from synapse7.io import atomic_write_text  # noqa: E402

# The self-made fakes: every up-sampling chain and both autoencoder decoders (4x down-sampling).
SYNTH_FLAGS = "--methods all --seed 0 --ae-steps 1500"

# NPR's recipe at CPU scale: 64 px native random crops (no resizing), 16-crop mean vote at test time, JPEG/blur
# augmentation so that re-compression alone does not look like a decoder trace.
NPR = (
    "--backbone npr_resnet --weights none --input npr --preprocess crop --image-size 64 --crops 16 "
    "--batch-size 32 --lr 5e-4 --weight-decay 0.01 --seed 42 --aug-flip-prob 0.5 "
    "--aug-jpeg-prob 0.3 --aug-jpeg-quality 70,100 --aug-blur-prob 0.1 --aug-blur-sigma 0,1 "
    "--epochs 3 --limit-train-batches 100"
)
# The same recipe with a longer budget: ten passes over the training images (about 2,100 steps on the self-made
# fakes) instead of 3 x 100 steps; NPR and SAFE train for far longer than 300 steps (row added 2026-12-02, with
# the rule that decides the release's budget, before any of its results: see docs/generalization.md).
NPR_LONG = NPR.replace("--epochs 3 --limit-train-batches 100", "--epochs 10")
# The long budget with the checkpoint chosen by transfer instead of by fit: train on the four up-sampling chains,
# validate (best checkpoint, threshold) on the two autoencoder families, which it never trains on; row added on
# 2026-12-02 after synth_npr_long's result, before any of its own.
SYNTH_UP = "synth_up_nearest,synth_up_bilinear,synth_up_bicubic,synth_up_tconv"
NPR_LOMO = f"{NPR_LONG} --train-generators {SYNTH_UP} --test-generators synth_ae_tconv,synth_ae_upconv"
# Seed spread of synth_npr, the row the README's main transfer claim rests on (added on 2026-12-04, before any
# result; rule fixed then: the claim stands as a three-seed mean if both new seeds stay at or above 0.75 on
# genimage-mini; if either falls below 0.70, 0.816 is reported as the best of three and the claim weakened).
# seed42 is synth_npr itself, rerun on the same machine and the same regenerated fakes as seeds 1 and 2 (added on
# 2026-12-04 too, after the self-made fakes were made again on a fresh machine, before any training result).
SEED_NOTES = {
    1: "synth_npr with --seed 1 instead of 42: the seed spread of the transfer to genimage-mini",
    2: "synth_npr with --seed 2 instead of 42: the seed spread of the transfer to genimage-mini",
    42: "synth_npr again (seed 42), on the fakes made again for the seed rows: does the bench reproduce",
}
SAFE = "--aug-rotate-prob 0.5 --aug-jitter-prob 0.5 --aug-mask-prob 0.5"
# CNNDetection-style post-processing (Wang et al. 2020), stronger than NPR's: test images from the web are
# usually resized and re-encoded after generation, both classes alike. Replaces NPR's JPEG flags (argparse keeps
# the last value of a repeated option).
POSTPROC = "--aug-resize-prob 0.5 --aug-resize-scale 0.5,1.0 --aug-jpeg-prob 0.5 --aug-jpeg-quality 60,100"
LITE0 = (
    "--backbone efficientnet_lite0 --weights imagenet --input rgb --batch-size 32 --lr 1e-3 --seed 42 "
    "--aug-flip-prob 0.5"
)


@dataclass(frozen=True)
class Row:
    name: str
    data: tuple[str, ...]  # keys of the training sets
    flags: str
    note: str
    # An ensemble row trains nothing: it evaluates the mean logit of these rows' best.ckpt (`evaluate` with one
    # --checkpoint each) at threshold 0.5, since the members' own thresholds differ.
    members: tuple[str, ...] = ()


ROWS = [
    Row(
        "gm_lite0_frozen",
        ("gm",),
        LITE0 + " --strategy frozen-early --image-size 128 --preprocess crop --train-crop center --epochs 8",
        "the recipe measured before this issue: EfficientNet-Lite0 (ImageNet), frozen-early, 128 px crop",
    ),
    Row(
        "synth_npr",
        ("synth",),
        NPR,
        "NPR residual + NPR's small network from scratch, 64 px native random crops, 16-crop mean vote",
    ),
    Row(
        "synth_gm_npr",
        ("synth", "gm"),
        NPR,
        "the same on self-made fakes + genimage-mini (the release row is this recipe, trained on 80% of the "
        "same training splits)",
    ),
    Row(
        "synth_npr_long",
        ("synth",),
        NPR_LONG,
        "synth_npr trained ten passes over its images (about 2,100 steps) instead of 300 steps; never sees a "
        "generated image, so genimage-mini and cifake are unseen generators for it",
    ),
    *(
        Row(f"synth_npr_seed{seed}", ("synth",), NPR.replace("--seed 42", f"--seed {seed}"), note)
        for seed, note in SEED_NOTES.items()
    ),
    Row(
        "synth_npr_ens3",
        ("synth",),
        "",
        "the mean logit of synth_npr_seed1, synth_npr_seed2 and synth_npr_seed42 at threshold 0.5 (row added on "
        "2026-12-04 after its hand-run result on genimage-mini and wild, to make that figure a bench step; no "
        "decision rests on it)",
        members=tuple(f"synth_npr_seed{seed}" for seed in (1, 2, 42)),
    ),
    Row(
        "synth_npr_lomo",
        ("synth",),
        NPR_LOMO,
        "synth_npr_long trained on the up-sampling chains only, its checkpoint and threshold chosen on the "
        "autoencoder fakes (a family of self-made fakes it never trains on); never sees a generated image",
    ),
    Row(
        "mix_lite0_probe",
        ("synth", "gm", "cifake"),
        LITE0 + " --strategy linear-probe --image-size 160 --epochs 2 --limit-train-batches 100",
        "UnivFD-style: frozen ImageNet features + a linear head, whole image resized to 160, on every training set",
    ),
    Row(
        "synth_gm_npr_safe",
        ("synth", "gm"),
        NPR + " " + SAFE,
        "synth_gm_npr with SAFE's rotation, colour jitter and patch masking, each with probability 0.5",
    ),
    Row(
        "synth_gm_npr_safe_pp",
        ("synth", "gm"),
        NPR + " " + SAFE + " " + POSTPROC,
        "synth_gm_npr_safe plus post-processing augmentation of both classes: a down-scale by 0.5-1.0 and JPEG "
        "q60-100, each with probability 0.5 (row added on 2026-12-02, before any of its results)",
    ),
    # Fine-tuned ImageNet features with both classes post-processed alike (rows added on 2026-12-04, before any
    # of their results). The frozen-feature probe (mix_lite0_probe, feature_probe.md) never adapts its features;
    # these let the last stage (frozen-early) or every layer (full) adapt, on every training set, while the
    # resize/JPEG augmentation hides the decoder traces that web re-encoding erases. Rule fixed now: a row that
    # reaches ROC-AUC 0.80 on `wild` becomes the documented recommendation for unseen generators only after two
    # more seeds also reach 0.75 there; below 0.80 it is a negative result, and neither row can replace the
    # shipped model (which is chosen without `wild`).
    Row(
        "mix_lite0_frozen_pp",
        ("synth", "gm", "cifake"),
        LITE0 + " --strategy frozen-early --image-size 160 --epochs 3 --limit-train-batches 100 " + POSTPROC,
        "EfficientNet-Lite0 (ImageNet), last stage + head trained, whole image resized to 160, on every training "
        "set, with the post-processing augmentation of both classes",
    ),
    Row(
        "mix_lite0_full_pp",
        ("synth", "gm", "cifake"),
        LITE0
        + " --strategy full --lr 1e-4 --image-size 160 --epochs 3 --limit-train-batches 100 "
        + POSTPROC,
        "mix_lite0_frozen_pp with every layer fine-tuned (lr 1e-4)",
    ),
]
COLUMNS = ("wild", "gm", "cifake", "synth")
COLUMN_TITLES = {
    "wild": "wild (unseen)",
    "gm": "genimage-mini jpeg96",
    "cifake": "cifake",
    "synth": "self-made",
}


def data_roots(data: Path, out: Path) -> dict[str, Path]:
    return {
        "wild": data / "wild" / "realorai_game",
        "gm": data / "genimage-mini",
        "cifake": data / "cifake",
        "synth": out / "synth",
    }


def build_steps(data: Path, out: Path, rows: list[Row], args: argparse.Namespace) -> list[Step]:
    roots = data_roots(data, out)
    workers = ["--num-workers", str(args.num_workers)]
    steps = [
        Step(
            "synthesize",
            "synth",
            [
                "synthesize",
                "--real",
                rel(data / "reals"),
                "--out",
                rel(roots["synth"]),
                *shlex.split(SYNTH_FLAGS),
            ],
            roots["synth"] / "synthesize.json",
        )
    ]
    for row in rows:
        run = out / row.name
        datas = [a for key in row.data for a in ("--data", rel(roots[key]))]
        align = ["--align", "jpeg:96"] if "gm" in row.data else []
        needs = ["synthesize"] if "synth" in row.data else []
        if row.members:
            models = [a for m in row.members for a in ("--checkpoint", rel(out / m / "best.ckpt"))]
            models += ["--threshold", "0.5"]
            trained = [f"train {m}" for m in row.members]
        else:
            models, trained = ["--checkpoint", rel(run / "best.ckpt")], [f"train {row.name}"]
        if not row.members:
            steps.append(
                Step(
                    f"train {row.name}",
                    row.name,
                    [
                        "train",
                        *datas,
                        "--out",
                        rel(run),
                        *shlex.split(row.flags),
                        *align,
                        "--calibrate",
                        "accuracy",
                        *workers,
                        "--no-progress",
                    ],
                    run / "train_done.json",
                    resume_if=run / "last.ckpt",
                    needs=needs,
                )
            )
        for col in COLUMNS:
            # genimage-mini is evaluated aligned whatever the row trained on: its raw format is a shortcut.
            col_align = ["--align", "jpeg:96"] if col == "gm" else ["--align", "none"]
            dest = run / f"eval_{col}"
            steps.append(
                Step(
                    f"evaluate {row.name} on {col}",
                    row.name,
                    [
                        "evaluate",
                        "--data",
                        rel(roots[col]),
                        *models,
                        "--out",
                        rel(dest),
                        *col_align,
                        *workers,
                    ],
                    dest / "metrics.json",
                    needs=trained + (["synthesize"] if col == "synth" else []),
                )
            )
    return steps


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


CELL_KEYS = ("roc_auc", "accuracy", "real_acc", "fake_acc", "n_images")


def update_store(
    store: dict, out: Path, rows: list[Row], steps: list[Step], ledger: Ledger, release: Path | None
) -> dict:
    """Fold the results under `out` into `store` ({"rows": {name: {cells, steps, machine, date}}, "steps": {}}).

    A row's cells, run times and machine are replaced only where `out` holds a result for it that differs from
    the stored one, so re-rendering elsewhere, or after /tmp was cleared, keeps what was measured before.
    """
    rows_store = store.setdefault("rows", {})
    dirs = [(row, out / row.name) for row in rows] + ([(RELEASE_ROW, release)] if release is not None else [])
    for row, where in dirs:
        fresh = {}
        for col in COLUMNS:
            m = _load(where / f"eval_{col}" / "metrics.json")
            if m is not None:
                fresh[col] = {k: m.get(k) for k in CELL_KEYS}
        entry = rows_store.get(row.name, {})
        if not fresh or all(entry.get("cells", {}).get(c) == v for c, v in fresh.items()):
            continue
        entry = rows_store.setdefault(row.name, {"cells": {}, "steps": {}})
        entry["cells"].update(fresh)
        entry["machine"] = machine_text()
        entry["date"] = time.strftime("%Y-%m-%d")
        for s in steps:
            if s.protocol == row.name and s.name in ledger.records:
                entry["steps"][s.name] = ledger.records[s.name]
    if "synthesize" in ledger.records:
        store.setdefault("steps", {})["synthesize"] = ledger.records["synthesize"]
    return store


def _cell(m: dict | None) -> str:
    if m is None:
        return "not run"

    def f(k: str) -> str:
        v = m.get(k)
        return "n/a" if v is None else f"{float(v):.3f}"

    return f"**{f('roc_auc')}** / {f('accuracy')} ({f('real_acc')} / {f('fake_acc')})"


# The shipped default model (bench/release.py) is a row too: trained by the release bench on synth + gm (minus
# its calib split), its figures read from that bench's output rather than trained a second time here.
RELEASE_ROW = Row(
    "release (default model)",
    ("synth", "gm"),
    "see bench/release.py",
    "the shipped default model: bench/release.py's recipe (NPR, synth + gm, threshold on a calib split "
    "held out of train), evaluated as the exported fp16 safetensors file",
)


# Written by hand after the 2026-12-02 runs, extended on 2026-12-04; re-read it against the table when the bench
# is run again.
READING = """\
- **Nothing reaches the issue's target on `wild/realorai_game`** (ROC-AUC 0.80). The NPR models and the
  genimage-trained EfficientNet are at chance there (0.47-0.53 on 150 images; one standard error is about
  0.047). `mix_lite0_probe`, frozen ImageNet features with a head trained on every training set, scored 0.623,
  but it did not hold up: [feature_probe.md](feature_probe.md) re-checks the same kind of features with the
  choice made by leave-one-dataset-out instead of by hand, and gets 0.548 (0.494-0.564 over all 18 variants);
  a training-free perturbation score (RIGID) gets 0.598. The `wild` images are recent photorealistic renders
  that the site resized and re-encoded exactly like its photos; neither the decoder traces that the NPR models
  learn nor content-level ImageNet features separate them.
- **Fine-tuning those ImageNet features does not help either** (rows `mix_lite0_frozen_pp` and
  `mix_lite0_full_pp`, added with their rule on 2026-12-04 before any result): EfficientNet-Lite0 with its last
  stage (frozen-early) or every layer (full, lr 1e-4) trained on all three training sets, whole images resized to
  160, both classes randomly down-scaled and JPEG-compressed. `wild` **0.529** and **0.562**, within about one
  standard error of chance and below the frozen probe's 0.623, while both fit the sets they saw (cifake 0.984 /
  0.967, self-made 0.929 / 0.893, genimage-mini 0.771 / 0.751). By the rule fixed before the results they are
  negative results, and no further seeds were run. Each trained in 8.5-9.6 minutes on the 2-core AMD EPYC.
- **A larger ImageNet network moves `wild` by about one standard error**
  ([feature_probe_lite2.md](feature_probe_lite2.md), `bench/feature_probe.py --variant 2`, its rule fixed before
  the run: a gain only at 0.64 or more). The same 18 frozen-feature probes on EfficientNet-Lite2 at 260 px: the
  one chosen by leave-one-dataset-out scores 0.576 on `wild` (Lite0: 0.548), all 18 lie in 0.556-0.606 (Lite0:
  0.494-0.564). Its features transfer better between the training sets (mean LODO 0.699 against 0.652; with
  genimage-mini held out 0.862 against 0.752), not to `wild`. Not a gain by the rule.
- **Self-made fakes alone do transfer to older generators**: `synth_npr` never saw a generated image, yet
  separates the six 2022 genimage-mini generators at ROC-AUC 0.816 (both classes re-encoded as JPEG q96),
  close to the EfficientNet-Lite0 model trained on those very generators (0.859, *seen*). Adding genimage-mini's
  few hundred images to the same 300-step budget (`synth_gm_npr`) does not raise it (0.765, *seen*). The
  figure holds over seeds (rows `synth_npr_seed*`, added with a rule before their results: the claim stands
  as a three-seed mean if seeds 1 and 2 stay at or above 0.75, and is weakened if either falls below 0.70).
  With the self-made fakes made again on 2026-12-04, seeds 42 (`synth_npr` rerun), 1 and 2 give 0.837, 0.760
  and 0.781: **0.793 +- 0.040** (mean +- sd); `wild` 0.526 / 0.484 / 0.521 (0.510 +- 0.023), cifake 0.327 /
  0.399 / 0.440. The rerun of seed 42 is not bit-identical to the first run (0.816 / 0.521 / 0.318); its fakes
  were made again on another machine, and whether they are identical was not checked. The mean logit of the
  three (row `synth_npr_ens3`, at threshold 0.5) gives genimage-mini 0.792, `wild` 0.501 and cifake 0.370:
  ensembling seeds adds nothing here. It was first run by hand on 2026-12-04, then made a bench row the same day;
  the bench reproduced the hand run's genimage-mini and `wild` figures to the last digit. Thresholds
  chosen on self-made fakes do not transfer: `synth_npr` has fake accuracy 0.245 on genimage-mini at 0.962 real
  accuracy, and the rows whose validation split mixed genimage-mini into many more self-made fakes 0.11-0.21.
- **SAFE's augmentation did not help at this budget** (3 x 100 steps): against `synth_gm_npr` in the same
  bench, rotation, colour jitter and patch masking (`synth_gm_npr_safe`) give genimage-mini 0.739 (-0.026),
  `wild` 0.469 (-0.060, about one standard error) and self-made 0.984 (-0.014); adding a random down-scale and
  JPEG q60-100 to both classes (`synth_gm_npr_safe_pp`) gives 0.753 / 0.507 / 0.976. SAFE trains for far longer;
  whether these augmentations pay off with a longer budget is not tested here.
- **A longer budget loses the transfer** (`synth_npr_long`: ten passes over the self-made fakes, about 2,100
  steps instead of 300; its checkpoint is from step 1,050, the first epoch at ROC-AUC 1.000 on the self-made val
  split): genimage-mini 0.816 -> **0.538** (generators neither model has seen), `wild` 0.521 -> 0.476, cifake
  0.318 -> 0.351, self-made 0.998 -> 1.000. The network learns to recognise its own fakes perfectly and, in
  doing so, stops separating real generators. By the rule fixed before this result (in bench/release.py), the
  release keeps its 300-step budget. The release recipe with the same budget was trained too (`bench/release.py`
  with `--epochs 10` in RECIPE, `--out /tmp/synapse7_release_long`, 2,884 s of training on the 2-core Intel
  Xeon, sharing it with `synth_npr_long`); against the shipped model: genimage-mini 0.765 vs 0.722 (*seen*),
  `wild` 0.535 vs 0.522, cifake 0.450 vs 0.363, self-made 1.000 vs 0.994. Not shipped: by the rule, and its
  gains on unseen columns are within noise (`wild`) or on a set below the model's 64 px scope where it
  stays below chance (cifake).
- **Choosing the checkpoint on a family of fakes it never trains on recovers part of it, not all**
  (`synth_npr_lomo`, added with its rule before any result: if it beat `synth_npr`'s 0.816 on genimage-mini,
  choosing on a held-out family would become the candidate for the next release recipe). The same ten passes,
  on the up-sampling chains only, with the checkpoint and threshold chosen on the autoencoder fakes:
  genimage-mini **0.756** (0.538 for `synth_npr_long`, 0.816 for `synth_npr`), `wild` 0.527, cifake 0.418,
  self-made 0.999. Below 0.816, so by the rule it is not taken up; against the seed spread measured since
  (0.760-0.837) it is no different from the 300-step budget, while `synth_npr_long`'s 0.538 is about six
  standard deviations below it. The held-out family gives no early warning: its validation ROC-AUC rose through
  all ten passes (0.924 after the first, 0.9985 after the ninth and tenth, as read off the training log during
  the run), so the checkpoint is a late one, not an early one. The row
  changes two things at once (which families it trains on, and where it chooses), and does not say which one
  kept the 0.756.
- **CIFAKE is inverted for every NPR model** (0.32-0.44): 32 px CIFAR photos and Stable Diffusion thumbnails,
  padded to the 64 px crop, are outside what they learned.
- Thresholds chosen on a row's own validation data are far from right on other sets (real accuracy 0.14-1.00,
  fake accuracy 0.00-0.72 on unseen columns): a score from an unseen source is a ranking, not a calibrated
  probability.
- The shipped model (`release`) was chosen before this table existed, on principle (NPR on self-made fakes plus
  genimage-mini). No row gives a reason to replace it: the NPR variants are within noise of it on every unseen
  column, and the one row above them on `wild` did not survive its re-check. Choosing a release by its `wild`
  figure would in any case be choosing on the test column.
"""


def render(rows: list[Row], steps: list[Step], store: dict) -> str:
    lines = [
        "# Generalisation: trained on some data, tested on every set",
        "",
        "Written by `bench/generalization.py` (issue 11). Each cell: **ROC-AUC** / accuracy at the model's "
        "stored threshold (real accuracy / fake accuracy). The threshold of every model was chosen on its own "
        "training data's val split (`--calibrate accuracy`); `wild/realorai_game` is never trained on and no "
        "choice is made on it. *seen* marks a column whose generators were in the row's training data.",
        "",
        "Machines: each row's machine and date are under *Rows*; other jobs may share the CPU (load averages "
        "per step below).",
        "",
    ]
    head = "| row | trained on | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |"
    lines += [head, "|" + "---|" * (2 + len(COLUMNS))]
    stored = store.get("rows", {})
    shown = [r for r in rows if r.name in stored or r.name != RELEASE_ROW.name]
    for row in shown:
        got = stored.get(row.name, {}).get("cells", {})
        cells = [_cell(got.get(col)) + (" *seen*" if col in row.data else "") for col in COLUMNS]
        lines.append(f"| `{row.name}` | {'+'.join(row.data)} | " + " | ".join(cells) + " |")
    lines += ["", "## Rows", ""]
    for row in shown:
        e = stored.get(row.name)
        where = f" Measured {e['date']} on {e['machine']}." if e else " Not run yet."
        lines.append(f"- `{row.name}`: {row.note}.{where}")
    lines += ["", "## Reading", "", READING]
    lines += [
        "",
        "## Commands, run times and load",
        "",
        "Each command runs from the repository root as `PYTHONPATH=src .venv/bin/python -m synapse7.cli ...`; "
        "the bench runs them in this order. Wall-clock seconds and the load average at start/end are from "
        "`ledger.json`, kept in `docs/generalization.json` with the cells they made.",
        "",
        "| step | seconds | load start -> end | command |",
        "|---|---|---|---|",
    ]
    records = dict(store.get("steps", {}))
    for e in stored.values():
        records.update(e.get("steps", {}))
    for s in steps:
        r = records.get(s.name)
        t = f"{r['seconds']:.0f}" if r else "not run"
        load = f"{r['load_start']} -> {r['load_end']}" if r else ""
        lines.append(f"| {s.name} | {t} | {load} | `{s.command()}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(
        __doc__,
        "/tmp/synapse7_bench_generalization",
        "results, checkpoints, self-made fakes and logs (not in the repository)",
    )
    ap.add_argument("--only", help=f"comma list of rows ({', '.join(r.name for r in ROWS)}); default all")
    ap.add_argument("--results", type=Path, default=REPO / "docs" / "generalization.md")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--render-only", action="store_true", help="only rewrite the results file")
    ap.add_argument(
        "--release-out",
        type=Path,
        default=Path("/tmp/synapse7_release"),
        help="bench/release.py's --out: its default model is added as a row when evaluated there",
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in (args.only or "").split(",") if n.strip()]
    unknown = sorted(set(names) - {r.name for r in ROWS})
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(r.name for r in ROWS)}")
    if not args.data.is_dir():
        print(f"bench/generalization.py: {args.data} is absent; nothing to run", file=sys.stderr)
        return 1
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "ledger.json")
    chosen = [r for r in ROWS if not names or r.name in names]
    all_steps = build_steps(args.data.resolve(), out, ROWS, args)
    if not args.render_only:
        record_invocation(out, [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
        wanted = {f"train {r.name}" for r in chosen}
        steps = [s for s in all_steps if s.name == "synthesize" or s.protocol in {r.name for r in chosen}]
        t0 = time.perf_counter()
        run_steps(
            [
                s
                for s in steps
                if s.name in wanted or not s.name.startswith("train") or s.name == "synthesize"
            ],
            ledger,
            out / "logs",
        )
        print(f"bench/generalization.py: steps took {time.perf_counter() - t0:.0f} s")
    store_path = args.results.with_suffix(".json")
    store = update_store(_load(store_path) or {}, out, ROWS, all_steps, ledger, args.release_out)
    atomic_write_text(store_path, json.dumps(store, indent=2, sort_keys=True) + "\n")
    atomic_write_text(args.results, render([*ROWS, RELEASE_ROW], all_steps, store))
    print(f"wrote {rel(args.results)} and {rel(store_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
