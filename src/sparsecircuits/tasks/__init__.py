from .builtin import BUILTIN_TASKS, DESCRIPTIONS
from .records import (SPLITS, TaskSplits, TokenizedTask, candidate_logits, evaluate_task, load_task, load_task_splits,
                      task_loss)

__all__ = ["BUILTIN_TASKS", "DESCRIPTIONS", "SPLITS", "TaskSplits", "TokenizedTask", "candidate_logits", "evaluate_task",
           "load_task", "load_task_splits", "task_loss"]
