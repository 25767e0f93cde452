"""Extractive question answering (SQuAD 1.1 / 2.0): find the answer span in a context.

Data is SQuAD-format JSON or flat rows (`question`, `context`, and `answers` as
{"text": [...], "answer_start": [...]} or `answer`/`answer_start` columns). Every
answer_start is checked against the context: a wrong offset is repaired when the answer text
occurs exactly once in the context (and counted in the data report), otherwise it is an error
naming the record. Long contexts are split into overlapping windows (`doc_stride` tokens of
overlap); offsets map token spans back to characters. Post-processing keeps only the n-best
start/end candidates per window, so no logits are accumulated. Metrics are the official SQuAD
exact match and F1 (v2.0 rules for unanswerable questions).
"""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lmtune.data import checks
from lmtune.data.readers import Table, read_table
from lmtune.data.splits import Carving, SplitRecords
from lmtune.errors import LmtuneError
from lmtune.tasks.base import EvalResult, Rows, Task, inference_batches
from lmtune.tasks.classification import _DropLengthCollator, apply_dropout, right_padding


class QuestionAnsweringOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_stride: int = Field(default=128, ge=0, description="Tokens shared by consecutive context windows.")
    allow_unanswerable: bool = Field(
        default=False,
        description="SQuAD 2.0: questions may have no answer (predict '' when the null score wins); "
        "otherwise unanswerable training questions are dropped.",
    )
    n_best: int = Field(default=20, ge=1, description="Start and end candidates kept per window.")
    max_answer_length: int = Field(default=30, ge=1, description="Longest answer, in tokens.")
    null_threshold: float = Field(
        default=0.0, description="With allow_unanswerable: answer '' when null score - best span > this."
    )


# What reading repairs or fills in (counted in the data report): a wrong answer_start, a missing one.
ANSWER_FIXES = ("repaired_answer_starts", "located_answer_starts")


# ---- official SQuAD metric (v1.1/v2.0 evaluate script, re-implemented: it is not a package) ----------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation and articles (a, an, the), collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:  # v2.0: an empty answer scores 1 only against an empty answer
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match and F1 (0-100), each the max over the reference answers ([] = unanswerable)."""
    em = f1 = 0.0
    for pred, golds in zip(predictions, references, strict=True):
        golds = [g for g in golds if normalize_answer(g)] or [""]
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    n = max(1, len(predictions))
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


class QuestionAnsweringTask(Task):
    name: ClassVar[str] = "question-answering"
    description: ClassVar[str] = "Extract the answer span from a context (SQuAD 1.1/2.0 format or flat rows)."
    Options = QuestionAnsweringOptions
    peft_task_type: ClassVar[str] = "QUESTION_ANS"
    head_names: ClassVar[tuple[str, ...]] = ("qa_outputs",)
    peft_head_names: ClassVar[tuple[str, ...]] = ("qa_outputs",)
    default_metric: ClassVar[str] = "f1"
    prediction_view: ClassVar[str] = "span"
    input_fields: ClassVar[tuple[str, ...]] = ("question", "context")
    capabilities: ClassVar[frozenset[str]] = frozenset({"token-attributions"})

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.labels = None

    # ---- reading and checking -----------------------------------------------------------------
    def _read(self, path: str, need_answers: bool) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Records {id, question, context, answers: [(text, start)], where}; counts of what was fixed."""
        info = dict.fromkeys(ANSWER_FIXES, 0)
        squad = _read_squad(path) if Path(path).suffix.lower() == ".json" else None
        if squad is not None:
            raw = squad
        else:
            raw = self._read_flat(read_table(path, self.cfg.data.format), need_answers)
        records = []
        for r in raw:
            if need_answers:
                r["answers"] = [self._check_answer(r, text, start, info) for text, start in r["answers"]]
            records.append(r)
        return records, info

    def _read_flat(self, table: Table, need_answers: bool) -> list[dict[str, Any]]:
        question = checks.find_column(
            table, self.cfg.data.text_column, ("question", "query"), "question", "data.text_column"
        )
        context = checks.find_column(
            table,
            self.cfg.data.text_pair_column,
            ("context", "passage", "paragraph"),
            "context",
            "data.text_pair_column",
        )
        lowered = {c.lower(): c for c in table.columns}
        records = []
        for i in range(len(table)):
            q, c = checks.text_value(table, i, question), table.rows[i].get(context)
            if q is None or not isinstance(c, str) or not c.strip():
                raise LmtuneError(
                    f"{table.where(i)}: the question or the context is empty",
                    hint="fill both or remove the row",
                )
            answers: list[tuple[str, int | None]] = []
            if "answers" in lowered:
                answers = _parse_answers(table, i, lowered["answers"])
            elif "answer" in lowered or "answer_text" in lowered:
                col = lowered.get("answer", lowered.get("answer_text"))
                text = table.rows[i].get(col)
                start = table.rows[i].get(lowered["answer_start"]) if "answer_start" in lowered else None
                if isinstance(text, str) and text != "":
                    answers = [(text, _as_int(table, i, lowered.get("answer_start"), start))]
            elif need_answers:
                raise LmtuneError(
                    f"{table.path}: no answers column (columns: {', '.join(table.columns)})",
                    hint='add \'answers\' ({"text": [...], "answer_start": [...]}) '
                    "or 'answer' and 'answer_start'",
                )
            rid = table.rows[i].get("id", table.rows[i].get("qid"))
            records.append(
                {
                    "id": str(rid) if rid is not None else str(table.row_numbers[i]),
                    "question": q,
                    "context": c,
                    "answers": answers,
                    "where": table.where(i),
                }
            )
        return records

    @staticmethod
    def _check_answer(
        record: dict[str, Any], text: str, start: int | None, info: dict[str, int]
    ) -> tuple[str, int]:
        context = record["context"]
        if start is not None and context[start : start + len(text)] == text:
            return text, start
        found = [m.start() for m in re.finditer(re.escape(text), context)]
        if start is None and found:
            # No offset given: the first occurrence is the usual convention.
            info["located_answer_starts"] += 1
            return text, found[0]
        if len(found) == 1:
            info["repaired_answer_starts"] += 1
            return text, found[0]
        at = (
            f"answer_start {start} points at {context[start : start + len(text)]!r}"
            if start is not None
            else ""
        )
        why = "does not occur in the context" if not found else f"occurs {len(found)} times in the context"
        raise LmtuneError(
            f"{record['where']}: answer {text!r} {why}" + (f"; {at}" if at else ""),
            hint="fix answer_start (a character offset into the context) or the answer text",
        )

    def _drop_unanswerable(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        if self.options.allow_unanswerable:
            return records, 0
        kept = [r for r in records if r["answers"]]
        return kept, len(records) - len(kept)

    # ---- the hooks of Task.prepare_data -------------------------------------------------------------
    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
        records, info = self._read(path, need_answers=True)
        if split is None:  # a file `lmtune eval` scores keeps its unanswerable questions
            return records, info
        records, dropped = self._drop_unanswerable(records)
        if split == "train":
            if not records:
                raise LmtuneError(
                    f"{path}: no answerable questions",
                    hint="set task option allow_unanswerable: true for SQuAD 2.0",
                )
            info["dropped_unanswerable_train"] = dropped
        return records, info

    def carving(self) -> Carving:
        # Hold out whole contexts, so no test question is about a paragraph seen in training.
        return Carving(group=lambda r: r["context"], group_noun="contexts")

    def dedup_key(self, record: dict[str, Any]) -> tuple[str, str, tuple[tuple[str, int], ...]]:
        return record["question"], record["context"], tuple(record["answers"])

    def overlap_key(self, record: dict[str, Any]) -> str:
        return record["question"] + "\t" + record["context"]

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        splits, infos = prepared.records, prepared.infos
        return {
            "rows": prepared.rows(),
            "contexts": {name: len({r["context"] for r in rows}) for name, rows in splits.items()},
            "unanswerable": {name: sum(1 for r in rows if not r["answers"]) for name, rows in splits.items()},
            "carved_from_train": prepared.carved,
            **{key: sum(info[key] for info in infos.values()) for key in ANSWER_FIXES},
            "dropped_unanswerable_train": infos["train"]["dropped_unanswerable_train"],
            "dropped_duplicates_train": prepared.dropped_duplicates,
            "overlap_train_test": prepared.leakage(self.overlap_key)["overlap_train_test"],
        }

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        return Dataset.from_dict(
            {
                "id": [r["id"] for r in records],
                "question": [r["question"] for r in records],
                "context": [r["context"] for r in records],
                "answer_text": [[t for t, _ in r["answers"]] for r in records],
                "answer_start": [[s for _, s in r["answers"]] for r in records],
            }
        )

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        records, _ = self._read(path, need_answers=False)
        return [{"question": r["question"], "context": r["context"]} for r in records]

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        for key in ("question", "context"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise LmtuneError(f"input {index + 1}: expected '{key}', a non-empty string")

    # ---- model ---------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from transformers import AutoConfig

        from lmtune.tasks.backbone_heads import load_head_model

        trust = self.cfg.model.trust_remote_code
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        apply_dropout(config, self.cfg.train.dropout)
        if getattr(config, "pad_token_id", None) is None:  # decoders: windows are padded
            config.pad_token_id = config.eos_token_id if isinstance(config.eos_token_id, int) else None
        try:
            # Architectures without a QA class in transformers (Gemma 3) get the generic head
            # composed over their backbone (tasks/backbone_heads.py).
            return load_head_model(path, config, "question-answering", trust)
        except ValueError as exc:
            raise LmtuneError(
                f"model '{self.cfg.model.name}' has no question-answering head "
                f"({str(exc).splitlines()[0][:150]})",
                hint="use an encoder such as all-MiniLM-L6-v2 (BERT, RoBERTa, DeBERTa ...)",
            ) from None

    def _features(
        self,
        tokenizer: Any,
        questions: list[str],
        contexts: list[str],
        answers: list[list[tuple[str, int]]] | None,
    ) -> tuple[list[dict[str, Any]], list[tuple[int, list[tuple[int, int] | None]]]]:
        """Model features (one per window) and, per feature, (example index, context offsets or None)."""
        if not getattr(tokenizer, "is_fast", False):
            raise LmtuneError(
                f"question answering needs a fast tokenizer (offsets); {type(tokenizer).__name__} is not",
                hint="choose a model that ships tokenizer.json",
            )
        max_length = self.cfg.data.max_length
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        q_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        longest = max(q_lengths, default=0)
        room = max_length - specials - longest
        if room < 16:
            i = q_lengths.index(longest)
            raise LmtuneError(
                f"question {i + 1} ({longest} tokens) leaves under 16 context tokens "
                f"in data.max_length={max_length}",
                hint="raise data.max_length or shorten the question",
            )
        # The tokenizer needs overlap < the room left for the context in every window.
        stride = min(self.options.doc_stride, room // 2)
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        features: list[dict[str, Any]] = []
        maps: list[tuple[int, list[tuple[int, int] | None]]] = []
        keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        for f, example in enumerate(enc["overflow_to_sample_mapping"]):
            sequence_ids = enc.sequence_ids(f)
            offsets = [
                tuple(o) if s == 1 else None
                for o, s in zip(enc["offset_mapping"][f], sequence_ids, strict=True)
            ]
            feature = {k: enc[k][f] for k in keep}
            feature["length"] = len(enc["input_ids"][f])
            if answers is not None:
                start_pos = end_pos = 0  # [CLS]: no answer in this window
                for text, start in answers[example][:1]:
                    end = start + len(text)
                    inside = [t for t, o in enumerate(offsets) if o is not None]
                    if inside and offsets[inside[0]][0] <= start and offsets[inside[-1]][1] >= end:
                        start_pos = next(t for t in inside if offsets[t][1] > start)
                        end_pos = next(t for t in reversed(inside) if offsets[t][0] < end)
                feature["start_positions"], feature["end_positions"] = start_pos, end_pos
            features.append(feature)
            maps.append((example, offsets))
        return features, maps

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        from datasets import Dataset

        answers = _answers(dataset) if "answer_text" in dataset.column_names else None
        features, _ = self._features(tokenizer, list(dataset["question"]), list(dataset["context"]), answers)
        return Dataset.from_dict({k: [f[k] for f in features] for k in (features[0] if features else {})})

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return _DropLengthCollator(
            DataCollatorWithPadding(
                right_padding(tokenizer), pad_to_multiple_of=8 if torch.cuda.is_available() else None
            )
        )

    # ---- inference ------------------------------------------------------------------------------
    def _answers_for(
        self, model: Any, tokenizer: Any, questions: list[str], contexts: list[str], batch_size: int
    ) -> list[dict[str, Any]]:
        """Best answer per example: {answer, score, start, end} (empty answer: start = end = -1)."""
        o = self.options
        features, maps = self._features(tokenizer, questions, contexts, None)
        # Per example: the n-best (score, char start, char end) spans seen so far, and the null score.
        candidates: list[list[tuple[float, int, int]]] = [[] for _ in questions]
        null: list[float] = [float("inf")] * len(questions)
        for index, batch in inference_batches(self, model, features, self.collator(tokenizer), batch_size):
            out = model(**batch)
            starts, ends = out.start_logits.float(), out.end_logits.float()
            k = min(o.n_best, starts.shape[1])
            top_s, arg_s = (t.cpu().numpy() for t in starts.topk(k, dim=-1))
            top_e, arg_e = (t.cpu().numpy() for t in ends.topk(k, dim=-1))
            cls_scores = (starts[:, 0] + ends[:, 0]).cpu().numpy()
            for row, f in enumerate(index):
                example, offsets = maps[f]
                # HF's recipe: the null answer's score is the lowest [CLS] score over windows.
                null[example] = min(null[example], float(cls_scores[row]))
                found = candidates[example]
                for si, s in zip(arg_s[row], top_s[row], strict=True):
                    for ei, e in zip(arg_e[row], top_e[row], strict=True):
                        if (
                            si >= len(offsets)
                            or ei >= len(offsets)
                            or offsets[si] is None
                            or offsets[ei] is None
                            or ei < si
                            or ei - si + 1 > o.max_answer_length
                        ):
                            continue
                        found.append((float(s + e), offsets[si][0], offsets[ei][1]))
                if len(found) > o.n_best:
                    found.sort(reverse=True)
                    del found[o.n_best :]
        results = []
        for i, context in enumerate(contexts):
            found = sorted(candidates[i], reverse=True)
            scores = [c[0] for c in found] + ([null[i]] if o.allow_unanswerable else [])
            probs = _softmax(scores) if scores else []
            best = {"answer": "", "score": 0.0, "start": -1, "end": -1}
            if found:
                _, a, b = found[0]
                best = {"answer": context[a:b], "score": probs[0], "start": a, "end": b}
            if o.allow_unanswerable and (not found or null[i] - found[0][0] > o.null_threshold):
                best = {"answer": "", "score": probs[-1], "start": -1, "end": -1}
            best["score"] = round(float(best["score"]), 6)
            results.append(best)
        return results

    # ---- metrics --------------------------------------------------------------------------------
    def trainer_metrics(self) -> Any:
        def compute(eval_pred: Any) -> dict[str, float]:
            # Per window and in tokens (the Trainer has no offsets): argmax start/end against the
            # gold token span; the final evaluation computes the official metrics on text.
            start_logits, end_logits = eval_pred.predictions[:2]
            gold_s, gold_e = (
                eval_pred.label_ids[:2]
                if isinstance(eval_pred.label_ids, tuple | list)
                else eval_pred.label_ids.T
            )
            pred_s, pred_e = np.asarray(start_logits).argmax(-1), np.asarray(end_logits).argmax(-1)
            em = f1 = 0.0
            for ps, pe, gs, ge in zip(pred_s, pred_e, gold_s, gold_e, strict=True):
                pred = set(range(ps, pe + 1)) if pe >= ps and ps > 0 else set()
                gold = set(range(gs, ge + 1)) if gs > 0 else set()
                em += float(pred == gold)
                same = len(pred & gold)
                f1 += float(pred == gold) if not pred or not gold else (2 * same / (len(pred) + len(gold)))
            n = max(1, len(pred_s))
            return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}

        return compute

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        found = self._answers_for(
            model, tokenizer, list(dataset["question"]), list(dataset["context"]), batch_size
        )
        predictions = [f["answer"] for f in found]
        references = list(dataset["answer_text"])
        metrics: dict[str, Any] = {**squad_scores(predictions, references), "n": len(predictions)}
        has = [i for i, golds in enumerate(references) if golds]
        if self.options.allow_unanswerable and len(has) < len(references):
            no = [i for i, golds in enumerate(references) if not golds]
            for name, part in (("has_answer", has), ("no_answer", no)):
                sub = squad_scores([predictions[i] for i in part], [references[i] for i in part])
                metrics[f"{name}_exact_match"], metrics[f"{name}_f1"] = sub["exact_match"], sub["f1"]
        records = _records(dataset, predictions, references)
        misses = [
            {"question": r["question"], "answers": r["gold"], "prediction": r["predicted"]}
            for r in records
            if not r["exact"]
        ][:5]
        return EvalResult(metrics=metrics, details={"misses": misses}, records=records)

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        if not inputs:
            return []
        questions = [str(i["question"]).strip() for i in inputs]
        contexts = [str(i["context"]) for i in inputs]
        found = self._answers_for(model, tokenizer, questions, contexts, batch_size)
        return [{"question": q, **f} for q, f in zip(questions, found, strict=True)]

    # ---- explanations ---------------------------------------------------------------------------
    def attribution_row(
        self, model: Any, tokenizer: Any, item: dict[str, Any], target: str | None, options: Any
    ) -> Any:
        """The question and the context's first window as one row. Targets: the start logit and
        the end logit of the best span in that window, attributed apart (`target`: start or end)."""
        from lmtune.evaluation.explain import (
            AttributionTarget,
            ExplainRow,
            special_positions,
            words_of_encoding,
        )
        from lmtune.tasks.base import model_device

        if target not in (None, "start", "end"):
            raise LmtuneError(f"unknown --target '{target}' for question answering", hint="use start or end")
        self.check_input(0, item)
        question, context = str(item["question"]).strip(), str(item["context"])
        max_length = self.cfg.data.max_length
        enc = tokenizer(
            [question],
            [context],
            truncation="only_second",
            max_length=max_length,
            return_offsets_mapping=True,
        )
        features = {key: enc[key][0] for key in enc if key != "offset_mapping"}
        offsets = enc["offset_mapping"][0]
        inside = [p for p, sequence in enumerate(enc.sequence_ids(0)) if sequence == 1]
        model.eval()
        with torch.no_grad():
            out = model(**{key: torch.tensor([v], device=model_device(model)) for key, v in features.items()})
        span = _best_span(out.start_logits[0].float(), out.end_logits[0].float(), inside, self.options)
        prediction = self.predict(model, tokenizer, [item], 1)[0]
        targets = []
        if span is not None:
            prediction["explained_span"] = context[offsets[span[0]][0] : offsets[span[1]][1]]
            for name, position in zip(("start", "end"), span, strict=True):
                if target in (None, name):
                    targets.append(AttributionTarget(name, "logit", _span_logit(name, position), [position]))
        cut = bool(inside) and offsets[inside[-1]][1] < len(context.rstrip())
        return ExplainRow(
            item=item,
            prediction=prediction,
            features=features,
            tokens=tokenizer.convert_ids_to_tokens(features["input_ids"]),
            words=words_of_encoding(enc, 0, [("question", question), ("context", context)]),
            fixed=special_positions(tokenizer, features["input_ids"]),
            targets=targets,
            note="explained the context's first window (data.max_length)" if cut else None,
        )

    # ---- report ---------------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.report import markdown_table, section

        lines: list[str] = []
        for split, result in results.items():
            if misses := result.details.get("misses"):
                rows = ([m["question"], " / ".join(m["answers"]), m["prediction"]] for m in misses)
                header = ["question", "gold answers", "prediction"]
                table = markdown_table(
                    header, ([c or "(none)" for c in row] for row in rows), left=3, width=150
                )
                lines += section(f"Missed answers ({split}, first {len(misses)})", table)
        return lines


# ---- readers ----------------------------------------------------------------------------------------
def _read_squad(path: str) -> list[dict[str, Any]] | None:
    """Records of a SQuAD-format file, or None when the JSON is not SQuAD-shaped."""
    file = Path(path)
    if not file.is_file():
        return None  # read_table raises the not-found error
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # read_table reports where the file is broken
    articles = data.get("data") if isinstance(data, dict) else None
    if not (
        isinstance(articles, list)
        and articles
        and isinstance(articles[0], dict)
        and "paragraphs" in articles[0]
    ):
        return None
    records = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            context = paragraph.get("context")
            where = f"{path}, data[{a}].paragraphs[{p}]"
            if not isinstance(context, str) or not context.strip():
                raise LmtuneError(
                    f"{where}: 'context' is missing or empty", hint="give every paragraph a context"
                )
            for q, qa in enumerate(paragraph.get("qas") or []):
                at = f"{where}.qas[{q}]"
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise LmtuneError(f"{at}: 'question' is missing or empty")
                answers = []
                if not qa.get("is_impossible", False):
                    for n, ans in enumerate(qa.get("answers") or []):
                        if not isinstance(ans, dict) or not isinstance(ans.get("text"), str):
                            raise LmtuneError(f"{at}.answers[{n}]: expected {{'text', 'answer_start'}}")
                        start = ans.get("answer_start")
                        if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
                            raise LmtuneError(
                                f"{at}.answers[{n}]: answer_start must be an integer, got {start!r}"
                            )
                        answers.append((ans["text"], start))
                records.append(
                    {
                        "id": str(qa.get("id", f"{a}-{p}-{q}")),
                        "question": question.strip(),
                        "context": context,
                        "answers": answers,
                        "where": f"{at} (id {qa.get('id')})" if qa.get("id") is not None else at,
                    }
                )
    return records


def _as_int(table: Table, index: int, column: str | None, value: Any) -> int | None:
    if checks.is_missing(value) or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise LmtuneError(
            f"{table.where(index, column)}: answer_start must be an integer, got {value!r}"
        ) from None
    if isinstance(value, float) and not value.is_integer():
        raise LmtuneError(f"{table.where(index, column)}: answer_start must be an integer, got {value!r}")
    return number


def _parse_answers(table: Table, index: int, column: str) -> list[tuple[str, int | None]]:
    value = table.rows[index].get(column)
    where = table.where(index, column)
    if isinstance(value, str):  # CSV/TSV cells hold the object as JSON text
        try:
            value = json.loads(value) if value.strip() else {"text": [], "answer_start": []}
        except json.JSONDecodeError:
            raise LmtuneError(
                f'{where}: expected JSON like {{"text": [...], "answer_start": [...]}}'
            ) from None
    if isinstance(value, list):  # [{"text", "answer_start"}, ...] as SQuAD writes them
        value = {
            "text": [v.get("text") for v in value],
            "answer_start": [v.get("answer_start") for v in value],
        }
    if not isinstance(value, dict) or not isinstance(value.get("text"), list):
        raise LmtuneError(f'{where}: expected {{"text": [...], "answer_start": [...]}}, got {value!r}'[:300])
    texts, starts = value["text"], value.get("answer_start") or [None] * len(value["text"])
    if len(starts) != len(texts):
        raise LmtuneError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
    out = []
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str):
            raise LmtuneError(f"{where}: answer texts must be strings, got {text!r}")
        out.append((text, _as_int(table, index, column, start)))
    return out


def _records(dataset: Any, predictions: list[str], references: list[list[str]]) -> list[dict[str, Any]]:
    """One record per question: {row, question, context, gold (answer texts; [] unanswerable),
    predicted, exact, f1 (0-100, as metrics.json's), correct (= exact)}."""
    records = []
    rows = zip(dataset["question"], dataset["context"], references, predictions, strict=True)
    for i, (question, context, golds, predicted) in enumerate(rows):
        score = squad_scores([predicted], [golds])
        exact = bool(score["exact_match"])
        records.append(
            {
                "row": i,
                "question": question,
                "context": context,
                "gold": list(golds),
                "predicted": predicted,
                "exact": exact,
                "f1": round(score["f1"], 4),
                "correct": exact,
            }
        )
    return records


def _answers(dataset: Any) -> list[list[tuple[str, int]]]:
    return [
        list(zip(t, s, strict=True))
        for t, s in zip(dataset["answer_text"], dataset["answer_start"], strict=True)
    ]


def _best_span(
    starts: torch.Tensor, ends: torch.Tensor, inside: list[int], options: QuestionAnsweringOptions
) -> tuple[int, int] | None:
    """The (start, end) context positions of one window with the largest start + end logit."""
    if not inside:
        return None
    index = torch.tensor(inside, device=starts.device)
    scores = starts[index][:, None] + ends[index][None, :]
    offset = torch.arange(len(inside), device=starts.device)
    length = offset[None, :] - offset[:, None]
    scores = scores.masked_fill((length < 0) | (length >= options.max_answer_length), float("-inf"))
    a, b = divmod(int(scores.argmax()), len(inside))
    return inside[a], inside[b]


def _span_logit(which: str, position: int) -> Any:
    """The explained value of a span's start or end: that position's start (end) logit."""

    def value(output: Any) -> torch.Tensor:
        return getattr(output, f"{which}_logits")[:, position].float()

    return value


def _softmax(scores: list[float]) -> list[float]:
    x = np.asarray(scores, dtype=np.float64)
    e = np.exp(x - x.max())
    return (e / e.sum()).tolist()
