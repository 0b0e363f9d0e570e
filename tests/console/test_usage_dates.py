"""Usage page and exports take any dates: bad ones are named (page) or a 400 (CSV), never a 500 or a hang."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import AsyncClient, Client

from portal.console.usage import exports
from portal.console.usage.forms import EARLIEST_DAY, MAX_DAYS
from registry.services.rollups import utc_today
from tests.console.test_usage import URL, add_usage
from tests.portal_process import start_portal

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = utc_today()
# Each bad query, and what the page and the exports say about it.
BAD_DATES = {
    "end=0001-01-01": "from 2000-01-01 on",
    "start=0001-01-01&end=0001-01-02": "from 2000-01-01 on",
    "start=1999-12-31": "from 2000-01-01 on",
    "start=9999-12-30&end=9999-12-31": "after today",
    "start=9999-12-31": "after today",
    f"start={TODAY - timedelta(days=MAX_DAYS)}": f"at most {MAX_DAYS} days",
}
EXPORTS = ["records.csv", "daily.csv"]


def _staff_user() -> Any:
    user = get_user_model().objects.create_user("boss", password="pw-123456789", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    return user


@pytest.fixture
async def staff() -> AsyncClient:
    """A staff client under ASGI, as daphne serves the exports (streamed page by page)."""
    client = AsyncClient()
    await client.aforce_login(await sync_to_async(_staff_user)())
    return client


async def _get(client: AsyncClient, url: str) -> tuple[int, str]:
    """GET `url` and read the whole body within 20 s: a stream that never ends fails the test."""
    async with asyncio.timeout(20):
        response: Any = await client.get(url)
        if response.streaming:
            body = b"".join([chunk async for chunk in response.streaming_content])
        else:
            body = response.content
    return response.status_code, body.decode()


@pytest.mark.parametrize(("query", "message"), BAD_DATES.items())
async def test_bad_dates_are_named_on_the_page(staff: AsyncClient, query: str, message: str) -> None:
    status, html = await _get(staff, f"{URL}?{query}")

    assert status == 200
    assert "Please correct the filters." in html
    assert message in html
    assert "usage-chart-data" not in html


@pytest.mark.parametrize("export", EXPORTS)
@pytest.mark.parametrize(("query", "message"), BAD_DATES.items())
async def test_bad_dates_are_a_400_naming_them_for_the_exports(
    staff: AsyncClient, export: str, query: str, message: str
) -> None:
    status, text = await _get(staff, f"{URL}{export}?{query}")

    assert status == 400
    assert message in text


async def test_an_end_after_today_is_clamped_to_today(staff: AsyncClient) -> None:
    await sync_to_async(add_usage)()
    start = TODAY - timedelta(days=1)

    status, html = await _get(staff, f"{URL}?start={start}&end=9999-12-31")
    _, daily = await _get(staff, f"{URL}daily.csv?start={start}&end=9999-12-31")

    assert status == 200
    assert f'value="{TODAY.isoformat()}"' in html
    assert "usage-chart-data" in html
    assert {row["day"] for row in csv.DictReader(io.StringIO(daily))} == {
        start.isoformat(),
        TODAY.isoformat(),
    }


async def test_the_earliest_day_and_a_full_range_still_work(staff: AsyncClient) -> None:
    await sync_to_async(add_usage)()
    oldest = TODAY - timedelta(days=MAX_DAYS - 1)

    page, _ = await _get(staff, f"{URL}?start={EARLIEST_DAY}&end={EARLIEST_DAY + timedelta(days=2)}")
    status, records = await _get(staff, f"{URL}records.csv?start={oldest}&end={TODAY}")

    assert page == 200
    assert status == 200
    assert len(list(csv.DictReader(io.StringIO(records)))) == 24


async def test_an_export_that_fails_midway_ends_with_a_line_saying_so(
    staff: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sync_to_async(add_usage)()
    monkeypatch.setattr(exports, "PAGE", 5)
    real = exports._record_line
    calls = {"n": 0}

    def failing_after_a_page(row: Any) -> list[Any]:
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("the database went away")
        return real(row)

    monkeypatch.setattr(exports, "_record_line", failing_after_a_page)

    status, text = await _get(staff, f"{URL}records.csv")

    lines = text.splitlines()
    assert status == 200
    assert len(lines) == 1 + 5 + 1  # the header, one page, the note
    assert lines[-1].startswith(exports.INCOMPLETE)
    assert "the database went away" not in text


@pytest.mark.processes
def test_a_real_portal_answers_bad_dates_and_ends_every_export() -> None:
    """daphne, not the test client: before, daily.csv sent its headers for year 9999 and then hung."""
    login = Client()
    login.force_login(_staff_user())
    add_usage()
    cookies = {settings.SESSION_COOKIE_NAME: login.cookies[settings.SESSION_COOKIE_NAME].value}
    with start_portal() as portal, httpx2.Client(base_url=portal.url, cookies=cookies, timeout=20) as client:
        answers = {
            export: (
                client.get(f"{URL}{export}?start=9999-12-30&end=9999-12-31"),
                client.get(f"{URL}{export}?start={TODAY - timedelta(days=2)}&end={TODAY}"),
            )
            for export in EXPORTS
        }

    for bad, fine in answers.values():
        assert bad.status_code == 400
        assert "after today" in bad.text
        assert fine.status_code == 200
        assert fine.headers["content-type"] == "text/csv; charset=utf-8"
        assert len(list(csv.DictReader(io.StringIO(fine.text)))) > 0
