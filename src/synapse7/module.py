"""The LightningModule: BCE on one logit, AdamW on the trainable parameters, AUC/accuracy/AP on validation."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryAveragePrecision

from synapse7.config import RunConfig, config_from_dict
from synapse7.model import build_model, frozen_modules


class DetectorModule(L.LightningModule):
    """Trains a Synapse7Net. The resolved config is the only hyper-parameter, so checkpoints rebuild the model.

    `threshold` (the decision cut-off on P(AI)) is stored in every checkpoint under "synapse7".
    """

    def __init__(
        self, config: dict[str, Any], net: nn.Module | None = None, load_weights: bool = True
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: RunConfig = config_from_dict(config)
        self.net = net if net is not None else build_model(self.cfg.model, load_weights=load_weights)
        self.threshold = 0.5
        self.val_auc = BinaryAUROC()
        self.val_acc = BinaryAccuracy()
        self.val_ap = BinaryAveragePrecision()
        self.skipped: list[tuple[int, str]] = []  # bad images met in training batches (dataset index, reason)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        # Frozen layers must not drift through their BatchNorm running statistics either.
        for m in frozen_modules(self.net):
            m.eval()

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if "image" not in batch:  # every image of the batch was bad
            return None
        x = batch["image"]
        if self.device.type == "cpu" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["label"].float()
        logits = self.step_logits(x)
        eps = self.cfg.train.label_smoothing if self.training else 0.0
        target = y * (1.0 - eps) + 0.5 * eps
        return logits, y, F.binary_cross_entropy_with_logits(logits, target)

    def step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for a batch's inputs; CachedDetectorModule runs its tail on cached features here."""
        return self.net(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.skipped.extend(batch.get("bad", []))
        out = self._step(batch)
        if out is None:
            return None
        logits, y, loss = out
        acc = ((logits > 0).float() == y).float().mean()
        self.log(
            "train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        self.log(
            "train_acc", acc, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._step(batch)
        if out is None:
            return
        logits, y, loss = out
        p = torch.sigmoid(logits)
        yi = y.long()
        self.val_auc.update(p, yi)
        self.val_acc.update(p, yi)
        self.val_ap.update(p, yi)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val_auc", self.val_auc.compute(), prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc.compute(), prog_bar=True, sync_dist=True)
        self.log("val_ap", self.val_ap.compute(), sync_dist=True)
        for m in (self.val_auc, self.val_acc, self.val_ap):
            m.reset()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)
        tc = self.cfg.train
        if tc.warmup_epochs <= 0:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, tc.epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(total - 1, max(1, round(total * tc.warmup_epochs / tc.epochs)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["synapse7"] = {"threshold": float(self.threshold), "format": 1}
        trainer = self._trainer
        if trainer is not None and "optimizer_states" not in checkpoint:
            # A weights-only save (best.ckpt): Lightning does not ask callbacks, so a weight-averaging callback
            # has not put its averaged weights in; do it here, without the raw copy it keeps for resuming.
            for cb in trainer.callbacks:
                if isinstance(cb, WeightAveraging):
                    cb.on_save_checkpoint(trainer, self, checkpoint)
                    checkpoint.pop("current_model_state", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.threshold = float(checkpoint.get("synapse7", {}).get("threshold", 0.5))


def warmup_cosine(step: int, warm: int, total: int) -> float:
    """Learning-rate factor at optimiser step `step`: linear from 1/warm up to 1 over `warm` steps, then a
    cosine down to 0 at `total`."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


class CachedDetectorModule(DetectorModule):
    """A DetectorModule whose steps run `tail` (synapse7.cache.TrainableTail) on cached frozen-stage features.

    `self.net`, the full network, is what checkpoints hold, so they stay normal Synapse-7 checkpoints.
    """

    def __init__(self, config: dict[str, Any], *, net: nn.Module, tail: nn.Module) -> None:
        super().__init__(config, net=net)
        object.__setattr__(self, "tail", tail)  # not a registered child: the checkpoint holds `net` only

    def step_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x)
