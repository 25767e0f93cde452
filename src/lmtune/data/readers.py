"""Readers for csv, tsv, json, jsonl and parquet files into a `Table` of rows.

We parse text formats with the standard library rather than `datasets.load_dataset`: it lets
every error name the file, the line and the column (datasets reports pyarrow parse errors
without a row), and it costs nothing at our data sizes. Tables become `datasets.Dataset`
objects after validation.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

# A review or a document can exceed csv's default 128 KiB field limit; the tokenizer truncates.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class Table:
    """Rows read from one file, with the line/record number of each row for error messages."""

    path: str
    columns: list[str]
    rows: list[dict[str, Any]]
    row_numbers: list[int] = field(default_factory=list)
    unit: str = "line"  # how row numbers count: "line" (csv/tsv/jsonl) or "record" (json/parquet)

    def where(self, index: int, column: str | None = None) -> str:
        loc = f"{self.path}, {self.unit} {self.row_numbers[index]}"
        return f"{loc}, column '{column}'" if column is not None else loc

    def __len__(self) -> int:
        return len(self.rows)


def detect_format(path: str | Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise LmtuneError(
        f"{path}: cannot tell the file format from the extension '{suffix or '(none)'}'",
        hint=f"rename it or set data.format to one of {', '.join(FORMATS)}",
    )


def existing_file(path: str | Path) -> Path:
    """The path of a data file that exists (a missing file or a directory is an `LmtuneError`)."""
    path = Path(path)
    if not path.exists():
        raise LmtuneError(
            f"data file not found: {path}", hint="check the path (relative to the current directory)"
        )
    if path.is_dir():
        raise LmtuneError(f"{path} is a directory, expected a data file")
    return path


def read_table(path: str | Path, fmt: str = "auto") -> Table:
    """Read a data file; every problem is an `LmtuneError` naming the file and line."""
    path = existing_file(path)
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        table = _read_parquet(path)
    else:
        text = _read_text(path)
        if not text.strip():
            raise LmtuneError(f"{path}: the file is empty", hint="add a header line and data rows")
        reader = {"csv": _read_delimited, "tsv": _read_delimited, "json": _read_json, "jsonl": _read_jsonl}[
            fmt
        ]
        table = reader(path, text, fmt) if fmt in ("csv", "tsv") else reader(path, text)
    if not table.rows:
        raise LmtuneError(f"{path}: no data rows (only a header?)", hint="add at least one labelled example")
    if not table.columns:  # e.g. JSON records that are all {}: nothing to find a column in
        raise LmtuneError(
            f"{path}: the records have no fields", hint="give each record text and label fields"
        )
    return table


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        # utf-8-sig strips a byte-order mark that spreadsheet programs like to add.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LmtuneError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint="re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


def _read_delimited(path: Path, text: str, fmt: str) -> Table:
    header, records = delimited_records(path, io.StringIO(text, newline=""), fmt)
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, row in records:
        rows.append(row)
        numbers.append(number)
    return Table(str(path), header, rows, numbers, "line")


def delimited_records(
    path: Path, lines: Iterable[str], fmt: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The checked header of a csv/tsv stream, and its (line number, row) records, read lazily.

    Shared by whole-file reading and streaming (data/streaming.py), so both report the same
    errors with the same line numbers.
    """
    delimiter = "\t" if fmt == "tsv" else ","
    # TSV files (GLUE, CoNLL exports) rarely quote; treating quotes literally avoids swallowing lines.
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise LmtuneError(f"{path}: the file is empty", hint="add a header line and data rows") from None
    except csv.Error as exc:
        raise LmtuneError(f"{path}, line 1: cannot parse the header ({exc})") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise LmtuneError(f"{path}, line 1: the header is empty", hint="the first line must name the columns")
    seen: set[str] = set()
    for name in header:
        if not name:
            raise LmtuneError(f"{path}, line 1: a column has no name", hint="name every column in the header")
        if name in seen:
            raise LmtuneError(
                f"{path}, line 1: column '{name}' appears twice", hint="give columns unique names"
            )
        seen.add(name)

    def records() -> Iterator[tuple[int, dict[str, str]]]:
        line = 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # The record that fails starts on the line after the previous record ended; csv's
                # line_num is where it gave up (for an unclosed quote: the end of the file).
                raise LmtuneError(
                    f"{path}, line {line + 1}: bad {fmt.upper()} quoting ({exc})",
                    hint='quote fields that contain the delimiter and double embedded quotes ("")',
                ) from None
            start = line + 1
            line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise LmtuneError(
                    f"{path}, line {start}: {len(record)} fields but the header has {len(header)}",
                    hint="quote fields containing the delimiter"
                    if len(record) > len(header)
                    else "fill every column",
                )
            yield start, dict(zip(header, record, strict=True))

    return header, records()


def _check_record(path: Path, obj: Any, number: int, unit: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise LmtuneError(
            f"{path}, {unit} {number}: expected a JSON object with named fields, got {type(obj).__name__}"
        )
    return obj


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return list(columns)


def _read_json(path: Path, text: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # One object per line saved as .json: read it as JSON Lines.
            return _read_jsonl(path, text)
        raise LmtuneError(
            f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})"
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if "data" in data and isinstance(data["data"], list):
            data = data["data"]
        elif len(lists) == 1:
            data = lists[0]
        else:
            raise LmtuneError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
    if not isinstance(data, list):
        raise LmtuneError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    rows = [_check_record(path, obj, i + 1, "record") for i, obj in enumerate(data)]
    return Table(str(path), _columns(rows), rows, list(range(1, len(rows) + 1)), "record")


def json_line(path: Path, number: int, line: str) -> Any:
    """The value on line `number` of a JSON Lines file (whole-file reading and streaming)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise LmtuneError(
            f"{path}, line {number}: invalid JSON ({exc.msg}, column {exc.colno})",
            hint="each line must be one complete JSON object",
        ) from None


def _read_jsonl(path: Path, text: str) -> Table:
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append(_check_record(path, json_line(path, number, line), number, "line"))
            numbers.append(number)
    return Table(str(path), _columns(rows), rows, numbers, "line")


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise LmtuneError(f"{path}: cannot read as parquet ({exc.__class__.__name__}: {exc})") from None
    return Table(str(path), _columns(rows), rows, list(range(1, len(rows) + 1)), "record")
