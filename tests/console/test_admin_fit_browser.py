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
        available_memory_bytes=400 * 2**30, gpus=[{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 * 2**30}] * 2,
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
