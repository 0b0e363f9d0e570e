"""CORS for /v1 (django-cors-headers in the API handler's own middleware list).

A preflight from an allowed origin is answered before authentication; one
from another origin gets no CORS headers (the browser refuses) and never a
5xx. Actual requests carry the allow header only for allowed origins, and
credentials are never allowed with a wildcard: the portal refuses to start
so configured. One test runs a real portal started from the environment.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application

from portal.handlers import APIHandler, route_by_path
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, start_portal
from tests.processes import REPO_ROOT, subprocess_env

ALLOWED, OTHER = "https://app.example", "https://evil.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def app() -> httpx2.AsyncClient:
    handler = route_by_path(("/v1/",), APIHandler(), get_asgi_application())
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=handler), base_url="http://127.0.0.1")


@pytest.fixture
def allowed(settings) -> None:
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED]
    settings.CORS_ALLOW_ALL_ORIGINS = False
    settings.CORS_ALLOW_CREDENTIALS = False


@pytest.mark.django_db(transaction=True)
async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(allowed):
    async with app() as client:
        response = await client.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.django_db(transaction=True)
async def test_a_preflight_from_another_origin_gets_no_cors_headers_and_no_5xx(allowed):
    async with app() as client:
        response = await client.options("/v1/chat/completions", headers={"Origin": OTHER, **PREFLIGHT})
    assert response.status_code < 500
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.django_db(transaction=True)
async def test_actual_requests_carry_the_allow_header_for_allowed_origins_only(allowed):
    _, secret = await sync_to_async(create_api_key)(name="browser")
    auth = {"Authorization": f"Bearer {secret}"}
    async with app() as client:
        mine = await client.get("/v1/models", headers={"Origin": ALLOWED, **auth})
        theirs = await client.get("/v1/models", headers={"Origin": OTHER, **auth})
        refused = await client.get("/v1/models", headers={"Origin": ALLOWED})
    assert (mine.status_code, theirs.status_code) == (200, 200)
    assert mine.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Request-Id" in mine.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Origin" not in theirs.headers
    # A refusal reaches the page too, so that it can read why.
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED


@pytest.mark.django_db(transaction=True)
async def test_a_wildcard_allows_any_origin_without_credentials(settings):
    settings.CORS_ALLOW_ALL_ORIGINS, settings.CORS_ALLOW_CREDENTIALS = True, False
    async with app() as client:
        response = await client.options("/v1/embeddings", headers={"Origin": OTHER, **PREFLIGHT})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_credentials_with_a_wildcard_stop_the_portal_at_start():
    env = subprocess_env({"CORS_ALLOWED_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"})
    env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    check = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode != 0
    assert "credentials are never allowed to any origin" in check.stderr


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    with start_portal(extra_env={"CORS_ALLOWED_ORIGINS": f"{ALLOWED},http://localhost:3000"}) as process:
        yield process


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_portal_takes_its_allowed_origins_from_the_environment(portal):
    url = f"{portal.url}/v1/chat/completions"
    allowed = httpx2.options(url, headers={"Origin": "http://localhost:3000", **PREFLIGHT}, timeout=10)
    other = httpx2.options(url, headers={"Origin": OTHER, **PREFLIGHT}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert other.status_code < 500
    assert "Access-Control-Allow-Origin" not in other.headers
    # The admin is not /v1: no CORS there whatever the origin.
    admin = httpx2.options(f"{portal.url}/admin/login/", headers={"Origin": ALLOWED, **PREFLIGHT}, timeout=10)
    assert "Access-Control-Allow-Origin" not in admin.headers
