from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from synapse7.cli import build_parser, main


@pytest.mark.parametrize("cmd", ["train", "evaluate", "predict", "demo", "backbones"])
def test_every_subcommand_has_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: synapse7 " + cmd in capsys.readouterr().out


def test_unknown_option_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "x", "--out", "y", "--epochz", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --epochz" in capsys.readouterr().err


def test_cli_flags_reach_the_config() -> None:
    from synapse7.cli import config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "D",
            "--out",
            "O",
            "--epochs",
            "4",
            "--image-size",
            "32",
            "--weights",
            "none",
            "--input",
            "rgb+fft",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--trainable",
            "layer4,fc",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.data.root, cfg.data.image_size, cfg.data.resolved_resize) == ("D", 32, 37)
    assert (cfg.model.weights, cfg.model.input, cfg.model.trainable) == ("none", "rgb+fft", "layer4,fc")
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.data.num_workers) == (4, 8, 0)


def test_evaluate_and_predict_round_trip(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = trained_run / "run" / "best.ckpt"
    data = trained_run / "data"
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(data),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    for f in (
        "classification_report.txt",
        "confusion_matrix.png",
        "per_generator.csv",
        "per_generator.md",
        "per_generator_reports.txt",
        "metrics.json",
        "predictions.csv",
    ):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 48
    printed = capsys.readouterr().out
    assert "REAL" in printed and "| gen_a |" in printed

    folder = data / "gen_a" / "val" / "ai"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--num-workers", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12
    path, label, p = lines[0].split("\t")
    assert Path(path).parent == folder and label in ("AI", "REAL") and 0 <= float(p) <= 1

    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpt),
                str(folder),
                "--json",
                "--threshold",
                "0.0",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 12 and all(r["label"] == "AI" for r in rows)


def test_bad_layout_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d" / "stuff").mkdir(parents=True)
    rc = main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--weights", "none"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "expected layout" in err and "Traceback" not in err


def test_missing_checkpoint_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.ckpt"), str(img)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_each_option_name_means_one_thing() -> None:
    from synapse7.cli import config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "D",
            "--out",
            "O",
            "--strategy",
            "linear-probe",
            "--dist-strategy",
            "ddp",
            "--precision",
            "bf16",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.model.trainable == "linear-probe"  # --strategy: freezing
    assert cfg.train.dist_strategy == "ddp"  # --dist-strategy: Lightning's distribution strategy
    assert cfg.train.precision == "bf16"
    # the same --precision words for train and predict; Lightning's old spelling still accepted for train
    old = config_from_args(
        build_parser().parse_args(["train", "--data", "D", "--out", "O", "--precision", "bf16-mixed"])
    )
    assert old.train.precision == "bf16"
    assert (
        build_parser().parse_args(["predict", "--checkpoint", "C", "x.png", "--precision", "bf16"]).precision
        == "bf16"
    )
    for cmd in (["train", "--data", "D", "--out", "O"], ["predict", "--checkpoint", "C", "x.png"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*cmd, "--precision", "fp8"])


def test_old_configs_load_with_the_new_names() -> None:
    from synapse7.config import config_from_dict
    from synapse7.train import lightning_precision

    cfg = config_from_dict(
        {"train": {"strategy": "ddp", "precision": "32-true"}}
    )  # written before the renames
    assert (cfg.train.dist_strategy, cfg.train.precision) == ("ddp", "fp32")
    assert lightning_precision(cfg) == "32-true"
    assert lightning_precision(config_from_dict({"train": {"precision": "bf16"}})) == "bf16-mixed"
    assert (
        lightning_precision(config_from_dict({"train": {"precision": "auto", "accelerator": "cpu"}}))
        == "32-true"
    )


def test_default_input_mode_is_the_configs() -> None:
    from synapse7.backbones import get_backbone_spec
    from synapse7.config import ModelConfig
    from synapse7.model import Synapse7Net
    from synapse7.spectrum import InputEncoder

    assert ModelConfig().input == "rgb+fft"
    assert (
        InputEncoder().mode == Synapse7Net(get_backbone_spec("resnet18")).encoder.mode == ModelConfig().input
    )
    assert build_parser().parse_args(["demo"]).input == ModelConfig().input


def test_version_comes_from_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    import synapse7

    assert synapse7.__version__ == version("synapse7")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"synapse7 {version('synapse7')}"


def test_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["predict", "--checkpoint", str(tmp_path / "missing.ckpt"), str(tmp_path)]
    monkeypatch.delenv("SYNAPSE7_DEBUG", raising=False)
    assert main(argv) == 1  # expected user error: one line
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(["--debug", *argv])
    monkeypatch.setenv("SYNAPSE7_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


class _Failing(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> None:
        raise ValueError(f"{i}.png: the original reason")


def test_unwrap_shows_the_dataloader_workers_message() -> None:
    from synapse7.cli import _unwrap

    with pytest.raises(ValueError) as err:
        next(iter(DataLoader(_Failing(), num_workers=1)))
    assert "Original Traceback" in str(err.value)  # torch's wrapper, which the CLI must not print
    assert _unwrap(err.value) == "0.png: the original reason"
    assert _unwrap(ValueError("plain")) == "plain"
