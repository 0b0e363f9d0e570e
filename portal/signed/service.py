"""One signed request from body to envelope: find the app, parse, authenticate, guard, run the pipeline.

The order of the checks follows go-infer (fields, timestamp, app, version,
signature) but for the app, which is looked up first: an unknown one is
refused before its body is parsed (`portal.signed.intake`). Then our
additions (replay, rate limit, pipeline allow list).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from portal.gateway.figures import usage_counts
from portal.gateway.gateway import current
from portal.gateway.limits import LimitExceeded
from portal.gateway.tasks import spawn
from portal.signed.envelope import (
    Code,
    SignedApiError,
    SignedRequest,
    error_body,
    success_body,
)
from portal.signed.guard import admit, app_quota, check_timestamp, rate_limited, reserve_for_app
from portal.signed.intake import read_request
from portal.signed.loader import aget_ready_pipeline
from portal.signed.pipelines.base import (
    InferenceFailed,
    InferenceTimedOut,
    ParamsRefused,
    Pipeline,
    PipelineContext,
)
from portal.signed.policies import SignaturePolicy
from registry.models import AppCredential
from registry.services.credentials import CredentialSnapshot, aget_credential
from registry.services.last_used import touch_last_used

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    """go-infer's shape: the date then 32 hex digits."""
    return f"{datetime.now(UTC):%Y%m%d}{secrets.token_hex(16)}"


def _inference_slots() -> asyncio.Semaphore:
    """SIGNED_MAX_WORKERS concurrent inferences per portal process (one semaphore per event loop)."""
    return current().loops.get(
        "signed-slots", lambda: asyncio.Semaphore(max(1, int(settings.SIGNED_MAX_WORKERS)))
    )


async def find_app(app_id: str) -> CredentialSnapshot:
    """Return the enabled app with this appId, or refuse it (9805)."""
    await current().watch.check()  # an admin change reaches the cached lookup within a second
    credential = await aget_credential(app_id)
    if credential is None or not credential.enabled:
        raise SignedApiError(Code.UNKNOWN_APP, "unknown or disabled appId")
    return credential


async def authenticate(
    request: SignedRequest, credential: CredentialSnapshot, policies: Sequence[SignaturePolicy]
) -> SignaturePolicy:
    """Return the policy that verified a request whose timestamp, version and signature check out.

    `policies` are the view's authentication classes: a signType none of them
    names is refused (9803).
    """
    check_timestamp(request.timestamp)
    request.check_version()
    policy = next((p for p in policies if p.sign_type == request.sign_type), None)
    if policy is None:
        accepted = ", ".join(p.sign_type for p in policies)
        raise SignedApiError(
            Code.SIGN_TYPE_NOT_ALLOWED, f"unknown signType: {request.sign_type} (accepted: {accepted})"
        )
    await policy.authenticate_signed(request, credential)
    if current().app_touches.due(credential.id):
        # Bookkeeping in the background, at most once a minute per app.
        spawn(database_sync_to_async(touch_last_used)(model=AppCredential, row_id=credential.id))
    return policy


async def run_pipeline(pipeline: Pipeline, params: dict[str, Any], context: PipelineContext) -> dict:
    """Run within SIGNED_MESSAGE_TIMEOUT (waiting for a slot included) and map failures to codes."""
    try:
        async with asyncio.timeout(float(settings.SIGNED_MESSAGE_TIMEOUT)):
            async with _inference_slots():
                return await pipeline.infer(params, context=context)
    except (TimeoutError, InferenceTimedOut) as exc:
        raise SignedApiError(Code.TIMEOUT, "no result within the time allowed") from exc
    except LimitExceeded as exc:
        raise rate_limited(exc) from None
    except ParamsRefused as exc:
        raise SignedApiError(Code.PARAMS_REFUSED, str(exc)) from exc
    except InferenceFailed as exc:
        raise SignedApiError(Code.INFERENCE_FAILED, str(exc)) from exc
    except Exception as exc:
        logger.exception("signed %s: pipeline %s crashed", context.request_id, pipeline.path)
        raise SignedApiError(Code.INFERENCE_FAILED, "inference failed") from exc


async def _serve(
    request: SignedRequest,
    credential: CredentialSnapshot,
    policy: SignaturePolicy,
    path: str,
    request_id: str,
) -> dict[str, Any]:
    pipeline = await aget_ready_pipeline(path)
    if pipeline is None:
        raise SignedApiError(Code.UNKNOWN_PIPELINE, f"unknown pipeline: {path}")
    if not credential.may_call(path):
        raise SignedApiError(Code.PIPELINE_NOT_ALLOWED, f"this app may not call the {path} pipeline")
    await admit(app_id=credential.app_id, replay_key=policy.replay_key(request))
    try:
        params = pipeline.api_entry(request.data)
    except ParamsRefused as exc:
        raise SignedApiError(Code.PARAMS_REFUSED, str(exc)) from exc
    context = PipelineContext(
        request_id=request_id,
        app_id=credential.app_id,
        app_credential_id=credential.id,
        team_id=credential.team_id,
        log_days=credential.log_days,
    )
    if pipeline.reserves_itself:  # the gateway reserves it against the app's quota, and settles it
        return await run_pipeline(pipeline, params, replace(context, quota=app_quota(credential)))
    reservation = await reserve_for_app(credential, params)
    # Settled with the result's usage; a refusal or failure used nothing, while a request that
    # timed out or was cancelled may have generated all it reserved.
    used = reservation.estimate.total
    try:
        result = await run_pipeline(pipeline, params, context)
        used = sum(usage_counts(result.get("usage")) or (0, 0))
        return result
    except SignedApiError as exc:
        if exc.code in (Code.PARAMS_REFUSED, Code.INFERENCE_FAILED):
            used = 0
        raise
    finally:
        reservation.settle(used)


async def handle_signed_request(
    *, body: bytes, content_type: str, path: str, policies: Sequence[SignaturePolicy]
) -> dict[str, Any]:
    """Answer one request with the envelope; every refusal is a code, never an exception.

    `policies` are the signature policies the endpoint accepts (its authentication classes).
    """
    request_id = new_request_id()
    app_id = ""
    try:
        max_bytes = int(settings.SIGNED_MAX_BODY_BYTES)
        credential, request = await read_request(
            body, content_type=content_type, max_bytes=max_bytes, find_app=find_app
        )
        policy = await authenticate(request, credential, policies)
        # Like go-infer, the appId is echoed only once the signature proved it.
        app_id = credential.app_id
        result = await _serve(request, credential, policy, path, request_id)
    except SignedApiError as exc:
        logger.info("signed %s: code %s: %s", request_id, int(exc.code), exc.message)
        return error_body(app_id=app_id, request_id=request_id, code=exc.code, message=exc.message)
    except Exception:
        # Our bug, not the client's: logged with the request id, answered in the envelope.
        logger.exception("signed %s: the request failed", request_id)
        code = Code.INFERENCE_FAILED
        return error_body(app_id=app_id, request_id=request_id, code=code, message="internal error")
    return success_body(app_id=app_id, request_id=request_id, result=result)
