"""The ASGI application: `/v1` runs without the browser middleware, the rest with it."""

import threading

import pytest
from channels.testing import HttpCommunicator
from django.core.signals import request_finished, request_started

from portal.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def get(path: str) -> dict:
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"127.0.0.1")])
    response = await communicator.get_response(timeout=10)
    await communicator.wait(timeout=10)  # the handler has returned: everything it does is done
    return response


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


async def test_api_paths_send_no_request_signals_and_start_no_thread():
    # Their receivers are database housekeeping, hops to a sync thread the API does not need.
    fired: list[str] = []

    def note(signal_name):
        return lambda **kwargs: fired.append(signal_name)

    await get("/v1/models")  # starts the one sync thread that the key lookup's cache loader uses
    on_start, on_finish = note("started"), note("finished")
    request_started.connect(on_start)
    request_finished.connect(on_finish)
    threads = threading.active_count()
    try:
        assert (await get("/v1/models"))["status"] == 401
        assert fired == []
        assert threading.active_count() == threads
        assert (await get("/admin/login/"))["status"] == 200
        assert fired == ["started", "finished"]  # Django's own handler does send them
    finally:
        request_started.disconnect(on_start)
        request_finished.disconnect(on_finish)
