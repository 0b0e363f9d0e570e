"""What scoring harnesses (lm-evaluation-harness) ask of a real SmolLM2 worker, in float32.

Every billed token has its logprob, the EOS that ends an answer included,
echoed or not, streamed or not; token-id prompts echo; several prompts in
one request answer as they do alone; `max_tokens: 0` with echo scores the
prompt alone; `logprobs: 0` lists the chosen token.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from transformers import AutoTokenizer

from inference.loading import resolve_model
from portal import env
from tests.processes import WorkerProcess

pytestmark = pytest.mark.slow
# The model answers "OK." and ends its turn: the next token is its EOS, <|im_end|>.
ENDS = "<|im_start|>user\nSay OK.<|im_end|>\n<|im_start|>assistant\nOK."
MONTH = "Which month comes after January?\nAnswer: March"
EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(
        resolve_model("smollm2-135m-instruct", cache_dir=env.MODEL_CACHE_DIR).path
    )


def complete(worker: WorkerProcess, path: str = "/v1/completions", **body: Any) -> dict[str, Any]:
    """The answer, or a streamed answer folded into one: each choice's text and logprobs joined."""
    payload = {"model": "smol", "temperature": 0, **body}
    response = httpx2.post(f"{worker.address}{path}", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        return response.json()
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for block in response.text.split("\n\n")[:-2]:  # the last is [DONE]
        chunk = json.loads(block.removeprefix("data: "))
        usage = chunk.get("usage") or usage
        for part in chunk["choices"]:
            _fold(choices.setdefault(part["index"], {"index": part["index"]}), part)
    return {"choices": [choices[i] for i in sorted(choices)], "usage": usage}


def _fold(choice: dict[str, Any], part: dict[str, Any]) -> None:
    if "delta" in part:
        choice["text"] = choice.get("text", "") + (part["delta"].get("content") or "")
    else:
        choice["text"] = choice.get("text", "") + part["text"]
    choice["finish_reason"] = part["finish_reason"] or choice.get("finish_reason")
    logprobs = part.get("logprobs")
    if logprobs:
        merged = choice.setdefault("logprobs", {})
        for key, values in logprobs.items():
            merged[key] = merged.get(key, []) + values


STREAM: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echo"])
def test_every_billed_completion_token_has_its_logprob_the_eos_included(
    smol: WorkerProcess, tokenizer: Any, echo: bool, stream: bool
) -> None:
    extra = STREAM if stream else {}
    answer = complete(smol, prompt=ENDS, max_tokens=4, logprobs=1, echo=echo, **extra)
    choice, usage = answer["choices"][0], answer["usage"]
    assert choice["finish_reason"] == "stop"
    assert usage["completion_tokens"] == 1  # the EOS alone
    tokens = choice["logprobs"]["tokens"]
    assert len(tokens) == (usage["prompt_tokens"] if echo else 0) + usage["completion_tokens"]
    assert tokens[-1] == EOS
    assert choice["logprobs"]["token_logprobs"][-1] == pytest.approx(-0.725, abs=0.01)
    assert choice["text"] == (ENDS if echo else "")  # the EOS has no text


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_every_billed_chat_token_has_its_logprob_the_eos_included(smol: WorkerProcess, stream: bool) -> None:
    messages = [{"role": "user", "content": "Say OK."}]
    extra = STREAM if stream else {}
    answer = complete(smol, "/v1/chat/completions", messages=messages, max_tokens=24, logprobs=True, **extra)
    choice, usage = answer["choices"][0], answer["usage"]
    assert choice["finish_reason"] == "stop"
    content = choice["logprobs"]["content"]
    assert len(content) == usage["completion_tokens"]
    assert content[-1]["token"] == EOS
    text = choice["text"] if stream else choice["message"]["content"]
    assert "".join(entry["token"] for entry in content[:-1]) == text


def test_token_ids_echo_as_their_text_and_score_as_the_text_does(smol: WorkerProcess, tokenizer: Any) -> None:
    ids = tokenizer.encode(MONTH)
    # lm-evaluation-harness's own request (local-completions' default: token ids, echo).
    by_ids = complete(smol, prompt=[ids], max_tokens=1, logprobs=1, echo=True, seed=1234)
    by_text = complete(smol, prompt=MONTH, max_tokens=1, logprobs=1, echo=True)
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_ids["choices"][0]["text"].startswith(MONTH)
    logprobs = by_ids["choices"][0]["logprobs"]
    assert logprobs == by_text["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + by_ids["usage"]["completion_tokens"]
    assert logprobs["token_logprobs"][0] is None
    # " March" is the prompt's last token: its logprob stays where the harness reads it ([ctxlen:-1]).
    assert logprobs["tokens"][len(ids) - 1] == " March"
    assert logprobs["token_logprobs"][len(ids) - 1] < -1


def test_a_list_of_prompts_answers_as_each_prompt_alone(smol: WorkerProcess, tokenizer: Any) -> None:
    prompts = ["The capital of France is", "Once upon a time", MONTH]
    body: dict[str, Any] = {"max_tokens": 5, "logprobs": 2, "echo": True}
    alone = [complete(smol, prompt=p, **body) for p in prompts]
    for form in (prompts, [tokenizer.encode(p) for p in prompts]):
        for stream in (False, True):
            batch = complete(smol, prompt=form, n=2, **body, **(STREAM if stream else {}))
            assert [c["index"] for c in batch["choices"]] == list(range(6))
            for index, choice in enumerate(batch["choices"]):
                single = alone[index // 2]["choices"][0]
                assert choice["text"] == single["text"]
                assert choice["logprobs"]["tokens"] == single["logprobs"]["tokens"]
                assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
                    single["logprobs"]["token_logprobs"][1:], abs=1e-4
                )
            assert batch["usage"]["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in alone)
            assert batch["usage"]["completion_tokens"] == 2 * sum(
                a["usage"]["completion_tokens"] for a in alone
            )


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_max_tokens_zero_with_echo_scores_the_prompt_alone(
    smol: WorkerProcess, tokenizer: Any, stream: bool
) -> None:
    ids = tokenizer.encode(MONTH)
    scored = complete(smol, prompt=[ids], max_tokens=1, logprobs=1, echo=True)["choices"][0]["logprobs"]
    extra = STREAM if stream else {}
    answer = complete(smol, prompt=[ids, ids[:3]], max_tokens=0, logprobs=1, echo=True, **extra)
    first, second = answer["choices"]
    assert first["text"] == MONTH
    assert first["finish_reason"] == "length"
    assert first["logprobs"]["tokens"] == scored["tokens"][: len(ids)]
    assert first["logprobs"]["token_logprobs"] == scored["token_logprobs"][: len(ids)]
    assert len(second["logprobs"]["tokens"]) == 3
    assert answer["usage"] == {
        "prompt_tokens": len(ids) + 3,
        "completion_tokens": 0,
        "total_tokens": len(ids) + 3,
    }


def test_logprobs_zero_lists_the_chosen_token_alone(smol: WorkerProcess) -> None:
    answer = complete(smol, prompt="The capital of France is", max_tokens=4, logprobs=0, echo=True)
    logprobs = answer["choices"][0]["logprobs"]
    assert logprobs["top_logprobs"][0] is None  # nothing precedes the prompt's first token
    rows = zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    for token, value, top in list(rows)[1:]:
        assert top == {token: value}


def test_best_of_keeps_the_n_best_candidates_of_each_prompt(smol: WorkerProcess) -> None:
    prompts = ["The capital of France is", "Once upon a time"]
    body: dict[str, Any] = {"max_tokens": 3, "temperature": 1.0, "seed": 5, "ignore_eos": True}
    answer = complete(smol, prompt=prompts, n=2, best_of=3, logprobs=0, **body)
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    assert answer["usage"]["completion_tokens"] == 2 * 3 * 3  # every candidate of every prompt is billed
    for first, second in (answer["choices"][:2], answer["choices"][2:]):  # each prompt's own best first
        assert sum(first["logprobs"]["token_logprobs"]) >= sum(second["logprobs"]["token_logprobs"])
