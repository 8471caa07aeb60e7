"""Training entry point: `train(cfg, out_dir)` writes best.ckpt, last.ckpt, config.yaml and CSV logs."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from synapse7.cache import CacheRefused, prepare_cached_training
from synapse7.config import RunConfig, check_precision, save_config
from synapse7.data import BadImageLog
from synapse7.datamodule import GenImageDataModule
from synapse7.io import atomic_write_text, ensure_writable_dir
from synapse7.model import count_parameters, resolve_normalization
from synapse7.module import DetectorModule
from synapse7.perturb import build_train_ops
from synapse7.reports import save_training_curves_png


@dataclass(frozen=True)
class TrainResult:
    best_ckpt: Path
    last_ckpt: Path
    best_val_auc: float | None
    epochs_run: int
    global_step: int
    bad_images: int
    is_global_zero: bool = True  # False in the other processes of a DDP run


def lightning_precision(cfg: RunConfig) -> str:
    """Lightning's name for cfg.train.precision; "auto" is bf16 mixed precision on a GPU and fp32 otherwise."""
    p = check_precision(cfg.train.precision)
    if p == "auto":
        gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
        p = "bf16" if gpu else "fp32"
    return {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[p]


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners and tips out of the output; warnings and errors still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _log_version(logs: Path) -> str:
    if not (logs / "metrics.csv").exists():
        return ""
    n = 1
    while (logs / f"resume_{n}").exists():
        n += 1
    return f"resume_{n}"


def build_trainer(
    cfg: RunConfig, out: Path, *, progress: bool = True, extra_callbacks: list | None = None
) -> L.Trainer:
    """The Lightning Trainer: best-by-val_auc and last checkpoints, CSV logs, progress bar, DDP if asked."""
    # best.ckpt is for inference: weights, config and threshold, no optimizer state (a third of the size);
    # last.ckpt keeps the full state for --resume.
    best = ModelCheckpoint(
        dirpath=out,
        filename="best",
        monitor="val_auc",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_weights_only=True,
    )
    # last.ckpt: after every epoch, and every N optimiser steps so an interrupted epoch loses at most N steps.
    # (Lightning's save_last only fires when a top-k checkpoint is written, so it is kept separate.)
    last_epoch = ModelCheckpoint(
        dirpath=out, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False
    )
    periodic = ModelCheckpoint(
        dirpath=out,
        filename="last",
        every_n_train_steps=cfg.train.ckpt_every_n_steps,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )
    callbacks = [best, last_epoch, periodic, *(extra_callbacks or [])]
    if cfg.train.ema_decay > 0:
        callbacks.append(EMAWeightAveraging(decay=cfg.train.ema_decay))
    quiet_lightning()
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, 20 if not sys.stderr.isatty() else 1)))
    return L.Trainer(
        default_root_dir=out,
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=_devices(cfg.train.devices),
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.dist_strategy,
        precision=lightning_precision(cfg),
        callbacks=callbacks,
        # A resumed run logs to a new folder; Lightning's CSV logger would otherwise overwrite the first part.
        logger=CSVLogger(save_dir=out, name="logs", version=_log_version(out / "logs")),
        log_every_n_steps=10,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_train_batches=cfg.train.limit_train_batches,
        num_sanity_val_steps=0,
    )


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
) -> TrainResult:
    """Train a detector on cfg.data.root; writes RUN_DIR/{best,last}.ckpt, config.yaml, logs/metrics.csv and
    training_curves.png."""
    out = ensure_writable_dir(out_dir)
    last = out / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
    if not resume and ((out / "best.ckpt").exists() or last.exists()):
        raise FileExistsError(
            f"{out} already holds a finished or interrupted run; use --resume or another --out"
        )
    cfg = resolve_normalization(cfg)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm = GenImageDataModule(cfg.data, train_pre_ops=build_train_ops(cfg.data), seed=cfg.train.seed)
    dm.setup("fit")  # fail fast on a bad layout, before building the model
    assert dm.train_set is not None and dm.val_set is not None
    module = DetectorModule(cfg.to_dict())
    trainable, total = count_parameters(module.net)
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(
            f"synapse7 train: {cfg.model.backbone} input={cfg.model.input} weights={cfg.model.weights} "
            f"trainable={trainable:,}/{total:,} params; train={len(dm.train_set)} val={len(dm.val_set)} images; "
            f"generators={', '.join(dm.train_set.generators)}",
            file=sys.stderr,
        )
    save_config(cfg, out / "config.yaml")
    fit_data: dict = {"datamodule": dm}
    if cfg.train.feature_cache is not None:
        try:
            cached = prepare_cached_training(
                cfg,
                module,
                dm.train_set,
                dm.val_set,
                train_pre_ops=dm.train_pre_ops,
                log=lambda m: print(m, file=sys.stderr),
            )
        except CacheRefused as e:
            print(f"synapse7 train: feature cache not used: {e.reason}; training on images", file=sys.stderr)
        else:
            module = cached.module
            fit_data = {"train_dataloaders": cached.train_loader, "val_dataloaders": cached.val_loader}
    trainer = build_trainer(cfg, out, progress=progress, extra_callbacks=callbacks)
    trainer.fit(module, **fit_data, ckpt_path=str(last) if resume else None)
    bad = BadImageLog()
    bad.add(dm.train_set, module.skipped)
    if len(bad):
        atomic_write_text(out / "bad_images.csv", bad.to_csv())
        print(f"skipped {len(bad)} bad training image(s); list in {out / 'bad_images.csv'}", file=sys.stderr)
    if trainer.is_global_zero:
        save_training_curves_png(out / "logs", out / "training_curves.png")
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return TrainResult(
        best_ckpt=out / "best.ckpt",
        last_ckpt=last,
        best_val_auc=float(best_score) if best_score is not None else None,
        epochs_run=trainer.current_epoch,
        global_step=trainer.global_step,
        bad_images=len(bad),
        is_global_zero=trainer.is_global_zero,
    )
