"""The official OpenAI client against a live portal and live SmolLM2 / MiniLM workers."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from registry.models import UsageRecord
from registry.services.keys import create_api_key
from tests.portal_process import start_portal
from tests.processes import start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
HELLO: Any = [{"role": "user", "content": "Say hello in one short sentence."}]


async def _async_calls(base_url: str, secret: str) -> tuple[str, str, Any]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=120) as api:
        answer = await api.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=12)
        stream = await api.chat.completions.create(
            model="smollm2",
            messages=HELLO,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        return answer.choices[0].message.content or "", text, usage


def test_openai_client_chats_and_completes_with_smollm2():
    worker = start_worker("--model-path", "smollm2-135m-instruct", "--model-names", "smollm2", timeout=240)
    with worker, start_portal() as portal:
        _, secret = create_api_key(name="live")
        api = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=120)
        assert "smollm2" in [m.id for m in api.models.list()]
        reply = api.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=12, temperature=0)
        assert reply.choices[0].message.content
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0
        two = api.chat.completions.create(
            model="smollm2", messages=HELLO, max_tokens=4, n=2, extra_body={"top_k": 20}
        )
        assert len(two.choices) == 2
        text = api.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5)
        assert text.choices[0].text
        chunks = api.completions.create(model="smollm2", prompt="Once upon", max_tokens=5, stream=True)
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        sync_answer, streamed, usage = asyncio.run(_async_calls(f"{portal.url}/v1", secret))
        assert sync_answer
        assert streamed
        assert usage is not None
        assert usage.completion_tokens > 0
        assert wait_for(lambda: UsageRecord.objects.filter(status="ok").count() >= 6, timeout=10)


def test_openai_client_embeds_with_minilm():
    worker = start_worker("--model-path", "all-minilm-l6-v2", "--model-names", "minilm", timeout=240)
    with worker, start_portal() as portal:
        _, secret = create_api_key(name="live")
        api = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=120)
        result = api.embeddings.create(model="minilm", input=["a cat", "a dog"])
        assert [len(d.embedding) for d in result.data] == [384, 384]
        assert result.usage.prompt_tokens > 0
        with pytest.raises(openai.BadRequestError):
            api.chat.completions.create(model="minilm", messages=HELLO)
