"""The local API's front door on a real socket: auth before the body, loopback Host only,
a strict Content-Length."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import astuple
from typing import Any

import pytest

import app as app_module
from tests.conftest import DEMO_CONFIG
from tuneloop.local import sigv4
from tuneloop.local.apiserver import ApiServer

pytestmark = pytest.mark.integration
TOKEN = "t" * 32


def serving(credentials: sigv4.Credentials | None = None) -> Iterator[ApiServer]:
    api = ApiServer(app_module.app, TOKEN, credentials=credentials)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()


@pytest.fixture
def server(deps: Any) -> Iterator[ApiServer]:
    yield from serving()


def exchange(server: ApiServer, head: str, body: bytes = b"") -> str:
    """Send a request's head (and any body), return the status line. A server that waited
    for body bytes never sent would time this out."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        return sock.recv(65536).decode(errors="replace").split("\r\n", 1)[0]


def test_no_token_is_refused_before_any_body_is_read(server: ApiServer) -> None:
    head = f"POST /projects HTTP/1.1\nHost: 127.0.0.1:{server.port}\nContent-Type: application/json\n"
    head += "Content-Length: 1000000\n"
    assert exchange(server, head) == "HTTP/1.1 401 Unauthorized"  # the million bytes were never sent


@pytest.mark.parametrize("length", ["-1", "abc", "²"])
def test_a_content_length_that_is_not_a_byte_count_is_a_400(server: ApiServer, length: str) -> None:
    head = f"POST /projects HTTP/1.1\nHost: 127.0.0.1:{server.port}\nAuthorization: Bearer {TOKEN}\n"
    head += f"Content-Type: application/json\nContent-Length: {length}\n"
    assert exchange(server, head) == "HTTP/1.1 400 Bad Request"


def test_a_foreign_host_header_is_refused(server: ApiServer) -> None:
    """DNS rebinding: a web page's request reaches 127.0.0.1 with its own Host name."""
    head = f"GET /projects HTTP/1.1\nHost: attacker.example:{server.port}\nAuthorization: Bearer {TOKEN}\n"
    assert exchange(server, head) == "HTTP/1.1 403 Forbidden"
    head = f"GET /projects HTTP/1.1\nHost: localhost:{server.port}\nAuthorization: Bearer {TOKEN}\n"
    assert exchange(server, head) == "HTTP/1.1 200 OK"


CREDENTIALS = sigv4.Credentials("TLOCAAAAAAAAAAAAAAAA", "s" * 40)


@pytest.fixture
def iam_server(deps: Any) -> Iterator[ApiServer]:
    yield from serving(CREDENTIALS)


def test_a_call_signed_for_execute_api_is_iam_auth_as_on_a_stage(iam_server: ApiServer) -> None:
    """How `tuneloop --stage local` calls the API: SigV4 with the local cloud's credentials,
    checked as API Gateway's IAM auth checks it (the signature covers the body)."""
    from botocore.credentials import Credentials

    from tuneloop.client import Api, CliError

    base = f"http://127.0.0.1:{iam_server.port}"
    good = Credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key)
    api = Api(base, credentials=good, region="us-east-1", where="stage local's API")
    created = api.call("POST", "/projects", {"name": "signed", "config": DEMO_CONFIG})
    assert created["name"] == "signed"
    assert [p["name"] for p in api.call("GET", "/projects")["projects"]] == ["signed"]
    for credentials, reason in (
        (Credentials(CREDENTIALS.access_key, "w" * 40), "the signature does not match"),
        (Credentials("AKIAOTHEROTHEROTHER1", CREDENTIALS.secret_key), "the access key is not the local cloud's"),
        # A job's (the execution role's) or a function's key pair: no role may invoke the API.
        (Credentials(*astuple(CREDENTIALS.principal(sigv4.EXECUTION_ROLE))), "role/sagemaker-execution may not"),
        (Credentials(*astuple(CREDENTIALS.principal("function/on_alarm"))), "function/on_alarm may not"),
    ):
        with pytest.raises(CliError, match=f"403: {reason}"):
            Api(base, credentials=credentials).call("GET", "/projects")


def test_a_signed_body_that_was_changed_is_refused(iam_server: ApiServer) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://127.0.0.1:{iam_server.port}/projects"
    body = json.dumps({"name": "one", "config": DEMO_CONFIG}).encode()
    signed = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key), "execute-api", "us-east-1").add_auth(signed)
    head = f"POST /projects HTTP/1.1\nHost: 127.0.0.1:{iam_server.port}\n"
    head += "".join(f"{k}: {v}\n" for k, v in signed.headers.items())
    changed = body.replace(b"one", b"two")
    assert exchange(iam_server, head + f"Content-Length: {len(changed)}\n", changed) == "HTTP/1.1 403 Forbidden"
    assert exchange(iam_server, head + f"Content-Length: {len(body)}\n", body) == "HTTP/1.1 201 Created"
    # Signed for another service: refused before the body is read.
    signed = AWSRequest(method="GET", url=url, data=b"")
    SigV4Auth(Credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key), "s3", "us-east-1").add_auth(signed)
    head = f"GET /projects HTTP/1.1\nHost: 127.0.0.1:{iam_server.port}\n"
    head += "".join(f"{k}: {v}\n" for k, v in signed.headers.items())
    assert exchange(iam_server, head) == "HTTP/1.1 403 Forbidden"
