"""QLoRA's 4-bit base: which layers are quantized, what it saves, and that it still computes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from tests.conftest import fast_config

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


def test_a_4bit_run_merges_into_its_dequantized_base_in_full_precision(minilm_path):
    """The merged model is plain fp32 transformers (no bitsandbytes layer left) and computes
    what the 4-bit model with its adapter computes (fp32 compute: equal up to rounding)."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    from lmtune.compress.merge import merge

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    quantize_linear_layers(model, QloraOptions(compute_dtype="fp32"), KEEP_FULL_PRECISION)
    # Random B matrices: the adapter changes the outputs, so merging it has something to get right.
    config = LoraConfig(task_type="SEQ_CLS", target_modules="all-linear", init_lora_weights=False)
    adapted = get_peft_model(model, config).eval()
    ids = torch.randint(1000, 3000, (3, 10))
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        base_only = adapted.get_base_model()
        with adapted.disable_adapter():
            without = base_only(input_ids=ids).logits
    merged = merge(adapted, "qlora").eval()
    assert type(merged) is BertForSequenceClassification
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(without, expected, atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_imports_bitsandbytes_after_a_process_deferred_it(tiny_bert, sentiment_files, tmp_path):
    """A fresh process defers bitsandbytes (as `import lmtune` does) and trains LoRA without it;
    qlora then imports it, and peft sees it as after an eager import: `peft.helpers.bnb` is the
    module and peft's availability checks say yes. The reloaded run is 4-bit and predicts the same."""
    lora = fast_config(tiny_bert, sentiment_files, tmp_path / "lora", train={"epochs": 1})
    qlora = fast_config(tiny_bert, sentiment_files, tmp_path / "qlora", method="qlora", train={"epochs": 1})
    code = f"""
import json, sys
from lmtune.deferred_bitsandbytes import defer_bitsandbytes
defer_bitsandbytes()
import lmtune
lmtune.train({lora!r})
before = "bitsandbytes" in sys.modules
run = lmtune.train({qlora!r})
import bitsandbytes, peft.helpers, peft.import_utils
reloaded = lmtune.load_run(run.directory)
texts = ["the film was great", "this book was dreadful"]
print(json.dumps({{
    "before": before,
    "helpers_bnb": peft.helpers.bnb is bitsandbytes,
    "peft_sees_4bit": peft.import_utils.is_bnb_4bit_available(),
    "layers_4bit": sum(isinstance(m, bitsandbytes.nn.Linear4bit) for m in reloaded.model.modules()),
    "trained": run.predict(texts),
    "reloaded": reloaded.predict(texts),
}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["before"] is False, "training LoRA imported bitsandbytes"
    assert report["helpers_bnb"] and report["peft_sees_4bit"]
    assert report["layers_4bit"] == 2 * 6  # q, k, v, attention output, FFN in and out in 2 layers
    for a, b in zip(report["trained"], report["reloaded"], strict=True):
        assert a["label"] == b["label"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


@pytest.mark.slow
def test_export_merges_a_qlora_run_and_reports_both_rows(minilm_path, sentiment_files, tmp_path):
    """`lmtune export` of a QLoRA run: the 4-bit model as trained ('original') beside the merged
    fp32 model, scored on the same test split; their class probabilities agree closely (the
    4-bit layers compute in bf16 by default, the merged model in fp32)."""
    import lmtune
    from lmtune.compress.export import ExportOptions, export_run
    from lmtune.config import RunConfig

    cfg = fast_config(
        "all-MiniLM-L6-v2", sentiment_files, tmp_path / "run", method="qlora", train={"epochs": 2}
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    table = export_run(run.directory, tmp_path / "export", ExportOptions(benchmark=False))
    rows = {row["variant"]: row for row in table["variants"]}
    print("QLoRA 4-bit vs merged fp32:", rows["original"]["metrics"], rows["merged"]["metrics"])
    assert rows["merged"]["metric"] == pytest.approx(rows["original"]["metric"], abs=1 / 16)
    assert rows["merged"]["size_mb"] > rows["original"]["size_mb"]  # the whole fp32 model, not an adapter
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export" / "merged").eval()
    texts = ["the film was great", "this book was dreadful"]
    batch = run.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = merged(**batch).logits.softmax(-1)
    four_bit = torch.tensor(
        [[p["scores"][label] for label in ("negative", "positive")] for p in run.predict(texts)]
    )
    assert torch.allclose(plain, four_bit, atol=0.02), (plain, four_bit)


# ---- LoftQ: the adapter starts at each layer's quantization error ----------------------------------
def qlora_model(model_path: str, files: dict, out, init: str) -> torch.nn.Module:
    """MiniLM's classifier with qlora applied at `init` (fp32 compute, so only NF4 errs)."""
    from transformers import AutoModelForSequenceClassification

    from lmtune.config import RunConfig
    from lmtune.methods import get_method_class
    from lmtune.methods.base import MethodContext
    from lmtune.tasks import get_task_class

    method_section = {"name": "qlora", "init": init, "compute_dtype": "fp32"}
    cfg = RunConfig.from_dict(fast_config(model_path, files, out, method=method_section))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2).eval()
    method = get_method_class("qlora")(cfg.method.options)
    return method.apply(model, MethodContext(task=get_task_class("classification")(cfg))).eval()


def test_loftq_offsets_each_layers_quantization_error(minilm_path, sentiment_files, tmp_path):
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(minilm_path).eval()
    default = qlora_model(minilm_path, sentiment_files, tmp_path / "d", "default")
    loftq = qlora_model(minilm_path, sentiment_files, tmp_path / "l", "loftq")
    import bitsandbytes as bnb

    checked = 0
    for path, module in loftq.named_modules():
        if not isinstance(module, LoraLayer) or not isinstance(module.base_layer, bnb.nn.Linear4bit):
            continue
        base = module.base_layer
        weight = reference.get_submodule(path.split("base_model.model.bert.", 1)[1]).weight
        quantized = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
        update = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
        error = weight - quantized
        # The update is the best rank-8 approximation of the error (Eckart-Young): the rest of
        # the error is exactly the part its singular values beyond the 8th carry.
        singular = torch.linalg.svdvals(error)
        torch.testing.assert_close(
            torch.linalg.norm(error - update), singular[8:].square().sum().sqrt(), rtol=1e-3, atol=1e-5
        )
        checked += 1
    assert checked == 6 * 6  # every 4-bit linear layer of the 6 blocks
    ids = torch.randint(1000, 3000, (4, 12))
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        drift = {
            name: (m.base_model.model.bert(input_ids=ids).last_hidden_state - expected).norm()
            for name, m in (("default", default), ("loftq", loftq))
        }
    assert drift["loftq"] < drift["default"], drift  # starts closer to the full-precision model


def test_a_loftq_run_trains_and_reloads_identically(tiny_bert, sentiment_files, tmp_path):
    import lmtune
    from lmtune.config import RunConfig
    from lmtune.run import load_run

    section = {"name": "qlora", "init": "loftq", "r": 4, "compute_dtype": "fp32"}
    out = tmp_path / "run"
    run = lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, out, method=section)))
    texts = ["the film was great", "this phone was awful"]
    saved = json.loads((out / "model" / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True  # loading quantizes the base again and takes the factors
    first, second = run.predict(texts), load_run(out).predict(texts)
    for a, b in zip(first, second, strict=True):
        assert a["label"] == b["label"]
        assert list(a["scores"].values()) == pytest.approx(list(b["scores"].values()), abs=1e-5)
