"""LmtuneTrainer: the causal-LM loss on labelled positions only (the same loss and gradients),
what the task's and the method's capabilities switch on, and the length-grouped order."""

from __future__ import annotations

import pytest
import torch

from lmtune.training.trainer import LmtuneTrainer, _can_select_logits


@pytest.fixture(scope="module")
def smollm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.models import resolve_model

    path = resolve_model("SmolLM2-135M-Instruct").path
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def sft_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Two rows, right-padded, with the prompt part of each masked out of the labels."""
    rows = [("Name a colour.", " Blue, like the sky."), ("What is two plus two?", " Four.")]
    ids, labels = [], []
    for prompt, answer in rows:
        p, a = tokenizer(prompt)["input_ids"], tokenizer(answer)["input_ids"]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(r) for r in ids)
    pad = tokenizer.pad_token_id or 0
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in ids]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),
    }


def trainer_for(model, tmp_path, task: str = "causal-lm", method: str = "lora") -> LmtuneTrainer:
    from transformers import TrainingArguments

    from lmtune.methods import get_method_class
    from lmtune.tasks import get_task_class

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    method_cls = get_method_class(method)
    chosen = method_cls(method_cls.Options())
    return LmtuneTrainer(model=model, args=args, task=get_task_class(task), method=chosen)


@pytest.mark.parametrize("num_items", [None, 37])
def test_loss_and_gradients_equal_the_models_own(smollm, tmp_path, num_items):
    model, tokenizer = smollm
    trainer = trainer_for(model, tmp_path)
    assert trainer.labelled_logits_only
    batch = sft_batch(tokenizer)
    model.train()

    def loss_and_grad(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), model.model.layers[-1].mlp.down_proj.weight.grad.clone()

    expected = loss_and_grad(
        lambda: model(**batch, **({"num_items_in_batch": num_items} if num_items else {})).loss
    )
    selected = loss_and_grad(lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items))
    torch.testing.assert_close(selected[0], expected[0], rtol=1e-5, atol=1e-6)
    # Summation order differs (fewer rows in the head GEMM): float32 rounding only.
    scale = expected[1].abs().max().item()
    torch.testing.assert_close(selected[1], expected[1], rtol=1e-4, atol=1e-5 * scale)
    model.zero_grad()


def test_evaluation_loss_projects_only_labelled_positions(smollm, tmp_path):
    model, tokenizer = smollm
    trainer = trainer_for(model, tmp_path)
    batch = sft_batch(tokenizer)
    model.eval()
    expected, _, _ = super(LmtuneTrainer, trainer).prediction_step(model, dict(batch), True)
    widths = []
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[-2]))
    try:
        loss, logits, labels = trainer.prediction_step(model, dict(batch), prediction_loss_only=True)
    finally:
        hook.remove()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert logits is None and labels is None
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    # The head saw the labelled positions alone, never every position of the batch.
    assert widths == [labelled] and labelled < batch["input_ids"].numel()
    # Metrics that read logits still get Trainer's full step.
    _, logits, _ = trainer.prediction_step(model, dict(batch), prediction_loss_only=False)
    assert logits.shape[:2] == batch["input_ids"].shape


def test_prompt_learning_and_encoders_keep_the_full_logits(smollm, minilm_path, tmp_path):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model, _ = smollm
    assert _can_select_logits(model)
    lora = get_peft_model(AutoModelForCausalLM.from_config(model.config), LoraConfig(task_type="CAUSAL_LM"))
    assert _can_select_logits(lora) and trainer_for(lora, tmp_path).labelled_logits_only
    prompt = get_peft_model(
        AutoModelForCausalLM.from_config(model.config),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    # The method declares virtual tokens: its positions are not the input's.
    assert not trainer_for(prompt, tmp_path, method="prompt-tuning").labelled_logits_only
    assert not trainer_for(prompt, tmp_path, method="prefix-tuning").labelled_logits_only
    encoder = AutoModelForSequenceClassification.from_pretrained(minilm_path)
    assert not _can_select_logits(encoder)
    # A task without the capability never selects logits, even on a decoder that could.
    assert not trainer_for(model, tmp_path, task="classification").labelled_logits_only
    # Without a task or a method nothing is assumed.
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert not LmtuneTrainer(model=model, args=args).labelled_logits_only


def test_only_tasks_counting_items_get_their_loss_scaled_by_the_process_count(tmp_path):
    """Trainer multiplies the loss by the process count for models it thinks divide by the item count:
    that is the task's "loss-counts-items" capability, not the model's class."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
        )
    )
    assert trainer_for(llama, tmp_path).model_accepts_loss_kwargs
    # The same decoder under a task that does not declare it (a plain mean loss) is not scaled.
    assert not trainer_for(llama, tmp_path, task="classification").model_accepts_loss_kwargs


def test_length_groups_keep_their_padding_but_not_the_saw_tooth_order():
    import itertools
    import random

    from transformers.trainer_pt_utils import get_length_grouped_indices

    from lmtune.training.trainer import shuffled_length_groups

    lengths = [random.Random(i).randint(3, 60) for i in range(1003)]
    order = shuffled_length_groups(lengths, 16, torch.Generator().manual_seed(5))
    assert sorted(order) == list(range(1003))
    stock = get_length_grouped_indices(lengths, 16, generator=torch.Generator().manual_seed(5))
    batches = [order[i : i + 16] for i in range(0, len(order), 16)]
    stock_batches = [stock[i : i + 16] for i in range(0, len(stock), 16)]
    # The same batches (so the same padding), the longest first, the short remainder last.
    assert sorted(map(sorted, batches)) == sorted(map(sorted, stock_batches))
    assert max(lengths) in [lengths[i] for i in batches[0]] and batches[-1] == stock_batches[-1]
    assert batches != stock_batches
    # Batch lengths no longer fall steadily inside each mega-batch.
    longest = [max(lengths[i] for i in b) for b in batches[1:-1]]
    falls = sum(a >= b for a, b in itertools.pairwise(longest)) / (len(longest) - 1)
    assert falls < 0.8
    assert order == shuffled_length_groups(lengths, 16, torch.Generator().manual_seed(5))


def test_each_micro_batch_gets_its_own_dropout_key(tmp_path):
    """The fast-dropout masks of a step are keyed by (seed, step, micro-step, process): the micro-batches
    of one accumulated step must not share masks, and a resumed run reproduces the keys."""
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    from lmtune.methods import get_method_class
    from lmtune.tasks import get_task_class
    from lmtune.training import fast_dropout

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
        )
    )
    fast_dropout.install(model)
    rows = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": i % 2} for i in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_strategy="no",
        seed=5,
    )
    trainer = LmtuneTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        task=get_task_class("classification"),
        method=get_method_class("full")(get_method_class("full").Options()),
    )
    assert trainer.dropout_rng is fast_dropout.rng_of(model)
    keys = []
    start_step = trainer.dropout_rng.start_step
    trainer.dropout_rng.start_step = lambda *key: (keys.append(key), start_step(*key))[1]
    trainer.train()
    assert keys == [(5, 0, 0, 0), (5, 0, 1, 0), (5, 1, 0, 0), (5, 1, 1, 0)]


def test_padding_collators_batches_are_counted(tiny_bert, sentiment_files, tmp_path):
    """DataCollatorWithPadding hands the step a BatchEncoding (a UserDict, not a dict): its tokens
    count too, so classification runs report tokens/s and their padding."""
    from tests.conftest import fast_config

    import lmtune
    from lmtune.config import RunConfig

    raw = fast_config(
        tiny_bert, sentiment_files, tmp_path / "run", train={"max_steps": 3, "eval_strategy": "no"}
    )
    t = lmtune.train(RunConfig.from_dict(raw)).metrics["train"]
    assert 0 < t["tokens_per_second"] <= t["padded_tokens_per_second"]
    assert 0 <= t["padding_ratio"] < 1
