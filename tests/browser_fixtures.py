"""The browser tests' fixtures: a plugin each browser test module names in `pytest_plugins`.

Without Chromium (or Playwright) those tests are skipped before anything is
started for them.

Chromium is launched per test, not per session: while Playwright's sync API
is open it marks this thread's event loop as running, and Django refuses ORM
calls (the fixtures' rows, the database flush after each test) and the async
tests refuse to start under a running loop. A launch costs under a second;
the portals and models the tests need are what is shared, per module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import ARGS, CHROMIUM, Pages
from tests.portal_process import PortalProcess, start_portal


@pytest.fixture(scope="session")
def chromium() -> Any:
    """Playwright's sync API, once Chromium is known to be installed; skip the test otherwise."""
    if not CHROMIUM.exists():
        print(f"browser tests skipped: {CHROMIUM} is not installed")
        pytest.skip(f"{CHROMIUM} is not installed")
    return pytest.importorskip("playwright.sync_api")


@pytest.fixture
def pages(chromium: Any) -> Iterator[Pages]:
    """A Chromium for this test; no JavaScript error may have happened on its pages.

    Ask for it after the fixtures that write rows: from here to its teardown
    the ORM is closed to this thread (outside_the_event_loop opens it).
    """
    with chromium.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        opened = Pages(browser)
        yield opened
        browser.close()
    assert opened.errors == [], f"JavaScript errors on the page: {opened.errors}"


@pytest.fixture(scope="module")
def live_portal(django_db_setup: None, chromium: Any) -> Iterator[PortalProcess]:
    """One portal for the module's tests, which write their own rows (a module may define its own)."""
    with start_portal() as process:
        yield process
