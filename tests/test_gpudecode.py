"""`predict --gpu-decode` (synapse7.gpudecode): the batched-decode path, run on the CPU here.

On a machine without CUDA the flag falls back to the usual worker decoding; the batched path itself (bytes in
the workers, one `decode_jpeg` call per batch, the preset's geometry on the device, per-file fallbacks) is forced
onto the CPU device in these tests, so every line of it runs in CI. docs/performance.md measures it on a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synapse7.demo import load_photos
from synapse7.gpudecode import (
    BatchDecoder,
    EncodedFileDataset,
    apply_orientation,
    collate_encoded,
    default_gpu_share,
    goes_to_gpu,
    probe_jpeg,
)
from synapse7.io import DEFAULT_MAX_PIXELS
from synapse7.predict import Detector
from synapse7.transforms import ClassificationPreset

PIL_EXIF = {  # what ImageOps.exif_transpose does for each orientation
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _jpeg_with_orientation(path: Path, arr: np.ndarray, orientation: int) -> None:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, quality=92, exif=exif)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """JPEGs of several sizes (colour, greyscale, EXIF-rotated, progressive) and files that must not take the
    batched path (PNG, CMYK, truncated, zero-byte, not an image, too small)."""
    d = tmp_path_factory.mktemp("gpudecode")
    photos = load_photos()
    out: dict[str, str] = {}

    def save(name: str, img: Image.Image, **kw: object) -> None:
        img.save(d / name, **kw)
        out[name] = str(d / name)

    save("a.jpg", Image.fromarray(photos[0][:300, :320]), quality=90)
    save("b.jpg", Image.fromarray(photos[1][:300, :320]), quality=90)  # same size as a: resized together
    save("wide.jpg", Image.fromarray(photos[2][:120, :400]), quality=85)
    save("grey.jpg", Image.fromarray(photos[3][:200, :260]).convert("L"), quality=90)
    save("progressive.jpg", Image.fromarray(photos[0][:210, :250]), quality=90, progressive=True)
    _jpeg_with_orientation(d / "rot6.jpg", photos[1][:180, :240], 6)
    out["rot6.jpg"] = str(d / "rot6.jpg")
    save("cmyk.jpg", Image.fromarray(photos[2][:150, :150]).convert("CMYK"), quality=90)
    save("c.png", Image.fromarray(photos[3][:160, :170]))
    full = (d / "a.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    out["truncated.jpg"] = str(d / "truncated.jpg")
    (d / "empty.jpg").write_bytes(b"")
    out["empty.jpg"] = str(d / "empty.jpg")
    (d / "text.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out["text.jpg"] = str(d / "text.jpg")
    save("tiny.jpg", Image.fromarray(photos[0][:6, :6]), quality=90)
    return out


@pytest.fixture(scope="module")
def checkpoint(resize32_checkpoint: Path) -> Path:
    return resize32_checkpoint


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil(orientation: int) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(4, 5, 3) * 3
    want = Image.fromarray(arr)
    if orientation in PIL_EXIF:
        want = want.transpose(PIL_EXIF[orientation])
    got = apply_orientation(torch.from_numpy(arr).permute(2, 0, 1), orientation)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), np.asarray(want))


def test_probe_sends_only_plain_complete_jpegs_to_the_batch(files: dict[str, str]) -> None:
    for name in ("a.jpg", "grey.jpg", "progressive.jpg", "rot6.jpg", "wide.jpg"):
        got = probe_jpeg(files[name], max_pixels=DEFAULT_MAX_PIXELS)
        assert got is not None, name
        info, data = got
        assert data == Path(files[name]).read_bytes()
    assert probe_jpeg(files["rot6.jpg"], max_pixels=DEFAULT_MAX_PIXELS)[0].orientation == 6
    info = probe_jpeg(files["a.jpg"], max_pixels=DEFAULT_MAX_PIXELS)[0]
    assert (info.width, info.height, info.orientation) == (320, 300, 1)
    for name in ("cmyk.jpg", "c.png", "truncated.jpg", "empty.jpg", "text.jpg"):
        assert probe_jpeg(files[name], max_pixels=DEFAULT_MAX_PIXELS) is None, name
    assert probe_jpeg(files["a.jpg"], max_pixels=320 * 300 - 1) is None  # over the pixel limit
    assert probe_jpeg(files["a.jpg"], max_pixels=DEFAULT_MAX_PIXELS, min_side=301) is None
    assert probe_jpeg("/nonexistent/x.jpg", max_pixels=DEFAULT_MAX_PIXELS) is None


@pytest.mark.timeout(30)
def test_probe_does_not_read_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert probe_jpeg(fifo, max_pixels=DEFAULT_MAX_PIXELS) is None  # would block forever if it opened it


@pytest.mark.parametrize(
    "preset",
    [
        ClassificationPreset(crop_size=64, resize_size=73),
        ClassificationPreset(crop_size=48, preprocess="crop", crops=4),
        ClassificationPreset(crop_size=32, resize_size=40, crops=9, interpolation="bicubic"),
    ],
    ids=["resize", "crop-grid", "resize-grid-bicubic"],
)
def test_batch_decoder_matches_the_cpu_path(files: dict[str, str], preset: ClassificationPreset) -> None:
    paths = list(files.values())
    ds = EncodedFileDataset(paths, preset, max_pixels=DEFAULT_MAX_PIXELS)
    items = [ds[i] for i in range(len(ds))]
    batched = {Path(paths[it["index"]]).name for it in items if "jpeg" in it}
    plain = {"a.jpg", "b.jpg", "wide.jpg", "grey.jpg", "progressive.jpg", "rot6.jpg"}
    # "crop" pads images smaller than the crop: the CPU path does that, so the 6 px JPEG goes there
    assert batched == (plain if preset.preprocess == "crop" else plain | {"tiny.jpg"})
    crops, order, bad = BatchDecoder(preset, torch.device("cpu"), paths, max_pixels=DEFAULT_MAX_PIXELS)(
        collate_encoded(items)
    )
    for i, p in enumerate(paths):
        name = Path(p).name
        try:
            want = preset.load(p, max_pixels=DEFAULT_MAX_PIXELS)
        except Exception as e:  # noqa: BLE001 - the CPU path's error is what the batched path must give
            assert i in bad and i not in order, name
            assert bad[i] == e.reason, name
            continue
        got = crops[order.index(i)]
        assert got.shape == want.shape and got.dtype == torch.uint8, name
        # torchvision's libjpeg-turbo and Pillow's decode alike; the geometry is the same code
        diff = (got.int() - want.int()).abs()
        assert diff.float().mean() < 0.5 and diff.max() <= 8, (name, diff.float().mean(), diff.max())
    assert {Path(paths[i]).name for i in bad} == {"truncated.jpg", "empty.jpg", "text.jpg"}


def test_a_jpeg_the_batched_decoder_refuses_goes_to_the_cpu_path(
    files: dict[str, str], tmp_path: Path
) -> None:
    # Complete framing (SOI ... EOI) and a sound header, so the probe passes it, but a bogus Huffman table
    # (code counts summing past 256), which only the decoder reads.
    good = Path(files["a.jpg"]).read_bytes()
    dht = good.index(b"\xff\xc4")
    broken = bytearray(good)
    broken[dht + 5 : dht + 21] = b"\xff" * 16
    p = tmp_path / "bogus_huffman.jpg"
    p.write_bytes(bytes(broken))
    preset = ClassificationPreset(crop_size=32, resize_size=40)
    paths = [files["a.jpg"], str(p), files["b.jpg"]]
    ds = EncodedFileDataset(paths, preset, max_pixels=DEFAULT_MAX_PIXELS)
    items = [ds[i] for i in range(3)]
    assert all("jpeg" in it for it in items)
    crops, order, bad = BatchDecoder(preset, torch.device("cpu"), paths, max_pixels=DEFAULT_MAX_PIXELS)(
        collate_encoded(items)
    )
    assert order == [0, 2] and list(bad) == [1] and "corrupt" in bad[1]
    assert crops.shape == (2, 3, 32, 32)


def test_pil_ops_take_the_cpu_path_for_every_file(files: dict[str, str]) -> None:
    preset = ClassificationPreset(crop_size=32, resize_size=40, pre_ops=[lambda im: im])
    ds = EncodedFileDataset([files["a.jpg"]], preset, max_pixels=DEFAULT_MAX_PIXELS)
    assert "image" in ds[0]


def test_without_cuda_the_flag_falls_back(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    det = Detector.from_checkpoint(checkpoint, device="cpu", gpu_decode=True)
    assert det.gpu_decode is False
    assert "--gpu-decode needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("crops", [1, 4])
def test_predict_paths_with_the_batched_path_forced_on_cpu(
    checkpoint: Path, files: dict[str, str], crops: int
) -> None:
    paths = list(files.values()) * 2  # more batches than one, and an all-bad batch (batch_size 3)
    paths = [*paths, files["empty.jpg"], files["text.jpg"], files["truncated.jpg"]]
    plain = Detector.from_checkpoint(checkpoint, device="cpu", crops=crops)
    forced = Detector.from_checkpoint(checkpoint, device="cpu", crops=crops)
    forced.gpu_decode = True  # the GPU path's code, on the CPU device
    stats: dict[str, float] = {}
    want = list(plain.predict_paths(paths, batch_size=3, num_workers=0))
    got = list(forced.predict_paths(paths, batch_size=3, num_workers=0, stats=stats))
    assert [p.path for p in got] == [p.path for p in want] == paths
    assert [p.label == "ERROR" for p in got] == [p.label == "ERROR" for p in want]
    assert [p.error for p in got] == [p.error for p in want]
    ok = [i for i, p in enumerate(want) if p.error is None]
    assert len(ok) >= 12
    np.testing.assert_allclose([got[i].p_ai for i in ok], [want[i].p_ai for i in ok], rtol=0, atol=2e-3)
    assert stats["images"] == len(paths) and 0 <= stats["wait_s"] <= stats["total_s"]


def test_predict_paths_reports_loader_wait(checkpoint: Path, files: dict[str, str]) -> None:
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    stats: dict[str, float] = {}
    preds = list(
        det.predict_paths([files["a.jpg"], files["c.png"]], batch_size=1, num_workers=1, stats=stats)
    )
    assert [p.label != "ERROR" for p in preds] == [True, True]
    assert stats["images"] == 2 and 0 < stats["wait_s"] <= stats["total_s"]


def test_an_ensemble_on_a_cpu_prints_the_gpu_decode_note_once(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ens = Detector.from_checkpoints([checkpoint, checkpoint], device="cpu", gpu_decode=True)
    assert not ens.gpu_decode
    assert capsys.readouterr().err.count("--gpu-decode needs a CUDA device") == 1


def test_cli_accepts_gpu_decode_on_a_cpu_machine(checkpoint: Path, files: dict[str, str]) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "synapse7.cli",
            "predict",
            files["a.jpg"],
            files["c.png"],
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
            "--gpu-decode",
            "--gpu-share",
            "0.5",
            "--num-workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--gpu-decode needs a CUDA device" in r.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "synapse7.cli",
            "predict",
            files["a.jpg"],
            "--gpu-decode",
            "--gpu-share",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--gpu-share" in bad.stderr and "out of range" in bad.stderr
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == [files["a.jpg"], files["c.png"]]


def test_a_share_of_the_jpegs_goes_to_the_gpu_and_the_rest_to_the_workers(
    checkpoint: Path, files: dict[str, str]
) -> None:
    assert default_gpu_share(0) == 1.0 and 0.4 < default_gpu_share(14) < 0.5
    assert abs(sum(goes_to_gpu(i, 0.3) for i in range(10_000)) / 10_000 - 0.3) < 0.01
    preset = ClassificationPreset(crop_size=32, resize_size=40)
    jpegs = [files[n] for n in ("a.jpg", "b.jpg", "wide.jpg", "grey.jpg", "progressive.jpg", "rot6.jpg")] * 4
    kinds = {
        share: [
            "jpeg" in EncodedFileDataset(jpegs, preset, max_pixels=DEFAULT_MAX_PIXELS, gpu_share=share)[i]
            for i in range(len(jpegs))
        ]
        for share in (0.0, 0.5, 1.0)
    }
    assert not any(kinds[0.0]) and all(kinds[1.0]) and 6 <= sum(kinds[0.5]) <= 18
    with pytest.raises(ValueError, match="gpu_share"):
        EncodedFileDataset(jpegs, preset, max_pixels=DEFAULT_MAX_PIXELS, gpu_share=1.5)
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    want = [p.p_ai for p in det.predict_paths(jpegs, batch_size=5, num_workers=0)]
    det.gpu_decode = True
    got = [p.p_ai for p in det.predict_paths(jpegs, batch_size=5, num_workers=0, gpu_share=0.5)]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


@pytest.mark.shared
def test_shipped_model_gives_the_same_verdicts_through_the_batched_path_on_real_photos() -> None:
    from conftest import SHARED_DATA

    paths = sorted(str(p) for p in (SHARED_DATA / "genimage-mini").glob("*/val/nature/*"))[:48]
    assert len(paths) >= 40
    det = Detector.default(device="cpu")
    want = list(det.predict_paths(paths, batch_size=16, num_workers=0))
    det.gpu_decode = True  # ImageNet JPEGs through the batched decoder (libjpeg-turbo here, nvJPEG on a GPU)
    got = list(det.predict_paths(paths, batch_size=16, num_workers=0))
    assert sum(p.error is None for p in want) >= 40
    assert [p.label for p in got] == [p.label for p in want]
    # on the CPU both decoders are libjpeg-turbo: identical pixels on this machine (2026-12-04), so P(AI) too
    np.testing.assert_allclose([p.p_ai for p in got], [p.p_ai for p in want], rtol=0, atol=1e-3)
