"""What the browser tests share: their Chromium (browser_fixtures.py), its pages, the two login forms.

TEST_CHROMIUM names another executable than Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CHROMIUM = Path(os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium"))
PASSWORD = "browser-pass-123"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class Pages:
    """Opens pages in one test's Chromium and collects their JavaScript errors."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.errors: list[str] = []

    def open(self, width: int = 1280, height: int = 800) -> Any:
        page = self.browser.new_page(viewport={"width": width, "height": height})
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page


def log_in_to_chat(page: Any, base: str, username: str = "ada") -> None:
    """Open the chat, which sends a visitor to its login form; log in and land on the chat page."""
    page.goto(f"{base}/chat/")
    assert "/chat/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#login")
    page.wait_for_url(f"{base}/chat/")


def log_in_to_admin(page: Any, base: str, landing: str, username: str = "root") -> None:
    """Log in through the admin's login form, going on to `landing` (a path)."""
    page.goto(f"{base}/admin/login/?next={landing}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}{landing}")


def outside_the_event_loop(query: Callable[[], T]) -> T:
    """Run an ORM call in a thread: Playwright's sync API runs an event loop in this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(query).result()
