"""The usage charts in a real Chromium against a live portal (daphne), and its CSV streamed under ASGI.

No model worker is needed: the usage records are written by the test. Screenshots go to
test-artifacts/console/ (git-ignored).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model

from registry.models import ApiKey, UsageRecord, UsageStatus
from registry.services.rollups import roll_up_usage, utc_today
from tests.browser import PASSWORD, Pages, log_in_to_admin
from tests.portal_process import PortalProcess
from tests.processes import REPO_ROOT

pytest_plugins = ["tests.browser_fixtures"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"
CHARTS = ["requests-per-day", "tokens-per-day", "top-keys", "top-models"]  # with data; no app, user or team
EMPTY = ["top-teams", "top-apps", "top-users"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def portal(live_portal: PortalProcess) -> tuple[PortalProcess, dict[str, int]]:
    """The module's portal over two weeks of usage by four keys; returns it and the record counts."""
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    keys = [
        ApiKey.objects.create(name=f"team-{n}", prefix=f"b{n:07d}", hashed_secret=f"h{n}") for n in range(4)
    ]
    rows = []
    for day in range(14):
        when = datetime.combine(utc_today() - timedelta(days=day), datetime.min.time(), tzinfo=UTC)
        for n, key in enumerate(keys):
            for i in range((day + n) % 5 + 1):
                rows.append(
                    UsageRecord(
                        created_at=when + timedelta(hours=i), request_id=f"b{day}-{n}-{i}", source="api",
                        model_name=("smollm2", "minilm", "remote-llama")[n % 3], api_key=key,
                        prompt_tokens=20 + 5 * n, completion_tokens=10 * i,
                        status=UsageStatus.ERROR if i == 4 else UsageStatus.OK,
                    )
                )  # fmt: skip
    UsageRecord.objects.bulk_create(rows)
    roll_up_usage()  # past days from the rollup, today raw: the page joins both
    counts = {"all": len(rows), "b0000001": sum(row.api_key == keys[1] for row in rows)}
    return live_portal, counts


def test_usage_charts_render_and_the_csv_streams(portal, pages: Pages) -> None:
    portal, counts = portal
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = pages.open(1400, 900)
    log_in_to_admin(page, portal.url, "/admin/")
    page.screenshot(path=str(ARTIFACTS / "admin-index.png"))
    page.click("#console-module a[href='/admin/console/usage/']")
    page.wait_for_url(f"{portal.url}/admin/console/usage/")

    drawn = page.wait_for_function(
        "(ids) => ids.every((id) => { const c = Chart.getChart('chart-' + id);"
        " return c && c.canvas.width > 0 && c.data.datasets.length > 0; })",
        arg=CHARTS,
        timeout=15_000,
    )
    assert drawn
    for chart in EMPTY:
        assert page.locator(f"#chart-{chart}").locator("xpath=..").inner_text() == "No data in this range"
    per_day = page.evaluate("Chart.getChart('chart-requests-per-day').data")
    assert len(per_day["labels"]) == 30
    assert {d["label"] for d in per_day["datasets"]} == {"smollm2", "minilm", "remote-llama"}
    assert sum(sum(d["data"]) for d in per_day["datasets"]) == counts["all"]
    assert page.evaluate("Chart.getChart('chart-top-keys').data.labels.length") == 4
    page.screenshot(path=str(ARTIFACTS / "usage-charts.png"), full_page=True)

    page.fill("#id_key", "b0000001")
    page.click("#usage-filters input[type=submit]")
    page.wait_for_url("**key=b0000001**")
    page.wait_for_function("Chart.getChart('chart-top-keys') !== undefined")
    assert page.evaluate("Chart.getChart('chart-top-keys').data.labels") == ["team-1 (b0000001)"]
    page.screenshot(path=str(ARTIFACTS / "usage-one-key.png"), full_page=True)

    export = page.request.get(f"{portal.url}/admin/console/usage/records.csv?key=b0000001")
    assert export.ok
    assert export.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(export.text())))
    assert len(rows) == counts["b0000001"]
    assert {row["key_prefix"] for row in rows} == {"b0000001"}
    assert pages.errors == [], f"JavaScript errors on the page: {pages.errors}"


def test_filters_suggest_existing_values_and_empty_charts_say_so(portal, pages: Pages) -> None:
    portal, _ = portal
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        page = pages.open(width, height)
        log_in_to_admin(page, portal.url, "/admin/console/usage/")
        for field, listed in (("key", "usage-keys"), ("user", "usage-users"), ("model", "usage-models")):
            assert page.get_attribute(f"#id_{field}", "list") == listed
        offered = page.eval_on_selector_all(
            "#usage-keys option", "options => options.map(o => [o.value, o.label])"
        )
        assert sorted(offered) == [[f"b{n:07d}", f"team-{n}"] for n in range(4)]
        assert page.eval_on_selector_all("#usage-users option", "os => os.map(o => o.value)") == ["root"]
        assert "minilm" in page.eval_on_selector_all("#usage-models option", "os => os.map(o => o.value)")
        assert page.get_attribute("#id_app", "placeholder") == "any app"
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"usage-filters-{width}.png"))

        page.fill("#id_start", "2001-01-01")
        page.fill("#id_end", "2001-01-31")
        page.click("#usage-filters input[type=submit]")
        page.wait_for_url("**start=2001-01-01**")
        page.wait_for_function("document.querySelectorAll('.usage-empty').length === 7")
        for chart in CHARTS + EMPTY:
            box = page.locator(f"#chart-{chart}").locator("xpath=..")
            assert box.locator(".usage-empty").inner_text() == "No data in this range"
            assert page.locator(f"#chart-{chart}").is_hidden()
        page.screenshot(path=str(ARTIFACTS / f"usage-empty-{width}.png"), full_page=True)
