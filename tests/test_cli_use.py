"""The command line as people use it (issue 13 items 1-4 and 6): exit status, per-input error rows, option
validation, help everywhere, folder scans, resume with new inputs, tiny images."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synapse7.cli import build_parser, main, subcommands
from synapse7.config import load_config
from synapse7.io import IMAGE_EXTENSIONS, walk_images

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def ckpt(resize32_checkpoint: Path) -> Path:
    return resize32_checkpoint


def _png(path: Path, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _predict(ckpt: Path, *args: str) -> int:
    return main(["predict", "--checkpoint", str(ckpt), "--num-workers", "0", *args])


# ---- 1. exit status and per-input errors ------------------------------------------------------------------


def test_every_input_is_attempted_and_failures_are_rows(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _png(tmp_path / "good.png")
    missing = tmp_path / "missing.png"
    url = "https://example.com/cat.jpg"
    assert _predict(ckpt, str(good), str(missing), url) == 1
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [r[0] for r in rows] == [str(good), str(missing), url]  # in the order given, nothing dropped
    assert rows[0][1] in ("AI", "REAL") and len(rows[0]) == 3
    assert rows[1][1:3] == ["ERROR", "nan"] and "no such file" in rows[1][3]
    assert rows[2][1] == "ERROR" and "URLs are not supported" in rows[2][3]

    assert _predict(ckpt, "--json", str(missing), str(good), url) == 1
    js = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [j["label"] for j in js[:1] + js[2:]] == ["ERROR", "ERROR"] and js[1]["label"] in ("AI", "REAL")
    assert "no such file" in js[0]["error"] and "URLs are not supported" in js[2]["error"]
    assert js[0]["p_ai"] is None


def test_exit_zero_only_when_every_input_is_classified(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _png(tmp_path / "a.png")
    assert _predict(ckpt, str(good)) == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert _predict(ckpt, str(bad)) == 1  # all inputs fail: 1, not 0
    assert _predict(ckpt, str(good), str(bad)) == 1
    out = capsys.readouterr().out
    assert f"{bad}\tERROR\tnan\t" in out


def test_usage_errors_exit_2(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # (no --checkpoint is not one: the shipped default model is used, tests/test_modelfile.py)
    assert main(["predict", "--checkpoint", str(ckpt), "--resume", "x.png"]) == 2  # --resume needs --output
    with pytest.raises(SystemExit) as e:
        main(["predict", "--checkpoint", str(ckpt)])  # no input paths
    assert e.value.code == 2


# ---- 2. option validation, usage and help --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--checkpoint", "c", "--threshold", "1.5", "x"],
        ["predict", "--checkpoint", "c", "--threshold", "-0.1", "x"],
        ["evaluate", "--data", "d", "--checkpoint", "c", "--out", "o", "--threshold", "2"],
        ["train", "--data", "d", "--out", "o", "--epochs", "0"],
        ["train", "--data", "d", "--out", "o", "--batch-size", "0"],
        ["train", "--data", "d", "--out", "o", "--aug-flip-prob", "1.5"],
        ["demo", "--epochs", "0"],
        ["serve", "--checkpoint", "c", "--port", "99999"],
        ["calibrate", "--data", "d", "--checkpoint", "c", "--target-fpr", "3"],
        ["audit", "d", "--threshold", "7"],
    ],
)
def test_out_of_range_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: synapse7 {argv[0]}" in err and "out of range" in err


def test_epochs_zero_in_a_config_file_is_refused(tmp_path: Path) -> None:
    from synapse7.config import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        load_config(cfg)


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x"],
        ["train", "--data", "d", "--out", "o"],
        ["evaluate", "--data", "d", "--checkpoint", "c", "--out", "o"],
        ["serve", "--checkpoint", "c"],
        ["backbones"],
    ],
)
def test_unknown_option_prints_the_subcommands_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = argv[0]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: synapse7 {cmd} ") and "unrecognized arguments: --bogus" in err


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    subs = subcommands(parser)
    assert {"train", "evaluate", "predict", "demo", "export", "serve", "calibrate", "audit"} <= set(subs)
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, sub in subs.items()
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)
    ]
    missing += [f"synapse7 {a.option_strings}" for a in parser._actions if a.option_strings and not a.help]
    assert not missing, f"options without help: {missing}"


# ---- 3. folder scans and the one extension list ------------------------------------------------------------


def test_folder_scan_matches_naming_files_directly(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    named = [_png(d / "a.png"), _png(d / "b.JFIF"), _png(d / "c.Jpe"), _png(d / "noext")]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "d.TIF", format="TIFF")
    (d / "notes").write_text("no extension, not an image")
    (d / "readme.txt").write_text("text")
    found, other = walk_images(d)
    assert sorted(Path(f).name for f in found) == ["a.png", "b.JFIF", "c.Jpe", "d.TIF", "noext"]
    assert other == 2
    assert named  # the extension-less PNG is taken by content, as `predict noext` reads it


def test_readme_lists_the_scanned_extensions() -> None:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"\*\.\{([a-z,]+)\}", text)
    assert m, "README's data layout lists the extensions as *.{jpg,...}"
    assert {f".{e}" for e in m.group(1).split(",")} == set(IMAGE_EXTENSIONS)


def test_empty_folder_names_it_and_the_extensions(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("x")
    assert _predict(ckpt, str(tmp_path / "empty")) == 1
    row = capsys.readouterr().out.strip().split("\t")
    assert row[1] == "ERROR" and str(tmp_path / "empty") in row[3] and ".jfif" in row[3] and ".png" in row[3]


# ---- 4. resume with new inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_resume_classifies_new_inputs(
    ckpt: Path, tmp_path: Path, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "in"
    a, b = _png(d / "a.png", seed=1), _png(d / "b.png", seed=2)
    out = tmp_path / "preds.txt"
    fmt = ["--json"] if as_json else []
    assert _predict(ckpt, *fmt, "--output", str(out), str(a)) == 0
    first = out.read_text().splitlines()
    assert len(first) == 1
    c = _png(d / "c.png", seed=3)
    assert _predict(ckpt, *fmt, "--output", str(out), "--resume", str(a), str(b), str(c)) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == first[0] and len(lines) == 3  # the old row kept, the two new ones classified
    paths = [json.loads(x)["path"] if as_json else x.split("\t")[0] for x in lines]
    assert paths == [str(a), str(b), str(c)]
    assert "2 new" in capsys.readouterr().err
    # nothing new: the file stays as it is, exit 0
    assert _predict(ckpt, *fmt, "--output", str(out), "--resume", str(a), str(b)) == 0
    assert out.read_text().splitlines() == lines


# ---- 6. tiny images ----------------------------------------------------------------------------------------


def test_tiny_image_is_an_error_row_not_a_guess(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    ok = _png(tmp_path / "ok.png", size=8)  # the 32 px model's limit: max(8, 32 / 4)
    assert _predict(ckpt, str(tiny), str(ok)) == 1
    rows = [r.split("\t") for r in capsys.readouterr().out.strip().splitlines()]
    assert rows[0][1] == "ERROR" and "image too small: 4x4" in rows[0][3] and "8 px" in rows[0][3]
    assert rows[1][1] in ("AI", "REAL")

    from synapse7.predict import Detector

    det = Detector.from_checkpoint(ckpt, device="cpu")
    p = det.predict([np.zeros((4, 4, 3), np.uint8)])[0]
    assert p.label == "ERROR" and "too small" in (p.error or "")


def test_heic_avif_and_jpeg_xl_are_named_in_the_error(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    avif = tmp_path / "phone.avif"
    try:
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(avif)  # a real AVIF where Pillow writes them
    except (KeyError, OSError):
        avif.write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64))
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    jxl = tmp_path / "x.jxl"
    jxl.write_bytes(b"\xff\x0a" + bytes(64))
    other = tmp_path / "box.mp4"
    other.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isomiso2" + bytes(64))
    assert _predict(ckpt, str(avif), str(heic), str(jxl), str(other)) == 1
    rows = [r.split("\t") for r in capsys.readouterr().out.strip().splitlines()]
    reasons = {Path(r[0]).name: r[3] for r in rows}
    assert "an AVIF image, which Synapse-7 does not read" in reasons["phone.avif"]
    assert "a HEIC/HEIF image" in reasons["IMG_0001.HEIC"] and "convert it" in reasons["IMG_0001.HEIC"]
    assert "a JPEG XL image" in reasons["x.jxl"]
    assert reasons["box.mp4"] == "not a recognised image (unknown format or wrong magic bytes)"
    from synapse7.io import BadImageError, open_image

    with pytest.raises(BadImageError, match="HEIC/HEIF") as e, heic.open("rb") as f:
        f.seek(5)  # a file object part-read: the sniff reads from its start and puts the position back
        open_image(f, name="upload.heic")
    assert e.value.path == "upload.heic"


def test_python_api_refuses_urls_like_the_cli(ckpt: Path) -> None:
    from synapse7.predict import Detector

    p = Detector.from_checkpoint(ckpt, device="cpu").predict(["http://example.com/a.png"])[0]
    assert p.label == "ERROR" and "URLs are not supported" in (p.error or "")


def test_a_threshold_other_than_half_is_printed(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _png(tmp_path / "a.png")
    assert _predict(ckpt, str(good)) == 0
    assert "AI means" not in capsys.readouterr().err
    assert _predict(ckpt, "--threshold", "0.3", str(good)) == 0
    assert "threshold 0.3: AI means P(AI) >= 0.3" in capsys.readouterr().err
