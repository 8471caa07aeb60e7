"""How close `synapse7 synthesize`'s fakes are to their reals: mean PSNR per method over a split's pairs.

    PYTHONPATH=src .venv/bin/python bench/synth_fidelity.py ROOT [--split val]

ROOT is a `synthesize` output; pairs come from its manifest.csv (each fake with the real it was made from).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import report  # noqa: E402
from synapse7.io import open_image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="a `synapse7 synthesize` output folder")
    ap.add_argument("--split", default="val", help="pairs of this split (default val)")
    args = ap.parse_args(argv)
    scores: dict[str, list[float]] = defaultdict(list)
    with open(args.root / "manifest.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["split"] == args.split:
                real = np.asarray(open_image(args.root / row["real"]))
                fake = np.asarray(open_image(args.root / row["fake"]))
                scores[row["method"]].append(psnr(real, fake))
    rows = [
        {"method": m, "pairs": len(v), "mean_psnr_db": float(np.mean(v))} for m, v in sorted(scores.items())
    ]
    report(f"synthesize fidelity ({args.split} pairs of {args.root})", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
