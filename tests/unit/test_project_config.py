"""Project config validation: defaults filled in, errors name the field."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.domain.project import ConfigError, check_project_name, normalise_config
from tests.conftest import DEMO_CONFIG

MINIMAL = {"base_model": "org/model", "task": "text-classification"}


def test_defaults_are_filled_in() -> None:
    config = normalise_config(MINIMAL)
    assert config["training"]["spot"] is True
    assert config["training"]["max_wait_s"] > config["training"]["max_runtime_s"]
    assert config["tuning"] is None
    assert config["deployment"]["mode"] == "realtime"
    assert config["approval"] == "manual"


def test_demo_config_is_valid() -> None:
    assert normalise_config(DEMO_CONFIG)["approval"] == "auto"


def test_an_adapter_needs_lora_and_a_base_an_endpoint_can_load() -> None:
    lora = {"method": "lora", "artifact": "adapter"}
    packaged = {**MINIMAL, "base_model": "sentence-transformers/all-MiniLM-L6-v2"}
    assert normalise_config({**packaged, "training": lora})["training"]["artifact"] == "adapter"
    s3 = {"base_model": "s3://b/runs/aaaaaaaaaaaa/train/x/output/model.tar.gz", "task": "causal-lm"}
    assert normalise_config({**s3, "training": lora})["training"]["artifact"] == "adapter"
    assert normalise_config(MINIMAL)["training"]["artifact"] == "merged"
    for config, needle in [
        ({**packaged, "training": {"artifact": "adapter"}}, "only a LoRA run has an adapter"),
        ({**MINIMAL, "training": lora}, "'org/model' would be downloaded by every endpoint that starts"),
        ({"base_model": "random:llama-tiny", "task": "causal-lm", "training": lora}, "no endpoint can load it"),
        ({**packaged, "training": {**lora, "artifact": "both"}}, "merged"),
    ]:
        with pytest.raises(ConfigError, match=needle) as info:
            normalise_config(config)
        assert info.value.field == "training.artifact"


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"task": "summarise"}, "task"),
        ({"base_model": ""}, "base_model"),
        ({"base_model": "s3://"}, "base_model"),
        ({"training": {"instance_count": 0}}, "training.instance_count"),
        ({"training": {"instance_count": "2"}}, "training.instance_count"),
        ({"training": {"spot": "yes"}}, "training.spot"),
        ({"training": {"max_runtime_s": 3600, "max_wait_s": 3600}}, "training.max_wait_s"),
        ({"training": {"spot": True, "warm_pool_s": 300}}, "training.warm_pool_s"),
        ({"training": {"spot": False, "warm_pool_s": 3601}}, "training.warm_pool_s"),
        ({"training": {"instance_type": "g5.xlarge"}}, "training.instance_type"),
        ({"training": {"hyperparameters": {"epochs": [1]}}}, "training.hyperparameters.epochs"),
        ({"tuning": {"objective": {"metric": "f1"}, "ranges": {}}}, "tuning.ranges"),
        (
            {"tuning": {"objective": {"metric": "f1"}, "ranges": {"lr": {"type": "continuous", "min": 1}}}},
            "tuning.ranges.lr.max",
        ),
        (
            {"tuning": {"objective": {"metric": "f1"}, "ranges": {"bs": {"type": "categorical"}}}},
            "tuning.ranges.bs.values",
        ),
        (
            {
                "tuning": {
                    "objective": {"metric": "f1"},
                    "ranges": {"lr": {"type": "continuous", "min": 0, "max": 1, "scaling": "Logarithmic"}},
                }
            },
            "tuning.ranges.lr.min",
        ),
        ({"deployment": {"min_instances": 3, "max_instances": 2}}, "deployment.max_instances"),
        ({"gates": {"metrics": {"macro_f1": "high"}}}, "gates.metrics.macro_f1"),
        ({"colour": "blue"}, "colour"),
        ({"retrain": {"cooldown": 5}}, "retrain.cooldown"),
        ({"quality": {"thresholds": {"accuracy": 0.8}}}, "quality.thresholds.accuracy"),
        ({"quality": {"thresholds": {"production_macro_f1": 1.5}}}, "quality.thresholds.production_macro_f1"),
        ({"quality": {"min_labels": 0}}, "quality.min_labels"),
        ({"evaluation": {"instance_type": "gpu"}}, "evaluation.instance_type"),
        ({"data": {"text_field": "--output-dir=/x"}}, "data.text_field"),
        ({"data": {"label_field": "a\nb"}}, "data.label_field"),
        ({"data": {"text_field": "x" * 201}}, "data.text_field"),
        ({"data": {"prompt_field": "q", "completion_field": "q"}}, "data.prompt_field"),
        ({"training": {"method": "qlora", "artifact": "adapter", "instance_type": "ml.m5.xlarge"}}, "training.method"),
        (
            {"training": {"method": "qlora", "artifact": "adapter", "instance_type": "ml.trn1.2xlarge"}},
            "training.method",
        ),
        ({"training": {"method": "qlora", "instance_type": "ml.g5.xlarge"}}, "training.artifact"),
        ({"evaluation": {"max_runtime_s": 60}}, "evaluation.max_runtime_s"),
        ({"evaluation": {"max_runtime_s": 10 * 86400}}, "evaluation.max_runtime_s"),
        ({"evaluation": {"gpu": True}}, "evaluation.gpu"),
        (
            {
                "task": "causal-lm",
                "base_model": "random:llama-tiny",
                "quality": {"thresholds": {"estimated_accuracy": 0.5}},
            },
            "quality.thresholds.estimated_accuracy",
        ),
    ],
)
def test_errors_name_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config({**MINIMAL, **patch})
    assert info.value.field == field


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config({"task": "causal-lm"})
    assert info.value.field == "base_model" and "required" in info.value.message


@pytest.mark.parametrize("name", ["demo", "a", "reviews-2026", "x" * 24])
def test_good_project_names(name: str) -> None:
    assert check_project_name(name) == name


@pytest.mark.parametrize("name", ["", "Demo", "-demo", "demo-", "de--mo", "de_mo", "x" * 25, 7])
def test_bad_project_names(name: object) -> None:
    with pytest.raises(ConfigError):
        check_project_name(name)


def test_effective_hyperparameters_are_recorded_with_every_default() -> None:
    from chalicelib import spec

    config = normalise_config({**MINIMAL, "training": {"hyperparameters": {"epochs": 1, "learning-rate": "2e-5"}}})
    assert config["training"]["hyperparameters"] == {**spec.defaults(), "epochs": 1, "learning_rate": 2e-5}


@pytest.mark.parametrize(
    "hyperparameters,field,message",
    [
        ({"num_train_epochs": 1}, "training.hyperparameters.num_train_epochs", "did you mean 'epochs'?"),
        ({"learnin_rate": 1e-4}, "training.hyperparameters.learnin_rate", "did you mean 'learning_rate'?"),
        ({"per_device_train_batch_size": 8}, "training.hyperparameters.per_device_train_batch_size", "'batch_size'"),
        ({"epochs": 0}, "training.hyperparameters.epochs", "must be at least 0.01"),
        ({"batch_size": 8.5}, "training.hyperparameters.batch_size", "must be an integer"),
        ({"bf16": "maybe"}, "training.hyperparameters.bf16", "must be true or false"),
        ({"task": "causal-lm"}, "training.hyperparameters.task", "set by the project config's task"),
    ],
)
def test_hyperparameters_are_checked_against_train_py(
    hyperparameters: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config({**MINIMAL, "training": {"hyperparameters": hyperparameters}})
    assert info.value.field == field and message in info.value.message


def test_train_py_refuses_what_config_validation_refuses(tmp_path: Any) -> None:
    """One declared list: train.py's parser is built from it and refuses unknown names."""
    from training import train

    args = train.parse_args(["--num_train_epochs", "1", "--epochs", "2", "--_tuning_objective_metric", "x"])
    assert args.epochs == 2.0 and args.refused == ["num_train_epochs"]
    assert train.main(["--num-train-epochs", "1", "--failure-dir", str(tmp_path)]) == 1
    failure = (tmp_path / "failure").read_text()
    assert failure.startswith("TrainingError: --num-train-epochs is not a hyperparameter") and "'epochs'" in failure


def test_metric_directions_drive_thresholds_and_tuning() -> None:
    causal = {"base_model": "org/tiny-llama", "task": "causal-lm"}
    # A causal LM is judged by what it generates: its first scorer, unless the gate says.
    assert normalise_config(causal)["gates"]["primary_metric"] == "token_f1"
    assert normalise_config({**causal, "gates": {"primary_metric": "perplexity"}})["gates"]["primary_metric"] == (
        "perplexity"
    )
    tuning = {
        "objective": {"metric": "validation_loss"},
        "ranges": {"learning_rate": {"type": "continuous", "min": 1e-5, "max": 1e-3}},
    }
    assert normalise_config({**MINIMAL, "tuning": tuning})["tuning"]["objective"]["type"] == "Minimize"
    with pytest.raises(ConfigError) as info:
        normalise_config(
            {**MINIMAL, "tuning": {**tuning, "objective": {"metric": "validation_loss", "type": "Maximize"}}}
        )
    assert info.value.field == "tuning.objective.type" and "lower" in info.value.message
    with pytest.raises(ConfigError) as info:
        normalise_config({**causal, "gates": {"metrics": {"macro_f1": 0.7}}})
    assert info.value.field == "gates.metrics.macro_f1"
    with pytest.raises(ConfigError) as info:
        normalise_config(
            {**MINIMAL, "tuning": {**tuning, "ranges": {"lr_sched": {"type": "continuous", "min": 0.1, "max": 1}}}}
        )
    assert info.value.field == "tuning.ranges.lr_sched"
    with pytest.raises(ConfigError) as info:
        normalise_config(
            {**MINIMAL, "tuning": {**tuning, "ranges": {"batch_size": {"type": "continuous", "min": 8, "max": 64}}}}
        )
    assert info.value.field == "tuning.ranges.batch_size.type"


def test_split_shares_are_bounded() -> None:
    assert normalise_config(MINIMAL)["split"] == {"validation": 0.1, "test": 0.1, "min_per_class": 3, "seed": 42}
    with pytest.raises(ConfigError) as info:
        normalise_config({**MINIMAL, "split": {"validation": 0.4, "test": 0.4}})
    assert info.value.field == "split.test"


def test_the_local_cloud_refuses_a_base_model_it_cannot_load_offline() -> None:
    from chalicelib import spec

    with pytest.raises(ConfigError) as info:
        normalise_config({"base_model": "bert-base-uncased", "task": "text-classification"}, offline=True)
    assert info.value.field == "base_model" and "not available offline" in info.value.message
    assert all(name in info.value.message for name in spec.offline_models())
    for model in [*spec.offline_models(), "s3://bucket/models/base/model.tar.gz"]:
        task = "causal-lm" if model.startswith("random:") else "text-classification"
        assert normalise_config({"base_model": model, "task": task}, offline=True)["base_model"] == model
    # On AWS only the id's shape is checked; a random decoder must be a causal LM.
    assert normalise_config({"base_model": "bert-base-uncased", "task": "text-classification"})
    with pytest.raises(ConfigError) as info:
        normalise_config({"base_model": "random:llama-tiny", "task": "text-classification"})
    assert "causal-lm" in info.value.message
    with pytest.raises(ConfigError) as info:
        normalise_config({"base_model": "random:gpt-huge", "task": "causal-lm"})
    assert "random:llama-tiny" in info.value.message


def test_the_configuration_docs_list_every_hyperparameter_with_its_default() -> None:
    from pathlib import Path

    from chalicelib import spec

    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for h in spec.HYPERPARAMETERS.values():
        if isinstance(h.default, str):
            default = f"`{h.default}`"  # "auto": train.py chooses it
        else:
            default = ("true" if h.default else "false") if h.type == "bool" else f"{h.default:g}"
        kind = f"{h.type} or `auto`" if h.auto else h.type
        assert f"| `{h.name}` | {kind} | {default} |" in docs, h.name


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"gates": {"metrics": {"macro_f1": float("nan")}}}, "gates.metrics.macro_f1"),
        ({"drift": {"thresholds": {"prediction_psi": float("inf")}}}, "drift.thresholds.prediction_psi"),
        ({"training": {"hyperparameters": {"learning_rate": float("nan")}}}, "training.hyperparameters.learning_rate"),
        ({"training": {"hyperparameters": {"epochs": 10**400}}}, "training.hyperparameters.epochs"),
    ],
)
def test_numbers_must_be_finite(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalise_config({**MINIMAL, **patch})
    assert info.value.field == field


def test_generation_scorers_and_their_options_are_checked() -> None:
    causal = {"base_model": "org/tiny-llama", "task": "causal-lm"}
    made = normalise_config({**causal, "generation": {"scorers": ["json_schema", "exact_match"],
                                                      "json_schema": {"type": "object"}}})  # fmt: skip
    assert made["gates"]["primary_metric"] == "json_schema" and made["generation"]["max_new_tokens"] == 64
    for generation, gates, field, needle in [
        ({"scorers": ["bleu"]}, {}, "generation.scorers[0]", "is not a scorer"),
        ({"scorers": []}, {}, "generation.scorers", "non-empty list"),
        ({"scorers": ["rouge_l", "rouge_l"]}, {}, "generation.scorers", "twice"),
        ({"scorers": ["regex_match"]}, {}, "generation.regex", "required by the regex_match scorer"),
        ({"scorers": ["regex_match"], "regex": "(unclosed"}, {}, "generation.regex", "not a valid regular"),
        ({"json_schema": "object"}, {}, "generation.json_schema", "must be a JSON schema"),
        ({"max_new_tokens": 0}, {}, "generation.max_new_tokens", "at least 1"),
        ({}, {"primary_metric": "json_valid"}, "gates.primary_metric", "not scored: add it to generation.scorers"),
        ({}, {"metrics": {"json_valid": 0.5}}, "gates.metrics.json_valid", "not scored"),
    ]:
        with pytest.raises(ConfigError) as info:
            normalise_config({**causal, "generation": generation, "gates": gates})
        assert info.value.field == field and needle in info.value.message, (field, info.value)
    # A gate on a scorer, in its direction (higher is better): at least the threshold.
    gated = normalise_config({**causal, "gates": {"metrics": {"exact_match": 0.9}}})
    assert gated["gates"]["metrics"] == {"exact_match": 0.9}


@pytest.mark.parametrize(
    "revision", ["main", "v1.0", "refs-pr-3", "0123456", "0123456789ABCDEF0123456789abcdef01234567"]
)
def test_a_hub_pin_must_be_a_commit(revision: str) -> None:
    """@main or a tag moves when someone pushes: it pins nothing. Only a commit's full hash does."""
    with pytest.raises(ConfigError, match="pin a Hub model to a commit") as info:
        normalise_config({**DEMO_CONFIG, "base_model": f"org/model@{revision}"})
    assert info.value.field == "base_model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert normalise_config({**DEMO_CONFIG, "base_model": f"org/model@{commit}"})["base_model"].endswith(commit)


def test_an_evaluate_jobs_own_limit_is_within_what_sagemaker_takes() -> None:
    import botocore.session

    from chalicelib.domain.project import PROCESSING_JOB_MAX_RUNTIME_S

    model = botocore.session.get_session().get_service_model("sagemaker")
    stopping = model.operation_model("CreateProcessingJob").input_shape.members["StoppingCondition"]
    assert stopping.members["MaxRuntimeInSeconds"].metadata["max"] == PROCESSING_JOB_MAX_RUNTIME_S
    assert normalise_config({**MINIMAL, "evaluation": {"max_runtime_s": PROCESSING_JOB_MAX_RUNTIME_S}})


def test_qlora_trains_an_adapter_on_a_gpu_instance() -> None:
    config = normalise_config(
        {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "causal-lm",
         "training": {"method": "qlora", "artifact": "adapter", "instance_type": "ml.g5.2xlarge"}}
    )  # fmt: skip
    assert config["training"]["method"] == "qlora"
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU, and ml\.c5\.xlarge has none"):
        normalise_config(
            {**MINIMAL, "training": {"method": "qlora", "artifact": "adapter", "instance_type": "ml.c5.xlarge"}}
        )
