"""Evaluate a trained model on the held-out test split (SageMaker processing job).

Inputs (under ``SAGEMAKER_BASE_DIR``, /opt/ml in SageMaker's containers):

    processing/input/model/model.tar.gz     what train.py wrote (training_history.json and
                                            data.json, the keys of the rows it trained on)
    processing/input/test/test.jsonl         prepare.py's test split (the frozen holdout)
    processing/input/report/report.json      optional: prepare's report, for the data section
    processing/input/champion/model.tar.gz   optional: the deployed model, measured on the same rows
    processing/input/profile/profile.json    prepare's profile: the training split's label counts
                                            (the majority-class baseline of a first model)
    processing/input/untuned/                optional: the untuned base model of a causal LM
                                            fine-tuned in full from an s3:// base
    processing/input/base/, champion-base/   a LoRA adapter's base model (model.tar.gz or its
                                            files), when the model is an adapter on an s3:// base

Output, ``processing/output/evaluation/``: ``evaluation.json`` (the metrics with bootstrap
intervals; the champion's beside them and the paired comparison of the two on the task's
primary metric, with how many test rows the two answer differently; with no champion, the
same comparison with a trivial baseline: the majority-class predictor of the training
split, or a causal LM's untuned base model), PNG plots (confusion matrix, training and validation curves, comparison
with the champion) and a self-contained ``report.html`` that embeds them.

Classification: accuracy, macro-F1, per-class precision/recall/F1/support, the
confusion matrix and expected calibration error. Causal LMs: loss, perplexity and a few
sampled generations. Never imports tuneloop.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":  # a processing job: the tested versions first (pins.py)
    import pins

    pins.ensure()

import inference
import scoring
import spec

PRIMARY = spec.PRIMARY_METRICS


class EvaluationError(spec.TuneloopError):
    pass


# --- metrics (plain Python: they must equal scikit-learn's, and are tested against it) ----


def classification_metrics(
    y_true: list[int],
    y_pred: list[int],
    probabilities: list[list[float]] | None,
    labels: list[str],
    bins: int = 10,
) -> dict[str, Any]:
    """A prediction of -1 is a label outside ``labels`` (a champion's class the challenger
    does not have): wrong, and no class's false positive."""
    n = len(labels)
    matrix = [[0] * n for _ in range(n)]
    support = [0] * n
    for truth, pred in zip(y_true, y_pred, strict=True):
        support[truth] += 1
        if pred >= 0:
            matrix[truth][pred] += 1
    per_class = {}
    f1s = []
    for c, label in enumerate(labels):
        tp = matrix[c][c]
        fp = sum(matrix[r][c] for r in range(n)) - tp
        fn = support[c] - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = spec.class_f1(tp, fp, fn)
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support[c]}
        f1s.append(f1)
    correct = sum(matrix[c][c] for c in range(n))
    metrics: dict[str, Any] = {
        "accuracy": correct / len(y_true),
        "macro_f1": sum(f1s) / n,
        "per_class": per_class,
        "confusion_matrix": matrix,
        "labels": labels,
        "examples": len(y_true),
    }
    if probabilities is not None:
        metrics["ece"] = expected_calibration_error(y_true, probabilities, bins)
        metrics["calibration"] = spec.reliability(y_true, probabilities, bins)
    return metrics


expected_calibration_error = spec.expected_calibration_error


# --- confidence intervals: the bootstrap, paired for the champion comparison --------------


def _resampled(metric: str, rows: dict[str, Any], index: Any) -> Any:
    """``metric`` on each resample (one row of ``index`` per resample) of the per-row data."""
    import numpy as np

    if metric in ("loss", "perplexity"):
        loss = rows["loss_sum"][index].sum(axis=1) / np.maximum(1, rows["tokens"][index].sum(axis=1))
        return np.exp(np.minimum(loss, 50)) if metric == "perplexity" else loss
    if metric in spec.SCORERS:
        return rows[f"score:{metric}"][index].mean(axis=1)
    truth, pred = rows["truth"][index], rows["pred"][index]
    if metric == "accuracy":
        return (truth == pred).mean(axis=1)
    f1 = np.zeros(index.shape[0])
    for c in range(rows["classes"]):
        is_true, is_pred = truth == c, pred == c
        tp = (is_true & is_pred).sum(axis=1)
        denominator = is_true.sum(axis=1) + is_pred.sum(axis=1)
        f1 += np.where(denominator > 0, 2 * tp / np.maximum(1, denominator), 0.0)
    return f1 / rows["classes"]


def bootstrap(
    metric: str,
    rows: dict[str, Any],
    against: dict[str, Any] | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile interval of ``metric``; with ``against`` (the same rows scored by the
    champion), also of the paired difference, each resample drawing the same rows for both."""
    import numpy as np

    n = len(rows["truth"] if "truth" in rows else rows["tokens"])
    rng = np.random.default_rng(seed)
    ours, theirs = [], []
    chunk = max(1, min(resamples, 2_000_000 // max(1, n)))  # bounded memory for big test sets
    for start in range(0, resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        ours.append(_resampled(metric, rows, index))
        if against is not None:
            theirs.append(_resampled(metric, against, index))
    tail = (1 - confidence) / 2
    a = np.concatenate(ours)
    out: dict[str, Any] = {"interval": [float(np.quantile(a, tail)), float(np.quantile(a, 1 - tail))]}
    if against is not None:
        b = np.concatenate(theirs)
        d = a - b
        out["champion_interval"] = [float(np.quantile(b, tail)), float(np.quantile(b, 1 - tail))]
        out["difference_interval"] = [float(np.quantile(d, tail)), float(np.quantile(d, 1 - tail))]
    return out


# --- plots and report -------------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plots(
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    champion: dict[str, Any] | None,
    comparison: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    try:
        import matplotlib
    except ImportError:  # an image without matplotlib: the metrics still count, say so
        print("matplotlib is not installed: the report has no plots", file=sys.stderr)
        return {}

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    if "confusion_matrix" in metrics:
        labels, matrix = metrics["labels"], metrics["confusion_matrix"]
        fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                ax.text(c, r, str(value), ha="center", va="center")
        ax.set_title("Confusion matrix (test split)")
        out["confusion_matrix.png"] = _png(fig)
        plt.close(fig)
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    validation = [(h["step"], h["validation_loss"]) for h in history if "validation_loss" in h]
    if train or validation:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if train:
            ax.plot(*zip(*train, strict=True), label="training loss")
        if validation:
            ax.plot(*zip(*validation, strict=True), marker="o", label="validation loss")
        lines = ax.get_lines()
        scores = [k for k in ("validation_macro_f1", "validation_accuracy") if any(k in h for h in history)]
        if scores:
            right = ax.twinx()
            points = [(h["step"], h[scores[0]]) for h in history if scores[0] in h]
            lines += right.plot(*zip(*points, strict=True), marker="s", color="tab:green", label=scores[0])
            right.set_ylabel(scores[0])
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        # One legend for both axes, below them: none hides a line or another's label.
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=3, frameon=False)  # fmt: skip
        ax.set_title("Training and validation curves")
        out["training_curves.png"] = _png(fig)
        plt.close(fig)
    if champion:
        names = [k for k in ("accuracy", "macro_f1", "perplexity") if k in metrics and k in champion]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = list(range(len(names)))
        ax.bar([x - 0.2 for x in xs], [champion[k] for k in names], width=0.4, label="champion")
        ax.bar([x + 0.2 for x in xs], [metrics[k] for k in names], width=0.4, label="this model")
        if comparison and comparison.get("metric") in names:
            x = names.index(comparison["metric"])
            for offset, key, value in ((-0.2, "champion_interval", "champion"), (0.2, "interval", "challenger")):
                lo, hi = comparison[key]
                v = comparison[value]
                ax.errorbar(x + offset, v, yerr=[[v - lo], [hi - v]], color="black", capsize=4)
        ax.set_xticks(xs, names)
        top = max([champion[k] for k in names] + [metrics[k] for k in names] + [0.0])
        ax.set_ylim(0, top * 1.15 or 1)
        # Below the axes: a legend inside can hide a bar.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
        ax.set_title("This model vs the deployed champion (same test rows)")
        out["champion_comparison.png"] = _png(fig)
        plt.close(fig)
    return out


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem }
table { border-collapse: collapse; margin: 1rem 0 }
td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left }
figure { display: inline-block; margin: 1rem }
img { max-width: 28rem }
"""


def _table(rows: list[tuple[str, str]], table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _shown(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _interval(bounds: list[float] | None) -> str:
    return f"{bounds[0]:.4f} to {bounds[1]:.4f}" if bounds else ""


MODEL_NAMES = {"base": "untuned base", "challenger": "this model", "champion": "champion"}


def _models_html(evaluation: dict[str, Any]) -> str:
    """A causal LM's untuned base, this model and the champion on the same test prompts."""
    models = evaluation.get("models") or {}
    if not models:
        return ""
    names = list(models)
    metrics = [k for k in models["challenger"]["metrics"] if k != "examples"]
    head = "".join(f"<th>{MODEL_NAMES.get(n, n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>"
        + "".join(
            f"<td>{_shown(models[n]['metrics'][k])}"
            + (f" ({_interval(models[n]['intervals'][k])})" if k in models[n]["intervals"] else "")
            + "</td>"
            if k in models[n]["metrics"]
            else "<td>not measured</td>"
            for n in names
        )
        + "</tr>"
        for k in metrics
    )
    confidence = evaluation.get("confidence", 0.95)
    return (
        f"<h2>{' → '.join(MODEL_NAMES.get(n, n) for n in names)}</h2>"
        f"<p>The same test prompts, each value with its {confidence:.0%} bootstrap interval.</p>"
        f'<table id="models"><tr><th>metric</th>{head}</tr>{body}</table>'
    )


def _generations_html(evaluation: dict[str, Any]) -> str:
    """A causal LM's test generations (worst first) and where it differs from the champion."""
    generations = evaluation.get("generations") or []
    if not generations:
        return ""
    names = list(generations[0]["scores"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{html.escape(g['prompt'])}</td><td>{html.escape(g['expected'])}</td>"
        f"<td>{html.escape(g['generated'])}</td>" + "".join(f"<td>{g['scores'][n]:.3f}</td>" for n in names) + "</tr>"
        for g in generations
    )
    out = (
        f'<h2>Generations, worst first</h2><table id="generations"><tr><th>prompt</th><th>expected</th>'
        f"<th>generated</th>{head}</tr>{body}</table>"
    )
    differ = evaluation.get("differences") or []
    if differ:
        rows = "".join(
            f"<tr><td>{html.escape(d['prompt'])}</td><td>{html.escape(d['expected'])}</td>"
            f"<td>{html.escape(d['challenger'])}</td><td>{html.escape(d['champion'])}</td>"
            + "".join(f"<td>{d['challenger_scores'][n]:.3f} / {d['champion_scores'][n]:.3f}</td>" for n in names)
            + "</tr>"
            for d in differ
        )
        out += (
            f'<h2>Where this model and the champion differ</h2><table id="differences"><tr><th>prompt</th>'
            f"<th>expected</th><th>this model</th><th>champion</th>{head.replace('</th>', ' (this / champion)</th>')}"
            f"</tr>{rows}</table>"
        )
    return out


def report_html(evaluation: dict[str, Any], images: dict[str, bytes], context: dict[str, Any] | None = None) -> str:
    """The run's report: what it is, its data, its metrics with intervals, the comparison."""
    context = context or {}
    metrics = evaluation["metrics"]
    confidence = evaluation.get("confidence", 0.95)
    intervals = evaluation.get("intervals") or {}
    header = f"<tr><th>metric</th><th>value</th><th>{confidence:.0%} interval</th></tr>"
    rows = header + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_shown(v)}</td><td>{_interval(intervals.get(k))}</td></tr>"
        for k, v in metrics.items()
        if isinstance(v, (int, float))
    )
    about = _table(
        [
            ("run", html.escape(str(context.get("run_id") or ""))),
            ("dataset", html.escape(str(context.get("dataset") or ""))),
            ("task", html.escape(evaluation["task"])),
            ("base model", html.escape(evaluation.get("model", ""))),
            ("test rows", str(metrics.get("examples", 0))),
        ],
        "about",
    )
    hyperparameters = ""
    if context.get("hyperparameters"):
        hyperparameters = "<h2>Hyperparameters</h2>" + _table(
            [(k, html.escape(str(v))) for k, v in sorted(context["hyperparameters"].items())], "hyperparameters"
        )
    data = ""
    if context.get("data"):
        report = context["data"]
        held = report.get("holdout") or {}
        overlap = evaluation.get("overlap") or {}
        facts = [
            ("files read", html.escape(", ".join(report.get("files", [])))),
            ("datasets skipped", html.escape(", ".join(report.get("skipped", [])) or "none")),
            ("rows read / kept", f"{report.get('rows_read', 0)} / {report.get('rows_kept', 0)}"),
            ("invalid rows dropped", str(report.get("errors", 0))),
            ("warnings (duplicates, conflicting labels, long rows)", str(report.get("warnings", 0))),
            ("test rows from the frozen holdout / added", f"{held.get('from_holdout', 0)} / {held.get('added', 0)}"),
            ("test rows this model trained on", str(overlap.get("challenger_trained_on_test", "not recorded"))),
        ]
        issues = "".join(
            f"<li>{html.escape(i['severity'])}: {html.escape(i['file'])}:{i['line']}: {html.escape(i['reason'])}</li>"
            for i in report.get("issues", [])[:20]
        )
        more = len(report.get("issues", [])) - 20
        data = "<h2>Data</h2>" + _table(facts, "data") + (f"<ul>{issues}</ul>" if issues else "")
        data += f"<p>and {more} more in the run's prepare report</p>" if more > 0 else ""
    per_class = ""
    if "per_class" in metrics:
        head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "support"))
        per_class = f"<h2>Per class</h2><table><tr>{head}</tr>"
        per_class += "".join(
            f"<tr><td>{html.escape(str(label))}</td><td>{m['precision']:.4f}</td><td>{m['recall']:.4f}</td>"
            f"<td>{m['f1']:.4f}</td><td>{m['support']}</td></tr>"
            for label, m in metrics["per_class"].items()
        )
        per_class += "</table>"
    production = evaluation.get("production")
    if production:
        facts = [("examples", str(production["examples"]))]
        for who, name in (("challenger", "this model"), ("champion", "champion")):
            if production.get(who):
                measured = production[who]
                facts.append((f"{name}: {' / '.join(measured)}", " / ".join(f"{v:.4f}" for v in measured.values())))
        per_class = "<h2>Held-out production traffic</h2>" + _table(facts, "production") + per_class
    champion = ""
    comparison = evaluation.get("comparison") or {}
    if evaluation.get("champion"):
        champion = "<h2>Champion on the same test rows</h2>" + _table(
            [(k, _shown(v)) for k, v in evaluation["champion"].items() if isinstance(v, (int, float))], "champion"
        )
        if comparison.get("metric"):
            overlap = comparison.get("overlap", {})
            champion += "<h3>Paired comparison</h3>" + _table(
                [
                    ("metric", f"{comparison['metric']} ({comparison['better']} is better)"),
                    ("this model", f"{comparison['challenger']:.4f} ({_interval(comparison['interval'])})"),
                    ("champion", f"{comparison['champion']:.4f} ({_interval(comparison['champion_interval'])})"),
                    (
                        "difference",
                        f"{comparison['difference']:+.4f} ({confidence:.0%} interval "
                        f"{_interval(comparison['difference_interval'])}, paired bootstrap, "
                        f"{comparison['resamples']} resamples)",
                    ),
                    ("rows compared", str(comparison["rows"])),
                    ("rows answered differently", str(comparison.get("differing_rows", "not recorded"))),
                    ("test rows the champion trained on", str(overlap.get("champion_trained_on_test", "not recorded"))),
                ],
                "comparison",
            )
        elif comparison.get("error"):
            champion += f"<p>{html.escape(comparison['error'])}</p>"
    baseline = evaluation.get("baseline") or {}
    if baseline.get("metric"):
        champion += "<h2>Against a trivial baseline</h2>" + _table(
            [
                ("baseline", html.escape(baseline["against"])),
                ("metric", f"{baseline['metric']} ({baseline['better']} is better)"),
                ("this model", f"{baseline['challenger']:.4f} ({_interval(baseline['interval'])})"),
                ("the baseline scores", f"{baseline['champion']:.4f}"),
                (
                    "difference",
                    f"{baseline['difference']:+.4f} ({confidence:.0%} interval "
                    f"{_interval(baseline['difference_interval'])}, paired bootstrap)",
                ),
                ("rows answered differently", f"{baseline['differing_rows']} of {baseline['rows']}"),
            ],
            "baseline",
        )
    elif baseline.get("error"):
        champion += f"<h2>Against a trivial baseline</h2><p>{html.escape(baseline['error'])}</p>"
    samples = _models_html(evaluation) + _generations_html(evaluation)
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in images.items()
    )
    title = html.escape(str(context.get("run_id") or evaluation.get("model", "")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuneloop evaluation: {title}</title>
<style>{STYLE}</style>
</head><body><h1>Evaluation on the test split</h1>
{about}{data}{hyperparameters}
<h2>Metrics</h2><table id="metrics">{rows}</table>{per_class}{champion}{samples}{figures}</body></html>
"""


# --- the job ----------------------------------------------------------------------------------


def read_rows(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else [folder]
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def measure(
    model_dir: Path,
    rows: list[dict[str, Any]],
    labels: list[str] | None = None,
    batch_size: int = 32,
    generation: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, per-row scores for the bootstrap). ``labels``: score in this label list (a
    champion is scored in its challenger's, so both count the same classes). ``generation``:
    how a causal LM generates and which scorers judge it."""
    loaded = inference.model_fn(str(model_dir))
    if loaded["meta"]["task"] != "text-classification":
        return causal_metrics(loaded, rows, generation)
    config = loaded["model"].config
    own = [config.id2label[i] for i in range(len(config.id2label))]
    space = labels or own
    index = {label: i for i, label in enumerate(space)}
    own_index = {label: i for i, label in enumerate(own)}
    y_true, y_pred, own_truth, probabilities = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        results = inference.predict_fn({"texts": [r["text"] for r in chunk], "single": False, "parameters": {}}, loaded)
        for row, result in zip(chunk, results, strict=True):
            truth = str(row["label"])
            if truth not in index:
                raise EvaluationError(f"test label {truth!r} was never seen in training")
            y_true.append(index[truth])
            y_pred.append(index.get(result["label"], -1))
            own_truth.append(own_index.get(truth, -1))
            probabilities.append([result["scores"][label] for label in own])
    metrics = classification_metrics(y_true, y_pred, None, space)
    metrics["ece"] = expected_calibration_error(own_truth, probabilities)
    metrics["calibration"] = spec.reliability(own_truth, probabilities)
    return metrics, {"truth": y_true, "pred": y_pred, "classes": len(space)}


def production_subset(
    rows: list[dict[str, Any]], ours: dict[str, Any], theirs: dict[str, Any] | None, labels: list[str] | None
) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of this model (and the champion) on the test rows that came
    from labelled production traffic (``source: production``), or a language model's
    scorers on the corrected requests: how each does on what production sends now, next to
    the whole test split."""
    chosen = [i for i, row in enumerate(rows) if row.get("source") == "production"]
    scored = sorted(k for k in ours if k.startswith("score:"))
    if not chosen or ("truth" not in ours and not scored) or ("truth" in ours and not labels):
        return None

    def on_subset(per_row: dict[str, Any]) -> dict[str, float]:
        if "truth" not in per_row:
            return {k.removeprefix("score:"): sum(per_row[k][i] for i in chosen) / len(chosen) for k in scored}
        measured = classification_metrics([per_row["truth"][i] for i in chosen], [per_row["pred"][i] for i in chosen],
                                          None, labels or [])  # fmt: skip
        return {"accuracy": measured["accuracy"], "macro_f1": measured["macro_f1"]}

    times = sorted(str(rows[i].get("inference_time", "")) for i in chosen if rows[i].get("inference_time"))
    return {
        "examples": len(chosen),
        "window": {"first": times[0], "last": times[-1]} if times else None,
        "challenger": on_subset(ours),
        "champion": on_subset(theirs) if theirs and all(k in theirs for k in scored or ["truth"]) else None,
    }


GENERATION_BATCH = 16  # test prompts generated for at once
DEFAULT_GENERATION = spec.GENERATION_DEFAULTS
MAX_SHOWN = 200  # generations kept in evaluation.json and the report (the worst ones)


def causal_metrics(
    loaded: dict[str, Any], rows: list[dict[str, Any]], generation: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loss and perplexity of the expected completions, and what the model generates for
    each test prompt (greedy, at most ``max_new_tokens``) scored by each scorer."""
    import torch

    generation = {**DEFAULT_GENERATION, **(generation or {})}
    names = list(generation["scorers"])
    try:  # a scorer's option (a JSON schema, a regex) the job cannot use: say so before generating
        scorers = {name: scoring.scorer(name, generation) for name in names}
    except (ValueError, re.error) as exc:
        raise EvaluationError(f"generation: {exc}") from exc
    model, tokenizer = loaded["model"], loaded["tokenizer"]
    losses, counts = [], []
    pairs = []
    for row in rows:
        if "messages" in row:
            prompt, completion = inference.render_chat(tokenizer, row["messages"])
            expected = row["messages"][-1]["content"]
        else:
            prompt, completion = row["prompt"], row["completion"]
            expected = completion
        # Scored as the tokenizer can write it (an uncased tokenizer cannot say "Hello").
        spoken = tokenizer(expected, add_special_tokens=False)["input_ids"]
        expected = tokenizer.decode(spoken, skip_special_tokens=True)
        pairs.append((prompt, expected))
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p_ids + c_ids], device=loaded["device"])
        labels = torch.tensor([[-100] * len(p_ids) + c_ids], device=loaded["device"])
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=labels).loss)
        losses.append(loss * len(c_ids))
        counts.append(len(c_ids))
    mean = sum(losses) / max(1, sum(counts))
    batch = int(generation.get("batch_size") or GENERATION_BATCH)
    generated = inference.generate_batch(loaded, [p for p, _ in pairs], int(generation["max_new_tokens"]), batch)
    answered = [(g, e) for g, (_, e) in zip(generated, pairs, strict=True)]
    scores = {name: [score(g, e) for g, e in answered] for name, score in scorers.items()}
    metrics: dict[str, Any] = {"loss": mean, "perplexity": math.exp(min(mean, 50)), "examples": len(rows)}
    for name in names:
        metrics[name] = sum(scores[name]) / max(1, len(rows))
    metrics["generations"] = [
        {"prompt": p, "expected": e, "generated": g, "scores": {n: scores[n][i] for n in names}}
        for i, ((p, e), g) in enumerate(zip(pairs, generated, strict=True))
    ]
    per_row: dict[str, Any] = {"loss_sum": losses, "tokens": counts, "generated": generated}
    per_row.update({f"score:{name}": scores[name] for name in names})
    return metrics, per_row


def worst_first(generations: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The generations in the order a reader wants them: lowest ``metric`` score first."""
    return sorted(generations, key=lambda g: g["scores"].get(metric, 0.0))[:MAX_SHOWN]


def differences(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The test prompts where challenger and champion generate differently, side by side,
    those the challenger does worst on (against the champion) first."""
    out = [
        {
            "prompt": a["prompt"],
            "expected": a["expected"],
            "challenger": a["generated"],
            "champion": b["generated"],
            "challenger_scores": a["scores"],
            "champion_scores": b["scores"],
        }
        for a, b in zip(ours, theirs, strict=True)
        if a["generated"] != b["generated"]
    ]
    out.sort(key=lambda d: d["challenger_scores"].get(metric, 0.0) - d["champion_scores"].get(metric, 0.0))
    return out[:MAX_SHOWN]


def trained_on(model_dir: Path) -> set[str] | None:
    """The holdout keys of the rows a model trained and validated on (None: not recorded)."""
    path = model_dir / "data.json"
    if not path.is_file():
        return None
    keys = json.loads(path.read_text()).get("row_keys", {})
    return set(keys.get("train", [])) | set(keys.get("validation", []))


def _arrays(per_row: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    import numpy as np

    return {k: (np.asarray(v)[keep] if isinstance(v, list) else v) for k, v in per_row.items()}


def _value(metric: str, rows: dict[str, Any]) -> float:
    import numpy as np

    n = len(rows["truth"] if "truth" in rows else rows["tokens"])
    return float(_resampled(metric, rows, np.arange(n)[None, :])[0])


def metric_intervals(
    task: str, per_row: dict[str, Any], confidence: float, resamples: int, seed: int
) -> dict[str, list[float]]:
    """The bootstrap interval of each of the task's metrics that one model's answers have."""
    mine = _arrays(per_row, list(range(len(per_row["truth"] if "truth" in per_row else per_row["tokens"]))))
    measured = [m for m in PRIMARY[task] if m not in spec.SCORERS or f"score:{m}" in mine]
    return {m: bootstrap(m, mine, resamples=resamples, confidence=confidence, seed=seed)["interval"] for m in measured}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def side_by_side(
    base: dict[str, Any] | None,
    base_intervals: dict[str, list[float]],
    challenger: dict[str, Any],
    intervals: dict[str, list[float]],
    champion: dict[str, Any] | None,
    champion_intervals: dict[str, list[float]],
) -> dict[str, Any]:
    """Each model measured on the test prompts (those there are: no base when it could not
    be measured, no champion before the first deployment), its metrics and intervals."""
    out: dict[str, Any] = {}
    for name, values, bounds in (
        ("base", base, base_intervals),
        ("challenger", challenger, intervals),
        ("champion", champion, champion_intervals),
    ):
        if values:
            out[name] = {"metrics": _numbers(values), "intervals": bounds}
    return out


def compare(
    task: str,
    metric: str,
    keys: list[str],
    ours: tuple[dict[str, Any], set[str] | None],
    theirs: tuple[dict[str, Any], set[str] | None] | None,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """(intervals of our metrics, the data section and the paired champion comparison).

    The comparison leaves out any test row the champion trained or validated on, so a
    leaked row can never make the champion look better (the frozen holdout keeps that 0)."""
    per_row, our_training = ours
    intervals = metric_intervals(task, per_row, confidence, resamples, seed)
    overlap = {
        "test_rows": len(keys),
        "challenger_trained_on_test": None if our_training is None else sum(k in our_training for k in keys),
    }
    comparison: dict[str, Any] = {"overlap": overlap}
    if theirs is None:
        return intervals, comparison
    champion_rows, champion_training = theirs
    leaked = set() if champion_training is None else {k for k in keys if k in champion_training}
    overlap["champion_trained_on_test"] = None if champion_training is None else len(leaked)
    keep = [i for i, k in enumerate(keys) if k not in leaked]
    if not keep:
        comparison["error"] = "the champion trained on every test row; nothing left to compare on"
        return intervals, comparison
    comparison.update(paired(metric, per_row, champion_rows, keep, confidence, resamples, seed))
    return intervals, comparison


def answers(per_row: dict[str, Any]) -> list[Any]:
    """What a model answered on each test row: its predicted class, or the text it generated."""
    return list(per_row["pred"] if "pred" in per_row else per_row["generated"])


def paired(
    metric: str,
    ours: dict[str, Any],
    theirs: dict[str, Any],
    keep: list[int],
    confidence: float,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The paired comparison of two models' answers on the rows ``keep``: both values, the
    interval of each and of their difference (each resample draws the same rows for both),
    and on how many of those rows the two answer differently."""
    a, b = _arrays(ours, keep), _arrays(theirs, keep)
    boot = bootstrap(metric, a, b, resamples=resamples, confidence=confidence, seed=seed)
    challenger, champion = _value(metric, a), _value(metric, b)
    mine, other = answers(ours), answers(theirs)
    return {
        "metric": metric,
        "better": spec.METRICS[metric].better,
        "challenger": challenger,
        "champion": champion,
        "difference": challenger - champion,
        "interval": boot["interval"],
        "champion_interval": boot["champion_interval"],
        "difference_interval": boot["difference_interval"],
        "confidence": confidence,
        "resamples": resamples,
        "rows": len(keep),
        "differing_rows": sum(mine[i] != other[i] for i in keep),
    }


def majority_baseline(profile_file: Path, per_row: dict[str, Any], labels: list[str]) -> tuple[dict[str, Any], str]:
    """(per-row answers, what it is) of the predictor that always says the training split's
    most common class (ties: the first by name): what a model must beat to be worth serving."""
    if not profile_file.is_file():
        raise EvaluationError(f"no profile at {profile_file}: the training split's label counts are unknown")
    profile = json.loads(profile_file.read_text())
    splits = profile.get("labels") if isinstance(profile, dict) else None
    counts = splits.get("train") if isinstance(splits, dict) else None
    counts = {
        str(k): int(v)
        for k, v in (counts.items() if isinstance(counts, dict) else ())
        if str(k) in labels and isinstance(v, int) and not isinstance(v, bool) and v > 0
    }
    if not counts:
        raise EvaluationError("the profile counts no training label this model knows")
    majority = min(counts, key=lambda k: (-counts[k], k))
    share = counts[majority] / sum(counts.values())
    predicted = [labels.index(majority)] * len(per_row["truth"])
    what = f"the majority-class predictor ({majority!r}, {share:.0%} of the training split)"
    return {"truth": list(per_row["truth"]), "pred": predicted, "classes": per_row["classes"]}, what


def trivial_baseline(
    model_dir: Path,
    meta: dict[str, Any],
    input_dir: Path,
    per_row: dict[str, Any],
    metrics: dict[str, Any],
    rows: list[dict[str, Any]],
    generation: dict[str, Any] | None,
    scratch: Path,
) -> tuple[dict[str, Any], str, dict[str, Any] | None] | str:
    """(per-row answers, what it is, its metrics) of the baseline a model must beat, or why
    there is none: the majority class (classification: a first model) or the untuned base
    model (causal LMs, every evaluation: fine-tuning must make the base better)."""
    try:
        if meta["task"] == "text-classification":
            answers, what = majority_baseline(input_dir / "profile" / "profile.json", per_row, list(metrics["labels"]))
            return answers, what, None
        import torch
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # nosec B615  # the model's own folder, no download
        model, what = untuned_model(model_dir, meta, input_dir, scratch / "untuned")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = {"model": model.to(device), "tokenizer": tokenizer, "meta": meta, "device": device,
                  "context": inference.context_length(model, tokenizer)}  # fmt: skip
        measured, answered = causal_metrics(loaded, rows, generation)
        return answered, what, measured
    except Exception as exc:  # any failure is the gate's to weigh ("no baseline"), not a crash
        return f"no trivial baseline could be measured: {type(exc).__name__}: {exc}"[:500]


def untuned_model(model_dir: Path, meta: dict[str, Any], input_dir: Path, scratch: Path) -> tuple[Any, str]:
    """(model, what it is): a causal LM's base before fine-tuning, with the tuned model's
    tokenizer (the same prompts): an adapter's base, the s3:// base a merged model was
    trained from (``input/untuned``), a packaged or Hub base, or a random decoder's
    initialisation."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    def shallowest(folder: Path) -> Path:
        found = sorted(folder.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
        if not found:
            raise EvaluationError(f"no config.json under {folder}")
        return found[0].parent

    base = str(meta.get("base_model", ""))
    if meta.get("artifact") == "adapter":
        folder = inference.base_folder(model_dir, meta)
        model = AutoModelForCausalLM.from_pretrained(folder)  # nosec B615  # a local folder, no download
    elif base.startswith(spec.RANDOM_PREFIX):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))  # nosec B615  # its own folder
    else:
        untuned = input_dir / "untuned"
        archives = sorted(untuned.glob("*.tar.gz")) if untuned.is_dir() else []
        if archives:
            folder = shallowest(inference.unpack_model(archives[0], scratch))
            model = AutoModelForCausalLM.from_pretrained(folder)  # nosec B615  # a local folder, no download
        elif untuned.is_dir() and any(untuned.rglob("config.json")):
            model = AutoModelForCausalLM.from_pretrained(shallowest(untuned))  # nosec B615  # a local folder
        elif base.startswith("s3://"):
            raise EvaluationError(f"the untuned base {base} was not given to the job (input/untuned)")
        else:
            pins = spec.packaged(base)
            source = inference.packaged_source(base, **pins) if pins else base
            name, _, revision = ("", "", "") if Path(source).is_dir() else source.partition("@")
            name = name or source
            model = AutoModelForCausalLM.from_pretrained(name, revision=revision or None)  # nosec B615  # pinned by commit
    model.config.use_cache = True
    model.eval()
    return model, f"the untuned base model {base}"


def evaluate(
    input_dir: Path,
    output_dir: Path,
    champion_run_id: str = "",
    primary_metric: str = "",
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    context: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    measure_baseline: bool = False,
) -> dict[str, Any]:
    """``context``: the run id and dataset, for the report (its data section comes from
    the prepare job's report, ``input/report/report.json``, when given). ``generation``
    (causal LMs): ``max_new_tokens``, ``scorers`` and their options."""
    context = dict(context or {})
    archive = input_dir / "model" / "model.tar.gz"
    if not archive.is_file():
        raise EvaluationError(f"no model.tar.gz in {archive.parent}")
    rows = read_rows(input_dir / "test")
    if not rows:
        raise EvaluationError("the test split is empty")
    with tempfile.TemporaryDirectory() as tmp:
        # An adapter's base model comes as input/base (the champion's as input/champion-base).
        model_dir = inference.unpack_model(archive, Path(tmp) / "challenger", input_dir / "base")
        meta = json.loads((model_dir / "tuneloop.json").read_text())
        history_file = model_dir / "training_history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
        metrics, per_row = measure(model_dir, rows, generation=generation)
        ours = (per_row, trained_on(model_dir))
        if (model_dir / "data.json").is_file():
            context["hyperparameters"] = json.loads((model_dir / "data.json").read_text()).get("hyperparameters")
        champion = theirs = None
        baseline: tuple[dict[str, Any], str, dict[str, Any] | None] | str | None = None
        champion_archive = input_dir / "champion" / "model.tar.gz"
        if champion_archive.is_file():
            champion_dir = inference.unpack_model(champion_archive, Path(tmp) / "champion", input_dir / "champion-base")
            champion, champion_rows = measure(champion_dir, rows, metrics.get("labels"), generation=generation)
            theirs = (champion_rows, trained_on(champion_dir))
        if measure_baseline and (champion is None or meta["task"] == "causal-lm"):
            # A first model: what would a trivial model score on these rows? A causal LM's
            # untuned base, on every evaluation: a tuned model must beat it, champion or not.
            baseline = trivial_baseline(model_dir, meta, input_dir, per_row, metrics, rows, generation, Path(tmp))
    task = meta["task"]
    production = production_subset(rows, ours[0], theirs[0] if theirs else None, metrics.get("labels"))
    metric = primary_metric or PRIMARY[task][0]
    if metric not in PRIMARY[task]:
        raise EvaluationError(f"primary metric {metric!r} is not one of {', '.join(PRIMARY[task])} for {task}")
    if metric in spec.SCORERS and f"score:{metric}" not in per_row:
        scorers = {**DEFAULT_GENERATION, **(generation or {})}["scorers"]
        raise EvaluationError(f"primary metric {metric!r} is not among the scorers: {', '.join(scorers)}")
    ours_generated = metrics.pop("generations", [])
    theirs_generated = champion.pop("generations", []) if champion else []
    keys = [spec.row_key(r, task) for r in rows]
    intervals, comparison = compare(task, metric, keys, ours, theirs, confidence, resamples, seed)
    against: dict[str, Any] | None = None
    base: dict[str, Any] | None = None
    base_intervals: dict[str, list[float]] = {}
    if baseline is not None:
        if isinstance(baseline, str):
            against = {"error": baseline}
        else:
            everything = list(range(len(rows)))
            against = {"against": baseline[1], **paired(metric, per_row, baseline[0], everything, confidence,
                                                        resamples, seed)}  # fmt: skip
            if baseline[2] is not None:
                base = _numbers(baseline[2])
                base_intervals = metric_intervals(task, baseline[0], confidence, resamples, seed)
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    evaluation = {
        "task": task,
        "model": meta.get("base_model", ""),
        "metrics": metrics,
        "summary": summary,
        "intervals": intervals,
        "confidence": confidence,
        "champion": {k: v for k, v in champion.items() if isinstance(v, (int, float))} if champion else None,
        "champion_run_id": champion_run_id if champion else None,
        "comparison": comparison if champion else None,
        # The same paired comparison with a trivial baseline (or why none): with no champion,
        # and for a causal LM always (its untuned base).
        "baseline": against,
        "overlap": comparison["overlap"],
        # The test rows that came from labelled production traffic, measured on their own.
        "production": production,
        # Per epoch (and per logging step): what train.py recorded, for the training curves.
        "training_history": history,
    }
    if task == "causal-lm":
        # Base → this model → champion on the same prompts, each metric with its interval.
        evaluation["models"] = side_by_side(
            base, base_intervals, summary, intervals,
            evaluation["champion"], metric_intervals(task, theirs[0], confidence, resamples, seed) if theirs else {},
        )  # fmt: skip
        # Each test prompt's generation and scores, worst first; where champion and
        # challenger differ, both side by side (the challenger's worst first).
        ranked = (
            metric if metric in spec.SCORERS else next(iter(ours_generated[0]["scores"]), "") if ours_generated else ""
        )
        evaluation["generations"] = worst_first(ours_generated, ranked)
        if theirs_generated:
            evaluation["differences"] = differences(ours_generated, theirs_generated, ranked)
        # A pattern that ran out of time scored those generations as no match: said, with how often.
        evaluation["patterns_out_of_time"] = dict(scoring.RUNAWAY)
    images = plots(metrics, history, evaluation["champion"], comparison if champion else None)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (output_dir / name).write_bytes(data)
    evaluation["plots"] = sorted(images)
    prepared = input_dir / "report" / "report.json"
    if prepared.is_file():
        context["data"] = json.loads(prepared.read_text())
    evaluation["run_id"] = context.get("run_id")
    (output_dir / "report.html").write_text(report_html(evaluation, images, context), encoding="utf-8")
    (output_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
    return evaluation


def main(argv: list[str] | None = None) -> int:
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", default=os.path.join(base, "processing/input"))
    parser.add_argument("--output-dir", default=os.path.join(base, "processing/output/evaluation"))
    parser.add_argument("--failure-dir", default=os.path.join(base, "output"))
    parser.add_argument("--champion-run-id", default="", help="the deployed run whose model is input/champion")
    parser.add_argument("--primary-metric", default="", help="what the champion comparison is on")
    parser.add_argument("--confidence", type=float, default=0.95, help="of every bootstrap interval")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--generation", action="append", default=[],
        help='causal LMs, JSON: {"max_new_tokens", "scorers", ...}; given again, its next piece',
    )  # fmt: skip
    parser.add_argument("--baseline", action="store_true", help="no champion: measure a trivial baseline too")
    parser.add_argument("--run-id", default="", help="for the report")
    parser.add_argument("--dataset", default="", help="for the report")
    args, _unknown = parser.parse_known_args(argv)
    try:
        generation = json.loads("".join(args.generation)) if args.generation else None
        if generation is not None and not isinstance(generation, dict):
            raise EvaluationError("--generation must be a JSON object")
        evaluation = evaluate(
            Path(args.input_dir),
            Path(args.output_dir),
            args.champion_run_id,
            args.primary_metric,
            args.confidence,
            args.resamples,
            context={"run_id": args.run_id, "dataset": args.dataset},
            generation=generation,
            measure_baseline=args.baseline,
        )
    except (EvaluationError, OSError, KeyError, ValueError) as exc:
        message = f"{type(exc).__name__}: {exc}"[:1024]
        spec.write_failure(args.failure_dir, message)
        print(message, file=sys.stderr)
        return 1
    print("evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in evaluation["summary"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
