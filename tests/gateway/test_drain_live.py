"""Drain, resume and remove from the admin, on two real worker processes behind a real portal.

The drained worker finishes the answer it is streaming, takes nothing new,
reports offline, and serves again once resumed; the portal sends new requests
to the other worker meanwhile. What is checked is the workers' lifecycle and
the portal's routing, not the words: the workers serve the canned engine, at
a pace that keeps the long answer streaming while the test drains under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from registry.models import UsageRecord, Worker, WorkerIntent, WorkerStatus
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, start_portal
from tests.processes import WorkerProcess, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
MODEL = "smol"
LONG = 160  # tokens: eight seconds of streaming at 0.05 s a token, long enough to drain under it


def canned_worker() -> WorkerProcess:
    args = ["--model-path", "canned", "--backend", "canned", "--canned-token-delay", "0.05", "--model-names"]
    return start_worker(*args, MODEL, "--heartbeat-interval", "0.5", "--max-concurrency", "2")


@pytest.fixture
def fleet() -> Iterator[tuple[PortalProcess, WorkerProcess, WorkerProcess]]:
    with (
        canned_worker() as first,
        canned_worker() as second,
        start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2"}) as portal,
    ):
        yield portal, first, second


def act(action: str, worker: Worker) -> None:
    """Press the admin's action button for one worker, as staff."""
    user, _ = get_user_model().objects.get_or_create(username="root", defaults={"is_staff": True})
    user.is_superuser = user.is_staff = True
    user.save()
    admin = Client()
    admin.force_login(user)
    response = admin.post("/admin/registry/worker/", {"action": action, "_selected_action": [worker.id]})
    assert response.status_code == 302


def worker_serving(record_ids: set[int]) -> set[str]:
    return {
        identity
        for identity in UsageRecord.objects.filter(id__in=record_ids).values_list(
            "worker__identity", flat=True
        )
        if identity
    }


def test_a_drained_worker_finishes_its_stream_takes_nothing_new_and_resumes(fleet) -> None:
    portal, first, second = fleet
    _, secret = create_api_key(name="drain")
    api = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=60)
    chat: Any = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}]}
    streamed: list[str] = []
    finish: list[str | None] = []
    first_token = threading.Event()

    def stream() -> None:
        chunks = api.chat.completions.create(
            **chat, max_tokens=LONG, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        for chunk in chunks:
            if chunk.choices:
                streamed.append(chunk.choices[0].delta.content or "")
                first_token.set()
                finish.append(chunk.choices[0].finish_reason)

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_token.wait(60)
    # The worker streaming the answer says so in its next heartbeat.
    assert wait_for(lambda: Worker.objects.filter(in_flight__gt=0).exists(), timeout=10)
    busy = Worker.objects.get(in_flight__gt=0)
    other = Worker.objects.exclude(pk=busy.pk).get()
    act("drain", busy)
    drained_at = timezone.now()
    time.sleep(0.5)  # past the portal's worker cache interval

    before = set(UsageRecord.objects.values_list("id", flat=True))
    for _ in range(4):
        reply = api.chat.completions.create(**chat, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content
    reader.join(60)
    assert not reader.is_alive()
    assert finish[-1] == "length"
    assert len("".join(streamed)) > 100  # the whole answer arrived, not a cut stream
    assert wait_for(lambda: UsageRecord.objects.exclude(id__in=before).count() >= 5, timeout=10)
    new_ids = set(
        UsageRecord.objects.exclude(id__in=before)
        .filter(created_at__gte=drained_at)
        .values_list("id", flat=True)
    )
    short = set(
        UsageRecord.objects.filter(id__in=new_ids, completion_tokens__lt=LONG).values_list("id", flat=True)
    )
    assert len(short) == 4
    assert worker_serving(short) == {other.identity}
    assert UsageRecord.objects.filter(worker=busy, completion_tokens=LONG, status="ok").exists()

    # Idle now: the drained worker reports offline, keeps its process and its heartbeat.
    assert wait_for(lambda: Worker.objects.get(pk=busy.pk).status == WorkerStatus.OFFLINE, timeout=10)
    beat = Worker.objects.get(pk=busy.pk).last_heartbeat
    assert wait_for(lambda: Worker.objects.get(pk=busy.pk).last_heartbeat != beat, timeout=5)

    act("resume", busy)
    assert wait_for(lambda: Worker.objects.get(pk=busy.pk).status == WorkerStatus.ONLINE, timeout=10)
    assert Worker.objects.get(pk=busy.pk).intent == WorkerIntent.SERVE
    act("drain", other)  # now only the resumed worker may serve
    time.sleep(0.5)
    before = set(UsageRecord.objects.values_list("id", flat=True))
    assert api.chat.completions.create(**chat, max_tokens=8, temperature=0).choices[0].message.content
    assert wait_for(lambda: UsageRecord.objects.exclude(id__in=before).exists(), timeout=10)
    assert worker_serving(set(UsageRecord.objects.exclude(id__in=before).values_list("id", flat=True))) == {
        busy.identity
    }

    # Removing a running worker: it drains, exits by itself and deletes its row.
    act("remove", other)
    leaving = first if other.address == first.address else second
    assert leaving.wait(timeout=30) == 0
    assert not Worker.objects.filter(pk=other.pk).exists()
