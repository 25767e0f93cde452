"""Generation scores: BLEU/chrF, ROUGE (characters for CJK) and the decoders' capped metrics."""

from __future__ import annotations

import pytest

from lmtune.evaluation.generation import (
    RougeTokenizer,
    bleu_scores,
    bleu_tokenizer_for,
    generation_metrics,
    normalise_answer,
    rouge_scores,
)


def test_bleu_is_100_for_identical_and_0_for_disjoint():
    refs = ["the cat sat on the mat", "a dog ran in the park"]
    assert bleu_scores(refs, refs, "13a", False) == pytest.approx({"bleu": 100.0, "chrf": 100.0})
    low = bleu_scores(["xyz qqq"] * 2, refs, "13a", False)
    assert low["bleu"] == 0.0 and low["chrf"] < 10
    assert bleu_scores(["The Cat sat on the mat"], refs[:1], "13a", True)["bleu"] == pytest.approx(100.0)
    # Chinese: sacreBLEU's zh tokenizer splits characters, so one wrong character of 6 is partial.
    zh = bleu_scores(["我去年退休了"], ["我去年退休了"], "zh", False)["bleu"]
    part = bleu_scores(["我去年退休吗"], ["我去年退休了"], "zh", False)["bleu"]
    assert zh == pytest.approx(100.0) and 0 < part < 100


def test_rouge_matches_hand_computed_values():
    # hyp "the cat was found under the bed" vs ref "the cat was under the bed":
    # unigram overlap 6 of 7 / 6 -> P 6/7, R 1, F 12/13; bigrams 4 of 6 / 5 -> F 8/11; LCS 6 -> 12/13.
    scores = rouge_scores(["the cat was found under the bed"], ["the cat was under the bed"])
    assert scores["rouge1"] == pytest.approx(100 * 12 / 13)
    assert scores["rouge2"] == pytest.approx(100 * 8 / 11)
    assert scores["rougeL"] == pytest.approx(100 * 12 / 13)


def test_chinese_rouge_counts_characters():
    assert RougeTokenizer().tokenize("我爱 Paris 2024!") == ["我", "爱", "paris", "2024"]
    scores = rouge_scores(["我去年退休"], ["我去年退休了"])  # 5 of 5 / 6 characters
    assert scores["rouge1"] == pytest.approx(100 * 2 * 5 / 11)
    assert scores["rouge2"] > 0


def test_bleu_tokenizer_follows_the_references_script():
    assert bleu_tokenizer_for(["a cat", "a dog"]) == "13a"
    assert bleu_tokenizer_for(["我去年退休了", "天气很好", "ok"]) == "zh"
    assert bleu_tokenizer_for(["ねこがいる", "きょうは雨"]) == "char"


def test_generation_metrics_score_exact_rouge_and_bleu():
    refs = ["The answer is 42.", "Paris is the capital of France."]
    perfect = generation_metrics(["The  answer is 42.", "Paris is the capital of France."], refs)
    assert perfect["gen_exact_match"] == 1.0 and perfect["gen_samples"] == 2
    assert perfect["gen_rougeL"] == pytest.approx(100.0) and perfect["gen_bleu"] == pytest.approx(100.0)
    half = generation_metrics(["The answer is 42.", "Rome, I think."], refs)
    assert half["gen_exact_match"] == 0.5 and 0 < half["gen_rougeL"] < 100 and half["gen_bleu"] < 100
    assert generation_metrics([], []) == {}
    assert normalise_answer("  Hello\n World ") == "hello world"


def test_generation_metrics_of_chinese_are_on_characters():
    """LCSTS-style summaries: no spaces between words, so word-level ROUGE would score 0."""
    refs = ["今天天气很好", "我们去北京"]
    scores = generation_metrics(["今天天气不错", "我们去北京"], refs)
    assert {"gen_rouge1", "gen_rouge2", "gen_rougeL", "gen_bleu", "gen_chrf"} <= set(scores)
    # Characters: 4 of 6 shared in the first pair (ROUGE-1 F 2/3), all in the second.
    assert scores["gen_rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=0.01)
    assert 0 < scores["gen_rouge2"] < scores["gen_rouge1"] and scores["gen_chrf"] > 0


def test_generative_classification_scores_labels():
    from lmtune.evaluation.generation import label_metrics

    scores = label_metrics(
        ["positive", "Negative ", "maybe", "positive"], ["positive", "negative", "negative", "negative"]
    )
    assert scores["gen_accuracy"] == 0.5
    # Per label F1: positive 2*(1/2*1)/(1.5) = 2/3; negative P 1/1, R 1/3 -> 0.5; macro 0.5833.
    assert scores["gen_f1_macro"] == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-4)


def test_generative_ner_parses_json_entities_and_scores_them():
    from lmtune.evaluation.generation import entity_metrics, parse_entities

    assert parse_entities('实体：{"name": ["叶老桂"], "company": ["浙商银行"]} 完') == {
        ("name", "叶老桂"),
        ("company", "浙商银行"),
    }
    assert parse_entities('[{"type": "PER", "text": "Ada"}]') == {("PER", "Ada")}
    assert parse_entities("no entities here") is None and parse_entities("{broken") is None
    refs = ['{"name": ["叶老桂"], "company": ["浙商银行"]}', '{"address": ["北京"]}']
    hyps = ['{"name": ["叶老桂"], "company": ["招商银行"]}', "北京"]
    scores = entity_metrics(hyps, refs)
    # 1 of 2 predicted right; 1 of 3 gold found; the second answer is no JSON.
    assert scores["gen_entity_precision"] == 0.5 and scores["gen_entity_recall"] == pytest.approx(
        1 / 3, abs=1e-4
    )
    assert scores["gen_entity_f1"] == pytest.approx(0.4) and scores["gen_json_valid"] == 0.5
    assert "gen_entity_f1" in generation_metrics(hyps, refs, "entities")
    assert "gen_entity_f1" not in generation_metrics(hyps, refs)
