"""A llama.cpp worker (`runworker --backend llamacpp`) serving the packaged SmolLM2, through the openai SDK.

What the engine does is checked in tests/inference/test_llamacpp_engine.py;
here the same worker HTTP app runs over it: chat and completions, streams,
tools, seeded n, logprobs, structured outputs, and the refusals of what
llama.cpp cannot do (beam search, prompt logprobs), each a 400 naming its field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest

from inference.engines import llamacpp_build
from portal import env
from tests.processes import WorkerProcess, start_worker
from tests.worker.live import client
from tests.worker.test_parameters_live import ASK_WEATHER, TIME, WEATHER

pytest.importorskip("xllamacpp")
pytestmark = pytest.mark.slow
QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llama() -> Iterator[WorkerProcess]:
    with start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--backend", "llamacpp",
        "--max-concurrency", "4", "--no-register", timeout=300,
    ) as worker:  # fmt: skip
        yield worker


def test_the_worker_says_which_engine_serves_and_answers_paris(llama: WorkerProcess) -> None:
    native = llamacpp_build.loads_native(env.LLAMACPP_BUILD_DIR, env.LLAMACPP_NATIVE)
    build = "native" if native else "portable"
    assert re.search(
        rf"Engine: llamacpp on cpu \(llama\.cpp {build} \w+, SmolLM2-135M-Instruct", llama.output
    )
    answer = client(llama).chat.completions.create(
        model="smol", messages=QUESTION, temperature=0, max_tokens=24
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


def test_a_stream_ends_with_usage_and_completions_follow_the_prompt(llama: WorkerProcess) -> None:
    stream = client(llama).chat.completions.create(
        model="smol",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None
    completion = client(llama).completions.create(
        model="smol", prompt="The capital of France is", temperature=0, max_tokens=4
    )
    assert "Paris" in completion.choices[0].text


def test_a_named_tool_call_follows_its_schema(llama: WorkerProcess) -> None:
    answer = client(llama).chat.completions.create(
        model="smol",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0.7,
        seed=7,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather"]  # type: ignore[union-attr]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])  # type: ignore[union-attr]


def test_seeded_choices_differ_from_each_other_and_a_seeded_request_repeats(llama: WorkerProcess) -> None:
    def ask(n: int) -> list[str]:
        answer = client(llama).chat.completions.create(
            model="smol", messages=QUESTION, max_tokens=12, n=n, seed=11, temperature=1.0
        )
        return [choice.message.content or "" for choice in answer.choices]

    assert len(set(ask(3))) > 1  # choice i samples with seed + i
    # Alone, a seeded request repeats. Its n choices run side by side, and llama.cpp's sums depend
    # on what shares the batch (when each choice's prompt went in): they need not repeat to the bit.
    alone = ask(1)
    assert ask(1) == alone


def test_logprobs_and_a_json_schema(llama: WorkerProcess) -> None:
    answer = client(llama).chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(entry.top_logprobs) == 3 and entry.logprob <= 0 for entry in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy took the most likely
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    }
    structured = client(llama).chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    jsonschema.validate(json.loads(structured.choices[0].message.content or ""), schema)


def test_the_worker_never_loads_torch(llama: WorkerProcess) -> None:
    """Its tokenizer, chat template and grammars are read without transformers: some 250 MiB less."""
    body = {"model": "smol", "messages": QUESTION, "max_tokens": 16, "logprobs": True, "top_logprobs": 2}
    body["response_format"] = {"type": "json_object"}
    answer = httpx2.post(f"{llama.address}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert "libtorch" not in Path(f"/proc/{llama.proc.pid}/maps").read_text()


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"response_format": {"type": "json_object"}}, lambda text: isinstance(json.loads(text), dict)),
        ({"guided_regex": "[A-Z][a-z]+ [0-9]{2}"}, lambda text: re.fullmatch("[A-Z][a-z]+ [0-9]{2}", text)),
        ({"guided_choice": ["Paris", "Rome"]}, lambda text: text in ("Paris", "Rome")),
        (
            {"guided_grammar": 'root ::= "It is " ("Paris" | "Rome") "."'},
            lambda text: text.startswith("It is "),
        ),
    ],
)
def test_each_structured_output_is_followed_on_the_build_the_worker_loaded(
    llama: WorkerProcess, extra: dict[str, Any], check: Any
) -> None:
    body = {"model": "smol", "messages": QUESTION, "max_tokens": 40, "temperature": 0.7, "seed": 3, **extra}
    answer = httpx2.post(f"{llama.address}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    text = answer.json()["choices"][0]["message"]["content"]
    assert check(text), text


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (
            "chat/completions",
            {"use_beam_search": True, "n": 2, "best_of": 2, "temperature": 0},
            "use_beam_search",
        ),
        ("completions", {"echo": True, "logprobs": 1}, "echo"),
    ],
)
def test_what_llama_cpp_cannot_do_is_refused_by_name(
    llama: WorkerProcess, path: str, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "smol", "max_tokens": 4, **extra}
    body |= {"messages": QUESTION} if path == "chat/completions" else {"prompt": "The capital of France is"}
    refused = httpx2.post(f"{llama.address}/v1/{path}", json=body, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == param


def test_an_embedding_model_served_by_llama_cpp_returns_unit_vectors() -> None:
    with start_worker(
        "--model-path", "all-minilm-l6-v2", "--model-names", "mini", "--backend", "llamacpp",
        "--no-register", timeout=300,
    ) as worker:  # fmt: skip
        assert re.search(r"Engine: llamacpp on cpu \(llama\.cpp \w+ \w+, model-", worker.output)
        answer = client(worker).embeddings.create(model="mini", input=["A cat sleeps.", "A kitten naps."])
        vectors = [item.embedding for item in answer.data]
        assert [len(v) for v in vectors] == [384, 384]
        assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)
        assert sum(a * b for a, b in zip(*vectors, strict=True)) > 0.5  # similar sentences
        refused = httpx2.post(
            f"{worker.address}/v1/chat/completions", json={"model": "mini", "messages": QUESTION}, timeout=30
        )
        assert refused.status_code == 400
