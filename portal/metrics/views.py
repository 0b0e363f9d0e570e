"""`GET /metrics`: the portal's figures in Prometheus' text format.

A sync view: one scrape every few seconds may hold Django's sync thread for
its one query and the rendering, which spares the request path any hop.
With METRICS_TOKEN set a scraper must present it as a bearer token; without
it only loopback clients that no proxy forwarded are answered (nginx in
front of the portal on the same host connects from loopback, but says whom
it forwards).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from portal.metrics import instruments  # noqa: F401 - declared before the first request, listed from the start
from portal.metrics.heartbeats import HeartbeatCollector, read_workers

FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")


class _ProcessRegistry(Collector):
    """This process's default registry as one collector (single-process mode)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def refusal(request: HttpRequest) -> HttpResponse | None:
    """401 without the metrics token (when one is set), 403 for a client not on loopback; else None."""
    token = settings.METRICS_TOKEN
    if token:
        if _bearer_matches(request.headers.get("Authorization", ""), token):
            return None
        response = HttpResponse("Send 'Authorization: Bearer <METRICS_TOKEN>'.\n", status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    forwarded = any(name in request.headers for name in FORWARDING_HEADERS)
    if _is_loopback(request.META.get("REMOTE_ADDR", "")) and not forwarded:
        return None
    return HttpResponse("Set METRICS_TOKEN to scrape from another host.\n", status=403)


def scrape_registry() -> CollectorRegistry:
    """This scrape's registry: the request figures (every process's, in multiprocess mode) and the
    workers' heartbeat figures."""
    registry = CollectorRegistry(auto_describe=False)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        registry.register(_ProcessRegistry())
    registry.register(HeartbeatCollector(read_workers()))
    return registry


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The exposition, in the format the scraper asks for (text by default, OpenMetrics on request)."""
    refused = refusal(request)
    if refused is not None:
        return refused
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(scrape_registry()), content_type=content_type)
