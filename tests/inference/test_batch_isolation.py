"""A failure inside the batch fails only the sequence that causes it (real SmolLM2, faults injected).

`FaultyModel` is the real model with one fault added: a forward pass whose
input holds MARKER raises halfway through the layers, after the first half
appended their column to the shared cache. Prompts carry MARKER to fail at
prefill; `MarkerPicker` samples it to fail the next decode step;
`BrokenPicker` fails sampling. Steps run on the test's thread (`run`), so
which requests share a prefill is decided by the test, not by timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from inference.engines.batcher import Batcher, Sequence
from inference.engines.logits import TokenPicker
from inference.engines.stops import TextStream
from inference.errors import EngineError, RequestFailed
from inference.sampling import SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARKER = 30000  # a token none of the innocent prompts or answers contain
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Hi!", "Name three colours."]
TOKENS = 16


class FaultyModel:
    """The real model, raising mid-forward (half the layers cached) when MARKER is in the input."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.fail_every_decode = False
        self._poisoned = False
        layers = model.model.layers
        self._hook = layers[len(layers) // 2].register_forward_pre_hook(self._raise_if_poisoned)

    def __call__(self, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        self._poisoned = bool((ids == MARKER).any()) or (self.fail_every_decode and ids.shape[1] == 1)
        try:
            return self.model(**kwargs)
        finally:
            self._poisoned = False

    def _raise_if_poisoned(self, module: Any, args: Any) -> None:
        if self._poisoned:
            raise RuntimeError("index out of range in self")

    def remove(self) -> None:
        self._hook.remove()


class MarkerPicker(TokenPicker):
    """Greedy, except that the third token it picks is MARKER."""

    simple_greedy = False
    picked = 0

    def pick(self, logits: torch.Tensor) -> int:
        self.picked += 1
        return MARKER if self.picked == 3 else super().pick(logits)


class BrokenPicker(TokenPicker):
    simple_greedy = False

    def pick(self, logits: torch.Tensor) -> int:
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")


class Outcome:
    """What one sequence's sink received."""

    def __init__(self) -> None:
        self.text = ""
        self.error: BaseException | None = None
        self.finish: str | None = None
        self.done = threading.Event()

    def __call__(self, item: Any) -> None:
        if isinstance(item, BaseException):
            self.error = item
        else:
            self.text += item.text
            self.finish = item.finish_reason
        if self.error is not None or self.finish is not None:
            self.done.set()


@pytest.fixture(scope="module")
def faulty(chat_engine: Any) -> Iterator[FaultyModel]:
    model = FaultyModel(chat_engine.model)
    yield model
    model.remove()


@pytest.fixture
def batcher(chat_engine: Any, faulty: FaultyModel) -> Batcher:
    faulty.fail_every_decode = False
    return Batcher(faulty, chat_engine.batcher.stop_ids)


def sequence(engine: Any, name: str, prompt: list[int], picker: type[TokenPicker] = TokenPicker) -> Sequence:
    params = SamplingParams(temperature=0, max_tokens=TOKENS)
    return Sequence(
        request_id=name,
        prompt_ids=prompt,
        picker=picker(params, prompt, engine.vocab_size),
        stream=TextStream(engine._decode, ()),
        sink=Outcome(),
        max_new_tokens=TOKENS,
    )


def prompt(engine: Any, question: str) -> list[int]:
    return engine.tokenize(engine.render_chat([{"role": "user", "content": question}]))


def innocents(engine: Any) -> list[Sequence]:
    return [sequence(engine, f"ok{i}", prompt(engine, q)) for i, q in enumerate(QUESTIONS)]


def run(batcher: Batcher, *waves: list[Sequence]) -> None:
    """Admit each wave at the next step (one batched prefill per wave), then step until all finish."""
    with torch.inference_mode():
        for wave in waves:
            batcher._iterate(wave, set())
        while batcher.batch is not None:
            batcher._iterate([], set())


def outcome(seq: Sequence) -> Outcome:
    assert isinstance(seq.sink, Outcome)
    return seq.sink


@pytest.fixture(scope="module")
def solo_texts(chat_engine: Any, faulty: FaultyModel) -> list[str]:
    texts = []
    for seq in innocents(chat_engine):
        run(Batcher(faulty, chat_engine.batcher.stop_ids), [seq])
        texts.append(outcome(seq).text)
    assert all(texts)
    return texts


def assert_innocents_match(seqs: list[Sequence], solo_texts: list[str]) -> None:
    assert [outcome(s).error for s in seqs] == [None] * len(seqs)
    assert [outcome(s).text for s in seqs] == solo_texts


async def test_a_poisoned_prompt_in_a_batched_prefill_fails_alone(chat_engine, batcher, solo_texts):
    seqs = innocents(chat_engine)
    poisoned = sequence(chat_engine, "bad", [*prompt(chat_engine, "Hello"), MARKER])
    run(batcher, [*seqs[:2], poisoned, *seqs[2:]])
    assert isinstance(outcome(poisoned).error, RequestFailed)
    assert_innocents_match(seqs, solo_texts)


async def test_a_poisoned_newcomer_joining_a_running_batch_gets_a_400(chat_engine, batcher, solo_texts):
    seqs = innocents(chat_engine)
    poisoned = sequence(chat_engine, "bad", [MARKER])
    run(batcher, seqs, [], [poisoned])
    error = outcome(poisoned).error
    assert isinstance(error, RequestFailed)
    assert error.status_code == 400
    assert_innocents_match(seqs, solo_texts)


async def test_a_row_that_breaks_a_decode_step_is_dropped_and_the_step_redone(
    chat_engine, batcher, solo_texts
):
    seqs = innocents(chat_engine)
    poisoned = sequence(chat_engine, "bad", prompt(chat_engine, "Tell me a story."), MarkerPicker)
    run(batcher, [*seqs[:2], poisoned, *seqs[2:]])
    error = outcome(poisoned).error
    assert isinstance(error, RequestFailed)
    assert "index out of range" in str(error)
    assert_innocents_match(seqs, solo_texts)


async def test_a_row_whose_sampling_fails_is_dropped_alone(chat_engine, batcher, solo_texts):
    seqs = innocents(chat_engine)
    broken = sequence(chat_engine, "bad", prompt(chat_engine, "Hello"), BrokenPicker)
    run(batcher, [broken, *seqs])
    assert isinstance(outcome(broken).error, RequestFailed)
    assert_innocents_match(seqs, solo_texts)


async def test_a_step_that_fails_for_every_row_is_a_worker_fault_and_the_loop_goes_on(
    chat_engine, batcher, faulty, solo_texts
):
    seqs = innocents(chat_engine)
    faulty.fail_every_decode = True
    run(batcher, seqs)
    errors = [outcome(s).error for s in seqs]
    assert all(type(e) is EngineError and e.status_code == 500 for e in errors), errors
    assert batcher.batch is None
    faulty.fail_every_decode = False
    again = innocents(chat_engine)
    run(batcher, again)
    assert_innocents_match(again, solo_texts)


async def test_the_batch_thread_serves_innocents_around_poisoned_requests(chat_engine, batcher, solo_texts):
    seqs = innocents(chat_engine)
    poisoned = [
        sequence(chat_engine, "bad-prompt", [MARKER]),
        sequence(chat_engine, "bad-decode", prompt(chat_engine, "Tell me a story."), MarkerPicker),
        sequence(chat_engine, "bad-sample", prompt(chat_engine, "Hello"), BrokenPicker),
    ]
    batcher.start()
    try:
        for seq in [seqs[0], poisoned[0], seqs[1], poisoned[1], seqs[2], poisoned[2], seqs[3]]:
            batcher.submit(seq)
        for seq in seqs + poisoned:
            assert outcome(seq).done.wait(120), seq.request_id
    finally:
        batcher.stop()
    assert all(isinstance(outcome(p).error, EngineError) for p in poisoned)
    assert_innocents_match(seqs, solo_texts)
