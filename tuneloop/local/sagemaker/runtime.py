"""SageMaker Runtime on the local SageMaker: InvokeEndpoint, data capture and endpoint metrics.

``InvokeEndpoint`` (reached through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``) picks one of
the endpoint's fleets by traffic weight, forwards the request, records data capture in
SageMaker's capture format under the config's ``DestinationS3Uri`` and publishes the
AWS/SageMaker metrics (Invocations, Invocation4XXErrors, Invocation5XXErrors,
ModelLatency) to CloudWatch, in batches.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from typing import Any

from ..container.serving import ERROR_MARK
from . import eventstream
from .common import ACCOUNT, now
from .exceptions import ServiceError
from .hosting import READY_TIMEOUT_S, Endpoint, Fleet, Hosting
from .staging import split_s3

log = logging.getLogger("tuneloop.runtime")

# InvokeEndpoint's InferenceId, as botocore's model has it: 1-64 characters, \A\S[\p{Print}]*\z.
INFERENCE_ID_MAX = 64
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"


class Runtime:
    def __init__(self, hosting: Hosting, s3: Any, cloudwatch: Any = None) -> None:
        self.hosting = hosting
        self.s3 = s3
        self.cloudwatch = cloudwatch
        self.lock = threading.Lock()
        self.closing = False
        self.capture: dict[tuple[str, str, str], list[str]] = {}
        self.metrics: dict[tuple[str, str], dict[str, list[float]]] = {}
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self._flusher.start()

    def close(self) -> None:
        self.closing = True
        self._flush()

    def _fleet(self, name: str, inference_id: str | None) -> tuple[Endpoint, Fleet]:
        """The endpoint and the fleet (by traffic weight) to send a request to, once ready."""
        if inference_id is not None and not _valid_inference_id(inference_id):
            raise ServiceError(
                "ValidationError",
                "1 validation error detected: Value at 'InferenceId' failed to satisfy constraint: "
                "Member must have length between 1 and 64 and start with a printable character that is "
                "not a space, followed by printable characters",
                400,
            )
        endpoint = self.hosting.endpoints.get(name)
        if endpoint is None:
            raise ServiceError("ValidationError", f"Endpoint {name} of account {ACCOUNT} not found.", 400)
        fleet = endpoint.pick()
        if not fleet.ready.wait(READY_TIMEOUT_S):
            raise ServiceError("ServiceUnavailable", f"Endpoint {name} is not ready", 503)
        return endpoint, fleet

    def invoke(
        self, name: str, body: bytes, content_type: str, accept: str, inference_id: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """Forward one request. ``inference_id`` is the caller's InferenceId: it goes into
        the capture record, and the response's X-Amzn-SageMaker-Inference-Id header
        returns it (or, without one, the capture record's event id) so that labels that
        arrive later can be joined to the captured request."""
        endpoint, fleet = self._fleet(name, inference_id)
        started = time.monotonic()
        status, answer, mime = fleet.invoke(body, content_type, accept)
        latency_us = (time.monotonic() - started) * 1e6
        event_id = self._record(endpoint, fleet, body, content_type, answer, mime, status, latency_us, inference_id)
        headers = {"Content-Type": mime, "x-Amzn-Invoked-Production-Variant": fleet.variant}
        if inference_id or event_id:
            headers[INFERENCE_ID_HEADER] = inference_id or event_id or ""
        if status != 200:
            return model_error(status, answer)
        return 200, answer, headers

    def invoke_stream(
        self, name: str, body: bytes, content_type: str, accept: str, inference_id: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """InvokeEndpointWithResponseStream: (200, event-stream messages as the model writes
        its answer, headers), or an error answered as InvokeEndpoint answers it. When the
        stream ends, the request is counted and captured with the whole completion
        (``{"generated_text": ...}``), as a non-streamed answer would be; an answer the
        model sent whole (the request did not ask for ``"stream": true``), as it was sent."""
        endpoint, fleet = self._fleet(name, inference_id)
        started = time.monotonic()
        status, answer, mime = fleet.invoke_stream(body, content_type, accept)
        headers = {"x-Amzn-Invoked-Production-Variant": fleet.variant}
        if status != 200:
            latency_us = (time.monotonic() - started) * 1e6
            self._record(endpoint, fleet, body, content_type, answer, mime, status, latency_us, inference_id)
            return model_error(status, answer)

        def events() -> Any:
            parts: list[bytes] = []
            failed = None
            for piece in answer:
                text, mark, error = piece.partition(ERROR_MARK)
                if text:
                    parts.append(text)
                    yield eventstream.payload_part(text)
                if mark:
                    failed = json.loads(error or b"{}").get("message", "the model failed while streaming")
                    yield eventstream.model_stream_error(failed)
                    break
            latency_us = (time.monotonic() - started) * 1e6
            whole = b"".join(parts)
            if not mime.startswith("application/json"):  # pieces of text, not an answer sent whole
                whole = json.dumps({"generated_text": whole.decode(errors="replace")}).encode()
            self._record(endpoint, fleet, body, content_type, whole, "application/json", 500 if failed else 200,
                         latency_us, inference_id)  # fmt: skip

        return 200, events(), {**headers, "Content-Type": "application/vnd.amazon.eventstream"}

    def _record(
        self, endpoint: Endpoint, fleet: Fleet, body: bytes, content_type: str, answer: bytes, mime: str,
        status: int, latency_us: float, inference_id: str | None,
    ) -> str | None:  # fmt: skip
        """Count the request in the endpoint's metrics and capture it: its event id, when captured."""
        with self.lock:
            metrics = self.metrics.setdefault((endpoint.name, fleet.variant), {})
            metrics.setdefault("Invocations", []).append(1.0)
            metrics.setdefault("Invocation4XXErrors", []).append(1.0 if 400 <= status < 500 else 0.0)
            metrics.setdefault("Invocation5XXErrors", []).append(1.0 if status >= 500 else 0.0)
            metrics.setdefault("ModelLatency", []).append(latency_us)
        capture = self.hosting.configs.get(fleet.config, {}).get("DataCaptureConfig")
        if not capture or not capture.get("EnableCapture", True) or status != 200:
            return None
        if random.random() * 100 >= float(capture.get("InitialSamplingPercentage", 100)):
            return None
        metadata = {"eventId": str(uuid.uuid4()), "inferenceTime": now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        if inference_id:
            metadata["inferenceId"] = inference_id
        record = {
            "captureData": {
                "endpointInput": _captured(body, content_type, "INPUT"),
                "endpointOutput": _captured(answer, mime, "OUTPUT"),
            },
            "eventMetadata": metadata,
            "eventVersion": "0",
        }
        with self.lock:
            self.capture.setdefault((capture["DestinationS3Uri"], endpoint.name, fleet.variant), []).append(
                json.dumps(record)
            )
        return metadata["eventId"]

    def _flush_loop(self) -> None:
        while not self.closing:
            time.sleep(1.0)
            try:
                self._flush()
            except Exception:  # a flush that failed is retried with the next one
                log.exception("capture/metrics flush failed")

    def _flush(self) -> None:
        with self.lock:
            capture, self.capture = self.capture, {}
            metrics, self.metrics = self.metrics, {}
        stamp = now()
        for (destination, endpoint, variant), lines in capture.items():
            bucket, prefix = split_s3(destination.rstrip("/"))
            key = (
                f"{prefix}/{endpoint}/{variant}/{stamp:%Y/%m/%d/%H}/{stamp:%M-%S-%f}-{uuid.uuid4().hex[:8]}.jsonl"
            ).lstrip("/")
            self.s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
        if self.cloudwatch is not None:
            for (endpoint, variant), values in metrics.items():
                dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
                data = []
                for name, series in values.items():
                    if name == "ModelLatency":
                        data.append({"MetricName": name, "Dimensions": dimensions, "Values": series[:150],
                                     "Unit": "Microseconds", "Timestamp": stamp})  # fmt: skip
                    else:
                        data.append({"MetricName": name, "Dimensions": dimensions, "Value": sum(series),
                                     "Unit": "Count", "Timestamp": stamp})  # fmt: skip
                self.cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=data)


def model_error(status: int, answer: bytes) -> tuple[int, bytes, dict[str, str]]:
    """A model's 4xx or 5xx as SageMaker Runtime answers it: a 424 ModelError."""
    message = answer.decode(errors="replace")
    kind = "CLIENT" if status < 500 else "SERVER"
    error = {
        "ErrorCode": f"{kind}_ERROR_FROM_MODEL",
        "OriginalStatusCode": status,
        "OriginalMessage": message,
        "Message": f'Received {kind.lower()} error ({status}) from primary with message "{message}".',
    }
    return 424, json.dumps(error).encode(), {"x-amzn-ErrorType": "ModelError", "Content-Type": "application/json"}


def _captured(data: bytes, content_type: str, mode: str) -> dict[str, Any]:
    """SageMaker's capture record half: JSON bodies as text, anything else base64."""
    if content_type.split(";")[0].strip() in ("application/json", "text/csv"):
        try:
            return {"observedContentType": content_type, "mode": mode, "data": data.decode(), "encoding": "JSON"
                    if "json" in content_type else "CSV"}  # fmt: skip
        except UnicodeDecodeError:
            pass
    return {"observedContentType": content_type, "mode": mode, "data": base64.b64encode(data).decode(),
            "encoding": "BASE64"}  # fmt: skip


def _valid_inference_id(value: str) -> bool:
    return 0 < len(value) <= INFERENCE_ID_MAX and value.isprintable() and not value[0].isspace()
