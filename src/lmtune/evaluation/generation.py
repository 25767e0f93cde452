"""Scores of generated text against references: BLEU/chrF, ROUGE, exact match.

Seq2seq runs score every test generation this way; decoder runs (SFT, preference) score the
greedy generations of a capped sample of prompts that have a reference answer
(`generation_metrics`). Chinese and Japanese are scored on characters, as is conventional.
"""

from __future__ import annotations

import re

CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_ROUGE_TOKEN = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")
_HAS_CJK = re.compile(rf"[{CJK}]")
_KANA = re.compile("[\u3040-\u30ff]")


class RougeTokenizer:
    """Lowercased words, and each CJK character as a token.

    rouge-score's default tokenizer keeps only [a-z0-9], so Chinese text scores 0; Chinese
    ROUGE is conventionally computed on characters (e.g. LCSTS).
    """

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN.findall(text.lower())


def is_chinese(lang: str | None) -> bool:
    return bool(lang) and re.split(r"[-_]", lang.lower())[0] in ("zh", "cmn", "yue", "zho", "chi")


def bleu_scores(hypotheses: list[str], references: list[str], tokenize: str, lowercase: bool) -> dict:
    """Corpus BLEU and chrF (sacreBLEU, 0-100) against one reference per hypothesis."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize, lowercase=lowercase)
    if lowercase:
        hypotheses = [h.lower() for h in hypotheses]
        references = [r.lower() for r in references]
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def rouge_scores(hypotheses: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measures (rouge-score, 0-100), words or CJK characters as tokens."""
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, tokenizer=RougeTokenizer())
    totals = dict.fromkeys(types, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)
        for name in types:
            totals[name] += scores[name].fmeasure
    n = max(1, len(hypotheses))
    return {name: 100 * value / n for name, value in totals.items()}


def bleu_tokenizer_for(references: list[str]) -> str:
    """sacreBLEU's tokenizer for these references: 'ja-mecab' needs MeCab, so Japanese (kana)
    and Chinese (other CJK) are split into characters ('char' / 'zh'), the rest by 13a."""
    cjk = sum(bool(_HAS_CJK.search(r)) for r in references)
    if cjk * 2 <= len(references):
        return "13a"
    return "char" if sum(bool(_KANA.search(r)) for r in references) * 2 > len(references) else "zh"


def normalise_answer(text: str) -> str:
    """Case-folded, with whitespace runs collapsed: what exact match compares."""
    return " ".join(text.split()).casefold()


def label_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Generative classification: the answer is the label. Accuracy and macro F1 over the labels
    the references use; an answer that is no label counts as wrong (its own class)."""
    from sklearn.metrics import f1_score

    gold = [normalise_answer(r) for r in references]
    predicted = [normalise_answer(h) for h in hypotheses]
    labels = sorted(set(gold))
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    macro = f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
    return {"gen_accuracy": round(accuracy, 4), "gen_f1_macro": round(float(macro), 4)}


_JSON_BLOCK = re.compile(r"\{.*\}|\[.*\]", re.S)


def parse_entities(text: str) -> set[tuple[str, str]] | None:
    """(type, entity text) pairs of a generated answer, or None when it holds no valid JSON.

    Accepted: {"type": ["entity", ...]} (CLUENER-like, also {"type": {"entity": spans}}) or
    [{"type": ..., "text": ...}, ...]; the first JSON object or list in the text is read.
    """
    import json

    match = _JSON_BLOCK.search(text)
    if match is None:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    found: set[tuple[str, str]] = set()
    if isinstance(value, dict):
        for kind, entities in value.items():
            items = entities if isinstance(entities, list | dict) else [entities]
            found |= {(str(kind), str(e)) for e in items}
    elif isinstance(value, list):
        found |= {(str(e.get("type")), str(e.get("text"))) for e in value if isinstance(e, dict)}
    return found


def entity_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Generative NER: micro precision, recall and F1 of (type, entity text) pairs, the entity-level
    score seqeval gives when entities are matched by their text rather than their position;
    an answer with no valid JSON predicts no entities (`gen_json_valid` counts them)."""
    true_positive = predicted = gold = valid = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        expected = parse_entities(reference) or set()
        got = parse_entities(hypothesis)
        valid += got is not None
        got = got or set()
        true_positive += len(got & expected)
        predicted += len(got)
        gold += len(expected)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "gen_entity_precision": round(precision, 4),
        "gen_entity_recall": round(recall, 4),
        "gen_entity_f1": round(f1, 4),
        "gen_json_valid": round(valid / len(hypotheses), 4),
    }


ANSWER_METRICS = {"label": label_metrics, "entities": entity_metrics}


def generation_metrics(
    hypotheses: list[str], references: list[str], answer_format: str = "text"
) -> dict[str, float | int]:
    """Exact match (share, 0-1), ROUGE-1/2/L, BLEU and chrF (0-100) of generations, one reference
    each; Chinese and Japanese on characters (summaries such as LCSTS, en->zh translation).
    `answer_format` "label" adds accuracy and macro F1, "entities" entity-level P/R/F1."""
    if not hypotheses:
        return {}
    pairs = zip(hypotheses, references, strict=True)
    exact = sum(normalise_answer(h) == normalise_answer(r) for h, r in pairs)
    rouge = rouge_scores(hypotheses, references)
    bleu = bleu_scores(hypotheses, references, bleu_tokenizer_for(references), False)
    return {
        "gen_exact_match": round(exact / len(hypotheses), 4),
        "gen_rouge1": round(rouge["rouge1"], 4),
        "gen_rouge2": round(rouge["rouge2"], 4),
        "gen_rougeL": round(rouge["rougeL"], 4),
        "gen_bleu": round(bleu["bleu"], 4),
        "gen_chrf": round(bleu["chrf"], 4),
        "gen_samples": len(hypotheses),
        # Answers that are a label or entities as JSON are also scored as the task they formulate.
        **(ANSWER_METRICS[answer_format](hypotheses, references) if answer_format in ANSWER_METRICS else {}),
    }
