"""The ASGI application: `/v1` runs without the browser middleware, the rest with it."""

import pytest
from channels.testing import HttpCommunicator

from portal.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def get(path: str) -> dict:
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"127.0.0.1")])
    return await communicator.get_response(timeout=10)


def header_names(response: dict) -> set[str]:
    return {name.decode().lower() for name, _ in response["headers"]}


async def test_api_paths_skip_the_browser_middleware():
    response = await get("/v1/models")
    assert response["status"] == 401  # no key: the API's own answer, in OpenAI's shape
    assert b'"error"' in response["body"]
    assert "x-frame-options" not in header_names(response)


async def test_admin_keeps_the_full_middleware_stack():
    response = await get("/admin/login/")
    assert response["status"] == 200
    names = header_names(response)
    assert "x-frame-options" in names
    assert "set-cookie" in names  # the CSRF cookie of the login form
