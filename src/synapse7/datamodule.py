"""The Lightning data module: batches MultiGenDataset for training (shuffled, resumable) and validation."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from synapse7.config import DataConfig
from synapse7.data import MultiGenDataset, build_datasets, build_loader
from synapse7.transforms import PilOp


class GenImageDataModule(L.LightningDataModule):
    """Batches MultiGenDataset for training (shuffled) and validation."""

    def __init__(self, cfg: DataConfig, *, train_pre_ops: Sequence[PilOp] = (), seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.train_pre_ops = list(train_pre_ops)
        self.train_set: MultiGenDataset | None = None
        self.val_set: MultiGenDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = build_datasets(self.cfg, train_pre_ops=self.train_pre_ops)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # DDP: Lightning swaps in a DistributedSampler (seeded per epoch; resumes at epoch boundaries).
            return build_loader(
                self.train_set, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers, shuffle=True
            )
        loader = build_loader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            shuffle=True,
            seed=self.seed,
        )
        if trainer is not None:
            loader.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return loader

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return build_loader(self.val_set, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers)
