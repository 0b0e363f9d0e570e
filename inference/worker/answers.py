"""Turn each choice's deltas into OpenAI's answer: text, logprobs, tool calls, the best of several.

Shared by the unary and the streamed response. `best_of` candidates are
ranked by cumulative logprob (the engine reports the sampled tokens'
logprobs for them even when the client did not ask), as vLLM does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.engines.base import Delta, TokenLogprob
from inference.protocol import GenerateCall
from inference.protocol.tools import cut_call, extract_calls
from inference.worker.protocol import Describe, Shape


@dataclass
class ChoiceText:
    """What one choice has produced so far."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def score(self) -> float:
        return sum(entry.logprob for entry in self.logprobs)


def best(choices: dict[int, ChoiceText], n: int) -> list[ChoiceText]:
    """The `n` choices with the highest cumulative logprob (all of them, in order, when there are n)."""
    ordered = [choices[i] for i in sorted(choices)]
    if len(ordered) <= n:
        return ordered
    return sorted(ordered, key=lambda c: c.score, reverse=True)[:n]


def buffers_text(call: GenerateCall) -> bool:
    """Whether a stream holds text back until the choice ends: tool calls are read from the whole answer."""
    return call.tools is not None and call.tools.choice != "none"


def finished_choice(
    shape: Shape,
    call: GenerateCall,
    index: int,
    choice: ChoiceText,
    describe: Describe,
    prefix: str = "",
    echoed: Sequence[TokenLogprob] = (),
) -> dict[str, Any]:
    """The response's choice object for a finished `choice`; `prefix` and `echoed`: the echoed prompt."""
    text: str | None = prefix + choice.text
    finish = choice.finish_reason
    calls: list[dict[str, Any]] = []
    if call.tools is not None and text is not None:
        text, calls = extract_calls(text, call.tools)
        if calls and finish == "stop":
            finish = "tool_calls"
        elif not calls and call.tools.forced:  # stopped before the call was whole: never the wrapper as text
            text, calls = None, cut_call(text or "", call.tools)
    logprobs = None
    if call.params.logprobs is not None:
        if echoed:
            logprobs = shape.logprobs([*echoed, *choice.logprobs], describe)
        else:
            logprobs = shape.logprobs(choice.logprobs, describe, offset=len(prefix))
    return shape.choice(index, text, finish, logprobs=logprobs, tool_calls=calls)
