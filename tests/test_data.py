from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_dataset
from synapse7.data import LayoutError, MultiGenDataset, build_loader, discover_samples, find_generators
from synapse7.io import BadImageError
from synapse7.transforms import ClassificationPreset

PRESET = ClassificationPreset(crop_size=32, resize_size=36)


def test_multi_generator_discovery_and_labels(tiny_data: Path) -> None:
    samples = discover_samples(tiny_data, "train")
    assert {s.generator for s in samples} == {"gen_a", "gen_b"}
    for s in samples:
        assert s.label == (1 if "/ai/" in s.path else 0)
    ds = MultiGenDataset(tiny_data, "val", PRESET)
    assert ds.generators == ["gen_a", "gen_b"]
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert ds.generators[item["generator"]] == ds.samples[0].generator


def test_single_generator_root_and_cnndetection_names(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "sd14", generators=("x",), n=3)
    single = root / "x"
    assert list(find_generators(single, "train")) == ["x"]
    # CNNDetection-style class folders
    (single / "train" / "ai").rename(single / "train" / "1_fake")
    (single / "train" / "nature").rename(single / "train" / "0_real")
    samples = discover_samples(single, "train")
    assert sorted({s.label for s in samples}) == [0, 1]
    assert all(s.label == 1 for s in samples if "1_fake" in s.path)


def test_extensions_any_case_and_modes(tmp_path: Path) -> None:
    d = tmp_path / "g" / "val"
    (d / "ai").mkdir(parents=True)
    (d / "nature").mkdir(parents=True)
    Image.new("RGB", (40, 40), (10, 20, 30)).save(d / "ai" / "a.JPG", "JPEG")
    Image.new("RGBA", (40, 40), (10, 20, 30, 100)).save(d / "ai" / "b.PnG")
    Image.new("CMYK", (40, 40)).save(d / "nature" / "c.jpeg", "JPEG")
    Image.new("P", (40, 40)).save(d / "nature" / "d.webp", "WEBP")
    Image.new("I;16", (40, 40), 40000).save(d / "nature" / "e.png")
    Image.new("L", (40, 40), 7).save(d / "nature" / "f.bmp")
    (d / "nature" / "notes.txt").write_text("not an image")
    ds = MultiGenDataset(tmp_path, "val", PRESET)
    assert len(ds) == 6
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, 32, 32)


def test_bad_images_skip_and_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", generators=("g",), n=2, splits=("val",))
    bad_dir = root / "g" / "val" / "ai"
    (bad_dir / "zero.png").write_bytes(b"")
    good = (bad_dir / "ai_000.png").read_bytes()
    (bad_dir / "trunc.png").write_bytes(good[: len(good) // 2])
    ds = MultiGenDataset(root, "val", PRESET, on_bad_image="skip")
    batch = next(iter(build_loader(ds, batch_size=16, num_workers=0)))
    bad_names = sorted(Path(ds.samples[i].path).name for i, _ in batch["bad"])
    assert bad_names == ["trunc.png", "zero.png"]
    assert batch["image"].shape[0] == len(ds) - 2
    ds_err = MultiGenDataset(root, "val", PRESET, on_bad_image="error")
    with pytest.raises(BadImageError, match=r"(trunc|zero)\.png: (corrupt|zero-byte)"):
        for i in range(len(ds_err)):
            ds_err[i]


def test_wrong_layout_shows_expected_tree(tmp_path: Path) -> None:
    (tmp_path / "oops" / "images").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"expected layout.*\n.*ROOT/<generator>/train/ai"):
        discover_samples(tmp_path / "oops", "train")
    with pytest.raises(LayoutError, match="not a directory"):
        discover_samples(tmp_path / "missing", "train")


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", generators=("g",), n=1)
    for f in (root / "g" / "val").rglob("*.png"):
        f.unlink()
    with pytest.raises(LayoutError, match="holds no images"):
        discover_samples(root, "val")


def test_generator_selection(tiny_data: Path) -> None:
    assert {s.generator for s in discover_samples(tiny_data, "train", ["gen_b"])} == {"gen_b"}
    with pytest.raises(LayoutError, match="gen_zzz"):
        discover_samples(tiny_data, "train", ["gen_zzz"])


def test_symlinked_dir_loop_does_not_hang(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", generators=("g",), n=1)
    (root / "g" / "train" / "ai" / "loop").symlink_to(root / "g" / "train" / "ai")
    assert len(discover_samples(root, "train")) == 2
    shutil.rmtree(root)
