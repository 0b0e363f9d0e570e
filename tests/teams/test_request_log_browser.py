"""The request log end to end in Chromium: a team switches it on, a streamed chat goes through a real
portal to a canned worker (the model does not matter here), and the admin shows the warning, the
dashboard the team's group, and the request log's search the request and its assembled answer."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from django.contrib.auth import get_user_model

from registry.models import RequestLog
from registry.services.keys import create_api_key
from teams.models import Team
from tests.browser import PASSWORD, Pages, log_in_to_admin, outside_the_event_loop
from tests.portal_process import PortalProcess
from tests.processes import start_worker, wait_for

pytest_plugins = ["tests.browser_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PROMPT = "Where did the heron go?"


def streamed_answer(portal: PortalProcess, secret: str) -> str:
    api = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=20)
    chunks = api.chat.completions.create(
        model="canned", messages=[{"role": "user", "content": PROMPT}], max_tokens=6, stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


@pytest.fixture
def logged(live_portal: PortalProcess) -> dict[str, Any]:
    """A team whose request log is on, and one streamed chat of its key, logged."""
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    team = Team.objects.create(name="herons", log_requests=True, request_log_days=5)
    _, secret = create_api_key(name="heron-key", team=team)
    base = ["--model-path", "canned", "--backend", "canned", "--model-names", "canned"]
    with start_worker(*base, "--heartbeat-interval", "1"):
        answer = streamed_answer(live_portal, secret)
    assert answer
    assert wait_for(lambda: RequestLog.objects.exists(), timeout=15), live_portal.output()
    log = RequestLog.objects.select_related("usage_record").get()
    assert log.response_text == answer
    assert secret not in log.request_body
    return {"team": team.pk, "answer": answer, "request_id": log.usage_record.request_id}


def test_a_teams_log_is_warned_about_shown_and_searchable(
    live_portal: PortalProcess, logged: dict[str, Any], pages: Pages
) -> None:
    answer, request_id = logged["answer"], logged["request_id"]
    page: Any = pages.open(1400, 900)
    log_in_to_admin(page, live_portal.url, f"/admin/teams/team/{logged['team']}/change/")
    warning = page.locator(".messagelist .warning").inner_text()
    assert "request log of this team is on" in warning
    assert "5 day(s)" in warning

    page.goto(f"{live_portal.url}/admin/console/")
    row = page.locator('#fleet-teams tr[data-team="herons"]')
    row.wait_for()
    assert "⚠ on, 5 day(s)" in row.inner_text()
    assert row.locator("td").nth(1).inner_text() == "1"  # its one request today

    page.goto(f"{live_portal.url}/admin/console/usage/")
    page.click("#request-log")
    page.fill("#id_q", answer.split()[-1])
    page.click("#log-search input[type=submit]")
    result = page.locator(f'#log-results tr[data-request="{request_id}"]')
    result.wait_for()
    result.locator("summary").click()
    assert PROMPT in result.locator(".log-request").inner_text()
    assert result.locator(".log-response").inner_text() == answer
    assert outside_the_event_loop(lambda: RequestLog.objects.count()) == 1
