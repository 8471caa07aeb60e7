"""Evaluation: run a checkpoint over a split, stream per-image predictions, write all reports."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synapse7.data import BadImageLog, MultiGenDataset, build_loader
from synapse7.io import atomic_path, atomic_write_text, ensure_writable_dir, printable_path
from synapse7.predict import Detector, progress_bar
from synapse7.reports import compute_eval_report, table_markdown, write_eval_plots, write_eval_report
from synapse7.transforms import PilOp, build_preset


@dataclass
class Predictions:
    """Per-image outputs of one evaluation pass (arrays aligned by position)."""

    paths: list[str]
    labels: np.ndarray  # (N,) int
    p_ai: np.ndarray  # (N,) float
    generators: list[str]
    bad: BadImageLog


def run_inference(
    detector: Detector,
    dataset: MultiGenDataset,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    stream_to: Path | None = None,
    progress: bool = False,
) -> Predictions:
    """P(AI) for every decodable image of `dataset`; rows are streamed to `stream_to` (CSV) as they come.
    progress: a bar on a terminal (`predict.progress_bar`)."""
    loader = build_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    paths: list[str] = []
    labels: list[int] = []
    probs: list[float] = []
    gens: list[str] = []
    bad = BadImageLog()
    writer = None
    fh = None
    if stream_to is not None:
        fh = open(stream_to, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
        writer = csv.writer(fh)
        writer.writerow(["path", "generator", "label", "p_ai"])
    bar = progress_bar(len(dataset), "evaluate", enabled=progress)
    try:
        for batch in loader:
            bar.update(len(batch["index"]) + len(batch["bad"]))
            bad.add(dataset, batch["bad"])
            if "image" not in batch:
                continue
            p = detector.predict_batch(batch["image"])
            for idx, prob in zip(batch["index"].tolist(), p.tolist(), strict=True):
                s = dataset.samples[idx]
                paths.append(printable_path(s.path))
                labels.append(s.label)
                probs.append(prob)
                gens.append(s.generator)
                if writer is not None:
                    writer.writerow([paths[-1], s.generator, s.label, f"{prob:.6f}"])
            if fh is not None:
                fh.flush()
    finally:
        bar.close()
        if fh is not None:
            fh.close()
    return Predictions(paths, np.asarray(labels, dtype=int), np.asarray(probs, dtype=float), gens, bad)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, Any]
    per_generator: list[dict[str, Any]]
    out_dir: Path | None
    bad_images: int
    predictions: Predictions | None = None  # per-image scores (threshold calibration reuses them)


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    split: str = "val",
    out_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    generators: Sequence[str] | None = None,
    on_bad_image: str | None = None,
    align: str | None = None,
    threshold: float | None = None,
    pre_ops: Sequence[PilOp] = (),
    device: str | None = None,
    quiet: bool = False,
    detector: Detector | None = None,
    precision: str = "auto",
    crops: int | None = None,
    tta: str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Evaluate `checkpoint` on `data_root/<generator>/<split>`; write reports (tables, metrics, confusion
    matrix, ROC/PR curves, score histogram, reliability diagram) into out_dir when given."""
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    det = detector or Detector.from_checkpoint(
        checkpoint, device=device, threshold=threshold, precision=precision, crops=crops, tta=tta
    )
    dcfg = det.cfg.data
    if align is not None:
        dcfg = replace(dcfg, align=None if align == "none" else align)
    ds = MultiGenDataset(
        data_root,
        split,
        build_preset(dcfg, pre_ops=pre_ops),
        generators=generators,
        on_bad_image=on_bad_image or dcfg.on_bad_image,
        max_pixels=dcfg.max_pixels,
    )
    bs = batch_size or dcfg.batch_size
    nw = dcfg.num_workers if num_workers is None else num_workers
    if out is not None:
        with atomic_path(out / "predictions.csv") as tmp:
            preds = run_inference(det, ds, batch_size=bs, num_workers=nw, stream_to=tmp, progress=progress)
    else:
        preds = run_inference(det, ds, batch_size=bs, num_workers=nw, progress=progress)
    if len(preds.labels) == 0:
        raise ValueError(f"no decodable images in split '{split}' of {data_root}")
    report = compute_eval_report(preds.labels, preds.p_ai, preds.generators, det.threshold)
    extra = {
        "checkpoint": str(checkpoint),
        "data": str(data_root),
        "split": split,
        "bad_images": len(preds.bad),
        "align": dcfg.align,
    }
    if out is not None:
        write_eval_report(report, out, extra)
        write_eval_plots(preds.labels, preds.p_ai, det.threshold, out)
        if len(preds.bad):
            atomic_write_text(out / "bad_images.csv", preds.bad.to_csv())
    if not quiet:
        print(report["classification_report"])
        print(table_markdown(report["per_generator"]))
        if len(preds.bad):
            print(
                f"skipped {len(preds.bad)} bad image(s)"
                + (f"; list in {out / 'bad_images.csv'}" if out else ""),
                file=sys.stderr,
            )
    return EvalResult({**report["overall"], **extra}, report["per_generator"], out, len(preds.bad), preds)
