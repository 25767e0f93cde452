"""Text classification (sentiment, topic, intent, NLI pairs), single- or multi-label."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lmtune.config import AugmentConfig
from lmtune.data import checks
from lmtune.data.augment import augment_train
from lmtune.data.readers import Table, read_table
from lmtune.data.splits import Carving, SplitRecords
from lmtune.errors import LmtuneError
from lmtune.evaluation.calibration import calibration_details, expected_calibration_error
from lmtune.tasks.base import EvalResult, PreparedData, Rows, Task, VersionedOptions, inference_batches


class ClassificationDataOptions(BaseModel):
    """The data keys only classification reads (written under `data:` like the common ones)."""

    model_config = ConfigDict(extra="forbid")
    label_delimiter: str | None = Field(
        default=None, description="Split label strings on this for multi-label data, e.g. '|'."
    )
    streaming: bool = Field(
        default=False,
        description="Read the train file in chunks instead of into memory (data larger than RAM; "
        "needs a validation file).",
    )
    augment: AugmentConfig | None = Field(
        default=None, description="Add augmented copies of training rows (train split only)."
    )


class ClassificationOptions(VersionedOptions):
    omitted_at_default: ClassVar[tuple[str, ...]] = ("calibration",)
    multi_label: bool | None = Field(
        default=None, description="Several labels per text; default: detected from the labels."
    )
    threshold: float = Field(default=0.5, gt=0, lt=1, description="Multi-label decision threshold.")
    calibration: Literal["none", "temperature"] = Field(
        default="none",
        description="temperature: after training, fit one temperature on the validation logits "
        "(lower NLL and ECE, same argmax); every probability (eval, predict, serve) applies it.",
    )


def _as_list(label: str | list[str]) -> list[str]:
    return label if isinstance(label, list) else [label]


def _natural_sorted(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    description: ClassVar[str] = "Label a text (or text pair): sentiment, topic, intent; multi-label too."
    Options = ClassificationOptions
    DataOptions = ClassificationDataOptions
    resolved_columns: ClassVar[dict[str, str]] = {
        "text_column": "text_column",
        "text_pair_column": "pair_column",
        "label_column": "label_column",
    }
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    head_names: ClassVar[tuple[str, ...]] = ("classifier", "score", "pooler", "pre_classifier")
    peft_head_names: ClassVar[tuple[str, ...]] = ("classifier", "score")
    default_metric: ClassVar[str] = "f1_macro"
    prediction_view: ClassVar[str] = "labels"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {
            "streaming",
            "multi-task-member",
            "accepts-virtual-tokens",
            "class-probabilities",
            "logit-distillation",
            "mixed-adapter-batches",
            "group-metrics",
            "token-attributions",
            "label-audit",
        }
    )

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.multi_label: bool = bool(self.options.multi_label)
        self.text_column: str | None = cfg.data.text_column
        self.pair_column: str | None = cfg.data.text_pair_column
        self.label_column: str | None = cfg.data.label_column
        # task.calibration=temperature: fitted after training (`fit_after_training`), saved in
        # model/lmtune.json and restored by `Run.load`; None: logits are used as they are.
        self.temperature: float | None = None
        self.calibration_record: dict[str, Any] = {}

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
        for i, (text, pair) in checks.text_rows(table, (text_col, pair_col)):
            record: dict[str, Any] = {"text": text, "_where": table.where(i)}
            if pair_col:
                record["text_pair"] = pair
            if need_label and label_col is not None:
                record["label"] = self._label_value(table, i, label_col)
            records.append(record)
        if not records:
            raise LmtuneError(f"{table.path}: every row has an empty text", hint=f"check column '{text_col}'")
        return records, {"rows": len(table), "dropped_empty": len(table) - len(records)}

    def _check_known(self, records: list[dict[str, Any]]) -> None:
        known = set(self.labels or [])
        for record in records:
            for value in _as_list(record["label"]):
                if value not in known:
                    raise LmtuneError(
                        f"{record['_where']}, column '{self.label_column}': "
                        f"label '{value}' does not occur in the training data",
                        hint=f"known labels: {', '.join(self.labels or [])}; "
                        "fix the label or add training examples",
                    )

    def _checked(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records of a file other than train: labels in train's form, and known to train."""
        if self.multi_label:
            for r in records:
                r["label"] = _as_list(r["label"])
        self._check_known(records)
        return records

    def _learn_labels(self, train: list[dict[str, Any]]) -> None:
        """Multi-label or not, and the label list, as the training records say."""
        d = self.cfg.data
        if self.options.multi_label is None:
            self.multi_label = any(isinstance(r["label"], list) for r in train)
        if self.multi_label:
            for r in train:
                r["label"] = _as_list(r["label"])
        if d.labels:
            self.labels = list(d.labels)
            self._check_known(train)
        else:
            self.labels = _natural_sorted({value for r in train for value in _as_list(r["label"])})
        self._check_classes()

    def _check_classes(self) -> None:
        labels = self.labels or []
        if len(labels) < 2:
            raise LmtuneError(
                f"{self.cfg.data.train}: only one class ('{labels[0]}') in column '{self.label_column}'",
                hint="classification needs at least two classes",
            )

    # ---- the hooks of Task.prepare_data ---------------------------------------------------------
    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
        records, info = self._extract(read_table(path, self.cfg.data.format), need_label=True)
        if split == "train":
            self._learn_labels(records)
            return records, info
        return self._checked(records), info

    def carving(self) -> Carving:
        return Carving(strata=lambda r: json.dumps(r["label"]))

    def dedup_key(self, record: dict[str, Any]) -> tuple[str, str | None]:
        return record["text"], record.get("text_pair")

    def overlap_key(self, record: dict[str, Any]) -> str:
        return record["text"] + ("\t" + record["text_pair"] if record.get("text_pair") else "")

    def extend_train(self, train: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Augmented copies are added to train only, after every split is carved (data/augment.py).
        train, augmented = augment_train(train, self.cfg.data.augment, self.cfg.train.seed)
        return train, ({"augmented_train": augmented} if augmented else {})

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        return {
            **self._report_head(),
            **prepared.summary(
                self.overlap_key, dropped_empty_train=prepared.infos["train"]["dropped_empty"]
            ),
            "class_balance": {name: self._balance(records) for name, records in prepared.records.items()},
        }

    def _report_head(self) -> dict[str, Any]:
        return {
            "columns": {"text": self.text_column, "text_pair": self.pair_column, "label": self.label_column},
            "labels": self.labels,
            "multi_label": self.multi_label,
        }

    def _balance(self, records: list[dict[str, Any]]) -> dict[str, int]:
        counts = Counter(value for r in records for value in _as_list(r["label"]))
        return {label: counts.get(label, 0) for label in self.labels or []}

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        columns: dict[str, list[Any]] = {"text": [r["text"] for r in records]}
        if self.pair_column:
            columns["text_pair"] = [r.get("text_pair", "") for r in records]
        if records and "label" in records[0]:
            columns["label_ids"] = [self.encode_label(r["label"]) for r in records]
        return Dataset.from_dict(columns)

    # ---- data.streaming -------------------------------------------------------------------------
    def prepare_stream(self) -> PreparedData | None:
        return self._prepare_streaming() if self.cfg.data.streaming else None

    def _prepare_streaming(self) -> PreparedData:
        """Scan the train file chunk by chunk (labels, balance, size); evaluation files are read whole."""
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
        rows, dropped, counts = self._scan_stream()
        self._check_classes()
        files = (("validation", d.validation), ("test", d.test))
        splits = {split: self.read_records(path, split)[0] for split, path in files if path}
        report: dict[str, Any] = {
            "streaming": True,
            **self._report_head(),
            "rows": {"train": rows, **{name: len(records) for name, records in splits.items()}},
            "carved_from_train": [],
            "dropped_empty_train": dropped,
            "class_balance": {
                "train": {label: counts.get(label, 0) for label in self.labels or []},
                **{name: self._balance(records) for name, records in splits.items()},
            },
        }
        return PreparedData(
            splits={name: self.to_dataset(records) for name, records in splits.items()},
            labels=self.labels,
            report=report,
            train_stream=self._train_stream,
            train_rows=rows,
        )

    def _scan_stream(self) -> tuple[int, int, Counter[str]]:
        """One pass over the train file: its rows (up to max_train_samples), rows without text, labels."""
        from lmtune.data.streaming import iter_tables

        d = self.cfg.data
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
            counts.update(value for r in records for value in _as_list(r["label"]))
            if d.labels:
                self._check_known(records)
            rows += len(records)
            if limit is not None and rows >= limit:
                break
        self.multi_label = multi_label
        self.labels = list(d.labels) if d.labels else _natural_sorted(set(counts))
        return rows, dropped, counts

    def _train_stream(self, tokenizer: Any, batch_size: int, seed: int) -> Any:
        """`PreparedData.train_stream`: the train file, tokenized chunk by chunk, batched by length."""
        from lmtune.data.streaming import LengthGroupedStream, iter_tables, tokenized_chunks

        d = self.cfg.data
        source = tokenized_chunks(
            lambda: iter_tables(d.train, d.format),
            lambda table: self.to_dataset(self._checked(self._extract(table, need_label=True)[0])),
            lambda dataset: self.tokenize(dataset, tokenizer),
            limit=d.max_train_samples,
        )
        return LengthGroupedStream(source, batch_size, seed)

    def encode_label(self, label: str | list[str]) -> Any:
        index = {name: i for i, name in enumerate(self.labels or [])}
        if self.multi_label:
            vector = [0.0] * len(index)
            for name in label if isinstance(label, list) else [label]:
                vector[index[name]] = 1.0
            return vector
        return index[label]  # type: ignore[index]

    def audit_labels(self, records: list[dict[str, Any]]) -> Any:
        from lmtune.data.audit import SequenceLabels

        # Multi-label rows have no single given label for confident learning to question.
        if self.multi_label or not records or "label" not in records[0]:
            return None
        index = {label: i for i, label in enumerate(self.labels or [])}
        return SequenceLabels(labels=list(self.labels or []), label_ids=[index[r["label"]] for r in records])

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        table = read_table(path, self.cfg.data.format)
        records, _ = self._extract(table, need_label=False)
        return [{k: v for k, v in r.items() if k in ("text", "text_pair")} for r in records]

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from transformers import AutoModelForSequenceClassification

        config = labelled_head_config(path, self.labels or [], self.cfg)
        config.problem_type = (
            "multi_label_classification" if self.multi_label else "single_label_classification"
        )
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
    def _probabilities(self, logits: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        # The one place logits become probabilities (eval, predict, serve, ensembles), so the
        # fitted temperature applies everywhere.
        t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        if calibrated and self.temperature is not None:
            t = t / self.temperature
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
        # Multi-label: the mean of the per-label binary ECEs (evaluation/calibration.py).
        metrics["ece"] = expected_calibration_error(probs, y_true, multi_label=self.multi_label)
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
            details.update(calibration_details(probs, y_true))
        return EvalResult(metrics=metrics, details=details)

    def trainer_metrics(self) -> Any:
        def compute(eval_pred: Any) -> dict[str, float]:
            probs = self._probabilities(eval_pred.predictions)
            result = self.scores(eval_pred.label_ids, probs)
            return {k: v for k, v in result.metrics.items() if k != "n"}

        return compute

    def logits(
        self, model: Any, tokenizer: Any, features: list[dict[str, Any]], batch_size: int
    ) -> np.ndarray:
        """Raw logits (no temperature) for tokenized features, in their original order."""
        out = np.zeros((len(features), len(self.labels or [])), dtype=np.float32)
        for index, batch in inference_batches(self, model, features, self.collator(tokenizer), batch_size):
            out[index] = model(**batch).logits.float().cpu().numpy()
        return out

    def probabilities(
        self, model: Any, tokenizer: Any, features: list[dict[str, Any]], batch_size: int
    ) -> np.ndarray:
        """Probabilities for tokenized features, in their original order (temperature applied)."""
        return self._probabilities(self.logits(model, tokenizer, features, batch_size))

    def _gold_and_logits(
        self, model: Any, tokenizer: Any, dataset: Any, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        features = [dict(row) for row in self.tokenize(dataset, tokenizer)]
        logits = self.logits(model, tokenizer, features, batch_size)
        return np.asarray([f["labels"] for f in features]), logits

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        gold, logits = self._gold_and_logits(model, tokenizer, dataset, batch_size)
        probs = self._probabilities(logits)
        result = self.scores(gold, probs)
        if self.temperature is not None and len(gold):
            raw = self._probabilities(logits, calibrated=False)
            result.metrics["ece_uncalibrated"] = expected_calibration_error(
                raw, gold, multi_label=self.multi_label
            )
        result.records = self.records(dataset, gold, probs)
        return result

    def records(self, dataset: Any, gold: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
        """One record per row of the (untokenized) dataset: {row, text, text_pair (pairs only),
        gold, predicted, confidence, correct}; multi-label: gold and predicted are label lists
        (those at or above the threshold) and there is no confidence."""
        labels = self.labels or []
        texts = dataset["text"]
        pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
        out: list[dict[str, Any]] = []
        for i, (g, p) in enumerate(zip(gold, probs, strict=True)):
            record: dict[str, Any] = {"row": i, "text": texts[i]}
            if pairs is not None:
                record["text_pair"] = pairs[i]
            if self.multi_label:
                named = [lb for lb, v in zip(labels, g, strict=True) if v >= 0.5]
                chosen = [lb for lb, v in zip(labels, p, strict=True) if v >= self.options.threshold]
                record.update(gold=named, predicted=chosen, correct=named == chosen)
            else:
                top = int(p.argmax())
                record.update(gold=labels[int(g)], predicted=labels[top], confidence=round(float(p[top]), 6))
                record["correct"] = int(g) == top
            out.append(record)
        return out

    # ---- after training: task.calibration ------------------------------------------------------
    def fit_after_training(
        self, model: Any, tokenizer: Any, validation: Any, batch_size: int
    ) -> dict[str, Any]:
        if self.options.calibration == "none":
            return {}
        from lmtune.evaluation.calibration import temperature_record

        if validation is None:
            gold, logits = np.zeros(0), np.zeros((0, len(self.labels or [])))
        else:
            gold, logits = self._gold_and_logits(model, tokenizer, validation, batch_size)
        self.temperature, self.calibration_record = temperature_record(logits, gold, self.multi_label)
        return {"calibration": self.calibration_record}

    def fitted_state(self) -> dict[str, Any]:
        return {"temperature": self.temperature} if self.temperature is not None else {}

    def restore_state(self, state: dict[str, Any]) -> None:
        temperature = state.get("temperature")
        if temperature is not None and not (isinstance(temperature, int | float) and temperature > 0):
            raise LmtuneError(f"model/lmtune.json: task_state.temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature) if temperature is not None else None

    # ---- eval --group-column -------------------------------------------------------------------
    def read_labelled_columns(self, path: str, columns: Sequence[str]) -> tuple[Any, dict[str, list[str]]]:
        from lmtune.evaluation.fairness import group_values

        table = read_table(path, self.cfg.data.format)
        records = self._checked(self._extract(table, need_label=True)[0])
        # Rows without text are dropped by `_extract`: map each record back to its table row.
        row_of = {table.where(i): i for i in range(len(table))}
        rows = [row_of[r["_where"]] for r in records]
        return self.to_dataset(records), group_values(table, rows, columns)

    def evaluate_rows(
        self, model: Any, tokenizer: Any, dataset: Any, batch_size: int
    ) -> tuple[EvalResult, list[str], list[str]]:
        if self.multi_label:
            raise LmtuneError(
                "group metrics need single-label classification; this run is multi-label",
                hint="evaluate without --group-column",
            )
        gold, logits = self._gold_and_logits(model, tokenizer, dataset, batch_size)
        probs = self._probabilities(logits)
        labels = self.labels or []
        named = [labels[int(g)] for g in gold], [labels[int(p)] for p in probs.argmax(axis=-1)]
        return self.scores(gold, probs), *named

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        if not inputs:
            return []
        # Tokenize directly: a datasets.map per call costs more than the forward pass when serving.
        pairs = [i.get("text_pair") or "" for i in inputs] if any("text_pair" in i for i in inputs) else None
        texts = [i["text"] for i in inputs]
        enc = tokenizer(texts, pairs, truncation=True, max_length=self.cfg.data.max_length)
        features = [{key: enc[key][n] for key in enc} for n in range(len(inputs))]
        probs = self.probabilities(model, tokenizer, features, batch_size)
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

    # ---- explanations ---------------------------------------------------------------------------
    def attribution_row(
        self, model: Any, tokenizer: Any, item: dict[str, Any], target: str | None, options: Any
    ) -> Any:
        """The text (and pair) as one row. Targets: `target`, else the predicted class (multi-label:
        each predicted label), as its probability: the scores sum to how far the tokens moved it."""
        from lmtune.evaluation.explain import (
            AttributionTarget,
            ExplainRow,
            special_positions,
            words_of_encoding,
        )

        labels = self.labels or []
        if target is not None and target not in labels:
            raise LmtuneError(
                f"unknown --target label '{target}'", hint=f"labels of this run: {', '.join(labels)}"
            )
        prediction = self.predict(model, tokenizer, [item], 1)[0]
        pair = item.get("text_pair") or None
        max_length = self.cfg.data.max_length
        enc = tokenizer(
            [item["text"]],
            [pair] if pair else None,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
        )
        ids = enc["input_ids"][0]
        if target is not None:
            names = [target]
        elif self.multi_label:
            # Nothing above the threshold: explain the most likely label instead of nothing.
            names = prediction["labels"] or [max(prediction["scores"], key=prediction["scores"].get)]
        else:
            names = [prediction["label"]]
        # Encoders read the first token ([CLS]); decoder classifiers the last.
        focus = [0] if ids[0] == tokenizer.cls_token_id else [len(ids) - 1]
        targets = [
            AttributionTarget(
                name, "probability", self._probability_of(labels.index(name)), focus, erasable=True
            )
            for name in names
        ]
        fields = [("text", item["text"]), *([("text_pair", pair)] if pair else [])]
        return ExplainRow(
            item=item,
            prediction=prediction,
            features={k: enc[k][0] for k in enc if k != "offset_mapping"},
            tokens=tokenizer.convert_ids_to_tokens(ids),
            words=words_of_encoding(enc, 0, fields),
            fixed=special_positions(tokenizer, ids),
            targets=targets,
            note=f"truncated to data.max_length={max_length} tokens" if len(ids) >= max_length else None,
        )

    def _probability_of(self, index: int) -> Any:
        """The probability of class `index` as `predict` gives it (a fitted temperature applied)."""
        multi_label = self.multi_label
        temperature = getattr(self, "temperature", None) or 1.0

        def value(output: Any) -> torch.Tensor:
            logits = output.logits.float() / temperature
            return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1))[:, index]

        return value

    # ---- report -----------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.plots import confusion_matrix_png
        from lmtune.evaluation.report import per_label_table, section

        lines: list[str] = []
        for split, result in results.items():
            lines += section(
                f"Per-class results ({split})", per_label_table("label", result.details["per_class"])
            )
            matrix = result.details.get("confusion_matrix")
            if matrix is not None:
                name = f"confusion_matrix_{split}.png"
                confusion_matrix_png(
                    matrix, self.labels or [], run_dir / name, title=f"Confusion matrix ({split})"
                )
                lines.append(f"![confusion matrix ({split})]({name})\n")
                lines.extend(_top_confusions(matrix, self.labels or []))
        if "test" in results:
            from lmtune.evaluation.calibration import calibration_section

            lines += calibration_section(results["test"], self.calibration_record, run_dir, "test")
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


def right_padding(tokenizer: Any) -> Any:
    """`tokenizer`, or a shallow copy of it that pads on the right.

    Tasks that read or supervise particular positions (a tag per word, an answer's start and
    end) index the unpadded features; a decoder's tokenizer that pads on the left (Gemma 3's)
    would shift every row of a batch by its padding. The copy shares the backend tokenizer and
    leaves the caller's object as it was, so generation elsewhere still pads on the left.
    """
    if getattr(tokenizer, "padding_side", "right") == "right":
        return tokenizer
    import copy

    shifted = copy.copy(tokenizer)
    shifted.padding_side = "right"
    return shifted


def labelled_head_config(path: str, labels: list[str], cfg: Any) -> Any:
    """The model config of `path` for a head over `labels` (per text or per token), run settings applied."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    apply_dropout(config, cfg.train.dropout)
    if getattr(config, "pad_token_id", None) is None:
        # Decoder classifiers pool the last non-pad token, so they need a pad id.
        config.pad_token_id = getattr(config, "eos_token_id", None)
        if isinstance(config.pad_token_id, list):
            config.pad_token_id = config.pad_token_id[0]
    return config


def apply_dropout(config: Any, dropout: float | None) -> None:
    """Override every dropout rate a transformers config exposes."""
    if dropout is None:
        return
    for key, value in config.to_dict().items():
        if "dropout" in key and (isinstance(value, float) or value is None) and not key.startswith("_"):
            setattr(config, key, dropout)
