"""`lmtune explain` as users type it, and explanations in the report of a run that asks for them
(`evaluation.explain_errors`, `evaluation.faithfulness_samples`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import fast_config, run_cli, separable_splits


@pytest.fixture(scope="module")
def explained_run(tiny_bert, tmp_path_factory) -> Path:
    """A tiny run that explains its test errors and measures faithfulness after training."""
    import lmtune
    from lmtune.config import RunConfig

    root = tmp_path_factory.mktemp("explained")
    files = separable_splits(root, 32, 8, 12)
    cfg = fast_config(
        tiny_bert,
        files,
        root / "run",
        train={"epochs": 1, "eval_strategy": "no", "save_strategy": "no"},
        evaluation={"explain_errors": 2, "faithfulness_samples": 6},
    )
    lmtune.train(RunConfig.from_dict(cfg))
    return root / "run"


def test_training_report_explains_errors_and_records_faithfulness(explained_run):
    metrics = json.loads((explained_run / "metrics.json").read_text())
    scores = metrics["explanations"]
    assert scores["rows"] == 6 and set(scores["random"]) >= {"comprehensiveness", "sufficiency"}
    report = (explained_run / "report.md").read_text()
    assert "Explanation faithfulness" in report and "Explained errors" in report


def test_explain_texts_html_jsonl_faithfulness_and_report(explained_run, tmp_path, capsys, monkeypatch):
    run = str(explained_run)
    code, out, err = run_cli(
        ["explain", run, "--text", "not bad at all", "--text", "the app was great"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "top tokens" in out and "great" in out
    test_csv = explained_run.parent / "test.csv"
    html = tmp_path / "explain.html"
    code, _, err = run_cli(
        ["explain", run, "--input", str(test_csv), "--output", str(html)], capsys, monkeypatch
    )
    assert code == 0, err
    records = [json.loads(line) for line in html.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 12 and "<span" in html.read_text()
    assert {"input", "prediction", "tokens", "words", "explanations"} <= set(records[0])
    args = [
        "explain",
        run,
        "--input",
        str(test_csv),
        "--faithfulness",
        "--rows",
        "4",
        "--update-metrics",
        "--report",
    ]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "comprehensiveness" in out
    assert json.loads((explained_run / "metrics.json").read_text())["explanations"]["rows"] == 4
    report = (explained_run / "report.md").read_text()
    assert report.count("<!-- lmtune explain: begin -->") == 1 and report.count("Explained errors") == 1
    assert "ig, 4 rows" in report  # the training's section, replaced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to explain"),
        (["--text", "x", "--target", "neutral"], "unknown --target label 'neutral'"),
        (["--text", "x", "--faithfulness"], "need a labelled --input"),
        (["--text", "x", "--method", "shap"], "unknown explanation method"),
        (["--input", "EMPTY"], "empty"),
    ],
)
def test_bad_explain_requests_are_one_line(explained_run, args, message, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    code, _, err = run_cli(["explain", str(explained_run), *args], capsys, monkeypatch)
    assert code == 2 and message in err, err
    # One line (after the model's loading progress, which transformers prints itself).
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: "), err
