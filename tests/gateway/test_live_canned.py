"""The gateway end to end: a real daphne portal in front of real canned workers.

The canned engine (a named fake, `inference/engines/canned.py`) makes timing
and load predictable; the OpenAI client talks to the portal as any user would.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from registry.models import ServedModel, UsageRecord, Worker
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, start_portal
from tests.processes import WorkerProcess, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
FAST = {"WORKER_CACHE_SECONDS": "0.2", "GATEWAY_READ_TIMEOUT": "3", "API_KEY_CACHE_SECONDS": "0.5"}


def canned(name: str, *extra: str) -> WorkerProcess:
    base = ["--model-path", "canned", "--backend", "canned", "--heartbeat-interval", "1"]
    return start_worker(*base, "--model-names", name, *extra)


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    with start_portal(extra_env=FAST) as process:
        yield process
        print(process.output())


def client(portal: PortalProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=20)


def test_each_client_error_has_its_status_and_openai_body(portal):
    with canned("canned", "--max-concurrency", "2"), canned("slow", "--canned-token-delay", "1"):
        ServedModel.objects.create(name="nobody-serves-me")
        other = ServedModel.objects.create(name="other")
        _, secret = create_api_key(name="good")
        _, limited = create_api_key(name="limited", requests_per_minute=1)
        _, restricted = create_api_key(name="restricted", model_names=[other.name])
        api = client(portal, secret)
        chat: Any = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert api.chat.completions.create(model="canned", **chat).choices[0].message.content
        cases = [
            (client(portal, "sk-wrong-key"), "canned", openai.AuthenticationError, 401),
            (client(portal, restricted), "canned", openai.PermissionDeniedError, 403),
            (api, "no-such-model", openai.NotFoundError, 404),
            (api, "nobody-serves-me", openai.InternalServerError, 503),
            (api, "slow", openai.APIStatusError, 504),
        ]
        for api_client, model, error, status in cases:
            with pytest.raises(error) as info:
                api_client.chat.completions.create(model=model, **{**chat, "max_tokens": 10})
            assert info.value.status_code == status
            body: Any = info.value.body
            assert set(body) >= {"message", "type", "param", "code"}
        with pytest.raises(openai.BadRequestError) as bad:
            api.chat.completions.create(model="canned", **{**chat, "temperature": 5})
        assert bad.value.body["param"] == "temperature"  # type: ignore[index]
        client(portal, limited).chat.completions.create(model="canned", **chat)
        with pytest.raises(openai.RateLimitError):
            client(portal, limited).chat.completions.create(model="canned", **chat)
        huge = httpx2.post(
            f"{portal.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            content=b'{"model": "canned", "x": "' + b"a" * (5 * 1024 * 1024) + b'"}',
            timeout=20,
        )
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "request_too_large"


async def _stream_once(api: openai.AsyncOpenAI) -> str:
    stream = await api.chat.completions.create(
        model="pair", messages=[{"role": "user", "content": "x"}], max_tokens=5, stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def test_two_workers_share_load_and_a_killed_one_is_failed_over(portal):
    with (
        canned("pair", "--canned-token-delay", "0.05") as a,
        canned("pair", "--canned-token-delay", "0.05") as b,
    ):
        _, secret = create_api_key(name="k")

        async def burst(n: int) -> list[str]:
            api = openai.AsyncOpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=20)
            async with api:
                return await asyncio.gather(*[_stream_once(api) for _ in range(n)])

        assert all(asyncio.run(burst(8)))
        assert wait_for(lambda: UsageRecord.objects.count() >= 8, timeout=5)
        spread = Counter(UsageRecord.objects.values_list("worker_id", flat=True))
        assert len(spread) == 2, spread
        assert min(spread.values()) >= 2, spread

        survivor = Worker.objects.get(address=b.address).id
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        started = time.monotonic()
        for _ in range(6):
            assert asyncio.run(burst(1))[0]
        assert time.monotonic() - started < 15
        assert wait_for(lambda: UsageRecord.objects.count() >= 14, timeout=5)
        recent = list(UsageRecord.objects.order_by("-id")[:6])
        assert {r.worker_id for r in recent} == {survivor}
        assert {r.status for r in recent} == {"ok"}


def test_client_disconnect_mid_stream_aborts_on_the_worker(portal):
    with canned("long", "--canned-token-delay", "0.05") as worker:
        _, secret = create_api_key(name="k")
        body = {
            "model": "long",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 400,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx2.stream(
            "POST", f"{portal.url}/v1/chat/completions", json=body, headers=headers, timeout=10
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            busy = httpx2.get(f"{worker.address}/status", timeout=5).json()
            assert busy["in_flight"] == 1
        # The connection is closed: the portal must abort the generation on the worker.
        assert wait_for(lambda: httpx2.get(f"{worker.address}/status", timeout=5).json()["in_flight"] == 0, 5)
        assert wait_for(lambda: UsageRecord.objects.filter(status="cancelled").exists(), timeout=5)
