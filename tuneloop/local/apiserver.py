"""The app's HTTP API on loopback, behind a bearer token generated at start-up, or
IAM auth as a deployed stage's API Gateway has it: a request signed with SigV4 for
``execute-api`` by the local cloud's credentials (how ``tuneloop --stage local`` calls it).

Requests go through Chalice's own local API Gateway emulation (routing, 405s, 415s),
so the routes behave as on API Gateway; this layer adds what the deployed stages get
from IAM auth and API Gateway limits: authentication (checked before any body is read),
a Host header that must name loopback (a web page cannot reach it by DNS rebinding), a
strict Content-Length, a body size limit, a socket timeout and a bound on concurrent
requests.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Any

from chalice.config import Config
from chalice.local import ForbiddenError, LocalGateway, LocalGatewayException

from . import sigv4
from .audit import invoking
from .httpserve import Handler, LoopbackServer

log = logging.getLogger("tuneloop.api")

# API Gateway refuses bodies over 10 MB before the app sees them.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_CONCURRENT_REQUESTS = 32


class ApiServer(LoopbackServer):
    idle_timeout_s = 30.0  # a client that stops sending gives its thread back

    def __init__(self, app: Any, token: str, port: int = 0, credentials: sigv4.Credentials | None = None) -> None:
        self.gateway = LocalGateway(app, Config(chalice_stage="local", user_provided_params={"app_name": "tuneloop"}))
        self.token = token
        self.credentials = credentials
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().__init__(_Handler, port)


class _Handler(Handler):
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        self.reply(status, body, headers)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        self.refuse(status, code, message, extra, close=False)

    def _handle(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            return self.refuse(503, "TooManyRequests", f"over {MAX_CONCURRENT_REQUESTS} requests at once; retry")
        try:
            self._checked()
        finally:
            self.server.slots.release()

    def _signed_headers(self) -> dict[str, list[str]]:
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return headers

    def _checked(self) -> None:
        supplied = self.headers.get("Authorization", "")
        credentials = self.server.credentials
        signed = credentials is not None and supplied.startswith(sigv4.ALGORITHM + " ")
        if credentials is not None and signed:
            # IAM auth, as API Gateway checks it: the headers first, the body's hash after.
            claim = sigv4.screen(self.command, self.path, self._signed_headers(), credentials)
            reason = claim if isinstance(claim, str) else None
            if not reason and not isinstance(claim, str) and claim.service != "execute-api":
                reason = f"the request is signed for {claim.service}; the API takes execute-api"
            if not reason and not isinstance(claim, str) and claim.principal:
                # No role of the template may invoke the API (execute-api:Invoke): the operator's key alone.
                reason = f"{claim.principal} may not invoke the API: only the local cloud's own key (the operator's)"
            if reason:
                log.warning("refused %s %s: %s", self.command, self.path.split("?")[0][:200], reason)
                return self.refuse(403, "AccessDeniedException", reason)
        elif not hmac.compare_digest(supplied.encode(), f"Bearer {self.server.token}".encode()):
            return self.refuse(
                401,
                "Unauthorized",
                "missing or wrong bearer token (see `tuneloop status`), or a SigV4 signature",
                {"WWW-Authenticate": "Bearer"},
            )
        declared = self.headers.get("Content-Length") or "0"
        if not (declared.isascii() and declared.isdigit()):  # "-1", "abc": never read to the end of the stream
            return self.refuse(400, "BadRequest", f"Content-Length {declared[:32]!r} is not a byte count")
        length = int(declared)
        if length > MAX_REQUEST_BYTES:
            return self.refuse(413, "PayloadTooLarge", f"request body over {MAX_REQUEST_BYTES} bytes")
        body = self.read_body(length) if length else None
        if credentials is not None and signed:
            reason = sigv4.verify(self.command, self.path, self._signed_headers(), body or b"", credentials)
            if reason:
                log.warning("refused %s %s: %s", self.command, self.path.split("?")[0][:200], reason)
                return self._error(403, "AccessDeniedException", reason)
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        try:
            with invoking("api_handler"):
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
