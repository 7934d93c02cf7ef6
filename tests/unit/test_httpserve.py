"""The local cloud's HTTP servers bound their connection threads, time out idle sockets and
give each request a deadline: a caller that opens connections and sends nothing, or a byte
now and then, cannot hold the server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tuneloop.local.gateway import moto_server
from tuneloop.local.httpserve import Handler, LoopbackServer


class Hello(Handler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")


def hello_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]


@pytest.fixture(params=["http.server", "moto's werkzeug"])
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    built = LoopbackServer(Hello) if request.param == "http.server" else moto_server(hello_app)
    built.idle_timeout_s, built.read_deadline_s, built.max_connections, built.queue_wait_s = 0.5, 0.5, 2, 0.2
    thread = threading.Thread(target=built.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield built
    built.shutdown()
    built.server_close()


def port(server: Any) -> int:
    return int(server.server_address[1])


def get(server: Any) -> bytes:
    with socket.create_connection(("127.0.0.1", port(server)), timeout=5) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return b"".join(iter(lambda: connection.recv(4096), b""))


def test_it_listens_on_loopback_only(server: Any) -> None:
    assert server.server_address[0] == "127.0.0.1"
    assert get(server).endswith(b"hello")


def test_an_idle_connection_is_closed_and_gives_its_thread_back(server: Any) -> None:
    quiet = socket.create_connection(("127.0.0.1", port(server)), timeout=5)
    quiet.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers that never end
    # Read until the server closes it: the socket's own 5 s timeout fails the test if it does not.
    b"".join(iter(lambda: quiet.recv(4096), b""))
    quiet.close()
    assert get(server).endswith(b"hello")


def test_a_client_that_sends_a_byte_now_and_then_cannot_hold_a_thread(server: Any) -> None:
    """Each byte comes before the idle timeout, so no single read times out: the request's
    deadline (idle timeout + read deadline, from the start of the wait) ends it."""
    slow = socket.create_connection(("127.0.0.1", port(server)), timeout=5)
    started = time.monotonic()
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
            slow.sendall(bytes([byte]))
            time.sleep(0.3)
    except OSError:
        pass  # the server shut the connection down
    finally:
        waited = time.monotonic() - started
        slow.close()
    assert waited < 10, f"a dripping client held its connection {waited:.1f}s (it sends for 17 s)"
    assert get(server).endswith(b"hello")


def test_connections_beyond_the_bound_are_refused_not_given_threads(server: Any) -> None:
    """Two connections in the middle of their requests (not idle: nothing to shed) hold both
    threads: the next is answered 503 once it has waited queue_wait_s, not given a thread."""
    held = [socket.create_connection(("127.0.0.1", port(server)), timeout=5) for _ in range(2)]
    for connection in held:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # its headers still coming
    try:
        time.sleep(0.1)  # both accepted, each holding its thread
        answer = get(server)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:60]
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.6)  # the held threads end (closed by their clients, or their idle timeout)
    assert get(server).endswith(b"hello")


def test_when_every_thread_is_taken_the_longest_idle_connection_makes_room(server: Any) -> None:
    """Clients keep connections alive (a boto3 client each): past max_connections, the one
    that has waited longest for its next request is closed for the new one, at once, and
    every connection's slot comes back when it ends."""
    kept = []
    for n in range(12):  # six times the server's two threads
        connection = socket.create_connection(("127.0.0.1", port(server)), timeout=5)
        began = time.monotonic()
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"hello") and (piece := connection.recv(4096)):
            answer += piece
        assert answer.endswith(b"hello") and time.monotonic() - began < server.queue_wait_s + 1, (n, answer[:40])
        kept.append(connection)
    for connection in kept:
        connection.close()
    wait_for(lambda: server._slots()._value == server.max_connections, 10, "every slot back")


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("127.0.0.1:8080", True), ("localhost:1", True), ("[::1]:443", True), ("[::1]", True),
     ("::1", True), ("", False), (None, False), ("evil.example", False), ("127.0.0.1.evil.example:80", False),
     ("localhost.evil.example", False), ("[::2]:80", False), ("0.0.0.0", False)],
)  # fmt: skip
def test_every_local_server_answers_only_a_loopback_host(host: str | None, loopback: bool) -> None:
    from tuneloop.local.httpserve import is_loopback

    assert is_loopback(host) is loopback
