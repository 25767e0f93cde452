"""Multi-task training: shared encoder, one-task batches and mixing, specs and errors, end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.conftest import separable_rows, write_csv
from tests.tasks.test_token_classification import synthetic_ner, write_conll

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.methods.base import count_parameters
from lmtune.tasks.multi_task import MultiTask, TaskBatchSampler, batches_per_task


@pytest.fixture
def mt_files(tmp_path: Path) -> dict[str, Path]:
    """A tiny sentiment task (CSV) and a tiny NER task (CoNLL), each with train/dev/test."""
    return {
        "s_train": write_csv(tmp_path / "s_train.csv", separable_rows(64, 1)),
        "s_dev": write_csv(tmp_path / "s_dev.csv", separable_rows(16, 2)),
        "s_test": write_csv(tmp_path / "s_test.csv", separable_rows(16, 3)),
        "n_train": write_conll(tmp_path / "n_train.conll", synthetic_ner(96, 11)),
        "n_dev": write_conll(tmp_path / "n_dev.conll", synthetic_ner(16, 12)),
        "n_test": write_conll(tmp_path / "n_test.conll", synthetic_ner(24, 13)),
    }


def mt_config(model: str, files: dict[str, Path], out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {
            "type": "multi-task",
            "tasks": {
                "sentiment": {
                    "type": "classification",
                    "train": str(files["s_train"]),
                    "validation": str(files["s_dev"]),
                    "test": str(files["s_test"]),
                },
                "entities": {
                    "type": "ner",
                    "train": str(files["n_train"]),
                    "validation": str(files["n_dev"]),
                    "test": str(files["n_test"]),
                },
            },
        },
        "method": {"name": "full"},
        "data": {"max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "report_to": ["none"], "logging_steps": 2},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
    return cfg


# ---- the sampler ---------------------------------------------------------------------------------
def test_every_batch_holds_one_task_and_tails_are_filled_from_the_same_task():
    task_of_row = [0] * 37 + [1] * 10 + [2] * 3
    sampler = TaskBatchSampler(task_of_row, 8, seed=3, lengths=list(range(50)))
    order = list(sampler)
    assert len(order) == len(sampler) == (5 + 2 + 1) * 8
    for start in range(0, len(order), 8):
        assert len({task_of_row[i] for i in order[start : start + 8]}) == 1
    # proportional: every row at least once per epoch
    assert set(order) == set(range(50))


def test_order_depends_on_seed_and_epoch_only():
    rows = [0] * 40 + [1] * 24
    a, b = TaskBatchSampler(rows, 8, seed=1), TaskBatchSampler(rows, 8, seed=1)
    assert list(a) == list(b)  # the same on every process
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first  # a resumed epoch replays the same order


def test_mixing_proportions():
    sizes = [400, 100]
    assert batches_per_task(sizes, 10, "proportional", 2.0) == [40, 10]
    # temperature 2: shares ∝ sqrt(400) : sqrt(100) = 2 : 1 of the same 50 batches
    assert batches_per_task(sizes, 10, "temperature", 2.0) == [33, 17]
    assert batches_per_task(sizes, 10, "temperature", 1.0) == [40, 10]
    assert batches_per_task(sizes, 10, "round-robin", 2.0) == [25, 25]

    task_of_row = [0] * 400 + [1] * 100
    sampler = TaskBatchSampler(task_of_row, 10, mixing="temperature", temperature=2.0, seed=0)
    batches = sampler.batches()
    counts = Counter(task_of_row[b[0]] for b in batches)
    assert counts == {0: 33, 1: 17}
    robin = TaskBatchSampler(task_of_row, 10, mixing="round-robin", seed=0).batches()
    assert [task_of_row[b[0]] for b in robin[:6]] == [0, 1, 0, 1, 0, 1]


# ---- config and errors ---------------------------------------------------------------------------
def test_sub_task_specs_are_validated_and_normalised(mt_files, tmp_path):
    cfg = RunConfig.from_dict(mt_config("x", mt_files, tmp_path / "run"))
    tasks = cfg.task.options.tasks
    assert tasks["sentiment"]["multi_label"] is None and tasks["entities"]["tag_scheme"] == "auto"
    task = MultiTask(cfg)
    assert task.subtasks["sentiment"].cfg.data.train == str(mt_files["s_train"])
    assert task.subtasks["entities"].cfg.data.max_length == 32  # shared data settings are inherited
    # --set reaches sub-task keys
    raw = mt_config("x", mt_files, tmp_path / "run")
    from lmtune.config import apply_overrides

    raw = apply_overrides(raw, ["task.tasks.entities.stride=4", "task.mixing=round-robin"])
    cfg = RunConfig.from_dict(raw)
    assert cfg.task.options.tasks["entities"]["stride"] == 4 and cfg.task.options.mixing == "round-robin"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "clasification", "train": "a.csv"}, "type 'clasification' is not a task type"),
        ({"type": "causal-lm", "train": "a.json"}, "'causal-lm' is not supported inside multi-task"),
        ({"type": "multi-task", "tasks": {}}, "cannot contain another multi-task"),
        ({"train": "a.csv"}, "missing 'type'"),
        ({"type": "classification", "train": "a.csv", "tag_scheme": "bio"}, "unknown key 'tag_scheme'"),
    ],
)
def test_bad_sub_task_specs_name_the_sub_task(spec, message):
    raw = {"model": "x", "task": {"type": "multi-task", "tasks": {"topic": spec}}}
    with pytest.raises(LmtuneError) as info:
        RunConfig.from_dict(raw)
    assert "sub-task 'topic'" in str(info.value) and message in str(info.value)
    assert "classification, token-classification" in str(info.value) or "unknown key" in message


def test_calibration_of_a_sub_task_is_refused_not_ignored():
    spec = {"type": "classification", "train": "a.csv", "calibration": "temperature"}
    with pytest.raises(LmtuneError, match=r"sub-task 'topic': calibration is not fitted inside multi-task"):
        RunConfig.from_dict({"model": "x", "task": {"type": "multi-task", "tasks": {"topic": spec}}})


def test_missing_file_unsupported_method_and_misplaced_data_are_clear(mt_files, tmp_path):
    raw = mt_config("x", mt_files, tmp_path / "run")
    raw["task"]["tasks"]["entities"]["train"] = str(tmp_path / "nope.conll")
    with pytest.raises(LmtuneError, match=r"sub-task 'entities': train file not found: .*nope\.conll"):
        MultiTask(RunConfig.from_dict(raw)).prepare_data()
    cfg = RunConfig.from_dict(mt_config("x", mt_files, tmp_path / "run", method={"name": "prompt-tuning"}))
    with pytest.raises(LmtuneError, match=r"method 'prompt-tuning' is not supported.*full, freeze, bitfit"):
        MultiTask(cfg).prepare_data()
    with pytest.raises(LmtuneError, match=r"data\.train is set"):
        MultiTask(RunConfig.from_dict(mt_config("x", mt_files, tmp_path / "r", data={"train": "a.csv"})))


def test_sub_task_types_and_methods_are_asked_for_their_capabilities(mt_files, tmp_path):
    """Which tasks and methods fit a shared encoder is what their classes declare, not a name list."""
    from lmtune.methods import METHODS
    from lmtune.methods.full import FullMethod
    from lmtune.tasks import TASKS
    from lmtune.tasks.classification import ClassificationTask

    class SharedFull(FullMethod):
        name = "shared-full"

    class LoneFull(FullMethod):
        name = "lone-full"
        capabilities = FullMethod.capabilities - {"multi-task"}

    class LoneClassification(ClassificationTask):
        name = "lone-classification"
        capabilities = ClassificationTask.capabilities - {"multi-task-member"}

    for registry, cls in ((METHODS, SharedFull), (METHODS, LoneFull), (TASKS, LoneClassification)):
        registry.register(cls.name, cls)
    try:
        shared = mt_config("x", mt_files, tmp_path / "run", method={"name": "shared-full"})
        MultiTask(RunConfig.from_dict(shared))._check_method()
        lone = RunConfig.from_dict(mt_config("x", mt_files, tmp_path / "run", method={"name": "lone-full"}))
        with pytest.raises(LmtuneError, match=r"method 'lone-full' is not supported.*full, .*shared-full"):
            MultiTask(lone).prepare_data()
        raw = {"model": "x", "task": {"type": "multi-task", "tasks": {"t": {"type": "lone-classification"}}}}
        with pytest.raises(LmtuneError, match="'lone-classification' is not supported inside multi-task"):
            RunConfig.from_dict(raw)
    finally:
        for registry, cls in ((METHODS, SharedFull), (METHODS, LoneFull), (TASKS, LoneClassification)):
            registry.unregister(cls.name)


def test_sub_tasks_take_the_data_keys_their_task_reads(mt_files, tmp_path):
    raw = mt_config("x", mt_files, tmp_path / "run")
    raw["task"]["tasks"]["sentiment"]["label_delimiter"] = "|"
    task = MultiTask(RunConfig.from_dict(raw))
    assert task.subtasks["sentiment"].cfg.data.label_delimiter == "|"
    raw["task"]["tasks"]["entities"]["label_delimiter"] = "|"  # classification's key, not NER's
    with pytest.raises(LmtuneError, match="sub-task 'entities': unknown key 'label_delimiter'"):
        RunConfig.from_dict(raw)
    raw = mt_config("x", mt_files, tmp_path / "run")
    raw["task"]["tasks"]["sentiment"]["streaming"] = True  # streaming is run-wide
    with pytest.raises(LmtuneError, match="sub-task 'sentiment': unknown key 'streaming'"):
        RunConfig.from_dict(raw)


# ---- model, collation and per-epoch metrics on a tiny BERT --------------------------------------------
def _prepared(tiny_bert: str, mt_files: dict, tmp_path: Path) -> tuple[MultiTask, dict, object]:
    from transformers import AutoTokenizer

    cfg = RunConfig.from_dict(mt_config(tiny_bert, mt_files, tmp_path / "run"))
    first = MultiTask(cfg)
    data = first.prepare_data()
    raw = cfg.to_dict()
    raw["task"].update(first.resolved_options())
    task = MultiTask(RunConfig.from_dict(raw))  # as run.py does: a task built from the resolved config
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    return task, data.splits, tokenizer


def test_the_encoder_is_one_module_and_saved_once(tiny_bert, mt_files, tmp_path):
    from safetensors import safe_open

    task, _, _ = _prepared(tiny_bert, mt_files, tmp_path)
    model = task.build_model(tiny_bert, fresh_head=True)
    sentiment, entities = model.models["sentiment"], model.models["entities"]
    assert sentiment.bert is entities.bert
    assert sentiment.bert.embeddings.word_embeddings.weight is entities.bert.embeddings.word_embeddings.weight
    # the classification encoder (with its pooler) is the shared one
    assert entities.bert.pooler is not None
    encoder = sum(p.numel() for p in sentiment.bert.parameters())
    heads = sum(p.numel() for m in (sentiment, entities) for p in m.classifier.parameters())
    assert count_parameters(model)[1] == encoder + heads
    model.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert not [k for k in keys if k.startswith("models.entities.bert.")]
    reloaded = task.build_model(str(tmp_path / "saved"), fresh_head=False)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_mixed_batches_route_each_task_and_metrics_are_per_task(tiny_bert, mt_files, tmp_path):
    from transformers import EvalPrediction

    task, splits, tokenizer = _prepared(tiny_bert, mt_files, tmp_path)
    model = task.build_model(tiny_bert, fresh_head=True).eval()  # no dropout: losses comparable
    tokenized = task.tokenize(splits["validation"], tokenizer)
    assert set(tokenized.column_names) == {"task_index", "length", "truncated", "features"}
    rows = [tokenized[i] for i in (0, 1, len(tokenized) - 1)]  # sentiment, sentiment, entities
    collate = task.collator(tokenizer)
    mixed = collate(rows)
    assert mixed["task_index"].tolist() == [0, 0, 1] and len(mixed["segments"]) == 2
    out = model(**mixed)
    assert out["loss"].ndim == 0 and out["logits"].shape[0] == 3
    single = collate(rows[:2])
    assert "segments" not in single and "input_ids" in single  # flat: Trainer counts tokens
    loss = model(**single)["loss"]
    inputs = {k: v for k, v in single.items() if k not in ("task_index", "labels", "task_targets")}
    direct = model.models["sentiment"](**inputs, labels=single["task_targets"]).loss
    assert torch.allclose(loss, direct)
    metrics = task.trainer_metrics()(
        EvalPrediction(predictions=out["logits"].numpy(), label_ids=mixed["labels"].numpy())
    )
    assert {"sentiment_f1_macro", "entities_f1", "combined"} <= set(metrics)


# ---- end to end ------------------------------------------------------------------------------------
def test_tiny_run_validates_per_task_each_epoch_and_reloads(tiny_bert, mt_files, tmp_path):
    run = lmtune.train(RunConfig.from_dict(mt_config(tiny_bert, mt_files, tmp_path / "run")))
    log = [json.loads(line) for line in (run.directory / "train_log.jsonl").read_text().splitlines()]
    evals = [row for row in log if "eval_combined" in row]
    assert evals and {"eval_loss", "eval_sentiment_f1_macro", "eval_entities_f1"} <= set(evals[-1])
    metrics = json.loads((run.directory / "metrics.json").read_text())
    assert set(metrics["validation"]) == {"sentiment", "entities", "combined"}
    # Trainer's per-epoch validation (mixed batches, summarised logits) agrees with the final one.
    assert evals[-1]["eval_combined"] == pytest.approx(metrics["validation"]["combined"], abs=0.05)
    assert metrics["train"]["tokens_per_second"] > 0  # one-task batches reach the Trainer flat
    report = (run.directory / "report.md").read_text()
    assert "### sentiment (classification)" in report and "### entities (token-classification)" in report
    assert (run.directory / "confusion_matrix_sentiment-test.png").exists()
    # predictions/test.jsonl: each sub-task's records, named by the sub-task.
    lines = (run.directory / "predictions" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for name in ("sentiment", "entities"):
        rows = [r["row"] for r in records if r["task"] == name]
        assert rows == list(range(metrics["test"][name]["n"]))
    assert {r["task"] for r in records} == {"sentiment", "entities"}

    texts = ["the film was awful", "Alice works at Google in Paris ."]
    loaded = lmtune.load_run(run.directory)
    assert loaded.predict(texts) == run.predict(texts)
    assert loaded.evaluate(f"sentiment={mt_files['s_test']}")["sentiment"] == metrics["test"]["sentiment"]
    with pytest.raises(LmtuneError, match="one sub-task's file at a time"):
        loaded.evaluate(str(mt_files["s_test"]))


@pytest.mark.slow
def test_minilm_multi_task_learns_both_tasks_and_reloads(minilm_path, mt_files, tmp_path):
    raw = mt_config(
        minilm_path,
        mt_files,
        tmp_path / "run",
        method={"name": "lora", "r": 8},
        train={
            # 3 epochs sat at the accuracy bar (0.75-0.81, depending on the dropout masks drawn).
            "epochs": 4,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
    )
    raw["task"]["mixing"] = "temperature"
    run = lmtune.train(RunConfig.from_dict(raw))
    test = json.loads((run.directory / "metrics.json").read_text())["test"]
    assert set(test) == {"sentiment", "entities", "combined"}
    assert test["sentiment"]["accuracy"] >= 0.8  # chance: 0.5
    assert test["entities"]["f1"] >= 0.5  # chance: ~0
    assert test["combined"] == pytest.approx((test["sentiment"]["f1_macro"] + test["entities"]["f1"]) / 2)

    texts = ["the hotel was wonderful", "Grace Rossi works at Siemens in Oslo ."]
    loaded = lmtune.load_run(run.directory)
    both = loaded.predict(texts)
    assert both == run.predict(texts)
    assert set(both[0]) == {"sentiment", "entities"} and both[0]["sentiment"]["label"] == "positive"
    assert "PER" in {e["type"] for e in both[1]["entities"]["entities"]}
    assert loaded.predict(texts, options={"task": "sentiment"}) == [row["sentiment"] for row in both]
    with pytest.raises(LmtuneError, match=r"unknown sub-task 'topic'.*sentiment, entities"):
        loaded.predict(texts, options={"task": "topic"})
