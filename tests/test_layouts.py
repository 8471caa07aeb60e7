"""Class-folder names and one-class splits (issue 13 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_dataset
from synapse7.cli import main
from synapse7.data import LayoutError, discover_samples


def test_real_and_fake_class_folders(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", generators=("g",), n=3, splits=("train",))
    (root / "g" / "train" / "ai").rename(root / "g" / "train" / "fake")
    (root / "g" / "train" / "nature").rename(root / "g" / "train" / "real")
    samples = discover_samples(root, "train")
    assert len(samples) == 6
    assert {(Path(s.path).parent.name, s.label) for s in samples} == {("fake", 1), ("real", 0)}


@pytest.mark.parametrize(("drop", "named"), [("nature", "REAL"), ("ai", "AI")])
def test_one_class_split_is_an_error_naming_the_missing_class(tmp_path: Path, drop: str, named: str) -> None:
    root = make_dataset(tmp_path / "d", n=3, splits=("val",))
    for g in ("gen_a", "gen_b"):
        for f in (root / g / "val" / drop).iterdir():
            f.unlink()
    with pytest.raises(LayoutError, match=f"split 'val' .* has no {named} images"):
        discover_samples(root, "val")


def test_one_generator_missing_a_class_is_only_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_dataset(tmp_path / "d", n=3, splits=("val",))
    for f in (root / "gen_b" / "val" / "ai").iterdir():
        f.unlink()
    assert len(discover_samples(root, "val")) == 9
    assert "generator gen_b has no ai/fake/1_fake images" in capsys.readouterr().err


def test_train_on_a_one_class_split_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "d", generators=("g",), n=2)
    for f in (root / "g" / "val" / "nature").iterdir():
        f.unlink()
    rc = main(
        [
            "train",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--weights",
            "none",
            "--backbone",
            "resnet18",
            "--image-size",
            "32",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "split 'val'" in err and "has no REAL images" in err and "nature/real/0_real" in err
    assert not (tmp_path / "o" / "best.ckpt").exists()
