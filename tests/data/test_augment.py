"""Text augmentation: each edit is seeded and does what it says; only train grows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.conftest import fast_config

from lmtune.config import AugmentConfig, RunConfig
from lmtune.data.augment import Augmenter, augment_train, load_word_list
from lmtune.errors import LmtuneError
from lmtune.tasks.classification import ClassificationTask

WORDS = ["the", "film", "was", "great", "and", "the", "music", "was", "lovely"]


@pytest.fixture
def word_list(tmp_path: Path) -> Path:
    path = tmp_path / "synonyms.txt"
    path.write_text("# sentiment synonyms\ngreat, excellent, superb\nfilm, movie\n", encoding="utf-8")
    return path


def _augmenter(word_list: Path, p: float = 0.3) -> Augmenter:
    return Augmenter(AugmentConfig(synonyms=str(word_list), p=p))


@pytest.mark.parametrize("op", ["delete", "swap", "insert", "synonym"])
def test_each_op_is_deterministic_for_a_seed(op: str, word_list: Path) -> None:
    aug = _augmenter(word_list)
    runs = [getattr(aug, op)(WORDS, random.Random(7)) for _ in range(2)]
    assert runs[0] == runs[1]
    outputs = {tuple(getattr(aug, op)(WORDS, random.Random(seed))) for seed in range(20)}
    assert len(outputs) > 1  # the seed matters


def test_ops_do_what_they_say(word_list: Path) -> None:
    aug = _augmenter(word_list)
    table = load_word_list(word_list)
    for seed in range(10):
        rng = random.Random(seed)
        deleted = aug.delete(WORDS, rng)
        assert 1 <= len(deleted) <= len(WORDS) and all(w in WORDS for w in deleted)
        swapped = aug.swap(WORDS, rng)
        assert sorted(swapped) == sorted(WORDS) and swapped != WORDS
        inserted = aug.insert(WORDS, rng)
        assert len(inserted) == len(WORDS) + 3  # round(0.3 * 9) insertions
        extra = list(inserted)
        for w in WORDS:
            extra.remove(w)
        assert extra and all(w in table for w in extra)  # every inserted word comes from the list
        replaced = aug.synonym(WORDS, rng)
        changed = [(a, b) for a, b in zip(WORDS, replaced, strict=True) if a != b]
        assert len(replaced) == len(WORDS) and 1 <= len(changed) <= 2  # only 'film' and 'great' have synonyms
        assert all(b in table[a] for a, b in changed)


def test_synonym_ops_need_a_source() -> None:
    with pytest.raises(LmtuneError, match="synonyms"):
        Augmenter(AugmentConfig(ops=["synonym"], synonyms=None))


def test_bad_word_list_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("good, fine\nlonely\n", encoding="utf-8")
    with pytest.raises(LmtuneError, match="line 2"):
        load_word_list(path)


def test_augment_train_adds_ratio_copies_seeded() -> None:
    records = [{"text": f"row number {i} is here", "label": str(i % 2)} for i in range(10)]
    cfg = AugmentConfig(ratio=0.5, ops=["delete", "swap"])
    first, info = augment_train(records, cfg, seed=3)
    again, _ = augment_train(records, cfg, seed=3)
    assert len(first) == 15 and info["added"] == 5 and first == again
    assert first[:10] == records
    for copy in first[10:]:
        number = (
            next(w for w in copy["text"].split() if w.isdigit())
            if any(w.isdigit() for w in copy["text"].split())
            else None
        )
        # Deleting or swapping words never changes the label of the row it came from.
        assert number is None or copy["label"] == str(int(number) % 2)


def test_prepare_data_augments_train_only(sentiment_files: dict, tmp_path: Path, word_list: Path) -> None:
    raw = fast_config("unused-model", sentiment_files, tmp_path / "run")
    plain = ClassificationTask(RunConfig.from_dict(raw)).prepare_data()
    raw["data"]["augment"] = {"ratio": 0.5, "synonyms": str(word_list), "seed": 1}
    augmented = ClassificationTask(RunConfig.from_dict(raw)).prepare_data()
    rows, base = augmented.report["rows"], plain.report["rows"]
    assert rows["train"] == base["train"] + round(0.5 * base["train"])
    assert rows["validation"] == base["validation"] and rows["test"] == base["test"]
    assert augmented.report["augmented_train"]["added"] == round(0.5 * base["train"])
    assert set(augmented.report["augmented_train"]["ops"]) <= {"delete", "swap", "insert", "synonym"}
    assert "augment" not in RunConfig.from_dict(fast_config("m", sentiment_files, tmp_path)).to_dict()["data"]
