"""Project configuration: validated once, stored normalised, snapshotted into each run.

``normalise_config`` turns user JSON into a complete config with every default filled
in, or raises ``ConfigError`` naming the offending field by its dotted path
(``training.instance_count``), so the API can answer a 400 that says what to fix.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .. import spec
from .names import PROJECT_NAME_MAX, PROJECT_NAME_RE


class ConfigError(spec.TuneloopError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


Validator = Callable[[str, Any], Any]
# A complete config, as JSON: each run keeps a copy in its item (DynamoDB's limit is 400 KB).
MAX_CONFIG_BYTES = 32 * 1024
# The longest a processing job may run (CreateProcessingJob's MaxRuntimeInSeconds).
PROCESSING_JOB_MAX_RUNTIME_S = 9 * 86400
# A column or key name in data.*_field (each goes to the prepare job as one container argument).
DATA_FIELD_MAX = 200
_MISSING = object()
# org/name, optionally @<commit> (a full 40-hex commit hash) to pin what a job downloads:
# a branch or a tag (@main) moves, so it pins nothing.
_HF_MODEL_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[0-9a-f]{40})?$")
_INSTANCE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")

# The metrics train.py prints as ``[metric] name=value`` lines; the training job's
# MetricDefinitions scrape them, and a tuning objective must be one of them.
TRAINING_METRICS = spec.TRAINING_METRICS
OBJECTIVE_METRICS = tuple(m for m in TRAINING_METRICS if spec.METRICS[m].better)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


class _V:
    """A validator and the JSON Schema of what it accepts (project_schema() is made of these):
    ``check(path, value)`` returns the normalised value or raises ConfigError."""

    def __init__(self, check: Validator, schema: dict[str, Any]) -> None:
        self.check = check
        self.schema = schema

    def __call__(self, path: str, value: Any) -> Any:
        return self.check(path, value)


class _Field:
    def __init__(self, check: _V, default: Any = _MISSING, help: str = "") -> None:
        self.check = check
        self.default = default
        self.help = help


def _string(choices: tuple[str, ...] | None = None, pattern: re.Pattern[str] | None = None, hint: str = "") -> _V:
    def check(path: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(path, f"must be a non-empty string, got {_type_name(value)}")
        if choices and value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(choices)}; got {value!r}")
        if pattern and not pattern.match(value):
            raise ConfigError(path, f"{value!r} is not valid{': ' + hint if hint else ''}")
        return value

    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if choices:
        schema = {"enum": list(choices)}
    elif pattern:
        schema["pattern"] = pattern.pattern
    return _V(check, schema)


def _number(lo: float | None = None, hi: float | None = None, integer: bool = False) -> _V:
    def check(path: str, value: Any) -> float | int:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ConfigError(path, f"must be {'an integer' if integer else 'a number'}, got {_type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(path, f"must be a finite number, got {value}")
        if lo is not None and value < lo:
            raise ConfigError(path, f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(path, f"must be at most {hi}, got {value}")
        return value

    schema: dict[str, Any] = {"type": "integer" if integer else "number"}
    schema.update({k: v for k, v in (("minimum", lo), ("maximum", hi)) if v is not None})
    return _V(check, schema)


def _check_boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {_type_name(value)}")
    return value


_boolean = _V(_check_boolean, {"type": "boolean"})


def _check_hyperparameters(path: str, value: Any) -> dict[str, Any]:
    """train.py's hyperparameters, typed and range-checked, every default filled in: the
    config says exactly what a run trains with. An unknown name is refused, with the
    nearest valid one (train.py would refuse it too)."""
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be an object, got {_type_name(value)}")
    out = spec.defaults()
    for key, raw in value.items():
        name = spec.canonical_name(key)
        declared = spec.HYPERPARAMETERS.get(name)
        if declared is None:
            raise ConfigError(f"{path}.{key}", spec.unknown_hyperparameter(key))
        try:
            out[name] = declared.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}.{key}", str(exc)) from None
    return out


# What Hyperparameter.parse takes as a string too (SageMaker passes hyperparameters as strings).
_NUMBER_STRING = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
_AUTO_STRING = r"^\s*[Aa][Uu][Tt][Oo]\s*$"
_BOOLEAN_STRING = r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)\s*$"


def _hyperparameter_schema(h: spec.Hyperparameter) -> dict[str, Any]:
    """A hyperparameter's value: its JSON type within its range, or that as a string."""
    value: dict[str, Any] = {"type": {"int": "integer", "float": "number", "bool": "boolean"}[h.type]}
    value.update({k: v for k, v in (("minimum", h.min), ("maximum", h.max)) if v is not None})
    text = {"type": "string", "pattern": _BOOLEAN_STRING if h.type == "bool" else _NUMBER_STRING}
    also = f" (also named {', '.join(h.aliases)})" if h.aliases else ""
    auto = [{"type": "string", "pattern": _AUTO_STRING}] if h.auto else []
    how = f"; {spec.AUTO}: {h.auto}" if h.auto else ""
    return {"anyOf": [value, text, *auto], "default": h.default, "description": h.help + also + how}


_hyperparameters = _V(
    _check_hyperparameters,
    {
        "type": "object",
        "properties": {h.name: _hyperparameter_schema(h) for h in spec.HYPERPARAMETERS.values()},
        "additionalProperties": False,
        "description": "also accepted, and stored under the names here: each one's other names, and dashes for "
        "underscores",
    },
)


def _mapping_of(
    check_value: _V, non_empty: bool = False, keys: Mapping[str, str] | None = None, kind: str = "name"
) -> _V:
    """An object of values ``check_value`` accepts; ``keys``: the names it may have (with
    what each means), any other refused as not a ``kind``."""

    def check(path: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be an object, got {_type_name(value)}")
        if non_empty and not value:
            raise ConfigError(path, "must not be empty")
        for key in value:
            if keys is not None and key not in keys:
                raise ConfigError(f"{path}.{key}", f"not a {kind}; one of {', '.join(keys)}")
        return {str(k): check_value(f"{path}.{k}", v) for k, v in value.items()}

    schema: dict[str, Any] = {"type": "object"}
    if keys is None:
        schema["additionalProperties"] = check_value.schema
    else:
        schema["properties"] = {k: {**check_value.schema, "description": text} for k, text in keys.items()}
        schema["additionalProperties"] = False
    if non_empty:
        schema["minProperties"] = 1
    return _V(check, schema)


_quality_thresholds = _mapping_of(
    _number(0, 1),
    keys={m: spec.METRICS[m].help for m in (*spec.QUALITY_METRICS, *spec.LLM_QUALITY_METRICS)},
    kind="production metric",
)


def _obj(fields: Mapping[str, _Field], after: Callable[[str, dict[str, Any]], None] | None = None) -> _V:
    def check(path: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ConfigError(path or "body", f"must be an object, got {_type_name(value)}")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(_join(path, unknown[0]), f"unknown field (expected one of {', '.join(fields)})")
        out: dict[str, Any] = {}
        for name, declared in fields.items():
            sub = _join(path, name)
            if name in value and value[name] is not None:
                out[name] = declared.check(sub, value[name])
            elif declared.default is _MISSING:
                raise ConfigError(sub, "is required")
            elif isinstance(declared.default, _Obj):
                out[name] = declared.check(sub, {})
            else:
                out[name] = copy.deepcopy(declared.default)
        if after:
            after(path, out)
        return out

    properties = {}
    for name, declared in fields.items():
        schema = dict(declared.check.schema)
        if declared.default is not _MISSING:
            # null (or leaving it out) means the default.
            schema = _nullable(schema)
            schema["default"] = declared.check("", {}) if isinstance(declared.default, _Obj) else declared.default
        if declared.help:
            schema["description"] = declared.help
        properties[name] = schema
    required = [name for name, declared in fields.items() if declared.default is _MISSING]
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return _V(check, {**schema, **({"required": required} if required else {})})


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return schema


class _Obj:
    """Default marker: an object field whose own defaults fill in when it is absent."""


_DEFAULTS = _Obj()


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_RANGE = _obj(
    {
        "type": _Field(_string(("continuous", "integer", "categorical")), help="how SageMaker searches it"),
        "min": _Field(_number(), None, "the lowest value (continuous and integer ranges)"),
        "max": _Field(_number(), None, "the highest value (continuous and integer ranges)"),
        "scaling": _Field(
            _string(("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")),
            "Auto",
            "how SageMaker spreads its trials over the range",
        ),
        "values": _Field(
            _V(
                lambda path, value: _list_of_strings(path, value),
                {"type": "array", "items": {"type": ["string", "number"]}, "minItems": 1},
            ),
            None,
            "the values a categorical range takes",
        ),
    }
)


def _check_parameter_range(path: str, value: Any) -> dict[str, Any]:
    bounds: dict[str, Any] = _RANGE(path, value)
    if bounds["type"] == "categorical":
        if not bounds["values"]:
            raise ConfigError(f"{path}.values", "is required for a categorical range")
    else:
        for bound in ("min", "max"):
            if bounds[bound] is None:
                raise ConfigError(f"{path}.{bound}", f"is required for a {bounds['type']} range")
        if bounds["min"] >= bounds["max"]:
            raise ConfigError(f"{path}.max", "must be greater than min")
        if bounds["scaling"] == "Logarithmic" and bounds["min"] <= 0:
            raise ConfigError(f"{path}.min", "must be positive for logarithmic scaling")
    return bounds


_parameter_range = _V(_check_parameter_range, _RANGE.schema)


def _list_of_strings(path: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(path, "must be an array of strings")
    return [str(v) for v in value]


def _check_training(path: str, training: dict[str, Any]) -> None:
    if training["artifact"] == "adapter" and training["method"] == "full":
        raise ConfigError(f"{path}.artifact", "only a LoRA run has an adapter: set method to lora, or this to merged")
    if training["method"] == "qlora":
        if not training["instance_type"].startswith(spec.GPU_INSTANCE_FAMILIES):
            raise ConfigError(
                f"{path}.method",
                f"QLoRA quantises the base to 4 bits with bitsandbytes, which needs a CUDA GPU, and "
                f"{training['instance_type']} has none: use a GPU instance type (ml.g5.xlarge, say), or method lora",
            )
        if training["artifact"] != "adapter":
            raise ConfigError(
                f"{path}.artifact",
                "a QLoRA run trains on a 4-bit base, which no endpoint serves: set this to adapter "
                "(served on the full-precision base)",
            )
    if training["spot"] and training["max_wait_s"] is not None and training["max_wait_s"] <= training["max_runtime_s"]:
        raise ConfigError(f"{path}.max_wait_s", "must be greater than max_runtime_s when spot is on")
    if training["spot"] and training["max_wait_s"] is None:
        training["max_wait_s"] = training["max_runtime_s"] * 2
    if training["spot"] and training["warm_pool_s"]:
        raise ConfigError(
            f"{path}.warm_pool_s",
            "SageMaker keeps no warm pool for managed spot training: set spot to false, or this to 0",
        )


def _check_tuning(path: str, tuning: dict[str, Any]) -> None:
    if tuning["max_parallel_jobs"] > tuning["max_jobs"]:
        raise ConfigError(f"{path}.max_parallel_jobs", "must not exceed max_jobs")
    objective = tuning["objective"]
    metric = objective["metric"]
    if metric not in OBJECTIVE_METRICS:
        raise ConfigError(f"{path}.objective.metric", f"{metric!r} is not one of {', '.join(OBJECTIVE_METRICS)}")
    direction = spec.METRICS[metric].objective_type
    if objective["type"] is None:
        objective["type"] = direction
    elif objective["type"] != direction:
        raise ConfigError(
            f"{path}.objective.type",
            f"{metric} is better {spec.METRICS[metric].better}, so its objective is {direction}, "
            f"not {objective['type']}",
        )
    if len(tuning["ranges"]) > 30:
        raise ConfigError(f"{path}.ranges", "SageMaker tunes at most 30 hyperparameters at once")
    ranges = {}
    for key, bounds in tuning["ranges"].items():
        name = spec.canonical_name(key)
        declared = spec.HYPERPARAMETERS.get(name)
        where = f"{path}.ranges.{key}"
        if declared is None:
            raise ConfigError(where, spec.unknown_hyperparameter(key))
        _check_range(where, declared, bounds)
        ranges[name] = bounds
    tuning["ranges"] = ranges


def _check_range(path: str, declared: spec.Hyperparameter, bounds: dict[str, Any]) -> None:
    """A range SageMaker can search and train.py accepts at both ends."""
    kind = {"int": "integer", "float": "continuous", "bool": "categorical"}[declared.type]
    if bounds["type"] != kind and not (bounds["type"] == "categorical" and declared.type != "bool"):
        raise ConfigError(f"{path}.type", f"{declared.name} is a {declared.type}: use a {kind} range")
    values = bounds["values"] if bounds["type"] == "categorical" else [bounds["min"], bounds["max"]]
    for value in values:
        try:
            declared.parse(value)
        except ValueError as exc:
            raise ConfigError(path, f"{value!r} {exc}") from None


def _check_deployment(path: str, deployment: dict[str, Any]) -> None:
    if deployment["min_instances"] > deployment["max_instances"]:
        raise ConfigError(f"{path}.max_instances", "must be at least min_instances")
    memory = deployment["serverless_memory_mb"]
    if memory is not None and memory % 1024:
        raise ConfigError(f"{path}.serverless_memory_mb", "must be a multiple of 1024 (1024 to 6144)")
    uri = deployment["batch_input_uri"]
    if deployment["mode"] == "batch" and not uri:
        raise ConfigError(f"{path}.batch_input_uri", "is required when mode is batch")
    if uri is not None and (not uri.startswith("s3://") or "/" not in uri[len("s3://") :]):
        raise ConfigError(f"{path}.batch_input_uri", f"{uri!r} is not an s3://bucket/prefix URI")


def _check_split(path: str, split: dict[str, Any]) -> None:
    if split["validation"] + split["test"] > 0.6:
        raise ConfigError(f"{path}.test", "validation and test together must leave at least 40% for training")


def _check_task(config: dict[str, Any]) -> None:
    """What depends on the task: the metrics the gate may name."""
    task = config["task"]
    if config["base_model"].startswith(spec.RANDOM_PREFIX) and task != "causal-lm":
        raise ConfigError("base_model", f"{config['base_model']!r} is a decoder: its task is causal-lm, not {task}")
    if config["training"]["artifact"] == "adapter":
        _check_adapter_base(config["base_model"])
    if task != "causal-lm" and config["training"]["hyperparameters"]["dpo_steps"]:
        raise ConfigError(
            "training.hyperparameters.dpo_steps",
            f"DPO learns from preferences between answers: causal-lm only, not {task}",
        )
    gates = config["gates"]
    primary = spec.PRIMARY_METRICS[task]
    scored = config["generation"]["scorers"] if task == "causal-lm" else []
    if gates["primary_metric"] is None:
        # A causal LM is judged by what it generates: its first scorer, by default.
        gates["primary_metric"] = scored[0] if scored else primary[0]
    elif gates["primary_metric"] not in primary:
        raise ConfigError(
            "gates.primary_metric", f"{gates['primary_metric']!r} is not one of {', '.join(primary)} (for {task})"
        )
    for field, metric in [("gates.primary_metric", gates["primary_metric"])] + [
        (f"gates.metrics.{m}", m) for m in gates["metrics"]
    ]:
        if metric in spec.SCORERS and metric not in scored:
            raise ConfigError(field, f"{metric!r} is not scored: add it to generation.scorers")
    for metric in config["quality"]["thresholds"]:
        if metric not in spec.TASK_QUALITY_METRICS[task]:
            raise ConfigError(f"quality.thresholds.{metric}", f"not measured for {task}; one of "
                              f"{', '.join(spec.TASK_QUALITY_METRICS[task])}")  # fmt: skip
        scorer = metric.removeprefix("production_")
        if scorer in spec.SCORERS and scorer not in scored:
            raise ConfigError(f"quality.thresholds.{metric}", f"{scorer!r} is not scored: add it to generation.scorers")
    measured = _TASK_METRICS[task]
    for metric in gates["metrics"]:
        if metric not in measured:
            raise ConfigError(
                f"gates.metrics.{metric}", f"the evaluation of a {task} model measures {', '.join(measured)}"
            )


def _check_adapter_base(model: str) -> None:
    """An adapter is served on its base model, so the endpoint must load the very base it
    was trained on, with no download: an s3:// artifact (a channel of the model) or a
    packaged model."""
    if model.startswith("s3://") or model in spec.PACKAGED_MODELS:
        return
    why = (
        "is made inside the training job and no endpoint can load it"
        if model.startswith(spec.RANDOM_PREFIX)
        else "would be downloaded by every endpoint that starts"
    )
    raise ConfigError(
        "training.artifact",
        f"an adapter is served on its base model, and {model!r} {why}: use an s3:// base model "
        f"(a run's model.tar.gz, say) or {', '.join(spec.PACKAGED_MODELS)}, or set this to merged",
    )


_TASK_METRICS = {
    "text-classification": ("accuracy", "macro_f1", "ece"),
    "causal-lm": ("loss", "perplexity", *spec.SCORERS),
}


def _check_scorers(path: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, f"must be a non-empty list of scorers ({', '.join(spec.SCORERS)})")
    for n, name in enumerate(value):
        if name not in spec.SCORERS:
            raise ConfigError(f"{path}[{n}]", f"{name!r} is not a scorer; one of {', '.join(spec.SCORERS)}")
    if len(set(value)) != len(value):
        raise ConfigError(path, "lists a scorer twice")
    return list(value)


_scorers = _V(
    lambda path, value: _check_scorers(path, value),
    {"type": "array", "items": {"enum": list(spec.SCORERS)}, "minItems": 1, "uniqueItems": True},
)


def _check_json_schema(path: str, value: Any) -> dict[str, Any] | None:
    # Checked as a JSON schema by the evaluate job (the API does not carry a validator).
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a JSON schema (an object) or null, got {_type_name(value)}")
    refusal = spec.schema_refusal(value) if value is not None else None
    if refusal:
        raise ConfigError(path, refusal)
    return dict(value) if value is not None else None


_json_schema = _V(lambda path, value: _check_json_schema(path, value), {"type": "object"})


def _check_regex(path: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"must be a regular expression (a string) or null, got {_type_name(value)}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(path, f"is not a valid regular expression: {exc}") from None
    return value


_regex = _V(lambda path, value: _check_regex(path, value), {"type": "string", "minLength": 1})


def _check_generation(path: str, generation: dict[str, Any]) -> None:
    for scorer, option in (("json_schema", "json_schema"), ("regex_match", "regex")):
        if scorer in generation["scorers"] and generation[option] is None:
            raise ConfigError(f"{path}.{option}", f"is required by the {scorer} scorer")
    size = len(json.dumps(generation, separators=(",", ":")))
    if size > spec.GENERATION_MAX_CHARS:
        raise ConfigError(path, f"is {size} characters as JSON (its schema and pattern included); at most "
                          f"{spec.GENERATION_MAX_CHARS}")  # fmt: skip


def _check_model_id(path: str, value: Any) -> str:
    model: str = _string()(path, value)
    if model.startswith("s3://"):
        if len(model) <= len("s3://") or "/" not in model[len("s3://") :]:
            raise ConfigError(path, f"{model!r} is not a full s3://bucket/key URI")
        return model
    if model.startswith(spec.RANDOM_PREFIX):
        if model.removeprefix(spec.RANDOM_PREFIX) not in spec.RANDOM_DECODERS:
            choices = ", ".join(spec.RANDOM_PREFIX + name for name in spec.RANDOM_DECODERS)
            raise ConfigError(path, f"{model!r} is not a random decoder tuneloop has; one of {choices}")
        return model
    if "@" in model and _HF_MODEL_RE.match(model.split("@", 1)[0]) and not _HF_MODEL_RE.match(model):
        raise ConfigError(
            path,
            f"{model!r}: pin a Hub model to a commit, org/name@<the commit's 40-character hash>; a branch or tag "
            "such as @main moves, so it pins nothing",
        )
    if not _HF_MODEL_RE.match(model) or ".." in model:
        raise ConfigError(path, f"{model!r} is neither a Hugging Face model id (org/name) nor an s3:// URI")
    return model


def _check_data(path: str, data: dict[str, Any]) -> None:
    for field, name in data.items():
        if len(name) > DATA_FIELD_MAX:
            raise ConfigError(f"{path}.{field}", f"is {len(name)} characters; at most {DATA_FIELD_MAX}")
        # Each name goes to the prepare job as a container argument: no option look-alike,
        # and nothing SageMaker's argument pattern refuses (control characters).
        if name.startswith("-") or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ConfigError(f"{path}.{field}", f"{name[:40]!r} is not a column name tuneloop takes (a leading "
                              "'-' or a control character)")  # fmt: skip
    for group in (("text_field", "label_field"), ("prompt_field", "completion_field", "messages_field")):
        names = [data[field] for field in group]
        if len(set(names)) != len(names):
            repeated = next(field for field in group if names.count(data[field]) > 1)
            raise ConfigError(f"{path}.{repeated}", f"{data[repeated]!r} names two fields: each must have its own")


_base_model = _V(lambda path, value: _check_model_id(path, value), {"type": "string", "minLength": 1})
_column = _V(_string(), {"type": "string", "minLength": 1, "maxLength": DATA_FIELD_MAX})
_instance = _string(pattern=_INSTANCE_RE, hint="expected an instance type such as ml.g5.xlarge")
_drift_thresholds = _mapping_of(_number(0), keys={m.name: m.help for m in spec.DRIFT_METRICS}, kind="drift metric")

_CONFIG = _obj(
    {
        "base_model": _Field(
            _base_model,
            help="what to fine-tune: a Hugging Face model id (org/name, or org/name@<40-hex commit> to pin it), "
            "an s3:// model artifact under the bucket's models/ or one of the project's own runs, or random:<shape> "
            "(a randomly initialised decoder, for speed tests); on the local cloud one it has offline",
        ),
        "task": _Field(_string(("text-classification", "causal-lm")), help="what the model learns"),
        "data_format": _Field(
            _string(("auto", "jsonl", "csv")),
            "auto",
            "auto: each file's extension says (.jsonl or .csv); jsonl or csv pins one format",
        ),
        "data": _Field(
            _obj(
                {
                    "text_field": _Field(
                        _column, "text", "classification: the column (CSV) or key (JSONL) with the text"
                    ),
                    "label_field": _Field(_column, "label", "classification: the column or key with the label"),
                    "prompt_field": _Field(_column, "prompt", "causal LMs: the column or key with the prompt"),
                    "completion_field": _Field(
                        _column, "completion", "causal LMs: the column or key with the answer to learn"
                    ),
                    "messages_field": _Field(
                        _column,
                        "messages",
                        "causal LMs (JSONL): the key with a conversation, a list of {role, content}",
                    ),
                },
                after=_check_data,
            ),
            _DEFAULTS,
            "where each row's fields are: the names a dataset's columns or keys have",
        ),
        "training": _Field(
            _obj(
                {
                    "method": _Field(
                        _string(("full", "lora", "qlora")),
                        "full",
                        "full fine-tuning, LoRA, or QLoRA (LoRA on the base quantised to 4 bits; a GPU instance "
                        "type and artifact adapter)",
                    ),
                    "artifact": _Field(
                        _string(("merged", "adapter")),
                        "merged",
                        "what a LoRA run registers and serves: the merged model, or the adapter alone, served on "
                        "its base model (smaller artifacts, faster deploys)",
                    ),
                    "hyperparameters": _Field(_hyperparameters, _DEFAULTS, "train.py's hyperparameters"),
                    "instance_type": _Field(_instance, "ml.g5.xlarge", "the training job's instance type"),
                    "instance_count": _Field(
                        _number(1, 64, integer=True), 1, "instances (more than one: distributed data parallel)"
                    ),
                    "volume_size_gb": _Field(_number(1, 16384, integer=True), 30, "each instance's storage volume"),
                    "max_runtime_s": _Field(
                        _number(60, 28 * 86400, integer=True), 86400, "the most a training job may run (seconds)"
                    ),
                    "spot": _Field(
                        _boolean, True, "managed spot training: cheaper, interruptible (checkpoints resume it)"
                    ),
                    "max_wait_s": _Field(
                        _number(120, 28 * 86400, integer=True),
                        None,
                        "spot: the most a job may wait and run in all; more than max_runtime_s (unset: twice it)",
                    ),
                    "max_spot_retries": _Field(
                        _number(0, 10, integer=True), 2, "spot: new jobs after an interruption that failed a job"
                    ),
                    "warm_pool_s": _Field(
                        _number(0, 3600, integer=True),
                        0,
                        "KeepAlivePeriodInSeconds: a job's instances wait this long for the next matching job (a "
                        "tuning job's next trial); billed while they wait; needs spot false",
                    ),
                },
                after=_check_training,
            ),
            _DEFAULTS,
            "the training job",
        ),
        "tuning": _Field(
            _obj(
                {
                    "strategy": _Field(
                        _string(("Bayesian", "Random", "Hyperband")), "Bayesian", "SageMaker's search strategy"
                    ),
                    "objective": _Field(
                        _obj(
                            {
                                "metric": _Field(
                                    _V(
                                        _string(), {"enum": list(OBJECTIVE_METRICS)}
                                    ),  # named, after the ranges, by _check_tuning
                                    help="one of train.py's metric lines to optimise",
                                ),
                                "type": _Field(
                                    _string(("Maximize", "Minimize")),
                                    None,
                                    "follows the metric's direction; stated, it must agree",
                                ),
                            }
                        ),
                        help="what the tuning job optimises",
                    ),
                    "ranges": _Field(
                        _mapping_of(_parameter_range, non_empty=True),
                        help="the hyperparameters to search (at most 30), each with its range",
                    ),
                    "max_jobs": _Field(_number(1, 500, integer=True), 8, "training jobs in all"),
                    "max_parallel_jobs": _Field(_number(1, 100, integer=True), 1, "training jobs at once"),
                },
                after=_check_tuning,
            ),
            None,
            "a hyperparameter tuning job instead of one training job (unset: one training job)",
        ),
        "split": _Field(
            _obj(
                {
                    "validation": _Field(_number(0.0, 0.5), 0.1, "each new row's chance to land in validation"),
                    "test": _Field(
                        _number(0.01, 0.5),
                        0.1,
                        "each new row's chance to land in test; test rows stay test rows in every later run (the "
                        "project's frozen holdout)",
                    ),
                    "min_per_class": _Field(
                        _number(3, 1000, integer=True),
                        3,
                        "classification: rows a class needs; each class gets at least one validation and one test row",
                    ),
                    "seed": _Field(_number(0, 2**31 - 1, integer=True), 42, "the split's hash seed"),
                },
                after=_check_split,
            ),
            _DEFAULTS,
            "how the prepare job splits the data",
        ),
        "gates": _Field(
            _obj(
                {
                    "metrics": _Field(
                        _mapping_of(_number()),
                        {},
                        "thresholds on the evaluation's metrics, each in its direction: at least for macro_f1, "
                        "accuracy and scorers; at most for perplexity, loss and ece",
                    ),
                    "primary_metric": _Field(
                        _string(),
                        None,
                        "what the champion comparison is on (unset: macro_f1 for classification, the first scorer "
                        "for causal LMs)",
                    ),
                    "compare_champion": _Field(
                        _boolean,
                        True,
                        "reject a model worse than the deployed champion on the same test rows beyond the paired "
                        "bootstrap's noise",
                    ),
                    "compare_baseline": _Field(
                        _boolean,
                        True,
                        "a first model must beat a trivial baseline (the majority class; a causal LM, its untuned "
                        "base, on every evaluation) beyond the same noise",
                    ),
                    "confidence": _Field(_number(0.5, 0.999), 0.95, "the paired bootstrap's confidence"),
                    "min_improvement": _Field(
                        _number(0.0), 0.0, "the gain over the champion a model must show, on top of not being worse"
                    ),
                }
            ),
            _DEFAULTS,
            "the quality gate between evaluation and registration",
        ),
        "generation": _Field(
            _obj(
                {
                    "max_new_tokens": _Field(
                        _number(1, 256, integer=True),
                        spec.GENERATION_DEFAULTS["max_new_tokens"],
                        "tokens the evaluate job generates per test prompt",
                    ),
                    "scorers": _Field(_scorers, spec.GENERATION_DEFAULTS["scorers"], "how each completion is scored"),
                    "json_schema": _Field(_json_schema, None, "the JSON schema the json_schema scorer checks"),
                    "regex": _Field(_regex, None, "the pattern the regex_match scorer matches whole"),
                },
                after=_check_generation,
            ),
            _DEFAULTS,
            "causal LMs: how the evaluate job (and, on a sample, each training epoch) generates and scores",
        ),
        "evaluation": _Field(
            _obj(
                {
                    "instance_type": _Field(
                        _instance,
                        None,
                        "the evaluate job's instance type (unset: a causal LM trained on a GPU instance is evaluated "
                        "on that instance type, anything else on the stage's processing instance)",
                    ),
                    "max_runtime_s": _Field(
                        _number(600, PROCESSING_JOB_MAX_RUNTIME_S, integer=True),
                        None,
                        "the most the evaluate job may run (unset: what the test split's size needs, within the "
                        "stage's runtime limit)",
                    ),
                }
            ),
            _DEFAULTS,
            "the evaluate job, which scores the test split (a causal LM generates for every test prompt, for the "
            "model, the champion and the untuned base)",
        ),
        "approval": _Field(
            _string(("auto", "manual")),
            "manual",
            "auto: a model that passes the gate is approved and deployed; manual: it waits for POST /runs/{id}/approve",
        ),
        "deployment": _Field(
            _obj(
                {
                    "mode": _Field(
                        _string(("realtime", "batch", "none")),
                        "realtime",
                        "a real-time endpoint, a batch transform, or registration only",
                    ),
                    "instance_type": _Field(_instance, "ml.m5.large", "the endpoint's or transform's instance type"),
                    "min_instances": _Field(_number(1, 100, integer=True), 1, "the endpoint's autoscaling floor"),
                    "max_instances": _Field(_number(1, 100, integer=True), 2, "the endpoint's autoscaling ceiling"),
                    "data_capture_percent": _Field(
                        _number(0, 100, integer=True),
                        100,
                        "the share of requests captured for drift checks and feedback",
                    ),
                    "batch_input_uri": _Field(_string(), None, "mode batch: the s3://bucket/prefix to transform"),
                    "strategy": _Field(
                        _string(("canary", "linear", "all_at_once")),
                        "canary",
                        "how traffic shifts to a later model (blue/green with auto-rollback)",
                    ),
                    "canary_percent": _Field(
                        _number(1, 99, integer=True), 10, "canary: the share the new model takes first"
                    ),
                    "linear_step_percent": _Field(
                        _number(1, 99, integer=True), 25, "linear: the share each step shifts"
                    ),
                    "wait_s": _Field(_number(0, 3600, integer=True), 300, "seconds between traffic-shifting steps"),
                    "baking_s": _Field(
                        _number(0, 3600, integer=True),
                        600,
                        "seconds the alarms watch the new model on all traffic before the old one goes",
                    ),
                    "rollback_latency_ms": _Field(
                        _number(1, 600_000),
                        2000,
                        "roll back during the shift when model latency passes this (any 5XX rolls back too)",
                    ),
                    "target_invocations_per_instance": _Field(
                        _number(1, 1_000_000), 70, "the autoscaling target, invocations a minute per instance"
                    ),
                    "serverless_memory_mb": _Field(
                        _number(1024, 6144, integer=True),
                        None,
                        "serverless inference with this much memory (a multiple of 1024) instead of instances",
                    ),
                    "serverless_max_concurrency": _Field(
                        _number(1, 200, integer=True), 5, "serverless: concurrent invocations at most"
                    ),
                    "delete_superseded": _Field(
                        _boolean,
                        True,
                        "delete superseded runs' endpoint configs and models once the new one serves",
                    ),
                },
                after=_check_deployment,
            ),
            _DEFAULTS,
            "where an approved model serves",
        ),
        "drift": _Field(
            _obj(
                {
                    "thresholds": _Field(
                        _drift_thresholds,
                        {"prediction_psi": 0.2, "input_js": 0.1, "embedding_auc": 0.7},
                        "an alarm per metric: past its threshold by more than its sample-size noise starts a "
                        "retraining run",
                    ),
                    "evaluation_periods": _Field(
                        _number(1, 100, integer=True), 1, "checks in a row past a threshold before its alarm fires"
                    ),
                    "schedule_minutes": _Field(
                        _number(5, 7 * 24 * 60, integer=True), 60, "minutes between monitoring checks"
                    ),
                }
            ),
            _DEFAULTS,
            "the monitoring job's drift metrics and alarms",
        ),
        "quality": _Field(
            _obj(
                {
                    "thresholds": _Field(
                        _quality_thresholds,
                        {},
                        "limits on production metrics measured from feedback (floors; the correction rate's is a "
                        "ceiling): past one by more than its noise, an alarm starts a retraining run",
                    ),
                    "min_labels": _Field(
                        _number(1, 1_000_000, integer=True),
                        spec.MIN_LABELS,
                        "labelled requests a window needs to be measured",
                    ),
                }
            ),
            _DEFAULTS,
            "production quality, from the labels that arrive for captured requests",
        ),
        "retrain": _Field(
            _obj(
                {
                    "on_drift": _Field(_boolean, True, "whether a drift or quality alarm starts a retraining run"),
                    "cooldown_s": _Field(
                        _number(0, 30 * 86400, integer=True), 86400, "seconds between retraining runs at least"
                    ),
                    "max_per_day": _Field(_number(0, 100, integer=True), 1, "retraining runs a day at most"),
                    "min_new_labels": _Field(
                        _number(1, 1_000_000, integer=True),
                        30,
                        "an alarm starts a retraining run only with a new dataset or at least this many labels "
                        "received since the deployed run read its data",
                    ),
                }
            ),
            _DEFAULTS,
            "retraining runs started by alarms",
        ),
    },
    after=lambda path, config: _check_task(config),
)


def project_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a project config, made from the validator that
    enforces it: every field's type, default, limits and meaning. What it cannot say
    (checks across fields, such as a gate on a metric the task does not measure) the API
    still refuses, naming the field."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tuneloop project config",
        "description": "A project's config (POST /projects, PUT /projects/{name}). A field left out, or null, "
        "takes its default.",
        **_CONFIG.schema,
    }


def normalise_config(data: Any, offline: bool = False) -> dict[str, Any]:
    """The complete, validated project config; raises ConfigError naming the field.
    ``offline`` (the local cloud): the base model must be one a job loads without a
    download, so a project cannot be made that fails only once its job starts."""
    result: dict[str, Any] = _CONFIG("", data)
    size = len(json.dumps(result, separators=(",", ":")).encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError("", f"is {size} bytes as JSON; at most {MAX_CONFIG_BYTES} (every run keeps a copy of it)")
    model = result["base_model"]
    if offline and not model.startswith("s3://") and model not in spec.offline_models():
        raise ConfigError(
            "base_model",
            f"{model!r} is not available offline on the local cloud (nothing is downloaded at run time); "
            f"use one of {', '.join(spec.offline_models())}, or an s3:// model artifact",
        )
    return result


def check_project_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(field, "must be a non-empty string")
    if len(name) > PROJECT_NAME_MAX or not PROJECT_NAME_RE.match(name):
        raise ConfigError(
            field,
            f"{name!r} is not a valid project name: lower-case letters, digits and single hyphens, "
            f"at most {PROJECT_NAME_MAX} characters",
        )
    return name
