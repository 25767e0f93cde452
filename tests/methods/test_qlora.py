"""QLoRA's 4-bit base: which layers are quantized, what it saves, and that it still computes."""

from __future__ import annotations

import torch

from lmtune.methods.qlora import KEEP_FULL_PRECISION, QloraOptions, quantize_linear_layers


def test_every_linear_layer_but_the_head_becomes_4bit_and_still_computes(minilm_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    ids = torch.randint(1000, 3000, (4, 12))
    with torch.no_grad():
        reference = model.bert(input_ids=ids).last_hidden_state
    linear_bytes = sum(
        m.weight.numel() * m.weight.element_size()
        for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and not any(k in name.split(".") for k in KEEP_FULL_PRECISION)
    )
    count = quantize_linear_layers(model, QloraOptions(compute_dtype="fp32"), KEEP_FULL_PRECISION)
    assert count == 6 * 6  # q, k, v, attention output, FFN in and out in each of 6 layers
    assert isinstance(model.classifier, torch.nn.Linear) and type(model.classifier) is torch.nn.Linear
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    packed = sum(m.weight.numel() * m.weight.element_size() for m in quantized)
    assert packed * 7 < linear_bytes  # 4 bits (plus constants) instead of 32 per weight
    with torch.no_grad():
        hidden = model.bert(input_ids=ids).last_hidden_state
    similarity = torch.nn.functional.cosine_similarity(hidden.flatten(1), reference.flatten(1))
    assert similarity.min() > 0.95, similarity  # NF4 error over 6 layers (0.96 seen), not a broken layer


def test_a_4bit_run_is_not_merged_into_its_quantized_base(minilm_path):
    import pytest
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from lmtune.compress.merge import merge
    from lmtune.errors import LmtuneError

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    quantize_linear_layers(model, QloraOptions(), KEEP_FULL_PRECISION)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules="all-linear"))
    with pytest.raises(LmtuneError, match="quantized base"):
        merge(model, "qlora")
