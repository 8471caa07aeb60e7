"""Reports people read (issue 13 items 7-8): calibrated P(AI), reliability diagram, ROC/PR curves, score
histograms, training curves, the robustness plot, and progress bars that stay quiet when piped."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from synapse7.calibration import apply_scaling, calibrate_checkpoint, fit_temperature
from synapse7.cli import main
from synapse7.predict import Detector, progress_bar
from synapse7.reports import read_training_logs, reliability_bins


def _ckpt(run: Path) -> Path:
    return run / "run" / "best.ckpt"


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# ---- 7. calibration -----------------------------------------------------------------------------------------


def test_fit_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at logit z
    p_over = 1 / (1 + np.exp(-3 * z))  # the same scores, 3x overconfident
    assert fit_temperature(y, p_over, 0.5) == pytest.approx(3.0, rel=0.08)
    # about a threshold: logit(t) maps to 0.5 whatever the temperature
    t = 0.2
    assert apply_scaling(np.array([t]), 2.5, math.log(t / (1 - t)))[0] == pytest.approx(0.5)


def test_reliability_bins() -> None:
    b = reliability_bins([0, 1, 1, 0], [0.05, 0.06, 0.95, 0.96], n_bins=10)
    assert b["count"][0] == 2 and b["count"][9] == 2 and np.isnan(b["mean_p"][5])
    assert b["frac_ai"][0] == 0.5 and b["mean_p"][9] == pytest.approx(0.955)


def test_calibrated_p_ai_agrees_with_the_label(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst, data = _ckpt(trained_run), tmp_path / "cal.ckpt", trained_run / "data"
    assert (
        main(
            [
                "calibrate",
                "--checkpoint",
                str(src),
                "--data",
                str(data),
                "--out",
                str(dst),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    png = tmp_path / "cal_reliability.png"
    assert printed["reliability_png"] == str(png) and _png_size(png)[0] > 300
    meta = torch.load(dst, map_location="cpu", weights_only=False)["synapse7"]
    assert meta["threshold"] == 0.5 and meta["scaling"]["temperature"] > 0
    assert meta["scaling"]["offset"] == pytest.approx(
        math.log(printed["raw_threshold"] / (1 - printed["raw_threshold"]))
    )

    raw, cal = Detector.from_checkpoint(src, device="cpu"), Detector.from_checkpoint(dst, device="cpu")
    assert cal.threshold == 0.5 and cal.raw_threshold == pytest.approx(printed["raw_threshold"])
    files = sorted(str(f) for f in (data / "gen_a" / "val").rglob("*.png"))
    p_raw = np.array([p.p_ai for p in raw.predict(files)])
    got = cal.predict(files)
    p_cal = np.array([p.p_ai for p in got])
    # the reported P(AI) is the scaled network score, and the label is AI exactly when P(AI) >= 0.5
    np.testing.assert_allclose(p_cal, apply_scaling(p_raw, **meta["scaling"]), atol=1e-5)
    assert all((p.label == "AI") == (p.p_ai >= 0.5) for p in got)
    assert [p.label == "AI" for p in got] == list(p_raw >= printed["raw_threshold"])

    # calibrating the calibrated checkpoint again scores the network's own P(AI): the same cut comes out
    again = calibrate_checkpoint(dst, data, out=tmp_path / "cal2.ckpt", num_workers=0)
    assert again["raw_threshold"] == pytest.approx(printed["raw_threshold"], abs=1e-6)
    assert again["previous_threshold"] == pytest.approx(printed["raw_threshold"], abs=1e-6)


# ---- 8. evaluation pictures, --perturb, training curves, robustness plot ------------------------------------------


def test_evaluate_writes_curves_histogram_and_reliability(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert (
        main(
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
                "--no-progress",
            ]
        )
        == 0
    )
    for name in ("roc_pr.png", "score_histogram.png", "reliability.png", "confusion_matrix.png"):
        w, h = _png_size(out / name)
        assert w > 300 and h > 300, name


def test_evaluate_perturb_also_writes_the_normal_reports(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rob"
    assert (
        main(
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
                "jpeg:50,blur:1",
            ]
        )
        == 0
    )
    for name in (
        "metrics.json",
        "classification_report.txt",
        "per_generator.csv",
        "predictions.csv",
        "roc_pr.png",
        "robustness.csv",
        "robustness.png",
    ):
        assert (out / name).is_file(), name
    rob = json.loads((out / "robustness.json").read_text())
    assert rob["perturbations"] == ["jpeg:50", "blur:1", "none"]  # the unperturbed point is always measured


def test_robustness_plot_shows_the_unperturbed_point_on_every_panel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import synapse7.robustness as rb

    rows = [
        {"perturbation": s, "family": f, "strength": v, "generator": "ALL", "accuracy": a}
        for s, f, v, a in (
            ("jpeg:90", "jpeg", 90, 0.8),
            ("jpeg:50", "jpeg", 50, 0.6),
            ("resize:0.5", "resize", 0.5, 0.7),
            ("blur:2", "blur", 2, 0.55),
            ("none", "none", 0.0, 0.9),
        )
    ]
    figs: list[Any] = []
    monkeypatch.setattr(rb, "save_figure", lambda fig, path: figs.append(fig))
    rb.save_robustness_png(
        rb.RobustnessResult(rows, [r["perturbation"] for r in rows], None), tmp_path / "r.png"
    )
    (fig,) = figs
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["jpeg", "resize", "blur"]
    for ax in axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert not [x for x in labels if x.startswith("_")], f"unlabelled line on {ax.get_title()}"
        star = [line for line in ax.get_lines() if line.get_label().startswith("unperturbed:")]
        assert len(star) == 1 and list(star[0].get_ydata()) == [0.9], ax.get_title()
        assert ax.get_legend() is not None


def test_training_writes_a_curve_plot(trained_run: Path) -> None:
    run = trained_run / "run"
    w, h = _png_size(run / "training_curves.png")
    assert w > 300 and h > 200
    rows = read_training_logs(run / "logs")
    assert any("val_auc" in r for r in rows) and any("train_loss_step" in r for r in rows)


def test_training_logs_of_resumed_runs_are_read_in_order(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for sub, step in (("", 1), ("resume_2", 3), ("resume_1", 2)):
        (logs / sub).mkdir(parents=True, exist_ok=True)
        (logs / sub / "metrics.csv").write_text(f"epoch,step,val_auc\n0,{step},0.5\n")
    assert [r["step"] for r in read_training_logs(logs)] == [1.0, 2.0, 3.0]


# ---- 8. progress ------------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_with_no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(10, "x").disable  # piped
    monkeypatch.setattr("sys.stderr", _Tty())
    assert not progress_bar(10, "x").disable  # a terminal
    assert progress_bar(10, "x", enabled=False).disable  # --no-progress


def test_piped_predict_prints_rows_only(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = trained_run / "data" / "gen_a" / "val" / "ai"
    assert main(["predict", "--checkpoint", str(_ckpt(trained_run)), str(folder), "--num-workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 12 and "predict" not in err and "\r" not in err
