"""Group metrics: a hand-built table against hand-computed and fairlearn values, reading group
columns row for row, and `lmtune eval --group-column` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import f1_score
from tests.conftest import run_cli, separable_rows, write_csv

from lmtune.data.readers import Table
from lmtune.errors import LmtuneError
from lmtune.evaluation import fairness

GOLD = ["a", "a", "b", "b", "a", "b", "b", "b"]
PRED = ["a", "b", "b", "b", "a", "a", "a", "b"]
GROUP = ["x", "x", "x", "x", "y", "y", "y", "y"]


def test_binary_groups_match_hand_computed_and_fairlearn_values():
    report = fairness.group_metrics(GOLD, PRED, GROUP, ["a", "b"])
    x, y = report["by_group"]["x"], report["by_group"]["y"]
    assert (x["n"], x["accuracy"], y["accuracy"]) == (4, 0.75, 0.5)
    assert report["overall"]["accuracy"] == 5 / 8
    assert x["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2) and y["f1_macro"] == pytest.approx(0.5)
    overall_f1 = f1_score(GOLD, PRED, average="macro")
    assert report["overall"]["f1_macro"] == pytest.approx(overall_f1)
    # "b" is the positive label: selection rate 3/4 vs 1/4, TPR 1 vs 1/3, FPR 1/2 vs 0.
    assert (x["selection_rate"]["b"], y["selection_rate"]["b"]) == (0.75, 0.25)
    assert x["tpr"]["b"] == 1.0 and y["tpr"]["b"] == pytest.approx(1 / 3)
    assert (x["fpr"]["b"], y["fpr"]["b"]) == (0.5, 0.0)
    gaps = report["gaps"]
    assert gaps["positive_label"] == "b"
    assert gaps["demographic_parity_difference"] == pytest.approx(0.5)
    assert gaps["equalized_odds_difference"] == pytest.approx(2 / 3)
    binary = (np.array(GOLD) == "b", np.array(PRED) == "b")
    assert gaps["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(*binary, sensitive_features=GROUP)
    )
    assert gaps["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(*binary, sensitive_features=GROUP)
    )
    assert gaps["accuracy_difference"] == pytest.approx(0.25)
    # y is 0.125 below all rows in accuracy and ~0.12 in macro F1; x is above in both.
    assert {(f["group"], f["metric"]) for f in report["flagged"]} == {("y", "accuracy"), ("y", "f1_macro")}
    assert fairness.group_metrics(GOLD, PRED, GROUP, ["a", "b"], max_gap=0.2)["flagged"] == []


def test_more_classes_take_the_largest_one_vs_rest_gap():
    gold = ["a", "b", "c", "a", "b", "c"]
    pred = ["a", "b", "c", "b", "b", "a"]
    group = ["g", "g", "g", "h", "h", "h"]
    gaps = fairness.group_metrics(gold, pred, group, ["a", "b", "c"])["gaps"]
    per_class = gaps["per_class"]
    assert set(per_class) == {"a", "b", "c"}
    for label, values in per_class.items():
        binary = (np.array(gold) == label, np.array(pred) == label)
        dpd = demographic_parity_difference(*binary, sensitive_features=group)
        assert values["demographic_parity_difference"] == pytest.approx(dpd)
    assert gaps["equalized_odds_difference"] == max(
        v["equalized_odds_difference"] for v in per_class.values()
    )


def test_a_rate_without_a_denominator_is_shown_as_missing():
    report = fairness.group_metrics(["a", "b", "a"], ["a", "b", "b"], ["x", "x", "y"], ["a", "b"])
    assert report["by_group"]["y"]["tpr"]["b"] is None  # group y has no gold "b"
    assert report["by_group"]["y"]["fpr"]["b"] == 1.0


def test_group_values_follow_the_kept_rows_and_refuse_a_missing_column():
    table = Table(
        path="t.csv",
        columns=["text", "label", "region"],
        rows=[{"region": "north"}, {"region": ""}, {"region": 1.0}, {"region": None}],
        row_numbers=[2, 3, 4, 5],
    )
    assert fairness.group_values(table, [2, 0, 1, 3], ["region"]) == {
        "region": ["1", "north", "(missing)", "(missing)"]
    }
    with pytest.raises(LmtuneError, match=r"t\.csv: no column 'gender' to group by.*columns in the file"):
        fairness.group_values(table, [0], ["gender"])


def test_group_chart_is_written(tmp_path):
    report = fairness.group_metrics(GOLD, PRED, GROUP, ["a", "b"])
    fairness.groups_png({"region": report, "other": report}, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_with_group_columns(calibrated_run, tmp_path, capsys, monkeypatch):
    rows = [
        {**row, "region": "north" if i % 2 else "south", "gender": "f" if i < 6 else "m"}
        for i, row in enumerate(separable_rows(12, 7))
    ]
    # A row without text is dropped by the task: its group must not appear (rows stay aligned).
    rows.insert(3, {"text": "", "label": "positive", "region": "ghost", "gender": "f"})
    data = write_csv(tmp_path / "groups.csv", rows)
    out = tmp_path / "m.json"
    args = ["eval", str(calibrated_run), "--data", str(data), "--group-column", "region"]
    code, stdout, stderr = run_cli(
        [*args, "--group-column", "gender", "--output", str(out)], capsys, monkeypatch
    )
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert set(result["groups"]) == {"region", "gender"}
    region = result["groups"]["region"]
    assert set(region["by_group"]) == {"north", "south"}
    assert sum(g["n"] for g in region["by_group"].values()) == result["n"] == 12
    assert result["groups"]["gender"]["by_group"]["f"]["n"] == 6
    assert "accuracy" in result and "by region" in stdout
    assert (tmp_path / "m_groups.png").exists()

    code, _, stderr = run_cli([*args, "--group-column", "age"], capsys, monkeypatch)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "groups.csv: no column 'age' to group by" in " ".join(stderr.split())
