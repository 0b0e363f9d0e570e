"""The pipeline contract: go-infer's model interface (ApiPath, ApiEntry, Init, Infer) in Python.

A pipeline is found by its `path` (`POST /api/<path>`), checks and transforms the
request's `data` in `api_entry` (a refusal becomes code 9701 with its reason),
loads what it needs once in `init` (run in a thread, so it may block), and runs
in `infer` (async; its dict becomes the response `data`).

It also declares what `data` takes (`data_schema`) and what `infer` returns
(`result_schema`), as OpenAPI 3.0 schema objects: `/api/schema/` documents
the pipeline's operation from them (`portal.signed.schema`), and tests hold
`api_entry` to them. Describe what `api_entry` accepts, no more: a request
the schema allows must not be refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from portal.gateway.limit_stores import Quota


@dataclass(frozen=True)
class PipelineContext:
    """Who asked and under which request id; the relay turns it into the usage record."""

    request_id: str
    app_id: str
    app_credential_id: int
    quota: Quota | None = None  # the app's limits, for a pipeline that reserves itself
    team_id: int | None = None  # the app's team, whose budget it spends
    log_days: int = 0  # its team's request log: days its bodies are kept; 0: not kept


class ParamsRefused(Exception):
    """The pipeline refuses the parameters (code 9701); the message is the reason."""


class InferenceFailed(Exception):
    """The inference failed (code 9998); the message is safe to show the caller."""


class InferenceTimedOut(Exception):
    """No result came within the time allowed (code 9997)."""


class Pipeline:
    """Base class; subclasses set `path` and implement `api_entry` and `infer`."""

    path: ClassVar[str] = ""
    # OpenAPI 3.0 schema objects (draft-4 JSON Schema with `nullable`); empty means undeclared.
    data_schema: ClassVar[dict[str, Any]] = {}
    result_schema: ClassVar[dict[str, Any]] = {}
    # True: `infer` reserves against `context.quota` itself (through the gateway); else the service does.
    reserves_itself: ClassVar[bool] = False

    def __init__(self) -> None:
        self._init_lock = threading.Lock()
        self.initialized = False

    def init(self) -> None:
        """Load what the pipeline needs (weights, clients) once; may block, runs in a thread."""

    def ensure_initialized(self) -> None:
        """Run `init` exactly once, however many requests arrive first."""
        with self._init_lock:
            if not self.initialized:
                self.init()
                self.initialized = True

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate `data` and return the parameters `infer` gets; raise ParamsRefused."""
        raise NotImplementedError

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        """Run and return the result fields; raise InferenceFailed or InferenceTimedOut."""
        raise NotImplementedError


def optional_string(data: dict[str, Any], key: str) -> str | None:
    """Read an optional non-empty string field."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ParamsRefused(f"{key} must be a non-empty string")
    return value
