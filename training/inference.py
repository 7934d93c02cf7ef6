"""Serving handlers for a tuneloop model (SageMaker inference toolkit convention).

``model_fn`` loads the model directory train.py wrote; ``input_fn`` takes JSON: a text,
a list of texts, or ``{"inputs": text | [texts], "parameters": {...}}``; ``predict_fn``
returns labels with calibrated scores (classification: softmax of the logits over the
temperature train.py fitted, in ``tuneloop.json``) or generated text (causal LMs); ``output_fn``
writes JSON. Bad payloads raise ``PayloadError`` (a ``ValueError``), which servers answer
with a 4xx and the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_INPUTS = 256
MAX_NEW_TOKENS = 256


class PayloadError(ValueError):
    status = 400


def model_fn(model_dir: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(model_dir)
    meta = json.loads((folder / "tuneloop.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)  # nosec B615 - the model's own folder, no download
    if meta["task"] == "text-classification":
        model = AutoModelForSequenceClassification.from_pretrained(folder)  # nosec B615 - the model's own folder, no download
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)  # nosec B615 - the model's own folder, no download
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"model": model.to(device), "tokenizer": tokenizer, "meta": meta, "device": device}


def input_fn(body: bytes | str, content_type: str = "application/json") -> dict[str, Any]:
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise PayloadError(f"content type {content_type!r} is not supported; send application/json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not valid JSON: {str(exc)[:200]}") from exc
    except RecursionError as exc:  # JSON nested thousands deep: the caller's error, not a 500
        raise PayloadError("body is JSON nested too deeply") from exc
    parameters: dict[str, Any] = {}
    if isinstance(data, dict):
        if "inputs" not in data:
            raise PayloadError('JSON object bodies need an "inputs" field (a text or a list of texts)')
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise PayloadError('"parameters" must be an object')
        data = data["inputs"]
    single = isinstance(data, str)
    texts = [data] if single else data
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise PayloadError("inputs must be a non-empty text or a non-empty list of non-empty texts")
    if len(texts) > MAX_INPUTS:
        raise PayloadError(f"at most {MAX_INPUTS} inputs per request, got {len(texts)}")
    return {"texts": texts, "single": single, "parameters": parameters}


def predict_fn(data: dict[str, Any], loaded: dict[str, Any]) -> Any:
    import torch

    model, tokenizer, meta = loaded["model"], loaded["tokenizer"], loaded["meta"]
    texts = data["texts"]
    with torch.no_grad():
        if meta["task"] == "text-classification":
            batch = tokenizer(
                texts, truncation=True, max_length=meta.get("max_length", 256), padding=True, return_tensors="pt"
            )
            logits = model(**{k: v.to(loaded["device"]) for k, v in batch.items()}).logits
            # The temperature train.py fitted on the validation split: calibrated scores.
            probabilities = (logits.float() / float(meta.get("temperature") or 1.0)).softmax(-1).cpu()
            labels = model.config.id2label
            results = [
                {
                    "label": labels[int(row.argmax())],
                    "scores": {labels[i]: round(float(p), 6) for i, p in enumerate(row)},
                }
                for row in probabilities
            ]
        else:
            new_tokens = int(data["parameters"].get("max_new_tokens", 32))
            if not 1 <= new_tokens <= MAX_NEW_TOKENS:
                raise PayloadError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}")
            results = []
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded["device"])
                out = model.generate(
                    ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
                results.append({"generated_text": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)})
    return results[0] if data["single"] else results


def output_fn(prediction: Any, accept: str = "application/json") -> tuple[str, str]:
    if accept not in ("application/json", "*/*", ""):
        raise PayloadError(f"accept type {accept!r} is not supported; ask for application/json")
    return json.dumps(prediction), "application/json"
