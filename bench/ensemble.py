"""What an ensemble costs: `predict_paths` throughput of one model, of flip TTA, and of two- and three-model
ensembles (`--checkpoint A --checkpoint B`), on the same images, in the same run.

    PYTHONPATH=src .venv/bin/python bench/ensemble.py [--n 512] [--repeats 2]

The network is issue 16's CIFAKE recipe (EfficientNet-Lite0 on RGB, 32 px JPEGs enlarged to 96; untrained
weights: speed does not depend on their values). Each row reports images/s and its ratio to the single model.
Decoding is done once per image for every member, so an ensemble of k costs k forward passes, not k pipelines.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from common import best_rate, machine_text, report, write_images  # noqa: E402
from synapse7.config import RunConfig
from synapse7.model import build_model
from synapse7.predict import Detector, EnsembleDetector


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="images (32x32 JPEG q90, as CIFAKE)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    cfg = RunConfig().override(
        data={"image_size": 96, "resize_size": 96, "mean": [0.5] * 3, "std": [0.5] * 3},
        model={"backbone": "efficientnet_lite0", "weights": "none", "input": "rgb"},
    )
    flip = replace(cfg, model=replace(cfg.model, tta="flip"))
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(Detector(build_model(cfg.model, load_weights=False).eval(), cfg, device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp) / "imgs", args.n, size=(32, 32))

        def rate(det: Detector) -> float:
            return best_rate(
                lambda: list(
                    det.predict_paths(paths, batch_size=args.batch_size, num_workers=args.num_workers)
                ),
                len(paths),
                args.repeats,
            )

        rows = [
            {"detector": "one model", "img_per_s": rate(members[0])},
            {
                "detector": "one model, flip TTA",
                "img_per_s": rate(Detector(members[0].net, flip, device="cpu")),
            },
        ]
        for k in (2, 3):
            ens = EnsembleDetector(members[:k], [f"m{i}" for i in range(k)])
            rows.append({"detector": f"ensemble of {k}", "img_per_s": rate(ens)})
        flipped = [Detector(m.net, flip, device="cpu") for m in members[:2]]
        rows.append(  # issue 16's chosen recipe
            {
                "detector": "ensemble of 2, flip TTA",
                "img_per_s": rate(EnsembleDetector(flipped, ["m0", "m1"])),
            }
        )
        for row in rows:
            row["x_one_model"] = row["img_per_s"] / rows[0]["img_per_s"]
    report(
        "ensemble cost",
        rows,
        extra={
            "images": f"{args.n} JPEG q90 at 32x32, enlarged to 96",
            "torch_threads": torch.get_num_threads(),
            "machine_text": machine_text(),
        },
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
