"""The data audit: label issues, duplicates, leakage, outliers and truncation, row by row.

`lmtune audit` (and `data.audit: true` in a training run) reads the files the run would read,
through the task's own readers, and lists every suspicious row with its file and line:

- label issues by confident learning (cleanlab) from out-of-fold probabilities. `fast` fits a
  logistic regression on frozen-encoder features, k-fold (seconds); `thorough` fine-tunes the
  run's own model and method k times and predicts each held-out fold (minutes to hours). Tasks
  with one label per token get token-level issues (cleanlab.token_classification, fast only).
- exact and near duplicates (cosine of the frozen features), duplicates whose labels disagree,
  validation/test rows that also occur in train (leakage), outliers (far from their nearest
  neighbours), class imbalance, and texts longer than `data.max_length` tokens.

Which checks apply is asked of the task: `label-audit` (it gives per-row or per-token labels
through `Task.audit_labels`) and `token-level` (long inputs are windowed, so never truncated).
The output files (audit.csv, audit.md, a cleaned copy) are written by `data.audit_report`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lmtune.errors import LmtuneError

if TYPE_CHECKING:
    from lmtune.config import RunConfig
    from lmtune.data.embeddings import FrozenEncoder
    from lmtune.tasks.base import Task

ISSUES = ("label", "conflicting-duplicate", "duplicate", "leakage", "outlier", "truncated")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class AuditSettings:
    """How hard the audit looks; every default is what `lmtune audit` uses."""

    mode: Literal["fast", "thorough"] = "fast"
    folds: int = 5
    # Cosine of mean-pooled sentence features at or above which two different texts count as
    # near duplicates: 0.97 keeps paraphrases with a changed word apart on MiniLM.
    near_duplicate_similarity: float = 0.97
    neighbours: int = 10
    # Robust z-score (median / MAD) of the distance to the nearest neighbours above which a
    # row is an outlier: 4 flags well under 1 % of a homogeneous set.
    outlier_z: float = 4.0
    # Largest class over smallest class at which the imbalance is reported as a problem.
    imbalance_ratio: float = 5.0
    seed: int = 42


@dataclass
class SequenceLabels:
    """One label per record (classification): what the label-issue check scores."""

    labels: list[str]
    label_ids: list[int]

    def label_text(self, index: int) -> str:
        return self.labels[self.label_ids[index]]


@dataclass
class TokenLabels:
    """One tag per token (NER): token-level label issues, located by `where_token(record, token)`."""

    labels: list[str]
    tokens: list[list[str]]
    tag_ids: list[list[int]]
    where_token: Callable[[int, int], str]

    def label_text(self, index: int) -> str:
        return " ".join(self.labels[t] for t in self.tag_ids[index])


@dataclass
class Finding:
    """One suspicious row (or token): where it is, what is wrong, and why the audit thinks so."""

    split: str
    file: str
    line: int | None
    issue: str
    text: str
    label: str | None = None
    suggested_label: str | None = None
    confidence: float | None = None
    reason: str = ""
    # The record's index in its split (a token-level finding: its sentence's), for cleaned copies.
    row: int = -1


@dataclass
class AuditResult:
    findings: list[Finding]
    summary: dict[str, Any]
    # The out-of-fold probability of each training row's given label (the histogram of audit.md).
    given_label_probability: list[float] = field(default_factory=list)


@dataclass
class AuditedSplit:
    """One split's records, their texts as the task compares them, and their locations."""

    name: str
    records: list[Any]
    texts: list[str]
    wheres: list[str]


# ---- entry points ------------------------------------------------------------------------------
def read_files(cfg: RunConfig) -> tuple[Task, dict[str, list[Any]]]:
    """The task, and the checked records of the files `cfg.data` names (rows keep their lines)."""
    from lmtune.tasks import get_task_class

    task = get_task_class(cfg.task.type)(cfg)
    if not cfg.data.train:
        raise LmtuneError("no training data given", hint="pass --train FILE")
    records: dict[str, list[Any]] = {}
    for split in SPLITS:
        path = getattr(cfg.data, split)
        if path:
            records[split], _ = task.read_records(path, split)
    return task, records


def encoder_for(cfg: RunConfig) -> FrozenEncoder:
    """The frozen body of the run's pretrained model (resolved as training resolves it)."""
    from lmtune.data.embeddings import FrozenEncoder
    from lmtune.models import resolve_model

    m = cfg.model
    path = resolve_model(m.name, m.revision, m.trust_remote_code, m.from_run).path
    return FrozenEncoder(path, cfg.data.max_length, trust_remote_code=m.trust_remote_code)


def audit_records(
    task: Task,
    records: dict[str, list[Any]],
    settings: AuditSettings,
    encoder: FrozenEncoder,
    fold_probabilities: Callable[[list[int], list[int]], np.ndarray] | None = None,
) -> AuditResult:
    """Every check on records already read and checked by `task` (`records["train"]` required).

    `fold_probabilities(train_rows, held_out_rows)` gives held-out class probabilities for the
    thorough mode (see `FineTunedFolds`); the fast mode fits a linear model on `encoder`'s features.
    """
    started = time.perf_counter()
    splits = [
        AuditedSplit(
            name,
            rows,
            [task.overlap_key(r) for r in rows],
            # Tasks whose records do not keep their line are located by split and row.
            [task.record_where(r) or f"{name} row {i + 1}" for i, r in enumerate(rows)],
        )
        for name, rows in ((n, records[n]) for n in SPLITS if n in records)
    ]
    view = task.audit_labels(records["train"]) if task.supports("label-audit") else None
    features = {s.name: encoder.texts(s.texts) for s in splits}
    timings = {"features_s": time.perf_counter() - started}
    findings = _duplicates_and_leakage(splits, features, view, settings)
    findings += _outliers(splits[0], features["train"], settings)
    if not task.supports("token-level"):
        findings += _truncated(splits, encoder, task.cfg.data.max_length)
    timings["similarity_s"] = time.perf_counter() - started - timings["features_s"]
    label_started = time.perf_counter()
    given: list[float] = []
    if isinstance(view, SequenceLabels):
        found, given = _sequence_label_issues(
            splits[0], view, features["train"], settings, fold_probabilities
        )
        findings += found
    elif isinstance(view, TokenLabels):
        findings += _token_label_issues(splits[0], view, encoder, settings)
    timings["label_issues_s"] = time.perf_counter() - label_started
    summary = _summary(splits, findings, view, settings, timings)
    return AuditResult(findings=findings, summary=summary, given_label_probability=given)


# ---- locations ---------------------------------------------------------------------------------
_WHERE = re.compile(r"^(?P<file>.*), (?:line|record) (?P<line>\d+)")


def split_where(where: str) -> tuple[str, int | None]:
    """("data/train.csv", 12) from "data/train.csv, line 12"; the whole string and None otherwise."""
    match = _WHERE.match(where)
    return (match["file"], int(match["line"])) if match else (where, None)


def _finding(split: AuditedSplit, index: int, issue: str, **details: Any) -> Finding:
    file, line = split_where(split.wheres[index])
    return Finding(
        split=split.name, file=file, line=line, issue=issue, text=split.texts[index], row=index, **details
    )


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


# ---- duplicates, leakage, outliers, truncation --------------------------------------------------
def nearest_neighbours(
    queries: np.ndarray, keys: np.ndarray, k: int, exclude_self: bool, block: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most cosine-similar keys of every query (features are L2-normalised).

    Written by hand rather than with sklearn's NearestNeighbors: one blocked matrix product on
    normalised features is exact, bounded in memory (block x keys) and several times faster.
    """
    k = max(1, min(k, keys.shape[0] - (1 if exclude_self else 0)))
    top_index = np.zeros((queries.shape[0], k), dtype=np.int64)
    top_sim = np.zeros((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], block):
        sims = queries[start : start + block] @ keys.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_sims, axis=1)
        top_index[start : start + block] = np.take_along_axis(part, order, axis=1)
        top_sim[start : start + block] = np.take_along_axis(part_sims, order, axis=1)
    return top_index, top_sim


def _duplicates_and_leakage(
    splits: list[AuditedSplit],
    features: dict[str, np.ndarray],
    view: SequenceLabels | TokenLabels | None,
    settings: AuditSettings,
) -> list[Finding]:
    train = splits[0]
    findings = _train_duplicates(train, features["train"], view, settings)
    first_seen: dict[str, int] = {}
    for i, text in enumerate(train.texts):
        first_seen.setdefault(_normalised(text), i)
    for held_out in splits[1:]:
        if not held_out.records:
            continue
        index, sims = nearest_neighbours(features[held_out.name], features["train"], 1, exclude_self=False)
        for i, text in enumerate(held_out.texts):
            j = first_seen.get(_normalised(text))
            if j is not None:
                reason = f"the same text is in train at {train.wheres[j]}"
            elif sims[i, 0] >= settings.near_duplicate_similarity:
                j = int(index[i, 0])
                reason = f"nearly the same text (cosine {sims[i, 0]:.3f}) is in train at {train.wheres[j]}"
            else:
                continue
            findings.append(_finding(held_out, i, "leakage", confidence=float(sims[i, 0]), reason=reason))
    return findings


def _train_duplicates(
    train: AuditedSplit, features: np.ndarray, view: Any, settings: AuditSettings
) -> list[Finding]:
    label_of = view.label_text if view is not None else (lambda i: None)
    findings: list[Finding] = []
    first_seen: dict[str, int] = {}
    exact: set[int] = set()
    for i, text in enumerate(train.texts):
        j = first_seen.setdefault(_normalised(text), i)
        if j != i:
            exact.add(i)
            findings.append(_pair_finding(train, i, j, label_of, "the same text", 1.0))
    if len(train.records) < 2:
        return findings
    index, sims = nearest_neighbours(features, features, 1, exclude_self=True)
    for i in range(len(train.records)):
        j = int(index[i, 0])
        # One finding per pair: the later row of two, never one already an exact duplicate.
        near = sims[i, 0] >= settings.near_duplicate_similarity
        if j < i and i not in exact and near and _normalised(train.texts[i]) != _normalised(train.texts[j]):
            what = f"nearly the same text (cosine {sims[i, 0]:.3f})"
            findings.append(_pair_finding(train, i, j, label_of, what, float(sims[i, 0])))
    return findings


def _pair_finding(
    train: AuditedSplit, i: int, j: int, label_of: Callable[[int], str | None], what: str, sim: float
) -> Finding:
    mine, theirs = label_of(i), label_of(j)
    if mine is not None and mine != theirs:
        return _finding(
            train,
            i,
            "conflicting-duplicate",
            label=mine,
            suggested_label=theirs,
            confidence=sim,
            reason=f"{what} as {train.wheres[j]}, labelled '{theirs}' there and '{mine}' here",
        )
    return _finding(train, i, "duplicate", label=mine, confidence=sim, reason=f"{what} as {train.wheres[j]}")


def _outliers(train: AuditedSplit, features: np.ndarray, settings: AuditSettings) -> list[Finding]:
    if len(train.records) <= settings.neighbours + 1:
        return []
    _, sims = nearest_neighbours(features, features, settings.neighbours, exclude_self=True)
    distance = 1.0 - sims.mean(axis=1)
    median = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - median))) or 1e-12
    z = (distance - median) / spread
    return [
        _finding(
            train,
            int(i),
            "outlier",
            confidence=float(z[i]),
            reason=f"far from its {settings.neighbours} nearest training rows "
            f"(mean cosine {1 - distance[i]:.3f}; robust z {z[i]:.1f})",
        )
        for i in np.flatnonzero(z > settings.outlier_z)
    ]


def _truncated(splits: list[AuditedSplit], encoder: FrozenEncoder, max_length: int) -> list[Finding]:
    findings = []
    for split in splits:
        for i, count in enumerate(encoder.token_counts(split.texts)):
            if count > max_length:
                reason = f"{count} tokens: data.max_length {max_length} cuts {count - max_length}"
                findings.append(_finding(split, i, "truncated", reason=reason))
    return findings


# ---- label issues -------------------------------------------------------------------------------
def out_of_fold_probabilities(
    features: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int, groups: Any = None
) -> np.ndarray:
    """Held-out class probabilities of a logistic regression, k-fold (stratified, or by `groups`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if groups is not None:
        splitter: Any = GroupKFold(n_splits=folds)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(y), n_classes), dtype=np.float64)
    for fit_rows, held_rows in splitter.split(features, y, groups):
        model = LogisticRegression(max_iter=1000, C=1.0)
        model.fit(features[fit_rows], y[fit_rows])
        probs[np.ix_(held_rows, model.classes_)] = model.predict_proba(features[held_rows])
    return probs


def _folds_for(y: np.ndarray, wanted: int) -> int:
    smallest = int(np.bincount(y).min()) if len(y) else 0
    folds = min(wanted, smallest)
    if folds < 2:
        raise LmtuneError(
            "the label audit needs at least 2 training rows of every class",
            hint="a class with one example cannot be checked out of fold; add examples or drop the class",
        )
    return folds


def _sequence_label_issues(
    train: AuditedSplit,
    view: SequenceLabels,
    features: np.ndarray,
    settings: AuditSettings,
    fold_probabilities: Callable[[list[int], list[int]], np.ndarray] | None,
) -> tuple[list[Finding], list[float]]:
    from cleanlab.filter import find_label_issues

    y = np.asarray(view.label_ids, dtype=np.int64)
    present = np.bincount(y, minlength=len(view.labels))
    if (present == 0).any():
        absent = [view.labels[i] for i in np.flatnonzero(present == 0)]
        raise LmtuneError(f"the label audit needs every class in train; missing: {', '.join(absent)}")
    folds = _folds_for(y, settings.folds)
    if settings.mode == "thorough":
        if fold_probabilities is None:
            raise LmtuneError(
                "the thorough audit needs fine-tuned folds", hint="use `lmtune audit --thorough`"
            )
        probs = _fine_tuned_out_of_fold(y, folds, settings.seed, fold_probabilities)
    else:
        probs = out_of_fold_probabilities(features, y, len(view.labels), folds, settings.seed)
    ranked = find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    findings = []
    for i in ranked:
        suggested = int(probs[i].argmax())
        findings.append(
            _finding(
                train,
                int(i),
                "label",
                label=view.labels[y[i]],
                suggested_label=view.labels[suggested],
                confidence=float(probs[i, suggested]),
                reason=f"out-of-fold probability of '{view.labels[y[i]]}' is {probs[i, y[i]]:.3f}; "
                f"'{view.labels[suggested]}' {probs[i, suggested]:.3f} ({settings.mode} audit)",
            )
        )
    return findings, [float(p) for p in probs[np.arange(len(y)), y]]


def _fine_tuned_out_of_fold(
    y: np.ndarray, folds: int, seed: int, fold_probabilities: Callable[[list[int], list[int]], np.ndarray]
) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), int(y.max()) + 1), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(np.zeros(len(y)), y):
        probs[held_rows] = fold_probabilities(fit_rows.tolist(), held_rows.tolist())
    return probs


def _token_label_issues(
    train: AuditedSplit, view: TokenLabels, encoder: FrozenEncoder, settings: AuditSettings
) -> list[Finding]:
    from cleanlab.token_classification.filter import find_label_issues

    if settings.mode == "thorough":
        raise LmtuneError(
            "the thorough audit fine-tunes per-row classifiers; token-level tasks have the fast audit only",
            hint="drop --thorough",
        )
    vectors = encoder.words(view.tokens)
    lengths = [len(t) for t in view.tag_ids]
    y = np.asarray([t for tags in view.tag_ids for t in tags], dtype=np.int64)
    groups = np.repeat(np.arange(len(lengths)), lengths)
    folds = min(settings.folds, len(lengths))
    if folds < 2:
        raise LmtuneError("the label audit needs at least 2 training sentences")
    features = np.concatenate(vectors)
    flat = out_of_fold_probabilities(features, y, len(view.labels), folds, settings.seed, groups)
    per_sentence = np.split(flat, np.cumsum(lengths)[:-1])
    issues = find_label_issues(view.tag_ids, list(per_sentence), return_indices_ranked_by="self_confidence")
    findings = []
    for i, j in issues:
        probs, given = per_sentence[i][j], view.tag_ids[i][j]
        suggested = int(probs.argmax())
        file, line = split_where(view.where_token(i, j))
        findings.append(
            Finding(
                split="train",
                file=file,
                line=line,
                issue="label",
                text=f"{' '.join(view.tokens[i])} [token {j + 1}: {view.tokens[i][j]}]",
                label=view.labels[given],
                suggested_label=view.labels[suggested],
                confidence=float(probs[suggested]),
                reason=f"token '{view.tokens[i][j]}' tagged '{view.labels[given]}' (out-of-fold "
                f"{probs[given]:.3f}); '{view.labels[suggested]}' {probs[suggested]:.3f}",
                row=int(i),
            )
        )
    return findings


# ---- summary ------------------------------------------------------------------------------------
def _summary(
    splits: Sequence[AuditedSplit],
    findings: list[Finding],
    view: SequenceLabels | TokenLabels | None,
    settings: AuditSettings,
    timings: dict[str, float],
) -> dict[str, Any]:
    counts = Counter((f.issue, f.split) for f in findings)
    summary: dict[str, Any] = {
        "mode": settings.mode,
        "rows": {s.name: len(s.records) for s in splits},
        "issues": {issue: {s.name: counts.get((issue, s.name), 0) for s in splits} for issue in ISSUES},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    if isinstance(view, SequenceLabels):
        balance = Counter(view.label_ids)
        per_class = {label: balance.get(i, 0) for i, label in enumerate(view.labels)}
        ratio = max(per_class.values()) / max(min(per_class.values()), 1)
        summary["class_balance"] = per_class
        summary["imbalance_ratio"] = round(ratio, 2)
        summary["imbalanced"] = ratio >= settings.imbalance_ratio
    return summary
