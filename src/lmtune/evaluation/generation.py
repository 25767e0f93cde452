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


def generation_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float | int]:
    """Exact match (share, 0-1), ROUGE-1/2/L, BLEU and chrF (0-100) of generations, one reference
    each; Chinese and Japanese on characters (summaries such as LCSTS, en->zh translation)."""
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
    }
