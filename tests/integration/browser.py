"""Headless Chromium for UI tests: open a page of the Prefect or MLflow UI, wait until it
shows what a user looks for, and save a screenshot under ``test-artifacts/screenshots``.

Chromium and ChromeDriver come from Debian (``make install`` installs the packages
``chromium`` and ``chromium-driver``); Selenium drives them with no download of its own.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ARTIFACTS = Path(os.environ.get("MLSYS_TEST_ARTIFACTS", "test-artifacts")) / "screenshots"
CHROMIUM = os.environ.get("MLSYS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MLSYS_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not found; `make install` installs Debian's chromium, chromium-driver"
    return None


class Page:
    """One Chromium window; ``show`` loads a URL and waits for its text."""

    def __init__(self, driver: object) -> None:
        self.driver = driver

    def sign_in_prefect(self, ui_url: str, auth_string: str) -> None:
        """Give the Prefect UI its API credential as its login page would (the UI keeps
        it in local storage and sends it with every API request)."""
        self.driver.get(ui_url)  # type: ignore[attr-defined]
        self.driver.execute_script(  # type: ignore[attr-defined]
            "localStorage.setItem('prefect-password', btoa(arguments[0]));", auth_string
        )

    def sign_in_mlflow(self, user: str, password: str) -> None:
        """Send MLflow's basic-auth credential with every request from now on (what the
        browser's login prompt would do)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.driver.execute_cdp_cmd("Network.enable", {})  # type: ignore[attr-defined]
        self.driver.execute_cdp_cmd(  # type: ignore[attr-defined]
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )

    def show(self, url: str, expect: Sequence[str], *, shot: str, timeout_s: float = 60) -> str:
        """Load ``url``, wait until the page's visible text holds every string of
        ``expect``, save ``<shot>.png`` and return the text. On a timeout the screenshot
        is saved too and the error names what was missing."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver = self.driver
        driver.get(url)  # type: ignore[attr-defined]

        def text() -> str:
            try:
                return str(driver.find_element(By.TAG_NAME, "body").text)  # type: ignore[attr-defined]
            except Exception:  # the page is being replaced while the app renders
                return ""

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(
                lambda _: all(s in text() for s in expect)
            )
        except TimeoutException:
            driver.save_screenshot(str(ARTIFACTS / f"{shot}-timeout.png"))  # type: ignore[attr-defined]
            seen = text()
            missing = [s for s in expect if s not in seen]
            raise AssertionError(
                f"{url} did not show {missing} within {timeout_s:.0f} s; it shows: {seen[:800]!r}"
            ) from None
        driver.save_screenshot(str(ARTIFACTS / f"{shot}.png"))  # type: ignore[attr-defined]
        return text()


@contextmanager
def chromium(width: int = 1440, height: int = 960) -> Iterator[Page]:
    """A headless Chromium with a fresh profile, closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mlsys-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield Page(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
