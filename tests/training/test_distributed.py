"""Multi-process training: the launch command, the strategy mapping, and 2 CPU processes vs 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import fast_config

from lmtune.config import DistributedConfig, RunConfig
from lmtune.errors import LmtuneError
from lmtune.training import distributed


def test_single_process_adds_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world_size() == 1
    assert distributed.is_main_process()
    assert distributed.trainer_arguments(None) == {}
    assert distributed.broadcast("x") == "x"
    assert distributed.sum_over_processes([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.on_main(lambda a: a + 1, 1) == 2


def test_fsdp_maps_onto_trainer_fsdp2():
    kwargs = distributed.trainer_arguments(
        DistributedConfig(strategy="fsdp", fsdp_sharding="shard_grad_op", fsdp_wrap=["LlamaDecoderLayer"])
    )
    assert kwargs["fsdp"] is True
    fsdp = kwargs["fsdp_config"]
    assert fsdp["version"] == 2
    assert fsdp["reshard_after_forward"] is False
    assert fsdp["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert fsdp["state_dict_type"] == "FULL_STATE_DICT"
    default = distributed.trainer_arguments(DistributedConfig(strategy="fsdp"))["fsdp_config"]
    assert default["reshard_after_forward"] is True
    assert "transformer_layer_cls_to_wrap" not in default  # transformers uses _no_split_modules


def test_fsdp_arguments_are_accepted_by_training_arguments(tmp_path):
    from transformers import TrainingArguments

    kwargs = distributed.trainer_arguments(DistributedConfig(strategy="fsdp", fsdp_cpu_offload=True))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)
    assert args.fsdp_config["cpu_offload"] is True
    assert args.fsdp_config["version"] == 2


def test_deepspeed_config_follows_the_stage():
    ds = distributed.trainer_arguments(
        DistributedConfig(strategy="deepspeed", deepspeed_stage=3, deepspeed_offload=True)
    )
    zero = ds["deepspeed"]["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["deepspeed"]["train_micro_batch_size_per_gpu"] == "auto"
    stage2 = distributed.deepspeed_config(DistributedConfig(strategy="deepspeed"))["zero_optimization"]
    assert stage2["stage"] == 2 and "offload_param" not in stage2
    from_file = distributed.trainer_arguments(
        DistributedConfig(strategy="deepspeed", deepspeed_config="ds.json")
    )
    assert from_file["deepspeed"] == "ds.json"


def test_distributed_section_from_yaml_and_set(tmp_path):
    raw = fast_config("m", {"train": "a", "validation": "b", "test": "c"}, tmp_path / "out")
    raw["train"]["distributed"] = {"strategy": "fsdp", "fsdp_wrap": ["BertLayer"]}
    cfg = RunConfig.from_dict(raw)
    assert cfg.train.distributed.fsdp_wrap == ["BertLayer"]
    with pytest.raises(LmtuneError, match="strategy"):
        RunConfig.from_dict({**raw, "train": {**raw["train"], "distributed": {"strategy": "horovod"}}})


def test_launch_command_runs_lmtune_under_accelerate():
    command = distributed.launch_command(2, ["train", "c.yaml"], port=29555)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--main_process_port") + 1] == "29555"
    assert command[-4:] == ["-m", "lmtune", "train", "c.yaml"]
    with pytest.raises(LmtuneError, match="at least 2"):
        distributed.launch_command(1, ["train"])


def test_method_that_unfreezes_while_training_is_refused_in_several_processes(monkeypatch, tmp_path):
    raw = fast_config("m", {"train": "a", "validation": "b", "test": "c"}, tmp_path / "out")
    raw["method"] = "gradual-unfreeze"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LmtuneError, match="unfreezes layers"):
        distributed.check_supported(RunConfig.from_dict(raw))


@pytest.mark.slow
def test_two_cpu_processes_match_one_at_the_same_global_batch(minilm_path, sentiment_files, tmp_path):
    """DDP over gloo, 2 x 8 rows per step, against 1 process with 16 rows per step.

    Without dropout, both see the same global batches in the same order (the length-grouped
    sampler is seeded per epoch and Accelerate deals consecutive batches to the processes), so
    the results may differ only by floating-point reduction order.
    """
    import lmtune

    common = {"method": "full", "train": {"epochs": 2, "dropout": 0.0, "learning_rate": 5e-5}}
    one_cfg = fast_config("all-MiniLM-L6-v2", sentiment_files, tmp_path / "one", **common)
    one_cfg["train"]["batch_size"] = 16
    one = lmtune.train(RunConfig.from_dict(one_cfg))

    two_cfg = fast_config("all-MiniLM-L6-v2", sentiment_files, tmp_path / "two", **common)
    two_cfg["train"]["batch_size"] = 8
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(two_cfg), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune", "train", str(config), "--num-processes", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())

    assert two["train"]["processes"] == 2
    assert one.metrics["train"]["processes"] == 1
    assert two["train"]["steps"] == one.metrics["train"]["steps"]  # same global batch, same steps
    assert two["train"]["final_train_loss"] == pytest.approx(
        one.metrics["train"]["final_train_loss"], rel=0.02
    )
    for split in ("validation", "test"):
        for metric in ("accuracy", "f1_macro"):
            assert two[split][metric] == pytest.approx(one.metrics[split][metric], abs=1 / 16)
    # Only the main process wrote the run directory: one model, one log, a complete state.
    run_dir = tmp_path / "two"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert (run_dir / "model" / "model.safetensors").exists()

    def log_records(directory: Path) -> list[dict]:
        return [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]

    two_log, one_log = log_records(run_dir), log_records(tmp_path / "one")
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log]
    # The same gradients: DDP averages the two halves into the global batch's mean gradient.
    for mine, theirs in zip(two_log, one_log, strict=True):
        if "grad_norm" in theirs:
            assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=0.02)
    reloaded = lmtune.load_run(run_dir)
    assert reloaded.predict(["the film was wonderful"])[0]["label"] in ("positive", "negative")
