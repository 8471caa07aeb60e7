"""The spectrum (standardised log|FFT| of a (B, 3, S, S) batch) in every implementation Synapse-7 has or rejected.

    PYTHONPATH=src .venv/bin/python bench/spectrum.py --size 224

- numpy per sample: what the baseline does inside __getitem__ (complex128 fft2).
- torch full fft2 + fftshift: the textbook form (and Synapse-7's before the rfft change).
- torch rfft2 + mirror (synapse7.spectrum.log_magnitude): half the spectrum, one gather.
- torch matmul DFT (log_magnitude_matmul, eager): what the ONNX export runs.
- ONNX Runtime with ONNX's DFT op (torch.onnx export of torch.fft) and with the matmul DFT.
Max |difference| to the numpy float64 reference is reported for each (after standardisation).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import best_rate, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch
    from torch import nn

    from baseline import numpy_spectrum
    from synapse7.spectrum import spectrum_features, standardize

    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    ref = np.stack([numpy_spectrum(xn[i].astype(np.float64)) for i in range(a.batch)])

    def full_fft(t: torch.Tensor) -> torch.Tensor:
        f = torch.fft.fftshift(torch.fft.fft2(t, norm="ortho"), dim=(-2, -1))
        return standardize(torch.log(f.abs() + 1e-6))

    class Full(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return full_fft(t)

    class Matmul(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return spectrum_features(t, dft="matmul")

    impls: dict[str, Callable[[], np.ndarray]] = {
        "numpy per sample (baseline)": lambda: np.stack([numpy_spectrum(xn[i]) for i in range(a.batch)]),
        "torch fft2 + fftshift": lambda: full_fft(x).numpy(),
        "torch rfft2 + mirror (synapse7)": lambda: spectrum_features(x).numpy(),
        "torch matmul DFT (export form)": lambda: spectrum_features(x, dft="matmul").numpy(),
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    with tempfile.TemporaryDirectory() as d:
        for name, mod in (
            ("onnxruntime, ONNX DFT op", Full()),
            ("onnxruntime, matmul DFT (synapse7 export)", Matmul()),
        ):
            path = str(Path(d) / "m.onnx")
            torch.onnx.export(
                mod.eval(),
                (x,),
                path,
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0].name
            impls[name] = lambda s=sess, i=inp: s.run(None, {i: xn})[0]
        base = None
        rows = []
        for name, fn in impls.items():
            r = best_rate(fn, a.batch, a.repeats)
            base = base or r
            rows.append(
                {
                    "implementation": name,
                    "img/s": r,
                    "x numpy": r / base,
                    "max |diff| vs float64": float(np.abs(fn() - ref).max()),
                }
            )
    report(f"spectrum {a.size}px, batch {a.batch}, {a.threads} thread(s)", rows, out=a.out)


if __name__ == "__main__":
    main()
