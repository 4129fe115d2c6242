"""Tasks: aligned clean/corrupted prompt batches with answers, named positions and metrics."""

from mechscope.tasks.base import PAD, Task
from mechscope.tasks.factual import factual_recall, known_capitals
from mechscope.tasks.greater_than import greater_than
from mechscope.tasks.induction import induction
from mechscope.tasks.ioi import ioi

TASKS = {"ioi": ioi, "greater-than": greater_than, "induction": induction, "factual-recall": factual_recall}

__all__ = ["PAD", "TASKS", "Task", "factual_recall", "greater_than", "induction", "ioi", "known_capitals"]
