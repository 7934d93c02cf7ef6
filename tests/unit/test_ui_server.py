"""The dashboard's server: only its starter gets in (a single-use, short-lived link code →
a session cookie and a token only the page's origin keeps; a loopback Host; for changes,
this server's own Origin and a JSON body), pages reload at their URLs, /api/ is forwarded,
and a deployed stage's calls are SigV4-signed with the caller's credentials (checked by
the local cloud's verifier)."""

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
from tuneloop.ui.server import LINK_TTL_S, Backend, StageBackend, UiServer


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
    """A new session's headers: its cookie, and the token the sign-in page keeps for the page."""
    import re

    link = server.link()
    code = link.split("session=")[1]
    status, headers, page = request(server, "GET", f"/runs/abc?state=deployed&session={code}")
    assert status == 200 and code.encode() not in page  # the code opens nothing again
    token = re.search(rb'name="tuneloop-token" content="([^"]+)"', page)
    following = re.search(rb'name="tuneloop-next" content="([^"]+)"', page)
    assert token and following and following[1] == b"/runs/abc?state=deployed"  # the code leaves the URL
    assert b'src="/static/signed-in.js"' in page  # which keeps the token, then opens that page
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert code not in cookie and code.encode() != token[1]  # the session is not the code
    return {"Cookie": cookie.split(";")[0], "X-Tuneloop-Token": token[1].decode()}


def test_only_the_session_link_opens_the_dashboard(ui: tuple[UiServer, Recorder]) -> None:
    server, backend = ui
    assert request(server, "GET", "/")[0] == 401
    status, headers, body = request(server, "GET", "/api/projects")
    assert status == 401 and headers["content-type"] == "application/json" and backend.calls == []
    assert "no dashboard session" in json.loads(body)["Message"]
    assert request(server, "GET", "/?session=not-the-code")[0] == 403
    assert request(server, "GET", "/", {"Cookie": "tl_session=guess"})[0] == 401
    session = signed_in(server)
    for page in ("/", "/projects", "/projects/demo", "/runs", "/runs/abc"):
        status, headers, body = request(server, "GET", page, session)
        assert status == 200 and b'<script type="module" src="/static/app.js">' in body, page
        assert "script-src 'self'" in headers["content-security-policy"]
    assert request(server, "GET", "/nowhere", session)[0] == 404
    # The app's own files; nothing outside them.
    assert request(server, "GET", "/static/app.js")[0] == 200
    assert request(server, "GET", "/static/../server.py")[0] == 404
    assert request(server, "GET", "/static/%2e%2e/server.py")[0] == 404


def test_a_link_opens_the_dashboard_once_and_only_for_a_while() -> None:
    """The link goes into the browser's history: once used, or after LINK_TTL_S, its code
    opens nothing."""
    now = [1000.0]
    server = UiServer(Recorder(), clock=lambda: now[0])
    server.serve_in_background()
    try:
        code = server.link().split("session=")[1]
        assert request(server, "GET", f"/?session={code}")[0] == 200
        status, _, page = request(server, "GET", f"/?session={code}")  # used
        assert status == 403 and b"has been used, or has expired" in page and b"Press Enter" in page
        late = server.link().split("session=")[1]
        now[0] += LINK_TTL_S + 1
        assert request(server, "GET", f"/?session={late}")[0] == 403  # expired
        assert request(server, "GET", f"/?session={server.link().split('session=')[1]}")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_the_cookie_alone_opens_no_data(ui: tuple[UiServer, Recorder]) -> None:
    """A browser sends the cookie to every port of 127.0.0.1: a server on another port may
    receive it. Without the page's token (which stays in this origin's storage) it reads and
    changes nothing."""
    server, backend = ui
    session = signed_in(server)
    cookie = {"Cookie": session["Cookie"]}
    for path in ("/api/projects", "/ui/info"):
        assert request(server, "GET", path, cookie)[0] == 403
        assert request(server, "GET", path, {**cookie, "X-Tuneloop-Token": "a guess"})[0] == 403
    assert backend.calls == []
    assert json.loads(request(server, "GET", "/ui/info", session)[2]) == {"backend": "a recorder"}  # no secret in it


def test_api_calls_are_forwarded_and_foreign_callers_refused(ui: tuple[UiServer, Recorder]) -> None:
    server, backend = ui
    session = signed_in(server)
    status, _, body = request(server, "GET", "/api/runs?project=demo&limit=5", session)
    assert status == 200 and json.loads(body) == {"echo": "/runs?project=demo&limit=5"}
    payload = json.dumps({"reason": "x"}).encode()
    own = {**session, "Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/json"}
    status, _, _ = request(server, "POST", "/api/runs/abc/stop", own, payload)
    assert status == 200 and backend.calls[-1] == ("POST", "/runs/abc/stop", payload)
    calls = len(backend.calls)
    # Another site's page (a forged form or fetch), a rebinding DNS name, no session: refused.
    assert request(server, "POST", "/api/runs/abc/stop", {**own, "Origin": "https://evil.example"}, b"{}")[0] == 403
    assert request(server, "GET", "/api/projects", {**session, "Host": "evil.example"})[0] == 403
    assert request(server, "POST", "/api/runs/abc/stop", {}, b"{}")[0] == 401
    assert request(server, "POST", "/runs/abc", own, b"{}")[0] == 405
    assert request(server, "PUT", "/api/projects/demo", {**own, "Content-Length": str(10**7)})[0] == 413
    assert request(server, "PUT", "/api/projects/demo", {**own, "Content-Length": "\u00b2"})[0] == 413  # '²'.isdigit()
    assert len(backend.calls) == calls


def test_a_page_on_another_local_port_cannot_drive_the_dashboard(ui: tuple[UiServer, Recorder]) -> None:
    """SameSite cookies ignore the port, so a notebook or dev server on another port of
    127.0.0.1 is a same-site page: its requests carry the cookie. It still cannot change
    anything: the Origin must be this server's (scheme, host and port), the body JSON (a
    form or a no-cors fetch can only send text/plain) and the session's token there (which
    no other origin can read)."""
    server, backend = ui
    session = signed_in(server)
    own = {**session, "Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/json"}
    body = json.dumps({"config": {"approval": "auto"}}).encode()
    for changed, status in [
        ({"Origin": f"http://127.0.0.1:{server.port + 1}"}, 403),  # another port
        ({"Origin": f"http://localhost:{server.port + 1}"}, 403),
        ({"Origin": f"https://127.0.0.1:{server.port}"}, 403),  # another scheme
        ({"Origin": "null"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # a form's, a no-cors fetch's
        ({"X-Tuneloop-Token": ""}, 403),
        ({"X-Tuneloop-Token": "a guess"}, 403),
    ]:
        assert request(server, "PUT", "/api/projects/demo", {**own, **changed}, body)[0] == status, changed
    no_origin = {k: v for k, v in own.items() if k != "Origin"}
    assert request(server, "PUT", "/api/projects/demo", {**no_origin, "Sec-Fetch-Site": "same-site"}, body)[0] == 403
    assert backend.calls == []
    assert request(server, "PUT", "/api/projects/demo", own, body)[0] == 200
    assert request(server, "PUT", "/api/projects/demo", {**own, "Origin": f"http://localhost:{server.port}"},
                   body)[0] == 200  # fmt: skip
    assert len(backend.calls) == 2


def test_the_browser_is_handed_a_private_file_not_the_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tuneloop ui` opens the browser on a file only its user can read that redirects to
    the link: the browser's command line (readable by every user) never holds the code."""
    import stat
    import webbrowser

    from tuneloop.ui.server import open_privately

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    link = "http://127.0.0.1:8123/?session=the-code"
    folder = open_privately(link)
    try:
        [uri] = opened
        assert uri.startswith("file://") and "the-code" not in uri
        page = folder / "open.html"
        assert f'url={link}"' in page.read_text()
        assert stat.S_IMODE(page.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        import shutil

        shutil.rmtree(folder)


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
