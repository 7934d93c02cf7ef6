"""The wire protocol: SageMaker's JSON protocol (``X-Amz-Target: SageMaker.<Operation>``)
and SageMaker Runtime's ``POST /endpoints/<name>/invocations``, on loopback."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .backend import LocalSageMaker
from .common import Emit, json_default
from .exceptions import ServiceError

log = logging.getLogger("tuneloop.sagemaker")


class SageMakerHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: LocalSageMaker, port: int = 0) -> None:
        self.backend = backend
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: SageMakerHttpServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the second waits for the
    # client's delayed ACK of the first: +40 ms on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.startswith("/endpoints/") and self.path.endswith("/invocations"):
            return self._invoke(self.rfile.read(length))
        body = self.rfile.read(length) if length else b"{}"
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
        self._reply(status, payload, {"Content-Type": "application/x-amz-json-1.1"})

    def _invoke(self, body: bytes) -> None:
        """SageMaker Runtime InvokeEndpoint (REST-JSON): POST /endpoints/<name>/invocations."""
        name = unquote(self.path[len("/endpoints/") : -len("/invocations")])
        try:
            status, payload, headers = self.server.backend.runtime.invoke(
                name,
                body,
                self.headers.get("Content-Type", "application/json"),
                self.headers.get("Accept", "application/json"),
            )
        except ServiceError as exc:
            status, headers = exc.status, {"x-amzn-ErrorType": exc.code, "Content-Type": "application/json"}
            payload = json.dumps({"message": exc.message}).encode()
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(home: Path, s3: Any, emit: Emit, port: int = 0, cloudwatch: Any = None) -> SageMakerHttpServer:
    """Start the server on a background thread; returns it (``.port``, ``.shutdown()``).
    The same port serves SageMaker Runtime's InvokeEndpoint (``/endpoints/<name>/invocations``)."""
    server = SageMakerHttpServer(LocalSageMaker(home, s3, emit, cloudwatch), port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server
