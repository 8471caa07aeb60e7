"""Backbone registry, input modes, weights and the freezing policy.

`build_model(cfg)` returns a `Synapse7Net`: InputEncoder (fft / rgb / rgb+fft) -> backbone trunk -> one logit.
The output is a single logit per image; P(AI) = sigmoid(logit). Label 1 is AI, 0 is real.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from synapse7.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, RunConfig
from synapse7.spectrum import InputEncoder

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "head")
# Named training strategies are aliases of `trainable` lists.
STRATEGIES = {"frozen-early": "stage4,head", "linear-probe": "head", "full": "all"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not on disk and cannot be downloaded here."""


@dataclass(frozen=True)
class BackboneSpec:
    """One registry row. Module paths are relative to the backbone trunk."""

    name: str
    build: Callable[[], nn.Module]  # randomly initialised network with its ImageNet classifier
    weights: str  # where `imagenet` weights come from (human-readable)
    load_imagenet: Callable[[nn.Module], None]  # loads ImageNet weights in place, offline, or raises
    stages: dict[str, tuple[str, ...]]  # freezing vocabulary -> module paths
    feature_width: int
    first_conv: str  # path of the first convolution (widened for rgb+fft)
    classifier: str  # path of the final Linear, replaced by Identity (the head lives in Synapse7Net)
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Normalisation the ImageNet weights were trained with (used when --weights imagenet and the config
    # still holds the default ImageNet mean/std).
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub caches a file downloaded from `url` ($TORCH_HOME/hub/checkpoints/<name>)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _torchvision_loader(weights_enum: object) -> Callable[[nn.Module], None]:
    def load(model: nn.Module) -> None:
        url = weights_enum.url  # type: ignore[attr-defined]
        path = torch_hub_checkpoint(url)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights {path.name} are not in the torch hub cache and this machine is offline.\n"
                f"  Put the file at: {path}\n"
                f"  (download it elsewhere from {url}, or set TORCH_HOME to a folder holding hub/checkpoints/{path.name})\n"
                f"  Or train from scratch with --weights none."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise WeightsUnavailableError(f"cannot read weights file {path}: {e}") from e
        model.load_state_dict(state)

    return load


def _torchvision_spec(name: str, ctor: str, weights_enum: str, stages: dict[str, tuple[str, ...]], width: int,
                      first_conv: str, classifier: str) -> BackboneSpec:
    import torchvision.models as tvm

    enum = getattr(tvm, weights_enum).IMAGENET1K_V1
    return BackboneSpec(
        name=name,
        build=lambda: getattr(tvm, ctor)(weights=None),
        weights=f"torchvision {weights_enum}.IMAGENET1K_V1 from the torch hub cache ({Path(urlparse(enum.url).path).name})",
        load_imagenet=_torchvision_loader(enum),
        stages=stages,
        feature_width=width,
        first_conv=first_conv,
        classifier=classifier,
    )


def _resnet_stages() -> dict[str, tuple[str, ...]]:
    return {"stem": ("conv1", "bn1"), "stage1": ("layer1",), "stage2": ("layer2",), "stage3": ("layer3",),
            "stage4": ("layer4",), "head": ()}


def _hierarchical_stages(head: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    # ConvNeXt and Swin in torchvision: features.0 is the stem, then (stage, downsample) pairs.
    return {"stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
            "stage3": ("features.4", "features.5"), "stage4": ("features.6", "features.7"), "head": head}


_REGISTRY: dict[str, Callable[[], BackboneSpec]] = {
    "resnet18": lambda: _torchvision_spec("resnet18", "resnet18", "ResNet18_Weights", _resnet_stages(), 512, "conv1", "fc"),
    "resnet34": lambda: _torchvision_spec("resnet34", "resnet34", "ResNet34_Weights", _resnet_stages(), 512, "conv1", "fc"),
    "resnet50": lambda: _torchvision_spec("resnet50", "resnet50", "ResNet50_Weights", _resnet_stages(), 2048, "conv1", "fc"),
    "convnext_tiny": lambda: _torchvision_spec("convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights",
                                               _hierarchical_stages(("classifier",)), 768, "features.0.0", "classifier.2"),
    "swin_t": lambda: _torchvision_spec("swin_t", "swin_t", "Swin_T_Weights", _hierarchical_stages(("norm",)), 768,
                                        "features.0.0", "head"),
}


def _no_imagenet(name: str) -> Callable[[nn.Module], None]:
    def load(model: nn.Module) -> None:
        raise WeightsUnavailableError(f"{name} has no ImageNet weights: it is trained from scratch (--weights none)")

    return load


def _npr_spec() -> BackboneSpec:
    from synapse7.nets import NPR_STAGES, build_npr_resnet

    return BackboneSpec(name="npr_resnet", build=build_npr_resnet, weights="none (trained from scratch)",
                        load_imagenet=_no_imagenet("npr_resnet"), stages=NPR_STAGES, feature_width=512,
                        first_conv="conv1", classifier="fc",
                        notes="NPR's truncated ResNet-50 (stem, layer1, layer2; ~1.4 M parameters), for artefact inputs")


_REGISTRY["npr_resnet"] = _npr_spec


def register_backbone(name: str, factory: Callable[[], BackboneSpec]) -> None:
    """Add a backbone to the registry (used by optional backbones, e.g. timm-based ones)."""
    _REGISTRY[name] = factory


def backbone_names() -> list[str]:
    _load_optional_backbones()
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    _load_optional_backbones()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def _load_optional_backbones() -> None:
    try:  # backbones that need optional packages register themselves on import
        import synapse7.backbones  # noqa: F401
    except ImportError:
        pass


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

    def __init__(self, spec: BackboneSpec, input_mode: str = "fft") -> None:
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
        """(B, 3, H, W) normalised RGB -> (B, width) pooled features."""
        return self.backbone(self.encoder(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats).squeeze(-1)  # (B,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B,) logits; (B, K, 3, H, W) crops of B images -> (B,) combined by `crop_vote`."""
        if x.dim() == 5:
            b, k = x.shape[:2]
            logits = self.forward_head(self.forward_features(x.flatten(0, 1))).view(b, k)  # (B, K)
            return logits.amax(dim=1) if self.crop_vote == "max" else logits.mean(dim=1)
        return self.forward_head(self.forward_features(x))


def _load_weights_file(net: Synapse7Net, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise WeightsUnavailableError(f"cannot read weights file {path}: {e}") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} holds no state_dict")
    if any(k.startswith("net.") for k in state):  # a Synapse-7 Lightning checkpoint
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        net.load_state_dict(state)
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
            raise WeightsUnavailableError(f"{spec.name}: ImageNet weights do not fit (missing={missing}, unexpected={unexpected})")
    apply_trainable(net, resolve_trainable(spec, cfg.trainable, weights), widened=net.encoder.out_channels != 3)
    return net


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in net.parameters())
    return sum(p.numel() for p in net.parameters() if p.requires_grad), total


def resolve_normalization(cfg: RunConfig) -> RunConfig:
    """Use the backbone's own pretrained normalisation when its ImageNet weights are used and the data config
    still holds the ImageNet default (e.g. EfficientNet-Lite0 was trained on mean = std = 0.5)."""
    from dataclasses import replace

    if cfg.model.weights != "imagenet" or (tuple(cfg.data.mean), tuple(cfg.data.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        return cfg
    spec = get_backbone_spec(cfg.model.backbone)
    return replace(cfg, data=replace(cfg.data, mean=tuple(spec.mean), std=tuple(spec.std)))
