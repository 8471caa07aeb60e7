"""The upload page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium):
a photo, a TIFF and a corrupt file are uploaded through the page's file input; the verdicts, the explanation
views and the error card are read back from the DOM and checked against the Detector; a screenshot is saved.
Skips, with the reason, when the browser, its driver or selenium is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("captum")

from synapse7.predict import Detector  # noqa: E402
from synapse7.serve import create_app  # noqa: E402
from synapse7.serve.testing import (  # noqa: E402
    find_chromium,
    full_page_screenshot,
    headless_chromium,
    running_server,
    upload_and_wait,
)

_found = find_chromium()
pytestmark = pytest.mark.skipif(isinstance(_found, str), reason=f"no headless browser: {_found}")


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real photo (scikit-image's astronaut), a TIFF of another photo, and a truncated JPEG."""
    from skimage import data

    d = tmp_path_factory.mktemp("uploads")
    photo, tiff, broken = d / "astronaut.jpg", d / "coffee.tif", d / "broken.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=92)
    Image.fromarray(data.coffee()).save(tiff)
    good = photo.read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    return {"photo": photo, "tiff": tiff, "broken": broken}


def _card(driver, name: str):
    from selenium.webdriver.common.by import By

    for card in driver.find_elements(By.CSS_SELECTOR, ".card"):
        if card.find_element(By.CSS_SELECTOR, ".name").text == name:
            return card
    raise AssertionError(f"no card for {name}")


def test_page_upload_verdicts_views_and_error_card(
    trained_run: Path, uploads: dict[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    det = Detector.from_checkpoint(trained_run / "run" / "best.ckpt", device="cpu")
    expected = {
        p.name: r
        for p, r in zip(uploads.values(), det.predict(list(map(str, uploads.values()))), strict=True)
    }
    with running_server(create_app(det)) as base, headless_chromium() as driver:
        upload_and_wait(driver, base, list(uploads.values()))
        assert driver.find_element(By.ID, "health-text").text == "model ready"

        for key in ("photo", "tiff"):
            name = uploads[key].name
            card, exp = _card(driver, name), expected[name]
            assert card.find_element(By.CSS_SELECTOR, ".verdict").text == exp.label
            assert card.find_element(By.CSS_SELECTOR, ".meta .p").text == f"{100 * exp.p_ai:.1f}%"
            views = {
                f.get_attribute("data-view"): f for f in card.find_elements(By.CSS_SELECTOR, ".why figure")
            }
            assert set(views) == {"regions", "spectrum", "heatmap"}, name  # fft model: no residual view
            for key_view, fig in views.items():
                img = fig.find_element(By.TAG_NAME, "img")
                assert img.get_attribute("src").startswith("data:image/png;base64,"), key_view
                assert driver.execute_script("return arguments[0].naturalWidth", img) > 0, key_view
            assert "spectrum" in views["spectrum"].text.lower()
        # Chromium cannot show TIFF: the thumbnail is the server's PNG preview.
        thumb = _card(driver, "coffee.tif").find_element(By.CSS_SELECTOR, ".thumb img")
        assert thumb.get_attribute("src").startswith("data:image/png")
        assert driver.execute_script("return arguments[0].naturalWidth", thumb) > 0

        bad = _card(driver, "broken.jpg")
        assert bad.find_element(By.CSS_SELECTOR, ".verdict").text == "ERROR"
        assert expected["broken.jpg"].error in bad.find_element(By.CSS_SELECTOR, ".error").text
        assert not bad.find_elements(By.CSS_SELECTOR, ".why")
        summary = driver.find_element(By.ID, "summary").text
        assert "3 images" in summary and "1 error" in summary

        shot = full_page_screenshot(driver, tmp_path / "page.png")
    img = Image.open(shot)
    assert img.format == "PNG" and img.width == 1280 and img.height > 600
    assert np.asarray(img.convert("L")).std() > 10  # a rendered page, not a blank canvas


def test_page_asks_for_the_token(trained_run: Path, uploads: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    det = Detector.from_checkpoint(trained_run / "run" / "best.ckpt", device="cpu")
    with running_server(create_app(det, token="s3cret")) as base, headless_chromium() as driver:
        upload_and_wait(driver, base, [uploads["photo"]])
        assert driver.find_element(By.ID, "token-box").is_displayed()
        card = _card(driver, "astronaut.jpg")
        assert card.find_element(By.CSS_SELECTOR, ".verdict").text == "ERROR"
        assert "API token" in driver.find_element(By.ID, "banner").text
        driver.find_element(By.ID, "token").send_keys("s3cret")
        driver.find_element(By.ID, "clear").click()
        driver.find_element(By.ID, "file-input").send_keys(str(uploads["photo"]))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 120).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".card .why figure[data-view=spectrum]")
        )
        assert _card(driver, "astronaut.jpg").find_element(By.CSS_SELECTOR, ".verdict").text in ("AI", "REAL")


def test_page_splits_uploads_to_fit_the_request_cap(trained_run: Path, tmp_path: Path) -> None:
    """Three ~150 KB files under a 300 KB request cap: one request would be a 413; the page sends them in turns."""
    from selenium.webdriver.common.by import By

    paths = []
    for i in range(3):
        p = tmp_path / f"noise{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (220, 220, 3), dtype=np.uint8)).save(p)
        assert 120_000 < p.stat().st_size < 200_000
        paths.append(p)
    det = Detector.from_checkpoint(trained_run / "run" / "best.ckpt", device="cpu")
    app = create_app(det, max_upload_bytes=200_000, max_request_bytes=300_000)
    with running_server(app) as base, headless_chromium() as driver:
        upload_and_wait(driver, base, paths)
        verdicts = [
            c.find_element(By.CSS_SELECTOR, ".verdict").text
            for c in driver.find_elements(By.CSS_SELECTOR, ".card")
        ]
    assert sorted(verdicts) == sorted(p.label for p in det.predict(list(map(str, paths))))
    assert "ERROR" not in verdicts


def test_page_serves_an_ensemble(trained_run: Path, uploads: dict[str, Path]) -> None:
    """Two checkpoints served as one model: the page says so, and its verdict is the ensemble's."""
    from selenium.webdriver.common.by import By

    det = Detector.from_checkpoints([trained_run / "run" / "best.ckpt", trained_run / "run" / "last.ckpt"])
    exp = det.predict([str(uploads["photo"])])[0]
    with running_server(create_app(det)) as base, headless_chromium() as driver:
        upload_and_wait(driver, base, [uploads["photo"]])
        chips = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#chips .chip")]
        assert "ensemble 2 models" in chips
        card = _card(driver, uploads["photo"].name)
        assert card.find_element(By.CSS_SELECTOR, ".verdict").text == exp.label
        assert card.find_element(By.CSS_SELECTOR, ".meta .p").text == f"{100 * exp.p_ai:.1f}%"
        assert card.find_elements(By.CSS_SELECTOR, ".why figure")  # explanations run through the ensemble
