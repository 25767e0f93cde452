"""Shared fixtures: offline settings, the packaged MiniLM, tiny models and tiny data sets."""

from __future__ import annotations

import csv
import os
import random
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests must not fill the user's tokenization cache (converted models stay in the shared cache).
os.environ.setdefault("LMTUNE_TOKENIZED_CACHE", tempfile.mkdtemp(prefix="lmtune-test-tokenized-"))
# pytest-xdist workers (`make test` runs two) share the cores: each takes its share of torch's
# threads, or their OpenMP pools oversubscribe the cores and spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# Directories whose session fixtures train runs that several of their files use: under xdist's
# loadgroup their files stay on one worker, so each of those fixtures trains once.
SHARED_FIXTURE_DIRS = {"board", "compress", "evaluation", "serving"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts
        group = parts[0] if parts[0] in SHARED_FIXTURE_DIRS else "/".join(parts)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def transformers_process_state_is_restored():
    """Fail the test that leaves transformers' loading stand-ins in place (a tie_weights no-op,
    a patched torch.linspace or default dtype): later tests would fail far from the cause."""
    import sys

    def state() -> tuple:
        import torch

        modeling = sys.modules.get("transformers.modeling_utils")
        tie = modeling.PreTrainedModel.tie_weights if modeling is not None else None
        return tie, torch.linspace, torch.get_default_dtype()

    before = state()
    yield
    after = state()
    if before[0] is None:  # transformers was first imported by this test
        before = (after[0], *before[1:])
    assert after == before, "process-wide state left changed (tie_weights, torch.linspace, default dtype)"


POSITIVE = ["great", "excellent", "wonderful", "fantastic", "lovely", "superb", "brilliant", "delightful"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "bad", "poor", "disappointing", "boring"]
SUBJECTS = [
    "the film",
    "this phone",
    "the hotel",
    "our meal",
    "the service",
    "this book",
    "the app",
    "the show",
]


def separable_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Short reviews whose label a single word decides: learnable in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append({"text": f"{rng.choice(SUBJECTS)} was {word}", "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def separable_splits(root: Path, train: int, validation: int, test: int) -> dict[str, Path]:
    """train/validation/test CSVs of `separable_rows` (seeds 1, 2, 3) in `root`."""
    sizes = {"train": train, "validation": validation, "test": test}
    return {
        split: write_csv(root / f"{split}.csv", separable_rows(n, seed))
        for seed, (split, n) in enumerate(sizes.items(), start=1)
    }


@pytest.fixture
def sentiment_files(tmp_path: Path) -> dict[str, Path]:
    """train/dev/test CSVs of a tiny separable sentiment task."""
    return {
        "train": write_csv(tmp_path / "train.csv", separable_rows(64, 1)),
        "validation": write_csv(tmp_path / "dev.csv", separable_rows(16, 2)),
        "test": write_csv(tmp_path / "test.csv", separable_rows(16, 3)),
    }


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from lmtune.models import resolve_model

    return resolve_model("all-MiniLM-L6-v2").path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer: real code paths, instant training."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return str(directory)


def fast_config(model: str, files: dict[str, Path], output_dir: Path, **sections: dict) -> dict:
    """A run config sized for tests: short sequences, few epochs, no TensorBoard."""
    cfg = {
        "model": model,
        "task": "classification",
        "method": "lora",
        "data": {
            "train": str(files["train"]),
            "validation": str(files["validation"]),
            "test": str(files["test"]),
            "max_length": 32,
        },
        "train": {"epochs": 3, "batch_size": 8, "report_to": ["none"], "logging_steps": 2},
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def train_sft_run(
    model: str, records: list[dict], out: Path, method: str | dict = "lora", task: dict | None = None, **train
) -> Path:
    """A short SFT run on alpaca `records`, which are its validation and test data too: for tests
    that need a finished decoder run (to serve, export, reload), not a good one."""
    import json

    import lmtune
    from lmtune.config import RunConfig

    data = out.parent / f"{out.name}.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    cfg = {
        "model": model,
        "task": {"type": "sft", "sample_generations": 0, "generation_eval_samples": 0, **(task or {})},
        "method": method,
        "data": {"train": str(data), "validation": str(data), "test": str(data), "max_length": 64},
        "train": {
            "max_steps": 2,
            "batch_size": 4,
            "report_to": ["none"],
            "eval_strategy": "no",
            "save_strategy": "no",
            **train,
        },
        "output_dir": str(out),
    }
    lmtune.train(RunConfig.from_dict(cfg))
    return out


@pytest.fixture(scope="session")
def smollm_path() -> str:
    from lmtune.models import resolve_model

    return resolve_model("SmolLM2-135M-Instruct").path


@pytest.fixture(scope="session")
def smol_tokenizer(smollm_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, smollm_path: str) -> str:
    """A 2-layer, 32-wide Llama with the SmolLM2 tokenizer and chat template (decoder tests)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(smollm_path).save_pretrained(directory)
    return str(directory)


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """Run `lmtune ARGS` as the console script does (exit code, stdout, stderr): LmtuneError
    becomes the one-line message and exit code 2, unlike typer's CliRunner."""
    import sys

    from lmtune import cli

    monkeypatch.setattr(sys, "argv", ["lmtune", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def gemma_path() -> str:
    """The packaged multilingual Gemma 3 270M (assembled and converted once per machine, ~70 s)."""
    from lmtune.models import resolve_model

    return resolve_model("gemma-3-270m").path


def save_tiny_gemma(
    directory: Path, vocab_size: int, tokenizer_from: str | None = None, **config: object
) -> str:
    """A 2-layer, 32-wide Gemma 3 causal LM saved in `directory` (with the real Gemma tokenizer
    when `tokenizer_from` names it): the Gemma code paths in seconds."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    settings = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 256,
        **config,
    }
    Gemma3ForCausalLM(Gemma3TextConfig(**settings)).save_pretrained(directory)
    if tokenizer_from is not None:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(directory)
    return str(directory)
