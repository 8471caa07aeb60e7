"""Decision-threshold choice and probability calibration on validation scores, stored in a checkpoint.

Convention everywhere: an image is called AI when P(AI) >= threshold; label 1 = AI, 0 = real. `calibrate`
chooses the threshold t on the network's own scores, then fits a temperature T so that the reported
P(AI) = sigmoid((logit - logit(t)) / T): t maps to 0.5 (so P(AI) >= 0.5 means AI, and the stored threshold
becomes 0.5) and T makes the probabilities match the observed frequencies on the validation data.
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
from synapse7.predict import Detector, load_checkpoint
from synapse7.reports import check_scores, expected_calibration_error, save_reliability_png

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


def choose_threshold(
    y_true: Any, p_ai: Any, *, method: str = "accuracy", target_fpr: float = 0.05
) -> ThresholdChoice:
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
    return ThresholdChoice(
        float(cands[best]),
        method,
        float(acc[best]),
        float(fpr[best]),
        float(tpr[best]),
        float(target_fpr) if method == "fpr" else None,
        len(y),
    )


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


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)  # saturated sigmoids: keep logits finite
    return np.log(p) - np.log1p(-p)


def apply_scaling(p_ai: Any, temperature: float, offset: float) -> np.ndarray:
    """Calibrated P(AI) = sigmoid((logit(p_ai) - offset) / temperature), as `Detector` computes it from logits."""
    from scipy.special import expit  # a sigmoid without overflow warnings for large |logit|

    return expit((_logit(p_ai) - offset) / temperature)


def fit_temperature(y_true: Any, p_ai: Any, threshold: float) -> float:
    """The temperature T minimising the log-loss of sigmoid((logit(p) - logit(threshold)) / T) on (y, p).

    Temperature scaling (Guo et al., 2017) about the chosen threshold rather than about 0: one parameter, and
    the decision boundary stays where `choose_threshold` put it. Searched on log T in [1e-3, 1e3].
    """
    from scipy.optimize import minimize_scalar

    y, p = check_scores(y_true, p_ai)
    z = _logit(p) - _logit(np.array([threshold]))[0]

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + e^-s) for y=1 and log(1 + e^s) for y=0, stably
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))

    res = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(1e3)), method="bounded")
    return float(math.exp(res.x))


def calibration_summary(
    y_true: Any,
    p_ai: Any,
    *,
    method: str = "accuracy",
    target_fpr: float = 0.05,
    previous_threshold: float = 0.5,
) -> dict[str, Any]:
    """The chosen threshold with what it achieves, the fitted scaling, the accuracy at the previous threshold,
    and the ECE before (`ece_uncalibrated`) and after (`ece`) scaling. `p_ai` are uncalibrated scores."""
    y, p = check_scores(y_true, p_ai)
    choice = choose_threshold(y, p, method=method, target_fpr=target_fpr)
    temperature = fit_temperature(y, p, choice.threshold)
    offset = float(_logit(np.array([choice.threshold]))[0])
    return {
        **choice.to_dict(),
        "temperature": temperature,
        "offset": offset,
        "ece": expected_calibration_error(y, apply_scaling(p, temperature, offset)),
        "ece_uncalibrated": expected_calibration_error(y, p),
        "previous_threshold": float(previous_threshold),
        "previous_accuracy": float(((p >= previous_threshold).astype(np.int64) == y).mean()),
    }


def write_threshold(
    checkpoint: str | Path,
    threshold: float,
    calibration: dict[str, Any],
    out: str | Path | None = None,
    scaling: dict[str, float] | None = None,
) -> Path:
    """Store `threshold`, `calibration` and the probability `scaling` ({"temperature", "offset"}; None: remove
    it) under ckpt["synapse7"] of `checkpoint`, written atomically to `out` (default: in place). Returns the
    path written. A safetensors model gets them in its JSON instead (`out`: another .safetensors path or
    folder, the weights copied there)."""
    from synapse7.modelfile import is_safetensors_model, update_model_json

    scaling = (
        None
        if scaling is None
        else {"temperature": float(scaling["temperature"]), "offset": float(scaling["offset"])}
    )
    if is_safetensors_model(checkpoint):
        return update_model_json(
            checkpoint, out, threshold=float(threshold), calibration=dict(calibration), scaling=scaling
        )
    ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.get("synapse7") or {})
    meta["threshold"] = float(threshold)
    meta["calibration"] = dict(calibration)
    if scaling is None:
        meta.pop("scaling", None)
    else:
        meta["scaling"] = scaling
    ckpt["synapse7"] = meta
    dst = Path(out) if out is not None else Path(checkpoint)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        torch.save(ckpt, tmp)
    return dst


def calibrate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    split: str = "val",
    method: str = "accuracy",
    target_fpr: float = 0.05,
    out: str | Path | None = None,
    generators: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    quiet: bool = True,
    reliability_png: str | Path | None = None,
) -> dict[str, Any]:
    """Score `split` of `data_root` with the checkpoint (its own preprocessing and alignment), choose the
    threshold on the network's uncalibrated scores, fit the temperature, and write both into `out` (default:
    the checkpoint itself): afterwards P(AI) is calibrated and the stored threshold is 0.5. Returns the stored
    calibration; `reliability_png` (a path) also gets the reliability diagram before and after."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    det = Detector.from_checkpoint(checkpoint, device=device)
    previous = det.raw_threshold
    det.temperature, det.offset, det.threshold = 1.0, 0.0, previous  # score with the network's own P(AI)
    res = evaluate(
        checkpoint,
        data_root,
        split=split,
        batch_size=batch_size,
        num_workers=num_workers,
        generators=generators,
        device=device,
        quiet=True,
        detector=det,
    )
    assert res.predictions is not None
    y, p = res.predictions.labels, res.predictions.p_ai
    info = calibration_summary(y, p, method=method, target_fpr=target_fpr, previous_threshold=previous)
    info.update(
        {
            "split": split,
            "data": str(data_root),
            "raw_threshold": info["threshold"],
            "generators": sorted(set(res.predictions.generators)),
            "bad_images": res.bad_images,
        }
    )
    scaling = {"temperature": info["temperature"], "offset": info["offset"]}
    info["threshold"] = 0.5  # on the calibrated P(AI); raw_threshold is the same cut on the network's score
    dst = write_threshold(checkpoint, 0.5, info, out, scaling=scaling)
    info["checkpoint"] = str(dst)
    if reliability_png is not None:
        save_reliability_png(
            y, {"uncalibrated": p, "calibrated": apply_scaling(p, **scaling)}, reliability_png
        )
        info["reliability_png"] = str(reliability_png)
    if not quiet:
        print(
            f"threshold {info['raw_threshold']:.6f} on the network's score ({method}"
            + (f", target FPR {target_fpr:g}" if method == "fpr" else "")
            + f") on {split}: accuracy {info['accuracy']:.4f} (was {info['previous_accuracy']:.4f} at "
            f"{info['previous_threshold']:.4f}), FPR {info['fpr']:.4f}, TPR {info['tpr']:.4f}; P(AI) calibrated "
            f"(temperature {info['temperature']:.3f}), so AI means P(AI) >= 0.5; ECE {info['ece_uncalibrated']:.4f}"
            f" -> {info['ece']:.4f}; written to {dst}",
            file=sys.stderr,
        )
    return info


def calibrate_after_training(
    checkpoint: str | Path, cfg: Any, spec: str, *, quiet: bool = False
) -> dict[str, Any]:
    """`train --calibrate SPEC`: calibrate a run's checkpoint in place on the run's own validation data
    (cfg.data.val_split of the generators validated on during training)."""
    method, target = parse_calibration_spec(spec)
    d = cfg.data
    return calibrate_checkpoint(
        checkpoint,
        d.root,
        split=d.val_split,
        method=method,
        target_fpr=target,
        generators=d.test_generators or d.train_generators,
        batch_size=d.batch_size,
        num_workers=d.num_workers,
        quiet=quiet,
    )
