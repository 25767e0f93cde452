"""The method zoo (dora, ia3, adalora, prompt/prefix tuning, gradual unfreezing, bottleneck
adapters) on a 2-layer BERT: each trains what it promises (counted here independently of the
method code), saves and reloads to identical predictions, and refuses what it cannot do
with a one-line LmtuneError. The end-to-end runs on the packaged MiniLM (loss falls, accuracy,
reload) are the parametrised `tests/methods/test_methods.py`, which covers every registered
method, these included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.methods import METHODS, get_method_class
from lmtune.methods.base import MethodContext, count_parameters
from lmtune.tasks import get_task_class

H, L, FFN, LABELS = 32, 2, 64, 2  # the tiny_bert fixture
HEAD = H * LABELS + LABELS  # classifier
POOLER = H * H + H
LAYER_NORMS = (1 + 2 * L) * 2 * H  # embeddings + two per layer, weight and bias
NEW = (
    "dora",
    "ia3",
    "adalora",
    "prompt-tuning",
    "prefix-tuning",
    "gradual-unfreeze",
    "adapter-houlsby",
    "adapter-pfeiffer",
    "vera",
    "ln-tuning",
    "oft",
    "boft",
    "loha",
    "lokr",
)
TEXTS = ["the hotel was wonderful", "this book was dreadful", "our meal was fine I guess"]


def layer_size(hidden: int, ffn: int) -> int:
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden  # q, k, v, out + LayerNorm
    return attention + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * hidden


def bottleneck(hidden: int, factor: int = 16) -> int:
    b = hidden // factor
    return hidden * b + b + b * hidden + hidden


def kronecker_sides(width: int) -> tuple[int, int]:
    """LoKr's split of a width: its largest divisor up to the square root, and the cofactor."""
    small = max(d for d in range(1, int(width**0.5) + 1) if width % d == 0)
    return small, width // small


def adapted_layer(method: str, d_in: int, d_out: int) -> int | None:
    """What an OFT/BOFT/LoHa/LoKr adapter with default options trains on one d_in -> d_out linear."""
    if method == "oft":  # d_in/32 blocks of 32, each the upper triangle of a skew-symmetric matrix
        return d_in // 32 * (32 * 31 // 2)
    if method == "boft":  # one butterfly factor of d_in/4 full 4x4 blocks, and a scale per output
        return d_in // 4 * 4 * 4 + d_out
    if method == "loha":  # two rank-8 pairs (out x 8, 8 x in)
        return 2 * 8 * (d_in + d_out)
    if method == "lokr":  # W1: the small sides in full; W2: the large sides, rank 8 if 8 < half of them
        (out_small, out_large), (in_small, in_large) = kronecker_sides(d_out), kronecker_sides(d_in)
        low_rank = max(out_large, in_large) / 2 > 8
        large = 8 * (out_large + in_large) if low_rank else out_large * in_large
        return out_small * in_small + large
    return None


def promised(method: str, hidden: int, layers: int, ffn: int, epochs: int = 3) -> int:
    """What each new method trains on BertForSequenceClassification (2 labels), by formula."""
    head = hidden * LABELS + LABELS
    pooler = hidden * hidden + hidden
    norms = (1 + 2 * layers) * 2 * hidden
    if method == "dora":  # r=8 LoRA on every linear layer, plus one magnitude per output feature
        per_layer = 4 * (8 * (hidden + hidden) + hidden) + 8 * (hidden + ffn) * 2 + ffn + hidden
        return layers * per_layer + 8 * (hidden + hidden) + hidden + head
    if method == "ia3":  # key, value outputs; attention-out and FFN-out inputs (peft's bert map)
        return layers * (hidden + hidden + hidden + ffn) + head
    if method == "adalora":  # init_r=12 SVD triplets on query+value
        return layers * 2 * (12 * hidden + hidden * 12 + 12) + head
    if method == "prompt-tuning":  # 20 virtual token embeddings
        return 20 * hidden + head
    if method == "prefix-tuning":  # 20 keys and values in every layer
        return 20 * 2 * layers * hidden + head
    if method == "gradual-unfreeze":  # layers reached by the last epoch + pooler + classifier
        return min(layers, epochs - 1) * layer_size(hidden, ffn) + pooler + head
    if method == "adapter-houlsby":
        return 2 * layers * bottleneck(hidden) + norms + pooler + head
    if method == "adapter-pfeiffer":
        return layers * bottleneck(hidden) + norms + pooler + head
    if method == "vera":  # per adapted layer (query, value) d of size r=256 and b of size out
        return layers * 2 * (256 + hidden) + head
    if method == "ln-tuning":  # the norms only (the pooler stays frozen)
        return norms + head
    per_layer = adapted_layer(method, hidden, hidden)
    if per_layer is not None:  # on query and value of every layer
        return layers * 2 * per_layer + head
    raise AssertionError(method)


def make_cfg(
    model: str, files: dict[str, Path], out: Path, name: str, options: dict | None = None, **sections
) -> RunConfig:
    sections["method"] = {"name": name, **(options or {})}
    return RunConfig.from_dict(fast_config(model, files, out, **sections))


def build(model: str, files, tmp_path, name: str, total_steps: int = 24, options: dict | None = None):
    """The task model with method `name` applied, without training."""
    cfg = make_cfg(model, files, tmp_path / "unused", name, options)
    raw = cfg.to_dict()
    raw["data"]["labels"] = ["negative", "positive"]
    cfg = RunConfig.from_dict(raw)
    task = get_task_class("classification")(cfg)
    torch.manual_seed(0)
    base = task.build_model(model, fresh_head=True)
    instance = get_method_class(name)(cfg.method.options)
    return instance, instance.apply(base, MethodContext(task=task, total_steps=total_steps)), task


def test_all_new_methods_registered():
    for name in NEW:
        assert name in METHODS.names()
        cls = get_method_class(name)
        assert cls.name == name and cls.description and cls.default_learning_rate > 0
        assert cls.Options.model_config.get("extra") == "forbid"
        with pytest.raises(ValueError):
            cls.Options(not_an_option=1)


@pytest.mark.parametrize("method", NEW)
def test_trainable_count(method, tiny_bert, sentiment_files, tmp_path):
    _, model, _ = build(tiny_bert, sentiment_files, tmp_path, method)
    trainable, total = count_parameters(model)
    assert trainable == promised(method, H, L, FFN)
    assert trainable < total


@pytest.mark.parametrize("method", NEW)
def test_train_save_reload(method, tiny_bert, sentiment_files, tmp_path):
    run = lmtune.train(make_cfg(tiny_bert, sentiment_files, tmp_path / method, method, train={"epochs": 2}))
    assert run.metrics["train"]["trainable_params"] == promised(method, H, L, FFN, epochs=2)
    log = [json.loads(x) for x in (run.directory / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if "loss" in r]
    before = run.predict(TEXTS)
    after = lmtune.load_run(run.directory).predict(TEXTS)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-5)


# ---- prompt and prefix tuning ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_prompt_learning_head_is_saved(method, tiny_bert, sentiment_files, tmp_path):
    instance, model, _ = build(tiny_bert, sentiment_files, tmp_path, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable)
    instance.save(model, tmp_path / "saved")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "saved" / "adapter_model.safetensors")))
    assert any("classifier" in k for k in keys), keys


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_prompt_learning_refuses_tasks_that_do_not_accept_virtual_tokens(
    method, tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    cls = get_task_class("classification")
    monkeypatch.setattr(cls, "capabilities", cls.capabilities - {"accepts-virtual-tokens"})
    with pytest.raises(LmtuneError, match=f"task 'classification' cannot be used for method '{method}'"):
        build(tiny_bert, sentiment_files, tmp_path, method)


def test_prefix_tuning_changes_the_output(tiny_bert, sentiment_files, tmp_path):
    """The prefix is really attended to by BERT (peft passes it as past_key_values)."""
    _, model, _ = build(tiny_bert, sentiment_files, tmp_path, "prefix-tuning")
    model.eval()
    ids = torch.tensor([[101, 2023, 2338, 102]])
    first = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(10).add_(1)
    second = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(first, second)


# ---- adalora -----------------------------------------------------------------------------------
def test_adalora_too_few_steps(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(LmtuneError, match="adalora needs more training steps"):
        build(tiny_bert, sentiment_files, tmp_path, "adalora", options={"tinit": 10, "tfinal": 14})
    with pytest.raises(LmtuneError, match="adalora needs the number of training steps"):
        build(tiny_bert, sentiment_files, tmp_path, "adalora", total_steps=0)


def test_adalora_orthogonal_penalty_reaches_the_loss(tiny_bert, sentiment_files, tmp_path):
    _, model, _ = build(tiny_bert, sentiment_files, tmp_path, "adalora")
    model.eval()
    ids = torch.tensor([[101, 2023, 2338, 102]])
    labels = torch.tensor([1])
    with_reg = model(input_ids=ids, labels=labels)
    plain = torch.nn.functional.cross_entropy(with_reg.logits, labels)
    assert with_reg.loss.item() > plain.item() + 1e-4


def test_adalora_allocates_ranks_during_training(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    from peft.tuners.adalora.model import AdaLoraModel

    steps: list[int] = []
    original = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        # called after the optimizer step and before zero_grad: lora gradients still exist
        grads = [p.grad for n, p in self.model.named_parameters() if "lora_E" in n]
        assert grads and all(g is not None for g in grads)
        steps.append(global_step)
        return original(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    # no evaluation, so no best checkpoint is reloaded: the final budget is what is saved
    train = {"eval_strategy": "no", "save_strategy": "no"}
    run = lmtune.train(make_cfg(tiny_bert, sentiment_files, tmp_path / "ada", "adalora", train=train))
    total = run.metrics["train"]["steps"]
    assert steps == list(range(total))
    saved = json.loads((run.directory / "model" / "adapter_config.json").read_text())
    assert saved["rank_pattern"], "the budget phase must have produced a rank pattern"
    kept = sum(sum(mask) for mask in saved["rank_pattern"].values())
    assert kept == 8 * len(saved["rank_pattern"])  # target_r on average


# ---- gradual unfreezing ------------------------------------------------------------------------
def test_gradual_unfreeze_schedule(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    """Layer 1 (top) trains from epoch 1, layer 0 from epoch 2; the head from the start."""
    from transformers import TrainerCallback

    from lmtune.methods.gradual_unfreeze import GradualUnfreezeMethod

    snapshots: list[dict[str, torch.Tensor]] = []

    class Snapshot(TrainerCallback):
        def __init__(self, model):
            self.model = model

        def take(self):
            m = self.model
            snapshots.append(
                {
                    "layer0": m.bert.encoder.layer[0].attention.self.query.weight.detach().clone(),
                    "layer1": m.bert.encoder.layer[1].attention.self.query.weight.detach().clone(),
                    "head": m.classifier.weight.detach().clone(),
                }
            )

        def on_train_begin(self, args, state, control, **kwargs):
            self.take()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.take()

    original_apply = GradualUnfreezeMethod.apply

    def apply(self, model, ctx):
        out = original_apply(self, model, ctx)
        self._snapshot = Snapshot(out)
        return out

    original_callbacks = GradualUnfreezeMethod.callbacks
    monkeypatch.setattr(GradualUnfreezeMethod, "apply", apply)
    monkeypatch.setattr(
        GradualUnfreezeMethod, "callbacks", lambda self: [*original_callbacks(self), self._snapshot]
    )
    cfg = make_cfg(
        tiny_bert,
        sentiment_files,
        tmp_path / "gu",
        "gradual-unfreeze",
        train={"epochs": 3, "learning_rate": 1e-2, "early_stopping_patience": None},
    )
    lmtune.train(cfg)
    assert len(snapshots) == 4  # start + after each of 3 epochs

    def changed(key, epoch):  # did `key` change during `epoch` (0-based)?
        return not torch.equal(snapshots[epoch][key], snapshots[epoch + 1][key])

    assert [changed("head", e) for e in range(3)] == [True, True, True]
    assert [changed("layer1", e) for e in range(3)] == [False, True, True]
    assert [changed("layer0", e) for e in range(3)] == [False, False, True]


# ---- bottleneck adapters -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["adapter-houlsby", "adapter-pfeiffer"])
def test_adapters_start_as_the_base_model(method, tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    _, adapted, _ = build(tiny_bert, sentiment_files, tmp_path, method)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=LABELS)
    base.classifier.load_state_dict(adapted.classifier.state_dict())
    adapted.eval()
    base.eval()
    ids = torch.tensor([[101, 2023, 2338, 2001, 6919, 102]])
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, base(input_ids=ids).logits)
        # and the adapters are really on the path: a non-zero up-projection changes the output
        for name, param in adapted.named_parameters():
            if "bottleneck_adapter.up.weight" in name:
                param.fill_(0.5)
        assert not torch.equal(adapted(input_ids=ids).logits, base(input_ids=ids).logits)


def test_adapter_placement(tiny_bert, sentiment_files, tmp_path):
    _, houlsby, _ = build(tiny_bert, sentiment_files, tmp_path, "adapter-houlsby")
    names = {n.rsplit(".bottleneck_adapter", 1)[0] for n, _ in houlsby.named_modules() if "adapter" in n}
    assert names == {
        f"bert.encoder.layer.{i}.{site}"
        for i in range(L)
        for site in ("attention.output.dropout", "output.dropout")
    }
    _, pfeiffer, _ = build(tiny_bert, sentiment_files, tmp_path, "adapter-pfeiffer")
    names = {n.rsplit(".bottleneck_adapter", 1)[0] for n, _ in pfeiffer.named_modules() if "adapter" in n}
    assert names == {f"bert.encoder.layer.{i}.output.dropout" for i in range(L)}


def test_adapter_save_is_small_and_strict(tiny_bert, sentiment_files, tmp_path):
    from safetensors.torch import load_file

    instance, model, task = build(tiny_bert, sentiment_files, tmp_path, "adapter-pfeiffer")
    instance.save(model, tmp_path / "saved")
    state = load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    assert sum(t.numel() for t in state.values()) == promised("adapter-pfeiffer", H, L, FFN)
    config = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert config["method"] == "adapter-pfeiffer" and config["options"]["reduction_factor"] == 16

    def builder(path):
        assert path is None
        return task.build_model(tiny_bert, fresh_head=False)

    loaded = instance.load(tmp_path / "saved", builder)
    for name, tensor in state.items():
        assert torch.equal(dict(loaded.named_parameters())[name], tensor)
    houlsby = get_method_class("adapter-houlsby")(instance.options)
    with pytest.raises(LmtuneError, match="holds a 'adapter-pfeiffer' adapter"):
        houlsby.load(tmp_path / "saved", builder)


# ---- a Llama-style decoder ---------------------------------------------------------------------
def tiny_llama():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        num_labels=LABELS,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(config).eval()


@pytest.mark.parametrize("method", ["adapter-houlsby", "adapter-pfeiffer"])
def test_adapters_on_a_llama_decoder(method, tiny_bert, sentiment_files, tmp_path):
    _, _, task = build(tiny_bert, sentiment_files, tmp_path, method)
    base, adapted = tiny_llama(), tiny_llama()
    instance = get_method_class(method)(get_method_class(method).Options())
    instance.apply(adapted, MethodContext(task=task, total_steps=24))
    sites = {n.rsplit(".bottleneck_adapter", 1)[0] for n, _ in adapted.named_modules() if "adapter" in n}
    per_layer = ("self_attn.o_proj", "mlp.down_proj") if method == "adapter-houlsby" else ("mlp.down_proj",)
    assert sites == {f"model.layers.{i}.{s}" for i in range(L) for s in per_layer}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, base(input_ids=ids).logits)
    trainable, _ = count_parameters(adapted)
    norms = (1 + 2 * L) * H  # RMSNorm: weight only (final norm + two per layer)
    score = H * LABELS  # no bias
    assert trainable == len(per_layer) * L * bottleneck(H) + norms + score


@pytest.mark.parametrize("method", ["vera", "ln-tuning"])
def test_new_peft_methods_tune_a_decoder(method, tiny_llama, tmp_path):
    """SFT on the tiny Llama (grouped-query attention: q_proj and v_proj differ in shape; RMSNorm)."""
    from tests.conftest import train_sft_run

    records = [{"instruction": "Say hi.", "output": "hi hi"}] * 8
    out = train_sft_run(tiny_llama, records, tmp_path / method, method=method, max_steps=4)
    run = lmtune.load_run(out)
    trainable = run.metrics["train"]["trainable_params"]
    assert 0 < trainable < run.metrics["train"]["total_params"] / 10
    assert isinstance(run.predict(["Say hi."], options={"max_new_tokens": 3})[0]["generation"], str)


# ---- orthogonal (oft, boft) and LyCORIS (loha, lokr) adapters ------------------------------------
ROTATIONS_AND_LYCORIS = ("oft", "boft", "loha", "lokr")


@pytest.mark.parametrize("method", ROTATIONS_AND_LYCORIS)
def test_adapters_on_a_llama_decoder_train_the_formula(method, tiny_bert, sentiment_files, tmp_path):
    """q_proj (32 -> 32) and v_proj (32 -> 16: one key/value head of 16) of both layers, plus the
    score head; the unequal widths check the formulas' in/out sides."""
    _, _, task = build(tiny_bert, sentiment_files, tmp_path, method)
    adapted = tiny_llama()
    get_method_class(method)(get_method_class(method).Options()).apply(adapted, MethodContext(task=task))
    trainable, _ = count_parameters(adapted)
    assert trainable == L * (adapted_layer(method, H, H) + adapted_layer(method, H, H // 2)) + H * LABELS


@pytest.mark.parametrize("method", ROTATIONS_AND_LYCORIS)
def test_adapters_start_as_the_base_and_merge_into_it(method, tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    instance, adapted, _ = build(tiny_bert, sentiment_files, tmp_path, method)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=LABELS).eval()
    base.classifier.load_state_dict(
        adapted.base_model.model.classifier.modules_to_save["default"].state_dict()
    )
    adapted.eval()
    ids = torch.tensor([[101, 2023, 2338, 2001, 6919, 102]])
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, base(input_ids=ids).logits)
        torch.manual_seed(1)
        for name, param in adapted.named_parameters():
            if param.requires_grad and "modules_to_save" not in name:
                param.add_(0.3 * torch.randn_like(param))
        moved = adapted(input_ids=ids).logits
        assert not torch.allclose(moved, base(input_ids=ids).logits)
        merged = instance.merged(adapted)
        adapter_names = ("oft_", "boft_", "hada_", "lokr_")
        assert not any(part in n for n, _ in merged.named_parameters() for part in adapter_names)
        torch.testing.assert_close(merged(input_ids=ids).logits, moved, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("oft", {"r": 2, "block_size": 16}, "set r .* or block_size, not both"),
        ("boft", {"block_size": 4, "block_num": 8}, "set block_size or block_num, not both"),
        ("oft", {"block_size": 1}, "greater than or equal to 2"),
        ("lokr", {"decompose_factor": 0}, "decompose_factor must be -1"),
    ],
)
def test_exclusive_block_options_are_refused(method, options, message, tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(LmtuneError, match=message):
        make_cfg(tiny_bert, sentiment_files, tmp_path, method, options)


@pytest.mark.parametrize(("method", "options"), [("oft", {"r": 4}), ("boft", {"block_num": 4})])
def test_blocks_can_be_set_by_their_number(method, options, tiny_bert, sentiment_files, tmp_path):
    """r / block_num blocks per 32-wide layer: blocks of 8, whichever way they are set."""
    _, model, _ = build(tiny_bert, sentiment_files, tmp_path, method, options=options)
    trainable, _ = count_parameters(model)
    per_layer = 4 * (8 * 7 // 2) if method == "oft" else 4 * 8 * 8 + H
    assert trainable == L * 2 * per_layer + HEAD


def test_boft_butterfly_factors_need_the_cuda_kernel(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    """Without peft's fbd_cuda extension peft would train 1 factor and save a config naming 2."""
    import peft.tuners.boft.layer as boft_layer

    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: None)
    with pytest.raises(LmtuneError, match="n_butterfly_factor 2 needs peft's CUDA extension fbd_cuda"):
        build(tiny_bert, sentiment_files, tmp_path, "boft", options={"n_butterfly_factor": 2})
    # ... and an adapter saved with 2 factors elsewhere is refused, not loaded with 1.
    instance, model, task = build(tiny_bert, sentiment_files, tmp_path, "boft")
    instance.save(model, tmp_path / "saved")
    config_file = tmp_path / "saved" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "boft_n_butterfly_factor": 2}))
    with pytest.raises(LmtuneError, match="n_butterfly_factor 2 needs"):
        instance.load(tmp_path / "saved", lambda path: task.build_model(tiny_bert, fresh_head=False))


@pytest.mark.parametrize("method", ROTATIONS_AND_LYCORIS)
def test_adapters_tune_the_shared_encoder_of_a_multi_task_run(method, tiny_bert, tmp_path):
    """They declare "multi-task": one adapter on the encoder both sub-tasks' heads read."""
    from tests.conftest import separable_rows, write_csv
    from tests.tasks.test_multi_task import mt_config
    from tests.tasks.test_token_classification import synthetic_ner, write_conll

    files = {
        "s_train": write_csv(tmp_path / "s_train.csv", separable_rows(32, 1)),
        "s_dev": write_csv(tmp_path / "s_dev.csv", separable_rows(8, 2)),
        "s_test": write_csv(tmp_path / "s_test.csv", separable_rows(8, 3)),
        "n_train": write_conll(tmp_path / "n_train.conll", synthetic_ner(32, 11)),
        "n_dev": write_conll(tmp_path / "n_dev.conll", synthetic_ner(8, 12)),
        "n_test": write_conll(tmp_path / "n_test.conll", synthetic_ner(8, 13)),
    }
    raw = mt_config(tiny_bert, files, tmp_path / "run", method={"name": method})
    run = lmtune.train(RunConfig.from_dict(raw))
    stats = run.metrics["train"]
    assert 0 < stats["trainable_params"] < stats["total_params"] / 5
    texts = ["the film was awful", "Alice works at Google in Paris ."]
    assert lmtune.load_run(run.directory).predict(texts) == run.predict(texts)
