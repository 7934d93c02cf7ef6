"""The local API's front door on a real socket: auth before the body, loopback Host only,
a strict Content-Length."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import app as app_module
from tuneloop.local.apiserver import ApiServer

pytestmark = pytest.mark.integration
TOKEN = "t" * 32


@pytest.fixture
def server(deps: Any) -> Iterator[ApiServer]:
    api = ApiServer(app_module.app, TOKEN)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()


def exchange(server: ApiServer, head: str, body: bytes = b"") -> str:
    """Send a request's head (and any body), return the status line. A server that waited
    for body bytes never sent would time this out."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        return sock.recv(65536).decode(errors="replace").split("\r\n", 1)[0]


def test_no_token_is_refused_before_any_body_is_read(server: ApiServer) -> None:
    head = f"POST /projects HTTP/1.1\nHost: 127.0.0.1:{server.port}\nContent-Type: application/json\n"
    head += "Content-Length: 1000000\n"
    assert exchange(server, head) == "HTTP/1.1 401 Unauthorized"  # the million bytes were never sent


@pytest.mark.parametrize("length", ["-1", "abc", "²"])
def test_a_content_length_that_is_not_a_byte_count_is_a_400(server: ApiServer, length: str) -> None:
    head = f"POST /projects HTTP/1.1\nHost: 127.0.0.1:{server.port}\nAuthorization: Bearer {TOKEN}\n"
    head += f"Content-Type: application/json\nContent-Length: {length}\n"
    assert exchange(server, head) == "HTTP/1.1 400 Bad Request"


def test_a_foreign_host_header_is_refused(server: ApiServer) -> None:
    """DNS rebinding: a web page's request reaches 127.0.0.1 with its own Host name."""
    head = f"GET /projects HTTP/1.1\nHost: attacker.example:{server.port}\nAuthorization: Bearer {TOKEN}\n"
    assert exchange(server, head) == "HTTP/1.1 403 Forbidden"
    head = f"GET /projects HTTP/1.1\nHost: localhost:{server.port}\nAuthorization: Bearer {TOKEN}\n"
    assert exchange(server, head) == "HTTP/1.1 200 OK"
