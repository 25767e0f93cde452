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
