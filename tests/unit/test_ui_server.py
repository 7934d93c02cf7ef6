"""The dashboard's server: only its starter gets in (session secret → cookie, loopback Host,
no foreign Origin), pages reload at their URLs, /api/ is forwarded, and a deployed stage's
calls are SigV4-signed with the caller's credentials (checked by the local cloud's verifier)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.credentials import Credentials

from tuneloop.local import sigv4
from tuneloop.ui.server import Backend, StageBackend, UiServer


class Recorder(Backend):
    name = "a recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes | None]] = []

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        self.calls.append((method, path, body))
        return 200, json.dumps({"echo": path}).encode()


@pytest.fixture
def ui() -> Iterator[tuple[UiServer, Recorder]]:
    backend = Recorder()
    server = UiServer(backend)
    server.serve_in_background()
    yield server, backend
    server.shutdown()
    server.server_close()


def request(server: UiServer, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(method, path, body=body, headers={"Host": f"127.0.0.1:{server.port}", **(headers or {})})
    response = connection.getresponse()
    out = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return out


def signed_in(server: UiServer) -> dict[str, str]:
    status, headers, _ = request(server, "GET", f"/runs/abc?state=deployed&session={server.secret}")
    assert status == 303 and headers["location"] == "/runs/abc?state=deployed"  # the secret leaves the URL
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return {"Cookie": cookie.split(";")[0]}


def test_only_the_session_link_opens_the_dashboard(ui: tuple[UiServer, Recorder]) -> None:
    server, backend = ui
    assert request(server, "GET", "/")[0] == 401
    assert request(server, "GET", "/api/projects")[0] == 401 and backend.calls == []
    assert request(server, "GET", "/?session=not-the-secret")[0] == 403
    assert request(server, "GET", "/", {"Cookie": "tl_session=guess"})[0] == 401
    cookie = signed_in(server)
    for page in ("/", "/projects", "/projects/demo", "/runs", "/runs/abc"):
        status, headers, body = request(server, "GET", page, cookie)
        assert status == 200 and b'<script type="module" src="/static/app.js">' in body, page
        assert "script-src 'self'" in headers["content-security-policy"]
    assert request(server, "GET", "/nowhere", cookie)[0] == 404
    # The app's own files; nothing outside them.
    assert request(server, "GET", "/static/app.js")[0] == 200
    assert request(server, "GET", "/static/../server.py")[0] == 404
    assert request(server, "GET", "/static/%2e%2e/server.py")[0] == 404


def test_api_calls_are_forwarded_and_foreign_callers_refused(ui: tuple[UiServer, Recorder]) -> None:
    server, backend = ui
    cookie = signed_in(server)
    status, _, body = request(server, "GET", "/api/runs?project=demo&limit=5", cookie)
    assert status == 200 and json.loads(body) == {"echo": "/runs?project=demo&limit=5"}
    payload = json.dumps({"reason": "x"}).encode()
    same_site = {**cookie, "Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/json"}
    status, _, _ = request(server, "POST", "/api/runs/abc/stop", same_site, payload)
    assert status == 200 and backend.calls[-1] == ("POST", "/runs/abc/stop", payload)
    calls = len(backend.calls)
    # Another site's page (a forged form or fetch), a rebinding DNS name, no session: refused.
    assert request(server, "POST", "/api/runs/abc/stop", {**cookie, "Origin": "https://evil.example"}, b"{}")[0] == 403
    assert request(server, "GET", "/api/projects", {**cookie, "Host": "evil.example"})[0] == 403
    assert request(server, "POST", "/api/runs/abc/stop", {}, b"{}")[0] == 401
    assert request(server, "POST", "/runs/abc", cookie, b"{}")[0] == 405
    assert request(server, "PUT", "/api/projects/demo", {**cookie, "Content-Length": str(10**7)})[0] == 413
    assert len(backend.calls) == calls
    assert json.loads(request(server, "GET", "/ui/info", cookie)[2]) == {"backend": "a recorder"}


class _Verifier(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self.server.verdicts.append(sigv4.verify("POST", self.path, headers, body, self.server.credentials))
        self.server.authorization = self.headers.get("Authorization", "")
        answer = b'{"ok": true}'
        self.send_response(202)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def test_a_stage_call_is_signed_with_the_callers_credentials() -> None:
    """SigV4 for execute-api, as API Gateway's IAM authorizer checks it: verified here by the
    local cloud's own SigV4 verifier with the same key."""
    keys = sigv4.generate()
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Verifier)
    stub.verdicts, stub.credentials = [], keys  # type: ignore[attr-defined]
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{stub.server_address[1]}/api"
        backend = StageBackend(url, "eu-west-1", Credentials(keys.access_key, keys.secret_key), "dev")
        status, body = backend.call("POST", "/runs/abc/retrain?x=1", b'{"reason": "by hand"}')
        assert status == 202 and json.loads(body) == {"ok": True}
        assert stub.verdicts == [None]  # type: ignore[attr-defined]
        assert f"Credential={keys.access_key}/" in stub.authorization  # type: ignore[attr-defined]
        assert "/eu-west-1/execute-api/aws4_request" in stub.authorization  # type: ignore[attr-defined]
        wrong = StageBackend(url, "eu-west-1", Credentials(keys.access_key, "not-the-secret"), "dev")
        wrong.call("POST", "/runs/abc/stop", b"{}")
        assert stub.verdicts[-1] is not None  # type: ignore[attr-defined]
        assert backend.name == "stage dev"
    finally:
        stub.shutdown()
        stub.server_close()
