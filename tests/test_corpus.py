"""The bad-input corpus (tests/corpus/build.py) through every entry point: open_image, the dataset, and the
train / evaluate / predict / audit commands. Each case must be converted, or skipped and reported by name;
nothing may crash, hang or go missing."""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from synapse7.data import BadImageLog, MultiGenDataset, build_loader, discover_samples
from synapse7.io import BadImageError, open_image, printable_path
from synapse7.transforms import ClassificationPreset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import Case, build_corpus, expected_outcome, summarize  # noqa: E402

REQUIRED_CATEGORIES = {
    "empty",
    "truncated",
    "wrong_magic",
    "size",
    "bomb",
    "mode",
    "animated",
    "exif",
    "unreadable",
    "symlink",
    "name",
}
NOBODY = 65534


def _label(c: Case) -> str:
    return printable_path(c.path)


def _check_case(c: Case, outcome: str, detail: object) -> str | None:
    """None when open_image's result (an image or a BadImageError) is what the case expects, else why not."""
    want = expected_outcome(c)
    if want == "ok":
        if not hasattr(detail, "size"):
            return f"{c.name}: expected an image, got {detail!r}"
        if detail.mode != "RGB" or detail.size != c.size:
            return f"{c.name}: expected RGB {c.size}, got {detail.mode} {detail.size}"
        if c.pixel is not None:
            xy, rgb = c.pixel
            got = detail.getpixel(xy)
            if max(abs(a - b) for a, b in zip(got, rgb, strict=True)) > 8:
                return f"{c.name}: pixel {xy} is {got}, expected {rgb}"
        return None
    if not isinstance(detail, BadImageError):
        return f"{c.name}: expected BadImageError, got {outcome} {detail!r}"
    if _label(c) not in str(detail) or not any(k in detail.reason.lower() for k in c.reason):
        return f"{c.name}: error {str(detail)!r} should name the file and say one of {c.reason}"
    return None


def _open(c: Case) -> tuple[str, object]:
    try:
        return "ok", open_image(c.path)
    except BadImageError as e:
        return "bad", e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def genimage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Case]]]:
    """The corpus in a GenImage layout, spread over ai/ and nature/, for the train and val splits."""
    root = tmp_path_factory.mktemp("genimage")
    splits = {s: build_corpus(root / "corpusgen" / s, subdirs=("ai", "nature")) for s in ("train", "val")}
    return root, splits


def test_corpus_covers_the_issue_list(corpus: list[Case]) -> None:
    counts = summarize(corpus)
    assert REQUIRED_CATEGORIES <= set(counts), REQUIRED_CATEGORIES - set(counts)
    n_bad = sum(c["bad"] for c in counts.values())
    assert n_bad >= 35 and sum(c["ok"] for c in counts.values()) >= 30
    assert len({c.name for c in corpus}) == len(corpus)
    assert all(c.size for c in corpus if c.expected == "ok" or c.root_reads)
    assert all(c.reason for c in corpus if c.expected == "bad")
    assert any(os.fsencode(c.path.name).decode("utf-8", "replace") != c.path.name for c in corpus), (
        "non-UTF-8"
    )


def test_open_image_gives_the_expected_outcome_for_every_case(corpus: list[Case]) -> None:
    problems = []
    for c in corpus:
        t0 = time.perf_counter()
        outcome, detail = _open(c)  # any other exception fails the test here
        if time.perf_counter() - t0 > 5:
            problems.append(f"{c.name}: took {time.perf_counter() - t0:.1f} s")
        problems.append(_check_case(c, outcome, detail))
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_bytes_and_name_give_the_same_outcome(corpus: list[Case]) -> None:
    """The web API decodes uploads from memory: the same bytes must give the same result."""
    for c in corpus:
        if c.path.is_symlink() or not c.path.is_file() or c.root_reads:
            continue
        outcome, detail = _open(c)
        try:
            img = open_image(io.BytesIO(c.path.read_bytes()), name="upload.bin")
            assert outcome == "ok" and img.size == detail.size and img.tobytes() == detail.tobytes(), c.name
        except BadImageError as e:
            assert outcome == "bad", f"{c.name}: from bytes {e}, from the file {detail.size}"
            assert str(e).startswith("upload.bin: ")


def test_errors_are_printable_as_utf8(corpus: list[Case]) -> None:
    for c in corpus:
        if expected_outcome(c) == "bad":
            _, e = _open(c)
            str(e).encode("utf-8")  # raises UnicodeEncodeError for a raw surrogate-escaped name
            assert e.path == _label(c)


def test_bombs_are_rejected_from_the_header_quickly_and_in_little_memory(corpus: list[Case]) -> None:
    bombs = [str(c.path) for c in corpus if c.category == "bomb"]
    code = (
        "import json, resource, sys, time\n"
        "from synapse7.io import BadImageError, open_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t0 = time.perf_counter(); n = 0\n"
        "for p in json.loads(sys.argv[1]):\n"
        "    try: open_image(p)\n"
        "    except BadImageError: n += 1\n"
        "print(json.dumps({'rejected': n, 's': time.perf_counter() - t0,\n"
        "      'grew_mb': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(bombs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    res = json.loads(out.stdout)
    assert res["rejected"] == len(bombs) >= 5
    assert res["s"] < 2.0 and res["grew_mb"] < 64, res  # a decoded 20000x20000 bomb would need > 1 GB


def test_no_file_handle_outlives_open_image(corpus: list[Case]) -> None:
    def n_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    keep = []
    # Objects left by earlier tests (DataLoader workers' pipes...) may be collected, and their descriptors
    # closed, in the middle of the loop: collect them first, and read a fall in the count as no leak.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        before = n_fds()
        for _ in range(3):
            for c in corpus:
                keep.append(_open(c)[1])  # results held: their files must already be closed
        after = n_fds()
    assert after <= before, f"{after - before} file descriptor(s) more after opening {3 * len(corpus)} images"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_extreme_aspect_ratios_are_cheap_to_preprocess(corpus: list[Case]) -> None:
    """A 3x70000 strip resized to 256 px took 23 s and 5.5 GB before transforms.limit_aspect."""
    preset = ClassificationPreset()  # the default 224 / 256
    for c in corpus:
        if c.category == "size" and max(c.size) > 1000:
            img = open_image(c.path)
            t0 = time.perf_counter()
            x = preset(img)
            assert tuple(x.shape) == (3, 224, 224) and bool(torch.isfinite(x).all())
            assert time.perf_counter() - t0 < 3.0, c.name


def _outcomes_as(uid: int, cases: list[Case]) -> dict[str, list[str]]:
    """open_image on every case in a forked child that has dropped to `uid` (the interpreter itself may sit
    where that user cannot exec it, so the child forks rather than starting a new interpreter)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = {}
            for c in cases:
                try:
                    open_image(c.path)
                    out[c.name] = ["ok", ""]
                except BadImageError as e:
                    out[c.name] = ["bad", str(e)]
            with os.fdopen(w, "w", encoding="utf-8") as f:
                json.dump(out, f)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, encoding="utf-8") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed"
    return json.loads(data)


def test_unreadable_file_when_not_root(tmp_path: Path) -> None:
    """Check the whole corpus as an unprivileged user: root reads chmod-000 files, so drop to nobody."""
    if os.geteuid() != 0:
        corpus = build_corpus(tmp_path / "c")
        results = {c.name: _open(c)[0] for c in corpus}
        assert all(results[c.name] == expected_outcome(c) for c in corpus), results
        return
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    base = Path(tempfile.mkdtemp(prefix="synapse7-corpus-"))  # pytest's tmp dirs are 0700, closed to nobody
    try:
        os.chmod(base, 0o755)
        corpus = build_corpus(base / "c")
        got = _outcomes_as(NOBODY, corpus)
        wrong = {c.name: got[c.name] for c in corpus if got[c.name][0] != expected_outcome(c, NOBODY)}
        assert not wrong, wrong
        unreadable = next(c for c in corpus if c.category == "unreadable")
        assert expected_outcome(unreadable, NOBODY) == "bad"
        assert (
            "permission denied" in got[unreadable.name][1] and unreadable.path.name in got[unreadable.name][1]
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# The same corpus through the dataset


def _class_of(c: Case) -> int:
    return 1 if c.path.parent.name == "ai" else 0


def _iter_batches(ds: MultiGenDataset) -> Iterator[dict]:
    yield from build_loader(ds, batch_size=8, num_workers=0)


@pytest.mark.timeout(300)
def test_dataset_skip_yields_exactly_the_ok_cases_and_reports_the_bad(genimage) -> None:
    root, splits = genimage
    cases = [c for c in splits["val"] if c.discoverable]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = discover_samples(root, "val")  # must not hang on the symlink loops
    by_path = {s.path: s for s in samples}
    assert sorted(by_path) == sorted(str(c.path) for c in cases)
    ds = MultiGenDataset(root, "val", ClassificationPreset(crop_size=32, resize_size=36), on_bad_image="skip")
    good, bad, log = {}, {}, BadImageLog()
    for batch in _iter_batches(ds):
        for k, idx in enumerate(batch["index"].tolist()):
            good[ds.samples[idx].path] = int(batch["label"][k])
            x = batch["image"][k]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
        for idx, reason in batch["bad"]:
            bad[ds.samples[idx].path] = reason
        log.add(ds, batch["bad"])
    want_ok = {str(c.path): c for c in cases if expected_outcome(c) == "ok"}
    want_bad = {str(c.path): c for c in cases if expected_outcome(c) == "bad"}
    assert set(good) == set(want_ok), set(good) ^ set(want_ok)
    assert set(bad) == set(want_bad), set(bad) ^ set(want_bad)
    assert all(good[p] == _class_of(c) for p, c in want_ok.items())
    assert all(any(k in bad[p].lower() for k in c.reason) for p, c in want_bad.items())
    rows = list(csv.DictReader(io.StringIO(log.to_csv())))
    assert sorted(r["path"] for r in rows) == sorted(_label(c) for c in want_bad.values())


def test_dataset_error_mode_raises_naming_each_bad_file(genimage) -> None:
    root, _ = genimage
    ds = MultiGenDataset(
        root, "val", ClassificationPreset(crop_size=32, resize_size=36), on_bad_image="error"
    )
    cases = {str(c.path): c for c in genimage[1]["val"]}
    raised = 0
    for i, s in enumerate(ds.samples):
        c = cases[s.path]
        if expected_outcome(c) == "ok":
            assert ds[i]["image"].shape == (3, 32, 32)
            continue
        with pytest.raises(BadImageError) as e:
            ds[i]
        assert _label(c) in str(e.value)
        raised += 1
    assert raised == sum(expected_outcome(c) == "bad" for c in cases.values() if c.discoverable)


# ----------------------------------------------------------------------------------------------------------
# The same corpus through the commands (checkpoint: the session fixture `trained_run` of conftest.py)


def _expected_sets(cases: list[Case], min_side: int = 0) -> tuple[set[str], set[str]]:
    ok = {_label(c) for c in cases if c.discoverable and _predict_outcome(c, min_side) == "ok"}
    bad = {_label(c) for c in cases if c.discoverable and _predict_outcome(c, min_side) == "bad"}
    return ok, bad


def _predict_outcome(c: Case, min_side: int) -> str:
    """expected_outcome, where prediction also refuses decodable images under the model's minimum side
    (synapse7.transforms.min_input_side: the corpus holds 1-3 px strips and 1x1 images)."""
    outcome = expected_outcome(c)
    if outcome == "ok" and min_side and min(open_image(c.path).size) < min_side:
        return "bad"
    return outcome


def _min_side(ckpt: Path) -> int:
    from synapse7.predict import Detector

    return Detector.from_checkpoint(ckpt, device="cpu").preset.min_side


@pytest.mark.timeout(600)
def test_predict_reports_every_bad_case_and_predicts_every_ok_one(
    trained_run: Path, genimage, capsys: pytest.CaptureFixture[str]
) -> None:
    from synapse7.cli import main

    root, splits = genimage
    ckpt = trained_run / "run" / "best.ckpt"
    # exit status 1: the corpus holds bad files, each an ERROR row
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpt),
                str(root / "corpusgen" / "val"),
                "--json",
                "--num-workers",
                "0",
                "--batch-size",
                "8",
            ]
        )
        == 1
    )
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    ok, bad = _expected_sets(splits["val"], _min_side(ckpt))
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == len(ok) + len(bad), "every file exactly once"
    got_ok = {r["path"] for r in rows if r["label"] in ("AI", "REAL") and 0 <= r["p_ai"] <= 1}
    got_bad = {r["path"] for r in rows if r["label"] == "ERROR" and r.get("error")}
    assert got_ok == ok and got_bad == bad, (got_ok ^ ok, got_bad ^ bad)
    assert all(f"warning: {p}: " in err for p in bad)
    assert "Traceback" not in err


@pytest.mark.timeout(600)
def test_evaluate_counts_every_ok_case_and_lists_every_bad_one(
    trained_run: Path, genimage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synapse7.cli import main

    root, splits = genimage
    ckpt = trained_run / "run" / "best.ckpt"
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(root),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--num-workers",
                "0",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    ok, bad = _expected_sets(splits["val"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == len(ok) and metrics["bad_images"] == len(bad)
    with open(out / "bad_images.csv", encoding="utf-8", newline="") as f:
        assert {r["path"] for r in csv.DictReader(f)} == bad
    with open(out / "predictions.csv", encoding="utf-8", newline="") as f:
        predicted = [r["path"] for r in csv.DictReader(f)]
    assert sorted(predicted) == sorted(ok)
    assert "Traceback" not in capsys.readouterr().err

    rc = main(
        [
            "evaluate",
            "--data",
            str(root),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "e2"),
            "--num-workers",
            "0",
            "--on-bad-image",
            "error",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert any(p in err for p in bad), err[-500:]


@pytest.mark.timeout(600)
def test_audit_verify_lists_every_bad_case(
    genimage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synapse7.cli import main

    root, splits = genimage
    assert main(["audit", str(root), "--out", str(tmp_path / "audit"), "--verify"]) == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    listed = {u["path"] for u in report["unreadable"]}
    ok, bad = set(), set()
    for cases in splits.values():
        o, b = _expected_sets(cases)
        ok |= o
        bad |= b
    assert listed == bad, listed ^ bad
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_train_skips_and_lists_every_bad_training_case(
    genimage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synapse7.cli import main

    root, splits = genimage
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(root),
            "--out",
            str(out),
            "--weights",
            "none",
            "--backbone",
            "resnet18",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err[-2000:]
    _, bad = _expected_sets(splits["train"])
    with open(out / "bad_images.csv", encoding="utf-8", newline="") as f:
        assert {r["path"] for r in csv.DictReader(f)} == bad
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_web_api_errors_every_bad_upload_and_predicts_every_ok_one(
    trained_run: Path, corpus: list[Case]
) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from synapse7.serve import create_app

    # Uploads are bytes: symlinks, FIFOs and permissions do not travel, so only regular files are sent.
    cases = [c for c in corpus if not c.path.is_symlink() and c.path.is_file() and not c.root_reads]
    app = create_app(checkpoint=trained_run / "run" / "best.ckpt", device="cpu", max_files=16)
    results = []
    with TestClient(app) as client:
        for start in range(0, len(cases), 16):
            chunk = cases[start : start + 16]
            files = [
                (
                    "files",
                    (f"case{start + k:03d}{c.path.suffix}", c.path.read_bytes(), "application/octet-stream"),
                )
                for k, c in enumerate(chunk)
            ]
            r = client.post("/api/predict", files=files)
            assert r.status_code == 200, r.text[:500]
            results += r.json()["results"]
    assert [r["filename"] for r in results] == [f"case{k:03d}{c.path.suffix}" for k, c in enumerate(cases)]
    min_side = _min_side(trained_run / "run" / "best.ckpt")
    wrong = [
        (c.name, r)
        for c, r in zip(cases, results, strict=True)
        if (r["label"] == "ERROR") != (_predict_outcome(c, min_side) == "bad")
        or (r["label"] == "ERROR" and not r.get("error"))
    ]
    assert not wrong, wrong
