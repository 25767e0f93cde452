"""Tests for the data file readers: every format, and every error naming file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmtune.data.readers import Table, detect_format, read_table
from lmtune.errors import LmtuneError


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


# ---- formats ---------------------------------------------------------------------------------
def test_csv(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", "text,label\nhello,pos\nbye,neg\n"))
    assert isinstance(table, Table)
    assert table.columns == ["text", "label"]
    assert table.rows == [{"text": "hello", "label": "pos"}, {"text": "bye", "label": "neg"}]
    assert table.row_numbers == [2, 3]
    assert table.unit == "line"
    assert len(table) == 2
    assert table.where(1, "label") == f"{tmp_path / 'd.csv'}, line 3, column 'label'"


def test_csv_header_names_are_stripped(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", " text , label\na,b\n"))
    assert table.columns == ["text", "label"]


def test_csv_crlf_line_endings(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", "text,label\r\na,1\r\nb,2\r\n"))
    assert table.rows == [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}]
    assert table.row_numbers == [2, 3]


def test_csv_without_trailing_newline(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", "text,label\na,1"))
    assert table.rows == [{"text": "a", "label": "1"}]


def test_tsv(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.tsv", 'sentence\tlabel\nit\'s "good", really\t1\nbad\t0\n'))
    assert table.columns == ["sentence", "label"]
    # TSV quotes are literal characters.
    assert table.rows[0] == {"sentence": 'it\'s "good", really', "label": "1"}
    assert table.rows[1] == {"sentence": "bad", "label": "0"}
    assert table.row_numbers == [2, 3]


def test_tab_extension_is_tsv(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.tab", "a\tb\n1\t2\n"))
    assert table.rows == [{"a": "1", "b": "2"}]


def test_json_list(tmp_path: Path) -> None:
    records = [{"text": "a", "label": 1}, {"text": "b", "label": 0, "extra": True}]
    table = read_table(write(tmp_path / "d.json", json.dumps(records)))
    assert table.rows == records
    assert table.columns == ["text", "label", "extra"]
    assert table.row_numbers == [1, 2]
    assert table.unit == "record"
    assert table.where(1) == f"{tmp_path / 'd.json'}, record 2"


def test_json_data_key(tmp_path: Path) -> None:
    obj = {"version": 2, "data": [{"text": "a", "label": "x"}], "other": [1, 2]}
    table = read_table(write(tmp_path / "d.json", json.dumps(obj)))
    assert table.rows == [{"text": "a", "label": "x"}]


def test_json_single_list_value(tmp_path: Path) -> None:
    obj = {"name": "set", "examples": [{"text": "a"}, {"text": "b"}]}
    table = read_table(write(tmp_path / "d.json", json.dumps(obj)))
    assert [r["text"] for r in table.rows] == ["a", "b"]


def test_json_object_with_several_lists_is_ambiguous(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps({"a": [{"x": 1}], "b": [{"x": 2}]}))
    with pytest.raises(LmtuneError, match="expected a JSON list of records") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_json_scalar_top_level(tmp_path: Path) -> None:
    with pytest.raises(LmtuneError, match="expected a JSON list of records, got int"):
        read_table(write(tmp_path / "d.json", "42"))


def test_json_lines_content_saved_as_json(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 2}\n')
    table = read_table(path)
    assert table.rows == [{"text": "a", "label": 1}, {"text": "b", "label": 2}]
    assert table.row_numbers == [1, 3]
    assert table.unit == "line"


def test_json_lines_content_saved_as_json_with_broken_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n{"text": \n')
    with pytest.raises(LmtuneError, match=r"line 3: invalid JSON") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl", '{"text": "a", "labels": ["x", "y"]}\n\n   \n{"text": "b", "labels": []}\n'
    )
    table = read_table(path)
    assert table.rows == [{"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": []}]
    assert table.row_numbers == [1, 4]
    assert table.columns == ["text", "labels"]


def test_ndjson_extension(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.ndjson", '{"a": 1}\n'))
    assert table.rows == [{"a": 1}]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0]}), path)
    table = read_table(path)
    assert table.columns == ["text", "label"]
    assert table.rows == [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 0}]
    assert table.row_numbers == [1, 2, 3]
    assert table.unit == "record"


def test_declared_format_overrides_extension(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "data.txt", "a,b\n1,2\n"), "csv")
    assert table.rows == [{"a": "1", "b": "2"}]


def test_detect_format() -> None:
    assert detect_format("x/TRAIN.CSV") == "csv"
    assert detect_format("x.pq") == "parquet"
    assert detect_format("x.unknown", "jsonl") == "jsonl"
    with pytest.raises(LmtuneError, match=r"extension '\(none\)'"):
        detect_format("noext")


# ---- text details ----------------------------------------------------------------------------
def test_bom_is_stripped_from_first_header(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", "\ufefftext,label\na,1\n"))
    assert table.columns == ["text", "label"]
    assert "text" in table.rows[0]


def test_bom_in_jsonl(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.jsonl", '\ufeff{"text": "a"}\n'))
    assert table.rows == [{"text": "a"}]


def test_blank_lines_are_skipped_and_numbers_kept(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", "text,label\n\na,1\n , \nb,2\n\n"))
    assert table.rows == [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}]
    assert table.row_numbers == [3, 5]


def test_quoted_field_with_comma_and_quotes_round_trips(tmp_path: Path) -> None:
    value = 'She said "hi, there", then left'
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerow([value, "pos"])
        writer.writerow(["line one\nline two", "neg"])
        writer.writerow(["plain", "neg"])
    table = read_table(path)
    assert table.rows[0] == {"text": value, "label": "pos"}
    assert table.rows[1]["text"] == "line one\nline two"
    # A quoted field spanning two lines: the next row starts on line 5.
    assert table.row_numbers == [2, 3, 5]


def test_unicode_content(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "d.csv", "text,label\nnaïve café 😀,ok\n"))
    assert table.rows[0]["text"] == "naïve café 😀"


# ---- errors ----------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    with pytest.raises(LmtuneError, match="data file not found") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(LmtuneError, match="is a directory") as info:
        read_table(folder)
    assert str(folder) in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xlsx", "whatever")
    with pytest.raises(LmtuneError, match=r"cannot tell the file format.*'\.xlsx'") as info:
        read_table(path)
    assert str(path) in str(info.value)
    assert "data.format" in str(info.value)


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.json", "d.jsonl"])
@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(LmtuneError, match="the file is empty") as info:
        read_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"), [("d.csv", "text,label\n"), ("d.tsv", "text\tlabel\n\n"), ("d.json", "[]")]
)
def test_header_only(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(LmtuneError, match="no data rows") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_bad_csv_quoting(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\nok,1\nbad,"x"y\n')
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, line 3" in msg
    assert "bad CSV quoting" in msg


def test_unclosed_quote(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\n"never closed,1\n')
    with pytest.raises(LmtuneError, match=r"line 2: bad CSV quoting") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\na,1\nhello, world,1\n")
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, line 3" in msg
    assert "3 fields but the header has 2" in msg
    assert "quote" in msg


def test_too_few_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "text\tlabel\tsource\na\t1\tweb\nb\t0\n")
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, line 3" in msg
    assert "2 fields but the header has 3" in msg


def test_ragged_row_after_multiline_field_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\n"two\nlines",1\nx,y,z\n')
    with pytest.raises(LmtuneError, match=r"line 4: 3 fields"):
        read_table(path)


def test_duplicate_header(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label,text\na,1,b\n")
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, line 1" in msg
    assert "column 'text' appears twice" in msg


def test_unnamed_header_column(tmp_path: Path) -> None:
    with pytest.raises(LmtuneError, match="line 1: a column has no name"):
        read_table(write(tmp_path / "d.csv", "text,,label\na,b,c\n"))


def test_invalid_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nfine,1\ncafé,2\n".encode("latin-1"))
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, line 3" in msg
    assert "not valid UTF-8" in msg
    assert "0xe9" in msg


def test_invalid_utf8_in_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(LmtuneError, match=r"line 2: not valid UTF-8"):
        read_table(path)


def test_jsonl_broken_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\n')
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, line 3" in msg
    assert "invalid JSON" in msg


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n["b"]\n')
    with pytest.raises(LmtuneError, match=r"line 2: expected a JSON object.*got list") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_json_non_object_record(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps([{"text": "a"}, "b", {"text": "c"}]))
    with pytest.raises(LmtuneError) as info:
        read_table(path)
    msg = str(info.value)
    assert f"{path}, record 2" in msg
    assert "expected a JSON object" in msg
    assert "got str" in msg


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '[\n  {"text": "a"},\n  {"text": }\n]\n')
    with pytest.raises(LmtuneError, match=r"line 3: invalid JSON") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = write(tmp_path / "d.parquet", b"PAR1 this is not really parquet")
    with pytest.raises(LmtuneError, match="cannot read as parquet") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(LmtuneError, match="no data rows"):
        read_table(path)
