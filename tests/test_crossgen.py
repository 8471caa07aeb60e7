"""Cross-generator protocols: table shapes and values, sub-run layout, skip/resume, leave-one-out configs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from synapse7.config import load_config
from synapse7.crossgen import (
    LOO_COLUMNS,
    leave_one_out_table,
    plan_crossgen,
    run_crossgen,
    train_one_test_all_table,
)
from synapse7.data import LayoutError


def _rows(accs: dict[str, float]) -> list[dict]:
    return [
        {"generator": g, "accuracy": a, "ap": a, "roc_auc": a, "real_acc": a, "fake_acc": a, "support": 10}
        for g, a in accs.items()
    ]


def test_train_one_test_all_table_values() -> None:
    per_run = {
        "a": _rows({"a": 1.0, "b": 0.6, "c": 0.5, "ALL": 0.7}),
        "b": _rows({"a": 0.7, "b": 0.9, "c": 0.8, "ALL": 0.8}),
    }
    t = train_one_test_all_table(per_run, ["a", "b", "c"])
    assert [r["train"] for r in t] == ["a", "b", "mean"]
    assert t[0]["avg"] == pytest.approx(0.7) and t[0]["avg_unseen"] == pytest.approx(0.55)
    assert t[1]["avg"] == pytest.approx(0.8) and t[1]["avg_unseen"] == pytest.approx(0.75)
    assert t[2]["a"] == pytest.approx(0.85) and t[2]["avg_unseen"] == pytest.approx(0.65)


def test_leave_one_out_table_values() -> None:
    per_run = {"a": _rows({"a": 0.5, "b": 0.9, "c": 0.7}), "b": _rows({"a": 0.8, "b": 0.6, "c": 1.0})}
    t = leave_one_out_table(per_run, ["a", "b", "c"])
    assert [r["held_out"] for r in t] == ["a", "b", "mean"] and list(t[0]) == LOO_COLUMNS
    assert t[0]["accuracy"] == 0.5 and t[0]["seen_accuracy"] == pytest.approx(0.8)
    assert t[1]["accuracy"] == 0.6 and t[1]["seen_accuracy"] == pytest.approx(0.9)
    assert t[2]["accuracy"] == pytest.approx(0.55) and t[2]["support"] == 20
    assert math.isnan(leave_one_out_table({"z": _rows({"a": 1.0})}, ["a", "z"])[0]["accuracy"])


def _cfg(data: Path, **data_overrides):
    return load_config(
        data={"root": str(data), "image_size": 32, "batch_size": 8, "num_workers": 0, **data_overrides},
        model={"backbone": "resnet18", "weights": "none", "input": "fft"},
        train={"epochs": 1, "lr": 1e-3},
    )


def test_plan_and_errors(tmp_path: Path) -> None:
    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", generators=("a", "b", "c"), n=1)
    plan = plan_crossgen(_cfg(data), tmp_path / "o", "leave-one-out")
    assert [(r.name, r.train_generators, r.test_generators) for r in plan] == [
        ("a", ("b", "c"), ("a", "b", "c")),
        ("b", ("a", "c"), ("a", "b", "c")),
        ("c", ("a", "b"), ("a", "b", "c")),
    ]
    plan = plan_crossgen(
        _cfg(data, train_generators=("b",), test_generators=("a", "b")), tmp_path / "o", "train-one-test-all"
    )
    assert [(r.name, r.train_generators, r.test_generators) for r in plan] == [("b", ("b",), ("a", "b"))]
    assert plan[0].run_dir == tmp_path / "o" / "train-one-test-all" / "b" / "run"
    with pytest.raises(LayoutError, match="zz"):
        plan_crossgen(_cfg(data, train_generators=("zz",)), tmp_path / "o", "train-one-test-all")
    with pytest.raises(ValueError, match="at least two"):
        plan_crossgen(_cfg(data, test_generators=("a",)), tmp_path / "o", "leave-one-out")
    with pytest.raises(ValueError, match="mode"):
        plan_crossgen(_cfg(data), tmp_path / "o", "one-vs-rest")


def test_train_one_test_all_end_to_end_and_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", n=6)
    out = tmp_path / "cg"
    res = run_crossgen(_cfg(data), out, mode="train-one-test-all")
    assert res.columns == ["gen_a", "gen_b"] and list(res.per_run) == ["gen_a", "gen_b"]
    assert [r["train"] for r in res.table] == ["gen_a", "gen_b", "mean"]
    assert all(0 <= r[c] <= 1 for r in res.table for c in ("gen_a", "gen_b", "avg", "avg_unseen"))
    rows = list(csv.reader(open(out / "crossgen.csv")))
    assert rows[0] == ["train", "gen_a", "gen_b", "avg", "avg_unseen"] and len(rows) == 4
    md = (out / "crossgen.md").read_text()
    assert "| train | gen_a | gen_b | avg | avg_unseen |" in md and "Average precision" in md
    for g in ("gen_a", "gen_b"):
        sub = out / "train-one-test-all" / g
        assert (sub / "run" / "best.ckpt").is_file() and (sub / "eval" / "metrics.json").is_file()
        saved = yaml.safe_load((sub / "run" / "config.yaml").read_text())
        assert saved["data"]["train_generators"] == [g] and saved["data"]["test_generators"] == [g]
        assert json.loads((sub / "eval" / "metrics.json").read_text())["n_images"] == 24  # tested on both
    # Running it again trains and evaluates nothing and gives the same table.
    import synapse7.evaluate
    import synapse7.train

    def boom(*a, **k):
        raise AssertionError("should have been skipped")

    monkeypatch.setattr(synapse7.train, "train", boom)
    monkeypatch.setattr(synapse7.evaluate, "evaluate", boom)
    again = run_crossgen(_cfg(data), out, mode="train-one-test-all")
    assert again.table == res.table
    with pytest.raises(FileExistsError, match="another config"):
        run_crossgen(_cfg(data, image_size=48), out, mode="train-one-test-all")
    with pytest.raises(FileExistsError, match="another protocol"):
        run_crossgen(_cfg(data), out, mode="leave-one-out")


def test_leave_one_out_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import make_dataset
    from synapse7.cli import main

    data = make_dataset(tmp_path / "data", n=6)
    out = tmp_path / "loo"
    rc = main(
        [
            "crossgen",
            "--data",
            str(data),
            "--out",
            str(out),
            "--mode",
            "leave-one-out",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--backbone",
            "resnet18",
            "--weights",
            "none",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out / "crossgen.csv")))
    assert [r["held_out"] for r in rows] == ["gen_a", "gen_b", "mean"] and list(rows[0]) == LOO_COLUMNS
    for held, trained in (("gen_a", "gen_b"), ("gen_b", "gen_a")):
        saved = yaml.safe_load(
            (out / "leave-one-out" / f"without_{held}" / "run" / "config.yaml").read_text()
        )
        assert saved["data"]["train_generators"] == [trained] == saved["data"]["test_generators"]
    assert "| held_out | accuracy |" in capsys.readouterr().out


def test_rerun_check_accepts_the_normalisation_train_fills_in(tmp_path: Path) -> None:
    from synapse7.config import save_config
    from synapse7.crossgen import _check_same_config
    from synapse7.model import resolve_normalization

    cfg = load_config(
        data={"root": "D", "image_size": 32}, model={"backbone": "efficientnet_lite0", "weights": "imagenet"}
    )
    save_config(resolve_normalization(cfg), tmp_path / "config.yaml")  # what train() writes
    assert resolve_normalization(cfg).data.mean != cfg.data.mean  # the case this guards
    _check_same_config(tmp_path, cfg)
    with pytest.raises(FileExistsError, match="another config"):
        _check_same_config(
            tmp_path,
            load_config(
                data={"root": "D", "image_size": 64},
                model={"backbone": "efficientnet_lite0", "weights": "imagenet"},
            ),
        )
