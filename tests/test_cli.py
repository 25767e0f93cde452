"""The command line as users type it (README and issue examples), in-process for speed."""

from __future__ import annotations

import json

import pytest

from lmtune import cli
from tests.conftest import run_cli


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
        (["compare", "--train", "x.csv", "--epochs", "1"], "no model given"),
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


def test_shared_flags_are_declared_once():
    """train, compare, distill and sweep take the same run flags: same names, help and defaults."""
    import typer.main

    commands = typer.main.get_command(cli.app).commands

    def flags(command: str) -> dict[str, tuple]:
        return {
            p.name: (tuple(p.opts), getattr(p, "help", None), p.default) for p in commands[command].params
        }

    train, compare, distill = flags("train"), flags("compare"), flags("distill")
    for name in ("config", "model", "task", "train_file", "validation", "test", "epochs"):
        assert train[name] == compare[name], name
    assert train["train_file"][0] == ("--train",) and train["epochs"][1] == "Sets train.epochs."
    for name in ("epochs", "set_", "overwrite"):
        assert train[name] == distill[name], name
    assert compare["set_"] == flags("sweep")["set_"] and compare["set_"][0] == ("--set",)


def test_flags_reach_serve_settings_and_export_options(monkeypatch, tmp_path):
    """serve's and export's flags are set onto ServeSettings / ExportOptions by field name."""
    import uvicorn
    from typer.testing import CliRunner

    import lmtune.compress.export as export_mod
    import lmtune.serving.app as app_mod

    seen = {}

    def fake_export(run_dir, to, options):
        seen["export"] = options
        to.mkdir(parents=True)
        (to / export_mod.TABLE_MD).write_text("# export\n")

    monkeypatch.setattr(export_mod, "export_run", fake_export)
    monkeypatch.setattr(app_mod, "create_app", lambda run_dir, extra, settings: seen.update(serve=settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.delenv("LMTUNE_ADMIN_TOKEN", raising=False)
    runner = CliRunner()
    flags = (
        "--no-merge --keep-adapter --int8 --prune 0.3 --prune-heads 2 --recover-steps 3 --onnx --no-benchmark"
    )
    result = runner.invoke(cli.app, ["export", "run", "--to", str(tmp_path / "x"), *flags.split()])
    assert result.exit_code == 0, result.output
    assert seen["export"] == export_mod.ExportOptions(
        merge=False, keep_adapter=True, int8=True, prune=0.3, prune_heads=2, recover_steps=3, onnx=True,
        benchmark=False,
    )  # fmt: skip
    flags = "--max-batch-size 4 --max-wait-ms 2.5 --max-queue 7 --timeout-s 3 "
    flags += "--max-request-items 5 --max-text-chars 99"
    flags += " --no-batching --no-merge --precision bf16"
    result = runner.invoke(cli.app, ["serve", "run", *flags.split()])
    assert result.exit_code == 0, result.output
    assert seen["serve"] == app_mod.ServeSettings(
        max_batch_size=4, max_wait_ms=2.5, max_queue=7, timeout_s=3.0, max_request_items=5, max_text_chars=99,
        batching=False, merge_single_adapter=False, precision="bf16", admin_token=None,
    )  # fmt: skip


def test_listings(capsys, monkeypatch):
    code, stdout, _ = run_cli(["models"], capsys, monkeypatch)
    assert code == 0 and "all-MiniLM-L6-v2" in stdout and "SmolLM2-135M-Instruct" in stdout
    code, stdout, _ = run_cli(["methods"], capsys, monkeypatch)
    assert code == 0 and all(name in stdout for name in ("full", "freeze", "bitfit", "lora"))
    monkeypatch.setattr(cli.console, "width", 400)  # one row per line, nothing wrapped
    code, stdout, _ = run_cli(["methods"], capsys, monkeypatch)
    assert "virtual-tokens" in stdout and "mergeable" in stdout  # what each method declares
    code, stdout, _ = run_cli(["tasks"], capsys, monkeypatch)
    assert code == 0 and "classification" in stdout
    assert "data.label_delimiter" in stdout and "multi-task-member" in stdout


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


def test_allow_code_reaches_only_tasks_that_run_user_code(sentiment_files, tmp_path, capsys, monkeypatch):
    args = ["train", "--model", "all-MiniLM-L6-v2", "--train", str(sentiment_files["train"])]
    code, _, err = run_cli(
        [*args, "--task", "classification", "--allow-code", "-o", str(tmp_path / "r")], capsys, monkeypatch
    )
    assert code == 2 and "unknown key 'task.allow_code'" in " ".join(err.split())
    from lmtune.config import RunConfig

    seen = {}

    def capture(cfg: RunConfig, **_: object) -> None:
        seen["cfg"] = cfg
        raise SystemExit(0)  # the config is what this test is about, not the training

    monkeypatch.setattr("lmtune.run.train", capture)
    monkeypatch.setattr("lmtune.run.prepare_output_dir", lambda *a, **k: "new")
    run_cli([*args, "--task", "grpo", "--allow-code", "-o", str(tmp_path / "g")], capsys, monkeypatch)
    assert isinstance(seen["cfg"], RunConfig) and seen["cfg"].task.options.allow_code is True
