"""Serving handlers for a tuneloop model (SageMaker inference toolkit convention).

``model_fn`` loads the model directory train.py wrote; ``input_fn`` takes JSON: a text,
a list of texts, ``{"inputs": text | [texts], "parameters": {...}}``, or (causal LMs)
``{"messages": [{"role", "content"}, ...], "parameters": {...}}``, a conversation rendered
with the model's chat template for its next assistant turn; ``predict_fn``
returns labels with calibrated scores (classification: softmax of the logits over the
temperature train.py fitted, in ``tuneloop.json``) or generated text (causal LMs); ``output_fn``
writes JSON. Bad payloads raise ``PayloadError`` (a ``ValueError``), which servers answer
with a 4xx and the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_INPUTS = 256
MAX_NEW_TOKENS = 256
MAX_MESSAGES = 64
ROLES = ("system", "user", "assistant")
# What a decoder is given when its tokenizer brings no chat template of its own: each turn
# as "<|role|>\n<content>\n", and the reply asked for after "<|assistant|>\n". Saved with
# the tokenizer, so training, evaluation and serving render conversations the same way.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class PayloadError(ValueError):
    status = 400


def ensure_chat_template(tokenizer: Any) -> str:
    """Which chat template the model uses: the base model's own, or tuneloop's default
    (set on the tokenizer here, and saved with it)."""
    if getattr(tokenizer, "chat_template", None):
        return "base model"
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return "default"


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation so far, rendered to ask for the assistant's next turn."""
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    """(prompt, completion) of a conversation whose last turn is the assistant's: the turns
    before it with the generation prompt, and what the template writes for that turn (its
    content and any end-of-turn markup)."""
    prompt = chat_prompt(tokenizer, messages[:-1])
    full = str(tokenizer.apply_chat_template(messages, tokenize=False))
    if full.startswith(prompt):
        return prompt, full[len(prompt) :].rstrip()
    return prompt, messages[-1]["content"]


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """A conversation as a request sends it, or a PayloadError naming the turn at fault."""
    if not isinstance(messages, list) or not messages:
        raise PayloadError(f"{where} must be a non-empty list of {{role, content}} objects")
    if len(messages) > MAX_MESSAGES:
        raise PayloadError(f"{where}: at most {MAX_MESSAGES} turns, got {len(messages)}")
    out = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise PayloadError(f"{where}[{n}].role must be one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise PayloadError(f"{where}[{n}].content must be a non-empty text")
        if message["role"] == "system" and n:
            raise PayloadError(f"{where}[{n}]: a system turn may only come first")
        out.append({"role": message["role"], "content": content})
    return out


def generation_options(parameters: dict[str, Any]) -> dict[str, Any]:
    """generate()'s options from a request's parameters, each bounded; greedy unless a
    temperature above 0 is given."""
    known = {"max_new_tokens", "temperature", "top_p"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise PayloadError(f"parameters.{unknown[0]} is not a generation parameter; use {', '.join(sorted(known))}")

    def number(name: str, default: float, low: float, high: float, integer: bool = False) -> float:
        value = parameters.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
            raise PayloadError(f"parameters.{name} must be {'an integer' if integer else 'a number'}")
        if not low <= value <= high:
            raise PayloadError(f"parameters.{name} must be between {low:g} and {high:g}, got {value}")
        return value

    options: dict[str, Any] = {"max_new_tokens": int(number("max_new_tokens", 32, 1, MAX_NEW_TOKENS, True))}
    temperature = number("temperature", 0.0, 0.0, 2.0)
    if temperature > 0:
        options.update(do_sample=True, temperature=float(temperature), top_p=float(number("top_p", 1.0, 0.01, 1.0)))
    else:
        number("top_p", 1.0, 0.01, 1.0)  # checked, though greedy decoding ignores it
        options["do_sample"] = False
    return options


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
        parameters = data.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise PayloadError('"parameters" must be an object')
        if "messages" in data and "inputs" not in data:
            return {"texts": None, "messages": check_messages(data["messages"]), "single": True,
                    "parameters": parameters}  # fmt: skip
        if "inputs" not in data:
            raise PayloadError(
                'JSON object bodies need "inputs" (a text or a list of texts) or "messages" (a conversation)'
            )
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
    if data.get("messages") is not None:
        if meta["task"] != "causal-lm":
            raise PayloadError('this model classifies texts: send "inputs", not "messages"')
        texts = [chat_prompt(tokenizer, data["messages"])]
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
            options = generation_options(data["parameters"])
            results = []
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded["device"])
                out = model.generate(ids, pad_token_id=tokenizer.pad_token_id, **options)
                results.append({"generated_text": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)})
    return results[0] if data["single"] else results


def stream_fn(data: dict[str, Any], loaded: dict[str, Any]) -> Iterator[str]:
    """A causal LM's answer to one input or conversation, as it is generated: text pieces
    (whole words, as the tokenizer can tell them apart) while generation goes on."""
    import threading

    from transformers import TextIteratorStreamer

    model, tokenizer, meta = loaded["model"], loaded["tokenizer"], loaded["meta"]
    if meta["task"] != "causal-lm":
        raise PayloadError("only a causal LM streams its answer; this model classifies texts")
    if data.get("messages") is not None:
        text = chat_prompt(tokenizer, data["messages"])
    elif data["single"]:
        text = data["texts"][0]
    else:
        raise PayloadError("a streamed request generates for one input or one conversation, not a list")
    options = generation_options(data["parameters"])
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded["device"])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            model.generate(ids, pad_token_id=tokenizer.pad_token_id, streamer=streamer, **options)
        except BaseException as exc:  # reported to the reader below, after what was streamed
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    for piece in streamer:
        if piece:
            yield piece
    worker.join()
    if failure:
        raise RuntimeError(f"generation failed: {failure[0]}")


def output_fn(prediction: Any, accept: str = "application/json") -> tuple[str, str]:
    if accept not in ("application/json", "*/*", ""):
        raise PayloadError(f"accept type {accept!r} is not supported; ask for application/json")
    return json.dumps(prediction), "application/json"
