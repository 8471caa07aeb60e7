"""Spectral fingerprints: a planted periodic artefact must show up at its frequency; batching must not matter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synapse7.fingerprint import compute_fingerprints, radial_profile, spectral_peaks, write_fingerprints

SIZE = 64
# generator -> planted frequency (fy, fx) in cycles/pixel
PLANTED = {"gen_h": (0.0, 0.25), "gen_d": (0.125, 0.125)}


def _smooth(rng: np.random.Generator) -> np.ndarray:
    """A 'real' image: blurred white noise, wrapped at the borders (no edge cross, no up-sampling replicas)."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(size=(SIZE, SIZE, 3)), sigma=(1.5, 1.5, 0), mode="wrap")
    return 128 + 25 * noise / noise.std()


def _planted_dataset(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for gen, (fy, fx) in PLANTED.items():
        for cls in ("ai", "nature"):
            d = root / gen / "val" / cls
            d.mkdir(parents=True)
            for i in range(n):
                img = _smooth(rng)
                if cls == "ai":
                    # a weak periodic pattern with a random phase per image: visible only on average
                    phase = rng.uniform(0, 2 * np.pi)
                    img = img + 6.0 * np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)[..., None]
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


def _canonical(fy: float, fx: float) -> tuple[float, float]:
    """A frequency folded into [-1/2, 1/2) and onto the half-plane spectral_peaks reports (fx > 0 or fx == 0, fy >= 0)."""
    fy, fx = (fy + 0.5) % 1 - 0.5, (fx + 0.5) % 1 - 0.5
    if fx < 0 or (fx == 0 and fy < 0):
        fy, fx = (-fy + 0.5) % 1 - 0.5, (-fx + 0.5) % 1 - 0.5
    return fy, fx


def _aliases(f: tuple[float, float]) -> set[tuple[float, float]]:
    return {_canonical(f[0] + a, f[1] + b) for a in (0, 0.5) for b in (0, 0.5)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _planted_dataset(tmp_path_factory.mktemp("fp") / "data")


@pytest.mark.parametrize("window", ["hann", "none"])
def test_planted_frequency_is_the_peak(planted: Path, window: str) -> None:
    res = compute_fingerprints(
        planted, image_size=SIZE, batch_size=5, num_workers=0, device="cpu", progress=False, window=window
    )
    assert res.counts == [6, 6, 6, 6]
    for i, (gen, cls) in enumerate(res.groups):
        for kind in ("spectrum", "residual"):
            top = spectral_peaks(getattr(res, kind)[i], k=1)[0]
            # The residual's factor-2 resampling also moves a component to its aliases f + (0 or 1/2, 0 or 1/2).
            expected = {PLANTED[gen]} if kind == "spectrum" else _aliases(PLANTED[gen])
            at_planted = _canonical(top["fy"], top["fx"]) in expected
            assert at_planted == (cls == "AI"), (gen, cls, kind, top)
    real = res.real_mean("spectrum")
    for i in res.fake_groups():
        gen = res.groups[i][0]
        diff = res.spectrum[i] - real
        y, x = np.unravel_index(np.argmax(diff), diff.shape)
        # the difference from the real class peaks at +-the planted frequency (fftshifted: DC at SIZE // 2)
        f = ((y - SIZE // 2) / SIZE, (x - SIZE // 2) / SIZE)
        assert f in (PLANTED[gen], (-PLANTED[gen][0], -PLANTED[gen][1])), (gen, f)


def test_batching_does_not_change_the_means(planted: Path) -> None:
    a = compute_fingerprints(
        planted, image_size=SIZE, batch_size=3, num_workers=0, device="cpu", progress=False
    )
    b = compute_fingerprints(
        planted, image_size=SIZE, batch_size=64, num_workers=0, device="cpu", progress=False
    )
    np.testing.assert_allclose(a.spectrum, b.spectrum, atol=1e-5)
    np.testing.assert_allclose(a.residual, b.residual, atol=1e-5)
    sub = compute_fingerprints(
        planted, image_size=SIZE, max_per_group=2, num_workers=0, device="cpu", progress=False
    )
    assert sub.counts == [2, 2, 2, 2]


def test_radial_profile_of_a_ring() -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    ring = (np.rint(np.hypot(yy - 32, xx - 32)) == 8).astype(float)
    freq, prof = radial_profile(ring)
    assert freq[np.argmax(prof)] == pytest.approx(8 / 64)
    assert prof[8] == pytest.approx(1.0)


def test_writes_figures_and_json(planted: Path, tmp_path: Path) -> None:
    res = compute_fingerprints(planted, image_size=SIZE, num_workers=0, device="cpu", progress=False)
    paths = write_fingerprints(res, tmp_path / "out", save_arrays=True)
    for p in paths.values():
        assert p.stat().st_size > 0
    summary = json.loads(paths["json"].read_text())
    rows = {(r["generator"], r["class"]): r for r in summary["groups"]}
    assert rows[("gen_h", "AI")]["spectrum_minus_real"]["peaks"][0]["fx"] == pytest.approx(0.25)
    assert "spectrum_minus_real" not in rows[("gen_h", "REAL")]
    assert len(summary["radial_freq"]) == len(rows[("gen_h", "AI")]["residual"]["radial_profile"])
    assert np.load(paths["arrays"])["spectrum"].shape == (4, SIZE, SIZE)


def test_cli(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synapse7.cli import main

    rc = main(
        [
            "fingerprint",
            str(planted),
            "--out",
            str(tmp_path / "o"),
            "--image-size",
            str(SIZE),
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (tmp_path / "o" / "fingerprint.png").is_file()
    assert main(["fingerprint", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["fingerprint", str(planted), "--out", str(tmp_path / "o3"), "--image-size", "33"]) == 1


def test_window_removes_the_border_cross(tmp_path: Path) -> None:
    # Smooth, non-periodic images (a ramp + blur): the plain FFT sees a jump at the borders, i.e. a cross.
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for cls in ("ai", "nature"):
        d = tmp_path / "data" / "g" / "val" / cls
        d.mkdir(parents=True)
        for i in range(4):
            img = 60 + 4 * xx + 2 * yy + gaussian_filter(rng.normal(0, 40, (SIZE, SIZE)), 2)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB").save(d / f"{i}.png")
    top = {}
    for window in ("none", "hann"):
        res = compute_fingerprints(
            tmp_path / "data", image_size=SIZE, num_workers=0, device="cpu", progress=False, window=window
        )
        top[window] = spectral_peaks(res.spectrum[0], k=1)[0]
    assert top["none"]["fy"] == 0 or top["none"]["fx"] == 0  # on the cross
    assert top["hann"]["excess"] < 0.5 * top["none"]["excess"], top
