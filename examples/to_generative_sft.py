"""Turn NER or classification data into SFT data, so a decoder learns the task by generating.

Usage: python examples/to_generative_sft.py ner ../shared/data/cluener/train.json cluener_sft.jsonl
       python examples/to_generative_sft.py classification reviews.csv reviews_sft.jsonl [--text review]
NER (CLUENER spans): the answer is the entities as JSON {"type": ["entity", ...]}; train with
`task: {type: sft, answer_format: entities}` for entity P/R/F1 of the generations. Classification
(csv with text and label columns): the answer is the label; `answer_format: label` scores accuracy
and macro F1. The instruction names the label set, so the model need not guess it.
"""

import csv
import json
import sys


def ner_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    types = sorted({kind for r in records for kind in r.get("label", {})})
    instruction = f"找出下面句子中的实体，按类型以 JSON 输出（类型：{'、'.join(types)}）。"
    rows = []
    for r in records:
        entities = {kind: sorted(found) for kind, found in sorted(r.get("label", {}).items())}
        rows.append(
            {
                "instruction": instruction,
                "input": r["text"],
                "output": json.dumps(entities, ensure_ascii=False),
            }
        )
    return rows


def classification_rows(path: str, text: str, label: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))
    labels = sorted({r[label] for r in records})
    instruction = f"Classify the text. Answer with one of: {', '.join(labels)}."
    return [{"instruction": instruction, "input": r[text], "output": r[label]} for r in records]


if __name__ == "__main__":
    kind, source, target, *rest = sys.argv[1:]
    text = rest[rest.index("--text") + 1] if "--text" in rest else "text"
    rows = ner_rows(source) if kind == "ner" else classification_rows(source, text, "label")
    with open(target, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(f"{len(rows)} examples written to {target}")
