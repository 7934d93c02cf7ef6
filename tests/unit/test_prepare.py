"""training/prepare.py: validation with line numbers, reproducible stratified splits, profile."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from training import prepare, spec

REVIEWS = Path(__file__).resolve().parents[2] / "examples" / "data" / "reviews.jsonl"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def good_rows(n: int = 30) -> list[dict[str, Any]]:
    return [
        {"text": f"review number {i} is {'good' if i % 3 else 'bad'}", "label": "pos" if i % 3 else "neg"}
        for i in range(n)
    ]


def run(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = prepare.main(
        [
            "--input-dir",
            str(tmp_path / "in"),
            "--output-dir",
            str(tmp_path / "out"),
            "--failure-dir",
            str(tmp_path / "fail"),
            *args,
        ]
    )
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    return code, report


@pytest.mark.parametrize(
    "bad_row,reason",
    [
        ('{"text": "broken", "label": ', "bad JSON"),
        ({"label": "pos"}, "missing field 'text'"),
        ({"text": "   ", "label": "pos"}, "empty text"),
        ({"text": "x", "label": 0.5}, "label must be a string or an integer, got float"),
        ({"text": "x", "label": True}, "label must be a string or an integer, got bool"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_each_bad_row_is_reported_with_its_line(tmp_path: Path, bad_row: Any, reason: str) -> None:
    rows: list[Any] = good_rows(30)
    rows.insert(6, bad_row)  # line 7
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, report = run(tmp_path, "--task", "text-classification", "--max-invalid-fraction", "0.1")
    assert code == 0
    [issue] = [i for i in report["issues"] if i["severity"] == "error"]
    assert issue["line"] == 7 and reason in issue["reason"] and issue["file"] == "data.jsonl"


def test_too_many_bad_rows_fail_the_job_with_the_reason(tmp_path: Path) -> None:
    rows: list[Any] = good_rows(20) + [{"label": "pos"}] * 5
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, report = run(tmp_path, "--task", "text-classification")
    assert code == 1
    message = (tmp_path / "fail" / "failure").read_text()
    assert message.startswith("DatasetError: 5 of 25 rows are invalid")
    assert "data.jsonl:21: missing field 'text'" in message
    assert (tmp_path / "fail" / "message").read_text() == message
    assert report["failure"] in message


@pytest.mark.parametrize(
    "rows,needle",
    [
        ([], "no rows"),
        (good_rows(5), "only 5 usable rows"),
        ([{"text": f"t{i}", "label": "a"} for i in range(20)], "only one class"),
        (
            [{"text": f"t{i}", "label": "a"} for i in range(20)] + [{"text": "u", "label": "b"}],
            "too few examples per class",
        ),
        ([{"text": f"t{i}", "label": "a" if i % 2 else 1} for i in range(20)], "mix strings and integers"),
    ],
)
def test_unusable_datasets(tmp_path: Path, rows: list[Any], needle: str) -> None:
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, _ = run(tmp_path, "--task", "text-classification")
    assert code == 1
    assert needle in (tmp_path / "fail" / "failure").read_text()


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "a"}\n')
    assert run(tmp_path, "--task", "text-classification")[0] == 1
    assert "not UTF-8" in (tmp_path / "fail" / "failure").read_text()


def test_duplicates_and_long_rows_are_warnings(tmp_path: Path) -> None:
    rows: list[Any] = good_rows(30)
    rows.append(rows[0])  # exact duplicate, line 31
    rows.append({"text": rows[1]["text"], "label": "neg"})  # same text, other label, line 32
    rows.append({"text": "x" * 50, "label": "pos"})  # line 33
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, report = run(tmp_path, "--task", "text-classification", "--max-chars", "40")
    assert code == 0
    warnings = {i["line"]: i["reason"] for i in report["issues"] if i["severity"] == "warning"}
    assert "duplicate of data.jsonl:1; dropped" in warnings[31]
    assert "another label" in warnings[32]
    assert "over 40" in warnings[33]
    assert report["rows_kept"] == 32


def test_splits_are_reproducible_and_stratified(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "reviews.jsonl").write_bytes(REVIEWS.read_bytes())

    def splits(out: str, seed: str = "7") -> dict[str, list[str]]:
        prepare.main(
            [
                "--input-dir",
                str(tmp_path / "in"),
                "--output-dir",
                str(tmp_path / out),
                "--task",
                "text-classification",
                "--seed",
                seed,
            ]
        )
        return {s: (tmp_path / out / s / f"{s}.jsonl").read_text().splitlines() for s in prepare.SPLITS}

    first, again, other = splits("a"), splits("b"), splits("c", seed="8")
    assert first == again
    assert first != other
    total = sum(len(v) for v in first.values())
    # Each row lands by its own seeded hash: about 10% each, never exactly.
    assert total == 240 and 12 <= len(first["test"]) <= 36 and 12 <= len(first["validation"]) <= 36
    for name, lines in first.items():
        labels = Counter(json.loads(line)["label"] for line in lines)
        assert labels["positive"] > 0 and labels["negative"] > 0, name  # every class in every split
    profile = json.loads((tmp_path / "a" / "profile" / "profile.json").read_text())
    assert profile["label_distribution"] == {"negative": 0.5, "positive": 0.5}
    assert profile["rows"] == 240 and len(profile["fingerprint"]) == 64
    assert profile["words"]["mean"] > 3 and "the" in profile["vocabulary"]


def test_csv_and_integer_labels(tmp_path: Path) -> None:
    lines = ["text,label"] + [f'"row {i}, with a comma",{i % 2}' for i in range(20)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.csv").write_text("\n".join(lines) + "\n")
    code, _ = run(tmp_path, "--task", "text-classification")
    assert code == 0
    row = json.loads((tmp_path / "out" / "train" / "train.jsonl").read_text().splitlines()[0])
    assert row["label"] in (0, 1) and ", with a comma" in row["text"]


def test_causal_lm_prompt_completion_and_chat(tmp_path: Path) -> None:
    rows: list[Any] = [{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(12)]
    rows += [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
        for i in range(12)
    ]
    rows.append({"messages": [{"role": "user", "content": "no answer"}]})  # line 25
    rows.append({"prompt": "Q?", "completion": ""})  # line 26
    rows.append({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"},
                              {"role": "assistant", "content": "b"}]})  # line 27  # fmt: skip
    rows.append({"messages": [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "b"}]})
    rows.append({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})  # line 29
    rows.append({"messages": "hello"})  # line 30
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, report = run(tmp_path, "--task", "causal-lm", "--max-invalid-fraction", "0.3")
    assert code == 0
    errors = {i["line"]: i["reason"] for i in report["issues"]}
    assert "last message must be the assistant's" in errors[25]
    assert errors[26] == "empty completion"
    assert errors[27] == "messages[1]: a system message may only come first"
    assert errors[28] == "the conversation has no user message before the assistant's answer"
    assert errors[29] == "messages[1] needs a role of system, user or assistant"
    assert errors[30] == "messages must be a non-empty list"
    # The profile has each side's lengths: prompts and completions, and each role's turns.
    profile = json.loads((tmp_path / "out" / "profile" / "profile.json").read_text())
    assert profile["roles"]["prompt"]["count"] == 12 and profile["roles"]["completion"]["count"] == 12
    assert profile["roles"]["user"]["count"] == 12 and profile["roles"]["assistant"]["count"] == 12
    assert profile["roles"]["assistant"]["max"] == len("hello") and profile["conversations"] == 12


def test_manifest_with_user_splits(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "parts" / "a.jsonl", good_rows(30))
    write_jsonl(
        tmp_path / "in" / "parts" / "b.jsonl",
        [{"text": f"held out {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)],
    )
    (tmp_path / "in" / "manifest.json").write_text(
        json.dumps({"splits": {"train": ["parts/a.jsonl"], "test": ["parts/b.jsonl"]}})
    )
    assert run(tmp_path, "--task", "text-classification")[0] == 0
    test_rows = (tmp_path / "out" / "test" / "test.jsonl").read_text().splitlines()
    assert len(test_rows) == 6 and all("held out" in line for line in test_rows)


@pytest.mark.parametrize(
    "manifest,needle",
    [
        ({"files": ["missing.jsonl"]}, "was not uploaded"),
        ({"files": ["../outside.jsonl"]}, "outside the dataset folder"),
        ({"wrong": 1}, "must have 'files'"),
    ],
)
def test_bad_manifests(tmp_path: Path, manifest: dict[str, Any], needle: str) -> None:
    write_jsonl(tmp_path / "outside.jsonl", good_rows())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "manifest.json").write_text(json.dumps(manifest))
    assert run(tmp_path, "--task", "text-classification")[0] == 1
    assert needle in (tmp_path / "fail" / "failure").read_text()


def keys_of(path: Path, task: str = "text-classification") -> set[str]:
    return {spec.row_key(json.loads(line), task) for line in path.read_text().splitlines()}


def test_test_rows_stay_test_rows_as_data_grows(tmp_path: Path) -> None:
    """The frozen holdout: a later run's test rows are the earlier test rows plus new
    ones, and no earlier test row trains or validates any later run."""
    rows = [json.loads(line) for line in REVIEWS.read_text().splitlines()]
    write_jsonl(tmp_path / "in" / "first.jsonl", rows[:120])
    holdout = tmp_path / "holdout"

    def prepare_run(run_id: str, *extra: str) -> Path:
        out = tmp_path / run_id
        code = prepare.main(
            ["--input-dir", str(tmp_path / "in"), "--output-dir", str(out), "--task", "text-classification",
             "--holdout-dir", str(holdout), "--run-id", run_id, *extra]
        )  # fmt: skip
        assert code == 0
        holdout.mkdir(exist_ok=True)  # as S3 keeps every run's holdout/<run>.keys
        (holdout / f"{run_id}.keys").write_bytes((out / "holdout" / f"{run_id}.keys").read_bytes())
        return out

    first = prepare_run("one")
    frozen = keys_of(first / "test" / "test.jsonl")
    assert frozen and (first / "holdout" / "one.keys").read_text().split() == sorted(frozen)
    write_jsonl(tmp_path / "in" / "second.jsonl", rows[120:])
    # Even a changed seed and test share cannot move a frozen test row.
    second = prepare_run("two", "--seed", "99", "--test-fraction", "0.2")
    test = keys_of(second / "test" / "test.jsonl")
    trained = keys_of(second / "train" / "train.jsonl") | keys_of(second / "validation" / "validation.jsonl")
    assert frozen <= test and not (frozen & trained) and not (test & trained)
    report = json.loads((second / "report" / "report.json").read_text())
    assert report["holdout"] == {"test_rows": len(test), "from_holdout": len(frozen), "added": len(test - frozen)}


def test_a_row_lands_in_the_same_split_whatever_else_is_there() -> None:
    rows = [prepare.Row("a.jsonl", n, {"text": f"text {n}", "label": n % 2}) for n in range(400)]
    options = prepare.Options(task="text-classification")
    alone = prepare.split_rows(rows[:200], options)
    together = prepare.split_rows(rows, options)
    for name in prepare.SPLITS:
        assert {r.line for r in alone[name]} <= {r.line for r in together[name]}


def test_a_csv_in_a_default_project_is_read_as_csv(tmp_path: Path) -> None:
    lines = ["text,label"] + [f"csv row {i},{'pos' if i % 2 else 'neg'}" for i in range(30)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.csv").write_text("\n".join(lines) + "\n")
    code, report = run(tmp_path, "--task", "text-classification", "--data-format", "auto")
    assert code == 0 and report["rows_kept"] == 30 and report["errors"] == 0


def test_columns_named_otherwise_are_mapped_and_a_missing_one_says_which_setting(tmp_path: Path) -> None:
    """A `review,sentiment` CSV: without a mapping every row is refused with the columns it
    has and the setting to use; with data.text_field and data.label_field it is read. A
    causal LM's JSONL keys map the same way."""
    lines = ["review,sentiment"] + [f"csv row {i},{'pos' if i % 2 else 'neg'}" for i in range(30)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "reviews.csv").write_text("\n".join(lines) + "\n")
    code, _ = run(tmp_path, "--task", "text-classification")
    message = (tmp_path / "fail" / "failure").read_text()
    assert code == 1 and "\n" not in message
    assert "reviews.csv:2: missing column 'text'; the row has review, sentiment; set data.text_field" in message
    code, report = run(
        tmp_path, "--task", "text-classification", "--text-field", "review", "--label-field", "sentiment"
    )
    assert code == 0 and report["rows_kept"] == 30 and report["errors"] == 0
    row = json.loads((tmp_path / "out" / "train" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"text", "label"} and row["text"].startswith("csv row")
    # A mapped label column that is missing names its own setting.
    code, _ = run(tmp_path, "--task", "text-classification", "--text-field", "review", "--label-field", "stars")
    assert code == 1 and "missing column 'stars'" in (tmp_path / "fail" / "failure").read_text()
    assert "set data.label_field" in (tmp_path / "fail" / "failure").read_text()

    llm = tmp_path / "llm"
    write_jsonl(llm / "in" / "qa.jsonl", [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(20)])
    code, _ = run(llm, "--task", "causal-lm")
    assert code == 1
    assert (
        "missing field 'prompt' (or give 'messages'); the row has question, answer; set data.prompt_field"
        in (llm / "fail" / "failure").read_text()
    )
    code, report = run(llm, "--task", "causal-lm", "--prompt-field", "question", "--completion-field", "answer")
    assert code == 0 and report["rows_kept"] == 20
    row = json.loads((llm / "out" / "train" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "completion"}


def test_a_pinned_format_names_the_mismatch_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.csv").write_text("text,label\na,b\n")
    code, _ = run(tmp_path, "--task", "text-classification", "--data-format", "jsonl")
    message = (tmp_path / "fail" / "failure").read_text()
    assert code == 1 and "\n" not in message
    assert message == (
        "DatasetError: data.csv is a .csv file but the project pins data_format jsonl: "
        "drop .jsonl files, or set data_format to auto"
    )


def test_excluded_datasets_are_left_out_and_listed(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in" / "good.jsonl", good_rows(30))
    write_jsonl(tmp_path / "in" / "bad" / "pc.jsonl", [{"wrong": "schema"}] * 10)
    code, report = run(tmp_path, "--task", "text-classification", "--exclude", "bad/")
    assert code == 0 and report["files"] == ["good.jsonl"] and report["skipped"] == ["bad/"]
    assert report["errors"] == 0


def test_what_was_dropped_is_said_in_the_jobs_exit_message(tmp_path: Path) -> None:
    """SageMaker shows /opt/ml/output/message as ExitMessage; the run's history carries it."""
    rows: list[Any] = good_rows(30)
    rows.insert(4, {"label": "pos"})  # line 5
    rows.append(rows[0])  # a duplicate
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, _ = run(tmp_path, "--task", "text-classification", "--max-invalid-fraction", "0.1")
    message = (tmp_path / "fail" / "message").read_text()
    assert code == 0 and "\n" not in message and len(message) <= 1024
    assert message.startswith("30 of 32 rows kept from 1 file(s); 1 invalid dropped, 1 duplicates dropped")
    assert "data.jsonl:5: missing field 'text'" in message and "(0 from the frozen holdout)" in message


def test_hostile_rows_are_row_errors_not_crashes(tmp_path: Path) -> None:
    """JSON nested 100,000 deep and a 5,000-digit integer are bad rows with a reason; a CSV
    cell of 200 KB is one over-long row (truncated, a warning), not the end of the file."""
    rows: list[Any] = good_rows(40)
    rows.insert(3, '{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "pos"}')  # line 4
    rows.insert(5, '{"text": "x", "label": ' + "9" * 5000 + "}")  # line 6
    write_jsonl(tmp_path / "in" / "data.jsonl", rows)
    code, report = run(tmp_path, "--task", "text-classification", "--max-invalid-fraction", "0.1")
    errors = {i["line"]: i["reason"] for i in report["issues"] if i["severity"] == "error"}
    assert code == 0 and errors[4] == "JSON nested too deeply" and "4300 digits" in errors[6]
    lines = ["text,label"] + [f"row {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    lines.insert(4, '"' + "x" * 200_000 + '",pos')  # line 5
    (tmp_path / "in" / "data.jsonl").unlink()
    (tmp_path / "in" / "data.csv").write_text("\n".join(lines) + "\n")
    code, report = run(tmp_path, "--task", "text-classification")
    assert code == 0 and report["rows_kept"] == 41
    assert [(i["line"], i["severity"]) for i in report["issues"]] == [(5, "warning")]


def test_a_deeply_nested_inference_payload_is_a_payload_error() -> None:
    from training import inference

    with pytest.raises(inference.PayloadError, match="nested too deeply"):
        inference.input_fn(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def capture_line(text: str, inference_id: str, when: str) -> str:
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT", "data": json.dumps(text),
                              "encoding": "JSON"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": json.dumps({"label": "pos"}), "encoding": "JSON"},
        },
        "eventMetadata": {"eventId": f"e-{inference_id}", "inferenceId": inference_id, "inferenceTime": when},
        "eventVersion": "0",
    })  # fmt: skip


def test_a_retraining_run_learns_from_labelled_production_traffic(tmp_path: Path) -> None:
    """Captured requests with labels become rows (source: production); a text the data has
    already, a label the data lacks, and a capture without a label are left out; the
    production rows split like any other, and the report says how many, when, where."""
    write_jsonl(tmp_path / "in" / "data.jsonl", good_rows(60))
    production = tmp_path / "production"
    texts = [f"live request {i} sounds {'fine' if i % 2 else 'awful'}" for i in range(40)]
    lines = [capture_line(t, f"req-{i}", f"2026-12-01T10:{i:02d}:00Z") for i, t in enumerate(texts)]
    lines.append(capture_line("review number 1 is good", "req-dup", "2026-12-01T11:00:00Z"))  # the data has it
    lines.append(capture_line("a brand new kind of text", "req-new-label", "2026-12-01T11:01:00Z"))
    lines.append(capture_line("nobody labelled this one", "req-unlabelled", "2026-12-01T11:02:00Z"))
    write_jsonl(production / "capture" / "tl-demo" / "AllTraffic" / "00.jsonl", lines)
    labels = [{"inference_id": f"req-{i}", "label": "pos" if i % 2 else "neg", "received_at": "2026-12-02T00:00:00Z"}
              for i in range(40)]  # fmt: skip
    labels += [{"inference_id": "req-dup", "label": "pos"}, {"inference_id": "req-new-label", "label": "meh"},
               {"inference_id": "req-ghost", "label": "pos"}]  # fmt: skip
    write_jsonl(production / "labels" / "d1.jsonl", labels)
    code, report = run(tmp_path, "--task", "text-classification", "--production-dir", str(production))
    assert code == 0, report
    made = report["production"]
    assert (made["rows"], made["duplicates"], made["unknown_labels"], made["unknown_ids"]) == (40, 1, {"meh": 1}, 1)
    assert made["window"] == {"first": "2026-12-01T10:00:00Z", "last": "2026-12-01T10:39:00Z"}
    assert sum(made["splits"].values()) == 40 and made["splits"]["test"] > 0
    rows = {name: [json.loads(x) for x in (tmp_path / "out" / name / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "validation", "test")}  # fmt: skip
    from_production = [r for split in rows.values() for r in split if r.get("source") == "production"]
    assert len(from_production) == 40 and {r["text"] for r in from_production} == set(texts)
    assert len([r for r in rows["test"] if r.get("source") == "production"]) == made["splits"]["test"]
    # Production test rows join the frozen holdout: a later run keeps them as test rows.
    added = set((tmp_path / "out" / "holdout" / "run.keys").read_text().split())
    assert {spec.row_key(r, "text-classification") for r in rows["test"] if r.get("source")} <= added
    assert (
        "40 labelled production examples (2026-12-01T10:00:00Z to 2026-12-01T10:39:00Z)"
        in (tmp_path / "fail" / "message").read_text()
    )
