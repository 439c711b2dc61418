"""Tasks: the built-in generators (`builtin`), their audit, and records as token batches (`records`,
loaded on first use: listing the tasks needs no torch)."""

import importlib

from .builtin import ALL_TASKS, BUILTIN_TASKS, DESCRIPTIONS, HARD_FORMS, SUITES, suite_tasks

_RECORDS = ("SPLITS", "TaskSplits", "TokenizedTask", "candidate_logits", "evaluate_task", "load_task", "load_task_splits",
            "task_loss")


def __getattr__(name: str):
    if name in _RECORDS:
        return getattr(importlib.import_module(".records", __name__), name)
    raise AttributeError(f"module 'sparsecircuits.tasks' has no attribute '{name}'")


__all__ = ["ALL_TASKS", "BUILTIN_TASKS", "DESCRIPTIONS", "HARD_FORMS", "SUITES", "suite_tasks", *_RECORDS]
