"""Frozen-trunk feature cache: equality with the full forward, hits, invalidation, refusal, checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synapse7.backbones import backbone_names, get_backbone_spec
from synapse7.cache import (
    CachedFeatureDataset,
    CacheRefused,
    FrozenTrunk,
    TrainableTail,
    build_entry,
    check_cacheable,
    key_parts,
    make_key,
    plan_split,
)
from synapse7.config import RunConfig, load_config
from synapse7.data import MultiGenDataset, build_datasets
from synapse7.demo import make_demo_dataset
from synapse7.model import build_model
from synapse7.predict import Detector

SIZE = 32
# Cached features are float16 (relative precision 2**-11); through the tail that gave logit errors ~1e-3 here.
LOGIT_ATOL = 2e-2


def _cfg(root: Path, cache: Path | None, **model: str) -> RunConfig:
    return load_config(
        data={
            "root": str(root),
            "image_size": SIZE,
            "preprocess": "crop",
            "train_crop": "center",
            "batch_size": 8,
            "num_workers": 0,
        },
        model={
            "backbone": "resnet18",
            "weights": "none",
            "input": "fft",
            "trainable": "stage4,head",
            **model,
        },
        train={
            "epochs": 2,
            "accelerator": "cpu",
            "devices": "1",
            "seed": 0,
            "feature_cache": str(cache) if cache else None,
        },
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), size=SIZE, n_train=6, n_val=3)


def _net(cfg: RunConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "trainable,point,shape",
    [
        ("stage4,head", "layer3", (256, 2, 2)),
        ("linear-probe", "pool", (512,)),
        ("stage2,stage4,head", "layer1", (64, 8, 8)),
    ],
)
def test_split_reproduces_full_forward(tmp_path: Path, trainable: str, point: str, shape: tuple) -> None:
    net = _net(_cfg(tmp_path, None, trainable=trainable))
    split = plan_split(net)
    assert split.point == point and split.linear_probe == (point == "pool")
    x = _images()
    with torch.no_grad():
        feats = FrozenTrunk(net, split)(x)
        assert tuple(feats.shape[1:]) == shape
        torch.testing.assert_close(TrainableTail(net, split)(feats), net(x), rtol=1e-5, atol=1e-5)
        # Only what the cache feeds is frozen; the tail holds every trainable parameter.
    frozen = set(split.frozen_modules)
    for name, p in net.named_parameters():
        assert not (p.requires_grad and any(name.startswith(m + ".") for m in frozen)), name


@pytest.mark.parametrize("name", backbone_names())
def test_every_backbone_splits_from_its_registry_row(tmp_path: Path, name: str) -> None:
    missing = [p for p in get_backbone_spec(name).requires if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    # The last stage that has modules trains with the head (stage4 for ImageNet backbones; npr_resnet has two).
    stages = get_backbone_spec(name).stages
    last = next(s for s in ("stage4", "stage3", "stage2") if stages.get(s))
    net = _net(_cfg(tmp_path, None, backbone=name, input="rgb", trainable=f"{last},head"))
    for (
        m
    ) in net.modules():  # ConvNeXt/Swin: stochastic depth off, else their frozen stages are refused (below)
        if type(m).__name__ == "StochasticDepth":
            m.p = 0.0
    split = plan_split(net)
    assert (
        0 < split.n_frozen < len(split.steps) and split.steps[-1].name == "pool"
    )  # last stage and head train
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(
            TrainableTail(net, split)(FrozenTrunk(net, split)(x)), net(x), rtol=1e-5, atol=1e-5
        )


def test_random_frozen_layers_are_refused(tmp_path: Path) -> None:
    net = build_model(
        _cfg(tmp_path, None, backbone="convnext_tiny").model
    )  # stochastic depth in frozen stages
    with pytest.raises(CacheRefused, match="StochasticDepth"):
        plan_split(net)


@pytest.mark.parametrize("model", [{"trainable": "all"}, {"input": "rgb+fft"}])
def test_nothing_frozen_is_refused(tmp_path: Path, model: dict[str, str]) -> None:
    with pytest.raises(CacheRefused, match="no backbone stage is frozen"):
        plan_split(build_model(_cfg(tmp_path, None, **model).model))


def test_augmentation_and_multi_process_are_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path / "c")
    check_cacheable(cfg, [])
    for aug in ("aug_blur_prob", "aug_jpeg_prob", "aug_resize_prob"):
        with pytest.raises(CacheRefused, match="augmentation"):
            check_cacheable(cfg.override(data={aug: 0.1}), [])
    with pytest.raises(CacheRefused, match="augmentation"):
        check_cacheable(cfg, [lambda im: im])
    with pytest.raises(CacheRefused, match="multi-process"):
        check_cacheable(cfg.override(train={"devices": "2"}), [])


def _entry(cfg: RunConfig, net: torch.nn.Module, ds: MultiGenDataset, root: Path):
    split = plan_split(net)
    parts = key_parts(cfg, net, split, [s.path for s in ds.samples])
    return build_entry(root, "val", parts, FrozenTrunk(net, split), ds, batch_size=8), split


def test_cached_features_equal_full_forward(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "cache")
    net = _net(cfg)
    _, val = build_datasets(cfg.data)
    entry, split = _entry(cfg, net, val, tmp_path / "cache")
    assert not entry.hit and entry.features.is_file()
    cached = CachedFeatureDataset(entry, val)
    assert np.load(entry.features, mmap_mode="r").dtype == np.float16
    feats = torch.stack([cached[i]["image"] for i in range(len(val))])
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    with torch.no_grad():
        full = FrozenTrunk(net, split)(images)
        torch.testing.assert_close(feats, full, rtol=2e-3, atol=2e-3)  # fp16 rounding of the stored features
        torch.testing.assert_close(TrainableTail(net, split)(feats), net(images), rtol=0, atol=LOGIT_ATOL)
    assert [cached[i]["label"] for i in range(len(val))] == [s.label for s in val.samples]


def test_invalidation(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_demo_dataset(root, size=SIZE, n_train=1, n_val=2)
    cache = tmp_path / "cache"
    cfg = _cfg(root, cache)
    net = _net(cfg)
    _, val = build_datasets(cfg.data)
    first, split = _entry(cfg, net, val, cache)
    assert not first.hit
    again, _ = _entry(cfg, net, val, cache)
    assert again.hit and again.key == first.key

    # A trainable weight (layer4) does not touch the cached part: still a hit.
    with torch.no_grad():
        net.backbone.layer4[0].conv1.weight.add_(1.0)
    assert _entry(cfg, net, val, cache)[0].hit

    # A frozen weight changes the key and recomputes.
    with torch.no_grad():
        net.backbone.layer1[0].conv1.weight.mul_(1.01)
    e = _entry(cfg, net, val, cache)[0]
    assert not e.hit and e.key != first.key
    key_w = e.key

    # A file's content (same name, same size on disk is not needed: the bytes are hashed).
    victim = Path(val.samples[0].path)
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] ^= 1
    Image.fromarray(arr).save(victim)
    e = _entry(cfg, net, val, cache)[0]
    assert not e.hit and e.key != key_w
    key_f = e.key

    # The image size the data is prepared at.
    cfg2 = cfg.override(data={"image_size": SIZE + 8})
    e = _entry(cfg2, net, build_datasets(cfg2.data)[1], cache)[0]
    assert not e.hit and e.key != key_f and e.shape == (256, 3, 3)
    # Only the newest entry of a split is kept.
    assert len(list(cache.glob("val-*"))) == 1


def test_key_covers_preprocessing_and_code(data_root: Path) -> None:
    cfg = _cfg(data_root, None)
    net = _net(cfg)
    split = plan_split(net)
    files = [s.path for s in build_datasets(cfg.data)[1].samples]
    base = make_key(key_parts(cfg, net, split, files))
    for data in (
        {"preprocess": "resize"},
        {"fast_decode": True},
        {"align": "png"},
        {"mean": (0.5, 0.5, 0.5)},
    ):
        assert make_key(key_parts(cfg.override(data=data), net, split, files)) != base, data
    assert make_key(key_parts(cfg, net, split, files[::-1])) != base  # order = row mapping
    parts = key_parts(cfg, net, split, files)
    parts["code"]["torch"] = "0.0"
    assert make_key(parts) != base


class _Counter:
    def __init__(self) -> None:
        self.trunk_batches = 0
        self.images_decoded = 0


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> _Counter:
    c = _Counter()
    trunk_forward, getitem = FrozenTrunk.forward, MultiGenDataset.__getitem__

    def forward(self, x):  # noqa: ANN001, ANN202
        c.trunk_batches += 1
        return trunk_forward(self, x)

    def item(self, i):  # noqa: ANN001, ANN202
        c.images_decoded += 1
        return getitem(self, i)

    monkeypatch.setattr(FrozenTrunk, "forward", forward)
    monkeypatch.setattr(MultiGenDataset, "__getitem__", item)
    return c


def test_training_hits_cache_and_writes_a_normal_checkpoint(
    data_root: Path, tmp_path: Path, counted: _Counter, capsys: pytest.CaptureFixture
) -> None:
    from synapse7.train import train

    cache = tmp_path / "cache"
    cfg = _cfg(data_root, cache)
    n_train, n_val = (len(d) for d in build_datasets(cfg.data))
    counted.images_decoded = 0
    res = train(cfg, tmp_path / "run1", progress=False)
    assert res.epochs_run == 2
    # Each image went through decode + trunk exactly once (plus one dummy shape probe per split), for 2 epochs.
    batches = -(-n_train // 8) + -(-n_val // 8)
    assert counted.images_decoded == n_train + n_val
    assert counted.trunk_batches == batches + 2
    assert "feature cache: computed" in capsys.readouterr().err

    # A second run with the same data, config and weights reads the cache only: no decode, no trunk.
    counted.images_decoded = counted.trunk_batches = 0
    train(cfg, tmp_path / "run2", progress=False)
    assert counted.images_decoded == 0
    assert counted.trunk_batches == 0
    assert "feature cache: reusing" in capsys.readouterr().err

    # The checkpoint is a normal full Synapse-7 checkpoint: Detector gives the same P(AI) as the cached path.
    ckpt = torch.load(res.best_ckpt, map_location="cpu", weights_only=True)
    assert all(k.startswith("net.") or k.startswith("val_") for k in ckpt["state_dict"])
    det = Detector.from_checkpoint(res.best_ckpt, device="cpu")
    _, val = build_datasets(cfg.data)
    paths = [s.path for s in val.samples]
    p_det = np.array([p.p_ai for p in det.predict_paths(paths, batch_size=8, num_workers=0)])
    split = plan_split(det.net)
    entry = build_entry(
        cache,
        f"val-{split.point}",
        key_parts(det.cfg, det.net, split, paths),
        FrozenTrunk(det.net, split),
        val,
    )
    assert entry.hit  # the frozen weights in the checkpoint are the ones the cache was built with
    feats = torch.stack([CachedFeatureDataset(entry, val)[i]["image"] for i in range(len(val))])
    with torch.no_grad():
        p_cache = torch.sigmoid(TrainableTail(det.net.float(), split)(feats.contiguous())).numpy()
    np.testing.assert_allclose(p_det, p_cache, atol=5e-3)


def test_linear_probe_trains_on_pooled_features(data_root: Path, tmp_path: Path, counted: _Counter) -> None:
    from synapse7.train import train

    cfg = _cfg(data_root, tmp_path / "cache", trainable="linear-probe").override(train={"epochs": 1})
    res = train(cfg, tmp_path / "run", progress=False)
    entries = list((tmp_path / "cache").glob("train-pool-*"))
    assert len(entries) == 1 and np.load(entries[0] / "features.npy", mmap_mode="r").shape[1:] == (512,)
    assert Detector.from_checkpoint(res.best_ckpt, device="cpu").predict(np.zeros((SIZE, SIZE, 3), np.uint8))


def test_augmentation_falls_back_to_normal_training(
    data_root: Path, tmp_path: Path, counted: _Counter, capsys: pytest.CaptureFixture
) -> None:
    from synapse7.train import train

    cache = tmp_path / "cache"
    cfg = _cfg(data_root, cache).override(data={"aug_blur_prob": 0.5}, train={"epochs": 1})
    counted.images_decoded = 0
    train(cfg, tmp_path / "run", progress=False)
    assert "feature cache not used: random training augmentation" in capsys.readouterr().err
    assert counted.trunk_batches == 0 and not cache.exists()
    assert counted.images_decoded > 0  # trained on images
