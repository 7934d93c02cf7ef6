"""`tuneloop ui`: the dashboard, served on 127.0.0.1 to the user who started it.

The page (``static/``: plain HTML, CSS and JavaScript that ship with the package; nothing
is fetched from elsewhere) calls ``/api/…``, which this server forwards to tuneloop's API:

- the local cloud's, with its bearer token (``LocalBackend``);
- a deployed stage's, signed with the user's own AWS credentials (SigV4 for
  ``execute-api``, as any IAM caller of the API), so the deployed API stays IAM-only
  (``StageBackend``).

Only the person who ran ``tuneloop ui`` gets in. The link it prints carries a code that
opens the dashboard once, within ``LINK_TTL_S``: the first visit trades it for a session
of its own, so the code left in the browser's history opens nothing (``tuneloop ui`` hands
the browser a private file that redirects to it, not the link: no command line shows it).
A session is two secrets, neither the code: an HttpOnly, SameSite=Strict cookie, and a
token the sign-in page (``static/signed-in.html``, the answer to the code) keeps in its
origin's own storage before it opens the page the link named, from this origin (so the
Strict cookie goes with it, whatever opened the link). Every data request carries the
token (``X-Tuneloop-Token``). A cookie goes to every port of 127.0.0.1; the token stays
with this origin (scheme, host and port), so a server on another port that received the
cookie can use it for nothing. A
request that changes state also needs an ``application/json`` body and, when the browser
sends one, an ``Origin`` that is exactly this server's: a page served from another port of
this machine cannot drive it. Every request needs a loopback ``Host`` (no DNS rebinding).
Every page is a URL that reloads: the server answers any page path with the app, which
routes on it.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import mimetypes
import secrets
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tuneloop.local.httpserve import LOOPBACK_HOSTS, Handler, LoopbackServer

log = logging.getLogger("tuneloop.ui")
STATIC = Path(__file__).with_name("static")
COOKIE = "tl_session"
TOKEN_HEADER = "X-Tuneloop-Token"
PAGES = ("/", "/projects", "/runs")  # and anything under them: the app routes on the path
MAX_BODY_BYTES = 256 * 1024  # the API's own limit
# How long a printed link opens the dashboard (once), and how long a session lasts.
LINK_TTL_S = 300.0
SESSION_TTL_S = 12 * 3600.0


class Backend:
    """Forwards one API call; returns (status, body)."""

    name = "api"

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        raise NotImplementedError


def _send(request: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # nosec B310  # the API's http(s) URL
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError as exc:
        message = {"Code": "BadGateway", "Message": f"the API did not answer: {exc}"}
        return 502, json.dumps(message).encode()


class LocalBackend(Backend):
    """The local cloud's API, with its bearer token (read from its state each call: a
    `tuneloop up` after the dashboard started is picked up)."""

    name = "the local cloud"

    def __init__(self, state: Callable[[], Any]) -> None:
        self._state = state

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        state = self._state()
        if state is None:
            return 503, json.dumps(
                {"Code": "Unavailable", "Message": "the local cloud is not up: tuneloop up"}
            ).encode()
        request = urllib.request.Request(state.api_url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {state.token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        return _send(request)


class StageBackend(Backend):
    """A deployed stage's API Gateway URL, each call signed with SigV4 (``execute-api``)
    by the caller's own credentials (the AWS configuration's chain)."""

    def __init__(self, url: str, region: str, credentials: Any, stage: str = "") -> None:
        self._url = url.rstrip("/")
        self._region = region
        self._credentials = credentials
        self.name = f"stage {stage}" if stage else self._url

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        headers = {"Content-Type": "application/json"} if body is not None else {}
        signed = AWSRequest(method=method, url=self._url + path, data=body or b"", headers=headers)
        SigV4Auth(self._credentials.get_frozen_credentials(), "execute-api", self._region).add_auth(signed)
        request = urllib.request.Request(self._url + path, data=body, method=method, headers=dict(signed.headers))
        return _send(request)


def open_privately(link: str) -> Path:
    """Open ``link`` in the browser without putting it on a command line others can read
    (``/proc/*/cmdline``): the browser gets a file of the user's own, in a folder only they
    can read, that redirects to the link. Returns the folder, for the caller to remove."""
    import tempfile
    import webbrowser

    folder = Path(tempfile.mkdtemp(prefix="tuneloop-ui-"))
    page = folder / "open.html"
    quoted = html.escape(link, quote=True)
    page.write_text(
        f'<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url={quoted}">'
        f'<title>tuneloop</title><a href="{quoted}">Open the dashboard</a>\n'
    )
    page.chmod(0o600)
    webbrowser.open(page.as_uri())
    return folder


class UiServer(LoopbackServer):
    def __init__(self, backend: Backend, port: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.lock = threading.Lock()
        self.codes: dict[str, float] = {}  # a link's code → when it stops opening anything
        self.sessions: dict[str, tuple[str, float]] = {}  # session id → (its token, when it ends)
        super().__init__(_Handler, port)

    def link(self) -> str:
        """A new link to open: its code opens the dashboard once, within LINK_TTL_S."""
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.codes[code] = self.clock() + LINK_TTL_S
        return f"http://127.0.0.1:{self.port}/?session={code}"

    def redeem(self, code: str) -> tuple[str, str] | None:
        """A new session (its cookie, its token) for a link's code, which opens nothing
        again; None when the code is not one of this server's, was used, or has expired."""
        with self.lock:
            now = self.clock()
            for known, ends in list(self.codes.items()):
                if ends < now:
                    del self.codes[known]
            if not any(hmac.compare_digest(code.encode(), known.encode()) for known in self.codes):
                return None
            del self.codes[code]
            session, token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            self.sessions[session] = (token, now + SESSION_TTL_S)
            return session, token

    def token(self, session: str) -> str | None:
        """The session's token; None for no live session."""
        with self.lock:
            found = next((s for s in self.sessions if hmac.compare_digest(s.encode(), session.encode())), None)
            if found is None:
                return None
            token, ends = self.sessions[found]
            if ends < self.clock():
                del self.sessions[found]
                return None
            return token

    def offer_links(self, stream: Any = None) -> None:
        """Print a new link each time Enter is pressed (in the background, until the input ends)."""

        def answer() -> None:
            for _ in stream if stream is not None else sys.stdin:
                print(f"a new dashboard link: {self.link()}", flush=True)

        threading.Thread(target=answer, daemon=True).start()

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        return thread


class _Handler(Handler):
    server: UiServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    # Everything is this origin's but the run's presigned report and plots (images,
    # frames) on S3, which the browser loads straight from the bucket.
    SECURITY_HEADERS = MappingProxyType(
        {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' http: https: data:; frame-src http: https:; "
                "style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'"
            ),
        }
    )

    def every_answer(self) -> Mapping[str, str]:
        return self.SECURITY_HEADERS

    foreign_host = ("403", "the dashboard answers only on 127.0.0.1")

    def _reply(
        self, status: int, body: bytes, mime: str = "application/json", extra: dict[str, str] | None = None
    ) -> None:
        self.reply(status, body, {"Content-Type": mime, **(extra or {})})

    def error_body(self, status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
        return json.dumps({"Code": str(status), "Message": message}).encode(), {"Content-Type": "application/json"}

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self.refuse(status, str(status), message, close=close)

    def _session(self) -> str | None:
        """The request's session id when it is a live one of this server's."""
        cookies = dict(
            part.strip().split("=", 1) for part in (self.headers.get("Cookie") or "").split(";") if "=" in part
        )
        session = cookies.get(COOKIE, "")
        return session if session and self.server.token(session) is not None else None

    def _with_token(self, session: str) -> bool:
        """The session's token came with the request (the page's, which no other origin has)."""
        sent = self.headers.get(TOKEN_HEADER) or ""
        if hmac.compare_digest(sent.encode(), (self.server.token(session) or "").encode()):
            return True
        self._error(
            403,
            close=True,
            message=f"missing or wrong {TOKEN_HEADER}: open a new link (Enter in tuneloop ui's terminal)",
        )
        return False

    def _same_origin(self) -> bool:
        """An Origin, when the browser sends one, must be this server's own: the same
        scheme, host and port (another port of this machine is another site)."""
        origin = self.headers.get("Origin")
        if origin is None:
            return self.headers.get("Sec-Fetch-Site") in (None, "same-origin")
        parts = urllib.parse.urlsplit(origin)
        try:
            port = parts.port
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and port == self.server.port

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        offered = (query.get("session") or [""])[0]
        if offered:
            redeemed = self.server.redeem(offered)
            if redeemed is None:
                self._reply(403, (STATIC / "link-spent.html").read_bytes(), "text/html; charset=utf-8")
                return
            new_session, token = redeemed
            rest = urllib.parse.urlencode([(k, v) for k, values in query.items() if k != "session" for v in values])
            target = url.path + (f"?{rest}" if rest else "")
            if not target.startswith("/") or target.startswith("//"):
                target = "/"
            cookie = f"{COOKIE}={new_session}; HttpOnly; SameSite=Strict; Path=/"
            signed_in = (STATIC / "signed-in.html").read_text()
            signed_in = signed_in.replace("{token}", html.escape(token)).replace("{next}", html.escape(target))
            self._reply(200, signed_in.encode(), "text/html; charset=utf-8", {"Set-Cookie": cookie})
            return
        if url.path.startswith("/static/"):
            self._static(url.path[len("/static/") :])  # the app's own files need no session
            return
        session = self._session()
        if session is None and url.path.startswith(("/api/", "/ui/")):
            self._error(401, "no dashboard session: open a link tuneloop ui prints (Enter in its terminal)")
            return
        if session is None:
            page = (STATIC / "signin.html").read_bytes()
            self._reply(401, page, "text/html; charset=utf-8")
            return
        if url.path.startswith("/api/"):
            if self._with_token(session):
                self._forward("GET", url, None)
        elif url.path == "/ui/info":
            if self._with_token(session):
                self._reply(200, json.dumps({"backend": self.server.backend.name}).encode())
        elif url.path in PAGES or url.path.startswith(("/projects/", "/runs/")):
            self._reply(200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/favicon.ico":
            self._reply(204, b"", "image/x-icon")
        else:
            self._error(404, f"no page {url.path}")

    def _body(self) -> bytes | None:
        declared = self.headers.get("Content-Length") or "0"
        if not (declared.isascii() and declared.isdigit()) or int(declared) > MAX_BODY_BYTES:
            return None
        return self.read_body(int(declared))

    def _write(self, method: str) -> None:
        """A state-changing request: the session, its token, this server's own Origin and
        a JSON body, all checked before the body is read."""
        url = urllib.parse.urlsplit(self.path)
        session = self._session()
        if session is None:
            self._error(401, "no dashboard session: open the link tuneloop ui printed", close=True)
            return
        if not url.path.startswith("/api/"):
            self._error(405, f"{method} {url.path} is not allowed", close=True)
            return
        if not self._same_origin():
            self._error(
                403, f"requests from other sites are refused (Origin {self.headers.get('Origin')!r})", close=True
            )
            return
        if not self._with_token(session):
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._error(415, "state-changing requests must be application/json", close=True)
            return
        body = self._body()
        if body is None:
            self._error(413, f"bodies are at most {MAX_BODY_BYTES // 1024} KB", close=True)
            return
        self._forward(method, url, body)

    def do_POST(self) -> None:
        self._write("POST")

    def do_PUT(self) -> None:
        self._write("PUT")

    def _forward(self, method: str, url: urllib.parse.SplitResult, body: bytes | None) -> None:
        path = url.path[len("/api") :] + (f"?{url.query}" if url.query else "")
        status, answer = self.server.backend.call(method, path, body)
        self._reply(status, answer)

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            self._error(404, f"no file {name}")
            return
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if mime.startswith("text/") or mime in ("application/javascript", "image/svg+xml"):
            mime += "; charset=utf-8"
        self._reply(200, path.read_bytes(), mime)
