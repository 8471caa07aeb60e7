"""Dataset shortcut audit: file metadata per generator and class, and how well each property alone separates
`ai` from `nature`.

Only file headers are read (PIL's lazy `Image.open` parses JPEG markers and PNG chunks up to the pixel data,
never decoding it), so auditing tens of thousands of files takes seconds. A property is a *shortcut* when a
one-feature rule on it reaches a cross-validated balanced accuracy of at least `threshold` (0.75 by default):
a detector trained on such data can score that much without looking at the image content at all.

    result = audit_dataset("data/genimage")          # computing
    write_audit_report(result, "runs/audit")         # writing: audit.md, audit.json, audit.png
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin
from sklearn.model_selection import StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

from synapse7.data import LayoutError, Sample, discover_samples
from synapse7.io import BadImageError, atomic_write_text, open_image, printable_path
from synapse7.reports import fmt_value, pyplot, save_figure, write_json

# IJG (libjpeg) standard tables, ITU-T T.81 Annex K, in natural (row-major) order, as PIL reports them.
STANDARD_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=np.int64,
)
STANDARD_CHROMA = np.array(
    [
        17,
        18,
        24,
        47,
        99,
        99,
        99,
        99,
        18,
        21,
        26,
        66,
        99,
        99,
        99,
        99,
        24,
        26,
        56,
        99,
        99,
        99,
        99,
        99,
        47,
        66,
        99,
        99,
        99,
        99,
        99,
        99,
    ]
    + [99] * 32,
    dtype=np.int64,
)

DEFAULT_THRESHOLD = 0.75
_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


# ----------------------------------------------------------------------------------------------------------
# JPEG quality from quantisation tables


def ijg_table(base: np.ndarray, quality: int, *, max_value: int = 255) -> np.ndarray:
    """`base` scaled as libjpeg's `jpeg_set_quality` does (max_value 255 = baseline, 32767 = 16-bit)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((base * scale + 50) // 100, 1, max_value)


@dataclass(frozen=True)
class JpegQuality:
    quality: int  # best-matching IJG quality 1..100
    exact: bool  # the tables are exactly IJG's at that quality (False: another encoder's own tables)
    mean_abs_error: float  # per table entry, against the best match


def _ijg_candidates(max_value: int) -> tuple[np.ndarray, np.ndarray]:
    luma = np.stack([ijg_table(STANDARD_LUMA, q, max_value=max_value) for q in range(1, 101)])  # (100, 64)
    chroma = np.stack([ijg_table(STANDARD_CHROMA, q, max_value=max_value) for q in range(1, 101)])
    return luma, chroma


_CANDIDATES = {255: _ijg_candidates(255), 32767: _ijg_candidates(32767)}


def estimate_jpeg_quality(qtables: dict[int, Sequence[int]] | Sequence[Sequence[int]]) -> JpegQuality | None:
    """Estimate the IJG quality a JPEG was saved at from its quantisation tables (PIL's `im.quantization`).

    Each candidate quality 1..100 is scored by the summed absolute difference between the file's luminance
    table (and chrominance table, when present) and the standard tables scaled for that quality; the best
    wins (ties go to the lower quality). Files written by libjpeg/PIL/OpenCV recover their quality exactly.
    """
    tables = [qtables[k] for k in sorted(qtables)] if isinstance(qtables, dict) else list(qtables)
    if not tables or len(tables[0]) != 64:
        return None
    # Most files of a dataset share a few table sets: cache per distinct set.
    return _estimate_cached(tuple(tuple(int(v) for v in t) for t in tables[:2]))


@functools.lru_cache(maxsize=4096)
def _estimate_cached(tables: tuple[tuple[int, ...], ...]) -> JpegQuality:
    luma = np.asarray(tables[0], dtype=np.int64)
    chroma = np.asarray(tables[1], dtype=np.int64) if len(tables) > 1 and len(tables[1]) == 64 else None
    max_value = 32767 if max(int(luma.max()), int(chroma.max()) if chroma is not None else 0) > 255 else 255
    cand_l, cand_c = _CANDIDATES[max_value]
    err = np.abs(cand_l - luma).sum(axis=1)
    n = 64
    if chroma is not None:
        err = err + np.abs(cand_c - chroma).sum(axis=1)
        n = 128
    best = int(np.argmin(err))
    return JpegQuality(quality=best + 1, exact=bool(err[best] == 0), mean_abs_error=float(err[best]) / n)


# ----------------------------------------------------------------------------------------------------------
# Per-file header records


@dataclass
class FileRecord:
    path: str
    split: str
    generator: str
    label: int  # 1 = ai, 0 = nature
    file_size: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    exif: bool | None = None
    icc_profile: bool | None = None
    jpeg_quality: int | None = None
    jpeg_quality_exact: bool | None = None
    jpeg_subsampling: str | None = None
    jpeg_progressive: bool | None = None
    error: str | None = None  # set when the file could not be read; all image fields are then None


def read_header(sample: Sample, split: str, *, verify: bool = False) -> FileRecord:
    """Header properties of one file. Never raises: unreadable files come back with `error` set.

    verify=True also decodes the whole image (as training would), catching truncated pixel data.
    """
    try:
        size = os.stat(sample.path).st_size
    except OSError as e:
        return FileRecord(
            sample.path,
            split,
            sample.generator,
            sample.label,
            0,
            error=f"cannot access file ({e.strerror or e})",
        )
    rec = FileRecord(sample.path, split, sample.generator, sample.label, size)
    if size == 0:
        rec.error = "zero-byte file"
        return rec
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: the size is recorded, nothing is decoded
            with Image.open(sample.path) as im:
                rec.format = im.format or "unknown"
                rec.width, rec.height = im.size
                rec.mode = im.mode
                rec.exif = bool(im.info.get("exif"))
                rec.icc_profile = bool(im.info.get("icc_profile"))
                if im.format == "JPEG":
                    q = estimate_jpeg_quality(getattr(im, "quantization", None) or {})
                    if q is not None:
                        rec.jpeg_quality, rec.jpeg_quality_exact = q.quality, q.exact
                    if len(im.getbands()) == 1:
                        rec.jpeg_subsampling = "gray"
                    else:
                        rec.jpeg_subsampling = _SUBSAMPLING_NAMES.get(
                            JpegImagePlugin.get_sampling(im), "other"
                        )
                    rec.jpeg_progressive = bool(im.info.get("progressive") or im.info.get("progression"))
    except Image.UnidentifiedImageError:
        rec.error = "not a recognised image (unknown or wrong magic bytes)"
    except Image.DecompressionBombError as e:
        rec.error = f"decompression bomb: {e}"
    except Exception as e:  # noqa: BLE001 - any parser failure is a property of the file, reported not raised
        rec.error = f"corrupt header: {str(e) or type(e).__name__}"
    if rec.error is None and verify:
        try:
            open_image(sample.path)
        except BadImageError as e:
            rec.error = e.reason
    if rec.error is not None:
        for name in (
            "format",
            "width",
            "height",
            "mode",
            "exif",
            "icc_profile",
            "jpeg_quality",
            "jpeg_quality_exact",
            "jpeg_subsampling",
            "jpeg_progressive",
        ):
            setattr(rec, name, None)
    return rec


# ----------------------------------------------------------------------------------------------------------
# Features and one-feature classifiers


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "categorical" | "numeric"
    get: Callable[[FileRecord], Any]  # value, or None when it does not apply
    # Scored only among files of this format: whether a file has a JPEG quality at all is the `format`
    # shortcut again; the question here is whether the quality separates the classes *among JPEGs*.
    only_format: str | None = None


def _ratio(a: int | None, b: int | None) -> float | None:
    return a / b if a and b else None


FEATURES: tuple[Feature, ...] = (
    Feature("format", "categorical", lambda r: r.format),
    Feature("mode", "categorical", lambda r: r.mode),
    Feature("exif", "categorical", lambda r: r.exif),
    Feature("icc_profile", "categorical", lambda r: r.icc_profile),
    Feature("jpeg_subsampling", "categorical", lambda r: r.jpeg_subsampling, "JPEG"),
    Feature("jpeg_progressive", "categorical", lambda r: r.jpeg_progressive, "JPEG"),
    Feature("jpeg_quality", "numeric", lambda r: r.jpeg_quality, "JPEG"),
    Feature("width", "numeric", lambda r: r.width),
    Feature("height", "numeric", lambda r: r.height),
    Feature("pixels", "numeric", lambda r: r.width * r.height if r.width and r.height else None),
    Feature("aspect_ratio", "numeric", lambda r: _ratio(r.width, r.height)),
    Feature("file_size", "numeric", lambda r: r.file_size),
    Feature("bytes_per_pixel", "numeric", lambda r: _ratio(r.file_size, (r.width or 0) * (r.height or 0))),
)


@dataclass(frozen=True)
class _Rule:
    """A fitted one-feature rule. Categorical: `ai_values` are predicted ai. Numeric: threshold + direction."""

    kind: str
    default: int  # label for values unseen in fitting / missing values with no fitted label
    ai_values: frozenset = frozenset()
    threshold: float = math.nan
    above_is_ai: bool = True
    missing_label: int | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "categorical":
            return (
                np.array([1 if v in self.ai_values else 0 for v in x], dtype=np.int64)
                if len(self.ai_values)
                else np.zeros(len(x), dtype=np.int64)
            )
        missing = np.isnan(x)
        with np.errstate(invalid="ignore"):
            pred = (x > self.threshold) if self.above_is_ai else (x <= self.threshold)
        pred = pred.astype(np.int64)
        pred[missing] = self.default if self.missing_label is None else self.missing_label
        return pred


def _label_for(n_ai: int, n_nat: int, p: int, n: int, default: int) -> int:
    # Balanced-accuracy-optimal label of a group: compare class-normalised counts (plain majority when
    # the classes are balanced).
    a, b = n_ai / max(p, 1), n_nat / max(n, 1)
    return 1 if a > b else 0 if b > a else default


def _fit_rule(kind: str, x: np.ndarray, y: np.ndarray) -> _Rule:
    p, n = int(y.sum()), int((1 - y).sum())
    default = 1 if p > n else 0
    if kind == "categorical":
        counts: dict[Any, list[int]] = {}
        for v, lab in zip(x, y, strict=True):
            counts.setdefault(v, [0, 0])[int(lab)] += 1
        ai_values = frozenset(v for v, (cn, ca) in counts.items() if _label_for(ca, cn, p, n, default) == 1)
        return _Rule(kind, default, ai_values=ai_values)
    missing = np.isnan(x)
    missing_label = None
    tp_m = tn_m = 0
    if missing.any():
        ca, cn = int(y[missing].sum()), int((1 - y[missing]).sum())
        missing_label = _label_for(ca, cn, p, n, default)
        tp_m, tn_m = (ca, 0) if missing_label == 1 else (0, cn)
    xv, yv = x[~missing], y[~missing]
    order = np.argsort(xv, kind="stable")
    xs, ys = xv[order], yv[order]
    if len(xs) == 0:
        return _Rule(kind, default, threshold=math.inf, missing_label=missing_label)
    last = np.r_[np.nonzero(np.diff(xs))[0], len(xs) - 1]  # index of the last copy of each unique value
    a_le = np.r_[0, np.cumsum(ys)[last]]  # ai with x <= cut k (cut 0: below every value)
    n_le = np.r_[0, np.cumsum(1 - ys)[last]]
    a_tot, n_tot = a_le[-1], n_le[-1]
    cuts = np.r_[-math.inf, (xs[last][:-1] + xs[last][1:]) / 2.0, math.inf]
    bacc_above = 0.5 * ((a_tot - a_le + tp_m) / max(p, 1) + (n_le + tn_m) / max(n, 1))  # ai if x > cut
    bacc_below = 0.5 * ((a_le + tp_m) / max(p, 1) + (n_tot - n_le + tn_m) / max(n, 1))  # ai if x <= cut
    i_a, i_b = int(np.argmax(bacc_above)), int(np.argmax(bacc_below))
    if bacc_above[i_a] >= bacc_below[i_b]:
        return _Rule(kind, default, threshold=float(cuts[i_a]), above_is_ai=True, missing_label=missing_label)
    return _Rule(kind, default, threshold=float(cuts[i_b]), above_is_ai=False, missing_label=missing_label)


def _describe(rule: _Rule, feature: str) -> str:
    if rule.kind == "categorical":
        vals = sorted(str(v) for v in rule.ai_values)
        if not vals:
            return "always nature"
        shown = ", ".join(vals[:6]) + (", ..." if len(vals) > 6 else "")
        return f"ai if {feature} in {{{shown}}}"
    side = ">" if rule.above_is_ai else "<="
    text = f"ai if {feature} {side} {rule.threshold:.6g}"
    if rule.missing_label is not None:
        text += f" (missing -> {'ai' if rule.missing_label else 'nature'})"
    return text


def _metrics(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy) with ai = 1 as the positive class."""
    acc = float((pred == y).mean())
    tpr = float(pred[y == 1].mean()) if (y == 1).any() else math.nan
    tnr = float(1 - pred[y == 0].mean()) if (y == 0).any() else math.nan
    return acc, 0.5 * (tpr + tnr)


def _out_of_fold(
    y: np.ndarray, folds: int, seed: int, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[int, float | None, float | None]:
    """Stratified k-fold predictions: (k, accuracy, balanced accuracy), k = 0 and None where a class has < 2.

    `fit_predict(train_idx, test_idx)` fits on the training indices and returns predictions for the test ones.
    """
    k = min(folds, int(y.sum()), int(len(y) - y.sum()))
    if k < 2:
        return 0, None, None
    pred = np.empty(len(y), dtype=np.int64)
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(
        np.zeros(len(y)), y
    ):
        pred[test] = fit_predict(train, test)
    return k, *_metrics(y, pred)


@dataclass(frozen=True)
class ShortcutScore:
    """How well one property alone separates ai from nature within one scope ('all' or a generator)."""

    scope: str
    feature: str
    kind: str
    n_ai: int
    n_nature: int
    accuracy: float | None  # out-of-fold (k-fold CV) accuracy of the one-feature rule
    balanced_accuracy: float | None  # out-of-fold balanced accuracy: the flagging criterion
    fit_balanced_accuracy: float | None  # rule fitted and scored on all files (optimistic)
    rule: str  # the rule fitted on all files, in words
    folds: int
    flagged: bool

    @property
    def margin(self) -> float | None:
        """Balanced accuracy above chance (0.5), in points."""
        return None if self.balanced_accuracy is None else 100.0 * (self.balanced_accuracy - 0.5)


def score_feature(
    scope: str,
    feature: Feature | str,
    values: Sequence[Any],
    y: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    folds: int = 5,
    seed: int = 0,
) -> ShortcutScore:
    """Cross-validated accuracy of the best one-feature rule (categorical: class-normalised majority label
    per value; numeric: best single threshold, missing values get their own majority label)."""
    feat = feature if isinstance(feature, Feature) else next(f for f in FEATURES if f.name == feature)
    y = np.asarray(y, dtype=np.int64)
    if feat.kind == "numeric":
        x = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    else:
        x = np.array(["n/a" if v is None else str(v) for v in values], dtype=object)
    p, n = int(y.sum()), int(len(y) - y.sum())
    full = _fit_rule(feat.kind, x, y)
    fit_bacc = _metrics(y, full.predict(x))[1] if p and n else None
    k, acc, bacc = _out_of_fold(
        y, folds, seed, lambda tr, te: _fit_rule(feat.kind, x[tr], y[tr]).predict(x[te])
    )
    flagged = bacc is not None and bacc >= threshold
    return ShortcutScore(
        scope, feat.name, feat.kind, p, n, acc, bacc, fit_bacc, _describe(full, feat.name), k, flagged
    )


# ----------------------------------------------------------------------------------------------------------
# Per generator / class descriptions


@dataclass(frozen=True)
class ClassSummary:
    scope: str  # generator name or "all"
    cls: str  # "ai" | "nature"
    n_files: int
    n_unreadable: int
    per_split: dict[str, int]
    formats: dict[str, int]
    modes: dict[str, int]
    jpeg_quality: dict[str, int]  # "96" or "~87" (non-IJG tables, best match) -> count
    jpeg_subsampling: dict[str, int]
    exif_fraction: float
    icc_fraction: float
    width: dict[str, float]  # min / p25 / median / p75 / max
    height: dict[str, float]
    top_sizes: dict[str, int]  # "WxH" -> count, most common first
    file_size_median: float | None
    bytes_per_pixel_median: float | None


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), [0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "p25", "median", "p75", "max"), (float(v) for v in q), strict=True))


def _top(counter: Counter, k: int | None = None) -> dict[str, int]:
    return {str(key): int(v) for key, v in counter.most_common(k)}


def summarise_class(scope: str, cls: str, records: list[FileRecord]) -> ClassSummary:
    ok = [r for r in records if r.error is None]
    nz = max(len(ok), 1)
    jq = Counter(
        f"{r.jpeg_quality}" if r.jpeg_quality_exact else f"~{r.jpeg_quality}"
        for r in ok
        if r.jpeg_quality is not None
    )
    sizes = [r.file_size for r in ok]
    bpp = [r.file_size / (r.width * r.height) for r in ok if r.width and r.height]
    return ClassSummary(
        scope=scope,
        cls=cls,
        n_files=len(records),
        n_unreadable=len(records) - len(ok),
        per_split=_top(Counter(r.split for r in records)),
        formats=_top(Counter(r.format for r in ok)),
        modes=_top(Counter(r.mode for r in ok)),
        jpeg_quality=_top(jq),
        jpeg_subsampling=_top(Counter(r.jpeg_subsampling for r in ok if r.jpeg_subsampling)),
        exif_fraction=sum(bool(r.exif) for r in ok) / nz,
        icc_fraction=sum(bool(r.icc_profile) for r in ok) / nz,
        width=_quantiles([r.width for r in ok]),
        height=_quantiles([r.height for r in ok]),
        top_sizes=_top(Counter(f"{r.width}x{r.height}" for r in ok), 5),
        file_size_median=float(np.median(sizes)) if sizes else None,
        bytes_per_pixel_median=float(np.median(bpp)) if bpp else None,
    )


# ----------------------------------------------------------------------------------------------------------
# The audit


@dataclass
class AuditResult:
    root: str
    splits: tuple[str, ...]
    threshold: float
    records: list[FileRecord]
    summaries: list[ClassSummary]
    shortcuts: list[ShortcutScore]
    combined: list[ShortcutScore]  # all metadata together (depth-3 decision tree), per scope
    skipped_splits: dict[str, str] = field(default_factory=dict)

    @property
    def generators(self) -> list[str]:
        return sorted({r.generator for r in self.records})

    @property
    def unreadable(self) -> list[FileRecord]:
        return [r for r in self.records if r.error is not None]

    @property
    def flagged(self) -> list[ShortcutScore]:
        return [s for s in self.shortcuts if s.flagged]

    def score(self, scope: str, feature: str) -> ShortcutScore:
        return next(s for s in self.shortcuts if s.scope == scope and s.feature == feature)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "splits": list(self.splits),
            "skipped_splits": self.skipped_splits,
            "threshold": self.threshold,
            "criterion": "balanced accuracy of a one-feature rule, stratified k-fold cross-validation",
            "n_files": len(self.records),
            "generators": self.generators,
            "flagged": [_score_dict(s) for s in self.flagged],
            "shortcuts": [_score_dict(s) for s in self.shortcuts],
            "combined_metadata": [_score_dict(s) for s in self.combined],
            "summaries": [asdict(s) for s in self.summaries],
            "unreadable": [
                {
                    "path": printable_path(r.path),
                    "split": r.split,
                    "generator": r.generator,
                    "class": "ai" if r.label else "nature",
                    "reason": r.error,
                }
                for r in self.unreadable
            ],
        }

    def summary_text(self) -> str:
        """A short plain-text summary (what `run_audit` prints)."""
        lines = [
            f"audit of {printable_path(self.root)} (splits: {', '.join(self.splits)}): {len(self.records)} files, "
            f"{len(self.generators)} generator(s), {len(self.unreadable)} unreadable"
        ]
        for split, why in self.skipped_splits.items():
            lines.append(f"  split '{split}' skipped: {why}")
        for s in self.summaries:
            if s.scope == "all" and len(self.generators) > 1:
                continue
            w, h = s.width.get("median"), s.height.get("median")
            lines.append(
                f"  {s.scope:>24s} {s.cls:<6s} n={s.n_files:<6d} formats={s.formats} "
                f"median size={w and int(w)}x{h and int(h)} jpeg q={_top_k(s.jpeg_quality, 3)} "
                f"exif={s.exif_fraction:.0%}"
            )
        lines.append(
            f"shortcuts: one-feature rules with {self.shortcuts[0].folds if self.shortcuts else 0}-fold "
            f"cross-validated balanced accuracy >= {self.threshold:.2f} (0.5 = chance)"
        )
        scopes = sorted({s.scope for s in self.shortcuts}, key=lambda x: (x != "all", x))
        for sc in scopes:
            hits = sorted(
                (s for s in self.flagged if s.scope == sc), key=lambda s: -(s.balanced_accuracy or 0)
            )
            if not hits:
                lines.append(f"  {sc}: none")
                continue
            rest = ", ".join(f"{s.feature} {s.balanced_accuracy:.3f}" for s in hits[1:])
            lines.append(
                f"  {sc}: {hits[0].feature} {hits[0].balanced_accuracy:.3f} "
                f"(+{hits[0].margin:.1f} pts over chance; {hits[0].rule})" + (f", {rest}" if rest else "")
            )
        lines.append(
            "all metadata together (depth-3 tree, CV balanced accuracy): "
            + ", ".join(f"{c.scope} {fmt_value(c.balanced_accuracy, '.3f', none='-')}" for c in self.combined)
        )
        return "\n".join(lines)


def _top_k(d: dict[str, int], k: int) -> str:
    items = list(d.items())[:k]
    more = "" if len(d) <= k else f" +{len(d) - k} more"
    return ("{" + ", ".join(f"{a}: {b}" for a, b in items) + "}" + more) if items else "-"


def _score_dict(s: ShortcutScore) -> dict[str, Any]:
    d = asdict(s)
    d["margin_points"] = s.margin
    return d


def _combined_score(
    scope: str, recs: list[FileRecord], threshold: float, folds: int, seed: int
) -> ShortcutScore:
    """Every property together in a depth-3 decision tree: what metadata alone can reach."""
    y = np.array([r.label for r in recs], dtype=np.int64)
    cols = []
    for feat in FEATURES:
        vals = [feat.get(r) for r in recs]
        if feat.kind == "numeric":
            cols.append([-1.0 if v is None else float(v) for v in vals])
        else:
            codes = {v: i for i, v in enumerate(sorted({str(v) for v in vals}))}
            cols.append([float(codes[str(v)]) for v in vals])
    x = np.array(cols, dtype=np.float64).T  # (N, n_features)
    p, n = int(y.sum()), int(len(y) - y.sum())

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        tree = DecisionTreeClassifier(max_depth=3, class_weight="balanced", random_state=seed)
        return tree.fit(x[train], y[train]).predict(x[test])

    k, acc, bacc = _out_of_fold(y, folds, seed, fit_predict)
    return ShortcutScore(
        scope,
        "all_metadata",
        "combined",
        p,
        n,
        acc,
        bacc,
        None,
        "depth-3 decision tree",
        k,
        bacc is not None and bacc >= threshold,
    )


def audit_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    *,
    threshold: float = DEFAULT_THRESHOLD,
    folds: int = 5,
    seed: int = 0,
    verify: bool = False,
) -> AuditResult:
    """Read every file header under `root` (GenImage layout), describe each generator/class and score every
    property as a potential shortcut, per generator and overall. Splits that are absent are skipped (noted);
    if none is found the LayoutError is raised."""
    records: list[FileRecord] = []
    skipped: dict[str, str] = {}
    found: list[str] = []
    first_error: LayoutError | None = None
    for split in splits:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class folder missing is itself reported below
                samples = discover_samples(root, split)
        except LayoutError as e:
            first_error = first_error or e
            skipped[split] = str(e).splitlines()[0]
            continue
        found.append(split)
        records.extend(read_header(s, split, verify=verify) for s in samples)
    if not found:
        assert first_error is not None
        raise first_error

    by_scope: dict[str, list[FileRecord]] = {"all": records}
    for r in records:
        by_scope.setdefault(r.generator, []).append(r)
    scopes = ["all"] + sorted(k for k in by_scope if k != "all")
    if len(scopes) == 2:  # a single generator: its scope is the whole set
        scopes = [scopes[1]]

    summaries = [
        summarise_class(sc, cls, [r for r in by_scope[sc] if r.label == lab])
        for sc in scopes
        for cls, lab in (("ai", 1), ("nature", 0))
    ]
    shortcuts, combined = [], []
    for sc in scopes:
        ok = [r for r in by_scope[sc] if r.error is None]
        for feat in FEATURES:
            sub = [r for r in ok if feat.only_format in (None, r.format)]
            shortcuts.append(
                score_feature(
                    sc,
                    feat,
                    [feat.get(r) for r in sub],
                    np.array([r.label for r in sub], dtype=np.int64),
                    threshold=threshold,
                    folds=folds,
                    seed=seed,
                )
            )
        combined.append(_combined_score(sc, ok, threshold, folds, seed))
    return AuditResult(str(root), tuple(found), threshold, records, summaries, shortcuts, combined, skipped)


# ----------------------------------------------------------------------------------------------------------
# Writing


def audit_markdown(result: AuditResult) -> str:
    r = result
    out = [
        f"# Dataset audit: `{printable_path(r.root)}`",
        "",
        f"Splits: {', '.join(r.splits)}. Files: {len(r.records)} in {len(r.generators)} generator(s); "
        f"unreadable: {len(r.unreadable)}.",
        "",
    ]
    for split, why in r.skipped_splits.items():
        out.append(f"- split `{split}` skipped: {why}")
    out += [
        "## Shortcuts",
        "",
        f"A property is flagged when a rule on it alone reaches a cross-validated balanced accuracy "
        f">= {r.threshold:.2f} at telling `ai` from `nature` (0.5 = chance). Categorical rules predict each "
        "value's majority class (class-normalised); numeric rules use the best single threshold, missing "
        "values (e.g. JPEG quality of a PNG) getting their own label.",
        "",
    ]
    if r.flagged:
        out += [
            "| scope | property | balanced acc | over chance | accuracy | rule (fitted on all files) |",
            "|---|---|---|---|---|---|",
        ]
        for s in sorted(r.flagged, key=lambda s: (s.scope != "all", s.scope, -(s.balanced_accuracy or 0))):
            out.append(
                f"| {s.scope} | **{s.feature}** | {s.balanced_accuracy:.3f} | +{s.margin:.1f} pts | "
                f"{s.accuracy:.3f} | {s.rule} |"
            )
    else:
        out.append("No property is flagged.")
    out += [
        "",
        "All metadata together (depth-3 decision tree, cross-validated):",
        "",
        "| scope | balanced acc | accuracy |",
        "|---|---|---|",
    ]
    out += [
        f"| {c.scope} | {fmt_value(c.balanced_accuracy, '.3f', none='-')} | {fmt_value(c.accuracy, '.3f', none='-')} |"
        for c in r.combined
    ]
    scopes = sorted({s.scope for s in r.shortcuts}, key=lambda x: (x != "all", x))
    out += [
        "",
        "## Balanced accuracy of every one-feature rule",
        "",
        "| property | " + " | ".join(scopes) + " |",
        "|---|" + "---|" * len(scopes),
    ]
    for feat in FEATURES:
        cells = []
        for sc in scopes:
            s = r.score(sc, feat.name)
            cell = fmt_value(s.balanced_accuracy, ".3f", none="-")
            cells.append(f"**{cell}**" if s.flagged else cell)
        out.append(f"| {feat.name} | " + " | ".join(cells) + " |")
    out += [
        "",
        "`-`: not scored (fewer than 2 files of a class; JPEG-only properties are scored among JPEG files, "
        "so they are `-` when a class has no JPEGs, which the `format` row already shows).",
    ]
    out += [
        "",
        "## Per generator and class",
        "",
        "| scope | class | files | per split | formats | modes | JPEG quality (top) | subsampling | EXIF | ICC "
        "| width p25/med/p75 | height p25/med/p75 | top sizes | median bytes | bytes/pixel |",
        "|---" * 15 + "|",
    ]
    for s in r.summaries:

        def q3(d: dict[str, float]) -> str:
            return "/".join(f"{d[k]:.0f}" for k in ("p25", "median", "p75")) if d else "-"

        out.append(
            f"| {s.scope} | {s.cls} | {s.n_files} | {_kv(s.per_split)} | {_kv(s.formats)} | {_kv(s.modes)} | "
            f"{_kv(dict(list(s.jpeg_quality.items())[:4]))} | {_kv(s.jpeg_subsampling)} | {s.exif_fraction:.0%} | "
            f"{s.icc_fraction:.0%} | {q3(s.width)} | {q3(s.height)} | {_kv(dict(list(s.top_sizes.items())[:3]))} | "
            f"{fmt_value(s.file_size_median, '.0f', none='-')} | {fmt_value(s.bytes_per_pixel_median, '.3f', none='-')} |"
        )
    out += [
        "",
        "JPEG quality is estimated from the quantisation tables (IJG scaling); `~Q` marks tables that are "
        "not IJG's (another encoder), giving the closest quality.",
        "",
        "## Unreadable files",
        "",
    ]
    if r.unreadable:
        out += ["| path | split | class | reason |", "|---|---|---|---|"]
        out += [
            f"| `{printable_path(u.path)}` | {u.split} | {'ai' if u.label else 'nature'} | {u.error} |"
            for u in r.unreadable
        ]
    else:
        out.append("None.")
    return "\n".join(out) + "\n"


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items()) or "-"


def plot_audit(result: AuditResult, path: str | os.PathLike) -> None:
    """Heatmap of one-feature balanced accuracy: properties x scopes, flagged cells outlined."""
    plt = pyplot()
    scopes = sorted({s.scope for s in result.shortcuts}, key=lambda x: (x != "all", x))
    names = [f.name for f in FEATURES]
    grid = np.full((len(names), len(scopes)), np.nan)
    for j, sc in enumerate(scopes):
        for i, nm in enumerate(names):
            v = result.score(sc, nm).balanced_accuracy
            grid[i, j] = np.nan if v is None else v
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(scopes), 0.5 * len(names) + 1.8), dpi=110)
    im = ax.imshow(grid, cmap="RdYlGn_r", vmin=0.5, vmax=1.0, aspect="auto")
    for i in range(len(names)):
        for j in range(len(scopes)):
            v = grid[i, j]
            flagged = not np.isnan(v) and v >= result.threshold
            ax.text(
                j,
                i,
                "-" if np.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                fontweight="bold" if flagged else "normal",
            )
            if flagged:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    ax.set_xticks(range(len(scopes)), scopes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title(
        f"One-feature balanced accuracy, ai vs nature (boxed: >= {result.threshold:.2f})", fontsize=9
    )
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    save_figure(fig, path)


def write_audit_report(result: AuditResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write audit.md, audit.json and audit.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "audit.md", "json": out / "audit.json", "png": out / "audit.png"}
    atomic_write_text(paths["md"], audit_markdown(result))
    write_json(paths["json"], result.to_dict())
    plot_audit(result, paths["png"])
    return paths


def run_audit(
    root: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    splits: Sequence[str] = ("train", "val"),
    *,
    threshold: float = DEFAULT_THRESHOLD,
    verify: bool = False,
) -> AuditResult:
    """Audit `root`, write the report into `out_dir` (if given) and print a summary."""
    result = audit_dataset(root, splits, threshold=threshold, verify=verify)
    print(result.summary_text())
    if out_dir is not None:
        paths = write_audit_report(result, out_dir)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return result
