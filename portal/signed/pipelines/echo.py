"""The echo pipeline: returns `data` unchanged, to check signing and the envelope end to end."""

from __future__ import annotations

from typing import Any

from portal.signed.pipelines.base import Pipeline, PipelineContext


class EchoPipeline(Pipeline):
    path = "echo"

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        return {"echo": params}
