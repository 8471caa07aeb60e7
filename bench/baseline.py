"""The reference-style pipeline every speed benchmark compares against, written plainly.

As in the reference code: PIL open, torchvision (v1) Resize / CenterCrop / ToTensor / Normalize per sample, the
FFT log-magnitude spectrum computed per sample in numpy inside `__getitem__`, a DataLoader with 2 workers, a
plain forward (no channels_last, no cache), and the full forward pass every training epoch. The network is the
same Synapse7Net (backbone + head), fed with the spectra the dataset computes, so both pipelines compute the
same function and accuracies are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def numpy_spectrum(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(3, H, W) float -> standardised log|fftshift(fft2)| per channel, float32, as in the reference."""
    f = np.fft.fftshift(np.fft.fft2(x, norm="ortho"), axes=(-2, -1))
    s = np.log(np.abs(f) + eps)
    mean = s.mean(axis=(-2, -1), keepdims=True)
    std = s.std(axis=(-2, -1), ddof=1, keepdims=True)
    return ((s - mean) / (std + eps)).astype(np.float32)


class BaselineDataset(Dataset):
    """(path, label) pairs -> (spectrum (3, S, S) float32, label)."""

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        *,
        image_size: int = 224,
        resize_size: int = 256,
        preprocess: str = "resize",
    ) -> None:
        self.items = list(items)
        ops = [T.Resize(resize_size)] if preprocess == "resize" else []
        self.tf = T.Compose(
            [*ops, T.CenterCrop(image_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        img = Image.open(path).convert("RGB")
        x = self.tf(img).numpy()
        return torch.from_numpy(numpy_spectrum(x)), label


def baseline_loader(
    items: Sequence[tuple[str, int]],
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    shuffle: bool = False,
    **ds_kwargs: object,
) -> DataLoader:
    return DataLoader(
        BaselineDataset(items, **ds_kwargs),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=False,
    )


class SpectrumNet(nn.Module):
    """A Synapse7Net without its encoder: the baseline computes the spectrum in the dataset instead."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.backbone(spec)).squeeze(
            -1
        )  # the trunk pools (its classifier is Identity)


@torch.inference_mode()
def baseline_predict(model: nn.Module, loader: DataLoader) -> np.ndarray:
    """P(AI) for every item, in order."""
    model.eval()
    return np.concatenate([torch.sigmoid(model(x)).numpy() for x, _ in loader])


def baseline_train_epoch(
    model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, frozen: Sequence[nn.Module] = ()
) -> float:
    """One epoch of BCE training (full forward every batch); frozen modules stay in eval mode. Mean loss."""
    model.train()
    for m in frozen:
        m.eval()
    total, n = 0.0, 0
    for x, y in loader:
        loss = F.binary_cross_entropy_with_logits(model(x), y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + float(loss.detach()) * len(y), n + len(y)
    return total / max(1, n)


def accuracy(p: np.ndarray, labels: Sequence[int]) -> float:
    return float(((p >= 0.5).astype(int) == np.asarray(labels)).mean())
