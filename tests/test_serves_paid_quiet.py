"""A server that does not answer whether it charges is not asked again at every read of ``Client.is_local``: a
batch reads it many times per item, and each probe of a mute server waits its whole time-out."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import qwenvl
from qwenvl import client as client_module
from qwenvl.backends import openai as openai_backend


@pytest.fixture
def mute() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts every connection and never answers: its /v1 base URL and the connections it took."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", held
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    sock.close()


def test_a_mute_server_is_asked_once_whether_it_charges(mute, monkeypatch):
    url, held = mute
    monkeypatch.setattr(openai_backend, "DETECT_TIMEOUT_S", 0.5)  # each probe's time-out, short for the test
    c = qwenvl.Client(backend="openai", base_url=url, model="mymodel", api_key="k")
    assert c.is_local  # it cannot be asked: treated as local (nothing can be sent to it either)
    asked = len(held)
    assert asked >= 1
    for _ in range(5):
        assert c.is_local
    assert len(held) == asked  # not asked again while it was just found mute


def test_it_is_asked_again_after_the_quiet_time(mute, monkeypatch):
    url, held = mute
    monkeypatch.setattr(openai_backend, "DETECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(client_module, "SERVES_PAID_QUIET_S", 0.0)
    c = qwenvl.Client(backend="openai", base_url=url, model="mymodel", api_key="k")
    assert c.is_local
    asked = len(held)
    assert c.is_local
    assert len(held) > asked
