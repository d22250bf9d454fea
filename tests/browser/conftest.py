"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) for the browser tests.

Each test's page is saved as ``test-output/<test name>.png`` at the repository root when the
test ends, pass or fail, so what the browser showed can be looked at afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from ainode.settings import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO_ROOT / "test-output"
VIEWPORT = {"width": 1366, "height": 768}  # the commonest laptop screen a reader has


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make setup-test` installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(
    chromium: Browser, request: pytest.FixtureRequest
) -> Iterator[Callable[[tuple[str, str] | None], Page]]:
    """Opens the test's page in a fresh context (no cookies, no storage), logged in as a user
    would be after the browser's Basic-auth prompt; screenshots it when the test ends."""
    contexts: list[BrowserContext] = []

    def open_page(credentials: tuple[str, str] | None) -> Page:
        context = chromium.new_context(
            viewport=VIEWPORT,
            http_credentials=(
                {"username": credentials[0], "password": credentials[1]} if credentials else None
            ),
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        return page

    yield open_page
    SCREENSHOTS.mkdir(exist_ok=True)
    for context in contexts:
        for page in context.pages:
            path = SCREENSHOTS / f"{request.node.name}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot: {path}")
        context.close()


@pytest.fixture
def snapshot(request: pytest.FixtureRequest) -> Callable[[Page, str], None]:
    """Save what the page shows now as ``test-output/<test name>-<step>.png``: a step a person
    wants to see that the end-of-test screenshot no longer shows."""

    def take(page: Page, step: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-{step}.png"))

    return take
