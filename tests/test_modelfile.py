"""Safe model files: safetensors + JSON export/import, weights_only checkpoints, the shipped default model."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_easy_image, save_untrained_checkpoint
from synapse7 import modelfile
from synapse7.cli import main
from synapse7.config import load_config
from synapse7.predict import Detector, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        data={"image_size": 32, "preprocess": "crop"},
        model={"backbone": "resnet18", "weights": "none", "input": "rgb+fft"},
    )
    return save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", cfg, threshold=0.37)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Images generated here: smooth fields and the same with a periodic pattern, PNG, 48 px."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        p = d / f"img_{i}.png"
        Image.fromarray(make_easy_image(rng, i % 2, 48)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def default_dir(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in default model (an untrained tiny net, fp16) with its MANIFEST, made as bench/release.py does."""
    folder = tmp_path / "weights"
    weights = modelfile.export_checkpoint(
        load_checkpoint(ckpt),
        folder / "default.safetensors",
        dtype="fp16",
        extra={
            "model_version": "test-1",
            "card": {
                "summary": "TEST MODEL",
                "source": "made in a test",
                "figures": [
                    {
                        "set": "x",
                        "n": 4,
                        "roc_auc": 0.5,
                        "accuracy": 0.5,
                        "real_accuracy": 1.0,
                        "fake_accuracy": 0.0,
                        "held_out": True,
                    }
                ],
            },
        },
    )
    modelfile.write_manifest(folder, weights, "test-1")
    monkeypatch.setenv(modelfile.DEFAULT_DIR_ENV, str(folder))
    return folder


def _p(det: Detector, paths: list[str]) -> np.ndarray:
    return np.array([p.p_ai for p in det.predict(paths)])


def test_safetensors_round_trip_equals_checkpoint(ckpt: Path, images: list[str], tmp_path: Path) -> None:
    ref = Detector.from_checkpoint(ckpt, device="cpu")
    assert (
        main(["export", "--format", "safetensors", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m")])
        == 0
    )
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["sha256"] == modelfile.sha256_file(tmp_path / "m" / "model.safetensors")
    assert meta["threshold"] == pytest.approx(0.37) and meta["config"] == ref.cfg.to_dict()
    det = Detector.from_checkpoint(tmp_path / "m", device="cpu")  # a model folder
    assert det.threshold == pytest.approx(0.37)
    np.testing.assert_array_equal(_p(det, images), _p(ref, images))  # fp32: bit-identical
    # fp16 halves the file and moves P(AI) only a little
    fp16 = modelfile.export_checkpoint(load_checkpoint(ckpt), tmp_path / "h.safetensors", dtype="fp16")
    assert fp16.stat().st_size < 0.6 * (tmp_path / "m" / "model.safetensors").stat().st_size
    np.testing.assert_allclose(
        _p(Detector.from_checkpoint(fp16, device="cpu"), images), _p(ref, images), atol=2e-2
    )


def test_safetensors_load_reads_no_pickle(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = modelfile.export_checkpoint(load_checkpoint(ckpt), tmp_path / "m.safetensors")

    def no_pickle(*a: object, **k: object) -> None:
        raise AssertionError("torch.load called for a safetensors model")

    monkeypatch.setattr(torch, "load", no_pickle)
    assert Detector.from_checkpoint(out, device="cpu").net is not None


def test_tampered_safetensors_is_refused(ckpt: Path, tmp_path: Path) -> None:
    out = modelfile.export_checkpoint(load_checkpoint(ckpt), tmp_path / "m.safetensors")
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(modelfile.ModelFileError, match="SHA-256"):
        load_checkpoint(out)
    out.with_suffix(".json").unlink()
    with pytest.raises(modelfile.ModelFileError, match="m.json"):
        load_checkpoint(out)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_that_would_run_code_is_refused(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    evil = load_checkpoint(ckpt)
    evil["synapse7"]["payload"] = _RunsCode(marker)
    bad = tmp_path / "evil.ckpt"
    torch.save(evil, bad)
    with pytest.raises(ValueError, match="evil.ckpt"):
        load_checkpoint(bad)
    assert not marker.exists()
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert main(["predict", "--checkpoint", str(bad), str(img)]) == 1
    assert "evil.ckpt" in capsys.readouterr().err and not marker.exists()
    # the same file passed as --weights (initial weights for training) is refused too
    from synapse7.backbones import WeightsUnavailableError
    from synapse7.model import build_model

    with pytest.raises(WeightsUnavailableError, match="evil.ckpt"):
        build_model(load_config(model={"backbone": "resnet18", "weights": str(bad), "input": "rgb"}).model)
    assert not marker.exists()


def test_best_ckpt_has_no_optimizer_state(trained_run: Path) -> None:
    run = trained_run / "run"
    best, last = load_checkpoint(run / "best.ckpt"), load_checkpoint(run / "last.ckpt")
    assert "optimizer_states" in last and "lr_schedulers" in last  # --resume needs them
    assert "optimizer_states" not in best and "lr_schedulers" not in best
    assert "synapse7" in best and best["hyper_parameters"] == last["hyper_parameters"]
    assert (run / "best.ckpt").stat().st_size < 0.5 * (run / "last.ckpt").stat().st_size
    assert Detector.from_checkpoint(run / "best.ckpt", device="cpu").net is not None


def test_default_model_loads_offline_and_is_deterministic(
    default_dir: Path, images: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("network access while loading the default model")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    a = _p(Detector.default(device="cpu"), images)
    b = _p(Detector.from_pretrained(device="cpu"), images)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and a.std() > 0  # a real network's outputs, not a constant


def test_default_model_hash_is_checked(default_dir: Path) -> None:
    assert modelfile.default_model_info()["manifest_version"] == "test-1"
    weights = default_dir / "default.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(modelfile.ModelFileError, match="does not match MANIFEST"):
        Detector.default()
    weights.unlink()
    with pytest.raises(modelfile.ModelFileError, match="default model is missing"):
        Detector.default()


def test_predict_and_info_without_checkpoint(
    default_dir: Path, images: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(["predict", "--num-workers", "0", images[0], str(Path(images[1]).parent)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(images) + 1
    assert all(line.split("\t")[1] in ("AI", "REAL") for line in lines)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "TEST MODEL" in out and "made in a test" in out and "never trained on" in out
    assert modelfile.sha256_file(default_dir / "default.safetensors") in out


def test_serve_without_checkpoint_uses_default(default_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("app", app))
    assert main(["serve"]) == 0
    from fastapi.testclient import TestClient

    info = TestClient(seen["app"]).get("/api/info").json()
    assert info["config"]["model"]["backbone"] == "resnet18"


def test_calibrate_a_safetensors_model_writes_its_json(ckpt: Path, tmp_path: Path) -> None:
    from conftest import make_dataset
    from synapse7.calibration import calibrate_checkpoint

    data = make_dataset(tmp_path / "data", generators=("g",), n=6, splits=("val",))
    model = modelfile.export_checkpoint(load_checkpoint(ckpt), tmp_path / "m")
    info = calibrate_checkpoint(model, data, num_workers=0, out=tmp_path / "cal")
    meta = json.loads((tmp_path / "cal" / "model.json").read_text())
    assert meta["threshold"] == pytest.approx(info["threshold"]) and meta["calibration"]["n"] == 12
    assert Detector.from_checkpoint(tmp_path / "cal").threshold == pytest.approx(info["threshold"])


def test_shipped_default_model_matches_its_manifest() -> None:
    weights = modelfile.WEIGHTS_DIR / "default.safetensors"
    if not weights.is_file():
        pytest.skip("no default model shipped yet (bench/release.py writes it)")
    assert weights.stat().st_size <= 15 * 2**20
    entry = modelfile.read_manifest(modelfile.WEIGHTS_DIR)["default.safetensors"]
    assert modelfile.sha256_file(weights) == entry["sha256"] == modelfile.read_model_json(weights)["sha256"]


def test_default_demo_runs_the_shipped_model_on_its_own_images(
    default_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from synapse7.demo import SKIMAGE_PHOTOS
    from synapse7.synthesize import CHAIN_METHODS

    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("AI ", "REAL "))]
    n_real = sum("photograph bundled with scikit-image" in r for r in rows)
    assert 3 <= n_real <= len(SKIMAGE_PHOTOS)
    for m in CHAIN_METHODS:  # one honestly named fake per photo and chain
        assert sum(f"self-made fake: synth_{m} of" in r for r in rows) == n_real
    assert "made in a test" in out  # where the model card's figures come from
    assert main(["demo", "--data", str(tmp_path)]) == 1  # --data belongs to the training demo


def test_calibrated_scaling_survives_the_safetensors_export(ckpt: Path, tmp_path: Path) -> None:
    """calibrate's temperature/offset travel with the model: the exported file reports the same P(AI)."""
    import torch

    from synapse7.modelfile import export_checkpoint, load_model_file
    from synapse7.predict import Detector, load_checkpoint

    loaded = load_checkpoint(ckpt)
    loaded.setdefault("synapse7", {})["scaling"] = {"temperature": 2.5, "offset": 0.7}
    torch.save(loaded, tmp_path / "scaled.ckpt")
    weights = export_checkpoint(loaded, tmp_path / "scaled.safetensors")
    assert load_model_file(weights)["synapse7"]["scaling"] == {"temperature": 2.5, "offset": 0.7}
    a = Detector.from_checkpoint(tmp_path / "scaled.ckpt", device="cpu")
    b = Detector.from_checkpoint(weights, device="cpu")
    assert (a.temperature, a.offset) == (b.temperature, b.offset) == (2.5, 0.7)
