"""Decision-threshold choice on validation scores, and storing it in a checkpoint.

Convention everywhere: an image is called AI when P(AI) >= threshold; label 1 = AI, 0 = real.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synapse7.evaluate import evaluate
from synapse7.io import atomic_path
from synapse7.predict import load_checkpoint
from synapse7.reports import check_scores, expected_calibration_error

THRESHOLD_METHODS = ("accuracy", "fpr")


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float  # predict AI when P(AI) >= threshold
    method: str  # "accuracy" | "fpr"
    accuracy: float  # achieved on the data it was chosen on
    fpr: float  # real images called AI / real images
    tpr: float  # AI images called AI / AI images
    target_fpr: float | None  # for method="fpr"
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(y_true: Any, p_ai: Any, *, method: str = "accuracy", target_fpr: float = 0.05) -> ThresholdChoice:
    """Pick the threshold on P(AI) that maximises accuracy, or the TPR subject to FPR <= target_fpr.

    Candidates are the midpoints between consecutive distinct scores (plus one below all and one above all),
    so the cut sits between examples rather than on one. Ties go to higher accuracy, then to the candidate
    nearest 0.5 (the uncalibrated default).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    y, p = check_scores(y_true, p_ai)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if method == "fpr":
        if not 0.0 <= target_fpr <= 1.0:
            raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
        if n_neg == 0:
            raise ValueError("method='fpr' needs real (label 0) examples")
    u = np.unique(p)  # sorted distinct scores
    # Below every score (all called AI) and above every score (none called AI).
    cands = np.r_[np.nextafter(u[0], -math.inf), (u[:-1] + u[1:]) / 2.0, np.nextafter(u[-1], math.inf)]
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    # count of scores >= each candidate
    tp = n_pos - np.searchsorted(pos, cands, side="left")
    fp = n_neg - np.searchsorted(neg, cands, side="left")
    tpr = tp / max(n_pos, 1)
    fpr = fp / max(n_neg, 1)
    acc = (tp + (n_neg - fp)) / len(y)
    closeness = -np.abs(cands - 0.5)
    if method == "accuracy":
        keys = (closeness, acc)  # np.lexsort: last key is primary
    else:
        ok = fpr <= target_fpr + 1e-12
        keys = (closeness, acc, tpr, ok)
    best = int(np.lexsort(keys)[-1])
    return ThresholdChoice(float(cands[best]), method, float(acc[best]), float(fpr[best]), float(tpr[best]),
                           float(target_fpr) if method == "fpr" else None, len(y))


# ----------------------------------------------------------------------------------------------------------
# Calibrating a checkpoint: score a split, choose the threshold, store it (and how it was chosen) in the file.


def parse_calibration_spec(spec: str) -> tuple[str, float]:
    """'accuracy' | 'fpr' | 'fpr:0.05' -> (method, target_fpr). The target defaults to 0.05."""
    s = spec.strip().lower() if isinstance(spec, str) else ""
    method, _, arg = s.partition(":")
    if method == "accuracy" and not arg:
        return "accuracy", 0.05
    if method == "fpr":
        try:
            target = float(arg) if arg else 0.05
        except ValueError:
            target = -1.0
        if 0.0 <= target <= 1.0:
            return "fpr", target
    raise ValueError(f"bad calibration {spec!r}; expected 'accuracy', 'fpr' or 'fpr:T' with 0 <= T <= 1")


def calibration_summary(y_true: Any, p_ai: Any, *, method: str = "accuracy", target_fpr: float = 0.05,
                        previous_threshold: float = 0.5) -> dict[str, Any]:
    """The chosen threshold with what it achieves, the accuracy at the previous threshold, and the ECE."""
    y, p = check_scores(y_true, p_ai)
    choice = choose_threshold(y, p, method=method, target_fpr=target_fpr)
    return {
        **choice.to_dict(),
        "ece": expected_calibration_error(y, p),
        "previous_threshold": float(previous_threshold),
        "previous_accuracy": float(((p >= previous_threshold).astype(np.int64) == y).mean()),
    }


def write_threshold(checkpoint: str | Path, threshold: float, calibration: dict[str, Any],
                    out: str | Path | None = None) -> Path:
    """Store `threshold` and `calibration` under ckpt["synapse7"] of `checkpoint`, written atomically to `out`
    (default: in place). Returns the path written. A safetensors model gets them in its JSON instead (`out`:
    another .safetensors path or folder, the weights copied there)."""
    from synapse7.modelfile import is_safetensors_model, update_model_json

    if is_safetensors_model(checkpoint):
        return update_model_json(checkpoint, out, threshold=float(threshold), calibration=dict(calibration))
    ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.get("synapse7") or {})
    meta["threshold"] = float(threshold)
    meta["calibration"] = dict(calibration)
    ckpt["synapse7"] = meta
    dst = Path(out) if out is not None else Path(checkpoint)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        torch.save(ckpt, tmp)
    return dst


def calibrate_checkpoint(checkpoint: str | Path, data_root: str | Path, *, split: str = "val",
                         method: str = "accuracy", target_fpr: float = 0.05, out: str | Path | None = None,
                         generators: Sequence[str] | None = None,
                         batch_size: int | None = None, num_workers: int | None = None, device: str | None = None,
                         quiet: bool = True) -> dict[str, Any]:
    """Score `split` of `data_root` with the checkpoint (its own preprocessing and alignment), choose the
    threshold, and write it into `out` (default: the checkpoint itself). Returns the stored calibration."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    res = evaluate(checkpoint, data_root, split=split, batch_size=batch_size, num_workers=num_workers,
                   generators=generators, device=device, quiet=True)
    assert res.predictions is not None
    info = calibration_summary(res.predictions.labels, res.predictions.p_ai, method=method, target_fpr=target_fpr,
                               previous_threshold=float(res.metrics["threshold"]))
    info.update({"split": split, "data": str(data_root),
                 "generators": sorted(set(res.predictions.generators)), "bad_images": res.bad_images})
    dst = write_threshold(checkpoint, info["threshold"], info, out)
    info["checkpoint"] = str(dst)
    if not quiet:
        print(f"threshold {info['threshold']:.6f} ({method}"
              + (f", target FPR {target_fpr:g}" if method == "fpr" else "")
              + f") on {split}: accuracy {info['accuracy']:.4f} (was {info['previous_accuracy']:.4f} at "
              f"{info['previous_threshold']:.4f}), FPR {info['fpr']:.4f}, TPR {info['tpr']:.4f}, "
              f"ECE {info['ece']:.4f}; written to {dst}", file=sys.stderr)
    return info


def calibrate_after_training(checkpoint: str | Path, cfg: Any, spec: str, *, quiet: bool = False) -> dict[str, Any]:
    """`train --calibrate SPEC`: calibrate a run's checkpoint in place on the run's own validation data
    (cfg.data.val_split of the generators validated on during training)."""
    method, target = parse_calibration_spec(spec)
    d = cfg.data
    return calibrate_checkpoint(checkpoint, d.root, split=d.val_split, method=method, target_fpr=target,
                                generators=d.test_generators or d.train_generators, batch_size=d.batch_size,
                                num_workers=d.num_workers, quiet=quiet)
