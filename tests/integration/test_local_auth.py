"""Every local service tuneloop runs answers only the local cloud's credentials (issue 11):
unsigned, wrongly signed and foreign-Host requests are refused before they do anything."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from tests import sockets
from tests.conftest import BUCKET
from tuneloop.local import sigv4

pytestmark = pytest.mark.integration

CALLS = {
    "s3": lambda c: c.list_buckets(),
    "sqs": lambda c: c.list_queues(),
    "cloudwatch": lambda c: c.list_metrics(),
    "events": lambda c: c.list_rules(),
    "application-autoscaling": lambda c: c.describe_scalable_targets(ServiceNamespace="sagemaker"),
    "dynamodb": lambda c: c.list_tables(),
}


def endpoint(services: Any, name: str) -> str:
    return str(services["dynamodb" if name == "dynamodb" else "moto"].endpoint)


def outsider(name: str, url: str, how: str) -> Any:
    """A client the way someone without the local cloud's credentials would make one."""
    if how == "unsigned":
        return boto3.client(name, endpoint_url=url, region_name="us-east-1", config=Config(signature_version=UNSIGNED))
    keys = sigv4.generate()
    if how == "wrong secret":
        keys = sigv4.Credentials(boto3.Session().get_credentials().access_key, keys.secret_key)
    return boto3.client(name, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key)  # fmt: skip


@pytest.mark.parametrize("how", ["unsigned", "another key", "wrong secret"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_caller_without_the_credentials_is_refused(local_services: Any, name: str, how: str) -> None:
    url = endpoint(local_services, name)
    CALLS[name](boto3.client(name, endpoint_url=url))  # the local cloud's own clients are answered
    with pytest.raises(ClientError) as info:
        CALLS[name](outsider(name, url, how))
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    reason = info.value.response["Error"]["Message"]
    assert any(word in reason for word in ("not signed", "access key", "signature")), reason


@pytest.mark.parametrize("name", ["moto", "dynamodb"])
def test_a_foreign_host_header_is_refused(local_services: Any, name: str) -> None:
    """DNS rebinding: a web page's request reaches the port with its own Host."""
    port = local_services[name].port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/", headers={"Host": f"evil.example:{port}"})
    answer = connection.getresponse()
    assert answer.status == 403 and b"loopback" in answer.read()


def test_motos_own_api_is_not_reachable(local_services: Any) -> None:
    """moto's /moto-api/ resets every service, or turns its IAM check off, for anyone."""
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    for path in ("/moto-api/reset", "/moto-api/reset-auth"):
        request = urllib.request.Request(local_services["moto"].endpoint + path, data=b"0", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 403
    assert BUCKET in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_dynamodb_local_listens_on_loopback_and_keeps_the_tables_to_a_key_id_never_published(
    local_services: Any,
) -> None:
    """DynamoDB Local checks no signature and keeps one database per access key ID. Its
    own port listens on 127.0.0.1 only, and the gateway keeps the tables under a key ID of
    its own: a caller who reaches that port with the local cloud's public key ID (printed
    in every presigned link), even with the secret, finds none of them."""
    ours = boto3.client("dynamodb", endpoint_url=local_services["dynamodb"].endpoint)
    ours.create_table(TableName="auth-probe", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                      AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                      BillingMode="PAY_PER_REQUEST")  # fmt: skip
    assert "auth-probe" in ours.list_tables()["TableNames"]
    gateway = local_services["dynamodb"].proc.pid
    [java] = [pid for pid in sockets.process_tree([gateway]) if pid != gateway]
    [(address, backend)] = sockets.listening([java])  # one port, the kernel's pick, on loopback
    assert address == "127.0.0.1"
    public = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{backend}")  # the key ID and the secret
    assert "auth-probe" not in public.list_tables()["TableNames"]
    stranger = outsider("dynamodb", f"http://127.0.0.1:{backend}", "another key")
    assert "auth-probe" not in stranger.list_tables()["TableNames"]


def signed_request(service: str, method: str, url: str, body: bytes, headers: dict[str, str], keys: Any = None) -> Any:
    """A request signed as botocore signs it, with the local cloud's credentials (or ``keys``)."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = keys or boto3.Session().get_credentials().get_frozen_credentials()
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, "us-east-1")
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    signer.add_auth(request)
    return request.prepare()


def raw_answer(port: int, request_line: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """What the server answers a request sent exactly as given (no client normalises it)."""
    lines = [request_line, f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Content-Length: {len(body)}", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall("\r\n".join(lines).encode() + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, response.read()


def test_motos_own_api_is_refused_even_with_a_good_signature(local_services: Any) -> None:
    """/moto-api/reset would wipe every object written since the last down: no signature
    opens it, however the path is spelled (escaped, doubled slashes, a full URL)."""
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    moto = local_services["moto"]
    for path in ("/moto-api/reset", "/moto-api/reset-auth", "/moto-api/", "/moto%2Dapi/reset", "/%6Doto-api/reset"):
        prepared = signed_request("s3", "POST", moto.endpoint + path, b"0", {})
        status, body = raw_answer(moto.port, f"POST {path} HTTP/1.1", dict(prepared.headers), b"0")
        assert status == 403 and b"/moto-api/" in body, (path, status, body[:200])
    for target in ("//moto-api/reset", f"http://127.0.0.1:{moto.port}/moto-api/reset"):
        prepared = signed_request("s3", "POST", moto.endpoint + "/moto-api/reset", b"0", {})
        status, body = raw_answer(moto.port, f"POST {target} HTTP/1.1", dict(prepared.headers), b"0")
        assert status in (400, 403), (target, status, body[:200])
    assert BUCKET in {b["Name"] for b in s3.list_buckets()["Buckets"]}


@pytest.mark.parametrize("server,signed_for", [("moto", "dynamodb"), ("moto", "sagemaker"), ("dynamodb", "s3")])
def test_a_server_answers_only_the_services_it_serves(local_services: Any, server: str, signed_for: str) -> None:
    """A request signed for another service is refused before its body is read (its
    body's bound is the service's this server serves, not the one the caller names)."""
    endpoint = local_services[server].endpoint + "/"
    prepared = signed_request(signed_for, "POST", endpoint, b"{}", {"Content-Type": "application/x-amz-json-1.0"})
    status, body = answer_without_body(local_services[server].port, prepared, 15 << 20)
    assert status == 403 and f"signed for {signed_for}".encode() in body, body[:300]


def test_no_port_is_chosen_first_and_bound_later(local_services: Any) -> None:
    """Each gateway and DynamoDB Local bind a port the kernel picks and say which once they
    listen: no port number is on any command line for another process to take first."""
    gateway = local_services["dynamodb"].proc.pid
    [java] = [pid for pid in sockets.process_tree([gateway]) if pid != gateway]
    [(_, backend)] = sockets.listening([java])
    for pid in (gateway, java, local_services["moto"].proc.pid):
        arguments = (Path(f"/proc/{pid}") / "cmdline").read_bytes().split(b"\0")
        assert str(backend).encode() not in arguments, arguments
        assert b"--port" not in arguments or arguments[arguments.index(b"--port") + 1] == b"0", arguments


def answer_without_body(port: int, prepared: Any, declared: int) -> tuple[int, bytes]:
    """Send a request's headers with ``declared`` as its Content-Length and none of the
    body: what the server answers (it must, without waiting for a byte of the body)."""
    from urllib.parse import urlsplit

    url = urlsplit(prepared.url)
    lines = [f"{prepared.method} {url.path}{'?' + url.query if url.query else ''} HTTP/1.1"]
    lines += [f"Host: {url.netloc}"]
    lines += [f"{k}: {v}" for k, v in prepared.headers.items() if k.lower() != "content-length"]
    lines += [f"Content-Length: {declared}", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall("\r\n".join(lines).encode())
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, response.read()


def test_a_wrong_signature_is_refused_before_any_of_the_body_is_read(local_services: Any) -> None:
    """S3 signs the payload's hash in a header, so the gateway verifies the whole signature
    from the headers: a 500 MB upload signed with the wrong secret is answered at once,
    never read (the answer comes while the body is still unsent)."""
    moto = local_services["moto"]
    wrong = sigv4.Credentials(boto3.Session().get_credentials().access_key, "not the secret")
    from botocore.credentials import Credentials as BotoCredentials

    keys = BotoCredentials(wrong.access_key, wrong.secret_key)
    prepared = signed_request("s3", "PUT", f"{moto.endpoint}/{BUCKET}/big", b"x", {}, keys)
    status, body = answer_without_body(moto.port, prepared, 500_000_000)
    assert status == 403 and b"signature does not match" in body


@pytest.mark.parametrize("service,limit", [("dynamodb", 16 << 20), ("events", 2 << 20), ("monitoring", 2 << 20)])
def test_a_body_over_its_services_bound_is_refused_before_it_is_read(
    local_services: Any, service: str, limit: int
) -> None:
    """The JSON and query protocols sign a hash they do not send, so their bodies are read
    before the signature can be checked: each service's bound comes first."""
    name = "dynamodb" if service == "dynamodb" else "moto"
    url = local_services[name].endpoint + "/"
    prepared = signed_request(service, "POST", url, b"{}", {"Content-Type": "application/x-amz-json-1.0"})
    status, body = answer_without_body(local_services[name].port, prepared, limit + 1)
    assert status == 413 and f"a {service} request body over {limit} bytes".encode() in body
