"""Tests for atomic file and directory writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmtune.io import atomic_dir, atomic_path, write_json, write_jsonl, write_text, write_yaml


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert entries(tmp_path) == ["a.txt"]


def test_write_text_creates_parent_dirs(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z.txt"
    write_text(str(target), "deep")
    assert target.read_text() == "deep"
    assert entries(target.parent) == ["z.txt"]


def test_write_text_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old old old old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert entries(tmp_path) == ["a.txt"]


def test_write_json(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    obj = {"acc": np.float32(0.5), "ids": np.arange(3), "path": Path("a/b"), "name": "naïve"}
    write_json(target, obj)
    text = target.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert "naïve" in text  # not escaped
    assert json.loads(text) == {"acc": 0.5, "ids": [0, 1, 2], "path": "a/b", "name": "naïve"}
    assert entries(tmp_path) == ["m.json"]


def test_write_json_unserialisable_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    target.write_text('{"keep": true}\n')
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"keep": True}
    assert entries(tmp_path) == ["m.json"]


def test_write_jsonl(tmp_path: Path) -> None:
    target = tmp_path / "p.jsonl"
    rows = [{"text": "a", "score": np.float64(0.25)}, {"text": "ü"}]
    write_jsonl(target, iter(rows))
    lines = target.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": "a", "score": 0.25}, {"text": "ü"}]
    assert entries(tmp_path) == ["p.jsonl"]


def test_write_jsonl_failure_midway_keeps_original(tmp_path: Path) -> None:
    target = tmp_path / "p.jsonl"
    target.write_text('{"old": 1}\n')

    def rows():
        yield {"new": 1}
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError, match="generator broke"):
        write_jsonl(target, rows())
    assert target.read_text() == '{"old": 1}\n'
    assert entries(tmp_path) == ["p.jsonl"]


def test_write_yaml(tmp_path: Path) -> None:
    target = tmp_path / "c.yaml"
    obj = {"model": {"name": "m"}, "train": {"epochs": 3}, "labels": ["b", "a"], "note": "ünïcode"}
    write_yaml(target, obj)
    text = target.read_text(encoding="utf-8")
    assert "ünïcode" in text
    assert yaml.safe_load(text) == obj
    # Key order is kept.
    assert text.index("model") < text.index("train") < text.index("labels")
    assert entries(tmp_path) == ["c.yaml"]


def test_atomic_path_success(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp != target
        assert tmp.parent == target.parent
        tmp.write_bytes(b"\x00\x01")
        assert not target.exists()  # nothing appears until the block finishes
    assert target.read_bytes() == b"\x00\x01"
    assert entries(tmp_path) == ["out.bin"]


def test_atomic_path_exception_leaves_original_untouched(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("original")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("boom")
    assert target.read_text() == "original"
    assert entries(tmp_path) == ["metrics.json"]


def test_atomic_path_exception_without_original(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError
    assert not target.exists()
    assert entries(tmp_path) == []


def test_atomic_dir_creates(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path
        (tmp / "weights.bin").write_bytes(b"w")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c.json").write_text("{}")
        assert not target.exists()
    assert (target / "weights.bin").read_bytes() == b"w"
    assert (target / "sub" / "c.json").read_text() == "{}"
    assert entries(tmp_path) == ["model"]


def test_atomic_dir_replaces_as_a_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    (target / "shared.txt").write_text("old version")
    with atomic_dir(target) as tmp:
        (tmp / "shared.txt").write_text("new version")
        (tmp / "new.bin").write_text("new")
        # The old directory is intact while the new one is written.
        assert (target / "old.bin").exists()
    assert entries(target) == ["new.bin", "shared.txt"]
    assert (target / "shared.txt").read_text() == "new version"
    assert entries(tmp_path) == ["model"]  # no .tmp or .old left behind


def test_atomic_dir_removes_stale_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("1")
    stale = tmp_path / ".model.old"
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert entries(target) == ["b"]
    assert entries(tmp_path) == ["model"]


def test_atomic_dir_exception_leaves_original_untouched(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.bin").write_text("keep")
    with pytest.raises(RuntimeError, match="fail"), atomic_dir(target) as tmp:
        (tmp / "partial.bin").write_text("partial")
        raise RuntimeError("fail")
    assert entries(target) == ["keep.bin"]
    assert (target / "keep.bin").read_text() == "keep"
    assert entries(tmp_path) == ["model"]


def test_atomic_dir_exception_without_original(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(KeyError), atomic_dir(target) as tmp:
        (tmp / "x").write_text("x")
        raise KeyError("x")
    assert not target.exists()
    assert entries(tmp_path) == []
