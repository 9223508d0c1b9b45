"""The OHIF viewer served by aepacs, opened in a real browser (Debian's chromium, headless, via Selenium)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from aepacs.demo.browser import viewport_stats
from aepacs.web.viewer import COOKIE, app_config, index_html
from tests.conftest import ARTEFACTS, ct_files
from tests.net.conftest import free_port
from tests.web.conftest import TOKEN, TOKEN_SHA256, Web


@pytest.fixture
def viewer_web(make_server: Callable[..., object], viewer_dir: Path) -> Web:  # noqa: F811
    running = make_server(server={"retrieve_as": "decoded"},
                          web={"port": free_port(), "tokens_sha256": [TOKEN_SHA256], "viewer": str(viewer_dir)})
    return Web(running)  # type: ignore[arg-type]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not Path("/usr/bin/chromium").exists() or not shutil.which("chromedriver"):
        pytest.fail("Debian's chromium and chromium-driver are needed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(predicate: Callable[[], object], timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def _viewport_stats(driver: object) -> tuple[float, float]:
    """Mean and standard deviation of the viewport area of a screenshot (the canvas, not the panels)."""
    return viewport_stats(driver.get_screenshot_as_png())  # type: ignore[attr-defined]


def test_the_viewer_shows_the_ct_series_in_a_real_browser(viewer_web: Web, browser: object) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    datasets = [pydicom.dcmread(f) for f in ct_files()[:20]]
    viewer_web.client.store_instances(datasets)
    viewer_web.running.wait_archived()
    base = viewer_web.url.removesuffix("/dicomweb")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    # without a token the study list stays empty: the viewer's files are public, the data is not
    driver.get(f"{base}/viewer/")  # type: ignore[attr-defined]
    time.sleep(3)
    assert str(datasets[0].PatientID) not in driver.page_source  # type: ignore[attr-defined]
    # sign in with the token: a cookie for the viewer's GET requests
    driver.get(f"{base}/viewer/login")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys(TOKEN)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    family = str(datasets[0].PatientName).split("^")[0]  # the viewer formats the other name parts its own way
    _wait(lambda: family in driver.page_source)  # type: ignore[attr-defined]
    driver.save_screenshot(str(ARTEFACTS / "viewer-study-list.png"))  # type: ignore[attr-defined]
    assert "20" in driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]  # instances
    # the study in the viewer: the first slice drawn, and the slice count shown
    study = datasets[0].StudyInstanceUID
    driver.get(f"{base}/viewer/viewer?StudyInstanceUIDs={study}")  # type: ignore[attr-defined]
    _wait(lambda: "(1/20)" in driver.find_element(By.TAG_NAME, "body").text)  # type: ignore[attr-defined]
    _wait(lambda: _viewport_stats(driver)[1] > 15)  # not a blank canvas
    for skip in driver.find_elements(By.XPATH, "//*[text()='Skip all']"):  # type: ignore[attr-defined]
        skip.click()  # OHIF's first-visit tour, over the image
        time.sleep(1)
    driver.save_screenshot(str(ARTEFACTS / "viewer-ct.png"))  # type: ignore[attr-defined]
    mean, std = _viewport_stats(driver)
    assert std > 15 and 5 < mean < 250


def test_the_viewer_pages_and_its_session_cookie(viewer_web: Web) -> None:
    base = viewer_web.url.removesuffix("/dicomweb")
    page = requests.get(f"{base}/viewer/", timeout=30)
    assert page.status_code == 200 and 'window.PUBLIC_URL="/viewer/"' in page.text and 'src="/viewer/' in page.text
    config = requests.get(f"{base}/viewer/app-config.js", timeout=30).text
    assert f'"wadoRoot": "{viewer_web.url}"' in config and '"routerBasename": "/viewer"' in config
    assert requests.get(f"{base}/viewer/no-such-file.js", timeout=30).status_code == 404
    assert requests.get(f"{base}/viewer/viewer", timeout=30).text == page.text  # the viewer's own routes
    session = requests.Session()
    login = session.post(f"{base}/viewer/login", data={"token": TOKEN}, timeout=30, allow_redirects=False)
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    assert session.cookies.get(COOKIE) == TOKEN
    assert session.get(f"{viewer_web.url}/studies", timeout=30).status_code == 204  # GET: the cookie will do
    stow = session.post(f"{viewer_web.url}/studies", data=b"", timeout=30,
                        headers={"Content-Type": "multipart/related; boundary=x"})
    assert stow.status_code == 401  # writing needs the bearer header itself, never a cookie


def test_index_and_config_are_rewritten_for_the_prefix() -> None:
    html = index_html('<script>window.PUBLIC_URL="/"</script><script src="/app.js"></script><link href="/a.css">')
    assert html == '<script>window.PUBLIC_URL="/viewer/"</script><script src="/viewer/app.js"></script>' \
                   '<link href="/viewer/a.css">'
    config = app_config("https://pacs.example/dicomweb")
    assert config.startswith("window.config = ") and '"qidoRoot": "https://pacs.example/dicomweb"' in config
