"""The run directory contract: contents, collisions, resume, loading with plain libraries."""

from __future__ import annotations

import json

import pytest
import torch

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from tests.conftest import fast_config


def tiny_config(tiny_bert, files, out, **sections):
    sections.setdefault("train", {"epochs": 2, "learning_rate": 1e-3})
    return RunConfig.from_dict(fast_config(tiny_bert, files, out, **sections))


def test_run_directory_contents(tiny_bert, sentiment_files, tmp_path):
    out = tmp_path / "run"
    run = lmtune.train(tiny_config(tiny_bert, sentiment_files, out))
    for name in (
        "config.yaml",
        "run.json",
        "metrics.json",
        "report.md",
        "README.md",
        "train_log.jsonl",
        "confusion_matrix_test.png",
        "model/adapter_model.safetensors",
        "model/adapter_config.json",
        "model/tokenizer.json",
        "model/lmtune.json",
    ):
        assert (out / name).exists(), name
    assert not list(out.glob("checkpoint-*")), "checkpoints are removed after a successful run"
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro"):
        assert 0.0 <= metrics["test"][key] <= 1.0 and key in metrics["validation"]
    for key in ("runtime_s", "samples_per_second", "peak_rss_mb", "trainable_params", "total_params"):
        assert metrics["train"][key] > 0
    # One example per training row when nothing is packed.
    assert metrics["train"]["examples_per_second"] == pytest.approx(
        metrics["train"]["samples_per_second"], rel=0.01
    )
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    resolved = RunConfig.from_yaml(out / "config.yaml")
    assert resolved.data.labels == ["negative", "positive"]
    assert resolved.train.learning_rate == 1e-3
    assert resolved.data.text_column == "text" and resolved.data.label_column == "label"
    assert "| accuracy |" in (out / "report.md").read_text()
    assert (out / "confusion_matrix_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.metrics["details"]["test"]["confusion_matrix"]


def test_output_dir_collisions(tiny_bert, sentiment_files, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_bert, sentiment_files, out)
    lmtune.train(cfg)
    stamp = (out / "metrics.json").stat().st_mtime_ns
    again = lmtune.train(cfg)  # same config, finished: nothing is retrained
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    assert again.metrics["test"] == json.loads((out / "metrics.json").read_text())["test"]

    different = tiny_config(tiny_bert, sentiment_files, out, train={"epochs": 1, "learning_rate": 1e-3})
    with pytest.raises(LmtuneError, match=r"holds a different run \(train.epochs: 2.0 -> 1.0\)"):
        lmtune.train(different)
    lmtune.train(different, overwrite=True)
    assert json.loads((out / "metrics.json").read_text())["train"]["epochs_completed"] == 1.0

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(LmtuneError, match="not an lmtune run"):
        lmtune.train(tiny_config(tiny_bert, sentiment_files, foreign), overwrite=True)
    assert (foreign / "notes.txt").read_text() == "precious"


def test_resume_from_last_checkpoint(tiny_bert, sentiment_files, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(
        tiny_bert, sentiment_files, out, train={"epochs": 2, "learning_rate": 1e-3, "keep_checkpoints": True}
    )
    lmtune.train(cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]
    # Make it look like a run killed after the first epoch's checkpoint.
    state = json.loads((out / "run.json").read_text())
    state["status"] = "running"
    (out / "run.json").write_text(json.dumps(state))
    for path in out.glob("checkpoint-16"):
        import shutil

        shutil.rmtree(path)
    resumed = lmtune.train(cfg)
    assert resumed.metrics["train"]["resumed_from"] == "checkpoint-8"
    assert resumed.metrics["train"]["steps"] == 16


def test_unfinished_run_does_not_load(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(LmtuneError, match="not an lmtune run"):
        lmtune.load_run(tmp_path)


@pytest.mark.slow
def test_adapter_and_full_model_load_with_plain_libraries(minilm_path, sentiment_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["the show was superb", "the app was boring"]
    for method in ("lora", "bitfit"):
        out = tmp_path / method
        cfg = RunConfig.from_dict(
            fast_config("all-MiniLM-L6-v2", sentiment_files, out, method=method, train={"epochs": 1})
        )
        run = lmtune.train(cfg)
        ours = torch.tensor(
            [[row["scores"][k] for k in ("negative", "positive")] for row in run.predict(texts)]
        )
        tokenizer = AutoTokenizer.from_pretrained(out / "model")
        if method == "lora":
            base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
            model = PeftModel.from_pretrained(base, out / "model")
        else:
            model = AutoModelForSequenceClassification.from_pretrained(out / "model")
            assert model.config.id2label == {0: "negative", 1: "positive"}
        model.eval()
        with torch.no_grad():
            probs = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.softmax(-1)
        torch.testing.assert_close(probs, ours, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_trains_on_cpu(tiny_bert, sentiment_files, tmp_path):
    """precision bf16 without a GPU: bf16 autocast with fp32 master weights, not a refusal."""
    cfg = RunConfig.from_dict(
        fast_config(tiny_bert, sentiment_files, tmp_path / "run", train={"precision": "bf16", "epochs": 1})
    )
    run = lmtune.train(cfg)
    assert run.metrics["train"]["final_train_loss"] > 0
    assert all(p.dtype == torch.float32 for p in run.model.parameters())


def test_an_empty_copy_filled_with_gathered_weights_computes_what_the_model_does():
    """The FSDP/DeepSpeed path: the adapted model's structure is kept empty (meta) and filled
    with the gathered full state, so the method is applied once; non-persistent buffers
    (position ids) and tied weights survive."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmtune.run import EmptyCopy

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(target_modules=["q_proj", "v_proj"]))
    empty = EmptyCopy.of(model)
    assert all(p.device.type == "meta" for p in empty.module.parameters())
    filled = empty.filled(model.state_dict()).eval()
    inner = filled.get_base_model()
    assert inner.lm_head.weight is inner.model.embed_tokens.weight
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(filled(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def _held_by_another_thread(lock) -> bool:
    """Whether `lock` is held, asked from a second thread (an RLock lets its owner re-enter)."""
    import threading

    free: list[bool] = []

    def probe() -> None:
        free.append(lock.acquire(blocking=False))
        if free[0]:
            lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return not free[0]


def test_a_run_builds_adapts_and_reloads_its_model_under_the_construction_lock(
    tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    """transformers swaps process-wide functions while it builds a model, so parallel sweep
    trials must not build at once: train's model building, the method's adaptation and
    Run.load all hold MODEL_CONSTRUCTION_LOCK."""
    from lmtune import models
    from lmtune.methods.lora import LoraMethod
    from lmtune.tasks.classification import ClassificationTask

    held: dict[str, list[bool]] = {"build": [], "apply": []}
    build, apply = ClassificationTask.build_model, LoraMethod.apply

    def spy_build(self, *args, **kwargs):
        held["build"].append(_held_by_another_thread(models.MODEL_CONSTRUCTION_LOCK))
        return build(self, *args, **kwargs)

    def spy_apply(self, *args, **kwargs):
        held["apply"].append(_held_by_another_thread(models.MODEL_CONSTRUCTION_LOCK))
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "build_model", spy_build)
    monkeypatch.setattr(LoraMethod, "apply", spy_apply)
    run = lmtune.train(tiny_config(tiny_bert, sentiment_files, tmp_path / "run"))
    lmtune.load_run(run.directory)
    assert held["apply"] == [True]
    assert len(held["build"]) >= 2 and all(held["build"])  # trained, then reloaded


def test_explanations_are_refused_before_training_for_tasks_that_cannot_give_them(tmp_path):
    from lmtune.errors import LmtuneError
    from lmtune.run import plan_run

    raw = {"model": "x", "task": "seq2seq", "evaluation": {"explain_errors": 3}, "output_dir": str(tmp_path)}
    with pytest.raises(LmtuneError, match=r"seq2seq.*evaluation\.explain_errors.*token-attributions"):
        plan_run(RunConfig.from_dict(raw), overwrite=False)


class _StopAt:
    """A Trainer callback that raises `error` at the second step (a crash, or Ctrl-C)."""

    def __init__(self, error: BaseException) -> None:
        from transformers import TrainerCallback

        self.error = error
        self.callback = type("StopAt", (TrainerCallback,), {"on_step_end": self._step})()

    def _step(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise self.error


@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("disk full\nmore"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_run_json_says_how_an_unfinished_run_ended_and_it_resumes(
    tiny_bert, sentiment_files, tmp_path, error, status
):
    from lmtune.run import train

    out = tmp_path / "run"
    cfg = tiny_config(tiny_bert, sentiment_files, out, train={"epochs": 2})
    with pytest.raises(type(error)):
        train(cfg, callbacks=[_StopAt(error).callback])
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == status
    assert state.get("error") == ("RuntimeError: disk full" if status == "failed" else None)
    assert "pid" not in state
    finished = lmtune.train(cfg)  # the same config resumes (here from scratch: no checkpoint yet)
    assert finished.metrics["train"]["steps"] == 16
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
