"""AWS Signature Version 4, checked on the server side: the local cloud's services answer
only callers that hold its credentials (issue 11).

``verify`` recomputes the signature a request carries, from what arrived on the wire, as
AWS does: the canonical request (method, path, query, the headers the caller signed, the
payload's hash), the string to sign and the key derived from the secret. It takes the
``Authorization`` header and presigned URLs (``X-Amz-Signature`` in the query, how a
report link reaches a browser). It answers ``None`` for a good signature, otherwise the
one-line reason the request is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
# How far a signed request's X-Amz-Date may be from the server's clock (as AWS allows).
CLOCK_SKEW = timedelta(minutes=15)
# The longest a presigned URL may be valid (SigV4's limit).
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


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
        if sep:
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


def verify(
    method: str,
    target: str,
    headers: Mapping[str, Sequence[str]],
    body: bytes,
    credentials: Credentials,
    now: datetime | None = None,
) -> str | None:
    """``target`` is the request line's path and query, exactly as received; ``headers``
    maps each lower-case header name to its values. None when the signature is good."""
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
    if not hmac.compare_digest(access_key.encode(), credentials.access_key.encode()):
        return "the access key is not the local cloud's (see `tuneloop status`)"
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
        payload = "UNSIGNED-PAYLOAD" if service == "s3" else hashlib.sha256(body).hexdigest()
    else:
        claimed = header("x-amz-content-sha256")
        actual = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        if claimed and not claimed.startswith(UNSIGNED_PAYLOADS) and claimed != actual:
            return "the body's SHA-256 is not the x-amz-content-sha256 that was signed"
        payload = claimed or actual
    canonical = "\n".join(
        [
            method.upper(),
            _canonical_path(path, service),
            _canonical_query(query, drop="X-Amz-Signature" if presigned else None),
            "".join(f"{name}:{header(name)}\n" for name in names),
            signed,
            payload,
        ]
    )
    to_sign = "\n".join(
        [ALGORITHM, stamp, f"{date}/{region}/{service}/aws4_request", hashlib.sha256(canonical.encode()).hexdigest()]
    )
    expected = hmac.new(
        _signing_key(credentials.secret_key, date, region, service), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "the signature does not match: the secret key is not the local cloud's, or the request was changed"
    return None


def generate() -> Credentials:
    """Fresh credentials for one local cloud: an access key ID in AWS's shape and a
    40-character secret, both random."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key = "TLOC" + "".join(secrets.choice(alphabet) for _ in range(16))
    return Credentials(key, secrets.token_urlsafe(30))
