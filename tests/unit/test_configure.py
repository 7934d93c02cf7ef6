"""`tuneloop configure`: images resolved by the sagemaker SDK, written into one stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from chalicelib.sagemaker import training_image
from tests.unit.test_sagemaker_requests import SETTINGS
from tuneloop import configure

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_images_are_the_regions_ecr_images(region: str) -> None:
    resolved = configure.images(region)
    for name, uri in resolved.items():
        assert f".dkr.ecr.{region}.amazonaws.com/" in uri, name
    assert "huggingface-pytorch-training" in resolved["TUNELOOP_TRAINING_IMAGE"]
    assert f"transformers{configure.TRANSFORMERS_VERSION}" in resolved["TUNELOOP_TRAINING_IMAGE"]
    assert "cpu" in resolved["TUNELOOP_PROCESSING_IMAGE"]
    # A causal LM serves where TorchServe streams its answers: SageMaker's PyTorch image.
    assert "/pytorch-inference:" in resolved["TUNELOOP_STREAMING_IMAGE"]
    # The stack's default ImageRepositoryArns cover what configure resolves (the
    # execution role pulls only those), and configure names them exactly.
    import fnmatch

    template = json.loads((REPO / "infra" / "resources.json").read_text())
    defaults = template["Parameters"]["ImageRepositoryArns"]["Default"].split(",")
    arns = configure.repository_arns(resolved)
    assert arns and all(a.startswith(f"arn:aws:ecr:{region}:") and ":repository/" in a for a in arns)
    assert all(any(fnmatch.fnmatchcase(arn, pattern) for pattern in defaults) for arn in arns), arns


def test_cpu_instances_get_the_cpu_image() -> None:
    settings = dataclasses.replace(SETTINGS, training_image_cpu="cpu-image")
    assert training_image(settings, "ml.m5.xlarge") == "cpu-image"
    assert training_image(settings, "ml.g5.xlarge") == SETTINGS.training_image
    assert training_image(SETTINGS, "ml.m5.xlarge") == SETTINGS.training_image  # no CPU image configured


def test_images_are_pinned_by_digest_read_from_ecr() -> None:
    """A tag can be moved to another image: the stage names each image by digest, so a
    model package names what was tested and approved (issue 11, item 7)."""
    import boto3
    from botocore.stub import Stubber

    values = configure.stage_settings("dev", "us-east-1", "123456789012", None, "abc123")
    ecr = boto3.client("ecr", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(ecr)
    images = {k: v for k, v in values.items() if k.endswith(configure.IMAGE_SUFFIXES)}
    digests = {}
    for n, (name, uri) in enumerate(images.items()):  # in the order configure asks
        account, _, path = uri.partition(".dkr.ecr.")[0], None, uri.partition("/")[2]
        repository, _, tag = path.rpartition(":")
        digests[name] = "sha256:" + f"{n:x}" * 64
        stub.add_response(
            "batch_get_image",
            {"images": [{"imageId": {"imageDigest": digests[name], "imageTag": tag}}], "failures": []},
            {"registryId": account, "repositoryName": repository, "imageIds": [{"imageTag": tag}]},
        )
    with stub:
        pinned = configure.pin_digests(values, ecr)
    for name, uri in images.items():
        assert pinned[name] == uri.rsplit(":", 1)[0] + "@" + digests[name]
    assert pinned["TUNELOOP_CODE_URI"] == values["TUNELOOP_CODE_URI"]
    assert configure.repository_arns(pinned) == configure.repository_arns(values)
    missing = Stubber(ecr)
    missing.add_response(
        "batch_get_image", {"images": [], "failures": [{"failureReason": "Requested image not found"}]}
    )
    with missing, pytest.raises(ValueError, match="not found"):
        configure.pin_digests({"TUNELOOP_TRAINING_IMAGE": next(iter(images.values()))}, ecr)
