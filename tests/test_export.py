"""ONNX export: ONNX Runtime gives the eager model's outputs (the matmul DFT it uses: tests/test_spectrum.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_untrained_checkpoint
from synapse7.cli import main
from synapse7.config import load_config
from synapse7.demo import load_photos
from synapse7.predict import Detector, cpu_has_native_bf16
from synapse7.spectrum import log_magnitude, log_magnitude_matmul
from test_spectrum import fft2_reference

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 32
# Measured: exported logits differ from eager by ~1e-4.
LOGIT_ATOL = 2e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Synapse-7 checkpoint of an untrained net (the export must not care whether it was trained)."""
    cfg = load_config(
        data={"image_size": SIZE, "preprocess": "crop"},
        model={"backbone": "resnet18", "weights": "none", "input": "rgb+fft"},
    )
    return save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", cfg, threshold=0.3)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = []
    for i, photo in enumerate(load_photos()[:5]):
        y, x = rng.integers(0, 40, 2)
        p = d / f"{i}.png"
        Image.fromarray(photo[y : y + 48, x : x + 40]).save(p)
        paths.append(str(p))
    (d / "bad.png").write_bytes(b"not an image")
    return paths


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_onnx_runtime_matches_eager(checkpoint: Path, exported: Path) -> None:
    from synapse7.export import OnnxEngine

    eager = Detector.from_checkpoint(checkpoint, device="cpu")
    engine = OnnxEngine(exported)
    assert engine.threshold == pytest.approx(0.3) and engine.config == eager.cfg
    for batch in (1, 7):  # the batch axis is dynamic
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = eager.net(x).numpy()
        np.testing.assert_allclose(engine(x), ref, rtol=0, atol=LOGIT_ATOL)
    assert eager.net.encoder.dft == "fft"  # export switched the DFT only while exporting


@pytest.mark.slow  # long in the default suite; `make test-slow` runs it
def test_detector_engines_agree(checkpoint: Path, exported: Path, images: list[str]) -> None:
    eager = Detector.from_checkpoint(checkpoint, device="cpu")
    paths = [*images, str(Path(images[0]).parent / "bad.png")]
    ref = list(eager.predict_paths(paths, batch_size=4, num_workers=0))
    for det in (
        Detector.from_checkpoint(checkpoint, device="cpu", onnx=exported, engine="onnx"),
        Detector.from_onnx(exported),
        Detector.from_checkpoint(checkpoint, device="cpu", engine="onnx"),
    ):  # exported on the fly
        assert det.engine is not None and det.threshold == pytest.approx(0.3)
        got = list(det.predict_paths(paths, batch_size=4, num_workers=0))
        assert [g.path for g in got] == [r.path for r in ref] and got[-1].label == ref[-1].label == "ERROR"
        np.testing.assert_allclose([g.p_ai for g in got[:-1]], [r.p_ai for r in ref[:-1]], atol=1e-3)
        assert [g.label for g in got] == [r.label for r in ref]


def test_cli_predict_with_onnx(
    exported: Path,
    checkpoint: Path,
    images: list[str],
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["predict", "--checkpoint", str(checkpoint), "--json", *images]) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--onnx", str(exported), "--json", *images]) == 0
    onnx = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(onnx) == len(eager) == len(images)
    np.testing.assert_allclose([r["p_ai"] for r in onnx], [r["p_ai"] for r in eager], atol=1e-3)
    # neither a checkpoint nor an ONNX model: the shipped default model, here absent, which the error says
    monkeypatch.setenv("SYNAPSE7_DEFAULT_MODEL_DIR", str(tmp_path))
    capsys.readouterr()
    assert main(["predict", *images]) == 1
    assert "default model is missing" in capsys.readouterr().err


@pytest.mark.slow  # long in the default suite; `make test-slow` runs it
def test_export_rejects_a_mismatched_model(checkpoint: Path, exported: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(other), "--image-size", "40"]) == 0
    from synapse7.export import OnnxEngine

    assert OnnxEngine(other).config.data.image_size == 40
    # Tracing at a size never used eagerly must not leave fake tensors in the spectrum's cached constants.
    x = torch.randn(1, 3, 40, 40)
    torch.testing.assert_close(log_magnitude(x), fft2_reference(x), rtol=0, atol=2e-4)
    torch.testing.assert_close(log_magnitude_matmul(x), fft2_reference(x), rtol=0, atol=2e-4)
    with pytest.raises(ValueError, match="another model or image size"):
        Detector.from_checkpoint(checkpoint, device="cpu", onnx=other)


def test_precision_choices_are_checked(checkpoint: Path) -> None:
    from synapse7.predict import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) is None  # CPU default stays fp32
    assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_precision("fp32", torch.device("cuda")) is None
    assert resolve_precision("fp16", torch.device("cuda")) is torch.float16
    assert resolve_precision("bf16-mixed", torch.device("cuda")) is torch.bfloat16  # Lightning's old spelling
    with pytest.raises(ValueError, match="CUDA GPU only"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown precision"):
        Detector.from_checkpoint(checkpoint, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="eager engine"):
        Detector.from_checkpoint(checkpoint, device="cpu", engine="onnx", precision="bf16")


def test_bf16_refused_without_native_support(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("synapse7.predict.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        Detector.from_checkpoint(checkpoint, device="cpu", precision="bf16")


def test_native_bf16_check_agrees_with_onednn() -> None:
    # The public check (CPU flags) against oneDNN's own, private one, where this torch has it.
    private = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if private is None:
        pytest.skip("this torch has no oneDNN bf16 query to compare with")
    assert cpu_has_native_bf16() == bool(private())


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU has no native bf16")
def test_bf16_cpu_close_to_fp32(checkpoint: Path, images: list[str]) -> None:
    fp32 = Detector.from_checkpoint(checkpoint, device="cpu")
    bf16 = Detector.from_checkpoint(checkpoint, device="cpu", precision="bf16")
    assert bf16.amp_dtype is torch.bfloat16 and fp32.amp_dtype is None
    a = [p.p_ai for p in fp32.predict(images)]
    b = [p.p_ai for p in bf16.predict(images)]
    assert a != b  # bf16 really ran (fp32 gives bitwise-repeatable outputs)
    # Measured here: |difference| <= 6e-4 (outputs 0.50-0.54). A trained model moves more (up to 0.33 on one
    # CIFAKE image, mean 0.003; docs/performance.md), which is why bf16 is opt-in on the CPU.
    np.testing.assert_allclose(b, a, atol=1e-2)


def test_cli_precision_flag(checkpoint: Path, images: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--precision",
                "fp32",
                "--num-workers",
                "0",
                *images[:2],
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[1] in ("AI", "REAL") for line in lines)
    with pytest.raises(SystemExit) as e:  # argparse: not a choice
        main(["predict", "--checkpoint", str(checkpoint), "--precision", "fp8", images[0]])
    assert e.value.code == 2
    # the flag reaches the Detector: bf16 with the ONNX engine is refused there, with the reason
    assert (
        main(
            ["predict", "--checkpoint", str(checkpoint), "--engine", "onnx", "--precision", "bf16", images[0]]
        )
        == 1
    )
    assert "eager engine" in capsys.readouterr().err
