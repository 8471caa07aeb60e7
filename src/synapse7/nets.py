"""Small networks trained from scratch for artefact inputs (no ImageNet weights needed)."""

from __future__ import annotations

import torchvision
from torch import nn


def build_npr_resnet() -> nn.Module:
    """NPR's truncated ResNet-50 (Tan et al., CVPR 2024): a 3x3 stride-2 stem, max-pool, layer1 and layer2.

    About 1.4 M parameters. Shallow on purpose: generation traces are local (a few pixels), so layer3/layer4
    would only add capacity to learn image content. Returned as a torchvision ResNet with layer3/layer4 as
    identities and `fc` mapping the 512 layer2 channels to 1000 classes, so the registry treats it like any
    torchvision ResNet (Synapse7Net replaces `fc` by its own one-logit head).
    """
    net = torchvision.models.resnet50(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
    net.layer3 = nn.Identity()
    net.layer4 = nn.Identity()
    net.fc = nn.Linear(512, 1000)
    return net


NPR_STAGES: dict[str, tuple[str, ...]] = {
    "stem": ("conv1", "bn1"),
    "stage1": ("layer1",),
    "stage2": ("layer2",),
    "stage3": (),
    "stage4": (),
    "head": (),
}
