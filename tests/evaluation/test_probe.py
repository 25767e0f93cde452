"""Counterfactual probes: template filling, fill files, gaps, and `lmtune probe` end to end."""

from __future__ import annotations

import json

import pytest
from tests.conftest import run_cli

from lmtune.errors import LmtuneError
from lmtune.evaluation import probe


def test_fills_make_the_cartesian_product_in_template_order():
    rows = probe.filled_rows(
        "{name} from {city} said {name}", {"city": ["Oslo", "Lima"], "name": ["Ana", "Bo"]}
    )
    assert [r["text"] for r in rows] == [
        "Ana from Oslo said Ana",
        "Ana from Lima said Ana",
        "Bo from Oslo said Bo",
        "Bo from Lima said Bo",
    ]
    assert rows[1]["values"] == {"name": "Ana", "city": "Lima"}
    # Braces inside a value are text, not placeholders.
    assert probe.filled_rows("{x}!", {"x": ["{y}"]})[0]["text"] == "{y}!"


@pytest.mark.parametrize(
    ("template", "fills", "message"),
    [
        ("no placeholder", {"x": ["a"]}, "--template has no placeholder"),
        ("{x} and {y}", {"x": ["a"]}, "placeholder {y} has no values"),
        ("{x}", {"x": ["a"], "z": ["b"]}, "--fill z: the template has no placeholder {z}"),
        ("{} here", {"x": ["a"]}, "is not a plain {name}"),
        ("{x!r}", {"x": ["a"]}, "is not a plain {name}"),
        ("{x", {"x": ["a"]}, "--template:"),
        ("{a}{b}", {"a": ["1", "2", "3"], "b": ["1", "2", "3", "4"]}, "make 12 texts (3 a x 4 b)"),
    ],
)
def test_bad_templates_and_fills_are_one_line_errors(template, fills, message):
    with pytest.raises(LmtuneError) as caught:
        probe.filled_rows(template, fills, max_rows=10)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_fill_files_are_read_safely(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\ufeffAna\n\n  Bo  \nAna\n", encoding="utf-8")
    assert probe.read_values(names, "name") == ["Ana", "Bo"]  # BOM, blanks and repeats dropped
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(LmtuneError, match="has no values"):
        probe.read_values(tmp_path / "empty.txt", "name")
    with pytest.raises(LmtuneError, match="does not exist"):
        probe.read_values(tmp_path / "missing.txt", "name")
    (tmp_path / "latin1.txt").write_bytes(b"Ana\nJos\xe9\n")
    with pytest.raises(LmtuneError, match="line 2: not valid UTF-8"):
        probe.read_values(tmp_path / "latin1.txt", "name")
    big = tmp_path / "big.txt"
    big.write_bytes(b"a\n" * (probe.MAX_FILL_FILE_BYTES // 2 + 1))
    with pytest.raises(LmtuneError, match="larger than"):
        probe.read_values(big, "name")
    with pytest.raises(LmtuneError, match="expected NAME=FILE"):
        probe.parse_fills(["names.txt"])
    with pytest.raises(LmtuneError, match="given twice"):
        probe.parse_fills(["a=x", "a=y"])


def test_gaps_name_the_two_rows_they_lie_between():
    rows = [{"values": {"name": n}, "text": f"{n} ok"} for n in ("Ana", "Bo", "Cy")]
    predictions = [
        {"label": "pos", "scores": {"neg": 0.1, "pos": 0.9}},
        {"label": "neg", "scores": {"neg": 0.7, "pos": 0.3}},
        {"label": "pos", "scores": {"neg": 0.4, "pos": 0.6}},
    ]
    result = probe.probe_predictions(rows, predictions, ["neg", "pos"])
    pos = result["gaps"]["pos"]
    assert pos["gap"] == pytest.approx(0.6)
    assert pos["highest"] == {"values": {"name": "Ana"}, "probability": 0.9}
    assert pos["lowest"] == {"values": {"name": "Bo"}, "probability": 0.3}
    assert result["predicted_labels"] == {"pos": 2, "neg": 1}
    assert result["results"][1]["label"] == "neg"


def test_probe_command(calibrated_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "names.txt").write_text("Ana\nBo\nCy\n", encoding="utf-8")
    (tmp_path / "words.txt").write_text("great\nawful\n", encoding="utf-8")
    out = tmp_path / "probe.json"
    args = ["probe", str(calibrated_run), "--template", "{name} said the film was {word}"]
    fills = ["--fill", f"name={tmp_path / 'names.txt'}", "--fill", f"word={tmp_path / 'words.txt'}"]
    code, stdout, stderr = run_cli([*args, *fills, "--output", str(out)], capsys, monkeypatch)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["rows"] == 6 and result["placeholders"] == ["name", "word"]
    assert result["results"][0]["text"] == "Ana said the film was great"
    assert set(result["gaps"]) == {"negative", "positive"}
    # A sentiment run moves with the sentiment word: the gap lies between a "great" and an "awful" row.
    positive = result["gaps"]["positive"]
    assert (
        positive["highest"]["values"]["word"] == "great" and positive["lowest"]["values"]["word"] == "awful"
    )
    assert "Probability gaps" in stdout

    for bad, message in [
        ([*args, "--fill", f"name={tmp_path / 'nope.txt'}"], "nope.txt: the file does not exist"),
        ([*args, "--fill", f"name={tmp_path / 'names.txt'}"], "placeholder {word} has no values"),
        (["probe", str(calibrated_run), "--template", "plain", *fills], "--template has no placeholder"),
    ]:
        code, _, stderr = run_cli(bad, capsys, monkeypatch)
        assert code == 2 and message in " ".join(stderr.split()), stderr
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_probe_refuses_a_task_without_class_probabilities(calibrated_run, tmp_path, capsys, monkeypatch):
    import yaml

    run = tmp_path / "ner-run"
    run.mkdir()
    (run / "model").mkdir()
    config = yaml.safe_load((calibrated_run / "config.yaml").read_text())
    config["task"] = {"type": "token-classification"}
    config["data"] = {"train": "x.conll", "labels": ["O", "B-PER"]}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    (tmp_path / "names.txt").write_text("Ana\n", encoding="utf-8")
    args = ["probe", str(run), "--template", "{name} ok", "--fill", f"name={tmp_path / 'names.txt'}"]
    code, _, stderr = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "cannot be used for probe" in stderr and "class-probabilities" in stderr
