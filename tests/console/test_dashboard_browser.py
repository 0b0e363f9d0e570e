"""The fleet dashboard and the front door in a real Chromium against a live portal.

Screenshots go to test-artifacts/console/ (git-ignored).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from fleet.models import Deployment, Instance, InstanceState, Node, ScaleAction
from fleet.services.autoscaler import record
from registry.models import UsageRecord
from registry.services.workers import WorkerRegistration, record_heartbeat, register_worker
from tests.browser import PASSWORD, Pages, log_in_to_admin, outside_the_event_loop
from tests.portal_process import PortalProcess
from tests.processes import REPO_ROOT

pytest_plugins = ["tests.browser_fixtures"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def portal(live_portal: PortalProcess) -> PortalProcess:
    """The module's portal over this test's three workers and one starting replica."""
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    for index in range(3):
        register_worker(
            registration=WorkerRegistration(
                identity=f"node{index}@http://127.0.0.1:{9100 + index}",
                address=f"http://127.0.0.1:{9100 + index}",
                model_names=("smollm2",) if index < 2 else ("minilm",),
                backend="llamacpp",
                heartbeat_interval=60,
            )
        )
    node = Node.objects.create(name="node-a", address="127.0.0.1")
    deployment = Deployment.objects.create(name="smollm2", model_path="smollm2-135m-instruct", replicas=1)
    Instance.objects.create(deployment=deployment, node=node, generation=1, state=InstanceState.STARTING)
    return live_portal


def open_dashboard(pages: Pages, base: str, *, socket_fails: bool = False):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = pages.open(1400, 800)
    if socket_fails:
        page.route_web_socket("**/ws/console/fleet/", lambda socket: socket.close())
    log_in_to_admin(page, base, "/admin/console/")
    return page, pages.errors


def test_the_dashboard_updates_live_when_a_heartbeat_arrives(portal, pages) -> None:
    page, errors = open_dashboard(pages, portal.url)
    page.wait_for_function("document.querySelector('#fleet-connection').dataset.state === 'live'")
    assert page.locator("#fleet-workers tbody tr").count() == 3
    assert "smollm2" in page.locator("#fleet-models tbody").inner_text()
    outside_the_event_loop(
        lambda: record_heartbeat(
            identity="node1@http://127.0.0.1:9101", in_flight=7, queued=2, tokens_per_second=123.4
        )
    )
    row = page.locator("tr[data-worker='node1@http://127.0.0.1:9101']")
    page.wait_for_function(
        "document.querySelector(\"tr[data-worker='node1@http://127.0.0.1:9101']\").textContent.includes('123.4')",
        timeout=10_000,
    )
    assert "7 / 1" in row.inner_text()
    replica = page.locator("#fleet-instances tbody tr")
    assert "starting" in replica.inner_text()
    assert "0 / 1" in page.locator("tr[data-deployment='smollm2']").inner_text()
    outside_the_event_loop(
        lambda: Instance.objects.update(state=InstanceState.READY, port=9100, updated_at=timezone.now())
    )
    page.wait_for_function(
        "document.querySelector(\"tr[data-deployment='smollm2']\").textContent.includes('1 / 1')",
        timeout=10_000,
    )
    assert "ready" in replica.inner_text()
    why = "3 in flight > 80% of 2 slots for 15 s"
    outside_the_event_loop(
        lambda: record(Deployment.objects.get(name="smollm2"), ScaleAction.UP, 2, why, timezone.now())
    )
    page.wait_for_function(
        f"document.querySelector('#fleet-events tbody').textContent.includes('{why}')", timeout=10_000
    )
    assert "1 → 2" in page.locator("#fleet-events tr[data-deployment='smollm2']").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    assert errors == []


def test_the_dashboard_polls_when_the_websocket_fails(portal, pages) -> None:
    page, errors = open_dashboard(pages, portal.url, socket_fails=True)
    page.wait_for_function("document.querySelector('#fleet-connection').dataset.state === 'polling'")
    outside_the_event_loop(
        lambda: record_heartbeat(
            identity="node0@http://127.0.0.1:9100", in_flight=1, queued=0, tokens_per_second=77.7
        )
    )
    page.wait_for_function(
        "document.querySelector(\"tr[data-worker='node0@http://127.0.0.1:9100']\").textContent.includes('77.7')",
        timeout=15_000,
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-polling.png"), full_page=True)
    assert errors == []


def test_the_front_door_lists_the_models_online_and_the_admin_is_branded(portal, pages) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    icons: list[int] = []
    for width, height in ((1400, 900), (390, 844)):
        page = pages.open(width, height)
        page.on("response", lambda r: icons.append(r.status) if "favicon" in r.url else None)
        page.goto(portal.url + "/")
        models = page.locator("#front-models tbody")
        assert "smollm2" in models.inner_text()
        assert "minilm" in models.inner_text()
        assert page.locator("#go-console").count() == 0  # a visitor sees no console link
        assert f'base_url="{portal.url}/v1"' in page.locator("#front-snippet").inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing runs off the side
        page.screenshot(path=str(ARTIFACTS / f"front-{width}.png"), full_page=True)
    log_in_to_admin(page, portal.url, "/admin/")
    assert page.locator("#site-name").inner_text() == "Model portal"
    assert page.title() == "Console | Model portal"
    page.click("text=View site")
    page.wait_for_url(portal.url + "/")
    page.click("#go-console")
    page.wait_for_url(portal.url + "/admin/")
    assert icons
    assert set(icons) == {200}


def test_the_dashboard_shows_failures_apart_and_the_last_hour(portal, pages) -> None:
    def traffic() -> None:
        now = timezone.now()
        for index, code in enumerate((200, 200, 400, 429, 499, 502)):
            UsageRecord.objects.create(
                request_id=f"b{index}",
                model_name="smollm2",
                status_code=code,
                time_to_first_token_ms=150.0 + index,
                total_time_ms=900.0,
                created_at=now - timedelta(seconds=10 + index),
            )

    outside_the_event_loop(traffic)
    for width, height in ((1400, 900), (390, 844)):
        page = pages.open(width, height)
        log_in_to_admin(page, portal.url, "/admin/console/")
        row = page.locator("#fleet-models tr[data-model='smollm2']")
        assert row.locator(".fleet-error-rate").inner_text() == "17%"  # the 502 alone
        assert row.locator(".fleet-apart").inner_text() == "1 · 1 · 1"
        card = page.locator(".fleet-trend[data-model='smollm2']")
        assert card.get_attribute("data-requests") == "6"
        assert page.locator(".fleet-trend[data-model='minilm'] .fleet-trend-idle").is_visible()
        canvases = card.locator("canvas")
        assert canvases.count() == 2
        assert canvases.first.evaluate("canvas => Chart.getChart(canvas).data.datasets[0].data.length") == 60
        page.screenshot(path=str(ARTIFACTS / f"dashboard-figures-{width}.png"), full_page=True)


def test_a_new_keys_secret_shows_in_monospace_with_a_copy_button(portal, pages) -> None:
    for width, height in ((1400, 900), (390, 844)):
        page = pages.open(width, height)
        log_in_to_admin(page, portal.url, "/admin/registry/apikey/add/")
        assert page.locator("#id_all_models").is_checked()
        assert page.locator("#id_revoked_at_0").count() == 0
        page.fill("#id_name", f"laptop-{width}")
        page.click("input[name=_save]")
        secret = page.locator("#key-secret")
        assert secret.inner_text().startswith("sk-")
        assert "monospace" in secret.evaluate("element => getComputedStyle(element).fontFamily")
        page.click(".key-copy")
        page.wait_for_function("document.querySelector('.key-copy').textContent !== 'Copy'", timeout=5_000)
        assert page.locator(".key-copy").inner_text() in ("Copied", "Selected: press Ctrl+C")
        assert "All models" in page.locator("#result_list").inner_text()
        page.screenshot(path=str(ARTIFACTS / f"key-added-{width}.png"), full_page=True)


def test_a_workers_page_shows_its_figures_by_section_and_drains_from_a_button(portal, pages) -> None:
    for width, height in ((1400, 900), (390, 844)):
        page = pages.open(width, height)
        log_in_to_admin(page, portal.url, "/admin/registry/worker/")
        page.click("text=node2@http://127.0.0.1:9102")
        page.locator("#worker-drain").wait_for()
        sections = page.locator("fieldset h2").all_inner_texts()
        assert sections[:4] == ["Serving", "Now", "Capacity", "Process"]
        assert "minilm" in page.locator("fieldset").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / f"worker-page-{width}.png"), full_page=True)
    page.click("#worker-drain")
    page.wait_for_url(portal.url + "/admin/registry/worker/")
    assert "1 worker(s) draining" in page.locator(".messagelist").inner_text()
