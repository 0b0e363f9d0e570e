"""The chat websocket against real canned workers: streaming, stop, a dying worker, the arena.

The canned engine (a named fake, `inference/engines/canned.py`) streams one word per
token at a fixed pace, which makes "tokens arrive before the end" and "stop cancels
the worker" measurable; the browser test covers the real SmolLM2 model.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx2
import pytest

from portal.chat.models import AnswerStatus, ArenaBattle, Message
from tests.chat.conftest import receive_until
from tests.processes import WorkerProcess, start_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def canned(name: str, delay: str) -> WorkerProcess:
    args = ["--model-path", "canned", "--backend", "canned", "--heartbeat-interval", "1"]
    return start_worker(*args, "--model-names", name, "--canned-token-delay", delay)


@pytest.fixture
def worker(transactional_db: None) -> Iterator[WorkerProcess]:
    with canned("canned", "0.05") as process:
        yield process


async def worker_in_flight(worker: WorkerProcess) -> int:
    async with httpx2.AsyncClient() as client:
        status = (await client.get(f"{worker.address}/status", timeout=5)).json()
    return int(status["in_flight"])


def send(model: str, content: str, max_tokens: int, **extra: object) -> dict:
    params = {"max_tokens": max_tokens, "temperature": 0}
    return {"type": "chat.send", "model": model, "content": content, "params": params, **extra}


async def test_tokens_stream_one_by_one_and_the_answer_is_saved_with_figures(worker, connect):
    socket = await connect()
    assert (await socket.receive_json_from(timeout=5))["models"] == ["canned"]
    await socket.send_json_to(send("canned", "Say something", 8))
    messages = await receive_until(socket, "chat.done")
    tokens = [m["text"] for m in messages if m["type"] == "chat.token"]
    assert len(tokens) >= 4
    answer = messages[-1]["message"]
    assert answer["content"] == "".join(tokens)
    assert answer["status"] == AnswerStatus.COMPLETE
    assert answer["completion_tokens"] == 8
    assert answer["time_to_first_token_ms"] > 0
    assert answer["tokens_per_second"] > 0
    assert answer["worker_identity"]
    stored = await Message.objects.aget(role="assistant")
    assert (stored.content, stored.completion_tokens) == (answer["content"], 8)
    # A second turn continues the same conversation.
    await socket.send_json_to(send("canned", "More", 3, conversation_id=messages[0]["conversation_id"]))
    await receive_until(socket, "chat.done")
    assert await Message.objects.filter(conversation_id=messages[0]["conversation_id"]).acount() == 4


async def test_stop_aborts_on_the_worker_and_keeps_the_partial_answer(worker, connect):
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to(send("canned", "Talk for long", 400))
    await receive_until(socket, "chat.token")
    await receive_until(socket, "chat.token")
    assert await worker_in_flight(worker) == 1
    await socket.send_json_to({"type": "chat.stop"})
    messages = await receive_until(socket, "chat.done", timeout=5)
    answer = messages[-1]["message"]
    assert answer["status"] == AnswerStatus.STOPPED
    assert answer["content"]
    assert answer["completion_tokens"] < 400
    for _ in range(50):
        if await worker_in_flight(worker) == 0:
            break
        await asyncio.sleep(0.1)
    assert await worker_in_flight(worker) == 0
    stored = await Message.objects.aget(role="assistant")
    assert (stored.status, stored.content) == (AnswerStatus.STOPPED, answer["content"])


async def test_worker_dying_mid_answer_shows_a_retryable_error_and_keeps_the_text(worker, connect):
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to(send("canned", "Talk for long", 400))
    await receive_until(socket, "chat.token")
    worker.stop(signal.SIGKILL)
    answer = (await receive_until(socket, "chat.done", timeout=15))[-1]["message"]
    assert (answer["status"], answer["retryable"]) == (AnswerStatus.ERROR, True)
    assert answer["content"]
    assert answer["error"]


async def test_arena_streams_both_sides_at_once_and_hides_names_until_the_vote(transactional_db, connect):
    with canned("fast-model", "0.02"), canned("slow-model", "0.05"):
        socket = await connect()
        assert (await socket.receive_json_from(timeout=5))["models"] == ["fast-model", "slow-model"]
        params = {"max_tokens": 10}
        await socket.send_json_to({"type": "arena.send", "prompt": "Hi", "anonymous": True, "params": params})
        messages = await receive_until(socket, "arena.finished")
        started = messages[0]
        assert (started["type"], started["model_a"], started["model_b"]) == ("arena.started", None, None)
        sides = [m["side"] for m in messages if m["type"] == "arena.token"]
        # Interleaved sides: both answers stream at the same time, not one after the other.
        assert sides.index("b") < len(sides) - 1 - sides[::-1].index("a")
        done = [m for m in messages if m["type"] == "arena.done"]
        assert {d["side"] for d in done} == {"a", "b"}
        assert all(d["model_name"] is None and d["completion_tokens"] == 10 for d in done)
        await socket.send_json_to({"type": "arena.vote", "battle_id": started["battle_id"], "choice": "tie"})
        revealed = await socket.receive_json_from(timeout=5)
        assert {revealed["model_a"], revealed["model_b"]} == {"fast-model", "slow-model"}
        battle = await ArenaBattle.objects.aget(pk=started["battle_id"])
        assert battle.answer_a
        assert battle.answer_b
