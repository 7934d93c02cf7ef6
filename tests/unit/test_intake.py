"""The dataset-drop convention and S3 key decoding."""

from __future__ import annotations

import pytest

from chalicelib.intake import IntakeIgnored, check_dataset_key, parse_object_created
from tests.conftest import load_event


def drop(key: str, **detail: object) -> dict:
    event = load_event("s3_object_created")
    event["detail"]["object"]["key"] = key
    event["detail"]["object"].update(detail)
    return event


def test_single_file_dataset() -> None:
    parsed = parse_object_created(drop("datasets/demo/ds-1/reviews.jsonl"))
    assert (parsed.project, parsed.dataset_id) == ("demo", "ds-1")
    assert parsed.dataset_uri == "s3://tuneloop-test/datasets/demo/ds-1/reviews.jsonl"


def test_manifest_completes_a_multi_file_dataset() -> None:
    assert check_dataset_key("datasets/demo/ds-2/manifest.json") == ("demo", "ds-2")
    with pytest.raises(IntakeIgnored, match=r"waiting for its manifest\.json"):
        check_dataset_key("datasets/demo/ds-2/files/part-0001.jsonl")


@pytest.mark.parametrize(
    "encoded,decoded",
    [
        ("datasets/demo/my+data/red+flower.jsonl", "datasets/demo/my data/red flower.jsonl"),
        ("datasets/demo/ds/c%2B%2B.jsonl", "datasets/demo/ds/c++.jsonl"),
        ("datasets/demo/ds/%C3%A9t%C3%A9.csv", "datasets/demo/ds/été.csv"),
        ("datasets/demo/ds/100%25.csv", "datasets/demo/ds/100%.csv"),
    ],
)
def test_keys_are_decoded_once(encoded: str, decoded: str) -> None:
    assert parse_object_created(drop(encoded)).key == decoded


@pytest.mark.parametrize(
    "key,reason",
    [
        ("uploads/demo/ds/x.jsonl", "outside"),
        ("datasets/demo/../etc/x.jsonl", "'..'"),
        ("datasets/demo/ds/x%0A.jsonl", "control characters"),
        ("datasets/demo/ds/x.parquet", "neither"),
        ("datasets/demo/x.jsonl", "not datasets/<project>"),
        ("datasets/Demo_Project/ds/x.jsonl", "not a valid project name"),
        ("datasets/demo//x.jsonl", "empty"),
    ],
)
def test_keys_that_start_nothing(key: str, reason: str) -> None:
    with pytest.raises(IntakeIgnored, match=reason):
        parse_object_created(drop(key))


def test_empty_object_starts_nothing() -> None:
    with pytest.raises(IntakeIgnored, match="empty"):
        parse_object_created(drop("datasets/demo/ds/x.jsonl", size=0))


def test_same_object_twice_has_one_idempotency_key() -> None:
    first = parse_object_created(drop("datasets/demo/ds/x.jsonl"))
    again = parse_object_created({**drop("datasets/demo/ds/x.jsonl"), "id": "another-delivery-id"})
    assert first.idempotency_key == again.idempotency_key
    changed = parse_object_created(drop("datasets/demo/ds/x.jsonl", etag="0123456789abcdef"))
    assert changed.idempotency_key != first.idempotency_key


def test_moto_style_etag_spelling_is_accepted() -> None:
    event = drop("datasets/demo/ds/x.jsonl")
    event["detail"]["object"]["eTag"] = event["detail"]["object"].pop("etag")
    assert (
        parse_object_created(event).idempotency_key
        == parse_object_created(drop("datasets/demo/ds/x.jsonl")).idempotency_key
    )


def key_of(event_id: str = "delivery-1", **obj: object) -> str:
    event = drop("datasets/demo/ds/x.jsonl", **obj)
    event["id"] = event_id
    return parse_object_created(event).idempotency_key


def test_unversioned_bucket_identity_is_the_etag_and_size() -> None:
    """moto reports "version-id": "null" on an unversioned bucket; AWS leaves it out."""
    same = {key_of("delivery-1", **{"version-id": "null"}), key_of("delivery-2", **{"version-id": "null"}), key_of()}
    assert len(same) == 1  # the same bytes, delivered again (a new event id, as S3 does)
    assert key_of(**{"version-id": "null", "etag": "0123456789abcdef"}) not in same  # new bytes, same key
    assert key_of(**{"version-id": "null", "size": 7}) not in same


def test_versioned_bucket_identity_is_the_version() -> None:
    first = key_of("delivery-1", **{"version-id": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"})
    assert key_of("delivery-2", **{"version-id": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"}) == first
    # A new version of the key, even with the same bytes, is a new upload.
    assert key_of(**{"version-id": "Wj9FlbqxxgAXrI7Gje1rNsX7OvoPyUhY"}) != first


def test_an_object_with_neither_version_nor_etag_is_told_apart_by_its_event() -> None:
    bare = {"etag": None, "sequencer": None}
    assert key_of("delivery-1", **bare) != key_of("delivery-2", **bare)
