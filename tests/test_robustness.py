"""Evaluation under perturbations: one row per (perturbation, generator), the clean row equals evaluate()."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from synapse7.cli import main
from synapse7.evaluate import evaluate
from synapse7.perturb import GaussianBlur, Identity, JpegCompress, Rescale
from synapse7.robustness import ROBUSTNESS_COLUMNS, evaluate_robustness, write_robustness


def _ckpt(run: Path) -> Path:
    return run / "run" / "best.ckpt"


def test_rows_per_perturbation_and_generator_and_clean_row_equals_evaluate(trained_run: Path) -> None:
    data = trained_run / "data"
    res = evaluate_robustness(_ckpt(trained_run), data, "jpeg:30,resize:0.5,blur:3,none", num_workers=0)
    assert res.perturbations == ["jpeg:30", "resize:0.5", "blur:3", "none"]
    keys = [(r["perturbation"], r["generator"]) for r in res.rows]
    assert keys == [(p, g) for p in res.perturbations for g in ("gen_a", "gen_b", "ALL")]
    assert [r["family"] for r in res.overall()] == ["jpeg", "resize", "blur", "none"]
    assert [r["strength"] for r in res.overall()] == [30.0, 0.5, 3.0, 0.0]
    plain = evaluate(_ckpt(trained_run), data, num_workers=0, quiet=True)
    clean = [
        {k: v for k, v in r.items() if k not in ("perturbation", "family", "strength")}
        for r in res.rows
        if r["perturbation"] == "none"
    ]
    assert clean == plain.per_generator
    assert res.accuracy("none") == plain.metrics["accuracy"]
    # The perturbations reach the images: 32 px textures blurred with sigma 3 or halved are not the same images.
    aps = {r["perturbation"]: r["ap"] for r in res.overall()}
    assert aps["blur:3"] != aps["none"] or aps["resize:0.5"] != aps["none"]


def test_one_detector_and_the_ops_in_order(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synapse7.robustness as rob

    calls: list[dict] = []
    real = rob.evaluate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(rob, "evaluate", spy)
    res = evaluate_robustness(
        _ckpt(trained_run),
        trained_run / "data",
        ["jpeg:65", "none", "blur:1", "resize:2"],
        num_workers=0,
        align="jpeg:96",
        generators=["gen_b"],
    )
    assert [c["pre_ops"] for c in calls] == [[JpegCompress(65)], [], [GaussianBlur(1.0)], [Rescale(2.0)]]
    assert len({id(c["detector"]) for c in calls}) == 1 and calls[0]["detector"] is not None
    assert all(c["align"] == "jpeg:96" and c["generators"] == ["gen_b"] for c in calls)
    assert res.align == "jpeg:96"
    assert {r["generator"] for r in res.rows} == {"gen_b", "ALL"}
    assert Identity().spec == "none"


def test_bad_perturbation_is_rejected_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jpeg:Q"):
        evaluate_robustness(tmp_path / "missing.ckpt", tmp_path, "jpeg:65,sharpen:2")


def test_cli_writes_table_and_plot(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rob"
    rc = main(
        [
            "evaluate",
            "--data",
            str(trained_run / "data"),
            "--checkpoint",
            str(_ckpt(trained_run)),
            "--out",
            str(out),
            "--num-workers",
            "0",
            "--perturb",
            "jpeg:65,resize:0.5,blur:1,none",
            "--align",
            "jpeg:96",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out / "robustness.csv")))
    assert list(rows[0]) == ROBUSTNESS_COLUMNS and len(rows) == 4 * 3
    assert {r["perturbation"] for r in rows} == {"jpeg:65", "resize:0.5", "blur:1", "none"}
    payload = json.loads((out / "robustness.json").read_text())
    assert payload["align"] == "jpeg:96" and len(payload["rows"]) == 12
    md = (out / "robustness.md").read_text()
    assert "| perturbation | gen_a | gen_b | ALL |" in md and "alignment jpeg:96" in md
    with Image.open(out / "robustness.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list(out.glob(".*tmp*"))
    assert "| jpeg:65 |" in capsys.readouterr().out


def test_write_is_separate_from_compute(trained_run: Path, tmp_path: Path) -> None:
    res = evaluate_robustness(_ckpt(trained_run), trained_run / "data", "none", num_workers=0)
    assert not list(tmp_path.iterdir())  # computing wrote nothing
    write_robustness(res, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "robustness.csv",
        "robustness.json",
        "robustness.md",
        "robustness.png",
    ]
