"""Ensembles of checkpoints (`--checkpoint A --checkpoint B`): P(AI) from the mean of the members' logits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset, save_untrained_checkpoint
from synapse7.cli import main
from synapse7.config import load_config
from synapse7.predict import Detector, EnsembleDetector


def _cfg(image_size: int = 32):  # noqa: ANN202 - a RunConfig
    return load_config(
        data={"image_size": image_size, "preprocess": "resize"},
        model={"backbone": "resnet18", "weights": "none", "input": "rgb"},
    )


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("ens")
    return [save_untrained_checkpoint(d / f"s{s}.ckpt", _cfg(), seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ensdata") / "data", generators=("gen_a",), n=4)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_ensemble_is_the_mean_of_the_members_logits(members: list[Path], data: Path) -> None:
    images = sorted(str(p) for p in data.glob("gen_a/val/*/*.png"))
    singles = [np.array([p.p_ai for p in Detector.from_checkpoint(c).predict(images)]) for c in members]
    for tta in ("none", "flip"):
        ens = Detector.from_checkpoints(members, tta=tta)
        assert isinstance(ens, EnsembleDetector)
        got = np.array([p.p_ai for p in ens.predict(images)])
        if tta == "none":
            want = 1 / (1 + np.exp(-(_logit(singles[0]) + _logit(singles[1])) / 2))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            # neither member alone: the ensemble really combines them
            assert min(np.abs(got - singles[0]).max(), np.abs(got - singles[1]).max()) > 1e-4
        else:
            flips = [
                np.array([p.p_ai for p in Detector.from_checkpoint(c, tta="flip").predict(images)])
                for c in members
            ]
            want = 1 / (1 + np.exp(-(_logit(flips[0]) + _logit(flips[1])) / 2))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert type(Detector.from_checkpoints(members[:1])) is Detector  # one checkpoint: no ensemble


def test_ensemble_refuses_mismatched_members(members: list[Path], tmp_path: Path) -> None:
    other = save_untrained_checkpoint(tmp_path / "big.ckpt", _cfg(image_size=48))
    with pytest.raises(ValueError, match=r"big\.ckpt.*image_size 32 vs 48"):
        Detector.from_checkpoints([members[0], other])
    stricter = save_untrained_checkpoint(tmp_path / "strict.ckpt", _cfg(), threshold=0.8)
    with pytest.raises(ValueError, match=r"different thresholds.*strict\.ckpt: 0\.8.*--threshold"):
        Detector.from_checkpoints([members[0], stricter])
    assert Detector.from_checkpoints([members[0], stricter], threshold=0.6).threshold == 0.6
    with pytest.raises(ValueError, match="--onnx"):
        Detector.from_checkpoints(members, onnx=tmp_path / "model.onnx")


def test_cli_evaluate_and_predict_take_several_checkpoints(
    members: list[Path], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(data), "--out", str(out), "--num-workers", "0", "--no-progress"]
    assert main([*args, "--checkpoint", str(members[0]), "--checkpoint", str(members[1])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert str(members[0]) in metrics["checkpoint"] and str(members[1]) in metrics["checkpoint"]
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = {r["path"]: float(r["p_ai"]) for r in csv.DictReader(fh)}
    ens = Detector.from_checkpoints(members)
    for p in ens.predict(sorted(rows)):
        assert rows[p.path] == pytest.approx(p.p_ai, abs=2e-6)
    capsys.readouterr()
    image = sorted(rows)[0]
    argv = ["predict", "--json", "--num-workers", "0", "--no-progress", image]
    assert main([*argv, "--checkpoint", str(members[0]), "--checkpoint", str(members[1])]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["p_ai"] == pytest.approx(rows[image], abs=2e-6)
    # a member that preprocesses differently: one clear error line naming the file, exit 1
    other = save_untrained_checkpoint(tmp_path / "big.ckpt", _cfg(image_size=48))
    assert main([*argv, "--checkpoint", str(members[0]), "--checkpoint", str(other)]) == 1
    assert "big.ckpt" in capsys.readouterr().err


def test_ensemble_bench_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from conftest import import_bench

    bench = import_bench("ensemble")
    assert (
        bench.main(
            [
                "--n",
                "4",
                "--repeats",
                "1",
                "--batch-size",
                "4",
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["detector"] for r in rows][:4] == [
        "one model",
        "one model, flip TTA",
        "ensemble of 2",
        "ensemble of 3",
    ]
    assert rows[0]["x_one_model"] == 1.0 and all(r["img_per_s"] > 0 for r in rows)
