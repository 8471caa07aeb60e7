"""bench/release.py: the calib split it chooses the threshold on, and (slow) the whole recipe on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import import_bench, make_dataset
from synapse7.modelfile import DEFAULT_DIR_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release():  # noqa: ANN201 - the bench module
    return import_bench("release")


def test_calib_view_is_disjoint_from_fit_keeps_pairs_and_leaves_val_out(release, tmp_path: Path) -> None:  # noqa: ANN001
    root = make_dataset(tmp_path / "data", generators=("synth_a", "synth_b"), n=20)
    counts = release.make_view("s", root, tmp_path / "view", fraction=0.25, seed=0)
    view = tmp_path / "view" / "s"
    files = {
        side: sorted(
            p.relative_to(view / "synth_a" / side).as_posix()
            for p in (view / "synth_a" / side).rglob("*.png")
        )
        for side in ("fit", "calib")
    }
    assert counts["fit"] + counts["calib"] == 2 * 2 * 20 and 0 < counts["calib"] < counts["fit"]
    names = {side: {f.split("/")[1] for f in fs} for side, fs in files.items()}
    assert not names["fit"] & names["calib"]  # no photo on both sides
    # the same names are held out for every generator folder and class (a real and its fake stay together)
    other = {p.name for p in (view / "synth_b" / "calib").rglob("*.png")}
    assert {f.split("/")[1] for f in files["calib"]} == other
    targets = [Path(os.path.realpath(p)).relative_to(root.resolve()) for p in view.rglob("*.png")]
    assert all(
        t.parts[1] == "train" for t in targets
    )  # symlinks into the train split only: val stays a test set


def test_release_never_trains_or_calibrates_on_wild(release) -> None:  # noqa: ANN001
    assert release.HELD_OUT not in release.TRAIN_SETS and release.HELD_OUT in release.TEST_SETS
    assert all(
        release.DATASETS[k].folder is None or "wild" not in release.DATASETS[k].folder
        for k in release.TRAIN_SETS
    )


@pytest.mark.slow
def test_release_smoke_end_to_end(tmp_path: Path) -> None:
    """The whole recipe on tiny stand-in data: weights installed with a MANIFEST, card written, figures per set."""
    out = tmp_path / "rel"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "release.py"),
            "--smoke",
            "--out",
            str(out),
            "--num-workers",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    installed = out / "installed"
    card = json.loads((installed / "model_card.json").read_text())
    assert [f["key"] for f in card["figures"]] == ["cifake", "gm", "wild", "synth"]
    assert [f["key"] for f in card["figures"] if f["held_out"]] == ["wild"]
    assert card["calibration"]["split"] == "calib" and card["robustness"]
    md = (installed / "model_card.md").read_text()
    for heading in (
        "Intended use",
        "Out-of-scope use",
        "Training data",
        "Recipe",
        "Threshold",
        "Robustness",
        "Known failure modes",
        "What it will miss",
    ):
        assert f"## {heading}" in md
    assert "**never trained on**" in md
    env[DEFAULT_DIR_ENV] = str(installed)
    info = subprocess.run([sys.executable, "-m", "synapse7", "info"], env=env, capture_output=True, text=True)
    assert info.returncode == 0 and "model_card.md" in info.stdout and "never trained on" in info.stdout


def test_a_seed_run_changes_only_the_training_seed(release, tmp_path: Path) -> None:  # noqa: ANN001
    import argparse

    assert release.RECIPE.count("--seed 42") == 1
    one = release.recipe_for(argparse.Namespace(seed=1, smoke=False))
    assert one == release.RECIPE.replace("--seed 42", "--seed 1") and "--seed 42" not in one
    assert release.recipe_for(argparse.Namespace(seed=42, smoke=False)) == release.RECIPE
    # --seed parses; with no reals under --data it stops before any step
    rc = release.main(["--seed", "3", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 1 and not (tmp_path / "o").exists()
