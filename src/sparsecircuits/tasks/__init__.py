from .builtin import ALL_TASKS, BUILTIN_TASKS, DESCRIPTIONS, HARD_FORMS, SUITES, suite_tasks
from .records import (SPLITS, TaskSplits, TokenizedTask, candidate_logits, evaluate_task, load_task, load_task_splits,
                      task_loss)

__all__ = ["ALL_TASKS", "BUILTIN_TASKS", "DESCRIPTIONS", "HARD_FORMS", "SUITES", "suite_tasks", "SPLITS", "TaskSplits", "TokenizedTask", "candidate_logits", "evaluate_task",
           "load_task", "load_task_splits", "task_loss"]
