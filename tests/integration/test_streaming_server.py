"""The local model server sends each piece of a streamed answer as it is made: the model
here makes its second piece only once the caller has read the first, so a server that
held the answer back would never finish it."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from tuneloop.local.container import serving

pytestmark = pytest.mark.integration
TOKEN = "a-test-token-of-16+-chars"
HANDLERS = """
import json, threading

read_first = threading.Event()


def model_fn(model_dir):
    return {}


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(data, loaded):
    return {"generated_text": "first second"}


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"


def stream_fn(data, loaded):
    yield "first "
    if not read_first.wait(20):
        raise RuntimeError("nobody read the first piece")
    yield "second"
"""


def test_each_piece_goes_out_before_the_next_is_made(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(HANDLERS)
    server = serving._Server(serving.Model(tmp_path), TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        headers = {"Content-Type": "application/json", serving.STREAM_HEADER: "1", "Authorization": f"Bearer {TOKEN}"}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/invocations", json.dumps({"inputs": "x", "stream": True}), headers)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        assert response.read1(65536) == b"first "  # while the model waits for this read
        server.model.handlers.read_first.set()
        assert response.read() == b"second"
        # Not asked to stream: the whole answer, as one JSON piece.
        connection.request("POST", "/invocations", json.dumps({"inputs": "x"}), headers)
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read()) == {"generated_text": "first second"}
    finally:
        server.shutdown()
