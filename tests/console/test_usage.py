"""The usage page and its CSV exports: staff only, the same figures from rollup and raw, bounded queries."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from portal.console.usage import exports
from registry.models import ApiKey, AppCredential, UsageRecord, UsageStatus
from registry.services import rollups
from registry.services.rollups import prune_usage, roll_up_usage, utc_today

URL = "/admin/console/usage/"
pytestmark = pytest.mark.django_db


def at(days_ago: int, hour: int = 12) -> datetime:
    return datetime.combine(utc_today() - timedelta(days=days_ago), datetime.min.time(), tzinfo=UTC).replace(
        hour=hour
    )


def add_usage(keys: int = 2, days: int = 3, per_day: int = 2, tag: str = "") -> dict[str, Any]:
    """`per_day` records per key and day, past `days` days and today, and a signed and a chat one a day."""
    made: dict[str, Any] = {
        "keys": [
            ApiKey.objects.create(name=f"key{tag}{n}", prefix=f"pfx{tag}{n:05d}", hashed_secret=f"h{tag}{n}")
            for n in range(keys)
        ],
        "app": AppCredential.objects.create(app_id=f"app-one{tag}", secret_ciphertext="x"),
        "user": get_user_model().objects.create_user(f"chatter{tag}"),
    }
    rows = []
    for day in range(days + 1):
        for n, key in enumerate(made["keys"]):
            for i in range(per_day):
                timings = {"time_to_first_token_ms": 20.0, "total_time_ms": 100.0}
                tokens = {"prompt_tokens": 10, "completion_tokens": n + 1}
                rows.append(
                    UsageRecord(
                        created_at=at(day), request_id=f"r{tag}{day}-{n}-{i}", source="api",
                        model_name=f"model-{n % 2}", api_key=key, **tokens, **timings,
                    )
                )  # fmt: skip
        signed = {"source": "signed", "model_name": "model-0", "app_credential": made["app"]}
        rows.append(
            UsageRecord(
                created_at=at(day), request_id=f"s{tag}{day}", prompt_tokens=1, completion_tokens=1, **signed
            )
        )
        chat = {"source": "chat", "model_name": "model-1", "user": made["user"], "status": UsageStatus.ERROR}
        rows.append(UsageRecord(created_at=at(day), request_id=f"c{tag}{day}", **chat))
    UsageRecord.objects.bulk_create(rows)
    return made


@pytest.fixture(autouse=True)
def days_final_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Yesterday is final at once, whatever the hour the tests run at."""
    monkeypatch.setattr(rollups, "FINAL_AFTER", timedelta(0))


@pytest.fixture
def staff() -> Client:
    user = get_user_model().objects.create_user("boss", password="pw-123456789", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client = Client()
    client.force_login(user)
    return client


def figures(client: Client, query: str = "") -> dict[str, Any]:
    response = client.get(f"{URL}?{query}")
    assert response.status_code == 200
    context = response.context
    return {
        "totals": {
            k: context["totals"][k] for k in ("requests", "errors", "prompt_tokens", "completion_tokens")
        },
        "chart": context["chart_data"],
        "sections": {
            s["name"]: [(r["label"], r["requests"]) for r in s["rows"]] for s in context["sections"]
        },
    }


def test_staff_sees_totals_charts_and_tops(staff):
    add_usage()
    page = staff.get(URL)
    html = page.content.decode()

    assert page.status_code == 200
    assert 'id="chart-requests-per-day"' in html
    assert "console/vendor/chart.umd.min.js" in html
    assert "cdn" not in html.lower()
    data = json.loads(html.split('id="usage-chart-data" type="application/json">')[1].split("</script>")[0])
    assert data["daily"]["days"][-1] == utc_today().isoformat()
    assert len(data["daily"]["days"]) == 30
    assert {s["label"] for s in data["daily"]["requests"]} == {"model-0", "model-1"}
    assert sum(sum(s["data"]) for s in data["daily"]["requests"]) == 4 * (2 * 2 + 2)
    got = figures(staff)
    assert got["totals"] == {
        "requests": 24,
        "errors": 4,
        "prompt_tokens": 4 * (4 * 10 + 1),
        "completion_tokens": 4 * (2 + 4 + 1),
    }
    assert got["sections"]["keys"] == [("key0 (pfx00000)", 8), ("key1 (pfx00001)", 8)]
    assert got["sections"]["apps"] == [("app-one", 4)]
    assert got["sections"]["users"] == [("chatter", 4)]
    assert got["sections"]["models"] == [("model-0", 12), ("model-1", 12)]


def test_figures_are_the_same_from_raw_records_rollup_and_after_pruning(staff):
    made = add_usage()
    raw = figures(staff)
    assert roll_up_usage().finalized == 3
    rolled = figures(staff)
    assert prune_usage(retention_days=1) == 2 * 6
    deleted_id = made["keys"][1].pk
    made["keys"][1].delete()
    pruned = figures(staff)

    assert rolled == raw
    assert pruned["totals"] == raw["totals"]
    assert pruned["chart"]["daily"] == raw["chart"]["daily"]
    assert pruned["sections"]["keys"] == [("key0 (pfx00000)", 8), (f"#{deleted_id} (deleted)", 6)]


def test_filters_narrow_every_figure(staff):
    made = add_usage()
    roll_up_usage()

    by_key = figures(staff, "key=pfx00001")
    assert by_key["totals"]["requests"] == 8
    assert by_key["sections"]["models"] == [("model-1", 8)]
    assert figures(staff, f"key=%23{made['keys'][1].pk}") == by_key
    assert figures(staff, "source=signed&app=app-one")["totals"]["requests"] == 4
    assert figures(staff, "model=model-0")["totals"]["requests"] == 12
    assert figures(staff, "user=chatter")["totals"]["errors"] == 4
    yesterday = (utc_today() - timedelta(days=1)).isoformat()
    assert figures(staff, f"start={yesterday}&end={yesterday}")["totals"]["requests"] == 6
    assert figures(staff, "rank=tokens")["chart"]["top"]["keys"]["values"] == [4 * 2 * 12, 4 * 2 * 11]


def test_bad_filters_are_named_and_nothing_is_charted(staff):
    page = staff.get(f"{URL}?key=nope&start=2024-02-01&end=2024-01-01")

    assert page.status_code == 200
    html = page.content.decode()
    assert "No API key has the prefix" in html
    assert "The start is after the end." in html
    assert "usage-chart-data" not in html
    assert staff.get(f"{URL}records.csv?key=nope").status_code == 400


@pytest.mark.parametrize("path", ["", "records.csv", "daily.csv"])
def test_only_staff_with_the_usage_permission_get_in(path):
    url = URL + path
    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    plain = Client()
    plain.force_login(get_user_model().objects.create_user("plain", is_staff=False))
    assert plain.get(url).status_code == 302
    unprivileged = Client()
    unprivileged.force_login(get_user_model().objects.create_user("staffer", is_staff=True))
    assert unprivileged.get(url).status_code == 403
    boss = Client()
    boss.force_login(get_user_model().objects.create_superuser("root", password="pw-123456789"))
    assert boss.get(url).status_code == 200


def read_csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="usage-')
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_records_csv_has_the_filtered_rows_and_defuses_formulas(staff):
    add_usage()
    UsageRecord.objects.create(
        request_id="=HYPERLINK(1)", model_name="model-0", source="api", prompt_tokens=1
    )

    rows = read_csv(staff.get(f"{URL}records.csv?model=model-0"))

    assert len(rows) == 4 * 2 + 4 + 1
    assert {row["model"] for row in rows} == {"model-0"}
    assert [row["id"] for row in rows] == sorted((row["id"] for row in rows), key=int)
    keyed = next(row for row in rows if row["request_id"] == "r1-0-0")
    assert (keyed["key_prefix"], keyed["key_name"], keyed["prompt_tokens"], keyed["status"]) == (
        "pfx00000", "key0", "10", "ok",
    )  # fmt: skip
    assert next(row for row in rows if row["source"] == "signed")["app_id"] == "app-one"
    assert any(row["request_id"] == "'=HYPERLINK(1)" for row in rows)


def test_daily_csv_has_rollup_rows_then_todays_live_ones_with_equal_totals(staff):
    add_usage()
    roll_up_usage()

    rows = read_csv(staff.get(f"{URL}daily.csv"))

    assert {row["state"] for row in rows if row["day"] != utc_today().isoformat()} == {"final"}
    assert {row["state"] for row in rows if row["day"] == utc_today().isoformat()} == {"live"}
    assert [row["day"] for row in rows] == sorted(row["day"] for row in rows)
    assert sum(int(row["requests"]) for row in rows) == UsageRecord.objects.count()
    assert sum(int(row["prompt_tokens"]) for row in rows) == 4 * 41
    keyed = next(row for row in rows if row["key_prefix"] == "pfx00001" and row["state"] == "final")
    assert (keyed["requests"], keyed["completion_tokens"], keyed["avg_ttft_ms"]) == ("2", "4", "20.0")


def test_exports_read_in_pages_of_bounded_queries(staff, monkeypatch, django_assert_max_num_queries):
    add_usage(keys=5)
    roll_up_usage()
    monkeypatch.setattr(exports, "PAGE", 7)
    records = UsageRecord.objects.count()

    with django_assert_max_num_queries(8 + records // 7 + 1):
        assert len(read_csv(staff.get(f"{URL}records.csv"))) == records


@pytest.mark.django_db(transaction=True)
async def test_exports_stream_under_asgi_one_page_at_a_time(monkeypatch):
    monkeypatch.setattr(exports, "PAGE", 5)

    def prepare() -> Any:
        add_usage()
        return get_user_model().objects.create_superuser("root", password="pw-123456789")

    user = await sync_to_async(prepare)()
    client = AsyncClient()
    await client.aforce_login(user)
    response: Any = await client.get(f"{URL}records.csv")

    assert response.is_async
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert len(list(csv.DictReader(io.StringIO(body)))) == 24


def query_count(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_page_costs_the_same_queries_at_any_volume(staff, django_assert_max_num_queries):
    add_usage(keys=1, days=1, per_day=1)
    roll_up_usage()
    small = query_count(staff, URL)
    filtered = query_count(staff, f"{URL}?key=pfx00000&app=app-one&user=chatter&model=model-0")
    add_usage(keys=40, days=20, per_day=5, tag="big")  # forty times the keys, days and records
    roll_up_usage()
    UsageRecord.objects.bulk_create(
        UsageRecord(request_id=f"today-{n}", model_name=f"model-{n}", source="api", prompt_tokens=n)
        for n in range(300)
    )  # and many groups not rolled up yet

    assert small <= 24
    with django_assert_max_num_queries(small):
        figures(staff)
    with django_assert_max_num_queries(filtered):
        figures(staff, "key=pfxbig00003&app=app-onebig&user=chatterbig&model=model-1")


def test_admin_index_and_usage_list_link_to_the_usage_page(staff):
    boss = Client()
    boss.force_login(get_user_model().objects.create_superuser("root", password="pw-123456789"))

    assert 'href="/admin/console/usage/"' in boss.get("/admin/").content.decode()
    assert 'href="/admin/console/usage/"' in boss.get("/admin/registry/usagerecord/").content.decode()


def test_rollup_days_are_listed_read_only_in_the_admin(django_assert_max_num_queries):
    add_usage(days=10)
    roll_up_usage()
    boss = Client()
    boss.force_login(get_user_model().objects.create_superuser("root", password="pw-123456789"))

    with django_assert_max_num_queries(12):
        page = boss.get("/admin/registry/usagerollupday/")
    assert page.status_code == 200
    assert page.content.decode().count('class="field-records"') == 10
    assert boss.get("/admin/registry/usagerollupday/add/").status_code == 403
