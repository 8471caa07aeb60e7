from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synapse7.reports import TABLE_COLUMNS, binary_metrics, compute_eval_report, write_eval_report

Y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
P = np.array([0.1, 0.4, 0.6, 0.9, 0.8, 0.3, 0.2, 0.7])
G = ["a", "a", "a", "a", "b", "b", "b", "b"]


def test_binary_metrics_values() -> None:
    m = binary_metrics(Y, P)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["real_acc"] == pytest.approx(3 / 4) and m["fake_acc"] == pytest.approx(3 / 4)
    assert m["roc_auc"] == pytest.approx(14 / 16)
    assert m["support"] == 8 and m["n_real"] == 4 and m["n_fake"] == 4
    assert binary_metrics(Y, P, threshold=0.95)["fake_acc"] == 0.0


def test_one_class_gives_nan_auc() -> None:
    m = binary_metrics(np.array([1, 1]), np.array([0.9, 0.2]))
    assert np.isnan(m["roc_auc"]) and m["fake_acc"] == 0.5 and np.isnan(m["real_acc"])


def test_report_files_exact_format(tmp_path: Path) -> None:
    rep = compute_eval_report(Y, P, G)
    write_eval_report(rep, tmp_path, {"checkpoint": "x.ckpt"})
    text = (tmp_path / "classification_report.txt").read_text()
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    assert lines[0] == ["precision", "recall", "f1-score", "support"]
    assert lines[1][0] == "REAL" and lines[2][0] == "AI"
    assert lines[1][1:] == ["0.7500", "0.7500", "0.7500", "4"]
    assert lines[3][0] == "accuracy" and lines[3][1:] == ["0.7500", "8"]
    rows = list(csv.reader(open(tmp_path / "per_generator.csv")))
    assert rows[0] == TABLE_COLUMNS
    assert [r[0] for r in rows[1:]] == ["a", "b", "ALL"]
    assert rows[1][1] == "0.7500"  # generator a: 3 of 4 right
    md = (tmp_path / "per_generator.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(TABLE_COLUMNS) + " |" and md[2].startswith("| a | 0.7500")
    per = (tmp_path / "per_generator_reports.txt").read_text()
    assert "=== a (n=4) ===" in per and "=== b (n=4) ===" in per and per.count("REAL") == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for k in ("accuracy", "ap", "roc_auc", "real_acc", "fake_acc", "n_images", "confusion_matrix"):
        assert k in metrics
    assert metrics["n_images"] == 8 and metrics["confusion_matrix"] == [[3, 1], [1, 3]]
    with Image.open(tmp_path / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    from synapse7.reports import write_json

    write_json(tmp_path / "m.json", {"a": float("nan"), 1: [math.inf, -math.inf, 0.5], "t": (1, "x")})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": None, "1": [None, None, 0.5], "t": [1, "x"]}
    assert "NaN" not in text and "Infinity" not in text


def test_fmt_value_cells() -> None:
    from synapse7.reports import fmt_value

    assert fmt_value(0.97451) == "0.9745"
    assert fmt_value(float("nan")) == "nan"
    assert fmt_value(None) == "" and fmt_value(None, none="-") == "-"
    assert fmt_value(12) == "12" and fmt_value(0.5, ".1f") == "0.5" and fmt_value("g") == "g"
