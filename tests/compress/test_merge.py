"""Merging adapters into a plain transformers model: parity, and clear errors where impossible."""

from __future__ import annotations

import pytest
import torch

from lmtune.compress.merge import check_mergeable, merge, save_model
from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext
from lmtune.run import Run

TEXTS = ["the film was great", "this phone was awful", "the hotel was lovely", "our meal was boring"]


def _logits(model, tokenizer, texts=TEXTS):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits


def _assert_merged_parity(run_dir, tmp_path, atol):
    from transformers import AutoModelForSequenceClassification

    run = Run.load(run_dir, device="cpu")
    expected = _logits(run.model, run.tokenizer)
    merged = merge(run.model, run.config.method.name)
    assert not hasattr(merged, "peft_config")
    save_model(merged, run.tokenizer, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    got = _logits(plain, run.tokenizer)
    assert torch.allclose(got, expected, atol=atol), (got - expected).abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    return run


def test_tiny_lora_merge_parity(tiny_lora_run, tmp_path):
    run = _assert_merged_parity(tiny_lora_run, tmp_path, atol=1e-5)
    assert run.config.method.name == "lora"


@pytest.mark.slow
def test_minilm_lora_merge_parity(minilm_lora_run, tmp_path):
    _assert_merged_parity(minilm_lora_run, tmp_path, atol=1e-4)


def test_full_run_is_already_standalone(tiny_full_run):
    run = Run.load(tiny_full_run, device="cpu")
    assert merge(run.model, "full") is run.model


def _tiny_classifier(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)


def test_prompt_tuning_cannot_merge(tiny_bert):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(
        _tiny_classifier(tiny_bert), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    )
    with pytest.raises(LmtuneError, match=r"virtual tokens.*--no-merge"):
        check_mergeable("prompt-tuning")
    with pytest.raises(LmtuneError, match=r"virtual tokens.*--no-merge"):
        merge(model, "prefix-tuning")


def test_bottleneck_adapters_cannot_merge(tiny_bert):
    from lmtune.methods.adapters import HoulsbyAdapterMethod
    from lmtune.tasks.classification import ClassificationTask

    class _Ctx:
        head_names = ClassificationTask.head_names
        peft_head_names = ClassificationTask.peft_head_names

    method = HoulsbyAdapterMethod(HoulsbyAdapterMethod.Options())
    model = method.apply(_tiny_classifier(tiny_bert), MethodContext(task=_Ctx()))
    with pytest.raises(LmtuneError, match=r"bottleneck adapter.*--no-merge"):
        merge(model, "adapter-houlsby")
