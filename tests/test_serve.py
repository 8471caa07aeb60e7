"""Web service: page, /api/predict (good, bad and oversize uploads; request-level errors), /api/info, CLI entry."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

import synapse7  # noqa: E402
from synapse7.config import RunConfig  # noqa: E402
from synapse7.model import build_model  # noqa: E402
from synapse7.predict import Detector  # noqa: E402
from synapse7.serve import create_app  # noqa: E402
from synapse7.serve.app import (  # noqa: E402
    DEFAULT_MAX_REQUEST_BYTES,
    RateLimiter,
    clean_filename,
    exposure_warning,
)

MAX_UPLOAD = 64 * 1024
MAX_FILES = 4


def _image_bytes(fmt: str, size: tuple[int, int] = (48, 40), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few dozen bytes whose header claims width x height pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights checkpoint in the layout Detector.from_checkpoint reads."""
    cfg = RunConfig().override(
        data={"image_size": 32}, model={"backbone": "resnet18", "weights": "none", "input": "fft"}
    )
    torch.manual_seed(0)
    net = build_model(cfg.model, load_weights=False)
    path = tmp_path_factory.mktemp("serve") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"config": cfg.to_dict()},
            "synapse7": {"threshold": 0.5},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def detector(checkpoint: Path) -> Detector:
    return Detector.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> TestClient:
    app = create_app(checkpoint=checkpoint, device="cpu", max_upload_bytes=MAX_UPLOAD, max_files=MAX_FILES)
    with TestClient(app) as c:
        yield c


def _post(client: TestClient, files: list[tuple[str, bytes]], **kw):
    return client.post(
        "/api/predict",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        **kw,
    )


def test_page_has_upload_ui_and_no_external_resources(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'type="file"' in html and "multiple" in html  # pick one or many
    assert "api/predict" in html and "api/info" in html
    assert "drop" in html.lower() and "threshold" in html.lower()
    # Self-contained: no CDN scripts, styles or fonts.
    assert (
        "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    )
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_health_and_info(client: TestClient) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["version"] == synapse7.__version__
    assert info["threshold"] == 0.5
    assert info["model"] == {"backbone": "resnet18", "input": "fft", "image_size": 32}
    assert info["limits"]["max_upload_bytes"] == MAX_UPLOAD and info["limits"]["max_files"] == MAX_FILES
    assert info["config"]["model"]["backbone"] == "resnet18"
    assert info["preprocess"]["resize_interpolation"] == "bilinear"


def test_predict_good_images_match_detector(client: TestClient, detector: Detector) -> None:
    files = [
        ("a.png", _image_bytes("PNG", seed=1)),
        ("b.jpg", _image_bytes("JPEG", seed=2)),
        ("c.png", _image_bytes("PNG", size=(64, 64), seed=3)),
    ]
    r = _post(client, files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold"] == 0.5
    assert body["model"] == {"backbone": "resnet18", "input": "fft", "image_size": 32}
    expected = detector.predict([data for _, data in files])
    assert [res["filename"] for res in body["results"]] == ["a.png", "b.jpg", "c.png"]
    for res, exp in zip(body["results"], expected, strict=True):
        assert "error" not in res
        assert 0.0 <= res["p_ai"] <= 1.0
        assert res["p_ai"] == pytest.approx(exp.p_ai, abs=1e-5)
        assert res["label"] == ("AI" if res["p_ai"] >= body["threshold"] else "REAL") == exp.label


def test_threshold_decides_label(checkpoint: Path, detector: Detector) -> None:
    data = _image_bytes("PNG", seed=4)
    for thr, label in ((0.0, "AI"), (1.01, "REAL")):
        det = Detector(detector.net, detector.cfg, threshold=thr, device="cpu")
        with TestClient(create_app(det)) as c:
            body = _post(c, [("x.png", data)]).json()
        assert body["threshold"] == thr
        assert body["results"][0]["label"] == label


def test_bad_files_get_per_file_errors(client: TestClient, detector: Detector) -> None:
    good = _image_bytes("PNG", seed=5)
    truncated = good[: len(good) // 2]
    files = [
        ("empty.png", b""),
        ("half.png", truncated),
        ("notes.txt", b"hello, not an image\n"),
        ("bomb.png", _png_bomb()),
        ("ok.png", good),
    ]
    # MAX_FILES is 4: send the five in two requests, each answered 200 with one entry per file.
    r1, r2 = _post(client, files[:3]), _post(client, files[3:])
    assert r1.status_code == r2.status_code == 200
    results = r1.json()["results"] + r2.json()["results"]
    by_name = {res["filename"]: res for res in results}
    assert set(by_name) == {name for name, _ in files}
    for name in ("empty.png", "half.png", "notes.txt", "bomb.png"):
        assert by_name[name]["label"] == "ERROR" and by_name[name]["p_ai"] is None, name
    assert by_name["empty.png"]["error"] == "zero-byte file"
    assert "truncated" in by_name["half.png"]["error"] or "corrupt" in by_name["half.png"]["error"]
    assert "not a recognised image" in by_name["notes.txt"]["error"]
    assert "pixels" in by_name["bomb.png"]["error"]  # "decompression bomb: ..." or "image too large: ..."
    assert by_name["ok.png"]["label"] in ("AI", "REAL") and "error" not in by_name["ok.png"]
    # Decoding goes through the Detector: the reasons are the ones the CLI/Python API give for the same bytes.
    ref = detector.predict([truncated, _png_bomb()])
    assert by_name["half.png"]["error"] == ref[0].error
    assert by_name["bomb.png"]["error"] == ref[1].error


def test_oversize_file_is_a_per_file_error(client: TestClient) -> None:
    big = _image_bytes("PNG", size=(200, 200), seed=6)  # random pixels barely compress: ~120 KB
    assert len(big) > MAX_UPLOAD
    r = _post(client, [("big.png", big), ("small.png", _image_bytes("PNG", seed=7))])
    assert r.status_code == 200
    big_res, small_res = r.json()["results"]
    assert (
        big_res["filename"] == "big.png" and big_res["label"] == "ERROR" and "too large" in big_res["error"]
    )
    assert small_res["label"] in ("AI", "REAL")


def test_oversize_request_is_413(checkpoint: Path, detector: Detector) -> None:
    app = create_app(detector, max_upload_bytes=MAX_UPLOAD, max_request_bytes=160 * 1024)
    big = _image_bytes("PNG", size=(320, 320), seed=8)  # ~300 KB of random pixels
    with TestClient(app) as c:
        r = _post(c, [("big.png", big)])
        assert r.status_code == 413 and "too large" in r.json()["detail"]

        # No Content-Length (chunked): the limit is enforced while the body streams in.
        def chunks():
            yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
            for _ in range(24):
                yield b"\x00" * 8192
            yield b"\r\n--xyz--\r\n"

        r = c.post(
            "/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"}
        )
        assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_request_level_errors_are_4xx(client: TestClient) -> None:
    r = client.post("/api/predict", data={"note": "no files here"})
    assert r.status_code == 415  # urlencoded, not multipart
    r = client.post("/api/predict", files={"other": ("a.png", _image_bytes("PNG"), "image/png")})
    assert r.status_code == 400 and "no files" in r.json()["detail"] and "other" in r.json()["detail"]
    r = client.post("/api/predict", files=[("files", (None, b"plain text"))])
    assert r.status_code == 400
    r = client.post("/api/predict", json={"files": []})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]
    many = [(f"{i}.png", _image_bytes("PNG", seed=i)) for i in range(MAX_FILES + 1)]
    r = _post(client, many)
    assert r.status_code == 413 and f"at most {MAX_FILES}" in r.json()["detail"]


def test_filenames_are_cleaned(client: TestClient) -> None:
    r = _post(client, [("../../etc/x.png", _image_bytes("PNG")), ("some\\dir\\", b"")])
    names = [res["filename"] for res in r.json()["results"]]
    assert names == ["x.png", "upload-2"]
    assert clean_filename("a\x07b\x00.png", 0) == "ab.png"
    assert clean_filename("x" * 500, 0) == "x" * 200


def test_inference_runs_off_the_event_loop_in_one_batch(detector: Detector) -> None:
    calls: list[tuple[int, bool]] = []

    class Spy(Detector):
        def predict(self, images, *, batch_size: int = 32):
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            calls.append((len(images), on_loop))
            return super().predict(images, batch_size=batch_size)

    spy = Spy(detector.net, detector.cfg, device="cpu")
    with TestClient(create_app(spy)) as c:
        r = _post(c, [(f"{i}.png", _image_bytes("PNG", seed=i)) for i in range(3)] + [("bad.png", b"")])
    assert r.status_code == 200
    assert calls == [(3, False)]  # the three good files in one call, in a worker thread


def test_unexpected_failure_is_isolated_to_its_file(detector: Detector) -> None:
    poison = _image_bytes("PNG", seed=11)

    class Flaky(Detector):
        def predict(self, images, *, batch_size: int = 32):
            if any(img == poison for img in images):
                raise RuntimeError("boom")
            return super().predict(images, batch_size=batch_size)

    flaky = Flaky(detector.net, detector.cfg, device="cpu")
    with TestClient(create_app(flaky), raise_server_exceptions=False) as c:
        r = _post(c, [("a.png", _image_bytes("PNG", seed=10)), ("poison.png", poison)])
    assert r.status_code == 200
    good, bad = r.json()["results"]
    assert good["label"] in ("AI", "REAL") and 0.0 <= good["p_ai"] <= 1.0
    assert bad["label"] == "ERROR" and "RuntimeError: boom" in bad["error"]


def test_request_cap_must_hold_one_file(
    detector: Detector, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="no room for one file"):
        create_app(detector, max_upload_bytes=10 * 2**20, max_request_bytes=10 * 2**20)
    from synapse7.cli import main

    assert main(["serve", "--checkpoint", str(checkpoint), "--max-request-mb", "8"]) == 1  # 20 MiB files
    assert "no room for one file" in capsys.readouterr().err


def test_create_app_needs_one_model_source(checkpoint: Path, detector: Detector) -> None:
    with pytest.raises(ValueError):
        create_app()
    with pytest.raises(ValueError):
        create_app(detector, checkpoint=checkpoint)
    with pytest.raises(FileNotFoundError):
        create_app(checkpoint=checkpoint.parent / "missing.ckpt")


def test_cli_serve_parser_and_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synapse7.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--checkpoint", "x.ckpt"])
    assert (args.host, args.port, args.max_upload_mb, args.max_request_mb) == ("127.0.0.1", 8000, 20.0, 64.0)
    assert (args.token, args.rate_limit) == (None, 120.0)
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "99999"],
        ["--port", "0"],
        ["--port", "http"],
        ["--max-files", "0"],
        ["--max-upload-mb", "-1"],
        ["--max-request-mb", "0"],
        ["--rate-limit", "-5"],
    ],
)
def test_cli_serve_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from synapse7.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--checkpoint", "x.ckpt", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: synapse7 serve" in err and argv[0] in err


def test_cli_serve_passes_token_limits_and_warns(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from synapse7.cli import main

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    monkeypatch.setenv("SYNAPSE7_TOKEN", "from-env")
    assert (
        main(
            [
                "serve",
                "--checkpoint",
                str(checkpoint),
                "--host",
                "0.0.0.0",
                "--port",
                "8123",
                "--max-upload-mb",
                "4",
                "--max-request-mb",
                "8",
                "--rate-limit",
                "30",
            ]
        )
        == 0
    )
    assert (ran["host"], ran["port"]) == ("0.0.0.0", 8123)
    assert ran["app"].state.limits["max_request_bytes"] == 8 * 2**20
    assert ran["app"].state.limits["rate_limit_per_minute"] == 30
    with TestClient(ran["app"]) as c:
        files = [("a.png", _image_bytes("PNG"))]
        assert _post(c, files).status_code == 401
        assert _post(c, files, headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert "warning" not in capsys.readouterr().err  # a token guards it
    monkeypatch.delenv("SYNAPSE7_TOKEN")
    assert main(["serve", "--checkpoint", str(checkpoint), "--host", "0.0.0.0"]) == 0
    assert "warning: listening on 0.0.0.0 without an API token" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--token", "t"]) == 0
    with TestClient(ran["app"]) as c:
        assert (
            _post(c, [("a.png", _image_bytes("PNG"))], headers={"Authorization": "Bearer t"}).status_code
            == 200
        )


# ---------------------------------------------------------------------------------------------------------
# Explanations, docs, HEAD, token, rate limit, request cap, load (issue 13, items 10-11)


def test_explain_endpoint_shows_why(client: TestClient, detector: Detector) -> None:
    data = _image_bytes("PNG", size=(90, 60), seed=20)
    r = client.post("/api/explain", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "x.png" and body["threshold"] == 0.5
    assert body["p_ai"] == pytest.approx(detector.predict([data])[0].p_ai, abs=1e-5)
    assert body["image_size"] == [90, 60] and body["residual"] is None  # fft model: no residual encoder
    assert (
        0 <= body["region"]["x0"] < body["region"]["x1"] <= 90
        and 0 <= body["region"]["y0"] < body["region"]["y1"] <= 60
    )
    assert set(body["views"]) == {"regions", "crop", "spectrum", "heatmap"}  # no preview: browsers show PNG
    for uri in body["views"].values():
        assert uri.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).format == "PNG"


def test_explain_tiff_gets_png_preview_and_bad_file_an_error(client: TestClient) -> None:
    r = client.post(
        "/api/explain", files={"file": ("scan.tif", _image_bytes("TIFF", size=(80, 50), seed=21))}
    )
    body = r.json()
    assert r.status_code == 200 and body["label"] in ("AI", "REAL") and "preview" in body["views"]
    preview = Image.open(io.BytesIO(base64.b64decode(body["views"]["preview"].split(",", 1)[1])))
    assert preview.format == "PNG" and preview.size == (80, 50)
    good = _image_bytes("PNG", seed=22)
    r = client.post("/api/explain", files={"file": ("half.png", good[: len(good) // 2])})
    assert r.status_code == 200 and r.json()["label"] == "ERROR" and "views" not in r.json()
    assert "truncated" in r.json()["error"] or "corrupt" in r.json()["error"]
    r = client.post("/api/explain", files=[("file", ("a.png", good)), ("file", ("b.png", good))])
    assert r.status_code == 413 and "at most 1" in r.json()["detail"]


def test_head_and_offline_docs(client: TestClient) -> None:
    r = client.head("/")
    assert r.status_code == 200 and r.text == "" and r.headers["content-type"].startswith("text/html")
    r = client.get("/docs")
    assert r.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(ref.startswith("/") for ref in refs), refs  # nothing from a CDN
    for ref in refs:
        assert client.get(ref).status_code == 200, ref
    assert "SwaggerUIBundle" in client.get("/static/docs/swagger-ui-bundle.js").text
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/explain"} <= set(schema["paths"])


def test_token_guards_model_endpoints(detector: Detector, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(detector, token="s3cret")) as c:
        assert c.get("/").status_code == 200 and c.get("/api/health").status_code == 200
        assert c.get("/api/info").json()["auth"] == {"token_required": True}
        files = [("a.png", _image_bytes("PNG", seed=30))]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = _post(c, files, headers=headers)
            assert r.status_code == 401 and "token" in r.json()["detail"], headers
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/api/explain", files={"file": files[0]}).status_code == 401
        r = _post(c, files, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["results"][0]["label"] in ("AI", "REAL")
    with TestClient(create_app(detector)) as c:
        assert c.get("/api/info").json()["auth"] == {"token_required": False}


def test_rate_limit_per_client(detector: Detector) -> None:
    files = [("a.png", _image_bytes("PNG", seed=31))]
    with TestClient(create_app(detector, rate_limit=60, rate_burst=3)) as c:
        codes = [_post(c, files).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = _post(c, files)
        assert "rate limit" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        assert c.get("/api/health").status_code == 200  # only the model endpoints are limited


def test_rate_limiter_refills_and_separates_clients() -> None:
    now = [0.0]
    rl = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])  # one token every 10 s
    assert [rl.take("a") for _ in range(2)] == [0.0, 0.0]
    assert rl.take("a") == pytest.approx(10.0)
    assert rl.take("b") == 0.0  # another client has its own bucket
    now[0] = 10.0
    assert rl.take("a") == 0.0 and rl.take("a") > 0
    with pytest.raises(ValueError):
        RateLimiter(per_minute=0)


def test_exposure_warning() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"):
        assert exposure_warning(host, None) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        msg = exposure_warning(host, None)
        assert msg is not None and host in msg and "--token" in msg, host
        assert exposure_warning(host, "tok") is None


def test_default_request_cap_is_sane(detector: Detector) -> None:
    app = create_app(detector)
    limits = app.state.limits
    assert limits["max_request_bytes"] == DEFAULT_MAX_REQUEST_BYTES <= 100 * 2**20  # tens of MB, not 672 MB
    declared = {
        "content-type": "multipart/form-data; boundary=x",
        "content-length": str(DEFAULT_MAX_REQUEST_BYTES + 1),
    }
    with TestClient(app) as c:
        for path in ("/api/predict", "/api/explain"):
            r = c.post(path, content=b"", headers=declared)
            assert r.status_code == 413 and "64.0 MiB" in r.json()["detail"], path


def test_concurrent_requests_under_load(checkpoint: Path, detector: Detector) -> None:
    """A real server on loopback, 12 requests from 8 threads at once: every answer complete and correct, inference
    one call at a time, and /api/health responsive while it queues (the event loop is never blocked)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from synapse7.serve.testing import running_server

    active, peak = [0], [0]
    lock = threading.Lock()

    class Slow(Detector):  # a heavier model: 0.5 s a call, and it records how many calls overlap
        def predict(self, images, *, batch_size: int = 32):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.5)
            try:
                return super().predict(images, batch_size=batch_size)
            finally:
                with lock:
                    active[0] -= 1

    app = create_app(Slow(detector.net, detector.cfg, device="cpu"), rate_limit=10_000)
    images = [_image_bytes("PNG", seed=100 + i) for i in range(12)]
    expected = [p.p_ai for p in detector.predict(images)]
    with running_server(app) as base:

        def one(i: int) -> tuple[int, float | None]:
            with httpx.Client(base_url=base, timeout=60) as h:
                r = h.post("/api/predict", files=[("files", (f"{i}.png", images[i]))])
                return r.status_code, r.json()["results"][0]["p_ai"]

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(len(images))]
            health = []
            with httpx.Client(base_url=base, timeout=10) as h:
                for _ in range(5):
                    t0 = time.monotonic()
                    assert h.get("/api/health").status_code == 200
                    health.append(time.monotonic() - t0)
            results = [f.result(timeout=120) for f in futures]
    assert [code for code, _ in results] == [200] * len(images)
    for (_, p), exp in zip(results, expected, strict=True):
        assert p == pytest.approx(exp, abs=1e-5)
    assert peak[0] == 1  # requests take turns on the model instead of oversubscribing the cores
    assert sum(health) < 1.0, health  # with inference on the loop, each probe waits for 0.5 s calls


def test_cli_serve_without_captum_says_install_the_extra(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import sys

    from synapse7.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == "captum" else real(name, *a, **k)
    )
    for mod in ("synapse7.serve", "synapse7.serve.app"):  # imported afresh, as in a new process
        monkeypatch.delitem(sys.modules, mod)
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "captum is not installed" in err and "synapse7[serve]" in err


def test_serve_an_ensemble(
    checkpoint: Path, detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --checkpoint A --checkpoint B` serves their mean-logit ensemble; /api/info lists the members."""
    import uvicorn

    from synapse7.cli import main

    ckpt = torch.load(checkpoint, weights_only=False)
    torch.manual_seed(1)
    net = build_model(RunConfig().override(**ckpt["hyper_parameters"]["config"]).model, load_weights=False)
    ckpt["state_dict"] = {f"net.{k}": v for k, v in net.state_dict().items()}
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    assert (
        main(["serve", "--checkpoint", str(checkpoint), "--checkpoint", str(other), "--device", "cpu"]) == 0
    )
    files = [("a.png", _image_bytes("PNG", seed=1)), ("b.jpg", _image_bytes("JPEG", seed=2))]
    with TestClient(served["app"]) as c:
        info = c.get("/api/info").json()
        assert [m["backbone"] for m in info["model"]["ensemble"]] == ["resnet18", "resnet18"]
        body = _post(c, files).json()
    ens = Detector.from_checkpoints([checkpoint, other], device="cpu")
    want = ens.predict([data for _, data in files])
    alone = detector.predict([data for _, data in files])
    for res, exp, one in zip(body["results"], want, alone, strict=True):
        assert res["p_ai"] == pytest.approx(exp.p_ai, abs=1e-5)
        assert abs(res["p_ai"] - one.p_ai) > 1e-4  # not the first model alone
