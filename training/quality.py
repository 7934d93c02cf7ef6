"""Production quality, for the monitoring job (drift.py): captured predictions joined with
the labels that arrived for them (feedback), measured; and estimated before labels come.

- ``join``: each captured prediction's id (the caller's ``InferenceId``, else the capture's
  event id) matched with the labels received for it. A later label for the same id wins
  (corrections happen); repeats and conflicts are counted. Labels for ids no capture holds,
  and labels the model does not know, are counted and reported, never used.
- ``measure``: accuracy and macro-F1 over the labelled predictions of the window, with
  a one-sided 95% bootstrap band: how far above the value the truth may lie at this sample
  size. A value below a floor by less than that band is noise, and is published clipped to
  the floor, as the drift metrics are (no alarm on a handful of labels).
- ``estimate``: confidence-based performance estimation (CBPE). With calibrated scores
  (train.py's temperature), a prediction's top score is its probability of being right,
  so the mean top score over unlabelled traffic estimates accuracy; its noise band is the
  Poisson-binomial standard deviation of that mean.

Standard library only.
"""

from __future__ import annotations

import base64
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import spec

RESAMPLES = 400


class CaptureError(spec.TuneloopError, ValueError):
    """A capture file holds something that is not a SageMaker capture record."""


def _records(folder: Path) -> Iterator[tuple[str, str, Any, Any]]:
    """(inference time, inference id, request, response) of every capture record under
    ``folder``, the payloads parsed; CaptureError names the file and line of one that is
    not SageMaker's. The id is the caller's ``InferenceId``, else the capture's event id
    (what the caller was given)."""
    for path in sorted(folder.rglob("*.jsonl")) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                metadata = record.get("eventMetadata") or {}
                metadata = metadata if isinstance(metadata, dict) else {}
                data = record["captureData"]
                asked = _payload(data["endpointInput"])
                said = _payload(data["endpointOutput"]) if data.get("endpointOutput") else None
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise CaptureError(f"{path.name}:{number}: not a SageMaker capture record ({exc})") from exc
            inference_id = str(metadata.get("inferenceId") or metadata.get("eventId") or "")
            yield str(metadata.get("inferenceTime", "")), inference_id, asked, said


def capture_records(folder: Path) -> Iterator[tuple[str, str, list[str], list[dict[str, Any] | None]]]:
    """(inference time, inference id, texts, answers) of every captured request."""
    for when, inference_id, texts, answer in _records(folder):
        if isinstance(texts, dict):
            texts = texts.get("inputs") if "inputs" in texts else asked_text(texts.get("messages"))
        texts = [texts] if isinstance(texts, str) else texts
        answers = [answer] if isinstance(answer, dict) else answer if isinstance(answer, list) else []
        kept, said = [], []
        for n, text in enumerate(texts if isinstance(texts, list) else []):
            if isinstance(text, str):
                kept.append(text)
                said.append(answers[n] if n < len(answers) and isinstance(answers[n], dict) else None)
        yield when, inference_id, kept, said


def asked_text(messages: Any) -> str | None:
    """What a conversation asks, for drift: its last user message."""
    if not isinstance(messages, list):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else None


def _payload(half: dict[str, Any]) -> Any:
    data = half["data"]
    if half.get("encoding") == "BASE64":
        data = base64.b64decode(data).decode("utf-8")
    return json.loads(data)


@dataclass(frozen=True)
class Prediction:
    """One captured text and what the model answered; ``inference_id`` joins labels to it."""

    text: str
    label: str | None
    confidence: float | None
    inference_id: str
    time: str = ""


@dataclass
class Joined:
    """Labelled predictions of the window, and what the labels could not be used for."""

    pairs: list[tuple[Prediction, str]] = field(default_factory=list)
    labels_read: int = 0
    invalid_rows: int = 0
    repeats: int = 0  # the same label again for an id
    conflicts: int = 0  # another label for an id: the latest received wins
    unknown_ids: int = 0  # ids no captured request has
    unknown_labels: Counter[str] = field(default_factory=Counter)
    outside_window: int = 0  # labels for requests captured before the window
    unjoinable: int = 0  # requests of several texts: one id cannot label each

    def summary(self, window_predictions: int) -> dict[str, Any]:
        return {
            "labels_read": self.labels_read,
            "invalid_rows": self.invalid_rows,
            "repeats": self.repeats,
            "conflicts": self.conflicts,
            "unknown_ids": self.unknown_ids,
            "unknown_labels": dict(self.unknown_labels.most_common(20)),
            "outside_window": self.outside_window,
            "unjoinable_requests": self.unjoinable,
            "labelled": len(self.pairs),
            "coverage": len(self.pairs) / window_predictions if window_predictions else 0.0,
        }


def read_labels(folder: Path, task: str = "text-classification") -> tuple[list[dict[str, Any]], int]:
    """Every stored feedback row (labels/<project>/*.jsonl), oldest received first, and how
    many rows were not valid for the task (the doors validate; a hand-written file may not)."""
    rows: list[tuple[str, int, dict[str, Any]]] = []
    invalid = 0
    order = 0
    for path in sorted(folder.rglob("*.jsonl")) if folder.is_dir() else []:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                invalid += 1
                continue
            row, _ = spec.check_feedback_row(record, task)
            if row is None:
                invalid += 1
                continue
            order += 1
            rows.append((str(record.get("received_at", "")), order, row))
    rows.sort(key=lambda item: (item[0], item[1]))
    return [row for _, _, row in rows], invalid


def join(
    window: Sequence[Prediction],
    labels: Sequence[dict[str, str]],
    known_labels: Sequence[str],
    earlier_ids: set[str] | frozenset[str] = frozenset(),
    unjoinable_ids: set[str] | frozenset[str] = frozenset(),
) -> Joined:
    """Match ``labels`` (oldest received first) to the window's predictions by inference id.

    ``earlier_ids``: ids captured before the window (their labels are not this window's,
    nor unknown); ``unjoinable_ids``: ids of requests that carried several texts."""
    joined = Joined(labels_read=len(labels))
    latest: dict[str, str] = {}
    for row in labels:
        inference_id, label = row["inference_id"], row["label"]
        if inference_id in latest:
            if latest[inference_id] == label:
                joined.repeats += 1
            else:
                joined.conflicts += 1
        latest[inference_id] = label
    by_id = {p.inference_id: p for p in window}
    known = set(known_labels)
    for inference_id, label in latest.items():
        prediction = by_id.get(inference_id)
        if prediction is None:
            if inference_id in unjoinable_ids:
                joined.unjoinable += 1
            elif inference_id in earlier_ids:
                joined.outside_window += 1
            else:
                joined.unknown_ids += 1
            continue
        if known and label not in known:
            joined.unknown_labels[label] += 1
            continue
        joined.pairs.append((prediction, label))
    return joined


def accuracy(pairs: Sequence[tuple[str | None, str]]) -> float:
    return sum(1 for predicted, truth in pairs if predicted == truth) / len(pairs) if pairs else math.nan


def macro_f1(pairs: Sequence[tuple[str | None, str]], classes: Sequence[str]) -> float:
    """spec.macro_f1 over (predicted, truth) pairs and ``classes`` (the model's labels)."""
    return spec.macro_f1([p for p, _ in pairs], [t for _, t in pairs], classes)


def upper_band(pairs: Sequence[tuple[str | None, str]], classes: Sequence[str], metric: str, seed: int = 0) -> float:
    """How far above the observed value the metric's bootstrap 95th percentile lies: the
    sample-size noise a drop below a floor must exceed to count."""
    value = accuracy(pairs) if metric == "accuracy" else macro_f1(pairs, classes)
    if len(pairs) < 2:
        return math.inf
    rng = random.Random(seed)
    values = []
    for _ in range(RESAMPLES):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        values.append(accuracy(sample) if metric == "accuracy" else macro_f1(sample, classes))
    values.sort()
    return max(0.0, values[int(0.95 * (len(values) - 1))] - value)


def estimate(confidences: Sequence[float]) -> tuple[float, float]:
    """(CBPE estimated accuracy, its one-sided 95% band): the mean calibrated top score,
    and 1.645 standard deviations of a Poisson-binomial mean."""
    if not confidences:
        return math.nan, math.inf
    n = len(confidences)
    mean = sum(confidences) / n
    sd = math.sqrt(sum(c * (1 - c) for c in confidences)) / n
    return mean, 1.645 * sd


def floor_entry(value: float, band: float, threshold: float | None) -> dict[str, Any]:
    """A quality metric's report entry. Below the floor by more than the band: published as
    measured (the alarm fires); within the band: published clipped to the floor."""
    significant = threshold is not None and math.isfinite(value) and value + band < threshold
    published = value if threshold is None or significant or not math.isfinite(value) else max(value, threshold)
    return {
        "value": value,
        "noise": band,
        "threshold": threshold if threshold is not None else math.nan,
        "below": bool(significant),
        "published": published,
    }


def quality(
    window: Sequence[Prediction],
    labels: Sequence[dict[str, str]],
    classes: Sequence[str],
    floors: dict[str, float],
    min_labels: int,
    invalid_rows: int = 0,
    earlier_ids: set[str] | frozenset[str] = frozenset(),
    unjoinable_ids: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The window's production metrics: measured where labels allow, estimated throughout."""
    joined = join(window, labels, classes, earlier_ids, unjoinable_ids)
    joined.invalid_rows = invalid_rows
    predicted = [p for p in window if p.label is not None]
    report: dict[str, Any] = {"feedback": joined.summary(len(predicted)), "metrics": {}}
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    confidences = [p.confidence for p in predicted if p.confidence is not None]
    if confidences:
        value, band = estimate(confidences)
        metrics["estimated_accuracy"] = floor_entry(value, band, floors.get("estimated_accuracy"))
    metrics["label_coverage"] = {"value": report["feedback"]["coverage"], "published": report["feedback"]["coverage"]}
    pairs = [(p.label, truth) for p, truth in joined.pairs]
    if len(pairs) >= min_labels:
        for name, metric in (("production_accuracy", "accuracy"), ("production_macro_f1", "macro_f1")):
            value = accuracy(pairs) if metric == "accuracy" else macro_f1(pairs, classes)
            metrics[name] = floor_entry(value, upper_band(pairs, classes, metric), floors.get(name))
        labelled_confidences = [p.confidence for p, _ in joined.pairs if p.confidence is not None]
        if labelled_confidences:
            # The estimate and the measurement over the same labelled requests: how well CBPE did.
            report["estimate_vs_measured"] = {
                "requests": len(labelled_confidences),
                "estimated_accuracy": estimate(labelled_confidences)[0],
                "production_accuracy": accuracy([(p.label, t) for p, t in joined.pairs if p.confidence is not None]),
            }
    else:
        report["note"] = f"{len(pairs)} labelled predictions in the window; {min_labels} are needed to measure"
    report["below"] = sorted(name for name, entry in metrics.items() if entry.get("below"))
    return report


def labelled_examples(capture: Path, labels_folder: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Every captured single-text request that has a label, as a training example
    ``{"text", "label", "inference_id", "inference_time"}`` (the latest label received
    for its id), and what could not be joined: what a retraining run learns from production."""
    texts: dict[str, tuple[str, str]] = {}
    several = 0
    for when, inference_id, request_texts, _ in capture_records(capture) if capture.is_dir() else iter(()):
        if len(request_texts) == 1 and inference_id:
            texts[inference_id] = (request_texts[0], when)
        else:
            several += 1
    labels, invalid = read_labels(labels_folder)
    latest: dict[str, str] = {}
    for row in labels:
        latest[row["inference_id"]] = row["label"]
    examples = [
        {"text": texts[i][0], "label": label, "inference_id": i, "inference_time": texts[i][1]}
        for i, label in sorted(latest.items())
        if i in texts
    ]
    examples.sort(key=lambda e: (e["inference_time"], e["inference_id"]))
    return examples, {
        "labels_read": len(labels),
        "invalid_rows": invalid,
        "unknown_ids": sum(1 for i in latest if i not in texts),
        "unjoinable_requests": several,
        "joined": len(examples),
    }


# --- language models: corrections, ratings, preferences ----------------------------------


@dataclass(frozen=True)
class Exchange:
    """One captured request to a language model: what was asked (a conversation, or a
    prompt sent as ``inputs``) and the answer it gave."""

    inference_id: str
    time: str
    messages: list[dict[str, str]] | None
    prompt: str | None
    answer: str | None

    def row(self, completion: str) -> dict[str, Any]:
        """A training row: this request, answered with ``completion``."""
        if self.messages is not None:
            return {"messages": [*self.messages, {"role": "assistant", "content": completion}]}
        return {"prompt": self.prompt, "completion": completion}


def exchanges(folder: Path) -> Iterator[Exchange]:
    """Every captured single request of a language model (a batch of prompts cannot be
    corrected by one id: left out)."""
    for when, inference_id, asked, said in _records(folder):
        answer = said.get("generated_text") if isinstance(said, dict) else None
        answer = answer if isinstance(answer, str) else None
        messages = asked.get("messages") if isinstance(asked, dict) else None
        prompt = asked.get("inputs") if isinstance(asked, dict) else asked
        if isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            kept = [{"role": m["role"], "content": m["content"]} for m in messages]
            yield Exchange(inference_id, when, kept, None, answer)
        elif isinstance(prompt, str):
            yield Exchange(inference_id, when, None, prompt, answer)


def corrected_examples(capture: Path, labels_folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every captured request that has a correction, as a training row: the request
    answered with the correction (the latest received for its id), with ``inference_id``
    and ``inference_time``; and what could not be joined. What a language model's
    retraining run learns from production."""
    asked, reused = unique_exchanges(exchanges(capture))
    rows, invalid = read_labels(labels_folder, "causal-lm")
    latest = {row["inference_id"]: row["completion"] for row in rows if "completion" in row}
    examples = [
        {"record": asked[i].row(completion), "inference_id": i, "inference_time": asked[i].time}
        for i, completion in sorted(latest.items())
        if i in asked
    ]
    examples.sort(key=lambda e: (e["inference_time"], e["inference_id"]))
    return examples, {
        "labels_read": len(rows),
        "invalid_rows": invalid,
        "unknown_ids": sum(1 for i in latest if i not in asked and i not in reused),
        "unjoinable_requests": sum(1 for i in latest if i in reused),
        "joined": len(examples),
    }


def preference_pairs(capture: Path, labels_folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every preference received (``{inference_id, preferred_over}``) as a DPO pair: the
    request both captured answers were given to, the preferred (``chosen``) and the other
    (``rejected``) answer, with both ids and the preferred one's time. The latest
    preference between two requests wins (either way round). Left out, and counted: an id
    not captured (or carried by several requests), two requests that asked different
    things, an answer missing, or two answers that are the same."""
    asked, reused = unique_exchanges(exchanges(capture))
    rows, invalid = read_labels(labels_folder, "causal-lm")
    latest: dict[frozenset[str], tuple[str, str]] = {}
    for row in rows:
        if "preferred_over" in row:
            latest[frozenset((row["inference_id"], row["preferred_over"]))] = (
                row["inference_id"],
                row["preferred_over"],
            )
    counts = {"preferences_read": len(latest), "unknown_ids": 0, "different_requests": 0, "same_answers": 0}
    pairs = []
    for better, worse in latest.values():
        if better not in asked or worse not in asked or asked[better].answer is None or asked[worse].answer is None:
            counts["unknown_ids"] += 1
            continue
        chosen, rejected = asked[better], asked[worse]
        if (chosen.messages, chosen.prompt) != (rejected.messages, rejected.prompt):
            counts["different_requests"] += 1
            continue
        if chosen.answer == rejected.answer:
            counts["same_answers"] += 1
            continue
        request = {"messages": chosen.messages} if chosen.messages is not None else {"prompt": chosen.prompt}
        pairs.append({**request, "chosen": chosen.answer, "rejected": rejected.answer, "inference_id": better,
                      "preferred_over": worse, "inference_time": chosen.time})  # fmt: skip
    pairs.sort(key=lambda p: (p["inference_time"], p["inference_id"], p["preferred_over"]))
    return pairs, {**counts, "invalid_rows": invalid, "unjoinable_requests": len(reused), "pairs": len(pairs)}


def unique_exchanges(found: Iterator[Exchange]) -> tuple[dict[str, Exchange], set[str]]:
    """The exchanges by inference id, and the ids several requests carried (a caller that
    reused an id): feedback for those cannot say which request it is about, so it is left
    out and counted."""
    by_id: dict[str, Exchange] = {}
    reused: set[str] = set()
    for exchange in found:
        if not exchange.inference_id:
            continue
        if exchange.inference_id in by_id:
            reused.add(exchange.inference_id)
        by_id[exchange.inference_id] = exchange
    return {i: e for i, e in by_id.items() if i not in reused}, reused


def mean_band(values: Sequence[float], seed: int = 0) -> float:
    """How far the bootstrap's 95th percentile of the mean lies from the mean, either way
    the larger: the sample-size noise a crossing must exceed to count."""
    if len(values) < 2:
        return math.inf
    rng = random.Random(seed)
    mean = sum(values) / len(values)
    means = sorted(sum(values[rng.randrange(len(values))] for _ in values) / len(values) for _ in range(RESAMPLES))
    return max(means[int(0.95 * (len(means) - 1))] - mean, mean - means[int(0.05 * (len(means) - 1))], 0.0)


def limit_entry(value: float, band: float, threshold: float | None, higher: bool) -> dict[str, Any]:
    """A floor (``higher`` is better) or a ceiling, as floor_entry: past it by more than
    the band is published as measured (the alarm fires); within the band, clipped to it."""
    if higher:
        return floor_entry(value, band, threshold)
    significant = threshold is not None and math.isfinite(value) and value - band > threshold
    published = value if threshold is None or significant or not math.isfinite(value) else min(value, threshold)
    return {
        "value": value,
        "noise": band,
        "threshold": threshold if threshold is not None else math.nan,
        "below": bool(significant),  # past the limit, in the metric's bad direction
        "published": published,
    }


def llm_quality(
    window: Sequence[Exchange],
    feedback: Sequence[dict[str, Any]],
    limits: dict[str, float],
    min_labels: int,
    scorers: dict[str, Any],
    invalid_rows: int = 0,
) -> dict[str, Any]:
    """A language model's production quality over the window's answers: the share
    corrected (``production_correction_rate``, once the window has ``min_labels`` answers
    and any feedback), the mean rating scaled to 0-1 (``production_rating``: 1 is 0, 5 is
    1, once ``min_labels`` answers are rated), and each of the project's scorers of the
    answer given against its correction (``production_<scorer>``, over the corrected
    answers alone, once ``min_labels`` are corrected: how far off the answers that needed
    a correction were), each with its noise band. Ids several requests carried are left
    out."""
    unique, _ = unique_exchanges(iter(window))
    by_id = {i: e for i, e in unique.items() if e.answer is not None}
    corrections: dict[str, str] = {}
    ratings: dict[str, int] = {}
    preferences = 0
    unknown = 0
    for row in feedback:
        if row["inference_id"] not in by_id:
            unknown += 1
        elif "completion" in row:
            corrections[row["inference_id"]] = row["completion"]
        elif "rating" in row:
            ratings[row["inference_id"]] = int(row["rating"])
        else:
            preferences += 1
    answered = len(by_id)
    report: dict[str, Any] = {
        "feedback": {"labels_read": len(feedback), "invalid_rows": invalid_rows, "unknown_ids": unknown,
                     "corrections": len(corrections), "ratings": len(ratings), "preferences": preferences,
                     "answers": answered, "labelled": len(corrections) + len(ratings),
                     "coverage": len(set(corrections) | set(ratings)) / answered if answered else 0.0},
        "metrics": {},
    }  # fmt: skip
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    noted = []
    if answered >= min_labels and (corrections or ratings):  # no feedback at all: nobody looked, nothing to say
        flags = [1.0 if i in corrections else 0.0 for i in by_id]
        metrics["production_correction_rate"] = limit_entry(
            sum(flags) / answered, mean_band(flags), limits.get("production_correction_rate"), higher=False
        )
    else:
        noted.append(f"{answered} answers in the window, {len(corrections) + len(ratings)} with feedback")
    if len(ratings) >= min_labels:
        scaled = [(r - spec.RATING_MIN) / (spec.RATING_MAX - spec.RATING_MIN) for r in ratings.values()]
        value = sum(scaled) / len(scaled)
        metrics["production_rating"] = limit_entry(value, mean_band(scaled), limits.get("production_rating"), True)
    else:
        noted.append(f"{len(ratings)} ratings")
    if len(corrections) >= min_labels:
        for name, score in scorers.items():
            values = [score(str(by_id[i].answer), corrections[i]) for i in sorted(corrections)]
            metric = f"production_{name}"
            metrics[metric] = limit_entry(sum(values) / len(values), mean_band(values), limits.get(metric), True)
    else:
        noted.append(f"{len(corrections)} corrections")
    if noted:
        report["note"] = f"{', '.join(noted)}; {min_labels} of each are needed to measure"
    report["below"] = sorted(name for name, entry in metrics.items() if entry.get("below"))
    return report
