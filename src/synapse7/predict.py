"""Inference: `Detector.from_checkpoint(path).predict(images)` and batched, streaming prediction over files."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from synapse7.backbones import read_torch_file
from synapse7.config import RunConfig, check_precision, config_from_dict
from synapse7.data import MultiGenDataset, build_loader, collate_skip_bad
from synapse7.export import OnnxEngine, export_onnx
from synapse7.io import BadImageError, ensure_writable_dir, extensions_text, printable_path, walk_images
from synapse7.model import TTA_MODES, Synapse7Net, build_model, net_state_dict
from synapse7.transforms import build_preset

ImageInput = str | os.PathLike | Image.Image | np.ndarray | bytes


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str  # "AI" or "REAL"; "ERROR" when the image could not be read
    p_ai: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Synapse-7 model as a checkpoint dict; a missing, unreadable, foreign or unsafe file raises naming it.

    `path` is a Lightning .ckpt or a safetensors model (NAME.safetensors + NAME.json, or a folder holding
    model.safetensors). A .ckpt is unpickled with weights_only=True: tensors and plain containers only, so a
    file from an untrusted source cannot run code while loading.
    """
    from synapse7.modelfile import is_safetensors_model, load_model_file

    p = Path(path)
    if is_safetensors_model(p):
        return load_model_file(p)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    ckpt = read_torch_file(
        p,
        weights_only=True,
        what="checkpoint",
        error=ValueError,
        hint=" (only tensors and plain containers are loaded: a checkpoint that needs other "
        "Python objects is refused, as unpickling them could run code)",
    )
    if (
        not isinstance(ckpt, dict)
        or "state_dict" not in ckpt
        or "config" not in ckpt.get("hyper_parameters", {})
    ):
        raise ValueError(f"{p} is not a Synapse-7 checkpoint (no state_dict / config)")
    return ckpt


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
URL_ERROR = "URLs are not supported; download the image and give its path"


@dataclass(frozen=True)
class InputItem:
    """One thing to classify: a file path, or an input that already failed (`error` says why)."""

    path: str
    error: str | None = None


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[InputItem]:
    """Files as given, and image files found recursively (sorted) in folders, in the order given.

    Nothing raises: a URL, a missing path or a folder without images becomes an item with its error, so a
    caller can report it as one row and go on with the rest.
    """
    out: list[InputItem] = []
    for item in inputs:
        p = Path(item)
        if isinstance(item, str) and _URL.match(item):
            out.append(InputItem(item, URL_ERROR))
        elif p.is_dir():
            found = walk_images(p)[0]
            out += [InputItem(f) for f in found] or [
                InputItem(
                    str(p), f"no image files in folder {printable_path(p)} (accepted: {extensions_text()})"
                )
            ]
        elif p.exists() or p.is_symlink():
            out.append(InputItem(str(p)))
        else:
            out.append(InputItem(str(p), f"no such file or directory: {printable_path(p)}"))
    return out


def expand_paths(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given, and image files found recursively (sorted) in folders. A bad input raises naming it."""
    items = expand_inputs(inputs)
    for it in items:
        if it.error is not None:
            raise FileNotFoundError(it.error)
    return [it.path for it in items]


ENGINES = ("eager", "onnx")


def progress_bar(total: int, desc: str, *, enabled: bool = True) -> Any:
    """A tqdm bar on stderr for `total` images, shown only on a terminal, after 2 s (short runs stay quiet),
    and never when `enabled` is False (--no-progress) or output is piped. Use as a context manager."""
    from tqdm.auto import tqdm  # installed with Lightning

    show = enabled and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not show, delay=2.0, leave=False)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16 extension).

    Read from the CPU flags the kernel reports (/proc/cpuinfo), which is what oneDNN's bf16 kernels need;
    False where they cannot be read (then --precision bf16 is refused on the CPU, as emulation is slow).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = {
        f
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for f in line.split(":", 1)[-1].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the eager network runs under for a --precision value (None: fp32).

    "auto": bf16 on CUDA, fp32 on CPU. bf16 moves P(AI) (a trained EfficientNet-Lite0 on CIFAKE val: mean
    |change| 0.003, max 0.33, 4 of 2,000 labels flipped; bench/precision.py), so on the CPU it is opt-in.
    "bf16" on a CPU without native bf16 (AVX512-BF16 / AMX) is refused: emulated bf16 is slower than fp32;
    "fp16" runs on CUDA only.
    """
    precision = check_precision(precision)
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise ValueError(
            "--precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has "
            "neither, and emulated bf16 is slower than fp32: use --precision fp32"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "--precision fp16 runs on a CUDA GPU only; use fp32 (or bf16 on a CPU with native bf16)"
        )
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _with_data(cfg: RunConfig, tta: str | None = None, **overrides: Any) -> RunConfig:
    """cfg with the data fields in `overrides` and the model's `tta` replaced (None keeps the stored setting)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    if clean:
        cfg = replace(cfg, data=replace(cfg.data, **clean))
    if tta is not None:
        if tta not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
        cfg = replace(cfg, model=replace(cfg.model, tta=tta))
    return cfg


class Detector:
    """A trained detector. `predict` takes paths, PIL images, HWC uint8 arrays or encoded bytes.

    Engines: the PyTorch network (channels_last on CPU; bf16 autocast by `precision`, see `resolve_precision`,
    the spectrum itself always in fp32; optional torch.compile), or an `OnnxEngine` (ONNX Runtime) given as
    `engine`, in which case `net` may be None.
    """

    def __init__(
        self,
        net: Synapse7Net | None,
        cfg: RunConfig,
        *,
        threshold: float = 0.5,
        device: str | torch.device | None = None,
        engine: Any = None,
        compile: bool = False,
        precision: str = "auto",
        scaling: dict[str, float] | None = None,
        gpu_decode: bool = False,
    ) -> None:
        if net is None and engine is None:
            raise ValueError("a Detector needs a network or an ONNX engine")
        self.cfg = cfg
        self.threshold = float(threshold)
        # Probability calibration stored by `synapse7 calibrate`: P(AI) = sigmoid((logit - offset) / temperature)
        # (synapse7.calibration.fit_scaling); identity when absent.
        self.temperature = float((scaling or {}).get("temperature", 1.0))
        self.offset = float((scaling or {}).get("offset", 0.0))
        self.device = pick_device(device)
        self.engine = engine
        # autocast dtype of the eager network (None: fp32); the ONNX export runs in fp32.
        self.amp_dtype = resolve_precision(precision, self.device) if engine is None else None
        self.net = None if net is None else net.to(self.device).eval()
        if self.net is not None:  # NHWC: the CPU's oneDNN and the GPU's tensor-core convolutions both want it
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":  # fixed-size crops: let cuDNN pick the fastest kernels once per shape
            torch.backends.cudnn.benchmark = True
        self._forward = compile_for_inference(self.net) if compile and self.net is not None else self.net
        self.preset = build_preset(cfg.data, check_size=True)  # tiny images: an ERROR row, not a guess
        # predict_paths: decode JPEGs in batches on the model's device (synapse7.gpudecode). Only on a GPU: on a
        # CPU the DataLoader workers decoding in parallel are faster, so the flag falls back to them.
        self.gpu_decode = bool(gpu_decode) and self.device.type == "cuda"
        if gpu_decode and not self.gpu_decode:
            print(
                f"note: --gpu-decode needs a CUDA device (this detector runs on {self.device}); "
                "decoding on the CPU in the DataLoader workers",
                file=sys.stderr,
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        threshold: float | None = None,
        engine: str = "eager",
        onnx: str | os.PathLike | None = None,
        compile: bool = False,
        fast_decode: bool | None = None,
        precision: str = "auto",
        crops: int | None = None,
        tta: str | None = None,
        gpu_decode: bool = False,
    ) -> Detector:
        """Load a Synapse-7 checkpoint (.ckpt) or safetensors model; needs no pretrained weights and no network.

        engine="onnx" runs the model in ONNX Runtime: from `onnx` (an export of this checkpoint; giving it implies
        engine="onnx") or, without it, from an export made now into a temporary file.
        """
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
        engine = "onnx" if onnx is not None else engine
        if engine == "onnx" and check_precision(precision) in ("bf16", "fp16"):
            raise ValueError(
                f"--precision {precision} applies to the eager engine; the ONNX export runs in fp32"
            )
        resolve_precision(precision, pick_device(device))  # unknown or unsupported: fail before loading
        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt["hyper_parameters"]["config"])
        net = build_model(cfg.model, load_weights=False)
        net.load_state_dict(net_state_dict(ckpt["state_dict"]))
        stored = float(ckpt.get("synapse7", {}).get("threshold", 0.5))
        thr = stored if threshold is None else threshold
        runner = None
        if engine == "onnx":
            dev = str(pick_device(device))
            if onnx is None:
                tmp = Path(tempfile.mkdtemp(prefix="synapse7-onnx-"))
                try:  # the session holds the model in memory; the file is not needed afterwards
                    runner = OnnxEngine(export_onnx(net, cfg, tmp / "model.onnx", threshold=thr), device=dev)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                runner = OnnxEngine(onnx, device=dev)
                got, want = runner.config, cfg
                if got.model != want.model or got.data.image_size != want.data.image_size:
                    raise ValueError(f"{onnx} was exported from another model or image size than {path}")
        return cls(
            net,
            _with_data(cfg, tta=tta, fast_decode=fast_decode, crops=crops),
            threshold=thr,
            device=device,
            engine=runner,
            compile=compile,
            precision=precision,
            scaling=ckpt.get("synapse7", {}).get("scaling"),
            gpu_decode=gpu_decode,
        )

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | os.PathLike], *, threshold: float | None = None, **kwargs: Any
    ) -> Detector:
        """One checkpoint: `from_checkpoint`. Several: an `EnsembleDetector` of them (each loaded with the same
        keyword arguments, e.g. tta or precision)."""
        if len(paths) == 0:
            raise ValueError("no checkpoint given")
        if len(paths) == 1:
            return cls.from_checkpoint(paths[0], threshold=threshold, **kwargs)
        if kwargs.get("onnx") is not None:
            raise ValueError("--onnx names the export of one checkpoint; it cannot go with several")
        # The ensemble decodes as its first member does (EnsembleDetector takes its gpu_decode), so only that
        # member is asked for --gpu-decode, and its note (no CUDA device) is printed once.
        rest = {**kwargs, "gpu_decode": False}
        members = [cls.from_checkpoint(paths[0], **kwargs)] + [
            cls.from_checkpoint(p, **rest) for p in paths[1:]
        ]
        return EnsembleDetector(members, [printable_path(p) for p in paths], threshold=threshold)

    @classmethod
    def default(cls, **kwargs: Any) -> Detector:
        """The shipped default model (synapse7/weights/default.safetensors), after checking its SHA-256.

        Takes `from_checkpoint`'s keyword arguments. Needs no network. See docs/model_card.md for what it was
        trained on, how well it does and what it misses.
        """
        from synapse7.modelfile import default_model_path

        return cls.from_checkpoint(default_model_path(), **kwargs)

    from_pretrained = default

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        threshold: float | None = None,
        fast_decode: bool | None = None,
        crops: int | None = None,
        tta: str | None = None,
        gpu_decode: bool = False,
    ) -> Detector:
        """A detector from an ONNX export alone (`synapse7 export`): config and threshold are in its metadata."""

        runner = OnnxEngine(path, device=str(pick_device(device)))
        thr = runner.threshold if threshold is None else threshold
        return cls(
            None,
            _with_data(runner.config, tta=tta, fast_decode=fast_decode, crops=crops),
            threshold=thr,
            device=device,
            engine=runner,
            gpu_decode=gpu_decode,
        )

    @torch.inference_mode()
    def predict_batch(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) normalised -> P(AI) as float64 array (B,); (B, K, 3, S, S) crops are combined per image.

        With the model's `tta` "flip", the logit is the mean of the image's and its mirror image's."""
        return torch.sigmoid(self.logit(x)).cpu().numpy().astype(np.float64)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """`predict_batch`'s calibrated logit, log(P / (1 - P)), as a float tensor (B,)."""
        logits = self._logits(x)
        if self.cfg.model.tta == "flip":
            logits = 0.5 * (logits.float() + self._logits(x.flip(-1)).float())
        return (logits.float() - self.offset) / self.temperature

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.engine is not None:
            if x.dim() == 5:  # the exported graph takes single crops: run them flat, combine the logits here
                b, k = x.shape[:2]
                flat = torch.from_numpy(self.engine(x.flatten(0, 1))).view(b, k)
                logits = flat.amax(dim=1) if self.cfg.model.crop_vote == "max" else flat.mean(dim=1)
            else:
                logits = torch.from_numpy(self.engine(x))
        else:
            x = x.to(self.device, non_blocking=True)
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                logits = self._forward(x)
        return logits

    def _predict_uint8(self, u8: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) uint8 crops -> P(AI); normalised on the model's device (a GPU copies a quarter the bytes)."""
        return torch.sigmoid(self._launch_uint8(u8)).cpu().numpy().astype(np.float64)

    @property
    def raw_threshold(self) -> float:
        """The threshold on the network's own, uncalibrated P(AI) that `threshold` corresponds to."""
        t = min(max(self.threshold, 1e-12), 1 - 1e-12)
        return float(1.0 / (1.0 + np.exp(-(self.offset + self.temperature * np.log(t / (1 - t))))))

    def _label(self, p: float) -> str:
        return "AI" if p >= self.threshold else "REAL"

    def predict(self, images: Sequence[ImageInput] | ImageInput, *, batch_size: int = 32) -> list[Prediction]:
        """Predict in memory. Undecodable inputs give a Prediction with label "ERROR" and the reason.

        Decoding and preprocessing are `predict_paths`'s (the preset's decode, uint8 crops normalised per
        batch), so a file gives the same P(AI) through either.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        out: list[Prediction] = []
        max_pixels = self.cfg.data.max_pixels
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            names = [
                printable_path(item) if isinstance(item, (str, os.PathLike)) else f"<image {start + j}>"
                for j, item in enumerate(chunk)
            ]
            crops: dict[int, torch.Tensor] = {}
            errors: dict[int, str] = {}
            for j, item in enumerate(chunk):
                if isinstance(item, str) and _URL.match(item):  # not a path: its "//" would be read as one
                    errors[j] = URL_ERROR
                    continue
                try:
                    crops[j] = self.preset.load(item, max_pixels=max_pixels, name=names[j])
                except BadImageError as e:
                    errors[j] = e.reason
            probs = self._predict_uint8(torch.stack(list(crops.values()))) if crops else np.empty(0)
            pmap = dict(zip(crops, probs.tolist(), strict=True))
            out += [self._prediction(names[j], pmap.get(j), errors.get(j)) for j in range(len(chunk))]
        return out

    def _prediction(self, name: str, p: float | None, error: str | None) -> Prediction:
        if p is None:
            return Prediction(name, "ERROR", float("nan"), error)
        return Prediction(name, self._label(p), p)

    def predict_paths(
        self,
        paths: Sequence[str],
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        stats: dict[str, float] | None = None,
        gpu_share: float | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for files, in order, decoding in DataLoader workers while the model runs.

        One batch is in flight: batch n+1 is fetched (and, with `gpu_decode`, decoded) while the device still runs
        batch n. `stats`, if given, receives "wait_s" (time spent waiting for the loader), "total_s" and "images".
        With `gpu_decode`, `gpu_share` of the JPEGs are decoded on the GPU and the workers decode the rest
        (default: `gpudecode.default_gpu_share(num_workers)`, which keeps both busy).
        """
        if self.gpu_decode:
            from synapse7.gpudecode import (
                BatchDecoder,
                EncodedFileDataset,
                collate_encoded,
                default_gpu_share,
            )

            share = default_gpu_share(num_workers) if gpu_share is None else gpu_share
            files = list(paths)
            ds: Any = EncodedFileDataset(
                files, self.preset, max_pixels=self.cfg.data.max_pixels, gpu_share=share
            )
            collate: Any = collate_encoded
            decoder = BatchDecoder(self.preset, self.device, files, max_pixels=self.cfg.data.max_pixels)
        else:
            ds = MultiGenDataset.from_paths(
                paths, self.preset, max_pixels=self.cfg.data.max_pixels, normalize=False
            )
            collate = collate_skip_bad
        loader = build_loader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
        timer = _LoopTimer(stats, len(paths))
        pending: tuple[Any, list[int], dict[int, str]] | None = None
        for batch in timer.iterate(loader):
            if self.gpu_decode:
                u8, idx, bad = decoder(batch)
            else:
                bad, idx = dict(batch["bad"]), batch["index"].tolist()
                u8 = batch.get("image")
            launched = self._launch_uint8(u8) if u8 is not None else None
            if pending is not None:
                yield from self._emit(paths, *pending)
            pending = (launched, idx, bad)
        if pending is not None:
            yield from self._emit(paths, *pending)
        timer.finish()

    def _launch_uint8(self, u8: torch.Tensor) -> torch.Tensor:
        """Start the forward pass of a uint8 batch; the logits may still be computing on the device."""
        if self.engine is None:
            u8 = u8.to(self.device, non_blocking=True)
        with torch.inference_mode():
            return self.logit(self.preset.normalize(u8))

    def _emit(
        self, paths: Sequence[str], logits: torch.Tensor | None, idx: list[int], bad: dict[int, str]
    ) -> Iterator[Prediction]:
        probs = torch.sigmoid(logits).cpu().double().tolist() if logits is not None else []
        pmap = dict(zip(idx, probs, strict=True))
        for i in sorted([*idx, *bad]):
            yield self._prediction(printable_path(paths[i]), pmap.get(i), bad.get(i))

    def predict_items(
        self,
        items: Sequence[InputItem],
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        gpu_share: float | None = None,
    ) -> Iterator[Prediction]:
        """`predict_paths` over `expand_inputs`'s items, in order; failed items give their ERROR row in place."""
        good = [it.path for it in items if it.error is None]
        stream = (
            self.predict_paths(good, batch_size=batch_size, num_workers=num_workers, gpu_share=gpu_share)
            if good
            else iter(())
        )
        for it in items:
            yield (
                next(stream)
                if it.error is None
                else Prediction(printable_path(it.path), "ERROR", float("nan"), it.error)
            )


# What a detector does to an image before its network: members of an ensemble must agree on all of it, so that
# one decoded crop serves them all.
PREPROCESS_FIELDS = (
    "image_size",
    "resize_size",
    "resize_interpolation",
    "preprocess",
    "crops",
    "mean",
    "std",
    "align",
    "max_pixels",
    "fast_decode",
)


def compile_for_inference(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with inductor's freezing: the weights become constants, so BatchNorm folds into the
    convolutions. Inference only (the Detector never changes its weights). On the H200, ResNet-34 bf16 at batch
    256 ran 36,331 img/s against 33,700 without freezing (docs/performance.md, GPU)."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(net)

    def forward(x: torch.Tensor) -> torch.Tensor:
        # Patched around every call, since any call may (re)compile: `torch.compile(options={"freezing": True})`
        # does not freeze (torch 2.14 on the CPU: no conv/BatchNorm folding in inductor's counters).
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return forward


class _LoopTimer:
    """Time spent waiting for a loader's next batch, against the whole loop (what `predict_paths` reports)."""

    def __init__(self, stats: dict[str, float] | None, images: int) -> None:
        self.stats = stats
        self.wait = 0.0
        self.images = images
        self.start = time.perf_counter()

    def iterate(self, loader: Iterable[Any]) -> Iterator[Any]:
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t
            yield batch

    def finish(self) -> None:
        if self.stats is not None:
            self.stats.update(wait_s=self.wait, total_s=time.perf_counter() - self.start, images=self.images)


class EnsembleDetector(Detector):
    """Several detectors of the same preprocessing (PREPROCESS_FIELDS), e.g. one recipe trained with two seeds.

    P(AI) = sigmoid(mean of the members' calibrated logits), each member with its own test-time augmentation,
    crop vote and calibration. The threshold is the one given, else the members' own when they all agree.
    """

    def __init__(
        self, members: Sequence[Detector], names: Sequence[str], *, threshold: float | None = None
    ) -> None:
        if len(members) < 2 or len(names) != len(members):
            raise ValueError("an ensemble needs two or more detectors, one name each")
        first = members[0]
        for name, m in zip(names[1:], members[1:], strict=True):
            diff = [
                f"{f} {getattr(first.cfg.data, f)!r} vs {getattr(m.cfg.data, f)!r}"
                for f in PREPROCESS_FIELDS
                if getattr(first.cfg.data, f) != getattr(m.cfg.data, f)
            ]
            if diff:
                raise ValueError(
                    f"cannot ensemble {name} with {names[0]}: they preprocess images differently "
                    f"({'; '.join(diff)})"
                )
        if threshold is None:
            stored = sorted({m.threshold for m in members})
            if len(stored) > 1:
                raise ValueError(
                    "the checkpoints store different thresholds ("
                    + ", ".join(f"{n}: {m.threshold:.4g}" for n, m in zip(names, members, strict=True))
                    + "); give the ensemble's with --threshold"
                )
            threshold = stored[0]
        self.members = list(members)
        self.names = list(names)
        self.cfg = first.cfg
        self.threshold = float(threshold)
        self.temperature, self.offset = 1.0, 0.0  # the members' logits are calibrated already
        self.device = first.device
        self.engine = None
        self.amp_dtype = first.amp_dtype
        self.net = self._forward = None
        self.preset = first.preset
        self.gpu_decode = first.gpu_decode

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.logit(x).to(self.device) for m in self.members]).mean(dim=0)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - `logit` is overridden
        raise NotImplementedError


def format_prediction(p: Prediction, *, as_json: bool) -> str:
    """One output line per input: `path<TAB>AI|REAL<TAB>p_ai`, `path<TAB>ERROR<TAB>nan<TAB>reason`, or a JSON
    object (with "error" for failures). Tabs and line breaks in a reason become spaces, one row per input."""
    if as_json:
        d = p.to_dict()
        if p.error is not None:
            d["p_ai"] = None
        return json.dumps(d)
    if p.error is not None:
        return f"{p.path}\t{p.label}\tnan\t{' '.join(p.error.split())}"
    return f"{p.path}\t{p.label}\t{p.p_ai:.4f}"


def parse_prediction_line(line: str, *, as_json: bool) -> tuple[str, str]:
    """(path, label) of a line written by `format_prediction`."""
    if as_json:
        d = json.loads(line)
        return d["path"], d["label"]
    path, label = line.split("\t")[:2]
    return path, label


class ResumableOutput:
    """Prediction lines go to OUT.partial as they come and OUT.partial becomes OUT only when every image is done.

    So OUT is always complete or absent. With resume=True, the lines of an interrupted run's OUT.partial (a
    half-written last line dropped) or, when there is none, of a complete OUT are kept, and `done` maps their
    paths to their labels: those inputs are skipped and only new ones are classified (then appended).
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, as_json: bool = False) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.as_json = as_json
        self.done: dict[str, str] = {}
        ensure_writable_dir(self.path.parent)
        kept = ""
        source = self.partial if self.partial.exists() else self.path
        if resume and source.exists():
            text = source.read_text(encoding="utf-8", errors="surrogateescape")
            kept = text[: text.rfind("\n") + 1]  # drop a line cut short by the interruption
            for line in kept.splitlines():
                try:
                    path, label = parse_prediction_line(line, as_json=as_json)
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{source}: cannot resume: a line is not a prediction in the "
                        f"{'JSON' if as_json else 'TSV'} format ({line[:80]!r})"
                    ) from e
                self.done[path] = label
        self._fh = open(self.partial, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        self._fh.write(kept)
        self._fh.flush()

    def write(self, p: Prediction) -> None:
        self._fh.write(format_prediction(p, as_json=self.as_json) + "\n")
        self._fh.flush()

    def finish(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
