"""Synapse-7: tells AI-generated images from real photographs by how they were built (global FFT spectra)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Detector", "Prediction", "__version__"]


def __getattr__(name: str):
    # Lazy: `import synapse7` stays light; the Detector pulls in torch only when used.
    if name in ("Detector", "Prediction"):
        from synapse7 import predict

        return getattr(predict, name)
    raise AttributeError(name)
