"""Reward functions for GRPO (`task: grpo`, `task.reward`): what a completion is worth.

Every reward is called the way TRL's GRPOTrainer calls reward functions,
`reward(prompts=..., completions=..., completion_ids=..., answer=[...], **columns)`, and returns
one float per completion, or None where it does not apply (TRL then leaves that reward out of
that completion's sum). A completion is a string or, for chat prompts, a list of messages
(`[{"role": "assistant", "content": ...}]`); `completion_text` reads either.

`task.reward` names one reward or a list of them:

- `exact_match`: 1 when the completion's final answer equals the reference `answer`, after
  normalising case and whitespace (and a trailing full stop). The final answer of a text is what
  follows its last `####`, else the inside of its last `\\boxed{...}`, else what follows its last
  "answer is" / "answer:", else its last non-empty line (what follows the line's last `=`, if it
  has one: "3 + 4 = 7." gives 7); the reference is read the same way, so a worked solution ending
  in `#### 72` compares as 72.
- `numeric_match`: 1 when the last number in the completion equals the last number in the
  reference within `task.reward_tolerance` (absolute); thousands separators are ignored.
- `regex`: 1 when `task.reward_pattern` matches anywhere in the completion; `format`: 1 when it
  matches the whole (stripped) completion. Both with `re.DOTALL`, so `.` crosses lines.
- `module:function` or `path/to/file.py:function`: a Python function of the user's, called as
  TRL calls it. It runs the user's code, so it is refused unless the run allows it:
  `task.allow_code: true`, which `lmtune train --allow-code` sets.
- a directory: a finished `task: reward-model` run, loaded with `lmtune.run.Run.load`; its task
  scores each (prompt, completion) pair (the `reward-scores` capability).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

BUILTIN_REWARDS = ("exact_match", "numeric_match", "regex", "format")
# Built-ins that compare with the record's reference answer.
NEEDS_ANSWER = frozenset({"exact_match", "numeric_match"})
PATTERN_REWARDS = frozenset({"regex", "format"})
CODE_HINT = "pass --allow-code to `lmtune train` (it sets task.allow_code: true) if you trust that code"

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is\s*:?|:)\s*", re.IGNORECASE)

Reward = Callable[..., Any]


@dataclass(frozen=True)
class RewardSettings:
    """The task options the rewards read."""

    pattern: str | None = None
    tolerance: float = 1e-6
    allow_code: bool = False
    batch_size: int = 8  # reward-model scoring


# ---- reading completions ------------------------------------------------------------------------
def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the contents of a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion)


def final_answer(text: str) -> str:
    """The final answer a text gives (see the module docstring for the rules)."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    said = list(_ANSWER_IS.finditer(text))
    if said:
        rest = text[said[-1].end() :].strip()
        return rest.splitlines()[0] if rest else ""
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.rsplit("=", 1)[1].strip() if "=" in last else last.strip()


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed, without a trailing full stop or surrounding quotes."""
    text = " ".join(text.split()).casefold()
    return text.rstrip(".").strip().strip("\"'`").strip()


def last_number(text: str) -> float | None:
    """The last number written in a text (1,234.5 reads as 1234.5), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


# ---- the built-in rewards -----------------------------------------------------------------------
class ExactMatch:
    """1.0 when the completion's final answer equals the reference's (normalised)."""

    __name__ = "exact_match"

    def __call__(
        self, completions: Sequence[Any], answer: Sequence[str | None] | None = None, **_: Any
    ) -> list:
        references = answer or [None] * len(completions)
        return [
            None
            if ref is None
            else float(normalise(final_answer(completion_text(c))) == normalise(final_answer(ref)))
            for c, ref in zip(completions, references, strict=True)
        ]


class NumericMatch:
    """1.0 when the completion's last number equals the reference's within `tolerance`."""

    __name__ = "numeric_match"

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    def __call__(
        self, completions: Sequence[Any], answer: Sequence[str | None] | None = None, **_: Any
    ) -> list:
        references = answer or [None] * len(completions)
        out: list[float | None] = []
        for completion, ref in zip(completions, references, strict=True):
            expected = last_number(ref) if ref is not None else None
            if expected is None:
                out.append(None)
                continue
            got = last_number(completion_text(completion))
            out.append(float(got is not None and abs(got - expected) <= self.tolerance))
        return out


class PatternMatch:
    """1.0 when `pattern` matches the completion: anywhere (`regex`) or all of it (`format`)."""

    def __init__(self, name: str, pattern: str) -> None:
        self.__name__ = name
        self.regex = compile_pattern(pattern)
        self.whole = name == "format"

    def __call__(self, completions: Sequence[Any], **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if self.whole:
            return [float(self.regex.fullmatch(t.strip()) is not None) for t in texts]
        return [float(self.regex.search(t) is not None) for t in texts]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise LmtuneError(
            f"task.reward_pattern {pattern!r} is not a valid regular expression ({exc})",
            hint="write a Python `re` pattern, e.g. '^<answer>.*</answer>$'",
        ) from None


class RunReward:
    """The score a finished reward-model run gives each (prompt, completion) pair.

    The run is loaded on first use; its task must declare `reward-scores`: its `predict` scores
    `{"prompt", "completion"}` inputs, putting the text together as the reward model was trained.
    """

    __name__ = "reward_model"

    def __init__(self, directory: str, batch_size: int) -> None:
        self.directory = directory
        self.batch_size = batch_size
        self.run: Any = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        if self.run is None:
            from lmtune.run import Run

            run = Run.load(self.directory)
            run.task.require(
                "reward-scores",
                f"a GRPO reward (task.reward {self.directory!r})",
                hint="give the directory of a `task: reward-model` run",
            )
            self.run = run
        inputs = [
            {
                "prompt": prompt if isinstance(prompt, str) else list(prompt),
                "completion": completion_text(completion),
            }
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        rows = self.run.task.predict(self.run.model, self.run.tokenizer, inputs, self.batch_size)
        return [float(row["score"]) for row in rows]


# ---- naming and building ------------------------------------------------------------------------
def reward_kind(spec: str) -> str:
    """ "builtin", "code" (module:function, file.py:function) or "run" (a reward-model run directory)."""
    if spec in BUILTIN_REWARDS:
        return "builtin"
    if ":" in spec and not Path(spec).is_dir():
        return "code"
    return "run"


def check_reward_specs(specs: Sequence[str], *, allow_code: bool, pattern: str | None) -> None:
    """Refuse what is wrong with `task.reward` before anything is loaded (the options' own check)."""
    if not specs:
        raise LmtuneError(
            "task.reward is empty", hint=f"name at least one reward: {', '.join(BUILTIN_REWARDS)}"
        )
    twice = sorted({s for s in specs if list(specs).count(s) > 1})
    if twice:
        raise LmtuneError(f"task.reward lists {', '.join(twice)} twice", hint="name each reward once")
    for spec in specs:
        kind = reward_kind(spec)
        if kind == "code" and not allow_code:
            raise LmtuneError(
                f"task.reward {spec!r} runs Python code from your files, which is off by default",
                hint=CODE_HINT,
            )
        if kind == "code" and (spec.startswith(":") or spec.endswith(":")):
            raise LmtuneError(f"task.reward {spec!r}: expected module:function or file.py:function")
        if kind == "run" and "/" not in spec and "\\" not in spec and not Path(spec).exists():
            close = difflib.get_close_matches(spec, BUILTIN_REWARDS, n=1, cutoff=0.5)
            raise LmtuneError(
                f"task.reward {spec!r} is not a built-in reward, a module:function or a reward-model "
                "run directory",
                hint=f"did you mean {close[0]!r}?"
                if close
                else f"built-in rewards: {', '.join(BUILTIN_REWARDS)}",
            )
    uses_pattern = any(s in PATTERN_REWARDS for s in specs)
    if uses_pattern and not pattern:
        raise LmtuneError(
            "the regex and format rewards need task.reward_pattern",
            hint="e.g. --set task.reward_pattern='\\d+'",
        )
    if pattern and not uses_pattern:
        raise LmtuneError(
            "task.reward_pattern is set but no 'regex' or 'format' reward uses it",
            hint="add one to task.reward",
        )
    if pattern:
        compile_pattern(pattern)


def build_rewards(specs: Sequence[str], settings: RewardSettings) -> list[Reward]:
    """The reward functions `task.reward` names, in its order (user code only with allow_code)."""
    check_reward_specs(specs, allow_code=settings.allow_code, pattern=settings.pattern)
    rewards: list[Reward] = []
    for spec in specs:
        kind = reward_kind(spec)
        if spec == "exact_match":
            rewards.append(ExactMatch())
        elif spec == "numeric_match":
            rewards.append(NumericMatch(settings.tolerance))
        elif kind == "builtin":
            rewards.append(PatternMatch(spec, settings.pattern or ""))
        elif kind == "code":
            rewards.append(load_function(spec))
        else:
            rewards.append(RunReward(check_run_directory(spec), settings.batch_size))
    return rewards


def check_run_directory(spec: str) -> str:
    """The absolute path of a finished lmtune run (a reward model), or an error."""
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "config.yaml").is_file():
        raise LmtuneError(
            f"task.reward {spec!r}: no lmtune run directory there",
            hint="give the output directory of a finished `lmtune train --task reward-model` run",
        )
    return str(path.resolve())


def load_function(spec: str) -> Reward:
    """The function `module:function` or `path/to/file.py:function` names (imports the user's code)."""
    module_name, _, attr = spec.rpartition(":")
    module = (
        _import_file(spec, module_name) if module_name.endswith(".py") else _import_module(spec, module_name)
    )
    if not hasattr(module, attr):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1, cutoff=0.5)
        raise LmtuneError(
            f"task.reward {spec!r}: {module_name} has no function '{attr}'",
            hint=f"did you mean '{close[0]}'?" if close else f"functions there: {', '.join(names) or 'none'}",
        )
    function = getattr(module, attr)
    if not callable(function):
        raise LmtuneError(
            f"task.reward {spec!r}: '{attr}' in {module_name} is a {type(function).__name__}, not a function"
        )
    return function


def _import_module(spec: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise LmtuneError(
            f"task.reward {spec!r}: cannot import module '{name}' ({exc})",
            hint="install it, put it on PYTHONPATH, or name the file: path/to/file.py:function",
        ) from None


def _import_file(spec: str, filename: str) -> Any:
    path = Path(filename).expanduser().resolve()
    if not path.is_file():
        raise LmtuneError(f"task.reward {spec!r}: no file {filename}", hint="give the path of a .py file")
    # Registered under a name derived from the path, as an import would, so that the module's own
    # dataclasses and pickling find it; a second load of the same file reuses it.
    name = f"lmtune_reward_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise LmtuneError(f"task.reward {spec!r}: {filename} is not a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def reward_names(rewards: Sequence[Reward]) -> list[str]:
    """The name of each reward (as TRL logs it), made unique with a numeric suffix."""
    names: list[str] = []
    for reward in rewards:
        base = getattr(reward, "__name__", type(reward).__name__)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


# ---- scoring outside the trainer ----------------------------------------------------------------
@dataclass(frozen=True)
class Scores:
    """Each reward's value per completion (None: not applicable) and their weighted sum."""

    per_reward: dict[str, list[float | None]]
    total: list[float | None]

    def means(self) -> dict[str, float | None]:
        """`reward` (the mean weighted sum, as TRL's `reward` metric) and `reward_<name>` per reward."""
        out = {"reward": _mean(self.total)}
        out.update({f"reward_{name}": _mean(values) for name, values in self.per_reward.items()})
        return out


def score(
    rewards: Sequence[Reward],
    weights: Sequence[float] | None,
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
    completion_ids: list[list[int]] | None = None,
) -> Scores:
    """Call every reward as GRPOTrainer does and sum them with `weights` (None where none applies)."""
    weights = list(weights) if weights is not None else [1.0] * len(rewards)
    kwargs = {**columns, "trainer_state": None, "log_extra": _ignore, "log_metric": _ignore}
    per_reward: dict[str, list[float | None]] = {}
    for name, reward in zip(reward_names(rewards), rewards, strict=True):
        values = reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        if inspect.isawaitable(values):
            values = asyncio.run(_awaited(values))
        values = list(values)
        if len(values) != len(completions):
            raise LmtuneError(
                f"reward '{name}' returned {len(values)} values for {len(completions)} completions",
                hint="a reward function returns one value (or None) per completion",
            )
        per_reward[name] = [None if v is None or _is_nan(v) else float(v) for v in values]
    total: list[float | None] = []
    for i in range(len(completions)):
        parts = [(w, values[i]) for w, values in zip(weights, per_reward.values(), strict=True)]
        given = [w * v for w, v in parts if v is not None]
        total.append(sum(given) if given else None)
    return Scores(per_reward=per_reward, total=total)


async def _awaited(values: Any) -> Any:
    return await values


def _ignore(*_: Any, **__: Any) -> None:
    """Stands in for TRL's log_extra / log_metric outside training."""


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _mean(values: Sequence[float | None]) -> float | None:
    given = [v for v in values if v is not None]
    return round(sum(given) / len(given), 6) if given else None
