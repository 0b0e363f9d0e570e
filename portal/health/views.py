"""`GET /health`: 200 when every check passes, 503 naming the one that failed.

Open to anyone (load balancers and Kubernetes probes call it) and routed
through the API's handler (portal/asgi.py): no sessions, CSRF or
ALLOWED_HOSTS check, so a probe that sends the pod's IP as its Host is
answered. It writes nothing.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from portal.health.checks import run_checks


@require_safe
@never_cache
async def health(request: HttpRequest) -> JsonResponse:
    results = await run_checks()
    healthy = all(result.ok for result in results.values())
    body = {
        "status": "ok" if healthy else "error",
        "checks": {name: result.as_dict() for name, result in results.items()},
    }
    return JsonResponse(body, status=200 if healthy else 503)
