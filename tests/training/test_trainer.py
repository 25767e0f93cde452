"""LmtuneTrainer's causal-LM loss on labelled positions only: the same loss and gradients."""

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


def trainer_for(model, tmp_path) -> LmtuneTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    return LmtuneTrainer(model=model, args=args)


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


def test_prompt_learning_and_encoders_keep_the_full_logits(smollm, minilm_path):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model, _ = smollm
    assert _can_select_logits(model)
    lora = get_peft_model(AutoModelForCausalLM.from_config(model.config), LoraConfig(task_type="CAUSAL_LM"))
    assert _can_select_logits(lora)
    prompt = get_peft_model(
        AutoModelForCausalLM.from_config(model.config),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    assert not _can_select_logits(prompt)
    assert not _can_select_logits(AutoModelForSequenceClassification.from_pretrained(minilm_path))


def test_packed_rows_attend_per_example_with_the_same_loss_and_gradients(smollm, monkeypatch):
    from lmtune.tasks.causal_lm import CausalLmCollator
    from lmtune.training import attention

    model, tokenizer = smollm
    attention.install()
    texts = ["Blue, like the sky.", "Four.", "A longer third example, to fill the row a bit more.", "Hi"]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    rows = [encoded[:3], encoded[3:]]  # 3 examples in one row, 1 in the other (padded)
    features = [
        {
            "input_ids": [t for ids in row for t in ids],
            "labels": [t for ids in row for t in ids],
            "position_ids": [p for ids in row for p in range(len(ids))],
        }
        for row in rows
    ]
    batch = CausalLmCollator(tokenizer.pad_token_id or 0)(features)
    assert attention.example_bounds(batch["position_ids"])[0] == [
        (0, len(encoded[0])),
        (len(encoded[0]), len(encoded[0]) + len(encoded[1])),
        (len(encoded[0]) + len(encoded[1]), sum(len(e) for e in encoded[:3])),
    ]
    model.eval()  # no dropout either way; gradients still flow
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is None)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)

    def loss_and_grad(per_example: bool):
        model.zero_grad()
        if per_example:
            with attention.segments(batch["position_ids"]):
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss  # transformers' block-diagonal mask over the whole row
        loss.backward()
        return loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    masked = loss_and_grad(False)
    layers = len(model.model.layers)
    assert len(calls) == layers and not any(calls)  # one masked call per layer
    calls.clear()
    per_example = loss_and_grad(True)
    # Row 1: three examples; row 2: one example and its padding. No mask anywhere.
    assert len(calls) == 5 * layers and all(calls)
    torch.testing.assert_close(per_example[0], masked[0], rtol=1e-5, atol=1e-6)
    scale = masked[1].abs().max().item()
    torch.testing.assert_close(per_example[1], masked[1], rtol=1e-4, atol=1e-5 * scale)
    model.zero_grad()
