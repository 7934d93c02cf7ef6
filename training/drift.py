"""Drift check (SageMaker processing job): the deployed model's captured traffic against
the data it was trained on.

Inputs, under ``/opt/ml/processing/input/``:

    baseline/profile/profile.json   prepare.py's profile (lengths, vocabulary, labels)
    baseline/train/*.jsonl          the training split (texts for the embedding check)
    capture/**.jsonl                SageMaker data capture records of the endpoint
    labels/*.jsonl                  labels received for captured requests (optional)
    model/model.tar.gz              the deployed model (its encoder embeds the texts)
    base/                           a LoRA adapter's base model (model.tar.gz or its files),
                                    when the deployed model is an adapter on an s3:// base

Metrics (each a number where larger means more drift):

- ``input_length_psi``: population stability index of text lengths (baseline quantile bins);
- ``input_js``: Jensen–Shannon divergence (base 2, 0..1) of word distributions over the
  baseline's vocabulary plus an out-of-vocabulary bucket;
- ``prediction_psi`` and ``prediction_js``: of the predicted label mix against the
  training label mix (classification);
- ``embedding_auc``: cross-validated AUC of a logistic domain classifier telling baseline
  from live texts apart on the model's mean-pooled embeddings (0.5: indistinguishable).

Sample-size aware: for each metric the job also computes its 95th percentile under no drift
at these sample sizes (permutations of the pooled samples). A value inside that noise band
is published *clipped to its alarm threshold*, so small samples never alarm on noise; the
raw value and the band are in the report. Fewer than ``--min-samples`` captured records
publish nothing (the alarms treat missing data as not breaching).

Production quality (``quality.py``), when labels have arrived for captured requests
(``labels/*.jsonl``, written by the feedback doors): the window's predictions joined with
them by inference id give ``production_accuracy`` and ``production_macro_f1`` (at least
``--min-labels`` labelled predictions; the same noise-band clipping, below a floor), the
``label_coverage``, and, from the calibrated scores of all the window's predictions,
``estimated_accuracy`` (CBPE). Unknown ids, unknown labels, repeats and conflicts are
counted in the report.

Outputs: ``drift.json`` and ``report.html`` in ``processing/output/drift/``, and the metrics
in CloudWatch (namespace ``tuneloop``, dimensions ``project``, ``endpoint`` and ``run``: the
run whose model answered the captured requests, so each model's alarms watch its own series).
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import math
import os
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":  # a processing job: the tested versions first (pins.py)
    import pins

    pins.ensure()

import inference
import quality
import scoring
import spec

_WORD_RE = re.compile(r"\w+", re.UNICODE)
EPS = 1e-4
PERMUTATIONS = 60


class DriftError(spec.TuneloopError):
    """The inputs cannot be compared (no baseline)."""


# --- reading ------------------------------------------------------------------------------


Record = tuple[str, str, list[str], list[dict[str, Any] | None]]


def captured(records: Sequence[Record], since: str = "") -> list[tuple[str, dict[str, Any] | None]]:
    """(text, prediction) for every request captured at or after ``since`` (ISO 8601, UTC);
    a batch request gives one per text."""
    return [
        (text, answer)
        for when, _, texts, answers in records
        if not since or when >= since
        for text, answer in zip(texts, answers, strict=True)
    ]


def predictions(records: Sequence[Record], since: str = "") -> tuple[list[quality.Prediction], set[str], set[str]]:
    """The window's single-text requests as predictions a label can join, the ids captured
    before the window, and the ids of requests that carried several texts."""
    window: list[quality.Prediction] = []
    earlier: set[str] = set()
    several: set[str] = set()
    for when, inference_id, texts, answers in records:
        if since and when < since:
            earlier.add(inference_id)
        elif len(texts) != 1:
            several.add(inference_id)
        else:
            answer = answers[0] or {}
            scores = answer.get("scores")
            label = answer.get("label")
            confidence = None
            if isinstance(scores, dict) and scores:
                values = [v for v in scores.values() if isinstance(v, (int, float)) and math.isfinite(v)]
                confidence = max(values) if values else None
            window.append(quality.Prediction(texts[0], str(label) if label is not None else None, confidence,
                                             inference_id, when))  # fmt: skip
    return window, earlier, several


def baseline_texts(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts.append(str(row.get("text") or row.get("prompt") or quality.asked_text(row.get("messages")) or ""))
    return [t for t in texts if t]


# --- statistics ---------------------------------------------------------------------------


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPS), max(a, EPS)
        total += (a - e) * math.log(a / e)
    return total


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence, base 2 (0: same, 1: disjoint)."""

    def kl(a: Sequence[float], b: Sequence[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    p, q = _normalise(p), _normalise(q)
    m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
    return max(0.0, min(1.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))


def _normalise(values: Sequence[float]) -> list[float]:
    total = float(sum(values))
    return [v / total for v in values] if total > 0 else [1.0 / len(values)] * len(values)


def quantile_edges(values: Sequence[float], bins: int = 10) -> list[float]:
    ordered = sorted(values)
    edges = sorted({ordered[min(len(ordered) - 1, int(len(ordered) * q / bins))] for q in range(1, bins)})
    return edges


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[sum(1 for edge in edges if value >= edge)] += 1
    return _normalise(counts)


def word_distribution(texts: Sequence[str], vocabulary: Sequence[str]) -> list[float]:
    index = {w: i for i, w in enumerate(vocabulary)}
    counts = [0.0] * (len(vocabulary) + 1)
    for text in texts:
        for word in _WORD_RE.findall(text.lower()):
            counts[index.get(word, len(vocabulary))] += 1
    return _normalise(counts)


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann–Whitney), ties counted half."""
    ranked = sorted(zip(scores, labels, strict=True))
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2
        rank_sum += average_rank * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return 0.5
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def domain_auc(baseline: Any, live: Any, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression telling live from baseline embeddings."""
    import torch

    x = torch.cat([baseline, live]).float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.cat([torch.zeros(len(baseline)), torch.ones(len(live))])
    order = list(range(len(x)))
    random.Random(seed).shuffle(order)
    scores = [0.0] * len(x)
    for fold in range(folds):
        test = order[fold::folds]
        train = [i for i in order if i not in set(test)]
        weights, bias = _logistic(x[train], y[train])
        with torch.no_grad():
            for i, s in zip(test, (x[test] @ weights + bias).tolist(), strict=True):
                scores[i] = s
    return auc(scores, [int(v) for v in y.tolist()])


def _logistic(x: Any, y: Any, penalty: float = 1e-2) -> tuple[Any, Any]:
    """L2-regularised logistic regression fitted by L-BFGS."""
    import torch

    weights = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=50)

    def closure() -> Any:
        optimiser.zero_grad()
        logits = x @ weights + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + penalty * (weights**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weights, bias


def embed(model_dir: Path, texts: Sequence[str], batch_size: int = 32) -> Any:
    """Mean-pooled last hidden states of the deployed model's own encoder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    meta_file = model_dir / "tuneloop.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("artifact") == "adapter":
        loaded = inference.model_fn(str(model_dir))  # the adapter on its base, as the endpoint serves it
        tokenizer, model = loaded["tokenizer"], loaded["model"].base_model.cpu()
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # nosec B615  # the model's own folder, no download
        model = AutoModel.from_pretrained(model_dir)  # nosec B615  # the model's own folder, no download
    model.eval()
    vectors = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]), truncation=True, max_length=128, padding=True,
                return_tensors="pt",
            )  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(vectors)


def noise_band(
    metric: Callable[[Sequence[Any], Sequence[Any]], float], a: Sequence[Any], b: Sequence[Any], seed: int = 0
) -> float:
    """The metric's 95th percentile when both samples come from one population: the
    pooled samples shuffled and split again at the same sizes."""
    pooled = list(a) + list(b)
    rng = random.Random(seed)
    values = []
    for _ in range(PERMUTATIONS):
        rng.shuffle(pooled)
        values.append(metric(pooled[: len(a)], pooled[len(a) :]))
    values.sort()
    return values[int(0.95 * (len(values) - 1))]


# --- what drifted ------------------------------------------------------------------------


def _terms(text: str) -> set[str]:
    """A text's words and two-word phrases (presence, not counts)."""
    words = _WORD_RE.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in itertools.pairwise(words)}


def explain(
    baseline: Sequence[str],
    live: Sequence[str],
    expected: dict[str, float] | None = None,
    predicted: Sequence[str] = (),
    top: int = 10,
    examples: int = 3,
    sample: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """What separates live traffic from the training data, in words a person can check:
    the terms a linear domain classifier (L2 logistic regression on word and two-word
    phrase presence) weighs most towards each side, the labels whose predicted share moved
    most against the training mix, and the texts the classifier finds most typical of each
    side."""
    import torch

    rng = random.Random(seed)
    a = rng.sample(list(baseline), min(sample, len(baseline)))
    b = rng.sample(list(live), min(sample, len(live)))
    out: dict[str, Any] = {
        "terms": {"live": [], "baseline": []},
        "labels": [],
        "examples": {"live": [], "baseline": []},
    }
    if predicted and expected:
        counts = Counter(predicted)
        shifts: list[dict[str, Any]] = [
            {"label": label, "training_share": share, "live_share": counts.get(label, 0) / len(predicted),
             "change": counts.get(label, 0) / len(predicted) - share}
            for label, share in expected.items()
        ]  # fmt: skip
        out["labels"] = sorted(shifts, key=lambda s: -abs(s["change"]))[:top]
    if not a or not b:
        return out
    docs = [_terms(t) for t in a + b]
    frequency = Counter(term for doc in docs for term in doc)
    vocabulary = [term for term, n in frequency.most_common(3000) if n >= 2]
    if not vocabulary:
        return out
    index = {term: i for i, term in enumerate(vocabulary)}
    x = torch.zeros(len(docs), len(vocabulary))
    for row, doc in enumerate(docs):
        for term in doc:
            if term in index:
                x[row, index[term]] = 1.0
    y = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    # A strong penalty: weight goes to the terms that separate many texts, not to the few
    # words that single out one text (which would fit, and explain nothing).
    weights, bias = _logistic(x, y, penalty=0.1)
    w = weights.detach()
    order = torch.argsort(w)
    side_share = {
        "live": x[len(a) :].mean(0),
        "baseline": x[: len(a)].mean(0),
    }

    def entry(i: int) -> dict[str, Any]:
        return {"term": vocabulary[i], "weight": round(float(w[i]), 4),
                "live_share": round(float(side_share["live"][i]), 4),
                "baseline_share": round(float(side_share["baseline"][i]), 4)}  # fmt: skip

    out["terms"]["live"] = [entry(int(i)) for i in reversed(order[-top:].tolist()) if w[i] > 0]
    out["terms"]["baseline"] = [entry(int(i)) for i in order[:top].tolist() if w[i] < 0]
    with torch.no_grad():
        scores = (x @ w + bias.detach()).tolist()
    live_scores = sorted(range(len(b)), key=lambda i: -scores[len(a) + i])
    base_scores = sorted(range(len(a)), key=lambda i: scores[i])
    out["examples"]["live"] = [b[i][:300] for i in live_scores[:examples]]
    out["examples"]["baseline"] = [a[i][:300] for i in base_scores[:examples]]
    return out


# --- the check ----------------------------------------------------------------------------


def check(
    profile: dict[str, Any],
    baseline: list[str],
    live: list[tuple[str, dict[str, Any] | None]],
    thresholds: dict[str, float],
    model_dir: Path | None = None,
    embedding_sample: int = 200,
) -> dict[str, Any]:
    texts = [text for text, _ in live]
    vocabulary = list(profile.get("vocabulary", {}))
    lengths = [float(len(t)) for t in baseline]
    edges = quantile_edges(lengths)

    def length_psi(a: Sequence[str], b: Sequence[str]) -> float:
        return psi(histogram([len(t) for t in a], edges), histogram([len(t) for t in b], edges))

    def words_js(a: Sequence[str], b: Sequence[str]) -> float:
        return js_divergence(word_distribution(a, vocabulary), word_distribution(b, vocabulary))

    metrics: dict[str, dict[str, float]] = {
        "input_length_psi": {"value": length_psi(baseline, texts), "noise": noise_band(length_psi, baseline, texts)},
        "input_js": {"value": words_js(baseline, texts), "noise": noise_band(words_js, baseline, texts)},
    }
    labels = list(profile.get("label_distribution", {}))
    predicted = [str(p["label"]) for _, p in live if p and "label" in p]
    if labels and predicted:
        expected = [profile["label_distribution"][k] for k in labels]
        counts = Counter(predicted)
        actual = _normalise([counts.get(k, 0) for k in labels])
        # Under no drift, predictions are a multinomial sample of the training mix.
        rng = random.Random(1)
        null_psi, null_js = [], []
        for _ in range(PERMUTATIONS):
            draw = Counter(rng.choices(labels, weights=expected, k=len(predicted)))
            sample = _normalise([draw.get(k, 0) for k in labels])
            null_psi.append(psi(expected, sample))
            null_js.append(js_divergence(expected, sample))
        metrics["prediction_psi"] = {"value": psi(expected, actual), "noise": sorted(null_psi)[int(0.95 * 59)]}
        metrics["prediction_js"] = {"value": js_divergence(expected, actual), "noise": sorted(null_js)[int(0.95 * 59)]}
    if model_dir is not None:
        rng = random.Random(2)
        base_sample = rng.sample(baseline, min(embedding_sample, len(baseline)))
        live_sample = rng.sample(texts, min(embedding_sample, len(texts)))
        vectors = embed(model_dir, base_sample + live_sample)
        a, b = vectors[: len(base_sample)], vectors[len(base_sample) :]
        value = domain_auc(a, b)
        # The AUC a classifier reaches on two samples of one population, at these sizes.
        import torch

        null = []
        for seed in range(8):
            perm = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))
            null.append(domain_auc(vectors[perm[: len(a)]], vectors[perm[len(a) :]], seed=seed))
        metrics["embedding_auc"] = {"value": value, "noise": max(null)}
    for name, entry in metrics.items():
        threshold = thresholds.get(name)
        entry["threshold"] = threshold if threshold is not None else float("nan")
        noisy = entry["value"] <= entry["noise"]
        entry["drifted"] = bool(threshold is not None and not noisy and entry["value"] > threshold)
        entry["published"] = min(entry["value"], threshold) if (noisy and threshold is not None) else entry["value"]
    drifted = sorted(name for name, entry in metrics.items() if entry["drifted"])
    return {
        "samples": {"baseline": len(baseline), "live": len(texts), "predictions": len(predicted)},
        "metrics": metrics,
        "drifted": drifted,
        # What moved, named: every check carries it; the report leads with it when drifted.
        "explanation": explain(baseline, texts, profile.get("label_distribution") or None, predicted),
    }


def report_html(result: dict[str, Any], project: str, endpoint: str) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{m['value']:.4f}</td><td>{m['noise']:.4f}</td>"
        f"<td>{m['threshold']:.4g}</td><td>{m['published']:.4f}</td><td>{'DRIFT' if m['drifted'] else 'ok'}</td></tr>"
        for name, m in sorted(result["metrics"].items())
    )
    samples = result["samples"]
    production = result.get("quality") or {}
    quality_rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{m['value']:.4f}</td><td>{m.get('noise', math.nan):.4f}</td>"
        f"<td>{m.get('threshold', math.nan):.4g}</td><td>{m['published']:.4f}</td>"
        f"<td>{'BELOW' if m.get('below') else 'ok'}</td></tr>"
        for name, m in sorted(production.get("metrics", {}).items())
    )
    explanation = result.get("explanation") or {}

    def terms(side: str) -> str:
        return "".join(
            f"<li><code>{html.escape(t['term'])}</code> ({t['live_share']:.0%} of live texts, "
            f"{t['baseline_share']:.0%} of training texts)</li>"
            for t in explanation.get("terms", {}).get(side, [])
        )

    def texts(side: str) -> str:
        return "".join(f"<li>{html.escape(t)}</li>" for t in explanation.get("examples", {}).get(side, []))

    shifts = "".join(
        f"<tr><th>{html.escape(str(s['label']))}</th><td>{s['training_share']:.1%}</td><td>{s['live_share']:.1%}</td>"
        f"<td>{s['change']:+.1%}</td></tr>"
        for s in explanation.get("labels", [])
    )
    explained = (
        f"""<h2>What drifted</h2>
<div id="explanation"><h3>Terms that mark live traffic</h3><ol>{terms("live")}</ol>
<h3>Terms that mark the training data</h3><ol>{terms("baseline")}</ol>
<h3>Predicted label shares</h3><table id="labels"><tr><th>label</th><th>training</th><th>live</th><th>change</th></tr>
{shifts}</table>
<h3>Typical live texts</h3><ul>{texts("live")}</ul><h3>Typical training texts</h3><ul>{texts("baseline")}</ul></div>"""
        if explanation
        else ""
    )
    feedback = production.get("feedback") or {}
    counts = ", ".join(f"{html.escape(str(k).replace('_', ' '))}: {html.escape(str(v))}" for k, v in feedback.items())
    versus = production.get("estimate_vs_measured")
    compared = (
        f'<p id="cbpe">On the {versus["requests"]} labelled requests: estimated accuracy '
        f"{versus['estimated_accuracy']:.4f}, measured {versus['production_accuracy']:.4f}.</p>"
        if versus
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tuneloop drift: {html.escape(endpoint)}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2rem }} td, th {{ border: 1px solid #ccc;
padding: .3rem .6rem }} table {{ border-collapse: collapse }}</style></head><body>
<h1>Drift of {html.escape(endpoint)} ({html.escape(project)})</h1>
<p>{samples["live"]} captured texts against {samples["baseline"]} training texts.</p>
<table id="drift"><tr><th>metric</th><th>value</th><th>noise (95%)</th><th>threshold</th><th>published</th>
<th></th></tr>{rows}</table>
{explained}
<h2>Production quality</h2>
<p>{html.escape(production.get("note", ""))}</p>
<table id="quality"><tr><th>metric</th><th>value</th><th>noise (95%)</th><th>floor</th><th>published</th>
<th></th></tr>{quality_rows}</table>{compared}
<p id="feedback">Feedback: {counts}</p></body></html>
"""


def publish(result: dict[str, Any], project: str, endpoint: str, run_id: str, region: str) -> None:
    import boto3

    dimensions = [{"Name": "project", "Value": project}, {"Name": "endpoint", "Value": endpoint},
                  {"Name": "run", "Value": run_id}]  # fmt: skip
    entries = {**result["metrics"], **(result.get("quality") or {}).get("metrics", {})}
    data = [
        {"MetricName": name, "Dimensions": dimensions, "Value": float(m["published"]), "Unit": "None"}
        for name, m in sorted(entries.items())
        if math.isfinite(m["published"])
    ]
    if data:
        boto3.client("cloudwatch", region_name=region).put_metric_data(Namespace="tuneloop", MetricData=data)


def main(argv: list[str] | None = None) -> int:
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", default=os.path.join(base, "processing/input"))
    parser.add_argument("--output-dir", default=os.path.join(base, "processing/output/drift"))
    parser.add_argument("--failure-dir", default=os.path.join(base, "output"))
    parser.add_argument("--project", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--run-id", required=True, help="the run whose model answered the captured requests")
    parser.add_argument("--thresholds", default="{}", help='JSON: {"prediction_psi": 0.2, ...}')
    parser.add_argument("--min-samples", type=int, default=30)
    parser.add_argument("--quality-thresholds", default="{}", help='JSON floors: {"production_macro_f1": 0.7, ...}')
    parser.add_argument(
        "--min-labels", type=int, default=spec.MIN_LABELS, help="labelled predictions needed to measure quality"
    )
    parser.add_argument("--window-minutes", type=int, default=0, help="only traffic this recent (0: all captured)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--task", default="text-classification", choices=sorted(spec.TASK_QUALITY_METRICS))
    parser.add_argument(
        "--generation", action="append", default=[],
        help="causal LMs, JSON: the project's scorers and their options; given again, its next piece",
    )  # fmt: skip
    parser.add_argument("--no-publish", action="store_true")
    args, _ = parser.parse_known_args(argv)
    inputs, output = Path(args.input_dir), Path(args.output_dir)
    try:
        profile_path = inputs / "baseline" / "profile" / "profile.json"
        if not profile_path.is_file():
            raise DriftError(f"no baseline profile at {profile_path}")
        profile = json.loads(profile_path.read_text())
        baseline = baseline_texts(inputs / "baseline" / "train")
        if not baseline:
            raise DriftError("the baseline training split is empty")
        since = ""
        if args.window_minutes:
            from datetime import UTC, datetime, timedelta

            since = (datetime.now(UTC) - timedelta(minutes=args.window_minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        records = list(quality.capture_records(inputs / "capture"))  # read once: drift and quality
        live = captured(records, since)
        window, earlier, several = predictions(records, since)
        labels, invalid = quality.read_labels(inputs / "labels", args.task)
        limits = json.loads(args.quality_thresholds)
        if args.task == "causal-lm":
            generation = json.loads("".join(args.generation) or "{}")
            names = generation.get("scorers") or []
            scorers = {name: scoring.scorer(name, generation) for name in names}
            exchanges = [e for e in quality.exchanges(inputs / "capture") if not since or e.time >= since]
            production = quality.llm_quality(exchanges, labels, limits, args.min_labels, scorers, invalid)
        else:
            classes = [str(k) for k in profile.get("label_distribution", {})]
            production = quality.quality(window, labels, classes, limits, args.min_labels, invalid, earlier, several)
            if len(window) < args.min_samples:
                production["metrics"].pop("estimated_accuracy", None)  # too few predictions to say
        output.mkdir(parents=True, exist_ok=True)
        if len(live) < args.min_samples:
            result: dict[str, Any] = {
                "samples": {"baseline": len(baseline), "live": len(live)},
                "metrics": {},
                "drifted": [],
                "note": f"{len(live)} captured texts; at least {args.min_samples} are needed: nothing published",
            }
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model_dir = None
                archive = inputs / "model" / "model.tar.gz"
                if archive.is_file():
                    model_dir = inference.unpack_model(archive, Path(tmp), inputs / "base")
                result = check(profile, baseline, live, json.loads(args.thresholds), model_dir)
        result["quality"] = production
        if not args.no_publish:
            publish(result, args.project, args.endpoint, args.run_id, args.region)
        (output / "drift.json").write_text(json.dumps(result, indent=2))
        (output / "report.html").write_text(report_html(result, args.project, args.endpoint))
    except (DriftError, OSError, ValueError, KeyError, RecursionError) as exc:
        message = f"{type(exc).__name__}: {exc}"[:1024]
        spec.write_failure(args.failure_dir, message)
        print(message, file=sys.stderr)
        return 1
    drifted = ", ".join(result["drifted"]) or "none"
    print(f"drift: {len(result['metrics'])} metric(s) on {result['samples']['live']} texts; drifted: {drifted}")
    feedback = production["feedback"]
    below = ", ".join(production["below"]) or "none"
    if args.task == "causal-lm":
        print(f"quality: {feedback['corrections']} corrections, {feedback['ratings']} ratings, "
              f"{feedback['preferences']} preferences for {feedback['answers']} answers "
              f"({feedback['unknown_ids']} unknown ids); past a limit: {below}")  # fmt: skip
        return 0
    print(f"quality: {feedback['labelled']} labelled of {len(window)} predictions "
          f"({feedback['unknown_ids']} unknown ids, {sum(feedback['unknown_labels'].values())} unknown labels); "
          f"below floor: {below}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
