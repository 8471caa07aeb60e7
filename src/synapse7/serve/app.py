"""FastAPI app: `GET /` (the upload page), `POST /api/predict`, `GET /api/health`, `GET /api/info`.

One shared Detector serves every request. Inference runs in a worker thread (the event loop keeps serving)
behind a capacity-1 limiter, so concurrent requests queue instead of oversubscribing the CPU cores. Every
upload is decoded by the Detector (synapse7.io.open_image), so a bad file gets the same reason as in the CLI;
problems with one file become an error entry for that file, and only request-level problems are 4xx.
"""

from __future__ import annotations

import logging
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synapse7 import __version__
from synapse7.predict import Detector, Prediction

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_FILES = 32
STATIC_DIR = Path(__file__).parent / "static"
PREDICT_PATH = "/api/predict"
_MULTIPART_OVERHEAD = 2**20  # part headers and boundaries, on top of the file bytes

# The service accepts the formats of synapse7.io.IMAGE_EXTENSIONS, recognised by their magic bytes. PIL can open
# more (EPS via Ghostscript, ICNS, PSD, ...), which a network-facing service has no reason to expose.
_MAGIC: tuple[tuple[str, bytes, int], ...] = (  # (name, signature, offset)
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("WebP", b"WEBP", 8),  # RIFF....WEBP
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)
ACCEPTED_TYPES = ("JPEG", "PNG", "WebP", "BMP", "GIF", "TIFF")


def sniff_image_type(data: bytes) -> str | None:
    """The accepted image format named by the leading bytes of `data`, or None."""
    for name, sig, off in _MAGIC:
        if data[off:off + len(sig)] == sig and (name != "WebP" or data[:4] == b"RIFF"):
            return name
    return None


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def clean_filename(name: str | None, index: int) -> str:
    """The client's file name without directories or control characters (it is echoed back and shown)."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()[:200]
    return base or f"upload-{index + 1}"


class BodyLimitMiddleware:
    """Rejects a predict request whose body exceeds `max_bytes` with 413, before it is spooled to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int, path: str = PREDICT_PATH) -> None:
        self.app, self.max_bytes, self.path = app, max_bytes, path

    def _detail(self) -> str:
        return f"request body too large: the limit is {_human_bytes(self.max_bytes)} per request"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._detail()}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            # Chunked uploads carry no Content-Length: count the bytes as they arrive.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)


def _model_summary(det: Detector) -> dict[str, Any]:
    return {"backbone": det.cfg.model.backbone, "input": det.cfg.model.input, "image_size": det.cfg.data.image_size}


def create_app(detector: Detector | None = None, checkpoint: str | os.PathLike | None = None, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_files: int = DEFAULT_MAX_FILES,
               max_request_bytes: int | None = None, threshold: float | None = None,
               device: str | None = None, batch_size: int = 32) -> FastAPI:
    """Build the web app around `detector`, or a Detector loaded from `checkpoint` (loaded now, so a bad path
    fails at start-up rather than on the first request). `max_request_bytes` defaults to room for `max_files`
    files of `max_upload_bytes` each."""
    if (detector is None) == (checkpoint is None):
        raise ValueError("create_app needs exactly one of detector= or checkpoint=")
    if max_upload_bytes < 1 or max_files < 1 or batch_size < 1:
        raise ValueError("max_upload_bytes, max_files and batch_size must be positive")
    det = detector if detector is not None else Detector.from_checkpoint(checkpoint, device=device, threshold=threshold)
    if max_request_bytes is None:
        max_request_bytes = max_files * max_upload_bytes + _MULTIPART_OVERHEAD
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    limiter = anyio.CapacityLimiter(1)
    public_config = det.cfg.to_dict()
    public_config["data"]["root"] = None  # the training data's path on the training machine says nothing useful
    limits = {"max_upload_bytes": max_upload_bytes, "max_files": max_files, "max_request_bytes": max_request_bytes,
              "max_pixels": det.cfg.data.max_pixels, "accepted_types": list(ACCEPTED_TYPES)}

    # /docs and /redoc load Swagger/ReDoc from a CDN; the service stays offline, so only /openapi.json is kept.
    app = FastAPI(title="Synapse-7", version=__version__, docs_url=None, redoc_url=None,
                  description="Detects AI-generated images from their global FFT spectra.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    app.state.detector = det
    app.state.limits = limits

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        headers = {
            # Inline CSS/JS only; images are previewed from blob: URLs; requests go to this origin alone.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                                       "form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        return HTMLResponse(page, headers=headers)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        cfg = det.cfg
        return {"name": "synapse7", "version": __version__, "threshold": det.threshold, "model": _model_summary(det),
                "preprocess": {"mode": cfg.data.preprocess, "resize_size": cfg.data.resolved_resize,
                               "crop_size": cfg.data.image_size},
                "device": str(det.device), "limits": limits, "config": public_config}

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}

    @app.post(PREDICT_PATH, openapi_extra=upload_schema)
    async def predict(request: Request) -> dict[str, Any]:
        """Classify the images uploaded under the multipart field `files`, in order."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise HTTPException(415, "send the images as multipart/form-data, one or more files under the field 'files'")
        try:
            form = await request.form(max_files=max_files, max_fields=max_files + 16)
        except StarletteHTTPException as e:  # what Request.form raises for a malformed or over-full body
            if e.status_code == 400 and "too many files" in str(e.detail).lower():
                raise HTTPException(413, f"too many files: at most {max_files} per request; "
                                         "send them in smaller batches") from e
            if e.status_code == 400:
                raise HTTPException(400, f"malformed multipart body: {e.detail}") from e
            raise  # 413 from BodyLimitMiddleware while the body streamed in
        try:
            entries = form.getlist("files")
            if not entries:
                others = sorted(set(form.keys()))
                hint = f" (the request had field(s): {', '.join(others)})" if others else ""
                raise HTTPException(400, f"no files: send one or more images under the multipart field 'files'{hint}")
            if any(not isinstance(e, UploadFile) for e in entries):
                raise HTTPException(400, "the field 'files' must hold file uploads, not text values")
            results, pending = await _read_uploads(entries, max_upload_bytes)
        finally:
            await form.close()
        if pending:
            # Decode + preprocess + one batched forward pass, off the event loop; requests take turns.
            outcomes = await anyio.to_thread.run_sync(
                partial(_predict_isolated, det, [data for _, data in pending], batch_size), limiter=limiter)
            for (i, _), out in zip(pending, outcomes, strict=True):
                if isinstance(out, str):
                    results[i] |= {"label": "ERROR", "p_ai": None, "error": out}
                elif out.error is not None:
                    results[i] |= {"label": "ERROR", "p_ai": None, "error": out.error}
                else:
                    results[i] |= {"label": out.label, "p_ai": out.p_ai}
        return {"results": results, "threshold": det.threshold, "model": _model_summary(det)}

    return app


def _predict_isolated(det: Detector, images: list[bytes], batch_size: int) -> list[Prediction | str]:
    """det.predict on the batch; if it fails unexpectedly (BadImageError is already per file inside it), retry one
    image at a time so only the offending file gets an error (a string) and the request never turns into a 500."""
    try:
        return list(det.predict(images, batch_size=batch_size))
    except Exception:  # noqa: BLE001 - isolate below, then report per file
        log.exception("batch prediction failed; retrying %d image(s) one at a time", len(images))
    out: list[Prediction | str] = []
    for data in images:
        try:
            out.append(det.predict([data])[0])
        except Exception as e:  # noqa: BLE001
            out.append(f"could not process image: {type(e).__name__}: {e}")
    return out


async def _read_uploads(entries: list[UploadFile], max_bytes: int) -> tuple[list[dict[str, Any]], list[tuple[int, bytes]]]:
    """Per-file checks before decoding. Returns a result stub per file and the (index, bytes) still to predict;
    stubs of rejected files already hold label ERROR and the reason."""
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, bytes]] = []
    for i, up in enumerate(entries):
        name = clean_filename(up.filename, i)
        results.append({"filename": name})
        error: str | None = None
        if up.size is not None and up.size > max_bytes:
            error = f"file too large: {_human_bytes(up.size)} > limit {_human_bytes(max_bytes)}"
        else:
            data = await up.read(max_bytes + 1)  # bounded even when the size is unknown
            if len(data) > max_bytes:
                error = f"file too large: more than the limit of {_human_bytes(max_bytes)}"
            elif not data:
                error = "zero-byte file"
            elif sniff_image_type(data) is None:
                error = f"not a recognised image (unknown type; accepted: {', '.join(ACCEPTED_TYPES)})"
            else:
                pending.append((i, data))
        if error is not None:
            results[i] |= {"label": "ERROR", "p_ai": None, "error": error}
    return results, pending
