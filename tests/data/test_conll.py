"""CoNLL and JSON(L) token files, tag schemes and their conversions, and the error paths."""

from __future__ import annotations

import json

import pytest

from lmtune.data import conll
from lmtune.errors import LmtuneError

CONLL = """-DOCSTART- -X- O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_reads_conll_with_extra_columns_and_docstart(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    sentences, _, _ = conll.read_sentences(path)
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert sentences[1].tags == ["B-PER", "I-PER"]
    assert sentences[1].line == 8


def test_tab_separated_and_chinese_character_level(tmp_path):
    path = tmp_path / "zh.txt"  # .txt: recognised as CoNLL by its content
    path.write_text("我\tO\n住\tO\n在\tO\n北\tB-LOC\n京\tI-LOC\n\n张\tB-PER\n三\tI-PER\n")
    assert conll.is_conll(path)
    sentences, _, _ = conll.read_sentences(path)
    assert sentences[0].tokens == ["我", "住", "在", "北", "京"]
    assert conll.bio_spans(sentences[0].tags) == [("LOC", 3, 5)]
    assert sentences[1].tags == ["B-PER", "I-PER"]


def test_txt_of_plain_text_is_not_conll(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("John lives in Paris\nMary works at Google\n")
    assert not conll.is_conll(path)
    assert conll.is_conll(path, "conll")


def test_jsonl_with_default_and_configured_columns(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"tokens": ["Ann", "runs"], "tags": ["B-PER", "O"]}, {"tokens": [], "tags": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    sentences, tok, tag = conll.read_sentences(path)
    assert (tok, tag) == ("tokens", "tags") and len(sentences) == 1  # the empty sentence is dropped
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"w": ["Bo"], "t": ["B-PER"]}]))
    sentences, tok, tag = conll.read_sentences(other, token_column="w", tag_column="t")
    assert (tok, tag) == ("w", "t") and sentences[0].tags == ["B-PER"]


def test_ner_tags_strings_and_ids(tmp_path):
    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps({"tokens": ["Ann", "x"], "ner_tags": ["B-PER", "O"]}))
    assert conll.read_sentences(path)[0][0].tags == ["B-PER", "O"]
    path.write_text(json.dumps({"tokens": ["Ann", "x"], "ner_tags": [1, 0]}))
    with pytest.raises(LmtuneError, match="integer tags"):
        conll.read_sentences(path)
    assert conll.read_sentences(path, labels=["O", "B-PER"])[0][0].tags == ["B-PER", "O"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ragged.conll", "Ann B-PER\nruns\n", r"ragged.conll, line 2: only one column"),
        ("empty.conll", "\n\n", r"empty.conll: the file is empty"),
        (
            "bad.conll",
            "Ann B-PER\nruns O\nfast PER\n",
            r"bad.conll, line 3: tag 'PER' is not in BIO-like form",
        ),
        ("docs.conll", "-DOCSTART- O\n\n", r"docs.conll: no sentences"),
        (
            "mismatch.jsonl",
            json.dumps({"tokens": ["a", "b"], "tags": ["O"]}),
            r"mismatch.jsonl, line 1: 2 tokens but 1 tags",
        ),
        (
            "badtag.jsonl",
            "\n" + json.dumps({"tokens": ["a", "b"], "tags": ["O", "X-Y-"]}),
            r"badtag.jsonl, line 2, token 2: tag 'X-Y-' is not in BIO-like form",
        ),
    ],
)
def test_errors_name_file_line_and_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LmtuneError, match=message):
        conll.read_sentences(path)


def test_one_column_lines_are_fine_for_prediction_inputs(tmp_path):
    path = tmp_path / "in.conll"
    path.write_text("Ann\nruns\n\nBo\n")
    sentences = conll.read_conll(path, need_tags=False)
    assert [s.tokens for s in sentences] == [["Ann", "runs"], ["Bo"]]
    assert sentences[0].tags is None


BIO = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-LOC", "O", "B-ORG"]
SCHEMES = {
    "bio": BIO,
    "iob1": ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-LOC", "O", "I-ORG"],
    "bioes": ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "I-LOC", "E-LOC", "O", "S-ORG"],
    "bilou": ["B-PER", "L-PER", "O", "U-LOC", "B-LOC", "I-LOC", "L-LOC", "O", "U-ORG"],
    "bmes": ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "M-LOC", "E-LOC", "O", "S-ORG"],
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_schemes_detect_normalise_and_round_trip(scheme):
    tags = SCHEMES[scheme]
    assert conll.detect_scheme([tags]) == scheme
    assert conll.to_bio(tags, scheme) == BIO
    assert conll.from_bio(BIO, scheme) == tags
    assert conll.from_bio(conll.to_bio(tags, scheme), scheme) == tags


def test_bio_spans_and_labels():
    assert conll.bio_spans(BIO) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 7), ("ORG", 8, 9)]
    assert conll.bio_spans(["I-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]  # stray I- starts
    assert conll.bio_labels({"PER", "LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_tag_outside_the_scheme_names_its_line(tmp_path):
    path = tmp_path / "t.conll"
    path.write_text("a B-X\nb I-X\n\nc B-X\nd M-X\n")
    sentences, _, _ = conll.read_sentences(path)
    with pytest.raises(LmtuneError, match=r"t.conll, line 5: tag 'M-X' does not belong to the BIO"):
        for s in sentences:
            conll.check_scheme(s, "bio")


CLUENER = [
    {
        "text": "浙商银行企业信贷部叶老桂博士",
        "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}},
    },
    {"text": "去 北京 玩", "label": {"address": {"北京": [[2, 3]]}}},
    # Nested: BIO keeps the book title, the company inside it is dropped with a warning.
    {
        "text": "《招商银行年报》",
        "label": {"book": {"《招商银行年报》": [[0, 7]]}, "company": {"招商银行": [[1, 4]]}},
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cluener_spans_round_trip_to_bio_and_back(tmp_path, caplog):
    path = write_jsonl(tmp_path / "train.json", CLUENER)
    sentences, tokens, tags = conll.read_sentences(path)
    assert (tokens, tags) == ("text", "label")
    first = sentences[0]
    assert first.tokens == list("浙商银行企业信贷部叶老桂博士")
    spans = {("".join(first.tokens[a:b]), kind) for kind, a, b in conll.bio_spans(first.tags)}
    assert spans == {("浙商银行", "company"), ("叶老桂", "name")}
    # Whitespace characters are not tokens; the entity keeps its characters.
    assert sentences[1].tokens == list("去北京玩") and sentences[1].tags == [
        "O",
        "B-address",
        "I-address",
        "O",
    ]
    assert conll.bio_spans(sentences[2].tags) == [("book", 0, 8)]
    assert "lies inside another entity; dropped" in caplog.text and "line 3" in caplog.text
    # The columns a run records (text, label) read the same file the same way.
    again, _, _ = conll.read_sentences(path, token_column="text", tag_column="label")
    assert [s.tags for s in again] == [s.tags for s in sentences]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ({"name": {"叶老": [[9, 11]]}}, "span [9, 11] covers '叶老桂', not '叶老'"),
        ({"name": {"叶老桂": [[9, 40]]}}, "span [9, 40] covers"),
        ({"name": {"叶老桂": [9]}}, "expected [start, end]"),
        ({"name": ["叶老桂"]}, "expected {entity: [[start, end], ...]}"),
    ],
)
def test_cluener_bad_spans_name_the_line(tmp_path, label, message):
    rows = [CLUENER[0], {"text": "浙商银行企业信贷部叶老桂博士", "label": label}]
    with pytest.raises(LmtuneError, match="line 2") as info:
        conll.read_sentences(write_jsonl(tmp_path / "bad.json", rows))
    assert message in str(info.value)
