"""The local runtime's event-stream frames, read back by botocore's own parser for
InvokeEndpointWithResponseStream (checksums and all)."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.eventstream import EventStream
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from tuneloop.local.sagemaker import eventstream


class Raw:
    """An HTTP body as botocore reads it, in odd-sized pieces (frames arrive split)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self) -> Any:
        for at in range(0, len(self.data), 7):
            yield self.data[at : at + 7]


def read(data: bytes) -> list[dict[str, Any]]:
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    shape = model.operation_model("InvokeEndpointWithResponseStream").output_shape.members["Body"]
    return list(EventStream(Raw(data), shape, EventStreamJSONParser(), "InvokeEndpointWithResponseStream"))


def test_payload_parts_read_back_as_botocore_sees_them() -> None:
    pieces = [b"stone ", "río".encode(), b"!"]
    data = b"".join(eventstream.payload_part(piece) for piece in pieces)
    assert read(data) == [{"PayloadPart": {"Bytes": piece}} for piece in pieces]


def test_a_model_error_mid_stream_is_botocores_model_stream_error() -> None:
    data = eventstream.payload_part(b"half ") + eventstream.model_stream_error("RuntimeError: out of memory")
    with pytest.raises(EventStreamError, match="out of memory"):
        read(data)


def test_a_damaged_frame_is_refused() -> None:
    frame = bytearray(eventstream.payload_part(b"hello"))
    frame[-6] ^= 0xFF  # a payload byte: the message checksum no longer holds
    with pytest.raises(Exception, match=r"(?i)crc|checksum"):
        read(bytes(frame))
