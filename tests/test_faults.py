"""Fault injection: SIGKILL mid-epoch / mid-folder, then resume; unwritable outputs; determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import make_dataset
from synapse7.cli import main
from synapse7.config import load_config
from synapse7.train import train

KILLED = -9


def _cfg(data: Path, **train_kw: object):
    return load_config(
        data={"root": str(data), "image_size": 32, "batch_size": 4, "num_workers": 0},
        model={"backbone": "resnet18", "weights": "none", "input": "fft"},
        train={"epochs": 2, "lr": 1e-3, "ckpt_every_n_steps": 3, **train_kw},
    )


def _run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "faulty.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600
    )


def _state(ckpt: Path) -> tuple[int, dict[str, torch.Tensor]]:
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    return c["global_step"], c["state_dict"]


@pytest.mark.slow  # three trainings and a subprocess; tests/test_train.py resumes in the default suite
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", generators=("g",), n=10)  # 20 train images: 5 steps per epoch
    full = train(_cfg(data), tmp_path / "full", progress=False)
    kill_at = 6  # in epoch 2 (steps 5..9), right after the periodic checkpoint at step 6
    res = _run_script(
        tmp_path,
        f"""
        import os, signal, sys
        import lightning as L
        from test_faults import _cfg
        from synapse7.train import train
        class Kill(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == {kill_at}:
                    os.kill(os.getpid(), signal.SIGKILL)
        train(_cfg(sys.argv[1]), sys.argv[2], progress=False, callbacks=[Kill()])
    """,
        str(data),
        str(tmp_path / "killed"),
    )
    assert res.returncode == KILLED, res.stderr[-2000:]
    step, _ = _state(tmp_path / "killed" / "last.ckpt")
    assert step == kill_at
    resumed = train(_cfg(data), tmp_path / "killed", resume=True, progress=False)
    assert resumed.global_step == full.global_step == 10
    full_step, full_w = _state(tmp_path / "full" / "last.ckpt")
    res_step, res_w = _state(tmp_path / "killed" / "last.ckpt")
    assert full_step == res_step
    # Same images in the same order with the same optimiser state: the weights agree.
    for k in ("net.head.weight", "net.backbone.layer4.1.conv2.weight"):
        assert torch.allclose(full_w[k], res_w[k], atol=1e-4), k
    assert resumed.best_val_auc == pytest.approx(full.best_val_auc, abs=1e-3)


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", generators=("g",), n=6)
    a = train(_cfg(data, epochs=1), tmp_path / "a", progress=False)
    b = train(_cfg(data, epochs=1), tmp_path / "b", progress=False)
    assert a.best_val_auc == b.best_val_auc
    wa, wb = _state(a.last_ckpt)[1], _state(b.last_ckpt)[1]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_cfg(data, epochs=1, seed=7), tmp_path / "c", progress=False)
    assert not torch.equal(_state(c.last_ckpt)[1]["net.head.weight"], wa["net.head.weight"])


KILL_PREDICT = """
    import os, signal, sys
    from synapse7 import predict as P
    n = int(os.environ.get("KILL_AFTER_BATCHES", "1000000"))
    count = [0]
    def killing(orig):
        def wrapped(self, *args):
            count[0] += 1
            if count[0] > n:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, *args)
        return wrapped
    # a batch's results: `evaluate` calls predict_batch, `predict_paths` hands them out through _emit
    P.Detector.predict_batch = killing(P.Detector.predict_batch)
    P.Detector._emit = killing(P.Detector._emit)
    from synapse7.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # two subprocesses that import torch
def test_predict_killed_then_resumed_loses_nothing(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    ckpt = str(trained_run / "run" / "best.ckpt")
    folder = trained_run / "data"
    out = tmp_path / "preds.jsonl"
    args = [
        "predict",
        "--checkpoint",
        ckpt,
        str(folder),
        "--json",
        "--output",
        str(out),
        "--batch-size",
        "8",
        "--num-workers",
        "0",
    ]
    monkeypatch.setenv("KILL_AFTER_BATCHES", "3")
    res = _run_script(tmp_path, KILL_PREDICT, *args)
    assert res.returncode == KILLED, res.stderr[-2000:]
    assert not out.exists()  # never half-written
    partial = out.with_name(out.name + ".partial").read_text().splitlines()
    assert len(partial) == 24
    monkeypatch.delenv("KILL_AFTER_BATCHES")
    res = _run_script(tmp_path, KILL_PREDICT, *args, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming: 24 input(s) already done, 72 new" in res.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    all_images = sorted(str(p) for p in folder.rglob("*.png"))
    assert sorted(r["path"] for r in rows) == all_images  # each image exactly once
    ref = tmp_path / "ref.jsonl"  # an uninterrupted run, in this process
    assert main([*args[:-6], "--json", "--output", str(ref), "--num-workers", "0"]) == 0
    ref_p = {r["path"]: r["p_ai"] for r in map(json.loads, ref.read_text().splitlines())}
    assert all(abs(r["p_ai"] - ref_p[r["path"]]) < 1e-5 for r in rows)


@pytest.mark.slow  # a subprocess that imports torch
def test_evaluate_killed_leaves_no_half_written_reports(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "eval"
    monkeypatch.setenv("KILL_AFTER_BATCHES", "2")
    res = _run_script(
        tmp_path,
        KILL_PREDICT,
        "evaluate",
        "--data",
        str(trained_run / "data"),
        "--checkpoint",
        str(trained_run / "run" / "best.ckpt"),
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--num-workers",
        "0",
    )
    assert res.returncode == KILLED
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == []  # predictions.csv is streamed to a hidden temporary file, reports come at the end


def test_unwritable_out_fails_before_work(trained_run: Path, tmp_path: Path, capsys) -> None:
    from synapse7.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(
        [
            "evaluate",
            "--data",
            str(trained_run / "data"),
            "--checkpoint",
            str(trained_run / "run" / "best.ckpt"),
            "--out",
            str(blocker / "eval"),
        ]
    )
    assert rc == 1
    assert "cannot create output directory" in capsys.readouterr().err


def test_full_disk_is_reported_before_work(tmp_path: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from synapse7.io import ensure_writable_dir

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match="MiB free"):
        ensure_writable_dir(tmp_path / "out")
