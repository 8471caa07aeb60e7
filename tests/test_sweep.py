"""Optuna sweeps: tiny trials on generated data, resume after an interrupted trial, best.yaml accepted by train."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")
pytest.importorskip("optuna_integration")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from synapse7.config import ConfigError, load_config  # noqa: E402
from synapse7.sweep import load_search_space, run_sweep  # noqa: E402

SPACE = {
    "base": {
        "data": {"image_size": 32, "batch_size": 8, "num_workers": 0},
        "model": {"backbone": "resnet18", "weights": "none"},
        "train": {"epochs": 2, "limit_train_batches": 2, "ckpt_every_n_steps": 1},
    },
    "pruner": {"n_startup_trials": 5},
    "space": {
        "train.lr": {"low": "1e-4", "high": 1.0e-2, "log": True},
        "model.input": {"choices": ["fft", "rgb"]},
        "data.aug_flip_prob": {"low": 0.0, "high": 0.5},
    },
}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", n=8)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return data, space


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_sweep_cli_and_best_yaml_trains(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synapse7.cli import main

    data, space = setup
    out = tmp_path / "sweep"
    db = f"sqlite:///{tmp_path / 'sweep.db'}"
    args = [
        "sweep",
        "--data",
        str(data),
        "--space",
        str(space),
        "--out",
        str(out),
        "--storage",
        db,
        "--trials",
        "3",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] + summary["pruned"] == 3
    assert 0.0 <= summary["best_val_auc"] <= 1.0
    rows = _rows(out)
    assert len(rows) == 3 and len({r["train.lr"] for r in rows}) == 3  # TPE (random start) samples new values
    assert (out / "history.png").stat().st_size > 0
    assert (out / "importances.png").stat().st_size > 0
    # only the best trial keeps its checkpoints
    with_ckpt = sorted(d.name for d in (out / "trials").iterdir() if any(d.glob("*.ckpt")))
    assert with_ckpt == [f"{summary['best_trial']:04d}"]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["lr"] == pytest.approx(summary["best_params"]["train.lr"])
    assert best["model"]["input"] == summary["best_params"]["model.input"]
    # The same command again: the study already holds 3 finished trials, so nothing more runs.
    assert main(args) == 0
    assert len(_rows(out)) == 3
    # best.yaml is a config `train --config` accepts; flags still override it.
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(out / "best.yaml"),
                "--data",
                str(data),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    trained = load_config(run / "config.yaml")
    assert trained.train.lr == pytest.approx(summary["best_params"]["train.lr"])
    assert trained.model.input == summary["best_params"]["model.input"]
    assert trained.train.epochs == 1


class _InterruptAt(Callback):
    """Ctrl+C in the middle of a trial's training (after `step` optimiser steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


@pytest.mark.slow  # long in the default suite; `make test-slow` runs it
def test_interrupted_trial_resumes_from_its_checkpoint(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from optuna.trial import TrialState

    data, space = setup
    out, db = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep.db'}"
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl+C; give it back
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            run_sweep(
                data,
                out,
                space=space,
                n_trials=2,
                storage=db,
                callbacks=lambda trial: [_InterruptAt(3)] if trial.number == 1 else [],
            )
    finally:
        signal.signal(signal.SIGINT, sigint)
    study = optuna.load_study(study_name="synapse7", storage=db)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    interrupted = study.trials[1]
    assert (Path(interrupted.user_attrs["run_dir"]) / "last.ckpt").is_file()

    res = run_sweep(data, out, space=space, n_trials=2, storage=db)
    study = optuna.load_study(study_name="synapse7", storage=db)
    retry = study.trials[2]
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    assert retry.user_attrs["run_dir"] == interrupted.user_attrs["run_dir"]  # trained on in place
    assert retry.user_attrs["resumes_trial"] == 1
    # the resumed training logged to a new folder next to the first part, i.e. it continued, not restarted
    assert (Path(retry.user_attrs["run_dir"]) / "logs" / "resume_1" / "metrics.csv").is_file()
    assert res.n_complete == 2 and res.best_yaml is not None
    assert len(study.trials) == 3  # nothing ran twice
    # the restarted process drew new parameters, not the first process's again
    more = run_sweep(data, out, space=space, n_trials=3, storage=db)
    study = optuna.load_study(study_name="synapse7", storage=db)
    assert more.n_complete + more.n_pruned == 3
    assert study.trials[3].params["train.lr"] not in {t.params["train.lr"] for t in study.trials[:3]}


def test_bad_space_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"space": {"train.lrr": {"low": 0.1, "high": 1.0}}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.lrr"):
        load_search_space(bad)
    bad.write_text(yaml.safe_dump({"space": {"train.lr": {"low": 1.0, "high": 0.1}}}))
    with pytest.raises(ConfigError, match="low > high"):
        load_search_space(bad)
    bad.write_text(
        yaml.safe_dump({"space": {"train.lr": {"low": 0.1, "high": 1.0}}, "pruner": {"patience": 2}})
    )
    with pytest.raises(ConfigError, match="pruner.*patience"):
        load_search_space(bad)
    bad.write_text("space: [")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_search_space(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_search_space(tmp_path / "none.yaml")
    assert {p.name for p in load_search_space().params} >= {"train.lr", "model.input", "model.backbone"}


@pytest.mark.slow
def test_killed_sweep_resumes_after_its_heartbeat(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """kill -9 in the middle of a trial: the restarted sweep re-runs it from its last.ckpt once it is stale."""
    import os
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    import synapse7

    data, _ = setup
    space = tmp_path / "slow.yaml"
    slow = {
        **SPACE,
        "base": {**SPACE["base"], "train": {"epochs": 3, "limit_train_batches": 4, "ckpt_every_n_steps": 1}},
    }
    space.write_text(yaml.safe_dump(slow))
    out, db = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(synapse7.__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synapse7",
            "sweep",
            "--data",
            str(data),
            "--space",
            str(space),
            "--out",
            str(out),
            "--storage",
            db,
            "--trials",
            "2",
            "--heartbeat",
            "1",
        ],
        env=env,
    )
    target = out / "trials" / "0001" / "last.ckpt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert target.exists(), "trial 1 never started"
    study = optuna.load_study(study_name="synapse7", storage=db)
    assert study.trials[1].state == TrialState.RUNNING  # killed: nobody marked it
    time.sleep(2.5)  # > the grace period (2 heartbeats)
    res = run_sweep(data, out, space=space, n_trials=2, storage=db, heartbeat=1)
    study = optuna.load_study(study_name="synapse7", storage=db)
    assert study.trials[1].state == TrialState.FAIL
    retry = study.trials[2]
    assert retry.state == TrialState.COMPLETE and retry.params == study.trials[1].params
    assert retry.user_attrs["run_dir"] == study.trials[1].user_attrs["run_dir"]
    assert res.n_complete == 2
