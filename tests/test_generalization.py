"""Issue 11's building blocks: artefact input modes, the NPR network, native-resolution crops and crop voting,
multi-root data. Each test checks one behaviour on tiny data made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_dataset
from synapse7.cli import main
from synapse7.config import DataConfig, ModelConfig
from synapse7.data import discover_samples
from synapse7.model import WeightsUnavailableError, build_model, count_parameters
from synapse7.perturb import RandomCrop, build_train_ops
from synapse7.residuals import npr_residual, srm_residual
from synapse7.spectrum import InputEncoder, parse_input_mode, spectrum_features
from synapse7.transforms import ClassificationPreset, grid_crops, pad_to


def test_input_modes_stack_their_components_in_order() -> None:
    x = torch.randn(2, 3, 16, 16)
    out = InputEncoder("rgb+npr")(x)
    assert out.shape == (2, 6, 16, 16)
    assert torch.equal(out[:, :3], x) and torch.equal(out[:, 3:], npr_residual(x))
    out = InputEncoder("npr+srm+fft")(x)
    assert out.shape == (2, 9, 16, 16)
    assert torch.allclose(out[:, 3:6], srm_residual(x)) and torch.allclose(out[:, 6:], spectrum_features(x))


@pytest.mark.parametrize("bad", ["", "rgb+", "npr+npr", "wavelet", "rgb+fft+xyz"])
def test_unknown_input_modes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown input mode"):
        parse_input_mode(bad)


def test_cli_refuses_an_unknown_input_mode_as_a_usage_error(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--input", "rgb+wavelet"])
    assert e.value.code == 2
    assert "unknown input mode" in capsys.readouterr().err


def test_npr_resnet_is_small_trains_from_scratch_and_refuses_imagenet() -> None:
    net = build_model(ModelConfig(backbone="npr_resnet", weights="none", input="npr"))
    trainable, total = count_parameters(net)
    assert 1.3e6 < total < 1.5e6 and trainable == total  # NPR's ~1.44 M, all trained
    logits = net(torch.randn(3, 3, 40, 40))  # any size: global pooling after layer2
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    with pytest.raises(WeightsUnavailableError, match="trained from scratch"):
        build_model(ModelConfig(backbone="npr_resnet", weights="imagenet", input="npr"))


def test_grid_crops_cover_the_corners_and_pad_never_resizes() -> None:
    t = torch.arange(3 * 10 * 12, dtype=torch.uint8).view(3, 10, 12)
    crops = grid_crops(t, 4, 2)
    assert crops.shape == (4, 3, 4, 4)
    assert torch.equal(crops[0], t[:, :4, :4]) and torch.equal(crops[3], t[:, -4:, -4:])
    assert torch.equal(crops[1], t[:, :4, -4:]) and torch.equal(crops[2], t[:, -4:, :4])
    small = torch.randint(0, 255, (3, 5, 9), dtype=torch.uint8)
    padded = pad_to(small, 8)
    assert padded.shape == (3, 8, 9)
    assert torch.equal(padded[:, 1:6, :], small)  # the original pixels are kept as they are, centred
    assert pad_to(small, 2) is small


def test_crop_preset_returns_tiles_and_the_model_averages_their_logits() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    preset = ClassificationPreset(crop_size=32, preprocess="crop", crops=4)
    x = preset(img)
    assert x.shape == (4, 3, 32, 32)
    net = build_model(ModelConfig(backbone="npr_resnet", weights="none", input="npr")).eval()
    with torch.no_grad():
        per_crop = net(x)
        assert torch.allclose(net(x[None]), per_crop.mean()[None], atol=1e-5)
        net.crop_vote = "max"
        assert torch.allclose(net(x[None]), per_crop.max()[None], atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        ClassificationPreset(crop_size=32, crops=3)


def test_random_training_crop_is_seeded_and_added_only_in_crop_mode() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    a = RandomCrop(16, generator=torch.Generator().manual_seed(5))(img)
    b = RandomCrop(16, generator=torch.Generator().manual_seed(5))(img)
    assert a.size == (16, 16) and np.array_equal(np.asarray(a), np.asarray(b))
    assert RandomCrop(100)(img).size == (80, 60)  # smaller than the crop: kept whole (padded later)
    assert any(isinstance(op, RandomCrop) for op in build_train_ops(DataConfig(preprocess="crop")))
    assert not build_train_ops(DataConfig(preprocess="crop", train_crop="center"))
    assert not build_train_ops(DataConfig(preprocess="resize"))


def test_several_roots_merge_and_same_named_generators_stay_apart(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "setA", generators=("gen_a", "shared"), n=2)
    b = make_dataset(tmp_path / "setB", generators=("gen_b", "shared"), n=3)
    samples = discover_samples([a, b], "train")
    gens = {s.generator for s in samples}
    assert gens == {"gen_a", "gen_b", "setA:shared", "setB:shared"}
    assert len(samples) == 2 * 2 * 2 + 2 * 2 * 3


def test_train_and_evaluate_on_two_roots_with_crops(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", generators=("gen_a",), n=4, size=40)
    b = make_dataset(tmp_path / "b", generators=("gen_b",), n=4, size=40)
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(a),
            "--data",
            str(b),
            "--out",
            str(run),
            "--backbone",
            "npr_resnet",
            "--weights",
            "none",
            "--input",
            "npr",
            "--preprocess",
            "crop",
            "--image-size",
            "32",
            "--crops",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(a),
                "--data",
                str(b),
                "--checkpoint",
                str(run / "last.ckpt"),
                "--out",
                str(out),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    table = (out / "per_generator.csv").read_text()
    assert "gen_a" in table and "gen_b" in table


def test_safe_augmentation_flags_reach_the_training_ops_around_the_crop() -> None:
    from synapse7.cli import build_parser, config_from_args
    from synapse7.perturb import ColorJitter, RandomPatchMask, RandomRotation

    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "D",
            "--out",
            "O",
            "--preprocess",
            "crop",
            "--aug-rotate-prob",
            "0.5",
            "--aug-jitter-prob",
            "0.4",
            "--aug-mask-prob",
            "0.3",
            "--aug-mask-ratio",
            "0.1,0.2",
        ]
    )
    ops = build_train_ops(config_from_args(args).data)
    kinds = [type(op) for op in ops]
    assert kinds == [RandomRotation, ColorJitter, RandomCrop, RandomPatchMask]
    assert (
        ops[0].prob == 0.5 and ops[1].prob == 0.4 and ops[3].prob == 0.3 and tuple(ops[3].ratio) == (0.1, 0.2)
    )


def test_training_items_are_single_crops_while_validation_gets_the_grid(tmp_path: Path) -> None:
    from synapse7.data import build_datasets

    root = make_dataset(tmp_path / "d", generators=("g",), n=2, size=80)
    cfg = DataConfig(root=str(root), image_size=32, preprocess="crop", crops=4)
    train, val = build_datasets(cfg, train_pre_ops=build_train_ops(cfg))
    assert train[0]["image"].shape == (3, 32, 32)  # one random crop per image and step
    assert val[0]["image"].shape == (4, 3, 32, 32)  # the 2 x 2 grid, logits combined by the model
