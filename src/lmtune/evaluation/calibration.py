"""Calibration of class probabilities: how far a model's confidence is from its accuracy.

- `expected_calibration_error`: equal-width confidence bins (15 by default), the weighted mean
  gap between each bin's accuracy and its mean confidence. Single-label: the top-label ECE
  (confidence is the largest probability, "correct" is the argmax being the gold class).
  Multi-label: every label is a binary problem; the ECE is the mean of the per-label ECEs.
- `reliability_bins` / `reliability_png`: the per-bin numbers behind that, and their diagram.
- `fit_temperature`: temperature scaling (Guo et al., 2017), one scalar T that divides the
  logits, fitted on validation logits by minimising the negative log-likelihood. It leaves the
  argmax (single-label) unchanged, so accuracy and F1 stay as they are.
- `coverage_curve` / `coverage_png`: abstain on rows whose confidence is below a threshold;
  what fraction is kept (coverage) and how accurate the kept rows are, per threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.errors import LmtuneError
from lmtune.io import atomic_path

DEFAULT_BINS = 15
# log T is kept within these bounds: T from ~0.007 to ~150 covers any sane model; beyond them
# the fit is chasing a degenerate validation set (all rows right, or all wrong).
_LOG_T_BOUNDS = (-5.0, 5.0)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: (lower, upper], its rows, their mean confidence and accuracy."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


def top_label(probs: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-label rows as (confidence, correct): the largest probability and whether its class is gold."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold).astype(int)
    return probs.max(axis=-1), (probs.argmax(axis=-1) == gold).astype(np.float64)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins are (i/B, (i+1)/B]; a confidence of exactly 0 goes into the first bin.
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1] of (confidence, correct) pairs; empty bins have None means."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = _bin_index(confidence, n_bins)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            ReliabilityBin(
                lower=b / n_bins,
                upper=(b + 1) / n_bins,
                count=count,
                confidence=float(confidence[members].mean()) if count else None,
                accuracy=float(correct[members].mean()) if count else None,
            )
        )
    return bins


def binned_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """sum over bins of (rows in bin / rows) * |accuracy - mean confidence|; 0.0 for no rows."""
    total = len(confidence)
    if total == 0:
        return 0.0
    return float(
        sum(
            b.count / total * abs(b.accuracy - b.confidence)  # type: ignore[operator]
            for b in reliability_bins(confidence, correct, n_bins)
            if b.count
        )
    )


def expected_calibration_error(
    probs: np.ndarray, gold: np.ndarray, *, multi_label: bool = False, n_bins: int = DEFAULT_BINS
) -> float:
    """Top-label ECE (single-label: `gold` holds class ids) or the mean per-label binary ECE
    (multi-label: `gold` is a 0/1 matrix shaped like `probs`)."""
    probs = np.asarray(probs, dtype=np.float64)
    if multi_label:
        gold = np.asarray(gold, dtype=np.float64)
        if probs.shape[1] == 0:
            return 0.0
        # Per label, the probability of "on" against whether it is on (a binary reliability curve).
        return float(np.mean([binned_ece(probs[:, j], gold[:, j], n_bins) for j in range(probs.shape[1])]))
    return binned_ece(*top_label(probs, gold), n_bins)


def negative_log_likelihood(logits: np.ndarray, gold: np.ndarray, *, multi_label: bool = False) -> float:
    """Mean NLL of `logits` (softmax cross-entropy, or per-label binary cross-entropy)."""
    import torch

    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return float(_nll(x, _targets(gold, multi_label), multi_label))


def _targets(gold: np.ndarray, multi_label: bool) -> Any:
    import torch

    dtype = torch.float64 if multi_label else torch.long
    return torch.as_tensor(np.asarray(gold), dtype=dtype)


def _nll(logits: Any, targets: Any, multi_label: bool) -> Any:
    import torch.nn.functional as F

    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def fit_temperature(
    logits: np.ndarray, gold: np.ndarray, *, multi_label: bool = False, max_iter: int = 100
) -> float:
    """The temperature T minimising the NLL of `logits / T` on these (validation) rows.

    The optimiser works on log T, so T stays positive without constraints; LBFGS with a
    strong-Wolfe line search converges in a handful of steps on this one-parameter problem.
    """
    import torch

    logits = np.asarray(logits)
    if logits.ndim != 2 or len(logits) == 0:
        raise LmtuneError(
            "temperature scaling needs validation rows to fit on, and there are none",
            hint="give a validation file (data.validation) or set task.calibration to none",
        )
    # A caller may be in inference mode or without grad; the fit needs autograd, and its tensors
    # must be made inside (inference tensors cannot be saved for backward).
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.as_tensor(logits, dtype=torch.float64)
        y = _targets(gold, multi_label)
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Any:
            optimizer.zero_grad()
            loss = _nll(x / log_t.exp(), y, multi_label)
            loss.backward()
            return loss

        optimizer.step(closure)
        value = float(log_t.detach().clamp(*_LOG_T_BOUNDS).exp())
    return value if np.isfinite(value) else 1.0


@dataclass(frozen=True)
class CoveragePoint:
    """Abstaining below `threshold`: the share of rows kept and the accuracy on them."""

    threshold: float
    coverage: float
    accuracy: float | None  # None when no row is kept
    kept: int


def coverage_curve(
    confidence: np.ndarray, correct: np.ndarray, thresholds: Sequence[float] | None = None
) -> list[CoveragePoint]:
    """Coverage and accuracy of the rows with confidence >= each threshold (default 0, 0.05 ... 1)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if thresholds is None:
        thresholds = [round(t, 2) for t in np.linspace(0.0, 1.0, 21)]
    total = len(confidence)
    points = []
    for threshold in thresholds:
        kept = confidence >= threshold
        n = int(kept.sum())
        points.append(
            CoveragePoint(
                threshold=float(threshold),
                coverage=n / total if total else 0.0,
                accuracy=float(correct[kept].mean()) if n else None,
                kept=n,
            )
        )
    return points


def as_dicts(items: Sequence[ReliabilityBin | CoveragePoint]) -> list[dict[str, Any]]:
    """Bins or curve points as plain dicts (for metrics.json)."""
    return [asdict(item) for item in items]


# ---- plots ------------------------------------------------------------------------------------
def reliability_png(bins: Sequence[ReliabilityBin], path: Path, title: str) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration, counts below."""
    from lmtune.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = bins[0].upper - bins[0].lower if bins else 1.0
    filled = [b for b in bins if b.count]
    centres = [b.lower + width / 2 for b in filled]
    top.bar(centres, [b.accuracy for b in filled], width=width * 0.95, label="accuracy", color="tab:blue")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.scatter(centres, [b.confidence for b in filled], color="tab:red", s=12, label="mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, [b.count for b in filled], width=width * 0.95, color="tab:grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("rows")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def coverage_png(points: Sequence[CoveragePoint], path: Path, title: str) -> None:
    """Accuracy of the kept rows against coverage, one point per confidence threshold."""
    from lmtune.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    shown = [p for p in points if p.accuracy is not None]
    ax.plot([p.coverage for p in shown], [p.accuracy for p in shown], marker="o", markersize=3)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (share of rows answered)")
    ax.set_ylabel("accuracy on answered rows")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---- what a classification task records -----------------------------------------------------------
def calibration_details(probs: np.ndarray, gold: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Single-label details for metrics.json and the report: reliability bins and the coverage curve."""
    confidence, correct = top_label(probs, gold)
    return {
        "reliability": as_dicts(reliability_bins(confidence, correct, n_bins)),
        "coverage": as_dicts(coverage_curve(confidence, correct)),
    }


def temperature_record(
    logits: np.ndarray, gold: np.ndarray, multi_label: bool, n_bins: int = DEFAULT_BINS
) -> tuple[float, dict[str, Any]]:
    """Fit the temperature on validation logits; also what metrics.json's `calibration` shows:
    the validation ECE and NLL before and after (after is in-sample: the fit saw these rows)."""
    import torch

    temperature = fit_temperature(logits, gold, multi_label=multi_label)

    def probs(t: float) -> np.ndarray:
        x = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / t
        return (torch.sigmoid(x) if multi_label else torch.softmax(x, dim=-1)).numpy()

    def ece(t: float) -> float:
        return round(expected_calibration_error(probs(t), gold, multi_label=multi_label, n_bins=n_bins), 6)

    def nll(t: float) -> float:
        return round(negative_log_likelihood(np.asarray(logits) / t, gold, multi_label=multi_label), 6)

    return temperature, {
        "method": "temperature",
        "temperature": round(temperature, 6),
        "fitted_on": "validation",
        "rows": len(gold),
        "bins": n_bins,
        "validation_ece_before": ece(1.0),
        "validation_ece_after": ece(temperature),
        "validation_nll_before": nll(1.0),
        "validation_nll_after": nll(temperature),
    }


def calibration_section(result: Any, record: dict[str, Any], run_dir: Path, split: str) -> list[str]:
    """report.md's calibration section for one split: ECE, the fitted temperature (if any), the
    reliability diagram and the coverage curve (single-label: multi-label has neither detail)."""
    from lmtune.evaluation.report import format_cell, markdown_table, section

    reliability, coverage = result.details.get("reliability"), result.details.get("coverage")
    if reliability is None or coverage is None:
        return []
    body = [f"- ECE ({split}, {len(reliability)} bins): {format_cell(result.metrics.get('ece'))}"]
    if "ece_uncalibrated" in result.metrics:
        body.append(
            f"- ECE ({split}) without the temperature: {format_cell(result.metrics['ece_uncalibrated'])}"
        )
    if record:
        ece, nll = (
            " -> ".join(format_cell(record[f"validation_{k}_{when}"]) for when in ("before", "after"))
            for k in ("ece", "nll")
        )
        body.append(
            f"- temperature {format_cell(record['temperature'])} (fitted on validation): ECE {ece}, NLL {nll}"
        )
    reliability_png(
        [ReliabilityBin(**b) for b in reliability],
        run_dir / f"reliability_{split}.png",
        title=f"Reliability ({split})",
    )
    coverage_png(
        [CoveragePoint(**p) for p in coverage],
        run_dir / f"coverage_{split}.png",
        title=f"Coverage vs accuracy ({split})",
    )
    body += ["", f"![reliability diagram ({split})](reliability_{split}.png)", ""]
    body += [f"![coverage vs accuracy ({split})](coverage_{split}.png)", ""]
    shown = [p for p in coverage if p["threshold"] in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)]
    rows = (
        [format_cell(p["threshold"]), format_cell(p["coverage"]), format_cell(p["accuracy"])] for p in shown
    )
    body += markdown_table(["abstain below confidence", "coverage", "accuracy"], rows)
    return section(f"Calibration ({split})", body)
