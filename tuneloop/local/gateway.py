"""The local cloud's stand-ins for AWS behind a SigV4 check, on loopback only.

``python -m tuneloop.local.gateway moto --port P`` serves moto (S3, CloudWatch,
EventBridge, SQS, Application Auto Scaling) in this process: moto's own port, and its
``/moto-api/`` (which resets every service or turns moto's IAM check off for anyone who
asks), are never opened. ``… dynamodb --port P`` starts DynamoDB Local as its child and
relays each verified request to it.

Every request must carry a SigV4 signature made with the local cloud's credentials
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in this process's environment, never on
its command line) and a ``Host`` that names loopback, so a web page cannot reach a service
through DNS rebinding. Anything else gets 403 with the reason, before moto or DynamoDB
Local sees it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import sigv4

log = logging.getLogger("tuneloop.gateway")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
# The largest body one request may carry: botocore uploads anything over 8 MB in parts.
MAX_BODY_BYTES = 1 << 30
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]


def credentials_from_env(env: Any = None) -> sigv4.Credentials:
    env = os.environ if env is None else env
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise RuntimeError("the local cloud's credentials are not in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return sigv4.Credentials(key, secret)


def database_key_id(credentials: sigv4.Credentials) -> str:
    """The access key ID the gateway uses with DynamoDB Local, which keeps one database per
    key ID and checks no signature. Derived from the secret key, so it is as secret: the
    public key ID (in every presigned link) opens nothing there."""
    digest = hmac.new(credentials.secret_key.encode(), b"tuneloop: DynamoDB Local database", hashlib.sha256)
    return "TLDB" + base64.b32encode(digest.digest()).decode()[:16]


def _relayed_authorization(value: str, key_id: str) -> str:
    """The request's Authorization header with its credential's key ID replaced."""
    return re.sub(r"Credential=[^/,\s]*/", f"Credential={key_id}/", value, count=1)


def host_name(host: str) -> str:
    """The Host header without its port ('[::1]:80' → '[::1]')."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(environ: Environ, status: int, code: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """An error each client's protocol parses: JSON for the JSON protocols (DynamoDB, SQS,
    CloudWatch's JSON), S3's <Error> for S3, the query protocol's <ErrorResponse> else."""
    reason = {400: "Bad Request", 403: "Forbidden", 413: "Request Entity Too Large"}[status]
    content_type = environ.get("CONTENT_TYPE", "")
    authorization = environ.get("HTTP_AUTHORIZATION", "") + environ.get("QUERY_STRING", "")
    if "json" in content_type:
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        kind = "application/x-amz-json-1.0"
    elif "/s3/aws4_request" in authorization or "%2Fs3%2Faws4_request" in authorization or not authorization:
        body = f"<Error><Code>{code}</Code><Message>{_xml(message)}</Message></Error>".encode()
        kind = "application/xml"
    else:
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{_xml(message)}</Message></Error></ErrorResponse>"
        ).encode()
        kind = "text/xml"
    return f"{status} {reason}", [("Content-Type", kind), ("Content-Length", str(len(body)))], body


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def received_headers(environ: Environ) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key.replace("_", "-").lower()
        else:
            continue
        headers.setdefault(name, []).append(str(value))
    return headers


class Verified:
    """WSGI middleware: a request reaches ``app`` only with a loopback Host and a good
    SigV4 signature; the body it was signed with is what ``app`` reads."""

    def __init__(self, app: App, credentials: sigv4.Credentials) -> None:
        self.app = app
        self.credentials = credentials

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def refuse(status: int, code: str, message: str) -> Iterable[bytes]:
            line, headers, body = refusal(environ, status, code, message)
            start_response(line, headers)
            return [body]

        host = host_name(environ.get("HTTP_HOST", ""))
        if host not in LOOPBACK_HOSTS:
            return refuse(403, "AccessDenied", f"Host {host!r} is not this machine's loopback")
        declared = environ.get("CONTENT_LENGTH") or ""
        if declared and not (declared.isascii() and declared.isdigit()):
            return refuse(400, "BadRequest", f"Content-Length {declared[:32]!r} is not a byte count")
        if declared and int(declared) > MAX_BODY_BYTES:
            return refuse(413, "EntityTooLarge", f"a request body over {MAX_BODY_BYTES} bytes")
        stream = environ["wsgi.input"]
        if declared:
            body = stream.read(int(declared))
        elif environ.get("wsgi.input_terminated"):
            body = stream.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                return refuse(413, "EntityTooLarge", f"a request body over {MAX_BODY_BYTES} bytes")
        else:
            body = b""
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        reason = sigv4.verify(environ["REQUEST_METHOD"], target, received_headers(environ), body, self.credentials)
        if reason:
            log.warning("refused %s %s: %s", environ["REQUEST_METHOD"], target.split("?")[0][:200], reason)
            code = "SignatureDoesNotMatch" if "signature" in reason else "AccessDenied"
            if "json" in environ.get("CONTENT_TYPE", ""):
                code = "InvalidSignatureException" if "signature" in reason else "UnrecognizedClientException"
            return refuse(403, code, reason)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)


class Relay(ThreadingHTTPServer):
    """DynamoDB Local behind the check, on one loopback port: each verified request goes
    to DynamoDB Local as it came, over kept-alive connections (a pool), and the answer
    comes back the same way. Plain http.server rather than werkzeug's development server,
    which closes every connection: DynamoDB is the local cloud's busiest service."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request is not an error worth a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})

    def __init__(self, port: int, backend_port: int, credentials: sigv4.Credentials) -> None:
        self.backend_port = backend_port
        self.credentials = credentials
        self.database_key_id = database_key_id(credentials)
        self.pool: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()
        super().__init__(("127.0.0.1", port), _RelayHandler)

    def forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):  # a kept-alive connection the service closed is opened again once
            try:
                connection = self.pool.get_nowait()
            except queue.Empty:
                connection = http.client.HTTPConnection("127.0.0.1", self.backend_port, timeout=300)
            try:
                connection.request(method, target, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                if attempt == 2:
                    raise
                continue
            self.pool.put(connection)
            out = [(k, v) for k, v in answer.getheaders() if k.lower() not in self.HOP_BY_HOP | {"date", "server"}]
            return answer.status, answer.reason, out, payload
        raise AssertionError("unreachable")


class _RelayHandler(BaseHTTPRequestHandler):
    server: Relay
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status, reason)
        for key, value in headers:
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        environ = {"CONTENT_TYPE": self.headers.get("Content-Type", ""), "QUERY_STRING": ""}
        host = host_name(self.headers.get("Host") or "")
        declared = self.headers.get("Content-Length") or "0"
        problem: tuple[int, str, str] | None = None
        if host not in LOOPBACK_HOSTS:
            problem = (403, "AccessDenied", f"Host {host!r} is not this machine's loopback")
        elif not (declared.isascii() and declared.isdigit()):
            problem = (400, "BadRequest", f"Content-Length {declared[:32]!r} is not a byte count")
        elif int(declared) > MAX_BODY_BYTES:
            problem = (413, "EntityTooLarge", f"a request body over {MAX_BODY_BYTES} bytes")
        if problem:
            self.close_connection = True
            line, headers, body = refusal(environ, *problem)
            return self._answer(problem[0], line.split(" ", 1)[1], headers, body)
        body = self.rfile.read(int(declared)) if int(declared) else b""
        received: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            received.setdefault(name.lower(), []).append(value)
        reason = sigv4.verify(self.command, self.path, received, body, self.server.credentials)
        if reason:
            log.warning("refused %s %s: %s", self.command, self.path.split("?")[0][:200], reason)
            code = "InvalidSignatureException" if "signature" in reason else "UnrecognizedClientException"
            line, headers, payload = refusal({**environ, "CONTENT_TYPE": "json"}, 403, code, reason)
            self.close_connection = True
            return self._answer(403, "Forbidden", headers, payload)
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in Relay.HOP_BY_HOP}
        for name in forwarded:
            if name.lower() == "authorization":
                forwarded[name] = _relayed_authorization(forwarded[name], self.server.database_key_id)
        self._answer(*self.server.forward(self.command, self.path, forwarded, body))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def serve(app: App, port: int) -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


def moto_app() -> App:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from .cloudwatch import extend_moto

    extend_moto()  # percentiles and DescribeAlarmHistory, which moto lacks
    return DomainDispatcherApplication(create_backend_app)


def start_dynamodb(java_args: list[str], port: int) -> subprocess.Popen[bytes]:
    from .services import _answers, wait_until

    proc = subprocess.Popen([*java_args, "-port", str(port)], stdin=subprocess.DEVNULL)
    wait_until(_answers(f"http://127.0.0.1:{port}"), 60, "DynamoDB Local", proc)
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=("moto", "dynamodb"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-port", type=int, help="dynamodb: DynamoDB Local's own port")
    argv = sys.argv[1:] if argv is None else argv
    own, java = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser.epilog = "dynamodb: after --, the command that runs DynamoDB Local"
    args = parser.parse_args(own)
    logging.basicConfig(level=os.environ.get("TUNELOOP_LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    credentials = credentials_from_env()
    child: subprocess.Popen[bytes] | None = None

    def stop(*_: Any) -> None:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.service == "moto":
        app = moto_app()
    else:
        if not java or not args.backend_port:
            parser.error("dynamodb needs --backend-port and, after --, the command that runs DynamoDB Local")
        child = start_dynamodb(java, args.backend_port)
        relay = Relay(args.port, args.backend_port, credentials)
        try:
            relay.serve_forever(poll_interval=0.5)
        finally:
            stop()
        return 0
    try:
        serve(Verified(app, credentials), args.port)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
