"""Structured outputs: compile a request's `Guide` into a grammar matcher that masks its tokens.

We use llguidance (the Rust engine behind vLLM's and SGLang's "guidance"
backends): it builds its lexer and Earley parser lazily, so a grammar
compiles in milliseconds at request time (no per-schema precomputation over
the vocabulary), a mask costs tens of microseconds per row and step, its
JSON Schema compiler covers more of the spec than the alternatives, and it
refuses the keywords it does not implement instead of ignoring them.

A spec that does not compile is refused on the event loop's side, before the
request takes a slot, with an InvalidRequest naming the field. In the batch,
each constrained row computes its mask (all rows at once, on llguidance's
thread pool, into one preallocated bitmask), and its matcher consumes each
token it accepts; a matcher that errs fails its own row only.

The masks go through `llguidance.numpy`, not `llguidance.torch`: importing
the latter compiles its kernel with `torch.compile` (14 s here, and a C++
compiler on a CPU box); numpy's unpackbits turns the bitmask into a bool
mask in a tenth of a millisecond.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from copy import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.errors import InvalidRequest
from inference.sampling import Guide

if TYPE_CHECKING:
    import torch  # the transformers engine's masks; the llama.cpp engine runs without torch

# One fixed layout, `{"a": 1, "b": [2, 3]}`: with free whitespace SmolLM2 spent its tokens on
# newlines and ran out before closing the object; with none it wrote odd keys after "{".
JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_CACHED_GRAMMARS = 64  # compiled templates kept per engine; a request gets a copy


class GrammarError(RuntimeError):
    """The matcher of one row failed (a token it refused, a limit of the parser)."""


class Grammar:
    """One request's matcher: masks what may come next and consumes what was chosen."""

    def __init__(self, matcher: Any, compiler: GrammarCompiler) -> None:
        self.matcher = matcher
        self.compiler = compiler

    @property
    def finished(self) -> bool:
        """True once the grammar is complete and nothing but EOS may follow."""
        return bool(self.matcher.is_stopped())

    def consume(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise GrammarError(self._error() or f"the grammar refused token {token_id}")

    def check(self) -> None:
        if self.matcher.is_error():
            raise GrammarError(self._error())

    def _error(self) -> str:
        # The first line only: llguidance appends its parser state, which quotes the output.
        return (str(self.matcher.get_error()).splitlines() or ["grammar error"])[0]


class GrammarCompiler:
    """Per engine: the tokenizer as llguidance sees it, a thread pool, a bitmask and compiled templates.

    The llguidance tokenizer takes about a second to build from the fast
    tokenizer's JSON, so it is built once, on first use. `eos_ids` are the ids
    that end a turn: the grammar allows them exactly when it accepts what was
    generated.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = max(vocab_size, len(tokenizer))
        self.eos_ids = sorted(eos_ids)
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None
        self._executor: Any = None
        self._templates: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._bitmask: np.ndarray | None = None

    @property
    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance

                # What llguidance.hf.from_tokenizer does, without its import of transformers.
                if getattr(self.tokenizer, "backend_tokenizer", None) is None:
                    raise ValueError("Only fast tokenizers are supported")  # as llguidance.hf says
                backend = copy(self.tokenizer.backend_tokenizer)
                backend.no_padding()
                backend.no_truncation()
                self._ll_tokenizer = llguidance.LLTokenizer(
                    backend.to_str(), n_vocab=self.vocab_size, eos_token=self.eos_ids
                )
            return self._ll_tokenizer

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token (a byte-level token may be half a UTF-8 character)."""
        return bytes(self.ll_tokenizer.decode_bytes([token_id]))

    def compile(self, guide: Guide) -> Grammar:
        """A fresh matcher for `guide`; raise InvalidRequest naming `guide.field` if it does not compile."""
        import llguidance

        key = (guide.kind, guide.spec)
        with self._lock:
            template = self._templates.get(key)
            if template is not None:
                self._templates.move_to_end(key)
        if template is None:
            # The constructor compiles; it never raises but leaves the matcher in an error state.
            template = llguidance.LLMatcher(self.ll_tokenizer, grammar_text(guide), log_level=0)
            if template.is_error():
                raise InvalidRequest(_refusal(guide, template.get_error()), field=guide.field)
            with self._lock:
                self._templates[key] = template
                while len(self._templates) > MAX_CACHED_GRAMMARS:
                    self._templates.popitem(last=False)
        return Grammar(template.deep_copy(), self)

    def allowed(self, grammars: Sequence[Grammar]) -> list[torch.Tensor | Exception]:
        """Each grammar's allowed next tokens (bool, vocab-sized), or the error that fails its row.

        Masks are computed in parallel into one bitmask. Should that call fail as
        a whole, each row is computed alone, so a failure stays with its row.
        """
        import llguidance.numpy as llg_numpy

        bitmask = self._bitmask_for(len(grammars))
        try:
            llg_numpy.fill_next_token_bitmask_par(
                self._pool(), [(g.matcher, row) for row, g in enumerate(grammars)], bitmask
            )
        except Exception:
            return [self._allowed_alone(g, bitmask) for g in grammars]
        allowed = unpack_bitmask(bitmask, self.vocab_size)
        return [_checked(g, allowed[row]) for row, g in enumerate(grammars)]

    def _allowed_alone(self, grammar: Grammar, bitmask: np.ndarray) -> torch.Tensor | Exception:
        import llguidance.numpy as llg_numpy

        try:
            llg_numpy.fill_next_token_bitmask(grammar.matcher, bitmask, 0)
        except Exception as exc:
            return exc
        return _checked(grammar, unpack_bitmask(bitmask[:1], self.vocab_size)[0])

    def _bitmask_for(self, rows: int) -> np.ndarray:
        """The first `rows` rows of the preallocated bitmask (grown when the batch is larger)."""
        if self._bitmask is None or self._bitmask.shape[0] < rows:
            import llguidance.numpy as llg_numpy

            self._bitmask = llg_numpy.allocate_token_bitmask(max(rows, 16), self.vocab_size)
        return self._bitmask[:rows]

    def _pool(self) -> Any:
        if self._executor is None:
            import llguidance

            self._executor = llguidance.LLExecutor()
        return self._executor


def grammar_text(guide: Guide) -> str:
    """The llguidance grammar for `guide`; raise InvalidRequest for a spec that is not even well formed."""
    import llguidance

    try:
        if guide.kind == "json_schema":
            if not isinstance(json.loads(guide.spec), dict):
                raise ValueError("a JSON schema is a JSON object")
            return str(llguidance.LLMatcher.grammar_from_json_schema(guide.spec, defaults=JSON_OPTIONS))
        if guide.kind == "json_object":
            return str(
                llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
            )
        if guide.kind == "choice":
            choices = json.loads(guide.spec)
            if not choices or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise ValueError("choices are a non-empty list of strings")
            return str(llguidance.grammar_from("choice", guide.spec))
        if guide.kind == "regex":
            return str(llguidance.grammar_from("regex", guide.spec))
        if guide.kind == "grammar":  # Lark, or GBNF that llguidance converts to Lark
            return str(llguidance.grammar_from("grammar", guide.spec))
    except ValueError as exc:  # json.JSONDecodeError included
        raise InvalidRequest(_refusal(guide, str(exc)), field=guide.field) from exc
    raise InvalidRequest(f"Unknown structured output kind {guide.kind!r}.", field=guide.field)


def lark_text(guide: Guide) -> str:
    """`guide` as one llguidance Lark grammar, the form llama.cpp takes (`%llguidance` in `grammar`).

    llguidance's own constructors give either Lark or a one-grammar JSON
    wrapper (regex, JSON schema); a JSON schema becomes Lark's `%json` rule,
    carrying the layout options in its `x-guidance` key.
    """
    text = grammar_text(guide)
    if text.lstrip().startswith("{"):
        (grammar,) = json.loads(text)["grammars"]
        text = grammar["lark_grammar"] or f"start: %json {json.dumps(grammar['json_schema'])}"
    return text if text.startswith("%llguidance") else "%llguidance {}\n" + text


def unpack_bitmask(bitmask: np.ndarray, vocab_size: int) -> torch.Tensor:
    """(rows, words) int32 bitmask, bit i of word j = token 32j+i, as a (rows, vocab) bool tensor.

    numpy's unpackbits does it in a tenth of a millisecond for a batch of 16;
    shifting and masking in torch took 50 times longer here.
    """
    import torch

    raw = np.ascontiguousarray(bitmask).view(np.uint8)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :vocab_size]
    return torch.from_numpy(bits).view(torch.bool)


def _checked(grammar: Grammar, allowed: torch.Tensor) -> torch.Tensor | Exception:
    try:
        grammar.check()
    except GrammarError as exc:
        return exc
    if not bool(allowed.any()):
        return GrammarError("the grammar allows no next token")
    return allowed


def _refusal(guide: Guide, error: str) -> str:
    detail = (str(error).strip().splitlines() or ["it does not compile"])[0]
    what = {"json_schema": "JSON schema", "choice": "choice list"}.get(guide.kind, guide.kind)
    return f"'{guide.field}' has an invalid {what}: {detail}"
