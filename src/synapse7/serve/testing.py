"""Run the service on loopback and drive its page in a real headless Chromium: for tests and bench/screenshot.py.

The browser is the system's (Debian: `apt-get install chromium chromium-driver`), driven by Selenium through the
system chromedriver; nothing is downloaded. `find_chromium()` says what is missing, so callers can skip.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@contextmanager
def running_server(app: FastAPI, *, startup_timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 at a free port, in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def find_chromium() -> tuple[str, str] | str:
    """(browser, chromedriver) paths, or the reason they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = [name for name, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
        return f"{' and '.join(missing)} not found (Debian: apt-get install chromium chromium-driver)"
    return browser, driver


@contextmanager
def headless_chromium(*, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Selenium WebDriver on the system's headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--force-prefers-reduced-motion",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def upload_and_wait(
    driver: Any, base_url: str, paths: Sequence[str | Path], *, timeout: float = 180.0
) -> None:
    """Open the page, pick `paths` in its file input, and wait until every verdict and explanation is in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base_url + "/")
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_element(By.ID, "health-text").text in ("model ready", "service unavailable"))
    driver.find_element(By.ID, "file-input").send_keys("\n".join(str(Path(p).resolve()) for p in paths))
    wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, ".card")) == len(paths)
            and not d.find_elements(By.CSS_SELECTOR, ".card.pending")
            and not d.find_elements(By.CSS_SELECTOR, ".why .status:not(.bad)")
        )
    )
    # Explanation images are data: URLs; let them finish decoding before anyone looks.
    wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))


def full_page_screenshot(driver: Any, path: str | Path, *, width: int = 1280) -> Path:
    """Resize the window to the page's height and save a PNG of all of it."""
    # The window's size includes the browser's own frame: add what the viewport lacks of it.
    frame = int(driver.execute_script("return window.outerHeight - window.innerHeight"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, height + frame)
    time.sleep(0.3)  # one layout/paint at the new size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path
