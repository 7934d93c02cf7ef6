"""tuneloop's local SageMaker: the SageMaker JSON protocol on loopback, jobs run here.

The app's unmodified boto3 client reaches it through ``AWS_ENDPOINT_URL_SAGEMAKER`` (and
SageMaker Runtime through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``, on the same port).
Every request is validated against botocore's SageMaker service model, so a request AWS
would reject with a ``ValidationException`` is rejected here the same way.

The parts, in the shape of moto's service packages:

- ``responses.py``  the wire protocol (HTTP, JSON, errors) and ``serve()``
- ``validation.py`` requests checked against botocore's service model
- ``backend.py``    the operations, the job registry, persistence
- ``jobs.py``       processing, training and transform jobs
- ``tuning.py``     hyperparameter tuning jobs (trials are training jobs)
- ``registry.py``   model package groups and packages
- ``hosting.py``    models, endpoint configs, endpoints (serving processes, blue/green)
- ``runtime.py``    InvokeEndpoint, data capture, endpoint metrics
- ``staging.py``    S3 in and out (the training code upload is ``tuneloop/training_code.py``)
- ``common.py``     account, region, time, ARNs, envelopes, durable files
- ``exceptions.py`` AWS's error codes

Imports run one way (responses → backend → the parts → common), never in a circle.
"""

from __future__ import annotations

from ...training_code import code_version, upload_code
from .backend import ENTRY_POINTS, LocalSageMaker
from .exceptions import ServiceError
from .responses import SageMakerHttpServer, serve

__all__ = [
    "ENTRY_POINTS",
    "LocalSageMaker",
    "SageMakerHttpServer",
    "ServiceError",
    "code_version",
    "serve",
    "upload_code",
]
