"""Evaluation under perturbations: accuracy, AP, real and fake accuracy per generator for each perturbation.

`evaluate_robustness` computes (one Detector, one evaluation pass per perturbation, nothing written);
`write_robustness` writes robustness.csv / robustness.md / robustness.json / robustness.png, each atomically.
Perturbations come after the checkpoint's (or `align`'s) alignment op, as a re-upload would come after the
generator's own encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synapse7.evaluate import evaluate
from synapse7.io import atomic_write_text, ensure_writable_dir
from synapse7.perturb import Identity, parse_perturbation_list
from synapse7.predict import Detector
from synapse7.reports import (
    TABLE_COLUMNS,
    fmt_value,
    pyplot,
    save_figure,
    table_csv,
    table_markdown,
    write_json,
)

ROBUSTNESS_COLUMNS = ["perturbation", "family", "strength", *TABLE_COLUMNS, "threshold"]
IDENTITY_STRENGTH = {"resize": 1.0, "blur": 0.0}
# Where each panel draws the unperturbed point: the identity, or the weakest end (JPEG quality 100).
UNPERTURBED_AT = {**IDENTITY_STRENGTH, "jpeg": 100.0}


@dataclass(frozen=True)
class RobustnessResult:
    """One row per (perturbation, generator), generators sorted with an "ALL" row last, perturbations in order."""

    rows: list[dict[str, Any]]
    perturbations: list[str]
    align: str | None
    info: dict[str, Any] = field(default_factory=dict)

    def overall(self) -> list[dict[str, Any]]:
        """The "ALL" row of every perturbation."""
        return [r for r in self.rows if r["generator"] == "ALL"]

    def accuracy(self, perturbation: str, generator: str = "ALL") -> float:
        for r in self.rows:
            if r["perturbation"] == perturbation and r["generator"] == generator:
                return float(r["accuracy"])
        raise KeyError(f"no row for perturbation {perturbation!r}, generator {generator!r}")


def evaluate_robustness(
    checkpoint: str | Path,
    data_root: str | Path,
    perturbations: str | Sequence[str],
    *,
    split: str = "val",
    align: str | None = None,
    generators: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    on_bad_image: str | None = None,
    threshold: float | None = None,
    device: str | None = None,
    detector: Any = None,
    log: Any = None,
    precision: str = "auto",
) -> RobustnessResult:
    """Evaluate `checkpoint` on the split once per perturbation (e.g. "jpeg:95,jpeg:65,resize:0.5,blur:1,none").

    The network is loaded once and reused. `align` overrides the checkpoint's own alignment ("none" removes it).
    """

    ops = parse_perturbation_list(perturbations)
    det = detector or Detector.from_checkpoint(
        checkpoint, device=device, threshold=threshold, precision=precision
    )
    rows: list[dict[str, Any]] = []
    used_align: str | None = None
    for op in ops:
        res = evaluate(
            checkpoint,
            data_root,
            split=split,
            batch_size=batch_size,
            num_workers=num_workers,
            generators=generators,
            on_bad_image=on_bad_image,
            align=align,
            pre_ops=[] if isinstance(op, Identity) else [op],
            quiet=True,
            detector=det,
        )
        used_align = res.metrics.get("align")
        for r in res.per_generator:
            rows.append({"perturbation": op.spec, "family": op.kind, "strength": op.strength, **r})
        if log is not None:
            log(f"{op.spec}: accuracy {res.metrics['accuracy']:.4f}, AP {res.metrics['ap']:.4f}")
    info = {"checkpoint": str(checkpoint), "data": str(data_root), "split": split, "threshold": det.threshold}
    return RobustnessResult(rows, [op.spec for op in ops], used_align, info)


def robustness_markdown(result: RobustnessResult) -> str:
    """A pivot of overall accuracy per perturbation, then the full per-generator table."""
    head = [
        f"Robustness of `{result.info.get('checkpoint', '?')}` on `{result.info.get('data', '?')}` "
        f"(split {result.info.get('split', '?')}, alignment {result.align or 'none'}, "
        f"threshold {result.info.get('threshold', float('nan')):.4f}).",
        "",
    ]
    gens = [r["generator"] for r in result.rows if r["perturbation"] == result.perturbations[0]]
    lines = ["| perturbation | " + " | ".join(gens) + " |", "|---|" + "---|" * len(gens)]
    for spec in result.perturbations:
        accs = {r["generator"]: r["accuracy"] for r in result.rows if r["perturbation"] == spec}
        lines.append(f"| {spec} | " + " | ".join(fmt_value(accs.get(g)) for g in gens) + " |")
    return "\n".join(
        head
        + ["Accuracy:", "", *lines, "", "All metrics:", "", table_markdown(result.rows, ROBUSTNESS_COLUMNS)]
    )


def save_robustness_png(result: RobustnessResult, path: str | Path) -> None:
    """Accuracy against strength: one panel (and line) per perturbation family; "none" as a dashed line."""
    plt = pyplot()
    overall = result.overall()
    families = [f for f in dict.fromkeys(r["family"] for r in overall) if f != "none"]
    base = [r["accuracy"] for r in overall if r["family"] == "none"]
    labels = {"jpeg": "JPEG quality", "resize": "resize factor", "blur": "blur sigma (px)"}
    n = max(1, len(families))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), dpi=120, squeeze=False)
    for ax, fam in zip(axes[0], families or ["none"], strict=False):
        pts = sorted((r["strength"], r["accuracy"]) for r in overall if r["family"] == fam)
        if base and fam in IDENTITY_STRENGTH:  # resize 1 and blur 0 are the unperturbed image itself: join it
            pts = sorted([*pts, (IDENTITY_STRENGTH[fam], base[0])])
        if pts and fam != "none":
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                label=f"{labels.get(fam, fam)}: accuracy",
            )
        if base:  # the unperturbed point on every panel, at the weak end of the axis (JPEG: quality 100)
            ax.plot(
                [UNPERTURBED_AT.get(fam, 0.0)],
                [base[0]],
                marker="*",
                markersize=11,
                color="C2",
                linestyle="none",
                label=f"unperturbed: {base[0]:.3f}",
                zorder=3,
            )
            ax.axhline(base[0], color="grey", linestyle="--", linewidth=1, label="unperturbed level")
        if fam in ("jpeg", "resize"):
            ax.invert_xaxis()  # stronger perturbation to the right, as for blur
        ax.set_xlabel(labels.get(fam, fam))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.axhline(0.5, color="red", linestyle=":", linewidth=0.8, label="chance (0.5)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title(fam)
    fig.suptitle(f"Accuracy under perturbation (align: {result.align or 'none'})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_robustness(result: RobustnessResult, out_dir: str | Path) -> Path:
    """Write robustness.csv, .md, .json and .png into out_dir (each atomically); returns the folder."""
    out = ensure_writable_dir(out_dir)
    atomic_write_text(out / "robustness.csv", table_csv(result.rows, ROBUSTNESS_COLUMNS))
    atomic_write_text(out / "robustness.md", robustness_markdown(result))
    payload = {
        "perturbations": result.perturbations,
        "align": result.align,
        **result.info,
        "rows": result.rows,
    }
    write_json(out / "robustness.json", payload)
    save_robustness_png(result, out / "robustness.png")
    return out
