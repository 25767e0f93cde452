"""GGUF export: the file written with the `gguf` package, read back by transformers' own GGUF
loader (logit parity, the same tokenizer and chat template), the Ollama Modelfile, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.conftest import train_sft_run

import lmtune
from lmtune.compress.export import ExportOptions, export_run
from lmtune.compress.gguf_export import load_gguf, logit_parity, write_gguf
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError

CONVERSATION = [{"role": "user", "content": "What colour is box 3?"}]


def render_chatml_modelfile(system: str | None, messages: list[dict[str, str]]) -> str:
    """What Ollama renders from gguf_export.CHATML_TEMPLATE for a conversation, by that
    template's rules (no Go here to run it): system block if any, each turn, generation prompt."""
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    out += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + "<|im_start|>assistant\n"


def sft_run(model: str, out: Path) -> Path:
    records = [{"instruction": f"What colour is box {i}?", "output": f"Box {i} is red."} for i in range(12)]
    return train_sft_run(
        model, records, out, method={"name": "lora", "r": 4}, task={"generation_eval_samples": 2}
    )


@pytest.fixture(scope="module")
def tiny_sft_run(tiny_llama: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sft_run(tiny_llama, tmp_path_factory.mktemp("gguf-runs") / "sft")


# A random tiny model has near ties between its top logits: q8_0's rounding flips a few of them.
@pytest.mark.parametrize(("file_type", "tolerance", "agreement"), [("f16", 1e-2, 1.0), ("q8_0", 5e-2, 0.99)])
def test_export_writes_a_gguf_that_transformers_reads_back_with_the_same_logits(
    tiny_sft_run, tmp_path, file_type, tolerance, agreement
):
    out = tmp_path / "export"
    table = export_run(tiny_sft_run, out, ExportOptions(gguf=file_type, ollama=True, benchmark=False))
    rows = {row["variant"]: row for row in table["variants"]}
    gguf_row, merged = rows["gguf"], rows["merged"]
    assert gguf_row["path"] == "gguf" and (out / "gguf" / f"model-{file_type}.gguf").is_file()
    assert gguf_row["gguf_max_abs_logit_diff"] < tolerance and gguf_row["gguf_top1_agreement"] >= agreement
    assert gguf_row["metric"] == pytest.approx(merged["metric"], rel=1e-2)
    assert "read back by transformers" in gguf_row["notes"] and "ollama create" in gguf_row["notes"]
    assert gguf_row["size_mb"] < merged["size_mb"]  # f16 / q8_0 against the merged fp32 safetensors
    assert "| gguf |" in (out / "export.md").read_text()
    modelfile = (out / "ollama" / "Modelfile").read_text()
    assert (
        modelfile.startswith(f"FROM ../gguf/model-{file_type}.gguf\n")
        and 'PARAMETER stop "<|im_end|>"' in modelfile
    )


def test_the_gguf_carries_the_tokenizer_and_the_chat_template(tiny_sft_run, tmp_path):
    from transformers import AutoTokenizer

    run = lmtune.load_run(tiny_sft_run)
    path = write_gguf(run.model.merge_and_unload(), run.tokenizer, tmp_path / "model-f16.gguf", "f16")
    reread = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("Hello there, box 3 is <|im_start|>red<|im_end|>!", "naïve café 東京"):
        assert reread(text)["input_ids"] == run.tokenizer(text)["input_ids"]
    assert reread.chat_template == run.tokenizer.chat_template
    assert reread.eos_token_id == run.tokenizer.eos_token_id
    assert not path.with_name(path.name + ".partial").exists()


def test_the_modelfile_template_renders_as_the_chat_template(tiny_sft_run, tmp_path):
    from lmtune.compress.gguf_export import ollama_modelfile

    tokenizer = lmtune.load_run(tiny_sft_run).tokenizer
    text = ollama_modelfile(tokenizer, "model-f16.gguf", tmp_path).read_text()
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    for messages in (CONVERSATION, [*CONVERSATION, {"role": "assistant", "content": "Red."}, *CONVERSATION]):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_chatml_modelfile(system, messages) == expected
    with_system = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    expected = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    assert render_chatml_modelfile("Be brief.", CONVERSATION) == expected


def test_refusals_name_what_is_supported(tiny_sft_run, tiny_bert, sentiment_files, tmp_path):
    from tests.conftest import fast_config

    with pytest.raises(LmtuneError, match="choose one of f16, q8_0"):
        export_run(tiny_sft_run, tmp_path / "a", ExportOptions(gguf="q4_k"))
    with pytest.raises(LmtuneError, match="--ollama needs --gguf"):
        export_run(tiny_sft_run, tmp_path / "b", ExportOptions(ollama=True))
    with pytest.raises(LmtuneError, match="--no-merge"):
        export_run(tiny_sft_run, tmp_path / "c", ExportOptions(gguf="f16", merge=False))
    classifier = lmtune.train(
        RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "cls", train={"epochs": 1}))
    )
    with pytest.raises(LmtuneError, match="GGUF export supports LlamaForCausalLM"):
        export_run(classifier.directory, tmp_path / "d", ExportOptions(gguf="f16"))
    assert not (tmp_path / "d" / "gguf").exists()


@pytest.mark.slow
def test_smollm2_q8_0_gguf_generates_what_the_merged_model_generates(tmp_path):
    """The real check: a SmolLM2 LoRA run exported to q8_0 and f16, read back by transformers'
    GGUF loader; greedy answers to fixed prompts compared with the merged model's."""
    run_dir = sft_run("SmolLM2-135M-Instruct", tmp_path / "smol")
    run = lmtune.load_run(run_dir)
    merged = run.model.merge_and_unload().eval()
    prompts = ["What is the capital of France?", "Write a haiku about rain.", "What colour is box 3?"]
    texts = [
        run.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    ids = [run.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    results = {}
    for file_type in ("f16", "q8_0"):
        path = write_gguf(merged, run.tokenizer, tmp_path / "gguf" / f"model-{file_type}.gguf", file_type)
        reread = load_gguf(path)
        batch = {
            "input_ids": torch.tensor([ids[0]]),
            "attention_mask": torch.ones(1, len(ids[0]), dtype=torch.long),
        }
        parity = logit_parity(merged, reread, [batch])
        same = 0
        for prompt_ids in ids:
            x = torch.tensor([prompt_ids])
            a = merged.generate(x, max_new_tokens=16, do_sample=False)
            b = reread.generate(x, max_new_tokens=16, do_sample=False)
            same += int(torch.equal(a, b))
        results[file_type] = {
            **parity,
            "greedy_equal": f"{same}/{len(ids)}",
            "size_mb": path.stat().st_size / 2**20,
        }
    print("SmolLM2 GGUF parity:", results)
    assert results["f16"]["max_abs_logit_diff"] < 0.1 and results["f16"]["greedy_equal"] == "3/3"
    assert (
        results["q8_0"]["top1_agreement"] > 0.95
        and results["q8_0"]["size_mb"] < 0.6 * results["f16"]["size_mb"]
    )
