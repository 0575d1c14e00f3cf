"""A real headless Chromium (Debian's, driven by Selenium) for the browser tests (the panel, the rendered ruleset).

Without Chromium, its driver or selenium the tests skip locally and fail under CI=true, as the render test does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
INSTALL = "install them with: sudo apt-get install -y chromium chromium-driver (make test does this when it can)"
T = TypeVar("T")


def missing(message: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and the browser test cannot run: {message}; {INSTALL}", pytrace=False)
    pytest.skip(f"the browser test cannot run: {message}; {INSTALL}")


@contextmanager
def chromium(profile: Path, width: int, height: int, log: str = "browser") -> Iterator[Any]:
    """`log` names the Chrome log the test reads: `browser` (the console) or `performance` (network requests)."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if absent:
        missing(f"{' and '.join(absent)} not found")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("the selenium package is not installed (pip install -e '.[dev]')")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {log: "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """The first truthy value `check` returns within `timeout` seconds; fails naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


def axe_clean(driver: Any) -> None:
    """Runs the vendored axe-core on the open page (WCAG 2.1 A and AA, and best practice); fails on any
    violation, listing them."""
    source = AXE.read_bytes()
    assert hashlib.sha256(source).hexdigest() == AXE_SHA256, "tests/e2e/vendor/axe-core/axe.min.js was changed"
    driver.execute_script(source.decode("utf-8"))
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const tags = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];"
        "axe.run(document, {runOnly: {type: 'tag', values: tags}})"
        ".then(r => done({violations: r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.html)})), passes: r.passes.length}))"
        ".catch(e => done({error: String(e)}));"
    )
    assert "error" not in result, result
    assert result["violations"] == [], json.dumps(result["violations"], indent=2)
    assert result["passes"] > 10
