"""The network: input modes, weights and the freezing policy, on a backbone from `synapse7.backbones`.

`build_model(cfg)` returns a `Synapse7Net`: InputEncoder (fft / rgb / rgb+fft) -> backbone trunk -> one logit.
The output is a single logit per image; P(AI) = sigmoid(logit). Label 1 is AI, 0 is real.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synapse7.backbones import (
    STAGES,
    BackboneSpec,
    WeightsUnavailableError,
    get_backbone_spec,
    read_torch_file,
)
from synapse7.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, RunConfig
from synapse7.spectrum import InputEncoder

# Named training strategies are aliases of `trainable` lists.
STRATEGIES = {"frozen-early": "stage4,head", "linear-probe": "head", "full": "all"}


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path) if path else module


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(module, parent), leaf, new)


def widen_first_conv(trunk: nn.Module, path: str, in_channels: int) -> None:
    """Replace the first conv by one taking `in_channels`, tiling its weights (scaled to keep activations)."""
    old = _get(trunk, path)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{path} is {type(old).__name__}, not Conv2d")
    if old.in_channels == in_channels:
        return
    # A copy keeps the conv's class and settings (e.g. timm's Conv2dSame, which pads at run time) and its bias.
    new = copy.deepcopy(old)
    with torch.no_grad():
        reps = -(-in_channels // old.in_channels)
        w = old.weight.repeat(1, reps, 1, 1)[:, :in_channels] * (old.in_channels / in_channels)
    new.in_channels = in_channels
    new.weight = nn.Parameter(w.contiguous())
    _set(trunk, path, new)


class Synapse7Net(nn.Module):
    """InputEncoder -> backbone trunk -> Linear(width, 1). forward returns logits of shape (B,)."""

    def __init__(self, spec: BackboneSpec, input_mode: str = ModelConfig.input) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = InputEncoder(input_mode)
        self.backbone = spec.build()
        _set(self.backbone, spec.classifier, nn.Identity())
        if self.encoder.out_channels != 3:
            widen_first_conv(self.backbone, spec.first_conv, self.encoder.out_channels)
        self.head = nn.Linear(spec.feature_width, 1)
        self.crop_vote = "mean"  # mean | max of the crops' logits (set from ModelConfig.crop_vote)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB -> the trunk's last feature maps, unpooled (as timm's forward_features).

        (B, C, h, w) for CNNs; (B, h, w, C) for Swin.
        """
        x = self.encoder(x)
        for path in self.spec.features:
            x = self.backbone.get_submodule(path)(x)
        return x

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Feature maps -> (B, feature_width) pooled features."""
        return self.spec.pool(self.backbone, maps)

    def forward_head(self, maps: torch.Tensor) -> torch.Tensor:
        """Feature maps -> logits (B,): pooling, then the linear head."""
        return self.head(self.pool(maps)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B,) logits; (B, K, 3, H, W) crops of B images -> (B,) combined by `crop_vote`."""
        if x.dim() == 5:
            b, k = x.shape[:2]
            logits = self.forward_head(self.forward_features(x.flatten(0, 1))).view(b, k)  # (B, K)
            return logits.amax(dim=1) if self.crop_vote == "max" else logits.mean(dim=1)
        return self.forward_head(self.forward_features(x))


TTA_MODES = ("none", "flip")


def net_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """The Synapse7Net part of a DetectorModule state_dict: keys under `net.`, without that prefix."""
    return {k[4:]: v for k, v in state.items() if k.startswith("net.")}


def _load_weights_file(net: Synapse7Net, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    if (
        path.suffix == ".safetensors"
    ):  # a plain safetensors state_dict (a Synapse-7 model's keys have no prefix)
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise WeightsUnavailableError(f"cannot read weights file {path}: {e}") from e
        if any(k.startswith(("encoder.", "head.")) for k in obj):
            obj = {f"net.{k}": v for k, v in obj.items()}
    else:  # weights_only: a weights file from elsewhere must not be able to run code while unpickling
        obj = read_torch_file(path, weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} holds no state_dict")
    if any(k.startswith("net.") for k in state):  # a Synapse-7 Lightning checkpoint
        net.load_state_dict(net_state_dict(state))
        return
    # A plain backbone state_dict (e.g. torchvision's): load what matches in shape, report the rest.
    own = net.backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise WeightsUnavailableError(f"{path}: no tensor matches backbone {net.spec.name}")
    net.backbone.load_state_dict(usable, strict=False)


def resolve_trainable(spec: BackboneSpec, trainable: str | None, weights: str) -> list[str] | None:
    """Module paths (in Synapse7Net naming) to train; None means everything.

    Default: the reference's policy (last stage + head) with pretrained weights, everything without.
    Tokens are stage names (stem, stage1..stage4, head), strategy names, or the backbone's own module
    paths (e.g. layer3,layer4,fc for ResNets).
    """
    if trainable is None:
        trainable = "all" if weights == "none" else STRATEGIES["frozen-early"]
    trainable = STRATEGIES.get(trainable, trainable)
    if trainable.strip() == "all":
        return None
    native_names = {n for n, _ in spec.build().named_modules() if n}
    paths: list[str] = ["head"]  # the new head is always trained
    for tok in (t.strip() for t in trainable.split(",")):
        if not tok:
            continue
        if tok in spec.stages:
            paths += [f"backbone.{p}" for p in spec.stages[tok]]
        elif tok == spec.classifier or tok in ("fc", "classifier"):
            continue  # the classifier is the head
        elif tok in native_names:
            paths.append(f"backbone.{tok}")
        else:
            raise ValueError(
                f"unknown trainable part {tok!r} for {spec.name}; use 'all', a strategy "
                f"({', '.join(STRATEGIES)}), stage names ({', '.join(STAGES)}) or module paths of the backbone"
            )
    return paths


def apply_trainable(net: Synapse7Net, paths: list[str] | None, *, widened: bool) -> None:
    """Set requires_grad by module path prefix. A widened first conv is new, so it is always trained."""
    if widened and paths is not None:
        paths = [*paths, f"backbone.{net.spec.first_conv}"]
    for name, p in net.named_parameters():
        p.requires_grad = paths is None or any(name == q or name.startswith(q + ".") for q in paths)


def frozen_modules(net: nn.Module) -> list[nn.Module]:
    """Modules whose parameters (recursively) are all frozen: put in eval mode during training so their norm
    statistics stay fixed and parameter-free stochastic layers inside them (dropout, stochastic depth) are off."""
    out = []
    for m in net.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(m)
    return out


def build_model(cfg: ModelConfig, *, load_weights: bool = True) -> Synapse7Net:
    """Build the network for a model config. load_weights=False skips pretrained weights (for checkpoints)."""
    spec = get_backbone_spec(cfg.backbone)
    if cfg.crop_vote not in ("mean", "max"):
        raise ValueError(f"crop_vote must be 'mean' or 'max', got {cfg.crop_vote!r}")
    if cfg.tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {cfg.tta!r}")
    net = Synapse7Net(spec, cfg.input)
    net.crop_vote = cfg.crop_vote
    weights = cfg.weights
    if load_weights and weights not in ("none", "imagenet"):
        _load_weights_file(net, Path(weights))
    elif load_weights and weights == "imagenet":
        # Load into a fresh network with its original classifier and first conv, then transplant the trunk.
        base = spec.build()
        spec.load_imagenet(base)
        state = {k: v for k, v in base.state_dict().items() if not k.startswith(spec.classifier + ".")}
        if net.encoder.out_channels != 3:
            tmp_key = spec.first_conv + ".weight"
            _set(base, spec.classifier, nn.Identity())
            widen_first_conv(base, spec.first_conv, net.encoder.out_channels)
            state[tmp_key] = base.state_dict()[tmp_key]
        missing, unexpected = net.backbone.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.startswith(spec.classifier)]:
            raise WeightsUnavailableError(
                f"{spec.name}: ImageNet weights do not fit (missing={missing}, unexpected={unexpected})"
            )
    apply_trainable(
        net, resolve_trainable(spec, cfg.trainable, weights), widened=net.encoder.out_channels != 3
    )
    return net


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in net.parameters())
    return sum(p.numel() for p in net.parameters() if p.requires_grad), total


def resolve_normalization(cfg: RunConfig) -> RunConfig:
    """Use the backbone's own pretrained normalisation when its ImageNet weights are used and the data config
    still holds the ImageNet default (e.g. EfficientNet-Lite0 was trained on mean = std = 0.5)."""
    if cfg.model.weights != "imagenet" or (tuple(cfg.data.mean), tuple(cfg.data.std)) != (
        IMAGENET_MEAN,
        IMAGENET_STD,
    ):
        return cfg
    spec = get_backbone_spec(cfg.model.backbone)
    return replace(cfg, data=replace(cfg.data, mean=tuple(spec.mean), std=tuple(spec.std)))
