"""The ASGI application: `/v1` runs without the browser middleware, the rest with it."""

import threading

import pytest
from asgiref.sync import SyncToAsync
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


async def test_api_paths_send_no_request_signals_and_start_no_thread(monkeypatch):
    # Their receivers are database housekeeping, hops to a sync thread the API does not need.
    # Threads are watched as they start, not counted: other tests' threads may end meanwhile.
    fired: list[str] = []
    started: list[str] = []
    sync_hops: list[str] = []

    def note(signal_name):
        return lambda **kwargs: fired.append(signal_name)

    real_start, real_hop = threading.Thread.start, SyncToAsync.__call__

    def recording_start(thread: threading.Thread) -> None:
        # The loop's default executor ("asyncio_N") is Django's: it logs 4xx answers off the loop.
        if not thread.name.startswith("asyncio_"):
            started.append(thread.name)
        real_start(thread)

    async def recording_hop(self, *args, **kwargs):
        if self._thread_sensitive:  # Django's one sync thread (error logging uses a pool thread)
            sync_hops.append(getattr(self.func, "__name__", repr(self.func)))
        return await real_hop(self, *args, **kwargs)

    await get("/v1/models")  # warm: the first request may start the loop's own helpers
    on_start, on_finish = note("started"), note("finished")
    request_started.connect(on_start)
    request_finished.connect(on_finish)
    monkeypatch.setattr(threading.Thread, "start", recording_start)
    monkeypatch.setattr(SyncToAsync, "__call__", recording_hop)
    try:
        assert (await get("/v1/models"))["status"] == 401
        assert fired == []
        assert started == []
        assert sync_hops == []
        monkeypatch.undo()
        assert (await get("/admin/login/"))["status"] == 200
        assert fired == ["started", "finished"]  # Django's own handler does send them
    finally:
        request_started.disconnect(on_start)
        request_finished.disconnect(on_finish)
