"""Calibration: ECE by hand, temperature scaling on over-confident logits, the coverage curve, and
task.calibration=temperature end to end (fitted, saved, reloaded, applied by predict)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmtune.config import RunConfig
from lmtune.evaluation import calibration as cal
from lmtune.run import fingerprint


def test_top_label_ece_matches_a_hand_computation():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): two bins with rows,
    # ECE = 1/2 |0.5 - 0.9| + 1/2 |1.0 - 0.6| = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    gold = np.array([0, 1, 1, 0])
    assert cal.expected_calibration_error(probs, gold) == pytest.approx(0.4)
    # One bin: |mean accuracy - mean confidence| = |0.75 - 0.75|.
    assert cal.expected_calibration_error(probs, gold, n_bins=1) == pytest.approx(0.0)
    bins = cal.reliability_bins(*cal.top_label(probs, gold))
    filled = [b for b in bins if b.count]
    assert [(b.count, b.accuracy) for b in filled] == [(2, 1.0), (2, 0.5)]
    assert filled[0].upper == pytest.approx(9 / 15)  # 0.6 sits in (8/15, 9/15]: upper edges inclusive


def test_multi_label_ece_is_the_mean_of_per_label_binary_eces():
    probs = np.array([[0.8, 0.3], [0.8, 0.3]])
    gold = np.array([[1, 0], [0, 0]])
    # label 0: one bin, accuracy 0.5, confidence 0.8 -> 0.3; label 1: frequency 0, confidence 0.3 -> 0.3
    assert cal.expected_calibration_error(probs, gold, multi_label=True) == pytest.approx(0.3)


def test_temperature_scaling_fixes_over_confident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(2000, 3)) * 1.5
    probs = torch.softmax(torch.as_tensor(true_logits), dim=-1).numpy()
    gold = np.array([rng.choice(3, p=p) for p in probs])
    over_confident = true_logits * 3.0  # what the model says: three times too sharp
    temperature = cal.fit_temperature(over_confident, gold)
    assert temperature == pytest.approx(3.0, rel=0.15)

    def ece(t: float) -> float:
        scaled = torch.softmax(torch.as_tensor(over_confident / t), dim=-1).numpy()
        return cal.expected_calibration_error(scaled, gold)

    assert ece(temperature) < ece(1.0) / 3
    nll = cal.negative_log_likelihood
    assert nll(over_confident / temperature, gold) < nll(over_confident, gold)
    # Dividing by a positive scalar keeps every argmax: accuracy cannot change.
    assert (np.argmax(over_confident / temperature, -1) == np.argmax(over_confident, -1)).all()


def test_fit_temperature_refuses_no_rows():
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match="needs validation rows"):
        cal.fit_temperature(np.zeros((0, 2)), np.zeros(0))


def test_coverage_curve_keeps_the_rows_at_or_above_each_threshold():
    confidence = np.array([0.9, 0.8, 0.6, 0.3])
    correct = np.array([1, 1, 0, 0])
    points = cal.coverage_curve(confidence, correct, [0.0, 0.5, 0.7, 0.8, 0.95])
    assert [p.coverage for p in points] == [1.0, 0.75, 0.5, 0.5, 0.0]
    assert [p.accuracy for p in points] == [0.5, pytest.approx(2 / 3), 1.0, 1.0, None]
    assert [p.kept for p in points] == [4, 3, 2, 2, 0]


def test_plots_are_written(tmp_path):
    confidence, correct = np.array([0.55, 0.9, 0.95]), np.array([0, 1, 1])
    cal.reliability_png(cal.reliability_bins(confidence, correct), tmp_path / "r.png", title="r")
    cal.coverage_png(cal.coverage_curve(confidence, correct), tmp_path / "c.png", title="c")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_option_keeps_existing_fingerprints():
    base = {"model": "x", "data": {"labels": ["a", "b"]}}
    plain = RunConfig.from_dict(base)
    explicit = RunConfig.from_dict({**base, "task": {"type": "classification", "calibration": "none"}})
    assert plain.to_dict()["task"] == {"type": "classification", "multi_label": None, "threshold": 0.5}
    assert fingerprint(explicit) == fingerprint(plain)
    scaled = RunConfig.from_dict({**base, "task": {"type": "classification", "calibration": "temperature"}})
    assert scaled.to_dict()["task"]["calibration"] == "temperature"
    assert scaled.task.options.calibration == "temperature"
    assert fingerprint(scaled) != fingerprint(plain)


def test_temperature_is_fitted_saved_reloaded_and_applied(calibrated_run):
    import lmtune

    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    record = metrics["calibration"]
    assert set(record) >= {"temperature", "validation_ece_before", "validation_ece_after"}
    assert record["validation_nll_after"] <= record["validation_nll_before"]
    saved = json.loads((calibrated_run / "model" / "lmtune.json").read_text())["task_state"]
    assert saved["temperature"] == pytest.approx(record["temperature"], abs=1e-6)
    assert saved["temperature"] != pytest.approx(1.0)  # so that applying it is visible below
    assert {"ece", "ece_uncalibrated"} <= set(metrics["test"])
    assert "reliability_test.png" in (calibrated_run / "report.md").read_text()
    assert (calibrated_run / "coverage_test.png").exists()

    run = lmtune.load_run(calibrated_run)
    assert run.task.temperature == saved["temperature"]
    texts = ["the film was great", "this phone was awful", "the hotel was lovely"]
    enc = run.tokenizer(texts, truncation=True, max_length=32)
    features = [{key: enc[key][n] for key in enc} for n in range(len(texts))]
    logits = run.task.logits(run.model, run.tokenizer, features, 8)
    expected = torch.softmax(torch.as_tensor(logits) / saved["temperature"], dim=-1).numpy()
    scores = np.array([list(row["scores"].values()) for row in run.predict(texts)])
    assert np.allclose(scores, expected, atol=1e-6)  # predict applies the temperature
    # The reloaded run predicts what the training process evaluated: the test metrics match.
    assert run.evaluate(run.config.data.test)["ece"] == pytest.approx(metrics["test"]["ece"], abs=1e-7)
