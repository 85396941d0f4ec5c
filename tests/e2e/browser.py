"""A real browser for the web tests: Debian's chromium driven by Playwright, headless.

Playwright's own browser download cannot work on machines without internet, so
the tests launch the chromium that bin/bootstrap installs. Screenshots are kept
as test artifacts in var/test-artifacts/screenshots/ (emptied when the browser starts).
"""

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import local_cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = local_cluster.REPO_ROOT / "var" / "test-artifacts" / "screenshots"


# Module scope, not session: while Playwright's sync API is open the main thread has
# a running event loop, and Django refuses ORM calls there (SynchronousOnlyOperation),
# so the browser must be gone before the database tests that follow.
@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run bin/bootstrap, which installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


class Screenshots:
    """Numbered full-page screenshots of one test, named after what they show."""

    def __init__(self, test_name: str) -> None:
        self.folder = SCREENSHOTS / re.sub(r"[^\w.-]+", "_", test_name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def take(self, page, what: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{what}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def screenshots(request) -> Screenshots:
    return Screenshots(request.node.name)


def sign_in(page, base_url: str, login_path: str, username: str, password: str) -> None:
    """Fill in Django's login form (the portal's and the admin's use the same field ids)."""
    page.goto(f"{base_url}{login_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form [type=submit]")
    page.wait_for_load_state()
    assert "login" not in page.url, f"still on the login page: {page.url}"
