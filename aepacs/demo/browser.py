"""The demo's picture of the viewer: the OHIF viewer served by aepacs, in headless Debian chromium (Selenium).

Selenium drives the system's ``chromium`` through ``chromedriver``; nothing
is downloaded. Where either, or Selenium itself, is missing the picture is
left out with the reason.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np

__all__ = ["screenshot", "viewport_stats"]

CHROMIUM = "/usr/bin/chromium"
#: the viewport's slice counter once a series' first slice is shown: "(1/64)"
_FIRST_SLICE = re.compile(r"\(1/\d+\)")


def viewport_stats(png: bytes) -> tuple[float, float]:
    """Mean and standard deviation of a viewer screenshot's viewport area (the canvas, not the side panels)."""
    image = imagecodecs.png_decode(png)[..., :3].astype(np.float64).mean(axis=2)
    h, w = image.shape
    region = image[int(h * 0.25):int(h * 0.85), int(w * 0.35):int(w * 0.8)]
    return float(region.mean()), float(region.std())


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def screenshot(base: str, token: str, url: str, out: Path, *, timeout: float = 120.0) -> tuple[Path | None, str]:
    """Sign in to the viewer at `base` with `token`, open `url` (a study), and save a screenshot to `out`
    once the first slice of a series is drawn. Returns the file (and a remark where it shows less), or
    None and why there is none."""
    try:
        from selenium import webdriver  # noqa: PLC0415 -- the dev extra, when installed
        from selenium.common.exceptions import WebDriverException  # noqa: PLC0415
        from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
        from selenium.webdriver.common.by import By  # noqa: PLC0415
    except ImportError:
        return None, "selenium is not installed: pip install 'aepacs[dev]'"
    chromedriver = shutil.which("chromedriver")
    if not Path(CHROMIUM).exists() or chromedriver is None:
        return None, "Debian's chromium and chromium-driver are not installed"
    with tempfile.TemporaryDirectory(prefix="aepacs-browser-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                    "--disable-background-networking", "--disable-component-update", "--window-size=1400,900",
                    f"--user-data-dir={profile}"):
            options.add_argument(arg)
        try:
            driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        except WebDriverException as exc:
            return None, f"chromium did not start: {exc.msg}"
        try:
            driver.set_page_load_timeout(60)
            driver.get(f"{base}/viewer/login")
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.ID, "login").click()
            driver.get(url)
            drawn = _wait(lambda: _FIRST_SLICE.search(driver.find_element(By.TAG_NAME, "body").text), timeout) and \
                _wait(lambda: viewport_stats(driver.get_screenshot_as_png())[1] > 15, timeout)
            for skip in driver.find_elements(By.XPATH, "//*[text()='Skip all']"):
                skip.click()  # OHIF's first-visit tour, over the image
                time.sleep(1)
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        except WebDriverException as exc:
            return None, f"the browser failed: {exc.msg}"
        finally:
            driver.quit()
    return out, "" if drawn else "the viewer did not draw the series in time (the picture shows how far it got)"
