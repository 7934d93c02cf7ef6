"""Prepare a dropped dataset: validate every row, split, and profile (SageMaker processing job).

Input: one JSONL or CSV file (UTF-8), or a folder with ``manifest.json`` listing its files
(``{"files": [...]}``, or ``{"splits": {"train": [...], "validation": [...], "test": [...]}}``
for splits the user made). Output, under ``--output-dir``:

    train/train.jsonl  validation/validation.jsonl  test/test.jsonl   normalised rows
    profile/profile.json    counts, label distribution, lengths, vocabulary, fingerprint
                            (the drift baseline)
    report/report.json      every problem found, with its line number and reason; the
                            files read and skipped; the holdout's counts
    holdout/<run>.keys      the test rows this run added to the project's frozen holdout

The split is the project's frozen holdout: a row whose key (``spec.row_key``) is in the
holdout (``--holdout-dir``: every ``*.keys`` file earlier runs wrote) is a test row and
nothing else; a new row lands by a seeded hash of its key, so the same row always lands
in the same split, whatever else the dataset holds. Classification gives every class at
least one validation and one test row, promoting its lowest-hashed training rows.

A retraining run also learns from production (``--production-dir``, with ``capture/``, the
endpoint's captured requests, and ``labels/``, the feedback received for them): every
captured single-text request that has a label becomes a row (``source: production``,
its inference id and time kept), unless its text is already in the data or its label is
not one the data has. Those rows are split like any other, so their test rows join the
frozen holdout and the gate measures champion and challenger on recent production traffic
too. ``report.json``'s ``production`` says how many, from which window, in which split.

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
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":  # a processing job: the tested versions first (pins.py)
    import pins

    pins.ensure()

import quality
import spec

PRODUCTION = "production"  # the file name production rows carry in reports

TASKS = ("text-classification", "causal-lm")
SPLITS = ("train", "validation", "test")
DATA_SUFFIXES = (".jsonl", ".csv")
_WORD_RE = re.compile(r"[\w']+", re.UNICODE)


class DatasetError(spec.TuneloopError):
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
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    holdout: dict[str, int] = field(default_factory=dict)
    # Labelled production traffic a retraining run learned from: counts, splits, window.
    production: dict[str, Any] = field(default_factory=dict)

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
            "files": self.files,
            "skipped": self.skipped,
            "holdout": self.holdout,
            "production": self.production,
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
    exclude: tuple[str, ...] = ()
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    min_rows: int = 10
    min_per_class: int = 3
    max_chars: int = 20_000
    max_invalid_fraction: float = 0.05
    # Where each row's fields are: the column (CSV) or key (JSONL) of text, label, prompt,
    # completion and messages (the project's data.*_field); the same names by default.
    fields: tuple[tuple[str, str], ...] = ()

    def source(self, name: str) -> str:
        return dict(self.fields).get(name, name)


# --- reading ---------------------------------------------------------------------------


def read_records(path: Path, data_format: str, report: Report) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for every row; unparsable rows are reported, not yielded."""
    by_extension = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    if data_format not in ("auto", by_extension):
        raise DatasetError(
            f"{path.name} is a .{by_extension} file but the project pins data_format {data_format}: "
            f"drop .{data_format} files, or set data_format to auto"
        )
    fmt = by_extension
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is not UTF-8 (byte {exc.start}: {exc.reason})") from exc
    if fmt == "csv":
        # No field can be longer than the file: an over-long cell is then one row, which the
        # max_chars check flags, rather than an error that ends the reading.
        csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
        reader = csv.DictReader(io.StringIO(text))
        try:
            if not reader.fieldnames:
                raise DatasetError(f"{path.name} has no header row")
        except csv.Error as exc:
            raise DatasetError(f"{path.name}: the header row is not CSV tuneloop can read ({exc})") from exc
        while True:
            line = reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a field over the csv module's limit, a stray NUL
                report.rows_read += 1
                report.error(path.name, reader.line_num, f"bad CSV: {exc}")
                if reader.line_num == line:
                    return  # the reader cannot move past it: the rest is unreadable
                continue
            report.rows_read += 1
            if None in row:
                report.error(path.name, reader.line_num, "more values than header columns")
                continue
            yield reader.line_num, row
    for number, text_line in enumerate(text.splitlines(), start=1):
        if not text_line.strip():
            continue
        report.rows_read += 1
        try:
            yield number, json.loads(text_line)
        except json.JSONDecodeError as exc:
            report.error(path.name, number, f"bad JSON: {exc.msg} at column {exc.colno}")
        except RecursionError:
            report.error(path.name, number, "JSON nested too deeply")
        except ValueError as exc:  # an integer of thousands of digits
            report.error(path.name, number, f"JSON tuneloop cannot read: {str(exc)[:120]}")


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
            if message["role"] == "system" and n:
                return None, f"messages[{n}]: a system message may only come first"
        if messages[-1]["role"] != "assistant":
            return None, "the last message must be the assistant's (what the model learns to say)"
        if not any(m["role"] == "user" for m in messages[:-1]):
            return None, "the conversation has no user message before the assistant's answer"
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}, None
    for name in ("prompt", "completion"):
        if name not in record:
            return None, f"missing field '{name}' (or give 'messages')"
        if not _non_empty_string(record[name]):
            return None, f"empty {name}"
    return {"prompt": record["prompt"], "completion": record["completion"]}, None


FIELDS = {"text-classification": (("text", "label"),), "causal-lm": (("messages",), ("prompt", "completion"))}


def mapped(record: Any, options: Options, csv_file: bool) -> tuple[Any, str | None]:
    """The record with its fields under tuneloop's names (the project's data.*_field say
    where they are), or a reason naming what is missing, what the row has, and the setting."""
    if not isinstance(record, dict):
        return record, None
    ways = FIELDS[options.task]
    for names in ways:
        if all(options.source(name) in record for name in names):
            return {**record, **{name: record[options.source(name)] for name in names}}, None
    names = next((n for n in ways if any(options.source(name) in record for name in n)), ways[-1])
    missing = next(options.source(name) for name in names if options.source(name) not in record)
    canonical = next(name for name in names if options.source(name) == missing)
    what = "column" if csv_file else "field"
    has = ", ".join(str(key) for key in list(record)[:8]) or "none"
    alternative = " (or give 'messages')" if options.task == "causal-lm" and canonical != "messages" else ""
    return (
        None,
        f"missing {what} '{missing}'{alternative}; the row has {has}; set data.{canonical}_field to name another",
    )


def load_rows(files: Iterable[Path], options: Options, report: Report) -> list[Row]:
    rows: list[Row] = []
    for path in files:
        for line, raw in read_records(path, options.data_format, report):
            record, problem = mapped(raw, options, path.suffix.lower() == ".csv")
            if problem:
                report.error(path.name, line, problem)
                continue
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


def production_rows(folder: Path, rows: list[Row], options: Options, report: Report) -> list[Row]:
    """The labelled production traffic (``folder/capture`` joined with ``folder/labels``) as
    rows: ``source: production``, deduplicated against the dataset's texts and each other,
    labels the dataset does not have left out (a model cannot learn a class from a few
    stray labels, and the champion could not be scored on it). Counted in the report. A
    language model's: each corrected request, answered with its correction."""
    if options.task == "causal-lm":
        return corrected_rows(folder, rows, options, report)
    examples, counts = quality.labelled_examples(folder / "capture", folder / "labels")
    seen = {str(row.record["text"]).strip() for row in rows}
    known = {str(row.record["label"]) for row in rows}
    kept, duplicates, unknown = [], 0, Counter[str]()
    for n, example in enumerate(examples, 1):
        record, problem = check_record({"text": example["text"], "label": example["label"]}, options.task)
        if record is None:
            report.error(PRODUCTION, n, f"{example['inference_id']}: {problem}")
            continue
        text = str(record["text"]).strip()
        if text in seen:
            duplicates += 1
            continue
        if str(record["label"]) not in known:
            unknown[str(record["label"])] += 1
            continue
        seen.add(text)
        kept.append(Row(PRODUCTION, n, {**record, "source": PRODUCTION, "inference_id": example["inference_id"],
                                        "inference_time": example["inference_time"]}))  # fmt: skip
    report.production = _production_report(kept, counts, duplicates, dict(unknown))
    return kept


def _production_report(
    kept: list[Row], counts: dict[str, Any], duplicates: int, unknown_labels: dict[str, int]
) -> dict[str, Any]:
    """What the report says of the production rows a run learned from: counts, window."""
    times = [row.record["inference_time"] for row in kept if row.record["inference_time"]]
    return {
        **counts,
        "rows": len(kept),
        "duplicates": duplicates,
        "unknown_labels": unknown_labels,
        "window": {"first": min(times), "last": max(times)} if times else None,
    }


def _asked(record: dict[str, Any]) -> str:
    """What a causal-LM row asks (its conversation before the answer, or its prompt)."""
    return _request({"messages": record["messages"][:-1]} if "messages" in record else record)


def _request(request: dict[str, Any]) -> str:
    """A request (a conversation to answer, or a prompt) as a comparable string."""
    return json.dumps(request["messages"] if "messages" in request else request["prompt"], sort_keys=True)


def corrected_rows(folder: Path, rows: list[Row], options: Options, report: Report) -> list[Row]:
    """The corrections received for captured requests as rows (``source: production``):
    a request the dataset already asks, or that was corrected twice, counts once."""
    examples, counts = quality.corrected_examples(folder / "capture", folder / "labels")
    seen = {_asked(row.record) for row in rows}
    kept, duplicates = [], 0
    for n, example in enumerate(examples, 1):
        record, problem = check_record(example["record"], options.task)
        if record is None:  # a captured conversation that is no training row (it ends on the assistant's turn)
            report.warn(PRODUCTION, n, f"{example['inference_id']}: {problem}; left out")
            continue
        if _asked(record) in seen:
            duplicates += 1
            continue
        seen.add(_asked(record))
        kept.append(Row(PRODUCTION, n, {**record, "source": PRODUCTION, "inference_id": example["inference_id"],
                                        "inference_time": example["inference_time"]}))  # fmt: skip
    report.production = _production_report(kept, counts, duplicates, {})
    return kept


def preference_pairs(folder: Path, splits: dict[str, list[Row]], output_dir: Path, report: Report) -> None:
    """The preferences received between captured answers, as DPO pairs for the training job
    (``train/preference/preference.jsonl``: a subfolder, never read as SFT rows). A pair
    whose request a test row asks is left out, as a test row never trains. Counted in the
    report's ``production.preferences``."""
    pairs, counts = quality.preference_pairs(folder / "capture", folder / "labels")
    tested = {_asked(row.record) for row in splits["test"]}
    kept = [pair for pair in pairs if _request(pair) not in tested]
    target = output_dir / "train" / "preference" / "preference.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for pair in kept:
            out.write(json.dumps({**pair, "source": PRODUCTION}, ensure_ascii=False) + "\n")
    report.production = {**(report.production or {}),
                         "preferences": {**counts, "in_test": len(pairs) - len(kept), "pairs": len(kept)}}  # fmt: skip


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


def _unit(seed: int, key: str) -> float:
    """A row's place in [0, 1): the same for the same row and seed, whatever else is there."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_rows(rows: list[Row], options: Options, holdout: frozenset[str] = frozenset()) -> dict[str, list[Row]]:
    """The frozen holdout's rows are test rows; new rows land by their hash (seeded).

    Stratified where it matters: a class with at least three rows gets at least one test
    and one validation row, its lowest-hashed training rows promoted (and, once test rows,
    they stay test rows through the holdout)."""
    keyed = [(spec.row_key(row.record, options.task), row) for row in rows]
    splits: dict[str, list[Row]] = {name: [] for name in SPLITS}
    place: dict[str, list[tuple[float, str, Row]]] = {name: [] for name in SPLITS}
    for key, row in keyed:
        u = _unit(options.seed, key)
        if key in holdout or u < options.test_fraction:
            name = "test"
        elif u < options.test_fraction + options.validation_fraction:
            name = "validation"
        else:
            name = "train"
        place[name].append((u, key, row))
    if options.task == "text-classification":
        _give_every_class(place, options)
    for name in SPLITS:
        # Hash order: reproducible, and shuffled with respect to the input's order.
        splits[name] = [row for _, _, row in sorted(place[name], key=lambda t: (t[0], t[1]))]
    return splits


def _give_every_class(place: dict[str, list[tuple[float, str, Row]]], options: Options) -> None:
    """Promote training rows so each class of three or more rows is in every split."""
    labels = Counter(row.record["label"] for name in SPLITS for _, _, row in place[name])
    for label, count in sorted(labels.items(), key=lambda kv: str(kv[0])):
        if count < 3:
            continue
        for target in ("test", "validation"):
            if any(row.record["label"] == label for _, _, row in place[target]):
                continue
            candidates = sorted((t for t in place["train"] if t[2].record["label"] == label), key=lambda t: t[0])
            if len(candidates) < 2:
                continue  # keep at least one training row of the class
            chosen = candidates[0]
            # Rows sharing the key (the same text) move together, or the split would leak.
            moving = [t for t in place["train"] if t[1] == chosen[1]]
            place["train"] = [t for t in place["train"] if t[1] != chosen[1]]
            place[target] += moving


def read_holdout(folder: Path | None) -> frozenset[str]:
    """Every key in every ``*.keys`` file under ``folder`` (one per run that added rows)."""
    if folder is None or not folder.is_dir():
        return frozenset()
    keys: set[str] = set()
    for path in sorted(folder.rglob("*.keys")):
        keys.update(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return frozenset(keys)


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
    if task == "causal-lm":
        # Length in characters of what each side says: prompts, completions, and each role's
        # turns in conversations (a system prompt repeated on every row shows here).
        parts: dict[str, list[int]] = {"prompt": [], "completion": []}
        for row in rows:
            record = row.record
            if "messages" in record:
                for message in record["messages"]:
                    parts.setdefault(message["role"], []).append(len(message["content"]))
            else:
                parts["prompt"].append(len(record["prompt"]))
                parts["completion"].append(len(record["completion"]))
        result["roles"] = {name: _stats(lengths) for name, lengths in parts.items() if lengths}
        result["conversations"] = sum("messages" in row.record for row in rows)
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


def find_inputs(input_dir: Path, exclude: Iterable[str] = ()) -> tuple[list[Path], dict[str, list[Path]] | None]:
    """(files, user splits or None) from the input folder, less the ``exclude``d paths (a
    retraining run leaves out the datasets that failed their own preparation)."""
    skip = [e.strip("/") for e in exclude if e.strip("/")]
    if skip:
        return _without(input_dir, skip), None
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


def _without(input_dir: Path, skip: list[str]) -> list[Path]:
    """Every data file of a project's datasets but the skipped ones: a file, or a folder
    (its manifest's datasets)."""

    def skipped(path: Path) -> bool:
        relative = path.relative_to(input_dir).as_posix()
        return any(relative == s or relative.startswith(s + "/") for s in skip)

    files = sorted(
        p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not skipped(p)
    )
    if not files:
        raise DatasetError("no dataset left once the failed ones are skipped")
    return files


def prepare(
    input_dir: Path,
    output_dir: Path,
    options: Options,
    holdout_dir: Path | None = None,
    run_id: str = "run",
    production_dir: Path | None = None,
) -> tuple[Report, dict[str, Any]]:
    report = Report()
    files, user_splits = find_inputs(input_dir, options.exclude)
    report.files = [p.relative_to(input_dir).as_posix() for p in files]
    report.skipped = list(options.exclude)
    rows = drop_duplicates(load_rows(files, options, report), options.task, report)
    if production_dir is not None and (production_dir / "labels").is_dir():
        rows += production_rows(production_dir, rows, options, report)
    report.rows_kept = len(rows)
    holdout = read_holdout(holdout_dir)
    if user_splits:
        by_file = {path.name: name for name, paths in user_splits.items() for path in paths}
        splits = {name: [r for r in rows if by_file.get(r.file) == name] for name in SPLITS}
        check_usable(rows, options, report, {k: len(v) for k, v in splits.items()})
        for name in ("train", "validation"):  # the holdout never trains, whatever the files say
            held = [r for r in splits[name] if spec.row_key(r.record, options.task) in holdout]
            for row in held:
                report.warn(row.file, row.line, f"in the project's test holdout; moved from {name} to test")
            splits[name] = [r for r in splits[name] if r not in held]
            splits["test"] += held
    else:
        check_usable(rows, options, report)
        splits = split_rows(rows, options, holdout)
    test_keys = {spec.row_key(r.record, options.task) for r in splits["test"]}
    added = sorted(test_keys - holdout)
    report.holdout = {"test_rows": len(splits["test"]), "from_holdout": len(test_keys & holdout), "added": len(added)}
    if report.production:
        report.production["splits"] = {name: sum(r.file == PRODUCTION for r in splits[name]) for name in SPLITS}
    result = profile(splits, options.task)
    if production_dir is not None and options.task == "causal-lm" and (production_dir / "labels").is_dir():
        preference_pairs(production_dir, splits, output_dir, report)
    for name in SPLITS:
        target = output_dir / name / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as out:
            for row in splits[name]:
                out.write(json.dumps(row.record, ensure_ascii=False) + "\n")
    keys = output_dir / "holdout" / f"{run_id}.keys"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.write_text("".join(k + "\n" for k in added), encoding="utf-8")
    write_json(output_dir / "profile" / "profile.json", result)
    return report, result


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def summary(report: Report, result: dict[str, Any]) -> str:
    """One line: what was read, kept, dropped and flagged (the first reasons), the split."""
    splits = result["splits"]
    text = f"{report.rows_kept} of {report.rows_read} rows kept from {len(report.files)} file(s)"
    if report.skipped:
        text += f" (skipped, as their own runs failed preparing: {', '.join(report.skipped)})"
    dropped = len({(i.file, i.line) for i in report.errors})
    duplicates = sum("duplicate of" in i.reason for i in report.warnings)
    conflicts = sum("with another label" in i.reason for i in report.warnings)
    flagged = [f"{dropped} invalid dropped"] if dropped else []
    flagged += [f"{duplicates} duplicates dropped"] if duplicates else []
    flagged += [f"{conflicts} texts with two labels"] if conflicts else []
    if flagged:
        first = "; ".join(str(i) for i in (report.errors + report.warnings)[:3])
        text += f"; {', '.join(flagged)} (first: {first}; all in report/report.json)"
    if report.production:
        made = report.production
        window = made.get("window") or {}
        text += (f"; {made['rows']} labelled production examples"
                 + (f" ({window['first']} to {window['last']})" if window else ""))  # fmt: skip
        if made.get("preferences", {}).get("pairs"):
            text += f"; {made['preferences']['pairs']} preference pairs"
    held = report.holdout
    text += (
        f"; train {splits['train']}, validation {splits['validation']}, test {splits['test']} "
        f"({held.get('from_holdout', 0)} from the frozen holdout)"
    )
    return text


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
    parser.add_argument("--holdout-dir", default=os.path.join(base, "processing/input/holdout"))
    parser.add_argument("--run-id", default="run", help="names the holdout keys this run adds")
    parser.add_argument("--production-dir", default="", help="capture/ and labels/: labelled production traffic")
    parser.add_argument("--exclude", action="append", default=[], help="a dataset path to leave out")
    for name in ("text", "label", "prompt", "completion", "messages"):
        parser.add_argument(f"--{name}-field", default=name, help=f"the column or key with each row's {name}")
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
        exclude=tuple(args.exclude),
        fields=tuple(
            (name, getattr(args, f"{name}_field"))
            for name in ("text", "label", "prompt", "completion", "messages")
            if getattr(args, f"{name}_field") != name
        ),
    )
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    output_dir = Path(args.output_dir)
    report = Report()
    try:
        production = Path(args.production_dir) if args.production_dir else None
        report, result = prepare(Path(args.input_dir), output_dir, options, Path(args.holdout_dir), args.run_id,
                                 production)  # fmt: skip
    except DatasetError as exc:
        write_json(output_dir / "report" / "report.json", {**report.to_dict(), "failure": str(exc)})
        message = f"DatasetError: {exc}"[:1024]
        spec.write_failure(args.failure_dir, message)
        print(message, file=sys.stderr)
        return 1
    write_json(output_dir / "report" / "report.json", report.to_dict())
    # SageMaker shows /opt/ml/output/message as the job's ExitMessage: the run's history
    # says what was dropped or flagged without anyone opening the report.
    failure_dir = Path(args.failure_dir)
    failure_dir.mkdir(parents=True, exist_ok=True)
    (failure_dir / "message").write_text(summary(report, result)[:1024], encoding="utf-8")
    for issue in report.warnings[:20]:
        print(f"warning: {issue}")
    print(f"prepared {result['rows']} rows: " + ", ".join(f"{k}={v}" for k, v in result["splits"].items()))
    held = report.holdout
    print(f"test holdout: {held['from_holdout']} rows kept from earlier runs, {held['added']} added")
    return 0


if __name__ == "__main__":
    sys.exit(main())
