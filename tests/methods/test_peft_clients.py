"""A run's model/ read by plain peft and transformers clients, on this machine and another.

A peft adapter's `base_model_name_or_path` names a packaged base by its hub id (not the venv
path it was loaded from), so it loads wherever that model is on the hub or in the hub cache.

peft rebuilds the base from the hub id's own config, which knows no labels, and reads none
from the adapter folder (peft 0.21: `AutoPeftModel.from_pretrained` passes only the caller's
keyword arguments to the base's `from_pretrained`). So lmtune saves the base's transformers
config with its head beside the adapter (`head_config.json`; not `config.json`, which would make
transformers take the folder for a complete model), and a client passes the labels on:

    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoConfig

    head = AutoConfig.from_pretrained("run/model/head_config.json")
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        "run/model", id2label=head.id2label, label2id=head.label2id
    )

A full-model run (`method: full`) is a complete transformers model with its labels in config.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import fast_config, write_csv

import lmtune
from lmtune.config import RunConfig
from lmtune.methods import get_method_class
from lmtune.methods.peft_base import HEAD_CONFIG_NAME

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
WORDS = {
    "positive": ["great", "excellent", "wonderful", "lovely"],
    "negative": ["awful", "terrible", "dreadful", "boring"],
    "neutral": ["average", "ordinary", "okay", "fine"],
}
TEXTS = ["the film was great", "this book was dreadful", "our meal was ordinary"]
# The documented client call, on a run's model/ directory; prints labels and probabilities.
CLIENT = """
import json, sys
import torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoConfig, AutoTokenizer

directory, texts = sys.argv[1], json.loads(sys.argv[2])
head = AutoConfig.from_pretrained(f"{directory}/head_config.json")
model = AutoPeftModelForSequenceClassification.from_pretrained(
    directory, id2label=head.id2label, label2id=head.label2id
).eval()
tokenizer = AutoTokenizer.from_pretrained(directory)
with torch.no_grad():
    probs = [torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits, -1)[0].tolist() for t in texts]
base = model.peft_config["default"].base_model_name_or_path
print(json.dumps({"id2label": model.config.id2label, "base": base, "probs": probs}))
"""


def three_label_files(directory: Path) -> dict[str, Path]:
    """train/dev/test CSVs with three labels (a 2-label head is what a bare base would build)."""
    rng = random.Random(0)

    def rows(n: int) -> list[dict[str, str]]:
        labels = list(WORDS)
        return [
            {"text": f"the show was {rng.choice(WORDS[labels[i % 3]])}", "label": labels[i % 3]}
            for i in range(n)
        ]

    return {
        split: write_csv(directory / f"{split}.csv", rows(n))
        for split, n in (("train", 48), ("validation", 12), ("test", 12))
    }


def lmtune_probs(run: lmtune.run.Run) -> list[list[float]]:
    labels = run.task.labels
    return [[row["scores"][label] for label in labels] for row in run.predict(TEXTS)]


def run_client(model_dir: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(model_dir), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def into_hub_cache(model_dir: str, hub_id: str, cache: Path) -> Path:
    """Lay a model directory out as the hub cache does (`models--org--name/snapshots/<commit>`,
    `refs/main`): with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache, transformers then finds `hub_id`
    as on a machine that downloaded it once."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in Path(model_dir).iterdir():
        if path.is_file():
            (snapshot / path.name).symlink_to(path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return cache


def test_a_saved_adapter_names_its_packaged_base_by_hub_id(minilm_path, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    labels = list(WORDS)
    base = AutoModelForSequenceClassification.from_pretrained(
        minilm_path, id2label=dict(enumerate(labels)), label2id={lb: i for i, lb in enumerate(labels)}
    )
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS"))
    method = get_method_class("lora")
    method(method.Options()).save(model, tmp_path / "saved")

    saved = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == MINILM_HUB_ID
    card = (tmp_path / "saved" / "README.md").read_text()
    assert f"base_model: {MINILM_HUB_ID}" in card and minilm_path not in card
    head = AutoConfig.from_pretrained(tmp_path / "saved" / HEAD_CONFIG_NAME)
    assert head.id2label == dict(enumerate(labels)) and head.num_labels == 3
    assert head.architectures == ["BertForSequenceClassification"]
    assert minilm_path not in (tmp_path / "saved" / HEAD_CONFIG_NAME).read_text()
    # The live model keeps the path it was loaded from.
    assert model.peft_config["default"].base_model_name_or_path == minilm_path
    assert model.get_base_model().name_or_path == minilm_path


def test_a_plain_peft_client_gets_the_run_labels_and_probabilities(tiny_bert, tmp_path):
    cfg = fast_config(tiny_bert, three_label_files(tmp_path), tmp_path / "run", train={"epochs": 2})
    run = lmtune.train(RunConfig.from_dict(cfg))
    client = run_client(run.directory / "model", {})
    assert client["base"] == str(Path(tiny_bert).resolve())  # not packaged: the path stays
    assert client["id2label"] == {str(i): label for i, label in enumerate(run.task.labels)}
    np.testing.assert_allclose(client["probs"], lmtune_probs(run), atol=1e-5)
    card = (run.directory / "README.md").read_text()  # the run's model card shows that call
    assert "AutoPeftModelForSequenceClassification.from_pretrained(" in card and HEAD_CONFIG_NAME in card


def test_lmtune_loads_the_base_from_its_config_not_the_adapter_config(tiny_bert, sentiment_files, tmp_path):
    """`Run.load` resolves the run's `model.name`: the adapter's base name is for other clients."""
    run = lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "run")))
    adapter_config = run.directory / "model" / "adapter_config.json"
    saved = json.loads(adapter_config.read_text())
    adapter_config.write_text(json.dumps({**saved, "base_model_name_or_path": "nobody/no-such-model"}))
    reloaded = lmtune.load_run(run.directory)
    np.testing.assert_allclose(lmtune_probs(reloaded), lmtune_probs(run), atol=1e-5)


def test_a_full_run_is_read_by_plain_transformers(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    files = three_label_files(tmp_path)
    cfg = fast_config(tiny_bert, files, tmp_path / "run", method="full", train={"epochs": 1})
    run = lmtune.train(RunConfig.from_dict(cfg))
    model = AutoModelForSequenceClassification.from_pretrained(run.directory / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run.directory / "model")
    assert model.config.id2label == dict(enumerate(run.task.labels)) and model.config.num_labels == 3
    assert model.config.label2id == {label: i for i, label in enumerate(run.task.labels)}
    with torch.no_grad():
        probs = [
            torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits, -1)[0].tolist() for t in TEXTS
        ]
    np.testing.assert_allclose(probs, lmtune_probs(run), atol=1e-5)


@pytest.mark.slow
def test_an_adapter_of_a_packaged_model_loads_on_another_machine(tmp_path):
    """Another machine: the run's model/ copied elsewhere, no lmtune packaged model, the base
    only in the hub cache under its hub id (offline). peft finds it there; lmtune itself still
    loads its run from the packaged copy (no hub cache in this process)."""
    from lmtune.models import resolve_model

    files = three_label_files(tmp_path)
    cfg = fast_config("all-MiniLM-L6-v2", files, tmp_path / "run", train={"epochs": 2})
    run = lmtune.train(RunConfig.from_dict(cfg))
    elsewhere = shutil.copytree(run.directory / "model", tmp_path / "elsewhere" / "model")
    cache = into_hub_cache(resolve_model("all-MiniLM-L6-v2").path, MINILM_HUB_ID, tmp_path / "hub")
    client = run_client(elsewhere, {"HF_HUB_CACHE": str(cache)})
    assert client["base"] == MINILM_HUB_ID
    assert client["id2label"] == {str(i): label for i, label in enumerate(run.task.labels)}
    np.testing.assert_allclose(client["probs"], lmtune_probs(run), atol=1e-5)
    np.testing.assert_allclose(lmtune_probs(lmtune.load_run(run.directory)), lmtune_probs(run), atol=1e-5)
