"""Sequence-to-sequence generation: translation and summarization.

Models are any `AutoModelForSeq2SeqLM` (T5, BART, Marian, an `EncoderDecoderModel` saved by
a run) or an encoder-decoder warm-started from two copies of an encoder, named
`bert2bert:<encoder>` (Rothe et al., 2020). Data are source/target columns found by common
names or by a pair of language codes (`en`/`zh`). Metrics: sacreBLEU BLEU and chrF for
translation, ROUGE-1/2/L (rouge-score) for summarization, plus the teacher-forced loss.
Evaluation generates batch by batch (length-sorted), so no logits are ever accumulated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lmtune.data import checks
from lmtune.data.readers import Table, read_table
from lmtune.data.splits import SplitRecords
from lmtune.errors import LmtuneError
from lmtune.evaluation.generation import CJK, bleu_scores, is_chinese, rouge_scores
from lmtune.models import warm_start_encoder
from lmtune.tasks.base import EvalResult, Rows, Task, inference_batches
from lmtune.tasks.classification import _DropLengthCollator, apply_dropout


class Seq2SeqOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["auto", "translation", "summarization"] = Field(
        default="auto",
        description="Picks the metrics (BLEU/chrF or ROUGE); auto decides from the columns and lengths.",
    )
    source_lang: str | None = Field(
        default=None, description="Source language code (e.g. en); a column name."
    )
    target_lang: str | None = Field(
        default=None, description="Target language code (e.g. zh); a column name."
    )
    bleu_tokenize: str | None = Field(
        default=None,
        description="sacreBLEU tokenizer; default 'zh' for Chinese targets, 'char' for ja, else 13a.",
    )
    lowercase: bool = Field(default=False, description="Case-insensitive BLEU/chrF (for uncased models).")
    max_target_length: int = Field(default=128, ge=4, description="Truncate targets to this many tokens.")
    num_beams: int = Field(default=1, ge=1, description="Beam size when evaluating (1: greedy).")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Longest generation; default max_target_length."
    )
    length_penalty: float = Field(default=1.0, description="Beam-search length penalty (>1 favours long).")
    no_repeat_ngram_size: int = Field(default=0, ge=0, description="Forbid repeating n-grams of this size.")


class Seq2SeqPredictOptions(BaseModel):
    """Per-call generation settings; unset ones come from the run's task options."""

    model_config = ConfigDict(extra="forbid")
    num_beams: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = Field(default=None, ge=0)


# (source, target) column names people use; the first pair present in a file wins.
COLUMN_PAIRS = (
    ("source", "target"),
    ("src", "tgt"),
    ("input", "output"),
    ("input_text", "target_text"),
    ("source_text", "target_text"),
    ("document", "summary"),
    ("article", "highlights"),
    ("article", "summary"),
    ("dialogue", "summary"),
    ("text", "summary"),
    ("content", "summary"),
    ("text", "target"),
)
SUMMARY_COLUMNS = {"summary", "highlights", "abstract", "headline", "title"}
SOURCE_COLUMNS = ("source", "src", "input", "input_text", "source_text", "document", "article", "text")
# A column named like a language code: en, zh, de, pt-br, zh_cn ...
_LANG_CODE = re.compile(r"^[a-z]{2,3}([-_][a-z]{2,4})?$")

# WordPiece decoding puts a space between every CJK character; Chinese is written without.
_CJK_GAP = re.compile(rf"(?<=[{CJK}\u3000-\u303f\uff00-\uffef])\s+(?=[{CJK}\u3000-\u303f\uff00-\uffef])")


class Seq2SeqTask(Task):
    name: ClassVar[str] = "seq2seq"
    description: ClassVar[str] = "Generate a target text from a source text: translation, summarization."
    Options = Seq2SeqOptions
    PredictOptions = Seq2SeqPredictOptions
    peft_task_type: ClassVar[str] = "SEQ_2_SEQ_LM"
    # lm_head (T5/BART), the decoder's MLM head and the new cross-attention (warm-started models).
    head_names: ClassVar[tuple[str, ...]] = ("lm_head", "cls", "crossattention")
    peft_head_names: ClassVar[tuple[str, ...]] = ()
    # The Trainer's per-epoch evaluation is teacher-forced (no generation): it picks by loss.
    default_metric: ClassVar[str] = "loss"
    prediction_view: ClassVar[str] = "text"
    resolved_columns: ClassVar[dict[str, str]] = {
        "text_column": "text_column",
        "label_column": "label_column",
    }
    greater_is_better: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.text_column: str | None = cfg.data.text_column
        self.label_column: str | None = cfg.data.label_column
        self.kind: str = self.options.kind
        self.source_lang: str | None = self.options.source_lang
        self.target_lang: str | None = self.options.target_lang

    def resolved_options(self) -> dict[str, Any]:
        return {"kind": self.kind, "source_lang": self.source_lang, "target_lang": self.target_lang}

    # ---- reading and checking -----------------------------------------------------------------
    def _columns(self, table: Table) -> tuple[str, str]:
        """(source, target) columns: explicit, a known pair, or a pair of language-code columns."""
        cols = {c.lower(): c for c in table.columns}

        def explicit(name: str | None, role: str, setting: str) -> str | None:
            if name is None:
                return None
            return checks.find_column(table, name, (), role, setting)

        source = explicit(self.text_column or self.source_lang, "source", "data.text_column")
        target = explicit(self.label_column or self.target_lang, "target", "data.label_column")
        if source and target:
            return source, target
        for src, tgt in COLUMN_PAIRS:
            wanted = (source is None or source.lower() == src) and (target is None or target.lower() == tgt)
            if wanted and src in cols and tgt in cols:
                return cols[src], cols[tgt]
        codes = [c for c in table.columns if _LANG_CODE.match(c.lower())]
        if len(codes) == 2 and (source in codes or target in codes):
            other = codes[1] if (source or target) == codes[0] else codes[0]
            return (source, other) if source else (other, target)  # type: ignore[return-value]
        if len(codes) == 2:
            raise LmtuneError(
                f"{table.path}: columns {codes[0]} and {codes[1]} look like languages; which is the source?",
                hint=f"set task option source_lang (e.g. --set task.source_lang={codes[0]}) "
                "or data.text_column",
            )
        raise LmtuneError(
            f"{table.path}: cannot find source and target columns (columns: {', '.join(table.columns)})",
            hint="name them source/target (or src/tgt, document/summary, en/zh ...) "
            "or set data.text_column and data.label_column",
        )

    def _extract(self, table: Table, need_target: bool = True) -> tuple[list[dict[str, Any]], int]:
        source, target = self._columns(table)
        self.text_column, self.label_column = source, target
        texts = checks.text_rows(table, (source, target if need_target else None))
        records = [{"source": src, "target": tgt} for _, (src, tgt) in texts]
        if not records:
            raise LmtuneError(
                f"{table.path}: no row has both a source and a target",
                hint=f"check columns '{source}' and '{target}'",
            )
        return records, len(table) - len(records)

    def _decide_kind(self, records: list[dict[str, Any]]) -> None:
        """auto: language-code columns mean translation; summary columns or short targets summarization."""
        source, target = self.text_column or "", self.label_column or ""
        if _LANG_CODE.match(source.lower()) and _LANG_CODE.match(target.lower()):
            self.source_lang = self.source_lang or source
            self.target_lang = self.target_lang or target
        if self.kind != "auto":
            return
        if self.source_lang and self.target_lang:
            self.kind = "translation"
        elif target.lower() in SUMMARY_COLUMNS:
            self.kind = "summarization"
        else:
            src_chars = sum(len(r["source"]) for r in records)
            tgt_chars = sum(len(r["target"]) for r in records)
            self.kind = "summarization" if tgt_chars < 0.5 * src_chars else "translation"

    # ---- the hooks of Task.prepare_data -------------------------------------------------------------
    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
        records, dropped = self._extract(read_table(path, self.cfg.data.format))
        if split == "train":
            self._decide_kind(records)
        return records, {"dropped_empty": dropped}

    def dedup_key(self, record: dict[str, Any]) -> tuple[str, str]:
        return record["source"], record["target"]

    def overlap_key(self, record: dict[str, Any]) -> str:
        return record["source"]

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        def mean_chars(rows: list[dict[str, Any]], key: str) -> float:
            return round(sum(len(r[key]) for r in rows) / max(1, len(rows)), 1)

        return {
            "columns": {"source": self.text_column, "target": self.label_column},
            "kind": self.kind,
            "languages": {"source": self.source_lang, "target": self.target_lang},
            **prepared.summary(
                self.overlap_key, dropped_empty_train=prepared.infos["train"]["dropped_empty"]
            ),
            "mean_chars": {
                name: {"source": mean_chars(rows, "source"), "target": mean_chars(rows, "target")}
                for name, rows in prepared.records.items()
            },
        }

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        return Dataset.from_dict(
            {"source": [r["source"] for r in records], "target": [r["target"] for r in records]}
        )

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """A table with the source column (or source/text), or a text file with one input per line."""
        file = Path(path)
        if self.cfg.data.format == "auto" and file.suffix.lower() in (".txt", ".text", ""):
            if not file.is_file():
                read_table(path)  # raises the not-found / directory error
            lines = [ln.strip() for ln in file.read_text(encoding="utf-8-sig").splitlines()]
            inputs = [{"source": ln} for ln in lines if ln]
            if not inputs:
                raise LmtuneError(f"{path}: the file is empty", hint="one source text per line")
            return inputs
        table = read_table(path, self.cfg.data.format)
        if self.text_column in table.columns:
            column = self.text_column
        else:
            column = checks.find_column(table, None, SOURCE_COLUMNS, "source", "data.text_column")
        return [{"source": s} for i in range(len(table)) if (s := checks.text_value(table, i, column))]

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        if not isinstance(item.get("source", item.get("text")), str):
            raise LmtuneError(f"input {index + 1}: expected 'source' (or 'text'), a string")

    # ---- model ---------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM
        from transformers.utils import logging as hf_logging

        trust = self.cfg.model.trust_remote_code
        dropout = self.cfg.train.dropout
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        if config.model_type == "encoder-decoder" or not getattr(config, "is_encoder_decoder", False):
            if config.model_type != "encoder-decoder":
                if warm_start_encoder(self.cfg.model.name) is None:
                    raise LmtuneError(
                        f"model '{self.cfg.model.name}' ({config.model_type}) is not an encoder-decoder",
                        hint=f"pick a seq2seq model (T5, BART, Marian) or warm-start one from this encoder: "
                        f"model: bert2bert:{self.cfg.model.name}",
                    )
                model = self._warm_start(path, config)
            else:
                for part in (config.encoder, config.decoder):
                    apply_dropout(part, dropout)
                model = AutoModelForSeq2SeqLM.from_pretrained(path, config=config, trust_remote_code=trust)
            return model
        apply_dropout(config, dropout)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return AutoModelForSeq2SeqLM.from_pretrained(path, config=config, trust_remote_code=trust)
        finally:
            hf_logging.set_verbosity(verbosity)

    def _warm_start(self, path: str, encoder_config: Any) -> Any:
        """EncoderDecoderModel from two copies of an encoder; new weights seeded for reproducibility."""
        import copy

        from transformers import AutoTokenizer, EncoderDecoderModel
        from transformers.utils import logging as hf_logging

        tokenizer = AutoTokenizer.from_pretrained(path)
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if start is None or end is None or tokenizer.pad_token_id is None:
            raise LmtuneError(
                f"cannot warm-start a decoder from '{self.cfg.model.name}': its tokenizer has no "
                "CLS/BOS, SEP/EOS or PAD token",
                hint="use a BERT-style encoder (bert2bert:all-MiniLM-L6-v2) or a seq2seq model",
            )
        apply_dropout(encoder_config, self.cfg.train.dropout)
        decoder_config = copy.deepcopy(encoder_config)
        decoder_config.is_decoder = True
        decoder_config.add_cross_attention = True
        # Cross-attention and the LM-head transform are new random weights. A peft run saves
        # only its adapter and rebuilds this base when loaded, so the initialisation must be
        # the same every time: seed it, without disturbing the caller's random state.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the long "newly initialised weights" table is expected here
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.train.seed)
                model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                    path, path, encoder_config=encoder_config, decoder_config=decoder_config
                )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise LmtuneError(
                f"cannot warm-start an encoder-decoder from '{self.cfg.model.name}': {first[:200]}",
                hint="the encoder's architecture must also work as a decoder (BERT, RoBERTa, ELECTRA)",
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        # transformers 5 reads these from both places (forward shifts labels with config,
        # generate with generation_config): without them generation fails.
        for target in (model.config, model.generation_config):
            target.decoder_start_token_id = start
            target.bos_token_id = start
            target.pad_token_id = tokenizer.pad_token_id
            target.eos_token_id = end
        model.config.vocab_size = model.config.decoder.vocab_size
        return model

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        max_length = self.cfg.data.max_length
        max_target = self.options.max_target_length
        # A BERT-style tokenizer (CLS, no BOS) starts every target with [CLS], which is also
        # the decoder start token the model prepends itself: drop it from the labels.
        drop_first = tokenizer.cls_token_id if tokenizer.bos_token_id is None else None
        has_target = "target" in dataset.column_names

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            enc = tokenizer(batch["source"], truncation=True, max_length=max_length)
            out: dict[str, list[Any]] = {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
            }
            if has_target:
                labels = tokenizer(text_target=batch["target"], truncation=True, max_length=max_target)
                ids = [
                    seq[1:] if drop_first is not None and seq and seq[0] == drop_first else seq
                    for seq in labels["input_ids"]
                ]
                out["labels"] = ids
                out["length"] = [len(a) + len(b) for a, b in zip(enc["input_ids"], ids, strict=True)]
            else:
                out["length"] = [len(a) for a in enc["input_ids"]]
            return out

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return _DropLengthCollator(
            DataCollatorForSeq2Seq(
                tokenizer,
                label_pad_token_id=-100,
                pad_to_multiple_of=8 if torch.cuda.is_available() else None,
            )
        )

    # ---- generation -----------------------------------------------------------------------------
    def _generation_kwargs(self, options: Seq2SeqPredictOptions | None = None) -> dict[str, Any]:
        o = self.options

        def pick(name: str, default: Any) -> Any:
            value = getattr(options, name, None) if options is not None else None
            return default if value is None else value

        kwargs: dict[str, Any] = {
            "num_beams": pick("num_beams", o.num_beams),
            "max_new_tokens": pick("max_new_tokens", o.max_new_tokens or o.max_target_length),
            "no_repeat_ngram_size": pick("no_repeat_ngram_size", o.no_repeat_ngram_size),
            "do_sample": False,
        }
        if kwargs["num_beams"] > 1:
            kwargs["length_penalty"] = pick("length_penalty", o.length_penalty)
        return kwargs

    def _generate(
        self,
        model: Any,
        tokenizer: Any,
        features: list[dict[str, Any]],
        batch_size: int,
        gen_kwargs: dict[str, Any],
    ) -> tuple[list[str], float | None, int]:
        """Generations in input order, the mean teacher-forced loss per target token, tokens generated."""
        texts: list[str] = [""] * len(features)
        loss_sum, loss_tokens, generated = 0.0, 0, 0
        collate = self.collator(tokenizer)
        for index, batch in inference_batches(self, model, features, collate, batch_size, drop=()):
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            if "labels" in batch:
                tokens = int((batch["labels"] != -100).sum())
                loss = model(**inputs, labels=batch["labels"]).loss
                loss_sum += float(loss) * tokens
                loss_tokens += tokens
            out = model.generate(**inputs, **gen_kwargs)
            # Encoder-decoders return the decoder start token first; count only what was new.
            generated += int((out[:, 1:] != tokenizer.pad_token_id).sum())
            for k, text in zip(index, tokenizer.batch_decode(out, skip_special_tokens=True), strict=True):
                texts[k] = _CJK_GAP.sub("", text.strip())
        loss_mean = loss_sum / loss_tokens if loss_tokens else None
        return texts, loss_mean, generated

    def scores(self, hypotheses: list[str], references: list[str]) -> dict[str, float]:
        """BLEU/chrF (translation) or ROUGE (summarization) of generations against references."""
        if self.kind == "summarization":
            return rouge_scores(hypotheses, references)
        tokenize = self.options.bleu_tokenize
        if tokenize is None:
            tokenize = "zh" if is_chinese(self.target_lang) else "char" if self.target_lang == "ja" else "13a"
        return bleu_scores(hypotheses, references, tokenize, self.options.lowercase)

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        features = [dict(row) for row in self.tokenize(dataset, tokenizer)]
        hyps, loss, generated = self._generate(
            model, tokenizer, features, batch_size, self._generation_kwargs()
        )
        refs = list(dataset["target"])
        metrics: dict[str, Any] = {"loss": loss, **self.scores(hyps, refs)}
        metrics["perplexity"] = math.exp(min(loss, 50.0)) if loss is not None else None
        metrics["gen_len"] = generated / max(1, len(hyps))
        metrics["n"] = len(hyps)
        records = [
            {"row": i, "source": s, "reference": r, "generation": h}
            for i, (s, r, h) in enumerate(zip(dataset["source"], refs, hyps, strict=True))
        ]
        samples = [{k: v for k, v in r.items() if k != "row"} for r in records[:5]]
        return EvalResult(metrics=metrics, details={"kind": self.kind, "samples": samples}, records=records)

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        from datasets import Dataset

        if not inputs:
            return []
        sources = [str(item.get("source", item.get("text"))) for item in inputs]
        features = [dict(row) for row in self.tokenize(Dataset.from_dict({"source": sources}), tokenizer)]
        texts, _, _ = self._generate(model, tokenizer, features, batch_size, self._generation_kwargs(options))
        return [{"source": s, "generation": t} for s, t in zip(sources, texts, strict=True)]

    # ---- report ---------------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.report import markdown_table, section

        columns = ["source", "reference", "generation"]
        lines: list[str] = []
        for split, result in results.items():
            if samples := result.details.get("samples"):
                table = markdown_table(columns, ([s[k] for k in columns] for s in samples), left=3, width=200)
                lines += section(f"Sample generations ({split})", table)
        return lines
