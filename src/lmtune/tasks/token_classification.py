"""Token classification (named-entity recognition): a BIO tag per word.

Data is CoNLL or JSON(L) token lists (`lmtune.data.conll`); any BIO-like scheme is
normalised to BIO for training and converted back for predictions on pre-tokenised input.
The first sub-token of each word carries its label (the rest -100). Sentences longer than
`data.max_length` are split into overlapping windows of whole words, never truncated; the
prediction for a word comes from the window where it sits furthest from an edge.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lmtune.data import checks, conll
from lmtune.data.conll import Sentence
from lmtune.data.readers import read_table
from lmtune.data.splits import Carving, SplitRecords
from lmtune.errors import LmtuneError
from lmtune.tasks.base import EvalResult, Rows, Task, inference_batches
from lmtune.tasks.classification import _DropLengthCollator, labelled_head_config, right_padding


class TokenClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag_scheme: Literal["auto", "bio", "iob1", "bioes", "bilou", "bmes"] = Field(
        default="auto",
        description="Tag scheme of the data; auto detects it from the training tags. "
        "Trained as BIO; predictions on pre-tokenised input use this scheme.",
    )
    stride: int = Field(
        default=8, ge=0, description="Words shared by consecutive windows of a sentence over max_length."
    )


# Latin-script words, or one CJK character (Chinese/Japanese have no spaces), or one symbol.
_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
)
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Words of a raw text with their character offsets (start, end)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


class TokenClassificationTask(Task):
    name: ClassVar[str] = "token-classification"
    description: ClassVar[str] = "Tag each word (named entities): CoNLL or JSONL tokens, BIO/IOB1/BIOES/BMES."
    Options = TokenClassificationOptions
    peft_task_type: ClassVar[str] = "TOKEN_CLS"
    head_names: ClassVar[tuple[str, ...]] = ("classifier", "score")
    peft_head_names: ClassVar[tuple[str, ...]] = ("classifier", "score")
    default_metric: ClassVar[str] = "f1"
    prediction_view: ClassVar[str] = "entities"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"multi-task-member", "token-level", "logit-distillation", "label-audit", "token-attributions"}
    )

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.text_column: str | None = cfg.data.text_column
        self.label_column: str | None = cfg.data.label_column
        self.scheme: str = self.options.tag_scheme if self.options.tag_scheme != "auto" else "bio"

    def resolved_options(self) -> dict[str, Any]:
        """Task options decided by the data (written back into config.yaml)."""
        return {"tag_scheme": self.scheme}

    # ---- reading and checking -----------------------------------------------------------------
    def _read(self, path: str, need_tags: bool = True) -> list[Sentence]:
        sentences, tok_col, tag_col = conll.read_sentences(
            path, self.cfg.data.format, self.text_column, self.label_column, need_tags, self.labels
        )
        if tok_col is not None:
            self.text_column = tok_col
        if tag_col is not None:
            self.label_column = tag_col
        return sentences

    def _normalise(self, sentences: list[Sentence]) -> list[dict[str, Any]]:
        records = []
        for s in sentences:
            conll.check_scheme(s, self.scheme)
            records.append({"tokens": s.tokens, "tags": conll.to_bio(s.tags or [], self.scheme), "_s": s})
        return records

    def _check_known(self, records: list[dict[str, Any]]) -> None:
        known = set(self.labels or [])
        for r in records:
            for i, tag in enumerate(r["tags"]):
                if tag not in known:
                    s: Sentence = r["_s"]
                    raise LmtuneError(
                        f"{conll._where_token(s, i)}: tag '{tag}' does not occur in the training data",
                        hint=f"known tags: {', '.join(self.labels or [])}",
                    )

    # ---- the hooks of Task.prepare_data -------------------------------------------------------------
    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        sentences = self._read(path)
        if split == "train" and self.options.tag_scheme == "auto":
            self.scheme = conll.detect_scheme([s.tags or [] for s in sentences])
        records = self._normalise(sentences)
        if split == "train":
            self._learn_labels(records, path)
        else:
            self._check_known(records)
        return records, {}

    def _learn_labels(self, train: list[dict[str, Any]], path: str) -> None:
        types = {kind for r in train for kind, _, _ in conll.bio_spans(r["tags"])}
        if self.cfg.data.labels:
            self.labels = list(self.cfg.data.labels)
            self._check_known(train)
        else:
            self.labels = conll.bio_labels(types)
        if not types:
            raise LmtuneError(f"{path}: no entity tags, every token is 'O'", hint="tag some entities")

    def carving(self) -> Carving:
        # Stratified by each sentence's first entity type.
        return Carving(strata=lambda r: next(iter(conll.bio_spans(r["tags"])), ("O",))[0])

    def dedup_key(self, record: dict[str, Any]) -> tuple[str, ...]:
        return tuple(record["tokens"])

    def overlap_key(self, record: dict[str, Any]) -> str:
        return " ".join(record["tokens"])

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        types = sorted({label[2:] for label in self.labels or [] if label != "O"})

        def entities(records: list[dict[str, Any]]) -> dict[str, int]:
            counts = Counter(kind for r in records for kind, _, _ in conll.bio_spans(r["tags"]))
            return {kind: counts.get(kind, 0) for kind in types}

        splits = prepared.records
        return {
            "columns": {"tokens": self.text_column, "tags": self.label_column},
            "labels": self.labels,
            "tag_scheme": self.scheme,
            **prepared.summary(self.overlap_key),
            "tokens": {name: sum(len(r["tokens"]) for r in records) for name, records in splits.items()},
            # Entities per type and split (shown as the class balance table of report.md).
            "class_balance": {name: entities(records) for name, records in splits.items()},
        }

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        index = {label: i for i, label in enumerate(self.labels or [])}
        columns: dict[str, list[Any]] = {"tokens": [r["tokens"] for r in records]}
        if records and "tags" in records[0]:
            columns["tag_ids"] = [[index[t] for t in r["tags"]] for r in records]
        return Dataset.from_dict(columns)

    def record_where(self, record: dict[str, Any]) -> str:
        return record["_s"].where

    def audit_labels(self, records: list[dict[str, Any]]) -> Any:
        from lmtune.data.audit import TokenLabels

        index = {label: i for i, label in enumerate(self.labels or [])}
        return TokenLabels(
            labels=list(self.labels or []),
            tokens=[r["tokens"] for r in records],
            tag_ids=[[index[t] for t in r["tags"]] for r in records],
            where_token=lambda i, j: conll._where_token(records[i]["_s"], j),
        )

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """CoNLL or JSON(L) token lists -> {"tokens"}; a text file or CSV of raw texts -> {"text"}."""
        fmt = self.cfg.data.format
        file = Path(path)
        if file.is_file() and conll.is_conll(file, fmt):
            return [{"tokens": s.tokens} for s in conll.read_conll(path, need_tags=False)]
        if fmt == "auto" and file.suffix.lower() in (".txt", ".text", ""):
            if not file.is_file():
                conll.read_conll(path)  # raises the file-not-found error
            lines = [ln.strip() for ln in file.read_text(encoding="utf-8-sig").splitlines()]
            texts = [{"text": ln} for ln in lines if ln]
            if not texts:
                raise LmtuneError(f"{path}: the file is empty", hint="one text per line")
            return texts
        table = read_table(path, fmt)
        lowered = {c.lower() for c in table.columns}
        if self.text_column in table.columns or lowered & set(conll.TOKEN_COLUMNS):
            column = self.text_column if self.text_column in table.columns else None
            sentences, _, _ = conll.read_records(path, fmt, column, None, need_tags=False)
            return [{"tokens": s.tokens} for s in sentences]
        column = checks.find_column(table, None, checks.TEXT_COLUMNS, "text", "data.text_column")
        texts = [checks.text_value(table, i, column) for i in range(len(table))]
        return [{"text": t} for t in texts if t is not None]

    # ---- model ---------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from lmtune.tasks.backbone_heads import load_head_model

        # Architectures without a token-classification class in transformers (Gemma 3) get the
        # generic head composed over their backbone (tasks/backbone_heads.py).
        config = labelled_head_config(path, self.labels or [], self.cfg)
        return load_head_model(path, config, "token-classification", self.cfg.model.trust_remote_code)

    def _windows(
        self, tokenizer: Any, sentences: Sequence[Sequence[str]], tag_ids: Sequence[Sequence[int]] | None
    ) -> tuple[list[dict[str, Any]], list[tuple[int, list[tuple[int, int, int]]]]]:
        """Model features for whole-word windows, and for each: (sentence, [(position, word, centrality)])."""
        max_length = self.cfg.data.max_length
        budget = max(1, max_length - tokenizer.num_special_tokens_to_add(pair=False))
        stride = self.options.stride
        spans: list[tuple[int, int, int]] = []  # (sentence, first word, end word)
        if sentences:
            counts = tokenizer(
                [list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False
            )
        for n, words in enumerate(sentences):
            cost = [0] * len(words)
            for w in counts.word_ids(n):
                if w is not None:
                    cost[w] += 1
            cost = [min(c, budget) for c in cost]
            start = 0
            while start < len(words):
                end, total = start, 0
                while end < len(words) and (total + cost[end] <= budget or end == start):
                    total += cost[end]
                    end += 1
                spans.append((n, start, end))
                if end >= len(words):
                    break
                start = max(end - stride, start + 1)
        features: list[dict[str, Any]] = []
        maps: list[tuple[int, list[tuple[int, int, int]]]] = []
        if not spans:
            return features, maps
        enc = tokenizer(
            [list(sentences[n][a:b]) for n, a, b in spans],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
        )
        for k, (n, a, _b) in enumerate(spans):
            word_ids = enc.word_ids(k)
            feature = {key: enc[key][k] for key in enc}
            content = [p for p, w in enumerate(word_ids) if w is not None]
            first, last = (content[0], content[-1]) if content else (0, 0)
            labels = [-100] * len(word_ids)
            firsts: list[tuple[int, int, int]] = []
            previous = None
            for p, w in enumerate(word_ids):
                if w is not None and w != previous:
                    labels[p] = tag_ids[n][a + w] if tag_ids is not None else -100
                    firsts.append((p, a + w, min(p - first, last - p)))
                previous = w
            if tag_ids is not None:
                feature["labels"] = labels
            feature["length"] = len(word_ids)
            features.append(feature)
            maps.append((n, firsts))
        return features, maps

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        from datasets import Dataset

        if not getattr(tokenizer, "is_fast", False):
            raise LmtuneError(
                f"token classification needs a fast tokenizer (word_ids); {type(tokenizer).__name__} is not",
                hint="choose a model that ships tokenizer.json",
            )
        tags = dataset["tag_ids"] if "tag_ids" in dataset.column_names else None
        features, _ = self._windows(tokenizer, dataset["tokens"], tags)
        columns = {key: [f[key] for f in features] for key in (features[0] if features else {})}
        return Dataset.from_dict(columns)

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return _DropLengthCollator(
            DataCollatorForTokenClassification(
                right_padding(tokenizer), pad_to_multiple_of=8 if torch.cuda.is_available() else None
            )
        )

    # ---- inference ------------------------------------------------------------------------------
    def _predict_words(
        self, model: Any, tokenizer: Any, sentences: Sequence[Sequence[str]], batch_size: int
    ) -> list[list[tuple[int, float]]]:
        """(label id, probability) per word; one forward per window, argmax per batch."""
        features, maps = self._windows(tokenizer, sentences, None)
        best: list[list[tuple[int, int, float]]] = [[(-1, -1, 1.0)] * len(s) for s in sentences]
        for index, batch in inference_batches(self, model, features, self.collator(tokenizer), batch_size):
            top, arg = torch.softmax(model(**batch).logits.float(), dim=-1).max(dim=-1)
            top, arg = top.cpu().numpy(), arg.cpu().numpy()
            for row, k in enumerate(index):
                n, firsts = maps[k]
                for p, w, centrality in firsts:
                    if centrality > best[n][w][0]:
                        best[n][w] = (centrality, int(arg[row, p]), float(top[row, p]))
        # Words with no sub-tokens (rare symbols the tokenizer drops) are predicted 'O'.
        return [[(label, prob) for _, label, prob in words] for words in best]

    def _tags(self, predicted: list[tuple[int, float]]) -> list[str]:
        labels = self.labels or []
        return [labels[i] if i >= 0 else "O" for i, _ in predicted]

    # ---- metrics --------------------------------------------------------------------------------
    def scores(self, gold: list[list[str]], pred: list[list[str]]) -> EvalResult:
        """Entity-level (seqeval, conlleval rules) P/R/F1 micro and macro, per type; token accuracy."""
        from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

        kwargs: dict[str, Any] = {"zero_division": 0}
        metrics: dict[str, Any] = {
            "f1": float(f1_score(gold, pred, average="micro", **kwargs)),
            "precision": float(precision_score(gold, pred, average="micro", **kwargs)),
            "recall": float(recall_score(gold, pred, average="micro", **kwargs)),
            "accuracy": _token_accuracy(gold, pred),
            "f1_macro": float(f1_score(gold, pred, average="macro", **kwargs)),
            "precision_macro": float(precision_score(gold, pred, average="macro", **kwargs)),
            "recall_macro": float(recall_score(gold, pred, average="macro", **kwargs)),
            "n": len(gold),
            "entities": sum(len(conll.bio_spans(g)) for g in gold),
        }
        report = classification_report(gold, pred, output_dict=True, **kwargs)
        types = sorted({label[2:] for label in self.labels or [] if label != "O"})
        per_type = {}
        for kind in types:
            row = report.get(kind, {})
            per_type[kind] = {
                "precision": float(row.get("precision", 0.0)),
                "recall": float(row.get("recall", 0.0)),
                "f1": float(row.get("f1-score", 0.0)),
                "support": int(row.get("support", 0)),
            }
        confusions: Counter[tuple[str, str]] = Counter()
        for g_tags, p_tags in zip(gold, pred, strict=True):
            for g, p in zip(g_tags, p_tags, strict=True):
                g_type, p_type = g[2:] if g != "O" else "O", p[2:] if p != "O" else "O"
                if g_type != p_type:
                    confusions[(g_type, p_type)] += 1
        details = {
            "per_type": per_type,
            "confusions": [[g, p, n] for (g, p), n in confusions.most_common(10)],
        }
        return EvalResult(metrics=metrics, details=details)

    def trainer_metrics(self) -> Any:
        labels = self.labels or []

        def compute(eval_pred: Any) -> dict[str, float]:
            # Per window (a long sentence counts once per window); the final evaluation merges.
            pred_ids = np.asarray(eval_pred.predictions).argmax(axis=-1)
            gold, pred = [], []
            for p_row, g_row in zip(pred_ids, eval_pred.label_ids, strict=True):
                keep = g_row != -100
                gold.append([labels[i] for i in g_row[keep]])
                pred.append([labels[i] for i in p_row[keep]])
            result = self.scores(gold, pred)
            return {k: v for k, v in result.metrics.items() if k not in ("n", "entities")}

        return compute

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        labels = self.labels or []
        sentences = dataset["tokens"]
        predicted = self._predict_words(model, tokenizer, sentences, batch_size)
        gold = [[labels[i] for i in ids] for ids in dataset["tag_ids"]]
        tags = [self._tags(p) for p in predicted]
        result = self.scores(gold, tags)
        result.records = [_record(i, *row) for i, row in enumerate(zip(sentences, gold, tags, strict=True))]
        return result

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        if not inputs:
            return []
        sentences: list[list[str]] = []
        offsets: list[list[tuple[int, int]] | None] = []
        for i, item in enumerate(inputs):
            if isinstance(item.get("tokens"), list):
                sentences.append([str(t) for t in item["tokens"]])
                offsets.append(None)
            elif isinstance(item.get("text"), str):
                words = split_words(item["text"])
                sentences.append([w for w, _, _ in words])
                offsets.append([(a, b) for _, a, b in words])
            else:
                self.check_input(i, item)
        predicted = self._predict_words(model, tokenizer, sentences, batch_size)
        results: list[dict[str, Any]] = []
        for item, words, spans, pred in zip(inputs, sentences, offsets, predicted, strict=True):
            tags = self._tags(pred)
            if spans is None:
                results.append({"tokens": words, "tags": conll.from_bio(tags, self.scheme)})
                continue
            text = item["text"]
            entities = []
            for kind, a, b in conll.bio_spans(tags):
                start, end = spans[a][0], spans[b - 1][1]
                score = sum(p for _, p in pred[a:b]) / (b - a)
                entities.append(
                    {
                        "type": kind,
                        "text": text[start:end],
                        "start": start,
                        "end": end,
                        "score": round(score, 6),
                    }
                )
            results.append({"text": text, "entities": entities})
        return results

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        if not isinstance(item.get("text"), str) and not isinstance(item.get("tokens"), list):
            raise LmtuneError(f"input {index + 1}: expected 'text' (a string) or 'tokens' (a list of words)")

    # ---- explanations ---------------------------------------------------------------------------
    def attribution_row(
        self, model: Any, tokenizer: Any, item: dict[str, Any], target: str | None, options: Any
    ) -> Any:
        """The sentence (its first data.max_length tokens) as one row. Targets: each predicted
        entity (`target`: those of that type), as the sum of its words' logits for their tags."""
        from lmtune.evaluation.explain import AttributionTarget, ExplainRow, special_positions, words_of_split
        from lmtune.tasks.base import model_device

        labels = self.labels or []
        types = sorted({label[2:] for label in labels if label != "O"})
        if target is not None and target not in types:
            raise LmtuneError(
                f"unknown --target entity type '{target}'",
                hint=f"entity types of this run: {', '.join(types)}",
            )
        self.check_input(0, item)
        spans = None
        if isinstance(item.get("tokens"), list):
            words, field = [str(t) for t in item["tokens"]], "tokens"
        else:
            found = split_words(item["text"])
            words, field, spans = [w for w, _, _ in found], "text", [(a, b) for _, a, b in found]
        max_length = self.cfg.data.max_length
        enc = tokenizer([words], is_split_into_words=True, truncation=True, max_length=max_length)
        features = {key: enc[key][0] for key in enc}
        model.eval()
        with torch.no_grad():
            batch = {key: torch.tensor([v], device=model_device(model)) for key, v in features.items()}
            predicted = model(**batch).logits[0].argmax(-1).tolist()
        firsts: dict[int, int] = {}  # word -> the position of its first token (which carries its tag)
        for p, w in enumerate(enc.word_ids(0)):
            if w is not None:
                firsts.setdefault(w, p)
        tags = [labels[predicted[firsts[w]]] if w in firsts else "O" for w in range(len(words))]
        targets = []
        for kind, a, b in conll.bio_spans(tags):
            tagged = [(firsts[w], predicted[firsts[w]]) for w in range(a, b) if w in firsts]
            if target in (None, kind) and tagged:
                name = f"{kind}: {' '.join(words[a:b])}"
                focus = [p for p, _ in tagged]
                targets.append(AttributionTarget(name, "logit", _entity_logits(tagged), focus))
        return ExplainRow(
            item=item,
            prediction=self.predict(model, tokenizer, [item], 1)[0],
            features=features,
            tokens=tokenizer.convert_ids_to_tokens(features["input_ids"]),
            words=words_of_split(enc, 0, words, field, spans),
            fixed=special_positions(tokenizer, features["input_ids"]),
            targets=targets,
            note="explained the first data.max_length tokens" if len(firsts) < len(words) else None,
        )

    # ---- report ---------------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.report import per_label_table, section

        lines: list[str] = []
        for split, result in results.items():
            table = per_label_table("entity type", result.details["per_type"])
            lines += section(f"Per-type results ({split})", table)
            confusions = result.details.get("confusions") or []
            if confusions:
                lines.append(
                    "Most common confusions (gold type -> predicted type, words): "
                    + "; ".join(f"{g} -> {p}: {n}" for g, p, n in confusions[:5])
                )
                lines.append("")
        return lines


def _record(row: int, tokens: list[str], gold: list[str], predicted: list[str]) -> dict[str, Any]:
    """A sentence's prediction record: its entities (type, token start, end exclusive, text) as
    the data tags them (BIO) and as predicted; correct when the two sets of entities are equal."""

    def entities(tags: list[str]) -> list[dict[str, Any]]:
        return [
            {"type": kind, "start": a, "end": b, "text": " ".join(tokens[a:b])}
            for kind, a, b in conll.bio_spans(tags)
        ]

    gold_entities, predicted_entities = entities(gold), entities(predicted)
    return {
        "row": row,
        "text": " ".join(tokens),
        "tokens": list(tokens),
        "gold": gold_entities,
        "predicted": predicted_entities,
        "correct": gold_entities == predicted_entities,
    }


def _entity_logits(tagged: list[tuple[int, int]]) -> Any:
    """An entity's explained value: the sum, over its words' first tokens, of the tag's logit."""

    def value(output: Any) -> torch.Tensor:
        logits = output.logits.float()
        return sum(logits[:, p, label] for p, label in tagged)

    return value


def _token_accuracy(gold: list[list[str]], pred: list[list[str]]) -> float:
    total = sum(len(g) for g in gold)
    right = sum(g == p for gs, ps in zip(gold, pred, strict=True) for g, p in zip(gs, ps, strict=True))
    return right / total if total else 0.0
