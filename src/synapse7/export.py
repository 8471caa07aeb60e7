"""ONNX export of the whole detector (spectrum features included) and an ONNX Runtime inference engine.

The exported graph takes the normalised image batch (B, 3, S, S) float32 (what `ClassificationPreset` gives)
and returns one logit per image (B,). The FFT is exported as real matrix products
(`synapse7.spectrum.log_magnitude_matmul`): torch.fft exports to ONNX's DFT op, which ONNX Runtime ran 8x slower
and 0.055 off at 224 px (bench/spectrum.py). The run config and threshold are stored in the model's metadata, so an .onnx
file alone is enough to predict (`Detector.from_onnx`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synapse7.config import RunConfig, config_from_dict
from synapse7.io import atomic_path
from synapse7.model import Synapse7Net

EXPORT_FORMAT = 1
INPUT_NAME = "image"
OUTPUT_NAME = "logit"
META_CONFIG, META_THRESHOLD, META_FORMAT = "synapse7.config", "synapse7.threshold", "synapse7.format"


@contextlib.contextmanager
def export_mode(net: Synapse7Net) -> Iterator[Synapse7Net]:
    """The network on CPU in eval mode with the matmul DFT; everything is restored afterwards."""
    dft, training = net.encoder.dft, net.training
    device = next(net.parameters()).device
    net.encoder.dft = "matmul"
    try:
        yield net.to("cpu", memory_format=torch.contiguous_format).eval()
    finally:
        net.encoder.dft = dft
        net.train(training).to(device)


def export_onnx(
    net: Synapse7Net,
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    threshold: float = 0.5,
    image_size: int | None = None,
    opset: int | None = None,
) -> Path:
    """Write `net` as an ONNX model with a dynamic batch axis and a fixed S x S input (S = image_size).

    image_size defaults to the config's crop size; another size is stored in the embedded config, so
    `Detector.from_onnx` prepares images at the size the graph expects.
    """
    import onnx

    size = image_size or cfg.data.image_size
    if size != cfg.data.image_size:
        cfg = replace(cfg, data=replace(cfg.data, image_size=size, resize_size=None))
    out = Path(out)
    with export_mode(net) as m, torch.no_grad():
        example = torch.zeros(2, 3, size, size)
        kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
        program = torch.onnx.export(
            m,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
            **kwargs,
        )
    model = program.model_proto
    for key, value in (
        (META_CONFIG, json.dumps(cfg.to_dict())),
        (META_THRESHOLD, repr(float(threshold))),
        (META_FORMAT, str(EXPORT_FORMAT)),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(out) as tmp:
        onnx.save_model(
            model, str(tmp)
        )  # one self-contained file (weights inline; < 2 GB for every backbone)
    return out


class OnnxEngine:
    """An exported Synapse-7 model in ONNX Runtime: `engine(x)` maps (B, 3, S, S) float32 to logits (B,)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, device: str = "cpu") -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"ONNX model not found: {p}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One knob for both engines: as many threads as PyTorch uses (torch.set_num_threads), unless given.
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX model {p}: {e}") from e
        self.path = p
        self.input = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CONFIG not in meta:
            raise ValueError(f"{p} is not a Synapse-7 export (no {META_CONFIG} metadata)")
        self.config = config_from_dict(json.loads(meta[META_CONFIG]))
        self.threshold = float(meta.get(META_THRESHOLD, 0.5))

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        arr = (
            x.detach().cpu().contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
        )
        return self.session.run(None, {self.input: arr.astype(np.float32, copy=False)})[0].reshape(-1)
