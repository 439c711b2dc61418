from .builtin import BUILTIN_TASKS, DESCRIPTIONS
from .records import TokenizedTask, candidate_logits, evaluate_task, load_task, task_loss

__all__ = ["BUILTIN_TASKS", "DESCRIPTIONS", "TokenizedTask", "candidate_logits", "evaluate_task", "load_task", "task_loss"]
