"""Streaming train data: chunked readers, the length-grouped stream, and a streamed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import fast_config, separable_rows, write_csv

from lmtune.config import RunConfig
from lmtune.data.readers import read_table
from lmtune.data.streaming import LengthGroupedStream, iter_tables
from lmtune.errors import LmtuneError


def _write_variants(tmp_path: Path, rows: list[dict[str, str]]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = write_csv(tmp_path / "d.csv", rows)
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text(
        "text\tlabel\n\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows), encoding="utf-8"
    )
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n\n" for r in rows), encoding="utf-8")
    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)
    return {"csv": csv_path, "tsv": tsv_path, "jsonl": jsonl_path, "parquet": parquet_path}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_chunks_hold_the_same_rows_and_line_numbers_as_the_whole_file(tmp_path, fmt):
    rows = separable_rows(23, 0)
    path = _write_variants(tmp_path, rows)[fmt]
    chunks = list(iter_tables(path, chunk_rows=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    whole = read_table(path)
    assert [r for c in chunks for r in c.rows] == whole.rows
    assert [n for c in chunks for n in c.row_numbers] == whole.row_numbers
    assert chunks[-1].where(0, "label") == whole.where(20, "label")


def test_a_bad_row_far_into_the_stream_names_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    lines = ["text,label"] + [f"row {i},pos" for i in range(1, 50)] + ["too,many,fields"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LmtuneError, match=r"bad.csv, line 51: 3 fields but the header has 2"):
        list(iter_tables(path, chunk_rows=8))


def test_a_json_list_cannot_be_streamed(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(separable_rows(4, 0)), encoding="utf-8")
    with pytest.raises(LmtuneError, match="cannot be streamed"):
        list(iter_tables(path))


def _stream(
    lengths: list[int], batch_size: int, chunk: int = 7, buffer_batches: int = 4
) -> LengthGroupedStream:
    examples = [{"id": i, "length": n} for i, n in enumerate(lengths)]

    def chunks():
        for start in range(0, len(examples), chunk):
            yield [dict(e) for e in examples[start : start + chunk]]

    return LengthGroupedStream(chunks, batch_size, seed=3, buffer_batches=buffer_batches)


def test_stream_yields_every_example_once_in_length_grouped_batches():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(203)]
    stream = _stream(lengths, batch_size=8)
    first = list(stream)
    assert sorted(e["id"] for e in first) == list(range(203))
    batches = [first[i : i + 8] for i in range(0, len(first), 8)]
    assert all(len(b) == 8 for b in batches[:-1])  # only the stream's last batch is short

    def padded(batches: list[list[dict]]) -> int:
        return sum(len(b) * max(e["length"] for e in b) for b in batches)

    shuffled = [dict(id=i, length=n) for i, n in enumerate(lengths)]
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + 8] for i in range(0, len(shuffled), 8)]
    assert padded(batches) < 0.75 * padded(random_batches)

    again = list(_stream(lengths, batch_size=8))
    assert [e["id"] for e in again] == [e["id"] for e in first]  # same seed and epoch: same order
    stream.set_epoch(1)
    assert [e["id"] for e in stream] != [e["id"] for e in first]


def test_streaming_config_errors(minilm_path, sentiment_files, tmp_path):
    import lmtune

    raw = fast_config("all-MiniLM-L6-v2", sentiment_files, tmp_path / "out", data={"streaming": True})
    del raw["data"]["validation"]
    with pytest.raises(LmtuneError, match="needs a validation file"):
        lmtune.train(RunConfig.from_dict(raw))
    raw = fast_config("all-MiniLM-L6-v2", sentiment_files, tmp_path / "out", data={"streaming": True})
    raw["task"] = "question-answering"
    # data.streaming is classification's key: another task refuses it when the config is read.
    with pytest.raises(LmtuneError, match=r"'data\.streaming': task 'question-answering' does not read it"):
        lmtune.train(RunConfig.from_dict(raw))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_streamed_run_learns_and_records_its_schedule(minilm_path, tmp_path):
    import lmtune

    files = {
        "train": write_csv(tmp_path / "train.csv", separable_rows(120, 1)),
        "validation": write_csv(tmp_path / "dev.csv", separable_rows(24, 2)),
        "test": write_csv(tmp_path / "test.csv", separable_rows(24, 3)),
    }
    raw = fast_config(
        "all-MiniLM-L6-v2",
        files,
        tmp_path / "run",
        data={"streaming": True, "max_train_samples": 96},
        train={"epochs": 3, "learning_rate": 2e-3},
    )
    run = lmtune.train(RunConfig.from_dict(raw))
    metrics = run.metrics
    assert metrics["data"]["streaming"] is True
    assert metrics["data"]["rows"]["train"] == 96
    assert metrics["data"]["class_balance"]["train"] == {"negative": 48, "positive": 48}
    assert metrics["train"]["steps"] == 36  # 96 rows / 8 per step x 3 epochs
    assert run.config.train.max_steps == 36  # written into config.yaml, so it reruns the same
    assert metrics["test"]["accuracy"] >= 0.9
    assert lmtune.load_run(tmp_path / "run").predict(["the hotel was superb"])[0]["label"] == "positive"
