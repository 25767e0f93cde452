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
    },
)


def get_task_class(name: str) -> Any:
    return TASKS.get(name)
