"""The local cloud's bucket snapshot on moto server: a key can never write outside it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import boto3
import pytest

from tuneloop.local import cloud
from tuneloop.local.files import private_folder
from tuneloop.local.gateway import database_key_id
from tuneloop.local.sagemaker.staging import download_prefix

pytestmark = pytest.mark.integration


class Bucket:
    """What snapshot_s3 needs of the cloud's state: an S3 client and the bucket."""

    def __init__(self, name: str) -> None:
        self.bucket = name
        self.s3 = boto3.client("s3")
        self.s3.create_bucket(Bucket=name)

    def client(self, service: str) -> Any:
        assert service == "s3"
        return self.s3


def test_a_key_leading_outside_the_snapshot_is_not_written(local_services: Any, tmp_path: Path) -> None:
    """Anyone who can PUT an object chose its key: /abs/path or ../.. must not become a
    file the owner's `tuneloop down` writes outside .tuneloop/s3."""
    state = Bucket("tuneloop-snapshot-test")
    victim = tmp_path / "victim.txt"
    keys = ["datasets/demo/ds/data.jsonl", str(victim), "../../escaped.txt", "a/../../../escaped-too.txt"]
    for key in keys:
        state.s3.put_object(Bucket=state.bucket, Key=key, Body=b"x")
    target = tmp_path / "home" / "s3"
    target.parent.mkdir()
    saved, refused = cloud.snapshot_s3(state, target)  # type: ignore[arg-type]
    assert saved == 1 and (target / "datasets/demo/ds/data.jsonl").read_bytes() == b"x"
    assert sorted(refused) == sorted(keys[1:])
    assert not victim.exists() and not list(tmp_path.rglob("escaped*"))
    # The local SageMaker's downloads (job inputs, checkpoints) keep every key inside the
    # job's folder the same way (a leading / is a sub-path there; ../ keys are refused).
    jobs = tmp_path / "job" / "input"
    assert download_prefix(state.s3, f"s3://{state.bucket}/", jobs) == 2
    assert (jobs / str(victim).lstrip("/")).is_file()
    assert not list(tmp_path.rglob("escaped*")) and not victim.exists()


def test_the_home_folder_is_the_owners_alone(tmp_path: Path) -> None:
    home = private_folder(tmp_path / ".tuneloop")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_the_local_clouds_credentials_are_made_once_and_kept_private(tmp_path: Path) -> None:
    home = private_folder(tmp_path / ".tuneloop")
    # A home from before the credentials: DynamoDB Local's one shared database.
    (home / "dynamodb").mkdir()
    (home / "dynamodb" / "shared-local-instance.db").write_bytes(b"tables")
    first = cloud.local_credentials(home)
    path = home / cloud.CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cloud.local_credentials(home) == first  # the same at every up: the tables stay theirs
    database = home / "dynamodb" / f"{database_key_id(first)}_us-east-1.db"
    assert database.read_bytes() == b"tables"  # under the gateway's own key ID, never the public one
    assert first.secret_key not in (home / "dynamodb").iterdir().__repr__()
    # A home whose tables an older version kept under the public key ID: adopted, not lost.
    database.rename(home / "dynamodb" / f"{first.access_key}_us-east-1.db")
    assert cloud.local_credentials(home) == first and database.read_bytes() == b"tables"
    renewed = cloud.local_credentials(home, renew=True)  # up --clean
    assert renewed != first and cloud.local_credentials(home) == renewed
    path.write_text("{}")
    with pytest.raises(cloud.ServiceError, match="credentials"):
        cloud.local_credentials(home)
