"""Runs the compression tests share: trained once per session, read-only afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import fast_config, separable_rows, write_csv


@pytest.fixture(scope="session")
def separable_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("compress-data")
    return {
        "train": write_csv(base / "train.csv", separable_rows(96, 11)),
        "validation": write_csv(base / "dev.csv", separable_rows(16, 12)),
        "test": write_csv(base / "test.csv", separable_rows(32, 13)),
    }


def train_run(model: str, files: dict[str, Path], out: Path, **sections: dict) -> Path:
    import lmtune
    from lmtune.config import RunConfig

    lmtune.train(RunConfig.from_dict(fast_config(model, files, out, **sections)))
    return out


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str, separable_files: dict) -> Path:
    """A tiny BERT fully fine-tuned on the separable set (4 heads per layer for head pruning)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("tiny-bert-4h")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(model_dir)
    out = tmp_path_factory.mktemp("runs") / "tiny-full"
    return train_run(
        str(model_dir),
        separable_files,
        out,
        method="full",
        # 8 epochs make the teacher confident (soft labels worth distilling), not just right.
        train={
            "epochs": 8,
            "learning_rate": 3e-3,
            "batch_size": 8,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
    )


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str, separable_files: dict) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny-lora"
    # Merge parity needs trained (non-zero) LoRA weights, not a good classifier: one epoch.
    train = {"epochs": 1, "learning_rate": 1e-2, "eval_strategy": "no", "save_strategy": "no"}
    return train_run(tiny_bert, separable_files, out, train=train)


@pytest.fixture(scope="session")
def minilm_lora_run(tmp_path_factory: pytest.TempPathFactory, separable_files: dict) -> Path:
    """The packaged MiniLM with LoRA, one short epoch: real weights for merge and ONNX parity."""
    out = tmp_path_factory.mktemp("runs") / "minilm-lora"
    return train_run(
        "all-MiniLM-L6-v2",
        separable_files,
        out,
        data={"max_length": 16},
        train={"epochs": 1, "batch_size": 16, "eval_strategy": "no", "save_strategy": "no"},
    )
