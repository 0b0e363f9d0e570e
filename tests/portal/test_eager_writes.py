"""eager_writes: Twisted's TCP connections send at once when nothing is queued, and queue in order otherwise.

A real socket pair and Twisted's own `tcp.Connection`; the reactor is a recorder
of `addWriter` (what the portal's writes no longer wait for).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol

from portal import eager_writes


class Reactor:
    """Records the connections that asked to be told when their socket is writable."""

    def __init__(self) -> None:
        self.writers: list[tcp.Connection] = []

    def addWriter(self, writer: tcp.Connection) -> None:  # Twisted's name
        if writer not in self.writers:  # as Twisted's reactors: once
            self.writers.append(writer)

    def removeWriter(self, writer: tcp.Connection) -> None:  # Twisted's name
        self.writers.remove(writer)


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[tcp.Connection, socket.socket, Reactor]]:
    for name in ("write", "writeSequence"):  # undone after the test: install() patches the class
        monkeypatch.setattr(tcp.Connection, name, getattr(tcp.Connection, name))
    eager_writes.install()
    ours, theirs = socket.socketpair()
    reactor = Reactor()
    # Zope interfaces, unseen by mypy: Protocol provides IProtocol; the recorder is reactor enough.
    connection = tcp.Connection(ours, Protocol(), reactor)  # type: ignore[arg-type]
    connection.connected = 1
    yield connection, theirs, reactor
    ours.close()
    theirs.close()


def received(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(5)
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def test_a_write_with_nothing_queued_is_sent_without_waiting_for_the_reactor(pair) -> None:
    connection, peer, reactor = pair
    connection.write(b"data: one\n\n")
    connection.writeSequence([b"data: ", b"two\n\n"])
    assert received(peer, 22) == b"data: one\n\ndata: two\n\n"
    assert reactor.writers == []


def test_what_the_kernel_does_not_take_is_queued_and_later_writes_follow_it_in_order(pair) -> None:
    connection, peer, reactor = pair
    connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 8192  # 2 MiB: more than the socket takes at once
    connection.write(big)
    assert reactor.writers == [connection]  # the rest waits for the reactor, as in Twisted
    assert 0 < connection._tempDataLen < len(big)
    connection.write(b"tail")  # behind the queue, not before it
    data = b""
    peer.settimeout(5)
    while reactor.writers:
        data += peer.recv(1 << 20)
        assert connection.doWrite() is None  # what the reactor calls once the socket is writable
    data += received(peer, len(big) + 4 - len(data))
    assert data == big + b"tail"


def test_a_write_to_a_closed_peer_raises_nothing_and_leaves_the_loss_to_twisted(pair) -> None:
    connection, peer, reactor = pair
    peer.close()
    connection.write(b"data: lost\n\n")
    assert reactor.writers == [connection]
    assert connection.doWrite() is main.CONNECTION_LOST  # the reactor then drops the connection
