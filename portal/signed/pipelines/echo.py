"""The echo pipeline: returns `data` unchanged, to check signing and the envelope end to end.

No worker is involved, so no relay records its usage: the pipeline writes the
usage record itself (off the response path), so that echo calls count too.
"""

from __future__ import annotations

from typing import Any

from portal.gateway.gateway import current
from portal.signed.pipelines.base import Pipeline, PipelineContext
from registry.services.usage import UsageEntry


class EchoPipeline(Pipeline):
    path = "echo"
    data_schema = {
        "type": "object",
        "description": "Any object; it comes back unchanged as `echo`.",
        "example": {"text": "hi"},
    }
    result_schema = {
        "type": "object",
        "required": ["echo"],
        "properties": {"echo": {"type": "object", "description": "The request's `data`."}},
    }

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        entry = UsageEntry(
            request_id=context.request_id,
            source="signed",
            endpoint="echo",
            model_name="echo",
            app_credential_id=context.app_credential_id,
            total_time_ms=0.0,
        )
        recording = current().usage.schedule(entry)
        if recording is not None:
            await recording
        return {"echo": params}
