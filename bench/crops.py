"""What crop voting costs: `predict_paths` throughput with 1, 4, 16 (and 64) native-resolution crops per image,
against the reference-style resize-and-centre-crop preset, on the same JPEGs, in the same run.

    PYTHONPATH=src .venv/bin/python bench/crops.py [--n 48] [--size 1600x1200] [--repeats 2]

The network is the shipped recipe's (npr_resnet on the NPR residual, 64 px crops, untrained weights: speed does
not depend on their values). The baseline row is the same network on one 64 px crop of the image resized to 73
px (what `--preprocess resize` would do). Each row reports images/s and its ratio to the 1-crop row.
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
from synapse7.predict import Detector


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="images (JPEG q90)")
    ap.add_argument(
        "--size", default="1600x1200", help="image size WxH (default: the wild set's typical size)"
    )
    ap.add_argument("--crops", default="1,4,16,64", help="crop counts to time (square numbers)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    base = RunConfig().override(
        data={"image_size": 64, "preprocess": "crop"},
        model={"backbone": "npr_resnet", "weights": "none", "input": "npr"},
    )
    net = build_model(base.model, load_weights=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp) / "imgs", args.n, size=(w, h))

        def rate(cfg: RunConfig) -> float:
            det = Detector(net, cfg, device="cpu")
            return best_rate(
                lambda: list(det.predict_paths(paths, batch_size=16, num_workers=args.num_workers)),
                len(paths),
                args.repeats,
            )

        rows = [
            {
                "pipeline": "resize to 73, centre crop 64 (reference-style)",
                "img_per_s": rate(replace(base, data=replace(base.data, preprocess="resize"))),
            }
        ]
        one = None
        for k in (int(c) for c in args.crops.split(",")):
            r = rate(replace(base, data=replace(base.data, crops=k)))
            one = one or r
            rows.append({"pipeline": f"native resolution, {k} crop(s) of 64 px", "img_per_s": r})
        for row in rows:
            row["x_1_crop"] = row["img_per_s"] / one
    report(
        "crop voting cost",
        rows,
        extra={"images": f"{args.n} JPEG q90 at {w}x{h}", "machine_text": machine_text()},
        out=args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
