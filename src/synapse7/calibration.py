"""Decision-threshold choice on validation scores, and expected calibration error.

Convention everywhere: an image is called AI when P(AI) >= threshold; label 1 = AI, 0 = real.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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


def _check(y_true: Any, p_ai: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(p_ai, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true and p_ai differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (real) and 1 (AI)")
    if not np.isfinite(p).all():
        raise ValueError("p_ai holds NaN or infinite values")
    return y.astype(np.int64), p


def choose_threshold(y_true: Any, p_ai: Any, *, method: str = "accuracy", target_fpr: float = 0.05) -> ThresholdChoice:
    """Pick the threshold on P(AI) that maximises accuracy, or the TPR subject to FPR <= target_fpr.

    Candidates are the midpoints between consecutive distinct scores (plus one below all and one above all),
    so the cut sits between examples rather than on one. Ties go to higher accuracy, then to the candidate
    nearest 0.5 (the uncalibrated default).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    y, p = _check(y_true, p_ai)
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


def expected_calibration_error(y_true: Any, p_ai: Any, n_bins: int = 15, *, on: str = "predicted") -> float:
    """Expected calibration error with `n_bins` equal-width bins over [0, 1] (Guo et al., 2017).

    on="predicted" (default): confidence = probability of the predicted class, max(p, 1 - p), with the
    prediction p >= 0.5; each bin compares mean confidence with accuracy. on="p_ai": confidence = P(AI)
    and each bin compares it with the fraction of AI images (torchmetrics' binary definition).
    ECE = sum over bins of (bin count / n) * |mean confidence - observed frequency|. Bins are (lo, hi],
    the first also holding 0.
    """
    if on not in ("predicted", "p_ai"):
        raise ValueError(f"on must be 'predicted' or 'p_ai', got {on!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _check(y_true, p_ai)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("p_ai must be probabilities in [0, 1]")
    if on == "predicted":
        pred = (p >= 0.5).astype(np.int64)
        conf = np.where(pred == 1, p, 1.0 - p)
        hit = (pred == y).astype(np.float64)
    else:
        conf, hit = p, y.astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=hit, minlength=n_bins)
    return float(np.abs(conf_sum - hit_sum).sum() / len(y))
