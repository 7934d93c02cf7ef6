"""The local cloud's SigV4 check against what botocore really sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from tuneloop.local import sigv4

KEYS = sigv4.Credentials("TLOCAAAAAAAAAAAAAAAA", "s3cret/with+chars")


def now() -> datetime:
    """The clock when a test runs (not when the module was collected: a suite takes minutes)."""
    return datetime.now(UTC)


def signed(signer: Any, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    signer.add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    received = {k.lower(): [v] for k, v in prepared.headers.items()}
    received.setdefault("host", [parts.netloc])
    return prepared.method, target, received, prepared.body or b""


def boto(keys: sigv4.Credentials = KEYS) -> BotoCredentials:
    return BotoCredentials(keys.access_key, keys.secret_key)


JSON_CALL = (
    SigV4Auth(boto(), "sagemaker", "us-east-1"),
    "POST",
    "http://127.0.0.1:4000/",
    b'{"ProcessingJobName": "x"}',
    {"X-Amz-Target": "SageMaker.DescribeProcessingJob", "Content-Type": "application/x-amz-json-1.1"},
)


@pytest.mark.parametrize(
    "signer,method,url,body,headers",
    [
        JSON_CALL,
        (SigV4Auth(boto(), "sagemaker", "us-east-1"), "POST",
         "http://127.0.0.1:4000/endpoints/demo%20ep/invocations", b'{"text": "hi"}', {}),
        (S3SigV4Auth(boto(), "s3", "us-east-1"), "PUT",
         "http://127.0.0.1:4000/bucket/datasets/a%20b/c%2Bd.jsonl", b'{"text": 1}\n', {}),
        (S3SigV4Auth(boto(), "s3", "us-east-1"), "GET",
         "http://127.0.0.1:4000/bucket?list-type=2&prefix=runs%2F&max-keys=1", b"", {}),
        (SigV4QueryAuth(boto(), "s3", "us-east-1", expires=3600), "GET",
         "http://127.0.0.1:4000/bucket/runs/report.html", b"", {}),
    ],
)  # fmt: skip
def test_what_botocore_signs_is_accepted(signer: Any, method: str, url: str, body: bytes, headers: Any) -> None:
    if isinstance(signer, SigV4QueryAuth):
        signer = sigv4_presigner()
    assert sigv4.verify(*signed(signer, method, url, body, headers), KEYS) is None


def sigv4_presigner() -> Any:
    from botocore.auth import S3SigV4QueryAuth

    return S3SigV4QueryAuth(boto(), "s3", "us-east-1", expires=3600)


def test_a_real_client_presigned_url_is_accepted() -> None:
    import boto3
    from botocore.config import Config

    def client(version: str) -> Any:
        return boto3.client("s3", endpoint_url="http://127.0.0.1:4000", region_name="us-east-1",
                            aws_access_key_id=KEYS.access_key, aws_secret_access_key=KEYS.secret_key,
                            config=Config(signature_version=version))  # fmt: skip

    # The app presigns with SigV4 (the bucket is KMS-encrypted); SigV2 is refused.
    old = urlsplit(client("s3").generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"}))
    said = sigv4.verify("GET", f"{old.path}?{old.query}", {"host": [old.netloc]}, b"", KEYS) or ""
    assert "signed with SigV2" in said and "signature_version='s3v4'" in said
    s3 = client("s3v4")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "runs/x/report.html"}, ExpiresIn=60)
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}"
    assert sigv4.verify("GET", target, {"host": [parts.netloc]}, b"", KEYS) is None
    assert sigv4.verify("GET", target, {"host": [parts.netloc]}, b"", KEYS, now() + timedelta(seconds=90)) == (
        "the presigned URL has expired"
    )
    assert sigv4.verify("GET", target.replace("report", "secret"), {"host": [parts.netloc]}, b"", KEYS)


def test_everything_else_is_refused_with_the_reason() -> None:
    method, target, headers, body = signed(*JSON_CALL)
    assert sigv4.verify(method, target, headers, body, KEYS) is None

    def refused(**change: Any) -> str:
        request = {"method": method, "target": target, "headers": dict(headers), "body": body, **change}
        reason = sigv4.verify(request["method"], request["target"], request["headers"], request["body"],
                              change.get("keys", KEYS), change.get("now", now()))  # fmt: skip
        assert reason, change
        return reason

    assert "not signed" in refused(headers={k: v for k, v in headers.items() if k != "authorization"})
    assert "does not match" in refused(body=body.replace(b"x", b"y"))  # another job, same signature
    assert "does not match" in refused(target="/other")
    assert "does not match" in refused(headers={**headers, "x-amz-target": ["SageMaker.CreateProcessingJob"]})
    assert "does not match" in refused(keys=sigv4.Credentials(KEYS.access_key, "another secret"))
    assert "access key" in refused(keys=sigv4.generate())
    assert "15 minutes" in refused(now=now() + timedelta(minutes=20))  # a replay, later
    assert "SigV4" in refused(headers={**headers, "authorization": ["Bearer token"]})
    forged = [headers["authorization"][0].replace("host;", "")]
    assert "Host" in refused(headers={**headers, "authorization": forged})


def test_a_signed_payload_hash_must_be_the_bodys() -> None:
    method, target, headers, body = signed(
        S3SigV4Auth(boto(), "s3", "us-east-1"), "PUT", "http://127.0.0.1:4000/b/code/train.py", b"print('ours')"
    )
    assert sigv4.verify(method, target, headers, body, KEYS) is None
    reason = sigv4.verify(method, target, headers, b"import os; os.system('theirs')", KEYS)
    assert reason and "SHA-256" in reason


def test_generated_credentials_are_random_and_shaped_like_aws() -> None:
    a, b = sigv4.generate(), sigv4.generate()
    assert a != b and len(a.access_key) == 20 and a.access_key.isalnum() and a.access_key.isupper()
    assert len(a.secret_key) >= 40


def test_an_unsigned_payload_is_taken_only_where_aws_takes_one() -> None:
    """UNSIGNED-PAYLOAD is S3's; on any other service it would let a body be swapped under
    a good signature (a SageMaker request's job definition, say)."""
    url = "http://127.0.0.1:4000/"
    body = b'{"ProcessingJobName": "ours"}'
    unsigned = {"X-Amz-Target": "SageMaker.CreateProcessingJob", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    method, target, headers, _ = signed(SigV4Auth(boto(), "sagemaker", "us-east-1"), "POST", url, body, unsigned)
    reason = sigv4.verify(method, target, headers, b'{"ProcessingJobName": "theirs"}', KEYS)
    assert reason and "only S3 takes an unsigned payload" in reason
    assert unsigned["X-Amz-Content-SHA256"] in headers["x-amz-content-sha256"]

    class Unsigned(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return "UNSIGNED-PAYLOAD"

    put = signed(Unsigned(boto(), "s3", "us-east-1"), "PUT", "http://127.0.0.1:4000/b/k", b"data")
    assert put[2]["x-amz-content-sha256"] == ["UNSIGNED-PAYLOAD"] and sigv4.verify(*put, KEYS) is None


@pytest.mark.parametrize(
    "mode",
    [
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    ],
)
def test_a_streaming_upload_is_refused(mode: str) -> None:
    """Its chunk signatures are not checked, so it is not taken on its seed signature."""

    class Streaming(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return mode

    request = signed(Streaming(boto(), "s3", "us-east-1"), "PUT", "http://127.0.0.1:4000/b/code/train.py",
                     b"5;chunk-signature=00\r\nhello\r\n0;chunk-signature=00\r\n\r\n",
                     {"Content-Encoding": "aws-chunked"})  # fmt: skip
    assert request[2]["x-amz-content-sha256"] == [mode]
    reason = sigv4.verify(*request, KEYS)
    assert reason and "streaming (aws-chunked) uploads are not taken" in reason


def test_an_s3_signature_is_checked_before_the_body_is_read() -> None:
    """S3 sends the payload's hash in a signed header: screen() verifies the whole
    signature from the headers alone, so a wrong secret is refused before a byte of a
    large body is read. The JSON protocols sign a hash they do not send: screen() checks
    what it can, and verify() the signature once the (bounded) body is in."""
    method, target, headers, body = signed(
        S3SigV4Auth(boto(), "s3", "us-east-1"), "PUT", "http://127.0.0.1:4000/b/k", b"x" * 1000
    )
    claim = sigv4.screen(method, target, headers, KEYS)
    assert isinstance(claim, sigv4.Claim) and claim.checked and claim.service == "s3"
    wrong = sigv4.screen(method, target, headers, sigv4.Credentials(KEYS.access_key, "not the secret"))
    assert isinstance(wrong, str) and "does not match" in wrong
    no_hash = {k: v for k, v in headers.items() if k != "x-amz-content-sha256"}
    assert "x-amz-content-sha256" in str(sigv4.screen(method, target, no_hash, KEYS))
    method, target, headers, body = signed(*JSON_CALL)
    claim = sigv4.screen(method, target, headers, KEYS)
    assert isinstance(claim, sigv4.Claim) and not claim.checked and claim.service == "sagemaker"
    assert "does not match" in str(sigv4.verify(method, target, headers, body + b" ", KEYS))


def test_a_principals_key_pair_is_derived_from_the_clouds_and_names_it() -> None:
    role = KEYS.principal(sigv4.EXECUTION_ROLE)
    function = KEYS.principal("function/api_handler")
    assert role.access_key.startswith(sigv4.PRINCIPAL_KEY_PREFIX) and role.secret_key != KEYS.secret_key
    assert role != function and KEYS.principal(sigv4.EXECUTION_ROLE) == role  # stable, one per principal
    method, target, headers, body = signed(SigV4Auth(boto(role), "sagemaker", "us-east-1"), *JSON_CALL[1:])
    claim = sigv4.verified(method, target, headers, body, KEYS)
    assert isinstance(claim, sigv4.Claim) and claim.principal == sigv4.EXECUTION_ROLE
    own = sigv4.verified(*signed(SigV4Auth(boto(), "sagemaker", "us-east-1"), *JSON_CALL[1:]), KEYS)
    assert isinstance(own, sigv4.Claim) and own.principal == ""
    # A principal's key ID with a secret that is not derived from the cloud's is refused; so is
    # another cloud's derivation, and a key ID whose name is not a principal's.
    forged = sigv4.Credentials(role.access_key, "guessed")
    other = sigv4.Credentials("TLOCBBBBBBBBBBBBBBBB", "another cloud").principal(sigv4.EXECUTION_ROLE)
    for keys in (forged, other):
        reason = sigv4.verify(*signed(SigV4Auth(boto(keys), "sagemaker", "us-east-1"), *JSON_CALL[1:]), KEYS)
        assert reason and "signature does not match" in reason, reason
    for key_id in ("TLPR", "TLPR!!!!", "TLPR" + "MFRGG", "TLPRNBSWY3DP"):  # empty, not base32, "abc", "hello"
        assert KEYS.signer(key_id) is None, key_id
    with pytest.raises(ValueError):
        KEYS.principal("no kind")
