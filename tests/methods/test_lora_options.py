"""LoRA's options: peft's initialisations (PiSSA, OLoRA start from the base model's outputs and
save as a plain LoRA on the untouched base) and LoRA+ (the B matrices in a faster group)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.methods import get_method_class
from lmtune.methods.base import MethodContext
from lmtune.run import load_run
from lmtune.tasks import get_task_class

TEXTS = ["the film was great", "this phone was awful", "the hotel was lovely", "our meal was boring"]


def lora_config(model: str, files: dict, out, **options) -> RunConfig:
    return RunConfig.from_dict(fast_config(model, files, out, method={"name": "lora", **options}))


def adapted(model_path: str, cfg: RunConfig) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(the base classifier, a copy with the run's method applied, the method)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2).eval()
    method = get_method_class("lora")(cfg.method.options)
    task = get_task_class("classification")(cfg)
    model = method.apply(copy.deepcopy(base), MethodContext(task=task)).eval()
    return base, model, method


def logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_residual_inits_start_from_the_base_models_outputs(init, tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    base, model, _ = adapted(tiny_bert, lora_config(tiny_bert, sentiment_files, tmp_path, init=init))
    torch.testing.assert_close(logits(model, tokenizer), logits(base, tokenizer), atol=1e-5, rtol=1e-4)
    # ... but from other base weights: the adapter's start was moved out of them (the residual).
    query = "bert.encoder.layer.0.attention.self.query"
    residual = model.get_submodule(f"base_model.model.{query}").base_layer.weight
    assert not torch.allclose(residual, base.get_submodule(query).weight)


def test_a_pissa_run_saves_a_lora_for_the_untouched_base(tiny_bert, sentiment_files, tmp_path):
    cfg = RunConfig.from_dict(
        fast_config(
            tiny_bert,
            sentiment_files,
            tmp_path / "pissa",
            method={"name": "lora", "init": "pissa", "r": 4},
            train={"epochs": 2, "learning_rate": 5e-3},
        )
    )
    lmtune.train(cfg)
    saved = json.loads((tmp_path / "pissa" / "model" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["lora_alpha"] == 32 and saved["init_lora_weights"] is True
    # The run evaluated its in-memory model (on the residual base); the reloaded run builds the
    # original base and the converted adapter: the same test metrics.
    trained = json.loads((tmp_path / "pissa" / "metrics.json").read_text())["test"]
    run = load_run(tmp_path / "pissa")
    reloaded = run.evaluate(sentiment_files["test"])
    compared = [key for key, value in trained.items() if isinstance(value, float)]
    assert compared
    for key in compared:
        assert reloaded[key] == pytest.approx(trained[key], abs=1e-5), key
    # ... on the base as it was: other adapters can share it (serving), `base=none` is the base.
    from transformers import AutoModel

    query = "encoder.layer.0.attention.self.query.weight"
    original = AutoModel.from_pretrained(tiny_bert).state_dict()[query]
    loaded = run.model.get_submodule(f"base_model.model.bert.{query.removesuffix('.weight')}").base_layer
    torch.testing.assert_close(loaded.weight, original)


def test_loraplus_gives_the_b_matrices_their_own_learning_rate(tiny_bert, sentiment_files, tmp_path):
    from transformers import TrainingArguments

    from lmtune.training.trainer import LmtuneTrainer

    cfg = lora_config(tiny_bert, sentiment_files, tmp_path, loraplus_lr_ratio=16)
    _, model, method = adapted(tiny_bert, cfg)
    args = TrainingArguments(
        output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True, learning_rate=2e-3
    )
    trainer = LmtuneTrainer(model=model, args=args, method=method)
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    b = [rate[id(p)] for n, p in names.items() if "lora_B" in n]
    a = [rate[id(p)] for n, p in names.items() if "lora_A" in n]
    head = [
        rate[id(p)] for n, p in names.items() if "classifier.modules_to_save" in n and n.endswith("weight")
    ]
    assert b == pytest.approx([0.032] * len(b)) and a == pytest.approx([2e-3] * len(a))
    # The head's matrix learns at the base rate; peft (like the LoRA+ paper's code) puts every
    # vector (biases) in the faster group.
    assert head and head == pytest.approx([2e-3] * len(head))
    assert len(rate) == sum(p.requires_grad for p in model.parameters())  # every trainable tensor
    # Without the option the Trainer builds its usual optimizer.
    _, plain_model, plain = adapted(tiny_bert, lora_config(tiny_bert, sentiment_files, tmp_path / "p"))
    assert plain.optimizer(plain_model, torch.optim.AdamW, {"lr": 1e-3}) is None


def test_loraplus_trains_end_to_end(tiny_bert, sentiment_files, tmp_path):
    cfg = RunConfig.from_dict(
        fast_config(
            tiny_bert,
            sentiment_files,
            tmp_path / "plus",
            method={"name": "lora", "loraplus_lr_ratio": 16},
            train={"epochs": 2, "learning_rate": 2e-3},
        )
    )
    run = lmtune.train(cfg)
    assert run.metrics["train"]["final_train_loss"] == run.metrics["train"]["final_train_loss"]  # not NaN
    assert load_run(run.directory).predict(TEXTS)[0]["label"] in ("negative", "positive")


@pytest.mark.parametrize(
    ("method", "init", "message"),
    [
        ("lora", "svd", "init 'svd': expected default, gaussian, pissa"),
        ("lora", "pissa_niter_x", "expected default"),
        ("qlora", "pissa", "rewrites the base weights, which qlora holds in 4 bits"),
        ("lora", "loftq", "use method qlora"),
    ],
)
def test_unknown_or_unfit_inits_are_refused(method, init, message, tiny_bert, sentiment_files, tmp_path):
    method_section = {"name": method, "init": init}
    with pytest.raises(LmtuneError, match=message):
        RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path, method=method_section))


# ---- EVA: A from the singular vectors of each layer's inputs on training batches -----------------
def eva_phases(model: str, files: dict, out, **train):
    """The run's own phases up to the adapted model (EVA runs inside `method.apply`)."""
    from lmtune.run import build_model, plan_run, prepare

    section = {"name": "lora", "init": "eva"}
    plan = plan_run(RunConfig.from_dict(fast_config(model, files, out, method=section, train=train)), False)
    prepared = prepare(plan)
    return prepared, build_model(plan, prepared).model


def test_eva_sets_a_as_peft_does_on_the_same_training_batches(tiny_bert, sentiment_files, tmp_path):
    import copy

    from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights

    from lmtune.methods.lora import EVA_BATCHES
    from lmtune.run import _training_batches

    prepared, model = eva_phases(tiny_bert, sentiment_files, tmp_path / "eva")
    batches = _training_batches(prepared)(EVA_BATCHES)
    assert len(batches) == EVA_BATCHES and all("labels" not in b for b in batches)
    base = prepared.task.build_model(tiny_bert, fresh_head=True)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=["query", "value"],
        init_lora_weights="eva",
        eva_config=EvaConfig(),
        modules_to_save=["classifier"],
    )
    reference = get_peft_model(copy.deepcopy(base), config)
    initialize_lora_eva_weights(reference, dataloader=batches, show_progress_bar=False)
    ours = {n: p for n, p in model.named_parameters() if "lora_A" in n}
    theirs = {n: p for n, p in reference.named_parameters() if "lora_A" in n}
    assert ours.keys() == theirs.keys() and ours
    for name, weight in ours.items():
        torch.testing.assert_close(weight, theirs[name], msg=name)
    assert model.peft_config["default"].rank_pattern == reference.peft_config["default"].rank_pattern
    # ... and not the default initialisation (random A of rank 8 everywhere), and B starts at zero.
    plain = get_method_class("lora")(get_method_class("lora").Options())
    default = plain.apply(copy.deepcopy(base), MethodContext(task=prepared.task))
    defaults = {n: p for n, p in default.named_parameters() if "lora_A" in n}
    assert all(w.shape != defaults[n].shape or not torch.allclose(w, defaults[n]) for n, w in ours.items())
    assert all(not p.any() for n, p in model.named_parameters() if "lora_B" in n)


def test_an_eva_run_trains_and_saves_a_plain_lora(tiny_bert, sentiment_files, tmp_path):
    cfg = lora_config(tiny_bert, sentiment_files, tmp_path / "eva", init="eva")
    run = lmtune.train(cfg)
    # EVA moves rank between layers of one rank budget (r x layers); on BERT's equally wide query and
    # value layers the parameter count stays a rank-8 LoRA's: 2 layers x 2 x 8 x (32 + 32), + head.
    assert run.metrics["train"]["trainable_params"] == 2 * 2 * 8 * 64 + 32 * 2 + 2
    saved = json.loads((tmp_path / "eva" / "model" / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["eva_config"] is None
    assert (
        json.loads((tmp_path / "eva" / "train_log.jsonl").read_text().splitlines()[0]).get("loss") is not None
    )
    before = run.predict(TEXTS)
    after = load_run(tmp_path / "eva").predict(TEXTS)
    for a, b in zip(before, after, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-5)


def test_eva_without_training_batches_is_refused(tiny_bert, sentiment_files, tmp_path):
    cfg = lora_config(tiny_bert, sentiment_files, tmp_path, init="eva")
    with pytest.raises(LmtuneError, match=r"lora init eva needs training batches.*data\.streaming"):
        adapted(tiny_bert, cfg)


# ---- CorDA: A and B from the weight's SVD weighted by the covariance of its inputs ------------------
@pytest.mark.parametrize("init", ["corda", "corda_kpm"])
def test_corda_starts_from_the_base_models_outputs(init, tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoTokenizer

    from lmtune.run import build_model, plan_run, prepare

    section = {"name": "lora", "init": init, "r": 4}
    cfg = RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "run", method=section))
    plan = plan_run(cfg, False)
    prepared = prepare(plan)
    model = build_model(plan, prepared).model.eval()
    base = prepared.task.build_model(tiny_bert, fresh_head=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ours = model.base_model.model.bert(**inputs).last_hidden_state
        theirs = base.bert(**inputs).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # The adapter's start is not LoRA's zero: B holds the (covariance-weighted) singular directions.
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_a_corda_run_saves_a_lora_for_the_untouched_base(tiny_bert, sentiment_files, tmp_path):
    cfg = lora_config(tiny_bert, sentiment_files, tmp_path / "corda", init="corda", r=4)
    run = lmtune.train(cfg)
    saved = json.loads((tmp_path / "corda" / "model" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True and saved.get("corda_config") is None
    before = run.predict(TEXTS)
    after = load_run(tmp_path / "corda").predict(TEXTS)
    for a, b in zip(before, after, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-5)
