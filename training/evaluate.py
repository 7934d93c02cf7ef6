"""Evaluate a trained model on the held-out test split (SageMaker processing job).

Inputs (under ``SAGEMAKER_BASE_DIR``, /opt/ml in SageMaker's containers):

    processing/input/model/model.tar.gz     what train.py wrote (training_history.json inside)
    processing/input/test/test.jsonl         prepare.py's test split
    processing/input/champion/model.tar.gz   optional: the deployed model, measured on the same split

Output, ``processing/output/evaluation/``: ``evaluation.json`` (the metrics, machine-
readable, the champion's beside them), PNG plots (confusion matrix, training and
validation curves, comparison with the champion) and a self-contained ``report.html``
that embeds them.

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
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inference


class EvaluationError(Exception):
    pass


# --- metrics (plain Python: they must equal scikit-learn's, and are tested against it) ----


def classification_metrics(
    y_true: list[int], y_pred: list[int], probabilities: list[list[float]], labels: list[str], bins: int = 10
) -> dict[str, Any]:
    n = len(labels)
    matrix = [[0] * n for _ in range(n)]
    for truth, pred in zip(y_true, y_pred, strict=True):
        matrix[truth][pred] += 1
    per_class = {}
    f1s = []
    for c, label in enumerate(labels):
        tp = matrix[c][c]
        fp = sum(matrix[r][c] for r in range(n)) - tp
        fn = sum(matrix[c]) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": sum(matrix[c])}
        f1s.append(f1)
    correct = sum(matrix[c][c] for c in range(n))
    return {
        "accuracy": correct / len(y_true),
        "macro_f1": sum(f1s) / n,
        "per_class": per_class,
        "confusion_matrix": matrix,
        "labels": labels,
        "ece": expected_calibration_error(y_true, probabilities, bins),
        "examples": len(y_true),
    }


def expected_calibration_error(y_true: list[int], probabilities: list[list[float]], bins: int = 10) -> float:
    """Sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, correct, confidence
    for truth, probs in zip(y_true, probabilities, strict=True):
        confidence = max(probs)
        predicted = probs.index(confidence)
        b = min(bins - 1, int(confidence * bins))
        totals[b][0] += 1
        totals[b][1] += float(predicted == truth)
        totals[b][2] += confidence
    count = len(y_true)
    return sum(abs(c / k - conf / k) * k / count for k, c, conf in totals if k)


# --- plots and report -------------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plots(metrics: dict[str, Any], history: list[dict[str, Any]], champion: dict[str, Any] | None) -> dict[str, bytes]:
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
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.set_title("Training and validation curves")
        out["training_curves.png"] = _png(fig)
        plt.close(fig)
    if champion:
        names = [k for k in ("accuracy", "macro_f1", "perplexity") if k in metrics and k in champion]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [champion[k] for k in names], width=0.4, label="champion")
        ax.bar([x + 0.2 for x in xs], [metrics[k] for k in names], width=0.4, label="this model")
        ax.set_xticks(list(xs), names)
        ax.legend()
        ax.set_title("This model vs the deployed champion (same test split)")
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


def report_html(evaluation: dict[str, Any], images: dict[str, bytes]) -> str:
    metrics = evaluation["metrics"]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>" for k, v in metrics.items() if isinstance(v, (int, float))
    )
    per_class = ""
    if "per_class" in metrics:
        header = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "support"))
        per_class = f"<h2>Per class</h2><table><tr>{header}</tr>"
        per_class += "".join(
            f"<tr><td>{html.escape(str(label))}</td><td>{m['precision']:.4f}</td><td>{m['recall']:.4f}</td>"
            f"<td>{m['f1']:.4f}</td><td>{m['support']}</td></tr>"
            for label, m in metrics["per_class"].items()
        )
        per_class += "</table>"
    champion = ""
    if evaluation.get("champion"):
        champion = "<h2>Champion on the same split</h2><table>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>"
            for k, v in evaluation["champion"].items()
            if isinstance(v, (int, float))
        )
        champion += "</table>"
    samples = ""
    if metrics.get("samples"):
        samples = "<h2>Sampled generations</h2>" + "".join(
            f"<p><b>{html.escape(s['prompt'])}</b><br>{html.escape(s['generated'])}</p>" for s in metrics["samples"]
        )
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in images.items()
    )
    title = html.escape(evaluation.get("model", ""))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuneloop evaluation: {title}</title>
<style>{STYLE}</style>
</head><body><h1>Evaluation on the test split</h1>
<p>task: {html.escape(evaluation["task"])} · examples: {evaluation["metrics"].get("examples", 0)}</p>
<h2>Metrics</h2><table id="metrics">{rows}</table>{per_class}{champion}{samples}{figures}</body></html>
"""


# --- the job ----------------------------------------------------------------------------------


def unpack(archive: Path, target: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def read_rows(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else [folder]
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def measure(model_dir: Path, rows: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    loaded = inference.model_fn(str(model_dir))
    meta = loaded["meta"]
    if meta["task"] == "text-classification":
        labels = [loaded["model"].config.id2label[i] for i in range(len(loaded["model"].config.id2label))]
        index = {label: i for i, label in enumerate(labels)}
        y_true, y_pred, probabilities = [], [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            results = inference.predict_fn(
                {"texts": [r["text"] for r in chunk], "single": False, "parameters": {}}, loaded
            )
            for row, result in zip(chunk, results, strict=True):
                truth = str(row["label"])
                if truth not in index:
                    raise EvaluationError(f"test label {truth!r} was never seen in training")
                y_true.append(index[truth])
                y_pred.append(index[result["label"]])
                probabilities.append([result["scores"][label] for label in labels])
        return classification_metrics(y_true, y_pred, probabilities, labels)
    return causal_metrics(loaded, rows)


def causal_metrics(loaded: dict[str, Any], rows: list[dict[str, Any]], samples: int = 3) -> dict[str, Any]:
    import torch

    model, tokenizer = loaded["model"], loaded["tokenizer"]
    total_loss, total_tokens = 0.0, 0
    pairs = []
    for row in rows:
        if "messages" in row:
            prompt = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in row["messages"][:-1]) + "<|assistant|>\n"
            completion = row["messages"][-1]["content"]
        else:
            prompt, completion = row["prompt"], row["completion"]
        pairs.append((prompt, completion))
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p_ids + c_ids], device=loaded["device"])
        labels = torch.tensor([[-100] * len(p_ids) + c_ids], device=loaded["device"])
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=labels).loss)
        total_loss += loss * len(c_ids)
        total_tokens += len(c_ids)
    mean = total_loss / max(1, total_tokens)
    generated = [
        {
            "prompt": p,
            "expected": c,
            "generated": inference.predict_fn(
                {"texts": [p], "single": True, "parameters": {"max_new_tokens": 24}}, loaded
            )["generated_text"],
        }
        for p, c in pairs[:samples]
    ]
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "samples": generated, "examples": len(rows)}


def evaluate(input_dir: Path, output_dir: Path, champion_run_id: str = "") -> dict[str, Any]:
    archive = input_dir / "model" / "model.tar.gz"
    if not archive.is_file():
        raise EvaluationError(f"no model.tar.gz in {archive.parent}")
    rows = read_rows(input_dir / "test")
    if not rows:
        raise EvaluationError("the test split is empty")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = unpack(archive, Path(tmp) / "model")
        meta = json.loads((model_dir / "tuneloop.json").read_text())
        history_file = model_dir / "training_history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
        metrics = measure(model_dir, rows)
        champion = None
        champion_archive = input_dir / "champion" / "model.tar.gz"
        if champion_archive.is_file():
            champion = measure(unpack(champion_archive, Path(tmp) / "champion"), rows)
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    evaluation = {
        "task": meta["task"],
        "model": meta.get("base_model", ""),
        "metrics": metrics,
        "summary": summary,
        "champion": {k: v for k, v in champion.items() if isinstance(v, (int, float))} if champion else None,
        "champion_run_id": champion_run_id if champion else None,
    }
    images = plots(metrics, history, evaluation["champion"])
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (output_dir / name).write_bytes(data)
    evaluation["plots"] = sorted(images)
    (output_dir / "report.html").write_text(report_html(evaluation, images), encoding="utf-8")
    (output_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
    return evaluation


def main(argv: list[str] | None = None) -> int:
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", default=os.path.join(base, "processing/input"))
    parser.add_argument("--output-dir", default=os.path.join(base, "processing/output/evaluation"))
    parser.add_argument("--failure-dir", default=os.path.join(base, "output"))
    parser.add_argument("--champion-run-id", default="", help="the deployed run whose model is input/champion")
    args, _unknown = parser.parse_known_args(argv)
    try:
        evaluation = evaluate(Path(args.input_dir), Path(args.output_dir), args.champion_run_id)
    except (EvaluationError, OSError, KeyError, ValueError) as exc:
        message = f"{type(exc).__name__}: {exc}"[:1024]
        Path(args.failure_dir).mkdir(parents=True, exist_ok=True)
        for name in ("failure", "message"):
            (Path(args.failure_dir) / name).write_text(message)
        print(message, file=sys.stderr)
        return 1
    print("evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in evaluation["summary"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
