"""`lmtune merge-adapters`: peft's combinations of LoRA runs give the expected weighted delta,
the trained heads are averaged, and the result is a run that eval, predict, serve and export take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.compress.conftest import train_run
from typer.testing import CliRunner

from lmtune import cli
from lmtune.compress.merge_adapters import MergeSpec, merge_adapters
from lmtune.errors import LmtuneError
from lmtune.run import load_run

TEXTS = ["the film was great", "this phone was awful", "the hotel was lovely", "our meal was boring"]
FLIP = {"positive": "negative", "negative": "positive"}


@pytest.fixture(scope="module")
def lora_runs(tiny_bert, separable_files, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs on one tiny BERT (one on flipped labels, rank 4) and a BitFit run."""
    import csv

    from tests.conftest import write_csv

    root = tmp_path_factory.mktemp("merge-adapters")
    flipped = {}
    for split, path in separable_files.items():
        rows = [{**r, "label": FLIP[r["label"]]} for r in csv.DictReader(path.open(encoding="utf-8"))]
        flipped[split] = write_csv(root / f"flipped-{split}.csv", rows)
    train = {"epochs": 1, "learning_rate": 5e-3}
    return {
        "a": train_run(tiny_bert, separable_files, root / "a", train=train),
        "b": train_run(tiny_bert, flipped, root / "b", train=train),
        "b-r4": train_run(tiny_bert, flipped, root / "b-r4", train=train, method={"name": "lora", "r": 4}),
        "bitfit": train_run(tiny_bert, separable_files, root / "bitfit", train=train, method="bitfit"),
    }


def merged_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The run's model with its adapter folded in, as a state dict."""
    run = load_run(run_dir)
    return {k: v.clone() for k, v in run.model.merge_and_unload().state_dict().items()}


def test_cat_gives_the_weighted_sum_of_deltas_and_heads_are_averaged(lora_runs, tmp_path, tiny_bert):
    from transformers import AutoModel

    spec = MergeSpec.of([lora_runs["a"], lora_runs["b-r4"]], [0.7, 0.3], "cat")
    out = merge_adapters(spec, tmp_path / "ab")
    merged, a, b = merged_state(out), merged_state(lora_runs["a"]), merged_state(lora_runs["b-r4"])
    base = AutoModel.from_pretrained(tiny_bert).state_dict()
    query = next(k for k in merged if k.endswith("attention.self.query.weight"))
    base_query = base[query.removeprefix("bert.")]
    expected = base_query + 0.7 * (a[query] - base_query) + 0.3 * (b[query] - base_query)
    assert not torch.allclose(a[query], b[query])  # the test can tell the adapters apart
    torch.testing.assert_close(merged[query], expected, atol=1e-6, rtol=1e-5)
    # The heads (modules_to_save, which peft cannot combine) are the weighted mean.
    head = next(k for k in merged if k.startswith("classifier") and k.endswith("weight"))
    torch.testing.assert_close(merged[head], 0.7 * a[head] + 0.3 * b[head])
    record = json.loads((out / "metrics.json").read_text())["merge"]
    assert record["combination"] == "cat" and record["weights"] == [0.7, 0.3] and record["rank"] == 8 + 4
    assert load_run(out).config.method.options.r == 12


def test_the_merged_run_is_a_run_for_eval_predict_serve_and_export(lora_runs, separable_files, tmp_path):
    from fastapi.testclient import TestClient

    from lmtune.serving.app import create_app

    runner = CliRunner()
    args = ["merge-adapters", str(lora_runs["a"]), str(lora_runs["b"]), "-o", str(tmp_path / "ab")]
    result = runner.invoke(cli.app, [*args, "--weights", "0.9,0.1", "--method", "ties", "--density", "0.8"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ab"
    table = (out / "merge.md").read_text()
    assert "ties of 2 LoRA runs (weights 0.9, 0.1, density 0.8)" in table
    assert str(lora_runs["a"]) in table and str(lora_runs["b"]) in table and "| merged |" in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["merge_evaluation"]) == {"data", "merged", str(lora_runs["a"]), str(lora_runs["b"])}
    evaluated = load_run(out).evaluate(separable_files["test"])
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    rows = load_run(out).predict(TEXTS)
    assert [r["text"] for r in rows] == TEXTS
    assert all(set(r["scores"]) == {"negative", "positive"} for r in rows)
    with TestClient(create_app(out)) as client:
        served = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    assert [r["label"] for r in served] == [r["label"] for r in rows]
    result = runner.invoke(cli.app, ["export", str(out), "--to", str(tmp_path / "x"), "--no-benchmark"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "merged" / "model.safetensors").exists()
    # Again without --overwrite: refused; with it: replaced.
    result = runner.invoke(cli.app, args)
    assert isinstance(result.exception, LmtuneError) and "already holds a run" in str(result.exception)
    assert runner.invoke(cli.app, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize(
    ("runs", "kwargs", "message"),
    [
        (["a"], {}, "at least two runs"),
        (["a", "a"], {}, "given twice"),
        (["a", "b"], {"weights": [1.0]}, "1 values for 2 runs"),
        (["a", "b"], {"weights": [1.0, -1.0]}, "must be positive"),
        (["a", "b"], {"combination": "average"}, "not a combination peft knows"),
        (["a", "b"], {"combination": "linear", "density": 0.5}, "--density applies to"),
        (["a", "b"], {"combination": "ties", "density": 1.5}, "in \\(0, 1\\]"),
    ],
)
def test_bad_specs_are_refused(lora_runs, runs, kwargs, message):
    with pytest.raises(LmtuneError, match=message):
        MergeSpec.of([lora_runs[r] for r in runs], **kwargs)


def test_runs_that_cannot_be_combined_are_refused(lora_runs, tmp_path):
    with pytest.raises(LmtuneError, match="not a plain LoRA adapter"):
        merge_adapters(MergeSpec.of([lora_runs["a"], lora_runs["bitfit"]]), tmp_path / "x")
    with pytest.raises(LmtuneError, match="All adapters must have the same r"):
        merge_adapters(MergeSpec.of([lora_runs["a"], lora_runs["b-r4"]]), tmp_path / "y")
    assert not (tmp_path / "y").exists()  # nothing half-written
    with pytest.raises(LmtuneError, match="is one of the source runs"):
        merge_adapters(MergeSpec.of([lora_runs["a"], lora_runs["b"]]), lora_runs["a"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LmtuneError, match="is not an lmtune run"):
        merge_adapters(MergeSpec.of([lora_runs["a"], lora_runs["b"]]), tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_merging_two_minilm_sentiment_runs(tmp_path):
    """Real packaged model: a run and its flipped twin, averaged, land between the two."""
    from tests.serving.conftest import train_run as train_sentiment

    pos = train_sentiment("all-MiniLM-L6-v2", tmp_path / "pos", flipped=False, epochs=2, learning_rate=5e-3)
    neg = train_sentiment("all-MiniLM-L6-v2", tmp_path / "neg", flipped=True, epochs=2, learning_rate=5e-3)
    out = merge_adapters(MergeSpec.of([pos, neg], [0.5, 0.5]), tmp_path / "avg")
    texts = ["the hotel was wonderful", "this book was terrible"]
    p, n, m = ([r["scores"]["positive"] for r in load_run(d).predict(texts)] for d in (pos, neg, out))
    assert p[0] > p[1] and n[0] < n[1]  # opposite runs
    # The average of opposite adapters is less sure than either run on each text.
    for i in range(2):
        assert abs(m[i] - 0.5) < max(abs(p[i] - 0.5), abs(n[i] - 0.5)), (p, n, m)
