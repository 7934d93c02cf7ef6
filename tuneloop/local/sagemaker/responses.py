"""The wire protocol: SageMaker's JSON protocol (``X-Amz-Target: SageMaker.<Operation>``)
and SageMaker Runtime's ``POST /endpoints/<name>/invocations``, on loopback.

A request is answered only with a loopback ``Host`` and a SigV4 signature made with the
local cloud's credentials: creating a processing job runs a program, so nobody else may.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..enforce import Enforcer
from ..gateway import SAGEMAKER_SERVICES, Refusal, check_body, credentials_from_env, screen_request
from ..httpserve import Handler, LoopbackServer
from ..sigv4 import Credentials
from .backend import ENTRY_POINTS, LocalSageMaker
from .common import Emit, json_default
from .exceptions import ServiceError

log = logging.getLogger("tuneloop.sagemaker")


class SageMakerHttpServer(LoopbackServer):
    def __init__(self, backend: LocalSageMaker, credentials: Credentials, port: int = 0,
                 enforcer: Enforcer | None = None) -> None:  # fmt: skip
        self.backend = backend
        self.credentials = credentials
        self.enforcer = enforcer
        super().__init__(_Handler, port)


class _Handler(Handler):
    server: SageMakerHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    foreign_host = ("AccessDenied", "only this machine's loopback is served")

    def error_body(self, status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
        """SageMaker's JSON error, which botocore reads by its __type."""
        payload = json.dumps({"__type": code, "message": message}).encode()
        return payload, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer without reading on: the connection closes."""
        log.warning("refused %s %s: %s", self.command, self.path.split("?")[0][:200], message)
        self.refuse(status, code, message)

    def _verified_body(self) -> bytes | None:
        """The request's body once the caller is known to hold the local cloud's
        credentials (the headers screened before the body is read); None once refused."""
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        screened = screen_request(
            self.command, self.path, headers, self.server.credentials, json_protocol=True, services=SAGEMAKER_SERVICES
        )
        if isinstance(screened, Refusal):
            self._refuse(screened.status, screened.code, screened.message)
            return None
        body = self.read_body(int(self.headers.get("Content-Length") or "0"))
        refused = check_body(self.command, self.path, headers, body, self.server.credentials, True,
                             self.server.enforcer)  # fmt: skip
        if refused:
            self._refuse(refused.status, refused.code, refused.message)
            return None
        return body

    def _unsupported(self) -> None:
        self._refuse(405, "UnknownOperationException", f"{self.command} is not a SageMaker request")

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _unsupported

    def do_POST(self) -> None:
        verified = self._verified_body()
        if verified is None:
            return
        if self.path.startswith("/endpoints/") and self.path.endswith("/invocations"):
            return self._invoke(verified)
        if self.path.startswith("/endpoints/") and self.path.endswith("/invocations-response-stream"):
            return self._invoke_stream(verified)
        body = verified or b"{}"
        target = self.headers.get("X-Amz-Target", "")
        operation = target.split(".", 1)[1] if target.startswith("SageMaker.") else ""
        try:
            if not operation:
                raise ServiceError("UnknownOperationException", f"missing or foreign X-Amz-Target {target!r}")
            params = json.loads(body or b"{}")
            result = self.server.backend.call(operation, params)
            status, payload = 200, json.dumps(result, default=json_default).encode()
        except ServiceError as exc:
            status = exc.status
            payload = json.dumps({"__type": exc.code, "message": exc.message}).encode()
        except json.JSONDecodeError as exc:
            status, payload = 400, json.dumps({"__type": "SerializationException", "message": str(exc)}).encode()
        self.reply(status, payload, {"Content-Type": "application/x-amz-json-1.1"})

    def _runtime(self, call: Any, suffix: str, accept_header: str, body: bytes) -> tuple[int, Any, Mapping[str, str]]:
        """A SageMaker Runtime call on ``/endpoints/<name><suffix>``: (status, payload, headers),
        a refused request answered as the Runtime answers it."""
        name = unquote(self.path[len("/endpoints/") : -len(suffix)])
        try:
            result: tuple[int, Any, Mapping[str, str]] = call(
                name,
                body,
                self.headers.get("Content-Type", "application/json"),
                self.headers.get(accept_header, "application/json"),
                self.headers.get("X-Amzn-SageMaker-Inference-Id"),
            )
            return result
        except ServiceError as exc:
            headers = {"x-amzn-ErrorType": exc.code, "Content-Type": "application/json"}
            return exc.status, json.dumps({"message": exc.message}).encode(), headers

    def _invoke(self, body: bytes) -> None:
        """SageMaker Runtime InvokeEndpoint (REST-JSON): POST /endpoints/<name>/invocations."""
        self.reply(*self._runtime(self.server.backend.runtime.invoke, "/invocations", "Accept", body))

    def _invoke_stream(self, body: bytes) -> None:
        """SageMaker Runtime InvokeEndpointWithResponseStream: the answer as event-stream
        messages, each one HTTP chunk as soon as the model has written it."""
        call = self.server.backend.runtime.invoke_stream
        status, payload, headers = self._runtime(call, "/invocations-response-stream", "X-Amzn-SageMaker-Accept", body)
        if status != 200:
            return self.reply(status, payload, headers)
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for message in payload:
            self.wfile.write(f"{len(message):X}\r\n".encode() + message + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def every_answer(self) -> Mapping[str, str]:
        return {"x-amzn-RequestId": str(uuid.uuid4())}


def serve(
    home: Path,
    s3: Any,
    emit: Emit,
    port: int = 0,
    cloudwatch: Any = None,
    credentials: Credentials | None = None,
    entry_points: frozenset[str] = ENTRY_POINTS,
    enforcer: Enforcer | None = None,
) -> SageMakerHttpServer:
    """Start the server on a background thread; returns it (``.port``, ``.shutdown()``).
    The same port serves SageMaker Runtime's InvokeEndpoint (``/endpoints/<name>/invocations``).
    It answers requests signed with ``credentials`` (default: the environment's), and a
    principal's (``sigv4.Credentials.principal``) as far as ``enforcer`` allows."""
    credentials = credentials or credentials_from_env()
    server = SageMakerHttpServer(LocalSageMaker(home, s3, emit, cloudwatch, entry_points), credentials, port, enforcer)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server
