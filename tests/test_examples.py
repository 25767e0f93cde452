"""The example configs validate, and the LCSTS converter reads its pseudo-XML leniently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.config import RunConfig

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    cfg = RunConfig.from_yaml(path)
    assert cfg.data.train and cfg.output_dir.startswith("runs/")


def test_lcsts_converter(tmp_path: Path) -> None:
    source = tmp_path / "PART_III.txt"
    source.write_text(
        "<doc id=0>\n  <human_label>5</human_label>\n  <summary>\n   标题一\n  </summary>\n"
        "  <short_text>\n   正文一。\n  </short_text>\n</doc>\n"
        "<doc id=1>\n  <human_label>2</human_label>\n  <summary>低分</summary>\n"
        "  <short_text>不要</short_text>\n</doc>\n"
        "<doc id=2>\n  <summary>没有正文</summary>\n</doc>\n",
        encoding="utf-8",
    )
    target = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "lcsts_to_jsonl.py"), str(source), str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert "1 pairs written" in done.stdout
    expected = {"instruction": "为下面的短文写一个标题式摘要。", "input": "正文一。", "output": "标题一"}
    assert rows == [expected]


def test_generative_formulations_of_ner_and_classification(tmp_path: Path, tiny_llama: str) -> None:
    cluener = tmp_path / "train.json"
    record = {
        "text": "叶老桂在浙商银行",
        "label": {"name": {"叶老桂": [[0, 2]]}, "company": {"浙商银行": [[4, 7]]}},
    }
    cluener.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    script = str(EXAMPLES / "to_generative_sft.py")
    subprocess.run([sys.executable, script, "ner", str(cluener), str(tmp_path / "ner.jsonl")], check=True)
    (row,) = [json.loads(line) for line in (tmp_path / "ner.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["input"] == record["text"] and json.loads(row["output"]) == {
        "company": ["浙商银行"],
        "name": ["叶老桂"],
    }

    reviews = tmp_path / "reviews.csv"
    reviews.write_text("text,label\ngreat film,positive\nawful plot,negative\n", encoding="utf-8")
    subprocess.run(
        [sys.executable, script, "classification", str(reviews), str(tmp_path / "cls.jsonl")], check=True
    )
    rows = [json.loads(line) for line in (tmp_path / "cls.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["output"] for r in rows] == ["positive", "negative"] and "negative, positive" in rows[0][
        "instruction"
    ]

    # An SFT run on it scores its generations as classification.
    from tests.conftest import train_sft_run

    out = train_sft_run(
        tiny_llama, rows * 4, tmp_path / "run", task={"answer_format": "label", "generation_eval_samples": 4}
    )
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert 0 <= test["gen_accuracy"] <= 1 and 0 <= test["gen_f1_macro"] <= 1
