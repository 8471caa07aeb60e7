"""Memory over a large prediction run: `synapse7 predict` (the CLI, streaming) against the baseline.

    PYTHONPATH=src .venv/bin/python bench/memory.py --n 10000

Writes N small images (default 10,000 JPEGs of 96x96) under --work, runs the real CLI in a subprocess with its
output going to a file, and samples the memory of the whole process tree (CLI + DataLoader workers) 4x a
second. The baseline (bench/baseline.py, reference style: collects all predictions, writes them at the end)
runs over the same files in its own process. Flat memory: PSS at 10 %, 50 % and 90 % of the run agree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RssSampler, make_checkpoint, report, run_isolated, write_images


def baseline_run(ckpt: str, folder: str, out: str, batch: int, workers: int) -> dict:
    import json

    import torch

    from baseline import SpectrumNet, baseline_loader
    from synapse7.config import config_from_dict
    from synapse7.model import build_model
    from synapse7.predict import expand_paths, load_checkpoint

    ck = load_checkpoint(ckpt)
    cfg = config_from_dict(ck["hyper_parameters"]["config"])
    net = build_model(cfg.model, load_weights=False)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    model = SpectrumNet(net).eval()
    paths = expand_paths([folder])
    loader = baseline_loader(
        [(p, 0) for p in paths],
        batch_size=batch,
        num_workers=workers,
        image_size=cfg.data.image_size,
        resize_size=cfg.data.resolved_resize,
    )
    t = time.perf_counter()
    results = []
    with torch.inference_mode():
        for x, _ in loader:
            results += torch.sigmoid(model(x)).tolist()
    Path(out).write_text(
        "\n".join(json.dumps({"path": p, "p_ai": v}) for p, v in zip(paths, results, strict=True))
    )
    return {"seconds": time.perf_counter() - t, "images": len(results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--src-size", type=int, default=96)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "synapse7-bench"))
    ap.add_argument("--out")
    a = ap.parse_args()

    from synapse7.config import load_config

    work = Path(a.work)
    folder = work / f"images-jpeg-{a.src_size}-{a.n}"
    write_images(folder, a.n, size=(a.src_size, a.src_size), fmt="jpeg", pool=256)
    cfg = load_config(
        data={"image_size": a.image_size}, model={"backbone": a.backbone, "weights": "none", "input": "fft"}
    )  # the baseline's input
    ckpt = make_checkpoint(cfg, work / f"ckpt-{a.backbone}-{a.image_size}.ckpt")

    rows = []
    out = work / "predict-10k.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "synapse7",
        "predict",
        "--checkpoint",
        str(ckpt),
        "--json",
        "--device",
        "cpu",
        "--batch-size",
        str(a.batch_size),
        "--num-workers",
        str(a.workers),
        str(folder),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    t = time.perf_counter()
    with open(out, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.DEVNULL, env=env)
        with RssSampler(proc.pid) as sampler:
            rc = proc.wait()
    dt = time.perf_counter() - t
    lines = sum(1 for _ in open(out))
    # Our own peak when the CLI ran (its children are accounted by the sampler, not by getrusage of us).
    rows.append(
        {
            "pipeline": "synapse7 predict (CLI, streamed JSON lines)",
            "exit": rc,
            "images": lines,
            "img/s": lines / dt,
            **sampler.profile(),
        }
    )
    res = run_isolated(
        baseline_run,
        ckpt=str(ckpt),
        folder=str(folder),
        out=str(work / "baseline-10k.jsonl"),
        batch=a.batch_size,
        workers=a.workers,
    )
    rows.append(
        {
            "pipeline": "baseline (collect, write at end)",
            "exit": 0,
            "images": res["images"],
            "img/s": res["images"] / res["seconds"],
            **{k: v for k, v in res.items() if k.startswith(("tree_", "memory_"))},
        }
    )
    report(
        f"memory over {a.n} images",
        rows,
        out=a.out,
        extra={
            "command": " ".join(cmd[1:]),
            "backbone": a.backbone,
            "image_size": a.image_size,
            "images": f"JPEG {a.src_size}x{a.src_size}",
            "note": "CLI img/s includes process start-up; PSS sums split shared pages, RSS sums double-count",
        },
    )


if __name__ == "__main__":
    main()
