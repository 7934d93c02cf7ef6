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
    served, _ = hosting.model_data({"ModelPackageName": arn})
    assert (served["ModelDataUrl"], served["ModelDataETag"]) == (f"s3://{BUCKET}/{key}", etag)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"something else, after approval")
    with pytest.raises(ServiceError, match=r"changed since .* was registered"):
        hosting.model_data({"ModelPackageName": arn})


def test_an_artifact_replaced_between_the_check_and_the_fetch_is_not_served(
    local_services: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pin is checked when the model is made and again by the fetch itself, which asks
    for the pinned ETag (If-Match): an artifact swapped in the moment between a check and a
    plain download cannot slip through."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    key = "runs/cccccccccccc/train/tl-cccccccccccc-train-1/output/model.tar.gz"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=_archive(tmp_path / "ok.tar.gz", {"w": b"ok"}))["ETag"]
    hosting = Hosting(tmp_path / "hosting", s3, lambda event: None)
    container = {"Image": "inference:cpu", "ModelDataUrl": f"s3://{BUCKET}/{key}", "ModelDataETag": etag.strip('"')}
    checked = hosting._check_pin

    def check_then_swap(uri: str, pinned: Any, since: str) -> None:
        checked(uri, pinned, since)  # the pin holds here …
        s3.put_object(Bucket=BUCKET, Key=key, Body=_archive(tmp_path / "bad.tar.gz", {"w": b"swapped"}))

    monkeypatch.setattr(hosting, "_check_pin", check_then_swap)
    with pytest.raises(ServiceError, match="not the pinned ETag"):  # … and the fetch still refuses the swap
        hosting.unpack("tl-cccccccccccc-model-1", container)


def _archive(path: Path, files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_an_adapters_base_is_laid_out_beside_it_and_pinned(local_services: Any, tmp_path: Path) -> None:
    """A package's AdditionalModelDataSources arrive where SageMaker puts them
    (additional-model-data-sources/<channel>/ beside the model folder), unpacked; a base
    archive replaced after registration is refused as the adapter would be."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    adapter_key, base_key = "runs/aaaaaaaaaaaa/output/model.tar.gz", "runs/bbbbbbbbbbbb/output/model.tar.gz"
    etags = {
        key: s3.put_object(Bucket=BUCKET, Key=key, Body=_archive(tmp_path / f"{n}.tar.gz", files))["ETag"].strip('"')
        for n, (key, files) in enumerate(
            [(adapter_key, {"adapter_config.json": b"{}"}), (base_key, {"config.json": b'{"base": 1}'})]
        )
    }
    s3.put_object(Bucket=BUCKET, Key="models/plain/config.json", Body=b'{"plain": 1}')
    source = {"S3Uri": f"s3://{BUCKET}/{base_key}", "S3DataType": "S3Object", "CompressionType": "Gzip"}
    container = {
        "Image": "inference:cpu",
        "ModelDataUrl": f"s3://{BUCKET}/{adapter_key}",
        "ModelDataETag": etags[adapter_key],
        "AdditionalModelDataSources": [{"ChannelName": "base", "S3DataSource": {**source, "ETag": etags[base_key]}}],
    }
    registry = Registry(tmp_path / "registry.json", lambda event: None)
    registry.create_group({"ModelPackageGroupName": "tl-demo"})
    arn = registry.create_package(
        {"ModelPackageGroupName": "tl-demo", "InferenceSpecification": {"Containers": [container]}}
    )["ModelPackageArn"]
    hosting = Hosting(tmp_path / "hosting", s3, lambda event: None, packages=registry)
    model = hosting.unpack("tl-aaaaaaaaaaaa-model-1", {"ModelPackageName": arn})
    assert (model / "adapter_config.json").read_bytes() == b"{}"
    from training import inference

    assert (inference.additional_source(model, "base") / "config.json").read_bytes() == b'{"base": 1}'
    # A base given as a prefix of files, not pinned (a direct CreateModel container).
    prefix = {"S3Uri": f"s3://{BUCKET}/models/plain/", "S3DataType": "S3Prefix", "CompressionType": "None"}
    direct = {**container, "AdditionalModelDataSources": [{"ChannelName": "base", "S3DataSource": prefix}]}
    model = hosting.unpack("tl-aaaaaaaaaaaa-model-2", direct)
    assert (inference.additional_source(model, "base") / "config.json").read_bytes() == b'{"plain": 1}'
    s3.put_object(Bucket=BUCKET, Key=base_key, Body=b"another base, after approval")
    with pytest.raises(ServiceError, match=rf"model data at s3://{BUCKET}/{base_key} changed since"):
        hosting.model_data({"ModelPackageName": arn})
