"""Convert LCSTS's pseudo-XML (PART_I/II/III.txt) into alpaca-style JSON Lines for `lmtune train --task sft`.

Usage: python examples/lcsts_to_jsonl.py ../shared/data/lcsts/PART_III.txt lcsts.jsonl [--min-score 3]
Each <doc> becomes {"instruction": "为下面的短文写一个标题式摘要。", "input": short_text, "output": summary};
PART_II/III carry a human relevance score (1-5) and by convention only pairs scored >= 3 are kept.
"""

import json
import re
import sys

DOC = re.compile(r"<doc id=\d+>(.*?)</doc>", re.S)
FIELD = re.compile(r"<(human_label|summary|short_text)>\s*(.*?)\s*</\1>", re.S)


INSTRUCTION = "为下面的短文写一个标题式摘要。"


def convert(source: str, target: str, min_score: int) -> int:
    with open(source, encoding="utf-8") as fh:
        docs = DOC.findall(fh.read())
    rows = []
    for doc in docs:
        fields = dict(FIELD.findall(doc))  # lenient: a doc missing a field is skipped
        if "summary" in fields and "short_text" in fields and int(fields.get("human_label", 5)) >= min_score:
            row = {"instruction": INSTRUCTION, "input": fields["short_text"], "output": fields["summary"]}
            rows.append(row)
    with open(target, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)


if __name__ == "__main__":
    args = sys.argv[1:]
    score = int(args[args.index("--min-score") + 1]) if "--min-score" in args else 3
    print(f"{convert(args[0], args[1], score)} pairs written to {args[1]}")
