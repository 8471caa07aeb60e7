"""GPU: inference, end-to-end prediction, training and the feature cache, in one run (issue 15).

    PYTHONPATH=src python bench/gpu.py --out DIR              # on a CUDA machine (the lent H200)
    PYTHONPATH=src python bench/gpu.py --out DIR --smoke      # CPU, tiny sizes: checks the script
                                                              # (tests/test_bench_gpu.py, a slow test)

Everything runs the project's own network (`build_model`, input "fft": the reference design's global
log-magnitude spectrum, untrained weights: speed does not depend on their values) at 224 px:

1. model-only forward, batch 256, ResNet-34 and EfficientNet-Lite0: fp32 (TF32 off), TF32, bf16 autocast, each
   eager and with torch.compile; img/s and the fraction of the GPU's dense bf16 peak (datasheet) that the
   FLOPs imply, with the FLOPs counted on the network itself (torch.utils.flop_counter) and, for ResNet-34, the
   issue's 7.3 GFLOP per image;
2. end to end over a folder of JPEGs made here: decode-only rates (CPU workers; batched GPU decode), then
   `Detector.predict_paths` with CPU decoding and with `gpu_decode`, the share of time spent waiting for data,
   and the reference-style pipeline (bench/baseline.py: PIL + numpy FFT in 2 workers, batch 32, fp32 on the
   GPU) on the same files;
3. training steps (forward, backward, AdamW) of frozen-early and full fine-tuning, fp32 against bf16 autocast
   (what Lightning's "bf16-mixed" does), eager and compiled;
4. the frozen-trunk feature cache: a frozen-early step on cached features against the full forward;
5. DDP: not run by this script (one GPU was lent); it records how many GPUs there were.

Before all of these (group `cli`), the user's own flow on the device through the CLI: `synapse7 train`
(Lightning, precision "auto", i.e. bf16-mixed on a GPU) on the demo stand-in data, `evaluate`, `predict` with
that checkpoint and with the shipped model: each step's exit status, seconds and headline figures, and its
traceback if it raised. The test suite never sees a GPU (tests/conftest.py hides it), so this is the check of
those paths.

`--only` runs some groups (cli, model, compile-modes, e2e, train, cache, compiled-rest); compile-modes adds inductor
freezing and CUDA graphs for the bf16 ResNet-34 row. docs/performance.md ("6. GPU") has the three runs made.

Sections run in that order of importance under a time budget; whatever is left when it runs out is listed as
skipped. The JSON (gpu.json) is rewritten after every measurement, so a run stopped at its limit keeps what
it measured; gpu.md holds the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_checkpoint, write_images  # noqa: E402

# Dense bf16 tensor-core peak of the H100/H200 SXM (NVIDIA's datasheets: 1,979 TFLOP/s "with sparsity", half
# of it dense). The H200's compute is the H100's; only its memory differs.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4}
ISSUE_RESNET34_GFLOP = 7.3  # the issue's figure per 224 px image


class Run:
    """Results, the time budget and the output files."""

    def __init__(self, out: Path, budget: float, smoke: bool) -> None:
        self.out, self.budget, self.smoke = out, budget, smoke
        self.t0 = time.perf_counter()
        self.data: dict[str, Any] = {"argv": sys.argv, "sections": {}, "skipped": [], "errors": []}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {section}: {json.dumps(row)}", flush=True)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1))

    def guarded(self, name: str, need: float, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run fn unless fewer than `need` seconds are left; an exception is recorded, not fatal."""
        if self.left() < need:
            self.data["skipped"].append(f"{name}: {self.left():.0f} s left, needs about {need:.0f} s")
            print(f"skipped {name}", flush=True)
            self.save()
            return None
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
            self.data["errors"].append(f"{name}: {type(e).__name__}: {e}")
            traceback.print_exc()
            self.save()
            return None


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def set_precision_flags(precision: str) -> None:
    """fp32: true fp32 matmuls and convolutions; tf32 and bf16: TF32 allowed for what stays in fp32."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def build_net(backbone: str, size: int, trainable: str | None = None) -> Any:
    from synapse7.config import load_config
    from synapse7.model import build_model

    cfg = load_config(
        data={"image_size": size},
        model={"backbone": backbone, "weights": "none", "input": "fft", "trainable": trainable},
    )
    torch.manual_seed(0)
    return build_model(cfg.model, load_weights=False), cfg


def count_gflop(backbone: str, size: int) -> float:
    """Forward FLOPs per image of the whole network (spectrum included), as torch's flop counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    net, _ = build_net(backbone, size)
    net.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def timed_rate(fn: Any, items: int, dev: torch.device, *, warmup: int, iters: int, repeats: int) -> dict:
    """Best of `repeats` timings of `iters` calls (after `warmup` calls, which include compilation)."""
    t = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(dev)
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return {"img_s": iters * items / best, "warmup_s": round(first, 2)}


def autocast(dev: torch.device, precision: str) -> Any:
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ----------------------------------------------------------------------------------------------------------
# 1. Model-only inference


GROUPS = ("cli", "model", "compile-modes", "e2e", "train", "cache", "compiled-rest")
COMPILE_MODES = {  # name -> (torch.compile mode, inductor config patches)
    "default": (None, {}),
    "freezing": (None, {"freezing": True}),  # weights as constants: conv+BatchNorm folded (inference only)
    "reduce-overhead": ("reduce-overhead", {}),  # CUDA graphs: one launch per batch
    "freezing+reduce-overhead": ("reduce-overhead", {"freezing": True}),
}


def model_only(
    run: Run, dev: torch.device, backbone: str, precision: str, compiled: bool, a: Any, mode: str = "default"
) -> dict:
    import torch._inductor.config as inductor_config

    set_precision_flags(precision)
    torch._dynamo.reset()
    net, _ = build_net(backbone, a.size)
    net = net.to(dev).eval().to(memory_format=torch.channels_last)
    compile_mode, patches = COMPILE_MODES[mode]
    fwd = torch.compile(net, mode=compile_mode) if compiled else net
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), autocast(dev, precision), inductor_config.patch(patches):
            fwd(x)

    res = timed_rate(step, a.batch, dev, warmup=3, iters=a.iters, repeats=3)
    gflop = run.data["gflop_per_image"][backbone]
    peak = run.data.get("peak_bf16_tflops")
    row = {
        "backbone": backbone,
        "precision": precision,
        "compiled": (mode if mode != "default" else True) if compiled else False,
        "batch": a.batch,
        "img_s": round(res["img_s"], 1),
        "first_calls_s": res["warmup_s"],
        "TFLOP_s": round(res["img_s"] * gflop / 1e3, 2),
    }
    if peak:
        row["frac_bf16_peak"] = round(res["img_s"] * gflop / 1e3 / peak, 4)
        if backbone == "resnet34":
            row["frac_bf16_peak_7.3GFLOP"] = round(res["img_s"] * ISSUE_RESNET34_GFLOP / 1e3 / peak, 4)
    run.add("model_only", row)
    return row


# ----------------------------------------------------------------------------------------------------------
# 2. End to end


def decode_only_cpu(run: Run, paths: list[str], preset: Any, workers: int, batch: int) -> None:
    from synapse7.data import MultiGenDataset, build_loader

    ds = MultiGenDataset.from_paths(paths, preset, max_pixels=10**9, normalize=False)
    loader = build_loader(ds, batch_size=batch, num_workers=workers)
    t = time.perf_counter()
    n = sum(len(b["index"]) for b in loader)
    dt = time.perf_counter() - t
    run.add("decode_only", {"decode": f"CPU, {workers} DataLoader workers (PIL)", "img_s": round(n / dt, 1)})


def decode_only_gpu(
    run: Run, dev: torch.device, paths: list[str], preset: Any, workers: int, batch: int
) -> float:
    from synapse7.data import build_loader
    from synapse7.gpudecode import BatchDecoder, EncodedFileDataset, collate_encoded

    ds = EncodedFileDataset(paths, preset, max_pixels=10**9)
    loader = build_loader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_encoded)
    dec = BatchDecoder(preset, dev, paths, max_pixels=10**9)
    for i, b in enumerate(loader):  # warm-up pass (nvJPEG handles, worker start)
        dec(b)
        if i == 1:
            break
    sync(dev)
    t = time.perf_counter()
    n = 0
    for b in loader:
        crops, order, _ = dec(b)
        n += len(order)
    sync(dev)
    rate = n / (time.perf_counter() - t)
    run.add(
        "decode_only",
        {"decode": f"batched decode_jpeg on {dev.type}, {workers} workers reading", "img_s": round(rate, 1)},
    )
    return rate


def predict_e2e(run: Run, dev: torch.device, ckpt: str, paths: list[str], a: Any, *, compiled: bool) -> None:
    """`Detector.predict_paths` over the files, with CPU decoding and with `gpu_decode`, one detector for both."""
    from synapse7.predict import Detector

    set_precision_flags(a.precision)
    torch._dynamo.reset()
    det = Detector.from_checkpoint(ckpt, device=str(dev), precision=a.precision, compile=compiled)
    s = det.cfg.data.image_size
    t = time.perf_counter()
    for _ in range(2):
        det.predict_batch(torch.zeros(a.batch, 3, s, s))  # compilation and cuDNN plans, as model_only
    warm = time.perf_counter() - t
    from synapse7.gpudecode import default_gpu_share

    cpu_p: list[float] = []
    for gpu_decode, share in ((False, None), (True, 1.0), (True, None)):
        det.gpu_decode = gpu_decode  # (the smoke run forces the batched path onto the CPU this way)
        best: dict = {}
        for _ in range(2):
            stats: dict[str, float] = {}
            t = time.perf_counter()
            preds = list(
                det.predict_paths(
                    paths, batch_size=a.batch, num_workers=a.workers, stats=stats, gpu_share=share
                )
            )
            dt = time.perf_counter() - t
            if not best or dt < best["seconds"]:
                best = {"seconds": dt, "stats": stats, "errors": sum(p.error is not None for p in preds)}
                best["p"] = [p.p_ai for p in preds]
        cpu_p = cpu_p or best["p"]
        dp = max(abs(x - y) for x, y in zip(best["p"], cpu_p, strict=True)) if cpu_p else float("nan")
        share = default_gpu_share(a.workers) if share is None else share
        decode = f"GPU decode of {share:.0%} of the JPEGs (workers: the rest)" if gpu_decode else "CPU decode"
        run.add(
            "end_to_end",
            {
                "pipeline": f"predict_paths, {decode}, {a.precision}{' compiled' if compiled else ''}",
                "img_s": round(len(paths) / best["seconds"], 1),
                "wait_share": round(best["stats"]["wait_s"] / best["stats"]["total_s"], 3),
                "errors": best["errors"],
                "first_calls_s": round(warm, 1),
                "workers": a.workers,
                "batch": a.batch,
                "images": len(paths),
                "max_abs_dp_vs_cpu_decode": float(f"{dp:.3g}"),
                **flop_fraction(run, "resnet34", len(paths) / best["seconds"]),
            },
        )


def flop_fraction(run: Run, backbone: str, img_s: float) -> dict[str, float]:
    """{"frac_bf16_peak": img/s x counted GFLOP over the datasheet peak}; empty without a known peak."""
    peak = run.data.get("peak_bf16_tflops")
    if not peak:
        return {}
    return {"frac_bf16_peak": round(img_s * run.data["gflop_per_image"][backbone] / 1e3 / peak, 4)}


def baseline_e2e(run: Run, dev: torch.device, ckpt: str, paths: list[str]) -> float:
    """bench/baseline.py's pipeline as the reference runs it: batch 32, 2 workers, fp32, model on the device."""
    from baseline import SpectrumNet, baseline_loader
    from synapse7.config import config_from_dict
    from synapse7.model import build_model
    from synapse7.predict import load_checkpoint

    set_precision_flags("fp32")
    ck = load_checkpoint(ckpt)
    cfg = config_from_dict(ck["hyper_parameters"]["config"])
    net = build_model(cfg.model, load_weights=False)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    model = SpectrumNet(net).to(dev).eval()
    loader = baseline_loader(
        [(p, 0) for p in paths],
        batch_size=32,
        num_workers=2,
        image_size=cfg.data.image_size,
        resize_size=cfg.data.resolved_resize,
    )
    t = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x, _ in loader:
            torch.sigmoid(model(x.to(dev))).cpu()
            n += len(x)
    rate = n / (time.perf_counter() - t)
    run.add(
        "end_to_end",
        {
            "pipeline": "reference-style (bench/baseline.py): PIL + numpy FFT, 2 workers, batch 32, fp32",
            "img_s": round(rate, 1),
            "images": n,
            **flop_fraction(run, "resnet34", rate),
        },
    )
    return rate


# ----------------------------------------------------------------------------------------------------------
# 3. and 4. Training


def training_batch(dev: torch.device, a: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch (channels_last images, 0/1 labels) of the training sections' size."""
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(a.train_batch, 3, a.size, a.size, device=dev, generator=g)
    y = (torch.rand(a.train_batch, device=dev, generator=g) > 0.5).float()
    return x.contiguous(memory_format=torch.channels_last), y


def training_step(
    net: Any, forward: Any, inputs: torch.Tensor, y: torch.Tensor, dev: torch.device, precision: str
) -> Any:
    """One training step as a closure: `forward(inputs)` -> BCE -> backward -> AdamW on `net`'s trainable
    parameters, under bf16 autocast for precision "bf16" (Lightning's bf16-mixed)."""
    import torch.nn.functional as F

    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with autocast(dev, precision):
            loss = F.binary_cross_entropy_with_logits(forward(inputs).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_steps(run: Run, dev: torch.device, strategy: str, precision: str, compiled: bool, a: Any) -> dict:
    from synapse7.model import frozen_modules

    set_precision_flags(precision)
    torch._dynamo.reset()
    trainable = "all" if strategy == "full" else "frozen-early"
    net, _ = build_net("resnet34", a.size, trainable)
    net = net.to(dev).train().to(memory_format=torch.channels_last)
    for m in frozen_modules(net):
        m.eval()
    fwd = torch.compile(net) if compiled else net
    x, y = training_batch(dev, a)
    step = training_step(net, fwd, x, y, dev, precision)
    res = timed_rate(step, a.train_batch, dev, warmup=3, iters=a.train_iters, repeats=2)
    row = {
        "strategy": strategy,
        "precision": precision,
        "compiled": compiled,
        "batch": a.train_batch,
        "img_s": round(res["img_s"], 1),
        "first_calls_s": res["warmup_s"],
    }
    run.add("training", row)
    return row


def cache_steps(run: Run, dev: torch.device, precision: str, a: Any) -> None:
    """Frozen-early: a step on cached trunk features (the cache's training) against the full forward."""
    from synapse7.cache import FrozenTrunk, TrainableTail, plan_split
    from synapse7.model import frozen_modules

    set_precision_flags(precision)
    torch._dynamo.reset()
    net, _ = build_net("resnet34", a.size, "frozen-early")
    net = net.to(dev).to(memory_format=torch.channels_last)
    split = plan_split(net)
    trunk, tail = FrozenTrunk(net, split).eval(), TrainableTail(net, split)
    net.train()
    for m in frozen_modules(net):
        m.eval()
    x, y = training_batch(dev, a)

    def build() -> torch.Tensor:
        with torch.no_grad(), autocast(dev, precision):
            return trunk(x)

    feats = build().detach()
    step = training_step(net, tail, feats, y, dev, precision)
    res = timed_rate(step, a.train_batch, dev, warmup=3, iters=a.train_iters, repeats=2)
    trunk_rate = timed_rate(build, a.train_batch, dev, warmup=1, iters=a.train_iters, repeats=2)
    run.add(
        "feature_cache",
        {
            "precision": precision,
            "cut_after": split.point,
            "tail_step_img_s": round(res["img_s"], 1),
            "trunk_forward_img_s (building the cache)": round(trunk_rate["img_s"], 1),
            "feature_MiB_per_image": round(feats[0].numel() * feats.element_size() / 2**20, 3),
        },
    )


# ----------------------------------------------------------------------------------------------------------


def cli_flow(run: Run, work: Path) -> None:
    """train -> evaluate -> predict through synapse7.cli.main on the CLI's default device (a GPU if any)."""
    import contextlib
    import io
    import shutil

    from synapse7.cli import main as cli
    from synapse7.demo import make_demo_dataset

    root = work / "cli"
    shutil.rmtree(root, ignore_errors=True)
    data = make_demo_dataset(
        root / "data", n_train=64 if not run.smoke else 8, n_val=16 if not run.smoke else 4
    )
    ckpt = root / "run" / "best.ckpt"
    images = [str(p) for p in sorted(data.glob("*/val/*/*.png"))]
    common = ["--num-workers", "2" if not run.smoke else "0"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # what the CLI picks by default
    steps = {
        "train": [
            "train", "--data", str(data), "--out", str(root / "run"), "--backbone", "resnet18",
            "--weights", "none", "--image-size", "64", "--batch-size", "32", "--epochs", "2",
            "--no-progress", *common,
        ],
        "evaluate": [
            "evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(root / "eval"), *common,
        ],
        "predict": ["predict", *images, "--checkpoint", str(ckpt), "--json", *common],
        "predict_default_model": ["predict", *images, "--json", *common],
    }  # fmt: skip
    for name, argv in steps.items():
        out, err = io.StringIO(), io.StringIO()
        t = time.perf_counter()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli(argv)
            error = None
        except BaseException as e:  # noqa: BLE001 - SystemExit included: every step is reported
            rc, error = getattr(e, "code", 1), traceback.format_exc()[-3000:]
        row: dict[str, Any] = {
            "step": name,
            "rc": rc,
            "s": round(time.perf_counter() - t, 1),
            "device": device,
        }
        if error or rc != 0:
            row["stderr_tail"] = (error or err.getvalue())[-3000:]
        if name == "evaluate" and (root / "eval" / "metrics.json").is_file():
            m = json.loads((root / "eval" / "metrics.json").read_text())
            row.update({k: m.get(k) for k in ("accuracy", "roc_auc", "n_real", "n_fake")})
        if name.startswith("predict") and rc == 0:
            lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("{")]
            row["rows"] = len(lines)
        run.add("cli", row)
        if rc != 0 and name == "train":
            break  # the rest needs its checkpoint


def random_jpegs(folder: Path, n: int) -> list[str]:
    """n smooth random 500x375 JPEGs (q90), for a machine without scikit-image's photographs."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        out.append(str(folder / f"{i:06d}.jpg"))
        img.save(out[-1], quality=90)
    return out


def environment(run: Run, dev: torch.device) -> None:
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu_count": os.cpu_count(),
        "device": str(dev),
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(
            gpu=p.name,
            sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpus=torch.cuda.device_count(),
        )
        peak = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in p.name), None)
        run.data["peak_bf16_tflops"] = peak
        # the matrix rate this GPU really reaches, as a second yardstick
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(dev)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(dev)
        env["measured_bf16_matmul_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)
        del a, b
    run.data["environment"] = env
    run.save()
    print(json.dumps(env), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks that the script runs")
    ap.add_argument("--budget", type=float, default=480, help="seconds; later sections are skipped past it")
    ap.add_argument("--images", type=int, default=2048, help="JPEGs made for the end-to-end runs")
    ap.add_argument(
        "--repeats", type=int, default=4, help="times each JPEG is listed (8,192 paths by default)"
    )
    ap.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma list of groups to run (default all): {', '.join(GROUPS)}",
    )
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "synapse7-gpu-bench"))
    a = ap.parse_args()
    only = set(a.only.split(","))
    if only - set(GROUPS):
        ap.error(
            f"unknown --only group(s): {', '.join(sorted(only - set(GROUPS)))}; choose from {', '.join(GROUPS)}"
        )
    smoke = a.smoke
    dev = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if dev.type != "cuda" and not smoke:
        ap.error("no CUDA device: run with --smoke to check the script on a CPU")
    # sizes: the issue's on a GPU; tiny ones for the smoke run
    a.size, a.batch, a.iters = (224, 256, 20) if not smoke else (64, 4, 1)
    a.train_batch, a.train_iters = (256, 10) if not smoke else (4, 1)
    a.workers = max(1, (os.cpu_count() or 2) - 2) if not smoke else 0
    a.precision = "bf16" if dev.type == "cuda" else "fp32"
    images = a.images if not smoke else 10
    a.repeats = a.repeats if not smoke else 1
    torch.backends.cudnn.benchmark = True  # fixed-size batches; Detector sets it on CUDA too
    run = Run(Path(a.out), a.budget, smoke)
    environment(run, dev)
    run.data["gflop_per_image"] = {
        b: round(count_gflop(b, a.size), 3) for b in ("resnet34", "efficientnet_lite0")
    }
    run.save()

    work = Path(a.work)
    from synapse7.config import load_config

    cfg = load_config(
        data={"image_size": a.size}, model={"backbone": "resnet34", "weights": "none", "input": "fft"}
    )
    ckpt = str(make_checkpoint(cfg, work / f"resnet34-{a.size}.ckpt"))
    t = time.perf_counter()
    try:
        files = write_images(work / f"jpegs-{images}", images, size=(500, 375), pool=64)
    except Exception as e:  # noqa: BLE001 - scikit-image's photos missing: smooth random images instead
        run.data["errors"].append(f"photos for the JPEGs: {type(e).__name__}: {e}; random images used")
        files = random_jpegs(work / f"random-jpegs-{images}", images)
    # each file listed `repeats` times: enough batches to amortise the workers' start, few files to write
    paths = files * a.repeats
    run.data["jpegs"] = {
        "files": len(files),
        "listed": len(paths),
        "size": "500x375",
        "quality": 90,
        "made_in_s": round(time.perf_counter() - t, 1),
    }
    from synapse7.transforms import build_preset

    preset = build_preset(cfg.data)

    compiled = [False] if smoke else [False, True]
    # 0. the CLI's train -> evaluate -> predict on this device (a correctness check, about a minute)
    if "cli" in only:
        run.guarded("cli flow", 60, cli_flow, run, work)
    # 1. model-only, eager first (seconds), then the compiled bf16 ResNet-34 (the target's row)
    for b in ("resnet34", "efficientnet_lite0") if "model" in only else ():
        for prec in ("fp32", "tf32", "bf16"):
            run.guarded(f"model_only {b} {prec} eager", 15, model_only, run, dev, b, prec, False, a)
    if not smoke and only & {"model", "compile-modes"}:
        modes = COMPILE_MODES if "compile-modes" in only else ("default",)
        for mode in modes:
            run.guarded(
                f"model_only resnet34 bf16 compiled ({mode})",
                60,
                model_only,
                run,
                dev,
                "resnet34",
                "bf16",
                True,
                a,
                mode=mode,
            )
    # 2. end to end
    if "e2e" in only:
        run.guarded("decode_only cpu", 20, decode_only_cpu, run, paths, preset, a.workers, a.batch)
        run.guarded("decode_only gpu", 20, decode_only_gpu, run, dev, paths, preset, a.workers, a.batch)
        for c in compiled:
            run.guarded(
                f"predict compiled={c}", 70 if c else 30, predict_e2e, run, dev, ckpt, paths, a, compiled=c
            )
        run.guarded("baseline", 45, baseline_e2e, run, dev, ckpt, paths[: min(len(paths), 1000)])
    # 3. training, eager
    for strategy in ("frozen-early", "full") if "train" in only else ():
        for prec in ("fp32", "bf16"):
            run.guarded(
                f"training {strategy} {prec} eager", 20, train_steps, run, dev, strategy, prec, False, a
            )
    # 4. feature cache
    for prec in (("fp32", "bf16") if not smoke else ("fp32",)) if "cache" in only else ():
        run.guarded(f"feature_cache {prec}", 20, cache_steps, run, dev, prec, a)
    # the rest of the compiled rows
    if not smoke and "compiled-rest" in only:
        for b, prec in [
            ("resnet34", "fp32"),
            ("resnet34", "tf32"),
            ("efficientnet_lite0", "bf16"),
            ("efficientnet_lite0", "fp32"),
            ("efficientnet_lite0", "tf32"),
        ]:
            run.guarded(f"model_only {b} {prec} compiled", 50, model_only, run, dev, b, prec, True, a)
        for strategy in ("full", "frozen-early"):
            for prec in ("bf16", "fp32"):
                run.guarded(
                    f"training {strategy} {prec} compiled", 90, train_steps, run, dev, strategy, prec, True, a
                )
    # 5. DDP
    n_gpu = torch.cuda.device_count() if dev.type == "cuda" else 0
    run.data["ddp"] = (
        "not run: one GPU lent (DDP on one node needs several)"
        if n_gpu < 2
        else f"{n_gpu} GPUs: not run by this script"
    )
    run.save()
    (run.out / "gpu.md").write_text(render(run.data))
    print(render(run.data), flush=True)


def render(data: dict[str, Any]) -> str:
    """Markdown tables of every section, and the targets' ratios where their rows exist."""
    lines: list[str] = []
    for name, rows in data["sections"].items():
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols and k != "stderr_tail"]  # tracebacks: in gpu.json only
        lines += [f"\n### {name}\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += ["", *targets(data)]
    if data["skipped"]:
        lines += ["", "Skipped (time budget): " + "; ".join(data["skipped"])]
    if data["errors"]:
        lines += ["", "Errors: " + "; ".join(data["errors"])]
    return "\n".join(lines) + "\n"


def targets(data: dict[str, Any]) -> list[str]:
    s = data["sections"]

    def pick(section: str, **kw: Any) -> dict | None:
        return next((r for r in s.get(section, []) if all(r.get(k) == v for k, v in kw.items())), None)

    out = []
    r = pick("model_only", backbone="resnet34", precision="bf16", compiled=True)
    if r and "frac_bf16_peak_7.3GFLOP" in r:
        out.append(
            f"- model-only bf16 + compile, ResNet-34, batch 256: {r['frac_bf16_peak_7.3GFLOP']:.1%} of the bf16 FLOP bound at 7.3 GFLOP/image (target >= 25%)"
        )
    r = max(
        (
            x
            for x in s.get("model_only", [])
            if x["backbone"] == "resnet34" and x["precision"] == "bf16" and x["compiled"]
        ),
        key=lambda x: x["img_s"],
        default=r,
    )
    if r and r["compiled"] is not True:
        out.append(
            f"- best compiled mode ({r['compiled']}): {r['frac_bf16_peak_7.3GFLOP']:.1%} of the same bound"
        )
    e2e = {r["pipeline"]: r for r in s.get("end_to_end", [])}
    gpu = [r for k, r in e2e.items() if "GPU decode" in k]
    dec = [r for r in s.get("decode_only", []) if "batched" in r["decode"]]
    base = [r for k, r in e2e.items() if k.startswith("reference")]
    if gpu and dec and r:
        best = max(gpu, key=lambda x: x["img_s"])
        bound = min(r["img_s"], dec[0]["img_s"])
        out.append(
            f"- end to end with GPU decoding ({best['pipeline']}): {best['img_s']} img/s = {best['img_s'] / bound:.2f}x the pipeline's bound min(model-only {r['img_s']}, decode-only {dec[0]['img_s']}) (target >= 0.7x)"
        )
        if base:
            out.append(
                f"- the same against the reference-style pipeline ({base[0]['img_s']} img/s): {best['img_s'] / base[0]['img_s']:.1f}x (target >= 10x)"
            )
    for strategy in ("frozen-early", "full"):
        for c in (False, True):
            f32 = pick("training", strategy=strategy, precision="fp32", compiled=c)
            b16 = pick("training", strategy=strategy, precision="bf16", compiled=c)
            if f32 and b16:
                out.append(
                    f"- training {strategy}{' compiled' if c else ''}: bf16-mixed {b16['img_s'] / f32['img_s']:.2f}x fp32 (target >= 2x)"
                )
    return out


if __name__ == "__main__":
    main()
