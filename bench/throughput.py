"""Inference throughput: model-only forward, Synapse-7 `predict` (eager, ONNX Runtime, bf16) and the baseline.

    PYTHONPATH=src .venv/bin/python bench/throughput.py --n 256 --backbone resnet34 --image-size 224 [--compile]

On a CPU with native bf16 (or a GPU) the eager pipelines also run with `--precision bf16` (and, with
--compile, bf16 + torch.compile); each is compared with its own model-only forward and with the fp32 baseline.

Each pipeline runs in its own fresh process (so its peak RSS is its own) over the same folder of images, in
alternating order for --repeats rounds; the best round of each is reported. Targets (issue 5): end-to-end
predict >= 0.85x the model-only forward, >= 2x the baseline, ONNX no slower than eager.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import make_checkpoint, report, run_isolated, timed, write_images


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)  # ONNX Runtime follows (OnnxEngine uses torch's thread count)


def model_only(
    ckpt: str,
    engine: str,
    onnx: str | None,
    n: int,
    batch: int,
    threads: int | None,
    precision: str = "fp32",
    compile: bool = False,
) -> dict:
    """The forward pass alone on an in-memory batch: the ceiling for end-to-end prediction."""
    import torch

    _threads(threads)

    from synapse7.predict import Detector

    det = Detector.from_checkpoint(
        ckpt, device="cpu", engine=engine, onnx=onnx, precision=precision, compile=compile
    )
    s = det.cfg.data.image_size
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    warm, _ = timed(lambda: det.predict_batch(x))  # warm-up (allocations, ONNX Runtime arena, compilation)
    steps = max(1, n // batch)
    dt, _ = timed(lambda: [det.predict_batch(x) for _ in range(steps)])
    return {"img_s": steps * batch / dt, "seconds": dt, "images": steps * batch, "warmup_seconds": warm}


def synapse7_predict(
    ckpt: str,
    engine: str,
    onnx: str | None,
    paths: list[str],
    batch: int,
    workers: int,
    fast_decode: bool,
    threads: int | None,
    precision: str = "fp32",
    compile: bool = False,
) -> dict:
    """What `synapse7 predict FOLDER` does: stream P(AI) for files, decoding in DataLoader workers."""
    import torch

    _threads(threads)

    from synapse7.predict import Detector

    det = Detector.from_checkpoint(
        ckpt,
        device="cpu",
        engine=engine,
        onnx=onnx,
        fast_decode=fast_decode or None,
        precision=precision,
        compile=compile,
    )
    s = det.cfg.data.image_size
    warm, _ = timed(lambda: det.predict_batch(torch.zeros(batch, 3, s, s)))  # same warm-up as model_only
    t = time.perf_counter()
    p = [r.p_ai for r in det.predict_paths(paths, batch_size=batch, num_workers=workers)]
    dt = time.perf_counter() - t
    return {"img_s": len(p) / dt, "seconds": dt, "images": len(p), "p": p, "warmup_seconds": warm}


def baseline(ckpt: str, paths: list[str], batch: int, workers: int, threads: int | None) -> dict:
    """The reference-style pipeline (bench/baseline.py) with the same weights."""
    import torch

    _threads(threads)

    from baseline import SpectrumNet, baseline_loader, baseline_predict
    from synapse7.config import config_from_dict
    from synapse7.model import build_model
    from synapse7.predict import load_checkpoint

    ck = load_checkpoint(ckpt)
    cfg = config_from_dict(ck["hyper_parameters"]["config"])
    net = build_model(cfg.model, load_weights=False)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    model = SpectrumNet(net).eval()
    s = cfg.data.image_size
    with torch.inference_mode():
        model(torch.zeros(batch, 3, s, s))  # warm-up
    loader = baseline_loader(
        [(p, 0) for p in paths],
        batch_size=batch,
        num_workers=workers,
        image_size=s,
        resize_size=cfg.data.resolved_resize,
        preprocess=cfg.data.preprocess,
    )
    t = time.perf_counter()
    p = baseline_predict(model, loader)
    dt = time.perf_counter() - t
    return {"img_s": len(p) / dt, "seconds": dt, "images": len(p), "p": p.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="images in the folder")
    ap.add_argument("--src-size", default="500x375", help="WxH of the generated images (ImageNet-like JPEGs)")
    ap.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, help="intra-op threads for every pipeline (default: PyTorch's)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument(
        "--fast-decode", action="store_true", help="also run Synapse-7 predict with --fast-decode"
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also run the bf16 rows with --compile (torch.compile; its warm-up time is reported apart)",
    )
    ap.add_argument(
        "--no-bf16",
        action="store_true",
        help="skip the --precision bf16 rows (they are skipped anyway on CPUs without native bf16)",
    )
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "synapse7-bench"))
    ap.add_argument("--out", help="write the JSON result here")
    a = ap.parse_args()

    import torch

    from synapse7.config import load_config
    from synapse7.predict import Detector

    w, h = (int(v) for v in a.src_size.split("x"))
    work = Path(a.work)
    paths = write_images(work / f"images-{a.format}-{w}x{h}-{a.n}", a.n, size=(w, h), fmt=a.format)
    # input "fft": the baseline computes the spectrum only (the reference's input)
    cfg = load_config(
        data={"image_size": a.image_size}, model={"backbone": a.backbone, "weights": "none", "input": "fft"}
    )
    ckpt = str(make_checkpoint(cfg, work / f"ckpt-{a.backbone}-{a.image_size}.ckpt"))
    onnx = None
    extra: dict = {}
    if not a.no_onnx:
        from synapse7.export import export_onnx

        det = Detector.from_checkpoint(ckpt, device="cpu")
        onnx = str(work / f"{a.backbone}-{a.image_size}.onnx")
        dt, _ = timed(lambda: export_onnx(det.net, det.cfg, onnx))
        extra["onnx_export_seconds"] = round(dt, 1)
        del det

    runs = {
        "model-only forward, eager (channels_last)": (model_only, dict(ckpt=ckpt, engine="eager", onnx=None)),
        "synapse7 predict, eager": (
            synapse7_predict,
            dict(ckpt=ckpt, engine="eager", onnx=None, paths=paths, workers=a.workers, fast_decode=False),
        ),
        "baseline (reference-style)": (baseline, dict(ckpt=ckpt, paths=paths, workers=a.workers)),
    }
    if onnx:
        runs["model-only forward, onnxruntime"] = (model_only, dict(ckpt=ckpt, engine="onnx", onnx=onnx))
        runs["synapse7 predict, onnx"] = (
            synapse7_predict,
            dict(ckpt=ckpt, engine="onnx", onnx=onnx, paths=paths, workers=a.workers, fast_decode=False),
        )
    if not a.no_bf16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        runs["model-only forward, eager bf16"] = (
            model_only,
            dict(ckpt=ckpt, engine="eager", onnx=None, precision="bf16"),
        )
        runs["synapse7 predict, eager bf16"] = (
            synapse7_predict,
            dict(
                ckpt=ckpt,
                engine="eager",
                onnx=None,
                paths=paths,
                workers=a.workers,
                fast_decode=False,
                precision="bf16",
            ),
        )
        if a.compile:
            runs["model-only forward, eager bf16 compiled"] = (
                model_only,
                dict(ckpt=ckpt, engine="eager", onnx=None, precision="bf16", compile=True),
            )
            runs["synapse7 predict, eager bf16 compiled"] = (
                synapse7_predict,
                dict(
                    ckpt=ckpt,
                    engine="eager",
                    onnx=None,
                    paths=paths,
                    workers=a.workers,
                    fast_decode=False,
                    precision="bf16",
                    compile=True,
                ),
            )
    if a.fast_decode:
        runs["synapse7 predict, eager, fast-decode"] = (
            synapse7_predict,
            dict(ckpt=ckpt, engine="eager", onnx=None, paths=paths, workers=a.workers, fast_decode=True),
        )
    best: dict[str, dict] = {}
    names = list(runs)
    for r in range(a.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, kw = runs[name]
            shared = dict(batch=a.batch_size, threads=a.threads)
            res = (
                run_isolated(fn, n=a.n, **shared, **kw)
                if fn is model_only
                else run_isolated(fn, **shared, **kw)
            )
            print(f"round {r + 1}: {name}: {res['img_s']:.1f} img/s", flush=True)
            if name not in best or res["img_s"] > best[name]["img_s"]:
                best[name] = res

    base = best["baseline (reference-style)"]["img_s"]
    model_eager = best["model-only forward, eager (channels_last)"]["img_s"]
    rows = []
    for name in names:
        res = best[name]
        rows.append(
            {
                "pipeline": name,
                "img/s": res["img_s"],
                "x baseline": res["img_s"] / base,
                "x model-only eager": res["img_s"] / model_eager,
                "peak RSS MiB (main process)": res["main_peak_rss_mib"],
                "peak PSS MiB (process + workers)": res["tree_peak_pss_mib"],
            }
        )
    ref_p = np.asarray(best["baseline (reference-style)"]["p"])
    for name in names:
        if "p" in best[name] and name != "baseline (reference-style)":
            extra[f"max |p - baseline p| ({name})"] = float(np.abs(np.asarray(best[name]["p"]) - ref_p).max())
    for name in names:
        if "warmup_seconds" in best[name]:
            extra[f"first-call seconds ({name})"] = round(best[name]["warmup_seconds"], 2)
    if "synapse7 predict, eager bf16 compiled" in best:
        extra["predict bf16 compiled / model-only bf16 compiled"] = (
            best["synapse7 predict, eager bf16 compiled"]["img_s"]
            / best["model-only forward, eager bf16 compiled"]["img_s"]
        )
    if "synapse7 predict, eager bf16" in best:
        extra["predict bf16 / model-only bf16"] = (
            best["synapse7 predict, eager bf16"]["img_s"] / best["model-only forward, eager bf16"]["img_s"]
        )
    if onnx:
        extra["onnx / eager (predict)"] = (
            best["synapse7 predict, onnx"]["img_s"] / best["synapse7 predict, eager"]["img_s"]
        )
        extra["predict onnx / model-only onnx"] = (
            best["synapse7 predict, onnx"]["img_s"] / best["model-only forward, onnxruntime"]["img_s"]
        )
    extra.update(
        {
            "n": a.n,
            "images": f"{a.format} {w}x{h}",
            "backbone": a.backbone,
            "image_size": a.image_size,
            "batch_size": a.batch_size,
            "workers": a.workers,
            "repeats": a.repeats,
            "threads": a.threads or "torch default",
        }
    )
    report("inference throughput", rows, extra=extra, out=a.out)


if __name__ == "__main__":
    main()
