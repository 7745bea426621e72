"""Tasks register themselves on import."""

from pwlock.tasks import (
    code,  # noqa: F401
    critique,  # noqa: F401
    function_composition,  # noqa: F401
    math,  # noqa: F401
    mmlu,  # noqa: F401
)
from pwlock.tasks.base import Example, Problem, Task, formats_prompts, make_task, task_names

__all__ = ["Example", "Problem", "Task", "formats_prompts", "make_task", "task_names"]
