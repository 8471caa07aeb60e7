"""Synapse-7: tells AI-generated images from real photographs by how they were built (global FFT spectra)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synapse7")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Detector", "Prediction", "__version__"]


def __getattr__(name: str):
    # Lazy: `import synapse7` stays light; the Detector pulls in torch only when used.
    if name in ("Detector", "Prediction"):
        from synapse7 import predict

        return getattr(predict, name)
    raise AttributeError(name)
