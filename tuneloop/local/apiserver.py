"""The app's HTTP API on loopback, behind a bearer token generated at start-up.

Requests go through Chalice's own local API Gateway emulation (routing, 405s, 415s),
so the routes behave as on API Gateway; this layer adds what the deployed stages get
from IAM auth and API Gateway limits: authentication and a body size limit.
"""

from __future__ import annotations

import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chalice.config import Config
from chalice.local import ForbiddenError, LocalGateway, LocalGatewayException

log = logging.getLogger("tuneloop.api")

# API Gateway refuses bodies over 10 MB before the app sees them.
MAX_REQUEST_BYTES = 10 * 1024 * 1024


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: Any, token: str, port: int = 0) -> None:
        self.gateway = LocalGateway(app, Config(chalice_stage="local", user_provided_params={"app_name": "tuneloop"}))
        self.token = token
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # see sagemaker.responses._Handler

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps({"Code": code, "Message": message}).encode(), extra)

    def _handle(self) -> None:
        supplied = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.token}"
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            return self._error(413, "PayloadTooLarge", f"request body over {MAX_REQUEST_BYTES} bytes")
        body = self.rfile.read(length) if length else None
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            return self._error(
                401,
                "Unauthorized",
                "missing or wrong bearer token (see `tuneloop status`)",
                {"WWW-Authenticate": "Bearer"},
            )
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        try:
            response = self.server.gateway.handle_request(self.command, self.path, headers, body)
        except ForbiddenError:
            # API Gateway answers 403 "Missing Authentication Token" for unknown paths;
            # locally we can say what it really is.
            return self._error(404, "NotFound", f"no route for {self.command} {self.path.split('?')[0]}")
        except LocalGatewayException as exc:
            return self._send(exc.CODE, exc.body or b"", dict(exc.headers))
        raw = response.get("body") or b""
        self._send(response["statusCode"], raw if isinstance(raw, bytes) else raw.encode(), response.get("headers"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle
