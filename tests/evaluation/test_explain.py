"""Token attributions (`lmtune.evaluation.explain*`) on a hand-built classifier whose label one
word decides, so what a faithful explanation must say is known; and on a trained tiny run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tests.conftest import NEGATIVE, POSITIVE, separable_rows
from torch import nn

from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.evaluation.explain import ExplainSettings, explain
from lmtune.evaluation.explain_faithfulness import faithfulness
from lmtune.evaluation.explain_render import html_page, print_records, top_tokens
from lmtune.evaluation.explain_report import REPORT_BEGIN, error_section, replace_report_section
from lmtune.tasks import get_task_class


class BagOfWords(nn.Module):
    """logits = W tanh(sum of token embeddings): the sentiment words carry the signal, the other
    tokens a little noise, the pad token nothing (so the baseline is "no information")."""

    def __init__(self, tokenizer, strength: float = 2.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(len(tokenizer), 4)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.embed.weight.normal_(0, 0.02)
            self.embed.weight[tokenizer.pad_token_id] = 0
            for words, sign in ((POSITIVE, 1.0), (NEGATIVE, -1.0)):
                for word in words:
                    for token in tokenizer(word, add_special_tokens=False)["input_ids"]:
                        self.embed.weight[token, 0] = sign * strength
            self.head.weight.zero_()
            self.head.weight[0, 0], self.head.weight[1, 0] = -3.0, 3.0
            self.head.bias.zero_()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_: object) -> SimpleNamespace:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = (self.embed(input_ids) * mask[..., None]).sum(1)
        return SimpleNamespace(logits=self.head(torch.tanh(pooled)))


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture(scope="module")
def task(tiny_bert):
    cfg = RunConfig.from_dict(
        {
            "model": tiny_bert,
            "task": "classification",
            "data": {"labels": ["negative", "positive"], "max_length": 32},
        }
    )
    return get_task_class("classification")(cfg)


@pytest.fixture(scope="module")
def model(tokenizer):
    return BagOfWords(tokenizer).eval()


def test_the_deciding_word_ranks_first_and_scores_sum_to_the_output_change(task, model, tokenizer):
    records = explain(
        task, model, tokenizer, [{"text": "the film was great"}, {"text": "our meal was awful"}]
    )
    for record, label, word in zip(records, ("positive", "negative"), ("great", "awful"), strict=True):
        assert record["prediction"]["label"] == label
        (e,) = record["explanations"]
        assert e["target"] == label and e["output"] == "probability"
        words = [w["word"] for w in record["words"]]
        assert words == record["input"]["text"].split()
        assert words[max(range(len(words)), key=e["word_scores"].__getitem__)] == word
        assert top_tokens(record, e, 1)[0][0] == word
        # Completeness: the scores add up to value(input) - value(baseline), within the delta.
        assert sum(e["token_scores"]) == pytest.approx(e["value"] - e["baseline_value"], abs=1e-3)
        assert abs(e["delta"]) < 1e-3
        assert e["token_scores"][0] == 0.0 and e["token_scores"][-1] == 0.0  # [CLS], [SEP]
        assert len(e["token_scores"]) == len(record["tokens"])


def test_target_label_and_words_of_subword_tokens(task, model, tokenizer):
    (record,) = explain(
        task,
        model,
        tokenizer,
        [{"text": "unbelievably great"}],
        ExplainSettings(target="negative", reduce="l2"),
    )
    assert record["explanations"][0]["target"] == "negative"
    # "unbelievably" is several WordPiece tokens: one word, its characters in the text.
    assert len(record["tokens"]) > 4
    assert [(w["word"], w["start"], w["end"]) for w in record["words"]] == [
        ("unbelievably", 0, 12),
        ("great", 13, 18),
    ]
    assert all(s >= 0 for s in record["explanations"][0]["token_scores"])  # l2: magnitudes
    with pytest.raises(LmtuneError, match="unknown --target label 'neutral'"):
        explain(task, model, tokenizer, [{"text": "x"}], ExplainSettings(target="neutral"))
    with pytest.raises(LmtuneError, match="nothing to explain"):
        explain(task, model, tokenizer, [])
    with pytest.raises(LmtuneError, match="unknown explanation method"):
        ExplainSettings(method="shap")


def test_ig_is_more_faithful_than_random_tokens(task, model, tokenizer):
    items = [{"text": r["text"]} for r in separable_rows(24, 5)]
    scores = faithfulness(task, model, tokenizer, items, seed=1, limit=20)
    assert scores["rows"] == 20 and scores["k"] == [10, 20, 50]
    assert scores["comprehensiveness"] > scores["random"]["comprehensiveness"] + 0.1
    assert scores["sufficiency"] < scores["random"]["sufficiency"]
    assert faithfulness(task, model, tokenizer, items, seed=1, limit=20) == scores  # seeded


def test_rollout_runs_on_a_transformer(tiny_bert, task, tokenizer):
    model = task.build_model(tiny_bert, fresh_head=True).eval()
    before = model.config._attn_implementation
    (record,) = explain(
        task, model, tokenizer, [{"text": "the film was great"}], ExplainSettings(method="rollout")
    )
    e = record["explanations"][0]
    assert len(e["token_scores"]) == len(record["tokens"]) and e["delta"] is None
    assert sum(e["token_scores"]) > 0
    assert model.config._attn_implementation == before  # eager only while rollout ran


def test_html_escapes_untrusted_text_and_loads_nothing(task, model, tokenizer):
    records = explain(task, model, tokenizer, [{"text": "<script>alert('x')</script> was great"}])
    page = html_page(records, title="<b>run</b>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;run" in page
    assert "src=" not in page and "http" not in page.replace("http-equiv", "")
    console_text = _printed(records)
    assert "[bold]" not in console_text and "great" in console_text


def _printed(records) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    print_records(console, records)
    return console.export_text()


def test_error_section_and_report_markers(task, model, tokenizer, tmp_path):
    from datasets import Dataset

    # Row 2 is labelled wrongly: the model's confident "positive" is the error to explain.
    data = Dataset.from_dict(
        {"text": ["the film was great", "the app was superb", "our meal was awful"], "label_ids": [1, 0, 0]}
    )
    lines = error_section(task, model, tokenizer, data, 3)
    text = "\n".join(lines)
    assert "the app was superb" in text and "superb" in text.split("the app was superb")[1]
    assert "the film was great" not in text
    report = tmp_path / "report.md"
    report.write_text("# run\n\nbody\n")
    replace_report_section(report, ["first"])
    replace_report_section(report, ["second"])
    written = report.read_text()
    assert written.count(REPORT_BEGIN) == 1 and "second" in written and "first" not in written
    assert written.startswith("# run\n\nbody\n")
