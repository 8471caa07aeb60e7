"""Multi-process DDP on the CPU (gloo): the same code path multi-GPU and multi-node runs use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_dataset


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", generators=("g",), n=16)  # 32 train images
    cmd = [
        sys.executable,
        "-m",
        "synapse7",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--image-size",
        "32",
        "--weights",
        "none",
        "--backbone",
        "resnet18",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--dist-strategy",
        "ddp",
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    summary = json.loads(lines[0])
    assert summary["steps"] == 4  # 32 images / (4 per batch x 2 processes)
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
