"""Training data larger than memory: read the train file in chunks, tokenize on the fly, batch by length.

With `data.streaming: true` the train file is never held in memory. It is read twice per run
in bounded chunks: once up front (`scan`: row count, columns, labels and class balance, so
the schedule, the model head and the data report are known before training) and then once
per epoch by `LengthGroupedStream`, which tokenizes each chunk with the task's own
`tokenize`, fills a buffer of `buffer_batches` batches, sorts it by length, cuts it into
batches and yields those batches in a seeded random order. Padding stays as low as with
in-memory length grouping; shuffling is local to a buffer, so a file sorted by label should
be shuffled once beforehand (`shuf train.csv`).

Every row keeps its file and line number, so a bad row still gets an error naming both.
Readers: csv, tsv and jsonl line by line (stdlib, as data/readers.py), parquet by record
batches. A JSON list cannot be read incrementally; convert it to JSON Lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lmtune.data.readers import Table, delimited_records, detect_format, json_line
from lmtune.errors import LmtuneError

STREAMABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")


def iter_tables(path: str | Path, fmt: str = "auto", chunk_rows: int = 4096) -> Iterator[Table]:
    """The rows of a data file as consecutive `Table` chunks of at most `chunk_rows` rows."""
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(
            f"data file not found: {path}", hint="check the path (relative to the current directory)"
        )
    fmt = detect_format(path, fmt)
    if fmt not in STREAMABLE_FORMATS:
        raise LmtuneError(
            f"{path}: a {fmt} file cannot be streamed (it must be parsed whole)",
            hint="convert it to JSON Lines, csv, tsv or parquet, or set data.streaming to false",
        )
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_rows)
    elif fmt == "jsonl":
        yield from _jsonl_chunks(path, chunk_rows)
    else:
        yield from _delimited_chunks(path, fmt, chunk_rows)


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines; a decoding error names the line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise LmtuneError(
                    f"{path}, line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
                    hint="re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                ) from None
            yield line


def _delimited_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[Table]:
    header, records = delimited_records(path, _lines(path), fmt)
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, row in records:
        rows.append(row)
        numbers.append(number)
        if len(rows) == chunk_rows:
            yield Table(str(path), header, rows, numbers, "line")
            rows, numbers = [], []
    if rows:
        yield Table(str(path), header, rows, numbers, "line")


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[Table]:
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        obj = json_line(path, number, line)
        if not isinstance(obj, dict):
            raise LmtuneError(f"{path}, line {number}: expected a JSON object, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
        numbers.append(number)
        if len(rows) == chunk_rows:
            yield Table(str(path), list(columns), rows, numbers, "line")
            rows, numbers = [], []
    if rows:
        yield Table(str(path), list(columns), rows, numbers, "line")


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[Table]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise LmtuneError(f"{path}: cannot read as parquet ({exc.__class__.__name__}: {exc})") from None
    first = 1
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        rows = batch.to_pylist()
        yield Table(
            str(path), list(batch.schema.names), rows, list(range(first, first + len(rows))), "record"
        )
        first += len(rows)


class LengthGroupedStream(torch.utils.data.IterableDataset):
    """Tokenized training examples from a stream, in length-grouped batches, reproducible per epoch.

    `chunks()` yields lists of tokenized examples (dicts with a `length`). Examples are buffered
    `buffer_batches * batch_size` at a time; each full buffer is sorted by length, cut into
    batches, and the batches are yielded in an order drawn from (seed, epoch, buffer). The
    DataLoader then re-forms exactly these batches, since every batch is `batch_size` long
    except the last one of the stream. Several processes see the same order (Accelerate deals
    the batches out), because the order depends only on the seed and the epoch.
    """

    def __init__(
        self,
        chunks: Callable[[], Iterator[list[dict[str, Any]]]],
        batch_size: int,
        seed: int,
        buffer_batches: int = 64,
    ) -> None:
        super().__init__()
        self.chunks = chunks
        self.batch_size = batch_size
        self.seed = seed
        self.buffer_size = batch_size * buffer_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buffer: list[dict[str, Any]] = []
        index = 0
        for chunk in self.chunks():
            buffer.extend(chunk)
            while len(buffer) >= self.buffer_size:
                head, buffer = buffer[: self.buffer_size], buffer[self.buffer_size :]
                yield from self._grouped(head, index)
                index += 1
        if buffer:
            # The tail may leave one short batch; keep it last so every other batch stays full.
            yield from self._grouped(buffer, index)

    def _grouped(self, examples: list[dict[str, Any]], index: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        rng.shuffle(examples)  # ties in length are broken at random, not by file order
        examples.sort(key=lambda e: e["length"], reverse=True)
        batches = [examples[i : i + self.batch_size] for i in range(0, len(examples), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(full)
        for batch in full + [b for b in batches if len(b) < self.batch_size]:
            yield from batch


def tokenized_chunks(
    tables: Callable[[], Iterator[Table]],
    to_dataset: Callable[[Table], Any],
    tokenize: Callable[[Any], Any],
    limit: int | None = None,
) -> Callable[[], Iterator[list[dict[str, Any]]]]:
    """A re-startable source of tokenized examples: read a chunk, check and convert it, tokenize it.

    `to_dataset` turns a checked chunk into the task's `datasets.Dataset` (as in-memory runs do),
    `tokenize` is the task's own tokenization, so a streamed example equals an in-memory one.
    `limit` stops after that many examples (data.max_train_samples).
    """

    def chunks() -> Iterator[list[dict[str, Any]]]:
        seen = 0
        for table in tables():
            dataset = to_dataset(table)
            if limit is not None:
                dataset = dataset.select(range(min(len(dataset), limit - seen)))
            if len(dataset) == 0:
                break
            tokenized = tokenize(dataset)
            seen += len(tokenized)
            yield tokenized.to_list()
            if limit is not None and seen >= limit:
                break

    return chunks
