"""The browser tests' shared parts: the console started as the README says, headless Chromium, and the waits a
person makes before reading a Streamlit screen (conditions, never fixed sleeps)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.settings import ROOT
from tests.fakes import free_port
from tests.servers import stop, wait_until_up

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


def require_chromium() -> None:
    """Skip the calling test module without Debian's chromium; on CI its absence is a failure (.ci/run installs it)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@contextmanager
def console_server(env: dict[str, str]) -> Iterator[str]:
    """`streamlit run console.py` on a free loopback port with env; yields its URL once it answers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "console.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health")
        yield url
    finally:
        stop(server)


@contextmanager
def headless_chromium():  # type: ignore[no-untyped-def]
    """Debian's Chromium through Playwright, with the flags this machine's closed network needs."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield chromium
        finally:
            chromium.close()


def settled(page, timeout: float = 60_000) -> None:  # type: ignore[no-untyped-def]
    """Wait until Streamlit's script run is over, no element is stale (greyed from the run before) and every
    chart has drawn its canvas: the conditions a person waits for before reading the screen."""
    page.wait_for_function("""() => {
        const app = document.querySelector('[data-test-script-state]');
        if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
        if (document.querySelector('[data-stale="true"]')) return false;
        return [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every(chart => {
            const drawn = chart.querySelector('canvas, svg.marks');
            return drawn && drawn.getBoundingClientRect().width > 0;
        });
    }""", timeout=timeout)


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """A screenshot of the whole screen into tests/artifacts/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    settled(page)
    # Streamlit scrolls inside its own main container, so a full-page shot would stop at the window: the
    # window grows to the content's height for the shot instead.
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll('[data-testid="stMain"], section')]
        .map(e => e.scrollHeight), document.body.scrollHeight)""")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height, 6000))})
    settled(page)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)


def wait_text(page, text: str, timeout: float = 30_000) -> None:  # type: ignore[no-untyped-def]
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def sign_in(page, url: str, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url)
    wait_text(page, "Sign in to the OTP console")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    wait_text(page, "OTP service status")


def sign_out(page) -> None:  # type: ignore[no-untyped-def]
    """Press Sign out and wait for the sign-in form: the cookie is cleared by that run, so navigating away before
    it has drawn would race it and land signed in again."""
    page.get_by_role("button", name="Sign out").click()
    wait_text(page, "Sign in to the OTP console")
    settled(page)


def go(page, title: str, heading: str) -> None:  # type: ignore[no-untyped-def]
    """Open a page from the sidebar and wait for it to be drawn."""
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)
    settled(page)
