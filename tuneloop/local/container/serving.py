"""A model server as SageMaker's inference containers run one, for the local cloud.

``GET /ping`` answers 200 once the model is loaded; ``POST /invocations`` runs the
model's own handlers, ``code/inference.py`` inside ``model.tar.gz`` (``model_fn``,
``input_fn``, ``predict_fn``, ``output_fn``), as the SageMaker inference toolkit does.
A handler's ``PayloadError`` (any ``ValueError``) is a 400 with its message; anything else
is a 500. The process binds 127.0.0.1 on a free port and writes it to ``--port-file``
once the model is loaded, so whoever started it knows when and where it serves. It
answers only requests with a loopback ``Host`` and ``Authorization: Bearer <token>``, the
token its starter put in ``TUNELOOP_MODEL_SERVER_TOKEN``: the local SageMaker Runtime,
which checks the caller's signature, is the way in.

``--batch-input``/``--batch-output`` runs a transform instead: every line of every input
file is one request; answers go to ``<file>.out``, one line each, as SageMaker's batch
transform writes them with ``AssembleWith: Line``. With ``--capture-output`` (the job's
``DataCaptureConfig`` with ``GenerateInferenceId``) each answer is wrapped as
``{"SageMakerOutput": …, "SageMakerInferenceId": …, "SageMakerInferenceTime": …}`` and a
capture record in the endpoints' format (``eventMetadata.inferenceId``) is written per line,
so labels that arrive later can be joined to batch predictions as to real-time ones.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from tuneloop.local.httpserve import Handler, LoopbackServer

log = logging.getLogger("tuneloop.serving")
TOKEN_ENV = "TUNELOOP_MODEL_SERVER_TOKEN"
MAX_BODY_BYTES = 6 * 1024 * 1024 + 1024  # SageMaker Runtime's payload limit


def load_handlers(model_dir: Path) -> ModuleType:
    path = model_dir / "code" / "inference.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the model carries no serving handlers")
    spec = importlib.util.spec_from_file_location("model_inference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Model:
    def __init__(self, model_dir: Path) -> None:
        self.handlers = load_handlers(model_dir)
        self.loaded = self.handlers.model_fn(str(model_dir))

    def answer(self, body: bytes, content_type: str, accept: str) -> tuple[int, bytes, str]:
        try:
            data = self.handlers.input_fn(body, content_type)
            prediction = self.handlers.predict_fn(data, self.loaded)
            text, mime = self.handlers.output_fn(prediction, accept)
        except ValueError as exc:
            return 400, json.dumps({"message": str(exc)}).encode(), "application/json"
        except Exception as exc:  # the model failed: a 500, as a container would answer
            log.exception("invocation failed")
            return 500, json.dumps({"message": f"{type(exc).__name__}: {exc}"}).encode(), "application/json"
        return 200, text.encode() if isinstance(text, str) else bytes(text), mime

    def stream(self, body: bytes, content_type: str) -> tuple[int, Any, str]:
        """(200, text pieces as generated, mime) or (status, an error body, mime): refused
        input is answered before anything streams. As SageMaker's PyTorch serving stack
        streams only a request that asks (``"stream": true``), one that does not is
        answered whole, as one JSON piece."""
        if not hasattr(self.handlers, "stream_fn"):
            return 400, json.dumps({"message": "this model's handlers cannot stream"}).encode(), "application/json"
        try:
            data = self.handlers.input_fn(body, content_type)
        except ValueError as exc:
            return 400, json.dumps({"message": str(exc)}).encode(), "application/json"
        if not data.get("stream"):
            status, answer, mime = self.answer(body, content_type, "application/json")
            return (status, iter([answer.decode()]), mime) if status == 200 else (status, answer, mime)
        try:
            pieces = self.handlers.stream_fn(data, self.loaded)
            first = next(pieces, None)  # input errors surface here, before the 200 goes out
        except ValueError as exc:
            return 400, json.dumps({"message": str(exc)}).encode(), "application/json"
        except Exception as exc:  # the model failed before its first word
            log.exception("streamed invocation failed")
            return 500, json.dumps({"message": f"{type(exc).__name__}: {exc}"}).encode(), "application/json"

        def all_pieces() -> Iterator[str]:
            if first is not None:
                yield first
            yield from pieces

        return 200, all_pieces(), "text/plain; charset=utf-8"


STREAM_HEADER = "X-Tuneloop-Stream"
ERROR_MARK = b"\x00"  # a model's text never holds a NUL: what follows it is the failure


class _Handler(Handler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    foreign_host = ("Forbidden", "only the local SageMaker Runtime may call a model server")

    def error_body(self, status: int, code: str, message: str) -> tuple[bytes, dict[str, str]]:
        """The model server's error: ``{"message"}``, as the runtime passes it on."""
        return json.dumps({"message": message}).encode(), {"Content-Type": "application/json"}

    def _send(self, status: int, body: bytes, mime: str = "application/json") -> None:
        self.reply(status, body, {"Content-Type": mime})

    def _allowed(self) -> bool:
        """The starter's token, checked before the body is read."""
        supplied = (self.headers.get("Authorization") or "").encode()
        if not hmac.compare_digest(supplied, f"Bearer {self.server.token}".encode()):
            self.refuse(403, "Forbidden", "only the local SageMaker Runtime may call a model server")
            return False
        return True

    def do_GET(self) -> None:
        if not self._allowed():
            return
        if self.path == "/ping":
            self._send(200, b"{}")
        else:
            self.refuse(404, "NotFound", "not found", close=False)

    def do_POST(self) -> None:
        if not self._allowed():
            return
        declared = self.headers.get("Content-Length") or "0"
        if not (declared.isascii() and declared.isdigit()) or int(declared) > MAX_BODY_BYTES:
            return self.refuse(413 if declared.isdigit() else 400, "BadRequest", "bad or too large Content-Length")
        body = self.read_body(int(declared))
        if self.path != "/invocations":
            self.refuse(404, "NotFound", "not found", close=False)
            return
        if self.headers.get(STREAM_HEADER) == "1":
            return self._stream(body)
        status, answer, mime = self.server.model.answer(
            body, self.headers.get("Content-Type", "application/json"), self.headers.get("Accept", "application/json")
        )
        self._send(status, answer, mime)

    def _stream(self, body: bytes) -> None:
        """The answer as it is generated: each piece one HTTP chunk, then the last chunk.
        A failure mid-way ends the stream with a chunk of ERROR_MARK and the reason (JSON),
        which the runtime turns into a ModelStreamError event."""
        status, answer, mime = self.server.model.stream(body, self.headers.get("Content-Type", "application/json"))
        if status != 200:
            self._send(status, answer, mime)
            return
        self.send_response(200)
        self.send_header("Content-Type", mime)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            for piece in answer:
                chunk(piece.encode())
        except Exception as exc:
            log.exception("stream failed mid-way")
            chunk(ERROR_MARK + json.dumps({"message": f"{type(exc).__name__}: {exc}"}).encode())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(LoopbackServer):
    def __init__(self, model: Model, token: str) -> None:
        self.model = model
        self.token = token
        super().__init__(_Handler)


def serve(model_dir: Path, port_file: Path) -> None:
    token = os.environ.pop(TOKEN_ENV, "")
    if len(token) < 16:
        raise SystemExit(f"{TOKEN_ENV} must hold the token callers present (16+ characters)")
    server = _Server(Model(model_dir), token)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(port_file)  # appears whole, and only once the model is loaded
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Serve until the parent closes our stdin (or kills us).
    sys.stdin.read()
    server.shutdown()


def transform(model_dir: Path, source: Path, target: Path, capture: Path | None = None) -> int:
    model = Model(model_dir)
    target.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        lines = path.read_bytes().splitlines()
        out, records = [], []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            status, answer, _ = model.answer(line, "application/json", "application/json")
            if status != 200:
                failures += 1
                print(f"{path.name}:{number}: {answer.decode(errors='replace')}", file=sys.stderr)
            elif capture is not None:
                answer, record = _with_inference_id(line, answer)
                records.append(record)
            out.append(answer)
        # As SageMaker does: the output mirrors the input's layout, sub-folders included.
        relative = path.relative_to(source)
        result = target / f"{relative}.out"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_bytes(b"\n".join(out) + b"\n")
        if capture is not None and records:
            captured = capture / f"{relative}.jsonl"
            captured.parent.mkdir(parents=True, exist_ok=True)
            captured.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return failures


def _with_inference_id(request: bytes, answer: bytes) -> tuple[bytes, dict[str, Any]]:
    """The answer with its generated inference id and time, and the line's capture record."""
    inference_id = str(uuid.uuid4())
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        output: Any = json.loads(answer)
    except ValueError:  # a handler that answers other than JSON: its text, as it was
        output = answer.decode("utf-8", errors="replace")
    wrapped = {"SageMakerOutput": output, "SageMakerInferenceId": inference_id,
               "SageMakerInferenceTime": when}  # fmt: skip
    record = {
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                              "data": request.decode("utf-8", errors="replace"), "encoding": "JSON"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": answer.decode("utf-8", errors="replace"), "encoding": "JSON"},
        },
        "eventMetadata": {"eventId": inference_id, "inferenceId": inference_id, "inferenceTime": when},
        "eventVersion": "0",
    }  # fmt: skip
    return json.dumps(wrapped).encode(), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port-file")
    parser.add_argument("--batch-input")
    parser.add_argument("--batch-output")
    parser.add_argument("--capture-output", help="write a capture record per line and an inference id per answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("TUNELOOP_LOG_LEVEL", "INFO"))
    if args.batch_input:
        capture = Path(args.capture_output) if args.capture_output else None
        failures = transform(Path(args.model_dir), Path(args.batch_input), Path(args.batch_output), capture)
        if failures:
            print(f"ClientError: {failures} record(s) failed; see the lines above", file=sys.stderr)
        return 1 if failures else 0
    serve(Path(args.model_dir), Path(args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
