"""bench/gpu.py --smoke: the device script runs end to end on a CPU at toy sizes (so a lent GPU's minutes are not
spent finding a typo), and its report holds every section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_smoke_run_writes_every_section(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu.py"),
            "--smoke",
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert data["errors"] == [] and data["skipped"] == []
    assert set(data["sections"]) == {
        "cli",
        "model_only",
        "decode_only",
        "end_to_end",
        "training",
        "feature_cache",
    }
    cli = {row["step"]: row for row in data["sections"]["cli"]}
    assert list(cli) == ["train", "evaluate", "predict", "predict_default_model"]
    assert all(row["rc"] == 0 and "stderr_tail" not in row for row in cli.values()), cli
    assert cli["evaluate"]["n_real"] == cli["evaluate"]["n_fake"] == 12  # 3 stand-in generators x 4 val pairs
    assert cli["predict"]["rows"] == cli["predict_default_model"]["rows"] == 24
    e2e = data["sections"]["end_to_end"]
    assert all(row["errors"] == 0 for row in e2e if "errors" in row)
    assert (tmp_path / "out" / "gpu.md").read_text().count("###") == 6


def test_gpu_bench_refuses_unknown_groups_and_a_cpu_without_smoke(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    for extra, message in ((["--smoke", "--only", "bogus"], "unknown --only group"), ([], "no CUDA device")):
        r = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 2 and message in r.stderr
