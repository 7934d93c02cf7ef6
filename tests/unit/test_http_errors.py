"""The five local HTTP servers share one request side (``httpserve.Handler``): a Host that
is not loopback is refused before anything else, and a request whose handler raises gets a
500 with a one-line reason in the body its clients parse, the traceback in the server's log
and never on the terminal."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from chalice import Chalice

from tuneloop.local import sigv4
from tuneloop.local.apiserver import ApiServer
from tuneloop.local.container import serving
from tuneloop.local.gateway import Relay
from tuneloop.local.httpserve import Handler, LoopbackServer
from tuneloop.local.sagemaker.responses import SageMakerHttpServer
from tuneloop.ui.server import Backend, UiServer

CREDENTIALS = sigv4.Credentials("AKIDLOCALTEST0000000", "s" * 40)
TOKEN = "t" * 32


class Broken(RuntimeError):
    pass


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Broken("the disk is full")


class BrokenBackend(Backend):
    name = "a broken backend"

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        raise Broken("the disk is full")


class BrokenSageMaker:
    call = staticmethod(boom)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build(name: str, tmp_path: Path) -> Any:
    if name == "api":
        api = ApiServer(Chalice("broken"), TOKEN)
        api.gateway.handle_request = boom  # type: ignore[method-assign]
        return api
    if name == "sagemaker":
        return SageMakerHttpServer(BrokenSageMaker(), CREDENTIALS)  # type: ignore[arg-type]
    if name == "dynamodb":
        return Relay(0, free_port(), CREDENTIALS)  # nothing listens where DynamoDB Local should
    if name == "model server":
        (tmp_path / "code").mkdir()
        (tmp_path / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
        server = serving._Server(serving.Model(tmp_path), TOKEN)
        server.model.answer = boom  # type: ignore[method-assign]
        return server
    return UiServer(BrokenBackend())


SERVERS = ["api", "sagemaker", "dynamodb", "model server", "dashboard"]


@contextlib.contextmanager
def running_in_background(server: Any) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=SERVERS)
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    with running_in_background(build(request.param, tmp_path)) as server:
        yield request.param, server


def raw(server: Any, host: str, method: str = "GET", path: str = "/x", headers: dict[str, str] | None = None,
        body: bytes = b"") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
    answer = connection.getresponse()
    out = answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    connection.close()
    return out


def message_of(body: bytes) -> str:
    parsed = json.loads(body)
    return str(parsed.get("Message") or parsed.get("message"))


def test_a_foreign_host_is_refused_first_in_the_servers_own_shape(running: tuple[str, Any]) -> None:
    name, server = running
    status, headers, body = raw(server, "evil.example:80", "POST", "/invocations", {"Content-Length": "2"}, b"{}")
    assert status == 403, (name, body)
    assert headers.get("connection") == "close"  # the body was not read
    reason = message_of(body)
    assert "evil.example" in reason and "\n" not in reason, (name, reason)
    if name == "sagemaker":
        assert headers["x-amzn-errortype"] == "AccessDenied" and "x-amzn-requestid" in headers
    if name == "dashboard":
        assert headers["content-security-policy"].startswith("default-src 'self'")


def the_failing_request(name: str, server: Any) -> Callable[[], tuple[int, dict[str, str], bytes]]:
    """A request that reaches the part of each server that breaks."""
    host = f"127.0.0.1:{server.server_address[1]}"
    if name == "api":
        return lambda: raw(server, host, headers={"Authorization": f"Bearer {TOKEN}"})
    if name == "model server":
        return lambda: raw(server, host, "POST", "/invocations", {"Authorization": f"Bearer {TOKEN}"}, b"{}")
    if name == "dashboard":
        from tests.unit.test_ui_server import signed_in

        return lambda: raw(server, host, "GET", "/api/projects", signed_in(server))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["api", "model server", "dashboard"])
def test_a_handler_that_raises_is_a_one_line_500_and_a_logged_traceback(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with (
        running_in_background(build(name, tmp_path)) as server,
        caplog.at_level(logging.ERROR, logger="tuneloop.httpserve"),
    ):
        status, headers, body = the_failing_request(name, server)()
        again = the_failing_request(name, server)()[0]  # the server still answers on a new connection
    assert status == 500 and again == 500, (name, body)
    assert message_of(body) == "Broken: the disk is full"
    assert headers.get("connection") == "close"
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is Broken]
    assert len(logged) == 2, caplog.text
    assert "Traceback" not in capfd.readouterr().err  # socketserver's handle_error never ran


@pytest.mark.parametrize("name", ["sagemaker", "dynamodb"])
def test_a_signed_call_that_breaks_reaches_botocore_as_an_internal_error(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    server = build(name, tmp_path)
    client = boto3.client(
        name,
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS.access_key,
        aws_secret_access_key=CREDENTIALS.secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    errors_logged = caplog.at_level(logging.ERROR, logger="tuneloop.httpserve")
    with running_in_background(server), errors_logged, pytest.raises(ClientError) as raised:
        client.list_training_jobs() if name == "sagemaker" else client.list_tables()
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert error["Error"]["Code"] == "InternalError", error
    expected = "Broken: the disk is full" if name == "sagemaker" else "ConnectionRefusedError"
    assert error["Error"]["Message"].startswith(expected), error
    assert any(r.exc_info for r in caplog.records), caplog.text
    assert "Traceback" not in capfd.readouterr().err


class SlowUpstream(Handler):
    """A handler whose own call to another service times out."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        raise TimeoutError("the model server did not answer in 60 s")


def test_a_timeout_of_the_handlers_own_call_is_a_504_not_a_silent_close(caplog: pytest.LogCaptureFixture) -> None:
    """http.server takes any TimeoutError for the client's and closes without a word (and
    botocore would resend the request)."""
    with (
        running_in_background(LoopbackServer(SlowUpstream)) as server,
        caplog.at_level(logging.ERROR, logger="tuneloop.httpserve"),
    ):
        status, headers, body = raw(server, "127.0.0.1")
    assert headers.get("connection") == "close"
    assert status == 504 and message_of(body) == "TimeoutError: the model server did not answer in 60 s"
    assert any(r.exc_info and r.exc_info[0] is TimeoutError for r in caplog.records)


def test_a_terminals_process_shows_a_failure_as_one_line(tmp_path: Path) -> None:
    """`tuneloop ui` and the demo serve the dashboard from the user's terminal: a request
    that breaks it is one line there, never a traceback."""
    import io

    from tuneloop.local import httpserve

    shown = io.StringIO()
    before = list(httpserve.log.handlers), httpserve.log.propagate
    httpserve.one_line_on(shown)
    try:
        with running_in_background(build("dashboard", tmp_path)) as server:
            assert the_failing_request("dashboard", server)()[0] == 500
    finally:
        httpserve.log.handlers[:], httpserve.log.propagate = before
    assert shown.getvalue() == "httpserve: GET /api/projects failed: Broken: the disk is full\n"


def test_a_foreign_host_that_expects_100_continue_is_refused_without_one(running: tuple[str, Any]) -> None:
    """http.server answers "100 Continue" while it parses the headers; a request from a
    foreign Host gets its 403 first and is never invited to send its body."""
    name, server = running
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as connection:
        connection.sendall(b"POST /invocations HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\n"
                           b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        first = connection.makefile("rb").readline()
    assert first.startswith(b"HTTP/1.1 403 "), (name, first)


@pytest.mark.parametrize("name", ["api", "model server"])
@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_client_that_hangs_up_mid_body_is_one_line_not_an_error(
    name: str, how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client gone before its body is in (a reset, or a close after part of it) is
    nobody's error: one line, no traceback, no answer attempted; the server goes on."""
    from tests.conftest import wait_for

    with (
        running_in_background(build(name, tmp_path)) as server,
        caplog.at_level(logging.INFO, logger="tuneloop.httpserve"),
    ):
        port = server.server_address[1]
        path = "/invocations" if name == "model server" else "/projects"
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                           f"Content-Length: 1000\r\n\r\n{{\"a\": 1".encode())  # fmt: skip
        if how == "reset":
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        connection.close()
        gone = wait_for(lambda: [r for r in caplog.records if "the body stopped short" in r.getMessage()], 10)
        assert the_failing_request(name, server)()[0] == 500  # the next request is served as ever
    assert "1000-byte body" in gone[0].getMessage() and gone[0].levelno == logging.INFO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info and r.exc_info[0] for r in errors] == [Broken], caplog.text  # the next request's only
