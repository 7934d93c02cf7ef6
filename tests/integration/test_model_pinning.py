"""What was approved is what serves: a model package pins its artifact's ETag, and the
local SageMaker refuses to serve a package whose artifact was replaced afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from tuneloop.local.sagemaker.exceptions import ServiceError
from tuneloop.local.sagemaker.hosting import Hosting
from tuneloop.local.sagemaker.registry import Registry

pytestmark = pytest.mark.integration
BUCKET = "tuneloop-pinning-test"


def test_a_replaced_artifact_is_not_served(local_services: Any, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    key = "runs/aaaaaaaaaaaa/train/tl-aaaaaaaaaaaa-train-1/output/model.tar.gz"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=b"the approved model")["ETag"].strip('"')
    registry = Registry(tmp_path / "registry.json", lambda event: None)
    registry.create_group({"ModelPackageGroupName": "tl-demo"})
    container = {"Image": "inference:cpu", "ModelDataUrl": f"s3://{BUCKET}/{key}", "ModelDataETag": etag}
    arn = registry.create_package(
        {"ModelPackageGroupName": "tl-demo", "InferenceSpecification": {"Containers": [container]}}
    )["ModelPackageArn"]
    hosting = Hosting(tmp_path / "hosting", s3, lambda event: None, packages=registry)
    assert hosting.model_data({"ModelPackageName": arn}) == f"s3://{BUCKET}/{key}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"something else, after approval")
    with pytest.raises(ServiceError, match=r"changed since .* was registered"):
        hosting.model_data({"ModelPackageName": arn})
