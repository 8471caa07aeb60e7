from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synapse7.config import ModelConfig
from synapse7.model import build_model, count_parameters, frozen_modules, get_backbone_spec, resolve_trainable


@pytest.mark.parametrize("mode", ["fft", "rgb", "rgb+fft"])
def test_forward_every_input_mode(mode: str) -> None:
    net = build_model(ModelConfig(backbone="resnet34", weights="none", input=mode))
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2,) and torch.isfinite(out).all()
    maps = net.forward_features(torch.randn(1, 3, 64, 64))
    assert maps.shape == (1, 512, 2, 2)  # unpooled: pooling is in forward_head
    assert net.pool(maps).shape == (1, 512)


def test_rgb_fft_widens_first_conv() -> None:
    net = build_model(ModelConfig(backbone="resnet34", weights="none", input="rgb+fft"))
    assert net.backbone.conv1.in_channels == 6


def test_trainable_policy_defaults() -> None:
    spec = get_backbone_spec("resnet34")
    assert resolve_trainable(spec, None, "none") is None  # scratch: train everything
    assert resolve_trainable(spec, None, "imagenet") == ["head", "backbone.layer4"]
    assert resolve_trainable(spec, "layer3,layer4,fc", "imagenet") == [
        "head",
        "backbone.layer3",
        "backbone.layer4",
    ]
    with pytest.raises(ValueError, match="unknown trainable part"):
        resolve_trainable(spec, "layer9", "imagenet")


def test_frozen_parameters_do_not_change_after_a_step() -> None:
    net = build_model(ModelConfig(backbone="resnet34", weights="none", input="fft", trainable="stage4,head"))
    trainable, total = count_parameters(net)
    assert 0 < trainable < total
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    bn_before = net.backbone.bn1.running_mean.clone()
    net.train()
    for m in frozen_modules(net):
        m.eval()  # what DetectorModule does at each epoch start
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = F.binary_cross_entropy_with_logits(
        net(torch.randn(4, 3, 64, 64)), torch.tensor([0.0, 1.0, 0.0, 1.0])
    )
    loss.backward()
    opt.step()
    for n, p in net.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, n
    assert torch.equal(bn_before, net.backbone.bn1.running_mean)
    assert any(n.startswith("backbone.layer4") for n, p in net.named_parameters() if p.requires_grad)
    assert not any(n.startswith("backbone.layer3") for n, p in net.named_parameters() if p.requires_grad)


def test_widened_conv_is_trained_even_when_stem_frozen() -> None:
    net = build_model(ModelConfig(backbone="resnet18", weights="none", input="rgb+fft", trainable="head"))
    assert net.backbone.conv1.weight.requires_grad
    assert not net.backbone.layer1[0].conv1.weight.requires_grad


def test_pretrained_normalisation_follows_the_backbone() -> None:
    from synapse7.config import IMAGENET_MEAN, load_config
    from synapse7.model import resolve_normalization

    eff = resolve_normalization(load_config(model={"backbone": "efficientnet_lite0", "weights": "imagenet"}))
    assert eff.data.mean == (0.5, 0.5, 0.5) and eff.data.std == (0.5, 0.5, 0.5)
    scratch = resolve_normalization(load_config(model={"backbone": "efficientnet_lite0", "weights": "none"}))
    assert scratch.data.mean == IMAGENET_MEAN
    custom = resolve_normalization(
        load_config(
            data={"mean": [0.1, 0.2, 0.3]}, model={"backbone": "efficientnet_lite0", "weights": "imagenet"}
        )
    )
    assert custom.data.mean == (0.1, 0.2, 0.3)
