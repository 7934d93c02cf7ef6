"""The local SageMaker's errors, as AWS names them on the wire (``__type`` / ``x-amzn-ErrorType``)."""

from __future__ import annotations

from chalicelib import spec


class ServiceError(spec.TuneloopError):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
