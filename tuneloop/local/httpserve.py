"""The local cloud's HTTP servers' common ground: 127.0.0.1 only, a bounded number of
connection threads, and idle sockets timed out.

``ThreadingHTTPServer`` starts a thread per connection with no limit, and a connection
that sends nothing holds its thread for ever. Here a connection gets a thread only while
fewer than ``max_connections`` are open; the next waits up to ``queue_wait_s`` for one to
end, then is answered 503 and closed. Every accepted socket times out after
``idle_timeout_s`` without a byte from the client (a kept-alive connection that went
quiet, headers or a body that never come), which ends its connection and frees its thread.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IDLE_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 128
QUEUE_WAIT_S = 10.0
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BoundedThreads(socketserver.ThreadingMixIn):
    """socketserver's thread per connection, at most ``max_connections`` at once, each
    connection's socket with the idle timeout."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    idle_timeout_s = IDLE_TIMEOUT_S
    queue_wait_s = QUEUE_WAIT_S

    def _slots(self) -> threading.BoundedSemaphore:
        slots = self.__dict__.get("_connection_slots")
        if slots is None:
            slots = self.__dict__.setdefault("_connection_slots", threading.BoundedSemaphore(self.max_connections))
        return slots

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots().acquire(timeout=self.queue_wait_s):
            try:
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            request.settimeout(self.idle_timeout_s)
            super().process_request(request, client_address)
        except BaseException:
            self._slots().release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots().release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or goes quiet mid-request is not an error worth a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, socket.timeout)):
            return
        super().handle_error(request, client_address)  # type: ignore[misc]


class LoopbackServer(BoundedThreads, ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (``port`` 0: a free one)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 (kept-alive connections) with Nagle off. The idle timeout is the
    server's (set on each accepted socket)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the second waits for the
    # client's delayed ACK of the first: +40 ms on a kept-alive connection.
    disable_nagle_algorithm = True
