"""The admin's lists and the deployment form in a real Chromium, at 1280 px and at phone width.

Every list the console links to fits a 1280×800 screen with realistic rows
(long identities, several models, every limit set): its table is no wider
than its box. The deployment form shows the nodes' catalogue as a picker and
takes labels as rows; deleting a deployment asks what becomes of its served
model. Screenshots go to test-artifacts/console/ (git-ignored).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from audit.models import AuditEntry
from fleet.models import Deployment, Instance, InstanceState, Node
from registry.models import ApiKey, AppCredential, ServedModel, UsageRecord, UsageStatus, Worker
from registry.services.workers import WorkerRegistration, record_heartbeat, register_worker
from teams.models import Team
from tests.browser import PASSWORD, Pages, log_in_to_admin, outside_the_event_loop
from tests.portal_process import PortalProcess
from tests.processes import REPO_ROOT

pytest_plugins = ["tests.browser_fixtures"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
LISTS = (
    "registry/worker", "registry/servedmodel", "registry/apikey", "registry/appcredential",
    "registry/usagerecord", "fleet/node", "fleet/deployment", "teams/team",
    "audit/auditentry", "auth/user",
)  # fmt: skip
MODELS = ("smollm2-135m-instruct", "all-minilm-l6-v2", "qwen2.5-coder-7b-instruct-q4_k_m")


@pytest.fixture
def portal(live_portal: PortalProcess) -> PortalProcess:
    """The module's portal over a fleet as an operator's looks: long names, every column filled."""
    root = get_user_model().objects.create_superuser("root", password=PASSWORD)
    team = Team.objects.create(name="research-and-development")
    for model in MODELS:
        ServedModel.objects.create(name=model, input_price_per_million=Decimal("0.15"))
    for index in range(4):
        address = f"http://10.20.30.{40 + index}:{8100 + index}"
        register_worker(
            registration=WorkerRegistration(
                identity=f"qwen2.5-coder-7b-instruct/{index}@gpu-node-{index:02d}.example.internal",
                address=address, model_names=MODELS, backend="llamacpp", device="cuda:0",
                build="llama.cpp native avx512 cuda 12.4", role="prefill", heartbeat_interval=60,
            )
        )  # fmt: skip
    for worker in Worker.objects.all():
        record_heartbeat(identity=worker.identity, in_flight=12, queued=3, tokens_per_second=1234.5)
    Worker.objects.update(kv_cache_usage=0.375, memory_bytes=7 * 2**30)
    soon = timezone.now() + timedelta(days=90)
    for index in range(4):
        ApiKey.objects.create(
            name=f"nightly batch summarisation of support tickets {index}", prefix=f"k{index:07d}",
            hashed_secret=f"h{index}", owner=root, team=team, requests_per_minute=600,
            tokens_per_minute=200_000, max_in_flight=16, last_used_at=timezone.now(), expires_at=soon,
        )  # fmt: skip
        AppCredential.objects.create(app_id=f"billing-reconciliation-service-{index}", name="billing service")
    key = ApiKey.objects.first()
    UsageRecord.objects.bulk_create(
        UsageRecord(
            request_id=f"chatcmpl-{index:032d}", source="api", model_name=MODELS[index % 3],
            worker=Worker.objects.first(), api_key=key, prompt_tokens=1234, completion_tokens=567,
            time_to_first_token_ms=123.4, total_time_ms=4567.8, status=UsageStatus.OK, status_code=200,
        )
        for index in range(6)
    )  # fmt: skip
    node = Node.objects.create(
        name="gpu-node-01.example.internal", address="10.20.30.41", cpus=64, memory_bytes=512 * 2**30,
        available_memory_bytes=200 * 2**30, gpus=[{"name": "H100", "memory_bytes": 80 * 2**30}] * 2,
        labels={"zone": "eu-west-1a", "gpu": "h100"},
        catalogue=[
            {"path": "smollm2-135m-instruct", "bytes": 98 * 2**20},
            {"path": "/srv/models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf", "bytes": 4_683_073_536},
            {"path": "/srv/models/Meta-Llama-3.1-70B-Instruct", "bytes": 141 * 2**30},
        ],
        expires_at=timezone.now() + timedelta(minutes=5),
    )  # fmt: skip
    deployment = Deployment.objects.create(
        name="qwen2.5-coder-7b-instruct", model_path="/srv/models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf",
        model_names="qwen2.5-coder-7b-instruct", replicas=2, min_replicas=1, max_replicas=4,
        pending_reason="1 replica(s) pending: no node with 9.5 GiB free",
    )  # fmt: skip
    Instance.objects.create(deployment=deployment, node=node, generation=1, state=InstanceState.READY)
    for index in range(4):
        AuditEntry.objects.create(
            actor=root, actor_name="root", source="admin", action="change", object_type="registry.apikey",
            object_id=str(index), object_repr=f"nightly batch summarisation of support tickets {index}",
        )  # fmt: skip
    return live_portal


def test_every_admin_list_fits_1280_pixels(portal, pages: Pages) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = pages.open(1280, 800)
    log_in_to_admin(page, portal.url, "/admin/")
    overflowing = {}
    for path in LISTS:
        page.goto(f"{portal.url}/admin/{path}/")
        table = page.locator("#result_list")
        assert table.count() == 1, path
        assert table.locator("tbody tr").count() >= 1, path
        widths = table.evaluate(
            "t => ({table: t.scrollWidth, box: t.closest('.results').clientWidth,"
            " page: document.documentElement.scrollWidth})"
        )
        if widths["table"] > widths["box"] or widths["page"] > 1280:
            overflowing[path] = widths
        page.screenshot(path=str(ARTIFACTS / f"admin-list-{path.replace('/', '-')}-1280.png"))
    assert overflowing == {}


QWEN = "/srv/models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"


def deploy_from_the_catalogue(page: Any, base: str, width: int) -> None:
    """Pick Qwen in the picker, give two labels as rows, save; the deployment holds them."""
    page.goto(f"{base}/admin/fleet/deployment/add/")
    picker = page.locator("#id_model_path_catalogue")
    assert picker.is_visible()
    assert picker.locator("tbody tr").count() == 3
    qwen = picker.locator(f"tr[data-path='{QWEN}']")
    assert qwen.locator("td").nth(1).inner_text() == "GGUF"
    assert qwen.locator("td").nth(5).inner_text() == "yes: gpu-node-01.example.internal"
    llama = picker.locator("tr[data-path='/srv/models/Meta-Llama-3.1-70B-Instruct']")
    assert llama.locator("td").nth(5).inner_text() == "no node has 282.8 GiB free"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    qwen.locator("button.catalogue-use").click()
    assert page.input_value("#id_model_path") == QWEN
    assert "chosen" in (qwen.get_attribute("class") or "")
    page.fill("#id_name", f"qwen-{width}")
    page.locator("input[name=required_labels_key]").nth(0).fill("zone")
    page.locator("input[name=required_labels_value]").nth(0).fill("eu-west-1a")
    page.click(".labels-add")
    page.locator("input[name=required_labels_key]").nth(1).fill("gpu")
    page.locator("input[name=required_labels_value]").nth(1).fill("h100")
    page.screenshot(path=str(ARTIFACTS / f"deployment-add-{width}.png"), full_page=True)
    page.click("input[name=_save]")
    page.wait_for_url(f"{base}/admin/fleet/deployment/")
    saved = outside_the_event_loop(lambda: Deployment.objects.get(name=f"qwen-{width}"))
    assert (saved.model_path, saved.required_labels) == (QWEN, {"zone": "eu-west-1a", "gpu": "h100"})


def delete_a_stopped_deployment(page: Any, base: str) -> None:
    """The confirmation asks what becomes of the served model; the default disables it."""

    def stopped() -> int:
        ServedModel.objects.create(name="old-model")
        return Deployment.objects.create(name="old-model", model_path="canned", replicas=0).pk

    pk = outside_the_event_loop(stopped)
    page.goto(f"{base}/admin/fleet/deployment/{pk}/delete/")
    assert "Its served model: old-model" in page.locator("#served-fate").inner_text()
    assert page.locator("input[name=served_models][value=disable]").is_checked()
    page.screenshot(path=str(ARTIFACTS / "deployment-delete-asks.png"), full_page=True)
    page.click("#content form input[type=submit]")
    page.wait_for_url(f"{base}/admin/fleet/deployment/")
    assert "“old-model” disabled" in page.locator(".messagelist").inner_text()
    assert not outside_the_event_loop(lambda: ServedModel.objects.get(name="old-model").enabled)


def test_deploying_from_the_catalogue_and_deleting_at_desktop_and_phone_width(portal, pages: Pages) -> None:
    """One test: the portal caches content types, which the database flush between tests renumbers."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        page = pages.open(width, height)
        log_in_to_admin(page, portal.url, "/admin/")
        deploy_from_the_catalogue(page, portal.url, width)
    delete_a_stopped_deployment(page, portal.url)
