"""Shape buckets: batch lengths rounded up to a multiple with the right padding values, the model's
outputs at the real positions unchanged, unknown keys left alone, and a run's batches bucketed."""

from __future__ import annotations

import torch
from transformers import BatchEncoding

from lmtune.training.shape_buckets import (
    BucketedCollator,
    bucketed_length,
    pad_batch_to_bucket,
)


def batch_of(length: int = 5) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(1, 2 * length + 1).reshape(2, length),
        "attention_mask": torch.tensor([[1] * length, [1] * (length - 2) + [0, 0]]),
        "labels": torch.full((2, length), 3),
        "task_ids": torch.tensor([0, 1]),  # not a sequence: never padded
    }


def test_bucketed_length_rounds_up_to_the_multiple():
    assert [bucketed_length(n, 16) for n in (1, 15, 16, 17, 33)] == [16, 16, 16, 32, 48]


def test_right_padding_uses_each_keys_padding_value():
    padded = pad_batch_to_bucket(batch_of(5), 8, pad_token_id=0)
    assert padded["input_ids"].shape == (2, 8)
    assert padded["input_ids"][:, 5:].eq(0).all() and padded["input_ids"][0, :5].tolist() == [1, 2, 3, 4, 5]
    assert padded["attention_mask"][:, 5:].eq(0).all() and padded["attention_mask"][0, :5].eq(1).all()
    assert padded["labels"][:, 5:].eq(-100).all() and padded["labels"][:, :5].eq(3).all()
    assert padded["task_ids"].tolist() == [0, 1]


def test_left_padding_keeps_the_rows_ends_in_place():
    padded = pad_batch_to_bucket(batch_of(5), 8, pad_token_id=7, side="left")
    assert padded["input_ids"][0].tolist() == [7, 7, 7, 1, 2, 3, 4, 5]
    assert padded["attention_mask"][1].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]


def test_an_unknown_sequence_key_or_a_bucketed_batch_is_left_alone():
    unknown = batch_of(5) | {"span_weights": torch.ones(2, 5)}
    assert pad_batch_to_bucket(unknown, 8, 0)["input_ids"].shape == (2, 5)
    exact = batch_of(8)
    assert pad_batch_to_bucket(exact, 8, 0)["input_ids"] is exact["input_ids"]
    assert pad_batch_to_bucket([1, 2], 8, 0) == [1, 2]  # GRPO's prompt rows: not a tensor batch


def test_a_batch_encoding_stays_one():
    padded = pad_batch_to_bucket(BatchEncoding(batch_of(5)), 16, 0)
    assert isinstance(padded, BatchEncoding) and padded["input_ids"].shape == (2, 16)


def test_the_models_outputs_at_real_positions_do_not_change(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    batch = batch_of(5)
    del batch["labels"], batch["task_ids"]
    padded = pad_batch_to_bucket({k: v.clone() for k, v in batch.items()}, 16, 0)
    torch.manual_seed(0)
    for auto in (AutoModelForSequenceClassification, AutoModelForTokenClassification):
        model = auto.from_pretrained(tiny_bert, num_labels=3).eval()
        with torch.no_grad():
            plain, bucketed = model(**batch).logits, model(**padded).logits
        if plain.dim() == 3:
            bucketed = bucketed[:, :5]
        assert torch.allclose(plain, bucketed, atol=1e-5)


def test_the_wrapper_pads_and_forwards_the_collators_attributes(minilm_path):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    inner = DataCollatorWithPadding(tokenizer)
    inner.train_sampler = "the task's sampler"
    collator = BucketedCollator(inner, 16, tokenizer)
    batch = collator([tokenizer("a short one"), tokenizer("and a somewhat longer sentence here")])
    assert batch["input_ids"].shape[1] == 16
    assert collator.train_sampler == "the task's sampler"


def test_a_runs_training_batches_are_bucketed(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    """Through `lmtune.train`: every batch the trainer steps on has a length that is a multiple of 8."""
    from tests.conftest import fast_config

    import lmtune
    from lmtune.training.trainer import LmtuneTrainer

    seen: list[int] = []
    original = LmtuneTrainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):
        seen.append(inputs["input_ids"].shape[1])
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(LmtuneTrainer, "training_step", recording_step)
    cfg = fast_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "run",
        train={"epochs": 1, "pad_to_multiple_of": 8, "eval_strategy": "no", "save_strategy": "no"},
    )
    run = lmtune.train(cfg)
    assert seen and all(length % 8 == 0 for length in seen)
    assert run.metrics["train"]["padded_tokens_per_second"] >= run.metrics["train"]["tokens_per_second"]
