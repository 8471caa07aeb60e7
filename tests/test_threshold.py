"""Threshold calibration round trips: calibrate -> checkpoint -> Detector/predict/evaluate use it; flags override."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synapse7.calibration import calibrate_checkpoint, parse_calibration_spec, write_threshold
from synapse7.cli import build_parser, config_from_args, main
from synapse7.evaluate import evaluate
from synapse7.predict import Detector
from synapse7.reports import expected_calibration_error


def _ckpt(run: Path) -> Path:
    return run / "run" / "best.ckpt"


def _meta(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["synapse7"]


def test_parse_calibration_spec() -> None:
    assert parse_calibration_spec("accuracy") == ("accuracy", 0.05)
    assert parse_calibration_spec("fpr") == ("fpr", 0.05)
    assert parse_calibration_spec(" FPR:0.01 ") == ("fpr", 0.01)
    for bad in ("fpr:2", "fpr:x", "accuracy:0.1", "auc", ""):
        with pytest.raises(ValueError, match="bad calibration"):
            parse_calibration_spec(bad)


def test_calibrate_stores_threshold_and_detector_uses_it(trained_run: Path, tmp_path: Path) -> None:
    src, dst = _ckpt(trained_run), tmp_path / "cal.ckpt"
    before = src.read_bytes()
    info = calibrate_checkpoint(src, trained_run / "data", method="accuracy", out=dst, num_workers=0)
    assert src.read_bytes() == before  # --out leaves the original alone
    meta = _meta(dst)
    assert meta["threshold"] == info["threshold"]
    cal = meta["calibration"]
    assert (cal["method"], cal["split"], cal["n"], cal["generators"]) == (
        "accuracy",
        "val",
        48,
        ["gen_a", "gen_b"],
    )
    assert 0.0 <= cal["ece"] <= 1.0 and cal["accuracy"] >= cal["previous_accuracy"]
    assert Detector.from_checkpoint(dst).threshold == info["threshold"]
    assert Detector.from_checkpoint(dst, threshold=0.25).threshold == 0.25  # an explicit threshold wins
    # evaluate() at the stored threshold achieves exactly what calibration reported on the same split.
    res = evaluate(dst, trained_run / "data", num_workers=0, quiet=True)
    assert res.metrics["threshold"] == info["threshold"] and res.metrics["accuracy"] == pytest.approx(
        cal["accuracy"]
    )
    assert not list(tmp_path.glob(".*tmp*"))


def test_fpr_target_zero_means_no_real_image_flagged(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "fpr.ckpt"
    rc = main(
        [
            "calibrate",
            "--checkpoint",
            str(_ckpt(trained_run)),
            "--data",
            str(trained_run / "data"),
            "--method",
            "fpr",
            "--target-fpr",
            "0",
            "--out",
            str(dst),
            "--num-workers",
            "0",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["method"] == "fpr" and printed["fpr"] == 0.0 and printed["checkpoint"] == str(dst)
    res = evaluate(dst, trained_run / "data", num_workers=0, quiet=True)
    assert res.metrics["real_acc"] == 1.0


def test_predict_uses_stored_threshold_and_flag_overrides(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, data = _ckpt(trained_run), trained_run / "data"
    folder = data / "gen_a" / "val"
    assert main(["predict", "--checkpoint", str(src), str(folder), "--json", "--num-workers", "0"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    p = np.sort(np.array([r["p_ai"] for r in rows]))
    default_ai = sum(r["label"] == "AI" for r in rows)
    # A threshold between two scores that calls a different number of images AI than the stored one does.
    k = 3 if default_ai != len(p) - 3 else 5
    thr = float((p[-k - 1] + p[-k]) / 2)
    assert p[-k - 1] < thr < p[-k]
    dst = write_threshold(src, thr, {"method": "manual"}, tmp_path / "t.ckpt")
    assert main(["predict", "--checkpoint", str(dst), str(folder), "--json", "--num-workers", "0"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert sum(r["label"] == "AI" for r in rows) == k != default_ai
    assert all((r["label"] == "AI") == (r["p_ai"] >= thr) for r in rows)
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(dst),
                str(folder),
                "--json",
                "--threshold",
                "1.0",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert all(json.loads(x)["label"] == "REAL" for x in capsys.readouterr().out.strip().splitlines())


def test_evaluate_reports_ece(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    evaluate(_ckpt(trained_run), trained_run / "data", out_dir=out, num_workers=0, quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_ai"]) for r in rows])
    assert metrics["ece"] == pytest.approx(expected_calibration_error(y, p), abs=1e-4)


def test_aug_and_calibrate_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "D",
            "--out",
            "O",
            "--aug-blur-prob",
            "0.5",
            "--aug-blur-sigma",
            "0,2",
            "--aug-jpeg-prob",
            "0.25",
            "--aug-jpeg-quality",
            "40,95",
            "--aug-resize-prob",
            "0.1",
            "--aug-resize-scale",
            "0.5,1",
        ]
    )
    d = config_from_args(args).data
    assert (d.aug_blur_prob, d.aug_blur_sigma, d.aug_jpeg_prob, d.aug_jpeg_quality) == (
        0.5,
        (0.0, 2.0),
        0.25,
        (40, 95),
    )
    assert (d.aug_resize_prob, d.aug_resize_scale) == (0.1, (0.5, 1.0))
    d0 = config_from_args(build_parser().parse_args(["train", "--data", "D", "--out", "O"])).data
    assert (d0.aug_jpeg_prob, d0.aug_jpeg_quality) == (0.0, (30, 100))
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "D", "--out", "O", "--aug-jpeg-quality", "90,30"])
    assert e.value.code == 2 and "LO <= HI" in capsys.readouterr().err
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--calibrate", "fpr:7"])
    assert rc == 1 and "bad calibration" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # rejected before any training


def test_train_calibrate_end_to_end(tmp_path: Path) -> None:
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", generators=("g",), n=6)
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
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
            "--calibrate",
            "fpr:0.2",
            "--aug-jpeg-prob",
            "0.5",
        ]
    )
    assert rc == 0
    meta = _meta(tmp_path / "run" / "best.ckpt")
    assert meta["calibration"]["method"] == "fpr" and meta["calibration"]["target_fpr"] == 0.2
    assert meta["calibration"]["fpr"] <= 0.2 and meta["threshold"] == meta["calibration"]["threshold"]
    assert Detector.from_checkpoint(tmp_path / "run" / "best.ckpt").threshold == meta["threshold"]
