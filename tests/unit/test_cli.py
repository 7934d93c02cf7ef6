"""The CLI answers bad input with one line and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop import cli


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"not json", "is not JSON: Expecting value at line 1, column 1"),
        (b"[1, 2]", "holds a JSON array; an EventBridge event is a JSON object"),
        (b'"text"', "holds a JSON string"),
        (b'{"source": ["aws.s3"], "detail-type": "Object Created"}', "'source' must be a string"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_event_send_refuses_what_is_not_an_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    path = tmp_path / "event.json"
    path.write_bytes(content)
    assert cli.main(["event", "send", str(path)]) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1 and "Traceback" not in err


def test_event_send_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["event", "send", str(tmp_path / "nowhere.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
