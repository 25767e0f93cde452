"""The command line as users type it (README and issue examples), in-process for speed."""

from __future__ import annotations

import json
import sys

import pytest

from lmtune import cli


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["lmtune", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_train_eval_predict_from_flags(sentiment_files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rt"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--model",
            "all-MiniLM-L6-v2",
            "--task",
            "classification",
            "--method",
            "lora",
            "--train",
            str(sentiment_files["train"]),
            "--validation",
            str(sentiment_files["validation"]),
            "--test",
            str(sentiment_files["test"]),
            "--output-dir",
            str(out),
            "--set",
            "train.epochs=3",
            "--set",
            "train.learning_rate=3e-3",
            "--set",
            "data.max_length=32",
            "--set",
            "train.report_to=[none]",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    assert "accuracy" in stdout and (out / "model" / "adapter_model.safetensors").exists()

    code, stdout, stderr = run_cli(
        ["eval", str(out), "--data", str(sentiment_files["test"]), "--output", str(tmp_path / "m.json")],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == json.loads((out / "metrics.json").read_text())["test"]["accuracy"]

    code, _, stderr = run_cli(
        [
            "predict",
            str(out),
            "--input",
            str(sentiment_files["test"]),
            "--output",
            str(tmp_path / "preds.jsonl"),
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and set(rows[0]) == {"text", "label", "scores"}
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-4

    code, stdout, _ = run_cli(["predict", str(out), "--text", "the film was wonderful"], capsys, monkeypatch)
    assert code == 0
    row = json.loads(stdout.strip())
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0.75
    assert row["text"] == "the film was wonderful" and row["label"] == "positive"


def test_train_from_yaml_with_overrides(tiny_bert, sentiment_files, tmp_path, capsys, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_bert}\ntask: classification\nmethod: {{name: lora, r: 4}}\n"
        f"data: {{train: {sentiment_files['train']}, test: {sentiment_files['test']}, max_length: 32}}\n"
        f"train: {{epochs: 1, report_to: [none]}}\noutput_dir: {tmp_path / 'y'}\n"
    )
    code, _, stderr = run_cli(
        ["train", str(config), "--epochs", "2", "--set", "method.r=2"], capsys, monkeypatch
    )
    assert code == 0, stderr
    saved = (tmp_path / "y" / "config.yaml").read_text()
    assert "epochs: 2.0" in saved and "r: 2" in saved


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--model", "all-MiniLM-L6-v2", "--train", "missing.csv"],
            "data file not found: missing.csv",
        ),
        (["train", "--train", "x.csv"], "no model given"),
        (["train", "--model", "no-such-model", "--train", "x.csv"], "cannot load model 'no-such-model'"),
        (["train", "--model", "all-MiniLM-L6-v2", "--method", "lorra"], "did you mean 'lora'"),
        (
            ["train", "--model", "all-MiniLM-L6-v2", "--task", "clasification"],
            "did you mean 'classification'",
        ),
        (
            ["train", "--model", "all-MiniLM-L6-v2", "--set", "train.learnin_rate=1"],
            "did you mean 'train.learning_rate'",
        ),
        (["train", "--model", "all-MiniLM-L6-v2", "--epochs", "-1"], "train.epochs"),
        (["train", "--model", "all-MiniLM-L6-v2", "--set", "trainepochs"], "expected KEY=VALUE"),
        (["train", "no-such-config.yaml"], "config file not found"),
        (["predict", "no-such-run", "--text", "hi"], "not an lmtune run"),
        (["eval", "no-such-run", "--data", "x.csv"], "not an lmtune run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(args, capsys, monkeypatch)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_listings(capsys, monkeypatch):
    code, stdout, _ = run_cli(["models"], capsys, monkeypatch)
    assert code == 0 and "all-MiniLM-L6-v2" in stdout and "SmolLM2-135M-Instruct" in stdout
    code, stdout, _ = run_cli(["methods"], capsys, monkeypatch)
    assert code == 0 and all(name in stdout for name in ("full", "freeze", "bitfit", "lora"))
    code, stdout, _ = run_cli(["tasks"], capsys, monkeypatch)
    assert code == 0 and "classification" in stdout


def test_unknown_predict_option_is_one_line(tiny_bert, sentiment_files, tmp_path, capsys, monkeypatch):
    from lmtune.config import RunConfig
    from lmtune.run import train
    from tests.conftest import fast_config

    out = tmp_path / "run"
    train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, out, train={"epochs": 1})))
    code, _, stderr = run_cli(
        ["predict", str(out), "--text", "hi", "--option", "beams=4"], capsys, monkeypatch
    )
    assert code == 2 and "predict option 'beams': unknown option" in stderr
