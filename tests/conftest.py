"""Shared fixtures: tiny GenImage-layout datasets in tmp_path, CPU only, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH = Path(__file__).resolve().parents[1] / "bench"


def import_bench(name: str):  # noqa: ANN201 - a bench script as a module
    """Import bench/NAME.py (the bench folder is on sys.path only while it imports)."""
    import importlib
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def train_tiny(base: Path, *, n: int, input: str, **train: object) -> Path:  # noqa: A002 - the config's name
    """Train resnet18 on a tiny made-up dataset under BASE (32 px, batch 8); returns BASE/run."""
    from synapse7.config import load_config
    from synapse7.train import train as run_training

    data = make_dataset(base / "data", n=n)
    cfg = load_config(
        data={"root": str(data), "image_size": 32, "batch_size": 8, "num_workers": 0},
        model={"backbone": "resnet18", "weights": "none", "input": input},
        train=train,
    )
    run_training(cfg, base / "run", progress=False)
    return base / "run"


# Tests never touch a GPU, also where the environment names one (GPU machines often set CUDA_VISIBLE_DEVICES):
# their tolerances and same-seed checks are the CPU's. bench/gpu.py (group `cli`) checks the GPU paths.
# SYNAPSE7_TESTS_SEE_GPU=1 leaves the variable alone.
if os.environ.get("SYNAPSE7_TESTS_SEE_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} is absent")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)


def make_easy_image(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    """An easy synthetic task: real = smooth random field, AI = the same with a periodic 2-pixel pattern."""
    base = rng.normal(128, 30, size=(size // 4, size // 4, 3))
    img = np.asarray(
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
        dtype=np.float64,
    )
    if label == 1:
        yy, xx = np.mgrid[0:size, 0:size]
        img = img + 25.0 * (((yy + xx) % 2) * 2 - 1)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path,
    generators: tuple[str, ...] = ("gen_a", "gen_b"),
    n: int = 8,
    size: int = 32,
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    rng = np.random.default_rng(seed)
    for g in generators:
        for split in splits:
            for cls, label in (("ai", 1), ("nature", 0)):
                d = root / g / split / cls
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    Image.fromarray(make_easy_image(rng, label, size)).save(d / f"{cls}_{i:03d}.{fmt}")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():  # noqa: ANN201 - a generator fixture
    """One intra-op torch thread for a module: on tiny tensors it is faster, and far faster on a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (resnet18, fft, 32 px, 2 epochs): RUN_DIR with best.ckpt / last.ckpt."""
    base = tmp_path_factory.mktemp("run")
    train_tiny(base, n=12, input="fft", epochs=2, lr=1e-3, ckpt_every_n_steps=2)
    return base


def save_untrained_checkpoint(path: Path, cfg, *, threshold: float = 0.5, seed: int = 0) -> Path:  # noqa: ANN001
    """A Synapse-7 checkpoint of an untrained net for `cfg` (a RunConfig), with non-trivial BatchNorm statistics
    so that eval-mode behaviour is really exercised. No Lightning training: a few milliseconds."""
    import torch

    from synapse7.model import build_model

    torch.manual_seed(seed)
    net = build_model(cfg.model)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {"config": cfg.to_dict()},
            "synapse7": {"threshold": threshold},
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def resize32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained resnet18 (rgb+fft) checkpoint with preprocess "resize" at 32 px, for prediction tests."""
    from synapse7.config import load_config

    cfg = load_config(
        data={"image_size": 32, "preprocess": "resize"},
        model={"backbone": "resnet18", "weights": "none", "input": "rgb+fft"},
    )
    return save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", cfg)
