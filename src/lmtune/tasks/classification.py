"""Text classification (sentiment, topic, intent, NLI pairs), single- or multi-label."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lmtune.data import checks
from lmtune.data.augment import augment_train
from lmtune.data.readers import Table, read_table
from lmtune.errors import LmtuneError
from lmtune.tasks.base import (
    EvalResult,
    PreparedData,
    Task,
    autocast_for,
    length_sorted_batches,
    model_device,
)


class ClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    multi_label: bool | None = Field(
        default=None, description="Several labels per text; default: detected from the labels."
    )
    threshold: float = Field(default=0.5, gt=0, lt=1, description="Multi-label decision threshold.")


def _natural_sorted(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    description: ClassVar[str] = "Label a text (or text pair): sentiment, topic, intent; multi-label too."
    Options = ClassificationOptions
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    head_names: ClassVar[tuple[str, ...]] = ("classifier", "score", "pooler", "pre_classifier")
    peft_head_names: ClassVar[tuple[str, ...]] = ("classifier", "score")
    default_metric: ClassVar[str] = "f1_macro"
    supports_streaming: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.multi_label: bool = bool(self.options.multi_label)
        self.text_column: str | None = cfg.data.text_column
        self.pair_column: str | None = cfg.data.text_pair_column
        self.label_column: str | None = cfg.data.label_column

    def resolved_options(self) -> dict[str, Any]:
        return {"multi_label": self.multi_label}

    # ---- reading and checking -----------------------------------------------------------
    def _columns(self, table: Table, need_label: bool) -> tuple[str, str | None, str | None]:
        d = self.cfg.data
        text = checks.find_column(table, self.text_column, checks.TEXT_COLUMNS, "text", "data.text_column")
        pair = self.pair_column
        if pair is None and d.text_pair_column is None:
            guess = checks.PAIR_COLUMNS.get(text.lower())
            pair = next((c for c in table.columns if c.lower() == guess), None) if guess else None
        elif pair is not None:
            pair = checks.find_column(table, pair, (), "text pair", "data.text_pair_column")
        label = None
        if need_label:
            label = checks.find_column(
                table, self.label_column, checks.LABEL_COLUMNS, "label", "data.label_column"
            )
        return text, pair, label

    def _label_value(self, table: Table, index: int, column: str) -> str | list[str]:
        value = table.rows[index].get(column)
        where = table.where(index, column)
        if checks.is_missing(value) or (isinstance(value, str) and not value.strip()):
            raise LmtuneError(
                f"{where}: the label is empty", hint="give every training row a label or remove it"
            )
        if isinstance(value, list):
            if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
                raise LmtuneError(f"{where}: a label list must hold strings or integers, got {value!r}")
            return [str(v).strip() for v in value]
        if isinstance(value, dict):
            raise LmtuneError(f"{where}: expected a label, got an object")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        delimiter = self.cfg.data.label_delimiter
        if delimiter:
            return [part.strip() for part in text.split(delimiter) if part.strip()]
        return text

    def _extract(self, table: Table, need_label: bool) -> tuple[list[dict[str, Any]], dict[str, int]]:
        text_col, pair_col, label_col = self._columns(table, need_label)
        # Remember the columns found in train so validation/test/predict files use the same ones.
        self.text_column, self.pair_column = text_col, pair_col
        if need_label:
            self.label_column = label_col
        records: list[dict[str, Any]] = []
        dropped = 0
        for i in range(len(table)):
            text = checks.text_value(table, i, text_col)
            pair = checks.text_value(table, i, pair_col) if pair_col else None
            if text is None or (pair_col and pair is None):
                dropped += 1
                continue
            record: dict[str, Any] = {"text": text, "_where": table.where(i)}
            if pair_col:
                record["text_pair"] = pair
            if need_label and label_col is not None:
                record["label"] = self._label_value(table, i, label_col)
            records.append(record)
        if not records:
            raise LmtuneError(f"{table.path}: every row has an empty text", hint=f"check column '{text_col}'")
        return records, {"rows": len(table), "dropped_empty": dropped}

    def _check_known(self, records: list[dict[str, Any]], path: str, column: str | None) -> None:
        known = set(self.labels or [])
        for record in records:
            values = record["label"] if isinstance(record["label"], list) else [record["label"]]
            for value in values:
                if value not in known:
                    raise LmtuneError(
                        f"{record['_where']}, column '{column}': "
                        f"label '{value}' does not occur in the training data",
                        hint=f"known labels: {', '.join(self.labels or [])}; "
                        "fix the label or add training examples",
                    )

    def prepare_data(self) -> PreparedData:
        d = self.cfg.data
        seed = self.cfg.train.seed
        if not d.train:
            raise LmtuneError(
                "no training data given", hint="set data.train in the config or pass --train FILE"
            )
        if d.streaming:
            return self._prepare_streaming()
        train_table = read_table(d.train, d.format)
        train, train_info = self._extract(train_table, need_label=True)
        if self.options.multi_label is None:
            self.multi_label = any(isinstance(r["label"], list) for r in train)
        if self.multi_label:
            for r in train:
                if not isinstance(r["label"], list):
                    r["label"] = [r["label"]]
        seen: set[str] = set()
        for r in train:
            seen.update(r["label"] if self.multi_label else [r["label"]])
        if d.labels:
            self.labels = list(d.labels)
            self._check_known(train, d.train, self.label_column)
        else:
            self.labels = _natural_sorted(seen)
        if len(self.labels) < 2:
            raise LmtuneError(
                f"{d.train}: only one class ('{self.labels[0]}') in column '{self.label_column}'",
                hint="classification needs at least two classes",
            )
        if d.drop_duplicates:
            unique: dict[tuple, dict[str, Any]] = {}
            for r in train:
                unique.setdefault((r["text"], r.get("text_pair")), r)
            train_info["dropped_duplicates"] = len(train) - len(unique)
            train = list(unique.values())

        splits: dict[str, list[dict[str, Any]]] = {}
        carved: list[str] = []
        total = len(train)
        for split, path, ratio in (
            ("test", d.test, d.test_split),
            ("validation", d.validation, d.validation_split),
        ):
            if path:
                table = read_table(path, d.format)
                records, _ = self._extract(table, need_label=True)
                records = [self._as_label_type(r) for r in records]
                self._check_known(records, path, self.label_column)
                splits[split] = records
            else:
                strata = [json.dumps(r["label"]) for r in train]
                # Both shares are of the original train file: 100 rows -> 80 / 10 / 10.
                share = ratio * total / len(train)
                keep, held = checks.stratified_split(strata, share, seed + (0 if split == "test" else 1))
                splits[split] = [train[i] for i in held]
                train = [train[i] for i in keep]
                carved.append(split)
        if d.max_train_samples is not None and d.max_train_samples < len(train):
            train = checks.sample(train, d.max_train_samples, seed)
        # Augmented copies are added to train only, after every split is carved (data/augment.py).
        train, augmented = augment_train(train, d.augment, seed)
        splits["train"] = train
        report = self._data_report(splits, train_info, carved)
        if augmented:
            report["augmented_train"] = augmented
        datasets = {name: self._to_dataset(records) for name, records in splits.items()}
        return PreparedData(splits=datasets, labels=self.labels, report=report)

    def _prepare_streaming(self) -> PreparedData:
        """Scan the train file chunk by chunk (labels, balance, size); evaluation files are read whole."""
        from lmtune.data.streaming import iter_tables, tokenized_chunks

        d = self.cfg.data
        if not d.validation:
            raise LmtuneError(
                "data.streaming needs a validation file: a stream is not carved into splits",
                hint="set data.validation (and data.test), or set data.streaming to false",
            )
        for name, value in (("data.augment", d.augment), ("data.drop_duplicates", d.drop_duplicates)):
            if value:
                raise LmtuneError(
                    f"{name} needs the whole train set in memory and cannot be combined with data.streaming"
                )
        rows, dropped, limit = 0, 0, d.max_train_samples
        counts: Counter[str] = Counter()
        multi_label = bool(self.options.multi_label)
        if d.labels:
            self.labels = list(d.labels)
        for table in iter_tables(d.train, d.format):
            records, info = self._extract(table, need_label=True)
            records = records[: limit - rows] if limit is not None else records
            dropped += info["dropped_empty"]
            multi_label = multi_label or (
                self.options.multi_label is None and any(isinstance(r["label"], list) for r in records)
            )
            for r in records:
                counts.update(r["label"] if isinstance(r["label"], list) else [r["label"]])
            if d.labels:
                self._check_known(records, d.train, self.label_column)
            rows += len(records)
            if limit is not None and rows >= limit:
                break
        self.multi_label = multi_label
        self.labels = list(d.labels) if d.labels else _natural_sorted(set(counts))
        if len(self.labels) < 2:
            raise LmtuneError(
                f"{d.train}: only one class ('{self.labels[0]}') in column '{self.label_column}'",
                hint="classification needs at least two classes",
            )
        splits: dict[str, list[dict[str, Any]]] = {}
        for split, path in (("validation", d.validation), ("test", d.test)):
            if path:
                records, _ = self._extract(read_table(path, d.format), need_label=True)
                records = [self._as_label_type(r) for r in records]
                self._check_known(records, path, self.label_column)
                splits[split] = records
        report: dict[str, Any] = {
            "streaming": True,
            "columns": {"text": self.text_column, "text_pair": self.pair_column, "label": self.label_column},
            "labels": self.labels,
            "multi_label": self.multi_label,
            "rows": {"train": rows, **{name: len(records) for name, records in splits.items()}},
            "carved_from_train": [],
            "dropped_empty_train": dropped,
            "class_balance": {"train": {label: counts.get(label, 0) for label in self.labels}},
        }
        for name, records in splits.items():
            split_counts: Counter[str] = Counter()
            for r in records:
                split_counts.update(r["label"] if isinstance(r["label"], list) else [r["label"]])
            report["class_balance"][name] = {label: split_counts.get(label, 0) for label in self.labels}

        def chunk_dataset(table: Table) -> Any:
            records, _ = self._extract(table, need_label=True)
            records = [self._as_label_type(r) for r in records]
            self._check_known(records, d.train, self.label_column)
            return self._to_dataset(records)

        def train_stream(tokenizer: Any, batch_size: int, seed: int) -> Any:
            from lmtune.data.streaming import LengthGroupedStream

            source = tokenized_chunks(
                lambda: iter_tables(d.train, d.format),
                chunk_dataset,
                lambda dataset: self.tokenize(dataset, tokenizer),
                limit=limit,
            )
            return LengthGroupedStream(source, batch_size, seed)

        return PreparedData(
            splits={name: self._to_dataset(records) for name, records in splits.items()},
            labels=self.labels,
            report=report,
            train_stream=train_stream,
            train_rows=rows,
        )

    def _as_label_type(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.multi_label and not isinstance(record["label"], list):
            record["label"] = [record["label"]]
        return record

    def _data_report(
        self, splits: dict[str, list[dict[str, Any]]], train_info: dict, carved: list[str]
    ) -> dict:
        def key(r: dict[str, Any]) -> str:
            return r["text"] + ("\t" + r["text_pair"] if r.get("text_pair") else "")

        report: dict[str, Any] = {
            "columns": {"text": self.text_column, "text_pair": self.pair_column, "label": self.label_column},
            "labels": self.labels,
            "multi_label": self.multi_label,
            "rows": {name: len(records) for name, records in splits.items()},
            "carved_from_train": carved,
            "dropped_empty_train": train_info["dropped_empty"],
            "dropped_duplicates_train": train_info.get("dropped_duplicates", 0),
            "duplicates_in_train": checks.count_duplicates([key(r) for r in splits["train"]]),
            "overlap_train_test": checks.count_overlap(
                [key(r) for r in splits["train"]], [key(r) for r in splits["test"]]
            ),
            "overlap_train_validation": checks.count_overlap(
                [key(r) for r in splits["train"]], [key(r) for r in splits["validation"]]
            ),
            "class_balance": {},
        }
        for name, records in splits.items():
            counts: Counter[str] = Counter()
            for r in records:
                counts.update(r["label"] if isinstance(r["label"], list) else [r["label"]])
            report["class_balance"][name] = {label: counts.get(label, 0) for label in self.labels or []}
        return report

    def _to_dataset(self, records: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        columns: dict[str, list[Any]] = {"text": [r["text"] for r in records]}
        if self.pair_column:
            columns["text_pair"] = [r.get("text_pair", "") for r in records]
        if records and "label" in records[0]:
            columns["label_ids"] = [self.encode_label(r["label"]) for r in records]
        return Dataset.from_dict(columns)

    def encode_label(self, label: str | list[str]) -> Any:
        index = {name: i for i, name in enumerate(self.labels or [])}
        if self.multi_label:
            vector = [0.0] * len(index)
            for name in label if isinstance(label, list) else [label]:
                vector[index[name]] = 1.0
            return vector
        return index[label]  # type: ignore[index]

    def read_labelled(self, path: str) -> Any:
        table = read_table(path, self.cfg.data.format)
        records, _ = self._extract(table, need_label=True)
        records = [self._as_label_type(r) for r in records]
        self._check_known(records, path, self.label_column)
        return self._to_dataset(records)

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        table = read_table(path, self.cfg.data.format)
        records, _ = self._extract(table, need_label=False)
        return [{k: v for k, v in r.items() if k in ("text", "text_pair")} for r in records]

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        labels = self.labels or []
        config = AutoConfig.from_pretrained(path, trust_remote_code=self.cfg.model.trust_remote_code)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.problem_type = (
            "multi_label_classification" if self.multi_label else "single_label_classification"
        )
        apply_dropout(config, self.cfg.train.dropout)
        if getattr(config, "pad_token_id", None) is None:
            # Decoder classifiers pool the last non-pad token, so they need a pad id.
            config.pad_token_id = getattr(config, "eos_token_id", None)
            if isinstance(config.pad_token_id, list):
                config.pad_token_id = config.pad_token_id[0]
        return AutoModelForSequenceClassification.from_pretrained(
            path, config=config, trust_remote_code=self.cfg.model.trust_remote_code
        )

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        max_length = self.cfg.data.max_length
        has_pair = "text_pair" in dataset.column_names

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            enc = tokenizer(
                batch["text"],
                batch["text_pair"] if has_pair else None,
                truncation=True,
                max_length=max_length,
            )
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            if "label_ids" in batch:
                enc["labels"] = batch["label_ids"]
            return enc

        drop = [c for c in dataset.column_names]
        return dataset.map(encode, batched=True, remove_columns=drop, desc="tokenizing")

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return _DropLengthCollator(
            DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
        )

    # ---- metrics ----------------------------------------------------------------------------
    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        return (torch.sigmoid(t) if self.multi_label else torch.softmax(t, dim=-1)).numpy()

    def scores(self, y_true: np.ndarray, probs: np.ndarray) -> EvalResult:
        """All classification metrics from gold labels and predicted probabilities."""
        from sklearn.metrics import (
            accuracy_score,
            confusion_matrix,
            hamming_loss,
            precision_recall_fscore_support,
        )

        labels = self.labels or []
        if self.multi_label:
            y_pred = (probs >= self.options.threshold).astype(int)
            y_true = np.asarray(y_true).astype(int)
        else:
            y_pred = probs.argmax(axis=-1)
            y_true = np.asarray(y_true).astype(int)
        ids = list(range(len(labels)))
        metrics: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred))}
        for avg in ("macro", "micro", "weighted"):
            kwargs: dict[str, Any] = {"average": avg, "zero_division": 0}
            if not self.multi_label:
                kwargs["labels"] = ids
            p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, **kwargs)
            metrics[f"precision_{avg}"], metrics[f"recall_{avg}"], metrics[f"f1_{avg}"] = (
                float(p),
                float(r),
                float(f),
            )
        if self.multi_label:
            metrics["hamming_loss"] = float(hamming_loss(y_true, y_pred))
        metrics["n"] = len(y_true)
        kwargs = {"average": None, "zero_division": 0}
        if not self.multi_label:
            kwargs["labels"] = ids
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, **kwargs)
        per_class = {
            labels[i]: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i in ids
        }
        details: dict[str, Any] = {"per_class": per_class}
        if not self.multi_label:
            details["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=ids).tolist()
        return EvalResult(metrics=metrics, details=details)

    def trainer_metrics(self) -> Any:
        def compute(eval_pred: Any) -> dict[str, float]:
            probs = self._probabilities(eval_pred.predictions)
            result = self.scores(eval_pred.label_ids, probs)
            return {k: v for k, v in result.metrics.items() if k != "n"}

        return compute

    def _forward(
        self, model: Any, tokenizer: Any, features: list[dict[str, Any]], batch_size: int
    ) -> np.ndarray:
        """Probabilities for tokenized features, in their original order."""
        from lmtune.tasks.base import resolve_precision

        device = model_device(model)
        precision = resolve_precision(self.cfg.train.precision, device)
        collate = self.collator(tokenizer)
        out = np.zeros((len(features), len(self.labels or [])), dtype=np.float32)
        model.eval()
        with torch.inference_mode(), autocast_for(device, precision):
            for index, batch in length_sorted_batches(features, collate, batch_size):
                batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                logits = model(**batch).logits.float()
                probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
                out[index] = probs.cpu().numpy()
        return out

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        tokenized = self.tokenize(dataset, tokenizer)
        features = [dict(row) for row in tokenized]
        probs = self._forward(model, tokenizer, features, batch_size)
        gold = np.asarray([f["labels"] for f in features])
        return self.scores(gold, probs)

    def predict(
        self,
        model: Any,
        tokenizer: Any,
        inputs: list[dict[str, Any]],
        batch_size: int,
        options: Any = None,
    ) -> list[dict]:
        if not inputs:
            return []
        # Tokenize directly: a datasets.map per call costs more than the forward pass when serving.
        pairs = [i.get("text_pair") or "" for i in inputs] if any("text_pair" in i for i in inputs) else None
        texts = [i["text"] for i in inputs]
        enc = tokenizer(texts, pairs, truncation=True, max_length=self.cfg.data.max_length)
        features = [{key: enc[key][n] for key in enc} for n in range(len(inputs))]
        probs = self._forward(model, tokenizer, features, batch_size)
        labels = self.labels or []
        results = []
        for item, row in zip(inputs, probs, strict=True):
            scores = {label: round(float(p), 6) for label, p in zip(labels, row, strict=True)}
            out: dict[str, Any] = {"text": item["text"]}
            if "text_pair" in item:
                out["text_pair"] = item["text_pair"]
            if self.multi_label:
                out["labels"] = [lb for lb, p in zip(labels, row, strict=True) if p >= self.options.threshold]
            else:
                out["label"] = labels[int(row.argmax())]
            out["scores"] = scores
            results.append(out)
        return results

    # ---- report -----------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.plots import confusion_matrix_png

        lines: list[str] = []
        for split, result in results.items():
            lines.append(f"### Per-class results ({split})\n")
            lines.append("| label | precision | recall | F1 | support |")
            lines.append("|---|---:|---:|---:|---:|")
            for label, row in result.details["per_class"].items():
                scores = " | ".join(f"{row[k]:.3f}" for k in ("precision", "recall", "f1"))
                lines.append(f"| {label} | {scores} | {row['support']} |")
            lines.append("")
            matrix = result.details.get("confusion_matrix")
            if matrix is not None:
                name = f"confusion_matrix_{split}.png"
                confusion_matrix_png(
                    matrix, self.labels or [], run_dir / name, title=f"Confusion matrix ({split})"
                )
                lines.append(f"![confusion matrix ({split})]({name})\n")
                lines.extend(_top_confusions(matrix, self.labels or []))
        return lines


def _top_confusions(matrix: Sequence[Sequence[int]], labels: list[str], k: int = 5) -> list[str]:
    pairs = [
        (matrix[i][j], labels[i], labels[j])
        for i in range(len(labels))
        for j in range(len(labels))
        if i != j and matrix[i][j] > 0
    ]
    if not pairs:
        return []
    pairs.sort(reverse=True)
    lines = [
        "Most common confusions (gold -> predicted): "
        + "; ".join(f"{g} -> {p}: {n}" for n, g, p in pairs[:k]),
        "",
    ]
    return lines


class _DropLengthCollator:
    """Pads a batch; drops the `length` column, which only the sampler needs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.inner([{k: v for k, v in f.items() if k != "length"} for f in features])


def apply_dropout(config: Any, dropout: float | None) -> None:
    """Override every dropout rate a transformers config exposes."""
    if dropout is None:
        return
    for key, value in config.to_dict().items():
        if "dropout" in key and (isinstance(value, float) or value is None) and not key.startswith("_"):
            setattr(config, key, dropout)
