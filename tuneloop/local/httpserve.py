"""The local cloud's HTTP servers' common ground: 127.0.0.1 only, a bounded number of
connection threads, and clients that cannot hold them.

``ThreadingHTTPServer`` starts a thread per connection with no limit, and a connection
that sends nothing holds its thread for ever. Here a connection gets a thread only while
fewer than ``max_connections`` are open. When they all are, the connection that has waited
longest for its next request (a client's kept-alive connection, gone quiet) is closed to
make room, as a busy server sheds idle keep-alives; with none idle, the new one waits up
to ``queue_wait_s`` for a thread, then is answered 503 and closed. Every accepted socket
times out after ``idle_timeout_s`` without a byte from the client, and a request must
arrive whole (its line, headers and body) within ``idle_timeout_s + read_deadline_s`` of
the start of the wait for it: a client that sends a byte now and then cannot hold a thread
either (``DEADLINES`` shuts such a connection down). Handlers read a body with
``read_body``.

``Handler`` is every server's request side: it answers only a ``Host`` that names loopback
(``is_loopback``), so a web page cannot reach a server by DNS rebinding; it writes every
answer (``reply``) and every refusal (``refuse``, in the body shape the server's clients
parse: ``error_body``); and a request whose handler raises is answered 500 (504 for a
timeout of the handler's own call) with a one-line reason, its traceback in the server's
log.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chalicelib.spec import TuneloopError

log = logging.getLogger("tuneloop.httpserve")


class ClientGoneError(TuneloopError, ConnectionError):
    """A request's body stopped short: the client hung up or reset, or went quiet until its
    deadline shut the connection. No answer is attempted."""


# The names a loopback request's Host may carry (IPv6 in brackets, as a Host header has it;
# urllib's hostname drops them).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def host_name(host: str) -> str:
    """The Host header without its port ('[::1]:80' → '[::1]', '127.0.0.1:8080' → '127.0.0.1')."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str | None) -> bool:
    """Whether a Host header (port or not) names this machine's loopback."""
    return host_name(host or "") in LOOPBACK_HOSTS


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        failure = record.exc_info[1] if record.exc_info else None
        said = f": {type(failure).__name__}: {failure}" if failure is not None else ""
        return f"{record.name.split('.')[-1]}: {record.getMessage()}{said}"


def one_line_on(stream: Any) -> None:
    """In a terminal's process (``tuneloop ui``, ``demo``): this module's records as one
    line each on ``stream``, never a traceback (the local cloud's services log to files)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_OneLine())
    log.addHandler(handler)
    log.propagate = False


IDLE_TIMEOUT_S = 60.0
READ_DEADLINE_S = 60.0
MAX_CONNECTIONS = 128
QUEUE_WAIT_S = 10.0
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Deadlines:
    """Connections whose request must be in by a time: past it, the connection is shut
    down, which ends the read that holds its thread. One watcher thread per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.due: dict[Any, float] = {}
        self.thread: threading.Thread | None = None

    def watch(self, connection: Any, seconds: float) -> None:
        with self.lock:
            self.due[connection] = time.monotonic() + seconds
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self.thread.start()

    def done(self, connection: Any) -> None:
        with self.lock:
            self.due.pop(connection, None)

    def _run(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self.lock:
                late = [connection for connection, due in self.due.items() if due <= now]
                for connection in late:
                    del self.due[connection]
            for connection in late:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


DEADLINES = Deadlines()
IDLE_LOCK = threading.Lock()


class BoundedThreads(socketserver.ThreadingMixIn):
    """socketserver's thread per connection, at most ``max_connections`` at once, each
    connection's socket with the idle timeout."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    idle_timeout_s = IDLE_TIMEOUT_S
    read_deadline_s = READ_DEADLINE_S
    queue_wait_s = QUEUE_WAIT_S

    def _slots(self) -> threading.BoundedSemaphore:
        slots = self.__dict__.get("_connection_slots")
        if slots is None:
            slots = self.__dict__.setdefault("_connection_slots", threading.BoundedSemaphore(self.max_connections))
        return slots

    def _idle(self) -> dict[Any, float]:
        """Connections waiting for their next request, and since when (under IDLE_LOCK)."""
        return self.__dict__.setdefault("_idle_connections", {})

    def mark_idle(self, connection: Any) -> None:
        with IDLE_LOCK:
            self._idle()[connection] = time.monotonic()

    def mark_busy(self, connection: Any) -> None:
        with IDLE_LOCK:
            self._idle().pop(connection, None)

    def _shed_idle(self) -> None:
        """Close the connection that has waited longest for a request: its thread ends."""
        with IDLE_LOCK:
            idle = self._idle()
            oldest = min(idle, key=idle.__getitem__, default=None)
            if oldest is not None:
                del idle[oldest]
        if oldest is not None:
            try:
                oldest.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def process_request(self, request: Any, client_address: Any) -> None:
        """One slot per connection, released when its thread ends."""
        slots = self._slots()
        if not slots.acquire(blocking=False):
            self._shed_idle()
            if not slots.acquire(timeout=self.queue_wait_s):
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
            DEADLINES.done(request)
            self.mark_busy(request)
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


class Deadlined(BaseHTTPRequestHandler):
    """A request's line, headers and body must arrive within the server's idle timeout plus
    its read deadline, counted from the start of the wait for the request. The deadline
    ends once the headers are in for a request without a body, else once ``read_body``
    has read it."""

    server: Any

    def handle_one_request(self) -> None:
        DEADLINES.watch(self.connection, self.server.idle_timeout_s + self.server.read_deadline_s)
        self.server.mark_idle(self.connection)  # until its request line is in: the first to go when full
        try:
            self.one_request()
        finally:
            DEADLINES.done(self.connection)

    def one_request(self) -> None:
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server.mark_busy(self.connection)
        parsed = super().parse_request()
        length = self.headers.get("Content-Length", "0") if parsed else "0"
        if parsed and length in ("", "0") and not self.headers.get("Transfer-Encoding"):
            DEADLINES.done(self.connection)
        return parsed

    def read_body(self, length: int) -> bytes:
        """The request's body, whole (``ClientGoneError`` if it stops short)."""
        try:
            body = self.rfile.read(length) if length else b""
        except OSError as exc:  # a reset, or the idle timeout: either way the client is gone
            raise ClientGoneError(f"{type(exc).__name__} while reading a {length}-byte body") from exc
        finally:
            DEADLINES.done(self.connection)
        if len(body) < length:
            raise ClientGoneError(f"the connection ended {len(body)} bytes into a {length}-byte body")
        return body


class Handler(Deadlined):
    """HTTP/1.1 (kept-alive connections) with Nagle off. The idle timeout is the
    server's (set on each accepted socket)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the second waits for the
    # client's delayed ACK of the first: +40 ms on a kept-alive connection.
    disable_nagle_algorithm = True
    # What a request whose Host is not loopback is told, as (code, message); the Host is appended.
    foreign_host = ("Forbidden", "only this machine's loopback is served")
    answering = False  # whether the current request's status line has gone out

    def every_answer(self) -> Mapping[str, str]:
        """Headers every answer of this server carries (the dashboard's security headers)."""
        return {}

    def error_body(self, status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
        """A refusal's body and headers, as this server's clients parse one."""
        return json.dumps({"Code": code, "Message": message}).encode(), {"Content-Type": "application/json"}

    def send_response(self, code: int, message: str | None = None) -> None:
        self.answering = True
        super().send_response(code, message)

    def reply(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        reason: str | None = None,
    ) -> None:
        """One whole answer: the status, the server's ``every_answer`` headers, ``headers`` (any
        Content-Length or Connection among them is this method's to set), the body (none
        for HEAD)."""
        self.send_response(status, reason)
        given = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        for name, value in [*self.every_answer().items(), *given]:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def refuse(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, close: bool = True
    ) -> None:
        """An error answer in the server's shape. ``close``: the request's body may be
        unread, so the connection closes after it."""
        if close:
            self.close_connection = True
        body, shaped = self.error_body(status, code, message)
        self.reply(status, body, {**shaped, **(headers or {})})

    def handle_expect_100(self) -> bool:
        """http.server says "100 Continue" from inside ``parse_request``, before the Host
        check below: a request that will be refused is not invited to send its body."""
        if not is_loopback(self.headers.get("Host")):
            return True
        return super().handle_expect_100()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        host = self.headers.get("Host")
        if is_loopback(host):
            return True
        code, message = self.foreign_host
        log.warning("refused %s from Host %r: not loopback", self.command, (host or "")[:100])
        self.refuse(403, code, f"{message} (Host {(host or '')[:100]!r})")
        return False

    def one_request(self) -> None:
        """http.server's request cycle, but the handler's call apart: its exceptions (a
        timeout of its own call to another service included, which http.server takes for
        the client's and answers with nothing) get an answer."""
        self.answering = False
        self.command = None  # type: ignore[assignment]  # set once a request line is parsed
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
        except TimeoutError:  # the client went quiet before its request was in
            self.close_connection = True
            return
        method = getattr(self, f"do_{self.command}", None)
        if method is None:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
            return
        try:
            method()
            self.wfile.flush()
        except ClientGoneError as exc:
            self.close_connection = True
            log.info("%s %s: no answer, the body stopped short: %s", self.command, self.path.split("?")[0][:200], exc)
        except Exception as exc:
            if isinstance(exc, (ConnectionError, TimeoutError)) and self.answering:
                raise  # the client hung up or went quiet mid-answer: the server's handle_error says nothing
            self.close_connection = True
            log.exception("%s %s failed", self.command, self.path.split("?")[0][:200])
            if not self.answering:
                status, code = (504, "Timeout") if isinstance(exc, TimeoutError) else (500, "InternalError")
                try:
                    self.refuse(status, code, f"{type(exc).__name__}: {exc}"[:500])
                except OSError:
                    pass
