"""Dataset audit: JPEG quality estimation, header records, shortcut detection, reports and CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synapse7.audit import (
    STANDARD_LUMA,
    audit_dataset,
    estimate_jpeg_quality,
    ijg_table,
    run_audit,
    score_feature,
    write_audit_report,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _quant(img: Image.Image, **save_kw) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **save_kw)
    buf.seek(0)
    return Image.open(buf).quantization


# ---- JPEG quality ------------------------------------------------------------------------------------------


def test_jpeg_quality_recovered_exactly_for_every_pil_quality() -> None:
    img = _noise(16, 16, 0)
    for q in range(1, 101):
        est = estimate_jpeg_quality(_quant(img, quality=q))
        assert est is not None and est.quality == q and est.exact, q


@pytest.mark.parametrize("q", [10, 50, 75, 90, 96])
def test_jpeg_quality_other_layouts(q: int) -> None:
    gray = estimate_jpeg_quality(_quant(_noise(16, 16, 1).convert("L"), quality=q))  # one table only
    assert gray is not None and gray.quality == q and gray.exact
    full = estimate_jpeg_quality(_quant(_noise(16, 16, 1), quality=q, subsampling=0))  # 4:4:4
    assert full is not None and full.quality == q


def test_jpeg_quality_custom_tables_are_not_exact() -> None:
    luma = ijg_table(STANDARD_LUMA, 80).copy()
    luma[10] += 3  # another encoder's tweak
    est = estimate_jpeg_quality(_quant(_noise(16, 16, 2), qtables=[luma.tolist()]))
    assert est is not None and not est.exact and abs(est.quality - 80) <= 1


def test_ijg_table_matches_libjpeg_reference_points() -> None:
    np.testing.assert_array_equal(ijg_table(STANDARD_LUMA, 50), STANDARD_LUMA)
    assert (ijg_table(STANDARD_LUMA, 100) == 1).all()
    assert ijg_table(STANDARD_LUMA, 1).max() == 255


# ---- one-feature rules -------------------------------------------------------------------------------------


def test_score_feature_numeric_and_categorical() -> None:
    y = np.array([0] * 10 + [1] * 10)
    s = score_feature("all", "width", list(range(10)) + list(range(100, 110)), y)
    assert s.balanced_accuracy == 1.0 and s.flagged and "width > 54.5" in s.rule
    # Missing values (e.g. JPEG quality of a PNG) get their own label.
    s = score_feature("all", "jpeg_quality", [None] * 10 + [90] * 10, y)
    assert s.balanced_accuracy == 1.0 and "missing -> nature" in s.rule
    s = score_feature("all", "format", ["JPEG"] * 10 + ["PNG"] * 10, y)
    assert s.balanced_accuracy == 1.0 and s.rule == "ai if format in {PNG}"
    s = score_feature("all", "format", ["JPEG", "PNG"] * 10, y)  # same mix in both classes
    assert s.balanced_accuracy <= 0.5 and s.fit_balanced_accuracy == 0.5 and not s.flagged
    # Imbalanced classes: balanced accuracy, not plain accuracy, decides.
    y2 = np.array([0] * 30 + [1] * 10)
    s = score_feature("all", "format", ["JPEG"] * 40, y2)
    assert s.accuracy == 0.75 and s.balanced_accuracy == 0.5 and not s.flagged


# ---- audits of planted datasets ----------------------------------------------------------------------------


def _make_dataset(
    root: Path,
    ai: list[tuple[str, int]],
    nature: list[tuple[str, int]],
    *,
    generators=("gen_a", "gen_b"),
    per_class: int = 12,
) -> Path:
    """ai/nature: cycles of (format, side) per file, e.g. [("PNG", 64)] or [("JPEG", 48)]."""
    seed = 0
    for gen in generators:
        for split, n in (("train", per_class), ("val", per_class // 2)):
            for cls, spec in (("ai", ai), ("nature", nature)):
                d = root / gen / split / cls
                d.mkdir(parents=True)
                for i in range(n):
                    fmt, side = spec[i % len(spec)]
                    img = _noise(side, side, seed)
                    seed += 1
                    if fmt == "PNG":
                        img.save(d / f"{i}.png", format="PNG")
                    else:
                        img.save(d / f"{i}.jpg", format="JPEG", quality=90)
    return root


def test_audit_flags_planted_format_and_size_shortcut(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "d", ai=[("PNG", 64)], nature=[("JPEG", 48)])
    res = audit_dataset(root)
    assert len(res.records) == 2 * 2 * 18 and not res.unreadable
    for scope in ("all", "gen_a", "gen_b"):
        for feat in ("format", "width", "height", "pixels"):
            s = res.score(scope, feat)
            assert s.flagged and s.balanced_accuracy == 1.0, (scope, feat)
        for feat in ("mode", "exif", "icc_profile", "aspect_ratio"):
            assert not res.score(scope, feat).flagged, (scope, feat)
    assert res.score("all", "format").rule == "ai if format in {PNG}"
    assert res.score("all", "width").rule == "ai if width > 56"
    nature = next(s for s in res.summaries if s.scope == "all" and s.cls == "nature")
    assert (
        nature.formats == {"JPEG": 36}
        and nature.jpeg_quality == {"90": 36}
        and nature.top_sizes == {"48x48": 36}
    )


def test_audit_does_not_flag_shared_distributions(tmp_path: Path) -> None:
    mix = [("PNG", 48), ("JPEG", 64), ("JPEG", 48), ("PNG", 64)]
    root = _make_dataset(tmp_path / "d", ai=mix, nature=mix, per_class=16)
    res = audit_dataset(root)
    assert res.flagged == [], [(s.scope, s.feature, s.balanced_accuracy) for s in res.flagged]
    assert all(c.balanced_accuracy < 0.75 for c in res.combined)
    assert res.score("all", "jpeg_quality").balanced_accuracy is not None  # both classes have JPEGs


def test_audit_lists_unreadable_files_without_crashing(tmp_path: Path) -> None:
    root = _make_dataset(
        tmp_path / "d", ai=[("PNG", 32)], nature=[("JPEG", 32)], generators=("g",), per_class=4
    )
    bad = root / "g" / "train" / "ai"
    (bad / "empty.png").write_bytes(b"")
    (bad / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    good = (root / "g" / "train" / "nature" / "0.jpg").read_bytes()
    (root / "g" / "train" / "nature" / "cut.jpg").write_bytes(good[: len(good) // 2])  # header intact
    res = audit_dataset(root)
    reasons = {Path(r.path).name: r.error for r in res.unreadable}
    assert reasons.keys() == {"empty.png", "garbage.jpg"}
    assert reasons["empty.png"] == "zero-byte file" and "not a recognised image" in reasons["garbage.jpg"]
    assert res.score("g", "format").flagged  # the rest is still audited
    verified = audit_dataset(root, verify=True)  # full decode also catches the truncated pixel data
    assert {Path(r.path).name for r in verified.unreadable} == {"empty.png", "garbage.jpg", "cut.jpg"}


def test_audit_skips_missing_split_and_errors_when_none(tmp_path: Path) -> None:
    root = _make_dataset(
        tmp_path / "d", ai=[("PNG", 32)], nature=[("JPEG", 32)], generators=("g",), per_class=4
    )
    res = audit_dataset(root, splits=("train", "test"))
    assert res.splits == ("train",) and "test" in res.skipped_splits
    from synapse7.data import LayoutError

    with pytest.raises(LayoutError):
        audit_dataset(root, splits=("test",))


def test_write_report_and_run_audit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _make_dataset(tmp_path / "d", ai=[("PNG", 64)], nature=[("JPEG", 48)])
    res = run_audit(root, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "format 1.000" in printed and "gen_a" in printed
    paths = write_audit_report(res, tmp_path / "out2")
    data = json.loads(paths["json"].read_text())
    assert {(f["scope"], f["feature"]) for f in data["flagged"]} >= {("all", "format"), ("gen_b", "width")}
    assert data["n_files"] == len(res.records) and data["unreadable"] == []
    md = paths["md"].read_text()
    assert "**format**" in md and "| gen_a | ai |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["audit.json", "audit.md", "audit.png"]


def test_cli_audit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from synapse7.cli import main

    root = _make_dataset(
        tmp_path / "d", ai=[("PNG", 64)], nature=[("JPEG", 48)], generators=("g",), per_class=6
    )
    assert main(["audit", str(root), "--out", str(tmp_path / "o"), "--split", "train"]) == 0
    assert "format 1.000" in capsys.readouterr().out
    assert (tmp_path / "o" / "audit.json").is_file()
    assert main(["audit", str(tmp_path / "missing")]) == 1


# ---- real data ---------------------------------------------------------------------------------------------


@pytest.mark.shared
def test_audit_genimage_mini_detects_format_and_size_shortcut() -> None:
    root = SHARED / "genimage-mini"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    res = audit_dataset(root)
    assert res.score("all", "format").flagged and res.score("all", "format").rule == "ai if format in {PNG}"
    assert any(res.score("all", f).flagged for f in ("width", "height", "pixels"))
    for gen in res.generators:
        assert res.score(gen, "format").flagged


@pytest.mark.shared
def test_audit_cifake_has_no_shortcut() -> None:
    root = SHARED / "cifake"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    res = audit_dataset(root, splits=("val",))
    assert res.flagged == [] and not res.unreadable
