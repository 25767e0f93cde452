"""Task registry: one file per task, one line here per task."""

from __future__ import annotations

from typing import Any

from lmtune.registry import Registry

TASKS = Registry(
    "task",
    {
        "classification": "lmtune.tasks.classification:ClassificationTask",
        "token-classification": "lmtune.tasks.token_classification:TokenClassificationTask",
        "ner": "lmtune.tasks.token_classification:TokenClassificationTask",
        "seq2seq": "lmtune.tasks.seq2seq:Seq2SeqTask",
        "question-answering": "lmtune.tasks.question_answering:QuestionAnsweringTask",
        "qa": "lmtune.tasks.question_answering:QuestionAnsweringTask",
        "causal-lm": "lmtune.tasks.causal_lm:CausalLmTask",
        "sft": "lmtune.tasks.causal_lm:CausalLmTask",
        "multi-task": "lmtune.tasks.multi_task:MultiTask",
        "preference": "lmtune.tasks.preference:PreferenceTask",
        "reward-model": "lmtune.tasks.reward_model:RewardModelTask",
        "grpo": "lmtune.tasks.grpo:GrpoTask",
    },
)


def get_task_class(name: str) -> Any:
    return TASKS.get(name)
