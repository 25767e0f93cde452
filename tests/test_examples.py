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
