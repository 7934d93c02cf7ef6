"""Prepare a dropped dataset: validate every row, split, and profile (SageMaker processing job).

Input: one JSONL or CSV file (UTF-8), or a folder with ``manifest.json`` listing its files
(``{"files": [...]}``, or ``{"splits": {"train": [...], "validation": [...], "test": [...]}}``
for splits the user made). Output, under ``--output-dir``:

    train/train.jsonl  validation/validation.jsonl  test/test.jsonl   normalised rows
    profile/profile.json    counts, label distribution, lengths, vocabulary, fingerprint
                            (the drift baseline)
    report/report.json      every problem found, with its line number and reason

Rows with errors are dropped and reported. The job fails (exit 1, the reason in
``/opt/ml/output/message`` and ``/opt/ml/output/failure``) when the data is unusable: too
many invalid rows, too few rows, or too few examples of a class.

Runs inside the container with the standard library only; never imports tuneloop.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("text-classification", "causal-lm")
SPLITS = ("train", "validation", "test")
DATA_SUFFIXES = (".jsonl", ".csv")
_WORD_RE = re.compile(r"[\w']+", re.UNICODE)


class DatasetError(Exception):
    """The dataset is unusable; the message is the job's FailureReason."""


@dataclass
class Issue:
    file: str
    line: int
    severity: str  # error | warning
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Report:
    issues: list[Issue] = field(default_factory=list)
    rows_read: int = 0
    rows_kept: int = 0

    def error(self, file: str, line: int, reason: str) -> None:
        self.issues.append(Issue(file, line, "error", reason))

    def warn(self, file: str, line: int, reason: str) -> None:
        self.issues.append(Issue(file, line, "warning", reason))

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [vars(i) for i in self.issues],
        }


@dataclass
class Row:
    file: str
    line: int
    record: dict[str, Any]

    @property
    def text(self) -> str:
        """All the text of the row, for lengths, duplicates and the vocabulary."""
        r = self.record
        if "messages" in r:
            return "\n".join(m["content"] for m in r["messages"])
        if "prompt" in r:
            return f"{r['prompt']}\n{r['completion']}"
        return str(r["text"])


@dataclass(frozen=True)
class Options:
    task: str
    data_format: str = "auto"
    seed: int = 42
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    min_rows: int = 10
    min_per_class: int = 3
    max_chars: int = 20_000
    max_invalid_fraction: float = 0.05


# --- reading ---------------------------------------------------------------------------


def read_records(path: Path, data_format: str, report: Report) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for every row; unparsable rows are reported, not yielded."""
    fmt = data_format if data_format != "auto" else ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is not UTF-8 (byte {exc.start}: {exc.reason})") from exc
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise DatasetError(f"{path.name} has no header row")
        for row in reader:
            report.rows_read += 1
            if None in row:
                report.error(path.name, reader.line_num, "more values than header columns")
                continue
            yield reader.line_num, row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        report.rows_read += 1
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            report.error(path.name, number, f"bad JSON: {exc.msg} at column {exc.colno}")


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_record(record: Any, task: str) -> tuple[dict[str, Any] | None, str | None]:
    """(normalised record, None) or (None, reason)."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if task == "text-classification":
        for name in ("text", "label"):
            if name not in record or record[name] is None or record[name] == "":
                return None, f"missing field '{name}'"
        if not _non_empty_string(record["text"]):
            return None, "empty text" if isinstance(record["text"], str) else "text must be a string"
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            return None, f"label must be a string or an integer, got {type(label).__name__}"
        if isinstance(label, str) and re.fullmatch(r"-?\d+", label.strip()):
            label = int(label)  # CSV cells are strings; keep integer labels integers
        return {"text": record["text"], "label": label}, None
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return None, "messages must be a non-empty list"
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
                return None, f"messages[{n}] needs a role of system, user or assistant"
            if not _non_empty_string(message.get("content")):
                return None, f"messages[{n}] has empty content"
        if messages[-1]["role"] != "assistant":
            return None, "the last message must be the assistant's (what the model learns to say)"
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}, None
    for name in ("prompt", "completion"):
        if name not in record:
            return None, f"missing field '{name}' (or give 'messages')"
        if not _non_empty_string(record[name]):
            return None, f"empty {name}"
    return {"prompt": record["prompt"], "completion": record["completion"]}, None


def load_rows(files: Iterable[Path], options: Options, report: Report) -> list[Row]:
    rows: list[Row] = []
    for path in files:
        for line, record in read_records(path, options.data_format, report):
            normalised, problem = check_record(record, options.task)
            if problem:
                report.error(path.name, line, problem)
                continue
            assert normalised is not None
            row = Row(path.name, line, normalised)
            if len(row.text) > options.max_chars:
                report.warn(
                    path.name,
                    line,
                    f"row is {len(row.text)} characters (over {options.max_chars}); it will be truncated",
                )
            rows.append(row)
    return rows


def drop_duplicates(rows: list[Row], task: str, report: Report) -> list[Row]:
    seen: dict[str, Row] = {}
    labels: dict[str, Row] = {}
    kept = []
    for row in rows:
        key = json.dumps(row.record, sort_keys=True)
        if key in seen:
            first = seen[key]
            report.warn(row.file, row.line, f"duplicate of {first.file}:{first.line}; dropped")
            continue
        seen[key] = row
        if task == "text-classification":
            text = row.record["text"].strip()
            other = labels.get(text)
            if other is not None and other.record["label"] != row.record["label"]:
                report.warn(
                    row.file,
                    row.line,
                    f"same text as {other.file}:{other.line} with another label ({other.record['label']!r})",
                )
            labels.setdefault(text, row)
        kept.append(row)
    return kept


# --- checks, splits, profile -----------------------------------------------------------


def check_usable(rows: list[Row], options: Options, report: Report, split_sizes: dict[str, int] | None = None) -> None:
    if report.rows_read == 0:
        raise DatasetError("the dataset has no rows")
    invalid = len({(i.file, i.line) for i in report.errors})
    if invalid / report.rows_read > options.max_invalid_fraction:
        first = "; ".join(str(i) for i in report.errors[:3])
        raise DatasetError(
            f"{invalid} of {report.rows_read} rows are invalid (more than {options.max_invalid_fraction:.0%}): {first}"
        )
    if len(rows) < options.min_rows:
        raise DatasetError(f"only {len(rows)} usable rows; at least {options.min_rows} are needed")
    if options.task == "text-classification":
        counts = Counter(row.record["label"] for row in rows)
        if len(counts) < 2:
            raise DatasetError(f"only one class ({next(iter(counts))!r}); classification needs at least two")
        small = {label: n for label, n in counts.items() if n < options.min_per_class}
        if small and not split_sizes:
            detail = ", ".join(f"{label!r}: {n}" for label, n in sorted(small.items(), key=lambda kv: str(kv[0])))
            raise DatasetError(f"too few examples per class (need {options.min_per_class}): {detail}")
        types = {type(label) for label in counts}
        if len(types) > 1:
            raise DatasetError("labels mix strings and integers; use one kind")


def split_rows(rows: list[Row], options: Options) -> dict[str, list[Row]]:
    """Deterministic, seeded; stratified by label for classification."""
    rng = random.Random(options.seed)
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        key = row.record["label"] if options.task == "text-classification" else None
        groups[key].append(row)
    splits: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for key in sorted(groups, key=str):
        group = groups[key]
        rng.shuffle(group)
        n = len(group)
        n_test = round(n * options.test_fraction)
        n_val = round(n * options.validation_fraction)
        if options.task == "text-classification" and n >= 3:
            n_test, n_val = max(1, n_test), max(1, n_val)  # every class in every split
        n_test = min(n_test, max(0, n - 1))
        n_val = min(n_val, max(0, n - 1 - n_test))
        splits["test"] += group[:n_test]
        splits["validation"] += group[n_test : n_test + n_val]
        splits["train"] += group[n_test + n_val :]
    for name in SPLITS:
        rng.shuffle(splits[name])
    return splits


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return float(ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)])

    return {
        "count": len(values),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "mean": sum(values) / len(values),
        "p50": pct(0.5),
        "p95": pct(0.95),
    }


def profile(splits: dict[str, list[Row]], task: str, top_words: int = 500) -> dict[str, Any]:
    rows = [row for name in SPLITS for row in splits[name]]
    words = Counter(w.lower() for row in rows for w in _WORD_RE.findall(row.text))
    digest = hashlib.sha256()
    for line in sorted(json.dumps(row.record, sort_keys=True) for row in rows):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    result: dict[str, Any] = {
        "task": task,
        "rows": len(rows),
        "splits": {name: len(splits[name]) for name in SPLITS},
        "chars": _stats([len(row.text) for row in rows]),
        "words": _stats([len(_WORD_RE.findall(row.text)) for row in rows]),
        "vocabulary": dict(words.most_common(top_words)),
        "vocabulary_size": len(words),
        "fingerprint": digest.hexdigest(),
    }
    if task == "text-classification":
        result["labels"] = {
            name: {str(k): v for k, v in sorted(Counter(r.record["label"] for r in splits[name]).items(), key=str)}
            for name in SPLITS
        }
        result["label_distribution"] = {
            str(k): v / len(rows) for k, v in sorted(Counter(r.record["label"] for r in rows).items(), key=str)
        }
    return result


# --- the job ---------------------------------------------------------------------------


def find_inputs(input_dir: Path) -> tuple[list[Path], dict[str, list[Path]] | None]:
    """(files, user splits or None) from the input folder."""
    manifest = input_dir / "manifest.json"
    if manifest.is_file():
        try:
            spec = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"manifest.json is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        if not isinstance(spec, dict) or not ({"files", "splits"} & set(spec)):
            raise DatasetError("manifest.json must have 'files' (a list) or 'splits' ({train, validation, test})")

        def resolve(names: Any, where: str) -> list[Path]:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
                raise DatasetError(f"manifest.json: {where} must be a non-empty list of file names")
            paths = []
            for name in names:
                path = (input_dir / name).resolve()
                if input_dir.resolve() not in path.parents:
                    raise DatasetError(f"manifest.json: {name!r} points outside the dataset folder")
                if not path.is_file():
                    raise DatasetError(f"manifest.json lists {name!r}, which was not uploaded")
                paths.append(path)
            return paths

        if "splits" in spec:
            splits = spec["splits"]
            if not isinstance(splits, dict) or "train" not in splits:
                raise DatasetError("manifest.json: splits needs at least 'train'")
            user = {name: resolve(splits[name], f"splits.{name}") for name in SPLITS if name in splits}
            return [p for ps in user.values() for p in ps], user
        return resolve(spec["files"], "files"), None
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise DatasetError(f"no .jsonl or .csv file in the input ({input_dir})")
    named = {p.stem.lower(): p for p in files}
    if "train" in named and len(files) <= 3 and set(named) <= set(SPLITS):
        return files, {name: [named[name]] for name in SPLITS if name in named}
    return files, None


def prepare(input_dir: Path, output_dir: Path, options: Options) -> tuple[Report, dict[str, Any]]:
    report = Report()
    files, user_splits = find_inputs(input_dir)
    rows = drop_duplicates(load_rows(files, options, report), options.task, report)
    report.rows_kept = len(rows)
    if user_splits:
        by_file = {path.name: name for name, paths in user_splits.items() for path in paths}
        splits = {name: [r for r in rows if by_file.get(r.file) == name] for name in SPLITS}
        check_usable(rows, options, report, {k: len(v) for k, v in splits.items()})
    else:
        check_usable(rows, options, report)
        splits = split_rows(rows, options)
    result = profile(splits, options.task)
    for name in SPLITS:
        target = output_dir / name / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as out:
            for row in splits[name]:
                out.write(json.dumps(row.record, ensure_ascii=False) + "\n")
    write_json(output_dir / "profile" / "profile.json", result)
    return report, result


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")  # /opt/ml in SageMaker's containers
    parser.add_argument("--input-dir", default=os.path.join(base, "processing/input/data"))
    parser.add_argument("--output-dir", default=os.path.join(base, "processing/output"))
    parser.add_argument("--failure-dir", default=os.path.join(base, "output"))
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data-format", default="auto", choices=("auto", "jsonl", "csv"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--min-rows", type=int, default=10)
    parser.add_argument("--min-per-class", type=int, default=3)
    parser.add_argument("--max-chars", type=int, default=20_000)
    parser.add_argument("--max-invalid-fraction", type=float, default=0.05)
    args, _unknown = parser.parse_known_args(argv)
    options = Options(
        task=args.task,
        data_format=args.data_format,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        min_rows=args.min_rows,
        min_per_class=args.min_per_class,
        max_chars=args.max_chars,
        max_invalid_fraction=args.max_invalid_fraction,
    )
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    output_dir = Path(args.output_dir)
    report = Report()
    try:
        report, result = prepare(Path(args.input_dir), output_dir, options)
    except DatasetError as exc:
        write_json(output_dir / "report" / "report.json", {**report.to_dict(), "failure": str(exc)})
        message = f"DatasetError: {exc}"[:1024]
        failure_dir = Path(args.failure_dir)
        failure_dir.mkdir(parents=True, exist_ok=True)
        for name in ("failure", "message"):  # training reads failure, processing reads message
            (failure_dir / name).write_text(message, encoding="utf-8")
        print(message, file=sys.stderr)
        return 1
    write_json(output_dir / "report" / "report.json", report.to_dict())
    for issue in report.warnings[:20]:
        print(f"warning: {issue}")
    print(f"prepared {result['rows']} rows: " + ", ".join(f"{k}={v}" for k, v in result["splits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
