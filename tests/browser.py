"""Reports as a reader sees them: a page rendered by Debian's headless Chromium (``make browser`` installs it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

# Debian's packages (make browser); elsewhere the first Chromium or Chrome and chromedriver on the PATH.
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), "/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def rendered_text(page: Path) -> str:
    """The text Chromium shows of an HTML file (``innerText``: what is laid out and visible, no markup)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing: run `make browser` (Debian's chromium and chromium-driver), "
            "or install Chromium and chromedriver on the PATH"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="deltaml-chromium-")
    try:
        # This machine's network is closed: without the background-networking flags Chromium keeps dialling out.
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.get(page.resolve().as_uri())
            return str(driver.execute_script("return document.body.innerText"))
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
