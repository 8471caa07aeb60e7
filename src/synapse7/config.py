"""Frozen run configuration: data / model / train, loaded from YAML plus overrides.

A YAML file only sets defaults; command-line flags override it, and the resolved config is written next to
each run and stored inside every checkpoint, so a checkpoint alone is enough to rebuild its model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from synapse7.io import atomic_write_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The one --precision vocabulary (train, evaluate, predict): the dtype the network computes in. "auto": bf16 on
# a GPU, fp32 on the CPU (where bf16 moves P(AI) and is opt-in; see README). Training runs bf16/fp16 as
# Lightning's mixed precision; inference as autocast.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESIZE_KERNELS = ("bilinear", "bicubic", "nearest")  # DataConfig.resize_interpolation; transforms maps them
# Lightning's spellings, which `train --precision` took before; still accepted (old configs and checkpoints).
LEGACY_PRECISIONS = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


@dataclass(frozen=True)
class DataConfig:
    root: str | tuple[str, ...] | None = None  # one dataset root, or several whose generators are merged
    image_size: int = 224  # centre-crop size
    resize_size: int | None = None  # None: scaled with image_size as 256/224, as in the reference
    # The resize kernel (RESIZE_KERNELS): bilinear (antialiased, the reference) | bicubic |
    # nearest. Nearest up-sampling copies each source pixel exactly (32 px CIFAKE images to 96), so the
    # network sees the pixel values an image was built with rather than a smoothed interpolation of them.
    resize_interpolation: str = "bilinear"
    preprocess: str = (
        "resize"  # resize: resize then centre-crop; crop: native resolution (random crops in training)
    )
    train_crop: str = "random"  # preprocess=crop, training: random (a new position each time) | center
    crops: int = 1  # evaluation/prediction: k*k tiles on a grid instead of the centre crop (logits combined)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    batch_size: int = 32
    num_workers: int = 2
    on_bad_image: str = "skip"  # skip | error
    train_split: str = "train"
    val_split: str = "val"
    train_generators: tuple[str, ...] | None = None  # None: every generator found
    test_generators: tuple[str, ...] | None = None
    align: str | None = None  # None | png | jpeg:Q — re-encode both classes identically
    max_pixels: int = 89_478_485  # PIL's own bomb limit; larger images are rejected before decoding
    # Opt-in: large JPEGs are decoded at 1/2-1/8 scale by libjpeg-turbo (PIL draft) when the resize target is
    # much smaller; within a few grey levels of the full decode (docs/performance.md). preprocess=resize only.
    fast_decode: bool = False
    # Training-only robustness augmentation (CNNSpot-style; synapse7.perturb.build_train_ops): probabilities
    # per image, and the uniform ranges the strengths are drawn from.
    aug_blur_prob: float = 0.0
    aug_blur_sigma: tuple[float, float] = (0.0, 3.0)
    aug_jpeg_prob: float = 0.0
    aug_jpeg_quality: tuple[int, int] = (30, 100)
    aug_resize_prob: float = 0.0
    aug_resize_scale: tuple[float, float] = (0.5, 1.5)
    # Random horizontal flip (after the ops above). A mirror keeps every spectral artefact (it mirrors the
    # spectrum too), so it adds views without teaching anything false; it is not a robustness op.
    aug_flip_prob: float = 0.0
    # SAFE-style augmentation (Li et al., KDD 2025; synapse7.perturb): random rotation and colour jitter
    # before the training crop, random patch masking after it.
    aug_rotate_prob: float = 0.0
    aug_rotate_degrees: float = 180.0
    aug_jitter_prob: float = 0.0
    aug_jitter: float = 0.5  # brightness, contrast and saturation factors drawn from [1 - j, 1 + j]
    aug_mask_prob: float = 0.0
    aug_mask_ratio: tuple[float, float] = (0.0, 0.75)
    aug_mask_patch: int = 16

    @property
    def resolved_resize(self) -> int:
        if self.resize_size is not None:
            return self.resize_size
        return max(self.image_size, round(self.image_size * 256 / 224))


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet34"
    weights: str = "imagenet"  # imagenet | none | PATH to a state_dict or checkpoint
    input: str = "rgb+fft"  # fft | rgb | rgb+fft; default justified in README ("Input modes")
    trainable: str | None = None  # None: policy default; or "all" or a comma list (stage4,head / layer4,fc)
    crop_vote: str = "mean"  # how the logits of several crops of one image are combined: mean | max
    # Test-time augmentation at evaluation/prediction: none | flip (the mean logit of the image and its mirror).
    tta: str = "none"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 42
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    dist_strategy: str = "auto"  # Lightning's distribution strategy: auto | ddp | ddp_spawn | ...
    precision: str = "fp32"  # one of PRECISIONS
    ckpt_every_n_steps: int = 50  # last.ckpt is refreshed this often so --resume loses little
    limit_train_batches: float | int | None = None
    # Regularisers and schedule (issue 16). label_smoothing e: BCE targets 0/1 become e/2 and 1 - e/2.
    label_smoothing: float = 0.0
    # > 0: the learning rate rises linearly over this many epochs, then follows a cosine to 0, updated every
    # step; 0: a cosine over epochs, updated once per epoch (the schedule of every run before it existed).
    warmup_epochs: float = 0.0
    # > 0: an exponential moving average of the weights (Lightning's EMAWeightAveraging) with this decay per
    # step; validation and the saved checkpoints use the averaged weights (last.ckpt keeps the raw ones too).
    ema_decay: float = 0.0
    # Frozen-trunk feature cache folder (synapse7.cache): the frozen stages run once, later epochs read disk.
    feature_cache: str | None = None


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def override(self, **sections: dict[str, Any]) -> RunConfig:
        """Return a copy with `section={key: value}` overrides applied (None values are ignored)."""
        out = self
        for section, values in sections.items():
            current = getattr(out, section)
            clean = {k: v for k, v in values.items() if v is not None}
            _check_keys(type(current), clean, section)
            out = replace(out, **{section: replace(current, **_coerce(type(current), clean))})
        return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _check_keys(cls: type, values: dict[str, Any], section: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown {section} option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    # YAML and JSON give lists where the dataclasses hold tuples (hashable, frozen).
    out = {}
    for k, v in values.items():
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def check_precision(value: str) -> str:
    """A --precision value in the PRECISIONS vocabulary (Lightning's old spellings mapped), or ConfigError."""
    value = LEGACY_PRECISIONS.get(value, value)
    if value not in PRECISIONS:
        raise ConfigError(f"unknown precision {value!r}; choose from {', '.join(PRECISIONS)}")
    return value


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """Configs written before the renames (train.strategy -> dist_strategy, Lightning precision names) still load."""
    train = dict(d.get("train") or {})
    if "strategy" in train:
        train["dist_strategy"] = train.pop("strategy")
    if train.get("precision") is not None:
        train["precision"] = check_precision(str(train["precision"]))
    return {**d, "train": train} if train or "train" in d else d


def config_from_dict(d: dict[str, Any] | None) -> RunConfig:
    """Build a RunConfig from a nested dict (as written by `to_dict`)."""
    d = d or {}
    unknown = sorted(set(d) - {"data", "model", "train"})
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}; known: data, model, train")
    return RunConfig().override(**{k: dict(v or {}) for k, v in _upgrade(d).items()})


def load_config(path: str | Path | None = None, **sections: dict[str, Any]) -> RunConfig:
    """Load YAML defaults from `path` (optional) and apply per-section overrides."""
    base = RunConfig()
    if path is not None:
        base = config_from_dict(read_yaml_mapping(path, "config file", "sections data/model/train"))
    cfg = base.override(**_upgrade(sections))
    if cfg.train.epochs < 1:  # 0 epochs would "succeed" and name checkpoints that were never written
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}")
    if cfg.data.resize_interpolation not in RESIZE_KERNELS:
        raise ConfigError(
            f"data.resize_interpolation must be one of {', '.join(RESIZE_KERNELS)}, "
            f"got {cfg.data.resize_interpolation!r}"
        )
    return cfg


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """The mapping at the top of a YAML file; ConfigError naming the file when it is missing or not one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {p} must hold a mapping with {expected}")
    return raw


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
