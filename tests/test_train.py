from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from synapse7.config import load_config
from synapse7.predict import Detector
from synapse7.train import train


def _losses(run: Path) -> list[float]:
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    return [float(r["train_loss_epoch"]) for r in rows if r.get("train_loss_epoch")]  # one mean per epoch


def test_training_writes_checkpoints_config_and_epoch_losses(trained_run: Path) -> None:
    run = trained_run / "run"
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    losses = _losses(run)
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses), losses  # one finite mean per epoch
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["backbone"] == "resnet18" and cfg["data"]["image_size"] == 32
    ckpt = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"] == cfg  # resolved config stored inside the checkpoint too
    assert "synapse7" in ckpt and 0 < ckpt["synapse7"]["threshold"] < 1


def test_short_run_lowers_loss_and_learns_easy_task(tmp_path: Path) -> None:
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", generators=("g",), n=24)
    cfg = load_config(
        data={"root": str(data), "image_size": 32, "batch_size": 8, "num_workers": 0},
        model={"backbone": "resnet18", "weights": "none", "input": "fft"},
        train={"epochs": 3, "lr": 1e-3},
    )
    res = train(cfg, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) >= 2
    first, last = losses[0], losses[-1]
    assert last < first * 0.7, losses
    assert res.best_val_auc is not None and res.best_val_auc > 0.9
    det = Detector.from_checkpoint(res.best_ckpt)
    ai = sorted((data / "g" / "val" / "ai").iterdir())[:4]
    real = sorted((data / "g" / "val" / "nature").iterdir())[:4]
    preds = det.predict([str(p) for p in ai + real])
    assert [p.label for p in preds].count("AI") >= 6 or sum(p.p_ai for p in preds[:4]) > sum(
        p.p_ai for p in preds[4:]
    )


def test_existing_run_requires_resume(trained_run: Path) -> None:
    cfg = load_config(
        data={"root": str(trained_run / "data"), "image_size": 32, "num_workers": 0},
        model={"weights": "none", "backbone": "resnet18"},
    )
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, trained_run / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(cfg, trained_run / "fresh", resume=True, progress=False)


def test_resume_continues_to_more_epochs(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run / "run", run)
    (run / "best.ckpt").unlink()  # as if interrupted before a best checkpoint existed
    cfg = load_config(
        data={"root": str(trained_run / "data"), "image_size": 32, "batch_size": 8, "num_workers": 0},
        model={"backbone": "resnet18", "weights": "none", "input": "fft"},
        train={"epochs": 3, "lr": 1e-3, "ckpt_every_n_steps": 2},
    )
    before = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    res = train(cfg, run, resume=True, progress=False)
    assert res.global_step > before
    assert res.epochs_run == 3
