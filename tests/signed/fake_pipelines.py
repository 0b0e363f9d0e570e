"""Pipelines for tests of the endpoint's timeout, concurrency and failure handling (no model)."""

from __future__ import annotations

import asyncio
from typing import Any

from portal.signed.pipelines.base import InferenceFailed, Pipeline, PipelineContext


class SleepPipeline(Pipeline):
    """Sleeps `data["seconds"]`, then answers; counts `init` calls to show it runs once."""

    path = "sleep"
    init_calls = 0

    def init(self) -> None:
        type(self).init_calls += 1

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": float(data.get("seconds", 0))}

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        await asyncio.sleep(params["seconds"])
        return {"slept": params["seconds"]}


class BrokenPipeline(Pipeline):
    """Fails the way a pipeline reports a failed inference, or crashes outright."""

    path = "broken"

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        if params.get("crash"):
            raise RuntimeError("internal detail that must not leak")
        raise InferenceFailed("the model could not answer")
