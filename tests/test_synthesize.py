"""`synapse7 synthesize`: layout, pairing, identical encoding of both classes, determinism, autoencoders, bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synapse7.cli import main
from synapse7.data import discover_samples
from synapse7.demo import load_photos
from synapse7.io import open_image
from synapse7.synthesize import (
    CHAIN_METHODS,
    SynthConfig,
    TinyAutoencoder,
    checkerboard_kernel,
    parse_format,
    parse_methods,
    reconstruct,
    synthesize,
    upsample_chain,
)

N_GOOD = 6


@pytest.fixture(scope="module")
def reals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small JPEG photos (odd sizes, two subfolders) cut from scikit-image's bundled photographs,
    plus a zero-byte and a corrupt file."""
    root = tmp_path_factory.mktemp("reals")
    photos = load_photos()
    for i in range(N_GOOD):
        p = photos[i % len(photos)]
        h, w = 50 + 3 * i, 67 + 2 * i  # not multiples of 4 or 8: exercises padding and cropping back
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(p[40 : 40 + h, 30 : 30 + w])).save(
            sub / f"photo_{i}.jpg", quality=90
        )
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return root


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _chains(root: Path, reals: Path, **kw) -> list[dict[str, str]]:
    synthesize(reals, root, SynthConfig(methods=CHAIN_METHODS, **kw), log=lambda m: None)
    return _manifest(root)


def test_layout_pairing_and_loader(reals: Path, tmp_path: Path) -> None:
    rows = _chains(tmp_path / "out", reals, val_fraction=0.34)
    root = tmp_path / "out"
    assert {r["method"] for r in rows} == {f"synth_{m}" for m in CHAIN_METHODS}
    assert len(rows) == N_GOOD * len(CHAIN_METHODS)
    split_of: dict[str, str] = {}
    for r in rows:
        real, fake = root / r["real"], root / r["fake"]
        # GenImage layout, one photo's real and fake side by side in the same split
        assert real.parent == root / r["method"] / r["split"] / "nature"
        assert fake.parent == root / r["method"] / r["split"] / "ai" and real.name == fake.name
        assert split_of.setdefault(r["source"], r["split"]) == r["split"]  # same split for every method
        ri, fi = Image.open(real), Image.open(fake)
        assert ri.format == fi.format == "PNG" and ri.mode == fi.mode == "RGB" and ri.size == fi.size
        # the real is the decoded source photo, pixel for pixel (no resampling)
        src = np.asarray(open_image(r["source"]))
        np.testing.assert_array_equal(np.asarray(ri), src)
        # the fake is made from that real: recomputing it from the real and the manifest's seed gives its pixels
        method = r["method"].removeprefix("synth_up_")
        threads = torch.get_num_threads()
        torch.set_num_threads(
            1
        )  # synthesize computes with one torch thread (its arithmetic, whatever --workers)
        try:
            again, params = upsample_chain(src, method, np.random.default_rng(int(r["seed"])))
        finally:
            torch.set_num_threads(threads)
        np.testing.assert_array_equal(np.asarray(fi), again)
        assert json.loads(r["params"]) == json.loads(json.dumps(params))
        assert not np.array_equal(np.asarray(fi), src)
    assert sorted(split_of.values()).count("val") == round(N_GOOD * 0.34)
    # the project's own loader reads it, every method as a generator, both classes present
    samples = discover_samples(root, "train")
    assert {s.generator for s in samples} == {f"synth_{m}" for m in CHAIN_METHODS}
    assert sum(s.label for s in samples) == len(samples) // 2
    readme = (root / "README.md").read_text()
    assert "not images from real generators" in readme and "synth_up_tconv" in readme


def test_both_classes_encoded_identically_as_jpeg(reals: Path, tmp_path: Path) -> None:
    rows = _chains(tmp_path / "out", reals, format="jpeg:87")
    for r in rows:
        ri, fi = Image.open(tmp_path / "out" / r["real"]), Image.open(tmp_path / "out" / r["fake"])
        assert r["real"].endswith(".jpg") and r["fake"].endswith(".jpg")
        assert ri.format == fi.format == "JPEG" and ri.size == fi.size
        assert ri.quantization == fi.quantization  # same encoder, same quality tables
        assert ri.layer == fi.layer  # same chroma subsampling
        assert set(ri.info) == set(fi.info)  # neither carries metadata the other lacks


def test_same_seed_same_bytes_other_seed_other_fakes(reals: Path, tmp_path: Path) -> None:
    _chains(tmp_path / "a", reals, seed=3)
    _chains(tmp_path / "b", reals, seed=3)
    _chains(tmp_path / "c", reals, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    a.pop("synthesize.json"), b.pop("synthesize.json")
    assert a == b
    fakes_a = {k: v for k, v in a.items() if "/ai/" in k}
    assert any(c.get(k) != v for k, v in fakes_a.items())  # another seed: other factors / filters / splits


def test_workers_do_not_change_the_bytes(reals: Path, tmp_path: Path) -> None:
    cfg = {"methods": ("up_tconv", "up_bicubic"), "seed": 1}
    synthesize(reals, tmp_path / "one", SynthConfig(**cfg), log=lambda m: None)
    synthesize(reals, tmp_path / "two", SynthConfig(**cfg, workers=2), log=lambda m: None)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_crop_size_is_shared_by_real_and_fake(reals: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    synthesize(reals, tmp_path / "out", SynthConfig(methods=("up_nearest",), size=56), log=logs.append)
    rows = _manifest(tmp_path / "out")
    assert len(rows) == 4  # photos 0 and 1 are 50 and 53 px high: too small for a 56 px crop
    assert any("smaller than --size 56" in m and "photo_0.jpg" in m for m in logs)
    for r in rows:
        x, y = map(int, r["crop_xy"].split(","))
        real = np.asarray(Image.open(tmp_path / "out" / r["real"]))
        fake = np.asarray(Image.open(tmp_path / "out" / r["fake"]))
        assert real.shape == fake.shape == (56, 56, 3)
        np.testing.assert_array_equal(real, np.asarray(open_image(r["source"]))[y : y + 56, x : x + 56])


def test_bad_inputs_are_skipped_and_named(reals: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    res = synthesize(reals, tmp_path / "out", SynthConfig(methods=("up_nearest",)), log=logs.append)
    assert len(res.rows) == N_GOOD and len(res.bad) == 2
    text = "\n".join(logs)
    assert "empty.jpg: zero-byte file" in text and "corrupt.png" in text
    assert "skipped 2 bad" in text
    state = json.loads((tmp_path / "out" / "synthesize.json").read_text())
    assert len(state["bad_images"]) == 2


def test_tiny_autoencoders_reconstruct_at_native_size(reals: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(methods=("ae_upconv", "ae_tconv"), ae_steps=4, ae_crop=32, ae_batch_size=4, seed=5)
    synthesize(reals, tmp_path / "a", cfg, log=lambda m: None)
    synthesize(reals, tmp_path / "b", cfg, log=lambda m: None)
    rows = _manifest(tmp_path / "a")
    assert {r["method"] for r in rows} == {"synth_ae_upconv", "synth_ae_tconv"} and len(rows) == 2 * N_GOOD
    for r in rows:
        real = np.asarray(Image.open(tmp_path / "a" / r["real"]))
        fake = np.asarray(Image.open(tmp_path / "a" / r["fake"]))
        assert real.shape == fake.shape  # odd sizes: padded to the factor and cropped back
        assert json.loads(r["params"])["factor"] == 4
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    state = json.loads(a.pop("synthesize.json"))
    for run in (a, b):  # both hold the autoencoders' wall-clock training time, which varies
        run.pop("README.md")
    b.pop("synthesize.json")
    assert a == b  # seeded init, batches and inference: same bytes (images and manifest)
    assert state["methods"]["ae_tconv"]["steps"] == 4 and state["methods"]["ae_upconv"]["params"] > 0
    assert "Autoencoders" in (tmp_path / "a" / "README.md").read_text()


def test_methods_can_be_added_to_a_root_but_not_mixed_or_overwritten(reals: Path, tmp_path: Path) -> None:
    root = tmp_path / "out"
    synthesize(reals, root, SynthConfig(methods=("up_nearest",)), log=lambda m: None)
    synthesize(reals, root, SynthConfig(methods=("up_bilinear",)), log=lambda m: None)
    rows = _manifest(root)
    assert {r["method"] for r in rows} == {"synth_up_nearest", "synth_up_bilinear"}
    splits = {}
    for r in rows:
        assert splits.setdefault(r["source"], r["split"]) == r["split"]
    with pytest.raises(FileExistsError, match="synth_up_nearest"):
        synthesize(reals, root, SynthConfig(methods=("up_nearest",)), log=lambda m: None)
    with pytest.raises(ValueError, match="share photos, split"):
        synthesize(reals, root, SynthConfig(methods=("up_bicubic",), seed=9), log=lambda m: None)


def test_reconstruct_tiles_match_the_whole_image() -> None:
    torch.manual_seed(0)
    model = TinyAutoencoder("upconv", 4).eval()
    arr = np.random.default_rng(0).integers(0, 256, (150, 203, 3), dtype=np.uint8)
    whole = reconstruct(model, arr)
    tiled = reconstruct(model, arr, tile=64, margin=32)
    assert whole.shape == tiled.shape == arr.shape
    assert np.abs(whole.astype(int) - tiled).max() <= 1  # the margin covers the receptive field


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_checkerboard_kernel_hand_computed(factor: int) -> None:
    rng = np.random.default_rng(0)
    flat = checkerboard_kernel(factor, 0.0, rng)
    # without noise: the bilinear tent, every output phase weighted 1 -> a grey image stays grey
    gains = flat.numpy().reshape(2, factor, 2, factor).sum(axis=(0, 2))
    np.testing.assert_allclose(gains, np.ones((factor, factor)), atol=1e-6)
    if factor == 2:
        t = np.array([0.25, 0.75, 0.75, 0.25])
        np.testing.assert_allclose(flat.numpy(), np.outer(t, t), atol=1e-6)
    grey = np.full((40, 44, 3), 128, np.uint8)
    fake, params = upsample_chain(grey, "tconv", np.random.default_rng(1))
    inner = fake[8:-8, 8:-8, 0].astype(int)
    f = params["factor"]
    # with noise: an f-periodic pattern on a flat input (the checkerboard), constant along each phase
    assert inner.std() > 0
    assert all(len(np.unique(inner[a::f, b::f])) == 1 for a in range(f) for b in range(f))


def test_parse_methods_and_format() -> None:
    assert parse_methods("chains") == CHAIN_METHODS
    assert parse_methods("synth_ae_tconv,up_nearest") == ("ae_tconv", "up_nearest")
    assert parse_format("jpeg:90") == ("jpeg", 90) and parse_format("PNG") == ("png", None)
    for bad in ("jpeg:0", "jpeg:x", "webp", "jpeg"):
        with pytest.raises(ValueError, match="expected 'png' or 'jpeg:Q'"):
            parse_format(bad)
    with pytest.raises(ValueError, match="unknown method"):
        SynthConfig(methods=parse_methods("up_lanczos"))


def test_cli(reals: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "synthesize",
            "--real",
            str(reals),
            "--out",
            str(out),
            "--methods",
            "up_nearest,synth_up_tconv",
            "--seed",
            "2",
            "--val-fraction",
            "0.5",
            "--max-images",
            "4",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["methods"] == ["synth_up_nearest", "synth_up_tconv"]
    # 4 of the 8 files are drawn; any of them may be one of the 2 bad ones
    assert summary["pairs"] == 2 * (4 - summary["skipped"])
    assert len(list((out / "synth_up_tconv").rglob("*.png"))) == 2 * (4 - summary["skipped"])
    rc = main(["synthesize", "--real", str(reals), "--out", str(tmp_path / "x"), "--format", "gif"])
    assert rc == 1 and "unknown output format 'gif'" in capsys.readouterr().err
    rc = main(["synthesize", "--real", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    assert rc == 1 and "is not a directory" in capsys.readouterr().err


def test_png_bytes_hold_no_metadata(reals: Path, tmp_path: Path) -> None:
    rows = _chains(tmp_path / "out", reals)
    for key in ("real", "fake"):
        img = Image.open(io.BytesIO((tmp_path / "out" / rows[0][key]).read_bytes()))
        assert img.info == {} or set(img.info) <= {"dpi"}, img.info
