"""The optimizers beyond AdamW: each trains (the loss falls) through the Trainer's own optimizer
class for it, GaLore and APOLLO on the model's own weights; misfits are refused by the config."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.run import train as train_run
from lmtune.training.trainer import LmtuneTrainer

CASES = {
    # optimizer: (method, learning rate, the optimizer class the Trainer builds)
    "adamw_8bit": ("lora", 5e-3, "bitsandbytes.AdamW"),
    "lion": ("lora", 1e-3, "bitsandbytes.Lion"),
    "galore_adamw": ("full", 1e-3, "galore_torch.AdamW"),
    "apollo_adamw": ("full", 1e-3, "apollo_torch.AdamW"),
}


class RecordingTrainer(LmtuneTrainer):
    built: ClassVar[list[tuple]] = []

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        kind = type(optimizer)
        bits = getattr(getattr(optimizer, "args", None), "optim_bits", None)  # bitsandbytes' state width
        ranks = [g["rank"] for g in optimizer.param_groups if "rank" in g]  # GaLore/APOLLO's projection
        RecordingTrainer.built.append((f"{kind.__module__.split('.')[0]}.{kind.__name__}", bits, ranks))
        return optimizer


@pytest.mark.parametrize("optimizer", sorted(CASES))
def test_optimizer_trains(optimizer, tiny_bert, sentiment_files, tmp_path):
    method, rate, expected = CASES[optimizer]
    train = {"epochs": 4, "learning_rate": rate, "optimizer": optimizer, "optimizer_args": {}}
    if optimizer in ("galore_adamw", "apollo_adamw"):
        train |= {"optimizer_target_modules": ["query", "value"], "optimizer_args": {"rank": 8}}
    cfg = RunConfig.from_dict(
        fast_config(tiny_bert, sentiment_files, tmp_path / optimizer, method=method, train=train)
    )
    RecordingTrainer.built.clear()
    run = train_run(cfg, trainer_class=RecordingTrainer)
    bits = 8 if optimizer == "adamw_8bit" else 32 if expected.startswith("bitsandbytes") else None
    ranks = [8] if optimizer in ("galore_adamw", "apollo_adamw") else []
    assert RecordingTrainer.built == [(expected, bits, ranks)]
    log = [json.loads(line) for line in (run.directory / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) >= 4 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert lmtune.load_run(run.directory).predict(["the film was great"])[0]["label"] in (
        "negative",
        "positive",
    )


def test_low_rank_optimizers_need_the_models_own_weights(tiny_bert, sentiment_files, tmp_path):
    cfg = fast_config(
        tiny_bert, sentiment_files, tmp_path, method="lora", train={"optimizer": "galore_adamw"}
    )
    with pytest.raises(LmtuneError, match="which method lora freezes"):
        RunConfig.from_dict(cfg)


def test_a_missing_optimizer_package_is_named(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "apollo_torch" else real(name, *a)
    )
    cfg = fast_config(
        tiny_bert, sentiment_files, tmp_path, method="full", train={"optimizer": "apollo_adamw"}
    )
    with pytest.raises(LmtuneError, match=r"needs the apollo_torch package.*lmtune\[optimizers\]"):
        RunConfig.from_dict(cfg)


# ---- Muon: lmtune builds it (torch.optim.Muon for hidden weight matrices, AdamW for the rest) ----
def muon_trainer(model, tmp_path, task: str = "classification", method: str = "full", **options):
    """A LmtuneTrainer as build_trainer makes one for `train.optimizer: muon` (no training)."""
    from transformers import TrainingArguments

    from lmtune.methods import get_method_class
    from lmtune.methods.base import MethodContext
    from lmtune.tasks import get_task_class

    task_cls = get_task_class(task)
    chosen = get_method_class(method)(get_method_class(method).Options(**options))
    if method != "full":
        model = chosen.apply(model, MethodContext(task=task_cls))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, learning_rate=2e-3)
    return LmtuneTrainer(model=model, args=args, task=task_cls, method=chosen, train_optimizer=("muon", {}))


def groups_of(trainer) -> tuple[set[str], set[str]]:
    """(names Muon steps, names AdamW steps) of the trainer's optimizer."""
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.inner["muon"].param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in optimizer.inner["adamw"].param_groups for p in g["params"]}
    return muon, adamw


def test_muon_takes_the_hidden_weight_matrices_and_adamw_the_rest(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    muon, adamw = groups_of(muon_trainer(model, tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert muon | adamw == trainable and not muon & adamw
    attention = ("attention.self.query", "attention.self.key", "attention.self.value")
    linear = (*attention, "attention.output.dense", "intermediate.dense", "output.dense")
    assert muon == {
        f"bert.encoder.layer.{i}.{layer}.weight" for i in range(2) for layer in linear
    }  # not the embeddings, pooler, classifier, biases or LayerNorms
    # LoRA: its A and B matrices are linear maps on the hidden features: Muon; the head: AdamW.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    muon, adamw = groups_of(muon_trainer(model, tmp_path, method="lora"))
    assert muon and all(".lora_A." in n or ".lora_B." in n for n in muon)
    assert len(muon) == 2 * 6 * 2  # A and B on the 6 linear layers of 2 blocks (LoRA's default)
    # The head, and LoRA on the pooler (not a hidden block's layer): AdamW.
    assert adamw and all("classifier.modules_to_save" in n or ".pooler." in n for n in adamw)
    assert any("classifier.modules_to_save" in n for n in adamw)


def test_muon_leaves_tied_embeddings_and_norms_of_a_decoder_to_adamw(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: one tensor, to AdamW
    muon, adamw = groups_of(muon_trainer(model, tmp_path, task="causal-lm"))
    assert "model.embed_tokens.weight" in adamw and not any("norm" in n for n in muon)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert muon == {
        f"model.layers.{i}.{part}.{p}.weight"
        for i in range(2)
        for part, names in (("self_attn", projections[:4]), ("mlp", projections[4:]))
        for p in names
    }


def test_muon_follows_the_schedule_and_resumes_from_its_state(tiny_bert, tmp_path):
    """The schedule's learning rate reaches both inner optimizers (also after a state was loaded, which
    replaces their groups), and a loaded state steps as the saved one does."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    ids, labels = torch.tensor([[101, 2023, 2338, 102]] * 2), torch.tensor([0, 1])

    def stepped(model, optimizer, steps: int) -> None:
        for _ in range(steps):
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    first = copy.deepcopy(base)
    trainer = muon_trainer(first, tmp_path)
    optimizer = trainer.create_optimizer()
    stepped(first, optimizer, 2)
    second = copy.deepcopy(first)
    other = muon_trainer(second, tmp_path / "b").create_optimizer()
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for group in other.param_groups:
        group["lr"] = 1e-4  # as the schedule sets it
    assert {g["lr"] for o in other.inner.values() for g in o.param_groups} == {1e-4}
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    stepped(first, optimizer, 1)
    stepped(second, other, 1)
    for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_muon_steps_lower_the_loss(tiny_bert, tmp_path):
    """The trainer's optimizer on one fixed batch: 20 steps of full fine-tuning fit it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).train()
    optimizer = muon_trainer(model, tmp_path).create_optimizer()
    ids = torch.randint(1000, 2000, (16, 8))
    labels = (ids[:, 0] > 1500).long()
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_muon_trains(tiny_bert, sentiment_files, tmp_path):
    """A whole run: full fine-tuning of the tiny BERT (random weights: a high rate, 8 epochs)."""
    train = {
        "epochs": 8,
        "learning_rate": 2e-2,
        "optimizer": "muon",
        "eval_strategy": "no",
        "save_strategy": "no",
    }
    cfg = RunConfig.from_dict(
        fast_config(tiny_bert, sentiment_files, tmp_path / "run", method="full", train=train)
    )
    RecordingTrainer.built.clear()
    run = train_run(cfg, trainer_class=RecordingTrainer)
    assert RecordingTrainer.built == [("lmtune.MuonWithAdamW", None, [])]
    log = [json.loads(line) for line in (run.directory / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    texts = ["the film was great", "this book was dreadful"]
    assert lmtune.load_run(run.directory).predict(texts) == run.predict(texts)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"optimizer_args": {"betas": 0.9}}, "optimizer muon takes optimizer_args momentum, .* not betas"),
        ({"optimizer_args": {"adjust_lr_fn": "x"}}, "adjust_lr_fn must be one of match_rms_adamw, original"),
        ({"distributed": {"strategy": "fsdp"}}, "orthogonalises whole weight matrices, which .* fsdp shards"),
    ],
)
def test_muon_misfits_are_config_errors(train, message, tiny_bert, sentiment_files, tmp_path):
    cfg = fast_config(
        tiny_bert, sentiment_files, tmp_path, method="full", train={"optimizer": "muon", **train}
    )
    with pytest.raises(LmtuneError, match=message):
        RunConfig.from_dict(cfg)


def test_muon_needs_a_torch_that_has_it(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    import torch

    monkeypatch.delattr(torch.optim, "Muon")
    cfg = fast_config(tiny_bert, sentiment_files, tmp_path, method="full", train={"optimizer": "muon"})
    with pytest.raises(LmtuneError, match=r"optimizer muon needs torch.optim.Muon \(torch 2.9 or later\)"):
        RunConfig.from_dict(cfg)


def test_muon_refuses_a_methods_own_optimizer_and_methods_without_matrices(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    with pytest.raises(LmtuneError, match=r"method 'lora' builds its own optimizer .* train\.optimizer muon"):
        muon_trainer(model, tmp_path, method="lora", loraplus_lr_ratio=16).create_optimizer()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    with pytest.raises(LmtuneError, match="muon found no trainable weight matrix"):
        muon_trainer(model, tmp_path, method="ia3").create_optimizer()


def test_a_muon_run_resumed_from_a_checkpoint_ends_bit_identical(tiny_bert, sentiment_files, tmp_path):
    """Both inner optimizers' states go into the checkpoint and come back (as if killed while
    sealing checkpoint 6: the rerun resumes from checkpoint 4)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from lmtune.training.checkpoints import MARKER

    out = tmp_path / "run"
    train = {
        "epochs": 2,
        "optimizer": "muon",
        "save_strategy": "steps",
        "save_steps": 2,
        "eval_strategy": "no",
    }
    train |= {"keep_checkpoints": True, "save_total_limit": 10, "learning_rate": 3e-3}
    cfg = RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, out, method="lora", train=train))
    lmtune.train(cfg)
    uninterrupted = load_file(out / "model" / "adapter_model.safetensors")
    state = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(state | {"status": "running"}))
    (out / "checkpoint-6" / MARKER).unlink()
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 6:
            shutil.rmtree(later)
    resumed = lmtune.train(cfg)
    assert resumed.metrics["train"]["resumed_from"] == "checkpoint-4"
    weights = load_file(out / "model" / "adapter_model.safetensors")
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)
