"""The endpoint `POST /api/<pipeline>`; the work is in `portal.signed.service`."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from portal.signed.service import handle_signed_request


@csrf_exempt
@require_POST
async def signed_api(request: HttpRequest, pipeline: str) -> JsonResponse:
    """Answer a go-infer style signed request; always HTTP 200 with a code, like go-infer."""
    # One byte past the cap is enough to refuse an oversized body without copying all of it.
    body = request.read(int(settings.SIGNED_MAX_BODY_BYTES) + 1)
    reply = await handle_signed_request(body=body, path=pipeline)
    return JsonResponse(reply, json_dumps_params={"ensure_ascii": False})
