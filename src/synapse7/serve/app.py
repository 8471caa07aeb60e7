"""FastAPI app: `GET|HEAD /` (the upload page), `POST /api/predict`, `POST /api/explain`, `GET /api/health`,
`GET /api/info`, and the API docs at `/docs` (Swagger UI served from this process: no CDN).

One shared Detector serves every request. Inference runs in a worker thread (the event loop keeps serving)
behind a capacity-1 limiter, so concurrent requests queue instead of oversubscribing the CPU cores. Every
upload is decoded by synapse7.io.open_image, so a bad file gets the same reason as in the CLI; problems with
one file become an error entry for that file, and only request-level problems are 4xx. The model endpoints can
require a bearer token and are rate-limited per client address.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import ipaddress
import logging
import math
import os
import re
import secrets
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import fastapi_offline
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synapse7 import __version__
from synapse7.explain import DEFAULT_GRID, explain, preview_png, render_views
from synapse7.io import BadImageError, open_image
from synapse7.predict import Detector, EnsembleDetector, Prediction

log = logging.getLogger(__name__)

# Explanations import Captum on first use; without it the service would fail on every /api/explain, so refuse to
# start instead (the CLI turns this into "install the extra").
if importlib.util.find_spec("captum") is None:
    raise ImportError("captum is not installed (explanations need it)", name="captum")

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_FILES = 32
# The whole request: room for a few large files or many ordinary ones. Derived from max_files x max_upload it
# was 672 MB, which lets a handful of clients fill the disk the multipart parser spools to.
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
STATIC_DIR = Path(__file__).parent / "static"
# fastapi-offline ships Swagger UI 5's dist files (OpenAPI 3.1, which FastAPI emits); served with FastAPI's
# documented self-hosting pattern below rather than through its wrapper, so this app keeps its own set-up.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
PREDICT_PATH = "/api/predict"
EXPLAIN_PATH = "/api/explain"
MODEL_PATHS = (PREDICT_PATH, EXPLAIN_PATH)
_MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries, on top of the file bytes

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
NO_BROWSER_PREVIEW = ("TIFF",)  # accepted types that common browsers cannot show: the API sends a PNG preview


def sniff_image_type(data: bytes) -> str | None:
    """The accepted image format named by the leading bytes of `data`, or None."""
    for name, sig, off in _MAGIC:
        if data[off : off + len(sig)] == sig and (name != "WebP" or data[:4] == b"RIFF"):
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
    """Rejects a model request whose body exceeds `max_bytes` with 413, before it is spooled to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...] = MODEL_PATHS) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    def _detail(self) -> str:
        return f"request body too large: the limit is {_human_bytes(self.max_bytes)} per request"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
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


LOOPBACK_NAMES = ("localhost",)


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when `host` is reachable from other machines and no API token guards the model endpoints."""
    if token:
        return None
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (
        f"listening on {host} without an API token: anyone who can reach this machine can use the model; "
        "set --token or SYNAPSE7_TOKEN, or listen on 127.0.0.1"
    )


class RateLimiter:
    """Token bucket per client address: `per_minute` requests a minute, in bursts of up to `burst`.

    In memory, for one process; buckets that have refilled are dropped, so idle clients cost nothing.
    """

    def __init__(self, per_minute: float, burst: int | None = None, clock: Any = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("the rate limit must be positive (requests per minute)")
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst if burst is not None else max(1, math.ceil(per_minute)))
        if self.burst < 1:
            raise ValueError("the burst must be at least 1")
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last update)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Spend one token for `client`: 0.0 when allowed, else the seconds until the next token."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1 - tokens) / self.rate
            if len(self._buckets) > 10_000:  # forget clients whose buckets are full again
                self._buckets = {
                    k: (t, u) for k, (t, u) in self._buckets.items() if t + (now - u) * self.rate < self.burst
                }
        return wait


def _model_summary(det: Detector) -> dict[str, Any]:
    """Backbone, input mode and size; an ensemble's lists each member's (no file paths)."""
    summary = {
        "backbone": det.cfg.model.backbone,
        "input": det.cfg.model.input,
        "image_size": det.cfg.data.image_size,
    }
    if isinstance(det, EnsembleDetector):
        summary["ensemble"] = [
            {"backbone": m.cfg.model.backbone, "input": m.cfg.model.input, "tta": m.cfg.model.tta}
            for m in det.members
        ]
    return summary


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def create_app(
    detector: Detector | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    threshold: float | None = None,
    device: str | None = None,
    batch_size: int = 32,
    token: str | None = None,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
    explain_grid: int = DEFAULT_GRID,
) -> FastAPI:
    """Build the web app around `detector`, or a Detector loaded from `checkpoint` (loaded now, so a bad path
    fails at start-up rather than on the first request).

    token: when set, /api/predict and /api/explain need `Authorization: Bearer <token>`. rate_limit: requests
    per minute per client address on those endpoints (None: unlimited), in bursts of `rate_burst`.
    """
    if (detector is None) == (checkpoint is None):
        raise ValueError("create_app needs exactly one of detector= or checkpoint=")
    if min(max_upload_bytes, max_files, max_request_bytes, batch_size, explain_grid) < 1:
        raise ValueError(
            "max_upload_bytes, max_files, max_request_bytes, batch_size and explain_grid must be positive"
        )
    if max_request_bytes < max_upload_bytes + _MULTIPART_OVERHEAD:
        raise ValueError(
            f"the request cap ({_human_bytes(max_request_bytes)}) leaves no room for one file of the "
            f"upload limit ({_human_bytes(max_upload_bytes)}); raise it or lower the upload limit"
        )
    det = (
        detector
        if detector is not None
        else Detector.from_checkpoint(checkpoint, device=device, threshold=threshold)
    )
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    limiter = anyio.CapacityLimiter(1)
    rates = RateLimiter(rate_limit, rate_burst) if rate_limit else None
    public_config = det.cfg.to_dict()
    public_config["data"]["root"] = (
        None  # the training data's path on the training machine says nothing useful
    )
    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_files": max_files,
        "max_request_bytes": max_request_bytes,
        "max_pixels": det.cfg.data.max_pixels,
        "accepted_types": list(ACCEPTED_TYPES),
        "rate_limit_per_minute": rate_limit,
    }

    # docs_url=None: FastAPI's own /docs loads Swagger UI from a CDN; ours (below) serves it from this process.
    app = FastAPI(
        title="Synapse-7",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        description="Detects AI-generated images from how they were built (global FFT spectra). "
        "Model endpoints may need a bearer token (Authorize).",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.state.detector = det
    app.state.limits = limits
    bearer = HTTPBearer(auto_error=False, description="the service's API token (synapse7 serve --token)")

    # A default, not Annotated[...]: `bearer` is local, and postponed annotations resolve in module globals.
    async def guard(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        """Rate limit per client first (so token guessing is throttled too), then the token."""
        if rates is not None:
            client = request.client.host if request.client else "unknown"
            wait = rates.take(client)
            if wait > 0:
                raise HTTPException(
                    429,
                    f"rate limit: at most {rate_limit:g} requests a minute per client; retry in {wait:.1f} s",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
        if token is not None and (
            creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode())
        ):
            raise HTTPException(
                401,
                "this service needs an API token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        headers = {
            # Inline CSS/JS only; previews come from blob: URLs or the API's data: URLs; requests go to this origin.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        return HTMLResponse(page, headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title="Synapse-7 API",
            swagger_js_url=f"{root}/static/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/docs/favicon.png",
        )

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        cfg = det.cfg
        return {
            "name": "synapse7",
            "version": __version__,
            "threshold": det.threshold,
            "model": _model_summary(det),
            "preprocess": {
                "mode": cfg.data.preprocess,
                "resize_size": cfg.data.resolved_resize,
                "resize_interpolation": cfg.data.resize_interpolation,
                "crop_size": cfg.data.image_size,
            },
            "device": str(det.device),
            "limits": limits,
            "config": public_config,
            "auth": {"token_required": token is not None},
        }

    def upload_schema(field: str, many: bool) -> dict[str, Any]:
        item = {"type": "string", "format": "binary"}
        prop = {"type": "array", "items": item} if many else item
        return {
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {"type": "object", "required": [field], "properties": {field: prop}}
                    }
                },
            }
        }

    @app.post(PREDICT_PATH, openapi_extra=upload_schema("files", True), dependencies=[Depends(guard)])
    async def predict(request: Request) -> dict[str, Any]:
        """Classify the images uploaded under the multipart field `files`, in order."""
        form = await _read_form(request, max_files)
        try:
            entries = _file_entries(form, "files", "one or more images")
            results, pending = await _read_uploads(entries, max_upload_bytes)
        finally:
            await form.close()
        if pending:
            # Decode + preprocess + one batched forward pass, off the event loop; requests take turns.
            outcomes = await anyio.to_thread.run_sync(
                partial(_predict_isolated, det, [data for _, data in pending], batch_size), limiter=limiter
            )
            for (i, _), out in zip(pending, outcomes, strict=True):
                if isinstance(out, str):
                    results[i] |= {"label": "ERROR", "p_ai": None, "error": out}
                elif out.error is not None:
                    results[i] |= {"label": "ERROR", "p_ai": None, "error": out.error}
                else:
                    results[i] |= {"label": out.label, "p_ai": out.p_ai}
        return {"results": results, "threshold": det.threshold, "model": _model_summary(det)}

    @app.post(EXPLAIN_PATH, openapi_extra=upload_schema("file", False), dependencies=[Depends(guard)])
    async def explain_one(request: Request) -> dict[str, Any]:
        """Classify one image (field `file`) and show why: PNG views as data: URLs (`views`): `regions` (the
        analysed region drawn on the image), `crop`, `spectrum`, `heatmap` (occlusion: red is evidence for AI,
        blue for REAL), `residual` for artifact encoders, and `preview` (the whole image) for TIFF, which
        browsers do not display; `region` is the analysed box in image pixels."""
        form = await _read_form(request, 1)
        try:
            entries = _file_entries(form, "file", "one image")
            results, pending = await _read_uploads(entries, max_upload_bytes)
        finally:
            await form.close()
        result = results[0]
        if pending:
            data = pending[0][1]
            out = await anyio.to_thread.run_sync(
                partial(
                    _explain_isolated,
                    det,
                    data,
                    explain_grid,
                    preview=sniff_image_type(data) in NO_BROWSER_PREVIEW,
                ),
                limiter=limiter,
            )
            result |= out
        return result | {"threshold": det.threshold, "model": _model_summary(det)}

    return app


async def _read_form(request: Request, max_files: int) -> FormData:
    """The multipart form of `request`, with request-level problems as 4xx and a clear reason."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the images as multipart/form-data (see /docs)")
    try:
        return await request.form(max_files=max_files, max_fields=max_files + 16)
    except StarletteHTTPException as e:  # what Request.form raises for a malformed or over-full body
        if e.status_code == 400 and "too many files" in str(e.detail).lower():
            raise HTTPException(
                413, f"too many files: at most {max_files} per request; send them in smaller batches"
            ) from e
        if e.status_code == 400:
            raise HTTPException(400, f"malformed multipart body: {e.detail}") from e
        raise  # 413 from BodyLimitMiddleware while the body streamed in


def _file_entries(form: FormData, field: str, what: str) -> list[UploadFile]:
    entries = form.getlist(field)
    if not entries:
        others = sorted(set(form.keys()))
        hint = f" (the request had field(s): {', '.join(others)})" if others else ""
        raise HTTPException(400, f"no files: send {what} under the multipart field '{field}'{hint}")
    if any(not isinstance(e, UploadFile) for e in entries):
        raise HTTPException(400, f"the field '{field}' must hold file uploads, not text values")
    return entries  # type: ignore[return-value]


def _explain_isolated(det: Detector, data: bytes, grid: int, *, preview: bool) -> dict[str, Any]:
    """Decode, classify and explain one upload; a failure becomes that file's error, never a 500.
    preview: add a PNG of the whole image (for formats browsers do not display)."""
    try:
        image = open_image(io.BytesIO(data), max_pixels=det.cfg.data.max_pixels, name="<upload>")
    except BadImageError as e:
        return {"label": "ERROR", "p_ai": None, "error": e.reason}
    try:
        e = explain(det, image, grid=grid)
        views = render_views(e) | ({"preview": preview_png(image)} if preview else {})
    except Exception as exc:  # noqa: BLE001 - report per file
        log.exception("explanation failed")
        return {
            "label": "ERROR",
            "p_ai": None,
            "error": f"could not process image: {type(exc).__name__}: {exc}",
        }
    return {
        "label": e.label,
        "p_ai": e.p_ai,
        "image_size": list(image.size),
        "region": e.region.to_dict(),
        "regions": [r.to_dict() for r in e.regions],
        "occlusion_window": e.window,
        "residual": e.residual_name,
        "views": {k: _data_uri(v) for k, v in views.items()},
    }


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


async def _read_uploads(
    entries: list[UploadFile], max_bytes: int
) -> tuple[list[dict[str, Any]], list[tuple[int, bytes]]]:
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
