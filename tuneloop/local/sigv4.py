"""AWS Signature Version 4, checked on the server side: the local cloud's services answer
only callers that hold its credentials.

``screen`` reads what it can of a request's signature from its request line and headers,
before any of the body is read: the access key ID, the scope, the date, the signed
headers and, where the headers carry the payload's hash (S3), the whole signature.
``verify`` finishes the check with the body: the signature over the body's hash (the JSON
and query protocols), or the body's hash against the one that was signed. They take the
``Authorization`` header and presigned URLs (``X-Amz-Signature`` in the query, how a
report link reaches a browser). An unsigned payload is taken only where AWS takes one
(S3); streaming (aws-chunked) uploads, whose chunk signatures are not checked here, are
refused. Each answers the one-line reason a request is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
# How far a signed request's X-Amz-Date may be from the server's clock (as AWS allows).
CLOCK_SKEW = timedelta(minutes=15)
# The longest a presigned URL may be valid (SigV4's limit).
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PREFIX = "STREAMING-"
_SHA256 = re.compile(r"[0-9a-f]{64}")


# A principal's access key ID: this prefix, then its name in base32 (no padding).
PRINCIPAL_KEY_PREFIX = "TLPR"
PRINCIPAL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,20}/[A-Za-z0-9_.-]{1,64}")
# The SageMaker execution role: what jobs run as (a function's is ``function/<name>``).
EXECUTION_ROLE = "role/sagemaker-execution"


@dataclass(frozen=True)
class Credentials:
    """One key pair. The local cloud's own pair also stands for each principal's (a
    function's role, the execution role): ``principal`` derives that principal's pair from
    the secret key, so only a holder of the cloud's secret can make one, and the services
    need keep no list of them."""

    access_key: str
    secret_key: str

    def principal(self, name: str) -> Credentials:
        """The key pair of principal ``name`` (``function/api_handler``, ``role/sagemaker-execution``)."""
        if not PRINCIPAL_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a principal's name (kind/name)")
        key = PRINCIPAL_KEY_PREFIX + base64.b32encode(name.encode()).decode().rstrip("=")
        derived = hmac.new(self.secret_key.encode(), b"tuneloop principal: " + name.encode(), hashlib.sha256)
        return Credentials(key, base64.urlsafe_b64encode(derived.digest()).decode().rstrip("="))

    def signer(self, access_key: str) -> tuple[Credentials, str] | None:
        """The key pair an access key ID names, and its principal ("" for this pair's own),
        or None when it is neither this pair's nor a principal's."""
        if hmac.compare_digest(access_key.encode(), self.access_key.encode()):
            return self, ""
        if not access_key.startswith(PRINCIPAL_KEY_PREFIX):
            return None
        encoded = access_key[len(PRINCIPAL_KEY_PREFIX) :]
        try:
            name = base64.b32decode(encoded + "=" * (-len(encoded) % 8)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not PRINCIPAL_NAME.fullmatch(name):
            return None
        return self.principal(name), name


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _canonical_path(path: str, service: str) -> str:
    """S3 signs the path as sent; every other service signs it normalised and encoded
    once more (what botocore sends, already percent-encoded, is encoded again)."""
    if service == "s3":
        return path or "/"
    segments: list[str] = []
    for segment in (path or "/").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalised = "/" + "/".join(segments)
    if path.endswith("/") and normalised != "/":
        normalised += "/"
    return quote(normalised, safe="/~")


def _canonical_query(query: str, drop: str | None = None) -> str:
    pairs = []
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")
        if key == drop:
            continue
        pairs.append((key, value))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _query_values(query: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")
        values.setdefault(unquote(key), unquote(value))
    return values


def _parse_authorization(header: str) -> dict[str, str] | str:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        return f"the Authorization header is not {ALGORITHM} (SigV4)"
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("Credential", "SignedHeaders", "Signature"):
            return f"the Authorization header has a field SigV4 does not: {part.strip()[:40]!r}"
        if key in fields:  # a router may read the first, the check the last: neither is taken
            return f"the Authorization header names {key} twice"
        fields[key] = value
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        return f"the Authorization header has no {', '.join(missing)}"
    return fields


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class Claim:
    """What a request's signature says, read from its request line and headers alone.

    ``payload`` is the payload hash the signature covers when the headers name it (S3's
    ``x-amz-content-sha256``, ``UNSIGNED-PAYLOAD``), and then ``checked`` is true: the
    signature was verified before any of the body was read. Otherwise (the JSON and query
    protocols, which sign the body's hash without sending it) it is None, and the signature
    can only be checked once the body is in."""

    service: str
    payload: str | None
    checked: bool
    signature: _Signed = field(repr=False)
    # Who signed: "" for the local cloud's own key, else the principal (``function/…``).
    principal: str = ""
    credentials: Credentials | None = field(default=None, repr=False)


def screen(
    method: str,
    target: str,
    headers: Mapping[str, Sequence[str]],
    credentials: Credentials,
    now: datetime | None = None,
) -> Claim | str:
    """Everything about a request's signature that needs no body: the Claim, or the
    one-line reason it is refused. A server calls this before it reads the body, so a
    caller without the secret key gets no further than its headers."""
    now = now or datetime.now(UTC)
    path, _, query = target.partition("?")

    def header(name: str) -> str:
        values = headers.get(name) or []
        return ",".join(" ".join(v.split()) for v in values)

    presigned = "X-Amz-Signature=" in query
    if presigned:
        params = _query_values(query)
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            return f"the presigned URL's X-Amz-Algorithm is not {ALGORITHM}"
        credential, signed, signature = (
            params.get("X-Amz-Credential", ""),
            params.get("X-Amz-SignedHeaders", ""),
            params.get("X-Amz-Signature", ""),
        )
        stamp = params.get("X-Amz-Date", "")
    else:
        authorization = header("authorization")
        if not authorization and "AWSAccessKeyId=" in query:
            return (
                "the presigned URL is signed with SigV2 (AWSAccessKeyId, Signature): the local cloud takes SigV4 "
                "only; presign with botocore Config(signature_version='s3v4')"
            )
        if not authorization:
            return "the request is not signed: no Authorization header (SigV4, with the local cloud's credentials)"
        fields = _parse_authorization(authorization)
        if isinstance(fields, str):
            return fields
        credential, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        stamp = header("x-amz-date")
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return "the credential scope is not <key>/<date>/<region>/<service>/aws4_request"
    access_key, date, region, service, _ = scope
    signer = credentials.signer(access_key)
    if signer is None:
        return "the access key is not the local cloud's (see `tuneloop status`)"
    credentials, principal = signer
    signed_at = _parse_time(stamp)
    if signed_at is None:
        return "the request has no valid X-Amz-Date"
    if date != stamp[:8]:
        return "the credential scope's date is not the X-Amz-Date's"
    if presigned:
        expires = _query_values(query).get("X-Amz-Expires", "")
        if not expires.isdigit() or not 0 < int(expires) <= MAX_PRESIGN_EXPIRES_S:
            return "the presigned URL's X-Amz-Expires is not 1 to 604800 seconds"
        if now > signed_at + timedelta(seconds=int(expires)):
            return "the presigned URL has expired"
        if signed_at - now > CLOCK_SKEW:
            return "the presigned URL is dated in the future"
    elif abs(now - signed_at) > CLOCK_SKEW:
        return "the request's X-Amz-Date is more than 15 minutes from the server's clock"
    names = signed.split(";")
    if "host" not in names:
        return "the signature does not cover the Host header"
    if presigned:
        payload: str | None = UNSIGNED_PAYLOAD if service == "s3" else None
    else:
        claimed = header("x-amz-content-sha256")
        if claimed.startswith(STREAMING_PREFIX):
            # Chunk signatures are not checked here: a signed streaming upload is refused
            # rather than taken on its seed signature alone.
            return (
                f"x-amz-content-sha256 {claimed[:64]!r}: streaming (aws-chunked) uploads are not taken by the "
                "local cloud; sign the whole payload's SHA-256, as botocore does over http"
            )
        if claimed == UNSIGNED_PAYLOAD and service != "s3":
            return f"x-amz-content-sha256 UNSIGNED-PAYLOAD: only S3 takes an unsigned payload, not {service}"
        if claimed and claimed != UNSIGNED_PAYLOAD and not _SHA256.fullmatch(claimed):
            return "x-amz-content-sha256 is not a SHA-256 in hex, nor UNSIGNED-PAYLOAD"
        if not claimed and service == "s3":
            return "an S3 request must carry x-amz-content-sha256 (the payload's SHA-256 it signed)"
        payload = claimed or None
    canonical_headers = "".join(f"{name}:{header(name)}\n" for name in names)
    request = _Signed(method, path, query, presigned, canonical_headers, signed, stamp, date, region, service,
                      signature)  # fmt: skip
    if payload is None:
        return Claim(service, None, False, request, principal, credentials)
    reason = request.check(payload, credentials)
    return reason or Claim(service, payload, True, request, principal, credentials)


@dataclass(frozen=True)
class _Signed:
    """A request's signature and what it says it covers."""

    method: str
    path: str
    query: str
    presigned: bool
    canonical_headers: str
    signed: str
    stamp: str
    date: str
    region: str
    service: str
    signature: str

    def check(self, payload: str, credentials: Credentials) -> str | None:
        canonical = "\n".join(
            [
                self.method.upper(),
                _canonical_path(self.path, self.service),
                _canonical_query(self.query, drop="X-Amz-Signature" if self.presigned else None),
                self.canonical_headers,
                self.signed,
                payload,
            ]
        )
        scope = f"{self.date}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join([ALGORITHM, self.stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = _signing_key(credentials.secret_key, self.date, self.region, self.service)
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), self.signature.encode()):
            return "the signature does not match: the secret key is not the local cloud's, or the request was changed"
        return None


def verify(
    method: str,
    target: str,
    headers: Mapping[str, Sequence[str]],
    body: bytes,
    credentials: Credentials,
    now: datetime | None = None,
) -> str | None:
    """``target`` is the request line's path and query, exactly as received; ``headers``
    maps each lower-case header name to its values. None when the signature is good and
    covers this body; otherwise the one-line reason the request is refused."""
    claim = verified(method, target, headers, body, credentials, now)
    return claim if isinstance(claim, str) else None


def verified(
    method: str,
    target: str,
    headers: Mapping[str, Sequence[str]],
    body: bytes,
    credentials: Credentials,
    now: datetime | None = None,
) -> Claim | str:
    """``verify``, answering the Claim (who signed) when the signature is good."""
    claim = screen(method, target, headers, credentials, now)
    if isinstance(claim, str):
        return claim
    actual = hashlib.sha256(body).hexdigest()
    if claim.payload is None:  # the signature covers the body's hash, which it does not send
        return claim.signature.check(actual, claim.credentials or credentials) or claim
    if claim.payload != UNSIGNED_PAYLOAD and claim.payload != actual:
        return "the body's SHA-256 is not the x-amz-content-sha256 that was signed"
    return claim


def generate() -> Credentials:
    """Fresh credentials for one local cloud: an access key ID in AWS's shape and a
    40-character secret, both random."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key = "TLOC" + "".join(secrets.choice(alphabet) for _ in range(16))
    return Credentials(key, secrets.token_urlsafe(30))
