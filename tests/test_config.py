"""Tests for the run configuration: loading, shorthands, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.config import RunConfig, apply_overrides, load_yaml, parse_override
from lmtune.errors import LmtuneError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def build(raw: dict, overrides: list[str] | None = None) -> RunConfig:
    return RunConfig.from_dict(apply_overrides(raw, overrides or []))


# ---- loading ---------------------------------------------------------------------------------
def test_from_yaml_reads_all_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path / "run.yaml",
        """\
model:
  name: distilbert-base-uncased
  revision: main
task:
  type: classification
  multi_label: true
method:
  name: lora
  r: 4
  alpha: 8
data:
  train: train.csv
  text_column: review
  labels: [neg, pos]
train:
  epochs: 2
  batch_size: 8
  learning_rate: 0.0005
  optimizer: sgd
output_dir: runs/x
""",
    )
    cfg = RunConfig.from_yaml(path)
    assert cfg.model.name == "distilbert-base-uncased"
    assert cfg.model.revision == "main"
    assert cfg.task.type == "classification"
    assert cfg.task.options.multi_label is True
    assert cfg.method.name == "lora"
    assert cfg.method.options.r == 4
    assert cfg.method.options.alpha == 8
    assert cfg.data.train == "train.csv"
    assert cfg.data.text_column == "review"
    assert cfg.data.labels == ["neg", "pos"]
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 8
    assert cfg.train.learning_rate == pytest.approx(5e-4)
    assert cfg.train.optimizer == "sgd"
    assert cfg.output_dir == "runs/x"


def test_defaults_when_only_model_given() -> None:
    cfg = RunConfig.from_dict({"model": {"name": "m"}})
    assert cfg.task.type == "classification"
    assert cfg.method.name == "lora"
    assert cfg.train.epochs == 3
    assert cfg.train.learning_rate is None
    assert cfg.data.format == "auto"
    assert cfg.output_dir == "runs/run"


def test_shorthand_forms_expand(tmp_path: Path) -> None:
    path = write(tmp_path / "run.yaml", "model: tiny-bert\ntask: classification\nmethod: full\n")
    cfg = RunConfig.from_yaml(path)
    assert cfg.model.name == "tiny-bert"
    assert cfg.task.type == "classification"
    assert cfg.method.name == "full"
    assert cfg.to_dict()["method"] == {"name": "full"}


def test_shorthand_forms_in_from_dict() -> None:
    cfg = RunConfig.from_dict({"model": "m", "method": "freeze", "task": "classification"})
    assert cfg.model.name == "m"
    assert cfg.method.name == "freeze"
    assert cfg.method.options.num_trainable_layers == 2


def test_empty_yaml_file_reports_missing_model(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.yaml", "")
    assert load_yaml(path) == {}
    with pytest.raises(LmtuneError, match=r"missing required key 'model'") as info:
        RunConfig.from_yaml(path)
    assert str(path) in str(info.value)


# ---- overrides -----------------------------------------------------------------------------
def test_overrides_parse_values_as_yaml() -> None:
    cfg = build(
        {"model": "m"},
        [
            "train.epochs=2",
            "train.batch_size=4",
            "train.learning_rate=0.0002",
            "train.torch_compile=true",
            "train.report_to=[tensorboard, wandb]",
            "train.max_grad_norm=null",
            "data.train=my data.csv",
        ],
    )
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 4
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    assert cfg.train.torch_compile is True
    assert cfg.train.report_to == ["tensorboard", "wandb"]
    assert cfg.train.max_grad_norm is None
    assert cfg.data.train == "my data.csv"


def test_parse_override_types() -> None:
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("train.warmup_ratio=0.1") == (["train", "warmup_ratio"], 0.1)
    assert parse_override("train.gradient_checkpointing=false") == (
        ["train", "gradient_checkpointing"],
        False,
    )
    assert parse_override("data.labels=[a, b]") == (["data", "labels"], ["a", "b"])
    assert parse_override("model.name=a=b") == (["model", "name"], "a=b")
    assert parse_override("train.dropout=") == (["train", "dropout"], None)


def test_scientific_notation_learning_rate_override() -> None:
    cfg = build({"model": "m"}, ["train.learning_rate=5e-4"])
    assert cfg.train.learning_rate == pytest.approx(5e-4)


@pytest.mark.parametrize("item", ["train.epochs", "=3", "train..epochs=3", ".epochs=1"])
def test_bad_override_syntax(item: str) -> None:
    with pytest.raises(LmtuneError, match="--set"):
        parse_override(item)


def test_overrides_do_not_mutate_input() -> None:
    raw = {"model": "m", "train": {"epochs": 1}}
    out = apply_overrides(raw, ["train.epochs=5", "method.r=4"])
    assert raw == {"model": "m", "train": {"epochs": 1}}
    assert out["train"]["epochs"] == 5
    assert out["model"] == {"name": "m"}
    assert out["method"] == {"r": 4}


def test_override_into_shorthand_section() -> None:
    cfg = build({"model": "m", "method": "lora"}, ["method.r=32", "model.revision=v2"])
    assert cfg.method.name == "lora"
    assert cfg.method.options.r == 32
    assert cfg.model.name == "m"
    assert cfg.model.revision == "v2"


def test_changing_method_name_drops_old_options() -> None:
    raw = {"model": "m", "method": {"name": "lora", "r": 4, "alpha": 8}}
    cfg = build(raw, ["method.name=full"])
    assert cfg.method.name == "full"
    assert cfg.to_dict()["method"] == {"name": "full"}


def test_changing_method_name_drops_options_of_the_default_method() -> None:
    # `method: {r: 4}` configures the default method (lora); switching to full must drop r as well.
    cfg = build({"model": "m", "method": {"r": 4}}, ["method.name=full"])
    assert cfg.method.name == "full"
    assert cfg.to_dict()["method"] == {"name": "full"}


def test_setting_same_method_name_keeps_options() -> None:
    cfg = build({"model": "m", "method": {"name": "lora", "r": 4}}, ["method.name=lora"])
    assert cfg.method.options.r == 4


def test_options_set_after_method_change_are_kept() -> None:
    cfg = build(
        {"model": "m", "method": {"name": "lora", "r": 4}},
        ["method.name=freeze", "method.num_trainable_layers=5"],
    )
    assert cfg.method.name == "freeze"
    assert cfg.method.options.num_trainable_layers == 5
    assert "r" not in cfg.to_dict()["method"]


def test_from_yaml_applies_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "run.yaml", "model: m\ntrain:\n  epochs: 1\n")
    cfg = RunConfig.from_yaml(path, ["train.epochs=4", "method=full"])
    assert cfg.train.epochs == 4
    assert cfg.method.name == "full"


# ---- unknown keys ----------------------------------------------------------------------------
def test_unknown_top_level_key_suggests_closest() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "trian": {"epochs": 1}})
    msg = str(info.value)
    assert "unknown key 'trian'" in msg
    assert "did you mean 'train'" in msg


def test_unknown_train_key_suggests_dotted_key() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "train": {"learnig_rate": 1e-3}})
    msg = str(info.value)
    assert "unknown key 'train.learnig_rate'" in msg
    assert "did you mean 'train.learning_rate'" in msg


def test_unknown_key_via_override_names_source(tmp_path: Path) -> None:
    path = write(tmp_path / "run.yaml", "model: m\n")
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_yaml(path, ["train.learning_rat=1e-4"])
    msg = str(info.value)
    assert str(path) in msg
    assert "unknown key 'train.learning_rat'" in msg
    assert "did you mean 'train.learning_rate'" in msg


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "data": {"zzzzzz": 1}})
    msg = str(info.value)
    assert "unknown key 'data.zzzzzz'" in msg
    assert "valid keys:" in msg
    assert "text_column" in msg


def test_unknown_method_option_suggests_closest() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "method": {"name": "lora", "alhpa": 32}})
    msg = str(info.value)
    assert "unknown key 'method.alhpa'" in msg
    assert "did you mean 'method.alpha'" in msg


def test_option_for_method_without_options() -> None:
    with pytest.raises(LmtuneError, match=r"unknown key 'method\.r'"):
        RunConfig.from_dict({"model": "m", "method": {"name": "full", "r": 8}})


def test_unknown_task_option_lists_valid_options() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "task": {"type": "classification", "zzzz": 1}})
    msg = str(info.value)
    assert "unknown key 'task.zzzz'" in msg
    assert "multi_label" in msg and "threshold" in msg


# ---- invalid values --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "key", "shown"),
    [
        ({"train": {"epochs": -1}}, "train.epochs", "-1"),
        ({"train": {"epochs": 0}}, "train.epochs", "0"),
        ({"train": {"optimizer": "adam"}}, "train.optimizer", "'adam'"),
        ({"train": {"batch_size": "many"}}, "train.batch_size", "'many'"),
        ({"train": {"warmup_ratio": 1.5}}, "train.warmup_ratio", "1.5"),
        ({"data": {"max_length": 4}}, "data.max_length", "4"),
        ({"data": {"validation_split": 0.7}}, "data.validation_split", "0.7"),
        ({"data": {"format": "xlsx"}}, "data.format", "'xlsx'"),
        ({"model": {"name": "m", "trust_remote_code": "perhaps"}}, "model.trust_remote_code", "'perhaps'"),
    ],
)
def test_invalid_values_name_the_key(raw: dict, key: str, shown: str) -> None:
    raw = {"model": "m", **raw}
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict(raw, source="cfg.yaml")
    msg = str(info.value)
    assert msg.startswith("cfg.yaml: invalid value for ")
    assert f"'{key}'" in msg
    assert f"(got {shown})" in msg


def test_invalid_method_option_value_names_the_key() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "method": {"name": "lora", "r": 0}})
    msg = str(info.value)
    assert "invalid value for 'method.r'" in msg
    assert "(got 0)" in msg


def test_invalid_method_option_literal() -> None:
    with pytest.raises(LmtuneError, match=r"invalid value for 'method\.bias'.*'some'"):
        RunConfig.from_dict({"model": "m", "method": {"name": "lora", "bias": "some"}})


def test_invalid_task_option_value() -> None:
    with pytest.raises(LmtuneError, match=r"invalid value for 'task\.threshold'"):
        RunConfig.from_dict({"model": "m", "task": {"threshold": 2}})


def test_steps_strategy_needs_steps() -> None:
    with pytest.raises(LmtuneError, match=r"'train'.*eval_steps"):
        RunConfig.from_dict({"model": "m", "train": {"eval_strategy": "steps"}})
    cfg = RunConfig.from_dict({"model": "m", "train": {"eval_strategy": "steps", "eval_steps": 50}})
    assert cfg.train.eval_steps == 50


def test_missing_model_name() -> None:
    with pytest.raises(LmtuneError, match=r"missing required key 'model'"):
        RunConfig.from_dict({"train": {"epochs": 1}})


def test_empty_output_dir_rejected() -> None:
    with pytest.raises(LmtuneError, match=r"'output_dir'.*must not be empty"):
        RunConfig.from_dict({"model": "m", "output_dir": "  "})


def test_several_errors_are_counted() -> None:
    with pytest.raises(LmtuneError, match=r"\(and 1 more\)"):
        RunConfig.from_dict({"model": "m", "train": {"epochs": -1, "batch_size": 0}})


# ---- registry-backed names -----------------------------------------------------------------
def test_unknown_method_name_suggests() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "method": "lroa"})
    msg = str(info.value)
    assert "unknown method 'lroa'" in msg
    assert "did you mean 'lora'" in msg
    assert "full" in msg and "bitfit" in msg


def test_unknown_task_name_suggests() -> None:
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict({"model": "m", "task": "clasification"})
    msg = str(info.value)
    assert "unknown task 'clasification'" in msg
    assert "did you mean 'classification'" in msg


def test_unknown_method_via_override() -> None:
    with pytest.raises(LmtuneError, match=r"unknown method 'fulll'.*did you mean 'full'"):
        build({"model": "m"}, ["method.name=fulll"])


# ---- method options and serialisation ------------------------------------------------------
def test_method_option_defaults_filled() -> None:
    cfg = RunConfig.from_dict({"model": "m", "method": "lora"})
    opts = cfg.method.options
    assert opts.r == 8
    assert opts.alpha == 16
    assert opts.dropout == pytest.approx(0.1)
    assert opts.bias == "none"
    dumped = cfg.to_dict()["method"]
    assert dumped["name"] == "lora"
    assert dumped["r"] == 8
    assert dumped["alpha"] == 16
    assert dumped["use_rslora"] is False


def test_default_method_options_visible_without_method_section() -> None:
    cfg = RunConfig.from_dict({"model": "m"})
    assert cfg.method.options.r == 8
    assert cfg.to_dict()["method"]["r"] == 8
    assert cfg.to_dict()["task"] == {"type": "classification", "multi_label": None, "threshold": 0.5}


def test_given_method_options_override_defaults() -> None:
    cfg = RunConfig.from_dict(
        {"model": "m", "method": {"name": "lora", "r": 64, "target_modules": ["q", "v"]}}
    )
    assert cfg.method.options.r == 64
    assert cfg.method.options.alpha == 16
    assert cfg.to_dict()["method"]["target_modules"] == ["q", "v"]


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        {
            "model": {"name": "m", "revision": "abc"},
            "task": {"type": "classification", "multi_label": True, "threshold": 0.3},
            "method": {"name": "freeze", "num_trainable_layers": 3},
            "data": {"train": "t.csv", "labels": ["x", "y"], "label_delimiter": "|", "max_length": 64},
            "train": {
                "epochs": 1.5,
                "learning_rate": 3e-5,
                "report_to": [],
                "eval_strategy": "steps",
                "eval_steps": 7,
            },
            "output_dir": "runs/rt",
        }
    )
    path = write(tmp_path / "saved.yaml", cfg.to_yaml())
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.method.options.num_trainable_layers == 3


def test_default_yaml_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({"model": "m"})
    again = RunConfig.from_yaml(write(tmp_path / "c.yaml", cfg.to_yaml()))
    assert again == cfg


# ---- file problems ---------------------------------------------------------------------------
def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(LmtuneError, match="config file not found") as info:
        RunConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_config_path_is_directory(tmp_path: Path) -> None:
    with pytest.raises(LmtuneError, match="config file not found"):
        load_yaml(tmp_path)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "model: m\ntrain:\n  epochs: 3\n bad: 1\n")
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_yaml(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 4" in msg
    assert "not valid YAML" in msg


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(LmtuneError, match="must be a mapping") as info:
        load_yaml(path)
    assert str(path) in str(info.value)


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(LmtuneError, match="not UTF-8") as info:
        load_yaml(path)
    assert str(path) in str(info.value)
