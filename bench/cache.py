"""Training epochs: Synapse-7 with the frozen-trunk feature cache against the reference-style baseline.

    PYTHONPATH=src .venv/bin/python bench/cache.py --n-train 32 --n-val 16 --epochs 3 --backbone resnet34

Both start from the same initial weights (same seed, same model code) and train the same parameters (the
strategy's trainable stages + head) with AdamW and a cosine schedule. The baseline decodes, resizes and computes
the FFT for every image and runs the full forward pass in every epoch; Synapse-7 (`synapse7.train.train` with
`feature_cache`) runs the frozen part once, before epoch 1, and trains the tail on the cache. An epoch is timed
from its start to the end of its validation pass. Target (issue 5): epochs >= 2 at least 5x faster, with the same
validation accuracy within noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import report, run_isolated, write_dataset


def _config(root: str, a: dict[str, Any], cache: str | None) -> Any:
    from synapse7.config import load_config

    return load_config(
        data={
            "root": root,
            "image_size": a["image_size"],
            "batch_size": a["batch_size"],
            "num_workers": a["workers"],
        },
        model={"backbone": a["backbone"], "weights": "none", "input": "fft", "trainable": a["strategy"]},
        train={
            "epochs": a["epochs"],
            "accelerator": "cpu",
            "devices": "1",
            "seed": 42,
            "feature_cache": cache,
            "ckpt_every_n_steps": 10_000,
            "precision": a.get("precision") or "fp32",
        },
    )


def synapse7_run(root: str, out: str, cache: str | None, a: dict[str, Any]) -> dict:
    """synapse7.train.train, with a callback timing each epoch and reading its validation accuracy."""
    import lightning as L
    import torch

    import synapse7.cache as cache_mod
    import synapse7.train as train_mod

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    epochs: list[dict[str, float]] = []
    build = {"seconds": 0.0}

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            m = trainer.callback_metrics
            epochs.append(
                {
                    "seconds": time.perf_counter() - self.t,
                    "val_acc": float(m["val_acc"]),
                    "val_auc": float(m["val_auc"]),
                }
            )

    prepare = cache_mod.prepare_cached_training

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            build["seconds"] = time.perf_counter() - t

    cache_mod.prepare_cached_training = timed_prepare  # train() imports it from the module at call time
    cfg = _config(root, a, cache)
    train_mod.train(cfg, out, progress=False, callbacks=[EpochTimer()])
    return {"epochs": epochs, "cache_build_seconds": build["seconds"]}


def baseline_run(root: str, a: dict[str, Any]) -> dict:
    """The reference-style loop: images -> numpy FFT in 2 workers -> full forward + backward, every epoch."""
    import torch

    from baseline import SpectrumNet, accuracy, baseline_loader, baseline_predict, baseline_train_epoch
    from synapse7.data import discover_samples
    from synapse7.model import build_model, frozen_modules

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    cfg = _config(root, {**a, "precision": None}, None)  # the baseline is the plain fp32 loop
    torch.manual_seed(42)  # the same initial weights as synapse7.train (seeded the same way)
    net = build_model(cfg.model)
    model = SpectrumNet(net)
    train_items = [(s.path, s.label) for s in discover_samples(root, "train")]
    val_items = [(s.path, s.label) for s in discover_samples(root, "val")]
    kw = dict(
        batch_size=a["batch_size"],
        num_workers=a["workers"],
        image_size=a["image_size"],
        resize_size=cfg.data.resolved_resize,
    )
    train_loader = baseline_loader(train_items, shuffle=True, **kw)
    val_loader = baseline_loader(val_items, **kw)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.epochs)
    frozen = frozen_modules(net)
    epochs = []
    for _ in range(cfg.train.epochs):
        t = time.perf_counter()
        baseline_train_epoch(model, train_loader, opt, frozen)
        sched.step()
        p = baseline_predict(model, val_loader)
        epochs.append({"seconds": time.perf_counter() - t, "val_acc": accuracy(p, [y for _, y in val_items])})
    return {"epochs": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--n-train", type=int, default=32, help="train images per class and generator (3 generators)"
    )
    ap.add_argument("--n-val", type=int, default=16, help="val images per class and generator")
    ap.add_argument("--src-size", type=int, default=256, help="side of the generated PNGs")
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument(
        "--strategy", default="frozen-early", help="frozen-early | linear-probe | a trainable list"
    )
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    ap.add_argument(
        "--uncached",
        action="store_true",
        help="also run synapse7.train without the cache, in fp32 (the accuracy reference)",
    )
    ap.add_argument(
        "--precision",
        default="fp32",
        help="--precision of the synapse7 runs (auto|fp32|bf16|fp16; bf16 on CPUs with native bf16); "
        "the baseline always runs the plain fp32 loop",
    )
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "synapse7-bench"))
    ap.add_argument("--out", help="write the JSON result here")
    a = ap.parse_args()
    work = Path(a.work)
    root = str(write_dataset(work / "train-data", n_train=a.n_train, n_val=a.n_val, size=a.src_size))
    args = {
        k: getattr(a, k)
        for k in (
            "image_size",
            "batch_size",
            "workers",
            "backbone",
            "strategy",
            "epochs",
            "threads",
            "precision",
        )
    }
    run = Path(tempfile.mkdtemp(prefix="runs-", dir=work))
    results = {
        "baseline (reference-style)": run_isolated(baseline_run, root=root, a=args),
        "synapse7 train --feature-cache": run_isolated(
            synapse7_run, root=root, out=str(run / "cached"), cache=str(run / "feature-cache"), a=args
        ),
    }
    if a.uncached:
        # the accuracy reference: no cache and plain fp32, whatever --precision the cached run uses
        results["synapse7 train (no cache, fp32)"] = run_isolated(
            synapse7_run, root=root, out=str(run / "plain"), cache=None, a={**args, "precision": None}
        )
    base = results["baseline (reference-style)"]["epochs"]
    n_train = 3 * 2 * a.n_train
    rows = []
    for name, res in results.items():
        build = res.get("cache_build_seconds", 0.0)
        for i, ep in enumerate(res["epochs"]):
            secs = ep["seconds"] + (build if i == 0 else 0.0)  # epoch 1 pays for building the cache
            rows.append(
                {
                    "pipeline": name,
                    "epoch": i + 1,
                    "seconds": secs,
                    "train img/s": n_train / secs,
                    "x baseline": base[i]["seconds"] / secs,
                    "val acc": ep["val_acc"],
                    "peak PSS MiB": res["tree_peak_pss_mib"],
                }
            )
    later = [r for r in rows if r["pipeline"] == "synapse7 train --feature-cache" and r["epoch"] >= 2]
    extra = {
        "epochs >= 2 speed-up (mean of ratios)": sum(r["x baseline"] for r in later) / max(1, len(later)),
        "cache_build_seconds": results["synapse7 train --feature-cache"]["cache_build_seconds"],
        "train_images": n_train,
        "val_images": 3 * 2 * a.n_val,
        **args,
    }
    report("training epochs with the feature cache", rows, extra=extra, out=a.out)


if __name__ == "__main__":
    main()
