"""Run an admitted request on a worker: one answer (`run`), failing over while workers refuse or fail."""

from __future__ import annotations

import asyncio
from typing import Any

from portal.gateway.errors import GatewayError, worker_failed
from portal.gateway.prepare import Prepared
from portal.gateway.upstream import error_from_response, with_failover
from portal.gateway.worker_calls import worker_headers, worker_url
from registry.models import UsageStatus


async def run(prepared: Prepared) -> dict[str, Any]:
    """The worker's answer to `prepared` (not streamed); raise GatewayError (502/503/504, a worker's 4xx)."""
    ticket = prepared.ticket
    client = ticket.gateway.client

    async def attempt(worker: Any) -> dict[str, Any]:
        headers = worker_headers(worker, ticket.entry.request_id)
        response = await client.post(worker_url(worker, prepared.door), json=prepared.body, headers=headers)
        if response.status_code != 200:
            raise error_from_response(response.status_code, response.content)
        try:
            result = response.json()
        except ValueError:
            result = None
        if not isinstance(result, dict):
            error = worker_failed("its answer is not a JSON object.")
            error.fault = "worker"
            raise error
        ticket.first_token()
        return result

    try:
        result = await with_failover(prepared.model, ticket, attempt)
    except GatewayError as exc:
        ticket.finish(UsageStatus.ERROR, exc)
        raise
    except asyncio.CancelledError:
        # The client went away (Django cancels the view): stop the generation on the worker.
        ticket.finish(UsageStatus.CANCELLED)
        raise
    ticket.set_usage(result.get("usage"))
    if ticket.log is not None:
        ticket.log.take_answer(result)
    ticket.finish()
    await ticket.recorded()
    return result
