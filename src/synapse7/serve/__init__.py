"""Web service: a FastAPI app with an upload page and a JSON API (`create_app`). Needs the `serve` extra."""

from __future__ import annotations

from synapse7.serve.app import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    create_app,
    exposure_warning,
)

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "create_app",
    "exposure_warning",
]
