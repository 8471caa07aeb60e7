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
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from synapse7.io import atomic_path, atomic_write_text

TARGET_NAMES = ["REAL", "AI"]
TABLE_COLUMNS = [
    "generator",
    "accuracy",
    "ap",
    "roc_auc",
    "real_acc",
    "fake_acc",
    "n_real",
    "n_fake",
    "support",
]


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


def reliability_bins(y_true: Any, p_ai: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin of P(AI) over [0, 1]: mean P(AI), fraction of AI images, count (empty bins NaN).

    The data of a reliability diagram: a calibrated model has frac_ai == mean_p in every bin.
    """
    y, p = check_scores(y_true, p_ai)
    idx = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac_ai = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins) / count
    return {"mean_p": mean_p, "frac_ai": frac_ai, "count": count, "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def classification_report_text(y_true: np.ndarray, p_ai: np.ndarray, threshold: float = 0.5) -> str:
    """sklearn's classification report with rows REAL and AI."""
    pred = (np.asarray(p_ai) >= threshold).astype(int)
    return classification_report(
        np.asarray(y_true).astype(int),
        pred,
        labels=[0, 1],
        target_names=TARGET_NAMES,
        digits=4,
        zero_division=0,
    )


def per_generator_metrics(
    y_true: np.ndarray, p_ai: np.ndarray, generators: Sequence[str], threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One row per generator (sorted), then an "ALL" row."""
    y, p, g = np.asarray(y_true), np.asarray(p_ai), np.asarray(generators)
    rows = [
        {"generator": name, **binary_metrics(y[g == name], p[g == name], threshold)}
        for name in sorted(set(g))
    ]
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


def per_generator_reports_text(
    y_true: np.ndarray, p_ai: np.ndarray, generators: Sequence[str], threshold: float = 0.5
) -> str:
    y, p, g = np.asarray(y_true), np.asarray(p_ai), np.asarray(generators)
    parts = []
    for name in sorted(set(g)):
        m = g == name
        parts.append(
            f"=== {name} (n={int(m.sum())}) ===\n{classification_report_text(y[m], p[m], threshold)}"
        )
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
    ConfusionMatrixDisplay(cm, display_labels=TARGET_NAMES).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_reliability_png(y_true: Any, scores: dict[str, Any], path: str | Path, n_bins: int = 15) -> None:
    """Reliability diagram: observed fraction of AI images against mean P(AI) per bin, one line per entry of
    `scores` (name -> P(AI)), each labelled with its ECE; the diagonal is perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=120)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    for name, p in scores.items():
        b = reliability_bins(y_true, p, n_bins)
        ok = b["count"] > 0
        ax.plot(
            b["mean_p"][ok],
            b["frac_ai"][ok],
            marker="o",
            label=f"{name} (ECE {expected_calibration_error(y_true, p, n_bins):.3f})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean P(AI) in bin",
        ylabel="fraction of AI images in bin",
        title="Reliability diagram",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_curves_png(y_true: Any, p_ai: Any, threshold: float, path: str | Path) -> None:
    """ROC and precision-recall curves (AI = positive) side by side, with the operating point at `threshold`."""
    y, p = check_scores(y_true, p_ai)
    plt = pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(8.4, 3.9), dpi=120)
    pred = p >= threshold
    both = len(np.unique(y)) == 2
    if both:
        fpr, tpr, _ = roc_curve(y, p)
        roc.plot(fpr, tpr, label=f"ROC (AUC {roc_auc_score(y, p):.3f})")
        prec, rec, _ = precision_recall_curve(y, p)
        pr.plot(rec, prec, label=f"PR (AP {average_precision_score(y, p):.3f})")
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        op_tpr, op_fpr = tp / max(int(y.sum()), 1), fp / max(int((y == 0).sum()), 1)
        roc.plot([op_fpr], [op_tpr], "o", color="C3", label=f"threshold {threshold:.3g}")
        pr.plot([op_tpr], [tp / max(tp + fp, 1)], "o", color="C3", label=f"threshold {threshold:.3g}")
    roc.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    roc.set(
        xlabel="false positive rate (real called AI)",
        ylabel="true positive rate (AI called AI)",
        title="ROC curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    pr.set(
        xlabel="recall (AI)",
        ylabel="precision (AI)",
        title="Precision-recall curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    for ax in (roc, pr):
        ax.legend(loc="lower right" if ax is roc else "lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_score_histogram_png(
    y_true: Any, p_ai: Any, threshold: float, path: str | Path, bins: int = 25
) -> None:
    """Histogram of P(AI) for real and for AI images, with the threshold drawn."""
    y, p = check_scores(y_true, p_ai)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, name, color in ((0, "REAL", "C0"), (1, "AI", "C1")):
        ax.hist(
            p[y == label], bins=edges, alpha=0.6, color=color, label=f"{name} (n={int((y == label).sum())})"
        )
    ax.axvline(threshold, color="C3", ls="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="P(AI)", ylabel="images", title="Scores per class", xlim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def read_training_logs(log_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's Lightning CSV logs (logs/metrics.csv, then each resume_N/metrics.csv in order),
    values as floats, empty cells left out."""
    root = Path(log_dir)
    files = [root / "metrics.csv"] + sorted(
        root.glob("resume_*/metrics.csv"), key=lambda f: int(f.parent.name.split("_")[1])
    )
    rows: list[dict[str, float]] = []
    for f in files:
        if not f.is_file():
            continue
        with open(f, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append({k: float(v) for k, v in r.items() if k and v not in ("", None)})
    return rows


def save_training_curves_png(log_dir: str | Path, path: str | Path) -> bool:
    """Loss against step (training steps, epoch means, validation) and validation AUC / accuracy against epoch,
    from the run's CSV logs. Returns False (writing nothing) when the logs hold no rows."""
    rows = read_training_logs(log_dir)
    if not rows:
        return False

    def series(key: str, x: str = "step") -> tuple[list[float], list[float]]:
        pts = [(r[x], r[key]) for r in rows if key in r and x in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    plt = pyplot()
    fig, (loss, score) = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=120)
    for key, style, name in (
        ("train_loss_step", "-", "train (per step)"),
        ("train_loss_epoch", "o-", "train (epoch mean)"),
        ("val_loss", "s-", "validation"),
    ):
        xs, ys = series(key)
        if xs:
            loss.plot(xs, ys, style, label=name, alpha=0.5 if key.endswith("_step") else 1.0, markersize=4)
    loss.set(xlabel="optimiser step", ylabel="BCE loss", title="Loss")
    for key, name in (
        ("val_auc", "validation ROC-AUC"),
        ("val_acc", "validation accuracy"),
        ("train_acc_epoch", "train accuracy"),
    ):
        xs, ys = series(key, "epoch")
        if xs:
            score.plot([x + 1 for x in xs], ys, "o-", label=name, markersize=4)
    score.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(0, 1.02))
    for ax in (loss, score):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _ece(y: np.ndarray, p_ai: np.ndarray) -> float:
    p = np.asarray(p_ai, dtype=float)
    return expected_calibration_error(y, p) if len(p) and np.isfinite(p).all() else float("nan")


def compute_eval_report(
    y_true: np.ndarray, p_ai: np.ndarray, generators: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
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


def write_eval_report(
    report: dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None
) -> None:
    """Write the report files of `synapse7 evaluate` into out_dir, each atomically."""
    out = Path(out_dir)
    atomic_write_text(out / "classification_report.txt", report["classification_report"])
    atomic_write_text(out / "per_generator_reports.txt", report["per_generator_reports"])
    atomic_write_text(out / "per_generator.csv", table_csv(report["per_generator"]))
    atomic_write_text(out / "per_generator.md", table_markdown(report["per_generator"]))
    metrics = {
        **report["overall"],
        "n_images": report["overall"]["support"],
        "confusion_matrix": report["confusion_matrix"].tolist(),
        **(extra or {}),
    }
    write_json(out / "metrics.json", metrics)
    save_confusion_matrix_png(report["confusion_matrix"], out / "confusion_matrix.png")


def write_eval_plots(y_true: Any, p_ai: Any, threshold: float, out_dir: str | Path) -> list[Path]:
    """The pictures of `synapse7 evaluate`: ROC + PR curves, scores per class, reliability diagram."""
    out = Path(out_dir)
    paths = [out / "roc_pr.png", out / "score_histogram.png", out / "reliability.png"]
    save_curves_png(y_true, p_ai, threshold, paths[0])
    save_score_histogram_png(y_true, p_ai, threshold, paths[1])
    save_reliability_png(y_true, {"P(AI)": p_ai}, paths[2])
    return paths
