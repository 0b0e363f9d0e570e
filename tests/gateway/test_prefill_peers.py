"""Where a decode worker may send a prompt: to the peers the portal named, or on loopback only.

With a worker token only the portal reaches the decode worker, and the
portal names only our own registered prefill workers (see
test_dispatch_policy); without one the worker serves loopback only, and a
header naming any other address is ignored. Either way, only http(s) URLs.
"""

from __future__ import annotations

import pytest

from inference.worker.disaggregation import may_ask

LOOPBACK = ["http://127.0.0.1:9000", "http://[::1]:9000", "http://localhost:9000"]
ELSEWHERE = ["http://203.0.113.9:1", "https://evil.example.test/v1", "http://10.0.0.5:9000"]
NEVER = ["file:///etc/passwd", "gopher://127.0.0.1:70", "not a url", "http://127.0.0.1:9000\r\nX-Injected: 1"]


@pytest.mark.parametrize("address", LOOPBACK)
def test_a_loopback_peer_is_asked_with_or_without_a_token(address: str) -> None:
    assert may_ask(address, token=None)
    assert may_ask(address, token="t")


@pytest.mark.parametrize("address", ELSEWHERE)
def test_another_host_is_asked_only_when_the_portal_named_it_behind_the_token(address: str) -> None:
    assert not may_ask(address, token=None)
    assert may_ask(address, token="t")


@pytest.mark.parametrize("address", NEVER)
def test_what_is_not_an_http_url_is_never_asked(address: str) -> None:
    assert not may_ask(address, token="t")
