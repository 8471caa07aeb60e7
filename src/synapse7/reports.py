"""Metrics and evaluation reports. Metric functions take arrays and return dicts; writers are separate."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    average_precision_score,
    classification_report,
    confusion_matrix,
    roc_auc_score,
)

from synapse7.io import atomic_path, atomic_write_text

TARGET_NAMES = ["REAL", "AI"]
TABLE_COLUMNS = ["generator", "accuracy", "ap", "roc_auc", "real_acc", "fake_acc", "n_real", "n_fake", "support"]


def binary_metrics(y_true: np.ndarray, p_ai: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, AP, ROC-AUC, real and fake accuracy at `threshold`. AP/AUC are NaN with one class present."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_ai, dtype=float)
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    real, fake = y == 0, y == 1
    return {
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "ap": float(average_precision_score(y, p)) if both else float("nan"),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "real_acc": float((pred[real] == 0).mean()) if real.any() else float("nan"),
        "fake_acc": float((pred[fake] == 1).mean()) if fake.any() else float("nan"),
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
        "support": int(len(y)),
        "threshold": float(threshold),
    }


def check_scores(y_true: Any, p_ai: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0/1) and finite scores of equal, non-zero length as int64 / float64 arrays, or ValueError."""
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
    y, p = check_scores(y_true, p_ai)
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


def classification_report_text(y_true: np.ndarray, p_ai: np.ndarray, threshold: float = 0.5) -> str:
    """sklearn's classification report with rows REAL and AI."""
    pred = (np.asarray(p_ai) >= threshold).astype(int)
    return classification_report(np.asarray(y_true).astype(int), pred, labels=[0, 1], target_names=TARGET_NAMES,
                                 digits=4, zero_division=0)


def per_generator_metrics(y_true: np.ndarray, p_ai: np.ndarray, generators: Sequence[str],
                          threshold: float = 0.5) -> list[dict[str, Any]]:
    """One row per generator (sorted), then an "ALL" row."""
    y, p, g = np.asarray(y_true), np.asarray(p_ai), np.asarray(generators)
    rows = [{"generator": name, **binary_metrics(y[g == name], p[g == name], threshold)} for name in sorted(set(g))]
    rows.append({"generator": "ALL", **binary_metrics(y, p, threshold)})
    return rows


def fmt_value(v: Any, spec: str = ".4f", *, none: str = "") -> str:
    """A table cell: floats with `spec` (NaN as "nan"), None as `none`, anything else as str()."""
    if v is None:
        return none
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, spec)
    return str(v)


def table_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt_value(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([fmt_value(r.get(c)) for c in columns])
    return buf.getvalue()


def per_generator_reports_text(y_true: np.ndarray, p_ai: np.ndarray, generators: Sequence[str],
                               threshold: float = 0.5) -> str:
    y, p, g = np.asarray(y_true), np.asarray(p_ai), np.asarray(generators)
    parts = []
    for name in sorted(set(g)):
        m = g == name
        parts.append(f"=== {name} (n={int(m.sum())}) ===\n{classification_report_text(y[m], p[m], threshold)}")
    return "\n".join(parts)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed); imported on first use, as it is slow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN and infinities become null, keys strings), indented, written atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def json_safe(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold: non-finite floats become None, dict keys str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_confusion_matrix_png(cm: np.ndarray, path: str | Path, title: str = "Confusion matrix") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
    ConfusionMatrixDisplay(cm, display_labels=TARGET_NAMES).plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def _ece(y: np.ndarray, p_ai: np.ndarray) -> float:
    p = np.asarray(p_ai, dtype=float)
    return expected_calibration_error(y, p) if len(p) and np.isfinite(p).all() else float("nan")


def compute_eval_report(y_true: np.ndarray, p_ai: np.ndarray, generators: Sequence[str],
                        threshold: float = 0.5) -> dict[str, Any]:
    """Everything `evaluate` reports, as data."""
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(p_ai) >= threshold).astype(int)
    return {
        # ECE (15 bins, confidence of the predicted class at 0.5) measures the probabilities, not the cut-off.
        "overall": {**binary_metrics(y, p_ai, threshold), "ece": _ece(y, p_ai)},
        "per_generator": per_generator_metrics(y, p_ai, generators, threshold),
        "classification_report": classification_report_text(y, p_ai, threshold),
        "per_generator_reports": per_generator_reports_text(y, p_ai, generators, threshold),
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]),
    }


def write_eval_report(report: dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the report files of `synapse7 evaluate` into out_dir, each atomically."""
    out = Path(out_dir)
    atomic_write_text(out / "classification_report.txt", report["classification_report"])
    atomic_write_text(out / "per_generator_reports.txt", report["per_generator_reports"])
    atomic_write_text(out / "per_generator.csv", table_csv(report["per_generator"]))
    atomic_write_text(out / "per_generator.md", table_markdown(report["per_generator"]))
    metrics = {**report["overall"], "n_images": report["overall"]["support"],
               "confusion_matrix": report["confusion_matrix"].tolist(), **(extra or {})}
    write_json(out / "metrics.json", metrics)
    save_confusion_matrix_png(report["confusion_matrix"], out / "confusion_matrix.png")
