"""Seq2seq (translation, summarization): columns, metrics by hand, bert2bert warm start, end to end."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.models import resolve_model
from lmtune.tasks import get_task_class
from lmtune.tasks.seq2seq import Seq2SeqTask

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "sun", "moon", "tree", "house", "river", "stone"]


def copy_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Short lowercase word strings whose target is the source itself."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
        rows.append({"source": text, "target": text})
    return rows


def write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_task(**sections: dict) -> Seq2SeqTask:
    raw: dict = {"model": "bert2bert:x", "task": {"type": "seq2seq"}, "train": {"seed": 1}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Seq2SeqTask(RunConfig.from_dict(raw))


def s2s_config(model: str, files: dict[str, Path], out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "seq2seq", "max_target_length": 12},
        "method": "full",
        "data": {k: str(v) for k, v in files.items()} | {"max_length": 12},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "report_to": ["none"],
            "logging_steps": 5,
            "save_strategy": "no",
            "eval_strategy": "no",
        },
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
    return cfg


# ---- model names ----------------------------------------------------------------------------------
def test_registered():
    assert get_task_class("seq2seq") is Seq2SeqTask


def test_bert2bert_resolves_its_encoder_through_resolve_model(minilm_path, tiny_bert):
    ref = resolve_model("bert2bert:all-MiniLM-L6-v2")
    assert (ref.name, ref.path, ref.source) == ("bert2bert:all-MiniLM-L6-v2", minilm_path, "packaged")
    assert resolve_model(f"bert2bert:{tiny_bert}").path == str(Path(tiny_bert).resolve())
    for bad in ("bert2bert:", "bert2bert:bert2bert:all-MiniLM-L6-v2"):
        with pytest.raises(LmtuneError, match="does not name one encoder"):
            resolve_model(bad)
    with pytest.raises(LmtuneError, match="model directory not found"):
        resolve_model("bert2bert:./no/such/dir")


def test_plain_encoder_name_is_refused_with_the_bert2bert_hint(tiny_bert):
    task = Seq2SeqTask(RunConfig.from_dict({"model": tiny_bert, "task": "seq2seq"}))
    with pytest.raises(LmtuneError, match=r"not an encoder-decoder.*bert2bert:"):
        task.build_model(tiny_bert, fresh_head=True)


# ---- data -----------------------------------------------------------------------------------------
def test_columns_found_by_common_names_and_kind(tmp_path):
    rows = [{"document": "a long document about cats and dogs " * 3, "summary": "cats"} for _ in range(20)]
    task = make_task(data={"train": str(write_table(tmp_path / "t.csv", rows))})
    data = task.prepare_data()
    assert (task.text_column, task.label_column, task.kind) == ("document", "summary", "summarization")
    assert data.report["rows"] == {"test": 2, "validation": 2, "train": 16}
    assert set(data.splits["train"].column_names) == {"source", "target"}


def test_language_code_columns_need_a_direction(tmp_path):
    rows = [{"en": f"hello {i}", "zh": f"你好 {i}"} for i in range(20)]
    path = write_table(tmp_path / "t.tsv", rows)
    with pytest.raises(LmtuneError, match=r"look like languages; which is the source.*source_lang"):
        make_task(data={"train": str(path)}).prepare_data()
    task = make_task(data={"train": str(path)}, task={"source_lang": "zh"})
    task.prepare_data()
    assert (task.text_column, task.label_column, task.kind) == ("zh", "en", "translation")
    assert (task.source_lang, task.target_lang) == ("zh", "en")
    task = make_task(data={"train": str(path), "label_column": "zh"})
    task.prepare_data()
    assert (task.text_column, task.target_lang) == ("en", "zh")
    assert task.resolved_options() == {"kind": "translation", "source_lang": "en", "target_lang": "zh"}


def test_reader_errors_name_the_file(tmp_path):
    bad = write_table(tmp_path / "bad.csv", [{"question": "a", "reply": "b"}])
    with pytest.raises(LmtuneError, match=r"bad.csv: cannot find source and target columns"):
        make_task(data={"train": str(bad)}).prepare_data()
    with pytest.raises(LmtuneError, match=r"no source column 'sourse'.*did you mean 'source'"):
        good = write_table(tmp_path / "good.csv", copy_rows(10, 0))
        make_task(data={"train": str(good), "text_column": "sourse"}).prepare_data()
    empty = write_table(tmp_path / "empty.csv", [{"source": "", "target": "x"}])
    with pytest.raises(LmtuneError, match="no row has both a source and a target"):
        make_task(data={"train": str(empty)}).prepare_data()


def test_read_inputs_from_lines_and_tables(tmp_path):
    task = make_task()
    lines = tmp_path / "in.txt"
    lines.write_text("first input\n\nsecond input\n")
    assert task.read_inputs(str(lines)) == [{"source": "first input"}, {"source": "second input"}]
    table = write_table(tmp_path / "in.csv", [{"id": "1", "text": "hello"}])
    assert task.read_inputs(str(table)) == [{"source": "hello"}]
    with pytest.raises(LmtuneError, match="the file is empty"):
        (tmp_path / "empty.txt").write_text("\n")
        task.read_inputs(str(tmp_path / "empty.txt"))
    with pytest.raises(LmtuneError, match="expected 'source'"):
        task.check_input(0, {"source": 3})


# ---- tiny model end to end --------------------------------------------------------------------------
@pytest.fixture
def copy_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_table(tmp_path / "train.csv", copy_rows(16, 1)),
        "validation": write_table(tmp_path / "dev.csv", copy_rows(4, 2)),
        "test": write_table(tmp_path / "test.csv", copy_rows(4, 3)),
    }


def test_tiny_bert2bert_full_run_reload_gives_identical_generations(tiny_bert, copy_files, tmp_path):
    cfg = RunConfig.from_dict(s2s_config(f"bert2bert:{tiny_bert}", copy_files, tmp_path / "run"))
    run = lmtune.train(cfg)
    test = run.metrics["test"]
    assert set(test) >= {"loss", "bleu", "chrf", "perplexity", "gen_len", "n"} and test["n"] == 4
    assert run.config.task.options.kind == "translation"
    texts = ["red cat sun", "blue moon river dog"]
    first = run.predict(texts, options={"num_beams": 2, "max_new_tokens": 6})
    assert [r["source"] for r in first] == texts and all(isinstance(r["generation"], str) for r in first)
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(texts, options={"num_beams": 2, "max_new_tokens": 6}) == first
    assert loaded.evaluate(copy_files["test"])["bleu"] == pytest.approx(test["bleu"])
    with pytest.raises(LmtuneError, match="predict option 'beams': unknown option"):
        loaded.predict(texts, options={"beams": 2})


def test_tiny_bert2bert_lora_on_query_value_incl_cross_attention(tiny_bert, copy_files, tmp_path):
    cfg = s2s_config(
        f"bert2bert:{tiny_bert}",
        copy_files,
        tmp_path / "run",
        method={"name": "lora", "r": 4, "target_modules": ["query", "value"]},
        # The Trainer's per-epoch evaluation (teacher-forced loss) picks the best checkpoint.
        train={"epochs": 2, "eval_strategy": "epoch", "save_strategy": "epoch"},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    adapted = {n for n, _ in run.model.named_modules() if n.endswith("lora_A")}
    assert any(".encoder.encoder.layer." in n for n in adapted)
    assert any("crossattention.self.query" in n for n in adapted)
    assert any("decoder.bert.encoder.layer.0.attention.self.value" in n for n in adapted)
    assert run.metrics["train"]["best_checkpoint_metric"] is not None
    texts = ["green tree stone"]
    # The warm-started base (random cross-attention) is rebuilt on load: it must be identical.
    assert lmtune.load_run(tmp_path / "run").predict(texts) == run.predict(texts)


@pytest.mark.slow
def test_minilm_bert2bert_learns_a_copy_task(minilm_path, tmp_path):
    files = {
        "train": write_table(tmp_path / "train.csv", copy_rows(32, 11)),
        "validation": write_table(tmp_path / "dev.csv", copy_rows(4, 12)),
        "test": write_table(tmp_path / "test.csv", copy_rows(12, 13)),
    }
    cfg = s2s_config(
        "bert2bert:all-MiniLM-L6-v2",
        files,
        tmp_path / "run",
        train={"epochs": 16, "batch_size": 8, "learning_rate": 3e-4, "warmup_ratio": 0.1},
    )
    task = Seq2SeqTask(RunConfig.from_dict(cfg))
    task.prepare_data()
    from transformers import AutoTokenizer

    untrained = task.build_model(minilm_path, fresh_head=True)
    dataset = task.read_labelled(str(files["test"]))
    base = task.evaluate(untrained, AutoTokenizer.from_pretrained(minilm_path), dataset, 16).metrics["bleu"]
    run = lmtune.train(RunConfig.from_dict(cfg))
    bleu = run.metrics["test"]["bleu"]
    print(f"MiniLM bert2bert copy task: test BLEU {bleu:.1f} (untrained {base:.1f})")
    # Copying unseen word combinations needs the new (random) cross-attention to learn alignment;
    # 64 steps reach BLEU ~10 from ~0 (measured 10.2 vs 0.3), so the margin asked for is modest.
    assert bleu > base + 5
