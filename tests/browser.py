"""Real headless Chromium (Debian's ``chromium``, driven by Playwright with ``executable_path``: no
browser download) for the web app's browser tests, with the two checks every page gets: no console
error, and no request that leaves loopback (the route guard aborts and records it).

Screenshots go to ``test-artifacts/screenshots/`` (``$MECHSCOPE_SCREENSHOTS`` overrides it), kept
after the run as the tests' artifacts."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
SCREENSHOTS = Path(os.environ.get("MECHSCOPE_SCREENSHOTS",
                                  Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"))


def chromium_path() -> str:
    """Debian's chromium; missing, the tests skip locally and fail in CI (``.ci/run`` installs it)."""
    found = os.environ.get("MECHSCOPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "no chromium on PATH: apt-get install chromium (make test does it when it can)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class WatchedPage:
    """A page with its console errors, page errors and refused foreign requests collected."""

    page: object
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.foreign == [], f"requests that would have left loopback: {self.foreign}"

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def watched(context) -> WatchedPage:
    """A new page of ``context`` under the route guard, collecting its errors."""
    page = context.new_page()
    result = WatchedPage(page)

    def guard(route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            result.foreign.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("console", lambda message: message.type == "error" and result.errors.append(message.text))
    page.on("pageerror", lambda error: result.errors.append(f"uncaught: {error}"))
    return result


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # a dev dependency: missing, the tests fail

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        yield launched
        launched.close()
