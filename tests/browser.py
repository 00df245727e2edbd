"""A real headless Chromium (Debian's `chromium` and `chromium-driver`, installed by `make install`)
driven through Selenium, offline: no network, no sync, no component updates, a fresh profile."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions")


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"none of {names} is installed; `make install` installs Debian's chromium and chromium-driver")


@contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    with tempfile.TemporaryDirectory(prefix="zerotune-chromium-") as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def images_of(page: Path) -> list[dict]:
    """Every <img> on the page as the browser loaded it: src prefix, complete, naturalWidth."""
    with chromium() as driver:
        driver.get(page.resolve().as_uri())
        return driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.src.slice(0, 30), alt: i.alt,"
            " complete: i.complete, width: i.naturalWidth}))")
