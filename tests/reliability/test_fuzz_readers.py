"""Property-based tests: no input makes a reader or the config loader raise anything but LmtuneError.

Budget: LMTUNE_FUZZ_EXAMPLES examples per test (200 by default, which keeps the file well under
30 s); run e.g. `LMTUNE_FUZZ_EXAMPLES=5000 pytest tests/reliability/test_fuzz_readers.py` for a
deeper search outside CI.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtune.config import RunConfig, apply_overrides, load_yaml, parse_override
from lmtune.data.conll import read_conll, read_sentences
from lmtune.data.readers import read_table
from lmtune.errors import LmtuneError

EXAMPLES = int(os.environ.get("LMTUNE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Text that looks like data: delimiters, quotes, newlines, BOMs, non-ASCII and control characters.
ALPHABET = st.sampled_from(
    [*list("ab ,;\t\n\r\"'{}[]:0123456789.-_#\\\ufeffé\x00\x85\u2028"), "text", "label"]
)
DATA_TEXT = st.lists(ALPHABET, max_size=120).map("".join)
BYTES = st.one_of(
    st.binary(max_size=200),
    DATA_TEXT.map(lambda s: s.encode("utf-8")),
    DATA_TEXT.map(lambda s: s.encode("utf-16")),
    DATA_TEXT.map(lambda s: s.encode("latin-1", errors="replace")),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _write(data: bytes, suffix: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    holder = tempfile.TemporaryDirectory()
    path = Path(holder.name) / f"data{suffix}"
    path.write_bytes(data)
    return holder, path


def _only_lmtune_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except LmtuneError as exc:
        # One line, except where it quotes a user-supplied name that itself holds a newline.
        assert exc.message.strip()
        return None


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
@FUZZ
@given(data=BYTES)
def test_read_table_raises_only_lmtune_errors(suffix, data):
    holder, path = _write(data, suffix)
    with holder:
        table = _only_lmtune_errors(read_table, path)
        if table is not None:
            assert table.rows and len(table.rows) == len(table.row_numbers)
            assert all(isinstance(row, dict) for row in table.rows)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@FUZZ
@given(value=st.lists(JSON_VALUES, max_size=5) | JSON_VALUES)
def test_json_readers_on_any_json_value(suffix, value):
    if suffix == ".json":
        text = json.dumps(value)
    else:
        text = "\n".join(json.dumps(v) for v in value) if isinstance(value, list) else json.dumps(value)
    holder, path = _write(text.encode("utf-8"), suffix)
    with holder:
        _only_lmtune_errors(read_table, path)
        _only_lmtune_errors(read_sentences, path, "auto", None, None, True, ["O", "B-X"])


@FUZZ
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["text", "label", "x"]), JSON_VALUES, min_size=1, max_size=3),
        max_size=5,
    )
)
def test_parquet_reader_on_real_parquet_files(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return  # pyarrow cannot represent these rows, so no such parquet file exists
    buffer = io.BytesIO()
    try:
        pq.write_table(table, buffer)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return  # e.g. an empty struct column: parquet cannot store it
    holder, path = _write(buffer.getvalue(), ".parquet")
    with holder:
        _only_lmtune_errors(read_table, path)


@pytest.mark.parametrize("need_tags", [True, False])
@FUZZ
@given(data=BYTES)
def test_conll_reader_raises_only_lmtune_errors(need_tags, data):
    holder, path = _write(data, ".conll")
    with holder:
        sentences = _only_lmtune_errors(read_conll, path, need_tags)
        for sentence in sentences or []:
            assert sentence.tokens
            if need_tags:
                assert sentence.tags is not None and len(sentence.tags) == len(sentence.tokens)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), DATA_TEXT))
def test_config_yaml_raises_only_lmtune_errors(text):
    holder, path = _write(text.encode("utf-8", errors="surrogatepass"), ".yaml")
    with holder:
        raw = _only_lmtune_errors(load_yaml, path)
        if raw is not None:
            _only_lmtune_errors(RunConfig.from_dict, {"model": "m", **raw}, source=str(path))


KEYS = st.sampled_from(
    [
        "train.epochs",
        "train.batch_size",
        "train.on_nan",
        "data.labels",
        "method",
        "method.name",
        "method.r",
        "task.type",
        "output_dir",
        "model",
        "train",
        "x.y.z",
        "",
        ".",
        "train.",
    ]
)


@FUZZ
@given(
    key=KEYS | st.text(max_size=15),
    value=st.text(max_size=30),
    extra=st.lists(st.text(max_size=20), max_size=3),
)
def test_set_overrides_raise_only_lmtune_errors(key, value, extra):
    items = [f"{key}={value}", *extra]
    for item in items:
        _only_lmtune_errors(parse_override, item)
    raw = _only_lmtune_errors(apply_overrides, {"model": "m"}, items)
    if raw is not None:
        _only_lmtune_errors(RunConfig.from_dict, raw, source="command line")
