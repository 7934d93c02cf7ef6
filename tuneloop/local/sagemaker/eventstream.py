"""AWS's event-stream framing (``application/vnd.amazon.eventstream``), as
InvokeEndpointWithResponseStream answers: each message is a prelude (total and headers
length, and their CRC32), string headers, the payload, and the message's CRC32. botocore
checks both checksums when it reads the stream."""

from __future__ import annotations

import json
import struct
import zlib

STRING = 7  # the header value type of a string


def _header(name: str, value: str) -> bytes:
    key, text = name.encode(), value.encode()
    return bytes([len(key)]) + key + bytes([STRING]) + struct.pack(">H", len(text)) + text


def message(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    head = prelude + struct.pack(">I", zlib.crc32(prelude))
    body = head + encoded + payload
    return body + struct.pack(">I", zlib.crc32(body))


def payload_part(data: bytes) -> bytes:
    """A PayloadPart event: a piece of the model's answer."""
    return message(
        {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"}, data
    )


def model_stream_error(message_text: str, code: str = "ModelStreamError") -> bytes:
    """The ModelStreamError exception event: the model failed while streaming."""
    payload = json.dumps({"Message": message_text, "ErrorCode": code}).encode()
    return message(
        {":exception-type": "ModelStreamError", ":content-type": "application/json", ":message-type": "exception"},
        payload,
    )
