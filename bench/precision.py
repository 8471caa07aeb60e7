"""How much bf16 inference moves a trained detector's outputs: fp32 against `--precision bf16`, same images.

    PYTHONPATH=src .venv/bin/python bench/precision.py --checkpoint RUN/last.ckpt --data ../shared/data/cifake

Scores every image of the split with both precisions in one process (the same decoded batches) and prints the
agreement of P(AI) (max, mean, 99th percentile of |difference|), the labels that flip at the checkpoint's
threshold, accuracy and ROC-AUC of each, and the throughput of each forward pass. Needs a CPU with native bf16
(AVX512-BF16 or AMX) or a GPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the JSON result here")
    a = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from synapse7.data import MultiGenDataset, build_loader
    from synapse7.predict import Detector

    dets = {
        name: Detector.from_checkpoint(a.checkpoint, device=a.device, precision=name)
        for name in ("fp32", "bf16")
    }
    ds = MultiGenDataset(a.data, a.split, dets["fp32"].preset)
    probs: dict[str, list[np.ndarray]] = {name: [] for name in dets}
    seconds = dict.fromkeys(dets, 0.0)
    labels = []
    for batch in build_loader(ds, batch_size=a.batch_size, num_workers=a.num_workers):
        if "image" not in batch:
            continue
        labels.append(batch["label"].numpy())
        for name, det in dets.items():
            t = time.perf_counter()
            probs[name].append(det.predict_batch(batch["image"]))
            seconds[name] += time.perf_counter() - t
    y = np.concatenate(labels)
    p = {name: np.concatenate(v) for name, v in probs.items()}
    thr = dets["fp32"].threshold
    rows = [
        {
            "precision": name,
            "accuracy": float(((p[name] >= thr) == y).mean()),
            "roc_auc": float(roc_auc_score(y, p[name])),
            "forward img/s": len(y) / seconds[name],
        }
        for name in dets
    ]
    d = np.abs(p["fp32"] - p["bf16"])
    extra = {
        "images": len(y),
        "threshold": thr,
        "max |p_fp32 - p_bf16|": float(d.max()),
        "mean |p_fp32 - p_bf16|": float(d.mean()),
        "p99 |p_fp32 - p_bf16|": float(np.quantile(d, 0.99)),
        "labels flipped": int(((p["fp32"] >= thr) != (p["bf16"] >= thr)).sum()),
        "bf16 / fp32 forward": rows[1]["forward img/s"] / rows[0]["forward img/s"],
        "checkpoint": a.checkpoint,
        "data": a.data,
        "split": a.split,
    }
    report("fp32 against bf16 inference", rows, extra=extra, out=a.out)


if __name__ == "__main__":
    main()
