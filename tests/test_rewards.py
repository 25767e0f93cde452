"""GRPO rewards: the built-ins, user code behind allow_code, reward-model runs, and scoring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmtune import rewards
from lmtune.errors import LmtuneError
from lmtune.rewards import RewardSettings, build_rewards, final_answer, last_number, normalise, score


def chat(text: str) -> list[dict[str, str]]:
    """A completion as TRL passes it for chat prompts."""
    return [{"role": "assistant", "content": text}]


def one(spec: str, **settings) -> rewards.Reward:
    return build_rewards([spec], RewardSettings(**settings))[0]


# ---- reading answers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("5", "5"),
        ("The answer is 5.", "5."),
        ("Answer: 42\nbecause 40 + 2", "42"),
        ("The final answer is: Paris", "Paris"),
        ("3 + 4 = 7, so #### 7", "7"),
        ("We get \\boxed{x+1} in the end", "x+1"),
        ("first line\n\n  last line  \n", "last line"),
        ("7 + 5 = 12.\n", "12."),
        ("x = y = 3", "3"),
        ("", ""),
    ],
)
def test_final_answer_follows_its_markers_then_the_last_line(text, expected):
    assert final_answer(text) == expected


def test_normalise_folds_case_whitespace_a_full_stop_and_quotes():
    assert normalise("  The   Answer. ") == "the answer"
    assert normalise('"Paris"') == "paris"
    assert normalise("5.") == normalise(" 5") == "5"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2 + 3 = 5.", 5.0),
        ("1,234.5 apples", 1234.5),
        ("-3 then -4", -4.0),
        ("about .5", 0.5),
        ("none", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


# ---- the built-in rewards -----------------------------------------------------------------------
def test_exact_match_compares_final_answers_and_skips_records_without_one():
    reward = one("exact_match")
    completions = ["The answer is 5.", chat("5"), " 6 ", "5", "PARIS", "so #### 72", "2 + 3 = 5.", "5 apples"]
    answers = ["5", "5", "5", None, "paris", "9 * 8 = 72\n#### 72", "5", "5"]
    assert reward(completions=completions, answer=answers) == [1.0, 1.0, 0.0, None, 1.0, 1.0, 1.0, 0.0]
    assert reward(completions=["5"]) == [None]  # no answer column at all
    assert reward.__name__ == "exact_match"


def test_numeric_match_reads_the_last_number_within_the_tolerance():
    reward = one("numeric_match", tolerance=0.01)
    completions = ["2 + 3 = 5", chat("It is 5.004"), "about 6", "no number", "1,000 in all", "5"]
    answers = ["5", "5", "5", "5", "1000", "five"]
    assert reward(completions=completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    assert one("numeric_match")(completions=["5.004"], answer=["5"]) == [0.0]  # default tolerance 1e-6


def test_regex_searches_and_format_matches_the_whole_completion():
    regex = one("regex", pattern=r"\d+")
    assert regex(completions=["abc 12 def", chat("none")]) == [1.0, 0.0]
    form = one("format", pattern=r"\d+")
    assert form(completions=["12", " 12 \n", "12 apples"]) == [1.0, 1.0, 0.0]
    tags = one("format", pattern=r"<think>.*</think>\s*<answer>.*</answer>")
    assert tags(completions=["<think>\na\nb\n</think>\n<answer>4</answer>", "<answer>4</answer>"]) == [
        1.0,
        0.0,
    ]


@pytest.mark.parametrize(
    "specs, pattern, message",
    [
        (["regex"], "(", "not a valid regular expression"),
        (["format"], None, "need task.reward_pattern"),
        (["exact_match"], r"\d", "no 'regex' or 'format' reward uses it"),
        (["exact_mach"], None, "did you mean 'exact_match'"),
        (["exact_match", "exact_match"], None, "exact_match twice"),
        ([], None, "task.reward is empty"),
    ],
)
def test_bad_reward_settings_are_refused(specs, pattern, message):
    with pytest.raises(LmtuneError, match=message):
        build_rewards(specs, RewardSettings(pattern=pattern))


# ---- user code ------------------------------------------------------------------------------------
REWARD_CODE = """
def length_reward(completions, **kwargs):
    return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]

async def async_reward(completions, **kwargs):
    return [1.0 for _ in completions]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def reward_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_CODE, encoding="utf-8")
    return path


def test_user_code_is_refused_without_allow_code(reward_file):
    for spec in (f"{reward_file}:length_reward", "my_rewards:length_reward"):
        with pytest.raises(LmtuneError, match=r"runs Python code.*--allow-code"):
            build_rewards([spec], RewardSettings())


def test_a_function_from_a_file_or_a_module_is_called_as_trl_calls_it(reward_file, monkeypatch):
    from_file = one(f"{reward_file}:length_reward", allow_code=True)
    assert from_file(prompts=[[]], completions=[chat("abcd")], answer=[None]) == [4.0]
    assert one(f"{reward_file}:length_reward", allow_code=True) is from_file  # the file is imported once
    monkeypatch.syspath_prepend(str(reward_file.parent))
    from_module = one("my_rewards:length_reward", allow_code=True)
    assert from_module(completions=["abc"]) == [3.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("{file}:lenght_reward", "has no function 'lenght_reward' -- did you mean 'length_reward'"),
        ("{file}:NOT_A_FUNCTION", "is a int, not a function"),
        ("{dir}/missing.py:f", "no file"),
        ("my_rewards:", "expected module:function"),
    ],
)
def test_bad_code_references_are_named(reward_file, spec, message):
    spec = spec.format(file=reward_file, dir=reward_file.parent)
    with pytest.raises(LmtuneError, match=message):
        build_rewards([spec], RewardSettings(allow_code=True))


# ---- reward-model runs ----------------------------------------------------------------------------
def test_a_reward_model_reference_must_be_a_run_directory(tmp_path):
    with pytest.raises(LmtuneError, match="no lmtune run directory"):
        build_rewards([str(tmp_path / "runs" / "rm")], RewardSettings())
    (tmp_path / "plain").mkdir()
    with pytest.raises(LmtuneError, match="no lmtune run directory"):
        build_rewards([str(tmp_path / "plain")], RewardSettings())


def test_a_run_whose_task_cannot_score_is_refused_by_capability(tmp_path, monkeypatch):
    from lmtune import run as run_module
    from lmtune.tasks.classification import ClassificationTask

    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.yaml").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(
        run_module.Run, "load", classmethod(lambda cls, d: SimpleNamespace(task=ClassificationTask))
    )
    reward = build_rewards([str(tmp_path / "rm")], RewardSettings())[0]
    assert rewards.reward_names([reward]) == ["reward_model"]
    with pytest.raises(LmtuneError, match=r"cannot be used for a GRPO reward.*reward-scores"):
        reward(prompts=[[{"role": "user", "content": "hi"}]], completions=[chat("hello")])


# ---- scoring outside the trainer ------------------------------------------------------------------
def test_score_weights_the_sum_and_leaves_out_what_does_not_apply(reward_file):
    def half(completions, **kwargs):
        return [0.5, None, None]

    def flag(completions, answer, trainer_state, log_extra, log_metric, **kwargs):
        assert trainer_state is None and answer == ["a", "b", "c"]
        log_metric("seen", 1.0)  # TRL's logging hooks are accepted and ignored
        return [1.0, 0.0, None]

    got = score([half, flag], [2.0, 1.0], [[]] * 3, ["x", "y", "z"], {"answer": ["a", "b", "c"]})
    assert got.per_reward == {"half": [0.5, None, None], "flag": [1.0, 0.0, None]}
    assert got.total == [2.0, 0.0, None]
    assert got.means() == {"reward": 1.0, "reward_half": 0.5, "reward_flag": 0.5}
    coroutine = one(f"{reward_file}:async_reward", allow_code=True)
    assert score([coroutine], None, [[]], ["x"], {}).total == [1.0]
    assert asyncio.iscoroutinefunction(coroutine)


def test_score_refuses_a_reward_with_the_wrong_number_of_values():
    with pytest.raises(LmtuneError, match="returned 1 values for 2 completions"):
        score([lambda completions, **kw: [1.0]], None, [[], []], ["a", "b"], {})


def test_reward_names_are_made_unique():
    assert rewards.reward_names([one("exact_match"), one("exact_match"), one("numeric_match")]) == [
        "exact_match",
        "exact_match_2",
        "numeric_match",
    ]
