"""The local cloud's stand-ins for AWS behind a SigV4 check, on loopback only.

``python -m tuneloop.local.gateway moto --port-file F`` serves moto (S3, CloudWatch,
EventBridge, SQS, Application Auto Scaling) in this process: moto's own port is never
opened, and its ``/moto-api/`` (which resets every service or turns moto's IAM check off
for anyone who asks) is refused. ``… dynamodb --port-file F --backend-port-file B -- java
…`` starts DynamoDB Local as its child and relays each verified request to it. Each binds
a port the kernel picks (``--port 0``, the default) and writes it to its port file once
it listens: no port is chosen first and bound later, so no other process can take it.

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
import http
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import sigv4
from .enforce import Denial, Enforcer, request_call
from .httpserve import DEADLINES, BoundedThreads, Deadlined, Handler, LoopbackServer, host_name, is_loopback

log = logging.getLogger("tuneloop.gateway")
# The largest body a request may carry, by the service its signature names. An S3 body
# is read only once its signature is verified (S3 signs the payload's hash in a header);
# the JSON and query protocols sign a hash they do not send, so their bodies are read
# before the signature can be checked, and are bounded near what AWS takes.
BODY_LIMITS = {
    "s3": 1 << 30,  # one PUT; the local cloud's own uploads go in one request up to 1 GiB
    "dynamodb": 16 << 20,  # BatchWriteItem's 16 MB
    "sagemaker": 6 * 1024 * 1024 + 1024,  # InvokeEndpoint's 6 MB payload
}
DEFAULT_BODY_LIMIT = 2 << 20  # CloudWatch, EventBridge, SQS, Application Auto Scaling: 1 MB requests
# moto's own API resets every service, or turns its IAM check off, for whoever asks.
MOTO_API = "/moto-api"
# What each server serves, by the service name a signature's scope carries.
MOTO_SERVICES = frozenset({"s3", "monitoring", "events", "sqs", "application-autoscaling"})
DYNAMODB_SERVICES = frozenset({"dynamodb"})
SAGEMAKER_SERVICES = frozenset({"sagemaker"})  # SageMaker and SageMaker Runtime sign as "sagemaker"
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


def refusal(environ: Environ, status: int, code: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """An error each client's protocol parses: JSON for the JSON protocols (DynamoDB, SQS,
    CloudWatch's JSON), S3's <Error> for S3, the query protocol's <ErrorResponse> else."""
    reason = http.HTTPStatus(status).phrase
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


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


def signature_code(reason: str, json_protocol: bool) -> str:
    if json_protocol:
        return "InvalidSignatureException" if "signature" in reason else "UnrecognizedClientException"
    return "SignatureDoesNotMatch" if "signature" in reason else "AccessDenied"


def moto_api(path: str) -> bool:
    """Whether ``path`` (as sent, or as decoded) would reach moto's own API, which moto
    routes by the prefix alone: percent-escapes decoded and repeated slashes collapsed
    first, as a router may see it."""
    return re.sub("/+", "/", unquote(path.split("?", 1)[0])).startswith(MOTO_API)


def screen_request(
    method: str,
    target: str,
    headers: dict[str, list[str]],
    credentials: sigv4.Credentials,
    json_protocol: bool,
    services: frozenset[str],
) -> Refusal | int:
    """What is checked before a body is read: a loopback Host, an origin-form target that is
    not moto's own API, a Content-Length that is a byte count, the signature as far as the
    headers go, made for one of the ``services`` this server serves, and the body's size
    against that service's bound. The most bytes the body may have, or why not."""
    host = host_name((headers.get("host") or [""])[0])
    if not is_loopback(host):
        return Refusal(403, "AccessDenied", f"Host {host!r} is not this machine's loopback")
    path = target.split("?", 1)[0]
    if not path.startswith("/") or path.startswith("//"):
        return Refusal(400, "BadRequest", "the request target must be a path (/…), not a URL or a network path")
    if moto_api(path):
        return Refusal(403, "AccessDenied", "moto's own API (/moto-api/) is not served by the local cloud")
    declared = (headers.get("content-length") or [""])[0]
    if declared and not (declared.isascii() and declared.isdigit()):
        return Refusal(400, "BadRequest", f"Content-Length {declared[:32]!r} is not a byte count")
    claim = sigv4.screen(method, target, headers, credentials)
    if isinstance(claim, str):
        log.warning("refused %s %s: %s", method, path[:200], claim)
        return Refusal(403, signature_code(claim, json_protocol), claim)
    if claim.service not in services:
        reason = f"this endpoint serves {', '.join(sorted(services))}; the request is signed for {claim.service}"
        return Refusal(403, signature_code(reason, json_protocol), reason)
    limit = BODY_LIMITS.get(claim.service, DEFAULT_BODY_LIMIT)
    if declared and int(declared) > limit:
        return Refusal(413, "EntityTooLarge", f"a {claim.service} request body over {limit} bytes")
    return limit


def check_body(
    method: str,
    target: str,
    headers: dict[str, list[str]],
    body: bytes,
    credentials: sigv4.Credentials,
    json_protocol: bool,
    enforcer: Enforcer | None = None,
) -> Refusal | None:
    """The rest of the signature check, once the (bounded) body is in; then, for a request
    a principal signed, whether its policies allow it (``enforcer``)."""
    claim = sigv4.verified(method, target, headers, body, credentials)
    if isinstance(claim, str):
        log.warning("refused %s %s: %s", method, target.split("?")[0][:200], claim)
        return Refusal(403, signature_code(claim, json_protocol), claim)
    if enforcer is None or not claim.principal:
        return None
    placed = request_call(claim.service, method, target, headers, body)
    if isinstance(placed, str):
        log.warning("AccessDenied: %s: a request not placed: %s", claim.principal, placed)
        denial: Denial | None = Denial(claim.principal, f"{claim.service}:?", "*", placed)
    else:
        denial = enforcer.check(claim.principal, claim.service, *placed)
    if denial is None:
        return None
    if json_protocol:
        return Refusal(400, "AccessDeniedException", denial.message(enforcer.stage))
    return Refusal(403, "AccessDenied", denial.message(enforcer.stage))


class Verified:
    """WSGI middleware: a request reaches ``app`` only with a loopback Host and a good
    SigV4 signature; the body it was signed with is what ``app`` reads. The headers are
    screened before any of the body is read."""

    def __init__(self, app: App, credentials: sigv4.Credentials, enforcer: Enforcer | None = None) -> None:
        self.app = app
        self.credentials = credentials
        self.enforcer = enforcer

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def refuse(refused: Refusal) -> Iterable[bytes]:
            line, headers, body = refusal(environ, refused.status, refused.code, refused.message)
            start_response(line, [*headers, ("Connection", "close")])
            return [body]

        method = environ["REQUEST_METHOD"]
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        headers = received_headers(environ)
        json_protocol = "json" in environ.get("CONTENT_TYPE", "")
        if moto_api(environ.get("PATH_INFO", "")):  # the path moto routes on, as the server decoded it
            return refuse(Refusal(403, "AccessDenied", "moto's own API (/moto-api/) is not served by the local cloud"))
        screened = screen_request(method, target, headers, self.credentials, json_protocol, MOTO_SERVICES)
        if isinstance(screened, Refusal):
            return refuse(screened)
        declared = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if declared:
            body = stream.read(int(declared))
        elif environ.get("wsgi.input_terminated"):
            body = stream.read(screened + 1)
            if len(body) > screened:
                return refuse(Refusal(413, "EntityTooLarge", f"a request body over {screened} bytes"))
        else:
            body = b""
        DEADLINES.done(environ.get("werkzeug.socket"))  # the request is in
        refused = check_body(method, target, headers, body, self.credentials, json_protocol, self.enforcer)
        if refused:
            return refuse(refused)
        if "X-Amz-Signature=" in target.partition("?")[2]:
            # A presigned request was checked by its query: moto must not route on an
            # Authorization header the signature does not cover.
            environ.pop("HTTP_AUTHORIZATION", None)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)


class Relay(LoopbackServer):
    """DynamoDB Local behind the check, on one loopback port: each verified request goes
    to DynamoDB Local as it came, over kept-alive connections (a pool), and the answer
    comes back the same way. Plain http.server rather than werkzeug's development server,
    which closes every connection: DynamoDB is the local cloud's busiest service."""

    HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})

    def __init__(self, port: int, backend_port: int, credentials: sigv4.Credentials,
                 enforcer: Enforcer | None = None) -> None:  # fmt: skip
        self.backend_port = backend_port
        self.credentials = credentials
        self.enforcer = enforcer
        self.database_key_id = database_key_id(credentials)
        self.pool: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()
        super().__init__(_RelayHandler, port)

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


class _RelayHandler(Handler):
    server: Relay

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    foreign_host = ("AccessDenied", "only this machine's loopback is served")

    def error_body(self, status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
        """DynamoDB's JSON error."""
        _, headers, body = refusal({"CONTENT_TYPE": "json", "QUERY_STRING": ""}, status, code, message)
        return body, dict(headers)

    def _refuse(self, refused: Refusal) -> None:
        self.refuse(refused.status, refused.code, refused.message)

    def _handle(self) -> None:
        received: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            received.setdefault(name.lower(), []).append(value)
        screened = screen_request(
            self.command, self.path, received, self.server.credentials, json_protocol=True, services=DYNAMODB_SERVICES
        )
        if isinstance(screened, Refusal):
            return self._refuse(screened)
        body = self.read_body(int(self.headers.get("Content-Length") or "0"))
        refused = check_body(self.command, self.path, received, body, self.server.credentials, True,
                             self.server.enforcer)  # fmt: skip
        if refused:
            return self._refuse(refused)
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in Relay.HOP_BY_HOP}
        for name in forwarded:
            if name.lower() == "authorization":
                forwarded[name] = _relayed_authorization(forwarded[name], self.server.database_key_id)
        status, reason, headers, answer = self.server.forward(self.command, self.path, forwarded, body)
        self.reply(status, answer, headers, reason)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def moto_server(app: App, port: int = 0) -> Any:
    """moto's WSGI app on werkzeug's server (moto's request handler keeps S3's underscored
    metadata headers), on 127.0.0.1, with bounded threads and the idle timeout."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import BaseWSGIServer

    class MotoHandler(Deadlined, MotoRequestHandler):
        pass

    class MotoServer(BoundedThreads, BaseWSGIServer):
        multithread = True

    return MotoServer("127.0.0.1", port, app, handler=MotoHandler)


def moto_app() -> App:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from .cloudwatch import extend_moto

    extend_moto()  # percentiles and DescribeAlarmHistory, which moto lacks
    return DomainDispatcherApplication(create_backend_app)


def start_dynamodb(java_args: list[str], port_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """DynamoDB Local as this process's child, and the port it listens on: its launcher
    binds a port the kernel picks and writes it to ``port_file``."""
    from .services import _answers, wait_until

    proc = subprocess.Popen(java_args, stdin=subprocess.DEVNULL)
    try:
        wait_until(port_file.is_file, 60, "DynamoDB Local", proc)
        port = int(port_file.read_text())
        wait_until(_answers(f"http://127.0.0.1:{port}"), 60, "DynamoDB Local", proc)
    except BaseException:  # not left running where nothing knows of it
        proc.kill()
        proc.wait(10)
        raise
    return proc, port


def announce(port: int, port_file: Path | None) -> None:
    """Say where this gateway listens: ``port_file`` appears whole, once it does."""
    if port_file is not None:
        partial = port_file.with_name(port_file.name + ".tmp")
        partial.write_text(str(port))
        partial.replace(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=("moto", "dynamodb"))
    parser.add_argument("--port", type=int, default=0, help="0 (the default): one the kernel picks")
    parser.add_argument("--port-file", type=Path, help="where to write the port once listening")
    parser.add_argument(
        "--backend-port-file", type=Path, help="dynamodb: where DynamoDB Local's launcher writes its port"
    )
    argv = sys.argv[1:] if argv is None else argv
    own, java = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser.epilog = "dynamodb: after --, the command that runs DynamoDB Local"
    args = parser.parse_args(own)
    logging.basicConfig(level=os.environ.get("TUNELOOP_LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s")
    credentials = credentials_from_env()
    enforcer = Enforcer.from_env()
    child: subprocess.Popen[bytes] | None = None

    def stop(*_: Any) -> None:
        if enforcer is not None:
            enforcer.save_usage()
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
        server = moto_server(Verified(moto_app(), credentials, enforcer), args.port)
    else:
        if not java or not args.backend_port_file:
            parser.error("dynamodb needs --backend-port-file and, after --, the command that runs DynamoDB Local")
        child, backend_port = start_dynamodb(java, args.backend_port_file)
        server = Relay(args.port, backend_port, credentials, enforcer)
    announce(int(server.server_address[1]), args.port_file)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
